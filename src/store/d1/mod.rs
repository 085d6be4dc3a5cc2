//! D1 repositories, one file per aggregate. Thin: SQL in, typed records out (rows decode into the
//! domain types of `records` once, here), and writes built from one list of (column, value) pairs per
//! record, so the SQL and its bound values can never disagree.

mod apis;
mod consumers;
mod events;
mod jwt_credentials;
mod plans;
mod projects;
mod usage;

pub use apis::*;
pub use consumers::*;
pub use events::*;
pub use jwt_credentials::*;
pub use plans::*;
pub use projects::*;
pub use usage::*;

use serde::Serialize;
use wasm_bindgen::JsValue;
use worker::{D1Database, D1PreparedStatement, Env};

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

fn stmt(db: &D1Database, sql: &str, args: &[JsValue]) -> Result<D1PreparedStatement, Error> {
    Ok(db.prepare(sql).bind(args)?)
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

async fn changes(db: &D1Database, sql: &str, args: &[JsValue]) -> Result<u64, Error> {
    let result = stmt(db, sql, args)?.run().await?;
    Ok(result.meta()?.and_then(|m| m.changes).unwrap_or(0) as u64)
}
