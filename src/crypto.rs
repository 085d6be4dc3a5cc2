//! Provider keys encrypted at rest: AES-256-GCM under a key derived from the ENCRYPTION_KEY secret,
//! each record naming the key it was sealed with, so ENCRYPTION_KEY can be rotated
//! (ENCRYPTION_KEY_PREVIOUS still opens what the old key sealed until it is sealed again).

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};

/// Records sealed before they named their key.
const VERSION: &str = "v1:";
/// `v2:<key id>:<base64(nonce|ciphertext)>`.
const VERSION_2: &str = "v2:";

/// The id of the key a secret derives: 8 hex characters of a hash, which says nothing of the key.
pub fn key_id(secret: &str) -> String {
    crate::encoding::hex(&Sha256::digest(format!("sluice key id v1\0{secret}").as_bytes())[..4])
}

/// The id of the key a record was sealed with (`None` for a record from before key ids).
pub fn sealed_key_id(sealed: &str) -> Option<&str> {
    sealed.strip_prefix(VERSION_2)?.split(':').next()
}

/// The current key and the one before it, for opening what either sealed.
pub struct Keyring {
    pub current: String,
    pub previous: Option<String>,
}

impl Keyring {
    /// Opens a record sealed by the current or the previous key.
    pub fn open(&self, sealed: &str) -> Option<String> {
        open(&self.current, sealed)
            .or_else(|| self.previous.as_deref().and_then(|p| open(p, sealed)))
    }

    /// Whether a record is sealed with the current key (else it should be sealed again).
    pub fn is_current(&self, sealed: &str) -> bool {
        sealed_key_id(sealed) == Some(key_id(&self.current).as_str())
    }
}

fn cipher(secret: &str) -> Aes256Gcm {
    // The secret may be any string; hashing with a context label gives a 256-bit key.
    let key = Sha256::digest(format!("sluice provider-key v1\0{secret}").as_bytes());
    Aes256Gcm::new(&key)
}

/// Encrypts `plaintext` with a fresh 96-bit nonce from `nonce`; returns
/// `v2:<key id>:<base64(nonce|ciphertext)>`.
pub fn seal(secret: &str, nonce: [u8; 12], plaintext: &str) -> String {
    let ct = cipher(secret)
        .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
        // AES-GCM encryption only fails for inputs of many gigabytes; keys are validated to 4 KiB.
        .unwrap_or_default();
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&ct);
    format!("{VERSION_2}{}:{}", key_id(secret), B64.encode(blob))
}

/// Decrypts what `seal` produced; `None` if the blob is damaged or the secret is different.
pub fn open(secret: &str, sealed: &str) -> Option<String> {
    let body = match sealed.strip_prefix(VERSION_2) {
        Some(rest) => {
            let (id, body) = rest.split_once(':')?;
            if id != key_id(secret) {
                return None;
            }
            body
        }
        None => sealed.strip_prefix(VERSION)?,
    };
    let blob = B64.decode(body).ok()?;
    if blob.len() < 12 + 16 {
        return None;
    }
    let (nonce, ct) = blob.split_at(12);
    let pt = cipher(secret).decrypt(Nonce::from_slice(nonce), ct).ok()?;
    String::from_utf8(pt).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_detection() {
        let sealed = seal("master", [7; 12], "sk-provider-123");
        assert!(sealed.starts_with(&format!("v2:{}:", key_id("master"))));
        assert!(!sealed.contains("sk-provider"));
        assert_eq!(open("master", &sealed).as_deref(), Some("sk-provider-123"));
        assert_eq!(open("other", &sealed), None);
        let body = sealed.rsplit(':').next().unwrap();
        let mut bytes = B64.decode(body).unwrap();
        bytes[20] ^= 1;
        let tampered = format!("v2:{}:{}", key_id("master"), B64.encode(bytes));
        assert_eq!(open("master", &tampered), None);
        // A record from before key ids still opens.
        let old = format!(
            "v1:{}",
            B64.encode(
                [
                    [7u8; 12].as_slice(),
                    &cipher("master")
                        .encrypt(Nonce::from_slice(&[7; 12]), b"old".as_slice())
                        .unwrap()
                ]
                .concat()
            )
        );
        assert_eq!(open("master", &old).as_deref(), Some("old"));
        assert_eq!(open("master", "v1:!!!"), None);
        assert_eq!(open("master", "plain"), None);
    }

    #[test]
    fn a_rotated_key_still_opens_through_the_keyring() {
        let old = seal("old-secret", [3; 12], "sk-1");
        let ring = Keyring {
            current: "new-secret".into(),
            previous: Some("old-secret".into()),
        };
        assert_eq!(ring.open(&old).as_deref(), Some("sk-1"));
        assert!(!ring.is_current(&old));
        let resealed = seal("new-secret", [4; 12], "sk-1");
        assert!(ring.is_current(&resealed));
        assert_eq!(ring.open(&resealed).as_deref(), Some("sk-1"));
        let without = Keyring {
            current: "new-secret".into(),
            previous: None,
        };
        assert_eq!(without.open(&old), None);
        assert_eq!(sealed_key_id(&old), Some(key_id("old-secret").as_str()));
        assert_ne!(key_id("a"), key_id("b"));
    }

    #[test]
    fn nonces_change_the_ciphertext() {
        assert_ne!(seal("m", [1; 12], "k"), seal("m", [2; 12], "k"));
    }
}
