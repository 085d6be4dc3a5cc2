//! Pure quota and rate-limit logic: plans, the per-consumer counter state, and the headers it yields.

pub mod counter;
pub mod frozen;
pub mod headers;
pub mod meter;
pub mod minute_log;
pub mod ops;
pub mod plan;
pub mod settling;
pub mod spend;
pub mod standing;
