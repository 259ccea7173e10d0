//! Repository identifiers. Input from HTTP or the queue is `owner/name` on the configured
//! forge, or an `https` URL on an allowed host; specrun builds every URL it clones from
//! itself. The operator's own `specrun run` may also name a local path or `file://` URL.

use std::fmt;
use url::{Host, Url};

/// Where a run clones from and pushes to. The URL never carries credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoRef {
    /// `owner/name` on the configured forge.
    Forge { owner: String, name: String },
    /// A URL on a host the configuration allows.
    Url(Url),
    /// A path or `file://` URL on the operator's machine (trusted input only).
    Local(String),
}

/// Which repositories a request may name.
#[derive(Debug, Clone, Default)]
pub struct RepoPolicy {
    /// `host` or `host:port` entries a full URL may point at.
    pub allowed_hosts: Vec<String>,
    /// The operator's own command line: local paths, `file://` URLs and any URL host.
    pub trusted: bool,
    /// Where a request's `callback_url` may point.
    pub callbacks: crate::notify::CallbackPolicy,
}

impl RepoPolicy {
    /// Untrusted input limited to the hosts in a comma-separated list
    /// (`SPECRUN_ALLOW_REPO_HOSTS`), plus `owner/name` on the forge.
    pub fn allowing(hosts: &str) -> Self {
        RepoPolicy {
            allowed_hosts: hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect(),
            trusted: false,
            callbacks: Default::default(),
        }
    }
}

/// Why a repository identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRepo(String);

fn refuse<T>(why: impl Into<String>) -> Result<T, InvalidRepo> {
    Err(InvalidRepo(why.into()))
}

impl RepoRef {
    pub fn parse(input: &str, policy: &RepoPolicy) -> Result<Self, InvalidRepo> {
        if input.is_empty() || input.len() > 2048 {
            return refuse("must be 1 to 2048 characters");
        }
        if input.starts_with('-') {
            return refuse("may not start with '-'");
        }
        if input.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return refuse("may not contain spaces or control characters");
        }
        if policy.trusted && looks_local(input) {
            return Ok(RepoRef::Local(input.to_owned()));
        }
        if input.contains("::") {
            return refuse("git transport syntax such as 'ext::' is not allowed");
        }
        if input.contains("://") {
            return parse_url(input, policy);
        }
        parse_owner_name(input)
    }

    /// The URL to clone from and push to. `forge_git_base` is the forge's git host, such as
    /// `https://github.com`, used for `owner/name`.
    pub fn clone_url(&self, forge_git_base: &str) -> String {
        match self {
            RepoRef::Forge { owner, name } => {
                format!(
                    "{}/{owner}/{name}.git",
                    forge_git_base.trim_end_matches('/')
                )
            }
            RepoRef::Url(url) => url.to_string(),
            RepoRef::Local(path) => path.clone(),
        }
    }

    /// `owner/name` when the repository lives on the configured forge.
    pub fn forge_slug(&self) -> Option<(&str, &str)> {
        match self {
            RepoRef::Forge { owner, name } => Some((owner, name)),
            _ => None,
        }
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoRef::Forge { owner, name } => write!(f, "{owner}/{name}"),
            RepoRef::Url(url) => f.write_str(url.as_str()),
            RepoRef::Local(path) => f.write_str(path),
        }
    }
}

fn looks_local(input: &str) -> bool {
    input.starts_with("file://")
        || input.starts_with('/')
        || input.starts_with("./")
        || input.starts_with("../")
        || input == "."
}

fn valid_owner(owner: &str) -> bool {
    // GitHub's rule: alphanumerics and single hyphens, not at either end, at most 39.
    let bytes = owner.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 39
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
        && !owner.contains("--")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn parse_owner_name(input: &str) -> Result<RepoRef, InvalidRepo> {
    let Some((owner, name)) = input.split_once('/') else {
        return refuse("must be 'owner/name' or an https URL on an allowed host");
    };
    let name = name.strip_suffix(".git").unwrap_or(name);
    // `owner/name.git.git` would name `name.git`, which a second reading shortens again:
    // GitHub refuses such names, and the request must mean the same when read twice.
    if name.to_ascii_lowercase().ends_with(".git") {
        return refuse(format!(
            "name {name:?} may not end in '.git'; give the name once, with or without one '.git'"
        ));
    }
    if !valid_owner(owner) {
        return refuse(format!(
            "owner {owner:?} must be 1-39 letters, digits or single hyphens, not at either end"
        ));
    }
    if !valid_name(name) {
        return refuse(format!(
            "name {name:?} must be 1-100 of letters, digits, '.', '_', '-', and not '.' or '..'"
        ));
    }
    Ok(RepoRef::Forge {
        owner: owner.to_owned(),
        name: name.to_owned(),
    })
}

fn parse_url(input: &str, policy: &RepoPolicy) -> Result<RepoRef, InvalidRepo> {
    // URL parsing folds `..` away; refuse it before that hides a traversal attempt. The
    // parser reads `\` as `/` in http(s) URLs, so it separates segments here too.
    let after_scheme = input
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(input);
    let traversal = after_scheme.split(['/', '\\']).any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    });
    if traversal {
        return refuse("URL path may not contain '.' or '..' segments");
    }
    let url = Url::parse(input).or_else(|e| refuse(format!("is not a valid URL: {e}")))?;
    let host = match url.host() {
        Some(host) => host,
        None => return refuse("URL has no host"),
    };
    let host_port = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let allowed =
        policy.trusted || host_listed(&policy.allowed_hosts, &host.to_string(), url.port());
    if !allowed {
        return refuse(format!(
            "host {host_port:?} is not on the allow-list of repository hosts"
        ));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&host) => {}
        "http" => return refuse("plain http is allowed only for loopback test hosts; use https"),
        other => return refuse(format!("scheme {other:?} is not allowed; use https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return refuse("URL may not carry credentials; configure the forge token instead");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return refuse("URL may not have a query or fragment");
    }
    let segments: Vec<&str> = url.path().trim_matches('/').split('/').collect();
    let path_ok = !segments.is_empty()
        && segments.iter().all(|s| {
            let s = s.strip_suffix(".git").unwrap_or(s);
            valid_name(s) && !s.starts_with('-')
        });
    if !path_ok {
        return refuse("URL path must be segments such as '/owner/name.git' made of letters, digits, '.', '_', '-'");
    }
    Ok(RepoRef::Url(url))
}

