//! End-to-end cases for spend that holds: token and money budgets stay within their limits under
//! concurrency, cut streams, timeouts, disconnects and hostile bodies, against a mock upstream that
//! honours or ignores the cap it is sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::quotas::{limit_default_plan, records, usage_until};
use super::{assert_problem, stream_summary, CaseFn, CaseResult, Ctx, STREAM_LIMIT};
use crate::support::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![
        sixty_uncapped_requests_book_at_most_the_daily_tokens,
        an_upstream_that_ignores_the_cap_is_booked_as_an_overrun,
        a_whole_answer_without_usage_is_booked_within_its_cap,
        n_choices_reserve_n_caps,
        a_model_outside_the_list_never_reaches_the_upstream,
        hostile_bodies_are_refused_and_caps_sent_under_one_name,
        huge_prompts_are_refused_by_their_bound,
        output_of_every_kind_is_metered_and_cut,
        a_stream_cut_at_its_first_event_books_its_prompt,
        an_upstream_timeout_books_the_prompt_it_was_sent,
        a_client_hanging_up_during_an_upstream_stall_frees_its_slot,
        a_stream_longer_than_the_lease_keeps_its_slot_and_record,
        twenty_parallel_requests_on_a_cent_book_at_most_a_cent,
        prices_and_spend_limits_are_validated,
    ]
}

/// Sends `bodies` at once and reads every reply.
async fn all_at_once(c: &Ctx, t: &Tenant, bodies: Vec<Value>) -> Result<Vec<Reply>> {
    let mut tasks = Vec::new();
    for body in bodies {
        let req = c.chat(t, Some((&t.secret, KeyHeader::Bearer))).json(&body);
        tasks.push(tokio::spawn(
            async move { Reply::read(req.send().await?).await },
        ));
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await??);
    }
    Ok(replies)
}

/// The usage records once there are `n` of them.
pub async fn n_records(c: &Ctx, t: &Tenant, n: usize) -> Result<Vec<Value>> {
    Ok(records(
        &usage_until(c, t, "", |v| records(v).len() >= n).await?,
    ))
}

/// The consumer's own view of a window (`tokens_per_day`, `spend_per_day_usd`, ...).
async fn window(c: &Ctx, t: &Tenant, scope: &str) -> Result<Value> {
    let r = c.consumer_usage(t, Some(&t.secret)).await?;
    expect_status(&r, 200, "consumer usage")?;
    Ok(r.json()["windows"][scope].clone())
}

fn sum(records: &[Value], field: &str) -> u64 {
    records.iter().filter_map(|r| r[field].as_u64()).sum()
}

fn cap_sent(body: &Value) -> Option<u64> {
    body.get("max_tokens")
        .or_else(|| body.get("max_completion_tokens"))
        .and_then(Value::as_u64)
}

