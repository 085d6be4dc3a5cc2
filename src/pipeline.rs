//! The data plane: every chat request's path through the gateway, as a short list of named phases.
//!
//! resolve the API → authenticate the consumer → read the chat body → admit (plan, model, quota and
//! rate, reserved in the consumer's counter) → forward upstream (or to the built-in demo) → relay the
//! answer, metered event by event → settle the real usage and file the usage record.

use std::pin::Pin;
use std::time::Duration;

use futures_channel::oneshot;
use futures_util::future::{select, Either};
use futures_util::{stream, Stream, StreamExt};
use serde_json::{json, Value};
use wasm_bindgen::JsValue;
use worker::{
    AbortController, Context, D1Database, Delay, Env, Fetch, Headers, Method, Request, RequestInit,
    Response,
};

use crate::auth::cidr;
use crate::auth::config::CredentialSource;
use crate::auth::consumer_jwt;
use crate::auth::jwks_cache::{looks_like_jwt, peek_kid};
use crate::auth::tokens::{classify, kid_prefix, SluiceToken};
use crate::auth::{extract_credential, key::ConsumerKey};
use crate::crypto;
use crate::error::Error;
use crate::http::{encryption_secret, header, json, now_ms, read_body, with_random};
use crate::identity::{client_ip, verify_byo, verify_sluice_token};
use crate::ids::new_id;
use crate::limits::counter::{Refusal, Reservation, Window};
use crate::limits::headers::rate_limit_headers;
use crate::limits::ops::{CounterReply, CounterRequest};
use crate::limits::plan::{Limits, Plan};
use crate::model::Api;
use crate::model::AuthMode;
use crate::store::{counter_do as counter, d1};
use crate::stream::relay::{Next, Relay, Usage};
use crate::upstream::{self, demo::DemoReply, ChatRequest};
use crate::usage::UsageRecord;

/// Chat bodies carry whole conversations; 2 MiB is generous and still bounded.
const CHAT_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// Upstream error bodies are read only this far.
const ERROR_BODY_LIMIT: usize = 16 * 1024;
/// Completion tokens reserved up front for a request without max_tokens, and added per extension.
const TOKEN_STEP: u64 = 128;

/// Who is calling, as proven by the authenticate phase.
#[derive(Debug, Clone)]
pub struct Caller {
    pub consumer_id: String,
    pub key_id: Option<String>,
    pub session_id: Option<String>,
}

