//! Owners signing in to the admin API: dev login (dev mode only), email codes with the end users'
//! machinery (challenges, guessing limits, rotating refresh tokens with reuse detection), logout, the
//! JWKS of owner tokens, and the social sign-ins that are not configured (501).

use serde::Deserialize;
use serde_json::json;
use worker::{D1Database, Env, Request, Response};

use super::auth::{
    bad_email, check_page_origin, no_challenge, throttled, too_many, verify_failure, OtpStart,
    OtpVerify, RefreshBody,
};
use crate::auth::cidr::client_network;
use crate::auth::guard::{GuardReply, GuardRequest};
use crate::auth::otp::{
    challenge_id_is_ours, generate_code, hash_code, new_challenge_id, normalize_code,
    normalize_email, Challenge,
};
use crate::auth::otp_limits::{GuessLimits, CODE_TTL_S};
use crate::auth::session::{
    new_refresh, new_session_id, parse_refresh, session_id_kind, Session, SessionIdKind,
};
use crate::auth::tokens::{owner_claims, OWNER_TOKEN_TTL_S};
use crate::email::{self, dev_mode};
use crate::error::{Error, Problem};
use crate::http::{encryption_secret, json, no_content, now_ms, read_body, secret, with_random};
use crate::identity::{client_ip, owner_key, verify_owner_token};
use crate::ids::new_id;
use crate::input::parse_body;
use crate::input::validate::validate_text;
use crate::org::{personal_slug, Role};
use crate::records::org::{Member, MemberStatus, Org, Owner};
use crate::records::sign_in::SignInPolicy;
use crate::store::d1;
use crate::store::objects::{self, Guard};

/// The sign-in state of owners lives beside the projects' under this name (no project id has an `@`).
const OWNER_REALM: &str = "@owners";
const BODY_LIMIT: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevLogin {
    email: String,
    name: Option<String>,
}

async fn body<T: serde::de::DeserializeOwned>(req: &mut Request) -> Result<T, Error> {
    parse_body(&read_body(req, BODY_LIMIT).await?)
}

/// Who may make an owner account by signing in: `OWNER_SIGNUP=open` (anyone; the default in dev
/// mode) or `invite_only` (addresses invited to an org; the default otherwise).
fn signup_open(env: &Env) -> bool {
    match secret(env, "OWNER_SIGNUP").as_deref() {
        Some("open") => true,
        Some(_) => false,
        None => dev_mode(env),
    }
}

/// Whether `email` may sign in: an owner already, invited to an org, or sign-up is open.
async fn may_sign_in(env: &Env, db: &D1Database, email: &str) -> Result<bool, Error> {
    Ok(signup_open(env)
        || d1::owner_by_email(db, email).await?.is_some()
        || d1::has_invitation(db, email).await?)
}

/// `POST /api/v1/auth/dev/login` (dev mode only): signs in as `email`, making the owner and their
/// personal org on first use.
pub async fn dev_login(mut req: Request, env: &Env) -> Result<Response, Error> {
    if !dev_mode(env) {
        return Err(Error::not_found(
            "No route for /api/v1/auth/dev/login outside dev mode.",
        ));
    }
    let input: DevLogin = body(&mut req).await?;
    let email = normalize_email(&input.email).map_err(|_| bad_email())?;
    if let Some(name) = &input.name {
        validate_text("name", name, 200)?;
    }
    let db = d1::db(env)?;
    let now = now_ms();
    let (owner, org_slug) = sign_in(&db, &email, input.name.as_deref(), now).await?;
    token_answer(env, &owner, org_slug, now).await
}

