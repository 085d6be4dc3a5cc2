//! Phase 2 of the data plane, on the edge: who is calling. Reads the credential from where the API
//! says, checks the IP allowlist, and proves the caller with a consumer key, a token Sluice signed, a
//! consumer's own JWT, or (byo-jwt mode) the owner's JWT against their JWKS.

use worker::{Context, D1Database, Env, Request};

use crate::auth::cidr;
use crate::auth::config::CredentialSource;
use crate::auth::consumer_jwt;
use crate::auth::jwks_cache::{looks_like_jwt, peek_kid};
use crate::auth::tokens::{classify, kid_prefix, SluiceToken};
use crate::auth::{extract_credential, key::ConsumerKey};
use crate::crypto;
use crate::error::{Error, Problem};
use crate::http::{encryption_secret, header, now_ms};
use crate::identity::{client_ip, verify_byo, verify_sluice_token};
use crate::limits::plan::Plan;
use crate::model::{Api, AuthMode};
use crate::store::d1;

/// Who is calling, as proven by the authenticate phase.
#[derive(Debug, Clone)]
pub struct Caller {
    pub consumer_id: String,
    pub key_id: Option<String>,
    pub session_id: Option<String>,
}

/// Phase 1 — resolve: the project and API named in the path, or 404.
pub async fn resolve_api(db: &D1Database, project: &str, api: &str) -> Result<Api, Error> {
    d1::api_by_slugs(db, project, api).await
}

/// Phases 1 and 2 together. A consumer key in `Authorization: Bearer` or `X-API-Key` (the common
/// case) takes the fast path: API, key and plan come back from one D1 round trip, and the same checks
/// as `authenticate` apply. Anything else goes through `resolve_api` and `authenticate`.
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
        let caller = authenticate(req, env, ctx, db, &api).await?;
        return Ok((api, caller, None));
    };
    let (found_api, found_key, plan) = d1::api_key_and_plan(db, project, api, &key.hash()).await?;
    let api = found_api.ok_or_else(|| {
        Error::not_found(format!("There is no API `{api}` in project `{project}`."))
    })?;
    if api.credential().source()? != CredentialSource::Authorization {
        // The API reads its credential elsewhere: the general path decides.
        let caller = authenticate(req, env, ctx, db, &api).await?;
        return Ok((api, caller, None));
    }
    check_ip(req, &api)?;
    let found = found_key.ok_or_else(|| {
        Error::invalid_credential("This consumer key is unknown or has been revoked.")
    })?;
    let caller = accept_key(env, ctx, found)?;
    Ok((api, caller, plan))
}

/// The API's IP allowlist (403 outside it).
fn check_ip(req: &Request, api: &Api) -> Result<(), Error> {
    let allowlist = crate::auth::config::parse_allowlist(&api.ip_allowlist()?)?;
    if !cidr::allowed(&allowlist, client_ip(req).as_deref()) {
        return Err(Error::new(
            Problem::IpNotAllowed,
            "This API only accepts requests from the owner's allowed networks.",
        ));
    }
    Ok(())
}

/// A live key's consumer must be enabled (403); its use is noted after the response.
fn accept_key(env: &Env, ctx: &Context, found: d1::KeyMatch) -> Result<Caller, Error> {
    if found.consumer_status != "enabled" {
        return Err(Error::consumer_disabled());
    }
    let (env, key_id) = (env.clone(), found.key_id.clone());
    ctx.wait_until(async move {
        if let Ok(db) = d1::db(&env) {
            let _ = d1::touch_key(&db, &key_id, now_ms()).await;
        }
    });
    Ok(Caller {
        consumer_id: found.consumer_id,
        key_id: Some(found.key_id),
        session_id: None,
    })
}

