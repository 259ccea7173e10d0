//! The way out for agents with `network = "egress"`: each such run gets its own internal
//! Docker network (no route anywhere), a host firewall rule that lets the container reach
//! the host on that bridge only at the proxy's port, and an HTTP proxy, served by this
//! runner on the network's gateway address, that forwards only to the agent's allow-list
//! (`specrun_core::egress`). The agent finds the proxy through `HTTPS_PROXY`/`HTTP_PROXY`.
//! What it asked for, allowed or refused, is kept for the run's `egress.log`.

use crate::docker::{DockerClient, DockerError};
use sha2::{Digest, Sha256};
use specrun_core::egress::{split_host_port, EgressPolicy};
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Largest request head the proxy reads.
const MAX_HEAD: usize = 16 * 1024;
/// Connections one run's agent may hold open through the proxy at once: enough for any
/// model client, few enough that an agent cannot exhaust the runner's file descriptors.
const MAX_CONNECTIONS: usize = 64;
/// How long connecting to an allowed destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A run's way out: its network, the firewall rules guarding the host, and the proxy.
pub struct RunEgress {
    pub network: String,
    bridge: String,
    rules: Vec<Vec<String>>,
    pub proxy: EgressProxy,
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
        };
        let port = egress.proxy.address().port().to_string();
        let gateway = gateway.to_string();
        let bridge = egress.bridge.clone();
        // Inserted at the top in this order, the ACCEPT ends up above the DROP.
        for rule in [
            vec!["-i", &bridge, "-j", "DROP"],
            vec![
                "-i", &bridge, "-d", &gateway, "-p", "tcp", "--dport", &port, "-j", "ACCEPT",
            ],
        ] {
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
    if let Ok(listed) = Command::new("iptables")
        .args(["-w", "-S", "INPUT"])
        .output()
    {
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

fn iptables(action: &str, rule: &[String]) -> Result<(), EgressError> {
    let args = format!("{action} INPUT {}", rule.join(" "));
    let failed = |reason: String| EgressError::Firewall {
        args: args.clone(),
        reason,
    };
    let output = Command::new("iptables")
        .args(["-w", action, "INPUT"])
        .args(rule)
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ))
    }
}

/// A running proxy; stops when dropped.
pub struct EgressProxy {
    address: SocketAddr,
    task: JoinHandle<()>,
    events: Arc<Mutex<Vec<String>>>,
}

