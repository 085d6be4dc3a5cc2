//! Pure route table: (method, path) → the route it names, grouped by audience (public files and
//! health, a project's end-user routes, the owner's admin API), or a 404/405 problem.

mod admin;

pub use admin::{Admin, AdminCall, AdminRoute, OrgFrom, ADMIN_ROUTES};

use crate::error::Error;
use crate::usage::Endpoint;
use admin::admin_match;

/// A route, by who calls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Public(Public),
    /// A project's end-user routes: its APIs' data plane and its sign-in. CORS follows the
    /// project's allowed origins.
    EndUser {
        project: String,
        route: EndUser,
    },
    /// The owner's admin API: an owner token, an org key or the ADMIN_TOKEN (see `ADMIN_ROUTES`).
    Admin(AdminCall),
    /// Owners signing in.
    OwnerAuth(OwnerAuth),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Public {
    Health,
    /// A browser file the gateway serves (see `assets`).
    Asset {
        path: String,
    },
    DevMailbox,
    /// RFC 8414 metadata at `/.well-known/oauth-authorization-server/v1/{project}`.
    OAuthServerMetadata {
        project: String,
    },
    /// RFC 9728 metadata at `/.well-known/oauth-protected-resource/v1/{project}/{api}`.
    OAuthResourceMetadata {
        project: String,
        api: String,
    },
    /// The React demo page and its bundle (dev only; Workers static assets).
    ReactDemo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndUser {
    /// A metered call: chat completions, responses, embeddings, or Anthropic's Messages API
    /// (`…/messages`, or `…/v1/messages` as Anthropic SDKs append it).
    Metered {
        api: String,
        endpoint: Endpoint,
    },
    CountTokens {
        api: String,
    },
    /// The API's models, in OpenAI's list shape, or Anthropic's at `…/v1/models` (as Anthropic
    /// SDKs append it).
    ListModels {
        api: String,
        anthropic: bool,
    },
    GetModel {
        api: String,
        model: String,
        anthropic: bool,
    },
    ConsumerUsage {
        api: String,
    },
    OtpStart,
    OtpVerify,
    Refresh,
    Logout,
    Me,
    TokenExchange,
    Jwks,
    /// The OAuth authorization server's page and endpoints (`/v1/{project}/oauth/…`).
    OAuth(OAuthRoute),
    /// The signed-in user's OAuth grants.
    ListGrants,
    RevokeGrant {
        grant: String,
    },
    /// A CORS preflight for any end-user route of the project.
    Preflight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthRoute {
    Authorize,
    Token,
    Revoke,
    Introspect,
    Register,
    /// The metadata at `/v1/{project}/.well-known/oauth-authorization-server` (path appended).
    Metadata,
}

/// The owner accounts' sign-in: `/api/v1/auth/…` and the JWKS of owner tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerAuth {
    DevLogin,
    OtpStart,
    OtpVerify,
    Refresh,
    Logout,
    Jwks,
    /// `google` or `github`: social sign-in, not configured.
    Social(String),
}

impl Route {
    /// Whether a route belongs to the owner's admin API (needs an admin credential).
    pub fn is_admin(&self) -> bool {
        matches!(self, Route::Admin(_))
    }
}

/// `(allowed methods, the route if the method is one of them)` for a path.
type Arm = (&'static str, Option<Route>);

fn end_user(project: &str, route: EndUser) -> Route {
    Route::EndUser {
        project: project.to_string(),
        route,
    }
}

/// The end-user routes of project `p`: `/v1/{p}/…`.
fn end_user_arm(method: &str, p: &str, rest: &[&str]) -> Option<Arm> {
    let post = |r: EndUser| ("POST", (method == "POST").then(|| end_user(p, r)));
    let get = |r: EndUser| ("GET", (method == "GET").then(|| end_user(p, r)));
    let api = |a: &str| a.to_string();
    let metered = |a: &str, endpoint| EndUser::Metered {
        api: a.to_string(),
        endpoint,
    };
    Some(match rest {
        ["oauth", "authorize"] => (
            "GET, POST",
            matches!(method, "GET" | "POST")
                .then(|| end_user(p, EndUser::OAuth(OAuthRoute::Authorize))),
        ),
        ["oauth", "token"] => post(EndUser::OAuth(OAuthRoute::Token)),
        ["oauth", "revoke"] => post(EndUser::OAuth(OAuthRoute::Revoke)),
        ["oauth", "introspect"] => post(EndUser::OAuth(OAuthRoute::Introspect)),
        ["oauth", "register"] => post(EndUser::OAuth(OAuthRoute::Register)),
        [".well-known", "oauth-authorization-server"] => get(EndUser::OAuth(OAuthRoute::Metadata)),
        ["auth", "grants"] => get(EndUser::ListGrants),
        ["auth", "grants", grant] => (
            "DELETE",
            (method == "DELETE").then(|| {
                end_user(
                    p,
                    EndUser::RevokeGrant {
                        grant: grant.to_string(),
                    },
                )
            }),
        ),
        ["auth", "otp", "start"] => post(EndUser::OtpStart),
        ["auth", "otp", "verify"] => post(EndUser::OtpVerify),
        ["auth", "refresh"] => post(EndUser::Refresh),
        ["auth", "logout"] => post(EndUser::Logout),
        ["auth", "me"] => get(EndUser::Me),
        ["auth", "token"] => post(EndUser::TokenExchange),
        [".well-known", "jwks.json"] => get(EndUser::Jwks),
        [a, "chat", "completions"] => post(metered(a, Endpoint::Chat)),
        [a, "responses"] => post(metered(a, Endpoint::Responses)),
        [a, "embeddings"] => post(metered(a, Endpoint::Embeddings)),
        [a, "messages"] | [a, "v1", "messages"] => post(metered(a, Endpoint::Messages)),
        [a, "messages", "count_tokens"] | [a, "v1", "messages", "count_tokens"] => {
            post(EndUser::CountTokens { api: api(a) })
        }
        [a, "models"] => get(EndUser::ListModels {
            api: api(a),
            anthropic: false,
        }),
        [a, "v1", "models"] => get(EndUser::ListModels {
            api: api(a),
            anthropic: true,
        }),
        // Model ids may hold slashes (`org/model`) and escapes.
        [a, "models", model @ ..] => get(EndUser::GetModel {
            api: api(a),
            model: percent_decode(&model.join("/")),
            anthropic: false,
        }),
        [a, "v1", "models", model @ ..] => get(EndUser::GetModel {
            api: api(a),
            model: percent_decode(&model.join("/")),
            anthropic: true,
        }),
        [a, "usage"] => get(EndUser::ConsumerUsage { api: api(a) }),
        _ => return None,
    })
}

/// The admin routes: `/api/v1/…`: the owners' sign-in, then the table of `admin`.
fn admin_arm(method: &str, rest: &[&str]) -> Option<(String, Option<Route>)> {
    let post = |r: OwnerAuth| {
        (
            "POST".to_string(),
            (method == "POST").then_some(Route::OwnerAuth(r)),
        )
    };
    let get = |r: OwnerAuth| {
        (
            "GET".to_string(),
            (method == "GET").then_some(Route::OwnerAuth(r)),
        )
    };
    match rest {
        ["auth", "dev", "login"] => return Some(post(OwnerAuth::DevLogin)),
        ["auth", "otp", "start"] => return Some(post(OwnerAuth::OtpStart)),
        ["auth", "otp", "verify"] => return Some(post(OwnerAuth::OtpVerify)),
        ["auth", "refresh"] => return Some(post(OwnerAuth::Refresh)),
        ["auth", "logout"] => return Some(post(OwnerAuth::Logout)),
        ["auth", provider @ ("google" | "github")] => {
            return Some(get(OwnerAuth::Social(provider.to_string())))
        }
        [".well-known", "jwks.json"] => return Some(get(OwnerAuth::Jwks)),
        _ => {}
    }
    let (allowed, call) = admin_match(method, rest)?;
    Some((allowed, call.map(Route::Admin)))
}

/// The public routes: health, the browser files, the dev mailbox.
fn public_arm(method: &str, segs: &[&str]) -> Option<Arm> {
    Some(match segs {
        ["health"] => (
            "GET",
            (method == "GET").then_some(Route::Public(Public::Health)),
        ),
        [".well-known", "oauth-authorization-server", "v1", project] => (
            "GET",
            (method == "GET").then(|| {
                Route::Public(Public::OAuthServerMetadata {
                    project: project.to_string(),
                })
            }),
        ),
        [".well-known", "oauth-protected-resource", "v1", project, api] => (
            "GET",
            (method == "GET").then(|| {
                Route::Public(Public::OAuthResourceMetadata {
                    project: project.to_string(),
                    api: api.to_string(),
                })
            }),
        ),
        ["dev", "mailbox"] => (
            "GET",
            (method == "GET").then_some(Route::Public(Public::DevMailbox)),
        ),
        ["react"] | ["react", "index.html"] | ["react", "app.js"] => (
            "GET, HEAD",
            matches!(method, "GET" | "HEAD").then_some(Route::Public(Public::ReactDemo)),
        ),
        []
        | ["index.html"]
        | ["chat.js"]
        | ["sdk.js"]
        | ["sdk.d.ts"]
        | ["openapi.json"]
        | ["console"]
        | ["console", "index.html" | "console.js" | "console.css"] => (
            "GET, HEAD",
            matches!(method, "GET" | "HEAD").then(|| {
                Route::Public(Public::Asset {
                    path: format!("/{}", segs.join("/")),
                })
            }),
        ),
        _ => return None,
    })
}

/// Whether `path` is one of the routes Anthropic SDKs call (`…/messages`,
/// `…/messages/count_tokens`, `…/v1/models[/{id}]`), whose answers, errors included, are in
/// Anthropic's shape and carry its `request-id`.
pub fn speaks_anthropic(path: &str) -> bool {
    let p = path.trim_end_matches('/');
    let segs: Vec<&str> = p.split('/').collect();
    let models = matches!(segs.as_slice(), ["", "v1", _, _, "v1", "models", ..]);
    p.starts_with("/v1/")
        && (models || p.ends_with("/messages") || p.ends_with("/messages/count_tokens"))
}

fn owned(arm: Option<Arm>) -> Option<(String, Option<Route>)> {
    arm.map(|(allowed, route)| (allowed.to_string(), route))
}

/// A route's `Allow`: every method of its rows, and HEAD wherever GET is (RFC 9110 §9.3.2).
fn allow_header(allowed: &str) -> String {
    let mut methods: Vec<&str> = allowed.split(", ").collect();
    if methods.contains(&"GET") && !methods.contains(&"HEAD") {
        let at = methods
            .iter()
            .position(|m| *m == "GET")
            .map_or(0, |i| i + 1);
        methods.insert(at, "HEAD");
    }
    methods.join(", ")
}

/// Resolves a request line. `method` is the request's own, as sent (an unknown one is 405, never
/// read as GET); HEAD takes the GET route, and the runtime drops the answer's body. `path` is the URL
/// path without query.
pub fn route(method: &str, path: &str) -> Result<Route, Error> {
    let method = if method == "HEAD" { "GET" } else { method };
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    if method == "OPTIONS" {
        if let ["v1", project, _, ..] = segs.as_slice() {
            return Ok(end_user(project, EndUser::Preflight));
        }
    }
    let arm = match segs.as_slice() {
        ["v1", project, rest @ ..] => owned(end_user_arm(method, project, rest)),
        ["api", "v1", rest @ ..] => admin_arm(method, rest),
        other => owned(public_arm(method, other)),
    };
    match arm {
        Some((_, Some(route))) => Ok(route),
        Some((allowed, None)) => Err(Error::method_not_allowed(&allow_header(&allowed))),
        None => Err(Error::not_found(format!("No route for {path}."))),
    }
}

/// `%XX` escapes decoded (a path's, so `+` stays `+`); invalid escapes and non-UTF-8 are kept as
/// written.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// The project whose CORS policy applies to `path`: that of every end-user route `/v1/{project}/…`,
/// whether or not the rest of the path is a route (a browser must be able to read a 404 or 405).
pub fn cors_project(path: &str) -> Option<&str> {
    let mut segs = path.trim_matches('/').split('/').filter(|s| !s.is_empty());
    match (segs.next(), segs.next()) {
        (Some("v1"), Some(project)) => Some(project),
        _ => None,
    }
}

/// A request URL (`scheme://authority/path?query#fragment`, as the runtime normalised it) split into
/// its path (at least `/`) and its raw query.
pub fn path_and_query(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let rest = rest.find('/').map_or("", |i| &rest[i..]);
    let rest = rest.split('#').next().unwrap_or("");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    (if path.is_empty() { "/" } else { path }, query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openai_and_anthropic_surfaces_route() {
        let ok = |m: &str, p: &str| route(m, p).unwrap();
        assert_eq!(
            ok("POST", "/v1/p/a/responses"),
            eu(
                "p",
                EndUser::Metered {
                    api: "a".into(),
                    endpoint: Endpoint::Responses
                }
            )
        );
        assert_eq!(
            ok("POST", "/v1/p/a/embeddings"),
            eu(
                "p",
                EndUser::Metered {
                    api: "a".into(),
                    endpoint: Endpoint::Embeddings
                }
            )
        );
        for path in ["/v1/p/a/messages", "/v1/p/a/v1/messages"] {
            assert_eq!(
                ok("POST", path),
                eu(
                    "p",
                    EndUser::Metered {
                        api: "a".into(),
                        endpoint: Endpoint::Messages
                    }
                )
            );
        }
        assert_eq!(
            ok("POST", "/v1/p/a/v1/messages/count_tokens"),
            eu("p", EndUser::CountTokens { api: "a".into() })
        );
        assert_eq!(
            ok("GET", "/v1/p/a/models/org/model%2Dx"),
            eu(
                "p",
                EndUser::GetModel {
                    api: "a".into(),
                    model: "org/model-x".into(),
                    anthropic: false
                }
            )
        );
        assert_eq!(
            ok("GET", "/v1/p/a/v1/models"),
            eu(
                "p",
                EndUser::ListModels {
                    api: "a".into(),
                    anthropic: true
                }
            )
        );
        assert_eq!(
            ok("GET", "/v1/p/a/v1/models/claude-x"),
            eu(
                "p",
                EndUser::GetModel {
                    api: "a".into(),
                    model: "claude-x".into(),
                    anthropic: true
                }
            )
        );
        assert_eq!(route("GET", "/v1/p/a/responses").unwrap_err().status, 405);
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%ff"), "%ff", "not UTF-8: as written");
    }

    #[test]
    fn every_end_user_path_names_its_project_for_cors() {
        assert_eq!(cors_project("/v1/demo/chat/chat/completions"), Some("demo"));
        assert_eq!(cors_project("/v1/demo/nope/nope/nope"), Some("demo"));
        assert_eq!(cors_project("/v1/demo"), Some("demo"));
        assert_eq!(cors_project("/api/v1/projects"), None);
        assert_eq!(cors_project("/v1"), None);
    }

    #[test]
    fn urls_split_into_path_and_query() {
        assert_eq!(
            path_and_query("http://127.0.0.1:8787/v1/p/a/chat/completions?x=1#f"),
            ("/v1/p/a/chat/completions", "x=1")
        );
        assert_eq!(path_and_query("https://h.example"), ("/", ""));
        assert_eq!(
            path_and_query("https://h.example/?a=%2F&b"),
            ("/", "a=%2F&b")
        );
        assert_eq!(path_and_query("https://h.example/a%20b?"), ("/a%20b", ""));
    }

    fn admin_route(method: &str, path: &str) -> Option<Admin> {
        match route(method, path) {
            Ok(Route::Admin(call)) => Some(call.route),
            _ => None,
        }
    }

    fn eu(project: &str, route: EndUser) -> Route {
        end_user(project, route)
    }

    #[test]
    fn data_plane_routes() {
        assert_eq!(
            route("POST", "/v1/demo/chat/chat/completions"),
            Ok(eu(
                "demo",
                EndUser::Metered {
                    api: "chat".into(),
                    endpoint: Endpoint::Chat
                }
            ))
        );
        assert_eq!(
            route("GET", "/v1/demo/chat/models"),
            Ok(eu(
                "demo",
                EndUser::ListModels {
                    api: "chat".into(),
                    anthropic: false
                }
            ))
        );
        assert_eq!(
            route("GET", "/v1/demo/chat/chat/completions")
                .unwrap_err()
                .status,
            405
        );
    }

    #[test]
    fn admin_routes() {
        assert_eq!(
            admin_route("POST", "/api/v1/projects"),
            Some(Admin::CreateProject)
        );
        assert_eq!(
            admin_route("GET", "/api/v1/projects/"),
            Some(Admin::ListProjects)
        );
        assert_eq!(
            admin_route("PATCH", "/api/v1/gateway/apis/api_1"),
            Some(Admin::PatchApi { id: "api_1".into() })
        );
        assert_eq!(
            admin_route("POST", "/api/v1/projects/demo/consumers/con_1/keys"),
            Some(Admin::CreateKey {
                project: "demo".into(),
                consumer: "con_1".into()
            })
        );
        assert_eq!(
            admin_route("DELETE", "/api/v1/projects/demo/keys/key_1"),
            Some(Admin::RevokeKey {
                project: "demo".into(),
                id: "key_1".into()
            })
        );
        assert!(route("DELETE", "/api/v1/projects")
            .unwrap_err()
            .headers
            .iter()
            .any(|(k, v)| k == "Allow" && v == "GET, HEAD, POST"));
        assert!(route("POST", "/api/v1/projects").unwrap().is_admin());
        assert!(!Route::Public(Public::Health).is_admin());
    }

    fn allow_of(method: &str, path: &str) -> Option<String> {
        let e = route(method, path).err()?;
        e.headers
            .iter()
            .find(|(k, _)| k == "Allow")
            .map(|(_, v)| v.to_string())
    }

    #[test]
    fn an_unknown_method_is_405_and_head_takes_the_get_route() {
        for method in ["PROPFIND", "PURGE", "LOCK", "get"] {
            assert_eq!(
                allow_of(method, "/api/v1/projects").as_deref(),
                Some("GET, HEAD, POST"),
                "{method}"
            );
            assert_eq!(
                allow_of(method, "/v1/demo/chat/chat/completions").as_deref(),
                Some("POST")
            );
        }
        assert_eq!(
            route("HEAD", "/api/v1/projects"),
            route("GET", "/api/v1/projects")
        );
        assert_eq!(
            route("HEAD", "/v1/demo/chat/models"),
            route("GET", "/v1/demo/chat/models")
        );
        assert_eq!(
            allow_of("HEAD", "/v1/demo/chat/chat/completions").as_deref(),
            Some("POST")
        );
        assert_eq!(allow_of("PUT", "/health").as_deref(), Some("GET, HEAD"));
        assert_eq!(allow_of("PUT", "/sdk.js").as_deref(), Some("GET, HEAD"));
    }

    #[test]
    fn allow_names_only_methods_the_path_takes() {
        // `orgs/me` is its own row: `orgs/{org}`'s PATCH and DELETE are not offered there.
        assert_eq!(
            allow_of("PATCH", "/api/v1/orgs/me").as_deref(),
            Some("GET, HEAD")
        );
        assert_eq!(
            allow_of("PUT", "/api/v1/orgs/acme/providers/reencrypt").as_deref(),
            Some("POST")
        );
        assert_eq!(
            allow_of("POST", "/api/v1/orgs/acme").as_deref(),
            Some("GET, HEAD, PATCH, DELETE")
        );
        assert!(route("PATCH", "/api/v1/orgs/acme").is_ok());
    }

    #[test]
    fn plan_and_usage_routes() {
        assert_eq!(
            route("GET", "/v1/demo/chat/usage"),
            Ok(eu("demo", EndUser::ConsumerUsage { api: "chat".into() }))
        );
        assert!(!route("GET", "/v1/demo/chat/usage").unwrap().is_admin());
        assert_eq!(
            admin_route("PATCH", "/api/v1/gateway/apis/a1/plans"),
            Some(Admin::PatchPlan {
                api: "a1".into(),
                plan: None
            })
        );
        assert_eq!(
            admin_route("PATCH", "/api/v1/gateway/apis/a1/plans/pro"),
            Some(Admin::PatchPlan {
                api: "a1".into(),
                plan: Some("pro".into())
            })
        );
        assert_eq!(
            admin_route("PUT", "/api/v1/gateway/apis/a1/consumers/c1/plan"),
            Some(Admin::SetConsumerPlan {
                api: "a1".into(),
                consumer: "c1".into()
            })
        );
        assert_eq!(
            admin_route("GET", "/api/v1/gateway/apis/a1/usage"),
            Some(Admin::ApiUsage { api: "a1".into() })
        );
        assert_eq!(
            route("POST", "/api/v1/gateway/apis/a1/usage")
                .unwrap_err()
                .status,
            405
        );
    }

    #[test]
    fn auth_routes_and_preflight() {
        assert_eq!(
            route("POST", "/v1/demo/auth/otp/start"),
            Ok(eu("demo", EndUser::OtpStart))
        );
        assert_eq!(
            route("GET", "/v1/demo/.well-known/jwks.json"),
            Ok(eu("demo", EndUser::Jwks))
        );
        assert_eq!(
            route("OPTIONS", "/v1/demo/chat/chat/completions"),
            Ok(eu("demo", EndUser::Preflight))
        );
        assert_eq!(
            route("GET", "/v1/demo/auth/refresh").unwrap_err().status,
            405
        );
        assert_eq!(
            admin_route("PUT", "/api/v1/gateway/apis/a/auth-mode"),
            Some(Admin::SetAuthMode { api: "a".into() })
        );
        assert!(!eu("p", EndUser::OtpVerify).is_admin());
        assert!(route("PATCH", "/api/v1/projects/p").unwrap().is_admin());
        assert_eq!(
            route("POST", "/api/v1/auth/dev/login"),
            Ok(Route::OwnerAuth(OwnerAuth::DevLogin))
        );
        assert_eq!(
            route("GET", "/api/v1/auth/github"),
            Ok(Route::OwnerAuth(OwnerAuth::Social("github".into())))
        );
        assert_eq!(
            route("GET", "/api/v1/auth/refresh").unwrap_err().status,
            405
        );
    }

    #[test]
    fn unknown_paths_are_404() {
        assert_eq!(route("GET", "/nope").unwrap_err().status, 404);
        assert_eq!(
            route("POST", "/v1/demo/chat/completions")
                .unwrap_err()
                .status,
            404
        );
    }

    #[test]
    fn messages_paths_are_known_for_their_error_shape() {
        for p in [
            "/v1/p/a/messages",
            "/v1/p/a/v1/messages/",
            "/v1/p/a/messages/count_tokens",
            "/v1/p/a/v1/messages/count_tokens",
            "/v1/p/a/v1/models",
            "/v1/p/a/v1/models/claude-x",
        ] {
            assert!(speaks_anthropic(p), "{p}");
        }
        for p in [
            "/v1/p/a/chat/completions",
            "/messages",
            "/v1/p/a/messages/x",
            "/api/v1/messages",
            "/v1/p/a/models",
            "/v1/p/a/models/v1/models",
        ] {
            assert!(!speaks_anthropic(p), "{p}");
        }
    }
}
