//! End-to-end cases of provider keys and native providers: keys stored sealed and never shown, an API
//! routed to Anthropic through its own wire format (the official OpenAI SDK on the client side),
//! routing by `provider/model`, deleting a key, and re-encryption.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::{assert_problem, CaseFn, CaseResult, Ctx};
use crate::support::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![
        provider_keys_are_sealed_and_never_shown,
        openai_sdk_chats_with_an_anthropic_upstream,
        models_route_to_their_provider_and_a_deleted_key_fails_at_once,
        a_failing_provider_is_retried_then_falls_back,
        messages_pass_through_to_anthropic,
        a_native_messages_stream_cut_by_its_budget_books_its_estimate,
        provider_keys_survive_an_encryption_key_rotation,
    ]
}

/// An owner with their own org, signed in by dev login.
async fn owner(c: &Ctx, email: &str) -> Result<(Admin, String)> {
    let r = Reply::read(
        c.http
            .post(format!("{}/api/v1/auth/dev/login", c.base))
            .json(&json!({ "email": email }))
            .send()
            .await?,
    )
    .await?;
    expect_status(&r, 200, "dev login")?;
    let v = r.json();
    Ok((
        Admin::new(&c.base, &str_field(&v, "access_token")?),
        str_field(&v, "org_slug")?,
    ))
}

async fn provider_keys_are_sealed_and_never_shown(c: Arc<Ctx>) -> CaseResult {
    let (admin, org) = owner(&c, "providers.owner@example.com").await?;
    let path = format!("/api/v1/orgs/{org}/providers");
    let secret = "sk-ant-never-shown-7f3a9c";
    let created = admin
        .call(
            Method::POST,
            &path,
            Some(json!({"provider": "anthropic", "api_key": secret})),
        )
        .await?;
    expect_status(&created, 201, "store the anthropic key")?;
    let v = created.json();
    assert_eq!(v["key_last4"], "3a9c", "{v}");
    assert_eq!(v["base_url"], "https://api.anthropic.com", "{v}");
    let again = admin
        .call(
            Method::POST,
            &path,
            Some(json!({"provider": "anthropic", "api_key": "sk-other-1234"})),
        )
        .await?;
    assert_problem(&again, 409, "conflict");
    for (body, param) in [
        (
            json!({"provider": "acme", "api_key": "k-123456"}),
            "provider",
        ),
        (json!({"provider": "openai"}), "api_key"),
        (
            json!({"provider": "groq", "api_key": "gsk-1234", "base_url": "ftp://x"}),
            "base_url",
        ),
    ] {
        let r = admin.call(Method::POST, &path, Some(body)).await?;
        assert_eq!(r.status, 400, "{}", r.describe());
        if param != "base_url" {
            assert_eq!(r.json()["param"], param, "{}", r.text);
        }
    }
    // A local Ollama takes no key.
    let ollama = admin
        .call(
            Method::POST,
            &path,
            Some(json!({"provider": "ollama", "base_url": "http://127.0.0.1:11434/v1"})),
        )
        .await?;
    expect_status(&ollama, 201, "ollama without a key")?;
    assert_eq!(ollama.json()["key_last4"], Value::Null);
    let replaced = admin
        .call(
            Method::PUT,
            &format!("{path}/anthropic"),
            Some(json!({"api_key": "sk-ant-replaced-0042"})),
        )
        .await?;
    expect_status(&replaced, 200, "replace the key")?;
    assert_eq!(replaced.json()["key_last4"], "0042");
    let listing = admin.call(Method::GET, &path, None).await?;
    expect_status(&listing, 200, "list provider keys")?;
    let providers: Vec<&str> = listing
        .json()
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["provider"].as_str())
        .map(|p| {
            if p == "anthropic" {
                "anthropic"
            } else {
                "ollama"
            }
        })
        .collect();
    assert_eq!(providers, ["anthropic", "ollama"], "{}", listing.text);
    for shown in [&listing.text, &created.text, &replaced.text] {
        assert!(
            !shown.contains(secret) && !shown.contains("sk-ant-replaced"),
            "a key in {shown}"
        );
        assert!(
            !shown.contains("v2:") && !shown.contains("key_enc"),
            "a sealed key in {shown}"
        );
    }
    // Only admins and owners see or manage them.
    let key = admin
        .call(
            Method::POST,
            &format!("/api/v1/orgs/{org}/keys"),
            Some(json!({"name": "dev", "role": "developer"})),
        )
        .await?;
    let dev_key = str_field(&key.json(), "secret")?;
    let as_dev = Reply::read(
        c.http
            .get(format!("{}{path}", c.base))
            .header("x-api-key", &dev_key)
            .send()
            .await?,
    )
    .await?;
    assert_problem(&as_dev, 403, "forbidden");
    // Re-encryption: every key is already under the current ENCRYPTION_KEY.
    let reseal = admin
        .call(Method::POST, &format!("{path}/reencrypt"), None)
        .await?;
    expect_status(&reseal, 200, "re-encrypt")?;
    assert_eq!(reseal.json()["reencrypted"], 0, "{}", reseal.text);
    assert_eq!(reseal.json()["already_current"], 1, "{}", reseal.text);
    let gone = admin
        .call(Method::DELETE, &format!("{path}/ollama"), None)
        .await?;
    expect_status(&gone, 204, "delete")?;
    assert_problem(
        &admin
            .call(Method::DELETE, &format!("{path}/ollama"), None)
            .await?,
        404,
        "not-found",
    );
    assert_problem(
        &admin
            .call(Method::DELETE, &format!("{path}/acme"), None)
            .await?,
        404,
        "not-found",
    );
    Ok(())
}