impl EgressProxy {
    /// Listens on `bind` (the run network's gateway) at a free port.
    pub async fn start(bind: IpAddr, policy: EgressPolicy) -> std::io::Result<Self> {
        let listener = TcpListener::bind((bind, 0)).await?;
        let address = listener.local_addr()?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let policy = Arc::new(policy);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let task = tokio::spawn({
            let events = events.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        let reason = format!("more than {MAX_CONNECTIONS} connections at once");
                        let _ = refuse(&mut client, "503 Service Unavailable", &reason).await;
                        continue;
                    };
                    let (policy, events) = (policy.clone(), events.clone());
                    tokio::spawn(async move {
                        serve(client, policy, events).await;
                        drop(slot);
                    });
                }
            }
        });
        Ok(EgressProxy {
            address,
            task,
            events,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://GATEWAY:PORT`, for the agent's proxy variables.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// One line per request: what was asked for and whether it went through.
    pub fn events(&self) -> Vec<String> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request the proxy understood.
struct Asked {
    method: String,
    host: String,
    port: u16,
    /// For plain HTTP: the head to send upstream, in origin form.
    upstream_head: Option<Vec<u8>>,
}

async fn serve(mut client: TcpStream, policy: Arc<EgressPolicy>, events: Arc<Mutex<Vec<String>>>) {
    let (head, rest) = match read_head(&mut client).await {
        Ok(read) => read,
        Err(_) => return,
    };
    let record = |line: String| {
        tracing::info!(target: "specrun::egress", "{line}");
        if let Ok(mut events) = events.lock() {
            events.push(line);
        }
    };
    let asked = match parse(&head) {
        Ok(asked) => asked,
        Err(reason) => {
            record(format!("refused: {reason}"));
            let _ = refuse(&mut client, "400 Bad Request", &reason).await;
            return;
        }
    };
    let what = format!("{} {}:{}", asked.method, asked.host, asked.port);
    let upstream = match open(&policy, &asked).await {
        Ok(upstream) => upstream,
        Err((status, reason)) => {
            record(format!("refused {what}: {reason}"));
            let _ = refuse(&mut client, status, &reason).await;
            return;
        }
    };
    record(format!("allowed {what}"));
    let _ = relay(client, upstream, asked.upstream_head, rest).await;
}

async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    upstream_head: Option<Vec<u8>>,
    rest: Vec<u8>,
) -> std::io::Result<()> {
    match upstream_head {
        None => {
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await?
        }
        Some(head) => upstream.write_all(&head).await?,
    }
    upstream.write_all(&rest).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// Checks the destination and each address it resolves to; connects to the first allowed.
async fn open(policy: &EgressPolicy, asked: &Asked) -> Result<TcpStream, (&'static str, String)> {
    policy
        .check_destination(&asked.host, asked.port)
        .map_err(|e| ("403 Forbidden", e))?;
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((asked.host.as_str(), asked.port))
        .await
        .map_err(|e| ("502 Bad Gateway", format!("resolving {}: {e}", asked.host)))?
        .collect();
    let mut refusal = format!("{} resolves to no address", asked.host);
    for address in addresses {
        if let Err(why) = policy.check_address(&asked.host, address.ip()) {
            refusal = why;
            continue;
        }
        return match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(("502 Bad Gateway", format!("connecting to {address}: {e}"))),
            Err(_) => Err((
                "504 Gateway Timeout",
                format!("connecting to {address} timed out"),
            )),
        };
    }
    Err(("403 Forbidden", refusal))
}

async fn refuse(client: &mut TcpStream, status: &str, reason: &str) -> std::io::Result<()> {
    let body = format!("specrun egress proxy: {reason}\n");
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(answer.as_bytes()).await?;
    client.shutdown().await
}

/// Reads up to the end of the request head; returns the head and any bytes after it.
async fn read_head(client: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buffer.split_off(end + 4);
            return Ok((buffer, rest));
        }
        if buffer.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        let read = tokio::time::timeout(Duration::from_secs(30), client.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("no request head"))??;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// `CONNECT host:port HTTP/1.1` or `METHOD http://host[:port]/path HTTP/1.1`.
fn parse(head: &[u8]) -> Result<Asked, String> {
    let text = std::str::from_utf8(head).map_err(|_| "a request head that is not UTF-8")?;
    let (line, headers) = text.split_once("\r\n").unwrap_or((text, ""));
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("a malformed request line {line:?}"));
    };
    if method == "CONNECT" {
        let (host, port) = split_host_port(target)
            .and_then(|(h, p)| Some((h, p?)))
            .ok_or_else(|| format!("CONNECT to {target:?}, which is not host:port"))?;
        return Ok(Asked {
            method: method.to_owned(),
            host: host.to_owned(),
            port,
            upstream_head: None,
        });
    }
    let rest = target.strip_prefix("http://").ok_or_else(|| {
        format!("{method} {target:?}: only CONNECT and http:// URLs go through the proxy")
    })?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    let (host, port) =
        split_host_port(authority).ok_or_else(|| format!("a malformed URL {target:?}"))?;
    let upstream_head = format!("{method} {path} {version}\r\n{headers}").into_bytes();
    Ok(Asked {
        method: method.to_owned(),
        host: host.to_owned(),
        port: port.unwrap_or(80),
        upstream_head: Some(upstream_head),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn connect_and_absolute_form_requests_are_understood() {
        let asked = parse(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!((asked.host.as_str(), asked.port), ("api.openai.com", 443));
        assert!(asked.upstream_head.is_none());

        let asked =
            parse(b"GET http://10.0.0.5:8080/v1/x?y=1 HTTP/1.1\r\nHost: 10.0.0.5\r\n\r\n").unwrap();
        assert_eq!((asked.host.as_str(), asked.port), ("10.0.0.5", 8080));
        assert_eq!(
            asked.upstream_head.unwrap(),
            b"GET /v1/x?y=1 HTTP/1.1\r\nHost: 10.0.0.5\r\n\r\n"
        );
        let asked = parse(b"GET http://example.test HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(asked.port, 80);
        assert_eq!(asked.upstream_head.unwrap(), b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_flood_of_connections_is_refused_past_the_limit() {
        let proxy = EgressProxy::start("127.0.0.1".parse().unwrap(), EgressPolicy::default())
            .await
            .unwrap();
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(TcpStream::connect(proxy.address()).await.unwrap());
        }
        // Idle connections keep their slots while the proxy waits for a request head.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut extra = TcpStream::connect(proxy.address()).await.unwrap();
        let mut answer = String::new();
        extra.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("connections at once"), "{answer}");

        drop(held);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut next = TcpStream::connect(proxy.address()).await.unwrap();
        next.write_all(b"CONNECT elsewhere.test:443 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        next.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 403"),
            "slots come back: {answer}"
        );
        assert_eq!(proxy.events().len(), 1, "{:?}", proxy.events());
    }

    #[test]
    fn other_requests_are_refused_with_a_reason() {
        for head in [
            &b"GET /local HTTP/1.1\r\n\r\n"[..],
            b"CONNECT api.openai.com HTTP/1.1\r\n\r\n",
            b"GET https://x/ HTTP/1.1\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(parse(head).is_err(), "{}", String::from_utf8_lossy(head));
        }
    }
}
