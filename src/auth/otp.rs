//! Email one-time codes: generation, peppered hashing, attempt limits and send throttling (times in epoch ms).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::encoding::hex;

/// Number of digits in a code.
pub const CODE_LEN: usize = 6;
/// How long a code can be used.
pub const CODE_TTL_MS: i64 = 10 * 60 * 1000;
/// Wrong guesses before a challenge locks for good.
pub const MAX_ATTEMPTS: u32 = 5;
/// 4,294 × 10^6: the largest multiple of 10^6 that fits in a u32; draws at or above it would bias.
const UNBIASED_LIMIT: u32 = 4_294_000_000;

/// A uniformly random 6-digit code (leading zeros kept), by rejection sampling.
pub fn generate_code(fill_random: &mut dyn FnMut(&mut [u8])) -> String {
    let mut buf = [0u8; 16];
    let mut last = 0u32;
    // A real RNG rejects with probability 2.3e-4 per draw; the bound only matters for a broken one.
    for _ in 0..64 {
        fill_random(&mut buf);
        for chunk in buf.chunks_exact(4) {
            let n = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if n < UNBIASED_LIMIT {
                return format!("{:06}", n % 1_000_000);
            }
            last = n;
        }
    }
    format!("{:06}", last % 1_000_000)
}

/// What a user typed, as a code: spaces and dashes removed, exactly 6 ASCII digits.
pub fn normalize_code(s: &str) -> Option<String> {
    let code: String = s.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    (code.len() == CODE_LEN && code.bytes().all(|b| b.is_ascii_digit())).then_some(code)
}

/// HMAC-SHA256 (hex) of the code, bound to the project and the normalized email. The pepper is a
/// server secret, so a leaked hash cannot be brute-forced over the 10^6 codes offline.
pub fn hash_code(pepper: &[u8], project: &str, email: &str, code: &str) -> String {
    hex(&keyed_hash(
        pepper,
        b"sluice otp v1",
        [project, email, code],
    ))
}

/// HMAC-SHA256 under `pepper` of `label` and length-prefixed `fields` (so ("ab","c") and ("a","bc")
/// never hash alike).
fn keyed_hash(pepper: &[u8], label: &[u8], fields: [&str; 3]) -> Vec<u8> {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(pepper) else {
        // HMAC accepts keys of any length; this branch cannot run.
        return Vec::new();
    };
    mac.update(label);
    for field in fields {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field.as_bytes());
    }
    mac.finalize().into_bytes().to_vec()
}

/// Random characters of a challenge id, before its tag.
const CHALLENGE_RANDOM_LEN: usize = 20;
const CHALLENGE_PREFIX: &str = "chl_";

fn challenge_tag(pepper: &[u8], project: &str, email: &str, random: &str) -> String {
    let mac = keyed_hash(pepper, b"sluice otp challenge v1", [project, email, random]);
    hex(mac.get(..8).unwrap_or_default())
}

/// A new challenge id, `chl_` + 20 random base62 + a 16-hex tag binding it to the project and email,
/// so a made-up or another address's id is refused without touching any stored state.
pub fn new_challenge_id(
    pepper: &[u8],
    project: &str,
    email: &str,
    fill_random: &mut dyn FnMut(&mut [u8]),
) -> String {
    let random = crate::ids::base62(CHALLENGE_RANDOM_LEN, fill_random);
    let tag = challenge_tag(pepper, project, email, &random);
    format!("{CHALLENGE_PREFIX}{random}{tag}")
}

/// Whether `id` is a challenge id this gateway issued for `email` in `project` (checked in constant
/// time).
pub fn challenge_id_is_ours(pepper: &[u8], project: &str, email: &str, id: &str) -> bool {
    let Some(rest) = id.strip_prefix(CHALLENGE_PREFIX) else {
        return false;
    };
    if rest.len() != CHALLENGE_RANDOM_LEN + 16 || !rest.is_ascii() {
        return false;
    }
    let (random, tag) = rest.split_at(CHALLENGE_RANDOM_LEN);
    let expected = challenge_tag(pepper, project, email, random);
    crate::auth::constant_time_eq(expected.as_bytes(), tag.as_bytes())
}

/// Trims and lowercases an address and checks its basic shape (one `@`, a non-empty local part,
/// a dotted domain, at most 254 bytes, no whitespace or control characters).
#[allow(clippy::result_unit_err)]
pub fn normalize_email(s: &str) -> Result<String, ()> {
    let email = s.trim().to_lowercase();
    if email.is_empty() || email.len() > 254 {
        return Err(());
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(());
    }
    let (local, domain) = email.split_once('@').ok_or(())?;
    let shaped = !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..");
    if shaped {
        Ok(email)
    } else {
        Err(())
    }
}

