//! Messages with NUL bytes. IMAP literals cannot carry NUL (RFC 3501 `CHAR8`); a legacy
//! server that stores mail as delivered (Courier, a Maildir written by hand) serves such
//! messages as they are. Dovecot as a source already hands out 0x80 in their place.
//!
//! Where the destination offers BINARY (RFC 3516) and LITERAL+, the message goes out
//! unchanged in a literal8 (`~{n+}`). Otherwise each NUL is replaced by [`REPLACEMENT`]
//! (0x80, the byte Dovecot itself stores for a NUL), so the length stays the same, and the
//! message is reported as altered with the count: never lost, never silently changed.

/// What a NUL becomes where it cannot be carried.
pub const REPLACEMENT: u8 = 0x80;

/// How a message with NUL bytes is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NulHandling {
    /// No NUL in the message.
    None,
    /// Sent unchanged as a literal8.
    Binary,
    /// This many NUL bytes were replaced by [`REPLACEMENT`].
    Replaced(usize),
}

/// Prepares `body` for a destination that does (`binary`) or does not accept literal8.
pub fn prepare(body: &mut [u8], binary: bool) -> NulHandling {
    if !body.contains(&0) {
        return NulHandling::None;
    }
    if binary {
        return NulHandling::Binary;
    }
    let mut n = 0;
    for b in body.iter_mut().filter(|b| **b == 0) {
        *b = REPLACEMENT;
        n += 1;
    }
    NulHandling::Replaced(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaced_and_counted_without_binary() {
        let mut b = b"Subject: x\r\n\r\na\0b\0\0c\r\n".to_vec();
        assert_eq!(prepare(&mut b, false), NulHandling::Replaced(3));
        assert_eq!(b, b"Subject: x\r\n\r\na\x80b\x80\x80c\r\n");
    }

    #[test]
    fn kept_with_binary_and_untouched_without_nul() {
        let mut b = b"a\0b".to_vec();
        assert_eq!(prepare(&mut b, true), NulHandling::Binary);
        assert_eq!(b, b"a\0b");
        let mut c = b"plain".to_vec();
        assert_eq!(prepare(&mut c, false), NulHandling::None);
    }
}
