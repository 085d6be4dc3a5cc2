//! Unit tests of the counter: windows, caps, leases, spend, and the stored format.

use super::*;
use crate::limits::spend::usd_to_millionths;
use crate::time::parse_rfc3339;

fn t(s: &str) -> i64 {
    parse_rfc3339(s).unwrap()
}
fn ask(prompt: u64, cap: Option<u64>, n: u64) -> Ask {
    Ask {
        prompt,
        n,
        cap,
        price: None,
        stream: false,
        lease_ttl_ms: LEASE_TTL_MS,
    }
}
fn fixed(prompt: u64, completion: u64) -> Ask {
    ask(prompt, Some(completion), 1)
}
fn streamed(a: Ask) -> Ask {
    Ask { stream: true, ..a }
}
fn record(id: &str) -> Option<UsageRecord> {
    Some(UsageRecord {
        id: id.into(),
        n: 1,
        ..UsageRecord::default()
    })
}
fn done(prompt: u64, completion: u64) -> Outcome {
    Outcome {
        status: 200,
        prompt_tokens: prompt,
        completion_tokens: completion,
        ..Outcome::default()
    }
}
fn price(input: f64, output: f64) -> Price {
    let input = usd_to_millionths("i", input).unwrap();
    Price {
        input,
        output: usd_to_millionths("o", output).unwrap(),
        cached_input: input,
    }
}
const NOW: &str = "2026-11-22T10:00:00Z";

#[test]
fn exactly_the_limit_is_admitted_in_a_burst() {
    let limits = Limits {
        requests_per_minute: Some(10),
        ..Default::default()
    };
    let mut s = CounterState::default();
    let now = t(NOW);
    let admitted = (0..50)
        .filter(|i| {
            s.admit(now, &limits, &format!("l{i}"), fixed(1, 1), None)
                .is_ok()
        })
        .count();
    assert_eq!(admitted, 10);
    let refusal = s.admit(now, &limits, "x", fixed(1, 1), None).unwrap_err();
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
    let t0 = t(NOW);
    assert!(s.admit(t0, &limits, "a", fixed(0, 0), None).is_ok());
    assert!(s
        .admit(t0 + 30_000, &limits, "b", fixed(0, 0), None)
        .is_ok());
    let r = s
        .admit(t0 + 59_999, &limits, "c", fixed(0, 0), None)
        .unwrap_err();
    assert_eq!(r.reset_at, t0 + 60_000);
    assert_eq!(r.retry_after_s, 1);
    assert!(
        s.admit(t0 + 60_000, &limits, "d", fixed(0, 0), None)
            .is_ok(),
        "the first admission left the window"
    );
    assert!(s
        .admit(t0 + 60_001, &limits, "e", fixed(0, 0), None)
        .is_err());
}

#[test]
fn the_minute_log_keeps_only_what_a_decision_needs() {
    let t0 = t(NOW);
    let mut s = CounterState::default();
    for i in 0..300 {
        let id = format!("u{i}");
        assert!(s
            .admit(t0 + i, &Limits::default(), &id, fixed(0, 0), None)
            .is_ok());
    }
    assert_eq!(
        s.minute.len() as u64,
        MINUTE_LOG_UNLIMITED,
        "unlimited: a bounded log"
    );
    let three = Limits {
        requests_per_minute: Some(3),
        ..Default::default()
    };
    let r = s
        .admit(t0 + 400, &three, "x", fixed(0, 0), None)
        .unwrap_err();
    assert_eq!(
        r.reset_at,
        t0 + 297 + 60_000,
        "the kept log still counts the last minute"
    );
    let mut limited = CounterState::default();
    for i in 0..3 {
        let id = format!("l{i}");
        assert!(limited
            .admit(t0 + i * 10_000, &three, &id, fixed(0, 0), None)
            .is_ok());
    }
    let r = limited
        .admit(t0 + 20_000, &three, "l3", fixed(0, 0), None)
        .unwrap_err();
    assert_eq!(
        r.reset_at,
        t0 + 60_000,
        "the oldest admission frees the slot"
    );
    assert!(limited
        .admit(t0 + 60_000, &three, "l4", fixed(0, 0), None)
        .is_ok());
    assert_eq!(limited.minute.len(), 3, "at most the limit is kept");
}

