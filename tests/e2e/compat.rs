//! End-to-end cases of what OpenAI-style clients rely on beyond the happy path: errors they can
//! read, request ids both ways, bodies forwarded as written, and CORS on every end-user answer.

use std::sync::Arc;

use reqwest::Method;
use serde_json::{json, Value};

use super::spend::n_records;
use super::{assert_problem, CaseFn, CaseResult, Ctx};
use crate::support::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![
        errors_carry_the_openai_error_member,
        request_ids_go_upstream_and_come_back,
        bodies_reach_the_upstream_as_written,
        cors_headers_are_on_404_and_405_too,
        unknown_methods_are_405_and_head_is_get_without_a_body,
    ]
}

/// `error.message` is the problem's `detail`, `error.type` its type, `error.code` a stable code;
/// every answer has an `x-request-id`.
async fn errors_carry_the_openai_error_member(c: Arc<Ctx>) -> CaseResult {
    let t = c.tenant_on_mock("compat-errors", "ok", json!({})).await?;
    let checks = [
        (
            c.send_chat(
                &t,
                Some((
                    "ask_live_0000000000000000000000000000000000",
                    KeyHeader::Bearer,
                )),
                &chat_body(None, "hi", false),
            )
            .await?,
            401,
            "invalid-credential",
        ),
        (
            c.send_chat(
                &t,
                Some((&t.secret, KeyHeader::Bearer)),
                &json!({"messages": "not a list"}),
            )
            .await?,
            400,
            "invalid-request",
        ),
        (
            Reply::read(
                c.http
                    .get(format!("{}/v1/compat-errors/chat/nowhere", c.base))
                    .send()
                    .await?,
            )
            .await?,
            404,
            "not-found",
        ),
    ];
    for (reply, status, kind) in checks {
        assert_problem(&reply, status, kind);
        let body = reply.json();
        let error = &body["error"];
        assert_eq!(error["message"], body["detail"], "{}", reply.describe());
        assert_eq!(error["type"], kind, "{}", reply.describe());
        assert_eq!(
            error["code"],
            kind.replace('-', "_"),
            "{}",
            reply.describe()
        );
        assert!(error.get("param").is_some(), "param present (maybe null)");
        assert!(
            reply
                .header("x-request-id")
                .is_some_and(|id| id.starts_with("req_")),
            "x-request-id on {status}: {:?}",
            reply.headers
        );
    }
    Ok(())
}

/// The gateway's request id goes upstream and is the usage record's id; the upstream's own id (and
/// processing time) comes back to the client and is recorded too.
async fn request_ids_go_upstream_and_come_back(c: Arc<Ctx>) -> CaseResult {
    let slug = "compat-reqid";
    let t = c.tenant_on_mock(slug, "ok/reqid/up-42", json!({})).await?;
    let r = c.chat_ok(&t).await?;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.header("x-request-id"), Some("up-42"), "the upstream's id");
    assert_eq!(r.header("openai-processing-ms"), Some("42"));
    let sent = c.upstream_requests(slug);
    let ours = sent[0]
        .header("x-request-id")
        .ok_or("the upstream got no x-request-id")?
        .to_string();
    assert!(ours.starts_with("req_"), "{ours}");
    let records = n_records(&c, &t, 1).await?;
    assert_eq!(records[0]["id"], ours.as_str(), "the record is the request");
    assert_eq!(records[0]["upstream_request_id"], "up-42");
    assert_eq!(records[0]["endpoint"], "chat");

    // Without an upstream id, the client gets the gateway's, the one the upstream was sent.
    let plain = c
        .tenant_on_mock("compat-reqid-own", "ok", json!({}))
        .await?;
    let r = c.chat_ok(&plain).await?;
    let sent = c.upstream_requests("compat-reqid-own");
    assert_eq!(
        r.header("x-request-id"),
        sent[0].header("x-request-id"),
        "one id for the client, the upstream and the record"
    );
    Ok(())
}

