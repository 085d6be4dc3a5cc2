//! End-to-end cases for end-user auth: managed sign-in with emailed codes and rotating refresh
//! sessions, BYO JWT against an owner's JWKS, consumer JWT credentials, the key → token exchange,
//! where the credential is read from, IP allowlists, CORS and the auth event log.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jwt_compact::alg::{Es256, Rsa, RsaPrivateKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmSignature};
use rand_chacha::rand_core::SeedableRng;
use reqwest::Method;
use serde_json::{json, Map, Value};
use sluice::auth::jwt::{self as sluice_jwt, SigningKey};

use super::{assert_problem, stream_summary, CaseResult, Ctx, STREAM_LIMIT};
use crate::support::*;

/// How long a mail may take to reach the mock provider.
const MAIL_WAIT: Duration = Duration::from_secs(5);
/// The gateway refetches a JWKS for an unknown `kid` at most this often per API (plus a margin).
const JWKS_REFETCH_GAP: Duration = Duration::from_millis(30_500);
/// The per-email gap between two sign-in codes (plus a margin).
const OTP_SEND_GAP: Duration = Duration::from_millis(30_500);

const BYO_ISSUER: &str = "https://idp.e2e.example";
const BYO_AUDIENCE: &str = "sluice-e2e";

// ------------------------------------------------------------------------------------------------
// Tokens signed by the test (an owner's identity provider, a consumer's own keys)

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `header.payload.signature`, the signature made by `sign` over `header.payload`.
fn compact(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let mut out = B64URL.encode(header.to_string());
    out.push('.');
    out.push_str(&B64URL.encode(claims.to_string()));
    let signature = sign(out.as_bytes());
    out.push('.');
    out.push_str(&B64URL.encode(signature));
    out
}

/// A JWT's header and claims, decoded without verification.
fn jwt_parts(token: &str) -> Result<(Value, Value)> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(format!("not a JWT: {token}").into());
    }
    let decode = |p: &str| -> Result<Value> { Ok(serde_json::from_slice(&B64URL.decode(p)?)?) };
    Ok((decode(parts[0])?, decode(parts[1])?))
}

struct RsaKey {
    private: RsaPrivateKey,
    jwk: Value,
}

/// One 2048-bit RSA key (seeded, so the same every run) for every RS256 token; made once.
fn rsa_key() -> &'static RsaKey {
    static KEY: OnceLock<RsaKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2024);
        let private = RsaPrivateKey::new(&mut rng, 2048).expect("rsa keygen");
        let mut jwk =
            serde_json::to_value(JsonWebKey::from(&private.to_public_key())).expect("jwk");
        jwk["kid"] = "rsa-1".into();
        jwk["alg"] = "RS256".into();
        jwk["use"] = "sig".into();
        RsaKey { private, jwk }
    })
}

/// The RSA key, made off the async workers (key generation takes a moment).
async fn rsa_key_ready() -> Result<&'static RsaKey> {
    Ok(tokio::task::spawn_blocking(rsa_key).await?)
}

fn rs256(kid: &str, claims: &Value) -> String {
    let key = rsa_key();
    compact(
        &json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
        claims,
        |msg| Rsa::rs256().sign(&key.private, msg).as_bytes().to_vec(),
    )
}

type EcKey = <Es256 as Algorithm>::SigningKey;

/// A P-256 key from a fixed scalar, and its public JWK with `kid`.
fn es256_key(kid: &str) -> (EcKey, Value) {
    let sk = <EcKey as jwt_compact::alg::SigningKey<Es256>>::from_slice(&[0x42; 32])
        .expect("p256 scalar");
    let vk = jwt_compact::alg::SigningKey::<Es256>::to_verifying_key(&sk);
    let mut jwk = serde_json::to_value(JsonWebKey::from(&vk)).expect("jwk");
    jwk["kid"] = kid.into();
    (sk, jwk)
}

fn es256(key: &EcKey, kid: &str, claims: &Value) -> String {
    compact(
        &json!({"alg": "ES256", "typ": "JWT", "kid": kid}),
        claims,
        |msg| Es256.sign(key, msg).as_bytes().to_vec(),
    )
}

fn ed_key(seed: u8, kid: &str) -> SigningKey {
    SigningKey::from_seed([seed; 32], kid.to_string())
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    sluice_jwt::sign_hs256(secret, None, &obj(claims.clone()))
}

/// Claims an owner's identity provider would issue for `user` (at `user.id`), valid for 10 minutes.
fn byo_claims(user: &str) -> Value {
    let now = now_s();
    json!({"iss": BYO_ISSUER, "aud": BYO_AUDIENCE, "sub": format!("sub-{user}"), "user": {"id": user}, "iat": now, "exp": now + 600})
}

// ------------------------------------------------------------------------------------------------
// Helpers

/// A POST with a JSON body to a gateway path, optionally with a Bearer credential.
async fn post_json(c: &Ctx, path: &str, body: Value, bearer: Option<&str>) -> Result<Reply> {
    let mut req = c
        .http
        .post(format!("{}{path}", c.base))
        .json(&body)
        .timeout(STREAM_LIMIT);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    Reply::read(req.send().await?).await
}

async fn otp_start(c: &Ctx, project: &str, email: &str) -> Result<Reply> {
    post_json(
        c,
        &format!("/v1/{project}/auth/otp/start"),
        json!({"email": email}),
        None,
    )
    .await
}

async fn otp_verify(c: &Ctx, project: &str, email: &str, code: &str) -> Result<Reply> {
    post_json(
        c,
        &format!("/v1/{project}/auth/otp/verify"),
        json!({"email": email, "code": code}),
        None,
    )
    .await
}

async fn refresh(c: &Ctx, project: &str, refresh_token: &str) -> Result<Reply> {
    post_json(
        c,
        &format!("/v1/{project}/auth/refresh"),
        json!({"refresh_token": refresh_token}),
        None,
    )
    .await
}

async fn me(c: &Ctx, project: &str, token: &str) -> Result<Reply> {
    Reply::read(
        c.http
            .get(format!("{}/v1/{project}/auth/me", c.base))
            .bearer_auth(token)
            .timeout(STREAM_LIMIT)
            .send()
            .await?,
    )
    .await
}

/// Asks for a code for `email` and returns it, read from the mail the gateway sent.
async fn request_code(c: &Ctx, project: &str, email: &str) -> Result<String> {
    let seen = c.mail.mails_to(email).len();
    let started = otp_start(c, project, email).await?;
    expect_status(&started, 202, &format!("otp/start for {email}"))?;
    c.mail.wait_for_code(email, seen, MAIL_WAIT).await
}

/// An access and refresh token pair.
#[derive(Debug, Clone)]
struct Tokens {
    access: String,
    refresh: String,
}

impl Tokens {
    fn from_reply(r: &Reply, what: &str) -> Result<Tokens> {
        expect_status(r, 200, what)?;
        let v = r.json();
        Ok(Tokens {
            access: str_field(&v, "access_token")?,
            refresh: str_field(&v, "refresh_token")?,
        })
    }
}

/// Signs `email` in with a code from the mail.
async fn sign_in(c: &Ctx, project: &str, email: &str) -> Result<Tokens> {
    let code = request_code(c, project, email).await?;
    Tokens::from_reply(
        &otp_verify(c, project, email, &code).await?,
        &format!("sign in {email}"),
    )
}

/// A code that is not `code`.
fn wrong_code(code: &str) -> String {
    let n: u32 = code.parse().unwrap_or(0);
    format!("{:06}", (n + 1) % 1_000_000)
}

/// PUT .../auth-mode with `body`; returns what came back.
async fn put_auth_mode(c: &Ctx, api_id: &str, body: Value) -> Result<Reply> {
    c.admin
        .call(
            Method::PUT,
            &format!("/api/v1/gateway/apis/{api_id}/auth-mode"),
            Some(body),
        )
        .await
}

/// Switches the API to byo-jwt on `jwks_url`, users named by `claim`, with the test issuer/audience.
async fn use_byo_jwt(c: &Ctx, api_id: &str, jwks_url: &str, claim: &str) -> Result<Value> {
    let r = put_auth_mode(c, api_id, json!({"auth_mode": "byo-jwt", "byo_jwt_config": {
        "jwks_url": jwks_url, "user_id_claim": claim, "issuer": BYO_ISSUER, "audience": BYO_AUDIENCE,
    }})).await?;
    expect_status(&r, 200, "switch to byo-jwt")?;
    Ok(r.json())
}

