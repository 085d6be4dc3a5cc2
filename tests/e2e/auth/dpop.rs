//! Sender-constrained sessions (DPoP, RFC 9449) end to end: a session signed in with a proof is
//! bound to the client's key; its refresh token and access tokens are useless without that key.

use sha2::{Digest, Sha256};

use super::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![dpop_binds_the_session_to_the_clients_key]
}

/// A P-256 key for DPoP proofs (distinct per `seed`), and its public JWK.
fn dpop_key(seed: u8) -> (EcKey, Value) {
    let sk = <EcKey as jwt_compact::alg::SigningKey<Es256>>::from_slice(&[seed; 32])
        .expect("p256 scalar");
    let vk = jwt_compact::alg::SigningKey::<Es256>::to_verifying_key(&sk);
    (
        sk,
        serde_json::to_value(JsonWebKey::from(&vk)).expect("jwk"),
    )
}

fn proof(key: &(EcKey, Value), method: &str, url: &str, access_token: Option<&str>) -> String {
    let mut claims = json!({
        "jti": format!("{}-{}", now_s(), rand_suffix()), "htm": method, "htu": url, "iat": now_s(),
    });
    if let Some(at) = access_token {
        claims["ath"] = json!(B64URL.encode(Sha256::digest(at.as_bytes())));
    }
    compact(
        &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.1}),
        &claims,
        |msg| Es256.sign(&key.0, msg).as_bytes().to_vec(),
    )
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn post_with_proof(c: &Ctx, path: &str, body: Value, dpop: Option<String>) -> Result<Reply> {
    let mut req = c
        .http
        .post(format!("{}{path}", c.base))
        .json(&body)
        .timeout(STREAM_LIMIT);
    if let Some(p) = dpop {
        req = req.header("dpop", p);
    }
    Reply::read(req.send().await?).await
}

