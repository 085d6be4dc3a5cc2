//! Pure upstream logic: the upstream URL, and turning upstream failures into the gateway's errors.
//! The chat body's checks live in `chat`, the API's upstream rules in `policy`.

pub mod asked;
pub mod chat;
pub mod demo;
pub mod embeddings;
pub mod policy;
pub mod responses;

use serde_json::Value;

use crate::error::{Error, Problem};

/// `{base_url}/chat/completions`, whatever the trailing slashes.
pub fn chat_url(base_url: &str) -> String {
    endpoint_url(base_url, "chat/completions")
}

/// `{base_url}/{path}` (`responses`, `embeddings`, …), whatever the trailing slashes.
pub fn endpoint_url(base_url: &str, path: &str) -> String {
    format!("{}/{path}", base_url.trim_end_matches('/'))
}

/// The human part of an upstream error body: OpenAI's `error.message`, else the start of the text.
/// It is for the owner (the usage record), never for the end user: it can name the provider key's
/// tail, the provider's org id or internal URLs.
pub fn upstream_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let msg = v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"));
        if let Some(Value::String(m)) = msg {
            return m.chars().take(UPSTREAM_TEXT_CHARS).collect();
        }
    }
    String::from_utf8_lossy(body)
        .chars()
        .take(UPSTREAM_TEXT_CHARS)
        .collect()
}

/// The most a retry waits; a longer `Retry-After` moves on to the next fallback instead.
pub const RETRY_WAIT_MAX_MS: u64 = 2_000;
const RETRY_BASE_MS: u64 = 250;

/// How long to wait before trying again after try `n` (0-based): exponential backoff with jitter
/// (half the ceiling, plus `jitter`/65535 of the other half), or the upstream's `Retry-After`
/// (seconds) when it asks for longer; `None` when it asks for more than the gateway waits.
pub fn retry_wait_ms(n: u32, retry_after: Option<&str>, jitter: u16) -> Option<u64> {
    let ceiling = RETRY_BASE_MS
        .saturating_mul(1 << n.min(5))
        .min(RETRY_WAIT_MAX_MS);
    let backoff = ceiling / 2 + (ceiling / 2) * u64::from(jitter) / u64::from(u16::MAX);
    match retry_after.and_then(|v| v.trim().parse::<f64>().ok()) {
        Some(s) if !s.is_finite() || s * 1000.0 > RETRY_WAIT_MAX_MS as f64 => None,
        Some(s) if s > 0.0 => Some(backoff.max((s * 1000.0) as u64)),
        _ => Some(backoff),
    }
}

/// How much of an upstream's error text the usage record keeps.
pub const UPSTREAM_TEXT_CHARS: usize = 1000;

/// Upstream error `type`s and `code`s that say what went wrong with the request and nothing about
/// the owner's provider account (no key, quota, billing or organisation codes).
const SAFE_UPSTREAM_KINDS: &[&str] = &[
    "invalid_request_error",
    "rate_limit_error",
    "server_error",
    "api_error",
    "overloaded_error",
    "not_found_error",
    "request_too_large",
    "context_length_exceeded",
    "rate_limit_exceeded",
    "content_policy_violation",
    "content_filter",
    "invalid_prompt",
    "string_above_max_length",
    "model_not_found",
    "unsupported_parameter",
    "unsupported_value",
    "invalid_value",
    "invalid_type",
    "missing_required_parameter",
];

/// The upstream's error `type` and `code`, each kept only when it is one of the safe set.
struct SafeKinds {
    kind: Option<String>,
    code: Option<String>,
}

impl SafeKinds {
    fn of(body: &[u8]) -> SafeKinds {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return SafeKinds {
                kind: None,
                code: None,
            };
        };
        let pick = |pointer: &str| {
            v.pointer(pointer)
                .and_then(Value::as_str)
                .filter(|k| SAFE_UPSTREAM_KINDS.contains(k))
                .map(str::to_string)
        };
        SafeKinds {
            kind: pick("/error/type"),
            code: pick("/error/code"),
        }
    }

    /// ` (code)` (or ` (type)`) for a detail, or nothing.
    fn said(&self) -> String {
        match (&self.kind, &self.code) {
            (_, Some(c)) => format!(" ({c})"),
            (Some(k), None) => format!(" ({k})"),
            _ => String::new(),
        }
    }

    /// The error with `upstream_type` and `upstream_code` where there are safe ones.
    fn on(self, mut e: Error) -> Error {
        if let Some(k) = self.kind {
            e = e.with_field("upstream_type", k);
        }
        if let Some(c) = self.code {
            e = e.with_field("upstream_code", c);
        }
        e
    }
}

