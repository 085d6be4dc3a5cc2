//! Phase 2 of the data plane, on the edge: who is calling. This adapter reads the credential from
//! where the API says and performs the lookups each kind of credential needs; every decision about
//! them is `auth::decide`'s. The lookup strategy for the common case, a consumer key in the standard
//! headers, fetches the API, the key and the consumer's plan in one D1 round trip.

use worker::{Context, D1Database, Env, Request};

use crate::auth::config::CredentialSource;
use crate::auth::consumer_jwt;
use crate::auth::decide::{self, Caller, Presented};
use crate::auth::extract_credential;
use crate::auth::key::ConsumerKey;
use crate::auth::tokens::{classify, SluiceToken};
use crate::crypto;
use crate::error::Error;
use crate::http::{encryption_secret, header, now_ms};
use crate::identity::{client_ip, verify_byo, verify_sluice_token};
use crate::limits::plan::Plan;
use crate::records::{Api, KeyOwner, Project};
use crate::store::d1;

/// Phase 1 — resolve: the project and API named in the path, or 404.
pub async fn resolve_api(db: &D1Database, project: &str, api: &str) -> Result<Api, Error> {
    d1::api_by_slugs(db, project, api).await
}

/// A key found by the one-round-trip lookup, for the key it was found for.
struct Prefetched {
    key: ConsumerKey,
    owner: Option<KeyOwner>,
}

/// Phases 1 and 2 together. With a consumer key in `Authorization: Bearer` or `X-API-Key`, the API,
/// the key's owner and the consumer's plan come back from one D1 batch; the decisions are the same
/// as for any other credential.
pub async fn resolve_and_authenticate(
    req: &Request,
    env: &Env,
    ctx: &Context,
    db: &D1Database,
    project: &str,
    api: &str,
) -> Result<(Api, Caller, Option<Plan>), Error> {
    let sent = extract_credential(
        header(req, "authorization").as_deref(),
        header(req, "x-api-key").as_deref(),
    )
    .ok()
    .flatten();
    let Some(key) = sent.as_deref().and_then(|c| ConsumerKey::parse(c).ok()) else {
        let api = resolve_api(db, project, api).await?;
        let caller = authenticate_with(req, env, ctx, db, &api, None).await?;
        return Ok((api, caller, None));
    };
    let (found, owner, plan) = d1::api_key_and_plan(db, project, api, &key.hash()).await?;
    let api = found.ok_or_else(|| {
        Error::not_found(format!("There is no API `{api}` in project `{project}`."))
    })?;
    let prefetched_key_id = owner.as_ref().map(|o| o.key_id.clone());
    let caller =
        authenticate_with(req, env, ctx, db, &api, Some(Prefetched { key, owner })).await?;
    // The plan is the one of the key that was fetched; a credential read from elsewhere has its own.
    let plan = plan.filter(|_| caller.key_id.is_some() && caller.key_id == prefetched_key_id);
    Ok((api, caller, plan))
}

/// Phase 2 — authenticate. First the API's IP allowlist (403 outside it). Then the credential, from
/// where the API reads it (Bearer by default, or a header or query parameter; `X-API-Key` always):
/// - a consumer key (`ask_live_...`), in every mode, found by its hash on every request (so a
///   revoked key fails on the next one);
/// - a token Sluice signed for the project: a key-exchange token (valid while its key is), or a
///   signed-in user's access token (managed mode only; its session must stand);
/// - a consumer's own JWT (valid in every mode, like a key), verified with that credential's key;
/// - in byo-jwt mode, the owner's JWT, checked against their JWKS; the configured claim is the consumer.
///
/// 401 when the credential is missing, malformed, expired or revoked; 403 when it is valid but not
/// allowed here (disabled consumer, IP, mode).
pub async fn authenticate(
    req: &Request,
    env: &Env,
    ctx: &Context,
    db: &D1Database,
    api: &Api,
) -> Result<Caller, Error> {
    authenticate_with(req, env, ctx, db, api, None).await
}

async fn authenticate_with(
    req: &Request,
    env: &Env,
    ctx: &Context,
    db: &D1Database,
    api: &Api,
    prefetched: Option<Prefetched>,
) -> Result<Caller, Error> {
    if !api.ip_allowlist.allows(client_ip(req).as_deref()) {
        return Err(decide::ip_refused());
    }
    let credential = read_credential(req, api)?.ok_or_else(Error::missing_credential)?;
    match decide::presented(&credential, &api.project_slug, api.mode)? {
        Presented::Key(key) => {
            let owner = match prefetched {
                Some(p) if p.key == key => p.owner,
                _ => d1::key_by_hash(db, &api.project_id, &key.hash()).await?,
            };
            let caller = decide::by_key(owner)?;
            note_key_use(env, ctx, caller.key_id.clone());
            Ok(caller)
        }
        Presented::SluiceToken => {
            let project = d1::project_by_slug(db, &api.project_slug).await?;
            sluice_token(env, db, api, &project, &credential).await
        }
        Presented::OtherJwt => {
            let project = d1::project_by_slug(db, &api.project_slug).await?;
            other_jwt(env, db, api, &project, &credential).await
        }
    }
}

