//! End-to-end cases of the data plane: streaming and plain answers, credentials, bodies, upstream
//! failures, the admin basics and the demo upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{assert_problem, stream_summary, CaseFn, CaseResult, Ctx, STREAM_LIMIT};
use crate::support::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![
        streamed_reply_arrives_chunk_by_chunk,
        non_streamed_reply_is_passed_through,
        both_key_headers_are_accepted,
        bad_or_missing_credentials_are_401,
        revoked_key_fails_on_the_next_request,
        disabled_consumer_is_403_until_enabled,
        requests_in_flight_end_when_their_consumer_is_disabled_or_key_revoked,
        unknown_project_and_api_are_404,
        malformed_and_oversized_bodies_are_rejected,
        upstream_500_becomes_502,
        upstream_401_body_stays_with_the_owner,
        upstream_error_event_mid_stream_stays_with_the_owner,
        upstream_429_keeps_429_and_retry_after,
        upstream_redirects_are_answers_not_followed,
        upstream_answers_that_are_not_answers_end_cleanly,
        upstream_silence_after_the_head_is_a_timeout,
        upstream_hang_becomes_504,
        upstream_cut_mid_stream_ends_with_error_event,
        models_are_listed_in_openai_shape,
        demo_upstream_streams_with_usage_and_done,
    ]
}

/// Runs last, on a gateway of its own: wrangler answers the next POST after it with its own 503.
pub fn last_cases() -> Vec<(&'static str, CaseFn)> {
    cases![chunked_oversized_body_is_413]
}

async fn streamed_reply_arrives_chunk_by_chunk(c: Arc<Ctx>) -> CaseResult {
    let slug = "stream-chunks";
    let t = c
        .tenant_on_mock(slug, "ok/chunks/5/delay/200", json!({"models": ["mock-1"]}))
        .await?;
    // The client asks for the usage chunk, so a gateway that meters usage passes it on as well.
    let mut body = chat_body(Some("mock-1"), "stream please", true);
    body["stream_options"] = json!({"include_usage": true});
    let req = c.chat(&t, Some((&t.secret, KeyHeader::Bearer))).json(&body);
    let s = send_and_stream(req, STREAM_LIMIT).await?;
    let summary = stream_summary(&s);
    assert_eq!(s.status, 200, "{summary}");
    assert!(
        s.header("content-type")
            .unwrap_or("")
            .starts_with("text/event-stream"),
        "content-type {:?}",
        s.header("content-type")
    );
    assert_eq!(s.error, None, "the stream must end cleanly: {summary}");
    assert_eq!(s.leftover, "", "no partial event at the end: {summary}");

    let content = s.content_events();
    assert_eq!(content.len(), 5, "five content events: {summary}");
    assert_eq!(s.text(), mock_text(5), "reassembled text: {summary}");
    let (first, last) = (content[0].at, content[4].at);
    assert!(
        first + Duration::from_millis(600) < last,
        "the first chunk must arrive well before the upstream finished (first {first:?}, last {last:?}): {summary}"
    );
    let gaps: Vec<Duration> = content.windows(2).map(|p| p[1].at - p[0].at).collect();
    assert!(
        gaps.iter()
            .filter(|g| **g >= Duration::from_millis(100))
            .count()
            >= 3,
        "content events should arrive ~200 ms apart, not in bursts (gaps {gaps:?}): {summary}"
    );

    // Each event reached the client soon after the upstream wrote it: relayed, not buffered.
    let sent = c.upstream_requests(slug);
    assert_eq!(sent.len(), 1, "one upstream request");
    let writes = &sent[0].writes;
    assert!(
        writes.len() >= 5,
        "the mock wrote each chunk on its own: {writes:?}"
    );
    for (i, event) in content.iter().enumerate() {
        let written = writes[i].0;
        let arrived = s.start + event.at;
        let lag = arrived.saturating_duration_since(written);
        assert!(
            lag < Duration::from_millis(150),
            "content event {i} reached the client {lag:?} after the upstream sent it: {summary}"
        );
    }

    // The relayed events are exactly the upstream's, in order, ending with [DONE].
    let upstream_events: Vec<String> = SseParser::default()
        .push(&sent[0].reply)
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    let relayed: Vec<String> = s.events.iter().map(|e| e.data.clone()).collect();
    assert_eq!(relayed, upstream_events, "events relayed unchanged");
    assert!(
        s.events.iter().all(|e| e.event.is_none()),
        "no named events: {summary}"
    );
    assert!(
        s.events.last().is_some_and(SseEvent::is_done),
        "ends with [DONE]: {summary}"
    );
    let usage = &s.events[s.events.len() - 2].json().unwrap_or(Value::Null);
    assert_eq!(
        usage["choices"],
        json!([]),
        "usage chunk before [DONE]: {summary}"
    );
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    // The upstream was asked to stream.
    assert_eq!(sent[0].json()["stream"], true);
    assert_eq!(sent[0].header("accept"), Some("text/event-stream"));
    Ok(())
}