pub async fn sixty_uncapped_requests_book_at_most_the_daily_tokens(c: Arc<Ctx>) -> CaseResult {
    let slug = "spend-sixty";
    // An honest upstream: it stops at the cap it is sent (one token per chunk), else writes 20000.
    let t = c
        .tenant_on_mock(slug, "ok/honour/1/chunks/20000/prompt/12", json!({}))
        .await?;
    limit_default_plan(&c, &t, json!({"tokens_per_day": 10000})).await?;
    let bodies = (0..60)
        .map(|i| chat_body(None, &format!("question {i}"), false))
        .collect();
    let replies = all_at_once(&c, &t, bodies).await?;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    assert!(
        ok >= 1,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in replies.iter().filter(|r| r.status != 200) {
        assert_problem(r, 429, "quota-exceeded");
    }
    let sent = c.upstream_requests(slug);
    assert_eq!(sent.len(), ok, "only admitted requests reach the upstream");
    for s in &sent {
        let cap = cap_sent(&s.json()).ok_or("an upstream request carried no cap")?;
        assert!(cap <= 10000, "cap {cap}");
        assert!(
            s.json().get("max_completion_tokens").is_none(),
            "one cap field only"
        );
    }
    let recs = n_records(&c, &t, ok).await?;
    let booked = sum(&recs, "total_tokens");
    assert!(
        booked <= 10000,
        "booked {booked} tokens on a 10000-token day: {recs:?}"
    );
    assert!(
        booked > 5000,
        "the day's budget was used, not refused: {booked}"
    );
    println!(
        "    measured: {ok} of 60 admitted, {booked} of 10000 tokens booked, caps sent: {:?}",
        sent.iter()
            .filter_map(|s| cap_sent(&s.json()))
            .collect::<Vec<_>>()
    );
    assert!(recs.iter().all(|r| r["overrun"] == false), "{recs:?}");
    let w = window(&c, &t, "tokens_per_day").await?;
    assert!(w["used"].as_u64().is_some_and(|u| u <= 10000), "{w}");
    Ok(())
}

pub async fn an_upstream_that_ignores_the_cap_is_booked_as_an_overrun(c: Arc<Ctx>) -> CaseResult {
    let slug = "spend-overrun";
    let t = c
        .tenant_on_mock(slug, "ok/chunks/500/prompt/20", json!({}))
        .await?;
    limit_default_plan(&c, &t, json!({"tokens_per_day": 300})).await?;
    let r = c.chat_ok(&t).await?;
    expect_status(&r, 200, "first request")?;
    let sent = c.upstream_requests(slug);
    let cap = cap_sent(&sent[0].json()).ok_or("no cap sent")?;
    assert!(cap < 300, "cap {cap}");
    let recs = n_records(&c, &t, 1).await?;
    assert_eq!(
        recs[0]["total_tokens"], 520,
        "what it really used is booked: {}",
        recs[0]
    );
    assert_eq!(recs[0]["overrun"], true, "{}", recs[0]);
    let next = c.chat_ok(&t).await?;
    assert_problem(&next, 429, "quota-exceeded");
    assert_eq!(next.json()["remaining"], 0, "{}", next.describe());
    assert_eq!(
        c.upstream_requests(slug).len(),
        1,
        "refused until the window has room again"
    );
    Ok(())
}

/// An upstream that honours the cap but reports no usage: its whole answer's bytes over-count its
/// tokens (`tok12 ` is one token of 6 bytes), so the booking stops at the cap it was sent, and the
/// day stays within its limit, with no overrun claimed.
pub async fn a_whole_answer_without_usage_is_booked_within_its_cap(c: Arc<Ctx>) -> CaseResult {
    let slug = "spend-nousage";
    let t = c
        .tenant_on_mock(slug, "ok/honour/1/chunks/1000/nousage/1", json!({}))
        .await?;
    limit_default_plan(&c, &t, json!({"tokens_per_day": 300})).await?;
    let r = c.chat_ok(&t).await?;
    expect_status(&r, 200, "the answer")?;
    let cap = cap_sent(&c.upstream_requests(slug)[0].json()).ok_or("no cap sent")?;
    let text = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .ok_or("no content")?
        .to_string();
    assert!(
        text.len() as u64 > cap,
        "the honest answer's {} bytes are more than its {cap} tokens",
        text.len()
    );
    let recs = n_records(&c, &t, 1).await?;
    let rec = &recs[0];
    assert_eq!(rec["estimated"], true, "{rec}");
    assert_eq!(rec["completion_tokens"], cap, "booked at the cap: {rec}");
    assert_eq!(rec["overrun"], false, "{rec}");
    let total = rec["total_tokens"].as_u64().ok_or("total_tokens")?;
    assert!(total <= 300, "booked {total} on a 300-token day: {rec}");
    println!(
        "    measured: {} bytes in {cap} tokens, booked {total} of 300",
        text.len()
    );
    Ok(())
}

pub async fn n_choices_reserve_n_caps(c: Arc<Ctx>) -> CaseResult {
    let slug = "spend-n";
    let t = c
        .tenant_on_mock(slug, "ok/honour/1/chunks/1000", json!({}))
        .await?;
    limit_default_plan(&c, &t, json!({"tokens_per_day": 1000})).await?;
    let mut body = chat_body(None, "eight answers please", false);
    body["n"] = json!(8);
    body["max_tokens"] = json!(200);
    let refused = c
        .send_chat(&t, Some((&t.secret, KeyHeader::Bearer)), &body)
        .await?;
    assert_problem(&refused, 400, "invalid-request");
    assert_eq!(
        refused.json()["param"],
        "n",
        "n is at most upstream.max_n (4 by default)"
    );
    c.admin
        .patch_api(&t.api_id, json!({"upstream": {"max_n": 8}}))
        .await?;
    let r = c
        .send_chat(&t, Some((&t.secret, KeyHeader::Bearer)), &body)
        .await?;
    expect_status(&r, 200, "n = 8")?;
    assert_eq!(r.json()["choices"].as_array().map(Vec::len), Some(8));
    let up = c
        .upstream_requests(slug)
        .pop()
        .ok_or("no upstream request")?
        .json();
    let cap = cap_sent(&up).ok_or("no cap")?;
    let rec = n_records(&c, &t, 1).await?.remove(0);
    let bound = rec["prompt_bound"].as_u64().ok_or("prompt_bound")?;
    assert_eq!(up["n"], 8);
    assert!(
        bound + 8 * cap <= 1000,
        "eight caps fit: bound {bound}, cap {cap}"
    );
    assert!(
        bound + 8 * (cap + 1) > 1000,
        "the cap is the largest that fits: bound {bound}, cap {cap}"
    );
    assert!(cap < 200, "200 × 8 does not fit a 1000-token day");
    assert_eq!(
        (rec["n"].clone(), rec["max_tokens"].clone()),
        (json!(8), json!(cap))
    );
    println!("    measured: n = 8 on a 1000-token day: cap {cap} per choice after a {bound}-token prompt bound, booked {}", rec["total_tokens"]);
    assert!(
        rec["total_tokens"].as_u64().is_some_and(|n| n <= 1000),
        "{rec}"
    );
    Ok(())
}

pub async fn a_model_outside_the_list_never_reaches_the_upstream(c: Arc<Ctx>) -> CaseResult {
    let slug = "spend-models";
    let t = c
        .tenant_on_mock(slug, "ok", json!({"models": ["gpt-4o-mini"]}))
        .await?;
    for model in [
        "gpt-4.1",
        "o1-pro",
        "ft:gpt-4o-mini:acme::abc123",
        "GPT-4O-MINI",
    ] {
        let r = c
            .send_chat(
                &t,
                Some((&t.secret, KeyHeader::Bearer)),
                &chat_body(Some(model), "hi", false),
            )
            .await?;
        assert_problem(&r, 403, "model-not-allowed");
        assert_eq!(
            r.json()["allowed"],
            json!(["mock-default", "gpt-4o-mini"]),
            "{}",
            r.describe()
        );
    }
    let long = "m".repeat(1_500_000);
    let r = c
        .send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(Some(&long), "hi", false),
        )
        .await?;
    assert_problem(&r, 400, "invalid-request");
    assert_eq!(r.json()["param"], "model");
    assert!(
        r.text.len() < 2000,
        "the problem does not echo the model: {} bytes",
        r.text.len()
    );
    assert!(
        c.upstream_requests(slug).is_empty(),
        "nothing reached the upstream"
    );
    expect_status(
        &c.send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(Some("gpt-4o-mini"), "hi", false),
        )
        .await?,
        200,
        "listed",
    )?;
    // An API with no list allows only its default model, unless the owner allows any.
    c.admin
        .patch_api(&t.api_id, json!({"upstream": {"models": []}}))
        .await?;
    let r = c
        .send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(Some("gpt-4o-mini"), "hi", false),
        )
        .await?;
    assert_problem(&r, 403, "model-not-allowed");
    let api = c
        .admin
        .patch_api(&t.api_id, json!({"upstream": {"allow_any_model": true}}))
        .await?;
    assert_eq!(api["upstream"]["allow_any_model"], true);
    expect_status(
        &c.send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(Some("anything-at-all"), "hi", false),
        )
        .await?,
        200,
        "any model",
    )?;
    assert_eq!(c.upstream_requests(slug).len(), 2);
    Ok(())
}

