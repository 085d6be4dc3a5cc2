//! Rate-limit response headers: OpenAI's `x-ratelimit-*` and the IETF draft `RateLimit-Policy` /
//! `RateLimit` fields, so SDKs and generic clients back off correctly.

use crate::limits::counter::{Scope, Window};

/// OpenAI-style duration: `20ms`, `1s`, `6m0s`, `1h2m3s`.
pub fn go_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = (ms + 999) / 1000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// The tightest window among `scopes`: least remaining, then soonest reset.
fn tightest<'a>(windows: &'a [Window], scopes: &[Scope]) -> Option<&'a Window> {
    windows
        .iter()
        .filter(|w| scopes.contains(&w.scope))
        .min_by_key(|w| (w.remaining, w.reset_at))
}

/// Headers for the windows of the consumer's plan; unlimited dimensions are left out.
pub fn rate_limit_headers(windows: &[Window], now: i64) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (suffix, scopes) in [
        (
            "requests",
            &[Scope::RequestsPerMinute, Scope::RequestsPerDay][..],
        ),
        ("tokens", &[Scope::TokensPerDay, Scope::TokensPerMonth][..]),
    ] {
        if let Some(w) = tightest(windows, scopes) {
            out.push((format!("x-ratelimit-limit-{suffix}"), w.limit.to_string()));
            out.push((
                format!("x-ratelimit-remaining-{suffix}"),
                w.remaining.to_string(),
            ));
            out.push((
                format!("x-ratelimit-reset-{suffix}"),
                go_duration(w.reset_at - now),
            ));
        }
    }
    let timed: Vec<&Window> = windows.iter().filter(|w| w.window_s > 0).collect();
    if !timed.is_empty() {
        let policy = timed
            .iter()
            .map(|w| format!("\"{}\";q={};w={}", w.scope.as_str(), w.limit, w.window_s))
            .collect::<Vec<_>>();
        let state = timed
            .iter()
            .map(|w| {
                let t = ((w.reset_at - now).max(0) + 999) / 1000;
                format!("\"{}\";r={};t={}", w.scope.as_str(), w.remaining, t)
            })
            .collect::<Vec<_>>();
        out.push(("RateLimit-Policy".into(), policy.join(", ")));
        out.push(("RateLimit".into(), state.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(scope: Scope, limit: u64, used: u64, reset_at: i64, window_s: u64) -> Window {
        Window {
            scope,
            limit,
            used,
            held: 0,
            remaining: limit - used,
            reset_at,
            window_s,
        }
    }

    #[test]
    fn durations() {
        assert_eq!(go_duration(20), "20ms");
        assert_eq!(go_duration(1000), "1s");
        assert_eq!(go_duration(1001), "2s");
        assert_eq!(go_duration(360_000), "6m0s");
        assert_eq!(go_duration(3_723_000), "1h2m3s");
        assert_eq!(go_duration(-5), "0ms");
    }

    #[test]
    fn picks_the_tightest_window_and_lists_all_policies() {
        let windows = vec![
            w(Scope::RequestsPerMinute, 10, 1, 60_000, 60),
            w(Scope::RequestsPerDay, 100, 98, 86_400_000, 86_400),
            w(Scope::TokensPerDay, 1000, 10, 86_400_000, 86_400),
            w(Scope::MaxConcurrentStreams, 2, 1, 0, 0),
        ];
        let h = rate_limit_headers(&windows, 0);
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("x-ratelimit-limit-requests").as_deref(), Some("100"));
        assert_eq!(get("x-ratelimit-remaining-requests").as_deref(), Some("2"));
        assert_eq!(
            get("x-ratelimit-reset-requests").as_deref(),
            Some("24h0m0s")
        );
        assert_eq!(get("x-ratelimit-remaining-tokens").as_deref(), Some("990"));
        assert_eq!(get("RateLimit-Policy").as_deref(),
            Some("\"requests_per_minute\";q=10;w=60, \"requests_per_day\";q=100;w=86400, \"tokens_per_day\";q=1000;w=86400"));
        assert_eq!(get("RateLimit").as_deref(),
            Some("\"requests_per_minute\";r=9;t=60, \"requests_per_day\";r=2;t=86400, \"tokens_per_day\";r=990;t=86400"));
    }

    #[test]
    fn unlimited_plans_send_no_limit_headers() {
        assert!(rate_limit_headers(&[], 0).is_empty());
    }
}
