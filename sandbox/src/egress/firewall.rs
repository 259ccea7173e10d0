//! The host firewall rules that close the host to a run's network except at its proxy's
//! port: iptables on the INPUT chain, added and removed by exact rule.

use super::EgressError;
use std::process::Command;

/// The INPUT chain's rules as `iptables -S` prints them.
pub(super) fn list_input_rules() -> std::io::Result<std::process::Output> {
    Command::new("iptables")
        .args(["-w", "-S", "INPUT"])
        .output()
}

pub(super) fn iptables(action: &str, rule: &[String]) -> Result<(), EgressError> {
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
