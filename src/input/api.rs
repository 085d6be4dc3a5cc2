//! Admin input for APIs: creating one (its upstream, mode and prices), and changing any of it. The
//! provider key is sealed by a function the edge passes in, so this stays free of secrets handling.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::auth::config::{Allowlist, Credential, CredentialConfig};
use crate::auth::mode::AuthMode;
use crate::auth::mtls::MtlsMode;
use crate::error::Error;
use crate::input::validate::{
    nullable, upstream_origin, validate_base_url, validate_slug, validate_text,
};
use crate::limits::spend::{PriceInput, PriceTable};
use crate::providers::{Provider, Route};
use crate::records::{Api, Project};
use crate::upstream::policy::{CapField, PolicyInput};

/// Encrypts a provider key for storage.
pub type Seal<'a> = &'a dyn Fn(&str) -> Result<String, Error>;

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
pub struct NewApi {
    pub project: String,
    pub slug: String,
    pub name: String,
    #[serde(default = "default_mode")]
    pub auth_mode: String,
    /// The same fields as a patch; `base_url` is required here.
    pub upstream: UpstreamPatch,
    pub prices: Option<BTreeMap<String, PriceInput>>,
    /// Answers carry a `Server-Timing` header.
    #[serde(default)]
    pub server_timing: bool,
    /// Client certificates: `off` (default), `accept` or `require`.
    pub mtls: Option<String>,
    /// OAuth access tokens accepted in every mode (always in managed mode).
    #[serde(default)]
    pub oauth: bool,
    /// Scopes an OAuth token must hold.
    pub required_scopes: Option<Vec<String>>,
}

/// `required_scopes`: at most 20 scope tokens.
fn validate_required_scopes(scopes: &[String]) -> Result<(), Error> {
    if scopes.len() > 20 {
        return Err(
            Error::invalid_request("`required_scopes` lists at most 20 scopes.")
                .with_field("param", "required_scopes"),
        );
    }
    for s in scopes {
        crate::auth::oauth::validate_scope_token(s)
            .map_err(|e| Error::invalid_request(e).with_field("param", "required_scopes"))?;
    }
    Ok(())
}

fn default_mode() -> String {
    "consumer-key-only".into()
}

impl NewApi {
    pub fn validate(&self) -> Result<AuthMode, Error> {
        validate_slug("slug", &self.slug)?;
        validate_text("name", &self.name, 200)?;
        let by_model = self.upstream.models.as_ref().is_some_and(|m| !m.is_empty());
        if self.upstream.base_url.is_none() && self.upstream.provider.is_none() && !by_model {
            return Err(Error::invalid_request(
                "`upstream` needs a `base_url`, a `provider`, or `models` named `provider/model`",
            )
            .with_field("param", "upstream.base_url"));
        }
        self.upstream.validate()?;
        if let Some(p) = &self.prices {
            PriceTable::from_input(p)?;
        }
        if let Some(m) = &self.mtls {
            MtlsMode::parse(m)?;
        }
        if let Some(scopes) = &self.required_scopes {
            validate_required_scopes(scopes)?;
        }
        AuthMode::parse(&self.auth_mode)
    }

