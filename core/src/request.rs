//! The run request (the body of `POST /runs`, a queue message, or a Celery task's kwargs)
//! and its validation into types the rest of specrun can trust.

use crate::branch::BranchName;
use crate::invisible::{self, Layout};
use crate::repo::{RepoPolicy, RepoRef};
use crate::strict_json::{self, StrictJsonError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest specification text accepted, in bytes.
pub const MAX_SPECIFY_TEXT: usize = 64 * 1024;

/// What a run publishes when its phases produced changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Publish {
    /// Push the branch and open or update a pull request.
    #[default]
    Pr,
    /// Push the branch only.
    Branch,
    /// Dry run: commit locally, push nothing.
    None,
}

impl Publish {
    pub fn as_str(self) -> &'static str {
        match self {
            Publish::Pr => "pr",
            Publish::Branch => "branch",
            Publish::None => "none",
        }
    }
}

/// The request exactly as it arrives on the wire (schema version 1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub repository: String,
    pub specify_text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Options the chosen agent profile declares (for example the scripted agent's
    /// `behaviour`); anything else is refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agent_options: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Publish>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Model budget maxima for this run: they may lower the operator's, never raise them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<crate::model_usage::Budget>,
    /// Where this run's final status is also sent (signed like the deployment's
    /// webhook); its host must be on the operator's callback allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

/// A request whose every field has been checked.
#[derive(Debug, Clone)]
pub struct ValidatedRequest {
    pub repository: RepoRef,
    pub specify_text: String,
    pub base_branch: Option<BranchName>,
    pub branch_name: Option<BranchName>,
    pub agent: Option<String>,
    pub agent_options: BTreeMap<String, String>,
    pub publish: Publish,
    pub draft: bool,
    pub labels: Vec<String>,
    pub external_ref: Option<String>,
    pub idempotency_key: Option<String>,
    pub budget: Option<crate::model_usage::Budget>,
    pub callback_url: Option<crate::notify::NotifyUrl>,
}

/// A request field that was refused, and why. Shown to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RequestError {
    pub field: String,
    pub reason: String,
}