/// `POST /v1/{project}/{api}/chat/completions`.
pub async fn chat_completions(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
    api: &str,
) -> Result<Response, Error> {
    let started = now_ms();
    let db = d1::db(env)?;
    let (api, caller, plan) = resolve_and_authenticate(&req, env, ctx, &db, project, api).await?;
    let mut chat = read_chat(&mut req, &api).await?;
    let passthrough = passthrough_credential(&req, &api)?;
    let admission = admit(env, &db, &api, &caller, plan, &mut chat, started).await?;
    let rate_headers = rate_limit_headers(&admission.windows, started);
    match forward(env, &api, &chat, passthrough).await {
        Err(e) => {
            admission
                .settle(&Outcome {
                    status: e.status,
                    usage: None,
                    completion_estimate: 0,
                    ttft_ms: None,
                })
                .await;
            Err(e.with_headers(rate_headers))
        }
        Ok(Answer::Json(bytes)) => {
            let answer: Option<Value> = serde_json::from_slice(&bytes).ok();
            let usage = answer.as_ref().and_then(Usage::from_json);
            let completion_estimate = answer.as_ref().map_or(0, upstream::completion_estimate);
            admission
                .settle(&Outcome {
                    status: 200,
                    usage,
                    completion_estimate,
                    ttft_ms: None,
                })
                .await;
            let headers = response_headers("application/json", &rate_headers)?;
            Ok(Response::from_bytes(bytes)?
                .with_status(200)
                .with_headers(headers))
        }
        Ok(Answer::Stream(body, abort)) => {
            let headers = response_headers("text/event-stream; charset=utf-8", &rate_headers)?;
            headers.set("cache-control", "no-cache")?;
            headers.set("x-accel-buffering", "no")?;
            let strip_usage = !admission.client_wants_usage;
            let out = relay(ctx, admission, strip_usage, body, abort);
            Ok(Response::from_stream(out)?.with_headers(headers))
        }
    }
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

/// `GET /v1/{project}/{api}/usage`: the caller's plan, limits, and what is used and left in each window.
pub async fn consumer_usage(
    req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
    api: &str,
) -> Result<Response, Error> {
    let now = now_ms();
    let db = d1::db(env)?;
    let api = resolve_api(&db, project, api).await?;
    let caller = authenticate(&req, env, ctx, &db, &api).await?;
    let plan = d1::plan_for(&db, &api.id, &caller.consumer_id).await?;
    let reply = counter::call(
        env,
        &api.id,
        &caller.consumer_id,
        &CounterRequest::Status {
            now,
            limits: plan.limits.clone(),
        },
    )
    .await?;
    let CounterReply::Status { windows } = reply else {
        return Err(Error::internal(
            "The counter answered a status request with something else.",
        ));
    };
    let mut windows_json = serde_json::Map::new();
    for w in &windows {
        windows_json.insert(w.scope.as_str().into(), json!({
            "limit": w.limit, "used": w.used, "remaining": w.remaining, "reset": crate::time::rfc3339(w.reset_at),
        }));
    }
    let body = json!({
        "consumer_id": caller.consumer_id,
        "plan": {"name": plan.name, "models": plan.models, "limits": plan.limits},
        "windows": windows_json,
    });
    let headers = response_headers("application/json", &rate_limit_headers(&windows, now))?;
    Ok(Response::from_bytes(body.to_string().into_bytes())?.with_headers(headers))
}

fn response_headers(content_type: &str, extra: &[(String, String)]) -> Result<Headers, Error> {
    let headers = Headers::new();
    headers.set("content-type", content_type)?;
    for (k, v) in extra {
        headers.set(k, v)?;
    }
    Ok(headers)
}

/// Phase 1 — resolve: the project and API named in the path, or 404.
async fn resolve_api(db: &D1Database, project: &str, api: &str) -> Result<Api, Error> {
    d1::api_by_slugs(db, project, api).await
}

/// Phases 1 and 2 together. A consumer key in `Authorization: Bearer` or `X-API-Key` (the common
/// case) takes the fast path: API, key and plan come back from one D1 round trip, and the same checks
/// as `authenticate` apply. Anything else goes through `resolve_api` and `authenticate`.
async fn resolve_and_authenticate(
    req: &Request,
    env: &Env,
    ctx: &Context,
    db: &D1Database,
    project: &str,
    api: &str,
) -> Result<(Api, Caller, Option<Plan>), Error> {
    let sent = extract_credential(
        header(req, "authorization").as_deref(),
        header(req, "x-api-key").as_deref(),
    )
    .ok()
    .flatten();
    let Some(key) = sent.as_deref().and_then(|c| ConsumerKey::parse(c).ok()) else {
        let api = resolve_api(db, project, api).await?;
        let caller = authenticate(req, env, ctx, db, &api).await?;
        return Ok((api, caller, None));
    };
    let (found_api, found_key, plan) = d1::api_key_and_plan(db, project, api, &key.hash()).await?;
    let api = found_api.ok_or_else(|| {
        Error::not_found(format!("There is no API `{api}` in project `{project}`."))
    })?;
    if api.credential().source()? != CredentialSource::Authorization {
        // The API reads its credential elsewhere: the general path decides.
        let caller = authenticate(req, env, ctx, db, &api).await?;
        return Ok((api, caller, None));
    }
    check_ip(req, &api)?;
    let found = found_key.ok_or_else(|| {
        Error::invalid_credential("This consumer key is unknown or has been revoked.")
    })?;
    let caller = accept_key(env, ctx, found)?;
    Ok((api, caller, plan))
}

/// The API's IP allowlist (403 outside it).
fn check_ip(req: &Request, api: &Api) -> Result<(), Error> {
    let allowlist = crate::auth::config::parse_allowlist(&api.ip_allowlist())?;
    if !cidr::allowed(&allowlist, client_ip(req).as_deref()) {
        return Err(Error::new(
            403,
            "ip-not-allowed",
            "Your IP address is not allowed",
            "This API only accepts requests from the owner's allowed networks.",
        ));
    }
    Ok(())
}

/// A live key's consumer must be enabled (403); its use is noted after the response.
fn accept_key(env: &Env, ctx: &Context, found: d1::KeyMatch) -> Result<Caller, Error> {
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
        key_id: Some(found.key_id),
        session_id: None,
    })
}

