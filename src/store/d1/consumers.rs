//! Consumers and their keys in D1.

use serde::Deserialize;
use worker::D1Database;

use super::{
    batch_read, changes, insert_stmt, int, opt_text, rows_of, stmt, text, update_stmt, write,
    Columns, Rows,
};
use crate::error::Error;
use crate::limits::standing::Facts;
use crate::records::{Consumer, ConsumerStatus, KeyListing, KeyOwner};

const CONSUMER_COLUMNS: &str = "id, project_id, name, description, kind, status, created_at, email";

fn columns(c: &Consumer) -> Columns {
    Columns(vec![
        ("id", text(&c.id)),
        ("project_id", text(&c.project_id)),
        ("kind", text(c.kind.as_str())),
        ("name", text(&c.name)),
        ("description", opt_text(c.description.as_deref())),
        ("status", text(c.status.as_str())),
        ("created_at", int(c.created_at)),
        ("email", opt_text(c.email.as_deref())),
    ])
}

pub async fn create_consumer(db: &D1Database, c: &Consumer) -> Result<(), Error> {
    let insert = insert_stmt(db, "consumers", columns(c))?;
    write(db, vec![insert], || "That consumer id is taken.".into()).await
}

/// A BYO-JWT user's record, made on its first request; one already stored (perhaps disabled by the
/// owner since) is left as it is.
pub async fn record_jwt_user(db: &D1Database, c: &Consumer) -> Result<(), Error> {
    let insert = super::insert_or_ignore_stmt(db, "consumers", columns(c))?;
    write(db, vec![insert], || "That consumer id is taken.".into()).await
}

pub async fn list_consumers(db: &D1Database, project_id: &str) -> Result<Vec<Consumer>, Error> {
    stmt(db, &format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE project_id = ?1 ORDER BY created_at, id"), &[text(project_id)])?
        .rows().await
}

/// A consumer by id, or `None` (for checks on the request path, where absence is a 401, not a 404).
pub async fn find_consumer(
    db: &D1Database,
    project_id: &str,
    id: &str,
) -> Result<Option<Consumer>, Error> {
    stmt(
        db,
        &format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE project_id = ?1 AND id = ?2"),
        &[text(project_id), text(id)],
    )?
    .row::<Consumer>()
    .await
}

pub async fn consumer(db: &D1Database, project_id: &str, id: &str) -> Result<Consumer, Error> {
    find_consumer(db, project_id, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("There is no consumer `{id}` in this project.")))
}

/// The managed-mode end user with this (normalised) email, if signed in before.
pub async fn user_by_email(
    db: &D1Database,
    project_id: &str,
    email: &str,
) -> Result<Option<Consumer>, Error> {
    stmt(
        db,
        &format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE project_id = ?1 AND email = ?2"),
        &[text(project_id), text(email)],
    )?
    .row::<Consumer>()
    .await
}

pub async fn update_consumer(db: &D1Database, c: &Consumer) -> Result<(), Error> {
    let update = update_stmt(db, "consumers", columns(c), &["project_id", "id"])?;
    write(db, vec![update], || "That consumer conflicts.".into()).await
}

/// A new consumer key: only the SHA-256 of the secret is stored, with a short display prefix.
pub struct NewKeyRow<'a> {
    pub id: &'a str,
    pub project_id: &'a str,
    pub consumer_id: &'a str,
    pub name: &'a str,
    pub prefix: &'a str,
    pub key_hash: &'a str,
    pub created_at: i64,
}

pub async fn create_key(db: &D1Database, k: &NewKeyRow<'_>) -> Result<(), Error> {
    let cols = Columns(vec![
        ("id", text(k.id)),
        ("project_id", text(k.project_id)),
        ("consumer_id", text(k.consumer_id)),
        ("name", text(k.name)),
        ("prefix", text(k.prefix)),
        ("key_hash", text(k.key_hash)),
        ("created_at", int(k.created_at)),
    ]);
    let insert = insert_stmt(db, "consumer_keys", cols)?;
    write(db, vec![insert], || {
        "A key with that id or hash already exists; try again.".into()
    })
    .await
}

pub async fn list_keys(db: &D1Database, project_id: &str) -> Result<Vec<KeyListing>, Error> {
    stmt(
        db,
        "SELECT id, name, prefix, consumer_id, created_at, last_used_at FROM consumer_keys \
         WHERE project_id = ?1 AND revoked_at IS NULL ORDER BY created_at, id",
        &[text(project_id)],
    )?
    .rows()
    .await
}

