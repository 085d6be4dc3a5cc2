//! JWT verification against JWKS and per-consumer keys (the key, never the token, picks the algorithm), and signing of Sluice's own tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use jwt_compact::alg::{Ed25519, Es256, Hs256, Hs256Key, Rsa, RsaPublicKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmExt, Empty, UntrustedToken, ValidationError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;
use std::borrow::Cow;

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
fn printable(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(64).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[derive(Clone)]
enum Material {
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
    material: Material,
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
    fn check_signature(&self, token: &UntrustedToken<'_>) -> Result<(), TokenError> {
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
    let doc: Value = serde_json::from_str(json)
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

fn decode_object(part: &str) -> Result<Map<String, Value>, TokenError> {
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

fn compact(
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

fn hmac_sha256(secret: &[u8], message: &[u8]) -> Vec<u8> {
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        // HMAC takes keys of any length; this arm cannot run.
        Err(_) => Vec::new(),
    }
}

fn header_json(alg: Alg, kid: Option<&str>) -> Value {
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
    pair: ed25519_compact::KeyPair,
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

    /// Signs `claims` with header `{"alg":"EdDSA","typ":"JWT","kid":...}`. Set `exp` yourself.
    pub fn sign(&self, claims: &Map<String, Value>) -> String {
        compact(&header_json(Alg::EdDsa, Some(&self.kid)), claims, |msg| {
            self.pair.sk.sign(msg, None).to_vec()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_compact::alg::RsaPrivateKey;
    use jwt_compact::AlgorithmSignature;
    use rand_chacha::rand_core::SeedableRng;
    use serde_json::json;
    use std::sync::OnceLock;

    const NOW: i64 = 1_800_000_000;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn claims() -> Map<String, Value> {
        obj(
            json!({"sub": "user-1", "iss": "https://idp.example", "aud": "sluice", "exp": NOW + 300}),
        )
    }

    /// A token with an arbitrary header, signed by `sign` over `header.payload`.
    fn token_with(
        header: Value,
        claims: &Map<String, Value>,
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> String {
        compact(&header, claims, sign)
    }

    struct RsaFixture {
        private: RsaPrivateKey,
        jwk: Value,
    }

    /// RSA key generation is slow in debug builds: one 2048-bit key for all tests.
    fn rsa_fixture() -> &'static RsaFixture {
        static KEY: OnceLock<RsaFixture> = OnceLock::new();
        KEY.get_or_init(|| rsa_with_bits(2048, 7, "rsa-1"))
    }

    fn rsa_with_bits(bits: usize, seed: u64, kid: &str) -> RsaFixture {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let private = RsaPrivateKey::new(&mut rng, bits).expect("rsa keygen");
        let public = private.to_public_key();
        let mut jwk = serde_json::to_value(JsonWebKey::from(&public)).expect("jwk");
        jwk["kid"] = kid.into();
        jwk["alg"] = "RS256".into();
        jwk["use"] = "sig".into();
        RsaFixture { private, jwk }
    }

    fn rs256_token(fx: &RsaFixture, kid: Option<&str>, claims: &Map<String, Value>) -> String {
        token_with(header_json(Alg::Rs256, kid), claims, |msg| {
            Rsa::rs256().sign(&fx.private, msg).as_bytes().to_vec()
        })
    }

    fn es256_fixture() -> (<Es256 as Algorithm>::SigningKey, Value) {
        let sk =
            <<Es256 as Algorithm>::SigningKey as jwt_compact::alg::SigningKey<Es256>>::from_slice(
                &[0x42; 32],
            )
            .expect("p256 scalar");
        let vk = jwt_compact::alg::SigningKey::<Es256>::to_verifying_key(&sk);
        let mut jwk = serde_json::to_value(JsonWebKey::from(&vk)).expect("jwk");
        jwk["kid"] = "ec-1".into();
        (sk, jwk)
    }

    fn ed_key() -> SigningKey {
        SigningKey::from_seed([7; 32], "ed-1".into())
    }

    fn jwks(keys: &[&Value]) -> String {
        json!({ "keys": keys }).to_string()
    }

    fn policy() -> Policy {
        Policy {
            issuer: Some("https://idp.example".into()),
            audience: Some("sluice".into()),
            ..Policy::default_asymmetric()
        }
    }

    #[test]
    fn alg_names_round_trip() {
        for alg in [Alg::Rs256, Alg::Es256, Alg::EdDsa, Alg::Hs256] {
            assert_eq!(Alg::parse(alg.as_str()), Some(alg));
        }
        assert_eq!(Alg::parse("none"), None);
        assert_eq!(Alg::parse("rs256"), None);
        assert_eq!(Alg::parse("PS256"), None);
        assert_eq!(serde_json::to_value(Alg::EdDsa).unwrap(), json!("EdDSA"));
        assert_eq!(
            serde_json::from_value::<Alg>(json!("RS256")).unwrap(),
            Alg::Rs256
        );
        assert!(serde_json::from_value::<Alg>(json!("none")).is_err());
    }

    #[test]
    fn rs256_happy_path() {
        let fx = rsa_fixture();
        let keys = parse_jwks(&jwks(&[&fx.jwk])).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].alg, Alg::Rs256);
        assert_eq!(keys[0].kid.as_deref(), Some("rsa-1"));
        let token = rs256_token(fx, Some("rsa-1"), &claims());
        let got = verify(&token, &keys, &policy(), NOW).unwrap();
        assert_eq!(got, claims());
    }

    #[test]
    fn es256_happy_path() {
        let (sk, jwk) = es256_fixture();
        let keys = parse_jwks(&jwks(&[&jwk])).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].alg, Alg::Es256);
        let token = token_with(header_json(Alg::Es256, Some("ec-1")), &claims(), |msg| {
            Es256.sign(&sk, msg).as_bytes().to_vec()
        });
        assert_eq!(verify(&token, &keys, &policy(), NOW), Ok(claims()));
    }

    #[test]
    fn eddsa_sign_and_verify_round_trip() {
        let key = ed_key();
        let keys = parse_jwks(&jwks(&[&key.public_jwk()])).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].alg, Alg::EdDsa);
        let token = key.sign(&claims());
        assert_eq!(verify(&token, &keys, &policy(), NOW), Ok(claims()));
        assert_eq!(
            verify(&token, &[key.to_verifying_key()], &policy(), NOW),
            Ok(claims())
        );
        // Deterministic: same key and claims, same token.
        assert_eq!(token, key.sign(&claims()));
        let header = decode_object(token.split('.').next().unwrap()).unwrap();
        assert_eq!(
            Value::Object(header),
            json!({"alg": "EdDSA", "typ": "JWT", "kid": "ed-1"})
        );
        let jwk = key.public_jwk();
        for (field, want) in [
            ("kty", "OKP"),
            ("crv", "Ed25519"),
            ("kid", "ed-1"),
            ("alg", "EdDSA"),
            ("use", "sig"),
        ] {
            assert_eq!(jwk[field], want, "{field}");
        }
        assert_eq!(B64URL.decode(jwk["x"].as_str().unwrap()).unwrap().len(), 32);
    }

    #[test]
    fn different_seeds_give_different_keys_and_zero_seed_does_not_panic() {
        assert_ne!(
            ed_key().public_jwk()["x"],
            SigningKey::from_seed([8; 32], "ed-1".into()).public_jwk()["x"]
        );
        assert!(SigningKey::try_from_seed([0; 32], "z".into()).is_none());
        let zero = SigningKey::from_seed([0; 32], "z".into());
        let token = zero.sign(&claims());
        assert!(verify(&token, &[zero.to_verifying_key()], &policy(), NOW).is_ok());
    }

    #[test]
    fn hs256_consumer_keys_need_the_policy_to_allow_them() {
        let secret = [9u8; 32];
        let token = sign_hs256(&secret, Some("c1"), &claims());
        let keys = [hs256_key(&secret, Some("c1".into()))];
        assert_eq!(
            verify(&token, &keys, &policy(), NOW),
            Err(TokenError::AlgorithmNotAllowed)
        );
        let hs = Policy {
            allowed: vec![Alg::Hs256],
            ..policy()
        };
        assert_eq!(verify(&token, &keys, &hs, NOW), Ok(claims()));
        let other = [hs256_key(&[8u8; 32], Some("c1".into()))];
        assert_eq!(
            verify(&token, &other, &hs, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn short_hs256_secrets_verify_nothing() {
        let token = sign_hs256(b"short", None, &claims());
        let hs = Policy {
            allowed: vec![Alg::Hs256],
            ..policy()
        };
        assert!(matches!(
            verify(&token, &[hs256_key(b"short", None)], &hs, NOW),
            Err(TokenError::InvalidKey(_))
        ));
        assert!(!format!("{:?}", hs256_key(b"short-secret-text", None)).contains("short-secret"));
    }

    #[test]
    fn alg_none_is_rejected() {
        let key = ed_key();
        let keys = [key.to_verifying_key()];
        for alg in ["none", "None", "NONE"] {
            let token = token_with(json!({"alg": alg, "kid": "ed-1"}), &claims(), |_| {
                Vec::new()
            });
            assert_eq!(
                verify(&token, &keys, &policy(), NOW),
                Err(TokenError::AlgorithmNotAllowed),
                "{alg}"
            );
        }
        // Even a policy that lists every algorithm cannot name `none`.
        let all = Policy {
            allowed: vec![Alg::Rs256, Alg::Es256, Alg::EdDsa, Alg::Hs256],
            ..policy()
        };
        let token = token_with(json!({"alg": "none"}), &claims(), |_| Vec::new());
        assert_eq!(
            verify(&token, &keys, &all, NOW),
            Err(TokenError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn hs256_signed_with_the_rsa_public_key_is_rejected() {
        // The classic confusion attack: HMAC keyed with public key bytes, hoping the verifier
        // feeds its RSA key to HMAC. Tried with the modulus and with the whole public JWK text.
        let fx = rsa_fixture();
        let keys = parse_jwks(&jwks(&[&fx.jwk])).unwrap();
        let modulus = B64URL.decode(fx.jwk["n"].as_str().unwrap()).unwrap();
        let all = Policy {
            allowed: vec![Alg::Rs256, Alg::Es256, Alg::EdDsa, Alg::Hs256],
            ..policy()
        };
        for secret in [modulus, fx.jwk.to_string().into_bytes()] {
            for kid in [Some("rsa-1"), None] {
                let token = sign_hs256(&secret, kid, &claims());
                assert_eq!(
                    verify(&token, &keys, &policy(), NOW),
                    Err(TokenError::AlgorithmNotAllowed)
                );
                assert_eq!(
                    verify(&token, &keys, &all, NOW),
                    Err(TokenError::AlgorithmNotAllowed)
                );
            }
        }
    }

    #[test]
    fn header_alg_must_equal_the_keys_alg() {
        let fx = rsa_fixture();
        let keys = parse_jwks(&jwks(&[&fx.jwk])).unwrap();
        // An RS256 signature relabelled ES256 with the RSA key's kid.
        let token = token_with(header_json(Alg::Es256, Some("rsa-1")), &claims(), |msg| {
            Rsa::rs256().sign(&fx.private, msg).as_bytes().to_vec()
        });
        assert_eq!(
            verify(&token, &keys, &policy(), NOW),
            Err(TokenError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn small_rsa_keys_are_skipped() {
        let small = rsa_with_bits(1024, 3, "rsa-small");
        let ed = ed_key().public_jwk();
        let keys = parse_jwks(&jwks(&[&small.jwk, &ed])).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ed-1"));
        assert!(parse_jwk(&small.jwk).unwrap_err().contains("1024 bits"));
        let token = rs256_token(&small, Some("rsa-small"), &claims());
        assert_eq!(
            verify(&token, &keys, &policy(), NOW),
            Err(TokenError::UnknownKid("rsa-small".into()))
        );
    }

    #[test]
    fn jwks_skips_unusable_keys_and_rejects_non_jwks() {
        let ed = ed_key().public_jwk();
        let mut enc = ed.clone();
        enc["use"] = "enc".into();
        let mut wrong_alg = ed.clone();
        wrong_alg["alg"] = "RS256".into();
        let mut no_verify = ed.clone();
        no_verify["key_ops"] = json!(["sign"]);
        let mut bad_x = ed.clone();
        bad_x["x"] = "AAAA".into();
        let oct =
            json!({"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "alg": "HS256"});
        let x448 = json!({"kty": "OKP", "crv": "X25519", "x": ed["x"]});
        let p384 = json!({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"});
        let doc = jwks(&[
            &enc,
            &wrong_alg,
            &no_verify,
            &bad_x,
            &oct,
            &x448,
            &p384,
            &json!("x"),
            &json!({}),
            &ed,
        ]);
        let keys = parse_jwks(&doc).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].alg, Alg::EdDsa);
        assert_eq!(parse_jwks(r#"{"keys":[]}"#).unwrap().len(), 0);
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"keys":{}}"#,
            "not json",
            r#"{"keys":"x"}"#,
        ] {
            assert!(
                matches!(parse_jwks(bad), Err(TokenError::InvalidKey(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn hostile_keys_neither_panic_nor_verify() {
        // A JWKS comes from a URL the API owner chose: its keys are untrusted input too.
        let even_n = {
            let mut n = vec![0x80u8; 256];
            n[255] = 0x02;
            n
        };
        let rsa = |n: &[u8], e: &[u8]| json!({"kty": "RSA", "kid": "k", "n": B64URL.encode(n), "e": B64URL.encode(e)});
        let okp =
            |x: &[u8]| json!({"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": B64URL.encode(x)});
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        let candidates = [
            rsa(&even_n, &[1, 0, 1]),
            rsa(&[0xff; 256], &[3]),
            rsa(&[0xff; 256], &[2]),
            rsa(&[0xff; 256], &[1]),
            rsa(&[0xff; 256], &[]),
            rsa(&[0xff; 1024], &[1, 0, 1]),
            okp(&[0; 32]),
            okp(&identity_point),
            okp(&[0xff; 32]),
            json!({"kty": "EC", "crv": "P-256", "kid": "k", "x": B64URL.encode([0; 32]), "y": B64URL.encode([0; 32])}),
        ];
        let keys = parse_jwks(&jwks(&candidates.iter().collect::<Vec<_>>())).unwrap();
        assert!(
            !keys.is_empty(),
            "some hostile keys parse and must then fail safely"
        );
        for alg in [Alg::Rs256, Alg::EdDsa, Alg::Es256] {
            for sig in [vec![], vec![0u8; 64], vec![0xffu8; 256], vec![1u8; 256]] {
                let token = token_with(header_json(alg, Some("k")), &claims(), |_| sig.clone());
                let got = verify(&token, &keys, &policy(), NOW);
                assert!(got.is_err(), "{alg:?} {got:?}");
            }
        }
    }

    #[test]
    fn jwks_is_capped() {
        let ed = ed_key().public_jwk();
        let many: Vec<&Value> = std::iter::repeat_n(&ed, 150).collect();
        assert_eq!(parse_jwks(&jwks(&many)).unwrap().len(), MAX_JWKS_KEYS);
    }

    #[test]
    fn expiry_and_leeway() {
        let key = ed_key();
        let keys = [key.to_verifying_key()];
        let at = |exp: i64| {
            let mut c = claims();
            c.insert("exp".into(), exp.into());
            key.sign(&c)
        };
        assert_eq!(
            verify(&at(NOW - 61), &keys, &policy(), NOW),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&at(NOW - 60), &keys, &policy(), NOW),
            Err(TokenError::Expired)
        );
        assert!(verify(&at(NOW - 30), &keys, &policy(), NOW).is_ok());
        let strict = Policy {
            leeway_s: 0,
            ..policy()
        };
        assert_eq!(
            verify(&at(NOW - 30), &keys, &strict, NOW),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&at(NOW), &keys, &strict, NOW),
            Err(TokenError::Expired)
        );
        assert!(verify(&at(NOW + 1), &keys, &strict, NOW).is_ok());
        let mut no_exp = claims();
        no_exp.remove("exp");
        assert_eq!(
            verify(&key.sign(&no_exp), &keys, &policy(), NOW),
            Err(TokenError::MissingClaim("exp"))
        );
        let mut text_exp = claims();
        text_exp.insert("exp".into(), "tomorrow".into());
        assert_eq!(
            verify(&key.sign(&text_exp), &keys, &policy(), NOW),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn not_before() {
        let key = ed_key();
        let keys = [key.to_verifying_key()];
        let at = |nbf: i64| {
            let mut c = claims();
            c.insert("nbf".into(), nbf.into());
            key.sign(&c)
        };
        assert_eq!(
            verify(&at(NOW + 61), &keys, &policy(), NOW),
            Err(TokenError::NotYetValid)
        );
        assert!(verify(&at(NOW + 60), &keys, &policy(), NOW).is_ok());
        assert!(verify(&at(NOW - 5), &keys, &policy(), NOW).is_ok());
    }

    #[test]
    fn issuer_and_audience() {
        let key = ed_key();
        let keys = [key.to_verifying_key()];
        let with = |name: &str, v: Value| {
            let mut c = claims();
            c.insert(name.into(), v);
            key.sign(&c)
        };
        let without = |name: &str| {
            let mut c = claims();
            c.remove(name);
            key.sign(&c)
        };
        assert_eq!(
            verify(
                &with("iss", "https://evil.example".into()),
                &keys,
                &policy(),
                NOW
            ),
            Err(TokenError::WrongIssuer)
        );
        assert_eq!(
            verify(
                &with("iss", json!(["https://idp.example"])),
                &keys,
                &policy(),
                NOW
            ),
            Err(TokenError::WrongIssuer)
        );
        assert_eq!(
            verify(&without("iss"), &keys, &policy(), NOW),
            Err(TokenError::MissingClaim("iss"))
        );
        assert_eq!(
            verify(&with("aud", "other".into()), &keys, &policy(), NOW),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            verify(&with("aud", json!(["a", "b"])), &keys, &policy(), NOW),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            verify(&without("aud"), &keys, &policy(), NOW),
            Err(TokenError::MissingClaim("aud"))
        );
        assert!(verify(&with("aud", json!(["a", "sluice"])), &keys, &policy(), NOW).is_ok());
        // Without issuer/audience in the policy, neither is looked at.
        let open = Policy::default_asymmetric();
        assert!(verify(&with("aud", "other".into()), &keys, &open, NOW).is_ok());
        assert!(verify(&without("iss"), &keys, &open, NOW).is_ok());
    }

    #[test]
    fn tampered_payload_fails_the_signature() {
        let key = ed_key();
        let token = key.sign(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims();
        forged.insert("sub".into(), "admin".into());
        let forged_payload = B64URL.encode(Value::Object(forged).to_string());
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(
            verify(&tampered, &[key.to_verifying_key()], &policy(), NOW),
            Err(TokenError::BadSignature)
        );
        // A signature from another key fails too.
        let other = SigningKey::from_seed([9; 32], "ed-1".into()).sign(&claims());
        assert_eq!(
            verify(&other, &[key.to_verifying_key()], &policy(), NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn unknown_kid_is_reported_for_refetch() {
        let key = ed_key();
        let token = SigningKey::from_seed([7; 32], "ed-2".into()).sign(&claims());
        assert_eq!(
            verify(&token, &[key.to_verifying_key()], &policy(), NOW),
            Err(TokenError::UnknownKid("ed-2".into()))
        );
        assert_eq!(
            verify(&token, &[], &policy(), NOW),
            Err(TokenError::UnknownKid("ed-2".into()))
        );
        let kidless = token_with(header_json(Alg::EdDsa, None), &claims(), |_| vec![0; 64]);
        assert_eq!(
            verify(&kidless, &[], &policy(), NOW),
            Err(TokenError::NoKeys)
        );
        assert!(
            TokenError::UnknownKid("x".repeat(500))
                .describe()
                .chars()
                .count()
                < 200
        );
    }

    #[test]
    fn a_kidless_token_tries_every_key() {
        let fx = rsa_fixture();
        let (_, ec) = es256_fixture();
        let ed = ed_key();
        let other_ed = SigningKey::from_seed([3; 32], "ed-0".into());
        let keys = parse_jwks(&jwks(&[
            &fx.jwk,
            &ec,
            &other_ed.public_jwk(),
            &ed.public_jwk(),
        ]))
        .unwrap();
        assert_eq!(keys.len(), 4);
        let token = compact(&header_json(Alg::EdDsa, None), &claims(), |msg| {
            ed.pair.sk.sign(msg, None).to_vec()
        });
        assert_eq!(verify(&token, &keys, &policy(), NOW), Ok(claims()));
        let unsigned = compact(&header_json(Alg::EdDsa, None), &claims(), |_| vec![0; 64]);
        assert_eq!(
            verify(&unsigned, &keys, &policy(), NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn malformed_tokens() {
        let key = ed_key();
        let keys = [key.to_verifying_key()];
        let good = key.sign(&claims());
        let parts: Vec<&str> = good.split('.').collect();
        let cases = [
            String::new(),
            "garbage".into(),
            format!("{}.{}", parts[0], parts[1]),
            format!("{good}.{}", parts[2]),
            format!("{}.!!!.{}", parts[0], parts[2]),
            format!("%%%.{}.{}", parts[1], parts[2]),
            format!("{}.{}.***", parts[0], parts[1]),
            format!("{}.{}.{}", B64URL.encode("[1,2]"), parts[1], parts[2]),
            format!("{}.{}.{}", parts[0], B64URL.encode("not json"), parts[2]),
            format!(
                "{}.{}.{}",
                B64URL.encode(r#"{"kid":"ed-1"}"#),
                parts[1],
                parts[2]
            ),
            format!(
                "{}.{}.{}",
                B64URL.encode(r#"{"alg":"EdDSA","kid":7}"#),
                parts[1],
                parts[2]
            ),
            "..".into(),
            "a.b.c".into(),
        ];
        for token in &cases {
            let got = verify(token, &keys, &policy(), NOW);
            assert!(
                matches!(
                    got,
                    Err(TokenError::Malformed) | Err(TokenError::BadSignature)
                ),
                "{token}: {got:?}"
            );
        }
        // Header/payload problems are Malformed specifically.
        assert_eq!(
            verify("garbage", &keys, &policy(), NOW),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify(&cases[2], &keys, &policy(), NOW),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify(&cases[4], &keys, &policy(), NOW),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify(&cases[6], &keys, &policy(), NOW),
            Err(TokenError::Malformed)
        );
        let crit = token_with(
            json!({"alg": "EdDSA", "kid": "ed-1", "crit": ["b64"], "b64": false}),
            &claims(),
            |msg| key.pair.sk.sign(msg, None).to_vec(),
        );
        assert_eq!(
            verify(&crit, &keys, &policy(), NOW),
            Err(TokenError::UnsupportedCritical)
        );
    }

    #[test]
    fn oversized_tokens_are_refused_before_parsing() {
        let key = ed_key();
        let mut big = claims();
        big.insert("pad".into(), "x".repeat(9000).into());
        let token = key.sign(&big);
        assert_eq!(
            verify(&token, &[key.to_verifying_key()], &policy(), NOW),
            Err(TokenError::TooLarge)
        );
        assert_eq!(
            verify(&"x".repeat(8193), &[], &policy(), NOW),
            Err(TokenError::TooLarge)
        );
        let roomy = Policy {
            max_len: 20_000,
            ..policy()
        };
        assert!(verify(&token, &[key.to_verifying_key()], &roomy, NOW).is_ok());
    }

    #[test]
    fn claim_at_path_finds_strings_and_integers() {
        let c = obj(json!({
            "sub": "u-1",
            "user": {"id": "nested", "num": 12345678901_i64, "obj": {"a": 1}, "f": 1.5, "empty": ""},
            "n": 42,
        }));
        assert_eq!(claim_at_path(&c, "sub"), Ok("u-1".into()));
        assert_eq!(claim_at_path(&c, "user.id"), Ok("nested".into()));
        assert_eq!(claim_at_path(&c, "user.num"), Ok("12345678901".into()));
        assert_eq!(claim_at_path(&c, "n"), Ok("42".into()));
        for bad in [
            "missing",
            "user.missing",
            "user",
            "user.obj",
            "user.f",
            "user.empty",
            "",
            "user.",
            ".sub",
            "sub.x",
            "user..id",
        ] {
            assert_eq!(
                claim_at_path(&c, bad),
                Err(TokenError::MissingUserId(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_error_describes_itself() {
        let all = [
            TokenError::Malformed,
            TokenError::TooLarge,
            TokenError::UnknownKid("k".into()),
            TokenError::AlgorithmNotAllowed,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::WrongIssuer,
            TokenError::WrongAudience,
            TokenError::MissingClaim("exp"),
            TokenError::InvalidKey("why".into()),
            TokenError::NoKeys,
            TokenError::UnsupportedCritical,
            TokenError::MissingUserId("user.id".into()),
        ];
        let texts: std::collections::HashSet<String> =
            all.iter().map(TokenError::describe).collect();
        assert_eq!(texts.len(), all.len());
        assert!(texts.iter().all(|t| t.ends_with('.')));
    }
}
