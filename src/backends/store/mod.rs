//! Store adapters.

pub mod sqlite;
