//! The built-in `demo` upstream: a deterministic OpenAI-format reply, so the gateway works with no accounts.

use serde_json::{json, Value};

use crate::stream::sse::format_event;
use crate::upstream::{estimate_tokens, prompt_text};

/// Milliseconds the edge waits before each streamed token, so streaming is visible.
pub const TOKEN_DELAY_MS: u64 = 25;

#[derive(Debug, Clone, PartialEq)]
pub struct DemoReply {
    pub id: String,
    pub model: String,
    pub created: i64,
    pub tokens: Vec<String>,
    pub prompt_tokens: u64,
}

fn last_user_text(body: &Value) -> String {
    let messages = body.get("messages").and_then(Value::as_array);
    let text = messages
        .and_then(|m| {
            m.iter()
                .rev()
                .find(|msg| msg.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|msg| msg.get("content"))
        .map(|c| match c {
            Value::String(s) => s.clone(),
            // Content parts: join the text parts.
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        })
        .unwrap_or_default();
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

impl DemoReply {
    /// The reply depends only on the request (and `created`, the current time in seconds).
    pub fn new(body: &Value, model: &str, created: i64) -> DemoReply {
        let said = last_user_text(body);
        let text = format!(
            "Hello from Sluice! This is the built-in demo model. You said: \"{said}\". \
             Every word of this reply was streamed to you through the gateway, token by token."
        );
        let mut tokens: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
        if tokens.is_empty() {
            tokens.push(String::new());
        }
        DemoReply {
            id: format!("chatcmpl-demo{created}"),
            model: model.to_string(),
            created,
            tokens,
            prompt_tokens: estimate_tokens(&body.as_object().map(prompt_text).unwrap_or_default())
                .max(1),
        }
    }

    pub fn text(&self) -> String {
        self.tokens.concat()
    }

    pub fn usage(&self) -> Value {
        let completion = self.tokens.len() as u64;
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": completion, "total_tokens": self.prompt_tokens + completion})
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }).to_string()
    }

    /// Every SSE frame of the streamed answer, in order: one per token, the finish chunk, usage, `[DONE]`.
    pub fn sse_frames(&self) -> Vec<String> {
        let mut frames = Vec::with_capacity(self.tokens.len() + 3);
        for (i, t) in self.tokens.iter().enumerate() {
            let delta = if i == 0 {
                json!({"role": "assistant", "content": t})
            } else {
                json!({"content": t})
            };
            frames.push(format_event(None, &self.chunk(delta, None)));
        }
        frames.push(format_event(None, &self.chunk(json!({}), Some("stop"))));
        let usage = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [], "usage": self.usage(),
        });
        frames.push(format_event(None, &usage.to_string()));
        frames.push(format_event(None, "[DONE]"));
        frames
    }

    /// The non-streamed answer.
    pub fn completion(&self) -> Value {
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text()}, "finish_reason": "stop"}],
            "usage": self.usage(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::sse::Parser;

    fn body(text: &str) -> Value {
        json!({"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": text}]})
    }

    #[test]
    fn deterministic_and_echoes_the_user() {
        let a = DemoReply::new(&body("ping   me"), "demo-1", 1);
        assert_eq!(a, DemoReply::new(&body("ping   me"), "demo-1", 1));
        assert!(a.text().contains("You said: \"ping me\""));
        assert!(a.tokens.len() > 10);
    }

    #[test]
    fn stream_reassembles_to_the_completion() {
        let r = DemoReply::new(&body("hi"), "demo-1", 7);
        let mut p = Parser::new();
        let events: Vec<_> = r
            .sse_frames()
            .iter()
            .flat_map(|f| p.push(f.as_bytes()))
            .collect();
        assert_eq!(events.last().unwrap().data, "[DONE]");
        let mut text = String::new();
        let mut usage = None;
        for e in &events[..events.len() - 1] {
            let v: Value = serde_json::from_str(&e.data).unwrap();
            if let Some(c) = v
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
            {
                text.push_str(c);
            }
            if !v["usage"].is_null() {
                usage = Some(v["usage"].clone());
            }
        }
        assert_eq!(text, r.completion()["choices"][0]["message"]["content"]);
        let usage = usage.unwrap();
        assert_eq!(usage["completion_tokens"], r.tokens.len() as u64);
        assert_eq!(
            usage["total_tokens"],
            usage["prompt_tokens"].as_u64().unwrap() + r.tokens.len() as u64
        );
    }

    #[test]
    fn long_input_is_truncated_and_odd_content_tolerated() {
        let r = DemoReply::new(&body(&"x".repeat(500)), "m", 0);
        assert!(r.text().contains('…'));
        let r = DemoReply::new(
            &json!({"messages": [{"role": "user", "content": [{"type":"text","text":"part"}]}]}),
            "m",
            0,
        );
        assert!(r.text().contains("\"part\""));
        let r = DemoReply::new(&json!({}), "m", 0);
        assert!(r.text().contains("\"\""));
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcde"), 2);
    }
}
