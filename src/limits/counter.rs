//! The per-consumer counter: sliding-minute and UTC calendar windows for requests, tokens and spend,
//! with every admitted request's worst case held as a lease until it is settled to real use. Pure and
//! synchronous: the Durable Object runs each operation without awaiting in between, which is what
//! makes admission exact under concurrency.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Problem};
use crate::limits::frozen::Frozen;
use crate::limits::plan::Limits;
use crate::limits::spend::{micro_to_usd, Price};
use crate::limits::standing::Standing;
use crate::time::{day_start, month_bounds, rfc3339};
use crate::usage::{Ended, UsageRecord};

pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 86_400_000;
/// A lease its request stopped renewing (the isolate is gone) expires this long after the last
/// renewal, and is then booked at its full reservation with an `abandoned` usage record. A live
/// request renews it three times per TTL.
pub const LEASE_TTL_MS: i64 = 60_000;

fn default_ttl() -> i64 {
    LEASE_TTL_MS
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    RequestsPerMinute,
    RequestsPerDay,
    TokensPerDay,
    TokensPerMonth,
    SpendPerDayUsd,
    SpendPerMonthUsd,
    MaxConcurrentStreams,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::RequestsPerMinute => "requests_per_minute",
            Scope::RequestsPerDay => "requests_per_day",
            Scope::TokensPerDay => "tokens_per_day",
            Scope::TokensPerMonth => "tokens_per_month",
            Scope::SpendPerDayUsd => "spend_per_day_usd",
            Scope::SpendPerMonthUsd => "spend_per_month_usd",
            Scope::MaxConcurrentStreams => "max_concurrent_streams",
        }
    }

    /// Short-term limits are rate limits; calendar budgets are quotas; money is a budget.
    pub fn problem(self) -> Problem {
        match self {
            Scope::RequestsPerMinute | Scope::MaxConcurrentStreams => Problem::RateLimited,
            Scope::SpendPerDayUsd | Scope::SpendPerMonthUsd => Problem::BudgetExceeded,
            _ => Problem::QuotaExceeded,
        }
    }

    pub fn is_tokens(self) -> bool {
        matches!(self, Scope::TokensPerDay | Scope::TokensPerMonth)
    }

    pub fn is_spend(self) -> bool {
        matches!(self, Scope::SpendPerDayUsd | Scope::SpendPerMonthUsd)
    }

    /// Calendar windows end at a fixed time: retrying sooner cannot succeed.
    pub fn is_calendar(self) -> bool {
        !matches!(self, Scope::RequestsPerMinute | Scope::MaxConcurrentStreams)
    }

    /// `(singular, plural)` of what the window counts, for refusal details.
    fn unit(self) -> (&'static str, &'static str) {
        match self {
            Scope::RequestsPerMinute | Scope::RequestsPerDay => ("request", "requests"),
            Scope::TokensPerDay | Scope::TokensPerMonth => ("token", "tokens"),
            Scope::SpendPerDayUsd | Scope::SpendPerMonthUsd => ("", ""),
            Scope::MaxConcurrentStreams => ("concurrent stream", "concurrent streams"),
        }
    }

    fn period(self) -> &'static str {
        match self {
            Scope::RequestsPerMinute => " per minute",
            Scope::RequestsPerDay | Scope::TokensPerDay | Scope::SpendPerDayUsd => " per day",
            Scope::TokensPerMonth | Scope::SpendPerMonthUsd => " per month",
            Scope::MaxConcurrentStreams => "",
        }
    }

    /// An amount of this window's unit in words: `1 request`, `20 tokens`, `$0.010000`.
    fn amount(self, n: u64) -> String {
        if self.is_spend() {
            // Integer arithmetic: exact, and no float formatting code in the WASM.
            return format!("${}.{:06}", n / 1_000_000, n % 1_000_000);
        }
        let (one, many) = self.unit();
        format!("{n} {}", if n == 1 { one } else { many })
    }
}