/// Phase 2 — authenticate. First the API's IP allowlist (403 outside it). Then the credential, from
/// where the API reads it (Bearer by default, or a header or query parameter; `X-API-Key` always):
/// - a consumer key (`ask_live_...`) is accepted in every mode: malformed keys are refused before any
///   lookup, and the lookup reads D1 each time, so a revoked key fails on the next request;
/// - a token Sluice signed for the project: a key-exchange token (valid while its key is), or a
///   signed-in user's access token (managed mode only; its session must stand);
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
    check_ip(req, api)?;
    let credential = read_credential(req, api)?.ok_or_else(Error::missing_credential)?;
    if credential.starts_with(crate::auth::key::PREFIX) {
        return authenticate_key(env, ctx, db, api, &credential).await;
    }
    if !looks_like_jwt(&credential) {
        return Err(Error::invalid_credential(match api.mode() {
            AuthMode::ConsumerKeyOnly => "Send a consumer key (ask_live_...).",
            _ => "Send a consumer key (ask_live_...) or a JWT.",
        }));
    }
    let now = now_ms();
    let project = d1::project_by_slug(db, &api.project_slug).await?;
    let is_ours =
        peek_kid(&credential).is_some_and(|kid| kid.starts_with(&kid_prefix(&project.slug)));
    if is_ours {
        let claims = verify_sluice_token(env, &project, &credential, now)?;
        return match classify(&claims) {
            Some(SluiceToken::Exchange {
                consumer_id,
                key_id,
            }) => {
                let live = d1::live_key(db, &project.id, &key_id)
                    .await?
                    .ok_or_else(|| {
                        Error::invalid_credential(
                            "The consumer key this token was issued for has been revoked.",
                        )
                    })?;
                if live.consumer_status != "enabled" || live.consumer_id != consumer_id {
                    return Err(Error::consumer_disabled());
                }
                Ok(Caller {
                    consumer_id,
                    key_id: Some(key_id),
                    session_id: None,
                })
            }
            Some(SluiceToken::Access {
                consumer_id,
                session_id,
            }) => {
                if api.mode() != AuthMode::Managed {
                    return Err(mode_mismatch(api, "a signed-in user's token"));
                }
                crate::identity::ensure_session_live(env, &session_id).await?;
                let consumer = d1::find_consumer(db, &project.id, &consumer_id)
                    .await?
                    .ok_or_else(|| {
                        Error::invalid_credential("The signed-in user no longer exists.")
                    })?;
                if consumer.status != "enabled" {
                    return Err(Error::consumer_disabled());
                }
                Ok(Caller {
                    consumer_id,
                    key_id: None,
                    session_id: Some(session_id),
                })
            }
            None => Err(Error::invalid_credential(
                "This token is not an access token.",
            )),
        };
    }
    if let Some(caller) = authenticate_consumer_jwt(env, db, &project, &credential, now).await? {
        return Ok(caller);
    }
    match (api.mode(), api.byo_jwt()) {
        (AuthMode::ByoJwt, Some(config)) => {
            let user_id = verify_byo(env, &api.id, &config, &credential, now).await?;
            Ok(Caller {
                consumer_id: user_id,
                key_id: None,
                session_id: None,
            })
        }
        (AuthMode::ByoJwt, None) => Err(Error::misconfigured(
            "This API is in byo-jwt mode but has no JWKS configured.",
        )),
        _ => Err(Error::invalid_credential(format!(
            "This JWT was not issued by this gateway for project `{}`.",
            project.slug
        ))),
    }
}

/// The client's credential, when the API passes it on to the upstream (off by default: otherwise no
/// client header ever reaches the upstream).
pub fn passthrough_credential(
    req: &Request,
    api: &Api,
) -> Result<Option<(CredentialSource, String)>, Error> {
    let config = api.credential();
    if !config.passthrough {
        return Ok(None);
    }
    Ok(read_credential(req, api)?.map(|c| {
        (
            config.source().unwrap_or(CredentialSource::Authorization),
            c,
        )
    }))
}

/// A consumer's own JWT (seed 004), valid in every mode like a consumer key: the credential named by a
/// payload claim is looked up, then the token must verify with that credential's key alone.
/// `None` when no credential claims the token.
async fn authenticate_consumer_jwt(
    env: &Env,
    db: &D1Database,
    project: &crate::model::Project,
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
    if credential.consumer_status.as_deref() != Some("enabled") {
        return Err(Error::consumer_disabled());
    }
    Ok(Some(Caller {
        consumer_id: credential.consumer_id,
        key_id: Some(credential.id),
        session_id: None,
    }))
}

fn mode_mismatch(api: &Api, what: &str) -> Error {
    Error::new(
        Problem::AuthModeMismatch,
        format!(
            "API `{}` is in `{}` mode, which does not accept {what}.",
            api.slug, api.auth_mode
        ),
    )
}

/// The credential from where the API says to read it; `X-API-Key` is always accepted for keys.
fn read_credential(req: &Request, api: &Api) -> Result<Option<String>, Error> {
    let x_api_key = header(req, "x-api-key");
    match api.credential().source()? {
        CredentialSource::Authorization => extract_credential(
            header(req, "authorization").as_deref(),
            x_api_key.as_deref(),
        )
        .map_err(Error::invalid_credential),
        CredentialSource::Header(name) => Ok(header(req, &name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .or(x_api_key)),
        CredentialSource::Query(name) => {
            let url = req.url()?;
            let found = url
                .query_pairs()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.into_owned())
                .filter(|v| !v.is_empty());
            Ok(found.or(x_api_key))
        }
    }
}

async fn authenticate_key(
    env: &Env,
    ctx: &Context,
    db: &D1Database,
    api: &Api,
    credential: &str,
) -> Result<Caller, Error> {
    let key = ConsumerKey::parse(credential).map_err(|e| {
        Error::invalid_credential(format!("Not a valid consumer key: {}.", e.describe()))
    })?;
    let found = d1::key_by_hash(db, &api.project_id, &key.hash())
        .await?
        .ok_or_else(|| {
            Error::invalid_credential("This consumer key is unknown or has been revoked.")
        })?;
    accept_key(env, ctx, found)
}
