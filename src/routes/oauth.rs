//! A project's OAuth 2.1 authorization server on the edge: discovery (RFC 8414, RFC 9728), the
//! authorize page (sign-in with an email code, then consent), the token, revocation (RFC 7009),
//! introspection (RFC 7662) and dynamic registration (RFC 7591) endpoints, and the end user's grants.
//! The rules are `auth::oauth`'s; a grant is a session whose Durable Object holds the exact state.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use worker::{Context, D1Database, Env, Headers, Request, Response};

use super::auth::{
    check_code, end_session, form_field, send_code, sign_out, signed_in, token_form, CodeAttempt,
};
use crate::auth::guard::{GuardReply, GuardRequest, SCOPE_NOT_GRANTED};
use crate::auth::oauth::{
    self, challenge_is_valid, client_secret_matches, grant_scopes, new_client_secret, new_code,
    parse_code, parse_scope, redirect_matches, request_digest, s256, validate_redirect_uri,
    verifier_is_valid, ClientType, GrantInfo, PendingCode, Transaction,
};
use crate::auth::otp::normalize_email;
use crate::auth::session::{
    new_refresh, new_session_id, parse_refresh, session_id_kind, Session, SessionIdKind,
};
use crate::auth::tokens::{classify, oauth_access_claims, oauth_of, OAuthClaims, SluiceToken};
use crate::error::{Error, Problem, Shape};
use crate::http::{encryption_secret, header, json, no_content, now_ms, read_body, with_random};
use crate::identity::{self, client_ip, current_key, event, record_event, verify_sluice_token};
use crate::ids::new_id;
use crate::records::oauth::{OAuthClient, OAuthGrant};
use crate::records::{Consumer, ConsumerStatus, Project};
use crate::store::d1;
use crate::store::objects::{self, Guard};

const FORM_LIMIT: usize = 16 * 1024;
const COOKIE: &str = "sluice_oauth";
/// Self-registered clients a project holds at most (each network is limited per hour besides).
const MAX_DYNAMIC_CLIENTS: u64 = 1_000;

/// `{origin}` of the request (`scheme://host[:port]`), as the runtime saw its URL.
fn origin(req: &Request) -> String {
    let url = req.inner().url();
    oauth::origin_of(&url).unwrap_or_default()
}

/// The issuer of project `slug` as seen from this request: `{origin}/v1/{slug}`.
fn issuer(req: &Request, slug: &str) -> String {
    format!("{}/v1/{slug}", origin(req))
}

/// Any error of an OAuth endpoint in RFC 6749's shape: one that is not already an OAuth error gets
/// the `error` code its status means, so OAuth clients can read it.
pub fn in_oauth_shape(e: Error) -> Error {
    if e.extra.get("error").is_some_and(Value::is_string) {
        return e;
    }
    let code = match e.status {
        401 => "invalid_client",
        503 => "temporarily_unavailable",
        s if s >= 500 => "server_error",
        _ => "invalid_request",
    };
    let detail = e.detail.clone();
    let mut e = e
        .with_field("error", code)
        .with_field("error_description", detail);
    e.shape = Shape::OAuth;
    e
}

/// An RFC 6749 error (`error`, `error_description`) as `application/json`.
fn oauth_err(problem: Problem, code: &'static str, description: impl Into<String>) -> Error {
    let description = description.into();
    let mut e = Error::new(problem, description.clone())
        .with_field("error", code)
        .with_field("error_description", description);
    e.shape = Shape::OAuth;
    e
}

fn invalid_request(description: impl Into<String>) -> Error {
    oauth_err(Problem::InvalidRequest, "invalid_request", description)
}

fn invalid_grant(description: impl Into<String>) -> Error {
    oauth_err(Problem::InvalidGrant, "invalid_grant", description)
}

fn invalid_scope(description: impl Into<String>) -> Error {
    oauth_err(Problem::InvalidScope, "invalid_scope", description)
}

fn invalid_client(description: impl Into<String>) -> Error {
    oauth_err(Problem::InvalidClient, "invalid_client", description)
        .with_header("WWW-Authenticate", "Basic realm=\"sluice-oauth\"")
}

fn no_store(mut r: Response) -> Result<Response, Error> {
    r.headers_mut().set("cache-control", "no-store")?;
    r.headers_mut().set("pragma", "no-cache")?;
    Ok(r)
}

/// Public metadata: readable from any origin.
fn public_json(body: &Value) -> Result<Response, Error> {
    let mut r = json(200, body)?;
    r.headers_mut().set("access-control-allow-origin", "*")?;
    r.headers_mut()
        .set("cache-control", "public, max-age=300")?;
    Ok(r)
}

/// `GET /.well-known/oauth-authorization-server/v1/{project}` (and `/v1/{project}/.well-known/…`):
/// RFC 8414 metadata whose `issuer` is exactly `{origin}/v1/{project}`.
pub async fn server_metadata(req: Request, env: &Env, project: &str) -> Result<Response, Error> {
    let db = d1::db(env)?;
    let project = d1::project_by_slug(&db, project).await?;
    let scopes = d1::project_required_scopes(&db, &project.id).await?;
    let issuer = issuer(&req, &project.slug);
    public_json(&oauth::server_metadata(
        &issuer,
        project.sign_in.oauth_dynamic_registration,
        &scopes,
    ))
}

/// `GET /.well-known/oauth-protected-resource/v1/{project}/{api}`: RFC 9728 metadata of an API that
/// accepts OAuth tokens (404 for one that does not).
pub async fn resource_metadata(
    req: Request,
    env: &Env,
    project: &str,
    api: &str,
) -> Result<Response, Error> {
    let entry = crate::cache::api(env, &crate::timing::Timing::default(), project, api).await?;
    let api = &entry.api;
    if !api.accepts_oauth() {
        return Err(Error::not_found(format!(
            "API `{}` does not accept OAuth tokens.",
            api.slug
        )));
    }
    let issuer = issuer(&req, &api.project_slug);
    public_json(&oauth::resource_metadata(
        &format!("{issuer}/{}", api.slug),
        &issuer,
        &api.name,
        &api.oauth.required_scopes,
    ))
}

/// The `WWW-Authenticate` challenge of a data-plane 401 on an API that accepts OAuth: the error's own
/// Bearer parameters, plus where its protected resource metadata is (RFC 9728 §5.1).
pub fn with_resource_metadata(mut e: Error, req: &Request, project: &str, api: &str) -> Error {
    if e.status != 401 {
        return e;
    }
    let url = format!(
        "{}/.well-known/oauth-protected-resource/v1/{project}/{api}",
        origin(req)
    );
    let param = format!("resource_metadata=\"{url}\"");
    let mut found = false;
    for (name, value) in e.headers.iter_mut() {
        if name.eq_ignore_ascii_case("www-authenticate") && value.starts_with("Bearer") {
            let rest = value.trim_start_matches("Bearer").trim();
            *value = if rest.is_empty() {
                format!("Bearer {param}")
            } else {
                format!("Bearer {param}, {rest}")
            };
            found = true;
        }
    }
    if !found {
        e.headers
            .push(("WWW-Authenticate".into(), format!("Bearer {param}")));
    }
    e
}

