//! Per-API auth settings the owner configures: the BYO-JWT verifier, where credentials are read from,
//! the IP allowlist; validated before they are stored.

use serde::{Deserialize, Serialize};

use crate::auth::cidr::{self, Cidr};
use crate::auth::jwt::{Alg, Policy};
use crate::auth::mode::AuthMode;
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByoJwtConfig {
    pub jwks_url: String,
    #[serde(default = "default_claim")]
    pub user_id_claim: String,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    /// Allowed algorithms; default RS256, ES256, EdDSA. HS256 is never allowed with a JWKS.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// The owner's explicit choice to accept tokens without checking `iss` and `aud` (a JWKS of
    /// their own, not a shared IdP); the API view flags it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_any_audience: bool,
}

fn default_claim() -> String {
    "sub".into()
}

impl ByoJwtConfig {
    /// `dev` allows plain-http JWKS URLs (a local test server); elsewhere only https.
    pub fn validate(&self, dev: bool) -> Result<(), Error> {
        let url = self.jwks_url.trim();
        let https = url.starts_with("https://") && url.len() > "https://".len();
        let http = url.starts_with("http://") && url.len() > "http://".len();
        if !(https || (dev && http)) || url.contains(char::is_whitespace) || url.len() > 2048 {
            return Err(Error::invalid_request(if dev {
                "`byo_jwt_config.jwks_url` must be an http(s) URL"
            } else {
                "`byo_jwt_config.jwks_url` must be an https URL"
            }));
        }
        let claim_ok = !self.user_id_claim.is_empty()
            && self.user_id_claim.len() <= 200
            && self.user_id_claim.split('.').all(|part| !part.is_empty());
        if !claim_ok {
            return Err(Error::invalid_request("`byo_jwt_config.user_id_claim` must be a claim name or dot path such as `sub` or `user.id`"));
        }
        self.algs()?;
        if !self.allow_any_audience {
            for (field, value) in [("issuer", &self.issuer), ("audience", &self.audience)] {
                if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
                    return Err(Error::invalid_request(format!(
                        "`byo_jwt_config.{field}` is required: without it, any token the IdP signs for another application is accepted. Set `allow_any_audience: true` only for a JWKS that signs for this API alone."
                    ))
                    .with_field("param", format!("byo_jwt_config.{field}")));
                }
            }
        }
        for value in [&self.issuer, &self.audience].into_iter().flatten() {
            if value.len() > 2048 {
                return Err(Error::invalid_request(
                    "`byo_jwt_config.issuer` and `audience` are at most 2048 characters",
                ));
            }
        }
        Ok(())
    }

    /// Whether tokens are checked for this API's issuer and audience.
    pub fn is_scoped(&self) -> bool {
        self.issuer.is_some() && self.audience.is_some()
    }

    pub fn algs(&self) -> Result<Vec<Alg>, Error> {
        match &self.algorithms {
            None => Ok(vec![Alg::Rs256, Alg::Es256, Alg::EdDsa]),
            Some(list) if list.is_empty() => Err(Error::invalid_request("`byo_jwt_config.algorithms` must not be empty")),
            Some(list) => list.iter().map(|a| match Alg::parse(a) {
                Some(Alg::Hs256) | None => Err(Error::invalid_request(format!(
                    "`{a}` is not allowed: use RS256, ES256 or EdDSA (keys from a JWKS are public keys)"))),
                Some(alg) => Ok(alg),
            }).collect(),
        }
    }

    pub fn policy(&self) -> Policy {
        let mut policy = Policy::default_asymmetric();
        policy.issuer = self.issuer.clone();
        policy.audience = self.audience.clone();
        if let Ok(algs) = self.algs() {
            policy.allowed = algs;
        }
        policy
    }
}

/// `PUT /api/v1/gateway/apis/{id}/auth-mode`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthModeChange {
    pub auth_mode: String,
    #[serde(default)]
    pub byo_jwt_config: Option<ByoJwtConfig>,
}

