//! Admin: orgs, their members and invitations, org API keys and the audit log.

use serde::Deserialize;
use serde_json::{json, Value};

use super::access::{forbidden, Caller};
use super::{Call, Reply};
use crate::auth::otp::normalize_email;
use crate::error::{Error, Problem};
use crate::http::with_random;
use crate::ids::new_id;
use crate::input::validate::{nullable, required, validate_slug, validate_text};
use crate::org::access::{key_may_make_a_key, MAX_KEY_CHAIN};
use crate::org::audit::AuditCursor;
use crate::org::key::Environment;
use crate::org::members::{check_change, Refused};
use crate::org::{slug_is_reserved, OrgKey, Role, DEFAULT_ORG_ID};
use crate::records::org::{Member, MemberStatus, Org, OrgKeyRecord};
use crate::store::d1;

/// An org with the caller's role in it.
fn org_view(org: &Org, role: Option<Role>) -> Value {
    let mut view = org.to_json();
    view["role"] = json!(role);
    view
}

/// `GET /api/v1/orgs/me`: the caller, their orgs and their role in each.
pub async fn me(c: &mut Call<'_>) -> Result<Reply, Error> {
    let orgs: Vec<Value> = match &c.caller {
        Caller::Owner { memberships, .. } => memberships
            .iter()
            .map(|m| json!({"id": m.org_id, "slug": m.slug, "name": m.name, "role": m.role}))
            .collect(),
        _ => visible(c).await?,
    };
    let body = match &c.caller {
        Caller::Owner { owner, .. } => json!({"owner": owner.to_json(), "orgs": orgs}),
        Caller::OrgKey { key, .. } => json!({"owner": null, "key": key.to_json(), "orgs": orgs}),
        Caller::Operator => json!({"owner": null, "operator": true, "orgs": orgs}),
    };
    Reply::ok(body)
}

/// The orgs the caller sees, each with the caller's role.
async fn visible(c: &Call<'_>) -> Result<Vec<Value>, Error> {
    let orgs = d1::list_orgs(&c.db, c.caller.visible_orgs().as_deref()).await?;
    Ok(orgs
        .iter()
        .map(|o| org_view(o, c.caller.role_in(&o.id)))
        .collect())
}

