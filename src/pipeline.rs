//! The data plane: every chat request's path through the gateway, as a short list of named phases.
//!
//! resolve the API → authenticate the consumer (`authenticate`) → read and check the chat body →
//! admit (plan, model, price, and the worst case reserved in the consumer's counter, which grants the
//! completion cap) → forward upstream with that cap (or to the built-in demo) → relay the answer,
//! metered event by event → settle what was really used, exactly once (`admission::Lease`).

use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{stream, Stream, StreamExt};
use serde_json::{json, Value};
use wasm_bindgen::JsValue;
use worker::{
    AbortController, AbortSignal, Context, Delay, Env, Fetcher, Headers, Method, Request,
    RequestInit, RequestRedirect, Response,
};

use crate::admission::{self, Claim, Lease, Watch, Woke};
use crate::anthropic;
use crate::auth::config::CredentialSource;
use crate::auth::decide::Caller;
use crate::authenticate::{passthrough_credential, resolve_and_authenticate};
use crate::error::{Error, Problem};
use crate::http::{json, now_ms, read_body, with_random};
use crate::ids::new_id;
use crate::limits::counter::{after_settling, Answered, Ask, Outcome, Window};
use crate::limits::headers::rate_limit_headers;
use crate::limits::ops::{CounterReply, CounterRequest};
use crate::limits::spend::micro_to_usd;
use crate::limits::standing::Presented;
use crate::outbound::{self, within, Fetched};
use crate::providers::{self, Provider, Wire};
use crate::records::Api;
use crate::store::kv::ApiEntry;
use crate::stream::relay::{Next, Relay, Usage};
use crate::timing::{Binding, Timing};
use crate::upstream::asked::Asked;
use crate::upstream::chat::{ApiRules, ChatRequest};
use crate::upstream::UPSTREAM_TEXT_CHARS;
use crate::upstream::{self, demo::DemoReply};
use crate::usage::{Attempt, Ended, Endpoint, UsageRecord};

/// Chat bodies carry whole conversations; 2 MiB is generous and still bounded.
const CHAT_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// Anthropic Messages bodies carry screenshots and documents as base64 (coding agents send several).
const MESSAGES_BODY_LIMIT: usize = 10 * 1024 * 1024;
/// Upstream error bodies are read only this far.
const ERROR_BODY_LIMIT: usize = 16 * 1024;
/// The least a stream asks for when its grant runs out (it asks for half its grant again if more).
const EXTEND_STEP: u64 = 512;
/// How long a stream waits for the upstream's response head before it starts with heartbeats.
const STREAM_COMMIT_MS: u64 = 1_000;
/// A stream that sent nothing for this long sends an SSE comment, so a gone client is noticed.
const HEARTBEAT_MS: i64 = 1_000;
/// The SSE comment a quiet stream sends (clients ignore comment lines).
const HEARTBEAT: &[u8] = b": keep-alive\n\n";

/// `POST /v1/{project}/{api}/chat/completions`, `…/responses` and `…/embeddings`: one metered path.
pub async fn metered(
    req: Request,
    env: &Env,
    ctx: &Context,
    endpoint: Endpoint,
    project: &str,
    api: &str,
) -> Result<Response, Error> {
    let timing = Timing::default();
    let request_id = with_random(|r| new_id("req", r))?;
    let place = Place {
        endpoint,
        request_id: &request_id,
        project,
        api,
    };
    let answer = serve(req, env, ctx, &timing, &place).await;
    let answer = match endpoint {
        Endpoint::Messages => answer.map_err(Error::in_anthropic_shape),
        _ => answer,
    };
    finish(&timing, &request_id, answer)
}

/// Where a metered request goes: its endpoint, id, project and API.
struct Place<'a> {
    endpoint: Endpoint,
    request_id: &'a str,
    project: &'a str,
    api: &'a str,
}

/// Every data-plane answer (or its error) names its request (`x-request-id`, unless the upstream's
/// own id is already there) and, when shown, carries `Server-Timing`.
fn finish(
    timing: &Timing,
    request_id: &str,
    answer: Result<Response, Error>,
) -> Result<Response, Error> {
    let shown = timing.shown_header();
    match answer {
        Ok(mut response) => {
            let headers = response.headers_mut();
            if !headers.has("x-request-id")? {
                headers.set("x-request-id", request_id)?;
            }
            if let Some(value) = shown {
                headers.set("server-timing", &value)?;
            }
            Ok(response)
        }
        Err(mut e) => {
            if !e
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("x-request-id"))
            {
                e = e.with_header("x-request-id", request_id);
            }
            Err(match shown {
                Some(value) => e.with_header("server-timing", value),
                None => e,
            })
        }
    }
}

/// Phases 1 and 2 with the timing of `auth`; the header is shown in dev mode or when the API asks.
async fn resolve(
    req: &Request,
    env: &Env,
    ctx: &Context,
    timing: &Timing,
    project: &str,
    api: &str,
) -> Result<(Rc<ApiEntry>, Caller), Error> {
    let started = now_ms();
    let found = resolve_and_authenticate(req, env, ctx, timing, project, api).await;
    timing.show(
        crate::email::dev_mode(env)
            || found
                .as_ref()
                .is_ok_and(|(e, _)| e.api.policy.server_timing),
    );
    timing.phase("auth", (now_ms() - started) as f64);
    found
}

