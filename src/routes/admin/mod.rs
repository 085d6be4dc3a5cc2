//! The owner's admin API, one file per resource: orgs (members, keys, audit), projects, APIs, plans,
//! consumers (with their keys and JWT credentials), usage and auth events. Every handler is a small
//! function that answers a `Reply`; `handle` is the one place that authenticates the caller,
//! authorizes the route (`access`), maps it to its handler and files the audit event of a write.

mod access;
mod apis;
mod consumers;
mod events;
mod oauth;
mod orgs;
mod plans;
mod projects;
mod providers;
mod usage;

pub use access::Caller;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use worker::{Context, D1Database, Env, Request, Response};

use crate::error::Error;
use crate::http::{boxed, encryption_secret, json, no_content, now_ms, random, read_body};
use crate::identity::{self, record_event, EventDraft};
use crate::input::parse_body;
use crate::records::org::AuditEvent;
use crate::router::{Admin, AdminCall, AdminRoute};
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

/// One admin request: its caller, body, query and time, and the storage and runtime it acts on.
pub struct Call<'a> {
    req: Request,
    pub env: &'a Env,
    ctx: &'a Context,
    pub db: D1Database,
    pub now: i64,
    pub caller: Caller,
    /// The caller's role in the route's org (for caller-wide routes, see `access::authorize`).
    pub role: crate::org::Role,
    /// The org the audit event of a write goes to (the route's, or one the handler made).
    pub audit_org: Option<String>,
    /// The body, read once (authorization may need it before the handler).
    raw: Option<Vec<u8>>,
}

