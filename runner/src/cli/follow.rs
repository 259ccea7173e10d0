//! `specrun logs -f`: a run's phase logs printed as they are written, phase after phase,
//! until the run is over; the same reads as `GET /runs/{id}/logs/{phase}`
//! (`specrun_store::log_tail`), on the embedded store or the bucket. Ctrl-C ends it.

use super::{explain, load, StateStore};
use specrun_core::live_log::{phase_log_name, LogStream};
use specrun_core::ports::StoreError;
use specrun_core::Phase;
use specrun_store::log_tail::{read_phase_log, TailError, MAX_READ_BYTES};
use std::io::Write;
use std::time::Duration;

/// How long to wait before asking again when nothing new was there.
const POLL: Duration = Duration::from_millis(500);

/// Exit code when Ctrl-C ended the following (the shell's for SIGINT).
const INTERRUPTED: i32 = 130;

/// Follows `stream` of `only` (or every phase in order) of the run until no phase may
/// write any more. Returns the exit code.
pub async fn follow(
    run_id: &str,
    only: Option<Phase>,
    stream: LogStream,
    state: &StateStore,
) -> anyhow::Result<i32> {
    // The record is read before the first wait, so an unknown run fails at once.
    load(run_id, state).await?;
    tokio::select! {
        followed = follow_phases(run_id, only, stream, state) => followed,
        _ = tokio::signal::ctrl_c() => Ok(INTERRUPTED),
    }
}

async fn follow_phases(
    run_id: &str,
    only: Option<Phase>,
    stream: LogStream,
    state: &StateStore,
) -> anyhow::Result<i32> {
    let phases = only.map_or(Phase::ALL.to_vec(), |phase| vec![phase]);
    for phase in phases {
        match follow_phase(run_id, phase, stream, state).await {
            Ok(()) => {}
            // `specrun logs -f ... | head`: the reader has what it wanted.
            Err(e) if is_broken_pipe(&e) => return Ok(0),
            Err(e) => return Err(e),
        }
    }
    Ok(0)
}

/// Prints the phase's log from its start until the phase can write no more.
async fn follow_phase(
    run_id: &str,
    phase: Phase,
    stream: LogStream,
    state: &StateStore,
) -> anyhow::Result<()> {
    let mut offset = 0;
    let mut headed = false;
    loop {
        let record = load(run_id, state).await?;
        let read = read_phase_log(
            state.store.as_ref(),
            &record,
            phase,
            stream,
            offset,
            MAX_READ_BYTES,
        )
        .await;
        let chunk = match read {
            Ok(chunk) => chunk,
            Err(TailError::Store(e)) if e.is_transient() => {
                eprintln!("specrun: the store did not answer ({e}); trying again");
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(TailError::Store(StoreError::NotFound(key))) => anyhow::bail!(
                "the {phase} log of run {run_id} is gone from {} ({key}): it expired or was removed",
                state.place
            ),
            Err(TailError::Store(e)) => return Err(explain(e)),
            Err(e @ TailError::PastEnd { .. }) => anyhow::bail!(
                "the {phase} log of run {run_id} shrank while it was followed ({e}); was the run retried? follow it again"
            ),
        };
        if !chunk.bytes.is_empty() {
            let mut out = std::io::stdout().lock();
            if !headed {
                let name = phase_log_name(phase, stream).unwrap_or_default();
                writeln!(out, "==> {phase}: {name} <==")?;
                headed = true;
            }
            out.write_all(&chunk.bytes)?;
            out.flush()?;
            offset = chunk.next_offset;
            continue;
        }
        if !chunk.writing {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}
