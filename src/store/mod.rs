//! The edge's storage adapters: D1 repositories and the per-consumer counter Durable Object.

pub mod auth_do;
pub mod counter_do;
pub mod d1;
pub mod kv;
