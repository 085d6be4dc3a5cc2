//! Scheduled housekeeping (the Cron Trigger): auth events older than each project's
//! `auth_event_retention_days` are deleted, and OAuth grant rows a day after they ended.

use worker::Env;

use crate::http::now_ms;
use crate::store::d1;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// One run. A project whose purge fails is logged and the others still run; the next run retries.
pub async fn run(env: &Env) {
    let db = match d1::db(env) {
        Ok(db) => db,
        Err(e) => {
            worker::console_error!("housekeeping: no database: {}", e.detail);
            return;
        }
    };
    let projects = match d1::list_projects(&db).await {
        Ok(p) => p,
        Err(e) => {
            worker::console_error!("housekeeping: projects not read: {}", e.detail);
            return;
        }
    };
    let now = now_ms();
    let mut purged = 0u64;
    for project in &projects {
        let keep_ms = i64::from(project.sign_in.auth_event_retention_days).saturating_mul(DAY_MS);
        match d1::purge_auth_events(&db, &project.id, now.saturating_sub(keep_ms)).await {
            Ok(n) => purged += n,
            Err(e) => worker::console_error!(
                "housekeeping: auth events of {} not purged: {}",
                project.slug,
                e.detail
            ),
        }
    }
    worker::console_log!(
        "housekeeping: {purged} auth events past retention deleted across {} projects",
        projects.len()
    );
    match d1::purge_oauth_grants(&db, now.saturating_sub(DAY_MS)).await {
        Ok(n) => worker::console_log!("housekeeping: {n} ended OAuth grants deleted"),
        Err(e) => worker::console_error!("housekeeping: OAuth grants not purged: {}", e.detail),
    }
}
