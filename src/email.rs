//! Sending sign-in codes: a Resend-style HTTP provider (EMAIL_API_URL, EMAIL_API_KEY), or in dev mode
//! without one, the dev mailbox served at `/dev/mailbox`.

use wasm_bindgen::JsValue;
use worker::{Env, Headers, Method, Request, RequestInit, RequestRedirect};

use crate::error::{Error, Problem};
use crate::http::secret;
use crate::outbound::{self, Fetched};
use crate::records::Project;
use crate::store::kv::{self, DevMail, MailboxRecord};

/// The dev mailbox keeps every project's mails under one key.
pub const MAILBOX_KEY: &str = "all";
/// How long the mail provider may take to accept a sign-in mail.
const EMAIL_TIMEOUT_MS: u64 = 10_000;

/// Whether the gateway runs as a local dev server (`make dev` sets SLUICE_DEV): only when it is
/// exactly `1` or `true`, so a typo or `off` never opens the dev mailbox.
pub fn dev_mode(env: &Env) -> bool {
    secret(env, "SLUICE_DEV").is_some_and(|v| v == "1" || v == "true")
}

pub struct Mail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

pub fn sign_in_mail(project: &Project, to: &str, code: &str) -> Mail {
    let subject = project
        .email_subject
        .clone()
        .unwrap_or_else(|| format!("Your {} sign-in code", project.name));
    let text = format!("Your sign-in code for {} is {code}.\n\nIt expires in 10 minutes. If you did not ask for it, ignore this mail.", project.name);
    let html = format!("<p>Your sign-in code for {} is <strong style=\"font-size:1.4em;letter-spacing:.1em\">{code}</strong>.</p>\
                        <p>It expires in 10 minutes. If you did not ask for it, ignore this mail.</p>", escape(&project.name));
    Mail {
        to: to.to_string(),
        subject,
        text,
        html,
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An owner's sign-in code for the admin API.
pub fn owner_sign_in_mail(to: &str, code: &str) -> Mail {
    Mail {
        to: to.to_string(),
        subject: "Your Sluice sign-in code".into(),
        text: format!("Your code to sign in to Sluice is {code}.\n\nIt expires in 10 minutes. If you did not ask for it, ignore this mail."),
        html: format!("<p>Your code to sign in to Sluice is <strong style=\"font-size:1.4em;letter-spacing:.1em\">{code}</strong>.</p>\
                       <p>It expires in 10 minutes. If you did not ask for it, ignore this mail.</p>"),
    }
}

/// Whether mail can be delivered at all (a provider, or the dev mailbox); 503 otherwise.
pub fn ensure_configured(env: &Env) -> Result<(), Error> {
    if secret(env, "EMAIL_API_URL").is_some() || dev_mode(env) {
        Ok(())
    } else {
        Err(not_configured())
    }
}

fn not_configured() -> Error {
    Error::new(
        Problem::EmailNotConfigured,
        "Sign-in mail is not configured: the operator must set EMAIL_API_URL and EMAIL_API_KEY.",
    )
}

/// Delivers a mail: to the provider when configured, else to the dev mailbox in dev mode, else 503.
/// `from` is the sender's own address (a project's), `realm` what the dev mailbox files it under
/// (the project's slug, or `@owners`).
pub async fn send(
    env: &Env,
    from: Option<&str>,
    realm: &str,
    mail: Mail,
    now: i64,
) -> Result<(), Error> {
    let from = from
        .map(str::to_string)
        .or_else(|| secret(env, "EMAIL_FROM"))
        .unwrap_or_else(|| "Sluice <no-reply@sluice.dev>".into());
    match secret(env, "EMAIL_API_URL") {
        Some(url) => {
            let headers = Headers::new();
            headers.set("content-type", "application/json")?;
            if let Some(key) = secret(env, "EMAIL_API_KEY") {
                headers.set("authorization", &format!("Bearer {key}"))?;
            }
            let body = serde_json::json!({"from": from, "to": mail.to, "subject": mail.subject, "text": mail.text, "html": mail.html});
            let mut init = RequestInit::new();
            init.with_method(Method::Post)
                .with_headers(headers)
                .with_body(Some(JsValue::from_str(&body.to_string())))
                // The provider's key goes to its URL only: a redirect is a failed send.
                .with_redirect(RequestRedirect::Manual);
            let request = Request::new_with_init(&url, &init)?;
            let response = match outbound::fetch(request, EMAIL_TIMEOUT_MS, None).await {
                Fetched::Answered(r) => r,
                Fetched::Failed(e) => {
                    return Err(Error::upstream(format!(
                        "The email provider could not be reached: {e}."
                    )))
                }
                Fetched::TimedOut => {
                    return Err(Error::upstream(
                        "The email provider did not answer in time.",
                    ))
                }
            };
            if !(200..300).contains(&response.status_code()) {
                return Err(Error::upstream(format!(
                    "The email provider answered {}.",
                    response.status_code()
                )));
            }
            Ok(())
        }
        None if dev_mode(env) => {
            let store = kv::kv(env)?;
            let mut mails = kv::get::<MailboxRecord>(&store, MAILBOX_KEY)
                .await?
                .unwrap_or_default();
            mails.push(DevMail {
                project: realm.to_string(),
                to: mail.to,
                from,
                subject: mail.subject,
                text: mail.text,
                created_at: crate::time::rfc3339(now),
            });
            let keep = mails.len().saturating_sub(50);
            mails.drain(..keep);
            kv::put::<MailboxRecord>(&store, MAILBOX_KEY, &mails).await
        }
        None => Err(not_configured()),
    }
}
