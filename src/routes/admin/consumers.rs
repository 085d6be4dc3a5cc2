//! Admin: a project's consumers, their keys (the secret shown once) and their JWT credentials.

use serde_json::{json, Value};

use super::{event, Call, Reply};
use crate::auth::consumer_jwt::NewJwtCredential;
use crate::auth::key::ConsumerKey;
use crate::cache;
use crate::error::Error;
use crate::http::with_random;
use crate::identity::EventDraft;
use crate::ids::{base62, new_id};
use crate::input::consumer::{ConsumerPatch, NewConsumer, NewKey};
use crate::limits::standing::Change;
use crate::records::KeyHolder;
use crate::records::{Consumer, ConsumerKind, ConsumerStatus};
use crate::store::counter_do::change_in_project;
use crate::store::d1;
use crate::store::kv::{self, KeyRecord};
use crate::time::rfc3339;

pub async fn list(c: &mut Call<'_>, project: &str) -> Result<Reply, Error> {
    let project = d1::project_by_slug(&c.db, project).await?;
    let consumers: Vec<Value> = d1::list_consumers(&c.db, &project.id)
        .await?
        .iter()
        .map(|c| c.to_json(&project.slug))
        .collect();
    Reply::ok(json!({ "consumers": consumers }))
}

pub async fn create(c: &mut Call<'_>, project: &str) -> Result<Reply, Error> {
    let input: NewConsumer = c.body().await?;
    input.validate()?;
    let project = d1::project_by_slug(&c.db, project).await?;
    let consumer = Consumer {
        id: with_random(|r| new_id("con", r))?,
        project_id: project.id.clone(),
        name: input.name,
        description: input.description,
        kind: ConsumerKind::Key,
        status: ConsumerStatus::Enabled,
        created_at: c.now,
        email: None,
    };
    d1::create_consumer(&c.db, &consumer).await?;
    Reply::created(consumer.to_json(&project.slug))
}

pub async fn get(c: &mut Call<'_>, project: &str, id: &str) -> Result<Reply, Error> {
    let project = d1::project_by_slug(&c.db, project).await?;
    Reply::ok(
        d1::consumer(&c.db, &project.id, id)
            .await?
            .to_json(&project.slug),
    )
}

pub async fn patch(c: &mut Call<'_>, project: &str, id: &str) -> Result<Reply, Error> {
    let patch: ConsumerPatch = c.body().await?;
    patch.validate()?;
    let project = d1::project_by_slug(&c.db, project).await?;
    let mut consumer = d1::consumer(&c.db, &project.id, id).await?;
    let was = consumer.status;
    patch.apply(&mut consumer);
    store(c, &consumer, was).await?;
    Reply::ok(consumer.to_json(&project.slug))
}

/// Stores `consumer`; when its status moved from `was`, every API of its project learns it at once.
async fn store(c: &Call<'_>, consumer: &Consumer, was: ConsumerStatus) -> Result<(), Error> {
    d1::update_consumer(&c.db, consumer).await?;
    if consumer.status != was {
        let disabled = consumer.status == ConsumerStatus::Disabled;
        change_in_project(
            c.env,
            &consumer.project_id,
            &consumer.id,
            Change::Disabled { disabled },
        )
        .await?;
    }
    Ok(())
}

/// Disables consumer `id` of `project` (kept, so its usage history keeps its name); already
/// disabled, or gone, it is left as it is.
pub(super) async fn disable(c: &Call<'_>, project: &str, id: &str) -> Result<(), Error> {
    match d1::find_consumer(&c.db, project, id).await? {
        Some(mut consumer) if consumer.status != ConsumerStatus::Disabled => {
            let was = consumer.status;
            consumer.status = ConsumerStatus::Disabled;
            store(c, &consumer, was).await
        }
        _ => Ok(()),
    }
}

