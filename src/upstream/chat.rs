//! The client's Chat Completions body, checked before anything is reserved: bounded fields, the
//! API's model allowlist and cost-changing parameters, the prompt's upper bound; then the completion
//! cap the counter granted, written into the body under the one name the upstream reads.

use serde_json::{Map, Value};

use crate::error::{Error, Problem};
use crate::limits::meter::prompt_bound;
use crate::limits::spend::MAX_MODEL_LEN;
use crate::upstream::policy::{CapField, UpstreamPolicy, COST_PARAMS};

/// The largest completion cap a client may ask for.
pub const MAX_COMPLETION_TOKENS: u64 = 1_000_000;
/// At most this many messages in one request.
pub const MAX_MESSAGES: usize = 10_000;
/// At most this many tool (or function) definitions, as OpenAI allows.
pub const MAX_TOOLS: usize = 128;

const CAP_FIELDS: [&str; 2] = ["max_tokens", "max_completion_tokens"];

/// A chat request that passed the gateway's checks, ready to be admitted and forwarded.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// Choices asked for.
    pub n: u64,
    /// The client's completion cap (the smaller of both names when it sent both).
    pub cap: Option<u64>,
    /// Which name the client used for it.
    pub cap_field: Option<&'static str>,
    /// The most tokens the upstream can count for the prompt.
    pub prompt_bound: u64,
    /// The client asked for the usage chunk itself (`stream_options.include_usage`).
    pub client_wants_usage: bool,
}

/// The API's side of a chat request: what it allows.
pub struct ApiRules<'a> {
    pub default_model: Option<&'a str>,
    /// The API's model list (an allowlist).
    pub models: &'a [String],
    pub policy: &'a UpstreamPolicy,
}

impl ApiRules<'_> {
    /// The models a request may name; `None` when any model is allowed.
    pub fn allowed_models(&self) -> Option<Vec<String>> {
        if self.models.is_empty() && self.policy.allow_any_model {
            return None;
        }
        let mut allowed: Vec<String> = self.default_model.map(str::to_string).into_iter().collect();
        for m in self.models {
            if !allowed.contains(m) {
                allowed.push(m.clone());
            }
        }
        Some(allowed)
    }
}

pub(crate) fn invalid(param: &str, detail: impl Into<String>) -> Error {
    Error::invalid_request(detail).with_field("param", param)
}

/// A positive whole number up to `max`, `None` when absent or null; anything else names the field.
pub(crate) fn whole(
    body: &Map<String, Value>,
    field: &str,
    max: u64,
) -> Result<Option<u64>, Error> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=max).contains(&n) => Ok(Some(n)),
            _ => Err(invalid(
                field,
                format!("`{field}` must be a whole number from 1 to {max}."),
            )),
        },
    }
}

/// A cost-changing parameter at its harmless default is not a change.
fn is_default_value(param: &str, v: &Value) -> bool {
    match (param, v) {
        (_, Value::Null) => true,
        ("store", Value::Bool(false)) => true,
        ("modalities", Value::Array(m)) => m.len() == 1 && m[0] == "text",
        _ => false,
    }
}

/// Checks the body against the gateway's bounds and the API's rules, and fills in the default model.
pub fn prepare_chat(body: Value, rules: &ApiRules<'_>) -> Result<ChatRequest, Error> {
    let Value::Object(mut body) = body else {
        return Err(Error::invalid_request(
            "The body must be a JSON object (an OpenAI Chat Completions request).",
        ));
    };
    check_messages(&body)?;
    check_tools(&body)?;
    let model = model_of(&mut body, rules.default_model)?;
    let stream = stream_flag(&body)?;
    let n = whole(&body, "n", rules.policy.max_n)?.unwrap_or(1);
    let (cap, cap_field) = client_cap(&body)?;
    check_cost_params(&body, &rules.policy.allowed_params, &[])?;
    check_model_allowed(&model, rules)?;
    let client_wants_usage = match stream {
        true => ask_for_usage(&mut body)?,
        false => false,
    };
    let prompt_bound = prompt_bound(&body, rules.policy.image_tokens);
    Ok(ChatRequest {
        body,
        model,
        stream,
        n,
        cap,
        cap_field,
        prompt_bound,
        client_wants_usage,
    })
}

/// `stream`: true or false (absent or null: false).
pub(crate) fn stream_flag(body: &Map<String, Value>) -> Result<bool, Error> {
    match body.get("stream") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid("stream", "`stream` must be true or false.")),
    }
}

