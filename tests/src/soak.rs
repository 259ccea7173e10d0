//! The fault-injection soak: many runs of the scripted agent through the serverless path
//! (moto S3 and SQS, `specrun runner` processes, the real job image) while faults land at
//! random moments: runners SIGKILLed or SIGTERMed and replaced, the store and queue
//! refusing connections or answering 503, messages duplicated, job containers killed from
//! outside. Then it counts what a user cares about: every run reached a final state (none
//! lost) and no run pushed twice or opened a second pull request (no duplicated effect).
//!
//! `scripts/soak.sh` runs it as a benchmark; `tests/tests/faults_soak.rs` runs a small one
//! in CI and fails on a lost run or a duplicated effect.

use crate::emulator::{SpecrunEnv, SpecrunProcess};
use crate::harness::write_slow_agents_file;
use crate::outage::OutageRelay;
use crate::world::{pushes, run_request, submit, World, BUCKET};
use anyhow::Context as _;
use serde_json::json;
use specrun_core::message::RunMessage;
use specrun_core::request::RunRequest;
use specrun_core::state::RunRecord;
use specrun_core::RunStatus;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// The forge account the soak's repositories belong to.
const OWNER: &str = "soak";

/// What a soak does.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub runs: usize,
    /// Runner processes working the queue at once.
    pub runners: usize,
    /// Seeds the choice and timing of faults: the same seed, the same fault schedule.
    pub seed: u64,
    /// Seconds the scripted agent sleeps in specify, so that faults land mid-run.
    pub agent_sleep_secs: u32,
    /// Longest wait between two faults.
    pub max_fault_gap: Duration,
    /// How long, after the last submission, runs may take to settle before the remaining
    /// ones count as lost.
    pub deadline: Duration,
}

impl Default for SoakConfig {
    fn default() -> Self {
        SoakConfig {
            runs: 30,
            runners: 2,
            seed: 42,
            agent_sleep_secs: 2,
            max_fault_gap: Duration::from_secs(6),
            deadline: Duration::from_secs(900),
        }
    }
}

/// A fault the soak injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillRunner,
    TerminateRunner,
    StoreRefuses,
    StoreAnswers503,
    DuplicateMessage,
    KillContainer,
}

const FAULTS: [Fault; 6] = [
    Fault::KillRunner,
    Fault::TerminateRunner,
    Fault::StoreRefuses,
    Fault::StoreAnswers503,
    Fault::DuplicateMessage,
    Fault::KillContainer,
];

/// What the soak saw.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    pub submitted: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// Extra pushes and extra pull requests, over all runs (each run may push once and
    /// open one pull request).
    pub duplicated_effects: usize,
    /// Runs with no final state at the deadline.
    pub lost: usize,
    /// Pull requests on the forge at the end (one per completed run is right).
    pub pull_requests: usize,
    /// Completed runs whose pull request is missing (must be 0).
    pub completed_without_pr: usize,
    /// Runs that needed more than one attempt.
    pub taken_over: usize,
    pub faults: BTreeMap<String, usize>,
    /// Why runs failed, by error code.
    pub failure_codes: BTreeMap<String, usize>,
    pub wall: Duration,
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults: usize = self.faults.values().sum();
        writeln!(f, "faults injected      {faults} {:?}", self.faults)?;
        writeln!(f, "runs submitted       {}", self.submitted)?;
        writeln!(f, "runs completed       {}", self.succeeded)?;
        writeln!(
            f,
            "runs failed          {} {:?}",
            self.failed, self.failure_codes
        )?;
        writeln!(
            f,
            "pull requests        {} ({} completed runs without one)",
            self.pull_requests, self.completed_without_pr
        )?;
        writeln!(f, "duplicated effects   {}", self.duplicated_effects)?;
        writeln!(f, "lost runs            {}", self.lost)?;
        writeln!(f, "runs taken over      {}", self.taken_over)?;
        let minutes = self.wall.as_secs_f64() / 60.0;
        write!(
            f,
            "wall                 {:.1} s ({:.1} runs/min)",
            self.wall.as_secs_f64(),
            self.submitted as f64 / minutes.max(1e-9)
        )
    }
}

/// SplitMix64: a small, seeded, reproducible source of choices.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next() % (high - low).max(1))
    }
}

/// The runner processes and how to replace one.
struct Runners {
    env: SpecrunEnv,
    live: Vec<(String, SpecrunProcess)>,
    started: usize,
}

impl Runners {
    async fn start(env: SpecrunEnv, count: usize) -> anyhow::Result<Self> {
        let mut runners = Runners {
            env,
            live: Vec::new(),
            started: 0,
        };
        for _ in 0..count {
            runners.add().await?;
        }
        Ok(runners)
    }

    async fn add(&mut self) -> anyhow::Result<()> {
        self.started += 1;
        let id = format!("soak-runner-{}", self.started);
        let process = SpecrunProcess::runner(
            &self.env.with_runner_id(&id),
            &[
                "--lease-secs",
                "6",
                "--visibility-secs",
                "10",
                "--max-receives",
                "8",
            ],
        )
        .await?;
        self.live.push((id, process));
        Ok(())
    }

    /// Kills (or terminates) one runner and starts a fresh one in its place.
    async fn replace(&mut self, index: usize, kill: bool) -> anyhow::Result<()> {
        let (_, mut process) = self.live.remove(index % self.live.len());
        if kill {
            process.kill();
        } else {
            process.stop();
        }
        drop(process);
        self.add().await
    }

    fn ids(&self) -> Vec<String> {
        self.live.iter().map(|(id, _)| id.clone()).collect()
    }
}

