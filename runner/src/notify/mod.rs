//! Delivering a finished run's event to the deployment's webhook and the request's
//! callback, each attempt recorded in run.json (`core::notify::delivery` decides what is
//! due). The worker calls [`Notifier::deliver`] once a run is final and before its queue
//! message goes, so a runner that dies mid-delivery leaves the message, and with it the
//! delivery, to the next runner; a delivered event is never sent again to the same target.

mod sender;

pub use sender::{EventSender, HttpSender};

use crate::config::NotifyConfig;
use specrun_core::keys::RunId;
use specrun_core::notify::delivery::{self, DeliveryAttempt, DeliveryClaim, NextDelivery};
use specrun_core::notify::signature::{self, EVENT_ID_HEADER, SIGNATURE_HEADER};
use specrun_core::notify::{NotifyUrl, RunEvent};
use specrun_core::ports::{BlobStore, StoreError};
use specrun_core::state::RunRecord;
use specrun_store::runs::{self, now};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A claim outlives one attempt (send time limit) by this much.
const CLAIM_MARGIN: Duration = Duration::from_secs(30);
/// Conditional writes of run.json tried this often before a delivery step gives up.
const WRITE_TRIES: u32 = 8;

/// One place an event goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// `webhook` or `callback`, as run.json records it.
    pub name: &'static str,
    pub url: NotifyUrl,
}

/// Sends final-status events, signed with the deployment's secret.
pub struct Notifier {
    config: NotifyConfig,
    runner_id: String,
    sender: Arc<dyn EventSender>,
}

impl Notifier {
    /// A notifier when a secret is configured (nothing is sent unsigned).
    pub fn from_config(config: &NotifyConfig, runner_id: &str) -> Option<Self> {
        config.secret.as_ref()?;
        match HttpSender::new(config.timeout) {
            Ok(sender) => Some(Self::with_sender(config, runner_id, Arc::new(sender))),
            Err(e) => {
                tracing::error!(error = %e, "notifications are off");
                None
            }
        }
    }

    pub fn with_sender(
        config: &NotifyConfig,
        runner_id: &str,
        sender: Arc<dyn EventSender>,
    ) -> Self {
        Notifier {
            config: config.clone(),
            runner_id: runner_id.to_owned(),
            sender,
        }
    }

    /// Where a run's events go: the webhook, and the request's callback when this
    /// runner's allow-list still takes it (checked again: the request was checked by the
    /// submitter, whose list may differ).
    pub fn targets(&self, run_id: &RunId, callback: Option<&str>) -> Vec<Target> {
        let mut targets = Vec::new();
        if let Some(url) = &self.config.webhook {
            targets.push(Target {
                name: "webhook",
                url: url.clone(),
            });
        }
        if let Some(text) = callback {
            match NotifyUrl::callback(text, &self.config.callbacks) {
                Ok(url) => targets.push(Target {
                    name: "callback",
                    url,
                }),
                Err(e) => {
                    tracing::warn!(%run_id, reason = %e, "the run's callback_url is not allowed by this runner's SPECRUN_CALLBACK_HOSTS; not sending to it")
                }
            }
        }
        targets
    }

    /// Delivers the run's final-status event to each target that has not had it.
    pub async fn deliver(&self, store: &dyn BlobStore, run_id: &RunId, targets: &[Target]) {
        for target in targets {
            if let Err(e) = self.deliver_to(store, run_id, target).await {
                tracing::warn!(%run_id, target = target.name, error = %e, "could not record a notification; the next runner to see the run tries again");
            }
        }
    }

    async fn deliver_to(
        &self,
        store: &dyn BlobStore,
        run_id: &RunId,
        target: &Target,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let masked = target.url.masked();
        loop {
            // Claim the next attempt, unless it is done or another runner is at it.
            let claimed = update_run(store, run_id, |record| {
                let event = RunEvent::for_run(record)?;
                let next = delivery::next_delivery(
                    &record.notifications,
                    target.name,
                    &event.event_id,
                    &self.runner_id,
                    now(),
                    self.config.max_attempts,
                );
                let NextDelivery::Attempt(made) = next else {
                    return None;
                };
                let until = now() + self.config.timeout + CLAIM_MARGIN;
                delivery::claim(
                    &mut record.notifications,
                    target.name,
                    &masked,
                    &event.event_id,
                    DeliveryClaim {
                        runner_id: self.runner_id.clone(),
                        until,
                    },
                );
                Some((event, made))
            })
            .await?;
            let Some((event, made)) = claimed else {
                return Ok(());
            };
            let attempt = self.send(target, &event).await;
            let failures = made.saturating_add(1);
            let wait = match attempt.delivered() || failures >= self.config.max_attempts {
                true => None,
                false => self
                    .config
                    .backoff
                    .wait(failures, started.elapsed(), jitter()),
            };
            match &attempt.status_code {
                Some(code) => {
                    tracing::info!(%run_id, target = target.name, url = %masked, event_id = %event.event_id, status_code = code, "notification attempt")
                }
                None => {
                    tracing::warn!(%run_id, target = target.name, url = %masked, event_id = %event.event_id, error = attempt.error.as_deref().unwrap_or(""), "notification attempt failed")
                }
            }
            update_run(store, run_id, |record| {
                delivery::record_attempt(
                    &mut record.notifications,
                    target.name,
                    &event.event_id,
                    attempt.clone(),
                    wait.is_none(),
                );
                Some(())
            })
            .await?;
            match wait {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return Ok(()),
            }
        }
    }

    /// One signed POST.
    async fn send(&self, target: &Target, event: &RunEvent) -> DeliveryAttempt {
        let body = event.to_body();
        let at = now();
        let secret = self
            .config
            .secret
            .as_ref()
            .map(|s| s.expose().as_bytes())
            .unwrap_or_default();
        let headers = [
            (
                SIGNATURE_HEADER,
                signature::header_value(secret, at.unix_timestamp(), &body),
            ),
            (EVENT_ID_HEADER, event.event_id.clone()),
        ];
        let result = self.sender.post(&target.url, &headers, body).await;
        DeliveryAttempt {
            at,
            runner_id: Some(self.runner_id.clone()),
            status_code: result.as_ref().ok().copied(),
            error: result.err(),
        }
    }
}

/// Applies `change` to the stored run and writes it conditionally, reading again when
/// another writer came first; `change` returning `None` writes nothing.
async fn update_run<T>(
    store: &dyn BlobStore,
    run_id: &RunId,
    mut change: impl FnMut(&mut RunRecord) -> Option<T>,
) -> Result<Option<T>, StoreError> {
    for _ in 0..WRITE_TRIES {
        let Some((mut record, version)) = runs::load_run_versioned(store, run_id).await? else {
            return Ok(None);
        };
        let Some(made) = change(&mut record) else {
            return Ok(None);
        };
        match runs::save_run_fenced(store, &record, &version).await {
            Ok(_) => return Ok(Some(made)),
            Err(StoreError::PreconditionFailed(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::PreconditionFailed(format!(
        "run {run_id} kept changing while its notification was recorded"
    )))
}

/// A number in `[0, 1)` to spread retries, from the clock's nanoseconds.
fn jitter() -> f64 {
    f64::from(now().nanosecond() % 1000) / 1000.0
}
