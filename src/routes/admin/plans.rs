//! Admin: an API's plans, and which plan a consumer is on.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{Call, Reply};
use crate::cache;
use crate::error::Error;
use crate::http::with_random;
use crate::ids::new_id;
use crate::input::plan::PlanInput;
use crate::limits::plan::{Limits, Plan, PlanRow, PLAN_ID_KIND};
use crate::limits::standing::Change;
use crate::store::counter_do::change_everywhere;
use crate::store::d1;

pub async fn list(c: &mut Call<'_>, api: &str) -> Result<Reply, Error> {
    let api = d1::api_by_id(&c.db, api).await?;
    let plans: Vec<Value> = d1::list_plans(&c.db, &api.id)
        .await?
        .iter()
        .map(PlanRow::to_json)
        .collect();
    Reply::ok(json!({ "plans": plans }))
}

pub async fn create(c: &mut Call<'_>, api: &str) -> Result<Reply, Error> {
    let input: PlanInput = c.body().await?;
    input.validate()?;
    if input.id.is_some() {
        return Err(Error::invalid_request(
            "`id` is chosen by the gateway; leave it out when creating a plan",
        ));
    }
    let name = input
        .name
        .clone()
        .flatten()
        .ok_or_else(|| Error::invalid_request("A plan needs a `name`"))?;
    let api = d1::api_by_id(&c.db, api).await?;
    let blank = Plan {
        id: with_random(|r| new_id(PLAN_ID_KIND, r))?,
        name,
        limits: Limits::default(),
        models: None,
        is_default: false,
    };
    let plan = input.apply(&blank);
    d1::create_plan(&c.db, &plan, &api.id, c.now).await?;
    cache::store_api(c.env, &c.db, &api.id).await?;
    Reply::created(d1::plan(&c.db, &api.id, &plan.id).await?.to_json())
}

/// On the collection, the body names the plan by `id` (or by `name`, which then cannot change).
pub async fn patch(c: &mut Call<'_>, api: &str, plan: Option<String>) -> Result<Reply, Error> {
    let input: PlanInput = c.body().await?;
    input.validate()?;
    let api = d1::api_by_id(&c.db, api).await?;
    let target = plan
        .or_else(|| input.id.clone().flatten())
        .or_else(|| input.name.clone().flatten())
        .ok_or_else(|| {
            Error::invalid_request(
                "Name the plan to change: PATCH .../plans/{plan}, or `id` in the body",
            )
        })?;
    let current = d1::plan(&c.db, &api.id, &target).await?.to_plan();
    if input.default == Some(Some(false)) && current.is_default {
        return Err(Error::invalid_request(
            "Every API needs a default plan: make another plan the default instead",
        ));
    }
    let updated = input.apply(&current);
    d1::update_plan(&c.db, &updated, &api.id, c.now).await?;
    cache::store_api(c.env, &c.db, &api.id).await?;
    Reply::ok(d1::plan(&c.db, &api.id, &updated.id).await?.to_json())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPlan {
    plan: String,
}

/// `PUT .../consumers/{consumer}/plan`: the consumer's counters stay; the limits change at once.
pub async fn subscribe(c: &mut Call<'_>, api: &str, consumer: &str) -> Result<Reply, Error> {
    let input: SetPlan = c.body().await?;
    let api = d1::api_by_id(&c.db, api).await?;
    // A consumer of another project (another org's, perhaps) is not this API's to subscribe. A
    // BYO-JWT user (`jwu_…`) is one of the project's consumers from its first call on, and until
    // then does not exist here either (its id is not the owner's to make up).
    if d1::find_consumer(&c.db, &api.project_id, consumer)
        .await?
        .is_none()
    {
        return Err(Error::not_found(format!(
            "There is no consumer `{consumer}` in project `{}`.",
            api.project_slug
        )));
    }
    let plan = d1::plan(&c.db, &api.id, &input.plan).await?;
    d1::subscribe(&c.db, &api.id, consumer, &plan.id, c.now).await?;
    let change = Change::Subscribe {
        plan_id: Some(plan.id.clone()),
    };
    change_everywhere(c.env, std::slice::from_ref(&api.id), consumer, change).await?;
    Reply::ok(json!({ "api_id": api.id, "consumer_id": consumer, "plan": plan.to_json() }))
}
