//! Registry mirror adapters.

pub mod redis;