async fn serve(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    timing: &Timing,
    place: &Place<'_>,
) -> Result<Response, Error> {
    let started = now_ms();
    let (entry, caller) = resolve(&req, env, ctx, timing, place.project, place.api).await?;
    let api = &entry.api;
    let (mut asked, original) = read_asked(&mut req, api, place.endpoint).await?;
    let passthrough = passthrough_credential(&req, api)?;
    // Before anything is reserved: a request routed to a provider the org has no key for is 503.
    let routed =
        provider_target(env, timing, api, api.route.as_ref(), &asked, asked.model()).await?;
    // ...and so is one whose upstream certificate binding is missing.
    let via = upstream_binding(env, api)?;
    let price = api.prices.get(asked.model());
    let fallbacks = fallback_targets(env, timing, api, &asked, price.is_some()).await?;
    // A Messages body goes whole to an Anthropic upstream: what it carries beyond what was metered
    // is bounded into the prompt, or refused.
    let speaks_anthropic: Vec<bool> = std::iter::once(routed.as_ref())
        .chain(fallbacks.iter().map(|(_, t)| t.as_ref()))
        .map(|t| t.is_some_and(|t| t.provider.wire() == Wire::Anthropic))
        .collect();
    let to_anthropic = speaks_anthropic.iter().any(|a| *a);
    // A Messages client whose every candidate speaks Anthropic gets the provider's own answer
    // (thinking, citations, stop sequences, cache counts as they are), metered as it passes.
    let native = original.is_some() && speaks_anthropic.iter().all(|a| *a);
    if let (Some(messages), true) = (&original, to_anthropic) {
        let extra = providers::anthropic::passthrough_extra(messages, &api.policy.allowed_params)?;
        asked.raise_prompt_bound(extra);
    }
    // The reservation covers the dearest model that may answer; the one that does is booked.
    let reserve = fallbacks
        .iter()
        .filter_map(|(m, _)| api.prices.get(m))
        .fold(price, |held, p| Some(held.map_or(p, |h| h.dearest(&p))));
    let watch = Watch::new(&req);
    let admitting = now_ms();
    let mut lease = admit(
        env,
        ctx,
        timing,
        place,
        &entry,
        &caller,
        &asked,
        started,
        Prices {
            asked: price,
            reserve,
        },
    )
    .await?;
    // Until a try says otherwise, what is booked is the model asked for, at its own price.
    lease.answered = Some(Answered {
        model: asked.model().to_string(),
        provider: routed.as_ref().map(|t| t.provider.as_str().to_string()),
        price,
    });
    timing.phase("admit", (now_ms() - admitting) as f64);
    asked.set_cap(lease.cap, api.policy.max_tokens_field);
    let rate_headers = rate_limit_headers(&lease.windows, started);
    let controller = AbortController::default();
    let sent = outbound(
        env,
        api,
        &asked,
        place.request_id,
        passthrough.clone(),
        routed.as_ref(),
        original.as_ref(),
    )
    .and_then(|sent| match sent {
        // The fallbacks follow the model asked for, each with its own price.
        Outbound::Fetch(mut candidates) => {
            if let Some(first) = candidates.first_mut() {
                first.answered.price = price;
            }
            for (model, target) in &fallbacks {
                let to = Route {
                    passthrough: passthrough.clone(),
                    routed: target.as_ref(),
                    original: original.as_ref(),
                };
                // A fallback whose provider cannot take this request (`n`, JSON mode, logprobs
                // on Anthropic) is left out; the model asked for answers it or refuses it.
                match candidate(env, api, &asked, place.request_id, to, model) {
                    Ok(c) => candidates.push(c.priced(api.prices.get(model))),
                    Err(e) if e.problem == Problem::ParameterNotAllowed => {}
                    Err(e) => return Err(e),
                }
            }
            if native {
                for c in &mut candidates {
                    c.reading = Reading::Messages;
                }
            }
            Ok(Outbound::Fetch(candidates))
        }
        demo => Ok(demo),
    });
    let upstream: Upstream = match sent {
        Ok(Outbound::Demo(answer)) => Box::pin(async move { Ok(answer) }),
        Ok(Outbound::Fetch(candidates)) => Box::pin(attempts(
            candidates,
            api.policy.retries,
            api.timeout_ms,
            asked.stream(),
            controller.signal(),
            via,
        )),
        Err(e) => {
            let outcome = lease.estimated(e.status, Ended::UpstreamError);
            lease.settle_later(outcome);
            return Err(e.with_headers(rate_headers));
        }
    };
    lease.progress.sent_upstream = true;
    let stream = asked.stream();
    let exchange = Exchange {
        lease,
        watch,
        controller,
        rate_headers,
        asked,
        anthropic: place.endpoint == Endpoint::Messages,
        native,
        silence_ms: i64::from(api.timeout_ms),
    };
    exchange.answer(upstream, stream, timing).await
}

/// An admitted request on its way to the client: its lease, its client's presence, the switch
/// that cancels its upstream, and what its answer carries.
struct Exchange {
    lease: Lease,
    watch: Watch,
    controller: AbortController,
    rate_headers: Vec<(String, String)>,
    /// What was asked (how its answer's output and usage are read, how its stream is relayed).
    asked: Asked,
    /// The answer is Anthropic's own, relayed as the provider sent it (see `Reading::Messages`).
    native: bool,
    /// The longest a streaming upstream may stay silent (the API's `timeout_ms`).
    silence_ms: i64,
    /// The client called Anthropic's Messages API: the answer is translated back to it.
    anthropic: bool,
}

impl Exchange {
    /// Waits for the upstream while the client is there. A stream whose upstream is slow to answer
    /// starts at once, with heartbeats while it waits: a client that hangs up is noticed when a write
    /// fails.
    async fn answer(
        mut self,
        mut upstream: Upstream,
        stream: bool,
        timing: &Timing,
    ) -> Result<Response, Error> {
        let asked = now_ms();
        let first = match stream {
            true => {
                self.lease
                    .while_client_waits(&mut self.watch, within(&mut upstream, STREAM_COMMIT_MS))
                    .await
            }
            false => self
                .lease
                .while_client_waits(&mut self.watch, &mut upstream)
                .await
                .map(Some),
        };
        timing.phase("upstream", (now_ms() - asked) as f64);
        match first {
            Woke::Done(None) => self.stream(Source::Waiting(upstream)),
            Woke::Done(Some(Err(failure))) => self.failed(failure),
            Woke::Done(Some(Ok(Answer::Json(whole, head)))) => {
                self.heard(&head);
                self.json(whole)
            }
            Woke::Done(Some(Ok(Answer::Stream(body, head)))) => {
                self.heard(&head);
                self.stream(Source::Body(body))
            }
            // The client went away, or (disabled, its key or session revoked) may no longer wait.
            stopped => {
                let (status, ended, error) = match stopped {
                    Woke::Denied(e) => (e.status, Ended::Revoked, e),
                    _ => (499, Ended::ClientGone, client_gone()),
                };
                self.controller.abort();
                let outcome = self.lease.estimated(status, ended);
                self.lease.settle_later(outcome);
                Err(error)
            }
        }
    }

    /// The upstream's head reaches the client with the answer, and its request id the usage record.
    fn heard(&mut self, head: &Head) {
        self.lease.upstream_request_id = head.request_id.clone();
        if head.answered.is_some() {
            self.lease.answered = head.answered.clone();
        }
        self.lease.attempts = head.attempts.clone();
        self.rate_headers.extend(head.headers());
    }

    /// The upstream failed before answering: what it was sent is booked as the failure says.
    fn failed(mut self, failure: Failure) -> Result<Response, Error> {
        self.controller.abort();
        self.lease.upstream_error = failure.said.clone();
        self.lease.attempts = failure.attempts.clone();
        if failure.tried.is_some() {
            self.lease.answered = failure.tried.clone();
        }
        let outcome = match failure.ended {
            // An error status means nothing was generated: nothing is booked.
            Ended::UpstreamError => Outcome {
                status: failure.error.status,
                ended: Ended::UpstreamError,
                latency_ms: self.lease.elapsed(),
                upstream_request_id: self.lease.upstream_request_id.clone(),
                upstream_error: self.lease.upstream_error.clone(),
                ..Outcome::default()
            },
            ended => self.lease.estimated(failure.error.status, ended),
        };
        self.lease.settle_later(outcome);
        Err(failure.error.with_headers(self.rate_headers))
    }

    /// A whole answer, returned as sent; settled (its reported usage, else the bounds) after it.
    fn json(mut self, whole: Whole) -> Result<Response, Error> {
        let Whole {
            bytes,
            value: answer,
        } = whole;
        let (output, usage) = if self.native {
            let usage = providers::anthropic::Counts::of_message(&answer).usage();
            (providers::anthropic::output_bytes(&answer), usage)
        } else {
            (self.asked.output_bytes(&answer), self.asked.usage(&answer))
        };
        // A whole answer cannot be cut on the way: the upstream was sent the cap, and one that
        // reports no usage is booked as having honoured it (its output bytes, at most the cap for
        // each choice), so the window books at most its limit.
        self.lease.progress.delivered = self
            .lease
            .completion_cap()
            .map_or(output, |c| output.min(c));
        let outcome = match usage {
            Some(usage) => reported(&self.lease, 200, Ended::Complete, usage),
            None => self.lease.estimated(200, Ended::Complete),
        };
        // The rate-limit headers say what is left once this answer is booked, not while it held
        // its worst case.
        let held =
            (self.lease.prompt_bound).saturating_add(self.lease.completion_cap().unwrap_or(0));
        let booked = outcome
            .prompt_tokens
            .saturating_add(outcome.completion_tokens);
        let windows = after_settling(&self.lease.windows, held, booked);
        let fresh = rate_limit_headers(&windows, now_ms());
        self.rate_headers
            .retain(|(k, _)| !fresh.iter().any(|(f, _)| f.eq_ignore_ascii_case(k)));
        self.rate_headers.extend(fresh);
        self.lease.settle_later(outcome);
        let headers = response_headers("application/json", &self.rate_headers)?;
        // Forwarded as the upstream wrote it, unless the client speaks Anthropic's Messages API
        // and the upstream did not.
        let bytes = if self.anthropic && !self.native {
            anthropic::from_completion(&answer, self.asked.model())
                .to_string()
                .into_bytes()
        } else {
            bytes
        };
        Ok(Response::from_bytes(bytes)?
            .with_status(200)
            .with_headers(headers))
    }

