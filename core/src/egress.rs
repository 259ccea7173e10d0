//! Which destinations an agent's network traffic may reach. Agents that call a model API
//! get no route out of their container; their HTTP(S) traffic goes through the runner's
//! egress proxy, which asks this policy twice: is the requested `host:port` on the
//! agent's allow-list, and is each address it resolves to one that may be reached at all
//! (never a cloud metadata or link-local address; a private or loopback address only when
//! the operator listed that address itself, so a name cannot be pointed inward).

use std::fmt;
use std::net::IpAddr;

/// An egress list entry that names no usable destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEntry {
    #[error("egress entry {0:?} is not host or host:port")]
    NotHostPort(String),
    #[error("egress entry {entry:?}: {host:?} is not a host name or address")]
    NotAHost { entry: String, host: String },
    #[error("egress entry {0:?}: port 0")]
    PortZero(String),
}

/// Why the proxy refuses a destination: the texts reach the agent in the proxy's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{host}:{port} is not on the agent's egress allow-list ({allowed})")]
    NotListed {
        host: String,
        port: u16,
        /// The allow-list as shown to the agent (`empty` when it has no entry).
        allowed: String,
    },
    #[error("{host} resolves to {address}, {why}")]
    NeverReachable {
        host: String,
        address: IpAddr,
        why: &'static str,
    },
    #[error(
        "{host} resolves to the internal address {address}; list the address itself to allow it"
    )]
    Internal { host: String, address: IpAddr },
}

/// One allowed destination, `host:port` (port 443 when omitted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    host: String,
    port: u16,
}

impl Destination {
    /// `api.openai.com`, `api.openai.com:443`, `10.0.0.5:8080`, `[fd00::5]:443`.
    pub fn parse(text: &str) -> Result<Self, InvalidEntry> {
        let (host, port) = split_host_port(text.trim())
            .ok_or_else(|| InvalidEntry::NotHostPort(text.to_owned()))?;
        let port = port.unwrap_or(443);
        let host = host.to_ascii_lowercase();
        let valid_name = !host.is_empty()
            && host.len() <= 253
            && host
                .split('.')
                .all(|label| !label.is_empty() && label.len() <= 63 && !label.starts_with('-'))
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if host.parse::<IpAddr>().is_err() && !valid_name {
            return Err(InvalidEntry::NotAHost {
                entry: text.to_owned(),
                host,
            });
        }
        if port == 0 {
            return Err(InvalidEntry::PortZero(text.to_owned()));
        }
        Ok(Destination { host, port })
    }

    fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// Splits `host:port` / `[v6]:port` / `host`; `None` when malformed.
pub fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match text.rsplit_once(':') {
        // A bare IPv6 address has colons but no port.
        Some(_) if text.parse::<IpAddr>().is_ok() => Some((text, None)),
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((text, None)),
    }
}

/// The destinations one agent may reach.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EgressPolicy {
    allowed: Vec<Destination>,
}

