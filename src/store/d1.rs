//! D1 repositories for projects, APIs, consumers and consumer keys. Thin: SQL in, records out.

use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::{D1Database, D1PreparedStatement, Env};

use crate::error::Error;
use crate::limits::plan::{Plan, PlanRow};
use crate::model::{Api, Consumer, KeyListing, Project};
use crate::usage::{Ended, UsageQuery, UsageRecord};

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

const PROJECT_COLUMNS: &str = "id, slug, name, created_at, access_token_ttl_s, email_from, email_subject, allowed_origins_json, \
     signing_generation, previous_key_retired_at";

pub async fn list_projects(db: &D1Database) -> Result<Vec<Project>, Error> {
    Ok(db
        .prepare(format!(
            "SELECT {PROJECT_COLUMNS} FROM projects ORDER BY created_at, id"
        ))
        .all()
        .await?
        .results()?)
}

pub async fn project_by_slug(db: &D1Database, slug: &str) -> Result<Project, Error> {
    stmt(
        db,
        &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE slug = ?1"),
        &[text(slug)],
    )?
    .first::<Project>(None)
    .await?
    .ok_or_else(|| Error::not_found(format!("There is no project `{slug}`.")))
}

pub async fn update_project(db: &D1Database, p: &Project) -> Result<(), Error> {
    changes(db, "UPDATE projects SET name = ?2, access_token_ttl_s = ?3, email_from = ?4, email_subject = ?5, \
                 allowed_origins_json = ?6, signing_generation = ?7, previous_key_retired_at = ?8 WHERE id = ?1",
        &[text(&p.id), text(&p.name), int(p.access_token_ttl_s), opt_text(p.email_from.as_deref()), opt_text(p.email_subject.as_deref()),
          text(&p.allowed_origins_json), int(p.signing_generation), p.previous_key_retired_at.map(int).unwrap_or(JsValue::NULL)]).await?;
    Ok(())
}

// ---- apis

const API_COLUMNS: &str = "a.id, a.project_id, p.slug AS project_slug, a.slug, a.name, a.auth_mode, a.upstream_base_url, \
     a.upstream_key_enc, a.default_model, a.models_json, a.timeout_ms, a.created_at, a.updated_at, a.byo_jwt_json, \
     a.ip_allowlist_json, a.credential_json, a.upstream_policy_json, a.prices_json";

/// Creates an API together with its default plan (unlimited until the owner sets limits).
pub async fn create_api(db: &D1Database, a: &Api, default_plan: &Plan) -> Result<(), Error> {
    let insert_api = stmt(db,
        "INSERT INTO apis (id, project_id, slug, name, auth_mode, upstream_base_url, upstream_key_enc, default_model, \
         models_json, timeout_ms, created_at, updated_at, upstream_policy_json, prices_json) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        &[text(&a.id), text(&a.project_id), text(&a.slug), text(&a.name), text(&a.auth_mode), text(&a.upstream_base_url),
          opt_text(a.upstream_key_enc.as_deref()), opt_text(a.default_model.as_deref()), text(&a.models_json),
          int(a.timeout_ms), int(a.created_at), int(a.updated_at), text(&a.upstream_policy_json), text(&a.prices_json)])?;
    let insert_plan = insert_plan_stmt(db, default_plan, &a.id, a.created_at)?;
    db.batch(vec![insert_api, insert_plan])
        .await
        .map(|_| ())
        .map_err(|e| {
            conflict_or(
                e,
                format!(
                    "Project `{}` already has an API `{}`.",
                    a.project_slug, a.slug
                ),
            )
        })
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
         models_json = ?7, timeout_ms = ?8, updated_at = ?9, byo_jwt_json = ?10, ip_allowlist_json = ?11, credential_json = ?12, \
         upstream_policy_json = ?13, prices_json = ?14 WHERE id = ?1",
        &[text(&a.id), text(&a.name), text(&a.auth_mode), text(&a.upstream_base_url), opt_text(a.upstream_key_enc.as_deref()),
          opt_text(a.default_model.as_deref()), text(&a.models_json), int(a.timeout_ms), int(a.updated_at),
          opt_text(a.byo_jwt_json.as_deref()), text(&a.ip_allowlist_json), text(&a.credential_json),
          text(&a.upstream_policy_json), text(&a.prices_json)]).await?;
    Ok(())
}

