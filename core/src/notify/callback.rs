//! Where notifications may go. A request's `callback_url` is untrusted: it must be
//! `https` (plain `http` only to a loopback address, and only when the operator allowed
//! that, for tests), its `host[:port]` must be on the operator's allow-list
//! (`SPECRUN_CALLBACK_HOSTS`, like repository hosts), and it may carry no user name,
//! password or fragment. A URL is recorded and logged only [`masked`](NotifyUrl::masked):
//! every query value is replaced, since a receiver's token often rides there.

use crate::repo::{host_listed, is_loopback};
use std::fmt;

/// The longest callback URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Which callback URLs requests may name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallbackPolicy {
    /// `host` or `host:port` entries a callback URL may point at.
    pub hosts: Vec<String>,
    /// Plain `http` to a loopback address is accepted (tests on one machine).
    pub allow_http_loopback: bool,
}

impl CallbackPolicy {
    /// The hosts of a comma-separated list (`SPECRUN_CALLBACK_HOSTS`).
    pub fn allowing(hosts: &str, allow_http_loopback: bool) -> Self {
        CallbackPolicy {
            hosts: hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_ascii_lowercase)
                .collect(),
            allow_http_loopback,
        }
    }
}

/// A URL notifications may be sent to.
#[derive(Clone, PartialEq, Eq)]
pub struct NotifyUrl(url::Url);

/// Why a URL was refused; shown to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UrlRefused(pub String);

fn refused(reason: impl Into<String>) -> UrlRefused {
    UrlRefused(reason.into())
}

impl NotifyUrl {
    /// A request's `callback_url`, checked against `policy`.
    pub fn callback(text: &str, policy: &CallbackPolicy) -> Result<Self, UrlRefused> {
        let url = Self::parse(text)?;
        let host = url.0.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = url.0.port();
        match url.0.scheme() {
            "https" => {}
            "http"
                if policy.allow_http_loopback && url.0.host().is_some_and(|h| is_loopback(&h)) => {}
            "http" => return Err(refused(
                "must be an https URL (plain http only to a loopback address the operator allowed)",
            )),
            other => return Err(refused(format!("scheme {other:?} is not https"))),
        }
        if !host_listed(&policy.hosts, &host, port) {
            let shown = match port {
                Some(p) => format!("{host}:{p}"),
                None => host,
            };
            return Err(refused(format!(
                "host {shown} is not an allowed callback host; the operator lists them in SPECRUN_CALLBACK_HOSTS"
            )));
        }
        Ok(url)
    }

    /// The operator's own webhook URL (`SPECRUN_WEBHOOK_URL`): trusted, so any host and
    /// plain http are taken, but still no credentials in it.
    pub fn webhook(text: &str) -> Result<Self, UrlRefused> {
        let url = Self::parse(text)?;
        match url.0.scheme() {
            "https" | "http" => Ok(url),
            other => Err(refused(format!("scheme {other:?} is not http or https"))),
        }
    }

    fn parse(text: &str) -> Result<Self, UrlRefused> {
        if text.len() > MAX_URL_LEN {
            return Err(refused(format!(
                "is {} bytes; the limit is {MAX_URL_LEN}",
                text.len()
            )));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(refused("contains whitespace or control characters"));
        }
        let url = url::Url::parse(text).map_err(|e| refused(format!("is not a URL: {e}")))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(refused("has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refused(
                "contains a user name or password; credentials never go in a URL (receivers verify the Specrun-Signature header instead)",
            ));
        }
        if url.fragment().is_some() {
            return Err(refused("has a #fragment, which is never sent"));
        }
        Ok(NotifyUrl(url))
    }

    /// The URL to send to, with everything in it.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The URL as it may be recorded and logged: every query value replaced by `***`.
    pub fn masked(&self) -> String {
        let mut url = self.0.clone();
        if url.query().is_some() {
            let names: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
            let mut query = url.query_pairs_mut();
            query.clear();
            for name in names {
                query.append_pair(&name, "***");
            }
        }
        url.to_string()
    }
}

/// The masked form only: a URL with a token in its query never reaches a log by `{:?}`.
impl fmt::Debug for NotifyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NotifyUrl({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CallbackPolicy {
        CallbackPolicy::allowing("hooks.example.com, 127.0.0.1:9000", true)
    }

    #[test]
    fn an_https_url_on_the_allow_list_is_taken() {
        let url = NotifyUrl::callback("https://hooks.example.com/specrun?x=1", &policy())
            .expect("allowed");
        assert_eq!(url.expose(), "https://hooks.example.com/specrun?x=1");
    }

    #[test]
    fn refusals_say_why() {
        let cases = [
            ("https://evil.example.net/h", "not an allowed callback host"),
            ("http://hooks.example.com/h", "must be an https URL"),
            ("ftp://hooks.example.com/h", "is not https"),
            (
                "https://user:pw@hooks.example.com/h",
                "credentials never go in a URL",
            ),
            ("https://hooks.example.com/h#frag", "fragment"),
            ("https://hooks.example.com/h x", "whitespace"),
            ("not-a-url", "is not a URL"),
            (
                "http://127.0.0.1:9001/h",
                "127.0.0.1:9001 is not an allowed",
            ),
        ];
        for (text, why) in cases {
            let refused = NotifyUrl::callback(text, &policy()).expect_err(text);
            assert!(refused.0.contains(why), "{text}: {refused}");
        }
    }

    #[test]
    fn plain_http_to_loopback_needs_the_operators_consent() {
        assert!(NotifyUrl::callback("http://127.0.0.1:9000/h", &policy()).is_ok());
        let strict = CallbackPolicy {
            allow_http_loopback: false,
            ..policy()
        };
        assert!(NotifyUrl::callback("http://127.0.0.1:9000/h", &strict).is_err());
        assert!(NotifyUrl::callback("https://127.0.0.1:9000/h", &strict).is_ok());
    }

    #[test]
    fn masking_hides_every_query_value_and_debug_shows_only_the_mask() {
        let url = NotifyUrl::webhook("https://h.example/x?token=abc123&team=t1").expect("url");
        assert_eq!(url.masked(), "https://h.example/x?token=***&team=***");
        assert!(!format!("{url:?}").contains("abc123"));
        let plain = NotifyUrl::webhook("http://h.example/x").expect("url");
        assert_eq!(plain.masked(), "http://h.example/x");
    }

    #[test]
    fn a_webhook_may_not_carry_credentials_either() {
        assert!(NotifyUrl::webhook("https://a:b@h.example/").is_err());
        assert!(NotifyUrl::webhook("http://h.example:8080/any").is_ok());
    }
}
