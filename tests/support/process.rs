//! The gateway under `wrangler dev`: start it on free ports with a fresh state directory, restart
//! it on the same state, stop its whole process group.

use super::*;

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
    /// Where its local KV, D1 and Durable Objects live (`--persist-to`).
    pub persist_dir: PathBuf,
    child: Option<Child>,
    /// Extra `--var NAME:VALUE` pairs (e.g. the mail provider's URL).
    vars: Vec<(String, String)>,
    /// Served by `wrangler dev` (with its devtools inspector), or by `scripts/serve.mjs` (wrangler's
    /// dev server with the inspector off, for the bench: see that script).
    devtools: bool,
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

    /// Like `start`, on wrangler's dev server with the devtools inspector off (`scripts/serve.mjs`):
    /// what `make bench` measures. No Cron Trigger route (`/__scheduled`), no rebuild on change.
    pub async fn start_without_devtools() -> Result<Gateway> {
        Self::launched(start_timeout(), Vec::new(), false).await
    }

    /// Starts a gateway with extra `--var` settings.
    pub async fn start_with_vars(
        timeout: Duration,
        vars: Vec<(String, String)>,
    ) -> Result<Gateway> {
        Self::launched(timeout, vars, true).await
    }

    async fn launched(
        timeout: Duration,
        vars: Vec<(String, String)>,
        devtools: bool,
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
            devtools,
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
        quiet(Command::new(wrangler_bin()?), &repo_root(), &self.log_path)
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

        // 2. wrangler dev (or its dev server without devtools), in its own process group so stopping
        // it takes workerd along.
        let mut dev = dev_server(
            self.devtools,
            self.port,
            self.inspector_port,
            &repo_root(),
            &self.log_path,
        )?;
        if self.devtools {
            // `GET /__scheduled` runs the Cron Trigger's handler (the housekeeping case).
            dev.arg("--test-scheduled");
        }
        dev.args(["--persist-to", &persist])
            .args(["--var", &format!("ADMIN_TOKEN:{}", self.admin_token)]);
        if !self.vars.iter().any(|(n, _)| n == "ENCRYPTION_KEY") {
            dev.args(["--var", &format!("ENCRYPTION_KEY:{TEST_ENCRYPTION_KEY}")]);
        }
        for (name, value) in &self.vars {
            dev.args(["--var", &format!("{name}:{value}")]);
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
                    return Err(format!("wrangler exited early: {status}").into());
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

    /// The process group of wrangler and its workerd (the wrangler process's id), while running.
    pub fn process_group(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// An admin client authenticated with this gateway's ADMIN_TOKEN.
    pub fn admin(&self) -> Admin {
        Admin::new(&self.base_url, &self.admin_token)
    }

    /// Sets (or, with `None`, removes) a `--var` for the next start.
    pub fn set_var(&mut self, name: &str, value: Option<&str>) {
        self.vars.retain(|(n, _)| n != name);
        if let Some(v) = value {
            self.vars.push((name.to_string(), v.to_string()));
        }
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

fn wrangler_bin() -> Result<PathBuf> {
    let bin = repo_root().join("node_modules/.bin/wrangler");
    if !bin.exists() {
        return Err(format!("{} is missing; run `make setup`", bin.display()).into());
    }
    Ok(bin)
}

/// `cmd` run from `cwd` with wrangler's quiet settings, its output appended to `log`.
fn quiet(mut cmd: Command, cwd: &Path, log: &Path) -> Result<Command> {
    let log = OpenOptions::new().create(true).append(true).open(log)?;
    cmd.current_dir(cwd)
        .env("CI", "true")
        .env("WRANGLER_SEND_METRICS", "false")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    Ok(cmd)
}

/// A worker's dev server on `port`, run from `cwd` (the config is its `wrangler.toml`) in its own
/// process group, so stopping it takes workerd along: `wrangler dev` with its devtools inspector on
/// `inspector_port` when `devtools`, else wrangler's dev server with the inspector off
/// (`scripts/serve.mjs`, what `make bench` measures). Callers add `--persist-to` and `--var`s.
pub fn dev_server(
    devtools: bool,
    port: u16,
    inspector_port: u16,
    cwd: &Path,
    log: &Path,
) -> Result<Command> {
    let mut cmd = if devtools {
        let mut cmd = Command::new(wrangler_bin()?);
        cmd.args(["dev", "--ip", "127.0.0.1"])
            .args(["--inspector-port", &inspector_port.to_string()])
            .arg("--show-interactive-dev-session=false");
        cmd
    } else {
        let mut cmd = Command::new("node");
        cmd.arg(repo_root().join("scripts/serve.mjs"));
        cmd
    };
    cmd.args(["--config", "wrangler.toml"])
        .args(["--port", &port.to_string()]);
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    quiet(cmd, cwd, log)
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
