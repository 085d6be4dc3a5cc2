//! Unit tests of JWT keys, verification and signing.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use jwt_compact::alg::{Es256, Rsa};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::Algorithm;
use serde_json::{Map, Value};

use super::*;
use jwt_compact::alg::RsaPrivateKey;
use jwt_compact::AlgorithmSignature;
use rand_chacha::rand_core::SeedableRng;
use serde_json::json;
use std::sync::OnceLock;

const NOW: i64 = 1_800_000_000;

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn claims() -> Map<String, Value> {
    obj(json!({"sub": "user-1", "iss": "https://idp.example", "aud": "sluice", "exp": NOW + 300}))
}

/// A token with an arbitrary header, signed by `sign` over `header.payload`.
fn token_with(
    header: Value,
    claims: &Map<String, Value>,
    sign: impl FnOnce(&[u8]) -> Vec<u8>,
) -> String {
    compact(&header, claims, sign)
}

struct RsaFixture {
    private: RsaPrivateKey,
    jwk: Value,
}

/// RSA key generation is slow in debug builds: one 2048-bit key for all tests.
fn rsa_fixture() -> &'static RsaFixture {
    static KEY: OnceLock<RsaFixture> = OnceLock::new();
    KEY.get_or_init(|| rsa_with_bits(2048, 7, "rsa-1"))
}

fn rsa_with_bits(bits: usize, seed: u64, kid: &str) -> RsaFixture {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let private = RsaPrivateKey::new(&mut rng, bits).expect("rsa keygen");
    let public = private.to_public_key();
    let mut jwk = serde_json::to_value(JsonWebKey::from(&public)).expect("jwk");
    jwk["kid"] = kid.into();
    jwk["alg"] = "RS256".into();
    jwk["use"] = "sig".into();
    RsaFixture { private, jwk }
}

fn rs256_token(fx: &RsaFixture, kid: Option<&str>, claims: &Map<String, Value>) -> String {
    token_with(header_json(Alg::Rs256, kid), claims, |msg| {
        Rsa::rs256().sign(&fx.private, msg).as_bytes().to_vec()
    })
}

fn es256_fixture() -> (<Es256 as Algorithm>::SigningKey, Value) {
    let sk = <<Es256 as Algorithm>::SigningKey as jwt_compact::alg::SigningKey<Es256>>::from_slice(
        &[0x42; 32],
    )
    .expect("p256 scalar");
    let vk = jwt_compact::alg::SigningKey::<Es256>::to_verifying_key(&sk);
    let mut jwk = serde_json::to_value(JsonWebKey::from(&vk)).expect("jwk");
    jwk["kid"] = "ec-1".into();
    (sk, jwk)
}

fn ed_key() -> SigningKey {
    SigningKey::from_seed([7; 32], "ed-1".into())
}

fn jwks(keys: &[&Value]) -> String {
    json!({ "keys": keys }).to_string()
}

fn policy() -> Policy {
    Policy {
        issuer: Some("https://idp.example".into()),
        audience: Some("sluice".into()),
        ..Policy::default_asymmetric()
    }
}

#[test]
fn alg_names_round_trip() {
    for alg in [Alg::Rs256, Alg::Es256, Alg::EdDsa, Alg::Hs256] {
        assert_eq!(Alg::parse(alg.as_str()), Some(alg));
    }
    assert_eq!(Alg::parse("none"), None);
    assert_eq!(Alg::parse("rs256"), None);
    assert_eq!(Alg::parse("PS256"), None);
    assert_eq!(serde_json::to_value(Alg::EdDsa).unwrap(), json!("EdDSA"));
    assert_eq!(
        serde_json::from_value::<Alg>(json!("RS256")).unwrap(),
        Alg::Rs256
    );
    assert!(serde_json::from_value::<Alg>(json!("none")).is_err());
}

#[test]
fn rs256_happy_path() {
    let fx = rsa_fixture();
    let keys = parse_jwks(&jwks(&[&fx.jwk])).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].alg, Alg::Rs256);
    assert_eq!(keys[0].kid.as_deref(), Some("rsa-1"));
    let token = rs256_token(fx, Some("rsa-1"), &claims());
    let got = verify(&token, &keys, &policy(), NOW).unwrap();
    assert_eq!(got, claims());
}

