//! The egress proxy: an HTTP proxy (CONNECT and absolute-form requests) that forwards
//! only to the agent's allow-list (`specrun_core::egress`) and keeps what was asked for,
//! allowed or refused, for the run's `egress.log`.
//!
//! The agent is hostile, so the proxy reads every request on a connection itself (a
//! kept-alive connection's later requests are checked and logged like the first, against
//! their own destination), sends upstream only a head it rebuilt (origin form, the `Host`
//! it checked, `Connection: close`), refuses framing two servers could read differently,
//! and bounds what it keeps: heads, requests per connection, lines in the log.

mod conn;
mod http;

use conn::Conn;
use http::{parse, response_body, response_status, without_hop_by_hop, Body, HttpRequest};
use specrun_core::egress::EgressPolicy;
use specrun_core::event_summary::clip;
use specrun_core::redact::Redactor;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Largest request head the proxy reads.
const MAX_HEAD: usize = 16 * 1024;
/// Largest answer head it relays (servers send more fields than clients).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Longest chunk-size line of a chunked body (the size and any extensions).
const MAX_CHUNK_LINE: usize = 1024;
/// Requests one client connection may carry; the last one's answer closes it.
const MAX_REQUESTS_PER_CONNECTION: usize = 1000;
/// Lines the run's egress.log keeps; later events are only counted, so that an agent
/// looping on requests cannot grow the runner's memory.
const MAX_EVENTS: usize = 10_000;
/// Longest event line kept (the agent chooses the names and URLs that go into it).
const MAX_EVENT_LINE: usize = 1024;
/// How long the proxy waits for a request head, also between requests on a connection.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections one run's agent may hold open through the proxy at once: enough for any
/// model client, few enough that an agent cannot exhaust the runner's file descriptors.
const MAX_CONNECTIONS: usize = 64;
/// How long connecting to an allowed destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A running proxy; stops when dropped.
pub struct EgressProxy {
    address: SocketAddr,
    task: JoinHandle<()>,
    events: Arc<Mutex<Events>>,
}

