//! The fault-injection soak: many runs of the scripted agent through the serverless path
//! (moto S3 and SQS, `specrun runner` processes, the real job image) while faults land at
//! random moments. Each runner reaches the emulator through its own relay, so one runner
//! can be cut off while the others carry on. The faults:
//!
//! - `KillRunner`, `TerminateRunner`: a runner is SIGKILLed or SIGTERMed and replaced.
//! - `StoreRefuses`, `StoreAnswers503`: every runner's store and queue refuse connections
//!   or answer 503 for a few seconds.
//! - `DuplicateMessage`: one more copy of a run's message on the queue.
//! - `KillContainer`: a job container is killed from outside.
//! - `PartitionRunner`: one runner (one holding a run, when there is one) is cut off from
//!   the store and queue for longer than its lease and its message's visibility, while
//!   the others carry on and take its run over.
//! - `SkewClock`: a runner is replaced by one whose wall clock is tens of seconds ahead or
//!   behind (libfaketime preloaded; the skew is checked on the timestamp of its first log
//!   line), and a running run's message is duplicated so that its lease is judged by the
//!   skewed clock.
//! - `KillDuringPush`, `KillDuringPr`: the git server (or the fake forge) holds the next
//!   push (`POST .../git-receive-pack`) or pull request creation (`POST .../pulls`) once
//!   its body has arrived; the runner whose run it is gets SIGKILLed while it waits; then
//!   the request is applied (the push or pull request lands with no one to hear the
//!   answer) or dropped.
//! - `ExpireLeaseDuringFinalPersist`: every runner's relay watches for a run.json write
//!   with a final status; the first such write cuts its runner off (the write lands with
//!   its answer lost, or never arrives) for longer than the lease, so the lease lapses
//!   during the run's final persist.
//!
//! Then it counts what a user cares about (see [`SoakReport`]): lost runs, runs whose final
//! state disagrees with what was pushed, duplicated pushes and pull requests, and runs that
//! reached a final state twice (run.json is watched while the soak runs).
//!
//! `scripts/soak.sh` runs it as a benchmark; `tests/tests/faults_soak.rs` runs a small one
//! in CI.

use crate::emulator::{SpecrunEnv, SpecrunProcess};
use crate::harness::write_slow_agents_file;
use crate::http_thread::{Arrival, HeldRequest};
use crate::outage::OutageRelay;
use crate::world::{run_request, submit, World, BUCKET};
use anyhow::Context as _;
use serde_json::json;
use specrun_core::message::RunMessage;
use specrun_core::request::RunRequest;
use specrun_core::state::RunRecord;
use specrun_core::{Phase, PhaseStatus, RunStatus};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The forge account the soak's repositories belong to.
const OWNER: &str = "soak";

/// The runners' lease, in seconds: a shared outage is shorter than two thirds of it (the
/// runners ride it out), a partition of one runner longer (its run is taken over). Shorter
/// than the visibility, as in a deployment (60 s and 120 s by default): a dead runner's
/// message comes back once its lease has run out, not to find the run still held.
const LEASE_SECS: u64 = 6;

/// How long a runner's received message stays hidden without renewal, in seconds (the
/// runner's least).
const VISIBILITY_SECS: u64 = 10;

/// Where libfaketime lives (Debian's `libfaketime`; `scripts/setup.sh` installs it).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

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
    /// Faults to inject at most (then runs settle undisturbed); `None`: until every run
    /// is final. The first round tries every kind once.
    pub max_faults: Option<usize>,
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
            max_faults: None,
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
    PartitionRunner,
    SkewClock,
    KillDuringPush,
    KillDuringPr,
    ExpireLeaseDuringFinalPersist,
}

/// The faults that must catch a run at a given moment: the soak's first round starts with
/// them, while runs are in flight.
const TARGETED: [Fault; 5] = [
    Fault::KillDuringPush,
    Fault::KillDuringPr,
    Fault::ExpireLeaseDuringFinalPersist,
    Fault::PartitionRunner,
    Fault::SkewClock,
];

