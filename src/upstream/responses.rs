//! The client's Responses API body (`POST …/responses`), checked before anything is reserved like a
//! chat body (the API's models and cost-changing parameters, bounded fields, the prompt's upper
//! bound), and how a Responses answer or stream event reports its output and usage.

use serde_json::{Map, Value};

use crate::error::Error;
use crate::limits::meter::{value_bytes, PER_MESSAGE, PER_REQUEST, TOOLS_OVERHEAD};
use crate::stream::relay::Usage;
use crate::upstream::chat::{
    check_cost_params, check_model_allowed, invalid, model_of, stream_flag, whole, ApiRules,
    MAX_COMPLETION_TOKENS, MAX_MESSAGES, MAX_TOOLS,
};

/// Fields the model reads besides `input`, counted by their JSON text.
const READ_FIELDS: [&str; 4] = ["tools", "tool_choice", "text", "reasoning"];

/// A Responses request that passed the gateway's checks.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponsesRequest {
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// The client's `max_output_tokens`.
    pub cap: Option<u64>,
    pub prompt_bound: u64,
}

/// Checks a Responses body against the gateway's bounds and the API's rules. `previous_response_id`
/// and `conversation` make the upstream read a history the gateway cannot bound, so they are
/// cost-changing parameters (refused unless the API allows them); `store` is not one here (the
/// Responses API stores by default).
pub fn prepare_responses(body: Value, rules: &ApiRules<'_>) -> Result<ResponsesRequest, Error> {
    let Value::Object(mut body) = body else {
        return Err(Error::invalid_request(
            "The body must be a JSON object (an OpenAI Responses request).",
        ));
    };
    match body.get("input") {
        Some(Value::String(_)) => {}
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_MESSAGES => {}
        _ => {
            return Err(invalid(
                "input",
                format!("`input` must be a string or an array of 1-{MAX_MESSAGES} input items."),
            ))
        }
    }
    match body.get("instructions") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(_) => return Err(invalid("instructions", "`instructions` must be a string.")),
    }
    if let Some(tools) = body.get("tools").filter(|t| !t.is_null()) {
        if tools.as_array().is_none_or(|t| t.len() > MAX_TOOLS) {
            return Err(invalid(
                "tools",
                format!("`tools` must be an array of at most {MAX_TOOLS} definitions."),
            ));
        }
    }
    let model = model_of(&mut body, rules.default_model)?;
    let stream = stream_flag(&body)?;
    let cap = whole(&body, "max_output_tokens", MAX_COMPLETION_TOKENS)?;
    check_cost_params(&body, &rules.policy.allowed_params, &["store"])?;
    check_model_allowed(&model, rules)?;
    let prompt_bound = prompt_bound(&body, rules.policy.image_tokens);
    Ok(ResponsesRequest {
        body,
        model,
        stream,
        cap,
        prompt_bound,
    })
}

/// The most tokens the upstream can count for the request's input and instructions.
fn prompt_bound(body: &Map<String, Value>, image_tokens: u64) -> u64 {
    let mut total = PER_REQUEST;
    match body.get("input") {
        Some(Value::Array(items)) => {
            for item in items {
                total = total
                    .saturating_add(PER_MESSAGE)
                    .saturating_add(item_bound(item, image_tokens));
            }
        }
        Some(other) => {
            total = total
                .saturating_add(PER_MESSAGE)
                .saturating_add(value_bytes(other))
        }
        None => {}
    }
    if let Some(i) = body.get("instructions") {
        total = total
            .saturating_add(PER_MESSAGE)
            .saturating_add(value_bytes(i));
    }
    for field in READ_FIELDS {
        if let Some(v) = body.get(field).filter(|v| !v.is_null()) {
            total = total.saturating_add(v.to_string().len() as u64);
        }
    }
    if body
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty())
    {
        total = total.saturating_add(TOOLS_OVERHEAD);
    }
    total
}

/// An input item: its text's bytes, with image and file parts at the configured amount (their URL
/// or data says nothing of what the model reads).
fn item_bound(item: &Value, image_tokens: u64) -> u64 {
    match item {
        Value::Object(fields) => {
            let kind = fields.get("type").and_then(Value::as_str);
            if matches!(kind, Some("input_image" | "input_file")) {
                return image_tokens;
            }
            fields
                .values()
                .map(|v| item_bound(v, image_tokens))
                .fold(0, u64::saturating_add)
        }
        Value::Array(parts) => parts
            .iter()
            .map(|p| item_bound(p, image_tokens).saturating_add(crate::limits::meter::PER_PART))
            .fold(0, u64::saturating_add),
        other => value_bytes(other),
    }
}

impl ResponsesRequest {
    /// Writes the granted cap as `max_output_tokens`.
    pub fn set_cap(&mut self, cap: Option<u64>) {
        if let Some(cap) = cap {
            self.body
                .insert("max_output_tokens".into(), Value::from(cap));
        }
    }
}

