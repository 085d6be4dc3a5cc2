//! Anthropic's Messages API, inbound: a Messages request translated into a Chat Completions body for
//! the API's upstream, and the upstream's answer translated back, whole or as Anthropic's SSE events
//! (`message_start`, `content_block_*`, `message_delta`, `message_stop`, `error`). Fields a chat
//! upstream cannot take are mapped where a mapping exists and otherwise dropped, never refused.

use serde_json::{json, Map, Value};

use crate::error::Error;
use crate::stream::sse::{format_event, Parser};

fn invalid(param: &str, detail: impl Into<String>) -> Error {
    Error::invalid_request(detail).with_field("param", param)
}

/// The text of a `system` value or a `tool_result`'s content: a string, or the text blocks of an
/// array (other blocks have no text form).
pub(crate) fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// An image block as a chat `image_url` part (base64 sources become data URLs).
fn image_part(block: &Value) -> Option<Value> {
    let source = block.get("source")?;
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => format!(
            "data:{};base64,{}",
            source
                .get("media_type")
                .and_then(Value::as_str)
                .unwrap_or("image/png"),
            source.get("data").and_then(Value::as_str)?
        ),
        Some("url") => source.get("url").and_then(Value::as_str)?.to_string(),
        _ => return None,
    };
    Some(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// One Anthropic message as chat messages: a user turn's `tool_result` blocks become `tool`
/// messages (first, as chat upstreams expect them right after the calls), an assistant turn's
/// `tool_use` blocks its `tool_calls`; `thinking` blocks and cache markers are dropped.
fn translate_message(message: &Value, index: usize) -> Result<Vec<Value>, Error> {
    let param = format!("messages[{index}]");
    let role = match message.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant")) => r,
        _ => {
            return Err(invalid(
                &param,
                format!("`{param}.role` must be `user` or `assistant`."),
            ))
        }
    };
    let blocks = match message.get("content") {
        Some(Value::String(s)) => return Ok(vec![json!({"role": role, "content": s})]),
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(invalid(
                &param,
                format!("`{param}.content` must be a string or an array of content blocks."),
            ))
        }
    };
    let mut out = Vec::new();
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                parts.push(json!({"type": "text", "text": text}));
            }
            Some("image") => parts.extend(image_part(block)),
            Some("tool_use") if role == "assistant" => calls.push(json!({
                "id": block.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": block.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": block.get("input").map_or("{}".to_string(), Value::to_string),
                },
            })),
            Some("tool_result") => {
                let mut content = block.get("content").map(text_of).unwrap_or_default();
                if block.get("is_error").and_then(Value::as_bool) == Some(true) {
                    content = format!("Error: {content}");
                }
                out.push(json!({
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id").cloned().unwrap_or(Value::Null),
                    "content": content,
                }));
            }
            Some("document") => {
                if let Some(data) = block.pointer("/source/data").and_then(Value::as_str) {
                    if block.pointer("/source/type").and_then(Value::as_str) == Some("text") {
                        parts.push(json!({"type": "text", "text": data}));
                    }
                }
            }
            // thinking, redacted_thinking, server tool blocks: nothing a chat upstream reads.
            _ => {}
        }
    }
    if !parts.is_empty() || !calls.is_empty() {
        let only_text = parts.iter().all(|p| p["type"] == "text");
        let content = if role == "assistant" || only_text {
            let text: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
            if text.is_empty() {
                Value::Null
            } else {
                Value::from(text.join(""))
            }
        } else {
            Value::Array(parts)
        };
        let mut m = json!({"role": role, "content": content});
        if !calls.is_empty() {
            m["tool_calls"] = Value::Array(calls);
        }
        out.push(m);
    }
    Ok(out)
}

/// A Messages request as a Chat Completions body. `max_tokens` is required, as Anthropic requires.
pub fn to_chat(body: Value) -> Result<Value, Error> {
    let Value::Object(body) = body else {
        return Err(Error::invalid_request(
            "The body must be a JSON object (an Anthropic Messages request).",
        ));
    };
    match body.get("max_tokens") {
        Some(v) if v.as_u64().is_some_and(|n| n >= 1) => {}
        _ => {
            return Err(invalid(
                "max_tokens",
                "`max_tokens` is required: a whole number of at least 1.",
            ))
        }
    }
    let mut chat = chat_without_cap(&body)?;
    chat.insert("max_tokens".into(), body["max_tokens"].clone());
    Ok(Value::Object(chat))
}

