//! Token metering without a tokenizer: the upper bound of what a chat request will read (reserved
//! before the upstream is called) and the count of what an answer delivered, of every output kind.
//!
//! Both rest on one fact: every token of the BPE tokenizers of the major providers covers at least
//! one byte of UTF-8 text, so a byte count (plus fixed overheads for the framing a provider adds)
//! is never below the real token count, whatever the script.

use serde_json::{Map, Value};

/// Tokens a provider adds to every request (the primed assistant turn, system framing).
pub const PER_REQUEST: u64 = 16;
/// Tokens a provider adds around every message (role markers, separators).
pub const PER_MESSAGE: u64 = 8;
/// Tokens around every part of a content array.
pub const PER_PART: u64 = 4;
/// The tool-use instructions some providers prepend when tools are offered.
pub const TOOLS_OVERHEAD: u64 = 512;
/// What one image part counts unless the API configures another amount.
pub const DEFAULT_IMAGE_TOKENS: u64 = 1_000;

/// Request fields the model reads besides `messages`, counted by their JSON text.
const READ_FIELDS: [&str; 6] = [
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "response_format",
    "prediction",
];

/// The most tokens the upstream can count for this request's prompt.
pub fn prompt_bound(body: &Map<String, Value>, image_tokens: u64) -> u64 {
    let mut total = PER_REQUEST;
    if let Some(Value::Array(messages)) = body.get("messages") {
        for message in messages {
            total = total
                .saturating_add(PER_MESSAGE)
                .saturating_add(message_bound(message, image_tokens));
        }
    }
    for field in READ_FIELDS {
        if let Some(v) = body.get(field).filter(|v| !v.is_null()) {
            total = total.saturating_add(json_len(v));
        }
    }
    let offers_tools = ["tools", "functions"].iter().any(|f| {
        body.get(*f)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    });
    if offers_tools {
        total = total.saturating_add(TOOLS_OVERHEAD);
    }
    total
}

/// One message: the bytes of every value in it (role, name, text, tool calls, tool results), with
/// image parts counted at the configured amount instead of their URL or data.
fn message_bound(message: &Value, image_tokens: u64) -> u64 {
    match message {
        Value::Object(fields) => fields
            .iter()
            .map(|(key, v)| match (key.as_str(), v) {
                ("content", Value::Array(parts)) => parts
                    .iter()
                    .map(|p| PER_PART.saturating_add(part_bound(p, image_tokens)))
                    .fold(0u64, u64::saturating_add),
                _ => value_bytes(v),
            })
            .fold(0u64, u64::saturating_add),
        other => value_bytes(other),
    }
}

fn part_bound(part: &Value, image_tokens: u64) -> u64 {
    let kind = part.get("type").and_then(Value::as_str);
    if matches!(kind, Some("image_url" | "input_image" | "image")) {
        return image_tokens;
    }
    value_bytes(part)
}

/// The UTF-8 bytes of every string and scalar inside `v` (object keys are structure, not text).
pub fn value_bytes(v: &Value) -> u64 {
    match v {
        Value::Null => 0,
        Value::Bool(_) | Value::Number(_) => v.to_string().len() as u64,
        Value::String(s) => s.len() as u64,
        Value::Array(items) => items.iter().map(value_bytes).fold(0, u64::saturating_add),
        Value::Object(fields) => fields
            .values()
            .map(value_bytes)
            .fold(0, u64::saturating_add),
    }
}

/// The length of `v` as JSON text: tool and schema definitions are rendered to the model as text.
fn json_len(v: &Value) -> u64 {
    v.to_string().len() as u64
}

/// Bytes of generated output in one chat object: every choice's `delta` (a stream chunk) or
/// `message` (a whole completion): content, refusal, reasoning, tool calls (names and arguments),
/// the legacy function call, and audio (transcript and data).
pub fn output_bytes(v: &Value) -> u64 {
    let Some(choices) = v.get("choices").and_then(Value::as_array) else {
        return 0;
    };
    choices
        .iter()
        .filter_map(|c| c.get("delta").or_else(|| c.get("message")))
        .map(generated_bytes)
        .fold(0, u64::saturating_add)
}