async fn non_streamed_reply_is_passed_through(c: Arc<Ctx>) -> CaseResult {
    let slug = "non-stream";
    let t = c
        .tenant_on_mock(slug, "ok/chunks/4", json!({"models": ["client-model"]}))
        .await?;
    let body = json!({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], "temperature": 0.5});
    let reply = c
        .send_chat(&t, Some((&t.secret, KeyHeader::Bearer)), &body)
        .await?;
    assert_eq!(reply.status, 200, "{}", reply.describe());
    assert!(
        reply.content_type().starts_with("application/json"),
        "content-type: {}",
        reply.describe()
    );
    let sent = c.upstream_requests(slug);
    assert_eq!(sent.len(), 1, "one upstream request");
    let up = &sent[0];
    assert_eq!(
        reply.text.as_bytes(),
        &up.reply[..],
        "the client gets the upstream's completion byte for byte"
    );
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        mock_text(4)
    );
    assert_eq!(reply.json()["usage"]["total_tokens"], 11);

    // What the gateway sent upstream.
    assert_eq!(up.method, "POST");
    assert_eq!(
        up.path,
        format!("/s/ok/chunks/4/tag/{slug}/chat/completions")
    );
    assert_eq!(
        up.header("authorization"),
        Some(format!("Bearer sk-upstream-{slug}").as_str()),
        "the upstream gets the API's provider key; headers {:?}",
        up.headers
    );
    for (name, value) in &up.headers {
        assert!(
            !value.contains(&t.secret) && !value.contains("ask_live_"),
            "the consumer key leaked upstream in header {name}: {value}"
        );
    }
    assert!(up.header("x-api-key").is_none(), "no x-api-key upstream");
    assert!(
        !String::from_utf8_lossy(&up.body).contains(&t.secret),
        "the consumer key leaked into the upstream body"
    );
    let up_body = up.json();
    assert_eq!(
        up_body["model"], "mock-default",
        "default model filled in: {up_body}"
    );
    assert_eq!(
        up_body["messages"], body["messages"],
        "messages forwarded unchanged"
    );
    assert_eq!(up_body["temperature"], 0.5, "other parameters forwarded");
    assert_eq!(reply.json()["model"], "mock-default");

    // A model named by the client is kept.
    let named = c
        .send_chat(
            &t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(Some("client-model"), "hi", false),
        )
        .await?;
    assert_eq!(named.status, 200, "{}", named.describe());
    let sent = c.upstream_requests(slug);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].json()["model"], "client-model");
    Ok(())
}

async fn both_key_headers_are_accepted(c: Arc<Ctx>) -> CaseResult {
    let slug = "key-headers";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    for how in [KeyHeader::Bearer, KeyHeader::XApiKey] {
        let r = c
            .send_chat(&t, Some((&t.secret, how)), &chat_body(None, "hi", false))
            .await?;
        assert_eq!(r.status, 200, "{how:?}: {}", r.describe());
        assert_eq!(r.json()["object"], "chat.completion", "{how:?}");
    }
    let sent = c.upstream_requests(slug);
    assert_eq!(sent.len(), 2, "both calls reached the upstream");
    for up in &sent {
        assert!(
            up.headers.iter().all(|(_, v)| !v.contains(&t.secret)),
            "consumer key forwarded upstream: {:?}",
            up.headers
        );
    }
    Ok(())
}

async fn bad_or_missing_credentials_are_401(c: Arc<Ctx>) -> CaseResult {
    let slug = "bad-creds";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let body = chat_body(None, "hi", false);

    let missing = Reply::read(c.chat(&t, None).json(&body).send().await?).await?;
    assert_problem(&missing, 401, "missing-credential");
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer"),
        "{:?}",
        missing.headers
    );

    for how in [KeyHeader::Bearer, KeyHeader::XApiKey] {
        let malformed = c.send_chat(&t, Some(("ask_live_nope", how)), &body).await?;
        assert_problem(&malformed, 401, "invalid-credential");
        assert!(
            malformed
                .header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{:?}",
            malformed.headers
        );
    }
    // Another scheme is not a credential.
    let basic = Reply::read(
        c.chat(&t, None)
            .header("authorization", "Basic Zm9vOmJhcg==")
            .json(&body)
            .send()
            .await?,
    )
    .await?;
    assert_problem(&basic, 401, "invalid-credential");

    // Well-formed, correct checksum, but unknown: a key that existed and was revoked.
    let other = c
        .admin
        .create_key(slug, &t.consumer_id, "to revoke")
        .await?;
    let other_secret = other.secret;
    c.admin.revoke_key(slug, &other.id).await?;
    let unknown = c
        .send_chat(&t, Some((&other_secret, KeyHeader::Bearer)), &body)
        .await?;
    assert_problem(&unknown, 401, "invalid-credential");

    // A valid key of another project is unknown here too.
    let stranger = c.tenant_on_mock("bad-creds-other", "ok", json!({})).await?;
    let foreign = c
        .send_chat(&t, Some((&stranger.secret, KeyHeader::Bearer)), &body)
        .await?;
    assert_problem(&foreign, 401, "invalid-credential");

    assert!(
        c.upstream_requests(slug).is_empty(),
        "rejected requests must never reach the upstream"
    );
    Ok(())
}

