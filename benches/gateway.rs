//! Sluice's latency benchmark: ONE interleaved run against ONE mock upstream, four targets:
//!
//!   (a) the mock upstream called directly;
//!   (b) a bare JavaScript pass-through worker (benches/bare-worker/) on the same wrangler,
//!       the floor any Workers gateway pays;
//!   (c) Sluice, consumer-key auth, default plan unlimited;
//!   (d) Sluice, default plan with limits (requests_per_minute, tokens_per_day): the quota check.
//!
//! Every iteration sends one request to each target, in an order that walks through all 24
//! permutations, so no target always follows the same one (and none always pays for another's
//! background work). Non-streamed: latency from send to the last body byte. Streamed: time to the
//! first content SSE event. Then throughput: `LOAD_REQUESTS` non-streamed requests per target from
//! `LOAD_CLIENTS` concurrent keep-alive clients, in rounds that rotate the targets, with the CPU the
//! serving workerd processes spent per request (from /proc) and every 5xx counted. The storage
//! calls per request come from Sluice's `Server-Timing` header (the bench APIs turn it on). Under the
//! same load, once a round, (e) the bare worker plus two counter calls (benches/counter-calls, no
//! WASM): what one Durable Object call before the upstream and one after cost on this runtime, and
//! (f) the same with only the call before, for reference (Sluice's settlement often rides on the
//! next admission instead). Also prints the built
//! WASM size (raw and gzip) and the issue's targets against the bare worker.
//!
//! It prints figures and asserts no timings. Exit code: 0 when it ran; 1 when setup failed (no
//! build, a server did not start, a target answered wrongly before measuring) or when more than
//! 10% of a target's measured requests failed. Progress goes to stderr, the table to stdout.
//!
//! `SLUICE_BENCH_ITERS` and `SLUICE_BENCH_STREAM_ITERS` override the iteration counts,
//! `SLUICE_BENCH_GAP_MS` the idle gap between requests.
//!
//! Both workers are served by wrangler's dev server (the same Miniflare and workerd as `wrangler dev`)
//! with the devtools inspector off (`scripts/serve.mjs`): under `wrangler dev` the inspector relays
//! every subrequest's events and body to wrangler's node process, which writes them to its debug log,
//! a cost per subrequest that deployed workers do not pay. `SLUICE_BENCH_DEVTOOLS=1` runs both under
//! `wrangler dev` instead, for comparison.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::*;

/// Measured iterations (one request to each target per iteration).
const ITERS: usize = 300;
const STREAM_ITERS: usize = 100;
/// Unrecorded iterations first: connections, isolates, Durable Objects and JITs warm up.
const WARMUP_ITERS: usize = 30;
const WARMUP_STREAM_ITERS: usize = 10;
/// The mock's scenario for every target: 3 content chunks, no delay between them.
const SCENARIO: &str = "ok/chunks/3";
const CHUNKS: usize = 3;
/// Bound on any single exchange.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// A short idle gap between requests, so one target's after-response work (Sluice's usage records,
/// counter settlement) mostly finishes before the next target's request is timed.
const GAP_MS: u64 = 2;
/// How long the bare worker may take to answer its first request.
const BARE_START_TIMEOUT: Duration = Duration::from_secs(60);
const WASM_PATH: &str = "build/index_bg.wasm";
/// Throughput: requests per target, concurrent clients, and rounds (the targets rotate per round).
const LOAD_REQUESTS: usize = 2_000;
const LOAD_CLIENTS: usize = 16;
const LOAD_ROUNDS: usize = 4;
// `SLUICE_BENCH_LOAD_ROUNDS` overrides the rounds (each still sends LOAD_REQUESTS / 4 per target).

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct,
    Bare,
    Sluice,
    SluiceLimited,
}

const TARGETS: [Target; 4] = [
    Target::Direct,
    Target::Bare,
    Target::Sluice,
    Target::SluiceLimited,
];

impl Target {
    fn index(self) -> usize {
        self as usize
    }
    fn label(self) -> &'static str {
        match self {
            Target::Direct => "(a) upstream, direct",
            Target::Bare => "(b) bare JS worker",
            Target::Sluice => "(c) Sluice, unlimited plan",
            Target::SluiceLimited => "(d) Sluice, plan with limits",
        }
    }
}

/// Where each target is and how to call it.
struct Endpoints {
    http: reqwest::Client,
    direct_url: String,
    bare_url: String,
    /// The bare worker plus two counter calls (benches/counter-calls).
    floor_url: String,
    gateway_url: String,
    unlimited: Tenant,
    limited: Tenant,
}

