//! Random identifiers and secrets in base62, from injected randomness.

pub const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `len` uniformly random base62 characters (rejection sampling: bytes ≥ 248 would bias).
pub fn base62(len: usize, fill_random: &mut dyn FnMut(&mut [u8])) -> String {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 48];
    while out.len() < len {
        fill_random(&mut buf);
        for &b in buf.iter() {
            if b < 248 && out.len() < len {
                out.push(BASE62[(b % 62) as usize] as char);
            }
        }
    }
    out
}

/// A record id such as `con_3kT9...` (20 characters, ~119 bits).
pub fn new_id(prefix: &str, fill_random: &mut dyn FnMut(&mut [u8])) -> String {
    format!("{prefix}_{}", base62(20, fill_random))
}

/// Deterministic randomness for tests: SHA-256 of (seed, counter), as many bytes as asked.
#[cfg(test)]
pub fn test_rng(seed: u8) -> impl FnMut(&mut [u8]) {
    use sha2::{Digest, Sha256};
    let mut counter = 0u64;
    move |buf: &mut [u8]| {
        for chunk in buf.chunks_mut(32) {
            counter += 1;
            let block = Sha256::digest([&[seed][..], &counter.to_le_bytes()].concat());
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_prefix_and_length() {
        let mut n = 0u8;
        let mut rng = |b: &mut [u8]| {
            b.iter_mut().for_each(|x| {
                n = n.wrapping_add(7);
                *x = n;
            })
        };
        let id = new_id("key", &mut rng);
        assert!(id.starts_with("key_"));
        assert_eq!(id.len(), 24);
        assert!(id[4..].bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn biased_bytes_are_skipped() {
        // All bytes ≥ 248 except one: only that byte may produce a character.
        let mut calls = 0;
        let mut rng = |b: &mut [u8]| {
            calls += 1;
            b.iter_mut().for_each(|x| *x = 250);
            if calls > 1 {
                b[0] = 61;
            }
        };
        assert_eq!(base62(2, &mut rng), "zz");
    }
}
