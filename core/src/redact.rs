//! Masking secrets in output, on the GitHub Actions runner's model: each secret and its
//! encoded forms (base64 at the three byte alignments, URL-encoded, JSON-escaped) becomes
//! `***`, also when a secret is split across two chunks of a stream. Redaction is a safety
//! net; the design keeps the forge token out of the job container in the first place.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but RFC 3986's unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What replaces a secret.
pub const MASK: &[u8] = b"***";

/// Secrets shorter than this are not masked: masking `a` would destroy every log.
pub const MIN_SECRET_LEN: usize = 4;

/// The patterns to mask, built once per run from its secrets.
#[derive(Debug, Clone)]
pub struct Redactor {
    matcher: Option<Matcher>,
    longest: usize,
    /// Every form masked, for telling which bytes at a chunk's end may begin one.
    patterns: std::sync::Arc<Vec<Vec<u8>>>,
}

/// Finds the leftmost-longest secret form. The automaton is fast; when it cannot be built
/// (aho-corasick refuses pattern sets past its size limits) the same matches are found by
/// trying every pattern at every position: slow, but a redactor never masks nothing while
/// it was given secrets. Falling back here rather than making construction fallible keeps
/// every caller as simple as it is: a run has no better answer to a failed build than
/// masking the slow way.
#[derive(Debug, Clone)]
enum Matcher {
    Automaton(AhoCorasick),
    /// The patterns, longest first, so the first that matches at a position is the longest.
    Scan(Vec<Vec<u8>>),
}

impl Matcher {
    fn new<E>(
        patterns: Vec<String>,
        automaton: impl FnOnce(&[String]) -> Result<AhoCorasick, E>,
    ) -> Self {
        match automaton(&patterns) {
            Ok(automaton) => Matcher::Automaton(automaton),
            Err(_) => {
                let mut patterns: Vec<Vec<u8>> =
                    patterns.into_iter().map(String::into_bytes).collect();
                patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
                Matcher::Scan(patterns)
            }
        }
    }

    /// The non-overlapping leftmost-longest matches in `haystack`, as byte ranges.
    fn find_all(&self, haystack: &[u8]) -> Vec<std::ops::Range<usize>> {
        match self {
            Matcher::Automaton(automaton) => automaton
                .find_iter(haystack)
                .map(|found| found.range())
                .collect(),
            Matcher::Scan(patterns) => {
                let mut found = Vec::new();
                let mut at = 0;
                while at < haystack.len() {
                    let rest = &haystack[at..];
                    match patterns.iter().find(|p| rest.starts_with(p)) {
                        Some(pattern) => {
                            found.push(at..at + pattern.len());
                            at += pattern.len();
                        }
                        None => at += 1,
                    }
                }
                found
            }
        }
    }
}

impl Redactor {
    pub fn new<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> Self {
        Self::build(secrets, |patterns| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(patterns)
        })
    }

    /// [`Redactor::new`] with the automaton built by `automaton`, so that tests can make
    /// the build fail.
    fn build<S: AsRef<str>, E>(
        secrets: impl IntoIterator<Item = S>,
        automaton: impl FnOnce(&[String]) -> Result<AhoCorasick, E>,
    ) -> Self {
        let mut patterns: Vec<String> = Vec::new();
        for secret in secrets {
            let secret = secret.as_ref();
            if secret.len() >= MIN_SECRET_LEN {
                patterns.extend(encoded_forms(secret));
            }
        }
        patterns.retain(|p| p.len() >= MIN_SECRET_LEN);
        patterns.sort();
        patterns.dedup();
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        let forms = patterns.iter().map(|p| p.as_bytes().to_vec()).collect();
        let matcher = if patterns.is_empty() {
            None
        } else {
            Some(Matcher::new(patterns, automaton))
        };
        Redactor {
            matcher,
            longest,
            patterns: std::sync::Arc::new(forms),
        }
    }

    /// Where the bytes at the end of `pending` that may begin a secret form start: the
    /// first position from which the rest is a proper beginning of one (its end may be in
    /// the next chunk); `pending.len()` when there is none. Holding back only these, not
    /// always the longest form's length, lets a line printed before a pause reach the
    /// log (and those who tail it) at once.
    fn hold_from(&self, pending: &[u8]) -> usize {
        let earliest = pending.len().saturating_sub(self.longest.saturating_sub(1));
        (earliest..pending.len())
            .find(|&at| {
                let rest = &pending[at..];
                self.patterns
                    .iter()
                    .any(|p| p.len() > rest.len() && p.starts_with(rest))
            })
            .unwrap_or(pending.len())
    }

    /// Masks every secret in a whole text.
    pub fn redact_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.redact_bytes(text.as_bytes())).into_owned()
    }

    pub fn redact_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        let mut stream = self.stream();
        let mut out = stream.push(bytes);
        out.extend(stream.finish());
        out
    }

    /// A redactor for one stream of chunks.
    pub fn stream(&self) -> RedactingStream {
        RedactingStream {
            redactor: self.clone(),
            pending: Vec::new(),
        }
    }
}

