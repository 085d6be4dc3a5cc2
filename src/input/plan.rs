//! Admin input for plans: the limits a plan sets (a number, `null` for unlimited, or absent for
//! unchanged), its models and whether it is the API's default.

use serde::Deserialize;

use crate::error::Error;
use crate::input::validate::{nullable, refuse_null, validate_text};
use crate::limits::plan::{looks_like_plan_id, Limits, Plan, PLAN_ID_KIND};
use crate::limits::spend::usd_to_millionths;

/// A limit in an admin body: a number, `null` (unlimited), or absent (unchanged / unlimited). `name`,
/// `default` and `id` may be left out but are never `null`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanInput {
    #[serde(default, deserialize_with = "nullable")]
    pub name: Option<Option<String>>,
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
    #[serde(default, deserialize_with = "nullable")]
    pub default: Option<Option<bool>>,
    /// For `PATCH .../plans` (the collection): which plan to change, by id.
    #[serde(default, deserialize_with = "nullable")]
    pub id: Option<Option<String>>,
}

const MAX_LIMIT: u64 = 1 << 50;

impl PlanInput {
    pub fn validate(&self) -> Result<(), Error> {
        refuse_null("name", &self.name)?;
        refuse_null("default", &self.default)?;
        refuse_null("id", &self.id)?;
        if let Some(Some(n)) = &self.name {
            validate_text("name", n, 100)?;
            // Plans are named by id or by name in paths and bodies: a name may not read as an id.
            if looks_like_plan_id(n) {
                return Err(Error::invalid_request(format!(
                    "`name` may not start with `{PLAN_ID_KIND}_`: that is how plan ids start"
                ))
                .with_field("param", "name"));
            }
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
            name: self
                .name
                .clone()
                .flatten()
                .unwrap_or_else(|| base.name.clone()),
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
            is_default: self.default.flatten().unwrap_or(base.is_default),
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
        let input: PlanInput = crate::encoding::from_json(
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
    fn a_name_may_not_read_as_a_plan_id() {
        for name in ["pln_3kT9abcXYZ0123456789", "pln_x"] {
            let input: PlanInput =
                crate::encoding::from_json(&format!(r#"{{"name": "{name}"}}"#)).unwrap();
            let e = input.validate().unwrap_err();
            assert_eq!(e.problem.slug(), "invalid-request", "{name}");
            assert_eq!(e.extra["param"], "name", "{name}");
        }
        for name in ["pln", "plnx", "PLN_1", "pro pln_1", "gold"] {
            let input: PlanInput =
                crate::encoding::from_json(&format!(r#"{{"name": "{name}"}}"#)).unwrap();
            input.validate().unwrap();
        }
    }

    #[test]
    fn limits_and_models_clear_with_null_but_name_default_and_id_do_not() {
        for field in ["name", "default", "id"] {
            let input: PlanInput =
                crate::encoding::from_json(&format!(r#"{{"{field}": null}}"#)).unwrap();
            let e = input.validate().unwrap_err();
            assert_eq!(
                (e.status, e.extra["param"].as_str()),
                (400, Some(field)),
                "{field}"
            );
        }
        let cleared: PlanInput = crate::encoding::from_json(
            r#"{"tokens_per_day": null, "spend_per_day_usd": null, "models": null}"#,
        )
        .unwrap();
        cleared.validate().unwrap();
    }

    #[test]
    fn rejects_zero_and_empty_models() {
        let zero: PlanInput = crate::encoding::from_json(r#"{"tokens_per_day": 0}"#).unwrap();
        assert!(zero.validate().is_err());
        let empty: PlanInput = crate::encoding::from_json(r#"{"models": []}"#).unwrap();
        assert!(empty.validate().is_err());
        assert!(crate::encoding::from_json::<PlanInput>(r#"{"tokens_per_day": -1}"#).is_err());
        assert!(crate::encoding::from_json::<PlanInput>(r#"{"bogus": 1}"#).is_err());
    }
}