pub async fn hostile_bodies_are_refused_and_caps_sent_under_one_name(c: Arc<Ctx>) -> CaseResult {
    let slug = "spend-hostile";
    let t = c
        .tenant_on_mock(slug, "ok/honour/1/chunks/100", json!({}))
        .await?;
    limit_default_plan(&c, &t, json!({"max_tokens_per_request": 50})).await?;
    let key = Some((t.secret.as_str(), KeyHeader::Bearer));
    for (field, value, kind) in [
        ("n", json!(-1), "invalid-request"),
        ("n", json!(1.5), "invalid-request"),
        ("n", json!("8"), "invalid-request"),
        ("n", json!(1e9), "invalid-request"),
        ("max_tokens", json!(0), "invalid-request"),
        ("max_completion_tokens", json!(2_000_000), "invalid-request"),
        ("service_tier", json!("priority"), "parameter-not-allowed"),
        ("store", json!(true), "parameter-not-allowed"),
        (
            "modalities",
            json!(["text", "audio"]),
            "parameter-not-allowed",
        ),
        (
            "audio",
            json!({"voice": "alloy", "format": "wav"}),
            "parameter-not-allowed",
        ),
        ("web_search_options", json!({}), "parameter-not-allowed"),
        (
            "prediction",
            json!({"type": "content", "content": "x"}),
            "parameter-not-allowed",
        ),
    ] {
        let mut body = chat_body(None, "hi", false);
        body[field] = value.clone();
        let r = c.send_chat(&t, key, &body).await?;
        assert_problem(&r, 400, kind);
        assert_eq!(
            r.json()["param"],
            field,
            "{field} = {value}: {}",
            r.describe()
        );
    }
    assert!(c.upstream_requests(slug).is_empty());
    // The plan's cap of 50 holds whichever name the client uses, and only one name goes upstream.
    let mut body = chat_body(None, "hi", false);
    body["max_tokens"] = json!(5000);
    body["max_completion_tokens"] = json!(6000);
    expect_status(&c.send_chat(&t, key, &body).await?, 200, "both names")?;
    let up = c.upstream_requests(slug).pop().ok_or("no request")?.json();
    assert_eq!(up["max_completion_tokens"], 50, "{up}");
    assert!(up.get("max_tokens").is_none(), "never both: {up}");
    let mut body = chat_body(None, "hi", false);
    body["max_tokens"] = json!(5000);
    expect_status(&c.send_chat(&t, key, &body).await?, 200, "max_tokens")?;
    assert_eq!(
        c.upstream_requests(slug).pop().ok_or("no request")?.json()["max_tokens"],
        50
    );
    // A parameter the owner allows is forwarded verbatim.
    c.admin
        .patch_api(
            &t.api_id,
            json!({"upstream": {"allowed_params": ["service_tier"]}}),
        )
        .await?;
    let mut body = chat_body(None, "hi", false);
    body["service_tier"] = json!("flex");
    expect_status(
        &c.send_chat(&t, key, &body).await?,
        200,
        "allowed service_tier",
    )?;
    assert_eq!(
        c.upstream_requests(slug).pop().ok_or("no request")?.json()["service_tier"],
        "flex"
    );
    Ok(())
}

