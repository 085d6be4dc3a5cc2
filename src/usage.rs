//! Usage records (one per admitted request) and the owner's usage report query parameters.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::Error;
use crate::time::{parse_rfc3339, rfc3339};

/// How an admitted request ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    /// The answer was delivered whole.
    #[default]
    Complete,
    /// The gateway ended a stream because a token or spend budget was spent.
    BudgetCut,
    /// The upstream's stream or body broke off.
    UpstreamCut,
    /// The upstream sent no answer in time.
    UpstreamTimeout,
    /// The upstream could not be reached, or closed the connection before answering (the prompt
    /// may have been sent).
    UpstreamUnreachable,
    /// The upstream answered with an error status (nothing was generated).
    UpstreamError,
    /// The client went away before the answer was complete.
    ClientGone,
    /// The gateway ended the stream because the counter could not be reached.
    CounterUnavailable,
    /// Nobody settled the request (the gateway was stopped): booked at its reservation.
    Abandoned,
    /// The consumer was disabled, or its key or session revoked, while the request ran.
    Revoked,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Complete => "complete",
            Ended::BudgetCut => "budget_cut",
            Ended::UpstreamCut => "upstream_cut",
            Ended::UpstreamTimeout => "upstream_timeout",
            Ended::UpstreamUnreachable => "upstream_unreachable",
            Ended::UpstreamError => "upstream_error",
            Ended::ClientGone => "client_gone",
            Ended::CounterUnavailable => "counter_unavailable",
            Ended::Abandoned => "abandoned",
            Ended::Revoked => "revoked",
        }
    }

    /// Reads the stored name back; an unknown name is an error, never a default.
    pub fn parse(s: &str) -> Option<Ended> {
        serde_json::from_value(Value::from(s)).ok()
    }
}

/// One request's usage. `id` is the request's lease id, so a record flushed twice is stored once.
/// Fields added later carry serde defaults, so records waiting in an outbox stay readable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub id: String,
    pub created_at: i64,
    pub project_id: String,
    pub api_id: String,
    pub consumer_id: String,
    pub key_id: Option<String>,
    pub session_id: Option<String>,
    pub model: String,
    pub plan: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// The upstream never reported usage (cut, client gone): counts are the gateway's estimate.
    pub estimated: bool,
    pub status: u16,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    #[serde(default)]
    pub ended: Ended,
    /// Prompt tokens the upstream served from its cache.
    #[serde(default)]
    pub cached_tokens: u64,
    /// Completion tokens spent on reasoning (part of `completion_tokens`).
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// Choices asked for.
    #[serde(default = "one")]
    pub n: u64,
    /// The completion cap per choice sent upstream (`None`: no cap was needed).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// The prompt's upper bound, reserved before the upstream was called.
    #[serde(default)]
    pub prompt_bound: u64,
    /// What it cost, in micro-dollars (0 without a price).
    #[serde(default)]
    pub cost_micro: u64,
    /// The upstream reported more completion tokens than the cap it was sent (it ignored the cap):
    /// booked all the same.
    #[serde(default)]
    pub overrun: bool,
    /// Which endpoint was called.
    #[serde(default)]
    pub endpoint: Endpoint,
    /// The upstream's own request id (`x-request-id`), when it sent one.
    #[serde(default)]
    pub upstream_request_id: Option<String>,
    /// What the upstream (or the connection to it) said when it failed: for the owner only.
    #[serde(default)]
    pub upstream_error: Option<String>,
    /// The provider that answered, for an API routed to providers.
    #[serde(default)]
    pub provider: Option<String>,
    /// Every try the request made upstream, in order (retries and fallbacks; records filed before
    /// attempts were kept have none).
    #[serde(default)]
    pub attempts: Vec<Attempt>,
}

/// One try upstream: the model and provider tried, the upstream's status (0: no answer) and what
/// went wrong (`timeout`, `unreachable`, `cut`, `status`), and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub ms: u64,
}

/// The data-plane endpoints that are metered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    #[default]
    Chat,
    Responses,
    Embeddings,
    Messages,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Responses => "responses",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
        }
    }

    pub fn parse(s: &str) -> Option<Endpoint> {
        [
            Endpoint::Chat,
            Endpoint::Responses,
            Endpoint::Embeddings,
            Endpoint::Messages,
        ]
        .into_iter()
        .find(|e| e.as_str() == s)
    }
}

fn one() -> u64 {
    1
}