/// `messages`: a non-empty array of at most `MAX_MESSAGES` objects.
fn check_messages(body: &Map<String, Value>) -> Result<(), Error> {
    match body.get("messages") {
        Some(Value::Array(m)) if m.len() > MAX_MESSAGES => Err(invalid(
            "messages",
            format!("`messages` may hold at most {MAX_MESSAGES} messages."),
        )),
        Some(Value::Array(m)) if !m.is_empty() => match m.iter().all(Value::is_object) {
            true => Ok(()),
            false => Err(invalid(
                "messages",
                "Every entry of `messages` must be an object with `role` and `content`.",
            )),
        },
        _ => Err(invalid(
            "messages",
            "`messages` must be a non-empty array of chat messages.",
        )),
    }
}

/// `tools` and `functions`: arrays of at most `MAX_TOOLS` definitions.
fn check_tools(body: &Map<String, Value>) -> Result<(), Error> {
    for field in ["tools", "functions"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) if list.len() <= MAX_TOOLS => {}
            Some(_) => {
                return Err(invalid(
                    field,
                    format!("`{field}` must be an array of at most {MAX_TOOLS} definitions."),
                ))
            }
        }
    }
    Ok(())
}

/// The model named (at most `MAX_MODEL_LEN` characters), or the API's default, written in.
pub(crate) fn model_of(
    body: &mut Map<String, Value>,
    default_model: Option<&str>,
) -> Result<String, Error> {
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() && m.chars().count() <= MAX_MODEL_LEN => {
            Ok(m.clone())
        }
        None | Some(Value::Null) => match default_model {
            Some(d) => {
                body.insert("model".into(), Value::from(d));
                Ok(d.to_string())
            }
            None => Err(invalid(
                "model",
                "Name a `model`: this API has no default model.",
            )),
        },
        Some(_) => Err(invalid(
            "model",
            format!("`model` must be a string of 1-{MAX_MODEL_LEN} characters."),
        )),
    }
}

/// The client's completion cap under either name (the smaller when both), and the name it used.
fn client_cap(body: &Map<String, Value>) -> Result<(Option<u64>, Option<&'static str>), Error> {
    let mut cap = None;
    let mut cap_field = None;
    for field in CAP_FIELDS {
        if let Some(c) = whole(body, field, MAX_COMPLETION_TOKENS)? {
            cap = Some(cap.map_or(c, |old: u64| old.min(c)));
            cap_field = Some(field);
        }
    }
    Ok((cap, cap_field))
}

/// A cost-changing parameter is refused unless the API allows it (or it is at its default); `skip`
/// names those that change nothing on this endpoint.
pub(crate) fn check_cost_params(
    body: &Map<String, Value>,
    allowed: &[String],
    skip: &[&str],
) -> Result<(), Error> {
    for param in COST_PARAMS.iter().copied().filter(|p| !skip.contains(p)) {
        let Some(v) = body.get(param) else { continue };
        if !is_default_value(param, v) && !allowed.iter().any(|p| p == param) {
            return Err(Error::new(
                Problem::ParameterNotAllowed,
                format!("`{param}` changes what a request costs, and this API does not allow it."),
            )
            .with_field("param", param));
        }
    }
    Ok(())
}

pub(crate) fn check_model_allowed(model: &str, rules: &ApiRules<'_>) -> Result<(), Error> {
    match rules.allowed_models() {
        Some(allowed) if !allowed.iter().any(|m| m == model) => Err(Error::new(
            Problem::ModelNotAllowed,
            format!("This API allows: {}.", allowed.join(", ")),
        )
        .with_field("model", model)
        .with_field("allowed", allowed)),
        _ => Ok(()),
    }
}

