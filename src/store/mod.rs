//! The edge's storage adapters: D1 repositories and the per-consumer counter Durable Object.

pub mod auth_do;
pub mod counter_do;
pub mod d1;
pub mod kv;

use serde::{de::DeserializeOwned, Serialize};
use wasm_bindgen::JsValue;
use worker::{Env, Method, Request, RequestInit};

use crate::error::Error;

/// Sends one JSON operation to the Durable Object `name` of namespace `binding` and reads its JSON
/// reply. Any failure becomes `unavailable(why)`: each caller says what that means for it.
pub async fn call_object<Op: Serialize, Reply: DeserializeOwned>(
    env: &Env,
    binding: &str,
    name: &str,
    op: &Op,
    unavailable: fn(String) -> Error,
) -> Result<Reply, Error> {
    let fail = |e: &dyn std::fmt::Display| unavailable(e.to_string());
    let namespace = env.durable_object(binding).map_err(|e| fail(&e))?;
    let stub = namespace
        .id_from_name(name)
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
    response.json::<Reply>().await.map_err(|e| fail(&e))
}
