//! Orgs, owner accounts, members, org keys and the audit log in D1.

use serde::Deserialize;
use worker::D1Database;

use super::{
    batch_changes, changes, insert_stmt, int, opt_int, opt_text, stmt, text, write, Columns, Rows,
};
use crate::error::Error;
use crate::org::audit::AuditCursor;
use crate::org::Role;
use crate::providers::Provider;
use crate::records::org::{AuditEvent, Member, Membership, Org, OrgKeyRecord, Owner};
use crate::records::provider::ProviderKey;

const ORG_COLUMNS: &str = "id, slug, name, created_at";
const MEMBER_COLUMNS: &str =
    "id, org_id, owner_id, email, role, status, invited_by, created_at, joined_at";
const ORG_KEY_COLUMNS: &str =
    "id, org_id, name, prefix, role, environment, created_by, created_at, last_used_at, revoked_at";
const AUDIT_COLUMNS: &str =
    "id, org_id, created_at, actor_type, actor_id, actor, action, target, status, ip";

/// The answer for an org that does not exist, or that the caller may not see.
pub fn no_org(slug: &str) -> Error {
    Error::not_found(format!("There is no org `{slug}`."))
}

fn member_columns(m: &Member) -> Columns {
    Columns(vec![
        ("id", text(&m.id)),
        ("org_id", text(&m.org_id)),
        ("owner_id", opt_text(m.owner_id.as_deref())),
        ("email", text(&m.email)),
        ("role", text(m.role.as_str())),
        ("status", text(m.status.as_str())),
        ("invited_by", opt_text(m.invited_by.as_deref())),
        ("created_at", int(m.created_at)),
        ("joined_at", opt_int(m.joined_at)),
    ])
}

fn insert_org(db: &D1Database, org: &Org) -> Result<worker::D1PreparedStatement, Error> {
    insert_stmt(
        db,
        "orgs",
        Columns(vec![
            ("id", text(&org.id)),
            ("slug", text(&org.slug)),
            ("name", text(&org.name)),
            ("created_at", int(org.created_at)),
        ]),
    )
}

/// A new org with its first member (its owner), in one batch.
pub async fn create_org(db: &D1Database, org: &Org, first: Option<&Member>) -> Result<(), Error> {
    let mut statements = vec![insert_org(db, org)?];
    if let Some(m) = first {
        statements.push(insert_stmt(db, "org_members", member_columns(m))?);
    }
    write(db, statements, || {
        format!("An org with slug `{}` already exists.", org.slug)
    })
    .await
}

pub async fn org_by_slug(db: &D1Database, slug: &str) -> Result<Org, Error> {
    stmt(
        db,
        &format!("SELECT {ORG_COLUMNS} FROM orgs WHERE slug = ?1"),
        &[text(slug)],
    )?
    .row()
    .await?
    .ok_or_else(|| no_org(slug))
}

pub async fn org_by_id(db: &D1Database, id: &str) -> Result<Option<Org>, Error> {
    stmt(
        db,
        &format!("SELECT {ORG_COLUMNS} FROM orgs WHERE id = ?1"),
        &[text(id)],
    )?
    .row()
    .await
}

/// The orgs of `orgs` (`None`: every org).
pub async fn list_orgs(db: &D1Database, orgs: Option<&[String]>) -> Result<Vec<Org>, Error> {
    let sql = format!(
        "SELECT {ORG_COLUMNS} FROM orgs WHERE {} ORDER BY created_at, id",
        super::in_orgs("id", 1)
    );
    stmt(db, &sql, &[super::orgs_filter(orgs)?])?.rows().await
}

pub async fn rename_org(db: &D1Database, org_id: &str, name: &str) -> Result<(), Error> {
    changes(
        db,
        "UPDATE orgs SET name = ?2 WHERE id = ?1",
        &[text(org_id), text(name)],
    )
    .await
    .map(drop)
}

#[derive(Deserialize)]
struct CountRow {
    n: u64,
}

/// How many projects the org owns.
pub async fn org_project_count(db: &D1Database, org_id: &str) -> Result<u64, Error> {
    let row: Option<CountRow> = stmt(
        db,
        "SELECT COUNT(*) AS n FROM projects WHERE org_id = ?1",
        &[text(org_id)],
    )?
    .row()
    .await?;
    Ok(row.map_or(0, |r| r.n))
}

