//! APIs in D1, and the consumer-key fast path that reads an API, a key and a plan in one batch.

use worker::D1Database;

use super::{
    count, insert_plan_stmt, insert_stmt, int, json_text, opt_text, stmt, text, update_stmt, write,
    Columns, Rows,
};
use crate::error::Error;
use crate::limits::plan::Plan;
use crate::records::Api;

const API_COLUMNS: &str = "a.id, a.project_id, p.slug AS project_slug, a.slug, a.name, a.auth_mode, a.upstream_base_url, \
     a.upstream_key_enc, a.default_model, a.models_json, a.timeout_ms, a.created_at, a.updated_at, a.byo_jwt_json, \
     a.ip_allowlist_json, a.credential_json, a.upstream_policy_json, a.prices_json, p.org_id AS org_id, a.upstream_route_json, a.mtls, a.oauth_json";

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
        (
            "upstream_route_json",
            match &a.route {
                Some(r) => json_text(r)?,
                None => wasm_bindgen::JsValue::NULL,
            },
        ),
        ("mtls", text(a.mtls.as_str())),
        ("oauth_json", json_text(&a.oauth)?),
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
        .row::<Api>().await?
        .ok_or_else(|| no_api(id))
}

/// The answer for an API that does not exist, or that the caller may not see.
pub fn no_api(id: &str) -> Error {
    Error::not_found(format!("There is no API with id `{id}`."))
}

pub async fn api_by_slugs(db: &D1Database, project: &str, api: &str) -> Result<Api, Error> {
    stmt(db, &format!("SELECT {API_COLUMNS} FROM apis a JOIN projects p ON p.id = a.project_id WHERE p.slug = ?1 AND a.slug = ?2"),
        &[text(project), text(api)])?
        .row::<Api>().await?
        .ok_or_else(|| Error::not_found(format!("There is no API `{api}` in project `{project}`.")))
}

/// The APIs of one project (by slug) or all, of the orgs in `orgs` (`None`: every org).
pub async fn list_apis(
    db: &D1Database,
    project: Option<&str>,
    orgs: Option<&[String]>,
) -> Result<Vec<Api>, Error> {
    let sql = format!(
        "SELECT {API_COLUMNS} FROM apis a JOIN projects p ON p.id = a.project_id \
                       WHERE (?1 IS NULL OR p.slug = ?1) AND {} ORDER BY a.created_at, a.id",
        super::in_orgs("p.org_id", 2)
    );
    stmt(db, &sql, &[opt_text(project), super::orgs_filter(orgs)?])?
        .rows()
        .await
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

/// Whether any of the project's APIs signs its users in with Sluice's own OTP (`managed`).
pub async fn has_managed_api(db: &D1Database, project_id: &str) -> Result<bool, Error> {
    #[derive(serde::Deserialize)]
    struct Row {
        #[allow(dead_code)]
        id: String,
    }
    let rows: Vec<Row> = stmt(
        db,
        "SELECT id FROM apis WHERE project_id = ?1 AND auth_mode = 'managed' LIMIT 1",
        &[text(project_id)],
    )?
    .rows()
    .await?;
    Ok(!rows.is_empty())
}

/// The ids of the project's APIs (where a consumer's counters may live).
pub async fn api_ids(db: &D1Database, project_id: &str) -> Result<Vec<String>, Error> {
    #[derive(serde::Deserialize)]
    struct Row {
        id: String,
    }
    let rows: Vec<Row> = stmt(
        db,
        "SELECT id FROM apis WHERE project_id = ?1",
        &[text(project_id)],
    )?
    .rows()
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}
