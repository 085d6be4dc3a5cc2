//! D1 repositories, one file per aggregate. Thin: SQL in, typed records out (rows decode into the
//! domain types of `records` once, here), and writes built from one list of (column, value) pairs per
//! record, so the SQL and its bound values can never disagree.

mod apis;
mod consumers;
mod events;
mod jwt_credentials;
mod mtls_credentials;
mod oauth;
mod orgs;
mod plans;
mod projects;
mod usage;

pub use apis::*;
pub use consumers::*;
pub use events::*;
pub use jwt_credentials::*;
pub use mtls_credentials::*;
pub use oauth::*;
pub use orgs::*;
pub use plans::*;
pub use projects::*;
pub use usage::*;

use serde::de::DeserializeOwned;
use serde::Serialize;
use wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{js_sys, D1Database, D1PreparedStatement, Env};

use crate::error::Error;

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
/// A count for an INTEGER column (D1 binds numbers as doubles: exact up to 2^53).
fn count(n: u64) -> JsValue {
    JsValue::from_f64(n as f64)
}
fn opt_text(s: Option<&str>) -> JsValue {
    s.map(JsValue::from_str).unwrap_or(JsValue::NULL)
}
fn opt_count(n: Option<u64>) -> JsValue {
    n.map(count).unwrap_or(JsValue::NULL)
}
fn opt_int(n: Option<i64>) -> JsValue {
    n.map(int).unwrap_or(JsValue::NULL)
}
/// A value stored as JSON text.
fn json_text<T: Serialize>(v: &T) -> Result<JsValue, Error> {
    serde_json::to_string(v)
        .map(|s| JsValue::from_str(&s))
        .map_err(|e| Error::internal(format!("A value could not be stored: {e}.")))
}

/// A list of org ids bound as JSON text for `in_orgs`, or NULL for every org.
fn orgs_filter(orgs: Option<&[String]>) -> Result<JsValue, Error> {
    match orgs {
        None => Ok(JsValue::NULL),
        Some(ids) => json_text(&ids),
    }
}

/// `column` is one of the orgs bound at `?n` by `orgs_filter` (all when NULL).
fn in_orgs(column: &str, n: usize) -> String {
    format!("(?{n} IS NULL OR {column} IN (SELECT value FROM json_each(?{n})))")
}

fn stmt(db: &D1Database, sql: &str, args: &[JsValue]) -> Result<D1PreparedStatement, Error> {
    Ok(db.prepare(sql).bind(args)?)
}

/// Revokes the live credential `id` in `table` (`consumer_jwt_credentials` or
/// `consumer_mtls_credentials`); its consumer, or `None` if there is no such live credential.
async fn revoke_credential(
    db: &D1Database,
    table: &'static str,
    project_id: &str,
    id: &str,
    now: i64,
) -> Result<Option<String>, Error> {
    #[derive(serde::Deserialize)]
    struct Row {
        consumer_id: String,
    }
    let sql = format!(
        "UPDATE {table} SET revoked_at = ?3 WHERE project_id = ?1 AND id = ?2 AND revoked_at IS NULL \
         RETURNING consumer_id"
    );
    let row = stmt(db, &sql, &[text(project_id), text(id), int(now)])?
        .row::<Row>()
        .await?;
    Ok(row.map(|r| r.consumer_id))
}

// Rows decode through their JSON text (one `JSON.stringify`, then serde_json): the decoder the KV
// records and the Durable Object replies already use, rather than a second one per row type.
// A row that does not decode is an error, never a default.

fn decode<T: DeserializeOwned>(value: &JsValue) -> Result<T, Error> {
    let text = js_sys::JSON::stringify(value)
        .map_err(worker::Error::from)?
        .as_string()
        .unwrap_or_default();
    crate::encoding::from_json(&text).map_err(|e| {
        worker::console_error!("d1: a stored row does not decode: {e}");
        Error::internal("Stored data could not be read; it was logged.")
    })
}

/// The rows of a statement's result object (`{results: [...]}`).
fn rows_of<T: DeserializeOwned>(result: &JsValue) -> Result<Vec<T>, Error> {
    let rows =
        js_sys::Reflect::get(result, &JsValue::from_str("results")).map_err(worker::Error::from)?;
    if rows.is_undefined() || rows.is_null() {
        return Ok(Vec::new());
    }
    decode(&rows)
}

/// A read statement's rows, decoded.
trait Rows {
    /// Every row the statement returns.
    async fn rows<T: DeserializeOwned>(&self) -> Result<Vec<T>, Error>;
    /// The first row the statement returns, if any.
    async fn row<T: DeserializeOwned>(&self) -> Result<Option<T>, Error>;
}

impl Rows for D1PreparedStatement {
    async fn rows<T: DeserializeOwned>(&self) -> Result<Vec<T>, Error> {
        let result = JsFuture::from(self.inner().all().map_err(worker::Error::from)?)
            .await
            .map_err(worker::Error::from)?;
        rows_of(&result)
    }

