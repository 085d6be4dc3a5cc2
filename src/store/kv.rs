//! Typed KV records: session status, the BYO-JWT JWKS cache, the dev mailbox. Each kind names its key
//! shape and value type once.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use worker::{kv::KvStore, Env};

use crate::error::Error;
use crate::limits::plan::Plan;
use crate::records::{Api, KeyHolder, Project};
use crate::store::d1::JwtCredentialRow;

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

/// The hot-path cache's records: what a data-plane request reads instead of D1. Every admin write
/// that changes one rewrites it; a missing record is rebuilt from D1 (the source of truth).
const CACHE_TTL_S: u64 = 30 * 86_400;

/// An API with its plans, by `{project slug}/{api slug}`.
pub struct ApiRecord;
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiEntry {
    pub api: Api,
    pub plans: Vec<Plan>,
}
impl KvRecord for ApiRecord {
    // `api2:` since APIs carry their org and route: records of the shape before are not read.
    const PREFIX: &'static str = "api2:";
    const TTL_S: u64 = CACHE_TTL_S;
    type Value = ApiEntry;
}

/// A project, by slug (signing settings for tokens, browser origins for CORS).
pub struct ProjectRecord;
impl KvRecord for ProjectRecord {
    const PREFIX: &'static str = "project:";
    const TTL_S: u64 = CACHE_TTL_S;
    type Value = Project;
}

/// An org's provider key (still sealed), by `{org id}/{provider}`. Every write rewrites or deletes it.
pub struct ProviderKeyRecord;
impl KvRecord for ProviderKeyRecord {
    const PREFIX: &'static str = "provider:";
    const TTL_S: u64 = CACHE_TTL_S;
    type Value = crate::records::provider::ProviderKey;
}

/// Whether a project has custom (owner-chosen) consumer keys, by project id: without any, a
/// custom-key-shaped credential is refused without a lookup.
pub struct CustomKeysRecord;
impl KvRecord for CustomKeysRecord {
    const PREFIX: &'static str = "customkeys:";
    const TTL_S: u64 = CACHE_TTL_S;
    type Value = bool;
}

/// A live consumer key's holder, by the key's hash. Revoking the key deletes the record; the
/// consumer's counter refuses the key at once all the same (the cache may lag elsewhere).
pub struct KeyRecord;
impl KvRecord for KeyRecord {
    const PREFIX: &'static str = "key:";
    const TTL_S: u64 = CACHE_TTL_S;
    type Value = KeyHolder;
}

/// A project's live consumer JWT credentials, by project id. Every credential write rewrites it.
pub struct JwtCredentialsRecord;
impl KvRecord for JwtCredentialsRecord {
    const PREFIX: &'static str = "jwtcreds:";
    const TTL_S: u64 = CACHE_TTL_S;
    type Value = Vec<JwtCredentialRow>;
}

/// A project's live mTLS credentials, by project id. Every credential write rewrites it.
pub struct MtlsCredentialsRecord;
impl KvRecord for MtlsCredentialsRecord {
    const PREFIX: &'static str = "mtlscreds:";
    const TTL_S: u64 = CACHE_TTL_S;
    type Value = Vec<crate::auth::mtls::MtlsCredential>;
}

/// That a BYO-JWT user's consumer record exists (made on its first request).
pub struct JwtUserRecord;
impl KvRecord for JwtUserRecord {
    const PREFIX: &'static str = "jwtuser:";
    const TTL_S: u64 = CACHE_TTL_S;
    type Value = bool;
}

pub fn kv(env: &Env) -> Result<KvStore, Error> {
    env.kv("KV")
        .map_err(|_| Error::misconfigured("The KV binding `KV` is missing from wrangler.toml."))
}

fn kv_error(e: impl std::fmt::Display) -> Error {
    worker::console_error!("kv: {e}");
    Error::internal("The gateway's key-value store failed; try again.")
}

/// A record, decoded from its JSON text (with the same decoder as everything else read); one
/// that does not decode is an error.
pub async fn get<R: KvRecord>(kv: &KvStore, key: &str) -> Result<Option<R::Value>, Error> {
    let text = kv
        .get(&format!("{}{key}", R::PREFIX))
        .text()
        .await
        .map_err(kv_error)?;
    text.map(|t| crate::encoding::from_json(&t).map_err(kv_error))
        .transpose()
}

pub async fn delete<R: KvRecord>(kv: &KvStore, key: &str) -> Result<(), Error> {
    kv.delete(&format!("{}{key}", R::PREFIX))
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
