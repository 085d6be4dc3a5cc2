//! Provider keys encrypted at rest: AES-256-GCM under a key derived from the ENCRYPTION_KEY secret.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};

const VERSION: &str = "v1:";

fn cipher(secret: &str) -> Aes256Gcm {
    // The secret may be any string; hashing with a context label gives a 256-bit key.
    let key = Sha256::digest(format!("sluice provider-key v1\0{secret}").as_bytes());
    Aes256Gcm::new(&key)
}

/// Encrypts `plaintext` with a fresh 96-bit nonce from `nonce`; returns `v1:<base64(nonce|ciphertext)>`.
pub fn seal(secret: &str, nonce: [u8; 12], plaintext: &str) -> String {
    let ct = cipher(secret)
        .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
        // AES-GCM encryption only fails for inputs of many gigabytes; keys are validated to 4 KiB.
        .unwrap_or_default();
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&ct);
    format!("{VERSION}{}", B64.encode(blob))
}

/// Decrypts what `seal` produced; `None` if the blob is damaged or the secret is different.
pub fn open(secret: &str, sealed: &str) -> Option<String> {
    let blob = B64.decode(sealed.strip_prefix(VERSION)?).ok()?;
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
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("sk-provider"));
        assert_eq!(open("master", &sealed).as_deref(), Some("sk-provider-123"));
        assert_eq!(open("other", &sealed), None);
        let mut bytes = B64.decode(&sealed[3..]).unwrap();
        bytes[20] ^= 1;
        assert_eq!(open("master", &format!("v1:{}", B64.encode(bytes))), None);
        assert_eq!(open("master", "v1:!!!"), None);
        assert_eq!(open("master", "plain"), None);
    }

    #[test]
    fn nonces_change_the_ciphertext() {
        assert_ne!(seal("m", [1; 12], "k"), seal("m", [2; 12], "k"));
    }
}
