//! End-to-end cases for plans, exact quotas and rate limits, metered streams and usage records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::{assert_problem, stream_summary, CaseFn, CaseResult, Ctx, STREAM_LIMIT};
use crate::support::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![
        burst_of_50_against_a_limit_of_10_admits_exactly_10,
        rate_limit_headers_on_streamed_and_plain_answers,
        stream_over_the_daily_token_quota_ends_cleanly,
        client_disconnect_cancels_upstream_and_frees_the_slot,
        plan_switch_applies_on_the_next_request,
        plan_models_and_max_tokens_are_enforced,
        usage_reports_for_owner_and_consumer,
        restart_keeps_counters_and_unflushed_usage,
        each_settlement_frees_its_reservation_before_the_next_request,
        a_budget_held_by_a_request_in_flight_is_worth_retrying,
    ]
}

/// Sets limits on the API's default plan.
pub async fn limit_default_plan(c: &Ctx, t: &Tenant, limits: Value) -> Result<Value> {
    let r = c
        .admin
        .call(
            Method::PATCH,
            &format!("/api/v1/gateway/apis/{}/plans/default", t.api_id),
            Some(limits),
        )
        .await?;
    expect_status(&r, 200, "patch the default plan")?;
    Ok(r.json())
}

/// The API's usage report (`query` like `group_by=consumer`), polled until `ready` holds (the
/// counter flushes its outbox to D1 from an alarm about half a second after a request ends).
pub async fn usage_until(
    c: &Ctx,
    t: &Tenant,
    query: &str,
    ready: impl Fn(&Value) -> bool,
) -> Result<Value> {
    c.admin_get_until(
        &format!("/api/v1/gateway/apis/{}/usage?{query}", t.api_id),
        ready,
    )
    .await
}

pub fn records(v: &Value) -> Vec<Value> {
    v["records"].as_array().cloned().unwrap_or_default()
}

pub async fn burst_of_50_against_a_limit_of_10_admits_exactly_10(c: Arc<Ctx>) -> CaseResult {
    let slug = "quota-burst";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    limit_default_plan(&c, &t, json!({"requests_per_minute": 10})).await?;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let req = c
            .chat(&t, Some((&t.secret, KeyHeader::Bearer)))
            .json(&chat_body(None, "hi", false));
        tasks.push(tokio::spawn(
            async move { Reply::read(req.send().await?).await },
        ));
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await??);
    }
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        (ok, limited.len()),
        (10, 40),
        "exactly the limit admitted: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(
        c.upstream_requests(slug).len(),
        10,
        "only admitted requests reach the upstream"
    );
    let r = limited[0];
    assert_problem(r, 429, "rate-limited");
    let p = r.json();
    assert_eq!(p["scope"], "requests_per_minute");
    assert_eq!(p["limit"], 10);
    assert_eq!(p["used"], 10);
    assert_eq!(p["plan"], "default");
    assert!(
        p["reset"].as_str().is_some_and(|s| s.ends_with('Z')),
        "reset is RFC 3339: {p}"
    );
    let retry: u64 = r
        .header("retry-after")
        .ok_or("Retry-After missing")?
        .parse()?;
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    Ok(())
}

pub async fn rate_limit_headers_on_streamed_and_plain_answers(c: Arc<Ctx>) -> CaseResult {
    let slug = "quota-headers";
    let t = c.tenant_on_mock(slug, "ok/chunks/3", json!({})).await?;
    limit_default_plan(
        &c,
        &t,
        json!({"requests_per_minute": 100, "tokens_per_day": 100000}),
    )
    .await?;
    let plain = c.chat_ok(&t).await?;
    expect_status(&plain, 200, "plain chat")?;
    assert_eq!(plain.header("x-ratelimit-limit-requests"), Some("100"));
    assert_eq!(plain.header("x-ratelimit-remaining-requests"), Some("99"));
    assert!(plain.header("x-ratelimit-reset-requests").is_some());
    assert_eq!(plain.header("x-ratelimit-limit-tokens"), Some("100000"));
    // What is left once this answer is booked (its reported usage), not while it held its worst
    // case.
    let total = plain.json()["usage"]["total_tokens"]
        .as_u64()
        .ok_or("usage")?;
    assert_eq!(
        plain.header("x-ratelimit-remaining-tokens"),
        Some((100000 - total).to_string().as_str()),
        "{}",
        plain.describe()
    );
    let policy = plain
        .header("ratelimit-policy")
        .ok_or("RateLimit-Policy missing")?;
    assert!(
        policy.contains("\"requests_per_minute\";q=100;w=60")
            && policy.contains("\"tokens_per_day\";q=100000;w=86400"),
        "{policy}"
    );
    assert!(
        plain
            .header("ratelimit")
            .is_some_and(|v| v.contains("\"requests_per_minute\";r=99;t=")),
        "RateLimit: {:?}",
        plain.header("ratelimit")
    );

    let s = c.chat_hi(&t, true).await?;
    assert_eq!(s.status, 200, "{}", stream_summary(&s));
    assert_eq!(s.header("x-ratelimit-limit-requests"), Some("100"));
    assert_eq!(s.header("x-ratelimit-remaining-requests"), Some("98"));
    assert!(
        s.header("ratelimit-policy").is_some()
            && s.header("x-ratelimit-remaining-tokens").is_some()
    );
    Ok(())
}