    fn stream(self, source: Source) -> Result<Response, Error> {
        // The usage chunk reaches Anthropic's translation (it becomes `message_delta.usage`).
        let strip_usage = self.asked.strip_usage() && !self.anthropic;
        let wire = if self.native {
            crate::stream::relay::Wire::Messages
        } else {
            self.asked.wire()
        };
        let relay_of = Relay::of(wire, strip_usage, None);
        let out = relay(
            self.lease,
            self.watch,
            relay_of,
            source,
            self.controller,
            self.silence_ms,
        );
        if !self.anthropic || self.native {
            return stream_response(out, &self.rate_headers);
        }
        // Translated event by event; heartbeats pass as they are (they notice a gone client).
        let mut messages = anthropic::MessagesStream::new(self.asked.model());
        let translated = out.map(move |chunk| {
            chunk.map(|bytes| {
                if bytes.starts_with(b":") {
                    return bytes;
                }
                messages.push(&bytes)
            })
        });
        stream_response(translated, &self.rate_headers)
    }
}

fn stream_response(
    out: impl Stream<Item = Result<Vec<u8>, worker::Error>> + 'static,
    rate_headers: &[(String, String)],
) -> Result<Response, Error> {
    let headers = response_headers("text/event-stream; charset=utf-8", rate_headers)?;
    headers.set("cache-control", "no-cache")?;
    headers.set("x-accel-buffering", "no")?;
    Ok(Response::from_stream(out)?.with_headers(headers))
}

/// No answer came from the upstream: it could not be reached, or it closed the connection first.
fn unreachable() -> Error {
    Error::upstream(
        "The upstream model API could not be reached, or closed the connection before answering.",
    )
}

/// The client hung up; nobody reads this answer, but the usage record says 499.
fn client_gone() -> Error {
    Error::new(
        Problem::ClientClosedRequest,
        "The client went away before the answer was complete.",
    )
}

/// The outcome of a request whose upstream reported its usage: the report wins over every estimate.
fn reported(lease: &Lease, status: u16, ended: Ended, usage: Usage) -> Outcome {
    Outcome {
        status,
        ended,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        cached_tokens: usage.cached_tokens,
        reasoning_tokens: usage.reasoning_tokens,
        estimated: false,
        latency_ms: lease.elapsed(),
        ttft_ms: lease.progress.ttft_ms,
        upstream_request_id: lease.upstream_request_id.clone(),
        upstream_error: lease.upstream_error.clone(),
        ..Outcome::default()
    }
}

/// `GET /v1/{project}/{api}/models`: the models the API allows, in OpenAI's list shape; at
/// `…/v1/models`, in Anthropic's, paged as Anthropic pages.
pub async fn list_models(
    req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
    api: &str,
    anthropic: bool,
) -> Result<Response, Error> {
    let query: Vec<(String, String)> = crate::http::Target::of(&req).query_pairs().collect();
    answer_for_caller(&req, env, ctx, project, api, anthropic, |api| {
        let models = api.allowed_models();
        if anthropic {
            let created = crate::time::rfc3339(api.created_at);
            return json(200, &anthropic::model_page(&models, &query, &created)?);
        }
        let data: Vec<Value> = models.iter().map(|m| model_object(api, m)).collect();
        json(200, &json!({"object": "list", "data": data}))
    })
    .await
}

/// `GET /v1/{project}/{api}/models/{model}`: one model the API allows (404 for any other), in
/// OpenAI's shape or, at `…/v1/models/{model}`, Anthropic's.
pub async fn get_model(
    req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
    api: &str,
    model: &str,
    anthropic: bool,
) -> Result<Response, Error> {
    answer_for_caller(&req, env, ctx, project, api, anthropic, |api| {
        let any = api.models.is_empty() && api.policy.allow_any_model;
        if !any && !api.allowed_models().iter().any(|m| m == model) {
            return Err(Error::not_found(format!(
                "This API has no model `{model}`; GET …/models lists those it has."
            ))
            .with_field("param", "model"));
        }
        if anthropic {
            let created = crate::time::rfc3339(api.created_at);
            return json(200, &anthropic::model_object(model, &created));
        }
        json(200, &model_object(api, model))
    })
    .await
}

/// Phases 1 and 2, then `answer` from the API alone (no upstream, nothing metered).
async fn answer_for_caller(
    req: &Request,
    env: &Env,
    ctx: &Context,
    project: &str,
    api: &str,
    anthropic: bool,
    answer: impl FnOnce(&Api) -> Result<Response, Error>,
) -> Result<Response, Error> {
    let timing = Timing::default();
    let request_id = with_random(|r| new_id("req", r))?;
    let answered = match resolve(req, env, ctx, &timing, project, api).await {
        Ok((entry, _)) => answer(&entry.api),
        Err(e) => Err(e),
    };
    let answered = match anthropic {
        true => answered.map_err(Error::in_anthropic_shape),
        false => answered,
    };
    finish(&timing, &request_id, answered)
}

/// A model in OpenAI's shape.
fn model_object(api: &Api, model: &str) -> Value {
    json!({"id": model, "object": "model", "created": api.created_at / 1000, "owned_by": api.project_slug})
}

/// A window as the consumer sees it: token and request counts as numbers, spend in USD.
fn window_json(w: &Window) -> Value {
    let amount = |n: u64| -> Value {
        if w.scope.is_spend() {
            micro_to_usd(n).into()
        } else {
            n.into()
        }
    };
    let mut window = json!({
        "limit": amount(w.limit), "used": amount(w.used), "remaining": amount(w.remaining),
        "reset": crate::time::rfc3339(w.reset_at),
    });
    if w.scope.is_tokens() || w.scope.is_spend() {
        window["held"] = amount(w.held);
    }
    window
}

/// `GET /v1/{project}/{api}/usage`: the caller's plan, limits, and what is used and left in each
/// window (spend windows in USD). The counter says which plan applies, and refuses a disabled
/// consumer or a revoked key or session as an admission would.
pub async fn consumer_usage(
    req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
    api: &str,
) -> Result<Response, Error> {
    let timing = Timing::default();
    let request_id = with_random(|r| new_id("req", r))?;
    let answer = usage_of(&req, env, ctx, &timing, project, api).await;
    finish(&timing, &request_id, answer)
}