/// A new consumer key: the only response that ever carries its secret.
pub async fn create_key(c: &mut Call<'_>, project: &str, consumer: &str) -> Result<Reply, Error> {
    let input: NewKey = c.body().await?;
    input.validate()?;
    let project = d1::project_by_slug(&c.db, project).await?;
    let consumer = d1::consumer(&c.db, &project.id, consumer).await?;
    // A custom secret is stored like a generated one: its hash, and its first characters.
    let (secret, prefix, hash, custom) = match &input.secret {
        Some(own) => (
            own.clone(),
            crate::auth::key::custom_prefix(own),
            crate::auth::key::custom_hash(&project.id, own),
            true,
        ),
        None => {
            let key = with_random(ConsumerKey::generate)?;
            (
                key.reveal().to_string(),
                key.display_prefix(),
                key.hash(),
                false,
            )
        }
    };
    let id = with_random(|r| new_id("key", r))?;
    let row = d1::NewKeyRow {
        id: &id,
        project_id: &project.id,
        consumer_id: &consumer.id,
        name: &input.name,
        prefix: &prefix,
        key_hash: &hash,
        created_at: c.now,
    };
    match d1::create_key(&c.db, &row).await {
        Ok(()) => {}
        // Saying which other key it is would leak it: only that it cannot be used.
        Err(e) if e.status == 409 && custom => {
            return Err(Error::invalid_request(
                "`secret` cannot be used: it is already a key. Choose another secret.",
            )
            .with_field("param", "secret"))
        }
        Err(e) => return Err(e),
    }
    crate::cache::forget_unknown(&hash);
    if custom {
        crate::cache::store_has_custom_keys(c.env, &project.id).await?;
    }
    // Its first use reads KV, not D1.
    let holder = KeyHolder {
        project_id: project.id.clone(),
        key_id: id.clone(),
        consumer_id: consumer.id.clone(),
    };
    kv::put::<KeyRecord>(&kv::kv(c.env)?, &hash, &holder).await?;
    c.event(EventDraft {
        consumer_id: Some(consumer.id.clone()),
        detail: Some(id.clone()),
        ..event(&project.id, "key_created")
    });
    Reply::created(json!({
        "id": id, "name": input.name, "secret": secret, "prefix": prefix,
        "consumer_id": consumer.id, "created_at": rfc3339(c.now), "custom": custom,
    }))
}

pub async fn list_keys(c: &mut Call<'_>, project: &str) -> Result<Reply, Error> {
    let project = d1::project_by_slug(&c.db, project).await?;
    let keys: Vec<Value> = d1::list_keys(&c.db, &project.id)
        .await?
        .iter()
        .map(|k| k.to_json())
        .collect();
    Reply::ok(json!({ "keys": keys }))
}

pub async fn revoke_key(c: &mut Call<'_>, project: &str, id: &str) -> Result<Reply, Error> {
    let project = d1::project_by_slug(&c.db, project).await?;
    let Some(revoked) = d1::revoke_key(&c.db, &project.id, id, c.now).await? else {
        return Err(Error::not_found(format!(
            "There is no live key `{id}` in project `{}`.",
            project.slug
        )));
    };
    cache::forget_key(c.env, &revoked.key_hash).await?;
    revoked_everywhere(c, &project.id, &revoked.consumer_id, id, "key_revoked").await
}

/// The end of revoking a consumer's key or credential `id`, once D1 says so and the gateway's cache
/// no longer holds it (that goes first: were the counters unreachable, it is still refused): the
/// consumer's counters refuse it from the very next request, and the event is recorded.
async fn revoked_everywhere(
    c: &mut Call<'_>,
    project_id: &str,
    consumer_id: &str,
    id: &str,
    kind: &'static str,
) -> Result<Reply, Error> {
    let change = Change::RevokeKey {
        key_id: id.to_string(),
    };
    change_in_project(c.env, project_id, consumer_id, change).await?;
    c.event(EventDraft {
        detail: Some(id.to_string()),
        ..event(project_id, kind)
    });
    Ok(Reply::NoContent)
}

/// A consumer's own JWT credential: a generated HS256 secret (shown once) or a pasted JWKS.
pub async fn create_jwt_credential(
    c: &mut Call<'_>,
    project: &str,
    consumer: &str,
) -> Result<Reply, Error> {
    let input: NewJwtCredential = c.body().await?;
    let (claim_name, jwks_json) = input.validate()?;
    let project = d1::project_by_slug(&c.db, project).await?;
    let consumer = d1::consumer(&c.db, &project.id, consumer).await?;
    let claim_value = match input.value {
        Some(v) => v,
        None => with_random(|r| base62(32, r))?,
    };
    // A symmetric key is a random string; its UTF-8 bytes are the HS256 key.
    let secret = match jwks_json {
        None => Some(with_random(|r| base62(43, r))?),
        Some(_) => None,
    };
    let row = d1::JwtCredentialRow {
        id: with_random(|r| new_id("jwc", r))?,
        consumer_id: consumer.id.clone(),
        kind: input.kind,
        claim_name,
        claim_value,
        secret_enc: match &secret {
            Some(s) => Some(c.seal(s)?),
            None => None,
        },
        secret_prefix: secret.as_ref().map(|s| s.chars().take(6).collect()),
        jwks_json,
        created_at: c.now,
    };
    d1::create_jwt_credential(&c.db, &project.id, &row).await?;
    cache::store_jwt_credentials(c.env, &c.db, &project.id).await?;
    c.event(EventDraft {
        consumer_id: Some(consumer.id.clone()),
        detail: Some(row.id.clone()),
        ..event(&project.id, "jwt_credential_created")
    });
    let mut body = row.to_json();
    if let Some(secret) = secret {
        // Shown once, like a consumer key's secret.
        body["secret"] = json!(secret);
        body["algorithm"] = json!("HS256");
    }
    Reply::created(body)
}

