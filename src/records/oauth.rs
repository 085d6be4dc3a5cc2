//! OAuth clients and grants as stored: a project's registered apps and the token chains issued to them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::oauth::ClientType;
use crate::records::json_text;
use crate::time::rfc3339;

/// An OAuth client of a project. The secret of a confidential client is stored hashed only.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct OAuthClient {
    pub id: String,
    pub project_id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub client_type: ClientType,
    #[serde(
        rename = "redirect_uris_json",
        deserialize_with = "json_text::required",
        serialize_with = "json_text::write"
    )]
    pub redirect_uris: Vec<String>,
    /// The scopes it may ask for; `None`: any.
    #[serde(
        rename = "scopes_json",
        deserialize_with = "json_text::optional",
        serialize_with = "json_text::write_optional"
    )]
    pub scopes: Option<Vec<String>>,
    pub secret_hash: Option<String>,
    /// A confidential client's own consumer, which its `client_credentials` tokens are metered to.
    pub consumer_id: Option<String>,
    /// Registered through RFC 7591 rather than by the owner.
    #[serde(with = "int_bool")]
    pub dynamic: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// SQLite keeps booleans as 0/1.
mod int_bool {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(i64::from(*v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        match i64::deserialize(d)? {
            0 => Ok(false),
            1 => Ok(true),
            n => Err(serde::de::Error::custom(format!("not a boolean: {n}"))),
        }
    }
}

impl OAuthClient {
    /// The owner's view: never the secret or its hash.
    pub fn to_json(&self, project_slug: &str) -> Value {
        json!({
            "client_id": self.id, "project": project_slug, "name": self.name, "type": self.client_type.as_str(),
            "redirect_uris": self.redirect_uris, "scopes": self.scopes, "consumer_id": self.consumer_id,
            "dynamic": self.dynamic,
            "token_endpoint_auth_method": match self.client_type {
                ClientType::Public => "none",
                ClientType::Confidential => "client_secret_basic",
            },
            "created_at": rfc3339(self.created_at), "updated_at": rfc3339(self.updated_at),
        })
    }
}

/// A grant: one chain of tokens issued to a client for a consumer. Its id is the session whose
/// Durable Object holds the exact state (code, rotation, revocation); this row is for listing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct OAuthGrant {
    pub id: String,
    pub project_id: String,
    pub client_id: String,
    pub consumer_id: String,
    pub grant_type: String,
    pub scope: String,
    pub resource: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    /// The client's name, joined in when listed.
    #[serde(default)]
    pub client_name: Option<String>,
}

impl OAuthGrant {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "client_id": self.client_id, "client_name": self.client_name,
            "consumer_id": self.consumer_id, "grant_type": self.grant_type,
            "scopes": self.scope.split(' ').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
            "resource": self.resource, "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_row_decodes_once_and_never_shows_its_secret() {
        let row = json!({"id": "cli_1", "project_id": "prj_1", "name": "App", "type": "confidential",
            "redirect_uris_json": "[\"https://app.example/cb\"]", "scopes_json": null, "secret_hash": "abcd1234",
            "consumer_id": "con_1", "dynamic": 0, "created_at": 0, "updated_at": 0});
        let c: OAuthClient = serde_json::from_value(row.clone()).unwrap();
        assert_eq!(c.client_type, ClientType::Confidential);
        assert!(!c.to_json("p").to_string().contains("abcd1234"));
        for (col, bad) in [
            ("type", json!("trusted")),
            ("redirect_uris_json", json!("[")),
            ("dynamic", json!(2)),
        ] {
            let mut r = row.clone();
            r[col] = bad;
            assert!(serde_json::from_value::<OAuthClient>(r).is_err(), "{col}");
        }
        let back: OAuthClient = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