/// A request's worst case, held until it is settled (or expires unrenewed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    /// Tokens held: the prompt bound plus the completion cap of every choice (plus extensions).
    pub reserved: u64,
    /// Micro-dollars held.
    #[serde(default)]
    pub spend: u64,
    pub stream: bool,
    pub expires_at: i64,
    /// How long the lease lives without a renewal.
    #[serde(default = "default_ttl")]
    pub ttl_ms: i64,
    #[serde(default)]
    pub price: Option<Price>,
    /// The usage record to file, completed at settlement (or as `abandoned` at expiry); its JSON is
    /// made once, not on every write of the state.
    #[serde(default)]
    pub record: Option<Frozen<UsageRecord>>,
}

/// What a request asks to be admitted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    /// The upper bound of the prompt's tokens.
    pub prompt: u64,
    /// Choices asked for (`n`); each may generate up to the cap.
    pub n: u64,
    /// The completion cap per choice already chosen (the client's, within the plan's), if any.
    pub cap: Option<u64>,
    /// The model's price, when the API has one.
    pub price: Option<Price>,
    pub stream: bool,
    /// How long the lease lives without a renewal (`LEASE_TTL_MS` unless configured).
    #[serde(default = "default_ttl")]
    pub lease_ttl_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub scope: Scope,
    pub limit: u64,
    /// What is booked in the window.
    pub used: u64,
    /// What requests still in flight hold in the window (token and spend windows).
    #[serde(default)]
    pub held: u64,
    /// What this request needed at least (0 for request counts and streams).
    #[serde(default)]
    pub needed: u64,
    /// When the window frees up (epoch ms).
    pub reset_at: i64,
    pub retry_after_s: u64,
}

impl Refusal {
    /// The refusal for a budget found spent mid-stream: the token or spend window with least left.
    pub fn exhausted(windows: &[Window], now: i64) -> Refusal {
        let w = windows
            .iter()
            .filter(|w| w.scope.is_tokens() || w.scope.is_spend())
            .min_by_key(|w| (w.remaining, w.reset_at));
        match w {
            // What this very stream holds is spent as far as it is concerned: counted as used.
            Some(w) => Refusal {
                scope: w.scope,
                limit: w.limit,
                used: w.used.saturating_add(w.held),
                held: 0,
                needed: 1,
                reset_at: w.reset_at,
                retry_after_s: retry_secs(now, w.reset_at),
            },
            None => Refusal {
                scope: Scope::TokensPerDay,
                limit: 0,
                used: 0,
                held: 0,
                needed: 1,
                reset_at: now,
                retry_after_s: 1,
            },
        }
    }

    /// The request would fit once the requests in flight settle (they may use less than they
    /// hold): worth retrying in a moment, not only when the window resets.
    pub fn in_flight(&self) -> bool {
        self.held > 0 && self.used.saturating_add(self.needed) <= self.limit
    }

    pub fn remaining(&self) -> u64 {
        self.limit
            .saturating_sub(self.used)
            .saturating_sub(self.held)
    }

