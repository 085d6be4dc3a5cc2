//! When to use a cached JWKS and when to fetch it again: fresh for an hour, served stale when the
//! owner's endpoint fails, and refetched early for an unknown `kid` at most once per 30 s per API.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

pub const FRESH_MS: i64 = 60 * 60 * 1000;
pub const REFETCH_GAP_MS: i64 = 30 * 1000;

/// A cached copy's timestamps: when it was fetched, and when an unknown-kid refetch last ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTimes {
    pub fetched_at: i64,
    pub refetched_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    UseCache,
    /// Fetch; on failure fall back to the cached copy if there is one.
    Fetch,
}

/// A stale copy, or an unknown `kid`, fetches again, but never within 30 s of the last attempt, so a
/// failing endpoint is not called on every request while the stale copy is served.
pub fn decide(now: i64, cached: Option<CacheTimes>, unknown_kid: bool) -> Decision {
    let Some(c) = cached else {
        return Decision::Fetch;
    };
    let stale = now - c.fetched_at >= FRESH_MS;
    let since_attempt = now - c.refetched_at.max(c.fetched_at);
    if (stale || unknown_kid) && since_attempt >= REFETCH_GAP_MS {
        Decision::Fetch
    } else {
        Decision::UseCache
    }
}

/// The `kid` in a JWT's header, read without trusting anything else in it (routing only: the
/// signature check picks keys and algorithms on its own).
pub fn peek_kid(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    if header.len() > 2048 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("kid").and_then(Value::as_str).map(str::to_string)
}

/// Whether a credential has the shape of a JWT (three base64url parts).
pub fn looks_like_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_stale_and_unknown_kid() {
        let c = CacheTimes {
            fetched_at: 0,
            refetched_at: 0,
        };
        assert_eq!(decide(0, None, false), Decision::Fetch);
        assert_eq!(decide(FRESH_MS - 1, Some(c), false), Decision::UseCache);
        assert_eq!(decide(FRESH_MS, Some(c), false), Decision::Fetch);
        assert_eq!(
            decide(REFETCH_GAP_MS - 1, Some(c), true),
            Decision::UseCache,
            "too soon after the fetch"
        );
        assert_eq!(decide(REFETCH_GAP_MS, Some(c), true), Decision::Fetch);
        let recently = CacheTimes {
            fetched_at: 0,
            refetched_at: 100_000,
        };
        assert_eq!(
            decide(100_000 + REFETCH_GAP_MS - 1, Some(recently), true),
            Decision::UseCache,
            "one refetch per 30 s"
        );
        assert_eq!(
            decide(100_000 + REFETCH_GAP_MS, Some(recently), true),
            Decision::Fetch
        );
        // Stale, and the last attempt (failed) was just now: serve the stale copy, do not hammer.
        let failing = CacheTimes {
            fetched_at: 0,
            refetched_at: 2 * FRESH_MS,
        };
        assert_eq!(
            decide(2 * FRESH_MS + 1_000, Some(failing), false),
            Decision::UseCache
        );
        assert_eq!(
            decide(2 * FRESH_MS + REFETCH_GAP_MS, Some(failing), false),
            Decision::Fetch
        );
    }

    #[test]
    fn peeks_kid_and_shapes() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k1"}"#);
        let token = format!("{header}.e30.sig");
        assert_eq!(peek_kid(&token).as_deref(), Some("k1"));
        assert!(looks_like_jwt(&token));
        assert_eq!(peek_kid("!!.x.y"), None);
        assert_eq!(
            peek_kid(&format!("{}.e30.s", URL_SAFE_NO_PAD.encode(b"{}"))),
            None
        );
        assert!(!looks_like_jwt("ask_live_abc"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a b.c.d"));
    }
}
