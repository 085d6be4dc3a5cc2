//! The gateway's one error type and the closed catalogue of problem types it can carry, rendered as
//! problem+json (RFC 9457) in exactly one place (`http::problem`).

use serde_json::{Map, Value};

macro_rules! catalogue {
    ($($variant:ident => $slug:literal, $status:literal, $title:literal;)*) => {
        /// Every problem `type` the gateway answers with, its usual status and its title. The slug is
        /// stable: clients match on it (and the README lists them all).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Problem {
            $($variant,)*
        }

        impl Problem {
            pub const ALL: &'static [Problem] = &[$(Problem::$variant,)*];

            /// The problem's `type`: a relative URI reference, stable for matching.
            pub fn slug(self) -> &'static str {
                match self {
                    $(Problem::$variant => $slug,)*
                }
            }

            /// The status it is answered with (the upstream's own for `upstream-rejected`).
            pub fn status(self) -> u16 {
                match self {
                    $(Problem::$variant => $status,)*
                }
            }

            /// The problem type with this slug.
            pub fn from_slug(slug: &str) -> Option<Problem> {
                match slug {
                    $($slug => Some(Problem::$variant),)*
                    _ => None,
                }
            }

            /// A stable snake_case code for OpenAI-style clients (the slug, `-` as `_`).
            pub fn code(self) -> String {
                self.slug().replace('-', "_")
            }

            /// A short summary of the problem type, the same for every occurrence.
            pub fn title(self) -> &'static str {
                match self {
                    $(Problem::$variant => $title,)*
                }
            }
        }
    };
}

catalogue! {
    InvalidRequest => "invalid-request", 400, "The request is not valid";
    InvalidJson => "invalid-json", 400, "The request body is not valid JSON";
    ParameterNotAllowed => "parameter-not-allowed", 400, "This parameter is not allowed on this API";
    UnsupportedGrantType => "unsupported-grant-type", 400, "Unsupported grant type";
    InvalidGrant => "invalid-grant", 400, "The grant was not accepted";
    InvalidScope => "invalid-scope", 400, "The scope is not allowed";
    InvalidClient => "invalid-client", 401, "The OAuth client was not authenticated";
    UnauthorizedClient => "unauthorized-client", 400, "The client may not use this grant";
    InsufficientScope => "insufficient-scope", 403, "The token lacks a required scope";
    MissingCredential => "missing-credential", 401, "No credential was sent";
    InvalidCredential => "invalid-credential", 401, "The credential is not valid";
    TokenExpired => "token-expired", 401, "The token has expired";
    SessionRevoked => "session-revoked", 401, "The session has ended";
    InvalidCode => "invalid-code", 401, "The code was not accepted";
    CodeLocked => "code-locked", 401, "The code was not accepted";
    CodeExpired => "code-expired", 401, "The code was not accepted";
    InvalidRefreshToken => "invalid-refresh-token", 401, "The refresh token was not accepted";
    RefreshTokenReused => "refresh-token-reused", 401, "The refresh token was not accepted";
    InvalidDpopProof => "invalid-dpop-proof", 401, "The DPoP proof was not accepted";
    AdminUnauthorized => "admin-unauthorized", 401, "Admin credential missing or wrong";
    ConsumerDisabled => "consumer-disabled", 403, "The consumer is disabled";
    Forbidden => "forbidden", 403, "The credential's role does not allow this";
    IpNotAllowed => "ip-not-allowed", 403, "Your IP address is not allowed";
    OriginNotAllowed => "origin-not-allowed", 403, "Pages from this origin may not do this";
    AuthModeMismatch => "auth-mode-mismatch", 403, "This credential is not accepted in this API's auth mode";
    CertificateMismatch => "certificate-mismatch", 403, "The client certificate belongs to another consumer";
    ModelNotAllowed => "model-not-allowed", 403, "The model is not allowed";
    ModelNotPriced => "model-not-priced", 403, "The model has no price";
    SignupNotAllowed => "signup-not-allowed", 403, "Sign-up is not open to this address";
    NotFound => "not-found", 404, "Not found";
    MethodNotAllowed => "method-not-allowed", 405, "Method not allowed";
    Conflict => "conflict", 409, "Already exists";
    PayloadTooLarge => "payload-too-large", 413, "The request body is too large";
    RateLimited => "rate-limited", 429, "Rate limit reached";
    QuotaExceeded => "quota-exceeded", 429, "Quota exceeded";
    BudgetExceeded => "budget-exceeded", 429, "Spend budget exceeded";
    UpstreamRateLimited => "upstream-rate-limited", 429, "The upstream model API is rate limiting";
    ClientClosedRequest => "client-closed-request", 499, "The client closed the request";
    Internal => "internal", 500, "Internal gateway error";
    NotImplemented => "not-implemented", 501, "Not implemented on this gateway";
    UpstreamError => "upstream-error", 502, "The upstream model API failed";
    UpstreamRejected => "upstream-rejected", 400, "The upstream model API rejected the request";
    UpstreamStreamInterrupted => "upstream-stream-interrupted", 502, "The upstream stream ended early";
    GatewayMisconfigured => "gateway-misconfigured", 503, "The gateway is not configured for this";
    EmailNotConfigured => "email-not-configured", 503, "Sign-in mail is not configured";
    ProviderNotConfigured => "provider-not-configured", 503, "No key is configured for this provider";
    CounterUnavailable => "counter-unavailable", 503, "Quota counters are unavailable";
    AuthUnavailable => "auth-unavailable", 503, "Sign-in is temporarily unavailable";
    JwksUnavailable => "jwks-unavailable", 503, "The API's key set is unavailable";
    UpstreamTimeout => "upstream-timeout", 504, "The upstream model API did not answer in time";
}