/// A tenant on the mock `ok` scenario whose API is in managed mode.
async fn managed_tenant(c: &Ctx, slug: &str) -> Result<Tenant> {
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let r = put_auth_mode(c, &t.api_id, json!({"auth_mode": "managed"})).await?;
    expect_status(&r, 200, "switch to managed")?;
    Ok(t)
}

/// A non-streamed chat call with `credential` as Bearer.
async fn chat_as(c: &Ctx, t: &Tenant, credential: &str) -> Result<Reply> {
    Reply::read(
        c.chat(t, Some((credential, KeyHeader::Bearer)))
            .json(&chat_body(None, "hi", false))
            .send()
            .await?,
    )
    .await
}

/// Chat with `credential` and expect 200.
async fn chat_200(c: &Ctx, t: &Tenant, credential: &str, what: &str) -> Result<Reply> {
    let r = chat_as(c, t, credential).await?;
    expect_status(&r, 200, what)?;
    assert_eq!(
        r.json()["object"],
        "chat.completion",
        "{what}: {}",
        r.describe()
    );
    Ok(r)
}

/// Chat with `credential` and expect a 401 problem of `kind`.
async fn chat_401(c: &Ctx, t: &Tenant, credential: &str, kind: &str, what: &str) -> Result<Reply> {
    let r = chat_as(c, t, credential).await?;
    assert_eq!(r.status, 401, "{what}: {}", r.describe());
    assert_problem(&r, 401, kind);
    Ok(r)
}

/// The API's usage records, polled until `ready` holds (they are flushed to D1 shortly after).
async fn usage_records_until(
    c: &Ctx,
    t: &Tenant,
    ready: impl Fn(&[Value]) -> bool,
) -> Result<Vec<Value>> {
    let list = |v: &Value| v["records"].as_array().cloned().unwrap_or_default();
    let v = c
        .admin_get_until(&format!("/api/v1/gateway/apis/{}/usage", t.api_id), |v| {
            ready(&list(v))
        })
        .await?;
    Ok(list(&v))
}

/// The project's auth events (`query` like `type=sign_in`), polled until `ready` holds (events are
/// written after the response).
async fn auth_events_until(
    c: &Ctx,
    project: &str,
    query: &str,
    ready: impl Fn(&[Value]) -> bool,
) -> Result<Vec<Value>> {
    let list = |v: &Value| v["events"].as_array().cloned().unwrap_or_default();
    let v = c
        .admin_get_until(
            &format!("/api/v1/projects/{project}/auth-events?{query}"),
            |v| ready(&list(v)),
        )
        .await?;
    Ok(list(&v))
}

fn event_types(events: &[Value]) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_string))
        .collect()
}

/// No upstream request of `slug` carried `secret` anywhere (headers, path, body).
fn assert_never_upstream(c: &Ctx, slug: &str, secret: &str, what: &str) {
    for up in c.upstream_requests(slug) {
        assert!(
            !up.path.contains(secret),
            "{what} leaked into the upstream URL: {}",
            up.path
        );
        for (name, value) in &up.headers {
            assert!(
                !value.contains(secret),
                "{what} leaked upstream in header {name}: {value}"
            );
        }
        assert!(
            !String::from_utf8_lossy(&up.body).contains(secret),
            "{what} leaked into the upstream body"
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Managed mode: emailed codes, sessions

pub async fn managed_sign_in_with_an_emailed_code(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-managed";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    // `aerostack` is the old name of managed mode.
    let switched = put_auth_mode(&c, &t.api_id, json!({"auth_mode": "aerostack"})).await?;
    expect_status(&switched, 200, "auth-mode aerostack")?;
    assert_eq!(switched.json()["auth_mode"], "managed", "{}", switched.text);
    assert_eq!(
        c.admin.get_api(&t.api_id).await?.json()["auth_mode"],
        "managed"
    );

    // A never-seen address gets 202 and a mail with a 6-digit code, to the normalised address.
    let typed = "  New.User+E2E@Example.COM ";
    let email = "new.user+e2e@example.com";
    let started = otp_start(&c, slug, typed).await?;
    expect_status(&started, 202, "otp/start")?;
    let mail = c.mail.wait_for_mail(email, 0, MAIL_WAIT).await?;
    assert_eq!(mail.to, email, "the mail goes to the normalised address");
    assert_eq!(mail.path, "/emails");
    assert_eq!(
        mail.authorization.as_deref(),
        Some("Bearer test-mail-key"),
        "the provider key is sent"
    );
    assert!(
        !mail.from.is_empty() && !mail.subject.is_empty(),
        "{mail:?}"
    );
    let code = mail
        .code()
        .ok_or_else(|| format!("no code in {:?}", mail.text))?;
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "{code}"
    );
    assert!(
        mail.html.contains(&code),
        "the HTML part carries the code too: {}",
        mail.html
    );

    let wrong = otp_verify(&c, slug, email, &wrong_code(&code)).await?;
    assert_problem(&wrong, 401, "invalid-code");
    assert_eq!(wrong.json()["attempts_left"], 4, "{}", wrong.describe());

    let ok = otp_verify(&c, slug, typed, &code).await?;
    expect_status(&ok, 200, "otp/verify with the right code")?;
    let v = ok.json();
    assert_eq!(v["token_type"], "Bearer", "{v}");
    assert_eq!(v["expires_in"], 900, "{v}");
    assert_eq!(ok.header("cache-control"), Some("no-store"));
    let tokens = Tokens::from_reply(&ok, "sign in")?;
    assert!(
        tokens.refresh.starts_with("srt_"),
        "refresh token shape: {}",
        tokens.refresh
    );

    // The access token is an EdDSA JWT, signed with a key the project's JWKS publishes.
    let (header, claims) = jwt_parts(&tokens.access)?;
    assert_eq!(header["alg"], "EdDSA", "{header}");
    let kid = header["kid"].as_str().ok_or("no kid")?;
    assert!(kid.starts_with(&format!("{slug}-")), "kid {kid}");
    let jwks = Reply::read(
        c.http
            .get(format!("{}/v1/{slug}/.well-known/jwks.json", c.base))
            .send()
            .await?,
    )
    .await?;
    expect_status(&jwks, 200, "project JWKS")?;
    let published = jwks.json();
    let kids: Vec<&str> = published["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert!(
        kids.contains(&kid),
        "kid {kid} not in the JWKS {}",
        jwks.text
    );
    let keys = sluice_jwt::parse_jwks(&jwks.text).map_err(|e| e.to_string())?;
    let mut policy = sluice_jwt::Policy::default_asymmetric();
    policy.issuer = Some(format!("sluice:{slug}"));
    policy.audience = Some(slug.into());
    sluice_jwt::verify(&tokens.access, &keys, &policy, now_s())
        .map_err(|e| format!("the access token does not verify against the JWKS: {e}"))?;
    assert_eq!(claims["iss"], format!("sluice:{slug}"), "{claims}");
    assert_eq!(claims["aud"], slug, "{claims}");
    assert_eq!(claims["email"], email, "{claims}");
    let sub = claims["sub"].as_str().ok_or("no sub")?.to_string();
    let (iat, exp) = (
        claims["iat"].as_i64().ok_or("no iat")?,
        claims["exp"].as_i64().ok_or("no exp")?,
    );
    assert_eq!(exp - iat, 900, "{claims}");
    assert!((iat - now_s()).abs() < 60, "iat is now: {claims}");

    let who = me(&c, slug, &tokens.access).await?;
    expect_status(&who, 200, "auth/me")?;
    let user = who.json();
    assert_eq!(user["id"], sub.as_str(), "{user}");
    assert_eq!(user["kind"], "user", "{user}");
    assert_eq!(user["email"], email, "{user}");
    assert_eq!(user["status"], "enabled", "{user}");
    let anonymous = Reply::read(
        c.http
            .get(format!("{}/v1/{slug}/auth/me", c.base))
            .send()
            .await?,
    )
    .await?;
    assert_problem(&anonymous, 401, "missing-credential");

    // The signed-in user streams a chat; the upstream sees the provider key, never the token.
    let s = send_and_stream(
        c.chat(&t, Some((&tokens.access, KeyHeader::Bearer)))
            .json(&chat_body(None, "hello", true)),
        STREAM_LIMIT,
    )
    .await?;
    let summary = stream_summary(&s);
    assert_eq!(s.status, 200, "{summary}");
    assert_eq!(s.error, None, "{summary}");
    assert_eq!(s.text(), mock_text(3), "{summary}");
    assert!(s.events.last().is_some_and(SseEvent::is_done), "{summary}");
    let sent = c.upstream_requests(slug);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer sk-upstream-{slug}").as_str())
    );
    assert_never_upstream(&c, slug, &tokens.access, "the access token");
    let records = usage_records_until(&c, &t, |r| !r.is_empty()).await?;
    assert_eq!(
        records[0]["consumer_id"],
        sub.as_str(),
        "usage is the user's: {}",
        records[0]
    );
    assert!(
        records[0]["session_id"]
            .as_str()
            .is_some_and(|s| s.starts_with("ses_")),
        "{}",
        records[0]
    );

    // A code is single use.
    let again = otp_verify(&c, slug, email, &code).await?;
    assert_problem(&again, 401, "invalid-code");
    Ok(())
}

pub async fn refresh_rotates_and_reuse_revokes_the_session(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-refresh";
    let t = managed_tenant(&c, slug).await?;
    let first = sign_in(&c, slug, "rotate@e2e.example").await?;
    chat_200(&c, &t, &first.access, "first access token").await?;

    let rotated = refresh(&c, slug, &first.refresh).await?;
    let second = Tokens::from_reply(&rotated, "refresh")?;
    assert_eq!(rotated.json()["token_type"], "Bearer");
    assert_ne!(second.refresh, first.refresh, "a new refresh token");
    // (An access token is deterministic: within the same second it may equal the previous one.)
    assert_eq!(
        jwt_parts(&second.access)?.1["sid"],
        jwt_parts(&first.access)?.1["sid"],
        "same session"
    );
    chat_200(&c, &t, &second.access, "the refreshed access token").await?;

    // The rotated-out token again: reuse. The whole session ends.
    let reused = refresh(&c, slug, &first.refresh).await?;
    assert_problem(&reused, 401, "refresh-token-reused");
    let after = refresh(&c, slug, &second.refresh).await?;
    assert_eq!(
        after.status,
        401,
        "the newest refresh token dies with the session: {}",
        after.describe()
    );
    chat_401(
        &c,
        &t,
        &second.access,
        "session-revoked",
        "the newest access token after a reuse",
    )
    .await?;
    chat_401(
        &c,
        &t,
        &first.access,
        "session-revoked",
        "the first access token after a reuse",
    )
    .await?;
    let gone = me(&c, slug, &second.access).await?;
    assert_problem(&gone, 401, "session-revoked");

    let bogus = refresh(&c, slug, "srt_not-a-token").await?;
    assert_problem(&bogus, 401, "invalid-refresh-token");

    // A refresh token shown at another project is refused there and leaves its session untouched.
    let other = format!("{slug}-other");
    managed_tenant(&c, &other).await?;
    let wanderer = sign_in(&c, slug, "wander@e2e.example").await?;
    let elsewhere = refresh(&c, &other, &wanderer.refresh).await?;
    assert_problem(&elsewhere, 401, "invalid-refresh-token");
    let home = refresh(&c, slug, &wanderer.refresh).await?;
    expect_status(
        &home,
        200,
        "the same refresh token at its own project still rotates",
    )?;

    // Logout ends a fresh session at once.
    let fresh = sign_in(&c, slug, "logout@e2e.example").await?;
    chat_200(&c, &t, &fresh.access, "fresh session").await?;
    let out = post_json(
        &c,
        &format!("/v1/{slug}/auth/logout"),
        json!({}),
        Some(&fresh.access),
    )
    .await?;
    expect_status(&out, 204, "logout")?;
    chat_401(&c, &t, &fresh.access, "session-revoked", "after logout").await?;
    let me_after = me(&c, slug, &fresh.access).await?;
    assert_problem(&me_after, 401, "session-revoked");
    let refresh_after = refresh(&c, slug, &fresh.refresh).await?;
    assert_eq!(
        refresh_after.status,
        401,
        "refresh after logout: {}",
        refresh_after.describe()
    );
    let anonymous_logout =
        post_json(&c, &format!("/v1/{slug}/auth/logout"), json!({}), None).await?;
    assert_problem(&anonymous_logout, 401, "missing-credential");
    // Only the calls made with a live session reached the upstream.
    assert_eq!(c.upstream_requests(slug).len(), 3);
    Ok(())
}

pub async fn racing_refreshes_with_one_token_do_not_both_succeed(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-refresh-race";
    managed_tenant(&c, slug).await?;
    for round in 0..3 {
        let tokens = sign_in(&c, slug, &format!("racer{round}@e2e.example")).await?;
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let req = c
                .http
                .post(format!("{}/v1/{slug}/auth/refresh", c.base))
                .json(&json!({"refresh_token": tokens.refresh}))
                .timeout(STREAM_LIMIT);
            tasks.push(tokio::spawn(
                async move { Reply::read(req.send().await?).await },
            ));
        }
        let mut replies = Vec::new();
        for task in tasks {
            replies.push(task.await??);
        }
        let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
        let winners = statuses.iter().filter(|s| **s == 200).count();
        assert!(
            winners <= 1,
            "round {round}: more than one racing refresh succeeded: {statuses:?}"
        );
        for r in replies.iter().filter(|r| r.status != 200) {
            assert_eq!(r.status, 401, "round {round}: {}", r.describe());
            let kind = r.problem_type().unwrap_or_default();
            assert!(
                kind == "refresh-token-reused" || kind == "invalid-refresh-token",
                "round {round}: {}",
                r.describe()
            );
        }
    }
    Ok(())
}