// ---- consumers

const CONSUMER_COLUMNS: &str = "id, project_id, name, description, kind, status, created_at, email";

pub async fn create_consumer(db: &D1Database, c: &Consumer) -> Result<(), Error> {
    insert(db, "INSERT INTO consumers (id, project_id, kind, name, description, status, created_at, email) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        &[text(&c.id), text(&c.project_id), text(&c.kind), text(&c.name), opt_text(c.description.as_deref()), text(&c.status), int(c.created_at),
          opt_text(c.email.as_deref())],
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

// ---- plans and subscriptions

const PLAN_COLUMNS: &str = "id, api_id, name, requests_per_minute, requests_per_day, tokens_per_day, tokens_per_month, \
     max_tokens_per_request, max_concurrent_streams, models_json, is_default, created_at, updated_at, \
     spend_per_day_micro, spend_per_month_micro";

fn opt_int(n: Option<u64>) -> JsValue {
    n.map(|v| JsValue::from_f64(v as f64))
        .unwrap_or(JsValue::NULL)
}

fn plan_args(p: &Plan, api_id: &str, now: i64) -> Vec<JsValue> {
    let l = &p.limits;
    vec![
        text(&p.id),
        text(api_id),
        text(&p.name),
        opt_int(l.requests_per_minute),
        opt_int(l.requests_per_day),
        opt_int(l.tokens_per_day),
        opt_int(l.tokens_per_month),
        opt_int(l.max_tokens_per_request),
        opt_int(l.max_concurrent_streams),
        p.models
            .as_ref()
            .map(|m| JsValue::from_str(&serde_json::to_string(m).unwrap_or_default()))
            .unwrap_or(JsValue::NULL),
        int(i64::from(p.is_default)),
        int(now),
        opt_int(l.spend_per_day_micro),
        opt_int(l.spend_per_month_micro),
    ]
}

/// The statement that inserts a plan (batched with the API it belongs to, or run alone).
pub fn insert_plan_stmt(
    db: &D1Database,
    p: &Plan,
    api_id: &str,
    now: i64,
) -> Result<D1PreparedStatement, Error> {
    stmt(db, &format!("INSERT INTO plans ({PLAN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?13, ?14)"), &plan_args(p, api_id, now))
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

fn conflict_or(e: worker::Error, what: String) -> Error {
    if e.to_string().contains("UNIQUE constraint failed") {
        Error::conflict(what)
    } else {
        e.into()
    }
}

/// Creates a plan; a new default plan takes over from the old one in the same batch.
pub async fn create_plan(db: &D1Database, p: &Plan, api_id: &str, now: i64) -> Result<(), Error> {
    let mut batch = Vec::new();
    if p.is_default {
        batch.push(clear_default_stmt(db, api_id, &p.id)?);
    }
    batch.push(insert_plan_stmt(db, p, api_id, now)?);
    db.batch(batch).await.map(|_| ()).map_err(|e| {
        conflict_or(
            e,
            format!("This API already has a plan named `{}`.", p.name),
        )
    })
}

pub async fn update_plan(db: &D1Database, p: &Plan, api_id: &str, now: i64) -> Result<(), Error> {
    let mut batch = Vec::new();
    if p.is_default {
        batch.push(clear_default_stmt(db, api_id, &p.id)?);
    }
    batch.push(stmt(db,
        "UPDATE plans SET name = ?3, requests_per_minute = ?4, requests_per_day = ?5, tokens_per_day = ?6, tokens_per_month = ?7, \
         max_tokens_per_request = ?8, max_concurrent_streams = ?9, models_json = ?10, is_default = ?11, updated_at = ?12, \
         spend_per_day_micro = ?13, spend_per_month_micro = ?14 WHERE id = ?1 AND api_id = ?2", &plan_args(p, api_id, now))?);
    db.batch(batch).await.map(|_| ()).map_err(|e| {
        conflict_or(
            e,
            format!("This API already has a plan named `{}`.", p.name),
        )
    })
}

pub async fn list_plans(db: &D1Database, api_id: &str) -> Result<Vec<PlanRow>, Error> {
    Ok(stmt(
        db,
        &format!("SELECT {PLAN_COLUMNS} FROM plans WHERE api_id = ?1 ORDER BY created_at, id"),
        &[text(api_id)],
    )?
    .all()
    .await?
    .results()?)
}

/// A plan of the API by id or by name.
pub async fn plan(db: &D1Database, api_id: &str, id_or_name: &str) -> Result<PlanRow, Error> {
    stmt(
        db,
        &format!("SELECT {PLAN_COLUMNS} FROM plans WHERE api_id = ?1 AND (id = ?2 OR name = ?2)"),
        &[text(api_id), text(id_or_name)],
    )?
    .first::<PlanRow>(None)
    .await?
    .ok_or_else(|| Error::not_found(format!("This API has no plan `{id_or_name}`.")))
}

/// The plan a consumer is on: its subscription, else the API's default. Read on every request, so
/// plan changes apply on the next one. An API without plans is unlimited.
pub async fn plan_for(db: &D1Database, api_id: &str, consumer_id: &str) -> Result<Plan, Error> {
    let row = stmt(db, &format!(
        "SELECT {PLAN_COLUMNS} FROM plans WHERE api_id = ?1 AND \
         (id = (SELECT plan_id FROM subscriptions WHERE api_id = ?1 AND consumer_id = ?2) OR is_default = 1) \
         ORDER BY is_default ASC LIMIT 1"), &[text(api_id), text(consumer_id)])?
        .first::<PlanRow>(None).await?;
    Ok(row.map(|r| r.to_plan()).unwrap_or_else(|| Plan {
        id: String::new(),
        name: "default".into(),
        limits: Default::default(),
        models: None,
        is_default: true,
    }))
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

// ---- usage

/// Inserts flushed usage records; a record already stored (same id) is skipped, never counted twice.
pub async fn insert_usage(db: &D1Database, records: &[UsageRecord]) -> Result<(), Error> {
    if records.is_empty() {
        return Ok(());
    }
    let mut batch = Vec::with_capacity(records.len());
    for r in records {
        batch.push(stmt(db,
            "INSERT OR IGNORE INTO usage_records (id, created_at, project_id, api_id, consumer_id, key_id, session_id, model, plan, \
             prompt_tokens, completion_tokens, total_tokens, estimated, status, latency_ms, ttft_ms, ended, cached_tokens, \
             reasoning_tokens, n, max_tokens, prompt_bound, cost_micro, overrun) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)",
            &[text(&r.id), int(r.created_at), text(&r.project_id), text(&r.api_id), text(&r.consumer_id),
              opt_text(r.key_id.as_deref()), opt_text(r.session_id.as_deref()), text(&r.model), text(&r.plan),
              count(r.prompt_tokens), count(r.completion_tokens), count(r.total_tokens), int(i64::from(r.estimated)),
              int(i64::from(r.status)), count(r.latency_ms), opt_int(r.ttft_ms), text(r.ended.as_str()), count(r.cached_tokens),
              count(r.reasoning_tokens), count(r.n), opt_int(r.max_tokens), count(r.prompt_bound), count(r.cost_micro),
              int(i64::from(r.overrun))])?);
    }
    db.batch(batch).await?;
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct UsageRow {
    pub id: String,
    pub created_at: f64,
    pub api_id: String,
    pub consumer_id: String,
    pub key_id: Option<String>,
    pub session_id: Option<String>,
    pub model: String,
    pub plan: String,
    pub prompt_tokens: f64,
    pub completion_tokens: f64,
    pub total_tokens: f64,
    pub estimated: f64,
    pub status: f64,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub ended: String,
    pub cached_tokens: f64,
    pub reasoning_tokens: f64,
    pub n: f64,
    pub max_tokens: Option<f64>,
    pub prompt_bound: f64,
    pub cost_micro: f64,
    pub overrun: f64,
}

impl UsageRow {
    /// The stored record; a row whose `ended` is not one the gateway writes is an error.
    pub fn to_record(&self) -> Result<UsageRecord, Error> {
        let ended = Ended::parse(&self.ended).ok_or_else(|| {
            worker::console_error!(
                "usage record {} has an unknown `ended`: {}",
                self.id,
                self.ended
            );
            Error::internal("A stored usage record could not be read; it was logged.")
        })?;
        Ok(UsageRecord {
            id: self.id.clone(),
            created_at: self.created_at as i64,
            project_id: String::new(),
            api_id: self.api_id.clone(),
            consumer_id: self.consumer_id.clone(),
            key_id: self.key_id.clone(),
            session_id: self.session_id.clone(),
            model: self.model.clone(),
            plan: self.plan.clone(),
            prompt_tokens: self.prompt_tokens as u64,
            completion_tokens: self.completion_tokens as u64,
            total_tokens: self.total_tokens as u64,
            estimated: self.estimated != 0.0,
            status: self.status as u16,
            latency_ms: self.latency_ms as u64,
            ttft_ms: self.ttft_ms.map(|t| t as u64),
            ended,
            cached_tokens: self.cached_tokens as u64,
            reasoning_tokens: self.reasoning_tokens as u64,
            n: self.n as u64,
            max_tokens: self.max_tokens.map(|t| t as u64),
            prompt_bound: self.prompt_bound as u64,
            cost_micro: self.cost_micro as u64,
            overrun: self.overrun != 0.0,
        })
    }
}

#[derive(Debug, Deserialize, serde::Serialize)]
pub struct UsageGroup {
    pub key: Option<String>,
    pub requests: f64,
    pub prompt_tokens: f64,
    pub completion_tokens: f64,
    pub total_tokens: f64,
    pub estimated_requests: f64,
    pub cost_micro: f64,
    pub overruns: f64,
}

const USAGE_FILTER: &str =
    "api_id = ?1 AND created_at >= ?2 AND created_at < ?3 AND (?4 IS NULL OR consumer_id = ?4)";

fn usage_args(api_id: &str, q: &UsageQuery) -> Vec<JsValue> {
    vec![
        text(api_id),
        int(q.from),
        int(q.to),
        opt_text(q.consumer.as_deref()),
    ]
}

/// Totals (and groups, when asked) of an API's usage in `[from, to)`.
pub async fn usage_groups(
    db: &D1Database,
    api_id: &str,
    q: &UsageQuery,
) -> Result<Vec<UsageGroup>, Error> {
    // Without grouping, the aggregate always yields one row (zeros for an empty window).
    let (key, group) = match q.group_by {
        Some(g) => (g.sql(), " GROUP BY 1 ORDER BY 1"),
        None => ("NULL", ""),
    };
    let sql = format!(
        "SELECT {key} AS key, COUNT(*) AS requests, COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, \
         COALESCE(SUM(completion_tokens), 0) AS completion_tokens, COALESCE(SUM(total_tokens), 0) AS total_tokens, \
         COALESCE(SUM(estimated), 0) AS estimated_requests, COALESCE(SUM(cost_micro), 0) AS cost_micro, \
         COALESCE(SUM(overrun), 0) AS overruns \
         FROM usage_records WHERE {USAGE_FILTER}{group}");
    Ok(stmt(db, &sql, &usage_args(api_id, q))?
        .all()
        .await?
        .results()?)
}

/// The most recent records in `[from, to)`, newest first.
pub async fn usage_records(
    db: &D1Database,
    api_id: &str,
    q: &UsageQuery,
    limit: u32,
) -> Result<Vec<UsageRow>, Error> {
    let sql = format!(
        "SELECT id, created_at, api_id, consumer_id, key_id, session_id, model, plan, prompt_tokens, completion_tokens, \
         total_tokens, estimated, status, latency_ms, ttft_ms, ended, cached_tokens, reasoning_tokens, n, max_tokens, \
         prompt_bound, cost_micro, overrun FROM usage_records WHERE {USAGE_FILTER} \
         ORDER BY created_at DESC, id LIMIT {limit}");
    Ok(stmt(db, &sql, &usage_args(api_id, q))?
        .all()
        .await?
        .results()?)
}

/// The managed-mode end user with this (normalised) email, if signed in before.
pub async fn user_by_email(
    db: &D1Database,
    project_id: &str,
    email: &str,
) -> Result<Option<Consumer>, Error> {
    Ok(stmt(
        db,
        &format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE project_id = ?1 AND email = ?2"),
        &[text(project_id), text(email)],
    )?
    .first::<Consumer>(None)
    .await?)
}

/// A consumer by id, or `None` (for checks on the request path, where absence is a 401, not a 404).
pub async fn find_consumer(
    db: &D1Database,
    project_id: &str,
    id: &str,
) -> Result<Option<Consumer>, Error> {
    Ok(stmt(
        db,
        &format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE project_id = ?1 AND id = ?2"),
        &[text(project_id), text(id)],
    )?
    .first::<Consumer>(None)
    .await?)
}

/// A live key by id with its consumer's status: what a key-exchange token rests on.
pub async fn live_key(
    db: &D1Database,
    project_id: &str,
    key_id: &str,
) -> Result<Option<KeyMatch>, Error> {
    Ok(stmt(db,
        "SELECT k.id AS key_id, k.consumer_id, c.status AS consumer_status FROM consumer_keys k \
         JOIN consumers c ON c.id = k.consumer_id WHERE k.id = ?1 AND k.project_id = ?2 AND k.revoked_at IS NULL",
        &[text(key_id), text(project_id)])?.first::<KeyMatch>(None).await?)
}

// ---- auth events

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
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
    changes(db, "INSERT INTO auth_events (id, project_id, api_id, type, consumer_id, subject, ip, detail, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        &[text(&e.id), text(&e.project_id), opt_text(e.api_id.as_deref()), text(&e.kind), opt_text(e.consumer_id.as_deref()),
          opt_text(e.subject.as_deref()), opt_text(e.ip.as_deref()), opt_text(e.detail.as_deref()), int(e.created_at)]).await?;
    Ok(())
}

pub async fn list_auth_events(
    db: &D1Database,
    project_id: &str,
    since: i64,
    kind: Option<&str>,
) -> Result<Vec<AuthEvent>, Error> {
    Ok(stmt(db, "SELECT id, project_id, api_id, type, consumer_id, subject, ip, detail, created_at FROM auth_events \
                 WHERE project_id = ?1 AND created_at >= ?2 AND (?3 IS NULL OR type = ?3) ORDER BY created_at DESC, id LIMIT 1000",
        &[text(project_id), int(since), opt_text(kind)])?.all().await?.results()?)
}

// ---- consumer JWT credentials

#[derive(Debug, Clone, Deserialize)]
pub struct JwtCredentialRow {
    pub id: String,
    pub consumer_id: String,
    pub kind: String,
    pub claim_name: String,
    pub claim_value: String,
    pub secret_enc: Option<String>,
    pub secret_prefix: Option<String>,
    pub jwks_json: Option<String>,
    pub created_at: i64,
    #[serde(default)]
    pub consumer_status: Option<String>,
}

impl JwtCredentialRow {
    /// The owner's view: never the secret, only its first characters.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "consumer_id": self.consumer_id, "kind": self.kind, "claim": self.claim_name, "value": self.claim_value,
            "secret_prefix": self.secret_prefix, "jwks": self.jwks_json.as_deref().and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok()),
            "created_at": crate::time::rfc3339(self.created_at),
        })
    }
}

