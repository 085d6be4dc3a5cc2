//! An API's auth mode: how its end users prove who they are (consumer keys work in every mode).

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Stored under its canonical name; `aerostack` is accepted as input for `managed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthMode {
    #[serde(rename = "managed")]
    Managed,
    #[serde(rename = "consumer-key-only")]
    ConsumerKeyOnly,
    #[serde(rename = "byo-jwt")]
    ByoJwt,
}

impl AuthMode {
    /// Accepts the documented names; `aerostack` is the name users know for `managed`.
    pub fn parse(s: &str) -> Result<AuthMode, Error> {
        match s {
            "managed" | "aerostack" => Ok(AuthMode::Managed),
            "consumer-key-only" => Ok(AuthMode::ConsumerKeyOnly),
            "byo-jwt" => Ok(AuthMode::ByoJwt),
            other => Err(Error::invalid_request(format!(
                "auth_mode `{other}` is not one of managed, consumer-key-only, byo-jwt"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Managed => "managed",
            AuthMode::ConsumerKeyOnly => "consumer-key-only",
            AuthMode::ByoJwt => "byo-jwt",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_modes_accept_documented_names() {
        assert_eq!(AuthMode::parse("aerostack").unwrap(), AuthMode::Managed);
        assert_eq!(AuthMode::parse("byo-jwt").unwrap().as_str(), "byo-jwt");
        assert_eq!(AuthMode::parse("password").unwrap_err().status, 400);
    }

    #[test]
    fn stored_names_are_canonical_and_strict() {
        assert_eq!(
            serde_json::to_string(&AuthMode::ConsumerKeyOnly).unwrap(),
            "\"consumer-key-only\""
        );
        assert_eq!(
            crate::encoding::from_json::<AuthMode>("\"managed\"").unwrap(),
            AuthMode::Managed
        );
        assert!(
            crate::encoding::from_json::<AuthMode>("\"aerostack\"").is_err(),
            "stored data is canonical"
        );
        assert!(crate::encoding::from_json::<AuthMode>("\"password\"").is_err());
    }
}
