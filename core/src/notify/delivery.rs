//! What run.json records about notifications (`notifications: [...]`), and the rules that
//! keep delivery to one per target and final status across runners: a target's event is
//! done once delivered or once its attempts are used up; while a runner delivers it holds
//! a claim (until a deadline it renews per attempt), so a second runner that finds the run
//! final at the same time leaves the event alone; a runner that died mid-delivery leaves
//! a claim that runs out, and the next runner to look continues from the attempts
//! recorded. A receiver may still get one event twice (the runner died after the
//! receiver answered but before run.json recorded it): `Specrun-Event-Id` is for that.

use crate::state::Timestamp;
use serde::{Deserialize, Serialize};

/// One target's deliveries of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRecord {
    /// `webhook` (the deployment's) or `callback` (the request's).
    pub target: String,
    /// The URL with its query values masked; never the secret.
    pub url: String,
    pub event_id: String,
    pub attempts: Vec<DeliveryAttempt>,
    pub delivered: bool,
    /// The runner delivering now, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<DeliveryClaim>,
}

/// One try: the receiver's HTTP status, or why there was none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    #[serde(with = "time::serde::rfc3339")]
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl DeliveryAttempt {
    /// A 2xx answer delivers; anything else is tried again.
    pub fn delivered(&self) -> bool {
        self.status_code
            .is_some_and(|code| (200..300).contains(&code))
    }
}

/// Who is delivering, and until when the claim holds without renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryClaim {
    pub runner_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub until: Timestamp,
}

/// What a runner should do about one target's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextDelivery {
    /// Delivered, or every attempt used: nothing more.
    Done,
    /// Another runner is delivering it now.
    Claimed,
    /// Try it: this many attempts were made before.
    Attempt(u32),
}

/// Where `target`'s delivery of `event_id` stands for `runner_id` at `now`, allowing
/// `max_attempts` in all.
pub fn next_delivery(
    records: &[NotificationRecord],
    target: &str,
    event_id: &str,
    runner_id: &str,
    now: Timestamp,
    max_attempts: u32,
) -> NextDelivery {
    let Some(record) = find(records, target, event_id) else {
        return NextDelivery::Attempt(0);
    };
    let made = u32::try_from(record.attempts.len()).unwrap_or(u32::MAX);
    if record.delivered || made >= max_attempts {
        return NextDelivery::Done;
    }
    match &record.claim {
        Some(claim) if claim.runner_id != runner_id && claim.until > now => NextDelivery::Claimed,
        _ => NextDelivery::Attempt(made),
    }
}

/// Takes (or renews) the claim on `target`'s delivery of `event_id`, creating its record.
pub fn claim(
    records: &mut Vec<NotificationRecord>,
    target: &str,
    masked_url: &str,
    event_id: &str,
    claim: DeliveryClaim,
) {
    let index = match records
        .iter()
        .position(|r| r.target == target && r.event_id == event_id)
    {
        Some(index) => index,
        None => {
            records.push(NotificationRecord {
                target: target.to_owned(),
                url: masked_url.to_owned(),
                event_id: event_id.to_owned(),
                attempts: Vec::new(),
                delivered: false,
                claim: None,
            });
            records.len() - 1
        }
    };
    records[index].claim = Some(claim);
}

/// Records an attempt; the claim goes when the event is delivered or `release` is set.
pub fn record_attempt(
    records: &mut [NotificationRecord],
    target: &str,
    event_id: &str,
    attempt: DeliveryAttempt,
    release: bool,
) {
    if let Some(record) = records
        .iter_mut()
        .find(|r| r.target == target && r.event_id == event_id)
    {
        record.delivered |= attempt.delivered();
        record.attempts.push(attempt);
        if record.delivered || release {
            record.claim = None;
        }
    }
}

fn find<'r>(
    records: &'r [NotificationRecord],
    target: &str,
    event_id: &str,
) -> Option<&'r NotificationRecord> {
    records
        .iter()
        .find(|r| r.target == target && r.event_id == event_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use time::Duration;

    const NOW: Timestamp = datetime!(2026-12-03 12:00 UTC);

    fn attempt(code: Option<u16>) -> DeliveryAttempt {
        DeliveryAttempt {
            at: NOW,
            runner_id: Some("a".into()),
            status_code: code,
            error: code.is_none().then(|| "connection refused".to_owned()),
        }
    }

    fn claimed_by(runner: &str, until: Timestamp) -> Vec<NotificationRecord> {
        let mut records = Vec::new();
        claim(
            &mut records,
            "webhook",
            "https://h/x",
            "e1",
            DeliveryClaim {
                runner_id: runner.into(),
                until,
            },
        );
        records
    }

    #[test]
    fn a_new_event_is_attempted_and_a_delivered_one_never_again() {
        assert_eq!(
            next_delivery(&[], "webhook", "e1", "a", NOW, 5),
            NextDelivery::Attempt(0)
        );
        let mut records = claimed_by("a", NOW + Duration::seconds(30));
        record_attempt(&mut records, "webhook", "e1", attempt(Some(500)), false);
        assert_eq!(
            next_delivery(&records, "webhook", "e1", "a", NOW, 5),
            NextDelivery::Attempt(1)
        );
        record_attempt(&mut records, "webhook", "e1", attempt(Some(204)), false);
        assert!(records[0].delivered && records[0].claim.is_none());
        for runner in ["a", "b"] {
            assert_eq!(
                next_delivery(&records, "webhook", "e1", runner, NOW, 5),
                NextDelivery::Done
            );
        }
        // Another event or target is its own delivery.
        assert_eq!(
            next_delivery(&records, "callback", "e1", "a", NOW, 5),
            NextDelivery::Attempt(0)
        );
        assert_eq!(
            next_delivery(&records, "webhook", "e2", "a", NOW, 5),
            NextDelivery::Attempt(0)
        );
    }

    #[test]
    fn another_runners_live_claim_is_left_alone_and_a_lapsed_one_taken_over() {
        let records = claimed_by("a", NOW + Duration::seconds(30));
        assert_eq!(
            next_delivery(&records, "webhook", "e1", "b", NOW, 5),
            NextDelivery::Claimed
        );
        assert_eq!(
            next_delivery(
                &records,
                "webhook",
                "e1",
                "b",
                NOW + Duration::seconds(31),
                5
            ),
            NextDelivery::Attempt(0)
        );
    }

    #[test]
    fn used_up_attempts_end_undelivered_with_every_attempt_kept() {
        let mut records = claimed_by("a", NOW + Duration::seconds(30));
        for _ in 0..3 {
            record_attempt(&mut records, "webhook", "e1", attempt(None), false);
        }
        assert_eq!(
            next_delivery(&records, "webhook", "e1", "a", NOW, 3),
            NextDelivery::Done
        );
        assert!(!records[0].delivered);
        assert_eq!(records[0].attempts.len(), 3);
    }
}