pub async fn stream_over_the_daily_token_quota_ends_cleanly(c: Arc<Ctx>) -> CaseResult {
    let slug = "quota-midstream";
    // 40 chunks of "tokN " (5-6 bytes each) from an upstream that ignores the cap: far more than a
    // 100-token day holds once the prompt's bound (30 tokens for "hi") is reserved.
    let t = c
        .tenant_on_mock(slug, "ok/chunks/40/delay/5", json!({}))
        .await?;
    limit_default_plan(&c, &t, json!({"tokens_per_day": 100})).await?;
    let s = c.chat_hi(&t, true).await?;
    let summary = stream_summary(&s);
    assert_eq!(s.status, 200, "{summary}");
    assert_eq!(s.error, None, "the stream ends cleanly: {summary}");
    assert_eq!(s.leftover, "", "{summary}");
    let text = s.text();
    assert!(
        !text.is_empty() && mock_text(40).starts_with(&text) && text.len() < mock_text(40).len(),
        "a prefix of the reply was delivered: {summary}"
    );
    let n = s.events.len();
    assert!(n >= 3, "{summary}");
    assert!(
        s.events[n - 2].is_error(),
        "an error event the SDKs raise: {summary}"
    );
    let problem = s.events[n - 2].json().ok_or("error data is not JSON")?;
    assert_eq!(problem["type"], "quota-exceeded", "{summary}");
    assert_eq!(problem["scope"], "tokens_per_day");
    assert_eq!(problem["limit"], 100);
    assert!(s.events[n - 1].is_done(), "[DONE] last: {summary}");

    let usage = usage_until(&c, &t, "", |v| !records(v).is_empty()).await?;
    let rec = &records(&usage)[0];
    assert_eq!(rec["estimated"], true, "no usage chunk arrived: {rec}");
    assert_eq!(rec["status"], 429, "{rec}");
    assert_eq!(rec["ended"], "budget_cut", "{rec}");
    // What was delivered, counted by its bytes (no tokenizer counts more), stays within the day.
    let bound = rec["prompt_bound"].as_u64().ok_or("prompt_bound")?;
    assert!(
        bound + text.len() as u64 <= 100,
        "{} bytes delivered after a {bound}-token prompt on a 100-token day",
        text.len()
    );
    let total = rec["total_tokens"].as_u64().ok_or("total_tokens")?;
    assert!(
        (bound + 1..=100).contains(&total),
        "recorded {total} tokens within the 100-token day: {rec}"
    );

    let next = c.chat_ok(&t).await?;
    assert_problem(&next, 429, "quota-exceeded");
    assert_eq!(next.json()["scope"], "tokens_per_day");
    Ok(())
}

