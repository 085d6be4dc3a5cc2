//! Who calls the admin API (an owner's access token, an org key, or the instance's ADMIN_TOKEN) and
//! whether they may call this route on this org: the route table's role, applied in one place.

use serde_json::Value;
use worker::{D1Database, Env, Request};

use crate::auth::constant_time_eq;
use crate::error::{Error, Problem};
use crate::http::{bearer, header, secret};
use crate::org::access::{Maker, MAX_KEY_CHAIN};
use crate::org::{decide, Denied, OrgKey, Role, Scope, DEFAULT_ORG_ID};
use crate::records::org::{ActorType, Membership, OrgKeyRecord, Owner};
use crate::router::AdminRoute;
use crate::store::d1;

/// The caller of an admin route.
pub enum Caller {
    /// The instance operator (ADMIN_TOKEN): every org, as owner.
    Operator,
    /// A signed-in owner, with their orgs.
    Owner {
        owner: Owner,
        memberships: Vec<Membership>,
    },
    /// An org key: its org, with its role, and how many makers lead from it to the owner or operator
    /// who began its chain (1: made by one of them).
    OrgKey { key: OrgKeyRecord, links: usize },
}

impl Caller {
    /// The caller's role in an org (`None`: not a member).
    pub fn role_in(&self, org_id: &str) -> Option<Role> {
        match self {
            Caller::Operator => Some(Role::Owner),
            Caller::Owner { memberships, .. } => memberships
                .iter()
                .find(|m| m.org_id == org_id)
                .map(|m| m.role),
            Caller::OrgKey { key, .. } => (key.org_id == org_id).then_some(key.role),
        }
    }

    /// The orgs the caller sees (`None`: every org).
    pub fn visible_orgs(&self) -> Option<Vec<String>> {
        match self {
            Caller::Operator => None,
            Caller::Owner { memberships, .. } => {
                Some(memberships.iter().map(|m| m.org_id.clone()).collect())
            }
            Caller::OrgKey { key, .. } => Some(vec![key.org_id.clone()]),
        }
    }

    /// How the audit log names the caller: type, id and a readable name.
    pub fn actor(&self) -> (ActorType, Option<String>, String) {
        match self {
            Caller::Operator => (ActorType::Operator, None, "operator".into()),
            Caller::Owner { owner, .. } => (
                ActorType::Owner,
                Some(owner.id.clone()),
                owner.email.clone(),
            ),
            Caller::OrgKey { key, .. } => {
                (ActorType::OrgKey, Some(key.id.clone()), key.name.clone())
            }
        }
    }
}

fn unauthorized(detail: &str) -> Error {
    Error::admin_unauthorized().with_detail(detail)
}

/// The request's admin credential: `X-API-Key: ask-…`, or `Authorization: Bearer` with an owner
/// access token, an org key or the ADMIN_TOKEN. Anything else is 401.
pub async fn caller(req: &Request, env: &Env, db: &D1Database, now: i64) -> Result<Caller, Error> {
    if let Some(key) = header(req, "x-api-key") {
        return org_key_caller(db, key.trim()).await;
    }
    let token = bearer(req).ok_or_else(Error::admin_unauthorized)?;
    let token = token.as_str();
    if let Some(expected) = secret(env, "ADMIN_TOKEN") {
        if constant_time_eq(token.as_bytes(), expected.as_bytes()) {
            return Ok(Caller::Operator);
        }
    }
    if OrgKey::looks_like(token) {
        return org_key_caller(db, token).await;
    }
    if token.split('.').count() == 3 {
        let (owner_id, session_id) = crate::identity::verify_owner_token(env, token, now)?;
        crate::identity::ensure_session_live(env, &session_id, None).await?;
        let owner = d1::owner_by_id(db, &owner_id)
            .await?
            .ok_or_else(|| unauthorized("The token's owner account no longer exists."))?;
        let memberships = d1::memberships(db, &owner.id).await?;
        return Ok(Caller::Owner { owner, memberships });
    }
    Err(unauthorized(
        "Send an owner access token or the ADMIN_TOKEN as `Authorization: Bearer <token>`, or an org key as `X-API-Key`.",
    ))
}

async fn org_key_caller(db: &D1Database, sent: &str) -> Result<Caller, Error> {
    let key = OrgKey::parse(sent).ok_or_else(|| {
        unauthorized("`X-API-Key` takes an org key (`ask-prod-…` or `ask-dev-…`); this is not one (mistyped or truncated?).")
    })?;
    let mut found = d1::org_key_by_hash(db, &key.hash())
        .await?
        .ok_or_else(|| unauthorized("This org key is unknown or has been revoked."))?;
    let (role, links) = acting_role(db, &found).await?;
    found.role = role;
    Ok(Caller::OrgKey { key: found, links })
}

