//! The project's OAuth 2.1 authorization server end to end: discovery, the authorize page driven as a
//! plain form flow, PKCE S256, single-use codes, refresh rotation and reuse, scopes and resources,
//! confidential clients, revocation and introspection, dynamic registration, grants, and a standard
//! OAuth client library (oauth4webapi) running the flow against the metadata.

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![
        oauth_authorization_code_flow_with_pkce,
        oauth_scopes_resources_and_grants,
        oauth_confidential_clients_and_dynamic_registration,
        oauth_library_runs_the_flow_against_the_metadata,
    ]
}

const REDIRECT: &str = "http://127.0.0.1:9/cb";

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

struct Pkce {
    verifier: String,
    challenge: String,
}

fn pkce(tag: &str) -> Pkce {
    // 64 unreserved characters, different per tag.
    let verifier: String = Sha256::digest(tag.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let challenge = B64URL.encode(Sha256::digest(verifier.as_bytes()));
    Pkce {
        verifier,
        challenge,
    }
}

/// What an authorization request names.
struct Ask<'a> {
    project: &'a str,
    client_id: &'a str,
    redirect_uri: &'a str,
    scope: &'a str,
    state: &'a str,
    challenge: &'a str,
    method: &'a str,
    resource: Option<&'a str>,
}

impl Ask<'_> {
    fn url(&self, base: &str) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("response_type", "code")
            .append_pair("client_id", self.client_id)
            .append_pair("redirect_uri", self.redirect_uri)
            .append_pair("scope", self.scope)
            .append_pair("state", self.state)
            .append_pair("code_challenge", self.challenge);
        if !self.method.is_empty() {
            q.append_pair("code_challenge_method", self.method);
        }
        if let Some(r) = self.resource {
            q.append_pair("resource", r);
        }
        format!("{base}/v1/{}/oauth/authorize?{}", self.project, q.finish())
    }
}

/// The value of the hidden input `name` in a page.
fn hidden(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_string())
}

async fn form(
    http: &reqwest::Client,
    url: &str,
    fields: &[(&str, &str)],
    ip: &str,
) -> Result<Reply> {
    Reply::read(
        http.post(url)
            .header("cf-connecting-ip", ip)
            .form(fields)
            .timeout(STREAM_LIMIT)
            .send()
            .await?,
    )
    .await
}

/// Drives the authorize page as a script would (no cookies kept): the email form, the code from the
/// mail, then consent. Returns the `Location` the consent answer redirects to.
async fn authorize(c: &Ctx, url: &str, email: &str, ip: &str, consent: &str) -> Result<String> {
    authorize_carrying(c, url, email, ip, consent, false).await
}

/// The same; with `by_cookie`, the consent form is sent as a cookie-keeping script would send it:
/// `consent` alone, the signed-in step carried by the cookie the code step set.
async fn authorize_carrying(
    c: &Ctx,
    url: &str,
    email: &str,
    ip: &str,
    consent: &str,
    by_cookie: bool,
) -> Result<String> {
    let http = no_redirects();
    let page = Reply::read(http.get(url).send().await?).await?;
    expect_status(&page, 200, "the authorize page")?;
    assert!(
        page.content_type().starts_with("text/html"),
        "{}",
        page.describe()
    );
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("frame-ancestors 'none'"), "CSP: {csp}");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(!page.text.contains("<script"), "no JavaScript on the page");
    let seen = c.mail.mails_to(email).len();
    let sent = form(&http, url, &[("email", email)], ip).await?;
    expect_status(&sent, 200, "the email step")?;
    let challenge = hidden(&sent.text, "challenge_id")
        .ok_or_else(|| format!("no challenge_id: {}", sent.text))?;
    let mail = c.mail.wait_for_mail(email, seen, MAIL_WAIT).await?;
    let code = mail.code().ok_or("no code in the mail")?;
    let signed = form(
        &http,
        url,
        &[
            ("email", email),
            ("code", &code),
            ("challenge_id", &challenge),
        ],
        ip,
    )
    .await?;
    expect_status(&signed, 200, "the code step")?;
    assert!(
        signed.text.contains("Allow"),
        "the consent page: {}",
        signed.text
    );
    let transaction =
        hidden(&signed.text, "transaction").ok_or("no transaction on the consent page")?;
    let answered = if by_cookie {
        let cookie = signed
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .ok_or("the code step set no cookie")?
            .to_string();
        Reply::read(
            http.post(url)
                .header("cf-connecting-ip", ip)
                .header("cookie", cookie)
                .form(&[("consent", consent)])
                .send()
                .await?,
        )
        .await?
    } else {
        form(
            &http,
            url,
            &[("consent", consent), ("transaction", &transaction)],
            ip,
        )
        .await?
    };
    expect_status(&answered, 302, "the consent step")?;
    Ok(answered
        .header("location")
        .ok_or("no Location")?
        .to_string())
}

/// The query parameters of a redirect.
fn query_of(location: &str) -> BTreeMap<String, String> {
    let q = location.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn token(
    c: &Ctx,
    project: &str,
    fields: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> Result<Reply> {
    oauth_post(c, project, "token", fields, basic).await
}

/// A refresh by `client_id` (a public client).
async fn refresh_with(c: &Ctx, project: &str, refresh: &str, client_id: &str) -> Result<Reply> {
    let fields = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh),
        ("client_id", client_id),
    ];
    token(c, project, &fields, None).await
}