/// Phase 2 — authenticate. First the API's IP allowlist (403 outside it). Then the credential, from
/// where the API reads it (Bearer by default, or a header or query parameter; `X-API-Key` always):
/// - a consumer key (`ask_live_...`) is accepted in every mode: malformed keys are refused before any
///   lookup, and the lookup reads D1 each time, so a revoked key fails on the next request;
/// - a token Sluice signed for the project: a key-exchange token (valid while its key is), or a
///   signed-in user's access token (managed mode only; its session must stand);
/// - in byo-jwt mode, the owner's JWT, checked against their JWKS; the configured claim is the consumer.
///
/// 401 when the credential is missing, malformed, expired or revoked; 403 when it is valid but not
/// allowed here (disabled consumer, IP, mode).
async fn authenticate(
    req: &Request,
    env: &Env,
    ctx: &Context,
    db: &D1Database,
    api: &Api,
) -> Result<Caller, Error> {
    check_ip(req, api)?;
    let credential = read_credential(req, api)?.ok_or_else(Error::missing_credential)?;
    if credential.starts_with(crate::auth::key::PREFIX) {
        return authenticate_key(env, ctx, db, api, &credential).await;
    }
    if !looks_like_jwt(&credential) {
        return Err(Error::invalid_credential(match api.mode() {
            AuthMode::ConsumerKeyOnly => "Send a consumer key (ask_live_...).",
            _ => "Send a consumer key (ask_live_...) or a JWT.",
        }));
    }
    let now = now_ms();
    let project = d1::project_by_slug(db, &api.project_slug).await?;
    let is_ours =
        peek_kid(&credential).is_some_and(|kid| kid.starts_with(&kid_prefix(&project.slug)));
    if is_ours {
        let claims = verify_sluice_token(env, &project, &credential, now)?;
        return match classify(&claims) {
            Some(SluiceToken::Exchange {
                consumer_id,
                key_id,
            }) => {
                let live = d1::live_key(db, &project.id, &key_id)
                    .await?
                    .ok_or_else(|| {
                        Error::invalid_credential(
                            "The consumer key this token was issued for has been revoked.",
                        )
                    })?;
                if live.consumer_status != "enabled" || live.consumer_id != consumer_id {
                    return Err(Error::consumer_disabled());
                }
                Ok(Caller {
                    consumer_id,
                    key_id: Some(key_id),
                    session_id: None,
                })
            }
            Some(SluiceToken::Access {
                consumer_id,
                session_id,
            }) => {
                if api.mode() != AuthMode::Managed {
                    return Err(mode_mismatch(api, "a signed-in user's token"));
                }
                crate::identity::ensure_session_live(env, &session_id).await?;
                let consumer = d1::find_consumer(db, &project.id, &consumer_id)
                    .await?
                    .ok_or_else(|| {
                        Error::invalid_credential("The signed-in user no longer exists.")
                    })?;
                if consumer.status != "enabled" {
                    return Err(Error::consumer_disabled());
                }
                Ok(Caller {
                    consumer_id,
                    key_id: None,
                    session_id: Some(session_id),
                })
            }
            None => Err(Error::invalid_credential(
                "This token is not an access token.",
            )),
        };
    }
    if let Some(caller) = authenticate_consumer_jwt(env, db, &project, &credential, now).await? {
        return Ok(caller);
    }
    match (api.mode(), api.byo_jwt()) {
        (AuthMode::ByoJwt, Some(config)) => {
            let user_id = verify_byo(env, &api.id, &config, &credential, now).await?;
            Ok(Caller {
                consumer_id: user_id,
                key_id: None,
                session_id: None,
            })
        }
        (AuthMode::ByoJwt, None) => Err(Error::misconfigured(
            "This API is in byo-jwt mode but has no JWKS configured.",
        )),
        _ => Err(Error::invalid_credential(format!(
            "This JWT was not issued by this gateway for project `{}`.",
            project.slug
        ))),
    }
}