/// Key order (a structured-output schema's `properties`) and number spelling survive the gateway.
async fn bodies_reach_the_upstream_as_written(c: Arc<Ctx>) -> CaseResult {
    let slug = "compat-order";
    let t = c
        .tenant_on_mock(slug, "ok", json!({"models": ["mock-1"]}))
        .await?;
    let schema = r#"{"type":"object","properties":{"reasoning":{"type":"string"},"answer":{"type":"string"}},"required":["reasoning","answer"],"additionalProperties":false}"#;
    let raw = format!(
        r#"{{"model":"mock-1","messages":[{{"role":"user","content":"why?"}}],"temperature":0.70,"response_format":{{"type":"json_schema","json_schema":{{"name":"why","strict":true,"schema":{schema}}}}}}}"#
    );
    let r = Reply::read(
        c.chat(&t, Some((&t.secret, KeyHeader::Bearer)))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await?,
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.describe());
    let sent = c.upstream_requests(slug);
    let body = String::from_utf8_lossy(&sent[0].body).into_owned();
    assert!(
        body.contains(schema),
        "the schema as written reached the upstream: {body}"
    );
    assert!(
        body.contains(r#""temperature":0.70"#),
        "0.70 stays 0.70: {body}"
    );
    let order: Vec<String> = serde_json::from_str::<Value>(&body)?
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    assert_eq!(
        order[..4],
        ["model", "messages", "temperature", "response_format"],
        "top-level keys in the client's order: {order:?}"
    );
    Ok(())
}

/// A browser reads a 404 or 405 of a project's end-user path like any other answer.
async fn cors_headers_are_on_404_and_405_too(c: Arc<Ctx>) -> CaseResult {
    let slug = "compat-cors";
    c.tenant_on_mock(slug, "ok", json!({})).await?;
    let origin = "http://app.example";
    let patched = c
        .admin
        .patch_project(slug, json!({"allowed_origins": [origin]}))
        .await?;
    expect_status(&patched, 200, "allow an origin")?;
    let missing = Reply::read(
        c.http
            .get(format!("{}/v1/{slug}/chat/no/such/route", c.base))
            .header("origin", origin)
            .send()
            .await?,
    )
    .await?;
    assert_problem(&missing, 404, "not-found");
    assert_eq!(missing.header("access-control-allow-origin"), Some(origin));
    let wrong_method = Reply::read(
        c.http
            .delete(format!("{}/v1/{slug}/chat/chat/completions", c.base))
            .header("origin", origin)
            .send()
            .await?,
    )
    .await?;
    assert_problem(&wrong_method, 405, "method-not-allowed");
    assert_eq!(
        wrong_method.header("access-control-allow-origin"),
        Some(origin)
    );
    let exposed = wrong_method
        .header("access-control-expose-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(exposed.contains("x-request-id"), "{exposed}");
    Ok(())
}

/// A method the gateway does not know is refused with what the path takes, never answered as GET;
/// HEAD is GET without the body.
async fn unknown_methods_are_405_and_head_is_get_without_a_body(c: Arc<Ctx>) -> CaseResult {
    let slug = "compat-methods";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let method = |m: &str| Method::from_bytes(m.as_bytes()).map_err(|e| e.to_string());
    let admin_path = format!("/api/v1/projects/{slug}");
    for m in ["PROPFIND", "PURGE"] {
        let admin = c.admin.call(method(m)?, &admin_path, None).await?;
        assert_problem(&admin, 405, "method-not-allowed");
        assert_eq!(admin.header("allow"), Some("GET, HEAD, PATCH"), "{m}");
        let data = Reply::read(
            c.http
                .request(
                    method(m)?,
                    format!("{}/v1/{}/{}/chat/completions", c.base, t.project, t.api),
                )
                .bearer_auth(&t.secret)
                .send()
                .await?,
        )
        .await?;
        assert_problem(&data, 405, "method-not-allowed");
        assert_eq!(data.header("allow"), Some("POST"), "{m}");
    }
    let get = c.admin.call(Method::GET, &admin_path, None).await?;
    expect_status(&get, 200, "GET the project")?;
    let head = c.admin.call(Method::HEAD, &admin_path, None).await?;
    expect_status(&head, 200, "HEAD the project")?;
    assert_eq!(head.text, "", "HEAD has no body");
    assert_eq!(
        head.header("content-type"),
        get.header("content-type"),
        "HEAD's headers are GET's"
    );
    // `orgs/me` is not `orgs/{org}`: it takes GET only.
    let me = c.admin.call(Method::PATCH, "/api/v1/orgs/me", None).await?;
    assert_problem(&me, 405, "method-not-allowed");
    assert_eq!(me.header("allow"), Some("GET, HEAD"));
    Ok(())
}
