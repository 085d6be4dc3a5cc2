//! End-user sessions: rotating refresh tokens with reuse detection (the pure rules a Durable Object applies; times in epoch ms).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::encoding::hex;
use crate::ids::{base62, new_id};

pub const REFRESH_PREFIX: &str = "srt_";
pub const SESSION_PREFIX: &str = "ses";
/// A session id before ids carried a tag: `ses_` + 20 base62.
const LEGACY_SESSION_ID_LEN: usize = 4 + 20;
/// `ses_` + 20 base62 + a 12-hex tag.
const SESSION_ID_LEN: usize = LEGACY_SESSION_ID_LEN + 12;
const SECRET_LEN: usize = 43; // ~256 bits of base62
/// How long a session lives from its creation; rotation does not extend it.
pub const SESSION_TTL_MS: i64 = 30 * 24 * 60 * 60 * 1000;
/// Rotated-out hashes remembered for reuse detection.
pub const MAX_PREVIOUS: usize = 20;

fn session_tag(pepper: &[u8], untagged: &str) -> String {
    use hmac::{Hmac, Mac};
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(pepper) else {
        return String::new();
    };
    mac.update(b"sluice session id v1");
    mac.update(untagged.as_bytes());
    hex(&mac.finalize().into_bytes()[..6])
}

/// A new session id, `ses_` + 20 base62 characters + a tag from the server secret, so a made-up
/// refresh token is refused without creating or reading any stored session.
pub fn new_session_id(pepper: &[u8], fill_random: &mut dyn FnMut(&mut [u8])) -> String {
    let untagged = new_id(SESSION_PREFIX, fill_random);
    let tag = session_tag(pepper, &untagged);
    format!("{untagged}{tag}")
}

/// Where a session id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionIdKind {
    /// Issued by this gateway with its tag.
    Tagged,
    /// Issued before ids were tagged: only a stored record says whether it exists.
    Legacy,
    /// Neither: nobody issued it.
    Forged,
}

pub fn session_id_kind(pepper: &[u8], id: &str) -> SessionIdKind {
    if !id.is_ascii() || !id.starts_with("ses_") {
        return SessionIdKind::Forged;
    }
    match id.len() {
        LEGACY_SESSION_ID_LEN => SessionIdKind::Legacy,
        SESSION_ID_LEN => {
            let (untagged, tag) = id.split_at(LEGACY_SESSION_ID_LEN);
            let expected = session_tag(pepper, untagged);
            if crate::auth::constant_time_eq(expected.as_bytes(), tag.as_bytes()) {
                SessionIdKind::Tagged
            } else {
                SessionIdKind::Forged
            }
        }
        _ => SessionIdKind::Forged,
    }
}

/// The lowercase hex SHA-256 of a refresh secret: the only form stored.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn is_base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Splits `srt_<session_id>.<secret>` into (session id, secret) if it has exactly that shape.
pub fn parse_refresh(token: &str) -> Option<(String, String)> {
    let rest = token.strip_prefix(REFRESH_PREFIX)?;
    let (session_id, secret) = rest.split_once('.')?;
    let id_body = session_id.strip_prefix("ses_")?;
    let shaped = matches!(session_id.len(), LEGACY_SESSION_ID_LEN | SESSION_ID_LEN)
        && is_base62(id_body)
        && secret.len() == SECRET_LEN
        && is_base62(secret);
    shaped.then(|| (session_id.to_string(), secret.to_string()))
}

/// A fresh refresh token for `session_id` and the hash of its secret (store the hash only).
pub fn new_refresh(session_id: &str, fill_random: &mut dyn FnMut(&mut [u8])) -> (String, String) {
    let secret = base62(SECRET_LEN, fill_random);
    let hash = hash_secret(&secret);
    (format!("{REFRESH_PREFIX}{session_id}.{secret}"), hash)
}

/// What presenting a refresh secret did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// The current secret: it is now replaced by the new one.
    Rotated,
    /// A rotated-out secret (stolen, or replayed): the session is now revoked.
    Reused,
    /// Not a secret of this session; nothing changed.
    Invalid,
    Expired,
    Revoked,
}

