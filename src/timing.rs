//! What one data-plane request spent before its answer's headers: per phase (`auth`, `admit`,
//! `upstream`) and per storage binding touched (`d1`, `kv`, `do`, with the number of calls), for
//! the `Server-Timing` header (RFC: W3C Server Timing). Pure: the clock is passed in.

use std::cell::{Cell, RefCell};

#[derive(Debug, Default)]
struct Entry {
    name: &'static str,
    ms: f64,
    calls: u32,
}

/// Shared by the steps of one request (interior mutability: the steps borrow it immutably).
#[derive(Debug, Default)]
pub struct Timing {
    phases: RefCell<Vec<Entry>>,
    bindings: RefCell<Vec<Entry>>,
    /// The answer shows the header (dev mode, or the API asks for it).
    shown: Cell<bool>,
}

/// The storage bindings a request can touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    D1,
    Kv,
    Do,
}

impl Binding {
    fn name(self) -> &'static str {
        match self {
            Binding::D1 => "d1",
            Binding::Kv => "kv",
            Binding::Do => "do",
        }
    }
}

fn add(list: &RefCell<Vec<Entry>>, name: &'static str, ms: f64) {
    let mut list = list.borrow_mut();
    match list.iter_mut().find(|e| e.name == name) {
        Some(e) => {
            e.ms += ms;
            e.calls += 1;
        }
        None => list.push(Entry { name, ms, calls: 1 }),
    }
}

/// Milliseconds with one decimal (`1.2`), in integer arithmetic (no float formatting in the WASM).
fn tenths(ms: f64) -> String {
    let t = (ms.max(0.0) * 10.0).round() as u64;
    format!("{}.{}", t / 10, t % 10)
}

impl Timing {
    pub fn show(&self, shown: bool) {
        self.shown.set(shown);
    }

    /// The header to send, when the answer shows it.
    pub fn shown_header(&self) -> Option<String> {
        self.shown.get().then(|| self.header())
    }

    pub fn phase(&self, name: &'static str, ms: f64) {
        add(&self.phases, name, ms);
    }

    pub fn call(&self, binding: Binding, ms: f64) {
        add(&self.bindings, binding.name(), ms);
    }

    /// How many calls a binding got (0 when untouched).
    pub fn calls(&self, binding: Binding) -> u32 {
        self.bindings
            .borrow()
            .iter()
            .find(|e| e.name == binding.name())
            .map_or(0, |e| e.calls)
    }

    /// The header value: `auth;dur=1.2, admit;dur=3.4, kv;dur=0.3;desc="1"`. Empty when nothing
    /// was measured.
    pub fn header(&self) -> String {
        let phases = self
            .phases
            .borrow()
            .iter()
            .map(|e| format!("{};dur={}", e.name, tenths(e.ms)))
            .collect::<Vec<_>>();
        let bindings = self
            .bindings
            .borrow()
            .iter()
            .map(|e| format!("{};dur={};desc=\"{}\"", e.name, tenths(e.ms), e.calls))
            .collect::<Vec<_>>();
        [phases, bindings].concat().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_and_bindings_render_with_call_counts() {
        let t = Timing::default();
        assert_eq!(t.header(), "");
        t.phase("auth", 1.25);
        t.call(Binding::Kv, 0.3);
        t.call(Binding::Do, 2.0);
        t.call(Binding::Do, 1.0);
        t.phase("admit", 3.0);
        assert_eq!(
            t.header(),
            "auth;dur=1.3, admit;dur=3.0, kv;dur=0.3;desc=\"1\", do;dur=3.0;desc=\"2\""
        );
        assert_eq!((t.calls(Binding::Do), t.calls(Binding::D1)), (2, 0));
        assert_eq!(t.shown_header(), None, "hidden unless asked for");
        t.show(true);
        assert!(t.shown_header().is_some_and(|h| h.starts_with("auth;")));
    }
}
