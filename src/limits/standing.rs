//! A consumer's standing, as its counter knows it: disabled or not, its revoked keys and sessions,
//! the plan it is subscribed to. Admin writes change it in the counter before they answer, so every
//! admission (one call to the counter) sees them at once; here is what a request is checked against
//! before the windows are.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Problem};
use crate::limits::counter::Refusal;
use crate::limits::plan::Plan;

/// How long a revoked session is remembered after it could no longer have been used anyway.
pub const SESSION_MEMORY_MS: i64 = 32 * 86_400_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// The facts were loaded from D1 (the source of truth) once; changes since are applied here.
    #[serde(default)]
    pub known: bool,
    #[serde(default)]
    pub disabled: bool,
    /// Revoked consumer keys and JWT credentials (their tokens die with them).
    #[serde(default)]
    pub revoked_keys: Vec<String>,
    /// Revoked sign-in sessions, with when they may be forgotten.
    #[serde(default)]
    pub revoked_sessions: Vec<(String, i64)>,
    /// The plan the consumer is subscribed to; `None` is the API's default plan.
    #[serde(default)]
    pub plan_id: Option<String>,
    /// DPoP proofs (their `jti`) seen here, with when they may be forgotten (past their `iat` window).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proofs: Vec<(String, i64)>,
}

/// Proofs remembered at most (the oldest is forgotten first).
const MAX_PROOFS: usize = 1024;

/// What D1 says about the consumer, for a counter that has not loaded it yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    pub disabled: bool,
    pub revoked_keys: Vec<String>,
    pub plan_id: Option<String>,
}

/// An admin write's change to the standing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Externally tagged (`{"admit": {...}}`): decoded in one pass, with no buffering of the whole value.
#[serde(rename_all = "snake_case")]
pub enum Change {
    Disabled { disabled: bool },
    RevokeKey { key_id: String },
    RevokeSession { session_id: String, until: i64 },
    Subscribe { plan_id: Option<String> },
}

/// Who a request says it is, beyond the consumer: the key (or credential) and the session it used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presented {
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    /// The DPoP proof's `jti`, for a sender-constrained access token: each proof is used once.
    #[serde(default)]
    pub dpop_jti: Option<String>,
    /// The mTLS credential of a client certificate that came besides the key (revoked like a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_id: Option<String>,
}

/// Why the counter refused a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Externally tagged (`{"admit": {...}}`): decoded in one pass, with no buffering of the whole value.
#[serde(rename_all = "snake_case")]
pub enum Denial {
    Disabled,
    KeyRevoked,
    SessionRevoked,
    ProofReplayed,
    ModelNotAllowed { plan: String, allowed: Vec<String> },
    ModelNotPriced { plan: String },
    Limit { plan: String, refusal: Refusal },
}

impl Denial {
    /// The problem a denied request is answered with.
    pub fn to_error(&self, model: &str) -> Error {
        match self {
            Denial::Disabled => Error::consumer_disabled(),
            Denial::KeyRevoked => Error::invalid_credential(
                "This consumer key (or the key this token was issued for) has been revoked.",
            ),
            Denial::ProofReplayed => Error::invalid_dpop(
                "This DPoP proof was already used: make a new proof for each request.",
            ),
            Denial::SessionRevoked => Error::new(
                Problem::SessionRevoked,
                "This session was signed out or revoked: sign in again.",
            )
            .with_header("WWW-Authenticate", "Bearer error=\"invalid_token\""),
            Denial::ModelNotAllowed { plan, allowed } => Error::new(
                Problem::ModelNotAllowed,
                format!("Plan `{plan}` allows: {}.", allowed.join(", ")),
            )
            .with_field("model", model)
            .with_field("allowed", allowed.clone())
            .with_field("plan", plan.clone()),
            Denial::ModelNotPriced { plan } => Error::new(
                Problem::ModelNotPriced,
                format!("Plan `{plan}` limits spend, and this API has no price for `{model}`."),
            )
            .with_field("model", model)
            .with_field("plan", plan.clone()),
            Denial::Limit { plan, refusal } => refusal.to_error(plan),
        }
    }
}

/// The plan of a consumer with no plan of the API (an API without plans is unlimited).
fn unlimited() -> Plan {
    Plan {
        id: String::new(),
        name: "default".into(),
        limits: Default::default(),
        models: None,
        is_default: true,
    }
}

