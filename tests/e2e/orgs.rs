//! End-to-end cases of owner accounts and orgs: dev login and email-code sign-in, refresh rotation,
//! org keys with roles, members, the cross-org matrix over every admin route, and the audit log.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use sluice::router::{OrgFrom, ADMIN_ROUTES};

use super::{assert_problem, CaseFn, CaseResult, Ctx};
use crate::support::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![
        dev_login_makes_an_org_that_works_on_the_admin_api,
        owner_refresh_rotates_and_reuse_revokes,
        owner_signs_in_with_an_email_code,
        org_keys_carry_a_role_and_die_on_revocation,
        members_roles_and_the_last_owner,
        a_removed_members_keys_stay_revoked_when_they_rejoin,
        a_key_chain_stops_where_its_keys_could_no_longer_act,
        cross_org_matrix_is_404_for_every_admin_route,
        tokens_stay_on_their_side,
        audit_log_lists_the_writes,
        audit_pages_show_every_event_once,
    ]
}

/// A signed-in owner: their tokens and personal org.
struct Signed {
    access: String,
    refresh: String,
    org: String,
    admin: Admin,
}

async fn dev_login(c: &Ctx, email: &str) -> Result<Signed> {
    let r = post(
        c,
        "/api/v1/auth/dev/login",
        json!({"email": email, "name": "Test Owner"}),
    )
    .await?;
    expect_status(&r, 200, "dev login")?;
    signed(c, &r.json())
}

fn signed(c: &Ctx, v: &Value) -> Result<Signed> {
    let access = str_field(v, "access_token")?;
    Ok(Signed {
        refresh: str_field(v, "refresh_token")?,
        org: str_field(v, "org_slug")?,
        admin: Admin::new(&c.base, &access),
        access,
    })
}

async fn post(c: &Ctx, path: &str, body: Value) -> Result<Reply> {
    Reply::read(
        c.http
            .post(format!("{}{path}", c.base))
            .json(&body)
            .send()
            .await?,
    )
    .await
}