#[test]
fn daily_requests_reset_at_utc_midnight() {
    let limits = Limits {
        requests_per_day: Some(1),
        ..Default::default()
    };
    let mut s = CounterState::default();
    assert!(s
        .admit(t("2026-11-22T23:59:59Z"), &limits, "a", fixed(0, 0), None)
        .is_ok());
    let r = s
        .admit(
            t("2026-11-22T23:59:59.500Z"),
            &limits,
            "b",
            fixed(0, 0),
            None,
        )
        .unwrap_err();
    assert_eq!(r.scope, Scope::RequestsPerDay);
    assert_eq!(rfc3339(r.reset_at), "2026-11-23T00:00:00.000Z");
    assert!(s
        .admit(t("2026-11-23T00:00:00Z"), &limits, "c", fixed(0, 0), None)
        .is_ok());
}

#[test]
fn an_operation_stamped_before_midnight_does_not_take_the_new_day_back() {
    let limits = Limits {
        tokens_per_day: Some(100),
        ..Default::default()
    };
    let mut s = CounterState::default();
    assert!(s
        .admit(t("2026-11-22T23:59:59Z"), &limits, "a", fixed(10, 10), None)
        .is_ok());
    assert!(s
        .admit(t("2026-11-23T00:00:01Z"), &limits, "b", fixed(10, 80), None)
        .is_ok());
    // `a`'s settlement was made before midnight and arrives after `b` rolled the day over.
    assert!(s.settle(t("2026-11-22T23:59:59.900Z"), "a", &done(10, 10)));
    assert!(s.settle(t("2026-11-23T00:00:02Z"), "b", &done(10, 80)));
    assert_eq!(s.day_start, t("2026-11-23T00:00:00Z"));
    // The new day holds both: the late settlement lands in it rather than emptying it.
    assert_eq!(s.day_tokens, 110);
    assert!(s
        .admit(t("2026-11-23T00:00:03Z"), &limits, "c", fixed(1, 1), None)
        .is_err());
}

#[test]
fn the_cap_is_what_the_window_has_left_after_the_prompt() {
    let limits = Limits {
        tokens_per_day: Some(10_000),
        ..Default::default()
    };
    let mut s = CounterState::default();
    let now = t(NOW);
    // No cap of its own: it gets the whole room after its prompt bound.
    assert_eq!(
        s.admit(now, &limits, "a", ask(100, None, 1), None),
        Ok(Some(9_900))
    );
    // The room is held: nothing fits until the first is settled.
    let r = s
        .admit(now, &limits, "b", ask(100, None, 1), None)
        .unwrap_err();
    assert_eq!(
        (r.scope, r.used, r.held, r.needed),
        (Scope::TokensPerDay, 0, 10_000, 101)
    );
    // It would fit once the first settles: a retry in a moment, not at midnight.
    assert!(r.in_flight());
    assert_eq!(r.retry_after_s, 1);
    let e = r.to_error("p");
    assert!(
        e.detail.contains(
            "allows 10000 tokens per day; 0 used, 10000 held by requests in flight, 0 remaining, \
             and this request needs at least 101 tokens. Try again when they finish (in 1 s)."
        ),
        "{}",
        e.detail
    );
    assert_eq!(e.to_problem()["held"], 10_000);
    assert!(e.headers.contains(&("Retry-After".into(), "1".into())));
    assert!(!e.headers.iter().any(|(k, _)| k == "x-should-retry"));
    assert!(s.settle(now, "a", &done(40, 60)));
    assert_eq!(
        s.admit(now, &limits, "b", ask(100, None, 1), None),
        Ok(Some(9_800))
    );
}