/// A key's use is noted after the response (at most once a minute; see `touch_key`).
fn note_key_use(env: &Env, ctx: &Context, key_id: Option<String>) {
    let Some(key_id) = key_id else {
        return;
    };
    let env = env.clone();
    ctx.wait_until(async move {
        if let Ok(db) = d1::db(&env) {
            let _ = d1::touch_key(&db, &key_id, now_ms()).await;
        }
    });
}

/// A token this gateway signed: verified with the project's keys, then looked up by its kind.
async fn sluice_token(
    env: &Env,
    db: &D1Database,
    api: &Api,
    project: &Project,
    token: &str,
) -> Result<Caller, Error> {
    let claims = verify_sluice_token(env, project, token, now_ms())?;
    match classify(&claims) {
        Some(SluiceToken::Exchange {
            consumer_id,
            key_id,
        }) => {
            let live = d1::live_key(db, &project.id, &key_id).await?;
            decide::by_exchange_token(consumer_id, key_id, live)
        }
        Some(SluiceToken::Access {
            consumer_id,
            session_id,
        }) => {
            decide::access_token_allowed(api.mode, &api.slug)?;
            crate::identity::ensure_session_live(env, &session_id).await?;
            let user = d1::find_consumer(db, &project.id, &consumer_id).await?;
            decide::by_access_token(consumer_id, session_id, user)
        }
        None => Err(Error::invalid_credential(
            "This token is not an access token.",
        )),
    }
}

/// Any other JWT: a consumer's own credential if one claims it, else (byo-jwt mode) the owner's.
async fn other_jwt(
    env: &Env,
    db: &D1Database,
    api: &Api,
    project: &Project,
    token: &str,
) -> Result<Caller, Error> {
    let now = now_ms();
    if let Some(caller) = consumer_jwt_caller(env, db, project, token, now).await? {
        return Ok(caller);
    }
    decide::other_jwt(api.mode, api.byo_jwt.is_some(), &project.slug)?;
    let Some(config) = &api.byo_jwt else {
        return Err(Error::misconfigured(
            "This API is in byo-jwt mode but has no JWKS configured.",
        ));
    };
    let user_id = verify_byo(env, &api.id, config, token, now).await?;
    Ok(decide::by_owner_jwt(user_id))
}

/// The client's credential, when the API passes it on to the upstream (off by default: otherwise no
/// client header ever reaches the upstream).
pub fn passthrough_credential(
    req: &Request,
    api: &Api,
) -> Result<Option<(CredentialSource, String)>, Error> {
    if !api.credential.passthrough() {
        return Ok(None);
    }
    Ok(read_credential(req, api)?.map(|c| (api.credential.source.clone(), c)))
}

/// A consumer's own JWT (seed 004), valid in every mode like a consumer key: the credential named by a
/// payload claim is looked up, then the token must verify with that credential's key alone.
/// `None` when no credential claims the token.
async fn consumer_jwt_caller(
    env: &Env,
    db: &D1Database,
    project: &Project,
    token: &str,
    now: i64,
) -> Result<Option<Caller>, Error> {
    let candidates = consumer_jwt::candidate_values(token);
    let values: Vec<String> = candidates.iter().map(|(_, v)| v.clone()).collect();
    let found = d1::jwt_credentials_for(db, &project.id, &values).await?;
    let Some(credential) = found.into_iter().find(|c| {
        candidates
            .iter()
            .any(|(k, v)| *k == c.claim_name && *v == c.claim_value)
    }) else {
        return Ok(None);
    };
    let keys = match (&credential.secret_enc, &credential.jwks_json) {
        (Some(sealed), _) => {
            let secret = crypto::open(&encryption_secret(env)?, sealed).ok_or_else(|| {
                Error::misconfigured(
                    "A consumer's JWT key cannot be decrypted; was ENCRYPTION_KEY changed?",
                )
            })?;
            vec![crate::auth::jwt::hs256_key(secret.as_bytes(), None)]
        }
        (None, Some(jwks)) => crate::auth::jwt::parse_jwks(jwks)
            .map_err(|e| Error::invalid_credential(e.describe()))?,
        (None, None) => return Ok(None),
    };
    consumer_jwt::verify(token, &keys, now / 1000).map_err(crate::identity::token_error)?;
    decide::by_consumer_jwt(
        credential.consumer_id,
        credential.id,
        credential.consumer_status,
    )
    .map(Some)
}

/// The credential from where the API says to read it; `X-API-Key` is always accepted for keys.
fn read_credential(req: &Request, api: &Api) -> Result<Option<String>, Error> {
    let x_api_key = header(req, "x-api-key");
    match &api.credential.source {
        CredentialSource::Authorization => extract_credential(
            header(req, "authorization").as_deref(),
            x_api_key.as_deref(),
        )
        .map_err(Error::invalid_credential),
        CredentialSource::Header(name) => Ok(header(req, name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .or(x_api_key)),
        CredentialSource::Query(name) => {
            let url = req.url()?;
            let found = url
                .query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
                .filter(|v| !v.is_empty());
            Ok(found.or(x_api_key))
        }
    }
}
