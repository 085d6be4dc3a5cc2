//! End-to-end cases for end-user auth: managed sign-in with emailed codes and rotating refresh
//! sessions, BYO JWT against an owner's JWKS, consumer JWT credentials, the key → token exchange,
//! where the credential is read from, IP allowlists, CORS and the auth event log.

use std::collections::{BTreeMap, BTreeSet};
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

use super::{assert_problem, stream_summary, CaseFn, CaseResult, Ctx, STREAM_LIMIT};
use crate::support::*;

mod access;
mod byo_jwt;
mod consumer_jwt;
mod dpop;
mod guessing;
mod oauth;
mod signin;

/// Every auth case, by scenario file.
pub fn cases() -> Vec<(&'static str, CaseFn)> {
    [
        signin::cases(),
        byo_jwt::cases(),
        access::cases(),
        consumer_jwt::cases(),
        guessing::cases(),
        dpop::cases(),
        oauth::cases(),
    ]
    .concat()
}

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

/// The challenge id of the last code asked for, per (project, email), as a client keeps it.
fn challenges() -> &'static std::sync::Mutex<std::collections::HashMap<(String, String), String>> {
    static CHALLENGES: OnceLock<
        std::sync::Mutex<std::collections::HashMap<(String, String), String>>,
    > = OnceLock::new();
    CHALLENGES.get_or_init(Default::default)
}

fn challenge_key(project: &str, email: &str) -> (String, String) {
    (project.to_string(), email.trim().to_lowercase())
}

async fn otp_start(c: &Ctx, project: &str, email: &str) -> Result<Reply> {
    otp_start_from(c, project, email, None).await
}

/// `otp/start` from a client network (`CF-Connecting-IP`), remembering the challenge id.
async fn otp_start_from(c: &Ctx, project: &str, email: &str, ip: Option<&str>) -> Result<Reply> {
    let mut req = c
        .http
        .post(format!("{}/v1/{project}/auth/otp/start", c.base))
        .json(&json!({"email": email}))
        .timeout(STREAM_LIMIT);
    if let Some(ip) = ip {
        req = req.header("cf-connecting-ip", ip);
    }
    let r = Reply::read(req.send().await?).await?;
    if let Some(id) = r.json()["challenge_id"].as_str() {
        if let Ok(mut map) = challenges().lock() {
            map.insert(challenge_key(project, email), id.to_string());
        }
    }
    Ok(r)
}

/// The challenge id the last `otp_start` for this email answered (a made-up one if none).
fn challenge_of(project: &str, email: &str) -> String {
    challenges()
        .lock()
        .ok()
        .and_then(|m| m.get(&challenge_key(project, email)).cloned())
        .unwrap_or_else(|| "chl_none".into())
}

async fn otp_verify(c: &Ctx, project: &str, email: &str, code: &str) -> Result<Reply> {
    let challenge = challenge_of(project, email);
    otp_verify_with(c, project, email, code, &challenge, None).await
}

/// `otp/verify` naming a challenge, from a client network.
async fn otp_verify_with(
    c: &Ctx,
    project: &str,
    email: &str,
    code: &str,
    challenge_id: &str,
    ip: Option<&str>,
) -> Result<Reply> {
    let mut req = c
        .http
        .post(format!("{}/v1/{project}/auth/otp/verify", c.base))
        .json(&json!({"email": email, "code": code, "challenge_id": challenge_id}))
        .timeout(STREAM_LIMIT);
    if let Some(ip) = ip {
        req = req.header("cf-connecting-ip", ip);
    }
    Reply::read(req.send().await?).await
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