/// The client's credential, when the API passes it on to the upstream (off by default: otherwise no
/// client header ever reaches the upstream).
fn passthrough_credential(
    req: &Request,
    api: &Api,
) -> Result<Option<(CredentialSource, String)>, Error> {
    let config = api.credential();
    if !config.passthrough {
        return Ok(None);
    }
    Ok(read_credential(req, api)?.map(|c| {
        (
            config.source().unwrap_or(CredentialSource::Authorization),
            c,
        )
    }))
}

/// A consumer's own JWT (seed 004), valid in every mode like a consumer key: the credential named by a
/// payload claim is looked up, then the token must verify with that credential's key alone.
/// `None` when no credential claims the token.
async fn authenticate_consumer_jwt(
    env: &Env,
    db: &D1Database,
    project: &crate::model::Project,
    token: &str,
    now: i64,
) -> Result<Option<Caller>, Error> {
    let candidates = consumer_jwt::candidate_values(token);
    let values: Vec<String> = candidates.iter().map(|(_, v)| v.clone()).collect();
    let found = d1::jwt_credentials_for(db, &project.id, &values).await?;
    let Some(credential) = found.into_iter().find(|c| {
        candidates
            .iter()
            .any(|(k, v)| *k == c.claim_name && *v == c.claim_value)
    }) else {
        return Ok(None);
    };
    let keys = match (&credential.secret_enc, &credential.jwks_json) {
        (Some(sealed), _) => {
            let secret = crypto::open(&encryption_secret(env)?, sealed).ok_or_else(|| {
                Error::misconfigured(
                    "A consumer's JWT key cannot be decrypted; was ENCRYPTION_KEY changed?",
                )
            })?;
            vec![crate::auth::jwt::hs256_key(secret.as_bytes(), None)]
        }
        (None, Some(jwks)) => crate::auth::jwt::parse_jwks(jwks)
            .map_err(|e| Error::invalid_credential(e.describe()))?,
        (None, None) => return Ok(None),
    };
    consumer_jwt::verify(token, &keys, now / 1000).map_err(crate::identity::token_error)?;
    if credential.consumer_status.as_deref() != Some("enabled") {
        return Err(Error::consumer_disabled());
    }
    Ok(Some(Caller {
        consumer_id: credential.consumer_id,
        key_id: Some(credential.id),
        session_id: None,
    }))
}

fn mode_mismatch(api: &Api, what: &str) -> Error {
    Error::new(
        403,
        "auth-mode-mismatch",
        "This credential is not accepted in this API's auth mode",
        format!(
            "API `{}` is in `{}` mode, which does not accept {what}.",
            api.slug, api.auth_mode
        ),
    )
}

/// The credential from where the API says to read it; `X-API-Key` is always accepted for keys.
fn read_credential(req: &Request, api: &Api) -> Result<Option<String>, Error> {
    let x_api_key = header(req, "x-api-key");
    match api.credential().source()? {
        CredentialSource::Authorization => extract_credential(
            header(req, "authorization").as_deref(),
            x_api_key.as_deref(),
        )
        .map_err(Error::invalid_credential),
        CredentialSource::Header(name) => Ok(header(req, &name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .or(x_api_key)),
        CredentialSource::Query(name) => {
            let url = req.url()?;
            let found = url
                .query_pairs()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.into_owned())
                .filter(|v| !v.is_empty());
            Ok(found.or(x_api_key))
        }
    }
}

async fn authenticate_key(
    env: &Env,
    ctx: &Context,
    db: &D1Database,
    api: &Api,
    credential: &str,
) -> Result<Caller, Error> {
    let key = ConsumerKey::parse(credential).map_err(|e| {
        Error::invalid_credential(format!("Not a valid consumer key: {}.", e.describe()))
    })?;
    let found = d1::key_by_hash(db, &api.project_id, &key.hash())
        .await?
        .ok_or_else(|| {
            Error::invalid_credential("This consumer key is unknown or has been revoked.")
        })?;
    accept_key(env, ctx, found)
}

/// Phase 3 — read the chat body: bounded (413), valid JSON (400), an OpenAI Chat Completions shape,
/// with the API's default model filled in.
async fn read_chat(req: &mut Request, api: &Api) -> Result<ChatRequest, Error> {
    let bytes = read_body(req, CHAT_BODY_LIMIT).await?;
    let body: Value = crate::model::parse_body(&bytes)?;
    upstream::prepare_chat(body, api.default_model.as_deref())
}

