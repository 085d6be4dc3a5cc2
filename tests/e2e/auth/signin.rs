//! Managed sign-in end to end: emailed codes, refresh rotation and reuse, lockout and throttles, the auth event log.

use super::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![
        managed_sign_in_with_an_emailed_code,
        refresh_rotates_and_reuse_revokes_the_session,
        racing_refreshes_with_one_token_do_not_both_succeed,
        otp_codes_lock_after_five_wrong_tries_and_are_throttled,
        auth_events_record_sign_ins_refreshes_keys_and_mode_switches,
        otp_exists_only_for_managed_apis,
        dev_mode_only_when_asked,
        sign_in_steps_come_only_from_allowed_pages,
    ]
}

pub async fn managed_sign_in_with_an_emailed_code(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-managed";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    // `aerostack` is the old name of managed mode.
    let switched = put_auth_mode(&c, &t.api_id, json!({"auth_mode": "aerostack"})).await?;
    expect_status(&switched, 200, "auth-mode aerostack")?;
    assert_eq!(switched.json()["auth_mode"], "managed", "{}", switched.text);
    assert_eq!(
        c.admin.get_api(&t.api_id).await?.json()["auth_mode"],
        "managed"
    );

    // A never-seen address gets 202 and a mail with a 6-digit code, to the normalised address.
    let typed = "  New.User+E2E@Example.COM ";
    let email = "new.user+e2e@example.com";
    let started = otp_start(&c, slug, typed).await?;
    expect_status(&started, 202, "otp/start")?;
    let mail = c.mail.wait_for_mail(email, 0, MAIL_WAIT).await?;
    assert_eq!(mail.to, email, "the mail goes to the normalised address");
    assert_eq!(mail.path, "/emails");
    assert_eq!(
        mail.authorization.as_deref(),
        Some("Bearer test-mail-key"),
        "the provider key is sent"
    );
    assert!(
        !mail.from.is_empty() && !mail.subject.is_empty(),
        "{mail:?}"
    );
    let code = mail
        .code()
        .ok_or_else(|| format!("no code in {:?}", mail.text))?;
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "{code}"
    );
    assert!(
        mail.html.contains(&code),
        "the HTML part carries the code too: {}",
        mail.html
    );

    let wrong = otp_verify(&c, slug, email, &wrong_code(&code)).await?;
    assert_problem(&wrong, 401, "invalid-code");
    assert_eq!(wrong.json()["attempts_left"], 4, "{}", wrong.describe());

    let ok = otp_verify(&c, slug, typed, &code).await?;
    expect_status(&ok, 200, "otp/verify with the right code")?;
    let v = ok.json();
    assert_eq!(v["token_type"], "Bearer", "{v}");
    assert_eq!(v["expires_in"], 900, "{v}");
    assert_eq!(ok.header("cache-control"), Some("no-store"));
    let tokens = Tokens::from_reply(&ok, "sign in")?;
    assert!(
        tokens.refresh.starts_with("srt_"),
        "refresh token shape: {}",
        tokens.refresh
    );

    // The access token is an EdDSA JWT, signed with a key the project's JWKS publishes.
    let (header, claims) = jwt_parts(&tokens.access)?;
    assert_eq!(header["alg"], "EdDSA", "{header}");
    let kid = header["kid"].as_str().ok_or("no kid")?;
    assert!(kid.starts_with(&format!("{slug}-")), "kid {kid}");
    let jwks = Reply::read(
        c.http
            .get(format!("{}/v1/{slug}/.well-known/jwks.json", c.base))
            .send()
            .await?,
    )
    .await?;
    expect_status(&jwks, 200, "project JWKS")?;
    let published = jwks.json();
    let kids: Vec<&str> = published["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert!(
        kids.contains(&kid),
        "kid {kid} not in the JWKS {}",
        jwks.text
    );
    let keys = sluice_jwt::parse_jwks(&jwks.text).map_err(|e| e.to_string())?;
    let mut policy = sluice_jwt::Policy::default_asymmetric();
    policy.issuer = Some(format!("sluice:{slug}"));
    policy.audience = Some(slug.into());
    sluice_jwt::verify(&tokens.access, &keys, &policy, now_s())
        .map_err(|e| format!("the access token does not verify against the JWKS: {e}"))?;
    assert_eq!(claims["iss"], format!("sluice:{slug}"), "{claims}");
    assert_eq!(claims["aud"], slug, "{claims}");
    assert_eq!(claims["email"], email, "{claims}");
    let sub = claims["sub"].as_str().ok_or("no sub")?.to_string();
    let (iat, exp) = (
        claims["iat"].as_i64().ok_or("no iat")?,
        claims["exp"].as_i64().ok_or("no exp")?,
    );
    assert_eq!(exp - iat, 900, "{claims}");
    assert!((iat - now_s()).abs() < 60, "iat is now: {claims}");

    let who = me(&c, slug, &tokens.access).await?;
    expect_status(&who, 200, "auth/me")?;
    let user = who.json();
    assert_eq!(user["id"], sub.as_str(), "{user}");
    assert_eq!(user["kind"], "user", "{user}");
    assert_eq!(user["email"], email, "{user}");
    assert_eq!(user["status"], "enabled", "{user}");
    // The owner's notes about the user are the owner's.
    let noted = c
        .admin
        .call(
            Method::PATCH,
            &format!("/api/v1/projects/{slug}/consumers/{sub}"),
            Some(json!({"name": "VIP (churn risk)", "description": "asked for a refund twice"})),
        )
        .await?;
    expect_status(&noted, 200, "owner notes on the user")?;
    let who = me(&c, slug, &tokens.access).await?;
    for private in ["churn", "refund", "description", "name"] {
        assert!(
            !who.text.contains(private),
            "/auth/me shows `{private}`: {}",
            who.text
        );
    }
    assert_eq!(who.json()["email"], email, "{}", who.text);
    let anonymous = Reply::read(
        c.http
            .get(format!("{}/v1/{slug}/auth/me", c.base))
            .send()
            .await?,
    )
    .await?;
    assert_problem(&anonymous, 401, "missing-credential");

    // The signed-in user streams a chat; the upstream sees the provider key, never the token.
    let s = send_and_stream(
        c.chat(&t, Some((&tokens.access, KeyHeader::Bearer)))
            .json(&chat_body(None, "hello", true)),
        STREAM_LIMIT,
    )
    .await?;
    let summary = stream_summary(&s);
    assert_eq!(s.status, 200, "{summary}");
    assert_eq!(s.error, None, "{summary}");
    assert_eq!(s.text(), mock_text(3), "{summary}");
    assert!(s.events.last().is_some_and(SseEvent::is_done), "{summary}");
    let sent = c.upstream_requests(slug);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer sk-upstream-{slug}").as_str())
    );
    assert_never_upstream(&c, slug, &tokens.access, "the access token");
    let records = usage_records_until(&c, &t, |r| !r.is_empty()).await?;
    assert_eq!(
        records[0]["consumer_id"],
        sub.as_str(),
        "usage is the user's: {}",
        records[0]
    );
    assert!(
        records[0]["session_id"]
            .as_str()
            .is_some_and(|s| s.starts_with("ses_")),
        "{}",
        records[0]
    );

    // A code is single use.
    let again = otp_verify(&c, slug, email, &code).await?;
    assert_problem(&again, 401, "invalid-code");
    Ok(())
}

