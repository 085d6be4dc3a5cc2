//! The per-consumer counter: sliding-minute and UTC calendar windows, token reservations held as
//! leases and settled to real counts. Pure and synchronous: the Durable Object runs each operation
//! without awaiting in between, which is what makes admission exact under concurrency.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::limits::plan::Limits;
use crate::time::{day_start, month_bounds, rfc3339};

pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 86_400_000;
/// A lease the gateway never settled (isolate gone) expires after this long without an extension.
pub const LEASE_TTL_MS: i64 = 15 * 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    RequestsPerMinute,
    RequestsPerDay,
    TokensPerDay,
    TokensPerMonth,
    MaxConcurrentStreams,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::RequestsPerMinute => "requests_per_minute",
            Scope::RequestsPerDay => "requests_per_day",
            Scope::TokensPerDay => "tokens_per_day",
            Scope::TokensPerMonth => "tokens_per_month",
            Scope::MaxConcurrentStreams => "max_concurrent_streams",
        }
    }
    /// Short-term limits are rate limits; calendar budgets are quotas.
    pub fn problem_type(self) -> &'static str {
        match self {
            Scope::RequestsPerMinute | Scope::MaxConcurrentStreams => "rate-limited",
            _ => "quota-exceeded",
        }
    }
}

/// A reservation held for one request until it is settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub reserved: u64,
    pub stream: bool,
    pub expires_at: i64,
}

/// What a request asks to reserve: its prompt (estimated) and completion tokens. A `flexible`
/// request named no max_tokens: it is admitted with whatever budget is left (at least one token)
/// and extends its lease as it streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub prompt: u64,
    pub completion: u64,
    pub flexible: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub scope: Scope,
    pub limit: u64,
    pub used: u64,
    /// When the window frees up (epoch ms).
    pub reset_at: i64,
    pub retry_after_s: u64,
}

impl Refusal {
    /// The refusal for a token budget found spent mid-stream: the token window with the least left.
    pub fn exhausted(windows: &[Window], now: i64) -> Refusal {
        let w = windows
            .iter()
            .filter(|w| matches!(w.scope, Scope::TokensPerDay | Scope::TokensPerMonth))
            .min_by_key(|w| (w.remaining, w.reset_at));
        match w {
            Some(w) => Refusal {
                scope: w.scope,
                limit: w.limit,
                used: w.used,
                reset_at: w.reset_at,
                retry_after_s: retry_secs(now, w.reset_at),
            },
            None => Refusal {
                scope: Scope::TokensPerDay,
                limit: 0,
                used: 0,
                reset_at: now,
                retry_after_s: 1,
            },
        }
    }

    pub fn to_error(&self, plan: &str) -> Error {
        let what = match self.scope {
            Scope::RequestsPerMinute => "requests per minute",
            Scope::RequestsPerDay => "requests per day",
            Scope::TokensPerDay => "tokens per day",
            Scope::TokensPerMonth => "tokens per month",
            Scope::MaxConcurrentStreams => "concurrent streams",
        };
        let title = if self.scope.problem_type() == "rate-limited" {
            "Rate limit reached"
        } else {
            "Quota exceeded"
        };
        Error::new(
            429,
            self.scope.problem_type(),
            title,
            format!(
                "Your plan `{plan}` allows {} {what}; {} used. Try again after {} (in {} s).",
                self.limit,
                self.used,
                rfc3339(self.reset_at),
                self.retry_after_s
            ),
        )
        .with_field("scope", self.scope.as_str())
        .with_field("limit", self.limit)
        .with_field("used", self.used)
        .with_field("reset", rfc3339(self.reset_at))
        .with_field("plan", plan)
        .with_header("Retry-After", self.retry_after_s.to_string())
    }
}

/// One window's standing, for headers and the usage endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub scope: Scope,
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    pub reset_at: i64,
    pub window_s: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterState {
    /// Admission times in the last minute (at most `requests_per_minute` of them).
    pub minute: VecDeque<i64>,
    pub day_start: i64,
    pub day_requests: u64,
    pub day_tokens: u64,
    pub month_start: i64,
    pub month_tokens: u64,
    pub leases: Vec<Lease>,
}

