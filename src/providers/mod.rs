//! The model providers an org can hold keys for: their documented default base URLs, how each takes
//! its key, which wire format it speaks, and routing a request's `provider/model` name to one.

pub mod anthropic;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Openai,
    Anthropic,
    Groq,
    Mistral,
    Cohere,
    Ollama,
}

/// How a provider is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI's Chat Completions (and Responses, Embeddings) at `{base_url}/chat/completions`.
    OpenAi,
    /// Anthropic's Messages API at `{base_url}/v1/messages`.
    Anthropic,
}

impl Provider {
    pub const ALL: [Provider; 6] = [
        Provider::Openai,
        Provider::Anthropic,
        Provider::Groq,
        Provider::Mistral,
        Provider::Cohere,
        Provider::Ollama,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Groq => "groq",
            Provider::Mistral => "mistral",
            Provider::Cohere => "cohere",
            Provider::Ollama => "ollama",
        }
    }

    pub fn parse(s: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The base URL its documentation gives (an org's provider key may override it).
    pub fn default_base_url(self) -> &'static str {
        match self {
            Provider::Openai => "https://api.openai.com/v1",
            Provider::Anthropic => "https://api.anthropic.com",
            Provider::Groq => "https://api.groq.com/openai/v1",
            Provider::Mistral => "https://api.mistral.ai/v1",
            // Cohere's Compatibility API: OpenAI's Chat Completions for Cohere's models.
            Provider::Cohere => "https://api.cohere.ai/compatibility/v1",
            Provider::Ollama => "http://localhost:11434/v1",
        }
    }

    pub fn wire(self) -> Wire {
        match self {
            Provider::Anthropic => Wire::Anthropic,
            _ => Wire::OpenAi,
        }
    }

    /// Whether a key is required (a local Ollama takes none).
    pub fn needs_key(self) -> bool {
        self != Provider::Ollama
    }

    /// The header and value that carry its key.
    pub fn auth_header(self, key: &str) -> (&'static str, String) {
        match self {
            Provider::Anthropic => ("x-api-key", key.to_string()),
            _ => ("authorization", format!("Bearer {key}")),
        }
    }

    /// Whether it takes OpenAI's `stream_options` (Cohere's Compatibility API refuses it).
    pub fn takes_stream_options(self) -> bool {
        self != Provider::Cohere
    }
}

/// How an API reaches its models: one base URL (as before providers), one provider with the org's
/// key, or whichever provider each `provider/model` name names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Route {
    Provider { provider: Provider },
    ByModel,
}

/// `anthropic/claude-3-5-haiku` → (Anthropic, `claude-3-5-haiku`); `None` when the name does not
/// start with a known provider.
pub fn split_model(model: &str) -> Option<(Provider, &str)> {
    let (p, rest) = model.split_once('/')?;
    let provider = Provider::parse(p)?;
    (!rest.is_empty()).then_some((provider, rest))
}

/// Where a request for `model` goes under `route`: the provider and the model name it is sent. A
/// `provider/model` name picks its provider; a plain name goes to the API's own provider, and has
/// none when the API routes by model name.
pub fn pick(route: &Route, model: &str) -> Option<(Provider, String)> {
    if let Some((provider, name)) = split_model(model) {
        return Some((provider, name.to_string()));
    }
    match route {
        Route::Provider { provider } => Some((*provider, model.to_string())),
        Route::ByModel => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_pick_their_provider() {
        let anthropic = Route::Provider {
            provider: Provider::Anthropic,
        };
        assert_eq!(
            pick(&anthropic, "claude-3-5-haiku"),
            Some((Provider::Anthropic, "claude-3-5-haiku".into()))
        );
        assert_eq!(
            pick(&anthropic, "openai/gpt-4o-mini"),
            Some((Provider::Openai, "gpt-4o-mini".into()))
        );
        assert_eq!(
            pick(&Route::ByModel, "anthropic/claude-3-5-haiku"),
            Some((Provider::Anthropic, "claude-3-5-haiku".into()))
        );
        assert_eq!(pick(&Route::ByModel, "gpt-4o"), None);
        assert_eq!(pick(&Route::ByModel, "openai/"), None);
        // An unknown prefix is part of the model's name (e.g. `meta-llama/llama-3` on Groq).
        assert_eq!(
            pick(&anthropic, "meta-llama/llama-3"),
            Some((Provider::Anthropic, "meta-llama/llama-3".into()))
        );
        assert_eq!(
            split_model("groq/meta-llama/llama-4"),
            Some((Provider::Groq, "meta-llama/llama-4"))
        );
    }

    #[test]
    fn providers_round_trip_and_know_their_wire() {
        for p in Provider::ALL {
            assert_eq!(Provider::parse(p.as_str()), Some(p));
            assert!(p.default_base_url().starts_with("http"));
        }
        assert_eq!(Provider::Anthropic.wire(), Wire::Anthropic);
        assert_eq!(Provider::Groq.wire(), Wire::OpenAi);
        assert_eq!(Provider::Anthropic.auth_header("k").0, "x-api-key");
        assert_eq!(Provider::Mistral.auth_header("k").1, "Bearer k");
        assert!(!Provider::Ollama.needs_key());
        assert!(!Provider::Cohere.takes_stream_options());
        let r: Route =
            crate::encoding::from_json(r#"{"kind":"provider","provider":"groq"}"#).unwrap();
        assert_eq!(
            r,
            Route::Provider {
                provider: Provider::Groq
            }
        );
        assert!(
            crate::encoding::from_json::<Route>(r#"{"kind":"provider","provider":"x"}"#).is_err()
        );
    }
}