#[test]
fn a_request_that_cannot_fit_even_after_the_holds_waits_for_the_window() {
    let limits = Limits {
        tokens_per_day: Some(1_000),
        ..Default::default()
    };
    let mut s = CounterState::default();
    let now = t(NOW);
    s.admit(now, &limits, "a", ask(100, Some(100), 1), None)
        .unwrap();
    assert!(s.settle(now, "a", &done(100, 100)));
    s.admit(now, &limits, "b", ask(100, Some(100), 1), None)
        .unwrap();
    // 200 booked and 200 held: a 900-token prompt would not fit even if `b` used nothing.
    let r = s
        .admit(now, &limits, "c", ask(900, None, 1), None)
        .unwrap_err();
    assert_eq!((r.used, r.held, r.in_flight()), (200, 200, false));
    assert_eq!(r.retry_after_s, retry_secs(now, t("2026-11-23T00:00:00Z")));
    let e = r.to_error("p");
    assert!(e
        .detail
        .contains("200 used, 200 held by requests in flight, 600 remaining"));
    assert!(e
        .headers
        .contains(&("x-should-retry".into(), "false".into())));
    // A 700-token prompt would fit once `b` settles: retry in a moment.
    let r = s
        .admit(now, &limits, "d", ask(700, None, 1), None)
        .unwrap_err();
    assert!(r.in_flight(), "{r:?}");
    // The usage windows say the same: booked, held, and what is left besides both.
    let w = s.windows(now, &limits);
    assert_eq!((w[0].used, w[0].held, w[0].remaining), (200, 200, 600));
}

#[test]
fn sixty_uncapped_requests_never_book_more_than_the_day() {
    let limits = Limits {
        tokens_per_day: Some(10_000),
        ..Default::default()
    };
    let mut s = CounterState::default();
    let now = t(NOW);
    let mut caps = Vec::new();
    for i in 0..60 {
        if let Ok(cap) = s.admit(now, &limits, &format!("l{i}"), ask(30, None, 1), None) {
            caps.push((
                format!("l{i}"),
                cap.expect("a limited window always yields a cap"),
            ));
        }
    }
    // An honest upstream uses at most its cap; settling every admitted request books at most the day.
    for (id, cap) in &caps {
        assert!(s.settle(now, id, &done(30, *cap)));
    }
    assert!(s.day_tokens <= 10_000, "booked {}", s.day_tokens);
    assert_eq!(
        caps.len(),
        1,
        "the first takes the whole room when it names no cap"
    );
}

#[test]
fn n_choices_reserve_n_caps() {
    let limits = Limits {
        tokens_per_day: Some(1_000),
        ..Default::default()
    };
    let mut s = CounterState::default();
    let now = t(NOW);
    // 8 × 200 does not fit in 1000 - 40: the cap shrinks to what fits for eight choices.
    assert_eq!(
        s.admit(now, &limits, "a", ask(40, Some(200), 8), None),
        Ok(Some(120))
    );
    assert_eq!(s.leases[0].reserved, 40 + 8 * 120);
    assert!(s
        .admit(now, &limits, "b", ask(40, Some(1), 8), None)
        .is_err());
}

#[test]
fn less_than_one_token_per_choice_is_a_refusal() {
    let limits = Limits {
        tokens_per_day: Some(100),
        ..Default::default()
    };
    let mut s = CounterState::default();
    let now = t(NOW);
    let r = s
        .admit(now, &limits, "a", ask(98, Some(50), 3), None)
        .unwrap_err();
    assert_eq!(
        (r.scope, r.needed, r.remaining()),
        (Scope::TokensPerDay, 101, 100)
    );
    assert_eq!(
        s.admit(now, &limits, "a", ask(97, Some(50), 3), None),
        Ok(Some(1))
    );
}

#[test]
fn the_tightest_of_day_and_month_wins() {
    let limits = Limits {
        tokens_per_day: Some(1_000),
        tokens_per_month: Some(300),
        ..Default::default()
    };
    let mut s = CounterState::default();
    assert_eq!(
        s.admit(t(NOW), &limits, "a", ask(100, Some(5_000), 1), None),
        Ok(Some(200))
    );
    let r = s
        .admit(t(NOW), &limits, "b", ask(1, None, 1), None)
        .unwrap_err();
    assert_eq!(r.scope, Scope::TokensPerMonth);
}

