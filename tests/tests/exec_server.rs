//! The job image's command server (image/specrun-exec-server): the container's main
//! process, which runs every command of a run instead of a Docker exec each. It shares the
//! container with the agent, so these tests play an agent that goes after it.

use specrun_core::state::RunRecord;
use specrun_core::{Phase, PhaseStatus, RunStatus};
use specrun_tests::harness::{job_image, Harness};
use std::process::Command;

type TestResult = anyhow::Result<()>;

fn request(h: &Harness, url: &str, agent: &str) -> specrun_core::request::RunRequest {
    h.request_for_agent(url, "Let members export their data as a CSV file", agent)
}

async fn agent_stdout(h: &Harness, record: &RunRecord, phase: Phase) -> anyhow::Result<String> {
    h.artifact(record, Some(phase), "agent.stdout.log").await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_can_neither_read_write_nor_stop_its_command_server() -> TestResult {
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("server", "# Server\n")?;
    // PID 1 is the server. Its stdin carries the runner's later commands and its stdout
    // the frames the runner believes; the agent runs as the same user.
    let specify = "for f in /proc/1/fd/0 /proc/1/fd/1 /proc/1/environ /proc/1/mem; do \
           if (exec 3<\"$f\") 2>/dev/null; then echo \"opened $f\"; else echo \"refused $f\"; fi; done; \
         if (printf 'X\\000\\000\\000\\0010' >/proc/1/fd/1) 2>/dev/null; then echo 'wrote a frame'; \
           else echo 'refused writing a frame'; fi; \
         kill -KILL 1; kill -TERM 1; kill -INT 1; kill -HUP 1; echo 'signalled 1'; \
         exec specrun-scripted-agent specify \"$1\"";
    h.use_shell_agent("prober", &[("specify", specify)], "")?;
    let record = h.run(request(&h, &url, "prober")).await?;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    // The signals did nothing: the later phases ran through the same server.
    for phase in [Phase::Plan, Phase::Tasks] {
        assert_eq!(
            record.phase(phase).status,
            PhaseStatus::Succeeded,
            "{phase}"
        );
    }
    let said = agent_stdout(&h, &record, Phase::Specify).await?;
    for refused in [
        "refused /proc/1/fd/0",
        "refused /proc/1/fd/1",
        "refused /proc/1/environ",
        "refused /proc/1/mem",
        "refused writing a frame",
        "signalled 1",
    ] {
        assert!(said.contains(refused), "{refused:?} not in:\n{said}");
    }
    assert!(
        !said.contains("opened") && !said.contains("wrote a frame"),
        "{said}"
    );
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_ends_with_its_process_even_when_a_child_keeps_its_output_open() -> TestResult {
    let mut h = Harness::start().await?;
    // Waiting for the output to close would last until the phase's time limit.
    h.config.phase_timeout = std::time::Duration::from_secs(30);
    let url = h.git().create_repo("holder", "# Holder\n")?;
    let tasks = "specrun-scripted-agent tasks && (sleep 600 &) && echo 'the last line'";
    h.use_shell_agent("holder", &[("tasks", tasks)], "")?;
    let record = h.run(request(&h, &url, "holder")).await?;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    let said = agent_stdout(&h, &record, Phase::Tasks).await?;
    assert!(said.ends_with("the last line\n"), "{said:?}");
    h.assert_clean(&record).await
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_and_both_streams_come_through_as_from_an_exec() -> TestResult {
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("codes", "# Codes\n")?;
    let plan = "specrun-scripted-agent plan && printf 'to stdout\\n' && printf 'to stderr\\n' >&2 && exit 7";
    h.use_shell_agent("seven", &[("plan", plan)], "")?;
    let record = h.run(request(&h, &url, "seven")).await?;
    assert_eq!(record.status, RunStatus::Failed);
    let plan = record.phase(Phase::Plan);
    assert_eq!(plan.exit_code, Some(7), "{plan:#?}");
    let stderr = h
        .artifact(&record, Some(Phase::Plan), "agent.stderr.log")
        .await?;
    assert_eq!(stderr, "to stderr\n");
    assert!(agent_stdout(&h, &record, Phase::Plan)
        .await?
        .ends_with("to stdout\n"));
    h.assert_clean(&record).await
}

/// An image derived from the job image whose label says its server speaks another
/// protocol; removed when dropped.
struct ImageWithoutServer(String);

impl ImageWithoutServer {
    fn build() -> anyhow::Result<Self> {
        let tag = format!("specrun-test-no-server:{}", std::process::id());
        let dockerfile = format!(
            "FROM {}\nLABEL io.specrun.exec-server=\"none\"\n",
            job_image()
        );
        let mut build = Command::new("docker")
            .args(["build", "-q", "-t", &tag, "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        use std::io::Write;
        build
            .stdin
            .take()
            .expect("piped")
            .write_all(dockerfile.as_bytes())?;
        anyhow::ensure!(build.wait()?.success(), "docker build failed");
        Ok(ImageWithoutServer(tag))
    }
}

impl Drop for ImageWithoutServer {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_an_image_without_the_server_costs_an_exec_per_command() -> TestResult {
    use specrun_sandbox::docker::calls::counts;
    let mut h = Harness::start().await?;
    let url = h.git().create_repo("either", "# Either\n")?;
    let record = h.run(h.request(&url, "Let members pick a theme")).await?;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    let with_server = counts();
    assert_eq!(with_server.get("create_exec"), None, "{with_server:?}");
    assert_eq!(with_server.get("attach"), Some(&1), "{with_server:?}");

    let image = ImageWithoutServer::build()?;
    h.config.image = image.0.clone();
    let record = h.run(h.request(&url, "Let members pick a font")).await?;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    let both = counts();
    // The version, Spec Kit's init and the three agent phases.
    assert_eq!(both.get("create_exec"), Some(&5), "{both:?}");
    assert_eq!(both.get("attach"), Some(&1), "{both:?}");
    h.assert_clean(&record).await
}
