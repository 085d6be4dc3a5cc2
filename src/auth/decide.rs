//! Who is calling, decided without I/O: what kind of credential a request carries, and, given what
//! the lookups for it returned, the caller it proves or the refusal it earns. The edge adapter
//! (`authenticate`) performs the lookups each step names and nothing else, so every rule of
//! authentication lives here, once, and is unit-tested.

use crate::auth::jwks_cache::{looks_like_jwt, peek_kid};
use crate::auth::key::{self, ConsumerKey};
use crate::auth::mode::AuthMode;
use crate::auth::tokens::is_project_kid;
use crate::error::{Error, Problem};
use crate::records::KeyHolder;

/// Who is calling, as proven by the authenticate phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub consumer_id: String,
    pub key_id: Option<String>,
    pub session_id: Option<String>,
    /// The `jti` of the DPoP proof a bound access token came with: its counter refuses a replay.
    pub dpop_jti: Option<String>,
    /// The mTLS credential of a client certificate that came with another credential (`require`):
    /// its counter checks that it is not revoked either.
    pub certificate_id: Option<String>,
}

/// What a request's credential is, before any lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// A well-formed consumer key (`ask_live_…`): found by its hash.
    Key(ConsumerKey),
    /// Anything else shaped like an owner's custom key: found by its project-bound hash.
    Custom(String),
    /// A JWT whose key id says this gateway signed it for the project.
    SluiceToken,
    /// Any other JWT: a consumer's own credential, or (byo-jwt mode) the owner's.
    OtherJwt,
}

/// Classifies the credential; a malformed key or a non-JWT is refused here, before any lookup.
pub fn presented(credential: &str, project_slug: &str, mode: AuthMode) -> Result<Presented, Error> {
    if credential.starts_with(key::PREFIX) {
        return ConsumerKey::parse(credential)
            .map(Presented::Key)
            .map_err(|e| {
                Error::invalid_credential(format!("Not a valid consumer key: {}.", e.describe()))
            });
    }
    if !looks_like_jwt(credential) && key::is_custom_shaped(credential) {
        return Ok(Presented::Custom(credential.to_string()));
    }
    if !looks_like_jwt(credential) {
        return Err(Error::invalid_credential(match mode {
            AuthMode::ConsumerKeyOnly => "Send a consumer key (ask_live_...).",
            _ => "Send a consumer key (ask_live_...) or a JWT.",
        }));
    }
    let ours = peek_kid(credential).is_some_and(|kid| is_project_kid(&kid, project_slug));
    Ok(if ours {
        Presented::SluiceToken
    } else {
        Presented::OtherJwt
    })
}

/// The API's IP allowlist said no.
pub fn ip_refused() -> Error {
    Error::new(
        Problem::IpNotAllowed,
        "This API only accepts requests from the owner's allowed networks.",
    )
}

/// No live key has this secret.
pub fn unknown_key() -> Error {
    Error::invalid_credential("This consumer key is unknown or has been revoked.")
}

/// A consumer key: its holder, found by hash (none: unknown or revoked). Whether the holder may
/// call (enabled, the key not revoked since it was cached) is the counter's to say at admission.
pub fn by_key(holder: Option<&KeyHolder>) -> Result<Caller, Error> {
    let holder = holder.ok_or_else(unknown_key)?;
    Ok(Caller {
        consumer_id: holder.consumer_id.clone(),
        key_id: Some(holder.key_id.clone()),
        session_id: None,
        dpop_jti: None,
        certificate_id: None,
    })
}

/// A key-exchange token: it names its consumer and key, and lives while the key does (the counter
/// refuses a revoked key's tokens).
pub fn by_exchange_token(consumer_id: String, key_id: String) -> Caller {
    Caller {
        consumer_id,
        key_id: Some(key_id),
        session_id: None,
        dpop_jti: None,
        certificate_id: None,
    }
}

/// Whether a signed-in user's access token may be used on an API in `mode` (managed only).
pub fn access_token_allowed(mode: AuthMode, api_slug: &str) -> Result<(), Error> {
    match mode {
        AuthMode::Managed => Ok(()),
        other => Err(mode_mismatch(api_slug, other, "a signed-in user's token")),
    }
}

