//! DAU/MAU in embedded mode: a HyperLogLog per UTC day kept in memory and persisted in
//! SQLite register by register (only registers that grew are written, so the write
//! volume is bounded by the sketch size, not by traffic). A restart reloads the days
//! from disk and forgets nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{Days, NaiveDate, Utc};
use rusqlite::params;

use herald_actors::ports::{ActivityStore, StoreError};

use super::hyperloglog::{HyperLogLog, Update};
use crate::backends::store::sqlite::SqliteDb;

/// Days of sketches kept on disk (beyond the MAU window, for late events).
pub const RETAINED_DAYS: u64 = 62;

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

fn day_text(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

/// Counters in the embedded database.
pub struct SqliteActivity {
    db: Arc<SqliteDb>,
    /// Sketches loaded so far; the lock is never held across an await.
    sketches: Mutex<HashMap<NaiveDate, HyperLogLog>>,
}

impl SqliteActivity {
    /// Counters over `db`.
    pub fn new(db: Arc<SqliteDb>) -> Self {
        Self {
            db,
            sketches: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, day: NaiveDate) -> Result<bool, StoreError> {
        let sketches = self.sketches.lock().map_err(unavailable)?;
        Ok(sketches.contains_key(&day))
    }

    /// Makes sure `day`'s sketch is in memory, reading it from disk if needed.
    async fn load(&self, day: NaiveDate) -> Result<(), StoreError> {
        if self.cached(day)? {
            return Ok(());
        }
        let text = day_text(day);
        let registers: Vec<(u16, u8)> = self
            .db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT idx, rank FROM activity_registers WHERE day = ?1")
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map([text], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(unavailable)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
            })
            .await?;
        let mut sketch = HyperLogLog::new();
        for (index, rank) in registers {
            sketch.apply(index, rank);
        }
        let mut sketches = self.sketches.lock().map_err(unavailable)?;
        // Sketches of days past the window are not needed in memory any more.
        if let Some(oldest) = Utc::now()
            .date_naive()
            .checked_sub_days(Days::new(RETAINED_DAYS))
        {
            sketches.retain(|d, _| *d >= oldest);
        }
        sketches.entry(day).or_insert(sketch);
        Ok(())
    }

    fn forget(&self, day: NaiveDate) {
        if let Ok(mut sketches) = self.sketches.lock() {
            sketches.remove(&day);
        }
    }
}

#[async_trait]
impl ActivityStore for SqliteActivity {
    async fn record(&self, day: NaiveDate, users: &[&str]) -> Result<(), StoreError> {
        self.load(day).await?;
        let updates: Vec<Update> = {
            let mut sketches = self.sketches.lock().map_err(unavailable)?;
            let sketch = sketches.entry(day).or_default();
            users
                .iter()
                .filter_map(|user| sketch.add(user.as_bytes()))
                .collect()
        };
        if updates.is_empty() {
            return Ok(());
        }
        let text = day_text(day);
        let cutoff = Utc::now()
            .date_naive()
            .checked_sub_days(Days::new(RETAINED_DAYS))
            .map(day_text);
        let written = self
            .db
            .write(move |conn| {
                let tx = conn.transaction().map_err(unavailable)?;
                {
                    let mut upsert = tx
                        .prepare_cached(
                            "INSERT INTO activity_registers (day, idx, rank) VALUES (?1, ?2, ?3)
                             ON CONFLICT (day, idx) DO UPDATE SET rank = max(rank, excluded.rank)",
                        )
                        .map_err(unavailable)?;
                    for (index, rank) in updates {
                        upsert
                            .execute(params![text, index, rank])
                            .map_err(unavailable)?;
                    }
                }
                if let Some(cutoff) = cutoff {
                    tx.execute("DELETE FROM activity_registers WHERE day < ?1", [cutoff])
                        .map_err(unavailable)?;
                }
                tx.commit().map_err(unavailable)
            })
            .await;
        if written.is_err() {
            // Memory ran ahead of the disk: reload from disk on the next call, so the
            // retried event writes its registers.
            self.forget(day);
        }
        written
    }

    async fn distinct(&self, days: &[NaiveDate]) -> Result<u64, StoreError> {
        for day in days {
            self.load(*day).await?;
        }
        let sketches = self.sketches.lock().map_err(unavailable)?;
        let mut union = HyperLogLog::new();
        for day in days {
            if let Some(sketch) = sketches.get(day) {
                union.merge(sketch);
            }
        }
        Ok(union.count())
    }
}
