//! Characters a request's text may not hold because a reader cannot see them: text the
//! agent reads (the specification, labels, references) could otherwise carry instructions
//! no reviewer saw. Unicode tag characters spell out ASCII invisibly, zero-width and
//! bidirectional controls reorder or hide what is shown.
//!
//! The refused set (Unicode 15.1), besides the C0/C1 control characters:
//! - every format character (general category Cf): U+00AD, U+0600..U+0605, U+061C,
//!   U+06DD, U+070F, U+0890..U+0891, U+08E2, U+180E, U+200B..U+200F, U+202A..U+202E,
//!   U+2060..U+2064, U+2066..U+206F, U+FEFF, U+FFF9..U+FFFB, U+110BD, U+110CD,
//!   U+13430..U+1343F, U+1BCA0..U+1BCA3, U+1D173..U+1D17A;
//! - the whole tag block U+E0000..U+E007F (its unassigned code points too);
//! - other characters that draw nothing and can carry data: the Hangul fillers U+115F,
//!   U+1160, U+3164, U+FFA0, the combining grapheme joiner U+034F and the supplementary
//!   variation selectors U+E0100..U+E01EF (VARIATION SELECTOR-17..256).
//!
//! Allowed on purpose: the variation selectors U+FE00..U+FE0F (emoji presentation), and,
//! where a field says so, newline, carriage return and tab.

use std::borrow::Cow;
use std::fmt;

/// A refused character and where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hidden {
    pub character: char,
    /// 1-based, counted in characters (not bytes).
    pub position: usize,
}

impl fmt::Display for Hidden {
    /// `U+E0041 (TAG LATIN CAPITAL LETTER A) at character 17`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "U+{:04X} ({}) at character {}",
            u32::from(self.character),
            name(self.character),
            self.position
        )
    }
}

/// Whether line breaks and tabs are part of the text (multi-line fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `\n`, `\r` and `\t` are allowed.
    MultiLine,
    /// One line: every control character is refused.
    SingleLine,
}

/// The first character of `text` a reader could not see, if any.
pub fn find(text: &str, layout: Layout) -> Option<Hidden> {
    text.chars()
        .zip(1..)
        .find(|&(c, _)| is_hidden(c, layout))
        .map(|(character, position)| Hidden {
            character,
            position,
        })
}

/// Whether `c` is refused in text of `layout`.
pub fn is_hidden(c: char, layout: Layout) -> bool {
    if c.is_control() {
        return !(layout == Layout::MultiLine && matches!(c, '\n' | '\r' | '\t'));
    }
    is_format(c) || is_tag(c) || is_blank_filler(c)
}

/// General category Cf, Unicode 15.1.
fn is_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}'
        | '\u{0600}'..='\u{0605}'
        | '\u{061C}'
        | '\u{06DD}'
        | '\u{070F}'
        | '\u{0890}'..='\u{0891}'
        | '\u{08E2}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}'
        | '\u{110BD}'
        | '\u{110CD}'
        | '\u{13430}'..='\u{1343F}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}')
}

fn is_tag(c: char) -> bool {
    matches!(c, '\u{E0000}'..='\u{E007F}')
}

fn is_blank_filler(c: char) -> bool {
    matches!(
        c,
        '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' | '\u{034F}' | '\u{E0100}'..='\u{E01EF}'
    )
}

/// The Unicode name of a refused character, or what kind of character it is where the
/// name table here does not go (a few rare scripts' format controls).
pub fn name(c: char) -> Cow<'static, str> {
    if c.is_control() {
        return Cow::Borrowed("control character");
    }
    let code = u32::from(c);
    match code {
        0xE0001 => Cow::Borrowed("LANGUAGE TAG"),
        0xE007F => Cow::Borrowed("CANCEL TAG"),
        0xE0020..=0xE007E => {
            // The tag characters mirror printable ASCII, and are named after it.
            let ascii = char::from_u32(code - 0xE0000).unwrap_or(' ');
            Cow::Owned(format!("TAG {}", ascii_name(ascii)))
        }
        0xE0000..=0xE007F => Cow::Borrowed("unassigned tag character"),
        0xE0100..=0xE01EF => Cow::Owned(format!("VARIATION SELECTOR-{}", code - 0xE0100 + 17)),
        _ => Cow::Borrowed(fixed_name(code)),
    }
}

fn fixed_name(code: u32) -> &'static str {
    match code {
        0x00AD => "SOFT HYPHEN",
        0x034F => "COMBINING GRAPHEME JOINER",
        0x061C => "ARABIC LETTER MARK",
        0x115F => "HANGUL CHOSEONG FILLER",
        0x1160 => "HANGUL JUNGSEONG FILLER",
        0x180E => "MONGOLIAN VOWEL SEPARATOR",
        0x200B => "ZERO WIDTH SPACE",
        0x200C => "ZERO WIDTH NON-JOINER",
        0x200D => "ZERO WIDTH JOINER",
        0x200E => "LEFT-TO-RIGHT MARK",
        0x200F => "RIGHT-TO-LEFT MARK",
        0x202A => "LEFT-TO-RIGHT EMBEDDING",
        0x202B => "RIGHT-TO-LEFT EMBEDDING",
        0x202C => "POP DIRECTIONAL FORMATTING",
        0x202D => "LEFT-TO-RIGHT OVERRIDE",
        0x202E => "RIGHT-TO-LEFT OVERRIDE",
        0x2060 => "WORD JOINER",
        0x2061 => "FUNCTION APPLICATION",
        0x2062 => "INVISIBLE TIMES",
        0x2063 => "INVISIBLE SEPARATOR",
        0x2064 => "INVISIBLE PLUS",
        0x2066 => "LEFT-TO-RIGHT ISOLATE",
        0x2067 => "RIGHT-TO-LEFT ISOLATE",
        0x2068 => "FIRST STRONG ISOLATE",
        0x2069 => "POP DIRECTIONAL ISOLATE",
        0x3164 => "HANGUL FILLER",
        0xFEFF => "ZERO WIDTH NO-BREAK SPACE",
        0xFFA0 => "HALFWIDTH HANGUL FILLER",
        0xFFF9 => "INTERLINEAR ANNOTATION ANCHOR",
        0xFFFA => "INTERLINEAR ANNOTATION SEPARATOR",
        0xFFFB => "INTERLINEAR ANNOTATION TERMINATOR",
        0x206A..=0x206F => "deprecated format character",
        _ => "format character",
    }
}

