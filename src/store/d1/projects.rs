//! Projects in D1.

use serde::Deserialize;
use worker::D1Database;

use super::{
    insert_stmt, int, json_text, opt_int, opt_text, stmt, text, update_stmt, write, Columns, Rows,
};
use crate::error::Error;
use crate::records::Project;

const PROJECT_COLUMNS: &str = "id, slug, name, created_at, access_token_ttl_s, email_from, email_subject, allowed_origins_json, \
     signing_generation, previous_key_retired_at, sign_in_json";

fn columns(p: &Project) -> Result<Columns, Error> {
    Ok(Columns(vec![
        ("id", text(&p.id)),
        ("slug", text(&p.slug)),
        ("name", text(&p.name)),
        ("created_at", int(p.created_at)),
        ("access_token_ttl_s", int(p.access_token_ttl_s)),
        ("email_from", opt_text(p.email_from.as_deref())),
        ("email_subject", opt_text(p.email_subject.as_deref())),
        ("allowed_origins_json", json_text(&p.allowed_origins)?),
        ("signing_generation", int(p.signing_generation)),
        (
            "previous_key_retired_at",
            opt_int(p.previous_key_retired_at),
        ),
        ("sign_in_json", json_text(&p.sign_in)?),
    ]))
}

/// A new project of org `org_id`.
pub async fn create_project(db: &D1Database, p: &Project, org_id: &str) -> Result<(), Error> {
    let mut cols = columns(p)?;
    cols.0.push(("org_id", text(org_id)));
    let insert = insert_stmt(db, "projects", cols)?;
    write(db, vec![insert], || {
        format!("A project with slug `{}` already exists.", p.slug)
    })
    .await
}

pub async fn list_projects(db: &D1Database) -> Result<Vec<Project>, Error> {
    db.prepare(format!(
        "SELECT {PROJECT_COLUMNS} FROM projects ORDER BY created_at, id"
    ))
    .rows()
    .await
}

/// A project with the org it belongs to.
#[derive(Debug, Clone, Deserialize)]
pub struct ProjectInOrg {
    #[serde(flatten)]
    pub project: Project,
    pub org_id: String,
    pub org_slug: String,
}

/// The projects of the orgs in `orgs` (`None`: every org), with their orgs.
pub async fn list_projects_in(
    db: &D1Database,
    orgs: Option<&[String]>,
) -> Result<Vec<ProjectInOrg>, Error> {
    let sql = format!(
        "SELECT {}, p.org_id AS org_id, o.slug AS org_slug FROM projects p JOIN orgs o ON o.id = p.org_id \
         WHERE {} ORDER BY p.created_at, p.id",
        qualified("p"),
        super::in_orgs("p.org_id", 1)
    );
    stmt(db, &sql, &[super::orgs_filter(orgs)?])?.rows().await
}

/// The project (by slug) with its org; 404 as `project_by_slug` when there is none.
pub async fn project_in_org(db: &D1Database, slug: &str) -> Result<ProjectInOrg, Error> {
    let sql = format!(
        "SELECT {}, p.org_id AS org_id, o.slug AS org_slug FROM projects p JOIN orgs o ON o.id = p.org_id WHERE p.slug = ?1",
        qualified("p")
    );
    stmt(db, &sql, &[text(slug)])?
        .row::<ProjectInOrg>()
        .await?
        .ok_or_else(|| no_project(slug))
}

/// `PROJECT_COLUMNS` of table alias `alias`.
fn qualified(alias: &str) -> String {
    PROJECT_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The answer for a project that does not exist, or that the caller may not see.
pub fn no_project(slug: &str) -> Error {
    Error::not_found(format!("There is no project `{slug}`."))
}

pub async fn project_by_slug(db: &D1Database, slug: &str) -> Result<Project, Error> {
    stmt(
        db,
        &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE slug = ?1"),
        &[text(slug)],
    )?
    .row::<Project>()
    .await?
    .ok_or_else(|| no_project(slug))
}

pub async fn update_project(db: &D1Database, p: &Project) -> Result<(), Error> {
    let update = update_stmt(db, "projects", columns(p)?, &["id"])?;
    write(db, vec![update], || {
        format!("Project `{}` conflicts.", p.slug)
    })
    .await
}