/// An org with an Anthropic key pointed at the mock's Anthropic wire format, and an API on it.
async fn anthropic_api(
    c: &Ctx,
    email: &str,
    project: &str,
    scenario: &str,
) -> Result<(Admin, String, Tenant)> {
    let (admin, org) = owner(c, email).await?;
    let stored = admin
        .call(
            Method::POST,
            &format!("/api/v1/orgs/{org}/providers"),
            Some(
                json!({"provider": "anthropic", "api_key": format!("sk-ant-{project}-key"),
                "base_url": c.mock.base_url(&format!("{scenario}/tag/{project}"))}),
            ),
        )
        .await?;
    expect_status(&stored, 201, "the org's anthropic key")?;
    admin.create_project(project).await?;
    let api = admin
        .call(
            Method::POST,
            "/api/v1/gateway/apis",
            Some(
                json!({"project": project, "slug": "chat", "name": "Claude chat",
                "upstream": {"provider": "anthropic", "default_model": "claude-3-5-haiku"}}),
            ),
        )
        .await?;
    expect_status(&api, 201, "an API on anthropic")?;
    assert_eq!(
        api.json()["upstream"]["provider"],
        "anthropic",
        "{}",
        api.text
    );
    assert_eq!(
        api.json()["upstream"]["base_url"],
        Value::Null,
        "{}",
        api.text
    );
    let t = consumer_on(&admin, project, &api.json()).await?;
    Ok((admin, org, t))
}

