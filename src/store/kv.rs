//! Typed KV records: session status, the BYO-JWT JWKS cache, the dev mailbox. Each kind names its key
//! shape and value type once.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use worker::{kv::KvStore, Env};

use crate::error::Error;

/// One kind of KV record: its key prefix, value type and how long it lives.
pub trait KvRecord {
    const PREFIX: &'static str;
    const TTL_S: u64;
    type Value: Serialize + DeserializeOwned;
}

/// Whether a managed-mode session still stands (checked on every request with its access token).
pub struct SessionRecord;
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionStatus {
    pub consumer_id: String,
    pub revoked: bool,
}
impl KvRecord for SessionRecord {
    const PREFIX: &'static str = "session:";
    const TTL_S: u64 = 31 * 86_400;
    type Value = SessionStatus;
}

/// An API's JWKS as last fetched. Fresh for an hour; kept longer so it can be served stale.
pub struct JwksRecord;
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedJwks {
    pub jwks: String,
    pub fetched_at: i64,
    /// When an unknown-kid refetch last ran (or was attempted).
    #[serde(default)]
    pub refetched_at: i64,
}
impl KvRecord for JwksRecord {
    const PREFIX: &'static str = "jwks:";
    const TTL_S: u64 = 7 * 86_400;
    type Value = CachedJwks;
}

/// Mails the gateway would have sent, in dev mode without a provider (newest last).
pub struct MailboxRecord;
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevMail {
    pub project: String,
    pub to: String,
    pub from: String,
    pub subject: String,
    pub text: String,
    pub created_at: String,
}
impl KvRecord for MailboxRecord {
    const PREFIX: &'static str = "mailbox:";
    const TTL_S: u64 = 86_400;
    type Value = Vec<DevMail>;
}

pub fn kv(env: &Env) -> Result<KvStore, Error> {
    env.kv("KV")
        .map_err(|_| Error::misconfigured("The KV binding `KV` is missing from wrangler.toml."))
}

fn kv_error(e: impl std::fmt::Display) -> Error {
    worker::console_error!("kv: {e}");
    Error::internal("The gateway's key-value store failed; try again.")
}

pub async fn get<R: KvRecord>(kv: &KvStore, key: &str) -> Result<Option<R::Value>, Error> {
    kv.get(&format!("{}{key}", R::PREFIX))
        .json::<R::Value>()
        .await
        .map_err(kv_error)
}

pub async fn put<R: KvRecord>(kv: &KvStore, key: &str, value: &R::Value) -> Result<(), Error> {
    let text = serde_json::to_string(value).map_err(kv_error)?;
    kv.put(&format!("{}{key}", R::PREFIX), text)
        .map_err(kv_error)?
        .expiration_ttl(R::TTL_S)
        .execute()
        .await
        .map_err(kv_error)
}
