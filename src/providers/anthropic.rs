//! Anthropic as an upstream: a Chat Completions body as a Messages request, and Anthropic's answer as
//! a chat completion, whole or event by event (its SSE translated to chat chunks as they arrive).

use serde_json::{json, Map, Value};

use crate::error::{Error, Problem};
use crate::stream::relay::Usage;
use crate::stream::sse::{format_event, Parser};

/// The API version Sluice speaks (`anthropic-version`).
pub const VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; the gateway always grants a cap, this is only a last resort.
const FALLBACK_MAX_TOKENS: u64 = 4096;

fn unsupported(param: &str, detail: &str) -> Error {
    Error::new(Problem::ParameterNotAllowed, detail.to_string()).with_field("param", param)
}

/// The text of a chat message's content: a string, or its text parts joined (as for Anthropic's
/// own blocks, whose reader this is).
fn text_of(content: Option<&Value>) -> String {
    content.map(crate::anthropic::text_of).unwrap_or_default()
}

/// A chat `image_url` part as an image block: a data URL as base64, any other URL by reference.
fn image_block(part: &Value) -> Option<Value> {
    let url = part
        .pointer("/image_url/url")
        .or_else(|| part.get("image_url"))
        .and_then(Value::as_str)?;
    if let Some(rest) = url.strip_prefix("data:") {
        let (media_type, data) = rest.split_once(";base64,")?;
        return Some(
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}),
        );
    }
    Some(json!({"type": "image", "source": {"type": "url", "url": url}}))
}

/// A user's content as blocks (a plain string stays a string).
fn user_content(content: Option<&Value>) -> Value {
    match content {
        Some(Value::Array(parts)) => Value::Array(
            parts
                .iter()
                .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                    Some("text") => Some(
                        json!({"type": "text", "text": p.get("text").cloned().unwrap_or_default()}),
                    ),
                    Some("image_url") => image_block(p),
                    _ => None,
                })
                .collect(),
        ),
        Some(Value::String(s)) => Value::String(s.clone()),
        _ => Value::String(String::new()),
    }
}

fn as_blocks(content: Value) -> Vec<Value> {
    match content {
        Value::Array(blocks) => blocks,
        Value::String(s) if s.is_empty() => Vec::new(),
        Value::String(s) => vec![json!({"type": "text", "text": s})],
        _ => Vec::new(),
    }
}

/// An assistant turn: its text, then its tool calls as `tool_use` blocks.
fn assistant_blocks(message: &Value) -> Vec<Value> {
    let mut blocks = as_blocks(Value::String(text_of(message.get("content"))));
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let arguments = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        let input: Value = crate::encoding::from_json(arguments).unwrap_or_else(|_| json!({}));
        blocks.push(
            json!({"type": "tool_use", "id": call.get("id").cloned().unwrap_or_default(),
            "name": call.pointer("/function/name").cloned().unwrap_or_default(), "input": input}),
        );
    }
    blocks
}

/// Chat messages as Anthropic's: system (and developer) messages become `system`, tool results
/// user turns of `tool_result` blocks, and consecutive turns of one role are merged (Anthropic
/// wants them alternating).
fn messages(chat: &[Value]) -> (String, Vec<Value>) {
    let mut system = Vec::new();
    let mut out: Vec<(String, Vec<Value>)> = Vec::new();
    for m in chat {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.push(text_of(m.get("content")));
                continue;
            }
            "assistant" => ("assistant", assistant_blocks(m)),
            "tool" => (
                "user",
                vec![json!({"type": "tool_result",
                    "tool_use_id": m.get("tool_call_id").cloned().unwrap_or_default(),
                    "content": text_of(m.get("content"))})],
            ),
            _ => ("user", as_blocks(user_content(m.get("content")))),
        };
        match out.last_mut() {
            Some((last, previous)) if last == role => previous.extend(blocks),
            _ => out.push((role.to_string(), blocks)),
        }
    }
    let messages = out
        .into_iter()
        .map(|(role, blocks)| json!({"role": role, "content": blocks}))
        .collect();
    (system.join("\n\n"), messages)
}

