//! What an API lets its consumers send upstream: the model allowlist, the most choices per request,
//! the cost-changing parameters it accepts, how images are counted and which cap field the upstream
//! reads. Stored as one JSON column and decoded once, at the store boundary.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::limits::meter::DEFAULT_IMAGE_TOKENS;

/// Parameters that change what a request costs; refused unless the API lists them.
pub const COST_PARAMS: [&str; 12] = [
    "service_tier",
    "store",
    "modalities",
    "audio",
    "web_search_options",
    "prediction",
    // Responses: the upstream reads a stored history the gateway cannot bound.
    "previous_response_id",
    "conversation",
    // Anthropic, when a Messages body passes through whole (`providers::anthropic::passthrough_extra`).
    "mcp_servers",
    "container",
    "server_tools",
    "documents_by_reference",
];

/// The name the upstream reads the completion cap from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapField {
    /// The name the client used (`max_completion_tokens` when it sent both), else `max_tokens`.
    #[default]
    Auto,
    MaxTokens,
    MaxCompletionTokens,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamPolicy {
    /// With an empty `models` list, any model is forwarded (otherwise only the default model).
    #[serde(default)]
    pub allow_any_model: bool,
    #[serde(default = "default_max_n")]
    pub max_n: u64,
    /// Cost-changing parameters (of `COST_PARAMS`) the owner allows.
    #[serde(default)]
    pub allowed_params: Vec<String>,
    #[serde(default = "default_image_tokens")]
    pub image_tokens: u64,
    #[serde(default)]
    pub max_tokens_field: CapField,
    /// Data-plane answers carry a `Server-Timing` header (always on in dev mode). Kept with the
    /// policy, where the API's other per-request switches are; omitted from storage while off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub server_timing: bool,
    /// How often a failed first try is repeated (429, 5xx, timeouts, connection errors; before any
    /// byte reached the client).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Models tried in order once the retries are spent (`provider/model` names, or plain ones for
    /// the API's own upstream).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// An `mtls_certificates` binding the upstream fetch goes through, so the provider sees the
    /// gateway's client certificate; `None` is the global fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls_binding: Option<String>,
}

fn default_retries() -> u32 {
    1
}

/// The most retries an API may ask for, and the most fallbacks.
pub const MAX_RETRIES: u32 = 5;
pub const MAX_FALLBACKS: usize = 5;

fn default_max_n() -> u64 {
    4
}
fn default_image_tokens() -> u64 {
    DEFAULT_IMAGE_TOKENS
}

impl Default for UpstreamPolicy {
    fn default() -> Self {
        UpstreamPolicy {
            allow_any_model: false,
            max_n: default_max_n(),
            allowed_params: Vec::new(),
            image_tokens: default_image_tokens(),
            max_tokens_field: CapField::Auto,
            server_timing: false,
            retries: default_retries(),
            fallbacks: Vec::new(),
            mtls_binding: None,
        }
    }
}

/// The owner's changes to the policy (fields of `upstream` in the admin API).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PolicyInput {
    pub allow_any_model: Option<bool>,
    pub max_n: Option<u64>,
    pub allowed_params: Option<Vec<String>>,
    pub image_tokens: Option<u64>,
    pub max_tokens_field: Option<CapField>,
    pub retries: Option<u32>,
    pub fallbacks: Option<Vec<String>>,
    /// `Some(None)` clears it.
    #[serde(default, deserialize_with = "crate::input::validate::nullable")]
    pub mtls_binding: Option<Option<String>>,
}

/// Whether `name` can be a Worker binding's name (a JavaScript identifier of ASCII letters, digits
/// and `_`, at most 64 characters).
pub fn is_binding_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && name.len() <= 64
}

/// Whether binding `name` is among the operator's `UPSTREAM_MTLS_BINDINGS` (names separated by
/// commas or spaces); none listed allows none.
pub fn binding_allowed(name: &str, listed: Option<&str>) -> bool {
    listed.is_some_and(|l| {
        l.split([',', ' '])
            .map(str::trim)
            .any(|n| !n.is_empty() && n == name)
    })
}

fn refused(param: &str, detail: String) -> Error {
    Error::invalid_request(detail).with_field("param", param)
}

/// `upstream.fallbacks`: at most [`MAX_FALLBACKS`] model names, each named once, none blank.
fn validate_fallbacks(models: &[String]) -> Result<(), Error> {
    const PARAM: &str = "upstream.fallbacks";
    let max_len = crate::limits::spend::MAX_MODEL_LEN;
    if models.len() > MAX_FALLBACKS {
        return Err(refused(
            PARAM,
            format!(
                "`{PARAM}` lists at most {MAX_FALLBACKS} model names; {} were sent",
                models.len()
            ),
        ));
    }
    for (i, m) in models.iter().enumerate() {
        if m.chars().all(crate::input::validate::is_invisible) {
            return Err(refused(
                PARAM,
                format!("`{PARAM}[{i}]` is empty; name a model"),
            ));
        }
        if m.chars().count() > max_len {
            return Err(refused(
                PARAM,
                format!("`{PARAM}[{i}]` is longer than {max_len} characters"),
            ));
        }
        if m.chars().any(char::is_control) {
            return Err(refused(
                PARAM,
                format!("`{PARAM}[{i}]` holds a control character"),
            ));
        }
        if models[..i].contains(m) {
            return Err(refused(
                PARAM,
                format!("`{PARAM}` names `{m}` twice; each fallback is tried once"),
            ));
        }
    }
    Ok(())
}