const OTHERS: [Fault; 6] = [
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
    /// Runs with no final state at the deadline.
    pub lost: usize,
    /// Runs whose final state disagrees with the remote (see [`disagreement`]).
    pub disagreeing: usize,
    /// Branch updates beyond one per run (each run may move its branch once).
    pub duplicated_pushes: usize,
    /// Pull requests beyond one per run.
    pub duplicated_prs: usize,
    /// Runs seen reaching a final state twice: two final entries in one status timeline, a
    /// final status followed by another, or a final run.json rewritten with another
    /// status, finish time or attempt.
    pub final_twice: usize,
    /// Pull requests on the forge at the end (one per succeeded run is right).
    pub pull_requests: usize,
    /// Runs that needed more than one attempt.
    pub taken_over: usize,
    /// Faults that landed, by kind.
    pub faults: BTreeMap<String, usize>,
    /// Faults tried that found nothing to hit (no push, no final write in time), by kind.
    pub missed: BTreeMap<String, usize>,
    /// The clock skews asked for and measured on the skewed runners' logs, in seconds.
    pub skews: Vec<(i64, i64)>,
    /// Why runs failed, by error code.
    pub failure_codes: BTreeMap<String, usize>,
    /// Messages on the run queue (visible, in flight) and its dead-letter queue at the end.
    pub queue_at_end: (u64, u64),
    pub dead_letters_at_end: u64,
    /// What each disagreeing or twice-finished run showed, for the report.
    pub problems: Vec<String>,
    /// Why each failed run failed, for the report.
    pub failures: Vec<String>,
    pub wall: Duration,
}

impl SoakReport {
    /// Lost, disagreeing, duplicated or twice-finished runs: each must be 0.
    pub fn violations(&self) -> usize {
        self.lost
            + self.disagreeing
            + self.duplicated_pushes
            + self.duplicated_prs
            + self.final_twice
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults: usize = self.faults.values().sum();
        writeln!(f, "faults injected      {faults} {:?}", self.faults)?;
        writeln!(f, "faults that missed   {:?}", self.missed)?;
        writeln!(f, "clock skews (asked, measured s) {:?}", self.skews)?;
        writeln!(f, "runs submitted       {}", self.submitted)?;
        writeln!(f, "runs succeeded       {}", self.succeeded)?;
        writeln!(
            f,
            "runs failed          {} {:?}",
            self.failed, self.failure_codes
        )?;
        writeln!(f, "pull requests        {}", self.pull_requests)?;
        writeln!(f, "lost runs            {}", self.lost)?;
        writeln!(f, "state != pushed      {}", self.disagreeing)?;
        writeln!(f, "duplicated pushes    {}", self.duplicated_pushes)?;
        writeln!(f, "duplicated PRs       {}", self.duplicated_prs)?;
        writeln!(f, "final state twice    {}", self.final_twice)?;
        writeln!(f, "runs taken over      {}", self.taken_over)?;
        writeln!(
            f,
            "queue at the end     {} visible, {} in flight; {} dead-lettered",
            self.queue_at_end.0, self.queue_at_end.1, self.dead_letters_at_end
        )?;
        for failure in &self.failures {
            writeln!(f, "  failed: {failure}")?;
        }
        for problem in &self.problems {
            writeln!(f, "  problem: {problem}")?;
        }
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

    fn coin(&mut self) -> bool {
        self.below(2) == 0
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next() % (high - low).max(1))
    }

    /// `faults` in a seeded random order.
    fn shuffled(&mut self, faults: &[Fault]) -> Vec<Fault> {
        let mut deck = faults.to_vec();
        for i in (1..deck.len()).rev() {
            deck.swap(i, self.below(i + 1));
        }
        deck
    }
}

/// One runner process and the relay it reaches the store and queue through.
struct Runner {
    id: String,
    process: SpecrunProcess,
    relay: OutageRelay,
}

/// The runner processes and how to replace one.
struct Runners {
    world_env: SpecrunEnv,
    dead_letters: String,
    moto_endpoint: String,
    live: Vec<Runner>,
    started: usize,
}

impl Runners {
    async fn start(world: &World, count: usize) -> anyhow::Result<Self> {
        let mut runners = Runners {
            world_env: world.env.clone(),
            dead_letters: world.queues.dlq_url.clone(),
            moto_endpoint: world.moto.endpoint(),
            live: Vec::new(),
            started: 0,
        };
        for _ in 0..count {
            runners.add(None).await?;
        }
        Ok(runners)
    }

