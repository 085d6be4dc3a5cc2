//! Records the gateway stores (project, api, consumer, key) and validation of the owner's admin input.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use crate::error::Error;
use crate::limits::spend::{PriceInput, PriceTable};
use crate::time::rfc3339;
use crate::upstream::policy::{CapField, PolicyInput, UpstreamPolicy};

/// How end users of an API prove who they are. Consumer keys are accepted in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Managed,
    ConsumerKeyOnly,
    ByoJwt,
}

impl AuthMode {
    /// Accepts the documented names; `aerostack` is the name users know for `managed`.
    pub fn parse(s: &str) -> Result<AuthMode, Error> {
        match s {
            "managed" | "aerostack" => Ok(AuthMode::Managed),
            "consumer-key-only" => Ok(AuthMode::ConsumerKeyOnly),
            "byo-jwt" => Ok(AuthMode::ByoJwt),
            other => Err(Error::invalid_request(format!(
                "auth_mode `{other}` is not one of managed, consumer-key-only, byo-jwt"
            ))),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Managed => "managed",
            AuthMode::ConsumerKeyOnly => "consumer-key-only",
            AuthMode::ByoJwt => "byo-jwt",
        }
    }
}

/// Parses a JSON request body: syntax errors are `invalid-json`, shape errors `invalid-request`.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid_json(
            "The request body is empty; send a JSON object.",
        ));
    }
    // Syntax first, so any malformed document is `invalid-json` whatever its shape.
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid_json(format!("The body is not valid JSON: {e}.")))?;
    serde_json::from_value(value)
        .map_err(|e| Error::invalid_request(format!("The JSON body does not fit: {e}.")))
}

/// `Some(None)` for an explicit `null`, `None` for an absent field (with `#[serde(default)]`).
pub(crate) fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

pub fn validate_slug(field: &str, s: &str) -> Result<(), Error> {
    let ok = (1..=63).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_request(format!(
            "`{field}` must be 1-63 characters of a-z, 0-9 and `-`, not starting or ending with `-`"
        )))
    }
}

pub fn validate_text(field: &str, s: &str, max: usize) -> Result<(), Error> {
    if s.trim().is_empty() || s.chars().count() > max || s.chars().any(|c| c.is_control()) {
        return Err(Error::invalid_request(format!(
            "`{field}` must be 1-{max} printable characters"
        )));
    }
    Ok(())
}

/// The base URL of an OpenAI-compatible server, or `demo` for the built-in demo upstream.
pub fn validate_base_url(s: &str) -> Result<(), Error> {
    if s == "demo" {
        return Ok(());
    }
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    match host {
        Some(h) if !h.is_empty() && s.len() <= 2048 && !s.contains(char::is_whitespace) && !s.contains(['?', '#']) => Ok(()),
        _ => Err(Error::invalid_request(
            "`upstream.base_url` must be an http(s) URL such as https://api.openai.com/v1, or `demo`",
        )),
    }
}

pub const DEFAULT_TIMEOUT_MS: u32 = 120_000;

