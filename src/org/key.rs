//! Org API keys: `ask-prod-` or `ask-dev-` + 32 base62 characters + a 6-character checksum, sent as
//! `X-API-Key` on the admin API; only their SHA-256 is stored.

use sha2::{Digest, Sha256};

use crate::auth::key::{checksum_of, CHECK_LEN};
use crate::ids::base62;

const BODY_LEN: usize = 32;
/// How much of the key after its environment is shown in listings.
const SHOWN_LEN: usize = 6;

/// The environment a key is for: part of its prefix, so a key says where it belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Prod,
    Dev,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Prod => "prod",
            Environment::Dev => "dev",
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            Environment::Prod => "ask-prod-",
            Environment::Dev => "ask-dev-",
        }
    }
}

/// A string with an org key's shape and a matching checksum (not yet known to exist).
#[derive(Clone, PartialEq, Eq)]
pub struct OrgKey {
    key: String,
    environment: Environment,
}

impl std::fmt::Debug for OrgKey {
    // Never print the secret, even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OrgKey({}…)", self.display_prefix())
    }
}

impl OrgKey {
    pub fn generate(environment: Environment, fill_random: &mut dyn FnMut(&mut [u8])) -> OrgKey {
        let body = base62(BODY_LEN, fill_random);
        let check = checksum_of(environment.prefix(), &body);
        OrgKey {
            key: format!("{}{body}{check}", environment.prefix()),
            environment,
        }
    }

    /// Whether a credential is meant as an org key (starts `ask-`), whatever its shape.
    pub fn looks_like(s: &str) -> bool {
        s.starts_with("ask-")
    }

    /// The key, if `s` has exactly an org key's shape and checksum.
    pub fn parse(s: &str) -> Option<OrgKey> {
        let environment = [Environment::Prod, Environment::Dev]
            .into_iter()
            .find(|e| s.starts_with(e.prefix()))?;
        let rest = &s[environment.prefix().len()..];
        if rest.len() != BODY_LEN + CHECK_LEN || !rest.bytes().all(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        let (body, check) = rest.split_at(BODY_LEN);
        crate::auth::constant_time_eq(
            checksum_of(environment.prefix(), body).as_bytes(),
            check.as_bytes(),
        )
        .then(|| OrgKey {
            key: s.to_string(),
            environment,
        })
    }

    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// The lowercase hex SHA-256 of the whole key: the only form stored.
    pub fn hash(&self) -> String {
        crate::encoding::hex(&Sha256::digest(self.key.as_bytes()))
    }

    /// The non-secret beginning shown in listings, e.g. `ask-prod-AbC12x`.
    pub fn display_prefix(&self) -> String {
        self.key[..self.environment.prefix().len() + SHOWN_LEN].to_string()
    }

    /// The secret itself, for the one response that hands it out.
    pub fn reveal(&self) -> &str {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::test_rng;

    #[test]
    fn keys_have_their_shape_and_checksum() {
        for env in [Environment::Prod, Environment::Dev] {
            let key = OrgKey::generate(env, &mut test_rng(4));
            let s = key.reveal().to_string();
            assert!(s.starts_with(&format!("ask-{}-", env.as_str())), "{s}");
            assert_eq!(OrgKey::parse(&s), Some(key.clone()));
            assert_eq!(key.environment(), env);
            assert!(OrgKey::looks_like(&s));
            assert!(s.starts_with(&key.display_prefix()));
            assert!(!format!("{key:?}").contains(&s[key.display_prefix().len()..]));
            assert_eq!(key.hash().len(), 64);
            let mut flipped = s.clone().into_bytes();
            let i = s.len() - 10;
            flipped[i] = if flipped[i] == b'a' { b'b' } else { b'a' };
            assert_eq!(OrgKey::parse(&String::from_utf8(flipped).unwrap()), None);
            assert_eq!(OrgKey::parse(&s[..s.len() - 1]), None);
            assert_eq!(OrgKey::parse(&format!("{s}0")), None);
        }
        let prod = OrgKey::generate(Environment::Prod, &mut test_rng(5));
        let as_dev = prod.reveal().replacen("ask-prod-", "ask-dev-", 1);
        assert_eq!(OrgKey::parse(&as_dev), None);
        assert_eq!(OrgKey::parse("ask_live_abc"), None);
        assert!(!OrgKey::looks_like("ask_live_abc"));
        assert_ne!(
            OrgKey::generate(Environment::Prod, &mut test_rng(6)),
            OrgKey::generate(Environment::Prod, &mut test_rng(7))
        );
    }
}
