//! What a run counts: frames received, duplicates, the latency histogram and the
//! per-message delivery counters, shared by every session and publisher of one step.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Deserialize;

/// Event name of targeted pushes the harness publishes.
pub const EVENT_PUSH: &str = "bench.push";
/// Event name of broadcasts the harness publishes.
pub const EVENT_BROADCAST: &str = "bench.broadcast";
/// Event name of the warm-up pushes sent until the delivery path answers.
pub const EVENT_WARMUP: &str = "bench.warmup";

/// Latency histograms are sharded so sessions on different threads rarely contend.
const SHARDS: usize = 16;
/// Largest latency the histograms track, in microseconds (anything above is clamped).
const MAX_LATENCY_US: u64 = 120_000_000;

/// A monotonic clock shared by publishers (which stamp payloads) and sessions (which
/// read the stamps back): both live in the harness process, so no clock skew.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
        }
    }

    /// Microseconds since the clock started.
    pub fn now_us(&self) -> u64 {
        self.us_at(Instant::now())
    }

    /// Microseconds from the clock's start to `at` (0 before it).
    pub fn us_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_micros()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Percentiles {
    /// Percentiles of a histogram of microseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// A histogram of microseconds with 3 significant digits.
///
/// # Errors
/// Never with these constant bounds; kept fallible because the constructor is.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?)
}

/// The counters of one measured step. A fresh tally per step keeps steps apart; the
/// sessions see the current one through a `watch` channel.
#[derive(Debug)]
pub struct Tally {
    /// The clock payload stamps are read against.
    pub clock: Clock,
    latency: Vec<Mutex<Histogram<u64>>>,
    publish_latency: Mutex<Histogram<u64>>,
    /// Harness frames received for the first time by their session.
    pub received: AtomicU64,
    /// Frames whose id was not above the last id that session had seen (a duplicate,
    /// or a reordering, which the protocol forbids as well).
    pub duplicates: AtomicU64,
    /// Frames that are not harness notifications (`user.joined`, pongs, errors).
    pub foreign: AtomicU64,
    /// Deliveries the harness expects: accepted publishes times their recipients.
    pub expected: AtomicU64,
    /// Publishes accepted (202 / acknowledged by the bus).
    pub accepted: AtomicU64,
    /// Publishes that failed (non-2xx, transport error, bus error).
    pub publish_errors: AtomicU64,
    /// Warm-up frames received.
    pub warmups: AtomicU64,
    /// When the last harness frame arrived, in clock microseconds.
    pub last_frame_us: AtomicU64,
    per_seq: Vec<AtomicU32>,
}

impl Tally {
    /// A tally on `clock` tracking per-message delivery counts for `seq_capacity`
    /// messages (sequence numbers beyond it are counted but not tracked one by one).
    ///
    /// # Errors
    /// Never in practice (histogram bounds are constants).
    pub fn new(clock: Clock, seq_capacity: usize) -> anyhow::Result<Self> {
        let mut latency = Vec::with_capacity(SHARDS);
        for _ in 0..SHARDS {
            latency.push(Mutex::new(histogram()?));
        }
        Ok(Self {
            clock,
            latency,
            publish_latency: Mutex::new(histogram()?),
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            warmups: AtomicU64::new(0),
            last_frame_us: AtomicU64::new(0),
            per_seq: (0..seq_capacity).map(|_| AtomicU32::new(0)).collect(),
        })
    }

    /// Records an accepted publish that `recipients` sessions should receive, and how
    /// long the publish call took.
    pub fn accepted(&self, recipients: u64, took: Duration) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.expected.fetch_add(recipients, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        if let Ok(mut h) = self.publish_latency.lock() {
            h.saturating_record(us.max(1));
        }
    }

