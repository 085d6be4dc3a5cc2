//! APIs in D1, and the consumer-key fast path that reads an API, a key and a plan in one batch.

use worker::D1Database;

use super::plans::PLAN_COLUMNS;
use super::{
    count, insert_plan_stmt, insert_stmt, int, json_text, opt_text, stmt, text, update_stmt, write,
    Columns,
};
use crate::error::Error;
use crate::limits::plan::{Plan, PlanRow};
use crate::records::{Api, KeyOwner};

const API_COLUMNS: &str = "a.id, a.project_id, p.slug AS project_slug, a.slug, a.name, a.auth_mode, a.upstream_base_url, \
     a.upstream_key_enc, a.default_model, a.models_json, a.timeout_ms, a.created_at, a.updated_at, a.byo_jwt_json, \
     a.ip_allowlist_json, a.credential_json, a.upstream_policy_json, a.prices_json";

fn columns(a: &Api) -> Result<Columns, Error> {
    Ok(Columns(vec![
        ("id", text(&a.id)),
        ("project_id", text(&a.project_id)),
        ("slug", text(&a.slug)),
        ("name", text(&a.name)),
        ("auth_mode", text(a.mode.as_str())),
        ("upstream_base_url", text(&a.upstream_base_url)),
        ("upstream_key_enc", opt_text(a.upstream_key_enc.as_deref())),
        ("default_model", opt_text(a.default_model.as_deref())),
        ("models_json", json_text(&a.models)?),
        ("timeout_ms", count(u64::from(a.timeout_ms))),
        ("created_at", int(a.created_at)),
        ("updated_at", int(a.updated_at)),
        (
            "byo_jwt_json",
            match &a.byo_jwt {
                Some(c) => json_text(c)?,
                None => wasm_bindgen::JsValue::NULL,
            },
        ),
        ("ip_allowlist_json", json_text(&a.ip_allowlist)?),
        ("credential_json", json_text(&a.credential)?),
        ("upstream_policy_json", json_text(&a.policy)?),
        ("prices_json", json_text(&a.prices)?),
    ]))
}

/// Creates an API together with its default plan (unlimited until the owner sets limits).
pub async fn create_api(db: &D1Database, a: &Api, default_plan: &Plan) -> Result<(), Error> {
    let insert_api = insert_stmt(db, "apis", columns(a)?)?;
    let insert_plan = insert_plan_stmt(db, default_plan, &a.id, a.created_at)?;
    write(db, vec![insert_api, insert_plan], || {
        format!(
            "Project `{}` already has an API `{}`.",
            a.project_slug, a.slug
        )
    })
    .await
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
    let update = update_stmt(db, "apis", columns(a)?, &["id"])?;
    write(db, vec![update], || {
        format!(
            "Project `{}` already has an API `{}`.",
            a.project_slug, a.slug
        )
    })
    .await
}

/// The consumer-key fast path: the API, the live key and the consumer's plan in ONE round trip
/// (a D1 batch), keyed only by what the request carries (slugs and the key's hash).
pub async fn api_key_and_plan(
    db: &D1Database,
    project: &str,
    api: &str,
    key_hash: &str,
) -> Result<(Option<Api>, Option<KeyOwner>, Option<Plan>), Error> {
    let api_stmt = stmt(db, &format!("SELECT {API_COLUMNS} FROM apis a JOIN projects p ON p.id = a.project_id WHERE p.slug = ?1 AND a.slug = ?2"),
        &[text(project), text(api)])?;
    let key_stmt = stmt(
        db,
        "SELECT k.id AS key_id, k.consumer_id, c.status AS consumer_status FROM consumer_keys k \
         JOIN consumers c ON c.id = k.consumer_id JOIN projects p ON p.id = k.project_id \
         WHERE k.key_hash = ?1 AND p.slug = ?2 AND k.revoked_at IS NULL",
        &[text(key_hash), text(project)],
    )?;
    let plan_stmt = stmt(db, &format!(
        "SELECT {PLAN_COLUMNS} FROM plans WHERE api_id = \
           (SELECT a.id FROM apis a JOIN projects p ON p.id = a.project_id WHERE p.slug = ?1 AND a.slug = ?2) \
         AND (is_default = 1 OR id = (SELECT s.plan_id FROM subscriptions s WHERE s.api_id = plans.api_id AND s.consumer_id = \
           (SELECT consumer_id FROM consumer_keys WHERE key_hash = ?3 AND revoked_at IS NULL))) \
         ORDER BY is_default ASC LIMIT 1"), &[text(project), text(api), text(key_hash)])?;
    let results = db.batch(vec![api_stmt, key_stmt, plan_stmt]).await?;
    let mut it = results.into_iter();
    let (Some(a), Some(k), Some(p)) = (it.next(), it.next(), it.next()) else {
        return Err(Error::internal(
            "D1 answered a batch of three with fewer results.",
        ));
    };
    let api = a.results::<Api>()?.into_iter().next();
    let key = k.results::<KeyOwner>()?.into_iter().next();
    let plan = p
        .results::<PlanRow>()?
        .into_iter()
        .next()
        .map(|r| r.to_plan());
    Ok((api, key, plan))
}
