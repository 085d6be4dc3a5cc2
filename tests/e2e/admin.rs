//! End-to-end cases of the admin basics: the admin token, listings that never show secrets, conflicts
//! and unknown ids.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{assert_problem, CaseFn, CaseResult, Ctx};
use crate::support::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![
        key_listing_never_shows_secrets,
        admin_needs_the_admin_token,
        admin_conflicts_unknown_ids_and_hidden_provider_key,
        custom_keys_are_hashed_masked_and_revocable,
        refusals_are_counted_per_day,
        plan_names_never_read_as_plan_ids,
        names_show_something_and_descriptions_hold_no_control_characters,
        null_is_refused_where_a_field_cannot_be_empty,
    ]
}

async fn key_listing_never_shows_secrets(c: Arc<Ctx>) -> CaseResult {
    let slug = "key-listing";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let second = c.admin.create_key(slug, &t.consumer_id, "key two").await?;
    let keys = [
        (t.key_id.clone(), t.secret.clone()),
        (second.id.clone(), second.secret.clone()),
    ];
    let second_prefix = second.prefix.clone();
    assert!(
        keys[1].1.starts_with(&second_prefix),
        "prefix {second_prefix} of the secret"
    );

    let listing = c.admin.list_keys(slug).await?;
    assert_eq!(listing.status, 200, "{}", listing.describe());
    assert!(
        !listing.text.contains("\"secret\""),
        "a `secret` member in {}",
        listing.text
    );
    for entry in listing.json()["keys"].as_array().into_iter().flatten() {
        let fields: Vec<&String> = entry
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert!(
            fields
                .iter()
                .all(|f| !f.contains("secret") && !f.contains("hash")),
            "a listed key has a secret or hash field: {entry}"
        );
    }
    let listed = listing.json()["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed.len(), 2, "{}", listing.text);
    for (id, secret) in &keys {
        assert!(
            !listing.text.contains(secret.as_str()),
            "secret {id} shown in the listing"
        );
        // Nothing beyond the shown prefix either.
        assert!(
            !listing.text.contains(&secret[15..]),
            "secret tail of {id} shown"
        );
        let entry = listed
            .iter()
            .find(|k| k["id"] == id.as_str())
            .ok_or_else(|| format!("key {id} not listed: {}", listing.text))?;
        let prefix = entry["prefix"].as_str().unwrap_or("");
        assert!(
            prefix.starts_with("ask_live_")
                && prefix.len() < secret.len()
                && secret.starts_with(prefix),
            "prefix {prefix:?} must be the secret's start"
        );
        assert_eq!(entry["consumer_id"], t.consumer_id.as_str());
    }
    // Once revoked, a key is no longer listed.
    c.admin.revoke_key(slug, &keys[1].0).await?;
    let after = c.admin.list_keys(slug).await?;
    let ids: Vec<Value> = after.json()["keys"]
        .as_array()
        .map(|a| a.iter().map(|k| k["id"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(ids, vec![Value::from(t.key_id.as_str())], "{}", after.text);
    Ok(())
}

async fn admin_needs_the_admin_token(c: Arc<Ctx>) -> CaseResult {
    let url = format!("{}/api/v1/projects", c.base);
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("no token, GET", c.http.get(&url)),
        (
            "wrong token, GET",
            c.http.get(&url).bearer_auth("not-the-admin-token"),
        ),
        (
            "no token, POST",
            c.http
                .post(&url)
                .json(&json!({"slug": "admin-sneak", "name": "x"})),
        ),
        (
            "wrong token, POST",
            c.http
                .post(&url)
                .bearer_auth(format!("{}x", c.admin.token))
                .json(&json!({"slug": "admin-sneak", "name": "x"})),
        ),
        (
            "token prefix, GET",
            c.http
                .get(&url)
                .bearer_auth(&c.admin.token[..c.admin.token.len() - 1]),
        ),
        (
            "token as X-API-Key",
            c.http.get(&url).header("x-api-key", &c.admin.token),
        ),
    ];
    for (what, req) in cases {
        let r = Reply::read(req.send().await?).await?;
        assert_eq!(r.status, 401, "{what}: {}", r.describe());
        assert_problem(&r, 401, "admin-unauthorized");
        assert!(
            r.header("www-authenticate").is_some(),
            "{what}: no WWW-Authenticate"
        );
    }
    // Nothing was created by the refused POSTs, and the right token works.
    let ok = c
        .admin
        .call(reqwest::Method::GET, "/api/v1/projects", None)
        .await?;
    assert_eq!(ok.status, 200, "{}", ok.describe());
    assert!(
        !ok.text.contains("admin-sneak"),
        "a refused POST created a project"
    );
    Ok(())
}

async fn admin_conflicts_unknown_ids_and_hidden_provider_key(c: Arc<Ctx>) -> CaseResult {
    let slug = "admin-errors";
    let provider_key = "sk-provider-SECRET-4711";
    c.admin.create_project(slug).await?;
    let dup = c
        .admin
        .call(
            reqwest::Method::POST,
            "/api/v1/projects",
            Some(json!({"slug": slug, "name": "again"})),
        )
        .await?;
    assert_problem(&dup, 409, "conflict");

    let missing = c.admin.get_api("api_doesnotexist").await?;
    assert_problem(&missing, 404, "not-found");

    let created = c
        .admin
        .create_api(
            slug,
            "chat",
            json!({"base_url": c.mock.base_url(&format!("ok/tag/{slug}")), "api_key": provider_key, "default_model": "m"}),
        )
        .await?;
    let created_text = created.to_string();
    assert!(
        !created_text.contains(provider_key),
        "create answer shows the key: {created_text}"
    );
    let id = str_field(&created, "id")?;

    let dup_api = c
        .admin
        .call(
            reqwest::Method::POST,
            "/api/v1/gateway/apis",
            Some(json!({"project": slug, "slug": "chat", "name": "again", "upstream": {"base_url": "demo"}})),
        )
        .await?;
    assert_problem(&dup_api, 409, "conflict");

    let got = c.admin.get_api(&id).await?;
    assert_eq!(got.status, 200, "{}", got.describe());
    assert!(
        !got.text.contains(provider_key),
        "GET api shows the provider key: {}",
        got.text
    );
    assert_eq!(got.json()["upstream"]["has_api_key"], true, "{}", got.text);
    assert!(
        got.json()["upstream"].get("api_key").is_none(),
        "{}",
        got.text
    );

    let listed = c
        .admin
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/gateway/apis?project={slug}"),
            None,
        )
        .await?;
    assert_eq!(listed.status, 200, "{}", listed.describe());
    assert!(
        !listed.text.contains(provider_key),
        "listing shows the provider key"
    );
    assert_eq!(
        listed.json()["apis"].as_array().map(Vec::len),
        Some(1),
        "{}",
        listed.text
    );

    let patched = c.admin.patch_api(&id, json!({"name": "renamed"})).await?;
    assert!(
        !patched.to_string().contains(provider_key),
        "PATCH answer shows the provider key"
    );
    assert_eq!(patched["name"], "renamed");
    assert_eq!(
        patched["upstream"]["has_api_key"], true,
        "a rename keeps the key"
    );

    // The key was given for 127.0.0.1:port; moving the upstream to another host without a new key
    // drops it (and says so), so the old key never reaches the new host.
    let same_host = c
        .admin
        .patch_api(
            &id,
            json!({"upstream": {"base_url": c.mock.base_url(&format!("ok/tag/{slug}-v2"))}}),
        )
        .await?;
    assert_eq!(same_host["upstream"]["has_api_key"], true, "{same_host}");
    assert!(
        same_host.get("upstream_key_dropped").is_none(),
        "{same_host}"
    );
    let moved_url = format!(
        "http://localhost:{}/s/ok/tag/{slug}-moved",
        c.mock.addr.port()
    );
    let moved = c
        .admin
        .patch_api(&id, json!({"upstream": {"base_url": moved_url}}))
        .await?;
    assert_eq!(moved["upstream_key_dropped"], true, "{moved}");
    assert_eq!(moved["upstream"]["has_api_key"], false, "{moved}");
    assert!(
        moved["notice"].as_str().unwrap_or("").contains("api_key"),
        "{moved}"
    );
    let again = c.admin.get_api(&id).await?;
    assert_eq!(
        again.json()["upstream"]["has_api_key"],
        false,
        "{}",
        again.text
    );

    let unknown_patch = c
        .admin
        .call(
            reqwest::Method::PATCH,
            "/api/v1/gateway/apis/api_nope",
            Some(json!({"name": "x"})),
        )
        .await?;
    assert_problem(&unknown_patch, 404, "not-found");

    // The admin API for an unknown project is 404, too.
    let no_project = c
        .admin
        .call(
            reqwest::Method::POST,
            "/api/v1/projects/admin-errors-nope/consumers",
            Some(json!({"name": "x"})),
        )
        .await?;
    assert_problem(&no_project, 404, "not-found");
    Ok(())
}

async fn custom_keys_are_hashed_masked_and_revocable(c: Arc<Ctx>) -> CaseResult {
    let slug = "custom-keys";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let path = format!("/api/v1/projects/{slug}/consumers/{}/keys", t.consumer_id);
    let secret = "legacy-system_KEY-0123456789abcdef";
    let made = c
        .admin
        .call(
            reqwest::Method::POST,
            &path,
            Some(json!({"name": "migrated", "secret": secret})),
        )
        .await?;
    expect_status(&made, 201, "a custom key")?;
    assert_eq!(made.json()["secret"], secret);
    assert_eq!(made.json()["prefix"], "legacy");
    assert_eq!(made.json()["custom"], true);
    let key_id = str_field(&made.json(), "id")?;
    // Refused: too short, whitespace, a generated key's or a JWT's shape, a secret already in use.
    for bad in [
        "short-secret-123",
        "has spaces in it 0123456789",
        "ask_live_0123456789012345678901234",
        "aaaaaaaaaaaa.bbbbbbbbbbbbbbb.ccccccc",
        secret,
    ] {
        let r = c
            .admin
            .call(
                reqwest::Method::POST,
                &path,
                Some(json!({"name": "x", "secret": bad})),
            )
            .await?;
        assert_problem(&r, 400, "invalid-request");
        assert_eq!(r.json()["param"], "secret", "{}", r.text);
        assert!(
            !r.text.contains(&t.key_id),
            "the colliding key is named: {}",
            r.text
        );
    }
    // Accepted wherever the API reads its credential: Bearer, X-API-Key, a custom header, a query.
    let body = chat_body(None, "hi", false);
    for (what, key) in [
        ("bearer", KeyHeader::Bearer),
        ("x-api-key", KeyHeader::XApiKey),
    ] {
        let r = c.send_chat(&t, Some((secret, key)), &body).await?;
        expect_status(&r, 200, what)?;
    }
    c.admin
        .patch_api(
            &t.api_id,
            json!({"credential": {"location": "query", "name": "key"}}),
        )
        .await?;
    let url = format!("{}/v1/{slug}/chat/chat/completions?key={secret}", c.base);
    let r = Reply::read(c.http.post(&url).json(&body).send().await?).await?;
    expect_status(&r, 200, "in the query")?;
    c.admin
        .patch_api(
            &t.api_id,
            json!({"credential": {"location": "header", "name": "X-Legacy-Key"}}),
        )
        .await?;
    let r = Reply::read(
        c.chat(&t, None)
            .header("X-Legacy-Key", secret)
            .json(&body)
            .send()
            .await?,
    )
    .await?;
    expect_status(&r, 200, "in a custom header")?;
    // Listed masked like any key; unknown custom-shaped secrets are 401.
    let listing = c.admin.list_keys(slug).await?;
    assert!(!listing.text.contains(secret), "{}", listing.text);
    assert!(listing.text.contains("\"legacy\""), "{}", listing.text);
    for unknown in [
        "never-issued-0123456789abcdefgh",
        "never-issued-0123456789abcdefgh",
    ] {
        let r = Reply::read(
            c.chat(&t, None)
                .header("X-Legacy-Key", unknown)
                .json(&body)
                .send()
                .await?,
        )
        .await?;
        assert_problem(&r, 401, "invalid-credential");
    }
    // It is exchanged for a token like a generated key.
    let exchanged = Reply::read(
        c.http
            .post(format!("{}/v1/{slug}/auth/token", c.base))
            .bearer_auth(secret)
            .send()
            .await?,
    )
    .await?;
    expect_status(&exchanged, 200, "a custom key exchanged for a token")?;
    // Revoked: the next request fails.
    c.admin.revoke_key(slug, &key_id).await?;
    let r = Reply::read(
        c.chat(&t, None)
            .header("X-Legacy-Key", secret)
            .json(&body)
            .send()
            .await?,
    )
    .await?;
    assert_problem(&r, 401, "invalid-credential");
    Ok(())
}

async fn refusals_are_counted_per_day(c: Arc<Ctx>) -> CaseResult {
    let slug = "refusal-counts";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let r = c
        .admin
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/gateway/apis/{}/plans/default", t.api_id),
            Some(json!({"requests_per_day": 2})),
        )
        .await?;
    expect_status(&r, 200, "two a day")?;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(c.chat_ok(&t).await?.status);
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    let path = format!("/api/v1/gateway/apis/{}/usage?group_by=day", t.api_id);
    let report = c
        .admin_get_until(&path, |v| {
            v["totals"]["refused"] == 3 && v["totals"]["requests"] == 2
        })
        .await?;
    let days = report["groups"].as_array().cloned().unwrap_or_default();
    assert_eq!(days.len(), 1, "{report}");
    assert_eq!(days[0]["refused"], 3, "{report}");
    assert_eq!(days[0]["requests"], 2, "{report}");
    // Without grouping, the records are the admitted requests only.
    let records = c
        .admin
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/gateway/apis/{}/usage", t.api_id),
            None,
        )
        .await?;
    assert_eq!(
        records.json()["records"].as_array().map(Vec::len),
        Some(2),
        "{}",
        records.text
    );
    Ok(())
}