/// Unicode's names of the printable ASCII characters.
fn ascii_name(c: char) -> Cow<'static, str> {
    let named = match c {
        ' ' => "SPACE",
        '!' => "EXCLAMATION MARK",
        '"' => "QUOTATION MARK",
        '#' => "NUMBER SIGN",
        '$' => "DOLLAR SIGN",
        '%' => "PERCENT SIGN",
        '&' => "AMPERSAND",
        '\'' => "APOSTROPHE",
        '(' => "LEFT PARENTHESIS",
        ')' => "RIGHT PARENTHESIS",
        '*' => "ASTERISK",
        '+' => "PLUS SIGN",
        ',' => "COMMA",
        '-' => "HYPHEN-MINUS",
        '.' => "FULL STOP",
        '/' => "SOLIDUS",
        ':' => "COLON",
        ';' => "SEMICOLON",
        '<' => "LESS-THAN SIGN",
        '=' => "EQUALS SIGN",
        '>' => "GREATER-THAN SIGN",
        '?' => "QUESTION MARK",
        '@' => "COMMERCIAL AT",
        '[' => "LEFT SQUARE BRACKET",
        '\\' => "REVERSE SOLIDUS",
        ']' => "RIGHT SQUARE BRACKET",
        '^' => "CIRCUMFLEX ACCENT",
        '_' => "LOW LINE",
        '`' => "GRAVE ACCENT",
        '{' => "LEFT CURLY BRACKET",
        '|' => "VERTICAL LINE",
        '}' => "RIGHT CURLY BRACKET",
        '~' => "TILDE",
        _ => "",
    };
    if !named.is_empty() {
        return Cow::Borrowed(named);
    }
    const DIGITS: [&str; 10] = [
        "ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE",
    ];
    match c {
        '0'..='9' => Cow::Owned(format!("DIGIT {}", DIGITS[usize::from(c as u8 - b'0')])),
        'A'..='Z' => Cow::Owned(format!("LATIN CAPITAL LETTER {c}")),
        'a'..='z' => Cow::Owned(format!("LATIN SMALL LETTER {}", c.to_ascii_uppercase())),
        _ => Cow::Borrowed("CHARACTER"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str) -> Option<String> {
        find(text, Layout::MultiLine).map(|h| h.to_string())
    }

    #[test]
    fn tag_characters_are_named_after_the_ascii_they_hide() {
        let text = "Add a login page\u{E0041}\u{E0042}";
        assert_eq!(
            shown(text).as_deref(),
            Some("U+E0041 (TAG LATIN CAPITAL LETTER A) at character 17")
        );
        assert_eq!(name('\u{E0061}'), "TAG LATIN SMALL LETTER A");
        assert_eq!(name('\u{E0030}'), "TAG DIGIT ZERO");
        assert_eq!(name('\u{E0020}'), "TAG SPACE");
        assert_eq!(name('\u{E007E}'), "TAG TILDE");
        assert_eq!(name('\u{E0001}'), "LANGUAGE TAG");
        assert_eq!(name('\u{E007F}'), "CANCEL TAG");
        assert_eq!(name('\u{E0100}'), "VARIATION SELECTOR-17");
        assert_eq!(name('\u{E01EF}'), "VARIATION SELECTOR-256");
    }

    #[test]
    fn every_listed_invisible_character_is_refused() {
        let refused = [
            '\u{00AD}',
            '\u{034F}',
            '\u{0600}',
            '\u{061C}',
            '\u{115F}',
            '\u{180E}',
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{200E}',
            '\u{200F}',
            '\u{202A}',
            '\u{202E}',
            '\u{2060}',
            '\u{2064}',
            '\u{2066}',
            '\u{2069}',
            '\u{206F}',
            '\u{3164}',
            '\u{FEFF}',
            '\u{FFA0}',
            '\u{FFF9}',
            '\u{110BD}',
            '\u{13430}',
            '\u{1D173}',
            '\u{E0000}',
            '\u{E0001}',
            '\u{E0041}',
            '\u{E007F}',
            '\u{E0100}',
            '\u{E01EF}',
            '\u{0000}',
            '\u{007F}',
            '\u{0085}',
        ];
        for c in refused {
            assert!(is_hidden(c, Layout::MultiLine), "U+{:04X}", u32::from(c));
            assert!(!name(c).is_empty());
        }
    }

    #[test]
    fn ordinary_text_passes_and_line_breaks_only_where_allowed() {
        for ok in [
            "Add login\n\twith 2FA\r\n",
            "Überweisungen für café — 日本語のテキスト",
            "emoji with presentation: \u{2764}\u{FE0F}",
            "\u{2028} is a visible line separator here",
        ] {
            assert_eq!(shown(ok), None, "{ok:?}");
        }
        assert_eq!(
            find("a\nb", Layout::SingleLine).map(|h| h.position),
            Some(2)
        );
        assert_eq!(
            find("a\tb", Layout::SingleLine)
                .map(|h| h.to_string())
                .as_deref(),
            Some("U+0009 (control character) at character 2")
        );
    }
}
