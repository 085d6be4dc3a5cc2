//! The auth-state Durable Object's protocol: OTP challenges with their send throttles, and refresh
//! sessions. One object per (project, email), per (project, client IP), or per session; each
//! operation is applied synchronously, so attempts and rotations are exact under concurrency.

use serde::{Deserialize, Serialize};

use crate::auth::otp::{Challenge, SendThrottle, Verdict};
use crate::auth::session::{Rotation, Session};

/// Everything one auth-state object holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuardState {
    #[serde(default)]
    pub throttle: SendThrottle,
    #[serde(default)]
    pub challenge: Option<Challenge>,
    #[serde(default)]
    pub session: Option<Session>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Externally tagged (`{"admit": {...}}`): decoded in one pass, with no buffering of the whole value.
#[serde(rename_all = "snake_case")]
pub enum GuardRequest {
    /// Records a send against the throttle (gap and hourly cap); with `code_hash`, also replaces the
    /// challenge with a fresh one (a new code revives a locked-out email).
    Send {
        now: i64,
        min_gap_ms: i64,
        max_per_hour: usize,
        code_hash: Option<String>,
    },
    /// Checks a code; the right one consumes the challenge (single use).
    Check {
        now: i64,
        code_hash: String,
    },
    CreateSession {
        session: Session,
    },
    /// Rotates the refresh secret of a session of `project` (a session of another project is refused
    /// untouched: presenting a token at the wrong project must not advance or revoke it).
    Rotate {
        now: i64,
        project: String,
        secret: String,
        new_hash: String,
    },
    Revoke,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Externally tagged (`{"admit": {...}}`): decoded in one pass, with no buffering of the whole value.
#[serde(rename_all = "snake_case")]
pub enum GuardReply {
    Sent,
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
}

pub fn apply(state: &mut GuardState, request: &GuardRequest) -> GuardReply {
    match request {
        GuardRequest::Send {
            now,
            min_gap_ms,
            max_per_hour,
            code_hash,
        } => {
            match state
                .throttle
                .check_and_record(*now, *min_gap_ms, *max_per_hour)
            {
                Err(retry_after_s) => GuardReply::Throttled { retry_after_s },
                Ok(()) => {
                    if let Some(hash) = code_hash {
                        state.challenge = Some(Challenge::new(hash.clone(), *now));
                    }
                    GuardReply::Sent
                }
            }
        }
        GuardRequest::Check { now, code_hash } => {
            let Some(challenge) = state.challenge.as_mut() else {
                return GuardReply::NoChallenge;
            };
            match challenge.check(*now, code_hash) {
                Verdict::Ok => {
                    state.challenge = None;
                    GuardReply::Verified
                }
                Verdict::Wrong { attempts_left } => GuardReply::WrongCode { attempts_left },
                Verdict::Expired => GuardReply::CodeExpired,
                Verdict::Locked => GuardReply::Locked,
            }
        }
        GuardRequest::CreateSession { session } => {
            state.session = Some(session.clone());
            GuardReply::Created
        }
        GuardRequest::Rotate {
            now,
            project,
            secret,
            new_hash,
        } => {
            let Some(session) = state.session.as_mut() else {
                return GuardReply::Refused {
                    reason: "unknown session".into(),
                };
            };
            if session.project != *project {
                return GuardReply::Refused {
                    reason: "the session belongs to another project".into(),
                };
            }
            match session.rotate(*now, secret, new_hash.clone()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::session::new_refresh;

    fn send(now: i64, hash: &str) -> GuardRequest {
        GuardRequest::Send {
            now,
            min_gap_ms: 30_000,
            max_per_hour: 5,
            code_hash: Some(hash.into()),
        }
    }

    #[test]
    fn otp_flow_is_single_use_and_locks_after_five() {
        let mut s = GuardState::default();
        assert_eq!(apply(&mut s, &send(0, "h1")), GuardReply::Sent);
        assert!(matches!(
            apply(&mut s, &send(1_000, "h2")),
            GuardReply::Throttled { .. }
        ));
        assert_eq!(
            apply(
                &mut s,
                &GuardRequest::Check {
                    now: 1,
                    code_hash: "h1".into()
                }
            ),
            GuardReply::Verified
        );
        assert_eq!(
            apply(
                &mut s,
                &GuardRequest::Check {
                    now: 2,
                    code_hash: "h1".into()
                }
            ),
            GuardReply::NoChallenge
        );

        assert_eq!(apply(&mut s, &send(60_000, "h3")), GuardReply::Sent);
        for left in (0..5).rev() {
            assert_eq!(
                apply(
                    &mut s,
                    &GuardRequest::Check {
                        now: 60_001,
                        code_hash: "bad".into()
                    }
                ),
                GuardReply::WrongCode {
                    attempts_left: left
                }
            );
        }
        assert_eq!(
            apply(
                &mut s,
                &GuardRequest::Check {
                    now: 60_002,
                    code_hash: "h3".into()
                }
            ),
            GuardReply::Locked
        );
        assert_eq!(
            apply(&mut s, &send(120_000, "h4")),
            GuardReply::Sent,
            "a new code revives the email"
        );
        assert_eq!(
            apply(
                &mut s,
                &GuardRequest::Check {
                    now: 120_001,
                    code_hash: "h4".into()
                }
            ),
            GuardReply::Verified
        );
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
        let sid = crate::auth::session::new_session_id(&mut rng);
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
        };
        let mut s = GuardState::default();
        apply(&mut s, &GuardRequest::CreateSession { session });
        let secret1 = crate::auth::session::parse_refresh(&t1).unwrap().1;
        let elsewhere = GuardRequest::Rotate {
            now: 1,
            project: "other".into(),
            secret: secret1.clone(),
            new_hash: "h".into(),
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
                    new_hash: h2.clone()
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
                    new_hash: "x".into()
                }
            ),
            GuardReply::Reused { .. }
        ));
        assert!(s.session.as_ref().unwrap().revoked);
        assert!(matches!(
            apply(&mut s, &GuardRequest::Revoke),
            GuardReply::Revoked { session: Some(_) }
        ));
        let mut empty = GuardState::default();
        assert!(matches!(
            apply(
                &mut empty,
                &GuardRequest::Rotate {
                    now: 0,
                    project: "p".into(),
                    secret: "s".into(),
                    new_hash: "h".into()
                }
            ),
            GuardReply::Refused { .. }
        ));
    }
}