#[test]
fn caps_never_overflow() {
    let limits = Limits {
        tokens_per_day: Some(u64::MAX),
        ..Default::default()
    };
    let mut s = CounterState::default();
    let cap = s.admit(t(NOW), &limits, "a", ask(u64::MAX - 10, None, 4), None);
    assert_eq!(cap, Ok(Some(2)));
    let mut s = CounterState::default();
    assert_eq!(
        s.admit(
            t(NOW),
            &Limits::default(),
            "a",
            ask(u64::MAX, Some(u64::MAX), u64::MAX),
            None
        ),
        Ok(Some(u64::MAX))
    );
    assert_eq!(s.leases[0].reserved, u64::MAX);
}

#[test]
fn spend_caps_the_completion_and_books_in_micro_dollars() {
    let limits = Limits {
        spend_per_day_micro: Some(10_000), // $0.01
        ..Default::default()
    };
    let p = price(0.15, 0.60);
    let mut s = CounterState::default();
    let now = t(NOW);
    let a = Ask {
        price: Some(p),
        ..ask(1_000, None, 1)
    };
    // $0.01 = 10⁴ µ$; the prompt bound costs 150 µ$; 9850 µ$ buys 16416 output tokens at 0.6 µ$.
    assert_eq!(s.admit(now, &limits, "a", a, record("a")), Ok(Some(16_416)));
    assert!(s.leases[0].spend <= 10_000);
    let r = s.admit(now, &limits, "b", a, None).unwrap_err();
    assert_eq!(r.scope, Scope::SpendPerDayUsd);
    assert_eq!(r.to_error("p").kind(), "budget-exceeded");
    assert!(s.settle(now, "a", &done(500, 1_000)));
    assert_eq!(s.filed[0].cost_micro, 75 + 600);
    assert_eq!(s.day_spend, 675);
}

#[test]
fn a_fallback_is_booked_at_its_own_price_and_named_in_the_record() {
    let limits = Limits {
        spend_per_day_micro: Some(10_000),
        ..Default::default()
    };
    let (dear, cheap) = (price(10.0, 50.0), price(2.0, 4.0));
    let mut s = CounterState::default();
    let now = t(NOW);
    // The reservation holds the dearer of the two that may answer.
    let a = Ask {
        price: Some(dear.dearest(&cheap)),
        ..ask(10, Some(100), 1)
    };
    assert_eq!(s.admit(now, &limits, "a", a, record("a")), Ok(Some(100)));
    assert_eq!(s.leases[0].spend, 10 * 10 + 100 * 50);
    let attempt = |provider: &str, status| crate::usage::Attempt {
        model: "m".into(),
        provider: Some(provider.into()),
        status,
        error: None,
        ms: 1,
    };
    let outcome = Outcome {
        answered: Some(Answered {
            model: "groq/llama".into(),
            provider: Some("groq".into()),
            price: Some(cheap),
        }),
        attempts: vec![attempt("anthropic", 529), attempt("groq", 200)],
        ..done(10, 20)
    };
    assert!(s.settle(now, "a", &outcome));
    let filed = &s.filed[0];
    assert_eq!(filed.cost_micro, 10 * 2 + 20 * 4);
    assert_eq!(s.day_spend, 100);
    assert_eq!(filed.model, "groq/llama");
    assert_eq!(filed.provider.as_deref(), Some("groq"));
    assert_eq!(filed.attempts.len(), 2);
    assert!(!filed.overrun);
}

