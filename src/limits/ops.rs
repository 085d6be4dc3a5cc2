//! The counter Durable Object's protocol: what the gateway asks, what it answers, and `apply`, the
//! one synchronous step that runs each request against the state.

use serde::{Deserialize, Serialize};

use crate::limits::counter::{Ask, CounterState, Outcome, Window};
use crate::limits::plan::{Limits, Plan};
use crate::limits::standing::{check_model, Change, Denial, Facts, Presented};
use crate::usage::UsageRecord;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Externally tagged (`{"admit": {...}}`): decoded in one pass, with no buffering of the whole value.
#[serde(rename_all = "snake_case")]
pub enum CounterRequest {
    /// Checks the consumer's standing and the key and session it came with, picks its plan from
    /// the API's `plans`, checks the model against it, and admits the request holding its worst
    /// case; `record` is its usage record, to be completed.
    Admit {
        now: i64,
        lease_id: String,
        who: Presented,
        plans: Vec<Plan>,
        model: String,
        /// Whether the API has a price for the model.
        priced: bool,
        ask: Ask,
        record: Box<UsageRecord>,
    },
    /// More completion tokens for a stream that used up its grant (within its plan's `limits`);
    /// refused (`Denied`) once the consumer, or the key or session `who` it came with, may no
    /// longer call.
    Extend {
        now: i64,
        limits: Limits,
        lease_id: String,
        want: u64,
        #[serde(default)]
        who: Presented,
    },
    /// Keeps a long request's lease alive; refused (`Denied`) as `Extend` is.
    Renew {
        now: i64,
        lease_id: String,
        #[serde(default)]
        who: Presented,
    },
    /// Ends the lease with what the request really used and files its usage record.
    Settle {
        now: i64,
        lease_id: String,
        outcome: Outcome,
    },
    /// The consumer's plan (from the API's `plans`) and where each of its windows stands.
    /// Refused (`Denied`) as an admission would be when the consumer may not call.
    Status {
        now: i64,
        api_id: String,
        consumer_id: String,
        #[serde(default)]
        who: Presented,
        plans: Vec<Plan>,
    },
    /// An admin write's change to the consumer's standing, applied before the write answers (the
    /// standing is loaded first, so the change lands on what D1 says).
    Change {
        now: i64,
        api_id: String,
        consumer_id: String,
        change: Change,
    },
    /// What D1 says about the consumer, loaded by the object itself the first time it is needed.
    Learn { facts: Facts },
    /// Several operations in one call, applied in order in one turn; the answer is the last one's.
    /// The gateway sends the settlements waiting in its isolate this way, ahead of the consumer's
    /// next admission or on their own a moment after the answer.
    Batch { ops: Vec<CounterRequest> },
}

impl CounterRequest {
    /// The (API, consumer) of an operation that depends on the consumer's standing, which must be
    /// known before it runs.
    pub fn needs_standing(&self) -> Option<(&str, &str)> {
        match self {
            CounterRequest::Admit { record, .. } => Some((&record.api_id, &record.consumer_id)),
            CounterRequest::Status {
                api_id,
                consumer_id,
                ..
            }
            | CounterRequest::Change {
                api_id,
                consumer_id,
                ..
            } => Some((api_id, consumer_id)),
            CounterRequest::Batch { ops } => ops.iter().find_map(CounterRequest::needs_standing),
            _ => None,
        }
    }