/// The code a consent redirect carries.
fn code_in(location: &str) -> Result<String> {
    query_of(location)
        .get("code")
        .cloned()
        .ok_or_else(|| format!("no code in {location}").into())
}

/// The authorization-code exchange of a public client; `redirect_uri` only when given.
async fn exchange(
    c: &Ctx,
    project: &str,
    client_id: &str,
    code: &str,
    verifier: &str,
    redirect_uri: Option<&str>,
) -> Result<Reply> {
    let mut fields = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("code_verifier", verifier),
        ("client_id", client_id),
    ];
    if let Some(uri) = redirect_uri {
        fields.push(("redirect_uri", uri));
    }
    token(c, project, &fields, None).await
}

async fn oauth_post(
    c: &Ctx,
    project: &str,
    endpoint: &str,
    fields: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> Result<Reply> {
    let mut req = c
        .http
        .post(format!("{}/v1/{project}/oauth/{endpoint}", c.base))
        .form(fields);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    Reply::read(req.timeout(STREAM_LIMIT).send().await?).await
}

fn assert_oauth_error(r: &Reply, status: u16, error: &str) {
    assert_eq!(r.status, status, "{}", r.describe());
    assert!(
        r.content_type().starts_with("application/json"),
        "{}",
        r.describe()
    );
    assert_eq!(r.json()["error"], error, "{}", r.describe());
    assert!(
        r.json()["error_description"].is_string(),
        "{}",
        r.describe()
    );
}

async fn new_client(c: &Ctx, project: &str, body: Value) -> Result<Value> {
    let r = c
        .admin
        .call(
            Method::POST,
            &format!("/api/v1/projects/{project}/oauth/clients"),
            Some(body),
        )
        .await?;
    expect_status(&r, 201, "create an OAuth client")?;
    Ok(r.json())
}

/// The whole authorization-code flow for a public client; returns the token answer.
#[allow(clippy::too_many_arguments)]
async fn code_and_tokens(
    c: &Ctx,
    project: &str,
    client_id: &str,
    scope: &str,
    resource: Option<&str>,
    email: &str,
    ip: &str,
) -> Result<Value> {
    let p = pkce(email);
    let ask = Ask {
        project,
        client_id,
        redirect_uri: REDIRECT,
        scope,
        state: "st-1",
        challenge: &p.challenge,
        method: "S256",
        resource,
    };
    let location = authorize(c, &ask.url(&c.base), email, ip, "allow").await?;
    let code = code_in(&location)?;
    let r = exchange(c, project, client_id, &code, &p.verifier, Some(REDIRECT)).await?;
    expect_status(&r, 200, "code exchange")?;
    Ok(r.json())
}

async fn chat_with(c: &Ctx, project: &str, api: &str, token: &str) -> Result<Reply> {
    Reply::read(
        chat_request(
            &c.http,
            &c.base,
            project,
            api,
            Some((token, KeyHeader::Bearer)),
        )
        .json(&chat_body(None, "hello", false))
        .timeout(STREAM_LIMIT)
        .send()
        .await?,
    )
    .await
}

async fn managed_tenant(c: &Ctx, slug: &str) -> Result<Tenant> {
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    let switched = put_auth_mode(c, &t.api_id, json!({"auth_mode": "managed"})).await?;
    expect_status(&switched, 200, "managed mode")?;
    Ok(t)
}

pub async fn oauth_authorization_code_flow_with_pkce(c: Arc<Ctx>) -> CaseResult {
    let slug = "oauth-flow";
    let t = managed_tenant(&c, slug).await?;
    let client = new_client(&c, slug, json!({"name": "Notes App", "type": "public", "redirect_uris": [REDIRECT, "https://notes.example/cb"]})).await?;
    let client_id = str_field(&client, "client_id")?;
    assert!(
        client.get("client_secret").is_none(),
        "a public client has no secret: {client}"
    );

    // Discovery: RFC 8414 with the exact issuer, RFC 9728 per API, and the 401 that points to it.
    let issuer = format!("{}/v1/{slug}", c.base);
    let meta = Reply::read(
        c.http
            .get(format!(
                "{}/.well-known/oauth-authorization-server/v1/{slug}",
                c.base
            ))
            .send()
            .await?,
    )
    .await?;
    expect_status(&meta, 200, "AS metadata")?;
    let m = meta.json();
    assert_eq!(m["issuer"], issuer.as_str(), "{m}");
    assert_eq!(
        m["code_challenge_methods_supported"],
        json!(["S256"]),
        "{m}"
    );
    assert_eq!(
        m["authorization_endpoint"],
        format!("{issuer}/oauth/authorize"),
        "{m}"
    );
    assert_eq!(m["token_endpoint"], format!("{issuer}/oauth/token"), "{m}");
    assert_eq!(
        m["authorization_response_iss_parameter_supported"], true,
        "{m}"
    );
    assert!(
        m.get("registration_endpoint").is_none(),
        "DCR is off by default: {m}"
    );
    let prm = Reply::read(
        c.http
            .get(format!(
                "{}/.well-known/oauth-protected-resource/v1/{slug}/chat",
                c.base
            ))
            .send()
            .await?,
    )
    .await?;
    expect_status(&prm, 200, "protected resource metadata")?;
    assert_eq!(prm.json()["resource"], format!("{issuer}/chat"));
    assert_eq!(prm.json()["authorization_servers"], json!([issuer]));
    let anonymous = chat_with(&c, slug, "chat", "").await?;
    let challenge = anonymous
        .header("www-authenticate")
        .unwrap_or_default()
        .to_string();
    assert_eq!(anonymous.status, 401, "{}", anonymous.describe());
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"{}/.well-known/oauth-protected-resource/v1/{slug}/chat\"",
            c.base
        )),
        "WWW-Authenticate: {challenge}"
    );

    // Refused without a redirect: plain or missing PKCE, a redirect URI with an extra path or query,
    // an unknown client.
    let p = pkce("refusals");
    let base_ask = Ask {
        project: slug,
        client_id: &client_id,
        redirect_uri: REDIRECT,
        scope: "",
        state: "s",
        challenge: &p.challenge,
        method: "S256",
        resource: None,
    };
    let plain = Ask {
        method: "plain",
        challenge: &p.verifier,
        ..base_ask
    };
    let missing = Ask {
        method: "",
        ..base_ask
    };
    let extra_path = Ask {
        redirect_uri: "http://127.0.0.1:9/cb/extra",
        ..base_ask
    };
    let extra_query = Ask {
        redirect_uri: "http://127.0.0.1:9/cb?x=1",
        ..base_ask
    };
    let unknown = Ask {
        client_id: "cli_nobody",
        ..base_ask
    };
    for (what, ask) in [
        ("plain", plain),
        ("no PKCE", missing),
        ("extra path", extra_path),
        ("extra query", extra_query),
        ("unknown client", unknown),
    ] {
        let r = Reply::read(no_redirects().get(ask.url(&c.base)).send().await?).await?;
        assert_eq!(r.status, 400, "{what}: {}", r.describe());
        assert!(r.header("location").is_none(), "{what} must not redirect");
        assert!(
            r.content_type().starts_with("text/html"),
            "{what}: an error page"
        );
    }
    // A loopback redirect URI may use any port (RFC 8252).
    let other_port = Ask {
        redirect_uri: "http://127.0.0.1:54321/cb",
        ..base_ask
    };
    let r = Reply::read(no_redirects().get(other_port.url(&c.base)).send().await?).await?;
    expect_status(&r, 200, "a loopback redirect on another port")?;
    assert!(
        !r.text.contains("Unverified app"),
        "an owner-registered client is not marked: {}",
        r.text
    );
    // Once the client and redirect URI are trusted, errors go back to the client.
    let bad_type = Ask { ..base_ask }
        .url(&c.base)
        .replace("response_type=code", "response_type=token");
    let r = Reply::read(no_redirects().get(bad_type).send().await?).await?;
    expect_status(&r, 302, "response_type=token")?;
    let q = query_of(r.header("location").unwrap_or_default());
    assert_eq!(
        q.get("error").map(String::as_str),
        Some("unsupported_response_type"),
        "{q:?}"
    );
    assert_eq!(q.get("iss").map(String::as_str), Some(issuer.as_str()));
    // A form posted from another origin is refused (CSRF).
    let cross = Reply::read(
        no_redirects()
            .post(base_ask.url(&c.base))
            .header("origin", "https://evil.example")
            .form(&[("email", "x@example.com")])
            .send()
            .await?,
    )
    .await?;
    assert_eq!(cross.status, 403, "{}", cross.describe());

    // A wrong verifier is refused and uses the code up.
    let email = "oauth.flow.one@example.com";
    let p1 = pkce("one");
    let ask = Ask {
        project: slug,
        client_id: &client_id,
        redirect_uri: REDIRECT,
        scope: "",
        state: "state-one",
        challenge: &p1.challenge,
        method: "S256",
        resource: None,
    };
    let location = authorize(&c, &ask.url(&c.base), email, "203.0.113.11", "allow").await?;
    assert!(location.starts_with(&format!("{REDIRECT}?")), "{location}");
    let q = query_of(&location);
    assert_eq!(q.get("state").map(String::as_str), Some("state-one"));
    assert_eq!(
        q.get("iss").map(String::as_str),
        Some(issuer.as_str()),
        "RFC 9207"
    );
    let code = code_in(&location)?;
    let other = pkce("other");
    let wrong = exchange(&c, slug, &client_id, &code, &other.verifier, Some(REDIRECT)).await?;
    assert_oauth_error(&wrong, 400, "invalid_grant");
    let after = exchange(&c, slug, &client_id, &code, &p1.verifier, Some(REDIRECT)).await?;
    assert_oauth_error(&after, 400, "invalid_grant");

    // The right verifier: tokens, metered to the user; then a second use of the code revokes them.
    let email = "oauth.flow.two@example.com";
    let p2 = pkce("two");
    let ask = Ask {
        challenge: &p2.challenge,
        state: "state-two",
        ..ask
    };
    let location = authorize(&c, &ask.url(&c.base), email, "203.0.113.12", "allow").await?;
    let code = code_in(&location)?;
    let ok = exchange(&c, slug, &client_id, &code, &p2.verifier, Some(REDIRECT)).await?;
    expect_status(&ok, 200, "code exchange")?;
    assert_eq!(ok.header("cache-control"), Some("no-store"));
    let tokens = ok.json();
    assert_eq!(tokens["token_type"], "Bearer", "{tokens}");
    let access = str_field(&tokens, "access_token")?;
    let refresh = str_field(&tokens, "refresh_token")?;
    let (_, claims) = jwt_parts(&access)?;
    assert_eq!(claims["client_id"], client_id.as_str(), "{claims}");
    assert_eq!(claims["iss"], format!("sluice:{slug}"), "{claims}");
    let user = claims["sub"].as_str().ok_or("no sub")?.to_string();
    let chat = chat_with(&c, slug, "chat", &access).await?;
    expect_status(&chat, 200, "chat with the OAuth token")?;
    let usage = c
        .admin_get_until(&format!("/api/v1/gateway/apis/{}/usage", t.api_id), |v| {
            v["records"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["consumer_id"] == user.as_str()))
        })
        .await?;
    assert!(usage["records"].as_array().is_some_and(|r| !r.is_empty()));
    let again = exchange(&c, slug, &client_id, &code, &p2.verifier, Some(REDIRECT)).await?;
    assert_oauth_error(&again, 400, "invalid_grant");
    let revoked = chat_with(&c, slug, "chat", &access).await?;
    assert_eq!(
        revoked.status,
        401,
        "the code's access token is revoked: {}",
        revoked.describe()
    );
    let r = refresh_with(&c, slug, &refresh, &client_id).await?;
    assert_oauth_error(&r, 400, "invalid_grant");

    // Refresh rotation; the rotated-out token presented again revokes the grant.
    let first = code_and_tokens(
        &c,
        slug,
        &client_id,
        "",
        None,
        "oauth.flow.three@example.com",
        "203.0.113.13",
    )
    .await?;
    let r1 = str_field(&first, "refresh_token")?;
    let rotated = refresh_with(&c, slug, &r1, &client_id).await?;
    expect_status(&rotated, 200, "refresh")?;
    let r2 = str_field(&rotated.json(), "refresh_token")?;
    let a2 = str_field(&rotated.json(), "access_token")?;
    assert_ne!(r1, r2);
    expect_status(
        &chat_with(&c, slug, "chat", &a2).await?,
        200,
        "the refreshed token",
    )?;
    // Another client cannot use it.
    let other = new_client(
        &c,
        slug,
        json!({"name": "Other", "type": "public", "redirect_uris": ["https://other.example/cb"]}),
    )
    .await?;
    let stolen = refresh_with(&c, slug, &r2, &str_field(&other, "client_id")?).await?;
    assert_oauth_error(&stolen, 400, "invalid_grant");
    let reuse = refresh_with(&c, slug, &r1, &client_id).await?;
    assert_oauth_error(&reuse, 400, "invalid_grant");
    let after = refresh_with(&c, slug, &r2, &client_id).await?;
    assert_oauth_error(&after, 400, "invalid_grant");
    assert_eq!(
        chat_with(&c, slug, "chat", &a2).await?.status,
        401,
        "reuse revokes the grant's access token"
    );

    // A request that named its redirect URI needs it at the token endpoint too.
    let p5 = pkce("five");
    let ask5 = Ask {
        challenge: &p5.challenge,
        state: "state-five",
        ..ask
    };
    let location = authorize(
        &c,
        &ask5.url(&c.base),
        "oauth.flow.five@example.com",
        "203.0.113.15",
        "allow",
    )
    .await?;
    let code = code_in(&location)?;
    let r = exchange(&c, slug, &client_id, &code, &p5.verifier, None).await?;
    assert_oauth_error(&r, 400, "invalid_grant");

    // A script that keeps cookies may send `consent` alone.
    let p6 = pkce("six");
    let ask6 = Ask {
        challenge: &p6.challenge,
        state: "state-six",
        ..ask
    };
    let location = authorize_carrying(
        &c,
        &ask6.url(&c.base),
        "oauth.flow.six@example.com",
        "203.0.113.16",
        "allow",
        true,
    )
    .await?;
    assert!(query_of(&location).contains_key("code"), "{location}");
    // Without the cookie or the form's transaction, consent is not taken.
    let bare = form(
        &no_redirects(),
        &ask6.url(&c.base),
        &[("consent", "allow")],
        "203.0.113.16",
    )
    .await?;
    assert_eq!(bare.status, 400, "{}", bare.describe());
    assert!(bare.header("location").is_none());

    // Deny sends access_denied back.
    let p4 = pkce("four");
    let ask = Ask {
        challenge: &p4.challenge,
        state: "state-four",
        ..ask
    };
    let location = authorize(
        &c,
        &ask.url(&c.base),
        "oauth.flow.four@example.com",
        "203.0.113.14",
        "deny",
    )
    .await?;
    assert_eq!(
        query_of(&location).get("error").map(String::as_str),
        Some("access_denied"),
        "{location}"
    );

    let events = c
        .admin_get_until(&format!("/api/v1/projects/{slug}/auth-events"), |v| {
            let s = v.to_string();
            s.contains("oauth_code_reused")
                && s.contains("oauth_refresh_reuse")
                && s.contains("oauth_consent_denied")
        })
        .await?;
    for kind in [
        "oauth_sign_in",
        "oauth_code_issued",
        "oauth_token_issued",
        "oauth_refresh",
    ] {
        assert!(events.to_string().contains(kind), "auth event {kind}");
    }
    println!("measured: oauth code flow: discovery, 5 refusals without redirect, code reuse and refresh reuse revoke, deny, events");
    Ok(())
}

