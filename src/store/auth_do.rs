//! The auth-state Durable Object (OTP challenges and throttles, refresh sessions) and its client.
//! Like the counter, each operation loads, applies and saves with synchronous SQLite calls.

use serde::Deserialize;
use worker::{
    durable_object, DurableObject, Env, Request, Response, Result, SqlStorage, SqlStorageValue,
    State,
};

use crate::auth::guard::{apply, GuardReply, GuardRequest, GuardState};
use crate::error::{Error, Problem};
use crate::http::problem;

#[durable_object]
pub struct AuthGuard {
    state: State,
}

#[derive(Deserialize)]
struct Row {
    state: String,
}

fn run(sql: &SqlStorage, request: &GuardRequest) -> Result<GuardReply> {
    sql.exec("CREATE TABLE IF NOT EXISTS guard (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL)", None)?;
    let rows: Vec<Row> = sql
        .exec("SELECT state FROM guard WHERE id = 1", None)?
        .to_array()?;
    // Absent is a fresh state; present but undecodable is an error (sign-in fails closed), never a
    // reset that would wipe attempts, throttles and revocations.
    let mut state: GuardState = match rows.first() {
        None => GuardState::default(),
        Some(r) => serde_json::from_str(&r.state)
            .map_err(|e| worker::Error::RustError(format!("auth state does not decode: {e}")))?,
    };
    let reply = apply(&mut state, request);
    let json =
        serde_json::to_string(&state).map_err(|e| worker::Error::RustError(e.to_string()))?;
    sql.exec("INSERT INTO guard (id, state) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state",
        vec![SqlStorageValue::String(json)])?;
    Ok(reply)
}

impl DurableObject for AuthGuard {
    fn new(state: State, _env: Env) -> Self {
        AuthGuard { state }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let request: GuardRequest = match req.json().await {
            Ok(r) => r,
            Err(_) => return problem(&Error::invalid_request("Not an auth-state operation.")),
        };
        match run(&self.state.storage().sql(), &request) {
            Ok(reply) => Response::from_json(&reply),
            Err(e) => problem(&unavailable(e.to_string())),
        }
    }
}

fn unavailable(detail: String) -> Error {
    worker::console_error!("auth state unavailable: {detail}");
    Error::new(
        Problem::AuthUnavailable,
        "The gateway could not reach its sign-in state; try again shortly.",
    )
    .with_header("Retry-After", "1")
}

/// Sends one operation to the auth-state object named `name` (e.g. `otp:{project}:{email}`).
pub async fn call(env: &Env, name: &str, op: &GuardRequest) -> Result<GuardReply, Error> {
    crate::store::call_object(env, "AUTH_GUARD", name, op, unavailable).await
}