const JWT_CREDENTIAL_COLUMNS: &str = "j.id, j.consumer_id, j.kind, j.claim_name, j.claim_value, j.secret_enc, j.secret_prefix, j.jwks_json, j.created_at";

pub async fn create_jwt_credential(
    db: &D1Database,
    project_id: &str,
    r: &JwtCredentialRow,
) -> Result<(), Error> {
    insert(db,
        "INSERT INTO consumer_jwt_credentials (id, project_id, consumer_id, kind, claim_name, claim_value, secret_enc, secret_prefix, jwks_json, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        &[text(&r.id), text(project_id), text(&r.consumer_id), text(&r.kind), text(&r.claim_name), text(&r.claim_value),
          opt_text(r.secret_enc.as_deref()), opt_text(r.secret_prefix.as_deref()), opt_text(r.jwks_json.as_deref()), int(r.created_at)],
        format!("Another consumer's credential already uses {} = {}.", r.claim_name, r.claim_value)).await
}

pub async fn list_jwt_credentials(
    db: &D1Database,
    project_id: &str,
    consumer_id: &str,
) -> Result<Vec<JwtCredentialRow>, Error> {
    Ok(stmt(db, &format!("SELECT {JWT_CREDENTIAL_COLUMNS} FROM consumer_jwt_credentials j \
                          WHERE j.project_id = ?1 AND j.consumer_id = ?2 AND j.revoked_at IS NULL ORDER BY j.created_at, j.id"),
        &[text(project_id), text(consumer_id)])?.all().await?.results()?)
}

