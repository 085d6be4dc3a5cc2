//! Data-plane helpers: chat requests with a key in the chosen header, and a streamed answer read
//! chunk by chunk with timestamps and parsed into SSE events.

use super::*;

/// How a client presents its consumer key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHeader {
    Bearer,
    XApiKey,
    None,
}

/// A chat request body; `model: None` leaves the model out (the API's default applies).
pub fn chat_body(model: Option<&str>, text: &str, stream: bool) -> Value {
    let mut body = json!({
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
    });
    if let Some(m) = model {
        body["model"] = Value::from(m);
    }
    body
}

/// Builds `POST {base}/v1/{project}/{api}/chat/completions` with the key in the chosen header.
pub fn chat_request(
    http: &reqwest::Client,
    base_url: &str,
    project: &str,
    api: &str,
    key: Option<(&str, KeyHeader)>,
) -> reqwest::RequestBuilder {
    let url = format!("{base_url}/v1/{project}/{api}/chat/completions");
    let req = http.post(url).header("content-type", "application/json");
    match key {
        Some((k, KeyHeader::Bearer)) => req.bearer_auth(k),
        Some((k, KeyHeader::XApiKey)) => req.header("x-api-key", k),
        _ => req,
    }
}

/// One piece of a response body, with when it arrived (since the request was sent).
#[derive(Debug, Clone)]
pub struct TimedChunk {
    pub at: Duration,
    pub bytes: Vec<u8>,
}

/// One Server-Sent Event, with when its last byte arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub at: Duration,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.data).ok()
    }
    /// `choices[0].delta.content` of a chat.completion.chunk.
    pub fn content(&self) -> Option<String> {
        self.json()?
            .pointer("/choices/0/delta/content")?
            .as_str()
            .map(str::to_string)
    }
    pub fn is_done(&self) -> bool {
        self.event.is_none() && self.data == "[DONE]"
    }
    /// A stream's error event as the OpenAI SDKs raise it: an unnamed event whose data has an
    /// `error` object with a `message` (and, for Sluice, the problem's members beside it).
    pub fn is_error(&self) -> bool {
        self.event.is_none()
            && self
                .json()
                .is_some_and(|v| v.pointer("/error/message").is_some_and(Value::is_string))
    }
}

/// A streamed response read to its end, every chunk and event timestamped.
#[derive(Debug)]
pub struct StreamRecord {
    /// When the request was sent; every `at` is measured from here.
    pub start: Instant,
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// When the response head arrived.
    pub head_at: Duration,
    pub chunks: Vec<TimedChunk>,
    pub events: Vec<SseEvent>,
    /// Bytes after the last complete event (a well-formed stream leaves none).
    pub leftover: String,
    /// Set when reading the body failed (the response did not end cleanly).
    pub error: Option<String>,
    /// When the body ended (or failed).
    pub end_at: Duration,
}

impl StreamRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// All content deltas joined.
    pub fn text(&self) -> String {
        self.events.iter().filter_map(SseEvent::content).collect()
    }
    /// The content events (those carrying a non-empty `delta.content`).
    pub fn content_events(&self) -> Vec<&SseEvent> {
        self.events
            .iter()
            .filter(|e| e.content().is_some_and(|c| !c.is_empty()))
            .collect()
    }
    pub fn body(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|c| c.bytes.clone()).collect()
    }
}

/// Sends `req` and reads the streamed answer chunk by chunk, timestamping against the send time.
/// `limit` bounds the whole exchange.
pub async fn send_and_stream(
    req: reqwest::RequestBuilder,
    limit: Duration,
) -> Result<StreamRecord> {
    let start = Instant::now();
    let resp = tokio::time::timeout(limit, req.send())
        .await
        .map_err(|_| "no response head in time")??;
    let head_at = start.elapsed();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut record = StreamRecord {
        start,
        status,
        headers,
        head_at,
        chunks: Vec::new(),
        events: Vec::new(),
        leftover: String::new(),
        error: None,
        end_at: head_at,
    };
    let mut parser = SseParser::default();
    let mut resp = resp;
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, resp.chunk()).await {
            Err(_) => {
                record.error = Some("the stream did not end in time".into());
                break;
            }
            Ok(Err(e)) => {
                record.error = Some(format!("reading the body failed: {e}"));
                break;
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(bytes))) => {
                let at = start.elapsed();
                for (event, data) in parser.push(&bytes) {
                    record.events.push(SseEvent { at, event, data });
                }
                record.chunks.push(TimedChunk {
                    at,
                    bytes: bytes.to_vec(),
                });
            }
        }
    }
    record.end_at = start.elapsed();
    record.leftover = parser.leftover();
    Ok(record)
}

/// A minimal SSE parser (LF or CRLF line endings; `event:` and `data:` fields; comments ignored).
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<(Option<String>, String)> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    out.push((self.event.take(), data));
                }
                self.event = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()),
                None => (line.clone(), String::new()),
            };
            match field.as_str() {
                "event" => self.event = Some(value),
                "data" => match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(&value);
                    }
                    None => self.data = Some(value),
                },
                _ => {}
            }
        }
        out
    }

    /// What has not formed a complete event yet.
    pub fn leftover(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.buf).into_owned();
        if let Some(d) = &self.data {
            s = format!("data: {d}\n{s}");
        }
        s
    }
}
