//! Relays an upstream SSE stream event by event while metering it: counts every kind of generated
//! output as it goes (by its UTF-8 bytes, which no tokenizer's count exceeds), captures the upstream's
//! usage chunk (and hides it from clients that did not ask for it), and stops before any event that
//! would pass the granted budget, so the gateway can extend the budget or end the stream cleanly. A
//! cut never leaves a half event at the client.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Problem};
use crate::limits::meter::output_bytes;
use crate::providers::anthropic::Counts;
use crate::stream::sse::{format_event, Event, Parser};

/// Token counts as reported by the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Prompt tokens served from the provider's cache (`prompt_tokens_details.cached_tokens`).
    #[serde(default)]
    pub cached_tokens: u64,
    /// Completion tokens spent reasoning (`completion_tokens_details.reasoning_tokens`).
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Reads an OpenAI `usage` object; `None` when absent or unusable.
    pub fn from_json(v: &Value) -> Option<Usage> {
        let u = v.get("usage").filter(|u| u.is_object())?;
        Usage::read(
            u,
            ["prompt_tokens", "completion_tokens"],
            "/prompt_tokens_details/cached_tokens",
            "/completion_tokens_details/reasoning_tokens",
        )
    }

    /// A usage report's counts under the names its format gives them (`[prompt, completion]`, and
    /// the paths of the cached and reasoning details). A count that is there but is not a whole
    /// number of tokens (negative, fractional, a string, past 2^64) makes the whole report
    /// unusable, so the request is booked by its estimate rather than as 0 tokens; so does a
    /// total below its parts. An unusable detail counts 0 (the full price).
    pub fn read(
        u: &Value,
        [prompt, completion]: [&str; 2],
        cached: &str,
        reasoning: &str,
    ) -> Option<Usage> {
        let count = |found: Option<&Value>| match found {
            None | Some(Value::Null) => Some(None),
            Some(n) => n.as_u64().map(Some),
        };
        let prompt_tokens = count(u.get(prompt))??;
        let completion_tokens = count(u.get(completion))?.unwrap_or(0);
        let sum = prompt_tokens.checked_add(completion_tokens)?;
        let total_tokens = count(u.get("total_tokens"))?.unwrap_or(sum);
        if total_tokens < sum {
            return None;
        }
        let detail = |path: &str, most: u64| {
            u.pointer(path)
                .and_then(Value::as_u64)
                .filter(|n| *n <= most)
                .unwrap_or(0)
        };
        Some(Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens,
            cached_tokens: detail(cached, prompt_tokens),
            reasoning_tokens: detail(reasoning, completion_tokens),
        })
    }
}

/// What the relay needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep reading the upstream.
    Read,
    /// The next event would pass the granted completion budget: extend it (`grant`) or end the stream.
    NeedBudget,
}

/// Which stream format is relayed: Chat Completions chunks ending in `[DONE]`, Responses events
/// ending in `response.completed` (or `.incomplete`, `.failed`), or Anthropic's Messages events
/// ending in `message_stop` (relayed as the provider sent them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Chat,
    Responses,
    Messages,
}

impl Wire {
    fn output_bytes(self, v: &Value) -> u64 {
        match self {
            Wire::Chat => output_bytes(v),
            Wire::Responses => crate::upstream::responses::output_bytes(v),
            Wire::Messages => crate::providers::anthropic::output_bytes(v),
        }
    }

    /// Whether an upstream event reports an error (chat: a top-level `error` member; Responses: an
    /// `error` event or a failed response). Its text is the owner's, never relayed to the end user.
    fn is_upstream_error(self, name: Option<&str>, v: &Value) -> bool {
        if name == Some("error") || v.get("object").and_then(Value::as_str) == Some("error") {
            return true;
        }
        match self {
            Wire::Chat => v.get("error").is_some_and(|e| !e.is_null()),
            Wire::Responses => matches!(
                v.get("type").and_then(Value::as_str),
                Some("error" | "response.failed")
            ),
            Wire::Messages => v.get("type").and_then(Value::as_str) == Some("error"),
        }
    }

