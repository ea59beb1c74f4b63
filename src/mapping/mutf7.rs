//! Modified UTF-7 (RFC 3501 §5.1.3), the encoding of IMAP4rev1 mailbox names on the wire.
//!
//! Printable US-ASCII (0x20..=0x7e) stands for itself, except `&`, written `&-`. Any other
//! run of characters is written as `&`, the modified BASE64 (`,` instead of `/`, no `=`
//! padding) of its UTF-16BE form, and `-`.
//!
//! The decoder is strict: a name that does not decode, or that is not in the one
//! canonical form the encoder produces, is an error. Folder names are later re-encoded to
//! SELECT them, so accepting a name that does not round-trip would only move the failure
//! to a more confusing place; the caller can fall back to the raw name instead.

use super::MappingError;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

fn printable(c: char) -> bool {
    (' '..='~').contains(&c)
}

fn sextet(b: u8) -> Option<u32> {
    Some(match b {
        b'A'..=b'Z' => b - b'A',
        b'a'..=b'z' => b - b'a' + 26,
        b'0'..=b'9' => b - b'0' + 52,
        b'+' => 62,
        b',' => 63,
        _ => return None,
    } as u32)
}

/// Encodes a mailbox name for the wire. Total: every Rust string has an encoding.
pub fn encode_mutf7(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run: Vec<u16> = Vec::new();
    for c in s.chars() {
        if printable(c) {
            flush(&mut run, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            run.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Writes a pending run of UTF-16 code units as `&<modified base64>-`.
fn flush(run: &mut Vec<u16>, out: &mut String) {
    if run.is_empty() {
        return;
    }
    out.push('&');
    let mut bits: u32 = 0;
    let mut nbits = 0;
    for unit in run.drain(..) {
        bits = (bits << 16) | unit as u32;
        nbits += 16;
        while nbits >= 6 {
            nbits -= 6;
            out.push(ALPHABET[((bits >> nbits) & 0x3f) as usize] as char);
        }
        bits &= (1 << nbits) - 1;
    }
    if nbits > 0 {
        out.push(ALPHABET[((bits << (6 - nbits)) & 0x3f) as usize] as char);
    }
    out.push('-');
}

/// Decodes a mailbox name as received on the wire.
///
/// Errors on: characters outside printable ASCII, an unterminated `&` section, a
/// character outside the modified BASE64 alphabet, leftover bits that are not zero or
/// an incomplete UTF-16 unit, unpaired surrogates, a section encoding printable ASCII
/// (RFC 3501 forbids it), and two adjacent sections (`&AOQ-&APY-`, which must be one).
pub fn decode_mutf7(s: &str) -> Result<String, MappingError> {
    let err = |reason: &'static str| MappingError::InvalidMutf7 {
        name: s.to_string(),
        reason,
    };
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    // Where the last base64 section ended, to reject "&...-&...-".
    let mut last_section_end = None;
    while i < bytes.len() {
        let b = bytes[i];
        if !(0x20..=0x7e).contains(&b) {
            return Err(err("contains a character outside printable US-ASCII"));
        }
        if b != b'&' {
            out.push(b as char);
            i += 1;
            continue;
        }
        let start = i + 1;
        let Some(len) = bytes[start..].iter().position(|&b| b == b'-') else {
            return Err(err("'&' section is not terminated by '-'"));
        };
        let end = start + len;
        i = end + 1;
        if len == 0 {
            out.push('&');
            continue;
        }
        if last_section_end == Some(start - 1) {
            return Err(err("two adjacent '&' sections (not canonical)"));
        }
        last_section_end = Some(i);
        decode_section(&bytes[start..end], &mut out).map_err(err)?;
    }
    Ok(out)
}

/// Decodes the modified BASE64 between `&` and `-` and appends the characters.
fn decode_section(b64: &[u8], out: &mut String) -> Result<(), &'static str> {
    let mut units = Vec::with_capacity(b64.len() * 6 / 16);
    let mut bits: u32 = 0;
    let mut nbits = 0;
    for &b in b64 {
        let v = sextet(b).ok_or("invalid character in modified BASE64")?;
        bits = (bits << 6) | v;
        nbits += 6;
        if nbits >= 16 {
            nbits -= 16;
            units.push((bits >> nbits) as u16);
            bits &= (1 << nbits) - 1;
        }
    }
    // The encoder pads the last unit with fewer than 6 zero bits; anything else means a
    // truncated unit or a stray character.
    if nbits >= 6 || bits != 0 {
        return Err("modified BASE64 section does not end on a UTF-16 unit boundary");
    }
    for c in char::decode_utf16(units.iter().copied()) {
        let c = c.map_err(|_| "unpaired UTF-16 surrogate")?;
        if printable(c) {
            return Err("modified BASE64 section encodes printable US-ASCII");
        }
        out.push(c);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(plain: &str, wire: &str) {
        assert_eq!(encode_mutf7(plain), wire, "encoding {plain:?}");
        assert_eq!(decode_mutf7(wire).unwrap(), plain, "decoding {wire:?}");
    }

    #[test]
    fn known_values() {
        round_trip("", "");
        round_trip("INBOX", "INBOX");
        round_trip("Entwürfe", "Entw&APw-rfe");
        round_trip("日本語", "&ZeVnLIqe-");
        round_trip("A&B", "A&-B");
        round_trip("&", "&-");
        round_trip("&&", "&-&-");
        round_trip("Gelöschte Objekte", "Gel&APY-schte Objekte");
        round_trip("Éléments envoyés", "&AMk-l&AOk-ments envoy&AOk-s");
        // RFC 3501's own example.
        round_trip("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-");
        round_trip("ä&ö", "&AOQ-&-&APY-");
        round_trip("tab\there", "tab&AAk-here");
    }

    #[test]
    fn emoji_surrogate_pairs() {
        round_trip("📧", "&2D3c5w-");
        round_trip("Mail 📧 alt", "Mail &2D3c5w- alt");
        round_trip("😀😁", "&2D3eANg93gE-");
    }

    #[test]
    fn round_trips_many() {
        for s in ["Ärger/Übel", "a,b+c", "русский", "x\u{7f}y", "ß日📧&-"] {
            assert_eq!(decode_mutf7(&encode_mutf7(s)).unwrap(), s);
        }
    }

    #[test]
    fn invalid_input() {
        for bad in [
            "Entw&APw",   // unterminated
            "&A-",        // too short for a UTF-16 unit
            "&APx-",      // nonzero padding bits
            "&AP/-",      // '/' is not in the modified alphabet
            "&AP=-",      // no '=' padding
            "&2D0-",      // lone high surrogate
            "&3+c-",      // lone low surrogate
            "&AGE-",      // encodes 'a'
            "&AOQ-&APY-", // adjacent sections
            "Entwürfe",   // raw 8-bit
            "a\tb",       // raw control character
        ] {
            let e = decode_mutf7(bad);
            assert!(e.is_err(), "{bad:?} decoded to {e:?}");
        }
        let msg = decode_mutf7("x&AGE-").unwrap_err().to_string();
        assert!(msg.contains("x&AGE-") && msg.contains("printable"), "{msg}");
    }
}