pub async fn huge_prompts_are_refused_by_their_bound(c: Arc<Ctx>) -> CaseResult {
    let slug = "spend-huge";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    limit_default_plan(&c, &t, json!({"tokens_per_day": 1000})).await?;
    let key = Some((t.secret.as_str(), KeyHeader::Bearer));
    let mut tools = chat_body(None, "hi", false);
    tools["tools"] = json!([{"type": "function", "function": {"name": "f", "description": "d".repeat(1_500_000)}}]);
    let r = c.send_chat(&t, key, &tools).await?;
    assert_problem(&r, 429, "quota-exceeded");
    let empties: Vec<Value> = (0..10_000).map(|_| json!({})).collect();
    let r = c.send_chat(&t, key, &json!({"messages": empties})).await?;
    assert_problem(&r, 429, "quota-exceeded");
    assert!(
        r.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("needs at least")),
        "{}",
        r.describe()
    );
    let cjk = "漢".repeat(400);
    let r = c.send_chat(&t, key, &chat_body(None, &cjk, false)).await?;
    assert_problem(&r, 429, "quota-exceeded");
    assert!(
        c.upstream_requests(slug).is_empty(),
        "none reached the upstream"
    );
    Ok(())
}

pub async fn output_of_every_kind_is_metered_and_cut(c: Arc<Ctx>) -> CaseResult {
    for kind in ["tools", "function", "refusal", "audio", "cjk"] {
        let slug = format!("spend-kind-{kind}");
        // 300 chunks from an upstream that ignores the cap and reports no usage.
        let t = c
            .tenant_on_mock(
                &slug,
                &format!("ok/kind/{kind}/chunks/300/nousage/1"),
                json!({}),
            )
            .await?;
        limit_default_plan(&c, &t, json!({"tokens_per_day": 300})).await?;
        let s = send_and_stream(
            c.chat(&t, Some((&t.secret, KeyHeader::Bearer)))
                .json(&chat_body(None, "go", true)),
            STREAM_LIMIT,
        )
        .await?;
        let summary = stream_summary(&s);
        assert_eq!(s.status, 200, "{kind}: {summary}");
        let n = s.events.len();
        assert!(n >= 2 && s.events[n - 1].is_done(), "{kind}: {summary}");
        let problem = s.events[n - 2].json().ok_or("last event is not JSON")?;
        assert_eq!(
            problem["type"], "quota-exceeded",
            "{kind} was cut: {summary}"
        );
        // Every byte of generated output the client got, of whatever kind.
        let delivered: usize = s
            .events
            .iter()
            .filter_map(|e| e.json())
            .filter_map(|v| v.pointer("/choices/0/delta").cloned())
            .map(|d| {
                let texts = [
                    d.pointer("/content"),
                    d.pointer("/refusal"),
                    d.pointer("/audio/transcript"),
                    d.pointer("/function_call/arguments"),
                    d.pointer("/tool_calls/0/function/arguments"),
                ];
                texts
                    .iter()
                    .flatten()
                    .filter_map(|v| v.as_str())
                    .map(str::len)
                    .sum::<usize>()
            })
            .sum();
        assert!(delivered > 0, "{kind}: something was delivered: {summary}");
        let rec = n_records(&c, &t, 1).await?.remove(0);
        let bound = rec["prompt_bound"].as_u64().ok_or("prompt_bound")?;
        assert!(
            bound + delivered as u64 <= 300,
            "{kind}: {delivered} bytes after a {bound}-token prompt passed a 300-token day"
        );
        assert!(
            rec["total_tokens"]
                .as_u64()
                .is_some_and(|n| n <= 300 && n >= bound + delivered as u64 - 64),
            "{kind}: {rec}"
        );
        println!("    measured: {kind}: {delivered} bytes delivered after a {bound}-token bound, {} booked of 300", rec["total_tokens"]);
        if kind == "cjk" {
            let chars: usize = s
                .events
                .iter()
                .filter_map(|e| e.content())
                .map(|c| c.chars().count())
                .sum();
            assert!(
                bound + chars as u64 * 3 <= 300,
                "{chars} CJK characters on a 300-token day"
            );
        }
    }
    Ok(())
}