#[test]
fn es256_happy_path() {
    let (sk, jwk) = es256_fixture();
    let keys = parse_jwks(&jwks(&[&jwk])).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].alg, Alg::Es256);
    let token = token_with(header_json(Alg::Es256, Some("ec-1")), &claims(), |msg| {
        Es256.sign(&sk, msg).as_bytes().to_vec()
    });
    assert_eq!(verify(&token, &keys, &policy(), NOW), Ok(claims()));
}

#[test]
fn eddsa_sign_and_verify_round_trip() {
    let key = ed_key();
    let keys = parse_jwks(&jwks(&[&key.public_jwk()])).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].alg, Alg::EdDsa);
    let token = key.sign(&claims());
    assert_eq!(verify(&token, &keys, &policy(), NOW), Ok(claims()));
    assert_eq!(
        verify(&token, &[key.to_verifying_key()], &policy(), NOW),
        Ok(claims())
    );
    // Deterministic: same key and claims, same token.
    assert_eq!(token, key.sign(&claims()));
    let header = decode_object(token.split('.').next().unwrap()).unwrap();
    assert_eq!(
        Value::Object(header),
        json!({"alg": "EdDSA", "typ": "JWT", "kid": "ed-1"})
    );
    let jwk = key.public_jwk();
    for (field, want) in [
        ("kty", "OKP"),
        ("crv", "Ed25519"),
        ("kid", "ed-1"),
        ("alg", "EdDSA"),
        ("use", "sig"),
    ] {
        assert_eq!(jwk[field], want, "{field}");
    }
    assert_eq!(B64URL.decode(jwk["x"].as_str().unwrap()).unwrap().len(), 32);
}

#[test]
fn different_seeds_give_different_keys_and_zero_seed_does_not_panic() {
    assert_ne!(
        ed_key().public_jwk()["x"],
        SigningKey::from_seed([8; 32], "ed-1".into()).public_jwk()["x"]
    );
    assert!(SigningKey::try_from_seed([0; 32], "z".into()).is_none());
    let zero = SigningKey::from_seed([0; 32], "z".into());
    let token = zero.sign(&claims());
    assert!(verify(&token, &[zero.to_verifying_key()], &policy(), NOW).is_ok());
}