// ---------------------------------------------------------------------------------------------
// The authorize page.

/// A checked authorization request: the client and redirect URI are known good, so later errors
/// may be sent to the redirect URI.
struct AuthorizeRequest {
    client: OAuthClient,
    redirect_uri: String,
    /// The request named its `redirect_uri` (the token request must then name it too).
    redirect_uri_given: bool,
    state: Option<String>,
    scope: Vec<String>,
    code_challenge: String,
    resource: Option<String>,
    issuer: String,
}

impl AuthorizeRequest {
    fn digest(&self) -> String {
        request_digest(&[
            &self.client.id,
            &self.redirect_uri,
            &self.scope.join(" "),
            &self.code_challenge,
            self.resource.as_deref().unwrap_or_default(),
            self.state.as_deref().unwrap_or_default(),
        ])
    }

    /// `redirect_uri` with `params` (and `state`, `iss`) added to its query.
    fn redirect_to(&self, params: &[(&str, &str)]) -> Result<Response, Error> {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            q.append_pair(k, v);
        }
        if let Some(state) = &self.state {
            q.append_pair("state", state);
        }
        q.append_pair("iss", &self.issuer);
        let sep = if self.redirect_uri.contains('?') {
            '&'
        } else {
            '?'
        };
        let location = format!("{}{sep}{}", self.redirect_uri, q.finish());
        let headers = Headers::new();
        headers.set("location", &location)?;
        headers.set("cache-control", "no-store")?;
        headers.set("referrer-policy", "no-referrer")?;
        headers.append("set-cookie", &clear_cookie(&self.issuer))?;
        Ok(Response::empty()?.with_status(302).with_headers(headers))
    }
}

/// Why an authorization request is refused.
enum Refusal {
    /// Shown as an error page: the client or redirect URI cannot be trusted with a redirect.
    Page(String),
    /// Sent to the redirect URI as `error` (RFC 6749 §4.1.2.1).
    Redirect(&'static str, String),
}

fn one(pairs: &[(String, String)], name: &str) -> Result<Option<String>, Refusal> {
    let mut found = pairs.iter().filter(|(k, _)| k == name);
    let first = found.next().map(|(_, v)| v.clone());
    if found.next().is_some() {
        return Err(Refusal::Page(format!(
            "The parameter `{name}` is repeated."
        )));
    }
    Ok(first)
}

/// Checks the query of an authorization request, in the order that decides where errors go.
async fn check_request(
    db: &D1Database,
    project: &Project,
    issuer: String,
    pairs: &[(String, String)],
) -> Result<AuthorizeRequest, (Refusal, Option<AuthorizeRequest>)> {
    let page = |m: String| (Refusal::Page(m), None);
    let client_id = one(pairs, "client_id")
        .map_err(|r| (r, None))?
        .ok_or_else(|| page("The request names no `client_id`.".into()))?;
    let client = match d1::oauth_client(db, &project.id, &client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(page(format!(
                "There is no client `{}` in this project.",
                short(&client_id)
            )))
        }
        Err(e) => return Err(page(e.detail)),
    };
    let given = one(pairs, "redirect_uri").map_err(|r| (r, None))?;
    let redirect_uri_given = given.is_some();
    let redirect_uri =
        match given {
            Some(uri) if redirect_matches(&client.redirect_uris, &uri) => uri,
            Some(_) => return Err(page(
                "The redirect_uri is not one this client registered (they are compared exactly)."
                    .into(),
            )),
            None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
            None => return Err(page("The request names no `redirect_uri`.".into())),
        };
    let state = one(pairs, "state").map_err(|r| (r, None))?;
    if state.as_ref().is_some_and(|s| s.len() > 1000) {
        return Err(page("`state` is at most 1000 characters.".into()));
    }
    let method = one(pairs, "code_challenge_method").map_err(|r| (r, None))?;
    let challenge = one(pairs, "code_challenge").map_err(|r| (r, None))?;
    match method.as_deref() {
        Some("S256") => {}
        Some("plain") => {
            return Err(page(
                "PKCE with `plain` is not accepted: use `code_challenge_method=S256`.".into(),
            ))
        }
        _ => {
            return Err(page(
                "PKCE is required: send `code_challenge` with `code_challenge_method=S256`.".into(),
            ))
        }
    }
    let code_challenge =
        match challenge {
            Some(c) if challenge_is_valid(&c) => c,
            _ => return Err(page(
                "`code_challenge` must be the 43-character BASE64URL SHA-256 of the code verifier."
                    .into(),
            )),
        };
    let mut request = AuthorizeRequest {
        client,
        redirect_uri,
        redirect_uri_given,
        state,
        scope: Vec::new(),
        code_challenge,
        resource: None,
        issuer,
    };
    let redirect = |code, m: String, r: AuthorizeRequest| (Refusal::Redirect(code, m), Some(r));
    let response_type = match one(pairs, "response_type") {
        Ok(v) => v,
        Err(r) => return Err((r, Some(request))),
    };
    if response_type.as_deref() != Some("code") {
        return Err(redirect(
            "unsupported_response_type",
            "Only response_type=code is supported.".into(),
            request,
        ));
    }
    let scope = match one(pairs, "scope") {
        Ok(s) => s.unwrap_or_default(),
        Err(r) => return Err((r, Some(request))),
    };
    let asked = match parse_scope(&scope) {
        Ok(s) => s,
        Err(m) => return Err(redirect("invalid_scope", m, request)),
    };
    request.scope = match grant_scopes(&asked, request.client.scopes.as_deref()) {
        Ok(s) => s,
        Err(m) => return Err(redirect("invalid_scope", m, request)),
    };
    let resource = match one(pairs, "resource") {
        Ok(r) => r,
        Err(r) => return Err((r, Some(request))),
    };
    if let Some(resource) = resource {
        match check_resource(db, project, &request.issuer, &resource).await {
            Ok(()) => request.resource = Some(resource),
            Err(m) => return Err(redirect("invalid_target", m, request)),
        }
    }
    Ok(request)
}