/// Every form in which a secret may show up in output.
fn encoded_forms(secret: &str) -> Vec<String> {
    let mut forms = vec![
        secret.to_owned(),
        utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string(),
        // RFC 3986 component encoding keeps the unreserved `-._~`, as most libraries do.
        utf8_percent_encode(secret, COMPONENT).to_string(),
    ];
    let json = serde_json::to_string(secret).unwrap_or_default();
    forms.push(json.trim_matches('"').to_owned());
    forms.extend(base64_forms(secret.as_bytes()));
    forms
}

/// The base64 text that appears whatever the secret's offset inside a longer encoded
/// value: encode with 0, 1 and 2 bytes of prefix and keep only the characters that do not
/// depend on the neighbouring bytes.
fn base64_forms(secret: &[u8]) -> Vec<String> {
    (0..3)
        .map(|offset| {
            let mut padded = vec![0u8; offset];
            padded.extend_from_slice(secret);
            let encoded = STANDARD.encode(&padded);
            // Characters covering the prefix are mixed with it: skip them.
            let skip = match offset {
                0 => 0,
                1 => 2,
                _ => 3,
            };
            // Trailing characters mix with whatever follows unless the length aligns.
            let total_bits = padded.len() * 8;
            let exact_chars = total_bits / 6;
            let encoded = encoded.trim_end_matches('=');
            let end = exact_chars.min(encoded.len());
            encoded.get(skip..end).unwrap_or_default().to_owned()
        })
        .collect()
}

/// Redacts a stream chunk by chunk, holding back just enough bytes that a secret split
/// across chunks is still whole when it is matched.
#[derive(Debug)]
pub struct RedactingStream {
    redactor: Redactor,
    pending: Vec<u8>,
}