    /// Starts a runner behind a relay of its own; with `skew`, its wall clock is that many
    /// seconds off. Returns the skew measured on its first log line.
    async fn add(&mut self, skew: Option<i64>) -> anyhow::Result<Option<i64>> {
        self.started += 1;
        let id = format!("soak-runner-{}", self.started);
        let relay = OutageRelay::start(&self.moto_endpoint).await?;
        let mut env = self.world_env.clone();
        env.endpoint = relay.endpoint();
        env.extra.extend([
            ("SPECRUN_STORE_RETRY_SECS".to_owned(), "120".to_owned()),
            (
                "SPECRUN_DEAD_LETTER_QUEUE_URL".to_owned(),
                self.dead_letters.clone(),
            ),
        ]);
        if let Some(seconds) = skew {
            env.extra.extend([
                ("LD_PRELOAD".to_owned(), LIBFAKETIME.to_owned()),
                ("FAKETIME".to_owned(), format!("{seconds:+}s")),
                ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
                // The AWS SDK's first debug line, at start, stamped by the skewed clock.
                (
                    "SPECRUN_LOG".to_owned(),
                    "info,aws_runtime::fs_util=debug".to_owned(),
                ),
            ]);
        }
        let lease = LEASE_SECS.to_string();
        let visibility = VISIBILITY_SECS.to_string();
        let process = SpecrunProcess::runner(
            &env.with_runner_id(&id),
            &[
                "--lease-secs",
                &lease,
                "--visibility-secs",
                &visibility,
                "--concurrency",
                "2",
            ],
        )
        .await?;
        let measured = match skew {
            Some(_) => Some(measured_skew(&process)?),
            None => None,
        };
        self.live.push(Runner { id, process, relay });
        Ok(measured)
    }

    /// Kills (or terminates) one runner and starts a fresh one in its place.
    async fn replace(&mut self, index: usize, kill: bool) -> anyhow::Result<()> {
        let mut runner = self.live.remove(index % self.live.len());
        if kill {
            runner.process.kill();
        } else {
            runner.process.stop();
        }
        drop(runner);
        self.add(None).await.map(|_| ())
    }

    fn index_of(&self, runner_id: &str) -> Option<usize> {
        self.live.iter().position(|r| r.id == runner_id)
    }

    fn ids(&self) -> Vec<String> {
        self.live.iter().map(|r| r.id.clone()).collect()
    }

    async fn restore_all(&self) -> anyhow::Result<()> {
        for runner in &self.live {
            runner.relay.restore().await?;
        }
        Ok(())
    }
}

/// How far the process's wall clock is from ours, in whole seconds: the first
/// timestamped line of its log (tracing stamps each line with the process's
/// `SystemTime::now()`; the AWS SDK logs one as the process starts) against our clock now.
fn measured_skew(process: &SpecrunProcess) -> anyhow::Result<i64> {
    let log = process.stderr_tail(400);
    let at = log
        .lines()
        .filter_map(|line| {
            let stamp = strip_ansi(line.split_whitespace().next()?);
            time::OffsetDateTime::parse(&stamp, &time::format_description::well_known::Rfc3339).ok()
        })
        .next()
        .with_context(|| format!("no timestamped line in the skewed runner's log:\n{log}"))?;
    Ok((at - time::OffsetDateTime::now_utc()).whole_seconds())
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
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

/// Removes the job containers of the soak's runs that killed runners left behind (a
/// takeover removes them, but not every run is taken over).
fn remove_containers(submitted: &[Submitted]) {
    for run in submitted {
        let listed = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=io.specrun.run-id={}", run.run_id),
            ])
            .output();
        let Ok(listed) = listed else {
            continue;
        };
        for container in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", container])
                .output();
        }
    }
}

/// One submitted run.
struct Submitted {
    run_id: String,
    repo: String,
    body: serde_json::Value,
}

/// What the watcher saw of one run's run.json over time.
#[derive(Default)]
struct History {
    bytes: Vec<u8>,
    latest: Option<RunRecord>,
    /// (status, finished_at, attempt) when first seen final.
    first_final: Option<(RunStatus, Option<time::OffsetDateTime>, u32)>,
    /// Why the run counts as finished twice, if it does.
    twice: Option<String>,
}

