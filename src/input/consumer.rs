//! Admin input for consumers and their keys.

use serde::Deserialize;

use crate::error::Error;
use crate::input::validate::{nullable, refuse_null, validate_text};
use crate::records::{Consumer, ConsumerStatus};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewConsumer {
    pub name: String,
    pub description: Option<String>,
}

/// A description may run over lines (`\n`, `\r\n`) and hold tabs, but no other control character.
fn validate_description(d: &str) -> Result<(), Error> {
    let why = if d.chars().count() > 2000 {
        "`description` may be at most 2000 characters"
    } else if d
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        "`description` may not hold control characters other than line breaks and tabs"
    } else {
        return Ok(());
    };
    Err(Error::invalid_request(why).with_field("param", "description"))
}

impl NewConsumer {
    pub fn validate(&self) -> Result<(), Error> {
        validate_text("name", &self.name, 200)?;
        self.description
            .as_deref()
            .map_or(Ok(()), validate_description)
    }
}

/// `PATCH .../consumers/{id}`: `status` is `enabled` or `disabled`; only `description` may be `null`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerPatch {
    #[serde(default, deserialize_with = "nullable")]
    pub status: Option<Option<ConsumerStatus>>,
    #[serde(default, deserialize_with = "nullable")]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub description: Option<Option<String>>,
}

impl ConsumerPatch {
    pub fn validate(&self) -> Result<(), Error> {
        refuse_null("status", &self.status)?;
        refuse_null("name", &self.name)?;
        if let Some(Some(n)) = &self.name {
            validate_text("name", n, 200)?;
        }
        if let Some(Some(d)) = &self.description {
            validate_description(d)?;
        }
        Ok(())
    }

    pub fn apply(self, consumer: &mut Consumer) {
        if let Some(s) = self.status.flatten() {
            consumer.status = s;
        }
        if let Some(n) = self.name.flatten() {
            consumer.name = n;
        }
        if let Some(d) = self.description {
            consumer.description = d;
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    /// The owner's own secret (a key migrated from another system); generated when absent.
    pub secret: Option<String>,
}

impl NewKey {
    pub fn validate(&self) -> Result<(), Error> {
        validate_text("name", &self.name, 200)?;
        if let Some(secret) = &self.secret {
            crate::auth::key::validate_custom(secret).map_err(|why| {
                Error::invalid_request(format!("`secret`: {why}")).with_field("param", "secret")
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::parse_body;

    #[test]
    fn only_the_description_may_be_null() {
        for field in ["status", "name"] {
            let p: ConsumerPatch =
                parse_body(format!(r#"{{"{field}": null}}"#).as_bytes()).unwrap();
            let e = p.validate().unwrap_err();
            assert_eq!((e.status, e.extra["param"].as_str()), (400, Some(field)));
        }
        let cleared: ConsumerPatch = parse_body(br#"{"description": null}"#).unwrap();
        cleared.validate().unwrap();
        let mut consumer = Consumer {
            id: "con_1".into(),
            project_id: "prj_1".into(),
            name: "Acme".into(),
            description: Some("d".into()),
            kind: crate::records::ConsumerKind::Key,
            status: ConsumerStatus::Enabled,
            created_at: 0,
            email: None,
        };
        cleared.apply(&mut consumer);
        assert_eq!(
            (
                consumer.name.as_str(),
                consumer.description,
                consumer.status
            ),
            ("Acme", None, ConsumerStatus::Enabled)
        );
    }

    #[test]
    fn a_status_is_one_of_two() {
        let p: ConsumerPatch = parse_body(br#"{"status": "disabled"}"#).unwrap();
        assert_eq!(p.status, Some(Some(ConsumerStatus::Disabled)));
        assert_eq!(
            parse_body::<ConsumerPatch>(br#"{"status": "paused"}"#)
                .unwrap_err()
                .status,
            400
        );
        for bad in [
            r#""a\u0000b""#,
            r#""bell\u0007""#,
            r#""del\u007f""#,
            r#""esc\u001b[31m""#,
        ] {
            let p: ConsumerPatch =
                parse_body(format!(r#"{{"description": {bad}}}"#).as_bytes()).unwrap();
            assert_eq!(
                p.validate().unwrap_err().extra["param"],
                "description",
                "{bad}"
            );
        }
        let lines: ConsumerPatch =
            parse_body(br#"{"description": "two\nlines\r\nand\ta tab"}"#).unwrap();
        lines.validate().unwrap();
        let long = format!(r#"{{"description": "{}"}}"#, "d".repeat(2001));
        assert!(parse_body::<ConsumerPatch>(long.as_bytes())
            .unwrap()
            .validate()
            .is_err());
    }
}