    /// How many sessions received message `seq` so far (0 if not tracked).
    pub fn deliveries_of(&self, seq: u64) -> u32 {
        usize::try_from(seq)
            .ok()
            .and_then(|i| self.per_seq.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Handles one text frame received by session `session`, whose highest id so far is
    /// `last_id`.
    pub fn on_frame(&self, session: usize, text: &str, last_id: &mut i64) {
        let now = self.clock.now_us();
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let (Some(id), Some(event)) = (frame.id, frame.event) else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if event == EVENT_WARMUP {
            self.warmups.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if event != EVENT_PUSH && event != EVENT_BROADCAST {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(marks) = frame
            .payload
            .and_then(|p| serde_json::from_str::<Marks>(p.get()).ok())
        else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if id <= *last_id {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last_id = id;
        self.received.fetch_add(1, Ordering::Relaxed);
        self.last_frame_us.fetch_max(now, Ordering::Relaxed);
        if let Some(count) = usize::try_from(marks.seq)
            .ok()
            .and_then(|i| self.per_seq.get(i))
        {
            count.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(shard) = self.latency.get(session % SHARDS) {
            if let Ok(mut h) = shard.lock() {
                h.saturating_record(now.saturating_sub(marks.t).max(1));
            }
        }
    }

    /// Push latency (payload stamp → frame parsed), merged over the shards.
    ///
    /// # Errors
    /// Never in practice (histogram bounds are constants).
    pub fn latency(&self) -> anyhow::Result<Percentiles> {
        let mut all = histogram()?;
        for shard in &self.latency {
            if let Ok(h) = shard.lock() {
                all.add(&*h)?;
            }
        }
        Ok(Percentiles::of(&all))
    }

    /// Publish call latency (request sent → 202 / bus acknowledgement).
    pub fn publish_latency(&self) -> Percentiles {
        self.publish_latency
            .lock()
            .map(|h| Percentiles::of(&h))
            .unwrap_or_default()
    }

    /// `expected - received`, never negative.
    pub fn lost(&self) -> u64 {
        self.expected
            .load(Ordering::Relaxed)
            .saturating_sub(self.received.load(Ordering::Relaxed))
    }
}

/// The part of a server frame the harness reads.
#[derive(Deserialize)]
struct Frame<'a> {
    id: Option<i64>,
    #[serde(borrow)]
    event: Option<&'a str>,
    #[serde(borrow)]
    payload: Option<&'a serde_json::value::RawValue>,
}

/// The marks a harness payload carries.
#[derive(Deserialize)]
struct Marks {
    /// Message sequence number within the step.
    seq: u64,
    /// When the message was due to be published, in clock microseconds.
    t: u64,
}

/// The JSON payload object of message `seq` stamped `t_us`, padded with `x`s to
/// `bytes` bytes (or as short as possible when `bytes` is smaller).
pub fn payload(seq: u64, t_us: u64, bytes: usize) -> String {
    let head = format!("{{\"seq\":{seq},\"t\":{t_us},\"pad\":\"");
    let tail = "\"}";
    let pad = bytes.saturating_sub(head.len() + tail.len());
    let mut out = String::with_capacity(head.len() + pad + tail.len());
    out.push_str(&head);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str(tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_requested_size_and_parse() {
        let p = payload(7, 123, 500);
        assert_eq!(p.len(), 500);
        let marks: Marks = serde_json::from_str(&p).unwrap();
        assert_eq!((marks.seq, marks.t), (7, 123));
    }

    #[test]
    fn a_repeated_id_counts_as_a_duplicate_not_a_delivery() {
        let tally = Tally::new(Clock::new(), 4).unwrap();
        let frame = format!(
            r#"{{"type":"notification","id":5,"event":"bench.push","payload":{},"created_at":"x"}}"#,
            payload(1, 0, 10)
        );
        let mut last = 0;
        tally.on_frame(0, &frame, &mut last);
        tally.on_frame(0, &frame, &mut last);
        assert_eq!(tally.received.load(Ordering::Relaxed), 1);
        assert_eq!(tally.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(tally.deliveries_of(1), 1);
    }

    #[test]
    fn other_events_are_foreign() {
        let tally = Tally::new(Clock::new(), 0).unwrap();
        let mut last = 0;
        tally.on_frame(0, r#"{"type":"pong"}"#, &mut last);
        tally.on_frame(
            0,
            r#"{"type":"notification","id":1,"event":"user.joined","payload":{"id":"u"},"created_at":"x"}"#,
            &mut last,
        );
        assert_eq!(tally.foreign.load(Ordering::Relaxed), 2);
        assert_eq!(last, 0);
    }
}
