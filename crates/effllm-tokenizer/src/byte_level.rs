//! GPT-2's byte-to-character map: each of the 256 byte values stands for one printable character, so a byte-level
//! BPE vocabulary is a set of ordinary strings.

/// The character that stands for each byte (GPT-2's `bytes_to_unicode`): the printable bytes `!`..=`~`,
/// `¡`..=`¬` and `®`..=`ÿ` stand for themselves; the other 68 bytes, in increasing order, for `U+0100`, `U+0101`,
/// ... (so the space 0x20 is `Ġ` U+0120 and the newline 0x0A is `Ċ` U+010A).
pub fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let code = if printable {
            b
        } else {
            next += 1;
            next - 1
        };
        // Every code is below 0x144, never a surrogate.
        *slot = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
    }
    table
}

/// The byte a byte-level character stands for, if it is one of the 256 (inverse of [`byte_to_char_table`]).
pub fn char_to_byte(c: char) -> Option<u8> {
    let code = c as u32;
    let printable = (0x21..=0x7E).contains(&code) || (0xA1..=0xAC).contains(&code) || (0xAE..=0xFF).contains(&code);
    if printable {
        return u8::try_from(code).ok();
    }
    // The non-printable bytes in order: 0x00..=0x20 (33), 0x7F..=0xA0 (34), 0xAD.
    match code.checked_sub(256)? {
        n @ 0..=32 => u8::try_from(n).ok(),
        n @ 33..=66 => u8::try_from(0x7F + n - 33).ok(),
        67 => Some(0xAD),
        _ => None,
    }
}

/// The bytes a vocabulary token stands for, as the `tokenizers` ByteLevel decoder reads it: each character
/// mapped through [`char_to_byte`]; a token with any other character (a special token with a space, say) stands
/// for its own UTF-8 bytes.
pub fn token_bytes(token: &str) -> Vec<u8> {
    token.chars().map(char_to_byte).collect::<Option<Vec<u8>>>().unwrap_or_else(|| token.as_bytes().to_vec())
}

/// The byte-level string of `bytes`: each byte replaced by its character of [`byte_to_char_table`].
pub fn bytes_to_token(bytes: &[u8], table: &[char; 256]) -> String {
    bytes.iter().map(|&b| table[usize::from(b)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_a_bijection_with_known_points() {
        let t = byte_to_char_table();
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(t[usize::from(b)]), Some(b));
        }
        assert_eq!(t[usize::from(b' ')], 'Ġ');
        assert_eq!(t[usize::from(b'\n')], 'Ċ');
        assert_eq!(t[usize::from(b'\t')], 'ĉ');
        assert_eq!(t[usize::from(b'a')], 'a');
        assert_eq!(t[0xAD], 'Ń');
        assert_eq!(char_to_byte('Ą'), Some(4));
        assert_eq!(char_to_byte('ġ'), Some(0x7F));
        assert_eq!(char_to_byte('ń'), None);
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(char_to_byte('日'), None);
        assert_eq!(token_bytes("<|im_start|>"), b"<|im_start|>");
        assert_eq!(token_bytes("a b"), b"a b");
    }
}
