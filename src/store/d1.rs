//! D1 repositories for projects, APIs, consumers and consumer keys. Thin: SQL in, records out.

use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::{D1Database, D1PreparedStatement, Env};

use crate::error::Error;
use crate::model::{Api, Consumer, KeyListing, Project};

pub fn db(env: &Env) -> Result<D1Database, Error> {
    env.d1("DB")
        .map_err(|_| Error::misconfigured("The D1 binding `DB` is missing from wrangler.toml."))
}

fn text(s: &str) -> JsValue {
    JsValue::from_str(s)
}
fn int(n: i64) -> JsValue {
    JsValue::from_f64(n as f64)
}
fn opt_text(s: Option<&str>) -> JsValue {
    s.map(JsValue::from_str).unwrap_or(JsValue::NULL)
}

fn stmt(db: &D1Database, sql: &str, args: &[JsValue]) -> Result<D1PreparedStatement, Error> {
    Ok(db.prepare(sql).bind(args)?)
}

/// Runs an insert; a UNIQUE violation becomes 409 with `conflict` as its detail.
async fn insert(
    db: &D1Database,
    sql: &str,
    args: &[JsValue],
    conflict: String,
) -> Result<(), Error> {
    match stmt(db, sql, args)?.run().await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("UNIQUE constraint failed") => {
            Err(Error::conflict(conflict))
        }
        Err(e) => Err(e.into()),
    }
}

async fn changes(db: &D1Database, sql: &str, args: &[JsValue]) -> Result<u64, Error> {
    let result = stmt(db, sql, args)?.run().await?;
    Ok(result.meta()?.and_then(|m| m.changes).unwrap_or(0) as u64)
}

// ---- projects

pub async fn create_project(db: &D1Database, p: &Project) -> Result<(), Error> {
    insert(
        db,
        "INSERT INTO projects (id, slug, name, created_at) VALUES (?1, ?2, ?3, ?4)",
        &[text(&p.id), text(&p.slug), text(&p.name), int(p.created_at)],
        format!("A project with slug `{}` already exists.", p.slug),
    )
    .await
}

pub async fn list_projects(db: &D1Database) -> Result<Vec<Project>, Error> {
    Ok(db
        .prepare("SELECT id, slug, name, created_at FROM projects ORDER BY created_at, id")
        .all()
        .await?
        .results()?)
}

pub async fn project_by_slug(db: &D1Database, slug: &str) -> Result<Project, Error> {
    stmt(
        db,
        "SELECT id, slug, name, created_at FROM projects WHERE slug = ?1",
        &[text(slug)],
    )?
    .first::<Project>(None)
    .await?
    .ok_or_else(|| Error::not_found(format!("There is no project `{slug}`.")))
}

// ---- apis

const API_COLUMNS: &str = "a.id, a.project_id, p.slug AS project_slug, a.slug, a.name, a.auth_mode, a.upstream_base_url, \
     a.upstream_key_enc, a.default_model, a.models_json, a.timeout_ms, a.created_at, a.updated_at";

pub async fn create_api(db: &D1Database, a: &Api) -> Result<(), Error> {
    insert(db,
        "INSERT INTO apis (id, project_id, slug, name, auth_mode, upstream_base_url, upstream_key_enc, default_model, \
         models_json, timeout_ms, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        &[text(&a.id), text(&a.project_id), text(&a.slug), text(&a.name), text(&a.auth_mode), text(&a.upstream_base_url),
          opt_text(a.upstream_key_enc.as_deref()), opt_text(a.default_model.as_deref()), text(&a.models_json),
          int(a.timeout_ms), int(a.created_at), int(a.updated_at)],
        format!("Project `{}` already has an API `{}`.", a.project_slug, a.slug)).await
}

pub async fn api_by_id(db: &D1Database, id: &str) -> Result<Api, Error> {
    stmt(db, &format!("SELECT {API_COLUMNS} FROM apis a JOIN projects p ON p.id = a.project_id WHERE a.id = ?1"), &[text(id)])?
        .first::<Api>(None).await?
        .ok_or_else(|| Error::not_found(format!("There is no API with id `{id}`.")))
}

pub async fn api_by_slugs(db: &D1Database, project: &str, api: &str) -> Result<Api, Error> {
    stmt(db, &format!("SELECT {API_COLUMNS} FROM apis a JOIN projects p ON p.id = a.project_id WHERE p.slug = ?1 AND a.slug = ?2"),
        &[text(project), text(api)])?
        .first::<Api>(None).await?
        .ok_or_else(|| Error::not_found(format!("There is no API `{api}` in project `{project}`.")))
}

pub async fn list_apis(db: &D1Database, project: Option<&str>) -> Result<Vec<Api>, Error> {
    let sql = format!(
        "SELECT {API_COLUMNS} FROM apis a JOIN projects p ON p.id = a.project_id \
                       WHERE (?1 IS NULL OR p.slug = ?1) ORDER BY a.created_at, a.id"
    );
    Ok(stmt(db, &sql, &[opt_text(project)])?
        .all()
        .await?
        .results()?)
}

