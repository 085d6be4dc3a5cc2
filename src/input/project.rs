//! Admin input for projects: creating one, and changing its settings.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::input::validate::{
    nullable, refuse_null, validate_origin, validate_slug, validate_text,
};
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

/// `PATCH /api/v1/projects/{project}`: only `email_from` and `email_subject` may be `null` (back to
/// the defaults); every other field is a value or left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectPatch {
    #[serde(default, deserialize_with = "nullable")]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub allowed_origins: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub access_token_ttl_s: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub email_from: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub email_subject: Option<Option<String>>,
    // The sign-in policy (`records::sign_in`), each checked when merged with the stored one.
    #[serde(default, deserialize_with = "nullable")]
    pub otp_wrong_codes_per_network_per_hour: Option<Option<Value>>,
    #[serde(default, deserialize_with = "nullable")]
    pub otp_wrong_codes_per_email_per_day: Option<Option<Value>>,
    #[serde(default, deserialize_with = "nullable")]
    pub otp_failed_verifies_per_network_per_hour: Option<Option<Value>>,
    #[serde(default, deserialize_with = "nullable")]
    pub otp_starts_per_network_per_hour: Option<Option<Value>>,
    #[serde(default, deserialize_with = "nullable")]
    pub auth_event_retention_days: Option<Option<Value>>,
    #[serde(default, deserialize_with = "nullable")]
    pub signup: Option<Option<Value>>,
    #[serde(default, deserialize_with = "nullable")]
    pub signup_domains: Option<Option<Value>>,
    #[serde(default, deserialize_with = "nullable")]
    pub signups_per_network_per_day: Option<Option<Value>>,
    #[serde(default, deserialize_with = "nullable")]
    pub require_dpop: Option<Option<Value>>,
    #[serde(default, deserialize_with = "nullable")]
    pub oauth_dynamic_registration: Option<Option<Value>>,
    #[serde(default, deserialize_with = "nullable")]
    pub oauth_registrations_per_network_per_hour: Option<Option<Value>>,
}

impl ProjectPatch {
    pub fn validate(&self) -> Result<(), Error> {
        refuse_null("name", &self.name)?;
        refuse_null("allowed_origins", &self.allowed_origins)?;
        refuse_null("access_token_ttl_s", &self.access_token_ttl_s)?;
        for (name, value) in FIELDS.iter().zip(self.sign_in_fields()) {
            refuse_null(name, value)?;
        }
        if let Some(Some(n)) = &self.name {
            validate_text("name", n, 200)?;
        }
        if let Some(Some(origins)) = &self.allowed_origins {
            if origins.len() > 100 {
                return Err(Error::invalid_request(
                    "`allowed_origins` may list at most 100 origins",
                ));
            }
            origins.iter().try_for_each(|o| validate_origin(o))?;
        }
        if let Some(Some(ttl)) = self.access_token_ttl_s {
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

    /// The sign-in settings, in the order of [`FIELDS`].
    fn sign_in_fields(&self) -> [&Option<Option<Value>>; FIELDS.len()] {
        [
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
        ]
    }

    /// The sign-in settings the patch names, by their names.
    fn sign_in_changes(&self) -> Map<String, Value> {
        FIELDS
            .iter()
            .zip(self.sign_in_fields())
            .filter_map(|(name, v)| v.clone().flatten().map(|v| (name.to_string(), v)))
            .collect()
    }

    /// Writes what the patch names onto `project` (absent fields keep their value; `null` clears);
    /// sign-in settings that do not fit together (or out of bounds) are a 400 naming the field.
    pub fn apply(self, project: &mut Project) -> Result<(), Error> {
        let changes = self.sign_in_changes();
        if !changes.is_empty() {
            project.sign_in = project.sign_in.with_changes(&changes)?;
        }
        if let Some(n) = self.name.flatten() {
            project.name = n;
        }
        if let Some(origins) = self.allowed_origins.flatten() {
            project.allowed_origins = origins;
        }
        if let Some(ttl) = self.access_token_ttl_s.flatten() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::parse_body;

    #[test]
    fn only_the_email_fields_may_be_null() {
        let mut nullable_not = vec!["name", "allowed_origins", "access_token_ttl_s"];
        nullable_not.extend(FIELDS);
        for field in nullable_not {
            let p: ProjectPatch = parse_body(format!(r#"{{"{field}": null}}"#).as_bytes()).unwrap();
            let e = p.validate().unwrap_err();
            assert_eq!(
                (e.status, e.extra["param"].as_str()),
                (400, Some(field)),
                "{field}"
            );
        }
        let mut project = Project::new("prj_1".into(), "demo".into(), "Demo".into(), 0);
        project.email_from = Some("Acme <a@acme.example>".into());
        let p: ProjectPatch =
            parse_body(br#"{"email_from": null, "email_subject": null, "signup": "invite_only"}"#)
                .unwrap();
        p.validate().unwrap();
        p.apply(&mut project).unwrap();
        assert_eq!((project.email_from, project.name.as_str()), (None, "Demo"));
        assert_eq!(
            project.sign_in.signup,
            crate::records::sign_in::Signup::InviteOnly
        );
    }
}
