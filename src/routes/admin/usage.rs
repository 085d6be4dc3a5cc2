//! Admin: an API's usage report: totals, and groups (`group_by`) or the latest records.

use serde_json::{json, Value};

use super::{Call, Reply};
use crate::error::Error;
use crate::limits::spend::micro_to_usd;
use crate::store::d1;
use crate::time::rfc3339;
use crate::usage::UsageQuery;

/// The most recent records a report lists without `group_by`.
const RECORDS_LIMIT: u32 = 1000;

pub async fn report(c: &mut Call<'_>, api: &str) -> Result<Reply, Error> {
    let api = d1::api_by_id(&c.db, api).await?;
    let query = UsageQuery::parse(&c.query()?, c.now)?;
    let whole = UsageQuery {
        group_by: None,
        ..query.clone()
    };
    let totals = d1::usage_groups(&c.db, &api.id, &whole)
        .await?
        .pop()
        .map(|t| group_json(&t, None))
        .unwrap_or_else(|| json!({}));
    let refusals = d1::refusals_by_day(&c.db, &api.id, &query).await?;
    let mut totals = totals;
    totals["refused"] = json!(refusals.iter().map(|r| r.count as u64).sum::<u64>());
    let mut body = json!({
        "api_id": api.id, "from": rfc3339(query.from), "to": rfc3339(query.to), "consumer": query.consumer, "totals": totals,
    });
    match query.group_by {
        Some(g) => {
            let mut groups: Vec<Value> = d1::usage_groups(&c.db, &api.id, &query)
                .await?
                .iter()
                .map(|row| group_json(row, Some(g.as_str())))
                .collect();
            if g == crate::usage::GroupBy::Day {
                with_refusals(&mut groups, &refusals);
            }
            body["group_by"] = json!(g.as_str());
            body["groups"] = json!(groups);
        }
        None => {
            let records: Vec<Value> = d1::usage_records(&c.db, &api.id, &query, RECORDS_LIMIT)
                .await?
                .iter()
                .map(|r| r.to_record().map(|r| r.to_json()))
                .collect::<Result<_, _>>()?;
            body["records"] = json!(records);
        }
    }
    Reply::ok(body)
}

/// Each day's refusals beside its usage; a day with refusals only gets a row of its own.
fn with_refusals(days: &mut Vec<Value>, refusals: &[d1::RefusalDay]) {
    for day in days.iter_mut() {
        day["refused"] = json!(0);
    }
    for r in refusals {
        match days.iter_mut().find(|d| d["day"] == r.day.as_str()) {
            Some(d) => d["refused"] = json!(r.count as u64),
            None => days.push(json!({"day": r.day, "requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                "estimated_requests": 0, "cost_usd": 0, "overruns": 0, "refused": r.count as u64})),
        }
    }
    days.sort_by(|a, b| a["day"].as_str().cmp(&b["day"].as_str()));
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
