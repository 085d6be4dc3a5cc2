//! The hot path's reads without D1: an API with its plans, a project, a key's owner. Each comes from
//! this isolate's memory (for `MEMORY_MS`, decoded once and shared), else from its KV record, else from D1, the source of
//! truth, which then refills KV. Admin writes rewrite the KV record and this isolate's memory, so a
//! change is seen at once here and within `MEMORY_MS` (plus KV's own propagation) in other isolates.
//! What must be exact (a key revoked, a consumer disabled, a session ended, a plan switched) is not
//! decided from here: the consumer's counter holds it.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use worker::{D1Database, Env};

use crate::error::Error;
use crate::http::now_ms;
use crate::providers::Provider;
use crate::records::provider::ProviderKey;
use crate::records::{Consumer, KeyHolder, Project};
use crate::store::d1;
use crate::store::d1::JwtCredentialRow;
use crate::store::kv::{
    self, ApiEntry, ApiRecord, CustomKeysRecord, JwtCredentialsRecord, JwtUserRecord, KeyRecord,
    KvRecord, ProjectRecord, ProviderKeyRecord,
};
use crate::timing::{Binding, Timing};

/// How long an entry is trusted in this isolate's memory.
pub const MEMORY_MS: i64 = 30_000;

/// A decoded record, with when it was stored here.
type Remembered = (i64, Rc<dyn Any>);

thread_local! {
    /// Decoded records by full key (one map for every kind).
    static MEMORY: RefCell<HashMap<String, Remembered>> = RefCell::new(HashMap::new());
}

/// A record from memory, if fresh: shared, not decoded again.
fn remembered<R: KvRecord>(key: &str, now: i64) -> Option<Rc<R::Value>>
where
    R::Value: 'static,
{
    let full = format!("{}{key}", R::PREFIX);
    let found = MEMORY.with(|m| {
        m.borrow()
            .get(&full)
            .filter(|(at, _)| now - at < MEMORY_MS)
            .map(|(_, v)| v.clone())
    })?;
    found.downcast::<R::Value>().ok()
}

fn remember<R: KvRecord>(key: &str, value: Rc<R::Value>, now: i64)
where
    R::Value: 'static,
{
    MEMORY.with(|m| {
        m.borrow_mut()
            .insert(format!("{}{key}", R::PREFIX), (now, value as Rc<dyn Any>))
    });
}

fn forget<R: KvRecord>(key: &str) {
    MEMORY.with(|m| m.borrow_mut().remove(&format!("{}{key}", R::PREFIX)));
}

/// Memory, then KV; `load` (D1) on a miss, whose answer is written back to KV and memory.
async fn read_through<R, F>(
    env: &Env,
    timing: &Timing,
    key: &str,
    load: F,
) -> Result<Option<Rc<R::Value>>, Error>
where
    R: KvRecord,
    R::Value: 'static,
    F: std::future::Future<Output = Result<Option<R::Value>, Error>>,
{
    let now = now_ms();
    if let Some(v) = remembered::<R>(key, now) {
        return Ok(Some(v));
    }
    let store = kv::kv(env)?;
    let started = now_ms();
    let cached = kv::get::<R>(&store, key).await;
    timing.call(Binding::Kv, (now_ms() - started) as f64);
    if let Ok(Some(v)) = cached {
        let v = Rc::new(v);
        remember::<R>(key, v.clone(), now);
        return Ok(Some(v));
    }
    let started = now_ms();
    let loaded = load.await;
    timing.call(Binding::D1, (now_ms() - started) as f64);
    let Some(v) = loaded? else {
        return Ok(None);
    };
    kv::put::<R>(&store, key, &v).await?;
    let v = Rc::new(v);
    remember::<R>(key, v.clone(), now);
    Ok(Some(v))
}

/// Makes sure a BYO-JWT user has its consumer record (kind `jwt-user`), so the owner can list and
/// disable it: once per user (memory, then KV, then an idempotent D1 insert).
pub async fn jwt_user(env: &Env, timing: &Timing, user: &Consumer) -> Result<(), Error> {
    read_through::<JwtUserRecord, _>(env, timing, &user.id, async {
        d1::record_jwt_user(&d1::db(env)?, user).await?;
        Ok(Some(true))
    })
    .await?;
    Ok(())
}

fn api_key(project: &str, api: &str) -> String {
    format!("{project}/{api}")
}

/// The API named in the path, with its plans (404 when there is none).
pub async fn api(
    env: &Env,
    timing: &Timing,
    project: &str,
    api: &str,
) -> Result<Rc<ApiEntry>, Error> {
    let load = async {
        let db = d1::db(env)?;
        match d1::api_by_slugs(&db, project, api).await {
            Ok(found) => Ok(Some(entry(&db, found).await?)),
            Err(e) if e.status == 404 => Ok(None),
            Err(e) => Err(e),
        }
    };
    read_through::<ApiRecord, _>(env, timing, &api_key(project, api), load)
        .await?
        .ok_or_else(|| Error::not_found(format!("There is no API `{api}` in project `{project}`.")))
}

