//! The OpenAPI document at `GET /openapi.json` is true: real answers of every part of the surface
//! (data plane, sign-in, admin; successes and errors) are validated against the schema the
//! document gives for their path, method, status and media type, with a JSON Schema validator.

use std::sync::Arc;

use reqwest::Method;
use serde_json::{json, Value};

use super::{assert_problem, CaseFn, CaseResult, Ctx};
use crate::support::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![answers_match_the_openapi_document]
}

/// The document's operation for a concrete path: `{param}` segments match any one segment (the
/// most literal template wins, so `/models/{model}` is not taken for `/models`).
fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> Option<(&'a str, &'a Value)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut best: Option<(usize, &str, &Value)> = None;
    for (template, item) in doc["paths"].as_object()? {
        let t: Vec<&str> = template.trim_matches('/').split('/').collect();
        let fits = t.len() == segs.len()
            && t.iter()
                .zip(&segs)
                .all(|(a, b)| a == b || (a.starts_with('{') && a.ends_with('}')));
        let literal = t.iter().filter(|s| !s.starts_with('{')).count();
        if let (true, Some(op)) = (fits, item.get(method.to_ascii_lowercase())) {
            if best.is_none_or(|(l, _, _)| literal > l) {
                best = Some((literal, template, op));
            }
        }
    }
    best.map(|(_, t, op)| (t, op))
}

/// Checks one answer against the document: its status is documented (or `default`), its media type
/// is one the response lists, and its body validates against that media type's schema.
fn check(doc: &Value, method: &str, path: &str, reply: &Reply) -> Result<String> {
    let (template, op) = operation(doc, method, path)
        .ok_or_else(|| format!("{method} {path}: not in the document"))?;
    let responses = &op["responses"];
    let response = responses
        .get(reply.status.to_string())
        .or_else(|| responses.get("default"))
        .ok_or_else(|| {
            format!(
                "{method} {template}: status {} not documented",
                reply.status
            )
        })?;
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        if reply.text.is_empty() {
            return Ok(format!("{method} {template} {}", reply.status));
        }
        return Err(format!(
            "{method} {template} {}: a body, and none documented",
            reply.status
        )
        .into());
    };
    let media = reply
        .content_type()
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let schema = content
        .get(&media)
        .map(|m| m["schema"].clone())
        .ok_or_else(|| {
            format!(
                "{method} {template} {}: media type {media} not documented",
                reply.status
            )
        })?;
    // The response schema with the document's components beside it, so `#/components/…` resolves.
    let root = json!({"components": doc["components"], "allOf": [schema]});
    let validator =
        jsonschema::validator_for(&root).map_err(|e| format!("{template}: schema: {e}"))?;
    let body: Value = serde_json::from_str(&reply.text)?;
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if !errors.is_empty() {
        return Err(format!(
            "{method} {path} {}: {}\n{}",
            reply.status,
            errors.join("; "),
            reply.text
        )
        .into());
    }
    Ok(format!("{method} {template} {} {media}", reply.status))
}

/// Every query parameter a call sends is one the document lists for its operation (on the path or
/// on the operation), so a client reading the document finds it.
fn check_query(doc: &Value, method: &str, path: &str, query: &str) -> Result<()> {
    let Some((template, op)) = operation(doc, method, path) else {
        return Ok(());
    };
    let item = &doc["paths"][template];
    let listed: Vec<&str> = [&item["parameters"], &op["parameters"]]
        .into_iter()
        .filter_map(Value::as_array)
        .flatten()
        .filter(|p| p["in"] == "query")
        .filter_map(|p| p["name"].as_str())
        .collect();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let name = pair.split('=').next().unwrap_or(pair);
        if !listed.contains(&name) {
            return Err(
                format!("{method} {template}: query parameter `{name}` is not documented").into(),
            );
        }
    }
    Ok(())
}

