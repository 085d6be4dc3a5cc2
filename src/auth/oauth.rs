//! OAuth 2.1 authorization server rules, pure: redirect URI matching (RFC 8252 loopback ports),
//! scopes, PKCE S256, authorization codes, client secrets, the signed sign-in transaction carried
//! between the authorize page's steps, and the discovery documents (RFC 8414, RFC 9728).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::encoding::hex;
use crate::ids::base62;

/// How long an authorization code lives.
pub const CODE_TTL_MS: i64 = 60_000;
/// How long the signed-in step of the authorize page stays valid before consent.
pub const TRANSACTION_TTL_MS: i64 = 10 * 60_000;
pub const CODE_PREFIX: &str = "ocd_";
pub const CLIENT_SECRET_PREFIX: &str = "ocs_";
const SECRET_LEN: usize = 43;
const MAX_SCOPES: usize = 50;
const MAX_SCOPE_LEN: usize = 100;
pub const MAX_REDIRECT_URIS: usize = 20;
const MAX_REDIRECT_URI_LEN: usize = 2000;

/// Who holds a client's credentials (RFC 6749 §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientType {
    /// A browser or native app: no secret, PKCE only.
    Public,
    /// A server that keeps a secret: may also use `client_credentials`.
    Confidential,
}

impl ClientType {
    pub fn parse(s: &str) -> Option<ClientType> {
        match s {
            "public" => Some(ClientType::Public),
            "confidential" => Some(ClientType::Confidential),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ClientType::Public => "public",
            ClientType::Confidential => "confidential",
        }
    }
}

/// A redirect URI split into what exact matching compares.
#[derive(Debug, PartialEq, Eq)]
struct UriParts<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<&'a str>,
    /// Path and query, as written.
    rest: &'a str,
}

fn split_uri(uri: &str) -> Option<UriParts<'_>> {
    let (scheme, after) = uri.split_once("://")?;
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, tail) = v6.split_once(']')?;
        let port = match tail {
            "" => None,
            t => Some(t.strip_prefix(':')?),
        };
        (&authority[..h.len() + 2], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if let Some(p) = port {
        // A TCP port: digits naming 1 to 65535 (`:0` or `:99999` names no port a client listens on).
        let digits = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits || !p.parse::<u16>().is_ok_and(|n| n > 0) {
            return None;
        }
    }
    Some(UriParts {
        scheme,
        host,
        port,
        rest,
    })
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// Whether `uri` may be registered as a redirect URI: `https://…`, or `http://` on a loopback host
/// (any port, RFC 8252 §7.3); absolute, without a fragment, userinfo or whitespace.
pub fn validate_redirect_uri(uri: &str) -> Result<(), String> {
    if uri.is_empty() || uri.len() > MAX_REDIRECT_URI_LEN {
        return Err(format!(
            "A redirect URI is 1 to {MAX_REDIRECT_URI_LEN} characters."
        ));
    }
    if uri.contains('#') || uri.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'\\') {
        return Err("A redirect URI has no fragment, spaces or backslashes.".into());
    }
    let Some(parts) = split_uri(uri) else {
        return Err(format!("`{uri}` is not an absolute URI with a host."));
    };
    let host_ok = parts
        .host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b));
    if !host_ok {
        return Err(format!("`{uri}` has an invalid host."));
    }
    match parts.scheme {
        "https" => Ok(()),
        "http" if is_loopback(&parts.host.to_ascii_lowercase()) => Ok(()),
        _ => Err(format!(
            "`{uri}` must use https, or http on localhost, 127.0.0.1 or [::1]."
        )),
    }
}

/// Whether the presented redirect URI is one of the registered ones: compared exactly, except the
/// port of an `http` loopback URI, which native apps choose at run time (RFC 8252 §7.3).
pub fn redirect_matches(registered: &[String], presented: &str) -> bool {
    registered.iter().any(|r| {
        if r == presented {
            return true;
        }
        match (split_uri(r), split_uri(presented)) {
            (Some(a), Some(b)) => {
                a.scheme == "http"
                    && b.scheme == "http"
                    && is_loopback(a.host)
                    && a.host == b.host
                    && a.rest == b.rest
            }
            _ => false,
        }
    })
}