/// An admin call with an org key as `X-API-Key`.
async fn with_key(
    c: &Ctx,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Reply> {
    let mut req = c
        .http
        .request(method, format!("{}{path}", c.base))
        .header("x-api-key", key)
        .timeout(Duration::from_secs(20));
    if let Some(b) = body {
        req = req.json(&b);
    }
    Reply::read(req.send().await?).await
}

async fn new_org_key(admin: &Admin, org: &str, role: &str) -> Result<(String, String)> {
    let r = admin
        .call(
            Method::POST,
            &format!("/api/v1/orgs/{org}/keys"),
            Some(json!({"name": format!("{role} key"), "role": role})),
        )
        .await?;
    expect_status(&r, 201, "create an org key")?;
    let v = r.json();
    Ok((str_field(&v, "id")?, str_field(&v, "secret")?))
}

async fn dev_login_makes_an_org_that_works_on_the_admin_api(c: Arc<Ctx>) -> CaseResult {
    let r = post(
        &c,
        "/api/v1/auth/dev/login",
        json!({"email": "Ada.Owner@Example.com", "name": "Ada"}),
    )
    .await?;
    expect_status(&r, 200, "dev login")?;
    let v = r.json();
    assert_eq!(v["token_type"], "bearer", "{v}");
    assert_eq!(v["expires_in"], 86400, "{v}");
    assert_eq!(v["org_slug"], "ada-owner-example-com", "{v}");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let ada = signed(&c, &v)?;

    let me = ada.admin.call(Method::GET, "/api/v1/orgs/me", None).await?;
    expect_status(&me, 200, "orgs/me")?;
    let me = me.json();
    assert_eq!(me["owner"]["email"], "ada.owner@example.com", "{me}");
    assert_eq!(me["owner"]["name"], "Ada", "{me}");
    assert_eq!(
        me["orgs"],
        json!([{"id": me["orgs"][0]["id"], "slug": ada.org, "name": "Ada's org", "role": "owner"}])
    );

    // The owner works on the admin API: a project in their org, an API in it, a consumer.
    let project = ada
        .admin
        .call(
            Method::POST,
            "/api/v1/projects",
            Some(json!({"slug": "ada-chat", "name": "Ada chat", "org": ada.org})),
        )
        .await?;
    expect_status(&project, 201, "a project in the personal org")?;
    assert_eq!(project.json()["org"], ada.org.as_str());
    let t = ada
        .admin
        .tenant("ada-chat-2", "chat", json!({"base_url": c.mock.base_url("ok/tag/ada-chat-2"), "api_key": "sk-x", "default_model": "mock-default"}))
        .await?;
    let chat = c
        .http
        .post(format!("{}/v1/ada-chat-2/chat/chat/completions", c.base))
        .bearer_auth(&t.secret)
        .json(&chat_body(None, "hi", false))
        .send()
        .await?;
    assert_eq!(chat.status(), 200, "the owner's API serves its consumer");
    // Listings show the owner's projects only (not the operator's demo or other tests').
    let list = ada
        .admin
        .call(Method::GET, "/api/v1/projects", None)
        .await?;
    let slugs: Vec<String> = list.json()["projects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["slug"].as_str().map(str::to_string))
        .collect();
    assert_eq!(slugs, ["ada-chat", "ada-chat-2"], "{}", list.text);
    let apis = ada
        .admin
        .call(Method::GET, "/api/v1/gateway/apis", None)
        .await?;
    assert_eq!(
        apis.json()["apis"].as_array().map(Vec::len),
        Some(1),
        "{}",
        apis.text
    );

    // A second login is the same owner and org; the token verifies against the published JWKS.
    let again = dev_login(&c, "ada.owner@example.com").await?;
    assert_eq!(again.org, ada.org);
    let jwks = Reply::read(
        c.http
            .get(format!("{}/api/v1/.well-known/jwks.json", c.base))
            .send()
            .await?,
    )
    .await?;
    expect_status(&jwks, 200, "owner JWKS")?;
    let kid = jwt_kid(&ada.access)?;
    assert!(
        jwks.json()["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|k| k["kid"] == kid.as_str()),
        "kid {kid} not in {}",
        jwks.text
    );
    // Bad input is a clear 400; social sign-in is 501 until configured.
    let bad = post(
        &c,
        "/api/v1/auth/dev/login",
        json!({"email": "not-an-email"}),
    )
    .await?;
    assert_problem(&bad, 400, "invalid-request");
    let extra = post(
        &c,
        "/api/v1/auth/dev/login",
        json!({"email": "a@b.co", "role": "owner"}),
    )
    .await?;
    assert_eq!(extra.status, 400, "{}", extra.describe());
    for provider in ["google", "github"] {
        let r = Reply::read(
            c.http
                .get(format!("{}/api/v1/auth/{provider}", c.base))
                .send()
                .await?,
        )
        .await?;
        assert_problem(&r, 501, "not-implemented");
    }
    Ok(())
}

/// The `kid` of a JWT's header.
fn jwt_kid(token: &str) -> Result<String> {
    use base64::Engine;
    let header = token.split('.').next().ok_or("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header)?;
    let v: Value = serde_json::from_slice(&bytes)?;
    str_field(&v, "kid")
}

async fn owner_refresh_rotates_and_reuse_revokes(c: Arc<Ctx>) -> CaseResult {
    let first = dev_login(&c, "rotating@example.com").await?;
    let r = post(
        &c,
        "/api/v1/auth/refresh",
        json!({"refresh_token": first.refresh}),
    )
    .await?;
    expect_status(&r, 200, "refresh")?;
    let second = signed(&c, &r.json())?;
    assert_ne!(second.refresh, first.refresh, "the refresh token rotates");
    assert_eq!(second.org, first.org);
    expect_status(
        &second
            .admin
            .call(Method::GET, "/api/v1/orgs/me", None)
            .await?,
        200,
        "the new access token",
    )?;
    // The rotated-out token again: reuse, and the whole session is revoked.
    let reuse = post(
        &c,
        "/api/v1/auth/refresh",
        json!({"refresh_token": first.refresh}),
    )
    .await?;
    assert_problem(&reuse, 401, "refresh-token-reused");
    let after = post(
        &c,
        "/api/v1/auth/refresh",
        json!({"refresh_token": second.refresh}),
    )
    .await?;
    assert_eq!(after.status, 401, "{}", after.describe());
    let me = second
        .admin
        .call(Method::GET, "/api/v1/orgs/me", None)
        .await?;
    assert_problem(&me, 401, "session-revoked");
    for junk in ["", "srt_nope", "srt_ses_AAAAAAAAAAAAAAAAAAAA000000000000.x"] {
        let r = post(&c, "/api/v1/auth/refresh", json!({"refresh_token": junk})).await?;
        assert_problem(&r, 401, "invalid-refresh-token");
    }

    // Logout ends the session: its access token fails on the next request.
    let third = dev_login(&c, "rotating@example.com").await?;
    let out = Reply::read(
        c.http
            .post(format!("{}/api/v1/auth/logout", c.base))
            .bearer_auth(&third.access)
            .send()
            .await?,
    )
    .await?;
    expect_status(&out, 204, "logout")?;
    let me = third
        .admin
        .call(Method::GET, "/api/v1/orgs/me", None)
        .await?;
    assert_problem(&me, 401, "session-revoked");
    Ok(())
}

async fn owner_signs_in_with_an_email_code(c: Arc<Ctx>) -> CaseResult {
    let email = "code.owner@example.com";
    let seen = c.mail.mails_to(email).len();
    let start = post(&c, "/api/v1/auth/otp/start", json!({"email": email})).await?;
    expect_status(&start, 202, "otp start")?;
    let challenge = str_field(&start.json(), "challenge_id")?;
    let code = c
        .mail
        .wait_for_code(email, seen, Duration::from_secs(10))
        .await?;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let bad = post(
        &c,
        "/api/v1/auth/otp/verify",
        json!({"email": email, "code": wrong, "challenge_id": challenge}),
    )
    .await?;
    assert_problem(&bad, 401, "invalid-code");
    let ok = post(
        &c,
        "/api/v1/auth/otp/verify",
        json!({"email": email, "code": code, "challenge_id": challenge}),
    )
    .await?;
    expect_status(&ok, 200, "otp verify")?;
    let owner = signed(&c, &ok.json())?;
    assert_eq!(owner.org, "code-owner-example-com");
    assert_eq!(ok.json()["expires_in"], 86400);
    let me = owner
        .admin
        .call(Method::GET, "/api/v1/orgs/me", None)
        .await?;
    expect_status(&me, 200, "orgs/me after a code sign-in")?;
    // The code is single use.
    let again = post(
        &c,
        "/api/v1/auth/otp/verify",
        json!({"email": email, "code": code, "challenge_id": challenge}),
    )
    .await?;
    assert_eq!(again.status, 401, "{}", again.describe());
    Ok(())
}

async fn org_keys_carry_a_role_and_die_on_revocation(c: Arc<Ctx>) -> CaseResult {
    let owner = dev_login(&c, "keys.owner@example.com").await?;
    let org = owner.org.clone();
    owner.admin.create_project("keys-org-project").await?;
    let (viewer_id, viewer) = new_org_key(&owner.admin, &org, "viewer").await?;
    assert!(viewer.starts_with("ask-prod-"), "{viewer}");
    let dev = owner
        .admin
        .call(
            Method::POST,
            &format!("/api/v1/orgs/{org}/keys"),
            Some(json!({"name": "ci", "environment": "dev"})),
        )
        .await?;
    expect_status(&dev, 201, "a dev key")?;
    let dev = dev.json();
    assert_eq!(dev["role"], "developer", "the default role: {dev}");
    let dev_secret = str_field(&dev, "secret")?;
    assert!(
        dev_secret.starts_with("ask-dev-")
            && dev_secret.starts_with(dev["prefix"].as_str().unwrap_or("?")),
        "{dev}"
    );

    // A viewer key reads, and is 403 on a write naming the role needed.
    let read = with_key(
        &c,
        &viewer,
        Method::GET,
        "/api/v1/projects/keys-org-project",
        None,
    )
    .await?;
    expect_status(&read, 200, "viewer reads")?;
    let write = with_key(
        &c,
        &viewer,
        Method::POST,
        "/api/v1/projects/keys-org-project/consumers",
        Some(json!({"name": "x"})),
    )
    .await?;
    assert_problem(&write, 403, "forbidden");
    assert_eq!(write.json()["required_role"], "developer", "{}", write.text);
    // The developer key writes APIs' things but not org keys or members.
    let consumer = with_key(
        &c,
        &dev_secret,
        Method::POST,
        "/api/v1/projects/keys-org-project/consumers",
        Some(json!({"name": "by ci"})),
    )
    .await?;
    expect_status(&consumer, 201, "developer creates a consumer")?;
    let escalate = with_key(
        &c,
        &dev_secret,
        Method::POST,
        &format!("/api/v1/orgs/{org}/keys"),
        Some(json!({"name": "x", "role": "admin"})),
    )
    .await?;
    assert_problem(&escalate, 403, "forbidden");
    let invite = with_key(
        &c,
        &dev_secret,
        Method::POST,
        &format!("/api/v1/orgs/{org}/members"),
        Some(json!({"email": "x@example.com", "role": "viewer"})),
    )
    .await?;
    assert_problem(&invite, 403, "forbidden");
    // Bearer works as well as X-API-Key.
    let bearer = Admin::new(&c.base, &dev_secret)
        .call(Method::GET, "/api/v1/projects", None)
        .await?;
    expect_status(&bearer, 200, "an org key as Bearer")?;

    // The listing is masked and shows when each key was last used.
    let listing = owner
        .admin
        .call(Method::GET, &format!("/api/v1/orgs/{org}/keys"), None)
        .await?;
    expect_status(&listing, 200, "list org keys")?;
    assert!(
        !listing.text.contains(&viewer) && !listing.text.contains(&dev_secret),
        "a secret in {}",
        listing.text
    );
    assert!(
        !listing.text.contains("secret") && !listing.text.contains("hash"),
        "{}",
        listing.text
    );
    let keys = listing.json()["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(keys.len(), 2, "{}", listing.text);
    for k in &keys {
        for field in ["id", "name", "prefix", "role", "created_at", "last_used_at"] {
            assert!(k.get(field).is_some(), "no {field} in {k}");
        }
    }
    let used = async {
        for _ in 0..50 {
            let l = owner
                .admin
                .call(Method::GET, &format!("/api/v1/orgs/{org}/keys"), None)
                .await?;
            let entry = l.json()["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|k| k["id"] == viewer_id.as_str())
                .cloned();
            if entry.is_some_and(|e| e["last_used_at"].is_string()) {
                return Ok::<bool, Box<dyn std::error::Error + Send + Sync>>(true);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(false)
    };
    assert!(used.await?, "the viewer key's last_used_at was never set");

    // A key may not outrank its creator: an admin member cannot mint an owner key.
    let inv = owner
        .admin
        .call(
            Method::POST,
            &format!("/api/v1/orgs/{org}/members"),
            Some(json!({"email": "keys.admin@example.com", "role": "admin"})),
        )
        .await?;
    expect_status(&inv, 201, "invite an admin")?;
    let admin_member = dev_login(&c, "keys.admin@example.com").await?;
    let owner_key = admin_member
        .admin
        .call(
            Method::POST,
            &format!("/api/v1/orgs/{org}/keys"),
            Some(json!({"name": "root", "role": "owner"})),
        )
        .await?;
    assert_problem(&owner_key, 403, "forbidden");
    let bad_role = admin_member
        .admin
        .call(
            Method::POST,
            &format!("/api/v1/orgs/{org}/keys"),
            Some(json!({"name": "x", "role": "root"})),
        )
        .await?;
    assert_problem(&bad_role, 400, "invalid-request");
    // A key acts with at most its maker's current role: demoting the maker demotes the key, and a
    // maker who leaves takes the key's access along.
    let (_, made) = new_org_key(&admin_member.admin, &org, "admin").await?;
    let keys_path = format!("/api/v1/orgs/{org}/keys");
    expect_status(
        &with_key(&c, &made, Method::GET, &keys_path, None).await?,
        200,
        "an admin key lists keys",
    )?;
    let members_path = format!("/api/v1/orgs/{org}/members");
    let member_id = owner
        .admin
        .call(Method::GET, &members_path, None)
        .await?
        .json()["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["email"] == "keys.admin@example.com")
        .and_then(|m| m["id"].as_str().map(str::to_string))
        .ok_or("the admin member is not listed")?;
    let demote = owner
        .admin
        .call(
            Method::PATCH,
            &format!("{members_path}/{member_id}"),
            Some(json!({"role": "developer"})),
        )
        .await?;
    expect_status(&demote, 200, "demote the maker")?;
    assert_problem(
        &with_key(&c, &made, Method::GET, &keys_path, None).await?,
        403,
        "forbidden",
    );
    let write = with_key(
        &c,
        &made,
        Method::POST,
        "/api/v1/projects/keys-org-project/consumers",
        Some(json!({"name": "still a developer"})),
    )
    .await?;
    expect_status(&write, 201, "the demoted key writes as a developer")?;
    let gone = owner
        .admin
        .call(Method::DELETE, &format!("{members_path}/{member_id}"), None)
        .await?;
    expect_status(&gone, 204, "the maker leaves")?;
    assert_problem(
        &with_key(&c, &made, Method::GET, "/api/v1/projects", None).await?,
        401,
        "admin-unauthorized",
    );

    // Revoked: the very next request fails.
    let revoke = owner
        .admin
        .call(
            Method::DELETE,
            &format!("/api/v1/orgs/{org}/keys/{viewer_id}"),
            None,
        )
        .await?;
    expect_status(&revoke, 204, "revoke the viewer key")?;
    let after = with_key(
        &c,
        &viewer,
        Method::GET,
        "/api/v1/projects/keys-org-project",
        None,
    )
    .await?;
    assert_problem(&after, 401, "admin-unauthorized");
    let twice = owner
        .admin
        .call(
            Method::DELETE,
            &format!("/api/v1/orgs/{org}/keys/{viewer_id}"),
            None,
        )
        .await?;
    assert_problem(&twice, 404, "not-found");
    // Malformed keys and consumer keys are 401 without a lookup.
    for junk in [
        "ask-prod-short",
        "ask_live_abcdefghijklmnopqrstuvwxyz0123456789AB",
        &viewer[..viewer.len() - 1],
    ] {
        let r = with_key(&c, junk, Method::GET, "/api/v1/projects", None).await?;
        assert_problem(&r, 401, "admin-unauthorized");
    }
    Ok(())
}

/// The ids of the org's keys its listing shows (live keys only).
async fn listed_keys(admin: &Admin, org: &str) -> Result<Vec<String>> {
    let r = admin
        .call(Method::GET, &format!("/api/v1/orgs/{org}/keys"), None)
        .await?;
    expect_status(&r, 200, "list org keys")?;
    Ok(r.json()["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["id"].as_str().map(str::to_string))
        .collect())
}

async fn a_removed_members_keys_stay_revoked_when_they_rejoin(c: Arc<Ctx>) -> CaseResult {
    let owner = dev_login(&c, "rejoin.owner@example.com").await?;
    let org = owner.org.clone();
    let members_path = format!("/api/v1/orgs/{org}/members");
    let invite = || {
        owner.admin.call(
            Method::POST,
            &members_path,
            Some(json!({"email": "rejoin.admin@example.com", "role": "admin"})),
        )
    };
    let inv = invite().await?;
    expect_status(&inv, 201, "invite an admin")?;
    let member_id = str_field(&inv.json(), "id")?;
    let member = dev_login(&c, "rejoin.admin@example.com").await?;
    // A key the member made, and a key made with that key.
    let (made_id, made) = new_org_key(&member.admin, &org, "admin").await?;
    let child = with_key(
        &c,
        &made,
        Method::POST,
        &format!("/api/v1/orgs/{org}/keys"),
        Some(json!({"name": "made with a key", "role": "admin"})),
    )
    .await?;
    expect_status(&child, 201, "a key makes a key")?;
    let (child_id, child) = (
        str_field(&child.json(), "id")?,
        str_field(&child.json(), "secret")?,
    );
    let gone = owner
        .admin
        .call(Method::DELETE, &format!("{members_path}/{member_id}"), None)
        .await?;
    expect_status(&gone, 204, "remove the member")?;
    // Removed, then invited again and signed in again: the old keys stay refused and unlisted.
    for round in ["after removal", "after rejoining"] {
        if round == "after rejoining" {
            expect_status(&invite().await?, 201, "invite again")?;
            dev_login(&c, "rejoin.admin@example.com").await?;
        }
        for secret in [&made, &child] {
            let r = with_key(&c, secret, Method::GET, &members_path, None).await?;
            assert_problem(&r, 401, "admin-unauthorized");
        }
        let live = listed_keys(&owner.admin, &org).await?;
        assert!(
            !live.contains(&made_id) && !live.contains(&child_id),
            "{round}: a revoked key is listed as live: {live:?}"
        );
    }
    Ok(())
}

/// Keys made with keys are followed up to 5 makers: the key that is the fifth link works, and a key
/// made with it, which never could, is refused rather than made.
async fn a_key_chain_stops_where_its_keys_could_no_longer_act(c: Arc<Ctx>) -> CaseResult {
    let owner = dev_login(&c, "chain.owner@example.com").await?;
    let org = owner.org.clone();
    let keys_path = format!("/api/v1/orgs/{org}/keys");
    let (_, mut last) = new_org_key(&owner.admin, &org, "admin").await?;
    for link in 2..=5 {
        let made = with_key(
            &c,
            &last,
            Method::POST,
            &keys_path,
            Some(json!({"name": format!("link {link}"), "role": "admin"})),
        )
        .await?;
        expect_status(&made, 201, &format!("link {link}"))?;
        last = str_field(&made.json(), "secret")?;
        expect_status(
            &with_key(&c, &last, Method::GET, &keys_path, None).await?,
            200,
            &format!("link {link} acts"),
        )?;
    }
    let too_far = with_key(
        &c,
        &last,
        Method::POST,
        &keys_path,
        Some(json!({"name": "link 6", "role": "admin"})),
    )
    .await?;
    assert_problem(&too_far, 403, "forbidden");
    assert_eq!(too_far.json()["max_key_chain"], 5, "{}", too_far.text);
    assert!(!too_far.text.contains("ask-"), "{}", too_far.text);
    let listed = listed_keys(&owner.admin, &org).await?;
    assert_eq!(listed.len(), 5, "no sixth key was made: {listed:?}");
    Ok(())
}

async fn members_roles_and_the_last_owner(c: Arc<Ctx>) -> CaseResult {
    let owner = dev_login(&c, "team.owner@example.com").await?;
    let org = owner.org.clone();
    owner.admin.create_project("team-project").await?;
    let members_path = format!("/api/v1/orgs/{org}/members");
    let inv = owner
        .admin
        .call(
            Method::POST,
            &members_path,
            Some(json!({"email": "Team.Dev@example.com", "role": "developer"})),
        )
        .await?;
    expect_status(&inv, 201, "invite")?;
    let member_id = str_field(&inv.json(), "id")?;
    assert_eq!(inv.json()["status"], "invited");
    let dup = owner
        .admin
        .call(
            Method::POST,
            &members_path,
            Some(json!({"email": "team.dev@example.com", "role": "viewer"})),
        )
        .await?;
    assert_problem(&dup, 409, "conflict");

    // The invitee joins on their next sign-in, with the role they were given.
    let dev = dev_login(&c, "team.dev@example.com").await?;
    let me = dev
        .admin
        .call(Method::GET, "/api/v1/orgs/me", None)
        .await?
        .json();
    let roles: Vec<(String, String)> = me["orgs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                o["slug"].as_str().unwrap_or("").to_string(),
                o["role"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(roles.contains(&(org.clone(), "developer".into())), "{me}");
    let listed = owner.admin.call(Method::GET, &members_path, None).await?;
    let entry = listed.json()["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["id"] == member_id.as_str())
        .cloned();
    assert_eq!(
        entry.map(|e| e["status"].clone()),
        Some(json!("active")),
        "{}",
        listed.text
    );

    let consumers = "/api/v1/projects/team-project/consumers";
    expect_status(
        &dev.admin
            .call(Method::POST, consumers, Some(json!({"name": "by dev"})))
            .await?,
        201,
        "developer writes",
    )?;
    let no_invite = dev
        .admin
        .call(
            Method::POST,
            &members_path,
            Some(json!({"email": "x@example.com", "role": "viewer"})),
        )
        .await?;
    assert_problem(&no_invite, 403, "forbidden");
    assert_eq!(no_invite.json()["required_role"], "admin");

    // Demoted to viewer: the next write is 403; removed: the org's project is 404.
    let patch = owner
        .admin
        .call(
            Method::PATCH,
            &format!("{members_path}/{member_id}"),
            Some(json!({"role": "viewer"})),
        )
        .await?;
    expect_status(&patch, 200, "demote")?;
    assert_problem(
        &dev.admin
            .call(Method::POST, consumers, Some(json!({"name": "x"})))
            .await?,
        403,
        "forbidden",
    );
    expect_status(
        &dev.admin.call(Method::GET, consumers, None).await?,
        200,
        "viewer reads",
    )?;
    let own_id = owner
        .admin
        .call(Method::GET, &members_path, None)
        .await?
        .json()["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["email"] == "team.owner@example.com")
        .and_then(|m| m["id"].as_str().map(str::to_string))
        .ok_or("the owner is not listed")?;
    // The last owner can neither step down nor leave.
    let step_down = owner
        .admin
        .call(
            Method::PATCH,
            &format!("{members_path}/{own_id}"),
            Some(json!({"role": "admin"})),
        )
        .await?;
    assert_problem(&step_down, 409, "conflict");
    let leave = owner
        .admin
        .call(Method::DELETE, &format!("{members_path}/{own_id}"), None)
        .await?;
    assert_problem(&leave, 409, "conflict");
    // An admin cannot make owners.
    let promote = owner
        .admin
        .call(
            Method::PATCH,
            &format!("{members_path}/{member_id}"),
            Some(json!({"role": "admin"})),
        )
        .await?;
    expect_status(&promote, 200, "promote to admin")?;
    let grab = dev
        .admin
        .call(
            Method::PATCH,
            &format!("{members_path}/{member_id}"),
            Some(json!({"role": "owner"})),
        )
        .await?;
    assert_problem(&grab, 403, "forbidden");
    let bad = owner
        .admin
        .call(
            Method::PATCH,
            &format!("{members_path}/{member_id}"),
            Some(json!({"role": "superuser"})),
        )
        .await?;
    assert_problem(&bad, 400, "invalid-request");
    let remove = owner
        .admin
        .call(Method::DELETE, &format!("{members_path}/{member_id}"), None)
        .await?;
    expect_status(&remove, 204, "remove")?;
    assert_problem(
        &dev.admin
            .call(Method::GET, "/api/v1/projects/team-project", None)
            .await?,
        404,
        "not-found",
    );
    // An org with projects is not deleted; an empty one is, by its owner.
    let del = owner
        .admin
        .call(Method::DELETE, &format!("/api/v1/orgs/{org}"), None)
        .await?;
    assert_problem(&del, 409, "conflict");
    let spare = owner
        .admin
        .call(
            Method::POST,
            "/api/v1/orgs",
            Some(json!({"slug": "team-spare", "name": "Spare"})),
        )
        .await?;
    expect_status(&spare, 201, "create an org")?;
    assert_eq!(spare.json()["role"], "owner");
    for reserved in ["me", "default", "Bad Slug"] {
        let r = owner
            .admin
            .call(
                Method::POST,
                "/api/v1/orgs",
                Some(json!({"slug": reserved, "name": "x"})),
            )
            .await?;
        assert_problem(&r, 400, "invalid-request");
    }
    expect_status(
        &owner
            .admin
            .call(Method::DELETE, "/api/v1/orgs/team-spare", None)
            .await?,
        204,
        "delete an empty org",
    )?;
    assert_problem(
        &owner
            .admin
            .call(Method::GET, "/api/v1/orgs/team-spare", None)
            .await?,
        404,
        "not-found",
    );
    Ok(())
}

/// What each admin route is called with in the matrix: org B's real resources.
struct Victim {
    org: String,
    project: String,
    api: String,
    consumer: String,
    key: String,
    credential: String,
    member: String,
    org_key: String,
}

impl Victim {
    fn path(&self, template: &str) -> String {
        let path = template
            .replace("{org}", &self.org)
            .replace("{project}", &self.project)
            .replace("{api}", &self.api)
            .replace("{consumer}", &self.consumer)
            .replace("{credential}", &self.credential)
            .replace("{member}", &self.member)
            .replace("{plan}", "default")
            .replace("{provider}", "anthropic")
            .replace(
                "{key}",
                if template.starts_with("orgs/") {
                    &self.org_key
                } else {
                    &self.key
                },
            );
        format!("/api/v1/{path}")
    }

    /// A body that would be a valid write of that route, so only authorization refuses it.
    fn body(&self, method: &str, template: &str) -> Option<Value> {
        if method == "GET" || method == "DELETE" {
            return None;
        }
        Some(match template {
            "projects" => json!({"slug": "stolen-project", "name": "x", "org": self.org}),
            "gateway/apis" => {
                json!({"project": self.project, "slug": "stolen", "name": "x", "auth_mode": "consumer-key-only",
                "upstream": {"base_url": "https://api.openai.com/v1", "api_key": "sk-x"}})
            }
            "orgs/{org}/members" => json!({"email": "intruder@example.com", "role": "owner"}),
            "orgs/{org}/providers" => json!({"provider": "anthropic", "api_key": "sk-stolen-0000"}),
            "orgs/{org}/providers/{provider}" => json!({"api_key": "sk-stolen-0000"}),
            "orgs/{org}/members/{member}" => json!({"role": "viewer"}),
            "orgs/{org}/keys" | "projects/{project}/consumers/{consumer}/keys" => {
                json!({"name": "stolen"})
            }
            "gateway/apis/{api}/auth-mode" => json!({"auth_mode": "consumer-key-only"}),
            "gateway/apis/{api}/consumers/{consumer}/plan" => json!({"plan": "default"}),
            "projects/{project}/consumers/{consumer}" => json!({"status": "disabled"}),
            "projects/{project}/consumers/{consumer}/jwt-credentials" => {
                json!({"kind": "symmetric"})
            }
            "projects/{project}/consumers/{consumer}/mtls-credentials" => {
                json!({"fingerprint_sha256": "ab".repeat(32)})
            }
            _ => json!({"name": "stolen"}),
        })
    }
}

async fn cross_org_matrix_is_404_for_every_admin_route(c: Arc<Ctx>) -> CaseResult {
    // Org B with one of everything.
    let b = dev_login(&c, "victim@example.com").await?;
    let t = b
        .admin
        .tenant("victim-project", "chat", json!({"base_url": c.mock.base_url("ok/tag/victim"), "api_key": "sk-victim", "default_model": "mock-default"}))
        .await?;
    let cred = b
        .admin
        .call(
            Method::POST,
            &format!(
                "/api/v1/projects/victim-project/consumers/{}/jwt-credentials",
                t.consumer_id
            ),
            Some(json!({"kind": "symmetric"})),
        )
        .await?;
    expect_status(&cred, 201, "B's JWT credential")?;
    let members = b
        .admin
        .call(
            Method::GET,
            &format!("/api/v1/orgs/{}/members", b.org),
            None,
        )
        .await?;
    let member = members.json()["members"][0]["id"]
        .as_str()
        .map(str::to_string)
        .ok_or("B has no member")?;
    let (org_key, _) = new_org_key(&b.admin, &b.org, "viewer").await?;
    let victim = Victim {
        org: b.org.clone(),
        project: t.project.clone(),
        api: t.api_id.clone(),
        consumer: t.consumer_id.clone(),
        key: t.key_id.clone(),
        credential: str_field(&cred.json(), "id")?,
        member,
        org_key,
    };

    // Org A's callers: its owner, an admin key and a viewer key.
    let a = dev_login(&c, "intruder@example.com").await?;
    a.admin.create_project("intruder-project").await?;
    let (_, a_admin_key) = new_org_key(&a.admin, &a.org, "admin").await?;
    let (_, a_viewer_key) = new_org_key(&a.admin, &a.org, "viewer").await?;
    let callers: [(&str, Option<&str>); 3] = [
        ("A's owner token", None),
        ("A's admin key", Some(&a_admin_key)),
        ("A's viewer key", Some(&a_viewer_key)),
    ];

    let mut ran = 0;
    for spec in ADMIN_ROUTES {
        let path = victim.path(spec.path);
        let body = victim.body(spec.method, spec.path);
        let method = Method::from_bytes(spec.method.as_bytes())?;
        for (who, key) in callers {
            let r = match key {
                None => a.admin.call(method.clone(), &path, body.clone()).await?,
                Some(k) => with_key(&c, k, method.clone(), &path, body.clone()).await?,
            };
            ran += 1;
            match spec.org {
                // Whatever the caller's role, another org's resource does not exist for it.
                OrgFrom::Path | OrgFrom::BodyOrg | OrgFrom::BodyProject => {
                    assert_eq!(
                        r.status,
                        404,
                        "{who}: {} {path}: {}",
                        spec.method,
                        r.describe()
                    );
                    assert_problem(&r, 404, "not-found");
                    assert!(
                        !r.text.contains("role"),
                        "{who}: {} {path} leaks a role: {}",
                        spec.method,
                        r.text
                    );
                }
                // Caller-wide routes answer about the caller's own orgs only.
                OrgFrom::Caller => {
                    assert!(
                        r.status < 500,
                        "{who}: {} {path}: {}",
                        spec.method,
                        r.describe()
                    );
                    for secret in [&victim.org, &victim.project, &victim.api] {
                        assert!(
                            !r.text.contains(secret.as_str()),
                            "{who}: {} {path} shows {secret}: {}",
                            spec.method,
                            r.text
                        );
                    }
                }
            }
        }
    }
    println!(
        "    measured: cross-org matrix {} routes x {} credentials = {ran} calls, all refused",
        ADMIN_ROUTES.len(),
        callers.len()
    );
    // Nothing of B's changed.
    let project = b
        .admin
        .call(Method::GET, "/api/v1/projects/victim-project", None)
        .await?;
    assert_eq!(
        project.json()["name"],
        "Project victim-project",
        "{}",
        project.text
    );
    let api = b.admin.get_api(&victim.api).await?;
    assert_eq!(
        api.json()["name"].as_str().map(|n| n != "stolen"),
        Some(true),
        "{}",
        api.text
    );
    let members = b
        .admin
        .call(
            Method::GET,
            &format!("/api/v1/orgs/{}/members", b.org),
            None,
        )
        .await?;
    assert_eq!(
        members.json()["members"].as_array().map(Vec::len),
        Some(1),
        "{}",
        members.text
    );
    assert_eq!(members.json()["members"][0]["role"], "owner");
    let keys = b
        .admin
        .call(Method::GET, &format!("/api/v1/orgs/{}/keys", b.org), None)
        .await?;
    assert_eq!(
        keys.json()["keys"].as_array().map(Vec::len),
        Some(1),
        "{}",
        keys.text
    );
    let chat = c
        .http
        .post(format!(
            "{}/v1/victim-project/chat/chat/completions",
            c.base
        ))
        .bearer_auth(&t.secret)
        .json(&chat_body(None, "still mine", false))
        .send()
        .await?;
    assert_eq!(chat.status(), 200, "B's key still works");
    // The operator sees both orgs.
    let all = c.admin.call(Method::GET, "/api/v1/orgs", None).await?;
    assert!(
        all.text.contains(&victim.org) && all.text.contains(&a.org),
        "{}",
        all.text
    );
    Ok(())
}

async fn tokens_stay_on_their_side(c: Arc<Ctx>) -> CaseResult {
    let slug = "orgs-token-sides";
    let t = c.tenant_on_mock(slug, "ok", json!({})).await?;
    // An end user's Sluice token (from the key exchange) is 401 on the admin API.
    let exchanged = Reply::read(
        c.http
            .post(format!("{}/v1/{slug}/auth/token", c.base))
            .bearer_auth(&t.secret)
            .send()
            .await?,
    )
    .await?;
    expect_status(&exchanged, 200, "key exchange")?;
    let end_user = str_field(&exchanged.json(), "access_token")?;
    for path in [
        "/api/v1/projects",
        "/api/v1/orgs/me",
        &format!("/api/v1/projects/{slug}"),
    ] {
        let r = Admin::new(&c.base, &end_user)
            .call(Method::GET, path, None)
            .await?;
        assert_problem(&r, 401, "admin-unauthorized");
        // A consumer key is no admin credential either.
        let r = with_key(&c, &t.secret, Method::GET, path, None).await?;
        assert_problem(&r, 401, "admin-unauthorized");
    }
    // And an owner's token is no end user's.
    let owner = dev_login(&c, "sides@example.com").await?;
    let chat = c
        .http
        .post(format!("{}/v1/{slug}/chat/chat/completions", c.base))
        .bearer_auth(&owner.access)
        .json(&chat_body(None, "hi", false))
        .send()
        .await?;
    assert_eq!(chat.status(), 401, "an owner token on the data plane");
    let usage = c.consumer_usage(&t, Some(&owner.access)).await?;
    assert_eq!(usage.status, 401, "{}", usage.describe());
    // A tampered owner token is 401.
    let mut tampered = owner.access.clone();
    tampered.push('x');
    let r = Admin::new(&c.base, &tampered)
        .call(Method::GET, "/api/v1/orgs/me", None)
        .await?;
    assert_problem(&r, 401, "admin-unauthorized");
    Ok(())
}

async fn audit_log_lists_the_writes(c: Arc<Ctx>) -> CaseResult {
    let owner = dev_login(&c, "audited@example.com").await?;
    let org = owner.org.clone();
    owner.admin.create_project("audited-project").await?;
    let consumer = owner
        .admin
        .create_consumer("audited-project", "audited consumer")
        .await?;
    let (key_id, key) = new_org_key(&owner.admin, &org, "developer").await?;
    let by_key = with_key(
        &c,
        &key,
        Method::PATCH,
        &format!("/api/v1/projects/audited-project/consumers/{}", consumer.id),
        Some(json!({"status": "disabled"})),
    )
    .await?;
    expect_status(&by_key, 200, "a write by the key")?;
    let refused = with_key(
        &c,
        &key,
        Method::POST,
        &format!("/api/v1/orgs/{org}/keys"),
        Some(json!({"name": "x"})),
    )
    .await?;
    assert_problem(&refused, 403, "forbidden");
    expect_status(
        &owner
            .admin
            .call(Method::GET, "/api/v1/projects/audited-project", None)
            .await?,
        200,
        "a read",
    )?;
    let audit = owner
        .admin
        .call(Method::GET, &format!("/api/v1/orgs/{org}/audit"), None)
        .await?;
    expect_status(&audit, 200, "audit")?;
    let events = audit.json()["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let actions: Vec<String> = events
        .iter()
        .filter_map(|e| e["action"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        actions,
        [
            "PATCH /api/v1/projects/{project}/consumers/{consumer}",
            "POST /api/v1/orgs/{org}/keys",
            "POST /api/v1/projects/{project}/consumers",
            "POST /api/v1/projects",
        ],
        "newest first, writes that succeeded only: {}",
        audit.text
    );
    let newest = &events[0];
    assert_eq!(newest["actor"]["type"], "org_key", "{newest}");
    assert_eq!(newest["actor"]["id"], key_id.as_str(), "{newest}");
    assert_eq!(newest["credential"], "org_key");
    assert_eq!(newest["status"], 200);
    assert_eq!(
        newest["target"],
        format!("/api/v1/projects/audited-project/consumers/{}", consumer.id)
    );
    let oldest = &events[3];
    assert_eq!(oldest["actor"]["name"], "audited@example.com", "{oldest}");
    assert_eq!(oldest["credential"], "owner_token");
    assert!(oldest["created_at"].is_string());
    // A developer may not read the audit log; paging works.
    assert_problem(
        &with_key(
            &c,
            &key,
            Method::GET,
            &format!("/api/v1/orgs/{org}/audit"),
            None,
        )
        .await?,
        403,
        "forbidden",
    );
    let page = owner
        .admin
        .call(
            Method::GET,
            &format!("/api/v1/orgs/{org}/audit?limit=2"),
            None,
        )
        .await?;
    assert_eq!(
        page.json()["events"].as_array().map(Vec::len),
        Some(2),
        "{}",
        page.text
    );
    let before = str_field(&page.json(), "next_before")?;
    let rest = owner
        .admin
        .call(
            Method::GET,
            &format!("/api/v1/orgs/{org}/audit?limit=2&before={before}"),
            None,
        )
        .await?;
    expect_status(&rest, 200, "second page")?;
    assert!(
        !rest.json()["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .is_empty(),
        "{}",
        rest.text
    );
    assert_problem(
        &owner
            .admin
            .call(
                Method::GET,
                &format!("/api/v1/orgs/{org}/audit?limit=0"),
                None,
            )
            .await?,
        400,
        "invalid-request",
    );
    // The operator's writes in the default org are audited too.
    c.admin.create_project("audited-by-operator").await?;
    let default = c
        .admin
        .call(Method::GET, "/api/v1/orgs/default/audit?limit=500", None)
        .await?;
    assert!(
        default.json()["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["credential"] == "admin_token" && e["action"] == "POST /api/v1/projects"),
        "{}",
        default.text
    );
    Ok(())
}

async fn audit_pages_show_every_event_once(c: Arc<Ctx>) -> CaseResult {
    let owner = dev_login(&c, "audit.pages@example.com").await?;
    let org = owner.org.clone();
    // Writes sent together, so several share a millisecond (and a page boundary falls among them).
    let org_path = format!("/api/v1/orgs/{org}");
    let renames = (0..20).map(|i| {
        owner.admin.call(
            Method::PATCH,
            &org_path,
            Some(json!({"name": format!("Renamed {i}")})),
        )
    });
    for r in futures_util::future::join_all(renames).await {
        expect_status(&r?, 200, "a rename")?;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..20 {
        let query = before
            .as_deref()
            .map_or(String::new(), |b| format!("&before={b}"));
        let page = owner
            .admin
            .call(
                Method::GET,
                &format!("/api/v1/orgs/{org}/audit?limit=3{query}"),
                None,
            )
            .await?;
        expect_status(&page, 200, "an audit page")?;
        let v = page.json();
        seen.extend(
            v["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["id"].as_str().map(str::to_string)),
        );
        match v["next_before"].as_str() {
            Some(next) => before = Some(next.to_string()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "an event shown twice: {seen:?}");
    assert_eq!(seen.len(), 20, "every rename once: {seen:?}");
    // A plain time still pages: nothing is older than the org.
    let old = owner
        .admin
        .call(
            Method::GET,
            &format!("/api/v1/orgs/{org}/audit?before=2000-01-01T00:00:00Z"),
            None,
        )
        .await?;
    expect_status(&old, 200, "a plain time")?;
    assert_eq!(old.json()["events"], json!([]), "{}", old.text);
    Ok(())
}
