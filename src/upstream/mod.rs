//! Pure upstream logic: checking and completing the client's Chat Completions body, the upstream URL,
//! and turning upstream failures into the gateway's errors.

pub mod demo;

use serde_json::{Map, Value};

use crate::error::Error;

/// A chat request that passed the gateway's checks, ready to forward.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
}

/// Checks the OpenAI Chat Completions body and fills in the API's default model.
pub fn prepare_chat(body: Value, default_model: Option<&str>) -> Result<ChatRequest, Error> {
    let Value::Object(mut body) = body else {
        return Err(Error::invalid_request(
            "The body must be a JSON object (an OpenAI Chat Completions request).",
        ));
    };
    match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => {
            if m.iter().any(|msg| !msg.is_object()) {
                return Err(Error::invalid_request(
                    "Every entry of `messages` must be an object with `role` and `content`.",
                ));
            }
        }
        _ => {
            return Err(Error::invalid_request(
                "`messages` must be a non-empty array of chat messages.",
            ))
        }
    }
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        None | Some(Value::Null) => match default_model {
            Some(d) => {
                body.insert("model".into(), Value::from(d));
                d.to_string()
            }
            None => {
                return Err(Error::invalid_request(
                    "Name a `model`: this API has no default model.",
                ))
            }
        },
        Some(_) => {
            return Err(Error::invalid_request(
                "`model` must be a non-empty string.",
            ))
        }
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Error::invalid_request("`stream` must be true or false.")),
    };
    Ok(ChatRequest {
        body,
        model,
        stream,
    })
}

/// What metering needs to know about a chat request once the plan has been applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metering {
    /// The prompt's size in tokens, estimated before the upstream counts it.
    pub prompt_estimate: u64,
    /// The completion limit sent upstream (the client's, capped by the plan), if any.
    pub max_tokens: Option<u64>,
    /// The client asked for the usage chunk itself (`stream_options.include_usage`).
    pub client_wants_usage: bool,
}

