//! Mail transport adapters.

pub mod file;
pub mod smtp;
