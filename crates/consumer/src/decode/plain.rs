//! The payload nearly every message carries, read without serde: one flat JSON
//! object whose values are strings without escapes, or null.
//!
//! Decoding was the largest share of the consumer's CPU, and most of serde_json's
//! part of it went to the generic machinery around each key and value (visitor
//! calls, `Cow`s, error plumbing) rather than to reading bytes. This path reads
//! that one shape in a single pass and gives up on anything else (an escape, a
//! number, a nested value, a repeated field, a byte JSON does not allow): the
//! caller then parses the payload with serde_json, whose rules (lenient fields,
//! the reasons of dead letters) stay the only ones. So the answer of [`parse`] is
//! always serde's or none; the tests check that on every way a payload can differ.

use std::borrow::Cow;

use events::FIELDS;

use super::Values;

/// The twelve fields of a payload of the plain shape, borrowed from it; `None`
/// when the payload is of any other shape (it may still be valid: serde decides).
pub fn parse(text: &str) -> Option<Values<'_>> {
    let mut values: Values<'_> = Default::default();
    let mut seen = [false; FIELDS.len()];
    // The field expected next: payloads list them in order, so most keys are
    // matched with one comparison (three pairs of names share a length).
    let mut expected = 0;
    let mut at = Cursor { text, i: 0 };
    at.skip_space();
    at.expect(b'{')?;
    at.skip_space();
    if at.peek() == Some(b'}') {
        at.i += 1;
    } else {
        loop {
            at.expect(b'"')?;
            let key = at.string()?;
            at.skip_space();
            at.expect(b':')?;
            at.skip_space();
            let value = match at.peek()? {
                b'"' => {
                    at.i += 1;
                    Some(at.string()?)
                }
                b'n' if text.as_bytes()[at.i..].starts_with(b"null") => {
                    at.i += 4;
                    None
                }
                _ => return None,
            };
            let field = if FIELDS.get(expected) == Some(&key) {
                Some(expected)
            } else {
                FIELDS.iter().position(|f| *f == key)
            };
            if let Some(field) = field {
                expected = field + 1;
                // A repeat is an error with serde's wording.
                if std::mem::replace(&mut seen[field], true) {
                    return None;
                }
                values[field] = value.map(Cow::Borrowed);
            }
            at.skip_space();
            match at.peek()? {
                b',' => {
                    at.i += 1;
                    at.skip_space();
                }
                b'}' => {
                    at.i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    at.skip_space();
    (at.i == text.len()).then_some(values)
}

/// A position in the payload.
struct Cursor<'a> {
    text: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.i).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.i += 1)
    }

    /// JSON's white space (not Unicode's).
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// The rest of a string whose opening quote is read: its text, when no escape
    /// and no control character comes before the closing quote.
    fn string(&mut self) -> Option<&'a str> {
        let bytes = self.text.as_bytes();
        let start = self.i;
        let end = start + first_special(&bytes[start..])?;
        if bytes[end] != b'"' {
            return None;
        }
        self.i = end + 1;
        // Both ends are ASCII quotes, so the slice is on character boundaries.
        self.text.get(start..end)
    }
}

