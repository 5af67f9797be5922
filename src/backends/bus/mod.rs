//! Bus adapters.

pub mod kafka;
pub mod sqlite;
