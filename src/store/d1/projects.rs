//! Projects in D1.

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

pub async fn create_project(db: &D1Database, p: &Project) -> Result<(), Error> {
    let insert = insert_stmt(db, "projects", columns(p)?)?;
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

pub async fn project_by_slug(db: &D1Database, slug: &str) -> Result<Project, Error> {
    stmt(
        db,
        &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE slug = ?1"),
        &[text(slug)],
    )?
    .row::<Project>()
    .await?
    .ok_or_else(|| Error::not_found(format!("There is no project `{slug}`.")))
}

pub async fn update_project(db: &D1Database, p: &Project) -> Result<(), Error> {
    let update = update_stmt(db, "projects", columns(p)?, &["id"])?;
    write(db, vec![update], || {
        format!("Project `{}` conflicts.", p.slug)
    })
    .await
}