/// A key just revoked: what the caches and the consumer's counters are told.
#[derive(Debug, Deserialize)]
pub struct RevokedKey {
    pub key_hash: String,
    pub consumer_id: String,
}

/// Revokes a live key; `None` if there is no such live key.
pub async fn revoke_key(
    db: &D1Database,
    project_id: &str,
    id: &str,
    now: i64,
) -> Result<Option<RevokedKey>, Error> {
    stmt(db, "UPDATE consumer_keys SET revoked_at = ?3 WHERE project_id = ?1 AND id = ?2 AND revoked_at IS NULL \
                 RETURNING key_hash, consumer_id",
        &[text(project_id), text(id), int(now)])?.row::<RevokedKey>().await
}

const KEY_OWNER: &str =
    "SELECT k.id AS key_id, k.consumer_id, c.status AS consumer_status FROM consumer_keys k \
     JOIN consumers c ON c.id = k.consumer_id";

/// Finds a live (unrevoked) key of the project by its hash. Read from the primary on every request,
/// so a revoked key fails on the very next request.
pub async fn key_by_hash(
    db: &D1Database,
    project_id: &str,
    key_hash: &str,
) -> Result<Option<KeyOwner>, Error> {
    stmt(
        db,
        &format!(
            "{KEY_OWNER} WHERE k.key_hash = ?1 AND k.project_id = ?2 AND k.revoked_at IS NULL"
        ),
        &[text(key_hash), text(project_id)],
    )?
    .row::<KeyOwner>()
    .await
}

/// Whether the project has a live custom key (one whose prefix is not a generated key's).
pub async fn has_custom_keys(db: &D1Database, project_id: &str) -> Result<bool, Error> {
    let row: Option<IdRow> = stmt(
        db,
        "SELECT id FROM consumer_keys WHERE project_id = ?1 AND revoked_at IS NULL AND prefix NOT LIKE 'ask\\_live\\_%' ESCAPE '\\' LIMIT 1",
        &[text(project_id)],
    )?
    .row()
    .await?;
    Ok(row.is_some())
}

/// Records use of a key at most once a minute, so hot keys do not write on every request.
pub async fn touch_key(db: &D1Database, key_id: &str, now: i64) -> Result<(), Error> {
    changes(db, "UPDATE consumer_keys SET last_used_at = ?2 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?3)",
        &[text(key_id), int(now), int(now - 60_000)]).await?;
    Ok(())
}

#[derive(Deserialize)]
struct IdRow {
    id: String,
}

#[derive(Deserialize)]
struct StatusRow {
    status: ConsumerStatus,
}

#[derive(Deserialize)]
struct PlanIdRow {
    plan_id: String,
}

/// What a consumer's counter needs to know the first time it runs (one D1 batch): whether the
/// consumer is disabled, its revoked keys and JWT credentials, and its subscription on the API. A
/// consumer with no row (an owner-JWT user) is enabled.
pub async fn counter_facts(
    db: &D1Database,
    api_id: &str,
    consumer_id: &str,
) -> Result<Facts, Error> {
    let status = stmt(
        db,
        "SELECT status FROM consumers WHERE id = ?1",
        &[text(consumer_id)],
    )?;
    let keys = stmt(db, "SELECT id FROM consumer_keys WHERE consumer_id = ?1 AND revoked_at IS NOT NULL \
                         UNION ALL SELECT id FROM consumer_jwt_credentials WHERE consumer_id = ?1 AND revoked_at IS NOT NULL \
                         UNION ALL SELECT id FROM consumer_mtls_credentials WHERE consumer_id = ?1 AND revoked_at IS NOT NULL",
        &[text(consumer_id)])?;
    let plan = stmt(
        db,
        "SELECT plan_id FROM subscriptions WHERE api_id = ?1 AND consumer_id = ?2",
        &[text(api_id), text(consumer_id)],
    )?;
    let results = batch_read(db, vec![status, keys, plan]).await?;
    let [s, k, p] = results.as_slice() else {
        return Err(Error::internal(
            "D1 answered a batch of three with another count.",
        ));
    };
    let disabled = rows_of::<StatusRow>(s)?
        .first()
        .is_some_and(|r| r.status == ConsumerStatus::Disabled);
    Ok(Facts {
        disabled,
        revoked_keys: rows_of::<IdRow>(k)?.into_iter().map(|r| r.id).collect(),
        plan_id: rows_of::<PlanIdRow>(p)?
            .into_iter()
            .next()
            .map(|r| r.plan_id),
    })
}
