//! A circuit breaker with resilience4j semantics, for calls to a dependency that can
//! fail as a whole (the mail relay). Count-based sliding window: once at least
//! `min_calls` of the last `window` calls are recorded, it opens when failures or slow
//! calls reach their rate threshold. Open, it refuses every call for `open_for`, then
//! lets `half_open_calls` trial calls through: all succeed → closed; any fails or is
//! slow → open again. Time is passed in, so the state machine is tested without
//! sleeping.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Breaker tuning (defaults as resilience4j's, with a 10 s slow-call threshold).
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Calls in the sliding window.
    pub window: usize,
    /// Calls recorded before any rate is computed.
    pub min_calls: usize,
    /// Failure rate (0–1) that opens the breaker.
    pub failure_rate: f64,
    /// Slow-call rate (0–1) that opens the breaker.
    pub slow_rate: f64,
    /// A call slower than this counts as slow.
    pub slow_call: Duration,
    /// How long the breaker stays open.
    pub open_for: Duration,
    /// Trial calls in the half-open state.
    pub half_open_calls: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: 20,
            min_calls: 10,
            failure_rate: 0.5,
            slow_rate: 0.5,
            slow_call: Duration::from_secs(10),
            open_for: Duration::from_secs(30),
            half_open_calls: 3,
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; outcomes are recorded.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// A few trial calls decide between closed and open.
    HalfOpen,
}

impl BreakerState {
    /// The name used in logs, health details and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The `herald_breaker_state` gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The breaker refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

/// A state change, for logging and counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: BreakerState,
    /// After.
    pub to: BreakerState,
}

/// One outcome in the window.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    failed: bool,
    slow: bool,
}