pub async fn oauth_scopes_resources_and_grants(c: Arc<Ctx>) -> CaseResult {
    let slug = "oauth-scopes";
    // A consumer-key API that also takes OAuth tokens with the `chat` scope, a second one, and a
    // managed API for the user's own sign-in.
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    c.admin
        .patch_api(
            &t.api_id,
            json!({"oauth": true, "required_scopes": ["chat"]}),
        )
        .await?;
    let upstream = json!({"base_url": c.mock.base_url(&format!("ok/tag/{slug}")), "api_key": "sk-x", "default_model": "mock-default"});
    let other = c.admin.create_api(slug, "other", upstream.clone()).await?;
    c.admin
        .patch_api(&str_field(&other, "id")?, json!({"oauth": true}))
        .await?;
    let plain = c.admin.create_api(slug, "plain", upstream.clone()).await?;
    let app = c.admin.create_api(slug, "app", upstream).await?;
    expect_status(
        &put_auth_mode(&c, &str_field(&app, "id")?, json!({"auth_mode": "managed"})).await?,
        200,
        "managed app",
    )?;
    assert_eq!(plain["oauth"], false);

    let client = new_client(&c, slug, json!({"name": "Scoped", "type": "public", "redirect_uris": [REDIRECT], "scopes": ["chat", "usage"]})).await?;
    let client_id = str_field(&client, "client_id")?;
    let meta = Reply::read(
        c.http
            .get(format!(
                "{}/v1/{slug}/.well-known/oauth-authorization-server",
                c.base
            ))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(
        meta.json()["scopes_supported"],
        json!(["chat"]),
        "{}",
        meta.text
    );

    // A scope outside the client's list goes back as invalid_scope.
    let p = pkce("scope");
    let ask = Ask {
        project: slug,
        client_id: &client_id,
        redirect_uri: REDIRECT,
        scope: "admin",
        state: "s",
        challenge: &p.challenge,
        method: "S256",
        resource: None,
    };
    let r = Reply::read(no_redirects().get(ask.url(&c.base)).send().await?).await?;
    expect_status(&r, 302, "invalid scope")?;
    assert_eq!(
        query_of(r.header("location").unwrap_or_default())
            .get("error")
            .map(String::as_str),
        Some("invalid_scope")
    );

    let email = "oauth.scopes@example.com";
    let usage_only =
        code_and_tokens(&c, slug, &client_id, "usage", None, email, "203.0.113.21").await?;
    let weak = str_field(&usage_only, "access_token")?;
    let refused = chat_with(&c, slug, "chat", &weak).await?;
    assert_problem(&refused, 403, "insufficient-scope");
    let challenge = refused.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("scope=\"chat\""),
        "{challenge}"
    );
    expect_status(
        &chat_with(&c, slug, "other", &weak).await?,
        200,
        "an API that requires no scope",
    )?;
    assert_problem(
        &chat_with(&c, slug, "plain", &weak).await?,
        403,
        "auth-mode-mismatch",
    );
    // A refresh may narrow the scope, not widen it; a refused widening does not burn the token.
    let weak_refresh = str_field(&usage_only, "refresh_token")?;
    let widened = token(
        &c,
        slug,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &weak_refresh),
            ("client_id", &client_id),
            ("scope", "chat"),
        ],
        None,
    )
    .await?;
    assert_oauth_error(&widened, 400, "invalid_scope");
    let same = refresh_with(&c, slug, &weak_refresh, &client_id).await?;
    expect_status(&same, 200, "the refresh token after a refused scope")?;
    assert_eq!(same.json()["scope"], "usage");
    let weak = str_field(&same.json(), "access_token")?;
    // An OAuth client's token is not the user's own session.
    assert_problem(&me(&c, slug, &weak).await?, 403, "forbidden");
    // The authorization request may leave out the client's only redirect URI; the token request too.
    let p0 = pkce("omitted");
    let omitted = Ask {
        project: slug,
        client_id: &client_id,
        redirect_uri: REDIRECT,
        scope: "chat",
        state: "o",
        challenge: &p0.challenge,
        method: "S256",
        resource: None,
    }
    .url(&c.base)
    .replace("&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb", "");
    assert!(!omitted.contains("redirect_uri"), "{omitted}");
    let location = authorize(
        &c,
        &omitted,
        "oauth.scopes.omitted@example.com",
        "203.0.113.23",
        "allow",
    )
    .await?;
    let code = code_in(&location)?;
    let r = exchange(&c, slug, &client_id, &code, &p0.verifier, None).await?;
    expect_status(&r, 200, "a code exchange without redirect_uri, as asked")?;

    // A token for one resource (RFC 8707) is refused at another API.
    let resource = format!("{}/v1/{slug}/chat", c.base);
    let scoped = code_and_tokens(
        &c,
        slug,
        &client_id,
        "chat",
        Some(&resource),
        "oauth.scopes.two@example.com",
        "203.0.113.22",
    )
    .await?;
    let strong = str_field(&scoped, "access_token")?;
    let (_, claims) = jwt_parts(&strong)?;
    assert_eq!(claims["aud"], json!([slug, resource]), "{claims}");
    expect_status(
        &chat_with(&c, slug, "chat", &strong).await?,
        200,
        "the token's own resource",
    )?;
    let elsewhere = chat_with(&c, slug, "other", &strong).await?;
    assert_eq!(
        elsewhere.status,
        401,
        "another resource: {}",
        elsewhere.describe()
    );
    let ask = Ask {
        resource: Some("https://elsewhere.example/api"),
        scope: "chat",
        ..ask
    };
    let r = Reply::read(no_redirects().get(ask.url(&c.base)).send().await?).await?;
    assert_eq!(
        query_of(r.header("location").unwrap_or_default())
            .get("error")
            .map(String::as_str),
        Some("invalid_target"),
        "{}",
        r.describe()
    );

    // The user lists their grants with their own sign-in and revokes one: its token fails next.
    let own = sign_in(&c, slug, email).await?;
    let listed = Reply::read(
        c.http
            .get(format!("{}/v1/{slug}/auth/grants", c.base))
            .bearer_auth(&own.access)
            .send()
            .await?,
    )
    .await?;
    expect_status(&listed, 200, "the user's grants")?;
    let grants = listed.json()["grants"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(grants.len(), 1, "{}", listed.text);
    assert_eq!(grants[0]["client_name"], "Scoped");
    assert_eq!(grants[0]["scopes"], json!(["usage"]));
    let by_client = Reply::read(
        c.http
            .get(format!("{}/v1/{slug}/auth/grants", c.base))
            .bearer_auth(&weak)
            .send()
            .await?,
    )
    .await?;
    assert_problem(&by_client, 403, "forbidden");
    let gid = str_field(&grants[0], "id")?;
    let gone = Reply::read(
        c.http
            .delete(format!("{}/v1/{slug}/auth/grants/{gid}", c.base))
            .bearer_auth(&own.access)
            .send()
            .await?,
    )
    .await?;
    expect_status(&gone, 204, "revoke a grant")?;
    assert_eq!(
        chat_with(&c, slug, "other", &weak).await?.status,
        401,
        "the revoked grant's token"
    );
    let again = Reply::read(
        c.http
            .delete(format!("{}/v1/{slug}/auth/grants/{gid}", c.base))
            .bearer_auth(&own.access)
            .send()
            .await?,
    )
    .await?;
    assert_problem(&again, 404, "not-found");

    // The owner sees the other grant and revokes it.
    let listed = c
        .admin
        .call(
            Method::GET,
            &format!("/api/v1/projects/{slug}/oauth/grants?client={client_id}"),
            None,
        )
        .await?;
    expect_status(&listed, 200, "the owner's grant list")?;
    let grants = listed.json()["grants"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // The resource-bound grant and the one made without a redirect URI.
    assert_eq!(grants.len(), 2, "{}", listed.text);
    let bound = grants
        .iter()
        .find(|g| g["resource"] == resource.as_str())
        .ok_or_else(|| format!("no grant for {resource}: {}", listed.text))?;
    let gid = str_field(bound, "id")?;
    let r = c
        .admin
        .call(
            Method::DELETE,
            &format!("/api/v1/projects/{slug}/oauth/grants/{gid}"),
            None,
        )
        .await?;
    expect_status(&r, 204, "the owner revokes")?;
    assert_eq!(chat_with(&c, slug, "chat", &strong).await?.status, 401);
    Ok(())
}

pub async fn oauth_confidential_clients_and_dynamic_registration(c: Arc<Ctx>) -> CaseResult {
    let slug = "oauth-conf";
    let t = managed_tenant(&c, slug).await?;
    let created = new_client(
        &c,
        slug,
        json!({"name": "Backend", "type": "confidential", "redirect_uris": [], "scopes": ["chat"]}),
    )
    .await?;
    let id = str_field(&created, "client_id")?;
    let secret = str_field(&created, "client_secret")?;
    let shown = c
        .admin
        .call(
            Method::GET,
            &format!("/api/v1/projects/{slug}/oauth/clients/{id}"),
            None,
        )
        .await?;
    assert!(
        !shown.text.contains(&secret) && shown.json().get("client_secret").is_none(),
        "the secret is shown once"
    );
    for bad in [
        json!({"name": "x", "type": "public", "redirect_uris": ["http://app.example/cb"]}),
        json!({"name": "x", "type": "weird", "redirect_uris": []}),
    ] {
        let r = c
            .admin
            .call(
                Method::POST,
                &format!("/api/v1/projects/{slug}/oauth/clients"),
                Some(bad),
            )
            .await?;
        assert_problem(&r, 400, "invalid-request");
    }

    let cc = token(
        &c,
        slug,
        &[("grant_type", "client_credentials")],
        Some((&id, &secret)),
    )
    .await?;
    expect_status(&cc, 200, "client_credentials")?;
    assert!(cc.json().get("refresh_token").is_none());
    assert_eq!(cc.json()["scope"], "chat");
    let access = str_field(&cc.json(), "access_token")?;
    let wrong = token(
        &c,
        slug,
        &[("grant_type", "client_credentials")],
        Some((&id, "ocs_wrong")),
    )
    .await?;
    assert_oauth_error(&wrong, 401, "invalid_client");
    // One way to authenticate, each parameter once, and credentials that decode (RFC 6749 §2.3,
    // §3.1): otherwise no token, whichever value would have won.
    for (fields, basic, why) in [
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_secret", "ocs_wrong"),
            ],
            Some((id.as_str(), secret.as_str())),
            "Basic and a form secret",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", id.as_str()),
                ("client_id", "ocl_other"),
                ("client_secret", secret.as_str()),
            ],
            None,
            "client_id twice",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("grant_type", "authorization_code"),
            ],
            Some((id.as_str(), secret.as_str())),
            "grant_type twice",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "ocl_other"),
            ],
            Some((id.as_str(), secret.as_str())),
            "a form client_id that is not Basic's",
        ),
    ] {
        let r = token(&c, slug, &fields, basic).await?;
        assert_eq!(r.status, 400, "{why}: {}", r.describe());
        assert_oauth_error(&r, 400, "invalid_request");
    }
    let garbled = Reply::read(
        c.http
            .post(format!("{}/v1/{slug}/oauth/token", c.base))
            .header("authorization", "Basic !!!")
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", id.as_str()),
                ("client_secret", secret.as_str()),
            ])
            .timeout(STREAM_LIMIT)
            .send()
            .await?,
    )
    .await?;
    assert_oauth_error(&garbled, 401, "invalid_client");
    let same_id = token(
        &c,
        slug,
        &[("grant_type", "client_credentials"), ("client_id", &id)],
        Some((&id, &secret)),
    )
    .await?;
    expect_status(&same_id, 200, "Basic with the same client_id in the form")?;
    let public = new_client(
        &c,
        slug,
        json!({"name": "Pub", "type": "public", "redirect_uris": [REDIRECT]}),
    )
    .await?;
    let pub_id = str_field(&public, "client_id")?;
    let r = token(
        &c,
        slug,
        &[("grant_type", "client_credentials"), ("client_id", &pub_id)],
        None,
    )
    .await?;
    assert_oauth_error(&r, 400, "unauthorized_client");
    let r = token(
        &c,
        slug,
        &[("grant_type", "password"), ("client_id", &pub_id)],
        None,
    )
    .await?;
    assert_oauth_error(&r, 400, "unsupported_grant_type");
    expect_status(
        &chat_with(&c, slug, "chat", &access).await?,
        200,
        "a client_credentials token",
    )?;
    let consumer = str_field(&created, "consumer_id")?;
    c.admin_get_until(&format!("/api/v1/gateway/apis/{}/usage", t.api_id), |v| {
        v["records"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["consumer_id"] == consumer.as_str()))
    })
    .await?;

    // Introspection (confidential clients only), then revocation.
    let seen = oauth_post(
        &c,
        slug,
        "introspect",
        &[("token", &access)],
        Some((&id, &secret)),
    )
    .await?;
    expect_status(&seen, 200, "introspect")?;
    assert_eq!(seen.json()["active"], true, "{}", seen.text);
    assert_eq!(seen.json()["client_id"], id.as_str());
    let r = oauth_post(
        &c,
        slug,
        "introspect",
        &[("token", &access), ("client_id", &pub_id)],
        None,
    )
    .await?;
    assert_oauth_error(&r, 401, "invalid_client");
    let r = oauth_post(
        &c,
        slug,
        "revoke",
        &[("token", &access)],
        Some((&id, &secret)),
    )
    .await?;
    expect_status(&r, 200, "revoke")?;
    let seen = oauth_post(
        &c,
        slug,
        "introspect",
        &[("token", &access)],
        Some((&id, &secret)),
    )
    .await?;
    assert_eq!(seen.json()["active"], false, "{}", seen.text);
    assert_eq!(
        chat_with(&c, slug, "chat", &access).await?.status,
        401,
        "a revoked token"
    );
    let r = oauth_post(
        &c,
        slug,
        "revoke",
        &[("token", "garbage")],
        Some((&id, &secret)),
    )
    .await?;
    expect_status(&r, 200, "revoking garbage is a no-op")?;

    // Deleting a client ends its grants.
    let cc = token(
        &c,
        slug,
        &[("grant_type", "client_credentials")],
        Some((&id, &secret)),
    )
    .await?;
    let access = str_field(&cc.json(), "access_token")?;
    let r = c
        .admin
        .call(
            Method::DELETE,
            &format!("/api/v1/projects/{slug}/oauth/clients/{id}"),
            None,
        )
        .await?;
    expect_status(&r, 204, "delete the client")?;
    assert_eq!(
        chat_with(&c, slug, "chat", &access).await?.status,
        401,
        "the deleted client's token"
    );
    // Its own consumer stays (usage records name it) but is disabled, and the listing says so.
    let client_consumer = str_field(&created, "consumer_id")?;
    let listed = c.admin.list_consumers(slug).await?;
    let entry = listed.json()["consumers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["id"] == client_consumer.as_str())
        .cloned()
        .ok_or_else(|| format!("consumer {client_consumer} not listed: {}", listed.text))?;
    assert_eq!(entry["status"], "disabled", "{entry}");
    assert_eq!(entry["name"], "OAuth client Backend", "{entry}");
    let again = token(
        &c,
        slug,
        &[("grant_type", "client_credentials")],
        Some((&id, &secret)),
    )
    .await?;
    assert_oauth_error(&again, 401, "invalid_client");

    // Dynamic registration: off by default, then on, limited per network.
    let register = |body: Value, ip: &'static str| {
        let http = c.http.clone();
        let url = format!("{}/v1/{slug}/oauth/register", c.base);
        async move {
            Reply::read(
                http.post(url)
                    .header("cf-connecting-ip", ip)
                    .json(&body)
                    .send()
                    .await?,
            )
            .await
        }
    };
    let r = register(json!({"redirect_uris": [REDIRECT]}), "203.0.113.31").await?;
    assert_oauth_error(&r, 404, "invalid_request");
    assert_eq!(r.json()["type"], "not-found", "{}", r.describe());
    let on = c.admin.patch_project(slug, json!({"oauth_dynamic_registration": true, "oauth_registrations_per_network_per_hour": 2})).await?;
    expect_status(&on, 200, "turn DCR on")?;
    let meta = Reply::read(
        c.http
            .get(format!(
                "{}/.well-known/oauth-authorization-server/v1/{slug}",
                c.base
            ))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(
        meta.json()["registration_endpoint"],
        format!("{}/v1/{slug}/oauth/register", c.base)
    );
    let r = register(
        json!({"redirect_uris": ["http://evil.example/cb"], "client_name": "Bad"}),
        "203.0.113.31",
    )
    .await?;
    assert_oauth_error(&r, 400, "invalid_redirect_uri");
    let r = register(json!({"redirect_uris": [REDIRECT], "client_name": "MCP Client", "token_endpoint_auth_method": "none", "logo_uri": "https://x.example/l.png"}), "203.0.113.31").await?;
    expect_status(&r, 201, "register")?;
    let dyn_id = str_field(&r.json(), "client_id")?;
    assert_eq!(r.json()["token_endpoint_auth_method"], "none");
    let r = register(json!({"redirect_uris": [REDIRECT]}), "203.0.113.31").await?;
    assert_oauth_error(&r, 429, "invalid_request");
    assert_eq!(r.json()["type"], "rate-limited", "{}", r.describe());
    let tokens = code_and_tokens(
        &c,
        slug,
        &dyn_id,
        "",
        None,
        "oauth.dcr@example.com",
        "203.0.113.32",
    )
    .await?;
    let dyn_access = str_field(&tokens, "access_token")?;
    expect_status(
        &chat_with(&c, slug, "chat", &dyn_access).await?,
        200,
        "a registered client's token",
    )?;
    // A self-registered client's errors never redirect before the user acted.
    let p = pkce("dcr");
    let ask = Ask {
        project: slug,
        client_id: &dyn_id,
        redirect_uri: REDIRECT,
        scope: "",
        state: "s",
        challenge: &p.challenge,
        method: "S256",
        resource: None,
    };
    // It chose its own name, so its page says it is unverified and where the answer goes.
    let r = Reply::read(no_redirects().get(ask.url(&c.base)).send().await?).await?;
    expect_status(&r, 200, "the self-registered client's sign-in page")?;
    assert!(
        r.text.contains("MCP Client")
            && r.text.contains("Unverified app")
            && r.text.contains("http://127.0.0.1:9"),
        "{}",
        r.text
    );
    let bad = ask
        .url(&c.base)
        .replace("response_type=code", "response_type=token");
    let r = Reply::read(no_redirects().get(bad).send().await?).await?;
    assert_eq!(r.status, 400, "{}", r.describe());
    assert!(
        r.header("location").is_none(),
        "no redirect for a dynamic client"
    );
    // Another client cannot introspect this client's token.
    let auditor = new_client(
        &c,
        slug,
        json!({"name": "Auditor", "type": "confidential", "redirect_uris": []}),
    )
    .await?;
    let (aid, asecret) = (
        str_field(&auditor, "client_id")?,
        str_field(&auditor, "client_secret")?,
    );
    let seen = oauth_post(
        &c,
        slug,
        "introspect",
        &[("token", &dyn_access)],
        Some((&aid, &asecret)),
    )
    .await?;
    assert_eq!(seen.json()["active"], false, "{}", seen.text);
    Ok(())
}

