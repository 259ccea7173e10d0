//! A real RabbitMQ node for one test (Debian's `rabbitmq-server`, installed by
//! scripts/setup.sh), run as a plain process on loopback: its own node name, AMQP and
//! distribution ports, database, logs, config and Erlang cookie, all in a temporary
//! directory. A user with a random password is the only account. Stopped on drop.
//!
//! Every node on the machine shares one `epmd` (Erlang's port mapper, on 127.0.0.1:4369),
//! which Erlang starts with the first node and which outlives it, as it does under any
//! service manager: it is left running, since other tests' nodes may be using it.

use crate::emulator::{free_port, tail};
use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian puts the server script that runs the node in the foreground (the
/// `/usr/sbin` wrapper would switch to the `rabbitmq` user and its fixed paths).
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The user the node is provisioned with.
pub const USER: &str = "specrun";

/// A running RabbitMQ node.
pub struct RabbitMq {
    child: Option<Child>,
    port: u16,
    dist_port: u16,
    password: String,
    node: String,
    dir: tempfile::TempDir,
}

impl RabbitMq {
    /// Starts a node and waits until it accepts AMQP connections. Its ports are free when
    /// chosen, but another process may take one before the node binds it (tests run side
    /// by side): the node is then started again on new ports, a few times.
    pub async fn start() -> anyhow::Result<Self> {
        anyhow::ensure!(
            Path::new(SERVER).exists(),
            "{SERVER} is missing: run scripts/setup.sh (it installs Debian's rabbitmq-server)"
        );
        let mut attempt = 1;
        loop {
            let mut node = Self::configure()?;
            match node.spawn().await {
                Ok(()) => return Ok(node),
                Err(e) if attempt < 3 && lost_a_port(&node.log()) => {
                    tracing::warn!(error = %e, attempt, "rabbitmq-server lost a port; trying new ones");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A node's directory, configuration and ports, not started.
    fn configure() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("specrun-rabbitmq-")
            .tempdir()?;
        let port = free_port()?;
        let dist_port = free_port()?;
        let password = format!("rabbit-{}", uuid::Uuid::now_v7().simple());
        let node = format!("specrun-{port}@localhost");
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!(
                "loopback_users = none\nlisteners.tcp.default = 127.0.0.1:{port}\n\
                 default_user = {USER}\ndefault_pass = {password}\n\
                 default_permissions.configure = .*\ndefault_permissions.read = .*\n\
                 default_permissions.write = .*\n"
            ),
        )?;
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n")?;
        std::fs::write(dir.path().join("rabbitmq-env.conf"), "")?;
        Ok(RabbitMq {
            child: None,
            port,
            dist_port,
            password,
            node,
            dir,
        })
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("stdout.log")
    }

    /// The environment the server and rabbitmqctl share.
    fn env(&self, command: &mut Command) {
        let dir = self.dir.path();
        command
            .env("HOME", dir)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"));
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())?;
        let mut command = Command::new(SERVER);
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.env(&mut command);
        self.child = Some(command.spawn().context("starting rabbitmq-server")?);
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "rabbitmq-server exited ({status}) before listening; its output:\n{}",
                    tail(&self.log(), 40)
                );
            }
            if self.accepts_amqp().await {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "rabbitmq-server did not accept AMQP on 127.0.0.1:{} within {START_TIMEOUT:?}; its output:\n{}",
                    self.port,
                    tail(&self.log(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether the node answers the AMQP handshake with our user.
    async fn accepts_amqp(&self) -> bool {
        let args = amqprs::connection::OpenConnectionArguments::new(
            "127.0.0.1",
            self.port,
            USER,
            &self.password,
        );
        let open = amqprs::connection::Connection::open(&args);
        match tokio::time::timeout(Duration::from_secs(5), open).await {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                true
            }
            _ => false,
        }
    }

    /// The AMQP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user's password (a secret: tests check that it is never shown).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Celery's broker URL for this node, password included (default virtual host).
    pub fn url(&self) -> String {
        format!("amqp://{USER}:{}@127.0.0.1:{}//", self.password, self.port)
    }

    /// Stops the node (SIGTERM: Erlang shuts down cleanly, keeping durable queues and
    /// persistent messages), then starts it again on the same port and database.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn().await
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Messages in `queue`, ready and unacked together (`rabbitmqctl list_queues`); 0 when
    /// the queue does not exist.
    pub fn queue_depth(&self, queue: &str) -> anyhow::Result<u64> {
        let mut command = Command::new(CTL);
        command.args([
            "-q",
            "list_queues",
            "--no-table-headers",
            "name",
            "messages",
        ]);
        self.env(&mut command);
        let output = command.output().context("running rabbitmqctl")?;
        anyhow::ensure!(
            output.status.success(),
            "rabbitmqctl list_queues failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout)?;
        Ok(text
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .find(|(name, _)| name.trim() == queue)
            .and_then(|(_, count)| count.trim().parse().ok())
            .unwrap_or(0))
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a node's log says one of its ports was taken before it could bind it.
fn lost_a_port(log: &Path) -> bool {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.contains("dist_port_already_used") || text.contains("eaddrinuse")
}
