//! Relays an upstream SSE stream event by event, so a cut never leaves a half event at the client
//! and the gateway can always end the stream with a well-formed error event.

use crate::error::Error;
use crate::stream::sse::{format_event, Parser};

#[derive(Debug, Default)]
pub struct Relay {
    parser: Parser,
    saw_done: bool,
    finished: bool,
}

impl Relay {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes to send for an upstream chunk: every event it completed, re-framed.
    pub fn on_chunk(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.finished {
            return Vec::new();
        }
        let mut out = String::new();
        for event in self.parser.push(chunk) {
            if event.data == "[DONE]" {
                self.saw_done = true;
            }
            out.push_str(&format_event(event.event.as_deref(), &event.data));
        }
        out.into_bytes()
    }

    /// The upstream failed mid-stream: a final `error` event with the problem, then `[DONE]`.
    /// Any half event received before the cut is dropped.
    pub fn on_error(&mut self, error: &Error) -> Vec<u8> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        let mut out = format_event(Some("error"), &error.to_problem().to_string());
        out.push_str(&format_event(None, "[DONE]"));
        out.into_bytes()
    }

    /// The upstream ended. A stream that stopped inside an event or before `[DONE]` was cut short.
    pub fn on_end(&mut self) -> Vec<u8> {
        if self.finished {
            return Vec::new();
        }
        if self.parser.has_partial() || !self.saw_done {
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
    use crate::stream::sse::Event;

    fn events(bytes: &[u8]) -> Vec<Event> {
        Parser::new().push(bytes)
    }

    #[test]
    fn passes_complete_events_only() {
        let mut r = Relay::new();
        let out = r.on_chunk(b"data: {\"a\":1}\n\ndata: {\"b\"");
        assert_eq!(
            events(&out),
            vec![Event {
                event: None,
                data: "{\"a\":1}".into()
            }]
        );
        let out = r.on_chunk(b":2}\n\ndata: [DONE]\n\n");
        assert_eq!(events(&out).len(), 2);
        assert!(r.on_end().is_empty());
    }

    #[test]
    fn cut_mid_event_ends_with_error_and_done() {
        let mut r = Relay::new();
        r.on_chunk(b"data: {\"a\":1}\n\ndata: {\"half");
        let tail = events(&r.on_end());
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[0].event.as_deref(), Some("error"));
        let problem: serde_json::Value = serde_json::from_str(&tail[0].data).unwrap();
        assert_eq!(problem["type"], "upstream-stream-interrupted");
        assert_eq!(tail[1].data, "[DONE]");
        assert!(r.on_chunk(b"data: late\n\n").is_empty());
    }

    #[test]
    fn clean_end_without_done_is_a_cut() {
        let mut r = Relay::new();
        r.on_chunk(b"data: {}\n\n");
        assert_eq!(events(&r.on_end())[0].event.as_deref(), Some("error"));
    }

    #[test]
    fn transport_error_emits_one_error() {
        let mut r = Relay::new();
        let out = r.on_error(&Error::upstream("reset"));
        assert_eq!(events(&out)[0].event.as_deref(), Some("error"));
        assert!(r.on_end().is_empty());
    }
}
