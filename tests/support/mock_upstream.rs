//! A mock OpenAI-compatible upstream whose behaviour each API picks by its base URL path.

use super::*;

/// What the mock answers, chosen by the URL path `/s/<scenario>[/<key>/<value>]*/chat/completions`
/// (or `/responses`, `/embeddings`: `ok` then answers in that API's shape; `/v1/messages`: as
/// Anthropic's Messages API does, see `answer_anthropic`):
///
/// - `ok` — a chat.completion (or, for `"stream":true`, `chunks` content chunks `delay` ms apart, a
///   usage chunk with `"choices":[]`, then `data: [DONE]`). Default 3 chunks, no delay.
/// - `status/<code>` — that status with an OpenAI-style error body.
/// - `cut` — streams `chunks` (default 2) chunks `delay` ms apart (default 50), then half of
///   another, then closes the socket without ending the chunked body.
/// - `hang/<ms>` — waits that long before the response head, then answers like `ok`.
///
/// Modifiers for `ok`, `hang` and `cut`:
/// - `honour/1` — an upstream that honours the cap: at most `max_tokens` (or
///   `max_completion_tokens`) chunks per choice, each chunk one token. Without it the mock ignores caps.
/// - `kind/<k>` — what the chunks carry: `content` (default), `tools` (tool-call arguments),
///   `function` (a legacy function call), `refusal`, `audio` (a transcript) or `cjk` (CJK text).
/// - `prompt/<n>` — the prompt tokens it reports (default 7); `nousage/1` — no usage at all.
/// - `stall/<ms>` — a stream pauses that long after its first chunk; a whole answer after half
///   its body.
/// - `badusage/1` — the usage it reports says `"completion_tokens": -5`.
/// - `body/html` or `body/error` — a whole answer is 200 with an HTML page, or 200 with an OpenAI
///   error body; `junk/1` — a stream sends `data: <html>` after its first chunk.
/// - `reqid/<id>` — every answer head carries `x-request-id: <id>` and `openai-processing-ms: 42`.
///
/// Any other `key/value` pair (e.g. `tag/<name>`) is ignored, so a test can mark its requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub kind: ScenarioKind,
    pub chunks: usize,
    pub delay_ms: u64,
    pub params: HashMap<String, String>,
}

