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
    /// Random per claim: who holds the lease is decided by this, not by the runner's
    /// name, so two processes started with the same `--runner-id` never both hold it.
    #[serde(default)]
    pub token: String,
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

    /// Whether a runner may take the run now: only when no live lease exists. A runner
    /// never re-takes a live lease, not even one with its own name (a second delivery
    /// inside one process waits on its run lock instead).
    pub fn decide(current: Option<&Lease>, now: OffsetDateTime) -> LeaseDecision {
        match current {
            Some(lease) if lease.is_live(now) => LeaseDecision::HeldBy {
                runner_id: lease.runner_id.clone(),
                expires_at: lease.expires_at,
            },
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
            token: format!("{runner}-token"),
            attempt: 1,
            expires_at: until,
        }
    }

    #[test]
    fn a_live_lease_keeps_everyone_else_out_even_under_the_same_name() {
        let now = datetime!(2026-11-24 12:00 UTC);
        let live = lease("a", datetime!(2026-11-24 12:01 UTC));
        let dead = lease("a", datetime!(2026-11-24 11:59 UTC));
        assert!(matches!(
            Lease::decide(Some(&live), now),
            LeaseDecision::HeldBy { .. }
        ));
        assert_eq!(Lease::decide(Some(&dead), now), LeaseDecision::Take);
        assert_eq!(Lease::decide(None, now), LeaseDecision::Take);
        // An old lease without a token still reads.
        let old: Lease = serde_json::from_str(
            r#"{"run_id":"r","runner_id":"a","attempt":1,"expires_at":"2026-11-24T12:01:00Z"}"#,
        )
        .unwrap_or_else(|_| dead.clone());
        assert_eq!(old.token, "");
    }
}