impl History {
    fn observe(&mut self, bytes: Vec<u8>) {
        if bytes == self.bytes {
            return;
        }
        self.bytes = bytes;
        let Ok(record) = serde_json::from_slice::<RunRecord>(&self.bytes) else {
            return;
        };
        if self.twice.is_none() {
            self.twice = timeline_problem(&record);
        }
        let now = (record.status, record.finished_at, record.attempt);
        match self.first_final {
            Some(first) if first != now && self.twice.is_none() => {
                self.twice = Some(format!(
                    "run.json was {:?} and later {:?} (status, finished_at, attempt)",
                    first, now
                ));
            }
            None if record.status.is_final() => self.first_final = Some(now),
            _ => {}
        }
        self.latest = Some(record);
    }
}

/// Two final entries in a status timeline, or a final one followed by anything.
fn timeline_problem(record: &RunRecord) -> Option<String> {
    let statuses: Vec<RunStatus> = record.status_timeline.iter().map(|e| e.status).collect();
    let first_final = statuses.iter().position(|s| s.is_final())?;
    (first_final + 1 < statuses.len())
        .then(|| format!("status timeline {statuses:?} goes on after a final status"))
}

/// Polls every run's run.json while the soak runs.
#[derive(Clone)]
struct Watcher {
    histories: Arc<Mutex<BTreeMap<String, History>>>,
}