/// An admitted request: its lease in the consumer's counter and what settling it needs.
struct Admission {
    env: Env,
    api_id: String,
    consumer_id: String,
    lease_id: String,
    limits: Limits,
    plan_name: String,
    windows: Vec<Window>,
    /// Completion tokens granted so far (the stream's budget when the plan limits tokens).
    granted: u64,
    prompt_estimate: u64,
    client_wants_usage: bool,
    record: UsageRecord,
}

/// How a request ended, for settling its lease.
struct Outcome {
    status: u16,
    usage: Option<Usage>,
    completion_estimate: u64,
    ttft_ms: Option<u64>,
}

/// Phase 4 — admit: the consumer's plan (subscription or the API's default, read fresh so changes
/// apply at once), its model list (403), its max_tokens cap (forced upstream), then one call to the
/// consumer's counter that checks every window and reserves the tokens (429 if any refuses). If the
/// counter cannot be reached the request is refused with 503, never let through unmetered.
async fn admit(
    env: &Env,
    db: &D1Database,
    api: &Api,
    caller: &Caller,
    prefetched: Option<Plan>,
    chat: &mut ChatRequest,
    now: i64,
) -> Result<Admission, Error> {
    let plan: Plan = match prefetched {
        Some(plan) => plan,
        None => d1::plan_for(db, &api.id, &caller.consumer_id).await?,
    };
    plan.check_model(&chat.model)?;
    let metering = upstream::apply_plan(chat, plan.limits.max_tokens_per_request)?;
    let lease_id = with_random(|r| new_id("req", r))?;
    let reservation = Reservation {
        prompt: metering.prompt_estimate,
        completion: metering.max_tokens.unwrap_or(TOKEN_STEP),
        flexible: metering.max_tokens.is_none(),
    };
    let op = CounterRequest::Admit {
        now,
        limits: plan.limits.clone(),
        lease_id: lease_id.clone(),
        reservation,
        stream: chat.stream,
    };
    let (granted, windows) = match counter::call(env, &api.id, &caller.consumer_id, &op).await? {
        CounterReply::Admitted { granted, windows } => (granted, windows),
        CounterReply::Refused { refusal, windows } => {
            return Err(refusal
                .to_error(&plan.name)
                .with_headers(rate_limit_headers(&windows, now)));
        }
        _ => {
            return Err(Error::internal(
                "The counter answered an admission with something else.",
            ))
        }
    };
    let record = UsageRecord {
        id: lease_id.clone(),
        created_at: now,
        project_id: api.project_id.clone(),
        api_id: api.id.clone(),
        consumer_id: caller.consumer_id.clone(),
        key_id: caller.key_id.clone(),
        session_id: caller.session_id.clone(),
        model: chat.model.clone(),
        plan: plan.name.clone(),
        ..UsageRecord::default()
    };
    Ok(Admission {
        env: env.clone(),
        api_id: api.id.clone(),
        consumer_id: caller.consumer_id.clone(),
        lease_id,
        limits: plan.limits,
        plan_name: plan.name,
        windows,
        granted,
        prompt_estimate: metering.prompt_estimate,
        client_wants_usage: metering.client_wants_usage,
        record,
    })
}

impl Admission {
    /// Whether the plan limits tokens, so a stream must stay within its granted budget.
    fn meters_tokens(&self) -> bool {
        self.limits.tokens_per_day.is_some() || self.limits.tokens_per_month.is_some()
    }

    /// The settle operation: real usage when the upstream reported it, else the gateway's estimate.
    fn settle_op(&self, outcome: &Outcome) -> CounterRequest {
        let now = now_ms();
        let mut record = self.record.clone();
        match outcome.usage {
            Some(u) => {
                record.prompt_tokens = u.prompt_tokens;
                record.completion_tokens = u.completion_tokens;
                record.total_tokens = u.total_tokens;
            }
            None => {
                let admitted_without_upstream =
                    outcome.status >= 400 && outcome.completion_estimate == 0;
                record.prompt_tokens = if admitted_without_upstream {
                    0
                } else {
                    self.prompt_estimate
                };
                record.completion_tokens = outcome.completion_estimate;
                record.total_tokens = record.prompt_tokens + record.completion_tokens;
                record.estimated = !admitted_without_upstream;
            }
        }
        record.status = outcome.status;
        record.latency_ms = (now - self.record.created_at).max(0) as u64;
        record.ttft_ms = outcome.ttft_ms;
        CounterRequest::Settle {
            now,
            lease_id: self.lease_id.clone(),
            record,
        }
    }