/// A stream always asks the upstream for its usage chunk; returns whether the client asked too.
fn ask_for_usage(body: &mut Map<String, Value>) -> Result<bool, Error> {
    let options = body
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(options) = options else {
        return Err(invalid(
            "stream_options",
            "`stream_options` must be an object.",
        ));
    };
    let client_wants_usage = options
        .get("include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    options.insert("include_usage".into(), Value::Bool(true));
    Ok(client_wants_usage)
}

impl ChatRequest {
    /// Writes the granted cap under the one name the upstream reads, removing the other.
    pub fn set_cap(&mut self, cap: Option<u64>, field: CapField) {
        let Some(cap) = cap else {
            return;
        };
        let name = match field {
            CapField::MaxTokens => "max_tokens",
            CapField::MaxCompletionTokens => "max_completion_tokens",
            CapField::Auto => self.cap_field.unwrap_or("max_tokens"),
        };
        for f in CAP_FIELDS {
            self.body.remove(f);
        }
        self.body.insert(name.into(), Value::from(cap));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules<'a>(models: &'a [String], policy: &'a UpstreamPolicy) -> ApiRules<'a> {
        ApiRules {
            default_model: Some("m1"),
            models,
            policy,
        }
    }
    fn prep(body: Value) -> Result<ChatRequest, Error> {
        prepare_chat(body, &rules(&[], &UpstreamPolicy::default()))
    }
    fn msg() -> Value {
        json!([{"role": "user", "content": "hi"}])
    }

    #[test]
    fn fills_default_model_and_reads_stream_and_n() {
        let r = prep(json!({"messages": msg(), "stream": true, "n": 3})).unwrap();
        assert_eq!((r.model.as_str(), r.stream, r.n), ("m1", true, 3));
        assert_eq!(r.body["model"], "m1");
        assert_eq!(r.body["stream_options"]["include_usage"], true);
        assert!(!r.client_wants_usage);
        assert!(r.prompt_bound > 2);
    }

    #[test]
    fn bodies_keep_their_key_order_and_number_spelling() {
        let text = r#"{"model":"m1","messages":[{"role":"user","content":"hi"}],"temperature":0.70,"top_p":1.50,"response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{"type":"object","properties":{"reasoning":{"type":"string"},"answer":{"type":"string"}},"required":["reasoning","answer"]}}}}"#;
        let body: Value = crate::encoding::from_json(text).unwrap();
        let mut r = prep(body).unwrap();
        r.set_cap(Some(50), crate::upstream::policy::CapField::Auto);
        let sent = serde_json::to_string(&r.body).unwrap();
        let schema = r#"{"type":"object","properties":{"reasoning":{"type":"string"},"answer":{"type":"string"}},"required":["reasoning","answer"]}"#;
        assert!(sent.contains(schema), "the schema as written: {sent}");
        assert!(sent.starts_with(r#"{"model":"m1","messages""#), "{sent}");
        assert!(
            sent.contains(r#""temperature":0.70,"top_p":1.50"#),
            "numbers as written: {sent}"
        );
    }

    #[test]
    fn rejects_bad_bodies_naming_the_field() {
        for (body, param) in [
            (json!({"messages": []}), "messages"),
            (json!({"messages": "hi"}), "messages"),
            (json!({"messages": [1]}), "messages"),
            (json!({"messages": msg(), "model": 5}), "model"),
            (
                json!({"messages": msg(), "model": "x".repeat(257)}),
                "model",
            ),
            (json!({"messages": msg(), "stream": "yes"}), "stream"),
            (json!({"messages": msg(), "n": -1}), "n"),
            (json!({"messages": msg(), "n": 1.5}), "n"),
            (json!({"messages": msg(), "n": "8"}), "n"),
            (json!({"messages": msg(), "n": 1e9}), "n"),
            (json!({"messages": msg(), "n": 5}), "n"),
            (json!({"messages": msg(), "n": 0}), "n"),
            (json!({"messages": msg(), "max_tokens": 0}), "max_tokens"),
            (
                json!({"messages": msg(), "max_completion_tokens": 1_000_001}),
                "max_completion_tokens",
            ),
            (json!({"messages": msg(), "max_tokens": "10"}), "max_tokens"),
            (json!({"messages": msg(), "tools": {}}), "tools"),
            (
                json!({"messages": msg(), "stream": true, "stream_options": 5}),
                "stream_options",
            ),
        ] {
            let e = prep(body.clone()).unwrap_err();
            assert_eq!((e.status, e.kind()), (400, "invalid-request"), "{body}");
            assert_eq!(e.extra["param"], param, "{body}");
        }
        let many: Vec<Value> = (0..=MAX_MESSAGES).map(|_| json!({})).collect();
        assert_eq!(
            prep(json!({ "messages": many })).unwrap_err().extra["param"],
            "messages"
        );
        assert_eq!(prep(json!([1])).unwrap_err().status, 400);
        let none = prepare_chat(
            json!({"messages": msg()}),
            &ApiRules {
                default_model: None,
                models: &[],
                policy: &UpstreamPolicy::default(),
            },
        );
        assert_eq!(none.unwrap_err().extra["param"], "model");
    }

    #[test]
    fn the_smaller_of_both_cap_names_is_the_clients_cap() {
        let r = prep(json!({"messages": msg(), "max_tokens": 5000, "max_completion_tokens": 50}))
            .unwrap();
        assert_eq!(
            (r.cap, r.cap_field),
            (Some(50), Some("max_completion_tokens"))
        );
        let r = prep(json!({"messages": msg(), "max_tokens": 40, "max_completion_tokens": null}))
            .unwrap();
        assert_eq!((r.cap, r.cap_field), (Some(40), Some("max_tokens")));
    }

    #[test]
    fn the_cap_is_sent_under_one_name_only() {
        let mut r =
            prep(json!({"messages": msg(), "max_tokens": 5000, "max_completion_tokens": 6000}))
                .unwrap();
        r.set_cap(Some(50), CapField::Auto);
        assert_eq!(r.body["max_completion_tokens"], 50);
        assert!(r.body.get("max_tokens").is_none());
        r.set_cap(Some(7), CapField::MaxTokens);
        assert_eq!(r.body["max_tokens"], 7);
        assert!(r.body.get("max_completion_tokens").is_none());
        let mut r = prep(json!({"messages": msg()})).unwrap();
        r.set_cap(Some(9), CapField::Auto);
        assert_eq!(r.body["max_tokens"], 9);
        let mut r = prep(json!({"messages": msg(), "max_tokens": 5})).unwrap();
        r.set_cap(None, CapField::Auto);
        assert_eq!(
            r.body["max_tokens"], 5,
            "no limit: the client's own cap stands"
        );
    }

    #[test]
    fn the_model_list_is_an_allowlist() {
        let policy = UpstreamPolicy::default();
        let listed = vec!["m2".to_string()];
        let r = rules(&listed, &policy);
        assert_eq!(r.allowed_models(), Some(vec!["m1".into(), "m2".into()]));
        assert!(prepare_chat(json!({"messages": msg(), "model": "m2"}), &r).is_ok());
        for other in ["gpt-4.1", "o1-pro", "ft:gpt-4o:org::abc"] {
            let e = prepare_chat(json!({"messages": msg(), "model": other}), &r).unwrap_err();
            assert_eq!((e.status, e.kind()), (403, "model-not-allowed"));
            assert_eq!(e.extra["allowed"], json!(["m1", "m2"]));
        }
        // An empty list allows only the default model...
        let e = prep(json!({"messages": msg(), "model": "gpt-4.1"})).unwrap_err();
        assert_eq!(e.kind(), "model-not-allowed");
        // ...unless the owner allows any.
        let open = UpstreamPolicy {
            allow_any_model: true,
            ..UpstreamPolicy::default()
        };
        assert!(prepare_chat(
            json!({"messages": msg(), "model": "gpt-4.1"}),
            &rules(&[], &open)
        )
        .is_ok());
    }

    #[test]
    fn cost_changing_parameters_need_the_owners_consent() {
        for (param, value) in [
            ("service_tier", json!("priority")),
            ("store", json!(true)),
            ("modalities", json!(["text", "audio"])),
            ("audio", json!({"voice": "alloy"})),
            ("web_search_options", json!({})),
            ("prediction", json!({"type": "content", "content": "x"})),
        ] {
            let mut body = json!({"messages": msg()});
            body[param] = value.clone();
            let e = prep(body.clone()).unwrap_err();
            assert_eq!(
                (e.status, e.kind()),
                (400, "parameter-not-allowed"),
                "{param}"
            );
            assert_eq!(e.extra["param"], param);
            let policy = UpstreamPolicy {
                allowed_params: vec![param.to_string()],
                ..UpstreamPolicy::default()
            };
            assert!(
                prepare_chat(body, &rules(&[], &policy)).is_ok(),
                "{param} allowed"
            );
        }
        for harmless in [
            json!({"store": false}),
            json!({"modalities": ["text"]}),
            json!({"service_tier": null}),
        ] {
            let mut body = harmless.clone();
            body["messages"] = msg();
            assert!(prep(body).is_ok(), "{harmless}");
        }
    }

    #[test]
    fn everything_else_is_forwarded_unchanged() {
        let body = json!({"messages": msg(), "temperature": 0.2, "logprobs": true, "seed": 7, "user": "u",
                          "response_format": {"type": "json_object"}, "tools": [], "parallel_tool_calls": false});
        let r = prep(body.clone()).unwrap();
        for k in [
            "temperature",
            "logprobs",
            "seed",
            "user",
            "response_format",
            "tools",
            "parallel_tool_calls",
        ] {
            assert_eq!(r.body[k], body[k], "{k}");
        }
    }
}
