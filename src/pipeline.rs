//! The data plane: every chat request's path through the gateway, as a short list of named phases.
//!
//! resolve the API → authenticate the consumer → read and check the chat body → forward upstream
//! (or to the built-in demo) → relay the answer, streamed event by event.

use std::time::Duration;

use futures_util::future::{select, Either};
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use wasm_bindgen::JsValue;
use worker::{
    AbortController, ByteStream, Context, Delay, Env, Fetch, Headers, Method, Request, RequestInit,
    Response,
};

use crate::auth::{extract_credential, key::ConsumerKey};
use crate::crypto;
use crate::error::Error;
use crate::http::{encryption_secret, header, json, now_ms, read_body};
use crate::model::Api;
use crate::store::d1;
use crate::stream::relay::Relay;
use crate::upstream::{self, demo::DemoReply, ChatRequest};

/// Chat bodies carry whole conversations; 2 MiB is generous and still bounded.
const CHAT_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// Upstream error bodies are read only this far.
const ERROR_BODY_LIMIT: usize = 16 * 1024;

/// Who is calling, as proven by the authenticate phase.
#[derive(Debug, Clone)]
pub struct Caller {
    pub consumer_id: String,
    pub key_id: String,
}

/// `POST /v1/{project}/{api}/chat/completions`.
pub async fn chat_completions(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
    api: &str,
) -> Result<Response, Error> {
    let db = d1::db(env)?;
    let api = resolve_api(&db, project, api).await?;
    let _caller = authenticate(&req, env, ctx, &db, &api).await?;
    let chat = read_chat(&mut req, &api).await?;
    forward(env, &api, chat).await
}

/// `GET /v1/{project}/{api}/models`: the API's models in OpenAI's list shape.
pub async fn list_models(
    req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
    api: &str,
) -> Result<Response, Error> {
    let db = d1::db(env)?;
    let api = resolve_api(&db, project, api).await?;
    authenticate(&req, env, ctx, &db, &api).await?;
    let data: Vec<Value> = api.models().iter()
        .map(|m| json!({"id": m, "object": "model", "created": api.created_at / 1000, "owned_by": api.project_slug}))
        .collect();
    json(200, &json!({"object": "list", "data": data}))
}

/// Phase 1 — resolve: the project and API named in the path, or 404.
async fn resolve_api(db: &worker::D1Database, project: &str, api: &str) -> Result<Api, Error> {
    d1::api_by_slugs(db, project, api).await
}

/// Phase 2 — authenticate: a consumer key from `Authorization: Bearer` or `X-API-Key`, accepted in
/// every auth mode. Malformed keys are refused before any lookup; the lookup reads D1 each time, so a
/// revoked key fails on the next request. Missing → 401 with `WWW-Authenticate`; disabled → 403.
async fn authenticate(
    req: &Request,
    env: &Env,
    ctx: &Context,
    db: &worker::D1Database,
    api: &Api,
) -> Result<Caller, Error> {
    let credential = extract_credential(
        header(req, "authorization").as_deref(),
        header(req, "x-api-key").as_deref(),
    )
    .map_err(Error::invalid_credential)?
    .ok_or_else(Error::missing_credential)?;
    let key = ConsumerKey::parse(&credential).map_err(|e| {
        if api.auth_mode == "consumer-key-only" {
            Error::invalid_credential(format!("Not a valid consumer key: {}.", e.describe()))
        } else {
            Error::invalid_credential(format!(
                "This API is in `{}` mode; only consumer keys are accepted by this gateway version, and this is not one ({}).",
                api.auth_mode, e.describe()))
        }
    })?;
    let found = d1::key_by_hash(db, &api.project_id, &key.hash())
        .await?
        .ok_or_else(|| {
            Error::invalid_credential("This consumer key is unknown or has been revoked.")
        })?;
    if found.consumer_status != "enabled" {
        return Err(Error::consumer_disabled());
    }
    let (env, key_id) = (env.clone(), found.key_id.clone());
    ctx.wait_until(async move {
        if let Ok(db) = d1::db(&env) {
            let _ = d1::touch_key(&db, &key_id, now_ms()).await;
        }
    });
    Ok(Caller {
        consumer_id: found.consumer_id,
        key_id: found.key_id,
    })
}

/// Phase 3 — read the chat body: bounded (413), valid JSON (400), an OpenAI Chat Completions shape,
/// with the API's default model filled in.
async fn read_chat(req: &mut Request, api: &Api) -> Result<ChatRequest, Error> {
    let bytes = read_body(req, CHAT_BODY_LIMIT).await?;
    let body: Value = crate::model::parse_body(&bytes)?;
    upstream::prepare_chat(body, api.default_model.as_deref())
}

