//! Phases 1 and 2 of the data plane, on the edge: the API and who is calling. This adapter reads the
//! credential from where the API says and performs the lookups each kind of credential needs, from
//! the hot-path cache (no D1 for an API and a key seen before); every decision about them is
//! `auth::decide`'s, and whether the caller may call now is its counter's.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use worker::{Context, Env, Request};

use crate::auth::config::CredentialSource;
use crate::auth::consumer_jwt;
use crate::auth::decide::{self, Caller, Presented};
use crate::auth::extract_credential;
use crate::auth::mtls::{self, Certificate, ClientAuth, MtlsMode};
use crate::auth::tokens::{classify, oauth_of, SluiceToken};
use crate::cache;
use crate::error::Error;
use crate::http::{header, now_ms};
use crate::identity::{client_ip, verify_byo, verify_sluice_token};
use crate::records::{Api, Consumer, ConsumerKind, ConsumerStatus, Project};
use crate::store::d1;
use crate::store::kv::ApiEntry;
use crate::timing::Timing;

/// How often a key's `last_used_at` is written from one isolate.
const KEY_USE_EVERY_MS: i64 = 60_000;

/// Phases 1 and 2: the API named in the path (from the hot-path cache, with its plans) and who is
/// calling. No D1 read for an API and a key seen before.
pub async fn resolve_and_authenticate(
    req: &Request,
    env: &Env,
    ctx: &Context,
    timing: &Timing,
    project: &str,
    api: &str,
) -> Result<(Rc<ApiEntry>, Caller), Error> {
    let entry = cache::api(env, timing, project, api).await?;
    let caller = authenticate(req, env, ctx, timing, &entry.api)
        .await
        .map_err(|e| {
            // MCP and other OAuth clients find the authorization server from a 401 (RFC 9728).
            if entry.api.accepts_oauth() {
                crate::routes::oauth::with_resource_metadata(e, req, project, api)
            } else {
                e
            }
        })?;
    Ok((entry, caller))
}

/// Phase 2 — authenticate. First the API's IP allowlist (403 outside it). Then the credential, from
/// where the API reads it (Bearer by default, or a header or query parameter; `X-API-Key` always):
/// - a consumer key (`ask_live_...`), in every mode, found by its hash;
/// - a token Sluice signed for the project: a key-exchange token, or a signed-in user's access
///   token (managed mode only);
/// - a consumer's own JWT (valid in every mode, like a key), verified with that credential's key;
/// - in byo-jwt mode, the owner's JWT, checked against their JWKS; the configured claim is the consumer.
///
/// Whether the consumer may call now (enabled, its key or session not revoked) is checked by its
/// counter at admission, where it is exact. 401 when the credential is missing, malformed, expired
/// or unknown; 403 when it is valid but not allowed here (IP, mode).
///
/// An API with `mtls` on also reads the client certificate the zone verified (`auth::mtls` decides):
/// with `accept` a registered certificate is a credential; with `require` it is needed besides the
/// credential, and both must be one consumer's (403 otherwise).
pub async fn authenticate(
    req: &Request,
    env: &Env,
    ctx: &Context,
    timing: &Timing,
    api: &Api,
) -> Result<Caller, Error> {
    if !api.ip_allowlist.allows(client_ip(req).as_deref()) {
        return Err(decide::ip_refused());
    }
    if api.mtls == MtlsMode::Off {
        let credential = read_credential(req, api)?.ok_or_else(Error::missing_credential)?;
        return by_credential(req, env, ctx, timing, api, &credential).await;
    }
    // The certificate first: `require` refuses without one before any credential is looked up.
    let cert = client_auth(req).certificate();
    let found = match &cert {
        Certificate::Verified(verified) => {
            let live = cache::mtls_credentials(env, timing, &api.project_id).await?;
            mtls::holder(verified, &live).cloned()
        }
        _ => None,
    };
    let by_cert = mtls::certificate_caller(api.mtls, &cert, found.as_ref())?;
    let other = match read_credential(req, api) {
        Ok(Some(credential)) => Some(by_credential(req, env, ctx, timing, api, &credential).await),
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    };
    mtls::combine(api.mtls, &cert, by_cert, other)
}

/// What `request.cf.tlsClientAuth` says, read field by field from the JavaScript object (never a
/// header; a missing field is empty, where workers-rs's typed getters would panic).
fn client_auth(req: &Request) -> ClientAuth {
    use worker::js_sys::Reflect;
    use worker::wasm_bindgen::JsValue;
    let get = |obj: &JsValue, name: &str| {
        Reflect::get(obj, &JsValue::from_str(name))
            .ok()
            .filter(|v| !v.is_undefined() && !v.is_null())
    };
    let Some(auth) = get(req.inner().as_ref(), "cf").and_then(|cf| get(&cf, "tlsClientAuth"))
    else {
        return ClientAuth::default();
    };
    let text = |name: &str| {
        get(&auth, name)
            .and_then(|v| v.as_string().or_else(|| v.as_f64().map(|n| n.to_string())))
            .unwrap_or_default()
    };
    ClientAuth {
        presented: text("certPresented"),
        verified: text("certVerified"),
        fingerprint_sha256: text("certFingerprintSHA256"),
        issuer_dn: text("certIssuerDN"),
        subject_dn: text("certSubjectDN"),
        revoked: text("certRevoked"),
    }
}

