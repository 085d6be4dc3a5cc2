//! The per-consumer counter Durable Object (one per API and consumer) and the gateway's client for it.
//! Each operation reads, applies and writes its state with synchronous SQLite calls and no await in
//! between, so concurrent requests are admitted exactly. Usage records are filed in the object's own
//! storage in that same turn and flushed to D1 in batches by its alarm, which also wakes the object
//! when an unrenewed lease expires, so an abandoned request is booked and recorded without any
//! further traffic. State that does not decode is an error (503), never a reset.

use std::cell::Cell;
use std::time::Duration;

use serde::Deserialize;
use worker::{
    durable_object, DurableObject, Env, Request, Response, Result, SqlStorage, SqlStorageValue,
    State,
};

use crate::error::Error;
use crate::http::{now_ms, problem};
use crate::limits::counter::CounterState;
use crate::limits::ops::{apply, CounterReply, CounterRequest};
use crate::store::d1;
use crate::store::objects::{self, Counter, Object};
use crate::usage::UsageRecord;

/// Records flushed to D1 per alarm run.
const FLUSH_BATCH: usize = 50;
/// How soon after a request its usage reaches D1.
const FLUSH_DELAY_MS: i64 = 500;
/// The table the counter's state lives in.
const STATE_TABLE: &str = "counter";
/// Backoff when D1 is unavailable.
const RETRY_DELAY_MS: i64 = 5_000;

#[durable_object]
pub struct ConsumerCounter {
    state: State,
    env: Env,
    /// The alarm this instance last saw set (epoch ms), so most operations need no alarm lookup.
    alarm_at: Cell<Option<i64>>,
}

#[derive(Deserialize)]
struct OutboxRow {
    record: String,
}

fn ensure_outbox(sql: &SqlStorage) -> Result<()> {
    sql.exec(
        "CREATE TABLE IF NOT EXISTS usage_outbox (id TEXT PRIMARY KEY, record TEXT NOT NULL)",
        None,
    )?;
    Ok(())
}

fn rust_error(e: impl std::fmt::Display) -> worker::Error {
    worker::Error::RustError(e.to_string())
}

/// Files the records an operation completed, in the same synchronous turn as its state.
fn file_records(sql: &SqlStorage, state: &mut CounterState) -> Result<()> {
    for record in state.filed.drain(..) {
        let json = serde_json::to_string(&record).map_err(rust_error)?;
        sql.exec(
            "INSERT OR IGNORE INTO usage_outbox (id, record) VALUES (?, ?)",
            vec![
                SqlStorageValue::String(record.id.clone()),
                SqlStorageValue::String(json),
            ],
        )?;
    }
    Ok(())
}

fn outbox_waiting(sql: &SqlStorage) -> Result<bool> {
    let left: Vec<OutboxRow> = sql
        .exec("SELECT record FROM usage_outbox LIMIT 1", None)?
        .to_array()?;
    Ok(!left.is_empty())
}

impl ConsumerCounter {
    /// The synchronous heart: load, apply, save (filing usage records), with no await.
    fn run(&self, request: &CounterRequest) -> Result<(CounterReply, Option<i64>)> {
        let sql = self.state.storage().sql();
        ensure_outbox(&sql)?;
        let (reply, mut state) = objects::run(&sql, STATE_TABLE, |state: &mut CounterState| {
            apply(state, request)
        })?;
        file_records(&sql, &mut state)?;
        Ok((reply, self.wake_at(&sql, &state)?))
    }

    /// When the object must next wake: soon to flush waiting records, else at the first lease expiry.
    fn wake_at(&self, sql: &SqlStorage, state: &CounterState) -> Result<Option<i64>> {
        let flush = outbox_waiting(sql)?.then(|| now_ms() + FLUSH_DELAY_MS);
        Ok([flush, state.next_expiry()].into_iter().flatten().min())
    }

    /// Makes sure an alarm fires by `at` (an earlier one already set is kept). The storage is asked
    /// only when this instance has not seen an alarm that covers `at` yet.
    async fn wake_by(&self, at: Option<i64>) -> Result<()> {
        let Some(at) = at else {
            return Ok(());
        };
        let now = now_ms();
        if self.alarm_at.get().is_some_and(|s| s > now && s <= at) {
            return Ok(());
        }
        let storage = self.state.storage();
        match storage.get_alarm().await?.filter(|s| *s > now) {
            Some(s) if s <= at => self.alarm_at.set(Some(s)),
            _ => {
                let after = (at - now).max(1) as u64;
                storage.set_alarm(Duration::from_millis(after)).await?;
                self.alarm_at.set(Some(at));
            }
        }
        Ok(())
    }

    /// Sets the next alarm from inside the alarm handler.
    async fn wake_in(&self, at: i64) -> Result<()> {
        let after = (at - now_ms()).max(1) as u64;
        self.state
            .storage()
            .set_alarm(Duration::from_millis(after))
            .await?;
        self.alarm_at.set(Some(at));
        Ok(())
    }
}

impl DurableObject for ConsumerCounter {
    fn new(state: State, env: Env) -> Self {
        ConsumerCounter {
            state,
            env,
            alarm_at: Cell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let request: CounterRequest = match req.json().await {
            Ok(r) => r,
            Err(_) => return problem(&Error::invalid_request("Not a counter operation.")),
        };
        let (reply, wake) = match self.run(&request) {
            Ok(done) => done,
            Err(e) => {
                worker::console_error!("counter operation failed: {e}");
                return problem(&Counter::unavailable());
            }
        };
        self.wake_by(wake).await?;
        Response::from_json(&reply)
    }

    async fn alarm(&self) -> Result<Response> {
        self.alarm_at.set(None);
        let sql = self.state.storage().sql();
        ensure_outbox(&sql)?;
        // Book leases whose requests stopped renewing them, filing their records.
        let ((), mut state) = objects::run(&sql, STATE_TABLE, |state: &mut CounterState| {
            state.roll(now_ms())
        })?;
        file_records(&sql, &mut state)?;
        let rows: Vec<OutboxRow> = sql
            .exec(
                &format!("SELECT record FROM usage_outbox ORDER BY rowid LIMIT {FLUSH_BATCH}"),
                None,
            )?
            .to_array()?;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            match serde_json::from_str::<UsageRecord>(&row.record) {
                Ok(r) => records.push(r),
                Err(e) => {
                    worker::console_error!("a usage record in the outbox does not decode: {e}")
                }
            }
        }
        let flushed = match d1::db(&self.env) {
            Ok(db) => d1::insert_usage(&db, &records).await.is_ok(),
            Err(_) => false,
        };
        if !flushed {
            self.wake_in(now_ms() + RETRY_DELAY_MS).await?;
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
        let next = if outbox_waiting(&sql)? {
            Some(now_ms() + 10)
        } else {
            state.next_expiry()
        };
        if let Some(at) = next {
            self.wake_in(at).await?;
        }
        Response::ok("flushed")
    }
}

/// Sends one operation to the counter of (`api_id`, `consumer_id`). Any failure is a 503: the gateway
/// fails closed rather than serve unmetered.
pub async fn call(
    env: &Env,
    api_id: &str,
    consumer_id: &str,
    op: &CounterRequest,
) -> std::result::Result<CounterReply, Error> {
    objects::call(
        env,
        &Counter {
            api_id,
            consumer_id,
        },
        op,
    )
    .await
}
