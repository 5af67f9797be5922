//! DAU/MAU counter adapters (`ActivityStore`): HyperLogLog sketches in Redis
//! (production, shared by every node) or in-process and persisted in SQLite (embedded).

pub mod hyperloglog;
pub mod redis;
pub mod sqlite;

/// How many days MAU covers, today included.
pub const MAU_DAYS: i64 = 30;

/// The days MAU covers, ending with `today`.
pub fn mau_days(today: chrono::NaiveDate) -> Vec<chrono::NaiveDate> {
    (0..MAU_DAYS)
        .filter_map(|ago| today.checked_sub_days(chrono::Days::new(ago as u64)))
        .collect()
}