pub async fn otp_codes_lock_after_five_wrong_tries_and_are_throttled(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-otp-limits";
    managed_tenant(&c, slug).await?;
    let locked = "locked@e2e.example";
    let code = request_code(&c, slug, locked).await?;
    // No later than the gateway's record of the send: the gap is counted from here.
    let first_sent = Instant::now();
    let wrong = wrong_code(&code);
    for left in [4, 3, 2, 1, 0] {
        let r = otp_verify(&c, slug, locked, &wrong).await?;
        assert_problem(&r, 401, "invalid-code");
        assert_eq!(r.json()["attempts_left"], left, "{}", r.describe());
    }
    let refused = otp_verify(&c, slug, locked, &code).await?;
    assert_problem(&refused, 401, "code-locked");

    // A second code for one address within 30 s is refused with Retry-After.
    let other = "throttled@e2e.example";
    let other_code = request_code(&c, slug, other).await?;
    let seen = c.mail.mails_to(other).len();
    let throttled = otp_start(&c, slug, other).await?;
    assert_problem(&throttled, 429, "rate-limited");
    let retry: u64 = throttled
        .header("retry-after")
        .ok_or("Retry-After missing")?
        .parse()?;
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        throttled.json()["retry_after"],
        retry,
        "{}",
        throttled.describe()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.mail.mails_to(other).len(),
        seen,
        "no mail for a throttled request"
    );
    // The throttled request did not replace the pending code.
    Tokens::from_reply(
        &otp_verify(&c, slug, other, &other_code).await?,
        "the first code after a throttled resend",
    )?;

    // Malformed input is 400, before any code is sent.
    for bad in [
        json!({"email": "not-an-email"}),
        json!({"email": "a@b"}),
        json!({"email": ""}),
        json!({}),
        json!({"email": "x@y.example", "extra": 1}),
    ] {
        let r = post_json(&c, &format!("/v1/{slug}/auth/otp/start"), bad.clone(), None).await?;
        assert_eq!(r.status, 400, "{bad}: {}", r.describe());
        assert_problem(&r, 400, "invalid-request");
    }
    for bad_code in ["12345", "abcdef", "1234567"] {
        let r = otp_verify(&c, slug, other, bad_code).await?;
        assert_problem(&r, 400, "invalid-request");
    }
    let unknown = otp_start(&c, "auth-no-such-project", other).await?;
    assert_problem(&unknown, 404, "not-found");

    // After the gap, a new code revives the locked-out address.
    let wait = OTP_SEND_GAP.saturating_sub(first_sent.elapsed());
    tokio::time::sleep(wait).await;
    let fresh = request_code(&c, slug, locked).await?;
    Tokens::from_reply(
        &otp_verify(&c, slug, locked, &fresh).await?,
        "a new code after the lockout",
    )?;
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// BYO JWT