impl Standing {
    pub fn learn(&mut self, facts: Facts) {
        if self.known {
            return;
        }
        self.known = true;
        self.disabled = facts.disabled;
        for k in facts.revoked_keys {
            if !self.revoked_keys.contains(&k) {
                self.revoked_keys.push(k);
            }
        }
        // A subscription changed since the facts were read has already been applied here.
        if self.plan_id.is_none() {
            self.plan_id = facts.plan_id;
        }
    }

    pub fn apply(&mut self, now: i64, change: &Change) {
        self.revoked_sessions.retain(|(_, until)| *until > now);
        match change {
            Change::Disabled { disabled } => self.disabled = *disabled,
            Change::RevokeKey { key_id } => {
                if !self.revoked_keys.contains(key_id) {
                    self.revoked_keys.push(key_id.clone());
                }
            }
            Change::RevokeSession { session_id, until } => {
                if !self.revoked_sessions.iter().any(|(s, _)| s == session_id) {
                    self.revoked_sessions.push((session_id.clone(), *until));
                }
            }
            Change::Subscribe { plan_id } => self.plan_id = plan_id.clone(),
        }
    }

    /// Whether the consumer, and the key and session it came with, may call at all.
    pub fn check(&self, who: &Presented) -> Result<(), Denial> {
        if [&who.key_id, &who.certificate_id]
            .into_iter()
            .flatten()
            .any(|k| self.revoked_keys.contains(k))
        {
            return Err(Denial::KeyRevoked);
        }
        if who
            .session_id
            .as_ref()
            .is_some_and(|s| self.revoked_sessions.iter().any(|(r, _)| r == s))
        {
            return Err(Denial::SessionRevoked);
        }
        if self.disabled {
            return Err(Denial::Disabled);
        }
        Ok(())
    }

    /// Remembers the request's DPoP proof; one seen before (a replay) is refused.
    pub fn use_proof(&mut self, now: i64, who: &Presented) -> Result<(), Denial> {
        let jti = who.dpop_jti.as_deref();
        match crate::auth::dpop::remember_proof(&mut self.proofs, now, jti, MAX_PROOFS) {
            true => Ok(()),
            false => Err(Denial::ProofReplayed),
        }
    }

    /// The plan that applies: the subscribed one if the API still has it, else the API's default.
    pub fn plan(&self, plans: &[Plan]) -> Plan {
        let subscribed = self
            .plan_id
            .as_ref()
            .and_then(|id| plans.iter().find(|p| &p.id == id));
        subscribed
            .or_else(|| plans.iter().find(|p| p.is_default))
            .cloned()
            .unwrap_or_else(unlimited)
    }
}