async fn dpop_binds_the_session_to_the_clients_key(c: Arc<Ctx>) -> CaseResult {
    let slug = "auth-dpop";
    let t = managed_tenant(&c, slug).await?;
    let (mine, other) = (dpop_key(0x51), dpop_key(0x52));
    let email = "dpop@e2e.example";
    let code = request_code(&c, slug, email).await?;
    let verify_path = format!("/v1/{slug}/auth/otp/verify");
    let verify_url = format!("{}{verify_path}", c.base);
    let body = json!({"email": email, "code": code, "challenge_id": challenge_of(slug, email)});
    let bad = post_with_proof(
        &c,
        &verify_path,
        body.clone(),
        Some(proof(&mine, "GET", &verify_url, None)),
    )
    .await?;
    assert_problem(&bad, 401, "invalid-dpop-proof");
    let signed_in = post_with_proof(
        &c,
        &verify_path,
        body,
        Some(proof(&mine, "POST", &verify_url, None)),
    )
    .await?;
    let tokens = Tokens::from_reply(&signed_in, "sign-in with a DPoP proof")?;
    assert_eq!(signed_in.json()["token_type"], "DPoP", "{}", signed_in.text);
    let claims = jwt_parts(&tokens.access)?.1;
    assert!(
        claims["cnf"]["jkt"].is_string(),
        "the access token is bound: {claims}"
    );

    // The refresh token, copied: refused without a proof, or with another key's, and nothing moves.
    let refresh_path = format!("/v1/{slug}/auth/refresh");
    let refresh_url = format!("{}{refresh_path}", c.base);
    let rt = json!({"refresh_token": tokens.refresh});
    for dpop in [None, Some(proof(&other, "POST", &refresh_url, None))] {
        let r = post_with_proof(&c, &refresh_path, rt.clone(), dpop).await?;
        assert_problem(&r, 401, "invalid-refresh-token");
    }
    let used = proof(&mine, "POST", &refresh_url, None);
    let refreshed = post_with_proof(&c, &refresh_path, rt, Some(used.clone())).await?;
    let tokens = Tokens::from_reply(&refreshed, "refresh with the session's key")?;
    assert_eq!(refreshed.json()["token_type"], "DPoP");
    // A proof is used once at the refresh route too: the new refresh token with the proof already
    // used (a captured request, replayed) is refused and moves nothing; a fresh proof then works.
    let rt = json!({"refresh_token": tokens.refresh});
    let replayed = post_with_proof(&c, &refresh_path, rt.clone(), Some(used)).await?;
    assert_problem(&replayed, 401, "invalid-refresh-token");
    let refreshed = post_with_proof(
        &c,
        &refresh_path,
        rt,
        Some(proof(&mine, "POST", &refresh_url, None)),
    )
    .await?;
    let tokens = Tokens::from_reply(&refreshed, "a fresh proof after the replay")?;

    // The access token calls the API only with a proof by the key, for this request.
    let chat_url = format!("{}/v1/{slug}/{}/chat/completions", c.base, t.api);
    let call = |scheme: &str, dpop: Option<String>| {
        let mut req = c
            .http
            .post(&chat_url)
            .header("authorization", format!("{scheme} {}", tokens.access))
            .json(&chat_body(None, "hi", false))
            .timeout(STREAM_LIMIT);
        if let Some(p) = dpop {
            req = req.header("dpop", p);
        }
        async move { Reply::read(req.send().await?).await }
    };
    assert_problem(&call("Bearer", None).await?, 401, "invalid-dpop-proof");
    // A good proof does not make a bound token a bearer token (RFC 9449 §7.2).
    let as_bearer = call(
        "Bearer",
        Some(proof(&mine, "POST", &chat_url, Some(&tokens.access))),
    )
    .await?;
    assert_problem(&as_bearer, 401, "invalid-dpop-proof");
    let by_other = call(
        "DPoP",
        Some(proof(&other, "POST", &chat_url, Some(&tokens.access))),
    )
    .await?;
    assert_problem(&by_other, 401, "invalid-dpop-proof");
    let no_ath = call("DPoP", Some(proof(&mine, "POST", &chat_url, None))).await?;
    assert_problem(&no_ath, 401, "invalid-dpop-proof");
    let elsewhere = format!("{}/v1/{slug}/other/chat/completions", c.base);
    let wrong_url = call(
        "DPoP",
        Some(proof(&mine, "POST", &elsewhere, Some(&tokens.access))),
    )
    .await?;
    assert_problem(&wrong_url, 401, "invalid-dpop-proof");
    let good = proof(&mine, "POST", &chat_url, Some(&tokens.access));
    let ok = call("DPoP", Some(good.clone())).await?;
    expect_status(&ok, 200, "a DPoP-bound access token with its proof")?;
    // A proof is used once: the same proof again (a captured request, replayed) is refused.
    assert_problem(&call("DPoP", Some(good)).await?, 401, "invalid-dpop-proof");
    // And at the session's own routes (`/me` here).
    let me_url = format!("{}/v1/{slug}/auth/me", c.base);
    let me_proof = proof(&mine, "GET", &me_url, Some(&tokens.access));
    let me = |p: String| {
        let req = c
            .http
            .get(&me_url)
            .header("authorization", format!("DPoP {}", tokens.access))
            .header("dpop", p)
            .timeout(STREAM_LIMIT);
        async move { Reply::read(req.send().await?).await }
    };
    expect_status(&me(me_proof.clone()).await?, 200, "/me with its proof")?;
    assert_problem(&me(me_proof).await?, 401, "invalid-dpop-proof");

    // A client without DPoP still signs in with bearer tokens, unless the project requires DPoP.
    let plain = "plain@e2e.example";
    let code = request_code(&c, slug, plain).await?;
    let bearer = Tokens::from_reply(&otp_verify(&c, slug, plain, &code).await?, "bearer sign-in")?;
    assert!(jwt_parts(&bearer.access)?.1.get("cnf").is_none());
    let required = c
        .admin
        .patch_project(slug, json!({"require_dpop": true}))
        .await?;
    expect_status(&required, 200, "require DPoP")?;
    let strict = "strict@e2e.example";
    let code = request_code(&c, slug, strict).await?;
    assert_problem(
        &otp_verify(&c, slug, strict, &code).await?,
        401,
        "invalid-dpop-proof",
    );
    Ok(())
}