/// The outcome of presenting a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Right code in time: the caller deletes the challenge (codes are single use).
    Ok,
    Wrong {
        attempts_left: u32,
    },
    Expired,
    /// Too many wrong codes: this challenge never succeeds again, even with the right code.
    Locked,
}

/// A pending code, stored only as its hash, with the id `otp/start` answered and the client network
/// that asked for it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Challenge {
    pub id: String,
    pub code_hash: String,
    /// Epoch ms after which the code is refused.
    pub expires_at: i64,
    pub attempts_left: u32,
    pub network: String,
}

impl Challenge {
    /// A challenge valid for 10 minutes from `now_ms`, with 5 attempts.
    pub fn new(id: String, code_hash: String, now_ms: i64, network: String) -> Challenge {
        Challenge {
            id,
            code_hash,
            expires_at: now_ms.saturating_add(CODE_TTL_MS),
            attempts_left: MAX_ATTEMPTS,
            network,
        }
    }

    /// Checks a presented code's hash (from [`hash_code`]). A wrong code uses up an attempt;
    /// the fifth wrong one answers `Wrong { attempts_left: 0 }` and every later call `Locked`.
    pub fn check(&mut self, now_ms: i64, presented_hash: &str) -> Verdict {
        if self.attempts_left == 0 {
            return Verdict::Locked;
        }
        if now_ms >= self.expires_at {
            return Verdict::Expired;
        }
        if crate::auth::constant_time_eq(self.code_hash.as_bytes(), presented_hash.as_bytes()) {
            return Verdict::Ok;
        }
        self.attempts_left -= 1;
        Verdict::Wrong {
            attempts_left: self.attempts_left,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ids::test_rng as counter_rng;

    const T0: i64 = 1_800_000_000_000;

    #[test]
    fn codes_are_six_digits() {
        let mut rng = counter_rng(1);
        for _ in 0..200 {
            let code = generate_code(&mut rng);
            assert_eq!(code.len(), 6, "{code}");
            assert!(code.bytes().all(|b| b.is_ascii_digit()), "{code}");
        }
        // All-zero randomness gives the code with leading zeros, not a shorter string.
        assert_eq!(generate_code(&mut |b: &mut [u8]| b.fill(0)), "000000");
    }

    #[test]
    fn codes_are_roughly_uniform() {
        let mut rng = counter_rng(2);
        let mut first_digit = [0u32; 10];
        let mut last_digit = [0u32; 10];
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let code = generate_code(&mut rng);
            let b = code.as_bytes();
            first_digit[(b[0] - b'0') as usize] += 1;
            last_digit[(b[5] - b'0') as usize] += 1;
            distinct.insert(code);
        }
        // Expected 1000 each; a fair source stays well within ±200.
        for counts in [first_digit, last_digit] {
            assert!(
                counts.iter().all(|&c| (800..=1200).contains(&c)),
                "{counts:?}"
            );
        }
        assert!(distinct.len() > 9_900, "{}", distinct.len());
    }

    #[test]
    fn biased_draws_are_rejected() {
        // The first draw is ≥ the limit and must be skipped; the second (= 123456) is used.
        let mut calls = 0;
        let mut rng = |b: &mut [u8]| {
            calls += 1;
            b.fill(0xff);
            b[4..8].copy_from_slice(&123_456u32.to_be_bytes());
        };
        assert_eq!(generate_code(&mut rng), "123456");
        assert_eq!(calls, 1);
        // A broken source that only ever yields rejected draws still returns a code.
        assert_eq!(generate_code(&mut |b: &mut [u8]| b.fill(0xff)).len(), 6);
    }

    #[test]
    fn normalize_code_accepts_typed_forms() {
        assert_eq!(normalize_code("123456"), Some("123456".into()));
        assert_eq!(normalize_code(" 123 456 "), Some("123456".into()));
        assert_eq!(normalize_code("123-456"), Some("123456".into()));
        for bad in ["", "12345", "1234567", "12345a", "１２３４５６"] {
            assert_eq!(normalize_code(bad), None, "{bad}");
        }
    }

    #[test]
    fn hashes_bind_pepper_project_email_and_code() {
        let h = hash_code(b"pepper", "prj_1", "a@b.co", "123456");
        assert_eq!(h.len(), 64);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(h, hash_code(b"pepper", "prj_1", "a@b.co", "123456"));
        for other in [
            hash_code(b"pepper2", "prj_1", "a@b.co", "123456"),
            hash_code(b"pepper", "prj_2", "a@b.co", "123456"),
            hash_code(b"pepper", "prj_1", "x@b.co", "123456"),
            hash_code(b"pepper", "prj_1", "a@b.co", "123457"),
            hash_code(b"pepper", "prj_1a", "@b.co", "123456"),
        ] {
            assert_ne!(h, other);
        }
    }

    #[test]
    fn emails_are_normalized_and_shape_checked() {
        assert_eq!(
            normalize_email("  Ada@Example.COM "),
            Ok("ada@example.com".into())
        );
        assert_eq!(
            normalize_email("a.b+tag@sub.example.org"),
            Ok("a.b+tag@sub.example.org".into())
        );
        let long_local = format!("{}@example.com", "a".repeat(65));
        let too_long = format!("{}@{}.com", "a".repeat(60), "b".repeat(200));
        for bad in [
            "",
            "   ",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@@b.com",
            "a@b@c.com",
            "a b@c.com",
            "a@b .com",
            "a\u{0}@b.com",
            "a@.com",
            "a@b.com.",
            "a@b..com",
            long_local.as_str(),
            too_long.as_str(),
        ] {
            assert_eq!(normalize_email(bad), Err(()), "{bad:?}");
        }
    }

    #[test]
    fn right_code_passes_until_expiry_at_exactly_ten_minutes() {
        let hash = hash_code(b"p", "prj", "a@b.co", "111111");
        let mut c = Challenge::new("c".into(), hash.clone(), T0, "n".into());
        assert_eq!(c.expires_at, T0 + 600_000);
        assert_eq!(c.attempts_left, 5);
        assert_eq!(c.check(T0 + 599_999, &hash), Verdict::Ok);
        assert_eq!(c.check(T0 + 600_000, &hash), Verdict::Expired);
        assert_eq!(c.check(T0 + 600_001, &hash), Verdict::Expired);
        // Expired answers do not use up attempts.
        assert_eq!(c.attempts_left, 5);
    }

    #[test]
    fn five_wrong_codes_lock_for_good() {
        let right = hash_code(b"p", "prj", "a@b.co", "111111");
        let wrong = hash_code(b"p", "prj", "a@b.co", "222222");
        let mut c = Challenge::new("c".into(), right.clone(), T0, "n".into());
        for left in (0..5).rev() {
            assert_eq!(
                c.check(T0 + 1, &wrong),
                Verdict::Wrong {
                    attempts_left: left
                }
            );
        }
        assert_eq!(c.check(T0 + 2, &right), Verdict::Locked);
        assert_eq!(c.check(T0 + 3, &wrong), Verdict::Locked);
        assert_eq!(c.attempts_left, 0);
        // It survives storage round trips locked.
        let stored = serde_json::to_string(&c).unwrap();
        let mut back: Challenge = crate::encoding::from_json(&stored).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.check(T0 + 4, &right), Verdict::Locked);
    }