async fn revoked_key_fails_on_the_next_request(c: Arc<Ctx>) -> CaseResult {
    let slug = "revoke-now";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let before = c.chat_ok(&t).await?;
    assert_eq!(before.status, 200, "{}", before.describe());
    c.admin.revoke_key(slug, &t.key_id).await?;
    let after = c.chat_ok(&t).await?;
    assert_problem(&after, 401, "invalid-credential");
    // Revoking again: the key is gone.
    let again = c
        .admin
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/projects/{slug}/keys/{}", t.key_id),
            None,
        )
        .await?;
    assert!(
        again.status == 404 || again.status == 204,
        "revoking twice: {}",
        again.describe()
    );
    assert_eq!(
        c.upstream_requests(slug).len(),
        1,
        "only the first call went upstream"
    );
    Ok(())
}

/// A stream (6 s long) and a request waiting on a slow upstream end at their next lease renewal
/// (every second under the e2e gateway's 3 s leases) once the consumer is disabled or the key
/// revoked, with that refusal; their records say `revoked`.
async fn requests_in_flight_end_when_their_consumer_is_disabled_or_key_revoked(
    c: Arc<Ctx>,
) -> CaseResult {
    let streamed = c
        .tenant_on_mock("inflight-disable", "ok/chunks/60/delay/100", json!({}))
        .await?;
    let req = c
        .chat(&streamed, Some((&streamed.secret, KeyHeader::Bearer)))
        .json(&chat_body(None, "hi", true));
    let stream = tokio::spawn(send_and_stream(req, STREAM_LIMIT));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let disabled_at = Instant::now();
    c.admin
        .set_consumer_status("inflight-disable", &streamed.consumer_id, "disabled")
        .await?;
    let s = stream.await??;
    let summary = stream_summary(&s);
    assert_eq!(s.status, 200, "{summary}");
    assert!(
        disabled_at.elapsed() < Duration::from_millis(3500),
        "the stream ended {:?} after the disable: {summary}",
        disabled_at.elapsed()
    );
    assert!(
        !s.text().is_empty(),
        "what came before was delivered: {summary}"
    );
    let n = s.events.len();
    assert!(n >= 2 && s.events[n - 2].is_error(), "{summary}");
    let problem = s.events[n - 2]
        .json()
        .ok_or("the error event is not JSON")?;
    assert_eq!(problem["type"], "consumer-disabled", "{summary}");
    assert!(s.events[n - 1].is_done(), "{summary}");

    let waiting = c
        .tenant_on_mock("inflight-revoke", "hang/5000", json!({}))
        .await?;
    let req = c
        .chat(&waiting, Some((&waiting.secret, KeyHeader::Bearer)))
        .json(&chat_body(None, "hi", false));
    let answer = tokio::spawn(async move { Reply::read(req.send().await?).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let revoked_at = Instant::now();
    c.admin
        .revoke_key(&waiting.project, &waiting.key_id)
        .await?;
    let r = answer.await??;
    assert_problem(&r, 401, "invalid-credential");
    assert!(
        revoked_at.elapsed() < Duration::from_millis(3500),
        "answered {:?} after the revocation",
        revoked_at.elapsed()
    );

    for (t, status) in [(&streamed, 403), (&waiting, 401)] {
        let usage = c
            .admin_get_until(&format!("/api/v1/gateway/apis/{}/usage", t.api_id), |v| {
                v["records"].as_array().is_some_and(|r| !r.is_empty())
            })
            .await?;
        let rec = &usage["records"][0];
        assert_eq!(
            (rec["ended"].clone(), rec["status"].clone()),
            (json!("revoked"), json!(status)),
            "{rec}"
        );
    }
    Ok(())
}

async fn disabled_consumer_is_403_until_enabled(c: Arc<Ctx>) -> CaseResult {
    let slug = "consumer-toggle";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    assert_eq!(c.chat_ok(&t).await?.status, 200);
    let patched = c
        .admin
        .set_consumer_status(slug, &t.consumer_id, "disabled")
        .await?;
    assert_eq!(patched["status"], "disabled", "{patched}");
    let denied = c.chat_ok(&t).await?;
    assert_problem(&denied, 403, "consumer-disabled");
    let patched = c
        .admin
        .set_consumer_status(slug, &t.consumer_id, "enabled")
        .await?;
    assert_eq!(patched["status"], "enabled", "{patched}");
    let again = c.chat_ok(&t).await?;
    assert_eq!(again.status, 200, "re-enabled: {}", again.describe());
    assert_eq!(
        c.upstream_requests(slug).len(),
        2,
        "the denied call never went upstream"
    );
    Ok(())
}

async fn unknown_project_and_api_are_404(c: Arc<Ctx>) -> CaseResult {
    let slug = "unknown-names";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let body = chat_body(None, "hi", false);
    for (project, api) in [("no-such-project", "chat"), (slug, "no-such-api")] {
        let url = format!("{}/v1/{project}/{api}/chat/completions", c.base);
        let r = Reply::read(
            c.http
                .post(&url)
                .bearer_auth(&t.secret)
                .json(&body)
                .send()
                .await?,
        )
        .await?;
        assert_problem(&r, 404, "not-found");
        let models = Reply::read(
            c.http
                .get(format!("{}/v1/{project}/{api}/models", c.base))
                .bearer_auth(&t.secret)
                .send()
                .await?,
        )
        .await?;
        assert_problem(&models, 404, "not-found");
    }
    // An unknown route is a problem too.
    let nowhere = Reply::read(c.http.get(format!("{}/nowhere", c.base)).send().await?).await?;
    assert_problem(&nowhere, 404, "not-found");
    Ok(())
}

async fn malformed_and_oversized_bodies_are_rejected(c: Arc<Ctx>) -> CaseResult {
    let slug = "bad-bodies";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let key = Some((t.secret.as_str(), KeyHeader::Bearer));

    let malformed = Reply::read(c.chat(&t, key).body("{\"messages\": [").send().await?).await?;
    assert_problem(&malformed, 400, "invalid-json");

    let not_chat = Reply::read(
        c.chat(&t, key)
            .json(&json!({"messages": []}))
            .send()
            .await?,
    )
    .await?;
    assert_problem(&not_chat, 400, "invalid-request");

    // Just over 2 MiB, as valid JSON, with a Content-Length.
    let big_text = "x".repeat(2 * 1024 * 1024 + 16);
    let big = serde_json::to_vec(&chat_body(None, &big_text, false))?;
    let too_large = Reply::read(c.chat(&t, key).body(big.clone()).send().await?).await?;
    assert_problem(&too_large, 413, "payload-too-large");

    // Just under the limit is still accepted.
    let fits_text = "y".repeat(2 * 1024 * 1024 - 200);
    let fits = Reply::read(
        c.chat(&t, key)
            .json(&chat_body(None, &fits_text, false))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(fits.status, 200, "a body under 2 MiB: {}", fits.describe());
    assert_eq!(
        c.upstream_requests(slug).len(),
        1,
        "only the valid body went upstream"
    );
    Ok(())
}

/// A body over the limit sent without a Content-Length (chunked) is refused while it streams in.
///
/// Runs on a gateway of its own: under `wrangler dev`, a worker that answers after reading part of a
/// chunked request body leaves the local proxy in a bad state, so the next POST to that wrangler
/// fails with its own 503 ("Your worker restarted mid-request") or stalls. That is wrangler's, not
/// the gateway's (a bare JavaScript worker does the same), and must not leak into other cases.
///
/// That gateway is not in dev mode, so it first shows `Server-Timing` off until an API asks for it.
async fn chunked_oversized_body_is_413(c: Arc<Ctx>) -> CaseResult {
    let gateway = Gateway::start().await?;
    let admin = gateway.admin();
    let slug = "chunked-big";
    let t = admin
        .tenant(
            slug,
            "chat",
            json!({"base_url": c.mock.base_url(&format!("ok/tag/{slug}")), "default_model": "m"}),
        )
        .await?;
    let http = http_client();
    let ask = || {
        chat_request(
            &http,
            &gateway.base_url,
            slug,
            "chat",
            Some((&t.secret, KeyHeader::Bearer)),
        )
        .json(&chat_body(Some("m"), "hi", false))
    };
    let plain = ask().send().await?;
    assert_eq!(plain.status(), 200);
    assert!(
        plain.headers().get("server-timing").is_none(),
        "off outside dev mode"
    );
    admin
        .patch_api(&t.api_id, json!({"server_timing": true}))
        .await?;
    let timed = ask().send().await?;
    let value = timed
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        value.contains("admit;dur=") && value.contains("do;dur="),
        "on when asked: {value:?}"
    );
    let big = serde_json::to_vec(&chat_body(Some("m"), &"x".repeat(3 * 1024 * 1024), false))?;
    let (status, head, body) = raw_chunked_post(
        &gateway.base_url,
        &format!("/v1/{slug}/chat/chat/completions"),
        &t.secret,
        &big,
    )
    .await?;
    assert_eq!(status, 413, "chunked oversized body: {head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{head}"
    );
    let problem: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!(problem["type"], "payload-too-large", "{body}");
    assert_eq!(
        c.upstream_requests(slug).len(),
        2,
        "only the two small requests went upstream"
    );
    drop(gateway);
    Ok(())
}

/// POSTs `body` with `Transfer-Encoding: chunked` over a raw socket; returns status, head and body.
async fn raw_chunked_post(
    base: &str,
    path: &str,
    key: &str,
    body: &[u8],
) -> Result<(u16, String, String)> {
    let hostport = base.trim_start_matches("http://").to_string();
    let sock = tokio::net::TcpStream::connect(&hostport).await?;
    sock.set_nodelay(true)?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {hostport}\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    let (mut rd, mut wr) = sock.into_split();
    let body = body.to_vec();
    // Written in the background: the gateway may answer (and stop reading) before the body ends.
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        for piece in body.chunks(64 * 1024) {
            wr.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                .await?;
            wr.write_all(piece).await?;
            wr.write_all(b"\r\n").await?;
        }
        wr.write_all(b"0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(wr)
    });
    let read = async {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 8192];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let len: usize = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .ok_or_else(|| format!("no content-length in {head}"))?;
                if buf.len() >= end + 4 + len {
                    let status = head
                        .split(' ')
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| format!("no status in {head}"))?;
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    return Ok::<_, BoxError>((status, head, body));
                }
            }
            let n = rd.read(&mut tmp).await?;
            if n == 0 {
                return Err(format!(
                    "connection closed mid-answer: {}",
                    String::from_utf8_lossy(&buf)
                )
                .into());
            }
            buf.extend_from_slice(&tmp[..n]);
        }
    };
    let answer = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .map_err(|_| "no answer to the chunked request in 20 s")?;
    writer.abort();
    answer
}

