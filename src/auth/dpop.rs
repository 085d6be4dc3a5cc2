//! DPoP (RFC 9449): checking a client's proof of possession of its key, and the key's thumbprint
//! (RFC 7638) that sender-constrained refresh sessions and access tokens (`cnf.jkt`) are bound to.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jwt_compact::UntrustedToken;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::auth::jwt::{parse_jwk, Alg};

/// How far a proof's `iat` may be from the gateway's clock, in seconds.
pub const IAT_WINDOW_S: i64 = 120;
/// How long a proof's `jti` is remembered: longer than any `iat` the proof check accepts.
pub const PROOF_MEMORY_MS: i64 = (2 * IAT_WINDOW_S + 10) * 1000;

/// The proofs a holder has seen (`seen`: each `jti` with when it may be forgotten), for proofs
/// used once: forgets the expired ones, then remembers `jti` (at most `max`, the oldest forgotten
/// first). False for a proof seen before (a replay); true without a proof.
pub fn remember_proof(
    seen: &mut Vec<(String, i64)>,
    now: i64,
    jti: Option<&str>,
    max: usize,
) -> bool {
    seen.retain(|(_, until)| *until > now);
    let Some(jti) = jti else {
        return true;
    };
    if seen.iter().any(|(s, _)| s == jti) {
        return false;
    }
    if seen.len() >= max {
        seen.remove(0);
    }
    seen.push((jti.to_string(), now.saturating_add(PROOF_MEMORY_MS)));
    true
}
const MAX_PROOF_LEN: usize = 4096;

/// A checked proof: the key's thumbprint and the proof's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub jkt: String,
    pub jti: String,
}

/// What a proof must match: the request it came with and, at a resource, the access token.
pub struct Expected<'a> {
    pub method: &'a str,
    /// The request URL; query and fragment are ignored, as RFC 9449 says.
    pub url: &'a str,
    pub access_token: Option<&'a str>,
    pub now_s: i64,
}

fn b64_sha256(data: &[u8]) -> String {
    B64URL.encode(Sha256::digest(data))
}

/// The JWK thumbprint (RFC 7638): SHA-256 of the key's required members in lexicographic order.
pub fn thumbprint(jwk: &Map<String, Value>) -> Result<String, String> {
    let field = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the key has no `{name}`"))
    };
    let canonical = match field("kty")? {
        "EC" => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            Value::from(field("crv")?),
            Value::from(field("x")?),
            Value::from(field("y")?)
        ),
        "OKP" => format!(
            r#"{{"crv":{},"kty":"OKP","x":{}}}"#,
            Value::from(field("crv")?),
            Value::from(field("x")?)
        ),
        "RSA" => format!(
            r#"{{"e":{},"kty":"RSA","n":{}}}"#,
            Value::from(field("e")?),
            Value::from(field("n")?)
        ),
        other => return Err(format!("unsupported key type `{other}`")),
    };
    Ok(b64_sha256(canonical.as_bytes()))
}

/// `scheme://host[:port]/path` lower-cased in its scheme and host, without query or fragment.
fn normalized_url(url: &str) -> Option<String> {
    let url = url.split(['?', '#']).next()?;
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    Some(format!(
        "{}://{}{}",
        scheme.to_ascii_lowercase(),
        authority.to_ascii_lowercase(),
        path
    ))
}

fn object(part: &str) -> Result<Map<String, Value>, String> {
    let bytes = B64URL.decode(part).map_err(|_| "not base64url")?;
    serde_json::from_slice(&bytes).map_err(|_| "not a JSON object".to_string())
}

