//! An API behind the gateway: its upstream, auth mode, credential settings, allowlist, upstream
//! rules and price table, decoded from its row once.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::config::{Allowlist, ByoJwtConfig, Credential};
use crate::auth::mode::AuthMode;
use crate::limits::spend::PriceTable;
use crate::records::json_text;
use crate::time::rfc3339;
use crate::upstream::policy::UpstreamPolicy;

pub const DEFAULT_TIMEOUT_MS: u32 = 120_000;

/// The base URL that selects the built-in demo upstream.
pub const DEMO_UPSTREAM: &str = "demo";

/// An API as stored; `upstream_key_enc` is the provider key encrypted at rest. Serialized in its
/// row's shape, which is also what the hot-path cache keeps in KV.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Api {
    pub id: String,
    pub project_id: String,
    pub project_slug: String,
    pub slug: String,
    pub name: String,
    #[serde(rename = "auth_mode")]
    pub mode: AuthMode,
    pub upstream_base_url: String,
    pub upstream_key_enc: Option<String>,
    pub default_model: Option<String>,
    /// The API's own model list: an allowlist (the default model is allowed besides).
    #[serde(
        rename = "models_json",
        deserialize_with = "json_text::required",
        serialize_with = "json_text::write"
    )]
    pub models: Vec<String>,
    pub timeout_ms: u32,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(
        rename = "byo_jwt_json",
        deserialize_with = "json_text::optional",
        serialize_with = "json_text::write_optional"
    )]
    pub byo_jwt: Option<ByoJwtConfig>,
    #[serde(
        rename = "ip_allowlist_json",
        deserialize_with = "json_text::required",
        serialize_with = "json_text::write"
    )]
    pub ip_allowlist: Allowlist,
    #[serde(
        rename = "credential_json",
        deserialize_with = "json_text::required",
        serialize_with = "json_text::write"
    )]
    pub credential: Credential,
    #[serde(
        rename = "upstream_policy_json",
        deserialize_with = "json_text::required",
        serialize_with = "json_text::write"
    )]
    pub policy: UpstreamPolicy,
    #[serde(
        rename = "prices_json",
        deserialize_with = "json_text::required",
        serialize_with = "json_text::write"
    )]
    pub prices: PriceTable,
    /// The org of the API's project (whose provider keys a provider route uses).
    pub org_id: String,
    /// How it reaches its models: `None` is its own base URL and key.
    #[serde(
        rename = "upstream_route_json",
        deserialize_with = "json_text::optional",
        serialize_with = "json_text::write_optional"
    )]
    pub route: Option<crate::providers::Route>,
    /// Client certificates (`off` in rows and cache entries from before 0013).
    #[serde(default)]
    pub mtls: crate::auth::mtls::MtlsMode,
    /// Whether OAuth access tokens are accepted outside managed mode, and the scopes they need
    /// (a record cached before the column existed has the column's default, no OAuth).
    #[serde(
        rename = "oauth_json",
        default,
        deserialize_with = "json_text::required",
        serialize_with = "json_text::write"
    )]
    pub oauth: ApiOAuth,
}

/// An API's OAuth settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiOAuth {
    /// OAuth access tokens of the project are accepted in every auth mode (always in managed).
    pub oauth: bool,
    /// Scopes an OAuth token must hold to call the API.
    pub required_scopes: Vec<String>,
}

impl Api {
    /// Whether the API takes OAuth access tokens (managed mode, or `oauth: true`).
    pub fn accepts_oauth(&self) -> bool {
        self.mode == AuthMode::Managed || self.oauth.oauth
    }
}