fn validate_upstream_extras(
    models: Option<&Vec<String>>,
    default_model: Option<&String>,
    timeout_ms: Option<u32>,
) -> Result<(), Error> {
    if let Some(models) = models {
        if models.len() > 100 {
            return Err(Error::invalid_request(
                "`upstream.models` may list at most 100 models",
            ));
        }
        for m in models {
            validate_text("upstream.models[]", m, 200)?;
        }
    }
    if let Some(m) = default_model {
        validate_text("upstream.default_model", m, 200)?;
    }
    if let Some(t) = timeout_ms {
        if !(100..=600_000).contains(&t) {
            return Err(Error::invalid_request(
                "`upstream.timeout_ms` must be between 100 and 600000",
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    pub slug: String,
    pub name: String,
}

impl NewProject {
    pub fn validate(&self) -> Result<(), Error> {
        validate_slug("slug", &self.slug)?;
        validate_text("name", &self.name, 200)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApi {
    pub project: String,
    pub slug: String,
    pub name: String,
    #[serde(default = "default_mode")]
    pub auth_mode: String,
    /// The same fields as a patch; `base_url` is required here.
    pub upstream: UpstreamPatch,
    pub prices: Option<BTreeMap<String, PriceInput>>,
}

fn default_mode() -> String {
    "consumer-key-only".into()
}

impl NewApi {
    pub fn validate(&self) -> Result<AuthMode, Error> {
        validate_slug("slug", &self.slug)?;
        validate_text("name", &self.name, 200)?;
        if self.upstream.base_url.is_none() {
            return Err(Error::invalid_request("`upstream.base_url` is required")
                .with_field("param", "upstream.base_url"));
        }
        self.upstream.validate()?;
        if let Some(p) = &self.prices {
            PriceTable::from_input(p)?;
        }
        AuthMode::parse(&self.auth_mode)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamPatch {
    pub base_url: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub api_key: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub default_model: Option<Option<String>>,
    pub models: Option<Vec<String>>,
    pub timeout_ms: Option<u32>,
    pub allow_any_model: Option<bool>,
    pub max_n: Option<u64>,
    pub allowed_params: Option<Vec<String>>,
    pub image_tokens: Option<u64>,
    pub max_tokens_field: Option<CapField>,
}

impl UpstreamPatch {
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(b) = &self.base_url {
            validate_base_url(b)?;
        }
        if let Some(Some(k)) = &self.api_key {
            validate_text("upstream.api_key", k, 4096)?;
        }
        validate_upstream_extras(
            self.models.as_ref(),
            self.default_model.as_ref().and_then(|m| m.as_ref()),
            self.timeout_ms,
        )?;
        self.policy().validate()
    }

    pub fn policy(&self) -> PolicyInput {
        PolicyInput {
            allow_any_model: self.allow_any_model,
            max_n: self.max_n,
            allowed_params: self.allowed_params.clone(),
            image_tokens: self.image_tokens,
            max_tokens_field: self.max_tokens_field,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiPatch {
    pub name: Option<String>,
    pub auth_mode: Option<String>,
    pub upstream: Option<UpstreamPatch>,
    pub ip_allowlist: Option<Vec<String>>,
    pub credential: Option<crate::auth::config::CredentialConfig>,
    /// Replaces the whole price table (`{}` clears it).
    pub prices: Option<BTreeMap<String, PriceInput>>,
}

impl ApiPatch {
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(n) = &self.name {
            validate_text("name", n, 200)?;
        }
        if let Some(m) = &self.auth_mode {
            if AuthMode::parse(m)? == AuthMode::ByoJwt {
                return Err(Error::invalid_request(
                    "Switch to byo-jwt with PUT .../auth-mode, which takes its `byo_jwt_config`",
                ));
            }
        }
        if let Some(list) = &self.ip_allowlist {
            crate::auth::config::parse_allowlist(list)?;
        }
        if let Some(c) = &self.credential {
            c.validate()?;
        }
        if let Some(u) = &self.upstream {
            u.validate()?;
        }
        if let Some(p) = &self.prices {
            PriceTable::from_input(p)?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewConsumer {
    pub name: String,
    pub description: Option<String>,
}

impl NewConsumer {
    pub fn validate(&self) -> Result<(), Error> {
        validate_text("name", &self.name, 200)?;
        if let Some(d) = &self.description {
            if d.chars().count() > 2000 {
                return Err(Error::invalid_request(
                    "`description` may be at most 2000 characters",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerPatch {
    pub status: Option<String>,
    pub name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub description: Option<Option<String>>,
}

impl ConsumerPatch {
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(s) = &self.status {
            if s != "enabled" && s != "disabled" {
                return Err(Error::invalid_request(
                    "`status` must be `enabled` or `disabled`",
                ));
            }
        }
        if let Some(n) = &self.name {
            validate_text("name", n, 200)?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
}

impl NewKey {
    pub fn validate(&self) -> Result<(), Error> {
        validate_text("name", &self.name, 200)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Project {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub created_at: i64,
    #[serde(default = "default_token_ttl")]
    pub access_token_ttl_s: i64,
    #[serde(default)]
    pub email_from: Option<String>,
    #[serde(default)]
    pub email_subject: Option<String>,
    #[serde(default = "empty_list")]
    pub allowed_origins_json: String,
    #[serde(default = "first_generation")]
    pub signing_generation: i64,
    #[serde(default)]
    pub previous_key_retired_at: Option<i64>,
}

fn default_token_ttl() -> i64 {
    900
}
fn empty_list() -> String {
    "[]".into()
}
fn first_generation() -> i64 {
    1
}

impl Project {
    pub fn new(id: String, slug: String, name: String, created_at: i64) -> Project {
        Project {
            id,
            slug,
            name,
            created_at,
            access_token_ttl_s: default_token_ttl(),
            email_from: None,
            email_subject: None,
            allowed_origins_json: empty_list(),
            signing_generation: 1,
            previous_key_retired_at: None,
        }
    }

    pub fn allowed_origins(&self) -> Vec<String> {
        serde_json::from_str(&self.allowed_origins_json).unwrap_or_default()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "slug": self.slug, "name": self.name, "created_at": rfc3339(self.created_at),
            "access_token_ttl_s": self.access_token_ttl_s, "email_from": self.email_from, "email_subject": self.email_subject,
            "allowed_origins": self.allowed_origins(),
        })
    }
}

/// `PATCH /api/v1/projects/{project}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectPatch {
    pub name: Option<String>,
    pub allowed_origins: Option<Vec<String>>,
    pub access_token_ttl_s: Option<i64>,
    #[serde(default, deserialize_with = "nullable")]
    pub email_from: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub email_subject: Option<Option<String>>,
}

/// An allowed browser origin: `*`, or `scheme://host[:port]` with nothing after it.
pub fn validate_origin(o: &str) -> Result<(), Error> {
    if o == "*" {
        return Ok(());
    }
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"));
    match rest {
        Some(host)
            if !host.is_empty() && !host.contains(['/', '?', '#', ' ']) && o.len() <= 300 =>
        {
            Ok(())
        }
        _ => Err(Error::invalid_request(format!(
            "`{o}` is not an origin; use e.g. https://app.example.com or *"
        ))),
    }
}

impl ProjectPatch {
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(n) = &self.name {
            validate_text("name", n, 200)?;
        }
        if let Some(origins) = &self.allowed_origins {
            if origins.len() > 100 {
                return Err(Error::invalid_request(
                    "`allowed_origins` may list at most 100 origins",
                ));
            }
            origins.iter().try_for_each(|o| validate_origin(o))?;
        }
        if let Some(ttl) = self.access_token_ttl_s {
            if !(60..=86_400).contains(&ttl) {
                return Err(Error::invalid_request(
                    "`access_token_ttl_s` must be between 60 and 86400 seconds",
                ));
            }
        }
        if let Some(Some(f)) = &self.email_from {
            validate_text("email_from", f, 300)?;
        }
        if let Some(Some(f)) = &self.email_subject {
            validate_text("email_subject", f, 200)?;
        }
        Ok(())
    }
}

/// An API as stored; `upstream_key_enc` is the provider key encrypted at rest.
#[derive(Debug, Clone, Deserialize)]
pub struct Api {
    pub id: String,
    pub project_id: String,
    pub project_slug: String,
    pub slug: String,
    pub name: String,
    pub auth_mode: String,
    pub upstream_base_url: String,
    pub upstream_key_enc: Option<String>,
    pub default_model: Option<String>,
    pub models_json: String,
    pub timeout_ms: i64,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default)]
    pub byo_jwt_json: Option<String>,
    #[serde(default = "empty_list")]
    pub ip_allowlist_json: String,
    #[serde(default = "empty_object")]
    pub credential_json: String,
    #[serde(default = "empty_object")]
    pub upstream_policy_json: String,
    #[serde(default = "empty_object")]
    pub prices_json: String,
}

/// Stored configuration that does not decode: refused (never read as a default), and logged.
fn undecodable(what: &str, id: &str, e: serde_json::Error) -> Error {
    Error::misconfigured(format!(
        "The API's stored {what} cannot be read, so requests are refused; set it again. ({e})"
    ))
    .with_field("api_id", id)
}

fn empty_object() -> String {
    "{}".into()
}

impl Api {
    pub fn mode(&self) -> AuthMode {
        AuthMode::parse(&self.auth_mode).unwrap_or(AuthMode::ConsumerKeyOnly)
    }

    pub fn byo_jwt(&self) -> Option<crate::auth::config::ByoJwtConfig> {
        self.byo_jwt_json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
    }

    /// The IP allowlist; one that cannot be read refuses every request (never "allow all").
    pub fn ip_allowlist(&self) -> Result<Vec<String>, Error> {
        serde_json::from_str(&self.ip_allowlist_json)
            .map_err(|e| undecodable("IP allowlist", &self.id, e))
    }

    pub fn policy(&self) -> Result<UpstreamPolicy, Error> {
        serde_json::from_str(&self.upstream_policy_json)
            .map_err(|e| undecodable("upstream policy", &self.id, e))
    }

    pub fn prices(&self) -> Result<PriceTable, Error> {
        serde_json::from_str(&self.prices_json).map_err(|e| undecodable("price table", &self.id, e))
    }

    /// The API's own model list (the allowlist, without the default model).
    pub fn listed_models(&self) -> Vec<String> {
        serde_json::from_str(&self.models_json).unwrap_or_default()
    }

    pub fn credential(&self) -> crate::auth::config::CredentialConfig {
        serde_json::from_str(&self.credential_json).unwrap_or_default()
    }

    pub fn models(&self) -> Vec<String> {
        let mut models: Vec<String> = serde_json::from_str(&self.models_json).unwrap_or_default();
        if let Some(d) = &self.default_model {
            if !models.contains(d) {
                models.insert(0, d.clone());
            }
        }
        models
    }

    pub fn timeout_ms(&self) -> u32 {
        u32::try_from(self.timeout_ms).unwrap_or(DEFAULT_TIMEOUT_MS)
    }

    /// The owner's view: never the provider key, only whether one is set.
    pub fn to_json(&self) -> Value {
        let listed = self.listed_models();
        let policy = self.policy().ok();
        let prices = self.prices().ok();
        let unpriced: Vec<String> = match &prices {
            Some(p) => self
                .models()
                .into_iter()
                .filter(|m| p.get(m).is_none())
                .collect(),
            None => Vec::new(),
        };
        json!({
            "id": self.id,
            "project": self.project_slug,
            "slug": self.slug,
            "name": self.name,
            "auth_mode": self.auth_mode,
            "upstream": {
                "base_url": self.upstream_base_url,
                "has_api_key": self.upstream_key_enc.is_some(),
                "default_model": self.default_model,
                "models": listed,
                "timeout_ms": self.timeout_ms,
                "allow_any_model": policy.as_ref().map(|p| p.allow_any_model),
                "max_n": policy.as_ref().map(|p| p.max_n),
                "allowed_params": policy.as_ref().map(|p| p.allowed_params.clone()),
                "image_tokens": policy.as_ref().map(|p| p.image_tokens),
                "max_tokens_field": policy.as_ref().map(|p| p.max_tokens_field),
            },
            "prices": prices.as_ref().map(PriceTable::to_json),
            "unpriced_models": unpriced,
            "byo_jwt_config": self.byo_jwt(),
            "ip_allowlist": self.ip_allowlist().ok(),
            "credential": self.credential(),
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Consumer {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub description: Option<String>,
    pub kind: String,
    pub status: String,
    pub created_at: i64,
    #[serde(default)]
    pub email: Option<String>,
}

impl Consumer {
    pub fn to_json(&self, project_slug: &str) -> Value {
        json!({
            "id": self.id, "project": project_slug, "name": self.name, "description": self.description,
            "kind": self.kind, "status": self.status, "email": self.email, "created_at": rfc3339(self.created_at),
        })
    }
}

/// A consumer key as listed: the prefix only, never the secret or its hash.
#[derive(Debug, Clone, Deserialize)]
pub struct KeyListing {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub consumer_id: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

impl KeyListing {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "name": self.name, "prefix": self.prefix, "consumer_id": self.consumer_id,
            "created_at": rfc3339(self.created_at), "last_used_at": self.last_used_at.map(rfc3339),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_modes_accept_documented_names() {
        assert_eq!(AuthMode::parse("aerostack").unwrap(), AuthMode::Managed);
        assert_eq!(AuthMode::parse("byo-jwt").unwrap().as_str(), "byo-jwt");
        assert_eq!(AuthMode::parse("password").unwrap_err().status, 400);
    }

    #[test]
    fn body_errors_are_classified() {
        assert_eq!(
            parse_body::<NewProject>(b"{nope").unwrap_err().kind(),
            "invalid-json"
        );
        assert_eq!(
            parse_body::<NewProject>(b"").unwrap_err().kind(),
            "invalid-json"
        );
        assert_eq!(
            parse_body::<NewProject>(br#"{"slug":"a"}"#)
                .unwrap_err()
                .kind(),
            "invalid-request"
        );
        assert_eq!(
            parse_body::<NewProject>(br#"{"slug":"a","name":"b","x":1}"#)
                .unwrap_err()
                .kind(),
            "invalid-request"
        );
        assert!(parse_body::<NewProject>(br#"{"slug":"a","name":"b"}"#).is_ok());
    }

    #[test]
    fn slugs_and_urls_are_checked() {
        assert!(validate_slug("slug", "demo-1").is_ok());
        for bad in ["", "Demo", "-a", "a-", "a b", "a/b", &"a".repeat(64)] {
            assert!(validate_slug("slug", bad).is_err(), "{bad}");
        }
        assert!(validate_base_url("demo").is_ok());
        assert!(validate_base_url("https://api.openai.com/v1").is_ok());
        assert!(validate_base_url("http://127.0.0.1:9000").is_ok());
        for bad in [
            "ftp://x",
            "https://",
            "https:// x",
            "api.openai.com",
            "http://x/?a=1",
        ] {
            assert!(validate_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patch_distinguishes_null_from_absent() {
        let p: ApiPatch = parse_body(br#"{"upstream":{"api_key":null}}"#).unwrap();
        assert_eq!(p.upstream.as_ref().unwrap().api_key, Some(None));
        let p: ApiPatch = parse_body(br#"{"upstream":{}}"#).unwrap();
        assert_eq!(p.upstream.as_ref().unwrap().api_key, None);
        let p: ApiPatch = parse_body(br#"{"upstream":{"timeout_ms":5}}"#).unwrap();
        assert!(p.validate().is_err());
    }

    fn sample_api() -> Api {
        Api {
            id: "api_1".into(),
            project_id: "prj_1".into(),
            project_slug: "demo".into(),
            slug: "chat".into(),
            name: "Chat".into(),
            auth_mode: "consumer-key-only".into(),
            upstream_base_url: "demo".into(),
            upstream_key_enc: Some("v1:secretblob".into()),
            default_model: Some("m1".into()),
            models_json: r#"["m2"]"#.into(),
            timeout_ms: 1000,
            created_at: 0,
            updated_at: 0,
            byo_jwt_json: None,
            ip_allowlist_json: "[]".into(),
            credential_json: "{}".into(),
            upstream_policy_json: "{}".into(),
            prices_json: "{}".into(),
        }
    }

    #[test]
    fn api_view_never_contains_the_provider_key() {
        let api = sample_api();
        let v = api.to_json().to_string();
        assert!(!v.contains("secretblob"));
        assert!(v.contains("\"has_api_key\":true"));
        assert_eq!(api.models(), vec!["m1".to_string(), "m2".to_string()]);
        assert_eq!(api.to_json()["unpriced_models"], json!(["m1", "m2"]));
    }

    #[test]
    fn stored_config_that_does_not_decode_refuses_instead_of_defaulting() {
        let api = Api {
            ip_allowlist_json: "[\"10.0.0.0/8\"".into(),
            upstream_policy_json: "{\"max_n\": \"four\"}".into(),
            prices_json: "[]".into(),
            ..sample_api()
        };
        assert_eq!(api.ip_allowlist().unwrap_err().status, 503);
        assert_eq!(api.policy().unwrap_err().kind(), "gateway-misconfigured");
        assert!(api.prices().is_err());
    }
}
