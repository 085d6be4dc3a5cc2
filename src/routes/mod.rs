//! Edge routing: resolves the route, dispatches (the admin API authenticates its callers itself), and
//! applies the project's CORS policy to end-user routes.

mod admin;
mod auth;
pub mod housekeeping;
pub(crate) mod oauth;
mod owners;

use worker::{Context, Env, Headers, Request, Response};

use crate::assets;
use crate::error::Error;
use crate::http::{boxed, header, json, problem, with_random};
use crate::ids::new_id;
use crate::pipeline;
use crate::router::{route, EndUser, OAuthRoute, OwnerAuth, Public, Route};

/// Headers a browser client may read from our responses (rate limits, retry hints).
const EXPOSED: &str = "Retry-After, x-should-retry, x-request-id, request-id, openai-processing-ms, RateLimit, RateLimit-Policy, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, \
    x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens, WWW-Authenticate";

pub async fn handle(req: Request, env: &Env, ctx: &Context) -> worker::Result<Response> {
    // The method as sent: `req.method()` reads any method it does not know (PROPFIND, PURGE…) as GET.
    let method = req.inner().method();
    let path = crate::http::Target::of(&req).path;
    let origin = header(&req, "origin");
    let requested_headers = header(&req, "access-control-request-headers");
    let cors_project = crate::router::cors_project(&path).map(str::to_string);
    let result = match route(&method, &path) {
        Ok(route) => dispatch(route, req, env, ctx).await,
        // Anthropic clients read errors in Anthropic's shape, a wrong method or path too.
        Err(e) if crate::router::speaks_anthropic(&path) => Err(e.in_anthropic_shape()),
        Err(e) => Err(e),
    };
    let mut response = match result {
        Ok(r) => r,
        Err(e) => problem(&e)?,
    };
    // Every answer names its request (the data plane sets its own, or the upstream's, first).
    if !response.headers().has("x-request-id")? {
        if let Ok(id) = with_random(|r| new_id("req", r)) {
            response.headers_mut().set("x-request-id", &id)?;
        }
    }
    // Anthropic SDKs read it as `request-id` (`_request_id`, `APIError.requestID`).
    if crate::router::speaks_anthropic(&path) && !response.headers().has("request-id")? {
        if let Some(id) = response.headers().get("x-request-id")? {
            response.headers_mut().set("request-id", &id)?;
        }
    }
    if let Some(project) = cors_project {
        // Whether the answer carries CORS headers depends on the Origin: a shared cache must not
        // hand one origin's answer to another.
        vary_origin(response.headers_mut())?;
        if let Some(origin) = origin {
            if let Ok(true) = origin_allowed(env, &project, &origin).await {
                allow_origin(
                    response.headers_mut(),
                    &origin,
                    method == "OPTIONS",
                    requested_headers.as_deref(),
                )?;
            }
        }
    }
    Ok(response)
}

/// Adds `Origin` to `Vary`, keeping what is there (an upstream's own) and never naming it twice.
fn vary_origin(headers: &mut Headers) -> worker::Result<()> {
    let current = headers.get("vary")?.unwrap_or_default();
    let named = current
        .split(',')
        .any(|v| v.trim().eq_ignore_ascii_case("origin") || v.trim() == "*");
    if named {
        return Ok(());
    }
    if current.trim().is_empty() {
        headers.set("vary", "Origin")
    } else {
        headers.set("vary", &format!("{current}, Origin"))
    }
}

async fn dispatch(route: Route, req: Request, env: &Env, ctx: &Context) -> Result<Response, Error> {
    match route {
        Route::Public(Public::Health) => json(
            200,
            &serde_json::json!({"status": "ok", "service": "sluice"}),
        ),
        Route::Public(Public::Asset { path }) => boxed(serve_asset(&req, env, &path)).await,
        Route::Public(Public::DevMailbox) => auth::dev_mailbox(env).await,
        Route::Public(Public::OAuthServerMetadata { project }) => {
            boxed(oauth::server_metadata(req, env, &project)).await
        }
        Route::Public(Public::OAuthResourceMetadata { project, api }) => {
            boxed(oauth::resource_metadata(req, env, &project, &api)).await
        }
        Route::Public(Public::ReactDemo) => react_demo(req, env).await,
        Route::EndUser { project, route } => end_user(route, req, env, ctx, &project).await,
        Route::Admin(call) => boxed(admin::handle(call, req, env, ctx)).await,
        Route::OwnerAuth(route) => match route {
            OwnerAuth::DevLogin => boxed(owners::dev_login(req, env)).await,
            OwnerAuth::OtpStart => boxed(owners::otp_start(req, env)).await,
            OwnerAuth::OtpVerify => boxed(owners::otp_verify(req, env)).await,
            OwnerAuth::Refresh => boxed(owners::refresh(req, env)).await,
            OwnerAuth::Logout => boxed(owners::logout(req, env)).await,
            OwnerAuth::Jwks => owners::jwks(env),
            OwnerAuth::Social(provider) => owners::social(&provider),
        },
    }
}

