//! Shared by the end-to-end tests (tests/e2e) and the benchmark (benches/): the real gateway under
//! `wrangler dev`, a mock OpenAI-compatible upstream, an admin client and a timestamping stream reader.
//!
//! Include it with `#[path = "../tests/support/mod.rs"] mod support;` (from benches/) or
//! `#[path = "../support/mod.rs"] mod support;` (from tests/e2e/). Nothing here assumes a test harness.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = BoxError> = std::result::Result<T, E>;

/// The repository root (where wrangler.toml lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A unique-enough suffix for names: process id, time and a counter.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{:x}-{}",
        std::process::id(),
        nanos & 0xffff_ffff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `n` distinct free TCP ports on 127.0.0.1 (all held open until every one is chosen).
pub fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// A plain-HTTP client for talking to local servers: never through a proxy, no pooling surprises.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("reqwest client")
}

// ------------------------------------------------------------------------------------------------
// The gateway under `wrangler dev`

/// How long `Gateway::start` waits for `GET /health` to answer 200.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(90);
/// The ENCRYPTION_KEY the test gateway runs with (any value of 16+ characters works).
pub const TEST_ENCRYPTION_KEY: &str = "0123456789abcdef0123";

/// `DEFAULT_START_TIMEOUT`, or `SLUICE_GATEWAY_START_TIMEOUT` seconds when set.
pub fn start_timeout() -> Duration {
    std::env::var("SLUICE_GATEWAY_START_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_START_TIMEOUT)
}

/// A running gateway: `wrangler dev` on a free port with a fresh local state directory.
/// Dropping it (or `stop`) kills wrangler's whole process group and removes the state directory.
pub struct Gateway {
    /// e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub base_url: String,
    pub admin_token: String,
    pub port: u16,
    pub inspector_port: u16,
    /// wrangler's stdout and stderr.
    pub log_path: PathBuf,
    persist_dir: PathBuf,
    child: Option<Child>,
    /// Extra `--var NAME:VALUE` pairs (e.g. the mail provider's URL).
    vars: Vec<(String, String)>,
}

impl Gateway {
    /// Starts a gateway and waits until it answers `GET /health`: at most `DEFAULT_START_TIMEOUT`, or
    /// `SLUICE_GATEWAY_START_TIMEOUT` seconds when set (wrangler's build hook may have to rebuild).
    pub async fn start() -> Result<Gateway> {
        let timeout = std::env::var("SLUICE_GATEWAY_START_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_START_TIMEOUT);
        Self::start_with_timeout(timeout).await
    }

    /// Like `start` (same start-up bound), with extra `--var` settings.
    pub async fn start_with(vars: Vec<(String, String)>) -> Result<Gateway> {
        Self::start_with_vars(start_timeout(), vars).await
    }

    pub async fn start_with_timeout(timeout: Duration) -> Result<Gateway> {
        Self::start_with_vars(timeout, Vec::new()).await
    }

    /// Starts a gateway with extra `--var` settings.
    pub async fn start_with_vars(
        timeout: Duration,
        vars: Vec<(String, String)>,
    ) -> Result<Gateway> {
        let root = repo_root();
        let ports = free_ports(2)?;
        let (port, inspector_port) = (ports[0], ports[1]);
        let suffix = unique_suffix();
        let persist_dir = std::env::temp_dir().join(format!("sluice-gw-{suffix}"));
        fs::create_dir_all(&persist_dir)?;
        let log_dir = root.join("target").join("e2e-logs");
        fs::create_dir_all(&log_dir)?;
        let log_path = log_dir.join(format!("wrangler-{port}.log"));
        File::create(&log_path)?;
        let mut gw = Gateway {
            base_url: format!("http://127.0.0.1:{port}"),
            admin_token: format!("e2e-admin-{suffix}"),
            port,
            inspector_port,
            log_path,
            persist_dir,
            child: None,
            vars,
        };
        let started = Instant::now();
        if let Err(e) = gw.launch(timeout).await {
            eprintln!(
                "gateway did not start after {:.1?}: {e}\n--- last lines of {} ---\n{}\n---",
                started.elapsed(),
                gw.log_path.display(),
                gw.log_tail(60)
            );
            gw.stop();
            return Err(e);
        }
        Ok(gw)
    }

    fn wrangler(&self) -> Result<Command> {
        let root = repo_root();
        let bin = root.join("node_modules/.bin/wrangler");
        if !bin.exists() {
            return Err(format!("{} is missing; run `make setup`", bin.display()).into());
        }
        let log = OpenOptions::new().append(true).open(&self.log_path)?;
        let mut cmd = Command::new(bin);
        cmd.current_dir(&root)
            .env("CI", "true")
            .env("WRANGLER_SEND_METRICS", "false")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(cmd)
    }

    async fn launch(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let persist = self.persist_dir.to_string_lossy().into_owned();

        // 1. The D1 schema, into the fresh state directory.
        let mut migrate = self.wrangler()?;
        migrate.args([
            "d1",
            "migrations",
            "apply",
            "DB",
            "--local",
            "--persist-to",
            &persist,
        ]);
        let status = run_bounded(migrate, deadline).await?;
        if !status.success() {
            return Err(format!("`wrangler d1 migrations apply` failed: {status}").into());
        }

        // 2. wrangler dev, in its own process group so stopping it takes workerd along.
        let mut dev = self.wrangler()?;
        dev.args(["dev", "--ip", "127.0.0.1"])
            .args(["--port", &self.port.to_string()])
            .args(["--inspector-port", &self.inspector_port.to_string()])
            .args(["--persist-to", &persist])
            .args(["--var", &format!("ADMIN_TOKEN:{}", self.admin_token)])
            .args(["--var", &format!("ENCRYPTION_KEY:{TEST_ENCRYPTION_KEY}")])
            .arg("--show-interactive-dev-session=false");
        for (name, value) in &self.vars {
            dev.args(["--var", &format!("{name}:{value}")]);
        }
        {
            use std::os::unix::process::CommandExt;
            dev.process_group(0);
        }
        self.child = Some(dev.spawn()?);

        // 3. Wait for /health.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let health = format!("{}/health", self.base_url);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    return Err(format!("wrangler dev exited early: {status}").into());
                }
            }
            if let Ok(resp) = http.get(&health).send().await {
                if resp.status() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err("timed out waiting for GET /health to answer 200".into());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The last `lines` lines of wrangler's output.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of_file(&self.log_path, lines)
    }

    /// An admin client authenticated with this gateway's ADMIN_TOKEN.
    pub fn admin(&self) -> Admin {
        Admin::new(&self.base_url, &self.admin_token)
    }

    /// Kills the running gateway outright (SIGKILL, as a crash or eviction would) and starts it again
    /// on the same port with the same local state: what survives is what was durably stored.
    pub async fn restart(&mut self, timeout: Duration) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            signal_group(child.id() as libc::pid_t, libc::SIGKILL);
            let _ = child.wait();
        }
        self.launch(timeout).await
    }

    /// Stops wrangler (SIGTERM to the process group, SIGKILL after 5 s) and removes the state dir.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_process_group(child);
        }
        if self.persist_dir.exists() {
            let _ = fs::remove_dir_all(&self.persist_dir);
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Ends a child started in its own process group: SIGTERM to the group, SIGKILL to whatever is left
/// after 5 s (workerd, a build), then reaps the child.
pub fn stop_process_group(mut child: Child) {
    let pgid = child.id() as libc::pid_t;
    signal_group(pgid, libc::SIGTERM);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    signal_group(pgid, libc::SIGKILL);
    let _ = child.wait();
}

fn signal_group(pgid: libc::pid_t, signal: libc::c_int) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals exactly the process group we created.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// Runs a command to completion, killing it if it is still running at `deadline`.
async fn run_bounded(mut cmd: Command, deadline: Instant) -> Result<std::process::ExitStatus> {
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn()?;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let pgid = child.id() as libc::pid_t;
            signal_group(pgid, libc::SIGKILL);
            let _ = child.wait();
            return Err(format!("{cmd:?} did not finish in time").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail_of_file(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ------------------------------------------------------------------------------------------------
// Admin client

/// A response read whole: status, headers and body text (with a JSON view when it parses).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub async fn read(resp: reqwest::Response) -> Result<Reply> {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        Ok(Reply {
            status,
            headers,
            text,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    /// The body as JSON, or `Value::Null` when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// The problem `type` of a problem+json body.
    pub fn problem_type(&self) -> Option<String> {
        self.json()
            .get("type")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// Short description for failure messages.
    pub fn describe(&self) -> String {
        let body: String = self.text.chars().take(600).collect();
        format!("{} {} {}", self.status, self.content_type(), body)
    }
}

/// Expects `status`, else an error naming what came back.
pub fn expect_status(reply: &Reply, status: u16, what: &str) -> Result<()> {
    if reply.status == status {
        Ok(())
    } else {
        Err(format!("{what}: expected {status}, got {}", reply.describe()).into())
    }
}

/// The owner's admin API.
#[derive(Clone)]
pub struct Admin {
    pub base_url: String,
    pub token: String,
    pub http: reqwest::Client,
}

/// A project with one API, one consumer and one key: what most data-plane tests start from.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub project: String,
    pub api: String,
    pub api_id: String,
    pub consumer_id: String,
    pub key_id: String,
    pub secret: String,
}

impl Admin {
    pub fn new(base_url: &str, token: &str) -> Admin {
        Admin {
            base_url: base_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: http_client(),
        }
    }

    /// Any admin call, authenticated; returns whatever came back.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Reply> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(20));
        if let Some(b) = body {
            req = req.json(&b);
        }
        Reply::read(req.send().await?).await
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> Result<Value> {
        let what = format!("{method} {path}");
        let reply = self.call(method, path, body).await?;
        expect_status(&reply, status, &what)?;
        Ok(reply.json())
    }

    pub async fn create_project(&self, slug: &str) -> Result<Value> {
        self.expect(
            reqwest::Method::POST,
            "/api/v1/projects",
            Some(json!({"slug": slug, "name": format!("Project {slug}")})),
            201,
        )
        .await
    }

    /// Creates an API in `consumer-key-only` mode; `upstream` is the `upstream` object as sent.
    pub async fn create_api(&self, project: &str, slug: &str, upstream: Value) -> Result<Value> {
        self.expect(
            reqwest::Method::POST,
            "/api/v1/gateway/apis",
            Some(json!({
                "project": project, "slug": slug, "name": format!("API {slug}"),
                "auth_mode": "consumer-key-only", "upstream": upstream,
            })),
            201,
        )
        .await
    }

    pub async fn get_api(&self, id: &str) -> Result<Reply> {
        self.call(
            reqwest::Method::GET,
            &format!("/api/v1/gateway/apis/{id}"),
            None,
        )
        .await
    }

    pub async fn patch_api(&self, id: &str, patch: Value) -> Result<Value> {
        self.expect(
            reqwest::Method::PATCH,
            &format!("/api/v1/gateway/apis/{id}"),
            Some(patch),
            200,
        )
        .await
    }

    pub async fn create_consumer(&self, project: &str, name: &str) -> Result<Value> {
        self.expect(
            reqwest::Method::POST,
            &format!("/api/v1/projects/{project}/consumers"),
            Some(json!({"name": name})),
            201,
        )
        .await
    }

    /// `status` is `enabled` or `disabled`.
    pub async fn set_consumer_status(
        &self,
        project: &str,
        id: &str,
        status: &str,
    ) -> Result<Value> {
        self.expect(
            reqwest::Method::PATCH,
            &format!("/api/v1/projects/{project}/consumers/{id}"),
            Some(json!({"status": status})),
            200,
        )
        .await
    }

    /// Returns `{id, name, secret, prefix, ...}`: the only time the secret is shown.
    pub async fn create_key(&self, project: &str, consumer_id: &str, name: &str) -> Result<Value> {
        self.expect(
            reqwest::Method::POST,
            &format!("/api/v1/projects/{project}/consumers/{consumer_id}/keys"),
            Some(json!({"name": name})),
            201,
        )
        .await
    }

    pub async fn list_keys(&self, project: &str) -> Result<Reply> {
        self.call(
            reqwest::Method::GET,
            &format!("/api/v1/projects/{project}/keys"),
            None,
        )
        .await
    }

    pub async fn revoke_key(&self, project: &str, key_id: &str) -> Result<()> {
        let reply = self
            .call(
                reqwest::Method::DELETE,
                &format!("/api/v1/projects/{project}/keys/{key_id}"),
                None,
            )
            .await?;
        expect_status(&reply, 204, "revoke key")
    }

    /// A project `project` with an API `api` on `upstream`, a consumer and one key.
    pub async fn tenant(&self, project: &str, api: &str, upstream: Value) -> Result<Tenant> {
        self.create_project(project).await?;
        let created = self.create_api(project, api, upstream).await?;
        let consumer = self.create_consumer(project, "consumer one").await?;
        let consumer_id = str_field(&consumer, "id")?;
        let key = self.create_key(project, &consumer_id, "key one").await?;
        Ok(Tenant {
            project: project.to_string(),
            api: api.to_string(),
            api_id: str_field(&created, "id")?,
            consumer_id,
            key_id: str_field(&key, "id")?,
            secret: str_field(&key, "secret")?,
        })
    }
}

/// A string member of a JSON object, or an error naming what was missing.
pub fn str_field(v: &Value, name: &str) -> Result<String> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("no string `{name}` in {v}").into())
}

// ------------------------------------------------------------------------------------------------
// Data plane helpers

/// How a client presents its consumer key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHeader {
    Bearer,
    XApiKey,
    None,
}

