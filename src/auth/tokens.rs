//! Sluice's own tokens: per-project signing keys derived from the ENCRYPTION_KEY secret (never stored),
//! and the claims of managed-mode access tokens and key-exchange tokens.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::auth::jwt::SigningKey;
use crate::encoding::hex;

/// Lifetime of a token obtained by exchanging a consumer key.
pub const EXCHANGE_TTL_S: i64 = 30 * 60;

/// The issuer of every token Sluice signs for a project.
pub fn issuer(project_slug: &str) -> String {
    format!("sluice:{project_slug}")
}

/// The project's signing key of a given generation: SHA-256 over a label, the (length-prefixed) secret,
/// the project id and the generation is the Ed25519 seed. Rotating means moving to the next
/// generation; nothing secret is stored.
pub fn signing_key(
    secret: &str,
    project_id: &str,
    project_slug: &str,
    generation: i64,
) -> SigningKey {
    let mut h = Sha256::new();
    h.update(b"sluice token signing key v1\0");
    h.update((secret.len() as u64).to_be_bytes());
    h.update(secret.as_bytes());
    h.update(project_id.as_bytes());
    h.update(generation.to_be_bytes());
    let seed: [u8; 32] = h.finalize().into();
    let fingerprint = hex(&Sha256::digest(seed)[..4]);
    SigningKey::from_seed(seed, format!("{project_slug}-{generation}-{fingerprint}"))
}

/// Owner access tokens (the admin API's): their own issuer, audience and key, so a project's tokens
/// are never accepted on the admin API and owner tokens never on a project's routes.
pub const OWNER_ISSUER: &str = "sluice-admin";
pub const OWNER_AUDIENCE: &str = "sluice-admin-api";
/// Lifetime of an owner access token.
pub const OWNER_TOKEN_TTL_S: i64 = 24 * 60 * 60;
/// The `kid` prefix of owner-token keys.
pub const OWNER_KID_PREFIX: &str = "sluice-admin-";

/// The instance's key for owner tokens (generation 1), derived like a project's under its own label.
pub fn owner_signing_key(secret: &str) -> SigningKey {
    let mut h = Sha256::new();
    h.update(b"sluice owner token signing key v1\0");
    h.update((secret.len() as u64).to_be_bytes());
    h.update(secret.as_bytes());
    let seed: [u8; 32] = h.finalize().into();
    let fingerprint = hex(&Sha256::digest(seed)[..4]);
    SigningKey::from_seed(seed, format!("{OWNER_KID_PREFIX}1-{fingerprint}"))
}

/// A signed-in owner's access token.
pub fn owner_claims(
    owner_id: &str,
    email: &str,
    session_id: &str,
    now_s: i64,
    ttl_s: i64,
) -> Map<String, Value> {
    let Value::Object(claims) = json!({
        "iss": OWNER_ISSUER, "aud": OWNER_AUDIENCE, "sub": owner_id, "email": email,
        "sid": session_id, "typ": "owner", "iat": now_s, "exp": now_s + ttl_s,
    }) else {
        return Map::new();
    };
    claims
}

/// A verified owner token's owner and session; `None` if the claims are not an owner token's.
pub fn owner_of(claims: &Map<String, Value>) -> Option<(String, String)> {
    let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_string);
    (s("typ")? == "owner").then_some(())?;
    Some((s("sub")?, s("sid")?))
}

/// What a verified Sluice token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SluiceToken {
    /// A signed-in end user (managed mode): consumer and session.
    Access {
        consumer_id: String,
        session_id: String,
        /// The DPoP key the token is bound to (`cnf.jkt`): it is only accepted with a proof by it.
        jkt: Option<String>,
    },
    /// A consumer key exchanged for a short-lived token: valid while the key is.
    Exchange { consumer_id: String, key_id: String },
}

/// A signed-in user's access token; `jkt` (a DPoP key's thumbprint) binds it to that key (`cnf`).
pub fn access_claims(
    project_slug: &str,
    consumer_id: &str,
    email: &str,
    session_id: &str,
    now_s: i64,
    ttl_s: i64,
    jkt: Option<&str>,
) -> Map<String, Value> {
    let Value::Object(mut claims) = json!({
        "iss": issuer(project_slug), "aud": project_slug, "sub": consumer_id, "email": email,
        "sid": session_id, "typ": "access", "iat": now_s, "exp": now_s + ttl_s,
    }) else {
        return Map::new();
    };
    if let Some(jkt) = jkt {
        claims.insert("cnf".into(), json!({ "jkt": jkt }));
    }
    claims
}