fn retry_secs(now: i64, at: i64) -> u64 {
    ((at - now).max(0) as u64).div_ceil(1000).max(1)
}

impl CounterState {
    /// Moves the windows to `now`: prunes the minute log, starts a new day or month, expires leases.
    pub fn roll(&mut self, now: i64) {
        while self.minute.front().is_some_and(|t| *t <= now - MINUTE_MS) {
            self.minute.pop_front();
        }
        let day = day_start(now);
        if day != self.day_start {
            self.day_start = day;
            self.day_requests = 0;
            self.day_tokens = 0;
        }
        let (month, _) = month_bounds(now);
        if month != self.month_start {
            self.month_start = month;
            self.month_tokens = 0;
        }
        // An unsettled lease whose holder vanished: its reservation counts as spent (it may have been).
        let (expired, live): (Vec<Lease>, Vec<Lease>) =
            self.leases.drain(..).partition(|l| l.expires_at <= now);
        self.leases = live;
        for l in expired {
            self.day_tokens += l.reserved;
            self.month_tokens += l.reserved;
        }
    }

    fn reserved(&self) -> u64 {
        self.leases.iter().map(|l| l.reserved).sum()
    }

    fn streams(&self) -> u64 {
        self.leases.iter().filter(|l| l.stream).count() as u64
    }

    /// Tokens still free today and this month (`None`: unlimited).
    fn token_room(&self, limits: &Limits) -> Option<u64> {
        let held = self.reserved();
        let day = limits
            .tokens_per_day
            .map(|l| l.saturating_sub(self.day_tokens + held));
        let month = limits
            .tokens_per_month
            .map(|l| l.saturating_sub(self.month_tokens + held));
        match (day, month) {
            (Some(d), Some(m)) => Some(d.min(m)),
            (d, m) => d.or(m),
        }
    }

    fn next_day(&self) -> i64 {
        self.day_start + DAY_MS
    }

    fn token_refusal(&self, now: i64, limits: &Limits, need: u64) -> Option<Refusal> {
        let held = self.reserved();
        if let Some(l) = limits.tokens_per_day {
            if self.day_tokens + held + need > l {
                let at = self.next_day();
                return Some(Refusal {
                    scope: Scope::TokensPerDay,
                    limit: l,
                    used: self.day_tokens + held,
                    reset_at: at,
                    retry_after_s: retry_secs(now, at),
                });
            }
        }
        if let Some(l) = limits.tokens_per_month {
            if self.month_tokens + held + need > l {
                let (_, at) = month_bounds(now);
                return Some(Refusal {
                    scope: Scope::TokensPerMonth,
                    limit: l,
                    used: self.month_tokens + held,
                    reset_at: at,
                    retry_after_s: retry_secs(now, at),
                });
            }
        }
        None
    }

    /// Admits one request or says which limit refuses it. On success the request is counted and its
    /// tokens are reserved under `lease_id`; returns the completion tokens granted.
    pub fn admit(
        &mut self,
        now: i64,
        limits: &Limits,
        lease_id: &str,
        res: Reservation,
        stream: bool,
    ) -> Result<u64, Refusal> {
        self.roll(now);
        if stream {
            if let Some(l) = limits.max_concurrent_streams {
                let used = self.streams();
                if used >= l {
                    return Err(Refusal {
                        scope: Scope::MaxConcurrentStreams,
                        limit: l,
                        used,
                        reset_at: now + 1000,
                        retry_after_s: 1,
                    });
                }
            }
        }
        if let Some(l) = limits.requests_per_minute {
            let used = self.minute.len() as u64;
            if used >= l {
                let at = self.minute.front().map_or(now, |t| t + MINUTE_MS);
                return Err(Refusal {
                    scope: Scope::RequestsPerMinute,
                    limit: l,
                    used,
                    reset_at: at,
                    retry_after_s: retry_secs(now, at),
                });
            }
        }
        if let Some(l) = limits.requests_per_day {
            if self.day_requests >= l {
                let at = self.next_day();
                return Err(Refusal {
                    scope: Scope::RequestsPerDay,
                    limit: l,
                    used: self.day_requests,
                    reset_at: at,
                    retry_after_s: retry_secs(now, at),
                });
            }
        }
        let need = if res.flexible {
            res.prompt + 1
        } else {
            res.prompt + res.completion
        };
        if let Some(refusal) = self.token_refusal(now, limits, need) {
            return Err(refusal);
        }
        let granted = match (res.flexible, self.token_room(limits)) {
            (true, Some(room)) => res.completion.min(room - res.prompt),
            _ => res.completion,
        };
        self.minute.push_back(now);
        self.day_requests += 1;
        self.leases.push(Lease {
            id: lease_id.to_string(),
            reserved: res.prompt + granted,
            stream,
            expires_at: now + LEASE_TTL_MS,
        });
        Ok(granted)
    }

