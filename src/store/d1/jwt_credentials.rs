//! Consumers' own JWT credentials in D1: a generated HS256 key (encrypted) or a pasted JWKS.

use serde::{Deserialize, Serialize};
use worker::D1Database;

use super::{insert_stmt, int, opt_text, stmt, text, write, Columns, Rows};
use crate::auth::consumer_jwt::JwtKeyKind;
use crate::error::Error;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JwtCredentialRow {
    pub id: String,
    pub consumer_id: String,
    pub kind: JwtKeyKind,
    pub claim_name: String,
    pub claim_value: String,
    pub secret_enc: Option<String>,
    pub secret_prefix: Option<String>,
    pub jwks_json: Option<String>,
    pub created_at: i64,
}

impl JwtCredentialRow {
    /// The owner's view: never the secret, only its first characters.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "consumer_id": self.consumer_id, "kind": self.kind.as_str(), "claim": self.claim_name, "value": self.claim_value,
            "secret_prefix": self.secret_prefix, "jwks": self.jwks_json.as_deref().and_then(|j| crate::encoding::from_json::<serde_json::Value>(j).ok()),
            "created_at": crate::time::rfc3339(self.created_at),
        })
    }
}

const JWT_CREDENTIAL_COLUMNS: &str = "j.id, j.consumer_id, j.kind, j.claim_name, j.claim_value, j.secret_enc, j.secret_prefix, j.jwks_json, j.created_at";

pub async fn create_jwt_credential(
    db: &D1Database,
    project_id: &str,
    r: &JwtCredentialRow,
) -> Result<(), Error> {
    let cols = Columns(vec![
        ("id", text(&r.id)),
        ("project_id", text(project_id)),
        ("consumer_id", text(&r.consumer_id)),
        ("kind", text(r.kind.as_str())),
        ("claim_name", text(&r.claim_name)),
        ("claim_value", text(&r.claim_value)),
        ("secret_enc", opt_text(r.secret_enc.as_deref())),
        ("secret_prefix", opt_text(r.secret_prefix.as_deref())),
        ("jwks_json", opt_text(r.jwks_json.as_deref())),
        ("created_at", int(r.created_at)),
    ]);
    let insert = insert_stmt(db, "consumer_jwt_credentials", cols)?;
    write(db, vec![insert], || {
        format!(
            "Another consumer's credential already uses {} = {}.",
            r.claim_name, r.claim_value
        )
    })
    .await
}

pub async fn list_jwt_credentials(
    db: &D1Database,
    project_id: &str,
    consumer_id: &str,
) -> Result<Vec<JwtCredentialRow>, Error> {
    stmt(db, &format!("SELECT {JWT_CREDENTIAL_COLUMNS} FROM consumer_jwt_credentials j \
                          WHERE j.project_id = ?1 AND j.consumer_id = ?2 AND j.revoked_at IS NULL ORDER BY j.created_at, j.id"),
        &[text(project_id), text(consumer_id)])?.rows().await
}

/// Revokes a live credential; its consumer, or `None` if there is no such live credential.
pub async fn revoke_jwt_credential(
    db: &D1Database,
    project_id: &str,
    id: &str,
    now: i64,
) -> Result<Option<String>, Error> {
    super::revoke_credential(db, "consumer_jwt_credentials", project_id, id, now).await
}

/// Every live credential of the project: what the hot-path cache holds, so a token's claim finds
/// its credential without D1. (The consumer's standing is its counter's to check.)
pub async fn live_jwt_credentials(
    db: &D1Database,
    project_id: &str,
) -> Result<Vec<JwtCredentialRow>, Error> {
    stmt(db, &format!("SELECT {JWT_CREDENTIAL_COLUMNS} FROM consumer_jwt_credentials j \
                          WHERE j.project_id = ?1 AND j.revoked_at IS NULL ORDER BY j.created_at, j.id"),
        &[text(project_id)])?.rows().await
}
