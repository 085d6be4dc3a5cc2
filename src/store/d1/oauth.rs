//! OAuth clients and grants in D1.

use worker::D1Database;

use super::{
    changes, insert_or_ignore_stmt, insert_stmt, int, json_text, opt_int, opt_text, stmt, text,
    update_stmt, write, Columns, Rows,
};
use crate::error::Error;
use crate::records::oauth::{OAuthClient, OAuthGrant};

const CLIENT_COLUMNS: &str = "id, project_id, name, type, redirect_uris_json, scopes_json, secret_hash, consumer_id, dynamic, created_at, updated_at";
const GRANT_COLUMNS: &str = "g.id, g.project_id, g.client_id, g.consumer_id, g.grant_type, g.scope, g.resource, g.created_at, g.expires_at, g.revoked_at, c.name AS client_name";

fn client_columns(c: &OAuthClient) -> Result<Columns, Error> {
    Ok(Columns(vec![
        ("id", text(&c.id)),
        ("project_id", text(&c.project_id)),
        ("name", text(&c.name)),
        ("type", text(c.client_type.as_str())),
        ("redirect_uris_json", json_text(&c.redirect_uris)?),
        (
            "scopes_json",
            match &c.scopes {
                Some(s) => json_text(s)?,
                None => wasm_bindgen::JsValue::NULL,
            },
        ),
        ("secret_hash", opt_text(c.secret_hash.as_deref())),
        ("consumer_id", opt_text(c.consumer_id.as_deref())),
        ("dynamic", int(i64::from(c.dynamic))),
        ("created_at", int(c.created_at)),
        ("updated_at", int(c.updated_at)),
    ]))
}

pub async fn create_oauth_client(db: &D1Database, c: &OAuthClient) -> Result<(), Error> {
    let insert = insert_stmt(db, "oauth_clients", client_columns(c)?)?;
    write(db, vec![insert], || {
        format!("A client `{}` exists already.", c.id)
    })
    .await
}

pub async fn update_oauth_client(db: &D1Database, c: &OAuthClient) -> Result<(), Error> {
    let update = update_stmt(
        db,
        "oauth_clients",
        client_columns(c)?,
        &["id", "project_id"],
    )?;
    write(db, vec![update], || {
        format!("Client `{}` could not be saved.", c.id)
    })
    .await
}

pub async fn oauth_client(
    db: &D1Database,
    project_id: &str,
    client_id: &str,
) -> Result<Option<OAuthClient>, Error> {
    stmt(
        db,
        &format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE project_id = ?1 AND id = ?2"),
        &[text(project_id), text(client_id)],
    )?
    .row()
    .await
}

pub async fn list_oauth_clients(
    db: &D1Database,
    project_id: &str,
) -> Result<Vec<OAuthClient>, Error> {
    stmt(
        db,
        &format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE project_id = ?1 ORDER BY created_at, id LIMIT 500"),
        &[text(project_id)],
    )?
    .rows()
    .await
}

/// Deletes a client; whether it existed. Its grants are revoked by the caller first.
pub async fn delete_oauth_client(
    db: &D1Database,
    project_id: &str,
    client_id: &str,
) -> Result<bool, Error> {
    let n = changes(
        db,
        "DELETE FROM oauth_clients WHERE project_id = ?1 AND id = ?2",
        &[text(project_id), text(client_id)],
    )
    .await?;
    Ok(n > 0)
}

fn grant_columns(g: &OAuthGrant) -> Columns {
    Columns(vec![
        ("id", text(&g.id)),
        ("project_id", text(&g.project_id)),
        ("client_id", text(&g.client_id)),
        ("consumer_id", text(&g.consumer_id)),
        ("grant_type", text(&g.grant_type)),
        ("scope", text(&g.scope)),
        ("resource", opt_text(g.resource.as_deref())),
        ("created_at", int(g.created_at)),
        ("expires_at", int(g.expires_at)),
        ("revoked_at", opt_int(g.revoked_at)),
    ])
}