    pub fn to_error(&self, plan: &str) -> Error {
        let s = self.scope;
        let left = self.remaining();
        let why = if self.needed > left {
            format!(
                ", and this request needs at least {}",
                s.amount(self.needed)
            )
        } else {
            String::new()
        };
        let count = |n: u64| {
            if s.is_spend() {
                s.amount(n)
            } else {
                n.to_string()
            }
        };
        let held = match self.held {
            0 => String::new(),
            n => format!(", {} held by requests in flight", count(n)),
        };
        let when = if self.in_flight() {
            format!("when they finish (in {} s)", self.retry_after_s)
        } else {
            format!(
                "after {} (in {} s)",
                rfc3339(self.reset_at),
                self.retry_after_s
            )
        };
        let detail = format!(
            "Your plan `{plan}` allows {}{}; {} used{held}, {} remaining{why}. Try again {when}.",
            s.amount(self.limit),
            s.period(),
            count(self.used),
            count(left),
        );
        let number = |n: u64| -> serde_json::Value {
            if s.is_spend() {
                micro_to_usd(n).into()
            } else {
                n.into()
            }
        };
        let mut e = Error::new(s.problem(), detail)
            .with_field("scope", s.as_str())
            .with_field("limit", number(self.limit))
            .with_field("used", number(self.used));
        if s.is_tokens() || s.is_spend() {
            e = e.with_field("held", number(self.held));
        }
        let e = e
            .with_field("remaining", number(left))
            .with_field("reset", rfc3339(self.reset_at))
            .with_field("plan", plan)
            .with_header("Retry-After", self.retry_after_s.to_string());
        if s.is_calendar() && !self.in_flight() {
            // Hours away: clients that retry on 429 should give up, not sleep until then.
            e.with_header("x-should-retry", "false")
        } else {
            e
        }
    }
}

/// One window's standing, for headers and the usage endpoint (spend in micro-dollars).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub scope: Scope,
    pub limit: u64,
    /// What is booked in the window.
    pub used: u64,
    /// What requests still in flight hold (token and spend windows): `remaining` leaves it out.
    #[serde(default)]
    pub held: u64,
    pub remaining: u64,
    pub reset_at: i64,
    pub window_s: u64,
}

/// The counter's stored state. New fields carry serde defaults so older state stays readable.
/// How many admission times a plan without a per-minute limit keeps (the log is stored with every
/// operation, so it stays short).
pub const MINUTE_LOG_UNLIMITED: u64 = 256;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterState {
    /// Admission times in the last minute: at most `requests_per_minute` of them (or
    /// `MINUTE_LOG_UNLIMITED` on a plan without that limit), newest last. Stored compactly.
    #[serde(with = "crate::limits::minute_log")]
    pub minute: VecDeque<i64>,
    pub day_start: i64,
    pub day_requests: u64,
    pub day_tokens: u64,
    pub month_start: i64,
    pub month_tokens: u64,
    #[serde(default)]
    pub day_spend: u64,
    #[serde(default)]
    pub month_spend: u64,
    pub leases: Vec<Lease>,
    /// Whether the consumer may call at all, and on which plan.
    #[serde(default)]
    pub standing: Standing,
    /// Usage records completed by the last operation, for the caller to file (never stored here).
    #[serde(skip)]
    pub filed: Vec<UsageRecord>,
}

/// The token windows as they will stand once a request that holds `held` tokens books `booked`
/// instead (its answer's headers then say what is really left); other windows as they are.
pub fn after_settling(windows: &[Window], held: u64, booked: u64) -> Vec<Window> {
    windows
        .iter()
        .map(|w| {
            if !w.scope.is_tokens() {
                return w.clone();
            }
            let used = w.used.saturating_add(booked);
            let held = w.held.saturating_sub(held);
            Window {
                used,
                held,
                remaining: w.limit.saturating_sub(used).saturating_sub(held),
                ..w.clone()
            }
        })
        .collect()
}

/// A token or spend window with a limit: what is booked in it, and what leases hold.
struct Budget {
    scope: Scope,
    limit: u64,
    used: u64,
    held: u64,
    reset_at: i64,
}

impl Budget {
    fn left(&self) -> u64 {
        self.limit
            .saturating_sub(self.used)
            .saturating_sub(self.held)
    }
}

/// When a budget is held by requests in flight: retry after this many seconds.
const IN_FLIGHT_RETRY_S: u64 = 1;

fn retry_secs(now: i64, at: i64) -> u64 {
    ((at - now).max(0) as u64).div_ceil(1000).max(1)
}

