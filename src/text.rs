//! How client-supplied text appears in messages: quoted, with control characters escaped, and cut
//! to [`SHOWN_CHARS`] characters. A 1 MB id echoed whole would push the error past a default
//! client's metadata limit, and the client would see "metadata size exceeds limit" instead of
//! the real error.

use std::fmt;

/// Characters of a client value shown in a message before it is cut with an ellipsis.
pub const SHOWN_CHARS: usize = 64;

/// `value` as shown in messages: `"abc"`, or `"abcd…"` (64 characters, then an ellipsis) with
/// its length when longer.
pub fn shown(value: &str) -> Shown<'_> {
    Shown(value)
}

/// See [`shown`].
pub struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(SHOWN_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => {
                let head = format!("{:?}", &self.0[..cut]);
                // Only the closing quote goes: an escaped quote before it must stay whole.
                let open = head.strip_suffix('"').unwrap_or(&head);
                write!(f, "{open}…\" ({} bytes)", self.0.len())
            }
        }
    }
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_and_long_ones_cut() {
        assert_eq!(shown("t1").to_string(), "\"t1\"");
        assert_eq!(shown("a\nb").to_string(), "\"a\\nb\"");
        let long = "x".repeat(1 << 20);
        let s = shown(&long).to_string();
        assert!(s.starts_with(&format!("\"{}…\"", "x".repeat(64))), "{s}");
        assert!(s.ends_with("(1048576 bytes)"), "{s}");
        assert!(s.len() < 100);
        let quotes = "\"".repeat(100);
        assert!(shown(&quotes)
            .to_string()
            .starts_with(&format!("\"{}…", "\\\"".repeat(64))));
        // Cut on a character boundary.
        let wide = "é".repeat(100);
        assert!(shown(&wide).to_string().contains(&"é".repeat(64)));
    }
}
