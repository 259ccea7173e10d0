//! The Docker engine, through bollard: check the engine and the image, start one
//! container per run, run each phase as an exec in it with output streamed to a sink, and
//! remove it. Secrets go into each exec's environment, never the container's, so
//! `docker inspect` never shows them.

use super::calls::{timed, Call};
use super::exec_server::ExecSession;
use crate::port::{ExecEnd, ExecSpec, OutputSink, Stream};
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use specrun_core::exec_protocol;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// Labels every job container carries, so that orphans can be found and removed.
pub const LABEL_MANAGED: &str = "io.specrun.managed";
pub const LABEL_RUN: &str = "io.specrun.run-id";
pub const LABEL_RUNNER: &str = "io.specrun.runner-id";

/// What can go wrong talking to Docker.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("the Docker engine is not reachable: {0}")]
    Unreachable(String),
    #[error("the job image {0} is not present on this Docker engine")]
    ImageMissing(String),
    #[error("the job container is gone: {0}")]
    ContainerGone(String),
    #[error("Docker API error while {doing}: {source}")]
    Api {
        doing: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
}

fn api(doing: &'static str) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    move |source| DockerError::Api { doing, source }
}

/// The image as the engine knows it.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub id: String,
    pub digest: Option<String>,
    /// The image's command server speaks a protocol this runner knows
    /// ([`specrun_core::exec_protocol`]): commands go through it, not an exec each.
    pub exec_server: bool,
}

/// How to start a run's container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub run_id: String,
    pub runner_id: String,
    pub mounts: Vec<Mount>,
    pub user: String,
    pub network: specrun_core::agent::Network,
    pub limits: Limits,
    /// Start the image's command server as the container's main process and attach it.
    pub exec_server: bool,
}

/// A host directory bound into the container.
#[derive(Debug, Clone)]
pub struct Mount {
    pub host: PathBuf,
    pub inside: String,
    pub access: Access,
}

/// Whether the container may write a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// Resource limits of a job container.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: i64,
    pub pids: i64,
    pub nano_cpus: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 4 * 1024 * 1024 * 1024,
            pids: 512,
            nano_cpus: 2_000_000_000,
        }
    }
}

/// Who a command runs as, and where.
#[derive(Debug, Clone)]
pub struct Process {
    pub user: String,
    pub workdir: String,
}

/// Which job containers to list.
#[derive(Debug, Clone, Copy)]
pub enum Containers<'a> {
    /// Every job container of specrun's on the engine.
    All,
    /// Those of one run.
    OfRun(&'a str),
    /// Those of one run that one runner started.
    OfRunStartedBy { run: &'a str, runner: &'a str },
}

/// A connected, version-negotiated Docker client.
#[derive(Debug, Clone)]
pub struct DockerClient {
    client: bollard::Docker,
}

impl DockerClient {
    /// Connects (DOCKER_HOST or the local socket) and negotiates the API version (Debian's
    /// engine speaks 1.41 at most), within `timeout`. The negotiation is a request the
    /// engine answers, so it doubles as the check that the engine is there.
    /// `host` is a `unix://` path or an `http://`/`tcp://` address; None means
    /// `DOCKER_HOST` or the local socket.
    pub async fn connect(host: Option<&str>, timeout: Duration) -> Result<Self, DockerError> {
        let unreachable = |e: &dyn std::fmt::Display| DockerError::Unreachable(e.to_string());
        let secs = timeout.as_secs().max(1);
        let client = match host {
            None => bollard::Docker::connect_with_defaults(),
            Some(h) if h.starts_with("unix://") => {
                bollard::Docker::connect_with_unix(h, secs, bollard::API_DEFAULT_VERSION)
            }
            Some(h) => bollard::Docker::connect_with_http(h, secs, bollard::API_DEFAULT_VERSION),
        }
        .map_err(|e| unreachable(&e))?;
        let connect = async {
            let client = timed(Call::Version, client.negotiate_version())
                .await
                .map_err(|e| unreachable(&e))?;
            Ok(DockerClient { client })
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| DockerError::Unreachable(format!("no answer within {timeout:?}")))?
    }

