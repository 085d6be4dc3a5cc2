//! Consumers (whoever calls an API: a key holder the owner made, or a user signed in by email code)
//! and their keys, as listed and as a request's key resolves.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::time::rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerKind {
    /// Made by the owner; calls with its keys.
    Key,
    /// Signed in through managed mode.
    User,
    /// A user of the owner's IdP (byo-jwt), recorded on first use.
    #[serde(rename = "jwt-user")]
    JwtUser,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerStatus {
    Enabled,
    Disabled,
}

impl ConsumerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerStatus::Enabled => "enabled",
            ConsumerStatus::Disabled => "disabled",
        }
    }
}

impl ConsumerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerKind::Key => "key",
            ConsumerKind::User => "user",
            ConsumerKind::JwtUser => "jwt-user",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Consumer {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub description: Option<String>,
    pub kind: ConsumerKind,
    pub status: ConsumerStatus,
    pub created_at: i64,
    /// Kind `user`: the normalised email.
    pub email: Option<String>,
}

impl Consumer {
    pub fn is_enabled(&self) -> bool {
        self.status == ConsumerStatus::Enabled
    }

    /// What a signed-in user sees of themselves (`/auth/me`): their own fields, none of the owner's
    /// (the name and description are the owner's notes about them).
    pub fn to_self_json(&self, project_slug: &str) -> Value {
        json!({
            "id": self.id, "project": project_slug, "email": self.email, "kind": self.kind.as_str(),
            "status": self.status.as_str(), "created_at": rfc3339(self.created_at),
        })
    }

    pub fn to_json(&self, project_slug: &str) -> Value {
        json!({
            "id": self.id, "project": project_slug, "name": self.name, "description": self.description,
            "kind": self.kind.as_str(), "status": self.status.as_str(), "email": self.email, "created_at": rfc3339(self.created_at),
        })
    }
}

/// A consumer key as listed: the prefix only, never the secret or its hash.
#[derive(Debug, Clone, Deserialize)]
pub struct KeyListing {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub consumer_id: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

impl KeyListing {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "name": self.name, "prefix": self.prefix, "consumer_id": self.consumer_id,
            "created_at": rfc3339(self.created_at), "last_used_at": self.last_used_at.map(rfc3339),
        })
    }
}

/// A live key's holder, as the hot-path cache keeps it: whether the holder may call is the
/// consumer's counter's to say.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct KeyHolder {
    pub project_id: String,
    pub key_id: String,
    pub consumer_id: String,
}

/// What a live key proves: which consumer is calling, and whether the owner lets it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyOwner {
    pub key_id: String,
    pub consumer_id: String,
    pub consumer_status: ConsumerStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_kinds_are_strict() {
        let row = json!({"id": "con_1", "project_id": "p", "name": "n", "description": null, "kind": "user",
            "status": "enabled", "created_at": 0, "email": "a@b.c"});
        let c: Consumer = serde_json::from_value(row.clone()).unwrap();
        assert!(c.is_enabled() && c.kind == ConsumerKind::User);
        for (field, bad) in [
            ("status", "Enabled"),
            ("status", "paused"),
            ("kind", "robot"),
        ] {
            let mut r = row.clone();
            r[field] = json!(bad);
            assert!(
                serde_json::from_value::<Consumer>(r).is_err(),
                "{field} = {bad}"
            );
        }
    }
}