/// The origin (`scheme://authority`) of an absolute URI, for the consent form's `form-action`.
pub fn origin_of(uri: &str) -> Option<String> {
    let parts = split_uri(uri)?;
    Some(match parts.port {
        Some(p) => format!("{}://{}:{p}", parts.scheme, parts.host),
        None => format!("{}://{}", parts.scheme, parts.host),
    })
}

/// A scope parameter: space-separated scope tokens (RFC 6749 §3.3), deduplicated in order.
pub fn parse_scope(scope: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for token in scope.split(' ').filter(|t| !t.is_empty()) {
        validate_scope_token(token)?;
        if !out.iter().any(|s| s == token) {
            out.push(token.to_string());
        }
    }
    if out.len() > MAX_SCOPES {
        return Err(format!("At most {MAX_SCOPES} scopes."));
    }
    Ok(out)
}

/// One scope token: 1 to 100 printable ASCII characters other than space, `"` and `\`.
pub fn validate_scope_token(token: &str) -> Result<(), String> {
    let ok = !token.is_empty()
        && token.len() <= MAX_SCOPE_LEN
        && token
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a scope token (1 to {MAX_SCOPE_LEN} printable characters, no spaces, quotes or backslashes).",
            token.chars().take(40).collect::<String>()
        ))
    }
}

/// The scopes granted for a request: what it asks for, which must all be among the client's
/// allowed scopes when the client has a list; a request that names none gets the client's list.
pub fn grant_scopes(
    requested: &[String],
    allowed: Option<&[String]>,
) -> Result<Vec<String>, String> {
    match allowed {
        Some(list) => {
            if let Some(extra) = requested.iter().find(|s| !list.contains(s)) {
                return Err(format!("The client may not ask for the scope `{extra}`."));
            }
            Ok(if requested.is_empty() {
                list.to_vec()
            } else {
                requested.to_vec()
            })
        }
        None => Ok(requested.to_vec()),
    }
}

/// Whether a token's space-separated `scope` holds every required scope.
pub fn has_scopes(token_scope: &str, required: &[String]) -> bool {
    let held: Vec<&str> = token_scope.split(' ').collect();
    required.iter().all(|r| held.contains(&r.as_str()))
}

/// PKCE's S256 transform of a code verifier: BASE64URL(SHA-256(verifier)) (RFC 7636 §4.2).
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A code verifier: 43 to 128 unreserved characters (RFC 7636 §4.1).
pub fn verifier_is_valid(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// An S256 code challenge: 43 base64url characters (a SHA-256 digest).
pub fn challenge_is_valid(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The lowercase hex SHA-256 of a secret: the only form a code or client secret is stored in.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// A new authorization code for `session_id` and the hash of its secret part.
pub fn new_code(session_id: &str, fill_random: &mut dyn FnMut(&mut [u8])) -> (String, String) {
    let secret = base62(SECRET_LEN, fill_random);
    let hash = hash_secret(&secret);
    (format!("{CODE_PREFIX}{session_id}.{secret}"), hash)
}

/// Splits `ocd_<session_id>.<secret>` into (session id, secret) if it has that shape.
pub fn parse_code(code: &str) -> Option<(String, String)> {
    let rest = code.strip_prefix(CODE_PREFIX)?;
    let (session_id, secret) = rest.split_once('.')?;
    let shaped = session_id.starts_with("ses_")
        && session_id.len() <= 64
        && session_id[4..].bytes().all(|b| b.is_ascii_alphanumeric())
        && secret.len() == SECRET_LEN
        && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    shaped.then(|| (session_id.to_string(), secret.to_string()))
}

/// A new confidential client's secret (shown once) and its hash.
pub fn new_client_secret(fill_random: &mut dyn FnMut(&mut [u8])) -> (String, String) {
    let secret = format!("{CLIENT_SECRET_PREFIX}{}", base62(SECRET_LEN, fill_random));
    let hash = hash_secret(&secret);
    (secret, hash)
}

/// Whether `presented` is the secret whose hash is `stored_hash` (constant time).
pub fn client_secret_matches(stored_hash: &str, presented: &str) -> bool {
    crate::auth::constant_time_eq(stored_hash.as_bytes(), hash_secret(presented).as_bytes())
}

/// An authorization code waiting in its grant's session: single use, bound to the client, the
/// redirect URI and the PKCE challenge.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PendingCode {
    pub hash: String,
    pub expires_at: i64,
    pub redirect_uri: String,
    pub code_challenge: String,
    /// The authorization request left `redirect_uri` out (the client's only one was used), so the
    /// token request may too (RFC 6749 §4.1.3).
    #[serde(default)]
    pub redirect_uri_omitted: bool,
    /// Set when redeemed: a second presentation revokes the grant.
    #[serde(default)]
    pub used: bool,
}

/// The OAuth side of a grant's session: which client holds it, for what.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GrantInfo {
    pub client_id: String,
    /// Space-separated granted scopes.
    pub scope: String,
    /// The RFC 8707 resource the tokens are for, when the client named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<PendingCode>,
}