    /// Settles the lease and files the usage record before the client sees the end of the answer, so
    /// a finished answer always has its usage stored durably (a failure is logged; the lease then
    /// expires and counts its reservation).
    async fn settle(&self, outcome: &Outcome) {
        let op = self.settle_op(outcome);
        if let Err(e) = counter::call(&self.env, &self.api_id, &self.consumer_id, &op).await {
            worker::console_error!("settle failed for {}: {}", self.lease_id, e.detail);
        }
    }
}

type Body = Pin<Box<dyn Stream<Item = Result<Vec<u8>, String>>>>;

enum Answer {
    Json(Vec<u8>),
    /// A streamed answer and, for a real upstream, the switch that cancels it.
    Stream(Body, Option<AbortController>),
}

/// Phase 5 — forward: the built-in demo answers in the worker; otherwise the gateway calls the API's
/// upstream itself with the owner's provider key (client credentials never travel upstream). No
/// answer within the API's timeout → 504; unreachable → 502.
async fn forward(
    env: &Env,
    api: &Api,
    chat: &ChatRequest,
    passthrough: Option<(CredentialSource, String)>,
) -> Result<Answer, Error> {
    if api.upstream_base_url == "demo" {
        return Ok(demo_answer(chat));
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
    let mut url = upstream::chat_url(&api.upstream_base_url);
    match passthrough {
        // The provider key, when set, keeps the Authorization header.
        Some((CredentialSource::Authorization, c)) if api.upstream_key_enc.is_none() => {
            headers.set("authorization", &format!("Bearer {c}"))?
        }
        Some((CredentialSource::Header(name), c)) => headers.set(&name, &c)?,
        Some((CredentialSource::Query(name), c)) => {
            let pair: String = form_urlencoded::Serializer::new(String::new())
                .append_pair(&name, &c)
                .finish();
            url = format!("{url}?{pair}");
        }
        _ => {}
    }
    let body = Value::Object(chat.body.clone()).to_string();
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(JsValue::from_str(&body)));
    let request = Request::new_with_init(&url, &init)?;

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
        let body = response
            .stream()?
            .map(|chunk| chunk.map_err(|e| e.to_string()));
        Ok(Answer::Stream(Box::pin(body), Some(controller)))
    } else {
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::upstream(format!("The upstream answer broke off: {e}.")))?;
        Ok(Answer::Json(bytes))
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

/// The built-in `demo` upstream: a deterministic reply, streamed token by token with small delays.
fn demo_answer(chat: &ChatRequest) -> Answer {
    let reply = DemoReply::new(
        &Value::Object(chat.body.clone()),
        &chat.model,
        now_ms() / 1000,
    );
    if !chat.stream {
        return Answer::Json(reply.completion().to_string().into_bytes());
    }
    let frames = stream::iter(reply.sse_frames()).then(|frame| async move {
        Delay::from(Duration::from_millis(upstream::demo::TOKEN_DELAY_MS)).await;
        Ok::<Vec<u8>, String>(frame.into_bytes())
    });
    Answer::Stream(Box::pin(frames), None)
}

/// Phase 6 — relay and meter: the upstream's SSE goes out event by event as it arrives. When the plan
/// limits tokens, every event is checked against the granted budget; past it the counter is asked
/// for more, and if none is left the stream ends cleanly with a `quota-exceeded` error event and
/// `[DONE]`. However the stream ends, the upstream is cancelled if still running and the lease is
/// settled once: before the final bytes when the stream ends (done, cut, quota), or from the
/// runtime's wait_until when the client goes away.
fn relay(
    ctx: &Context,
    admission: Admission,
    strip_usage: bool,
    body: Body,
    abort: Option<AbortController>,
) -> impl Stream<Item = Result<Vec<u8>, worker::Error>> {
    let (tx, rx) = oneshot::channel::<CounterRequest>();
    let (env, api_id, consumer_id) = (
        admission.env.clone(),
        admission.api_id.clone(),
        admission.consumer_id.clone(),
    );
    ctx.wait_until(async move {
        if let Ok(op) = rx.await {
            if let Err(e) = counter::call(&env, &api_id, &consumer_id, &op).await {
                worker::console_error!("settle failed: {}", e.detail);
            }
        }
    });
    let budget = admission.meters_tokens().then_some(admission.granted);
    let state = MeteredStream {
        body,
        relay: Relay::new(strip_usage, budget),
        admission,
        settle: Some(tx),
        abort,
        ttft_ms: None,
        end_status: None,
        done: false,
    };
    stream::unfold(state, |mut s| async move {
        s.next_bytes().await.map(|bytes| (Ok(bytes), s))
    })
}