/// A chat request body; `model: None` leaves the model out (the API's default applies).
pub fn chat_body(model: Option<&str>, text: &str, stream: bool) -> Value {
    let mut body = json!({
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
    });
    if let Some(m) = model {
        body["model"] = Value::from(m);
    }
    body
}

/// Builds `POST {base}/v1/{project}/{api}/chat/completions` with the key in the chosen header.
pub fn chat_request(
    http: &reqwest::Client,
    base_url: &str,
    project: &str,
    api: &str,
    key: Option<(&str, KeyHeader)>,
) -> reqwest::RequestBuilder {
    let url = format!("{base_url}/v1/{project}/{api}/chat/completions");
    let req = http.post(url).header("content-type", "application/json");
    match key {
        Some((k, KeyHeader::Bearer)) => req.bearer_auth(k),
        Some((k, KeyHeader::XApiKey)) => req.header("x-api-key", k),
        _ => req,
    }
}

/// One piece of a response body, with when it arrived (since the request was sent).
#[derive(Debug, Clone)]
pub struct TimedChunk {
    pub at: Duration,
    pub bytes: Vec<u8>,
}

/// One Server-Sent Event, with when its last byte arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub at: Duration,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.data).ok()
    }
    /// `choices[0].delta.content` of a chat.completion.chunk.
    pub fn content(&self) -> Option<String> {
        self.json()?
            .pointer("/choices/0/delta/content")?
            .as_str()
            .map(str::to_string)
    }
    pub fn is_done(&self) -> bool {
        self.event.is_none() && self.data == "[DONE]"
    }
}