/// Deletes an org that owns no project, with its members, keys and audit log, in one batch. The
/// `NOT EXISTS` guard makes it a no-op if a project was made meanwhile; whether the org went.
pub async fn delete_org(db: &D1Database, org_id: &str) -> Result<bool, Error> {
    let empty = "NOT EXISTS (SELECT 1 FROM projects WHERE org_id = ?1)";
    let statements = vec![
        stmt(
            db,
            &format!("DELETE FROM org_members WHERE org_id = ?1 AND {empty}"),
            &[text(org_id)],
        )?,
        stmt(
            db,
            &format!("DELETE FROM org_keys WHERE org_id = ?1 AND {empty}"),
            &[text(org_id)],
        )?,
        stmt(
            db,
            &format!("DELETE FROM audit_events WHERE org_id = ?1 AND {empty}"),
            &[text(org_id)],
        )?,
        stmt(
            db,
            &format!("DELETE FROM provider_keys WHERE org_id = ?1 AND {empty}"),
            &[text(org_id)],
        )?,
        stmt(
            db,
            &format!("DELETE FROM orgs WHERE id = ?1 AND {empty}"),
            &[text(org_id)],
        )?,
    ];
    db.batch(statements).await?;
    Ok(org_by_id(db, org_id).await?.is_none())
}

pub async fn owner_by_email(db: &D1Database, email: &str) -> Result<Option<Owner>, Error> {
    stmt(
        db,
        "SELECT id, email, name, created_at FROM owners WHERE email = ?1",
        &[text(email)],
    )?
    .row()
    .await
}

pub async fn owner_by_id(db: &D1Database, id: &str) -> Result<Option<Owner>, Error> {
    stmt(
        db,
        "SELECT id, email, name, created_at FROM owners WHERE id = ?1",
        &[text(id)],
    )?
    .row()
    .await
}

/// A new owner with their personal org (of which they are the owner), in one batch.
pub async fn create_owner(
    db: &D1Database,
    owner: &Owner,
    org: &Org,
    membership: &Member,
) -> Result<(), Error> {
    let statements = vec![
        insert_stmt(
            db,
            "owners",
            Columns(vec![
                ("id", text(&owner.id)),
                ("email", text(&owner.email)),
                ("name", text(&owner.name)),
                ("created_at", int(owner.created_at)),
            ]),
        )?,
        insert_org(db, org)?,
        insert_stmt(db, "org_members", member_columns(membership))?,
    ];
    write(db, statements, || {
        format!(
            "The owner `{}` or the org `{}` already exists.",
            owner.email, org.slug
        )
    })
    .await
}

/// Whether an org has invited `email`.
pub async fn has_invitation(db: &D1Database, email: &str) -> Result<bool, Error> {
    #[derive(Deserialize)]
    struct One {
        #[allow(dead_code)]
        one: i64,
    }
    let row: Option<One> = stmt(
        db,
        "SELECT 1 AS one FROM org_members WHERE email = ?1 AND status = 'invited' LIMIT 1",
        &[text(email)],
    )?
    .row()
    .await?;
    Ok(row.is_some())
}

/// The invitations to `email` become the owner's memberships (their next sign-in).
pub async fn accept_invitations(
    db: &D1Database,
    owner_id: &str,
    email: &str,
    now: i64,
) -> Result<u64, Error> {
    changes(
        db,
        "UPDATE org_members SET owner_id = ?1, status = 'active', joined_at = ?3 WHERE email = ?2 AND status = 'invited'",
        &[text(owner_id), text(email), int(now)],
    )
    .await
}

/// The owner's active memberships, with their orgs: the orgs they made first (the personal org
/// leads), then those they were invited to, oldest first.
pub async fn memberships(db: &D1Database, owner_id: &str) -> Result<Vec<Membership>, Error> {
    stmt(
        db,
        "SELECT m.org_id AS org_id, o.slug AS slug, o.name AS name, m.role AS role FROM org_members m \
         JOIN orgs o ON o.id = m.org_id WHERE m.owner_id = ?1 AND m.status = 'active' ORDER BY m.invited_by IS NOT NULL, m.created_at, m.id",
        &[text(owner_id)],
    )?
    .rows()
    .await
}

