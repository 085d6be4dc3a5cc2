//! The admin API's route table: every route's method, path, the least role it needs and where its org
//! comes from. The router matches requests against it and authorization reads it, so no admin route
//! can exist outside it (and the cross-org tests walk it).

use crate::org::{Role, Scope};

/// An admin route: the handler's name for it and the path parameters it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    ListProjects,
    CreateProject,
    GetProject { project: String },
    PatchProject { project: String },
    RotateSigningKey { project: String },
    AuthEvents { project: String },
    ListApis,
    CreateApi,
    GetApi { id: String },
    PatchApi { id: String },
    SetAuthMode { api: String },
    ListPlans { api: String },
    CreatePlan { api: String },
    PatchPlan { api: String, plan: Option<String> },
    SetConsumerPlan { api: String, consumer: String },
    ApiUsage { api: String },
    ListConsumers { project: String },
    CreateConsumer { project: String },
    GetConsumer { project: String, id: String },
    PatchConsumer { project: String, id: String },
    CreateKey { project: String, consumer: String },
    ListKeys { project: String },
    RevokeKey { project: String, id: String },
    ListJwtCredentials { project: String, consumer: String },
    CreateJwtCredential { project: String, consumer: String },
    RevokeJwtCredential { project: String, id: String },
    ListMtlsCredentials { project: String, consumer: String },
    CreateMtlsCredential { project: String, consumer: String },
    RevokeMtlsCredential { project: String, id: String },
    OrgsMe,
    ListOrgs,
    CreateOrg,
    GetOrg { org: String },
    PatchOrg { org: String },
    DeleteOrg { org: String },
    ListMembers { org: String },
    InviteMember { org: String },
    PatchMember { org: String, id: String },
    RemoveMember { org: String, id: String },
    ListOrgKeys { org: String },
    CreateOrgKey { org: String },
    RevokeOrgKey { org: String, id: String },
    OrgAudit { org: String },
    ListProviderKeys { org: String },
    CreateProviderKey { org: String },
    ReplaceProviderKey { org: String, provider: String },
    DeleteProviderKey { org: String, provider: String },
    ResealProviderKeys { org: String },
    ListOAuthClients { project: String },
    CreateOAuthClient { project: String },
    GetOAuthClient { project: String, client: String },
    PatchOAuthClient { project: String, client: String },
    DeleteOAuthClient { project: String, client: String },
    ListOAuthGrants { project: String },
    RevokeOAuthGrant { project: String, grant: String },
}

/// Where a route's org comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrgFrom {
    /// The path's `{org}`, else its `{project}`, else its `{api}`.
    Path,
    /// The body's `org`.
    BodyOrg,
    /// The body's `project`.
    BodyProject,
    /// The caller's own orgs.
    Caller,
}

/// One row of the table.
pub struct AdminRoute {
    pub method: &'static str,
    /// Below `/api/v1/`; `{name}` is a parameter (one path segment).
    pub path: &'static str,
    /// The least role that may call it.
    pub role: Role,
    pub org: OrgFrom,
    build: fn(&Params) -> Admin,
}

impl std::fmt::Debug for AdminRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} /api/v1/{}", self.method, self.path)
    }
}

impl AdminRoute {
    /// `POST /api/v1/projects/{project}/consumers`: how the audit log names what was done.
    pub fn action(&self) -> String {
        format!("{} /api/v1/{}", self.method, self.path)
    }
}

/// A request matched to its row.
#[derive(Debug, Clone)]
pub struct AdminCall {
    pub route: Admin,
    pub spec: &'static AdminRoute,
    pub scope: Scope,
}

impl PartialEq for AdminCall {
    fn eq(&self, other: &Self) -> bool {
        self.route == other.route
            && self.scope == other.scope
            && std::ptr::eq(self.spec, other.spec)
    }
}
impl Eq for AdminCall {}

/// A matched path's parameters.
pub struct Params<'a>(Vec<(&'static str, &'a str)>);