async fn answers_match_the_openapi_document(c: Arc<Ctx>) -> CaseResult {
    let served = Reply::read(
        c.http
            .get(format!("{}/openapi.json", c.base))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(served.status, 200, "{}", served.describe());
    let doc = served.json();
    assert_eq!(doc["openapi"], "3.1.0");
    jsonschema::validator_for(
        &json!({"components": doc["components"], "$ref": "#/components/schemas/Problem"}),
    )
    .map_err(|e| format!("the document's schemas: {e}"))?;

    let slug = "openapi-check";
    let t = c
        .tenant_on_mock(slug, "ok", json!({"models": ["mock-1"]}))
        .await?;
    let api_id = t.api_id.clone();
    let managed = c
        .admin
        .call(
            Method::PUT,
            &format!("/api/v1/gateway/apis/{api_id}/auth-mode"),
            Some(json!({"auth_mode": "managed"})),
        )
        .await?;
    expect_status(&managed, 200, "auth-mode managed")?;
    let p = |path: &str| format!("/v1/{slug}/chat{path}");
    let data = |method: Method, path: String, body: Option<Value>, key: Option<&str>| {
        let mut req = c.http.request(method, format!("{}{path}", c.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move { Reply::read(req.send().await?).await }
    };
    let key = Some(t.secret.as_str());
    let msg = json!([{"role": "user", "content": "hi"}]);
    let mut calls: Vec<(Method, String, Reply)> = Vec::new();
    macro_rules! call {
        ($method:expr, $path:expr, $body:expr, $key:expr) => {{
            let path: String = $path;
            let reply = data($method, path.clone(), $body, $key).await?;
            calls.push(($method, path, reply));
        }};
    }
    call!(
        Method::POST,
        p("/chat/completions"),
        Some(json!({"model": "mock-1", "messages": msg})),
        key
    );
    call!(
        Method::POST,
        p("/chat/completions"),
        Some(json!({"model": "mock-1", "messages": msg})),
        Some("ask_live_nope")
    );
    call!(
        Method::POST,
        p("/chat/completions"),
        Some(json!({"model": "nope", "messages": msg})),
        key
    );
    call!(
        Method::POST,
        p("/chat/completions"),
        Some(json!({"messages": 1})),
        key
    );
    call!(
        Method::POST,
        p("/responses"),
        Some(json!({"model": "mock-1", "input": "hi"})),
        key
    );
    call!(
        Method::POST,
        p("/embeddings"),
        Some(json!({"model": "mock-1", "input": "hi"})),
        key
    );
    call!(
        Method::POST,
        p("/v1/messages"),
        Some(json!({"model": "mock-1", "max_tokens": 10, "messages": msg})),
        key
    );
    call!(
        Method::POST,
        p("/messages"),
        Some(json!({"model": "mock-1", "messages": msg})),
        key
    );
    call!(
        Method::POST,
        p("/v1/messages/count_tokens"),
        Some(json!({"model": "mock-1", "messages": msg})),
        key
    );
    call!(Method::GET, p("/models"), None, key);
    call!(Method::GET, p("/models/mock-1"), None, key);
    call!(Method::GET, p("/models/none"), None, key);
    call!(Method::GET, p("/v1/models?limit=1"), None, key);
    call!(Method::GET, p("/v1/models/mock-1"), None, key);
    call!(Method::GET, p("/v1/models/none"), None, key);
    call!(Method::GET, p("/usage"), None, key);
    call!(
        Method::POST,
        format!("/v1/{slug}/auth/otp/start"),
        Some(json!({"email": "a@example.com"})),
        None
    );
    call!(
        Method::POST,
        format!("/v1/{slug}/auth/otp/verify"),
        Some(json!({"email": "a@example.com", "code": "000000", "challenge_id": "chl_made_up"})),
        None
    );
    call!(
        Method::POST,
        format!("/v1/{slug}/auth/token"),
        Some(json!({"grant_type": "client_credentials"})),
        key
    );
    call!(
        Method::GET,
        format!("/v1/{slug}/.well-known/jwks.json"),
        None,
        None
    );
    call!(Method::GET, "/health".to_string(), None, None);
    let admin = Some(c.admin.token.as_str());
    call!(Method::GET, "/api/v1/projects".to_string(), None, admin);
    call!(Method::GET, format!("/api/v1/projects/{slug}"), None, admin);
    call!(
        Method::GET,
        format!("/api/v1/projects/{slug}/consumers"),
        None,
        admin
    );
    call!(
        Method::POST,
        format!("/api/v1/projects/{slug}/consumers"),
        Some(json!({"name": "another"})),
        admin
    );
    call!(
        Method::GET,
        format!("/api/v1/projects/{slug}/consumers/{}", t.consumer_id),
        None,
        admin
    );
    call!(
        Method::POST,
        format!("/api/v1/projects/{slug}/consumers/{}/keys", t.consumer_id),
        Some(json!({"name": "k2"})),
        admin
    );
    call!(
        Method::GET,
        format!("/api/v1/projects/{slug}/keys"),
        None,
        admin
    );
    let mtls = format!(
        "/api/v1/projects/{slug}/consumers/{}/mtls-credentials",
        t.consumer_id
    );
    call!(
        Method::POST,
        mtls.clone(),
        Some(json!({"fingerprint_sha256": "ab".repeat(32)})),
        admin
    );
    call!(
        Method::POST,
        mtls.clone(),
        Some(json!({"issuer_dn": "CN=CA"})),
        admin
    );
    call!(Method::GET, mtls, None, admin);
    call!(
        Method::GET,
        format!("/api/v1/projects/{slug}/auth-events"),
        None,
        admin
    );
    call!(
        Method::GET,
        format!("/api/v1/projects/{slug}/auth-events?since=2026-01-01T00:00:00Z&type=key_created"),
        None,
        admin
    );
    // A date that is not on the calendar is a 400, not the next month's first days.
    call!(
        Method::GET,
        format!("/api/v1/projects/{slug}/auth-events?since=2026-02-30"),
        None,
        admin
    );
    // OAuth: clients, grants, the metadata documents and an RFC 6749 error.
    let clients = format!("/api/v1/projects/{slug}/oauth/clients");
    call!(
        Method::POST,
        clients.clone(),
        Some(
            json!({"name": "OpenAPI app", "type": "confidential", "redirect_uris": ["https://app.example/cb"], "scopes": ["chat"]})
        ),
        admin
    );
    call!(
        Method::POST,
        clients.clone(),
        Some(json!({"name": "Bad", "type": "public", "redirect_uris": ["http://app.example/cb"]})),
        admin
    );
    call!(Method::GET, clients, None, admin);
    call!(
        Method::GET,
        format!("/api/v1/projects/{slug}/oauth/grants"),
        None,
        admin
    );
    call!(
        Method::GET,
        format!("/.well-known/oauth-authorization-server/v1/{slug}"),
        None,
        None
    );
    call!(
        Method::GET,
        format!("/.well-known/oauth-protected-resource/v1/{slug}/chat"),
        None,
        None
    );
    call!(
        Method::POST,
        format!("/v1/{slug}/oauth/token"),
        Some(json!({"grant_type": "authorization_code", "client_id": "cli_nobody"})),
        None
    );
    call!(
        Method::POST,
        format!("/v1/{slug}/oauth/register"),
        Some(json!({"redirect_uris": ["https://app.example/cb"]})),
        None
    );
    call!(Method::GET, "/api/v1/gateway/apis".to_string(), None, admin);
    call!(
        Method::GET,
        format!("/api/v1/gateway/apis/{api_id}"),
        None,
        admin
    );
    call!(
        Method::GET,
        format!("/api/v1/gateway/apis/{api_id}/plans"),
        None,
        admin
    );
    call!(
        Method::GET,
        format!("/api/v1/gateway/apis/{api_id}/usage"),
        None,
        admin
    );
    call!(
        Method::GET,
        "/api/v1/projects".to_string(),
        None,
        Some("wrong-admin-token")
    );
    call!(
        Method::POST,
        "/api/v1/projects".to_string(),
        Some(json!({"slug": "Bad Slug"})),
        admin
    );
    // Owners and orgs.
    let login = data(
        Method::POST,
        "/api/v1/auth/dev/login".into(),
        Some(json!({"email": "openapi.owner@example.com"})),
        None,
    )
    .await?;
    expect_status(&login, 200, "dev login")?;
    let tokens = login.json();
    calls.push((Method::POST, "/api/v1/auth/dev/login".into(), login));
    let owner_token = str_field(&tokens, "access_token")?;
    let org = str_field(&tokens, "org_slug")?;
    let owner = Some(owner_token.as_str());
    call!(
        Method::POST,
        "/api/v1/auth/refresh".to_string(),
        Some(json!({"refresh_token": tokens["refresh_token"]})),
        None
    );
    call!(Method::GET, "/api/v1/orgs/me".to_string(), None, owner);
    call!(Method::GET, "/api/v1/orgs/me".to_string(), None, admin);
    call!(Method::GET, "/api/v1/orgs".to_string(), None, owner);
    call!(Method::GET, format!("/api/v1/orgs/{org}"), None, owner);
    call!(
        Method::POST,
        format!("/api/v1/orgs/{org}/members"),
        Some(json!({"email": "openapi.dev@example.com", "role": "developer"})),
        owner
    );
    call!(
        Method::GET,
        format!("/api/v1/orgs/{org}/members"),
        None,
        owner
    );
    call!(
        Method::POST,
        format!("/api/v1/orgs/{org}/keys"),
        Some(json!({"name": "openapi"})),
        owner
    );
    call!(Method::GET, format!("/api/v1/orgs/{org}/keys"), None, owner);
    call!(
        Method::GET,
        format!("/api/v1/orgs/{org}/audit"),
        None,
        owner
    );
    call!(
        Method::POST,
        format!("/api/v1/orgs/{org}/providers"),
        Some(json!({"provider": "groq", "api_key": "gsk-openapi-0001"})),
        owner
    );
    call!(
        Method::GET,
        format!("/api/v1/orgs/{org}/providers"),
        None,
        owner
    );
    call!(Method::GET, "/api/v1/orgs/default".to_string(), None, owner);
    call!(Method::GET, "/api/v1/auth/github".to_string(), None, None);
    call!(
        Method::GET,
        "/api/v1/.well-known/jwks.json".to_string(),
        None,
        None
    );
    call!(
        Method::POST,
        "/api/v1/auth/otp/start".to_string(),
        Some(json!({"email": "openapi.owner@example.com"})),
        None
    );

    let mut seen = Vec::new();
    for (method, path, reply) in &calls {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        seen.push(check(&doc, method.as_str(), path, reply)?);
        check_query(&doc, method.as_str(), path, query)?;
    }
    for (_, path, reply) in &calls {
        if path.ends_with("auth-events?since=2026-02-30") {
            assert_problem(reply, 400, "invalid-request");
        }
    }
    println!(
        "    measured: {} answers validated against /openapi.json",
        seen.len()
    );
    assert!(
        seen.iter().any(|s| s.contains("application/problem+json")),
        "errors were checked too"
    );
    Ok(())
}