impl Scenario {
    fn flag(&self, name: &str) -> bool {
        self.params.get(name).is_some_and(|v| v == "1")
    }
    fn number(&self, name: &str) -> Option<u64> {
        self.params.get(name).and_then(|v| v.parse().ok())
    }
    /// What each chunk carries.
    pub fn output(&self) -> &str {
        self.params.get("kind").map_or("content", String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScenarioKind {
    Ok,
    Status(u16),
    Cut,
    Hang(u64),
    /// A stream of `n` chunks, then OpenAI's mid-stream error event (naming internals), then `[DONE]`.
    ErrorEvent,
}

impl Scenario {
    /// Parses the part of the path after `/s/` (without `/chat/completions`).
    pub fn parse(spec: &str) -> Option<Scenario> {
        let segs: Vec<&str> = spec.split('/').filter(|s| !s.is_empty()).collect();
        let (kind, rest) = match segs.as_slice() {
            ["ok", rest @ ..] => (ScenarioKind::Ok, rest),
            ["cut", rest @ ..] => (ScenarioKind::Cut, rest),
            ["errevent", rest @ ..] => (ScenarioKind::ErrorEvent, rest),
            ["status", code, rest @ ..] => (ScenarioKind::Status(code.parse().ok()?), rest),
            ["hang", ms, rest @ ..] => (ScenarioKind::Hang(ms.parse().ok()?), rest),
            _ => return None,
        };
        if rest.len() % 2 != 0 {
            return None;
        }
        let params: HashMap<String, String> = rest
            .chunks(2)
            .map(|kv| (kv[0].to_string(), kv[1].to_string()))
            .collect();
        let default_chunks = if kind == ScenarioKind::Cut { 2 } else { 3 };
        let default_delay = if kind == ScenarioKind::Cut { 50 } else { 0 };
        let chunks = match params.get("chunks") {
            Some(v) => v.parse().ok()?,
            None => default_chunks,
        };
        let delay_ms = match params.get("delay") {
            Some(v) => v.parse().ok()?,
            None => default_delay,
        };
        Some(Scenario {
            kind,
            chunks,
            delay_ms,
            params,
        })
    }
}

/// The text of content chunk `i` (0-based) the mock streams.
pub fn mock_chunk_text(i: usize) -> String {
    format!("tok{i} ")
}

/// The CJK text of chunk `i` for `kind/cjk`: four characters, 12 bytes.
pub fn mock_cjk_text(i: usize) -> String {
    const SET: [&str; 4] = ["漢字テス", "中文输出", "한국어요", "日本語だ"];
    SET[i % 4].to_string()
}

/// The generated text chunk `i` carries for `kind`.
pub fn mock_output_text(kind: &str, i: usize) -> String {
    match kind {
        "cjk" => mock_cjk_text(i),
        "tools" | "function" => format!("{{\"k{i}\":1}}"),
        _ => mock_chunk_text(i),
    }
}

/// The whole reply text for `n` chunks (also the non-streamed completion's content).
pub fn mock_text(n: usize) -> String {
    (0..n).map(mock_chunk_text).collect()
}

/// A request the mock received, and what it sent back.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub seq: usize,
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    /// Header names lower-cased, in order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub received_at: Instant,
    /// The status the mock answered (0 if it never answered).
    pub status: u16,
    /// The response body bytes written so far (without chunked framing).
    pub reply: Vec<u8>,
    /// When each piece of the body was written, and how many body bytes it carried.
    pub writes: Vec<(Instant, usize)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

type Log = Arc<Mutex<Vec<Recorded>>>;

/// The mock upstream server. Stops accepting when dropped.
pub struct MockUpstream {
    pub addr: SocketAddr,
    log: Log,
    accept: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    /// Binds 127.0.0.1 on a free port and serves on the current tokio runtime.
    pub async fn start() -> io::Result<MockUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        let accept_log = log.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let log = accept_log.clone();
                tokio::spawn(async move {
                    let _ = serve_connection(sock, log).await;
                });
            }
        });
        Ok(MockUpstream { addr, log, accept })
    }

    /// The base URL to give an API for `scenario`, e.g. `ok/chunks/5/delay/150`.
    pub fn base_url(&self, scenario: &str) -> String {
        format!("http://{}/s/{}", self.addr, scenario.trim_matches('/'))
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// The requests whose path contains `needle` (e.g. `tag/<name>/`).
    pub fn requests_matching(&self, needle: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.contains(needle))
            .collect()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve_connection(mut sock: TcpStream, log: Log) -> io::Result<()> {
    sock.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some(req) = read_request(&mut sock, &mut buf).await? else {
            return Ok(());
        };
        let wants_close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let seq = {
            let mut log = log.lock().unwrap();
            let seq = log.len();
            log.push(Recorded {
                seq,
                method: req.method.clone(),
                path: req.path.clone(),
                headers: req.headers.clone(),
                body: req.body.clone(),
                received_at: Instant::now(),
                status: 0,
                reply: Vec::new(),
                writes: Vec::new(),
            });
            seq
        };
        let mut out = Responder {
            sock: &mut sock,
            log: &log,
            seq,
            extra: String::new(),
        };
        let keep_open = respond(&mut out, &req).await?;
        if !keep_open || wants_close {
            let _ = sock.shutdown().await;
            return Ok(());
        }
    }
}

/// Writes responses and records what was sent.
struct Responder<'a> {
    sock: &'a mut TcpStream,
    log: &'a Log,
    seq: usize,
    /// Header lines (each ending in CRLF) every answer head carries.
    extra: String,
}

