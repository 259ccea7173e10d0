//! What the agents' JSON event streams (Codex's `--json`, Claude Code's `stream-json`)
//! have in common: one JSON object a line, folded into a summary that says in one line
//! what the phase did.
//!
//! The stream is the agent's output, so a summary is bounded whatever it holds: lists
//! keep at most [`MAX_ITEMS`] entries (the rest are counted) and texts at most
//! [`MAX_TEXT`] bytes. Lines come one at a time; the caller does the reading.

use serde::Serialize;
use serde_json::Value;

/// Most entries a summary keeps in one list.
pub const MAX_ITEMS: usize = 200;
/// Most bytes a summary keeps of one text.
pub const MAX_TEXT: usize = 2048;

/// A summary built from an agent's event stream.
pub trait EventSummary: Default + Serialize {
    /// Takes one event into account.
    fn add(&mut self, event: &Value);

    /// One line for the phase's message.
    fn headline(&self) -> String;

    /// Takes one line of the log into account; a line that is not an event is passed over.
    fn add_line(&mut self, line: &str) {
        if let Ok(event) = serde_json::from_str::<Value>(line.trim()) {
            self.add(&event);
        }
    }

    /// Folds the event lines of a log.
    fn from_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Self {
        let mut summary = Self::default();
        for line in lines {
            summary.add_line(line);
        }
        summary
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A JSON string value, cut to [`MAX_TEXT`].
pub(crate) fn text(value: &Value) -> Option<String> {
    value.as_str().map(|t| clip(t, MAX_TEXT).to_owned())
}

/// Appends `item` unless `items` is full, in which case it is only counted in `omitted`.
pub(crate) fn push_bounded<T>(items: &mut Vec<T>, omitted: &mut u64, item: T) {
    if items.len() < MAX_ITEMS {
        items.push(item);
    } else {
        *omitted += 1;
    }
}

/// For `skip_serializing_if`: counters that stayed zero are left out of the summary.
pub(crate) fn is_zero(count: &u64) -> bool {
    *count == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_at_a_character_boundary() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("héllo", 3), "hé");
        assert_eq!(clip("abc", 10), "abc");
    }
}