/// How a request ended, as the gateway saw it; the counter turns it into the usage record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: u16,
    pub ended: Ended,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    #[serde(default)]
    pub cached_tokens: u64,
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// Counts are the gateway's bounds, not the upstream's report.
    pub estimated: bool,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    /// The upstream's own request id, when it sent one.
    #[serde(default)]
    pub upstream_request_id: Option<String>,
    /// What the upstream said when it failed (for the owner's usage record).
    #[serde(default)]
    pub upstream_error: Option<String>,
    /// Who answered when it was not the model asked for first (a fallback): the record names it,
    /// and its price is the one booked.
    #[serde(default)]
    pub answered: Option<Answered>,
    /// Every try upstream, in order.
    #[serde(default)]
    pub attempts: Vec<crate::usage::Attempt>,
}

/// The model and provider that answered, and that model's price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answered {
    pub model: String,
    pub provider: Option<String>,
    pub price: Option<Price>,
}

impl CounterState {
    /// Admissions in the last minute as a limit of `limit` counts them (the log may hold more, kept
    /// under an earlier plan).
    fn minute_used(&self, limit: u64) -> u64 {
        (self.minute.len() as u64).min(limit)
    }

    /// Moves the windows to `now`: prunes the minute log, starts a new day or month, and books
    /// leases whose request stopped renewing them at their full reservation (filing their record).
    pub fn roll(&mut self, now: i64) {
        while self.minute.front().is_some_and(|t| *t <= now - MINUTE_MS) {
            self.minute.pop_front();
        }
        // Windows only move forward: an operation stamped earlier (a settlement sent a moment after
        // it was made, another isolate's clock) never takes the day or month back and empties it.
        let day = day_start(now);
        if day > self.day_start {
            self.day_start = day;
            self.day_requests = 0;
            self.day_tokens = 0;
            self.day_spend = 0;
        }
        let (month, _) = month_bounds(now);
        if month > self.month_start {
            self.month_start = month;
            self.month_tokens = 0;
            self.month_spend = 0;
        }
        let (expired, live): (Vec<Lease>, Vec<Lease>) =
            self.leases.drain(..).partition(|l| l.expires_at <= now);
        self.leases = live;
        for l in expired {
            self.book(l.reserved, l.spend);
            if let Some(mut record) = l.record.map(Frozen::into_inner) {
                let prompt = record.prompt_bound.min(l.reserved);
                record.prompt_tokens = prompt;
                record.completion_tokens = l.reserved - prompt;
                record.total_tokens = l.reserved;
                record.cost_micro = l.spend;
                record.estimated = true;
                record.ended = Ended::Abandoned;
                record.latency_ms = (now - record.created_at).max(0) as u64;
                self.filed.push(record);
            }
        }
    }

    fn book(&mut self, tokens: u64, spend: u64) {
        self.day_tokens = self.day_tokens.saturating_add(tokens);
        self.month_tokens = self.month_tokens.saturating_add(tokens);
        self.day_spend = self.day_spend.saturating_add(spend);
        self.month_spend = self.month_spend.saturating_add(spend);
    }

    /// The earliest time a lease expires, so the object can wake up to book it.
    pub fn next_expiry(&self) -> Option<i64> {
        self.leases.iter().map(|l| l.expires_at).min()
    }

    fn held(&self) -> (u64, u64) {
        self.leases.iter().fold((0u64, 0u64), |(t, s), l| {
            (t.saturating_add(l.reserved), s.saturating_add(l.spend))
        })
    }

    fn streams(&self) -> u64 {
        self.leases.iter().filter(|l| l.stream).count() as u64
    }

