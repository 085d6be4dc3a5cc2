//! The gateway's one error type, rendered as problem+json (RFC 9457) in exactly one place (`http::problem`).

use serde_json::{Map, Value};

/// An error on its way to the client. `kind` is the stable problem `type`; clients match on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub status: u16,
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Extension members of the problem object (e.g. `scope`, `limit`).
    pub extra: Map<String, Value>,
    /// Response headers the error requires (e.g. `WWW-Authenticate`, `Retry-After`).
    pub headers: Vec<(String, String)>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(
        status: u16,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Error {
            status,
            kind,
            title,
            detail: detail.into(),
            extra: Map::new(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_headers(mut self, headers: impl IntoIterator<Item = (String, String)>) -> Self {
        self.headers.extend(headers);
        self
    }

    pub fn with_field(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(name.to_string(), value.into());
        self
    }

    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(400, "invalid-request", "The request is not valid", detail)
    }
    pub fn invalid_json(detail: impl Into<String>) -> Self {
        Self::new(
            400,
            "invalid-json",
            "The request body is not valid JSON",
            detail,
        )
    }
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "payload-too-large",
            "The request body is too large",
            format!("Send at most {limit} bytes."),
        )
    }
    pub fn missing_credential() -> Self {
        Self::new(401, "missing-credential", "No credential was sent",
            "Send a consumer key or token as `Authorization: Bearer <credential>` (or `X-API-Key: <key>`).")
            .with_header("WWW-Authenticate", "Bearer")
    }
    pub fn invalid_credential(detail: impl Into<String>) -> Self {
        Self::new(
            401,
            "invalid-credential",
            "The credential is not valid",
            detail,
        )
        .with_header("WWW-Authenticate", "Bearer error=\"invalid_token\"")
    }
    pub fn consumer_disabled() -> Self {
        Self::new(
            403,
            "consumer-disabled",
            "The consumer is disabled",
            "This consumer has been disabled by the API owner; ask them to enable it.",
        )
    }
    pub fn admin_unauthorized() -> Self {
        Self::new(
            401,
            "admin-unauthorized",
            "Admin token missing or wrong",
            "Send the gateway's ADMIN_TOKEN as `Authorization: Bearer <token>`.",
        )
        .with_header("WWW-Authenticate", "Bearer realm=\"sluice-admin\"")
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, "not-found", "Not found", detail)
    }
    pub fn method_not_allowed(allowed: &str) -> Self {
        Self::new(
            405,
            "method-not-allowed",
            "Method not allowed",
            format!("This route accepts: {allowed}."),
        )
        .with_header("Allow", allowed)
    }
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(409, "conflict", "Already exists", detail)
    }
    pub fn upstream(detail: impl Into<String>) -> Self {
        Self::new(
            502,
            "upstream-error",
            "The upstream model API failed",
            detail,
        )
    }
    pub fn upstream_timeout(ms: u32) -> Self {
        Self::new(
            504,
            "upstream-timeout",
            "The upstream model API did not answer in time",
            format!("No answer within {ms} ms; try again, or raise the API's upstream.timeout_ms."),
        )
    }
    pub fn misconfigured(detail: impl Into<String>) -> Self {
        Self::new(
            503,
            "gateway-misconfigured",
            "The gateway is not configured for this",
            detail,
        )
    }
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(500, "internal", "Internal gateway error", detail)
    }

    /// The problem+json body.
    pub fn to_problem(&self) -> Value {
        let mut body = Map::new();
        body.insert("type".into(), Value::from(self.kind));
        body.insert("title".into(), Value::from(self.title));
        body.insert("status".into(), Value::from(self.status));
        body.insert("detail".into(), Value::from(self.detail.clone()));
        for (k, v) in &self.extra {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_has_rfc9457_members_and_extensions() {
        let e = Error::new(429, "quota-exceeded", "Quota exceeded", "wait").with_field("limit", 10);
        let p = e.to_problem();
        assert_eq!(p["type"], "quota-exceeded");
        assert_eq!(p["status"], 429);
        assert_eq!(p["title"], "Quota exceeded");
        assert_eq!(p["detail"], "wait");
        assert_eq!(p["limit"], 10);
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
}
