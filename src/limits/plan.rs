//! Plans: the limits an API's consumers get, any of which may be absent (unlimited).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Problem};
use crate::limits::spend::{micro_to_usd, usd_to_millionths};
use crate::model::{nullable, validate_text};

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

/// A plan as stored in D1 (limits flattened into columns, models as JSON).
#[derive(Debug, Clone, Deserialize)]
pub struct PlanRow {
    pub id: String,
    pub api_id: String,
    pub name: String,
    pub requests_per_minute: Option<f64>,
    pub requests_per_day: Option<f64>,
    pub tokens_per_day: Option<f64>,
    pub tokens_per_month: Option<f64>,
    pub max_tokens_per_request: Option<f64>,
    pub max_concurrent_streams: Option<f64>,
    #[serde(default)]
    pub spend_per_day_micro: Option<f64>,
    #[serde(default)]
    pub spend_per_month_micro: Option<f64>,
    pub models_json: Option<String>,
    pub is_default: f64,
    pub created_at: f64,
    pub updated_at: f64,
}

fn count(v: Option<f64>) -> Option<u64> {
    v.filter(|n| *n >= 0.0).map(|n| n as u64)
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
                requests_per_minute: count(self.requests_per_minute),
                requests_per_day: count(self.requests_per_day),
                tokens_per_day: count(self.tokens_per_day),
                tokens_per_month: count(self.tokens_per_month),
                max_tokens_per_request: count(self.max_tokens_per_request),
                max_concurrent_streams: count(self.max_concurrent_streams),
                spend_per_day_micro: count(self.spend_per_day_micro),
                spend_per_month_micro: count(self.spend_per_month_micro),
            },
            models: self
                .models_json
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok()),
            is_default: self.is_default != 0.0,
        }
    }

    pub fn to_json(&self) -> Value {
        let plan = self.to_plan();
        let mut v = json!({
            "id": plan.id, "api_id": self.api_id, "name": plan.name, "models": plan.models, "default": plan.is_default,
            "created_at": crate::time::rfc3339(self.created_at as i64), "updated_at": crate::time::rfc3339(self.updated_at as i64),
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

    /// 403 `model-not-allowed` when the plan lists models and this is not one of them.
    pub fn check_model(&self, model: &str) -> Result<(), Error> {
        match &self.models {
            Some(models) if !models.iter().any(|m| m == model) => Err(Error::new(
                Problem::ModelNotAllowed,
                format!("Plan `{}` allows: {}.", self.name, models.join(", ")),
            )
            .with_field("model", model)
            .with_field("allowed", models.clone())
            .with_field("plan", self.name.clone())),
            _ => Ok(()),
        }
    }
}

/// A limit in an admin body: a number, `null` (unlimited), or absent (unchanged / unlimited).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanInput {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub requests_per_minute: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub requests_per_day: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub tokens_per_day: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub tokens_per_month: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub max_tokens_per_request: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub max_concurrent_streams: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub spend_per_day_usd: Option<Option<f64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub spend_per_month_usd: Option<Option<f64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub models: Option<Option<Vec<String>>>,
    #[serde(default)]
    pub default: Option<bool>,
    /// For `PATCH .../plans` (the collection): which plan to change, by id.
    pub id: Option<String>,
}

const MAX_LIMIT: u64 = 1 << 50;

impl PlanInput {
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(n) = &self.name {
            validate_text("name", n, 100)?;
        }
        for (field, v) in [
            ("requests_per_minute", self.requests_per_minute),
            ("requests_per_day", self.requests_per_day),
            ("tokens_per_day", self.tokens_per_day),
            ("tokens_per_month", self.tokens_per_month),
            ("max_tokens_per_request", self.max_tokens_per_request),
            ("max_concurrent_streams", self.max_concurrent_streams),
        ] {
            if let Some(Some(n)) = v {
                if n == 0 || n > MAX_LIMIT {
                    return Err(Error::invalid_request(format!(
                        "`{field}` must be a positive whole number (or null for unlimited)"
                    ))
                    .with_field("param", field));
                }
            }
        }
        for (field, v) in [
            ("spend_per_day_usd", self.spend_per_day_usd),
            ("spend_per_month_usd", self.spend_per_month_usd),
        ] {
            if let Some(Some(usd)) = v {
                if usd_to_millionths(field, usd)? == 0 {
                    return Err(Error::invalid_request(format!(
                        "`{field}` must be more than 0 (or null for unlimited)"
                    ))
                    .with_field("param", field));
                }
            }
        }
        if let Some(Some(models)) = &self.models {
            if models.is_empty() || models.len() > 100 {
                return Err(Error::invalid_request(
                    "`models` must list 1-100 models, or be null for every model",
                ));
            }
            for m in models {
                validate_text("models[]", m, 200)?;
            }
        }
        Ok(())
    }

    /// Applies this input over `base` (absent fields keep their value, `null` clears). Call
    /// `validate` first: a spend amount that does not convert keeps its old value here.
    pub fn apply(&self, base: &Plan) -> Plan {
        let pick = |v: Option<Option<u64>>, old: Option<u64>| v.unwrap_or(old);
        let micro = |v: Option<Option<f64>>, old: Option<u64>| match v {
            None => old,
            Some(None) => None,
            Some(Some(usd)) => usd_to_millionths("spend", usd).ok().or(old),
        };
        Plan {
            id: base.id.clone(),
            name: self.name.clone().unwrap_or_else(|| base.name.clone()),
            limits: Limits {
                requests_per_minute: pick(
                    self.requests_per_minute,
                    base.limits.requests_per_minute,
                ),
                requests_per_day: pick(self.requests_per_day, base.limits.requests_per_day),
                tokens_per_day: pick(self.tokens_per_day, base.limits.tokens_per_day),
                tokens_per_month: pick(self.tokens_per_month, base.limits.tokens_per_month),
                max_tokens_per_request: pick(
                    self.max_tokens_per_request,
                    base.limits.max_tokens_per_request,
                ),
                max_concurrent_streams: pick(
                    self.max_concurrent_streams,
                    base.limits.max_concurrent_streams,
                ),
                spend_per_day_micro: micro(self.spend_per_day_usd, base.limits.spend_per_day_micro),
                spend_per_month_micro: micro(
                    self.spend_per_month_usd,
                    base.limits.spend_per_month_micro,
                ),
            },
            models: self.models.clone().unwrap_or_else(|| base.models.clone()),
            is_default: self.default.unwrap_or(base.is_default),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_applies_over_a_plan() {
        let base = Plan {
            id: "pl_1".into(),
            name: "free".into(),
            limits: Limits {
                requests_per_minute: Some(10),
                tokens_per_day: Some(5),
                ..Default::default()
            },
            models: None,
            is_default: true,
        };
        let input: PlanInput = serde_json::from_str(
            r#"{"requests_per_minute": null, "requests_per_day": 100, "models": ["a"]}"#,
        )
        .unwrap();
        input.validate().unwrap();
        let p = input.apply(&base);
        assert_eq!(p.limits.requests_per_minute, None);
        assert_eq!(p.limits.requests_per_day, Some(100));
        assert_eq!(p.limits.tokens_per_day, Some(5));
        assert_eq!(p.models, Some(vec!["a".to_string()]));
        assert_eq!(p.name, "free");
        assert!(p.is_default);
    }

    #[test]
    fn rejects_zero_and_empty_models() {
        let zero: PlanInput = serde_json::from_str(r#"{"tokens_per_day": 0}"#).unwrap();
        assert!(zero.validate().is_err());
        let empty: PlanInput = serde_json::from_str(r#"{"models": []}"#).unwrap();
        assert!(empty.validate().is_err());
        assert!(serde_json::from_str::<PlanInput>(r#"{"tokens_per_day": -1}"#).is_err());
        assert!(serde_json::from_str::<PlanInput>(r#"{"bogus": 1}"#).is_err());
    }

    #[test]
    fn model_check() {
        let mut p = Plan {
            id: "x".into(),
            name: "pro".into(),
            limits: Limits::default(),
            models: None,
            is_default: false,
        };
        assert!(p.check_model("anything").is_ok());
        p.models = Some(vec!["gpt-a".into()]);
        assert!(p.check_model("gpt-a").is_ok());
        let e = p.check_model("gpt-b").unwrap_err();
        assert_eq!((e.status, e.kind()), (403, "model-not-allowed"));
    }
}
