//! What the agents' JSON event streams (Codex's `--json`, Claude Code's `stream-json`)
//! have in common: one JSON object a line, folded into a summary that says in one line
//! what the phase did.

use serde::Serialize;
use serde_json::Value;

/// A summary built from an agent's event stream.
pub trait EventSummary: Default + Serialize {
    /// Takes one event into account.
    fn add(&mut self, event: &Value);

    /// One line for the phase's message.
    fn headline(&self) -> String;

    /// Folds the event lines of a log; lines that are not events are passed over.
    fn from_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Self {
        let mut summary = Self::default();
        for line in lines {
            if let Ok(event) = serde_json::from_str::<Value>(line.trim()) {
                summary.add(&event);
            }
        }
        summary
    }
}