    /// The operation whose answer is the reply: the last of a batch, else this one.
    pub fn answered(&self) -> &CounterRequest {
        match self {
            CounterRequest::Batch { ops } => ops.last().map_or(self, CounterRequest::answered),
            _ => self,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Externally tagged (`{"admit": {...}}`): decoded in one pass, with no buffering of the whole value.
#[serde(rename_all = "snake_case")]
pub enum CounterReply {
    /// `cap` is the completion cap per choice to send upstream (`None`: nothing limits it).
    Admitted {
        cap: Option<u64>,
        plan: Plan,
        windows: Vec<Window>,
    },
    Denied {
        denial: Denial,
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
        plan: Plan,
        windows: Vec<Window>,
    },
    Changed,
}

/// Runs one request against the state, with no awaiting anywhere. The caller persists the state and
/// files the records the operation completed (`state.filed`) in the same synchronous turn.
pub fn apply(state: &mut CounterState, request: &CounterRequest) -> CounterReply {
    match request {
        CounterRequest::Admit {
            now,
            lease_id,
            who,
            plans,
            model,
            priced,
            ask,
            record,
        } => {
            let plan = state.standing.plan(plans);
            let admitted = state
                .standing
                .check(who)
                .and_then(|()| state.standing.use_proof(*now, who))
                .and_then(|()| check_model(&plan, model, *priced))
                .and_then(|()| {
                    let ask = Ask {
                        cap: min_cap(ask.cap, plan.limits.max_tokens_per_request),
                        ..*ask
                    };
                    let record = UsageRecord {
                        plan: plan.name.clone(),
                        ..(**record).clone()
                    };
                    state
                        .admit(*now, &plan.limits, lease_id, ask, Some(record))
                        .map_err(|refusal| Denial::Limit {
                            plan: plan.name.clone(),
                            refusal,
                        })
                });
            let windows = state.windows(*now, &plan.limits);
            match admitted {
                Ok(cap) => CounterReply::Admitted { cap, plan, windows },
                Err(denial) => CounterReply::Denied { denial, windows },
            }
        }
        CounterRequest::Extend {
            now,
            limits,
            lease_id,
            want,
            who,
        } => match state.standing.check(who) {
            Err(denial) => CounterReply::Denied {
                denial,
                windows: state.windows(*now, limits),
            },
            Ok(()) => {
                let granted = state.extend(*now, limits, lease_id, *want);
                CounterReply::Extended {
                    granted,
                    windows: state.windows(*now, limits),
                }
            }
        },
        CounterRequest::Renew { now, lease_id, who } => match state.standing.check(who) {
            Err(denial) => CounterReply::Denied {
                denial,
                windows: Vec::new(),
            },
            Ok(()) => CounterReply::Renewed {
                live: state.renew(*now, lease_id),
            },
        },
        CounterRequest::Settle {
            now,
            lease_id,
            outcome,
        } => CounterReply::Settled {
            counted: state.settle(*now, lease_id, outcome),
        },
        CounterRequest::Status {
            now, who, plans, ..
        } => {
            let plan = state.standing.plan(plans);
            let windows = state.windows(*now, &plan.limits);
            match state.standing.check(who) {
                Ok(()) => CounterReply::Status { plan, windows },
                Err(denial) => CounterReply::Denied { denial, windows },
            }
        }
        CounterRequest::Change { now, change, .. } => {
            state.standing.apply(*now, change);
            CounterReply::Changed
        }
        CounterRequest::Learn { facts } => {
            state.standing.learn(facts.clone());
            CounterReply::Changed
        }
        CounterRequest::Batch { ops } => ops
            .iter()
            .fold(CounterReply::Changed, |_, op| apply(state, op)),
    }
}

/// The smaller of two optional caps (`None` is no cap).
fn min_cap(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
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

    fn plan(id: &str, default: bool, limits: Limits) -> Plan {
        Plan {
            id: id.into(),
            name: id.into(),
            limits,
            models: None,
            is_default: default,
        }
    }

    fn admit(lease: &str, plans: &[Plan], who: Presented, a: Ask) -> CounterRequest {
        CounterRequest::Admit {
            now: 0,
            lease_id: lease.into(),
            who,
            plans: plans.to_vec(),
            model: "m".into(),
            priced: false,
            ask: a,
            record: Box::new(UsageRecord {
                id: lease.into(),
                ..UsageRecord::default()
            }),
        }
    }

    #[test]
    fn protocol_round_trips_through_json() {
        let req = admit(
            "l",
            &[plan("p", true, Limits::default())],
            Presented::default(),
            ask(1, 2),
        );
        let text = serde_json::to_string(&req).unwrap();
        assert!(text.starts_with("{\"admit\":{"), "{text}");
        assert_eq!(
            crate::encoding::from_json::<CounterRequest>(&text).unwrap(),
            req
        );
    }

    fn settle(lease: &str, now: i64, prompt: u64, completion: u64) -> CounterRequest {
        CounterRequest::Settle {
            now,
            lease_id: lease.into(),
            outcome: Outcome {
                status: 200,
                ended: Ended::Complete,
                prompt_tokens: prompt,
                completion_tokens: completion,
                ..Outcome::default()
            },
        }
    }

    #[test]
    fn a_batch_settles_first_and_answers_for_its_admission() {
        // 100 tokens a day; each request reserves its prompt bound (10) plus a cap of 80.
        let limits = Limits {
            tokens_per_day: Some(100),
            ..Default::default()
        };
        let plans = vec![plan("default", true, limits)];
        let mut s = CounterState::default();
        assert!(matches!(
            apply(
                &mut s,
                &admit("a", &plans, Presented::default(), ask(10, 80))
            ),
            CounterReply::Admitted { cap: Some(80), .. }
        ));
        // While `a` holds 90, a second request finds 10 left: less than its prompt bound plus one.
        let second = admit("b", &plans, Presented::default(), ask(10, 80));
        assert!(matches!(
            apply(&mut s.clone(), &second),
            CounterReply::Denied { .. }
        ));
        // Carried with `a`'s settlement (15 used), it is admitted with the 85 then left, less its bound.
        let batch = CounterRequest::Batch {
            ops: vec![settle("a", 1, 10, 5), second],
        };
        assert_eq!(
            batch.needs_standing(),
            Some(("", "")),
            "the admission's consumer"
        );
        assert!(matches!(batch.answered(), CounterRequest::Admit { .. }));
        assert!(matches!(
            apply(&mut s, &batch),
            CounterReply::Admitted { cap: Some(75), .. }
        ));
        assert_eq!(s.filed.len(), 1, "a's record is filed");
        assert_eq!(s.filed[0].total_tokens, 15);
        // A batch of settlements alone answers for the last; settling twice counts once.
        let again = CounterRequest::Batch {
            ops: vec![settle("a", 2, 10, 5), settle("b", 2, 10, 1)],
        };
        assert_eq!(again.needs_standing(), None);
        assert_eq!(
            apply(&mut s, &again),
            CounterReply::Settled { counted: true }
        );
        assert_eq!(s.filed.len(), 2);
        assert_eq!(s.day_tokens, 26);
        let text = serde_json::to_string(&again).unwrap_or_default();
        assert!(text.starts_with(r#"{"batch":{"ops":[{"settle":"#), "{text}");
        assert_eq!(
            crate::encoding::from_json::<CounterRequest>(&text).ok(),
            Some(again)
        );
    }

    #[test]
    fn admit_then_settle_counts_once_and_files_one_record() {
        let limits = Limits {
            requests_per_minute: Some(1),
            tokens_per_day: Some(100),
            ..Default::default()
        };
        let plans = vec![plan("default", true, limits)];
        let mut s = CounterState::default();
        let first = admit("a", &plans, Presented::default(), ask(1, 9));
        assert!(matches!(
            apply(&mut s, &first),
            CounterReply::Admitted { cap: Some(9), .. }
        ));
        assert!(matches!(
            apply(&mut s, &first),
            CounterReply::Denied {
                denial: Denial::Limit { .. },
                ..
            }
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
        let CounterReply::Status { windows, plan } = apply(
            &mut s,
            &CounterRequest::Status {
                now: 2,
                api_id: "api_1".into(),
                consumer_id: "con_1".into(),
                who: Presented::default(),
                plans,
            },
        ) else {
            panic!("status answers with windows")
        };
        assert_eq!(plan.name, "default");
        assert_eq!(
            windows.iter().find(|w| w.limit == 100).map(|w| w.used),
            Some(7)
        );
    }

    #[test]
    fn a_change_applies_to_the_very_next_admission() {
        let plans = vec![
            plan("free", true, Limits::default()),
            plan(
                "tiny",
                false,
                Limits {
                    max_tokens_per_request: Some(3),
                    ..Default::default()
                },
            ),
        ];
        let key = Presented {
            key_id: Some("key_1".into()),
            session_id: None,
            dpop_jti: None,
            certificate_id: None,
        };
        let mut s = CounterState::default();
        let subscribe = CounterRequest::Change {
            now: 0,
            api_id: "api_1".into(),
            consumer_id: "con_1".into(),
            change: Change::Subscribe {
                plan_id: Some("tiny".into()),
            },
        };
        assert_eq!(apply(&mut s, &subscribe), CounterReply::Changed);
        let CounterReply::Admitted { cap, plan, .. } =
            apply(&mut s, &admit("a", &plans, key.clone(), ask(1, 50)))
        else {
            panic!("admitted")
        };
        assert_eq!(
            (cap, plan.name.as_str()),
            (Some(3), "tiny"),
            "the plan's cap"
        );
        let revoke = CounterRequest::Change {
            now: 0,
            api_id: "api_1".into(),
            consumer_id: "con_1".into(),
            change: Change::RevokeKey {
                key_id: "key_1".into(),
            },
        };
        apply(&mut s, &revoke);
        assert!(matches!(
            apply(&mut s, &admit("b", &plans, key, ask(1, 50))),
            CounterReply::Denied {
                denial: Denial::KeyRevoked,
                ..
            }
        ));
        let disable = CounterRequest::Change {
            now: 0,
            api_id: "api_1".into(),
            consumer_id: "con_1".into(),
            change: Change::Disabled { disabled: true },
        };
        apply(&mut s, &disable);
        assert!(matches!(
            apply(
                &mut s,
                &admit("c", &plans, Presented::default(), ask(1, 50))
            ),
            CounterReply::Denied {
                denial: Denial::Disabled,
                ..
            }
        ));
        assert_eq!(s.leases.len(), 1, "denied requests hold nothing");
    }

    #[test]
    fn a_request_in_flight_is_refused_its_renewal_and_extension_once_revoked() {
        let plans = vec![plan("free", true, Limits::default())];
        let key = |k: &str| Presented {
            key_id: Some(k.into()),
            ..Presented::default()
        };
        let mut s = CounterState::default();
        let renew = |who: Presented| CounterRequest::Renew {
            now: 1,
            lease_id: "a".into(),
            who,
        };
        let extend = |who: Presented| CounterRequest::Extend {
            now: 1,
            limits: Limits::default(),
            lease_id: "a".into(),
            want: 10,
            who,
        };
        assert!(matches!(
            apply(&mut s, &admit("a", &plans, key("key_1"), ask(1, 50))),
            CounterReply::Admitted { .. }
        ));
        assert_eq!(
            apply(&mut s, &renew(key("key_1"))),
            CounterReply::Renewed { live: true }
        );
        let change = |change| CounterRequest::Change {
            now: 1,
            api_id: "api_1".into(),
            consumer_id: "con_1".into(),
            change,
        };
        apply(
            &mut s,
            &change(Change::RevokeKey {
                key_id: "key_1".into(),
            }),
        );
        for op in [renew(key("key_1")), extend(key("key_1"))] {
            assert!(
                matches!(
                    apply(&mut s, &op),
                    CounterReply::Denied {
                        denial: Denial::KeyRevoked,
                        ..
                    }
                ),
                "{op:?}"
            );
        }
        // Another key of the consumer is untouched; disabling the consumer stops it too.
        assert!(matches!(
            apply(&mut s, &extend(key("key_2"))),
            CounterReply::Extended { .. }
        ));
        apply(&mut s, &change(Change::Disabled { disabled: true }));
        assert!(matches!(
            apply(&mut s, &renew(key("key_2"))),
            CounterReply::Denied {
                denial: Denial::Disabled,
                ..
            }
        ));
        // An operation from before this field existed carries no one: checked as the consumer.
        let old: CounterRequest =
            crate::encoding::from_json(r#"{"renew":{"now":1,"lease_id":"a"}}"#).unwrap();
        assert!(matches!(
            apply(&mut s, &old),
            CounterReply::Denied {
                denial: Denial::Disabled,
                ..
            }
        ));
    }
}
