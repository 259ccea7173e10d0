//! The stall watchdog of an agent phase: an agent that prints nothing and calls no model
//! for the configured time is stuck (a hung tool, a dead connection); the phase fails
//! with `phase_stalled` instead of waiting for the phase's time limit.

use async_trait::async_trait;
use specrun_gateway::ModelGateway;
use specrun_sandbox::{OutputSink, Stream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When the agent last printed something.
pub(super) struct Activity(Mutex<Instant>);

impl Activity {
    pub(super) fn new() -> Self {
        Activity(Mutex::new(Instant::now()))
    }

    fn touch(&self) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    fn last(&self) -> Instant {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An output sink that notes each write as activity.
pub(super) struct Watched<'a> {
    pub inner: &'a mut dyn OutputSink,
    pub activity: &'a Activity,
}

#[async_trait]
impl OutputSink for Watched<'_> {
    async fn write(&mut self, stream: Stream, bytes: &[u8]) -> std::io::Result<()> {
        self.activity.touch();
        self.inner.write(stream, bytes).await
    }
}

/// Returns once neither output nor a model call (through `gateway`) was seen for
/// `after`; never returns otherwise.
pub(super) async fn stalled(activity: &Activity, gateway: Option<&ModelGateway>, after: Duration) {
    let check = (after / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        tokio::time::sleep(check).await;
        let mut last = activity.last();
        if let Some(gateway) = gateway {
            last = last.max(gateway.last_activity());
        }
        if last.elapsed() >= after {
            return;
        }
    }
}
