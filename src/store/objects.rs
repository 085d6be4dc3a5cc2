//! Every Durable Object the gateway talks to, defined once: its binding, how an instance is named,
//! what it is asked and answers, and what its absence means. Callers name an instance with a typed
//! value (never a formatted string), and `call` is the one way to reach it. `run` is the one
//! load-apply-save step both objects use.

use serde::{de::DeserializeOwned, Serialize};
use wasm_bindgen::JsValue;
use worker::{Env, Method, Request, RequestInit, SqlStorage, SqlStorageValue};

use crate::auth::guard::{GuardReply, GuardRequest};
use crate::error::{Error, Problem};
use crate::limits::ops::{CounterReply, CounterRequest};

/// A kind of Durable Object instance the gateway calls.
pub trait Object {
    const BINDING: &'static str;
    type Request: Serialize;
    type Reply: DeserializeOwned;
    /// The instance's name (its id derives from it).
    fn name(&self) -> String;
    /// The problem a caller gets when the object cannot be reached: each fails closed its own way.
    fn unavailable() -> Error;
}

/// The counter of one consumer of one API: windows, leases and the usage outbox.
pub struct Counter<'a> {
    pub api_id: &'a str,
    pub consumer_id: &'a str,
}

impl Object for Counter<'_> {
    const BINDING: &'static str = "COUNTERS";
    type Request = CounterRequest;
    type Reply = CounterReply;
    fn name(&self) -> String {
        format!("{}/{}", self.api_id, self.consumer_id)
    }
    fn unavailable() -> Error {
        Error::new(Problem::CounterUnavailable,
            "The gateway could not reach the quota counter, so the request was refused rather than let through unmetered. Try again shortly.")
            .with_header("Retry-After", "1")
    }
}

/// Sign-in state: one per (project, email), per (project, client IP), or per refresh session.
pub enum Guard<'a> {
    Email { project_id: &'a str, email: &'a str },
    Ip { project_id: &'a str, ip: &'a str },
    Session { id: &'a str },
}

impl Object for Guard<'_> {
    const BINDING: &'static str = "AUTH_GUARD";
    type Request = GuardRequest;
    type Reply = GuardReply;
    fn name(&self) -> String {
        match self {
            Guard::Email { project_id, email } => format!("otp:{project_id}:{email}"),
            Guard::Ip { project_id, ip } => format!("ip:{project_id}:{ip}"),
            Guard::Session { id } => format!("session:{id}"),
        }
    }
    fn unavailable() -> Error {
        Error::new(
            Problem::AuthUnavailable,
            "The gateway could not reach its sign-in state; try again shortly.",
        )
        .with_header("Retry-After", "1")
    }
}

/// Sends one operation to `object` and reads its reply. Any failure (no binding, no answer, an
/// error status, a reply that does not decode) is the object's `unavailable` problem, logged.
pub async fn call<O: Object>(env: &Env, object: &O, op: &O::Request) -> Result<O::Reply, Error> {
    let fail = |e: &dyn std::fmt::Display| {
        worker::console_error!("{} unavailable: {e}", O::BINDING);
        O::unavailable()
    };
    let namespace = env.durable_object(O::BINDING).map_err(|e| fail(&e))?;
    let stub = namespace
        .id_from_name(&object.name())
        .and_then(|id| id.get_stub())
        .map_err(|e| fail(&e))?;
    let body = serde_json::to_string(op).map_err(|e| fail(&e))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(JsValue::from_str(&body)));
    let request = Request::new_with_init("https://object/op", &init).map_err(|e| fail(&e))?;
    let mut response = stub
        .fetch_with_request(request)
        .await
        .map_err(|e| fail(&e))?;
    if response.status_code() != 200 {
        return Err(fail(&format!("status {}", response.status_code())));
    }
    response.json::<O::Reply>().await.map_err(|e| fail(&e))
}

#[derive(serde::Deserialize)]
struct StateRow {
    state: String,
}

/// The one synchronous step of both objects: load the state stored in `table` (absent: a fresh
/// one; present but undecodable: an error, never a reset), let `apply` change it, and save it, with
/// no await in between. Returns what `apply` returned and the state as saved.
pub fn run<S, R>(
    sql: &SqlStorage,
    table: &str,
    apply: impl FnOnce(&mut S) -> R,
) -> worker::Result<(R, S)>
where
    S: Serialize + DeserializeOwned + Default,
{
    sql.exec(
        &format!("CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL)"),
        None,
    )?;
    let rows: Vec<StateRow> = sql
        .exec(&format!("SELECT state FROM {table} WHERE id = 1"), None)?
        .to_array()?;
    let mut state: S = match rows.first() {
        None => S::default(),
        Some(row) => serde_json::from_str(&row.state)
            .map_err(|e| worker::Error::RustError(format!("{table} state does not decode: {e}")))?,
    };
    let reply = apply(&mut state);
    let json =
        serde_json::to_string(&state).map_err(|e| worker::Error::RustError(e.to_string()))?;
    sql.exec(
        &format!("INSERT INTO {table} (id, state) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state"),
        vec![SqlStorageValue::String(json)],
    )?;
    Ok((reply, state))
}