impl Responder<'_> {
    fn note(&self, status: Option<u16>, payload: &[u8]) {
        let mut log = self.log.lock().unwrap();
        if let Some(r) = log.get_mut(self.seq) {
            if let Some(s) = status {
                r.status = s;
            }
            r.reply.extend_from_slice(payload);
            r.writes.push((Instant::now(), payload.len()));
        }
    }

    /// A complete response with Content-Length: head and body in one write.
    async fn whole(
        &mut self,
        status: u16,
        content_type: &str,
        extra: &str,
        body: &[u8],
    ) -> io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{extra}{}\r\n",
            reason(status),
            body.len(),
            self.extra
        )
        .into_bytes();
        out.extend_from_slice(body);
        self.note(Some(status), body);
        self.sock.write_all(&out).await
    }

    /// A chunked response head together with its first chunk, in one write.
    async fn chunked_head(
        &mut self,
        status: u16,
        content_type: &str,
        first: &[u8],
    ) -> io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n{}\r\n",
            reason(status),
            self.extra
        )
        .into_bytes();
        out.extend_from_slice(&frame_chunk(first));
        self.note(Some(status), first);
        self.sock.write_all(&out).await
    }

    async fn chunk(&mut self, payload: &[u8]) -> io::Result<()> {
        self.note(None, payload);
        self.sock.write_all(&frame_chunk(payload)).await
    }

    async fn end_chunks(&mut self) -> io::Result<()> {
        self.sock.write_all(b"0\r\n\r\n").await
    }
}

