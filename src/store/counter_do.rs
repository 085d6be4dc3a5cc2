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
use crate::limits::standing::Change;
use crate::store::d1;
use crate::store::objects::{self, Counter, Object, Stored};
use crate::usage::UsageRecord;

/// Records flushed to D1 per alarm run.
const FLUSH_BATCH: usize = 50;
/// How soon after a request its usage reaches D1.
const FLUSH_DELAY_MS: i64 = 500;
/// The table the counter's state lives in.
const STATE_TABLE: &str = "counter";
/// How often refusal counts alone are written to D1.
const REFUSALS_FLUSH_MS: i64 = 5_000;
/// Backoff when D1 is unavailable.
const RETRY_DELAY_MS: i64 = 5_000;

#[durable_object]
pub struct ConsumerCounter {
    state: State,
    env: Env,
    /// The alarm this instance last saw set (epoch ms), so most operations need no alarm lookup.
    alarm_at: Cell<Option<i64>>,
    /// The consumer's standing has been loaded from D1 into the state (checked once an instance).
    standing_known: Cell<bool>,
    counter: Stored<CounterState>,
    /// The outbox table exists (made once an instance).
    outbox_ready: Cell<bool>,
    /// Whether records wait in the outbox (`None`: not known yet; read once, then kept).
    outbox_waiting: Cell<Option<bool>>,
}

#[derive(Deserialize)]
struct OutboxRow {
    seq: i64,
    record: String,
}

fn ensure_outbox(sql: &SqlStorage) -> Result<()> {
    sql.exec(
        "CREATE TABLE IF NOT EXISTS usage_outbox (id TEXT PRIMARY KEY, record TEXT NOT NULL)",
        None,
    )?;
    // Requests refused for a limit (429), per UTC day: the object's own running count, written to D1
    // as an absolute number (so a repeated flush cannot count twice).
    sql.exec(
        "CREATE TABLE IF NOT EXISTS refusals (day TEXT PRIMARY KEY, api_id TEXT NOT NULL, consumer_id TEXT NOT NULL, \
         count INTEGER NOT NULL, flushed INTEGER NOT NULL DEFAULT 0)",
        None,
    )?;
    Ok(())
}

/// Counts a refusal of an admission for a limit; whether one was counted.
fn note_refusal(sql: &SqlStorage, request: &CounterRequest, reply: &CounterReply) -> Result<bool> {
    let (CounterRequest::Admit { now, record, .. }, CounterReply::Denied { denial, .. }) =
        (request, reply)
    else {
        return Ok(false);
    };
    if !matches!(denial, crate::limits::standing::Denial::Limit { .. }) {
        return Ok(false);
    }
    let day = crate::time::utc_day(*now);
    sql.exec(
        "INSERT INTO refusals (day, api_id, consumer_id, count, flushed) VALUES (?, ?, ?, 1, 0) \
         ON CONFLICT(day) DO UPDATE SET count = count + 1, flushed = 0",
        vec![
            SqlStorageValue::String(day),
            SqlStorageValue::String(record.api_id.clone()),
            SqlStorageValue::String(record.consumer_id.clone()),
        ],
    )?;
    Ok(true)
}

#[derive(Deserialize)]
struct RefusalRow {
    day: String,
    api_id: String,
    consumer_id: String,
    count: i64,
}

/// Refusal counts not yet in D1.
fn refusals_waiting(sql: &SqlStorage) -> Result<Vec<RefusalRow>> {
    sql.exec(
        "SELECT day, api_id, consumer_id, count FROM refusals WHERE flushed = 0",
        None,
    )?
    .to_array()
}

fn rust_error(e: impl std::fmt::Display) -> worker::Error {
    worker::Error::RustError(e.to_string())
}

/// Files the records an operation completed, in the same synchronous turn as its state; whether
/// any was filed.
fn file_records(sql: &SqlStorage, state: &mut CounterState) -> Result<bool> {
    let filed = !state.filed.is_empty();
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
    Ok(filed)
}

