//! Pure authentication logic: credential extraction, consumer keys, constant-time secret comparison.

pub mod cidr;
pub mod config;
pub mod consumer_jwt;
pub mod decide;
pub mod dpop;
pub mod guard;
pub mod jwks_cache;
pub mod jwt;
pub mod key;
pub mod mode;
pub mod mtls;
pub mod oauth;
pub mod otp;
pub mod otp_limits;
pub mod session;
pub mod tokens;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Compares two secrets in constant time. Both sides are hashed first so the time does not
/// depend on where they differ nor leak the expected length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
    bool::from(ha.as_slice().ct_eq(hb.as_slice()))
}

/// Whether a page may take a sign-in step (ask for a code, try one). A request without `Origin` is
/// no page's (a server, a CLI). A page's must come from the gateway's own origin (that of `url`) or
/// one `allows` names: otherwise any site could make its visitors' browsers mail codes to an
/// address, or spend its tries, without a preflight (a form-encoded POST needs none).
pub fn page_may_sign_in(origin: Option<&str>, url: &str, allows: impl Fn(&str) -> bool) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    // The request URL's own origin, as `upstream_origin` reads any URL's (scheme and authority).
    let same = url.contains("://")
        && origin.eq_ignore_ascii_case(&crate::input::validate::upstream_origin(url));
    same || allows(origin)
}

/// The credential a client sent, from `Authorization: Bearer <c>` or `X-API-Key: <c>`.
/// `Ok(None)` means no credential at all; `Err` means an Authorization header that is not Bearer.
pub fn extract_credential(
    authorization: Option<&str>,
    x_api_key: Option<&str>,
) -> Result<Option<String>, &'static str> {
    if let Some(value) = authorization.map(str::trim).filter(|v| !v.is_empty()) {
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        // `DPoP` (RFC 9449) carries a sender-constrained access token; its proof is checked apart.
        if !scheme.eq_ignore_ascii_case("bearer") && !scheme.eq_ignore_ascii_case("dpop") {
            return Err("the Authorization header must use the Bearer (or DPoP) scheme");
        }
        let token = rest.trim();
        if token.is_empty() {
            return Err("the Authorization header has no credential after `Bearer`");
        }
        return Ok(Some(token.to_string()));
    }
    Ok(x_api_key
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_pages_take_sign_in_steps() {
        let url = "https://gw.example/v1/demo/auth/otp/start";
        let allows = |o: &str| o == "https://app.example";
        assert!(
            page_may_sign_in(None, url, allows),
            "no page: curl, a server"
        );
        assert!(
            page_may_sign_in(Some("https://gw.example"), url, allows),
            "the gateway's own page"
        );
        assert!(page_may_sign_in(Some("https://app.example"), url, allows));
        for refused in [
            "https://evil.example",
            "null",
            "http://gw.example",
            "https://gw.example:8443",
            "https://gw.example.evil",
        ] {
            assert!(!page_may_sign_in(Some(refused), url, allows), "{refused}");
        }
        assert!(page_may_sign_in(
            Some("http://127.0.0.1:8787"),
            "http://127.0.0.1:8787/api/v1/auth/otp/start",
            |_| false
        ));
    }

    #[test]
    fn constant_time_eq_matches_plain_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn extracts_bearer_and_x_api_key() {
        assert_eq!(
            extract_credential(Some("Bearer abc"), None),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            extract_credential(Some("bearer   abc "), None),
            Ok(Some("abc".into()))
        );
        assert_eq!(extract_credential(None, Some("k1")), Ok(Some("k1".into())));
        assert_eq!(
            extract_credential(Some("Bearer a"), Some("b")),
            Ok(Some("a".into()))
        );
        assert_eq!(extract_credential(None, None), Ok(None));
        assert_eq!(extract_credential(Some(""), Some(" ")), Ok(None));
        assert!(extract_credential(Some("Basic Zm9v"), None).is_err());
        assert_eq!(
            extract_credential(Some("DPoP tok"), None),
            Ok(Some("tok".into()))
        );
        assert!(extract_credential(Some("Bearer"), None).is_err());
    }
}