impl EgressPolicy {
    pub fn new(entries: &[String]) -> Result<Self, InvalidEntry> {
        Ok(EgressPolicy {
            allowed: entries
                .iter()
                .map(|e| Destination::parse(e))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn allowed(&self) -> &[Destination] {
        &self.allowed
    }

    /// Whether `host:port` may be asked for at all.
    pub fn check_destination(&self, host: &str, port: u16) -> Result<(), Refused> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.to_ascii_lowercase();
        if self
            .allowed
            .iter()
            .any(|d| d.port == port && same_host(&d.host, &host))
        {
            Ok(())
        } else {
            Err(Refused::NotListed {
                host,
                port,
                allowed: self.describe(),
            })
        }
    }

    /// Whether `address`, which `host` resolved to, may be connected to.
    pub fn check_address(&self, host: &str, address: IpAddr) -> Result<(), Refused> {
        if let Some(why) = never_reachable(address) {
            return Err(Refused::NeverReachable {
                host: host.to_owned(),
                address,
                why,
            });
        }
        if is_internal(address) {
            // Only an address the operator listed itself, asked for by that address.
            let host_ip = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok();
            let listed = self.allowed.iter().any(|d| d.ip() == Some(address));
            if !(listed && host_ip == Some(address)) {
                return Err(Refused::Internal {
                    host: host.to_owned(),
                    address,
                });
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        if self.allowed.is_empty() {
            return "empty".to_owned();
        }
        self.allowed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn same_host(listed: &str, asked: &str) -> bool {
    match (listed.parse::<IpAddr>(), asked.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => listed == asked.trim_end_matches('.'),
    }
}

/// Addresses no agent may reach: cloud metadata services and anything link-local,
/// unspecified, broadcast or multicast.
fn never_reachable(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            if o[0] == 169 && o[1] == 254 {
                Some("a link-local address (cloud metadata lives there)")
            } else if o == [100, 100, 100, 200] {
                Some("a cloud metadata address")
            } else if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
                Some("not a host address")
            } else {
                None
            }
        }
        IpAddr::V6(ip) => {
            let s = ip.segments();
            if let Some(v4) = ip.to_ipv4_mapped() {
                return never_reachable(IpAddr::V4(v4));
            }
            if s[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if s == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254] {
                Some("a cloud metadata address")
            } else if ip.is_unspecified() || ip.is_multicast() {
                Some("not a host address")
            } else {
                None
            }
        }
    }
}

/// Loopback, private, shared (CGNAT) and unique-local addresses: the host's and the
/// organisation's own services.
fn is_internal(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            ip.is_loopback() || ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_internal(IpAddr::V4(v4)),
            None => ip.is_loopback() || (ip.segments()[0] & 0xfe00) == 0xfc00,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> EgressPolicy {
        EgressPolicy::new(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn entries_parse_with_a_default_port() {
        let p = policy(&["API.openai.com", "10.0.0.5:8080", "[fd00::5]:8443"]);
        let shown: Vec<String> = p.allowed().iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["api.openai.com:443", "10.0.0.5:8080", "[fd00::5]:8443"]
        );
        for bad in [
            "",
            "a b:443",
            "host:99999",
            "host:0",
            "-x.com",
            "[::1",
            "host:port",
        ] {
            assert!(EgressPolicy::new(&[bad.to_owned()]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_bad_entry_is_named_as_before() {
        let refused = |entry: &str| {
            EgressPolicy::new(&[entry.to_owned()])
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused("[::1"),
            "egress entry \"[::1\" is not host or host:port"
        );
        assert_eq!(
            refused("A b:443"),
            "egress entry \"A b:443\": \"a b\" is not a host name or address"
        );
        assert_eq!(refused("host:0"), "egress entry \"host:0\": port 0");
    }

    #[test]
    fn only_listed_destinations_are_allowed() {
        let p = policy(&["api.openai.com:443"]);
        assert!(p.check_destination("api.openai.com", 443).is_ok());
        assert!(p.check_destination("API.OpenAI.com.", 443).is_ok());
        assert!(p.check_destination("api.openai.com", 80).is_err());
        assert!(p.check_destination("evil.example", 443).is_err());
        let refused = p.check_destination("169.254.169.254", 80).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "169.254.169.254:80 is not on the agent's egress allow-list (api.openai.com:443)"
        );
        assert_eq!(
            EgressPolicy::default()
                .check_destination("X", 443)
                .unwrap_err()
                .to_string(),
            "x:443 is not on the agent's egress allow-list (empty)"
        );
        assert!(EgressPolicy::default().check_destination("x", 443).is_err());
    }

    #[test]
    fn metadata_and_link_local_addresses_are_never_reached() {
        let p = policy(&["169.254.169.254:80", "metadata.google.internal:80"]);
        for ip in [
            "169.254.169.254",
            "100.100.100.200",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(p.check_address("x", ip).is_err(), "{ip}");
        }
        assert_eq!(
            p.check_address("x", "169.254.169.254".parse().unwrap())
                .unwrap_err()
                .to_string(),
            "x resolves to 169.254.169.254, a link-local address (cloud metadata lives there)"
        );
    }

    #[test]
    fn names_cannot_point_inward_but_listed_addresses_can() {
        let p = policy(&["model.internal:443", "10.1.2.3:8080", "127.0.0.1:9000"]);
        for ip in [
            "10.9.9.9",
            "127.0.0.1",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "::1",
            "fd12::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(p.check_address("model.internal", ip).is_err(), "{ip}");
        }
        assert_eq!(
            p.check_address("model.internal", "10.9.9.9".parse().unwrap())
                .unwrap_err()
                .to_string(),
            "model.internal resolves to the internal address 10.9.9.9; list the address itself to allow it"
        );
        assert!(p
            .check_address("10.1.2.3", "10.1.2.3".parse().unwrap())
            .is_ok());
        assert!(p
            .check_address("127.0.0.1", "127.0.0.1".parse().unwrap())
            .is_ok());
        assert!(p
            .check_address("api.openai.com", "162.159.140.245".parse().unwrap())
            .is_ok());
    }
}
