//! Bus adapters.

pub mod sqlite;