async fn upstream_500_becomes_502(c: Arc<Ctx>) -> CaseResult {
    let slug = "upstream-500";
    let t = c.tenant_on_mock(slug, "status/500", json!({})).await?;
    let r = c.chat_ok(&t).await?;
    assert_problem(&r, 502, "upstream-error");
    assert_eq!(r.json()["upstream_status"], 500, "{}", r.describe());
    assert!(
        !r.text.contains("mock upstream failure"),
        "the upstream's text stays with the owner: {}",
        r.describe()
    );
    // A streamed request fails the same way, before any event.
    let s = c.chat_hi(&t, true).await?;
    assert_eq!(s.status, 502, "{}", stream_summary(&s));
    // Each request was tried once more (`retries` defaults to 1) before the 502.
    assert_eq!(c.upstream_requests(slug).len(), 4);
    Ok(())
}

/// An upstream 401 names the provider key's tail and the provider org: the end user gets the status
/// and a generic detail, streamed or not; the owner's usage record keeps what the upstream said.
async fn upstream_401_body_stays_with_the_owner(c: Arc<Ctx>) -> CaseResult {
    let slug = "upstream-401";
    let t = c.tenant_on_mock(slug, "status/401", json!({})).await?;
    let r = c.chat_ok(&t).await?;
    assert_problem(&r, 502, "upstream-error");
    let s = c.chat_hi(&t, true).await?;
    assert_eq!(s.status, 502, "{}", stream_summary(&s));
    let streamed: String = s
        .chunks
        .iter()
        .map(|c| String::from_utf8_lossy(&c.bytes).into_owned())
        .collect();
    for leak in [
        "wxyz",
        "org-4242",
        "internal.mock",
        "invalid_api_key",
        "Incorrect",
    ] {
        assert!(
            !r.text.contains(leak),
            "{leak} reached the end user: {}",
            r.describe()
        );
        assert!(
            !streamed.contains(leak),
            "{leak} reached the end user: {streamed}"
        );
    }
    let usage =
        crate::quotas::usage_until(&c, &t, "", |v| crate::quotas::records(v).len() >= 2).await?;
    for record in crate::quotas::records(&usage) {
        let said = record["upstream_error"].as_str().unwrap_or("");
        assert!(
            said.contains("sk-mock-****wxyz"),
            "the owner sees it: {record}"
        );
        assert_eq!(record["status"], 502, "{record}");
    }
    Ok(())
}