pub async fn byo_jwt_accepts_rs256_es256_eddsa_and_refuses_bad_tokens(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-byo";
    let rsa = rsa_key_ready().await?;
    let (ec, ec_jwk) = es256_key("ec-1");
    let ed = ed_key(11, "ed-1");
    let idp = JwksServer::start(vec![rsa.jwk.clone(), ec_jwk, ed.public_jwk()]).await?;
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;

    // Configurations the gateway refuses, leaving the API as it was.
    let bad_configs = [
        json!({"auth_mode": "byo-jwt"}),
        json!({"auth_mode": "byo-jwt", "byo_jwt_config": {"user_id_claim": "sub"}}),
        json!({"auth_mode": "byo-jwt", "byo_jwt_config": {"jwks_url": "ftp://127.0.0.1/jwks.json"}}),
        json!({"auth_mode": "byo-jwt", "byo_jwt_config": {"jwks_url": ""}}),
        json!({"auth_mode": "byo-jwt", "byo_jwt_config": {"jwks_url": idp.url(), "user_id_claim": "user..id"}}),
        json!({"auth_mode": "byo-jwt", "byo_jwt_config": {"jwks_url": idp.url(), "algorithms": ["HS256"]}}),
        json!({"auth_mode": "password"}),
    ];
    for bad in bad_configs {
        let r = put_auth_mode(&c, &t.api_id, bad.clone()).await?;
        assert_eq!(r.status, 400, "{bad}: {}", r.describe());
    }
    let patch_byo = c
        .admin
        .call(
            Method::PATCH,
            &format!("/api/v1/gateway/apis/{}", t.api_id),
            Some(json!({"auth_mode": "byo-jwt"})),
        )
        .await?;
    assert_eq!(
        patch_byo.status,
        400,
        "byo-jwt needs its config, so not through PATCH: {}",
        patch_byo.describe()
    );
    assert_eq!(
        c.admin.get_api(&t.api_id).await?.json()["auth_mode"],
        "consumer-key-only"
    );
    assert_eq!(idp.hits(), 0, "configuring fetches nothing");

    let api = use_byo_jwt(&c, &t.api_id, &idp.url(), "user.id").await?;
    assert_eq!(api["auth_mode"], "byo-jwt", "{api}");
    assert_eq!(
        api["byo_jwt_config"]["jwks_url"],
        idp.url().as_str(),
        "{api}"
    );
    assert_eq!(api["byo_jwt_config"]["user_id_claim"], "user.id", "{api}");

    // Each algorithm, each user named by the `user.id` claim.
    let rs_token = rs256("rsa-1", &byo_claims("byo-rs"));
    chat_200(&c, &t, &rs_token, "RS256").await?;
    chat_200(&c, &t, &es256(&ec, "ec-1", &byo_claims("byo-es")), "ES256").await?;
    chat_200(&c, &t, &ed.sign(&obj(byo_claims("byo-ed"))), "EdDSA").await?;
    let numeric =
        json!({"iss": BYO_ISSUER, "aud": BYO_AUDIENCE, "user": {"id": 4711}, "exp": now_s() + 600});
    chat_200(&c, &t, &ed.sign(&obj(numeric)), "an integer user id").await?;
    let mine = Reply::read(
        c.http
            .get(format!("{}/v1/{slug}/chat/usage", c.base))
            .bearer_auth(&rs_token)
            .send()
            .await?,
    )
    .await?;
    expect_status(&mine, 200, "consumer usage with a BYO token")?;
    assert_eq!(mine.json()["consumer_id"], "byo-rs", "{}", mine.text);
    let records = usage_records_until(&c, &t, |r| r.len() >= 4).await?;
    let users: BTreeSet<String> = records
        .iter()
        .filter_map(|r| r["consumer_id"].as_str().map(str::to_string))
        .collect();
    let expected: BTreeSet<String> = ["byo-rs", "byo-es", "byo-ed", "4711"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(users, expected, "usage is filed under the claim values");
    assert!(
        records.iter().all(|r| r["key_id"].is_null()),
        "no key behind a BYO token: {records:?}"
    );

    // Refused: expired, wrong audience or issuer, `none`, HS256 keyed with the public key, no user
    // claim, a signature by another key under a known kid.
    let mut expired = byo_claims("byo-ed");
    expired["exp"] = json!(now_s() - 3600);
    chat_401(&c, &t, &ed.sign(&obj(expired)), "token-expired", "expired").await?;
    let mut wrong_aud = byo_claims("byo-ed");
    wrong_aud["aud"] = json!("someone-else");
    chat_401(
        &c,
        &t,
        &ed.sign(&obj(wrong_aud)),
        "invalid-credential",
        "wrong audience",
    )
    .await?;
    let mut wrong_iss = byo_claims("byo-ed");
    wrong_iss["iss"] = json!("https://evil.example");
    chat_401(
        &c,
        &t,
        &ed.sign(&obj(wrong_iss)),
        "invalid-credential",
        "wrong issuer",
    )
    .await?;
    let unsigned = compact(
        &json!({"alg": "none", "typ": "JWT", "kid": "ed-1"}),
        &byo_claims("byo-ed"),
        |_| Vec::new(),
    );
    chat_401(&c, &t, &unsigned, "invalid-credential", "alg none").await?;
    let unsigned_kidless = compact(&json!({"alg": "none"}), &byo_claims("byo-ed"), |_| {
        Vec::new()
    });
    chat_401(
        &c,
        &t,
        &unsigned_kidless,
        "invalid-credential",
        "alg none without kid",
    )
    .await?;
    let confused = sluice_jwt::sign_hs256(
        rsa.jwk.to_string().as_bytes(),
        Some("rsa-1"),
        &obj(byo_claims("byo-rs")),
    );
    chat_401(
        &c,
        &t,
        &confused,
        "invalid-credential",
        "HS256 keyed with the RSA public JWK",
    )
    .await?;
    let mut no_user = byo_claims("x");
    no_user.as_object_mut().ok_or("claims")?.remove("user");
    chat_401(
        &c,
        &t,
        &ed.sign(&obj(no_user)),
        "invalid-credential",
        "no user.id claim",
    )
    .await?;
    let forged = ed_key(12, "ed-1").sign(&obj(byo_claims("byo-ed")));
    chat_401(
        &c,
        &t,
        &forged,
        "invalid-credential",
        "signed by another key under a known kid",
    )
    .await?;
    let mut tampered: Vec<String> = rs_token.split('.').map(str::to_string).collect();
    tampered[1] = B64URL.encode(byo_claims("admin").to_string());
    chat_401(
        &c,
        &t,
        &tampered.join("."),
        "invalid-credential",
        "payload swapped under an RS256 signature",
    )
    .await?;

    // Only the accepted tokens reached the upstream, none of them carried there; one JWKS fetch.
    assert_eq!(c.upstream_requests(slug).len(), 4);
    assert_never_upstream(&c, slug, &rs_token, "the BYO token");
    assert_eq!(idp.hits(), 1, "the JWKS was fetched once and then cached");
    Ok(())
}

pub async fn byo_jwks_rotation_refetches_at_most_every_30s_and_outlives_an_outage(
    c: Arc<Ctx>,
) -> CaseResult {
    let slug = "auth-byo-rotation";
    let ed1 = ed_key(21, "ed-1");
    let ed2 = ed_key(22, "ed-2");
    let made_up = ed_key(23, "ed-3");
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let upstream = json!({"base_url": c.mock.base_url(&format!("ok/tag/{slug}")), "default_model": "mock-default"});
    let second_api = c.admin.create_api(slug, "chat2", upstream.clone()).await?;
    let third_api = c.admin.create_api(slug, "chat3", upstream).await?;
    let (rotating, outage, down) = (
        JwksServer::start(vec![ed1.public_jwk()]).await?,
        JwksServer::start(vec![ed1.public_jwk()]).await?,
        JwksServer::start(vec![ed1.public_jwk()]).await?,
    );
    let t2 = Tenant {
        api: "chat2".into(),
        api_id: str_field(&second_api, "id")?,
        ..t.clone()
    };
    let t3 = Tenant {
        api: "chat3".into(),
        api_id: str_field(&third_api, "id")?,
        ..t.clone()
    };
    use_byo_jwt(&c, &t.api_id, &rotating.url(), "sub").await?;
    use_byo_jwt(&c, &t2.api_id, &outage.url(), "sub").await?;
    use_byo_jwt(&c, &t3.api_id, &down.url(), "sub").await?;
    let token = |key: &SigningKey, user: &str| {
        let now = now_s();
        key.sign(&obj(
            json!({"iss": BYO_ISSUER, "aud": BYO_AUDIENCE, "sub": user, "exp": now + 600}),
        ))
    };

    // A JWKS that cannot be fetched, with nothing cached: 503, not 401; served once it is back.
    down.set_failing(true);
    let unavailable = chat_as(&c, &t3, &token(&ed1, "u-down")).await?;
    assert_problem(&unavailable, 503, "jwks-unavailable");
    assert!(
        unavailable.header("retry-after").is_some(),
        "{:?}",
        unavailable.headers
    );
    assert_eq!(down.hits(), 1);
    down.set_failing(false);
    chat_200(&c, &t3, &token(&ed1, "u-down"), "the JWKS is back").await?;

    // First use of each API fetches its JWKS.
    chat_200(&c, &t, &token(&ed1, "u-1"), "rotating API, first token").await?;
    chat_200(&c, &t2, &token(&ed1, "u-1"), "outage API, first token").await?;
    let fetched = Instant::now();
    assert_eq!((rotating.hits(), outage.hits()), (1, 1), "one fetch each");

    // The owner rotates in ed-2. Within 30 s of the fetch, its tokens cannot trigger a refetch.
    rotating.add_key(ed2.public_jwk());
    let early = chat_as(&c, &t, &token(&ed2, "u-2")).await?;
    assert_problem(&early, 401, "invalid-credential");
    assert!(
        early.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("ed-2")),
        "names the unknown kid: {}",
        early.describe()
    );
    chat_401(
        &c,
        &t,
        &token(&made_up, "u-3"),
        "invalid-credential",
        "a made-up kid, early",
    )
    .await?;
    assert_eq!(rotating.hits(), 1, "no refetch within 30 s of the fetch");
    chat_200(&c, &t, &token(&ed1, "u-1"), "the cached kid").await?;

    // The other owner's endpoint goes down.
    outage.set_failing(true);

    tokio::time::sleep(JWKS_REFETCH_GAP.saturating_sub(fetched.elapsed())).await;

    // After the gap, the unknown kid triggers one refetch, which finds ed-2.
    chat_200(
        &c,
        &t,
        &token(&ed2, "u-2"),
        "the rotated-in kid after a refetch",
    )
    .await?;
    assert_eq!(rotating.hits(), 2, "one refetch for the new kid");
    chat_401(
        &c,
        &t,
        &token(&made_up, "u-3"),
        "invalid-credential",
        "a made-up kid right after the refetch",
    )
    .await?;
    chat_401(
        &c,
        &t,
        &ed_key(24, "ed-4").sign(&obj(
            json!({"iss": BYO_ISSUER, "aud": BYO_AUDIENCE, "sub": "u", "exp": now_s() + 60}),
        )),
        "invalid-credential",
        "another made-up kid",
    )
    .await?;
    assert_eq!(
        rotating.hits(),
        2,
        "made-up kids within 30 s of the refetch fetch nothing"
    );
    chat_200(
        &c,
        &t,
        &token(&ed1, "u-1"),
        "the old kid after the rotation",
    )
    .await?;
    chat_200(&c, &t, &token(&ed2, "u-2"), "the new kid again").await?;
    assert_eq!(rotating.hits(), 2);

    // While its endpoint is down, the other API keeps serving its cached keys: an unknown kid tries
    // one refetch (which fails) and is refused; the cached kid still works; no second attempt.
    chat_401(
        &c,
        &t2,
        &token(&ed2, "u-2"),
        "invalid-credential",
        "unknown kid while the JWKS is down",
    )
    .await?;
    assert_eq!(
        outage.hits(),
        2,
        "one refetch attempt against the failing endpoint"
    );
    chat_200(
        &c,
        &t2,
        &token(&ed1, "u-1"),
        "cached kid while the JWKS is down",
    )
    .await?;
    chat_401(
        &c,
        &t2,
        &token(&made_up, "u-3"),
        "invalid-credential",
        "another unknown kid while down",
    )
    .await?;
    assert_eq!(outage.hits(), 2, "a failing endpoint is not hammered");
    Ok(())
}