impl Endpoints {
    fn request(&self, target: Target, stream: bool) -> reqwest::RequestBuilder {
        let body = chat_body(Some("mock-model"), "hello", stream);
        let req = match target {
            Target::Direct => self.http.post(&self.direct_url),
            Target::Bare => self.http.post(&self.bare_url),
            Target::Sluice | Target::SluiceLimited => {
                let t = if target == Target::Sluice {
                    &self.unlimited
                } else {
                    &self.limited
                };
                chat_request(
                    &self.http,
                    &self.gateway_url,
                    &t.project,
                    &t.api,
                    Some((&t.secret, KeyHeader::Bearer)),
                )
            }
        };
        req.json(&body).timeout(REQUEST_LIMIT)
    }

    /// One non-streamed exchange: milliseconds from send to the last body byte, and the headers.
    async fn plain(&self, target: Target) -> Result<(f64, reqwest::header::HeaderMap)> {
        let req = self.request(target, false);
        let start = Instant::now();
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let expected = mock_text(CHUNKS);
        let content = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
            v.pointer("/choices/0/message/content")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        if status != 200 || content.as_deref() != Some(expected.as_str()) {
            let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            return Err(format!("{}: non-streamed answer {status} {text}", target.label()).into());
        }
        Ok((ms, headers))
    }

    /// `n` non-streamed requests from `clients` concurrent clients: the seconds it took and each
    /// answer's status (`None`: no answer).
    async fn load(&self, target: Target, n: usize, clients: usize) -> (f64, Vec<Option<u16>>) {
        self.load_with(|| self.request(target, false), n, clients)
            .await
    }

    /// `load` against the counter-call reference (benches/counter-calls): two calls a request, or
    /// only the admission with `calls = 1`.
    async fn load_floor(&self, calls: u8, n: usize, clients: usize) -> (f64, Vec<Option<u16>>) {
        let body = chat_body(Some("mock-model"), "hello", false);
        let url = match calls {
            1 => format!("{}?calls=1", self.floor_url),
            _ => self.floor_url.clone(),
        };
        let request = || self.http.post(&url).json(&body).timeout(REQUEST_LIMIT);
        self.load_with(request, n, clients).await
    }