/// An upstream's own error event mid-stream (with internal hosts and its org) reaches the client as
/// the gateway's error event with a generic detail; the owner's record keeps the upstream's words.
async fn upstream_error_event_mid_stream_stays_with_the_owner(c: Arc<Ctx>) -> CaseResult {
    let slug = "upstream-errevent";
    let t = c
        .tenant_on_mock(slug, "errevent/chunks/3", json!({}))
        .await?;
    let s = c.chat_hi(&t, true).await?;
    assert_eq!(s.status, 200, "{}", stream_summary(&s));
    let streamed: String = s
        .chunks
        .iter()
        .map(|c| String::from_utf8_lossy(&c.bytes).into_owned())
        .collect();
    for leak in ["10.1.2.3", "org-777", "pool-7"] {
        assert!(
            !streamed.contains(leak),
            "{leak} reached the end user: {streamed}"
        );
    }
    let last = s
        .events
        .iter()
        .rev()
        .find(|e| e.data != "[DONE]")
        .ok_or("no events")?;
    assert!(
        last.data.contains("upstream-stream-interrupted") && last.data.contains("server_error"),
        "{}",
        last.data
    );
    let usage =
        crate::quotas::usage_until(&c, &t, "", |v| !crate::quotas::records(v).is_empty()).await?;
    let record = &crate::quotas::records(&usage)[0];
    assert!(
        record["upstream_error"]
            .as_str()
            .unwrap_or("")
            .contains("org-777"),
        "{record}"
    );
    Ok(())
}

