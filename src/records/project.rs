//! A project: the owner's namespace of APIs and consumers, with its sign-in and browser settings.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::records::json_text;
use crate::records::sign_in::SignInPolicy;
use crate::time::rfc3339;

pub const DEFAULT_TOKEN_TTL_S: i64 = 900;

/// Serialized in its row's shape, which is also what the hot-path cache keeps in KV.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Project {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub created_at: i64,
    pub access_token_ttl_s: i64,
    pub email_from: Option<String>,
    pub email_subject: Option<String>,
    /// Browser origins allowed to call the project's end-user routes (`*` for any).
    #[serde(
        rename = "allowed_origins_json",
        deserialize_with = "json_text::required",
        serialize_with = "json_text::write"
    )]
    pub allowed_origins: Vec<String>,
    /// The generation of the token-signing key (derived from ENCRYPTION_KEY, never stored).
    pub signing_generation: i64,
    pub previous_key_retired_at: Option<i64>,
    /// OTP limits, sign-up policy and auth-event retention (a record cached before the column
    /// existed has the defaults, as the column's own default does).
    #[serde(
        rename = "sign_in_json",
        default,
        deserialize_with = "json_text::required",
        serialize_with = "json_text::write"
    )]
    pub sign_in: SignInPolicy,
}

impl Project {
    pub fn new(id: String, slug: String, name: String, created_at: i64) -> Project {
        Project {
            id,
            slug,
            name,
            created_at,
            access_token_ttl_s: DEFAULT_TOKEN_TTL_S,
            email_from: None,
            email_subject: None,
            allowed_origins: Vec::new(),
            signing_generation: 1,
            previous_key_retired_at: None,
            sign_in: SignInPolicy::default(),
        }
    }

    /// Whether pages from `origin` may call the project's end-user routes.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }

    /// The owner's view.
    pub fn to_json(&self) -> Value {
        let mut view = json!({
            "id": self.id, "slug": self.slug, "name": self.name, "created_at": rfc3339(self.created_at),
            "access_token_ttl_s": self.access_token_ttl_s, "email_from": self.email_from, "email_subject": self.email_subject,
            "allowed_origins": self.allowed_origins,
        });
        if let (Some(view), Ok(Value::Object(policy))) =
            (view.as_object_mut(), serde_json::to_value(&self.sign_in))
        {
            view.extend(policy);
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_decodes_once_and_bad_json_fails_it() {
        let row = json!({"id": "prj_1", "slug": "demo", "name": "Demo", "created_at": 1, "access_token_ttl_s": 900,
            "email_from": null, "email_subject": null, "allowed_origins_json": "[\"https://a.example\"]",
            "signing_generation": 1, "previous_key_retired_at": null, "sign_in_json": "{\"signup\":\"invite_only\"}"});
        let p: Project = serde_json::from_value(row.clone()).unwrap();
        assert!(p.allows_origin("https://A.example") && !p.allows_origin("https://b.example"));
        assert_eq!(
            p.sign_in.signup,
            crate::records::sign_in::Signup::InviteOnly
        );
        assert_eq!(p.sign_in.signups_per_network_per_day, 5);
        let mut older = row.clone();
        older.as_object_mut().unwrap().remove("sign_in_json");
        let cached: Project = serde_json::from_value(older).unwrap();
        assert_eq!(cached.sign_in, SignInPolicy::default());
        let mut corrupt = row.clone();
        corrupt["sign_in_json"] = json!("{\"signup\":\"sometimes\"}");
        assert!(serde_json::from_value::<Project>(corrupt).is_err());
        let mut bad = row;
        bad["allowed_origins_json"] = json!("[\"https://a.example\"");
        assert!(serde_json::from_value::<Project>(bad).is_err());
    }
}