    /// The API this input creates in `project` (call `validate` first).
    pub fn into_api(
        self,
        id: String,
        project: &Project,
        now: i64,
        seal: Seal<'_>,
    ) -> Result<Api, Error> {
        let mut api = Api::new(id, project, self.slug, self.name, now);
        api.mode = AuthMode::parse(&self.auth_mode)?;
        if self.upstream.base_url.is_none() && self.upstream.provider.is_none() {
            // Only `provider/model` names: each request goes to the provider its model names.
            api.route = Some(Route::ByModel);
            api.upstream_base_url = String::new();
        }
        if let Some(p) = &self.prices {
            api.prices = PriceTable::from_input(p)?;
        }
        self.upstream.apply(&mut api, seal)?;
        api.policy.server_timing = self.server_timing;
        if let Some(m) = &self.mtls {
            api.mtls = MtlsMode::parse(m)?;
        }
        api.oauth.oauth = self.oauth;
        api.oauth.required_scopes = self.required_scopes.unwrap_or_default();
        Ok(api)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamPatch {
    pub base_url: Option<String>,
    /// One provider, with the org's key for it (instead of `base_url` and `api_key`).
    pub provider: Option<String>,
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
    pub retries: Option<u32>,
    pub fallbacks: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub mtls_binding: Option<Option<String>>,
}

impl UpstreamPatch {
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(b) = &self.base_url {
            validate_base_url(b)?;
        }
        if let Some(p) = &self.provider {
            if Provider::parse(p).is_none() {
                let known: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
                return Err(Error::invalid_request(format!(
                    "`upstream.provider` is one of {}",
                    known.join(", ")
                ))
                .with_field("param", "upstream.provider"));
            }
            if self.base_url.is_some() || matches!(self.api_key, Some(Some(_))) {
                return Err(Error::invalid_request(
                    "`upstream.provider` uses the org's provider key (POST /api/v1/orgs/{org}/providers): send it without `base_url` and `api_key`",
                )
                .with_field("param", "upstream.provider"));
            }
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

    fn policy(&self) -> PolicyInput {
        PolicyInput {
            allow_any_model: self.allow_any_model,
            max_n: self.max_n,
            allowed_params: self.allowed_params.clone(),
            image_tokens: self.image_tokens,
            max_tokens_field: self.max_tokens_field,
            retries: self.retries,
            fallbacks: self.fallbacks.clone(),
            mtls_binding: self.mtls_binding.clone(),
        }
    }

    /// Writes the patch onto `api`; whether a stored provider key was dropped because the base URL
    /// moved to another host without a key given again.
    fn apply(self, api: &mut Api, seal: Seal<'_>) -> Result<bool, Error> {
        api.policy = self.policy().apply(&api.policy);
        let mut key_dropped = false;
        if let Some(provider) = self.provider.as_deref().and_then(Provider::parse) {
            api.route = Some(Route::Provider { provider });
            api.upstream_base_url = String::new();
            api.upstream_key_enc = None;
        }
        if self.base_url.is_some() {
            api.route = None;
        }
        if let Some(base) = self.base_url {
            let moved = upstream_origin(&base) != upstream_origin(&api.upstream_base_url);
            if moved && self.api_key.is_none() && api.upstream_key_enc.is_some() {
                api.upstream_key_enc = None;
                key_dropped = true;
            }
            api.upstream_base_url = base;
        }
        match self.api_key {
            Some(Some(k)) => api.upstream_key_enc = Some(seal(&k)?),
            Some(None) => api.upstream_key_enc = None,
            None => {}
        }
        if let Some(m) = self.default_model {
            api.default_model = m;
        }
        if let Some(models) = self.models {
            api.models = models;
        }
        if api.route == Some(Route::ByModel) {
            // Every name must say its provider: there is no other to send it to.
            let plain = api
                .allowed_models()
                .into_iter()
                .chain(api.policy.fallbacks.iter().cloned())
                .find(|m| crate::providers::split_model(m).is_none());
            if let Some(m) = plain {
                return Err(Error::invalid_request(format!(
                    "`{m}` names no provider: with neither `base_url` nor `provider`, every model and fallback is `provider/model` (e.g. `anthropic/claude-3-5-haiku`)"
                ))
                .with_field("param", "upstream.models"));
            }
        }
        if let Some(t) = self.timeout_ms {
            api.timeout_ms = t;
        }
        Ok(key_dropped)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiPatch {
    pub name: Option<String>,
    pub auth_mode: Option<String>,
    pub upstream: Option<UpstreamPatch>,
    pub ip_allowlist: Option<Vec<String>>,
    pub credential: Option<CredentialConfig>,
    /// Replaces the whole price table (`{}` clears it).
    pub prices: Option<BTreeMap<String, PriceInput>>,
    pub server_timing: Option<bool>,
    pub mtls: Option<String>,
    pub oauth: Option<bool>,
    pub required_scopes: Option<Vec<String>>,
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
            Allowlist::try_from(list.clone())?;
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
        if let Some(m) = &self.mtls {
            MtlsMode::parse(m)?;
        }
        if let Some(scopes) = &self.required_scopes {
            validate_required_scopes(scopes)?;
        }
        Ok(())
    }

    /// Writes what the patch names onto `api` (call `validate` first); whether the stored provider
    /// key was dropped (the base URL moved to another host and no key came with it).
    pub fn apply(self, api: &mut Api, now: i64, seal: Seal<'_>) -> Result<bool, Error> {
        let mut key_dropped = false;
        if let Some(name) = self.name {
            api.name = name;
        }
        if let Some(mode) = self.auth_mode {
            api.mode = AuthMode::parse(&mode)?;
        }
        if let Some(u) = self.upstream {
            key_dropped = u.apply(api, seal)?;
        }
        if let Some(list) = self.ip_allowlist {
            api.ip_allowlist = Allowlist::try_from(list)?;
        }
        if let Some(c) = self.credential {
            api.credential = Credential::try_from(c)?;
        }
        if let Some(p) = &self.prices {
            api.prices = PriceTable::from_input(p)?;
        }
        if let Some(on) = self.server_timing {
            api.policy.server_timing = on;
        }
        if let Some(m) = &self.mtls {
            api.mtls = MtlsMode::parse(m)?;
        }
        if let Some(on) = self.oauth {
            api.oauth.oauth = on;
        }
        if let Some(scopes) = self.required_scopes {
            api.oauth.required_scopes = scopes;
        }
        api.updated_at = now;
        Ok(key_dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::parse_body;

    fn seal(k: &str) -> Result<String, Error> {
        Ok(format!("sealed:{k}"))
    }

    fn project() -> Project {
        Project::new("prj_1".into(), "demo".into(), "Demo".into(), 0)
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

    #[test]
    fn a_new_api_gets_its_upstream_and_a_sealed_key() {
        let input: NewApi = parse_body(
            br#"{"project":"demo","slug":"chat","name":"Chat","auth_mode":"aerostack",
                 "upstream":{"base_url":"https://up.example/v1","api_key":"sk-1","models":["m"],"max_n":2}}"#,
        )
        .unwrap();
        input.validate().unwrap();
        let api = input
            .into_api("api_1".into(), &project(), 5, &seal)
            .unwrap();
        assert_eq!(
            (api.mode, api.upstream_key_enc.as_deref()),
            (AuthMode::Managed, Some("sealed:sk-1"))
        );
        assert_eq!(
            (api.policy.max_n, api.models.len(), api.created_at),
            (2, 1, 5)
        );
        let missing: NewApi =
            parse_body(br#"{"project":"demo","slug":"c","name":"C","upstream":{}}"#).unwrap();
        assert_eq!(
            missing.validate().unwrap_err().extra["param"],
            "upstream.base_url"
        );
    }

    #[test]
    fn a_patch_changes_only_what_it_names() {
        let mut api = Api::new("api_1".into(), &project(), "chat".into(), "Chat".into(), 0);
        api.upstream_key_enc = Some("old".into());
        let p: ApiPatch = parse_body(
            br#"{"name":"New","ip_allowlist":["10.0.0.0/8"],"upstream":{"timeout_ms":500}}"#,
        )
        .unwrap();
        p.validate().unwrap();
        p.apply(&mut api, 9, &seal).unwrap();
        assert_eq!(
            (api.name.as_str(), api.timeout_ms, api.updated_at),
            ("New", 500, 9)
        );
        assert_eq!(api.upstream_key_enc.as_deref(), Some("old"));
        assert!(api.ip_allowlist.allows(Some("10.0.0.1")));
        let bad: ApiPatch = parse_body(br#"{"ip_allowlist":["nope"]}"#).unwrap();
        assert!(bad.validate().is_err());
        let mtls: ApiPatch = parse_body(br#"{"mtls":"require"}"#).unwrap();
        mtls.validate().unwrap();
        mtls.apply(&mut api, 10, &seal).unwrap();
        assert_eq!((api.mtls, api.name.as_str()), (MtlsMode::Require, "New"));
        let bad: ApiPatch = parse_body(br#"{"mtls":"on"}"#).unwrap();
        assert_eq!(bad.validate().unwrap_err().extra["param"], "mtls");
    }

    #[test]
    fn a_provider_key_stays_with_its_host() {
        let patched = |from: &str, body: &[u8]| {
            let mut api = Api::new("api_1".into(), &project(), "chat".into(), "Chat".into(), 0);
            api.upstream_base_url = from.into();
            api.upstream_key_enc = Some("old".into());
            let p: ApiPatch = parse_body(body).unwrap();
            p.validate().unwrap();
            let dropped = p.apply(&mut api, 1, &seal).unwrap();
            (dropped, api.upstream_key_enc)
        };
        let from = "https://api.openai.com/v1";
        assert_eq!(
            patched(
                from,
                br#"{"upstream":{"base_url":"https://evil.example/v1"}}"#
            ),
            (true, None)
        );
        assert_eq!(
            patched(
                from,
                br#"{"upstream":{"base_url":"https://api.openai.com/v2"}}"#
            ),
            (false, Some("old".into())),
            "another path on the same host keeps the key"
        );
        assert_eq!(
            patched(
                from,
                br#"{"upstream":{"base_url":"https://other.example/v1","api_key":"sk-new"}}"#
            ),
            (false, Some("sealed:sk-new".into()))
        );
    }
}
