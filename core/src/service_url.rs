//! The broker and result-backend URLs Celery users already have (`amqp://...`,
//! `db+postgresql://...`), read into what the adapters connect with, and shown with the
//! password masked. Pure parsing: no connection is made here.

use percent_encoding::percent_decode_str;
use url::Url;

/// A URL that cannot be used. The text never holds the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url}: {reason}")]
pub struct ServiceUrlError {
    /// The URL as given, password masked.
    pub url: String,
    pub reason: String,
}

/// A RabbitMQ (AMQP 0-9-1) broker, as kombu reads `amqp://user:password@host:port/vhost`.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
    /// Whether the password came from the URL (kombu's default `guest` otherwise).
    pub has_password: bool,
}

impl std::fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl AmqpUrl {
    /// `amqp://user:***@host:port/vhost`: safe for logs and errors.
    pub fn redacted(&self) -> String {
        let vhost =
            percent_encoding::utf8_percent_encode(&self.vhost, percent_encoding::NON_ALPHANUMERIC);
        format!(
            "amqp://{}:***@{}:{}/{vhost}",
            self.user, self.host, self.port
        )
    }
}

/// Reads a broker URL: `amqp://` or `pyamqp://` (kombu's names for RabbitMQ over plain
/// TCP). Missing parts take kombu's defaults: user and password `guest`, host
/// `localhost`, port 5672, virtual host `/` (written `//` or `/%2F` in the URL).
pub fn parse_amqp(text: &str) -> Result<AmqpUrl, ServiceUrlError> {
    let fail = |reason: &str| ServiceUrlError {
        url: redact_url(text),
        reason: reason.to_owned(),
    };
    let url = Url::parse(text).map_err(|e| fail(&format!("not a URL ({e})")))?;
    match url.scheme() {
        "amqp" | "pyamqp" => {}
        "amqps" => {
            return Err(fail(
                "TLS (amqps://) is not supported by this runner; reach the broker over a \
                 private network or a local TLS tunnel and use amqp://",
            ))
        }
        other => {
            return Err(fail(&format!(
                "the broker must be RabbitMQ, amqp://user:password@host:5672/vhost (got a {other}:// URL)"
            )))
        }
    }
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let user = match url.username() {
        "" => "guest".to_owned(),
        name => decode(name),
    };
    let password = url.password().map(decode);
    // kombu: the path less its leading '/' is the virtual host; none means '/'.
    let path = url.path().strip_prefix('/').unwrap_or(url.path());
    let vhost = match decode(path) {
        v if v.is_empty() => "/".to_owned(),
        v => v,
    };
    Ok(AmqpUrl {
        host: url.host_str().unwrap_or("localhost").to_owned(),
        port: url.port().unwrap_or(5672),
        user,
        has_password: password.is_some(),
        password: password.unwrap_or_else(|| "guest".to_owned()),
        vhost,
    })
}

/// Reads a Celery database result backend URL (`db+postgresql://...`, also with a
/// SQLAlchemy driver: `db+postgresql+psycopg2://`, `db+postgresql+psycopg://`) into the
/// `postgresql://` connection URL libpq-style clients take.
pub fn parse_postgres_backend(text: &str) -> Result<String, ServiceUrlError> {
    let fail = |reason: &str| ServiceUrlError {
        url: redact_url(text),
        reason: reason.to_owned(),
    };
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(fail("not a URL"));
    };
    let scheme = scheme.strip_prefix("db+").unwrap_or(scheme);
    let dialect = scheme.split('+').next().unwrap_or_default();
    if !matches!(dialect, "postgresql" | "postgres") {
        return Err(fail(
            "the result backend must be PostgreSQL, db+postgresql://user:password@host:5432/dbname",
        ));
    }
    Ok(format!("postgresql://{rest}"))
}

/// `text` with the password of a `scheme://user:password@host` URL replaced by `***`;
/// anything else as it is. For every message that shows a URL.
pub fn redact_url(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    // The authority ends at the first '/', '?' or '#'; the password is after its first ':'
    // and before its last '@'.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => text.to_owned(),
        },
        None => text.to_owned(),
    }
}

/// Whether the URL carries a password (which must then come from the environment, never
/// from a command-line argument that every process listing shows).
pub fn has_password(text: &str) -> bool {
    redact_url(text) != text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn amqp_urls_read_as_kombu_reads_them() {
        let url = parse_amqp("amqp://specrun:s3cr%40t@127.0.0.1:5673//").unwrap();
        assert_eq!(
            (
                url.host.as_str(),
                url.port,
                url.user.as_str(),
                url.password.as_str(),
                url.vhost.as_str()
            ),
            ("127.0.0.1", 5673, "specrun", "s3cr@t", "/")
        );
        assert!(url.has_password);
        let url = parse_amqp("amqp://rabbit/jobs").unwrap();
        assert_eq!(
            (
                url.user.as_str(),
                url.password.as_str(),
                url.port,
                url.vhost.as_str()
            ),
            ("guest", "guest", 5672, "jobs")
        );
        assert!(!url.has_password);
        assert_eq!(parse_amqp("pyamqp://h/%2F").unwrap().vhost, "/");
        assert_eq!(parse_amqp("amqp://h").unwrap().vhost, "/");
    }

    #[test]
    fn amqp_url_errors_and_debug_never_show_the_password() {
        for bad in [
            "amqps://u:hunter22@h//",
            "redis://u:hunter22@h/0",
            "sqs://u:hunter22@",
        ] {
            let err = parse_amqp(bad).unwrap_err().to_string();
            assert!(!err.contains("hunter22"), "{err}");
            assert!(err.contains("u:***@"), "{err}");
        }
        let url = parse_amqp("amqp://u:hunter22@h:1/v").unwrap();
        assert_eq!(format!("{url:?}"), "amqp://u:***@h:1/v");
    }

    #[test]
    fn postgres_backend_urls_from_celery_and_sqlalchemy() {
        for (given, conn) in [
            (
                "db+postgresql://u:p@h:5432/db",
                "postgresql://u:p@h:5432/db",
            ),
            ("db+postgresql+psycopg2://u:p@h/db", "postgresql://u:p@h/db"),
            (
                "db+postgresql+psycopg://u@h/db?sslmode=disable",
                "postgresql://u@h/db?sslmode=disable",
            ),
            ("postgresql://h/db", "postgresql://h/db"),
        ] {
            assert_eq!(parse_postgres_backend(given).unwrap(), conn);
        }
        let err = parse_postgres_backend("db+mysql://u:hunter22@h/db")
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("hunter22") && err.contains("PostgreSQL"),
            "{err}"
        );
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("amqp://u:p@w@h:5672//"), "amqp://u:***@h:5672//");
        assert_eq!(redact_url("amqp://u@h//"), "amqp://u@h//");
        assert_eq!(redact_url("amqp://h/x:y@z"), "amqp://h/x:y@z");
        assert!(has_password("db+postgresql://u:p@h/db"));
        assert!(!has_password("db+postgresql://u@h/db"));
    }
}
