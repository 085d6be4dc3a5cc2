//! Admin: an org's provider keys (one per provider): stored encrypted, never shown again, and moved
//! to the current ENCRYPTION_KEY after a rotation.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{Call, Reply};
use crate::cache;
use crate::error::Error;
use crate::input::validate::{validate_base_url, validate_text};
use crate::providers::Provider;
use crate::records::provider::ProviderKey;
use crate::store::d1;

fn provider_of(name: &str) -> Result<Provider, Error> {
    Provider::parse(name).ok_or_else(|| {
        let known: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
        Error::invalid_request(format!("`provider` is one of {}", known.join(", ")))
            .with_field("param", "provider")
    })
}

fn unknown(org: &str, provider: &str) -> Error {
    Error::not_found(format!("Org `{org}` has no `{provider}` key."))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProviderKey {
    provider: String,
    api_key: Option<String>,
    base_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderKeyPut {
    api_key: Option<String>,
    base_url: Option<String>,
}

/// A record from input: the key checked and sealed (a local Ollama may have none).
fn record(
    c: &Call<'_>,
    org_id: &str,
    provider: Provider,
    api_key: Option<String>,
    base_url: Option<String>,
    created_at: i64,
) -> Result<ProviderKey, Error> {
    if let Some(url) = &base_url {
        validate_base_url(url)?;
    }
    let key = api_key.filter(|k| !k.trim().is_empty());
    match &key {
        Some(k) => validate_text("api_key", k, 4096)?,
        None if provider.needs_key() => {
            return Err(Error::invalid_request(format!(
                "`api_key` is required for `{}`",
                provider.as_str()
            ))
            .with_field("param", "api_key"))
        }
        None => {}
    }
    let last4 = key.as_ref().map(|k| {
        let chars: Vec<char> = k.chars().collect();
        chars[chars.len().saturating_sub(4)..]
            .iter()
            .collect::<String>()
    });
    Ok(ProviderKey {
        org_id: org_id.to_string(),
        provider,
        base_url,
        key_enc: key.as_deref().map(|k| c.seal(k)).transpose()?,
        key_last4: last4,
        created_at,
        updated_at: c.now,
    })
}

/// `GET /api/v1/orgs/{org}/providers`: `[{provider, base_url, key_last4, created_at, updated_at}]`
/// (a bare array, as the provider-key documents show it).
pub async fn list(c: &mut Call<'_>, org: &str) -> Result<Reply, Error> {
    let org = d1::org_by_slug(&c.db, org).await?;
    let keys: Vec<Value> = d1::provider_keys(&c.db, &org.id)
        .await?
        .iter()
        .map(ProviderKey::to_json)
        .collect();
    Reply::ok(Value::Array(keys))
}

/// `POST /api/v1/orgs/{org}/providers` `{provider, api_key, base_url?}`.
pub async fn create(c: &mut Call<'_>, org: &str) -> Result<Reply, Error> {
    let input: NewProviderKey = c.body().await?;
    let provider = provider_of(&input.provider)?;
    let org = d1::org_by_slug(&c.db, org).await?;
    let key = record(c, &org.id, provider, input.api_key, input.base_url, c.now)?;
    d1::create_provider_key(&c.db, &key).await?;
    cache::store_provider_key(c.env, &org.id, provider, Some(&key)).await?;
    Reply::created(key.to_json())
}

/// `PUT /api/v1/orgs/{org}/providers/{provider}` `{api_key, base_url?}`: replaces the key.
pub async fn replace(c: &mut Call<'_>, org: &str, provider: &str) -> Result<Reply, Error> {
    let input: ProviderKeyPut = c.body().await?;
    let org = d1::org_by_slug(&c.db, org).await?;
    let provider = Provider::parse(provider).ok_or_else(|| unknown(&org.slug, provider))?;
    let stored = d1::provider_key(&c.db, &org.id, provider)
        .await?
        .ok_or_else(|| unknown(&org.slug, provider.as_str()))?;
    let key = record(
        c,
        &org.id,
        provider,
        input.api_key,
        input.base_url,
        stored.created_at,
    )?;
    if !d1::replace_provider_key(&c.db, &key).await? {
        return Err(unknown(&org.slug, provider.as_str()));
    }
    cache::store_provider_key(c.env, &org.id, provider, Some(&key)).await?;
    Reply::ok(key.to_json())
}

/// `DELETE /api/v1/orgs/{org}/providers/{provider}`: requests routed to it fail from now on.
pub async fn delete(c: &mut Call<'_>, org: &str, provider: &str) -> Result<Reply, Error> {
    let org = d1::org_by_slug(&c.db, org).await?;
    let provider = Provider::parse(provider).ok_or_else(|| unknown(&org.slug, provider))?;
    if !d1::delete_provider_key(&c.db, &org.id, provider).await? {
        return Err(unknown(&org.slug, provider.as_str()));
    }
    cache::store_provider_key(c.env, &org.id, provider, None).await?;
    Ok(Reply::NoContent)
}

/// `POST /api/v1/orgs/{org}/providers/reencrypt`: every key sealed with ENCRYPTION_KEY_PREVIOUS is
/// sealed again with ENCRYPTION_KEY. A key neither opens is reported, never dropped.
pub async fn reseal(c: &mut Call<'_>, org: &str) -> Result<Reply, Error> {
    let org = d1::org_by_slug(&c.db, org).await?;
    let ring = crate::http::keyring(c.env)?;
    let (mut resealed, mut current, mut unreadable) = (0, 0, Vec::new());
    for mut key in d1::provider_keys(&c.db, &org.id).await? {
        let Some(sealed) = key.key_enc.clone() else {
            continue;
        };
        if ring.is_current(&sealed) {
            current += 1;
            continue;
        }
        let Some(plain) = ring.open(&sealed) else {
            unreadable.push(key.provider.as_str());
            continue;
        };
        let again = c.seal(&plain)?;
        if d1::reseal_provider_key(&c.db, &key, &sealed, &again).await? {
            key.key_enc = Some(again);
            cache::store_provider_key(c.env, &org.id, key.provider, Some(&key)).await?;
            resealed += 1;
        }
    }
    Reply::ok(
        json!({"reencrypted": resealed, "already_current": current, "unreadable": unreadable,
        "key_id": crate::crypto::key_id(&ring.current)}),
    )
}
