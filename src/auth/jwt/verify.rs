//! Checking a compact JWS: key choice by `kid`, the signature with the key's own algorithm, and the claims against a policy.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jwt_compact::UntrustedToken;
use serde_json::{Map, Value};

use super::*;

/// What a token must satisfy besides a good signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud` (a string, or one element of an array), if set.
    pub audience: Option<String>,
    /// Algorithms a key may verify with. A key whose own algorithm is not listed is never used.
    pub allowed: Vec<Alg>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_s: i64,
    /// Longer tokens are refused before any parsing.
    pub max_len: usize,
}

impl Policy {
    /// RS256, ES256 and EdDSA (no HMAC), 60 s leeway, tokens up to 8 KiB; no issuer or audience.
    pub fn default_asymmetric() -> Policy {
        Policy {
            issuer: None,
            audience: None,
            allowed: vec![Alg::Rs256, Alg::Es256, Alg::EdDsa],
            leeway_s: 60,
            max_len: 8192,
        }
    }
}

pub(crate) fn decode_object(part: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = B64URL.decode(part).map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

/// A NumericDate (RFC 7519 §2) in whole seconds; fractions are dropped.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => match (v.as_i64(), v.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            // `as` saturates; a date beyond i64 seconds is simply "never".
            (None, Some(f)) if f.is_finite() => Ok(Some(f.floor() as i64)),
            _ => Err(TokenError::Malformed),
        },
    }
}

fn check_claims(
    claims: &Map<String, Value>,
    policy: &Policy,
    now_s: i64,
) -> Result<(), TokenError> {
    let leeway = policy.leeway_s.max(0);
    let exp = numeric_date(claims, "exp")?.ok_or(TokenError::MissingClaim("exp"))?;
    if now_s >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if now_s < nbf.saturating_sub(leeway) {
            return Err(TokenError::NotYetValid);
        }
    }
    if let Some(issuer) = &policy.issuer {
        match claims.get("iss") {
            None => return Err(TokenError::MissingClaim("iss")),
            Some(Value::String(iss)) if iss == issuer => {}
            Some(_) => return Err(TokenError::WrongIssuer),
        }
    }
    if let Some(audience) = &policy.audience {
        let matches = |v: &Value| v.as_str() == Some(audience.as_str());
        match claims.get("aud") {
            None => return Err(TokenError::MissingClaim("aud")),
            Some(Value::Array(auds)) if auds.iter().any(matches) => {}
            Some(aud) if matches(aud) => {}
            Some(_) => return Err(TokenError::WrongAudience),
        }
    }
    Ok(())
}

/// Verifies a compact JWS and returns its claims. `now_s` is the current time in epoch seconds.
///
/// Keys are chosen by the header's `kid` (only keys with that kid; every key when the token has
/// none), and each candidate verifies with its own algorithm, which the header's `alg` must name.
/// So `none` is never accepted and an `HS256` token is never checked against a public key.
pub fn verify(
    token: &str,
    keys: &[VerifyingKey],
    policy: &Policy,
    now_s: i64,
) -> Result<Map<String, Value>, TokenError> {
    if token.len() > policy.max_len {
        return Err(TokenError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header = decode_object(header)?;
    let claims = decode_object(payload)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(TokenError::Malformed)?;
    if header.contains_key("crit") {
        return Err(TokenError::UnsupportedCritical);
    }
    let alg = Alg::parse(alg)
        .filter(|alg| policy.allowed.contains(alg))
        .ok_or(TokenError::AlgorithmNotAllowed)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(TokenError::Malformed),
    };

    let mut named = keys
        .iter()
        .filter(|key| kid.is_none() || key.kid.as_deref() == kid)
        .peekable();
    if named.peek().is_none() {
        return Err(match kid {
            Some(kid) => TokenError::UnknownKid(kid.to_string()),
            None => TokenError::NoKeys,
        });
    }
    // `alg` is already in the policy, so a key of the same algorithm is allowed too.
    let candidates: Vec<&VerifyingKey> = named.filter(|key| key.alg == alg).collect();
    if candidates.is_empty() {
        return Err(TokenError::AlgorithmNotAllowed);
    }

    let untrusted = UntrustedToken::new(token).map_err(|_| TokenError::Malformed)?;
    let mut failure = TokenError::BadSignature;
    let verified = candidates
        .iter()
        .any(|key| match key.check_signature(&untrusted) {
            Ok(()) => true,
            Err(e) => {
                failure = e;
                false
            }
        });
    if !verified {
        return Err(failure);
    }
    check_claims(&claims, policy, now_s)?;
    Ok(claims)
}

/// The user id at a dot path such as `sub` or `user.id`: a non-empty string, or an integer
/// rendered in decimal. Anything else is `MissingUserId(path)`.
pub fn claim_at_path(claims: &Map<String, Value>, path: &str) -> Result<String, TokenError> {
    let missing = || TokenError::MissingUserId(path.to_string());
    let mut segments = path.split('.');
    let first = segments
        .next()
        .filter(|s| !s.is_empty())
        .ok_or_else(missing)?;
    let mut value = claims.get(first).ok_or_else(missing)?;
    for segment in segments {
        if segment.is_empty() {
            return Err(missing());
        }
        value = value.get(segment).ok_or_else(missing)?;
    }
    match value {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        _ => Err(missing()),
    }
}
