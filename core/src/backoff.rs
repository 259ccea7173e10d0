//! How long to wait between attempts at an operation that failed for a transient reason
//! (the store or queue is unreachable or busy): exponential growth with jitter, capped per
//! wait, and given up once a total budget is spent. Pure arithmetic: the caller sleeps and
//! supplies the randomness.

use std::time::Duration;

/// A retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub first: Duration,
    /// No single wait is longer than this.
    pub max_wait: Duration,
    /// Stop retrying once this much time has passed since the first attempt.
    pub budget: Duration,
}

impl Default for Backoff {
    /// Waits of 0.5 s, 1 s, 2 s ... up to 20 s, for up to five minutes: long enough to ride
    /// out an emulator or endpoint restart, short enough that a dead store is reported.
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(500),
            max_wait: Duration::from_secs(20),
            budget: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// A policy that never retries.
    pub fn none() -> Self {
        Backoff {
            first: Duration::ZERO,
            max_wait: Duration::ZERO,
            budget: Duration::ZERO,
        }
    }

    /// The wait before attempt `failures + 1`, after `failures` failed attempts (≥ 1), or
    /// `None` when `elapsed` plus that wait would exceed the budget. `jitter` in `[0, 1)`
    /// spreads the wait over its upper half, so that runners that failed together do not
    /// all come back at the same instant.
    pub fn wait(&self, failures: u32, elapsed: Duration, jitter: f64) -> Option<Duration> {
        let exponent = failures.saturating_sub(1).min(31);
        let full = self
            .first
            .checked_mul(1u32 << exponent)
            .unwrap_or(self.max_wait)
            .min(self.max_wait);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let wait = full.mul_f64(0.5 + jitter / 2.0);
        if self.budget.is_zero() || elapsed + wait > self.budget {
            None
        } else {
            Some(wait)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy() -> Backoff {
        Backoff {
            first: Duration::from_millis(100),
            max_wait: Duration::from_secs(1),
            budget: Duration::from_secs(10),
        }
    }

    #[test]
    fn waits_double_until_the_cap() {
        let waits: Vec<_> = (1..=6)
            .map(|n| policy().wait(n, Duration::ZERO, 1.0).unwrap())
            .collect();
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_spreads_over_the_upper_half() {
        assert_eq!(
            policy().wait(1, Duration::ZERO, 0.0),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            policy().wait(1, Duration::ZERO, f64::NAN),
            Some(Duration::from_millis(50))
        );
    }

    #[test]
    fn gives_up_when_the_budget_is_spent() {
        assert!(policy()
            .wait(3, Duration::from_millis(9_700), 1.0)
            .is_none());
        assert!(policy()
            .wait(3, Duration::from_millis(9_700), 0.0)
            .is_some());
        assert!(Backoff::none().wait(1, Duration::ZERO, 0.5).is_none());
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        assert_eq!(
            policy().wait(u32::MAX, Duration::ZERO, 1.0),
            Some(Duration::from_secs(1))
        );
    }
}