impl AuthModeChange {
    /// The new mode and, for byo-jwt, its checked config (required then).
    pub fn validate(&self, dev: bool) -> Result<(AuthMode, Option<ByoJwtConfig>), Error> {
        let mode = AuthMode::parse(&self.auth_mode)?;
        match (mode, &self.byo_jwt_config) {
            (AuthMode::ByoJwt, None) => Err(Error::invalid_request(
                "byo-jwt needs `byo_jwt_config` with at least `jwks_url`",
            )),
            (AuthMode::ByoJwt, Some(c)) => {
                c.validate(dev)?;
                Ok((mode, Some(c.clone())))
            }
            (_, _) => Ok((mode, None)),
        }
    }
}

/// Where an API reads the credential from, and whether it is passed on to the upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// `authorization` (Bearer, the default), `header` or `query`.
    #[serde(default)]
    pub location: Option<String>,
    /// The header or query parameter name for `header` / `query`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub passthrough: bool,
}

/// Where to look for the credential, resolved from a `CredentialConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CredentialSource {
    #[default]
    Authorization,
    Header(String),
    Query(String),
}

/// An API's credential settings as stored: decoding resolves them, so a stored location that does
/// not resolve is a decode error, never the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CredentialConfig", into = "CredentialConfig")]
pub struct Credential {
    config: CredentialConfig,
    pub source: CredentialSource,
}

impl Credential {
    pub fn passthrough(&self) -> bool {
        self.config.passthrough
    }
    pub fn config(&self) -> &CredentialConfig {
        &self.config
    }
}

impl TryFrom<CredentialConfig> for Credential {
    type Error = Error;
    fn try_from(config: CredentialConfig) -> Result<Self, Error> {
        let source = config.source()?;
        Ok(Credential { config, source })
    }
}

impl From<Credential> for CredentialConfig {
    fn from(c: Credential) -> Self {
        c.config
    }
}

/// An API's IP allowlist: the entries as the owner wrote them, parsed once. Empty allows every
/// address; a stored list that does not parse is a decode error (never "allow all").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Allowlist {
    entries: Vec<String>,
    cidrs: Vec<Cidr>,
}

impl Allowlist {
    pub fn entries(&self) -> &[String] {
        &self.entries
    }
    /// Whether `ip` may call (an unknown address passes only an empty list).
    pub fn allows(&self, ip: Option<&str>) -> bool {
        cidr::allowed(&self.cidrs, ip)
    }
}

impl TryFrom<Vec<String>> for Allowlist {
    type Error = Error;
    fn try_from(entries: Vec<String>) -> Result<Self, Error> {
        let cidrs = parse_allowlist(&entries)?;
        Ok(Allowlist { entries, cidrs })
    }
}

impl From<Allowlist> for Vec<String> {
    fn from(a: Allowlist) -> Self {
        a.entries
    }
}

impl CredentialConfig {
    pub fn validate(&self) -> Result<(), Error> {
        self.source().map(|_| ())
    }

    pub fn source(&self) -> Result<CredentialSource, Error> {
        let name = || -> Result<String, Error> {
            match self.name.as_deref() {
                Some(n) if !n.is_empty() && n.len() <= 100 && n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_') => Ok(n.to_string()),
                _ => Err(Error::invalid_request("`credential.name` must be a header or query parameter name (letters, digits, `-`, `_`)")),
            }
        };
        match self.location.as_deref() {
            None | Some("authorization") => Ok(CredentialSource::Authorization),
            Some("header") => Ok(CredentialSource::Header(name()?.to_ascii_lowercase())),
            Some("query") => Ok(CredentialSource::Query(name()?)),
            Some(other) => Err(Error::invalid_request(format!(
                "`credential.location` must be authorization, header or query, not `{other}`"
            ))),
        }
    }
}