/// `GET /api/v1/orgs`.
pub async fn list(c: &mut Call<'_>) -> Result<Reply, Error> {
    Reply::ok(json!({ "orgs": visible(c).await? }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrg {
    slug: String,
    name: String,
    /// The operator's: invites this address as the org's owner.
    owner_email: Option<String>,
}

fn validate_org_slug(slug: &str) -> Result<(), Error> {
    validate_slug("slug", slug)?;
    if slug_is_reserved(slug) {
        return Err(
            Error::invalid_request(format!("`{slug}` is reserved; choose another slug"))
                .with_field("param", "slug"),
        );
    }
    Ok(())
}

/// `POST /api/v1/orgs`: a signed-in owner becomes the new org's owner; the operator may name its
/// owner (`owner_email`, invited). An org key acts only in its own org.
pub async fn create(c: &mut Call<'_>) -> Result<Reply, Error> {
    let input: NewOrg = c.body().await?;
    validate_org_slug(&input.slug)?;
    validate_text("name", &input.name, 200)?;
    let org = Org {
        id: with_random(|r| new_id("org", r))?,
        slug: input.slug,
        name: input.name,
        created_at: c.now,
    };
    let member = |owner_id: Option<String>,
                  email: String,
                  status,
                  by: Option<String>|
     -> Result<Member, Error> {
        Ok(Member {
            id: with_random(|r| new_id("mem", r))?,
            org_id: org.id.clone(),
            owner_id,
            email,
            role: Role::Owner,
            status,
            invited_by: by,
            created_at: c.now,
            joined_at: (status == MemberStatus::Active).then_some(c.now),
        })
    };
    let first = match (&c.caller, input.owner_email) {
        (Caller::OrgKey { .. }, _) => {
            return Err(Error::new(
                Problem::Forbidden,
                "An org key acts only in its own org: sign in as an owner to create an org.",
            )
            .with_field("required_role", "owner"))
        }
        (Caller::Owner { .. }, Some(_)) => {
            return Err(Error::invalid_request(
                "`owner_email` is the operator's: you become the owner of the orgs you create.",
            )
            .with_field("param", "owner_email"))
        }
        (Caller::Owner { owner, .. }, None) => Some(member(
            Some(owner.id.clone()),
            owner.email.clone(),
            MemberStatus::Active,
            None,
        )?),
        (Caller::Operator, Some(email)) => {
            let email = normalize_email(&email).map_err(|_| {
                Error::invalid_request("`owner_email` must be an email address")
                    .with_field("param", "owner_email")
            })?;
            Some(member(
                None,
                email,
                MemberStatus::Invited,
                Some("operator".into()),
            )?)
        }
        (Caller::Operator, None) => None,
    };
    d1::create_org(&c.db, &org, first.as_ref()).await?;
    c.audit_org = Some(org.id.clone());
    let role = c.caller.role_in(&org.id).or(Some(Role::Owner));
    Reply::created(org_view(&org, role))
}

/// `GET /api/v1/orgs/{org}`.
pub async fn get(c: &mut Call<'_>, org: &str) -> Result<Reply, Error> {
    let org = d1::org_by_slug(&c.db, org).await?;
    let mut view = org_view(&org, Some(c.role));
    view["projects"] = json!(d1::org_project_count(&c.db, &org.id).await?);
    Reply::ok(view)
}

/// `name` is required and never `null` (both a 400 naming it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgPatch {
    #[serde(default, deserialize_with = "nullable")]
    name: Option<Option<String>>,
}

/// `PATCH /api/v1/orgs/{org}`: renames it (slugs are in paths and keys' listings, so they stay).
pub async fn patch(c: &mut Call<'_>, org: &str) -> Result<Reply, Error> {
    let input: OrgPatch = c.body().await?;
    let name = required("name", input.name)?;
    validate_text("name", &name, 200)?;
    let mut org = d1::org_by_slug(&c.db, org).await?;
    d1::rename_org(&c.db, &org.id, &name).await?;
    org.name = name;
    Reply::ok(org_view(&org, Some(c.role)))
}

/// `DELETE /api/v1/orgs/{org}`: only an org that owns no project (nothing stored is lost with it);
/// its members, keys and audit log go with it.
pub async fn delete(c: &mut Call<'_>, org: &str) -> Result<Reply, Error> {
    let org = d1::org_by_slug(&c.db, org).await?;
    if org.id == DEFAULT_ORG_ID {
        return Err(Error::conflict(
            "The default org holds the instance's own projects and cannot be deleted.",
        ));
    }
    let projects = d1::org_project_count(&c.db, &org.id).await?;
    if projects > 0 || !d1::delete_org(&c.db, &org.id).await? {
        return Err(Error::conflict(format!(
            "Org `{}` still owns {projects} project(s); an org is deleted only when it owns none.",
            org.slug
        )));
    }
    // Its audit log went with it.
    c.audit_org = None;
    Ok(Reply::NoContent)
}

/// `GET /api/v1/orgs/{org}/members`.
pub async fn list_members(c: &mut Call<'_>, org: &str) -> Result<Reply, Error> {
    let org = d1::org_by_slug(&c.db, org).await?;
    let members: Vec<Value> = d1::members(&c.db, &org.id)
        .await?
        .iter()
        .map(Member::to_json)
        .collect();
    Reply::ok(json!({ "members": members }))
}

fn role_field(value: Option<&str>, default: Role) -> Result<Role, Error> {
    match value {
        None => Ok(default),
        Some(v) => Role::parse(v).ok_or_else(|| {
            Error::invalid_request("`role` is one of owner, admin, developer, viewer")
                .with_field("param", "role")
        }),
    }
}

fn refused(e: Refused, actor: Role) -> Error {
    match e {
        Refused::NeedsOwner => forbidden(Role::Owner, actor)
            .with_detail("Only an owner grants, changes or removes the owner role."),
        Refused::AboveOwnRole => {
            forbidden(Role::Owner, actor).with_detail("A role above your own cannot be granted.")
        }
        Refused::LastOwner => Error::conflict(
            "The org would be left without an owner (or the member's role changed meanwhile): make another member owner first, or look again.",
        ),
    }
}

async fn active_owners(c: &Call<'_>, org_id: &str) -> Result<usize, Error> {
    Ok(d1::members(&c.db, org_id)
        .await?
        .iter()
        .filter(|m| m.is_active_owner())
        .count())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Invite {
    email: String,
    role: Option<String>,
}

/// `POST /api/v1/orgs/{org}/members` `{email, role}`: an invitation; the invitee joins on their next
/// sign-in.
pub async fn invite_member(c: &mut Call<'_>, org: &str) -> Result<Reply, Error> {
    let input: Invite = c.body().await?;
    let email = normalize_email(&input.email).map_err(|_| {
        Error::invalid_request("`email` must be an email address").with_field("param", "email")
    })?;
    let role = role_field(input.role.as_deref(), Role::Developer)?;
    let org = d1::org_by_slug(&c.db, org).await?;
    check_change(c.role, None, Some(role), false, 0).map_err(|e| refused(e, c.role))?;
    let member = Member {
        id: with_random(|r| new_id("mem", r))?,
        org_id: org.id.clone(),
        owner_id: None,
        email,
        role,
        status: MemberStatus::Invited,
        invited_by: Some(inviter(c)),
        created_at: c.now,
        joined_at: None,
    };
    d1::create_member(&c.db, &member).await?;
    Reply::created(member.to_json())
}

/// Who invites or creates: the owner's or key's id, or `operator`.
fn inviter(c: &Call<'_>) -> String {
    c.caller.actor().1.unwrap_or_else(|| "operator".into())
}

async fn find_member(c: &Call<'_>, org: &Org, id: &str) -> Result<Member, Error> {
    d1::member(&c.db, &org.id, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("Org `{}` has no member `{id}`.", org.slug)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberPatch {
    #[serde(default, deserialize_with = "nullable")]
    role: Option<Option<String>>,
}

/// `PATCH /api/v1/orgs/{org}/members/{id}` `{role}`.
pub async fn patch_member(c: &mut Call<'_>, org: &str, id: &str) -> Result<Reply, Error> {
    let input: MemberPatch = c.body().await?;
    let role = role_field(Some(&required("role", input.role)?), Role::Viewer)?;
    let org = d1::org_by_slug(&c.db, org).await?;
    let mut member = find_member(c, &org, id).await?;
    let owners = active_owners(c, &org.id).await?;
    check_change(
        c.role,
        Some(member.role),
        Some(role),
        member.is_active_owner(),
        owners,
    )
    .map_err(|e| refused(e, c.role))?;
    if !d1::set_member_role(&c.db, &org.id, id, member.role, role).await? {
        return Err(refused(Refused::LastOwner, c.role));
    }
    member.role = role;
    Reply::ok(member.to_json())
}

/// `DELETE /api/v1/orgs/{org}/members/{id}`: a member leaves (or an invitation is withdrawn); their
/// tokens lose the org on the very next request, and the keys they made (and the keys made with
/// those) are revoked with the membership, so a later invitation does not bring them back.
pub async fn remove_member(c: &mut Call<'_>, org: &str, id: &str) -> Result<Reply, Error> {
    let org = d1::org_by_slug(&c.db, org).await?;
    let member = find_member(c, &org, id).await?;
    let owners = active_owners(c, &org.id).await?;
    check_change(
        c.role,
        Some(member.role),
        None,
        member.is_active_owner(),
        owners,
    )
    .map_err(|e| refused(e, c.role))?;
    if !d1::remove_member(&c.db, &org.id, &member, c.now).await? {
        return Err(refused(Refused::LastOwner, c.role));
    }
    Ok(Reply::NoContent)
}

/// `GET /api/v1/orgs/{org}/keys`: live keys, masked (prefix only), with when each was last used.
pub async fn list_keys(c: &mut Call<'_>, org: &str) -> Result<Reply, Error> {
    let org = d1::org_by_slug(&c.db, org).await?;
    let keys: Vec<Value> = d1::org_keys(&c.db, &org.id)
        .await?
        .iter()
        .map(OrgKeyRecord::to_json)
        .collect();
    Reply::ok(json!({ "keys": keys }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrgKey {
    name: String,
    role: Option<String>,
    environment: Option<Environment>,
}

/// `POST /api/v1/orgs/{org}/keys` `{name, role?, environment?}`: the only answer with the secret. A
/// key's role is at most its creator's (developer by default).
pub async fn create_key(c: &mut Call<'_>, org: &str) -> Result<Reply, Error> {
    let input: NewOrgKey = c.body().await?;
    validate_text("name", &input.name, 200)?;
    let role = role_field(input.role.as_deref(), Role::Developer.min(c.role))?;
    if role > c.role {
        return Err(forbidden(role, c.role).with_detail(format!(
            "A key's role is at most its creator's (`{}`).",
            c.role.as_str()
        )));
    }
    if let Caller::OrgKey { links, .. } = &c.caller {
        if !key_may_make_a_key(*links) {
            return Err(Error::new(
                Problem::Forbidden,
                format!(
                    "A chain of keys made with keys is at most {MAX_KEY_CHAIN} links from the owner or operator who began it, and this key is its last link: a key made with it could never be used. Make the key with an owner's token or a key closer to the chain's start."
                ),
            )
            .with_field("max_key_chain", MAX_KEY_CHAIN));
        }
    }
    let environment = input.environment.unwrap_or(Environment::Prod);
    let org = d1::org_by_slug(&c.db, org).await?;
    let key = with_random(|r| OrgKey::generate(environment, r))?;
    let created_by = inviter(c);
    let record = OrgKeyRecord {
        id: with_random(|r| new_id("okey", r))?,
        org_id: org.id.clone(),
        name: input.name,
        prefix: key.display_prefix(),
        role,
        environment,
        created_by,
        created_at: c.now,
        last_used_at: None,
        revoked_at: None,
    };
    d1::create_org_key(&c.db, &record, &key.hash()).await?;
    let mut view = record.to_json();
    view["secret"] = json!(key.reveal());
    Reply::created(view)
}

/// `DELETE /api/v1/orgs/{org}/keys/{id}`: refused from the very next request on, with the keys made
/// with it.
pub async fn revoke_key(c: &mut Call<'_>, org: &str, id: &str) -> Result<Reply, Error> {
    let org = d1::org_by_slug(&c.db, org).await?;
    if !d1::revoke_org_key(&c.db, &org.id, id, c.now).await? {
        return Err(Error::not_found(format!(
            "Org `{}` has no live key `{id}`.",
            org.slug
        )));
    }
    Ok(Reply::NoContent)
}

/// `GET /api/v1/orgs/{org}/audit?limit=&before=`: admin writes, newest first. `before` is the
/// previous page's `next_before` (a cursor: the time and id of its last event), or a plain time
/// (RFC 3339 or epoch ms) for the events before it.
pub async fn audit(c: &mut Call<'_>, org: &str) -> Result<Reply, Error> {
    let mut limit = 100u64;
    let mut before = AuditCursor {
        created_at: i64::MAX,
        id: String::new(),
    };
    for (k, v) in c.query()? {
        match k.as_str() {
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=500).contains(n))
                    .ok_or_else(|| {
                        Error::invalid_request("`limit` is 1-500").with_field("param", "limit")
                    })?
            }
            "before" => {
                before = AuditCursor::parse(&v).ok_or_else(|| {
                    Error::invalid_request(
                    "`before` is a page's `next_before`, an RFC 3339 time or epoch milliseconds",
                )
                .with_field("param", "before")
                })?
            }
            _ => {}
        }
    }
    let org = d1::org_by_slug(&c.db, org).await?;
    let events = d1::list_audit_events(&c.db, &org.id, &before, limit).await?;
    let next = (events.len() as u64 == limit)
        .then(|| events.last())
        .flatten()
        .map(|e| {
            AuditCursor {
                created_at: e.created_at,
                id: e.id.clone(),
            }
            .encode()
        });
    let events: Vec<Value> = events.iter().map(|e| e.to_json()).collect();
    Reply::ok(json!({ "events": events, "next_before": next }))
}