fn tool_choice(choice: &Value, parallel: Option<bool>) -> Option<Value> {
    let mut out = match choice {
        Value::String(s) if s == "auto" => json!({"type": "auto"}),
        Value::String(s) if s == "required" => json!({"type": "any"}),
        Value::String(s) if s == "none" => json!({"type": "none"}),
        Value::Object(o) => json!({"type": "tool", "name": o.get("function")?.get("name")?}),
        _ => return None,
    };
    if parallel == Some(false) && out["type"] != "none" {
        out["disable_parallel_tool_use"] = Value::Bool(true);
    }
    Some(out)
}

/// A checked chat body (with the granted cap) as a Messages request for `model`.
pub fn request(chat: &Map<String, Value>, model: &str) -> Result<Value, Error> {
    if chat.get("n").and_then(Value::as_u64).unwrap_or(1) > 1 {
        return Err(unsupported(
            "n",
            "Anthropic answers one choice per request: `n` above 1 is not supported by this API's provider.",
        ));
    }
    // What Anthropic's Messages API has no way to honour is refused, not dropped unseen (`seed`,
    // a hint only, is dropped).
    if chat
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t != "text")
    {
        return Err(unsupported(
            "response_format",
            "Anthropic has no JSON mode: `response_format` other than `text` is not supported by this API's provider; describe the JSON in the prompt or use a tool.",
        ));
    }
    for param in ["logprobs", "top_logprobs", "logit_bias"] {
        if chat
            .get(param)
            .is_some_and(|v| !v.is_null() && *v != Value::Bool(false))
        {
            return Err(unsupported(
                param,
                &format!("Anthropic does not return log probabilities or take logit biases: `{param}` is not supported by this API's provider."),
            ));
        }
    }
    let list = chat
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let (system, messages) = messages(&list);
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| chat.get(*k).and_then(Value::as_u64))
        .unwrap_or(FALLBACK_MAX_TOKENS);
    let mut out = json!({"model": model, "max_tokens": max_tokens, "messages": messages});
    if !system.is_empty() {
        out["system"] = Value::String(system);
    }
    if let Some(stream) = chat.get("stream").and_then(Value::as_bool) {
        out["stream"] = Value::Bool(stream);
    }
    if let Some(t) = chat.get("temperature").and_then(Value::as_f64) {
        // OpenAI's range is 0-2, Anthropic's 0-1.
        out["temperature"] = json!(t.clamp(0.0, 1.0));
    }
    if let Some(p) = chat.get("top_p") {
        out["top_p"] = p.clone();
    }
    match chat.get("stop") {
        Some(Value::String(s)) => out["stop_sequences"] = json!([s]),
        Some(Value::Array(a)) => out["stop_sequences"] = Value::Array(a.clone()),
        _ => {}
    }
    if let Some(tools) = chat.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|t| {
                let f = t.get("function")?;
                Some(json!({"name": f.get("name")?, "description": f.get("description").cloned().unwrap_or(Value::Null),
                    "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"}))}))
            })
            .map(|mut t| {
                if t["description"].is_null() {
                    if let Some(o) = t.as_object_mut() {
                        o.remove("description");
                    }
                }
                t
            })
            .collect();
        if !tools.is_empty() {
            out["tools"] = Value::Array(tools);
        }
    }
    let parallel = chat.get("parallel_tool_calls").and_then(Value::as_bool);
    if let Some(choice) = chat
        .get("tool_choice")
        .and_then(|c| tool_choice(c, parallel))
    {
        out["tool_choice"] = choice;
    } else if parallel == Some(false) && out.get("tools").is_some() {
        out["tool_choice"] = json!({"type": "auto", "disable_parallel_tool_use": true});
    }
    if let Some(user) = chat.get("user").and_then(Value::as_str) {
        out["metadata"] = json!({ "user_id": user });
    }
    Ok(out)
}

/// A Messages request as the client sent it, for an Anthropic upstream: unchanged but for the
/// model's name (without its `anthropic/` prefix) and `max_tokens`, which is the cap the gateway
/// granted (the checked chat body carries it).
pub fn passthrough(original: &Value, chat: &Map<String, Value>, model: &str) -> Value {
    let mut out = original.clone();
    if let Some(o) = out.as_object_mut() {
        o.insert("model".into(), Value::from(model));
        if let Some(cap) = ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| chat.get(*k).and_then(Value::as_u64))
        {
            o.insert("max_tokens".into(), Value::from(cap));
        }
    }
    out
}

