//! The auth event log in D1.

use serde::{Deserialize, Serialize};
use worker::D1Database;

use super::{insert_stmt, int, opt_text, stmt, text, write, Columns, Rows};
use crate::error::Error;

/// Sign-ins, failed codes, refreshes, refresh reuse, keys created and revoked, mode switches.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AuthEvent {
    pub id: String,
    pub project_id: String,
    pub api_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub consumer_id: Option<String>,
    pub subject: Option<String>,
    pub ip: Option<String>,
    pub detail: Option<String>,
    pub created_at: i64,
}

pub async fn insert_auth_event(db: &D1Database, e: &AuthEvent) -> Result<(), Error> {
    let cols = Columns(vec![
        ("id", text(&e.id)),
        ("project_id", text(&e.project_id)),
        ("api_id", opt_text(e.api_id.as_deref())),
        ("type", text(&e.kind)),
        ("consumer_id", opt_text(e.consumer_id.as_deref())),
        ("subject", opt_text(e.subject.as_deref())),
        ("ip", opt_text(e.ip.as_deref())),
        ("detail", opt_text(e.detail.as_deref())),
        ("created_at", int(e.created_at)),
    ]);
    let insert = insert_stmt(db, "auth_events", cols)?;
    write(db, vec![insert], || "That event id is taken.".into()).await
}

pub async fn list_auth_events(
    db: &D1Database,
    project_id: &str,
    since: i64,
    kind: Option<&str>,
) -> Result<Vec<AuthEvent>, Error> {
    stmt(db, "SELECT id, project_id, api_id, type, consumer_id, subject, ip, detail, created_at FROM auth_events \
                 WHERE project_id = ?1 AND created_at >= ?2 AND (?3 IS NULL OR type = ?3) ORDER BY created_at DESC, id LIMIT 1000",
        &[text(project_id), int(since), opt_text(kind)])?.rows().await
}

/// Deletes the project's auth events older than `before` (epoch ms); how many went.
pub async fn purge_auth_events(
    db: &D1Database,
    project_id: &str,
    before: i64,
) -> Result<u64, Error> {
    super::changes(
        db,
        "DELETE FROM auth_events WHERE project_id = ?1 AND created_at < ?2",
        &[text(project_id), int(before)],
    )
    .await
}
