//! The records the gateway stores, as domain types. Each row decodes into one of these once, at the
//! store boundary (`store::d1`): enums for modes, kinds and statuses, parsed config for the JSON
//! columns. A row that does not decode is an error, never a default.

pub mod api;
pub mod consumer;
pub mod oauth;
pub mod org;
pub mod project;
pub mod provider;
pub mod sign_in;

pub use api::Api;
pub use consumer::{Consumer, ConsumerKind, ConsumerStatus, KeyHolder, KeyListing, KeyOwner};
pub use project::Project;

/// Deserializers for TEXT columns that hold JSON: the text is parsed into its type, and text that
/// does not parse fails the whole row.
pub(crate) mod json_text {
    use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize, Serializer};

    pub fn required<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<T, D::Error> {
        let text = String::deserialize(d)?;
        crate::encoding::from_json(&text).map_err(serde::de::Error::custom)
    }

    /// Writes the value back as JSON text (the record's stored shape, also what KV holds).
    pub fn write<S: Serializer, T: Serialize>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(v).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn write_optional<S: Serializer, T: Serialize>(
        v: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(v) => write(v, s),
        }
    }

    pub fn optional<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => crate::encoding::from_json(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}
