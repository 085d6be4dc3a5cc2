//! Plans: the limits an API's consumers get, any of which may be absent (unlimited).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::limits::spend::micro_to_usd;
use crate::records::json_text;

/// The limits a plan sets. `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub requests_per_day: Option<u64>,
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    #[serde(default)]
    pub tokens_per_month: Option<u64>,
    #[serde(default)]
    pub max_tokens_per_request: Option<u64>,
    #[serde(default)]
    pub max_concurrent_streams: Option<u64>,
    /// Money budgets in micro-dollars.
    #[serde(default)]
    pub spend_per_day_micro: Option<u64>,
    #[serde(default)]
    pub spend_per_month_micro: Option<u64>,
}

impl Limits {
    /// Whether a token or spend window limits this consumer (so answers must be metered live).
    pub fn meters_budget(&self) -> bool {
        self.tokens_per_day.is_some() || self.tokens_per_month.is_some() || self.limits_spend()
    }

    pub fn limits_spend(&self) -> bool {
        self.spend_per_day_micro.is_some() || self.spend_per_month_micro.is_some()
    }
}

/// A plan as stored in D1 (limits flattened into columns, models as JSON), decoded strictly: a
/// negative limit or a models list that does not parse fails the row.
#[derive(Debug, Clone, Deserialize)]
pub struct PlanRow {
    pub id: String,
    pub api_id: String,
    pub name: String,
    pub requests_per_minute: Option<u64>,
    pub requests_per_day: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub tokens_per_month: Option<u64>,
    pub max_tokens_per_request: Option<u64>,
    pub max_concurrent_streams: Option<u64>,
    pub spend_per_day_micro: Option<u64>,
    pub spend_per_month_micro: Option<u64>,
    #[serde(rename = "models_json", deserialize_with = "json_text::optional")]
    pub models: Option<Vec<String>>,
    pub is_default: u8,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Plan ids are `pln_` and random base62 (`ids::new_id` with this kind).
pub const PLAN_ID_KIND: &str = "pln";

/// Whether `name` reads as a plan id (`pln_…`): plans are named by id or by name, so no name may.
pub fn looks_like_plan_id(name: &str) -> bool {
    name.strip_prefix(PLAN_ID_KIND)
        .is_some_and(|rest| rest.starts_with('_'))
}

/// The plan the gateway enforces for one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    pub name: String,
    pub limits: Limits,
    /// Models the plan allows; `None` allows every model of the API.
    pub models: Option<Vec<String>>,
    pub is_default: bool,
}

impl PlanRow {
    pub fn to_plan(&self) -> Plan {
        Plan {
            id: self.id.clone(),
            name: self.name.clone(),
            limits: Limits {
                requests_per_minute: self.requests_per_minute,
                requests_per_day: self.requests_per_day,
                tokens_per_day: self.tokens_per_day,
                tokens_per_month: self.tokens_per_month,
                max_tokens_per_request: self.max_tokens_per_request,
                max_concurrent_streams: self.max_concurrent_streams,
                spend_per_day_micro: self.spend_per_day_micro,
                spend_per_month_micro: self.spend_per_month_micro,
            },
            models: self.models.clone(),
            is_default: self.is_default != 0,
        }
    }

    pub fn to_json(&self) -> Value {
        let plan = self.to_plan();
        let mut v = json!({
            "id": plan.id, "api_id": self.api_id, "name": plan.name, "models": plan.models, "default": plan.is_default,
            "created_at": crate::time::rfc3339(self.created_at), "updated_at": crate::time::rfc3339(self.updated_at),
        });
        if let (Value::Object(o), Value::Object(limits)) = (&mut v, plan.limits_json()) {
            o.extend(limits);
        }
        v
    }
}

impl Plan {
    /// The limits as the owner and consumer read them: counts as numbers, money in USD.
    pub fn limits_json(&self) -> Value {
        let l = &self.limits;
        let usd = |m: Option<u64>| m.map(micro_to_usd);
        json!({
            "requests_per_minute": l.requests_per_minute, "requests_per_day": l.requests_per_day,
            "tokens_per_day": l.tokens_per_day, "tokens_per_month": l.tokens_per_month,
            "max_tokens_per_request": l.max_tokens_per_request, "max_concurrent_streams": l.max_concurrent_streams,
            "spend_per_day_usd": usd(l.spend_per_day_micro), "spend_per_month_usd": usd(l.spend_per_month_micro),
        })
    }
}
