//! The counter's sliding-minute log as it is stored: admission times as one compact string instead of
//! a JSON array of 13-digit numbers (the counter writes its whole state on every operation, and a
//! plan with a per-minute limit keeps up to that many times). Each time is a zigzag varint of its
//! difference from the one before (the first from zero), and the bytes are base64url without padding:
//! 1.4 characters a time for admissions under 64 ms apart, 2.7 up to 8 s apart, instead of 14. The
//! older form, an array of numbers, still reads.

use std::collections::VecDeque;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Serializer;

/// The stored form of `times`.
pub fn encode(times: &VecDeque<i64>) -> String {
    let mut bytes = Vec::with_capacity(times.len() + 8);
    let mut previous = 0i64;
    for &t in times {
        let delta = t.wrapping_sub(previous);
        previous = t;
        // Zigzag: small differences of either sign become small unsigned numbers.
        let mut v = ((delta << 1) ^ (delta >> 63)) as u64;
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                bytes.push(byte);
                break;
            }
            bytes.push(byte | 0x80);
        }
    }
    B64URL.encode(bytes)
}

/// The times in a stored string, or why it is not one.
pub fn decode(text: &str) -> Result<VecDeque<i64>, String> {
    let bytes = B64URL
        .decode(text)
        .map_err(|_| "the minute log is not base64url".to_string())?;
    let mut times = VecDeque::with_capacity(bytes.len());
    let mut previous = 0i64;
    let mut v = 0u64;
    let mut shift = 0u32;
    for &byte in &bytes {
        // The tenth byte holds the 64th bit and nothing more.
        if shift > 63 || (shift == 63 && byte & 0x7f > 1) {
            return Err("a minute log entry is longer than 64 bits".into());
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 != 0 {
            shift += 7;
            continue;
        }
        let delta = ((v >> 1) as i64) ^ -((v & 1) as i64);
        previous = previous.wrapping_add(delta);
        times.push_back(previous);
        v = 0;
        shift = 0;
    }
    if shift != 0 {
        return Err("the minute log ends inside an entry".into());
    }
    Ok(times)
}

/// `#[serde(with = "minute_log")]`: writes the compact string, reads it or the older array.
pub fn serialize<S: Serializer>(times: &VecDeque<i64>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&encode(times))
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<VecDeque<i64>, D::Error> {
    struct Log;
    impl<'de> Visitor<'de> for Log {
        type Value = VecDeque<i64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a minute log (a base64url string, or an array of times)")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            decode(text).map_err(E::custom)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut times = VecDeque::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(t) = seq.next_element::<i64>()? {
                times.push_back(t);
            }
            Ok(times)
        }
    }
    deserializer.deserialize_any(Log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(times: &[i64]) -> VecDeque<i64> {
        times.iter().copied().collect()
    }

    #[test]
    fn times_survive_the_round_trip_whatever_their_order_and_size() {
        for times in [
            log(&[]),
            log(&[1_796_626_524_506]),
            log(&[
                1_796_626_524_506,
                1_796_626_524_506,
                1_796_626_524_513,
                1_796_626_584_505,
            ]),
            // Times from isolates whose clocks disagree may arrive out of order.
            log(&[1_000, 999, 5_000_000, 0, -7]),
            log(&[i64::MIN, i64::MAX, 0, i64::MAX, i64::MIN]),
        ] {
            assert_eq!(decode(&encode(&times)), Ok(times.clone()));
        }
    }

    #[test]
    fn a_busy_minute_takes_about_two_characters_a_time() {
        let times: VecDeque<i64> = (0..1000).map(|i| 1_796_626_524_506 + i * 60).collect();
        let stored = encode(&times);
        assert!(stored.len() < 2 * 1000 + 16, "{} characters", stored.len());
        let as_array = serde_json::to_string(&times).map(|s| s.len()).unwrap_or(0);
        assert!(
            as_array > 6 * stored.len(),
            "{as_array} against {}",
            stored.len()
        );
    }

    #[test]
    fn what_is_not_a_log_is_an_error() {
        assert!(decode("not base64!").is_err());
        // 0x80 promises another byte that never comes.
        assert!(decode(&B64URL.encode([0x80])).is_err());
        // Eleven continuation bytes run past 64 bits, and so does a tenth byte above 1.
        assert!(decode(&B64URL.encode([0xff; 11])).is_err());
        let mut beyond = [0xff; 10];
        beyond[9] = 0x02;
        assert!(decode(&B64URL.encode(beyond)).is_err());
        let mut widest = [0xff; 10];
        widest[9] = 0x01;
        assert_eq!(decode(&B64URL.encode(widest)), Ok(log(&[i64::MIN])));
    }

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Holder {
        #[serde(with = "super")]
        minute: VecDeque<i64>,
    }

    #[test]
    fn the_state_writes_a_string_and_reads_both_forms() {
        let held = Holder {
            minute: log(&[10, 20, 30]),
        };
        let json = serde_json::to_string(&held).map_err(|e| e.to_string());
        assert_eq!(json, Ok(r#"{"minute":"FBQU"}"#.to_string()));
        let old: Result<Holder, _> = crate::encoding::from_json(r#"{"minute":[10,20,30]}"#);
        assert_eq!(old.ok(), Some(held));
        let broken: Result<Holder, _> = crate::encoding::from_json(r#"{"minute":"%%"}"#);
        assert!(broken.is_err());
        let wrong: Result<Holder, _> = crate::encoding::from_json(r#"{"minute":{"a":1}}"#);
        assert!(wrong.is_err());
    }
}