impl UsageRecord {
    /// The record as its `usage_records` row: (column, value) in one list, so a batch of records
    /// can travel to D1 as one JSON array bound to one statement.
    pub fn row(&self) -> Vec<(&'static str, Value)> {
        let attempts = serde_json::to_string(&self.attempts).unwrap_or_else(|_| "[]".into());
        vec![
            ("id", Value::from(self.id.as_str())),
            ("created_at", Value::from(self.created_at)),
            ("project_id", Value::from(self.project_id.as_str())),
            ("api_id", Value::from(self.api_id.as_str())),
            ("consumer_id", Value::from(self.consumer_id.as_str())),
            ("key_id", Value::from(self.key_id.clone())),
            ("session_id", Value::from(self.session_id.clone())),
            ("model", Value::from(self.model.as_str())),
            ("plan", Value::from(self.plan.as_str())),
            ("prompt_tokens", Value::from(self.prompt_tokens)),
            ("completion_tokens", Value::from(self.completion_tokens)),
            ("total_tokens", Value::from(self.total_tokens)),
            ("estimated", Value::from(u8::from(self.estimated))),
            ("status", Value::from(self.status)),
            ("latency_ms", Value::from(self.latency_ms)),
            ("ttft_ms", Value::from(self.ttft_ms)),
            ("ended", Value::from(self.ended.as_str())),
            ("cached_tokens", Value::from(self.cached_tokens)),
            ("reasoning_tokens", Value::from(self.reasoning_tokens)),
            ("n", Value::from(self.n)),
            ("max_tokens", Value::from(self.max_tokens)),
            ("prompt_bound", Value::from(self.prompt_bound)),
            ("cost_micro", Value::from(self.cost_micro)),
            ("overrun", Value::from(u8::from(self.overrun))),
            ("endpoint", Value::from(self.endpoint.as_str())),
            (
                "upstream_request_id",
                Value::from(self.upstream_request_id.clone()),
            ),
            ("upstream_error", Value::from(self.upstream_error.clone())),
            ("provider", Value::from(self.provider.clone())),
            ("attempts_json", Value::from(attempts)),
        ]
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "time": rfc3339(self.created_at), "api_id": self.api_id, "consumer_id": self.consumer_id,
            "key_id": self.key_id, "session_id": self.session_id, "model": self.model, "plan": self.plan,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": self.total_tokens,
            "estimated": self.estimated, "status": self.status, "latency_ms": self.latency_ms, "ttft_ms": self.ttft_ms,
            "ended": self.ended.as_str(), "cached_tokens": self.cached_tokens, "reasoning_tokens": self.reasoning_tokens,
            "n": self.n, "max_tokens": self.max_tokens, "prompt_bound": self.prompt_bound,
            "cost_usd": crate::limits::spend::micro_to_usd(self.cost_micro), "overrun": self.overrun,
            "endpoint": self.endpoint.as_str(), "upstream_request_id": self.upstream_request_id,
            "upstream_error": self.upstream_error, "provider": self.provider, "attempts": self.attempts,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Consumer,
    Model,
    Day,
}

impl GroupBy {
    /// The SQL expression a report groups on (fixed strings, never user text).
    pub fn sql(self) -> &'static str {
        match self {
            GroupBy::Consumer => "consumer_id",
            GroupBy::Model => "model",
            GroupBy::Day => "strftime('%Y-%m-%d', created_at / 1000, 'unixepoch')",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Consumer => "consumer",
            GroupBy::Model => "model",
            GroupBy::Day => "day",
        }
    }
}

/// `?from=&to=&consumer=&group_by=` of the owner's usage report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub from: i64,
    pub to: i64,
    pub consumer: Option<String>,
    pub group_by: Option<GroupBy>,
}

impl UsageQuery {
    /// Defaults: the last 30 days up to now.
    pub fn parse(pairs: &[(String, String)], now: i64) -> Result<UsageQuery, Error> {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let time = |k: &str, default: i64| -> Result<i64, Error> {
            match get(k) {
                None => Ok(default),
                Some(v) => parse_rfc3339(v).ok_or_else(|| Error::invalid_request(format!("`{k}` must be an RFC 3339 date or time, e.g. 2026-11-01 or 2026-11-01T00:00:00Z"))),
            }
        };
        let to = time("to", now)?;
        let from = time("from", to - 30 * 86_400_000)?;
        if from > to {
            return Err(Error::invalid_request("`from` must not be after `to`"));
        }
        let group_by = match get("group_by") {
            None => None,
            Some("consumer") => Some(GroupBy::Consumer),
            Some("model") => Some(GroupBy::Model),
            Some("day") => Some(GroupBy::Day),
            Some(other) => {
                return Err(Error::invalid_request(format!(
                    "`group_by` must be consumer, model or day, not `{other}`"
                )))
            }
        };
        Ok(UsageQuery {
            from,
            to,
            consumer: get("consumer").map(str::to_string),
            group_by,
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_records_row_names_every_usage_column_once() {
        let schema = include_str!("../schema.sql");
        let table = schema
            .split("CREATE TABLE usage_records (")
            .nth(1)
            .and_then(|t| t.split(");").next())
            .expect("usage_records in schema.sql");
        let mut columns: Vec<&str> = table
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect();
        let record = UsageRecord {
            key_id: Some("key_1".into()),
            estimated: true,
            ..UsageRecord::default()
        };
        let row = record.row();
        let mut names: Vec<&str> = row.iter().map(|(n, _)| *n).collect();
        columns.sort_unstable();
        names.sort_unstable();
        assert_eq!(names, columns);
        let get = |name: &str| row.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
        assert_eq!(get("estimated"), Some(Value::from(1)));
        assert_eq!(get("key_id"), Some(Value::from("key_1")));
        assert_eq!(get("session_id"), Some(Value::Null));
        assert_eq!(get("attempts_json"), Some(Value::from("[]")));
    }

    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn query_defaults_and_parsing() {
        let now = parse_rfc3339("2026-11-22T00:00:00Z").unwrap();
        let q = UsageQuery::parse(&[], now).unwrap();
        assert_eq!((q.to, q.from), (now, now - 30 * 86_400_000));
        let q = UsageQuery::parse(
            &pairs(&[
                ("from", "2026-11-01"),
                ("group_by", "day"),
                ("consumer", "con_1"),
            ]),
            now,
        )
        .unwrap();
        assert_eq!(q.group_by, Some(GroupBy::Day));
        assert_eq!(q.consumer.as_deref(), Some("con_1"));
        assert_eq!(rfc3339(q.from), "2026-11-01T00:00:00.000Z");
        assert!(UsageQuery::parse(&pairs(&[("group_by", "key; DROP")]), now).is_err());
        assert!(UsageQuery::parse(&pairs(&[("from", "yesterday")]), now).is_err());
        assert!(UsageQuery::parse(&pairs(&[("from", "2026-11-30")]), now).is_err());
    }
}
