//! JWTs: verification against JWKS and per-consumer keys (the key, never the token, picks the
//! algorithm), and signing of Sluice's own tokens. `keys` makes verifying keys from JWKs, `verify`
//! checks a token against them and a policy, `sign` makes tokens.

mod keys;
mod sign;
mod verify;

pub use keys::*;
pub use sign::*;
pub use verify::*;

use serde::{Deserialize, Serialize};

/// At most this many keys are taken from one JWKS document.
pub const MAX_JWKS_KEYS: usize = 100;
/// RSA moduli shorter than this are refused (NIST: 1024-bit RSA is breakable).
pub const MIN_RSA_BITS: usize = 2048;
/// HS256 secrets shorter than the hash output (RFC 7518 §3.2) never verify anything.
pub const MIN_HS256_SECRET: usize = 32;

/// A signature algorithm Sluice accepts. Anything else (`none`, `HS384`, `PS256`, ...) is refused.
/// Serialized by its JWA name (`"RS256"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Alg {
    #[serde(rename = "RS256")]
    Rs256,
    #[serde(rename = "ES256")]
    Es256,
    #[serde(rename = "EdDSA")]
    EdDsa,
    #[serde(rename = "HS256")]
    Hs256,
}

impl Alg {
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
            Alg::Hs256 => "HS256",
        }
    }

    /// Exact, case-sensitive names as in RFC 7518 / RFC 8037.
    pub fn parse(s: &str) -> Option<Alg> {
        match s {
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            "EdDSA" => Some(Alg::EdDsa),
            "HS256" => Some(Alg::Hs256),
            _ => None,
        }
    }
}

/// Why a token (or a key) was refused. The edge answers every one of them with 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts with a JSON object header and payload.
    Malformed,
    TooLarge,
    /// The token names a `kid` that none of the keys has (the JWKS may have rotated: refetch once).
    UnknownKid(String),
    /// `none`, an unsupported algorithm, one the policy does not allow, or one that is not the key's.
    AlgorithmNotAllowed,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim(&'static str),
    /// A JWKS document or key that cannot be used (the text says why; it holds no key material).
    InvalidKey(String),
    /// No verification key is configured, and the token names no `kid`.
    NoKeys,
    /// The header lists `crit` extensions, none of which Sluice implements (RFC 7515 §4.1.11).
    UnsupportedCritical,
    /// The claim at this path (the consumer's user id) is missing, empty, or not a string or integer.
    MissingUserId(String),
}

impl TokenError {
    /// A sentence for the problem `detail`: says what is wrong, never echoes secrets.
    pub fn describe(&self) -> String {
        match self {
            TokenError::Malformed => "The token is not a well-formed JWT (three base64url parts with JSON header and claims).".into(),
            TokenError::TooLarge => "The token is too large.".into(),
            TokenError::UnknownKid(kid) => format!("The token's key id `{}` matches none of the configured keys.", printable(kid)),
            TokenError::AlgorithmNotAllowed => "The token's signature algorithm is not allowed for its key.".into(),
            TokenError::BadSignature => "The token's signature does not verify.".into(),
            TokenError::Expired => "The token has expired.".into(),
            TokenError::NotYetValid => "The token is not valid yet (its `nbf` is in the future).".into(),
            TokenError::WrongIssuer => "The token was issued by an issuer this API does not trust.".into(),
            TokenError::WrongAudience => "The token is meant for a different audience.".into(),
            TokenError::MissingClaim(claim) => format!("The token has no usable `{claim}` claim."),
            TokenError::InvalidKey(why) => format!("The verification key cannot be used: {why}."),
            TokenError::NoKeys => "No key is configured to verify this token.".into(),
            TokenError::UnsupportedCritical => "The token header lists critical extensions (`crit`) that are not supported.".into(),
            TokenError::MissingUserId(path) => format!("The token has no string or integer claim at `{}` to identify the user.", printable(path)),
        }
    }
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl std::error::Error for TokenError {}

/// Attacker-chosen text shown back in an error: at most 64 printable characters.
pub(crate) fn printable(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(64).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests;