/// An RFC 8707 resource: the project's issuer URL, or one of its APIs' (`{issuer}/{api}`).
async fn check_resource(
    db: &D1Database,
    project: &Project,
    issuer: &str,
    resource: &str,
) -> Result<(), String> {
    let trimmed = resource.trim_end_matches('/');
    if trimmed == issuer {
        return Ok(());
    }
    let not_ours = || {
        format!(
            "`{}` is not a resource of this project: name `{issuer}` or one of its APIs.",
            short(resource)
        )
    };
    // `{issuer}/{api}`, or a URL below it (an MCP server's full URL).
    let Some(api) = trimmed
        .strip_prefix(issuer)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.split('/').next())
    else {
        return Err(not_ours());
    };
    if api.is_empty() || resource.contains(['#', ' ', '\\']) {
        return Err(not_ours());
    }
    match d1::api_by_slugs(db, &project.slug, api).await {
        Ok(_) => Ok(()),
        Err(_) => Err(not_ours()),
    }
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// `GET|POST /v1/{project}/oauth/authorize`: the sign-in and consent page, a plain form flow (no
/// JavaScript): POST `email` sends a code, then `email`, `code` and `challenge_id` sign in, then
/// `consent=allow|deny` answers the client. Refusals that cannot be trusted to the redirect URI
/// are an error page.
pub async fn authorize(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
) -> Result<Response, Error> {
    let db = d1::db(env)?;
    let project = d1::project_by_slug(&db, project).await?;
    let issuer = issuer(&req, &project.slug);
    let pairs: Vec<(String, String)> = crate::http::Target::of(&req).query_pairs().collect();
    let request = match check_request(&db, &project, issuer.clone(), &pairs).await {
        Ok(r) => r,
        Err((Refusal::Page(message), _)) => {
            return page(
                400,
                "This sign-in link is not valid",
                &error_body(&message),
                None,
            )
        }
        // A self-registered client's redirect URI is anyone's: no redirect before the user acted,
        // or the page would bounce visitors anywhere (RFC 9700 §4.11.2).
        Err((Refusal::Redirect(_, message), Some(r))) if r.client.dynamic => {
            return page(
                400,
                "This sign-in link is not valid",
                &error_body(&message),
                None,
            )
        }
        Err((Refusal::Redirect(code, message), Some(r))) => {
            return r.redirect_to(&[("error", code), ("error_description", &message)])
        }
        Err((Refusal::Redirect(_, message), None)) => {
            return page(
                400,
                "This sign-in link is not valid",
                &error_body(&message),
                None,
            )
        }
    };
    let key = encryption_secret(env)?;
    let digest = request.digest();
    let now = now_ms();
    if matches!(req.method(), worker::Method::Get | worker::Method::Head) {
        // Signed in for this very request a moment ago (a reload): straight to consent.
        if let Some(t) = cookie_transaction(&req, key.as_bytes(), &digest, now) {
            return consent_page(&request, &t, key.as_bytes(), &project, 200, None);
        }
        return email_page(&request, &project, 200, None, "");
    }
    if !same_origin(&req, &origin(&req)) {
        return page(
            403,
            "Request refused",
            &error_body("This form can only be sent from the sign-in page itself."),
            None,
        );
    }
    let body = read_body(&mut req, FORM_LIMIT).await?;
    let form: Vec<(String, String)> = form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let field = |k: &str| form_field(&form, k).map(|v| v.trim().to_string());
    let ip = client_ip(&req);
    if let Some(answer) = field("consent") {
        let token = field("transaction").or_else(|| cookie_value(&req));
        let Some(t) = token
            .and_then(|t| oauth::open_transaction(key.as_bytes(), &t, &digest, now))
            .filter(|t| t.project == project.id)
        else {
            return email_page(
                &request,
                &project,
                400,
                Some("Your sign-in for this request has ended: sign in again."),
                "",
            );
        };
        return consent(env, ctx, &db, &project, &request, t, &answer, ip).await;
    }
    let Some(email_in) = field("email") else {
        return email_page(&request, &project, 200, None, "");
    };
    let Ok(email) = normalize_email(&email_in) else {
        return email_page(
            &request,
            &project,
            400,
            Some("Enter a valid email address."),
            &email_in,
        );
    };
    if let Some(code) = field("code") {
        let challenge_id = field("challenge_id").unwrap_or_default();
        let attempt = CodeAttempt {
            email: &email,
            code: &code,
            challenge_id: &challenge_id,
            ip: ip.clone(),
        };
        let consumer = match check_code(env, ctx, &db, &project, attempt).await {
            Ok(c) => c,
            Err(e) => {
                return code_page(
                    &request,
                    &project,
                    e.status,
                    Some(&e.detail),
                    &email,
                    &challenge_id,
                )
            }
        };
        record_event(
            ctx,
            env,
            identity::EventDraft {
                consumer_id: Some(consumer.id.clone()),
                subject: Some(email.clone()),
                ip,
                detail: Some(request.client.id.clone()),
                ..event(&project.id, "oauth_sign_in")
            },
        );
        let t = Transaction {
            consumer: consumer.id,
            email,
            project: project.id.clone(),
            request: digest,
            expires_at: now + oauth::TRANSACTION_TTL_MS,
        };
        return consent_page(&request, &t, key.as_bytes(), &project, 200, Some(&issuer));
    }
    match send_code(env, ctx, &db, &project, &email, ip).await {
        Ok(challenge_id) => code_page(&request, &project, 200, None, &email, &challenge_id),
        Err(e) => email_page(&request, &project, e.status, Some(&e.detail), &email),
    }
}

/// The consent answer: `deny` sends `access_denied`; `allow` opens the grant with its code.
#[allow(clippy::too_many_arguments)]
async fn consent(
    env: &Env,
    ctx: &Context,
    db: &D1Database,
    project: &Project,
    request: &AuthorizeRequest,
    t: Transaction,
    answer: &str,
    ip: Option<String>,
) -> Result<Response, Error> {
    let draft = |kind| identity::EventDraft {
        consumer_id: Some(t.consumer.clone()),
        subject: Some(t.email.clone()),
        ip: ip.clone(),
        detail: Some(request.client.id.clone()),
        ..event(&project.id, kind)
    };
    if answer != "allow" {
        record_event(ctx, env, draft("oauth_consent_denied"));
        return request.redirect_to(&[
            ("error", "access_denied"),
            ("error_description", "The user declined."),
        ]);
    }
    let consumer = d1::find_consumer(db, &project.id, &t.consumer).await?;
    if !consumer.as_ref().is_some_and(Consumer::is_enabled) {
        return page(
            403,
            "Access refused",
            &error_body("This account is disabled."),
            None,
        );
    }
    let now = now_ms();
    let pepper = encryption_secret(env)?;
    let session_id = with_random(|r| new_session_id(pepper.as_bytes(), r))?;
    let (code, code_hash) = with_random(|r| new_code(&session_id, r))?;
    // The refresh chain starts at redemption; until then no secret of it exists.
    let (_, placeholder) = with_random(|r| new_refresh(&session_id, r))?;
    let mut session = Session::new(
        session_id.clone(),
        project.id.clone(),
        t.consumer.clone(),
        Some(t.email.clone()),
        placeholder,
        now,
    );
    session.expires_at = now + oauth::CODE_TTL_MS;
    session.oauth = Some(GrantInfo {
        client_id: request.client.id.clone(),
        scope: request.scope.join(" "),
        resource: request.resource.clone(),
        code: Some(PendingCode {
            hash: code_hash,
            expires_at: now + oauth::CODE_TTL_MS,
            redirect_uri: request.redirect_uri.clone(),
            code_challenge: request.code_challenge.clone(),
            redirect_uri_omitted: !request.redirect_uri_given,
            used: false,
        }),
    });
    objects::create_session(env, &session_id, session).await?;
    record_event(ctx, env, draft("oauth_code_issued"));
    request.redirect_to(&[("code", &code)])
}

fn same_origin(req: &Request, own: &str) -> bool {
    if header(req, "sec-fetch-site").is_some_and(|s| s == "cross-site") {
        return false;
    }
    match header(req, "origin") {
        None => true,
        Some(o) => o == own,
    }
}

