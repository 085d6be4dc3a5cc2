//! Small local servers for the auth tests: a mail provider and an identity provider's JWKS endpoint.

use super::*;

/// Maps a request to (status, content type, body).
type Answer = Arc<dyn Fn(&Request) -> (u16, &'static str, Vec<u8>) + Send + Sync>;

/// Serves every connection accepted on `listener` with `answer`. Responses carry a Content-Length
/// and keep the connection open.
fn serve_simple(listener: TcpListener, answer: Answer) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let _ = sock.set_nodelay(true);
                let mut buf = Vec::new();
                while let Ok(Some(req)) = read_request(&mut sock, &mut buf).await {
                    let (status, content_type, body) = answer(&req);
                    let mut out = format!(
                        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
                        reason(status),
                        body.len()
                    )
                    .into_bytes();
                    out.extend_from_slice(&body);
                    if sock.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

/// A mail the gateway sent to the mock provider.
#[derive(Debug, Clone)]
pub struct SentMail {
    pub from: String,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// The Authorization header the gateway sent with it.
    pub authorization: Option<String>,
    /// The request's path.
    pub path: String,
}

impl SentMail {
    /// The first run of exactly six ASCII digits in the text part.
    pub fn code(&self) -> Option<String> {
        six_digit_code(&self.text)
    }
}

/// The first run of exactly six ASCII digits in `text` (not part of a longer number).
pub fn six_digit_code(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i - start == 6 {
                return Some(text[start..i].to_string());
            }
        } else {
            i += 1;
        }
    }
    None
}

/// A Resend-style mail provider on 127.0.0.1: records every `POST /emails` JSON body
/// (`{from, to, subject, text, html}`) and answers 200 `{"id": "..."}`.
pub struct MockMail {
    pub addr: SocketAddr,
    mails: Arc<Mutex<Vec<SentMail>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl MockMail {
    pub async fn start() -> io::Result<MockMail> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mails: Arc<Mutex<Vec<SentMail>>> = Arc::new(Mutex::new(Vec::new()));
        let log = mails.clone();
        let accept = serve_simple(
            listener,
            Arc::new(move |req: &Request| {
                if req.method != "POST" || !req.path.starts_with("/emails") {
                    return (
                        404,
                        "application/json",
                        br#"{"error":"not found"}"#.to_vec(),
                    );
                }
                let v: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
                let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                let mut log = log.lock().unwrap();
                log.push(SentMail {
                    from: s("from"),
                    to: s("to"),
                    subject: s("subject"),
                    text: s("text"),
                    html: s("html"),
                    authorization: req.header("authorization").map(str::to_string),
                    path: req.path.clone(),
                });
                let id = format!("mail-{}", log.len());
                (
                    200,
                    "application/json",
                    json!({ "id": id }).to_string().into_bytes(),
                )
            }),
        );
        Ok(MockMail {
            addr,
            mails,
            accept,
        })
    }

    /// The URL to give the gateway as EMAIL_API_URL.
    pub fn url(&self) -> String {
        format!("http://{}/emails", self.addr)
    }

    /// Every mail received so far, oldest first.
    pub fn mails(&self) -> Vec<SentMail> {
        self.mails.lock().unwrap().clone()
    }

    /// The mails to `to` (compared case-insensitively), oldest first.
    pub fn mails_to(&self, to: &str) -> Vec<SentMail> {
        self.mails()
            .into_iter()
            .filter(|m| m.to.eq_ignore_ascii_case(to))
            .collect()
    }

    /// Waits (at most `limit`) until more than `seen` mails went to `to`; returns the newest.
    pub async fn wait_for_mail(&self, to: &str, seen: usize, limit: Duration) -> Result<SentMail> {
        let deadline = Instant::now() + limit;
        loop {
            let mut mails = self.mails_to(to);
            if mails.len() > seen {
                return Ok(mails.pop().expect("non-empty"));
            }
            if Instant::now() > deadline {
                return Err(format!("no new mail to {to} within {limit:?} ({seen} before)").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The 6-digit code in the newest mail to `to` after the first `seen` (waits at most `limit`).
    pub async fn wait_for_code(&self, to: &str, seen: usize, limit: Duration) -> Result<String> {
        let mail = self.wait_for_mail(to, seen, limit).await?;
        mail.code()
            .ok_or_else(|| format!("no 6-digit code in the mail to {to}: {:?}", mail.text).into())
    }
}

impl Drop for MockMail {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

struct JwksState {
    keys: Value,
    failing: bool,
    hits: usize,
}

/// An identity provider's JWKS endpoint on 127.0.0.1: serves the current key set (changeable at
/// runtime, for rotations) at any path, or 500 while `set_failing(true)`; counts requests.
pub struct JwksServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<JwksState>>,
    accept: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves `{"keys": keys}`.
    pub async fn start(keys: Vec<Value>) -> io::Result<JwksServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(JwksState {
            keys: Value::Array(keys),
            failing: false,
            hits: 0,
        }));
        let shared = state.clone();
        let accept = serve_simple(
            listener,
            Arc::new(move |_req: &Request| {
                let mut s = shared.lock().unwrap();
                s.hits += 1;
                if s.failing {
                    return (500, "text/plain", b"identity provider down".to_vec());
                }
                (
                    200,
                    "application/json",
                    json!({ "keys": s.keys }).to_string().into_bytes(),
                )
            }),
        );
        Ok(JwksServer {
            addr,
            state,
            accept,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    /// Replaces the served keys.
    pub fn set_keys(&self, keys: Vec<Value>) {
        self.state.lock().unwrap().keys = Value::Array(keys);
    }

    /// Adds a key to the served set.
    pub fn add_key(&self, key: Value) {
        if let Value::Array(keys) = &mut self.state.lock().unwrap().keys {
            keys.push(key);
        }
    }

    /// While failing, every request is answered 500.
    pub fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }

    /// How many requests arrived so far (failed ones included).
    pub fn hits(&self) -> usize {
        self.state.lock().unwrap().hits
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
