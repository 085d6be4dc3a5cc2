//! Edge side of identity: the project's signing keys, checking Sluice's own tokens, fetching and
//! caching an owner's JWKS, the client IP, and the auth event log.

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::{Map, Value};
use worker::{Context, Env, Request};

use crate::auth::config::ByoJwtConfig;
use crate::auth::jwks_cache::{decide, CacheTimes, Decision};
use crate::auth::jwt::{self, Alg, Policy, SigningKey, TokenError, VerifyingKey};
use crate::auth::tokens::{issuer, signing_key};
use crate::error::{Error, Problem};
use crate::http::{encryption_secret, header, now_ms, with_random};
use crate::ids::new_id;
use crate::outbound::{self, Fetched};
use crate::records::Project;
use crate::store::d1::{self, AuthEvent};
use crate::store::kv::{self, CachedJwks, JwksRecord};
use crate::timing::{Binding, Timing};

const JWKS_TIMEOUT_MS: u64 = 5_000;
const JWKS_MAX_BYTES: usize = 256 * 1024;

pub fn client_ip(req: &Request) -> Option<String> {
    header(req, "cf-connecting-ip")
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The key new tokens are signed with.
pub fn current_key(env: &Env, project: &Project) -> Result<SigningKey, Error> {
    Ok(signing_key(
        &encryption_secret(env)?,
        &project.id,
        &project.slug,
        project.signing_generation,
    ))
}

/// Keys that verify the project's tokens: the current one, and the previous one until every token
/// it signed has expired.
pub fn verification_keys(env: &Env, project: &Project, now: i64) -> Result<Vec<SigningKey>, Error> {
    let secret = encryption_secret(env)?;
    let mut keys = vec![signing_key(
        &secret,
        &project.id,
        &project.slug,
        project.signing_generation,
    )];
    let previous_alive = project.previous_key_retired_at.is_some_and(|at| {
        now < at
            + (project
                .access_token_ttl_s
                .max(crate::auth::tokens::EXCHANGE_TTL_S)
                + 60)
                * 1000
    });
    if project.signing_generation > 1 && previous_alive {
        keys.push(signing_key(
            &secret,
            &project.id,
            &project.slug,
            project.signing_generation - 1,
        ));
    }
    Ok(keys)
}

pub fn token_error(e: TokenError) -> Error {
    let problem = match e {
        TokenError::Expired => Problem::TokenExpired,
        _ => Problem::InvalidCredential,
    };
    Error::new(problem, format!("{}.", e.describe().trim_end_matches('.')))
        .with_header("WWW-Authenticate", "Bearer error=\"invalid_token\"")
}

/// The instance's key for owner access tokens.
pub fn owner_key(env: &Env) -> Result<SigningKey, Error> {
    Ok(crate::auth::tokens::owner_signing_key(&encryption_secret(
        env,
    )?))
}

/// Verifies an owner access token (the admin API's); returns its owner and session. An end user's
/// token, or any token this gateway did not sign for owners, is 401.
pub fn verify_owner_token(env: &Env, token: &str, now: i64) -> Result<(String, String), Error> {
    use crate::auth::tokens::{owner_of, OWNER_AUDIENCE, OWNER_ISSUER};
    let mut policy = Policy::default_asymmetric();
    policy.issuer = Some(OWNER_ISSUER.into());
    policy.audience = Some(OWNER_AUDIENCE.into());
    policy.allowed = vec![Alg::EdDsa];
    let not_ours = || {
        Error::admin_unauthorized().with_detail(
            "This is not an owner access token of this gateway (an end user's token is never accepted on the admin API).",
        )
    };
    let claims = jwt::verify(
        token,
        &[owner_key(env)?.to_verifying_key()],
        &policy,
        now / 1000,
    )
    .map_err(|e| match e {
        TokenError::Expired => token_error(e),
        _ => not_ours(),
    })?;
    owner_of(&claims).ok_or_else(not_ours)
}

/// Verifies a token Sluice signed for this project; returns its claims.
pub fn verify_sluice_token(
    env: &Env,
    project: &Project,
    token: &str,
    now: i64,
) -> Result<Map<String, Value>, Error> {
    let keys: Vec<VerifyingKey> = verification_keys(env, project, now)?
        .iter()
        .map(SigningKey::to_verifying_key)
        .collect();
    let mut policy = Policy::default_asymmetric();
    policy.issuer = Some(issuer(&project.slug));
    policy.audience = Some(project.slug.clone());
    policy.allowed = vec![Alg::EdDsa];
    jwt::verify(token, &keys, &policy, now / 1000).map_err(token_error)
}

thread_local! {
    /// JWKS per API in this isolate's memory, in front of KV: (jwks, fetched_at, refetched_at).
    static JWKS_MEMORY: RefCell<HashMap<String, CachedJwks>> = RefCell::new(HashMap::new());
}

async fn fetch_jwks(url: &str) -> Result<String, String> {
    let request = Request::new(url, worker::Method::Get).map_err(|e| e.to_string())?;
    let mut response = match outbound::fetch(request, JWKS_TIMEOUT_MS, None).await {
        Fetched::Answered(r) => r,
        Fetched::Failed(e) => return Err(e),
        Fetched::TimedOut => return Err("timed out".into()),
    };
    if response.status_code() != 200 {
        return Err(format!("status {}", response.status_code()));
    }
    let text = response.text().await.map_err(|e| e.to_string())?;
    if text.len() > JWKS_MAX_BYTES {
        return Err("JWKS too large".into());
    }
    jwt::parse_jwks(&text).map_err(|e| e.describe())?;
    Ok(text)
}

/// The API's JWKS keys, from memory, KV or the owner's endpoint (see `jwks_cache::decide`).
async fn byo_keys(
    env: &Env,
    timing: &Timing,
    api_id: &str,
    url: &str,
    now: i64,
    unknown_kid: bool,
) -> Result<Vec<VerifyingKey>, Error> {
    // Keys are cached per (API, JWKS URL): pointing the API at another IdP never reuses the old
    // IdP's keys, not even for a moment.
    let cache_key = format!(
        "{api_id}:{}",
        &crate::encoding::hex(&<sha2::Sha256 as sha2::Digest>::digest(url.as_bytes()))[..16]
    );
    let api_id = cache_key.as_str();
    let mut cached = JWKS_MEMORY.with(|m| m.borrow().get(api_id).cloned());
    let store = kv::kv(env)?;
    if cached
        .as_ref()
        .is_none_or(|c| now - c.fetched_at >= crate::auth::jwks_cache::FRESH_MS)
    {
        let started = now_ms();
        let from_kv = kv::get::<JwksRecord>(&store, api_id).await;
        timing.call(Binding::Kv, (now_ms() - started) as f64);
        if let Some(from_kv) = from_kv? {
            cached = Some(from_kv);
        }
    }
    let times = cached.as_ref().map(|c| CacheTimes {
        fetched_at: c.fetched_at,
        refetched_at: c.refetched_at,
    });
    let chosen = match decide(now, times, unknown_kid) {
        Decision::UseCache => cached,
        Decision::Fetch => match fetch_jwks(url).await {
            Ok(jwks) => {
                let fresh = CachedJwks {
                    jwks,
                    fetched_at: now,
                    refetched_at: now,
                };
                kv::put::<JwksRecord>(&store, api_id, &fresh).await?;
                Some(fresh)
            }
            Err(why) => {
                worker::console_error!(
                    "JWKS fetch for {api_id} failed: {why}; serving the cached copy if any"
                );
                // Remember the attempt so an unknown-kid flood cannot hammer a failing endpoint.
                cached.map(|c| CachedJwks {
                    refetched_at: now,
                    ..c
                })
            }
        },
    };
    let Some(chosen) = chosen else {
        return Err(Error::new(
            Problem::JwksUnavailable,
            "The gateway could not fetch the JWKS configured for this API and has no cached copy.",
        )
        .with_header("Retry-After", "5"));
    };
    JWKS_MEMORY.with(|m| m.borrow_mut().insert(api_id.to_string(), chosen.clone()));
    jwt::parse_jwks(&chosen.jwks).map_err(|e| Error::new(Problem::JwksUnavailable, e.describe()))
}

/// Verifies an owner's JWT against their JWKS; an unknown `kid` triggers one (throttled) refetch.
/// Returns the user id from the configured claim.
pub async fn verify_byo(
    env: &Env,
    timing: &Timing,
    api_id: &str,
    config: &ByoJwtConfig,
    token: &str,
    now: i64,
) -> Result<String, Error> {
    let policy = config.policy();
    let keys = byo_keys(env, timing, api_id, &config.jwks_url, now, false).await?;
    let claims = match jwt::verify(token, &keys, &policy, now / 1000) {
        Err(TokenError::UnknownKid(_)) => {
            let keys = byo_keys(env, timing, api_id, &config.jwks_url, now, true).await?;
            jwt::verify(token, &keys, &policy, now / 1000).map_err(token_error)?
        }
        other => other.map_err(token_error)?,
    };
    jwt::claim_at_path(&claims, &config.user_id_claim).map_err(token_error)
}

/// Files an auth event after the response (never on the request's critical path).
pub fn record_event(ctx: &Context, env: &Env, event: EventDraft) {
    let env = env.clone();
    ctx.wait_until(async move {
        let Ok(id) = with_random(|r| new_id("evt", r)) else {
            return;
        };
        let e = AuthEvent {
            id,
            project_id: event.project_id,
            api_id: event.api_id,
            kind: event.kind.to_string(),
            consumer_id: event.consumer_id,
            subject: event.subject,
            ip: event.ip,
            detail: event.detail,
            created_at: now_ms(),
        };
        if let Ok(db) = d1::db(&env) {
            if let Err(err) = d1::insert_auth_event(&db, &e).await {
                worker::console_error!("auth event not recorded: {}", err.detail);
            }
        }
    });
}

/// An auth event before it gets its id and time.
#[derive(Debug, Default)]
pub struct EventDraft {
    pub project_id: String,
    pub api_id: Option<String>,
    pub kind: &'static str,
    pub consumer_id: Option<String>,
    pub subject: Option<String>,
    pub ip: Option<String>,
    pub detail: Option<String>,
}

pub fn event(project_id: &str, kind: &'static str) -> EventDraft {
    EventDraft {
        project_id: project_id.to_string(),
        kind,
        ..EventDraft::default()
    }
}

/// A managed-mode session must still stand: asked of its Durable Object, so a sign-out or a reuse
/// revocation holds on the very next request everywhere (KV only mirrors it).
pub async fn ensure_session_live(
    env: &Env,
    session_id: &str,
    proof_jti: Option<String>,
) -> Result<(), Error> {
    use crate::auth::guard::{GuardReply, GuardRequest};
    use crate::store::objects::{self, Guard};
    // Asked of the session's own object, where sign-out and reuse revocation are exact (and a
    // DPoP proof is used once).
    let op = GuardRequest::SessionLive {
        now: now_ms(),
        proof_jti,
    };
    let live = match objects::call(env, &Guard::Session { id: session_id }, &op).await? {
        GuardReply::Live { live } => live,
        GuardReply::Refused { reason } => {
            return Err(Error::invalid_dpop(format!(
                "The DPoP proof was refused: {reason}."
            )))
        }
        _ => false,
    };
    if !live {
        return Err(Error::new(
            Problem::SessionRevoked,
            "This session was signed out or revoked: sign in again.",
        )
        .with_header("WWW-Authenticate", "Bearer error=\"invalid_token\""));
    }
    Ok(())
}

/// The request's DPoP proof (the `DPoP` header), checked against its method and URL (and, at a
/// resource, the access token it comes with): its key's thumbprint, `None` without a header.
pub fn dpop_proof(
    req: &Request,
    access_token: Option<&str>,
) -> Result<Option<crate::auth::dpop::Proof>, Error> {
    let Some(proof) = header(req, "dpop") else {
        return Ok(None);
    };
    let method = req.inner().method();
    let url = req.inner().url();
    let expected = crate::auth::dpop::Expected {
        method: &method,
        url: &url,
        access_token,
        now_s: now_ms() / 1000,
    };
    crate::auth::dpop::verify_proof(proof.trim(), &expected)
        .map(Some)
        .map_err(|why| Error::invalid_dpop(format!("The DPoP proof was refused: {why}.")))
}

/// A DPoP-bound access token (`cnf.jkt`) is accepted only with a proof by its key: the proof's
/// `jti` (`None` for an unbound token), which the data plane's counter remembers.
pub fn check_token_binding(
    req: &Request,
    token: &str,
    jkt: Option<&str>,
) -> Result<Option<String>, Error> {
    let Some(bound) = jkt else {
        return Ok(None);
    };
    // RFC 9449 §7.2: a bound token presented as a bearer token is refused, proof or not.
    let scheme = crate::http::header(req, "authorization")
        .and_then(|v| v.split_whitespace().next().map(str::to_ascii_lowercase));
    if scheme.as_deref() != Some("dpop") {
        return Err(Error::invalid_dpop(
            "This access token is bound to a DPoP key: send it as `Authorization: DPoP <token>`, not as a bearer token.",
        ));
    }
    match dpop_proof(req, Some(token))? {
        Some(p) if crate::auth::constant_time_eq(p.jkt.as_bytes(), bound.as_bytes()) => {
            Ok(Some(p.jti))
        }
        Some(_) => Err(Error::invalid_dpop(
            "The DPoP proof is signed by another key than the one this token is bound to.",
        )),
        None => Err(Error::invalid_dpop(
            "This access token is bound to a DPoP key: send it as `Authorization: DPoP <token>` with a `DPoP` proof.",
        )),
    }
}
