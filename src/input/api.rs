//! Admin input for APIs: creating one (its upstream, mode and prices), and changing any of it. The
//! provider key is sealed by a function the edge passes in, so this stays free of secrets handling.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::auth::config::{Allowlist, Credential, CredentialConfig};
use crate::auth::mode::AuthMode;
use crate::auth::mtls::MtlsMode;
use crate::error::Error;
use crate::input::validate::{
    nullable, refuse_null, upstream_origin, validate_base_url, validate_slug, validate_text,
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
        let by_model = matches!(&self.upstream.models, Some(Some(m)) if !m.is_empty());
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

/// Every field is parsed with `nullable` so that an explicit `null` is seen: `api_key`,
/// `default_model` and `mtls_binding` are cleared by it, every other field refuses it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamPatch {
    #[serde(default, deserialize_with = "nullable")]
    pub base_url: Option<Option<String>>,
    /// One provider, with the org's key for it (instead of `base_url` and `api_key`).
    #[serde(default, deserialize_with = "nullable")]
    pub provider: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub api_key: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub default_model: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub timeout_ms: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    pub allow_any_model: Option<Option<bool>>,
    #[serde(default, deserialize_with = "nullable")]
    pub max_n: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub allowed_params: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub image_tokens: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub max_tokens_field: Option<Option<CapField>>,
    #[serde(default, deserialize_with = "nullable")]
    pub retries: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    pub fallbacks: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub mtls_binding: Option<Option<String>>,
}

impl UpstreamPatch {
    fn refuse_nulls(&self) -> Result<(), Error> {
        refuse_null("upstream.base_url", &self.base_url)?;
        refuse_null("upstream.provider", &self.provider)?;
        refuse_null("upstream.models", &self.models)?;
        refuse_null("upstream.timeout_ms", &self.timeout_ms)?;
        refuse_null("upstream.allow_any_model", &self.allow_any_model)?;
        refuse_null("upstream.max_n", &self.max_n)?;
        refuse_null("upstream.allowed_params", &self.allowed_params)?;
        refuse_null("upstream.image_tokens", &self.image_tokens)?;
        refuse_null("upstream.max_tokens_field", &self.max_tokens_field)?;
        refuse_null("upstream.retries", &self.retries)?;
        refuse_null("upstream.fallbacks", &self.fallbacks)
    }

    pub fn validate(&self) -> Result<(), Error> {
        self.refuse_nulls()?;
        if let Some(Some(b)) = &self.base_url {
            validate_base_url(b)?;
        }
        if let Some(Some(p)) = &self.provider {
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
            self.models.as_ref().and_then(Option::as_ref),
            self.default_model.as_ref().and_then(Option::as_ref),
            self.timeout_ms.flatten(),
        )?;
        self.policy().validate()
    }

    fn policy(&self) -> PolicyInput {
        PolicyInput {
            allow_any_model: self.allow_any_model.flatten(),
            max_n: self.max_n.flatten(),
            allowed_params: self.allowed_params.clone().flatten(),
            image_tokens: self.image_tokens.flatten(),
            max_tokens_field: self.max_tokens_field.flatten(),
            retries: self.retries.flatten(),
            fallbacks: self.fallbacks.clone().flatten(),
            mtls_binding: self.mtls_binding.clone(),
        }
    }

    /// Writes the patch onto `api`; whether a stored provider key was dropped because the base URL
    /// moved to another host without a key given again.
    fn apply(self, api: &mut Api, seal: Seal<'_>) -> Result<bool, Error> {
        api.policy = self.policy().apply(&api.policy);
        let mut key_dropped = false;
        if let Some(provider) = self.provider.flatten().as_deref().and_then(Provider::parse) {
            api.route = Some(Route::Provider { provider });
            api.upstream_base_url = String::new();
            api.upstream_key_enc = None;
        }
        if let Some(base) = self.base_url.flatten() {
            api.route = None;
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
        if let Some(models) = self.models.flatten() {
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
        if let Some(t) = self.timeout_ms.flatten() {
            api.timeout_ms = t;
        }
        Ok(key_dropped)
    }
}

/// No field of an API is cleared with `null` (`[]` and `{}` empty the lists and the price table):
/// each is parsed with `nullable` so that a `null` is refused rather than taken for "unchanged".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiPatch {
    #[serde(default, deserialize_with = "nullable")]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub auth_mode: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub upstream: Option<Option<UpstreamPatch>>,
    #[serde(default, deserialize_with = "nullable")]
    pub ip_allowlist: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub credential: Option<Option<CredentialConfig>>,
    /// Replaces the whole price table (`{}` clears it).
    #[serde(default, deserialize_with = "nullable")]
    pub prices: Option<Option<BTreeMap<String, PriceInput>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub server_timing: Option<Option<bool>>,
    #[serde(default, deserialize_with = "nullable")]
    pub mtls: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub oauth: Option<Option<bool>>,
    #[serde(default, deserialize_with = "nullable")]
    pub required_scopes: Option<Option<Vec<String>>>,
}

impl ApiPatch {
    fn refuse_nulls(&self) -> Result<(), Error> {
        refuse_null("name", &self.name)?;
        refuse_null("auth_mode", &self.auth_mode)?;
        refuse_null("upstream", &self.upstream)?;
        refuse_null("ip_allowlist", &self.ip_allowlist)?;
        refuse_null("credential", &self.credential)?;
        refuse_null("prices", &self.prices)?;
        refuse_null("server_timing", &self.server_timing)?;
        refuse_null("mtls", &self.mtls)?;
        refuse_null("oauth", &self.oauth)?;
        refuse_null("required_scopes", &self.required_scopes)
    }