/// Whether a query of the form `SELECT 1 AS one …` finds a row.
fn has_row(sql: &SqlStorage, query: &str) -> Result<bool> {
    #[derive(Deserialize)]
    struct One {
        #[allow(dead_code)]
        one: i64,
    }
    let rows: Vec<One> = sql.exec(query, None)?.to_array()?;
    Ok(!rows.is_empty())
}

/// Whether records or refusal counts wait for D1.
fn outbox_waiting(sql: &SqlStorage) -> Result<bool> {
    has_row(
        sql,
        "SELECT 1 AS one FROM usage_outbox UNION ALL SELECT 1 AS one FROM refusals WHERE flushed = 0 LIMIT 1",
    )
}

/// Whether usage records (not only refusal counts) wait.
fn usage_waiting(sql: &SqlStorage) -> Result<bool> {
    has_row(sql, "SELECT 1 AS one FROM usage_outbox LIMIT 1")
}

/// Keeps a record that no longer decodes out of the flush (so it cannot stall it) without losing it.
fn set_aside(sql: &SqlStorage, seq: i64) -> Result<()> {
    sql.exec(
        "CREATE TABLE IF NOT EXISTS usage_outbox_unreadable (id TEXT PRIMARY KEY, record TEXT NOT NULL)",
        None,
    )?;
    sql.exec(
        "INSERT OR IGNORE INTO usage_outbox_unreadable (id, record) SELECT id, record FROM usage_outbox WHERE rowid = ?",
        vec![SqlStorageValue::Integer(seq)],
    )?;
    Ok(())
}

impl ConsumerCounter {
    /// The synchronous heart: apply, file the usage records it completed, save, with no await.
    fn run(&self, request: &CounterRequest) -> Result<(CounterReply, Option<i64>)> {
        let sql = self.state.storage().sql();
        self.ensure_outbox(&sql)?;
        self.counter.run(&sql, |state| {
            let reply = apply(state, request);
            if file_records(&sql, state)? | note_refusal(&sql, request.answered(), &reply)? {
                self.outbox_waiting.set(Some(true));
            }
            Ok((reply, self.wake_at(&sql, state)?))
        })
    }

    fn ensure_outbox(&self, sql: &SqlStorage) -> Result<()> {
        if !self.outbox_ready.get() {
            ensure_outbox(sql)?;
            self.outbox_ready.set(true);
        }
        Ok(())
    }

    /// Loads what D1 says about the consumer the first time an operation needs it (changes that
    /// arrived meanwhile are kept: see `Standing::learn`).
    async fn know_standing(
        &self,
        api_id: &str,
        consumer_id: &str,
    ) -> std::result::Result<(), Error> {
        if self.standing_known.get() {
            return Ok(());
        }
        let sql = self.state.storage().sql();
        let known = self.counter.read(&sql, |s| s.standing.known)?;
        if !known {
            let facts = d1::counter_facts(&d1::db(&self.env)?, api_id, consumer_id).await?;
            self.run(&CounterRequest::Learn { facts })?;
        }
        self.standing_known.set(true);
        Ok(())
    }