pub async fn revoke_jwt_credential(
    db: &D1Database,
    project_id: &str,
    id: &str,
    now: i64,
) -> Result<bool, Error> {
    Ok(changes(db, "UPDATE consumer_jwt_credentials SET revoked_at = ?3 WHERE project_id = ?1 AND id = ?2 AND revoked_at IS NULL",
        &[text(project_id), text(id), int(now)]).await? == 1)
}

/// Live credentials whose claim value is among `values` (read unverified from a token), with the
/// consumer's status. The caller still checks the claim name and the signature.
pub async fn jwt_credentials_for(
    db: &D1Database,
    project_id: &str,
    values: &[String],
) -> Result<Vec<JwtCredentialRow>, Error> {
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (0..values.len()).map(|i| format!("?{}", i + 2)).collect();
    let sql = format!("SELECT {JWT_CREDENTIAL_COLUMNS}, c.status AS consumer_status FROM consumer_jwt_credentials j \
                       JOIN consumers c ON c.id = j.consumer_id \
                       WHERE j.project_id = ?1 AND j.revoked_at IS NULL AND j.claim_value IN ({}) LIMIT 10", placeholders.join(", "));
    let mut args = vec![text(project_id)];
    args.extend(values.iter().map(|v| text(v)));
    Ok(stmt(db, &sql, &args)?.all().await?.results()?)
}

/// The consumer-key fast path: the API, the live key and the consumer's plan in ONE round trip
/// (a D1 batch), keyed only by what the request carries (slugs and the key's hash).
pub async fn api_key_and_plan(
    db: &D1Database,
    project: &str,
    api: &str,
    key_hash: &str,
) -> Result<(Option<Api>, Option<KeyMatch>, Option<Plan>), Error> {
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
    let key = k.results::<KeyMatch>()?.into_iter().next();
    let plan = p
        .results::<PlanRow>()?
        .into_iter()
        .next()
        .map(|r| r.to_plan());
    Ok((api, key, plan))
}
