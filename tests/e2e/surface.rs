//! End-to-end cases of the API surface beyond chat: Responses (whole and streamed, metered and cut
//! by a budget), Embeddings, one model, and Anthropic's Messages API inbound.

use std::sync::Arc;

use serde_json::{json, Value};

use super::spend::n_records;
use super::{assert_problem, stream_summary, CaseFn, CaseResult, Ctx, STREAM_LIMIT};
use crate::support::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![
        responses_are_answered_whole_and_streamed_and_metered,
        a_responses_stream_is_cut_by_the_budget_with_an_error_event,
        embeddings_are_metered_by_their_input,
        one_model_is_found_or_404,
        anthropic_messages_whole_streamed_and_in_its_error_shape,
        browser_files_revalidate_soon_unless_versioned_and_cors_answers_vary_by_origin,
    ]
}

fn post(c: &Ctx, t: &Tenant, path: &str, key: &str) -> reqwest::RequestBuilder {
    c.http
        .post(format!("{}/v1/{}/{}/{path}", c.base, t.project, t.api))
        .bearer_auth(key)
        .timeout(STREAM_LIMIT)
}

async fn responses_are_answered_whole_and_streamed_and_metered(c: Arc<Ctx>) -> CaseResult {
    let slug = "surface-responses";
    let t = c
        .tenant_on_mock(slug, "ok/chunks/4", json!({"models": ["mock-1"]}))
        .await?;
    let whole = Reply::read(
        post(&c, &t, "responses", &t.secret)
            .json(&json!({"model": "mock-1", "input": "hello", "max_output_tokens": 50}))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(whole.status, 200, "{}", whole.describe());
    assert_eq!(
        whole.json()["output"][0]["content"][0]["text"],
        mock_text(4)
    );
    let sent = c.upstream_requests(slug);
    assert!(sent[0].path.ends_with("/responses"), "{}", sent[0].path);
    assert_eq!(
        sent[0].json()["max_output_tokens"],
        50,
        "the cap under the Responses name"
    );

    let s = send_and_stream(
        post(&c, &t, "responses", &t.secret)
            .json(&json!({"model": "mock-1", "input": "hi", "stream": true})),
        STREAM_LIMIT,
    )
    .await?;
    let summary = stream_summary(&s);
    assert_eq!(s.status, 200, "{summary}");
    let names: Vec<&str> = s.events.iter().filter_map(|e| e.event.as_deref()).collect();
    assert_eq!(names.first(), Some(&"response.created"), "{summary}");
    assert_eq!(names.last(), Some(&"response.completed"), "{summary}");
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "response.output_text.delta")
            .count(),
        4,
        "every delta relayed: {summary}"
    );
    assert!(
        !s.events.iter().any(SseEvent::is_done),
        "no [DONE] in a Responses stream"
    );
    let records = n_records(&c, &t, 2).await?;
    for r in &records {
        assert_eq!(r["endpoint"], "responses");
        assert_eq!(
            (r["prompt_tokens"].clone(), r["completion_tokens"].clone()),
            (json!(7), json!(4)),
            "{r}"
        );
        assert_eq!(r["estimated"], false, "the upstream's usage: {r}");
    }
    Ok(())
}

