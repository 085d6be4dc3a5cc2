//! The auth-state Durable Object's protocol: OTP challenges with their send throttles, and refresh
//! sessions. One object per (project, email), per (project, client IP), or per session; each
//! operation is applied synchronously, so attempts and rotations are exact under concurrency.

use serde::{Deserialize, Serialize};

use crate::auth::oauth::{redeem, Presented, Redemption};
use crate::auth::otp::Challenge;
use crate::auth::otp_limits::{Checked, EmailGuard, GuessLimits, NetworkGuard};
use crate::auth::session::{Rotation, Session, SESSION_TTL_MS};

/// Everything one auth-state object holds: an email's challenges and limits, a network's limits,
/// or a session (one of the three per object). Older stored states (one `challenge` and a
/// `throttle`) decode with those fields ignored: their pending codes simply need asking again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuardState {
    #[serde(default)]
    pub email: EmailGuard,
    #[serde(default)]
    pub network: NetworkGuard,
    #[serde(default)]
    pub session: Option<Session>,
}

impl GuardState {
    /// Nothing left to remember: the object's storage can be deleted.
    pub fn is_empty(&self) -> bool {
        self.email.is_empty() && self.network.is_empty() && self.session.is_none()
    }

    /// When everything it holds will have expired (a session at its own expiry).
    pub fn expires_at(&self) -> Option<i64> {
        [
            self.email.expires_at(),
            self.network.expires_at(),
            self.session.as_ref().map(|s| s.expires_at),
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// Drops what has expired.
    pub fn prune(&mut self, now: i64) {
        self.email.prune(now);
        self.network.prune(now);
        if self.session.as_ref().is_some_and(|s| now >= s.expires_at) {
            self.session = None;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Externally tagged (`{"send": {...}}`): decoded in one pass, with no buffering of the whole value.
#[serde(rename_all = "snake_case")]
pub enum GuardRequest {
    /// Sends a code for a new challenge of this email, if its send limits allow.
    Send {
        now: i64,
        challenge: Challenge,
    },
    /// Checks a code against one challenge of this email; the right one consumes it (single use).
    Check {
        now: i64,
        challenge_id: String,
        code_hash: String,
        network: String,
        limits: GuessLimits,
    },
    /// A code request from this network (at most `max_per_hour`).
    NetworkStart {
        now: i64,
        max_per_hour: usize,
    },
    /// Whether this network may try a code (fewer than `max_failures_per_hour` failed verifies); the
    /// try counts as a failure until `NetworkVerified` takes it back, so racing tries cannot pass.
    NetworkMayVerify {
        now: i64,
        max_failures_per_hour: usize,
    },
    /// The try counted at `at` by `NetworkMayVerify` signed in: it is taken back.
    NetworkVerified {
        at: i64,
    },
    /// A new account from this network (at most `max_per_day`).
    NetworkSignUp {
        now: i64,
        max_per_day: usize,
    },
    /// An OAuth dynamic client registration from this network (at most `max_per_hour`).
    NetworkRegister {
        now: i64,
        max_per_hour: usize,
    },
    /// Drops what has expired (the alarm).
    Prune {
        now: i64,
    },
    CreateSession {
        session: Box<Session>,
    },
    /// Rotates the refresh secret of a session of `project` (a session of another project is refused
    /// untouched: presenting a token at the wrong project must not advance or revoke it).
    Rotate {
        now: i64,
        project: String,
        secret: String,
        new_hash: String,
        /// The DPoP key that signed the request's proof, if any: a bound session needs its own.
        #[serde(default)]
        jkt: Option<String>,
        /// The OAuth client presenting the token (`None` at the first-party refresh route): an
        /// OAuth grant rotates only for its own client, a first-party session only without one.
        #[serde(default)]
        client_id: Option<String>,
        /// A narrower scope asked for with an OAuth refresh (RFC 6749 §6): refused, without
        /// rotating, unless the grant holds every scope of it.
        #[serde(default)]
        scope: Option<Vec<String>>,
        /// The request's DPoP proof (its `jti`): each proof is used once with this session.
        #[serde(default)]
        proof_jti: Option<String>,
    },
    /// Redeems the OAuth grant's authorization code (single use; a second use revokes the grant)
    /// and starts its refresh chain with `new_hash`.
    RedeemCode {
        now: i64,
        project: String,
        client_id: String,
        secret: String,
        #[serde(default)]
        redirect_uri: Option<String>,
        verifier_s256: String,
        new_hash: String,
    },
    /// Revokes an OAuth grant for its client (RFC 7009): only when the grant is the client's and,
    /// for a refresh token, the secret is one the grant issued.
    RevokeGrant {
        project: String,
        client_id: Option<String>,
        secret: Option<String>,
    },
    /// The live session whose current refresh secret is `secret` (token introspection).
    Describe {
        now: i64,
        secret: String,
    },
    Revoke,
    /// Whether the session is live (exists, not revoked, not expired): read where it is exact.
    SessionLive {
        now: i64,
        /// The DPoP proof that came with the session's access token: a proof used before with this
        /// session is refused.
        #[serde(default)]
        proof_jti: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Externally tagged (`{"sent": null}`): decoded in one pass, with no buffering of the whole value.
#[serde(rename_all = "snake_case")]
pub enum GuardReply {
    Sent,
    Allowed,
    Recorded,
    Throttled { retry_after_s: u64 },
    Verified,
    WrongCode { attempts_left: u32 },
    CodeExpired,
    Locked,
    NoChallenge,
    Created,
    Rotated { session: Session },
    Reused { session: Session },
    Refused { reason: String },
    Revoked { session: Option<Session> },
    Live { live: bool },
    Described { session: Option<Session> },
}

fn allowed(r: Result<(), u64>, yes: GuardReply) -> GuardReply {
    match r {
        Ok(()) => yes,
        Err(retry_after_s) => GuardReply::Throttled { retry_after_s },
    }
}

pub fn apply(state: &mut GuardState, request: &GuardRequest) -> GuardReply {
    match request {
        GuardRequest::Send { now, challenge } => {
            allowed(state.email.send(*now, challenge.clone()), GuardReply::Sent)
        }
        GuardRequest::Check {
            now,
            challenge_id,
            code_hash,
            network,
            limits,
        } => match state
            .email
            .check(*now, challenge_id, code_hash, network, *limits)
        {
            Checked::Verified => GuardReply::Verified,
            Checked::Wrong { attempts_left } => GuardReply::WrongCode { attempts_left },
            Checked::Expired => GuardReply::CodeExpired,
            Checked::Locked => GuardReply::Locked,
            Checked::NoChallenge => GuardReply::NoChallenge,
            Checked::Throttled { retry_after_s } => GuardReply::Throttled { retry_after_s },
        },
        GuardRequest::NetworkStart { now, max_per_hour } => allowed(
            state.network.start(*now, *max_per_hour),
            GuardReply::Allowed,
        ),
        GuardRequest::NetworkMayVerify {
            now,
            max_failures_per_hour,
        } => allowed(
            state.network.may_verify(*now, *max_failures_per_hour),
            GuardReply::Allowed,
        ),
        GuardRequest::NetworkVerified { at } => {
            state.network.verified(*at);
            GuardReply::Recorded
        }
        GuardRequest::NetworkSignUp { now, max_per_day } => allowed(
            state.network.sign_up(*now, *max_per_day),
            GuardReply::Allowed,
        ),
        GuardRequest::NetworkRegister { now, max_per_hour } => allowed(
            state.network.register(*now, *max_per_hour),
            GuardReply::Allowed,
        ),
        GuardRequest::Prune { now } => {
            state.prune(*now);
            GuardReply::Recorded
        }
        GuardRequest::CreateSession { session } => {
            state.session = Some(session.as_ref().clone());
            GuardReply::Created
        }
        GuardRequest::Rotate {
            now,
            project,
            secret,
            new_hash,
            jkt,
            client_id,
            scope,
            proof_jti,
        } => match oauth_client_mismatch(state, client_id.as_deref())
            .map(str::to_string)
            .or_else(|| scope_not_granted(state, scope.as_deref()))
        {
            Some(reason) => GuardReply::Refused { reason },
            None => rotate(
                state,
                *now,
                project,
                secret,
                new_hash,
                (jkt.as_deref(), proof_jti.as_deref()),
            ),
        },
        GuardRequest::RedeemCode {
            now,
            project,
            client_id,
            secret,
            redirect_uri,
            verifier_s256,
            new_hash,
        } => redeem_code(
            state,
            project,
            new_hash,
            &Presented {
                now: *now,
                secret,
                client_id,
                redirect_uri: redirect_uri.as_deref(),
                verifier_s256,
            },
        ),
        GuardRequest::RevokeGrant {
            project,
            client_id,
            secret,
        } => revoke_grant(state, project, client_id.as_deref(), secret.as_deref()),
        GuardRequest::Describe { now, secret } => GuardReply::Described {
            session: state
                .session
                .as_ref()
                .filter(|s| s.is_active(*now) && s.knows_current(secret))
                .cloned(),
        },
        GuardRequest::SessionLive { now, proof_jti } => match state.session.as_mut() {
            Some(s) if !s.revoked && *now < s.expires_at => match proof_jti {
                Some(jti) if !s.use_proof(*now, jti) => GuardReply::Refused {
                    reason: PROOF_REPLAYED.into(),
                },
                _ => GuardReply::Live { live: true },
            },
            _ => GuardReply::Live { live: false },
        },
        GuardRequest::Revoke => {
            if let Some(s) = state.session.as_mut() {
                s.revoke();
            }
            GuardReply::Revoked {
                session: state.session.clone(),
            }
        }
    }
}

/// Why a refresh by `client_id` may not touch this session, if it may not.
fn oauth_client_mismatch(state: &GuardState, client_id: Option<&str>) -> Option<&'static str> {
    let grant = state.session.as_ref().map(|s| s.oauth.as_ref());
    match (grant, client_id) {
        (None, _) => None,
        (Some(None), None) => None,
        (Some(None), Some(_)) => Some("this refresh token was not issued to an OAuth client"),
        (Some(Some(_)), None) => {
            Some("this refresh token belongs to an OAuth client: use its token endpoint")
        }
        (Some(Some(g)), Some(c)) if g.client_id == c => None,
        (Some(Some(_)), Some(_)) => Some("the refresh token was issued to another client"),
    }
}

/// The prefix of a refusal for a scope the grant does not hold (answered as `invalid_scope`).
pub const SCOPE_NOT_GRANTED: &str = "invalid_scope";

fn scope_not_granted(state: &GuardState, asked: Option<&[String]>) -> Option<String> {
    let asked = asked?;
    let granted = state
        .session
        .as_ref()
        .and_then(|s| s.oauth.as_ref())
        .map(|g| g.scope.split(' ').collect::<Vec<_>>())
        .unwrap_or_default();
    asked
        .iter()
        .find(|s| !granted.contains(&s.as_str()))
        .map(|s| format!("{SCOPE_NOT_GRANTED}: the grant does not hold the scope `{s}`"))
}

fn redeem_code(
    state: &mut GuardState,
    project: &str,
    new_hash: &str,
    presented: &Presented<'_>,
) -> GuardReply {
    let refused = |reason: &str| GuardReply::Refused {
        reason: reason.into(),
    };
    let Some(session) = state.session.as_mut() else {
        return refused("unknown code");
    };
    if session.project != project {
        return refused("the code belongs to another project");
    }
    if session.revoked {
        return refused("the grant was revoked");
    }
    let Some(grant) = session.oauth.as_mut() else {
        return refused("unknown code");
    };
    match redeem(grant, presented) {
        Redemption::Redeemed => {
            session.current_hash = new_hash.to_string();
            session.expires_at = presented.now.saturating_add(SESSION_TTL_MS);
            GuardReply::Rotated {
                session: session.clone(),
            }
        }
        Redemption::Reused => {
            session.revoke();
            GuardReply::Reused {
                session: session.clone(),
            }
        }
        Redemption::Refused(reason) => refused(reason),
    }
}

fn revoke_grant(
    state: &mut GuardState,
    project: &str,
    client_id: Option<&str>,
    secret: Option<&str>,
) -> GuardReply {
    let refused = GuardReply::Refused {
        reason: "not a grant of this client".into(),
    };
    let Some(session) = state.session.as_mut() else {
        return refused;
    };
    let client_ok = match (&session.oauth, client_id) {
        (_, None) => true,
        (Some(g), Some(c)) => g.client_id == c,
        (None, Some(_)) => false,
    };
    if session.project != project || !client_ok || secret.is_some_and(|s| !session.knows_secret(s))
    {
        return refused;
    }
    session.revoke();
    GuardReply::Revoked {
        session: Some(session.clone()),
    }
}

/// Why a DPoP proof was refused by the session it came with.
pub const PROOF_REPLAYED: &str =
    "this DPoP proof was already used: make a new proof for each request";

/// `proof`: the DPoP key (thumbprint) and the proof's `jti` the request came with.
fn rotate(
    state: &mut GuardState,
    now: i64,
    project: &str,
    secret: &str,
    new_hash: &str,
    (jkt, proof_jti): (Option<&str>, Option<&str>),
) -> GuardReply {
    let Some(session) = state.session.as_mut() else {
        return GuardReply::Refused {
            reason: "unknown session".into(),
        };
    };
    if session.project != project {
        return GuardReply::Refused {
            reason: "the session belongs to another project".into(),
        };
    }
    // Checked before the secret: a copied token without its key can neither rotate the session
    // nor, as a "reuse", revoke it.
    if let Some(bound) = session.jkt.as_deref() {
        if jkt.is_none_or(|presented| {
            !crate::auth::constant_time_eq(bound.as_bytes(), presented.as_bytes())
        }) {
            return GuardReply::Refused {
                reason:
                    "the refresh token is bound to a DPoP key; send a proof signed with that key"
                        .into(),
            };
        }
    }
    if proof_jti.is_some_and(|jti| !session.use_proof(now, jti)) {
        return GuardReply::Refused {
            reason: PROOF_REPLAYED.into(),
        };
    }
    match session.rotate(now, secret, new_hash.to_string()) {
        Rotation::Rotated => GuardReply::Rotated {
            session: session.clone(),
        },
        Rotation::Reused => GuardReply::Reused {
            session: session.clone(),
        },
        Rotation::Invalid => GuardReply::Refused {
            reason: "invalid refresh token".into(),
        },
        Rotation::Expired => GuardReply::Refused {
            reason: "the session has expired".into(),
        },
        Rotation::Revoked => GuardReply::Refused {
            reason: "the session was revoked".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::session::new_refresh;

    fn send(now: i64, id: &str, hash: &str) -> GuardRequest {
        GuardRequest::Send {
            now,
            challenge: Challenge::new(id.into(), hash.into(), now, "198.51.100.7".into()),
        }
    }

    fn check(now: i64, id: &str, hash: &str) -> GuardRequest {
        GuardRequest::Check {
            now,
            challenge_id: id.into(),
            code_hash: hash.into(),
            network: "198.51.100.7".into(),
            limits: GuessLimits {
                per_network_per_hour: 10,
                per_email_per_day: 30,
            },
        }
    }

    #[test]
    fn otp_flow_is_single_use_and_locks_after_five() {
        let mut s = GuardState::default();
        assert_eq!(apply(&mut s, &send(0, "c1", "h1")), GuardReply::Sent);
        assert!(matches!(
            apply(&mut s, &send(1_000, "c2", "h2")),
            GuardReply::Throttled { .. }
        ));
        assert_eq!(apply(&mut s, &check(1, "c1", "h1")), GuardReply::Verified);
        assert_eq!(
            apply(&mut s, &check(2, "c1", "h1")),
            GuardReply::NoChallenge
        );
        assert_eq!(apply(&mut s, &send(60_000, "c3", "h3")), GuardReply::Sent);
        for left in (0..5).rev() {
            assert_eq!(
                apply(&mut s, &check(60_001, "c3", "bad")),
                GuardReply::WrongCode {
                    attempts_left: left
                }
            );
        }
        assert_eq!(
            apply(&mut s, &check(60_002, "c3", "h3")),
            GuardReply::Locked
        );
        assert_eq!(apply(&mut s, &send(120_000, "c4", "h4")), GuardReply::Sent);
        assert_eq!(
            apply(&mut s, &check(120_001, "c4", "h4")),
            GuardReply::Verified
        );
        assert!(!s.is_empty());
        let until = s.expires_at().unwrap();
        apply(&mut s, &GuardRequest::Prune { now: until });
        assert!(s.is_empty(), "{s:?}");
    }

    #[test]
    fn older_stored_states_decode() {
        let old = r#"{"throttle":{"sent":[1,2]},"challenge":{"code_hash":"h","expires_at":5,"attempts_left":5},"session":null}"#;
        let s: GuardState = crate::encoding::from_json(old).unwrap();
        assert!(s.is_empty());
        assert!(crate::encoding::from_json::<GuardState>(r#"{"email":{"challenges":7}}"#).is_err());
    }

    #[test]
    fn session_rotation_and_reuse() {
        let mut n = 0u8;
        let mut rng = |b: &mut [u8]| {
            b.iter_mut().for_each(|x| {
                n = n.wrapping_add(13);
                *x = n % 200;
            })
        };
        let sid = crate::auth::session::new_session_id(b"pepper", &mut rng);
        let (t1, h1) = new_refresh(&sid, &mut rng);
        let (_t2, h2) = new_refresh(&sid, &mut rng);
        let session = Session {
            id: sid.clone(),
            project: "p".into(),
            consumer_id: "c".into(),
            email: None,
            current_hash: h1,
            previous_hashes: vec![],
            generation: 0,
            created_at: 0,
            expires_at: 1_000_000,
            revoked: false,
            jkt: None,
            oauth: None,
            proofs: Vec::new(),
        };
        let mut s = GuardState::default();
        apply(
            &mut s,
            &GuardRequest::CreateSession {
                session: Box::new(session),
            },
        );
        let secret1 = crate::auth::session::parse_refresh(&t1).unwrap().1;
        let elsewhere = GuardRequest::Rotate {
            now: 1,
            project: "other".into(),
            secret: secret1.clone(),
            new_hash: "h".into(),
            jkt: None,
            client_id: None,
            scope: None,
            proof_jti: None,
        };
        assert!(matches!(
            apply(&mut s, &elsewhere),
            GuardReply::Refused { .. }
        ));
        assert_eq!(
            s.session.as_ref().unwrap().generation,
            0,
            "a token shown at another project rotates nothing"
        );
        assert!(matches!(
            apply(
                &mut s,
                &GuardRequest::Rotate {
                    now: 1,
                    project: "p".into(),
                    secret: secret1.clone(),
                    new_hash: h2.clone(),
                    jkt: None,
                    client_id: None,
                    scope: None,
                    proof_jti: None,
                }
            ),
            GuardReply::Rotated { .. }
        ));
        assert!(matches!(
            apply(
                &mut s,
                &GuardRequest::Rotate {
                    now: 2,
                    project: "p".into(),
                    secret: secret1,
                    new_hash: "x".into(),
                    jkt: None,
                    client_id: None,
                    scope: None,
                    proof_jti: None,
                }
            ),
            GuardReply::Reused { .. }
        ));
        assert!(s.session.as_ref().unwrap().revoked);
        assert!(matches!(
            apply(&mut s, &GuardRequest::Revoke),
            GuardReply::Revoked { session: Some(_) }
        ));
        assert_eq!(
            apply(
                &mut s,
                &GuardRequest::SessionLive {
                    now: 3,
                    proof_jti: None
                }
            ),
            GuardReply::Live { live: false }
        );
        assert_eq!(
            apply(
                &mut GuardState::default(),
                &GuardRequest::SessionLive {
                    now: 3,
                    proof_jti: None
                }
            ),
            GuardReply::Live { live: false },
            "an unknown session is not live"
        );
        let mut empty = GuardState::default();
        assert!(matches!(
            apply(
                &mut empty,
                &GuardRequest::Rotate {
                    now: 0,
                    project: "p".into(),
                    secret: "s".into(),
                    new_hash: "h".into(),
                    jkt: None,
                    client_id: None,
                    scope: None,
                    proof_jti: None,
                }
            ),
            GuardReply::Refused { .. }
        ));
    }

    /// A guard holding a session bound to DPoP key `key-a`: (state, session id, refresh token).
    fn bound_session(rng: &mut impl FnMut(&mut [u8])) -> (GuardState, String, String) {
        let sid = crate::auth::session::new_session_id(b"pepper", rng);
        let (t1, h1) = new_refresh(&sid, rng);
        let mut session = Session::new(sid.clone(), "p".into(), "c".into(), None, h1, 0);
        session.jkt = Some("key-a".into());
        let mut s = GuardState::default();
        apply(
            &mut s,
            &GuardRequest::CreateSession {
                session: Box::new(session),
            },
        );
        (s, sid, t1)
    }

    #[test]
    fn a_dpop_proof_is_used_once_with_its_session() {
        let mut rng = crate::ids::test_rng(5);
        let (mut s, sid, t1) = bound_session(&mut rng);
        let rotate = |token: &str, hash: &str, jti: &str| GuardRequest::Rotate {
            now: 1,
            project: "p".into(),
            secret: crate::auth::session::parse_refresh(token).unwrap().1,
            new_hash: hash.into(),
            jkt: Some("key-a".into()),
            client_id: None,
            scope: None,
            proof_jti: Some(jti.into()),
        };
        assert!(matches!(
            apply(&mut s, &rotate(&t1, "h2", "jti-1")),
            GuardReply::Rotated { .. }
        ));
        // The next refresh token with the same proof (a captured request, replayed): refused,
        // and nothing rotates or is revoked.
        let (t2, h2) = new_refresh(&sid, &mut rng);
        s.session.as_mut().unwrap().current_hash = h2;
        let generation = s.session.as_ref().unwrap().generation;
        assert_eq!(
            apply(&mut s, &rotate(&t2, "h3", "jti-1")),
            GuardReply::Refused {
                reason: PROOF_REPLAYED.into()
            }
        );
        let after = s.session.as_ref().unwrap();
        assert_eq!((after.generation, after.revoked), (generation, false));
        assert!(matches!(
            apply(&mut s, &rotate(&t2, "h3", "jti-2")),
            GuardReply::Rotated { .. }
        ));
        // `/me` and logout: the same, through the liveness check.
        let live = |jti: &str| GuardRequest::SessionLive {
            now: 2,
            proof_jti: Some(jti.into()),
        };
        assert_eq!(
            apply(&mut s, &live("jti-3")),
            GuardReply::Live { live: true }
        );
        assert!(matches!(
            apply(&mut s, &live("jti-3")),
            GuardReply::Refused { .. }
        ));
        assert!(matches!(
            apply(&mut s, &live("jti-1")),
            GuardReply::Refused { .. }
        ));
        // Forgotten once no `iat` window could still accept it.
        let later = GuardRequest::SessionLive {
            now: 2 + crate::auth::dpop::PROOF_MEMORY_MS,
            proof_jti: Some("jti-3".into()),
        };
        assert_eq!(apply(&mut s, &later), GuardReply::Live { live: true });
    }

    #[test]
    fn a_bound_session_rotates_only_with_its_key() {
        let mut rng = crate::ids::test_rng(4);
        let (mut s, _, t1) = bound_session(&mut rng);
        let secret = crate::auth::session::parse_refresh(&t1).unwrap().1;
        let rotate = |jkt: Option<&str>| GuardRequest::Rotate {
            now: 1,
            project: "p".into(),
            secret: secret.clone(),
            new_hash: "h2".into(),
            jkt: jkt.map(str::to_string),
            client_id: None,
            scope: None,
            proof_jti: None,
        };
        for wrong in [None, Some("key-b")] {
            assert!(matches!(
                apply(&mut s, &rotate(wrong)),
                GuardReply::Refused { .. }
            ));
        }
        let after = s.session.clone().unwrap();
        assert_eq!(
            (after.generation, after.revoked),
            (0, false),
            "nothing moved, nothing revoked"
        );
        assert!(matches!(
            apply(&mut s, &rotate(Some("key-a"))),
            GuardReply::Rotated { .. }
        ));
    }

    /// An OAuth grant's session: a code waiting for `cli_1`.
    fn grant_state(sid: &str, code_secret: &str, challenge: &str) -> GuardState {
        use crate::auth::oauth::{hash_secret, GrantInfo, PendingCode};
        let mut session = Session::new(
            sid.into(),
            "p".into(),
            "c".into(),
            None,
            "unknown".into(),
            0,
        );
        session.expires_at = 60_000;
        session.oauth = Some(GrantInfo {
            client_id: "cli_1".into(),
            scope: "chat".into(),
            resource: None,
            code: Some(PendingCode {
                hash: hash_secret(code_secret),
                expires_at: 60_000,
                redirect_uri: "https://app/cb".into(),
                code_challenge: challenge.into(),
                redirect_uri_omitted: false,
                used: false,
            }),
        });
        GuardState {
            session: Some(session),
            ..GuardState::default()
        }
    }

    fn redeem_op(client: &str, secret: &str, new_hash: &str) -> GuardRequest {
        GuardRequest::RedeemCode {
            now: 1_000,
            project: "p".into(),
            client_id: client.into(),
            secret: secret.into(),
            redirect_uri: Some("https://app/cb".into()),
            verifier_s256: "chal".into(),
            new_hash: new_hash.into(),
        }
    }

    #[test]
    fn a_code_starts_the_refresh_chain_once_and_a_second_use_revokes_the_grant() {
        let mut rng = crate::ids::test_rng(4);
        let sid = crate::auth::session::new_session_id(b"pepper", &mut rng);
        let mut s = grant_state(&sid, "code-secret", "chal");
        let (token, hash) = new_refresh(&sid, &mut rng);
        let GuardReply::Rotated { session } =
            apply(&mut s, &redeem_op("cli_1", "code-secret", &hash))
        else {
            panic!("redeemed");
        };
        assert_eq!(session.current_hash, hash);
        assert_eq!(
            session.expires_at,
            1_000 + crate::auth::session::SESSION_TTL_MS
        );
        // The refresh token rotates for its own client only.
        let secret = crate::auth::session::parse_refresh(&token).unwrap().1;
        let rotate = |client: Option<&str>| GuardRequest::Rotate {
            now: 2_000,
            project: "p".into(),
            secret: secret.clone(),
            new_hash: "next".into(),
            jkt: None,
            client_id: client.map(str::to_string),
            scope: None,
            proof_jti: None,
        };
        for other in [Some("cli_2"), None] {
            assert!(
                matches!(apply(&mut s, &rotate(other)), GuardReply::Refused { .. }),
                "{other:?}"
            );
        }
        assert!(matches!(
            apply(&mut s, &rotate(Some("cli_1"))),
            GuardReply::Rotated { .. }
        ));
        // The code again: the grant is revoked.
        assert!(matches!(
            apply(&mut s, &redeem_op("cli_1", "code-secret", "h")),
            GuardReply::Reused { .. }
        ));
        assert!(s.session.as_ref().unwrap().revoked);
        assert_eq!(
            apply(
                &mut s,
                &GuardRequest::SessionLive {
                    now: 3_000,
                    proof_jti: None
                }
            ),
            GuardReply::Live { live: false }
        );
    }

    #[test]
    fn a_grant_is_revoked_only_for_its_client_and_with_a_secret_it_issued() {
        let mut rng = crate::ids::test_rng(5);
        let sid = crate::auth::session::new_session_id(b"pepper", &mut rng);
        let mut s = grant_state(&sid, "code-secret", "chal");
        let (token, hash) = new_refresh(&sid, &mut rng);
        apply(&mut s, &redeem_op("cli_1", "code-secret", &hash));
        let secret = crate::auth::session::parse_refresh(&token).unwrap().1;
        let revoke = |client: &str, secret: Option<&str>| GuardRequest::RevokeGrant {
            project: "p".into(),
            client_id: Some(client.into()),
            secret: secret.map(str::to_string),
        };
        assert!(matches!(
            apply(&mut s, &revoke("cli_2", Some(&secret))),
            GuardReply::Refused { .. }
        ));
        assert!(matches!(
            apply(&mut s, &revoke("cli_1", Some("made-up"))),
            GuardReply::Refused { .. }
        ));
        assert!(!s.session.as_ref().unwrap().revoked);
        assert_eq!(
            apply(
                &mut s,
                &GuardRequest::Describe {
                    now: 2_000,
                    secret: secret.clone()
                }
            ),
            GuardReply::Described {
                session: s.session.clone()
            }
        );
        assert!(matches!(
            apply(&mut s, &revoke("cli_1", Some(&secret))),
            GuardReply::Revoked { session: Some(_) }
        ));
        assert_eq!(
            apply(&mut s, &GuardRequest::Describe { now: 2_000, secret }),
            GuardReply::Described { session: None }
        );
    }
}
