//! Untrusted text made safe for a terminal and a log.
//!
//! Drivers, images and containerd clients put text in front of operators: error messages,
//! status lines, metadata, log messages, file names. Printed raw, a control character can
//! retitle the terminal (`ESC ] 0;`), clear it (`ESC [2J`), hide what follows, or start a new
//! line that looks like the host's own (`\n` then `strata: …`). Everything untrusted is
//! therefore escaped before a human sees it: C0 and C1 controls (newline and tab included),
//! DEL, the Unicode line and paragraph separators and the bidirectional overrides become
//! `\u{…}`-style escapes. Ordinary text, including non-ASCII letters, passes unchanged.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal raw.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
}

/// `text` with every unsafe character escaped (`\n`, `\t`, `\r` as such, others as
/// `\u{1b}`); borrowed when nothing needed escaping.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`escape`], cut after `max` bytes (with `…`).
pub fn escape_capped(text: &str, max: usize) -> String {
    let escaped = escape(text);
    if escaped.len() <= max {
        return escaped.into_owned();
    }
    let mut end = max;
    while !escaped.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &escaped[..end])
}

/// A path for a line of human output: as is when it is plain, else quoted with escapes (as
/// `ls` quotes), so a name holding a newline cannot forge a line of its own.
pub fn quote_path(path: &str) -> Cow<'_, str> {
    match escape(path) {
        Cow::Borrowed(p) if !p.contains(['"', '\\']) => Cow::Borrowed(p),
        _ => Cow::Owned(
            format!("{path:?}")
                .chars()
                .flat_map(|c| {
                    if is_unsafe(c) {
                        c.escape_default().collect::<Vec<_>>()
                    } else {
                        vec![c]
                    }
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_overrides_are_escaped_plain_text_is_not() {
        assert!(matches!(escape("layer ä ok"), Cow::Borrowed(_)));
        assert_eq!(escape("a\x1b]0;pwned\x07b"), "a\\u{1b}]0;pwned\\u{7}b");
        assert_eq!(escape("x\x1b[2Jy"), "x\\u{1b}[2Jy");
        assert_eq!(escape("one\nstrata: forged"), "one\\nstrata: forged");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
        assert_eq!(escape_capped("abcdef", 3), "abc…");
        assert_eq!(escape_capped("ééé", 3), "é…");
        assert_eq!(quote_path("/etc/passwd"), "/etc/passwd");
        assert_eq!(
            quote_path("/x\nDelete /etc/shadow"),
            "\"/x\\nDelete /etc/shadow\""
        );
        assert_eq!(quote_path("/a\"b"), "\"/a\\\"b\"");
    }
}
