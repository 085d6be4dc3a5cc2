//! Admin input for OAuth clients: registering one (name, redirect URIs, type, scopes) and changing it.

use serde::Deserialize;

use crate::auth::oauth::{
    validate_redirect_uri, validate_scope_token, ClientType, MAX_REDIRECT_URIS,
};
use crate::error::Error;
use crate::input::validate::{nullable, refuse_null, validate_text};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    pub name: String,
    pub redirect_uris: Vec<String>,
    #[serde(rename = "type")]
    pub client_type: String,
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientPatch {
    #[serde(default, deserialize_with = "nullable")]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub redirect_uris: Option<Option<Vec<String>>>,
    /// `null` lets the client ask for any scope.
    #[serde(default, deserialize_with = "nullable")]
    pub scopes: Option<Option<Vec<String>>>,
}

fn bad(param: &str, detail: impl Into<String>) -> Error {
    Error::invalid_request(detail).with_field("param", param)
}

/// Redirect URIs: at most 20, each https or loopback http, no duplicates; a public client needs one.
pub fn validate_redirect_uris(uris: &[String], client_type: ClientType) -> Result<(), Error> {
    if uris.len() > MAX_REDIRECT_URIS {
        return Err(bad(
            "redirect_uris",
            format!("A client has at most {MAX_REDIRECT_URIS} redirect URIs."),
        ));
    }
    if uris.is_empty() && client_type == ClientType::Public {
        return Err(bad(
            "redirect_uris",
            "A public client needs at least one redirect URI.",
        ));
    }
    for (i, uri) in uris.iter().enumerate() {
        validate_redirect_uri(uri).map_err(|m| bad("redirect_uris", m))?;
        if uris[..i].contains(uri) {
            return Err(bad("redirect_uris", format!("`{uri}` is listed twice.")));
        }
    }
    Ok(())
}

fn validate_scopes(scopes: &[String]) -> Result<(), Error> {
    if scopes.len() > 50 {
        return Err(bad("scopes", "A client lists at most 50 scopes."));
    }
    scopes
        .iter()
        .try_for_each(|s| validate_scope_token(s).map_err(|m| bad("scopes", m)))
}

impl NewClient {
    pub fn validate(&self) -> Result<ClientType, Error> {
        validate_text("name", &self.name, 200)?;
        let client_type = ClientType::parse(&self.client_type)
            .ok_or_else(|| bad("type", "`type` is `public` or `confidential`."))?;
        validate_redirect_uris(&self.redirect_uris, client_type)?;
        if let Some(s) = &self.scopes {
            validate_scopes(s)?;
        }
        Ok(client_type)
    }
}

impl ClientPatch {
    pub fn validate(&self, client_type: ClientType) -> Result<(), Error> {
        refuse_null("name", &self.name)?;
        refuse_null("redirect_uris", &self.redirect_uris)?;
        if let Some(Some(n)) = &self.name {
            validate_text("name", n, 200)?;
        }
        if let Some(Some(uris)) = &self.redirect_uris {
            validate_redirect_uris(uris, client_type)?;
        }
        if let Some(Some(s)) = &self.scopes {
            validate_scopes(s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(json: &str) -> Result<ClientType, Error> {
        crate::encoding::from_json::<NewClient>(json)
            .map_err(|e| Error::invalid_request(e.to_string()))?
            .validate()
    }

    #[test]
    fn clients_are_checked_with_the_field_named() {
        assert_eq!(
            new(r#"{"name":"App","redirect_uris":["https://app.example/cb"],"type":"public"}"#)
                .unwrap(),
            ClientType::Public
        );
        assert_eq!(
            new(r#"{"name":"Srv","redirect_uris":[],"type":"confidential","scopes":["chat"]}"#)
                .unwrap(),
            ClientType::Confidential
        );
        for (body, param) in [
            (
                r#"{"name":"App","redirect_uris":[],"type":"public"}"#,
                "redirect_uris",
            ),
            (
                r#"{"name":"App","redirect_uris":["http://app.example/cb"],"type":"public"}"#,
                "redirect_uris",
            ),
            (
                r#"{"name":"App","redirect_uris":["https://a/cb","https://a/cb"],"type":"public"}"#,
                "redirect_uris",
            ),
            (
                r#"{"name":"App","redirect_uris":["https://a/cb"],"type":"trusted"}"#,
                "type",
            ),
            (
                r#"{"name":"","redirect_uris":["https://a/cb"],"type":"public"}"#,
                "name",
            ),
            (
                r#"{"name":"App","redirect_uris":["https://a/cb"],"type":"public","scopes":["a b"]}"#,
                "scopes",
            ),
        ] {
            let e = new(body).unwrap_err();
            assert_eq!(
                e.extra.get("param").and_then(|p| p.as_str()),
                Some(param),
                "{body}"
            );
        }
        assert!(new(
            r#"{"name":"App","redirect_uris":["https://a/cb"],"type":"public","extra":1}"#
        )
        .is_err());
    }

    #[test]
    fn a_patch_may_clear_scopes_but_nothing_else() {
        let patch = |json: &str| {
            crate::encoding::from_json::<ClientPatch>(json)
                .unwrap()
                .validate(ClientType::Confidential)
        };
        for field in ["name", "redirect_uris"] {
            let e = patch(&format!(r#"{{"{field}": null}}"#)).unwrap_err();
            assert_eq!(
                (e.status, e.extra["param"].as_str()),
                (400, Some(field)),
                "{field}"
            );
        }
        patch(r#"{"scopes": null}"#).unwrap();
        let cleared: ClientPatch = crate::encoding::from_json(r#"{"scopes": null}"#).unwrap();
        assert_eq!(cleared.scopes, Some(None));
    }
}
