//! File names the agent chose, made safe to show one per line: git's C-style quoting
//! (`core.quotePath` without octal-escaping non-ASCII), so a name with a newline cannot
//! forge a line in a report such as `diff-summary.txt`.

/// The path as is when it is plain, else in double quotes with C escapes.
pub fn quote_path(path: &str) -> String {
    let plain = !path
        .chars()
        .any(|c| c.is_control() || c == '"' || c == '\\' || is_invisible(c));
    if plain {
        return path.to_owned();
    }
    let mut out = String::with_capacity(path.len() + 2);
    out.push('"');
    for c in path.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || is_invisible(c) => {
                let mut buf = [0u8; 4];
                for byte in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{byte:03o}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Characters that change how a line reads without being seen: bidirectional controls
/// and line or paragraph separators.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_stay_as_they_are() {
        assert_eq!(quote_path("specs/001-x/spec.md"), "specs/001-x/spec.md");
        assert_eq!(quote_path("docs/überblick.md"), "docs/überblick.md");
    }

    #[test]
    fn a_newline_cannot_forge_a_line() {
        let forged = quote_path("a\nA\tsecrets.txt");
        assert_eq!(forged, "\"a\\nA\\tsecrets.txt\"");
        assert!(!forged.contains('\n'));
        assert_eq!(quote_path("q\"b\\"), "\"q\\\"b\\\\\"");
        assert_eq!(
            quote_path("x\u{202e}gpj.exe"),
            "\"x\\342\\200\\256gpj.exe\""
        );
        assert_eq!(quote_path("bell\u{7}"), "\"bell\\007\"");
    }
}
