//! Every call the gateway makes out (to an upstream, an owner's JWKS, a mail provider) goes through
//! one fetch with a deadline, cancelled when the deadline passes or the caller's signal fires.

use std::future::Future;
use std::time::Duration;

use futures_util::future::{select, Either};
use worker::wasm_bindgen::JsCast;
use worker::wasm_bindgen_futures::JsFuture;
use worker::{web_sys, AbortController, AbortSignal, Delay, Fetch, Fetcher, Request, Response};

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

/// `fetch`, through `via` when given: an `mtls_certificates` binding's fetcher, which presents its
/// client certificate to the upstream (the request's URL still says where it goes).
pub async fn fetch_via(
    via: Option<&Fetcher>,
    request: Request,
    timeout_ms: u64,
    signal: Option<AbortSignal>,
) -> Fetched {
    let Some(fetcher) = via else {
        return fetch(request, timeout_ms, signal).await;
    };
    let own = AbortController::default();
    let signal = signal.unwrap_or_else(|| own.signal());
    let init = web_sys::RequestInit::new();
    init.set_signal(Some(&signal));
    let binding: &worker::worker_sys::Fetcher = fetcher.as_ref().unchecked_ref();
    let promise = match binding.fetch_with_init(request.inner(), &init) {
        Ok(p) => p,
        Err(e) => return Fetched::Failed(js_error(&e)),
    };
    let mut sent = Box::pin(JsFuture::from(promise));
    match within(&mut sent, timeout_ms).await {
        Some(Ok(answer)) => match answer.dyn_into::<web_sys::Response>() {
            Ok(response) => Fetched::Answered(Response::from(response)),
            Err(_) => {
                Fetched::Failed("The binding answered something other than a Response.".into())
            }
        },
        Some(Err(e)) => Fetched::Failed(js_error(&e)),
        None => {
            own.abort();
            Fetched::TimedOut
        }
    }
}

fn js_error(e: &worker::wasm_bindgen::JsValue) -> String {
    e.dyn_ref::<worker::js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| "The binding's fetch failed.".into())
}
