//! Sending metrics (`core::metrics` says which and how they read): StatsD over UDP, fire
//! and forget, and CloudWatch EMF lines to stdout or a file, written by a thread of their
//! own from a bounded channel. Neither ever blocks or fails a run: a full channel or an
//! unreachable StatsD drops the value.

use crate::config::{EmfTarget, MetricsConfig};
use specrun_core::metrics::{emf_line, statsd_line, Metric, TagStyle};
use std::io::Write as _;
use std::net::UdpSocket;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

/// EMF lines waiting to be written; past this, new ones are dropped.
const EMF_BACKLOG: usize = 4096;

/// Where metric values go.
pub trait MetricSink: Send + Sync {
    fn emit(&self, metrics: &[Metric]);
}

/// The runner's sinks, as configured.
#[derive(Default)]
pub struct Metrics {
    sinks: Vec<Box<dyn MetricSink>>,
}

impl Metrics {
    /// The sinks `config` names; one that cannot be set up is logged and left out.
    pub fn from_config(config: &MetricsConfig) -> Self {
        let mut sinks: Vec<Box<dyn MetricSink>> = Vec::new();
        if let Some(addr) = &config.statsd {
            match StatsdSink::new(addr, &config.prefix, config.tags) {
                Ok(sink) => sinks.push(Box::new(sink)),
                Err(e) => {
                    tracing::error!(statsd = %addr, error = %e, "StatsD metrics are off")
                }
            }
        }
        if let Some(target) = &config.emf {
            match EmfSink::new(target, &config.namespace, &config.prefix) {
                Ok(sink) => sinks.push(Box::new(sink)),
                Err(e) => tracing::error!(error = %e, "EMF metrics are off"),
            }
        }
        Metrics { sinks }
    }

    pub fn emit(&self, metrics: &[Metric]) {
        if metrics.is_empty() {
            return;
        }
        for sink in &self.sinks {
            sink.emit(metrics);
        }
    }
}

/// One UDP datagram per line, sent without waiting (the socket is non-blocking).
pub struct StatsdSink {
    socket: UdpSocket,
    prefix: String,
    tags: TagStyle,
}

impl StatsdSink {
    pub fn new(addr: &str, prefix: &str, tags: TagStyle) -> std::io::Result<Self> {
        let target = std::net::ToSocketAddrs::to_socket_addrs(addr)?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to no address")))?;
        let local = if target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = UdpSocket::bind(local)?;
        socket.connect(target)?;
        socket.set_nonblocking(true)?;
        Ok(StatsdSink {
            socket,
            prefix: prefix.to_owned(),
            tags,
        })
    }
}

impl MetricSink for StatsdSink {
    fn emit(&self, metrics: &[Metric]) {
        for metric in metrics {
            let line = statsd_line(metric, &self.prefix, self.tags);
            if let Err(e) = self.socket.send(line.as_bytes()) {
                tracing::debug!(error = %e, "a StatsD datagram was not sent");
            }
        }
    }
}

/// EMF lines, one JSON object a line, handed to a writer thread.
pub struct EmfSink {
    lines: SyncSender<String>,
    namespace: String,
    prefix: String,
}

impl EmfSink {
    pub fn new(target: &EmfTarget, namespace: &str, prefix: &str) -> std::io::Result<Self> {
        let mut out: Box<dyn std::io::Write + Send> = match target {
            EmfTarget::Stdout => Box::new(std::io::stdout()),
            EmfTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (lines, received) = sync_channel::<String>(EMF_BACKLOG);
        std::thread::Builder::new()
            .name("specrun-emf".to_owned())
            .spawn(move || {
                for line in received {
                    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                        return;
                    }
                }
            })?;
        Ok(EmfSink {
            lines,
            namespace: namespace.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

impl MetricSink for EmfSink {
    fn emit(&self, metrics: &[Metric]) {
        let at = specrun_store::runs::now();
        for metric in metrics {
            let line = emf_line(metric, &self.namespace, &self.prefix, at);
            match self.lines.try_send(line) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    tracing::debug!("the EMF backlog is full; a metric line was dropped")
                }
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }
}
