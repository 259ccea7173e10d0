//! The way out for agents with `network = "egress"`: each such run gets its own internal
//! Docker network (no route anywhere), a host firewall rule that lets the container reach
//! the host on that bridge only at the proxy's port, and an HTTP proxy, served by this
//! runner on the network's gateway address, that forwards only to the agent's allow-list
//! (`specrun_core::egress`). The agent finds the proxy through `HTTPS_PROXY`/`HTTP_PROXY`.
//! What it asked for, allowed or refused, is kept for the run's `egress.log`.
//!
//! The agent is hostile, so the proxy reads every request on a connection itself (a
//! kept-alive connection's later requests are checked and logged like the first, against
//! their own destination), sends upstream only a head it rebuilt (origin form, the `Host`
//! it checked, `Connection: close`), refuses framing two servers could read differently,
//! and bounds what it keeps: heads, requests per connection, lines in the log
//! ([`proxy`]). The firewall rules are in `firewall`.

mod firewall;
pub mod proxy;

use crate::docker::client::{DockerClient, DockerError};
use firewall::iptables;
pub use proxy::EgressProxy;
use sha2::{Digest, Sha256};
use specrun_core::egress::EgressPolicy;
use std::net::IpAddr;

/// A run's way out: its network, the firewall rules guarding the host, and the proxy.
pub struct RunEgress {
    pub network: String,
    bridge: String,
    rules: Vec<Vec<String>>,
    pub proxy: EgressProxy,
    /// `http://GATEWAY:PORT` of the runner's host service on this network, if any.
    pub service_url: Option<String>,
}

/// Setting up a run's egress failed.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("starting the egress proxy on {address}: {source}")]
    Proxy {
        address: IpAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the model gateway on {address}: {source}")]
    Service {
        address: IpAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the host firewall could not be set (iptables {args}): {reason}")]
    Firewall { args: String, reason: String },
}

/// The network and bridge names of a run: derived from the run id alone, so that a runner
/// taking the run over finds what a dead one left behind.
pub fn names(run_id: &str) -> (String, String) {
    let digest = format!("{:x}", Sha256::digest(run_id.as_bytes()));
    let short = &digest[..12];
    // Linux interface names are at most 15 bytes.
    (format!("specrun-egress-{short}"), format!("spe{short}"))
}

impl RunEgress {
    /// Creates the run's network, starts the proxy on its gateway and closes the host to
    /// the container except at the proxy's port.
    pub async fn set_up(
        docker: &DockerClient,
        run_id: &str,
        runner_id: &str,
        policy: EgressPolicy,
        service: Option<&dyn crate::port::HostService>,
    ) -> Result<Self, EgressError> {
        let (network, bridge) = names(run_id);
        let gateway = docker
            .create_internal_network(&network, &bridge, run_id, runner_id)
            .await?;
        let mut egress = RunEgress {
            proxy: EgressProxy::start(gateway, policy)
                .await
                .map_err(|source| EgressError::Proxy {
                    address: gateway,
                    source,
                })?,
            network,
            bridge,
            rules: Vec::new(),
            service_url: None,
        };
        let mut ports = vec![egress.proxy.address().port().to_string()];
        if let Some(service) = service {
            match service.listen(gateway).await {
                Ok(address) => {
                    ports.push(address.port().to_string());
                    egress.service_url = Some(format!("http://{address}"));
                }
                Err(source) => {
                    egress.tear_down(docker).await;
                    return Err(EgressError::Service {
                        address: gateway,
                        source,
                    });
                }
            }
        }
        let gateway = gateway.to_string();
        let bridge = egress.bridge.clone();
        // Inserted at the top in this order, the ACCEPTs end up above the DROP.
        let mut rules = vec![vec!["-i", &bridge, "-j", "DROP"]];
        for port in &ports {
            rules.push(vec![
                "-i", &bridge, "-d", &gateway, "-p", "tcp", "--dport", port, "-j", "ACCEPT",
            ]);
        }
        for rule in rules {
            let rule: Vec<String> = rule.into_iter().map(str::to_owned).collect();
            if let Err(e) = iptables("-I", &rule) {
                egress.tear_down(docker).await;
                return Err(e);
            }
            egress.rules.push(rule);
        }
        Ok(egress)
    }

    /// Removes the firewall rules and the network (the container must be gone already).
    /// Returns what could not be removed.
    pub async fn tear_down(&mut self, docker: &DockerClient) -> Vec<String> {
        let mut problems = Vec::new();
        for rule in self.rules.drain(..) {
            if let Err(e) = iptables("-D", &rule) {
                problems.push(e.to_string());
            }
        }
        if let Err(e) = docker.remove_network(&self.network).await {
            problems.push(e.to_string());
        }
        problems
    }
}

/// Removes what a dead runner left of `run_id`'s egress: firewall rules and network.
pub async fn remove_orphaned(docker: &DockerClient, run_id: &str) {
    let (network, bridge) = names(run_id);
    if let Ok(listed) = firewall::list_input_rules() {
        for line in String::from_utf8_lossy(&listed.stdout).lines() {
            if let Some(rule) = line.strip_prefix("-A INPUT ") {
                let rule: Vec<String> = rule.split_whitespace().map(str::to_owned).collect();
                if rule.windows(2).any(|w| w[0] == "-i" && w[1] == bridge) {
                    let _ = iptables("-D", &rule);
                }
            }
        }
    }
    let _ = docker.remove_network(&network).await;
}