/// Checks a DPoP proof (the `DPoP` header) against the request. Its key comes from its own header
/// (public, asymmetric), the signature is checked with the algorithm the key fixes, and `typ`,
/// `htm`, `htu`, `iat`, `jti` (and `ath` at a resource) must match. Why not, otherwise.
pub fn verify_proof(proof: &str, expected: &Expected<'_>) -> Result<Proof, String> {
    if proof.len() > MAX_PROOF_LEN {
        return Err("the proof is too long".into());
    }
    let mut parts = proof.split('.');
    let (Some(header), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the proof is not a compact JWS".into());
    };
    let header = object(header)?;
    let claims = object(payload)?;
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err("the proof's `typ` is not `dpop+jwt`".into());
    }
    let Some(Value::Object(jwk)) = header.get("jwk") else {
        return Err("the proof has no `jwk` header".into());
    };
    if ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|private| jwk.contains_key(*private))
    {
        return Err("the proof's `jwk` holds private key material".into());
    }
    let key = parse_jwk(&Value::Object(jwk.clone()))?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(Alg::parse)
        .ok_or("the proof's `alg` is missing or unknown")?;
    if alg != key.alg || alg == Alg::Hs256 {
        return Err("the proof's `alg` is not its key's".into());
    }
    let untrusted = UntrustedToken::new(proof).map_err(|_| "the proof is malformed")?;
    key.check_signature(&untrusted)
        .map_err(|e| format!("the proof's signature: {}", e.describe()))?;
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    if text("htm") != Some(expected.method) {
        return Err("the proof's `htm` is not this request's method".into());
    }
    let htu = text("htu").and_then(normalized_url);
    if htu.is_none() || htu != normalized_url(expected.url) {
        return Err("the proof's `htu` is not this request's URL".into());
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or("the proof has no `iat`")?;
    let off = iat.checked_sub(expected.now_s).map(i64::unsigned_abs);
    if off.is_none_or(|d| d > IAT_WINDOW_S as u64) {
        return Err("the proof's `iat` is too far from now".into());
    }
    let jti = text("jti")
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or("the proof has no usable `jti`")?;
    if let Some(token) = expected.access_token {
        if text("ath") != Some(b64_sha256(token.as_bytes()).as_str()) {
            return Err("the proof's `ath` is not this access token's hash".into());
        }
    }
    Ok(Proof {
        jkt: thumbprint(jwk)?,
        jti: jti.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::SigningKey;
    use serde_json::json;

    /// A proof signed with an Ed25519 key (the gateway's own signer), with `jwk` in its header.
    fn proof(key: &SigningKey, header_extra: Value, claims: Value) -> String {
        let mut jwk = key.public_jwk();
        if let Some(o) = jwk.as_object_mut() {
            o.remove("kid");
            o.remove("use");
            o.remove("alg");
        }
        let mut header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk});
        if let (Some(h), Some(extra)) = (header.as_object_mut(), header_extra.as_object()) {
            h.extend(extra.clone());
        }
        key.sign_with_header(header.as_object().unwrap(), claims.as_object().unwrap())
    }

    const URL: &str = "https://gw.example/v1/p/auth/refresh";

    fn expected(now_s: i64) -> Expected<'static> {
        Expected {
            method: "POST",
            url: URL,
            access_token: None,
            now_s,
        }
    }

    #[test]
    fn a_good_proof_names_its_key() {
        let key = SigningKey::from_seed([7; 32], "k".into());
        let p = proof(
            &key,
            json!({}),
            json!({"htm": "POST", "htu": URL, "iat": 1000, "jti": "j1"}),
        );
        let checked = verify_proof(&p, &expected(1000)).unwrap();
        assert_eq!(checked.jti, "j1");
        let other = SigningKey::from_seed([8; 32], "k".into());
        let q = proof(
            &other,
            json!({}),
            json!({"htm": "POST", "htu": URL, "iat": 1000, "jti": "j1"}),
        );
        assert_ne!(verify_proof(&q, &expected(1000)).unwrap().jkt, checked.jkt);
        // The query string does not matter; host case does not either.
        let p = proof(
            &key,
            json!({}),
            json!({"htm": "POST", "htu": "https://GW.example/v1/p/auth/refresh?x=1", "iat": 1000, "jti": "j2"}),
        );
        assert!(verify_proof(&p, &expected(1000)).is_ok());
    }

    #[test]
    fn proofs_for_something_else_are_refused() {
        let key = SigningKey::from_seed([7; 32], "k".into());
        let good = json!({"htm": "POST", "htu": URL, "iat": 1000, "jti": "j"});
        let with = |k: &str, v: Value| {
            let mut c = good.clone();
            c[k] = v;
            proof(&key, json!({}), c)
        };
        for (p, why) in [
            (with("htm", json!("GET")), "method"),
            (
                with("htu", json!("https://gw.example/v1/other/auth/refresh")),
                "url",
            ),
            (
                with("htu", json!("https://evil.example/v1/p/auth/refresh")),
                "host",
            ),
            (with("iat", json!(1000 - IAT_WINDOW_S - 1)), "old"),
            (with("iat", json!("1000")), "iat type"),
            (with("iat", json!(i64::MIN + 1000)), "iat overflow"),
            (with("iat", json!(i64::MAX)), "iat far ahead"),
            (with("jti", json!("")), "jti"),
            (proof(&key, json!({"typ": "JWT"}), good.clone()), "typ"),
            (proof(&key, json!({"alg": "ES256"}), good.clone()), "alg"),
            (
                proof(
                    &key,
                    json!({"jwk": {"kty": "oct", "k": "c2VjcmV0"}}),
                    good.clone(),
                ),
                "oct",
            ),
        ] {
            assert!(verify_proof(&p, &expected(1000)).is_err(), "{why}");
        }
        let mut jwk = key.public_jwk();
        jwk["d"] = json!("AAAA");
        let p = proof(&key, json!({"jwk": jwk}), good.clone());
        assert!(
            verify_proof(&p, &expected(1000)).is_err(),
            "private material"
        );
        // Signed by another key than the one in the header.
        let other = SigningKey::from_seed([9; 32], "k".into());
        let p = proof(&other, json!({"jwk": key.public_jwk()}), good.clone());
        assert!(verify_proof(&p, &expected(1000)).is_err(), "signature");
        for junk in ["", "a.b", "a.b.c.d", "e30.e30.", &"x".repeat(5000)] {
            assert!(verify_proof(junk, &expected(1000)).is_err(), "{junk:.20}");
        }
    }

    #[test]
    fn at_a_resource_the_proof_covers_the_access_token() {
        let key = SigningKey::from_seed([7; 32], "k".into());
        let at = "eyJ.access.token";
        let ath = b64_sha256(at.as_bytes());
        let p = proof(
            &key,
            json!({}),
            json!({"htm": "POST", "htu": URL, "iat": 1000, "jti": "j", "ath": ath}),
        );
        let mut e = expected(1000);
        e.access_token = Some(at);
        assert!(verify_proof(&p, &e).is_ok());
        e.access_token = Some("another.token.x");
        assert!(verify_proof(&p, &e).is_err());
    }

    #[test]
    fn thumbprints_follow_rfc_7638() {
        // RFC 7638 §3.1's example key and thumbprint.
        let jwk = json!({"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"});
        assert_eq!(
            thumbprint(jwk.as_object().unwrap()).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }
}