/// A streamed response read to its end, every chunk and event timestamped.
#[derive(Debug)]
pub struct StreamRecord {
    /// When the request was sent; every `at` is measured from here.
    pub start: Instant,
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// When the response head arrived.
    pub head_at: Duration,
    pub chunks: Vec<TimedChunk>,
    pub events: Vec<SseEvent>,
    /// Bytes after the last complete event (a well-formed stream leaves none).
    pub leftover: String,
    /// Set when reading the body failed (the response did not end cleanly).
    pub error: Option<String>,
    /// When the body ended (or failed).
    pub end_at: Duration,
}

impl StreamRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// All content deltas joined.
    pub fn text(&self) -> String {
        self.events.iter().filter_map(SseEvent::content).collect()
    }
    /// The content events (those carrying a non-empty `delta.content`).
    pub fn content_events(&self) -> Vec<&SseEvent> {
        self.events
            .iter()
            .filter(|e| e.content().is_some_and(|c| !c.is_empty()))
            .collect()
    }
    pub fn body(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|c| c.bytes.clone()).collect()
    }
}

/// Sends `req` and reads the streamed answer chunk by chunk, timestamping against the send time.
/// `limit` bounds the whole exchange.
pub async fn send_and_stream(
    req: reqwest::RequestBuilder,
    limit: Duration,
) -> Result<StreamRecord> {
    let start = Instant::now();
    let resp = tokio::time::timeout(limit, req.send())
        .await
        .map_err(|_| "no response head in time")??;
    let head_at = start.elapsed();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut record = StreamRecord {
        start,
        status,
        headers,
        head_at,
        chunks: Vec::new(),
        events: Vec::new(),
        leftover: String::new(),
        error: None,
        end_at: head_at,
    };
    let mut parser = SseParser::default();
    let mut resp = resp;
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, resp.chunk()).await {
            Err(_) => {
                record.error = Some("the stream did not end in time".into());
                break;
            }
            Ok(Err(e)) => {
                record.error = Some(format!("reading the body failed: {e}"));
                break;
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(bytes))) => {
                let at = start.elapsed();
                for (event, data) in parser.push(&bytes) {
                    record.events.push(SseEvent { at, event, data });
                }
                record.chunks.push(TimedChunk {
                    at,
                    bytes: bytes.to_vec(),
                });
            }
        }
    }
    record.end_at = start.elapsed();
    record.leftover = parser.leftover();
    Ok(record)
}