#[test]
fn twenty_parallel_requests_on_a_cent_book_at_most_a_cent() {
    let limits = Limits {
        spend_per_day_micro: Some(10_000),
        ..Default::default()
    };
    let p = price(2.5, 10.0);
    let mut s = CounterState::default();
    let now = t(NOW);
    let a = Ask {
        price: Some(p),
        ..ask(200, Some(400), 1)
    };
    let admitted: Vec<(String, u64)> = (0..20)
        .filter_map(|i| {
            let id = format!("l{i}");
            s.admit(now, &limits, &id, a, None)
                .ok()
                .map(|cap| (id, cap.unwrap_or(0)))
        })
        .collect();
    assert!(!admitted.is_empty());
    for (id, cap) in &admitted {
        assert!(s.settle(now, id, &done(200, *cap)));
    }
    assert!(s.day_spend <= 10_000, "booked {} µ$", s.day_spend);
}

#[test]
fn overrun_is_what_the_upstream_reports_past_its_cap() {
    let limits = Limits {
        tokens_per_day: Some(100_000),
        ..Default::default()
    };
    let mut s = CounterState::default();
    let now = t(NOW);
    let mut settle = |id: &str, cap, n, outcome: Outcome| {
        let rec = record(id).map(|r| UsageRecord { n, ..r });
        s.admit(now, &limits, id, ask(30, cap, n), rec).unwrap();
        // A stream counted past its cap in bytes was extended: the lease grew, the cap did not.
        s.extend(now, &limits, id, 500);
        assert!(s.settle(now, id, &outcome));
        s.filed.pop().unwrap().overrun
    };
    assert!(
        settle("a", Some(10), 1, done(10, 100)),
        "reported past the cap"
    );
    assert!(!settle("b", Some(10), 1, done(10, 10)), "at the cap");
    assert!(
        !settle("c", Some(10), 3, done(10, 30)),
        "n choices of the cap each"
    );
    assert!(settle("d", Some(10), 3, done(10, 31)));
    let estimate = Outcome {
        estimated: true,
        ..done(30, 400)
    };
    assert!(
        !settle("e", Some(10), 1, estimate),
        "bytes over-count tokens: no proof"
    );
}

#[test]
fn an_upstream_that_ignores_the_cap_is_booked_and_flagged() {
    let limits = Limits {
        tokens_per_day: Some(300),
        ..Default::default()
    };
    let mut s = CounterState::default();
    let now = t(NOW);
    let cap = s
        .admit(now, &limits, "a", ask(20, None, 1), record("a"))
        .unwrap();
    assert_eq!(cap, Some(280));
    assert!(s.settle(now, "a", &done(20, 2_000)));
    assert!(s.filed[0].overrun);
    assert_eq!(s.filed[0].max_tokens, Some(280));
    assert_eq!(
        s.day_tokens, 2_020,
        "what it really used is booked, never hidden"
    );
    let r = s
        .admit(now, &limits, "b", ask(1, None, 1), None)
        .unwrap_err();
    assert_eq!((r.scope, r.remaining()), (Scope::TokensPerDay, 0));
    let next_day = t("2026-11-23T00:00:00Z");
    assert!(s
        .admit(next_day, &limits, "c", ask(1, None, 1), None)
        .is_ok());
}

#[test]
fn flexible_budget_extends_as_far_as_the_windows_allow() {
    let limits = Limits {
        tokens_per_day: Some(100),
        tokens_per_month: Some(1000),
        ..Default::default()
    };
    let mut s = CounterState::default();
    let now = t(NOW);
    assert_eq!(
        s.admit(now, &limits, "a", streamed(ask(20, Some(30), 1)), None),
        Ok(Some(30))
    );
    assert_eq!(s.extend(now, &limits, "a", 64), 50, "the rest of the day");
    assert_eq!(s.extend(now, &limits, "a", 64), 0, "budget spent");
    assert_eq!(s.extend(now, &limits, "nope", 64), 0);
    assert_eq!(s.leases[0].reserved, 100);
}

#[test]
fn extensions_respect_the_spend_room() {
    let limits = Limits {
        spend_per_day_micro: Some(100),
        ..Default::default()
    };
    let mut s = CounterState::default();
    let now = t(NOW);
    let a = Ask {
        price: Some(price(1.0, 1.0)),
        ..streamed(ask(10, Some(10), 1))
    };
    assert_eq!(s.admit(now, &limits, "a", a, None), Ok(Some(10)));
    assert_eq!(s.leases[0].spend, 20);
    assert_eq!(s.extend(now, &limits, "a", 500), 80);
    assert_eq!(s.leases[0].spend, 100);
    assert_eq!(s.extend(now, &limits, "a", 1), 0);
}