pub async fn a_stream_cut_at_its_first_event_books_its_prompt(c: Arc<Ctx>) -> CaseResult {
    let slug = "spend-cut-first";
    let t = c.tenant_on_mock(slug, "cut/chunks/0", json!({})).await?;
    limit_default_plan(&c, &t, json!({"tokens_per_day": 1_000_000})).await?;
    let prompt = "a long prompt ".repeat(5_000);
    let s = send_and_stream(
        c.chat(&t, Some((&t.secret, KeyHeader::Bearer)))
            .json(&chat_body(None, &prompt, true)),
        STREAM_LIMIT,
    )
    .await?;
    let summary = stream_summary(&s);
    assert_eq!(s.status, 200, "{summary}");
    assert!(s.events.iter().any(SseEvent::is_error), "{summary}");
    let rec = n_records(&c, &t, 1).await?.remove(0);
    let bound = rec["prompt_bound"].as_u64().ok_or("prompt_bound")?;
    assert!(bound >= prompt.len() as u64, "{rec}");
    assert_eq!(
        (rec["prompt_tokens"].as_u64(), rec["ended"].as_str()),
        (Some(bound), Some("upstream_cut")),
        "{rec}"
    );
    assert_eq!(rec["estimated"], true);
    println!("    measured: a stream cut at its first event booked its {bound}-token prompt bound");
    let w = window(&c, &t, "tokens_per_day").await?;
    assert!(
        w["used"].as_u64().is_some_and(|u| u >= bound),
        "the prompt is booked: {w}"
    );
    Ok(())
}