/// An error event inside an upstream stream (chat's `{"error": {...}}`, or a Responses `error`
/// event): what the end user gets (a generic detail, the safe `type`/`code`), and the upstream's
/// text for the usage record.
pub fn stream_failure(event: &Value) -> (Error, String) {
    let inner = event
        .get("error")
        .filter(|e| e.is_object())
        .unwrap_or(event);
    let wrapped = serde_json::json!({ "error": inner }).to_string();
    let text = upstream_message(wrapped.as_bytes());
    let safe = SafeKinds::of(wrapped.as_bytes());
    let e = Error::new(
        Problem::UpstreamStreamInterrupted,
        format!(
            "The upstream model API reported an error mid-stream{}; the text so far was delivered.",
            safe.said()
        ),
    );
    (safe.on(e), text)
}

/// Maps a non-2xx upstream answer to what the end user gets, and the upstream's own text, which
/// goes to the usage record only. Client-side mistakes the upstream caught (400, 404, 413, 422) keep
/// their status; the provider's rate limit stays 429; anything else (bad provider key, 5xx) is a
/// 502. The end user sees the status, a generic detail and the upstream's error `type`/`code` when
/// they are in the safe set. The upstream's `Retry-After` is passed on for 429 and 5xx when it is a
/// number of seconds.
pub fn upstream_failure(status: u16, body: &[u8], retry_after: Option<String>) -> (Error, String) {
    let text = upstream_message(body);
    let safe = SafeKinds::of(body);
    let said = safe.said();
    let retry_after = retry_after
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty() && r.len() <= 6 && r.bytes().all(|b| b.is_ascii_digit()));
    let mut e = match status {
        400 | 404 | 413 | 422 => Error::new(
            Problem::UpstreamRejected,
            format!("The upstream model API rejected the request with {status}{said}."),
        )
        .with_status(status),
        429 => Error::new(
            Problem::UpstreamRateLimited,
            format!(
                "The upstream model API is rate limiting the gateway (429{said}); try again later."
            ),
        ),
        300..=399 => Error::upstream(format!(
            "The upstream model API answered with a redirect ({status}). The gateway does not follow \
             redirects, so the provider key and the prompt never leave the API's host; its owner \
             should check the base URL."
        ))
        .with_field("upstream_status", status),
        // Anthropic's `overloaded_error`: the provider is there but busy, as 503 says.
        529 => Error::upstream(format!(
            "The upstream model API is overloaded (529{said}); try again later."
        ))
        .with_status(503)
        .with_field("upstream_status", status),
        _ => Error::upstream(format!(
            "The upstream model API failed with {status}{said}."
        ))
        .with_field("upstream_status", status),
    };
    e = safe.on(e);
    let e = match retry_after {
        Some(r) if status == 429 || status >= 500 => e.with_header("Retry-After", r),
        _ => e,
    };
    (e, text)
}