    /// Whether the event ends the answer (chat's `[DONE]` is not JSON and is seen apart).
    fn is_final(self, v: &Value) -> bool {
        match self {
            Wire::Chat => false,
            Wire::Responses => crate::upstream::responses::is_final(v),
            Wire::Messages => v.get("type").and_then(Value::as_str) == Some("message_stop"),
        }
    }

    /// The error that ends a stream, as this format's clients raise it: for chat an unnamed event
    /// with OpenAI's `error` member, then `[DONE]`; for Responses an `error` event (its `type`,
    /// `code`, `message`, `param`, and the same `error` member).
    fn error_event(self, error: &Error) -> String {
        let mut problem = error.to_problem();
        match self {
            Wire::Chat => {
                let mut out = format_event(None, &problem.to_string());
                out.push_str(&format_event(None, "[DONE]"));
                out
            }
            Wire::Responses => {
                if let Value::Object(o) = &mut problem {
                    o.insert("problem_type".into(), o["type"].clone());
                    o.insert("type".into(), Value::from("error"));
                    o.insert("code".into(), Value::from(error.problem.code()));
                    o.insert("message".into(), Value::from(error.detail.clone()));
                    o.insert("param".into(), Value::Null);
                }
                format_event(Some("error"), &problem.to_string())
            }
            Wire::Messages => {
                // The provider's own kind when it said a safe one (`overloaded_error`), else the
                // kind Anthropic gives the status.
                let kind = error
                    .extra
                    .get("upstream_type")
                    .and_then(Value::as_str)
                    .filter(|k| crate::error::ANTHROPIC_TYPES.contains(k))
                    .unwrap_or(crate::error::anthropic_type(error.status));
                let event = serde_json::json!({"type": "error", "error": {
                    "type": kind, "message": error.detail}});
                format_event(Some("error"), &event.to_string())
            }
        }
    }
}

#[derive(Debug)]
pub struct Relay {
    wire: Wire,
    parser: Parser,
    pending: VecDeque<Event>,
    saw_done: bool,
    finished: bool,
    /// The client did not ask for `stream_options.include_usage`: the usage chunk is the gateway's.
    strip_usage: bool,
    /// Completion tokens granted so far; `None` = unmetered.
    budget: Option<u64>,
    /// Bytes of generated output delivered: an upper bound of its tokens.
    delivered: u64,
    usage: Option<Usage>,
    /// Anthropic's usage counts so far (the Messages wire).
    counts: Counts,
    /// What an upstream error event said (for the usage record), once one ended the stream.
    upstream_said: Option<String>,
}

impl Relay {
    pub fn new(strip_usage: bool, budget: Option<u64>) -> Self {
        Self::of(Wire::Chat, strip_usage, budget)
    }

    pub fn of(wire: Wire, strip_usage: bool, budget: Option<u64>) -> Self {
        Relay {
            wire,
            parser: Parser::new(),
            pending: VecDeque::new(),
            saw_done: false,
            finished: false,
            strip_usage,
            budget,
            delivered: 0,
            usage: None,
            counts: Counts::default(),
            upstream_said: None,
        }
    }

    /// The same relay with `budget` granted (`None`: unmetered).
    pub fn with_budget(mut self, budget: Option<u64>) -> Self {
        self.budget = budget;
        self
    }

    /// The most completion tokens delivered so far (their bytes).
    pub fn completion_bound(&self) -> u64 {
        self.delivered
    }

    /// The upstream's own usage, if its usage chunk arrived.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The completion budget granted so far (`None`: unmetered).
    pub fn budget(&self) -> Option<u64> {
        self.budget
    }

