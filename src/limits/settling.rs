//! Settlements waiting in an isolate for their counter: a request settled after its answer leaves its
//! `Settle` here, the consumer's next admission carries what waits (settled first, in the same call),
//! and the request's own flush sends whatever is still unconfirmed a moment later. A settlement
//! leaves only when a call that carried it succeeded, so a carrying request that fails or is
//! cancelled loses nothing; sending one twice is harmless (settling is idempotent by lease id).

use std::collections::HashMap;

use crate::limits::counter::Outcome;
use crate::limits::ops::CounterRequest;

/// Where a waiting settlement is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not sent yet.
    Waiting,
    /// In an admission's call: other admissions leave it alone.
    Carried,
    /// In its request's own flush: an admission still carries it, so one sent after its answer
    /// never overtakes it.
    Flushing,
}

/// A settlement still here this long after it was made is dropped: its lease has long expired and
/// been booked (a settlement of an unknown lease counts nothing), and only a carrying request that
/// was cancelled after its own flush failed can leave one behind.
const STALE_MS: i64 = 10 * 60_000;

#[derive(Debug)]
struct Entry {
    made_at: i64,
    lease_id: String,
    op: CounterRequest,
    state: State,
}

/// What a call carries: the operations, and the leases to confirm or give back afterwards.
#[derive(Debug, Default, PartialEq)]
pub struct Carried {
    pub ops: Vec<CounterRequest>,
    pub leases: Vec<String>,
}

/// The waiting settlements of one isolate, by counter (API id, consumer id).
#[derive(Debug, Default)]
pub struct Settling {
    by_counter: HashMap<(String, String), Vec<Entry>>,
}

impl Settling {
    /// Leaves the settlement of `lease_id` with `outcome` (made at `now`) to be sent.
    pub fn wait(&mut self, counter: (&str, &str), now: i64, lease_id: String, outcome: Outcome) {
        self.by_counter.retain(|_, entries| {
            entries.retain(|e| now - e.made_at < STALE_MS);
            !entries.is_empty()
        });
        let op = CounterRequest::Settle {
            now,
            lease_id: lease_id.clone(),
            outcome,
        };
        self.entries(counter).push(Entry {
            made_at: now,
            lease_id,
            op,
            state: State::Waiting,
        });
    }

    /// What an admission (or any call of the consumer's own) carries ahead of its operation: every
    /// settlement not already in another admission's call.
    pub fn carry(&mut self, counter: (&str, &str)) -> Carried {
        self.take(counter, |state| state != State::Carried, State::Carried)
    }

    /// What a request's own flush sends: every settlement still here that no other flush is sending,
    /// including one an admission carries (that request may have been cancelled mid-call).
    pub fn flush(&mut self, counter: (&str, &str)) -> Carried {
        self.take(counter, |state| state != State::Flushing, State::Flushing)
    }

    /// A call carrying `leases` succeeded: they are settled.
    pub fn landed(&mut self, counter: (&str, &str), leases: &[String]) {
        self.retain(counter, |e| !leases.contains(&e.lease_id));
    }

    /// An admission's call carrying `leases` failed: they wait again (their flushes send them).
    pub fn carry_failed(&mut self, counter: (&str, &str), leases: &[String]) {
        if let Some(entries) = self.by_counter.get_mut(&key(counter)) {
            for e in entries.iter_mut() {
                if e.state == State::Carried && leases.contains(&e.lease_id) {
                    e.state = State::Waiting;
                }
            }
        }
    }

    /// A flush carrying `leases` failed: they are given up (their leases expire and are booked at
    /// their reservations with `abandoned` records), unless an admission is carrying them now.
    pub fn flush_failed(&mut self, counter: (&str, &str), leases: &[String]) {
        self.retain(counter, |e| {
            !(e.state == State::Flushing && leases.contains(&e.lease_id))
        });
    }

    /// How many settlements wait, over all counters.
    pub fn len(&self) -> usize {
        self.by_counter.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_counter.is_empty()
    }

    fn entries(&mut self, counter: (&str, &str)) -> &mut Vec<Entry> {
        self.by_counter.entry(key(counter)).or_default()
    }

    fn take(&mut self, counter: (&str, &str), pick: impl Fn(State) -> bool, to: State) -> Carried {
        let mut carried = Carried::default();
        if let Some(entries) = self.by_counter.get_mut(&key(counter)) {
            for e in entries.iter_mut().filter(|e| pick(e.state)) {
                e.state = to;
                carried.ops.push(e.op.clone());
                carried.leases.push(e.lease_id.clone());
            }
        }
        carried
    }

