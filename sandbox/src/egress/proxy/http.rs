//! Reading HTTP/1.1 heads the way the proxy must: every field checked, framing that two
//! servers could read differently refused, and the head sent upstream rebuilt.

use super::conn::{find, invalid};
use specrun_core::egress::split_host_port;

/// How a message's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Body {
    Empty,
    Length(u64),
    Chunked,
    /// When the sender closes (answers only).
    ToEnd,
}

/// The lines of a head between CRLFs (the last blank line left off).
pub(super) fn head_lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(head.strip_suffix(b"\r\n\r\n").unwrap_or(head));
    std::iter::from_fn(move || {
        let text = rest?;
        match find(text, b"\r\n") {
            Some(at) => {
                rest = Some(&text[at + 2..]);
                Some(&text[..at])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// `Name: value` with a token name (no space before the colon, no folded line), or None.
pub(super) fn field(line: &[u8]) -> Option<(&str, &[u8])> {
    let colon = line.iter().position(|b| *b == b':')?;
    let name = std::str::from_utf8(&line[..colon]).ok()?;
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return None;
    }
    let value = line[colon + 1..].trim_ascii();
    if value.iter().any(|b| *b == b'\r' || *b == b'\n' || *b == 0) {
        return None;
    }
    Some((name, value))
}

pub(super) type Fields<'a> = Vec<(&'a str, &'a [u8])>;

/// Values of the fields named `name`, as text (a value that is not UTF-8 reads as "").
pub(super) fn values<'a>(fields: &'a Fields<'_>, name: &'a str) -> impl Iterator<Item = &'a str> {
    fields
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| std::str::from_utf8(v).unwrap_or(""))
}

/// Fields that concern one connection only (RFC 9110 7.6.1), with those `Connection`
/// names: never passed on. The proxy sets `Host` and `Connection` itself; `Upgrade` and
/// `Expect` would start exchanges it does not relay.
pub(super) fn hop_by_hop(fields: &Fields<'_>) -> Vec<String> {
    let mut names: Vec<String> = [
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    ]
    .map(str::to_owned)
    .to_vec();
    for listed in values(fields, "connection") {
        names.extend(listed.split(',').map(|t| t.trim().to_ascii_lowercase()));
    }
    names
}

/// A request the proxy understood.
pub(super) struct Request {
    pub(super) method: String,
    pub(super) host: String,
    pub(super) port: u16,
    /// None for CONNECT.
    pub(super) http: Option<HttpRequest>,
}

/// A plain HTTP request, ready to send upstream.
pub(super) struct HttpRequest {
    /// In origin form, with the `Host` the proxy checked and `Connection: close`.
    pub(super) upstream_head: Vec<u8>,
    pub(super) body: Body,
    /// Whether the client may send another request on its connection.
    pub(super) keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body: the proxy answers
    /// that itself (it does not pass `Expect` on).
    pub(super) expect_continue: bool,
}

/// `CONNECT host:port HTTP/1.1` or `METHOD http://host[:port]/path HTTP/1.1`, with
/// fields the proxy can pass on unambiguously.
pub(super) fn parse(head: &[u8]) -> Result<Request, String> {
    let mut lines = head_lines(head);
    let line = lines.next().unwrap_or_default();
    let line = std::str::from_utf8(line).map_err(|_| "a request line that is not UTF-8")?;
    let mut fields = Fields::new();
    for raw in lines {
        let parsed = field(raw)
            .ok_or_else(|| format!("a malformed header line {:?}", String::from_utf8_lossy(raw)))?;
        fields.push(parsed);
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("a malformed request line {line:?}"));
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(format!(
            "{method} {target:?}: {version:?} is not HTTP/1.1 or 1.0"
        ));
    }
    if method == "CONNECT" {
        let (host, port) = split_host_port(target)
            .and_then(|(h, p)| Some((h, p?)))
            .ok_or_else(|| format!("CONNECT to {target:?}, which is not host:port"))?;
        return Ok(Request {
            method: method.to_owned(),
            host: host.to_owned(),
            port,
            http: None,
        });
    }
    let rest = target.strip_prefix("http://").ok_or_else(|| {
        format!("{method} {target:?}: only CONNECT and http:// URLs go through the proxy")
    })?;
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let (host, port) =
        split_host_port(authority).ok_or_else(|| format!("a malformed URL {target:?}"))?;
    let port = port.unwrap_or(80);
    check_host_field(&fields, host, port)?;
    let body = request_body(&fields)?;
    let dropped = hop_by_hop(&fields);
    let keep_alive = version == "HTTP/1.1" && !dropped.iter().any(|n| n == "close");
    let expect_continue = body != Body::Empty
        && values(&fields, "expect").any(|e| e.eq_ignore_ascii_case("100-continue"));
    let mut upstream_head = format!(
        "{method} {path} {version}\r\nhost: {}\r\n",
        authority_of(host, port)
    )
    .into_bytes();
    for raw in head_lines(head).skip(1) {
        let name = field(raw)
            .map(|(n, _)| n.to_ascii_lowercase())
            .unwrap_or_default();
        if name != "host" && name != "expect" && !dropped.contains(&name) {
            upstream_head.extend_from_slice(raw);
            upstream_head.extend_from_slice(b"\r\n");
        }
    }
    upstream_head.extend_from_slice(b"connection: close\r\n\r\n");
    Ok(Request {
        method: method.to_owned(),
        host: host.to_owned(),
        port,
        http: Some(HttpRequest {
            upstream_head,
            body,
            keep_alive,
            expect_continue,
        }),
    })
}

