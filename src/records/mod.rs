//! The records the gateway stores, as domain types. Each row decodes into one of these once, at the
//! store boundary (`store::d1`): enums for modes, kinds and statuses, parsed config for the JSON
//! columns. A row that does not decode is an error, never a default.

pub mod api;
pub mod consumer;
pub mod project;

pub use api::Api;
pub use consumer::{Consumer, ConsumerKind, ConsumerStatus, KeyListing, KeyOwner};
pub use project::Project;

/// Deserializers for TEXT columns that hold JSON: the text is parsed into its type, and text that
/// does not parse fails the whole row.
pub(crate) mod json_text {
    use serde::{de::DeserializeOwned, Deserialize, Deserializer};

    pub fn required<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<T, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }

    pub fn optional<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}