/// An error on its way to the client: a problem of the catalogue, what happened, and what it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub problem: Problem,
    /// Usually the problem's status; `upstream-rejected` keeps the upstream's.
    pub status: u16,
    pub detail: String,
    /// Extension members of the problem object (e.g. `scope`, `limit`).
    pub extra: Box<Map<String, Value>>,
    /// Response headers the error requires (e.g. `WWW-Authenticate`, `Retry-After`).
    pub headers: Vec<(String, String)>,
    /// How the body is written: problem+json, or Anthropic's error shape on the Messages routes.
    pub shape: Shape,
}

/// The body an error is answered with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Shape {
    /// RFC 9457 problem+json, with OpenAI's `error` member.
    #[default]
    Problem,
    /// `{"type": "error", "error": {"type", "message"}}`, as Anthropic's clients read it.
    Anthropic,
    /// The problem object as `application/json`, for OAuth endpoints (RFC 6749 §5.2 error responses
    /// carry `error` and `error_description`, which the problem holds as extensions).
    OAuth,
}

/// Anthropic's error type for a status.
/// The error types Anthropic's API answers with.
pub const ANTHROPIC_TYPES: &[&str] = &[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
    "timeout_error",
];

/// The error type Anthropic answers `status` with.
pub fn anthropic_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 409 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind(), self.detail)
    }
}

impl Error {
    pub fn new(problem: Problem, detail: impl Into<String>) -> Self {
        Error {
            problem,
            status: problem.status(),
            detail: detail.into(),
            extra: Box::default(),
            shape: Shape::Problem,
            headers: Vec::new(),
        }
    }

