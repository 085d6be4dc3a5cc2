//! The edge's storage adapters: D1 repositories, typed KV records, and the two Durable Objects with
//! their typed names and one way to call them (`objects`).

pub mod auth_do;
pub mod counter_do;
pub mod d1;
pub mod kv;
pub mod objects;
