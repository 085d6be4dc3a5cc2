//! Verifying keys: made from a JWK (RSA 2048+, P-256, Ed25519) or an HS256 secret, each fixed to one algorithm.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jwt_compact::alg::{Ed25519, Es256, Hs256, Hs256Key, Rsa, RsaPublicKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmExt, Empty, UntrustedToken, ValidationError};
use serde_json::{Map, Value};
use std::borrow::Cow;

use super::*;

#[derive(Clone)]
pub(crate) enum Material {
    Rsa(RsaPublicKey),
    Es256(<Es256 as Algorithm>::VerifyingKey),
    EdDsa(<Ed25519 as Algorithm>::VerifyingKey),
    /// `None` when the secret is too short to be safe: such a key verifies nothing.
    Hs256(Option<Hs256Key>),
}

/// A key that can verify tokens. Its `alg` is fixed when the key is made and is the only
/// algorithm it will ever verify with.
#[derive(Clone)]
pub struct VerifyingKey {
    pub kid: Option<String>,
    pub alg: Alg,
    pub(crate) material: Material,
}

impl std::fmt::Debug for VerifyingKey {
    // Never print key material (HS256 keys are secrets).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// Checks the signature with this key's own algorithm (the token's `alg` must already equal it).
    pub(crate) fn check_signature(&self, token: &UntrustedToken<'_>) -> Result<(), TokenError> {
        let result = match &self.material {
            Material::Rsa(key) => Rsa::rs256()
                .validator::<Empty>(key)
                .validate(token)
                .map(drop),
            Material::Es256(key) => Es256.validator::<Empty>(key).validate(token).map(drop),
            Material::EdDsa(key) => Ed25519.validator::<Empty>(key).validate(token).map(drop),
            Material::Hs256(Some(key)) => Hs256.validator::<Empty>(key).validate(token).map(drop),
            Material::Hs256(None) => {
                return Err(TokenError::InvalidKey(format!(
                    "an HS256 secret must be at least {MIN_HS256_SECRET} bytes"
                )))
            }
        };
        result.map_err(|e| match e {
            ValidationError::AlgorithmMismatch { .. } => TokenError::AlgorithmNotAllowed,
            ValidationError::MalformedClaims(_) => TokenError::Malformed,
            _ => TokenError::BadSignature,
        })
    }
}

/// A per-consumer symmetric key. Secrets shorter than [`MIN_HS256_SECRET`] bytes are kept but
/// verify nothing (`InvalidKey`), so a weak secret fails closed.
pub fn hs256_key(secret: &[u8], kid: Option<String>) -> VerifyingKey {
    let key = (secret.len() >= MIN_HS256_SECRET).then(|| Hs256Key::new(secret));
    VerifyingKey {
        kid,
        alg: Alg::Hs256,
        material: Material::Hs256(key),
    }
}

fn b64url_field(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let text = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no `{name}`"))?;
    // RFC 7517 says unpadded, but some issuers pad; padding carries no information.
    B64URL
        .decode(text.trim_end_matches('='))
        .map_err(|_| format!("`{name}` is not base64url"))
}

/// Significant bits of a big-endian unsigned integer.
fn bit_len(be: &[u8]) -> usize {
    match be.iter().position(|&b| b != 0) {
        Some(i) => (be.len() - i - 1) * 8 + (8 - be[i].leading_zeros() as usize),
        None => 0,
    }
}

/// One public JWK → a verifying key, or why it cannot be used. Symmetric (`oct`) keys are
/// refused: a JWKS is public, so a secret in it is no secret.
pub fn parse_jwk(jwk: &Value) -> Result<VerifyingKey, String> {
    let jwk = jwk.as_object().ok_or("a key is not a JSON object")?;
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err("`kid` is not a string".into()),
    };
    match jwk.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(_) => return Err("`use` is not `sig`".into()),
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Err("`key_ops` does not include `verify`".into());
        }
    }
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
    let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or("");
    let (alg, material) = match (kty, crv) {
        ("RSA", _) => {
            let n = b64url_field(jwk, "n")?;
            let e = b64url_field(jwk, "e")?;
            let bits = bit_len(&n);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "the RSA modulus has {bits} bits; at least {MIN_RSA_BITS} are required"
                ));
            }
            let generic = JsonWebKey::Rsa {
                modulus: Cow::Owned(n),
                public_exponent: Cow::Owned(e),
                private_parts: None,
            };
            let key = RsaPublicKey::try_from(&generic).map_err(|_| "invalid RSA key")?;
            (Alg::Rs256, Material::Rsa(key))
        }
        ("EC", "P-256") => {
            let generic = JsonWebKey::EllipticCurve {
                curve: Cow::Borrowed("P-256"),
                x: Cow::Owned(b64url_field(jwk, "x")?),
                y: Cow::Owned(b64url_field(jwk, "y")?),
                secret: None,
            };
            let key = <Es256 as Algorithm>::VerifyingKey::try_from(&generic)
                .map_err(|_| "invalid P-256 key")?;
            (Alg::Es256, Material::Es256(key))
        }
        ("OKP", "Ed25519") => {
            let generic = JsonWebKey::KeyPair {
                curve: Cow::Borrowed("Ed25519"),
                x: Cow::Owned(b64url_field(jwk, "x")?),
                secret: None,
            };
            let key = <Ed25519 as Algorithm>::VerifyingKey::try_from(&generic)
                .map_err(|_| "invalid Ed25519 key")?;
            (Alg::EdDsa, Material::EdDsa(key))
        }
        ("oct", _) => return Err("symmetric keys are not accepted from a JWKS".into()),
        _ => return Err(format!("unsupported key type `{}`", printable(kty))),
    };
    match jwk.get("alg") {
        None => {}
        Some(Value::String(a)) if a == alg.as_str() => {}
        Some(_) => {
            return Err(format!(
                "`alg` disagrees with the key type ({})",
                alg.as_str()
            ))
        }
    }
    Ok(VerifyingKey { kid, alg, material })
}

/// Parses a JWKS document (`{"keys":[...]}`), keeping the usable signing keys (at most
/// [`MAX_JWKS_KEYS`]) and skipping the rest. Fails only if the document is not a JWKS at all.
pub fn parse_jwks(json: &str) -> Result<Vec<VerifyingKey>, TokenError> {
    let doc: Value = crate::encoding::from_json(json)
        .map_err(|_| TokenError::InvalidKey("the JWKS document is not JSON".into()))?;
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| TokenError::InvalidKey("the JWKS document has no `keys` array".into()))?;
    Ok(entries
        .iter()
        .filter_map(|jwk| parse_jwk(jwk).ok())
        .take(MAX_JWKS_KEYS)
        .collect())
}