async fn usage_of(
    req: &Request,
    env: &Env,
    ctx: &Context,
    timing: &Timing,
    project: &str,
    api: &str,
) -> Result<Response, Error> {
    let now = now_ms();
    let (entry, caller) = resolve(req, env, ctx, timing, project, api).await?;
    let op = CounterRequest::Status {
        now,
        api_id: entry.api.id.clone(),
        consumer_id: caller.consumer_id.clone(),
        who: presented(&caller),
        plans: entry.plans.clone(),
    };
    let started = now_ms();
    let reply =
        crate::admission::call_carrying(env, ctx, &entry.api.id, &caller.consumer_id, op).await;
    timing.call(Binding::Do, (now_ms() - started) as f64);
    let (plan, windows) = match reply? {
        CounterReply::Status { plan, windows } => (plan, windows),
        CounterReply::Denied { denial, windows } => {
            return Err(denial
                .to_error("")
                .with_headers(rate_limit_headers(&windows, now)))
        }
        _ => {
            return Err(Error::internal(
                "The counter answered a status request with something else.",
            ))
        }
    };
    let windows_json: serde_json::Map<String, Value> = windows
        .iter()
        .map(|w| (w.scope.as_str().to_string(), window_json(w)))
        .collect();
    let body = json!({
        "consumer_id": caller.consumer_id,
        "plan": {"name": plan.name, "models": plan.models, "limits": plan.limits_json()},
        "windows": windows_json,
    });
    let headers = response_headers("application/json", &rate_limit_headers(&windows, now))?;
    Ok(Response::from_bytes(body.to_string().into_bytes())?.with_headers(headers))
}

/// The key (or credential) and session a caller came with, for its counter to check.
fn presented(caller: &Caller) -> Presented {
    Presented {
        key_id: caller.key_id.clone(),
        session_id: caller.session_id.clone(),
        dpop_jti: caller.dpop_jti.clone(),
        certificate_id: caller.certificate_id.clone(),
    }
}

fn response_headers(content_type: &str, extra: &[(String, String)]) -> Result<Headers, Error> {
    let headers = Headers::new();
    headers.set("content-type", content_type)?;
    for (k, v) in extra {
        headers.set(k, v)?;
    }
    Ok(headers)
}

/// Phase 3 — read the body: bounded (413), valid JSON (400), the endpoint's OpenAI shape within the
/// gateway's bounds and the API's rules (allowed models and parameters), with the API's default
/// model filled in and the prompt's upper bound counted.
async fn read_asked(
    req: &mut Request,
    api: &Api,
    endpoint: Endpoint,
) -> Result<(Asked, Option<Value>), Error> {
    let limit = match endpoint {
        Endpoint::Messages => MESSAGES_BODY_LIMIT,
        _ => CHAT_BODY_LIMIT,
    };
    let bytes = read_body(req, limit).await?;
    let body: Value = crate::input::parse_body(&bytes)?;
    // A Messages body is checked and metered as chat; an Anthropic upstream gets it as sent.
    let (body, original) = match endpoint {
        Endpoint::Messages => (anthropic::to_chat(body.clone())?, Some(body)),
        _ => (body, None),
    };
    Ok((Asked::prepare(endpoint, body, &rules_of(api))?, original))
}

fn rules_of(api: &Api) -> ApiRules<'_> {
    ApiRules {
        default_model: api.default_model.as_deref(),
        models: &api.models,
        policy: &api.policy,
    }
}

/// `POST …/messages/count_tokens` (and `…/v1/messages/count_tokens`): the request's input tokens,
/// as the gateway bounds them (an estimate never below the real count), in Anthropic's shape.
pub async fn count_tokens(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
    api: &str,
) -> Result<Response, Error> {
    let timing = Timing::default();
    let request_id = with_random(|r| new_id("req", r))?;
    let answer = async {
        let (entry, _) = resolve(&req, env, ctx, &timing, project, api).await?;
        // The same bodies as the Messages route takes (their images and documents in base64).
        let bytes = read_body(&mut req, MESSAGES_BODY_LIMIT).await?;
        let body = anthropic::count_body(crate::input::parse_body(&bytes)?)?;
        let asked = Asked::prepare(Endpoint::Chat, body, &rules_of(&entry.api))?;
        json(200, &json!({"input_tokens": asked.prompt_bound()}))
    }
    .await
    .map_err(Error::in_anthropic_shape);
    finish(&timing, &request_id, answer)
}

/// How long an unrenewed lease lives: `LEASE_TTL_MS`, or `SLUICE_LEASE_TTL_MS` (2 s to 10 min) where
/// an operator (or a test of abandoned requests) wants expiry sooner or later.
fn lease_ttl_ms(env: &Env) -> i64 {
    env.var("SLUICE_LEASE_TTL_MS")
        .ok()
        .and_then(|v| v.to_string().parse::<i64>().ok())
        .map_or(crate::limits::counter::LEASE_TTL_MS, |ms| {
            ms.clamp(2_000, 600_000)
        })
}

/// The price of the model asked for, and what the reservation holds (the dearest of the models
/// that may answer).
struct Prices {
    asked: Option<crate::limits::spend::Price>,
    reserve: Option<crate::limits::spend::Price>,
}

/// Phase 4 — admit: one call to the consumer's counter, which checks the consumer's standing (enabled,
/// its key and session not revoked: 401/403), picks its plan among the API's, checks the plan's
/// model list (403) and that a spend-limited plan has the model's price (403), checks every window,
/// grants the completion cap and holds the worst case (429 if any window refuses; 503 if the
/// counter cannot be reached: never let through unmetered).
#[allow(clippy::too_many_arguments)]
async fn admit(
    env: &Env,
    ctx: &Context,
    timing: &Timing,
    place: &Place<'_>,
    entry: &ApiEntry,
    caller: &Caller,
    asked: &Asked,
    now: i64,
    prices: Prices,
) -> Result<Lease, Error> {
    let api = &entry.api;
    let model = asked.model();
    let record = UsageRecord {
        id: place.request_id.to_string(),
        endpoint: place.endpoint,
        created_at: now,
        project_id: api.project_id.clone(),
        api_id: api.id.clone(),
        consumer_id: caller.consumer_id.clone(),
        key_id: caller.key_id.clone(),
        session_id: caller.session_id.clone(),
        model: model.to_string(),
        n: asked.n(),
        prompt_bound: asked.prompt_bound(),
        ..UsageRecord::default()
    };
    let claim = Claim {
        api_id: &api.id,
        consumer_id: &caller.consumer_id,
        who: presented(caller),
        plans: &entry.plans,
        model,
        // Whether the model asked for has a price (a spend-limited plan refuses one without),
        // whatever the fallbacks' prices.
        priced: prices.asked.is_some(),
        ask: Ask {
            prompt: asked.prompt_bound(),
            n: asked.n(),
            cap: asked.cap(),
            price: prices.reserve,
            stream: asked.stream(),
            lease_ttl_ms: lease_ttl_ms(env),
        },
        record,
    };
    admission::admit(env, ctx, timing, claim).await
}

type Body = Pin<Box<dyn Stream<Item = Result<Vec<u8>, String>>>>;
type Upstream = Pin<Box<dyn std::future::Future<Output = Result<Answer, Failure>>>>;

enum Answer {
    Json(Whole, Head),
    Stream(Body, Head),
}

/// A whole answer: its bytes as they go out, and what they say.
struct Whole {
    bytes: Vec<u8>,
    value: Value,
}

impl Whole {
    fn of(value: Value) -> Whole {
        Whole {
            bytes: value.to_string().into_bytes(),
            value,
        }
    }
}

/// What the upstream's answer head says that the client sees too: its request id and processing
/// time.
#[derive(Debug, Clone, Default)]
struct Head {
    request_id: Option<String>,
    processing_ms: Option<String>,
    /// Who answered, and the tries it took (set by `attempts`).
    answered: Option<Answered>,
    attempts: Vec<Attempt>,
}

impl Head {
    fn of(response: &Response) -> Head {
        let get = |name: &str| {
            response
                .headers()
                .get(name)
                .ok()
                .flatten()
                .filter(|v| !v.is_empty() && v.len() <= 200)
        };
        Head {
            request_id: get("x-request-id").or_else(|| get("request-id")),
            processing_ms: get("openai-processing-ms"),
            ..Head::default()
        }
    }