impl Params<'_> {
    fn s(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().to_string()
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

macro_rules! table {
    ($($method:literal $path:literal $role:ident $org:ident => |$p:ident| $build:expr;)*) => {
        pub static ADMIN_ROUTES: &[AdminRoute] = &[$(AdminRoute {
            method: $method,
            path: $path,
            role: Role::$role,
            org: OrgFrom::$org,
            build: |$p| $build,
        },)*];
    };
}

table! {
    "GET" "projects" Viewer Caller => |_p| Admin::ListProjects;
    "POST" "projects" Developer BodyOrg => |_p| Admin::CreateProject;
    "GET" "projects/{project}" Viewer Path => |p| Admin::GetProject { project: p.s("project") };
    "PATCH" "projects/{project}" Developer Path => |p| Admin::PatchProject { project: p.s("project") };
    "POST" "projects/{project}/signing-keys/rotate" Admin Path => |p| Admin::RotateSigningKey { project: p.s("project") };
    "GET" "projects/{project}/auth-events" Viewer Path => |p| Admin::AuthEvents { project: p.s("project") };
    "GET" "projects/{project}/consumers" Viewer Path => |p| Admin::ListConsumers { project: p.s("project") };
    "POST" "projects/{project}/consumers" Developer Path => |p| Admin::CreateConsumer { project: p.s("project") };
    "GET" "projects/{project}/consumers/{consumer}" Viewer Path => |p| Admin::GetConsumer { project: p.s("project"), id: p.s("consumer") };
    "PATCH" "projects/{project}/consumers/{consumer}" Developer Path => |p| Admin::PatchConsumer { project: p.s("project"), id: p.s("consumer") };
    "POST" "projects/{project}/consumers/{consumer}/keys" Developer Path => |p| Admin::CreateKey { project: p.s("project"), consumer: p.s("consumer") };
    "GET" "projects/{project}/consumers/{consumer}/jwt-credentials" Viewer Path => |p| Admin::ListJwtCredentials { project: p.s("project"), consumer: p.s("consumer") };
    "POST" "projects/{project}/consumers/{consumer}/jwt-credentials" Developer Path => |p| Admin::CreateJwtCredential { project: p.s("project"), consumer: p.s("consumer") };
    "DELETE" "projects/{project}/jwt-credentials/{credential}" Developer Path => |p| Admin::RevokeJwtCredential { project: p.s("project"), id: p.s("credential") };
    "GET" "projects/{project}/oauth/clients" Viewer Path => |p| Admin::ListOAuthClients { project: p.s("project") };
    "POST" "projects/{project}/oauth/clients" Developer Path => |p| Admin::CreateOAuthClient { project: p.s("project") };
    "GET" "projects/{project}/oauth/clients/{client}" Viewer Path => |p| Admin::GetOAuthClient { project: p.s("project"), client: p.s("client") };
    "PATCH" "projects/{project}/oauth/clients/{client}" Developer Path => |p| Admin::PatchOAuthClient { project: p.s("project"), client: p.s("client") };
    "DELETE" "projects/{project}/oauth/clients/{client}" Developer Path => |p| Admin::DeleteOAuthClient { project: p.s("project"), client: p.s("client") };
    "GET" "projects/{project}/oauth/grants" Viewer Path => |p| Admin::ListOAuthGrants { project: p.s("project") };
    "DELETE" "projects/{project}/oauth/grants/{grant}" Developer Path => |p| Admin::RevokeOAuthGrant { project: p.s("project"), grant: p.s("grant") };
    "GET" "projects/{project}/consumers/{consumer}/mtls-credentials" Viewer Path => |p| Admin::ListMtlsCredentials { project: p.s("project"), consumer: p.s("consumer") };
    "POST" "projects/{project}/consumers/{consumer}/mtls-credentials" Developer Path => |p| Admin::CreateMtlsCredential { project: p.s("project"), consumer: p.s("consumer") };
    "DELETE" "projects/{project}/mtls-credentials/{credential}" Developer Path => |p| Admin::RevokeMtlsCredential { project: p.s("project"), id: p.s("credential") };
    "GET" "projects/{project}/keys" Viewer Path => |p| Admin::ListKeys { project: p.s("project") };
    "DELETE" "projects/{project}/keys/{key}" Developer Path => |p| Admin::RevokeKey { project: p.s("project"), id: p.s("key") };
    "GET" "gateway/apis" Viewer Caller => |_p| Admin::ListApis;
    "POST" "gateway/apis" Developer BodyProject => |_p| Admin::CreateApi;
    "GET" "gateway/apis/{api}" Viewer Path => |p| Admin::GetApi { id: p.s("api") };
    "PATCH" "gateway/apis/{api}" Developer Path => |p| Admin::PatchApi { id: p.s("api") };
    "PUT" "gateway/apis/{api}/auth-mode" Developer Path => |p| Admin::SetAuthMode { api: p.s("api") };
    "GET" "gateway/apis/{api}/plans" Viewer Path => |p| Admin::ListPlans { api: p.s("api") };
    "POST" "gateway/apis/{api}/plans" Developer Path => |p| Admin::CreatePlan { api: p.s("api") };
    "PATCH" "gateway/apis/{api}/plans" Developer Path => |p| Admin::PatchPlan { api: p.s("api"), plan: None };
    "PATCH" "gateway/apis/{api}/plans/{plan}" Developer Path => |p| Admin::PatchPlan { api: p.s("api"), plan: Some(p.s("plan")) };
    "PUT" "gateway/apis/{api}/consumers/{consumer}/plan" Developer Path => |p| Admin::SetConsumerPlan { api: p.s("api"), consumer: p.s("consumer") };
    "GET" "gateway/apis/{api}/usage" Viewer Path => |p| Admin::ApiUsage { api: p.s("api") };
    "GET" "orgs/me" Viewer Caller => |_p| Admin::OrgsMe;
    "GET" "orgs" Viewer Caller => |_p| Admin::ListOrgs;
    "POST" "orgs" Viewer Caller => |_p| Admin::CreateOrg;
    "GET" "orgs/{org}" Viewer Path => |p| Admin::GetOrg { org: p.s("org") };
    "PATCH" "orgs/{org}" Admin Path => |p| Admin::PatchOrg { org: p.s("org") };
    "DELETE" "orgs/{org}" Owner Path => |p| Admin::DeleteOrg { org: p.s("org") };
    "GET" "orgs/{org}/members" Viewer Path => |p| Admin::ListMembers { org: p.s("org") };
    "POST" "orgs/{org}/members" Admin Path => |p| Admin::InviteMember { org: p.s("org") };
    "PATCH" "orgs/{org}/members/{member}" Admin Path => |p| Admin::PatchMember { org: p.s("org"), id: p.s("member") };
    "DELETE" "orgs/{org}/members/{member}" Admin Path => |p| Admin::RemoveMember { org: p.s("org"), id: p.s("member") };
    "GET" "orgs/{org}/keys" Admin Path => |p| Admin::ListOrgKeys { org: p.s("org") };
    "POST" "orgs/{org}/keys" Admin Path => |p| Admin::CreateOrgKey { org: p.s("org") };
    "DELETE" "orgs/{org}/keys/{key}" Admin Path => |p| Admin::RevokeOrgKey { org: p.s("org"), id: p.s("key") };
    "GET" "orgs/{org}/audit" Admin Path => |p| Admin::OrgAudit { org: p.s("org") };
    "GET" "orgs/{org}/providers" Admin Path => |p| Admin::ListProviderKeys { org: p.s("org") };
    "POST" "orgs/{org}/providers" Admin Path => |p| Admin::CreateProviderKey { org: p.s("org") };
    "POST" "orgs/{org}/providers/reencrypt" Admin Path => |p| Admin::ResealProviderKeys { org: p.s("org") };
    "PUT" "orgs/{org}/providers/{provider}" Admin Path => |p| Admin::ReplaceProviderKey { org: p.s("org"), provider: p.s("provider") };
    "DELETE" "orgs/{org}/providers/{provider}" Admin Path => |p| Admin::DeleteProviderKey { org: p.s("org"), provider: p.s("provider") };
}

/// The parameters of `segs` under `pattern`, if it matches.
fn bind<'a>(pattern: &'static str, segs: &[&'a str]) -> Option<Params<'a>> {
    let parts: Vec<&'static str> = pattern.split('/').collect();
    if parts.len() != segs.len() {
        return None;
    }
    let mut params = Vec::new();
    for (part, seg) in parts.iter().zip(segs) {
        match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) => params.push((name, *seg)),
            None if part == seg => {}
            None => return None,
        }
    }
    Some(Params(params))
}

