//! The model APIs the gateway speaks for an agent: which requests it forwards, where the
//! caller's credential is read from and where the real key goes, and the error shape each
//! API's clients show to their user. Pure: the gateway (`specrun-gateway`) does the I/O.

use std::fmt;

/// A model API family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelApi {
    /// OpenAI: Responses (`/v1/responses`) and Chat Completions (`/v1/chat/completions`),
    /// key as `Authorization: Bearer`.
    OpenAi,
    /// Anthropic Messages (`/v1/messages`), key as `x-api-key`.
    Anthropic,
    /// Google Gemini (`/v1beta/models/M:generateContent`, `:streamGenerateContent`), key
    /// as `x-goog-api-key`.
    Gemini,
}

/// A `model_api` setting that names no API the gateway speaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model api {0:?} must be openai, anthropic or gemini")]
pub struct UnknownApi(pub String);

impl ModelApi {
    pub fn parse(text: &str) -> Result<ModelApi, UnknownApi> {
        match text {
            "openai" => Ok(ModelApi::OpenAi),
            "anthropic" => Ok(ModelApi::Anthropic),
            "gemini" => Ok(ModelApi::Gemini),
            other => Err(UnknownApi(other.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ModelApi::OpenAi => "openai",
            ModelApi::Anthropic => "anthropic",
            ModelApi::Gemini => "gemini",
        }
    }

    /// Whether the gateway forwards `method path`: the model calls the agents make and
    /// the model listings they read, nothing else of the provider's API (files,
    /// fine-tuning, keys, ...), so the run's key buys model calls only.
    pub fn allows(self, method: &str, path: &str) -> bool {
        if path.contains("..") || path.contains("//") {
            return false;
        }
        let listing = method == "GET";
        match self {
            ModelApi::OpenAi => {
                (method == "POST" && (path == "/v1/responses" || path == "/v1/chat/completions"))
                    || (listing && (path == "/v1/models" || path.starts_with("/v1/models/")))
            }
            ModelApi::Anthropic => {
                (method == "POST"
                    && (path == "/v1/messages" || path == "/v1/messages/count_tokens"))
                    || (listing && (path == "/v1/models" || path.starts_with("/v1/models/")))
            }
            ModelApi::Gemini => {
                let Some(rest) = path
                    .strip_prefix("/v1beta/models")
                    .or_else(|| path.strip_prefix("/v1/models"))
                else {
                    return false;
                };
                if listing {
                    return rest.is_empty() || !rest[1..].contains('/');
                }
                method == "POST"
                    && rest.starts_with('/')
                    && [":generateContent", ":streamGenerateContent", ":countTokens"]
                        .iter()
                        .any(|verb| rest.ends_with(verb) && !rest[1..].contains('/'))
            }
        }
    }

    /// The header the real key goes upstream in, and its value.
    pub fn key_header(self, key: &str) -> (&'static str, String) {
        match self {
            ModelApi::OpenAi => ("authorization", format!("Bearer {key}")),
            ModelApi::Anthropic => ("x-api-key", key.to_owned()),
            ModelApi::Gemini => ("x-goog-api-key", key.to_owned()),
        }
    }

    /// An error body in this API's shape, so that the agent's CLI shows `message`.
    pub fn error_body(self, status: u16, kind: &str, message: &str) -> String {
        let body = match self {
            ModelApi::OpenAi => serde_json::json!({
                "error": {"message": message, "type": kind, "code": kind, "param": null}
            }),
            ModelApi::Anthropic => serde_json::json!({
                "type": "error", "error": {"type": kind, "message": message}
            }),
            ModelApi::Gemini => serde_json::json!({
                "error": {"code": status, "message": message, "status": kind.to_uppercase()}
            }),
        };
        body.to_string()
    }
}

impl fmt::Display for ModelApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Header names that may carry the caller's credential; none of them goes upstream.
pub const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "x-api-key", "x-goog-api-key"];

/// The credential a request carries: a bearer token, an `x-api-key`/`x-goog-api-key`
/// header, or Gemini's `key` query parameter. `header` looks a header up by its
/// lower-case name.
pub fn presented_credential<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    query: Option<&'a str>,
) -> Option<&'a str> {
    if let Some(bearer) = header("authorization").and_then(|v| v.strip_prefix("Bearer ")) {
        return Some(bearer.trim());
    }
    header("x-api-key")
        .or_else(|| header("x-goog-api-key"))
        .or_else(|| query.and_then(key_param))
}

fn key_param(query: &str) -> Option<&str> {
    query.split('&').find_map(|pair| pair.strip_prefix("key="))
}

/// The query without its `key` parameter (the caller's token must not go upstream).
pub fn query_without_key(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| !pair.starts_with("key=") && !pair.is_empty())
        .collect::<Vec<_>>()
        .join("&")
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_model_calls_are_forwarded() {
        let cases = [
            (ModelApi::OpenAi, "POST", "/v1/responses", true),
            (ModelApi::OpenAi, "POST", "/v1/chat/completions", true),
            (ModelApi::OpenAi, "GET", "/v1/models", true),
            (ModelApi::OpenAi, "POST", "/v1/files", false),
            (ModelApi::OpenAi, "DELETE", "/v1/models/x", false),
            (ModelApi::OpenAi, "POST", "/v1/responses/../files", false),
            (ModelApi::Anthropic, "POST", "/v1/messages", true),
            (
                ModelApi::Anthropic,
                "POST",
                "/v1/messages/count_tokens",
                true,
            ),
            (ModelApi::Anthropic, "POST", "/v1/messages/batches", false),
            (
                ModelApi::Gemini,
                "POST",
                "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
                true,
            ),
            (
                ModelApi::Gemini,
                "POST",
                "/v1beta/models/gemini-2.5-pro:generateContent",
                true,
            ),
            (ModelApi::Gemini, "GET", "/v1beta/models", true),
            (
                ModelApi::Gemini,
                "POST",
                "/v1beta/tunedModels/x:generateContent",
                false,
            ),
            (
                ModelApi::Gemini,
                "POST",
                "/v1beta/models/a/b:generateContent",
                false,
            ),
        ];
        for (api, method, path, allowed) in cases {
            assert_eq!(api.allows(method, path), allowed, "{api} {method} {path}");
        }
    }

    #[test]
    fn the_credential_is_found_wherever_the_client_puts_it() {
        let headers = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
        };
        assert_eq!(
            presented_credential(headers(&[("authorization", "Bearer t1")]), None),
            Some("t1")
        );
        assert_eq!(
            presented_credential(headers(&[("x-api-key", "t2")]), None),
            Some("t2")
        );
        assert_eq!(
            presented_credential(headers(&[]), Some("alt=sse&key=t3")),
            Some("t3")
        );
        assert_eq!(presented_credential(headers(&[]), Some("alt=sse")), None);
        assert_eq!(query_without_key("alt=sse&key=t3"), "alt=sse");
    }

    #[test]
    fn errors_take_each_apis_shape() {
        let openai: serde_json::Value =
            serde_json::from_str(&ModelApi::OpenAi.error_body(403, "budget_exceeded", "spent"))
                .unwrap_or_default();
        assert_eq!(openai["error"]["message"], "spent");
        let gemini: serde_json::Value =
            serde_json::from_str(&ModelApi::Gemini.error_body(403, "permission_denied", "no"))
                .unwrap_or_default();
        assert_eq!(gemini["error"]["status"], "PERMISSION_DENIED");
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("a", "ab"));
    }
}
