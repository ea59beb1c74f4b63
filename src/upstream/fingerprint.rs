//! What identifies a message at a destination that does not give back the bytes it was
//! given.
//!
//! Exchange Online stores mail in its own format and renders MIME again on FETCH: the
//! `BODY[]` read back is not the bytes appended, and `RFC822.SIZE` is an estimate. What does
//! survive is the INTERNALDATE cutover set with the APPEND, and the values of a few header
//! fields, although the server may fold, quote or encode them differently. A
//! [`Fingerprint`] keeps exactly that, normalised so that those differences vanish:
//!
//! - `Message-ID`: the text between the angle brackets, else its letters and digits;
//! - `Date`: the instant it names (RFC 5322), else its letters and digits;
//! - `From` and `Subject`: decoded from RFC 2047, then only their ASCII letters and digits,
//!   lowercased: a server that re-encodes an 8-bit subject, or requotes a display name,
//!   still gives the same value;
//! - the INTERNALDATE, to the second, when the message was sent with one.
//!
//! A message with none of those four (a delivery report, a bare note) is told by its
//! `To`, `Cc` and the type of its `Content-Type` instead, normalised the same way.
//!
//! A copy [`Fingerprint::matches`] the original when every field the original has is equal
//! in the copy: a server may add a field the original lacked (Exchange gives a message
//! without `Message-ID` or `Date` one of its own), never change one it had.
//!
//! Two different messages with matching fingerprints are possible (the same message in
//! two source folders mapped to one destination folder); recovery pairs them one to one in
//! UID order, which is the order they were appended in, so that identical messages pair
//! up with identical copies.

/// The header fields a fingerprint is made of, as asked for with
/// `BODY.PEEK[HEADER.FIELDS (...)]`.
pub const FIELDS: [&str; 7] = [
    "MESSAGE-ID",
    "DATE",
    "FROM",
    "SUBJECT",
    "TO",
    "CC",
    "CONTENT-TYPE",
];

/// A message as recovery recognises it (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint {
    /// The normalised values of Message-ID, Date, From and Subject.
    pub fields: [String; 4],
    /// To, Cc and the type of Content-Type, for a message without any of `fields`.
    pub fallback: [String; 3],
}

impl Fingerprint {
    /// The fingerprint of a header block: a whole message's headers, or the answer to a
    /// `HEADER.FIELDS` FETCH.
    pub fn of_headers(headers: &[u8]) -> Fingerprint {
        let value = |name: &str| crate::imap::response::header_value(headers, name);
        Fingerprint {
            fields: [
                value("message-id")
                    .map(|v| message_id(&v))
                    .unwrap_or_default(),
                value("date").map(|v| date(&v)).unwrap_or_default(),
                value("from").map(|v| alnum(&v)).unwrap_or_default(),
                value("subject").map(|v| alnum(&v)).unwrap_or_default(),
            ],
            fallback: [
                value("to").map(|v| alnum(&v)).unwrap_or_default(),
                value("cc").map(|v| alnum(&v)).unwrap_or_default(),
                value("content-type")
                    .map(|v| alnum(v.split(';').next().unwrap_or_default()))
                    .unwrap_or_default(),
            ],
        }
    }

    /// The fingerprint of a whole message, from its header block.
    pub fn of_message(body: &[u8]) -> Fingerprint {
        Fingerprint::of_headers(header_block(body))
    }

    /// True when the message has none of the fields, fallback included: then only its
    /// INTERNALDATE tells it from another, which is too little to call a copy found.
    pub fn is_blank(&self) -> bool {
        self.fields
            .iter()
            .chain(&self.fallback)
            .all(String::is_empty)
    }

    /// Whether `copy` (read back from a destination) can be a copy of the message this is
    /// the fingerprint of: every field this one has is equal in `copy`; the fallback
    /// fields count only for a message without any of the main ones. Never true for a
    /// blank fingerprint.
    pub fn matches(&self, copy: &Fingerprint) -> bool {
        let same = |mine: &[String], theirs: &[String]| {
            mine.iter().zip(theirs).all(|(a, b)| a.is_empty() || a == b)
        };
        if self.fields.iter().any(|f| !f.is_empty()) {
            same(&self.fields, &copy.fields)
        } else {
            !self.is_blank() && same(&self.fallback, &copy.fallback)
        }
    }
}

