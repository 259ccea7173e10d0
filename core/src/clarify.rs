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

/// One operator answer to one saved question.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Answer {
    pub question: String,
    pub answer: String,
}

/// The longest answer taken, in characters.
pub const MAX_ANSWER_CHARS: usize = 2000;

/// Why an answers document was refused: the field to fix and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct AnswersError {
    pub field: String,
    pub reason: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswersBody {
    answers: Vec<Answer>,
}

/// Reads `{"answers": [{"question": "...", "answer": "..."}, ...]}` (a key given twice
/// anywhere is refused): at least one answer, each one line of visible text of at most
/// [`MAX_ANSWER_CHARS`], each question answered once.
pub fn parse_answers(bytes: &[u8]) -> Result<Vec<Answer>, AnswersError> {
    let refuse = |field: &str, reason: String| AnswersError {
        field: field.to_owned(),
        reason,
    };
    let value = crate::strict_json::parse(bytes).map_err(|e| refuse("body", e.to_string()))?;
    let body: AnswersBody =
        serde_json::from_value(value).map_err(|e| refuse("body", e.to_string()))?;
    if body.answers.is_empty() {
        return Err(refuse("answers", "give at least one answer".to_owned()));
    }
    for (i, answer) in body.answers.iter().enumerate() {
        let field = format!("answers[{i}].answer");
        let text = answer.answer.trim();
        if text.is_empty() {
            return Err(refuse(&field, "is empty".to_owned()));
        }
        if text.chars().count() > MAX_ANSWER_CHARS {
            return Err(refuse(
                &field,
                format!("is longer than {MAX_ANSWER_CHARS} characters"),
            ));
        }
        for (name, text) in [
            (field, &answer.answer),
            (format!("answers[{i}].question"), &answer.question),
        ] {
            if let Some(hidden) = crate::invisible::find(text, crate::invisible::Layout::SingleLine)
            {
                return Err(refuse(
                    &name,
                    format!("contains {hidden}: answers are one line of visible text"),
                ));
            }
        }
        if body.answers[..i]
            .iter()
            .any(|a| a.question == answer.question)
        {
            return Err(refuse(
                &format!("answers[{i}].question"),
                "is answered twice".to_owned(),
            ));
        }
    }
    Ok(body
        .answers
        .into_iter()
        .map(|a| Answer {
            question: a.question,
            answer: a.answer.trim().to_owned(),
        })
        .collect())
}

/// The specification with `answers` recorded the way Spec Kit's clarify step records
/// them: each question's marker replaced by its answer, and a `- Q: ... → A: ...` line
/// per answer under `## Clarifications` / `### Session <date>` (the section made before
/// the first `##` section when missing). A line already there is not written twice, so
/// recording the same answers again changes nothing.
pub fn record_answers(spec: &str, answers: &[Answer], date: &str) -> String {
    let mut text = spec.to_owned();
    for answer in answers {
        for marker in [
            format!("{OPEN}: {}]", answer.question),
            format!("{OPEN}:{}]", answer.question),
        ] {
            text = text.replace(&marker, &answer.answer);
        }
    }
    let lines: Vec<String> = answers
        .iter()
        .map(|a| format!("- Q: {} → A: {}", a.question, a.answer))
        .filter(|line| !text.lines().any(|l| l.trim() == line))
        .collect();
    if lines.is_empty() {
        return text;
    }
    let session = format!("### Session {date}");
    let mut out: Vec<String> = text.lines().map(str::to_owned).collect();
    match out.iter().position(|l| l.trim() == "## Clarifications") {
        Some(start) => {
            let mut end = out[start + 1..]
                .iter()
                .position(|l| l.starts_with("## "))
                .map_or(out.len(), |i| start + 1 + i);
            // The section's last line, before the blank lines that end it.
            while end > start + 1 && out[end - 1].trim().is_empty() {
                end -= 1;
            }
            let mut block = Vec::new();
            if !out[start..end].iter().any(|l| l.trim() == session) {
                block.extend([String::new(), session, String::new()]);
            }
            block.extend(lines);
            out.splice(end..end, block);
        }
        None => {
            let first = out
                .iter()
                .position(|l| l.starts_with("## "))
                .unwrap_or(out.len());
            let mut block = vec![
                "## Clarifications".to_owned(),
                String::new(),
                session,
                String::new(),
            ];
            block.extend(lines);
            block.push(String::new());
            out.splice(first..first, block);
        }
    }
    let mut joined = out.join("\n");
    if spec.ends_with('\n') {
        joined.push('\n');
    }
    joined
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

    fn answers() -> Vec<Answer> {
        vec![Answer {
            question: "Who may use it?".into(),
            answer: "Only administrators".into(),
        }]
    }

    #[test]
    fn answers_replace_their_markers_and_are_recorded_under_a_session() {
        let spec = "# Feature\n\n**Input**: x\n\n## Requirements\n\n- FR-006: restrict to [NEEDS CLARIFICATION: Who may use it?]\n";
        let done = record_answers(spec, &answers(), "2026-12-03");
        assert!(find_questions(&done).is_empty(), "{done}");
        assert!(
            done.contains("- FR-006: restrict to Only administrators"),
            "{done}"
        );
        let section = done.find("## Clarifications").unwrap_or(usize::MAX);
        let requirements = done.find("## Requirements").unwrap_or(0);
        assert!(section < requirements, "{done}");
        assert!(
            done.contains(
                "### Session 2026-12-03\n\n- Q: Who may use it? → A: Only administrators\n"
            ),
            "{done}"
        );
        assert_eq!(
            record_answers(&done, &answers(), "2026-12-03"),
            done,
            "recorded once"
        );
    }

    #[test]
    fn an_existing_clarifications_section_gets_the_new_session() {
        let spec = "# F\n\n## Clarifications\n\n### Session 2026-12-01\n\n- Q: a → A: b\n\n## Requirements\n";
        let done = record_answers(spec, &answers(), "2026-12-03");
        assert!(done.contains("- Q: a → A: b\n\n### Session 2026-12-03\n\n- Q: Who may use it? → A: Only administrators\n\n## Requirements"), "{done}");
        assert_eq!(done.matches("## Clarifications").count(), 1);
    }

    #[test]
    fn answers_documents_are_checked() {
        let good = br#"{"answers": [{"question": "Who?", "answer": " Admins "}]}"#;
        assert_eq!(
            parse_answers(good).ok(),
            Some(vec![Answer {
                question: "Who?".into(),
                answer: "Admins".into()
            }])
        );
        for (bad, field) in [
            (&br#"{"answers": []}"#[..], "answers"),
            (br#"{"answers": [{"question": "Who?", "answer": ""}]}"#, "answers[0].answer"),
            (br#"{"answers": [{"question": "Who?", "answer": "a\nb"}]}"#, "answers[0].answer"),
            (br#"{"answers": [{"question": "Who?", "answer": "a", "answer": "b"}]}"#, "body"),
            (br#"{"answers": [{"question": "Who?", "answer": "a"}], "x": 1}"#, "body"),
            (br#"{"answers": [{"question": "Q", "answer": "a"}, {"question": "Q", "answer": "b"}]}"#, "answers[1].question"),
        ] {
            assert_eq!(parse_answers(bad).err().map(|e| e.field), Some(field.to_owned()));
        }
    }

    #[test]
    fn markdown_lists_the_questions() {
        let md = questions_markdown("specs/001-x/spec.md", &["why?".to_owned()]);
        assert!(md.contains("1. why?") && md.contains("specs/001-x/spec.md"));
    }
}