pub async fn an_upstream_timeout_books_the_prompt_it_was_sent(c: Arc<Ctx>) -> CaseResult {
    let slug = "spend-timeout";
    let t = c
        .tenant_on_mock(slug, "hang/3000", json!({"timeout_ms": 300}))
        .await?;
    limit_default_plan(&c, &t, json!({"tokens_per_day": 1_000_000})).await?;
    let prompt = "x".repeat(200_000);
    let r = c
        .send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(None, &prompt, false),
        )
        .await?;
    assert_problem(&r, 504, "upstream-timeout");
    let rec = n_records(&c, &t, 1).await?.remove(0);
    assert_eq!(rec["ended"], "upstream_timeout", "{rec}");
    assert!(
        rec["prompt_tokens"].as_u64().is_some_and(|p| p >= 200_000),
        "{rec}"
    );
    println!(
        "    measured: an upstream timeout after a 200 KB prompt booked {} tokens",
        rec["prompt_tokens"]
    );
    // An error status means nothing was generated: nothing is booked.
    let failing = c
        .tenant_on_mock("spend-error-status", "status/500", json!({}))
        .await?;
    let r = c.chat_ok(&failing).await?;
    assert_problem(&r, 502, "upstream-error");
    let rec = n_records(&c, &failing, 1).await?.remove(0);
    assert_eq!(
        (rec["ended"].as_str(), rec["total_tokens"].as_u64()),
        (Some("upstream_error"), Some(0)),
        "{rec}"
    );
    Ok(())
}

