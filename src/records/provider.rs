//! An org's key for a model provider as stored: encrypted (never shown again), its last 4
//! characters for listings, and the base URL that overrides the provider's own.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::providers::Provider;
use crate::time::rfc3339;

/// Serialized in its row's shape, which is also what the hot-path cache keeps in KV (the key stays
/// sealed there too).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ProviderKey {
    pub org_id: String,
    pub provider: Provider,
    pub base_url: Option<String>,
    pub key_enc: Option<String>,
    pub key_last4: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ProviderKey {
    /// Where requests go: the override, else the provider's documented base URL.
    pub fn base_url(&self) -> &str {
        self.base_url
            .as_deref()
            .unwrap_or(self.provider.default_base_url())
    }

    /// The listing's view: never the key.
    pub fn to_json(&self) -> Value {
        json!({"provider": self.provider, "base_url": self.base_url(), "key_last4": self.key_last4,
            "created_at": rfc3339(self.created_at), "updated_at": rfc3339(self.updated_at)})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_decode_and_the_view_hides_the_key() {
        let row = json!({"org_id": "org_1", "provider": "anthropic", "base_url": null, "key_enc": "v2:ab:xyz",
            "key_last4": "wxyz", "created_at": 1, "updated_at": 2});
        let k: ProviderKey = serde_json::from_value(row.clone()).unwrap();
        assert_eq!(k.base_url(), "https://api.anthropic.com");
        let view = k.to_json().to_string();
        assert!(!view.contains("v2:ab") && view.contains("wxyz"));
        let mut bad = row;
        bad["provider"] = json!("acme");
        assert!(serde_json::from_value::<ProviderKey>(bad).is_err());
    }
}