pub async fn mode_switches_keep_consumer_keys_working(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-mode-switch";
    let ed = ed_key(31, "ed-1");
    let idp = JwksServer::start(vec![ed.public_jwk()]).await?;
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    chat_200(&c, &t, &t.secret, "key in consumer-key-only mode").await?;

    let managed = put_auth_mode(&c, &t.api_id, json!({"auth_mode": "managed"})).await?;
    expect_status(&managed, 200, "to managed")?;
    chat_200(&c, &t, &t.secret, "key in managed mode").await?;
    let user = sign_in(&c, slug, "switcher@e2e.example").await?;
    chat_200(&c, &t, &user.access, "user token in managed mode").await?;

    let byo = use_byo_jwt(&c, &t.api_id, &idp.url(), "sub").await?;
    assert_eq!(byo["auth_mode"], "byo-jwt");
    chat_200(&c, &t, &t.secret, "key in byo-jwt mode").await?;
    let owner_token = ed.sign(&obj(
        json!({"iss": BYO_ISSUER, "aud": BYO_AUDIENCE, "sub": "idp-user", "exp": now_s() + 600}),
    ));
    chat_200(&c, &t, &owner_token, "the owner's JWT in byo-jwt mode").await?;
    let mismatch = chat_as(&c, &t, &user.access).await?;
    assert_problem(&mismatch, 403, "auth-mode-mismatch");
    let models = Reply::read(
        c.http
            .get(format!("{}/v1/{slug}/chat/models", c.base))
            .bearer_auth(&user.access)
            .send()
            .await?,
    )
    .await?;
    assert_problem(&models, 403, "auth-mode-mismatch");

    let back = put_auth_mode(&c, &t.api_id, json!({"auth_mode": "consumer-key-only"})).await?;
    expect_status(&back, 200, "back to consumer-key-only")?;
    chat_200(&c, &t, &t.secret, "key after switching back").await?;
    assert_problem(
        &chat_as(&c, &t, &user.access).await?,
        403,
        "auth-mode-mismatch",
    );
    chat_401(
        &c,
        &t,
        &owner_token,
        "invalid-credential",
        "the owner's JWT outside byo-jwt mode",
    )
    .await?;

    // A key of another project is refused in every mode.
    let stranger = c
        .tenant_on_mock("auth-mode-switch-other", "ok", json!({}))
        .await?;
    chat_401(
        &c,
        &t,
        &stranger.secret,
        "invalid-credential",
        "another project's key",
    )
    .await?;
    assert_eq!(
        c.upstream_requests(slug).len(),
        6,
        "every accepted call went upstream, no refused one"
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Key → token exchange

pub async fn consumer_key_exchanges_for_a_30_minute_token(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-exchange";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let url = format!("{}/v1/{slug}/auth/token", c.base);

    let bearer = Reply::read(c.http.post(&url).bearer_auth(&t.secret).send().await?).await?;
    expect_status(&bearer, 200, "exchange with Bearer")?;
    let v = bearer.json();
    assert_eq!(v["token_type"], "Bearer", "{v}");
    assert_eq!(v["expires_in"], 1800, "{v}");
    assert_eq!(bearer.header("cache-control"), Some("no-store"));
    let token = str_field(&v, "access_token")?;
    let (header, claims) = jwt_parts(&token)?;
    assert!(
        header["kid"]
            .as_str()
            .is_some_and(|k| k.starts_with(&format!("{slug}-"))),
        "{header}"
    );
    assert_eq!(claims["sub"], t.consumer_id.as_str(), "{claims}");
    assert_eq!(claims["key_id"], t.key_id.as_str(), "{claims}");
    assert_eq!(
        claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0),
        1800,
        "{claims}"
    );
    assert!(
        !token.contains(&t.secret),
        "the key is not inside the token"
    );

    let form = Reply::read(
        c.http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=client_credentials&client_secret={}",
                t.secret
            ))
            .send()
            .await?,
    )
    .await?;
    expect_status(&form, 200, "client_credentials form")?;
    let form_token = str_field(&form.json(), "access_token")?;

    let wrong_grant = Reply::read(
        c.http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("grant_type=password&client_secret={}", t.secret))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(wrong_grant.status, 400, "{}", wrong_grant.describe());
    assert_eq!(
        wrong_grant.json()["error"],
        "unsupported_grant_type",
        "{}",
        wrong_grant.describe()
    );
    for (what, req) in [
        (
            "malformed key",
            c.http.post(&url).bearer_auth("ask_live_nope"),
        ),
        ("no key", c.http.post(&url)),
        (
            "form with a bad secret",
            c.http
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials&client_secret=ask_live_nope"),
        ),
    ] {
        let r = Reply::read(req.send().await?).await?;
        assert_eq!(r.status, 401, "{what}: {}", r.describe());
        assert_eq!(
            r.json()["error"],
            "invalid_client",
            "{what}: {}",
            r.describe()
        );
        assert!(
            r.header("www-authenticate").is_some(),
            "{what}: {:?}",
            r.headers
        );
    }
    let stranger = c
        .tenant_on_mock("auth-exchange-other", "ok", json!({}))
        .await?;
    let foreign = Reply::read(
        c.http
            .post(&url)
            .bearer_auth(&stranger.secret)
            .send()
            .await?,
    )
    .await?;
    assert_eq!(
        foreign.json()["error"],
        "invalid_client",
        "another project's key: {}",
        foreign.describe()
    );

    // The token is the consumer's credential until the key is revoked.
    chat_200(&c, &t, &token, "exchanged token").await?;
    chat_200(&c, &t, &form_token, "token from the form grant").await?;
    let records = usage_records_until(&c, &t, |r| r.len() >= 2).await?;
    assert!(records.iter().all(|r| r["consumer_id"] == t.consumer_id.as_str() && r["key_id"] == t.key_id.as_str()), "{records:?}");
    assert_problem(&me(&c, slug, &token).await?, 401, "invalid-credential");
    let foreign_token = chat_as(&c, &stranger, &token).await?;
    assert_eq!(
        foreign_token.status,
        401,
        "a token of another project: {}",
        foreign_token.describe()
    );
    c.admin.revoke_key(slug, &t.key_id).await?;
    chat_401(
        &c,
        &t,
        &token,
        "invalid-credential",
        "exchanged token after its key was revoked",
    )
    .await?;
    chat_401(
        &c,
        &t,
        &form_token,
        "invalid-credential",
        "form token after its key was revoked",
    )
    .await?;
    let again = Reply::read(c.http.post(&url).bearer_auth(&t.secret).send().await?).await?;
    assert_eq!(
        again.json()["error"],
        "invalid_client",
        "a revoked key exchanges for nothing: {}",
        again.describe()
    );
    assert_eq!(c.upstream_requests(slug).len(), 2);
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// IP allowlist, credential location, CORS

