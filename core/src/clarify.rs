//! Finding the `[NEEDS CLARIFICATION: ...]` markers Spec Kit leaves when the specification
//! text does not answer a question. With no human to ask, a run stops and reports them.

const OPEN: &str = "[NEEDS CLARIFICATION";

/// The questions in every marker in `text`, in order. A marker without a closing `]` on
/// its line still counts: the rest of the line is the question.
pub fn find_questions(text: &str) -> Vec<String> {
    let mut questions = Vec::new();
    for line in text.lines() {
        let mut rest = line;
        while let Some(start) = rest.find(OPEN) {
            let after = &rest[start + OPEN.len()..];
            let (inside, next) = match after.find(']') {
                Some(end) => (&after[..end], &after[end + 1..]),
                None => (after, ""),
            };
            let question = inside.trim_start_matches(':').trim();
            questions.push(if question.is_empty() {
                "(no question given)".to_owned()
            } else {
                question.to_owned()
            });
            rest = next;
        }
    }
    questions
}

/// The questions as a Markdown document an operator can answer from.
pub fn questions_markdown(file: &str, questions: &[String]) -> String {
    let mut out = format!(
        "# Open questions\n\nThe specify phase left {} question(s) in `{file}`.\n\
         Answer them in the specification text and submit the run again.\n\n",
        questions.len()
    );
    for (i, q) in questions.iter().enumerate() {
        out.push_str(&format!("{}. {q}\n", i + 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_marker_with_its_question() {
        let text = "- FR-1: auth via [NEEDS CLARIFICATION: which provider?] and\n\
                    - FR-2 [NEEDS CLARIFICATION: retention?] [NEEDS CLARIFICATION]\n\
                    plain line\n- open [NEEDS CLARIFICATION: unterminated";
        assert_eq!(
            find_questions(text),
            vec![
                "which provider?",
                "retention?",
                "(no question given)",
                "unterminated"
            ]
        );
    }

    #[test]
    fn text_without_markers_has_no_questions() {
        assert!(find_questions("# Spec\nAll clear. NEEDS CLARIFICATION in prose").is_empty());
    }

    #[test]
    fn markdown_lists_the_questions() {
        let md = questions_markdown("specs/001-x/spec.md", &["why?".to_owned()]);
        assert!(md.contains("1. why?") && md.contains("specs/001-x/spec.md"));
    }
}