pub async fn client_disconnect_cancels_upstream_and_frees_the_slot(c: Arc<Ctx>) -> CaseResult {
    let slug = "quota-disconnect";
    let t = c
        .tenant_on_mock(slug, "ok/chunks/60/delay/100", json!({}))
        .await?;
    limit_default_plan(
        &c,
        &t,
        json!({"max_concurrent_streams": 1, "tokens_per_day": 100000}),
    )
    .await?;
    let mut resp = c
        .chat(&t, Some((&t.secret, KeyHeader::Bearer)))
        .json(&chat_body(None, "hi", true))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    // While the first stream runs, a second is over the concurrency limit.
    let second = c
        .send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(None, "hi", true),
        )
        .await?;
    assert_problem(&second, 429, "rate-limited");
    assert_eq!(second.json()["scope"], "max_concurrent_streams");
    let mut got = 0;
    while got < 3 {
        match tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await?? {
            Some(b) => got += b.iter().filter(|&&x| x == b'\n').count() / 2,
            None => return Err("stream ended early".into()),
        }
    }
    drop(resp); // the client goes away mid-stream

    // The upstream is cancelled: the mock stops being able to write long before its 60 chunks (6 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let first = c
        .upstream_requests(slug)
        .into_iter()
        .next()
        .ok_or("no upstream request")?;
    let writes_then = first.writes.len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let writes_later = c
        .upstream_requests(slug)
        .into_iter()
        .next()
        .ok_or("no upstream request")?
        .writes
        .len();
    assert!(
        writes_later < 40,
        "the upstream kept streaming after the client left ({writes_later} writes)"
    );
    assert!(
        writes_later <= writes_then + 1,
        "still writing: {writes_then} then {writes_later}"
    );

    // The slot is free again: a new stream is admitted.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = send_and_stream(
            c.chat(&t, Some((&t.secret, KeyHeader::Bearer)))
                .json(&chat_body(None, "again", true))
                .timeout(Duration::from_secs(15)),
            Duration::from_secs(15),
        )
        .await?;
        if r.status == 200 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the concurrency slot was never released: {}",
                stream_summary(&r)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let usage = usage_until(&c, &t, "", |v| {
        records(v).iter().any(|r| r["status"] == 499)
    })
    .await?;
    let gone = records(&usage)
        .into_iter()
        .find(|r| r["status"] == 499)
        .ok_or("no record for the abandoned stream")?;
    assert_eq!(gone["estimated"], true, "{gone}");
    assert!(
        gone["completion_tokens"].as_u64().is_some_and(|n| n >= 1),
        "what was delivered is counted: {gone}"
    );
    Ok(())
}

pub async fn plan_switch_applies_on_the_next_request(c: Arc<Ctx>) -> CaseResult {
    let slug = "quota-plan-switch";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let created = c
        .admin
        .call(
            Method::POST,
            &format!("/api/v1/gateway/apis/{}/plans", t.api_id),
            Some(json!({"name": "tiny", "requests_per_day": 2})),
        )
        .await?;
    expect_status(&created, 201, "create plan")?;
    assert_eq!(created.json()["requests_per_day"], 2);
    let dup = c
        .admin
        .call(
            Method::POST,
            &format!("/api/v1/gateway/apis/{}/plans", t.api_id),
            Some(json!({"name": "tiny"})),
        )
        .await?;
    assert_problem(&dup, 409, "conflict");
    let bad = c
        .admin
        .call(
            Method::POST,
            &format!("/api/v1/gateway/apis/{}/plans", t.api_id),
            Some(json!({"name": "x", "tokens_per_day": -5})),
        )
        .await?;
    assert_eq!(bad.status, 400, "{}", bad.describe());

    let plan_path = format!(
        "/api/v1/gateway/apis/{}/consumers/{}/plan",
        t.api_id, t.consumer_id
    );
    let subscribe = |plan: &'static str| {
        c.admin
            .call(Method::PUT, &plan_path, Some(json!({ "plan": plan })))
    };
    // Counters belong to the consumer, not the plan: this request counts towards tiny's 2 a day.
    expect_status(&c.chat_ok(&t).await?, 200, "default plan is unlimited")?;
    let put = subscribe("tiny").await?;
    expect_status(&put, 200, "subscribe to tiny")?;
    expect_status(
        &c.chat_ok(&t).await?,
        200,
        "second request today, the first on tiny",
    )?;
    let refused = c.chat_ok(&t).await?;
    assert_problem(&refused, 429, "quota-exceeded");
    assert_eq!(refused.json()["plan"], "tiny");
    assert_eq!(refused.json()["scope"], "requests_per_day");
    let back = subscribe("default").await?;
    expect_status(&back, 200, "back to default")?;
    expect_status(
        &c.chat_ok(&t).await?,
        200,
        "unlimited again on the next request",
    )?;
    let unknown = subscribe("nope").await?;
    assert_problem(&unknown, 404, "not-found");
    Ok(())
}