pub async fn oauth_library_runs_the_flow_against_the_metadata(c: Arc<Ctx>) -> CaseResult {
    let slug = "oauth-lib";
    managed_tenant(&c, slug).await?;
    let client = new_client(
        &c,
        slug,
        json!({"name": "Library", "type": "public", "redirect_uris": [REDIRECT]}),
    )
    .await?;
    let client_id = str_field(&client, "client_id")?;
    let root = repo_root();
    let mut child = tokio::process::Command::new("node")
        .arg(root.join("tests/oauth/oauth4webapi_flow.mjs"))
        .current_dir(&root)
        .env("SLUICE_ISSUER", format!("{}/v1/{slug}", c.base))
        .env("SLUICE_CLIENT_ID", &client_id)
        .env("SLUICE_REDIRECT_URI", REDIRECT)
        .env("SLUICE_SCOPE", "")
        .env("SLUICE_RESOURCE", format!("{}/v1/{slug}/chat", c.base))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let Some(url) = line_after(&mut lines, "AUTHORIZE ").await? else {
        let out = child.wait_with_output().await?;
        return Err(format!(
            "the library printed no URL: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    };
    let location = authorize(
        &c,
        &url,
        "oauth.library@example.com",
        "203.0.113.41",
        "allow",
    )
    .await?;
    stdin.write_all(format!("{location}\n").as_bytes()).await?;
    drop(stdin);
    let Some(result) = line_after(&mut lines, "RESULT ").await? else {
        let out = child.wait_with_output().await?;
        return Err(format!(
            "the library failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    };
    let v: Value = serde_json::from_str(&result)?;
    assert_eq!(v["metadata"]["issuer"], format!("{}/v1/{slug}", c.base));
    assert_eq!(
        v["exchanged"]["token_type"], "bearer",
        "oauth4webapi lower-cases it: {v}"
    );
    let refreshed = v["refreshed"]["access_token"]
        .as_str()
        .ok_or("no refreshed token")?;
    let after = chat_with(&c, slug, "chat", refreshed).await?;
    assert_eq!(
        after.status,
        401,
        "the library's revocation ends the grant: {}",
        after.describe()
    );
    println!(
        "measured: oauth4webapi ran discovery, PKCE, the code exchange, a refresh and revocation"
    );
    Ok(())
}

/// What follows `prefix` on the first line of the script's output that starts with it (`None` when
/// the output ends first), within `STREAM_LIMIT`.
async fn line_after(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    prefix: &str,
) -> Result<Option<String>> {
    let found = tokio::time::timeout(STREAM_LIMIT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok::<_, std::io::Error>(Some(rest.to_string()));
            }
        }
        Ok(None)
    })
    .await??;
    Ok(found)
}