async fn a_responses_stream_is_cut_by_the_budget_with_an_error_event(c: Arc<Ctx>) -> CaseResult {
    let slug = "surface-responses-cut";
    let t = c
        .tenant_on_mock(slug, "ok/chunks/40/delay/5", json!({}))
        .await?;
    let plan = c
        .admin
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/gateway/apis/{}/plans/default", t.api_id),
            Some(json!({"tokens_per_day": 120})),
        )
        .await?;
    expect_status(&plan, 200, "a small daily budget")?;
    let s = send_and_stream(
        post(&c, &t, "responses", &t.secret).json(&json!({"input": "go", "stream": true})),
        STREAM_LIMIT,
    )
    .await?;
    let summary = stream_summary(&s);
    assert_eq!(s.status, 200, "{summary}");
    let last = s.events.last().ok_or("no events")?;
    assert_eq!(last.event.as_deref(), Some("error"), "{summary}");
    let data = last.json().ok_or("error data is not JSON")?;
    assert_eq!(data["type"], "error");
    assert_eq!(data["problem_type"], "quota-exceeded", "{summary}");
    assert!(data["error"]["message"].is_string(), "{summary}");
    let delivered: String = s
        .events
        .iter()
        .filter(|e| e.event.as_deref() == Some("response.output_text.delta"))
        .filter_map(|e| e.json())
        .filter_map(|v| v["delta"].as_str().map(str::to_string))
        .collect();
    assert!(
        !delivered.is_empty()
            && mock_text(40).starts_with(&delivered)
            && delivered.len() < mock_text(40).len(),
        "a prefix, then the cut: {summary}"
    );
    let records = n_records(&c, &t, 1).await?;
    assert_eq!(records[0]["ended"], "budget_cut", "{}", records[0]);
    assert!(
        records[0]["total_tokens"].as_u64().unwrap_or(999) <= 120,
        "{}",
        records[0]
    );
    Ok(())
}

async fn embeddings_are_metered_by_their_input(c: Arc<Ctx>) -> CaseResult {
    let slug = "surface-embeddings";
    let t = c
        .tenant_on_mock(slug, "ok/prompt/9", json!({"default_model": "emb-1"}))
        .await?;
    let r = Reply::read(
        post(&c, &t, "embeddings", &t.secret)
            .json(&json!({"input": ["one", "two"]}))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        r.json()["data"][0]["embedding"],
        json!([0.25, -0.5, 0.125]),
        "as the upstream wrote it"
    );
    let sent = c.upstream_requests(slug);
    assert!(sent[0].path.ends_with("/embeddings"), "{}", sent[0].path);
    assert_eq!(sent[0].json()["model"], "emb-1");
    let bad = Reply::read(
        post(&c, &t, "embeddings", &t.secret)
            .json(&json!({"input": []}))
            .send()
            .await?,
    )
    .await?;
    assert_problem(&bad, 400, "invalid-request");
    assert_eq!(bad.json()["error"]["param"], "input");
    let records = n_records(&c, &t, 1).await?;
    assert_eq!(records[0]["endpoint"], "embeddings");
    assert_eq!(
        (
            records[0]["prompt_tokens"].clone(),
            records[0]["completion_tokens"].clone()
        ),
        (json!(9), json!(0))
    );
    Ok(())
}

async fn one_model_is_found_or_404(c: Arc<Ctx>) -> CaseResult {
    let t = c
        .tenant_on_mock("surface-model", "ok", json!({"models": ["org/model-a"]}))
        .await?;
    let get = |model: &str| {
        c.http
            .get(format!(
                "{}/v1/{}/{}/models/{model}",
                c.base, t.project, t.api
            ))
            .bearer_auth(&t.secret)
            .send()
    };
    let found = Reply::read(get("org/model-a").await?).await?;
    assert_eq!(found.status, 200, "{}", found.describe());
    assert_eq!(
        (found.json()["id"].clone(), found.json()["object"].clone()),
        (json!("org/model-a"), json!("model"))
    );
    let missing = Reply::read(get("gpt-none").await?).await?;
    assert_problem(&missing, 404, "not-found");
    assert!(missing.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("gpt-none")));
    Ok(())
}

