//! Sluice, an AI API gateway on Cloudflare Workers: the fetch entry point, which only routes.
#![forbid(unsafe_code)]

pub mod anthropic;
pub mod assets;
pub mod auth;
pub mod crypto;
pub mod encoding;
pub mod error;
pub mod ids;
pub mod input;
pub mod limits;
pub mod org;
pub mod providers;
pub mod records;
pub mod router;
pub mod stream;
pub mod time;
pub mod timing;
pub mod upstream;
pub mod usage;

#[cfg(target_arch = "wasm32")]
mod admission;
#[cfg(target_arch = "wasm32")]
mod authenticate;
#[cfg(target_arch = "wasm32")]
mod cache;
#[cfg(target_arch = "wasm32")]
mod email;
#[cfg(target_arch = "wasm32")]
mod http;
#[cfg(target_arch = "wasm32")]
mod identity;
#[cfg(target_arch = "wasm32")]
mod outbound;
#[cfg(target_arch = "wasm32")]
mod pipeline;
#[cfg(target_arch = "wasm32")]
mod routes;
#[cfg(target_arch = "wasm32")]
mod store;

#[cfg(target_arch = "wasm32")]
use worker::{event, Context, Env, Request, Response, ScheduleContext, ScheduledEvent};

#[cfg(target_arch = "wasm32")]
#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    routes::handle(req, &env, &ctx).await
}

/// The Cron Trigger (`wrangler.toml`): housekeeping that no request does.
#[cfg(target_arch = "wasm32")]
#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    routes::housekeeping::run(&env).await;
}