#[test]
fn monthly_budget_spans_days_and_resets_with_the_month() {
    let limits = Limits {
        tokens_per_month: Some(100),
        ..Default::default()
    };
    let mut s = CounterState::default();
    assert!(s
        .admit(t("2026-11-01T00:00:00Z"), &limits, "a", fixed(0, 60), None)
        .is_ok());
    assert!(s.settle(t("2026-11-01T00:00:01Z"), "a", &done(0, 60)));
    let r = s
        .admit(t("2026-11-30T12:00:00Z"), &limits, "b", fixed(40, 1), None)
        .unwrap_err();
    assert_eq!(r.scope, Scope::TokensPerMonth);
    assert_eq!(rfc3339(r.reset_at), "2026-12-01T00:00:00.000Z");
    assert!(s
        .admit(t("2026-12-01T00:00:00Z"), &limits, "c", fixed(0, 100), None)
        .is_ok());
}

#[test]
fn concurrent_streams_are_limited_and_released() {
    let limits = Limits {
        max_concurrent_streams: Some(1),
        ..Default::default()
    };
    let mut s = CounterState::default();
    let now = t(NOW);
    assert!(s
        .admit(now, &limits, "a", streamed(fixed(0, 0)), None)
        .is_ok());
    let r = s
        .admit(now, &limits, "b", streamed(fixed(0, 0)), None)
        .unwrap_err();
    assert_eq!(r.scope, Scope::MaxConcurrentStreams);
    assert!(
        s.admit(now, &limits, "c", fixed(0, 0), None).is_ok(),
        "non-streamed requests are not streams"
    );
    s.settle(now, "a", &done(0, 0));
    assert!(s
        .admit(now, &limits, "d", streamed(fixed(0, 0)), None)
        .is_ok());
}

#[test]
fn a_renewed_lease_outlives_its_ttl_and_keeps_its_slot() {
    let limits = Limits {
        max_concurrent_streams: Some(1),
        ..Default::default()
    };
    let mut s = CounterState::default();
    let t0 = t(NOW);
    assert!(s
        .admit(t0, &limits, "a", streamed(fixed(5, 5)), record("a"))
        .is_ok());
    // A stream renewing every 20 s for an hour keeps its lease and its slot.
    let every = LEASE_TTL_MS / 3;
    for k in 1..=180 {
        assert!(s.renew(t0 + k * every, "a"));
    }
    let later = t0 + 180 * every + 1;
    assert!(s
        .admit(later, &limits, "b", streamed(fixed(0, 1)), None)
        .is_err());
    assert!(s.settle(later, "a", &done(5, 5)));
    assert_eq!(s.filed.len(), 1);
    assert_eq!(s.filed[0].ended, Ended::Complete);
}

#[test]
fn an_abandoned_lease_expires_booked_at_its_reservation_with_one_record() {
    let limits = Limits {
        tokens_per_day: Some(100),
        max_concurrent_streams: Some(1),
        ..Default::default()
    };
    let mut s = CounterState::default();
    let now = t(NOW);
    let mut r = record("a");
    if let Some(r) = r.as_mut() {
        r.prompt_bound = 5;
        r.created_at = now;
    }
    assert!(s
        .admit(now, &limits, "a", streamed(fixed(5, 20)), r)
        .is_ok());
    assert_eq!(s.next_expiry(), Some(now + LEASE_TTL_MS));
    assert!(s
        .admit(
            now + LEASE_TTL_MS - 1,
            &limits,
            "b",
            streamed(fixed(0, 1)),
            None
        )
        .is_err());
    s.roll(now + LEASE_TTL_MS);
    assert_eq!(s.day_tokens, 25);
    assert_eq!(s.filed.len(), 1);
    let rec = &s.filed[0];
    assert_eq!(
        (
            rec.ended,
            rec.estimated,
            rec.prompt_tokens,
            rec.completion_tokens
        ),
        (Ended::Abandoned, true, 5, 20)
    );
    assert!(
        !s.settle(now + LEASE_TTL_MS, "a", &done(1, 1)),
        "a late settle counts nothing"
    );
    assert!(!s.renew(now + LEASE_TTL_MS, "a"));
    assert!(s
        .admit(
            now + LEASE_TTL_MS,
            &limits,
            "c",
            streamed(fixed(0, 1)),
            None
        )
        .is_ok());
}