    /// The engine's version, for the environment report.
    pub async fn engine_version(&self) -> Result<String, DockerError> {
        let version = timed(Call::Version, self.client.version())
            .await
            .map_err(api("reading the engine version"))?;
        Ok(format!(
            "{} (API {})",
            version.version.unwrap_or_default(),
            version.api_version.unwrap_or_default()
        ))
    }

    pub async fn image(&self, image: &str) -> Result<ImageInfo, DockerError> {
        match timed(Call::InspectImage, self.client.inspect_image(image)).await {
            Ok(info) => Ok(ImageInfo {
                id: info.id.unwrap_or_default(),
                digest: info.repo_digests.and_then(|d| d.into_iter().next()),
                exec_server: info
                    .config
                    .and_then(|c| c.labels)
                    .and_then(|labels| labels.get(exec_protocol::IMAGE_LABEL).cloned())
                    .is_some_and(|v| v == exec_protocol::PROTOCOL_VERSION),
            }),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(DockerError::ImageMissing(image.to_owned())),
            Err(e) => Err(api("inspecting the job image")(e)),
        }
    }

    /// Creates an internal network (no route out) for one run, with its bridge interface
    /// named `bridge` so the host firewall can refer to it; returns the host's address on
    /// it (the gateway).
    pub async fn create_internal_network(
        &self,
        name: &str,
        bridge: &str,
        run_id: &str,
        runner_id: &str,
    ) -> Result<std::net::IpAddr, DockerError> {
        let request = bollard::models::NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            internal: Some(true),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.name".to_owned(),
                bridge.to_owned(),
            )])),
            labels: Some(HashMap::from([
                (LABEL_MANAGED.to_owned(), "true".to_owned()),
                (LABEL_RUN.to_owned(), run_id.to_owned()),
                (LABEL_RUNNER.to_owned(), runner_id.to_owned()),
            ])),
            ..Default::default()
        };
        timed(Call::CreateNetwork, self.client.create_network(request))
            .await
            .map_err(api("creating the run's network"))?;
        let network = timed(
            Call::InspectNetwork,
            self.client.inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            ),
        )
        .await
        .map_err(api("inspecting the run's network"))?;
        network
            .ipam
            .and_then(|ipam| ipam.config)
            .into_iter()
            .flatten()
            .find_map(|config| config.gateway?.parse().ok())
            .ok_or_else(|| {
                DockerError::Unreachable(format!("network {name} has no gateway address"))
            })
    }

    /// Removes a network; one that is already gone is fine.
    pub async fn remove_network(&self, name: &str) -> Result<(), DockerError> {
        match timed(Call::RemoveNetwork, self.client.remove_network(name)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(api("removing the run's network")(e)),
        }
    }

    /// Creates and starts the run's container, hardened: no capabilities, no new
    /// privileges, read-only root, bounded pids, memory and CPU. With the image's command
    /// server, it is the container's main process (its init, so the agent cannot signal
    /// it), attached before the start so none of what it says is missed.
    pub async fn start_job(
        &self,
        spec: &ContainerSpec,
    ) -> Result<(String, Option<ExecSession>), DockerError> {
        let labels = HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_RUN.to_owned(), spec.run_id.clone()),
            (LABEL_RUNNER.to_owned(), spec.runner_id.clone()),
        ]);
        let binds = spec
            .mounts
            .iter()
            .map(|mount| {
                let access = match mount.access {
                    Access::ReadOnly => "ro",
                    Access::ReadWrite => "rw",
                };
                format!("{}:{}:{access}", mount.host.display(), mount.inside)
            })
            .collect();
        let network = spec.network.docker_mode();
        let host_config = HostConfig {
            binds: Some(binds),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_owned(),
                "rw,nosuid,nodev,size=256m".to_owned(),
            )])),
            pids_limit: Some(spec.limits.pids),
            memory: Some(spec.limits.memory_bytes),
            nano_cpus: Some(spec.limits.nano_cpus),
            network_mode: Some(network.to_owned()),
            init: Some(!spec.exec_server),
            // The server's frames are not logs: kept, they would cost the engine a copy
            // of every byte the agent prints.
            log_config: spec.exec_server.then(|| HostConfigLogConfig {
                typ: Some("none".to_owned()),
                config: None,
            }),
            ..Default::default()
        };
        let cmd = match spec.exec_server {
            true => vec![exec_protocol::SERVER_COMMAND.to_owned()],
            false => vec!["sleep".to_owned(), "infinity".to_owned()],
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(cmd),
            // The server reads requests on stdin; when the runner's connection ends,
            // stdin closes and the server (so the container) ends with it.
            open_stdin: Some(spec.exec_server),
            stdin_once: Some(spec.exec_server),
            attach_stdin: Some(spec.exec_server),
            attach_stdout: Some(spec.exec_server),
            attach_stderr: Some(spec.exec_server),
            user: Some(spec.user.clone()),
            labels: Some(labels),
            host_config: Some(host_config),
            network_disabled: Some(spec.network == specrun_core::agent::Network::None),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let created = timed(
            Call::CreateContainer,
            self.client.create_container(Some(options), body),
        )
        .await
        .map_err(api("creating the job container"))?;
        let session = match spec.exec_server {
            true => match self.attach(&created.id).await {
                Ok(session) => Some(session),
                Err(e) => {
                    let _ = self.remove(&created.id).await;
                    return Err(e);
                }
            },
            false => None,
        };
        if let Err(e) = timed(
            Call::StartContainer,
            self.client.start_container(
                created.id.as_str(),
                None::<bollard::query_parameters::StartContainerOptions>,
            ),
        )
        .await
        {
            let _ = self.remove(&created.id).await;
            return Err(api("starting the job container")(e));
        }
        Ok((created.id, session))
    }

    /// Attaches the container's stdin and stdout: its command server's session.
    async fn attach(&self, container: &str) -> Result<ExecSession, DockerError> {
        let options = AttachContainerOptionsBuilder::new()
            .stream(true)
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .build();
        let attached = timed(
            Call::Attach,
            self.client.attach_container(container, Some(options)),
        )
        .await
        .map_err(api("attaching the job container's command server"))?;
        Ok(ExecSession::new(attached.output, attached.input))
    }

    /// Runs one command to its end (or `limit`), streaming its output into `sink`.
    pub async fn exec(
        &self,
        container: &str,
        process: &Process,
        spec: &ExecSpec,
        sink: &mut dyn OutputSink,
        limit: Duration,
    ) -> Result<ExecEnd, DockerError> {
        let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let options = CreateExecOptions {
            attach_stdin: Some(false),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            env: Some(env),
            cmd: Some(spec.argv.clone()),
            user: Some(process.user.clone()),
            working_dir: Some(process.workdir.clone()),
            ..Default::default()
        };
        let exec = self
            .when_running(container, || {
                timed(
                    Call::CreateExec,
                    self.client.create_exec(container, options.clone()),
                )
            })
            .await
            .map_err(|e| self.gone_or(e, container, "creating an exec"))?;
        let start = || {
            let options = StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: None,
            };
            timed(
                Call::StartExec,
                self.client.start_exec(&exec.id, Some(options)),
            )
        };
        let started = self
            .when_running(container, start)
            .await
            .map_err(api("starting an exec"))?;
        let StartExecResults::Attached { mut output, .. } = started else {
            return Err(DockerError::ContainerGone(
                "exec started detached".to_owned(),
            ));
        };
        let pump = async {
            while let Some(item) = output.next().await {
                let (stream, bytes) = match item.map_err(api("reading exec output"))? {
                    LogOutput::StdErr { message } => (Stream::Stderr, message),
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        (Stream::Stdout, message)
                    }
                    LogOutput::StdIn { .. } => continue,
                };
                sink.write(stream, &bytes).await.map_err(|e| {
                    DockerError::ContainerGone(format!("writing the phase log failed: {e}"))
                })?;
            }
            Ok::<(), DockerError>(())
        };
        match tokio::time::timeout(limit, pump).await {
            Err(_) => return Ok(ExecEnd::TimedOut),
            Ok(result) => result?,
        }
        let inspected = timed(Call::InspectExec, self.client.inspect_exec(&exec.id))
            .await
            .map_err(api("reading the exec's exit code"))?;
        match inspected.exit_code {
            Some(code) => Ok(ExecEnd::Exited(code)),
            None => Err(DockerError::ContainerGone(
                "the command ended without an exit code; the container was probably stopped"
                    .to_owned(),
            )),
        }
    }

    fn gone_or(
        &self,
        e: bollard::errors::Error,
        container: &str,
        doing: &'static str,
    ) -> DockerError {
        match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                message,
            } => DockerError::ContainerGone(format!("{container}: {message}")),
            // What the engine says when asked to pause a container that died.
            bollard::errors::Error::DockerResponseServerError {
                status_code: 500,
                message,
            } if message.contains("stopped container") || message.contains("not running") => {
                DockerError::ContainerGone(format!("{container}: {message}"))
            }
            other => api(doing)(other),
        }
    }

    /// Freezes every process in the container (the cgroup freezer): nothing the agent
    /// left running can act while the runner reads what it wrote.
    ///
    /// The kernel can fail a freeze while a process sits in an uninterruptible write (an
    /// agent filling its tmpfs quota does exactly that); runc then answers "unable to
    /// freeze", and a moment later the same freeze succeeds, so it is tried a few times.
    pub async fn freeze(&self, container: &str) -> Result<(), DockerError> {
        let mut attempt = 0;
        loop {
            match timed(Call::Pause, self.client.pause_container(container)).await {
                Ok(()) => return Ok(()),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 500,
                    message,
                }) if message.contains("unable to freeze") && attempt < 5 => {
                    attempt += 1;
                    tracing::info!(%container, attempt, "the freeze did not take; trying again");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => return Err(self.gone_or(e, container, "freezing the job container")),
            }
        }
    }

    /// Lets a frozen container's processes run again, for the next agent phase: one
    /// unpause. (When the engine's own flag lags behind, the exec that follows is refused
    /// and [`DockerClient::when_running`] waits it out.)
    pub async fn thaw(&self, container: &str) -> Result<(), DockerError> {
        match timed(Call::Unpause, self.client.unpause_container(container)).await {
            Ok(()) => Ok(()),
            // 500 "not paused": the engine caught up on its own.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 500,
                message,
            }) if message.contains("not paused") => Ok(()),
            Err(e) => Err(self.gone_or(e, container, "thawing the job container")),
        }
    }

    /// Runs `request` (an exec's create or start); when the engine refuses it because it
    /// still records the container as paused, waits until it records it running and asks
    /// once more.
    async fn when_running<T, F, Fut>(
        &self,
        container: &str,
        request: F,
    ) -> Result<T, bollard::errors::Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, bollard::errors::Error>>,
    {
        match request().await {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("paused") => {
                tracing::info!(%container, "the engine still records the container as paused; waiting for it");
                if let Err(e) = self.wait_thawed(container).await {
                    tracing::warn!(%container, error = %e, "the container did not thaw");
                }
                request().await
            }
            other => other,
        }
    }

    /// Waits until the engine records the container as running, not paused.
    ///
    /// The engine records "paused" from containerd's events, which can arrive after the
    /// unpause answered (Docker 20.10 under load): until the engine itself says the
    /// container runs, it refuses execs, so this waits for that and unpauses again if
    /// the late event put the flag back.
    async fn wait_thawed(&self, container: &str) -> Result<(), DockerError> {
        for attempt in 0..40 {
            if attempt % 10 == 0 {
                match timed(Call::Unpause, self.client.unpause_container(container)).await {
                    Ok(()) => {}
                    // 500 "not paused": the engine caught up on its own.
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 500,
                        message,
                    }) if message.contains("not paused") => {}
                    Err(e) => return Err(self.gone_or(e, container, "thawing the job container")),
                }
            }
            let state = self.state(container, "thawing the job container").await?;
            if state.paused != Some(true) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(DockerError::ContainerGone(format!(
            "{container} is still paused 2 s after it was thawed"
        )))
    }

    /// The host pid of the container's init (for its cgroup).
    pub async fn init_pid(&self, container: &str) -> Result<i64, DockerError> {
        let state = self
            .state(container, "reading the job container's pid")
            .await?;
        Ok(state.pid.unwrap_or_default())
    }

    /// The container's state as the engine records it.
    async fn state(
        &self,
        container: &str,
        doing: &'static str,
    ) -> Result<bollard::models::ContainerState, DockerError> {
        let inspected = timed(
            Call::InspectContainer,
            self.client.inspect_container(
                container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            ),
        )
        .await
        .map_err(|e| self.gone_or(e, container, doing))?;
        Ok(inspected.state.unwrap_or_default())
    }

    /// Kills every process in the container (frozen or not) and waits until none is
    /// left: its init dies, and the kernel kills the rest of its PID namespace with it.
    pub async fn stop_all(&self, container: &str) -> Result<(), DockerError> {
        let killed = timed(
            Call::Kill,
            self.client.kill_container(
                container,
                None::<bollard::query_parameters::KillContainerOptions>,
            ),
        )
        .await;
        match killed {
            Ok(()) => {}
            // 409: not running any more, which is what this wants.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {}
            Err(e) => return Err(self.gone_or(e, container, "stopping the job container")),
        }
        self.wait_stopped(container, Duration::from_secs(5)).await
    }

    /// Waits (one request the engine answers when it happens) until the container no
    /// longer runs; at most `limit`.
    async fn wait_stopped(&self, container: &str, limit: Duration) -> Result<(), DockerError> {
        let options = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut answers = Box::pin(self.client.wait_container(container, Some(options)));
        let waited = tokio::time::timeout(limit, timed(Call::Wait, answers.next())).await;
        match waited {
            Err(_) => Err(DockerError::ContainerGone(format!(
                "{container} still runs {limit:?} after it was killed"
            ))),
            // The answer comes with the container's exit; a non-zero exit (137 when
            // killed) is an error to bollard, and a stop all the same.
            Ok(None | Some(Ok(_)))
            | Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { .. }))) => Ok(()),
            Ok(Some(Err(e))) => {
                Err(self.gone_or(e, container, "waiting for the job container to stop"))
            }
        }
    }

    /// Force-removes a container and its anonymous volumes; an already-gone one is fine.
    pub async fn remove(&self, container: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match timed(
            Call::Remove,
            self.client.remove_container(container, Some(options)),
        )
        .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // Someone else (the stop watcher) is removing it already: wait until it is gone.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => self.wait_gone(container).await,
            Err(e) => Err(api("removing the job container")(e)),
        }
    }

    async fn wait_gone(&self, container: &str) -> Result<(), DockerError> {
        for _ in 0..100 {
            let inspected = timed(
                Call::InspectContainer,
                self.client.inspect_container(
                    container,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                ),
            )
            .await;
            match inspected {
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok(()),
                Err(e) => return Err(api("waiting for the job container's removal")(e)),
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Err(DockerError::ContainerGone(format!(
            "{container} is still being removed after 10 s"
        )))
    }

    /// The run ids of every specrun job container on this engine, each once.
    pub async fn runs_with_containers(&self) -> Result<Vec<String>, DockerError> {
        let list = self
            .list_labelled(vec![format!("{LABEL_MANAGED}=true")])
            .await?;
        let mut runs: Vec<String> = list
            .into_iter()
            .filter_map(|c| c.labels?.get(LABEL_RUN).cloned())
            .collect();
        runs.sort();
        runs.dedup();
        Ok(runs)
    }

    /// Every container, running or not, carrying all of `labels` (`key=value`).
    async fn list_labelled(
        &self,
        labels: Vec<String>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&HashMap::from([("label".to_owned(), labels)]))
            .build();
        timed(
            Call::ListContainers,
            self.client.list_containers(Some(options)),
        )
        .await
        .map_err(api("listing job containers"))
    }

    /// IDs of the job containers `which` names, running or not.
    pub async fn containers(&self, which: Containers<'_>) -> Result<Vec<String>, DockerError> {
        let labels = match which {
            Containers::All => vec![format!("{LABEL_MANAGED}=true")],
            Containers::OfRun(run) => vec![format!("{LABEL_RUN}={run}")],
            Containers::OfRunStartedBy { run, runner } => vec![
                format!("{LABEL_RUN}={run}"),
                format!("{LABEL_RUNNER}={runner}"),
            ],
        };
        let list = self.list_labelled(labels).await?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }
}
