//! The auth-state Durable Object (OTP challenges and throttles, refresh sessions). Like the counter,
//! each operation applies and saves with synchronous SQLite calls (`objects::Stored`); state
//! that does not decode fails sign-in closed instead of resetting attempts, throttles and revocations.

use worker::{durable_object, DurableObject, Env, Request, Response, Result, State};

use crate::auth::guard::{apply, GuardRequest, GuardState};
use crate::error::Error;
use crate::http::problem;
use crate::store::objects::{self, Guard, Object, Stored};

#[durable_object]
pub struct AuthGuard {
    state: State,
    stored: Stored<GuardState>,
}

impl DurableObject for AuthGuard {
    fn new(state: State, _env: Env) -> Self {
        AuthGuard {
            state,
            stored: Stored::new("guard"),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let request: GuardRequest = match objects::read_op(&mut req).await {
            Some(r) => r,
            None => return problem(&Error::invalid_request("Not an auth-state operation.")),
        };
        let sql = self.state.storage().sql();
        match self.stored.run(&sql, |state| Ok(apply(state, &request))) {
            Ok(reply) => Response::from_json(&reply),
            Err(e) => {
                worker::console_error!("auth state operation failed: {e}");
                problem(&Guard::unavailable())
            }
        }
    }
}