/// What presenting an authorization code did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redemption {
    /// First use, everything bound matched: tokens may be issued.
    Redeemed,
    /// A second use: the grant is revoked with every token issued from it.
    Reused,
    /// Wrong client, redirect URI, verifier, secret, or expired; nothing issued.
    Refused(&'static str),
}

/// What a code redemption presents (the code's secret, the client, the redirect URI, and the
/// S256 of the verifier).
pub struct Presented<'a> {
    pub now: i64,
    pub secret: &'a str,
    pub client_id: &'a str,
    /// `None` when the token request sent none.
    pub redirect_uri: Option<&'a str>,
    pub verifier_s256: &'a str,
}

/// Redeems a grant's pending code. A matching secret is consumed even when something else is
/// wrong (a failed try cannot be repeated); a consumed code presented again revokes the grant.
pub fn redeem(grant: &mut GrantInfo, p: &Presented<'_>) -> Redemption {
    let Some(code) = grant.code.as_mut() else {
        return Redemption::Refused("no code was issued for this grant");
    };
    let presented = hash_secret(p.secret);
    if !crate::auth::constant_time_eq(code.hash.as_bytes(), presented.as_bytes()) {
        return Redemption::Refused("unknown code");
    }
    if code.used {
        return Redemption::Reused;
    }
    code.used = true;
    if p.now >= code.expires_at {
        return Redemption::Refused("the code has expired");
    }
    if grant.client_id != p.client_id {
        return Redemption::Refused("the code was issued to another client");
    }
    match p.redirect_uri {
        Some(uri) if uri != code.redirect_uri => {
            return Redemption::Refused("redirect_uri differs from the authorization request's")
        }
        None if !code.redirect_uri_omitted => {
            return Redemption::Refused(
                "redirect_uri is required: the authorization request named one",
            )
        }
        _ => {}
    }
    if !crate::auth::constant_time_eq(code.code_challenge.as_bytes(), p.verifier_s256.as_bytes()) {
        return Redemption::Refused("the code_verifier does not match the code_challenge");
    }
    Redemption::Redeemed
}

/// The authorize page's signed-in step, carried to the consent step in the form and a cookie:
/// who signed in, for which authorization request (its digest), until when.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// The signed-in end user (consumer id).
    pub consumer: String,
    pub email: String,
    pub project: String,
    /// [`request_digest`] of the authorization request it was made for.
    pub request: String,
    pub expires_at: i64,
}

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8], payload: &[u8]) -> Vec<u8> {
    let Ok(mut m) = HmacSha256::new_from_slice(key) else {
        return Vec::new();
    };
    m.update(b"sluice oauth transaction v1\0");
    m.update(payload);
    m.finalize().into_bytes().to_vec()
}

