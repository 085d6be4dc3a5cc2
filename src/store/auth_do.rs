//! The auth-state Durable Object (an email's OTP challenges and limits, a client network's limits, a
//! refresh session). Like the counter, each operation applies and saves with synchronous SQLite
//! calls (`objects::Stored`); state that does not decode fails sign-in closed instead of resetting
//! attempts, throttles and revocations. What it holds expires: an alarm at the last expiry prunes
//! it, and an object left with nothing deletes its storage.

use std::cell::Cell;
use std::time::Duration;

use worker::{durable_object, DurableObject, Env, Request, Response, Result, State};

use crate::auth::guard::{apply, GuardRequest, GuardState};
use crate::error::Error;
use crate::http::{now_ms, problem};
use crate::store::objects::{self, Guard, Object, Stored};

#[durable_object]
pub struct AuthGuard {
    state: State,
    stored: Stored<GuardState>,
    /// Whether this instance knows an alarm is set (so most operations need no alarm lookup).
    alarm_set: Cell<bool>,
}

impl AuthGuard {
    /// Applies `request`; returns its reply and when the state expires (`None`: nothing left).
    fn run(&self, request: &GuardRequest) -> Result<(crate::auth::guard::GuardReply, Option<i64>)> {
        let sql = self.state.storage().sql();
        self.stored.run(&sql, |state| {
            let reply = apply(state, request);
            let expires = if state.is_empty() {
                None
            } else {
                state.expires_at()
            };
            Ok((reply, expires))
        })
    }

    /// Keeps an alarm for `expires` (when set), or deletes the storage of an object left empty.
    async fn keep_or_forget(&self, expires: Option<i64>, in_alarm: bool) -> Result<()> {
        let storage = self.state.storage();
        match expires {
            None => {
                self.stored.forget();
                storage.delete_all().await?;
                self.alarm_set.set(false);
            }
            Some(at) => {
                let set = self.alarm_set.get() && !in_alarm;
                if !set && (in_alarm || storage.get_alarm().await?.is_none()) {
                    let after = (at - now_ms()).max(1) as u64;
                    storage.set_alarm(Duration::from_millis(after)).await?;
                }
                self.alarm_set.set(true);
            }
        }
        Ok(())
    }
}

impl DurableObject for AuthGuard {
    fn new(state: State, _env: Env) -> Self {
        AuthGuard {
            state,
            stored: Stored::new("guard"),
            alarm_set: Cell::new(false),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let request: GuardRequest = match objects::read_op(&mut req).await {
            Some(r) => r,
            None => return problem(&Error::invalid_request("Not an auth-state operation.")),
        };
        let (reply, expires) = match self.run(&request) {
            Ok(done) => done,
            Err(e) => {
                worker::console_error!("auth state operation failed: {e}");
                return problem(&Guard::unavailable());
            }
        };
        if let Err(e) = self.keep_or_forget(expires, false).await {
            // The operation itself is saved; only its expiry bookkeeping failed (retried next time).
            worker::console_error!("auth state expiry not scheduled: {e}");
            self.alarm_set.set(false);
        }
        Response::from_json(&reply)
    }

    async fn alarm(&self) -> Result<Response> {
        self.alarm_set.set(false);
        let (_, expires) = self.run(&GuardRequest::Prune { now: now_ms() })?;
        self.keep_or_forget(expires, true).await?;
        Response::empty()
    }
}