    fn retain(&mut self, counter: (&str, &str), keep: impl Fn(&Entry) -> bool) {
        let key = key(counter);
        if let Some(entries) = self.by_counter.get_mut(&key) {
            entries.retain(|e| keep(e));
            if entries.is_empty() {
                self.by_counter.remove(&key);
            }
        }
    }
}

fn key((api_id, consumer_id): (&str, &str)) -> (String, String) {
    (api_id.to_string(), consumer_id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: (&str, &str) = ("api_1", "con_a");
    const B: (&str, &str) = ("api_1", "con_b");

    fn settle(lease: &str) -> CounterRequest {
        CounterRequest::Settle {
            now: 1,
            lease_id: lease.into(),
            outcome: Outcome::default(),
        }
    }

    fn wait(s: &mut Settling, counter: (&str, &str), lease: &str) {
        s.wait(counter, 1, lease.into(), Outcome::default());
    }

    fn leases(c: &Carried) -> Vec<&str> {
        c.leases.iter().map(String::as_str).collect()
    }

    #[test]
    fn an_admission_carries_what_waits_for_its_own_counter_only() {
        let mut s = Settling::default();
        wait(&mut s, A, "l1");
        wait(&mut s, A, "l2");
        wait(&mut s, B, "l3");
        let carried = s.carry(A);
        assert_eq!(leases(&carried), ["l1", "l2"]);
        assert_eq!(carried.ops, vec![settle("l1"), settle("l2")]);
        // A concurrent admission does not carry them again.
        assert_eq!(s.carry(A), Carried::default());
        s.landed(A, &carried.leases);
        assert_eq!(s.len(), 1, "only B's waits");
        assert_eq!(leases(&s.carry(B)), ["l3"]);
    }

    #[test]
    fn a_failed_or_cancelled_carry_loses_nothing() {
        let mut s = Settling::default();
        wait(&mut s, A, "l1");
        let carried = s.carry(A);
        s.carry_failed(A, &carried.leases);
        assert_eq!(leases(&s.carry(A)), ["l1"], "it waits again");
        // A carrying request cancelled before its call returned never reports back: the
        // settlement's own flush still sends it.
        let flushed = s.flush(A);
        assert_eq!(leases(&flushed), ["l1"]);
        s.landed(A, &flushed.leases);
        assert!(s.is_empty());
    }

    #[test]
    fn an_admission_during_a_flush_carries_it_too() {
        let mut s = Settling::default();
        wait(&mut s, A, "l1");
        let flushing = s.flush(A);
        // The next request must not overtake its predecessor's settlement in flight.
        assert_eq!(leases(&s.carry(A)), ["l1"]);
        // The flush fails, but the admission carrying it is still out: it stays until that lands.
        s.flush_failed(A, &flushing.leases);
        assert_eq!(s.len(), 1);
        s.landed(A, &flushing.leases);
        assert!(s.is_empty());
    }

    #[test]
    fn flushes_do_not_send_each_others_settlements_twice() {
        let mut s = Settling::default();
        wait(&mut s, A, "l1");
        let first = s.flush(A);
        wait(&mut s, A, "l2");
        assert_eq!(leases(&s.flush(A)), ["l2"]);
        s.landed(A, &first.leases);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn what_nobody_can_send_any_more_does_not_stay() {
        let mut s = Settling::default();
        wait(&mut s, A, "l1");
        let flushing = s.flush(A);
        let carried = s.carry(A);
        // The flush fails while an admission carries it, and that request is then cancelled.
        s.flush_failed(A, &flushing.leases);
        assert_eq!(leases(&carried), ["l1"]);
        assert_eq!(s.len(), 1);
        s.wait(B, STALE_MS, "l2".into(), Outcome::default());
        assert_eq!(s.len(), 2, "not yet stale");
        s.wait(B, 1 + STALE_MS, "l3".into(), Outcome::default());
        assert_eq!(leases(&s.carry(B)), ["l2", "l3"]);
        assert_eq!(s.carry(A), Carried::default());
        assert_eq!(s.len(), 2, "l1 is gone");
    }

    #[test]
    fn a_failed_flush_gives_up_what_nobody_else_carries() {
        let mut s = Settling::default();
        wait(&mut s, A, "l1");
        let flushing = s.flush(A);
        s.flush_failed(A, &flushing.leases);
        assert!(
            s.is_empty(),
            "the lease expires into an abandoned record instead"
        );
    }
}