pub async fn list_jwt_credentials(
    c: &mut Call<'_>,
    project: &str,
    consumer: &str,
) -> Result<Reply, Error> {
    let project = d1::project_by_slug(&c.db, project).await?;
    let consumer = d1::consumer(&c.db, &project.id, consumer).await?;
    let list: Vec<Value> = d1::list_jwt_credentials(&c.db, &project.id, &consumer.id)
        .await?
        .iter()
        .map(|c| c.to_json())
        .collect();
    Reply::ok(json!({ "jwt_credentials": list }))
}

pub async fn revoke_jwt_credential(
    c: &mut Call<'_>,
    project: &str,
    id: &str,
) -> Result<Reply, Error> {
    let project = d1::project_by_slug(&c.db, project).await?;
    let Some(consumer_id) = d1::revoke_jwt_credential(&c.db, &project.id, id, c.now).await? else {
        return Err(Error::not_found(format!(
            "There is no live JWT credential `{id}` in project `{}`.",
            project.slug
        )));
    };
    cache::store_jwt_credentials(c.env, &c.db, &project.id).await?;
    revoked_everywhere(c, &project.id, &consumer_id, id, "jwt_credential_revoked").await
}

/// A consumer's client certificate (mTLS): by SHA-256 fingerprint, or by issuer and subject DN.
pub async fn create_mtls_credential(
    c: &mut Call<'_>,
    project: &str,
    consumer: &str,
) -> Result<Reply, Error> {
    use crate::auth::mtls::{CertificateName, MtlsCredential, NewMtlsCredential};
    let input: NewMtlsCredential = c.body().await?;
    let name = input.validate()?;
    let project = d1::project_by_slug(&c.db, project).await?;
    let consumer = d1::consumer(&c.db, &project.id, consumer).await?;
    let (fingerprint_sha256, issuer_dn, subject_dn) = match name {
        CertificateName::Fingerprint(f) => (Some(f), None, None),
        CertificateName::Dn { issuer, subject } => (None, Some(issuer), Some(subject)),
    };
    let credential = MtlsCredential {
        id: with_random(|r| new_id("mtc", r))?,
        consumer_id: consumer.id.clone(),
        fingerprint_sha256,
        issuer_dn,
        subject_dn,
        created_at: c.now,
    };
    d1::create_mtls_credential(&c.db, &project.id, &credential).await?;
    cache::store_mtls_credentials(c.env, &c.db, &project.id).await?;
    c.event(EventDraft {
        consumer_id: Some(consumer.id.clone()),
        detail: Some(credential.id.clone()),
        ..event(&project.id, "mtls_credential_created")
    });
    Reply::created(d1::mtls_credential_json(&credential))
}

pub async fn list_mtls_credentials(
    c: &mut Call<'_>,
    project: &str,
    consumer: &str,
) -> Result<Reply, Error> {
    let project = d1::project_by_slug(&c.db, project).await?;
    let consumer = d1::consumer(&c.db, &project.id, consumer).await?;
    let list: Vec<Value> = d1::list_mtls_credentials(&c.db, &project.id, &consumer.id)
        .await?
        .iter()
        .map(d1::mtls_credential_json)
        .collect();
    Reply::ok(json!({ "mtls_credentials": list }))
}

pub async fn revoke_mtls_credential(
    c: &mut Call<'_>,
    project: &str,
    id: &str,
) -> Result<Reply, Error> {
    let project = d1::project_by_slug(&c.db, project).await?;
    let Some(consumer_id) = d1::revoke_mtls_credential(&c.db, &project.id, id, c.now).await? else {
        return Err(Error::not_found(format!(
            "There is no live mTLS credential `{id}` in project `{}`.",
            project.slug
        )));
    };
    cache::store_mtls_credentials(c.env, &c.db, &project.id).await?;
    revoked_everywhere(c, &project.id, &consumer_id, id, "mtls_credential_revoked").await
}
