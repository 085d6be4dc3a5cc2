//! The owner's admin input: request bodies as they arrive, checked before anything is stored, and
//! applied onto the records they change.

pub mod api;
pub mod consumer;
pub mod oauth;
pub mod plan;
pub mod project;
pub mod validate;

pub use validate::{nullable, parse_body, validate_slug, validate_text};
