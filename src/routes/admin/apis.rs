//! Admin: APIs (each created with its default plan) and switching an API's auth mode.

use serde_json::{json, Value};

use super::{event, Call, Reply};
use crate::auth::config::AuthModeChange;
use crate::cache;
use crate::error::Error;
use crate::http::with_random;
use crate::identity::EventDraft;
use crate::ids::new_id;
use crate::input::api::{ApiPatch, NewApi};
use crate::limits::plan::{Limits, Plan, PLAN_ID_KIND};
use crate::records::Api;
use crate::store::d1;

pub async fn list(c: &mut Call<'_>) -> Result<Reply, Error> {
    let pairs = c.query()?;
    let project = pairs
        .iter()
        .find(|(k, _)| k == "project")
        .map(|(_, v)| v.as_str());
    let apis: Vec<Value> = d1::list_apis(&c.db, project, c.caller.visible_orgs().as_deref())
        .await?
        .iter()
        .map(Api::to_json)
        .collect();
    Reply::ok(json!({ "apis": apis }))
}

pub async fn create(c: &mut Call<'_>) -> Result<Reply, Error> {
    let input: NewApi = c.body().await?;
    input.validate()?;
    let project = d1::project_by_slug(&c.db, &input.project).await?;
    let id = with_random(|r| new_id("api", r))?;
    let api = input.into_api(id, &project, c.now, &|k| c.seal(k))?;
    let default_plan = Plan {
        id: with_random(|r| new_id(PLAN_ID_KIND, r))?,
        name: "default".into(),
        limits: Limits::default(),
        models: None,
        is_default: true,
    };
    d1::create_api(&c.db, &api, &default_plan).await?;
    cache::store_api(c.env, &c.db, &api.id).await?;
    Reply::created(api.to_json())
}

pub async fn get(c: &mut Call<'_>, id: &str) -> Result<Reply, Error> {
    Reply::ok(d1::api_by_id(&c.db, id).await?.to_json())
}

pub async fn patch(c: &mut Call<'_>, id: &str) -> Result<Reply, Error> {
    let patch: ApiPatch = c.body().await?;
    patch.validate()?;
    let mut api = d1::api_by_id(&c.db, id).await?;
    let key_dropped = patch.apply(&mut api, c.now, &|k| c.seal(k))?;
    d1::update_api(&c.db, &api).await?;
    cache::store_api(c.env, &c.db, &api.id).await?;
    let mut view = api.to_json();
    if key_dropped {
        // The key was given for the old host; it is never sent to the new one.
        view["upstream_key_dropped"] = Value::Bool(true);
        view["notice"] = Value::from("The upstream moved to another host, so the stored provider key was dropped: send `upstream.api_key` for the new host.");
    }
    Reply::ok(view)
}

/// `PUT .../auth-mode`: byo-jwt takes its `byo_jwt_config` here.
pub async fn set_auth_mode(c: &mut Call<'_>, id: &str) -> Result<Reply, Error> {
    let change: AuthModeChange = c.body().await?;
    let (mode, byo) = change.validate(crate::email::dev_mode(c.env))?;
    let mut api = d1::api_by_id(&c.db, id).await?;
    let from = api.mode;
    api.mode = mode;
    if let Some(config) = byo {
        api.byo_jwt = Some(config);
    }
    api.updated_at = c.now;
    d1::update_api(&c.db, &api).await?;
    cache::store_api(c.env, &c.db, &api.id).await?;
    c.event(EventDraft {
        api_id: Some(api.id.clone()),
        detail: Some(format!("{} -> {}", from.as_str(), api.mode.as_str())),
        ..event(&api.project_id, "mode_switched")
    });
    Reply::ok(api.to_json())
}