impl RedactingStream {
    /// Adds a chunk and returns the output that is now safe to write.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let Some(matcher) = &self.redactor.matcher else {
            return chunk.to_vec();
        };
        self.pending.extend_from_slice(chunk);
        // A match that starts before `safe` is whole in `pending`; later bytes may be the
        // start of a secret whose end has not arrived yet.
        let safe = self.redactor.hold_from(&self.pending);
        let mut out = Vec::with_capacity(self.pending.len());
        let mut copied = 0;
        for found in matcher.find_all(&self.pending) {
            if found.start >= safe {
                break;
            }
            out.extend_from_slice(&self.pending[copied..found.start]);
            out.extend_from_slice(MASK);
            copied = found.end;
        }
        let emit_to = safe.max(copied);
        out.extend_from_slice(&self.pending[copied..emit_to]);
        self.pending.drain(..emit_to);
        out
    }

    /// The rest of the stream, once no more chunks come.
    pub fn finish(&mut self) -> Vec<u8> {
        let Some(matcher) = &self.redactor.matcher else {
            return std::mem::take(&mut self.pending);
        };
        let mut out = Vec::with_capacity(self.pending.len());
        let mut copied = 0;
        for found in matcher.find_all(&self.pending) {
            out.extend_from_slice(&self.pending[copied..found.start]);
            out.extend_from_slice(MASK);
            copied = found.end;
        }
        out.extend_from_slice(&self.pending[copied..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "ghp_S3cr3t/Value+with&odd\"chars-and.dots";

    #[test]
    fn masks_the_secret_and_its_encodings() {
        let redactor = Redactor::new([SECRET]);
        let json = serde_json::to_string(SECRET).unwrap_or_default();
        let url = utf8_percent_encode(SECRET, NON_ALPHANUMERIC).to_string();
        let component = utf8_percent_encode(SECRET, COMPONENT).to_string();
        assert_ne!(
            url, component,
            "the secret has a character the two encodings treat apart"
        );
        for text in [
            format!("token={SECRET}!"),
            format!("body {json}"),
            format!("q={url}&x"),
            format!("q={component}&x"),
        ] {
            let out = redactor.redact_str(&text);
            assert!(
                out.contains("***") && !out.contains("S3cr3t"),
                "{text} -> {out}"
            );
        }
    }

    #[test]
    fn masks_base64_at_every_alignment() {
        let redactor = Redactor::new([SECRET]);
        for prefix in ["", "a", "ab", "user:"] {
            let encoded = STANDARD.encode(format!("{prefix}{SECRET}-tail"));
            let input = format!("Authorization: Basic {encoded}");
            let out = redactor.redact_str(&input);
            // All but the few characters shared with neighbouring bytes are masked.
            assert!(out.contains("***"), "prefix {prefix:?}: {out}");
            assert!(
                out.len() + SECRET.len() < input.len(),
                "prefix {prefix:?}: {out}"
            );
        }
    }

    /// Streams `text` through `redactor` in chunks of every size and expects `masked`.
    fn assert_masked_in_every_chunking(redactor: &Redactor, text: &str, masked: &str) {
        for split in 1..text.len() {
            let mut stream = redactor.stream();
            let mut out = Vec::new();
            for chunk in text.as_bytes().chunks(split) {
                out.extend(stream.push(chunk));
            }
            out.extend(stream.finish());
            assert_eq!(String::from_utf8_lossy(&out), masked, "chunk size {split}");
        }
    }

    #[test]
    fn masks_a_secret_split_across_chunks() {
        let redactor = Redactor::new([SECRET, "another-secret-value"]);
        let text = format!("start {SECRET} middle another-secret-value end");
        assert_masked_in_every_chunking(&redactor, &text, "start *** middle *** end");
    }

    #[test]
    fn secrets_are_masked_even_when_the_automaton_cannot_be_built() {
        let redactor = Redactor::build([SECRET, "another-secret-value"], |_| {
            Err("the automaton is too large")
        });
        let text = format!("start {SECRET} middle another-secret-value end");
        assert_eq!(redactor.redact_str(&text), "start *** middle *** end");
        let encoded = STANDARD.encode(format!("user:{SECRET}"));
        assert!(!redactor.redact_str(&encoded).contains(&encoded[8..40]));
        assert_masked_in_every_chunking(&redactor, &text, "start *** middle *** end");
    }

    #[test]
    fn only_a_possible_secret_beginning_is_held_back() {
        let redactor = Redactor::new([SECRET]);
        let mut stream = redactor.stream();
        // Nothing at the end could begin the secret: the line goes out whole at once.
        assert_eq!(stream.push(b"thinking...\n"), b"thinking...\n");
        // "ghp_S3" may: it waits for what follows.
        assert_eq!(stream.push(b"token ghp_S3"), b"token ");
        assert_eq!(stream.push(&SECRET.as_bytes()[6..]), b"***");
        assert_eq!(stream.push(b" ghp_"), b" ");
        assert_eq!(stream.push(b"nope\n"), b"ghp_nope\n");
        assert_eq!(stream.finish(), b"");
    }

    #[test]
    fn secrets_that_overlap_their_own_beginnings_are_masked_in_every_chunking() {
        let redactor = Redactor::new(["aaab-secret", "abab-other"]);
        let text = "x aaaab-secret y ababab-other z aaa";
        assert_masked_in_every_chunking(&redactor, text, "x a*** y ab*** z aaa");
    }

    #[test]
    fn short_or_no_secrets_leave_text_alone() {
        assert_eq!(Redactor::new(["ab"]).redact_str("ab cd"), "ab cd");
        assert_eq!(Redactor::new(Vec::<String>::new()).redact_str("x"), "x");
    }
}
