//! Consumer key format: `ask_live_` + 32 base62 characters (~190 random bits) + a 6-character
//! checksum; and custom keys, the owner's own secrets (migrated from another system).

use sha2::{Digest, Sha256};

use crate::ids::{base62, BASE62 as ALPHABET};

pub const PREFIX: &str = "ask_live_";
const BODY_LEN: usize = 32;
pub(crate) const CHECK_LEN: usize = 6;
pub const KEY_LEN: usize = PREFIX.len() + BODY_LEN + CHECK_LEN;
/// How much of the key (after the prefix) is shown in listings.
const SHOWN_LEN: usize = 6;

/// Why a string is not a consumer key; none of these needs a storage lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    WrongPrefix,
    WrongLength,
    BadCharacter,
    BadChecksum,
}

impl KeyError {
    pub fn describe(self) -> &'static str {
        match self {
            KeyError::WrongPrefix => "a consumer key starts with `ask_live_`",
            KeyError::WrongLength => "the consumer key has the wrong length",
            KeyError::BadCharacter => {
                "the consumer key contains characters that never occur in a key"
            }
            KeyError::BadChecksum => {
                "the consumer key's checksum does not match (mistyped or truncated?)"
            }
        }
    }
}

/// A string that has the shape of a consumer key and a matching checksum (not yet known to exist).
#[derive(Clone, PartialEq, Eq)]
pub struct ConsumerKey(String);

impl std::fmt::Debug for ConsumerKey {
    // Never print the secret, even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConsumerKey({}…)", self.display_prefix())
    }
}

fn checksum(body: &str) -> String {
    checksum_of(PREFIX, body)
}