pub async fn refresh_rotates_and_reuse_revokes_the_session(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-refresh";
    let t = managed_tenant(&c, slug).await?;
    let first = sign_in(&c, slug, "rotate@e2e.example").await?;
    chat_200(&c, &t, &first.access, "first access token").await?;

    let rotated = refresh(&c, slug, &first.refresh).await?;
    let second = Tokens::from_reply(&rotated, "refresh")?;
    assert_eq!(rotated.json()["token_type"], "Bearer");
    assert_ne!(second.refresh, first.refresh, "a new refresh token");
    // (An access token is deterministic: within the same second it may equal the previous one.)
    assert_eq!(
        jwt_parts(&second.access)?.1["sid"],
        jwt_parts(&first.access)?.1["sid"],
        "same session"
    );
    chat_200(&c, &t, &second.access, "the refreshed access token").await?;

    // The rotated-out token again: reuse. The whole session ends.
    let reused = refresh(&c, slug, &first.refresh).await?;
    assert_problem(&reused, 401, "refresh-token-reused");
    let after = refresh(&c, slug, &second.refresh).await?;
    assert_eq!(
        after.status,
        401,
        "the newest refresh token dies with the session: {}",
        after.describe()
    );
    chat_401(
        &c,
        &t,
        &second.access,
        "session-revoked",
        "the newest access token after a reuse",
    )
    .await?;
    chat_401(
        &c,
        &t,
        &first.access,
        "session-revoked",
        "the first access token after a reuse",
    )
    .await?;
    let gone = me(&c, slug, &second.access).await?;
    assert_problem(&gone, 401, "session-revoked");

    let bogus = refresh(&c, slug, "srt_not-a-token").await?;
    assert_problem(&bogus, 401, "invalid-refresh-token");

    // A refresh token shown at another project is refused there and leaves its session untouched.
    let other = format!("{slug}-other");
    managed_tenant(&c, &other).await?;
    let wanderer = sign_in(&c, slug, "wander@e2e.example").await?;
    let elsewhere = refresh(&c, &other, &wanderer.refresh).await?;
    assert_problem(&elsewhere, 401, "invalid-refresh-token");
    let home = refresh(&c, slug, &wanderer.refresh).await?;
    expect_status(
        &home,
        200,
        "the same refresh token at its own project still rotates",
    )?;

    // Logout ends a fresh session at once.
    let fresh = sign_in(&c, slug, "logout@e2e.example").await?;
    chat_200(&c, &t, &fresh.access, "fresh session").await?;
    let out = post_json(
        &c,
        &format!("/v1/{slug}/auth/logout"),
        json!({}),
        Some(&fresh.access),
    )
    .await?;
    expect_status(&out, 204, "logout")?;
    chat_401(&c, &t, &fresh.access, "session-revoked", "after logout").await?;
    let me_after = me(&c, slug, &fresh.access).await?;
    assert_problem(&me_after, 401, "session-revoked");
    let refresh_after = refresh(&c, slug, &fresh.refresh).await?;
    assert_eq!(
        refresh_after.status,
        401,
        "refresh after logout: {}",
        refresh_after.describe()
    );
    let anonymous_logout =
        post_json(&c, &format!("/v1/{slug}/auth/logout"), json!({}), None).await?;
    assert_problem(&anonymous_logout, 401, "missing-credential");
    // A refresh while the user is disabled is refused and signs the session out; once enabled
    // again, that refresh token is refused as signed out, never taken for a stolen token's reuse.
    let paused = sign_in(&c, slug, "paused@e2e.example").await?;
    let user = jwt_parts(&paused.access)?.1["sub"]
        .as_str()
        .ok_or("no sub")?
        .to_string();
    c.admin.set_consumer_status(slug, &user, "disabled").await?;
    assert_problem(
        &me(&c, slug, &paused.access).await?,
        403,
        "consumer-disabled",
    );
    let refused = refresh(&c, slug, &paused.refresh).await?;
    assert_problem(&refused, 403, "consumer-disabled");
    c.admin.set_consumer_status(slug, &user, "enabled").await?;
    let later = refresh(&c, slug, &paused.refresh).await?;
    assert_problem(&later, 401, "invalid-refresh-token");
    // Only the calls made with a live session reached the upstream.
    assert_eq!(c.upstream_requests(slug).len(), 3);
    Ok(())
}