/// Whether `host`, or `host:port` when the URL names a port, is an entry of an
/// operator's allow-list (repository hosts, callback hosts), in any case.
pub(crate) fn host_listed(list: &[String], host: &str, port: Option<u16>) -> bool {
    let with_port = port.map(|p| format!("{host}:{p}"));
    list.iter().any(|entry| {
        entry.eq_ignore_ascii_case(host)
            || with_port
                .as_deref()
                .is_some_and(|hp| entry.eq_ignore_ascii_case(hp))
    })
}

/// `localhost` or a loopback address: where plain http is allowed for tests.
pub(crate) fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RepoPolicy {
        RepoPolicy {
            allowed_hosts: vec!["git.example.com".into(), "127.0.0.1:8080".into()],
            trusted: false,
            callbacks: Default::default(),
        }
    }

    #[test]
    fn owner_name_builds_the_forge_url() {
        let repo = RepoRef::parse("octo-org/hello.world", &policy());
        let url = repo.map(|r| r.clone_url("https://github.com/"));
        assert_eq!(
            url.ok().as_deref(),
            Some("https://github.com/octo-org/hello.world.git")
        );
    }

    /// Found by the queue_message fuzz target: `o/h.git.git` read as `o/h.git`, whose
    /// wire form then read as `o/h`.
    #[test]
    fn a_name_means_the_same_when_read_twice() {
        let once = RepoRef::parse("o/h.git", &policy()).map(|r| r.clone_url("https://x/"));
        assert_eq!(once.ok().as_deref(), Some("https://x/o/h.git"));
        for twice in ["o/h.git.git", "o/h.GIT.git", "o/h.git.git.git"] {
            assert!(RepoRef::parse(twice, &policy()).is_err(), "{twice}");
        }
    }

    #[test]
    fn allowed_urls_pass() {
        for ok in [
            "https://git.example.com/a/b.git",
            "http://127.0.0.1:8080/r/x.git",
        ] {
            assert!(
                matches!(RepoRef::parse(ok, &policy()), Ok(RepoRef::Url(_))),
                "{ok}"
            );
        }
    }

    #[test]
    fn hostile_identifiers_are_refused() {
        for bad in [
            "file:///etc/passwd",
            "/srv/repo",
            "ext::sh -c touch% /tmp/pwned",
            "ssh://-oProxyCommand=x/a/b",
            "ssh://git.example.com/a/b",
            "-upload-pack=x",
            "https://evil.example.org/a/b",
            "https://169.254.169.254/a/b",
            "http://git.example.com/a/b",
            "https://user:pw@git.example.com/a/b",
            "https://git.example.com/../../etc",
            "https://git.example.com/a/b?x=1",
            "https://git.example.com/a/%2E%2E/b",
            // Found by the `request` fuzz target: `\` is a `/` to the URL parser, which
            // folded these dot segments away after the check.
            "https://git.example.com/t\\./eam/app.git",
            "https://git.example.com/a\\..\\b/c",
            "https://git.example.com/",
            "a/..",
            "a/.",
            "-a/b",
            "a--b/c",
            "owner/na me",
            "owner",
            "ow\u{202e}ner/x",
        ] {
            assert!(RepoRef::parse(bad, &policy()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn local_paths_only_when_trusted() {
        let trusted = RepoPolicy {
            trusted: true,
            ..policy()
        };
        assert!(matches!(
            RepoRef::parse("/srv/repo", &trusted),
            Ok(RepoRef::Local(_))
        ));
        assert!(matches!(
            RepoRef::parse("https://other.example/a/b", &trusted),
            Ok(RepoRef::Url(_))
        ));
        assert!(matches!(
            RepoRef::parse("file:///srv/r.git", &trusted),
            Ok(RepoRef::Local(_))
        ));
        assert!(RepoRef::parse("-x", &trusted).is_err());
    }
}