    /// Every limited token and spend window: what is booked in it and what leases hold.
    fn budgets(&self, now: i64, limits: &Limits) -> Vec<Budget> {
        let (tokens, spend) = self.held();
        let (_, month_end) = month_bounds(now);
        let next_day = self.day_start + DAY_MS;
        [
            (
                Scope::TokensPerDay,
                limits.tokens_per_day,
                self.day_tokens,
                tokens,
                next_day,
            ),
            (
                Scope::TokensPerMonth,
                limits.tokens_per_month,
                self.month_tokens,
                tokens,
                month_end,
            ),
            (
                Scope::SpendPerDayUsd,
                limits.spend_per_day_micro,
                self.day_spend,
                spend,
                next_day,
            ),
            (
                Scope::SpendPerMonthUsd,
                limits.spend_per_month_micro,
                self.month_spend,
                spend,
                month_end,
            ),
        ]
        .into_iter()
        .filter_map(|(scope, limit, used, held, reset_at)| {
            limit.map(|limit| Budget {
                scope,
                limit,
                used,
                held,
                reset_at,
            })
        })
        .collect()
    }

    /// Room left in the tightest window of each kind: (tokens, micro-dollars); `None` is unlimited.
    fn room(&self, now: i64, limits: &Limits) -> (Option<u64>, Option<u64>) {
        let mut room = (None::<u64>, None::<u64>);
        for b in self.budgets(now, limits) {
            let left = b.left();
            let slot = if b.scope.is_spend() {
                &mut room.1
            } else {
                &mut room.0
            };
            *slot = Some(slot.map_or(left, |r: u64| r.min(left)));
        }
        room
    }

    /// The refusal naming the tightest window of the given kind.
    /// A request that would fit once the requests in flight settle (they may use less than they
    /// hold) is told to retry in a moment; otherwise when the window resets.
    fn budget_refusal(&self, now: i64, limits: &Limits, spend: bool, needed: u64) -> Refusal {
        let tightest = self
            .budgets(now, limits)
            .into_iter()
            .filter(|b| b.scope.is_spend() == spend)
            .min_by_key(|b| (b.left(), b.reset_at));
        let b = tightest.unwrap_or(Budget {
            scope: Scope::TokensPerDay,
            limit: 0,
            used: 0,
            held: 0,
            reset_at: now,
        });
        let mut refusal = Refusal {
            scope: b.scope,
            limit: b.limit,
            used: b.used,
            held: b.held,
            needed,
            reset_at: b.reset_at,
            retry_after_s: retry_secs(now, b.reset_at),
        };
        if refusal.in_flight() {
            refusal.retry_after_s = IN_FLIGHT_RETRY_S;
        }
        refusal
    }

    fn request_refusal(&self, now: i64, limits: &Limits, stream: bool) -> Option<Refusal> {
        let refusal = |scope, limit, used, reset_at| Refusal {
            scope,
            limit,
            used,
            held: 0,
            needed: 0,
            reset_at,
            retry_after_s: retry_secs(now, reset_at),
        };
        if let (true, Some(l)) = (stream, limits.max_concurrent_streams) {
            let used = self.streams();
            if used >= l {
                return Some(refusal(Scope::MaxConcurrentStreams, l, used, now + 1000));
            }
        }
        if let Some(l) = limits.requests_per_minute {
            let used = self.minute_used(l);
            if used >= l {
                // A slot frees when the l-th most recent admission leaves the minute.
                let oldest_counted = self.minute.len().saturating_sub(l as usize);
                let at = self
                    .minute
                    .get(oldest_counted)
                    .map_or(now, |t| t + MINUTE_MS);
                return Some(refusal(Scope::RequestsPerMinute, l, used, at));
            }
        }
        if let Some(l) = limits.requests_per_day {
            if self.day_requests >= l {
                return Some(refusal(
                    Scope::RequestsPerDay,
                    l,
                    self.day_requests,
                    self.day_start + DAY_MS,
                ));
            }
        }
        None
    }