    /// The stable problem `type`.
    pub fn kind(&self) -> &'static str {
        self.problem.slug()
    }

    pub fn title(&self) -> &'static str {
        self.problem.title()
    }

    /// Answers with `status` instead of the problem's usual one (the upstream's, for a rejection).
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_headers(mut self, headers: impl IntoIterator<Item = (String, String)>) -> Self {
        self.headers.extend(headers);
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
    pub fn with_field(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(name.to_string(), value.into());
        self
    }

    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(Problem::InvalidRequest, detail)
    }
    pub fn invalid_json(detail: impl Into<String>) -> Self {
        Self::new(Problem::InvalidJson, detail)
    }
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            Problem::PayloadTooLarge,
            format!("Send at most {limit} bytes."),
        )
    }
    pub fn missing_credential() -> Self {
        Self::new(Problem::MissingCredential,
            "Send a consumer key or token as `Authorization: Bearer <credential>` (or `X-API-Key: <key>`).")
            .with_header("WWW-Authenticate", "Bearer")
    }
    pub fn invalid_credential(detail: impl Into<String>) -> Self {
        Self::new(Problem::InvalidCredential, detail)
            .with_header("WWW-Authenticate", "Bearer error=\"invalid_token\"")
    }
    /// A DPoP proof that is missing, wrong or used before (RFC 9449's `invalid_dpop_proof`).
    pub fn invalid_dpop(detail: impl Into<String>) -> Self {
        Self::new(Problem::InvalidDpopProof, detail)
            .with_header("WWW-Authenticate", "DPoP error=\"invalid_dpop_proof\"")
    }
    pub fn consumer_disabled() -> Self {
        Self::new(
            Problem::ConsumerDisabled,
            "This consumer has been disabled by the API owner; ask them to enable it.",
        )
    }
    pub fn admin_unauthorized() -> Self {
        Self::new(
            Problem::AdminUnauthorized,
            "Send an owner access token or the gateway's ADMIN_TOKEN as `Authorization: Bearer <token>`, or an org key as `X-API-Key`.",
        )
        .with_header("WWW-Authenticate", "Bearer realm=\"sluice-admin\"")
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(Problem::NotFound, detail)
    }
    pub fn method_not_allowed(allowed: &str) -> Self {
        Self::new(
            Problem::MethodNotAllowed,
            format!("This route accepts: {allowed}."),
        )
        .with_header("Allow", allowed)
    }
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(Problem::Conflict, detail)
    }
    pub fn upstream(detail: impl Into<String>) -> Self {
        Self::new(Problem::UpstreamError, detail)
    }
    pub fn upstream_timeout(ms: u32) -> Self {
        Self::new(
            Problem::UpstreamTimeout,
            format!("No answer within {ms} ms; try again, or raise the API's upstream.timeout_ms."),
        )
    }
    pub fn misconfigured(detail: impl Into<String>) -> Self {
        Self::new(Problem::GatewayMisconfigured, detail)
    }
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(Problem::Internal, detail)
    }

    /// The problem+json body.
    /// The RFC 9457 problem object, which also carries OpenAI's `error` member (unless the error
    /// already has an OAuth `error` code), so OpenAI-style clients show `detail` as their
    /// exception's message:
    /// `{"type", "title", "status", "detail", <extensions>, "error": {"message", "type", "code", "param"}}`.
    pub fn to_problem(&self) -> Value {
        let mut body = Map::new();
        body.insert("type".into(), Value::from(self.kind()));
        body.insert("title".into(), Value::from(self.title()));
        body.insert("status".into(), Value::from(self.status));
        body.insert("detail".into(), Value::from(self.detail.clone()));
        for (k, v) in self.extra.iter() {
            body.insert(k.clone(), v.clone());
        }
        // An OAuth endpoint's `error` (RFC 6749: a code string) is kept as it is.
        body.entry("error").or_insert_with(|| self.openai_error());
        Value::Object(body)
    }

    /// The same error in Anthropic's shape (for the Messages routes).
    pub fn in_anthropic_shape(mut self) -> Self {
        self.shape = Shape::Anthropic;
        self
    }

    /// Anthropic's error body: `{"type": "error", "error": {"type", "message"}}`.
    pub fn to_anthropic(&self) -> Value {
        serde_json::json!({"type": "error", "error": {
            "type": anthropic_type(self.status), "message": self.detail}})
    }

    /// The body and its media type, in the error's shape.
    pub fn body(&self) -> (&'static str, Value) {
        match self.shape {
            Shape::Problem => ("application/problem+json", self.to_problem()),
            Shape::Anthropic => ("application/json", self.to_anthropic()),
            Shape::OAuth => ("application/json", self.to_problem()),
        }
    }

    /// OpenAI's error object: the detail as `message`, the problem type as `type`, a stable
    /// snake_case `code`, and the offending field as `param` when there is one.
    pub fn openai_error(&self) -> Value {
        let param = match self.extra.get("param") {
            Some(Value::String(p)) => Value::from(p.clone()),
            _ => Value::Null,
        };
        serde_json::json!({
            "message": self.detail,
            "type": self.kind(),
            "code": self.problem.code(),
            "param": param,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_has_rfc9457_members_and_extensions() {
        let e = Error::new(Problem::QuotaExceeded, "wait").with_field("limit", 10);
        let p = e.to_problem();
        assert_eq!(p["type"], "quota-exceeded");
        assert_eq!(p["status"], 429);
        assert_eq!(p["title"], "Quota exceeded");
        assert_eq!(p["detail"], "wait");
        assert_eq!(p["limit"], 10);
        assert_eq!(
            p["error"],
            serde_json::json!({"message": "wait", "type": "quota-exceeded", "code": "quota_exceeded", "param": null}),
            "OpenAI's member, for the SDKs' messages"
        );
        let bad = Error::invalid_request("`n` must be at least 1").with_field("param", "n");
        assert_eq!(bad.to_problem()["error"]["param"], "n");
    }

    #[test]
    fn the_messages_routes_answer_in_anthropics_shape() {
        let e = Error::new(Problem::RateLimited, "slow down").in_anthropic_shape();
        let (media, body) = e.body();
        assert_eq!(media, "application/json");
        assert_eq!(
            body,
            serde_json::json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
        );
        assert_eq!(
            Problem::from_slug("rate-limited"),
            Some(Problem::RateLimited)
        );
        assert_eq!(anthropic_type(401), "authentication_error");
        assert_eq!(anthropic_type(504), "timeout_error");
        assert!(ANTHROPIC_TYPES.contains(&anthropic_type(504)));
    }

    #[test]
    fn missing_credential_asks_for_bearer() {
        let e = Error::missing_credential();
        assert_eq!(e.status, 401);
        assert!(e
            .headers
            .iter()
            .any(|(k, v)| *k == "WWW-Authenticate" && v == "Bearer"));
    }

    #[test]
    fn the_catalogue_is_closed_and_its_slugs_unique() {
        let mut slugs: Vec<&str> = Problem::ALL.iter().map(|p| p.slug()).collect();
        let n = slugs.len();
        slugs.sort_unstable();
        slugs.dedup();
        assert_eq!(slugs.len(), n, "two problems share a type");
        for p in Problem::ALL {
            assert!((400..600).contains(&p.status()), "{p:?}");
            assert!(
                p.slug()
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c == b'-'),
                "{p:?}"
            );
            assert!(!p.title().is_empty());
        }
    }

    /// The README's table is the list users match on: it names every problem type, and no other.
    #[test]
    fn the_readme_lists_every_problem_type() {
        let readme = include_str!("../README.md");
        let start = readme
            .find("<!-- problem types -->")
            .expect("the README has a problem-type table");
        let table = &readme[start..];
        let table = &table[..table.find("<!-- /problem types -->").unwrap_or(table.len())];
        let listed: Vec<&str> = table
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let mut want: Vec<&str> = Problem::ALL.iter().map(|p| p.slug()).collect();
        let mut got = listed.clone();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want, "README problem types differ from the catalogue");
        for p in Problem::ALL {
            let row = table
                .lines()
                .find(|l| l.starts_with(&format!("| `{}`", p.slug())))
                .unwrap_or_default();
            assert!(
                row.contains(&format!("| {} |", p.status())),
                "README row for {} names status {}: {row}",
                p.slug(),
                p.status()
            );
        }
    }
}
