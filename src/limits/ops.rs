//! The counter Durable Object's protocol: what the gateway asks, what it answers, and `apply`, the
//! one synchronous step that runs each request against the state.

use serde::{Deserialize, Serialize};

use crate::limits::counter::{CounterState, Refusal, Reservation, Window};
use crate::limits::plan::Limits;
use crate::usage::UsageRecord;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CounterRequest {
    Admit {
        now: i64,
        limits: Limits,
        lease_id: String,
        reservation: Reservation,
        stream: bool,
    },
    Extend {
        now: i64,
        limits: Limits,
        lease_id: String,
        want: u64,
    },
    /// Ends the lease with the request's real (or estimated) tokens and files its usage record.
    Settle {
        now: i64,
        lease_id: String,
        record: UsageRecord,
    },
    Status {
        now: i64,
        limits: Limits,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CounterReply {
    Admitted {
        granted: u64,
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
    Settled {
        counted: bool,
    },
    Status {
        windows: Vec<Window>,
    },
}

/// Runs one request against the state, with no awaiting anywhere: the caller persists the state (and,
/// for `Settle` with `counted`, the usage record) in the same synchronous turn.
pub fn apply(state: &mut CounterState, request: &CounterRequest) -> CounterReply {
    match request {
        CounterRequest::Admit {
            now,
            limits,
            lease_id,
            reservation,
            stream,
        } => match state.admit(*now, limits, lease_id, *reservation, *stream) {
            Ok(granted) => CounterReply::Admitted {
                granted,
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
        CounterRequest::Settle {
            now,
            lease_id,
            record,
        } => CounterReply::Settled {
            counted: state.settle(*now, lease_id, record.total_tokens),
        },
        CounterRequest::Status { now, limits } => CounterReply::Status {
            windows: state.windows(*now, limits),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(lease: &str, total: u64) -> UsageRecord {
        UsageRecord {
            id: lease.into(),
            total_tokens: total,
            ..UsageRecord::default()
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
            reservation: Reservation {
                prompt: 1,
                completion: 2,
                flexible: false,
            },
            stream: true,
        };
        let text = serde_json::to_string(&req).unwrap();
        assert!(text.contains("\"op\":\"admit\""));
        assert_eq!(serde_json::from_str::<CounterRequest>(&text).unwrap(), req);
    }

    #[test]
    fn admit_then_settle_counts_once() {
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
            reservation: Reservation {
                prompt: 1,
                completion: 9,
                flexible: false,
            },
            stream: false,
        };
        assert!(matches!(
            apply(&mut s, &admit),
            CounterReply::Admitted { granted: 9, .. }
        ));
        assert!(matches!(
            apply(&mut s, &admit),
            CounterReply::Refused { .. }
        ));
        let settle = CounterRequest::Settle {
            now: 1,
            lease_id: "a".into(),
            record: record("a", 7),
        };
        assert_eq!(
            apply(&mut s, &settle),
            CounterReply::Settled { counted: true }
        );
        assert_eq!(
            apply(&mut s, &settle),
            CounterReply::Settled { counted: false }
        );
        let CounterReply::Status { windows } =
            apply(&mut s, &CounterRequest::Status { now: 2, limits })
        else {
            panic!()
        };
        assert_eq!(
            windows.iter().find(|w| w.limit == 100).map(|w| w.used),
            Some(7)
        );
    }
}
