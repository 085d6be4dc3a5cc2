//! Incremental Server-Sent Events parser (WHATWG rules) that accepts bytes split anywhere.

/// One dispatched event. `data` joins multiple `data:` lines with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

/// Feed it chunks as they arrive; it yields complete events and keeps the rest.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    /// The last chunk ended in `\r`: a `\n` at the start of the next one belongs to it.
    pending_cr: bool,
    event: Option<String>,
    data: Option<String>,
    /// A line or an event grew past [`MAX_EVENT_BYTES`]: the rest of it was dropped.
    overflowed: bool,
}

/// The largest line, and the largest event's data, the parser holds: a stream that never ends a
/// line cannot grow the isolate's memory without bound.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

impl Parser {
    /// Whether a line or event was too large (the stream should be ended as broken).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        for &b in chunk {
            if self.pending_cr {
                self.pending_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' => self.end_line(&mut out),
                b'\r' => {
                    self.pending_cr = true;
                    self.end_line(&mut out);
                }
                _ if self.line.len() >= MAX_EVENT_BYTES => self.overflowed = true,
                _ => self.line.push(b),
            }
        }
        out
    }

    /// Bytes held back that have not yet formed a complete line or event.
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.data.is_some() || self.event.is_some()
    }

    fn end_line(&mut self, out: &mut Vec<Event>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                out.push(Event {
                    event: self.event.take(),
                    data,
                });
            }
            self.event = None;
            return;
        }
        if line[0] == b':' {
            return; // comment
        }
        let line = String::from_utf8_lossy(&line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) if d.len() + value.len() >= MAX_EVENT_BYTES => self.overflowed = true,
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "event" => self.event = Some(value.to_string()),
            _ => {} // id, retry and unknown fields do not matter to the gateway
        }
    }
}

/// Serialises one event in the form the gateway writes.
pub fn format_event(event: Option<&str>, data: &str) -> String {
    let mut s = String::new();
    if let Some(e) = event {
        s.push_str("event: ");
        s.push_str(e);
        s.push('\n');
    }
    for line in data.split('\n') {
        s.push_str("data: ");
        s.push_str(line);
        s.push('\n');
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "data: {\"a\":1}\n\n: keep-alive\n\nevent: error\ndata: line1\ndata: line2\n\r\ndata:nospace\r\rdata: [DONE]\n\n";

    fn expected() -> Vec<Event> {
        vec![
            Event {
                event: None,
                data: "{\"a\":1}".into(),
            },
            Event {
                event: Some("error".into()),
                data: "line1\nline2".into(),
            },
            Event {
                event: None,
                data: "nospace".into(),
            },
            Event {
                event: None,
                data: "[DONE]".into(),
            },
        ]
    }

    #[test]
    fn whole_stream_at_once() {
        let mut p = Parser::new();
        assert_eq!(p.push(STREAM.as_bytes()), expected());
        assert!(!p.has_partial());
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let bytes = STREAM.as_bytes();
        for cut in 0..=bytes.len() {
            let mut p = Parser::new();
            let mut got = p.push(&bytes[..cut]);
            got.extend(p.push(&bytes[cut..]));
            assert_eq!(got, expected(), "cut at {cut}");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut p = Parser::new();
        let got: Vec<Event> = STREAM
            .as_bytes()
            .iter()
            .flat_map(|b| p.push(std::slice::from_ref(b)))
            .collect();
        assert_eq!(got, expected());
    }

    #[test]
    fn multibyte_utf8_split_inside_a_character() {
        let s = "data: héllo 👋\n\n".as_bytes();
        for cut in 0..=s.len() {
            let mut p = Parser::new();
            let mut got = p.push(&s[..cut]);
            got.extend(p.push(&s[cut..]));
            assert_eq!(
                got,
                vec![Event {
                    event: None,
                    data: "héllo 👋".into()
                }],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn unterminated_event_is_held_back() {
        let mut p = Parser::new();
        assert!(p.push(b"data: partial").is_empty());
        assert!(p.has_partial());
    }

    #[test]
    fn format_round_trips() {
        let text = format_event(Some("error"), "{\"x\":1}\nsecond");
        let mut p = Parser::new();
        assert_eq!(
            p.push(text.as_bytes()),
            vec![Event {
                event: Some("error".into()),
                data: "{\"x\":1}\nsecond".into()
            }]
        );
    }

    #[test]
    fn a_line_that_never_ends_is_bounded() {
        let mut p = Parser::new();
        let chunk = vec![b'a'; 1024 * 1024];
        for _ in 0..6 {
            assert!(p.push(&chunk).is_empty());
        }
        assert!(p.overflowed());
        assert!(p.line.len() <= MAX_EVENT_BYTES);
    }
}
