//! DAU/MAU in Redis: one HyperLogLog per UTC day at `{prefix}:dau:{yyyy-mm-dd}`
//! (`PFADD`), counted with `PFCOUNT`; several days are merged with `PFMERGE` into a
//! short-lived key first. Every node counts into the same keys, so the numbers are the
//! cluster's.

use async_trait::async_trait;
use chrono::NaiveDate;
use deadpool_redis::redis;
use deadpool_redis::Pool;

use herald_actors::ports::{ActivityStore, StoreError};

/// Day keys outlive the MAU window by a margin, then expire on their own.
pub const DAY_KEY_TTL_SECS: i64 = 40 * 24 * 3600;
/// Merged keys are a cache for one answer.
pub const MERGED_KEY_TTL_SECS: i64 = 60;

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {err}"))
}

/// The HyperLogLog key of `day`.
pub fn day_key(prefix: &str, day: NaiveDate) -> String {
    format!("{prefix}:dau:{}", day.format("%Y-%m-%d"))
}

/// Counters in Redis.
pub struct RedisActivity {
    pool: Pool,
    prefix: String,
}

impl RedisActivity {
    /// Counters under `prefix` (normally `herald`) over `pool`.
    pub fn new(pool: Pool, prefix: String) -> Self {
        Self { pool, prefix }
    }
}

#[async_trait]
impl ActivityStore for RedisActivity {
    async fn record(&self, day: NaiveDate, users: &[&str]) -> Result<(), StoreError> {
        if users.is_empty() {
            return Ok(());
        }
        let mut conn = self.pool.get().await.map_err(unavailable)?;
        let key = day_key(&self.prefix, day);
        redis::pipe()
            .cmd("PFADD")
            .arg(&key)
            .arg(users)
            .ignore()
            .expire(&key, DAY_KEY_TTL_SECS)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn distinct(&self, days: &[NaiveDate]) -> Result<u64, StoreError> {
        let mut conn = self.pool.get().await.map_err(unavailable)?;
        let keys: Vec<String> = days.iter().map(|d| day_key(&self.prefix, *d)).collect();
        match keys.as_slice() {
            [] => Ok(0),
            [one] => redis::cmd("PFCOUNT")
                .arg(one)
                .query_async(&mut conn)
                .await
                .map_err(unavailable),
            [first, .., last] => {
                let merged = format!(
                    "{}:merged:{}:{}",
                    self.prefix,
                    &first[first.len() - 10..],
                    &last[last.len() - 10..]
                );
                let (count,): (u64,) = redis::pipe()
                    .cmd("PFMERGE")
                    .arg(&merged)
                    .arg(&keys)
                    .ignore()
                    .expire(&merged, MERGED_KEY_TTL_SECS)
                    .ignore()
                    .cmd("PFCOUNT")
                    .arg(&merged)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                Ok(count)
            }
        }
    }
}
