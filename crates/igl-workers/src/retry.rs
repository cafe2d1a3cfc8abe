use std::time::Duration;

use rand::Rng;

/// How often and how patiently a failed job is retried (ARCHITECTURE §6, invariant 3).
///
/// `max_attempts` counts handler runs: a job is handled at most `max_attempts` times; when
/// the attempt numbered `max_attempts` fails, the job goes to the dead-letter store. Between
/// attempts the job waits [`RetryPolicy::backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many times a job may be handled (at least 1).
    pub max_attempts: u32,
    /// The delay before the first retry (before jitter).
    pub base_delay: Duration,
    /// The largest delay between two attempts (before jitter, which only shortens it).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 10 attempts, 1 s doubling up to 5 min: a job that keeps failing is dead-lettered
    /// after roughly 10 to 20 minutes.
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The delay before retrying a job whose attempt number `attempt` (1-based) failed.
    ///
    /// Exponential with **equal jitter**: the ceiling is `base_delay · 2^(attempt-1)`,
    /// capped at `max_delay`; the delay is half of that ceiling plus a uniformly random
    /// amount up to the other half. Equal jitter (rather than full jitter) keeps a floor of
    /// half the ceiling, so a retry never comes back almost immediately, while still
    /// spreading out jobs that failed together (for example when a channel went down).
    ///
    /// Never overflows: attempt 0 is treated as 1, and any ceiling that would not fit in a
    /// [`Duration`] is `max_delay`.
    pub fn backoff<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let ceiling = self.ceiling(attempt);
        let random_half = ceiling / 2;
        let fixed_half = ceiling - random_half;
        // Delays are far below 584 years, the range of u64 nanoseconds; clamp just in case.
        let random_nanos = u64::try_from(random_half.as_nanos()).unwrap_or(u64::MAX);
        fixed_half + Duration::from_nanos(rng.random_range(0..=random_nanos))
    }

    /// The delay ceiling for `attempt`: `base_delay · 2^(attempt-1)` capped at `max_delay`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.max(1) - 1;
        2u32.checked_pow(exponent)
            .and_then(|factor| self.base_delay.checked_mul(factor))
            .map_or(self.max_delay, |delay| delay.min(self.max_delay))
    }

    /// Checks the policy: at least one attempt, and `base_delay <= max_delay`.
    ///
    /// # Errors
    ///
    /// A lowercase description of the first broken rule.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1".to_owned());
        }
        if self.base_delay > self.max_delay {
            return Err(format!(
                "retry.base_delay ({:?}) must not exceed retry.max_delay ({:?})",
                self.base_delay, self.max_delay
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
        }
    }

    #[test]
    fn ceiling_doubles_from_base_and_is_capped() {
        let policy = policy();
        assert_eq!(policy.ceiling(1), Duration::from_millis(100));
        assert_eq!(policy.ceiling(2), Duration::from_millis(200));
        assert_eq!(policy.ceiling(3), Duration::from_millis(400));
        assert_eq!(policy.ceiling(7), Duration::from_millis(6_400));
        assert_eq!(policy.ceiling(8), Duration::from_secs(10));
        assert_eq!(policy.ceiling(40), Duration::from_secs(10));
    }

    #[test]
    fn attempt_zero_is_treated_as_the_first() {
        assert_eq!(policy().ceiling(0), policy().ceiling(1));
    }

    #[test]
    fn backoff_stays_between_half_the_ceiling_and_the_ceiling() {
        let policy = policy();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..200 {
            let ceiling = policy.ceiling(attempt);
            for _ in 0..50 {
                let delay = policy.backoff(attempt, &mut rng);
                assert!(
                    delay <= ceiling,
                    "attempt {attempt}: {delay:?} > {ceiling:?}"
                );
                assert!(
                    delay >= ceiling / 2,
                    "attempt {attempt}: {delay:?} < half {ceiling:?}"
                );
            }
        }
    }

    #[test]
    fn backoff_is_jittered() {
        let policy = policy();
        let mut rng = StdRng::seed_from_u64(11);
        let delays: std::collections::HashSet<Duration> =
            (0..20).map(|_| policy.backoff(6, &mut rng)).collect();
        assert!(delays.len() > 1, "twenty draws gave one value: {delays:?}");
    }

    #[test]
    fn ceilings_never_decrease_and_never_exceed_the_cap() {
        let policy = policy();
        let mut previous = Duration::ZERO;
        for attempt in 0..=1_000 {
            let ceiling = policy.ceiling(attempt);
            assert!(ceiling >= previous, "attempt {attempt} went down");
            assert!(ceiling <= policy.max_delay);
            previous = ceiling;
        }
    }

    #[test]
    fn no_overflow_for_huge_attempts_or_delays() {
        let mut rng = StdRng::seed_from_u64(3);
        let policy = policy();
        for attempt in [31, 32, 33, 64, 1_000, u32::MAX] {
            let delay = policy.backoff(attempt, &mut rng);
            assert!(delay <= policy.max_delay && delay >= policy.max_delay / 2);
        }
        let unbounded = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_secs(u64::MAX / 4),
            max_delay: Duration::MAX,
        };
        assert_eq!(unbounded.ceiling(1_000), Duration::MAX);
        assert!(unbounded.backoff(1_000, &mut rng) >= Duration::MAX / 2);
    }

    #[test]
    fn zero_delays_give_zero_backoff() {
        let policy = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        };
        assert_eq!(policy.backoff(1_000, &mut rand::rng()), Duration::ZERO);
    }

    #[test]
    fn validation() {
        assert!(RetryPolicy::default().validate().is_ok());
        assert!(
            RetryPolicy {
                max_attempts: 0,
                ..policy()
            }
            .validate()
            .is_err()
        );
        let inverted = RetryPolicy {
            base_delay: Duration::from_secs(11),
            ..policy()
        };
        assert!(inverted.validate().unwrap_err().contains("base_delay"));
    }
}
