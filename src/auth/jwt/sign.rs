//! Making tokens: HS256 for consumers and tests, Ed25519 for Sluice's own.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::*;

pub(crate) fn compact(
    header: &Value,
    claims: &Map<String, Value>,
    sign: impl FnOnce(&[u8]) -> Vec<u8>,
) -> String {
    // `Value`'s Display is its JSON text and cannot fail (unlike `serde_json::to_string` in general).
    let mut out = B64URL.encode(header.to_string());
    out.push('.');
    out.push_str(&B64URL.encode(Value::Object(claims.clone()).to_string()));
    let signature = sign(out.as_bytes());
    out.push('.');
    out.push_str(&B64URL.encode(signature));
    out
}

pub(crate) fn hmac_sha256(secret: &[u8], message: &[u8]) -> Vec<u8> {
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        // HMAC takes keys of any length; this arm cannot run.
        Err(_) => Vec::new(),
    }
}

pub(crate) fn header_json(alg: Alg, kid: Option<&str>) -> Value {
    let mut header = Map::new();
    header.insert("alg".into(), alg.as_str().into());
    header.insert("typ".into(), "JWT".into());
    if let Some(kid) = kid {
        header.insert("kid".into(), kid.into());
    }
    Value::Object(header)
}

/// Signs `claims` as an HS256 JWT (consumer tokens and tests). Set `exp` yourself.
pub fn sign_hs256(secret: &[u8], kid: Option<&str>, claims: &Map<String, Value>) -> String {
    compact(&header_json(Alg::Hs256, kid), claims, |msg| {
        hmac_sha256(secret, msg)
    })
}

/// Sluice's own Ed25519 signing key (session access tokens). Signatures are deterministic
/// (RFC 8032), so signing draws no randomness.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    pub(crate) pair: ed25519_compact::KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// `None` for the all-zero seed, which the Ed25519 library refuses as a sign of a broken RNG.
    pub fn try_from_seed(seed: [u8; 32], kid: String) -> Option<SigningKey> {
        let pair =
            ed25519_compact::KeyPair::try_from_seed(ed25519_compact::Seed::new(seed)).ok()?;
        Some(SigningKey { kid, pair })
    }

    /// The key for a 32-byte seed (derive it from a secret, e.g. SHA-256 of it). An all-zero
    /// seed, which no real secret yields, is replaced by a fixed one rather than panicking.
    pub fn from_seed(seed: [u8; 32], kid: String) -> SigningKey {
        let seed = if seed == [0; 32] { [1; 32] } else { seed };
        let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed));
        SigningKey { kid, pair }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JWK, for Sluice's own JWKS endpoint.
    pub fn public_jwk(&self) -> Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": B64URL.encode(&self.pair.pk[..]),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    pub fn to_verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            kid: Some(self.kid.clone()),
            alg: Alg::EdDsa,
            material: Material::EdDsa(self.pair.pk),
        }
    }

    /// Signs `claims` under a header of the caller's (tests of proofs that carry their own key).
    #[cfg(test)]
    pub fn sign_with_header(
        &self,
        header: &Map<String, Value>,
        claims: &Map<String, Value>,
    ) -> String {
        compact(&Value::Object(header.clone()), claims, |msg| {
            self.pair.sk.sign(msg, None).to_vec()
        })
    }

    /// Signs `claims` with header `{"alg":"EdDSA","typ":"JWT","kid":...}`. Set `exp` yourself.
    pub fn sign(&self, claims: &Map<String, Value>) -> String {
        compact(&header_json(Alg::EdDsa, Some(&self.kid)), claims, |msg| {
            self.pair.sk.sign(msg, None).to_vec()
        })
    }
}