#[test]
fn exhausted_names_the_spent_window() {
    let limits = Limits {
        tokens_per_day: Some(10),
        tokens_per_month: Some(1000),
        requests_per_minute: Some(5),
        ..Default::default()
    };
    let mut s = CounterState::default();
    let now = t(NOW);
    s.admit(now, &limits, "a", streamed(fixed(0, 10)), None)
        .unwrap();
    let r = Refusal::exhausted(&s.windows(now, &limits), now);
    assert_eq!(
        (r.scope, r.limit, r.used, r.held),
        (Scope::TokensPerDay, 10, 10, 0)
    );
    assert_eq!(rfc3339(r.reset_at), "2026-11-23T00:00:00.000Z");
}

#[test]
fn refusals_say_what_is_left_in_the_right_number() {
    let r = Refusal {
        scope: Scope::TokensPerDay,
        limit: 20,
        used: 19,
        held: 0,
        needed: 25,
        reset_at: t("2026-11-23T00:00:00Z"),
        retry_after_s: 7,
    };
    let e = r.to_error("free");
    assert_eq!((e.status, e.kind()), (429, "quota-exceeded"));
    assert!(e.detail.contains("allows 20 tokens per day; 19 used, 1 remaining, and this request needs at least 25 tokens"), "{}", e.detail);
    let p = e.to_problem();
    assert_eq!(
        (p["scope"].clone(), p["remaining"].clone()),
        ("tokens_per_day".into(), 1.into())
    );
    assert_eq!(p["reset"], "2026-11-23T00:00:00.000Z");
    assert!(e
        .headers
        .contains(&("Retry-After".to_string(), "7".to_string())));
    assert!(e
        .headers
        .contains(&("x-should-retry".to_string(), "false".to_string())));
    let rpm = Refusal {
        scope: Scope::RequestsPerMinute,
        limit: 1,
        used: 1,
        held: 0,
        needed: 0,
        reset_at: 0,
        retry_after_s: 1,
    };
    let e = rpm.to_error("p");
    assert_eq!(e.kind(), "rate-limited");
    assert!(
        e.detail
            .contains("allows 1 request per minute; 1 used, 0 remaining."),
        "{}",
        e.detail
    );
    assert!(
        !e.headers.iter().any(|(k, _)| k == "x-should-retry"),
        "a minute window is worth retrying"
    );
    let spend = Refusal {
        scope: Scope::SpendPerDayUsd,
        limit: 10_000,
        used: 9_990,
        held: 0,
        needed: 12,
        reset_at: 0,
        retry_after_s: 5,
    };
    let e = spend.to_error("p");
    assert_eq!(e.to_problem()["limit"], 0.01);
    assert_eq!(e.to_problem()["remaining"], 0.00001);
    assert!(e.detail.contains("allows $0.010000 per day; $0.009990 used, $0.000010 remaining, and this request needs at least $0.000012"), "{}", e.detail);
}

#[test]
fn windows_list_spend_in_micro_dollars() {
    let limits = Limits {
        spend_per_month_micro: Some(5_000_000),
        ..Default::default()
    };
    let mut s = CounterState::default();
    let w = s.windows(t(NOW), &limits);
    assert_eq!(w.len(), 1);
    assert_eq!(
        (w[0].scope, w[0].limit, w[0].remaining),
        (Scope::SpendPerMonthUsd, 5_000_000, 5_000_000)
    );
    assert_eq!(w[0].window_s, 30 * 86_400);
}

