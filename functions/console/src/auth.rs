//! The operator credential: one deployment secret (the console token). A request proves
//! it holds it with `Authorization: Bearer <token>` (scripts, curl) or with the session
//! cookie the login form hands out (browsers). The cookie is `<expiry>.<nonce>.<mac>`,
//! an HMAC-SHA256 under a key derived from the token, so changing the token ends every
//! session. A cookie-borne request that changes state must also carry the session's CSRF
//! token (an HMAC of the cookie) in a header: another site can make a browser send the
//! cookie, never read the token out of this origin's pages.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

type HmacSha256 = Hmac<Sha256>;

/// The session cookie's name.
pub const COOKIE: &str = "specrun_session";
/// The header a cookie-borne state-changing request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-specrun-csrf";
/// How long a console session lasts.
pub const SESSION_SECS: i64 = 12 * 3600;
/// Shortest console token taken: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the console token is {0} characters long; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)")]
    TooShort(usize),
    #[error("the console token has whitespace or control characters; use a plain token (e.g. `openssl rand -hex 32`)")]
    NotPlain,
}

/// The deployment's console credential.
#[derive(Clone)]
pub struct Credential {
    /// SHA-256 of the token: what a presented token's hash is compared with, in constant time.
    token_hash: [u8; 32],
    /// Signs session cookies and derives CSRF tokens.
    key: [u8; 32],
}

/// Who a request is, as far as the console can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Bearer token: not something a browser attaches on its own, so no CSRF check.
    Bearer,
    /// A valid session cookie; its CSRF token is what state-changing requests must carry.
    Session { csrf: String },
    /// No credential, or a wrong or expired one.
    Anonymous,
}

impl Credential {
    pub fn new(token: &str) -> Result<Self, TokenError> {
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TokenError::NotPlain);
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort(token.len()));
        }
        let key: [u8; 32] = Sha256::new()
            .chain_update(b"specrun-console-session-v1\0")
            .chain_update(token.as_bytes())
            .finalize()
            .into();
        Ok(Credential {
            token_hash: Sha256::digest(token.as_bytes()).into(),
            key,
        })
    }

    /// Whether `given` is the token; hashes first so the comparison's time says nothing
    /// of the token's length or its prefix.
    pub fn is_token(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        given.ct_eq(&self.token_hash).into()
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        #[allow(clippy::expect_used)]
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        for part in parts {
            mac.update(part);
            mac.update(b"\0");
        }
        mac
    }

    /// A new session cookie value, valid until `now` + [`SESSION_SECS`].
    pub fn new_session(&self, now: OffsetDateTime) -> String {
        let expiry = (now.unix_timestamp() + SESSION_SECS).to_string();
        let nonce = uuid::Uuid::now_v7().simple().to_string();
        let mac = self.mac(&[b"session", expiry.as_bytes(), nonce.as_bytes()]);
        format!(
            "{expiry}.{nonce}.{}",
            hex::encode(mac.finalize().into_bytes())
        )
    }

    /// The CSRF token of session cookie `value` when the cookie is genuine and unexpired.
    pub fn session_csrf(&self, value: &str, now: OffsetDateTime) -> Option<String> {
        let mut parts = value.split('.');
        let (expiry, nonce, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let signature = hex::decode(mac).ok()?;
        self.mac(&[b"session", expiry.as_bytes(), nonce.as_bytes()])
            .verify_slice(&signature)
            .ok()?;
        if expiry.parse::<i64>().ok()? <= now.unix_timestamp() {
            return None;
        }
        let csrf = self.mac(&[b"csrf", value.as_bytes()]);
        Some(hex::encode(csrf.finalize().into_bytes()))
    }

    /// Who sent `request`: its bearer token first, then its session cookie.
    pub fn caller(&self, request: &http::request::Parts, now: OffsetDateTime) -> Caller {
        if let Some(token) = bearer(&request.headers) {
            return if self.is_token(token) {
                Caller::Bearer
            } else {
                Caller::Anonymous
            };
        }
        session_cookie(&request.headers)
            .and_then(|value| self.session_csrf(value, now))
            .map_or(Caller::Anonymous, |csrf| Caller::Session { csrf })
    }
}

/// Whether `given` (a request's CSRF header) is `expected`, in constant time.
pub fn csrf_matches(expected: &str, given: Option<&str>) -> bool {
    given.is_some_and(|given| given.as_bytes().ct_eq(expected.as_bytes()).into())
}

fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn session_cookie(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const TOKEN: &str = "operator-token-0123456789";
    const NOW: OffsetDateTime = datetime!(2026-12-03 12:00 UTC);

    fn parts(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut request = http::Request::get("/runs");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap_or_default().into_parts().0
    }

    #[test]
    fn short_or_spaced_tokens_are_refused() {
        assert_eq!(
            Credential::new("short").err(),
            Some(TokenError::TooShort(5))
        );
        assert_eq!(
            Credential::new("with space 0123456789").err(),
            Some(TokenError::NotPlain)
        );
    }

    #[test]
    fn a_bearer_token_is_checked() -> Result<(), TokenError> {
        let credential = Credential::new(TOKEN)?;
        let right = format!("Bearer {TOKEN}");
        assert_eq!(
            credential.caller(&parts(&[("authorization", &right)]), NOW),
            Caller::Bearer
        );
        for wrong in [
            "Bearer nope",
            "Basic abc",
            "Bearer",
            &format!("Bearer {TOKEN}x"),
        ] {
            assert_eq!(
                credential.caller(&parts(&[("authorization", wrong)]), NOW),
                Caller::Anonymous,
                "{wrong}"
            );
        }
        assert_eq!(credential.caller(&parts(&[]), NOW), Caller::Anonymous);
        Ok(())
    }

    #[test]
    fn a_session_cookie_is_genuine_until_it_expires() -> Result<(), TokenError> {
        let credential = Credential::new(TOKEN)?;
        let value = credential.new_session(NOW);
        let cookie = format!("other=1; {COOKIE}={value}");
        let Caller::Session { csrf } = credential.caller(&parts(&[("cookie", &cookie)]), NOW)
        else {
            return Err(TokenError::NotPlain);
        };
        assert!(csrf_matches(&csrf, Some(&csrf)));
        assert!(!csrf_matches(&csrf, Some("0000")));
        assert!(!csrf_matches(&csrf, None));
        let later = NOW + time::Duration::seconds(SESSION_SECS);
        assert_eq!(credential.session_csrf(&value, later), None, "expired");
        let tampered = value.replacen(value.split('.').next().unwrap_or_default(), "9999999999", 1);
        assert_eq!(
            credential.session_csrf(&tampered, NOW),
            None,
            "expiry changed"
        );
        let other = Credential::new("another-token-0123456789")?;
        assert_eq!(other.session_csrf(&value, NOW), None, "token rotated");
        assert_eq!(credential.session_csrf("a.b.zz", NOW), None);
        Ok(())
    }
}