#[test]
fn hs256_consumer_keys_need_the_policy_to_allow_them() {
    let secret = [9u8; 32];
    let token = sign_hs256(&secret, Some("c1"), &claims());
    let keys = [hs256_key(&secret, Some("c1".into()))];
    assert_eq!(
        verify(&token, &keys, &policy(), NOW),
        Err(TokenError::AlgorithmNotAllowed)
    );
    let hs = Policy {
        allowed: vec![Alg::Hs256],
        ..policy()
    };
    assert_eq!(verify(&token, &keys, &hs, NOW), Ok(claims()));
    let other = [hs256_key(&[8u8; 32], Some("c1".into()))];
    assert_eq!(
        verify(&token, &other, &hs, NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn short_hs256_secrets_verify_nothing() {
    let token = sign_hs256(b"short", None, &claims());
    let hs = Policy {
        allowed: vec![Alg::Hs256],
        ..policy()
    };
    assert!(matches!(
        verify(&token, &[hs256_key(b"short", None)], &hs, NOW),
        Err(TokenError::InvalidKey(_))
    ));
    assert!(!format!("{:?}", hs256_key(b"short-secret-text", None)).contains("short-secret"));
}

#[test]
fn alg_none_is_rejected() {
    let key = ed_key();
    let keys = [key.to_verifying_key()];
    for alg in ["none", "None", "NONE"] {
        let token = token_with(json!({"alg": alg, "kid": "ed-1"}), &claims(), |_| {
            Vec::new()
        });
        assert_eq!(
            verify(&token, &keys, &policy(), NOW),
            Err(TokenError::AlgorithmNotAllowed),
            "{alg}"
        );
    }
    // Even a policy that lists every algorithm cannot name `none`.
    let all = Policy {
        allowed: vec![Alg::Rs256, Alg::Es256, Alg::EdDsa, Alg::Hs256],
        ..policy()
    };
    let token = token_with(json!({"alg": "none"}), &claims(), |_| Vec::new());
    assert_eq!(
        verify(&token, &keys, &all, NOW),
        Err(TokenError::AlgorithmNotAllowed)
    );
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_rejected() {
    // The classic confusion attack: HMAC keyed with public key bytes, hoping the verifier
    // feeds its RSA key to HMAC. Tried with the modulus and with the whole public JWK text.
    let fx = rsa_fixture();
    let keys = parse_jwks(&jwks(&[&fx.jwk])).unwrap();
    let modulus = B64URL.decode(fx.jwk["n"].as_str().unwrap()).unwrap();
    let all = Policy {
        allowed: vec![Alg::Rs256, Alg::Es256, Alg::EdDsa, Alg::Hs256],
        ..policy()
    };
    for secret in [modulus, fx.jwk.to_string().into_bytes()] {
        for kid in [Some("rsa-1"), None] {
            let token = sign_hs256(&secret, kid, &claims());
            assert_eq!(
                verify(&token, &keys, &policy(), NOW),
                Err(TokenError::AlgorithmNotAllowed)
            );
            assert_eq!(
                verify(&token, &keys, &all, NOW),
                Err(TokenError::AlgorithmNotAllowed)
            );
        }
    }
}

#[test]
fn header_alg_must_equal_the_keys_alg() {
    let fx = rsa_fixture();
    let keys = parse_jwks(&jwks(&[&fx.jwk])).unwrap();
    // An RS256 signature relabelled ES256 with the RSA key's kid.
    let token = token_with(header_json(Alg::Es256, Some("rsa-1")), &claims(), |msg| {
        Rsa::rs256().sign(&fx.private, msg).as_bytes().to_vec()
    });
    assert_eq!(
        verify(&token, &keys, &policy(), NOW),
        Err(TokenError::AlgorithmNotAllowed)
    );
}

#[test]
fn small_rsa_keys_are_skipped() {
    let small = rsa_with_bits(1024, 3, "rsa-small");
    let ed = ed_key().public_jwk();
    let keys = parse_jwks(&jwks(&[&small.jwk, &ed])).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].kid.as_deref(), Some("ed-1"));
    assert!(parse_jwk(&small.jwk).unwrap_err().contains("1024 bits"));
    let token = rs256_token(&small, Some("rsa-small"), &claims());
    assert_eq!(
        verify(&token, &keys, &policy(), NOW),
        Err(TokenError::UnknownKid("rsa-small".into()))
    );
}

#[test]
fn jwks_skips_unusable_keys_and_rejects_non_jwks() {
    let ed = ed_key().public_jwk();
    let mut enc = ed.clone();
    enc["use"] = "enc".into();
    let mut wrong_alg = ed.clone();
    wrong_alg["alg"] = "RS256".into();
    let mut no_verify = ed.clone();
    no_verify["key_ops"] = json!(["sign"]);
    let mut bad_x = ed.clone();
    bad_x["x"] = "AAAA".into();
    let oct =
        json!({"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "alg": "HS256"});
    let x448 = json!({"kty": "OKP", "crv": "X25519", "x": ed["x"]});
    let p384 = json!({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"});
    let doc = jwks(&[
        &enc,
        &wrong_alg,
        &no_verify,
        &bad_x,
        &oct,
        &x448,
        &p384,
        &json!("x"),
        &json!({}),
        &ed,
    ]);
    let keys = parse_jwks(&doc).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].alg, Alg::EdDsa);
    assert_eq!(parse_jwks(r#"{"keys":[]}"#).unwrap().len(), 0);
    for bad in [
        "",
        "[]",
        "{}",
        r#"{"keys":{}}"#,
        "not json",
        r#"{"keys":"x"}"#,
    ] {
        assert!(
            matches!(parse_jwks(bad), Err(TokenError::InvalidKey(_))),
            "{bad}"
        );
    }
}

#[test]
fn hostile_keys_neither_panic_nor_verify() {
    // A JWKS comes from a URL the API owner chose: its keys are untrusted input too.
    let even_n = {
        let mut n = vec![0x80u8; 256];
        n[255] = 0x02;
        n
    };
    let rsa = |n: &[u8], e: &[u8]| json!({"kty": "RSA", "kid": "k", "n": B64URL.encode(n), "e": B64URL.encode(e)});
    let okp = |x: &[u8]| json!({"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": B64URL.encode(x)});
    let mut identity_point = [0u8; 32];
    identity_point[0] = 1;
    let candidates = [
        rsa(&even_n, &[1, 0, 1]),
        rsa(&[0xff; 256], &[3]),
        rsa(&[0xff; 256], &[2]),
        rsa(&[0xff; 256], &[1]),
        rsa(&[0xff; 256], &[]),
        rsa(&[0xff; 1024], &[1, 0, 1]),
        okp(&[0; 32]),
        okp(&identity_point),
        okp(&[0xff; 32]),
        json!({"kty": "EC", "crv": "P-256", "kid": "k", "x": B64URL.encode([0; 32]), "y": B64URL.encode([0; 32])}),
    ];
    let keys = parse_jwks(&jwks(&candidates.iter().collect::<Vec<_>>())).unwrap();
    assert!(
        !keys.is_empty(),
        "some hostile keys parse and must then fail safely"
    );
    for alg in [Alg::Rs256, Alg::EdDsa, Alg::Es256] {
        for sig in [vec![], vec![0u8; 64], vec![0xffu8; 256], vec![1u8; 256]] {
            let token = token_with(header_json(alg, Some("k")), &claims(), |_| sig.clone());
            let got = verify(&token, &keys, &policy(), NOW);
            assert!(got.is_err(), "{alg:?} {got:?}");
        }
    }
}

#[test]
fn jwks_is_capped() {
    let ed = ed_key().public_jwk();
    let many: Vec<&Value> = std::iter::repeat_n(&ed, 150).collect();
    assert_eq!(parse_jwks(&jwks(&many)).unwrap().len(), MAX_JWKS_KEYS);
}

#[test]
fn expiry_and_leeway() {
    let key = ed_key();
    let keys = [key.to_verifying_key()];
    let at = |exp: i64| {
        let mut c = claims();
        c.insert("exp".into(), exp.into());
        key.sign(&c)
    };
    assert_eq!(
        verify(&at(NOW - 61), &keys, &policy(), NOW),
        Err(TokenError::Expired)
    );
    assert_eq!(
        verify(&at(NOW - 60), &keys, &policy(), NOW),
        Err(TokenError::Expired)
    );
    assert!(verify(&at(NOW - 30), &keys, &policy(), NOW).is_ok());
    let strict = Policy {
        leeway_s: 0,
        ..policy()
    };
    assert_eq!(
        verify(&at(NOW - 30), &keys, &strict, NOW),
        Err(TokenError::Expired)
    );
    assert_eq!(
        verify(&at(NOW), &keys, &strict, NOW),
        Err(TokenError::Expired)
    );
    assert!(verify(&at(NOW + 1), &keys, &strict, NOW).is_ok());
    let mut no_exp = claims();
    no_exp.remove("exp");
    assert_eq!(
        verify(&key.sign(&no_exp), &keys, &policy(), NOW),
        Err(TokenError::MissingClaim("exp"))
    );
    let mut text_exp = claims();
    text_exp.insert("exp".into(), "tomorrow".into());
    assert_eq!(
        verify(&key.sign(&text_exp), &keys, &policy(), NOW),
        Err(TokenError::Malformed)
    );
}

#[test]
fn not_before() {
    let key = ed_key();
    let keys = [key.to_verifying_key()];
    let at = |nbf: i64| {
        let mut c = claims();
        c.insert("nbf".into(), nbf.into());
        key.sign(&c)
    };
    assert_eq!(
        verify(&at(NOW + 61), &keys, &policy(), NOW),
        Err(TokenError::NotYetValid)
    );
    assert!(verify(&at(NOW + 60), &keys, &policy(), NOW).is_ok());
    assert!(verify(&at(NOW - 5), &keys, &policy(), NOW).is_ok());
}

#[test]
fn issuer_and_audience() {
    let key = ed_key();
    let keys = [key.to_verifying_key()];
    let with = |name: &str, v: Value| {
        let mut c = claims();
        c.insert(name.into(), v);
        key.sign(&c)
    };
    let without = |name: &str| {
        let mut c = claims();
        c.remove(name);
        key.sign(&c)
    };
    assert_eq!(
        verify(
            &with("iss", "https://evil.example".into()),
            &keys,
            &policy(),
            NOW
        ),
        Err(TokenError::WrongIssuer)
    );
    assert_eq!(
        verify(
            &with("iss", json!(["https://idp.example"])),
            &keys,
            &policy(),
            NOW
        ),
        Err(TokenError::WrongIssuer)
    );
    assert_eq!(
        verify(&without("iss"), &keys, &policy(), NOW),
        Err(TokenError::MissingClaim("iss"))
    );
    assert_eq!(
        verify(&with("aud", "other".into()), &keys, &policy(), NOW),
        Err(TokenError::WrongAudience)
    );
    assert_eq!(
        verify(&with("aud", json!(["a", "b"])), &keys, &policy(), NOW),
        Err(TokenError::WrongAudience)
    );
    assert_eq!(
        verify(&without("aud"), &keys, &policy(), NOW),
        Err(TokenError::MissingClaim("aud"))
    );
    assert!(verify(&with("aud", json!(["a", "sluice"])), &keys, &policy(), NOW).is_ok());
    // Without issuer/audience in the policy, neither is looked at.
    let open = Policy::default_asymmetric();
    assert!(verify(&with("aud", "other".into()), &keys, &open, NOW).is_ok());
    assert!(verify(&without("iss"), &keys, &open, NOW).is_ok());
}

#[test]
fn tampered_payload_fails_the_signature() {
    let key = ed_key();
    let token = key.sign(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged = claims();
    forged.insert("sub".into(), "admin".into());
    let forged_payload = B64URL.encode(Value::Object(forged).to_string());
    let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(
        verify(&tampered, &[key.to_verifying_key()], &policy(), NOW),
        Err(TokenError::BadSignature)
    );
    // A signature from another key fails too.
    let other = SigningKey::from_seed([9; 32], "ed-1".into()).sign(&claims());
    assert_eq!(
        verify(&other, &[key.to_verifying_key()], &policy(), NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn unknown_kid_is_reported_for_refetch() {
    let key = ed_key();
    let token = SigningKey::from_seed([7; 32], "ed-2".into()).sign(&claims());
    assert_eq!(
        verify(&token, &[key.to_verifying_key()], &policy(), NOW),
        Err(TokenError::UnknownKid("ed-2".into()))
    );
    assert_eq!(
        verify(&token, &[], &policy(), NOW),
        Err(TokenError::UnknownKid("ed-2".into()))
    );
    let kidless = token_with(header_json(Alg::EdDsa, None), &claims(), |_| vec![0; 64]);
    assert_eq!(
        verify(&kidless, &[], &policy(), NOW),
        Err(TokenError::NoKeys)
    );
    assert!(
        TokenError::UnknownKid("x".repeat(500))
            .describe()
            .chars()
            .count()
            < 200
    );
}

#[test]
fn a_kidless_token_tries_every_key() {
    let fx = rsa_fixture();
    let (_, ec) = es256_fixture();
    let ed = ed_key();
    let other_ed = SigningKey::from_seed([3; 32], "ed-0".into());
    let keys = parse_jwks(&jwks(&[
        &fx.jwk,
        &ec,
        &other_ed.public_jwk(),
        &ed.public_jwk(),
    ]))
    .unwrap();
    assert_eq!(keys.len(), 4);
    let token = compact(&header_json(Alg::EdDsa, None), &claims(), |msg| {
        ed.pair.sk.sign(msg, None).to_vec()
    });
    assert_eq!(verify(&token, &keys, &policy(), NOW), Ok(claims()));
    let unsigned = compact(&header_json(Alg::EdDsa, None), &claims(), |_| vec![0; 64]);
    assert_eq!(
        verify(&unsigned, &keys, &policy(), NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn malformed_tokens() {
    let key = ed_key();
    let keys = [key.to_verifying_key()];
    let good = key.sign(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        String::new(),
        "garbage".into(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.{}", parts[2]),
        format!("{}.!!!.{}", parts[0], parts[2]),
        format!("%%%.{}.{}", parts[1], parts[2]),
        format!("{}.{}.***", parts[0], parts[1]),
        format!("{}.{}.{}", B64URL.encode("[1,2]"), parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], B64URL.encode("not json"), parts[2]),
        format!(
            "{}.{}.{}",
            B64URL.encode(r#"{"kid":"ed-1"}"#),
            parts[1],
            parts[2]
        ),
        format!(
            "{}.{}.{}",
            B64URL.encode(r#"{"alg":"EdDSA","kid":7}"#),
            parts[1],
            parts[2]
        ),
        "..".into(),
        "a.b.c".into(),
    ];
    for token in &cases {
        let got = verify(token, &keys, &policy(), NOW);
        assert!(
            matches!(
                got,
                Err(TokenError::Malformed) | Err(TokenError::BadSignature)
            ),
            "{token}: {got:?}"
        );
    }
    // Header/payload problems are Malformed specifically.
    assert_eq!(
        verify("garbage", &keys, &policy(), NOW),
        Err(TokenError::Malformed)
    );
    assert_eq!(
        verify(&cases[2], &keys, &policy(), NOW),
        Err(TokenError::Malformed)
    );
    assert_eq!(
        verify(&cases[4], &keys, &policy(), NOW),
        Err(TokenError::Malformed)
    );
    assert_eq!(
        verify(&cases[6], &keys, &policy(), NOW),
        Err(TokenError::Malformed)
    );
    let crit = token_with(
        json!({"alg": "EdDSA", "kid": "ed-1", "crit": ["b64"], "b64": false}),
        &claims(),
        |msg| key.pair.sk.sign(msg, None).to_vec(),
    );
    assert_eq!(
        verify(&crit, &keys, &policy(), NOW),
        Err(TokenError::UnsupportedCritical)
    );
}

#[test]
fn oversized_tokens_are_refused_before_parsing() {
    let key = ed_key();
    let mut big = claims();
    big.insert("pad".into(), "x".repeat(9000).into());
    let token = key.sign(&big);
    assert_eq!(
        verify(&token, &[key.to_verifying_key()], &policy(), NOW),
        Err(TokenError::TooLarge)
    );
    assert_eq!(
        verify(&"x".repeat(8193), &[], &policy(), NOW),
        Err(TokenError::TooLarge)
    );
    let roomy = Policy {
        max_len: 20_000,
        ..policy()
    };
    assert!(verify(&token, &[key.to_verifying_key()], &roomy, NOW).is_ok());
}

#[test]
fn claim_at_path_finds_strings_and_integers() {
    let c = obj(json!({
        "sub": "u-1",
        "user": {"id": "nested", "num": 12345678901_i64, "obj": {"a": 1}, "f": 1.5, "empty": ""},
        "n": 42,
    }));
    assert_eq!(claim_at_path(&c, "sub"), Ok("u-1".into()));
    assert_eq!(claim_at_path(&c, "user.id"), Ok("nested".into()));
    assert_eq!(claim_at_path(&c, "user.num"), Ok("12345678901".into()));
    assert_eq!(claim_at_path(&c, "n"), Ok("42".into()));
    for bad in [
        "missing",
        "user.missing",
        "user",
        "user.obj",
        "user.f",
        "user.empty",
        "",
        "user.",
        ".sub",
        "sub.x",
        "user..id",
    ] {
        assert_eq!(
            claim_at_path(&c, bad),
            Err(TokenError::MissingUserId(bad.into())),
            "{bad}"
        );
    }
}

#[test]
fn every_error_describes_itself() {
    let all = [
        TokenError::Malformed,
        TokenError::TooLarge,
        TokenError::UnknownKid("k".into()),
        TokenError::AlgorithmNotAllowed,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::WrongIssuer,
        TokenError::WrongAudience,
        TokenError::MissingClaim("exp"),
        TokenError::InvalidKey("why".into()),
        TokenError::NoKeys,
        TokenError::UnsupportedCritical,
        TokenError::MissingUserId("user.id".into()),
    ];
    let texts: std::collections::HashSet<String> = all.iter().map(TokenError::describe).collect();
    assert_eq!(texts.len(), all.len());
    assert!(texts.iter().all(|t| t.ends_with('.')));
}