/// The offset of the first quote, backslash or control character (below 0x20),
/// eight bytes at a time: the values are a few dozen bytes each.
fn first_special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let mut words = bytes.chunks_exact(8);
    let mut offset = 0;
    for w in &mut words {
        let mut word = [0; 8];
        word.copy_from_slice(w);
        let w = u64::from_le_bytes(word);
        // For each test, the lowest flagged byte is exact (a borrow only flags bytes
        // above a true hit), and only the lowest of all is used.
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
        let quote = zero(w ^ (ONES * u64::from(b'"')));
        let backslash = zero(w ^ (ONES * u64::from(b'\\')));
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
        let hits = quote | backslash | control;
        if hits != 0 {
            return Some(offset + (hits.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| matches!(b, b'"' | b'\\' | 0..0x20))
        .map(|i| offset + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// serde_json's answer for the same text (the consumer's only other path).
    fn by_serde(text: &str) -> Option<Vec<Option<String>>> {
        super::super::parse_with_serde(text)
            .ok()
            .map(|v| v.iter().map(|f| f.as_deref().map(str::to_string)).collect())
    }

    fn by_plain(text: &str) -> Option<Vec<Option<String>>> {
        parse(text).map(|v| v.iter().map(|f| f.as_deref().map(str::to_string)).collect())
    }

    /// Whenever the plain path answers, serde answers the same.
    fn agrees(text: &str) -> bool {
        match by_plain(text) {
            Some(plain) => by_serde(text) == Some(plain),
            None => true,
        }
    }

    #[test]
    fn reads_the_plain_shape_as_serde_does() {
        for text in [
            r#"{"id":"1","first_name":"Zoë","email":null,"extra":"x"}"#,
            " {\t\"id\" : \"a b\" ,\n\"dob\":\"1947-11-29T13:42:28.938Z\"\r}\n",
            "{}",
            r#"{"post_code":"","picture":"https://randomuser.me/api/portraits/med/women/8.jpg"}"#,
            r#"{"address":"5350 Cherry St, Riverside, Maine, United States — ✓"}"#,
            r#"{"picture":"p","phone":null,"id":"1","first_name":"F","x":"y","dob":"d"}"#,
        ] {
            assert!(by_plain(text).is_some(), "plain shape: {text}");
            assert_eq!(by_plain(text), by_serde(text), "{text}");
        }
    }

    #[test]
    fn leaves_every_other_shape_to_serde() {
        for text in [
            r#"{"id":"a\"b"}"#,
            r#"{"\u0069d":"7"}"#,
            r#"{"post_code":53719}"#,
            r#"{"gender":true}"#,
            r#"{"extra":{"x":1},"id":"1"}"#,
            r#"{"extra":[1],"id":"1"}"#,
            r#"{"id":"1","id":"2"}"#,
            "{\"id\":\"a\u{1}b\"}",
            r#"{"id":"1"} trailing"#,
            r#"{"id":"1",}"#,
            r#"{"id":"1""#,
            r#"{"id":nul}"#,
            r#"{"id":nullx}"#,
            r#"{"id" "1"}"#,
            "\u{a0}{}",
            "[]",
            "",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
    }

    #[test]
    fn finds_the_first_special_byte_at_every_position() {
        for len in 0..20 {
            for at in 0..len {
                for special in [b'"', b'\\', 0x00, 0x1f] {
                    let mut bytes = vec![b'a'; len];
                    // Bytes just above the range, and non-ASCII ones, are plain.
                    if at > 0 {
                        bytes[at - 1] = if at % 2 == 0 { 0x20 } else { 0xc3 };
                    }
                    bytes[at] = special;
                    if at + 1 < len {
                        bytes[at + 1] = b'"';
                    }
                    assert_eq!(first_special(&bytes), Some(at), "{bytes:?}");
                }
            }
            assert_eq!(first_special(&vec![b'a'; len]), None);
        }
    }

    #[test]
    fn agrees_with_serde_on_every_cut_and_changed_byte_of_real_payloads() {
        let real = [
            r#"{"id":"889-53-0877","first_name":"Lucy","last_name":"Walker","gender":"female","address":"5350 Cherry St, Riverside, Maine, United States","post_code":"53719","email":"lucy.walker@example.com","username":"blacksnake778","dob":"1947-11-29T13:42:28.938Z","registered_date":"2007-07-19T08:42:37.827Z","phone":"(708) 553-1238","picture":"https://randomuser.me/api/portraits/med/women/8.jpg"}"#,
            r#"{ "id": "NaNNA249undefined", "first_name": "Leevi", "last_name": null, "address": "Pelkosenniemi, Kymenlaakso", "unknown": "x" }"#,
        ];
        let replacements = [
            "\"", "\\", ",", ":", "}", "{", " ", "n", "null", "1", "\u{1}", "é", "",
        ];
        let mut checked = 0;
        for text in real {
            assert!(by_plain(text).is_some());
            for cut in 0..=text.len() {
                if let Some(prefix) = text.get(..cut) {
                    assert!(agrees(prefix), "{prefix}");
                }
            }
            for (i, _) in text.char_indices() {
                let rest = &text[i..];
                let next = rest.chars().next().map_or(0, char::len_utf8);
                for r in replacements {
                    let changed = format!("{}{r}{}", &text[..i], &rest[next..]);
                    assert!(agrees(&changed), "{changed}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 5_000, "{checked}");
    }
}
