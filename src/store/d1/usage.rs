//! Usage records in D1: inserted in batches from the counters' outboxes, read back as the owner's
//! report.

use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::D1Database;

use super::{int, opt_text, stmt, text, Rows};
use serde_json::Value;

use crate::error::Error;
use crate::usage::{Ended, Endpoint, UsageQuery, UsageRecord};

/// Inserts flushed usage records; a record already stored (same id) is skipped, never counted twice.
/// The batch is one statement with one bound value, a JSON array of rows that SQLite spreads into
/// columns: one round of bindings however many records there are.
pub async fn insert_usage(db: &D1Database, records: &[UsageRecord]) -> Result<(), Error> {
    let Some(first) = records.first() else {
        return Ok(());
    };
    let names: Vec<&str> = first.row().iter().map(|(name, _)| *name).collect();
    let rows: Vec<Value> = records
        .iter()
        .map(|r| Value::Array(r.row().into_iter().map(|(_, v)| v).collect()))
        .collect();
    let picks: Vec<String> = (0..names.len())
        .map(|i| format!("json_extract(value, '$[{i}]')"))
        .collect();
    let sql = format!(
        "INSERT OR IGNORE INTO usage_records ({}) SELECT {} FROM json_each(?1)",
        names.join(", "),
        picks.join(", ")
    );
    stmt(db, &sql, &[text(&Value::Array(rows).to_string())])?
        .run()
        .await?;
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
    pub endpoint: String,
    pub upstream_request_id: Option<String>,
    pub upstream_error: Option<String>,
    pub provider: Option<String>,
    pub attempts_json: String,
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
        let endpoint = Endpoint::parse(&self.endpoint).ok_or_else(|| {
            worker::console_error!("usage record {} has an unknown `endpoint`", self.id);
            Error::internal("A stored usage record could not be read; it was logged.")
        })?;
        let attempts = crate::encoding::from_json(&self.attempts_json).map_err(|e| {
            worker::console_error!("usage record {} has unreadable attempts: {e}", self.id);
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
            endpoint,
            upstream_request_id: self.upstream_request_id.clone(),
            upstream_error: self.upstream_error.clone(),
            provider: self.provider.clone(),
            attempts,
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
    stmt(db, &sql, &usage_args(api_id, q))?.rows().await
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
         prompt_bound, cost_micro, overrun, endpoint, upstream_request_id, upstream_error, provider, attempts_json FROM usage_records WHERE {USAGE_FILTER} \
         ORDER BY created_at DESC, id LIMIT {limit}");
    stmt(db, &sql, &usage_args(api_id, q))?.rows().await
}

/// Writes refusal counts `(api id, consumer id, UTC day, count)`: each is the counter's running total
/// for its day, so the larger number wins and writing one twice changes nothing.
pub async fn store_refusals(
    db: &D1Database,
    counts: &[(String, String, String, i64)],
) -> Result<(), Error> {
    let mut batch = Vec::with_capacity(counts.len());
    for (api_id, consumer_id, day, count) in counts {
        batch.push(stmt(
            db,
            "INSERT INTO refusals (api_id, consumer_id, day, count) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (api_id, consumer_id, day) DO UPDATE SET count = MAX(count, excluded.count)",
            &[text(api_id), text(consumer_id), text(day), int(*count)],
        )?);
    }
    db.batch(batch).await?;
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct RefusalDay {
    pub day: String,
    pub count: f64,
}

/// Refusals (429 for a limit) per UTC day in the report's window, for one consumer or all.
pub async fn refusals_by_day(
    db: &D1Database,
    api_id: &str,
    q: &UsageQuery,
) -> Result<Vec<RefusalDay>, Error> {
    let from = crate::time::utc_day(q.from);
    // `to` is exclusive, as for usage: the last day is the one its last millisecond is in.
    let to = crate::time::utc_day(q.to - 1);
    stmt(
        db,
        "SELECT day, SUM(count) AS count FROM refusals WHERE api_id = ?1 AND day >= ?2 AND day <= ?3 \
         AND (?4 IS NULL OR consumer_id = ?4) GROUP BY day ORDER BY day",
        &[text(api_id), text(&from), text(&to), opt_text(q.consumer.as_deref())],
    )?
    .rows()
    .await
}