pub async fn update_api(db: &D1Database, a: &Api) -> Result<(), Error> {
    changes(db,
        "UPDATE apis SET name = ?2, auth_mode = ?3, upstream_base_url = ?4, upstream_key_enc = ?5, default_model = ?6, \
         models_json = ?7, timeout_ms = ?8, updated_at = ?9 WHERE id = ?1",
        &[text(&a.id), text(&a.name), text(&a.auth_mode), text(&a.upstream_base_url), opt_text(a.upstream_key_enc.as_deref()),
          opt_text(a.default_model.as_deref()), text(&a.models_json), int(a.timeout_ms), int(a.updated_at)]).await?;
    Ok(())
}

// ---- consumers

const CONSUMER_COLUMNS: &str = "id, project_id, name, description, kind, status, created_at";

pub async fn create_consumer(db: &D1Database, c: &Consumer) -> Result<(), Error> {
    insert(db, "INSERT INTO consumers (id, project_id, kind, name, description, status, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        &[text(&c.id), text(&c.project_id), text(&c.kind), text(&c.name), opt_text(c.description.as_deref()), text(&c.status), int(c.created_at)],
        "That consumer id is taken.".into()).await
}

pub async fn list_consumers(db: &D1Database, project_id: &str) -> Result<Vec<Consumer>, Error> {
    Ok(stmt(db, &format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE project_id = ?1 ORDER BY created_at, id"), &[text(project_id)])?
        .all().await?.results()?)
}

pub async fn consumer(db: &D1Database, project_id: &str, id: &str) -> Result<Consumer, Error> {
    stmt(
        db,
        &format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE project_id = ?1 AND id = ?2"),
        &[text(project_id), text(id)],
    )?
    .first::<Consumer>(None)
    .await?
    .ok_or_else(|| Error::not_found(format!("There is no consumer `{id}` in this project.")))
}

pub async fn update_consumer(db: &D1Database, c: &Consumer) -> Result<(), Error> {
    changes(db, "UPDATE consumers SET name = ?3, description = ?4, status = ?5 WHERE project_id = ?1 AND id = ?2",
        &[text(&c.project_id), text(&c.id), text(&c.name), opt_text(c.description.as_deref()), text(&c.status)]).await?;
    Ok(())
}

// ---- consumer keys

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
    insert(db,
        "INSERT INTO consumer_keys (id, project_id, consumer_id, name, prefix, key_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        &[text(k.id), text(k.project_id), text(k.consumer_id), text(k.name), text(k.prefix), text(k.key_hash), int(k.created_at)],
        "A key with that id or hash already exists; try again.".into()).await
}

pub async fn list_keys(db: &D1Database, project_id: &str) -> Result<Vec<KeyListing>, Error> {
    Ok(stmt(
        db,
        "SELECT id, name, prefix, consumer_id, created_at, last_used_at FROM consumer_keys \
         WHERE project_id = ?1 AND revoked_at IS NULL ORDER BY created_at, id",
        &[text(project_id)],
    )?
    .all()
    .await?
    .results()?)
}

/// Revokes a live key; `false` if there is no such live key.
pub async fn revoke_key(
    db: &D1Database,
    project_id: &str,
    id: &str,
    now: i64,
) -> Result<bool, Error> {
    Ok(changes(db, "UPDATE consumer_keys SET revoked_at = ?3 WHERE project_id = ?1 AND id = ?2 AND revoked_at IS NULL",
        &[text(project_id), text(id), int(now)]).await? == 1)
}

/// What a live key proves: which consumer is calling, and whether the owner let it.
#[derive(Debug, Deserialize)]
pub struct KeyMatch {
    pub key_id: String,
    pub consumer_id: String,
    pub consumer_status: String,
}

/// Finds a live (unrevoked) key of the project by its hash. Read from the primary on every request,
/// so a revoked key fails on the very next request.
pub async fn key_by_hash(
    db: &D1Database,
    project_id: &str,
    key_hash: &str,
) -> Result<Option<KeyMatch>, Error> {
    Ok(stmt(
        db,
        "SELECT k.id AS key_id, k.consumer_id, c.status AS consumer_status FROM consumer_keys k \
         JOIN consumers c ON c.id = k.consumer_id \
         WHERE k.key_hash = ?1 AND k.project_id = ?2 AND k.revoked_at IS NULL",
        &[text(key_hash), text(project_id)],
    )?
    .first::<KeyMatch>(None)
    .await?)
}

/// Records use of a key at most once a minute, so hot keys do not write on every request.
pub async fn touch_key(db: &D1Database, key_id: &str, now: i64) -> Result<(), Error> {
    changes(db, "UPDATE consumer_keys SET last_used_at = ?2 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?3)",
        &[text(key_id), int(now), int(now - 60_000)]).await?;
    Ok(())
}
