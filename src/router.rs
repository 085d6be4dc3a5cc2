//! Pure route table: (method, path) → the route it names, or a 404/405 problem.

use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    /// A browser file the gateway serves (see `assets`).
    Asset {
        path: String,
    },
    ChatCompletions {
        project: String,
        api: String,
    },
    ListModels {
        project: String,
        api: String,
    },
    ConsumerUsage {
        project: String,
        api: String,
    },
    OtpStart {
        project: String,
    },
    OtpVerify {
        project: String,
    },
    Refresh {
        project: String,
    },
    Logout {
        project: String,
    },
    Me {
        project: String,
    },
    TokenExchange {
        project: String,
    },
    Jwks {
        project: String,
    },
    /// A CORS preflight for any end-user route of a project.
    Preflight {
        project: String,
    },
    DevMailbox,
    GetProject {
        project: String,
    },
    PatchProject {
        project: String,
    },
    RotateSigningKey {
        project: String,
    },
    AuthEvents {
        project: String,
    },
    SetAuthMode {
        api: String,
    },
    ListProjects,
    CreateProject,
    ListApis,
    CreateApi,
    GetApi {
        id: String,
    },
    PatchApi {
        id: String,
    },
    ListPlans {
        api: String,
    },
    CreatePlan {
        api: String,
    },
    PatchPlan {
        api: String,
        plan: Option<String>,
    },
    SetConsumerPlan {
        api: String,
        consumer: String,
    },
    ApiUsage {
        api: String,
    },
    ListConsumers {
        project: String,
    },
    CreateConsumer {
        project: String,
    },
    GetConsumer {
        project: String,
        id: String,
    },
    PatchConsumer {
        project: String,
        id: String,
    },
    CreateKey {
        project: String,
        consumer: String,
    },
    ListKeys {
        project: String,
    },
    RevokeKey {
        project: String,
        id: String,
    },
    ListJwtCredentials {
        project: String,
        consumer: String,
    },
    CreateJwtCredential {
        project: String,
        consumer: String,
    },
    RevokeJwtCredential {
        project: String,
        id: String,
    },
}

/// Whether a route belongs to the owner's admin API (needs ADMIN_TOKEN).
impl Route {
    pub fn is_admin(&self) -> bool {
        !matches!(
            self,
            Route::Health
                | Route::Asset { .. }
                | Route::ChatCompletions { .. }
                | Route::ListModels { .. }
                | Route::ConsumerUsage { .. }
                | Route::OtpStart { .. }
                | Route::OtpVerify { .. }
                | Route::Refresh { .. }
                | Route::Logout { .. }
                | Route::Me { .. }
                | Route::TokenExchange { .. }
                | Route::Jwks { .. }
                | Route::Preflight { .. }
                | Route::DevMailbox
        )
    }

    /// The project whose browser origins govern CORS for this route (end-user routes only).
    pub fn cors_project(&self) -> Option<&str> {
        match self {
            Route::ChatCompletions { project, .. }
            | Route::ListModels { project, .. }
            | Route::ConsumerUsage { project, .. }
            | Route::OtpStart { project }
            | Route::OtpVerify { project }
            | Route::Refresh { project }
            | Route::Logout { project }
            | Route::Me { project }
            | Route::TokenExchange { project }
            | Route::Jwks { project }
            | Route::Preflight { project } => Some(project),
            _ => None,
        }
    }
}

