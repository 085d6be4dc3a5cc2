//! The official SDKs, unchanged, against the gateway: `openai` for Node and for Python, and
//! Anthropic's TypeScript SDK (pinned in package.json and tests/sdk/requirements.lock, installed by
//! the set-up into node_modules and target/sdk-python). Each script asserts what its SDK returns and raises; this case gives them tenants
//! for every situation and checks what the upstream received.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{CaseFn, CaseResult, Ctx};
use crate::support::*;

pub fn cases() -> Vec<(&'static str, CaseFn)> {
    cases![official_sdks_work_unchanged]
}

/// (name, mock scenario, upstream extras, default plan limits).
fn situations() -> Vec<(&'static str, &'static str, Value, Value)> {
    let models = json!({"models": ["mock-1"]});
    vec![
        ("ok", "ok/chunks/3", models.clone(), json!({})),
        ("tools", "ok/chunks/1/kind/tools", models.clone(), json!({})),
        ("embed", "ok", json!({"models": ["emb-1"]}), json!({})),
        (
            "minute",
            "ok",
            models.clone(),
            json!({"requests_per_minute": 1}),
        ),
        ("day", "ok", models.clone(), json!({"requests_per_day": 1})),
        ("broken", "status/500", models.clone(), json!({})),
        ("cut", "cut/chunks/2", models.clone(), json!({})),
        (
            "budget",
            "ok/chunks/60/delay/2",
            models.clone(),
            json!({"tokens_per_day": 150}),
        ),
        (
            "claude",
            "ok/chunks/1/kind/tools",
            json!({"models": ["claude-mock", "claude-other"]}),
            json!({}),
        ),
    ]
}

async fn run_script(program: &str, script: &str, tenants: &str) -> Result<String> {
    let root = repo_root();
    let child = tokio::process::Command::new(program)
        .arg(root.join("tests/sdk").join(script))
        .current_dir(&root)
        .env("SLUICE_SDK_TENANTS", tenants)
        // The Python SDK, as the set-up installed it (tests/sdk/requirements.lock).
        .env("PYTHONPATH", root.join("target/sdk-python"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("{program} {script} failed ({}):\n{text}", out.status).into());
    }
    Ok(text)
}

/// A tenant for every situation, for one script (limits and budgets are not shared between them).
async fn tenants_for(c: &Ctx, script: &str) -> Result<String> {
    let mut tenants = Map::new();
    for (name, scenario, extra, limits) in situations() {
        let slug = format!("sdk-{script}-{name}");
        let t = c.tenant_on_mock(&slug, scenario, extra).await?;
        if limits.as_object().is_some_and(|l| !l.is_empty()) {
            let r = c
                .admin
                .call(
                    reqwest::Method::PATCH,
                    &format!("/api/v1/gateway/apis/{}/plans/default", t.api_id),
                    Some(limits),
                )
                .await?;
            expect_status(&r, 200, "the situation's plan")?;
        }
        let base = format!("{}/v1/{}/{}", c.base, t.project, t.api);
        tenants.insert(name.to_string(), json!({"base": base, "key": t.secret}));
    }
    Ok(Value::Object(tenants).to_string())
}

async fn official_sdks_work_unchanged(c: Arc<Ctx>) -> CaseResult {
    let (node, python, claude) = (
        tenants_for(&c, "node").await?,
        tenants_for(&c, "py").await?,
        tenants_for(&c, "claude").await?,
    );
    let (node_openai, python_openai, anthropic) = tokio::join!(
        run_script("node", "openai_node.mjs", &node),
        run_script("python3", "openai_py.py", &python),
        run_script("node", "anthropic_node.mjs", &claude),
    );
    for out in [node_openai?, python_openai?, anthropic?] {
        for line in out.lines().filter(|l| l.starts_with("measured:")) {
            println!("    {line}");
        }
    }

    // The structured-output schema reached the upstream in the SDK's key order.
    let structured = c
        .upstream_requests("sdk-node-ok")
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .find(|b| b.contains("json_schema"))
        .ok_or("the SDK's structured-output request did not reach the upstream")?;
    let reasoning = structured.find("\"reasoning\"").ok_or("no reasoning")?;
    let answer = structured.find("\"answer\"").ok_or("no answer")?;
    assert!(
        reasoning < answer,
        "properties in the SDK's order: {structured}"
    );
    Ok(())
}