/// One end-user session as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Session {
    pub id: String,
    pub project: String,
    pub consumer_id: String,
    pub email: Option<String>,
    pub current_hash: String,
    /// Rotated-out secret hashes, oldest first, at most [`MAX_PREVIOUS`].
    pub previous_hashes: Vec<String>,
    /// How many rotations happened.
    pub generation: u64,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked: bool,
    /// The DPoP key (its thumbprint) the session's refresh tokens are bound to, if the client had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
    /// An OAuth grant's client, scopes and pending authorization code; `None` for a first-party
    /// sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<crate::auth::oauth::GrantInfo>,
    /// DPoP proofs (their `jti`) used with this session outside the data plane (refresh, `/me`,
    /// logout), with when they may be forgotten.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proofs: Vec<(String, i64)>,
}

/// Proofs a session remembers at most (the oldest is forgotten first).
const MAX_SESSION_PROOFS: usize = 64;

impl Session {
    /// A session created at `now_ms` whose first refresh secret hashes to `current_hash`.
    pub fn new(
        id: String,
        project: String,
        consumer_id: String,
        email: Option<String>,
        current_hash: String,
        now_ms: i64,
    ) -> Session {
        Session {
            id,
            project,
            consumer_id,
            email,
            current_hash,
            previous_hashes: Vec::new(),
            generation: 0,
            created_at: now_ms,
            expires_at: now_ms.saturating_add(SESSION_TTL_MS),
            revoked: false,
            jkt: None,
            oauth: None,
            proofs: Vec::new(),
        }
    }

    /// Remembers a DPoP proof used with this session; false for one seen before (a replay).
    pub fn use_proof(&mut self, now: i64, jti: &str) -> bool {
        crate::auth::dpop::remember_proof(&mut self.proofs, now, Some(jti), MAX_SESSION_PROOFS)
    }

    /// Whether `secret` is the current refresh secret (constant time).
    pub fn knows_current(&self, secret: &str) -> bool {
        crate::auth::constant_time_eq(self.current_hash.as_bytes(), hash_secret(secret).as_bytes())
    }

    /// Whether `secret` is the current or a remembered refresh secret of this session (constant
    /// time across all of them).
    pub fn knows_secret(&self, secret: &str) -> bool {
        let presented = hash_secret(secret);
        std::iter::once(&self.current_hash)
            .chain(self.previous_hashes.iter())
            .fold(false, |hit, h| {
                crate::auth::constant_time_eq(h.as_bytes(), presented.as_bytes()) | hit
            })
    }

    /// Exchanges the current secret for `new_hash` (from [`new_refresh`]). Presenting any
    /// remembered earlier secret revokes the session: one of the two holders is not the user.
    pub fn rotate(&mut self, now_ms: i64, presented_secret: &str, new_hash: String) -> Rotation {
        if self.revoked {
            return Rotation::Revoked;
        }
        if now_ms >= self.expires_at {
            return Rotation::Expired;
        }
        let presented = hash_secret(presented_secret);
        let eq = |stored: &String| {
            crate::auth::constant_time_eq(stored.as_bytes(), presented.as_bytes())
        };
        if eq(&self.current_hash) {
            let old = std::mem::replace(&mut self.current_hash, new_hash);
            self.previous_hashes.push(old);
            if self.previous_hashes.len() > MAX_PREVIOUS {
                let excess = self.previous_hashes.len() - MAX_PREVIOUS;
                self.previous_hashes.drain(..excess);
            }
            self.generation = self.generation.saturating_add(1);
            return Rotation::Rotated;
        }
        // Compare against every remembered hash (no early exit), so timing says nothing of which.
        let reused = self
            .previous_hashes
            .iter()
            .fold(false, |hit, h| eq(h) | hit);
        if reused {
            self.revoked = true;
            return Rotation::Reused;
        }
        Rotation::Invalid
    }

