//! Bus adapters.

pub mod kafka;
pub mod memory;
pub mod sqlite;

use std::time::Duration;

use tokio::sync::watch;

/// Longest wait without a wake-up before an embedded subscription looks again (a
/// safety net only: publishes wake it).
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// Waits until the topic's `waker` reports a publish, or [`IDLE_RECHECK`] passed. The
/// embedded subscriptions mark the waker seen *before* they read, so a publish that
/// lands between their read and this wait still wakes them.
pub(crate) async fn wait_for_publish(waker: &mut watch::Receiver<i64>) {
    let _ = tokio::time::timeout(IDLE_RECHECK, waker.changed()).await;
}