/// Phase 4 — forward: the built-in demo answers in the worker; otherwise the gateway calls the API's
/// upstream itself with the owner's provider key (client credentials never travel upstream). No
/// answer within the API's timeout → 504; unreachable → 502.
async fn forward(env: &Env, api: &Api, chat: ChatRequest) -> Result<Response, Error> {
    if api.upstream_base_url == "demo" {
        return demo_answer(&chat);
    }
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set(
        "accept",
        if chat.stream {
            "text/event-stream"
        } else {
            "application/json"
        },
    )?;
    if let Some(sealed) = &api.upstream_key_enc {
        let secret = encryption_secret(env)?;
        let key = crypto::open(&secret, sealed)
            .ok_or_else(|| Error::misconfigured("The API's provider key cannot be decrypted; was ENCRYPTION_KEY changed? Set the key again."))?;
        headers.set("authorization", &format!("Bearer {key}"))?;
    }
    let body = Value::Object(chat.body.clone()).to_string();
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(JsValue::from_str(&body)));
    let request = Request::new_with_init(&upstream::chat_url(&api.upstream_base_url), &init)?;

    let controller = AbortController::default();
    let signal = controller.signal();
    let timeout_ms = api.timeout_ms();
    let fetch = Fetch::Request(request);
    let sent = Box::pin(fetch.send_with_signal(&signal));
    let deadline = Box::pin(Delay::from(Duration::from_millis(u64::from(timeout_ms))));
    let mut response = match select(sent, deadline).await {
        Either::Left((Ok(resp), _)) => resp,
        Either::Left((Err(e), _)) => {
            return Err(Error::upstream(format!(
                "The upstream could not be reached: {e}."
            )))
        }
        Either::Right(_) => {
            controller.abort();
            return Err(Error::upstream_timeout(timeout_ms));
        }
    };
    let status = response.status_code();
    if !(200..300).contains(&status) {
        let retry_after = response.headers().get("retry-after").ok().flatten();
        let body = read_limited(&mut response, ERROR_BODY_LIMIT).await;
        return Err(upstream::upstream_failure(status, &body, retry_after));
    }
    if chat.stream {
        relay_stream(response)
    } else {
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::upstream(format!("The upstream answer broke off: {e}.")))?;
        let out = Headers::new();
        out.set("content-type", "application/json")?;
        Ok(Response::from_bytes(bytes)?
            .with_status(200)
            .with_headers(out))
    }
}

async fn read_limited(response: &mut Response, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(mut body) = response.stream() {
        while let Some(Ok(chunk)) = body.next().await {
            out.extend_from_slice(&chunk);
            if out.len() >= limit {
                out.truncate(limit);
                break;
            }
        }
    }
    out
}

fn sse_headers() -> Result<Headers, Error> {
    let h = Headers::new();
    h.set("content-type", "text/event-stream; charset=utf-8")?;
    h.set("cache-control", "no-cache")?;
    h.set("x-accel-buffering", "no")?;
    Ok(h)
}

/// Phase 5 — relay: pass the upstream's SSE through event by event as it arrives (never buffered
/// whole). A cut or failed upstream ends the stream with an `error` event and `[DONE]`.
fn relay_stream(mut upstream: Response) -> Result<Response, Error> {
    let body: ByteStream = upstream.stream()?;
    let out = stream::unfold(
        (body, Relay::new(), false),
        |(mut body, mut relay, ended)| async move {
            if ended {
                return None;
            }
            loop {
                match body.next().await {
                    Some(Ok(chunk)) => {
                        let bytes = relay.on_chunk(&chunk);
                        if !bytes.is_empty() {
                            return Some((
                                Ok::<Vec<u8>, worker::Error>(bytes),
                                (body, relay, false),
                            ));
                        }
                    }
                    Some(Err(e)) => {
                        let bytes = relay.on_error(&Error::new(
                            502,
                            "upstream-stream-interrupted",
                            "The upstream stream ended early",
                            format!("The upstream connection failed mid-stream: {e}."),
                        ));
                        return Some((Ok(bytes), (body, relay, true)));
                    }
                    None => {
                        let bytes = relay.on_end();
                        return if bytes.is_empty() {
                            None
                        } else {
                            Some((Ok(bytes), (body, relay, true)))
                        };
                    }
                }
            }
        },
    );
    Ok(Response::from_stream(out)?.with_headers(sse_headers()?))
}

/// The built-in `demo` upstream: a deterministic reply, streamed token by token with small delays.
fn demo_answer(chat: &ChatRequest) -> Result<Response, Error> {
    let reply = DemoReply::new(
        &Value::Object(chat.body.clone()),
        &chat.model,
        now_ms() / 1000,
    );
    if !chat.stream {
        return json(200, &reply.completion());
    }
    let frames = stream::iter(reply.sse_frames()).then(|frame| async move {
        Delay::from(Duration::from_millis(upstream::demo::TOKEN_DELAY_MS)).await;
        Ok::<Vec<u8>, worker::Error>(frame.into_bytes())
    });
    Ok(Response::from_stream(frames)?.with_headers(sse_headers()?))
}
