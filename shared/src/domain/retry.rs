//! Retry policy: a bounded number of attempts, exponential backoff with full jitter, and the
//! provider's `Retry-After` honoured as a floor.

use std::time::Duration;

/// How often and how patiently a failing job is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff ceiling of the first retry.
    pub base: Duration,
    /// No wait is longer than this.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base: Duration::from_secs(2),
            cap: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// Whether another attempt follows attempt number `attempt` (1-based).
    pub fn allows_another(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The wait after failed attempt `attempt`: uniform in [0, min(cap, base·2^(attempt-1))],
    /// but never shorter than `retry_after` (itself capped at `cap`).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.cap);
        let jitter = ceiling.mul_f64(rand::random::<f64>());
        jitter.max(retry_after.unwrap_or_default().min(self.cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_the_exponential_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        for _ in 0..200 {
            assert!(policy.delay(1, None) <= Duration::from_millis(100));
            assert!(policy.delay(3, None) <= Duration::from_millis(400));
            assert!(policy.delay(30, None) <= Duration::from_secs(1));
        }
    }

    #[test]
    fn retry_after_is_a_floor_capped_by_the_policy() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(10),
            cap: Duration::from_secs(60),
        };
        assert!(policy.delay(1, Some(Duration::from_secs(7))) >= Duration::from_secs(7));
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn attempts_are_bounded() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(policy.allows_another(2));
        assert!(!policy.allows_another(3));
    }
}