pub async fn plan_models_and_max_tokens_are_enforced(c: Arc<Ctx>) -> CaseResult {
    let slug = "quota-models";
    let t = c.tenant_on_mock(slug, "ok/chunks/2", json!({})).await?;
    limit_default_plan(
        &c,
        &t,
        json!({"models": ["mock-default"], "max_tokens_per_request": 50}),
    )
    .await?;
    let other = c
        .send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(Some("gpt-other"), "hi", false),
        )
        .await?;
    assert_problem(&other, 403, "model-not-allowed");
    assert!(
        c.upstream_requests(slug).is_empty(),
        "refused before the upstream"
    );

    let mut body = chat_body(None, "hi", true);
    body["max_tokens"] = json!(500);
    let s = send_and_stream(
        c.chat(&t, Some((&t.secret, KeyHeader::Bearer))).json(&body),
        STREAM_LIMIT,
    )
    .await?;
    assert_eq!(s.status, 200, "{}", stream_summary(&s));
    let sent = c
        .upstream_requests(slug)
        .pop()
        .ok_or("no upstream request")?
        .json();
    assert_eq!(
        sent["max_tokens"], 50,
        "the plan's cap is forced upstream: {sent}"
    );
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "the gateway asks for usage: {sent}"
    );
    assert!(
        s.events
            .iter()
            .all(|e| e.json().is_none_or(|v| v.get("usage").is_none())),
        "the client did not ask for the usage chunk: {}",
        stream_summary(&s)
    );
    let usage = usage_until(&c, &t, "", |v| !records(v).is_empty()).await?;
    let rec = &records(&usage)[0];
    assert_eq!(
        rec["estimated"], false,
        "the upstream's usage chunk was counted: {rec}"
    );
    assert_eq!(rec["status"], 200);
    assert!(rec["total_tokens"].as_u64().is_some_and(|n| n > 0), "{rec}");
    assert!(
        rec["ttft_ms"].as_u64().is_some(),
        "time to first token recorded: {rec}"
    );
    Ok(())
}

pub async fn usage_reports_for_owner_and_consumer(c: Arc<Ctx>) -> CaseResult {
    let slug = "quota-usage";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    limit_default_plan(
        &c,
        &t,
        json!({"requests_per_day": 100, "tokens_per_month": 1000000}),
    )
    .await?;
    for _ in 0..3 {
        expect_status(&c.chat_ok(&t).await?, 200, "chat")?;
    }
    let by_consumer = usage_until(&c, &t, "group_by=consumer", |v| {
        v["totals"]["requests"] == 3
    })
    .await?;
    let groups = by_consumer["groups"].as_array().ok_or("groups")?;
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["consumer"], t.consumer_id.as_str());
    assert_eq!(groups[0]["requests"], 3);
    let by_model = usage_until(&c, &t, "group_by=model", |v| v["totals"]["requests"] == 3).await?;
    assert_eq!(by_model["groups"][0]["model"], "mock-default");
    let by_day = usage_until(&c, &t, "group_by=day", |v| v["totals"]["requests"] == 3).await?;
    assert!(
        by_day["groups"][0]["day"]
            .as_str()
            .is_some_and(|d| d.len() == 10),
        "{by_day}"
    );
    let bad = c
        .admin
        .call(
            Method::GET,
            &format!("/api/v1/gateway/apis/{}/usage?group_by=key", t.api_id),
            None,
        )
        .await?;
    assert_problem(&bad, 400, "invalid-request");
    let empty = usage_until(&c, &t, "from=2020-01-01&to=2020-01-02", |_| true).await?;
    assert_eq!(empty["totals"]["requests"], 0, "{empty}");

    let mine = c.consumer_usage(&t, Some(&t.secret)).await?;
    expect_status(&mine, 200, "consumer usage")?;
    let v = mine.json();
    assert_eq!(v["plan"]["name"], "default");
    assert_eq!(v["windows"]["requests_per_day"]["limit"], 100);
    assert_eq!(v["windows"]["requests_per_day"]["used"], 3);
    assert_eq!(v["windows"]["requests_per_day"]["remaining"], 97);
    assert!(
        v["windows"]["tokens_per_month"]["used"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{v}"
    );
    let anonymous = c.consumer_usage(&t, None).await?;
    assert_problem(&anonymous, 401, "missing-credential");
    Ok(())
}