/// `system` and `tools` in the shapes Anthropic takes: every part of them is metered, so a shape
/// the gateway would not read is refused rather than passed on uncounted.
fn check_system_and_tools(body: &Map<String, Value>) -> Result<(), Error> {
    let text_block = |b: &Value| {
        b.get("type").and_then(Value::as_str) == Some("text")
            && b.get("text").is_some_and(Value::is_string)
    };
    match body.get("system") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(Value::Array(blocks)) if blocks.iter().all(text_block) => {}
        Some(_) => {
            return Err(invalid(
                "system",
                "`system` must be a string or an array of text blocks ({\"type\": \"text\", \"text\": ...}).",
            ))
        }
    }
    let tool = |t: &Value| {
        t.get("name").is_some_and(Value::is_string)
            && t.get("input_schema").is_none_or(Value::is_object)
    };
    match body.get("tools") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(tools)) if tools.iter().all(tool) => Ok(()),
        Some(_) => Err(invalid(
            "tools",
            "`tools` must be an array of tools, each with a string `name` (and an object `input_schema`).",
        )),
    }
}

/// The translation without `max_tokens` (token counting needs none).
fn chat_without_cap(body: &Map<String, Value>) -> Result<Map<String, Value>, Error> {
    check_system_and_tools(body)?;
    let mut messages = Vec::new();
    if let Some(system) = body.get("system").filter(|s| !s.is_null()) {
        messages.push(json!({"role": "system", "content": text_of(system)}));
    }
    let Some(list) = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
    else {
        return Err(invalid(
            "messages",
            "`messages` must be a non-empty array of messages.",
        ));
    };
    for (i, m) in list.iter().enumerate() {
        messages.extend(translate_message(m, i)?);
    }
    let mut chat = Map::new();
    if let Some(model) = body.get("model") {
        chat.insert("model".into(), model.clone());
    }
    chat.insert("messages".into(), Value::Array(messages));
    for field in ["temperature", "top_p", "stream"] {
        if let Some(v) = body.get(field) {
            chat.insert(field.into(), v.clone());
        }
    }
    if let Some(stop) = body.get("stop_sequences").and_then(Value::as_array) {
        chat.insert(
            "stop".into(),
            Value::Array(stop.iter().take(4).cloned().collect()),
        );
    }
    // Coding agents send long composite ids; an upstream takes a short string only.
    if let Some(user) = body
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty() && u.len() <= 64)
    {
        chat.insert("user".into(), Value::from(user));
    }
    let tools: Vec<Value> = body
        .get("tools")
        .and_then(Value::as_array)
        .map(|tools| {
            tools
                .iter()
                // A custom tool has an input schema; Anthropic's server tools have none to offer.
                .filter(|t| t.get("input_schema").is_some())
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.get("name").cloned().unwrap_or(Value::Null),
                        "description": t.get("description").cloned().unwrap_or(Value::from("")),
                        "parameters": t.get("input_schema").cloned().unwrap_or(json!({})),
                    }})
                })
                .collect()
        })
        .unwrap_or_default();
    if !tools.is_empty() {
        chat.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = body.get("tool_choice") {
            let mapped = match choice.get("type").and_then(Value::as_str) {
                Some("any") => Some(json!("required")),
                Some("none") => Some(json!("none")),
                Some("tool") => {
                    Some(json!({"type": "function", "function": {"name": choice.get("name")}}))
                }
                Some("auto") => Some(json!("auto")),
                _ => None,
            };
            if let Some(m) = mapped {
                chat.insert("tool_choice".into(), m);
            }
            if choice
                .get("disable_parallel_tool_use")
                .and_then(Value::as_bool)
                == Some(true)
            {
                chat.insert("parallel_tool_calls".into(), Value::Bool(false));
            }
        }
    }
    Ok(chat)
}

/// `count_tokens`: the request as a chat body, to be bounded like one (`max_tokens` not needed).
pub fn count_body(body: Value) -> Result<Value, Error> {
    let Value::Object(body) = body else {
        return Err(Error::invalid_request(
            "The body must be a JSON object (an Anthropic Messages request).",
        ));
    };
    chat_without_cap(&body).map(Value::Object)
}

fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// A message id for a chat answer's id (`chatcmpl-x` → `msg_x`; one already `msg_…` is kept).
fn message_id(chat_id: Option<&str>) -> String {
    match chat_id {
        Some(id) if id.starts_with("msg_") => id.to_string(),
        Some(id) => format!("msg_{}", id.trim_start_matches("chatcmpl-")),
        None => "msg_sluice".to_string(),
    }
}

/// OpenAI usage in Anthropic's terms: Anthropic's `input_tokens` excludes the cached prompt tokens,
/// which OpenAI's `prompt_tokens` includes.
fn usage_of(v: &Value) -> Value {
    let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("/usage/prompt_tokens_details/cached_tokens");
    json!({
        "input_tokens": n("/usage/prompt_tokens").saturating_sub(cached),
        "output_tokens": n("/usage/completion_tokens"),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    })
}

/// An upstream `error` member that is really there (some upstreams send `"error": null`).
fn error_of(v: &Value) -> Option<&Value> {
    v.get("error").filter(|e| !e.is_null())
}

/// A whole chat completion as an Anthropic message.
pub fn from_completion(v: &Value, model: &str) -> Value {
    let message = v
        .pointer("/choices/0/message")
        .cloned()
        .unwrap_or(Value::Null);
    let mut content = Vec::new();
    if let Some(text) = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": text}));
    }
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        content.push(json!({"type": "text", "text": refusal}));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let args = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or(Value::Null),
            "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
            "input": crate::encoding::from_json::<Value>(args).unwrap_or_else(|_| json!({})),
        }));
    }
    let mut reason = stop_reason(
        v.pointer("/choices/0/finish_reason")
            .and_then(Value::as_str),
    );
    // Some upstreams end a turn of tool calls with `stop`: the client must still run the tools.
    if reason == "end_turn" && content.iter().any(|b| b["type"] == "tool_use") {
        reason = "tool_use";
    }
    json!({
        "id": message_id(v.get("id").and_then(Value::as_str)),
        "type": "message",
        "role": "assistant",
        "model": v.get("model").and_then(Value::as_str).unwrap_or(model),
        "content": content,
        "stop_reason": reason,
        "stop_sequence": null,
        "usage": usage_of(v),
    })
}

/// The open content block of a stream being translated.
#[derive(Debug, Clone, PartialEq)]
enum Block {
    Text,
    /// A tool call, by its chat index and id (upstreams that leave out `index` still send each
    /// call's `id` with its first piece).
    Tool(u64, Option<String>),
}

/// Translates a chat SSE stream (as the gateway relays it) into Anthropic's SSE events, chunk by
/// chunk; nothing is held back but an incomplete event.
#[derive(Debug)]
pub struct MessagesStream {
    parser: Parser,
    model: String,
    started: bool,
    ended: bool,
    /// Index of the next content block.
    next_index: u64,
    open: Option<Block>,
    stop_reason: &'static str,
    /// A `tool_use` block was sent (the stop reason is then `tool_use`).
    tools_used: bool,
    /// Tool calls whose pieces came while another call's block was open: Anthropic's blocks
    /// cannot interleave, so each is sent whole once that block closes (at the end of the answer).
    waiting: Vec<ToolCall>,
    usage: Value,
}

/// A piece of a chat tool call (its index, and what the piece says of its id, name and arguments),
/// or a call held back whole until the open block closes.
#[derive(Debug, Default)]
struct ToolCall {
    index: u64,
    id: Option<String>,
    name: String,
    arguments: String,
}

impl ToolCall {
    fn of(piece: &Value) -> ToolCall {
        let text = |pointer: &str| piece.pointer(pointer).and_then(Value::as_str).unwrap_or("");
        ToolCall {
            index: piece.get("index").and_then(Value::as_u64).unwrap_or(0),
            id: piece.get("id").and_then(Value::as_str).map(str::to_string),
            name: text("/function/name").to_string(),
            arguments: text("/function/arguments").to_string(),
        }
    }

    /// Whether `piece` is a later piece of this call: same index, and no id or the same id.
    fn continued_by(&self, piece: &ToolCall) -> bool {
        piece.index == self.index && (piece.id.is_none() || piece.id == self.id)
    }
}

impl MessagesStream {
    pub fn new(model: &str) -> MessagesStream {
        MessagesStream {
            parser: Parser::new(),
            model: model.to_string(),
            started: false,
            ended: false,
            next_index: 0,
            open: None,
            stop_reason: "end_turn",
            tools_used: false,
            waiting: Vec::new(),
            usage: json!({"input_tokens": 0, "output_tokens": 0}),
        }
    }

