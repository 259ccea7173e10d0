//! Agents with `network = "egress"` reach their allow-list through the runner's proxy and
//! nothing else: not a host service, not a destination off the list, never the cloud
//! metadata address. A probe runs inside the real job container, on the run's own
//! internal network, and reports what it could reach; the run then cleans up its network
//! and firewall rules.

use serde_json::Value;
use specrun_core::{Phase, RunStatus};
use specrun_tests::harness::{failed_with, write_agents_file, Harness};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

type TestResult = anyhow::Result<()>;

/// A plain HTTP server answering every request with `body`, on `bind`; returns its port.
fn http_server(bind: &str, body: &'static str) -> anyhow::Result<u16> {
    let listener = TcpListener::bind(bind)?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let answer = format!(
                "HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    Ok(port)
}

/// Runs inside the container; prints one `PROBE {json}` line.
const PROBE: &str = r#"
import json, os, socket, urllib.request, urllib.error
proxy = os.environ["HTTP_PROXY"]
gateway, proxy_port = proxy.split("//")[1].rsplit(":", 1)
allowed, service = int(os.environ["ALLOWED_PORT"]), int(os.environ["SERVICE_PORT"])
def via_proxy(url):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    try:
        r = opener.open(url, timeout=10)
        return [r.status, r.read().decode()[:300]]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()[:300]]
    except Exception as e:
        return [0, repr(e)[:300]]
def direct(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "open"
    except Exception as e:
        return type(e).__name__
def tunnel():
    s = socket.create_connection((gateway, int(proxy_port)), timeout=10)
    s.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n" % allowed)
    answer = s.recv(200)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return answer.decode().split("\r\n")[0] + " | " + data.decode()[-40:]
print("PROBE " + json.dumps({
    "allowed": via_proxy("http://127.0.0.1:%d/hello" % allowed),
    "not_listed": via_proxy("http://127.0.0.1:%d/" % service),
    "metadata": via_proxy("http://169.254.169.254/latest/meta-data/"),
    "tunnel": tunnel(),
    "direct_host_service": direct(gateway, service),
    "direct_proxy_port": direct(gateway, int(proxy_port)),
}))
"#;

fn agents_file(h: &Harness, allowed: u16, service: u16) -> anyhow::Result<String> {
    let text = format!(
        r#"[agents.probe]
extends = "scripted"
network = "egress"
egress = ["127.0.0.1:{allowed}"]
[agents.probe.env]
ALLOWED_PORT = "{allowed}"
SERVICE_PORT = "{service}"
[agents.probe.home_files]
"probe.py" = '''{PROBE}'''
[agents.probe.phases]
specify = ["sh", "-c", "python3 \"$HOME/probe.py\"; exec specrun-scripted-agent specify \"$1\"", "probe", "{{text}}"]
"#
    );
    write_agents_file(h.work.path(), &text)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_egress_agent_reaches_its_allow_list_and_nothing_else() -> TestResult {
    let h = Harness::start().await?;
    let allowed = http_server("127.0.0.1:0", "allowed-body")?;
    // A private service of the host, on every interface: the container must not reach it.
    let service = http_server("0.0.0.0:0", "host-secret")?;
    let mut config = h.config.clone();
    config.agents_file = Some(agents_file(&h, allowed, service)?);
    let url = h.git().create_repo("egress", "# Egress\n")?;
    let mut request = h.request(&url, "Let members export their data");
    request.agent = Some("probe".to_owned());
    let record = h.run_with(config, request).await?;
    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);

    let stdout = h
        .artifact(&record, Some(Phase::Specify), "agent.stdout.log")
        .await?;
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PROBE "))
        .ok_or_else(|| anyhow::anyhow!("no probe output in:\n{stdout}"))?;
    let probe: Value = serde_json::from_str(line)?;
    assert_eq!(probe["allowed"][0], 200, "{probe:#}");
    assert_eq!(probe["allowed"][1], "allowed-body", "{probe:#}");
    assert!(
        probe["tunnel"].as_str().unwrap_or_default().contains("200")
            && probe["tunnel"]
                .as_str()
                .unwrap_or_default()
                .ends_with("allowed-body"),
        "{probe:#}"
    );
    for refused in ["not_listed", "metadata"] {
        assert_eq!(probe[refused][0], 403, "{refused}: {probe:#}");
        let why = probe[refused][1].as_str().unwrap_or_default();
        assert!(
            why.contains("not on the agent's egress allow-list"),
            "{why}"
        );
    }
    assert_eq!(probe["direct_proxy_port"], "open", "{probe:#}");
    assert_ne!(probe["direct_host_service"], "open", "{probe:#}");

    let log = h.artifact(&record, None, "egress.log").await?;
    assert!(
        log.contains(&format!("allowed GET 127.0.0.1:{allowed}")),
        "{log}"
    );
    assert!(log.contains("refused GET 169.254.169.254:80"), "{log}");

    // The run's network and firewall rules are gone with it.
    let (network, bridge) = specrun_sandbox::egress::names(&record.run_id);
    let networks = Command::new("docker")
        .args(["network", "ls", "--format", "{{.Name}}"])
        .output()?;
    assert!(!String::from_utf8_lossy(&networks.stdout).contains(&network));
    let rules = Command::new("iptables")
        .args(["-w", "-S", "INPUT"])
        .output()?;
    assert!(!String::from_utf8_lossy(&rules.stdout).contains(&bridge));
    h.assert_clean(&record).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_host_firewall_an_egress_run_fails_at_prepare_with_the_fix() -> TestResult {
    let h = Harness::start().await?;
    let allowed = http_server("127.0.0.1:0", "allowed-body")?;
    let mut config = h.config.clone();
    config.agents_file = Some(agents_file(&h, allowed, allowed)?);
    let url = h.git().create_repo("nofirewall", "# x\n")?;
    // No iptables to be found: what a runner without root or the tool meets. (nextest
    // runs each test in its own process, so no other test sees this PATH.)
    std::env::set_var("PATH", "/nonexistent");
    let mut request = h.request(&url, "Let members export their data");
    request.agent = Some("probe".to_owned());
    let record = h.run_with(config, request).await?;

    let error = failed_with(&record, "egress_setup_failed", Phase::Prepare)?;
    assert!(error.message.contains("iptables"), "{}", error.message);
    assert!(error.remediation.contains("root"), "{}", error.remediation);
    assert!(
        error.remediation.contains("bridge"),
        "{}",
        error.remediation
    );
    // The half-made network was taken down again.
    let (network, _) = specrun_sandbox::egress::names(&record.run_id);
    let networks = Command::new("/usr/bin/docker")
        .args(["network", "ls", "--format", "{{.Name}}"])
        .output()?;
    assert!(!String::from_utf8_lossy(&networks.stdout).contains(&network));
    h.assert_clean(&record).await?;
    Ok(())
}
