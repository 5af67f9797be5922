//! Mail transport adapters.

pub mod file;
