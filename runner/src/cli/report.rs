//! What the command line prints: the phase table, the run summary, and live progress.

use crate::progress::{Progress, ProgressEvent};
use specrun_core::state::RunRecord;
use specrun_core::PhaseStatus;
use std::time::Instant;

pub(super) fn format_ms(ms: Option<u64>) -> String {
    ms.map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
        .unwrap_or_else(|| "-".to_owned())
}

fn print_phase_table(out: &mut dyn std::io::Write, record: &RunRecord) {
    let _ = writeln!(
        out,
        "  PHASE         STATUS     STARTED               DURATION  DETAIL"
    );
    for phase in &record.phases {
        let format =
            time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
        let started = phase
            .started_at
            .and_then(|t| t.format(&format).ok())
            .unwrap_or_else(|| "-".to_owned());
        let _ = writeln!(
            out,
            "  {:<13} {:<10} {:<21} {:>8}  {}",
            phase.phase.as_str(),
            phase.status.as_str(),
            started,
            format_ms(phase.duration_ms),
            phase.message.as_deref().unwrap_or("")
        );
        if let Some(usage) = &phase.usage {
            let _ = writeln!(out, "  {:<56}  {}", "", usage.headline());
        }
    }
}

pub(super) fn print_status(out: &mut dyn std::io::Write, record: &RunRecord) {
    let _ = writeln!(out, "run {}  {}", record.run_id, record.status);
    if let Some(reason) = &record.status_reason {
        let _ = writeln!(out, "  {reason}");
    }
    let _ = writeln!(
        out,
        "  repository {}  base {}  branch {}",
        record.repository,
        record.base_branch.as_deref().unwrap_or("-"),
        record.branch_name.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        out,
        "  agent {} {}  image {}",
        record.agent.name,
        record.agent.version.as_deref().unwrap_or(""),
        record.agent.image
    );
    print_attempts(out, record);
    print_phase_table(out, record);
    if let Some(usage) = &record.usage {
        let _ = writeln!(
            out,
            "  model usage {}  models {}",
            usage.headline(),
            usage.models.join(", ")
        );
    }
    if let Some(sha) = &record.commit_sha {
        let _ = writeln!(out, "  commit {sha}");
    }
    if let Some(error) = &record.error {
        let _ = writeln!(out, "\n  error {}: {}", error.code, error.message);
        let _ = writeln!(out, "  fix: {}", error.remediation);
        if let Some(excerpt) = error
            .log_excerpt
            .as_deref()
            .filter(|e| !e.trim().is_empty())
        {
            let _ = writeln!(out, "  last output:");
            for line in excerpt.lines() {
                let _ = writeln!(out, "    | {line}");
            }
        }
    }
}

/// The attempt, earlier attempts with how they ended, and what the run waits for.
fn print_attempts(out: &mut dyn std::io::Write, record: &RunRecord) {
    if record.attempt > 1 || !record.previous_attempts.is_empty() {
        let _ = writeln!(out, "  attempt {}", record.attempt);
    }
    for earlier in &record.previous_attempts {
        let ended = match (&earlier.status, &earlier.error) {
            (Some(status), Some(error)) => format!("{status} ({}: {})", error.code, error.message),
            (Some(status), None) => status.to_string(),
            (None, _) => "abandoned by its runner".to_owned(),
        };
        let _ = writeln!(out, "    attempt {}: {ended}", earlier.attempt);
    }
    for answer in &record.answers {
        let _ = writeln!(
            out,
            "  answered (asked in attempt {}): {} → {}",
            answer.attempt, answer.question, answer.answer
        );
    }
    if let Some(resume) = &record.resume {
        let _ = writeln!(
            out,
            "  resumes after {} (restored from attempt {})",
            resume.after, resume.from_attempt
        );
    }
    if let Some(wait) = &record.waiting_for {
        let _ = writeln!(
            out,
            "  waiting for run {} to finish with branch {} (since {})",
            wait.run_id,
            wait.branch,
            wait.since
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        );
    }
}

pub(super) fn print_summary(
    out: &mut dyn std::io::Write,
    record: &RunRecord,
    state_dir: &std::path::Path,
) {
    let _ = writeln!(out);
    print_status(out, record);
    let _ = writeln!(
        out,
        "  logs   {}/runs/{}/artifacts/  (specrun logs {} [--phase P])",
        state_dir.display(),
        record.run_id,
        record.run_id
    );
}

/// Prints each phase as it starts and ends, with the time since the run started.
pub struct ConsoleProgress {
    started: Instant,
}

impl ConsoleProgress {
    pub fn new() -> Self {
        ConsoleProgress {
            started: Instant::now(),
        }
    }
}

impl Default for ConsoleProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for ConsoleProgress {
    fn event(&self, event: ProgressEvent) {
        let elapsed = self.started.elapsed().as_secs_f64();
        match event {
            ProgressEvent::RunStarted { .. } => {}
            ProgressEvent::PhaseStarted { phase } => {
                eprintln!("[{elapsed:6.1}s] {:<13} running", phase.as_str())
            }
            ProgressEvent::PhaseEnded {
                phase,
                status,
                duration_ms,
                message,
            } => {
                let duration = if status == PhaseStatus::Skipped {
                    String::new()
                } else {
                    format!(" in {}", format_ms(duration_ms))
                };
                eprintln!(
                    "[{elapsed:6.1}s] {:<13} {status}{duration}  {}",
                    phase.as_str(),
                    message.unwrap_or_default()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use specrun_core::model_usage::{Tokens, Usage};
    use specrun_core::Phase;

    #[test]
    fn status_shows_model_usage_per_phase_and_run() {
        let mut record = RunRecord::queued(
            "run-aaaa-1",
            "octo/hello",
            specrun_core::request::Publish::Pr,
            Default::default(),
            time::OffsetDateTime::UNIX_EPOCH,
        );
        let usage = Usage {
            requests: 2,
            tokens: Tokens {
                input: 1200,
                cached_input: 200,
                output: 84,
                reasoning: 0,
            },
            cost_usd: 0.0123,
            models: vec!["gpt-5".to_owned()],
            unpriced_models: Vec::new(),
        };
        record.set_usage(Phase::Specify, Some(usage.clone()), usage);
        let mut out = Vec::new();
        print_status(&mut out, &record);
        let text = String::from_utf8_lossy(&out);
        let expected = "2 model request(s), 1200 input (200 cached) / 84 output tokens, $0.0123";
        assert_eq!(text.matches(expected).count(), 2, "{text}");
        assert!(text.contains("models gpt-5"), "{text}");
    }
}