/// What a Messages body passed through whole carries beyond its chat translation, which is what the
/// gateway metered: documents (their base64 bytes, an upper bound of their tokens, added to the
/// prompt's bound) are allowed; what costs beyond tokens (server tools, MCP servers, containers, a
/// service tier) or cannot be bounded (documents by URL or file id) is refused unless the API lists
/// it in `upstream.allowed_params`.
pub fn passthrough_extra(original: &Value, allowed: &[String]) -> Result<u64, Error> {
    let refuse = |param: &str, what: &str| {
        Err(Error::new(
            Problem::ParameterNotAllowed,
            format!("{what} cannot be metered by the gateway; the API must list `{param}` in `upstream.allowed_params`."),
        )
        .with_field("param", param))
    };
    let allows = |p: &str| allowed.iter().any(|a| a == p);
    for field in ["mcp_servers", "container", "service_tier"] {
        if original.get(field).is_some() && !allows(field) {
            return refuse(field, &format!("`{field}`"));
        }
    }
    let server_tool = original
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|t| {
            t.get("type")
                .and_then(Value::as_str)
                .is_some_and(|k| k != "custom")
        });
    if server_tool && !allows("server_tools") {
        return refuse(
            "server_tools",
            "Server tools (web search, code execution, …)",
        );
    }
    let mut extra: u64 = 0;
    let blocks = original
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten();
    for block in blocks {
        if block.get("type").and_then(Value::as_str) != Some("document") {
            continue;
        }
        match block.pointer("/source/type").and_then(Value::as_str) {
            Some("base64") => {
                let data = block
                    .pointer("/source/data")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                extra = extra.saturating_add(data.len() as u64);
            }
            // Text documents are in the chat translation already.
            Some("text") => {}
            _ if allows("documents_by_reference") => {}
            _ => {
                return refuse(
                    "documents_by_reference",
                    "A document by URL or file id (its size is unknown)",
                )
            }
        }
    }
    Ok(extra)
}

/// Anthropic's stop reason as a chat finish reason.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Anthropic's usage counts as they arrive: `message_start` gives them all (its `output_tokens` a
/// placeholder), `message_delta` the cumulative ones it names (at least `output_tokens`). Counts are
/// a report only once settled (a whole message, or a stream's `message_delta`); a count that is
/// there but is not a whole number of tokens spoils the report for good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    input: Option<u64>,
    cache_read: u64,
    cache_write: u64,
    output: Option<u64>,
    settled: bool,
    spoiled: bool,
}

impl Counts {
    /// A whole message's counts: settled as they are.
    pub fn of_message(message: &Value) -> Counts {
        let mut counts = Counts::default();
        counts.update(message.get("usage"));
        counts.settled = true;
        counts
    }

    /// Takes the counts `u` names (an absent `usage` names none).
    fn update(&mut self, u: Option<&Value>) {
        let Some(u) = u else { return };
        let Some(u) = u.as_object() else {
            self.spoiled = true;
            return;
        };
        let mut take = |key: &str, into: &mut dyn FnMut(u64)| match u.get(key) {
            None | Some(Value::Null) => {}
            Some(n) => match n.as_u64() {
                Some(n) => into(n),
                None => self.spoiled = true,
            },
        };
        let (mut input, mut read, mut write, mut output) = (None, None, None, None);
        take("input_tokens", &mut |n| input = Some(n));
        take("cache_read_input_tokens", &mut |n| read = Some(n));
        take("cache_creation_input_tokens", &mut |n| write = Some(n));
        take("output_tokens", &mut |n| output = Some(n));
        self.input = input.or(self.input);
        self.cache_read = read.unwrap_or(self.cache_read);
        self.cache_write = write.unwrap_or(self.cache_write);
        self.output = output.or(self.output);
    }