/// Job containers the soak's runners started, running now.
fn running_containers(runner_ids: &[String]) -> Vec<String> {
    runner_ids
        .iter()
        .flat_map(|id| {
            std::process::Command::new("docker")
                .args([
                    "ps",
                    "-q",
                    "--filter",
                    &format!("label=io.specrun.runner-id={id}"),
                ])
                .output()
                .map(|out| {
                    String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect()
}

/// One submitted run.
struct Submitted {
    run_id: String,
    repo: String,
    body: serde_json::Value,
}

/// Runs a soak and reports what happened.
pub async fn soak(config: &SoakConfig) -> anyhow::Result<SoakReport> {
    let started = Instant::now();
    let mut dice = Dice(config.seed);
    let mut world = World::start(8).await?;
    let dir = tempfile::tempdir()?;
    let agents = write_slow_agents_file(dir.path(), "soak", config.agent_sleep_secs)?;
    world
        .env
        .extra
        .push(("SPECRUN_AGENTS_FILE".to_owned(), agents));
    let relay = OutageRelay::start(&world.moto.endpoint()).await?;
    let runner_env = world.env_via(&relay);
    let serve = SpecrunProcess::serve(&world.env, &["--no-runner"]).await?;
    let mut runners = Runners::start(runner_env, config.runners).await?;

    let mut submitted = Vec::new();
    for n in 0..config.runs {
        let repo = format!("soak-{n}");
        world.forge.create_repo(OWNER, &repo, "# Soak\n")?;
        let slug = format!("{OWNER}/{repo}");
        let mut body = run_request(&slug, &format!("Let members export report number {n}"));
        body["agent"] = json!("soak");
        body["publish"] = json!("pr");
        let (run_id, _) = submit(serve.base_url()?, &body).await?;
        submitted.push(Submitted { run_id, repo, body });
    }

    let mut report = SoakReport {
        submitted: submitted.len(),
        ..SoakReport::default()
    };
    let settle_by = Instant::now() + config.deadline;
    let max_gap = config.max_fault_gap.as_millis() as u64;
    while Instant::now() < settle_by && !all_final(&world, &submitted).await {
        tokio::time::sleep(dice.millis(max_gap / 3, max_gap)).await;
        if all_final(&world, &submitted).await {
            break;
        }
        let fault = FAULTS[dice.below(FAULTS.len())];
        inject(fault, &mut dice, &world, &relay, &mut runners, &submitted).await?;
        *report.faults.entry(format!("{fault:?}")).or_default() += 1;
    }
    relay.restore().await?;
    while Instant::now() < settle_by && !all_final(&world, &submitted).await {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    for run in &submitted {
        let record = stored_run(&world, &run.run_id).await;
        let pulls = world.forge.pulls(OWNER, &run.repo).len();
        match record {
            Some(record) if record.status.is_final() => {
                if record.status == RunStatus::Succeeded {
                    report.succeeded += 1;
                    if pulls == 0 {
                        report.completed_without_pr += 1;
                    }
                } else {
                    report.failed += 1;
                    let code = record
                        .error
                        .as_ref()
                        .map(|e| e.code.to_string())
                        .unwrap_or_else(|| record.status.to_string());
                    *report.failure_codes.entry(code).or_default() += 1;
                }
                if record.attempt > 1 {
                    report.taken_over += 1;
                }
            }
            _ => report.lost += 1,
        }
        let slug = format!("{OWNER}/{}", run.repo);
        report.duplicated_effects += pushes(world.git(), &slug).saturating_sub(1);
        report.pull_requests += pulls;
        report.duplicated_effects += pulls.saturating_sub(1);
    }
    report.wall = started.elapsed();
    drop(runners);
    Ok(report)
}

async fn inject(
    fault: Fault,
    dice: &mut Dice,
    world: &World,
    relay: &OutageRelay,
    runners: &mut Runners,
    submitted: &[Submitted],
) -> anyhow::Result<()> {
    tracing::info!(?fault, "injecting a fault");
    match fault {
        Fault::KillRunner => runners.replace(dice.below(usize::MAX), true).await?,
        Fault::TerminateRunner => runners.replace(dice.below(usize::MAX), false).await?,
        Fault::StoreRefuses => {
            relay.refuse();
            tokio::time::sleep(dice.millis(2_000, 8_000)).await;
            relay.restore().await?;
        }
        Fault::StoreAnswers503 => {
            relay.answer_503().await?;
            tokio::time::sleep(dice.millis(1_000, 5_000)).await;
            relay.restore().await?;
        }
        Fault::DuplicateMessage => {
            let run = &submitted[dice.below(submitted.len())];
            let request: RunRequest = serde_json::from_value(run.body.clone())?;
            let message = RunMessage::new(&run.run_id, request).to_json();
            world
                .moto
                .sqs()
                .send_message()
                .queue_url(&world.queues.url)
                .message_body(String::from_utf8(message)?)
                .send()
                .await
                .context("duplicating a message")?;
        }
        Fault::KillContainer => {
            let containers = running_containers(&runners.ids());
            if let Some(container) = containers.get(dice.below(containers.len().max(1))) {
                let _ = std::process::Command::new("docker")
                    .args(["kill", container])
                    .output();
            }
        }
    }
    Ok(())
}

async fn stored_run(world: &World, run_id: &str) -> Option<RunRecord> {
    let bytes = world
        .moto
        .get_object(BUCKET, &format!("runs/{run_id}/run.json"))
        .await
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

async fn all_final(world: &World, submitted: &[Submitted]) -> bool {
    for run in submitted {
        match stored_run(world, &run.run_id).await {
            Some(record) if record.status.is_final() => {}
            _ => return false,
        }
    }
    true
}