/// `base64url(json).base64url(hmac)` under the server secret.
pub fn seal_transaction(key: &[u8], t: &Transaction) -> String {
    let payload = serde_json::to_vec(t).unwrap_or_default();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(mac(key, &payload))
    )
}

/// The transaction in `token` if its MAC is right, it is for `request` and it has not expired.
pub fn open_transaction(key: &[u8], token: &str, request: &str, now: i64) -> Option<Transaction> {
    if token.len() > 4096 {
        return None;
    }
    let (payload, tag) = token.split_once('.')?;
    let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    if !crate::auth::constant_time_eq(&mac(key, &payload), &tag) {
        return None;
    }
    let t: Transaction = serde_json::from_slice(&payload).ok()?;
    (t.request == request && now < t.expires_at).then_some(t)
}

/// A digest of everything an authorization request binds (client, redirect URI, scopes, PKCE
/// challenge, resource, state), so a transaction signed in for one cannot approve another.
pub fn request_digest(fields: &[&str]) -> String {
    let mut h = Sha256::new();
    for f in fields {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    hex(&h.finalize()[..16])
}

/// The authorization server metadata (RFC 8414) of the issuer `{origin}/v1/{project}`.
pub fn server_metadata(issuer: &str, registration: bool, scopes: &[String]) -> Value {
    let mut doc = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/oauth/authorize"),
        "token_endpoint": format!("{issuer}/oauth/token"),
        "revocation_endpoint": format!("{issuer}/oauth/revoke"),
        "introspection_endpoint": format!("{issuer}/oauth/introspect"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "authorization_response_iss_parameter_supported": true,
        "scopes_supported": scopes,
    });
    if registration {
        if let Some(d) = doc.as_object_mut() {
            d.insert(
                "registration_endpoint".into(),
                Value::from(format!("{issuer}/oauth/register")),
            );
        }
    }
    doc
}

