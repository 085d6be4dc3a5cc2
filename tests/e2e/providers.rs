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
    let providers: Vec<&str> = listing.json()["providers"]
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
    let consumer = admin.create_consumer(project, "claude user").await?;
    let key = admin.create_key(project, &consumer.id, "k").await?;
    let t = Tenant {
        project: project.to_string(),
        api: "chat".into(),
        api_id: str_field(&api.json(), "id")?,
        consumer_id: consumer.id,
        key_id: key.id,
        secret: key.secret,
    };
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
    assert!(r.status >= 500, "{}", r.describe());
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
    let api_id = str_field(&api.json(), "id")?;
    let consumer = admin.create_consumer(project, "mixed").await?;
    let key = admin.create_key(project, &consumer.id, "k").await?;
    let t = Tenant {
        project: project.into(),
        api: "chat".into(),
        api_id: api_id.clone(),
        consumer_id: consumer.id,
        key_id: key.id,
        secret: key.secret,
    };
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
