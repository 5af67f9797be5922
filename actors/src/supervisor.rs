//! Supervision policy. actix's `Supervisor` restarts an actor as soon as it stops; this
//! adds what operators need on top: a growing, jittered delay between restarts, and a
//! restart budget (default 5 restarts in 30 s). An actor over budget is `failed` —
//! `/readyz` turns 503 and names it — and is tried again only after a cool-down, so a
//! crash loop neither burns CPU nor hides behind a green probe.
//!
//! Every supervised actor calls [`crate::health::ActorStats::restarted`] from
//! `Supervised::restarting` and waits [`crate::health::ActorStats::restart_delay`]
//! before it resumes its work in `started`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;

/// How restarts are paced and budgeted.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Restarts allowed within `window` before the actor counts as failed.
    pub max_restarts: usize,
    /// The sliding window of the budget.
    pub window: Duration,
    /// Delay before the n-th restart within the window (full jitter).
    pub backoff: Backoff,
    /// How long a failed actor waits before it is tried again.
    pub cooldown: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window: Duration::from_secs(30),
            backoff: Backoff {
                base: Duration::from_millis(100),
                cap: Duration::from_secs(10),
            },
            cooldown: Duration::from_secs(60),
        }
    }
}

/// What the supervisor does about one restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart after the delay.
    Restart(Duration),
    /// Over budget: failed; try again after the cool-down.
    Failed(Duration),
}

/// Restart times within the window of one actor.
#[derive(Debug, Default)]
pub struct RestartHistory {
    recent: VecDeque<Instant>,
}

impl RestartHistory {
    /// Records a restart at `now` and decides about it, drawing jitter with `rng`.
    pub fn record(
        &mut self,
        policy: &RestartPolicy,
        now: Instant,
        rng: &mut impl rand::Rng,
    ) -> RestartDecision {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() > policy.max_restarts {
            // Start the next window afresh once the cool-down is over.
            self.recent.clear();
            RestartDecision::Failed(policy.cooldown)
        } else {
            let attempt = self.recent.len().saturating_sub(1) as u32;
            RestartDecision::Restart(policy.backoff.delay_with(attempt, rng))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_sixth_restart_within_the_window_fails_the_actor() {
        let policy = RestartPolicy::default();
        let mut history = RestartHistory::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let start = Instant::now();
        for i in 0..5u32 {
            let now = start + Duration::from_secs(u64::from(i));
            match history.record(&policy, now, &mut rng) {
                RestartDecision::Restart(delay) => {
                    assert!(delay <= policy.backoff.ceiling(i), "{delay:?} at {i}")
                }
                other => panic!("restart {i} decided {other:?}"),
            }
        }
        assert_eq!(
            history.record(&policy, start + Duration::from_secs(5), &mut rng),
            RestartDecision::Failed(policy.cooldown)
        );
    }

    #[test]
    fn restarts_spread_beyond_the_window_stay_within_budget() {
        let policy = RestartPolicy::default();
        let mut history = RestartHistory::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let start = Instant::now();
        for i in 0..20u64 {
            let now = start + Duration::from_secs(i * 10);
            assert!(matches!(
                history.record(&policy, now, &mut rng),
                RestartDecision::Restart(_)
            ));
        }
    }
}
