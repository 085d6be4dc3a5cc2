//! Pure stream handling: SSE parsing across chunk boundaries and the events the gateway adds.

pub mod relay;
pub mod sse;
