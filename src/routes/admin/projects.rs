//! Admin: projects, and rotating a project's token-signing key.

use serde_json::{json, Value};

use super::{event, Call, Reply};
use crate::cache;
use crate::error::Error;
use crate::http::with_random;
use crate::identity::EventDraft;
use crate::ids::new_id;
use crate::input::project::{NewProject, ProjectPatch};
use crate::records::Project;
use crate::store::d1::{self, ProjectInOrg};

/// A project with its org.
fn view(p: &ProjectInOrg) -> Value {
    let mut v = p.project.to_json();
    v["org"] = json!(p.org_slug);
    v["org_id"] = json!(p.org_id);
    v
}

/// `GET /api/v1/projects[?org=]`: the projects of the caller's orgs.
pub async fn list(c: &mut Call<'_>) -> Result<Reply, Error> {
    let org = c
        .query()?
        .into_iter()
        .find(|(k, _)| k == "org")
        .map(|(_, v)| v);
    let projects: Vec<Value> = d1::list_projects_in(&c.db, c.caller.visible_orgs().as_deref())
        .await?
        .iter()
        .filter(|p| org.as_ref().is_none_or(|o| *o == p.org_slug))
        .map(view)
        .collect();
    Reply::ok(json!({ "projects": projects }))
}

/// `POST /api/v1/projects` `{slug, name, org?}`: in the org authorization found (the body's `org`).
pub async fn create(c: &mut Call<'_>) -> Result<Reply, Error> {
    let input: NewProject = c.body().await?;
    input.validate()?;
    let org_id = c
        .audit_org
        .clone()
        .ok_or_else(|| Error::internal("A project was made without its org."))?;
    let id = with_random(|r| new_id("prj", r))?;
    let project = Project::new(id, input.slug, input.name, c.now);
    d1::create_project(&c.db, &project, &org_id).await?;
    Reply::created(view(&d1::project_in_org(&c.db, &project.slug).await?))
}

pub async fn get(c: &mut Call<'_>, project: &str) -> Result<Reply, Error> {
    Reply::ok(view(&d1::project_in_org(&c.db, project).await?))
}

pub async fn patch(c: &mut Call<'_>, project: &str) -> Result<Reply, Error> {
    let patch: ProjectPatch = c.body().await?;
    patch.validate()?;
    let mut project = d1::project_by_slug(&c.db, project).await?;
    patch.apply(&mut project)?;
    d1::update_project(&c.db, &project).await?;
    cache::store_project(c.env, &project).await?;
    Reply::ok(project.to_json())
}

/// A new signing key generation; the previous key keeps verifying until its tokens have expired.
pub async fn rotate_signing_key(c: &mut Call<'_>, project: &str) -> Result<Reply, Error> {
    let mut project = d1::project_by_slug(&c.db, project).await?;
    project.signing_generation += 1;
    project.previous_key_retired_at = Some(c.now);
    d1::update_project(&c.db, &project).await?;
    cache::store_project(c.env, &project).await?;
    let kid = crate::identity::current_key(c.env, &project)?
        .kid()
        .to_string();
    c.event(EventDraft {
        detail: Some(kid.clone()),
        ..event(&project.id, "signing_key_rotated")
    });
    Reply::ok(json!({ "kid": kid, "generation": project.signing_generation }))
}
