//! Orgs, owner accounts, org members, org keys and audit events as stored, with the owner's views.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::org::key::Environment;
use crate::org::Role;
use crate::time::rfc3339;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Org {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub created_at: i64,
}

impl Org {
    pub fn to_json(&self) -> Value {
        json!({"id": self.id, "slug": self.slug, "name": self.name, "created_at": rfc3339(self.created_at)})
    }
}

/// An owner account.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Owner {
    pub id: String,
    pub email: String,
    pub name: String,
    pub created_at: i64,
}

impl Owner {
    pub fn to_json(&self) -> Value {
        json!({"id": self.id, "email": self.email, "name": self.name, "created_at": rfc3339(self.created_at)})
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// Invited by email; joins on the invitee's next sign-in.
    Invited,
    Active,
}

impl MemberStatus {
    /// The stored name (as serde writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Invited => "invited",
            MemberStatus::Active => "active",
        }
    }
}

/// A member of an org (or an invitation to it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Member {
    pub id: String,
    pub org_id: String,
    pub owner_id: Option<String>,
    pub email: String,
    pub role: Role,
    pub status: MemberStatus,
    pub invited_by: Option<String>,
    pub created_at: i64,
    pub joined_at: Option<i64>,
}

impl Member {
    pub fn is_active_owner(&self) -> bool {
        self.status == MemberStatus::Active && self.role == Role::Owner
    }

    pub fn to_json(&self) -> Value {
        json!({"id": self.id, "email": self.email, "owner_id": self.owner_id, "role": self.role,
            "status": self.status, "created_at": rfc3339(self.created_at), "joined_at": self.joined_at.map(rfc3339)})
    }
}

/// An org membership of an owner, with its org.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Membership {
    pub org_id: String,
    pub slug: String,
    pub name: String,
    pub role: Role,
}

/// An org API key as stored (its hash is never read back).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OrgKeyRecord {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub prefix: String,
    pub role: Role,
    pub environment: Environment,
    pub created_by: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl OrgKeyRecord {
    /// The listing's view: never the secret or its hash.
    pub fn to_json(&self) -> Value {
        json!({"id": self.id, "name": self.name, "prefix": self.prefix, "role": self.role,
            "environment": self.environment, "created_by": self.created_by, "created_at": rfc3339(self.created_at),
            "last_used_at": self.last_used_at.map(rfc3339)})
    }
}

/// Who made an admin call, as the audit log names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorType {
    Owner,
    OrgKey,
    Operator,
}

impl ActorType {
    /// The stored name (as serde writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            ActorType::Owner => "owner",
            ActorType::OrgKey => "org_key",
            ActorType::Operator => "operator",
        }
    }
}

/// One admin write.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct AuditEvent {
    pub id: String,
    pub org_id: String,
    pub created_at: i64,
    pub actor_type: ActorType,
    pub actor_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub status: u16,
    pub ip: Option<String>,
}

impl AuditEvent {
    pub fn to_json(&self) -> Value {
        let credential = match self.actor_type {
            ActorType::Owner => "owner_token",
            ActorType::OrgKey => "org_key",
            ActorType::Operator => "admin_token",
        };
        json!({"id": self.id, "created_at": rfc3339(self.created_at), "actor": {"type": self.actor_type,
            "id": self.actor_id, "name": self.actor}, "credential": credential, "action": self.action,
            "target": self.target, "status": self.status, "ip": self.ip})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_decode_once_and_unknown_values_fail() {
        let row = json!({"id": "mem_1", "org_id": "org_1", "owner_id": null, "email": "a@b.co", "role": "admin",
            "status": "invited", "invited_by": "own_1", "created_at": 1, "joined_at": null});
        let m: Member = serde_json::from_value(row.clone()).unwrap();
        assert_eq!(m.role, Role::Admin);
        assert!(!m.is_active_owner());
        let mut bad = row.clone();
        bad["role"] = json!("root");
        assert!(serde_json::from_value::<Member>(bad).is_err());
        let mut bad = row;
        bad["status"] = json!("pending");
        assert!(serde_json::from_value::<Member>(bad).is_err());
        let key = json!({"id": "okey_1", "org_id": "org_1", "name": "ci", "prefix": "ask-prod-AbC123", "role": "viewer",
            "environment": "prod", "created_by": "own_1", "created_at": 5, "last_used_at": null, "revoked_at": null});
        let k: OrgKeyRecord = serde_json::from_value(key).unwrap();
        let view = k.to_json();
        assert_eq!(view["role"], "viewer");
        assert!(view.get("key_hash").is_none() && view.get("secret").is_none());
        let event = AuditEvent {
            id: "aud_1".into(),
            org_id: "org_1".into(),
            created_at: 0,
            actor_type: ActorType::OrgKey,
            actor_id: Some("okey_1".into()),
            actor: "ci".into(),
            action: "POST /api/v1/projects".into(),
            target: "/api/v1/projects".into(),
            status: 201,
            ip: None,
        };
        assert_eq!(event.to_json()["credential"], "org_key");
        let stored: AuditEvent =
            serde_json::from_value(serde_json::to_value(&event).unwrap()).unwrap();
        assert_eq!(stored, event);
        for a in [ActorType::Owner, ActorType::OrgKey, ActorType::Operator] {
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
        }
        for m in [MemberStatus::Invited, MemberStatus::Active] {
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
        }
    }
}
