//! Consumers' client certificates (mTLS credentials) in D1: a fingerprint, or an issuer and subject DN.

use worker::D1Database;

use super::{insert_stmt, int, opt_text, stmt, text, write, Columns, Rows};
use crate::auth::mtls::MtlsCredential;
use crate::error::Error;

const MTLS_CREDENTIAL_COLUMNS: &str =
    "id, consumer_id, fingerprint_sha256, issuer_dn, subject_dn, created_at";

/// The owner's view of a credential.
pub fn mtls_credential_json(c: &MtlsCredential) -> serde_json::Value {
    serde_json::json!({
        "id": c.id, "consumer_id": c.consumer_id, "fingerprint_sha256": c.fingerprint_sha256,
        "issuer_dn": c.issuer_dn, "subject_dn": c.subject_dn, "created_at": crate::time::rfc3339(c.created_at),
    })
}

/// Stores a new credential; 409 when a live one of the project already names the certificate.
pub async fn create_mtls_credential(
    db: &D1Database,
    project_id: &str,
    c: &MtlsCredential,
) -> Result<(), Error> {
    let cols = Columns(vec![
        ("id", text(&c.id)),
        ("project_id", text(project_id)),
        ("consumer_id", text(&c.consumer_id)),
        (
            "fingerprint_sha256",
            opt_text(c.fingerprint_sha256.as_deref()),
        ),
        ("issuer_dn", opt_text(c.issuer_dn.as_deref())),
        ("subject_dn", opt_text(c.subject_dn.as_deref())),
        ("created_at", int(c.created_at)),
    ]);
    let insert = insert_stmt(db, "consumer_mtls_credentials", cols)?;
    write(db, vec![insert], || {
        "A live mTLS credential of this project already names this certificate.".to_string()
    })
    .await
}

pub async fn list_mtls_credentials(
    db: &D1Database,
    project_id: &str,
    consumer_id: &str,
) -> Result<Vec<MtlsCredential>, Error> {
    stmt(db, &format!("SELECT {MTLS_CREDENTIAL_COLUMNS} FROM consumer_mtls_credentials \
                          WHERE project_id = ?1 AND consumer_id = ?2 AND revoked_at IS NULL ORDER BY created_at, id"),
        &[text(project_id), text(consumer_id)])?.rows().await
}

/// Revokes a live credential; its consumer, or `None` if there is no such live credential.
pub async fn revoke_mtls_credential(
    db: &D1Database,
    project_id: &str,
    id: &str,
    now: i64,
) -> Result<Option<String>, Error> {
    super::revoke_credential(db, "consumer_mtls_credentials", project_id, id, now).await
}

/// Every live credential of the project: what the hot-path cache holds, so a certificate finds its
/// consumer without D1. (The consumer's standing is its counter's to check.)
pub async fn live_mtls_credentials(
    db: &D1Database,
    project_id: &str,
) -> Result<Vec<MtlsCredential>, Error> {
    stmt(
        db,
        &format!(
            "SELECT {MTLS_CREDENTIAL_COLUMNS} FROM consumer_mtls_credentials \
                          WHERE project_id = ?1 AND revoked_at IS NULL ORDER BY created_at, id"
        ),
        &[text(project_id)],
    )?
    .rows()
    .await
}