    fn headers(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(id) = &self.request_id {
            out.push(("x-request-id".to_string(), id.clone()));
        }
        if let Some(ms) = &self.processing_ms {
            out.push(("openai-processing-ms".to_string(), ms.clone()));
        }
        out
    }
}

/// Where a stream's bytes come from: the upstream's answer still awaited, or its body.
enum Source {
    Waiting(Upstream),
    Body(Body),
}

/// What phase 5 sends: the built-in demo's answer, or a request to the API's upstream.
enum Outbound {
    Demo(Answer),
    /// The model asked for first, then its fallbacks.
    Fetch(Vec<Candidate>),
}

/// How a candidate's answer is read: as it comes (OpenAI's formats; or Anthropic's, for a Messages
/// client whose every candidate speaks it), or Anthropic's translated into chat chunks for the
/// model the client asked for.
#[derive(Debug, Clone, PartialEq)]
enum Reading {
    AsIs,
    ToChat(String),
    Messages,
}

/// One way to reach a model: the request's parts (built again for each try), and who answers
/// through it.
struct Candidate {
    url: String,
    headers: Vec<(String, String)>,
    body: String,
    /// How its answer is read.
    reading: Reading,
    answered: Answered,
}

impl Candidate {
    fn priced(mut self, price: Option<crate::limits::spend::Price>) -> Candidate {
        self.answered.price = price;
        self
    }

    fn request(&self) -> Result<Request, Error> {
        let headers = Headers::new();
        for (name, value) in &self.headers {
            headers.set(name, value)?;
        }
        let mut init = RequestInit::new();
        // A redirect is the upstream's answer, never followed: the provider key and the prompt go
        // to the host they were given for and to no other (a 3xx is a failed try, 502).
        init.with_method(Method::Post)
            .with_headers(headers)
            .with_body(Some(JsValue::from_str(&self.body)))
            .with_redirect(RequestRedirect::Manual);
        Ok(Request::new_with_init(&self.url, &init)?)
    }
}

/// Why forwarding failed, and what that means for booking.
struct Failure {
    error: Error,
    ended: Ended,
    /// What the upstream (or the runtime) said: for the usage record, never the end user.
    said: Option<String>,
    /// The upstream's own status and `Retry-After`, when it answered one.
    status: Option<u16>,
    retry_after: Option<String>,
    /// Every try upstream, and who was tried last (set by `attempts`).
    attempts: Vec<Attempt>,
    tried: Option<Answered>,
}

impl Failure {
    fn new(error: Error, ended: Ended) -> Failure {
        Failure {
            error,
            ended,
            said: None,
            status: None,
            retry_after: None,
            attempts: Vec::new(),
            tried: None,
        }
    }

    /// Whether another try may help: a 429 or 5xx, a timeout, a connection that failed or broke.
    fn retryable(&self) -> bool {
        match self.ended {
            Ended::UpstreamError => self.status.is_some_and(|s| s == 429 || s >= 500),
            Ended::UpstreamTimeout | Ended::UpstreamUnreachable | Ended::UpstreamCut => true,
            _ => false,
        }
    }

    /// How the try went, for the record.
    fn attempt(&self, answered: &Answered, ms: u64) -> Attempt {
        let error = match self.ended {
            Ended::UpstreamTimeout => "timeout",
            Ended::UpstreamUnreachable => "unreachable",
            Ended::UpstreamCut => "cut",
            _ => "status",
        };
        Attempt {
            model: answered.model.clone(),
            provider: answered.provider.clone(),
            status: self.status.unwrap_or(0),
            error: Some(error.into()),
            ms,
        }
    }

    fn saying(mut self, said: impl Into<String>) -> Failure {
        self.said = Some(said.into());
        self
    }
}

/// Phase 5 — forward, first half: the built-in demo answers in the worker; otherwise the gateway
/// builds the upstream request itself, with the owner's provider key (client credentials never
/// travel upstream unless the API passes them through).
fn outbound(
    env: &Env,
    api: &Api,
    asked: &Asked,
    request_id: &str,
    passthrough: Option<(CredentialSource, String)>,
    routed: Option<&ProviderTarget>,
    original: Option<&Value>,
) -> Result<Outbound, Error> {
    if routed.is_none() && api.upstream_base_url == "demo" {
        return match asked {
            Asked::Chat(chat) => Ok(Outbound::Demo(demo_answer(chat))),
            _ => Err(Error::invalid_request(format!(
                "The built-in demo upstream answers chat completions only; give this API a real upstream for /{}.",
                asked.path()
            ))),
        };
    }
    let to = Route {
        passthrough,
        routed,
        original,
    };
    candidate(env, api, asked, request_id, to, asked.model()).map(|c| Outbound::Fetch(vec![c]))
}

/// The request for `model` (the one asked for, or a fallback): to its provider, or to the API's
/// own upstream with its provider key (client credentials never travel upstream unless the API
/// passes them through).
fn candidate(
    env: &Env,
    api: &Api,
    asked: &Asked,
    request_id: &str,
    to: Route<'_>,
    model: &str,
) -> Result<Candidate, Error> {
    let Route {
        passthrough,
        routed,
        original,
    } = to;
    if let Some(target) = routed {
        return to_provider(asked, request_id, target, model, original);
    }
    if api.upstream_base_url == "demo" {
        return Err(Error::invalid_request(
            "A fallback on the built-in demo upstream has nowhere to go.",
        ));
    }
    let stream = asked.stream();
    // The body as checked (with the granted cap), the provider key or the passed-through credential.
    let mut headers = base_headers(request_id, stream);
    if let Some(sealed) = &api.upstream_key_enc {
        let key = crate::http::keyring(env)?
            .open(sealed)
            .ok_or_else(|| Error::misconfigured("The API's provider key cannot be decrypted; was ENCRYPTION_KEY changed? Set the key again."))?;
        headers.push(("authorization".into(), format!("Bearer {key}")));
    }
    let mut url = upstream::endpoint_url(&api.upstream_base_url, asked.path());
    match passthrough {
        // The provider key, when set, keeps the Authorization header.
        Some((CredentialSource::Authorization, c)) if api.upstream_key_enc.is_none() => {
            headers.push(("authorization".into(), format!("Bearer {c}")))
        }
        Some((CredentialSource::Header(name), c)) => headers.push((name, c)),
        Some((CredentialSource::Query(name), c)) => {
            let pair: String = form_urlencoded::Serializer::new(String::new())
                .append_pair(&name, &c)
                .finish();
            url = format!("{url}?{pair}");
        }
        _ => {}
    }
    let body = if model == asked.model() {
        serde_json::to_string(asked.body())
    } else {
        let mut body = asked.body().clone();
        body.insert("model".into(), Value::from(model));
        serde_json::to_string(&body)
    }
    .map_err(|e| Error::internal(format!("The chat body could not be written: {e}.")))?;
    Ok(Candidate {
        url,
        headers,
        body,
        reading: Reading::AsIs,
        answered: Answered {
            model: model.to_string(),
            provider: None,
            price: None,
        },
    })
}

/// How one candidate is reached: the client credential an API passes through, the provider it is
/// routed to, and the Messages body as the client sent it.
struct Route<'a> {
    passthrough: Option<(CredentialSource, String)>,
    routed: Option<&'a ProviderTarget>,
    original: Option<&'a Value>,
}

