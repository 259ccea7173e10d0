//! The lease on a run: which runner works on it, for which attempt, until when. Claimed
//! with a conditional write and renewed while the run lives, so that two runners never
//! work the same run at once, and a run whose runner died can be taken over once its
//! lease has run out.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// `runs/<id>/lease.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub run_id: String,
    pub runner_id: String,
    pub attempt: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// What a runner may do about a run, given its current lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No lease, or an expired one, or our own: take it.
    Take,
    /// Another runner holds a live lease: leave the run alone.
    HeldBy {
        runner_id: String,
        expires_at: OffsetDateTime,
    },
}

impl Lease {
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        now < self.expires_at
    }

    /// Whether `runner_id` may take the run now.
    pub fn decide(current: Option<&Lease>, runner_id: &str, now: OffsetDateTime) -> LeaseDecision {
        match current {
            Some(lease) if lease.is_live(now) && lease.runner_id != runner_id => {
                LeaseDecision::HeldBy {
                    runner_id: lease.runner_id.clone(),
                    expires_at: lease.expires_at,
                }
            }
            _ => LeaseDecision::Take,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn lease(runner: &str, until: OffsetDateTime) -> Lease {
        Lease {
            run_id: "run-aaaa-1".into(),
            runner_id: runner.into(),
            attempt: 1,
            expires_at: until,
        }
    }

    #[test]
    fn a_live_lease_of_another_runner_keeps_others_out() {
        let now = datetime!(2026-11-24 12:00 UTC);
        let live = lease("a", datetime!(2026-11-24 12:01 UTC));
        let dead = lease("a", datetime!(2026-11-24 11:59 UTC));
        assert!(matches!(
            Lease::decide(Some(&live), "b", now),
            LeaseDecision::HeldBy { .. }
        ));
        assert_eq!(Lease::decide(Some(&live), "a", now), LeaseDecision::Take);
        assert_eq!(Lease::decide(Some(&dead), "b", now), LeaseDecision::Take);
        assert_eq!(Lease::decide(None, "b", now), LeaseDecision::Take);
    }
}
