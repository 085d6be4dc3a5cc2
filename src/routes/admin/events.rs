//! Admin: a project's auth event log, filterable by `type` and `since`.

use serde_json::{json, Value};

use super::{Call, Reply};
use crate::error::Error;
use crate::store::d1;
use crate::time::{parse_rfc3339, rfc3339};

/// Without `since`, the last week.
const DEFAULT_WINDOW_MS: i64 = 7 * 86_400_000;

pub async fn list(c: &mut Call<'_>, project: &str) -> Result<Reply, Error> {
    let project = d1::project_by_slug(&c.db, project).await?;
    let pairs = c.query()?;
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let since = match get("since") {
        Some(s) => parse_rfc3339(&s)
            .ok_or_else(|| Error::invalid_request("`since` must be an RFC 3339 date or time"))?,
        None => c.now - DEFAULT_WINDOW_MS,
    };
    let events: Vec<Value> = d1::list_auth_events(&c.db, &project.id, since, get("type").as_deref())
        .await?
        .iter()
        .map(|e| {
            json!({
                "id": e.id, "type": e.kind, "api_id": e.api_id, "consumer_id": e.consumer_id, "subject": e.subject,
                "ip": e.ip, "detail": e.detail, "time": rfc3339(e.created_at),
            })
        })
        .collect();
    Reply::ok(json!({ "events": events }))
}