pub async fn racing_refreshes_with_one_token_do_not_both_succeed(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-refresh-race";
    managed_tenant(&c, slug).await?;
    for round in 0..3 {
        let tokens = sign_in(&c, slug, &format!("racer{round}@e2e.example")).await?;
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let req = c
                .http
                .post(format!("{}/v1/{slug}/auth/refresh", c.base))
                .json(&json!({"refresh_token": tokens.refresh}))
                .timeout(STREAM_LIMIT);
            tasks.push(tokio::spawn(
                async move { Reply::read(req.send().await?).await },
            ));
        }
        let mut replies = Vec::new();
        for task in tasks {
            replies.push(task.await??);
        }
        let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
        let winners = statuses.iter().filter(|s| **s == 200).count();
        assert!(
            winners <= 1,
            "round {round}: more than one racing refresh succeeded: {statuses:?}"
        );
        for r in replies.iter().filter(|r| r.status != 200) {
            assert_eq!(r.status, 401, "round {round}: {}", r.describe());
            let kind = r.problem_type().unwrap_or_default();
            assert!(
                kind == "refresh-token-reused" || kind == "invalid-refresh-token",
                "round {round}: {}",
                r.describe()
            );
        }
    }
    Ok(())
}

pub async fn otp_codes_lock_after_five_wrong_tries_and_are_throttled(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-otp-limits";
    managed_tenant(&c, slug).await?;
    let locked = "locked@e2e.example";
    let code = request_code(&c, slug, locked).await?;
    // No later than the gateway's record of the send: the gap is counted from here.
    let first_sent = Instant::now();
    let wrong = wrong_code(&code);
    for left in [4, 3, 2, 1, 0] {
        let r = otp_verify(&c, slug, locked, &wrong).await?;
        assert_problem(&r, 401, "invalid-code");
        assert_eq!(r.json()["attempts_left"], left, "{}", r.describe());
    }
    let refused = otp_verify(&c, slug, locked, &code).await?;
    assert_problem(&refused, 401, "code-locked");

    // A second code for one address within 30 s is refused with Retry-After.
    let other = "throttled@e2e.example";
    let other_code = request_code(&c, slug, other).await?;
    let seen = c.mail.mails_to(other).len();
    let throttled = otp_start(&c, slug, other).await?;
    assert_problem(&throttled, 429, "rate-limited");
    let retry: u64 = throttled
        .header("retry-after")
        .ok_or("Retry-After missing")?
        .parse()?;
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        throttled.json()["retry_after"],
        retry,
        "{}",
        throttled.describe()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.mail.mails_to(other).len(),
        seen,
        "no mail for a throttled request"
    );
    // The throttled request did not replace the pending code.
    Tokens::from_reply(
        &otp_verify(&c, slug, other, &other_code).await?,
        "the first code after a throttled resend",
    )?;

    // Malformed input is 400, before any code is sent.
    for bad in [
        json!({"email": "not-an-email"}),
        json!({"email": "a@b"}),
        json!({"email": ""}),
        json!({}),
        json!({"email": "x@y.example", "extra": 1}),
    ] {
        let r = post_json(&c, &format!("/v1/{slug}/auth/otp/start"), bad.clone(), None).await?;
        assert_eq!(r.status, 400, "{bad}: {}", r.describe());
        assert_problem(&r, 400, "invalid-request");
    }
    for bad_code in ["12345", "abcdef", "1234567"] {
        let r = otp_verify(&c, slug, other, bad_code).await?;
        assert_problem(&r, 400, "invalid-request");
    }
    let unknown = otp_start(&c, "auth-no-such-project", other).await?;
    assert_problem(&unknown, 404, "not-found");

    // After the gap, a new code revives the locked-out address.
    let wait = OTP_SEND_GAP.saturating_sub(first_sent.elapsed());
    tokio::time::sleep(wait).await;
    let fresh = request_code(&c, slug, locked).await?;
    Tokens::from_reply(
        &otp_verify(&c, slug, locked, &fresh).await?,
        "a new code after the lockout",
    )?;
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// BYO JWT