    /// How much more budget the event waiting at the front needs to go out.
    pub fn shortfall(&self) -> u64 {
        let Some(budget) = self.budget else {
            return 0;
        };
        let next = self
            .pending
            .front()
            .and_then(|e| crate::encoding::from_json::<Value>(&e.data).ok())
            .map_or(0, |v| self.wire.output_bytes(&v));
        self.delivered.saturating_add(next).saturating_sub(budget)
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// What the upstream's error event said, once (for the usage record).
    pub fn take_upstream_said(&mut self) -> Option<String> {
        self.upstream_said.take()
    }

    /// Bytes to send for an upstream chunk: every complete event that fits the budget, re-framed.
    pub fn on_chunk(&mut self, chunk: &[u8]) -> (Vec<u8>, Next) {
        if self.finished {
            return (Vec::new(), Next::Read);
        }
        self.pending.extend(self.parser.push(chunk));
        if self.parser.overflowed() {
            self.pending.clear();
            let e = Error::new(
                Problem::UpstreamStreamInterrupted,
                "The upstream sent an event larger than the gateway relays; the text so far was delivered.",
            );
            return (self.on_error(&e), Next::Read);
        }
        self.drain()
    }

    /// More budget arrived (may be zero); sends what now fits.
    pub fn grant(&mut self, tokens: u64) -> (Vec<u8>, Next) {
        if let Some(b) = &mut self.budget {
            *b = b.saturating_add(tokens);
        }
        self.drain()
    }

    fn drain(&mut self) -> (Vec<u8>, Next) {
        let mut out = String::new();
        while let Some(event) = self.pending.front() {
            if event.data == "[DONE]" {
                self.saw_done = true;
                out.push_str(&format_event(event.event.as_deref(), &event.data));
                self.pending.pop_front();
                continue;
            }
            let parsed: Option<Value> = crate::encoding::from_json(&event.data).ok();
            // A named `error` event counts whatever its data (plain text too).
            let fallback;
            let v = match parsed.as_ref() {
                Some(v) => v,
                None => {
                    fallback = serde_json::json!({ "message": event.data });
                    &fallback
                }
            };
            if self.wire.is_upstream_error(event.event.as_deref(), v) {
                // The upstream's own words stay with the owner: the client gets the stream's
                // error event with a generic detail (and a safe code), and the stream ends.
                let (error, said) = crate::upstream::stream_failure(v);
                self.upstream_said = Some(said);
                self.pending.clear();
                out.push_str(&String::from_utf8_lossy(&self.on_error(&error)));
                return (out.into_bytes(), Next::Read);
            }
            let Some(parsed) = parsed else {
                // Neither JSON nor `[DONE]`: no SDK can read it, and its text could not be
                // metered. The stream ends with the gateway's error event; what it was goes to the
                // usage record.
                let said: String = event.data.chars().take(300).collect();
                self.upstream_said = Some(format!("an event that is not JSON: {said}"));
                let e = Error::new(
                    Problem::UpstreamStreamInterrupted,
                    "The upstream sent an event that is not JSON; the text so far was delivered.",
                );
                out.push_str(&String::from_utf8_lossy(&self.on_error(&e)));
                return (out.into_bytes(), Next::Read);
            };
            let added = self.wire.output_bytes(&parsed);
            if let Some(budget) = self.budget {
                if added > 0 && self.delivered.saturating_add(added) > budget {
                    return (out.into_bytes(), Next::NeedBudget);
                }
            }
            let Some(event) = self.pending.pop_front() else {
                break;
            };
            self.delivered = self.delivered.saturating_add(added);
            let mut data = event.data;
            let mut v = parsed;
            if self.wire.is_final(&v) {
                self.saw_done = true;
            }
            match self.wire {
                Wire::Chat => self.usage = Usage::from_json(&v).or(self.usage),
                Wire::Responses => {
                    self.usage = crate::upstream::responses::usage(&v).or(self.usage);
                }
                // Anthropic's counts come in pieces and are a report only once settled (and
                // unspoiled); until then the request is booked by its estimate.
                Wire::Messages => {
                    self.counts.take_event(&v);
                    self.usage = self.counts.usage();
                }
            }
            // The usage the gateway asked for itself goes no further, usable or not.
            let reports = v.get("usage").is_some_and(|u| !u.is_null());
            if self.strip_usage && self.wire == Wire::Chat && reports {
                let no_choices = v
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_none_or(|c| c.is_empty());
                if no_choices {
                    continue; // the usage-only chunk
                }
                if let Value::Object(o) = &mut v {
                    o.remove("usage");
                }
                data = v.to_string();
            }
            out.push_str(&format_event(event.event.as_deref(), &data));
        }
        (out.into_bytes(), Next::Read)
    }

    /// Ends the stream with a final `error` event carrying the problem, then `[DONE]`.
    /// Events held back (past the budget, or half received) are dropped.
    pub fn on_error(&mut self, error: &Error) -> Vec<u8> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        self.pending.clear();
        self.wire.error_event(error).into_bytes()
    }

