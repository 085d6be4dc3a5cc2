//! OTP sign-in under attack, with client networks simulated by `CF-Connecting-IP` (IPv4 and IPv6):
//! guesses bounded per network and per email, a victim's challenge untouched by an attacker's wrong
//! codes, bounded state after floods of failed verifies and made-up refresh tokens, sign-up policy.

use super::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![
        forty_networks_guessing_one_email_stop_at_thirty_wrong_codes,
        the_guessing_limits_are_the_projects_settings,
        an_attackers_wrong_codes_do_not_stop_the_victims_challenge,
        one_ipv6_64_is_one_network,
        failed_verifies_and_unknown_refresh_tokens_leave_bounded_state,
        sign_up_policy_and_new_accounts_per_network,
        auth_events_past_retention_are_purged_by_the_cron,
    ]
}

/// A wrong code that was evaluated against a real challenge says how many tries it has left.
fn evaluated(r: &Reply) -> bool {
    r.status == 401 && r.json().get("attempts_left").is_some()
}

/// The network `i` of a test: IPv4 for even `i`, an IPv6 /64 of its own for odd `i`.
fn network(i: usize) -> String {
    if i.is_multiple_of(2) {
        format!("198.51.100.{i}")
    } else {
        format!("2001:db8:{i:x}:1::{i:x}")
    }
}

async fn forty_networks_guessing_one_email_stop_at_thirty_wrong_codes(c: Arc<Ctx>) -> CaseResult {
    let slug = "otp-forty";
    managed_tenant(&c, slug).await?;
    let victim = "victim40@e2e.example";
    let (mut wrong, mut refused, mut sent) = (0, 0, 0);
    for i in 0..40 {
        let net = network(i);
        // Each attacker network asks for its own code (the mail goes to the victim) and guesses.
        let started = otp_start_from(&c, slug, victim, Some(&net)).await?;
        if started.status == 202 {
            sent += 1;
        }
        let challenge = started.json()["challenge_id"]
            .as_str()
            .unwrap_or("chl_none")
            .to_string();
        for guess in 0..5 {
            let code = format!("{:06}", 100_000 + i * 10 + guess);
            let r = otp_verify_with(&c, slug, victim, &code, &challenge, Some(&net)).await?;
            if evaluated(&r) {
                wrong += 1;
            } else if r.status == 429 {
                refused += 1;
                assert!(r.header("retry-after").is_some(), "{}", r.describe());
            }
        }
    }
    println!(
        "    measured: 40 networks x 5 guesses at one email: {wrong} evaluated, {refused} refused with 429, {sent} codes sent"
    );
    // A guess that happens to be right would sign in: none of these codes is the mailed one
    // (at most 1 in 10^6 per guess), and at most 30 were evaluated.
    assert!(
        wrong <= 30,
        "{wrong} wrong codes were evaluated for one email"
    );
    assert_eq!(
        wrong, 30,
        "the day's budget of wrong codes is used, then refused"
    );
    assert!(sent <= 20, "{sent} codes mailed to one address in an hour");
    Ok(())
}

async fn an_attackers_wrong_codes_do_not_stop_the_victims_challenge(c: Arc<Ctx>) -> CaseResult {
    let slug = "otp-victim";
    managed_tenant(&c, slug).await?;
    let victim = "victim@e2e.example";
    let attacker = "203.0.113.66";
    let home = "2001:db8:aaaa:bbbb::10";
    let started = otp_start_from(&c, slug, victim, Some(attacker)).await?;
    expect_status(&started, 202, "the attacker's start")?;
    let theirs = started.json()["challenge_id"]
        .as_str()
        .ok_or("no challenge_id")?
        .to_string();
    for guess in 0..5 {
        let r = otp_verify_with(
            &c,
            slug,
            victim,
            &format!("00000{guess}"),
            &theirs,
            Some(attacker),
        )
        .await?;
        assert_problem(&r, 401, "invalid-code");
    }
    for _ in 0..4 {
        // More starts from the attacker (throttled or not) must not use up the victim's.
        otp_start_from(&c, slug, victim, Some(attacker)).await?;
    }
    let seen = c.mail.mails_to(victim).len();
    let mine = otp_start_from(&c, slug, victim, Some(home)).await?;
    expect_status(&mine, 202, "the victim's own start after the attacker's")?;
    let code = c.mail.wait_for_code(victim, seen, MAIL_WAIT).await?;
    let challenge = mine.json()["challenge_id"]
        .as_str()
        .ok_or("no challenge_id")?
        .to_string();
    // The attacker cannot use the victim's challenge id from elsewhere without the code either.
    let r = otp_verify_with(&c, slug, victim, &code, &theirs, Some(home)).await?;
    assert_problem(&r, 401, "code-locked");
    let signed_in = otp_verify_with(&c, slug, victim, &code, &challenge, Some(home)).await?;
    Tokens::from_reply(&signed_in, "the victim's code after the attack")?;
    // A challenge id is bound to its address: another email's id is refused untouched.
    let other =
        otp_verify_with(&c, slug, "else@e2e.example", &code, &challenge, Some(home)).await?;
    assert_problem(&other, 401, "invalid-code");
    Ok(())
}