pub async fn members(db: &D1Database, org_id: &str) -> Result<Vec<Member>, Error> {
    stmt(
        db,
        &format!(
            "SELECT {MEMBER_COLUMNS} FROM org_members WHERE org_id = ?1 ORDER BY created_at, id"
        ),
        &[text(org_id)],
    )?
    .rows()
    .await
}

pub async fn member(db: &D1Database, org_id: &str, id: &str) -> Result<Option<Member>, Error> {
    stmt(
        db,
        &format!("SELECT {MEMBER_COLUMNS} FROM org_members WHERE org_id = ?1 AND id = ?2"),
        &[text(org_id), text(id)],
    )?
    .row()
    .await
}

pub async fn create_member(db: &D1Database, m: &Member) -> Result<(), Error> {
    let insert = insert_stmt(db, "org_members", member_columns(m))?;
    write(db, vec![insert], || {
        format!(
            "`{}` is already a member of this org or invited to it.",
            m.email
        )
    })
    .await
}

/// Changes a member's role unless that would leave the org without an active owner (checked in
/// the same statement, so two racing demotions cannot both pass); whether it changed.
pub async fn set_member_role(
    db: &D1Database,
    org_id: &str,
    id: &str,
    from: Role,
    role: Role,
) -> Result<bool, Error> {
    // `role = ?4`: the role the change was checked against, so a promotion meanwhile is not undone.
    let n = changes(
        db,
        "UPDATE org_members SET role = ?3 WHERE org_id = ?1 AND id = ?2 AND role = ?4 AND (?3 = 'owner' OR NOT (role = 'owner' AND status = 'active') \
         OR (SELECT COUNT(*) FROM org_members WHERE org_id = ?1 AND role = 'owner' AND status = 'active') > 1)",
        &[text(org_id), text(id), text(role.as_str()), text(from.as_str())],
    )
    .await?;
    Ok(n > 0)
}

/// The ids of the org's keys (`?1`) made by `?{n}` (an owner's or a key's id), and of the keys made
/// by those, down the whole chain, revoked ones included (their children die with them).
fn keys_made_by(n: usize) -> String {
    format!(
        "WITH RECURSIVE made(id) AS (SELECT id FROM org_keys WHERE org_id = ?1 AND created_by = ?{n} \
         UNION SELECT k.id FROM org_keys k JOIN made ON k.created_by = made.id WHERE k.org_id = ?1) \
         SELECT id FROM made"
    )
}

/// Removes a member (still of the role checked) under the same last-owner guard, and in the same
/// batch revokes the keys they made and the keys made by those (else a re-invited member's old keys
/// would act again); whether the member went.
pub async fn remove_member(
    db: &D1Database,
    org_id: &str,
    member: &Member,
    now: i64,
) -> Result<bool, Error> {
    let mut statements = vec![stmt(
        db,
        "DELETE FROM org_members WHERE org_id = ?1 AND id = ?2 AND role = ?3 AND (NOT (role = 'owner' AND status = 'active') \
         OR (SELECT COUNT(*) FROM org_members WHERE org_id = ?1 AND role = 'owner' AND status = 'active') > 1)",
        &[text(org_id), text(&member.id), text(member.role.as_str())],
    )?];
    if let Some(owner_id) = &member.owner_id {
        // Only once the maker is no longer a member: a removal the guard refused revokes nothing.
        statements.push(stmt(
            db,
            &format!(
                "UPDATE org_keys SET revoked_at = ?3 WHERE org_id = ?1 AND revoked_at IS NULL AND id IN ({}) \
                 AND NOT EXISTS (SELECT 1 FROM org_members WHERE org_id = ?1 AND owner_id = ?2)",
                keys_made_by(2)
            ),
            &[text(org_id), text(owner_id), int(now)],
        )?);
    }
    Ok(batch_changes(db, statements).await? > 0)
}

pub async fn create_org_key(
    db: &D1Database,
    key: &OrgKeyRecord,
    key_hash: &str,
) -> Result<(), Error> {
    let cols = Columns(vec![
        ("id", text(&key.id)),
        ("org_id", text(&key.org_id)),
        ("name", text(&key.name)),
        ("prefix", text(&key.prefix)),
        ("key_hash", text(key_hash)),
        ("role", text(key.role.as_str())),
        ("environment", text(key.environment.as_str())),
        ("created_by", text(&key.created_by)),
        ("created_at", int(key.created_at)),
    ]);
    let insert = insert_stmt(db, "org_keys", cols)?;
    write(db, vec![insert], || "That key already exists.".into()).await
}