pub async fn ip_allowlist_admits_only_listed_networks(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-ip";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let from = |ip: Option<&str>| {
        let mut req = c
            .chat(&t, Some((&t.secret, KeyHeader::Bearer)))
            .json(&chat_body(None, "hi", false));
        if let Some(ip) = ip {
            req = req.header("cf-connecting-ip", ip);
        }
        async move { Reply::read(req.send().await?).await }
    };
    // No list: everyone (wrangler dev reports the client socket, 127.0.0.1, when the header is absent).
    expect_status(&from(None).await?, 200, "no allowlist")?;

    let patched = c
        .admin
        .patch_api(
            &t.api_id,
            json!({"ip_allowlist": ["10.0.0.0/8", "2001:db8::/32"]}),
        )
        .await?;
    assert_eq!(
        patched["ip_allowlist"],
        json!(["10.0.0.0/8", "2001:db8::/32"]),
        "{patched}"
    );
    expect_status(
        &from(Some("10.1.2.3")).await?,
        200,
        "10.1.2.3 in 10.0.0.0/8",
    )?;
    expect_status(
        &from(Some("2001:db8::1")).await?,
        200,
        "2001:db8::1 in 2001:db8::/32",
    )?;
    for ip in [
        Some("192.168.1.1"),
        Some("11.0.0.1"),
        Some("2001:db9::1"),
        Some("not-an-ip"),
        None,
    ] {
        let r = from(ip).await?;
        assert_eq!(r.status, 403, "{ip:?}: {}", r.describe());
        assert_problem(&r, 403, "ip-not-allowed");
    }
    // The allowlist comes before the credential: no key from outside is 403, not 401.
    let keyless = Reply::read(
        c.chat(&t, None)
            .header("cf-connecting-ip", "192.168.1.1")
            .json(&chat_body(None, "hi", false))
            .send()
            .await?,
    )
    .await?;
    assert_problem(&keyless, 403, "ip-not-allowed");

    for bad in [
        json!(["10.0.0.0/33"]),
        json!(["not-a-cidr"]),
        json!(["10.0.0.0/8", "2001:db8::/129"]),
        json!(["10.0.0.0/x"]),
    ] {
        let r = c
            .admin
            .call(
                Method::PATCH,
                &format!("/api/v1/gateway/apis/{}", t.api_id),
                Some(json!({"ip_allowlist": bad.clone()})),
            )
            .await?;
        assert_problem(&r, 400, "invalid-request");
    }
    assert_eq!(
        c.admin.get_api(&t.api_id).await?.json()["ip_allowlist"],
        json!(["10.0.0.0/8", "2001:db8::/32"]),
        "a refused PATCH changes nothing"
    );

    c.admin
        .patch_api(&t.api_id, json!({"ip_allowlist": ["127.0.0.1"]}))
        .await?;
    expect_status(&from(None).await?, 200, "the client socket address, listed")?;
    c.admin
        .patch_api(&t.api_id, json!({"ip_allowlist": []}))
        .await?;
    expect_status(
        &from(Some("192.168.1.1")).await?,
        200,
        "an empty list admits everyone",
    )?;
    assert_eq!(
        c.upstream_requests(slug).len(),
        5,
        "refused requests never went upstream"
    );
    Ok(())
}

pub async fn credential_location_and_passthrough(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-cred-location";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let body = chat_body(None, "hi", false);
    let send = |req: reqwest::RequestBuilder| async move { Reply::read(req.send().await?).await };
    let provider = format!("Bearer sk-upstream-{slug}");

    let patched = c
        .admin
        .patch_api(
            &t.api_id,
            json!({"credential": {"location": "header", "name": "X-Chat-Token"}}),
        )
        .await?;
    assert_eq!(patched["credential"]["location"], "header", "{patched}");
    expect_status(
        &send(
            c.chat(&t, None)
                .header("X-Chat-Token", &t.secret)
                .json(&body),
        )
        .await?,
        200,
        "key in X-Chat-Token",
    )?;
    expect_status(
        &send(
            c.chat(&t, Some((&t.secret, KeyHeader::XApiKey)))
                .json(&body),
        )
        .await?,
        200,
        "X-API-Key still works",
    )?;
    let bearer = send(c.chat(&t, Some((&t.secret, KeyHeader::Bearer))).json(&body)).await?;
    assert_problem(&bearer, 401, "missing-credential");

    c.admin
        .patch_api(
            &t.api_id,
            json!({"credential": {"location": "query", "name": "key"}}),
        )
        .await?;
    let query_url = |key: &str| format!("{}/v1/{slug}/chat/chat/completions?key={key}", c.base);
    expect_status(
        &send(c.http.post(query_url(&t.secret)).json(&body)).await?,
        200,
        "key in ?key=",
    )?;
    let no_query = send(
        c.http
            .post(format!("{}/v1/{slug}/chat/chat/completions", c.base))
            .bearer_auth(&t.secret)
            .json(&body),
    )
    .await?;
    assert_problem(&no_query, 401, "missing-credential");
    let bad_query = send(c.http.post(query_url("ask_live_nope")).json(&body)).await?;
    assert_problem(&bad_query, 401, "invalid-credential");

    // Without passthrough the upstream never sees the client's credential, only the provider key.
    let before = c.upstream_requests(slug);
    assert_eq!(before.len(), 3);
    for up in &before {
        assert_eq!(
            up.header("authorization"),
            Some(provider.as_str()),
            "{:?}",
            up.headers
        );
        assert!(
            up.header("x-chat-token").is_none() && up.header("x-api-key").is_none(),
            "{:?}",
            up.headers
        );
    }
    assert_never_upstream(&c, slug, &t.secret, "the consumer key");

    // With passthrough, it goes where the API reads it from; the provider key keeps Authorization.
    c.admin.patch_api(&t.api_id, json!({"credential": {"location": "header", "name": "X-Chat-Token", "passthrough": true}})).await?;
    expect_status(
        &send(
            c.chat(&t, None)
                .header("X-Chat-Token", &t.secret)
                .json(&body),
        )
        .await?,
        200,
        "header passthrough",
    )?;
    let up = c
        .upstream_requests(slug)
        .pop()
        .ok_or("no upstream request")?;
    assert_eq!(
        up.header("x-chat-token"),
        Some(t.secret.as_str()),
        "{:?}",
        up.headers
    );
    assert_eq!(up.header("authorization"), Some(provider.as_str()));

    c.admin
        .patch_api(
            &t.api_id,
            json!({"credential": {"location": "query", "name": "key", "passthrough": true}}),
        )
        .await?;
    expect_status(
        &send(c.http.post(query_url(&t.secret)).json(&body)).await?,
        200,
        "query passthrough",
    )?;
    let up = c
        .upstream_requests(slug)
        .pop()
        .ok_or("no upstream request")?;
    assert!(
        up.path
            .ends_with(&format!("/chat/completions?key={}", t.secret)),
        "{}",
        up.path
    );
    assert_eq!(up.header("authorization"), Some(provider.as_str()));

    c.admin
        .patch_api(&t.api_id, json!({"credential": {"passthrough": true}}))
        .await?;
    expect_status(
        &send(c.chat(&t, Some((&t.secret, KeyHeader::Bearer))).json(&body)).await?,
        200,
        "Authorization passthrough",
    )?;
    let up = c
        .upstream_requests(slug)
        .pop()
        .ok_or("no upstream request")?;
    assert_eq!(
        up.header("authorization"),
        Some(provider.as_str()),
        "the provider key wins over the passed-through one"
    );
    c.admin
        .patch_api(&t.api_id, json!({"upstream": {"api_key": null}}))
        .await?;
    expect_status(
        &send(c.chat(&t, Some((&t.secret, KeyHeader::Bearer))).json(&body)).await?,
        200,
        "Authorization passthrough, no provider key",
    )?;
    let up = c
        .upstream_requests(slug)
        .pop()
        .ok_or("no upstream request")?;
    assert_eq!(
        up.header("authorization"),
        Some(format!("Bearer {}", t.secret).as_str())
    );

    for bad in [
        json!({"location": "cookie", "name": "k"}),
        json!({"location": "header"}),
        json!({"location": "header", "name": "bad name"}),
        json!({"where": "x"}),
    ] {
        let r = c
            .admin
            .call(
                Method::PATCH,
                &format!("/api/v1/gateway/apis/{}", t.api_id),
                Some(json!({"credential": bad.clone()})),
            )
            .await?;
        assert_eq!(r.status, 400, "{bad}: {}", r.describe());
    }
    Ok(())
}