impl Api {
    /// A new API with the given upstream and the defaults for everything else.
    pub fn new(
        id: String,
        project: &crate::records::Project,
        slug: String,
        name: String,
        now: i64,
    ) -> Api {
        Api {
            id,
            project_id: project.id.clone(),
            project_slug: project.slug.clone(),
            slug,
            name,
            mode: AuthMode::ConsumerKeyOnly,
            upstream_base_url: DEMO_UPSTREAM.into(),
            upstream_key_enc: None,
            default_model: None,
            models: Vec::new(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            created_at: now,
            updated_at: now,
            byo_jwt: None,
            ip_allowlist: Allowlist::default(),
            credential: Credential::default(),
            policy: UpstreamPolicy::default(),
            prices: PriceTable::default(),
            org_id: String::new(),
            route: None,
            mtls: Default::default(),
            oauth: ApiOAuth::default(),
        }
    }

    pub fn is_demo(&self) -> bool {
        self.upstream_base_url == DEMO_UPSTREAM
    }

    /// The models a consumer can name: the default model first, then the list.
    pub fn allowed_models(&self) -> Vec<String> {
        let mut models = self.models.clone();
        if let Some(d) = &self.default_model {
            if !models.contains(d) {
                models.insert(0, d.clone());
            }
        }
        models
    }

    /// The owner's view: never the provider key, only whether one is set.
    pub fn to_json(&self) -> Value {
        let unpriced: Vec<String> = self
            .allowed_models()
            .into_iter()
            .chain(self.policy.fallbacks.iter().cloned())
            .filter(|m| self.prices.get(m).is_none())
            .collect();
        json!({
            "id": self.id,
            "project": self.project_slug,
            "slug": self.slug,
            "name": self.name,
            "auth_mode": self.mode.as_str(),
            "mtls": self.mtls.as_str(),
            "upstream": {
                "base_url": if self.route.is_some() { Value::Null } else { Value::from(self.upstream_base_url.as_str()) },
                "provider": match &self.route {
                    Some(crate::providers::Route::Provider { provider }) => Value::from(provider.as_str()),
                    _ => Value::Null,
                },
                "route": match &self.route {
                    None => "base_url",
                    Some(crate::providers::Route::Provider { .. }) => "provider",
                    Some(crate::providers::Route::ByModel) => "by_model",
                },
                "has_api_key": self.upstream_key_enc.is_some(),
                "default_model": self.default_model,
                "models": self.models,
                "timeout_ms": self.timeout_ms,
                "allow_any_model": self.policy.allow_any_model,
                "max_n": self.policy.max_n,
                "allowed_params": self.policy.allowed_params,
                "image_tokens": self.policy.image_tokens,
                "max_tokens_field": self.policy.max_tokens_field,
                "retries": self.policy.retries,
                "fallbacks": self.policy.fallbacks,
                "mtls_binding": self.policy.mtls_binding,
            },
            "prices": self.prices.to_json(),
            "unpriced_models": unpriced,
            "byo_jwt_config": self.byo_jwt,
            // Tokens accepted without an issuer and audience check: any app of a shared IdP.
            "byo_jwt_unscoped": self.byo_jwt.as_ref().map(|c| !c.is_scoped()),
            "ip_allowlist": self.ip_allowlist.entries(),
            "credential": self.credential.config(),
            "server_timing": self.policy.server_timing,
            "oauth": self.oauth.oauth,
            "required_scopes": self.oauth.required_scopes,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Value {
        json!({
            "id": "api_1", "project_id": "prj_1", "project_slug": "demo", "slug": "chat", "name": "Chat",
            "auth_mode": "consumer-key-only", "upstream_base_url": "demo", "upstream_key_enc": "v1:secretblob",
            "default_model": "m1", "models_json": "[\"m2\"]", "timeout_ms": 1000, "created_at": 0, "updated_at": 0,
            "byo_jwt_json": null, "ip_allowlist_json": "[]", "credential_json": "{}", "upstream_policy_json": "{}",
            "prices_json": "{}", "org_id": "org_1", "upstream_route_json": null, "oauth_json": "{}",
        })
    }

    #[test]
    fn api_view_never_contains_the_provider_key() {
        let api: Api = serde_json::from_value(row()).unwrap();
        let v = api.to_json().to_string();
        assert!(!v.contains("secretblob"));
        assert!(v.contains("\"has_api_key\":true"));
        assert_eq!(
            api.allowed_models(),
            vec!["m1".to_string(), "m2".to_string()]
        );
        assert_eq!(api.to_json()["unpriced_models"], json!(["m1", "m2"]));
    }

    #[test]
    fn stored_config_that_does_not_decode_refuses_instead_of_defaulting() {
        for (column, bad) in [
            ("ip_allowlist_json", "[\"10.0.0.0/8\""),
            ("ip_allowlist_json", "[\"not-an-ip\"]"),
            ("upstream_policy_json", "{\"max_n\": \"four\"}"),
            ("prices_json", "[]"),
            ("credential_json", "{\"location\": \"cookie\"}"),
            ("models_json", "oops"),
            ("byo_jwt_json", "{}"),
            ("oauth_json", "{\"oauth\": \"yes\"}"),
        ] {
            let mut r = row();
            r[column] = json!(bad);
            assert!(
                serde_json::from_value::<Api>(r).is_err(),
                "{column} = {bad}"
            );
        }
        let mut r = row();
        r["auth_mode"] = json!("password");
        assert!(
            serde_json::from_value::<Api>(r).is_err(),
            "an unknown mode is an error"
        );
    }

    #[test]
    fn the_cached_shape_is_the_row_shape() {
        let api: Api = serde_json::from_value(row()).unwrap();
        let cached = serde_json::to_value(&api).unwrap();
        assert!(
            cached["models_json"].is_string(),
            "JSON columns stay JSON text: {cached}"
        );
        let back: Api = serde_json::from_value(cached).unwrap();
        assert_eq!(back, api, "what KV keeps decodes exactly like the row");
    }

    #[test]
    fn a_stored_allowlist_is_parsed_once() {
        let mut r = row();
        r["ip_allowlist_json"] = json!("[\"10.0.0.0/8\"]");
        let api: Api = serde_json::from_value(r).unwrap();
        assert!(api.ip_allowlist.allows(Some("10.1.2.3")));
        assert!(!api.ip_allowlist.allows(Some("11.1.2.3")));
    }
}
