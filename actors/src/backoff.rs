//! Exponential backoff with full jitter (`sleep = random(0, min(cap, base·2^n))`), the
//! variant that spreads retries best (AWS architecture blog, "Exponential Backoff and
//! Jitter").

use std::time::Duration;

use rand::Rng;

/// A backoff policy. `attempt` counts from 0 for the first retry.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay scale of the first retry.
    pub base: Duration,
    /// Upper bound of any delay.
    pub cap: Duration,
}

impl Backoff {
    /// The ceiling of the delay before retry `attempt`: `min(cap, base·2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A delay drawn uniformly from `[0, ceiling(attempt)]` with `rng`.
    pub fn delay_with(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rng.gen_range(0..=ceiling))
    }

    /// A delay drawn with the thread's RNG.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::thread_rng())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_stay_within_the_full_jitter_range_and_respect_the_cap() {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 0..40 {
            let ceiling = Duration::from_secs((1u64 << attempt.min(20)).min(300));
            assert_eq!(backoff.ceiling(attempt), ceiling);
            for _ in 0..50 {
                assert!(backoff.delay_with(attempt, &mut rng) <= ceiling);
            }
        }
    }
}