fn generated_bytes(m: &Value) -> u64 {
    let text = |k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .map_or(0, |s| s.len() as u64)
    };
    let call = |c: &Value| {
        let f = c.get("function").unwrap_or(c);
        ["name", "arguments"]
            .iter()
            .map(|k| {
                f.get(*k)
                    .and_then(Value::as_str)
                    .map_or(0, |s| s.len() as u64)
            })
            .sum::<u64>()
    };
    let tools = m
        .get("tool_calls")
        .and_then(Value::as_array)
        .map_or(0, |calls| calls.iter().map(call).sum());
    let legacy = m.get("function_call").map_or(0, call);
    let audio = m.get("audio").map_or(0, |a| {
        ["transcript", "data"]
            .iter()
            .map(|k| {
                a.get(*k)
                    .and_then(Value::as_str)
                    .map_or(0, |s| s.len() as u64)
            })
            .sum()
    });
    ["content", "refusal", "reasoning_content", "reasoning"]
        .iter()
        .map(|k| text(k))
        .sum::<u64>()
        + tools
        + legacy
        + audio
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test bodies are objects"),
        }
    }

    #[test]
    fn the_bound_counts_bytes_of_every_message_plus_overheads() {
        let b = body(json!({"messages": [{"role": "user", "content": "hello"}]}));
        assert_eq!(prompt_bound(&b, 1000), PER_REQUEST + PER_MESSAGE + 4 + 5);
        // CJK: three bytes a character, never fewer tokens than characters.
        let b = body(json!({"messages": [{"role": "user", "content": "你好世界"}]}));
        assert_eq!(prompt_bound(&b, 1000), PER_REQUEST + PER_MESSAGE + 4 + 12);
    }

    #[test]
    fn empty_messages_still_cost_their_overhead() {
        let messages: Vec<Value> = (0..1000).map(|_| json!({})).collect();
        let b = body(json!({ "messages": messages }));
        assert_eq!(prompt_bound(&b, 0), PER_REQUEST + 1000 * PER_MESSAGE);
    }

    #[test]
    fn images_count_the_configured_amount_and_text_parts_their_bytes() {
        let b = body(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", "A".repeat(100_000))}},
        ]}]}));
        let text_part = PER_PART + 4 + 12;
        assert_eq!(
            prompt_bound(&b, 765),
            PER_REQUEST + PER_MESSAGE + 4 + text_part + PER_PART + 765
        );
    }

    #[test]
    fn tools_schemas_and_tool_results_are_read_too() {
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
        let b = body(json!({
            "messages": [
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            "tools": tools,
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
        }));
        let assistant = 9 + (2 + 8 + 1 + 7);
        let tool = 4 + 2 + 2;
        let tools_len = tools.to_string().len() as u64;
        let format_len = b["response_format"].to_string().len() as u64;
        assert_eq!(
            prompt_bound(&b, 0),
            PER_REQUEST
                + 2 * PER_MESSAGE
                + assistant
                + tool
                + tools_len
                + format_len
                + TOOLS_OVERHEAD
        );
    }

    #[test]
    fn a_huge_tools_schema_is_a_huge_bound() {
        let big = "x".repeat(1_500_000);
        let b = body(
            json!({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f", "description": big}}]}),
        );
        assert!(prompt_bound(&b, 0) > 1_500_000);
    }

    #[test]
    fn output_counts_every_kind_of_generated_text() {
        let chunk = json!({"choices": [
            {"index": 0, "delta": {"content": "ab", "refusal": "cde", "reasoning_content": "f",
              "tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "get", "arguments": "{\"q\":"}}]}},
            {"index": 1, "delta": {"function_call": {"name": "g", "arguments": "xy"}, "audio": {"transcript": "hey"}}},
        ]});
        assert_eq!(output_bytes(&chunk), 2 + 3 + 1 + 3 + 5 + 1 + 2 + 3);
        let whole = json!({"choices": [{"message": {"content": "漢字", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}}]});
        assert_eq!(output_bytes(&whole), 6 + 1 + 2);
        assert_eq!(output_bytes(&json!({"choices": [], "usage": {}})), 0);
        assert_eq!(output_bytes(&json!("not an object")), 0);
    }

    #[test]
    fn the_bound_never_overflows() {
        let b = body(json!({"messages": [{"role": "user", "content": "x"}]}));
        assert!(prompt_bound(&b, u64::MAX) >= PER_REQUEST);
        let parts: Vec<Value> = (0..3).map(|_| json!({"type": "image_url"})).collect();
        let b = body(json!({"messages": [{"role": "user", "content": parts}]}));
        assert_eq!(prompt_bound(&b, u64::MAX), u64::MAX);
    }
}