/// Every upstream request's own headers: its type, the gateway's request id, what it accepts.
fn base_headers(request_id: &str, stream: bool) -> Vec<(String, String)> {
    let accept = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    vec![
        ("content-type".into(), "application/json".into()),
        ("x-request-id".into(), request_id.into()),
        ("accept".into(), accept.into()),
    ]
}

/// A request routed to a provider: its base URL, the org's key (opened), and the model name it is
/// sent (without the `provider/` prefix).
struct ProviderTarget {
    provider: Provider,
    base_url: String,
    key: Option<String>,
    model: String,
}

/// Phase 5, before admission: the provider an API with a provider route sends this request to, with
/// the org's key for it (`None` for an API with its own base URL).
async fn provider_target(
    env: &Env,
    timing: &Timing,
    api: &Api,
    route: Option<&providers::Route>,
    asked: &Asked,
    model: &str,
) -> Result<Option<ProviderTarget>, Error> {
    let Some(route) = route else {
        return Ok(None);
    };
    let (provider, model) = providers::pick(route, model).ok_or_else(|| {
        Error::invalid_request(format!(
            "`{model}` names no provider: this API routes by `provider/model` names (e.g. `anthropic/claude-3-5-haiku`)."
        ))
        .with_field("param", "model")
    })?;
    if provider.wire() == Wire::Anthropic && !matches!(asked, Asked::Chat(_)) {
        return Err(Error::invalid_request(format!(
            "The provider `anthropic` answers chat completions and messages only, not /{}.",
            asked.path()
        )));
    }
    let stored = crate::cache::provider_key(env, timing, &api.org_id, provider)
        .await?
        .ok_or_else(|| {
            Error::new(
                Problem::ProviderNotConfigured,
                format!(
                    "This API's org has no `{}` key: an admin adds one with POST /api/v1/orgs/{{org}}/providers.",
                    provider.as_str()
                ),
            )
            .with_field("provider", provider.as_str())
        })?;
    let key = match &stored.key_enc {
        Some(sealed) => Some(crate::http::keyring(env)?.open(sealed).ok_or_else(|| {
            Error::misconfigured(format!(
                "The org's `{}` key cannot be decrypted: was ENCRYPTION_KEY changed without ENCRYPTION_KEY_PREVIOUS? Store the key again.",
                provider.as_str()
            ))
        })?),
        None => None,
    };
    Ok(Some(ProviderTarget {
        provider,
        base_url: stored.base_url().to_string(),
        key,
        model,
    }))
}

/// The request to a provider: its wire format, its auth header, the org's key; never a client's
/// credential.
fn to_provider(
    asked: &Asked,
    request_id: &str,
    target: &ProviderTarget,
    model: &str,
    original: Option<&Value>,
) -> Result<Candidate, Error> {
    let mut headers = base_headers(request_id, asked.stream());
    if let Some(key) = &target.key {
        let (name, value) = target.provider.auth_header(key);
        headers.push((name.into(), value));
    }
    let (url, body) = match target.provider.wire() {
        Wire::Anthropic => {
            headers.push((
                "anthropic-version".into(),
                providers::anthropic::VERSION.into(),
            ));
            let body = match original {
                Some(messages) => {
                    providers::anthropic::passthrough(messages, asked.body(), &target.model)
                }
                None => providers::anthropic::request(asked.body(), &target.model)?,
            };
            (
                upstream::endpoint_url(&target.base_url, "v1/messages"),
                body,
            )
        }
        Wire::OpenAi => {
            let mut body = asked.body().clone();
            body.insert("model".into(), Value::from(target.model.as_str()));
            if !target.provider.takes_stream_options() {
                body.remove("stream_options");
            }
            (
                upstream::endpoint_url(&target.base_url, asked.path()),
                Value::Object(body),
            )
        }
    };
    let reading = match target.provider.wire() {
        Wire::Anthropic => Reading::ToChat(asked.model().to_string()),
        Wire::OpenAi => Reading::AsIs,
    };
    Ok(Candidate {
        url,
        headers,
        body: body.to_string(),
        reading,
        answered: Answered {
            model: model.to_string(),
            provider: Some(target.provider.as_str().to_string()),
            price: None,
        },
    })
}

/// The API's fallbacks this request may use, each with its provider: a `provider/model` name on
/// an API with its own base URL goes to that provider too. A fallback whose provider has no key in
/// the org, or (when the model asked for has a price) has no price, is left out: it could neither
/// answer nor be booked.
async fn fallback_targets(
    env: &Env,
    timing: &Timing,
    api: &Api,
    asked: &Asked,
    priced: bool,
) -> Result<Vec<(String, Option<ProviderTarget>)>, Error> {
    let mut out = Vec::new();
    for model in &api.policy.fallbacks {
        if model == asked.model() || (priced && api.prices.get(model).is_none()) {
            continue;
        }
        let route = match (&api.route, providers::split_model(model)) {
            (Some(route), _) => Some(route),
            (None, Some(_)) => Some(&providers::Route::ByModel),
            (None, None) => None,
        };
        let target = provider_target(env, timing, api, route, asked, model).await;
        // A fallback that cannot take this request (no key, another endpoint, a key that does
        // not open) is left out; it never fails a request the first model may answer.
        match target {
            Ok(t) => out.push((model.clone(), t)),
            Err(e) => worker::console_log!("fallback {model} left out: {}", e.kind()),
        }
    }
    Ok(out)
}

/// Phase 5: the first candidate, again up to `retries` times while it fails in a way another try
/// may mend, then each fallback in order. Tries happen only before any answer: a streamed
/// request's client has had at most heartbeat comments by then, never a byte of an answer. The
/// answer (or the last failure) says who answered, or was tried last, and every try.
async fn attempts(
    candidates: Vec<Candidate>,
    retries: u32,
    timeout_ms: u32,
    stream: bool,
    signal: AbortSignal,
    via: Option<Fetcher>,
) -> Result<Answer, Failure> {
    let mut log: Vec<Attempt> = Vec::new();
    let mut last: Option<Failure> = None;
    let mut tried: Option<Answered> = None;
    'candidates: for (i, c) in candidates.iter().enumerate() {
        let tries = if i == 0 { 1 + retries } else { 1 };
        for n in 0..tries {
            if (i > 0 || n > 0) && signal.aborted() {
                break 'candidates;
            }
            let request = match c.request() {
                Ok(r) => r,
                Err(e) => return Err(Failure::new(e, Ended::UpstreamError)),
            };
            let started = now_ms();
            match send(
                request,
                timeout_ms,
                stream,
                signal.clone(),
                &c.reading,
                via.as_ref(),
            )
            .await
            {
                Ok(mut answer) => {
                    log.push(Attempt {
                        model: c.answered.model.clone(),
                        provider: c.answered.provider.clone(),
                        status: 200,
                        error: None,
                        ms: (now_ms() - started).max(0) as u64,
                    });
                    let head = match &mut answer {
                        Answer::Json(_, head) | Answer::Stream(_, head) => head,
                    };
                    head.answered = Some(c.answered.clone());
                    head.attempts = log;
                    return Ok(answer);
                }
                Err(failure) => {
                    log.push(failure.attempt(&c.answered, (now_ms() - started).max(0) as u64));
                    tried = Some(c.answered.clone());
                    let retryable = failure.retryable();
                    let mut jitter = [0u8; 2];
                    let jitter = crate::http::random(&mut jitter)
                        .map_or(u16::MAX / 2, |_| u16::from_le_bytes(jitter));
                    let wait = upstream::retry_wait_ms(n, failure.retry_after.as_deref(), jitter);
                    last = Some(failure);
                    if !retryable {
                        break 'candidates;
                    }
                    match wait {
                        Some(ms) if n + 1 < tries => {
                            Delay::from(Duration::from_millis(ms)).await;
                        }
                        _ => continue 'candidates,
                    }
                }
            }
        }
    }
    let mut failure =
        last.unwrap_or_else(|| Failure::new(unreachable(), Ended::UpstreamUnreachable));
    failure.attempts = log;
    failure.tried = tried;
    Err(failure)
}

