//! A project's sign-in policy: OTP guessing limits per client network and email, who may sign up,
//! and how long auth events are kept. Stored as one JSON column; a key left out takes its default.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;

/// Who may get an account by signing in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signup {
    /// Any address.
    #[default]
    Open,
    /// Addresses at one of `signup_domains` (or their subdomains).
    Domains,
    /// Only addresses the owner added as users.
    InviteOnly,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignInPolicy {
    /// Wrong codes for one email from one client network (IPv4 address or IPv6 /64) per hour.
    pub otp_wrong_codes_per_network_per_hour: u32,
    /// Wrong codes for one email from all networks together per day.
    pub otp_wrong_codes_per_email_per_day: u32,
    /// Failed verifies from one network per hour, across all emails.
    pub otp_failed_verifies_per_network_per_hour: u32,
    /// Code requests (`otp/start`) from one network per hour, across all emails.
    pub otp_starts_per_network_per_hour: u32,
    /// How long auth events are kept before the scheduled purge.
    pub auth_event_retention_days: u32,
    pub signup: Signup,
    pub signup_domains: Vec<String>,
    /// New accounts created from one network per day.
    pub signups_per_network_per_day: u32,
    /// Sign in only clients with a DPoP key (RFC 9449), so no session has a bearer refresh token.
    pub require_dpop: bool,
    /// OAuth dynamic client registration (RFC 7591) for public clients: off unless the owner opts in.
    pub oauth_dynamic_registration: bool,
    /// Dynamic registrations from one network per hour.
    pub oauth_registrations_per_network_per_hour: u32,
}

impl Default for SignInPolicy {
    fn default() -> Self {
        SignInPolicy {
            otp_wrong_codes_per_network_per_hour: 10,
            otp_wrong_codes_per_email_per_day: 30,
            otp_failed_verifies_per_network_per_hour: 30,
            otp_starts_per_network_per_hour: 30,
            auth_event_retention_days: 30,
            signup: Signup::Open,
            signup_domains: Vec::new(),
            signups_per_network_per_day: 5,
            require_dpop: false,
            oauth_dynamic_registration: false,
            oauth_registrations_per_network_per_hour: 10,
        }
    }
}

/// The settings an owner may change, with their bounds.
const LIMITS: [(&str, u32, u32); 7] = [
    ("oauth_registrations_per_network_per_hour", 1, 10_000),
    ("otp_wrong_codes_per_network_per_hour", 1, 1000),
    ("otp_wrong_codes_per_email_per_day", 1, 10_000),
    ("otp_failed_verifies_per_network_per_hour", 1, 10_000),
    ("otp_starts_per_network_per_hour", 1, 10_000),
    ("auth_event_retention_days", 1, 3650),
    ("signups_per_network_per_day", 1, 10_000),
];

/// The names a project PATCH may carry for this policy.
pub const FIELDS: [&str; 11] = [
    "otp_wrong_codes_per_network_per_hour",
    "otp_wrong_codes_per_email_per_day",
    "otp_failed_verifies_per_network_per_hour",
    "otp_starts_per_network_per_hour",
    "auth_event_retention_days",
    "signup",
    "signup_domains",
    "signups_per_network_per_day",
    "require_dpop",
    "oauth_dynamic_registration",
    "oauth_registrations_per_network_per_hour",
];

impl SignInPolicy {
    /// The policy with the fields of `changes` (a subset of [`FIELDS`]) applied, each checked.
    pub fn with_changes(&self, changes: &Map<String, Value>) -> Result<SignInPolicy, Error> {
        let mut merged = match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => return Err(Error::internal("The sign-in policy could not be written.")),
        };
        for (k, v) in changes {
            merged.insert(k.clone(), v.clone());
        }
        let next: SignInPolicy = serde_json::from_value(Value::Object(merged)).map_err(|e| {
            Error::invalid_request(format!("The sign-in settings are not valid: {e}."))
        })?;
        next.validate()?;
        Ok(next)
    }

    pub fn validate(&self) -> Result<(), Error> {
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        for (name, min, max) in LIMITS {
            let n = value.get(name).and_then(Value::as_u64).unwrap_or(0);
            if n < u64::from(min) || n > u64::from(max) {
                return Err(Error::invalid_request(format!(
                    "`{name}` must be between {min} and {max}."
                ))
                .with_field("param", name));
            }
        }
        if self.signup_domains.len() > 100 {
            return Err(
                Error::invalid_request("`signup_domains` may list at most 100 domains.")
                    .with_field("param", "signup_domains"),
            );
        }
        for d in &self.signup_domains {
            let shaped = d.len() <= 253
                && d.contains('.')
                && !d.starts_with('.')
                && !d.ends_with('.')
                && d.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                });
            if !shaped {
                return Err(Error::invalid_request(format!(
                    "`{d}` is not a lower-case domain such as example.com."
                ))
                .with_field("param", "signup_domains"));
            }
        }
        if self.signup == Signup::Domains && self.signup_domains.is_empty() {
            return Err(Error::invalid_request(
                "`signup: domains` needs `signup_domains`, the domains whose addresses may sign up.",
            )
            .with_field("param", "signup_domains"));
        }
        Ok(())
    }

    /// Whether a new account may be created for `email` (normalized) without the owner adding it.
    pub fn lets_sign_up(&self, email: &str) -> bool {
        match self.signup {
            Signup::Open => true,
            Signup::InviteOnly => false,
            Signup::Domains => {
                let domain = email.rsplit('@').next().unwrap_or("");
                self.signup_domains
                    .iter()
                    .any(|d| domain == d || domain.ends_with(&format!(".{d}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_changes_and_bounds() {
        let stored: SignInPolicy = crate::encoding::from_json("{}").unwrap();
        assert_eq!(stored, SignInPolicy::default());
        assert!(crate::encoding::from_json::<SignInPolicy>(r#"{"signup":"maybe"}"#).is_err());
        assert!(crate::encoding::from_json::<SignInPolicy>(r#"{"nope":1}"#).is_err());
        let changes = |v: Value| v.as_object().cloned().unwrap();
        let p = stored
            .with_changes(&changes(json!({"otp_wrong_codes_per_email_per_day": 12})))
            .unwrap();
        assert_eq!(p.otp_wrong_codes_per_email_per_day, 12);
        assert_eq!(p.otp_starts_per_network_per_hour, 30);
        for bad in [
            json!({"auth_event_retention_days": 0}),
            json!({"otp_starts_per_network_per_hour": -1}),
            json!({"otp_starts_per_network_per_hour": "5"}),
            json!({"signup": "domains"}),
            json!({"signup": "domains", "signup_domains": ["Example.com"]}),
            json!({"signup_domains": ["@x.com"]}),
        ] {
            assert!(p.with_changes(&changes(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn who_may_sign_up() {
        let mut p = SignInPolicy::default();
        assert!(p.lets_sign_up("a@anywhere.example"));
        p.signup = Signup::Domains;
        p.signup_domains = vec!["corp.example".into()];
        assert!(p.lets_sign_up("a@corp.example"));
        assert!(p.lets_sign_up("a@eu.corp.example"));
        assert!(!p.lets_sign_up("a@evilcorp.example"));
        assert!(!p.lets_sign_up("a@corp.example.evil"));
        p.signup = Signup::InviteOnly;
        assert!(!p.lets_sign_up("a@corp.example"));
    }
}