pub async fn auth_events_record_sign_ins_refreshes_keys_and_mode_switches(
    c: Arc<Ctx>,
) -> CaseResult {
    let slug = "auth-events";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let switched = put_auth_mode(&c, &t.api_id, json!({"auth_mode": "managed"})).await?;
    expect_status(&switched, 200, "to managed")?;

    let email = "events@e2e.example";
    let code = request_code(&c, slug, email).await?;
    assert_problem(
        &otp_verify(&c, slug, email, &wrong_code(&code)).await?,
        401,
        "invalid-code",
    );
    let verified = otp_verify_with(
        &c,
        slug,
        email,
        &code,
        &challenge_of(slug, email),
        Some("203.0.113.7"),
    )
    .await?;
    let tokens = Tokens::from_reply(&verified, "sign in")?;
    let user_id = jwt_parts(&tokens.access)?.1["sub"]
        .as_str()
        .ok_or("no sub")?
        .to_string();
    Tokens::from_reply(&refresh(&c, slug, &tokens.refresh).await?, "refresh")?;
    assert_problem(
        &refresh(&c, slug, &tokens.refresh).await?,
        401,
        "refresh-token-reused",
    );
    let extra = c
        .admin
        .create_key(slug, &t.consumer_id, "short-lived")
        .await?;
    let extra_id = extra.id;
    c.admin.revoke_key(slug, &extra_id).await?;

    let wanted = [
        "sign_in",
        "otp_sent",
        "otp_failed",
        "refresh",
        "refresh_reuse",
        "key_created",
        "key_revoked",
        "mode_switched",
    ];
    let events = auth_events_until(&c, slug, "", |e| {
        let types = event_types(e);
        wanted.iter().all(|w| types.contains(*w))
            && e.iter().filter(|x| x["type"] == "key_created").count() >= 2
    })
    .await?;
    let one = |kind: &str| -> Result<Value> {
        let found: Vec<&Value> = events.iter().filter(|e| e["type"] == kind).collect();
        if found.len() != 1 {
            return Err(format!("expected one {kind} event, got {found:?}").into());
        }
        Ok(found[0].clone())
    };
    let sign_in = one("sign_in")?;
    assert_eq!(sign_in["consumer_id"], user_id.as_str(), "{sign_in}");
    assert_eq!(sign_in["subject"], email, "{sign_in}");
    assert_eq!(
        sign_in["ip"], "203.0.113.7",
        "the client IP comes from CF-Connecting-IP: {sign_in}"
    );
    let failed = one("otp_failed")?;
    assert_eq!(failed["subject"], email, "{failed}");
    assert_eq!(failed["detail"], "invalid-code", "{failed}");
    assert_eq!(one("otp_sent")?["subject"], email);
    assert_eq!(one("refresh")?["consumer_id"], user_id.as_str());
    assert_eq!(one("refresh_reuse")?["consumer_id"], user_id.as_str());
    let created: BTreeSet<String> = events
        .iter()
        .filter(|e| e["type"] == "key_created")
        .filter_map(|e| e["detail"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        created,
        [t.key_id.clone(), extra_id.clone()].into_iter().collect(),
        "{events:?}"
    );
    assert_eq!(one("key_revoked")?["detail"], extra_id.as_str());
    let mode = one("mode_switched")?;
    assert_eq!(mode["api_id"], t.api_id.as_str(), "{mode}");
    assert_eq!(mode["detail"], "consumer-key-only -> managed", "{mode}");
    for e in &events {
        assert!(
            e["id"].as_str().is_some_and(|id| id.starts_with("evt_"))
                && e["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{e}"
        );
    }
    let times: Vec<&str> = events.iter().filter_map(|e| e["time"].as_str()).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );

    let only = auth_events_until(&c, slug, "type=sign_in", |e| !e.is_empty()).await?;
    assert_eq!(
        event_types(&only),
        ["sign_in".to_string()].into_iter().collect(),
        "{only:?}"
    );
    assert_eq!(only.len(), 1);
    let none = auth_events_until(&c, slug, "type=no_such_event", |_| true).await?;
    assert!(none.is_empty(), "{none:?}");
    let future = auth_events_until(&c, slug, "since=2999-01-01T00:00:00Z", |_| true).await?;
    assert!(future.is_empty(), "{future:?}");
    let bad_since = c
        .admin
        .call(
            Method::GET,
            &format!("/api/v1/projects/{slug}/auth-events?since=yesterday"),
            None,
        )
        .await?;
    assert_problem(&bad_since, 400, "invalid-request");
    // Another project's log does not show these.
    let other = c
        .tenant_on_mock("auth-events-other", "ok", json!({}))
        .await?;
    let theirs = auth_events_until(&c, &other.project, "", |e| !e.is_empty()).await?;
    assert!(
        theirs
            .iter()
            .all(|e| e["subject"] != email && e["detail"] != extra_id.as_str()),
        "{theirs:?}"
    );
    Ok(())
}

/// A project whose APIs take only consumer keys (or BYO JWTs) has no OTP sign-in: its routes are 404.
async fn otp_exists_only_for_managed_apis(c: Arc<Ctx>) -> CaseResult {
    let slug = "otp-unmanaged";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let start = otp_start(&c, slug, "unmanaged@e2e.example").await?;
    assert_problem(&start, 404, "not-found");
    let verify = otp_verify(&c, slug, "unmanaged@e2e.example", "123456").await?;
    assert_problem(&verify, 404, "not-found");
    assert!(c.mail.mails_to("unmanaged@e2e.example").is_empty());
    let switched = put_auth_mode(&c, &t.api_id, json!({"auth_mode": "managed"})).await?;
    expect_status(&switched, 200, "auth-mode managed")?;
    let start = otp_start(&c, slug, "unmanaged@e2e.example").await?;
    expect_status(&start, 202, "otp/start once an API is managed")?;
    Ok(())
}

/// Dev mode needs `SLUICE_DEV` to be exactly `1` or `true`: with `off`, `/dev/mailbox` does not exist
/// and, with no mail provider configured, a sign-in code cannot be sent (503), never shown.
async fn dev_mode_only_when_asked(c: Arc<Ctx>) -> CaseResult {
    let gateway = Gateway::start_with(vec![("SLUICE_DEV".to_string(), "off".to_string())]).await?;
    let admin = gateway.admin();
    let slug = "dev-off";
    let t = admin
        .tenant(
            slug,
            "chat",
            json!({"base_url": c.mock.base_url(&format!("ok/tag/{slug}")), "default_model": "m"}),
        )
        .await?;
    let switched = admin
        .call(
            Method::PUT,
            &format!("/api/v1/gateway/apis/{}/auth-mode", t.api_id),
            Some(json!({"auth_mode": "managed"})),
        )
        .await?;
    expect_status(&switched, 200, "auth-mode managed")?;
    let http = http_client();
    let mailbox = Reply::read(
        http.get(format!("{}/dev/mailbox", gateway.base_url))
            .send()
            .await?,
    )
    .await?;
    assert_problem(&mailbox, 404, "not-found");
    let start = Reply::read(
        http.post(format!("{}/v1/{slug}/auth/otp/start", gateway.base_url))
            .json(&json!({"email": "someone@example.com"}))
            .send()
            .await?,
    )
    .await?;
    assert_problem(&start, 503, "email-not-configured");
    let mailbox = Reply::read(
        http.get(format!("{}/dev/mailbox", gateway.base_url))
            .send()
            .await?,
    )
    .await?;
    assert!(
        !mailbox.text.contains("someone@example.com"),
        "{}",
        mailbox.text
    );
    // Owners: no dev login, and email codes need a mail provider (refused for every address alike).
    let login = Reply::read(
        http.post(format!("{}/api/v1/auth/dev/login", gateway.base_url))
            .json(&json!({"email": "owner@example.com"}))
            .send()
            .await?,
    )
    .await?;
    assert_problem(&login, 404, "not-found");
    for email in ["owner@example.com", "nobody@example.org"] {
        let start = Reply::read(
            http.post(format!("{}/api/v1/auth/otp/start", gateway.base_url))
                .json(&json!({ "email": email }))
                .send()
                .await?,
        )
        .await?;
        assert_problem(&start, 503, "email-not-configured");
    }
    Ok(())
}

/// A page on another site can POST to the sign-in routes without a preflight (form-encoded, or
/// `no-cors`): those from origins the project does not allow are refused before any code is mailed
/// or tried. The project's allowed origins and the gateway's own pages go on; so do callers with no
/// `Origin` at all (servers, curl).
pub async fn sign_in_steps_come_only_from_allowed_pages(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-page-origin";
    managed_tenant(&c, slug).await?;
    let allowed = "http://app.allowed.example";
    let patched = c
        .admin
        .patch_project(slug, json!({"allowed_origins": [allowed]}))
        .await?;
    expect_status(&patched, 200, "allow an origin")?;
    let post = |path: String, origin: &'static str, form: &'static str| {
        let req = c
            .http
            .post(format!("{}{path}", c.base))
            .header("origin", origin)
            .header("content-type", "text/plain")
            .body(form);
        async move { Reply::read(req.send().await?).await }
    };
    let email = "victim@page-origin.example";
    let body = r#"{"email":"victim@page-origin.example"}"#;
    for path in [
        format!("/v1/{slug}/auth/otp/start"),
        "/api/v1/auth/otp/start".to_string(),
    ] {
        let r = post(path.clone(), "http://evil.example", body).await?;
        assert_problem(&r, 403, "origin-not-allowed");
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "{path}: {:?}",
            r.headers
        );
    }
    let verify = r#"{"email":"victim@page-origin.example","code":"000000","challenge_id":"chl_x"}"#;
    for path in [
        format!("/v1/{slug}/auth/otp/verify"),
        "/api/v1/auth/otp/verify".to_string(),
    ] {
        assert_problem(
            &post(path, "null", verify).await?,
            403,
            "origin-not-allowed",
        );
    }
    assert!(c.mail.mails_to(email).is_empty(), "no code was mailed");
    let ok = post(format!("/v1/{slug}/auth/otp/start"), allowed, body).await?;
    expect_status(&ok, 202, "an allowed page")?;
    let own = c.base.trim_end_matches('/').to_string();
    let r = Reply::read(
        c.http
            .post(format!("{own}/v1/{slug}/auth/otp/start"))
            .header("origin", own.as_str())
            .json(&json!({"email": "own@page-origin.example"}))
            .send()
            .await?,
    )
    .await?;
    expect_status(&r, 202, "the gateway's own page")?;
    expect_status(
        &otp_start(&c, slug, "server@page-origin.example").await?,
        202,
        "no Origin",
    )?;
    Ok(())
}