async fn openai_sdk_chats_with_an_anthropic_upstream(c: Arc<Ctx>) -> CaseResult {
    let project = "claude-upstream";
    let (_, _, t) = anthropic_api(
        &c,
        "claude.owner@example.com",
        project,
        "ok/chunks/2/kind/tools",
    )
    .await?;
    let tenant = json!({"base": format!("{}/v1/{project}/chat", c.base), "key": t.secret, "model": "claude-3-5-haiku"});
    let root = repo_root();
    let child = tokio::process::Command::new("node")
        .arg(root.join("tests/sdk/openai_anthropic_upstream.mjs"))
        .current_dir(&root)
        .env("SLUICE_SDK_TENANT", tenant.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the OpenAI SDK script failed:\n{text}"
    );
    for line in text.lines().filter(|l| l.starts_with("measured:")) {
        println!("    {line}");
    }
    // What Anthropic received: its own wire format, the org's key, the cap as max_tokens.
    let sent = c.upstream_requests(project);
    assert_eq!(sent.len(), 2, "one whole and one streamed request");
    for r in &sent {
        assert!(r.path.ends_with("/v1/messages"), "{}", r.path);
        assert_eq!(
            r.header("x-api-key"),
            Some(format!("sk-ant-{project}-key").as_str())
        );
        assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
        assert!(
            r.header("authorization").is_none(),
            "the consumer key went upstream"
        );
        let body = r.json();
        assert_eq!(body["model"], "claude-3-5-haiku");
        assert_eq!(body["system"], "Be brief.");
        assert_eq!(body["max_tokens"], 100);
        assert_eq!(body["messages"][0]["role"], "user");
        assert_eq!(body["tools"][0]["input_schema"]["required"], json!(["q"]));
    }
    // Usage is booked as Anthropic reported it (input + cache reads and writes; output).
    let usage = c
        .admin_get_until(&format!("/api/v1/gateway/apis/{}/usage", t.api_id), |v| {
            v["records"].as_array().is_some_and(|r| r.len() == 2)
        })
        .await?;
    for r in usage["records"].as_array().into_iter().flatten() {
        assert_eq!(r["prompt_tokens"], 14, "{r}");
        assert_eq!(r["completion_tokens"], 6, "{r}");
        assert_eq!(r["estimated"], false, "{r}");
    }
    // An overloaded Anthropic (529) is the gateway's 5xx with Anthropic's safe error type.
    let (_, _, busy) =
        anthropic_api(&c, "claude.busy@example.com", "claude-busy", "status/529").await?;
    let r = c
        .send_chat(
            &busy,
            Some((&busy.secret, KeyHeader::Bearer)),
            &chat_body(None, "hi", false),
        )
        .await?;
    assert_problem(&r, 503, "upstream-error");
    // Tried twice (`retries` defaults to 1), then answered.
    assert_eq!(c.upstream_requests("claude-busy").len(), 2);
    let (_, _, broken) = anthropic_api(
        &c,
        "claude.broken@example.com",
        "claude-errevent",
        "errevent/chunks/1",
    )
    .await?;
    let req = c
        .chat(&broken, Some((&broken.secret, KeyHeader::Bearer)))
        .json(&chat_body(None, "hi", true));
    let streamed = send_and_stream(req, STREAM_WAIT).await?;
    assert!(
        streamed.events.iter().any(|e| e.is_error()),
        "no error event: {:?}",
        streamed.text()
    );
    // The text before Anthropic's `error` event reached the client, then the stream's error event.
    assert!(streamed.text().contains("tok0"), "{}", streamed.text());
    assert!(
        streamed
            .events
            .last()
            .is_some_and(|e| e.is_error() || e.is_done()),
        "{}",
        streamed.text()
    );
    Ok(())
}

const STREAM_WAIT: Duration = Duration::from_secs(20);

