//! Admin: a project's OAuth clients (a confidential client's secret shown once) and its users' grants.

use serde_json::{json, Value};

use super::{event, Call, Reply};
use crate::auth::oauth::ClientType;
use crate::error::Error;
use crate::http::with_random;
use crate::identity::EventDraft;
use crate::ids::new_id;
use crate::input::oauth::{ClientPatch, NewClient};
use crate::records::oauth::OAuthClient;
use crate::records::{Consumer, ConsumerKind, ConsumerStatus, Project};
use crate::store::d1;

async fn client(c: &Call<'_>, project: &Project, id: &str) -> Result<OAuthClient, Error> {
    d1::oauth_client(&c.db, &project.id, id)
        .await?
        .ok_or_else(|| {
            Error::not_found(format!(
                "There is no OAuth client `{id}` in project `{}`.",
                project.slug
            ))
        })
}

pub async fn list(c: &mut Call<'_>, project: &str) -> Result<Reply, Error> {
    let project = d1::project_by_slug(&c.db, project).await?;
    let clients: Vec<Value> = d1::list_oauth_clients(&c.db, &project.id)
        .await?
        .iter()
        .map(|cl| cl.to_json(&project.slug))
        .collect();
    Reply::ok(json!({ "clients": clients }))
}

/// A new client; a confidential one gets its secret (in this answer only) and a consumer of its own,
/// which its `client_credentials` tokens are metered to.
pub async fn create(c: &mut Call<'_>, project: &str) -> Result<Reply, Error> {
    let input: NewClient = c.body().await?;
    let client_type = input.validate()?;
    let project = d1::project_by_slug(&c.db, project).await?;
    let id = with_random(|r| new_id("cli", r))?;
    let (secret, secret_hash, consumer_id) = if client_type == ClientType::Confidential {
        let (secret, hash) = crate::routes::oauth::client_secret()?;
        let consumer = Consumer {
            id: with_random(|r| new_id("con", r))?,
            project_id: project.id.clone(),
            name: format!("OAuth client {}", input.name),
            description: Some(format!("client_credentials tokens of OAuth client {id}")),
            kind: ConsumerKind::Key,
            status: ConsumerStatus::Enabled,
            created_at: c.now,
            email: None,
        };
        d1::create_consumer(&c.db, &consumer).await?;
        (Some(secret), Some(hash), Some(consumer.id))
    } else {
        (None, None, None)
    };
    let client = OAuthClient {
        id,
        project_id: project.id.clone(),
        name: input.name.trim().to_string(),
        client_type,
        redirect_uris: input.redirect_uris,
        scopes: input.scopes,
        secret_hash,
        consumer_id,
        dynamic: false,
        created_at: c.now,
        updated_at: c.now,
    };
    d1::create_oauth_client(&c.db, &client).await?;
    c.event(EventDraft {
        detail: Some(client.id.clone()),
        ..event(&project.id, "oauth_client_created")
    });
    let mut view = client.to_json(&project.slug);
    if let (Some(s), Some(obj)) = (secret, view.as_object_mut()) {
        obj.insert("client_secret".into(), Value::from(s));
    }
    Reply::created(view)
}

pub async fn get(c: &mut Call<'_>, project: &str, id: &str) -> Result<Reply, Error> {
    let project = d1::project_by_slug(&c.db, project).await?;
    Reply::ok(client(c, &project, id).await?.to_json(&project.slug))
}

pub async fn patch(c: &mut Call<'_>, project: &str, id: &str) -> Result<Reply, Error> {
    let input: ClientPatch = c.body().await?;
    let project = d1::project_by_slug(&c.db, project).await?;
    let mut cl = client(c, &project, id).await?;
    input.validate(cl.client_type)?;
    if let Some(n) = input.name.flatten() {
        cl.name = n.trim().to_string();
    }
    if let Some(uris) = input.redirect_uris.flatten() {
        cl.redirect_uris = uris;
    }
    if let Some(s) = input.scopes {
        cl.scopes = s;
    }
    cl.updated_at = c.now;
    d1::update_oauth_client(&c.db, &cl).await?;
    Reply::ok(cl.to_json(&project.slug))
}

/// Deletes a client after revoking every live grant it holds: its tokens fail on the next request. A
/// confidential client's own consumer is disabled, not deleted: its usage records keep naming it.
pub async fn delete(c: &mut Call<'_>, project: &str, id: &str) -> Result<Reply, Error> {
    let project = d1::project_by_slug(&c.db, project).await?;
    let cl = client(c, &project, id).await?;
    // Page by page (a listing holds 500) until none is live.
    loop {
        let live = d1::list_oauth_grants(&c.db, &project.id, None, Some(&cl.id), c.now).await?;
        if live.is_empty() {
            break;
        }
        for g in &live {
            crate::routes::oauth::revoke_grant(c.env, &c.db, &project, g, c.now).await?;
        }
    }
    // Before the client goes, so a failure here leaves it to be deleted again.
    if let Some(consumer) = &cl.consumer_id {
        super::consumers::disable(c, &project.id, consumer).await?;
    }
    d1::delete_oauth_client(&c.db, &project.id, &cl.id).await?;
    c.event(EventDraft {
        detail: Some(cl.id.clone()),
        ..event(&project.id, "oauth_client_deleted")
    });
    Ok(Reply::NoContent)
}

/// `?consumer=` and `?client=` narrow the list.
pub async fn list_grants(c: &mut Call<'_>, project: &str) -> Result<Reply, Error> {
    let project = d1::project_by_slug(&c.db, project).await?;
    let query = c.query()?;
    let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let grants: Vec<Value> = d1::list_oauth_grants(
        &c.db,
        &project.id,
        q("consumer").as_deref(),
        q("client").as_deref(),
        c.now,
    )
    .await?
    .iter()
    .map(|g| g.to_json())
    .collect();
    Reply::ok(json!({ "grants": grants }))
}

pub async fn revoke_grant(c: &mut Call<'_>, project: &str, grant: &str) -> Result<Reply, Error> {
    let project = d1::project_by_slug(&c.db, project).await?;
    let g = d1::oauth_grant(&c.db, &project.id, grant)
        .await?
        .filter(|g| g.revoked_at.is_none())
        .ok_or_else(|| {
            Error::not_found(format!(
                "There is no live grant `{grant}` in project `{}`.",
                project.slug
            ))
        })?;
    crate::routes::oauth::revoke_grant(c.env, &c.db, &project, &g, c.now).await?;
    c.event(EventDraft {
        consumer_id: Some(g.consumer_id.clone()),
        detail: Some(format!("{} {}", g.client_id, g.id)),
        ..event(&project.id, "oauth_grant_revoked")
    });
    Ok(Reply::NoContent)
}