/// An absolute-form request's `Host` field, when it has one, must name its URL's
/// destination: the proxy checks the URL, and a server behind it must not read another.
pub(super) fn check_host_field(fields: &Fields<'_>, host: &str, port: u16) -> Result<(), String> {
    let given: Vec<&str> = values(fields, "host").collect();
    let [given] = given[..] else {
        return match given.len() {
            0 => Ok(()),
            _ => Err("more than one Host header".to_owned()),
        };
    };
    let matches = split_host_port(given).is_some_and(|(h, p)| {
        let h = h.trim_end_matches('.');
        h.eq_ignore_ascii_case(host.trim_end_matches('.')) && p.unwrap_or(80) == port
    });
    if matches {
        Ok(())
    } else {
        Err(format!(
            "the Host header {given:?} does not match the URL's {}",
            authority_of(host, port)
        ))
    }
}

/// `host:port` for a Host field, with an IPv6 address in brackets.
pub(super) fn authority_of(host: &str, port: u16) -> String {
    let host = match host.contains(':') {
        true => format!("[{host}]"),
        false => host.to_owned(),
    };
    match port {
        80 => host,
        _ => format!("{host}:{port}"),
    }
}

/// How a request's body is framed; anything two servers could read differently is
/// refused (RFC 9112 6.3).
pub(super) fn request_body(fields: &Fields<'_>) -> Result<Body, String> {
    let codings: Vec<&str> = values(fields, "transfer-encoding").collect();
    let lengths: Vec<&str> = values(fields, "content-length").collect();
    if !codings.is_empty() {
        if !lengths.is_empty() {
            return Err("both Transfer-Encoding and Content-Length".to_owned());
        }
        return match codings[..] {
            [coding] if coding.eq_ignore_ascii_case("chunked") => Ok(Body::Chunked),
            _ => Err(format!(
                "Transfer-Encoding {codings:?}: only chunked is passed on"
            )),
        };
    }
    match content_length(&lengths) {
        Some(0) => Ok(Body::Empty),
        Some(count) => Ok(Body::Length(count)),
        None if lengths.is_empty() => Ok(Body::Empty),
        None => Err(format!("Content-Length {lengths:?}")),
    }
}

/// The one length all `Content-Length` fields agree on.
pub(super) fn content_length(lengths: &[&str]) -> Option<u64> {
    let first = *lengths.first()?;
    let valid = !first.is_empty() && first.len() <= 19 && first.bytes().all(|b| b.is_ascii_digit());
    if !valid || lengths.iter().any(|l| *l != first) {
        return None;
    }
    first.parse().ok()
}

/// An answer's status code and fields.
pub(super) fn response_status(head: &[u8]) -> std::io::Result<(u16, Fields<'_>)> {
    let mut lines = head_lines(head);
    let status = lines
        .next()
        .and_then(|line| std::str::from_utf8(line).ok())
        .filter(|line| line.starts_with("HTTP/1."))
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("the destination's answer is not HTTP/1"))?;
    Ok((status, lines.filter_map(field).collect()))
}

/// How an answer's body is framed (RFC 9112 6.3).
pub(super) fn response_body(method: &str, status: u16, fields: &Fields<'_>) -> Body {
    if method == "HEAD" || status < 200 || status == 204 || status == 304 {
        return Body::Empty;
    }
    if let Some(codings) = values(fields, "transfer-encoding").last() {
        let last = codings.rsplit(',').next().unwrap_or("").trim();
        return match last.eq_ignore_ascii_case("chunked") {
            true => Body::Chunked,
            false => Body::ToEnd,
        };
    }
    let lengths: Vec<&str> = values(fields, "content-length").collect();
    match content_length(&lengths) {
        Some(count) => Body::Length(count),
        None => Body::ToEnd,
    }
}

/// An answer's head without its connection's own fields, and with `Connection: close`
/// when the proxy closes the client's connection after it.
pub(super) fn without_hop_by_hop(head: &[u8], fields: &Fields<'_>, close: bool) -> Vec<u8> {
    let dropped = hop_by_hop(fields);
    let mut lines = head_lines(head);
    let mut out = lines.next().unwrap_or_default().to_vec();
    out.extend_from_slice(b"\r\n");
    for raw in lines {
        let name = field(raw)
            .map(|(n, _)| n.to_ascii_lowercase())
            .unwrap_or_default();
        if !dropped.contains(&name) {
            out.extend_from_slice(raw);
            out.extend_from_slice(b"\r\n");
        }
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}