/// What an OAuth grant adds to an access token: the client, the granted scopes, and the RFC 8707
/// resource as a second audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthClaims {
    pub client_id: String,
    pub scope: String,
    pub resource: Option<String>,
}

/// An OAuth grant's access token: a signed-in user's token (`sid` is the grant) with `client_id`,
/// `scope`, and `aud` listing the project and the resource when the client named one.
pub fn oauth_access_claims(
    project_slug: &str,
    consumer_id: &str,
    session_id: &str,
    now_s: i64,
    ttl_s: i64,
    oauth: &OAuthClaims,
) -> Map<String, Value> {
    let mut claims = access_claims(
        project_slug,
        consumer_id,
        "",
        session_id,
        now_s,
        ttl_s,
        None,
    );
    claims.remove("email");
    claims.insert("client_id".into(), Value::from(oauth.client_id.clone()));
    claims.insert("scope".into(), Value::from(oauth.scope.clone()));
    if let Some(resource) = &oauth.resource {
        claims.insert("aud".into(), json!([project_slug, resource]));
    }
    claims
}

/// The OAuth part of verified access-token claims, if the token came from an OAuth grant.
pub fn oauth_of(claims: &Map<String, Value>) -> Option<OAuthClaims> {
    let client_id = claims.get("client_id")?.as_str()?.to_string();
    let scope = claims
        .get("scope")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let resource = match claims.get("aud") {
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(Value::as_str)
            .find(|a| a.contains("://"))
            .map(str::to_string),
        _ => None,
    };
    Some(OAuthClaims {
        client_id,
        scope,
        resource,
    })
}

pub fn exchange_claims(
    project_slug: &str,
    consumer_id: &str,
    key_id: &str,
    now_s: i64,
) -> Map<String, Value> {
    let Value::Object(claims) = json!({
        "iss": issuer(project_slug), "aud": project_slug, "sub": consumer_id, "key_id": key_id,
        "typ": "exchange", "iat": now_s, "exp": now_s + EXCHANGE_TTL_S,
    }) else {
        return Map::new();
    };
    claims
}

/// Reads verified claims into what they stand for; `None` if they are not a Sluice token's.
pub fn classify(claims: &Map<String, Value>) -> Option<SluiceToken> {
    let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_string);
    match s("typ")?.as_str() {
        "access" => Some(SluiceToken::Access {
            consumer_id: s("sub")?,
            session_id: s("sid")?,
            jkt: claims
                .get("cnf")
                .and_then(|c| c.get("jkt"))
                .and_then(Value::as_str)
                .map(str::to_string),
        }),
        "exchange" => Some(SluiceToken::Exchange {
            consumer_id: s("sub")?,
            key_id: s("key_id")?,
        }),
        _ => None,
    }
}

