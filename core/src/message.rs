//! Queue messages. The submit function sends a [`RunMessage`] (the run id it assigned and
//! the request); schedulers may also send a bare run request, or a Celery task (see
//! [`crate::celery`]). [`Incoming::parse`] tells them apart.

use crate::request::RunRequest;
use serde::{Deserialize, Serialize};

/// The `kind` of specrun's own messages.
pub const RUN_MESSAGE_KIND: &str = "specrun.run";

/// What the submit function puts on the queue (schema version 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunMessage {
    pub schema_version: u32,
    pub kind: String,
    pub run_id: String,
    pub request: RunRequest,
}

impl RunMessage {
    pub fn new(run_id: &str, request: RunRequest) -> Self {
        RunMessage {
            schema_version: 1,
            kind: RUN_MESSAGE_KIND.to_owned(),
            run_id: run_id.to_owned(),
            request,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The `kind` of a message answering a run's clarification questions.
pub const ANSWERS_MESSAGE_KIND: &str = "specrun.answers";

/// Answers to a run that ended `needs_clarification`, sent by a scheduler: the queue form
/// of `POST /runs/{id}/answers` (schema version 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswersMessage {
    pub schema_version: u32,
    pub kind: String,
    pub run_id: String,
    pub answers: Vec<crate::clarify::Answer>,
}

impl AnswersMessage {
    pub fn new(run_id: &str, answers: Vec<crate::clarify::Answer>) -> Self {
        AnswersMessage {
            schema_version: 1,
            kind: ANSWERS_MESSAGE_KIND.to_owned(),
            run_id: run_id.to_owned(),
            answers,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A message as received, sorted by format.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// From the submit function: run.json already exists as `queued`.
    Run(RunMessage),
    /// A scheduler's bare run request; the runner assigns the run id.
    Bare(RunRequest),
    /// Answers to a run's questions: the run resumes.
    Answers(AnswersMessage),
}

/// The message could not be understood; it will never succeed.
#[derive(Debug, thiserror::Error)]
#[error("queue message is not a run message: {0}")]
pub struct MessageError(pub String);

impl Incoming {
    /// Parses specrun's own formats. Celery messages are handled by [`crate::celery`].
    pub fn parse(body: &[u8]) -> Result<Incoming, MessageError> {
        // Strict, as for `POST /runs`: a key given twice would mean two requests.
        let value = crate::strict_json::parse(body)
            .map_err(|e| MessageError(format!("not usable JSON: {e}")))?;
        if value.get("kind").and_then(|k| k.as_str()) == Some(ANSWERS_MESSAGE_KIND) {
            let message: AnswersMessage =
                serde_json::from_value(value).map_err(|e| MessageError(e.to_string()))?;
            // The same checks as the HTTP form's.
            let body = serde_json::json!({ "answers": message.answers });
            crate::clarify::parse_answers(&serde_json::to_vec(&body).unwrap_or_default())
                .map_err(|e| MessageError(format!("answers: {e}")))?;
            return Ok(Incoming::Answers(message));
        }
        if value.get("kind").is_some() {
            let message: RunMessage =
                serde_json::from_value(value).map_err(|e| MessageError(e.to_string()))?;
            if message.kind != RUN_MESSAGE_KIND {
                return Err(MessageError(format!("unknown kind {:?}", message.kind)));
            }
            return Ok(Incoming::Run(message));
        }
        serde_json::from_value(value)
            .map(Incoming::Bare)
            .map_err(|e| MessageError(format!("not a run request: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_run_messages_from_bare_requests() {
        let request = RunRequest {
            repository: "octo/hello".into(),
            specify_text: "Add login".into(),
            ..Default::default()
        };
        let message = RunMessage::new("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", request.clone());
        assert!(
            matches!(Incoming::parse(&message.to_json()), Ok(Incoming::Run(m)) if m == message)
        );
        let bare = serde_json::to_vec(&request).unwrap_or_default();
        assert!(matches!(Incoming::parse(&bare), Ok(Incoming::Bare(r)) if r == request));
        assert!(Incoming::parse(b"[1,2]").is_err());
        let twice = br#"{"repository":"octo/hello","specify_text":"x","repository":"evil/repo"}"#;
        let refused = Incoming::parse(twice).err().map(|e| e.to_string());
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("repository appears twice")),
            "{refused:?}"
        );
        assert!(Incoming::parse(
            br#"{"kind":"other","schema_version":1,"run_id":"x","request":{}}"#
        )
        .is_err());
        let answers = AnswersMessage::new(
            "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            vec![crate::clarify::Answer {
                question: "Who?".into(),
                answer: "Admins".into(),
            }],
        );
        assert!(
            matches!(Incoming::parse(&answers.to_json()), Ok(Incoming::Answers(m)) if m == answers)
        );
        assert!(Incoming::parse(
            br#"{"kind":"specrun.answers","schema_version":1,"run_id":"x","answers":[]}"#
        )
        .is_err());
    }
}
