//! Who may call, end to end: mode switches, the key-to-token exchange, IP allowlists, credential location and passthrough, CORS.

use super::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![
        mode_switches_keep_consumer_keys_working,
        consumer_key_exchanges_for_a_30_minute_token,
        ip_allowlist_admits_only_listed_networks,
        credential_location_and_passthrough,
        cors_follows_the_projects_allowed_origins,
    ]
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
        .patch_project(slug, json!({"allowed_origins": ["allowed.example"]}))
        .await?;
    assert_problem(&bad, 400, "invalid-request");
    let patched = c
        .admin
        .patch_project(slug, json!({"allowed_origins": [allowed]}))
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