/// A key acts with at most its maker's role now: an owner's current role in the org (a key of an
/// owner who left is refused), or the role of the key that made it, and so on up the chain. With
/// the role, how many makers were followed.
async fn acting_role(db: &D1Database, key: &OrgKeyRecord) -> Result<(Role, usize), Error> {
    let mut role = key.role;
    let mut maker = key.created_by.clone();
    for links in 1..=MAX_KEY_CHAIN {
        match Maker::of(&maker) {
            Some(Maker::Operator) => return Ok((role, links)),
            Some(Maker::Owner(owner)) => {
                let theirs = d1::member_role(db, &key.org_id, &owner)
                    .await?
                    .ok_or_else(|| {
                        unauthorized("This org key's maker is no longer a member of its org.")
                    })?;
                return Ok((role.min(theirs), links));
            }
            Some(Maker::Key(id)) => {
                let parent = d1::org_key_by_id(db, &key.org_id, &id)
                    .await?
                    .ok_or_else(|| unauthorized("The org key that made this key was revoked."))?;
                role = role.min(parent.role);
                maker = parent.created_by;
            }
            None => break,
        }
    }
    Err(unauthorized("This org key's maker cannot be traced."))
}

/// The refusal for a member whose role is below the route's.
pub fn forbidden(need: Role, have: Role) -> Error {
    Error::new(
        Problem::Forbidden,
        format!(
            "This needs the `{}` role (or higher) in the org; the credential has `{}`.",
            need.as_str(),
            have.as_str()
        ),
    )
    .with_field("required_role", need.as_str())
    .with_field("role", have.as_str())
}

/// What authorization found: the route's org (none for the caller-wide routes) and the caller's role
/// in it.
pub struct Grant {
    pub org_id: Option<String>,
    pub role: Role,
}

/// The one rule: a caller who is not a member of the resource's org gets the same 404 as for a
/// resource that does not exist; a member below the route's role gets 403 `forbidden`.
pub async fn authorize(
    db: &D1Database,
    caller: &Caller,
    spec: &AdminRoute,
    scope: &Scope,
    body: impl FnOnce() -> Result<Value, Error>,
) -> Result<Grant, Error> {
    let (org_id, hidden) = match scope {
        Scope::Caller => {
            return Ok(Grant {
                org_id: None,
                role: caller_role(caller),
            })
        }
        Scope::Org(slug) => (d1::org_by_slug(db, slug).await?.id, d1::no_org(slug)),
        Scope::Project(slug) => (
            d1::project_in_org(db, slug).await?.org_id,
            d1::no_project(slug),
        ),
        Scope::Api(id) => (
            d1::api_org_id(db, id)
                .await?
                .ok_or_else(|| d1::no_api(id))?,
            d1::no_api(id),
        ),
        Scope::BodyOrg => {
            let named = body_text(&body()?, "org")?;
            match named {
                Some(slug) => (d1::org_by_slug(db, &slug).await?.id, d1::no_org(&slug)),
                None => (default_org(caller)?, d1::no_org("")),
            }
        }
        Scope::BodyProject => {
            let slug = body_text(&body()?, "project")?.ok_or_else(|| {
                Error::invalid_request("`project` is required").with_field("param", "project")
            })?;
            (
                d1::project_in_org(db, &slug).await?.org_id,
                d1::no_project(&slug),
            )
        }
    };
    match decide(caller.role_in(&org_id), spec.role) {
        Ok(role) => Ok(Grant {
            org_id: Some(org_id),
            role,
        }),
        Err(Denied::Hidden) => Err(hidden),
        Err(Denied::Forbidden { need, have }) => Err(forbidden(need, have)),
    }
}

/// A caller-wide route's role: the operator's is owner; an owner's is what they are in their orgs
/// (checked per org by the handler); a key's is its own.
fn caller_role(caller: &Caller) -> Role {
    match caller {
        Caller::Operator => Role::Owner,
        Caller::Owner { .. } => Role::Viewer,
        Caller::OrgKey { key, .. } => key.role,
    }
}

/// The org of a project made without naming one: the operator's default org, a key's own org, an
/// owner's only org.
fn default_org(caller: &Caller) -> Result<String, Error> {
    match caller {
        Caller::Operator => Ok(DEFAULT_ORG_ID.to_string()),
        Caller::OrgKey { key, .. } => Ok(key.org_id.clone()),
        Caller::Owner { memberships, .. } => match memberships.as_slice() {
            [only] => Ok(only.org_id.clone()),
            _ => Err(Error::invalid_request(
                "Name the org the project belongs to: `org` (a slug from GET /api/v1/orgs/me).",
            )
            .with_field("param", "org")),
        },
    }
}

/// A string member of a JSON body, if present; any other type is 400.
fn body_text(body: &Value, name: &str) -> Result<Option<String>, Error> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => {
            Err(Error::invalid_request(format!("`{name}` must be a string"))
                .with_field("param", name))
        }
    }
}
