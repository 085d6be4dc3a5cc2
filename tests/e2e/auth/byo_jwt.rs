//! BYO-JWT end to end: the owner's tokens against their JWKS (RS256, ES256, EdDSA), rotation and outages.

use super::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![
        byo_jwt_accepts_rs256_es256_eddsa_and_refuses_bad_tokens,
        byo_jwks_rotation_refetches_at_most_every_30s_and_outlives_an_outage,
    ]
}

pub async fn byo_jwt_accepts_rs256_es256_eddsa_and_refuses_bad_tokens(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-byo";
    let rsa = rsa_key_ready().await?;
    let (ec, ec_jwk) = es256_key("ec-1");
    let ed = ed_key(11, "ed-1");
    // An IdP key whose id happens to start with the project's slug is still the IdP's.
    let prefixed = format!("{slug}-idp");
    let (ec2, ec2_jwk) = es256_key(&prefixed);
    let idp = JwksServer::start(vec![rsa.jwk.clone(), ec_jwk, ed.public_jwk(), ec2_jwk]).await?;
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
    // Pointed at a shared IdP without an issuer and audience, any other app's tokens would pass.
    for (config, param) in [
        (
            json!({"jwks_url": idp.url(), "issuer": BYO_ISSUER}),
            "byo_jwt_config.audience",
        ),
        (
            json!({"jwks_url": idp.url(), "audience": BYO_AUDIENCE}),
            "byo_jwt_config.issuer",
        ),
    ] {
        let r = put_auth_mode(
            &c,
            &t.api_id,
            json!({"auth_mode": "byo-jwt", "byo_jwt_config": config}),
        )
        .await?;
        assert_problem(&r, 400, "invalid-request");
        assert_eq!(r.json()["param"], param, "{}", r.describe());
    }
    let unscoped = put_auth_mode(
        &c,
        &t.api_id,
        json!({"auth_mode": "byo-jwt", "byo_jwt_config": {"jwks_url": idp.url(), "allow_any_audience": true}}),
    )
    .await?;
    expect_status(&unscoped, 200, "an explicit opt-out")?;
    assert_eq!(
        unscoped.json()["byo_jwt_unscoped"],
        true,
        "{}",
        unscoped.text
    );
    let back = put_auth_mode(&c, &t.api_id, json!({"auth_mode": "consumer-key-only"})).await?;
    expect_status(&back, 200, "back to keys")?;
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
    chat_200(
        &c,
        &t,
        &es256(&ec2, &prefixed, &byo_claims("byo-es")),
        "an IdP key named like the project's",
    )
    .await?;
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
    // BYO users are consumers of kind `jwt-user` in a namespace of their own, named by the claim.
    let rs_user = str_field(&mine.json(), "consumer_id")?;
    assert!(rs_user.starts_with("jwu_"), "{}", mine.text);
    let listed = c.admin.list_consumers(slug).await?;
    let jwt_users: BTreeMap<String, String> = listed.json()["consumers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|u| u["kind"] == "jwt-user")
        .filter_map(|u| {
            Some((
                u["id"].as_str()?.to_string(),
                u["name"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert_eq!(
        jwt_users.get(&rs_user).map(String::as_str),
        Some("byo-rs"),
        "{jwt_users:?}"
    );
    // A BYO user that has called is the project's consumer: it can be put on a plan; an id that
    // has not called is no consumer (404, as for a `con_` id).
    let plan_of = |user: &str| format!("/api/v1/gateway/apis/{}/consumers/{user}/plan", t.api_id);
    let subscribed = c
        .admin
        .call(
            Method::PUT,
            &plan_of(&rs_user),
            Some(json!({"plan": "default"})),
        )
        .await?;
    expect_status(
        &subscribed,
        200,
        "a BYO user that has called is put on a plan",
    )?;
    let unseen = c
        .admin
        .call(
            Method::PUT,
            &plan_of("jwu_doesnotexist"),
            Some(json!({"plan": "default"})),
        )
        .await?;
    assert_problem(&unseen, 404, "not-found");
    // Five answers: RS256, two ES256, EdDSA and the integer id; each is flushed after its response.
    let records = usage_records_until(&c, &t, |r| r.len() >= 5).await?;
    let users: BTreeSet<String> = records
        .iter()
        .filter_map(|r| r["consumer_id"].as_str())
        .filter_map(|id| jwt_users.get(id).cloned())
        .collect();
    let expected: BTreeSet<String> = ["byo-rs", "byo-es", "byo-ed", "4711"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        users, expected,
        "usage is filed under the BYO users, named by the claim"
    );

    // A token naming an owner-made consumer's id is a BYO user of its own, not that consumer.
    let victim = c.admin.create_consumer(slug, "victim").await?;
    let hijack = ed.sign(&obj(byo_claims(&victim.id)));
    let as_victim = Reply::read(
        c.http
            .get(format!("{}/v1/{slug}/chat/usage", c.base))
            .bearer_auth(&hijack)
            .send()
            .await?,
    )
    .await?;
    expect_status(&as_victim, 200, "usage of a token naming a consumer id")?;
    assert_ne!(
        as_victim.json()["consumer_id"],
        victim.id.as_str(),
        "{}",
        as_victim.text
    );

    // The owner disables a BYO user: its next request is 403, other BYO users go on.
    let disabled = c
        .admin
        .call(
            Method::PATCH,
            &format!("/api/v1/projects/{slug}/consumers/{rs_user}"),
            Some(json!({"status": "disabled"})),
        )
        .await?;
    expect_status(&disabled, 200, "disable a jwt-user")?;
    let refused = Reply::read(
        c.chat(&t, Some((&rs_token, KeyHeader::Bearer)))
            .json(&chat_body(None, "hi", false))
            .send()
            .await?,
    )
    .await?;
    assert_problem(&refused, 403, "consumer-disabled");
    chat_200(
        &c,
        &t,
        &es256(&ec, "ec-1", &byo_claims("byo-es")),
        "another BYO user",
    )
    .await?;
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
    assert_eq!(c.upstream_requests(slug).len(), 6);
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

    // Pointing an API at another IdP drops the old IdP's cached keys at once.
    let other_idp = JwksServer::start(vec![made_up.public_jwk()]).await?;
    chat_200(
        &c,
        &t,
        &token(&ed1, "u-1"),
        "the old IdP, before the switch",
    )
    .await?;
    use_byo_jwt(&c, &t.api_id, &other_idp.url(), "sub").await?;
    chat_401(
        &c,
        &t,
        &token(&ed1, "u-1"),
        "invalid-credential",
        "the old IdP's key after the switch",
    )
    .await?;
    chat_200(&c, &t, &token(&made_up, "u-9"), "the new IdP's key").await?;
    Ok(())
}