/// The org scope of a matched route.
fn scope(spec: &AdminRoute, params: &Params) -> Scope {
    match spec.org {
        OrgFrom::BodyOrg => Scope::BodyOrg,
        OrgFrom::BodyProject => Scope::BodyProject,
        OrgFrom::Caller => Scope::Caller,
        OrgFrom::Path => {
            if let Some(org) = params.get("org") {
                Scope::Org(org.to_string())
            } else if let Some(project) = params.get("project") {
                Scope::Project(project.to_string())
            } else {
                Scope::Api(params.s("api"))
            }
        }
    }
}

/// How many of a pattern's segments are literal: a path matched by a more literal row (`orgs/me`)
/// is not also matched by a row with a parameter there (`orgs/{org}`).
fn literal_segments(pattern: &str) -> usize {
    pattern.split('/').filter(|p| !p.starts_with('{')).count()
}

/// `(allowed methods, the call if the method is one of them)` for a path below `/api/v1/`, or `None`
/// when no row has that path. Only the most literal rows that match the path count, so `Allow`
/// names no method that a wildcard row would then answer with 404.
pub fn admin_match(method: &str, segs: &[&str]) -> Option<(String, Option<AdminCall>)> {
    let matching: Vec<(&'static AdminRoute, Params)> = ADMIN_ROUTES
        .iter()
        .filter_map(|spec| bind(spec.path, segs).map(|params| (spec, params)))
        .collect();
    let most = matching
        .iter()
        .map(|(spec, _)| literal_segments(spec.path))
        .max()?;
    let mut allowed: Vec<&'static str> = Vec::new();
    let mut found = None;
    for (spec, params) in matching
        .into_iter()
        .filter(|(spec, _)| literal_segments(spec.path) == most)
    {
        if !allowed.contains(&spec.method) {
            allowed.push(spec.method);
        }
        if found.is_none() && spec.method == method {
            found = Some(AdminCall {
                route: (spec.build)(&params),
                spec,
                scope: scope(spec, &params),
            });
        }
    }
    Some((allowed.join(", "), found))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: &str, path: &str) -> AdminCall {
        let segs: Vec<&str> = path.split('/').collect();
        admin_match(method, &segs).unwrap().1.unwrap()
    }

    #[test]
    fn every_row_matches_its_own_path_and_builds_its_route() {
        let mut seen = std::collections::HashSet::new();
        for spec in ADMIN_ROUTES {
            assert!(
                seen.insert((spec.method, spec.path)),
                "{spec:?} is in the table twice"
            );
            let sample = spec
                .path
                .split('/')
                .map(|p| if p.starts_with('{') { "x1" } else { p })
                .collect::<Vec<_>>()
                .join("/");
            let got = call(spec.method, &sample);
            assert!(
                std::ptr::eq(got.spec, spec),
                "{spec:?} matched {:?}",
                got.spec
            );
        }
    }

    #[test]
    fn every_row_is_in_the_openapi_document() {
        let doc: serde_json::Value =
            crate::encoding::from_json(include_str!("../../web/openapi.json")).unwrap();
        let shape = |p: &str| {
            p.split('/')
                .map(|s| if s.starts_with('{') { "{}" } else { s })
                .collect::<Vec<_>>()
                .join("/")
        };
        let documented: Vec<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                let item = item.as_object().unwrap();
                item.keys()
                    .filter(|m| *m != "parameters")
                    .map(|m| (m.to_uppercase(), shape(path)))
                    .collect::<Vec<_>>()
            })
            .collect();
        for spec in ADMIN_ROUTES {
            let want = (
                spec.method.to_string(),
                shape(&format!("/api/v1/{}", spec.path)),
            );
            assert!(
                documented.contains(&want),
                "{spec:?} is not in web/openapi.json"
            );
        }
    }

    #[test]
    fn roles_as_a_table() {
        // Reads are open to viewers, except the org's keys, provider keys and audit log; writes
        // need a developer; members, org keys, provider keys and signing keys an admin; deleting
        // the org an owner.
        for spec in ADMIN_ROUTES {
            let expected = match (spec.method, spec.path) {
                (_, "orgs/me") | ("GET", "orgs") | ("POST", "orgs") => Role::Viewer,
                ("GET", "orgs/{org}/keys" | "orgs/{org}/audit" | "orgs/{org}/providers") => {
                    Role::Admin
                }
                ("GET", _) => Role::Viewer,
                ("DELETE", "orgs/{org}") => Role::Owner,
                (_, p) if p.starts_with("orgs/") => Role::Admin,
                (_, "projects/{project}/signing-keys/rotate") => Role::Admin,
                _ => Role::Developer,
            };
            assert_eq!(spec.role, expected, "{spec:?}");
        }
    }

    #[test]
    fn scopes_follow_the_path() {
        assert_eq!(
            call("GET", "orgs/acme/members").scope,
            Scope::Org("acme".into())
        );
        assert_eq!(
            call("DELETE", "projects/p1/keys/k").scope,
            Scope::Project("p1".into())
        );
        assert_eq!(
            call("PUT", "gateway/apis/a1/consumers/c/plan").scope,
            Scope::Api("a1".into())
        );
        assert_eq!(call("POST", "projects").scope, Scope::BodyOrg);
        assert_eq!(call("POST", "gateway/apis").scope, Scope::BodyProject);
        assert_eq!(call("GET", "orgs/me").route, Admin::OrgsMe);
        assert_eq!(call("GET", "orgs/me").scope, Scope::Caller);
        // `orgs/me` is not an org (`me` is a reserved slug): `orgs/{org}`'s other methods are 405.
        let (allowed, none) = admin_match("DELETE", &["orgs", "me"]).unwrap();
        assert!(none.is_none());
        assert_eq!(allowed, "GET");
        let (allowed, none) = admin_match("PUT", &["orgs", "acme"]).unwrap();
        assert!(none.is_none());
        assert_eq!(allowed, "GET, PATCH, DELETE");
        assert!(admin_match("GET", &["orgs", "acme", "nope"]).is_none());
    }
}