/// An OAuth grant's access token on API `api_slug`: accepted in managed mode, and in every mode
/// when the API accepts OAuth; its resource (RFC 8707), when it names one, must be the project or
/// this API; and it must hold every scope the API requires (403 `insufficient_scope`, RFC 6750).
pub fn oauth_token_allowed(
    mode: AuthMode,
    accepts_oauth: bool,
    project_slug: &str,
    api_slug: &str,
    required_scopes: &[String],
    oauth: &crate::auth::tokens::OAuthClaims,
) -> Result<(), Error> {
    if mode != AuthMode::Managed && !accepts_oauth {
        return Err(mode_mismatch(api_slug, mode, "an OAuth access token"));
    }
    if let Some(resource) = &oauth.resource {
        let project_path = format!("/v1/{project_slug}");
        if !crate::auth::oauth::resource_allows(resource, &project_path, api_slug) {
            return Err(Error::invalid_credential(format!(
                "This token was issued for another resource ({resource})."
            )));
        }
    }
    if !crate::auth::oauth::has_scopes(&oauth.scope, required_scopes) {
        let needed = required_scopes.join(" ");
        return Err(Error::new(
            crate::error::Problem::InsufficientScope,
            format!(
                "This API requires the scopes `{needed}`; the token has `{}`.",
                oauth.scope
            ),
        )
        .with_field("required_scopes", required_scopes.to_vec())
        .with_header(
            "WWW-Authenticate",
            format!("Bearer error=\"insufficient_scope\", scope=\"{needed}\""),
        ));
    }
    Ok(())
}

/// A signed-in user's access token: its session and user are checked by the counter (a revoked
/// session or a disabled user is refused at admission).
pub fn by_access_token(consumer_id: String, session_id: String) -> Caller {
    Caller {
        consumer_id,
        key_id: None,
        session_id: Some(session_id),
        dpop_jti: None,
        certificate_id: None,
    }
}

/// A consumer's own JWT, verified with its credential's key: the consumer must be enabled.
pub fn by_consumer_jwt(consumer_id: String, credential_id: String) -> Caller {
    Caller {
        consumer_id,
        key_id: Some(credential_id),
        session_id: None,
        dpop_jti: None,
        certificate_id: None,
    }
}

/// What to do with a JWT that no consumer credential claims: in byo-jwt mode, verify it against the
/// owner's JWKS; otherwise it was not issued for this project.
pub fn other_jwt(mode: AuthMode, has_jwks: bool, project_slug: &str) -> Result<(), Error> {
    match (mode, has_jwks) {
        (AuthMode::ByoJwt, true) => Ok(()),
        (AuthMode::ByoJwt, false) => Err(Error::misconfigured(
            "This API is in byo-jwt mode but has no JWKS configured.",
        )),
        _ => Err(Error::invalid_credential(format!(
            "This JWT was not issued by this gateway for project `{project_slug}`."
        ))),
    }
}

/// A BYO-JWT user as a consumer: the verified token's configured claim names a user of the owner's
/// IdP, whose consumer id (`jwu_…`) is derived from the project, the API (whose id never changes,
/// unlike its IdP settings) and the user id. BYO users live in their own namespace: no token can
/// name a consumer the owner made, or a managed user.
pub fn byo_consumer_id(project_id: &str, api_id: &str, user_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for field in ["sluice byo user v1", project_id, api_id, user_id] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    format!("jwu_{}", &crate::encoding::hex(&h.finalize())[..24])
}

/// A BYO-JWT user, by its derived consumer id.
pub fn by_owner_jwt(consumer_id: String) -> Caller {
    Caller {
        consumer_id,
        key_id: None,
        session_id: None,
        dpop_jti: None,
        certificate_id: None,
    }
}