/// Parses and checks an IP allowlist.
pub fn parse_allowlist(entries: &[String]) -> Result<Vec<Cidr>, Error> {
    if entries.len() > 200 {
        return Err(Error::invalid_request(
            "`ip_allowlist` may hold at most 200 entries",
        ));
    }
    entries
        .iter()
        .map(|e| {
            Cidr::parse(e.trim())
                .map_err(|why| Error::invalid_request(format!("`{e}` is not a CIDR: {why}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn byo(url: &str) -> ByoJwtConfig {
        ByoJwtConfig {
            jwks_url: url.into(),
            user_id_claim: "sub".into(),
            issuer: Some("https://idp.example/".into()),
            audience: Some("my-api".into()),
            algorithms: None,
            allow_any_audience: false,
        }
    }

    #[test]
    fn issuer_and_audience_are_required_unless_the_owner_opts_out() {
        for (field, param) in [
            ("issuer", "byo_jwt_config.issuer"),
            ("audience", "byo_jwt_config.audience"),
        ] {
            let mut c = byo("https://idp.example/jwks");
            match field {
                "issuer" => c.issuer = None,
                _ => c.audience = Some("  ".into()),
            }
            let e = c.validate(false).unwrap_err();
            assert_eq!((e.status, e.extra["param"].as_str()), (400, Some(param)));
            assert!(!c.is_scoped() || field == "audience");
            c.allow_any_audience = true;
            assert!(c.validate(false).is_ok());
        }
        let stored = r#"{"jwks_url":"https://a/b","user_id_claim":"sub","issuer":null,"audience":null,"algorithms":null}"#;
        let old: ByoJwtConfig = crate::encoding::from_json(stored).unwrap();
        assert!(
            !old.is_scoped(),
            "a config stored before the rule still decodes, and is flagged"
        );
    }

    #[test]
    fn jwks_url_must_be_https_outside_dev() {
        assert!(byo("https://idp.example/.well-known/jwks.json")
            .validate(false)
            .is_ok());
        assert!(byo("http://127.0.0.1:9/jwks").validate(false).is_err());
        assert!(byo("http://127.0.0.1:9/jwks").validate(true).is_ok());
        assert!(byo("").validate(true).is_err());
        assert!(byo("ftp://x").validate(true).is_err());
    }

    #[test]
    fn claims_and_algorithms() {
        let mut c = byo("https://x/j");
        c.user_id_claim = "user.id".into();
        assert!(c.validate(false).is_ok());
        c.user_id_claim = "user..id".into();
        assert!(c.validate(false).is_err());
        c.user_id_claim = "sub".into();
        c.algorithms = Some(vec!["HS256".into()]);
        assert!(c.validate(false).is_err(), "HMAC with a JWKS is refused");
        c.algorithms = Some(vec!["ES256".into()]);
        assert_eq!(c.policy().allowed, vec![Alg::Es256]);
    }

    #[test]
    fn mode_change_needs_config_for_byo_jwt() {
        let change: AuthModeChange =
            crate::encoding::from_json(r#"{"auth_mode":"byo-jwt"}"#).unwrap();
        assert_eq!(change.validate(true).unwrap_err().status, 400);
        let change: AuthModeChange =
            crate::encoding::from_json(r#"{"auth_mode":"aerostack"}"#).unwrap();
        assert_eq!(change.validate(false).unwrap().0, AuthMode::Managed);
        let change: AuthModeChange = crate::encoding::from_json(r#"{"auth_mode":"byo-jwt","byo_jwt_config":{"jwks_url":"https://a/b","user_id_claim":"uid","issuer":"https://a/","audience":"x"}}"#).unwrap();
        assert_eq!(
            change.validate(false).unwrap().1.unwrap().user_id_claim,
            "uid"
        );
    }

    #[test]
    fn credential_sources() {
        assert_eq!(
            CredentialConfig::default().source().unwrap(),
            CredentialSource::Authorization
        );
        let c = CredentialConfig {
            location: Some("header".into()),
            name: Some("X-Token".into()),
            passthrough: false,
        };
        assert_eq!(
            c.source().unwrap(),
            CredentialSource::Header("x-token".into())
        );
        let c = CredentialConfig {
            location: Some("query".into()),
            name: Some("key".into()),
            passthrough: true,
        };
        assert_eq!(c.source().unwrap(), CredentialSource::Query("key".into()));
        assert!(CredentialConfig {
            location: Some("header".into()),
            name: None,
            passthrough: false
        }
        .validate()
        .is_err());
        assert!(CredentialConfig {
            location: Some("cookie".into()),
            name: Some("a".into()),
            passthrough: false
        }
        .validate()
        .is_err());
    }
}