impl Call<'_> {
    async fn raw_body(&mut self) -> Result<&[u8], Error> {
        if self.raw.is_none() {
            self.raw = Some(read_body(&mut self.req, ADMIN_BODY_LIMIT).await?);
        }
        Ok(self.raw.as_deref().unwrap_or_default())
    }

    /// The JSON body (bounded), parsed into `T`.
    pub async fn body<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        parse_body(self.raw_body().await?)
    }

    /// The body as a JSON object, for authorization (an empty body is an empty object).
    async fn body_object(&mut self) -> Result<Value, Error> {
        let raw = self.raw_body().await?;
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Object(Default::default()));
        }
        parse_body(raw)
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
    admin: AdminCall,
    req: Request,
    env: &Env,
    ctx: &Context,
) -> Result<Response, Error> {
    let db = d1::db(env)?;
    let now = now_ms();
    let caller = access::caller(&req, env, &db, now).await?;
    let target = crate::http::Target::of(&req).path;
    let ip = crate::identity::client_ip(&req);
    let mut call = Call {
        req,
        env,
        ctx,
        db,
        now,
        caller,
        role: crate::org::Role::Viewer,
        audit_org: None,
        raw: None,
    };
    let body = if matches!(
        admin.scope,
        crate::org::Scope::BodyOrg | crate::org::Scope::BodyProject
    ) {
        Some(call.body_object().await?)
    } else {
        None
    };
    let grant = access::authorize(&call.db, &call.caller, admin.spec, &admin.scope, || {
        Ok(body.unwrap_or_default())
    })
    .await?;
    call.role = grant.role;
    call.audit_org = grant.org_id;
    if let Caller::OrgKey { key, .. } = &call.caller {
        touch_org_key(ctx, env, &key.id, now);
    }
    let spec = admin.spec;
    let c = &mut call;
    let reply = match admin.route {
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
        Admin::ListOAuthClients { project } => boxed(oauth::list(c, &project)).await,
        Admin::CreateOAuthClient { project } => boxed(oauth::create(c, &project)).await,
        Admin::GetOAuthClient { project, client } => boxed(oauth::get(c, &project, &client)).await,
        Admin::PatchOAuthClient { project, client } => {
            boxed(oauth::patch(c, &project, &client)).await
        }
        Admin::DeleteOAuthClient { project, client } => {
            boxed(oauth::delete(c, &project, &client)).await
        }
        Admin::ListOAuthGrants { project } => boxed(oauth::list_grants(c, &project)).await,
        Admin::RevokeOAuthGrant { project, grant } => {
            boxed(oauth::revoke_grant(c, &project, &grant)).await
        }
        Admin::ListMtlsCredentials { project, consumer } => {
            boxed(consumers::list_mtls_credentials(c, &project, &consumer)).await
        }
        Admin::CreateMtlsCredential { project, consumer } => {
            boxed(consumers::create_mtls_credential(c, &project, &consumer)).await
        }
        Admin::RevokeMtlsCredential { project, id } => {
            boxed(consumers::revoke_mtls_credential(c, &project, &id)).await
        }
        Admin::OrgsMe => boxed(orgs::me(c)).await,
        Admin::ListOrgs => boxed(orgs::list(c)).await,
        Admin::CreateOrg => boxed(orgs::create(c)).await,
        Admin::GetOrg { org } => boxed(orgs::get(c, &org)).await,
        Admin::PatchOrg { org } => boxed(orgs::patch(c, &org)).await,
        Admin::DeleteOrg { org } => boxed(orgs::delete(c, &org)).await,
        Admin::ListMembers { org } => boxed(orgs::list_members(c, &org)).await,
        Admin::InviteMember { org } => boxed(orgs::invite_member(c, &org)).await,
        Admin::PatchMember { org, id } => boxed(orgs::patch_member(c, &org, &id)).await,
        Admin::RemoveMember { org, id } => boxed(orgs::remove_member(c, &org, &id)).await,
        Admin::ListOrgKeys { org } => boxed(orgs::list_keys(c, &org)).await,
        Admin::CreateOrgKey { org } => boxed(orgs::create_key(c, &org)).await,
        Admin::RevokeOrgKey { org, id } => boxed(orgs::revoke_key(c, &org, &id)).await,
        Admin::OrgAudit { org } => boxed(orgs::audit(c, &org)).await,
        Admin::ListProviderKeys { org } => boxed(providers::list(c, &org)).await,
        Admin::CreateProviderKey { org } => boxed(providers::create(c, &org)).await,
        Admin::ReplaceProviderKey { org, provider } => {
            boxed(providers::replace(c, &org, &provider)).await
        }
        Admin::DeleteProviderKey { org, provider } => {
            boxed(providers::delete(c, &org, &provider)).await
        }
        Admin::ResealProviderKeys { org } => boxed(providers::reseal(c, &org)).await,
    }?;
    let (status, response) = match reply {
        Reply::Ok(body) => (200, json(200, &body)?),
        Reply::Created(body) => (201, json(201, &body)?),
        Reply::NoContent => (204, no_content()?),
    };
    if spec.method != "GET" {
        if let Some(org_id) = call.audit_org.take() {
            audit(&call, spec, org_id, target, status, ip).await;
        }
    }
    Ok(response)
}

/// Files the audit event of a write that succeeded, before answering (so a listing right after
/// shows it). A failure to file it is logged; the write itself stands.
async fn audit(
    c: &Call<'_>,
    spec: &AdminRoute,
    org_id: String,
    target: String,
    status: u16,
    ip: Option<String>,
) {
    let (actor_type, actor_id, actor) = c.caller.actor();
    let Ok(id) = crate::http::with_random(|r| crate::ids::new_id("aud", r)) else {
        return;
    };
    let event = AuditEvent {
        id,
        org_id,
        created_at: c.now,
        actor_type,
        actor_id,
        actor,
        action: spec.action(),
        target,
        status,
        ip,
    };
    if let Err(e) = d1::insert_audit_event(&c.db, &event).await {
        worker::console_error!("audit event not recorded: {}", e.detail);
    }
}

/// Notes an org key's use after the response (at most once a minute per key).
fn touch_org_key(ctx: &Context, env: &Env, key_id: &str, now: i64) {
    let env = env.clone();
    let key_id = key_id.to_string();
    ctx.wait_until(async move {
        if let Ok(db) = d1::db(&env) {
            if let Err(e) = d1::touch_org_key(&db, &key_id, now).await {
                worker::console_error!("org key use not recorded: {}", e.detail);
            }
        }
    });
}
