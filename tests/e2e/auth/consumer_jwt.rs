//! Consumers' own JWT credentials end to end: a generated HS256 key or a pasted JWKS.

use super::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![consumer_jwt_credentials_symmetric_and_asymmetric,]
}

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