/// The header block of a message: up to the first empty line (CRLF or bare LF).
pub fn header_block(body: &[u8]) -> &[u8] {
    let crlf = body.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = body.windows(2).position(|w| w == b"\n\n");
    let end = match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(body.len()),
    };
    &body[..end]
}

fn alnum(v: &str) -> String {
    v.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn message_id(v: &str) -> String {
    match (v.find('<'), v.rfind('>')) {
        (Some(a), Some(b)) if a < b => v[a + 1..b].split_whitespace().collect(),
        _ => alnum(v),
    }
}

fn date(v: &str) -> String {
    // A trailing comment such as "(PST)" is allowed by RFC 5322 and dropped by some
    // servers; chrono does not take it.
    let bare = match v.find('(') {
        Some(i) => v[..i].trim(),
        None => v.trim(),
    };
    match chrono::DateTime::parse_from_rfc2822(bare) {
        Ok(t) => t.timestamp().to_string(),
        Err(_) => alnum(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &[u8] = b"Received: from x\r\nSubject: =?iso-8859-1?Q?R=E9union?= du\r\n \
        lundi\r\nFrom: \"Doe, Jane\" <jane@example.test>\r\nDate: Mon, 3 Dec 2001 10:00:00 +0100 (CET)\r\n\
        Message-ID: <abc.123@example.test>\r\n\r\nbody\r\n";

    #[test]
    fn survives_a_server_that_renders_headers_again() {
        // Refolded, re-encoded, requoted, the date written another way, fields reordered.
        let rendered: &[u8] = b"Message-ID:\r\n <abc.123@example.test>\r\nDate: Mon, 03 Dec 2001 \
            09:00:00 +0000\r\nFrom: Doe, Jane <jane@example.test>\r\nSubject: =?utf-8?B?UsOpdW5pb24gZHUgbHVuZGk=?=\r\n\r\n";
        let a = Fingerprint::of_message(ORIGINAL);
        assert_eq!(a, Fingerprint::of_headers(rendered));
        assert_eq!(a.fields[0], "abc.123@example.test");
        assert!(!a.is_blank());
    }

    #[test]
    fn tells_different_messages_apart() {
        let other = b"Subject: Reunion du lundi\r\nFrom: jane@example.test\r\nMessage-ID: <abd.123@example.test>\r\n\r\n";
        assert_ne!(
            Fingerprint::of_message(ORIGINAL),
            Fingerprint::of_message(other)
        );
    }

    #[test]
    fn bare_lf_and_missing_fields() {
        let m = b"Subject: hi\n\nFrom: not a header\n";
        let f = Fingerprint::of_message(m);
        assert_eq!(
            f.fields,
            ["".to_string(), "".into(), "".into(), "hi".into()]
        );
        assert!(Fingerprint::of_message(b"\r\njust a body").is_blank());
        assert!(Fingerprint::of_message(b"").is_blank());
    }

    #[test]
    fn a_field_the_server_adds_does_not_hide_the_copy() {
        let original = Fingerprint::of_message(b"Subject: hi\r\nFrom: a@x.test\r\n\r\nbody");
        let copy = Fingerprint::of_headers(
            b"Message-ID: <added@server>\r\nDate: Mon, 3 Dec 2001 10:00:00 +0000\r\n\
              Subject: hi\r\nFrom: a@x.test\r\n\r\n",
        );
        assert!(original.matches(&copy));
        // Not the other way round: a field the original had may not go missing or change.
        assert!(!copy.matches(&original));
        let other = Fingerprint::of_headers(b"Subject: ho\r\nFrom: a@x.test\r\n\r\n");
        assert!(!original.matches(&other));
    }

    #[test]
    fn a_message_without_the_main_fields_is_told_by_the_fallback() {
        let report = b"Content-Type: message/delivery-status\r\nMIME-Version: 1.0\r\n\r\nx";
        let f = Fingerprint::of_message(report);
        assert!(!f.is_blank());
        let copy = Fingerprint::of_headers(
            b"Content-Type: message/delivery-status;\r\n charset=us-ascii\r\n\
              Message-ID: <added@server>\r\n\r\n",
        );
        assert!(f.matches(&copy));
        let other = Fingerprint::of_headers(b"Content-Type: text/plain\r\n\r\n");
        assert!(!f.matches(&other));
        let blank = Fingerprint::of_message(b"X-Only: this\r\n\r\nx");
        assert!(blank.is_blank() && !blank.matches(&blank));
    }
}
