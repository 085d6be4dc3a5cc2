//! Edge helpers over worker types: the one place errors become responses, JSON replies, bounded bodies,
//! the clock and randomness.

use futures_util::StreamExt;
use serde_json::Value;
use worker::wasm_bindgen_futures::JsFuture;
use worker::{console_error, js_sys, web_sys, Env, Headers, Request, Response, ResponseBody};

use crate::error::Error;

impl From<worker::Error> for Error {
    fn from(e: worker::Error) -> Self {
        // Storage and runtime errors are logged, not shown: they may name tables or internals.
        console_error!("runtime error: {e}");
        Error::internal("The gateway hit an internal error; it was logged. Try again.")
    }
}

/// Turns any gateway error into its problem+json response. Every error leaves through here.
pub fn problem(e: &Error) -> worker::Result<Response> {
    let (media, body) = e.body();
    let headers = Headers::new();
    headers.set("content-type", media)?;
    headers.set("cache-control", "no-store")?;
    for (name, value) in &e.headers {
        headers.set(name, value)?;
    }
    Ok(Response::from_bytes(body.to_string().into_bytes())?
        .with_status(e.status)
        .with_headers(headers))
}

pub fn json(status: u16, body: &Value) -> Result<Response, Error> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    Ok(Response::from_bytes(body.to_string().into_bytes())?
        .with_status(status)
        .with_headers(headers))
}

pub fn no_content() -> Result<Response, Error> {
    Ok(Response::empty()?.with_status(204))
}

pub fn header(req: &Request, name: &str) -> Option<String> {
    req.headers().get(name).ok().flatten()
}

/// Reads the request body, refusing more than `limit` bytes (413) without buffering past it.
pub async fn read_body(req: &mut Request, limit: usize) -> Result<Vec<u8>, Error> {
    if let Some(len) = header(req, "content-length").and_then(|v| v.trim().parse::<u64>().ok()) {
        if len > limit as u64 {
            return Err(Error::payload_too_large(limit));
        }
        // A declared length within the limit: one `arrayBuffer()` (the runtime enforces the length).
        return req
            .bytes()
            .await
            .map_err(|_| Error::invalid_request("The request body could not be read."));
    }
    let Ok(mut stream) = req.stream() else {
        return Ok(Vec::new()); // no body at all
    };
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|_| Error::invalid_request("The request body could not be read."))?;
        if body.len() + chunk.len() > limit {
            return Err(Error::payload_too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A fetched response's whole body in one `arrayBuffer()` call (no stream reader per chunk).
pub async fn response_bytes(response: &Response) -> worker::Result<Vec<u8>> {
    match response.body() {
        ResponseBody::Stream(stream) => {
            let whole = web_sys::Response::new_with_opt_readable_stream(Some(stream))?;
            let buffer = JsFuture::from(whole.array_buffer()?).await?;
            Ok(js_sys::Uint8Array::new(&buffer).to_vec())
        }
        ResponseBody::Body(bytes) => Ok(bytes.clone()),
        ResponseBody::Empty => Ok(Vec::new()),
    }
}

/// The path and query of a request, read from the runtime's already normalised URL string (no URL
/// parser in the WASM: `url` and its Unicode tables are left out).
pub struct Target {
    pub path: String,
    query: String,
}

impl Target {
    pub fn of(req: &Request) -> Target {
        let url = req.inner().url();
        let (path, query) = crate::router::path_and_query(&url);
        Target {
            path: path.to_string(),
            query: query.to_string(),
        }
    }

    /// The decoded query pairs, in order.
    pub fn query_pairs(&self) -> impl Iterator<Item = (String, String)> + '_ {
        form_urlencoded::parse(self.query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
    }

    /// The first value of query parameter `name`.
    pub fn query(&self, name: &str) -> Option<String> {
        self.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// A handler's future on the heap: a router's `match` then holds one pointer instead of every
/// handler's state inline (smaller code and stack; each handler is polled by its own function).
pub fn boxed<'a, T>(
    f: impl std::future::Future<Output = T> + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>> {
    Box::pin(f)
}

pub fn now_ms() -> i64 {
    worker::Date::now().as_millis() as i64
}

/// Fills `buf` from the platform CSPRNG (crypto.getRandomValues).
pub fn random(buf: &mut [u8]) -> Result<(), Error> {
    getrandom::getrandom(buf).map_err(|_| Error::internal("No randomness available."))
}

/// Runs a generator that draws randomness, failing if the platform could not supply it.
pub fn with_random<T>(generate: impl FnOnce(&mut dyn FnMut(&mut [u8])) -> T) -> Result<T, Error> {
    let mut failed = false;
    let value = generate(&mut |buf: &mut [u8]| {
        if getrandom::getrandom(buf).is_err() {
            failed = true;
        }
    });
    if failed {
        return Err(Error::internal("No randomness available."));
    }
    Ok(value)
}

/// The token of `Authorization: Bearer <token>` (or `bearer`), trimmed.
pub fn bearer(req: &Request) -> Option<String> {
    let value = header(req, "authorization")?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim().to_string())
}

thread_local! {
    /// Secrets and vars read in this isolate: they change only with a new deployment (a new
    /// isolate), and reading one from the environment crosses into JavaScript each time.
    static SECRETS: std::cell::RefCell<std::collections::HashMap<String, Option<String>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// A secret (or, locally, a plain var) by name; empty counts as unset.
pub fn secret(env: &Env, name: &str) -> Option<String> {
    if let Some(known) = SECRETS.with(|m| m.borrow().get(name).cloned()) {
        return known;
    }
    let value = env
        .secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()
        .filter(|s| !s.is_empty());
    SECRETS.with(|m| m.borrow_mut().insert(name.to_string(), value.clone()));
    value
}

/// The keys that open provider keys: ENCRYPTION_KEY and, after a rotation, ENCRYPTION_KEY_PREVIOUS.
pub fn keyring(env: &Env) -> Result<crate::crypto::Keyring, Error> {
    Ok(crate::crypto::Keyring {
        current: encryption_secret(env)?,
        previous: secret(env, "ENCRYPTION_KEY_PREVIOUS").filter(|s| s.len() >= 16),
    })
}

/// The key provider keys are encrypted under at rest.
pub fn encryption_secret(env: &Env) -> Result<String, Error> {
    secret(env, "ENCRYPTION_KEY").filter(|s| s.len() >= 16).ok_or_else(|| Error::misconfigured(
        "Provider keys are stored encrypted; set the ENCRYPTION_KEY secret (at least 16 characters) with `wrangler secret put ENCRYPTION_KEY`."))
}