/// The org's live keys, oldest first.
pub async fn org_keys(db: &D1Database, org_id: &str) -> Result<Vec<OrgKeyRecord>, Error> {
    stmt(
        db,
        &format!("SELECT {ORG_KEY_COLUMNS} FROM org_keys WHERE org_id = ?1 AND revoked_at IS NULL ORDER BY created_at, id"),
        &[text(org_id)],
    )?
    .rows()
    .await
}

/// An owner's role in an org, if they are an active member.
pub async fn member_role(
    db: &D1Database,
    org_id: &str,
    owner_id: &str,
) -> Result<Option<Role>, Error> {
    #[derive(Deserialize)]
    struct RoleRow {
        role: Role,
    }
    let row: Option<RoleRow> = stmt(
        db,
        "SELECT role FROM org_members WHERE org_id = ?1 AND owner_id = ?2 AND status = 'active'",
        &[text(org_id), text(owner_id)],
    )?
    .row()
    .await?;
    Ok(row.map(|r| r.role))
}

/// A live key of the org, by id.
pub async fn org_key_by_id(
    db: &D1Database,
    org_id: &str,
    id: &str,
) -> Result<Option<OrgKeyRecord>, Error> {
    stmt(
        db,
        &format!("SELECT {ORG_KEY_COLUMNS} FROM org_keys WHERE org_id = ?1 AND id = ?2 AND revoked_at IS NULL"),
        &[text(org_id), text(id)],
    )?
    .row()
    .await
}

/// The live key with this hash.
pub async fn org_key_by_hash(
    db: &D1Database,
    key_hash: &str,
) -> Result<Option<OrgKeyRecord>, Error> {
    stmt(
        db,
        &format!(
            "SELECT {ORG_KEY_COLUMNS} FROM org_keys WHERE key_hash = ?1 AND revoked_at IS NULL"
        ),
        &[text(key_hash)],
    )?
    .row()
    .await
}

/// Revokes a live key of the org, and in the same batch the keys made with it (and with those), so
/// they are no longer listed as live; whether there was such a key.
pub async fn revoke_org_key(
    db: &D1Database,
    org_id: &str,
    id: &str,
    now: i64,
) -> Result<bool, Error> {
    let args = [text(org_id), text(id), int(now)];
    let statements = vec![
        stmt(
            db,
            "UPDATE org_keys SET revoked_at = ?3 WHERE org_id = ?1 AND id = ?2 AND revoked_at IS NULL",
            &args,
        )?,
        stmt(
            db,
            &format!(
                "UPDATE org_keys SET revoked_at = ?3 WHERE org_id = ?1 AND revoked_at IS NULL AND id IN ({})",
                keys_made_by(2)
            ),
            &args,
        )?,
    ];
    Ok(batch_changes(db, statements).await? > 0)
}

/// Records use of an org key at most once a minute.
pub async fn touch_org_key(db: &D1Database, id: &str, now: i64) -> Result<(), Error> {
    changes(db, "UPDATE org_keys SET last_used_at = ?2 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?3)",
        &[text(id), int(now), int(now - 60_000)]).await?;
    Ok(())
}

pub async fn insert_audit_event(db: &D1Database, e: &AuditEvent) -> Result<(), Error> {
    let cols = Columns(vec![
        ("id", text(&e.id)),
        ("org_id", text(&e.org_id)),
        ("created_at", int(e.created_at)),
        ("actor_type", text(e.actor_type.as_str())),
        ("actor_id", opt_text(e.actor_id.as_deref())),
        ("actor", text(&e.actor)),
        ("action", text(&e.action)),
        ("target", text(&e.target)),
        ("status", int(i64::from(e.status))),
        ("ip", opt_text(e.ip.as_deref())),
    ]);
    let insert = insert_stmt(db, "audit_events", cols)?;
    write(db, vec![insert], || "That audit event id is taken.".into()).await
}

/// The org's audit events before the cursor, newest first (ties on the millisecond by id,
/// descending), at most `limit`.
pub async fn list_audit_events(
    db: &D1Database,
    org_id: &str,
    before: &AuditCursor,
    limit: u64,
) -> Result<Vec<AuditEvent>, Error> {
    stmt(
        db,
        &format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE org_id = ?1 AND (created_at, id) < (?2, ?3) ORDER BY created_at DESC, id DESC LIMIT ?4"),
        &[text(org_id), int(before.created_at), text(&before.id), super::count(limit)],
    )?
    .rows()
    .await
}