/// State written before spend and lease records existed must stay readable after a deploy.
#[test]
fn state_stored_by_the_previous_release_is_read_unchanged() {
    let old = r#"{"minute":[1],"day_start":0,"day_requests":2,"day_tokens":30,"month_start":0,"month_tokens":40,
        "leases":[{"id":"l1","reserved":7,"stream":true,"expires_at":99}]}"#;
    let s: CounterState = crate::encoding::from_json(old).unwrap();
    assert_eq!(
        (
            s.day_tokens,
            s.day_spend,
            s.leases[0].reserved,
            s.leases[0].spend
        ),
        (30, 0, 7, 0)
    );
    assert!(s.leases[0].record.is_none());
}

#[test]
fn state_json_format_unchanged() {
    let s = CounterState {
        minute: VecDeque::from([5]),
        day_start: 1,
        day_requests: 2,
        day_tokens: 3,
        month_start: 4,
        month_tokens: 5,
        day_spend: 6,
        month_spend: 7,
        leases: vec![Lease {
            id: "l".into(),
            reserved: 8,
            spend: 9,
            stream: false,
            expires_at: 10,
            ttl_ms: 11,
            price: Some(Price {
                input: 1,
                output: 2,
                cached_input: 3,
            }),
            record: None,
        }],
        standing: Standing::default(),
        filed: vec![UsageRecord::default()],
    };
    // The minute log is written compactly (src/limits/minute_log.rs); the rest is unchanged.
    let stored = r#"{"minute":"Cg","day_start":1,"day_requests":2,"day_tokens":3,"month_start":4,"month_tokens":5,"day_spend":6,"month_spend":7,"leases":[{"id":"l","reserved":8,"spend":9,"stream":false,"expires_at":10,"ttl_ms":11,"price":{"input":1,"output":2,"cached_input":3},"record":null}],"standing":{"known":false,"disabled":false,"revoked_keys":[],"revoked_sessions":[],"plan_id":null}}"#;
    assert_eq!(serde_json::to_string(&s).unwrap(), stored);
    // State written before, with the log as an array of times, reads as the same state.
    let written_before = stored.replace(r#""minute":"Cg""#, r#""minute":[5]"#);
    let read = crate::encoding::from_json::<CounterState>(&written_before).unwrap();
    assert_eq!(
        read,
        CounterState {
            filed: Vec::new(),
            ..s.clone()
        }
    );
}

#[test]
fn undecodable_state_is_an_error_not_a_reset() {
    for bad in [
        "",
        "{}",
        r#"{"minute":"x"}"#,
        r#"{"minute":[],"day_start":0}"#,
        r#"{"minute":"%%","day_start":1,"day_requests":2,"day_tokens":3,"month_start":4,"month_tokens":5,"leases":[]}"#,
    ] {
        assert!(
            crate::encoding::from_json::<CounterState>(bad).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn an_answer_says_what_is_left_once_it_is_booked() {
    let limits = Limits {
        tokens_per_day: Some(1_000),
        requests_per_day: Some(10),
        ..Default::default()
    };
    let mut s = CounterState::default();
    let now = t(NOW);
    // Uncapped: it holds the whole day (30 + 970) while it runs.
    s.admit(now, &limits, "a", ask(30, None, 1), None).unwrap();
    let held = s.windows(now, &limits);
    let day = held
        .iter()
        .find(|w| w.scope == Scope::TokensPerDay)
        .unwrap();
    assert_eq!((day.used, day.held, day.remaining), (0, 1_000, 0));
    // It used 15: the answer's headers say 985 are left, as the counter will once it settles.
    let after = after_settling(&held, 1_000, 15);
    let day = after
        .iter()
        .find(|w| w.scope == Scope::TokensPerDay)
        .unwrap();
    assert_eq!((day.used, day.held, day.remaining), (15, 0, 985));
    assert!(s.settle(now, "a", &done(5, 10)));
    assert_eq!(&s.windows(now, &limits), &after);
}