/// A 2xx whole answer, read: a JSON object without an `error` (some OpenAI-compatible servers
/// answer failures with 200). Otherwise what it is instead.
pub fn whole_answer(body: &[u8]) -> Result<Value, &'static str> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) if o.get("error").is_none_or(Value::is_null) => Ok(Value::Object(o)),
        Ok(Value::Object(_)) => {
            Err("The upstream model API answered 200 with an error instead of an answer.")
        }
        _ => Err("The upstream model API answered 200 with a body that is not JSON."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_errors_keep_their_meaning() {
        let body = |kind: &str| {
            serde_json::json!({"type": "error", "error": {"type": kind, "message": "m"}})
                .to_string()
                .into_bytes()
        };
        let (e, said) = upstream_failure(529, &body("overloaded_error"), None);
        assert_eq!((e.status, e.kind()), (503, "upstream-error"));
        assert_eq!(said, "m");
        let (e, _) = upstream_failure(429, &body("rate_limit_error"), Some("3".into()));
        assert_eq!((e.status, e.kind()), (429, "upstream-rate-limited"));
        let (e, _) = upstream_failure(400, &body("invalid_request_error"), None);
        assert_eq!((e.status, e.kind()), (400, "upstream-rejected"));
        // The org's key refused: the gateway's failure, not the client's.
        let (e, _) = upstream_failure(401, &body("authentication_error"), None);
        assert_eq!((e.status, e.kind()), (502, "upstream-error"));
    }

    #[test]
    fn retries_back_off_with_jitter_and_honour_short_retry_afters() {
        assert_eq!(retry_wait_ms(0, None, 0), Some(125));
        assert_eq!(retry_wait_ms(0, None, u16::MAX), Some(250));
        assert_eq!(retry_wait_ms(1, None, u16::MAX), Some(500));
        assert_eq!(retry_wait_ms(9, None, u16::MAX), Some(RETRY_WAIT_MAX_MS));
        assert_eq!(retry_wait_ms(0, Some("1"), 0), Some(1_000));
        assert_eq!(retry_wait_ms(0, Some("0.1"), u16::MAX), Some(250));
        assert_eq!(
            retry_wait_ms(0, Some("7"), 0),
            None,
            "longer than the gateway waits"
        );
        assert_eq!(retry_wait_ms(0, Some("inf"), 0), None);
        assert_eq!(
            retry_wait_ms(0, Some("Wed, 21 Oct 2015 07:28:00 GMT"), 0),
            Some(125)
        );
    }

    #[test]
    fn urls_and_failures() {
        assert_eq!(chat_url("http://h/v1/"), "http://h/v1/chat/completions");
        assert_eq!(
            upstream_message(br#"{"error":{"message":"bad model"}}"#),
            "bad model"
        );
        assert_eq!(upstream_message(b"plain text"), "plain text");
        assert_eq!(upstream_failure(500, b"boom", None).0.status, 502);
        assert_eq!(upstream_failure(401, b"bad key", None).0.status, 502);
        assert_eq!(
            upstream_failure(400, b"bad", None).0.kind(),
            "upstream-rejected"
        );
        let (e, _) = upstream_failure(429, b"slow down", Some("3".into()));
        assert_eq!(e.status, 429);
        assert!(e.headers.contains(&("Retry-After".into(), "3".into())));
        let (e, _) = upstream_failure(503, b"busy", Some(" 7 ".into()));
        assert_eq!(e.status, 502);
        assert!(e.headers.contains(&("Retry-After".into(), "7".into())));
        for odd in [
            "soon",
            "1e9",
            "-1",
            "",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "99999999",
        ] {
            let (e, _) = upstream_failure(429, b"x", Some(odd.into()));
            assert!(e.headers.iter().all(|(k, _)| k != "Retry-After"), "{odd}");
        }
        let (e, _) = upstream_failure(400, b"bad", Some("3".into()));
        assert!(e.headers.iter().all(|(k, _)| k != "Retry-After"));
    }

    #[test]
    fn upstream_text_reaches_the_record_not_the_end_user() {
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-proj-****wxyz. See https://internal.example/keys (org-123)","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        let (e, text) = upstream_failure(401, body, None);
        let shown = serde_json::to_string(&e.to_problem()).unwrap();
        for secret in [
            "wxyz",
            "org-123",
            "internal.example",
            "invalid_api_key",
            "Incorrect",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(text.contains("sk-proj-****wxyz"), "{text}");
        assert_eq!(e.status, 502);
        assert_eq!(
            e.detail,
            "The upstream model API failed with 401 (invalid_request_error)."
        );
        let (e, _) = upstream_failure(
            400,
            br#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
            None,
        );
        assert_eq!(e.status, 400);
        assert!(e.detail.contains("context_length_exceeded"), "{}", e.detail);
        let quota = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        let (e, text) = upstream_failure(429, quota, None);
        assert!(!serde_json::to_string(&e.to_problem())
            .unwrap()
            .contains("quota"));
        assert!(text.contains("exceeded your current quota"));
        let (_, long) = upstream_failure(500, "x".repeat(5000).as_bytes(), None);
        assert_eq!(long.len(), UPSTREAM_TEXT_CHARS);
    }

    #[test]
    fn a_2xx_body_that_is_not_an_answer_is_named() {
        assert!(whole_answer(br#"{"id":"x","choices":[]}"#).is_ok());
        assert!(
            whole_answer(br#"{"id":"resp_1","error":null}"#).is_ok(),
            "a Responses object"
        );
        for bad in [
            &b"<html>502</html>"[..],
            b"",
            b"[1]",
            b"\"x\"",
            br#"{"error":{"message":"org-SECRET"}}"#,
        ] {
            assert!(
                whole_answer(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
