//! Replies read whole, and the owner's admin API as a client: projects, APIs, consumers, keys, and a
//! tenant (project, API, consumer and key) for most cases to start from.

use super::*;

/// A response read whole: status, headers and body text (with a JSON view when it parses).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub async fn read(resp: reqwest::Response) -> Result<Reply> {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        Ok(Reply {
            status,
            headers,
            text,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    /// The body as JSON, or `Value::Null` when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// The problem `type` of a problem+json body.
    pub fn problem_type(&self) -> Option<String> {
        self.json()
            .get("type")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// Short description for failure messages.
    pub fn describe(&self) -> String {
        let body: String = self.text.chars().take(600).collect();
        format!("{} {} {}", self.status, self.content_type(), body)
    }
}

/// Expects `status`, else an error naming what came back.
pub fn expect_status(reply: &Reply, status: u16, what: &str) -> Result<()> {
    if reply.status == status {
        Ok(())
    } else {
        Err(format!("{what}: expected {status}, got {}", reply.describe()).into())
    }
}

/// The owner's admin API.
#[derive(Clone)]
pub struct Admin {
    pub base_url: String,
    pub token: String,
    pub http: reqwest::Client,
}

/// A project with one API, one consumer and one key: what most data-plane tests start from.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub project: String,
    pub api: String,
    pub api_id: String,
    pub consumer_id: String,
    pub key_id: String,
    pub secret: String,
}

impl Admin {
    pub fn new(base_url: &str, token: &str) -> Admin {
        Admin {
            base_url: base_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: http_client(),
        }
    }

    /// Any admin call, authenticated; returns whatever came back.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Reply> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(20));
        if let Some(b) = body {
            req = req.json(&b);
        }
        Reply::read(req.send().await?).await
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> Result<Value> {
        let what = format!("{method} {path}");
        let reply = self.call(method, path, body).await?;
        expect_status(&reply, status, &what)?;
        Ok(reply.json())
    }

    pub async fn create_project(&self, slug: &str) -> Result<Value> {
        self.expect(
            reqwest::Method::POST,
            "/api/v1/projects",
            Some(json!({"slug": slug, "name": format!("Project {slug}")})),
            201,
        )
        .await
    }

    /// Creates an API in `consumer-key-only` mode; `upstream` is the `upstream` object as sent.
    pub async fn create_api(&self, project: &str, slug: &str, upstream: Value) -> Result<Value> {
        self.expect(
            reqwest::Method::POST,
            "/api/v1/gateway/apis",
            Some(json!({
                "project": project, "slug": slug, "name": format!("API {slug}"),
                "auth_mode": "consumer-key-only", "upstream": upstream,
            })),
            201,
        )
        .await
    }

    pub async fn get_api(&self, id: &str) -> Result<Reply> {
        self.call(
            reqwest::Method::GET,
            &format!("/api/v1/gateway/apis/{id}"),
            None,
        )
        .await
    }

    /// `PATCH /api/v1/projects/{project}`, answered as it comes.
    pub async fn patch_project(&self, project: &str, patch: Value) -> Result<Reply> {
        self.call(
            reqwest::Method::PATCH,
            &format!("/api/v1/projects/{project}"),
            Some(patch),
        )
        .await
    }

    pub async fn patch_api(&self, id: &str, patch: Value) -> Result<Value> {
        self.expect(
            reqwest::Method::PATCH,
            &format!("/api/v1/gateway/apis/{id}"),
            Some(patch),
            200,
        )
        .await
    }

    /// `GET /api/v1/projects/{project}/consumers`, answered as it comes.
    pub async fn list_consumers(&self, project: &str) -> Result<Reply> {
        self.call(
            reqwest::Method::GET,
            &format!("/api/v1/projects/{project}/consumers"),
            None,
        )
        .await
    }

    pub async fn create_consumer(&self, project: &str, name: &str) -> Result<ConsumerView> {
        let v = self
            .expect(
                reqwest::Method::POST,
                &format!("/api/v1/projects/{project}/consumers"),
                Some(json!({"name": name})),
                201,
            )
            .await?;
        typed(v, "consumer")
    }

    /// `status` is `enabled` or `disabled`.
    pub async fn set_consumer_status(
        &self,
        project: &str,
        id: &str,
        status: &str,
    ) -> Result<Value> {
        self.expect(
            reqwest::Method::PATCH,
            &format!("/api/v1/projects/{project}/consumers/{id}"),
            Some(json!({"status": status})),
            200,
        )
        .await
    }

    /// Returns `{id, name, secret, prefix, ...}`: the only time the secret is shown.
    pub async fn create_key(&self, project: &str, consumer_id: &str, name: &str) -> Result<NewKey> {
        let v = self
            .expect(
                reqwest::Method::POST,
                &format!("/api/v1/projects/{project}/consumers/{consumer_id}/keys"),
                Some(json!({"name": name})),
                201,
            )
            .await?;
        typed(v, "new key")
    }

    pub async fn list_keys(&self, project: &str) -> Result<Reply> {
        self.call(
            reqwest::Method::GET,
            &format!("/api/v1/projects/{project}/keys"),
            None,
        )
        .await
    }

    pub async fn revoke_key(&self, project: &str, key_id: &str) -> Result<()> {
        let reply = self
            .call(
                reqwest::Method::DELETE,
                &format!("/api/v1/projects/{project}/keys/{key_id}"),
                None,
            )
            .await?;
        expect_status(&reply, 204, "revoke key")
    }

    /// A project `project` with an API `api` on `upstream`, a consumer and one key.
    pub async fn tenant(&self, project: &str, api: &str, upstream: Value) -> Result<Tenant> {
        self.create_project(project).await?;
        let created = self.create_api(project, api, upstream).await?;
        let consumer = self.create_consumer(project, "consumer one").await?;
        let key = self.create_key(project, &consumer.id, "key one").await?;
        Ok(Tenant {
            project: project.to_string(),
            api: api.to_string(),
            api_id: str_field(&created, "id")?,
            consumer_id: consumer.id,
            key_id: key.id,
            secret: key.secret,
        })
    }
}

/// A consumer as the admin API shows it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ConsumerView {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub status: String,
}

/// A new consumer key: the only reply that carries its secret.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NewKey {
    pub id: String,
    pub name: String,
    pub secret: String,
    pub prefix: String,
    pub consumer_id: String,
}

/// A reply body as its typed view, or an error naming what did not fit.
fn typed<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value(v.clone())
        .map_err(|e| format!("the {what} reply does not fit ({e}): {v}").into())
}

/// A string member of a JSON object, or an error naming what was missing.
pub fn str_field(v: &Value, name: &str) -> Result<String> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("no string `{name}` in {v}").into())
}