/// `upstream.allowed_params`: names of [`COST_PARAMS`], each at most once (so at most all of them).
fn validate_allowed_params(params: &[String]) -> Result<(), Error> {
    const PARAM: &str = "upstream.allowed_params";
    if params.len() > COST_PARAMS.len() {
        return Err(refused(
            PARAM,
            format!(
                "`{PARAM}` lists at most {} names (each of {} once); {} were sent",
                COST_PARAMS.len(),
                COST_PARAMS.join(", "),
                params.len()
            ),
        ));
    }
    for (i, p) in params.iter().enumerate() {
        if !COST_PARAMS.contains(&p.as_str()) {
            return Err(refused(
                PARAM,
                format!(
                    "`{PARAM}` may list only {}; `{p}` is forwarded anyway",
                    COST_PARAMS.join(", ")
                ),
            ));
        }
        if params[..i].contains(p) {
            return Err(refused(PARAM, format!("`{PARAM}` names `{p}` twice")));
        }
    }
    Ok(())
}

impl PolicyInput {
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(n) = self.max_n {
            if !(1..=128).contains(&n) {
                return Err(
                    Error::invalid_request("`upstream.max_n` must be between 1 and 128")
                        .with_field("param", "upstream.max_n"),
                );
            }
        }
        if let Some(t) = self.image_tokens {
            if !(1..=1_000_000).contains(&t) {
                return Err(Error::invalid_request(
                    "`upstream.image_tokens` must be between 1 and 1000000",
                )
                .with_field("param", "upstream.image_tokens"));
            }
        }
        if self.retries.is_some_and(|r| r > MAX_RETRIES) {
            return Err(Error::invalid_request(format!(
                "`upstream.retries` must be between 0 and {MAX_RETRIES}"
            ))
            .with_field("param", "upstream.retries"));
        }
        if let Some(f) = &self.fallbacks {
            validate_fallbacks(f)?;
        }
        if let Some(Some(name)) = &self.mtls_binding {
            if !is_binding_name(name) {
                return Err(Error::invalid_request(
                    "`upstream.mtls_binding` is the name of an `[[mtls_certificates]]` binding in wrangler.toml (letters, digits, `_`; not starting with a digit)",
                )
                .with_field("param", "upstream.mtls_binding"));
            }
        }
        if let Some(params) = &self.allowed_params {
            validate_allowed_params(params)?;
        }
        Ok(())
    }

    pub fn apply(&self, base: &UpstreamPolicy) -> UpstreamPolicy {
        UpstreamPolicy {
            allow_any_model: self.allow_any_model.unwrap_or(base.allow_any_model),
            max_n: self.max_n.unwrap_or(base.max_n),
            allowed_params: self
                .allowed_params
                .clone()
                .unwrap_or_else(|| base.allowed_params.clone()),
            image_tokens: self.image_tokens.unwrap_or(base.image_tokens),
            max_tokens_field: self.max_tokens_field.unwrap_or(base.max_tokens_field),
            server_timing: base.server_timing,
            retries: self.retries.unwrap_or(base.retries),
            fallbacks: self
                .fallbacks
                .clone()
                .unwrap_or_else(|| base.fallbacks.clone()),
            mtls_binding: match &self.mtls_binding {
                Some(b) => b.clone(),
                None => base.mtls_binding.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_policy_format_is_unchanged_and_defaults_fill_in() {
        assert_eq!(
            serde_json::to_string(&UpstreamPolicy::default()).unwrap(),
            r#"{"allow_any_model":false,"max_n":4,"allowed_params":[],"image_tokens":1000,"max_tokens_field":"auto","retries":1}"#
        );
        let old: UpstreamPolicy = crate::encoding::from_json("{}").unwrap();
        assert_eq!(old, UpstreamPolicy::default());
        assert!(
            crate::encoding::from_json::<UpstreamPolicy>(r#"{"max_tokens_field":"max_toks"}"#)
                .is_err()
        );
    }

    #[test]
    fn input_is_checked_and_applied() {
        let bad: PolicyInput =
            crate::encoding::from_json(r#"{"allowed_params":["temperature"]}"#).unwrap();
        assert_eq!(bad.validate().unwrap_err().status, 400);
        let zero: PolicyInput = crate::encoding::from_json(r#"{"max_n":0}"#).unwrap();
        assert!(zero.validate().is_err());
        let ok: PolicyInput = crate::encoding::from_json(
            r#"{"allowed_params":["store"],"max_n":8,"max_tokens_field":"max_completion_tokens"}"#,
        )
        .unwrap();
        ok.validate().unwrap();
        let p = ok.apply(&UpstreamPolicy::default());
        assert_eq!(
            (p.max_n, p.allowed_params.len(), p.max_tokens_field),
            (8, 1, CapField::MaxCompletionTokens)
        );
        assert_eq!(p.image_tokens, 1000);
    }

    fn refusal(json: &str) -> (String, String) {
        let input: PolicyInput = crate::encoding::from_json(json).unwrap();
        let e = input.validate().unwrap_err();
        let param = e.extra["param"].as_str().unwrap_or_default().to_string();
        (param, e.detail)
    }

    #[test]
    fn each_bad_fallback_list_says_what_is_wrong() {
        for (json, says) in [
            (r#"{"fallbacks":[""]}"#, "`upstream.fallbacks[0]` is empty"),
            (
                r#"{"fallbacks":["a","  "]}"#,
                "`upstream.fallbacks[1]` is empty",
            ),
            (
                r#"{"fallbacks":["a","b","c","d","e","f"]}"#,
                "at most 5 model names; 6 were sent",
            ),
            (r#"{"fallbacks":["a","b","a"]}"#, "names `a` twice"),
            (r#"{"fallbacks":["a\u0000"]}"#, "control character"),
        ] {
            let (param, detail) = refusal(json);
            assert_eq!(param, "upstream.fallbacks", "{json}");
            assert!(detail.contains(says), "{json}: {detail}");
        }
        let long = format!(r#"{{"fallbacks":["{}"]}}"#, "m".repeat(257));
        assert!(refusal(&long).1.contains("longer than 256 characters"));
        let ok: PolicyInput =
            crate::encoding::from_json(r#"{"fallbacks":["a","openai/b","c","d","e"]}"#).unwrap();
        ok.validate().unwrap();
    }

    #[test]
    fn allowed_params_are_cost_params_each_named_once() {
        let many = serde_json::json!({ "allowed_params": vec!["store"; 5000] }).to_string();
        let (param, detail) = refusal(&many);
        assert_eq!(param, "upstream.allowed_params");
        assert!(detail.contains("at most 12 names"), "{detail}");
        let (param, detail) = refusal(r#"{"allowed_params":["store","audio","store"]}"#);
        assert_eq!(param, "upstream.allowed_params");
        assert!(detail.contains("names `store` twice"), "{detail}");
        let (param, _) = refusal(r#"{"allowed_params":["temperature"]}"#);
        assert_eq!(param, "upstream.allowed_params");
        let all = serde_json::json!({ "allowed_params": COST_PARAMS }).to_string();
        let every: PolicyInput = crate::encoding::from_json(&all).unwrap();
        every.validate().unwrap();
    }

    #[test]
    fn an_mtls_binding_is_a_binding_name_and_null_clears_it() {
        for good in ["PROVIDER_CERT", "cert", "_c1", "$x"] {
            assert!(is_binding_name(good), "{good}");
        }
        for bad in [
            "",
            "1CERT",
            "MY-CERT",
            "my cert",
            "CERT.X",
            "ÉCERT",
            &"A".repeat(65),
        ] {
            let input: PolicyInput =
                serde_json::from_value(serde_json::json!({ "mtls_binding": bad })).unwrap();
            let e = input.validate().unwrap_err();
            assert_eq!(
                (e.status, e.extra["param"].as_str()),
                (400, Some("upstream.mtls_binding")),
                "{bad}"
            );
        }
        let set: PolicyInput =
            crate::encoding::from_json(r#"{"mtls_binding":"PROVIDER_CERT"}"#).unwrap();
        set.validate().unwrap();
        let p = set.apply(&UpstreamPolicy::default());
        assert_eq!(p.mtls_binding.as_deref(), Some("PROVIDER_CERT"));
        assert_eq!(
            serde_json::to_value(&p).unwrap()["mtls_binding"],
            "PROVIDER_CERT",
            "stored with the policy"
        );
        let kept = PolicyInput::default().apply(&p);
        assert_eq!(
            kept.mtls_binding.as_deref(),
            Some("PROVIDER_CERT"),
            "absent keeps it"
        );
        let cleared: PolicyInput = crate::encoding::from_json(r#"{"mtls_binding":null}"#).unwrap();
        assert_eq!(cleared.apply(&p).mtls_binding, None);
    }

    #[test]
    fn only_listed_bindings_carry_upstream_certificates() {
        assert!(binding_allowed("PROVIDER_CERT", Some("PROVIDER_CERT")));
        assert!(binding_allowed("B", Some("A, B,C")));
        assert!(!binding_allowed("ASSETS", Some("PROVIDER_CERT")));
        assert!(!binding_allowed("PROVIDER", Some("PROVIDER_CERT")));
        assert!(!binding_allowed("PROVIDER_CERT", None));
        assert!(!binding_allowed("", Some(",,")));
    }
}
