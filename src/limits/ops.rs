//! The counter Durable Object's protocol: what the gateway asks, what it answers, and `apply`, the
//! one synchronous step that runs each request against the state.

use serde::{Deserialize, Serialize};

use crate::limits::counter::{Ask, CounterState, Outcome, Refusal, Window};
use crate::limits::plan::Limits;
use crate::usage::UsageRecord;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CounterRequest {
    /// Admits a request and holds its worst case; `record` is its usage record, to be completed.
    Admit {
        now: i64,
        limits: Limits,
        lease_id: String,
        ask: Ask,
        record: Box<UsageRecord>,
    },
    /// More completion tokens for a stream that used up its grant.
    Extend {
        now: i64,
        limits: Limits,
        lease_id: String,
        want: u64,
    },
    /// Keeps a long request's lease alive.
    Renew {
        now: i64,
        lease_id: String,
    },
    /// Ends the lease with what the request really used and files its usage record.
    Settle {
        now: i64,
        lease_id: String,
        outcome: Outcome,
    },
    Status {
        now: i64,
        limits: Limits,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CounterReply {
    /// `cap` is the completion cap per choice to send upstream (`None`: nothing limits it).
    Admitted {
        cap: Option<u64>,
        windows: Vec<Window>,
    },
    Refused {
        refusal: Refusal,
        windows: Vec<Window>,
    },
    Extended {
        granted: u64,
        windows: Vec<Window>,
    },
    Renewed {
        live: bool,
    },
    Settled {
        counted: bool,
    },
    Status {
        windows: Vec<Window>,
    },
}

/// Runs one request against the state, with no awaiting anywhere. The caller persists the state and
/// files the records the operation completed (`state.filed`) in the same synchronous turn.
pub fn apply(state: &mut CounterState, request: &CounterRequest) -> CounterReply {
    match request {
        CounterRequest::Admit {
            now,
            limits,
            lease_id,
            ask,
            record,
        } => match state.admit(*now, limits, lease_id, *ask, Some((**record).clone())) {
            Ok(cap) => CounterReply::Admitted {
                cap,
                windows: state.windows(*now, limits),
            },
            Err(refusal) => CounterReply::Refused {
                refusal,
                windows: state.windows(*now, limits),
            },
        },
        CounterRequest::Extend {
            now,
            limits,
            lease_id,
            want,
        } => {
            let granted = state.extend(*now, limits, lease_id, *want);
            CounterReply::Extended {
                granted,
                windows: state.windows(*now, limits),
            }
        }
        CounterRequest::Renew { now, lease_id } => CounterReply::Renewed {
            live: state.renew(*now, lease_id),
        },
        CounterRequest::Settle {
            now,
            lease_id,
            outcome,
        } => CounterReply::Settled {
            counted: state.settle(*now, lease_id, outcome),
        },
        CounterRequest::Status { now, limits } => CounterReply::Status {
            windows: state.windows(*now, limits),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Ended;

    fn ask(prompt: u64, cap: u64) -> Ask {
        Ask {
            prompt,
            n: 1,
            cap: Some(cap),
            price: None,
            stream: false,
            lease_ttl_ms: crate::limits::counter::LEASE_TTL_MS,
        }
    }

    #[test]
    fn protocol_round_trips_through_json() {
        let req = CounterRequest::Admit {
            now: 1,
            limits: Limits {
                requests_per_minute: Some(1),
                ..Default::default()
            },
            lease_id: "l".into(),
            ask: ask(1, 2),
            record: Box::default(),
        };
        let text = serde_json::to_string(&req).unwrap();
        assert!(text.contains("\"op\":\"admit\""));
        assert_eq!(serde_json::from_str::<CounterRequest>(&text).unwrap(), req);
    }

    #[test]
    fn admit_then_settle_counts_once_and_files_one_record() {
        let limits = Limits {
            requests_per_minute: Some(1),
            tokens_per_day: Some(100),
            ..Default::default()
        };
        let mut s = CounterState::default();
        let admit = CounterRequest::Admit {
            now: 0,
            limits: limits.clone(),
            lease_id: "a".into(),
            ask: ask(1, 9),
            record: Box::new(UsageRecord {
                id: "a".into(),
                ..UsageRecord::default()
            }),
        };
        assert!(matches!(
            apply(&mut s, &admit),
            CounterReply::Admitted { cap: Some(9), .. }
        ));
        assert!(matches!(
            apply(&mut s, &admit),
            CounterReply::Refused { .. }
        ));
        let settle = CounterRequest::Settle {
            now: 1,
            lease_id: "a".into(),
            outcome: Outcome {
                status: 200,
                ended: Ended::Complete,
                prompt_tokens: 2,
                completion_tokens: 5,
                ..Outcome::default()
            },
        };
        assert_eq!(
            apply(&mut s, &settle),
            CounterReply::Settled { counted: true }
        );
        assert_eq!(
            apply(&mut s, &settle),
            CounterReply::Settled { counted: false }
        );
        assert_eq!(s.filed.len(), 1);
        assert_eq!(
            (s.filed[0].total_tokens, s.filed[0].max_tokens),
            (7, Some(9))
        );
        let CounterReply::Status { windows } =
            apply(&mut s, &CounterRequest::Status { now: 2, limits })
        else {
            panic!("status answers with windows")
        };
        assert_eq!(
            windows.iter().find(|w| w.limit == 100).map(|w| w.used),
            Some(7)
        );
    }
}
