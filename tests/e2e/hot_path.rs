//! End-to-end cases of the hot path: what a request touches (its `Server-Timing`), and an API's
//! configuration changing under live traffic.

use std::sync::Arc;

use serde_json::json;

use super::{assert_problem, CaseFn, CaseResult, Ctx};
use crate::support::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![
        server_timing_shows_phases_and_no_d1_for_a_known_key,
        api_config_changes_reach_the_next_request,
    ]
}

/// The `Server-Timing` entries of a reply: (name, `desc` call count if any).
fn timing_entries(r: &Reply) -> Vec<(String, Option<u32>)> {
    r.header("server-timing")
        .unwrap_or("")
        .split(',')
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut parts = e.trim().split(';');
            let name = parts.next().unwrap_or("").to_string();
            let calls = parts
                .find_map(|p| p.strip_prefix("desc="))
                .and_then(|d| d.trim_matches('"').parse().ok());
            (name, calls)
        })
        .collect()
}

fn calls_of(entries: &[(String, Option<u32>)], name: &str) -> Option<u32> {
    entries
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, c)| *c)
}

/// The shared gateway runs in dev mode, so every data-plane answer carries `Server-Timing`. A key
/// made through the admin API is known to the hot path at once: no D1 on its first request, at most
/// one KV read, and one counter call before the answer (settling comes after it).
async fn server_timing_shows_phases_and_no_d1_for_a_known_key(c: Arc<Ctx>) -> CaseResult {
    let slug = "timing-phases";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    for attempt in ["first", "second"] {
        let r = c.chat_ok(&t).await?;
        assert_eq!(r.status, 200, "{}", r.describe());
        let entries = timing_entries(&r);
        for phase in ["auth", "admit", "upstream"] {
            assert!(
                entries.iter().any(|(n, _)| n == phase),
                "{attempt} request: `{phase}` in Server-Timing {:?}",
                r.header("server-timing")
            );
        }
        assert_eq!(
            calls_of(&entries, "do"),
            Some(1),
            "{attempt}: one counter call {entries:?}"
        );
        assert_eq!(
            calls_of(&entries, "d1"),
            None,
            "{attempt}: no D1 {entries:?}"
        );
        // A new key's first use may read its KV record (another isolate made it); then memory has it.
        let kv = calls_of(&entries, "kv").unwrap_or(0);
        match attempt {
            "first" => assert!(kv <= 1, "first: at most one KV read {entries:?}"),
            _ => assert_eq!(kv, 0, "second: a warm isolate reads no KV {entries:?}"),
        }
    }
    // An error answer carries it too (here: refused before admission, so no counter call).
    let refused = c
        .send_chat(
            &t,
            Some(("ask_live_not-a-real-key-000000000000", KeyHeader::Bearer)),
            &chat_body(None, "hi", false),
        )
        .await?;
    assert_problem(&refused, 401, "invalid-credential");
    let entries = timing_entries(&refused);
    assert!(entries.iter().any(|(n, _)| n == "auth"), "{entries:?}");
    assert_eq!(calls_of(&entries, "do"), None, "{entries:?}");
    Ok(())
}

/// Models, the IP allowlist and the upstream itself change with an admin write, and the very next
/// request follows them (here one isolate serves both; elsewhere within 30 s).
async fn api_config_changes_reach_the_next_request(c: Arc<Ctx>) -> CaseResult {
    let slug = "config-change";
    let t = c
        .tenant_on_mock(slug, "ok", json!({"models": ["mock-1"]}))
        .await?;
    let ask = |model: &str| chat_body(Some(model), "hello", false);
    let key = Some((t.secret.as_str(), KeyHeader::Bearer));
    assert_eq!(c.send_chat(&t, key, &ask("mock-1")).await?.status, 200);

    c.admin
        .patch_api(&t.api_id, json!({"upstream": {"models": ["mock-2"]}}))
        .await?;
    let old = c.send_chat(&t, key, &ask("mock-1")).await?;
    assert_problem(&old, 403, "model-not-allowed");
    let new = c.send_chat(&t, key, &ask("mock-2")).await?;
    assert_eq!(new.status, 200, "{}", new.describe());

    c.admin
        .patch_api(&t.api_id, json!({"ip_allowlist": ["192.0.2.0/24"]}))
        .await?;
    assert_problem(
        &c.send_chat(&t, key, &ask("mock-2")).await?,
        403,
        "ip-not-allowed",
    );
    c.admin
        .patch_api(&t.api_id, json!({"ip_allowlist": []}))
        .await?;

    // A new upstream: the next request goes there, and the old one hears nothing more.
    let moved = format!("{slug}-moved");
    c.admin
        .patch_api(
            &t.api_id,
            json!({"upstream": {"base_url": c.mock.base_url(&format!("ok/tag/{moved}"))}}),
        )
        .await?;
    assert_eq!(c.send_chat(&t, key, &ask("mock-2")).await?.status, 200);
    assert_eq!(
        c.upstream_requests(slug).len(),
        2,
        "the old upstream got the first two"
    );
    assert_eq!(
        c.upstream_requests(&moved).len(),
        1,
        "the new upstream got the last"
    );
    Ok(())
}
