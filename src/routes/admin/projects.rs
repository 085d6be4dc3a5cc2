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
use crate::store::d1;

pub async fn list(c: &mut Call<'_>) -> Result<Reply, Error> {
    let projects: Vec<Value> = d1::list_projects(&c.db)
        .await?
        .iter()
        .map(Project::to_json)
        .collect();
    Reply::ok(json!({ "projects": projects }))
}

pub async fn create(c: &mut Call<'_>) -> Result<Reply, Error> {
    let input: NewProject = c.body().await?;
    input.validate()?;
    let id = with_random(|r| new_id("prj", r))?;
    let project = Project::new(id, input.slug, input.name, c.now);
    d1::create_project(&c.db, &project).await?;
    Reply::created(project.to_json())
}

pub async fn get(c: &mut Call<'_>, project: &str) -> Result<Reply, Error> {
    Reply::ok(d1::project_by_slug(&c.db, project).await?.to_json())
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