/// A minimal SSE parser (LF or CRLF line endings; `event:` and `data:` fields; comments ignored).
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<(Option<String>, String)> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    out.push((self.event.take(), data));
                }
                self.event = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()),
                None => (line.clone(), String::new()),
            };
            match field.as_str() {
                "event" => self.event = Some(value),
                "data" => match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(&value);
                    }
                    None => self.data = Some(value),
                },
                _ => {}
            }
        }
        out
    }

    /// What has not formed a complete event yet.
    pub fn leftover(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.buf).into_owned();
        if let Some(d) = &self.data {
            s = format!("data: {d}\n{s}");
        }
        s
    }
}

// ------------------------------------------------------------------------------------------------
// Mock OpenAI-compatible upstream

/// What the mock answers, chosen by the URL path `/s/<scenario>[/<key>/<value>]*/chat/completions`:
///
/// - `ok` — a chat.completion (or, for `"stream":true`, `chunks` content chunks `delay` ms apart, a
///   usage chunk with `"choices":[]`, then `data: [DONE]`). Default 3 chunks, no delay.
/// - `status/<code>` — that status with an OpenAI-style error body.
/// - `cut` — streams `chunks` (default 2) chunks `delay` ms apart (default 50), then half of
///   another, then closes the socket without ending the chunked body.
/// - `hang/<ms>` — waits that long before the response head, then answers like `ok`.
///
/// Modifiers for `ok`, `hang` and `cut`:
/// - `honour/1` — an upstream that honours the cap: at most `max_tokens` (or
///   `max_completion_tokens`) chunks per choice, each chunk one token. Without it the mock ignores caps.
/// - `kind/<k>` — what the chunks carry: `content` (default), `tools` (tool-call arguments),
///   `function` (a legacy function call), `refusal`, `audio` (a transcript) or `cjk` (CJK text).
/// - `prompt/<n>` — the prompt tokens it reports (default 7); `nousage/1` — no usage at all.
/// - `stall/<ms>` — a stream pauses that long after its first chunk.
///
/// Any other `key/value` pair (e.g. `tag/<name>`) is ignored, so a test can mark its requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub kind: ScenarioKind,
    pub chunks: usize,
    pub delay_ms: u64,
    pub params: HashMap<String, String>,
}