impl EgressProxy {
    /// Listens on `bind` (the run network's gateway) at a free port.
    pub async fn start(bind: IpAddr, policy: EgressPolicy) -> std::io::Result<Self> {
        let listener = TcpListener::bind((bind, 0)).await?;
        let address = listener.local_addr()?;
        let events = Arc::new(Mutex::new(Events::default()));
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
                        serve(client, &policy, &events).await;
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

    /// One line per request: what was asked for and whether it went through; past
    /// `MAX_EVENTS`, one line counting the rest. The lines hold what the agent asked
    /// for, unredacted: store [`EgressProxy::log`] instead.
    pub fn events(&self) -> Vec<String> {
        self.events.lock().map(|e| e.lines()).unwrap_or_default()
    }

    /// The run's `egress.log`: [`EgressProxy::events`], one a line, with the run's
    /// secrets masked (an agent can put a secret into a host name or a request line).
    pub fn log(&self, redactor: &Redactor) -> String {
        self.events
            .lock()
            .map(|e| e.log(redactor))
            .unwrap_or_default()
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the proxy saw, bounded: the first `MAX_EVENTS` lines, then only a count.
#[derive(Debug, Default)]
struct Events {
    lines: Vec<String>,
    not_logged: u64,
}

impl Events {
    fn record(&mut self, line: &str) {
        if self.lines.len() >= MAX_EVENTS {
            self.not_logged += 1;
            return;
        }
        let line = clip(line, MAX_EVENT_LINE);
        tracing::info!(target: "specrun::egress", "{line}");
        self.lines.push(line.to_owned());
    }

    fn log(&self, redactor: &Redactor) -> String {
        let mut log = self.lines().join("\n");
        log.push('\n');
        redactor.redact_str(&log)
    }

    fn lines(&self) -> Vec<String> {
        let mut lines = self.lines.clone();
        if self.not_logged > 0 {
            lines.push(format!("{} further events not logged", self.not_logged));
        }
        lines
    }
}

/// One client connection: every request on it is read, checked and logged in turn. A
/// CONNECT becomes an opaque tunnel (one check per tunnel); a plain HTTP request is sent
/// to its own upstream connection and its answer relayed, after which the client may
/// send the next request, to any destination, checked again.
async fn serve(client: TcpStream, policy: &EgressPolicy, events: &Mutex<Events>) {
    let record = |line: String| {
        if let Ok(mut events) = events.lock() {
            events.record(&line);
        }
    };
    let mut client = Conn::new(client);
    for served in 1..=MAX_REQUESTS_PER_CONNECTION {
        let head = match client.head(MAX_HEAD, Some(HEAD_TIMEOUT)).await {
            Ok(Some(head)) => head,
            // The client closed or went quiet between requests.
            Ok(None) => return,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                record(format!("refused: {e}"));
                let _ = refuse(
                    &mut client.stream,
                    "431 Request Header Fields Too Large",
                    &e.to_string(),
                )
                .await;
                return;
            }
            Err(_) => return,
        };
        let request = match parse(&head) {
            Ok(request) => request,
            Err(reason) => {
                record(format!("refused: {reason}"));
                let _ = refuse(&mut client.stream, "400 Bad Request", &reason).await;
                return;
            }
        };
        let what = format!("{} {}:{}", request.method, request.host, request.port);
        let upstream = match open(policy, &request.host, request.port).await {
            Ok(upstream) => upstream,
            Err((status, reason)) => {
                record(format!("refused {what}: {reason}"));
                let _ = refuse(&mut client.stream, status, &reason).await;
                return;
            }
        };
        record(format!("allowed {what}"));
        let Some(http) = request.http else {
            let _ = tunnel(client, upstream).await;
            return;
        };
        let last = !http.keep_alive || served == MAX_REQUESTS_PER_CONNECTION;
        match exchange(&mut client, upstream, &http, &request.method, last).await {
            Ok(true) => {}
            _ => {
                let _ = client.stream.shutdown().await;
                return;
            }
        }
    }
}

async fn tunnel(mut client: Conn, mut upstream: TcpStream) -> std::io::Result<()> {
    client
        .stream
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    upstream.write_all(&client.buffer).await?;
    tokio::io::copy_bidirectional(&mut client.stream, &mut upstream).await?;
    Ok(())
}

/// Sends one plain HTTP request upstream (the head the proxy made, then the body as
/// framed) and relays the answer. Ok(true): the client connection may carry another
/// request.
async fn exchange(
    client: &mut Conn,
    upstream: TcpStream,
    http: &HttpRequest,
    method: &str,
    last: bool,
) -> std::io::Result<bool> {
    let mut upstream = Conn::new(upstream);
    upstream.stream.write_all(&http.upstream_head).await?;
    if http.expect_continue {
        client
            .stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await?;
    }
    client.forward_body(http.body, &mut upstream.stream).await?;
    loop {
        let answer = upstream
            .head(MAX_RESPONSE_HEAD, None)
            .await?
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        let (status, fields) = response_status(&answer)?;
        // Interim answers (100 Continue) go through as they are; the final one follows.
        if (100..200).contains(&status) && status != 101 {
            client.stream.write_all(&answer).await?;
            continue;
        }
        let body = response_body(method, status, &fields);
        // Without framing the answer ends when the upstream closes, and so must this
        // connection; a 101 would switch to a protocol the proxy does not read.
        let close = last || body == Body::ToEnd || status == 101;
        client
            .stream
            .write_all(&without_hop_by_hop(&answer, &fields, close))
            .await?;
        upstream.forward_body(body, &mut client.stream).await?;
        return Ok(!close);
    }
}

/// Checks the destination and each address it resolves to; connects to the first allowed.
async fn open(
    policy: &EgressPolicy,
    host: &str,
    port: u16,
) -> Result<TcpStream, (&'static str, String)> {
    policy
        .check_destination(host, port)
        .map_err(|e| ("403 Forbidden", e.to_string()))?;
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ("502 Bad Gateway", format!("resolving {host}: {e}")))?
        .collect();
    let mut refusal = format!("{host} resolves to no address");
    for address in addresses {
        if let Err(why) = policy.check_address(host, address.ip()) {
            refusal = why.to_string();
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::conn::*;
    use super::http::*;
    use super::*;
    use tokio::io::AsyncReadExt;

    fn policy(entries: &[String]) -> EgressPolicy {
        EgressPolicy::new(entries).unwrap()
    }

    async fn proxy(entries: &[String]) -> EgressProxy {
        EgressProxy::start("127.0.0.1".parse().unwrap(), policy(entries))
            .await
            .unwrap()
    }

    /// An HTTP server on loopback that answers each request with `ok <n>` (its count) and
    /// keeps the heads it was sent; returns its port.
    async fn upstream() -> (u16, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let mut conn = Conn::new(stream);
                    let Ok(Some(head)) = conn.head(MAX_HEAD, None).await else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let body = match head.to_ascii_lowercase().contains("chunked") {
                        true => Body::Chunked,
                        false => Body::Empty,
                    };
                    let mut sink = Vec::new();
                    if body == Body::Chunked {
                        while !String::from_utf8_lossy(&conn.buffer).contains("0\r\n\r\n") {
                            conn.fill().await.unwrap();
                        }
                        sink = std::mem::take(&mut conn.buffer);
                    }
                    let count = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(head + &String::from_utf8_lossy(&sink));
                        seen.len()
                    };
                    let answer = format!("ok {count}");
                    let _ = conn
                        .stream
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                                answer.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                }
            }
        });
        (port, seen)
    }

    /// Reads one answer (head and content-length body) from the proxy.
    async fn answer(client: &mut Conn) -> String {
        let head = client.head(MAX_RESPONSE_HEAD, None).await.unwrap().unwrap();
        let (_, fields) = response_status(&head).unwrap();
        let Body::Length(count) = response_body("GET", 200, &fields) else {
            panic!("no length: {}", String::from_utf8_lossy(&head));
        };
        while (client.buffer.len() as u64) < count {
            assert!(client.fill().await.unwrap());
        }
        let body = client.buffer.drain(..count as usize).collect::<Vec<u8>>();
        String::from_utf8_lossy(&head).into_owned() + &String::from_utf8_lossy(&body)
    }

    #[test]
    fn connect_and_absolute_form_requests_are_understood() {
        let asked = parse(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!((asked.host.as_str(), asked.port), ("api.openai.com", 443));
        assert!(asked.http.is_none());

        let asked = parse(
            b"GET http://10.0.0.5:8080/v1/x?y=1 HTTP/1.1\r\nHost: 10.0.0.5:8080\r\nAccept: */*\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nProxy-Authorization: Basic eA==\r\n\r\n",
        )
        .unwrap();
        assert_eq!((asked.host.as_str(), asked.port), ("10.0.0.5", 8080));
        let http = asked.http.unwrap();
        assert_eq!(
            String::from_utf8(http.upstream_head).unwrap(),
            "GET /v1/x?y=1 HTTP/1.1\r\nhost: 10.0.0.5:8080\r\nAccept: */*\r\nconnection: close\r\n\r\n"
        );
        assert!(http.keep_alive);
        assert_eq!(http.body, Body::Empty);

        let asked =
            parse(b"GET http://example.test HTTP/1.0\r\nhost: EXAMPLE.test:80\r\n\r\n").unwrap();
        assert_eq!(asked.port, 80);
        let http = asked.http.unwrap();
        assert_eq!(
            http.upstream_head,
            b"GET / HTTP/1.0\r\nhost: example.test\r\nconnection: close\r\n\r\n"
        );
        assert!(!http.keep_alive, "HTTP/1.0 closes");

        let asked =
            parse(b"POST http://x.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(asked.http.unwrap().body, Body::Chunked);
        let asked = parse(b"POST http://x.test/ HTTP/1.1\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(asked.http.unwrap().body, Body::Length(12));
    }

    #[test]
    fn other_requests_are_refused_with_a_reason() {
        for head in [
            &b"GET /local HTTP/1.1\r\n\r\n"[..],
            b"CONNECT api.openai.com HTTP/1.1\r\n\r\n",
            b"GET https://x/ HTTP/1.1\r\n\r\n",
            b"garbage\r\n\r\n",
            b"GET http://x/ HTTP/2\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\nHost: y\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\nHost: x:8080\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\nX-Folded: a\r\n b\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\nBad Name: a\r\n\r\n",
            b"POST http://x/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST http://x/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST http://x/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST http://x/ HTTP/1.1\r\nContent-Length: -3\r\n\r\n",
        ] {
            assert!(parse(head).is_err(), "{}", String::from_utf8_lossy(head));
        }
    }

    #[tokio::test]
    async fn every_request_on_a_kept_alive_connection_is_checked_and_logged() {
        let (port, seen) = upstream().await;
        let proxy = proxy(&[format!("127.0.0.1:{port}")]).await;
        let mut client = Conn::new(TcpStream::connect(proxy.address()).await.unwrap());
        for n in 1..=2 {
            let request = format!(
                "GET http://127.0.0.1:{port}/{n} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
            );
            client.stream.write_all(request.as_bytes()).await.unwrap();
            let answer = answer(&mut client).await;
            assert!(answer.ends_with(&format!("ok {n}")), "{answer}");
            assert!(!answer.contains("connection: close"), "{answer}");
        }
        // The same connection, another destination: checked against that one.
        let other =
            format!("GET http://127.0.0.2:{port}/x HTTP/1.1\r\nHost: 127.0.0.2:{port}\r\n\r\n");
        client.stream.write_all(other.as_bytes()).await.unwrap();
        let mut refused = String::new();
        client.stream.read_to_string(&mut refused).await.unwrap();
        assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
        let events = proxy.events();
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(events[0], format!("allowed GET 127.0.0.1:{port}"));
        assert_eq!(events[1], events[0]);
        assert!(
            events[2].starts_with(&format!("refused GET 127.0.0.2:{port}: ")),
            "{events:?}"
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "the refused request never left: {seen:?}");
        assert_eq!(
            seen[0],
            format!("GET /1 HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n")
        );
    }

    #[tokio::test]
    async fn a_request_hidden_after_a_chunked_body_is_checked_too() {
        let (port, seen) = upstream().await;
        let proxy = proxy(&[format!("127.0.0.1:{port}")]).await;
        let mut client = Conn::new(TcpStream::connect(proxy.address()).await.unwrap());
        // Pipelined in one write: a chunked POST, then a request to an unlisted host.
        let both = format!(
            "POST http://127.0.0.1:{port}/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET http://169.254.169.254/ HTTP/1.1\r\n\r\n"
        );
        client.stream.write_all(both.as_bytes()).await.unwrap();
        let first = answer(&mut client).await;
        assert!(first.ends_with("ok 1"), "{first}");
        let mut refused = String::from_utf8_lossy(&client.buffer).into_owned();
        client.stream.read_to_string(&mut refused).await.unwrap();
        assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen[0].ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            "{seen:?}"
        );
        assert!(!seen[0].contains("169.254"), "{seen:?}");
        assert!(proxy.events()[1].starts_with("refused GET 169.254.169.254:80"));
    }

    #[tokio::test]
    async fn a_host_header_naming_another_destination_is_refused() {
        let (port, seen) = upstream().await;
        let proxy = proxy(&[format!("127.0.0.1:{port}")]).await;
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        let request =
            format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: evil.example\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("does not match"), "{answer}");
        let events = proxy.events();
        assert!(
            events[0].starts_with("refused: the Host header \"evil.example\""),
            "{events:?}"
        );
        assert!(seen.lock().unwrap().is_empty());
    }

    #[test]
    fn events_are_capped_clipped_and_redacted() {
        let mut events = Events::default();
        events.record(&format!("refused CONNECT {}", "x".repeat(5000)));
        for _ in 1..MAX_EVENTS + 5 {
            events.record("refused CONNECT sk-live-secret.example:443");
        }
        let lines = events.lines();
        assert_eq!(lines.len(), MAX_EVENTS + 1);
        assert_eq!(lines[0].len(), MAX_EVENT_LINE);
        assert_eq!(lines[MAX_EVENTS], "5 further events not logged");

        let log = events.log(&Redactor::new(["sk-live-secret"]));
        assert!(!log.contains("sk-live-secret"));
        assert!(log.contains("refused CONNECT ***.example:443\n"));
        assert!(log.ends_with("5 further events not logged\n"));
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
}
