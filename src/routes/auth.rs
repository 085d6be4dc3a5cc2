//! A project's end-user auth endpoints: OTP sign-in, refresh rotation, logout, me, the consumer-key →
//! token exchange, the public JWKS, and (dev mode only) the dev mailbox.

use serde::{de::DeserializeOwned, Deserialize};
use serde_json::{json, Value};
use worker::{Context, D1Database, Env, Request, Response};

use crate::auth::cidr::client_network;
use crate::auth::guard::{GuardReply, GuardRequest};
use crate::auth::key::ConsumerKey;
use crate::auth::otp::{
    challenge_id_is_ours, generate_code, hash_code, new_challenge_id, normalize_code,
    normalize_email, Challenge,
};
use crate::auth::otp_limits::{GuessLimits, CODE_TTL_S};
use crate::auth::session::{
    new_refresh, new_session_id, parse_refresh, session_id_kind, Session, SessionIdKind,
};
use crate::auth::tokens::{access_claims, classify, exchange_claims, SluiceToken, EXCHANGE_TTL_S};
use crate::email::{self, dev_mode};
use crate::error::{Error, Problem};
use crate::http::{encryption_secret, header, json, no_content, now_ms, read_body, with_random};
use crate::identity::{self, client_ip, current_key, event, record_event, verify_sluice_token};
use crate::ids::new_id;
use crate::input::parse_body;
use crate::limits::standing::Change;
use crate::records::sign_in::Signup;
use crate::records::{Consumer, ConsumerKind, ConsumerStatus, Project};
use crate::store::counter_do::change_in_project;
use crate::store::d1;
use crate::store::kv::{self, MailboxRecord, SessionRecord, SessionStatus};
use crate::store::objects::{self, Guard};