/// Plans are named by id or by name: a name shaped like an id is refused, so the two never collide.
async fn plan_names_never_read_as_plan_ids(c: Arc<Ctx>) -> CaseResult {
    let t = c.tenant_on_mock("plan-names", "ok", json!({})).await?;
    let plans = format!("/api/v1/gateway/apis/{}/plans", t.api_id);
    let listed = c.admin.call(reqwest::Method::GET, &plans, None).await?;
    expect_status(&listed, 200, "list plans")?;
    let default_id = str_field(&listed.json()["plans"][0], "id")?;
    assert!(default_id.starts_with("pln_"), "{}", listed.text);
    let named_like_an_id = c
        .admin
        .call(
            reqwest::Method::POST,
            &plans,
            Some(json!({"name": default_id, "requests_per_day": 1})),
        )
        .await?;
    assert_problem(&named_like_an_id, 400, "invalid-request");
    assert_eq!(
        named_like_an_id.json()["param"],
        "name",
        "{}",
        named_like_an_id.text
    );
    let renamed = c
        .admin
        .call(
            reqwest::Method::PATCH,
            &format!("{plans}/default"),
            Some(json!({"name": "pln_other"})),
        )
        .await?;
    assert_problem(&renamed, 400, "invalid-request");
    // The default plan is still found by its id, and is still the default.
    let by_id = c
        .admin
        .call(
            reqwest::Method::PATCH,
            &format!("{plans}/{default_id}"),
            Some(json!({"requests_per_day": 1000})),
        )
        .await?;
    expect_status(&by_id, 200, "the default plan by id")?;
    assert_eq!(by_id.json()["name"], "default", "{}", by_id.text);
    Ok(())
}

