//! The per-run model gateway. The agent in the job container calls it over plain HTTP
//! with a run-scoped token (random, valid for this run only and only while it runs);
//! the gateway checks the token, lets through only the model API's own calls
//! ([`ModelApi::allows`]), swaps in the real key it holds, forwards to the configured
//! upstream (TLS for `https`), and streams the answer back unchanged while reading the
//! token usage off the wire ([`specrun_core::model_usage`]). Usage is kept per phase and
//! per run; once a budget is spent, further calls are refused with an error in the API's
//! own shape, which the agent's CLI shows.
//!
//! The real key never enters the container: the agent holds only the token, which is
//! worthless outside this run's network and after the run ([`ModelGateway::close`]).

mod forward;
mod meter;

use specrun_core::model_api::ModelApi;
use specrun_core::model_usage::{Budget, BudgetSpent, PriceTable, Usage};
use specrun_core::Phase;
use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::task::JoinHandle;

/// What one run's gateway forwards to, with which key, under which budget.
#[derive(Clone)]
pub struct GatewayConfig {
    pub api: ModelApi,
    /// The API's base URL, e.g. `https://api.openai.com`; request paths are appended.
    pub upstream: String,
    /// The real API key; it stays in the runner.
    pub api_key: String,
    pub prices: PriceTable,
    pub budget: Budget,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("api", &self.api)
            .field("upstream", &self.upstream)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// Starting the gateway failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("the model gateway's upstream {0:?} must be an http:// or https:// URL")]
    Upstream(String),
    #[error("the model gateway could not make its token: {0}")]
    Token(#[source] std::io::Error),
    #[error("the model gateway's HTTP client: {0}")]
    Client(String),
    #[error("the model gateway could not listen on {address}: {source}")]
    Listen {
        address: IpAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the gateway has seen: usage per phase and per run, the last call's time.
#[derive(Debug)]
struct Ledger {
    phase: Option<Phase>,
    phases: BTreeMap<Phase, Usage>,
    run: Usage,
    spent: Option<BudgetSpent>,
    last_activity: Instant,
}

pub(crate) struct Shared {
    pub(crate) config: GatewayConfig,
    token: String,
    open: AtomicBool,
    ledger: Mutex<Ledger>,
    pub(crate) client: reqwest::Client,
}

impl Shared {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `token` is this run's and the run is still going.
    pub(crate) fn admits(&self, token: Option<&str>) -> bool {
        self.open.load(Ordering::SeqCst)
            && token.is_some_and(|t| specrun_core::model_api::same_secret(t, &self.token))
    }

    /// The budget a call would overrun, if one is spent.
    pub(crate) fn spent(&self) -> Option<BudgetSpent> {
        let mut ledger = self.ledger();
        if ledger.spent.is_none() {
            let phase = ledger
                .phase
                .and_then(|p| ledger.phases.get(&p).cloned())
                .unwrap_or_default();
            ledger.spent = self.config.budget.spent(&phase, &ledger.run);
        }
        ledger.spent.clone()
    }

    /// The agent did something: a call, or bytes of an answer.
    pub(crate) fn touch(&self) {
        self.ledger().last_activity = Instant::now();
    }

    /// Records one forwarded call's answer.
    pub(crate) fn record(&self, answer: &specrun_core::model_usage::AnswerUsage) {
        let prices = &self.config.prices;
        let mut ledger = self.ledger();
        ledger.run.add_answer(answer, prices);
        if let Some(phase) = ledger.phase {
            ledger
                .phases
                .entry(phase)
                .or_default()
                .add_answer(answer, prices);
        }
        ledger.last_activity = Instant::now();
        tracing::debug!(target: "specrun::gateway", model = ?answer.model, tokens = ?answer.tokens, "model call metered");
    }
}

/// One run's gateway. Listening starts with [`ModelGateway::listen`] (on the run
/// network's host address) and ends with [`ModelGateway::close`] or the drop.
pub struct ModelGateway {
    shared: Arc<Shared>,
    listening: Mutex<Option<(SocketAddr, JoinHandle<()>)>>,
}

impl ModelGateway {
    /// A gateway for one run, with a fresh token; not listening yet.
    pub fn new(config: GatewayConfig) -> Result<ModelGateway, GatewayError> {
        let upstream = config.upstream.trim_end_matches('/').to_owned();
        if !(upstream.starts_with("http://") || upstream.starts_with("https://"))
            || upstream.contains(char::is_whitespace)
        {
            return Err(GatewayError::Upstream(config.upstream));
        }
        // reqwest takes the process's rustls provider; ring unless the process chose one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(15))
            .build()
            .map_err(|e| GatewayError::Client(e.to_string()))?;
        Ok(ModelGateway {
            shared: Arc::new(Shared {
                config: GatewayConfig { upstream, ..config },
                token: new_token().map_err(GatewayError::Token)?,
                open: AtomicBool::new(true),
                ledger: Mutex::new(Ledger {
                    phase: None,
                    phases: BTreeMap::new(),
                    run: Usage::default(),
                    spent: None,
                    last_activity: Instant::now(),
                }),
                client,
            }),
            listening: Mutex::new(None),
        })
    }

    /// The run-scoped token the agent presents instead of a key.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    pub fn api(&self) -> ModelApi {
        self.shared.config.api
    }

    /// Starts serving on `bind` at a free port; returns the address.
    pub async fn listen(&self, bind: IpAddr) -> Result<SocketAddr, GatewayError> {
        let failed = |source| GatewayError::Listen {
            address: bind,
            source,
        };
        let listener = tokio::net::TcpListener::bind((bind, 0))
            .await
            .map_err(failed)?;
        let address = listener.local_addr().map_err(failed)?;
        let task = tokio::spawn(forward::serve(listener, self.shared.clone()));
        if let Some((_, old)) = self
            .listening
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace((address, task))
        {
            old.abort();
        }
        Ok(address)
    }

    /// `http://ADDRESS` once listening.
    pub fn url(&self) -> Option<String> {
        self.listening
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(address, _)| format!("http://{address}"))
    }

    /// Calls from now on count for `phase` (and the run).
    pub fn begin_phase(&self, phase: Phase) {
        let mut ledger = self.shared.ledger();
        ledger.phase = Some(phase);
        ledger.last_activity = Instant::now();
    }

    /// What `phase`'s calls used (nothing, if it made none).
    pub fn phase_usage(&self, phase: Phase) -> Usage {
        self.shared
            .ledger()
            .phases
            .get(&phase)
            .cloned()
            .unwrap_or_default()
    }

    /// What the whole run's calls used.
    pub fn run_usage(&self) -> Usage {
        self.shared.ledger().run.clone()
    }

    /// The budget that was found spent (calls have been refused since), if any.
    pub fn spent(&self) -> Option<BudgetSpent> {
        self.shared.ledger().spent.clone()
    }

    /// When the agent last called a model or received bytes of an answer.
    pub fn last_activity(&self) -> Instant {
        self.shared.ledger().last_activity
    }

    /// Ends the run's access: the token is refused from now on and the gateway stops
    /// listening.
    pub fn close(&self) {
        self.shared.open.store(false, Ordering::SeqCst);
        if let Some((_, task)) = self
            .listening
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl Drop for ModelGateway {
    fn drop(&mut self) {
        self.close();
    }
}

/// 32 random bytes from the kernel, hex: `specrun-gw-<64 hex>`.
fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("specrun-gw-{hex}"))
}
