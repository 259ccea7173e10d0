//! Every Docker API request this process makes, counted by kind (a process-wide tally:
//! each is a round trip to dockerd, and most a containerd call behind it), and timed at
//! `debug` level (`SPECRUN_LOG=specrun_sandbox::docker::calls=debug`). The benchmark
//! reports the counts per run (`specrun run --counts-file`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The kinds of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Version,
    InspectImage,
    CreateNetwork,
    InspectNetwork,
    RemoveNetwork,
    CreateContainer,
    StartContainer,
    Attach,
    InspectContainer,
    ListContainers,
    CreateExec,
    StartExec,
    InspectExec,
    Pause,
    Unpause,
    Kill,
    Wait,
    Remove,
}

const ALL: [Call; 18] = [
    Call::Version,
    Call::InspectImage,
    Call::CreateNetwork,
    Call::InspectNetwork,
    Call::RemoveNetwork,
    Call::CreateContainer,
    Call::StartContainer,
    Call::Attach,
    Call::InspectContainer,
    Call::ListContainers,
    Call::CreateExec,
    Call::StartExec,
    Call::InspectExec,
    Call::Pause,
    Call::Unpause,
    Call::Kill,
    Call::Wait,
    Call::Remove,
];

static COUNTS: [AtomicU64; ALL.len()] = [const { AtomicU64::new(0) }; ALL.len()];

impl Call {
    pub fn name(self) -> &'static str {
        match self {
            Call::Version => "version",
            Call::InspectImage => "inspect_image",
            Call::CreateNetwork => "create_network",
            Call::InspectNetwork => "inspect_network",
            Call::RemoveNetwork => "remove_network",
            Call::CreateContainer => "create_container",
            Call::StartContainer => "start_container",
            Call::Attach => "attach",
            Call::InspectContainer => "inspect_container",
            Call::ListContainers => "list_containers",
            Call::CreateExec => "create_exec",
            Call::StartExec => "start_exec",
            Call::InspectExec => "inspect_exec",
            Call::Pause => "pause",
            Call::Unpause => "unpause",
            Call::Kill => "kill",
            Call::Wait => "wait",
            Call::Remove => "remove",
        }
    }
}

/// Counts `call` and awaits it; how long it took is logged at `debug`. (For a streamed
/// exec, `StartExec` times the request, not the command.)
pub(crate) async fn timed<T>(call: Call, request: impl Future<Output = T>) -> T {
    COUNTS[call as usize].fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let answer = request.await;
    tracing::debug!(
        call = call.name(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        "docker"
    );
    answer
}

/// The requests made so far by this process, by kind (kinds never made left out).
pub fn counts() -> BTreeMap<&'static str, u64> {
    ALL.into_iter()
        .map(|call| (call.name(), COUNTS[call as usize].load(Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect()
}
