//! End-to-end tests: one real gateway (`wrangler dev`, workerd, local D1/KV/DO) and one mock
//! OpenAI-compatible upstream, every case sent over real HTTP. Its own harness (`harness = false`):
//! cases run one after another, each in its own project, each capped in time; a failing or panicking
//! case does not stop the others. The last line is `N passed, M failed`; any failure exits non-zero.
//!
//! `cargo test --test e2e -- <substring>` runs only the cases whose name contains it.

#[path = "../support/mod.rs"]
mod support;

/// `cases![a, b::c]`: each function as (its name, a boxed case), for a module's `cases()` list.
macro_rules! cases {
    ($($($part:ident)::+),* $(,)?) => {
        vec![$(($crate::last_segment(stringify!($($part)::+)), (|c| Box::pin($($part)::+(c))) as $crate::CaseFn)),*]
    };
}

mod admin;
mod auth;
mod compat;
mod data_plane;
mod hot_path;
mod openapi;
mod orgs;
mod providers;
mod quotas;
mod sdks;
mod spend;
mod surface;

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::*;

/// No single case may take longer than this...
const CASE_TIMEOUT: Duration = Duration::from_secs(45);
/// ...except one that starts a gateway of its own (whose build hook may have to rebuild first).
const OWN_GATEWAY_CASE_TIMEOUT: Duration = Duration::from_secs(150);
/// Bound on one streamed exchange.
const STREAM_LIMIT: Duration = Duration::from_secs(20);

struct Ctx {
    base: String,
    admin: Admin,
    mock: MockUpstream,
    /// The mail provider the gateway sends sign-in codes to.
    mail: MockMail,
    http: reqwest::Client,
    /// The gateway's local state (`--persist-to`), for cases that count what is stored.
    persist_dir: std::path::PathBuf,
}

type CaseResult = Result<()>;
pub(crate) type CaseFn = fn(Arc<Ctx>) -> Pin<Box<dyn Future<Output = CaseResult> + Send>>;