async fn one_ipv6_64_is_one_network(c: Arc<Ctx>) -> CaseResult {
    let slug = "otp-ipv6";
    managed_tenant(&c, slug).await?;
    let mut statuses = Vec::new();
    for i in 0..40 {
        // 40 addresses of one /64, each a made-up challenge for a different email.
        let ip = format!("2001:db8:77:88:{i:x}::1");
        let r = otp_verify_with(
            &c,
            slug,
            &format!("u{i}@e2e.example"),
            "123456",
            "chl_madeup",
            Some(&ip),
        )
        .await?;
        statuses.push(r.status);
    }
    let refused = statuses.iter().filter(|s| **s == 429).count();
    println!("    measured: 40 addresses in one IPv6 /64: {refused} refused with 429");
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        30,
        "{statuses:?}"
    );
    assert_eq!(refused, 10, "{statuses:?}");
    // Another /64 is another network.
    let r = otp_verify_with(
        &c,
        slug,
        "x@e2e.example",
        "123456",
        "chl_madeup",
        Some("2001:db8:77:89::1"),
    )
    .await?;
    assert_problem(&r, 401, "invalid-code");
    Ok(())
}

/// Sign-in objects on disk: the `.sqlite` files of the auth-state Durable Object class.
fn stored_auth_objects(c: &Ctx) -> usize {
    fn walk(dir: &std::path::Path, inside: bool, n: &mut usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                walk(&path, inside || name.contains("AuthGuard"), n);
            } else if inside && name.ends_with(".sqlite") {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(&c.persist_dir, false, &mut n);
    n
}

async fn failed_verifies_and_unknown_refresh_tokens_leave_bounded_state(c: Arc<Ctx>) -> CaseResult {
    let slug = "otp-flood";
    managed_tenant(&c, slug).await?;
    let events_before = auth_events(&c, slug).await?.len();
    let objects_before = stored_auth_objects(&c);
    for i in 0..300 {
        // 300 failed verifies for 300 addresses from 10 networks.
        let net = format!("192.0.2.{}", i % 10);
        let r = otp_verify_with(
            &c,
            slug,
            &format!("flood{i}@e2e.example"),
            "123456",
            &format!("chl_{i:036}"),
            Some(&net),
        )
        .await?;
        assert!(
            matches!(r.status, 401 | 429),
            "a failed verify is 401 or 429: {}",
            r.describe()
        );
    }
    for i in 0..300 {
        let token = format!("srt_ses_{i:020}{:012}.{}", 0, "a".repeat(43));
        let r = refresh(&c, slug, &token).await?;
        assert_problem(&r, 401, "invalid-refresh-token");
    }
    let events_after = auth_events(&c, slug).await?.len();
    let objects_after = stored_auth_objects(&c);
    println!(
        "    measured: 300 failed verifies (10 networks) and 300 made-up refresh tokens added {} auth events and {} stored sign-in objects",
        events_after - events_before,
        objects_after.saturating_sub(objects_before)
    );
    assert_eq!(events_after, events_before, "failed verifies add no rows");
    assert!(
        objects_after <= objects_before + 10,
        "at most one object per network: {objects_before} -> {objects_after}"
    );
    Ok(())
}

async fn auth_events(c: &Ctx, project: &str) -> Result<Vec<Value>> {
    let r = c
        .admin
        .call(
            Method::GET,
            &format!("/api/v1/projects/{project}/auth-events"),
            None,
        )
        .await?;
    expect_status(&r, 200, "auth events")?;
    Ok(r.json()["events"].as_array().cloned().unwrap_or_default())
}

async fn sign_up_policy_and_new_accounts_per_network(c: Arc<Ctx>) -> CaseResult {
    let slug = "otp-signup";
    managed_tenant(&c, slug).await?;
    let project_path = format!("/api/v1/projects/{slug}");
    let patch = |body: Value| c.admin.call(Method::PATCH, &project_path, Some(body));
    // New accounts per network per day: the sixth from one network is 429 with Retry-After.
    let net = "203.0.113.200";
    for i in 0..6 {
        let email = format!("new{i}@e2e.example");
        let r = sign_in_from(&c, slug, &email, net).await?;
        if i < 5 {
            Tokens::from_reply(&r, "a new account")?;
        } else {
            assert_problem(&r, 429, "rate-limited");
            assert!(r.header("retry-after").is_some(), "{}", r.describe());
        }
    }
    // Domains: other addresses are refused at start; an address the owner added still signs in.
    let bad = patch(json!({"signup": "domains"})).await?;
    assert_problem(&bad, 400, "invalid-request");
    let set = patch(json!({"signup": "domains", "signup_domains": ["corp.example"]})).await?;
    expect_status(&set, 200, "signup domains")?;
    assert_eq!(set.json()["signup"], "domains", "{}", set.text);
    let outside = otp_start_from(&c, slug, "x@gmail.example", Some("198.18.0.1")).await?;
    assert_problem(&outside, 403, "signup-not-allowed");
    let inside = "ada@eu.corp.example";
    Tokens::from_reply(
        &sign_in_from(&c, slug, inside, "198.18.0.1").await?,
        "an address at a sign-up domain",
    )?;
    // Invite only: an unknown address gets the same 202 and no mail; an existing user signs in.
    expect_status(
        &patch(json!({"signup": "invite_only"})).await?,
        200,
        "invite only",
    )?;
    let stranger = "stranger@corp.example";
    let started = otp_start_from(&c, slug, stranger, Some("198.18.0.2")).await?;
    expect_status(&started, 202, "a stranger's start looks the same")?;
    assert!(
        started.json()["challenge_id"].is_string(),
        "{}",
        started.text
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        c.mail.mails_to(stranger).is_empty(),
        "no mail to an uninvited address"
    );
    // Neither the throttles nor a wrong code tell a stranger from a user.
    let user_start = otp_start_from(&c, slug, inside, Some("198.18.0.2")).await?;
    expect_status(&user_start, 202, "the user's start")?;
    let mut seen = Vec::new();
    for (who, first) in [(stranger, &started), (inside, &user_start)] {
        let again = otp_start_from(&c, slug, who, Some("198.18.0.2")).await?;
        assert_problem(&again, 429, "rate-limited");
        let challenge = first.json()["challenge_id"]
            .as_str()
            .ok_or("no challenge_id")?
            .to_string();
        let wrong =
            otp_verify_with(&c, slug, who, "000000", &challenge, Some("198.18.0.2")).await?;
        assert_problem(&wrong, 401, "invalid-code");
        seen.push((
            again.header("retry-after").is_some(),
            wrong.json()["detail"].clone(),
            wrong.json()["attempts_left"].clone(),
        ));
    }
    assert_eq!(seen[0], seen[1], "a stranger and a user are answered alike");
    Tokens::from_reply(
        &sign_in_from(&c, slug, inside, "198.18.0.3").await?,
        "an existing user under invite only",
    )?;
    Ok(())
}

/// Writes an auth event dated `days_ago` straight into the gateway's local D1, as if it were old.
async fn old_event(c: &Ctx, project_id: &str, id: &str, days_ago: i64) -> Result<()> {
    let at =
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64 - days_ago * 86_400_000;
    let sql = format!(
        "INSERT INTO auth_events (id, project_id, type, subject, created_at) VALUES ('{id}', '{project_id}', 'otp_sent', 'old@e2e.example', {at})"
    );
    let out = tokio::process::Command::new(repo_root().join("node_modules/.bin/wrangler"))
        .current_dir(repo_root())
        .env("CI", "true")
        .env("WRANGLER_SEND_METRICS", "false")
        .args(["d1", "execute", "DB", "--local", "--persist-to"])
        .arg(&c.persist_dir)
        .args(["--command", &sql])
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!(
            "wrangler d1 execute failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

async fn auth_events_past_retention_are_purged_by_the_cron(c: Arc<Ctx>) -> CaseResult {
    let slug = "events-retention";
    managed_tenant(&c, slug).await?;
    let project = c
        .admin
        .call(Method::GET, &format!("/api/v1/projects/{slug}"), None)
        .await?;
    assert_eq!(
        project.json()["auth_event_retention_days"],
        30,
        "{}",
        project.text
    );
    let set = c
        .admin
        .patch_project(slug, json!({"auth_event_retention_days": 7}))
        .await?;
    expect_status(&set, 200, "retention 7 days")?;
    let project_id = str_field(&set.json(), "id")?;
    let seen = c.mail.mails_to("kept@e2e.example").len();
    expect_status(
        &otp_start(&c, slug, "kept@e2e.example").await?,
        202,
        "a recent event",
    )?;
    c.mail
        .wait_for_code("kept@e2e.example", seen, MAIL_WAIT)
        .await?;
    old_event(&c, &project_id, "evt_retention_old", 8).await?;
    old_event(&c, &project_id, "evt_retention_recent", 6).await?;
    let before: Vec<String> = ids(&auth_events_since(&c, slug).await?);
    assert!(
        before.contains(&"evt_retention_old".to_string()),
        "{before:?}"
    );
    let ran = Reply::read(
        c.http
            .get(format!("{}/__scheduled?cron=17+3+*+*+*", c.base))
            .send()
            .await?,
    )
    .await?;
    expect_status(&ran, 200, "the scheduled handler")?;
    let after = ids(&auth_events_since(&c, slug).await?);
    assert!(
        !after.contains(&"evt_retention_old".to_string()),
        "{after:?}"
    );
    assert!(
        after.contains(&"evt_retention_recent".to_string()),
        "{after:?}"
    );
    assert_eq!(after.len(), before.len() - 1, "{before:?} -> {after:?}");
    Ok(())
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect()
}

/// Every auth event of the project, however old.
async fn auth_events_since(c: &Ctx, project: &str) -> Result<Vec<Value>> {
    let r = c
        .admin
        .call(
            Method::GET,
            &format!("/api/v1/projects/{project}/auth-events?since=2000-01-01T00:00:00Z"),
            None,
        )
        .await?;
    expect_status(&r, 200, "auth events")?;
    Ok(r.json()["events"].as_array().cloned().unwrap_or_default())
}

/// Asks for a code for `email` from network `net`, reads it from the mail, and verifies it there.
async fn sign_in_from(c: &Ctx, slug: &str, email: &str, net: &str) -> Result<Reply> {
    let seen = c.mail.mails_to(email).len();
    expect_status(
        &otp_start_from(c, slug, email, Some(net)).await?,
        202,
        &format!("otp/start for {email}"),
    )?;
    let code = c.mail.wait_for_code(email, seen, MAIL_WAIT).await?;
    otp_verify_with(c, slug, email, &code, &challenge_of(slug, email), Some(net)).await
}

/// The caps are project settings: with 7 wrong codes a day per email and 3 per network an hour,
/// those are what is evaluated.
async fn the_guessing_limits_are_the_projects_settings(c: Arc<Ctx>) -> CaseResult {
    let slug = "otp-settings";
    managed_tenant(&c, slug).await?;
    let set = c.admin.patch_project(slug, json!({"otp_wrong_codes_per_email_per_day": 7, "otp_wrong_codes_per_network_per_hour": 3})).await?;
    expect_status(&set, 200, "the guessing limits")?;
    assert_eq!(
        set.json()["otp_wrong_codes_per_email_per_day"],
        7,
        "{}",
        set.text
    );
    let email = "settings@e2e.example";
    let mut per_network = Vec::new();
    for i in 0..4 {
        let net = network(i);
        let started = otp_start_from(&c, slug, email, Some(&net)).await?;
        let challenge = started.json()["challenge_id"]
            .as_str()
            .unwrap_or("chl_none")
            .to_string();
        let mut evaluated_here = 0;
        for guess in 0..5 {
            let r = otp_verify_with(
                &c,
                slug,
                email,
                &format!("00000{guess}"),
                &challenge,
                Some(&net),
            )
            .await?;
            if evaluated(&r) {
                evaluated_here += 1;
            }
        }
        per_network.push(evaluated_here);
    }
    assert_eq!(per_network, [3, 3, 1, 0], "3 per network, 7 in all");
    Ok(())
}