impl Watcher {
    fn start(s3: aws_sdk_s3::Client, run_ids: Vec<String>) -> (Self, tokio::task::JoinHandle<()>) {
        let watcher = Watcher {
            histories: Arc::new(Mutex::new(BTreeMap::new())),
        };
        let polling = watcher.clone();
        let task = tokio::spawn(async move {
            loop {
                for run_id in &run_ids {
                    polling.poll(&s3, run_id).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        (watcher, task)
    }

    async fn poll(&self, s3: &aws_sdk_s3::Client, run_id: &str) {
        let key = format!("runs/{run_id}/run.json");
        let Ok(object) = s3.get_object().bucket(BUCKET).key(&key).send().await else {
            return;
        };
        let Ok(body) = object.body.collect().await else {
            return;
        };
        self.lock()
            .entry(run_id.to_owned())
            .or_default()
            .observe(body.into_bytes().to_vec());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, History>> {
        self.histories.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn latest(&self, run_id: &str) -> Option<RunRecord> {
        self.lock().get(run_id).and_then(|h| h.latest.clone())
    }

    fn all_final(&self, submitted: &[Submitted]) -> bool {
        let histories = self.lock();
        submitted.iter().all(|run| {
            histories
                .get(&run.run_id)
                .and_then(|h| h.latest.as_ref())
                .is_some_and(|r| r.status.is_final())
        })
    }

    /// Runner ids holding a running run, by the last run.json seen.
    fn holders(&self) -> Vec<(String, String)> {
        self.lock()
            .iter()
            .filter_map(|(run_id, h)| {
                let record = h.latest.as_ref()?;
                if record.status != RunStatus::Running {
                    return None;
                }
                Some((run_id.clone(), record.runner_id.clone()?))
            })
            .collect()
    }

    fn twice(&self, run_id: &str) -> Option<String> {
        self.lock().get(run_id).and_then(|h| h.twice.clone())
    }
}

/// Everything the fault injector works on.
struct Soak<'a> {
    world: &'a World,
    runners: Runners,
    submitted: &'a [Submitted],
    watcher: Watcher,
    dice: Dice,
    report: SoakReport,
    /// Armed final-write trips, until they fire (a trip that never fired missed).
    trips: Vec<tokio::sync::oneshot::Receiver<()>>,
    /// Armed holds of the next push or pull request call, until one arrives.
    held: Vec<(Fault, HeldRequest)>,
}

/// Runs a soak and reports what happened.
pub async fn soak(config: &SoakConfig) -> anyhow::Result<SoakReport> {
    let started = Instant::now();
    // The queue dead-letters after 3 receives, as the runners' default `--max-receives`.
    let mut world = World::start(3).await?;
    let dir = tempfile::tempdir()?;
    let agents = write_slow_agents_file(dir.path(), "soak", config.agent_sleep_secs)?;
    world
        .env
        .extra
        .push(("SPECRUN_AGENTS_FILE".to_owned(), agents));
    let serve = SpecrunProcess::serve(&world.env, &["--no-runner"]).await?;
    let runners = Runners::start(&world, config.runners).await?;

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
    let (watcher, watching) = Watcher::start(
        world.moto.s3().clone(),
        submitted.iter().map(|s| s.run_id.clone()).collect(),
    );

    let mut injector = Soak {
        world: &world,
        runners,
        submitted: &submitted,
        watcher,
        dice: Dice(config.seed),
        report: SoakReport {
            submitted: submitted.len(),
            ..SoakReport::default()
        },
        trips: Vec::new(),
        held: Vec::new(),
    };
    let settle_by = Instant::now() + config.deadline;
    let max_gap = config.max_fault_gap.as_millis() as u64;
    // The first round starts with the faults that must catch a run at a given moment.
    let mut deck = injector.dice.shuffled(&TARGETED);
    deck.extend(injector.dice.shuffled(&OTHERS));
    deck.reverse();
    let mut injected = 0;
    while Instant::now() < settle_by
        && !injector.watcher.all_final(&submitted)
        && config.max_faults.is_none_or(|most| injected < most)
    {
        let gap = injector.dice.millis(max_gap / 3, max_gap);
        injector.wait(gap).await?;
        if injector.watcher.all_final(&submitted) {
            break;
        }
        injected += 1;
        let fault = match deck.pop() {
            Some(fault) => fault,
            None => {
                let mut all = TARGETED.to_vec();
                all.extend(OTHERS);
                deck = injector.dice.shuffled(&all);
                continue;
            }
        };
        let landed = injector.inject(fault).await?;
        injector.tally(fault, landed);
    }
    // Armed faults may still land while the runs settle; then they are taken back.
    while Instant::now() < settle_by && !injector.watcher.all_final(&submitted) {
        injector.wait(Duration::from_millis(500)).await?;
    }
    injector.disarm();
    injector.runners.restore_all().await?;
    // A last look at every run, then the count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    watching.abort();
    for run in &submitted {
        injector.watcher.poll(world.moto.s3(), &run.run_id).await;
    }
    let Soak {
        mut report,
        runners,
        watcher,
        ..
    } = injector;
    drop(runners);
    for run in &submitted {
        count_run(&world, &watcher, run, &mut report)?;
    }
    remove_containers(&submitted);
    let queue = world.moto.queue_depth(&world.queues.url).await?;
    report.queue_at_end = (queue.visible, queue.in_flight);
    let dead = world.moto.queue_depth(&world.queues.dlq_url).await?;
    report.dead_letters_at_end = dead.visible + dead.in_flight;
    report.wall = started.elapsed();
    Ok(report)
}

/// Adds one run's outcome to the report.
fn count_run(
    world: &World,
    watcher: &Watcher,
    run: &Submitted,
    report: &mut SoakReport,
) -> anyhow::Result<()> {
    let pulls = world.forge.pulls(OWNER, &run.repo);
    report.pull_requests += pulls.len();
    report.duplicated_prs += pulls.len().saturating_sub(1);
    let slug = format!("{OWNER}/{}", run.repo);
    let record = match watcher.latest(&run.run_id) {
        Some(record) if record.status.is_final() => record,
        seen => {
            report.lost += 1;
            let how = seen.map(|r| {
                format!(
                    "{} in attempt {} on {:?}, timeline {:?}",
                    r.status,
                    r.attempt,
                    r.runner_id,
                    r.status_timeline
                        .iter()
                        .map(|e| e.status)
                        .collect::<Vec<_>>()
                )
            });
            report
                .problems
                .push(format!("{}: lost (no final state): {how:?}", run.run_id));
            return Ok(());
        }
    };
    let updates = match &record.branch_name {
        Some(branch) => world.git().ref_updates(&slug, branch)?,
        None => 0,
    };
    report.duplicated_pushes += updates.saturating_sub(1);
    if record.status == RunStatus::Succeeded {
        report.succeeded += 1;
    } else {
        report.failed += 1;
        let code = record
            .error
            .as_ref()
            .map(|e| e.code.to_string())
            .unwrap_or_else(|| record.status.to_string());
        let message = record.error.as_ref().map(|e| e.message.as_str());
        let message: String = message.unwrap_or_default().chars().take(160).collect();
        report.failures.push(format!(
            "{} ({}): {code}: {message}",
            run.run_id, record.attempt
        ));
        *report.failure_codes.entry(code).or_default() += 1;
    }
    if record.attempt > 1 {
        report.taken_over += 1;
    }
    if let Some(why) = disagreement(world, &slug, &record, &pulls)? {
        report.disagreeing += 1;
        report.problems.push(format!("{}: {why}", run.run_id));
    }
    if let Some(why) = watcher.twice(&run.run_id) {
        report.final_twice += 1;
        report
            .problems
            .push(format!("{}: finished twice: {why}", run.run_id));
    }
    Ok(())
}

/// Whether a run's final state disagrees with what is on the remote. The rule:
///
/// - Nothing but the run's own branch (`branch_name`) may appear beside `main`, and a tip
///   of that branch must carry the run's `Specrun-Run-Id` trailer; a pull request needs
///   that branch, and is for it.
/// - `succeeded`: the branch exists at `commit_sha`, exactly one pull request exists for
///   it, and `pull_request_url` names that one.
/// - `failed` or `cancelled`: a pushed branch and a pull request may exist (an earlier
///   attempt pushed or opened it before a later one failed); when `pull_request_url` is
///   recorded it names the pull request that exists, and when the last attempt's push
///   phase succeeded the branch is at `commit_sha`.
/// - `no_changes`, `needs_clarification`: no branch and no pull request.
fn disagreement(
    world: &World,
    slug: &str,
    record: &RunRecord,
    pulls: &[crate::forge::PullRecord],
) -> anyhow::Result<Option<String>> {
    let branch = record.branch_name.clone().unwrap_or_default();
    let extra: Vec<String> = world
        .git()
        .branches(slug)?
        .into_iter()
        .filter(|b| b != "main" && *b != branch)
        .collect();
    if !extra.is_empty() {
        return Ok(Some(format!("branches nobody recorded: {extra:?}")));
    }
    let tip = if branch.is_empty() {
        None
    } else {
        world.git().tip(slug, &branch)?
    };
    if let Some((commit, message)) = &tip {
        let trailer = format!("Specrun-Run-Id: {}", record.run_id);
        if !message.lines().any(|l| l.trim() == trailer) {
            return Ok(Some(format!(
                "{branch} is at {commit}, which does not carry {trailer:?}"
            )));
        }
    }
    if let Some(pull) = pulls.iter().find(|p| p.head != branch) {
        return Ok(Some(format!(
            "pull request #{} is for {}, not the run's branch {branch}",
            pull.number, pull.head
        )));
    }
    if !pulls.is_empty() && tip.is_none() {
        return Ok(Some("a pull request without the branch".to_owned()));
    }
    let names_pull = |url: &Option<String>| {
        url.as_ref().is_some_and(|url| {
            pulls
                .iter()
                .any(|p| url.ends_with(&format!("/pull/{}", p.number)))
        })
    };
    let at_commit = tip.as_ref().map(|(commit, _)| commit) == record.commit_sha.as_ref();
    let why = match record.status {
        RunStatus::Succeeded if tip.is_none() => {
            Some("succeeded, but its branch is not on the remote".to_owned())
        }
        RunStatus::Succeeded if !at_commit => Some(format!(
            "succeeded at {:?}, but its branch is at {:?}",
            record.commit_sha,
            tip.map(|t| t.0)
        )),
        RunStatus::Succeeded if pulls.len() != 1 || !names_pull(&record.pull_request_url) => {
            Some(format!(
                "succeeded with pull request {:?}, and the forge has {} for it",
                record.pull_request_url,
                pulls.len()
            ))
        }
        RunStatus::Failed | RunStatus::Cancelled => {
            let pushed = record.phase(Phase::Push).status == PhaseStatus::Succeeded;
            if record.pull_request_url.is_some() && !names_pull(&record.pull_request_url) {
                Some(format!(
                    "{} records pull request {:?}, which the forge does not have",
                    record.status, record.pull_request_url
                ))
            } else if pushed && !at_commit {
                Some(format!(
                    "{} after pushing {:?}, but its branch is at {:?}",
                    record.status,
                    record.commit_sha,
                    tip.map(|t| t.0)
                ))
            } else {
                None
            }
        }
        RunStatus::NoChanges | RunStatus::NeedsClarification
            if tip.is_some() || !pulls.is_empty() =>
        {
            Some(format!(
                "{} but a branch or pull request exists",
                record.status
            ))
        }
        _ => None,
    };
    Ok(why)
}

impl Soak<'_> {
    /// Counts a fault that landed (`Some(true)`) or missed; `None`: counted later.
    fn tally(&mut self, fault: Fault, landed: Option<bool>) {
        let tally = match landed {
            Some(true) => &mut self.report.faults,
            Some(false) => &mut self.report.missed,
            None => return,
        };
        *tally.entry(format!("{fault:?}")).or_default() += 1;
    }

    /// Waits `how_long`, meanwhile acting on held requests as they arrive and counting the
    /// trips that fired.
    async fn wait(&mut self, how_long: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + how_long;
        loop {
            let mut index = 0;
            while index < self.held.len() {
                match self.held[index].1.arrived() {
                    Arrival::Waiting => index += 1,
                    Arrival::Arrived(path) => {
                        let (fault, held) = self.held.remove(index);
                        let landed = self.kill_while_held(held, &path).await?;
                        self.tally(fault, Some(landed));
                    }
                    Arrival::Never => {
                        let (fault, _) = self.held.remove(index);
                        self.tally(fault, Some(false));
                    }
                }
            }
            let before = self.trips.len();
            self.trips.retain_mut(|trip| trip.try_recv().is_err());
            for _ in self.trips.len()..before {
                self.tally(Fault::ExpireLeaseDuringFinalPersist, Some(true));
            }
            if Instant::now() >= until {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Takes back every armed fault that has not landed, counting it as missed.
    fn disarm(&mut self) {
        self.world.git().gate().disarm();
        self.world.forge.gate().disarm();
        for (fault, held) in std::mem::take(&mut self.held) {
            held.release(true);
            self.tally(fault, Some(false));
        }
        for runner in &self.runners.live {
            runner.relay.disarm_trip();
        }
        for _ in std::mem::take(&mut self.trips) {
            self.tally(Fault::ExpireLeaseDuringFinalPersist, Some(false));
        }
    }

    /// Injects one fault; whether it found something to hit (`None`: known later).
    async fn inject(&mut self, fault: Fault) -> anyhow::Result<Option<bool>> {
        tracing::info!(?fault, "injecting a fault");
        match fault {
            Fault::KillRunner => {
                let index = self.dice.below(usize::MAX);
                self.runners.replace(index, true).await?;
            }
            Fault::TerminateRunner => {
                let index = self.dice.below(usize::MAX);
                self.runners.replace(index, false).await?;
            }
            Fault::StoreRefuses => {
                for runner in &self.runners.live {
                    runner.relay.refuse();
                }
                tokio::time::sleep(self.dice.millis(1_000, 3_000)).await;
                self.runners.restore_all().await?;
            }
            Fault::StoreAnswers503 => {
                for runner in &self.runners.live {
                    runner.relay.answer_503().await?;
                }
                tokio::time::sleep(self.dice.millis(1_000, 3_000)).await;
                self.runners.restore_all().await?;
            }
            Fault::DuplicateMessage => {
                let run = &self.submitted[self.dice.below(self.submitted.len())];
                self.duplicate(run).await?;
            }
            Fault::KillContainer => {
                let containers = running_containers(&self.runners.ids());
                let Some(container) = containers.get(self.dice.below(containers.len().max(1)))
                else {
                    return Ok(Some(false));
                };
                let _ = std::process::Command::new("docker")
                    .args(["kill", container])
                    .output();
            }
            Fault::PartitionRunner => {
                let index = self.busy_runner();
                let outage = self.outage();
                let runner = &self.runners.live[index];
                runner.relay.refuse();
                tokio::time::sleep(outage).await;
                runner.relay.restore().await?;
            }
            Fault::SkewClock => {
                let magnitude = 20 + self.dice.below(40) as i64;
                let skew = if self.dice.coin() {
                    magnitude
                } else {
                    -magnitude
                };
                let index = self.dice.below(self.runners.live.len());
                let mut old = self.runners.live.remove(index);
                old.process.kill();
                drop(old);
                let measured = self.runners.add(Some(skew)).await?.unwrap_or_default();
                self.report.skews.push((skew, measured));
                anyhow::ensure!(
                    (measured - skew).abs() <= 5,
                    "libfaketime did not skew the runner's clock: asked {skew:+} s, its log is {measured:+} s off"
                );
                // A run's lease judged by the skewed clock: one more delivery of a running run.
                let holders = self.watcher.holders();
                if let Some((run_id, _)) = holders.get(self.dice.below(holders.len().max(1))) {
                    if let Some(run) = self.submitted.iter().find(|s| s.run_id == *run_id) {
                        self.duplicate(run).await?;
                    }
                }
            }
            // Armed now; the next push or pull request creation is held, and its runner
            // killed, whenever it comes (see `wait`).
            Fault::KillDuringPush => {
                let held = self
                    .world
                    .git()
                    .gate()
                    .hold_next("POST", "/git-receive-pack");
                self.held.push((fault, held));
                return Ok(None);
            }
            Fault::KillDuringPr => {
                let held = self.world.forge.gate().hold_next("POST", "/pulls");
                self.held.push((fault, held));
                return Ok(None);
            }
            Fault::ExpireLeaseDuringFinalPersist => {
                // The runner's next final write of a run cuts it off from the store and
                // queue for longer than the lease: the lease lapses during the write.
                let forward = self.dice.coin();
                let outage = self.outage();
                let index = self.busy_runner();
                let trip = self.runners.live[index]
                    .relay
                    .trip_on_final_write(forward, outage);
                self.trips.push(trip);
                return Ok(None);
            }
        }
        Ok(Some(true))
    }

    /// A runner holding a running run, when there is one; else any.
    fn busy_runner(&mut self) -> usize {
        let holders = self.watcher.holders();
        match holders.get(self.dice.below(holders.len().max(1))) {
            Some((_, runner_id)) => self.runners.index_of(runner_id),
            None => None,
        }
        .unwrap_or_else(|| self.dice.below(self.runners.live.len()))
    }

    /// How long a runner is cut off: longer than its lease and its message's visibility,
    /// so another runner can take its run over meanwhile.
    fn outage(&mut self) -> Duration {
        Duration::from_secs(LEASE_SECS.max(VISIBILITY_SECS)) + self.dice.millis(3_000, 6_000)
    }

    async fn duplicate(&self, run: &Submitted) -> anyhow::Result<()> {
        let request: RunRequest = serde_json::from_value(run.body.clone())?;
        let message = RunMessage::new(&run.run_id, request).to_json();
        self.world
            .moto
            .sqs()
            .send_message()
            .queue_url(&self.world.queues.url)
            .message_body(String::from_utf8(message)?)
            .send()
            .await
            .context("duplicating a message")?;
        Ok(())
    }

    /// SIGKILLs the runner whose run the held request (to `path`) is for while it waits,
    /// then applies or drops the request.
    async fn kill_while_held(&mut self, held: HeldRequest, path: &str) -> anyhow::Result<bool> {
        let run = self.submitted.iter().find(|s| {
            path.contains(&format!("/{OWNER}/{}.git/", s.repo))
                || path.ends_with(&format!("/{OWNER}/{}/pulls", s.repo))
        });
        let holder = match run {
            Some(run) => self.world.stored_run(&run.run_id).await.ok(),
            None => None,
        };
        let runner = holder
            .and_then(|r| r.runner_id)
            .and_then(|id| self.runners.index_of(&id));
        let apply = self.dice.coin();
        match runner {
            Some(index) => {
                let mut runner = self.runners.live.remove(index);
                runner.process.kill();
                drop(runner);
                held.release(apply);
                self.runners.add(None).await?;
                tracing::info!(%path, apply, "killed the runner while its request was held");
                Ok(true)
            }
            None => {
                held.release(true);
                Ok(false)
            }
        }
    }
}