/// The generated output in a Responses stream event (its `delta` text: output text, refusals,
/// function-call arguments, reasoning) or in a whole response's `output` items, in bytes.
pub fn output_bytes(v: &Value) -> u64 {
    if let Some(kind) = v.get("type").and_then(Value::as_str) {
        if kind.ends_with(".delta") {
            return v
                .get("delta")
                .and_then(Value::as_str)
                .map_or(0, |d| d.len() as u64);
        }
        if kind.starts_with("response.") {
            return 0;
        }
    }
    v.get("output")
        .and_then(Value::as_array)
        .map_or(0, |items| {
            items.iter().map(generated).fold(0, u64::saturating_add)
        })
}

/// The text an output item carries (message parts, refusals, call names and arguments, reasoning).
fn generated(item: &Value) -> u64 {
    match item {
        Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| match (k.as_str(), v) {
                ("text" | "refusal" | "arguments" | "name" | "transcript", Value::String(s)) => {
                    s.len() as u64
                }
                (_, Value::Array(_) | Value::Object(_)) => generated(v),
                _ => 0,
            })
            .fold(0, u64::saturating_add),
        Value::Array(items) => items.iter().map(generated).fold(0, u64::saturating_add),
        _ => 0,
    }
}

/// A response's usage (`usage`, or `response.usage` in a stream's final event).
pub fn usage(v: &Value) -> Option<Usage> {
    let u = v
        .get("usage")
        .or_else(|| v.pointer("/response/usage"))
        .filter(|u| u.is_object())?;
    Usage::read(
        u,
        ["input_tokens", "output_tokens"],
        "/input_tokens_details/cached_tokens",
        "/output_tokens_details/reasoning_tokens",
    )
}

/// The event that ends a Responses stream (there is no `[DONE]`).
pub fn is_final(v: &Value) -> bool {
    matches!(
        v.get("type").and_then(Value::as_str),
        Some("response.completed" | "response.incomplete" | "response.failed")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::policy::UpstreamPolicy;
    use serde_json::json;

    fn prep(body: Value) -> Result<ResponsesRequest, Error> {
        let policy = UpstreamPolicy::default();
        let models = vec!["m2".to_string()];
        prepare_responses(
            body,
            &ApiRules {
                default_model: Some("m1"),
                models: &models,
                policy: &policy,
            },
        )
    }

    #[test]
    fn a_string_or_item_input_is_bounded_and_capped() {
        let r =
            prep(json!({"input": "hello there", "max_output_tokens": 40, "stream": true})).unwrap();
        assert_eq!((r.model.as_str(), r.stream, r.cap), ("m1", true, Some(40)));
        assert_eq!(r.prompt_bound, PER_REQUEST + PER_MESSAGE + 11);
        let items = json!({"model": "m2", "instructions": "be brief", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "abc"},
                                         {"type": "input_image", "image_url": "https://x/y.png"}]}]});
        let r = prep(items).unwrap();
        assert!(
            r.prompt_bound >= 1000 + 3 + 8,
            "an image counts its configured amount: {}",
            r.prompt_bound
        );
    }

    #[test]
    fn bad_bodies_and_unbounded_history_are_refused() {
        for (body, param) in [
            (json!({}), "input"),
            (json!({"input": []}), "input"),
            (json!({"input": "x", "instructions": 3}), "instructions"),
            (
                json!({"input": "x", "max_output_tokens": 0}),
                "max_output_tokens",
            ),
            (
                json!({"input": "x", "previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
        ] {
            let e = prep(body.clone()).unwrap_err();
            assert_eq!(e.extra["param"], param, "{body}");
        }
        assert_eq!(
            prep(json!({"input": "x", "model": "other"}))
                .unwrap_err()
                .kind(),
            "model-not-allowed"
        );
        assert!(
            prep(json!({"input": "x", "store": true})).is_ok(),
            "store is the Responses default"
        );
    }

    #[test]
    fn events_and_answers_report_output_and_usage() {
        assert_eq!(
            output_bytes(&json!({"type": "response.output_text.delta", "delta": "héllo"})),
            6
        );
        assert_eq!(
            output_bytes(
                &json!({"type": "response.function_call_arguments.delta", "delta": "{\"a\""})
            ),
            4
        );
        assert_eq!(
            output_bytes(
                &json!({"type": "response.completed", "response": {"output": [{"content": [{"text": "xx"}]}]}})
            ),
            0
        );
        let answer = json!({"output": [
            {"type": "message", "content": [{"type": "output_text", "text": "abc", "annotations": []}]},
            {"type": "function_call", "name": "f", "arguments": "{}"}],
            "usage": {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12,
                      "input_tokens_details": {"cached_tokens": 2}, "output_tokens_details": {"reasoning_tokens": 1}}});
        assert_eq!(output_bytes(&answer), 3 + 1 + 2);
        let u = usage(&answer).unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens,
                u.reasoning_tokens
            ),
            (5, 7, 2, 1)
        );
        let done = json!({"type": "response.completed", "response": {"usage": {"input_tokens": 1, "output_tokens": 2}}});
        assert!(is_final(&done));
        assert_eq!(usage(&done).unwrap().total_tokens, 3);
    }
}