async fn upstream_429_keeps_429_and_retry_after(c: Arc<Ctx>) -> CaseResult {
    let slug = "upstream-429";
    let t = c.tenant_on_mock(slug, "status/429", json!({})).await?;
    let r = c.chat_ok(&t).await?;
    assert_problem(&r, 429, "upstream-rate-limited");
    assert_eq!(r.header("retry-after"), Some("7"), "{:?}", r.headers);
    Ok(())
}

async fn upstream_redirects_are_answers_not_followed(c: Arc<Ctx>) -> CaseResult {
    let slug = "upstream-redirect";
    let t = c.tenant_on_mock(slug, "status/307", json!({})).await?;
    for (code, sent) in [(307, 1), (301, 2), (308, 3)] {
        if code != 307 {
            let base = c.mock.base_url(&format!("status/{code}/tag/{slug}"));
            c.admin
                .patch_api(&t.api_id, json!({"upstream": {"base_url": base, "api_key": format!("sk-upstream-{slug}")}}))
                .await?;
        }
        let r = c.chat_ok(&t).await?;
        assert_problem(&r, 502, "upstream-error");
        assert_eq!(r.json()["upstream_status"], code, "{}", r.describe());
        // The redirect points back at the same path: following it would have asked again, with
        // the provider key and the prompt.
        assert_eq!(c.upstream_requests(slug).len(), sent, "{code} was followed");
    }
    Ok(())
}

/// The first usage record of `t`'s API, once flushed.
async fn first_record(c: &Ctx, t: &Tenant) -> Result<Value> {
    let usage =
        crate::quotas::usage_until(c, t, "", |v| !crate::quotas::records(v).is_empty()).await?;
    Ok(crate::quotas::records(&usage)[0].clone())
}