fn frame_chunk(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

fn openai_error(status: u16, message: &str) -> Vec<u8> {
    json!({"error": {"message": message, "type": "mock_error", "param": null, "code": status}})
        .to_string()
        .into_bytes()
}

/// The SSE event (one `data:` frame) for content chunk `i` of `n`.
fn sse(data: &str) -> Vec<u8> {
    format!("data: {data}\n\n").into_bytes()
}

fn stream_chunk(id: &str, model: &str, i: usize, n: usize) -> Vec<u8> {
    stream_chunk_of("content", id, model, i, n)
}

/// The delta of chunk `i` for `kind`.
fn delta_of(kind: &str, i: usize) -> Value {
    let text = mock_output_text(kind, i);
    let mut delta = match kind {
        "tools" => json!({"tool_calls": [{"index": 0, "function": {"arguments": text}}]}),
        "function" => json!({"function_call": {"arguments": text}}),
        "refusal" => json!({"refusal": text}),
        "audio" => json!({"audio": {"transcript": text}}),
        _ => json!({"content": text}),
    };
    if i == 0 {
        delta["role"] = json!("assistant");
        if kind == "tools" {
            delta["tool_calls"][0]["id"] = json!("call_mock");
            delta["tool_calls"][0]["type"] = json!("function");
            delta["tool_calls"][0]["function"]["name"] = json!("lookup");
        }
    }
    delta
}

fn stream_chunk_of(kind: &str, id: &str, model: &str, i: usize, n: usize) -> Vec<u8> {
    let delta = delta_of(kind, i);
    let finish = if i + 1 == n {
        json!("stop")
    } else {
        Value::Null
    };
    sse(&json!({
        "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
    .to_string())
}

fn usage(prompt: u64, n: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n as u64})
}

/// The completion cap the request carries (the smaller name wins), if any.
fn request_cap(body: &Value) -> Option<usize> {
    ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .filter_map(|k| body.get(*k).and_then(Value::as_u64))
        .min()
        .map(|c| c as usize)
}

/// Answers one request; returns whether the connection may carry another.
async fn respond(out: &mut Responder<'_>, req: &Request) -> io::Result<bool> {
    let path = req.path.split('?').next().unwrap_or("");
    let (spec, endpoint) = [
        "/chat/completions",
        "/responses",
        "/embeddings",
        "/v1/messages",
    ]
    .iter()
    .find_map(|suffix| {
        path.strip_prefix("/s/")
            .and_then(|p| p.strip_suffix(suffix))
            .map(|spec| (spec, *suffix))
    })
    .unwrap_or(("", ""));
    let scenario = Scenario::parse(spec);
    let Some(scenario) = scenario else {
        let body = openai_error(404, &format!("mock upstream: no scenario for {path}"));
        out.whole(404, "application/json", "", &body).await?;
        return Ok(true);
    };
    if req.method != "POST" {
        let body = openai_error(405, "mock upstream: use POST");
        out.whole(405, "application/json", "", &body).await?;
        return Ok(true);
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-model")
        .to_string();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let id = format!("chatcmpl-mock{}", out.seq);
    if let Some(rid) = scenario.params.get("reqid") {
        out.extra = format!("x-request-id: {rid}\r\nopenai-processing-ms: 42\r\n");
    }
    let delay = Duration::from_millis(scenario.delay_ms);
    let mut n = scenario.chunks;
    if scenario.flag("honour") {
        if let Some(cap) = request_cap(&body) {
            n = n.min(cap);
        }
    }
    if endpoint == "/v1/messages" {
        return answer_anthropic(out, req, &scenario, &body, &model, stream, n, delay).await;
    }
    if scenario.kind == ScenarioKind::Ok && endpoint == "/embeddings" {
        let prompt = scenario.number("prompt").unwrap_or(7);
        let vector = [0.25f32, -0.5, 0.125];
        // As OpenAI does: floats, or (as the Node SDK asks by default) little-endian f32 in base64.
        let embedding = match body.get("encoding_format").and_then(Value::as_str) {
            Some("base64") => {
                use base64::Engine as _;
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            _ => json!(vector),
        };
        let answer = json!({"object": "list", "model": model, "data": [
            {"object": "embedding", "index": 0, "embedding": embedding}],
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt}});
        out.whole(200, "application/json", "", answer.to_string().as_bytes())
            .await?;
        return Ok(true);
    }
    if scenario.kind == ScenarioKind::Ok && endpoint == "/responses" {
        let prompt = scenario.number("prompt").unwrap_or(7);
        return answer_responses(out, &model, stream, n, delay, prompt).await;
    }
    let choices = body.get("n").and_then(Value::as_u64).unwrap_or(1).max(1) as usize;
    let shape = Shape {
        kind: scenario.output().to_string(),
        prompt: scenario.number("prompt").unwrap_or(7),
        usage: !scenario.flag("nousage"),
        bad_usage: scenario.flag("badusage"),
        stall: Duration::from_millis(scenario.number("stall").unwrap_or(0)),
        choices,
        body: scenario.params.get("body").cloned(),
        junk: scenario.flag("junk"),
    };

    match scenario.kind {
        ScenarioKind::Status(code) => {
            // A redirect points back at this very path: a gateway that followed it would be seen
            // asking again.
            let extra = match code {
                429 => "retry-after: 7\r\n".to_string(),
                300..=399 => format!("location: {}\r\n", req.path),
                _ => String::new(),
            };
            // A 401 says what OpenAI says of a bad key: its tail, and where keys are managed.
            let body = if code == 401 {
                json!({"error": {"message": "Incorrect API key provided: sk-mock-****wxyz. You can find your API key at https://internal.mock/org-4242/keys.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}).to_string().into_bytes()
            } else {
                openai_error(code, &format!("mock upstream failure {code}"))
            };
            out.whole(code, "application/json", &extra, &body).await?;
            Ok(true)
        }
        ScenarioKind::Hang(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            answer_ok(out, &id, &model, stream, n, delay, &shape).await
        }
        ScenarioKind::Ok => answer_ok(out, &id, &model, stream, n, delay, &shape).await,
        ScenarioKind::Cut => {
            let chunks: Vec<Vec<u8>> = (0..n)
                .map(|i| stream_chunk_of(&shape.kind, &id, &model, i, n + 1))
                .collect();
            if stream {
                // Half of the next event, in a chunk that promises more than ever comes.
                let next = stream_chunk_of(&shape.kind, &id, &model, n, n + 1);
                let half = &next[..next.len() / 2];
                let mut partial = format!("{:x}\r\n", next.len()).into_bytes();
                partial.extend_from_slice(half);
                match chunks.first() {
                    Some(first) => {
                        out.chunked_head(200, "text/event-stream", first).await?;
                        for c in &chunks[1..] {
                            tokio::time::sleep(delay).await;
                            out.chunk(c).await?;
                        }
                        tokio::time::sleep(delay).await;
                        out.note(None, half);
                        out.sock.write_all(&partial).await?;
                    }
                    None => {
                        // Cut at the very first event: the head, then half an event, then nothing.
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                        let mut bytes = head.as_bytes().to_vec();
                        bytes.extend_from_slice(&partial);
                        out.note(Some(200), half);
                        out.sock.write_all(&bytes).await?;
                    }
                }
            } else {
                // A Content-Length that is never reached.
                let body = completion(&id, &model, n, &shape);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let mut bytes = head.into_bytes();
                bytes.extend_from_slice(&body[..body.len() / 2]);
                out.note(Some(200), &body[..body.len() / 2]);
                out.sock.write_all(&bytes).await?;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(false)
        }
        ScenarioKind::ErrorEvent => {
            let mut frames: Vec<Vec<u8>> = (0..n.max(1))
                .map(|i| stream_chunk_of(&shape.kind, &id, &model, i, n + 1))
                .collect();
            frames.push(sse(r#"{"error":{"message":"The server had an error at https://10.1.2.3/pool-7 for org-777","type":"server_error","param":null,"code":null}}"#));
            frames.push(sse("[DONE]"));
            out.chunked_head(200, "text/event-stream", &frames[0])
                .await?;
            for f in &frames[1..] {
                tokio::time::sleep(delay).await;
                out.chunk(f).await?;
            }
            out.end_chunks().await?;
            Ok(true)
        }
    }
}

/// A Responses API answer of `n` text deltas: a `response` object, or its stream of typed events
/// ending in `response.completed` (no `[DONE]`).
async fn answer_responses(
    out: &mut Responder<'_>,
    model: &str,
    stream: bool,
    n: usize,
    delay: Duration,
    prompt: u64,
) -> io::Result<bool> {
    let text = mock_text(n);
    let usage =
        json!({"input_tokens": prompt, "output_tokens": n, "total_tokens": prompt + n as u64});
    let message = |text: &str, status: &str| {
        json!({"type": "message", "id": "msg_mock", "status": status,
        "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]})
    };
    let response = |status: &str, output: Vec<Value>, usage: Value| {
        json!({"id": "resp_mock", "object": "response",
        "created_at": 1_700_000_000, "status": status, "model": model, "output": output, "usage": usage})
    };
    if !stream {
        let answer = response("completed", vec![message(&text, "completed")], usage);
        out.whole(200, "application/json", "", answer.to_string().as_bytes())
            .await?;
        return Ok(true);
    }
    let mut events = vec![
        json!({"type": "response.created", "response": response("in_progress", vec![], Value::Null)}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": message("", "in_progress")}),
        json!({"type": "response.content_part.added", "item_id": "msg_mock", "output_index": 0, "content_index": 0,
               "part": {"type": "output_text", "text": "", "annotations": []}}),
    ];
    let first_delta = events.len();
    for i in 0..n {
        events.push(
            json!({"type": "response.output_text.delta", "item_id": "msg_mock", "output_index": 0,
            "content_index": 0, "delta": mock_chunk_text(i)}),
        );
    }
    let after = events.len();
    events.push(json!({"type": "response.output_text.done", "item_id": "msg_mock", "output_index": 0, "content_index": 0, "text": text}));
    events.push(json!({"type": "response.output_item.done", "output_index": 0, "item": message(&text, "completed")}));
    events.push(json!({"type": "response.completed", "response": response("completed", vec![message(&text, "completed")], usage)}));
    let frames: Vec<Vec<u8>> = events
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e["sequence_number"] = json!(i);
            let kind = e["type"].as_str().unwrap_or("").to_string();
            format!("event: {kind}\ndata: {e}\n\n").into_bytes()
        })
        .collect();
    out.chunked_head(200, "text/event-stream", &frames[0])
        .await?;
    for (i, f) in frames.iter().enumerate().skip(1) {
        if i > first_delta && i < after {
            tokio::time::sleep(delay).await;
        }
        out.chunk(f).await?;
    }
    out.end_chunks().await?;
    Ok(true)
}

/// How an answer looks, beyond its length.
struct Shape {
    kind: String,
    prompt: u64,
    usage: bool,
    /// The usage reported is spoiled (a negative count).
    bad_usage: bool,
    stall: Duration,
    choices: usize,
    /// `html` or `error`: what a whole answer's 200 carries instead of a completion.
    body: Option<String>,
    /// A stream sends an event that is not JSON after its first chunk.
    junk: bool,
}

impl Shape {
    fn usage_of(&self, n: usize) -> Value {
        let mut u = usage(self.prompt, n);
        if self.bad_usage {
            u["completion_tokens"] = json!(-5);
        }
        u
    }
}

/// The whole message of a non-streamed answer of `n` chunks of `kind`.
fn message_of(kind: &str, n: usize) -> Value {
    let text: String = (0..n).map(|i| mock_output_text(kind, i)).collect();
    match kind {
        "tools" => json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_mock", "type": "function", "function": {"name": "lookup", "arguments": text}}]}),
        "function" => {
            json!({"role": "assistant", "content": null, "function_call": {"name": "lookup", "arguments": text}})
        }
        "refusal" => json!({"role": "assistant", "content": null, "refusal": text}),
        "audio" => {
            json!({"role": "assistant", "content": null, "audio": {"id": "audio_1", "transcript": text}})
        }
        _ => json!({"role": "assistant", "content": text}),
    }
}

fn completion(id: &str, model: &str, n: usize, shape: &Shape) -> Vec<u8> {
    let choices: Vec<Value> = (0..shape.choices)
        .map(
            |i| json!({"index": i, "message": message_of(&shape.kind, n), "finish_reason": "stop"}),
        )
        .collect();
    let mut v = json!({
        "id": id, "object": "chat.completion", "created": 1_700_000_000, "model": model, "choices": choices,
    });
    if shape.usage {
        v["usage"] = shape.usage_of(n * shape.choices);
    }
    v.to_string().into_bytes()
}

async fn answer_ok(
    out: &mut Responder<'_>,
    id: &str,
    model: &str,
    stream: bool,
    n: usize,
    delay: Duration,
    shape: &Shape,
) -> io::Result<bool> {
    // `body/…` answers that way whether or not a stream was asked for.
    if !stream || shape.body.is_some() {
        let (content_type, body) = match shape.body.as_deref() {
            Some("html") => (
                "text/html",
                b"<html><body>502 Bad Gateway</body></html>".to_vec(),
            ),
            Some("error") => (
                "application/json",
                openai_error(500, "mock failure at org-4242"),
            ),
            _ => ("application/json", completion(id, model, n, shape)),
        };
        if shape.stall.is_zero() {
            out.whole(200, content_type, "", &body).await?;
            return Ok(true);
        }
        // The head and half the body, then a pause.
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let (first, rest) = body.split_at(body.len() / 2);
        out.note(Some(200), &body);
        out.sock
            .write_all(&[head.as_bytes(), first].concat())
            .await?;
        tokio::time::sleep(shape.stall).await;
        out.sock.write_all(rest).await?;
        return Ok(true);
    }
    let mut payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| stream_chunk_of(&shape.kind, id, model, i, n))
        .collect();
    let content_chunks = payloads.len();
    if shape.usage {
        payloads.push(sse(&json!({
            "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
            "choices": [], "usage": shape.usage_of(n),
        })
        .to_string()));
    }
    payloads.push(sse("[DONE]"));
    if shape.junk {
        payloads.insert(1, b"data: <html>oops</html>\n\n".to_vec());
    }
    out.chunked_head(200, "text/event-stream", &payloads[0])
        .await?;
    if !shape.stall.is_zero() {
        tokio::time::sleep(shape.stall).await;
    }
    for (i, p) in payloads.iter().enumerate().skip(1) {
        // Content chunks are `delay` apart; usage and [DONE] follow the last one at once.
        if i < content_chunks {
            tokio::time::sleep(delay).await;
        }
        out.chunk(p).await?;
    }
    out.end_chunks().await?;
    Ok(true)
}

/// Anthropic's Messages API as its documentation shows it: `x-api-key` and `anthropic-version`
/// required (401 otherwise), `max_tokens` required (400); `ok` answers a message of `chunks` text
/// pieces (or, with `kind/tools`, a text and a `tool_use` block), streamed as `message_start`,
/// `ping`, `content_block_*`, `message_delta` (output tokens) and `message_stop`; `status/<code>`
/// answers Anthropic's error body (529 `overloaded_error`); `errevent` streams an `error` event.
#[allow(clippy::too_many_arguments)]
async fn answer_anthropic(
    out: &mut Responder<'_>,
    req: &Request,
    scenario: &Scenario,
    body: &Value,
    model: &str,
    stream: bool,
    n: usize,
    delay: Duration,
) -> io::Result<bool> {
    let error = |kind: &str, message: &str| {
        json!({"type": "error", "error": {"type": kind, "message": message}}).to_string()
    };
    if req.header("x-api-key").is_none() || req.header("anthropic-version").is_none() {
        let e = error(
            "authentication_error",
            "x-api-key and anthropic-version are required",
        );
        out.whole(401, "application/json", "", e.as_bytes()).await?;
        return Ok(true);
    }
    if body.get("max_tokens").and_then(Value::as_u64).is_none() {
        let e = error("invalid_request_error", "max_tokens: Field required");
        out.whole(400, "application/json", "", e.as_bytes()).await?;
        return Ok(true);
    }
    if let ScenarioKind::Status(code) = scenario.kind {
        let kind = match code {
            529 => "overloaded_error",
            429 => "rate_limit_error",
            _ => "api_error",
        };
        let e = error(kind, &format!("mock anthropic failure {code}"));
        out.whole(code, "application/json", "", e.as_bytes())
            .await?;
        return Ok(true);
    }
    let input = scenario.number("prompt").unwrap_or(11);
    let tools = scenario.output() == "tools";
    let id = format!("msg_mock{}", out.seq);
    let text: Vec<String> = (0..n).map(mock_chunk_text).collect();
    // Extended thinking asked for: a thinking block (with its signature) comes first. Stop
    // sequences asked for: the answer stops at the first.
    let thinking = body.pointer("/thinking/type").and_then(Value::as_str) == Some("enabled");
    let stop_sequence = body
        .pointer("/stop_sequences/0")
        .cloned()
        .unwrap_or(Value::Null);
    let stop = match (tools, stop_sequence.is_null()) {
        (true, _) => "tool_use",
        (false, false) => "stop_sequence",
        (false, true) => "end_turn",
    };
    let output = n as u64 + u64::from(tools) * 4 + u64::from(thinking) * 3;
    let k = u64::from(thinking);
    if !stream {
        let mut content = vec![json!({"type": "text", "text": text.concat()})];
        if thinking {
            content.insert(0, json!({"type": "thinking", "thinking": "Let me think.", "signature": "c2lnbmF0dXJl"}));
        }
        if tools {
            content.push(json!({"type": "tool_use", "id": "toolu_mock1", "name": "lookup", "input": {"q": "cats"}}));
        }
        let answer = json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": stop_sequence,
            "usage": {"input_tokens": input, "output_tokens": output, "cache_read_input_tokens": 2, "cache_creation_input_tokens": 1}});
        out.whole(200, "application/json", "", answer.to_string().as_bytes())
            .await?;
        return Ok(true);
    }
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n").into_bytes();
    let mut events = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "usage": {"input_tokens": input, "output_tokens": 1,
            "cache_read_input_tokens": 2, "cache_creation_input_tokens": 1}}}),
    )];
    if thinking {
        events.extend([
            event("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}})),
            event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me think."}})),
            event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}})),
            event("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        ]);
    }
    events.push(event(
        "content_block_start",
        json!({"type": "content_block_start", "index": k, "content_block": {"type": "text", "text": ""}}),
    ));
    events.push(event("ping", json!({"type": "ping"})));
    for t in &text {
        events.push(event("content_block_delta", json!({"type": "content_block_delta", "index": k, "delta": {"type": "text_delta", "text": t}})));
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": k}),
    ));
    if scenario.kind == ScenarioKind::ErrorEvent {
        events.push(event("error", json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})));
    } else {
        if tools {
            events.push(event("content_block_start", json!({"type": "content_block_start", "index": k + 1,
                "content_block": {"type": "tool_use", "id": "toolu_mock1", "name": "lookup", "input": {}}})));
            for part in ["{\"q\": ", "\"cats\"}"] {
                events.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": k + 1,
                    "delta": {"type": "input_json_delta", "partial_json": part}}),
                ));
            }
            events.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": k + 1}),
            ));
        }
        events.push(event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": stop_sequence},
            "usage": {"output_tokens": output}}),
        ));
        events.push(event("message_stop", json!({"type": "message_stop"})));
    }
    out.chunked_head(200, "text/event-stream; charset=utf-8", &events[0])
        .await?;
    for e in events.iter().skip(1) {
        tokio::time::sleep(delay).await;
        out.chunk(e).await?;
    }
    out.end_chunks().await?;
    Ok(true)
}