pub async fn cors_follows_the_projects_allowed_origins(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-cors";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let r = c
        .admin
        .call(
            Method::PATCH,
            &format!("/api/v1/gateway/apis/{}/plans/default", t.api_id),
            Some(json!({"requests_per_minute": 100})),
        )
        .await?;
    expect_status(&r, 200, "limit the plan")?;
    let allowed = "http://allowed.example";
    let evil = "http://evil.example";
    let chat_url = format!("{}/v1/{slug}/chat/chat/completions", c.base);
    let preflight = |origin: &str| {
        let req = c
            .http
            .request(Method::OPTIONS, &chat_url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            );
        async move { Reply::read(req.send().await?).await }
    };

    // No origins allowed yet.
    let before = preflight(allowed).await?;
    assert!(
        before.header("access-control-allow-origin").is_none(),
        "{:?}",
        before.headers
    );
    let bad = c
        .admin
        .call(
            Method::PATCH,
            &format!("/api/v1/projects/{slug}"),
            Some(json!({"allowed_origins": ["allowed.example"]})),
        )
        .await?;
    assert_problem(&bad, 400, "invalid-request");
    let patched = c
        .admin
        .call(
            Method::PATCH,
            &format!("/api/v1/projects/{slug}"),
            Some(json!({"allowed_origins": [allowed]})),
        )
        .await?;
    expect_status(&patched, 200, "allow an origin")?;
    assert_eq!(patched.json()["allowed_origins"], json!([allowed]));

    let ok = preflight(allowed).await?;
    assert_eq!(ok.status, 204, "{}", ok.describe());
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some(allowed),
        "{:?}",
        ok.headers
    );
    let allow_headers = ok
        .header("access-control-allow-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(
        allow_headers.contains("authorization") && allow_headers.contains("content-type"),
        "{allow_headers}"
    );
    assert!(
        ok.header("access-control-allow-methods")
            .is_some_and(|m| m.contains("POST")),
        "{:?}",
        ok.headers
    );
    assert!(
        ok.header("vary").is_some_and(|v| v.contains("Origin")),
        "{:?}",
        ok.headers
    );

    let refused = preflight(evil).await?;
    assert!(
        refused.header("access-control-allow-origin").is_none(),
        "evil origin allowed: {:?}",
        refused.headers
    );
    assert!(
        refused.header("access-control-allow-headers").is_none(),
        "{:?}",
        refused.headers
    );

    // The actual request: ACAO for the allowed origin, with the rate-limit headers exposed.
    let post = |origin: &str, key: Option<&str>| {
        let req = c
            .chat(&t, key.map(|k| (k, KeyHeader::Bearer)))
            .header("origin", origin)
            .json(&chat_body(None, "hi", false));
        async move { Reply::read(req.send().await?).await }
    };
    let real = post(allowed, Some(&t.secret)).await?;
    expect_status(&real, 200, "chat from the allowed origin")?;
    assert_eq!(
        real.header("access-control-allow-origin"),
        Some(allowed),
        "{:?}",
        real.headers
    );
    let exposed = real
        .header("access-control-expose-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    for h in [
        "x-ratelimit-remaining-requests",
        "x-ratelimit-limit-requests",
        "ratelimit",
        "retry-after",
    ] {
        assert!(
            exposed.split(',').any(|e| e.trim() == h),
            "{h} not exposed: {exposed}"
        );
    }
    assert_eq!(
        real.header("x-ratelimit-remaining-requests"),
        Some("99"),
        "{:?}",
        real.headers
    );
    let denied = post(allowed, None).await?;
    assert_problem(&denied, 401, "missing-credential");
    assert_eq!(
        denied.header("access-control-allow-origin"),
        Some(allowed),
        "errors are readable by the page too"
    );
    let foreign = post(evil, Some(&t.secret)).await?;
    expect_status(
        &foreign,
        200,
        "a non-browser call with another Origin still works",
    )?;
    assert!(
        foreign.header("access-control-allow-origin").is_none(),
        "{:?}",
        foreign.headers
    );
    // The auth endpoints follow the same list.
    let jwks = Reply::read(
        c.http
            .get(format!("{}/v1/{slug}/.well-known/jwks.json", c.base))
            .header("origin", allowed)
            .send()
            .await?,
    )
    .await?;
    assert_eq!(jwks.header("access-control-allow-origin"), Some(allowed));
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Consumer JWT credentials