/// The org of an API (by id), if the API exists.
pub async fn api_org_id(db: &D1Database, api_id: &str) -> Result<Option<String>, Error> {
    #[derive(Deserialize)]
    struct OrgRow {
        org_id: String,
    }
    let row: Option<OrgRow> = stmt(
        db,
        "SELECT p.org_id AS org_id FROM apis a JOIN projects p ON p.id = a.project_id WHERE a.id = ?1",
        &[text(api_id)],
    )?
    .row()
    .await?;
    Ok(row.map(|r| r.org_id))
}

const PROVIDER_COLUMNS: &str =
    "org_id, provider, base_url, key_enc, key_last4, created_at, updated_at";

fn provider_columns(k: &ProviderKey) -> Columns {
    Columns(vec![
        ("org_id", text(&k.org_id)),
        ("provider", text(k.provider.as_str())),
        ("base_url", opt_text(k.base_url.as_deref())),
        ("key_enc", opt_text(k.key_enc.as_deref())),
        ("key_last4", opt_text(k.key_last4.as_deref())),
        ("created_at", int(k.created_at)),
        ("updated_at", int(k.updated_at)),
    ])
}

/// A new provider key (one per provider per org: a second is 409).
pub async fn create_provider_key(db: &D1Database, k: &ProviderKey) -> Result<(), Error> {
    let insert = insert_stmt(db, "provider_keys", provider_columns(k))?;
    write(db, vec![insert], || {
        format!(
            "The org already has a `{}` key: replace it with PUT /api/v1/orgs/{{org}}/providers/{}.",
            k.provider.as_str(),
            k.provider.as_str()
        )
    })
    .await
}

/// Replaces a stored provider key; whether there was one.
pub async fn replace_provider_key(db: &D1Database, k: &ProviderKey) -> Result<bool, Error> {
    let n = changes(
        db,
        "UPDATE provider_keys SET base_url = ?3, key_enc = ?4, key_last4 = ?5, updated_at = ?6 WHERE org_id = ?1 AND provider = ?2",
        &[text(&k.org_id), text(k.provider.as_str()), opt_text(k.base_url.as_deref()),
          opt_text(k.key_enc.as_deref()), opt_text(k.key_last4.as_deref()), int(k.updated_at)],
    )
    .await?;
    Ok(n > 0)
}

pub async fn provider_keys(db: &D1Database, org_id: &str) -> Result<Vec<ProviderKey>, Error> {
    stmt(
        db,
        &format!(
            "SELECT {PROVIDER_COLUMNS} FROM provider_keys WHERE org_id = ?1 ORDER BY provider"
        ),
        &[text(org_id)],
    )?
    .rows()
    .await
}

pub async fn provider_key(
    db: &D1Database,
    org_id: &str,
    provider: Provider,
) -> Result<Option<ProviderKey>, Error> {
    stmt(
        db,
        &format!(
            "SELECT {PROVIDER_COLUMNS} FROM provider_keys WHERE org_id = ?1 AND provider = ?2"
        ),
        &[text(org_id), text(provider.as_str())],
    )?
    .row()
    .await
}

/// Deletes a provider key; whether there was one.
pub async fn delete_provider_key(
    db: &D1Database,
    org_id: &str,
    provider: Provider,
) -> Result<bool, Error> {
    let n = changes(
        db,
        "DELETE FROM provider_keys WHERE org_id = ?1 AND provider = ?2",
        &[text(org_id), text(provider.as_str())],
    )
    .await?;
    Ok(n > 0)
}

/// Writes a re-sealed key back only if it is still the one that was read (a concurrent replace wins).
pub async fn reseal_provider_key(
    db: &D1Database,
    k: &ProviderKey,
    was: &str,
    sealed: &str,
) -> Result<bool, Error> {
    let n = changes(
        db,
        "UPDATE provider_keys SET key_enc = ?4 WHERE org_id = ?1 AND provider = ?2 AND key_enc = ?3",
        &[text(&k.org_id), text(k.provider.as_str()), text(was), text(sealed)],
    )
    .await?;
    Ok(n > 0)
}
