//! Admin input for projects: creating one, and changing its settings.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::input::validate::{nullable, validate_origin, validate_slug, validate_text};
use crate::records::sign_in::FIELDS;
use crate::records::Project;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    pub slug: String,
    pub name: String,
    /// The org's slug (authorization reads it; optional when the caller has one org).
    #[allow(dead_code)]
    pub org: Option<String>,
}

impl NewProject {
    pub fn validate(&self) -> Result<(), Error> {
        validate_slug("slug", &self.slug)?;
        validate_text("name", &self.name, 200)
    }
}

/// `PATCH /api/v1/projects/{project}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectPatch {
    pub name: Option<String>,
    pub allowed_origins: Option<Vec<String>>,
    pub access_token_ttl_s: Option<i64>,
    #[serde(default, deserialize_with = "nullable")]
    pub email_from: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub email_subject: Option<Option<String>>,
    // The sign-in policy (`records::sign_in`), each checked when merged with the stored one.
    pub otp_wrong_codes_per_network_per_hour: Option<Value>,
    pub otp_wrong_codes_per_email_per_day: Option<Value>,
    pub otp_failed_verifies_per_network_per_hour: Option<Value>,
    pub otp_starts_per_network_per_hour: Option<Value>,
    pub auth_event_retention_days: Option<Value>,
    pub signup: Option<Value>,
    pub signup_domains: Option<Value>,
    pub signups_per_network_per_day: Option<Value>,
    pub require_dpop: Option<Value>,
    pub oauth_dynamic_registration: Option<Value>,
    pub oauth_registrations_per_network_per_hour: Option<Value>,
}

impl ProjectPatch {
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(n) = &self.name {
            validate_text("name", n, 200)?;
        }
        if let Some(origins) = &self.allowed_origins {
            if origins.len() > 100 {
                return Err(Error::invalid_request(
                    "`allowed_origins` may list at most 100 origins",
                ));
            }
            origins.iter().try_for_each(|o| validate_origin(o))?;
        }
        if let Some(ttl) = self.access_token_ttl_s {
            if !(60..=86_400).contains(&ttl) {
                return Err(Error::invalid_request(
                    "`access_token_ttl_s` must be between 60 and 86400 seconds",
                ));
            }
        }
        if let Some(Some(f)) = &self.email_from {
            validate_text("email_from", f, 300)?;
        }
        if let Some(Some(f)) = &self.email_subject {
            validate_text("email_subject", f, 200)?;
        }
        Ok(())
    }

    /// The sign-in settings the patch names, by their names.
    fn sign_in_changes(&self) -> Map<String, Value> {
        let fields = [
            &self.otp_wrong_codes_per_network_per_hour,
            &self.otp_wrong_codes_per_email_per_day,
            &self.otp_failed_verifies_per_network_per_hour,
            &self.otp_starts_per_network_per_hour,
            &self.auth_event_retention_days,
            &self.signup,
            &self.signup_domains,
            &self.signups_per_network_per_day,
            &self.require_dpop,
            &self.oauth_dynamic_registration,
            &self.oauth_registrations_per_network_per_hour,
        ];
        FIELDS
            .iter()
            .zip(fields)
            .filter_map(|(name, v)| v.clone().map(|v| (name.to_string(), v)))
            .collect()
    }

    /// Writes what the patch names onto `project` (absent fields keep their value; `null` clears);
    /// sign-in settings that do not fit together (or out of bounds) are a 400 naming the field.
    pub fn apply(self, project: &mut Project) -> Result<(), Error> {
        let changes = self.sign_in_changes();
        if !changes.is_empty() {
            project.sign_in = project.sign_in.with_changes(&changes)?;
        }
        if let Some(n) = self.name {
            project.name = n;
        }
        if let Some(origins) = self.allowed_origins {
            project.allowed_origins = origins;
        }
        if let Some(ttl) = self.access_token_ttl_s {
            project.access_token_ttl_s = ttl;
        }
        if let Some(f) = self.email_from {
            project.email_from = f;
        }
        if let Some(s) = self.email_subject {
            project.email_subject = s;
        }
        Ok(())
    }
}