pub async fn consumer_jwt_credentials_symmetric_and_asymmetric(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-consumer-jwt";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let base = format!(
        "/api/v1/projects/{slug}/consumers/{}/jwt-credentials",
        t.consumer_id
    );

    let created = c
        .admin
        .call(Method::POST, &base, Some(json!({"kind": "symmetric"})))
        .await?;
    expect_status(&created, 201, "symmetric credential")?;
    let sym = created.json();
    let secret = str_field(&sym, "secret")?;
    let sym_id = str_field(&sym, "id")?;
    let value = str_field(&sym, "value")?;
    assert_eq!(sym["claim"], "uid", "{sym}");
    assert_eq!(sym["kind"], "symmetric", "{sym}");
    assert!(
        secret.len() >= 32,
        "an HS256 secret of at least 32 bytes: {sym}"
    );
    let exp = now_s() + 300;
    let good = hs256(secret.as_bytes(), &json!({"uid": value, "exp": exp}));
    chat_200(&c, &t, &good, "HS256 with the credential's secret").await?;

    let listing = c.admin.call(Method::GET, &base, None).await?;
    expect_status(&listing, 200, "list JWT credentials")?;
    assert!(
        !listing.text.contains(&secret),
        "the secret is listed: {}",
        listing.text
    );
    assert!(!listing.text.contains("\"secret\""), "{}", listing.text);
    let listed = listing.json()["jwt_credentials"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed.len(), 1, "{}", listing.text);
    assert_eq!(listed[0]["id"], sym_id.as_str());
    assert_eq!(listed[0]["value"], value.as_str());

    let other_secret = "another-secret-of-at-least-32-bytes!!";
    chat_401(
        &c,
        &t,
        &hs256(other_secret.as_bytes(), &json!({"uid": value, "exp": exp})),
        "invalid-credential",
        "right uid, wrong secret",
    )
    .await?;
    chat_401(
        &c,
        &t,
        &hs256(secret.as_bytes(), &json!({"uid": value})),
        "invalid-credential",
        "no exp",
    )
    .await?;
    chat_401(
        &c,
        &t,
        &hs256(
            secret.as_bytes(),
            &json!({"uid": value, "exp": now_s() - 3600}),
        ),
        "token-expired",
        "expired",
    )
    .await?;
    chat_401(
        &c,
        &t,
        &hs256(
            secret.as_bytes(),
            &json!({"uid": "someone-else", "exp": exp}),
        ),
        "invalid-credential",
        "unknown uid",
    )
    .await?;

    // Asymmetric: the owner pastes the consumer's public keys; the consumer signs with EdDSA.
    let consumer_key = ed_key(41, "consumer-ed-1");
    let created = c.admin.call(Method::POST, &base, Some(json!({
        "kind": "asymmetric", "jwks": {"keys": [consumer_key.public_jwk()]}, "claim": "client_id", "value": "e2e-client-7",
    }))).await?;
    expect_status(&created, 201, "asymmetric credential")?;
    let asym = created.json();
    assert!(asym.get("secret").is_none(), "{asym}");
    let asym_token = consumer_key.sign(&obj(json!({"client_id": "e2e-client-7", "exp": exp})));
    chat_200(&c, &t, &asym_token, "EdDSA with the pasted JWKS").await?;
    let impostor =
        ed_key(42, "consumer-ed-1").sign(&obj(json!({"client_id": "e2e-client-7", "exp": exp})));
    chat_401(
        &c,
        &t,
        &impostor,
        "invalid-credential",
        "another key under the same kid",
    )
    .await?;
    for bad in [
        json!({"kind": "asymmetric"}),
        json!({"kind": "asymmetric", "jwks": {"keys": []}}),
        json!({"kind": "symmetric", "claim": "a.b"}),
        json!({"kind": "hmac"}),
    ] {
        let r = c.admin.call(Method::POST, &base, Some(bad.clone())).await?;
        assert_eq!(r.status, 400, "{bad}: {}", r.describe());
    }

    let records = usage_records_until(&c, &t, |r| r.len() >= 2).await?;
    assert!(
        records
            .iter()
            .all(|r| r["consumer_id"] == t.consumer_id.as_str()),
        "filed under the consumer: {records:?}"
    );
    let key_ids: BTreeSet<String> = records
        .iter()
        .filter_map(|r| r["key_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        key_ids,
        [sym_id.clone(), str_field(&asym, "id")?]
            .into_iter()
            .collect(),
        "the credential is the key id"
    );

    // Revoked: refused on the next request; the other credential lives on.
    let revoke = c
        .admin
        .call(
            Method::DELETE,
            &format!("/api/v1/projects/{slug}/jwt-credentials/{sym_id}"),
            None,
        )
        .await?;
    expect_status(&revoke, 204, "revoke the symmetric credential")?;
    chat_401(&c, &t, &good, "invalid-credential", "after revocation").await?;
    chat_200(
        &c,
        &t,
        &asym_token,
        "the asymmetric credential after the other was revoked",
    )
    .await?;
    let twice = c
        .admin
        .call(
            Method::DELETE,
            &format!("/api/v1/projects/{slug}/jwt-credentials/{sym_id}"),
            None,
        )
        .await?;
    assert_problem(&twice, 404, "not-found");
    let listed = c.admin.call(Method::GET, &base, None).await?.json()["jwt_credentials"]
        .as_array()
        .map(Vec::len);
    assert_eq!(
        listed,
        Some(1),
        "the revoked credential is no longer listed"
    );

    // A disabled consumer's credentials stop working too.
    c.admin
        .set_consumer_status(slug, &t.consumer_id, "disabled")
        .await?;
    assert_problem(
        &chat_as(&c, &t, &asym_token).await?,
        403,
        "consumer-disabled",
    );
    assert_eq!(c.upstream_requests(slug).len(), 3);
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// The auth event log

pub async fn auth_events_record_sign_ins_refreshes_keys_and_mode_switches(
    c: Arc<Ctx>,
) -> CaseResult {
    let slug = "auth-events";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let switched = put_auth_mode(&c, &t.api_id, json!({"auth_mode": "managed"})).await?;
    expect_status(&switched, 200, "to managed")?;

    let email = "events@e2e.example";
    let code = request_code(&c, slug, email).await?;
    assert_problem(
        &otp_verify(&c, slug, email, &wrong_code(&code)).await?,
        401,
        "invalid-code",
    );
    let verified = Reply::read(
        c.http
            .post(format!("{}/v1/{slug}/auth/otp/verify", c.base))
            .header("cf-connecting-ip", "203.0.113.7")
            .json(&json!({"email": email, "code": code}))
            .send()
            .await?,
    )
    .await?;
    let tokens = Tokens::from_reply(&verified, "sign in")?;
    let user_id = jwt_parts(&tokens.access)?.1["sub"]
        .as_str()
        .ok_or("no sub")?
        .to_string();
    Tokens::from_reply(&refresh(&c, slug, &tokens.refresh).await?, "refresh")?;
    assert_problem(
        &refresh(&c, slug, &tokens.refresh).await?,
        401,
        "refresh-token-reused",
    );
    let extra = c
        .admin
        .create_key(slug, &t.consumer_id, "short-lived")
        .await?;
    let extra_id = str_field(&extra, "id")?;
    c.admin.revoke_key(slug, &extra_id).await?;

    let wanted = [
        "sign_in",
        "otp_sent",
        "otp_failed",
        "refresh",
        "refresh_reuse",
        "key_created",
        "key_revoked",
        "mode_switched",
    ];
    let events = auth_events_until(&c, slug, "", |e| {
        let types = event_types(e);
        wanted.iter().all(|w| types.contains(*w))
            && e.iter().filter(|x| x["type"] == "key_created").count() >= 2
    })
    .await?;
    let one = |kind: &str| -> Result<Value> {
        let found: Vec<&Value> = events.iter().filter(|e| e["type"] == kind).collect();
        if found.len() != 1 {
            return Err(format!("expected one {kind} event, got {found:?}").into());
        }
        Ok(found[0].clone())
    };
    let sign_in = one("sign_in")?;
    assert_eq!(sign_in["consumer_id"], user_id.as_str(), "{sign_in}");
    assert_eq!(sign_in["subject"], email, "{sign_in}");
    assert_eq!(
        sign_in["ip"], "203.0.113.7",
        "the client IP comes from CF-Connecting-IP: {sign_in}"
    );
    let failed = one("otp_failed")?;
    assert_eq!(failed["subject"], email, "{failed}");
    assert_eq!(failed["detail"], "invalid-code", "{failed}");
    assert_eq!(one("otp_sent")?["subject"], email);
    assert_eq!(one("refresh")?["consumer_id"], user_id.as_str());
    assert_eq!(one("refresh_reuse")?["consumer_id"], user_id.as_str());
    let created: BTreeSet<String> = events
        .iter()
        .filter(|e| e["type"] == "key_created")
        .filter_map(|e| e["detail"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        created,
        [t.key_id.clone(), extra_id.clone()].into_iter().collect(),
        "{events:?}"
    );
    assert_eq!(one("key_revoked")?["detail"], extra_id.as_str());
    let mode = one("mode_switched")?;
    assert_eq!(mode["api_id"], t.api_id.as_str(), "{mode}");
    assert_eq!(mode["detail"], "consumer-key-only -> managed", "{mode}");
    for e in &events {
        assert!(
            e["id"].as_str().is_some_and(|id| id.starts_with("evt_"))
                && e["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{e}"
        );
    }
    let times: Vec<&str> = events.iter().filter_map(|e| e["time"].as_str()).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );

    let only = auth_events_until(&c, slug, "type=sign_in", |e| !e.is_empty()).await?;
    assert_eq!(
        event_types(&only),
        ["sign_in".to_string()].into_iter().collect(),
        "{only:?}"
    );
    assert_eq!(only.len(), 1);
    let none = auth_events_until(&c, slug, "type=no_such_event", |_| true).await?;
    assert!(none.is_empty(), "{none:?}");
    let future = auth_events_until(&c, slug, "since=2999-01-01T00:00:00Z", |_| true).await?;
    assert!(future.is_empty(), "{future:?}");
    let bad_since = c
        .admin
        .call(
            Method::GET,
            &format!("/api/v1/projects/{slug}/auth-events?since=yesterday"),
            None,
        )
        .await?;
    assert_problem(&bad_since, 400, "invalid-request");
    // Another project's log does not show these.
    let other = c
        .tenant_on_mock("auth-events-other", "ok", json!({}))
        .await?;
    let theirs = auth_events_until(&c, &other.project, "", |e| !e.is_empty()).await?;
    assert!(
        theirs
            .iter()
            .all(|e| e["subject"] != email && e["detail"] != extra_id.as_str()),
        "{theirs:?}"
    );
    Ok(())
}