fn field_error(field: &str, reason: impl Into<String>) -> RequestError {
    RequestError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// A JSON body parsed strictly (see [`strict_json`]); refusals name the field `body`.
pub fn parse_body(body: &[u8]) -> Result<serde_json::Value, RequestError> {
    strict_json::parse(body).map_err(|e| match e {
        StrictJsonError::DuplicateKey { path } => field_error(
            "body",
            format!("the key {path:?} appears twice; give each field once"),
        ),
        StrictJsonError::Syntax(e) => field_error("body", format!("not valid JSON: {e}")),
    })
}

impl RunRequest {
    /// Parses a JSON body, refusing a key given twice (see [`strict_json`]).
    pub fn parse_json(body: &[u8]) -> Result<RunRequest, RequestError> {
        let value = parse_body(body)?;
        serde_json::from_value(value)
            .map_err(|e| field_error("body", format!("not a valid run request: {e}")))
    }

    /// Parses and validates a JSON body in one step.
    pub fn from_json(body: &[u8], policy: &RepoPolicy) -> Result<ValidatedRequest, RequestError> {
        Self::parse_json(body)?.validate(policy)
    }

    pub fn validate(&self, policy: &RepoPolicy) -> Result<ValidatedRequest, RequestError> {
        visible("repository", "", &self.repository, Layout::SingleLine)?;
        let repository = RepoRef::parse(&self.repository, policy)
            .map_err(|e| field_error("repository", e.to_string()))?;
        let branch = |field: &str, value: &Option<String>| match value.as_deref() {
            None => Ok(None),
            Some(name) => {
                visible(field, "", name, Layout::SingleLine)?;
                BranchName::parse(name)
                    .map(Some)
                    .map_err(|e| field_error(field, format!("branch name {e}")))
            }
        };
        let base_branch = branch("base_branch", &self.base_branch)?;
        let branch_name = branch("branch_name", &self.branch_name)?;
        if branch_name.is_some() && branch_name == base_branch {
            return Err(field_error(
                "branch_name",
                "is the base branch: the run commits to a branch of its own, off base_branch",
            ));
        }
        Ok(ValidatedRequest {
            repository,
            specify_text: validate_text(&self.specify_text)?,
            base_branch,
            branch_name,
            agent: self.agent.as_deref().map(validate_agent).transpose()?,
            agent_options: validate_agent_options(&self.agent_options)?,
            publish: self.publish.unwrap_or_default(),
            draft: self.draft.unwrap_or(false),
            labels: validate_labels(&self.labels)?,
            external_ref: validate_short("external_ref", &self.external_ref, 200)?,
            idempotency_key: validate_idempotency_key(&self.idempotency_key)?,
            budget: validate_budget(&self.budget)?,
            callback_url: self
                .callback_url
                .as_deref()
                .map(|url| {
                    // The operator's own input (the command line) is trusted like a
                    // webhook URL; anything else must be on the callback allow-list.
                    let checked = if policy.trusted {
                        crate::notify::NotifyUrl::webhook(url)
                    } else {
                        crate::notify::NotifyUrl::callback(url, &policy.callbacks)
                    };
                    checked.map_err(|e| field_error("callback_url", e.0))
                })
                .transpose()?,
        })
    }
}

impl ValidatedRequest {
    /// The wire form again, for storing beside the run. It is the request's canonical
    /// form: the defaults validation fills in (`publish`, `draft`) are written out and the
    /// repository is normalised, so two requests that validate to the same run have equal
    /// wire forms (what an idempotency key and a queue message are compared by).
    pub fn to_wire(&self) -> RunRequest {
        RunRequest {
            repository: self.repository.to_string(),
            specify_text: self.specify_text.clone(),
            base_branch: self.base_branch.as_ref().map(|b| b.to_string()),
            branch_name: self.branch_name.as_ref().map(|b| b.to_string()),
            agent: self.agent.clone(),
            agent_options: self.agent_options.clone(),
            publish: Some(self.publish),
            draft: Some(self.draft),
            labels: self.labels.clone(),
            external_ref: self.external_ref.clone(),
            idempotency_key: self.idempotency_key.clone(),
            budget: self.budget,
            callback_url: self.callback_url.as_ref().map(|u| u.expose().to_owned()),
        }
    }
}

/// A budget's amounts must be numbers a limit can be: USD finite and not negative.
fn validate_budget(
    budget: &Option<crate::model_usage::Budget>,
) -> Result<Option<crate::model_usage::Budget>, RequestError> {
    if let Some(budget) = budget {
        for usd in [budget.run.max_usd, budget.phase.max_usd]
            .into_iter()
            .flatten()
        {
            if !usd.is_finite() || usd < 0.0 {
                return Err(field_error(
                    "budget",
                    format!("max_usd {usd} is not an amount of USD"),
                ));
            }
        }
    }
    Ok(*budget)
}

/// Refuses text holding a character a reader cannot see (see [`invisible`]), naming the
/// field, the character and where it is; `what` says which part of the field, if any.
fn visible(field: &str, what: &str, text: &str, layout: Layout) -> Result<(), RequestError> {
    match invisible::find(text, layout) {
        None => Ok(()),
        Some(hidden) => Err(field_error(
            field,
            format!(
                "{what}contains {hidden}: invisible characters can hide instructions to the agent"
            ),
        )),
    }
}

fn validate_text(text: &str) -> Result<String, RequestError> {
    let field = "specify_text";
    if text.trim().is_empty() {
        return Err(field_error(
            field,
            "is empty: give the feature description to specify",
        ));
    }
    if text.len() > MAX_SPECIFY_TEXT {
        return Err(field_error(
            field,
            format!("is {} bytes; the limit is {MAX_SPECIFY_TEXT}", text.len()),
        ));
    }
    visible(field, "", text, Layout::MultiLine)?;
    Ok(text.to_owned())
}

fn validate_agent(name: &str) -> Result<String, RequestError> {
    visible("agent", "", name, Layout::SingleLine)?;
    let ok = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(name.to_owned())
    } else {
        Err(field_error(
            "agent",
            "must be 1-32 of a-z, 0-9, '-', starting with a letter",
        ))
    }
}