    #[test]
    fn a_wrong_try_then_the_right_code_succeeds() {
        let right = hash_code(b"p", "prj", "a@b.co", "111111");
        let mut c = Challenge::new("c".into(), right.clone(), T0, "n".into());
        assert_eq!(
            c.check(T0, "not-a-hash"),
            Verdict::Wrong { attempts_left: 4 }
        );
        assert_eq!(c.check(T0, ""), Verdict::Wrong { attempts_left: 3 });
        assert_eq!(c.check(T0, &right), Verdict::Ok);
    }

    #[test]
    fn challenge_ids_are_bound_to_project_and_email() {
        let mut rng = counter_rng(3);
        let id = new_challenge_id(b"pepper", "prj_1", "a@b.co", &mut rng);
        assert!(id.starts_with("chl_") && id.len() == 40, "{id}");
        assert!(challenge_id_is_ours(b"pepper", "prj_1", "a@b.co", &id));
        assert!(!challenge_id_is_ours(b"pepper", "prj_1", "x@b.co", &id));
        assert!(!challenge_id_is_ours(b"pepper", "prj_2", "a@b.co", &id));
        assert!(!challenge_id_is_ours(b"other", "prj_1", "a@b.co", &id));
        let mut forged = id.clone();
        forged.replace_range(10..11, if &id[10..11] == "a" { "b" } else { "a" });
        assert!(!challenge_id_is_ours(b"pepper", "prj_1", "a@b.co", &forged));
        for odd in [
            "",
            "chl_",
            "chl_x",
            &id[..39],
            "chl_ééééééééééééééééééééééééééééééééééé",
        ] {
            assert!(
                !challenge_id_is_ours(b"pepper", "prj_1", "a@b.co", odd),
                "{odd}"
            );
        }
    }
}
