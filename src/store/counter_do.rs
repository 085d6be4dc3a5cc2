//! The per-consumer counter Durable Object (one per consumer and API): where exact quotas will live.

use worker::{durable_object, DurableObject, Env, Request, Response, Result, State};

use crate::error::Error;
use crate::http::problem;

#[durable_object]
pub struct ConsumerCounter {
    #[allow(dead_code)]
    state: State,
}

impl DurableObject for ConsumerCounter {
    fn new(state: State, _env: Env) -> Self {
        ConsumerCounter { state }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        problem(&Error::not_found(format!(
            "The counter has no operation at {}.",
            req.path()
        )))
    }
}