/// `POST /api/v1/auth/otp/start`: 202 with a `challenge_id` whatever the address (nobody learns who
/// has an account); limited per client network and per address as end users' sign-in is.
pub async fn otp_start(mut req: Request, env: &Env) -> Result<Response, Error> {
    check_page_origin(&req, |_| false, "the gateway's console")?;
    let input: OtpStart = body(&mut req).await?;
    let email = normalize_email(&input.email).map_err(|_| bad_email())?;
    // Before anything depends on the address, so the answer says nothing about it.
    email::ensure_configured(env)?;
    let db = d1::db(env)?;
    let now = now_ms();
    let network = client_network(client_ip(&req).as_deref());
    let policy = SignInPolicy::default();
    let op = GuardRequest::NetworkStart {
        now,
        max_per_hour: policy.otp_starts_per_network_per_hour as usize,
    };
    if let GuardReply::Throttled { retry_after_s } = on_network(env, &network, &op).await? {
        return Err(throttled(retry_after_s));
    }
    let pepper = encryption_secret(env)?;
    let challenge_id =
        with_random(|r| new_challenge_id(pepper.as_bytes(), OWNER_REALM, &email, r))?;
    let invited = may_sign_in(env, &db, &email).await?;
    let code = with_random(generate_code)?;
    let challenge = Challenge::new(
        challenge_id.clone(),
        hash_code(pepper.as_bytes(), OWNER_REALM, &email, &code),
        now,
        network,
    );
    let guard = Guard::Email {
        project_id: OWNER_REALM,
        email: &email,
    };
    if let GuardReply::Throttled { retry_after_s } =
        objects::call(env, &guard, &GuardRequest::Send { now, challenge }).await?
    {
        return Err(throttled(retry_after_s));
    }
    if !invited {
        // The challenge is stored and throttled as any other and its code mailed to nobody, so
        // neither the answers to `otp/start` nor those to `otp/verify` say who was invited.
        return started(challenge_id);
    }
    match email::send(
        env,
        None,
        OWNER_REALM,
        email::owner_sign_in_mail(&email, &code),
        now,
    )
    .await
    {
        Ok(()) => {}
        Err(e) if e.problem == Problem::EmailNotConfigured => return Err(e),
        Err(e) => worker::console_error!("owner sign-in mail not delivered: {}", e.detail),
    }
    started(challenge_id)
}

fn started(challenge_id: String) -> Result<Response, Error> {
    json(
        202,
        &json!({"status": "sent", "challenge_id": challenge_id, "expires_in": CODE_TTL_S,
            "detail": "If the address may sign in, a 6-digit code is on its way. It expires in 10 minutes. Send it to /api/v1/auth/otp/verify with this challenge_id."}),
    )
}

async fn on_network(env: &Env, network: &str, op: &GuardRequest) -> Result<GuardReply, Error> {
    let guard = Guard::Network {
        project_id: OWNER_REALM,
        network,
    };
    objects::call(env, &guard, op).await
}

/// `POST /api/v1/auth/otp/verify`: a right code for the challenge signs the owner in (the account
/// and personal org are made on first sign-in; invitations to the address are accepted).
pub async fn otp_verify(mut req: Request, env: &Env) -> Result<Response, Error> {
    check_page_origin(&req, |_| false, "the gateway's console")?;
    let input: OtpVerify = body(&mut req).await?;
    let email = normalize_email(&input.email).map_err(|_| bad_email())?;
    let code = normalize_code(&input.code)
        .ok_or_else(|| Error::invalid_request("`code` is the 6-digit code from the mail."))?;
    let db = d1::db(env)?;
    let now = now_ms();
    let network = client_network(client_ip(&req).as_deref());
    let policy = SignInPolicy::default();
    let may = GuardRequest::NetworkMayVerify {
        now,
        max_failures_per_hour: policy.otp_failed_verifies_per_network_per_hour as usize,
    };
    if let GuardReply::Throttled { retry_after_s } = on_network(env, &network, &may).await? {
        return Err(too_many(
            format!("Too many failed sign-in attempts from this network; try again in {retry_after_s} s."),
            retry_after_s,
        ));
    }
    let pepper = encryption_secret(env)?;
    if !challenge_id_is_ours(pepper.as_bytes(), OWNER_REALM, &email, &input.challenge_id) {
        return Err(no_challenge());
    }
    let op = GuardRequest::Check {
        now,
        challenge_id: input.challenge_id.clone(),
        code_hash: hash_code(pepper.as_bytes(), OWNER_REALM, &email, &code),
        network: network.clone(),
        limits: GuessLimits {
            per_network_per_hour: policy.otp_wrong_codes_per_network_per_hour as usize,
            per_email_per_day: policy.otp_wrong_codes_per_email_per_day as usize,
        },
    };
    let guard = Guard::Email {
        project_id: OWNER_REALM,
        email: &email,
    };
    if let Some((e, _)) = verify_failure(objects::call(env, &guard, &op).await?) {
        return Err(e);
    }
    on_network(env, &network, &GuardRequest::NetworkVerified { at: now }).await?;
    if !may_sign_in(env, &db, &email).await? {
        return Err(Error::new(
            Problem::SignupNotAllowed,
            "This gateway makes owner accounts by invitation only: ask an org's admin to invite this address.",
        ));
    }
    let (owner, org_slug) = sign_in(&db, &email, None, now).await?;
    token_answer(env, &owner, org_slug, now).await
}