    /// When the object must next wake: soon to flush waiting records, else at the first lease expiry.
    fn wake_at(&self, sql: &SqlStorage, state: &CounterState) -> Result<Option<i64>> {
        let waiting = match self.outbox_waiting.get() {
            Some(known) => known,
            None => {
                let known = outbox_waiting(sql)?;
                self.outbox_waiting.set(Some(known));
                known
            }
        };
        let flush = waiting.then(|| now_ms() + FLUSH_DELAY_MS);
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
            standing_known: Cell::new(false),
            counter: Stored::new(STATE_TABLE),
            outbox_ready: Cell::new(false),
            outbox_waiting: Cell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let request: CounterRequest = match objects::read_op(&mut req).await {
            Some(r) => r,
            None => return problem(&Error::invalid_request("Not a counter operation.")),
        };
        if let Some((api_id, consumer_id)) = request.needs_standing() {
            if let Err(e) = self.know_standing(api_id, consumer_id).await {
                worker::console_error!("counter could not learn the consumer's standing: {e}");
                return problem(&Counter::unavailable());
            }
        }
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
        self.ensure_outbox(&sql)?;
        // Book leases whose requests stopped renewing them, filing their records.
        let next_expiry = self.counter.run(&sql, |state| {
            state.roll(now_ms());
            file_records(&sql, state)?;
            Ok(state.next_expiry())
        })?;
        let rows: Vec<OutboxRow> = sql
            .exec(
                &format!("SELECT rowid AS seq, record FROM usage_outbox ORDER BY rowid LIMIT {FLUSH_BATCH}"),
                None,
            )?
            .to_array()?;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            match crate::encoding::from_json::<UsageRecord>(&row.record) {
                Ok(r) => records.push(r),
                Err(e) => {
                    worker::console_error!("a usage record in the outbox does not decode: {e}");
                    set_aside(&sql, row.seq)?;
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
        if let Some(last) = rows.last() {
            sql.exec(
                "DELETE FROM usage_outbox WHERE rowid <= ?",
                vec![SqlStorageValue::Integer(last.seq)],
            )?;
        }
        // Refusal counts: absolute per day, so writing one again changes nothing.
        let refusals = refusals_waiting(&sql)?;
        if !refusals.is_empty() {
            let counts: Vec<(String, String, String, i64)> = refusals
                .iter()
                .map(|r| {
                    (
                        r.api_id.clone(),
                        r.consumer_id.clone(),
                        r.day.clone(),
                        r.count,
                    )
                })
                .collect();
            let stored = match d1::db(&self.env) {
                Ok(db) => d1::store_refusals(&db, &counts).await.is_ok(),
                Err(_) => false,
            };
            if !stored {
                self.wake_in(now_ms() + RETRY_DELAY_MS).await?;
                return Response::ok("retry");
            }
            for r in &refusals {
                sql.exec(
                    "UPDATE refusals SET flushed = 1 WHERE day = ? AND count = ?",
                    vec![
                        SqlStorageValue::String(r.day.clone()),
                        SqlStorageValue::Integer(r.count),
                    ],
                )?;
            }
            // Days long past are in D1 for good.
            let old = crate::time::utc_day(now_ms() - 3 * 86_400_000);
            sql.exec(
                "DELETE FROM refusals WHERE flushed = 1 AND day < ?",
                vec![SqlStorageValue::String(old)],
            )?;
        }
        let waiting = outbox_waiting(&sql)?;
        self.outbox_waiting.set(Some(waiting));
        // More records: at once. Only refusals (a client past its limit keeps asking): in a while,
        // so a flood of 429s costs one D1 write per interval, not one per refusal.
        let records_left = usage_waiting(&sql)?;
        let next = if records_left {
            Some(now_ms() + 10)
        } else if waiting {
            Some(now_ms() + REFUSALS_FLUSH_MS)
        } else {
            next_expiry
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

/// An admin write's change to a consumer's standing, made in the consumer's counter on each of
/// `api_ids` (at once) before the write answers, so the very next request sees it. Any counter that
/// cannot be reached fails the write (503): it must not answer as if the change were in force.
pub async fn change_everywhere(
    env: &Env,
    api_ids: &[String],
    consumer_id: &str,
    change: Change,
) -> std::result::Result<(), Error> {
    let now = now_ms();
    let calls = api_ids.iter().map(|api_id| {
        let op = CounterRequest::Change {
            now,
            api_id: api_id.clone(),
            consumer_id: consumer_id.to_string(),
            change: change.clone(),
        };
        async move { call(env, api_id, consumer_id, &op).await }
    });
    for done in futures_util::future::join_all(calls).await {
        done?;
    }
    Ok(())
}

/// `change_everywhere` over every API of the project.
pub async fn change_in_project(
    env: &Env,
    project_id: &str,
    consumer_id: &str,
    change: Change,
) -> std::result::Result<(), Error> {
    let apis = d1::api_ids(&d1::db(env)?, project_id).await?;
    change_everywhere(env, &apis, consumer_id, change).await
}
