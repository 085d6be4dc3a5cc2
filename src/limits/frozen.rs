//! A value that never changes once made, kept beside its JSON: the counter writes its whole state on
//! every operation, and each live lease holds a usage record that is only read again when the lease
//! ends, so the record's JSON is made once instead of on every write. It reads back by decoding that
//! JSON into the type (a record that does not decode is an error, as for the rest of the state).
//! It reads only from serde_json's own deserializer (`encoding::from_json`, `from_slice`), not
//! through a buffered value (`#[serde(flatten)]`, untagged enums, `from_value`): keep it out of
//! such types.

use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

#[derive(Debug, Clone)]
pub struct Frozen<T> {
    value: T,
    /// `value` as JSON (`None` only if it could not be written, when it is written each time).
    json: Option<Box<RawValue>>,
}

impl<T: Serialize> Frozen<T> {
    pub fn new(value: T) -> Frozen<T> {
        let json = serde_json::value::to_raw_value(&value).ok();
        Frozen { value, json }
    }
}

impl<T> Frozen<T> {
    pub fn get(&self) -> &T {
        &self.value
    }

    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T: PartialEq> PartialEq for Frozen<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Eq> Eq for Frozen<T> {}

impl<T: Serialize> Serialize for Frozen<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.json {
            Some(json) => json.serialize(serializer),
            None => self.value.serialize(serializer),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Frozen<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = Box::<RawValue>::deserialize(deserializer)?;
        let value = crate::encoding::from_json(json.get()).map_err(D::Error::custom)?;
        Ok(Frozen {
            value,
            json: Some(json),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Record {
        id: String,
        tokens: u64,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Holder {
        record: Option<Frozen<Record>>,
    }

    fn record() -> Record {
        Record {
            id: "usg_1".into(),
            tokens: 8,
        }
    }

    #[test]
    fn it_writes_what_the_value_would_and_reads_it_back() -> Result<(), serde_json::Error> {
        let held = Holder {
            record: Some(Frozen::new(record())),
        };
        let plain = serde_json::to_string(&serde_json::json!({ "record": record() }))?;
        let json = serde_json::to_string(&held)?;
        assert_eq!(json, plain);
        let read: Holder = crate::encoding::from_json(&json)?;
        assert_eq!(read, held);
        assert_eq!(read.record.map(Frozen::into_inner), Some(record()));
        Ok(())
    }

    #[test]
    fn a_value_that_does_not_decode_is_an_error() {
        let read = crate::encoding::from_json::<Holder>(r#"{"record":{"id":"usg_1"}}"#);
        assert!(read.is_err());
        let read = crate::encoding::from_json::<Holder>(r#"{"record":null}"#);
        assert!(matches!(read, Ok(Holder { record: None })));
    }
}