/// A 200 that is not an answer (HTML, an error body), an event that is not JSON, and usage that is
/// not whole numbers: the client gets the gateway's error, the owner the upstream's words, and the
/// request is booked by its estimate, never as 0 tokens.
async fn upstream_answers_that_are_not_answers_end_cleanly(c: Arc<Ctx>) -> CaseResult {
    for (n, (scenario, leak)) in [
        ("ok/body/html", "Bad Gateway"),
        ("ok/body/error", "org-4242"),
    ]
    .into_iter()
    .enumerate()
    {
        let slug = format!("upstream-not-answer-{n}");
        let t = c.tenant_on_mock(&slug, scenario, json!({})).await?;
        let r = c.chat_ok(&t).await?;
        assert_problem(&r, 502, "upstream-error");
        assert!(!r.text.contains(leak), "{}", r.text);
        assert_eq!(c.upstream_requests(&slug).len(), 1, "not tried again");
        let record = first_record(&c, &t).await?;
        assert!(
            record["upstream_error"]
                .as_str()
                .unwrap_or("")
                .contains(leak),
            "{record}"
        );
        // Asked to stream, the same body is no event stream: the same 502.
        let s = c.chat_hi(&t, true).await?;
        assert_eq!(s.status, 502, "{}", stream_summary(&s));
        assert!(!String::from_utf8_lossy(&s.body()).contains(leak));
    }

    let t = c
        .tenant_on_mock("upstream-junk-event", "ok/junk/1/chunks/3", json!({}))
        .await?;
    let s = c.chat_hi(&t, true).await?;
    let summary = stream_summary(&s);
    assert_eq!(s.text(), mock_chunk_text(0), "{summary}");
    let data: Vec<&str> = s.events.iter().map(|e| e.data.as_str()).collect();
    assert!(!data.iter().any(|d| d.contains("<html>")), "{summary}");
    assert!(
        data.iter()
            .rev()
            .nth(1)
            .is_some_and(|d| d.contains("upstream-stream-interrupted")),
        "{summary}"
    );
    assert!(s.events.last().is_some_and(SseEvent::is_done), "{summary}");
    let record = first_record(&c, &t).await?;
    assert_eq!(record["estimated"], true, "{record}");
    assert!(
        record["upstream_error"]
            .as_str()
            .unwrap_or("")
            .contains("<html>"),
        "{record}"
    );

    for (n, stream) in [false, true].into_iter().enumerate() {
        let t = c
            .tenant_on_mock(
                &format!("upstream-bad-usage-{n}"),
                "ok/badusage/1/chunks/3",
                json!({}),
            )
            .await?;
        let s = c.chat_hi(&t, stream).await?;
        assert_eq!(s.status, 200, "{}", stream_summary(&s));
        let record = first_record(&c, &t).await?;
        assert_eq!(record["estimated"], true, "stream {stream}: {record}");
        assert!(
            record["completion_tokens"].as_u64().is_some_and(|n| n > 0),
            "stream {stream}: {record}"
        );
    }
    Ok(())
}

/// An upstream that goes quiet after its head: a whole answer's body gets the API's timeout again
/// (504), a stream's silence ends it with the error event after the same time.
async fn upstream_silence_after_the_head_is_a_timeout(c: Arc<Ctx>) -> CaseResult {
    let api = json!({"timeout_ms": 500, "retries": 0});
    let t = c
        .tenant_on_mock("upstream-mute-body", "ok/stall/4000", api.clone())
        .await?;
    let t0 = Instant::now();
    let r = c.chat_ok(&t).await?;
    assert_problem(&r, 504, "upstream-timeout");
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );

    let t = c
        .tenant_on_mock("upstream-mute-stream", "ok/stall/6000/chunks/3", api)
        .await?;
    let t0 = Instant::now();
    let s = c.chat_hi(&t, true).await?;
    let summary = stream_summary(&s);
    assert!(
        t0.elapsed() < Duration::from_millis(4000),
        "{:?}: {summary}",
        t0.elapsed()
    );
    assert_eq!(s.text(), mock_chunk_text(0), "{summary}");
    assert!(
        s.events
            .iter()
            .any(|e| e.data.contains("upstream-stream-interrupted")),
        "{summary}"
    );
    let record = first_record(&c, &t).await?;
    assert_eq!(
        (record["status"].clone(), record["ended"].clone()),
        (json!(504), json!("upstream_timeout")),
        "{record}"
    );
    Ok(())
}

async fn upstream_hang_becomes_504(c: Arc<Ctx>) -> CaseResult {
    let slug = "upstream-hang";
    let t = c
        .tenant_on_mock(slug, "hang/4000", json!({"timeout_ms": 400}))
        .await?;
    let t0 = Instant::now();
    let r = c.chat_ok(&t).await?;
    let took = t0.elapsed();
    assert_problem(&r, 504, "upstream-timeout");
    assert!(
        took >= Duration::from_millis(750) && took < Duration::from_millis(3000),
        "the gateway should give up after two tries of ~400 ms, took {took:?}"
    );
    assert_eq!(
        c.upstream_requests(slug).len(),
        2,
        "the upstream was called, then once more (a timeout is retried)"
    );

    // Raising the timeout above the hang lets the same upstream answer.
    c.admin
        .patch_api(&t.api_id, json!({"upstream": {"timeout_ms": 2000, "base_url": c.mock.base_url(&format!("hang/300/tag/{slug}"))}}))
        .await?;
    let ok = c.chat_ok(&t).await?;
    assert_eq!(
        ok.status,
        200,
        "after raising the timeout: {}",
        ok.describe()
    );
    Ok(())
}