async fn models_route_to_their_provider_and_a_deleted_key_fails_at_once(c: Arc<Ctx>) -> CaseResult {
    let project = "by-model";
    let (admin, org) = owner(&c, "bymodel.owner@example.com").await?;
    for (provider, scenario) in [("anthropic", "ok/chunks/2"), ("groq", "ok/chunks/3")] {
        let r = admin
            .call(
                Method::POST,
                &format!("/api/v1/orgs/{org}/providers"),
                Some(
                    json!({"provider": provider, "api_key": format!("key-{provider}-0001"),
                    "base_url": c.mock.base_url(&format!("{scenario}/tag/{project}-{provider}"))}),
                ),
            )
            .await?;
        expect_status(&r, 201, "a provider key")?;
    }
    admin.create_project(project).await?;
    // Plain names are refused when nothing says their provider.
    let plain = admin
        .call(
            Method::POST,
            "/api/v1/gateway/apis",
            Some(json!({"project": project, "slug": "bad", "name": "x", "upstream": {"models": ["gpt-4o"]}})),
        )
        .await?;
    assert_problem(&plain, 400, "invalid-request");
    let api = admin
        .call(
            Method::POST,
            "/api/v1/gateway/apis",
            Some(json!({"project": project, "slug": "chat", "name": "Mixed",
                "upstream": {"models": ["anthropic/claude-3-5-haiku", "groq/llama-3.1-8b-instant", "mistral/mistral-small"]}})),
        )
        .await?;
    expect_status(&api, 201, "an API routed by model name")?;
    assert_eq!(api.json()["upstream"]["route"], "by_model", "{}", api.text);
    let t = consumer_on(&admin, project, &api.json()).await?;
    let claude = c
        .send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(Some("anthropic/claude-3-5-haiku"), "hi", false),
        )
        .await?;
    expect_status(&claude, 200, "anthropic/…")?;
    assert_eq!(
        claude.json()["model"],
        "anthropic/claude-3-5-haiku",
        "{}",
        claude.text
    );
    assert_eq!(
        claude.json()["choices"][0]["message"]["content"],
        "tok0 tok1 "
    );
    let groq = c
        .send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(Some("groq/llama-3.1-8b-instant"), "hi", false),
        )
        .await?;
    expect_status(&groq, 200, "groq/…")?;
    let to_groq = c.upstream_requests(&format!("{project}-groq"));
    assert_eq!(to_groq.len(), 1);
    assert_eq!(
        to_groq[0].json()["model"],
        "llama-3.1-8b-instant",
        "the provider prefix is not sent"
    );
    assert_eq!(
        to_groq[0].header("authorization"),
        Some("Bearer key-groq-0001")
    );
    assert!(
        to_groq[0].path.ends_with("/chat/completions"),
        "{}",
        to_groq[0].path
    );
    // A model whose provider has no key: 503, and nothing was reserved or sent.
    let mistral = c
        .send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(Some("mistral/mistral-small"), "hi", false),
        )
        .await?;
    assert_problem(&mistral, 503, "provider-not-configured");
    let unlisted = c
        .send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(Some("openai/gpt-4o"), "hi", false),
        )
        .await?;
    assert_problem(&unlisted, 403, "model-not-allowed");
    // Deleting the key fails the very next request; nothing falls back to another key.
    let del = admin
        .call(
            Method::DELETE,
            &format!("/api/v1/orgs/{org}/providers/groq"),
            None,
        )
        .await?;
    expect_status(&del, 204, "delete the groq key")?;
    let after = c
        .send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(Some("groq/llama-3.1-8b-instant"), "hi", false),
        )
        .await?;
    assert_problem(&after, 503, "provider-not-configured");
    assert_eq!(
        c.upstream_requests(&format!("{project}-groq")).len(),
        1,
        "a request reached groq after its key was deleted"
    );
    // No provider key appears in the gateway's log.
    let logs = std::fs::read_dir(repo_root().join("target/e2e-logs"))?;
    for entry in logs.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for secret in [
            "key-groq-0001",
            "key-anthropic-0001",
            "sk-ant-never-shown",
            "sk-ant-claude-upstream-key",
        ] {
            assert!(
                !text.contains(secret),
                "{secret} in {}",
                entry.path().display()
            );
        }
    }
    Ok(())
}

/// A consumer with a key on the API whose creation answered `api`, in `project`.
async fn consumer_on(admin: &Admin, project: &str, api: &Value) -> Result<Tenant> {
    let consumer = admin.create_consumer(project, "consumer").await?;
    let key = admin.create_key(project, &consumer.id, "k").await?;
    Ok(Tenant {
        project: project.to_string(),
        api: str_field(api, "slug")?,
        api_id: str_field(api, "id")?,
        consumer_id: consumer.id,
        key_id: key.id,
        secret: key.secret,
    })
}

/// Stores `provider`'s key in `org`, pointed at the mock's `scenario` tagged `tag`.
async fn provider_on_mock(
    c: &Ctx,
    admin: &Admin,
    org: &str,
    provider: &str,
    scenario: &str,
    tag: &str,
) -> Result<()> {
    let r = admin
        .call(
            Method::POST,
            &format!("/api/v1/orgs/{org}/providers"),
            Some(
                json!({"provider": provider, "api_key": format!("key-{tag}"),
                "base_url": c.mock.base_url(&format!("{scenario}/tag/{tag}"))}),
            ),
        )
        .await?;
    expect_status(&r, 201, "a provider key")
}