    async fn load_with(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
        n: usize,
        clients: usize,
    ) -> (f64, Vec<Option<u16>>) {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let start = Instant::now();
        let workers = (0..clients).map(|_| async {
            let mut statuses = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let status = match request().send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        resp.bytes().await.ok().map(|_| status)
                    }
                    Err(_) => None,
                };
                statuses.push(status);
            }
            statuses
        });
        let statuses = futures_util::future::join_all(workers).await.concat();
        (start.elapsed().as_secs_f64(), statuses)
    }

    /// One streamed exchange: milliseconds to the first content event.
    async fn streamed(&self, target: Target) -> Result<f64> {
        let rec = send_and_stream(self.request(target, true), REQUEST_LIMIT).await?;
        let first = rec.content_events().first().map(|e| e.at);
        let complete = rec.status == 200
            && rec.error.is_none()
            && rec.text() == mock_text(CHUNKS)
            && rec.events.last().is_some_and(SseEvent::is_done);
        match (first, complete) {
            (Some(at), true) => Ok(at.as_secs_f64() * 1e3),
            _ => {
                let body: String = String::from_utf8_lossy(&rec.body())
                    .chars()
                    .take(300)
                    .collect();
                Err(format!(
                    "{}: streamed answer {} (error: {:?}) {body}",
                    target.label(),
                    rec.status,
                    rec.error
                )
                .into())
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The bare pass-through worker, on the same wrangler as the gateway.

struct BareWorker {
    base_url: String,
    log_path: PathBuf,
    persist_dir: PathBuf,
    child: Option<Child>,
}

impl BareWorker {
    /// The JavaScript worker in `benches/<dir>` on free ports, forwarding to `upstream`: under
    /// `wrangler dev` when `devtools`, else on wrangler's dev server with the inspector off
    /// (`scripts/serve.mjs`).
    async fn start(dir: &str, upstream: &str, devtools: bool) -> Result<BareWorker> {
        let root = repo_root();
        let config = root.join("benches").join(dir).join("wrangler.toml");
        if !config.exists() {
            return Err(format!("{} is missing", config.display()).into());
        }
        let ports = free_ports(2)?;
        let (port, inspector_port) = (ports[0], ports[1]);
        let persist_dir =
            std::env::temp_dir().join(format!("sluice-bench-bare-{}", unique_suffix()));
        fs::create_dir_all(&persist_dir)?;
        let log_dir = root.join("target").join("bench-logs");
        fs::create_dir_all(&log_dir)?;
        let log_path = log_dir.join(format!("{dir}-{port}.log"));
        File::create(&log_path)?;
        let mut bare = BareWorker {
            base_url: format!("http://127.0.0.1:{port}"),
            log_path,
            persist_dir,
            child: None,
        };
        // wrangler writes its bundle under `<config dir>/.wrangler/tmp`; run it from a scratch copy of
        // the two files so nothing is left in the repository.
        let scratch = bare.persist_dir.join("worker");
        fs::create_dir_all(&scratch)?;
        for file in ["wrangler.toml", "worker.js"] {
            fs::copy(
                root.join("benches").join(dir).join(file),
                scratch.join(file),
            )?;
        }
        let mut cmd = dev_server(devtools, port, inspector_port, &scratch, &bare.log_path)?;
        cmd.args([
            "--persist-to",
            &bare.persist_dir.join("state").to_string_lossy(),
        ])
        .args(["--var", &format!("UPSTREAM_URL:{upstream}")]);
        bare.child = Some(cmd.spawn()?);
        if let Err(e) = bare.wait_ready().await {
            let tail = fs::read_to_string(&bare.log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().collect();
            eprintln!(
                "bare worker did not start: {e}\n--- last lines of {} ---\n{}\n---",
                bare.log_path.display(),
                tail[tail.len().saturating_sub(40)..].join("\n")
            );
            bare.stop();
            return Err(e);
        }
        Ok(bare)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + BARE_START_TIMEOUT;
        let http = http_client();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    return Err(format!("wrangler exited early: {status}").into());
                }
            }
            let probe = http
                .post(&self.base_url)
                .json(&chat_body(Some("mock-model"), "ready?", false))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if probe.is_ok_and(|r| r.status() == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("timed out waiting for the bare worker to answer 200".into());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn process_group(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM to the process group, SIGKILL to what is left after 5 s; removes the scratch dir.
    fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_process_group(child);
        }
        if self.persist_dir.exists() {
            let _ = fs::remove_dir_all(&self.persist_dir);
        }
    }
}

impl Drop for BareWorker {
    fn drop(&mut self) {
        self.stop();
    }
}

// ------------------------------------------------------------------------------------------------
// Statistics and output

#[derive(Default)]
struct Samples {
    plain: Vec<f64>,
    ttft: Vec<f64>,
    plain_errors: usize,
    stream_errors: usize,
    first_error: Option<String>,
    /// Storage calls per measured non-streamed request, from `Server-Timing`: (d1, kv, do).
    calls: Vec<[u32; 3]>,
    load: Load,
}

/// The throughput phase's figures for one target.
#[derive(Default)]
struct Load {
    requests: usize,
    seconds: f64,
    /// Answers with a 5xx status, with another non-200 status, and requests that got no answer.
    server_errors: usize,
    refused: usize,
    failures: usize,
    /// CPU (user + system) of the serving workerd processes, and of wrangler's node process, in ms.
    workerd_cpu_ms: f64,
    node_cpu_ms: f64,
}

impl Load {
    /// One load run: how long it took, each answer's status, and the CPU the target's processes spent.
    fn add(&mut self, seconds: f64, statuses: &[Option<u16>], workerd_ms: f64, node_ms: f64) {
        self.requests += statuses.len();
        self.seconds += seconds;
        for status in statuses {
            match status {
                Some(200) => {}
                Some(c) if *c >= 500 => self.server_errors += 1,
                Some(_) => self.refused += 1,
                None => self.failures += 1,
            }
        }
        self.workerd_cpu_ms += workerd_ms;
        self.node_cpu_ms += node_ms;
    }
}

/// Whether both workers run under `wrangler dev` with its devtools inspector (`SLUICE_BENCH_DEVTOOLS=1`).
fn with_devtools() -> bool {
    std::env::var("SLUICE_BENCH_DEVTOOLS").is_ok_and(|v| v == "1")
}

/// Storage calls named in a `Server-Timing` value: `kv;dur=0.3;desc="1"` counts 1 KV call.
fn storage_calls(value: &str) -> [u32; 3] {
    let mut calls = [0u32; 3];
    for entry in value.split(',') {
        let mut parts = entry.trim().split(';');
        let slot = match parts.next() {
            Some("d1") => 0,
            Some("kv") => 1,
            Some("do") => 2,
            _ => continue,
        };
        let n = parts
            .find_map(|p| p.trim().strip_prefix("desc="))
            .and_then(|d| d.trim_matches('"').parse::<u32>().ok())
            .unwrap_or(0);
        calls[slot] += n;
    }
    calls
}

/// CPU milliseconds (user + system) used so far by the processes of process group `pgid` whose
/// command is `comm` (from /proc/<pid>/stat; clock ticks are 1/100 s on Linux).
fn group_cpu_ms(pgid: u32, comm: &str) -> f64 {
    let Ok(entries) = fs::read_dir("/proc") else {
        return f64::NAN;
    };
    let mut ticks = 0u64;
    for entry in entries.flatten() {
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ... utime stime ...`: comm may hold spaces, so split at ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != comm {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        if field(2) != Some(u64::from(pgid)) {
            continue;
        }
        ticks += field(11).unwrap_or(0) + field(12).unwrap_or(0);
    }
    ticks as f64 * 10.0
}

/// Nearest-rank percentile of an already sorted slice.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// All orderings of the four targets, in lexicographic order; iteration `i` uses `[i % 24]`.
fn orders() -> Vec<[Target; 4]> {
    let mut out = Vec::new();
    for a in 0..4 {
        for b in 0..4 {
            for c in 0..4 {
                for d in 0..4 {
                    let idx = [a, b, c, d];
                    let mut seen = [false; 4];
                    idx.iter().for_each(|&i| seen[i] = true);
                    if seen.iter().all(|&s| s) {
                        out.push(idx.map(|i| TARGETS[i]));
                    }
                }
            }
        }
    }
    out
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(default)
}

/// Raw and gzip (default level, like `gzip -c`) size of the built WASM.
fn wasm_size() -> Result<(u64, u64)> {
    let path = repo_root().join(WASM_PATH);
    let raw = fs::metadata(&path)
        .map_err(|e| {
            format!(
                "{} is missing ({e}); run `make build` first",
                path.display()
            )
        })?
        .len();
    let out = Command::new("gzip")
        .arg("-c")
        .arg(&path)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run gzip: {e}"))?;
    if !out.status.success() {
        return Err(format!("gzip -c {} failed: {}", path.display(), out.status).into());
    }
    Ok((raw, out.stdout.len() as u64))
}

fn with_thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

// ------------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; there is nothing to filter, so arguments are ignored.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(run());
    rt.shutdown_timeout(Duration::from_secs(2));
    code
}

async fn run() -> ExitCode {
    let started = Instant::now();
    // The 1-minute load average, to read the figures by.
    let load = fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    // Fail fast without a build; the size is read once the gateway is up (its build hook may rebuild).
    if let Err(e) = wasm_size() {
        eprintln!("bench setup failed: {e}");
        return ExitCode::FAILURE;
    }
    let iters = env_count("SLUICE_BENCH_ITERS", ITERS);
    let stream_iters = env_count("SLUICE_BENCH_STREAM_ITERS", STREAM_ITERS);
    let gap = Duration::from_millis(
        std::env::var("SLUICE_BENCH_GAP_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(GAP_MS),
    );

    let mock = match MockUpstream::start().await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("bench setup failed: mock upstream: {e}");
            return ExitCode::FAILURE;
        }
    };
    let direct_url = format!(
        "{}/chat/completions",
        mock.base_url(&format!("{SCENARIO}/tag/direct"))
    );
    let bare_upstream = format!(
        "{}/chat/completions",
        mock.base_url(&format!("{SCENARIO}/tag/bare"))
    );
    eprintln!(
        "bench: mock upstream on {}; starting the gateway and the bare worker",
        mock.addr
    );

    let devtools = with_devtools();
    let gateway = async {
        match devtools {
            true => Gateway::start().await,
            false => Gateway::start_without_devtools().await,
        }
    };
    let (gateway, bare, floor) = tokio::join!(
        gateway,
        BareWorker::start("bare-worker", &bare_upstream, devtools),
        BareWorker::start("counter-calls", &bare_upstream, devtools)
    );
    // Whichever started is stopped by Drop when another failed.
    let (gateway, bare, floor) = match (gateway, bare, floor) {
        (Ok(g), Ok(b), Ok(f)) => (g, b, f),
        (g, b, f) => {
            if let Err(e) = &g {
                eprintln!("bench setup failed: gateway: {e}");
            }
            if let Err(e) = &b {
                eprintln!("bench setup failed: bare worker: {e}");
            }
            if let Err(e) = &f {
                eprintln!("bench setup failed: two-call reference: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "bench: gateway on {} (log {}), bare worker on {} (log {}), up after {:.1?}",
        gateway.base_url,
        gateway.log_path.display(),
        bare.base_url,
        bare.log_path.display(),
        started.elapsed()
    );

    let (wasm_raw, wasm_gz) = match wasm_size() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench setup failed: {e}");
            return ExitCode::FAILURE;
        }
    };

    let endpoints = match configure(&gateway, &mock, &direct_url, &bare, &floor).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "bench setup failed: {e}\n--- gateway log tail ---\n{}",
                gateway.log_tail(30)
            );
            return ExitCode::FAILURE;
        }
    };

    // Every target must answer correctly, both ways, before anything is timed.
    let mut limited_headers = None;
    for t in TARGETS {
        match endpoints.plain(t).await {
            Ok((_, headers)) => {
                if t == Target::SluiceLimited {
                    limited_headers = headers
                        .get("x-ratelimit-limit-requests")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                }
            }
            Err(e) => {
                eprintln!("bench setup failed: probe: {e}");
                return ExitCode::FAILURE;
            }
        }
        if let Err(e) = endpoints.streamed(t).await {
            eprintln!("bench setup failed: probe: {e}");
            return ExitCode::FAILURE;
        }
    }
    match &limited_headers {
        Some(v) => eprintln!(
            "bench: (d) answers with x-ratelimit-limit-requests: {v} (its plan is enforced)"
        ),
        None => eprintln!("bench: warning: (d) sent no x-ratelimit-limit-requests header"),
    }

    // wrangler rebuilds and reloads the gateway when a watched source changes; if that happens while
    // measuring, the figures mix two builds and a busy CPU, and the report says so.
    let log_mark = fs::metadata(&gateway.log_path)
        .map(|m| m.len())
        .unwrap_or(0);
    let orders = orders();
    let mut samples: Vec<Samples> = TARGETS.iter().map(|_| Samples::default()).collect();

    eprintln!("bench: warm-up ({WARMUP_ITERS} + {WARMUP_STREAM_ITERS} iterations)");
    for i in 0..WARMUP_ITERS {
        for &t in &orders[i % orders.len()] {
            let _ = endpoints.plain(t).await;
            tokio::time::sleep(gap).await;
        }
    }
    for i in 0..WARMUP_STREAM_ITERS {
        for &t in &orders[i % orders.len()] {
            let _ = endpoints.streamed(t).await;
            tokio::time::sleep(gap).await;
        }
    }

    eprintln!("bench: measuring ({iters} non-streamed + {stream_iters} streamed iterations)");
    let measure_start = Instant::now();
    for i in 0..iters {
        for &t in &orders[i % orders.len()] {
            let s = &mut samples[t.index()];
            match endpoints.plain(t).await {
                Ok((ms, headers)) => {
                    s.plain.push(ms);
                    if let Some(v) = headers.get("server-timing").and_then(|v| v.to_str().ok()) {
                        s.calls.push(storage_calls(v));
                    }
                }
                Err(e) => {
                    s.plain_errors += 1;
                    s.first_error.get_or_insert_with(|| e.to_string());
                }
            }
            tokio::time::sleep(gap).await;
        }
    }
    for i in 0..stream_iters {
        for &t in &orders[i % orders.len()] {
            let s = &mut samples[t.index()];
            match endpoints.streamed(t).await {
                Ok(ms) => s.ttft.push(ms),
                Err(e) => {
                    s.stream_errors += 1;
                    s.first_error.get_or_insert_with(|| e.to_string());
                }
            }
            tokio::time::sleep(gap).await;
        }
    }
    eprintln!(
        "bench: throughput ({LOAD_REQUESTS} requests per target, {LOAD_CLIENTS} concurrent clients, {LOAD_ROUNDS} rounds)"
    );
    let groups = |t: Target| match t {
        Target::Direct => None,
        Target::Bare => bare.process_group(),
        Target::Sluice | Target::SluiceLimited => gateway.process_group(),
    };
    let rounds = env_count("SLUICE_BENCH_LOAD_ROUNDS", LOAD_ROUNDS);
    let (mut floor_load, mut floor1_load) = (Load::default(), Load::default());
    for round in 0..rounds {
        for &t in &orders[(round * 7) % orders.len()] {
            let n = LOAD_REQUESTS / LOAD_ROUNDS;
            let pg = groups(t);
            let cpu = |comm: &str| pg.map_or(0.0, |g| group_cpu_ms(g, comm));
            let (w0, n0) = (cpu("workerd"), cpu("node"));
            let (seconds, statuses) = endpoints.load(t, n, LOAD_CLIENTS).await;
            // Work the answers left behind (settling, usage records) is this target's CPU too.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (w1, n1) = (cpu("workerd"), cpu("node"));
            eprintln!(
                "bench: round {round}, {}: {:.0} req/s, workerd {:.2} ms/request",
                t.label(),
                n as f64 / seconds,
                (w1 - w0) / n as f64
            );
            samples[t.index()]
                .load
                .add(seconds, &statuses, w1 - w0, n1 - n0);
        }
        // The counter-call references, once a round after the four targets: two calls, then one.
        for (calls, load) in [(2, &mut floor_load), (1, &mut floor1_load)] {
            let n = LOAD_REQUESTS / LOAD_ROUNDS;
            let cpu = |comm: &str| floor.process_group().map_or(0.0, |g| group_cpu_ms(g, comm));
            let (w0, n0) = (cpu("workerd"), cpu("node"));
            let (seconds, statuses) = endpoints.load_floor(calls, n, LOAD_CLIENTS).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (w1, n1) = (cpu("workerd"), cpu("node"));
            load.add(seconds, &statuses, w1 - w0, n1 - n0);
        }
    }
    let measured_for = measure_start.elapsed();
    let reloaded = gateway_reloaded(&gateway.log_path, log_mark);

    // The servers go before the table is printed; the figures are already taken.
    drop(bare);
    drop(floor);
    drop(gateway);
    drop(mock);

    print_report(
        &samples,
        &Run {
            iters,
            stream_iters,
            gap,
            wasm_raw,
            wasm_gz,
            measured_for,
            total: started.elapsed(),
            load,
            floor: floor_load,
            floor1: floor1_load,
        },
    );
    if reloaded {
        println!(
            "WARNING: a watched source file changed during the run and wrangler rebuilt and reloaded \
             the gateway; these figures are not trustworthy, run the bench again"
        );
    }

    let mut ok = true;
    for t in TARGETS {
        let s = &samples[t.index()];
        if s.plain_errors * 10 > iters || s.stream_errors * 10 > stream_iters {
            ok = false;
            eprintln!(
                "bench: {} failed {} of {iters} non-streamed and {} of {stream_iters} streamed requests; first: {}",
                t.label(),
                s.plain_errors,
                s.stream_errors,
                s.first_error.as_deref().unwrap_or("-")
            );
        } else if let Some(e) = &s.first_error {
            eprintln!("bench: {} had failures (first: {e})", t.label());
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Two tenants on the gateway, both on the mock: (c) unlimited, (d) a plan with limits.
async fn configure(
    gateway: &Gateway,
    mock: &MockUpstream,
    direct_url: &str,
    bare: &BareWorker,
    floor: &BareWorker,
) -> Result<Endpoints> {
    let admin = gateway.admin();
    let upstream = |tag: &str| {
        json!({
            "base_url": mock.base_url(&format!("{SCENARIO}/tag/{tag}")),
            "api_key": "sk-bench-upstream",
            "default_model": "mock-model",
        })
    };
    let unlimited = admin
        .tenant("bench-unlimited", "chat", upstream("sluice-unlimited"))
        .await?;
    let limited = admin
        .tenant("bench-limited", "chat", upstream("sluice-limited"))
        .await?;
    let plan = admin
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/gateway/apis/{}/plans/default", limited.api_id),
            // A per-request cap, as a real plan with a token budget has: without one, every
            // uncapped request holds the whole day's room until it settles (issue 8's worst case),
            // and concurrent requests are refused.
            Some(json!({"requests_per_minute": 1_000_000, "tokens_per_day": 1_000_000_000u64, "max_tokens_per_request": 1024})),
        )
        .await?;
    expect_status(&plan, 200, "PATCH the limited API's default plan")?;
    for api_id in [&unlimited.api_id, &limited.api_id] {
        let on = admin
            .call(
                reqwest::Method::PATCH,
                &format!("/api/v1/gateway/apis/{api_id}"),
                Some(json!({"server_timing": true})),
            )
            .await?;
        expect_status(&on, 200, "PATCH an API's server_timing")?;
    }
    Ok(Endpoints {
        http: http_client(),
        direct_url: direct_url.to_string(),
        bare_url: format!("{}/v1/chat/completions", bare.base_url),
        floor_url: format!("{}/v1/chat/completions", floor.base_url),
        gateway_url: gateway.base_url.clone(),
        unlimited,
        limited,
    })
}

/// Whether wrangler's log, past `offset`, shows a rebuild or a reload of the gateway.
fn gateway_reloaded(log: &std::path::Path, offset: u64) -> bool {
    let text = fs::read(log).unwrap_or_default();
    let tail = String::from_utf8_lossy(&text[(offset as usize).min(text.len())..]).into_owned();
    [
        "restarting build",
        "Reloading local server",
        "Local server updated",
    ]
    .iter()
    .any(|needle| tail.contains(needle))
}

/// How the run went, for the report's header and footer.
struct Run {
    iters: usize,
    stream_iters: usize,
    gap: Duration,
    wasm_raw: u64,
    wasm_gz: u64,
    measured_for: Duration,
    total: Duration,
    load: String,
    /// The bare worker plus two counter calls (benches/counter-calls), under the same load.
    floor: Load,
    /// The same with only the admission call.
    floor1: Load,
}

fn print_report(samples: &[Samples], run: &Run) {
    let Run {
        iters,
        stream_iters,
        gap,
        wasm_raw,
        wasm_gz,
        measured_for,
        total,
        ref load,
        ref floor,
        ref floor1,
    } = *run;
    struct Row {
        p50: f64,
        p99: f64,
        mean: f64,
        ttft50: f64,
        ttft99: f64,
    }
    let rows: Vec<Row> = samples
        .iter()
        .map(|s| {
            let p = sorted(&s.plain);
            let t = sorted(&s.ttft);
            Row {
                p50: percentile(&p, 50.0),
                p99: percentile(&p, 99.0),
                mean: p.iter().sum::<f64>() / p.len().max(1) as f64,
                ttft50: percentile(&t, 50.0),
                ttft99: percentile(&t, 99.0),
            }
        })
        .collect();

    println!();
    println!(
        "Sluice gateway benchmark: one interleaved run, one mock upstream (scenario `{SCENARIO}`)"
    );
    println!(
        "{}",
        match with_devtools() {
            true => "both workers under `wrangler dev`, devtools inspector on (SLUICE_BENCH_DEVTOOLS=1)",
            false => "both workers on wrangler's dev server, devtools inspector off (scripts/serve.mjs; SLUICE_BENCH_DEVTOOLS=1 for `wrangler dev`)",
        }
    );
    println!(
        "{iters} non-streamed + {stream_iters} streamed iterations after {WARMUP_ITERS} + {WARMUP_STREAM_ITERS} warm-up; \
         each iteration calls every target once, order permuted; {} ms gap between requests",
        gap.as_millis()
    );
    println!();
    println!(
        "{:<30} {:>9} {:>9} {:>9} {:>11} {:>11} {:>7}",
        "target", "p50 ms", "p99 ms", "mean ms", "TTFT p50", "TTFT p99", "errors"
    );
    println!("{}", "-".repeat(92));
    for t in TARGETS {
        let r = &rows[t.index()];
        let s = &samples[t.index()];
        println!(
            "{:<30} {:>9.2} {:>9.2} {:>9.2} {:>11.2} {:>11.2} {:>7}",
            t.label(),
            r.p50,
            r.p99,
            r.mean,
            r.ttft50,
            r.ttft99,
            s.plain_errors + s.stream_errors
        );
    }
    println!(
        "(non-streamed: send to last body byte; TTFT: send to first content SSE event, in ms)"
    );

    let bare = &rows[Target::Bare.index()];
    println!();
    println!(
        "{:<30} {:>9} {:>9} {:>11} {:>16}",
        "Sluice / bare worker", "p50", "p99", "TTFT p50", "p50 over bare"
    );
    println!("{}", "-".repeat(79));
    for t in [Target::Sluice, Target::SluiceLimited] {
        let r = &rows[t.index()];
        println!(
            "{:<30} {:>8.2}x {:>8.2}x {:>10.2}x {:>13.2} ms",
            t.label(),
            r.p50 / bare.p50,
            r.p99 / bare.p99,
            r.ttft50 / bare.ttft50,
            r.p50 - bare.p50
        );
    }
    let (c, d) = (
        &rows[Target::Sluice.index()],
        &rows[Target::SluiceLimited.index()],
    );
    let direct = &rows[Target::Direct.index()];
    println!();
    println!(
        "wrangler dev floor (bare - direct), p50: {:+.2} ms; quota check with limits (d - c): p50 {:+.2} ms, TTFT p50 {:+.2} ms",
        bare.p50 - direct.p50,
        d.p50 - c.p50,
        d.ttft50 - c.ttft50
    );
    println!();
    println!(
        "{:<30} {:>10} {:>8} {:>6} {:>9} {:>13} {:>11}",
        "throughput, 16 clients",
        "req/s",
        "x bare",
        "5xx",
        "no reply",
        "workerd CPU/r",
        "node CPU/r"
    );
    println!("{}", "-".repeat(93));
    let per_s = |l: &Load| {
        (l.requests - l.server_errors - l.refused - l.failures) as f64 / l.seconds.max(1e-9)
    };
    let bare_load = &samples[Target::Bare.index()].load;
    for t in TARGETS {
        let l = &samples[t.index()].load;
        let cpu = |ms: f64| {
            if t == Target::Direct {
                "-".to_string()
            } else {
                format!("{:.2} ms", ms / l.requests.max(1) as f64)
            }
        };
        println!(
            "{:<30} {:>10.1} {:>7.2}x {:>6} {:>6} {:>9} {:>13} {:>11}",
            t.label(),
            per_s(l),
            per_s(l) / per_s(bare_load),
            l.server_errors,
            l.refused,
            l.failures,
            cpu(l.workerd_cpu_ms),
            cpu(l.node_cpu_ms)
        );
    }
    for (label, l) in [
        ("(e) bare + 2 counter calls", floor),
        ("(f) bare + 1 counter call", floor1),
    ] {
        let per_request = |ms: f64| format!("{:.2} ms", ms / l.requests.max(1) as f64);
        println!(
            "{:<30} {:>10.1} {:>7.2}x {:>6} {:>6} {:>9} {:>13} {:>11}",
            label,
            per_s(l),
            per_s(l) / per_s(bare_load),
            l.server_errors,
            l.refused,
            l.failures,
            per_request(l.workerd_cpu_ms),
            per_request(l.node_cpu_ms)
        );
    }
    println!(
        "((e) and (f) are references, no WASM, benches/counter-calls: the bare worker plus one Durable Object call before the upstream and one after (e), or only the one before (f))"
    );
    println!(
        "(req/s counts 200s only; CPU: user + system of the target's workerd processes, and of its wrangler node process, per request)"
    );

    println!();
    println!(
        "{:<30} {:>8} {:>8} {:>8} {:>12}",
        "storage calls per request", "d1", "kv", "do", "max kv"
    );
    println!("{}", "-".repeat(70));
    for t in [Target::Sluice, Target::SluiceLimited] {
        let c = &samples[t.index()].calls;
        let mean =
            |i: usize| c.iter().map(|x| f64::from(x[i])).sum::<f64>() / c.len().max(1) as f64;
        println!(
            "{:<30} {:>8.2} {:>8.2} {:>8.2} {:>12}",
            t.label(),
            mean(0),
            mean(1),
            mean(2),
            c.iter().map(|x| x[1]).max().unwrap_or(0)
        );
    }
    println!(
        "(from Server-Timing, before the answer's headers; settling is after the answer: carried by the consumer's next admission, or one call of its own 20 ms later)"
    );

    // The issue's targets, relative to the bare worker in this run.
    let unlimited_load = &samples[Target::Sluice.index()].load;
    let cpu_over = unlimited_load.workerd_cpu_ms / unlimited_load.requests.max(1) as f64
        - bare_load.workerd_cpu_ms / bare_load.requests.max(1) as f64;
    let calls = &samples[Target::Sluice.index()].calls;
    let max_of = |i: usize| calls.iter().map(|x| x[i]).max().unwrap_or(0);
    let load_5xx: usize = [Target::Sluice, Target::SluiceLimited]
        .iter()
        .map(|t| samples[t.index()].load.server_errors + samples[t.index()].load.refused)
        .sum();
    let checks = [
        (
            "p50 over bare <= +2 ms",
            format!("{:+.2} ms", c.p50 - bare.p50),
            c.p50 - bare.p50 <= 2.0,
        ),
        (
            "TTFT p50 over bare <= +2 ms",
            format!("{:+.2} ms", c.ttft50 - bare.ttft50),
            c.ttft50 - bare.ttft50 <= 2.0,
        ),
        (
            "throughput >= 0.8x bare",
            format!(
                "{:.2}x (e: {:.2}x, f: {:.2}x)",
                per_s(unlimited_load) / per_s(bare_load),
                per_s(floor) / per_s(bare_load),
                per_s(floor1) / per_s(bare_load)
            ),
            per_s(unlimited_load) / per_s(bare_load) >= 0.8,
        ),
        (
            "no 5xx (nor 4xx) under load",
            format!("{load_5xx}"),
            load_5xx == 0,
        ),
        (
            "workerd CPU/request over bare <= +2 ms",
            format!("{cpu_over:+.2} ms"),
            cpu_over <= 2.0,
        ),
        (
            "D1 calls per request = 0",
            format!("max {}", max_of(0)),
            max_of(0) == 0,
        ),
        (
            "DO calls before the answer <= 1 (+1 settle)",
            format!("max {}", max_of(2)),
            max_of(2) <= 1,
        ),
        (
            "KV calls per request <= 1",
            format!("max {}", max_of(1)),
            max_of(1) <= 1,
        ),
        (
            "WASM gzip <= 450 KiB",
            format!("{:.0} KiB", wasm_gz as f64 / 1024.0),
            wasm_gz <= 450 * 1024,
        ),
    ];
    println!();
    println!(
        "{:<46} {:>18} {:>6}",
        "target (Sluice, unlimited plan)", "this run", "met"
    );
    println!("{}", "-".repeat(72));
    for (name, figure, met) in checks {
        println!(
            "{name:<46} {figure:>18} {:>6}",
            if met { "yes" } else { "NO" }
        );
    }
    println!();
    println!(
        "WASM {WASM_PATH}: {} bytes raw, {} bytes gzip (gzip -c, {:.1}%)",
        with_thousands(wasm_raw),
        with_thousands(wasm_gz),
        100.0 * wasm_gz as f64 / wasm_raw.max(1) as f64
    );
    println!(
        "measured in {:.1} s; whole bench {:.1} s; load average at start {} (other processes on this machine add noise)",
        measured_for.as_secs_f64(),
        total.as_secs_f64(),
        load
    );
}
