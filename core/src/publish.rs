//! What a pull request says: title and body rendered from templates (configuration) with
//! the run's facts, and the phase summary the body carries.

use crate::state::RunRecord;
use crate::PhaseStatus;
use std::collections::BTreeMap;

/// The default title: `{feature}` is the feature directory's name (`NNN-short-name`).
pub const DEFAULT_TITLE: &str = "spec: {feature}";

/// The default body; `{phases}` is a Markdown table of the phases.
pub const DEFAULT_BODY: &str = "Spec Kit specification, plan and tasks for **{feature}**, written by the `{agent}` agent.\n\n\
| | |\n|---|---|\n| Run | `{run_id}` |\n| Base | `{base_branch}` |\n| Commit | `{commit}` |\n| Status | {status_url} |\n| Logs | {logs_url} |\n\n\
{phases}\n\n_Opened by specrun. Review the spec before implementing it._";

/// Title and body templates with `{name}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrTemplate {
    pub title: String,
    pub body: String,
}

impl Default for PrTemplate {
    fn default() -> Self {
        PrTemplate {
            title: DEFAULT_TITLE.to_owned(),
            body: DEFAULT_BODY.to_owned(),
        }
    }
}

/// Replaces each `{name}` whose name is in `vars`; other braces stay as they are.
pub fn render(template: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}').map(|end| (&after[..end], end)) {
            Some((name, end)) if vars.contains_key(name) => {
                out.push_str(&vars[name]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The phases as a Markdown table: status, duration, what happened.
pub fn phase_table(record: &RunRecord) -> String {
    let mut table = String::from("| Phase | Status | Duration | Detail |\n|---|---|---|---|\n");
    for phase in &record.phases {
        if phase.status == PhaseStatus::Pending {
            continue;
        }
        let duration = phase
            .duration_ms
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_default();
        let mut detail = phase
            .message
            .as_deref()
            .unwrap_or("")
            .replace('|', "\\|")
            .replace('\n', " ");
        if let Some(usage) = &phase.usage {
            detail.push_str(&format!(" ({})", usage.headline()));
        }
        table.push_str(&format!(
            "| {} | {} | {duration} | {detail} |\n",
            phase.phase, phase.status
        ));
    }
    if let Some(usage) = &record.usage {
        let models = usage.models.join(", ");
        table.push_str(&format!(
            "\nModel usage of the run: {} ({models}).\n",
            usage.headline()
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_known_placeholders_only() {
        let vars = BTreeMap::from([
            ("feature", "001-login".to_owned()),
            ("run_id", "r1".to_owned()),
        ]);
        assert_eq!(
            render("spec: {feature} ({run_id}) {unknown} {", &vars),
            "spec: 001-login (r1) {unknown} {"
        );
    }

    #[test]
    fn the_phase_table_lists_finished_phases() {
        let mut record = RunRecord::queued(
            "run-aaaa-1",
            "octo/hello",
            crate::request::Publish::Pr,
            Default::default(),
            time::OffsetDateTime::UNIX_EPOCH,
        );
        let _ = record.skip_phase(
            crate::Phase::Plan,
            "why | not",
            time::OffsetDateTime::UNIX_EPOCH,
        );
        let table = phase_table(&record);
        assert!(
            table.contains("| plan | skipped |  | why \\| not |"),
            "{table}"
        );
        assert!(!table.contains("| specify |"));
    }
}
