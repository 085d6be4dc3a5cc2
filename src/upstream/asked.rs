//! What a client asked one of the metered endpoints for, once checked: a chat completion, a
//! response (Responses API) or embeddings. The data plane admits, forwards and meters each the same
//! way; what differs (the upstream path, the cap's name, how output and usage are read) is here.

use serde_json::{Map, Value};

use crate::error::Error;
use crate::limits::meter;
use crate::stream::relay::{Usage, Wire};
use crate::upstream::chat::{prepare_chat, ApiRules, ChatRequest};
use crate::upstream::embeddings::{prepare_embeddings, EmbeddingsRequest};
use crate::upstream::policy::CapField;
use crate::upstream::responses::{prepare_responses, ResponsesRequest};
use crate::usage::Endpoint;

#[derive(Debug, Clone, PartialEq)]
pub enum Asked {
    Chat(ChatRequest),
    Responses(ResponsesRequest),
    Embeddings(EmbeddingsRequest),
}

impl Asked {
    /// Checks `body` as a request to `endpoint` (Anthropic Messages arrive already translated to
    /// chat).
    pub fn prepare(endpoint: Endpoint, body: Value, rules: &ApiRules<'_>) -> Result<Asked, Error> {
        Ok(match endpoint {
            Endpoint::Chat | Endpoint::Messages => Asked::Chat(prepare_chat(body, rules)?),
            Endpoint::Responses => Asked::Responses(prepare_responses(body, rules)?),
            Endpoint::Embeddings => Asked::Embeddings(prepare_embeddings(body, rules)?),
        })
    }

    /// The upstream path under the API's base URL.
    pub fn path(&self) -> &'static str {
        match self {
            Asked::Chat(_) => "chat/completions",
            Asked::Responses(_) => "responses",
            Asked::Embeddings(_) => "embeddings",
        }
    }

    pub fn body(&self) -> &Map<String, Value> {
        match self {
            Asked::Chat(c) => &c.body,
            Asked::Responses(r) => &r.body,
            Asked::Embeddings(e) => &e.body,
        }
    }

    pub fn model(&self) -> &str {
        match self {
            Asked::Chat(c) => &c.model,
            Asked::Responses(r) => &r.model,
            Asked::Embeddings(e) => &e.model,
        }
    }

    pub fn stream(&self) -> bool {
        match self {
            Asked::Chat(c) => c.stream,
            Asked::Responses(r) => r.stream,
            Asked::Embeddings(_) => false,
        }
    }

    /// Choices asked for.
    pub fn n(&self) -> u64 {
        match self {
            Asked::Chat(c) => c.n,
            _ => 1,
        }
    }

    /// The client's completion cap. Embeddings generate nothing: their cap is zero.
    pub fn cap(&self) -> Option<u64> {
        match self {
            Asked::Chat(c) => c.cap,
            Asked::Responses(r) => r.cap,
            Asked::Embeddings(_) => Some(0),
        }
    }

    /// Adds to the prompt's bound what the upstream reads beyond the checked body (a Messages body
    /// passed through whole).
    pub fn raise_prompt_bound(&mut self, extra: u64) {
        match self {
            Asked::Chat(c) => c.prompt_bound = c.prompt_bound.saturating_add(extra),
            Asked::Responses(r) => r.prompt_bound = r.prompt_bound.saturating_add(extra),
            Asked::Embeddings(e) => e.prompt_bound = e.prompt_bound.saturating_add(extra),
        }
    }

    pub fn prompt_bound(&self) -> u64 {
        match self {
            Asked::Chat(c) => c.prompt_bound,
            Asked::Responses(r) => r.prompt_bound,
            Asked::Embeddings(e) => e.prompt_bound,
        }
    }

    /// Writes the granted cap where the upstream reads it.
    pub fn set_cap(&mut self, cap: Option<u64>, field: CapField) {
        match self {
            Asked::Chat(c) => c.set_cap(cap, field),
            Asked::Responses(r) => r.set_cap(cap),
            Asked::Embeddings(_) => {}
        }
    }

    /// The stream format relayed.
    pub fn wire(&self) -> Wire {
        match self {
            Asked::Responses(_) => Wire::Responses,
            _ => Wire::Chat,
        }
    }

    /// The gateway asked for the usage chunk itself and hides it (chat streams only).
    pub fn strip_usage(&self) -> bool {
        matches!(self, Asked::Chat(c) if !c.client_wants_usage)
    }

    /// Bytes of generated output in a whole answer.
    pub fn output_bytes(&self, answer: &Value) -> u64 {
        match self {
            Asked::Chat(_) => meter::output_bytes(answer),
            Asked::Responses(_) => crate::upstream::responses::output_bytes(answer),
            Asked::Embeddings(_) => 0,
        }
    }

    /// The usage a whole answer reports.
    pub fn usage(&self, answer: &Value) -> Option<Usage> {
        match self {
            Asked::Chat(_) => Usage::from_json(answer),
            Asked::Responses(_) => crate::upstream::responses::usage(answer),
            Asked::Embeddings(_) => crate::upstream::embeddings::usage(answer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::policy::UpstreamPolicy;
    use serde_json::json;

    #[test]
    fn each_endpoint_names_its_path_cap_and_wire() {
        let policy = UpstreamPolicy::default();
        let rules = ApiRules {
            default_model: Some("m"),
            models: &[],
            policy: &policy,
        };
        let chat = Asked::prepare(
            Endpoint::Chat,
            json!({"messages": [{"role": "user", "content": "x"}]}),
            &rules,
        )
        .unwrap();
        let mut resp = Asked::prepare(
            Endpoint::Responses,
            json!({"input": "x", "stream": true}),
            &rules,
        )
        .unwrap();
        let emb = Asked::prepare(Endpoint::Embeddings, json!({"input": "x"}), &rules).unwrap();
        assert_eq!(
            [chat.path(), resp.path(), emb.path()],
            ["chat/completions", "responses", "embeddings"]
        );
        assert_eq!((resp.wire(), resp.stream()), (Wire::Responses, true));
        assert_eq!(emb.cap(), Some(0), "nothing generated");
        resp.set_cap(Some(9), CapField::Auto);
        assert_eq!(resp.body()["max_output_tokens"], 9);
        assert_eq!(chat.model(), "m");
    }
}