/// The owner behind `email`, made with a personal org on first sign-in; their invitations become
/// memberships. Also which org to start in (the personal one, else the first).
async fn sign_in(
    db: &D1Database,
    email: &str,
    name: Option<&str>,
    now: i64,
) -> Result<(Owner, Option<String>), Error> {
    let owner = match d1::owner_by_email(db, email).await? {
        Some(owner) => owner,
        None => create_owner(db, email, name, now).await?,
    };
    d1::accept_invitations(db, &owner.id, email, now).await?;
    let first = d1::memberships(db, &owner.id).await?.into_iter().next();
    Ok((owner, first.map(|m| m.slug)))
}

async fn create_owner(
    db: &D1Database,
    email: &str,
    name: Option<&str>,
    now: i64,
) -> Result<Owner, Error> {
    let local = email.split('@').next().unwrap_or(email);
    let owner = Owner {
        id: with_random(|r| new_id("own", r))?,
        email: email.to_string(),
        name: name.unwrap_or(local).to_string(),
        created_at: now,
    };
    for attempt in 0..5 {
        let org = Org {
            id: with_random(|r| new_id("org", r))?,
            slug: personal_slug(email, attempt),
            name: format!("{}'s org", owner.name),
            created_at: now,
        };
        let member = Member {
            id: with_random(|r| new_id("mem", r))?,
            org_id: org.id.clone(),
            owner_id: Some(owner.id.clone()),
            email: email.to_string(),
            role: Role::Owner,
            status: MemberStatus::Active,
            invited_by: None,
            created_at: now,
            joined_at: Some(now),
        };
        match d1::create_owner(db, &owner, &org, &member).await {
            Ok(()) => return Ok(owner),
            Err(e) if e.status == 409 => {
                // A concurrent first sign-in made the owner; or the slug is taken: try the next.
                if let Some(existing) = d1::owner_by_email(db, email).await? {
                    return Ok(existing);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::conflict(
        "No free slug was found for the personal org; try again.",
    ))
}

/// How long owner access tokens live: `OWNER_TOKEN_TTL_S` (5 minutes to 7 days), 24 h by default
/// or when it is not a number in that range.
fn token_ttl_s(env: &Env) -> i64 {
    secret(env, "OWNER_TOKEN_TTL_S")
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|s| (300..=7 * 86_400).contains(s))
        .unwrap_or(OWNER_TOKEN_TTL_S)
}

/// A new owner session and the token answer.
async fn token_answer(
    env: &Env,
    owner: &Owner,
    org_slug: Option<String>,
    now: i64,
) -> Result<Response, Error> {
    let pepper = encryption_secret(env)?;
    let session_id = with_random(|r| new_session_id(pepper.as_bytes(), r))?;
    let (refresh_token, hash) = with_random(|r| new_refresh(&session_id, r))?;
    let session = Session::new(
        session_id.clone(),
        OWNER_REALM.into(),
        owner.id.clone(),
        Some(owner.email.clone()),
        hash,
        now,
    );
    objects::create_session(env, &session_id, session).await?;
    tokens(env, owner, &session_id, refresh_token, org_slug, now)
}

fn tokens(
    env: &Env,
    owner: &Owner,
    session_id: &str,
    refresh_token: String,
    org_slug: Option<String>,
    now: i64,
) -> Result<Response, Error> {
    let ttl = token_ttl_s(env);
    let access = owner_key(env)?.sign(&owner_claims(
        &owner.id,
        &owner.email,
        session_id,
        now / 1000,
        ttl,
    ));
    let mut r = json(
        200,
        &json!({"access_token": access, "token_type": "bearer", "expires_in": ttl,
            "refresh_token": refresh_token, "org_slug": org_slug}),
    )?;
    r.headers_mut().set("cache-control", "no-store")?;
    Ok(r)
}

/// `POST /api/v1/auth/refresh`: rotates an owner's refresh token; a rotated-out token revokes the
/// session (and so every access token of it).
pub async fn refresh(mut req: Request, env: &Env) -> Result<Response, Error> {
    let input: RefreshBody = body(&mut req).await?;
    let refused = |why: &str| {
        Error::new(
            Problem::InvalidRefreshToken,
            format!("The refresh token was refused: {why}."),
        )
    };
    let (session_id, secret) = parse_refresh(&input.refresh_token)
        .ok_or_else(|| refused("this is not a refresh token"))?;
    if session_id_kind(encryption_secret(env)?.as_bytes(), &session_id) != SessionIdKind::Tagged {
        return Err(refused("unknown session"));
    }
    let now = now_ms();
    let (new_token, new_hash) = with_random(|r| new_refresh(&session_id, r))?;
    let op = GuardRequest::Rotate {
        now,
        project: OWNER_REALM.into(),
        secret,
        new_hash,
        jkt: None,
        client_id: None,
        scope: None,
        proof_jti: None,
    };
    match objects::call(env, &Guard::Session { id: &session_id }, &op).await? {
        GuardReply::Rotated { session } if session.project == OWNER_REALM => {
            let db = d1::db(env)?;
            let owner = d1::owner_by_id(&db, &session.consumer_id)
                .await?
                .ok_or_else(|| refused("the owner account no longer exists"))?;
            let first = d1::memberships(&db, &owner.id).await?.into_iter().next();
            tokens(env, &owner, &session_id, new_token, first.map(|m| m.slug), now)
        }
        GuardReply::Reused { .. } => Err(Error::new(
            Problem::RefreshTokenReused,
            "This refresh token was already used. The session has been revoked for safety: sign in again.",
        )),
        GuardReply::Refused { reason } => Err(refused(&reason)),
        _ => Err(refused("not an owner session")),
    }
}

/// `POST /api/v1/auth/logout`: ends the session of the owner access token (its access tokens stop
/// working on the very next request).
pub async fn logout(req: Request, env: &Env) -> Result<Response, Error> {
    let token = crate::http::bearer(&req).ok_or_else(|| {
        Error::admin_unauthorized().with_detail("Send the owner access token to sign out.")
    })?;
    let (_, session_id) = verify_owner_token(env, &token, now_ms())?;
    objects::call(
        env,
        &Guard::Session { id: &session_id },
        &GuardRequest::Revoke,
    )
    .await?;
    no_content()
}

/// `GET /api/v1/.well-known/jwks.json`: the public key of owner access tokens.
pub fn jwks(env: &Env) -> Result<Response, Error> {
    let mut r = json(200, &json!({ "keys": [owner_key(env)?.public_jwk()] }))?;
    r.headers_mut()
        .set("cache-control", "public, max-age=300")?;
    Ok(r)
}

/// `GET /api/v1/auth/google`, `/api/v1/auth/github`: social sign-in needs an OIDC provider, which
/// this gateway does not have configured.
pub fn social(provider: &str) -> Result<Response, Error> {
    let name = if provider == "google" {
        "Google"
    } else {
        "GitHub"
    };
    Err(Error::new(
        Problem::NotImplemented,
        format!("Sign-in with {name} is not configured on this gateway: sign in with an email code (POST /api/v1/auth/otp/start), or in dev mode with POST /api/v1/auth/dev/login."),
    )
    .with_field("provider", provider))
}
