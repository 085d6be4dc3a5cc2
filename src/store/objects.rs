//! Every Durable Object the gateway talks to, defined once: its binding, how an instance is named,
//! what it is asked and answers, and what its absence means. Callers name an instance with a typed
//! value (never a formatted string), and `call` is the one way to reach it. `run` is the one
//! load-apply-save step both objects use.

use std::cell::RefCell;

use serde::{de::DeserializeOwned, Serialize};
use wasm_bindgen::JsValue;
use worker::{Env, Method, Request, RequestInit, SqlStorage, SqlStorageValue};

use crate::auth::guard::{GuardReply, GuardRequest};
use crate::auth::session::Session;
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

/// Sign-in state: one per (project, email), per (project, client network), or per refresh session.
pub enum Guard<'a> {
    Email {
        project_id: &'a str,
        email: &'a str,
    },
    Network {
        project_id: &'a str,
        network: &'a str,
    },
    Session {
        id: &'a str,
    },
}

impl Object for Guard<'_> {
    const BINDING: &'static str = "AUTH_GUARD";
    type Request = GuardRequest;
    type Reply = GuardReply;
    fn name(&self) -> String {
        match self {
            Guard::Email { project_id, email } => format!("otp:{project_id}:{email}"),
            Guard::Network {
                project_id,
                network,
            } => format!("net:{project_id}:{network}"),
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
    let response = stub
        .fetch_with_request(request)
        .await
        .map_err(|e| fail(&e))?;
    if response.status_code() != 200 {
        return Err(fail(&format!("status {}", response.status_code())));
    }
    let bytes = crate::http::response_bytes(&response)
        .await
        .map_err(|e| fail(&e))?;
    serde_json::from_slice::<O::Reply>(&bytes).map_err(|e| fail(&e))
}

/// Starts session `id` in its own sign-in object (a managed, owner or OAuth session alike).
pub async fn create_session(env: &Env, id: &str, session: Session) -> Result<(), Error> {
    call(
        env,
        &Guard::Session { id },
        &GuardRequest::CreateSession {
            session: Box::new(session),
        },
    )
    .await
    .map(drop)
}

/// An object's incoming operation, from its JSON text (one `text()` call, then serde_json).
pub async fn read_op<T: DeserializeOwned>(req: &mut Request) -> Option<T> {
    let text = req.text().await.ok()?;
    crate::encoding::from_json(&text).ok()
}

#[derive(serde::Deserialize)]
struct StateRow {
    state: String,
}

/// An object's state: read from its one-row table the first time an instance needs it, then kept
/// in the instance's memory (an object runs one operation at a time, so memory and table agree).
/// Each operation applies to it and saves it with synchronous SQLite calls and no await in between,
/// which is what makes both objects exact. A stored state that does not decode is an error, never a
/// reset; after any failure the memory is dropped and the table read again.
pub struct Stored<S> {
    table: &'static str,
    memory: RefCell<Option<S>>,
}

impl<S: Serialize + DeserializeOwned + Default> Stored<S> {
    pub fn new(table: &'static str) -> Stored<S> {
        Stored {
            table,
            memory: RefCell::new(None),
        }
    }

    fn load(&self, sql: &SqlStorage) -> worker::Result<S> {
        let table = self.table;
        sql.exec(
            &format!("CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL)"),
            None,
        )?;
        let rows: Vec<StateRow> = sql
            .exec(&format!("SELECT state FROM {table} WHERE id = 1"), None)?
            .to_array()?;
        match rows.first() {
            None => Ok(S::default()),
            Some(row) => crate::encoding::from_json(&row.state).map_err(|e| {
                worker::Error::RustError(format!("{table} state does not decode: {e}"))
            }),
        }
    }

    /// Applies `op` to the state and saves it: what `op` answered, or the first failure.
    pub fn run<R>(
        &self,
        sql: &SqlStorage,
        op: impl FnOnce(&mut S) -> worker::Result<R>,
    ) -> worker::Result<R> {
        let taken = self.memory.borrow_mut().take();
        let mut state = match taken {
            Some(state) => state,
            None => self.load(sql)?,
        };
        let reply = op(&mut state)?;
        let json =
            serde_json::to_string(&state).map_err(|e| worker::Error::RustError(e.to_string()))?;
        sql.exec(
            &format!("INSERT INTO {} (id, state) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state", self.table),
            vec![SqlStorageValue::String(json)],
        )?;
        *self.memory.borrow_mut() = Some(state);
        Ok(reply)
    }

    /// Drops the state kept in memory (the storage was deleted): the next operation starts empty.
    pub fn forget(&self) {
        *self.memory.borrow_mut() = None;
    }

    /// Reads the state without changing it.
    pub fn read<R>(&self, sql: &SqlStorage, look: impl FnOnce(&S) -> R) -> worker::Result<R> {
        let taken = self.memory.borrow_mut().take();
        let state = match taken {
            Some(state) => state,
            None => self.load(sql)?,
        };
        let answer = look(&state);
        *self.memory.borrow_mut() = Some(state);
        Ok(answer)
    }
}
