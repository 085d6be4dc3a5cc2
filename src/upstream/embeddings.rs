//! The client's Embeddings body (`POST …/embeddings`): the API's models, a bounded `input` (text,
//! texts, or token arrays) and its upper bound in tokens; embeddings generate nothing to meter but
//! the input.

use serde_json::{Map, Value};

use crate::error::Error;
use crate::limits::meter::PER_PART;
use crate::stream::relay::Usage;
use crate::upstream::chat::{check_model_allowed, invalid, model_of, ApiRules};

/// OpenAI's limit on inputs per request.
pub const MAX_INPUTS: usize = 2_048;

#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest {
    pub body: Map<String, Value>,
    pub model: String,
    pub prompt_bound: u64,
}

pub fn prepare_embeddings(body: Value, rules: &ApiRules<'_>) -> Result<EmbeddingsRequest, Error> {
    let Value::Object(mut body) = body else {
        return Err(Error::invalid_request(
            "The body must be a JSON object (an OpenAI Embeddings request).",
        ));
    };
    let prompt_bound = input_bound(body.get("input"))?;
    let model = model_of(&mut body, rules.default_model)?;
    check_model_allowed(&model, rules)?;
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(invalid("stream", "Embeddings are not streamed."));
    }
    Ok(EmbeddingsRequest {
        body,
        model,
        prompt_bound,
    })
}

fn bad_input() -> Error {
    invalid(
        "input",
        format!("`input` must be a non-empty string, or 1-{MAX_INPUTS} strings or token arrays."),
    )
}

/// Text counts its bytes (no token covers less than one); a token array counts its tokens.
fn input_bound(input: Option<&Value>) -> Result<u64, Error> {
    let one = |v: &Value| -> Option<u64> {
        match v {
            Value::String(s) if !s.is_empty() => Some(s.len() as u64),
            Value::Array(tokens) if !tokens.is_empty() && tokens.iter().all(Value::is_u64) => {
                Some(tokens.len() as u64)
            }
            _ => None,
        }
    };
    match input {
        Some(Value::String(_)) => one(input.unwrap_or(&Value::Null)).ok_or_else(bad_input),
        Some(Value::Array(items)) if items.iter().all(Value::is_u64) && !items.is_empty() => {
            Ok(items.len() as u64)
        }
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_INPUTS => items
            .iter()
            .map(|i| one(i).map(|n| n.saturating_add(PER_PART)))
            .try_fold(0u64, |sum, n| n.map(|n| sum.saturating_add(n)))
            .ok_or_else(bad_input),
        _ => Err(bad_input()),
    }
}

/// An embeddings answer's usage (`prompt_tokens`; nothing is generated).
pub fn usage(v: &Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    let prompt = u.get("prompt_tokens").and_then(Value::as_u64)?;
    Some(Usage {
        prompt_tokens: prompt,
        completion_tokens: 0,
        total_tokens: u
            .get("total_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(prompt),
        ..Usage::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::policy::UpstreamPolicy;
    use serde_json::json;

    fn prep(body: Value) -> Result<EmbeddingsRequest, Error> {
        let policy = UpstreamPolicy::default();
        prepare_embeddings(
            body,
            &ApiRules {
                default_model: Some("emb"),
                models: &[],
                policy: &policy,
            },
        )
    }

    #[test]
    fn inputs_of_every_shape_are_bounded() {
        assert_eq!(prep(json!({"input": "héllo"})).unwrap().prompt_bound, 6);
        assert_eq!(
            prep(json!({"input": ["ab", "c"]})).unwrap().prompt_bound,
            3 + 2 * PER_PART
        );
        assert_eq!(prep(json!({"input": [1, 2, 3]})).unwrap().prompt_bound, 3);
        assert_eq!(
            prep(json!({"input": [[1, 2], [3]]})).unwrap().prompt_bound,
            3 + 2 * PER_PART
        );
        let r = prep(json!({"input": "x", "dimensions": 64})).unwrap();
        assert_eq!(r.model, "emb");
        assert_eq!(r.body["model"], "emb");
    }

    #[test]
    fn bad_inputs_name_the_field() {
        for body in [
            json!({}),
            json!({"input": ""}),
            json!({"input": []}),
            json!({"input": [1, "a"]}),
            json!({"input": [[]]}),
            json!({"input": {"a": 1}}),
        ] {
            assert_eq!(
                prep(body.clone()).unwrap_err().extra["param"],
                "input",
                "{body}"
            );
        }
        assert_eq!(
            prep(json!({"input": "x", "model": "other"}))
                .unwrap_err()
                .kind(),
            "model-not-allowed"
        );
        let many: Vec<Value> = (0..=MAX_INPUTS).map(|_| json!("a")).collect();
        assert!(prep(json!({ "input": many })).is_err());
    }

    #[test]
    fn usage_is_the_prompt() {
        let u = usage(&json!({"usage": {"prompt_tokens": 8, "total_tokens": 8}})).unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (8, 0, 8)
        );
    }
}
