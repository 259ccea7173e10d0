//! The plumbing every test server shares: an HTTP/1.1 hyper server on its own thread, with
//! its own current-thread tokio runtime, answering each request with a handler closure, and
//! stopped when dropped.
//!
//! Its own thread and runtime let a server work from plain `#[test]`s and `#[tokio::test]`s
//! alike, and keep it answering while a test blocks its own runtime (for example on a
//! `docker exec`).

use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

/// The response every handler produces.
pub type HttpResponse = Response<Full<Bytes>>;

/// A handler with its future boxed, so the serving code is not generic over it.
type BoxedHandler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = HttpResponse> + Send>> + Send + Sync,
>;

/// An HTTP server running on its own thread; stops (and joins the thread) when dropped.
pub struct HttpThread {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpThread {
    /// Binds `addr` (port 0: one the OS chooses) and serves on it; see [`Self::start`].
    pub fn bind<F, Fut>(addr: SocketAddr, name: &str, handler: F) -> anyhow::Result<Self>
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HttpResponse> + Send + 'static,
    {
        let listener =
            StdTcpListener::bind(addr).with_context(|| format!("{name}: binding {addr}"))?;
        Self::start(listener, name, handler)
    }

    /// Serves `listener` on a new thread called `name` (also the prefix of its error lines
    /// on stderr), answering every request with `handler`; returns once the runtime is up.
    pub fn start<F, Fut>(listener: StdTcpListener, name: &str, handler: F) -> anyhow::Result<Self>
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HttpResponse> + Send + 'static,
    {
        listener
            .set_nonblocking(true)
            .with_context(|| format!("{name}: making the listener non-blocking"))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("{name}: reading the listener's address"))?;
        let handler: BoxedHandler = Arc::new(move |req| Box::pin(handler(req)));
        let (shutdown, shutdown_rx) = oneshot::channel();
        let thread = spawn_server_thread(listener, name, handler, shutdown_rx)?;
        Ok(Self {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpThread {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the thread running the accept loop on its own current-thread runtime, and
/// waits until the runtime is up (the runtime is created, used and dropped on that thread).
fn spawn_server_thread(
    listener: StdTcpListener,
    name: &str,
    handler: BoxedHandler,
    shutdown: oneshot::Receiver<()>,
) -> anyhow::Result<JoinHandle<()>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread_name = name.to_owned();
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let (runtime, listener) = match server_runtime(listener) {
                Ok(started) => started,
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            runtime.block_on(accept_loop(listener, &thread_name, handler, shutdown));
        })
        .with_context(|| format!("spawning the {name} thread"))?;
    ready_rx
        .recv()
        .with_context(|| format!("the {name} thread died while starting"))?
        .with_context(|| format!("starting {name}"))?;
    Ok(thread)
}

/// Builds the server's runtime and registers the listener with it.
fn server_runtime(
    listener: StdTcpListener,
) -> anyhow::Result<(tokio::runtime::Runtime, tokio::net::TcpListener)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the server's runtime")?;
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(listener).context("registering the listener")?
    };
    Ok((runtime, listener))
}

/// Accepts connections until `shutdown` fires (or its sender is dropped).
async fn accept_loop(
    listener: tokio::net::TcpListener,
    name: &str,
    handler: BoxedHandler,
    mut shutdown: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, name.to_owned(), Arc::clone(&handler)));
                }
                Err(err) => eprintln!("{name}: accept failed: {err}"),
            },
        }
    }
}

/// Serves HTTP/1.1 requests on one connection.
async fn serve_connection(stream: tokio::net::TcpStream, name: String, handler: BoxedHandler) {
    let service = hyper::service::service_fn(move |req| {
        let response = handler(req);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    if let Err(err) = conn.await {
        eprintln!("{name}: connection error: {err}");
    }
}

/// Holds one request a test server received until the test lets it go: how a test acts
/// at the exact moment a client is in the middle of a call (a push, a pull request), for
/// example by killing the client. Servers call [`RequestGate::pass`] once they have read a
/// request's body and before they act on it.
#[derive(Default)]
pub struct RequestGate {
    armed: std::sync::Mutex<Option<Armed>>,
}

struct Armed {
    method: String,
    path_suffix: String,
    arrived: oneshot::Sender<String>,
    release: oneshot::Receiver<bool>,
}

/// Where a held request stands.
pub enum Arrival {
    /// Not yet.
    Waiting,
    /// It arrived, for this path, and waits for the test's word.
    Arrived(String),
    /// It never will: the gate was disarmed or armed again.
    Never,
}

/// The test's end of an armed gate: learns when the request arrived, then lets it go.
pub struct HeldRequest {
    arrived: oneshot::Receiver<String>,
    release: Option<oneshot::Sender<bool>>,
}

impl RequestGate {
    fn armed(&self) -> std::sync::MutexGuard<'_, Option<Armed>> {
        self.armed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds the next `method` request whose path ends with `path_suffix` (replacing any
    /// earlier arming that caught nothing).
    pub fn hold_next(&self, method: &str, path_suffix: &str) -> HeldRequest {
        let (arrived_tx, arrived) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        *self.armed() = Some(Armed {
            method: method.to_owned(),
            path_suffix: path_suffix.to_owned(),
            arrived: arrived_tx,
            release: release_rx,
        });
        HeldRequest {
            arrived,
            release: Some(release),
        }
    }

    /// Catches nothing more.
    pub fn disarm(&self) {
        self.armed().take();
    }

    /// Called by the server for every request: returns at once unless the gate is armed
    /// for this one; then waits for the test's word. `true`: act on the request as usual;
    /// `false`: drop it unanswered by the backend (the caller answers 503).
    pub async fn pass(&self, method: &str, path: &str) -> bool {
        let armed = {
            let mut guard = self.armed();
            match guard.as_ref() {
                Some(a) if a.method == method && path.ends_with(&a.path_suffix) => guard.take(),
                _ => None,
            }
        };
        let Some(armed) = armed else {
            return true;
        };
        let _ = armed.arrived.send(path.to_owned());
        // A test that dropped its end lets the request through.
        armed.release.await.unwrap_or(true)
    }
}

impl HeldRequest {
    /// Whether the held request has arrived (without waiting).
    pub fn arrived(&mut self) -> Arrival {
        match self.arrived.try_recv() {
            Ok(path) => Arrival::Arrived(path),
            Err(oneshot::error::TryRecvError::Empty) => Arrival::Waiting,
            Err(oneshot::error::TryRecvError::Closed) => Arrival::Never,
        }
    }

    /// Lets the held request go on (`apply`) or drops it.
    pub fn release(mut self, apply: bool) {
        if let Some(release) = self.release.take() {
            let _ = release.send(apply);
        }
    }
}