pub async fn restart_keeps_counters_and_unflushed_usage(c: Arc<Ctx>) -> CaseResult {
    const START: Duration = Duration::from_secs(60);
    // Leases expire 3 s after their last renewal: the stream cut by the crash below is booked soon.
    let ttl = vec![("SLUICE_LEASE_TTL_MS".to_string(), "3000".to_string())];
    let mut gw = Gateway::start_with_vars(START, ttl).await?;
    let admin = gw.admin();
    let slug = "quota-restart";
    let t = admin
        .tenant(
            slug,
            "chat",
            json!({"base_url": c.mock.base_url(&format!("ok/tag/{slug}")), "default_model": "m"}),
        )
        .await?;
    let r = admin
        .call(
            Method::PATCH,
            &format!("/api/v1/gateway/apis/{}/plans/default", t.api_id),
            Some(json!({"requests_per_day": 3})),
        )
        .await?;
    expect_status(&r, 200, "limit the plan")?;
    let chat = |base: String| {
        let req = chat_request(
            &c.http,
            &base,
            &t.project,
            &t.api,
            Some((&t.secret, KeyHeader::Bearer)),
        )
        .json(&chat_body(None, "hi", false));
        async move { Reply::read(req.send().await?).await }
    };
    // A slow stream on a second API of the project, cut by the crash while it runs.
    let slow = admin
        .create_api(
            &t.project,
            "slow",
            json!({"base_url": c.mock.base_url(&format!("ok/chunks/100/delay/300/tag/{slug}-slow")), "default_model": "m"}),
        )
        .await?;
    let slow_id = str_field(&slow, "id")?;
    let mut stream = chat_request(
        &c.http,
        &gw.base_url,
        &t.project,
        "slow",
        Some((&t.secret, KeyHeader::Bearer)),
    )
    .json(&chat_body(None, "a long one", true))
    .send()
    .await?;
    assert_eq!(stream.status(), 200);
    tokio::time::timeout(Duration::from_secs(5), stream.chunk())
        .await??
        .ok_or("no first chunk")?;
    expect_status(&chat(gw.base_url.clone()).await?, 200, "first")?;
    expect_status(&chat(gw.base_url.clone()).await?, 200, "second")?;
    // Killed at once: the second request's usage is most likely still in the counter's outbox.
    gw.restart(START).await?;
    drop(stream);
    expect_status(
        &chat(gw.base_url.clone()).await?,
        200,
        "third, after the restart",
    )?;
    let fourth = chat(gw.base_url.clone()).await?;
    assert_problem(&fourth, 429, "quota-exceeded");
    assert_eq!(
        fourth.json()["used"],
        3,
        "the count survived the restart: {}",
        fourth.describe()
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = admin
            .call(
                Method::GET,
                &format!("/api/v1/gateway/apis/{}/usage", t.api_id),
                None,
            )
            .await?;
        let v = r.json();
        let n = records(&v).len();
        if n == 3 {
            let mut ids: Vec<String> = records(&v)
                .iter()
                .filter_map(|r| r["id"].as_str().map(str::to_string))
                .collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 3, "each request recorded once: {v}");
            break;
        }
        assert!(n < 3, "more records than requests: {v}");
        if Instant::now() > deadline {
            return Err(format!("usage lost across the restart: {n} of 3 records: {v}").into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Nobody settled the stream the crash cut: its lease expired unrenewed and was booked, with one
    // `abandoned` record, without any further request.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = admin
            .call(
                Method::GET,
                &format!("/api/v1/gateway/apis/{slow_id}/usage"),
                None,
            )
            .await?;
        let v = r.json();
        let recs = records(&v);
        if let Some(rec) = recs.first() {
            assert_eq!(recs.len(), 1, "one record for the cut stream: {v}");
            assert_eq!(
                (rec["ended"].as_str(), rec["estimated"].as_bool()),
                (Some("abandoned"), Some(true)),
                "{rec}"
            );
            assert!(
                rec["total_tokens"]
                    .as_u64()
                    .is_some_and(|n| n >= rec["prompt_bound"].as_u64().unwrap_or(u64::MAX)),
                "{rec}"
            );
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the abandoned stream was never recorded: {v}").into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    gw.stop();
    Ok(())
}

/// Back-to-back requests from one client: each answer's settlement goes with the consumer's next
/// admission (settled first, in the same call; also when its own flush is already on the way), so no
/// request sees the one before still holding its worst case. The day's budget fits one reservation of the plan's cap, not two: a settlement
/// left behind would shrink the next cap sent upstream. The consumer's usage right after the last
/// answer is exactly what the records say, nothing still reserved.
pub async fn each_settlement_frees_its_reservation_before_the_next_request(
    c: Arc<Ctx>,
) -> CaseResult {
    let slug = "quota-settled";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    limit_default_plan(
        &c,
        &t,
        json!({"tokens_per_day": 1500, "max_tokens_per_request": 1000}),
    )
    .await?;
    const REQUESTS: usize = 12;
    for i in 0..REQUESTS {
        expect_status(&c.chat_ok(&t).await?, 200, &format!("chat {i}"))?;
    }
    let caps: Vec<Value> = c
        .upstream_requests(slug)
        .iter()
        .map(|r| r.json()["max_tokens"].clone())
        .collect();
    assert_eq!(
        caps,
        vec![json!(1000); REQUESTS],
        "every request was admitted with the whole cap"
    );
    let mine = c.consumer_usage(&t, Some(&t.secret)).await?;
    expect_status(&mine, 200, "consumer usage")?;
    let day = mine.json()["windows"]["tokens_per_day"].clone();
    let used = day["used"].clone();
    assert_eq!(day["held"], 0, "nothing still held: {day}");
    let usage = usage_until(&c, &t, "", |v| records(v).len() == REQUESTS).await?;
    let booked: u64 = records(&usage)
        .iter()
        .filter_map(|r| r["total_tokens"].as_u64())
        .sum();
    assert!(booked > 0, "{usage}");
    assert_eq!(
        used,
        json!(booked),
        "used right after the last answer is what was booked, with nothing held"
    );
    eprintln!("    measured: {REQUESTS} back-to-back requests, each capped at 1000 of a 1500-token day; {booked} tokens booked");
    Ok(())
}

/// A request that does not fit only because another request in flight holds the day's budget is
/// told to retry in a second (the SDKs do), and the windows say what is booked and what is held;
/// once the first settles, the retry is admitted.
pub async fn a_budget_held_by_a_request_in_flight_is_worth_retrying(c: Arc<Ctx>) -> CaseResult {
    let slug = "quota-held";
    let t = c
        .tenant_on_mock(slug, "ok/chunks/20/delay/100", json!({}))
        .await?;
    limit_default_plan(&c, &t, json!({"tokens_per_day": 5000})).await?;
    // No cap of its own: the stream holds all the day has left while it runs.
    let mut first = c
        .chat(&t, Some((&t.secret, KeyHeader::Bearer)))
        .json(&chat_body(None, "hi", true))
        .send()
        .await?;
    assert_eq!(first.status(), 200);
    tokio::time::timeout(Duration::from_secs(5), first.chunk())
        .await??
        .ok_or("the first stream ended at once")?;

    let second = c
        .send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(None, "hi", false),
        )
        .await?;
    assert_problem(&second, 429, "quota-exceeded");
    let p = second.json();
    assert_eq!(
        (p["scope"].clone(), p["used"].clone()),
        (json!("tokens_per_day"), json!(0)),
        "{p}"
    );
    assert_eq!(p["held"], 5000, "{p}");
    assert_eq!(p["remaining"], 0, "{p}");
    assert!(
        p["detail"].as_str().is_some_and(
            |d| d.contains("held by requests in flight") && d.contains("when they finish")
        ),
        "{p}"
    );
    assert_eq!(
        second.header("retry-after"),
        Some("1"),
        "{}",
        second.describe()
    );
    assert_eq!(
        second.header("x-should-retry"),
        None,
        "{}",
        second.describe()
    );

    let usage = c.consumer_usage(&t, Some(&t.secret)).await?;
    expect_status(&usage, 200, "usage while the stream runs")?;
    let day = &usage.json()["windows"]["tokens_per_day"];
    assert_eq!(
        (
            day["used"].clone(),
            day["held"].clone(),
            day["remaining"].clone()
        ),
        (json!(0), json!(5000), json!(0)),
        "{day}"
    );

    // The stream ends and settles; the retry fits.
    while tokio::time::timeout(Duration::from_secs(10), first.chunk())
        .await??
        .is_some()
    {}
    let retried = c
        .send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(None, "hi", false),
        )
        .await?;
    expect_status(&retried, 200, "the retry once the first settled")?;
    let usage = c.consumer_usage(&t, Some(&t.secret)).await?;
    let day = &usage.json()["windows"]["tokens_per_day"];
    let (used, held) = (
        day["used"].as_u64().ok_or("used")?,
        day["held"].as_u64().ok_or("held")?,
    );
    assert!(used > 0 && held == 0, "both booked, nothing held: {day}");
    assert_eq!(day["remaining"], 5000 - used, "{day}");
    Ok(())
}