/// Whether `kid` names one of the project's signing keys (`{slug}-{generation}-{8 hex digits}`, as
/// `signing_key` makes them), to tell Sluice tokens from an owner's or an IdP's own JWTs: an IdP
/// key whose id merely starts with the project's slug is not taken for ours.
pub fn is_project_kid(kid: &str, project_slug: &str) -> bool {
    let Some(rest) = kid
        .strip_prefix(project_slug)
        .and_then(|r| r.strip_prefix('-'))
    else {
        return false;
    };
    let Some((generation, fingerprint)) = rest.split_once('-') else {
        return false;
    };
    !generation.is_empty()
        && generation.bytes().all(|b| b.is_ascii_digit())
        && fingerprint.len() == 8
        && fingerprint
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::{verify, Policy};

    #[test]
    fn keys_are_deterministic_per_generation_and_project() {
        let a1 = signing_key("secret-secret-123", "prj_1", "demo", 1);
        assert_eq!(
            a1.public_jwk(),
            signing_key("secret-secret-123", "prj_1", "demo", 1).public_jwk()
        );
        assert_ne!(
            a1.public_jwk()["x"],
            signing_key("secret-secret-123", "prj_1", "demo", 2).public_jwk()["x"]
        );
        assert_ne!(
            a1.public_jwk()["x"],
            signing_key("secret-secret-123", "prj_2", "demo", 1).public_jwk()["x"]
        );
        assert_ne!(
            a1.public_jwk()["x"],
            signing_key("other-secret-456", "prj_1", "demo", 1).public_jwk()["x"]
        );
        assert!(is_project_kid(a1.kid(), "demo"), "{}", a1.kid());
        assert!(is_project_kid(
            signing_key("secret-secret-123", "prj_1", "demo", 12).kid(),
            "demo"
        ));
        for other in [
            "demo-idp",
            "demo-1",
            "demo-1-0123abc",
            "demo-1-0123ABCD",
            "demo-x-0123abcd",
            "demo--0123abcd",
            "demo-a-1-0123abcd",
            "demox-1-0123abcd",
        ] {
            assert!(!is_project_kid(other, "demo"), "{other}");
        }
        // A project whose slug starts with another's: each knows only its own keys.
        assert!(!is_project_kid(a1.kid(), "dem"));
    }

    #[test]
    fn owner_tokens_are_apart_from_project_tokens() {
        let owner = owner_signing_key("secret-secret-123");
        let project = signing_key("secret-secret-123", "prj_1", "demo", 1);
        assert_ne!(owner.public_jwk()["x"], project.public_jwk()["x"]);
        assert!(owner.kid().starts_with(OWNER_KID_PREFIX));
        let token = owner.sign(&owner_claims(
            "own_1",
            "a@b.co",
            "ses_1",
            1_000,
            OWNER_TOKEN_TTL_S,
        ));
        let mut policy = Policy::default_asymmetric();
        policy.issuer = Some(OWNER_ISSUER.into());
        policy.audience = Some(OWNER_AUDIENCE.into());
        let claims = verify(&token, &[owner.to_verifying_key()], &policy, 1_100).unwrap();
        assert_eq!(owner_of(&claims), Some(("own_1".into(), "ses_1".into())));
        assert_eq!(
            classify(&claims),
            None,
            "an owner token is no project token"
        );
        assert!(verify(&token, &[project.to_verifying_key()], &policy, 1_100).is_err());
        let user = project.sign(&access_claims(
            "demo", "con_1", "a@b.co", "ses_1", 1_000, 900, None,
        ));
        assert!(verify(&user, &[owner.to_verifying_key()], &policy, 1_100).is_err());
        let mut user_claims = access_claims("demo", "con_1", "a@b.co", "ses_1", 1_000, 900, None);
        assert_eq!(owner_of(&user_claims), None);
        user_claims.insert("typ".into(), "owner".into());
        user_claims.remove("sid");
        assert_eq!(owner_of(&user_claims), None);
    }

    #[test]
    fn access_token_round_trip() {
        let key = signing_key("secret-secret-123", "prj_1", "demo", 1);
        let token = key.sign(&access_claims(
            "demo", "con_1", "a@b.co", "ses_1", 1_000, 900, None,
        ));
        let mut policy = Policy::default_asymmetric();
        policy.issuer = Some(issuer("demo"));
        policy.audience = Some("demo".into());
        let claims = verify(&token, &[key.to_verifying_key()], &policy, 1_100).unwrap();
        assert_eq!(
            classify(&claims),
            Some(SluiceToken::Access {
                consumer_id: "con_1".into(),
                session_id: "ses_1".into(),
                jkt: None,
            })
        );
        let bound = access_claims(
            "demo",
            "con_1",
            "a@b.co",
            "ses_1",
            1_000,
            900,
            Some("thumb"),
        );
        assert_eq!(bound["cnf"]["jkt"], "thumb");
        assert!(matches!(
            classify(&bound),
            Some(SluiceToken::Access { jkt: Some(j), .. }) if j == "thumb"
        ));
        assert!(verify(&token, &[key.to_verifying_key()], &policy, 1_000 + 900 + 61).is_err());
        let ex = exchange_claims("demo", "con_2", "key_9", 0);
        assert_eq!(
            classify(&ex),
            Some(SluiceToken::Exchange {
                consumer_id: "con_2".into(),
                key_id: "key_9".into()
            })
        );
        assert_eq!(ex["exp"], EXCHANGE_TTL_S);
        let mut other = ex.clone();
        other.insert("typ".into(), "id".into());
        assert_eq!(classify(&other), None);
    }
}