fn validate_agent_options(
    options: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, RequestError> {
    if options.len() > 16 {
        return Err(field_error("agent_options", "at most 16 options"));
    }
    for (key, value) in options {
        visible("agent_options", "an option name ", key, Layout::SingleLine)?;
        visible(
            "agent_options",
            &format!("the value of {key:?} "),
            value,
            Layout::SingleLine,
        )?;
        let key_ok = (1..=32).contains(&key.len())
            && key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !key_ok {
            return Err(field_error(
                "agent_options",
                format!("option name {key:?} must be 1-32 of a-z, 0-9, '_'"),
            ));
        }
        if value.len() > 256 {
            return Err(field_error(
                "agent_options",
                format!("value of {key:?} must be at most 256 printable characters"),
            ));
        }
    }
    Ok(options.clone())
}

fn validate_labels(labels: &[String]) -> Result<Vec<String>, RequestError> {
    if labels.len() > 20 {
        return Err(field_error("labels", "at most 20 labels"));
    }
    for (i, label) in labels.iter().enumerate() {
        visible(
            "labels",
            &format!("label {} ", i + 1),
            label,
            Layout::SingleLine,
        )?;
        let ok = !label.trim().is_empty() && label.chars().count() <= 50 && !label.contains(',');
        if !ok {
            return Err(field_error(
                "labels",
                format!("label {label:?} must be 1-50 printable characters without ','"),
            ));
        }
    }
    Ok(labels.to_vec())
}

fn validate_short(
    field: &str,
    value: &Option<String>,
    max: usize,
) -> Result<Option<String>, RequestError> {
    if let Some(v) = value {
        visible(field, "", v, Layout::SingleLine)?;
    }
    match value {
        Some(v) if v.is_empty() || v.chars().count() > max => Err(field_error(
            field,
            format!("must be 1-{max} printable characters"),
        )),
        other => Ok(other.clone()),
    }
}

fn validate_idempotency_key(value: &Option<String>) -> Result<Option<String>, RequestError> {
    if let Some(key) = value {
        visible("idempotency_key", "", key, Layout::SingleLine)?;
    }
    match value {
        Some(key)
            if key.is_empty()
                || key.len() > 128
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c)) =>
        {
            Err(field_error(
                "idempotency_key",
                "must be 1-128 of A-Z, a-z, 0-9, '.', '_', ':', '-'",
            ))
        }
        other => Ok(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RepoPolicy {
        RepoPolicy::default()
    }

    fn parse(json: &str) -> Result<ValidatedRequest, RequestError> {
        RunRequest::from_json(json.as_bytes(), &policy())
    }

    #[test]
    fn a_minimal_request_gets_defaults() {
        let req = parse(r#"{"repository":"octo/hello","specify_text":"Add login"}"#);
        let req = req.ok();
        assert_eq!(req.as_ref().map(|r| r.publish), Some(Publish::Pr));
        assert_eq!(req.map(|r| r.draft), Some(false));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (
                r#"{"repository":"octo/hello","specify_text":"x","colour":1}"#,
                "body",
            ),
            (r#"{"repository":"octo/hello""#, "body"),
            (
                r#"{"repository":"file:///etc","specify_text":"x"}"#,
                "repository",
            ),
            (
                r#"{"repository":"octo/hello","specify_text":"  "}"#,
                "specify_text",
            ),
            (
                r#"{"repository":"octo/hello","specify_text":"a\u0000b"}"#,
                "specify_text",
            ),
            (
                r#"{"repository":"octo/hello","specify_text":"a\u202eb"}"#,
                "specify_text",
            ),
            (
                r#"{"repository":"octo/hello","specify_text":"x","branch_name":"a..b"}"#,
                "branch_name",
            ),
            (
                r#"{"repository":"octo/hello","specify_text":"x","base_branch":"-f"}"#,
                "base_branch",
            ),
            (
                r#"{"repository":"octo/hello","specify_text":"x","agent":"Codex!"}"#,
                "agent",
            ),
            (
                r#"{"repository":"octo/hello","specify_text":"x","publish":"force"}"#,
                "body",
            ),
            (
                r#"{"repository":"octo/hello","specify_text":"x","labels":["a,b"]}"#,
                "labels",
            ),
            (
                r#"{"repository":"octo/hello","specify_text":"x","idempotency_key":"a b"}"#,
                "idempotency_key",
            ),
            (
                r#"{"repository":"octo/hello","specify_text":"x","agent_options":{"X":"1"}}"#,
                "agent_options",
            ),
        ];
        for (json, field) in cases {
            let err = parse(json).err();
            assert_eq!(err.map(|e| e.field), Some(field.to_owned()), "{json}");
        }
    }

    #[test]
    fn oversized_text_is_refused_with_its_size() {
        let text = "a".repeat(MAX_SPECIFY_TEXT + 1);
        let json =
            serde_json::json!({"repository": "octo/hello", "specify_text": text}).to_string();
        let err = parse(&json)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("65537 bytes"), "{err}");
    }

    fn refusal(json: &str) -> Option<RequestError> {
        parse(json).err()
    }

    #[test]
    fn a_key_given_twice_is_refused_naming_it() {
        let err =
            refusal(r#"{"repository":"octo/hello","specify_text":"x","repository":"evil/repo"}"#);
        assert_eq!(err.as_ref().map(|e| e.field.as_str()), Some("body"));
        let reason = err.map(|e| e.reason).unwrap_or_default();
        assert!(reason.contains(r#""repository" appears twice"#), "{reason}");
        let nested = refusal(
            r#"{"repository":"octo/hello","specify_text":"x","agent_options":{"behaviour":"normal","behaviour":"crash:plan"}}"#,
        );
        let reason = nested.map(|e| e.reason).unwrap_or_default();
        assert!(reason.contains("agent_options.behaviour"), "{reason}");
    }

    #[test]
    fn invisible_characters_are_refused_in_every_text_field() {
        let tag = r"\udb40\udc41"; // U+E0041 TAG LATIN CAPITAL LETTER A, as JSON escapes it
        let cases = [
            (format!(r#"{{"repository":"octo/hello","specify_text":"Add a login page{tag}"}}"#), "specify_text", "U+E0041 (TAG LATIN CAPITAL LETTER A) at character 17"),
            (format!(r#"{{"repository":"octo/hello","specify_text":"x","labels":["ok","a{tag}"]}}"#), "labels", "label 2 contains U+E0041"),
            (r#"{"repository":"octo/hello","specify_text":"x","external_ref":"T-1\u200b"}"#.to_owned(), "external_ref", "U+200B (ZERO WIDTH SPACE) at character 4"),
            (r#"{"repository":"octo/hello","specify_text":"x","branch_name":"a\u2060b"}"#.to_owned(), "branch_name", "U+2060 (WORD JOINER)"),
            (r#"{"repository":"octo/hello","specify_text":"x","idempotency_key":"\u00adk"}"#.to_owned(), "idempotency_key", "U+00AD (SOFT HYPHEN) at character 1"),
            (r#"{"repository":"octo/hello","specify_text":"x","agent_options":{"behaviour":"normal\ufeff"}}"#.to_owned(), "agent_options", "the value of \"behaviour\" contains U+FEFF"),
            (r#"{"repository":"octo/hello\u202e","specify_text":"x"}"#.to_owned(), "repository", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
            (r#"{"repository":"octo/hello","specify_text":"left\u2066right"}"#.to_owned(), "specify_text", "U+2066"),
        ];
        for (json, field, says) in cases {
            let err = refusal(&json);
            assert_eq!(
                err.as_ref().map(|e| e.field.as_str()),
                Some(field),
                "{json}"
            );
            let reason = err.map(|e| e.reason).unwrap_or_default();
            assert!(reason.contains(says), "{json}: {reason}");
            assert!(
                reason.contains("invisible characters can hide instructions"),
                "{reason}"
            );
        }
        let multi_line =
            r#"{"repository":"octo/hello","specify_text":"Add login\n\n- with\ttabs\r\n"}"#;
        assert!(parse(multi_line).is_ok());
    }

    #[test]
    fn branch_names_are_branches_not_refs_and_not_the_base() {
        let cases = [
            r#"{"repository":"octo/hello","specify_text":"x","branch_name":"refs/heads/main"}"#,
            r#"{"repository":"octo/hello","specify_text":"x","branch_name":"HEAD"}"#,
            r#"{"repository":"octo/hello","specify_text":"x","branch_name":"ORIG_HEAD"}"#,
            r#"{"repository":"octo/hello","specify_text":"x","branch_name":"main","base_branch":"main"}"#,
        ];
        for json in cases {
            let err = refusal(json);
            assert_eq!(
                err.map(|e| e.field),
                Some("branch_name".to_owned()),
                "{json}"
            );
        }
        let base = refusal(
            r#"{"repository":"octo/hello","specify_text":"x","base_branch":"refs/heads/main"}"#,
        );
        assert_eq!(base.map(|e| e.field), Some("base_branch".to_owned()));
        assert!(parse(
            r#"{"repository":"octo/hello","specify_text":"x","branch_name":"001-login","base_branch":"main"}"#
        )
        .is_ok());
    }

    #[test]
    fn wire_form_round_trips() {
        let json = r#"{"repository":"octo/hello","specify_text":"Add login","publish":"branch","labels":["spec"]}"#;
        let req = parse(json).ok().map(|r| r.to_wire());
        assert_eq!(req.as_ref().map(|r| r.publish), Some(Some(Publish::Branch)));
        assert_eq!(req.map(|r| r.labels), Some(vec!["spec".to_owned()]));
    }
}