async fn a_failing_provider_is_retried_then_falls_back(c: Arc<Ctx>) -> CaseResult {
    let project = "fallbacks";
    let (admin, org) = owner(&c, "fallbacks.owner@example.com").await?;
    provider_on_mock(&c, &admin, &org, "anthropic", "status/529", "fb-anthropic").await?;
    provider_on_mock(&c, &admin, &org, "groq", "ok/chunks/2", "fb-groq").await?;
    admin.create_project(project).await?;
    let api = admin
        .call(
            Method::POST,
            "/api/v1/gateway/apis",
            Some(json!({"project": project, "slug": "chat", "name": "Fallbacks",
                "upstream": {"provider": "anthropic", "default_model": "claude-3-5-haiku", "retries": 1,
                    "fallbacks": ["groq/llama-3.1-8b-instant", "mistral/mistral-small"]},
                "prices": {"claude-3-5-haiku": {"input_per_mtok": 10.0, "output_per_mtok": 50.0},
                           "groq/llama-3.1-8b-instant": {"input_per_mtok": 2.0, "output_per_mtok": 4.0}}})),
        )
        .await?;
    expect_status(&api, 201, "an API with fallbacks")?;
    assert_eq!(
        api.json()["upstream"]["fallbacks"],
        json!(["groq/llama-3.1-8b-instant", "mistral/mistral-small"])
    );
    // The unpriced fallback is listed as such.
    assert_eq!(
        api.json()["unpriced_models"],
        json!(["mistral/mistral-small"]),
        "{}",
        api.text
    );
    let api_id = str_field(&api.json(), "id")?;
    let t = consumer_on(&admin, project, &api.json()).await?;
    let r = c
        .send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(None, "hi", false),
        )
        .await?;
    expect_status(&r, 200, "answered by the fallback")?;
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "tok0 tok1 ",
        "{}",
        r.text
    );
    assert_eq!(
        c.upstream_requests("fb-anthropic").len(),
        2,
        "the first try and one retry"
    );
    assert_eq!(c.upstream_requests("fb-groq").len(), 1);
    // Streamed: the same tries, before the first byte.
    let req = c
        .chat(&t, Some((&t.secret, KeyHeader::Bearer)))
        .json(&chat_body(None, "hi", true));
    let s = send_and_stream(req, STREAM_WAIT).await?;
    assert_eq!(s.status, 200);
    assert!(s.text().contains("tok1"), "{}", s.text());
    assert_eq!(c.upstream_requests("fb-anthropic").len(), 4);
    assert_eq!(c.upstream_requests("fb-groq").len(), 2);
    // The record names who answered, lists the tries, and books the fallback's price.
    let usage = c
        .admin_get_until(&format!("/api/v1/gateway/apis/{api_id}/usage"), |v| {
            v["records"].as_array().is_some_and(|r| r.len() == 2)
        })
        .await?;
    for rec in usage["records"].as_array().into_iter().flatten() {
        assert_eq!(rec["model"], "groq/llama-3.1-8b-instant", "{rec}");
        assert_eq!(rec["provider"], "groq", "{rec}");
        let tries: Vec<(String, u64)> = rec["attempts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["provider"].as_str().unwrap_or("").to_string(),
                    a["status"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(
            tries,
            [
                ("anthropic".to_string(), 529),
                ("anthropic".into(), 529),
                ("groq".into(), 200)
            ],
            "{rec}"
        );
        // 7 prompt and 2 completion tokens at $2 and $4 per million: 22 micro-dollars.
        let cost = rec["cost_usd"].as_f64().unwrap_or(-1.0);
        assert!((cost - 0.000022).abs() < 1e-9, "cost {cost}: {rec}");
    }
    // A request the upstream refuses (400) is neither retried nor sent elsewhere.
    let (admin2, org2) = owner(&c, "fallbacks.bad@example.com").await?;
    provider_on_mock(&c, &admin2, &org2, "anthropic", "status/400", "fb-bad").await?;
    provider_on_mock(&c, &admin2, &org2, "groq", "ok", "fb-bad-groq").await?;
    admin2.create_project("fallbacks-bad").await?;
    let api2 = admin2
        .call(
            Method::POST,
            "/api/v1/gateway/apis",
            Some(json!({"project": "fallbacks-bad", "slug": "chat", "name": "x",
                "upstream": {"provider": "anthropic", "default_model": "claude", "fallbacks": ["groq/llama"]}})),
        )
        .await?;
    expect_status(&api2, 201, "api")?;
    let t2 = consumer_on(&admin2, "fallbacks-bad", &api2.json()).await?;
    let r = c
        .send_chat(
            &t2,
            Some((&t2.secret, KeyHeader::Bearer)),
            &chat_body(None, "hi", false),
        )
        .await?;
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(c.upstream_requests("fb-bad").len(), 1);
    assert_eq!(c.upstream_requests("fb-bad-groq").len(), 0);
    // The model asked for has no price: a spend-limited plan refuses it, however priced its fallbacks.
    let unpriced = admin
        .call(
            Method::POST,
            "/api/v1/gateway/apis",
            Some(json!({"project": project, "slug": "unpriced", "name": "Unpriced",
                "upstream": {"provider": "anthropic", "default_model": "claude-unpriced", "fallbacks": ["groq/llama-3.1-8b-instant"]},
                "prices": {"groq/llama-3.1-8b-instant": {"input_per_mtok": 2.0, "output_per_mtok": 4.0}}})),
        )
        .await?;
    expect_status(&unpriced, 201, "an API whose model has no price")?;
    let unpriced_id = str_field(&unpriced.json(), "id")?;
    let limited = admin
        .call(
            Method::PATCH,
            &format!("/api/v1/gateway/apis/{unpriced_id}/plans/default"),
            Some(json!({"spend_per_day_usd": 1.0})),
        )
        .await?;
    expect_status(&limited, 200, "a spend limit")?;
    let u = consumer_on(&admin, project, &unpriced.json()).await?;
    let r = c
        .send_chat(
            &u,
            Some((&u.secret, KeyHeader::Bearer)),
            &chat_body(None, "hi", false),
        )
        .await?;
    assert_problem(&r, 403, "model-not-priced");
    // A by-model API names every fallback's provider.
    let plain = admin
        .call(
            Method::POST,
            "/api/v1/gateway/apis",
            Some(json!({"project": project, "slug": "plainfb", "name": "x",
                "upstream": {"models": ["groq/llama-3.1-8b-instant"], "fallbacks": ["gpt-4o-mini"]}})),
        )
        .await?;
    assert_problem(&plain, 400, "invalid-request");
    // Bad settings are refused.
    for upstream in [
        json!({"retries": 9}),
        json!({"fallbacks": ["a", "b", "c", "d", "e", "f"]}),
        json!({"fallbacks": [""]}),
    ] {
        let r = admin
            .call(
                Method::PATCH,
                &format!("/api/v1/gateway/apis/{api_id}"),
                Some(json!({ "upstream": upstream })),
            )
            .await?;
        assert_problem(&r, 400, "invalid-request");
    }
    Ok(())
}

/// A Messages API call to `project`'s `chat` API with `t`'s key, as the Anthropic SDK sends it.
fn messages_call(c: &Ctx, project: &str, t: &Tenant) -> reqwest::RequestBuilder {
    c.http
        .post(format!("{}/v1/{project}/chat/v1/messages", c.base))
        .header("x-api-key", &t.secret)
        .header("anthropic-version", "2023-06-01")
}

async fn messages_pass_through_to_anthropic(c: Arc<Ctx>) -> CaseResult {
    let project = "claude-messages";
    let (_, _, t) =
        anthropic_api(&c, "claude.messages@example.com", project, "ok/chunks/2").await?;
    let body = json!({"model": "claude-3-5-haiku", "max_tokens": 64, "thinking": {"type": "enabled", "budget_tokens": 1024},
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
    let r = Reply::read(messages_call(&c, project, &t).json(&body).send().await?).await?;
    expect_status(&r, 200, "Messages through to Anthropic")?;
    // Anthropic's own answer, as it wrote it: the thinking block with its signature (which a
    // client must send back with tool results), the id, the stop sequence and the cache counts.
    let m = r.json();
    assert_eq!(m["type"], "message", "{}", r.text);
    assert_eq!(m["content"][0]["type"], "thinking", "{}", r.text);
    assert_eq!(m["content"][0]["signature"], "c2lnbmF0dXJl", "{}", r.text);
    assert_eq!(m["content"][1]["text"], "tok0 tok1 ", "{}", r.text);
    assert!(
        m["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("msg_mock")),
        "{}",
        r.text
    );
    assert_eq!(m["usage"]["cache_creation_input_tokens"], 1, "{}", r.text);
    let sent = c.upstream_requests(project);
    assert_eq!(sent.len(), 1);
    let upstream = sent[0].json();
    // As the client wrote it: thinking and cache markers kept, the model and the cap as granted.
    assert_eq!(upstream["thinking"], body["thinking"]);
    assert_eq!(upstream["system"], body["system"]);
    assert_eq!(upstream["messages"], body["messages"]);
    assert_eq!(upstream["model"], "claude-3-5-haiku");
    assert_eq!(upstream["max_tokens"], 64);
    // Streamed, the events are Anthropic's as sent; the usage booked is the one they report.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stop_sequences"] = json!(["END"]);
    let s = send_and_stream(
        messages_call(&c, project, &t).json(&streamed),
        crate::STREAM_LIMIT,
    )
    .await?;
    let summary = crate::stream_summary(&s);
    let names: Vec<&str> = s.events.iter().filter_map(|e| e.event.as_deref()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{summary}");
    assert_eq!(names.last(), Some(&"message_stop"), "{summary}");
    let data: Vec<Value> = s.events.iter().filter_map(SseEvent::json).collect();
    assert!(
        data.iter().any(|d| d["delta"]["type"] == "signature_delta"),
        "{summary}"
    );
    assert!(
        data.iter()
            .any(|d| d["delta"]["stop_reason"] == "stop_sequence"
                && d["delta"]["stop_sequence"] == "END"),
        "{summary}"
    );
    assert_eq!(data[0]["message"]["usage"]["input_tokens"], 11, "{summary}");
    let usage = c
        .admin_get_until(&format!("/api/v1/gateway/apis/{}/usage", t.api_id), |v| {
            v["records"].as_array().is_some_and(|r| r.len() == 2)
        })
        .await?;
    for rec in usage["records"].as_array().into_iter().flatten() {
        // 11 input + 2 cache reads + 1 cache write; 2 text pieces + 3 of thinking.
        assert_eq!(
            (
                rec["prompt_tokens"].clone(),
                rec["completion_tokens"].clone(),
                rec["estimated"].clone()
            ),
            (json!(14), json!(5), json!(false)),
            "{rec}"
        );
    }
    // What the gateway cannot meter is refused unless the API allows it; a base64 document passes,
    // its bytes counted into the prompt's bound.
    let send = |body: Value| {
        let req = messages_call(&c, project, &t).json(&body);
        async move { Reply::read(req.send().await?).await }
    };
    let mut search = body.clone();
    search["tools"] = json!([{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]);
    let r = send(search).await?;
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(
        r.json()["error"]["type"],
        "invalid_request_error",
        "{}",
        r.text
    );
    let mut pdf = body.clone();
    pdf["messages"][0]["content"] = json!([{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK".repeat(50)}},
        {"type": "text", "text": "Summarise it."}]);
    let r = send(pdf).await?;
    expect_status(&r, 200, "a document passes")?;
    let sent = c.upstream_requests(project);
    assert_eq!(sent.len(), 3, "the refused request never went upstream");
    assert_eq!(
        sent[2].json()["messages"][0]["content"][0]["type"],
        "document"
    );
    Ok(())
}

/// Anthropic's answer relayed as sent is cut at the day's budget with Anthropic's error event, and
/// what it delivered is booked as estimated: `message_start`'s placeholder count is no report.
async fn a_native_messages_stream_cut_by_its_budget_books_its_estimate(c: Arc<Ctx>) -> CaseResult {
    let project = "claude-native-budget";
    let (_, _, t) = anthropic_api(&c, "claude.budget@example.com", project, "ok/chunks/60").await?;
    crate::quotas::limit_default_plan(&c, &t, json!({"tokens_per_day": 120})).await?;
    let body = json!({"model": "claude-3-5-haiku", "max_tokens": 1000, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let s = send_and_stream(
        messages_call(&c, project, &t).json(&body),
        crate::STREAM_LIMIT,
    )
    .await?;
    let summary = crate::stream_summary(&s);
    let last = s.events.last().ok_or("no events")?;
    assert_eq!(last.event.as_deref(), Some("error"), "{summary}");
    assert_eq!(
        last.json().map(|v| v["error"]["type"].clone()),
        Some(json!("rate_limit_error")),
        "{summary}"
    );
    let usage = c
        .admin_get_until(&format!("/api/v1/gateway/apis/{}/usage", t.api_id), |v| {
            v["records"].as_array().is_some_and(|r| !r.is_empty())
        })
        .await?;
    let rec = &usage["records"][0];
    assert_eq!(rec["estimated"], true, "{rec}");
    let booked = rec["total_tokens"].as_u64().ok_or("total_tokens")?;
    assert!(
        booked > 1 && booked <= 120,
        "booked {booked} on a 120-token day: {rec}"
    );
    Ok(())
}

pub async fn provider_keys_survive_an_encryption_key_rotation(c: Arc<Ctx>) -> CaseResult {
    const START: Duration = Duration::from_secs(60);
    let mut gw = Gateway::start_with_vars(START, Vec::new()).await?;
    let admin = gw.admin();
    let outcome = async {
        let org = admin.call(Method::POST, "/api/v1/orgs", Some(json!({"slug": "rotating", "name": "Rotating"}))).await?;
        expect_status(&org, 201, "an org")?;
        let stored = admin
            .call(
                Method::POST,
                "/api/v1/orgs/rotating/providers",
                Some(json!({"provider": "groq", "api_key": "gsk-rotation-secret-1",
                    "base_url": c.mock.base_url("ok/tag/rotation")})),
            )
            .await?;
        expect_status(&stored, 201, "a groq key")?;
        let project = admin.call(Method::POST, "/api/v1/projects", Some(json!({"slug": "rotation", "name": "R", "org": "rotating"}))).await?;
        expect_status(&project, 201, "a project in the org")?;
        let api = admin
            .call(
                Method::POST,
                "/api/v1/gateway/apis",
                Some(json!({"project": "rotation", "slug": "chat", "name": "R", "upstream": {"provider": "groq", "default_model": "llama"}})),
            )
            .await?;
        expect_status(&api, 201, "an API on groq")?;
        let consumer = admin.create_consumer("rotation", "r").await?;
        let key = admin.create_key("rotation", &consumer.id, "k").await?;
        let chat = |base: String, what: &'static str| {
            let req = chat_request(&c.http, &base, "rotation", "chat", Some((&key.secret, KeyHeader::Bearer)))
                .json(&chat_body(None, "hi", false));
            async move {
                let r = Reply::read(req.send().await?).await?;
                expect_status(&r, 200, what)
            }
        };
        chat(gw.base_url.clone(), "before the rotation").await?;
        // A new ENCRYPTION_KEY, the old one as ENCRYPTION_KEY_PREVIOUS: the key still opens.
        gw.set_var("ENCRYPTION_KEY", Some("a-brand-new-encryption-key-42"));
        gw.set_var("ENCRYPTION_KEY_PREVIOUS", Some(TEST_ENCRYPTION_KEY));
        gw.restart(START).await?;
        chat(gw.base_url.clone(), "with the previous key").await?;
        let moved = admin.call(Method::POST, "/api/v1/orgs/rotating/providers/reencrypt", None).await?;
        expect_status(&moved, 200, "re-encrypt")?;
        assert_eq!(moved.json()["reencrypted"], 1, "{}", moved.text);
        let again = admin.call(Method::POST, "/api/v1/orgs/rotating/providers/reencrypt", None).await?;
        assert_eq!(again.json()["already_current"], 1, "{}", again.text);
        // The old key gone: what was sealed again opens with the new one alone.
        gw.set_var("ENCRYPTION_KEY_PREVIOUS", None);
        gw.restart(START).await?;
        chat(gw.base_url.clone(), "after the old key is gone").await?;
        let sent = c.upstream_requests("rotation");
        assert_eq!(sent.len(), 3);
        assert!(sent.iter().all(|r| r.header("authorization") == Some("Bearer gsk-rotation-secret-1")));
        let log = std::fs::read_to_string(&gw.log_path).unwrap_or_default();
        assert!(!log.contains("gsk-rotation-secret-1"), "the provider key is in the log");
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    gw.stop();
    outcome
}