    /// Grows a live lease by up to `want` tokens, as far as the budgets allow; returns what was granted
    /// (0 when the budget is spent or the lease is unknown).
    pub fn extend(&mut self, now: i64, limits: &Limits, lease_id: &str, want: u64) -> u64 {
        self.roll(now);
        let room = self.token_room(limits);
        let Some(lease) = self.leases.iter_mut().find(|l| l.id == lease_id) else {
            return 0;
        };
        let grant = room.map_or(want, |r| want.min(r));
        lease.reserved += grant;
        lease.expires_at = now + LEASE_TTL_MS;
        grant
    }

    /// Ends a lease and counts the request's real token use. Returns false for an unknown lease
    /// (already settled or expired), so a retried settle never counts twice.
    pub fn settle(&mut self, now: i64, lease_id: &str, tokens: u64) -> bool {
        self.roll(now);
        let Some(pos) = self.leases.iter().position(|l| l.id == lease_id) else {
            return false;
        };
        self.leases.swap_remove(pos);
        self.day_tokens += tokens;
        self.month_tokens += tokens;
        true
    }

    /// Where each limited window stands (reservations count as used).
    pub fn windows(&mut self, now: i64, limits: &Limits) -> Vec<Window> {
        self.roll(now);
        let held = self.reserved();
        let mut out = Vec::new();
        let mut push = |scope, limit: Option<u64>, used: u64, reset_at: i64, window_s| {
            if let Some(limit) = limit {
                out.push(Window {
                    scope,
                    limit,
                    used,
                    remaining: limit.saturating_sub(used),
                    reset_at,
                    window_s,
                });
            }
        };
        let minute_reset = self.minute.back().map_or(now, |t| t + MINUTE_MS);
        push(
            Scope::RequestsPerMinute,
            limits.requests_per_minute,
            self.minute.len() as u64,
            minute_reset,
            60,
        );
        push(
            Scope::RequestsPerDay,
            limits.requests_per_day,
            self.day_requests,
            self.next_day(),
            86_400,
        );
        push(
            Scope::TokensPerDay,
            limits.tokens_per_day,
            self.day_tokens + held,
            self.next_day(),
            86_400,
        );
        let (month_start, month_end) = month_bounds(now);
        push(
            Scope::TokensPerMonth,
            limits.tokens_per_month,
            self.month_tokens + held,
            month_end,
            ((month_end - month_start) / 1000) as u64,
        );
        push(
            Scope::MaxConcurrentStreams,
            limits.max_concurrent_streams,
            self.streams(),
            now,
            0,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_rfc3339;

    fn t(s: &str) -> i64 {
        parse_rfc3339(s).unwrap()
    }
    fn fixed(prompt: u64, completion: u64) -> Reservation {
        Reservation {
            prompt,
            completion,
            flexible: false,
        }
    }

    #[test]
    fn exactly_the_limit_is_admitted_in_a_burst() {
        let limits = Limits {
            requests_per_minute: Some(10),
            ..Default::default()
        };
        let mut s = CounterState::default();
        let now = t("2026-11-22T10:00:00Z");
        let admitted = (0..50)
            .filter(|i| {
                s.admit(now, &limits, &format!("l{i}"), fixed(1, 1), false)
                    .is_ok()
            })
            .count();
        assert_eq!(admitted, 10);
        let refusal = s.admit(now, &limits, "x", fixed(1, 1), false).unwrap_err();
        assert_eq!(
            (
                refusal.scope,
                refusal.limit,
                refusal.used,
                refusal.retry_after_s
            ),
            (Scope::RequestsPerMinute, 10, 10, 60)
        );
    }

    #[test]
    fn minute_window_slides() {
        let limits = Limits {
            requests_per_minute: Some(2),
            ..Default::default()
        };
        let mut s = CounterState::default();
        let t0 = t("2026-11-22T10:00:00Z");
        assert!(s.admit(t0, &limits, "a", fixed(0, 0), false).is_ok());
        assert!(s
            .admit(t0 + 30_000, &limits, "b", fixed(0, 0), false)
            .is_ok());
        let r = s
            .admit(t0 + 59_999, &limits, "c", fixed(0, 0), false)
            .unwrap_err();
        assert_eq!(r.reset_at, t0 + 60_000);
        assert_eq!(r.retry_after_s, 1);
        assert!(
            s.admit(t0 + 60_000, &limits, "d", fixed(0, 0), false)
                .is_ok(),
            "the first admission left the window"
        );
        assert!(s
            .admit(t0 + 60_001, &limits, "e", fixed(0, 0), false)
            .is_err());
    }

    #[test]
    fn daily_requests_reset_at_utc_midnight() {
        let limits = Limits {
            requests_per_day: Some(1),
            ..Default::default()
        };
        let mut s = CounterState::default();
        assert!(s
            .admit(t("2026-11-22T23:59:59Z"), &limits, "a", fixed(0, 0), false)
            .is_ok());
        let r = s
            .admit(
                t("2026-11-22T23:59:59.500Z"),
                &limits,
                "b",
                fixed(0, 0),
                false,
            )
            .unwrap_err();
        assert_eq!(r.scope, Scope::RequestsPerDay);
        assert_eq!(rfc3339(r.reset_at), "2026-11-23T00:00:00.000Z");
        assert!(s
            .admit(t("2026-11-23T00:00:00Z"), &limits, "c", fixed(0, 0), false)
            .is_ok());
    }

    #[test]
    fn reservations_block_until_settled_to_real_use() {
        let limits = Limits {
            tokens_per_day: Some(100),
            ..Default::default()
        };
        let mut s = CounterState::default();
        let now = t("2026-11-22T10:00:00Z");
        assert_eq!(s.admit(now, &limits, "a", fixed(10, 50), false), Ok(50));
        // 60 held: a request needing 50 does not fit, one needing 40 does.
        assert_eq!(
            s.admit(now, &limits, "b", fixed(10, 40), false)
                .unwrap_err()
                .scope,
            Scope::TokensPerDay
        );
        assert_eq!(s.admit(now, &limits, "c", fixed(10, 30), false), Ok(30));
        assert!(s.settle(now, "a", 15));
        assert!(!s.settle(now, "a", 15), "settling twice counts once");
        assert!(s.settle(now, "c", 20));
        assert_eq!(s.day_tokens, 35);
        assert!(s.leases.is_empty());
        let w = s.windows(now, &limits);
        assert_eq!((w[0].used, w[0].remaining), (35, 65));
    }

    #[test]
    fn flexible_requests_get_what_is_left_and_extend() {
        let limits = Limits {
            tokens_per_day: Some(100),
            tokens_per_month: Some(1000),
            ..Default::default()
        };
        let mut s = CounterState::default();
        let now = t("2026-11-22T10:00:00Z");
        let res = Reservation {
            prompt: 20,
            completion: 256,
            flexible: true,
        };
        assert_eq!(s.admit(now, &limits, "a", res, true), Ok(80));
        assert_eq!(s.extend(now, &limits, "a", 64), 0, "budget spent");
        assert_eq!(
            s.admit(now, &limits, "b", res, true).unwrap_err().scope,
            Scope::TokensPerDay
        );
        assert!(s.settle(now, "a", 50));
        assert_eq!(
            s.admit(
                now,
                &limits,
                "b",
                Reservation {
                    prompt: 5,
                    completion: 10,
                    flexible: true
                },
                true
            ),
            Ok(10)
        );
        assert_eq!(s.extend(now, &limits, "b", 64), 35);
        assert_eq!(s.extend(now, &limits, "nope", 64), 0);
    }

    #[test]
    fn monthly_budget_spans_days_and_resets_with_the_month() {
        let limits = Limits {
            tokens_per_month: Some(100),
            ..Default::default()
        };
        let mut s = CounterState::default();
        assert!(s
            .admit(t("2026-11-01T00:00:00Z"), &limits, "a", fixed(0, 60), false)
            .is_ok());
        assert!(s.settle(t("2026-11-01T00:00:01Z"), "a", 60));
        let r = s
            .admit(t("2026-11-30T12:00:00Z"), &limits, "b", fixed(0, 41), false)
            .unwrap_err();
        assert_eq!(r.scope, Scope::TokensPerMonth);
        assert_eq!(rfc3339(r.reset_at), "2026-12-01T00:00:00.000Z");
        assert!(s
            .admit(
                t("2026-12-01T00:00:00Z"),
                &limits,
                "c",
                fixed(0, 100),
                false
            )
            .is_ok());
    }

    #[test]
    fn concurrent_streams_are_limited_and_released() {
        let limits = Limits {
            max_concurrent_streams: Some(1),
            ..Default::default()
        };
        let mut s = CounterState::default();
        let now = t("2026-11-22T10:00:00Z");
        assert!(s.admit(now, &limits, "a", fixed(0, 0), true).is_ok());
        assert_eq!(
            s.admit(now, &limits, "b", fixed(0, 0), true)
                .unwrap_err()
                .scope,
            Scope::MaxConcurrentStreams
        );
        assert!(
            s.admit(now, &limits, "c", fixed(0, 0), false).is_ok(),
            "non-streamed requests are not streams"
        );
        s.settle(now, "a", 0);
        assert!(s.admit(now, &limits, "d", fixed(0, 0), true).is_ok());
    }

    #[test]
    fn abandoned_leases_expire_and_count_their_reservation() {
        let limits = Limits {
            tokens_per_day: Some(100),
            max_concurrent_streams: Some(1),
            ..Default::default()
        };
        let mut s = CounterState::default();
        let now = t("2026-11-22T10:00:00Z");
        assert!(s.admit(now, &limits, "a", fixed(5, 20), true).is_ok());
        assert!(s
            .admit(now + LEASE_TTL_MS - 1, &limits, "b", fixed(0, 1), true)
            .is_err());
        assert!(s
            .admit(now + LEASE_TTL_MS, &limits, "c", fixed(0, 1), true)
            .is_ok());
        assert_eq!(s.day_tokens, 25);
    }

    #[test]
    fn exhausted_names_the_spent_token_window() {
        let limits = Limits {
            tokens_per_day: Some(10),
            tokens_per_month: Some(1000),
            requests_per_minute: Some(5),
            ..Default::default()
        };
        let mut s = CounterState::default();
        let now = t("2026-11-22T10:00:00Z");
        s.admit(now, &limits, "a", fixed(0, 10), true).unwrap();
        let r = Refusal::exhausted(&s.windows(now, &limits), now);
        assert_eq!((r.scope, r.limit, r.used), (Scope::TokensPerDay, 10, 10));
        assert_eq!(rfc3339(r.reset_at), "2026-11-23T00:00:00.000Z");
    }

    #[test]
    fn refusal_becomes_a_429_problem() {
        let r = Refusal {
            scope: Scope::TokensPerDay,
            limit: 100,
            used: 100,
            reset_at: t("2026-11-23T00:00:00Z"),
            retry_after_s: 7,
        };
        let e = r.to_error("free");
        assert_eq!((e.status, e.kind), (429, "quota-exceeded"));
        let p = e.to_problem();
        assert_eq!(p["scope"], "tokens_per_day");
        assert_eq!(p["reset"], "2026-11-23T00:00:00.000Z");
        assert_eq!(p["plan"], "free");
        assert!(e
            .headers
            .contains(&("Retry-After".to_string(), "7".to_string())));
        let rpm = Refusal {
            scope: Scope::RequestsPerMinute,
            limit: 1,
            used: 1,
            reset_at: 0,
            retry_after_s: 1,
        };
        assert_eq!(rpm.to_error("p").kind, "rate-limited");
    }
}