    /// Admits one request or says which limit refuses it. The completion cap per choice is the
    /// smallest of the request's own cap and what every token and spend window has left after the
    /// prompt bound, divided by `n`; less than one token per choice is a refusal. On success the
    /// request is counted and its worst case (prompt bound + cap × n, and its price) is held under
    /// `lease_id`. Returns the cap to send upstream (`None`: nothing limits the completion).
    pub fn admit(
        &mut self,
        now: i64,
        limits: &Limits,
        lease_id: &str,
        ask: Ask,
        record: Option<UsageRecord>,
    ) -> Result<Option<u64>, Refusal> {
        self.roll(now);
        if let Some(refusal) = self.request_refusal(now, limits, ask.stream) {
            return Err(refusal);
        }
        let n = ask.n.max(1);
        let (token_room, spend_room) = self.room(now, limits);
        let mut cap = ask.cap;
        if let Some(room) = token_room {
            let least = ask.prompt.saturating_add(n);
            if room < least {
                return Err(self.budget_refusal(now, limits, false, least));
            }
            cap = Some(cap.map_or(u64::MAX, |c| c).min((room - ask.prompt) / n));
        }
        if let Some(room) = spend_room {
            // A spend limit without a price is refused before the counter; zero cost otherwise.
            let price = ask.price.unwrap_or(Price {
                input: 0,
                output: 0,
                cached_input: 0,
            });
            let least = price.reserve_micro(ask.prompt, n);
            if room < least {
                return Err(self.budget_refusal(now, limits, true, least));
            }
            if let Some(by_spend) = price.completion_cap(room, ask.prompt, n) {
                cap = Some(cap.map_or(by_spend, |c| c.min(by_spend)));
            }
        }
        let completion = cap.unwrap_or(0).saturating_mul(n);
        let reserved = ask.prompt.saturating_add(completion);
        let spend = ask
            .price
            .map_or(0, |p| p.reserve_micro(ask.prompt, completion));
        self.minute.push_back(now);
        // Deciding "at most L in any minute" needs only the last L admissions; without a limit the
        // last `MINUTE_LOG_UNLIMITED` are kept, so a switch to a plan with one counts them.
        let keep = limits
            .requests_per_minute
            .unwrap_or(MINUTE_LOG_UNLIMITED)
            .max(1);
        while self.minute.len() as u64 > keep {
            self.minute.pop_front();
        }
        self.day_requests += 1;
        let record = record.map(|mut r| {
            r.max_tokens = cap;
            Frozen::new(r)
        });
        self.leases.push(Lease {
            id: lease_id.to_string(),
            reserved,
            spend,
            stream: ask.stream,
            expires_at: now + ask.lease_ttl_ms,
            ttl_ms: ask.lease_ttl_ms,
            price: ask.price,
            record,
        });
        Ok(cap)
    }

    /// Grows a live lease by up to `want` completion tokens, as far as every budget allows, and
    /// renews it; returns what was granted (0 when a budget is spent or the lease is unknown).
    pub fn extend(&mut self, now: i64, limits: &Limits, lease_id: &str, want: u64) -> u64 {
        self.roll(now);
        let (token_room, spend_room) = self.room(now, limits);
        let Some(lease) = self.leases.iter_mut().find(|l| l.id == lease_id) else {
            return 0;
        };
        let by_spend = match (spend_room, lease.price) {
            (Some(room), Some(price)) => price.tokens_for(room),
            (Some(_), None) => None,
            (None, _) => None,
        };
        let grant = [token_room, by_spend]
            .into_iter()
            .flatten()
            .fold(want, u64::min);
        lease.reserved = lease.reserved.saturating_add(grant);
        lease.spend = lease
            .spend
            .saturating_add(lease.price.map_or(0, |p| p.reserve_micro(0, grant)));
        lease.expires_at = now + lease.ttl_ms;
        grant
    }

    /// Keeps a live request's lease from expiring; false when it is gone (already booked).
    pub fn renew(&mut self, now: i64, lease_id: &str) -> bool {
        self.roll(now);
        match self.leases.iter_mut().find(|l| l.id == lease_id) {
            Some(lease) => {
                lease.expires_at = now + lease.ttl_ms;
                true
            }
            None => false,
        }
    }

