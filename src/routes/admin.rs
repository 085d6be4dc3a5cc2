//! The owner's admin API: projects, APIs, consumers and consumer keys (JSON in and out).

use serde_json::{json, Value};
use worker::{Context, Env, Request, Response, Url};

use crate::auth::config::AuthModeChange;
use crate::auth::consumer_jwt::NewJwtCredential;
use crate::identity::{self, event, record_event};

use crate::auth::key::ConsumerKey;
use crate::crypto;
use crate::error::Error;
use crate::http::{encryption_secret, json, no_content, now_ms, random, read_body, with_random};
use crate::ids::new_id;
use crate::limits::plan::{Limits, Plan, PlanInput, PlanRow};
use crate::limits::spend::{micro_to_usd, PriceTable};
use crate::model::{
    self, Api, ApiPatch, AuthMode, Consumer, ConsumerPatch, NewApi, NewConsumer, NewKey,
    NewProject, Project, ProjectPatch,
};
use crate::router::Route;
use crate::store::d1;
use crate::time::rfc3339;
use crate::upstream::policy::UpstreamPolicy;
use crate::usage::UsageQuery;

/// Admin bodies are small; anything bigger is a mistake.
const ADMIN_BODY_LIMIT: usize = 64 * 1024;

pub async fn handle(
    route: Route,
    mut req: Request,
    env: &Env,
    ctx: &Context,
) -> Result<Response, Error> {
    let db = d1::db(env)?;
    let now = now_ms();
    match route {
        Route::ListProjects => {
            let projects: Vec<Value> = d1::list_projects(&db)
                .await?
                .iter()
                .map(Project::to_json)
                .collect();
            json(200, &json!({ "projects": projects }))
        }
        Route::CreateProject => {
            let input: NewProject =
                model::parse_body(&read_body(&mut req, ADMIN_BODY_LIMIT).await?)?;
            input.validate()?;
            let project = Project::new(
                with_random(|r| new_id("prj", r))?,
                input.slug,
                input.name,
                now,
            );
            d1::create_project(&db, &project).await?;
            json(201, &project.to_json())
        }
        Route::ListApis => {
            let url: Url = req.url()?;
            let project = url
                .query_pairs()
                .find(|(k, _)| k == "project")
                .map(|(_, v)| v.into_owned());
            let apis: Vec<Value> = d1::list_apis(&db, project.as_deref())
                .await?
                .iter()
                .map(Api::to_json)
                .collect();
            json(200, &json!({ "apis": apis }))
        }
        Route::CreateApi => {
            let input: NewApi = model::parse_body(&read_body(&mut req, ADMIN_BODY_LIMIT).await?)?;
            let mode = input.validate()?;
            let project = d1::project_by_slug(&db, &input.project).await?;
            let upstream_key_enc = match &input.upstream.api_key {
                Some(Some(k)) => Some(seal_provider_key(env, k)?),
                _ => None,
            };
            let policy = input.upstream.policy().apply(&UpstreamPolicy::default());
            let prices = match &input.prices {
                Some(p) => PriceTable::from_input(p)?,
                None => PriceTable::default(),
            };
            let api = Api {
                id: with_random(|r| new_id("api", r))?,
                project_id: project.id,
                project_slug: project.slug,
                slug: input.slug,
                name: input.name,
                auth_mode: mode.as_str().to_string(),
                upstream_base_url: input.upstream.base_url.clone().unwrap_or_default(),
                upstream_key_enc,
                default_model: input.upstream.default_model.clone().flatten(),
                models_json: serde_json::to_string(
                    &input.upstream.models.clone().unwrap_or_default(),
                )
                .unwrap_or_else(|_| "[]".into()),
                timeout_ms: i64::from(
                    input
                        .upstream
                        .timeout_ms
                        .unwrap_or(model::DEFAULT_TIMEOUT_MS),
                ),
                created_at: now,
                updated_at: now,
                byo_jwt_json: None,
                ip_allowlist_json: "[]".into(),
                credential_json: "{}".into(),
                upstream_policy_json: to_json_text(&policy)?,
                prices_json: to_json_text(&prices)?,
            };
            let default_plan = Plan {
                id: with_random(|r| new_id("pln", r))?,
                name: "default".into(),
                limits: Limits::default(),
                models: None,
                is_default: true,
            };
            d1::create_api(&db, &api, &default_plan).await?;
            json(201, &api.to_json())
        }
        Route::GetApi { id } => json(200, &d1::api_by_id(&db, &id).await?.to_json()),
        Route::PatchApi { id } => {
            let patch: ApiPatch = model::parse_body(&read_body(&mut req, ADMIN_BODY_LIMIT).await?)?;
            patch.validate()?;
            let mut api = d1::api_by_id(&db, &id).await?;
            if let Some(name) = patch.name {
                api.name = name;
            }
            if let Some(mode) = patch.auth_mode {
                api.auth_mode = AuthMode::parse(&mode)?.as_str().to_string();
            }
            if let Some(u) = patch.upstream {
                api.upstream_policy_json = to_json_text(&u.policy().apply(&api.policy()?))?;
                if let Some(base) = u.base_url {
                    api.upstream_base_url = base;
                }
                match u.api_key {
                    Some(Some(k)) => api.upstream_key_enc = Some(seal_provider_key(env, &k)?),
                    Some(None) => api.upstream_key_enc = None,
                    None => {}
                }
                if let Some(m) = u.default_model {
                    api.default_model = m;
                }
                if let Some(models) = u.models {
                    api.models_json =
                        serde_json::to_string(&models).unwrap_or_else(|_| "[]".into());
                }
                if let Some(t) = u.timeout_ms {
                    api.timeout_ms = i64::from(t);
                }
            }
            if let Some(p) = &patch.prices {
                api.prices_json = to_json_text(&PriceTable::from_input(p)?)?;
            }
            if let Some(list) = patch.ip_allowlist {
                api.ip_allowlist_json =
                    serde_json::to_string(&list).unwrap_or_else(|_| "[]".into());
            }
            if let Some(c) = patch.credential {
                api.credential_json = serde_json::to_string(&c).unwrap_or_else(|_| "{}".into());
            }
            api.updated_at = now;
            d1::update_api(&db, &api).await?;
            json(200, &api.to_json())
        }
        Route::ListConsumers { project } => {
            let project = d1::project_by_slug(&db, &project).await?;
            let consumers: Vec<Value> = d1::list_consumers(&db, &project.id)
                .await?
                .iter()
                .map(|c| c.to_json(&project.slug))
                .collect();
            json(200, &json!({ "consumers": consumers }))
        }
        Route::CreateConsumer { project } => {
            let input: NewConsumer =
                model::parse_body(&read_body(&mut req, ADMIN_BODY_LIMIT).await?)?;
            input.validate()?;
            let project = d1::project_by_slug(&db, &project).await?;
            let consumer = Consumer {
                id: with_random(|r| new_id("con", r))?,
                project_id: project.id.clone(),
                name: input.name,
                description: input.description,
                kind: "key".into(),
                status: "enabled".into(),
                created_at: now,
                email: None,
            };
            d1::create_consumer(&db, &consumer).await?;
            json(201, &consumer.to_json(&project.slug))
        }
        Route::GetConsumer { project, id } => {
            let project = d1::project_by_slug(&db, &project).await?;
            json(
                200,
                &d1::consumer(&db, &project.id, &id)
                    .await?
                    .to_json(&project.slug),
            )
        }
        Route::PatchConsumer { project, id } => {
            let patch: ConsumerPatch =
                model::parse_body(&read_body(&mut req, ADMIN_BODY_LIMIT).await?)?;
            patch.validate()?;
            let project = d1::project_by_slug(&db, &project).await?;
            let mut consumer = d1::consumer(&db, &project.id, &id).await?;
            if let Some(s) = patch.status {
                consumer.status = s;
            }
            if let Some(n) = patch.name {
                consumer.name = n;
            }
            if let Some(d) = patch.description {
                consumer.description = d;
            }
            d1::update_consumer(&db, &consumer).await?;
            json(200, &consumer.to_json(&project.slug))
        }
        Route::CreateKey { project, consumer } => {
            let input: NewKey = model::parse_body(&read_body(&mut req, ADMIN_BODY_LIMIT).await?)?;
            input.validate()?;
            let project = d1::project_by_slug(&db, &project).await?;
            let consumer = d1::consumer(&db, &project.id, &consumer).await?;
            let key = with_random(ConsumerKey::generate)?;
            let id = with_random(|r| new_id("key", r))?;
            let prefix = key.display_prefix();
            d1::create_key(
                &db,
                &d1::NewKeyRow {
                    id: &id,
                    project_id: &project.id,
                    consumer_id: &consumer.id,
                    name: &input.name,
                    prefix: &prefix,
                    key_hash: &key.hash(),
                    created_at: now,
                },
            )
            .await?;
            record_event(
                ctx,
                env,
                identity::EventDraft {
                    consumer_id: Some(consumer.id.clone()),
                    detail: Some(id.clone()),
                    ..event(&project.id, "key_created")
                },
            );
            // The only response that ever carries the secret.
            json(
                201,
                &json!({
                    "id": id, "name": input.name, "secret": key.reveal(), "prefix": prefix,
                    "consumer_id": consumer.id, "created_at": rfc3339(now),
                }),
            )
        }
        Route::ListKeys { project } => {
            let project = d1::project_by_slug(&db, &project).await?;
            let keys: Vec<Value> = d1::list_keys(&db, &project.id)
                .await?
                .iter()
                .map(|k| k.to_json())
                .collect();
            json(200, &json!({ "keys": keys }))
        }
        Route::RevokeKey { project, id } => {
            let project = d1::project_by_slug(&db, &project).await?;
            if !d1::revoke_key(&db, &project.id, &id, now).await? {
                return Err(Error::not_found(format!(
                    "There is no live key `{id}` in project `{}`.",
                    project.slug
                )));
            }
            record_event(
                ctx,
                env,
                identity::EventDraft {
                    detail: Some(id),
                    ..event(&project.id, "key_revoked")
                },
            );
            no_content()
        }
        Route::CreateJwtCredential { project, consumer } => {
            let input: NewJwtCredential =
                model::parse_body(&read_body(&mut req, ADMIN_BODY_LIMIT).await?)?;
            let (claim_name, jwks_json) = input.validate()?;
            let project = d1::project_by_slug(&db, &project).await?;
            let consumer = d1::consumer(&db, &project.id, &consumer).await?;
            let claim_value = match input.value {
                Some(v) => v,
                None => with_random(|r| crate::ids::base62(32, r))?,
            };
            // A symmetric key is a random string; its UTF-8 bytes are the HS256 key.
            let secret = match jwks_json {
                None => Some(with_random(|r| crate::ids::base62(43, r))?),
                Some(_) => None,
            };
            let row = d1::JwtCredentialRow {
                id: with_random(|r| new_id("jwc", r))?,
                consumer_id: consumer.id.clone(),
                kind: input.kind.clone(),
                claim_name,
                claim_value,
                secret_enc: match &secret {
                    Some(s) => Some(seal_provider_key(env, s)?),
                    None => None,
                },
                secret_prefix: secret.as_ref().map(|s| s.chars().take(6).collect()),
                jwks_json,
                created_at: now,
                consumer_status: None,
            };
            d1::create_jwt_credential(&db, &project.id, &row).await?;
            record_event(
                ctx,
                env,
                identity::EventDraft {
                    consumer_id: Some(consumer.id.clone()),
                    detail: Some(row.id.clone()),
                    ..event(&project.id, "jwt_credential_created")
                },
            );
            let mut body = row.to_json();
            if let Some(secret) = secret {
                // Shown once, like a consumer key's secret.
                body["secret"] = json!(secret);
                body["algorithm"] = json!("HS256");
            }
            json(201, &body)
        }
        Route::ListJwtCredentials { project, consumer } => {
            let project = d1::project_by_slug(&db, &project).await?;
            let consumer = d1::consumer(&db, &project.id, &consumer).await?;
            let list: Vec<Value> = d1::list_jwt_credentials(&db, &project.id, &consumer.id)
                .await?
                .iter()
                .map(|c| c.to_json())
                .collect();
            json(200, &json!({ "jwt_credentials": list }))
        }
        Route::RevokeJwtCredential { project, id } => {
            let project = d1::project_by_slug(&db, &project).await?;
            if !d1::revoke_jwt_credential(&db, &project.id, &id, now).await? {
                return Err(Error::not_found(format!(
                    "There is no live JWT credential `{id}` in project `{}`.",
                    project.slug
                )));
            }
            record_event(
                ctx,
                env,
                identity::EventDraft {
                    detail: Some(id),
                    ..event(&project.id, "jwt_credential_revoked")
                },
            );
            no_content()
        }
        Route::GetProject { project } => {
            json(200, &d1::project_by_slug(&db, &project).await?.to_json())
        }
        Route::PatchProject { project } => {
            let patch: ProjectPatch =
                model::parse_body(&read_body(&mut req, ADMIN_BODY_LIMIT).await?)?;
            patch.validate()?;
            let mut project = d1::project_by_slug(&db, &project).await?;
            if let Some(n) = patch.name {
                project.name = n;
            }
            if let Some(origins) = patch.allowed_origins {
                project.allowed_origins_json =
                    serde_json::to_string(&origins).unwrap_or_else(|_| "[]".into());
            }
            if let Some(ttl) = patch.access_token_ttl_s {
                project.access_token_ttl_s = ttl;
            }
            if let Some(f) = patch.email_from {
                project.email_from = f;
            }
            if let Some(s) = patch.email_subject {
                project.email_subject = s;
            }
            d1::update_project(&db, &project).await?;
            json(200, &project.to_json())
        }
        Route::RotateSigningKey { project } => {
            let mut project = d1::project_by_slug(&db, &project).await?;
            project.signing_generation += 1;
            project.previous_key_retired_at = Some(now);
            d1::update_project(&db, &project).await?;
            let kid = crate::identity::current_key(env, &project)?
                .kid()
                .to_string();
            record_event(
                ctx,
                env,
                identity::EventDraft {
                    detail: Some(kid.clone()),
                    ..event(&project.id, "signing_key_rotated")
                },
            );
            json(
                200,
                &json!({ "kid": kid, "generation": project.signing_generation }),
            )
        }
        Route::AuthEvents { project } => {
            let project = d1::project_by_slug(&db, &project).await?;
            let url: Url = req.url()?;
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let get = |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .filter(|v| !v.is_empty())
            };
            let since = match get("since") {
                Some(s) => crate::time::parse_rfc3339(&s).ok_or_else(|| {
                    Error::invalid_request("`since` must be an RFC 3339 date or time")
                })?,
                None => now - 7 * 86_400_000,
            };
            let events: Vec<Value> = d1::list_auth_events(&db, &project.id, since, get("type").as_deref()).await?.iter().map(|e| json!({
                "id": e.id, "type": e.kind, "api_id": e.api_id, "consumer_id": e.consumer_id, "subject": e.subject,
                "ip": e.ip, "detail": e.detail, "time": rfc3339(e.created_at),
            })).collect();
            json(200, &json!({ "events": events }))
        }
        Route::SetAuthMode { api } => {
            let change: AuthModeChange =
                model::parse_body(&read_body(&mut req, ADMIN_BODY_LIMIT).await?)?;
            let (mode, byo) = change.validate(crate::email::dev_mode(env))?;
            let mut api = d1::api_by_id(&db, &api).await?;
            let from = api.auth_mode.clone();
            api.auth_mode = mode.as_str().to_string();
            if let Some(config) = byo {
                api.byo_jwt_json = Some(serde_json::to_string(&config).unwrap_or_default());
            }
            api.updated_at = now;
            d1::update_api(&db, &api).await?;
            record_event(
                ctx,
                env,
                identity::EventDraft {
                    api_id: Some(api.id.clone()),
                    detail: Some(format!("{from} -> {}", api.auth_mode)),
                    ..event(&api.project_id, "mode_switched")
                },
            );
            json(200, &api.to_json())
        }
        Route::ListPlans { api } => {
            let api = d1::api_by_id(&db, &api).await?;
            let plans: Vec<Value> = d1::list_plans(&db, &api.id)
                .await?
                .iter()
                .map(PlanRow::to_json)
                .collect();
            json(200, &json!({ "plans": plans }))
        }
        Route::CreatePlan { api } => {
            let input: PlanInput =
                model::parse_body(&read_body(&mut req, ADMIN_BODY_LIMIT).await?)?;
            input.validate()?;
            if input.id.is_some() {
                return Err(Error::invalid_request(
                    "`id` is chosen by the gateway; leave it out when creating a plan",
                ));
            }
            let name = input
                .name
                .clone()
                .ok_or_else(|| Error::invalid_request("A plan needs a `name`"))?;
            let api = d1::api_by_id(&db, &api).await?;
            let blank = Plan {
                id: with_random(|r| new_id("pln", r))?,
                name,
                limits: Limits::default(),
                models: None,
                is_default: false,
            };
            let plan = input.apply(&blank);
            d1::create_plan(&db, &plan, &api.id, now).await?;
            json(201, &d1::plan(&db, &api.id, &plan.id).await?.to_json())
        }
        Route::PatchPlan { api, plan } => {
            let input: PlanInput =
                model::parse_body(&read_body(&mut req, ADMIN_BODY_LIMIT).await?)?;
            input.validate()?;
            let api = d1::api_by_id(&db, &api).await?;
            // On the collection, the body names the plan by `id` (or by `name`, which then cannot change).
            let target = plan
                .or_else(|| input.id.clone())
                .or_else(|| input.name.clone())
                .ok_or_else(|| {
                    Error::invalid_request(
                        "Name the plan to change: PATCH .../plans/{plan}, or `id` in the body",
                    )
                })?;
            let current = d1::plan(&db, &api.id, &target).await?.to_plan();
            if input.default == Some(false) && current.is_default {
                return Err(Error::invalid_request(
                    "Every API needs a default plan: make another plan the default instead",
                ));
            }
            let updated = input.apply(&current);
            d1::update_plan(&db, &updated, &api.id, now).await?;
            json(200, &d1::plan(&db, &api.id, &updated.id).await?.to_json())
        }
        Route::SetConsumerPlan { api, consumer } => {
            let input: SetPlan = model::parse_body(&read_body(&mut req, ADMIN_BODY_LIMIT).await?)?;
            let api = d1::api_by_id(&db, &api).await?;
            let plan = d1::plan(&db, &api.id, &input.plan).await?;
            d1::subscribe(&db, &api.id, &consumer, &plan.id, now).await?;
            json(
                200,
                &json!({ "api_id": api.id, "consumer_id": consumer, "plan": plan.to_json() }),
            )
        }
        Route::ApiUsage { api } => {
            let api = d1::api_by_id(&db, &api).await?;
            let url: Url = req.url()?;
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let query = UsageQuery::parse(&pairs, now)?;
            let mut totals = d1::usage_groups(
                &db,
                &api.id,
                &UsageQuery {
                    group_by: None,
                    ..query.clone()
                },
            )
            .await?;
            let totals = totals
                .pop()
                .map(|t| group_json(&t, None))
                .unwrap_or_else(|| json!({}));
            let mut body = json!({
                "api_id": api.id, "from": rfc3339(query.from), "to": rfc3339(query.to), "consumer": query.consumer, "totals": totals,
            });
            match query.group_by {
                Some(g) => {
                    let groups: Vec<Value> = d1::usage_groups(&db, &api.id, &query)
                        .await?
                        .iter()
                        .map(|row| group_json(row, Some(g.as_str())))
                        .collect();
                    body["group_by"] = json!(g.as_str());
                    body["groups"] = json!(groups);
                }
                None => {
                    let records: Vec<Value> = d1::usage_records(&db, &api.id, &query, 1000)
                        .await?
                        .iter()
                        .map(|r| r.to_record().map(|r| r.to_json()))
                        .collect::<Result<_, _>>()?;
                    body["records"] = json!(records);
                }
            }
            json(200, &body)
        }
        _ => Err(Error::internal(
            "An end-user route reached the admin handler.",
        )),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPlan {
    plan: String,
}

fn group_json(row: &d1::UsageGroup, name: Option<&str>) -> Value {
    let mut v = json!({
        "requests": row.requests as u64, "prompt_tokens": row.prompt_tokens as u64, "completion_tokens": row.completion_tokens as u64,
        "total_tokens": row.total_tokens as u64, "estimated_requests": row.estimated_requests as u64,
        "cost_usd": micro_to_usd(row.cost_micro as u64), "overruns": row.overruns as u64,
    });
    if let Some(name) = name {
        v[name] = json!(row.key);
    }
    v
}

/// A config value as the JSON text its column stores.
fn to_json_text<T: serde::Serialize>(v: &T) -> Result<String, Error> {
    serde_json::to_string(v)
        .map_err(|e| Error::internal(format!("A setting could not be stored: {e}.")))
}

/// Encrypts a provider key with the ENCRYPTION_KEY secret; refuses to store it in the clear.
fn seal_provider_key(env: &Env, key: &str) -> Result<String, Error> {
    let secret = encryption_secret(env)?;
    let mut nonce = [0u8; 12];
    random(&mut nonce)?;
    Ok(crypto::seal(&secret, nonce, key))
}