/// `quotas::foo` → `foo`: case names are the function names.
pub(crate) fn last_segment(path: &'static str) -> &'static str {
    path.rsplit("::").next().unwrap_or(path).trim()
}

/// Cases that start a gateway of their own (slower: up to two wrangler start-ups).
const OWN_GATEWAY_CASES: [&str; 4] = [
    "provider_keys_survive_an_encryption_key_rotation",
    "chunked_oversized_body_is_413",
    "restart_keeps_counters_and_unflushed_usage",
    "dev_mode_only_when_asked",
];

/// The last panic's message and location, kept by the panic hook for the failure report.
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn main() -> ExitCode {
    // Cases run one at a time, so the last panic belongs to the case that just failed; report it
    // once, with its location, instead of the default hook's output (and backtrace).
    std::panic::set_hook(Box::new(|info| {
        let message = panic_text(info.payload());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(format!("panicked{at}: {message}"));
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(run());
    rt.shutdown_timeout(Duration::from_secs(2));
    code
}

async fn run() -> ExitCode {
    // Each scenario file registers its own cases; the one that upsets wrangler runs last.
    let all = [
        data_plane::cases(),
        hot_path::cases(),
        compat::cases(),
        surface::cases(),
        sdks::cases(),
        openapi::cases(),
        admin::cases(),
        orgs::cases(),
        providers::cases(),
        quotas::cases(),
        spend::cases(),
        auth::cases(),
        data_plane::last_cases(),
    ]
    .concat();
    // Flags libtest would take (`--nocapture`, `--test-threads 1`) are ignored, not taken as filters.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-') && a.parse::<u64>().is_err())
        .collect();
    let selected: Vec<(&str, CaseFn)> = all
        .into_iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();

    let started = Instant::now();
    println!("running {} e2e cases", selected.len());
    // The mail provider first: the gateway is told its URL when it starts.
    let mail = match MockMail::start().await {
        Ok(m) => m,
        Err(e) => {
            println!("test mock_mail_starts ... FAILED\n    {e}");
            println!("0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
    };
    let vars = vec![
        ("EMAIL_API_URL".to_string(), mail.url()),
        ("EMAIL_API_KEY".to_string(), "test-mail-key".to_string()),
        // Dev mode lets a BYO-JWT `jwks_url` be plain http on loopback (the test's JWKS server).
        ("SLUICE_DEV".to_string(), "1".to_string()),
        // Leases expire 3 s after their last renewal, so abandoned and long requests test quickly.
        ("SLUICE_LEASE_TTL_MS".to_string(), "3000".to_string()),
    ];
    let mut gateway = match Gateway::start_with(vars).await {
        Ok(g) => g,
        Err(e) => {
            println!("test gateway_starts ... FAILED\n    {e}");
            println!("0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
    };
    let mock = match MockUpstream::start().await {
        Ok(m) => m,
        Err(e) => {
            println!("test mock_upstream_starts ... FAILED\n    {e}");
            println!("0 passed, 1 failed");
            gateway.stop();
            return ExitCode::FAILURE;
        }
    };
    println!(
        "gateway {} up in {:.1?} (log: {}); mock upstream on {}; mock mail on {}",
        gateway.base_url,
        started.elapsed(),
        gateway.log_path.display(),
        mock.addr,
        mail.addr
    );
    let ctx = Arc::new(Ctx {
        base: gateway.base_url.clone(),
        admin: gateway.admin(),
        mock,
        mail,
        http: http_client(),
        persist_dir: gateway.persist_dir.clone(),
    });

    let (mut passed, mut failed) = (0usize, 0usize);
    let mut failures = Vec::new();
    for (name, case) in selected {
        let t0 = Instant::now();
        LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
        let task = tokio::spawn(case(ctx.clone()));
        let abort = task.abort_handle();
        let limit = if OWN_GATEWAY_CASES.contains(&name) {
            OWN_GATEWAY_CASE_TIMEOUT
        } else {
            CASE_TIMEOUT
        };
        let outcome: Result<(), String> = match tokio::time::timeout(limit, task).await {
            Err(_) => {
                abort.abort();
                Err(format!("timed out after {limit:?}"))
            }
            Ok(Err(join)) if join.is_panic() => {
                let fallback = format!("panicked: {}", panic_text(&*join.into_panic()));
                Err(LAST_PANIC
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .unwrap_or(fallback))
            }
            Ok(Err(join)) => Err(format!("case task failed: {join}")),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Ok(Ok(()))) => Ok(()),
        };
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.2?})", t0.elapsed());
            }
            Err(reason) => {
                failed += 1;
                println!(
                    "test {name} ... FAILED ({:.2?})\n    {reason}",
                    t0.elapsed()
                );
                failures.push(name);
            }
        }
        let _ = std::io::stdout().flush();
    }

    if failed > 0 {
        println!("\nfailed cases: {}", failures.join(", "));
        println!(
            "--- last lines of the gateway log ({}) ---\n{}\n---",
            gateway.log_path.display(),
            gateway.log_tail(40)
        );
    }
    drop(ctx);
    gateway.stop();
    println!("e2e finished in {:.1?}", started.elapsed());
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

// ------------------------------------------------------------------------------------------------
// Helpers

impl Ctx {
    /// GETs an admin path until `ready` holds for its JSON, at most 10 s: usage records and auth
    /// events are written shortly after the response that caused them.
    async fn admin_get_until(&self, path: &str, ready: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.admin.call(reqwest::Method::GET, path, None).await?;
            expect_status(&r, 200, path)?;
            let v = r.json();
            if ready(&v) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(format!("{path} never became ready: {}", r.text).into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A project `slug` with API `chat` on the mock scenario (tagged with the slug), one consumer and key.
    async fn tenant_on_mock(&self, slug: &str, scenario: &str, extra: Value) -> Result<Tenant> {
        let mut upstream = json!({
            "base_url": self.mock.base_url(&format!("{scenario}/tag/{slug}")),
            "api_key": format!("sk-upstream-{slug}"),
            "default_model": "mock-default",
        });
        if let (Some(u), Value::Object(extra)) = (upstream.as_object_mut(), extra) {
            u.extend(extra);
        }
        self.admin.tenant(slug, "chat", upstream).await
    }

    /// `GET /v1/{project}/{api}/usage` with `key` as Bearer (or no credential).
    async fn consumer_usage(&self, t: &Tenant, key: Option<&str>) -> Result<Reply> {
        let mut req = self
            .http
            .get(format!("{}/v1/{}/{}/usage", self.base, t.project, t.api));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        Reply::read(req.send().await?).await
    }

    /// What the mock received for `slug`'s API.
    fn upstream_requests(&self, slug: &str) -> Vec<Recorded> {
        self.mock.requests_matching(&format!("/tag/{slug}/"))
    }

    fn chat(&self, t: &Tenant, key: Option<(&str, KeyHeader)>) -> reqwest::RequestBuilder {
        chat_request(&self.http, &self.base, &t.project, &t.api, key).timeout(STREAM_LIMIT)
    }

    /// Sends a chat call for `t` with `key` and `body`, and reads the whole reply.
    async fn send_chat(
        &self,
        t: &Tenant,
        key: Option<(&str, KeyHeader)>,
        body: &Value,
    ) -> Result<Reply> {
        Reply::read(self.chat(t, key).json(body).send().await?).await
    }

    /// A non-streamed chat call with `t`'s key as Bearer.
    /// `t`'s consumer says "hi" with its key, streamed or not; the answer as it arrived.
    async fn chat_hi(&self, t: &Tenant, stream: bool) -> Result<StreamRecord> {
        send_and_stream(
            self.chat(t, Some((&t.secret, KeyHeader::Bearer)))
                .json(&chat_body(None, "hi", stream)),
            STREAM_LIMIT,
        )
        .await
    }

    async fn chat_ok(&self, t: &Tenant) -> Result<Reply> {
        self.send_chat(
            t,
            Some((&t.secret, KeyHeader::Bearer)),
            &chat_body(None, "hello", false),
        )
        .await
    }
}

/// Status, media type, and `type`/`status` members of a problem+json answer.
fn assert_problem(r: &Reply, status: u16, kind: &str) {
    assert_eq!(r.status, status, "status; got {}", r.describe());
    assert!(
        r.content_type().starts_with("application/problem+json"),
        "content-type should be application/problem+json; got {}",
        r.describe()
    );
    let p = r.json();
    assert_eq!(p["type"], kind, "problem type; got {}", r.describe());
    assert_eq!(
        p["status"],
        status,
        "problem status member; got {}",
        r.describe()
    );
    assert!(
        p["title"].is_string() && p["detail"].is_string(),
        "title/detail; got {}",
        r.describe()
    );
}

fn stream_summary(s: &StreamRecord) -> String {
    let events: Vec<String> = s
        .events
        .iter()
        .map(|e| {
            format!(
                "{:?}@{}ms {}",
                e.event,
                e.at.as_millis(),
                e.data.chars().take(120).collect::<String>()
            )
        })
        .collect();
    format!(
        "status {} head@{}ms end@{}ms error={:?} leftover={:?}\n      {}",
        s.status,
        s.head_at.as_millis(),
        s.end_at.as_millis(),
        s.error,
        s.leftover,
        events.join("\n      ")
    )
}