/// The `mtls_certificates` binding the API's upstream fetches go through (`upstream.mtls_binding`),
/// so the provider sees the gateway's client certificate; 503 when wrangler.toml lacks it.
fn upstream_binding(env: &Env, api: &Api) -> Result<Option<Fetcher>, Error> {
    let Some(name) = &api.policy.mtls_binding else {
        return Ok(None);
    };
    // Any Fetcher binding would pass the type check (the assets, a service): only the certificate
    // bindings the operator lists may carry a provider key.
    if !crate::upstream::policy::binding_allowed(
        name,
        crate::http::secret(env, "UPSTREAM_MTLS_BINDINGS").as_deref(),
    ) {
        return Err(Error::misconfigured(format!(
            "Binding `{name}` is not one the operator lists in UPSTREAM_MTLS_BINDINGS for upstream client certificates."
        )));
    }
    env.get_binding::<Fetcher>(name).map(Some).map_err(|_| {
        Error::misconfigured(format!(
            "This API's upstream presents the client certificate of binding `{name}`, which is not an `[[mtls_certificates]]` binding in wrangler.toml."
        ))
    })
}

/// Phase 5, second half: sends the request. No answer within the API's timeout → 504; unreachable
/// → 502; an error status → its mapping. Owns everything it needs, so a stream can keep awaiting it.
async fn send(
    request: Request,
    timeout_ms: u32,
    stream: bool,
    signal: AbortSignal,
    reading: &Reading,
    via: Option<&Fetcher>,
) -> Result<Answer, Failure> {
    let timeout = u64::from(timeout_ms);
    let mut response = match outbound::fetch_via(via, request, timeout, Some(signal)).await {
        Fetched::Answered(resp) => resp,
        Fetched::Failed(e) => {
            return Err(Failure::new(unreachable(), Ended::UpstreamUnreachable).saying(e))
        }
        Fetched::TimedOut => {
            return Err(Failure::new(
                Error::upstream_timeout(timeout_ms),
                Ended::UpstreamTimeout,
            ))
        }
    };
    let status = response.status_code();
    let head = Head::of(&response);
    if !(200..300).contains(&status) {
        let retry_after = response.headers().get("retry-after").ok().flatten();
        let body = read_limited(&mut response, ERROR_BODY_LIMIT).await;
        let (error, said) = upstream::upstream_failure(status, &body, retry_after.clone());
        let mut failure =
            Failure::new(error.with_headers(head.headers()), Ended::UpstreamError).saying(said);
        failure.status = Some(status);
        failure.retry_after = retry_after;
        return Err(failure);
    }
    if stream {
        // A JSON or HTML body is no event stream (an error some servers answer with 200): it
        // fails like any other answer that is not one, its words kept for the owner.
        let kind = response
            .headers()
            .get("content-type")
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if kind.starts_with("application/json") || kind.starts_with("text/html") {
            let body = read_limited(&mut response, ERROR_BODY_LIMIT).await;
            return Err(not_an_answer(
                "The upstream model API answered a streamed request with something other than an event stream.",
                &body,
            ));
        }
        let body = response
            .stream()
            .map_err(|e| Failure::new(e.into(), Ended::UpstreamCut))?
            .map(|chunk| chunk.map_err(|e| e.to_string()));
        if let Reading::ToChat(model) = reading {
            // Anthropic's events become chat chunks as each arrives.
            let mut chunks = providers::anthropic::ChunkStream::new(model, now_ms() / 1000);
            let body = body.map(move |chunk| chunk.map(|bytes| chunks.push(&bytes)));
            return Ok(Answer::Stream(Box::pin(body), head));
        }
        Ok(Answer::Stream(Box::pin(body), head))
    } else {
        // The body gets the same time again as the head had: a body that stalls is a timeout.
        let mut body = Box::pin(crate::http::response_bytes(&response));
        let bytes = match outbound::within(&mut body, timeout).await {
            Some(read) => read.map_err(|e| {
                Failure::new(
                    Error::upstream("The upstream model API's answer broke off."),
                    Ended::UpstreamCut,
                )
                .saying(e.to_string())
            })?,
            None => {
                return Err(Failure::new(
                    Error::upstream_timeout(timeout_ms),
                    Ended::UpstreamTimeout,
                )
                .saying("the answer's body did not arrive within the timeout after its head"))
            }
        };
        let refuse = |why: &str, bytes: &[u8]| not_an_answer(why, &bytes[..bytes.len().min(300)]);
        let value = upstream::whole_answer(&bytes).map_err(|why| refuse(why, &bytes))?;
        let whole = match reading {
            Reading::AsIs => Whole { bytes, value },
            Reading::Messages => {
                providers::anthropic::check_message(&value).map_err(|why| refuse(why, &bytes))?;
                Whole { bytes, value }
            }
            Reading::ToChat(model) => {
                providers::anthropic::completion(&value, model, now_ms() / 1000)
                    .map(Whole::of)
                    .map_err(|why| refuse(why, &bytes))?
            }
        };
        Ok(Answer::Json(whole, head))
    }
}

/// A 2xx that is not an answer: a failed try (502); what it said instead stays with the owner (the
/// usage record).
fn not_an_answer(why: &str, said: &[u8]) -> Failure {
    Failure::new(Error::upstream(why), Ended::UpstreamError).saying(String::from_utf8_lossy(said))
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
        return Answer::Json(Whole::of(reply.completion()), Head::default());
    }
    let frames = stream::iter(reply.sse_frames()).then(|frame| async move {
        Delay::from(Duration::from_millis(upstream::demo::TOKEN_DELAY_MS)).await;
        Ok::<Vec<u8>, String>(frame.into_bytes())
    });
    Answer::Stream(Box::pin(frames), Head::default())
}

/// Phase 6 — relay and meter: the upstream's SSE goes out event by event as it arrives. When a token
/// or spend window limits the consumer, every event is checked against the granted budget; past it
/// the counter is asked for more, and if none is left the stream ends cleanly with the budget's
/// error event and `[DONE]`. However the stream ends (done, cut, budget, client gone, even while the
/// upstream is silent), the upstream is cancelled if still running and the lease is settled once,
/// before the final bytes. An upstream silent for `silence_ms` once its stream began is given up.
fn relay(
    lease: Lease,
    watch: Watch,
    relay: Relay,
    source: Source,
    abort: AbortController,
    silence_ms: i64,
) -> impl Stream<Item = Result<Vec<u8>, worker::Error>> {
    let budget = lease
        .limits
        .meters_budget()
        .then(|| lease.completion_cap().unwrap_or(0));
    let state = MeteredStream {
        source,
        relay: relay.with_budget(budget),
        last_sent: now_ms(),
        last_heard: now_ms(),
        silence_ms,
        lease: Some(lease),
        watch,
        abort: Some(abort),
        end: None,
    };
    stream::unfold(state, |mut s| async move {
        s.next_bytes().await.map(|bytes| (Ok(bytes), s))
    })
}

struct MeteredStream {
    source: Source,
    relay: Relay,
    /// When bytes last went out (heartbeats fill silences).
    last_sent: i64,
    /// When the upstream's stream last sent anything (or began), and how long it may stay silent.
    last_heard: i64,
    silence_ms: i64,
    /// Taken when settled.
    lease: Option<Lease>,
    watch: Watch,
    abort: Option<AbortController>,
    /// Set when the gateway itself ends the stream (budget spent, counter gone).
    end: Option<(u16, Ended)>,
}