/// Polls until a stream is admitted again on a one-stream plan; returns how long that took.
async fn slot_free_after(c: &Ctx, t: &Tenant, since: Instant) -> Result<Duration> {
    loop {
        let r = c
            .chat(t, Some((&t.secret, KeyHeader::Bearer)))
            .json(&chat_body(None, "again", true))
            .timeout(Duration::from_millis(800))
            .send()
            .await;
        match r {
            Ok(resp) if resp.status() == 429 => {}
            // Admitted (its answer may hang like the first): the slot was free.
            _ => return Ok(since.elapsed()),
        }
        if since.elapsed() > Duration::from_secs(10) {
            return Err("the stream slot was still held 10 s after the client hung up".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn a_client_hanging_up_during_an_upstream_stall_frees_its_slot(
    c: Arc<Ctx>,
) -> CaseResult {
    // Silent before the response head (the stream starts with heartbeats after a second), and
    // silent after the first chunk.
    for (slug, scenario) in [
        ("spend-stall-head", "hang/30000"),
        ("spend-stall-body", "ok/stall/30000/chunks/3"),
    ] {
        let t = c.tenant_on_mock(slug, scenario, json!({})).await?;
        limit_default_plan(
            &c,
            &t,
            json!({"max_concurrent_streams": 1, "tokens_per_day": 100000}),
        )
        .await?;
        let mut resp = c
            .chat(&t, Some((&t.secret, KeyHeader::Bearer)))
            .json(&chat_body(None, "wait for it", true))
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        assert_eq!(resp.status(), 200, "{slug}");
        let first = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await??
            .ok_or("no first chunk")?;
        if slug == "spend-stall-head" {
            assert!(
                first.starts_with(b":"),
                "a heartbeat comment while the upstream is silent: {first:?}"
            );
        }
        drop(resp);
        let hung_up = Instant::now();
        let took = slot_free_after(&c, &t, hung_up).await?;
        assert!(
            took <= Duration::from_secs(5),
            "{slug}: slot freed after {took:?}"
        );
        println!(
            "    measured: {slug}: the stream slot was free {took:.1?} after the client hung up"
        );
        let recs = usage_until(&c, &t, "", |v| {
            records(v).iter().any(|r| r["ended"] == "client_gone")
        })
        .await?;
        let gone = records(&recs)
            .into_iter()
            .find(|r| r["ended"] == "client_gone")
            .ok_or("no record")?;
        assert_eq!(gone["status"], 499, "{gone}");
        assert!(
            gone["prompt_tokens"].as_u64().is_some_and(|p| p > 0),
            "the prompt was sent, so it is booked: {gone}"
        );
    }
    Ok(())
}

pub async fn a_stream_longer_than_the_lease_keeps_its_slot_and_record(c: Arc<Ctx>) -> CaseResult {
    // The gateway under test runs with SLUICE_LEASE_TTL_MS=3000: this stream lasts three of them.
    let slug = "spend-long-stream";
    let t = c
        .tenant_on_mock(slug, "ok/chunks/18/delay/500", json!({}))
        .await?;
    limit_default_plan(
        &c,
        &t,
        json!({"max_concurrent_streams": 1, "tokens_per_day": 100000}),
    )
    .await?;
    let started = Instant::now();
    let long = tokio::spawn({
        let req = c
            .chat(&t, Some((&t.secret, KeyHeader::Bearer)))
            .json(&chat_body(None, "a long one", true))
            .timeout(Duration::from_secs(30));
        async move { send_and_stream(req, Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(6500)).await;
    let second = c
        .send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(None, "me too", true),
        )
        .await?;
    assert_problem(&second, 429, "rate-limited");
    let s = long.await??;
    assert!(
        started.elapsed() > Duration::from_secs(8),
        "the stream outlived the lease TTL"
    );
    assert_eq!(
        (s.status, s.error.clone()),
        (200, None),
        "{}",
        stream_summary(&s)
    );
    let recs = n_records(&c, &t, 1).await?;
    assert_eq!(recs.len(), 1, "exactly one record: {recs:?}");
    assert_eq!(
        (recs[0]["ended"].as_str(), recs[0]["estimated"].as_bool()),
        (Some("complete"), Some(false)),
        "{}",
        recs[0]
    );
    Ok(())
}

pub async fn twenty_parallel_requests_on_a_cent_book_at_most_a_cent(c: Arc<Ctx>) -> CaseResult {
    let slug = "spend-cent";
    let t = c
        .tenant_on_mock(slug, "ok/honour/1/chunks/2000/prompt/10", json!({}))
        .await?;
    let api = c
        .admin
        .patch_api(&t.api_id, json!({"prices": {"mock-default": {"input_per_mtok": 2.5, "output_per_mtok": 10.0, "cached_input_per_mtok": 1.25}}}))
        .await?;
    assert_eq!(api["prices"]["mock-default"]["output_per_mtok"], 10.0);
    assert_eq!(api["unpriced_models"], json!([]));
    let plan = limit_default_plan(&c, &t, json!({"spend_per_day_usd": 0.01})).await?;
    assert_eq!(plan["spend_per_day_usd"], 0.01);
    let bodies = (0..20)
        .map(|i| {
            let mut b = chat_body(None, &format!("spend {i}"), false);
            b["max_tokens"] = json!(300);
            b
        })
        .collect();
    let replies = all_at_once(&c, &t, bodies).await?;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok + refused.len(), 20);
    assert!(
        ok >= 1 && !refused.is_empty(),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let p = refused[0].json();
    assert_eq!(
        (p["type"].as_str(), p["scope"].as_str()),
        (Some("budget-exceeded"), Some("spend_per_day_usd")),
        "{p}"
    );
    assert_eq!(p["limit"], 0.01);
    // Refused while the admitted ones still hold their reservations: worth retrying in a second
    // (they may use less); refused with nothing held that could free room: not before tomorrow.
    for r in &refused {
        let p = r.json();
        let waits_for_others = p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("when they finish"));
        if waits_for_others {
            assert!(p["held"].as_f64().is_some_and(|h| h > 0.0), "{p}");
            assert_eq!(r.header("retry-after"), Some("1"), "{}", r.describe());
            assert_eq!(r.header("x-should-retry"), None, "{}", r.describe());
        } else {
            assert_eq!(
                r.header("x-should-retry"),
                Some("false"),
                "{}",
                r.describe()
            );
        }
    }
    let report = usage_until(&c, &t, "", |v| records(v).len() >= ok).await?;
    let cost = report["totals"]["cost_usd"].as_f64().ok_or("cost_usd")?;
    assert!(
        cost > 0.0 && cost <= 0.01,
        "booked ${cost} on a one-cent day"
    );
    println!("    measured: {ok} of 20 admitted on spend_per_day_usd 0.01, ${cost:.6} booked");
    assert!(records(&report)
        .iter()
        .all(|r| r["cost_usd"].as_f64().is_some_and(|c| c > 0.0)));
    let w = window(&c, &t, "spend_per_day_usd").await?;
    assert_eq!(w["limit"], 0.01);
    assert!(
        w["used"].as_f64().is_some_and(|u| u <= 0.01 && u > 0.0),
        "{w}"
    );
    // A model without a price on a plan that limits spend is refused.
    c.admin
        .patch_api(
            &t.api_id,
            json!({"upstream": {"models": ["unpriced-model"]}}),
        )
        .await?;
    let r = c
        .send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(Some("unpriced-model"), "hi", false),
        )
        .await?;
    assert_problem(&r, 403, "model-not-priced");
    let api = c.admin.get_api(&t.api_id).await?.json();
    assert_eq!(api["unpriced_models"], json!(["unpriced-model"]), "{api}");
    Ok(())
}

pub async fn prices_and_spend_limits_are_validated(c: Arc<Ctx>) -> CaseResult {
    let t = c.tenant_on_mock("spend-validate", "ok", json!({})).await?;
    let path = format!("/api/v1/gateway/apis/{}", t.api_id);
    for bad in [
        json!({"prices": {"m": {"input_per_mtok": -1, "output_per_mtok": 1}}}),
        json!({"prices": {"m": {"input_per_mtok": 0.0000001, "output_per_mtok": 1}}}),
        json!({"prices": {"m": {"input_per_mtok": 1}}}),
        json!({"prices": {"m": {"input_per_mtok": "1", "output_per_mtok": 1}}}),
        json!({"upstream": {"max_n": 0}}),
        json!({"upstream": {"allowed_params": ["temperature"]}}),
    ] {
        let r = c
            .admin
            .call(Method::PATCH, &path, Some(bad.clone()))
            .await?;
        assert_eq!(r.status, 400, "{bad}: {}", r.describe());
    }
    let plans = format!("/api/v1/gateway/apis/{}/plans/default", t.api_id);
    for bad in [
        json!({"spend_per_day_usd": 0}),
        json!({"spend_per_month_usd": 0.1234567}),
        json!({"spend_per_day_usd": -2}),
    ] {
        let r = c
            .admin
            .call(Method::PATCH, &plans, Some(bad.clone()))
            .await?;
        assert_eq!(r.status, 400, "{bad}: {}", r.describe());
    }
    let ok = c
        .admin
        .call(
            Method::PATCH,
            &plans,
            Some(json!({"spend_per_month_usd": 12.345678})),
        )
        .await?;
    expect_status(&ok, 200, "six decimals")?;
    assert_eq!(ok.json()["spend_per_month_usd"], 12.345678);
    Ok(())
}