async fn entry(db: &D1Database, api: crate::records::Api) -> Result<ApiEntry, Error> {
    let plans = d1::list_plans(db, &api.id)
        .await?
        .iter()
        .map(|r| r.to_plan())
        .collect();
    Ok(ApiEntry { api, plans })
}

/// The project by slug (404 when there is none).
pub async fn project(env: &Env, timing: &Timing, slug: &str) -> Result<Rc<Project>, Error> {
    let load = async {
        let db = d1::db(env)?;
        match d1::project_by_slug(&db, slug).await {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.status == 404 => Ok(None),
            Err(e) => Err(e),
        }
    };
    read_through::<ProjectRecord, _>(env, timing, slug, load)
        .await?
        .ok_or_else(|| Error::not_found(format!("There is no project `{slug}`.")))
}

/// The owner of the live key with this hash in the project (`None`: unknown or revoked).
pub async fn key_owner(
    env: &Env,
    timing: &Timing,
    project_id: &str,
    hash: &str,
) -> Result<Option<Rc<KeyHolder>>, Error> {
    let load = async {
        let db = d1::db(env)?;
        Ok(d1::key_by_hash(&db, project_id, hash)
            .await?
            .map(|o| KeyHolder {
                project_id: project_id.to_string(),
                key_id: o.key_id,
                consumer_id: o.consumer_id,
            }))
    };
    let found = read_through::<KeyRecord, _>(env, timing, hash, load).await?;
    // A hash is a project's key only: the same bytes in another project are not this key.
    Ok(found.filter(|k| k.project_id == project_id))
}

/// The project's live consumer JWT credentials (a token's claim is matched against them).
pub async fn jwt_credentials(
    env: &Env,
    timing: &Timing,
    project_id: &str,
) -> Result<Rc<Vec<JwtCredentialRow>>, Error> {
    let load = async {
        let db = d1::db(env)?;
        Ok(Some(d1::live_jwt_credentials(&db, project_id).await?))
    };
    Ok(
        read_through::<JwtCredentialsRecord, _>(env, timing, project_id, load)
            .await?
            .unwrap_or_default(),
    )
}

/// After a consumer JWT credential is made or revoked: the project's list rebuilt from D1.
pub async fn store_jwt_credentials(
    env: &Env,
    db: &D1Database,
    project_id: &str,
) -> Result<(), Error> {
    let live = d1::live_jwt_credentials(db, project_id).await?;
    kv::put::<JwtCredentialsRecord>(&kv::kv(env)?, project_id, &live).await?;
    remember::<JwtCredentialsRecord>(project_id, Rc::new(live), now_ms());
    Ok(())
}

/// The project's live mTLS credentials (a verified client certificate is matched against them).
pub async fn mtls_credentials(
    env: &Env,
    timing: &Timing,
    project_id: &str,
) -> Result<Rc<Vec<crate::auth::mtls::MtlsCredential>>, Error> {
    let load = async {
        let db = d1::db(env)?;
        Ok(Some(d1::live_mtls_credentials(&db, project_id).await?))
    };
    Ok(
        read_through::<kv::MtlsCredentialsRecord, _>(env, timing, project_id, load)
            .await?
            .unwrap_or_default(),
    )
}

/// After an mTLS credential is made or revoked: the project's list rebuilt from D1.
pub async fn store_mtls_credentials(
    env: &Env,
    db: &D1Database,
    project_id: &str,
) -> Result<(), Error> {
    let live = d1::live_mtls_credentials(db, project_id).await?;
    kv::put::<kv::MtlsCredentialsRecord>(&kv::kv(env)?, project_id, &live).await?;
    remember::<kv::MtlsCredentialsRecord>(project_id, Rc::new(live), now_ms());
    Ok(())
}

/// After an admin write to an API or its plans: the entry rebuilt from D1, in KV and memory.
pub async fn store_api(env: &Env, db: &D1Database, api_id: &str) -> Result<(), Error> {
    let api = d1::api_by_id(db, api_id).await?;
    let key = api_key(&api.project_slug, &api.slug);
    let entry = entry(db, api).await?;
    kv::put::<ApiRecord>(&kv::kv(env)?, &key, &entry).await?;
    remember::<ApiRecord>(&key, Rc::new(entry), now_ms());
    Ok(())
}

/// After an admin write to a project (origins, signing key, token lifetime).
pub async fn store_project(env: &Env, project: &Project) -> Result<(), Error> {
    kv::put::<ProjectRecord>(&kv::kv(env)?, &project.slug, project).await?;
    remember::<ProjectRecord>(&project.slug, Rc::new(project.clone()), now_ms());
    Ok(())
}