impl MeteredStream {
    async fn next_bytes(&mut self) -> Option<Vec<u8>> {
        loop {
            let lease = self.lease.as_ref()?;
            let next = match &mut self.source {
                Source::Body(body) => {
                    lease
                        .wait(
                            &mut self.watch,
                            std::pin::pin!(body.next()),
                            Some(HEARTBEAT_MS),
                        )
                        .await
                }
                Source::Waiting(upstream) => match lease
                    .wait(&mut self.watch, Pin::new(upstream), Some(HEARTBEAT_MS))
                    .await
                {
                    Woke::Done(answer) => {
                        if let Some(bytes) = self.answered(answer).await {
                            return self.sent(bytes);
                        }
                        continue;
                    }
                    Woke::Gone => Woke::Gone,
                    Woke::Denied(e) => Woke::Denied(e),
                    _ => Woke::Idle,
                },
            };
            let next = match next {
                Woke::Done(next) => next,
                Woke::Gone => {
                    self.finish(499, Ended::ClientGone).await;
                    return None;
                }
                // Disabled, or its key or session revoked, since it began: the stream ends with
                // that error event.
                Woke::Denied(e) => {
                    let bytes = self.relay.on_error(&e);
                    self.finish(e.status, Ended::Revoked).await;
                    if bytes.is_empty() {
                        return None;
                    }
                    return self.sent(bytes);
                }
                _ => {
                    let streaming = matches!(self.source, Source::Body(_));
                    if streaming && now_ms() - self.last_heard >= self.silence_ms {
                        return self.silent().await;
                    }
                    if now_ms() - self.last_sent >= HEARTBEAT_MS {
                        return self.sent(HEARTBEAT.to_vec());
                    }
                    continue;
                }
            };
            let bytes = match next {
                Some(Ok(chunk)) => {
                    self.last_heard = now_ms();
                    let (mut bytes, mut next) = self.relay.on_chunk(&chunk);
                    while next == Next::NeedBudget && !self.relay.is_finished() {
                        let (more, after) = self.extend_budget().await;
                        bytes.extend(more);
                        next = after;
                    }
                    if let (Some(said), Some(lease)) =
                        (self.relay.take_upstream_said(), self.lease.as_mut())
                    {
                        lease.upstream_error = Some(said);
                    }
                    bytes
                }
                Some(Err(e)) => {
                    if let Some(lease) = self.lease.as_mut() {
                        lease.upstream_error = Some(e.chars().take(UPSTREAM_TEXT_CHARS).collect());
                    }
                    self.relay.on_error(&Error::new(
                        Problem::UpstreamStreamInterrupted,
                        "The upstream connection failed mid-stream; the text so far was delivered.",
                    ))
                }
                None => self.relay.on_end(),
            };
            if let Some(lease) = self.lease.as_mut() {
                lease.progress.delivered = self.relay.completion_bound();
                if lease.progress.ttft_ms.is_none() && !bytes.is_empty() {
                    lease.progress.ttft_ms = Some(lease.elapsed());
                }
            }
            if self.relay.is_finished() {
                let (status, ended) = self.end.unwrap_or(if bytes.is_empty() {
                    (200, Ended::Complete)
                } else {
                    (502, Ended::UpstreamCut)
                });
                self.finish(status, ended).await;
            }
            if !bytes.is_empty() {
                return self.sent(bytes);
            }
            self.lease.as_ref()?;
        }
    }

    fn sent(&mut self, bytes: Vec<u8>) -> Option<Vec<u8>> {
        self.last_sent = now_ms();
        Some(bytes)
    }

    /// The upstream's answer arrived after the stream had started: its body from now on, or its
    /// failure as the stream's error event (booked as the failure says).
    async fn answered(&mut self, answer: Result<Answer, Failure>) -> Option<Vec<u8>> {
        let failure = match answer {
            Ok(Answer::Stream(body, head)) => {
                if let Some(lease) = self.lease.as_mut() {
                    lease.upstream_request_id = head.request_id;
                    if head.answered.is_some() {
                        lease.answered = head.answered;
                    }
                    lease.attempts = head.attempts;
                }
                self.source = Source::Body(body);
                self.last_heard = now_ms();
                return None;
            }
            Ok(Answer::Json(..)) => Failure::new(
                Error::upstream("The upstream answered a streamed request with a JSON body."),
                Ended::UpstreamCut,
            ),
            Err(failure) => failure,
        };
        let bytes = self.relay.on_error(&failure.error);
        if let Some(lease) = self.lease.as_mut() {
            lease.upstream_error = failure.said;
            lease.attempts = failure.attempts;
            if failure.tried.is_some() {
                lease.answered = failure.tried;
            }
            if failure.ended == Ended::UpstreamError {
                lease.progress.sent_upstream = false;
            }
        }
        self.finish(failure.error.status, failure.ended).await;
        Some(bytes)
    }

    /// The upstream's stream went silent for longer than the API's timeout: it is cancelled, and the
    /// client gets the stream's error event (what was delivered is booked as estimated).
    async fn silent(&mut self) -> Option<Vec<u8>> {
        let ms = self.silence_ms;
        if let Some(lease) = self.lease.as_mut() {
            lease.upstream_error = Some(format!("the stream sent nothing for {ms} ms"));
        }
        let bytes = self.relay.on_error(&Error::new(
            Problem::UpstreamStreamInterrupted,
            format!(
                "The upstream model API sent nothing for {ms} ms; the text so far was delivered."
            ),
        ));
        self.finish(504, Ended::UpstreamTimeout).await;
        self.sent(bytes)
    }

    /// Asks the counter for more; a spent budget (or an unreachable counter) ends the stream.
    async fn extend_budget(&mut self) -> (Vec<u8>, Next) {
        let Some(lease) = self.lease.as_ref() else {
            return (Vec::new(), Next::Read);
        };
        let want = self
            .relay
            .shortfall()
            .max(EXTEND_STEP)
            .max(self.relay.budget().unwrap_or(0) / 2);
        match lease.extend(want).await {
            Ok(granted) => self.relay.grant(granted),
            Err(e) => {
                self.end = Some(match e.problem {
                    Problem::CounterUnavailable => (503, Ended::CounterUnavailable),
                    _ if e.status == 429 => (429, Ended::BudgetCut),
                    // Disabled, or its key or session revoked, since it began.
                    _ => (e.status, Ended::Revoked),
                });
                (self.relay.on_error(&e), Next::Read)
            }
        }
    }

    /// The stream is over: cancel the upstream if it is still sending, and settle before the last
    /// bytes go out (so the client never sees an end whose usage was not stored).
    async fn finish(&mut self, status: u16, ended: Ended) {
        if status != 200 {
            if let Some(abort) = self.abort.take() {
                abort.abort();
            }
        }
        let Some(lease) = self.lease.take() else {
            return;
        };
        let outcome = match self.relay.usage() {
            Some(usage) => reported(&lease, status, ended, usage),
            None => lease.estimated(status, ended),
        };
        lease.settle(outcome).await;
    }
}

impl Drop for MeteredStream {
    /// The client went away mid-stream (the runtime dropped the body): cancel the upstream. The
    /// lease, dropped with it, files what was delivered as `client_gone`.
    fn drop(&mut self) {
        if self.lease.is_some() {
            if let Some(abort) = self.abort.take() {
                abort.abort();
            }
        }
    }
}
