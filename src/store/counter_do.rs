//! The per-consumer counter Durable Object (one per API and consumer) and the gateway's client for it.
//! Each operation reads, applies and writes its state with synchronous SQLite calls and no await in
//! between, so concurrent requests are admitted exactly. Usage records are kept in the object's own
//! storage first and flushed to D1 in batches by its alarm.

use std::time::Duration;

use serde::Deserialize;
use worker::{
    durable_object, DurableObject, Env, Request, Response, Result, SqlStorage, SqlStorageValue,
    State,
};

use crate::error::Error;
use crate::http::problem;
use crate::limits::counter::CounterState;
use crate::limits::ops::{apply, CounterReply, CounterRequest};
use crate::store::d1;
use crate::usage::UsageRecord;

/// Records flushed to D1 per alarm run.
const FLUSH_BATCH: usize = 50;
/// How soon after a request its usage reaches D1.
const FLUSH_DELAY: Duration = Duration::from_millis(500);
/// Backoff when D1 is unavailable.
const RETRY_DELAY: Duration = Duration::from_secs(5);

#[durable_object]
pub struct ConsumerCounter {
    state: State,
    env: Env,
}

#[derive(Deserialize)]
struct StateRow {
    state: String,
}

#[derive(Deserialize)]
struct OutboxRow {
    record: String,
}

fn ensure_schema(sql: &SqlStorage) -> Result<()> {
    sql.exec("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL)", None)?;
    sql.exec(
        "CREATE TABLE IF NOT EXISTS usage_outbox (id TEXT PRIMARY KEY, record TEXT NOT NULL)",
        None,
    )?;
    Ok(())
}

fn load(sql: &SqlStorage) -> Result<CounterState> {
    let rows: Vec<StateRow> = sql
        .exec("SELECT state FROM counter WHERE id = 1", None)?
        .to_array()?;
    Ok(rows
        .first()
        .and_then(|r| serde_json::from_str(&r.state).ok())
        .unwrap_or_default())
}

fn save(sql: &SqlStorage, state: &CounterState) -> Result<()> {
    let json = serde_json::to_string(state).map_err(|e| worker::Error::RustError(e.to_string()))?;
    sql.exec("INSERT INTO counter (id, state) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state",
        vec![SqlStorageValue::String(json)])?;
    Ok(())
}

impl ConsumerCounter {
    /// The synchronous heart: load, apply, save (and file the usage record), with no await.
    fn run(&self, request: &CounterRequest) -> Result<CounterReply> {
        let sql = self.state.storage().sql();
        ensure_schema(&sql)?;
        let mut state = load(&sql)?;
        let reply = apply(&mut state, request);
        save(&sql, &state)?;
        if let (CounterRequest::Settle { record, .. }, CounterReply::Settled { counted: true }) =
            (request, &reply)
        {
            let json = serde_json::to_string(record)
                .map_err(|e| worker::Error::RustError(e.to_string()))?;
            sql.exec(
                "INSERT OR IGNORE INTO usage_outbox (id, record) VALUES (?, ?)",
                vec![
                    SqlStorageValue::String(record.id.clone()),
                    SqlStorageValue::String(json),
                ],
            )?;
        }
        Ok(reply)
    }

    fn outbox_waiting(&self) -> Result<bool> {
        let sql = self.state.storage().sql();
        let left: Vec<StateRow> = sql
            .exec("SELECT 'x' AS state FROM usage_outbox LIMIT 1", None)?
            .to_array()?;
        Ok(!left.is_empty())
    }

    async fn schedule_flush(&self, after: Duration) -> Result<()> {
        let storage = self.state.storage();
        if storage.get_alarm().await?.is_none() {
            storage.set_alarm(after).await?;
        }
        Ok(())
    }
}

impl DurableObject for ConsumerCounter {
    fn new(state: State, env: Env) -> Self {
        ConsumerCounter { state, env }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let request: CounterRequest = match req.json().await {
            Ok(r) => r,
            Err(_) => return problem(&Error::invalid_request("Not a counter operation.")),
        };
        let reply = self.run(&request)?;
        // Anything waiting in the outbox (just filed, or left by a restart) gets a flush scheduled.
        if matches!(reply, CounterReply::Settled { counted: true }) || self.outbox_waiting()? {
            self.schedule_flush(FLUSH_DELAY).await?;
        }
        Response::from_json(&reply)
    }

    async fn alarm(&self) -> Result<Response> {
        let sql = self.state.storage().sql();
        ensure_schema(&sql)?;
        let rows: Vec<OutboxRow> = sql
            .exec(
                &format!("SELECT record FROM usage_outbox ORDER BY rowid LIMIT {FLUSH_BATCH}"),
                None,
            )?
            .to_array()?;
        let records: Vec<UsageRecord> = rows
            .iter()
            .filter_map(|r| serde_json::from_str(&r.record).ok())
            .collect();
        let flushed = match d1::db(&self.env) {
            Ok(db) => d1::insert_usage(&db, &records).await.is_ok(),
            Err(_) => false,
        };
        if !flushed {
            self.state.storage().set_alarm(RETRY_DELAY).await?;
            return Response::ok("retry");
        }
        // Stored in D1 (INSERT OR IGNORE): only now leave the outbox, so a crash in between repeats
        // the insert harmlessly instead of losing the record.
        for r in &records {
            sql.exec(
                "DELETE FROM usage_outbox WHERE id = ?",
                vec![SqlStorageValue::String(r.id.clone())],
            )?;
        }
        if self.outbox_waiting()? {
            self.state
                .storage()
                .set_alarm(Duration::from_millis(10))
                .await?;
        }
        Response::ok("flushed")
    }
}

fn unavailable(detail: String) -> Error {
    worker::console_error!("counter unavailable: {detail}");
    Error::new(503, "counter-unavailable", "Quota counters are unavailable",
        "The gateway could not reach the quota counter, so the request was refused rather than let through unmetered. Try again shortly.")
        .with_header("Retry-After", "1")
}

/// Sends one operation to the counter of (`api_id`, `consumer_id`). Any failure is a 503: the gateway
/// fails closed rather than serve unmetered.
pub async fn call(
    env: &Env,
    api_id: &str,
    consumer_id: &str,
    op: &CounterRequest,
) -> Result<CounterReply, Error> {
    crate::store::call_object(
        env,
        "COUNTERS",
        &format!("{api_id}/{consumer_id}"),
        op,
        unavailable,
    )
    .await
}