/// A project's end-user routes: the data plane and sign-in.
async fn end_user(
    route: EndUser,
    req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
) -> Result<Response, Error> {
    match route {
        EndUser::Metered { api, endpoint } => {
            boxed(pipeline::metered(req, env, ctx, endpoint, project, &api)).await
        }
        EndUser::CountTokens { api } => {
            boxed(pipeline::count_tokens(req, env, ctx, project, &api)).await
        }
        EndUser::GetModel {
            api,
            model,
            anthropic,
        } => {
            boxed(pipeline::get_model(
                req, env, ctx, project, &api, &model, anthropic,
            ))
            .await
        }
        EndUser::ListModels { api, anthropic } => {
            boxed(pipeline::list_models(
                req, env, ctx, project, &api, anthropic,
            ))
            .await
        }
        EndUser::ConsumerUsage { api } => {
            boxed(pipeline::consumer_usage(req, env, ctx, project, &api)).await
        }
        EndUser::OtpStart => boxed(auth::otp_start(req, env, ctx, project)).await,
        EndUser::OtpVerify => boxed(auth::otp_verify(req, env, ctx, project)).await,
        EndUser::Refresh => boxed(auth::refresh(req, env, ctx, project)).await,
        EndUser::Logout => boxed(auth::logout(req, env, ctx, project)).await,
        EndUser::Me => boxed(auth::me(req, env, project)).await,
        EndUser::TokenExchange => boxed(auth::token_exchange(req, env, ctx, project)).await,
        EndUser::Jwks => boxed(auth::jwks(env, project)).await,
        EndUser::OAuth(route) => {
            let answer = match route {
                OAuthRoute::Authorize => boxed(oauth::authorize(req, env, ctx, project)).await,
                OAuthRoute::Token => boxed(oauth::token(req, env, ctx, project)).await,
                OAuthRoute::Revoke => boxed(oauth::revoke(req, env, ctx, project)).await,
                OAuthRoute::Introspect => boxed(oauth::introspect(req, env, project)).await,
                OAuthRoute::Register => boxed(oauth::register(req, env, ctx, project)).await,
                OAuthRoute::Metadata => boxed(oauth::server_metadata(req, env, project)).await,
            };
            // The OAuth endpoints answer every error in RFC 6749's shape; the page and the
            // metadata keep theirs.
            match route {
                OAuthRoute::Authorize | OAuthRoute::Metadata => answer,
                _ => answer.map_err(oauth::in_oauth_shape),
            }
        }
        EndUser::ListGrants => boxed(oauth::list_grants(req, env, project)).await,
        EndUser::RevokeGrant { grant } => {
            boxed(oauth::delete_grant(req, env, ctx, project, &grant)).await
        }
        EndUser::Preflight => Ok(Response::empty()?.with_status(204)),
    }
}

/// The React demo page (`web/react-demo`, bundled by `make build` into the static assets): only a
/// dev gateway serves it.
async fn react_demo(req: Request, env: &Env) -> Result<Response, Error> {
    if !crate::email::dev_mode(env) {
        return Err(Error::not_found(
            "No route for the React demo outside dev mode.",
        ));
    }
    let assets = env
        .assets("ASSETS")
        .map_err(|_| Error::misconfigured("The static assets binding `ASSETS` is missing."))?;
    // The assets' answer has immutable headers; the gateway adds its own, so it is copied.
    let mut fetched = assets.fetch_request(req).await?;
    let headers = Headers::new();
    for name in ["content-type", "etag", "cache-control"] {
        if let Some(v) = fetched.headers().get(name)? {
            headers.set(name, &v)?;
        }
    }
    let status = fetched.status_code();
    let body = fetched.bytes().await?;
    Ok(Response::from_bytes(body)?
        .with_status(status)
        .with_headers(headers))
}

