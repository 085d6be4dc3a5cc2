//! The built-in `demo` upstream: a deterministic OpenAI-format reply, so the gateway works with no accounts.

use serde_json::{json, Value};

use crate::stream::sse::format_event;

/// Milliseconds the edge waits before each streamed token, so streaming is visible.
pub const TOKEN_DELAY_MS: u64 = 25;

#[derive(Debug, Clone, PartialEq)]
pub struct DemoReply {
    pub id: String,
    pub model: String,
    pub created: i64,
    pub tokens: Vec<String>,
    pub prompt_tokens: u64,
    /// `length` when the cap cut the reply short, else `stop`.
    pub finish_reason: &'static str,
    /// Choices asked for (`n`): each is the same reply.
    pub n: usize,
}

/// Most choices the demo answers with (the gateway bounds `n` by the API's `max_n` first).
const MAX_CHOICES: u64 = 128;

/// Rough token count of the demo model: about four characters a token.
fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// The text of every message, as the demo model reads it.
fn prompt_text(body: &Value) -> String {
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

/// The completion cap the request carries (an honest model stops there).
fn cap(body: &Value) -> Option<usize> {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .filter_map(|k| body.get(*k).and_then(Value::as_u64))
        .min()
        .map(|c| usize::try_from(c).unwrap_or(usize::MAX))
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
        let mut finish_reason = "stop";
        if let Some(cap) = cap(body).filter(|c| *c < tokens.len()) {
            tokens.truncate(cap);
            finish_reason = "length";
        }
        if tokens.is_empty() {
            tokens.push(String::new());
        }
        let n = body
            .get("n")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, MAX_CHOICES) as usize;
        DemoReply {
            id: format!("chatcmpl-demo{created}"),
            model: model.to_string(),
            created,
            tokens,
            prompt_tokens: estimate_tokens(&prompt_text(body)).max(1),
            finish_reason,
            n,
        }
    }

    pub fn text(&self) -> String {
        self.tokens.concat()
    }

    pub fn usage(&self) -> Value {
        let completion = (self.tokens.len() * self.n) as u64;
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": completion, "total_tokens": self.prompt_tokens + completion})
    }

    fn chunk(&self, index: usize, delta: Value, finish: Option<&str>) -> String {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        }).to_string()
    }

    /// Every SSE frame of the streamed answer, in order: one per token and choice (the choices
    /// interleaved, as OpenAI streams them), each choice's finish chunk, usage, `[DONE]`.
    pub fn sse_frames(&self) -> Vec<String> {
        let mut frames = Vec::with_capacity((self.tokens.len() + 1) * self.n + 2);
        for (i, t) in self.tokens.iter().enumerate() {
            for index in 0..self.n {
                let delta = if i == 0 {
                    json!({"role": "assistant", "content": t})
                } else {
                    json!({"content": t})
                };
                frames.push(format_event(None, &self.chunk(index, delta, None)));
            }
        }
        for index in 0..self.n {
            frames.push(format_event(
                None,
                &self.chunk(index, json!({}), Some(self.finish_reason)),
            ));
        }
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
        let choices: Vec<Value> = (0..self.n)
            .map(|index| json!({"index": index, "message": {"role": "assistant", "content": self.text()}, "finish_reason": self.finish_reason}))
            .collect();
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": choices,
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
            let v: Value = crate::encoding::from_json(&e.data).unwrap();
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

    #[test]
    fn the_demo_model_answers_n_choices() {
        let mut b = body("hi");
        b["n"] = json!(3);
        b["max_tokens"] = json!(4);
        let r = DemoReply::new(&b, "m", 0);
        let whole = r.completion();
        let choices = whole["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 3);
        assert_eq!(choices[2]["index"], 2);
        assert_eq!(whole["usage"]["completion_tokens"], 12);
        let mut p = Parser::new();
        let mut texts = vec![String::new(); 3];
        for e in r.sse_frames().iter().flat_map(|f| p.push(f.as_bytes())) {
            let Ok(v) = crate::encoding::from_json::<Value>(&e.data) else {
                continue;
            };
            if let (Some(i), Some(c)) = (
                v.pointer("/choices/0/index").and_then(Value::as_u64),
                v.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str),
            ) {
                texts[i as usize].push_str(c);
            }
        }
        assert!(texts.iter().all(|t| *t == r.text()), "{texts:?}");
    }

    #[test]
    fn the_demo_model_honours_the_cap() {
        let mut b = body("hi");
        b["max_tokens"] = json!(3);
        let r = DemoReply::new(&b, "m", 0);
        assert_eq!((r.tokens.len(), r.finish_reason), (3, "length"));
        assert_eq!(r.completion()["usage"]["completion_tokens"], 3);
        b["max_completion_tokens"] = json!(2);
        assert_eq!(DemoReply::new(&b, "m", 0).tokens.len(), 2);
    }
}
