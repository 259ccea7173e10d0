//! Flags for notifications and metrics, read into `NotifyConfig` and `MetricsConfig`.
//! The webhook secret is read from `SPECRUN_WEBHOOK_SECRET` only: a flag would show it in
//! the process listing.

use crate::config::{EmfTarget, MetricsConfig, NotifyConfig, Secret};
use anyhow::{bail, Context as _};
use clap::Args;
use specrun_core::metrics::TagStyle;
use specrun_core::notify::NotifyUrl;

/// Where final statuses and metrics go.
#[derive(Debug, Args)]
pub struct ObserveArgs {
    /// The deployment's webhook: every final status is POSTed there, signed with
    /// SPECRUN_WEBHOOK_SECRET (which is read from the environment only).
    #[arg(long, env = "SPECRUN_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Attempts per receiver and final status (across runners), with backoff between.
    #[arg(long, env = "SPECRUN_WEBHOOK_ATTEMPTS", default_value_t = 5)]
    pub webhook_attempts: u32,
    /// Longest wait for a receiver's answer, in seconds.
    #[arg(long, env = "SPECRUN_WEBHOOK_TIMEOUT_SECS", default_value_t = 10)]
    pub webhook_timeout_secs: u64,
    /// StatsD server (UDP) host:port; no StatsD when absent.
    #[arg(long, env = "SPECRUN_STATSD_ADDR")]
    pub statsd_addr: Option<String>,
    /// StatsD tags: dogstatsd (|#key:value) or none.
    #[arg(long, env = "SPECRUN_STATSD_TAGS", default_value = "dogstatsd")]
    pub statsd_tags: TagStyle,
    /// Prefix of specrun's own metric names (OpenTelemetry's names are kept as they are).
    #[arg(long, env = "SPECRUN_STATSD_PREFIX", default_value = "specrun.")]
    pub statsd_prefix: String,
    /// CloudWatch Embedded Metric Format lines: "stdout" or a file path.
    #[arg(long, env = "SPECRUN_METRICS_EMF")]
    pub metrics_emf: Option<String>,
    /// The CloudWatch namespace of EMF lines.
    #[arg(long, env = "SPECRUN_METRICS_NAMESPACE", default_value = "specrun")]
    pub metrics_namespace: String,
}

impl ObserveArgs {
    pub fn notify_config(&self) -> anyhow::Result<NotifyConfig> {
        let secret = std::env::var("SPECRUN_WEBHOOK_SECRET")
            .ok()
            .filter(|s| !s.is_empty())
            .map(Secret::new);
        let webhook = self
            .webhook_url
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(|url| {
                NotifyUrl::webhook(url).map_err(|e| anyhow::anyhow!("SPECRUN_WEBHOOK_URL {e}"))
            })
            .transpose()?;
        let callbacks = specrun_submit::callback_policy_from_env();
        if (webhook.is_some() || !callbacks.hosts.is_empty()) && secret.is_none() {
            bail!(
                "SPECRUN_WEBHOOK_URL or SPECRUN_CALLBACK_HOSTS is set but SPECRUN_WEBHOOK_SECRET is not: \
                 set a random secret (e.g. `openssl rand -hex 32`) so receivers can verify the Specrun-Signature header"
            );
        }
        if self.webhook_attempts == 0 {
            bail!("--webhook-attempts must be at least 1");
        }
        Ok(NotifyConfig {
            webhook,
            secret,
            callbacks,
            max_attempts: self.webhook_attempts,
            timeout: std::time::Duration::from_secs(self.webhook_timeout_secs.max(1)),
            ..NotifyConfig::default()
        })
    }

    pub fn metrics_config(&self) -> anyhow::Result<MetricsConfig> {
        let statsd = self.statsd_addr.clone().filter(|a| !a.is_empty());
        if let Some(addr) = &statsd {
            if !addr.contains(':') {
                bail!("SPECRUN_STATSD_ADDR {addr:?} is not host:port (e.g. 127.0.0.1:8125)");
            }
        }
        let emf = match self.metrics_emf.as_deref() {
            None | Some("") => None,
            Some("stdout") => Some(EmfTarget::Stdout),
            Some(path) => Some(EmfTarget::File(
                super::absolute(std::path::Path::new(path))
                    .context("resolving SPECRUN_METRICS_EMF")?,
            )),
        };
        Ok(MetricsConfig {
            statsd,
            tags: self.statsd_tags,
            prefix: self.statsd_prefix.clone(),
            emf,
            namespace: self.metrics_namespace.clone(),
        })
    }
}