fn cookie_value(req: &Request) -> Option<String> {
    let cookies = header(req, "cookie")?;
    cookies
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn cookie_transaction(req: &Request, key: &[u8], digest: &str, now: i64) -> Option<Transaction> {
    oauth::open_transaction(key, &cookie_value(req)?, digest, now)
}

/// The path the sign-in cookie is scoped to: the issuer's authorize endpoint.
fn cookie_path(issuer: &str) -> String {
    let after = issuer.split_once("://").map_or("", |(_, r)| r);
    let path = after.find('/').map_or("/", |i| &after[i..]);
    format!("{path}/oauth/authorize")
}

/// The sign-in cookie's attributes: `Secure` on an https issuer (a local http gateway's scripts
/// and cookie jars would not send it back otherwise).
fn cookie_attributes(issuer: &str, max_age_s: i64) -> String {
    let secure = if issuer.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    format!(
        "Path={}; Max-Age={max_age_s}; HttpOnly{secure}; SameSite=Strict",
        cookie_path(issuer)
    )
}

fn clear_cookie(issuer: &str) -> String {
    format!("{COOKIE}=; {}", cookie_attributes(issuer, 0))
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn error_body(message: &str) -> String {
    format!(
        "<p class=\"error\" role=\"alert\">{}</p><p>Go back to the app and start again.</p>",
        esc(message)
    )
}

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem;color:#1a1a1a;background:#fff}\
h1{font-size:1.3rem}label{display:block;margin:.8rem 0 .3rem}input{font:inherit;width:100%;box-sizing:border-box;padding:.5rem;border:1px solid #888;border-radius:4px}\
button{font:inherit;padding:.5rem 1rem;margin:.8rem .5rem 0 0;border-radius:4px;border:1px solid #333;background:#1a1a1a;color:#fff;cursor:pointer}\
button.secondary{background:#fff;color:#1a1a1a}button:focus,input:focus{outline:3px solid #2563eb;outline-offset:2px}\
.error{color:#b00020}.muted{color:#555;font-size:.9rem}ul{padding-left:1.2rem}\
.notice{border-left:4px solid #b45309;padding:.3rem .7rem;background:#fff7ed}\
@media (prefers-color-scheme:dark){body{background:#111;color:#eee}input{background:#222;color:#eee}button{background:#eee;color:#111}button.secondary{background:#111;color:#eee;border-color:#eee}.muted{color:#aaa}.error{color:#ff6b81}.notice{background:#2a1a05}}";

/// An HTML page that cannot be framed and loads nothing from anywhere; `form_to` is an extra origin
/// forms may lead to (the client's, which the consent form redirects to).
fn page(status: u16, title: &str, body: &str, form_to: Option<&str>) -> Result<Response, Error> {
    page_with(status, title, body, form_to, None)
}

fn page_with(
    status: u16,
    title: &str,
    body: &str,
    form_to: Option<&str>,
    cookie: Option<&str>,
) -> Result<Response, Error> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta name=\"referrer\" content=\"same-origin\"><title>{t}</title><style>{STYLE}</style></head><body><main><h1>{t}</h1>{body}</main></body></html>",
        t = esc(title)
    );
    let headers = Headers::new();
    headers.set("content-type", "text/html; charset=utf-8")?;
    headers.set("cache-control", "no-store")?;
    let form_action = match form_to {
        Some(o) => format!("'self' {o}"),
        None => "'self'".into(),
    };
    headers.set(
        "content-security-policy",
        &format!("default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"),
    )?;
    headers.set("x-frame-options", "DENY")?;
    // `same-origin`: the page's own forms carry its Origin (CSRF check); nothing leaves for the client.
    headers.set("referrer-policy", "same-origin")?;
    headers.set("x-content-type-options", "nosniff")?;
    if let Some(c) = cookie {
        headers.append("set-cookie", c)?;
    }
    Ok(Response::from_html(html)?
        .with_status(status)
        .with_headers(headers))
}

fn notice(message: Option<&str>) -> String {
    message.map_or(String::new(), |m| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", esc(m))
    })
}

/// Who asks. A client that registered itself (RFC 7591) chose its own name, which may copy a
/// trusted app's: the page says so and names the host the answer goes to.
fn client_line(request: &AuthorizeRequest, project: &Project) -> String {
    let asks = format!(
        "<p><strong>{}</strong> asks to use <strong>{}</strong> on your behalf.</p>",
        esc(&request.client.name),
        esc(&project.name)
    );
    if !request.client.dynamic {
        return asks;
    }
    let to = oauth::origin_of(&request.redirect_uri).unwrap_or_default();
    format!(
        "{asks}<p class=\"notice\">Unverified app: it registered itself, and {} has not checked \
that it is who its name says. Continue only if you trust <strong>{}</strong>.</p>",
        esc(&project.name),
        esc(&to)
    )
}

fn email_page(
    request: &AuthorizeRequest,
    project: &Project,
    status: u16,
    message: Option<&str>,
    email: &str,
) -> Result<Response, Error> {
    let body = format!(
        "{}{}<form method=\"post\"><label for=\"email\">Email</label>\
<input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"email\" required value=\"{}\" autofocus>\
<button type=\"submit\">Send me a code</button></form><p class=\"muted\">We will email you a 6-digit code.</p>",
        client_line(request, project),
        notice(message),
        esc(email)
    );
    page(status, "Sign in", &body, None)
}

fn code_page(
    request: &AuthorizeRequest,
    project: &Project,
    status: u16,
    message: Option<&str>,
    email: &str,
    challenge_id: &str,
) -> Result<Response, Error> {
    let body = format!(
        "{}{}<form method=\"post\"><p>We sent a code to <strong>{e}</strong>.</p><input type=\"hidden\" name=\"email\" value=\"{e}\">\
<input type=\"hidden\" name=\"challenge_id\" value=\"{c}\"><label for=\"code\">6-digit code</label>\
<input id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" pattern=\"[0-9 ]*\" maxlength=\"12\" required autofocus>\
<button type=\"submit\">Sign in</button></form>",
        client_line(request, project),
        notice(message),
        e = esc(email),
        c = esc(challenge_id)
    );
    page(status, "Enter your code", &body, None)
}

fn consent_page(
    request: &AuthorizeRequest,
    t: &Transaction,
    key: &[u8],
    project: &Project,
    status: u16,
    set_cookie_for: Option<&str>,
) -> Result<Response, Error> {
    let token = oauth::seal_transaction(key, t);
    let scopes = if request.scope.is_empty() {
        "<p>It asks for no particular scope: it may call the project's APIs that accept OAuth as you.</p>".to_string()
    } else {
        let items: String = request
            .scope
            .iter()
            .map(|s| format!("<li><code>{}</code></li>", esc(s)))
            .collect();
        format!("<p>It asks for these scopes:</p><ul>{items}</ul>")
    };
    let body = format!(
        "{}<p class=\"muted\">Signed in as {}.</p>{scopes}<p class=\"muted\">It will be sent back to {}.</p>\
<form method=\"post\"><input type=\"hidden\" name=\"transaction\" value=\"{}\">\
<button type=\"submit\" name=\"consent\" value=\"allow\">Allow</button>\
<button type=\"submit\" name=\"consent\" value=\"deny\" class=\"secondary\">Deny</button></form>",
        client_line(request, project),
        esc(&t.email),
        esc(&request.redirect_uri),
        esc(&token)
    );
    let cookie = set_cookie_for.map(|issuer| {
        format!(
            "{COOKIE}={token}; {}",
            cookie_attributes(issuer, oauth::TRANSACTION_TTL_MS / 1000)
        )
    });
    let to = oauth::origin_of(&request.redirect_uri);
    page_with(
        status,
        "Allow access?",
        &body,
        to.as_deref(),
        cookie.as_deref(),
    )
}

// ---------------------------------------------------------------------------------------------
// The token, revocation and introspection endpoints.

/// The client a request authenticates as: HTTP Basic or `client_id` (+ `client_secret`) in the
/// form. A confidential client needs its secret; a public one is identified by its id alone.
async fn client_of(
    req: &Request,
    form: &[(String, String)],
    db: &D1Database,
    project: &Project,
) -> Result<OAuthClient, Error> {
    let field = |k: &str| form_field(form, k);
    // HTTP Basic, when the request uses it, must decode; and it is the only method then (RFC 6749
    // §2.3: one authentication method per request), though the form may repeat the same client_id.
    let basic =
        match header(req, "authorization").and_then(|h| {
            h.strip_prefix("Basic ")
                .or_else(|| h.strip_prefix("basic "))
                .map(str::to_string)
        }) {
            None => None,
            Some(b64) => Some(basic_credentials(&b64).ok_or_else(|| {
                invalid_client("The HTTP Basic client credentials do not decode.")
            })?),
        };
    if let Some((id, _)) = &basic {
        if field("client_secret").is_some() {
            return Err(invalid_request(
                "Authenticate the client one way: HTTP Basic or `client_secret` in the form, not both.",
            ));
        }
        if field("client_id").is_some_and(|c| &c != id) {
            return Err(invalid_request(
                "The form's `client_id` is not the client that HTTP Basic names.",
            ));
        }
    }
    let (id, secret) = match basic {
        Some((id, secret)) => (id, Some(secret)),
        None => (
            field("client_id").ok_or_else(|| {
                invalid_client("Authenticate the client: HTTP Basic, or `client_id` in the form.")
            })?,
            field("client_secret"),
        ),
    };
    let client = d1::oauth_client(db, &project.id, &id)
        .await?
        .ok_or_else(|| invalid_client("Unknown client."))?;
    if client.client_type == ClientType::Confidential {
        let ok = match (&client.secret_hash, &secret) {
            (Some(hash), Some(s)) => client_secret_matches(hash, s),
            _ => false,
        };
        if !ok {
            return Err(invalid_client("The client secret is missing or wrong."));
        }
    }
    Ok(client)
}

/// `client_id:client_secret` from an HTTP Basic credential, each form-urlencoded (RFC 6749 §2.3.1).
fn basic_credentials(b64: &str) -> Option<(String, String)> {
    let raw = STANDARD.decode(b64.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    let decode = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((decode(id)?, decode(secret)?))
}

/// How the token, revocation and introspection endpoints start: the project and the form.
async fn endpoint(
    req: &mut Request,
    env: &Env,
    project: &str,
) -> Result<(D1Database, Project, Vec<(String, String)>), Error> {
    let db = d1::db(env)?;
    let project = d1::project_by_slug(&db, project).await?;
    let form = token_form(req)
        .await
        .map_err(|e| invalid_request(e.detail))?;
    Ok((db, project, form))
}

/// `POST /v1/{project}/oauth/token`: `authorization_code` (with PKCE), `refresh_token` (rotation
/// with reuse detection) and `client_credentials` (confidential clients).
pub async fn token(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
) -> Result<Response, Error> {
    let (db, project, form) = endpoint(&mut req, env, project).await?;
    let field = |k: &str| form_field(&form, k);
    let grant_type =
        field("grant_type").ok_or_else(|| invalid_request("`grant_type` is required."))?;
    let client = client_of(&req, &form, &db, &project).await?;
    let ip = client_ip(&req);
    let now = now_ms();
    let ctx_ = Issue {
        env,
        ctx,
        db: &db,
        project: &project,
        client: &client,
        ip,
        now,
        issuer: issuer(&req, &project.slug),
    };
    let answer = match grant_type.as_str() {
        "authorization_code" => {
            let code = field("code").ok_or_else(|| invalid_request("`code` is required."))?;
            let redirect_uri = field("redirect_uri");
            let verifier = field("code_verifier").ok_or_else(|| invalid_request("`code_verifier` is required (PKCE)."))?;
            redeem_code(&ctx_, &code, redirect_uri.as_deref(), &verifier).await?
        }
        "refresh_token" => {
            let token = field("refresh_token").ok_or_else(|| invalid_request("`refresh_token` is required."))?;
            refresh(&ctx_, &token, field("scope")).await?
        }
        "client_credentials" => client_credentials(&ctx_, field("scope"), field("resource")).await?,
        other => {
            return Err(oauth_err(
                Problem::UnsupportedGrantType,
                "unsupported_grant_type",
                format!("`{}` is not supported: use authorization_code, refresh_token or client_credentials.", short(other)),
            ))
        }
    };
    no_store(json(200, &answer)?)
}

/// What every token issuance needs.
struct Issue<'a> {
    env: &'a Env,
    ctx: &'a Context,
    db: &'a D1Database,
    project: &'a Project,
    client: &'a OAuthClient,
    ip: Option<String>,
    now: i64,
    /// `{origin}/v1/{project}` as this request sees it.
    issuer: String,
}

impl Issue<'_> {
    fn event(&self, kind: &'static str, consumer: &str, grant: &str) {
        record_event(
            self.ctx,
            self.env,
            identity::EventDraft {
                consumer_id: Some(consumer.to_string()),
                ip: self.ip.clone(),
                detail: Some(format!("{} {grant}", self.client.id)),
                ..event(&self.project.id, kind)
            },
        );
    }

    fn access_token(
        &self,
        consumer: &str,
        session_id: &str,
        scope: &str,
        resource: Option<&str>,
    ) -> Result<String, Error> {
        let claims = oauth_access_claims(
            &self.project.slug,
            consumer,
            session_id,
            self.now / 1000,
            self.project.access_token_ttl_s,
            &OAuthClaims {
                client_id: self.client.id.clone(),
                scope: scope.to_string(),
                resource: resource.map(str::to_string),
            },
        );
        Ok(current_key(self.env, self.project)?.sign(&claims))
    }

    /// The grant's user must still exist and be enabled.
    async fn user(&self, consumer_id: &str) -> Result<Consumer, Error> {
        match d1::find_consumer(self.db, &self.project.id, consumer_id).await? {
            Some(c) if c.status == ConsumerStatus::Enabled => Ok(c),
            Some(_) => Err(invalid_grant("The user of this grant is disabled.")),
            None => Err(invalid_grant("The user of this grant no longer exists.")),
        }
    }

    /// A grant whose refresh token was rotated for a user who may no longer have tokens (disabled,
    /// or gone): it ends, so the token the client never received cannot later look like a replay.
    async fn end_grant(&self, session: &Session) -> Result<(), Error> {
        sign_out(self.env, self.project, &session.consumer_id, &session.id).await?;
        d1::record_revoked_grant(self.db, &grant_row(self, session, Some(self.now))).await
    }

    /// A grant revoked for a replayed code or refresh token: its tokens fail on the next request.
    /// Its row is written revoked even if the redemption that made it has not written it yet.
    async fn revoke_replayed(&self, session: &Session, kind: &'static str) -> Result<(), Error> {
        end_session(self.env, self.project, &session.consumer_id, &session.id).await?;
        d1::record_revoked_grant(self.db, &grant_row(self, session, Some(self.now))).await?;
        self.event(kind, &session.consumer_id, &session.id);
        Ok(())
    }
}

/// The listing row of a code grant's session.
fn grant_row(i: &Issue<'_>, session: &Session, revoked_at: Option<i64>) -> OAuthGrant {
    let grant = session.oauth.as_ref();
    OAuthGrant {
        id: session.id.clone(),
        project_id: i.project.id.clone(),
        client_id: grant.map_or_else(|| i.client.id.clone(), |g| g.client_id.clone()),
        consumer_id: session.consumer_id.clone(),
        grant_type: "authorization_code".into(),
        scope: grant.map(|g| g.scope.clone()).unwrap_or_default(),
        resource: grant.and_then(|g| g.resource.clone()),
        created_at: i.now,
        expires_at: session.expires_at,
        revoked_at,
        client_name: None,
    }
}

fn tagged_session(env: &Env, session_id: &str) -> Result<bool, Error> {
    Ok(session_id_kind(encryption_secret(env)?.as_bytes(), session_id) == SessionIdKind::Tagged)
}

async fn redeem_code(
    i: &Issue<'_>,
    code: &str,
    redirect_uri: Option<&str>,
    verifier: &str,
) -> Result<Value, Error> {
    if !verifier_is_valid(verifier) {
        return Err(invalid_grant(
            "`code_verifier` must be 43 to 128 unreserved characters (RFC 7636).",
        ));
    }
    let Some((session_id, secret)) =
        parse_code(code).filter(|(sid, _)| tagged_session(i.env, sid).unwrap_or(false))
    else {
        return Err(invalid_grant("Unknown authorization code."));
    };
    let (refresh_token, new_hash) = with_random(|r| new_refresh(&session_id, r))?;
    let op = GuardRequest::RedeemCode {
        now: i.now,
        project: i.project.id.clone(),
        client_id: i.client.id.clone(),
        secret,
        redirect_uri: redirect_uri.map(str::to_string),
        verifier_s256: s256(verifier),
        new_hash,
    };
    match objects::call(i.env, &Guard::Session { id: &session_id }, &op).await? {
        GuardReply::Rotated { session } => {
            let grant = session
                .oauth
                .clone()
                .ok_or_else(|| invalid_grant("Unknown authorization code."))?;
            let user = i.user(&session.consumer_id).await?;
            d1::create_oauth_grant(i.db, &grant_row(i, &session, None)).await?;
            let access = i.access_token(
                &user.id,
                &session.id,
                &grant.scope,
                grant.resource.as_deref(),
            )?;
            i.event("oauth_token_issued", &user.id, &session.id);
            // A project that requires DPoP hands out no bearer refresh token.
            let refresh = (!i.project.sign_in.require_dpop).then_some(refresh_token);
            Ok(token_answer(i.project, access, refresh, &grant.scope))
        }
        GuardReply::Reused { session } => {
            i.revoke_replayed(&session, "oauth_code_reused").await?;
            Err(invalid_grant("This authorization code was already used: every token issued from it is now revoked."))
        }
        GuardReply::Refused { reason } => Err(invalid_grant(format!(
            "The authorization code was refused: {reason}."
        ))),
        _ => Err(invalid_grant("Unknown authorization code.")),
    }
}

async fn refresh(i: &Issue<'_>, token: &str, scope: Option<String>) -> Result<Value, Error> {
    let Some((session_id, secret)) =
        parse_refresh(token).filter(|(sid, _)| tagged_session(i.env, sid).unwrap_or(false))
    else {
        return Err(invalid_grant("Unknown refresh token."));
    };
    // A narrower scope may be asked for (RFC 6749 §6); checked by the grant's object before it
    // rotates, so a refused scope does not cost the client its refresh token.
    let asked = match &scope {
        Some(s) => Some(parse_scope(s).map_err(invalid_scope)?),
        None => None,
    };
    let (new_token, new_hash) = with_random(|r| new_refresh(&session_id, r))?;
    let op = GuardRequest::Rotate {
        now: i.now,
        project: i.project.id.clone(),
        secret,
        new_hash,
        jkt: None,
        client_id: Some(i.client.id.clone()),
        scope: asked.clone(),
        proof_jti: None,
    };
    match objects::call(i.env, &Guard::Session { id: &session_id }, &op).await? {
        GuardReply::Rotated { session } => {
            let grant = session
                .oauth
                .clone()
                .ok_or_else(|| invalid_grant("Unknown refresh token."))?;
            let user = match i.user(&session.consumer_id).await {
                Ok(user) => user,
                // Disabled or gone (a storage failure leaves the grant alone).
                Err(e) if e.problem == Problem::InvalidGrant => {
                    i.end_grant(&session).await?;
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            let mut scopes = asked.unwrap_or_else(|| parse_scope(&grant.scope).unwrap_or_default());
            // An owner who narrowed the client's scopes since narrows its new tokens too.
            if let Some(allowed) = &i.client.scopes {
                scopes.retain(|s| allowed.contains(s));
            }
            let scope = scopes.join(" ");
            let access =
                i.access_token(&user.id, &session.id, &scope, grant.resource.as_deref())?;
            i.event("oauth_refresh", &user.id, &session.id);
            Ok(token_answer(i.project, access, Some(new_token), &scope))
        }
        GuardReply::Reused { session } => {
            i.revoke_replayed(&session, "oauth_refresh_reuse").await?;
            Err(invalid_grant(
                "This refresh token was already used: the grant is revoked, sign in again.",
            ))
        }
        GuardReply::Refused { reason } if reason.starts_with(SCOPE_NOT_GRANTED) => {
            Err(invalid_scope(reason))
        }
        GuardReply::Refused { reason } => Err(invalid_grant(format!(
            "The refresh token was refused: {reason}."
        ))),
        _ => Err(invalid_grant("Unknown refresh token.")),
    }
}

async fn client_credentials(
    i: &Issue<'_>,
    scope: Option<String>,
    resource: Option<String>,
) -> Result<Value, Error> {
    if i.client.client_type != ClientType::Confidential {
        return Err(oauth_err(
            Problem::UnauthorizedClient,
            "unauthorized_client",
            "Only confidential clients may use client_credentials.",
        ));
    }
    let consumer_id = i
        .client
        .consumer_id
        .clone()
        .ok_or_else(|| Error::internal("This client has no consumer."))?;
    let user = i.user(&consumer_id).await?;
    let asked = parse_scope(scope.as_deref().unwrap_or_default()).map_err(invalid_scope)?;
    let scope = grant_scopes(&asked, i.client.scopes.as_deref())
        .map_err(invalid_scope)?
        .join(" ");
    if let Some(r) = &resource {
        check_resource(i.db, i.project, &i.issuer, r)
            .await
            .map_err(|m| oauth_err(Problem::InvalidRequest, "invalid_target", m))?;
    }
    let pepper = encryption_secret(i.env)?;
    let session_id = with_random(|r| new_session_id(pepper.as_bytes(), r))?;
    let (_, unused) = with_random(|r| new_refresh(&session_id, r))?;
    let mut session = Session::new(
        session_id.clone(),
        i.project.id.clone(),
        user.id.clone(),
        None,
        unused,
        i.now,
    );
    // Lives as long as its one access token (plus the counters' margin).
    session.expires_at = i.now + i.project.access_token_ttl_s.saturating_mul(1000) + 60_000;
    session.oauth = Some(GrantInfo {
        client_id: i.client.id.clone(),
        scope: scope.clone(),
        resource: resource.clone(),
        code: None,
    });
    let expires_at = session.expires_at;
    objects::create_session(i.env, &session_id, session).await?;
    d1::create_oauth_grant(
        i.db,
        &OAuthGrant {
            id: session_id.clone(),
            project_id: i.project.id.clone(),
            client_id: i.client.id.clone(),
            consumer_id: user.id.clone(),
            grant_type: "client_credentials".into(),
            scope: scope.clone(),
            resource: resource.clone(),
            created_at: i.now,
            expires_at,
            revoked_at: None,
            client_name: None,
        },
    )
    .await?;
    let access = i.access_token(&user.id, &session_id, &scope, resource.as_deref())?;
    i.event("oauth_token_issued", &user.id, &session_id);
    Ok(token_answer(i.project, access, None, &scope))
}

fn token_answer(project: &Project, access: String, refresh: Option<String>, scope: &str) -> Value {
    let mut body = json!({"access_token": access, "token_type": "Bearer", "expires_in": project.access_token_ttl_s, "scope": scope});
    if let (Some(r), Some(obj)) = (refresh, body.as_object_mut()) {
        obj.insert("refresh_token".into(), Value::from(r));
    }
    body
}

/// What a presented token stands for: its grant (session) and, for a refresh token, its secret.
fn grant_of_token(
    env: &Env,
    project: &Project,
    token: &str,
    now: i64,
) -> Option<(String, Option<String>, serde_json::Map<String, Value>)> {
    if let Some((sid, secret)) = parse_refresh(token) {
        return tagged_session(env, &sid)
            .ok()?
            .then(|| (sid, Some(secret), Default::default()));
    }
    let claims = verify_sluice_token(env, project, token, now).ok()?;
    match classify(&claims)? {
        SluiceToken::Access { session_id, .. } => Some((session_id, None, claims)),
        SluiceToken::Exchange { .. } => None,
    }
}

/// `POST /v1/{project}/oauth/revoke` (RFC 7009): ends the grant of an access or refresh token the
/// client holds. Always 200 for a token that is unknown or not the client's.
pub async fn revoke(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
) -> Result<Response, Error> {
    let (db, project, form) = endpoint(&mut req, env, project).await?;
    let client = client_of(&req, &form, &db, &project).await?;
    let token =
        form_field(&form, "token").ok_or_else(|| invalid_request("`token` is required."))?;
    let now = now_ms();
    if let Some((sid, secret, claims)) = grant_of_token(env, &project, &token, now) {
        // An access token names its client in its claims; a refresh token's grant is checked by its object.
        let mine = secret.is_some() || oauth_of(&claims).is_some_and(|o| o.client_id == client.id);
        if mine {
            let op = GuardRequest::RevokeGrant {
                project: project.id.clone(),
                client_id: Some(client.id.clone()),
                secret,
            };
            if let GuardReply::Revoked { session: Some(s) } =
                objects::call(env, &Guard::Session { id: &sid }, &op).await?
            {
                end_session(env, &project, &s.consumer_id, &sid).await?;
                d1::revoke_oauth_grant(&db, &sid, now).await?;
                record_event(
                    ctx,
                    env,
                    identity::EventDraft {
                        consumer_id: Some(s.consumer_id),
                        ip: client_ip(&req),
                        detail: Some(format!("{} {sid}", client.id)),
                        ..event(&project.id, "oauth_revoked")
                    },
                );
            }
        }
    }
    no_store(json(200, &json!({}))?)
}

/// `POST /v1/{project}/oauth/introspect` (RFC 7662), for confidential clients: whether a token is
/// active, and what it grants.
pub async fn introspect(mut req: Request, env: &Env, project: &str) -> Result<Response, Error> {
    let (db, project, form) = endpoint(&mut req, env, project).await?;
    let client = client_of(&req, &form, &db, &project).await?;
    if client.client_type != ClientType::Confidential {
        return Err(invalid_client("Introspection is for confidential clients."));
    }
    let token =
        form_field(&form, "token").ok_or_else(|| invalid_request("`token` is required."))?;
    let now = now_ms();
    let inactive = json!({"active": false});
    let Some((sid, secret, claims)) = grant_of_token(env, &project, &token, now) else {
        return no_store(json(200, &inactive)?);
    };
    // A client learns about its own grants only, and only while their user may call.
    // A refresh token comes with its secret; an access token with its claims.
    let access_token = secret.is_none();
    let (grant, sub, exp, iat) = match secret {
        Some(secret) => match objects::call(
            env,
            &Guard::Session { id: &sid },
            &GuardRequest::Describe { now, secret },
        )
        .await?
        {
            GuardReply::Described { session: Some(s) } if s.project == project.id => {
                match s.oauth {
                    Some(g) => (g, s.consumer_id, s.expires_at / 1000, s.created_at / 1000),
                    None => return no_store(json(200, &inactive)?),
                }
            }
            _ => return no_store(json(200, &inactive)?),
        },
        None => {
            let Some(oauth) = oauth_of(&claims) else {
                return no_store(json(200, &inactive)?);
            };
            if identity::ensure_session_live(env, &sid, None)
                .await
                .is_err()
            {
                return no_store(json(200, &inactive)?);
            }
            let num = |k: &str| claims.get(k).and_then(Value::as_i64).unwrap_or_default();
            let sub = claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let grant = GrantInfo {
                client_id: oauth.client_id,
                scope: oauth.scope,
                resource: oauth.resource,
                code: None,
            };
            (grant, sub, num("exp"), num("iat"))
        }
    };
    let enabled = d1::find_consumer(&db, &project.id, &sub)
        .await?
        .is_some_and(|c| c.status == ConsumerStatus::Enabled);
    if grant.client_id != client.id || !enabled {
        return no_store(json(200, &inactive)?);
    }
    let mut answer = json!({"active": true, "client_id": grant.client_id, "scope": grant.scope,
        "sub": sub, "exp": exp, "iat": iat, "iss": issuer(&req, &project.slug)});
    if let (Some(obj), true) = (answer.as_object_mut(), access_token) {
        obj.insert("token_type".into(), Value::from("Bearer"));
        if let Some(aud) = claims.get("aud") {
            obj.insert("aud".into(), aud.clone());
        }
    }
    no_store(json(200, &answer)?)
}

/// `POST /v1/{project}/oauth/register` (RFC 7591): public clients only, when the project allows it,
/// limited per client network.
pub async fn register(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
) -> Result<Response, Error> {
    let db = d1::db(env)?;
    let project = d1::project_by_slug(&db, project).await?;
    if !project.sign_in.oauth_dynamic_registration {
        return Err(Error::not_found(format!(
            "Dynamic client registration is off for project `{}` (its owner can set `oauth_dynamic_registration`).",
            project.slug
        )));
    }
    let ip = client_ip(&req);
    let network = crate::auth::cidr::client_network(ip.as_deref());
    let now = now_ms();
    if d1::dynamic_client_count(&db, &project.id).await? >= MAX_DYNAMIC_CLIENTS {
        return Err(oauth_err(
            Problem::Forbidden,
            "access_denied",
            format!("Project `{}` has its {MAX_DYNAMIC_CLIENTS} self-registered clients: its owner can delete unused ones.", project.slug),
        ));
    }
    let op = GuardRequest::NetworkRegister {
        now,
        max_per_hour: project.sign_in.oauth_registrations_per_network_per_hour as usize,
    };
    if let GuardReply::Throttled { retry_after_s } = objects::call(
        env,
        &Guard::Network {
            project_id: &project.id,
            network: &network,
        },
        &op,
    )
    .await?
    {
        return Err(super::auth::too_many(
            format!(
                "Too many client registrations from this network; try again in {retry_after_s} s."
            ),
            retry_after_s,
        ));
    }
    let body = read_body(&mut req, FORM_LIMIT).await?;
    let meta: Value = serde_json::from_slice(&body)
        .map_err(|_| reg_error("invalid_client_metadata", "The body is not a JSON object."))?;
    let client = registered_client(&meta, &project, now)?;
    d1::create_oauth_client(&db, &client).await?;
    record_event(
        ctx,
        env,
        identity::EventDraft {
            ip,
            detail: Some(client.id.clone()),
            ..event(&project.id, "oauth_client_registered")
        },
    );
    let mut answer = json!({
        "client_id": client.id, "client_id_issued_at": now / 1000, "client_name": client.name,
        "redirect_uris": client.redirect_uris, "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
    });
    if let (Some(scopes), Some(obj)) = (&client.scopes, answer.as_object_mut()) {
        obj.insert("scope".into(), Value::from(scopes.join(" ")));
    }
    no_store(json(201, &answer)?)
}

fn reg_error(code: &'static str, description: impl Into<String>) -> Error {
    oauth_err(Problem::InvalidRequest, code, description)
}

/// The public client an RFC 7591 request describes (unknown metadata is ignored, as §2 allows).
fn registered_client(meta: &Value, project: &Project, now: i64) -> Result<OAuthClient, Error> {
    let strings = |v: &Value| -> Option<Vec<String>> {
        v.as_array()?
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let uris = meta.get("redirect_uris").and_then(strings).ok_or_else(|| {
        reg_error(
            "invalid_redirect_uri",
            "`redirect_uris` is a list of strings.",
        )
    })?;
    if uris.is_empty() || uris.len() > oauth::MAX_REDIRECT_URIS {
        return Err(reg_error(
            "invalid_redirect_uri",
            format!(
                "`redirect_uris` lists 1 to {} URIs.",
                oauth::MAX_REDIRECT_URIS
            ),
        ));
    }
    for u in &uris {
        validate_redirect_uri(u).map_err(|m| reg_error("invalid_redirect_uri", m))?;
    }
    match meta
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)
    {
        None | Some("none") => {}
        Some(_) => {
            return Err(reg_error(
                "invalid_client_metadata",
                "Only public clients register here: `token_endpoint_auth_method` is `none`.",
            ))
        }
    }
    if let Some(grants) = meta.get("grant_types") {
        let ok = strings(grants).is_some_and(|g| {
            g.iter()
                .all(|g| g == "authorization_code" || g == "refresh_token")
        });
        if !ok {
            return Err(reg_error(
                "invalid_client_metadata",
                "`grant_types` may be authorization_code and refresh_token.",
            ));
        }
    }
    if let Some(types) = meta.get("response_types") {
        if !strings(types).is_some_and(|t| t.iter().all(|t| t == "code")) {
            return Err(reg_error(
                "invalid_client_metadata",
                "`response_types` may only be code.",
            ));
        }
    }
    let scopes = match meta.get("scope") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            Some(parse_scope(s).map_err(|m| reg_error("invalid_client_metadata", m))?)
        }
        Some(_) => {
            return Err(reg_error(
                "invalid_client_metadata",
                "`scope` is a space-separated string.",
            ))
        }
    };
    let name = meta
        .get("client_name")
        .and_then(Value::as_str)
        .map(|n| n.trim().chars().take(200).collect::<String>())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "Unnamed app".into());
    Ok(OAuthClient {
        id: with_random(|r| new_id("cli", r))?,
        project_id: project.id.clone(),
        name,
        client_type: ClientType::Public,
        redirect_uris: uris,
        scopes,
        secret_hash: None,
        consumer_id: None,
        dynamic: true,
        created_at: now,
        updated_at: now,
    })
}

// ---------------------------------------------------------------------------------------------
// Grants.

/// `GET /v1/{project}/auth/grants`: the signed-in user's live OAuth grants.
pub async fn list_grants(req: Request, env: &Env, project: &str) -> Result<Response, Error> {
    let db = d1::db(env)?;
    let project = d1::project_by_slug(&db, project).await?;
    let (consumer, _) = signed_in(&req, env, &project).await?;
    let grants: Vec<Value> =
        d1::list_oauth_grants(&db, &project.id, Some(&consumer), None, now_ms())
            .await?
            .iter()
            .map(OAuthGrant::to_json)
            .collect();
    json(200, &json!({ "grants": grants }))
}

/// `DELETE /v1/{project}/auth/grants/{grant}`: the user revokes one of their grants.
pub async fn delete_grant(
    req: Request,
    env: &Env,
    ctx: &Context,
    project: &str,
    grant: &str,
) -> Result<Response, Error> {
    let db = d1::db(env)?;
    let project = d1::project_by_slug(&db, project).await?;
    let (consumer, _) = signed_in(&req, env, &project).await?;
    match d1::oauth_grant(&db, &project.id, grant).await? {
        Some(g) if g.consumer_id == consumer && g.revoked_at.is_none() => {
            revoke_grant(env, &db, &project, &g, now_ms()).await?;
            record_event(
                ctx,
                env,
                identity::EventDraft {
                    consumer_id: Some(consumer),
                    ip: client_ip(&req),
                    detail: Some(format!("{} {}", g.client_id, g.id)),
                    ..event(&project.id, "oauth_grant_revoked")
                },
            );
            no_content()
        }
        _ => Err(Error::not_found(format!(
            "You have no live grant `{}`.",
            short(grant)
        ))),
    }
}

/// Ends a grant everywhere: its session object, the counters its access tokens reach, its row.
pub async fn revoke_grant(
    env: &Env,
    db: &D1Database,
    project: &Project,
    g: &OAuthGrant,
    now: i64,
) -> Result<(), Error> {
    sign_out(env, project, &g.consumer_id, &g.id).await?;
    d1::revoke_oauth_grant(db, &g.id, now).await
}

/// A new confidential client's secret (shown once) and its hash, for the admin API.
pub fn client_secret() -> Result<(String, String), Error> {
    with_random(new_client_secret)
}
