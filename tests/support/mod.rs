//! Shared by the end-to-end tests (tests/e2e) and the benchmark (benches/): the real gateway under
//! `wrangler dev`, a mock OpenAI-compatible upstream, an admin client and a timestamping stream reader.
//!
//! Include it with `#[path = "../tests/support/mod.rs"] mod support;` (from benches/) or
//! `#[path = "../support/mod.rs"] mod support;` (from tests/e2e/). Nothing here assumes a test harness.
//!
//! One file a job: `process` (the gateway under wrangler), `admin` (replies and the admin client),
//! `chat` (data-plane requests and the SSE reader), `mock_upstream`, `servers` (mail and JWKS), and
//! `http1` (the bit of HTTP the local servers speak).
#![allow(dead_code)]

mod admin;
mod chat;
mod http1;
mod mock_upstream;
mod process;
mod servers;

// Each includer (the e2e tests, the benchmark) uses only part of this.
#[allow(unused_imports)]
pub use {admin::*, chat::*, http1::*, mock_upstream::*, process::*, servers::*};

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
