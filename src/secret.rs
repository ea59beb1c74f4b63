//! A string that must never reach a log line or an error message.

use serde::{Deserialize, Deserializer};
use std::fmt;

/// A password, client secret or token. `Debug` and `Display` print `***`; the value is
/// reached only through [`Secret::expose`], so a stray `{:?}` cannot leak it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// The text put in place of a secret found in a server's text.
pub const SCRUBBED: &str = "***";

/// Shortest base64 stretch taken out of texts: shorter ones would match ordinary words.
const MIN_ENCODED: usize = 4;

/// Takes a session's own secrets out of texts the server sent, before they are stored or
/// shown: a server may quote back what it was given (`NO invalid password 'hunter2'`, a
/// base64 SASL response it could not decode), and its refusal and BYE texts end up in
/// errors, logs, the status page and reports.
///
/// Each secret is looked for as sent in every form: as is, as an IMAP quoted string
/// (backslash-escaped), in base64 on its own, and as the base64 characters that encode
/// only its bytes wherever it sits in a longer SASL response (at each of the three byte
/// alignments), so a quoted piece of an `AUTHENTICATE` response is found too. `Debug`
/// shows only how many forms are held.
#[derive(Clone, Default)]
pub struct Scrubber {
    /// Longest first, so a longer form is replaced before a shorter one inside it.
    needles: Vec<String>,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrubber({} forms)", self.needles.len())
    }
}

impl Scrubber {
    pub fn new() -> Scrubber {
        Scrubber::default()
    }

    /// Looks for `secret` (a password, a token) in all its forms from now on.
    pub fn add(&mut self, secret: &str) {
        use base64::Engine as _;
        if secret.is_empty() {
            return;
        }
        self.push(secret.to_string());
        let quoted = secret.replace('\\', "\\\\").replace('"', "\\\"");
        self.push(quoted);
        let bytes = secret.as_bytes();
        for engine in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
        ] {
            let encoded = engine.encode(bytes);
            if encoded.len() >= MIN_ENCODED {
                self.push(encoded);
            }
        }
        // Inside a longer base64 text, at byte offset `p` modulo 3: the characters whose
        // six bits all come from the secret are the same whatever surrounds it.
        for p in 0..3usize {
            let mut padded = vec![0u8; p];
            padded.extend_from_slice(bytes);
            let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&padded);
            let first = (8 * p).div_ceil(6);
            let end = (8 * (p + bytes.len())) / 6;
            if end >= first + MIN_ENCODED {
                self.push(encoded[first..end].to_string());
            }
        }
    }

    /// Looks for `sent` exactly as it was written to the server (e.g. a whole base64 SASL
    /// response), besides the secrets themselves.
    pub fn add_sent(&mut self, sent: &str) {
        if sent.len() >= MIN_ENCODED {
            self.push(sent.to_string());
        }
    }

    fn push(&mut self, needle: String) {
        if !self.needles.contains(&needle) {
            self.needles.push(needle);
            self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every secret replaced by [`SCRUBBED`].
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        self.scrub_in_place(&mut out);
        out
    }

    /// Replaces every secret in `text` by [`SCRUBBED`]; cheap when there is none.
    pub fn scrub_in_place(&self, text: &mut String) {
        for needle in &self.needles {
            if text.contains(needle.as_str()) {
                *text = text.replace(needle.as_str(), SCRUBBED);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn scrubs_a_secret_in_every_form_it_was_sent_in() {
        let mut s = Scrubber::new();
        s.add("hun\"ter2");
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let ir = b64(b"admin\0alice\0hun\"ter2");
        s.add_sent(&ir);
        let texts = [
            "Invalid password hun\"ter2 for alice".to_string(),
            "LOGIN \"alice\" \"hun\\\"ter2\" refused".to_string(),
            format!("Invalid base64 data: {ir}"),
            format!("bad response {}", b64(b"hun\"ter2")),
        ];
        for t in &texts {
            let got = s.scrub(t);
            assert!(got.contains(SCRUBBED), "{t} -> {got}");
            assert!(!got.contains("ter2"), "{t} -> {got}");
        }
        // A piece of a longer SASL response, cut anywhere before the secret.
        for prefix in ["", "a", "ab", "abc", "user=x\x01auth=Bearer "] {
            let mut sent = prefix.as_bytes().to_vec();
            sent.extend_from_slice(b"hun\"ter2");
            sent.extend_from_slice(b"\x01\x01");
            let whole = b64(&sent);
            for cut in 0..=prefix.len() * 8 / 6 {
                let piece = &whole[cut..];
                let got = s.scrub(&format!("cannot decode {piece}"));
                assert!(got.contains(SCRUBBED), "{prefix:?} {cut}: {piece} -> {got}");
            }
        }
        assert_eq!(s.scrub("Authentication failed."), "Authentication failed.");
        assert!(!format!("{s:?}").contains("ter2"));
        assert!(Scrubber::new().is_empty());
    }

    #[test]
    fn short_encodings_are_not_scrubbed_from_ordinary_text() {
        let mut s = Scrubber::new();
        s.add("ab");
        // The secret itself is, however short; its two-character encodings are not.
        assert_eq!(s.scrub("grab a cab"), "gr*** a c***");
        assert_eq!(s.scrub("YW is fine"), "YW is fine");
    }

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }
}
