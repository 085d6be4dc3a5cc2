//! The owner's admin API, one file per resource: projects, APIs, plans, consumers (with their keys
//! and JWT credentials), usage and auth events. Every handler is a small function that answers a
//! `Reply`; `handle` is the one place that maps an admin route to its handler.

mod apis;
mod consumers;
mod events;
mod plans;
mod projects;
mod usage;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use worker::{Context, D1Database, Env, Request, Response};

use crate::error::Error;
use crate::http::{boxed, encryption_secret, json, no_content, now_ms, random, read_body};
use crate::identity::{self, record_event, EventDraft};
use crate::input::parse_body;
use crate::router::Admin;
use crate::store::d1;

/// Admin bodies are small; anything bigger is a mistake.
const ADMIN_BODY_LIMIT: usize = 64 * 1024;

/// What an admin handler answers.
pub enum Reply {
    Ok(Value),
    Created(Value),
    NoContent,
}

impl Reply {
    pub fn ok(body: impl Serialize) -> Result<Reply, Error> {
        to_value(body).map(Reply::Ok)
    }
    pub fn created(body: impl Serialize) -> Result<Reply, Error> {
        to_value(body).map(Reply::Created)
    }
}

fn to_value(body: impl Serialize) -> Result<Value, Error> {
    serde_json::to_value(body)
        .map_err(|e| Error::internal(format!("A reply could not be written: {e}.")))
}

/// One admin request: its body, query and time, and the storage and runtime it acts on.
pub struct Call<'a> {
    req: Request,
    pub env: &'a Env,
    ctx: &'a Context,
    pub db: D1Database,
    pub now: i64,
}

impl Call<'_> {
    /// The JSON body (bounded), parsed into `T`.
    pub async fn body<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        parse_body(&read_body(&mut self.req, ADMIN_BODY_LIMIT).await?)
    }

    /// The query string's pairs.
    pub fn query(&self) -> Result<Vec<(String, String)>, Error> {
        Ok(crate::http::Target::of(&self.req).query_pairs().collect())
    }

    /// Files an auth event after the response.
    pub fn event(&self, draft: EventDraft) {
        record_event(self.ctx, self.env, draft);
    }

    /// Encrypts a provider key (or a consumer's HS256 secret) with ENCRYPTION_KEY; refuses to store
    /// it in the clear.
    pub fn seal(&self, key: &str) -> Result<String, Error> {
        let secret = encryption_secret(self.env)?;
        let mut nonce = [0u8; 12];
        random(&mut nonce)?;
        Ok(crate::crypto::seal(&secret, nonce, key))
    }
}

/// An event of `kind` in the project, for `Call::event`.
pub fn event(project_id: &str, kind: &'static str) -> EventDraft {
    identity::event(project_id, kind)
}

pub async fn handle(
    route: Admin,
    req: Request,
    env: &Env,
    ctx: &Context,
) -> Result<Response, Error> {
    let mut call = Call {
        req,
        env,
        ctx,
        db: d1::db(env)?,
        now: now_ms(),
    };
    let c = &mut call;
    let reply = match route {
        Admin::ListProjects => boxed(projects::list(c)).await,
        Admin::CreateProject => boxed(projects::create(c)).await,
        Admin::GetProject { project } => boxed(projects::get(c, &project)).await,
        Admin::PatchProject { project } => boxed(projects::patch(c, &project)).await,
        Admin::RotateSigningKey { project } => {
            boxed(projects::rotate_signing_key(c, &project)).await
        }
        Admin::AuthEvents { project } => boxed(events::list(c, &project)).await,
        Admin::ListApis => boxed(apis::list(c)).await,
        Admin::CreateApi => boxed(apis::create(c)).await,
        Admin::GetApi { id } => boxed(apis::get(c, &id)).await,
        Admin::PatchApi { id } => boxed(apis::patch(c, &id)).await,
        Admin::SetAuthMode { api } => boxed(apis::set_auth_mode(c, &api)).await,
        Admin::ListPlans { api } => boxed(plans::list(c, &api)).await,
        Admin::CreatePlan { api } => boxed(plans::create(c, &api)).await,
        Admin::PatchPlan { api, plan } => boxed(plans::patch(c, &api, plan)).await,
        Admin::SetConsumerPlan { api, consumer } => {
            boxed(plans::subscribe(c, &api, &consumer)).await
        }
        Admin::ApiUsage { api } => boxed(usage::report(c, &api)).await,
        Admin::ListConsumers { project } => boxed(consumers::list(c, &project)).await,
        Admin::CreateConsumer { project } => boxed(consumers::create(c, &project)).await,
        Admin::GetConsumer { project, id } => boxed(consumers::get(c, &project, &id)).await,
        Admin::PatchConsumer { project, id } => boxed(consumers::patch(c, &project, &id)).await,
        Admin::CreateKey { project, consumer } => {
            boxed(consumers::create_key(c, &project, &consumer)).await
        }
        Admin::ListKeys { project } => boxed(consumers::list_keys(c, &project)).await,
        Admin::RevokeKey { project, id } => boxed(consumers::revoke_key(c, &project, &id)).await,
        Admin::ListJwtCredentials { project, consumer } => {
            boxed(consumers::list_jwt_credentials(c, &project, &consumer)).await
        }
        Admin::CreateJwtCredential { project, consumer } => {
            boxed(consumers::create_jwt_credential(c, &project, &consumer)).await
        }
        Admin::RevokeJwtCredential { project, id } => {
            boxed(consumers::revoke_jwt_credential(c, &project, &id)).await
        }
    }?;
    match reply {
        Reply::Ok(body) => json(200, &body),
        Reply::Created(body) => json(201, &body),
        Reply::NoContent => no_content(),
    }
}
