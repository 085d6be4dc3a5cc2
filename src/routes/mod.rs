//! Edge routing: resolves the route, checks the admin token for owner routes, dispatches.

mod admin;

use worker::{Context, Env, Request, Response};

use crate::auth::constant_time_eq;
use crate::error::Error;
use crate::http::{header, json, secret};
use crate::pipeline;
use crate::router::{route, Route};

pub async fn handle(req: Request, env: &Env, ctx: &Context) -> Result<Response, Error> {
    let method = req.method().to_string();
    let path = req.path();
    let route = route(&method, &path)?;
    if route.is_admin() {
        check_admin(&req, env)?;
    }
    match route {
        Route::Health => json(
            200,
            &serde_json::json!({"status": "ok", "service": "sluice"}),
        ),
        Route::ChatCompletions { project, api } => {
            pipeline::chat_completions(req, env, ctx, &project, &api).await
        }
        Route::ListModels { project, api } => {
            pipeline::list_models(req, env, ctx, &project, &api).await
        }
        Route::ConsumerUsage { project, api } => {
            pipeline::consumer_usage(req, env, ctx, &project, &api).await
        }
        admin_route => admin::handle(admin_route, req, env).await,
    }
}

/// The owner's routes need `Authorization: Bearer <ADMIN_TOKEN>`, compared in constant time.
fn check_admin(req: &Request, env: &Env) -> Result<(), Error> {
    let Some(expected) = secret(env, "ADMIN_TOKEN") else {
        return Err(Error::admin_unauthorized()
            .with_field("hint", "ADMIN_TOKEN is not configured on this gateway."));
    };
    let sent = header(req, "authorization");
    let token = sent
        .as_deref()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match token {
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(Error::admin_unauthorized()),
    }
}