/// Lists a new grant; a row already written for it (revoked by a racing replay) is kept as it is.
pub async fn create_oauth_grant(db: &D1Database, g: &OAuthGrant) -> Result<(), Error> {
    let insert = insert_or_ignore_stmt(db, "oauth_grants", grant_columns(g))?;
    write(db, vec![insert], || {
        format!("Grant `{}` exists already.", g.id)
    })
    .await
}

/// Lists a grant as revoked, whether or not its row was written yet.
pub async fn record_revoked_grant(db: &D1Database, g: &OAuthGrant) -> Result<(), Error> {
    let insert = insert_or_ignore_stmt(db, "oauth_grants", grant_columns(g))?;
    let revoke = stmt(
        db,
        "UPDATE oauth_grants SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        &[text(&g.id), opt_int(g.revoked_at)],
    )?;
    write(db, vec![insert, revoke], || {
        format!("Grant `{}` could not be saved.", g.id)
    })
    .await
}

/// Live grants of the project, newest first, optionally of one consumer and/or one client.
pub async fn list_oauth_grants(
    db: &D1Database,
    project_id: &str,
    consumer_id: Option<&str>,
    client_id: Option<&str>,
    now: i64,
) -> Result<Vec<OAuthGrant>, Error> {
    stmt(
        db,
        &format!(
            "SELECT {GRANT_COLUMNS} FROM oauth_grants g LEFT JOIN oauth_clients c ON c.id = g.client_id \
             WHERE g.project_id = ?1 AND g.revoked_at IS NULL AND g.expires_at > ?4 \
             AND (?2 IS NULL OR g.consumer_id = ?2) AND (?3 IS NULL OR g.client_id = ?3) \
             ORDER BY g.created_at DESC, g.id LIMIT 500"
        ),
        &[text(project_id), opt_text(consumer_id), opt_text(client_id), int(now)],
    )?
    .rows()
    .await
}

pub async fn oauth_grant(
    db: &D1Database,
    project_id: &str,
    id: &str,
) -> Result<Option<OAuthGrant>, Error> {
    stmt(
        db,
        &format!(
            "SELECT {GRANT_COLUMNS} FROM oauth_grants g LEFT JOIN oauth_clients c ON c.id = g.client_id \
             WHERE g.project_id = ?1 AND g.id = ?2"
        ),
        &[text(project_id), text(id)],
    )?
    .row()
    .await
}

/// Marks a grant revoked (idempotent).
pub async fn revoke_oauth_grant(db: &D1Database, id: &str, now: i64) -> Result<(), Error> {
    changes(
        db,
        "UPDATE oauth_grants SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        &[text(id), int(now)],
    )
    .await?;
    Ok(())
}

/// Drops grant rows that ended (expired or revoked) before `before`: the housekeeping purge.
pub async fn purge_oauth_grants(db: &D1Database, before: i64) -> Result<u64, Error> {
    changes(
        db,
        "DELETE FROM oauth_grants WHERE expires_at < ?1 OR revoked_at < ?1",
        &[int(before)],
    )
    .await
}

/// How many clients of the project registered themselves (RFC 7591).
pub async fn dynamic_client_count(db: &D1Database, project_id: &str) -> Result<u64, Error> {
    #[derive(serde::Deserialize)]
    struct Row {
        n: u64,
    }
    let row: Option<Row> = stmt(
        db,
        "SELECT COUNT(*) AS n FROM oauth_clients WHERE project_id = ?1 AND dynamic = 1",
        &[text(project_id)],
    )?
    .row()
    .await?;
    Ok(row.map_or(0, |r| r.n))
}

/// The union of the required scopes of the project's APIs (the metadata's `scopes_supported`).
pub async fn project_required_scopes(
    db: &D1Database,
    project_id: &str,
) -> Result<Vec<String>, Error> {
    #[derive(serde::Deserialize)]
    struct Row {
        scope: String,
    }
    let rows: Vec<Row> = stmt(
        db,
        "SELECT DISTINCT j.value AS scope FROM apis a, json_each(a.oauth_json, '$.required_scopes') j \
         WHERE a.project_id = ?1 ORDER BY 1 LIMIT 200",
        &[text(project_id)],
    )?
    .rows()
    .await?;
    Ok(rows.into_iter().map(|r| r.scope).collect())
}
