//! The job port's freeze contract on the real engine (`sandbox/src/port.rs`): when
//! `Job::exec` returns, nothing the command left behind runs until the next exec, which
//! lets it run again; after `Job::stop_all` it never runs again. The Docker job freezes
//! through the container's own cgroup freezer where it can (`docker/freezer.rs`), else
//! through the engine's pause: either way these hold.

use specrun_core::agent::Network;
use specrun_core::redact::Redactor;
use specrun_sandbox::docker::Limits;
use specrun_sandbox::{
    DockerSandbox, ExecEnd, ExecSpec, Job, JobRequest, OutputSink, Sandbox, Stream,
};
use specrun_tests::harness::{job_image, require_image};
use std::collections::BTreeMap;
use std::time::Duration;

type TestResult = anyhow::Result<()>;

/// Keeps nothing of a command's output.
struct Discard;

#[async_trait::async_trait]
impl OutputSink for Discard {
    async fn write(&mut self, _stream: Stream, _bytes: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
}

async fn exec(job: &dyn Job, script: &str) -> anyhow::Result<ExecEnd> {
    let spec = ExecSpec {
        argv: vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
        env: job.base_env(),
    };
    Ok(job
        .exec(&spec, &mut Discard, Duration::from_secs(60))
        .await?)
}

/// How many ticks the agent's background process has written so far.
fn ticks(job: &dyn Job) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(job.workspace().home.join("ticks"))?;
    Ok(text.lines().count())
}

/// The tick count stays the same for a while: nothing is ticking.
async fn assert_still(job: &dyn Job, when: &str) -> TestResult {
    let before = ticks(job)?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = ticks(job)?;
    assert_eq!(
        after, before,
        "the process the agent left ticked {when} ({before} ticks, then {after})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_command_leaves_running_is_frozen_between_commands_and_stopped_for_good(
) -> TestResult {
    require_image().await?;
    let work = tempfile::tempdir()?;
    let sandbox = DockerSandbox {
        docker_host: None,
        docker_timeout: Duration::from_secs(60),
        work_root: work.path().to_path_buf(),
        workspace_quota_bytes: None,
        limits: Limits::default(),
    };
    let request = JobRequest {
        run_id: format!("freeze-{}", uuid::Uuid::now_v7().simple()),
        runner_id: "freeze-test".to_owned(),
        image: job_image(),
        network: Network::None,
        egress: None,
        home_files: BTreeMap::new(),
        host_service: None,
    };
    let job = sandbox.create(request, &mut |_| {}).await?;
    let result = async {
        job.workspace().hand_to_agent()?;
        // A background process that outlives its command, ticking every 10 ms.
        let ticker = "(while :; do echo tick >> \"$HOME/ticks\"; sleep 0.01; done) \
                      </dev/null >/dev/null 2>&1 & \
                      while [ ! -s \"$HOME/ticks\" ]; do sleep 0.01; done";
        assert_eq!(exec(&*job, ticker).await?, ExecEnd::Exited(0));
        assert_still(&*job, "after its command returned").await?;

        // The next command lets it run again: this one ends once it has ticked.
        let wait_for_a_tick = "n=$(wc -l < \"$HOME/ticks\"); \
                               while [ \"$(wc -l < \"$HOME/ticks\")\" -eq \"$n\" ]; do sleep 0.01; done";
        assert_eq!(exec(&*job, wait_for_a_tick).await?, ExecEnd::Exited(0));
        assert_still(&*job, "after the second command returned").await?;

        job.stop_all().await?;
        assert_still(&*job, "after stop_all").await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let teardown = job.tear_down(&Redactor::new(Vec::<String>::new())).await;
    result?;
    assert!(
        teardown.problems.is_empty(),
        "the job was not removed cleanly: {:?}",
        teardown.problems
    );
    Ok(())
}