/// The plan's checks of the model before any window: its model list, and a price when it limits
/// spend.
pub fn check_model(plan: &Plan, model: &str, priced: bool) -> Result<(), Denial> {
    if let Some(models) = &plan.models {
        if !models.iter().any(|m| m == model) {
            return Err(Denial::ModelNotAllowed {
                plan: plan.name.clone(),
                allowed: models.clone(),
            });
        }
    }
    if plan.limits.limits_spend() && !priced {
        return Err(Denial::ModelNotPriced {
            plan: plan.name.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::dpop::PROOF_MEMORY_MS;
    use crate::limits::plan::Limits;

    fn plan(id: &str, default: bool) -> Plan {
        Plan {
            id: id.into(),
            name: id.into(),
            limits: Limits::default(),
            models: None,
            is_default: default,
        }
    }

    #[test]
    fn revocations_and_disabling_are_checked_in_order() {
        let mut s = Standing::default();
        let key = Presented {
            key_id: Some("key_1".into()),
            session_id: None,
            dpop_jti: None,
            certificate_id: None,
        };
        assert!(s.check(&key).is_ok());
        s.apply(
            0,
            &Change::RevokeKey {
                key_id: "key_1".into(),
            },
        );
        assert_eq!(s.check(&key), Err(Denial::KeyRevoked));
        let session = Presented {
            key_id: None,
            session_id: Some("ses_1".into()),
            dpop_jti: None,
            certificate_id: None,
        };
        s.apply(
            0,
            &Change::RevokeSession {
                session_id: "ses_1".into(),
                until: 100,
            },
        );
        assert_eq!(s.check(&session), Err(Denial::SessionRevoked));
        s.apply(0, &Change::Disabled { disabled: true });
        assert_eq!(s.check(&Presented::default()), Err(Denial::Disabled));
        s.apply(101, &Change::Disabled { disabled: false });
        assert!(
            s.check(&session).is_ok(),
            "a revoked session is forgotten once it is over"
        );
    }

    #[test]
    fn the_subscribed_plan_applies_while_the_api_has_it() {
        let plans = vec![plan("free", true), plan("pro", false)];
        let mut s = Standing::default();
        assert_eq!(s.plan(&plans).id, "free");
        s.apply(
            0,
            &Change::Subscribe {
                plan_id: Some("pro".into()),
            },
        );
        assert_eq!(s.plan(&plans).id, "pro");
        assert_eq!(
            s.plan(&plans[..1]).id,
            "free",
            "a plan gone falls back to the default"
        );
        assert_eq!(s.plan(&[]).name, "default", "no plans: unlimited");
    }

    #[test]
    fn facts_load_once_and_never_undo_later_changes() {
        let mut s = Standing::default();
        s.apply(
            0,
            &Change::Subscribe {
                plan_id: Some("pro".into()),
            },
        );
        s.learn(Facts {
            disabled: true,
            revoked_keys: vec!["key_9".into()],
            plan_id: Some("old".into()),
        });
        assert!(s.known && s.disabled);
        assert_eq!(s.plan_id.as_deref(), Some("pro"));
        s.learn(Facts::default());
        assert!(s.disabled, "learned once");
    }

    #[test]
    fn plans_check_models_and_prices() {
        let mut p = plan("p", true);
        assert!(check_model(&p, "m", false).is_ok());
        p.models = Some(vec!["a".into()]);
        let e = check_model(&p, "m", true).unwrap_err().to_error("m");
        assert_eq!((e.status, e.kind()), (403, "model-not-allowed"));
        p.models = None;
        p.limits.spend_per_day_micro = Some(1);
        assert_eq!(
            check_model(&p, "m", false)
                .unwrap_err()
                .to_error("m")
                .kind(),
            "model-not-priced"
        );
        assert!(check_model(&p, "m", true).is_ok());
    }

    #[test]
    fn stored_standing_format_is_unchanged() {
        let s = Standing {
            known: true,
            disabled: false,
            revoked_keys: vec!["k".into()],
            revoked_sessions: vec![("s".into(), 5)],
            plan_id: Some("p".into()),
            proofs: Vec::new(),
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"known":true,"disabled":false,"revoked_keys":["k"],"revoked_sessions":[["s",5]],"plan_id":"p"}"#
        );
        assert_eq!(
            crate::encoding::from_json::<Standing>("{}").unwrap(),
            Standing::default()
        );
    }

    #[test]
    fn a_dpop_proof_is_used_once() {
        let mut s = Standing::default();
        let with = |jti: &str| Presented {
            key_id: None,
            session_id: Some("ses_1".into()),
            dpop_jti: Some(jti.into()),
            certificate_id: None,
        };
        assert_eq!(s.use_proof(1_000, &with("a")), Ok(()));
        assert_eq!(s.use_proof(1_001, &with("a")), Err(Denial::ProofReplayed));
        assert_eq!(s.use_proof(1_002, &with("b")), Ok(()));
        let unbound = Presented::default();
        assert_eq!(s.use_proof(1_003, &unbound), Ok(()));
        // Past the window a proof's iat would be refused anyway, and it is forgotten.
        assert_eq!(s.use_proof(1_002 + PROOF_MEMORY_MS, &with("c")), Ok(()));
        assert_eq!(s.proofs.len(), 1);
        for i in 0..(MAX_PROOFS + 10) {
            s.use_proof(2_000_000, &with(&format!("j{i}"))).unwrap();
        }
        assert_eq!(s.proofs.len(), MAX_PROOFS, "bounded");
    }

    #[test]
    fn a_revoked_certificate_credential_refuses_like_a_revoked_key() {
        let mut standing = Standing::default();
        standing.apply(
            0,
            &Change::RevokeKey {
                key_id: "mtc_1".into(),
            },
        );
        let with_cert = Presented {
            key_id: Some("key_1".into()),
            certificate_id: Some("mtc_1".into()),
            ..Presented::default()
        };
        assert_eq!(standing.check(&with_cert), Err(Denial::KeyRevoked));
        let without = Presented {
            certificate_id: None,
            ..with_cert
        };
        assert_eq!(standing.check(&without), Ok(()));
    }
}
