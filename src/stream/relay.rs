//! Relays an upstream SSE stream event by event while metering it: counts the completion as it goes,
//! captures the upstream's usage chunk (and hides it from clients that did not ask for it), and stops
//! before any token beyond the granted budget, so the gateway can extend the budget or end the stream
//! cleanly. A cut never leaves a half event at the client.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Error;
use crate::stream::sse::{format_event, Event, Parser};

/// Token counts as reported by the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    /// Reads an OpenAI `usage` object; `None` when absent or not numeric.
    pub fn from_json(v: &Value) -> Option<Usage> {
        let u = v.get("usage").filter(|u| u.is_object())?;
        let prompt = u.get("prompt_tokens").and_then(Value::as_u64)?;
        let completion = u
            .get("completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let total = u
            .get("total_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(prompt + completion);
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: total,
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

/// Characters of generated text in a chunk: content, reasoning and tool-call arguments.
fn generated_chars(v: &Value) -> usize {
    let Some(choices) = v.get("choices").and_then(Value::as_array) else {
        return 0;
    };
    choices
        .iter()
        .filter_map(|c| c.get("delta"))
        .map(|d| {
            let text = |k: &str| {
                d.get(k)
                    .and_then(Value::as_str)
                    .map_or(0, |s| s.chars().count())
            };
            let tools = d
                .get("tool_calls")
                .and_then(Value::as_array)
                .map_or(0, |calls| {
                    calls
                        .iter()
                        .filter_map(|t| t.pointer("/function/arguments").and_then(Value::as_str))
                        .map(|s| s.chars().count())
                        .sum()
                });
            text("content") + text("reasoning_content") + text("reasoning") + tools
        })
        .sum()
}

#[derive(Debug)]
pub struct Relay {
    parser: Parser,
    pending: VecDeque<Event>,
    saw_done: bool,
    finished: bool,
    /// The client did not ask for `stream_options.include_usage`: the usage chunk is the gateway's.
    strip_usage: bool,
    /// Completion tokens granted so far; `None` = unmetered.
    budget: Option<u64>,
    chars: usize,
    usage: Option<Usage>,
}

impl Relay {
    pub fn new(strip_usage: bool, budget: Option<u64>) -> Self {
        Relay {
            parser: Parser::new(),
            pending: VecDeque::new(),
            saw_done: false,
            finished: false,
            strip_usage,
            budget,
            chars: 0,
            usage: None,
        }
    }

    /// Completion tokens delivered so far, estimated at four characters a token.
    pub fn completion_estimate(&self) -> u64 {
        (self.chars as u64).div_ceil(4)
    }

    /// The upstream's own usage, if its usage chunk arrived.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Bytes to send for an upstream chunk: every complete event that fits the budget, re-framed.
    pub fn on_chunk(&mut self, chunk: &[u8]) -> (Vec<u8>, Next) {
        if self.finished {
            return (Vec::new(), Next::Read);
        }
        self.pending.extend(self.parser.push(chunk));
        self.drain()
    }

    /// More budget arrived (may be zero); sends what now fits.
    pub fn grant(&mut self, tokens: u64) -> (Vec<u8>, Next) {
        if let Some(b) = &mut self.budget {
            *b += tokens;
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
            let parsed: Option<Value> = serde_json::from_str(&event.data).ok();
            let added = parsed.as_ref().map_or(0, generated_chars);
            if let Some(budget) = self.budget {
                let after = ((self.chars + added) as u64).div_ceil(4);
                if added > 0 && after > budget {
                    return (out.into_bytes(), Next::NeedBudget);
                }
            }
            let Some(event) = self.pending.pop_front() else {
                break;
            };
            self.chars += added;
            let mut data = event.data;
            if let Some(mut v) = parsed {
                if let Some(u) = Usage::from_json(&v) {
                    self.usage = Some(u);
                    if self.strip_usage {
                        let no_choices = v
                            .get("choices")
                            .and_then(Value::as_array)
                            .is_none_or(|c| c.is_empty());
                        if no_choices {
                            continue; // the usage-only chunk the gateway asked for itself
                        }
                        if let Value::Object(o) = &mut v {
                            o.remove("usage");
                        }
                        data = v.to_string();
                    }
                }
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
        let mut out = format_event(Some("error"), &error.to_problem().to_string());
        out.push_str(&format_event(None, "[DONE]"));
        out.into_bytes()
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
    Error::new(502, "upstream-stream-interrupted", "The upstream stream ended early",
        "The upstream model API stopped sending before the reply was complete; the text so far was delivered.")
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
        assert_eq!(tail[0].event.as_deref(), Some("error"));
        let problem: Value = serde_json::from_str(&tail[0].data).unwrap();
        assert_eq!(problem["type"], "upstream-stream-interrupted");
        assert_eq!(tail[1].data, "[DONE]");
        assert!(r.on_chunk(b"data: late\n\n").0.is_empty());
        assert!(r.is_finished());
    }

    #[test]
    fn clean_end_without_done_is_a_cut() {
        let mut r = Relay::new(false, None);
        r.on_chunk(b"data: {}\n\n");
        assert_eq!(events(&r.on_end())[0].event.as_deref(), Some("error"));
    }

    #[test]
    fn transport_error_emits_one_error() {
        let mut r = Relay::new(false, None);
        let out = r.on_error(&Error::upstream("reset"));
        assert_eq!(events(&out)[0].event.as_deref(), Some("error"));
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
                total_tokens: 8
            })
        );
        let mut shown = Relay::new(false, None);
        let (out, _) = shown.on_chunk(stream.as_bytes());
        assert_eq!(events(&out).len(), 3);
        assert_eq!(shown.usage().map(|u| u.total_tokens), Some(8));
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
        // Each chunk is 8 characters = 2 tokens; a budget of 5 fits two chunks (4 tokens) but not three (6).
        let mut r = Relay::new(true, Some(5));
        let stream = format!(
            "{}{}{}",
            content("12345678"),
            content("abcdefgh"),
            content("ABCDEFGH")
        );
        let (out, next) = r.on_chunk(stream.as_bytes());
        assert_eq!(events(&out).len(), 2);
        assert_eq!(next, Next::NeedBudget);
        assert_eq!(r.completion_estimate(), 4);
        let (out, next) = r.grant(0);
        assert!(out.is_empty());
        assert_eq!(next, Next::NeedBudget);
        let (out, next) = r.grant(2);
        assert_eq!(events(&out).len(), 1);
        assert_eq!(next, Next::Read);
        assert_eq!(r.completion_estimate(), 6);
    }

    #[test]
    fn quota_cut_keeps_what_was_sent_then_error_and_done() {
        let mut r = Relay::new(true, Some(2));
        let (sent, next) =
            r.on_chunk(format!("{}{}", content("12345678"), content("abcdefgh")).as_bytes());
        assert_eq!(next, Next::NeedBudget);
        let tail = r.on_error(&Error::new(
            429,
            "quota-exceeded",
            "Quota exceeded",
            "spent",
        ));
        let mut all = sent.clone();
        all.extend(tail);
        let ev = events(&all);
        assert_eq!(ev.len(), 3);
        assert!(ev[0].data.contains("12345678"));
        assert_eq!(ev[1].event.as_deref(), Some("error"));
        assert!(ev[1].data.contains("quota-exceeded"));
        assert_eq!(ev[2].data, "[DONE]");
    }

    #[test]
    fn counts_reasoning_and_tool_arguments() {
        let v: Value = serde_json::from_str(r#"{"choices":[{"delta":{"reasoning_content":"abcd","tool_calls":[{"function":{"arguments":"{\"x\":1}"}}]}}]}"#).unwrap();
        assert_eq!(generated_chars(&v), 4 + 7);
    }
}
