//! Keys kept out of what is logged or echoed back. A caller may put a key
//! where none belongs (a URL's path, a date parameter, its request id);
//! what quota repeats of such text shows any key in it as a display prefix
//! (`sk-AbCd…`), as everywhere else.
//!
//! A key here is anything shaped like one, not only a well-formed key:
//! `sk-`, not inside a word, and at least [`MIN_KEY_BODY`] ASCII letters and
//! digits, so that a key cut short or followed by other text is still
//! hidden (but `task-…` or `disk-…` is not a key).

use std::borrow::Cow;

/// What a key's prefix is.
const PREFIX: &str = "sk-";
/// The fewest letters and digits after [`PREFIX`] that count as a key (a
/// real key has 48).
pub const MIN_KEY_BODY: usize = 20;
/// How many of them a display prefix shows.
const SHOWN: usize = 4;

/// `text` with every key in it cut to its display prefix.
pub fn keys(text: &str) -> Cow<'_, str> {
    let Some(first) = next_key(text, 0) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut found = Some(first);
    while let Some((start, end)) = found {
        let shown = start + PREFIX.len() + SHOWN;
        out.push_str(&text[copied..shown]);
        out.push('…');
        copied = end;
        found = next_key(text, end);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Whether `text` holds a key.
pub fn has_key(text: &str) -> bool {
    next_key(text, 0).is_some()
}

/// Where the first key at or after `from` starts and ends.
fn next_key(text: &str, from: usize) -> Option<(usize, usize)> {
    // Too short to hold one (an HTTP method, a date): no search at all.
    if text.len().saturating_sub(from) < PREFIX.len() + MIN_KEY_BODY {
        return None;
    }
    let mut at = from;
    while let Some(found) = text[at..].find(PREFIX) {
        let start = at + found;
        let body = &text.as_bytes()[start + PREFIX.len()..];
        let len = body
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        if len >= MIN_KEY_BODY {
            return Some((start, start + PREFIX.len() + len));
        }
        at = start + PREFIX.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-AbCdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV";

    #[test]
    fn a_key_is_cut_to_its_display_prefix_wherever_it_is() {
        assert_eq!(keys(KEY), "sk-AbCd…");
        assert_eq!(keys(&format!("/v1/{KEY}/x")), "/v1/sk-AbCd…/x");
        assert_eq!(keys(&format!("{KEY},{KEY}")), "sk-AbCd…,sk-AbCd…");
        // Cut short, or followed by other text: still a key.
        assert_eq!(keys(&format!("-{}-x", &KEY[..30])), "-sk-AbCd…-x");
        assert_eq!(keys(&format!("{KEY}é")), "sk-AbCd…é");
        assert!(has_key(KEY));
        // The shortest text that is one, and one byte short of it.
        let shortest = &KEY[..PREFIX.len() + MIN_KEY_BODY];
        assert_eq!(keys(shortest), "sk-AbCd…");
        assert!(!has_key(&shortest[..shortest.len() - 1]));
        assert_eq!(keys(&format!("{shortest}-{shortest}")), "sk-AbCd…-sk-AbCd…");
    }

    #[test]
    fn text_without_a_key_is_left_as_it_is() {
        for text in [
            "",
            "sk-",
            "sk-short",
            "2026-13-01",
            "ask-me-anything",
            "/v1/models",
        ] {
            assert!(
                matches!(keys(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
            assert!(!has_key(text));
        }
    }
}