    /// Takes the counts an event of the stream carries (`message_start`, `message_delta`).
    pub fn take_event(&mut self, v: &Value) {
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => self.update(v.pointer("/message/usage")),
            Some("message_delta") => self.settle(v.get("usage")),
            _ => {}
        }
    }

    /// `message_delta`'s counts. They settle the report only when they give the output: without
    /// `output_tokens` there, the only output count is `message_start`'s placeholder.
    fn settle(&mut self, u: Option<&Value>) {
        self.update(u);
        if u.and_then(|u| u.get("output_tokens"))
            .and_then(Value::as_u64)
            .is_some()
        {
            self.settled = true;
        }
    }

    /// What is booked (cache reads and writes are prompt tokens too); `None` when the report is
    /// incomplete, spoiled or past 2^64, so the request is booked by its estimate, never as 0.
    pub fn usage(&self) -> Option<Usage> {
        if self.spoiled || !self.settled {
            return None;
        }
        let prompt = self
            .input?
            .checked_add(self.cache_read)?
            .checked_add(self.cache_write)?;
        let output = self.output?;
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: output,
            total_tokens: prompt.checked_add(output)?,
            cached_tokens: self.cache_read,
            reasoning_tokens: 0,
        })
    }

    /// As chat usage (cache writes named as Anthropic names them).
    fn chat(&self) -> Option<Value> {
        let u = self.usage()?;
        Some(
            json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens, "prompt_tokens_details": {"cached_tokens": self.cache_read},
            "cache_creation_input_tokens": self.cache_write}),
        )
    }
}

/// The output a Messages event or whole message carries, in bytes (text, tool input, thinking):
/// what the live budget counts.
pub fn output_bytes(v: &Value) -> u64 {
    // `data`: a redacted thinking block's, billed as output like any thinking.
    const KEYS: [&str; 5] = ["text", "partial_json", "thinking", "input", "data"];
    let of = |block: Option<&Value>| -> u64 {
        block.map_or(0, |b| {
            KEYS.iter()
                .filter_map(|k| b.get(*k))
                .map(|x| match x {
                    Value::String(s) => s.len() as u64,
                    Value::Null => 0,
                    other => other.to_string().len() as u64,
                })
                .fold(0, u64::saturating_add)
        })
    };
    match v.get("type").and_then(Value::as_str) {
        Some("content_block_delta") => of(v.get("delta")),
        Some("content_block_start") => of(v.get("content_block")),
        Some("message") => v
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|block| of(Some(block)))
            .fold(0, u64::saturating_add),
        _ => 0,
    }
}

/// Whether a 2xx whole answer is a Message (its `type`, and a `content` list).
pub fn check_message(answer: &Value) -> Result<(), &'static str> {
    if answer.get("type").and_then(Value::as_str) == Some("message")
        && answer.get("content").is_some_and(Value::is_array)
    {
        Ok(())
    } else {
        Err("The provider answered 200 with something other than a message.")
    }
}

/// A whole Messages answer as a chat completion for `model` (the name the client asked for); an
/// error when the body is not a Message. Without a usable usage report it carries none.
pub fn completion(message: &Value, model: &str, created: i64) -> Result<Value, &'static str> {
    check_message(message)?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in message
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(json!({"id": block.get("id").cloned().unwrap_or_default(),
                "type": "function", "function": {"name": block.get("name").cloned().unwrap_or_default(),
                "arguments": block.get("input").map_or("{}".to_string(), Value::to_string)}})),
            _ => {}
        }
    }
    let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        msg["tool_calls"] = Value::Array(calls);
    }
    let stop = message
        .get("stop_reason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let mut answer = json!({"id": message.get("id").cloned().unwrap_or_else(|| json!("msg")), "object": "chat.completion",
        "created": created, "model": model,
        "choices": [{"index": 0, "message": msg, "finish_reason": finish_reason(stop), "logprobs": null}]});
    if let Some(usage) = Counts::of_message(message).chat() {
        answer["usage"] = usage;
    }
    Ok(answer)
}

/// Anthropic's SSE translated into chat chunks as each event arrives: text deltas become content
/// deltas, `tool_use` blocks tool calls (their JSON deltas the arguments), `message_delta` the
/// finish reason, `message_stop` the usage chunk and `[DONE]`, an `error` event the chat stream's
/// error event. `ping` and thinking are dropped.
pub struct ChunkStream {
    parser: Parser,
    model: String,
    created: i64,
    id: String,
    /// Content block index → the tool call's index among the answer's tool calls.
    tools: Vec<(u64, usize)>,
    usage: Counts,
    finished: bool,
}

