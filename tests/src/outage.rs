//! A storage outage on demand: a TCP relay in front of the emulator. Clients are pointed at
//! the relay; [`OutageRelay::refuse`] makes it look as if the service stopped (the port
//! refuses connections and open ones are cut), [`OutageRelay::answer_503`] as if it were
//! overloaded (every request gets `503 Service Unavailable`), [`OutageRelay::lose_answers`]
//! as if the network dropped every answer (requests reach the service and take effect,
//! the client sees its connection cut), and [`OutageRelay::restore`] as if it came back,
//! with its data, on the same address. [`OutageRelay::trip_on_final_write`] cuts the
//! service off by itself, for a while, the moment a client writes a run.json with a final
//! status (the run's last write), so a test can make a lease lapse exactly then. Stopping
//! moto itself would
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
    mode: Arc<watch::Sender<Mode>>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
    connections: Arc<AtomicU64>,
    trip: Arc<Tripwire>,
}

/// What a run's final write looks like on the wire: run.json (pretty-printed by
/// `store::runs::to_json`) has its top-level `status` right before `status_reason`, which
/// no phase JSON has.
const FINAL_WRITES: [&[u8]; 5] = [
    b"\n  \"status\": \"succeeded\",\n  \"status_reason\"",
    b"\n  \"status\": \"failed\",\n  \"status_reason\"",
    b"\n  \"status\": \"cancelled\",\n  \"status_reason\"",
    b"\n  \"status\": \"no_changes\",\n  \"status_reason\"",
    b"\n  \"status\": \"needs_clarification\",\n  \"status_reason\"",
];

/// An armed trip: whether the tripping request still reaches the service (its answer is
/// lost) or not, how long the service is then cut off, and whom to tell.
struct Trip {
    forward: bool,
    outage: std::time::Duration,
    tell: tokio::sync::oneshot::Sender<()>,
}

#[derive(Default)]
struct Tripwire {
    armed: Mutex<Option<Trip>>,
}

impl Tripwire {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Trip>> {
        self.armed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `window` holds a final run.json write and the trip was armed: then it is
    /// spent, and the answer says whether to forward the request and for how long the
    /// service is cut off.
    fn fires(&self, window: &[u8]) -> Option<(bool, std::time::Duration)> {
        let mut armed = self.lock();
        armed.as_ref()?;
        let hit = FINAL_WRITES
            .iter()
            .any(|needle| window.windows(needle.len()).any(|w| w == *needle));
        if !hit {
            return None;
        }
        let trip = armed.take()?;
        let _ = trip.tell.send(());
        Some((trip.forward, trip.outage))
    }
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
            mode: Arc::new(mode),
            acceptor: Mutex::new(None),
            connections: Arc::new(AtomicU64::new(0)),
            trip: Arc::new(Tripwire::default()),
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

    /// The next write of a run.json with a final status cuts the service off for
    /// `outage` (open connections are cut, new ones closed unanswered), then it is back.
    /// With `forward` the write still reaches the service and takes effect, and only its
    /// answer is lost; without, it never arrives. The receiver completes when it tripped.
    pub fn trip_on_final_write(
        &self,
        forward: bool,
        outage: std::time::Duration,
    ) -> tokio::sync::oneshot::Receiver<()> {
        let (tell, tripped) = tokio::sync::oneshot::channel();
        *self.trip.lock() = Some(Trip {
            forward,
            outage,
            tell,
        });
        tripped
    }

    /// Takes back an armed trip that has not fired.
    pub fn disarm_trip(&self) {
        self.trip.lock().take();
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
        let trip = self.trip.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(client, upstream, mode.clone(), trip.clone()));
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
async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    modes: Arc<watch::Sender<Mode>>,
    trip: Arc<Tripwire>,
) {
    let mut mode = modes.subscribe();
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
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            let tripped = tokio::select! {
                tripped = requests(&mut from_client, &mut to_server, &trip) => tripped,
                _ = tokio::io::copy(&mut from_server, &mut to_client) => return,
                // Any change of mode cuts the connection, as a restart would.
                _ = mode.changed() => return,
            };
            let Some((forward, outage)) = tripped else {
                // The client is done sending: pass the rest of the answers.
                tokio::select! {
                    _ = tokio::io::copy(&mut from_server, &mut to_client) => {}
                    _ = mode.changed() => {}
                }
                return;
            };
            // The service is cut off for everyone from here, for `outage`; this
            // connection's answer is lost.
            modes.send_replace(Mode::Refuse);
            let back = modes.clone();
            tokio::spawn(async move {
                tokio::time::sleep(outage).await;
                back.send_if_modified(|mode| {
                    let cut = *mode == Mode::Refuse;
                    if cut {
                        *mode = Mode::Relay;
                    }
                    cut
                });
            });
            if forward {
                let mut answer = [0u8; 1];
                tokio::select! {
                    _ = tokio::io::copy(&mut from_client, &mut to_server) => {}
                    _ = from_server.read(&mut answer) => {}
                }
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

/// Passes a client's bytes to the service, watching for a final run.json write while a
/// trip is armed; returns the trip's (forward, outage) (the bytes that tripped are
/// forwarded only with `forward`), or `None` when the client is done.
async fn requests(
    from_client: &mut tokio::net::tcp::OwnedReadHalf,
    to_server: &mut tokio::net::tcp::OwnedWriteHalf,
    trip: &Tripwire,
) -> Option<(bool, std::time::Duration)> {
    let longest = FINAL_WRITES.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut buffer = vec![0u8; 16 * 1024];
    // The end of the previous read, so a needle split between two reads is still seen.
    let mut window: Vec<u8> = Vec::new();
    loop {
        let read = from_client.read(&mut buffer).await.ok()?;
        if read == 0 {
            let _ = to_server.shutdown().await;
            return None;
        }
        let chunk = &buffer[..read];
        window.extend_from_slice(chunk);
        if let Some((forward, outage)) = trip.fires(&window) {
            if forward {
                to_server.write_all(chunk).await.ok()?;
            }
            return Some((forward, outage));
        }
        to_server.write_all(chunk).await.ok()?;
        let keep = window.len().saturating_sub(longest);
        window.drain(..keep);
    }
}