async fn names_show_something_and_descriptions_hold_no_control_characters(
    c: Arc<Ctx>,
) -> CaseResult {
    let slug = "admin-text";
    c.admin.create_project(slug).await?;
    let consumers = format!("/api/v1/projects/{slug}/consumers");
    for (body, param) in [
        (json!({"name": "\u{200B}\u{FEFF}"}), "name"),
        (json!({"name": "invoice\u{202E}fdp.exe"}), "name"),
        (
            json!({"name": "ok", "description": "a\u{0}b"}),
            "description",
        ),
        (
            json!({"name": "ok", "description": "\u{1b}[31mred"}),
            "description",
        ),
    ] {
        let r = c
            .admin
            .call(reqwest::Method::POST, &consumers, Some(body.clone()))
            .await?;
        assert_problem(&r, 400, "invalid-request");
        assert_eq!(r.json()["param"], param, "{body}: {}", r.text);
    }
    let fine = c
        .admin
        .call(
            reqwest::Method::POST,
            &consumers,
            Some(json!({"name": "שלום acme", "description": "two\nlines\tand a tab"})),
        )
        .await?;
    expect_status(&fine, 201, "a name and a multi-line description")?;
    Ok(())
}

/// A `null` for a field that has no empty value is 400 naming it, and changes nothing (it used to
/// read as "left out" and answer 200); fields that `null` clears still clear.
async fn null_is_refused_where_a_field_cannot_be_empty(c: Arc<Ctx>) -> CaseResult {
    let slug = "admin-nulls";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let api = format!("/api/v1/gateway/apis/{}", t.api_id);
    let consumer = format!("/api/v1/projects/{slug}/consumers/{}", t.consumer_id);
    let project = format!("/api/v1/projects/{slug}");
    let org = "/api/v1/orgs/default".to_string();
    let read = |path: String| {
        let c = c.clone();
        async move {
            let r = c.admin.call(reqwest::Method::GET, &path, None).await?;
            expect_status(&r, 200, &path)?;
            Ok::<Value, BoxError>(r.json())
        }
    };
    let paths = [api.clone(), consumer.clone(), project.clone()];
    let mut before = Vec::new();
    for p in &paths {
        before.push(read(p.clone()).await?);
    }
    for (path, body, param) in [
        (&api, json!({"name": null}), "name"),
        (&api, json!({"upstream": null}), "upstream"),
        (&api, json!({"server_timing": null}), "server_timing"),
        (
            &api,
            json!({"name": "Renamed", "upstream": {"timeout_ms": null}}),
            "upstream.timeout_ms",
        ),
        (&consumer, json!({"status": null}), "status"),
        (&consumer, json!({"name": null, "description": "d"}), "name"),
        (&project, json!({"name": null}), "name"),
        (&project, json!({"signup": null}), "signup"),
        (&org, json!({"name": null}), "name"),
    ] {
        let r = c
            .admin
            .call(reqwest::Method::PATCH, path, Some(body.clone()))
            .await?;
        assert_problem(&r, 400, "invalid-request");
        assert_eq!(r.json()["param"], param, "{path} {body}: {}", r.text);
    }
    for (p, was) in paths.iter().zip(&before) {
        assert_eq!(&read(p.clone()).await?, was, "{p} changed");
    }
    let cleared = c
        .admin
        .call(
            reqwest::Method::PATCH,
            &api,
            Some(json!({"upstream": {"default_model": null}})),
        )
        .await?;
    expect_status(&cleared, 200, "null clears the default model")?;
    assert_eq!(
        cleared.json()["upstream"]["default_model"],
        Value::Null,
        "{}",
        cleared.text
    );
    let cleared = c
        .admin
        .call(
            reqwest::Method::PATCH,
            &consumer,
            Some(json!({"description": null})),
        )
        .await?;
    expect_status(&cleared, 200, "null clears the description")?;
    Ok(())
}