pub fn mode_mismatch(api_slug: &str, mode: AuthMode, what: &str) -> Error {
    Error::new(
        Problem::AuthModeMismatch,
        format!(
            "API `{api_slug}` is in `{}` mode, which does not accept {what}.",
            mode.as_str()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder() -> KeyHolder {
        KeyHolder {
            project_id: "prj_1".into(),
            key_id: "key_1".into(),
            consumer_id: "con_1".into(),
        }
    }

    fn a_key() -> String {
        let mut n = 0u8;
        ConsumerKey::generate(&mut |b: &mut [u8]| {
            for x in b.iter_mut() {
                n = n.wrapping_add(13);
                *x = n;
            }
        })
        .reveal()
        .to_string()
    }

    #[test]
    fn credentials_are_classified_before_any_lookup() {
        let key = a_key();
        assert!(matches!(
            presented(&key, "p", AuthMode::Managed),
            Ok(Presented::Key(_))
        ));
        let last = if key.ends_with('x') { 'y' } else { 'x' };
        let bad = format!("{}{last}", &key[..key.len() - 1]);
        assert_eq!(
            presented(&bad, "p", AuthMode::Managed).unwrap_err().kind(),
            "invalid-credential"
        );
        let e = presented("hello", "p", AuthMode::ConsumerKeyOnly).unwrap_err();
        assert!(
            e.detail.contains("Send a consumer key (ask_live_...)."),
            "{}",
            e.detail
        );
        // header {"alg":"EdDSA","kid":"p-1-0123abcd"} · {} · sig
        let header = |kid: &str| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!("{{\"alg\":\"EdDSA\",\"kid\":\"{kid}\"}}"))
        };
        let ours = format!("{}.e30.c2ln", header("p-1-0123abcd"));
        assert_eq!(
            presented(&ours, "p", AuthMode::Managed),
            Ok(Presented::SluiceToken)
        );
        for kid in ["idp-key-1", "p-idp"] {
            let theirs = format!("{}.e30.c2ln", header(kid));
            assert_eq!(
                presented(&theirs, "p", AuthMode::ByoJwt),
                Ok(Presented::OtherJwt),
                "an IdP's key `{kid}`"
            );
        }
        assert_eq!(
            presented(&ours, "other", AuthMode::Managed),
            Ok(Presented::OtherJwt),
            "another project's token is not ours"
        );
    }

    #[test]
    fn a_key_needs_a_live_holder() {
        assert_eq!(
            by_key(Some(&holder())).unwrap().key_id.as_deref(),
            Some("key_1")
        );
        assert_eq!(by_key(None).unwrap_err().status, 401);
    }

    #[test]
    fn tokens_name_their_consumer_key_and_session() {
        let t = by_exchange_token("con_1".into(), "key_1".into());
        assert_eq!(
            (t.consumer_id.as_str(), t.key_id.as_deref()),
            ("con_1", Some("key_1"))
        );
        let a = by_access_token("con_1".into(), "ses_1".into());
        assert_eq!(a.session_id.as_deref(), Some("ses_1"));
    }

    #[test]
    fn access_tokens_are_for_managed_apis_only() {
        assert!(access_token_allowed(AuthMode::Managed, "a").is_ok());
        for mode in [AuthMode::ConsumerKeyOnly, AuthMode::ByoJwt] {
            let e = access_token_allowed(mode, "a").unwrap_err();
            assert_eq!((e.status, e.kind()), (403, "auth-mode-mismatch"));
        }
    }

    #[test]
    fn other_jwts_go_to_the_owners_jwks_only_in_byo_mode() {
        assert!(other_jwt(AuthMode::ByoJwt, true, "p").is_ok());
        assert_eq!(
            other_jwt(AuthMode::ByoJwt, false, "p").unwrap_err().status,
            503
        );
        assert_eq!(
            other_jwt(AuthMode::Managed, true, "p").unwrap_err().status,
            401
        );
        let own = by_consumer_jwt("c".into(), "j".into());
        assert_eq!(
            own.key_id.as_deref(),
            Some("j"),
            "the credential is checked like a key"
        );
    }

    #[test]
    fn byo_users_have_their_own_namespace() {
        let id = byo_consumer_id("prj_1", "api_1", "con_victim");
        assert!(id.starts_with("jwu_") && id.len() == 28, "{id}");
        assert_ne!(id, "con_victim");
        assert_eq!(id, byo_consumer_id("prj_1", "api_1", "con_victim"));
        assert_ne!(id, byo_consumer_id("prj_2", "api_1", "con_victim"));
        assert_ne!(id, byo_consumer_id("prj_1", "api_2", "con_victim"));
        assert_ne!(
            byo_consumer_id("p", "ab", "c"),
            byo_consumer_id("p", "a", "bc")
        );
        assert_eq!(by_owner_jwt(id.clone()).consumer_id, id);
    }
}