/// Resolves a request line. `path` is the URL path without query.
pub fn route(method: &str, path: &str) -> Result<Route, Error> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let s = |i: usize| segs[i].to_string();
    // Each arm lists the methods a path accepts; the first that matches the method wins.
    if method == "OPTIONS" {
        if let ["v1", project, _, ..] = segs.as_slice() {
            return Ok(Route::Preflight {
                project: project.to_string(),
            });
        }
    }
    let post = |r: Route| ("POST", (method == "POST").then_some(r));
    let get = |r: Route| ("GET", (method == "GET").then_some(r));
    let (allowed, found): (&str, Option<Route>) = match segs.as_slice() {
        ["dev", "mailbox"] => get(Route::DevMailbox),
        ["v1", _, "auth", "otp", "start"] => post(Route::OtpStart { project: s(1) }),
        ["v1", _, "auth", "otp", "verify"] => post(Route::OtpVerify { project: s(1) }),
        ["v1", _, "auth", "refresh"] => post(Route::Refresh { project: s(1) }),
        ["v1", _, "auth", "logout"] => post(Route::Logout { project: s(1) }),
        ["v1", _, "auth", "me"] => get(Route::Me { project: s(1) }),
        ["v1", _, "auth", "token"] => post(Route::TokenExchange { project: s(1) }),
        ["v1", _, ".well-known", "jwks.json"] => get(Route::Jwks { project: s(1) }),
        ["api", "v1", "projects", _] => (
            "GET, PATCH",
            match method {
                "GET" => Some(Route::GetProject { project: s(3) }),
                "PATCH" => Some(Route::PatchProject { project: s(3) }),
                _ => None,
            },
        ),
        ["api", "v1", "projects", _, "consumers", _, "jwt-credentials"] => (
            "GET, POST",
            match method {
                "GET" => Some(Route::ListJwtCredentials {
                    project: s(3),
                    consumer: s(5),
                }),
                "POST" => Some(Route::CreateJwtCredential {
                    project: s(3),
                    consumer: s(5),
                }),
                _ => None,
            },
        ),
        ["api", "v1", "projects", _, "jwt-credentials", _] => (
            "DELETE",
            (method == "DELETE").then(|| Route::RevokeJwtCredential {
                project: s(3),
                id: s(5),
            }),
        ),
        ["api", "v1", "projects", _, "signing-keys", "rotate"] => {
            post(Route::RotateSigningKey { project: s(3) })
        }
        ["api", "v1", "projects", _, "auth-events"] => get(Route::AuthEvents { project: s(3) }),
        ["api", "v1", "gateway", "apis", _, "auth-mode"] => (
            "PUT",
            (method == "PUT").then(|| Route::SetAuthMode { api: s(4) }),
        ),
        ["health"] => ("GET", (method == "GET").then_some(Route::Health)),
        [] | ["index.html"] | ["chat.js"] | ["sdk.js"] | ["sdk.d.ts"] => (
            "GET, HEAD",
            matches!(method, "GET" | "HEAD").then(|| Route::Asset {
                path: format!("/{}", segs.join("/")),
            }),
        ),
        ["v1", _, _, "chat", "completions"] => (
            "POST",
            (method == "POST").then(|| Route::ChatCompletions {
                project: s(1),
                api: s(2),
            }),
        ),
        ["v1", _, _, "models"] => (
            "GET",
            (method == "GET").then(|| Route::ListModels {
                project: s(1),
                api: s(2),
            }),
        ),
        ["v1", _, _, "usage"] => (
            "GET",
            (method == "GET").then(|| Route::ConsumerUsage {
                project: s(1),
                api: s(2),
            }),
        ),
        ["api", "v1", "gateway", "apis", _, "plans"] => (
            "GET, POST, PATCH",
            match method {
                "GET" => Some(Route::ListPlans { api: s(4) }),
                "POST" => Some(Route::CreatePlan { api: s(4) }),
                "PATCH" => Some(Route::PatchPlan {
                    api: s(4),
                    plan: None,
                }),
                _ => None,
            },
        ),
        ["api", "v1", "gateway", "apis", _, "plans", _] => (
            "PATCH",
            (method == "PATCH").then(|| Route::PatchPlan {
                api: s(4),
                plan: Some(s(6)),
            }),
        ),
        ["api", "v1", "gateway", "apis", _, "consumers", _, "plan"] => (
            "PUT",
            (method == "PUT").then(|| Route::SetConsumerPlan {
                api: s(4),
                consumer: s(6),
            }),
        ),
        ["api", "v1", "gateway", "apis", _, "usage"] => (
            "GET",
            (method == "GET").then(|| Route::ApiUsage { api: s(4) }),
        ),
        ["api", "v1", "projects"] => (
            "GET, POST",
            match method {
                "GET" => Some(Route::ListProjects),
                "POST" => Some(Route::CreateProject),
                _ => None,
            },
        ),
        ["api", "v1", "gateway", "apis"] => (
            "GET, POST",
            match method {
                "GET" => Some(Route::ListApis),
                "POST" => Some(Route::CreateApi),
                _ => None,
            },
        ),
        ["api", "v1", "gateway", "apis", _] => (
            "GET, PATCH",
            match method {
                "GET" => Some(Route::GetApi { id: s(4) }),
                "PATCH" => Some(Route::PatchApi { id: s(4) }),
                _ => None,
            },
        ),
        ["api", "v1", "projects", _, "consumers"] => (
            "GET, POST",
            match method {
                "GET" => Some(Route::ListConsumers { project: s(3) }),
                "POST" => Some(Route::CreateConsumer { project: s(3) }),
                _ => None,
            },
        ),
        ["api", "v1", "projects", _, "consumers", _] => (
            "GET, PATCH",
            match method {
                "GET" => Some(Route::GetConsumer {
                    project: s(3),
                    id: s(5),
                }),
                "PATCH" => Some(Route::PatchConsumer {
                    project: s(3),
                    id: s(5),
                }),
                _ => None,
            },
        ),
        ["api", "v1", "projects", _, "consumers", _, "keys"] => (
            "POST",
            (method == "POST").then(|| Route::CreateKey {
                project: s(3),
                consumer: s(5),
            }),
        ),
        ["api", "v1", "projects", _, "keys"] => (
            "GET",
            (method == "GET").then(|| Route::ListKeys { project: s(3) }),
        ),
        ["api", "v1", "projects", _, "keys", _] => (
            "DELETE",
            (method == "DELETE").then(|| Route::RevokeKey {
                project: s(3),
                id: s(5),
            }),
        ),
        _ => return Err(Error::not_found(format!("No route for {path}."))),
    };
    found.ok_or_else(|| Error::method_not_allowed(allowed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_plane_routes() {
        assert_eq!(
            route("POST", "/v1/demo/chat/chat/completions"),
            Ok(Route::ChatCompletions {
                project: "demo".into(),
                api: "chat".into()
            })
        );
        assert_eq!(
            route("GET", "/v1/demo/chat/models"),
            Ok(Route::ListModels {
                project: "demo".into(),
                api: "chat".into()
            })
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
        assert_eq!(route("POST", "/api/v1/projects"), Ok(Route::CreateProject));
        assert_eq!(route("GET", "/api/v1/projects/"), Ok(Route::ListProjects));
        assert_eq!(
            route("PATCH", "/api/v1/gateway/apis/api_1"),
            Ok(Route::PatchApi { id: "api_1".into() })
        );
        assert_eq!(
            route("POST", "/api/v1/projects/demo/consumers/con_1/keys"),
            Ok(Route::CreateKey {
                project: "demo".into(),
                consumer: "con_1".into()
            })
        );
        assert_eq!(
            route("DELETE", "/api/v1/projects/demo/keys/key_1"),
            Ok(Route::RevokeKey {
                project: "demo".into(),
                id: "key_1".into()
            })
        );
        assert!(route("DELETE", "/api/v1/projects")
            .unwrap_err()
            .headers
            .iter()
            .any(|(k, v)| k == "Allow" && v == "GET, POST"));
        assert!(Route::CreateProject.is_admin());
        assert!(!Route::Health.is_admin());
    }

    #[test]
    fn plan_and_usage_routes() {
        assert_eq!(
            route("GET", "/v1/demo/chat/usage"),
            Ok(Route::ConsumerUsage {
                project: "demo".into(),
                api: "chat".into()
            })
        );
        assert!(!route("GET", "/v1/demo/chat/usage").unwrap().is_admin());
        assert_eq!(
            route("PATCH", "/api/v1/gateway/apis/a1/plans"),
            Ok(Route::PatchPlan {
                api: "a1".into(),
                plan: None
            })
        );
        assert_eq!(
            route("PATCH", "/api/v1/gateway/apis/a1/plans/pro"),
            Ok(Route::PatchPlan {
                api: "a1".into(),
                plan: Some("pro".into())
            })
        );
        assert_eq!(
            route("PUT", "/api/v1/gateway/apis/a1/consumers/c1/plan"),
            Ok(Route::SetConsumerPlan {
                api: "a1".into(),
                consumer: "c1".into()
            })
        );
        assert_eq!(
            route("GET", "/api/v1/gateway/apis/a1/usage"),
            Ok(Route::ApiUsage { api: "a1".into() })
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
            Ok(Route::OtpStart {
                project: "demo".into()
            })
        );
        assert_eq!(
            route("GET", "/v1/demo/.well-known/jwks.json"),
            Ok(Route::Jwks {
                project: "demo".into()
            })
        );
        assert_eq!(
            route("OPTIONS", "/v1/demo/chat/chat/completions"),
            Ok(Route::Preflight {
                project: "demo".into()
            })
        );
        assert_eq!(
            route("GET", "/v1/demo/auth/refresh").unwrap_err().status,
            405
        );
        assert_eq!(
            route("PUT", "/api/v1/gateway/apis/a/auth-mode"),
            Ok(Route::SetAuthMode { api: "a".into() })
        );
        assert!(!Route::OtpVerify {
            project: "p".into()
        }
        .is_admin());
        assert!(Route::PatchProject {
            project: "p".into()
        }
        .is_admin());
        assert_eq!(
            Route::Me {
                project: "p".into()
            }
            .cors_project(),
            Some("p")
        );
        assert_eq!(Route::CreateProject.cors_project(), None);
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
}
