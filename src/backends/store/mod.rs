//! Store adapters.

pub mod postgres;
pub mod sqlite;
