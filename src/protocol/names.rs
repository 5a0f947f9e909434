//! Topic and channel names (T8) and Go's `%q` quoting used in error texts.

pub const EPHEMERAL_SUFFIX: &str = "#ephemeral";

/// `^[.a-zA-Z0-9_-]+(#ephemeral)?$`, 1..=64 bytes including the suffix.
pub fn is_valid_name(name: &[u8]) -> bool {
    if name.is_empty() || name.len() > 64 {
        return false;
    }
    let base = name
        .strip_suffix(EPHEMERAL_SUFFIX.as_bytes())
        .unwrap_or(name);
    !base.is_empty()
        && base
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

pub fn is_ephemeral(name: &str) -> bool {
    name.ends_with(EPHEMERAL_SUFFIX)
}

/// Formats bytes the way Go's `%q` formats a string.
pub fn go_quote(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len() + 2);
    out.push('"');
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\x07' => out.push_str("\\a"),
                '\x08' => out.push_str("\\b"),
                '\x0c' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\x0b' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c == '\x7f' => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c if c.is_control() => {
                    let v = c as u32;
                    if v <= 0xffff {
                        out.push_str(&format!("\\u{v:04x}"));
                    } else {
                        out.push_str(&format!("\\U{v:08x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name(b"test"));
        assert!(is_valid_name(b"a.b-c_d"));
        assert!(is_valid_name(b"t#ephemeral"));
        assert!(!is_valid_name(b"#ephemeral"));
        assert!(!is_valid_name(b""));
        assert!(!is_valid_name(b"a!b"));
        assert!(!is_valid_name(b"a#b"));
        assert!(is_valid_name(&[b'a'; 64]));
        assert!(!is_valid_name(&[b'a'; 65]));
    }

    #[test]
    fn quoting() {
        assert_eq!(go_quote(b"a!b"), "\"a!b\"");
        assert_eq!(go_quote(b"a\"b\n"), "\"a\\\"b\\n\"");
        assert_eq!(go_quote(&[0xff, b'a', 0x01]), "\"\\xffa\\x01\"");
    }
}