const AUTH_BODY_LIMIT: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OtpStart {
    pub email: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OtpVerify {
    pub email: String,
    pub code: String,
    /// The id `otp/start` answered: wrong codes count against that challenge.
    pub challenge_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RefreshBody {
    pub refresh_token: String,
}

/// OTP sign-in exists only on a project with an API in `managed` mode; elsewhere its routes are 404.
async fn require_managed(db: &D1Database, project: &Project) -> Result<(), Error> {
    if d1::has_managed_api(db, &project.id).await? {
        Ok(())
    } else {
        Err(Error::not_found(format!(
            "Project `{}` has no API in managed mode, so it has no OTP sign-in.",
            project.slug
        )))
    }
}

/// The project named in the path and the request's JSON body (bounded): how every sign-in call starts.
async fn project_and_body<T: DeserializeOwned>(
    req: &mut Request,
    env: &Env,
    project: &str,
) -> Result<(D1Database, Project, T), Error> {
    let db = d1::db(env)?;
    let project = d1::project_by_slug(&db, project).await?;
    let input: T = parse_body(&read_body(req, AUTH_BODY_LIMIT).await?)?;
    Ok((db, project, input))
}

/// A sign-in step from a page the project does not let call it (see `page_may_sign_in`).
pub(super) fn check_page_origin(
    req: &Request,
    allows: impl Fn(&str) -> bool,
    whose: &str,
) -> Result<(), Error> {
    let origin = header(req, "origin");
    if crate::auth::page_may_sign_in(origin.as_deref(), &req.inner().url(), allows) {
        return Ok(());
    }
    Err(Error::new(
        Problem::OriginNotAllowed,
        format!(
            "Pages from `{}` may not sign in to {whose}.",
            origin
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect::<String>()
        ),
    ))
}

/// A sign-in step on a project: from its allowed origins' pages only.
fn check_project_page(req: &Request, project: &Project) -> Result<(), Error> {
    let whose = format!("project `{}` (its `allowed_origins`)", project.slug);
    check_page_origin(req, |o| project.allows_origin(o), &whose)
}

pub(super) fn bad_email() -> Error {
    Error::invalid_request("`email` must be an email address.")
}

pub(super) fn throttled(retry_after_s: u64) -> Error {
    too_many(
        format!("Wait {retry_after_s} s before asking for another code."),
        retry_after_s,
    )
}

/// A sign-in limit reached: 429 with when to try again, as a field and as `Retry-After`.
pub(super) fn too_many(detail: String, retry_after_s: u64) -> Error {
    Error::new(Problem::RateLimited, detail)
        .with_field("retry_after", retry_after_s)
        .with_header("Retry-After", retry_after_s.to_string())
}

/// `POST /v1/{project}/auth/otp/start`: 202 with a `challenge_id` whatever the email (nobody learns
/// which addresses have accounts). Limited per client network (starts per hour, across emails) and
/// per email (a gap and an hourly cap per network, and a cap from all networks).
pub async fn otp_start(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
) -> Result<Response, Error> {
    let (db, project, input): (_, _, OtpStart) = project_and_body(&mut req, env, project).await?;
    require_managed(&db, &project).await?;
    check_project_page(&req, &project)?;
    let email = normalize_email(&input.email).map_err(|_| bad_email())?;
    let challenge_id = send_code(env, ctx, &db, &project, &email, client_ip(&req)).await?;
    started(challenge_id)
}

/// Sends a sign-in code to `email` if the limits allow (per network, then per address); the id of
/// its challenge. An address the sign-up policy keeps out gets an id all the same (invite only), so
/// nobody learns which addresses were invited.
pub(super) async fn send_code(
    env: &Env,
    ctx: &Context,
    db: &D1Database,
    project: &Project,
    email: &str,
    ip: Option<String>,
) -> Result<String, Error> {
    let now = now_ms();
    let network = client_network(ip.as_deref());
    let policy = &project.sign_in;
    let op = GuardRequest::NetworkStart {
        now,
        max_per_hour: policy.otp_starts_per_network_per_hour as usize,
    };
    if let GuardReply::Throttled { retry_after_s } = on_network(env, project, &network, &op).await?
    {
        return Err(throttled(retry_after_s));
    }
    let pepper = encryption_secret(env)?;
    let challenge_id = with_random(|r| new_challenge_id(pepper.as_bytes(), &project.id, email, r))?;
    let invited =
        policy.lets_sign_up(email) || d1::user_by_email(db, &project.id, email).await?.is_some();
    if !invited && policy.signup == Signup::Domains {
        return Err(signup_not_allowed(project));
    }
    let code = with_random(generate_code)?;
    let challenge = Challenge::new(
        challenge_id.clone(),
        hash_code(pepper.as_bytes(), &project.id, email, &code),
        now,
        network,
    );
    if let GuardReply::Throttled { retry_after_s } = objects::call(
        env,
        &Guard::Email {
            project_id: &project.id,
            email,
        },
        &GuardRequest::Send { now, challenge },
    )
    .await?
    {
        return Err(throttled(retry_after_s));
    }
    if !invited {
        // Invite only: the challenge is stored and throttled as any other and its code mailed to
        // nobody, so neither the answers to `otp/start` nor those to `otp/verify` say which
        // addresses were invited.
        return Ok(challenge_id);
    }
    let mail = email::sign_in_mail(project, email, &code);
    match email::send(env, project.email_from.as_deref(), &project.slug, mail, now).await {
        Ok(()) => {}
        Err(e) if e.problem == Problem::EmailNotConfigured => return Err(e),
        // A provider failure is logged, not shown: the answer must not depend on the address.
        Err(e) => worker::console_error!("sign-in mail not delivered: {}", e.detail),
    }
    record_event(
        ctx,
        env,
        identity::EventDraft {
            subject: Some(email.to_string()),
            ip,
            ..event(&project.id, "otp_sent")
        },
    );
    Ok(challenge_id)
}

fn started(challenge_id: String) -> Result<Response, Error> {
    json(
        202,
        &json!({"status": "sent", "challenge_id": challenge_id, "expires_in": CODE_TTL_S,
            "detail": "If the address can receive mail, a 6-digit code is on its way. It expires in 10 minutes. Send it to otp/verify with this challenge_id."}),
    )
}

fn signup_not_allowed(project: &Project) -> Error {
    Error::new(
        Problem::SignupNotAllowed,
        format!(
            "Project `{}` only lets addresses at its sign-up domains create an account.",
            project.slug
        ),
    )
    .with_field("param", "email")
}

/// One operation on the sign-in object of a client network.
async fn on_network(
    env: &Env,
    project: &Project,
    network: &str,
    op: &GuardRequest,
) -> Result<GuardReply, Error> {
    objects::call(
        env,
        &Guard::Network {
            project_id: &project.id,
            network,
        },
        op,
    )
    .await
}

/// The refusal for a verify that was not evaluated or did not pass; whether a code was evaluated
/// (and wrong), which is what the event log records.
pub(super) fn verify_failure(reply: GuardReply) -> Option<(Error, bool)> {
    match reply {
        GuardReply::Verified => None,
        GuardReply::WrongCode { attempts_left } => Some((
            Error::new(Problem::InvalidCode, "The code is wrong.")
                .with_field("attempts_left", attempts_left),
            true,
        )),
        GuardReply::Locked => Some((
            Error::new(
                Problem::CodeLocked,
                "Too many wrong codes for this challenge: ask for a new code.",
            ),
            false,
        )),
        GuardReply::CodeExpired => Some((
            Error::new(
                Problem::CodeExpired,
                "The code has expired: ask for a new one.",
            ),
            false,
        )),
        GuardReply::Throttled { retry_after_s } => Some((
            too_many(
                format!("Too many wrong codes for this address; try again in {retry_after_s} s."),
                retry_after_s,
            ),
            false,
        )),
        _ => Some((no_challenge(), false)),
    }
}

pub(super) fn no_challenge() -> Error {
    Error::new(
        Problem::InvalidCode,
        "There is no such challenge for this address: ask for a code first and send its `challenge_id`.",
    )
    .with_field("param", "challenge_id")
}

/// `POST /v1/{project}/auth/otp/verify`: a right code for the challenge (single use, 10 minutes, 5
/// tries) signs the user in; the end user (consumer of kind `user`) is created on first sign-in if
/// the project's sign-up policy lets the address in. A network with too many failed verifies, and an
/// email with too many wrong codes (per network per hour, from all networks per day), get 429
/// without the code being evaluated. A made-up challenge id touches no email's state.
pub async fn otp_verify(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
) -> Result<Response, Error> {
    let (db, project, input): (_, _, OtpVerify) = project_and_body(&mut req, env, project).await?;
    require_managed(&db, &project).await?;
    check_project_page(&req, &project)?;
    let email = normalize_email(&input.email).map_err(|_| bad_email())?;
    // A client with a DPoP key binds the session to it; a project may require one.
    let jkt = crate::identity::dpop_proof(&req, None)?.map(|p| p.jkt);
    if jkt.is_none() && project.sign_in.require_dpop {
        return Err(Error::invalid_dpop(
            "This project signs in only clients with a DPoP key: send a `DPoP` proof (RFC 9449).",
        ));
    }
    let ip = client_ip(&req);
    let attempt = CodeAttempt {
        email: &email,
        code: &input.code,
        challenge_id: &input.challenge_id,
        ip: ip.clone(),
    };
    let consumer = check_code(env, ctx, &db, &project, attempt).await?;
    let now = now_ms();
    let (access_token, refresh_token, bound) =
        start_session(env, &project, &consumer, &email, now, jkt).await?;
    record_event(
        ctx,
        env,
        identity::EventDraft {
            consumer_id: Some(consumer.id.clone()),
            subject: Some(email),
            ip,
            ..event(&project.id, "sign_in")
        },
    );
    token_pair(&project, access_token, refresh_token, bound)
}

/// A sign-in code presented for a challenge.
pub(super) struct CodeAttempt<'a> {
    pub email: &'a str,
    pub code: &'a str,
    pub challenge_id: &'a str,
    pub ip: Option<String>,
}

/// Checks a sign-in code (single use, 10 minutes, 5 tries) and answers the end user it signs in,
/// created on first sign-in if the sign-up policy lets the address in. A network with too many
/// failed verifies, and an email with too many wrong codes, get 429 without the code being
/// evaluated; a made-up challenge id touches no email's state.
pub(super) async fn check_code(
    env: &Env,
    ctx: &Context,
    db: &D1Database,
    project: &Project,
    attempt: CodeAttempt<'_>,
) -> Result<Consumer, Error> {
    let CodeAttempt {
        email,
        code,
        challenge_id,
        ip,
    } = attempt;
    let code = normalize_code(code)
        .ok_or_else(|| Error::invalid_request("`code` is the 6-digit code from the mail."))?;
    let now = now_ms();
    let network = client_network(ip.as_deref());
    let policy = &project.sign_in;
    let may = GuardRequest::NetworkMayVerify {
        now,
        max_failures_per_hour: policy.otp_failed_verifies_per_network_per_hour as usize,
    };
    if let GuardReply::Throttled { retry_after_s } =
        on_network(env, project, &network, &may).await?
    {
        return Err(too_many(
            format!("Too many failed sign-in attempts from this network; try again in {retry_after_s} s."),
            retry_after_s,
        ));
    }
    let pepper = encryption_secret(env)?;
    let failure = if challenge_id_is_ours(pepper.as_bytes(), &project.id, email, challenge_id) {
        let op = GuardRequest::Check {
            now,
            challenge_id: challenge_id.to_string(),
            code_hash: hash_code(pepper.as_bytes(), &project.id, email, &code),
            network: network.clone(),
            limits: GuessLimits {
                per_network_per_hour: policy.otp_wrong_codes_per_network_per_hour as usize,
                per_email_per_day: policy.otp_wrong_codes_per_email_per_day as usize,
            },
        };
        let guard = Guard::Email {
            project_id: &project.id,
            email,
        };
        verify_failure(objects::call(env, &guard, &op).await?)
    } else {
        Some((no_challenge(), false))
    };
    if let Some((e, evaluated)) = failure {
        // Only codes evaluated against a real challenge are logged: bounded by the codes sent.
        if evaluated {
            record_event(
                ctx,
                env,
                identity::EventDraft {
                    subject: Some(email.to_string()),
                    ip,
                    detail: Some(e.kind().into()),
                    ..event(&project.id, "otp_failed")
                },
            );
        }
        return Err(e);
    }
    // The try was counted as a failure before it was evaluated; it signed in, so it is taken back.
    on_network(
        env,
        project,
        &network,
        &GuardRequest::NetworkVerified { at: now },
    )
    .await?;
    let consumer = match d1::user_by_email(db, &project.id, email).await? {
        Some(c) => c,
        None => sign_up(env, db, project, email, &network, now).await?,
    };
    if !consumer.is_enabled() {
        return Err(Error::consumer_disabled());
    }
    Ok(consumer)
}

/// A first sign-in: the end user is created if the sign-up policy lets the address in and the
/// client network has not made its day's new accounts.
async fn sign_up(
    env: &Env,
    db: &D1Database,
    project: &Project,
    email: &str,
    network: &str,
    now: i64,
) -> Result<Consumer, Error> {
    if !project.sign_in.lets_sign_up(email) {
        return Err(signup_not_allowed(project));
    }
    let op = GuardRequest::NetworkSignUp {
        now,
        max_per_day: project.sign_in.signups_per_network_per_day as usize,
    };
    if let GuardReply::Throttled { retry_after_s } = on_network(env, project, network, &op).await? {
        return Err(too_many(
            format!(
                "Too many new accounts from this network today; try again in {retry_after_s} s."
            ),
            retry_after_s,
        ));
    }
    let consumer = Consumer {
        id: with_random(|r| new_id("con", r))?,
        project_id: project.id.clone(),
        name: email.to_string(),
        description: None,
        kind: ConsumerKind::User,
        status: ConsumerStatus::Enabled,
        created_at: now,
        email: Some(email.to_string()),
    };
    match d1::create_consumer(db, &consumer).await {
        Ok(()) => Ok(consumer),
        // A concurrent first sign-in created the user a moment ago.
        Err(e) if e.status == 409 => d1::user_by_email(db, &project.id, email).await?.ok_or(e),
        Err(e) => Err(e),
    }
}

/// Creates a refresh session (exact state in its Durable Object, status mirrored to KV) and signs the
/// first access token.
async fn start_session(
    env: &Env,
    project: &Project,
    consumer: &Consumer,
    email: &str,
    now: i64,
    jkt: Option<String>,
) -> Result<(String, String, bool), Error> {
    let pepper = encryption_secret(env)?;
    let session_id = with_random(|r| new_session_id(pepper.as_bytes(), r))?;
    let (refresh_token, hash) = with_random(|r| new_refresh(&session_id, r))?;
    let mut session = Session::new(
        session_id.clone(),
        project.id.clone(),
        consumer.id.clone(),
        Some(email.to_string()),
        hash,
        now,
    );
    session.jkt = jkt;
    let access = sign_access(env, project, &session, now)?;
    let bound = session.jkt.is_some();
    objects::create_session(env, &session_id, session).await?;
    let store = kv::kv(env)?;
    kv::put::<SessionRecord>(
        &store,
        &session_id,
        &SessionStatus {
            consumer_id: consumer.id.clone(),
            revoked: false,
        },
    )
    .await?;
    Ok((access, refresh_token, bound))
}

/// The session's access token, bound to its DPoP key when it has one.
fn sign_access(env: &Env, project: &Project, session: &Session, now: i64) -> Result<String, Error> {
    let key = current_key(env, project)?;
    Ok(key.sign(&access_claims(
        &project.slug,
        &session.consumer_id,
        session.email.as_deref().unwrap_or_default(),
        &session.id,
        now / 1000,
        project.access_token_ttl_s,
        session.jkt.as_deref(),
    )))
}

/// The token answer; `token_type` is `DPoP` for a session bound to the client's key (RFC 9449).
fn token_pair(
    project: &Project,
    access_token: String,
    refresh_token: String,
    bound: bool,
) -> Result<Response, Error> {
    let token_type = if bound { "DPoP" } else { "Bearer" };
    let mut r = json(
        200,
        &json!({
            "access_token": access_token, "refresh_token": refresh_token, "token_type": token_type, "expires_in": project.access_token_ttl_s,
        }),
    )?;
    r.headers_mut().set("cache-control", "no-store")?;
    Ok(r)
}

/// `POST /v1/{project}/auth/refresh`: rotates the refresh token. Presenting a rotated-out token
/// revokes the whole session; two racing refreshes with one token cannot both succeed (the session's
/// Durable Object serialises them, and the loser looks exactly like a reuse).
pub async fn refresh(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
) -> Result<Response, Error> {
    let (db, project, input): (_, _, RefreshBody) =
        project_and_body(&mut req, env, project).await?;
    let (session_id, secret) = parse_refresh(&input.refresh_token)
        .ok_or_else(|| Error::new(Problem::InvalidRefreshToken, "This is not a refresh token."))?;
    // A token nobody issued is refused before any session object is created or read.
    let unknown = || {
        Error::new(
            Problem::InvalidRefreshToken,
            "The refresh token was refused: unknown session.",
        )
    };
    match session_id_kind(encryption_secret(env)?.as_bytes(), &session_id) {
        SessionIdKind::Tagged => {}
        SessionIdKind::Legacy => {
            if kv::get::<SessionRecord>(&kv::kv(env)?, &session_id)
                .await?
                .is_none()
            {
                return Err(unknown());
            }
        }
        SessionIdKind::Forged => return Err(unknown()),
    }
    let now = now_ms();
    let ip = client_ip(&req);
    let (new_token, new_hash) = with_random(|r| new_refresh(&session_id, r))?;
    let proof = crate::identity::dpop_proof(&req, None)?;
    let op = GuardRequest::Rotate {
        now,
        project: project.id.clone(),
        secret,
        new_hash,
        jkt: proof.as_ref().map(|p| p.jkt.clone()),
        client_id: None,
        scope: None,
        proof_jti: proof.map(|p| p.jti),
    };
    match objects::call(env, &Guard::Session { id: &session_id }, &op).await? {
        GuardReply::Rotated { session } if session.project == project.id => {
            let consumer = d1::find_consumer(&db, &project.id, &session.consumer_id)
                .await?
                .ok_or_else(|| {
                    Error::new(
                        Problem::InvalidRefreshToken,
                        "The session's user no longer exists.",
                    )
                })?;
            if !consumer.is_enabled() {
                // The token is already rotated and the client will never see the new one: rather
                // than let its next refresh look like a stolen token's reuse, the session ends.
                sign_out(env, &project, &consumer.id, &session_id).await?;
                return Err(Error::consumer_disabled());
            }
            let access = sign_access(env, &project, &session, now)?;
            let bound = session.jkt.is_some();
            record_event(
                ctx,
                env,
                identity::EventDraft {
                    consumer_id: Some(consumer.id),
                    ip,
                    ..event(&project.id, "refresh")
                },
            );
            token_pair(&project, access, new_token, bound)
        }
        GuardReply::Reused { session } => {
            end_session(env, &project, &session.consumer_id, &session_id).await?;
            record_event(
                ctx,
                env,
                identity::EventDraft {
                    consumer_id: Some(session.consumer_id),
                    ip,
                    ..event(&project.id, "refresh_reuse")
                },
            );
            Err(Error::new(Problem::RefreshTokenReused,
                "This refresh token was already used. The session has been revoked for safety: sign in again."))
        }
        GuardReply::Refused { reason } => Err(Error::new(
            Problem::InvalidRefreshToken,
            format!("The refresh token was refused: {reason}."),
        )),
        _ => Err(Error::new(
            Problem::InvalidRefreshToken,
            "The refresh token does not belong to this project.",
        )),
    }
}

/// Signs a session out: its own object refuses its refresh token from now on, and `end_session`.
pub(super) async fn sign_out(
    env: &Env,
    project: &Project,
    consumer_id: &str,
    session_id: &str,
) -> Result<(), Error> {
    objects::call(
        env,
        &Guard::Session { id: session_id },
        &GuardRequest::Revoke,
    )
    .await?;
    end_session(env, project, consumer_id, session_id).await
}

/// A session signed out or revoked: marked in KV (for the sign-in endpoints) and in the user's
/// counter on every API of the project, so its access tokens fail on the very next request. The
/// counters remember it until those tokens would have expired anyway.
pub(super) async fn end_session(
    env: &Env,
    project: &Project,
    consumer_id: &str,
    session_id: &str,
) -> Result<(), Error> {
    let status = SessionStatus {
        consumer_id: consumer_id.to_string(),
        revoked: true,
    };
    kv::put::<SessionRecord>(&kv::kv(env)?, session_id, &status).await?;
    let until = now_ms() + project.access_token_ttl_s.saturating_mul(1000) + 60_000;
    let change = Change::RevokeSession {
        session_id: session_id.to_string(),
        until,
    };
    change_in_project(env, &project.id, consumer_id, change).await
}

/// The signed-in end user behind a first-party access token (`Authorization: Bearer`), and its
/// session; an OAuth client's token is refused (it cannot use the user's own endpoints nor manage
/// the user's grants).
pub(super) async fn signed_in(
    req: &Request,
    env: &Env,
    project: &Project,
) -> Result<(String, String), Error> {
    let credential = crate::auth::extract_credential(header(req, "authorization").as_deref(), None)
        .map_err(Error::invalid_credential)?
        .ok_or_else(Error::missing_credential)?;
    let claims = verify_sluice_token(env, project, &credential, now_ms())?;
    // An OAuth client's token acts on the project's APIs, not on the user's own session.
    if crate::auth::tokens::oauth_of(&claims).is_some() {
        return Err(Error::new(
            Problem::Forbidden,
            "An OAuth client's token cannot use the user's own sign-in endpoints: sign in to the app itself.",
        ));
    }
    let Some(SluiceToken::Access {
        consumer_id,
        session_id,
        jkt,
    }) = classify(&claims)
    else {
        return Err(Error::invalid_credential(
            "This endpoint takes a signed-in user's access token.",
        ));
    };
    let proof_jti = crate::identity::check_token_binding(req, &credential, jkt.as_deref())?;
    crate::identity::ensure_session_live(env, &session_id, proof_jti).await?;
    Ok((consumer_id, session_id))
}

/// `POST /v1/{project}/auth/logout`: revokes the session of the access token.
pub async fn logout(
    req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
) -> Result<Response, Error> {
    let db = d1::db(env)?;
    let project = d1::project_by_slug(&db, project).await?;
    let (consumer_id, session_id) = signed_in(&req, env, &project).await?;
    sign_out(env, &project, &consumer_id, &session_id).await?;
    record_event(
        ctx,
        env,
        identity::EventDraft {
            consumer_id: Some(consumer_id),
            ip: client_ip(&req),
            ..event(&project.id, "logout")
        },
    );
    no_content()
}

/// `GET /v1/{project}/auth/me`: the signed-in end user.
pub async fn me(req: Request, env: &Env, project: &str) -> Result<Response, Error> {
    let db = d1::db(env)?;
    let project = d1::project_by_slug(&db, project).await?;
    let (consumer_id, _) = signed_in(&req, env, &project).await?;
    let consumer = d1::find_consumer(&db, &project.id, &consumer_id)
        .await?
        .ok_or_else(|| Error::invalid_credential("The signed-in user no longer exists."))?;
    // A disabled user's token is refused here as on the data plane and at refresh.
    if !consumer.is_enabled() {
        return Err(Error::consumer_disabled());
    }
    json(200, &consumer.to_self_json(&project.slug))
}

fn oauth_error(status: u16, error: &'static str, description: &str) -> Error {
    let problem = match error {
        "invalid_client" => Problem::InvalidCredential,
        "unsupported_grant_type" => Problem::UnsupportedGrantType,
        _ => Problem::InvalidRequest,
    };
    let e = Error::new(problem, description)
        .with_status(status)
        .with_field("error", error)
        .with_field("error_description", description);
    if status == 401 {
        e.with_header("WWW-Authenticate", "Bearer")
    } else {
        e
    }
}

/// The first value of field `name` in a decoded form.
pub(super) fn form_field(form: &[(String, String)], name: &str) -> Option<String> {
    form.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

/// A token request's fields: form-encoded (RFC 6749), or a JSON object of strings. A parameter
/// given twice is refused (RFC 6749 §3.1), rather than one of its values silently winning.
pub(super) async fn token_form(req: &mut Request) -> Result<Vec<(String, String)>, Error> {
    let body = read_body(req, AUTH_BODY_LIMIT).await?;
    let fields: Vec<(String, String)> =
        if !header(req, "content-type").is_some_and(|c| c.contains("json")) {
            form_urlencoded::parse(&body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        } else {
            match serde_json::from_slice::<Members>(&body) {
                Ok(Members(m)) => m
                    .into_iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
                    .collect(),
                Err(_) => {
                    return Err(oauth_error(
                        400,
                        "invalid_request",
                        "The body is not a valid JSON object.",
                    ))
                }
            }
        };
    refuse_repeats(&fields)?;
    Ok(fields)
}

/// The first parameter of `fields` that appears twice, as `invalid_request`.
pub(super) fn refuse_repeats(fields: &[(String, String)]) -> Result<(), Error> {
    for (i, (name, _)) in fields.iter().enumerate() {
        if fields[..i].iter().any(|(n, _)| n == name) {
            let shown: String = name.chars().take(40).collect();
            return Err(oauth_error(
                400,
                "invalid_request",
                &format!("The parameter `{shown}` appears more than once."),
            ));
        }
    }
    Ok(())
}

/// A JSON object's members in order, repeats kept (a map would keep only the last of them).
struct Members(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// `POST /v1/{project}/auth/token`: a consumer key (Bearer, or the `client_credentials` grant with
/// `client_secret`) becomes a 30-minute token for that consumer. Errors carry RFC 6749's `error` and
/// `error_description` beside the problem fields. Revoking the key ends every token made from it.
pub async fn token_exchange(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
) -> Result<Response, Error> {
    let db = d1::db(env)?;
    let project = d1::project_by_slug(&db, project).await?;
    let bearer = crate::auth::extract_credential(header(&req, "authorization").as_deref(), None)
        .ok()
        .flatten();
    let form = token_form(&mut req).await?;
    let field = |k: &str| form_field(&form, k);
    if let Some(grant) = field("grant_type") {
        if grant != "client_credentials" {
            return Err(oauth_error(
                400,
                "unsupported_grant_type",
                "Only grant_type=client_credentials is supported.",
            ));
        }
    }
    let secret = field("client_secret").or(bearer).ok_or_else(|| {
        oauth_error(
            401,
            "invalid_client",
            "Send the consumer key as Bearer or as client_secret.",
        )
    })?;
    // A generated key by its hash; an owner's custom key by its project-bound hash.
    let hash = if !secret.starts_with(crate::auth::key::PREFIX)
        && crate::auth::key::is_custom_shaped(&secret)
    {
        crate::auth::key::custom_hash(&project.id, &secret)
    } else {
        ConsumerKey::parse(&secret)
            .map_err(|e| oauth_error(401, "invalid_client", e.describe()))?
            .hash()
    };
    let found = d1::key_by_hash(&db, &project.id, &hash)
        .await?
        .ok_or_else(|| {
            oauth_error(
                401,
                "invalid_client",
                "This consumer key is unknown or has been revoked.",
            )
        })?;
    if found.consumer_status != ConsumerStatus::Enabled {
        return Err(Error::consumer_disabled());
    }
    let now = now_ms();
    let token = current_key(env, &project)?.sign(&exchange_claims(
        &project.slug,
        &found.consumer_id,
        &found.key_id,
        now / 1000,
    ));
    record_event(
        ctx,
        env,
        identity::EventDraft {
            consumer_id: Some(found.consumer_id),
            detail: Some(found.key_id),
            ip: client_ip(&req),
            ..event(&project.id, "token_issued")
        },
    );
    let mut r = json(
        200,
        &json!({"access_token": token, "token_type": "Bearer", "expires_in": EXCHANGE_TTL_S}),
    )?;
    r.headers_mut().set("cache-control", "no-store")?;
    Ok(r)
}

/// `GET /v1/{project}/.well-known/jwks.json`: the public keys of the project's tokens (the current key
/// and, after a rotation, the previous one until its tokens have expired).
pub async fn jwks(env: &Env, project: &str) -> Result<Response, Error> {
    let db = d1::db(env)?;
    let project = d1::project_by_slug(&db, project).await?;
    let keys: Vec<Value> = identity::verification_keys(env, &project, now_ms())?
        .iter()
        .map(|k| k.public_jwk())
        .collect();
    let mut r = json(200, &json!({ "keys": keys }))?;
    r.headers_mut()
        .set("cache-control", "public, max-age=300")?;
    Ok(r)
}

/// `GET /dev/mailbox`: in dev mode only, the mails the gateway would have sent, newest first.
pub async fn dev_mailbox(env: &Env) -> Result<Response, Error> {
    if !dev_mode(env) {
        return Err(Error::not_found("No route for /dev/mailbox."));
    }
    let store = kv::kv(env)?;
    let mut mails = kv::get::<MailboxRecord>(&store, email::MAILBOX_KEY)
        .await?
        .unwrap_or_default();
    mails.reverse();
    json(200, &json!({ "messages": mails }))
}