/// The breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
    window: VecDeque<Outcome>,
    opened_at: Option<Instant>,
    trials_left: u32,
    trials_passed: u32,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            window: VecDeque::with_capacity(config.window),
            opened_at: None,
            trials_left: 0,
            trials_passed: 0,
        }
    }

    /// The state (an open breaker whose period ended still reads open until the next
    /// call asks for a permit).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Asks to make a call at `now`. `Ok(transition)` when it may go ahead (with the
    /// move to half-open, if this call caused it).
    ///
    /// # Errors
    /// [`Refused`] when the breaker is open, or half-open with every trial call
    /// already given out.
    pub fn try_acquire(&mut self, now: Instant) -> Result<Option<Transition>, Refused> {
        match self.state {
            BreakerState::Closed => Ok(None),
            BreakerState::Open => {
                let opened = self.opened_at.unwrap_or(now);
                if now.duration_since(opened) < self.config.open_for {
                    return Err(Refused);
                }
                let transition = self.move_to(BreakerState::HalfOpen, now);
                self.trials_left = self.config.half_open_calls.saturating_sub(1);
                self.trials_passed = 0;
                Ok(Some(transition))
            }
            BreakerState::HalfOpen if self.trials_left > 0 => {
                self.trials_left -= 1;
                Ok(None)
            }
            BreakerState::HalfOpen => Err(Refused),
        }
    }

    /// Gives back a permit whose call said nothing about the guarded service (it never
    /// reached it), so a half-open breaker still gets all its trial calls.
    pub fn release(&mut self) {
        if self.state == BreakerState::HalfOpen
            && self.trials_left + self.trials_passed < self.config.half_open_calls
        {
            self.trials_left += 1;
        }
    }

    /// Records the outcome of a permitted call that took `duration`.
    pub fn record(
        &mut self,
        now: Instant,
        success: bool,
        duration: Duration,
    ) -> Option<Transition> {
        let slow = duration > self.config.slow_call;
        match self.state {
            BreakerState::Closed => {
                if self.window.len() == self.config.window {
                    self.window.pop_front();
                }
                self.window.push_back(Outcome {
                    failed: !success,
                    slow,
                });
                if self.window.len() < self.config.min_calls.max(1) {
                    return None;
                }
                let n = self.window.len() as f64;
                let failures = self.window.iter().filter(|o| o.failed).count() as f64;
                let slows = self.window.iter().filter(|o| o.slow).count() as f64;
                (failures / n >= self.config.failure_rate || slows / n >= self.config.slow_rate)
                    .then(|| self.move_to(BreakerState::Open, now))
            }
            BreakerState::HalfOpen => {
                if !success || slow {
                    Some(self.move_to(BreakerState::Open, now))
                } else {
                    self.trials_passed += 1;
                    (self.trials_passed >= self.config.half_open_calls)
                        .then(|| self.move_to(BreakerState::Closed, now))
                }
            }
            // A call that was already running when the breaker opened.
            BreakerState::Open => None,
        }
    }

    fn move_to(&mut self, to: BreakerState, now: Instant) -> Transition {
        let from = self.state;
        self.state = to;
        match to {
            BreakerState::Open => self.opened_at = Some(now),
            BreakerState::Closed => self.window.clear(),
            BreakerState::HalfOpen => {}
        }
        Transition { from, to }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_millis(5);

    fn breaker() -> (CircuitBreaker, Instant) {
        (
            CircuitBreaker::new(BreakerConfig::default()),
            Instant::now(),
        )
    }

    #[test]
    fn a_released_trial_permit_can_be_used_again() {
        let (mut b, t) = breaker();
        for _ in 0..10 {
            b.record(t, false, FAST);
        }
        let later = t + Duration::from_secs(31);
        assert_eq!(
            b.try_acquire(later).unwrap().map(|tr| tr.to),
            Some(BreakerState::HalfOpen)
        );
        b.release();
        for _ in 0..3 {
            assert!(b.try_acquire(later).is_ok());
        }
        assert!(b.try_acquire(later).is_err(), "only three trials in flight");
        b.release();
        b.release();
        b.release();
        b.release();
        for _ in 0..3 {
            assert!(b.try_acquire(later).is_ok());
        }
        assert!(b.try_acquire(later).is_err(), "releases never add trials");
    }

    #[test]
    fn it_needs_the_minimum_calls_before_opening_at_half_failures() {
        let (mut b, t) = breaker();
        for _ in 0..9 {
            assert!(b.try_acquire(t).is_ok());
            assert_eq!(b.record(t, false, FAST), None, "fewer than 10 calls");
        }
        let opened = b.record(t, false, FAST).unwrap();
        assert_eq!(opened.to, BreakerState::Open);
        assert!(b.try_acquire(t + Duration::from_secs(29)).is_err());
    }

    #[test]
    fn below_half_failures_it_stays_closed_and_the_window_slides() {
        let (mut b, t) = breaker();
        for i in 0..100 {
            // Every third call fails: 33 %.
            assert_eq!(b.record(t, i % 3 != 0, FAST), None);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        // 20 successes push the failures out of the window; then 10 failures are
        // exactly half of the last 20.
        for _ in 0..20 {
            b.record(t, true, FAST);
        }
        for i in 0..10 {
            let t2 = b.record(t, false, FAST);
            assert_eq!(t2.is_some(), i == 9);
        }
    }

    #[test]
    fn half_slow_calls_open_it_even_when_they_succeed() {
        let (mut b, t) = breaker();
        for i in 0..10 {
            let slow = Duration::from_secs(if i % 2 == 0 { 11 } else { 0 });
            let transition = b.record(t, true, slow);
            assert_eq!(transition.is_some(), i == 9);
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn after_the_open_period_three_trials_close_it_or_one_failure_reopens_it() {
        let (mut b, t) = breaker();
        for _ in 0..10 {
            b.record(t, false, FAST);
        }
        let later = t + Duration::from_secs(30);
        assert_eq!(
            b.try_acquire(later).unwrap().unwrap().to,
            BreakerState::HalfOpen
        );
        assert!(b.try_acquire(later).is_ok());
        assert!(b.try_acquire(later).is_ok());
        assert!(b.try_acquire(later).is_err(), "only three trial calls");
        assert_eq!(b.record(later, true, FAST), None);
        assert_eq!(b.record(later, true, FAST), None);
        assert_eq!(
            b.record(later, true, FAST).unwrap().to,
            BreakerState::Closed
        );
        assert!(b.try_acquire(later).is_ok());

        for _ in 0..10 {
            b.record(later, false, FAST);
        }
        let again = later + Duration::from_secs(30);
        assert!(b.try_acquire(again).is_ok());
        assert_eq!(b.record(again, false, FAST).unwrap().to, BreakerState::Open);
        assert!(b.try_acquire(again + Duration::from_secs(29)).is_err());
        assert!(b.try_acquire(again + Duration::from_secs(30)).is_ok());
    }
}
