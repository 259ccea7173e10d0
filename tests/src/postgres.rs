//! A real PostgreSQL server for one test (Debian's `postgresql`, installed by
//! scripts/setup.sh): a fresh cluster in a temporary directory, listening on a free
//! loopback port (and a private socket directory), with a password-protected user and
//! database `celery`. Stopped and removed on drop. As root, the server runs as the
//! `postgres` system user, since PostgreSQL refuses to run as root.

use crate::emulator::{free_port, tail};
use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The role and database the tests use.
pub const USER: &str = "celery";

/// A running PostgreSQL cluster.
pub struct Postgres {
    bin: PathBuf,
    port: u16,
    password: String,
    dir: tempfile::TempDir,
}

/// The newest `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("/usr/lib/postgresql is missing: run scripts/setup.sh (it installs Debian's postgresql)")?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no PostgreSQL server binaries under /usr/lib/postgresql")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

impl Postgres {
    /// Creates a cluster and starts it.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("specrun-postgres-")
            .tempdir()?;
        let password = format!("pg-{}", uuid::Uuid::now_v7().simple());
        let pgdata = dir.path().join("data");
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password)?;
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
            anyhow::ensure!(status.success(), "chown to the postgres user failed");
        }
        let postgres = Postgres {
            bin,
            port: free_port()?,
            password,
            dir,
        };
        postgres.run(
            "initdb",
            &[
                "-D".as_ref(),
                pgdata.as_os_str(),
                "-U".as_ref(),
                USER.as_ref(),
                "--auth-local=trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                "--pwfile".as_ref(),
                pwfile.as_os_str(),
            ],
        )?;
        std::fs::remove_file(&pwfile)?;
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}",
            postgres.port,
            postgres.dir.path().display()
        );
        postgres.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                pgdata.as_os_str(),
                "-l".as_ref(),
                postgres.log().as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "start".as_ref(),
            ],
        )?;
        postgres.run(
            "createdb",
            &[
                "-h".as_ref(),
                postgres.dir.path().as_os_str(),
                "-p".as_ref(),
                postgres.port.to_string().as_ref(),
                "-U".as_ref(),
                USER.as_ref(),
                USER.as_ref(),
            ],
        )?;
        Ok(postgres)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Runs one of the server's programs, as `postgres` when we are root.
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        let path = self.bin.join(program);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .current_dir(self.dir.path())
            .output()
            .with_context(|| format!("running {}", path.display()))?;
        if !output.status.success() {
            bail!(
                "{program} failed ({}): {}{}\nserver log:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                tail(&self.log(), 20)
            );
        }
        Ok(())
    }

    /// The password of [`USER`] (a secret: tests check that it is never shown).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Celery's result backend URL for this server, password included. The driver is
    /// named: SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3.
    pub fn celery_url(&self) -> String {
        format!(
            "db+postgresql+psycopg2://{USER}:{}@127.0.0.1:{}/{USER}",
            self.password, self.port
        )
    }

    /// A client on the database.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let url = format!(
            "postgresql://{USER}:{}@127.0.0.1:{}/{USER}",
            self.password, self.port
        );
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    fn stop(&self) {
        let pgdata = self.dir.path().join("data");
        if Path::new(&pgdata).exists() {
            let _ = self.run(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    pgdata.as_os_str(),
                    "-m".as_ref(),
                    "immediate".as_ref(),
                    "-t".as_ref(),
                    "20".as_ref(),
                    "stop".as_ref(),
                ],
            );
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        // Let the server's files go before the directory is removed.
        std::thread::sleep(Duration::from_millis(50));
    }
}