    /// The upstream ended. A stream that stopped inside an event or before `[DONE]` was cut short.
    pub fn on_end(&mut self) -> Vec<u8> {
        if self.finished {
            return Vec::new();
        }
        if self.parser.has_partial() || !self.pending.is_empty() || !self.saw_done {
            return self.on_error(&cut_short());
        }
        self.finished = true;
        Vec::new()
    }
}

pub fn cut_short() -> Error {
    Error::new(Problem::UpstreamStreamInterrupted, "The upstream model API stopped sending before the reply was complete; the text so far was delivered.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(bytes: &[u8]) -> Vec<Event> {
        Parser::new().push(bytes)
    }
    fn content(text: &str) -> String {
        format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n")
    }
    const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"total_tokens\":8}}\n\n";

    #[test]
    fn passes_complete_events_only() {
        let mut r = Relay::new(false, None);
        let (out, next) = r.on_chunk(b"data: {\"a\":1}\n\ndata: {\"b\"");
        assert_eq!(
            events(&out),
            vec![Event {
                event: None,
                data: "{\"a\":1}".into()
            }]
        );
        assert_eq!(next, Next::Read);
        let (out, _) = r.on_chunk(b":2}\n\ndata: [DONE]\n\n");
        assert_eq!(events(&out).len(), 2);
        assert!(r.on_end().is_empty());
    }

    #[test]
    fn cut_mid_event_ends_with_error_and_done() {
        let mut r = Relay::new(false, None);
        r.on_chunk(b"data: {\"a\":1}\n\ndata: {\"half");
        let tail = events(&r.on_end());
        assert_eq!(tail.len(), 2);
        assert_eq!(
            tail[0].event, None,
            "unnamed, as OpenAI streams send errors"
        );
        let problem: Value = crate::encoding::from_json(&tail[0].data).unwrap();
        assert_eq!(problem["type"], "upstream-stream-interrupted");
        assert!(
            problem["error"]["message"].is_string(),
            "OpenAI's error member"
        );
        assert_eq!(tail[1].data, "[DONE]");
        assert!(r.on_chunk(b"data: late\n\n").0.is_empty());
        assert!(r.is_finished());
    }

    #[test]
    fn clean_end_without_done_is_a_cut() {
        let mut r = Relay::new(false, None);
        r.on_chunk(b"data: {}\n\n");
        assert!(events(&r.on_end())[0].data.contains("\"error\":{"));
    }

    #[test]
    fn transport_error_emits_one_error() {
        let mut r = Relay::new(false, None);
        let out = r.on_error(&Error::upstream("reset"));
        assert!(events(&out)[0].data.contains("upstream-error"));
        assert!(r.on_end().is_empty());
    }

    #[test]
    fn usage_is_captured_and_stripped_unless_asked_for() {
        let stream = format!("{}{USAGE}data: [DONE]\n\n", content("abcd"));
        let mut hidden = Relay::new(true, None);
        let (out, _) = hidden.on_chunk(stream.as_bytes());
        let ev = events(&out);
        assert_eq!(ev.len(), 2, "usage chunk removed");
        assert!(!String::from_utf8_lossy(&out).contains("usage"));
        assert_eq!(
            hidden.usage(),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 3,
                total_tokens: 8,
                ..Usage::default()
            })
        );
        let mut shown = Relay::new(false, None);
        let (out, _) = shown.on_chunk(stream.as_bytes());
        assert_eq!(events(&out).len(), 3);
        assert_eq!(shown.usage().map(|u| u.total_tokens), Some(8));
    }

    #[test]
    fn a_usage_report_with_counts_that_are_not_whole_numbers_is_no_report() {
        let read = |u: Value| Usage::from_json(&serde_json::json!({ "usage": u }));
        for bad in [
            serde_json::json!({"prompt_tokens": 5, "completion_tokens": -5}),
            serde_json::json!({"prompt_tokens": 5, "completion_tokens": "400"}),
            serde_json::json!({"prompt_tokens": 5, "completion_tokens": 1e30}),
            serde_json::json!({"prompt_tokens": 5.5, "completion_tokens": 1}),
            serde_json::json!({"completion_tokens": 1}),
            serde_json::json!({"prompt_tokens": u64::MAX, "completion_tokens": 1}),
            serde_json::json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 2}),
        ] {
            assert_eq!(read(bad.clone()), None, "{bad}");
        }
        let u = read(
            serde_json::json!({"prompt_tokens": 5, "completion_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 9}, "completion_tokens_details": {"reasoning_tokens": 2}}),
        );
        assert_eq!(
            u,
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 3,
                total_tokens: 8,
                cached_tokens: 0,
                reasoning_tokens: 2
            }),
            "a cached count past the prompt is no discount"
        );
        // Embeddings report no completion.
        assert_eq!(
            read(serde_json::json!({"prompt_tokens": 4, "total_tokens": 4}))
                .map(|u| u.total_tokens),
            Some(4)
        );
    }

    #[test]
    fn an_event_that_is_not_json_ends_the_stream_unrelayed() {
        let mut r = Relay::new(true, Some(100));
        let (out, _) = r.on_chunk(
            format!(
                "{}data: <html>oops</html>\n\n{}",
                content("ab"),
                content("cd")
            )
            .as_bytes(),
        );
        let ev = events(&out);
        assert_eq!(ev.len(), 3, "{ev:?}");
        assert!(ev[0].data.contains("ab"));
        assert!(
            ev[1].data.contains("upstream-stream-interrupted"),
            "{}",
            ev[1].data
        );
        assert_eq!(ev[2].data, "[DONE]");
        assert_eq!(r.completion_bound(), 2);
        assert!(r.take_upstream_said().is_some_and(|s| s.contains("<html>")));
        // A spoiled usage chunk the gateway asked for is not relayed either, and books nothing.
        let mut r = Relay::new(true, None);
        let (out, _) = r.on_chunk(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":-1}}\n\ndata: [DONE]\n\n");
        assert_eq!(events(&out).len(), 1);
        assert_eq!(r.usage(), None);
    }

    #[test]
    fn anthropic_events_are_relayed_as_sent_and_metered() {
        let ev = |name: &str, data: &str| format!("event: {name}\ndata: {data}\n\n");
        let stream = [
            ev("message_start", r#"{"type":"message_start","message":{"id":"msg_1","type":"message","usage":{"input_tokens":12,"cache_creation_input_tokens":3,"output_tokens":1}}}"#),
            ev("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2ln"}}"#),
            ev("content_block_start", r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#),
            ev("content_block_delta", r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hello"}}"#),
            ev("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"stop_sequence","stop_sequence":"END"},"usage":{"output_tokens":9}}"#),
            ev("message_stop", r#"{"type":"message_stop"}"#),
        ]
        .concat();
        let mut r = Relay::of(Wire::Messages, false, Some(100));
        let (out, next) = r.on_chunk(stream.as_bytes());
        assert_eq!(next, Next::Read);
        assert_eq!(String::from_utf8_lossy(&out), stream, "relayed as sent");
        assert_eq!(r.completion_bound(), 8, "thinking and text bytes");
        assert_eq!(
            r.usage().map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((15, 9))
        );
        assert!(r.on_end().is_empty(), "message_stop ends it");

        // Past its budget, the stream ends with Anthropic's error event; an upstream error event
        // is the gateway's, in the same shape.
        let mut r = Relay::of(Wire::Messages, false, Some(3));
        let (out, next) = r.on_chunk(stream.as_bytes());
        assert_eq!(next, Next::NeedBudget);
        assert!(!String::from_utf8_lossy(&out).contains("Hello"));
        let end = events(&r.on_error(&Error::new(Problem::QuotaExceeded, "spent")));
        assert_eq!(end[0].event.as_deref(), Some("error"));
        let error: Value = crate::encoding::from_json(&end[0].data).unwrap();
        assert_eq!(error["error"]["type"], "rate_limit_error");
        let mut r = Relay::of(Wire::Messages, false, None);
        let (out, _) = r.on_chunk(
            ev(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"org-1 busy"}}"#,
            )
            .as_bytes(),
        );
        let out = String::from_utf8_lossy(&out).into_owned();
        assert!(!out.contains("org-1"), "{out}");
        assert!(
            out.contains("overloaded_error"),
            "the provider's own safe kind: {out}"
        );
        assert!(r.is_finished());
        // Until message_delta settles them, message_start's counts (its output a placeholder)
        // are no report: a stream ended before then is booked by its estimate.
        let mut r = Relay::of(Wire::Messages, false, None);
        r.on_chunk(
            stream
                .split("event: message_delta")
                .next()
                .unwrap_or("")
                .as_bytes(),
        );
        assert_eq!(r.usage(), None);
        assert!(r.completion_bound() > 0);
        // Nor does a message_delta that gives no output count settle them.
        let head = stream.split("event: message_delta").next().unwrap_or("");
        for delta in [
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#,
            r#"{"type":"message_delta","delta":{},"usage":{}}"#,
        ] {
            let mut r = Relay::of(Wire::Messages, false, None);
            r.on_chunk(format!("{head}{}", ev("message_delta", delta)).as_bytes());
            assert_eq!(r.usage(), None, "{delta}");
        }
        // Redacted thinking is output the live budget counts.
        let mut r = Relay::of(Wire::Messages, false, Some(10));
        let (_, next) = r.on_chunk(ev("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"redacted_thinking","data":"EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"}}"#).as_bytes());
        assert_eq!(next, Next::NeedBudget);
        // Cut before message_stop.
        let mut r = Relay::of(Wire::Messages, false, None);
        r.on_chunk(
            stream
                .split("event: message_stop")
                .next()
                .unwrap_or("")
                .as_bytes(),
        );
        assert!(String::from_utf8_lossy(&r.on_end()).contains("event: error"));
    }

    #[test]
    fn usage_inside_a_content_chunk_is_removed_not_the_chunk() {
        let mut r = Relay::new(true, None);
        let (out, _) = r.on_chunk(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n");
        let ev = events(&out);
        assert_eq!(ev.len(), 1);
        assert!(!ev[0].data.contains("usage"));
        assert_eq!(r.usage().map(|u| u.total_tokens), Some(2));
    }

    #[test]
    fn budget_holds_back_the_event_that_would_exceed_it() {
        // Each chunk is 8 bytes, at most 8 tokens; a budget of 20 fits two chunks (16) but not three (24).
        let mut r = Relay::new(true, Some(20));
        let stream = format!(
            "{}{}{}",
            content("12345678"),
            content("abcdefgh"),
            content("ABCDEFGH")
        );
        let (out, next) = r.on_chunk(stream.as_bytes());
        assert_eq!(events(&out).len(), 2);
        assert_eq!(next, Next::NeedBudget);
        assert_eq!(r.completion_bound(), 16);
        let (out, next) = r.grant(0);
        assert!(out.is_empty());
        assert_eq!(next, Next::NeedBudget);
        let (out, next) = r.grant(4);
        assert_eq!(events(&out).len(), 1);
        assert_eq!(next, Next::Read);
        assert_eq!(r.completion_bound(), 24);
    }

    #[test]
    fn quota_cut_keeps_what_was_sent_then_error_and_done() {
        let mut r = Relay::new(true, Some(8));
        let (sent, next) =
            r.on_chunk(format!("{}{}", content("12345678"), content("abcdefgh")).as_bytes());
        assert_eq!(next, Next::NeedBudget);
        let tail = r.on_error(&Error::new(Problem::QuotaExceeded, "spent"));
        let mut all = sent.clone();
        all.extend(tail);
        let ev = events(&all);
        assert_eq!(ev.len(), 3);
        assert!(ev[0].data.contains("12345678"));
        assert!(ev[1].data.contains("\"error\":{"));
        assert!(ev[1].data.contains("quota-exceeded"));
        assert_eq!(ev[2].data, "[DONE]");
    }

    #[test]
    fn tool_calls_refusals_and_cjk_count_against_the_budget() {
        let tool = "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"q\\\":1}\"}}]}}]}\n\n";
        let refusal = "data: {\"choices\":[{\"delta\":{\"refusal\":\"no\"}}]}\n\n";
        let cjk = content("漢字漢字");
        let mut r = Relay::new(true, Some(8 + 2 + 11));
        let (out, next) = r.on_chunk(format!("{tool}{refusal}{cjk}").as_bytes());
        assert_eq!(
            events(&out).len(),
            2,
            "the CJK chunk (12 bytes) does not fit the 11 left"
        );
        assert_eq!((next, r.completion_bound()), (Next::NeedBudget, 8 + 2));
    }

    #[test]
    fn usage_details_are_read() {
        let v: Value = crate::encoding::from_json(r#"{"usage":{"prompt_tokens":10,"completion_tokens":5,
            "prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":3}}}"#).unwrap();
        let u = Usage::from_json(&v).unwrap();
        assert_eq!(
            (u.total_tokens, u.cached_tokens, u.reasoning_tokens),
            (15, 4, 3)
        );
    }

    #[test]
    fn responses_events_are_metered_and_end_with_their_final_event() {
        let delta = |t: &str| {
            format!(
                "event: response.output_text.delta\ndata: {}\n\n",
                serde_json::json!({"type": "response.output_text.delta", "delta": t})
            )
        };
        let mut r = Relay::of(Wire::Responses, false, Some(5));
        let (out, next) = r.on_chunk(format!("{}{}", delta("abc"), delta("defg")).as_bytes());
        assert_eq!(events(&out).len(), 1, "the second delta passes the budget");
        assert_eq!(
            events(&out)[0].event.as_deref(),
            Some("response.output_text.delta")
        );
        assert_eq!(next, Next::NeedBudget);
        let (out, _) = r.grant(10);
        assert_eq!(events(&out).len(), 1);
        let done = "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":2}}}\n\n";
        let (out, _) = r.on_chunk(done.as_bytes());
        assert_eq!(events(&out).len(), 1);
        assert_eq!(r.usage().map(|u| u.completion_tokens), Some(2));
        assert!(
            r.on_end().is_empty(),
            "the final event ends a Responses stream cleanly"
        );
    }

    #[test]
    fn a_cut_responses_stream_ends_with_an_error_event_the_sdks_raise() {
        let mut r = Relay::of(Wire::Responses, false, None);
        r.on_chunk(b"event: response.created\ndata: {\"type\":\"response.created\"}\n\n");
        let tail = events(&r.on_end());
        assert_eq!(tail.len(), 1, "no [DONE] in a Responses stream");
        assert_eq!(tail[0].event.as_deref(), Some("error"));
        let v: Value = crate::encoding::from_json(&tail[0].data).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["problem_type"], "upstream-stream-interrupted");
        assert!(v["message"].is_string() && v["error"]["message"] == v["message"]);
    }

    #[test]
    fn an_upstream_error_event_is_replaced_and_its_text_kept_for_the_owner() {
        let mut r = Relay::new(false, None);
        let upstream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"error\":{\"message\":\"internal at https://10.0.0.7/shard-3 for org-99\",\"type\":\"server_error\",\"code\":null}}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" never\"}}]}\n\n",
        );
        let (out, _) = r.on_chunk(upstream.as_bytes());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Hi") && !text.contains("never"), "{text}");
        for leak in ["10.0.0.7", "org-99", "shard-3"] {
            assert!(!text.contains(leak), "{leak} reached the client: {text}");
        }
        assert!(
            text.contains("server_error"),
            "the safe type is kept: {text}"
        );
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(r.is_finished());
        assert!(r.take_upstream_said().unwrap().contains("org-99"));
        let mut responses = Relay::of(Wire::Responses, false, None);
        let (out, _) = responses.on_chunk(
            b"event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":\"secret text\"}\n\n",
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("secret text") && text.contains("event: error"),
            "{text}"
        );
    }

    #[test]
    fn any_named_error_event_or_error_object_is_replaced() {
        for upstream in [
            "event: error\ndata: upstream db at 10.9.9.9 is down\n\n",
            "event: error\ndata: {\"message\":\"10.9.9.9 down\"}\n\n",
            "data: {\"object\":\"error\",\"message\":\"10.9.9.9 down\",\"type\":\"InternalServerError\"}\n\n",
        ] {
            let mut r = Relay::new(false, None);
            let (out, _) = r.on_chunk(upstream.as_bytes());
            let text = String::from_utf8(out).unwrap();
            assert!(!text.contains("10.9.9.9"), "{text}");
            assert!(text.contains("upstream-stream-interrupted") && r.is_finished(), "{text}");
            assert!(r.take_upstream_said().unwrap().contains("10.9.9.9"));
        }
    }
}
