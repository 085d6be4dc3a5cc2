//! The auth-state Durable Object (OTP challenges and throttles, refresh sessions). Like the counter,
//! each operation loads, applies and saves with synchronous SQLite calls (`objects::run`); state
//! that does not decode fails sign-in closed instead of resetting attempts, throttles and revocations.

use worker::{durable_object, DurableObject, Env, Request, Response, Result, State};

use crate::auth::guard::{apply, GuardRequest, GuardState};
use crate::error::Error;
use crate::http::problem;
use crate::store::objects::{self, Guard, Object};

#[durable_object]
pub struct AuthGuard {
    state: State,
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
        let sql = self.state.storage().sql();
        match objects::run(&sql, "guard", |state: &mut GuardState| {
            apply(state, &request)
        }) {
            Ok((reply, _)) => Response::from_json(&reply),
            Err(e) => {
                worker::console_error!("auth state operation failed: {e}");
                problem(&Guard::unavailable())
            }
        }
    }
}
