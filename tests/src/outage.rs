//! A storage outage on demand: a TCP relay in front of the emulator. Clients are pointed at
//! the relay; [`OutageRelay::refuse`] makes it look as if the service stopped (the port
//! refuses connections and open ones are cut), [`OutageRelay::answer_503`] as if it were
//! overloaded (every request gets `503 Service Unavailable`), [`OutageRelay::lose_answers`]
//! as if the network dropped every answer (requests reach the service and take effect,
//! the client sees its connection cut), and [`OutageRelay::restore`] as if it came back,
//! with its data, on the same address. Stopping moto itself would
//! lose its in-memory buckets and queues, which no real S3 or SQS outage does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the relay does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass bytes both ways.
    Relay,
    /// Refuse new connections and cut open ones.
    Refuse,
    /// Answer every request `503 Service Unavailable`.
    Answer503,
    /// Pass requests on, cut the connection as the answer starts: it never arrives.
    LoseAnswers,
}

/// The relay; stopped on drop.
pub struct OutageRelay {
    address: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
    connections: Arc<AtomicU64>,
}

impl OutageRelay {
    /// A relay on a free loopback port to `upstream` (`http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let (mode, _) = watch::channel(Mode::Relay);
        let relay = OutageRelay {
            address: listener.local_addr()?,
            upstream,
            mode,
            acceptor: Mutex::new(None),
            connections: Arc::new(AtomicU64::new(0)),
        };
        relay.accept_on(listener);
        Ok(relay)
    }

    /// `http://127.0.0.1:PORT` to point clients at.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// The service "stops": the port refuses connections, open ones are cut.
    pub fn refuse(&self) {
        self.mode.send_replace(Mode::Refuse);
        if let Some(acceptor) = self.lock().take() {
            acceptor.abort();
        }
    }

    /// The service is up but overloaded: every request is answered 503.
    pub async fn answer_503(&self) -> anyhow::Result<()> {
        self.mode.send_replace(Mode::Answer503);
        self.listen_again().await
    }

    /// Requests reach the service and take effect, but their answers are lost.
    pub async fn lose_answers(&self) -> anyhow::Result<()> {
        self.mode.send_replace(Mode::LoseAnswers);
        self.listen_again().await
    }

    /// The service is back.
    pub async fn restore(&self) -> anyhow::Result<()> {
        self.mode.send_replace(Mode::Relay);
        self.listen_again().await
    }

    async fn listen_again(&self) -> anyhow::Result<()> {
        if self.lock().is_some() {
            return Ok(());
        }
        // The address was ours a moment ago; rebinding it is what a restarted service does.
        let listener = TcpListener::bind(self.address).await?;
        self.accept_on(listener);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        self.acceptor.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn accept_on(&self, listener: TcpListener) {
        let mode = self.mode.clone();
        let upstream = self.upstream;
        let connections = self.connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(client, upstream, mode.subscribe()));
            }
        });
        *self.lock() = Some(task);
    }
}

impl Drop for OutageRelay {
    fn drop(&mut self) {
        self.refuse();
    }
}

/// One client connection, until it ends or the mode changes.
async fn serve(mut client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let current = *mode.borrow_and_update();
    match current {
        Mode::Refuse => {}
        Mode::Answer503 => {
            let mut request = [0u8; 8192];
            let _ = client.read(&mut request).await;
            let body = "<Error><Code>SlowDown</Code><Message>outage injected by the test</Message></Error>";
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(answer.as_bytes()).await;
        }
        Mode::Relay => {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                // Any change of mode cuts the connection, as a restart would.
                _ = mode.changed() => {}
            }
        }
        Mode::LoseAnswers => {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut from_server, mut to_server) = server.split();
            let (mut from_client, _) = client.split();
            let mut answer = [0u8; 1];
            tokio::select! {
                _ = tokio::io::copy(&mut from_client, &mut to_server) => {}
                // The service answering means it handled the request; drop both ends.
                _ = from_server.read(&mut answer) => {}
                _ = mode.changed() => {}
            }
        }
    }
}