struct MeteredStream {
    body: Body,
    relay: Relay,
    admission: Admission,
    settle: Option<oneshot::Sender<CounterRequest>>,
    abort: Option<AbortController>,
    ttft_ms: Option<u64>,
    /// Set when the gateway itself ends the stream (quota spent, counter gone).
    end_status: Option<u16>,
    done: bool,
}

impl MeteredStream {
    async fn next_bytes(&mut self) -> Option<Vec<u8>> {
        while !self.done {
            let bytes = match self.body.next().await {
                Some(Ok(chunk)) => {
                    let (mut bytes, mut next) = self.relay.on_chunk(&chunk);
                    while next == Next::NeedBudget && !self.done {
                        let (more, after) = self.extend_budget().await;
                        bytes.extend(more);
                        next = after;
                    }
                    bytes
                }
                Some(Err(e)) => self.relay.on_error(&Error::new(
                    502,
                    "upstream-stream-interrupted",
                    "The upstream stream ended early",
                    format!("The upstream connection failed mid-stream: {e}."),
                )),
                None => self.relay.on_end(),
            };
            if self.relay.is_finished() && !self.done {
                let status = self
                    .end_status
                    .unwrap_or(if bytes.is_empty() { 200 } else { 502 });
                self.finish(status).await;
            }
            if !bytes.is_empty() {
                if self.ttft_ms.is_none() {
                    self.ttft_ms =
                        Some((now_ms() - self.admission.record.created_at).max(0) as u64);
                }
                return Some(bytes);
            }
        }
        None
    }

    /// Asks the counter for more completion tokens; none left ends the stream with `quota-exceeded`.
    async fn extend_budget(&mut self) -> (Vec<u8>, Next) {
        let now = now_ms();
        let a = &self.admission;
        let op = CounterRequest::Extend {
            now,
            limits: a.limits.clone(),
            lease_id: a.lease_id.clone(),
            want: TOKEN_STEP,
        };
        match counter::call(&a.env, &a.api_id, &a.consumer_id, &op).await {
            Ok(CounterReply::Extended { granted, .. }) if granted > 0 => self.relay.grant(granted),
            Ok(CounterReply::Extended { windows, .. }) => {
                let error = Refusal::exhausted(&windows, now).to_error(&a.plan_name);
                self.end_status = Some(429);
                (self.relay.on_error(&error), Next::Read)
            }
            Ok(_) | Err(_) => {
                self.end_status = Some(503);
                (self.relay.on_error(&Error::new(503, "counter-unavailable", "Quota counters are unavailable",
                    "The token budget could not be extended, so the stream was ended rather than continue unmetered.")), Next::Read)
            }
        }
    }

    /// The stream is over: cancel the upstream if it is still sending, and settle before the last
    /// bytes go out (so the client never sees an end whose usage was not stored).
    async fn finish(&mut self, status: u16) {
        self.done = true;
        if status != 200 {
            if let Some(abort) = self.abort.take() {
                abort.abort();
            }
        }
        // Taking the channel means Drop will not settle a second time.
        if self.settle.take().is_some() {
            self.admission.settle(&self.outcome(status)).await;
        }
    }

    fn outcome(&self, status: u16) -> Outcome {
        Outcome {
            status,
            usage: self.relay.usage(),
            completion_estimate: self.relay.completion_estimate(),
            ttft_ms: self.ttft_ms,
        }
    }
}

impl Drop for MeteredStream {
    /// The client went away mid-stream (the runtime dropped the body): cancel the upstream and settle
    /// with what was delivered, marked estimated. 499 is the conventional "client closed request".
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(abort) = self.abort.take() {
            abort.abort();
        }
        if let Some(tx) = self.settle.take() {
            let _ = tx.send(self.admission.settle_op(&self.outcome(499)));
        }
    }
}
