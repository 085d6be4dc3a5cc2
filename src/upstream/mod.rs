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
pub fn upstream_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let msg = v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"));
        if let Some(Value::String(m)) = msg {
            return m.chars().take(300).collect();
        }
    }
    String::from_utf8_lossy(body).chars().take(300).collect()
}

/// Maps a non-2xx upstream answer. Client-side mistakes the upstream caught (400, 404, 413, 422) keep
/// their status; the provider's rate limit stays 429; anything else (bad provider key, 5xx) is a 502.
/// The upstream's `Retry-After` is passed on for 429 and 5xx when it is a number of seconds.
pub fn upstream_failure(status: u16, body: &[u8], retry_after: Option<String>) -> Error {
    let message = upstream_message(body);
    let retry_after = retry_after
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty() && r.len() <= 6 && r.bytes().all(|b| b.is_ascii_digit()));
    let e = match status {
        400 | 404 | 413 | 422 => {
            return Error::new(
                Problem::UpstreamRejected,
                format!("The upstream answered {status}: {message}"),
            )
            .with_status(status)
        }
        429 => Error::new(
            Problem::UpstreamRateLimited,
            format!("The upstream answered 429: {message}"),
        ),
        _ => Error::upstream(format!("The upstream answered {status}: {message}"))
            .with_field("upstream_status", status),
    };
    match retry_after {
        Some(r) if status == 429 || status >= 500 => e.with_header("Retry-After", r),
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_failures() {
        assert_eq!(chat_url("http://h/v1/"), "http://h/v1/chat/completions");
        assert_eq!(
            upstream_message(br#"{"error":{"message":"bad model"}}"#),
            "bad model"
        );
        assert_eq!(upstream_message(b"plain text"), "plain text");
        assert_eq!(upstream_failure(500, b"boom", None).status, 502);
        assert_eq!(upstream_failure(401, b"bad key", None).status, 502);
        assert_eq!(
            upstream_failure(400, b"bad", None).kind(),
            "upstream-rejected"
        );
        let e = upstream_failure(429, b"slow down", Some("3".into()));
        assert_eq!(e.status, 429);
        assert!(e.headers.contains(&("Retry-After".into(), "3".into())));
        let e = upstream_failure(503, b"busy", Some(" 7 ".into()));
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
            let e = upstream_failure(429, b"x", Some(odd.into()));
            assert!(e.headers.iter().all(|(k, _)| k != "Retry-After"), "{odd}");
        }
        let e = upstream_failure(400, b"bad", Some("3".into()));
        assert!(e.headers.iter().all(|(k, _)| k != "Retry-After"));
    }
}