impl Scenario {
    fn flag(&self, name: &str) -> bool {
        self.params.get(name).is_some_and(|v| v == "1")
    }
    fn number(&self, name: &str) -> Option<u64> {
        self.params.get(name).and_then(|v| v.parse().ok())
    }
    /// What each chunk carries.
    pub fn output(&self) -> &str {
        self.params.get("kind").map_or("content", String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScenarioKind {
    Ok,
    Status(u16),
    Cut,
    Hang(u64),
}

impl Scenario {
    /// Parses the part of the path after `/s/` (without `/chat/completions`).
    pub fn parse(spec: &str) -> Option<Scenario> {
        let segs: Vec<&str> = spec.split('/').filter(|s| !s.is_empty()).collect();
        let (kind, rest) = match segs.as_slice() {
            ["ok", rest @ ..] => (ScenarioKind::Ok, rest),
            ["cut", rest @ ..] => (ScenarioKind::Cut, rest),
            ["status", code, rest @ ..] => (ScenarioKind::Status(code.parse().ok()?), rest),
            ["hang", ms, rest @ ..] => (ScenarioKind::Hang(ms.parse().ok()?), rest),
            _ => return None,
        };
        if rest.len() % 2 != 0 {
            return None;
        }
        let params: HashMap<String, String> = rest
            .chunks(2)
            .map(|kv| (kv[0].to_string(), kv[1].to_string()))
            .collect();
        let default_chunks = if kind == ScenarioKind::Cut { 2 } else { 3 };
        let default_delay = if kind == ScenarioKind::Cut { 50 } else { 0 };
        let chunks = match params.get("chunks") {
            Some(v) => v.parse().ok()?,
            None => default_chunks,
        };
        let delay_ms = match params.get("delay") {
            Some(v) => v.parse().ok()?,
            None => default_delay,
        };
        Some(Scenario {
            kind,
            chunks,
            delay_ms,
            params,
        })
    }
}

/// The text of content chunk `i` (0-based) the mock streams.
pub fn mock_chunk_text(i: usize) -> String {
    format!("tok{i} ")
}

/// The CJK text of chunk `i` for `kind/cjk`: four characters, 12 bytes.
pub fn mock_cjk_text(i: usize) -> String {
    const SET: [&str; 4] = ["漢字テス", "中文输出", "한국어요", "日本語だ"];
    SET[i % 4].to_string()
}

/// The generated text chunk `i` carries for `kind`.
pub fn mock_output_text(kind: &str, i: usize) -> String {
    match kind {
        "cjk" => mock_cjk_text(i),
        "tools" | "function" => format!("{{\"k{i}\":1}}"),
        _ => mock_chunk_text(i),
    }
}

/// The whole reply text for `n` chunks (also the non-streamed completion's content).
pub fn mock_text(n: usize) -> String {
    (0..n).map(mock_chunk_text).collect()
}

/// A request the mock received, and what it sent back.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub seq: usize,
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    /// Header names lower-cased, in order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub received_at: Instant,
    /// The status the mock answered (0 if it never answered).
    pub status: u16,
    /// The response body bytes written so far (without chunked framing).
    pub reply: Vec<u8>,
    /// When each piece of the body was written, and how many body bytes it carried.
    pub writes: Vec<(Instant, usize)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

type Log = Arc<Mutex<Vec<Recorded>>>;

/// The mock upstream server. Stops accepting when dropped.
pub struct MockUpstream {
    pub addr: SocketAddr,
    log: Log,
    accept: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    /// Binds 127.0.0.1 on a free port and serves on the current tokio runtime.
    pub async fn start() -> io::Result<MockUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        let accept_log = log.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let log = accept_log.clone();
                tokio::spawn(async move {
                    let _ = serve_connection(sock, log).await;
                });
            }
        });
        Ok(MockUpstream { addr, log, accept })
    }

    /// The base URL to give an API for `scenario`, e.g. `ok/chunks/5/delay/150`.
    pub fn base_url(&self, scenario: &str) -> String {
        format!("http://{}/s/{}", self.addr, scenario.trim_matches('/'))
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// The requests whose path contains `needle` (e.g. `tag/<name>/`).
    pub fn requests_matching(&self, needle: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.contains(needle))
            .collect()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;

async fn serve_connection(mut sock: TcpStream, log: Log) -> io::Result<()> {
    sock.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some(req) = read_request(&mut sock, &mut buf).await? else {
            return Ok(());
        };
        let wants_close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let seq = {
            let mut log = log.lock().unwrap();
            let seq = log.len();
            log.push(Recorded {
                seq,
                method: req.method.clone(),
                path: req.path.clone(),
                headers: req.headers.clone(),
                body: req.body.clone(),
                received_at: Instant::now(),
                status: 0,
                reply: Vec::new(),
                writes: Vec::new(),
            });
            seq
        };
        let mut out = Responder {
            sock: &mut sock,
            log: &log,
            seq,
        };
        let keep_open = respond(&mut out, &req).await?;
        if !keep_open || wants_close {
            let _ = sock.shutdown().await;
            return Ok(());
        }
    }
}

/// Writes responses and records what was sent.
struct Responder<'a> {
    sock: &'a mut TcpStream,
    log: &'a Log,
    seq: usize,
}

impl Responder<'_> {
    fn note(&self, status: Option<u16>, payload: &[u8]) {
        let mut log = self.log.lock().unwrap();
        if let Some(r) = log.get_mut(self.seq) {
            if let Some(s) = status {
                r.status = s;
            }
            r.reply.extend_from_slice(payload);
            r.writes.push((Instant::now(), payload.len()));
        }
    }

    /// A complete response with Content-Length: head and body in one write.
    async fn whole(
        &mut self,
        status: u16,
        content_type: &str,
        extra: &str,
        body: &[u8],
    ) -> io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{extra}\r\n",
            reason(status),
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        self.note(Some(status), body);
        self.sock.write_all(&out).await
    }

    /// A chunked response head together with its first chunk, in one write.
    async fn chunked_head(
        &mut self,
        status: u16,
        content_type: &str,
        first: &[u8],
    ) -> io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n",
            reason(status)
        )
        .into_bytes();
        out.extend_from_slice(&frame_chunk(first));
        self.note(Some(status), first);
        self.sock.write_all(&out).await
    }

    async fn chunk(&mut self, payload: &[u8]) -> io::Result<()> {
        self.note(None, payload);
        self.sock.write_all(&frame_chunk(payload)).await
    }

    async fn end_chunks(&mut self) -> io::Result<()> {
        self.sock.write_all(b"0\r\n\r\n").await
    }
}