    /// Ends a lease and books the request's real use, however far it exceeds the reservation (an
    /// upstream that ignored the cap is never hidden; the record says `overrun`). Returns false for
    /// an unknown lease (already settled, or expired and booked), so nothing is counted twice.
    pub fn settle(&mut self, now: i64, lease_id: &str, outcome: &Outcome) -> bool {
        self.roll(now);
        let Some(pos) = self.leases.iter().position(|l| l.id == lease_id) else {
            return false;
        };
        let lease = self.leases.swap_remove(pos);
        let tokens = outcome
            .prompt_tokens
            .saturating_add(outcome.completion_tokens);
        // The reservation held the dearest of the models that could answer; what is booked is the
        // price of the one that did.
        let price = match &outcome.answered {
            Some(a) => a.price,
            None => lease.price,
        };
        let cost = price.map_or(0, |p| {
            p.cost_micro(
                outcome.prompt_tokens,
                outcome.cached_tokens,
                outcome.completion_tokens,
            )
        });
        self.book(tokens, cost);
        if let Some(mut record) = lease.record.map(Frozen::into_inner) {
            record.status = outcome.status;
            record.ended = outcome.ended;
            record.prompt_tokens = outcome.prompt_tokens;
            record.completion_tokens = outcome.completion_tokens;
            record.total_tokens = tokens;
            record.cached_tokens = outcome.cached_tokens;
            record.reasoning_tokens = outcome.reasoning_tokens;
            record.estimated = outcome.estimated;
            record.cost_micro = cost;
            // The upstream's own report says it generated past the cap it was sent. An estimate
            // cannot say so: output bytes over-count tokens, and a stream past its cap in bytes was
            // extended, not overrun.
            let cap = record.max_tokens.map(|c| c.saturating_mul(record.n.max(1)));
            record.overrun =
                !outcome.estimated && cap.is_some_and(|c| outcome.completion_tokens > c);
            record.latency_ms = outcome.latency_ms;
            record.ttft_ms = outcome.ttft_ms;
            record.upstream_request_id = outcome.upstream_request_id.clone();
            record.upstream_error = outcome.upstream_error.clone();
            if let Some(a) = &outcome.answered {
                record.model = a.model.clone();
                record.provider = a.provider.clone();
            }
            record.attempts = outcome.attempts.clone();
            self.filed.push(record);
        }
        true
    }

    /// Where each limited window stands (reservations count as used).
    pub fn windows(&mut self, now: i64, limits: &Limits) -> Vec<Window> {
        self.roll(now);
        let counted = |scope, limit: Option<u64>, used: u64, reset_at: i64, window_s| {
            limit.map(|limit| Window {
                scope,
                limit,
                used,
                held: 0,
                remaining: limit.saturating_sub(used),
                reset_at,
                window_s,
            })
        };
        let minute_reset = self.minute.back().map_or(now, |t| t + MINUTE_MS);
        let mut out: Vec<Window> = [
            counted(
                Scope::RequestsPerMinute,
                limits.requests_per_minute,
                limits
                    .requests_per_minute
                    .map_or(self.minute.len() as u64, |l| self.minute_used(l)),
                minute_reset,
                60,
            ),
            counted(
                Scope::RequestsPerDay,
                limits.requests_per_day,
                self.day_requests,
                self.day_start + DAY_MS,
                86_400,
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        let (month_start, month_end) = month_bounds(now);
        let month_s = ((month_end - month_start) / 1000) as u64;
        for b in self.budgets(now, limits) {
            let monthly = matches!(b.scope, Scope::TokensPerMonth | Scope::SpendPerMonthUsd);
            out.push(Window {
                scope: b.scope,
                limit: b.limit,
                used: b.used,
                held: b.held,
                remaining: b.left(),
                reset_at: b.reset_at,
                window_s: if monthly { month_s } else { 86_400 },
            });
        }
        out.extend(counted(
            Scope::MaxConcurrentStreams,
            limits.max_concurrent_streams,
            self.streams(),
            now,
            0,
        ));
        out
    }
}

#[cfg(test)]
mod tests;