    pub fn validate(&self) -> Result<(), Error> {
        self.refuse_nulls()?;
        if let Some(Some(n)) = &self.name {
            validate_text("name", n, 200)?;
        }
        if let Some(Some(m)) = &self.auth_mode {
            if AuthMode::parse(m)? == AuthMode::ByoJwt {
                return Err(Error::invalid_request(
                    "Switch to byo-jwt with PUT .../auth-mode, which takes its `byo_jwt_config`",
                ));
            }
        }
        if let Some(Some(list)) = &self.ip_allowlist {
            Allowlist::try_from(list.clone())?;
        }
        if let Some(Some(c)) = &self.credential {
            c.validate()?;
        }
        if let Some(Some(u)) = &self.upstream {
            u.validate()?;
        }
        if let Some(Some(p)) = &self.prices {
            PriceTable::from_input(p)?;
        }
        if let Some(Some(m)) = &self.mtls {
            MtlsMode::parse(m)?;
        }
        if let Some(Some(scopes)) = &self.required_scopes {
            validate_required_scopes(scopes)?;
        }
        Ok(())
    }

    /// Writes what the patch names onto `api` (call `validate` first); whether the stored provider
    /// key was dropped (the base URL moved to another host and no key came with it).
    pub fn apply(self, api: &mut Api, now: i64, seal: Seal<'_>) -> Result<bool, Error> {
        let mut key_dropped = false;
        if let Some(name) = self.name.flatten() {
            api.name = name;
        }
        if let Some(mode) = self.auth_mode.flatten() {
            api.mode = AuthMode::parse(&mode)?;
        }
        if let Some(u) = self.upstream.flatten() {
            key_dropped = u.apply(api, seal)?;
        }
        if let Some(list) = self.ip_allowlist.flatten() {
            api.ip_allowlist = Allowlist::try_from(list)?;
        }
        if let Some(c) = self.credential.flatten() {
            api.credential = Credential::try_from(c)?;
        }
        if let Some(p) = self.prices.flatten() {
            api.prices = PriceTable::from_input(&p)?;
        }
        if let Some(on) = self.server_timing.flatten() {
            api.policy.server_timing = on;
        }
        if let Some(m) = self.mtls.flatten() {
            api.mtls = MtlsMode::parse(&m)?;
        }
        if let Some(on) = self.oauth.flatten() {
            api.oauth.oauth = on;
        }
        if let Some(scopes) = self.required_scopes.flatten() {
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
        assert_eq!(
            p.upstream.as_ref().unwrap().as_ref().unwrap().api_key,
            Some(None)
        );
        let p: ApiPatch = parse_body(br#"{"upstream":{}}"#).unwrap();
        assert_eq!(p.upstream.as_ref().unwrap().as_ref().unwrap().api_key, None);
        let p: ApiPatch = parse_body(br#"{"upstream":{"timeout_ms":5}}"#).unwrap();
        assert!(p.validate().is_err());
    }

    #[test]
    fn null_clears_only_the_fields_that_can_be_empty() {
        let refused = |body: String| {
            let p: ApiPatch = parse_body(body.as_bytes()).unwrap();
            let e = p.validate().unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            e.extra["param"].as_str().unwrap_or_default().to_string()
        };
        for field in [
            "name",
            "auth_mode",
            "upstream",
            "ip_allowlist",
            "credential",
            "prices",
            "server_timing",
            "mtls",
            "oauth",
            "required_scopes",
        ] {
            assert_eq!(refused(format!(r#"{{"{field}":null}}"#)), field);
        }
        for field in [
            "base_url",
            "provider",
            "models",
            "timeout_ms",
            "allow_any_model",
            "max_n",
            "allowed_params",
            "image_tokens",
            "max_tokens_field",
            "retries",
            "fallbacks",
        ] {
            assert_eq!(
                refused(format!(r#"{{"upstream":{{"{field}":null}}}}"#)),
                format!("upstream.{field}")
            );
        }
        // A null on creating an API is refused the same way.
        let new: NewApi =
            parse_body(br#"{"project":"demo","slug":"c","name":"C","upstream":{"base_url":null}}"#)
                .unwrap();
        assert_eq!(
            new.validate().unwrap_err().extra["param"],
            "upstream.base_url"
        );

        let mut api = Api::new("api_1".into(), &project(), "chat".into(), "Chat".into(), 0);
        api.upstream_key_enc = Some("old".into());
        api.default_model = Some("m".into());
        api.policy.mtls_binding = Some("CERT".into());
        let cleared: ApiPatch = parse_body(
            br#"{"upstream":{"api_key":null,"default_model":null,"mtls_binding":null}}"#,
        )
        .unwrap();
        cleared.validate().unwrap();
        cleared.apply(&mut api, 1, &seal).unwrap();
        assert_eq!(
            (
                api.upstream_key_enc,
                api.default_model,
                api.policy.mtls_binding
            ),
            (None, None, None)
        );
        assert_eq!(api.name, "Chat");
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