/// Rough token count: about four characters a token.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// The text of every message, for estimating the prompt's tokens.
pub fn prompt_text(body: &Map<String, Value>) -> String {
    body.get("messages")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter_map(|msg| msg.get("content"))
                .map(|c| match c {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// Applies the plan to the request: caps `max_tokens` (or `max_completion_tokens`) at the plan's
/// `max_tokens_per_request` and forces the cap upstream; asks a streaming upstream for its usage chunk.
pub fn apply_plan(
    chat: &mut ChatRequest,
    max_tokens_per_request: Option<u64>,
) -> Result<Metering, Error> {
    let field = if chat.body.contains_key("max_completion_tokens") {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let requested = match chat.body.get(field) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Some(n),
            _ => {
                return Err(Error::invalid_request(format!(
                    "`{field}` must be a positive whole number."
                )))
            }
        },
    };
    let max_tokens = match (requested, max_tokens_per_request) {
        (Some(r), Some(cap)) => Some(r.min(cap)),
        (r, cap) => r.or(cap),
    };
    if let Some(n) = max_tokens {
        chat.body.insert(field.into(), Value::from(n));
    }
    let mut client_wants_usage = false;
    if chat.stream {
        let options = chat
            .body
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if !options.is_object() {
            return Err(Error::invalid_request(
                "`stream_options` must be an object.",
            ));
        }
        client_wants_usage = options
            .get("include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        options["include_usage"] = Value::Bool(true);
    }
    Ok(Metering {
        prompt_estimate: estimate_tokens(&prompt_text(&chat.body)),
        max_tokens,
        client_wants_usage,
    })
}

/// Estimated completion tokens of a non-streamed answer, for when the upstream reports no usage.
pub fn completion_estimate(answer: &Value) -> u64 {
    let chars: usize = answer
        .get("choices")
        .and_then(Value::as_array)
        .map_or(0, |choices| {
            choices
                .iter()
                .filter_map(|c| c.pointer("/message/content").and_then(Value::as_str))
                .map(|s| s.chars().count())
                .sum()
        });
    (chars as u64).div_ceil(4)
}

/// `{base_url}/chat/completions`, whatever the trailing slashes.
pub fn chat_url(base_url: &str) -> String {
    format!("{}/chat/completions", base_url.trim_end_matches('/'))
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
pub fn upstream_failure(status: u16, body: &[u8], retry_after: Option<String>) -> Error {
    let message = upstream_message(body);
    match status {
        400 | 404 | 413 | 422 => Error::new(
            status,
            "upstream-rejected",
            "The upstream model API rejected the request",
            format!("The upstream answered {status}: {message}"),
        ),
        429 => {
            let e = Error::new(
                429,
                "upstream-rate-limited",
                "The upstream model API is rate limiting",
                format!("The upstream answered 429: {message}"),
            );
            match retry_after {
                Some(r) => e.with_header("Retry-After", r),
                None => e,
            }
        }
        _ => Error::upstream(format!("The upstream answered {status}: {message}"))
            .with_field("upstream_status", status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fills_default_model_and_reads_stream() {
        let r = prepare_chat(
            json!({"messages":[{"role":"user","content":"hi"}],"stream":true}),
            Some("m1"),
        )
        .unwrap();
        assert_eq!(r.model, "m1");
        assert_eq!(r.body["model"], "m1");
        assert!(r.stream);
        let r = prepare_chat(
            json!({"model":"m2","messages":[{"role":"user","content":"hi"}]}),
            Some("m1"),
        )
        .unwrap();
        assert_eq!(r.model, "m2");
        assert!(!r.stream);
    }

    #[test]
    fn rejects_bad_bodies() {
        for body in [
            json!([1]),
            json!({}),
            json!({"messages": []}),
            json!({"messages": "hi"}),
            json!({"messages": [1]}),
            json!({"messages": [{"role":"user","content":"x"}], "model": 5}),
            json!({"messages": [{"role":"user","content":"x"}], "model": "m", "stream": "yes"}),
        ] {
            assert_eq!(
                prepare_chat(body.clone(), Some("d")).unwrap_err().status,
                400,
                "{body}"
            );
        }
        assert_eq!(
            prepare_chat(json!({"messages":[{"role":"user","content":"x"}]}), None)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn plan_caps_max_tokens_and_forces_usage() {
        let mut r = prepare_chat(json!({"messages":[{"role":"user","content":"12345678"}],"stream":true,"max_tokens":500}), Some("m")).unwrap();
        let m = apply_plan(&mut r, Some(100)).unwrap();
        assert_eq!(
            m,
            Metering {
                prompt_estimate: 2,
                max_tokens: Some(100),
                client_wants_usage: false
            }
        );
        assert_eq!(r.body["max_tokens"], 100);
        assert_eq!(r.body["stream_options"]["include_usage"], true);

        let mut r = prepare_chat(json!({"messages":[{"role":"user","content":"x"}],"stream":true,"max_completion_tokens":50,"stream_options":{"include_usage":true}}), Some("m")).unwrap();
        let m = apply_plan(&mut r, Some(100)).unwrap();
        assert_eq!((m.max_tokens, m.client_wants_usage), (Some(50), true));
        assert!(r.body.get("max_tokens").is_none());

        let mut r = prepare_chat(
            json!({"messages":[{"role":"user","content":"x"}]}),
            Some("m"),
        )
        .unwrap();
        let m = apply_plan(&mut r, Some(64)).unwrap();
        assert_eq!(r.body["max_tokens"], 64);
        assert_eq!(m.max_tokens, Some(64));
        assert!(
            r.body.get("stream_options").is_none(),
            "non-streamed requests get usage in the body"
        );

        let mut r = prepare_chat(
            json!({"messages":[{"role":"user","content":"x"}],"max_tokens":0}),
            Some("m"),
        )
        .unwrap();
        assert_eq!(apply_plan(&mut r, None).unwrap_err().status, 400);
        let mut r = prepare_chat(
            json!({"messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":5}),
            Some("m"),
        )
        .unwrap();
        assert_eq!(apply_plan(&mut r, None).unwrap_err().status, 400);
    }

    #[test]
    fn estimates_a_completion_without_usage() {
        assert_eq!(
            completion_estimate(&json!({"choices":[{"message":{"content":"12345"}}]})),
            2
        );
        assert_eq!(completion_estimate(&json!({})), 0);
    }

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
            upstream_failure(400, b"bad", None).kind,
            "upstream-rejected"
        );
        let e = upstream_failure(429, b"slow down", Some("3".into()));
        assert_eq!(e.status, 429);
        assert!(e.headers.contains(&("Retry-After".into(), "3".into())));
    }
}