impl ChunkStream {
    pub fn new(model: &str, created: i64) -> ChunkStream {
        ChunkStream {
            parser: Parser::new(),
            model: model.to_string(),
            created,
            id: "msg".into(),
            tools: Vec::new(),
            usage: Counts::default(),
            finished: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        let data = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]});
        format_event(None, &data.to_string())
    }

    /// The chat bytes for this piece of Anthropic's stream. Nothing follows its end; an event that
    /// is not JSON, or too large to hold, ends it with the chat stream's error event rather than
    /// losing its text unseen.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = String::new();
        if self.finished {
            return Vec::new();
        }
        let events = self.parser.push(bytes);
        for event in events {
            if self.finished {
                break;
            }
            let Ok(data) = crate::encoding::from_json::<Value>(&event.data) else {
                out.push_str(&self.broken("The provider sent an event that is not JSON."));
                break;
            };
            let kind = event
                .event
                .clone()
                .or_else(|| data.get("type").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default();
            out.push_str(&self.on_event(&kind, &data));
        }
        if self.parser.overflowed() && !self.finished {
            out.push_str(
                &self.broken("The provider sent an event larger than the gateway relays."),
            );
        }
        out.into_bytes()
    }

    /// The chat error event that ends a stream the provider broke.
    fn broken(&mut self, message: &str) -> String {
        self.finished = true;
        let data = json!({"error": {"message": message, "type": "api_error"}});
        format_event(None, &data.to_string())
    }

    fn on_event(&mut self, kind: &str, data: &Value) -> String {
        match kind {
            "message_start" => {
                let message = data.get("message");
                if let Some(id) = message.and_then(|m| m.get("id")).and_then(Value::as_str) {
                    self.id = id.to_string();
                }
                self.usage.update(message.and_then(|m| m.get("usage")));
                self.chunk(json!({"role": "assistant", "content": ""}), None)
            }
            "content_block_start" => {
                let block = data.get("content_block");
                match block.and_then(|b| b.get("type")).and_then(Value::as_str) {
                    Some("tool_use") => {
                        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let k = self.tools.len();
                        self.tools.push((index, k));
                        let id = block.and_then(|b| b.get("id")).cloned().unwrap_or_default();
                        let name = block
                            .and_then(|b| b.get("name"))
                            .cloned()
                            .unwrap_or_default();
                        self.chunk(
                            json!({"tool_calls": [{"index": k, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                            None,
                        )
                    }
                    Some("text") => match block.and_then(|b| b.get("text")).and_then(Value::as_str)
                    {
                        Some(t) if !t.is_empty() => self.chunk(json!({ "content": t }), None),
                        _ => String::new(),
                    },
                    _ => String::new(),
                }
            }
            "content_block_delta" => {
                let delta = data.get("delta");
                match delta.and_then(|d| d.get("type")).and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = delta
                            .and_then(|d| d.get("text"))
                            .cloned()
                            .unwrap_or_default();
                        self.chunk(json!({ "content": text }), None)
                    }
                    Some("input_json_delta") => {
                        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let Some(&(_, k)) = self.tools.iter().find(|(i, _)| *i == index) else {
                            return String::new();
                        };
                        let part = delta
                            .and_then(|d| d.get("partial_json"))
                            .cloned()
                            .unwrap_or_default();
                        self.chunk(
                            json!({"tool_calls": [{"index": k, "function": {"arguments": part}}]}),
                            None,
                        )
                    }
                    _ => String::new(),
                }
            }
            "message_delta" => {
                self.usage.settle(data.get("usage"));
                match data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    Some(stop) => self.chunk(json!({}), Some(finish_reason(stop))),
                    None => String::new(),
                }
            }
            "message_stop" => {
                self.finished = true;
                // Without a usable report there is no usage chunk: the relay books its estimate.
                let usage = self.usage.chat().map_or(String::new(), |usage| {
                    let data = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [], "usage": usage});
                    format_event(None, &data.to_string())
                });
                format!("{usage}{}", format_event(None, "[DONE]"))
            }
            "error" => {
                self.finished = true;
                let error = data.get("error").cloned().unwrap_or_else(|| json!({}));
                let data = json!({"error": {"message": error.get("message").cloned().unwrap_or_else(|| json!("The provider's stream failed.")),
                    "type": error.get("type").cloned().unwrap_or_else(|| json!("api_error"))}});
                format_event(None, &data.to_string())
            }
            _ => String::new(),
        }
    }

    /// Whether the stream reached `message_stop` (or an error event).
    pub fn finished(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn a_chat_body_becomes_a_messages_request() {
        let chat = body(json!({
            "model": "anthropic/claude-3-5-haiku", "max_completion_tokens": 300, "stream": true,
            "temperature": 1.6, "stop": "END", "user": "u-1", "parallel_tool_calls": false,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://img.example/x.png"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
                {"role": "user", "content": "And now?"}
            ],
            "tools": [{"type": "function", "function": {"name": "lookup", "description": "Looks up",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
            "tool_choice": "required"
        }));
        let r = request(&chat, "claude-3-5-haiku").unwrap();
        assert_eq!(r["model"], "claude-3-5-haiku");
        assert_eq!(r["max_tokens"], 300);
        assert_eq!(r["system"], "Be brief.\n\nUse tools.");
        assert_eq!(r["temperature"], 1.0);
        assert_eq!(r["stop_sequences"], json!(["END"]));
        assert_eq!(r["metadata"]["user_id"], "u-1");
        assert_eq!(r["stream"], true);
        assert_eq!(
            r["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            r["tools"][0]["input_schema"]["properties"]["q"]["type"],
            "string"
        );
        let m = r["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m[0]["role"], "user");
        assert_eq!(
            m[0]["content"][1],
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}})
        );
        assert_eq!(m[0]["content"][2]["source"]["type"], "url");
        assert_eq!(
            m[1]["content"][0],
            json!({"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "x"}})
        );
        // The tool result and the next user turn are one user turn.
        assert_eq!(
            m[2]["content"][0],
            json!({"type": "tool_result", "tool_use_id": "call_1", "content": "a cat"})
        );
        assert_eq!(
            m[2]["content"][1],
            json!({"type": "text", "text": "And now?"})
        );
        let two = body(json!({"model": "m", "n": 2, "messages": []}));
        assert_eq!(
            request(&two, "m").unwrap_err().problem,
            Problem::ParameterNotAllowed
        );
        for (extra, param) in [
            (
                json!({"response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {}}}),
                "response_format",
            ),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"top_logprobs": 3}), "top_logprobs"),
            (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
        ] {
            let mut b = json!({"model": "m", "messages": []});
            b.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let e = request(&body(b), "m").unwrap_err();
            assert_eq!(
                (e.problem, e.extra.get("param").cloned()),
                (Problem::ParameterNotAllowed, Some(json!(param))),
                "{extra}"
            );
        }
        for fine in [
            json!({"response_format": {"type": "text"}}),
            json!({"logprobs": false}),
            json!({"seed": 7}),
        ] {
            let mut b = json!({"model": "m", "messages": []});
            b.as_object_mut()
                .unwrap()
                .extend(fine.as_object().unwrap().clone());
            assert!(request(&body(b), "m").is_ok(), "{fine}");
        }
        let named = body(
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
            "tool_choice": {"type": "function", "function": {"name": "f"}}}),
        );
        let r = request(&named, "m").unwrap();
        assert_eq!(r["tool_choice"], json!({"type": "tool", "name": "f"}));
        assert_eq!(
            r["messages"][0]["content"],
            json!([{"type": "text", "text": "x"}])
        );
        assert!(r.get("system").is_none());
    }

    #[test]
    fn a_messages_body_passes_with_the_granted_cap() {
        let original = json!({"model": "anthropic/claude-3-5-haiku", "max_tokens": 9000, "thinking": {"type": "enabled", "budget_tokens": 2000},
            "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}], "messages": [{"role": "user", "content": "x"}]});
        let chat = body(json!({"max_tokens": 512}));
        let out = passthrough(&original, &chat, "claude-3-5-haiku");
        assert_eq!(out["model"], "claude-3-5-haiku");
        assert_eq!(out["max_tokens"], 512);
        assert_eq!(out["thinking"], original["thinking"]);
        assert_eq!(out["system"], original["system"]);
    }

    #[test]
    fn what_a_passed_through_body_adds_is_bounded_or_refused() {
        let doc = |source: Value| json!({"messages": [{"role": "user", "content": [{"type": "document", "source": source}, {"type": "text", "text": "x"}]}]});
        assert_eq!(passthrough_extra(&doc(json!({"type": "base64", "media_type": "application/pdf", "data": "QUJD".repeat(100)})), &[]).unwrap(), 400);
        assert_eq!(
            passthrough_extra(&doc(json!({"type": "text", "data": "hello"})), &[]).unwrap(),
            0
        );
        let by_url = doc(json!({"type": "url", "url": "https://x/a.pdf"}));
        assert_eq!(
            passthrough_extra(&by_url, &[]).unwrap_err().problem,
            Problem::ParameterNotAllowed
        );
        assert!(passthrough_extra(&by_url, &["documents_by_reference".into()]).is_ok());
        let search = json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}], "messages": []});
        assert_eq!(
            passthrough_extra(&search, &[]).unwrap_err().kind(),
            "parameter-not-allowed"
        );
        assert!(passthrough_extra(&search, &["server_tools".into()]).is_ok());
        let custom = json!({"tools": [{"name": "lookup", "input_schema": {}}, {"type": "custom", "name": "x", "input_schema": {}}], "messages": []});
        assert_eq!(passthrough_extra(&custom, &[]).unwrap(), 0);
        for field in ["mcp_servers", "container", "service_tier"] {
            let mut b = json!({"messages": []});
            b[field] = json!("x");
            assert!(passthrough_extra(&b, &[]).is_err(), "{field}");
            assert!(passthrough_extra(&b, &[field.to_string()]).is_ok());
        }
    }

    #[test]
    fn a_usage_report_that_is_not_whole_numbers_is_no_report() {
        let message = |usage: Value| {
            json!({"id": "msg_1", "type": "message", "content": [{"type": "text", "text": "hi"}],
                "stop_reason": "end_turn", "usage": usage})
        };
        for usage in [
            json!({"input_tokens": -3, "output_tokens": 5}),
            json!({"input_tokens": 3, "output_tokens": "5"}),
            json!({"input_tokens": 3, "output_tokens": 1.5}),
            json!({"input_tokens": 3}),
            json!({"output_tokens": 3}),
            json!({"input_tokens": u64::MAX, "output_tokens": 1, "cache_read_input_tokens": 2}),
            json!("lots"),
        ] {
            let c = completion(&message(usage.clone()), "m", 0).unwrap();
            assert!(c.get("usage").is_none(), "{usage}: {c}");
        }
        let c = completion(
            &message(
                json!({"input_tokens": 3, "output_tokens": 5, "cache_read_input_tokens": null}),
            ),
            "m",
            0,
        )
        .unwrap();
        assert_eq!(c["usage"]["total_tokens"], 8);
        for not_a_message in [
            json!({"type": "error", "error": {"type": "api_error", "message": "x"}}),
            json!({"stolen": true}),
            json!([1, 2]),
        ] {
            assert!(
                completion(&not_a_message, "m", 0).is_err(),
                "{not_a_message}"
            );
        }
    }

    fn chat_events(out: &[u8]) -> Vec<Value> {
        crate::stream::sse::Parser::new()
            .push(out)
            .into_iter()
            .filter(|e| e.data != "[DONE]")
            .map(|e| crate::encoding::from_json(&e.data).unwrap())
            .collect()
    }

    #[test]
    fn a_stream_books_the_cumulative_usage_or_none() {
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n";
        let text = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n";
        let stop = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let delta = |usage: &str| {
            format!("event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{usage}}}\n\n")
        };
        let run = |usage: &str| {
            let mut s = ChunkStream::new("m", 0);
            let out = s.push(format!("{start}{text}{}{stop}", delta(usage)).as_bytes());
            chat_events(&out)
                .into_iter()
                .find_map(|v| v.get("usage").cloned())
        };
        // Cumulative counts in message_delta replace message_start's.
        let u =
            run("{\"input_tokens\":12,\"cache_read_input_tokens\":4,\"output_tokens\":7}").unwrap();
        assert_eq!(
            (u["prompt_tokens"].clone(), u["completion_tokens"].clone()),
            (json!(16), json!(7))
        );
        assert_eq!(run("{\"output_tokens\":7}").unwrap()["prompt_tokens"], 10);
        for spoiled in [
            "{\"output_tokens\":-7}",
            "{\"output_tokens\":\"7\"}",
            "{\"output_tokens\":7,\"input_tokens\":1e30}",
            "7",
        ] {
            assert_eq!(run(spoiled), None, "{spoiled}");
        }
    }

    #[test]
    fn a_broken_or_oversized_event_ends_the_stream_with_an_error() {
        let text = |t: &str| {
            format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{t}\"}}}}\n\n")
        };
        let mut s = ChunkStream::new("m", 0);
        let out = s.push(
            format!(
                "{}event: content_block_delta\ndata: {{not json\n\n{}",
                text("one"),
                text("LOST")
            )
            .as_bytes(),
        );
        let events = chat_events(&out);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[1]["error"]["type"], "api_error");
        assert!(s.finished());
        assert!(
            s.push(text("late").as_bytes()).is_empty(),
            "nothing after the end"
        );

        let mut s = ChunkStream::new("m", 0);
        let huge = "x".repeat(crate::stream::sse::MAX_EVENT_BYTES + 10);
        let out = s.push(format!("{}{}", text("start"), text(&huge)).as_bytes());
        let events = chat_events(&out);
        assert_eq!(
            events.last().unwrap()["error"]["type"],
            "api_error",
            "{events:?}"
        );
        assert!(s.finished());
    }

    #[test]
    fn a_whole_answer_becomes_a_completion() {
        let message = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku",
            "content": [{"type": "text", "text": "Let me look."}, {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 2}});
        let c = completion(&message, "anthropic/claude-3-5-haiku", 7).unwrap();
        assert_eq!(c["model"], "anthropic/claude-3-5-haiku");
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c["choices"][0]["message"]["content"], "Let me look.");
        assert_eq!(
            c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"q\":\"x\"}"
        );
        assert_eq!(c["usage"]["prompt_tokens"], 15);
        assert_eq!(c["usage"]["completion_tokens"], 5);
        assert_eq!(c["usage"]["total_tokens"], 20);
        assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("max_tokens", "length"),
            ("stop_sequence", "stop"),
            ("refusal", "content_filter"),
        ] {
            assert_eq!(finish_reason(stop), finish);
        }
    }

    fn events(stream: &mut ChunkStream, text: &str) -> Vec<Value> {
        let out = String::from_utf8(stream.push(text.as_bytes())).unwrap();
        out.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(|d| {
                if d == "[DONE]" {
                    json!("[DONE]")
                } else {
                    crate::encoding::from_json(d).unwrap()
                }
            })
            .collect()
    }

    #[test]
    fn the_stream_is_translated_event_by_event() {
        let mut s = ChunkStream::new("anthropic/claude", 9);
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_9\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n";
        let got = events(&mut s, start);
        assert_eq!(got[0]["id"], "msg_9");
        assert_eq!(got[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(events(&mut s, "event: ping\ndata: {\"type\": \"ping\"}\n\n").is_empty());
        // Split across pushes: nothing until the event is whole.
        let text = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
        let (a, b) = text.split_at(text.len() - 20);
        assert!(events(&mut s, a).is_empty());
        let got = events(&mut s, b);
        assert_eq!(got[0]["choices"][0]["delta"]["content"], "Hi");
        let tool = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"lookup\",\"input\":{}}}\n\n\
            event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"q\\\":\"}}\n\n";
        let got = events(&mut s, tool);
        assert_eq!(
            got[0]["choices"][0]["delta"]["tool_calls"][0]["id"],
            "toolu_1"
        );
        assert_eq!(got[0]["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        assert_eq!(
            got[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{\"q\":"
        );
        let end = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":30}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let got = events(&mut s, end);
        assert_eq!(got[0]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(got[1]["usage"]["prompt_tokens"], 12);
        assert_eq!(got[1]["usage"]["completion_tokens"], 30);
        assert_eq!(got[1]["choices"], json!([]));
        assert_eq!(got[2], "[DONE]");
        assert!(s.finished());
        let mut e = ChunkStream::new("m", 0);
        let got = events(&mut e, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        assert_eq!(got[0]["error"]["type"], "overloaded_error");
        assert!(e.finished());
    }
}