    async fn row<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        let row = JsFuture::from(self.inner().first(None).map_err(worker::Error::from)?)
            .await
            .map_err(worker::Error::from)?;
        if row.is_undefined() || row.is_null() {
            return Ok(None);
        }
        decode(&row).map(Some)
    }
}

/// Reads in one round trip: each statement's result object, for `rows_of`.
async fn batch_read(
    db: &D1Database,
    statements: Vec<D1PreparedStatement>,
) -> Result<Vec<JsValue>, Error> {
    let list: js_sys::Array = statements
        .iter()
        .map(|s| JsValue::from(s.inner()))
        .collect();
    let batch: js_sys::Function = js_sys::Reflect::get(db.as_ref(), &JsValue::from_str("batch"))
        .map_err(worker::Error::from)?
        .dyn_into()
        .map_err(worker::Error::from)?;
    let promise: js_sys::Promise = batch
        .call1(db.as_ref(), &list)
        .map_err(worker::Error::from)?
        .dyn_into()
        .map_err(worker::Error::from)?;
    let results = JsFuture::from(promise).await.map_err(worker::Error::from)?;
    Ok(js_sys::Array::from(&results).to_vec())
}

/// A record's columns and values, in one list: what an insert or update writes.
struct Columns(Vec<(&'static str, JsValue)>);

impl Columns {
    fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|(c, _)| *c).collect()
    }
    fn values(self) -> Vec<JsValue> {
        self.0.into_iter().map(|(_, v)| v).collect()
    }
}

/// `INSERT INTO table (columns…) VALUES (?1…)`.
fn insert_stmt(db: &D1Database, table: &str, cols: Columns) -> Result<D1PreparedStatement, Error> {
    insert_as(db, "INSERT", table, cols)
}

/// `INSERT OR IGNORE …`: a row already stored under the same key is left as it is.
fn insert_or_ignore_stmt(
    db: &D1Database,
    table: &str,
    cols: Columns,
) -> Result<D1PreparedStatement, Error> {
    insert_as(db, "INSERT OR IGNORE", table, cols)
}

fn insert_as(
    db: &D1Database,
    verb: &str,
    table: &str,
    cols: Columns,
) -> Result<D1PreparedStatement, Error> {
    let names = cols.names();
    let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    let sql = format!(
        "{verb} INTO {table} ({}) VALUES ({})",
        names.join(", "),
        marks.join(", ")
    );
    stmt(db, &sql, &cols.values())
}

/// `UPDATE table SET column = ?1, … WHERE key = ?n AND …`: the keys are not rewritten.
fn update_stmt(
    db: &D1Database,
    table: &str,
    cols: Columns,
    keys: &[&str],
) -> Result<D1PreparedStatement, Error> {
    let (key_cols, set_cols): (Vec<_>, Vec<_>) =
        cols.0.into_iter().partition(|(c, _)| keys.contains(c));
    let sets: Vec<String> = set_cols
        .iter()
        .enumerate()
        .map(|(i, (c, _))| format!("{c} = ?{}", i + 1))
        .collect();
    let wheres: Vec<String> = key_cols
        .iter()
        .enumerate()
        .map(|(i, (c, _))| format!("{c} = ?{}", set_cols.len() + i + 1))
        .collect();
    let sql = format!(
        "UPDATE {table} SET {} WHERE {}",
        sets.join(", "),
        wheres.join(" AND ")
    );
    let values: Vec<JsValue> = set_cols
        .into_iter()
        .chain(key_cols)
        .map(|(_, v)| v)
        .collect();
    stmt(db, &sql, &values)
}

/// D1 reports a UNIQUE violation only in its message: the one place that reads it.
fn is_unique_violation(e: &worker::Error) -> bool {
    e.to_string().contains("UNIQUE constraint failed")
}

/// Runs `statements` as one batch; a UNIQUE violation becomes 409 with `conflict` as its detail.
async fn write(
    db: &D1Database,
    statements: Vec<D1PreparedStatement>,
    conflict: impl FnOnce() -> String,
) -> Result<(), Error> {
    match db.batch(statements).await {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(Error::conflict(conflict())),
        Err(e) => Err(e.into()),
    }
}

/// Runs `statements` as one batch (one transaction); how many rows the first one changed.
async fn batch_changes(
    db: &D1Database,
    statements: Vec<D1PreparedStatement>,
) -> Result<u64, Error> {
    let results = db.batch(statements).await?;
    let first = match results.first() {
        Some(r) => r.meta()?.and_then(|m| m.changes),
        None => None,
    };
    Ok(first.unwrap_or(0) as u64)
}

async fn changes(db: &D1Database, sql: &str, args: &[JsValue]) -> Result<u64, Error> {
    let result = stmt(db, sql, args)?.run().await?;
    Ok(result.meta()?.and_then(|m| m.changes).unwrap_or(0) as u64)
}
