//! Bus adapters.

pub mod kafka;
pub mod memory;
pub mod sqlite;