    pub fn revoke(&mut self) {
        self.revoked = true;
    }

    /// Usable for minting access tokens at `now_ms`.
    pub fn is_active(&self, now_ms: i64) -> bool {
        !self.revoked && now_ms < self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ids::test_rng as counter_rng;

    const T0: i64 = 1_800_000_000_000;

    /// A new session and its first refresh token.
    fn start(rng: &mut dyn FnMut(&mut [u8])) -> (Session, String) {
        let id = new_session_id(b"pepper", rng);
        let (token, hash) = new_refresh(&id, rng);
        let s = Session::new(
            id,
            "prj_1".into(),
            "con_1".into(),
            Some("a@b.co".into()),
            hash,
            T0,
        );
        (s, token)
    }

    fn secret_of(token: &str) -> String {
        parse_refresh(token).expect("well-formed").1
    }

    #[test]
    fn tokens_have_the_documented_shape_and_parse() {
        let mut rng = counter_rng(1);
        let id = new_session_id(b"pepper", &mut rng);
        assert!(id.starts_with("ses_") && id.len() == 36, "{id}");
        let (token, hash) = new_refresh(&id, &mut rng);
        assert_eq!(token.len(), 4 + 36 + 1 + 43);
        let (sid, secret) = parse_refresh(&token).unwrap();
        assert_eq!(sid, id);
        assert_eq!(secret.len(), 43);
        assert_eq!(hash, hash_secret(&secret));
        assert_eq!(hash.len(), 64);
        let (token2, _) = new_refresh(&id, &mut rng);
        assert_ne!(token, token2);
    }

    #[test]
    fn garbage_tokens_do_not_parse() {
        let mut rng = counter_rng(2);
        let id = new_session_id(b"pepper", &mut rng);
        let (good, _) = new_refresh(&id, &mut rng);
        let cases = [
            String::new(),
            "srt_".into(),
            "srt_.".into(),
            good.replacen("srt_", "srx_", 1),
            good.replacen("ses_", "sex_", 1),
            good.replacen('.', "", 1),
            good.replacen('.', "..", 1),
            format!("{good}x"),
            good[..good.len() - 1].to_string(),
            format!("{good}.extra"),
            good.replacen(&id[4..6], "-_", 1),
            format!("srt_{id}.{}é", &secret_of(&good)[..41]),
            format!("srt_{id}.{}", "a".repeat(43)).replacen("ses_", "ses", 1),
            " ".repeat(72),
        ];
        for bad in &cases {
            assert_eq!(parse_refresh(bad), None, "{bad:?}");
        }
        assert!(parse_refresh(&good).is_some());
    }

    #[test]
    fn rotation_chain() {
        let mut rng = counter_rng(3);
        let (mut s, t0) = start(&mut rng);
        let (t1, h1) = new_refresh(&s.id, &mut rng);
        assert_eq!(
            s.rotate(T0 + 1, &secret_of(&t0), h1.clone()),
            Rotation::Rotated
        );
        assert_eq!(s.current_hash, h1);
        let (_, h2) = new_refresh(&s.id, &mut rng);
        assert_eq!(
            s.rotate(T0 + 2, &secret_of(&t1), h2.clone()),
            Rotation::Rotated
        );
        assert_eq!(s.current_hash, h2);
        assert_eq!(s.generation, 2);
        assert_eq!(s.previous_hashes, vec![hash_secret(&secret_of(&t0)), h1]);
        assert!(s.is_active(T0 + 3));
        // A secret this session never issued changes nothing.
        let (stranger, h3) = new_refresh(&s.id, &mut rng);
        assert_eq!(
            s.rotate(T0 + 3, &secret_of(&stranger), h3),
            Rotation::Invalid
        );
        assert_eq!(s.rotate(T0 + 3, "", String::new()), Rotation::Invalid);
        assert_eq!((s.generation, s.revoked, &s.current_hash), (2, false, &h2));
    }

    #[test]
    fn reusing_an_old_token_revokes_the_session() {
        let mut rng = counter_rng(4);
        let (mut s, t0) = start(&mut rng);
        let (t1, h1) = new_refresh(&s.id, &mut rng);
        assert_eq!(s.rotate(T0 + 1, &secret_of(&t0), h1), Rotation::Rotated);
        let (t2, h2) = new_refresh(&s.id, &mut rng);
        assert_eq!(s.rotate(T0 + 2, &secret_of(&t1), h2), Rotation::Rotated);
        // The very first token, replayed after two rotations.
        let (_, h3) = new_refresh(&s.id, &mut rng);
        assert_eq!(
            s.rotate(T0 + 3, &secret_of(&t0), h3.clone()),
            Rotation::Reused
        );
        assert!(s.revoked);
        assert!(!s.is_active(T0 + 3));
        // Now even the current token is refused.
        assert_eq!(s.rotate(T0 + 4, &secret_of(&t2), h3), Rotation::Revoked);
        assert_eq!(s.generation, 2);
    }

    #[test]
    fn only_the_last_twenty_old_hashes_are_kept() {
        let mut rng = counter_rng(5);
        let (mut s, mut token) = start(&mut rng);
        let first = token.clone();
        for i in 0..25 {
            let (next, h) = new_refresh(&s.id, &mut rng);
            assert_eq!(s.rotate(T0 + i, &secret_of(&token), h), Rotation::Rotated);
            token = next;
        }
        assert_eq!(s.previous_hashes.len(), MAX_PREVIOUS);
        assert_eq!(s.generation, 25);
        assert!(!s.previous_hashes.contains(&hash_secret(&secret_of(&first))));
        // Too old to be remembered: merely invalid.
        assert_eq!(
            s.rotate(T0 + 30, &secret_of(&first), String::new()),
            Rotation::Invalid
        );
        assert!(!s.revoked);
    }

    #[test]
    fn sessions_expire_after_thirty_days() {
        let mut rng = counter_rng(6);
        let (mut s, t0) = start(&mut rng);
        assert_eq!(s.expires_at, T0 + 30 * 86_400_000);
        let (_, h) = new_refresh(&s.id, &mut rng);
        assert_eq!(
            s.rotate(s.expires_at, &secret_of(&t0), h.clone()),
            Rotation::Expired
        );
        assert!(!s.is_active(s.expires_at));
        assert!(s.is_active(s.expires_at - 1));
        assert_eq!(
            s.rotate(s.expires_at - 1, &secret_of(&t0), h),
            Rotation::Rotated
        );
    }

    #[test]
    fn revoke_is_final_and_survives_storage() {
        let mut rng = counter_rng(7);
        let (mut s, t0) = start(&mut rng);
        s.revoke();
        let stored = serde_json::to_string(&s).unwrap();
        let mut back: Session = crate::encoding::from_json(&stored).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            back.rotate(T0 + 1, &secret_of(&t0), String::new()),
            Rotation::Revoked
        );
    }

    #[test]
    fn session_ids_carry_a_tag() {
        let mut rng = crate::ids::test_rng(9);
        let id = new_session_id(b"pepper", &mut rng);
        assert_eq!(id.len(), SESSION_ID_LEN);
        assert_eq!(session_id_kind(b"pepper", &id), SessionIdKind::Tagged);
        assert_eq!(session_id_kind(b"other", &id), SessionIdKind::Forged);
        assert_eq!(
            session_id_kind(b"pepper", &format!("{}000000000000", &id[..24])),
            SessionIdKind::Forged
        );
        assert_eq!(session_id_kind(b"pepper", &id[..24]), SessionIdKind::Legacy);
        for odd in [
            "",
            "ses_",
            "ses_ééééééééééééééééééééé",
            "xyz_aaaaaaaaaaaaaaaaaaaa",
        ] {
            assert_eq!(
                session_id_kind(b"pepper", odd),
                SessionIdKind::Forged,
                "{odd}"
            );
        }
        let (token, _) = new_refresh(&id, &mut rng);
        assert_eq!(parse_refresh(&token).map(|t| t.0), Some(id));
    }
}