/// An Anthropic client's calls: `…/v1/messages` (and `?beta=true`), `x-api-key` or Bearer, a tool
/// use streamed as Anthropic events, and errors in Anthropic's shape.
async fn anthropic_messages_whole_streamed_and_in_its_error_shape(c: Arc<Ctx>) -> CaseResult {
    let slug = "surface-messages";
    let t = c
        .tenant_on_mock(
            slug,
            "ok/chunks/3/kind/tools",
            json!({"models": ["claude-mock"]}),
        )
        .await?;
    let body = json!({"model": "claude-mock", "max_tokens": 64, "system": "be brief", "top_k": 3,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "tools": [{"name": "lookup", "description": "d", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "find it", "cache_control": {"type": "ephemeral"}}]}]});
    let url = format!(
        "{}/v1/{}/{}/v1/messages?beta=true",
        c.base, t.project, t.api
    );
    let whole = Reply::read(
        c.http
            .post(&url)
            .header("x-api-key", &t.secret)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await?,
    )
    .await?;
    assert_eq!(whole.status, 200, "{}", whole.describe());
    let m = whole.json();
    assert_eq!(
        (
            m["type"].clone(),
            m["role"].clone(),
            m["stop_reason"].clone()
        ),
        (json!("message"), json!("assistant"), json!("tool_use")),
        "a reply with tool calls stops for the tools, whatever finish_reason the upstream gave"
    );
    assert_eq!(m["content"][0]["type"], "tool_use", "{m}");
    assert_eq!(m["content"][0]["name"], "lookup");
    let sent = c.upstream_requests(slug);
    let up = sent[0].json();
    assert_eq!(
        up["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(up["tools"][0]["function"]["name"], "lookup");
    assert!(
        up.get("thinking").is_none() && up.get("top_k").is_none(),
        "dropped, not refused: {up}"
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let s = send_and_stream(
        c.http
            .post(format!("{}/v1/{}/{}/messages", c.base, t.project, t.api))
            .bearer_auth(&t.secret)
            .json(&streamed),
        STREAM_LIMIT,
    )
    .await?;
    let summary = stream_summary(&s);
    assert_eq!(s.status, 200, "{summary}");
    let names: Vec<&str> = s.events.iter().filter_map(|e| e.event.as_deref()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{summary}");
    assert_eq!(names.last(), Some(&"message_stop"), "{summary}");
    let json_deltas: String = s
        .events
        .iter()
        .filter_map(SseEvent::json)
        .filter(|v| v["delta"]["type"] == "input_json_delta")
        .filter_map(|v| v["delta"]["partial_json"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        json_deltas,
        (0..3)
            .map(|i| format!("{{\"k{i}\":1}}"))
            .collect::<String>(),
        "{summary}"
    );
    let usage = s
        .events
        .iter()
        .filter_map(SseEvent::json)
        .find(|v| v["type"] == "message_delta")
        .ok_or("no message_delta")?;
    assert_eq!(usage["usage"]["output_tokens"], 3, "{usage}");

    // Errors in Anthropic's shape: a missing max_tokens, a bad key.
    let mut no_cap = body.clone();
    no_cap.as_object_mut().map(|o| o.remove("max_tokens"));
    let r = Reply::read(
        c.http
            .post(&url)
            .header("x-api-key", &t.secret)
            .json(&no_cap)
            .send()
            .await?,
    )
    .await?;
    assert_eq!(r.status, 400, "{}", r.describe());
    assert_eq!(
        r.json(),
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": r.json()["error"]["message"]}})
    );
    let r = Reply::read(
        c.http
            .post(&url)
            .header("x-api-key", "ask_live_nope")
            .json(&body)
            .send()
            .await?,
    )
    .await?;
    assert_eq!(
        (r.status, r.json()["error"]["type"].clone()),
        (401, json!("authentication_error")),
        "{}",
        r.describe()
    );

    let counted = Reply::read(
        c.http
            .post(format!("{}/v1/{}/{}/v1/messages/count_tokens", c.base, t.project, t.api))
            .header("x-api-key", &t.secret)
            .json(&json!({"model": "claude-mock", "messages": [{"role": "user", "content": "hello"}]}))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(counted.status, 200, "{}", counted.describe());
    assert!(
        counted.json()["input_tokens"]
            .as_u64()
            .is_some_and(|n| n >= 5),
        "{}",
        counted.describe()
    );
    // A `system` or `tools` in a shape the gateway would not meter is refused, counted or sent.
    for (path, body) in [
        (
            "v1/messages/count_tokens",
            json!({"model": "claude-mock", "messages": [{"role": "user", "content": "hi"}], "system": {"text": "A".repeat(5000)}}),
        ),
        (
            "v1/messages",
            json!({"model": "claude-mock", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "tools": "A".repeat(5000)}),
        ),
    ] {
        let refused = Reply::read(
            c.http
                .post(format!("{}/v1/{}/{}/{path}", c.base, t.project, t.api))
                .header("x-api-key", &t.secret)
                .json(&body)
                .send()
                .await?,
        )
        .await?;
        assert_eq!(
            (refused.status, refused.json()["error"]["type"].clone()),
            (400, json!("invalid_request_error")),
            "{path}: {}",
            refused.describe()
        );
    }
    // A wrong method on a Messages route is answered in Anthropic's shape too.
    let wrong = Reply::read(
        c.http
            .get(format!("{}/v1/{}/{}/v1/messages", c.base, t.project, t.api))
            .header("x-api-key", &t.secret)
            .send()
            .await?,
    )
    .await?;
    assert_eq!(wrong.status, 405, "{}", wrong.describe());
    assert_eq!(wrong.json()["type"], "error", "{}", wrong.describe());
    assert!(
        wrong.json()["error"]["message"].is_string(),
        "{}",
        wrong.describe()
    );
    let records = n_records(&c, &t, 2).await?;
    assert!(
        records.iter().all(|r| r["endpoint"] == "messages"),
        "{records:?}"
    );
    let _: Value = whole.json();
    Ok(())
}

/// The widget, SDK and console files: a `?v=` of the exact content is cached for a year, an
/// unversioned URL for minutes at most (a fix reaches embedding pages soon); and an end-user answer
/// whose CORS headers depend on the Origin says so in `Vary`, for allowed and refused origins alike.
async fn browser_files_revalidate_soon_unless_versioned_and_cors_answers_vary_by_origin(
    c: Arc<Ctx>,
) -> CaseResult {
    let max_age = |r: &Reply| -> Option<u64> {
        let cc = r.header("cache-control")?;
        if cc.contains("no-cache") {
            return Some(0);
        }
        cc.split(',')
            .find_map(|d| d.trim().strip_prefix("max-age=")?.parse().ok())
    };
    for path in ["/chat.js", "/sdk.js", "/console", "/console/console.js"] {
        let plain = Reply::read(c.http.get(format!("{}{path}", c.base)).send().await?).await?;
        assert_eq!(plain.status, 200, "{path}: {}", plain.describe());
        let age = max_age(&plain);
        assert!(
            age.is_some_and(|a| a <= 300),
            "{path} without ?v= is cached {:?}",
            plain.header("cache-control")
        );
        assert!(plain.header("etag").is_some(), "{path} has an ETag");
        let version = plain
            .header("etag")
            .unwrap_or_default()
            .trim_matches('"')
            .to_string();
        let pinned = Reply::read(
            c.http
                .get(format!("{}{path}?v={version}", c.base))
                .send()
                .await?,
        )
        .await?;
        assert_eq!(
            pinned.header("cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{path}?v=<its version>"
        );
    }

    let slug = "surface-vary";
    c.tenant_on_mock(slug, "ok", json!({})).await?;
    let allowed = "http://app.example";
    let patched = c
        .admin
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/projects/{slug}"),
            Some(json!({"allowed_origins": [allowed]})),
        )
        .await?;
    expect_status(&patched, 200, "allow an origin")?;
    for origin in [Some(allowed), Some("http://elsewhere.example"), None] {
        let mut req = c
            .http
            .get(format!("{}/v1/{slug}/chat/models", c.base))
            .bearer_auth("ask_live_not_a_key");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let reply = Reply::read(req.send().await?).await?;
        let vary = reply
            .header("vary")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert_eq!(
            vary.split(',').filter(|v| v.trim() == "origin").count(),
            1,
            "Vary names Origin once for origin {origin:?}: {vary:?}"
        );
        assert_eq!(
            reply.header("access-control-allow-origin"),
            origin.filter(|o| *o == allowed),
            "CORS only for the allowed origin"
        );
    }
    Ok(())
}