fn provider_cache_key(org_id: &str, provider: Provider) -> String {
    format!("{org_id}/{}", provider.as_str())
}

/// The org's key for `provider` (`None`: the org has none).
pub async fn provider_key(
    env: &Env,
    timing: &Timing,
    org_id: &str,
    provider: Provider,
) -> Result<Option<Rc<ProviderKey>>, Error> {
    let load = async {
        let db = d1::db(env)?;
        d1::provider_key(&db, org_id, provider).await
    };
    read_through::<ProviderKeyRecord, _>(env, timing, &provider_cache_key(org_id, provider), load)
        .await
}

/// After a provider key is written (`Some`) or deleted (`None`): KV and this isolate's memory.
pub async fn store_provider_key(
    env: &Env,
    org_id: &str,
    provider: Provider,
    key: Option<&ProviderKey>,
) -> Result<(), Error> {
    let cache_key = provider_cache_key(org_id, provider);
    let store = kv::kv(env)?;
    match key {
        Some(k) => {
            kv::put::<ProviderKeyRecord>(&store, &cache_key, k).await?;
            remember::<ProviderKeyRecord>(&cache_key, Rc::new(k.clone()), now_ms());
        }
        None => {
            kv::delete::<ProviderKeyRecord>(&store, &cache_key).await?;
            forget::<ProviderKeyRecord>(&cache_key);
        }
    }
    Ok(())
}

/// How long a credential found to be no key is refused without a lookup, and how many are kept.
const UNKNOWN_MS: i64 = 30_000;
const UNKNOWN_MAX: usize = 10_000;

thread_local! {
    /// Custom-key-shaped credentials that matched no key, with when they were looked up.
    static UNKNOWN_KEYS: RefCell<HashMap<String, i64>> = RefCell::new(HashMap::new());
}

/// Whether this hash was looked up and matched no key within the last `UNKNOWN_MS`.
pub fn known_unknown(hash: &str) -> bool {
    let now = now_ms();
    UNKNOWN_KEYS.with(|m| m.borrow().get(hash).is_some_and(|at| now - at < UNKNOWN_MS))
}

pub fn note_unknown(hash: &str) {
    UNKNOWN_KEYS.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= UNKNOWN_MAX {
            let now = now_ms();
            m.retain(|_, at| now - *at < UNKNOWN_MS);
            if m.len() >= UNKNOWN_MAX {
                m.clear();
            }
        }
        m.insert(hash.to_string(), now_ms());
    });
}

/// Whether the project has custom consumer keys (memory, then KV, then D1 once).
pub async fn has_custom_keys(env: &Env, timing: &Timing, project_id: &str) -> Result<bool, Error> {
    // Only `true` is written to KV: a `false` lives in this isolate's memory (30 s), so a custom key
    // made meanwhile is never hidden by a long-lived negative answer.
    let now = now_ms();
    if let Some(v) = remembered::<CustomKeysRecord>(project_id, now) {
        return Ok(*v);
    }
    let store = kv::kv(env)?;
    let started = now_ms();
    let cached = kv::get::<CustomKeysRecord>(&store, project_id).await;
    timing.call(Binding::Kv, (now_ms() - started) as f64);
    if let Ok(Some(true)) = cached {
        remember::<CustomKeysRecord>(project_id, Rc::new(true), now);
        return Ok(true);
    }
    let started = now_ms();
    let has = d1::has_custom_keys(&d1::db(env)?, project_id).await;
    timing.call(Binding::D1, (now_ms() - started) as f64);
    let has = has?;
    if has {
        kv::put::<CustomKeysRecord>(&store, project_id, &true).await?;
    }
    remember::<CustomKeysRecord>(project_id, Rc::new(has), now);
    Ok(has)
}

/// After a custom key is made: the project has custom keys (here at once, elsewhere within 30 s).
pub async fn store_has_custom_keys(env: &Env, project_id: &str) -> Result<(), Error> {
    kv::put::<CustomKeysRecord>(&kv::kv(env)?, project_id, &true).await?;
    remember::<CustomKeysRecord>(project_id, Rc::new(true), now_ms());
    Ok(())
}

/// A key was just made with this hash: this isolate no longer takes it for unknown.
pub fn forget_unknown(hash: &str) {
    UNKNOWN_KEYS.with(|m| m.borrow_mut().remove(hash));
}

/// After a key is revoked: its owner is no longer found here (the counter refuses it meanwhile).
pub async fn forget_key(env: &Env, hash: &str) -> Result<(), Error> {
    kv::delete::<KeyRecord>(&kv::kv(env)?, hash).await?;
    forget::<KeyRecord>(hash);
    Ok(())
}