/// The protected resource metadata (RFC 9728) of one API.
pub fn resource_metadata(resource: &str, issuer: &str, name: &str, scopes: &[String]) -> Value {
    json!({
        "resource": resource,
        "authorization_servers": [issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": scopes,
        "resource_name": name,
    })
}

/// Whether a token's RFC 8707 resource lets it call API `api` of the project whose issuer path is
/// `/v1/{project}`: the project itself, or that API. Compared by path, so the gateway's other
/// hostnames name the same resource.
pub fn resource_allows(resource: &str, project_path: &str, api: &str) -> bool {
    let path = match resource.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
        None => return false,
    };
    let path = path.trim_end_matches('/');
    let api_path = format!("{project_path}/{api}");
    path == project_path || path == api_path || path.starts_with(&format!("{api_path}/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::test_rng;

    #[test]
    fn redirect_uris_are_https_or_loopback_http() {
        for ok in [
            "https://app.example.com/cb",
            "https://app.example.com:8443/cb?x=1",
            "http://localhost/cb",
            "http://127.0.0.1:5173/callback",
            "http://[::1]:8080/cb",
            "http://127.0.0.1:65535/cb",
        ] {
            assert!(validate_redirect_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "http://app.example.com/cb",
            "https://app.example.com/cb#frag",
            "https://user@app.example.com/cb",
            "javascript:alert(1)",
            "https://",
            "ftp://example.com/x",
            "https://exa mple.com/",
            "https://a.example\\@b.example/",
            "http://localhost.evil.example/cb",
            "https://example.com:99999999/",
            "http://127.0.0.1:0/cb",
            "http://localhost:99999/cb",
            "http://[::1]:65536/cb",
            "https://app.example.com:+443/cb",
        ] {
            assert!(validate_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redirect_matching_is_exact_but_for_loopback_ports() {
        let reg = vec![
            "https://app.example.com/cb".to_string(),
            "http://127.0.0.1/native".to_string(),
        ];
        assert!(redirect_matches(&reg, "https://app.example.com/cb"));
        assert!(redirect_matches(&reg, "http://127.0.0.1:51234/native"));
        assert!(redirect_matches(&reg, "http://127.0.0.1/native"));
        for bad in [
            "https://app.example.com/cb/extra",
            "https://app.example.com/cb?x=1",
            "https://app.example.com/CB",
            "https://app.example.com:443/cb",
            "https://app.example.com/cb/",
            "http://app.example.com/cb",
            "http://127.0.0.1:5/native/x",
            "http://localhost:5/native",
            "http://127.0.0.1:0/native",
            "http://127.0.0.1:70000/native",
            "https://evil.example/cb",
        ] {
            assert!(!redirect_matches(&reg, bad), "{bad}");
        }
    }

    #[test]
    fn scopes_parse_and_are_granted_within_the_client_list() {
        assert_eq!(
            parse_scope("chat  read chat").unwrap(),
            vec!["chat".to_string(), "read".to_string()]
        );
        assert!(parse_scope("a\"b").is_err());
        assert!(parse_scope(&"x ".repeat(3)).is_ok());
        let many: String = (0..60).map(|i| format!("s{i} ")).collect();
        assert!(parse_scope(&many).is_err());
        let allowed = vec!["chat".to_string(), "usage".to_string()];
        assert_eq!(grant_scopes(&[], Some(&allowed)).unwrap(), allowed);
        assert!(grant_scopes(&["admin".into()], Some(&allowed)).is_err());
        assert_eq!(
            grant_scopes(&["chat".into()], Some(&allowed)).unwrap(),
            vec!["chat".to_string()]
        );
        assert_eq!(grant_scopes(&["x".into()], None).unwrap(), vec!["x"]);
        assert!(has_scopes("chat usage", &["chat".into()]));
        assert!(!has_scopes("chatty", &["chat".into()]));
        assert!(has_scopes("", &[]));
    }

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(
            s256(verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(verifier_is_valid(verifier));
        assert!(challenge_is_valid(&s256(verifier)));
        assert!(!verifier_is_valid("short"));
        assert!(!verifier_is_valid(&"a".repeat(129)));
        assert!(!verifier_is_valid(&format!("{}+", "a".repeat(50))));
        assert!(!challenge_is_valid("plain-challenge"));
    }

    #[test]
    fn codes_round_trip_and_garbage_does_not_parse() {
        let mut rng = test_rng(3);
        let (code, hash) = new_code("ses_abc123", &mut rng);
        let (sid, secret) = parse_code(&code).unwrap();
        assert_eq!(sid, "ses_abc123");
        assert_eq!(hash_secret(&secret), hash);
        for bad in [
            "",
            "ocd_",
            "ocd_ses_x.short",
            &code.replace("ocd_", "srt_"),
            &format!("{code}!"),
        ] {
            assert_eq!(parse_code(bad), None, "{bad}");
        }
        let (secret, hash) = new_client_secret(&mut rng);
        assert!(secret.starts_with(CLIENT_SECRET_PREFIX));
        assert!(client_secret_matches(&hash, &secret));
        assert!(!client_secret_matches(&hash, "ocs_wrong"));
    }

    fn grant(code_secret: &str, challenge: &str) -> GrantInfo {
        GrantInfo {
            client_id: "cli_1".into(),
            scope: "chat".into(),
            resource: None,
            code: Some(PendingCode {
                hash: hash_secret(code_secret),
                expires_at: 1_000 + CODE_TTL_MS,
                redirect_uri: "https://app.example.com/cb".into(),
                code_challenge: challenge.into(),
                redirect_uri_omitted: false,
                used: false,
            }),
        }
    }

    #[test]
    fn a_code_is_single_use_and_bound_to_client_redirect_and_verifier() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = s256(verifier);
        let ok = |now| Presented {
            now,
            secret: "s3cret",
            client_id: "cli_1",
            redirect_uri: Some("https://app.example.com/cb"),
            verifier_s256: &challenge,
        };
        let mut g = grant("s3cret", &challenge);
        assert_eq!(redeem(&mut g, &ok(2_000)), Redemption::Redeemed);
        assert_eq!(redeem(&mut g, &ok(2_001)), Redemption::Reused);

        let wrong_verifier = s256("another-verifier-another-verifier-another-verifier");
        for p in [
            Presented {
                client_id: "cli_2",
                ..ok(2_000)
            },
            Presented {
                redirect_uri: Some("https://app.example.com/cb/extra"),
                ..ok(2_000)
            },
            Presented {
                redirect_uri: None,
                ..ok(2_000)
            },
            Presented {
                verifier_s256: &wrong_verifier,
                ..ok(2_000)
            },
            ok(1_000 + CODE_TTL_MS),
        ] {
            let mut g = grant("s3cret", &challenge);
            assert!(matches!(redeem(&mut g, &p), Redemption::Refused(_)));
            // Consumed by the failed try: the right one after it is a reuse.
            assert_eq!(redeem(&mut g, &ok(2_000)), Redemption::Reused);
        }
        // Another secret neither redeems nor consumes.
        let mut g = grant("s3cret", &challenge);
        let stranger = Presented {
            secret: "other",
            ..ok(2_000)
        };
        assert_eq!(
            redeem(&mut g, &stranger),
            Redemption::Refused("unknown code")
        );
        assert_eq!(redeem(&mut g, &ok(2_000)), Redemption::Redeemed);
    }

    #[test]
    fn transactions_are_bound_to_their_request_and_expire() {
        let t = Transaction {
            consumer: "con_1".into(),
            email: "a@b.co".into(),
            project: "prj_1".into(),
            request: request_digest(&["cli_1", "https://app/cb"]),
            expires_at: 5_000,
        };
        let token = seal_transaction(b"key", &t);
        assert_eq!(
            open_transaction(b"key", &token, &t.request, 4_999),
            Some(t.clone())
        );
        assert_eq!(open_transaction(b"key", &token, &t.request, 5_000), None);
        assert_eq!(open_transaction(b"other", &token, &t.request, 1), None);
        let other = request_digest(&["cli_1", "https://app/cb2"]);
        assert_eq!(open_transaction(b"key", &token, &other, 1), None);
        let (p, tag) = token.split_once('.').unwrap();
        let forged = format!("{}x.{tag}", p);
        assert_eq!(open_transaction(b"key", &forged, &t.request, 1), None);
        assert_ne!(request_digest(&["ab", "c"]), request_digest(&["a", "bc"]));
    }

    #[test]
    fn metadata_documents_name_the_endpoints() {
        let doc = server_metadata("https://gw.example/v1/acme", false, &[]);
        assert_eq!(doc["issuer"], "https://gw.example/v1/acme");
        assert_eq!(
            doc["token_endpoint"],
            "https://gw.example/v1/acme/oauth/token"
        );
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        assert!(doc.get("registration_endpoint").is_none());
        let doc = server_metadata("https://gw.example/v1/acme", true, &[]);
        assert_eq!(
            doc["registration_endpoint"],
            "https://gw.example/v1/acme/oauth/register"
        );
        let r = resource_metadata(
            "https://gw.example/v1/acme/chat",
            "https://gw.example/v1/acme",
            "Chat",
            &["chat".into()],
        );
        assert_eq!(r["authorization_servers"][0], "https://gw.example/v1/acme");
    }

    #[test]
    fn resources_name_the_project_or_one_api() {
        assert!(resource_allows("https://gw/v1/acme", "/v1/acme", "chat"));
        assert!(resource_allows(
            "https://gw/v1/acme/chat/",
            "/v1/acme",
            "chat"
        ));
        assert!(!resource_allows(
            "https://gw/v1/acme/other",
            "/v1/acme",
            "chat"
        ));
        assert!(!resource_allows("https://gw/v1/acmex", "/v1/acme", "chat"));
        assert!(!resource_allows("urn:x", "/v1/acme", "chat"));
    }
}
