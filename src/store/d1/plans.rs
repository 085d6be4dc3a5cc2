//! Plans and subscriptions in D1.

use worker::{D1Database, D1PreparedStatement};

use super::{
    changes, count, insert_stmt, int, json_text, opt_count, stmt, text, update_stmt, write,
    Columns, Rows,
};
use crate::error::Error;
use crate::limits::plan::{Plan, PlanRow};

pub(super) const PLAN_COLUMNS: &str = "id, api_id, name, requests_per_minute, requests_per_day, tokens_per_day, tokens_per_month, \
     max_tokens_per_request, max_concurrent_streams, models_json, is_default, created_at, updated_at, \
     spend_per_day_micro, spend_per_month_micro";

/// A plan's columns, but `created_at` (set once, by `insert_plan_stmt`).
fn columns(p: &Plan, api_id: &str, now: i64) -> Result<Columns, Error> {
    let l = &p.limits;
    Ok(Columns(vec![
        ("id", text(&p.id)),
        ("api_id", text(api_id)),
        ("name", text(&p.name)),
        ("requests_per_minute", opt_count(l.requests_per_minute)),
        ("requests_per_day", opt_count(l.requests_per_day)),
        ("tokens_per_day", opt_count(l.tokens_per_day)),
        ("tokens_per_month", opt_count(l.tokens_per_month)),
        (
            "max_tokens_per_request",
            opt_count(l.max_tokens_per_request),
        ),
        (
            "max_concurrent_streams",
            opt_count(l.max_concurrent_streams),
        ),
        ("spend_per_day_micro", opt_count(l.spend_per_day_micro)),
        ("spend_per_month_micro", opt_count(l.spend_per_month_micro)),
        (
            "models_json",
            match &p.models {
                Some(m) => json_text(m)?,
                None => wasm_bindgen::JsValue::NULL,
            },
        ),
        ("is_default", count(u64::from(p.is_default))),
        ("updated_at", int(now)),
    ]))
}

/// The statement that inserts a plan (batched with the API it belongs to, or run alone).
pub fn insert_plan_stmt(
    db: &D1Database,
    p: &Plan,
    api_id: &str,
    now: i64,
) -> Result<D1PreparedStatement, Error> {
    let mut cols = columns(p, api_id, now)?;
    cols.0.push(("created_at", int(now)));
    insert_stmt(db, "plans", cols)
}

fn clear_default_stmt(
    db: &D1Database,
    api_id: &str,
    keep: &str,
) -> Result<D1PreparedStatement, Error> {
    stmt(
        db,
        "UPDATE plans SET is_default = 0 WHERE api_id = ?1 AND id <> ?2 AND is_default = 1",
        &[text(api_id), text(keep)],
    )
}

/// Writes a plan (a new one, or changes); a plan becoming the default takes over in the same batch.
async fn save_plan(
    db: &D1Database,
    p: &Plan,
    api_id: &str,
    statement: D1PreparedStatement,
) -> Result<(), Error> {
    let mut batch = Vec::new();
    if p.is_default {
        batch.push(clear_default_stmt(db, api_id, &p.id)?);
    }
    batch.push(statement);
    write(db, batch, || {
        format!("This API already has a plan named `{}`.", p.name)
    })
    .await
}

pub async fn create_plan(db: &D1Database, p: &Plan, api_id: &str, now: i64) -> Result<(), Error> {
    save_plan(db, p, api_id, insert_plan_stmt(db, p, api_id, now)?).await
}

pub async fn update_plan(db: &D1Database, p: &Plan, api_id: &str, now: i64) -> Result<(), Error> {
    let update = update_stmt(db, "plans", columns(p, api_id, now)?, &["id", "api_id"])?;
    save_plan(db, p, api_id, update).await
}

pub async fn list_plans(db: &D1Database, api_id: &str) -> Result<Vec<PlanRow>, Error> {
    stmt(
        db,
        &format!("SELECT {PLAN_COLUMNS} FROM plans WHERE api_id = ?1 ORDER BY created_at, id"),
        &[text(api_id)],
    )?
    .rows()
    .await
}

/// A plan of the API by id or by name; the id wins (a plan named like another's id predates the
/// rule that refuses such names).
pub async fn plan(db: &D1Database, api_id: &str, id_or_name: &str) -> Result<PlanRow, Error> {
    stmt(
        db,
        &format!("SELECT {PLAN_COLUMNS} FROM plans WHERE api_id = ?1 AND (id = ?2 OR name = ?2) ORDER BY id = ?2 DESC LIMIT 1"),
        &[text(api_id), text(id_or_name)],
    )?
    .row::<PlanRow>()
    .await?
    .ok_or_else(|| Error::not_found(format!("This API has no plan `{id_or_name}`.")))
}

pub async fn subscribe(
    db: &D1Database,
    api_id: &str,
    consumer_id: &str,
    plan_id: &str,
    now: i64,
) -> Result<(), Error> {
    changes(db, "INSERT INTO subscriptions (api_id, consumer_id, plan_id, updated_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (api_id, consumer_id) DO UPDATE SET plan_id = excluded.plan_id, updated_at = excluded.updated_at",
        &[text(api_id), text(consumer_id), text(plan_id), int(now)]).await?;
    Ok(())
}