fn frame_chunk(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn openai_error(status: u16, message: &str) -> Vec<u8> {
    json!({"error": {"message": message, "type": "mock_error", "param": null, "code": status}})
        .to_string()
        .into_bytes()
}

/// The SSE event (one `data:` frame) for content chunk `i` of `n`.
fn sse(data: &str) -> Vec<u8> {
    format!("data: {data}\n\n").into_bytes()
}

fn stream_chunk(id: &str, model: &str, i: usize, n: usize) -> Vec<u8> {
    stream_chunk_of("content", id, model, i, n)
}

/// The delta of chunk `i` for `kind`.
fn delta_of(kind: &str, i: usize) -> Value {
    let text = mock_output_text(kind, i);
    let mut delta = match kind {
        "tools" => json!({"tool_calls": [{"index": 0, "function": {"arguments": text}}]}),
        "function" => json!({"function_call": {"arguments": text}}),
        "refusal" => json!({"refusal": text}),
        "audio" => json!({"audio": {"transcript": text}}),
        _ => json!({"content": text}),
    };
    if i == 0 {
        delta["role"] = json!("assistant");
        if kind == "tools" {
            delta["tool_calls"][0]["id"] = json!("call_mock");
            delta["tool_calls"][0]["type"] = json!("function");
            delta["tool_calls"][0]["function"]["name"] = json!("lookup");
        }
    }
    delta
}

fn stream_chunk_of(kind: &str, id: &str, model: &str, i: usize, n: usize) -> Vec<u8> {
    let delta = delta_of(kind, i);
    let finish = if i + 1 == n {
        json!("stop")
    } else {
        Value::Null
    };
    sse(&json!({
        "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
    .to_string())
}

fn usage(prompt: u64, n: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n as u64})
}

/// The completion cap the request carries (the smaller name wins), if any.
fn request_cap(body: &Value) -> Option<usize> {
    ["max_tokens", "max_completion_tokens"]
        .iter()
        .filter_map(|k| body.get(*k).and_then(Value::as_u64))
        .min()
        .map(|c| c as usize)
}

/// Answers one request; returns whether the connection may carry another.
async fn respond(out: &mut Responder<'_>, req: &Request) -> io::Result<bool> {
    let path = req.path.split('?').next().unwrap_or("");
    let scenario = path
        .strip_prefix("/s/")
        .and_then(|p| p.strip_suffix("/chat/completions"))
        .and_then(Scenario::parse);
    let Some(scenario) = scenario else {
        let body = openai_error(404, &format!("mock upstream: no scenario for {path}"));
        out.whole(404, "application/json", "", &body).await?;
        return Ok(true);
    };
    if req.method != "POST" {
        let body = openai_error(405, "mock upstream: use POST");
        out.whole(405, "application/json", "", &body).await?;
        return Ok(true);
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-model")
        .to_string();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let id = format!("chatcmpl-mock{}", out.seq);
    let delay = Duration::from_millis(scenario.delay_ms);
    let mut n = scenario.chunks;
    if scenario.flag("honour") {
        if let Some(cap) = request_cap(&body) {
            n = n.min(cap);
        }
    }
    let choices = body.get("n").and_then(Value::as_u64).unwrap_or(1).max(1) as usize;
    let shape = Shape {
        kind: scenario.output().to_string(),
        prompt: scenario.number("prompt").unwrap_or(7),
        usage: !scenario.flag("nousage"),
        stall: Duration::from_millis(scenario.number("stall").unwrap_or(0)),
        choices,
    };

    match scenario.kind {
        ScenarioKind::Status(code) => {
            let extra = if code == 429 {
                "retry-after: 7\r\n"
            } else {
                ""
            };
            let body = openai_error(code, &format!("mock upstream failure {code}"));
            out.whole(code, "application/json", extra, &body).await?;
            Ok(true)
        }
        ScenarioKind::Hang(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            answer_ok(out, &id, &model, stream, n, delay, &shape).await
        }
        ScenarioKind::Ok => answer_ok(out, &id, &model, stream, n, delay, &shape).await,
        ScenarioKind::Cut => {
            let chunks: Vec<Vec<u8>> = (0..n)
                .map(|i| stream_chunk_of(&shape.kind, &id, &model, i, n + 1))
                .collect();
            if stream {
                // Half of the next event, in a chunk that promises more than ever comes.
                let next = stream_chunk_of(&shape.kind, &id, &model, n, n + 1);
                let half = &next[..next.len() / 2];
                let mut partial = format!("{:x}\r\n", next.len()).into_bytes();
                partial.extend_from_slice(half);
                match chunks.first() {
                    Some(first) => {
                        out.chunked_head(200, "text/event-stream", first).await?;
                        for c in &chunks[1..] {
                            tokio::time::sleep(delay).await;
                            out.chunk(c).await?;
                        }
                        tokio::time::sleep(delay).await;
                        out.note(None, half);
                        out.sock.write_all(&partial).await?;
                    }
                    None => {
                        // Cut at the very first event: the head, then half an event, then nothing.
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                        let mut bytes = head.as_bytes().to_vec();
                        bytes.extend_from_slice(&partial);
                        out.note(Some(200), half);
                        out.sock.write_all(&bytes).await?;
                    }
                }
            } else {
                // A Content-Length that is never reached.
                let body = completion(&id, &model, n, &shape);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let mut bytes = head.into_bytes();
                bytes.extend_from_slice(&body[..body.len() / 2]);
                out.note(Some(200), &body[..body.len() / 2]);
                out.sock.write_all(&bytes).await?;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(false)
        }
    }
}

/// How an answer looks, beyond its length.
struct Shape {
    kind: String,
    prompt: u64,
    usage: bool,
    stall: Duration,
    choices: usize,
}

/// The whole message of a non-streamed answer of `n` chunks of `kind`.
fn message_of(kind: &str, n: usize) -> Value {
    let text: String = (0..n).map(|i| mock_output_text(kind, i)).collect();
    match kind {
        "tools" => json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_mock", "type": "function", "function": {"name": "lookup", "arguments": text}}]}),
        "function" => {
            json!({"role": "assistant", "content": null, "function_call": {"name": "lookup", "arguments": text}})
        }
        "refusal" => json!({"role": "assistant", "content": null, "refusal": text}),
        "audio" => {
            json!({"role": "assistant", "content": null, "audio": {"id": "audio_1", "transcript": text}})
        }
        _ => json!({"role": "assistant", "content": text}),
    }
}

fn completion(id: &str, model: &str, n: usize, shape: &Shape) -> Vec<u8> {
    let choices: Vec<Value> = (0..shape.choices)
        .map(
            |i| json!({"index": i, "message": message_of(&shape.kind, n), "finish_reason": "stop"}),
        )
        .collect();
    let mut v = json!({
        "id": id, "object": "chat.completion", "created": 1_700_000_000, "model": model, "choices": choices,
    });
    if shape.usage {
        v["usage"] = usage(shape.prompt, n * shape.choices);
    }
    v.to_string().into_bytes()
}

async fn answer_ok(
    out: &mut Responder<'_>,
    id: &str,
    model: &str,
    stream: bool,
    n: usize,
    delay: Duration,
    shape: &Shape,
) -> io::Result<bool> {
    if !stream {
        out.whole(
            200,
            "application/json",
            "",
            &completion(id, model, n, shape),
        )
        .await?;
        return Ok(true);
    }
    let mut payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| stream_chunk_of(&shape.kind, id, model, i, n))
        .collect();
    let content_chunks = payloads.len();
    if shape.usage {
        payloads.push(sse(&json!({
            "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
            "choices": [], "usage": usage(shape.prompt, n),
        })
        .to_string()));
    }
    payloads.push(sse("[DONE]"));
    out.chunked_head(200, "text/event-stream", &payloads[0])
        .await?;
    if !shape.stall.is_zero() {
        tokio::time::sleep(shape.stall).await;
    }
    for (i, p) in payloads.iter().enumerate().skip(1) {
        // Content chunks are `delay` apart; usage and [DONE] follow the last one at once.
        if i < content_chunks {
            tokio::time::sleep(delay).await;
        }
        out.chunk(p).await?;
    }
    out.end_chunks().await?;
    Ok(true)
}

/// Reads one HTTP/1.1 request (Content-Length or chunked body). `None` on a clean close.
async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        if !fill(sock, buf).await? {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut req = Request {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        req.body = read_chunked(sock, buf).await?;
    } else {
        let len: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if len > MAX_BODY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
        }
        while buf.len() < len {
            if !fill(sock, buf).await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        req.body = buf.drain(..len).collect();
    }
    Ok(Some(req))
}

async fn read_chunked(sock: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            if !fill(sock, buf).await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        buf.drain(..line_end + 2);
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                if let Some(i) = find(buf, b"\r\n") {
                    let empty = i == 0;
                    buf.drain(..i + 2);
                    if empty {
                        return Ok(body);
                    }
                    continue;
                }
                if !fill(sock, buf).await? {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
        }
        while buf.len() < size + 2 {
            if !fill(sock, buf).await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
    }
}

/// Reads more bytes into `buf`; false at end of stream.
async fn fill(sock: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut tmp = [0u8; 16 * 1024];
    let n = sock.read(&mut tmp).await?;
    buf.extend_from_slice(&tmp[..n]);
    Ok(n > 0)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ------------------------------------------------------------------------------------------------
// Small local servers for the auth tests: a mail provider and an identity provider's JWKS endpoint

/// Maps a request to (status, content type, body).
type Answer = Arc<dyn Fn(&Request) -> (u16, &'static str, Vec<u8>) + Send + Sync>;

/// Serves every connection accepted on `listener` with `answer`. Responses carry a Content-Length
/// and keep the connection open.
fn serve_simple(listener: TcpListener, answer: Answer) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let _ = sock.set_nodelay(true);
                let mut buf = Vec::new();
                while let Ok(Some(req)) = read_request(&mut sock, &mut buf).await {
                    let (status, content_type, body) = answer(&req);
                    let mut out = format!(
                        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
                        reason(status),
                        body.len()
                    )
                    .into_bytes();
                    out.extend_from_slice(&body);
                    if sock.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

/// A mail the gateway sent to the mock provider.
#[derive(Debug, Clone)]
pub struct SentMail {
    pub from: String,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// The Authorization header the gateway sent with it.
    pub authorization: Option<String>,
    /// The request's path.
    pub path: String,
}

impl SentMail {
    /// The first run of exactly six ASCII digits in the text part.
    pub fn code(&self) -> Option<String> {
        six_digit_code(&self.text)
    }
}

/// The first run of exactly six ASCII digits in `text` (not part of a longer number).
pub fn six_digit_code(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i - start == 6 {
                return Some(text[start..i].to_string());
            }
        } else {
            i += 1;
        }
    }
    None
}

/// A Resend-style mail provider on 127.0.0.1: records every `POST /emails` JSON body
/// (`{from, to, subject, text, html}`) and answers 200 `{"id": "..."}`.
pub struct MockMail {
    pub addr: SocketAddr,
    mails: Arc<Mutex<Vec<SentMail>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl MockMail {
    pub async fn start() -> io::Result<MockMail> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mails: Arc<Mutex<Vec<SentMail>>> = Arc::new(Mutex::new(Vec::new()));
        let log = mails.clone();
        let accept = serve_simple(
            listener,
            Arc::new(move |req: &Request| {
                if req.method != "POST" || !req.path.starts_with("/emails") {
                    return (
                        404,
                        "application/json",
                        br#"{"error":"not found"}"#.to_vec(),
                    );
                }
                let v: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
                let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                let mut log = log.lock().unwrap();
                log.push(SentMail {
                    from: s("from"),
                    to: s("to"),
                    subject: s("subject"),
                    text: s("text"),
                    html: s("html"),
                    authorization: req.header("authorization").map(str::to_string),
                    path: req.path.clone(),
                });
                let id = format!("mail-{}", log.len());
                (
                    200,
                    "application/json",
                    json!({ "id": id }).to_string().into_bytes(),
                )
            }),
        );
        Ok(MockMail {
            addr,
            mails,
            accept,
        })
    }

    /// The URL to give the gateway as EMAIL_API_URL.
    pub fn url(&self) -> String {
        format!("http://{}/emails", self.addr)
    }

    /// Every mail received so far, oldest first.
    pub fn mails(&self) -> Vec<SentMail> {
        self.mails.lock().unwrap().clone()
    }

    /// The mails to `to` (compared case-insensitively), oldest first.
    pub fn mails_to(&self, to: &str) -> Vec<SentMail> {
        self.mails()
            .into_iter()
            .filter(|m| m.to.eq_ignore_ascii_case(to))
            .collect()
    }

    /// Waits (at most `limit`) until more than `seen` mails went to `to`; returns the newest.
    pub async fn wait_for_mail(&self, to: &str, seen: usize, limit: Duration) -> Result<SentMail> {
        let deadline = Instant::now() + limit;
        loop {
            let mut mails = self.mails_to(to);
            if mails.len() > seen {
                return Ok(mails.pop().expect("non-empty"));
            }
            if Instant::now() > deadline {
                return Err(format!("no new mail to {to} within {limit:?} ({seen} before)").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The 6-digit code in the newest mail to `to` after the first `seen` (waits at most `limit`).
    pub async fn wait_for_code(&self, to: &str, seen: usize, limit: Duration) -> Result<String> {
        let mail = self.wait_for_mail(to, seen, limit).await?;
        mail.code()
            .ok_or_else(|| format!("no 6-digit code in the mail to {to}: {:?}", mail.text).into())
    }
}

impl Drop for MockMail {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

struct JwksState {
    keys: Value,
    failing: bool,
    hits: usize,
}

/// An identity provider's JWKS endpoint on 127.0.0.1: serves the current key set (changeable at
/// runtime, for rotations) at any path, or 500 while `set_failing(true)`; counts requests.
pub struct JwksServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<JwksState>>,
    accept: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves `{"keys": keys}`.
    pub async fn start(keys: Vec<Value>) -> io::Result<JwksServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(JwksState {
            keys: Value::Array(keys),
            failing: false,
            hits: 0,
        }));
        let shared = state.clone();
        let accept = serve_simple(
            listener,
            Arc::new(move |_req: &Request| {
                let mut s = shared.lock().unwrap();
                s.hits += 1;
                if s.failing {
                    return (500, "text/plain", b"identity provider down".to_vec());
                }
                (
                    200,
                    "application/json",
                    json!({ "keys": s.keys }).to_string().into_bytes(),
                )
            }),
        );
        Ok(JwksServer {
            addr,
            state,
            accept,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    /// Replaces the served keys.
    pub fn set_keys(&self, keys: Vec<Value>) {
        self.state.lock().unwrap().keys = Value::Array(keys);
    }

    /// Adds a key to the served set.
    pub fn add_key(&self, key: Value) {
        if let Value::Array(keys) = &mut self.state.lock().unwrap().keys {
            keys.push(key);
        }
    }

    /// While failing, every request is answered 500.
    pub fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }

    /// How many requests arrived so far (failed ones included).
    pub fn hits(&self) -> usize {
        self.state.lock().unwrap().hits
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