/// Serves a browser file: ETag revalidation, a year of caching for `?v=<content hash>`, and open CORS
/// (the widget imports the SDK as a module from pages on other origins).
async fn serve_asset(req: &Request, env: &Env, path: &str) -> Result<Response, Error> {
    let asset = match assets::asset(path) {
        Some(a) if !a.dev_only || crate::email::dev_mode(env) => a,
        _ => return Err(Error::not_found(format!("No route for {path}."))),
    };
    let loaded = load_asset(env, asset).await?;
    let version = crate::http::Target::of(req).query("v");
    let headers = Headers::new();
    headers.set("content-type", asset.content_type)?;
    headers.set("etag", &loaded.etag())?;
    headers.set("cache-control", loaded.cache_control(version.as_deref()))?;
    headers.set("access-control-allow-origin", "*")?;
    headers.set("x-content-type-options", "nosniff")?;
    if path.starts_with("/console") {
        // The console talks to its own origin only, and cannot be framed.
        headers.set(
            "content-security-policy",
            "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        )?;
        headers.set("referrer-policy", "no-referrer")?;
        headers.delete("access-control-allow-origin")?;
    }
    if loaded.not_modified(header(req, "if-none-match").as_deref()) {
        return Ok(Response::empty()?.with_status(304).with_headers(headers));
    }
    // For HEAD the runtime drops the body and keeps its length.
    Ok(Response::from_bytes(loaded.body.clone())?.with_headers(headers))
}

thread_local! {
    /// Served files, read from the static assets once per isolate (they change only with a deploy).
    static ASSET_MEMORY: std::cell::RefCell<std::collections::HashMap<&'static str, std::rc::Rc<assets::Loaded>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// A served file's content and version: from this isolate's memory, else from the assets binding.
async fn load_asset(env: &Env, asset: assets::Asset) -> Result<std::rc::Rc<assets::Loaded>, Error> {
    if let Some(hit) = ASSET_MEMORY.with(|m| m.borrow().get(asset.file).cloned()) {
        return Ok(hit);
    }
    let binding = env
        .assets("ASSETS")
        .map_err(|_| Error::misconfigured("The static assets binding `ASSETS` is missing."))?;
    let url = format!(
        "https://assets.invalid/{}/{}",
        assets::STATIC_DIR,
        asset.file
    );
    let mut fetched = binding.fetch(url, None).await?;
    // An HTML file may be answered with a redirect to its canonical path (`html_handling`).
    if (300..400).contains(&fetched.status_code()) {
        if let Some(to) = fetched.headers().get("location")? {
            let to = if to.starts_with('/') {
                format!("https://assets.invalid{to}")
            } else {
                to
            };
            fetched = binding.fetch(to, None).await?;
        }
    }
    if fetched.status_code() != 200 {
        return Err(Error::misconfigured(format!(
            "The static assets have no `{}/{}`: run `make build`.",
            assets::STATIC_DIR,
            asset.file
        )));
    }
    let loaded = std::rc::Rc::new(assets::Loaded::new(asset, fetched.bytes().await?));
    ASSET_MEMORY.with(|m| m.borrow_mut().insert(asset.file, loaded.clone()));
    Ok(loaded)
}

/// Whether the project lets pages from `origin` call it (`*` lets every origin).
async fn origin_allowed(env: &Env, project: &str, origin: &str) -> Result<bool, Error> {
    let project = crate::cache::project(env, &crate::timing::Timing::default(), project).await?;
    Ok(project.allows_origin(origin))
}

/// `requested` is the preflight's `Access-Control-Request-Headers`: allowed as asked, so an API that
/// reads its credential from a custom header can be called from a browser too.
fn allow_origin(
    headers: &mut Headers,
    origin: &str,
    preflight: bool,
    requested: Option<&str>,
) -> worker::Result<()> {
    headers.set("access-control-allow-origin", origin)?;
    headers.set("access-control-expose-headers", EXPOSED)?;
    if preflight {
        headers.set("access-control-allow-methods", "GET, POST, DELETE, OPTIONS")?;
        let asked = requested.filter(|h| {
            h.len() <= 1000
                && h.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_, ".contains(&c))
        });
        headers.set(
            "access-control-allow-headers",
            asked.unwrap_or("authorization, content-type, x-api-key"),
        )?;
        headers.set("access-control-max-age", "600")?;
    }
    Ok(())
}
