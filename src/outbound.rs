//! Every call the gateway makes out (to an upstream, an owner's JWKS, a mail provider) goes through
//! one fetch with a deadline, cancelled when the deadline passes or the caller's signal fires.

use std::future::Future;
use std::time::Duration;

use futures_util::future::{select, Either};
use worker::{AbortController, AbortSignal, Delay, Fetch, Request, Response};

/// How an outbound call ended.
pub enum Fetched {
    Answered(Response),
    /// Not even the response head came within the deadline (the request was cancelled).
    TimedOut,
    /// It could not be sent or the connection failed.
    Failed(String),
}

/// `fut`'s output if it is ready within `ms`; `None` if not yet (`fut` is left running).
pub async fn within<F: Future + Unpin>(fut: &mut F, ms: u64) -> Option<F::Output> {
    let deadline = Delay::from(Duration::from_millis(ms));
    match select(fut, deadline).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}

/// Sends `request`, waiting at most `timeout_ms` for the response head. Without a `signal`, the
/// deadline cancels the request with a controller of its own; with the caller's signal, cancelling
/// (on `TimedOut` too) is the caller's, whose controller also ends a body still streaming.
pub async fn fetch(request: Request, timeout_ms: u64, signal: Option<AbortSignal>) -> Fetched {
    let own = AbortController::default();
    let signal = signal.unwrap_or_else(|| own.signal());
    let fetch = Fetch::Request(request);
    let mut sent = Box::pin(fetch.send_with_signal(&signal));
    match within(&mut sent, timeout_ms).await {
        Some(Ok(response)) => Fetched::Answered(response),
        Some(Err(e)) => Fetched::Failed(e.to_string()),
        None => {
            own.abort();
            Fetched::TimedOut
        }
    }
}