/// The 6 base62 characters that end a key: from the SHA-256 of its prefix and body, so a mistyped or
/// truncated key is refused without a lookup (org keys use it too).
pub(crate) fn checksum_of(prefix: &str, body: &str) -> String {
    let digest = Sha256::digest(format!("{prefix}{body}").as_bytes());
    let mut n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) as u64;
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl ConsumerKey {
    /// Makes a new key from a source of random bytes (rejection sampling keeps every character uniform).
    /// Makes a new key from a source of random bytes.
    pub fn generate(fill_random: &mut dyn FnMut(&mut [u8])) -> ConsumerKey {
        let body = base62(BODY_LEN, fill_random);
        let check = checksum(&body);
        ConsumerKey(format!("{PREFIX}{body}{check}"))
    }

    pub fn parse(s: &str) -> Result<ConsumerKey, KeyError> {
        let rest = s.strip_prefix(PREFIX).ok_or(KeyError::WrongPrefix)?;
        if rest.len() != BODY_LEN + CHECK_LEN {
            return Err(KeyError::WrongLength);
        }
        if !rest.bytes().all(|c| c.is_ascii_alphanumeric()) {
            return Err(KeyError::BadCharacter);
        }
        let (body, check) = rest.split_at(BODY_LEN);
        if !crate::auth::constant_time_eq(checksum(body).as_bytes(), check.as_bytes()) {
            return Err(KeyError::BadChecksum);
        }
        Ok(ConsumerKey(s.to_string()))
    }

    /// The lowercase hex SHA-256 of the whole key: the only form ever stored.
    pub fn hash(&self) -> String {
        crate::encoding::hex(&Sha256::digest(self.0.as_bytes()))
    }

    /// The non-secret beginning shown in listings, e.g. `ask_live_AbC12x`.
    pub fn display_prefix(&self) -> String {
        self.0[..PREFIX.len() + SHOWN_LEN].to_string()
    }

    /// The secret itself, for the one response that hands it out.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

/// The shortest custom key: shorter secrets are guessable.
pub const CUSTOM_MIN_LEN: usize = 24;
pub const CUSTOM_MAX_LEN: usize = 512;

/// Whether `s` has a custom key's shape: 24 to 512 printable ASCII characters, no whitespace.
pub fn is_custom_shaped(s: &str) -> bool {
    (CUSTOM_MIN_LEN..=CUSTOM_MAX_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Checks an owner's custom key: a custom key's shape, and nothing the gateway would read as
/// another credential (a generated key, an org key, a JWT).
pub fn validate_custom(s: &str) -> Result<(), &'static str> {
    if !is_custom_shaped(s) {
        return Err("a custom key is 24 to 512 printable ASCII characters without whitespace");
    }
    if s.starts_with(PREFIX) || s.starts_with("ask-") {
        return Err(
            "a custom key may not start with `ask_live_` or `ask-` (the gateway's own formats)",
        );
    }
    if crate::auth::jwks_cache::looks_like_jwt(s) {
        return Err("a custom key may not look like a JWT (three dot-separated parts)");
    }
    Ok(())
}

/// The stored form of any key: the lowercase hex SHA-256 of the whole secret.
pub fn hash_secret(secret: &str) -> String {
    crate::encoding::hex(&Sha256::digest(secret.as_bytes()))
}

/// The stored form of a custom key: bound to its project, so the same secret in two projects is two
/// keys and a collision says nothing about another tenant.
pub fn custom_hash(project_id: &str, secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"sluice custom key v1\0");
    h.update(project_id.as_bytes());
    h.update(b"\0");
    h.update(secret.as_bytes());
    crate::encoding::hex(&h.finalize())
}

/// How much of a custom key listings show.
pub fn custom_prefix(secret: &str) -> String {
    secret.chars().take(SHOWN_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ids::test_rng as counter_rng;

    #[test]
    fn generated_keys_parse_and_have_the_documented_shape() {
        let key = ConsumerKey::generate(&mut counter_rng(1));
        let s = key.reveal().to_string();
        assert!(s.starts_with("ask_live_"));
        assert_eq!(s.len(), KEY_LEN);
        assert_eq!(ConsumerKey::parse(&s), Ok(key.clone()));
        assert_eq!(key.display_prefix(), s[..15]);
        assert_eq!(key.hash().len(), 64);
        assert!(!format!("{key:?}").contains(&s[15..]));
    }

    #[test]
    fn custom_keys_are_long_printable_and_not_another_format() {
        assert!(validate_custom("legacy_key_0123456789abcdef").is_ok());
        assert!(validate_custom("short-key-123").is_err());
        assert!(validate_custom("has a space in it 0123456789").is_err());
        assert!(validate_custom("tab\there_0123456789012345678").is_err());
        assert!(validate_custom("ask_live_0123456789012345678901").is_err());
        assert!(validate_custom("ask-prod-0123456789012345678901").is_err());
        assert!(validate_custom("eyJhbGciOiJIUzI1NiJ9.e30.abcdefghijk").is_err());
        assert!(validate_custom(&"x".repeat(513)).is_err());
        assert!(validate_custom("ünïcode-ключ-0123456789abcdef").is_err());
        assert_eq!(custom_prefix("legacy_key_0123"), "legacy");
        let k = ConsumerKey::generate(&mut counter_rng(4));
        assert_eq!(hash_secret(k.reveal()), k.hash());
        let s = "legacy_key_0123456789abcdef";
        assert_ne!(custom_hash("prj_1", s), custom_hash("prj_2", s));
        assert_ne!(custom_hash("prj_1", s), hash_secret(s));
    }

    #[test]
    fn different_randomness_gives_different_keys() {
        let a = ConsumerKey::generate(&mut counter_rng(1));
        let b = ConsumerKey::generate(&mut counter_rng(2));
        assert_ne!(a, b);
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn rejects_malformed_keys_without_lookup() {
        let good = ConsumerKey::generate(&mut counter_rng(3))
            .reveal()
            .to_string();
        assert_eq!(ConsumerKey::parse("sk-abc"), Err(KeyError::WrongPrefix));
        assert_eq!(
            ConsumerKey::parse("ask_live_short"),
            Err(KeyError::WrongLength)
        );
        assert_eq!(
            ConsumerKey::parse(&format!("{good}x")),
            Err(KeyError::WrongLength)
        );
        let mut bad_char = good.clone();
        bad_char.replace_range(12..13, "-");
        assert_eq!(ConsumerKey::parse(&bad_char), Err(KeyError::BadCharacter));
        // Change one body character: the checksum must catch it.
        let mut flipped = good.clone().into_bytes();
        flipped[20] = if flipped[20] == b'a' { b'b' } else { b'a' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(ConsumerKey::parse(&flipped), Err(KeyError::BadChecksum));
    }

    #[test]
    fn characters_are_spread_over_the_alphabet() {
        let mut seen = std::collections::HashSet::new();
        let mut rng = counter_rng(9);
        for _ in 0..50 {
            for c in ConsumerKey::generate(&mut rng).reveal()[PREFIX.len()..PREFIX.len() + BODY_LEN]
                .chars()
            {
                seen.insert(c);
            }
        }
        assert!(seen.len() > 50, "only {} distinct characters", seen.len());
    }
}