/// The request's credential (a key, a token, a JWT), looked up as its kind needs.
async fn by_credential(
    req: &Request,
    env: &Env,
    ctx: &Context,
    timing: &Timing,
    api: &Api,
    credential: &str,
) -> Result<Caller, Error> {
    match decide::presented(credential, &api.project_slug, api.mode)? {
        Presented::Key(key) => {
            let holder = cache::key_owner(env, timing, &api.project_id, &key.hash()).await?;
            let caller = decide::by_key(holder.as_deref())?;
            note_key_use(env, ctx, caller.key_id.clone());
            Ok(caller)
        }
        Presented::Custom(secret) => {
            // A project without custom keys refuses such credentials from memory; garbage is
            // remembered as unknown for a while: either way it costs no storage round trip.
            let hash = crate::auth::key::custom_hash(&api.project_id, &secret);
            if cache::known_unknown(&hash)
                || !cache::has_custom_keys(env, timing, &api.project_id).await?
            {
                return Err(decide::unknown_key());
            }
            let holder = cache::key_owner(env, timing, &api.project_id, &hash).await?;
            if holder.is_none() {
                cache::note_unknown(&hash);
            }
            let caller = decide::by_key(holder.as_deref())?;
            note_key_use(env, ctx, caller.key_id.clone());
            Ok(caller)
        }
        Presented::SluiceToken => {
            let project = cache::project(env, timing, &api.project_slug).await?;
            sluice_token(req, env, api, &project, credential)
        }
        Presented::OtherJwt => {
            let project = cache::project(env, timing, &api.project_slug).await?;
            other_jwt(env, timing, api, &project, credential).await
        }
    }
}

thread_local! {
    /// When this isolate last noted each key's use.
    static KEY_USE: RefCell<HashMap<String, i64>> = RefCell::new(HashMap::new());
}

/// A key's `last_used_at` is written at most once a minute per isolate, after the response.
fn note_key_use(env: &Env, ctx: &Context, key_id: Option<String>) {
    let Some(key_id) = key_id else {
        return;
    };
    let now = now_ms();
    let due = KEY_USE.with(|m| {
        let mut m = m.borrow_mut();
        let due = m.get(&key_id).is_none_or(|at| now - at >= KEY_USE_EVERY_MS);
        if due {
            m.insert(key_id.clone(), now);
        }
        due
    });
    if !due {
        return;
    }
    let env = env.clone();
    ctx.wait_until(async move {
        if let Ok(db) = d1::db(&env) {
            let _ = d1::touch_key(&db, &key_id, now).await;
        }
    });
}

/// A token this gateway signed: verified with the project's keys, and read by its kind.
fn sluice_token(
    req: &Request,
    env: &Env,
    api: &Api,
    project: &Project,
    token: &str,
) -> Result<Caller, Error> {
    let claims = verify_sluice_token(env, project, token, now_ms())?;
    match classify(&claims) {
        Some(SluiceToken::Exchange {
            consumer_id,
            key_id,
        }) => Ok(decide::by_exchange_token(consumer_id, key_id)),
        Some(SluiceToken::Access {
            consumer_id,
            session_id,
            jkt,
        }) => {
            match oauth_of(&claims) {
                Some(oauth) => decide::oauth_token_allowed(
                    api.mode,
                    api.oauth.oauth,
                    &api.project_slug,
                    &api.slug,
                    &api.oauth.required_scopes,
                    &oauth,
                )?,
                None => decide::access_token_allowed(api.mode, &api.slug)?,
            }
            let dpop_jti = crate::identity::check_token_binding(req, token, jkt.as_deref())?;
            Ok(Caller {
                dpop_jti,
                ..decide::by_access_token(consumer_id, session_id)
            })
        }
        None => Err(Error::invalid_credential(
            "This token is not an access token.",
        )),
    }
}

/// Any other JWT: a consumer's own credential if one claims it, else (byo-jwt mode) the owner's.
async fn other_jwt(
    env: &Env,
    timing: &Timing,
    api: &Api,
    project: &Project,
    token: &str,
) -> Result<Caller, Error> {
    let now = now_ms();
    if let Some(caller) = consumer_jwt_caller(env, timing, project, token, now).await? {
        return Ok(caller);
    }
    decide::other_jwt(api.mode, api.byo_jwt.is_some(), &project.slug)?;
    let Some(config) = &api.byo_jwt else {
        return Err(Error::misconfigured(
            "This API is in byo-jwt mode but has no JWKS configured.",
        ));
    };
    let user_id = verify_byo(env, timing, &api.id, config, token, now).await?;
    let user = Consumer {
        id: decide::byo_consumer_id(&project.id, &api.id, &user_id),
        project_id: project.id.clone(),
        // The IdP's id for the user, as the owner knows them.
        name: user_id.chars().take(200).collect(),
        description: None,
        kind: ConsumerKind::JwtUser,
        status: ConsumerStatus::Enabled,
        created_at: now,
        email: None,
    };
    cache::jwt_user(env, timing, &user).await?;
    Ok(decide::by_owner_jwt(user.id))
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
    timing: &Timing,
    project: &Project,
    token: &str,
    now: i64,
) -> Result<Option<Caller>, Error> {
    let candidates = consumer_jwt::candidate_values(token);
    if candidates.is_empty() {
        return Ok(None);
    }
    let live = cache::jwt_credentials(env, timing, &project.id).await?;
    let Some(credential) = live.iter().find(|c| {
        candidates
            .iter()
            .any(|(k, v)| *k == c.claim_name && *v == c.claim_value)
    }) else {
        return Ok(None);
    };
    let keys = match (&credential.secret_enc, &credential.jwks_json) {
        (Some(sealed), _) => {
            let secret = crate::http::keyring(env)?.open(sealed).ok_or_else(|| {
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
    Ok(Some(decide::by_consumer_jwt(
        credential.consumer_id.clone(),
        credential.id.clone(),
    )))
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
            let found = crate::http::Target::of(req)
                .query(name)
                .filter(|v| !v.is_empty());
            Ok(found.or(x_api_key))
        }
    }
}