    fn event(out: &mut String, name: &str, data: Value) {
        out.push_str(&format_event(Some(name), &data.to_string()));
    }

    fn start(&mut self, out: &mut String, chunk: &Value) {
        if self.started {
            return;
        }
        self.started = true;
        Self::event(
            out,
            "message_start",
            json!({"type": "message_start", "message": {
                "id": message_id(chunk.get("id").and_then(Value::as_str)),
                "type": "message", "role": "assistant",
                "model": chunk.get("model").and_then(Value::as_str).unwrap_or(&self.model),
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        );
    }

    fn close(&mut self, out: &mut String) {
        if self.open.take().is_some() {
            Self::event(
                out,
                "content_block_stop",
                json!({"type": "content_block_stop", "index": self.next_index - 1}),
            );
        }
    }

    fn open_block(&mut self, out: &mut String, block: Block, content_block: Value) {
        self.close(out);
        Self::event(
            out,
            "content_block_start",
            json!({"type": "content_block_start", "index": self.next_index, "content_block": content_block}),
        );
        self.next_index += 1;
        self.open = Some(block);
    }

    fn delta(&self, out: &mut String, delta: Value) {
        Self::event(
            out,
            "content_block_delta",
            json!({"type": "content_block_delta", "index": self.next_index - 1, "delta": delta}),
        );
    }

    fn on_chunk_json(&mut self, out: &mut String, v: &Value) {
        if let Some(error) = error_of(v).filter(|_| v.get("choices").is_none()) {
            self.fail(out, error);
            return;
        }
        self.start(out, v);
        if v.get("usage").is_some_and(Value::is_object) {
            self.usage = usage_of(v);
        }
        // The first choice only (a Messages answer has one): an upstream that sends others, asked
        // or not, does not mix them in.
        let Some(choice) = v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        else {
            return;
        };
        let delta = choice.get("delta").cloned().unwrap_or(Value::Null);
        for text in [delta.get("content"), delta.get("refusal")]
            .into_iter()
            .flatten()
        {
            let Some(text) = text.as_str().filter(|t| !t.is_empty()) else {
                continue;
            };
            if self.open != Some(Block::Text) {
                self.open_block(out, Block::Text, json!({"type": "text", "text": ""}));
            }
            self.delta(out, json!({"type": "text_delta", "text": text}));
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.on_tool_piece(out, call);
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = stop_reason(Some(finish));
            if self.stop_reason == "end_turn" && self.tools_used {
                self.stop_reason = "tool_use";
            }
        }
    }

    /// A piece of a tool call. The call whose block is open streams on; a call starting while no
    /// other call's block is open opens one; a piece of any other call waits (see `waiting`).
    fn on_tool_piece(&mut self, out: &mut String, call: &Value) {
        let piece = ToolCall::of(call);
        if let Some(Block::Tool(index, id)) = &self.open {
            let open = ToolCall {
                index: *index,
                id: id.clone(),
                ..ToolCall::default()
            };
            if open.continued_by(&piece) {
                return self.arguments(out, &piece.arguments);
            }
        }
        if let Some(waiting) = self.waiting.iter_mut().find(|w| w.continued_by(&piece)) {
            waiting.id = waiting.id.take().or(piece.id);
            waiting.name.push_str(&piece.name);
            waiting.arguments.push_str(&piece.arguments);
        } else if matches!(self.open, Some(Block::Tool(..))) {
            self.waiting.push(piece);
        } else {
            self.open_tool(out, piece);
        }
    }

    /// A `tool_use` block for `call`, with what it has of its arguments.
    fn open_tool(&mut self, out: &mut String, call: ToolCall) {
        self.tools_used = true;
        let block_id = call
            .id
            .clone()
            .unwrap_or_else(|| format!("toolu_{}", call.index));
        self.open_block(
            out,
            Block::Tool(call.index, call.id),
            json!({"type": "tool_use", "id": block_id, "name": call.name, "input": {}}),
        );
        self.arguments(out, &call.arguments);
    }

    /// A piece of the open tool call's arguments (none for an empty one).
    fn arguments(&self, out: &mut String, arguments: &str) {
        if !arguments.is_empty() {
            self.delta(
                out,
                json!({"type": "input_json_delta", "partial_json": arguments}),
            );
        }
    }

    /// The calls that waited, each as a whole block.
    fn flush_waiting(&mut self, out: &mut String) {
        for call in std::mem::take(&mut self.waiting) {
            self.open_tool(out, call);
        }
    }

    fn finish(&mut self, out: &mut String) {
        if self.ended {
            return;
        }
        self.start(out, &Value::Null);
        self.flush_waiting(out);
        self.close(out);
        self.ended = true;
        Self::event(
            out,
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": null}, "usage": self.usage}),
        );
        Self::event(out, "message_stop", json!({"type": "message_stop"}));
    }

    /// The stream's error (OpenAI's `error` member, as the gateway sends it) as Anthropic's.
    fn fail(&mut self, out: &mut String, error: &Value) {
        if self.ended {
            return;
        }
        self.ended = true;
        let status = error
            .get("type")
            .and_then(Value::as_str)
            .and_then(crate::error::Problem::from_slug)
            .map_or(500, crate::error::Problem::status);
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("The stream failed.");
        Self::event(
            out,
            "error",
            json!({"type": "error", "error": {
            "type": crate::error::anthropic_type(status), "message": message}}),
        );
    }

    /// Anthropic events for the next bytes of the chat stream.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = String::new();
        for event in self.parser.push(bytes) {
            if self.ended {
                break;
            }
            if event.data == "[DONE]" {
                self.finish(&mut out);
                continue;
            }
            if let Ok(v) = crate::encoding::from_json::<Value>(&event.data) {
                self.on_chunk_json(&mut out, &v);
            }
        }
        out.into_bytes()
    }
}

/// A model in Anthropic's shape (`GET …/v1/models/{id}`, and the items of the list).
pub fn model_object(id: &str, created_at: &str) -> Value {
    json!({"type": "model", "id": id, "display_name": id, "created_at": created_at})
}

/// Most models on one page of `GET …/v1/models` (Anthropic's own bound; 20 when `limit` is absent).
const MODEL_PAGE_MAX: usize = 1000;

/// One page of `GET …/v1/models` in Anthropic's shape, from the API's models in their order, paged
/// as Anthropic pages: `limit` (1 to 1000, default 20), and at most one of `after_id` (the models
/// after that one) or `before_id` (the `limit` models just before it).
pub fn model_page(
    models: &[String],
    query: &[(String, String)],
    created_at: &str,
) -> Result<Value, Error> {
    let mut limit = 20;
    let (mut after, mut before) = (None, None);
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in query {
        if seen.contains(&name.as_str()) {
            return Err(invalid(name, format!("`{name}` is given twice.")));
        }
        seen.push(name);
        match name.as_str() {
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MODEL_PAGE_MAX).contains(n))
                    .ok_or_else(|| {
                        invalid("limit", "`limit` must be a whole number from 1 to 1000.")
                    })?;
            }
            "after_id" => after = Some(value.as_str()),
            "before_id" => before = Some(value.as_str()),
            _ => {}
        }
    }
    let position = |param: &str, id: &str| {
        models.iter().position(|m| m == id).ok_or_else(|| {
            invalid(
                param,
                format!("`{param}` names no model of this API: `{id}`."),
            )
        })
    };
    let (start, end) = match (after, before) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "before_id",
                "Send `after_id` or `before_id`, not both.",
            ))
        }
        (Some(id), None) => {
            let from = position("after_id", id)? + 1;
            (from, (from + limit).min(models.len()))
        }
        (None, Some(id)) => {
            let to = position("before_id", id)?;
            (to.saturating_sub(limit), to)
        }
        (None, None) => (0, limit.min(models.len())),
    };
    let page = &models[start..end];
    // More lies in the direction of travel: past the end going forward, before the start going back.
    let has_more = match before {
        Some(_) => start > 0,
        None => end < models.len(),
    };
    Ok(json!({
        "data": page.iter().map(|m| model_object(m, created_at)).collect::<Vec<_>>(),
        "has_more": has_more,
        "first_id": page.first(),
        "last_id": page.last(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_and_tools_in_shapes_the_gateway_does_not_read_are_refused() {
        let base = || json!({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        let huge = "A".repeat(1000);
        for (field, value) in [
            ("system", json!({"text": huge})),
            ("system", json!(1)),
            ("system", json!([{"type": "image", "source": {}}])),
            ("system", json!([{"type": "text"}])),
            ("tools", json!(huge)),
            ("tools", json!({"a": huge})),
            ("tools", json!([{"x": huge}])),
            ("tools", json!([{"name": "t", "input_schema": "x"}])),
        ] {
            let mut body = base();
            body[field] = value.clone();
            let e = to_chat(body.clone()).err();
            assert!(
                e.as_ref()
                    .is_some_and(|e| e.problem == crate::error::Problem::InvalidRequest),
                "{field}: {value}"
            );
            assert!(
                count_body(body).is_err(),
                "count_tokens refuses it too: {value}"
            );
        }
        for (field, value) in [
            ("system", json!("be brief")),
            (
                "system",
                json!([{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}]),
            ),
            ("system", Value::Null),
            (
                "tools",
                json!([{"name": "get_weather", "input_schema": {"type": "object"}}]),
            ),
            (
                "tools",
                json!([{"type": "web_search_20250305", "name": "web_search"}]),
            ),
        ] {
            let mut body = base();
            body[field] = value.clone();
            assert!(to_chat(body).is_ok(), "{field}: {value}");
        }
    }
    use crate::stream::sse::Event;

    fn events(bytes: &[u8]) -> Vec<Event> {
        Parser::new().push(bytes)
    }

    #[test]
    fn a_request_with_system_images_tools_and_results_becomes_chat() {
        let body = json!({
        "model": "claude-x", "max_tokens": 100, "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "thinking": {"type": "enabled", "budget_tokens": 1024}, "top_k": 5, "metadata": {"user_id": "u1"},
        "stop_sequences": ["END"], "temperature": 0.5,
        "tools": [{"name": "get_weather", "description": "w", "input_schema": {"type": "object"}},
                  {"type": "web_search_20250305", "name": "web_search"}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "cold"}]},
                {"type": "text", "text": "and?"}]}
        ]});
        let chat = to_chat(body).unwrap();
        let m = chat["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(
            m[1]["content"][1],
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}})
        );
        assert_eq!(m[2]["content"], "calling");
        assert_eq!(
            m[2]["tool_calls"][0]["function"],
            json!({"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"})
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "cold"})
        );
        assert_eq!(m[4], json!({"role": "user", "content": "and?"}));
        assert_eq!(
            chat["tools"].as_array().unwrap().len(),
            1,
            "server tools dropped"
        );
        assert_eq!(
            (
                chat["tool_choice"].clone(),
                chat["parallel_tool_calls"].clone()
            ),
            (json!("required"), json!(false))
        );
        assert_eq!(
            (
                chat["max_tokens"].clone(),
                chat["stop"].clone(),
                chat["user"].clone()
            ),
            (json!(100), json!(["END"]), json!("u1"))
        );
        for dropped in ["thinking", "top_k", "metadata", "system"] {
            assert!(chat.get(dropped).is_none(), "{dropped}");
        }
    }

    #[test]
    fn max_tokens_and_messages_are_required() {
        let e = to_chat(json!({"messages": [{"role": "user", "content": "x"}]})).unwrap_err();
        assert_eq!(e.extra["param"], "max_tokens");
        let e = to_chat(json!({"max_tokens": 5, "messages": []})).unwrap_err();
        assert_eq!(e.extra["param"], "messages");
        let e = to_chat(json!({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}))
            .unwrap_err();
        assert_eq!(e.extra["param"], "messages[0]");
        assert!(count_body(json!({"messages": [{"role": "user", "content": "x"}]})).is_ok());
    }

    #[test]
    fn a_whole_completion_becomes_a_message() {
        let v = json!({"id": "chatcmpl-9", "model": "m", "choices": [{"message": {"content": "hi",
            "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4}});
        let m = from_completion(&v, "m");
        assert_eq!(m["id"], "msg_9");
        assert_eq!(
            m["content"],
            json!([{"type": "text", "text": "hi"}, {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}}])
        );
        assert_eq!(
            (
                m["stop_reason"].clone(),
                m["usage"]["output_tokens"].clone()
            ),
            (json!("tool_use"), json!(4))
        );
    }

    #[test]
    fn a_chat_stream_becomes_anthropic_events_split_anywhere() {
        let chunk = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-1", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        let text = [
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "Hel"}), Value::Null),
            chunk(json!({"content": "lo"}), Value::Null),
            chunk(json!({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}]}), Value::Null),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}), Value::Null),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}), json!("tool_calls")),
            format!("data: {}\n\n", json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 6}})),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        for split in [1, 7, text.len()] {
            let mut s = MessagesStream::new("m");
            let mut out = Vec::new();
            for piece in text.as_bytes().chunks(split) {
                out.extend(s.push(piece));
            }
            let names: Vec<String> = events(&out)
                .iter()
                .map(|e| e.event.clone().unwrap_or_default())
                .collect();
            assert_eq!(
                names,
                [
                    "message_start",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_delta",
                    "content_block_stop",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_delta",
                    "content_block_stop",
                    "message_delta",
                    "message_stop"
                ],
                "split {split}"
            );
            let all = events(&out);
            let data = |i: usize| crate::encoding::from_json::<Value>(&all[i].data).unwrap();
            assert_eq!(
                data(2)["delta"],
                json!({"type": "text_delta", "text": "Hel"})
            );
            assert_eq!(data(5)["content_block"]["type"], "tool_use");
            assert_eq!(
                data(7)["delta"],
                json!({"type": "input_json_delta", "partial_json": "1}"})
            );
            assert_eq!(data(9)["delta"]["stop_reason"], "tool_use");
            assert_eq!(data(9)["usage"]["output_tokens"], 6);
        }
    }

    #[test]
    fn a_stream_error_becomes_anthropics_error_event() {
        let mut s = MessagesStream::new("m");
        let problem = Error::new(crate::error::Problem::QuotaExceeded, "spent").to_problem();
        let out = s.push(format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"a\"}}}}]}}\n\ndata: {problem}\n\ndata: [DONE]\n\n").as_bytes());
        let all = events(&out);
        let last = all.last().unwrap();
        assert_eq!(last.event.as_deref(), Some("error"));
        let v: Value = crate::encoding::from_json(&last.data).unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "spent"}})
        );
        assert!(
            all.iter()
                .all(|e| e.event.as_deref() != Some("message_stop")),
            "no clean end after an error"
        );
    }

    #[test]
    fn tool_calls_without_index_or_with_stop_still_make_tool_use() {
        let chunk = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": "c", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        let text = [
            chunk(json!({"tool_calls": [{"id": "call_a", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}), Value::Null),
            chunk(json!({"tool_calls": [{"id": "call_b", "function": {"name": "g", "arguments": "{\"b\":2}"}}]}), Value::Null),
            format!("data: {}\n\n", json!({"id": "c", "error": null, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})),
            format!("data: {}\n\n", json!({"id": "c", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}})),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        let mut s = MessagesStream::new("m");
        let out = s.push(text.as_bytes());
        let evs = events(&out);
        let blocks: Vec<Value> = evs
            .iter()
            .filter(|e| e.event.as_deref() == Some("content_block_start"))
            .map(|e| crate::encoding::from_json::<Value>(&e.data).unwrap()["content_block"].clone())
            .collect();
        assert_eq!(blocks.len(), 2, "two calls, two blocks: {blocks:?}");
        assert_eq!(
            (blocks[0]["id"].as_str(), blocks[1]["id"].as_str()),
            (Some("call_a"), Some("call_b"))
        );
        let delta = evs
            .iter()
            .find(|e| e.event.as_deref() == Some("message_delta"))
            .unwrap();
        let d: Value = crate::encoding::from_json(&delta.data).unwrap();
        assert_eq!(
            d["delta"]["stop_reason"], "tool_use",
            "an `error: null` chunk is no error"
        );
        assert_eq!(
            (
                d["usage"]["input_tokens"].as_u64(),
                d["usage"]["cache_read_input_tokens"].as_u64()
            ),
            (Some(6), Some(4))
        );
        let whole = from_completion(
            &json!({"choices": [{"message": {"tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "stop"}]}),
            "m",
        );
        assert_eq!(whole["stop_reason"], "tool_use");
    }

    #[test]
    fn interleaved_tool_calls_become_whole_blocks_and_other_choices_stay_out() {
        let chunk = |choices: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": "c", "model": "m", "choices": choices})
            )
        };
        let piece = |i: u64, first: bool, args: &str| {
            let mut call = json!({"index": i, "function": {"arguments": args}});
            if first {
                call["id"] = json!(format!("call_{i}"));
                call["function"]["name"] = json!(format!("f{i}"));
            }
            call
        };
        let text = [
            chunk(json!([{"index": 0, "delta": {"tool_calls": [piece(0, true, "{\"a\""), piece(1, true, "{\"b\"")]}}])),
            chunk(json!([{"index": 1, "delta": {"content": "OTHER CHOICE"}}])),
            chunk(json!([{"index": 0, "delta": {"tool_calls": [piece(1, false, ":2}")]}}])),
            chunk(json!([{"index": 0, "delta": {"tool_calls": [piece(0, false, ":1}")]}}])),
            chunk(json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}, {"index": 1, "delta": {}, "finish_reason": "stop"}])),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        let mut s = MessagesStream::new("m");
        let evs = events(&s.push(text.as_bytes()));
        let data: Vec<Value> = evs
            .iter()
            .map(|e| crate::encoding::from_json(&e.data).unwrap())
            .collect();
        let blocks: Vec<&Value> = data
            .iter()
            .filter(|d| d["type"] == "content_block_start")
            .collect();
        assert_eq!(blocks.len(), 2, "{data:?}");
        assert_eq!(
            (
                blocks[0]["content_block"]["name"].as_str(),
                blocks[1]["content_block"]["name"].as_str()
            ),
            (Some("f0"), Some("f1"))
        );
        for (i, want) in [(0, "{\"a\":1}"), (1, "{\"b\":2}")] {
            let args: String = data
                .iter()
                .filter(|d| d["type"] == "content_block_delta" && d["index"] == i)
                .filter_map(|d| d["delta"]["partial_json"].as_str())
                .collect();
            assert_eq!(args, want, "block {i}");
        }
        // Blocks never interleave: each starts after the previous one stopped.
        let order: Vec<(String, u64)> = data
            .iter()
            .filter_map(|d| Some((d["type"].as_str()?.to_string(), d["index"].as_u64()?)))
            .collect();
        let last_of_0 = order.iter().rposition(|(_, i)| *i == 0).unwrap();
        let first_of_1 = order.iter().position(|(_, i)| *i == 1).unwrap();
        assert!(last_of_0 < first_of_1, "{order:?}");
        assert!(!String::from_utf8_lossy(&s.push(b"")).contains("OTHER"));
        assert!(!data.iter().any(|d| d.to_string().contains("OTHER CHOICE")));
        let stop = data.iter().find(|d| d["type"] == "message_delta").unwrap();
        assert_eq!(stop["delta"]["stop_reason"], "tool_use");
    }

    #[test]
    fn message_ids_are_prefixed_once() {
        assert_eq!(message_id(Some("chatcmpl-abc")), "msg_abc");
        assert_eq!(message_id(Some("msg_01X")), "msg_01X");
        assert_eq!(message_id(None), "msg_sluice");
    }

    #[test]
    fn model_pages_follow_anthropics_cursors() {
        let models: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ids = |v: &Value| -> Vec<String> {
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect()
        };
        let all = model_page(&models, &[], "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(ids(&all), ["a", "b", "c", "d", "e"]);
        assert_eq!(
            (
                all["has_more"].clone(),
                all["first_id"].clone(),
                all["last_id"].clone()
            ),
            (json!(false), json!("a"), json!("e"))
        );
        assert_eq!(
            all["data"][0],
            json!({"type": "model", "id": "a", "display_name": "a", "created_at": "2026-01-01T00:00:00Z"})
        );
        let first = model_page(&models, &q(&[("limit", "2")]), "t").unwrap();
        assert_eq!(
            (ids(&first), first["has_more"].clone()),
            (vec!["a".to_string(), "b".into()], json!(true))
        );
        let next = model_page(&models, &q(&[("limit", "2"), ("after_id", "d")]), "t").unwrap();
        assert_eq!(
            (ids(&next), next["has_more"].clone()),
            (vec!["e".to_string()], json!(false))
        );
        let back = model_page(&models, &q(&[("limit", "2"), ("before_id", "d")]), "t").unwrap();
        assert_eq!(
            (ids(&back), back["has_more"].clone()),
            (vec!["b".to_string(), "c".into()], json!(true))
        );
        let start = model_page(&models, &q(&[("before_id", "a")]), "t").unwrap();
        assert_eq!(
            (
                ids(&start).len(),
                start["has_more"].clone(),
                start["first_id"].clone()
            ),
            (0, json!(false), Value::Null)
        );
        for bad in [
            q(&[("limit", "0")]),
            q(&[("limit", "1001")]),
            q(&[("limit", "x")]),
            q(&[("after_id", "zz")]),
            q(&[("after_id", "a"), ("before_id", "c")]),
            q(&[("limit", "1"), ("limit", "2")]),
        ] {
            let e = model_page(&models, &bad, "t").unwrap_err();
            assert_eq!(e.status, 400, "{bad:?}");
        }
    }
}
