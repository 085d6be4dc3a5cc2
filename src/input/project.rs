//! Admin input for projects: creating one, and changing its settings.

use serde::Deserialize;

use crate::error::Error;
use crate::input::validate::{nullable, validate_origin, validate_slug, validate_text};
use crate::records::Project;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    pub slug: String,
    pub name: String,
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

    /// Writes what the patch names onto `project` (absent fields keep their value; `null` clears).
    pub fn apply(self, project: &mut Project) {
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
    }
}