async fn upstream_cut_mid_stream_ends_with_error_event(c: Arc<Ctx>) -> CaseResult {
    let slug = "upstream-cut";
    let t = c
        .tenant_on_mock(slug, "cut/chunks/2/delay/100", json!({}))
        .await?;
    let s = c.chat_hi(&t, true).await?;
    let summary = stream_summary(&s);
    assert_eq!(s.status, 200, "{summary}");
    assert_eq!(
        s.error, None,
        "the client's response must end cleanly: {summary}"
    );
    assert_eq!(s.leftover, "", "no half event: {summary}");
    assert_eq!(
        s.text(),
        mock_text(2),
        "the chunks sent before the cut: {summary}"
    );
    assert_eq!(
        s.events.len(),
        4,
        "two chunks, an error event, [DONE]: {summary}"
    );
    let err = &s.events[2];
    assert!(err.is_error(), "an error event the SDKs raise: {summary}");
    let problem = err.json().ok_or("the error event's data is not JSON")?;
    assert_eq!(problem["type"], "upstream-stream-interrupted", "{summary}");
    assert_eq!(problem["status"], 502, "{summary}");
    assert!(s.events[3].is_done(), "[DONE] last: {summary}");
    assert!(
        !String::from_utf8_lossy(&s.body()).contains("tok2"),
        "the half event must not reach the client: {summary}"
    );
    Ok(())
}

async fn models_are_listed_in_openai_shape(c: Arc<Ctx>) -> CaseResult {
    let slug = "models-list";
    let t = c
        .tenant_on_mock(
            slug,
            "ok",
            json!({"default_model": "m-default", "models": ["m-a", "m-b"]}),
        )
        .await?;
    let url = format!("{}/v1/{slug}/chat/models", c.base);
    let r = Reply::read(c.http.get(&url).bearer_auth(&t.secret).send().await?).await?;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(
        r.content_type().starts_with("application/json"),
        "{}",
        r.describe()
    );
    let v = r.json();
    assert_eq!(v["object"], "list", "{v}");
    let data = v["data"].as_array().ok_or("no data array")?;
    let ids: Vec<&str> = data.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, vec!["m-default", "m-a", "m-b"], "{v}");
    for m in data {
        assert_eq!(m["object"], "model", "{m}");
        assert!(m["created"].is_u64(), "{m}");
        assert!(m["owned_by"].is_string(), "{m}");
    }
    let anonymous = Reply::read(c.http.get(&url).send().await?).await?;
    assert_problem(&anonymous, 401, "missing-credential");
    assert!(
        c.upstream_requests(slug).is_empty(),
        "models are answered by the gateway"
    );
    Ok(())
}

async fn demo_upstream_streams_with_usage_and_done(c: Arc<Ctx>) -> CaseResult {
    let slug = "demo-stream";
    let t = c
        .admin
        .tenant(
            slug,
            "chat",
            json!({"base_url": "demo", "default_model": "demo-1"}),
        )
        .await?;
    let mut body = chat_body(None, "ping from e2e", true);
    body["stream_options"] = json!({"include_usage": true});
    let s = send_and_stream(
        c.chat(&t, Some((&t.secret, KeyHeader::XApiKey)))
            .json(&body),
        STREAM_LIMIT,
    )
    .await?;
    let summary = stream_summary(&s);
    assert_eq!(s.status, 200, "{summary}");
    assert!(
        s.header("content-type")
            .unwrap_or("")
            .starts_with("text/event-stream"),
        "{summary}"
    );
    assert_eq!(s.error, None, "{summary}");
    let content = s.content_events();
    assert!(content.len() >= 5, "several content chunks: {summary}");
    assert!(
        s.text().contains("ping from e2e"),
        "the demo echoes the prompt: {summary}"
    );
    let spread = content[content.len() - 1].at - content[0].at;
    assert!(
        spread >= Duration::from_millis(100),
        "the demo streams token by token, not at once (spread {spread:?})"
    );
    assert!(
        s.events.last().is_some_and(SseEvent::is_done),
        "[DONE] last: {summary}"
    );
    let usage = s
        .events
        .iter()
        .filter_map(SseEvent::json)
        .find(|v| v["choices"] == json!([]) && v["usage"].is_object())
        .ok_or_else(|| format!("no usage chunk: {summary}"))?;
    let u = &usage["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(
            u["prompt_tokens"].as_u64().unwrap_or(0) + u["completion_tokens"].as_u64().unwrap_or(0)
        ),
        "{usage}"
    );
    assert_eq!(usage["model"], "demo-1");

    // Non-streamed, the demo answers one completion with the same text.
    let r = c.chat_ok(&t).await?;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["object"], "chat.completion", "{}", r.describe());
    Ok(())
}
