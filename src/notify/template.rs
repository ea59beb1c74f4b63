//! A notice template: an RFC 5322 message with placeholders, checked when it is loaded and
//! filled per mailbox.
//!
//! The admin writes the template by hand, so every mistake is named by its line: a line
//! in the header section that is not a field, a header section without the blank line
//! that ends it, a placeholder that is not one of [`PLACEHOLDERS`]. A `{` that is not
//! followed by a name and `}` is plain text, so braces in prose need no escaping.
//!
//! Filling keeps the result a valid message whatever the values hold: header values with
//! non-ASCII text become RFC 2047 encoded-words (UTF-8, base64), a display name with
//! specials in an address header is quoted, control characters in values are dropped (a
//! CSV cell with a newline must not add a header), lines end in CRLF, and a body with
//! non-ASCII text gets its MIME headers when the template has none.

use std::fmt::Write as _;
use std::path::Path;

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 7] = [
    "email",
    "username",
    "display_name",
    "cutover_date",
    "items",
    "bytes",
    "skipped",
];

/// Headers whose values are address lists, where a display name must be a phrase.
const ADDRESS_HEADERS: [&str; 7] = [
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "sender",
    "return-path",
];

/// A header line this long is folded at its spaces (RFC 5322 §2.1.1 asks for 78).
const FOLD_AT: usize = 76;

/// Why a template cannot be used: the line (1-based, 0 for the file as a whole) and what
/// is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

/// One header field of the template, unfolded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    name: String,
    value: String,
}

/// A checked template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    fields: Vec<Field>,
    body: Vec<String>,
    /// The placeholders it uses, each with the first line that does.
    uses: Vec<(String, usize)>,
}

/// The values of the placeholders for one mailbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Values {
    pub email: String,
    pub username: String,
    pub display_name: String,
    pub cutover_date: String,
    pub items: String,
    pub bytes: String,
    pub skipped: String,
}

impl Values {
    fn get(&self, name: &str) -> &str {
        match name {
            "email" => &self.email,
            "username" => &self.username,
            "display_name" => &self.display_name,
            "cutover_date" => &self.cutover_date,
            "items" => &self.items,
            "bytes" => &self.bytes,
            "skipped" => &self.skipped,
            _ => "",
        }
    }
}

impl Template {
    /// Reads and checks the template at `path`.
    pub fn load(path: &Path) -> Result<Template, TemplateError> {
        let data = std::fs::read(path).map_err(|e| TemplateError {
            line: 0,
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        let text = String::from_utf8(data).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            TemplateError {
                line: 1 + e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count(),
                message: "is not valid UTF-8 (save the file as UTF-8)".into(),
            }
        })?;
        Template::parse(&text)
    }

    /// Checks a template's text.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let err = |line: usize, message: String| Err(TemplateError { line, message });
        let lines: Vec<&str> = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .collect();
        let mut uses: Vec<(String, usize)> = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            for name in placeholders_in(line) {
                if !PLACEHOLDERS.contains(&name) {
                    return err(
                        i + 1,
                        format!(
                            "unknown placeholder {{{name}}}; the known ones are {}",
                            PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(" ")
                        ),
                    );
                }
                if !uses.iter().any(|(u, _)| u == name) {
                    uses.push((name.to_string(), i + 1));
                }
            }
        }
        let Some(blank) = lines.iter().position(|l| l.is_empty()) else {
            return err(
                lines.len(),
                "no blank line ends the headers: a message is headers, a blank line, then the body"
                    .into(),
            );
        };
        if blank == 0 {
            return err(1, "the message starts with a blank line: no headers".into());
        }
        let mut fields: Vec<Field> = Vec::new();
        let mut at: Vec<usize> = Vec::new();
        for (i, line) in lines[..blank].iter().enumerate() {
            if line.starts_with([' ', '\t']) {
                match fields.last_mut() {
                    Some(f) => {
                        f.value.push_str(line);
                        continue;
                    }
                    None => {
                        return err(
                            i + 1,
                            "a continuation line (it starts with a space) before any header".into(),
                        )
                    }
                }
            }
            let Some((name, value)) = line.split_once(':') else {
                return err(
                    i + 1,
                    "not a header field (`Name: value`); end the headers with a blank line".into(),
                );
            };
            if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b)) {
                return err(
                    i + 1,
                    format!("{name:?} is not a header field name (printable ASCII, no spaces)"),
                );
            }
            if name.eq_ignore_ascii_case("message-id") {
                return err(
                    i + 1,
                    "Message-ID is set by cutover (it finds the notice by it); remove this line"
                        .into(),
                );
            }
            fields.push(Field {
                name: name.to_string(),
                value: value.trim_start().to_string(),
            });
            at.push(i + 1);
        }
        for required in ["From", "Subject"] {
            if !fields.iter().any(|f| f.name.eq_ignore_ascii_case(required)) {
                return err(1, format!("the message has no {required} header"));
            }
        }
        for (i, f) in fields.iter().enumerate() {
            let once = ["from", "subject", "date", "to", "sender", "reply-to"];
            let name = f.name.to_ascii_lowercase();
            if once.contains(&name.as_str())
                && fields[..i]
                    .iter()
                    .any(|g| g.name.eq_ignore_ascii_case(&name))
            {
                return err(at[i], format!("a second {} header", f.name));
            }
            if name == "date" && !f.value.contains('{') && parse_date(&f.value).is_none() {
                return err(
                    at[i],
                    format!(
                        "Date {:?} is not an RFC 5322 date (or leave Date out: cutover sets it)",
                        f.value
                    ),
                );
            }
        }
        let mut body: Vec<String> = lines[blank + 1..].iter().map(|l| l.to_string()).collect();
        // The newline that ends the file ends the last line; it is not an empty line more.
        if body.last().is_some_and(String::is_empty) {
            body.pop();
        }
        Ok(Template { fields, body, uses })
    }

    /// The placeholders used, each with the first line that uses it.
    pub fn uses(&self) -> &[(String, usize)] {
        &self.uses
    }

    /// True if the template uses `{name}`.
    pub fn uses_placeholder(&self, name: &str) -> bool {
        self.uses.iter().any(|(u, _)| u == name)
    }

    /// The message for one mailbox: placeholders filled, headers encoded, CRLF line ends,
    /// `message_id` (without the angle brackets) and `date` (RFC 5322) set.
    pub fn fill(&self, values: &Values, message_id: &str, date: &str) -> Vec<u8> {
        let mut out = String::new();
        let has = |n: &str| self.fields.iter().any(|f| f.name.eq_ignore_ascii_case(n));
        let body: Vec<String> = self
            .body
            .iter()
            .map(|l| substitute(l, values, None))
            .collect();
        let eight_bit = body.iter().any(|l| !l.is_ascii());
        for f in &self.fields {
            let address = ADDRESS_HEADERS.contains(&f.name.to_ascii_lowercase().as_str());
            let value = substitute(&f.value, values, Some(address));
            header(&mut out, &f.name, &encode_value(&value, address));
        }
        if !has("date") {
            header(&mut out, "Date", date);
        }
        header(&mut out, "Message-ID", &format!("<{message_id}>"));
        if eight_bit {
            if !has("mime-version") {
                header(&mut out, "MIME-Version", "1.0");
            }
            if !has("content-type") {
                header(&mut out, "Content-Type", "text/plain; charset=utf-8");
            }
            if !has("content-transfer-encoding") {
                header(&mut out, "Content-Transfer-Encoding", "8bit");
            }
        }
        out.push_str("\r\n");
        for line in body {
            out.push_str(&line);
            out.push_str("\r\n");
        }
        out.into_bytes()
    }
}

/// The names of the `{name}` placeholders of `line` (a name is ASCII letters, digits and
/// `_`; anything else in braces is text).
fn placeholders_in(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end > 0 && rest[end..].starts_with('}') {
            out.push(&rest[..end]);
            rest = &rest[end + 1..];
        }
    }
    out
}

/// `text` with its placeholders replaced. `address`: Some(true) in an address header,
/// where a display name with specials is quoted; None in the body. Control characters of
/// the values are dropped in headers and turned into spaces in the body (but for tabs).
fn substitute(text: &str, values: &Values, address: Option<bool>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..end];
        if end > 0 && after[end..].starts_with('}') && PLACEHOLDERS.contains(&name) {
            let raw = values.get(name);
            let clean: String = match address {
                Some(_) => raw.chars().filter(|c| !c.is_control()).collect(),
                None => raw
                    .chars()
                    .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
                    .collect(),
            };
            let in_quotes = out.matches('"').count() % 2 == 1;
            if address == Some(true) && name == "display_name" && !in_quotes && has_specials(&clean)
            {
                out.push('"');
                for c in clean.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            } else {
                out.push_str(&clean);
            }
            rest = &after[end + 1..];
        } else {
            out.push('{');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// RFC 5322 specials, which a display name can only hold inside quotes.
fn has_specials(s: &str) -> bool {
    s.chars().any(|c| "()<>[]:;@\\,.\"".contains(c))
}

/// A header value with its non-ASCII parts as RFC 2047 encoded-words. Runs of words with
/// non-ASCII text become encoded-words (the spaces between those words inside them); in
/// an address header, a quoted display name with non-ASCII text becomes encoded-words as
/// a whole (an encoded-word may not stand inside quotes).
pub fn encode_value(value: &str, address: bool) -> String {
    if value.is_ascii() {
        return value.to_string();
    }
    // Tokens: whitespace, or words (with quoted strings kept whole in address headers).
    let mut tokens: Vec<(String, bool)> = Vec::new(); // (text, is_space)
    let mut chars = value.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == ' ' || c == '\t' {
            let mut s = String::new();
            while let Some(&c) = chars.peek().filter(|c| **c == ' ' || **c == '\t') {
                s.push(c);
                chars.next();
            }
            tokens.push((s, true));
        } else {
            let mut s = String::new();
            let mut quoted = false;
            while let Some(&c) = chars.peek() {
                if !quoted && (c == ' ' || c == '\t') {
                    break;
                }
                if address && c == '"' {
                    quoted = !quoted;
                }
                if quoted && c == '\\' {
                    s.push(c);
                    chars.next();
                    if let Some(n) = chars.next() {
                        s.push(n);
                    }
                    continue;
                }
                s.push(c);
                chars.next();
            }
            tokens.push((s, false));
        }
    }
    let mut out = String::new();
    let mut i = 0;
    while i < tokens.len() {
        let (text, space) = &tokens[i];
        if *space || text.is_ascii() {
            out.push_str(text);
            i += 1;
            continue;
        }
        if address && text.starts_with('"') {
            // `"Jørgen Hansen"<j@x>` or `"Jørgen, Hansen"`: the quoted part as a phrase.
            let close = text[1..].find('"').map(|p| p + 1);
            let (quoted, tail) = match close {
                Some(p) => (&text[1..p], &text[p + 1..]),
                None => (&text[1..], ""),
            };
            out.push_str(&encoded_words(&unescape(quoted)));
            if !tail.is_empty() {
                if !tail.starts_with(' ') {
                    out.push(' ');
                }
                out.push_str(tail);
            }
            i += 1;
            continue;
        }
        // A run of non-ASCII words and the spaces between them.
        let mut run = String::new();
        let mut j = i;
        let mut end = i;
        while j < tokens.len() {
            let (t, sp) = &tokens[j];
            if *sp {
                if j + 1 < tokens.len() && !tokens[j + 1].0.is_ascii() && !tokens[j + 1].1 {
                    j += 1;
                    continue;
                }
                break;
            }
            if t.is_ascii() || (address && t.starts_with('"')) {
                break;
            }
            end = j;
            j += 1;
        }
        for (t, _) in &tokens[i..=end] {
            run.push_str(t);
        }
        // In an address header the word may end in `<addr>`: only the phrase is encoded.
        let (phrase, tail) = match (address, run.find('<')) {
            (true, Some(p)) => run.split_at(p),
            _ => (run.as_str(), ""),
        };
        out.push_str(&encoded_words(phrase));
        if !tail.is_empty() {
            out.push(' ');
            out.push_str(tail);
        }
        i = end + 1;
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for c in s.chars() {
        if !esc && c == '\\' {
            esc = true;
            continue;
        }
        esc = false;
        out.push(c);
    }
    out
}

/// `=?UTF-8?B?...?=` words of at most 75 characters, split at character boundaries and
/// separated by a space (which decoders drop between encoded-words).
fn encoded_words(text: &str) -> String {
    use base64::Engine as _;
    // 45 bytes make 60 base64 characters: 72 with the `=?UTF-8?B?` and `?=`.
    const MAX_BYTES: usize = 45;
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > MAX_BYTES {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| {
            format!(
                "=?UTF-8?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w.as_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Appends `Name: value` CRLF, folded at spaces where the line grows past [`FOLD_AT`].
fn header(out: &mut String, name: &str, value: &str) {
    let mut line_len = name.len() + 2;
    let _ = write!(out, "{name}: ");
    let mut first = true;
    for word in value.split(' ') {
        if !first {
            if line_len + 1 + word.len() > FOLD_AT && !word.is_empty() {
                out.push_str("\r\n ");
                line_len = 1;
            } else {
                out.push(' ');
                line_len += 1;
            }
        }
        first = false;
        out.push_str(word);
        line_len += word.len();
    }
    out.push_str("\r\n");
}

/// Checks an RFC 5322 date (`Thu, 03 Dec 2026 12:00:00 +0000`, the day name optional).
fn parse_date(s: &str) -> Option<()> {
    let s = s.trim();
    chrono::DateTime::parse_from_rfc2822(s).ok().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const GOOD: &str = "From: IT <it@example.com>\nTo: {display_name} <{email}>\n\
        Subject: Din postkasse flytter {cutover_date}\n\nHej {display_name},\n\
        {items} beskeder ({bytes}) flyttes. { ikke } {} {x-y}\n";

    fn values() -> Values {
        Values {
            email: "jorgen@example.com".into(),
            username: "jorgen".into(),
            display_name: "Jørgen Ærø".into(),
            cutover_date: "12. december".into(),
            items: "42".into(),
            bytes: "1,5 MB".into(),
            skipped: "0".into(),
        }
    }

    /// A header value with its encoded-words decoded (RFC 2047: the space between two
    /// encoded-words is not text).
    fn decode_words(v: &str) -> String {
        let mut out = String::new();
        let mut last_encoded = false;
        for w in v.split(' ') {
            match w
                .strip_prefix("=?UTF-8?B?")
                .and_then(|w| w.strip_suffix("?="))
            {
                Some(b) => {
                    if !out.is_empty() && !last_encoded {
                        out.push(' ');
                    }
                    let bytes = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
                    out.push_str(&String::from_utf8(bytes).unwrap());
                    last_encoded = true;
                }
                None => {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    out.push_str(w);
                    last_encoded = false;
                }
            }
        }
        out
    }

    #[test]
    fn a_good_template_fills_and_encodes_its_headers() {
        let t = Template::parse(GOOD).unwrap();
        assert!(t.uses_placeholder("cutover_date") && !t.uses_placeholder("skipped"));
        let msg =
            String::from_utf8(t.fill(&values(), "n1@cutover", "Thu, 03 Dec 2026 12:00:00 +0000"))
                .unwrap();
        assert!(msg.is_char_boundary(0));
        let (head, body) = msg.split_once("\r\n\r\n").unwrap();
        assert!(head.is_ascii(), "headers must be ASCII: {head}");
        assert!(
            !msg.replace("\r\n", "").contains('\n'),
            "bare LF in {msg:?}"
        );
        let to = head.lines().find(|l| l.starts_with("To: ")).unwrap();
        let words = to
            .trim_start_matches("To: ")
            .trim_end_matches(" <jorgen@example.com>");
        assert_eq!(decode_words(words), "Jørgen Ærø");
        assert!(head.contains("Subject: Din postkasse flytter 12. december"));
        assert!(head.contains("Message-ID: <n1@cutover>"));
        assert!(head.contains("Date: Thu, 03 Dec 2026 12:00:00 +0000"));
        assert!(head.contains("Content-Type: text/plain; charset=utf-8"));
        assert!(body.starts_with("Hej Jørgen Ærø,\r\n42 beskeder (1,5 MB) flyttes."));
        // Braces that are not a placeholder are text.
        assert!(body.contains("{ ikke } {} {x-y}"), "{body}");
    }

    #[test]
    fn unknown_placeholders_and_broken_messages_name_their_line() {
        let e = Template::parse("From: a@x\nSubject: {subjekt}\n\nbody\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("{subjekt}"), "{e}");
        let e = Template::parse("From: a@x\nSubject: s\n\nHello {Name}\n").unwrap_err();
        assert_eq!(e.line, 4);
        let e =
            Template::parse("From: a@x\nSubject: s\nthis is not a header\n\nbody\n").unwrap_err();
        assert_eq!(e.line, 3);
        let e = Template::parse("From: a@x\nSubject: s\nbody without a blank line\n").unwrap_err();
        assert_eq!(e.line, 3);
        let e = Template::parse("From: a@x\nSubject: s").unwrap_err();
        assert!(e.message.contains("no blank line"), "{e}");
        let e = Template::parse("Subject: s\n\nbody\n").unwrap_err();
        assert!(e.message.contains("no From"), "{e}");
        let e = Template::parse(" folded\nFrom: a@x\nSubject: s\n\nb\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e = Template::parse("From: a@x\nSubject: s\nMessage-ID: <x@y>\n\nb\n").unwrap_err();
        assert_eq!(e.line, 3);
        let e = Template::parse("From: a@x\nSubject: s\nDate: tomorrow\n\nb\n").unwrap_err();
        assert_eq!(e.line, 3);
        let e = Template::parse("From: a@x\nSubject: s\nSubject: t\n\nb\n").unwrap_err();
        assert_eq!(e.line, 3);
    }

    #[test]
    fn display_names_with_specials_are_quoted_and_values_cannot_add_headers() {
        let t =
            Template::parse("From: it@x\nTo: {display_name} <{email}>\nSubject: {username}\n\nb\n")
                .unwrap();
        let v = Values {
            email: "a@x".into(),
            username: "evil\r\nBcc: everyone@x".into(),
            display_name: "Hansen, Jens".into(),
            ..Default::default()
        };
        let msg = String::from_utf8(t.fill(&v, "id@x", "Thu, 03 Dec 2026 12:00:00 +0000")).unwrap();
        assert!(msg.contains("To: \"Hansen, Jens\" <a@x>\r\n"), "{msg}");
        assert!(msg.contains("Subject: evilBcc: everyone@x\r\n"), "{msg}");
        assert!(!msg.contains("\r\nBcc:"), "{msg}");
        // Non-ASCII with specials: quoted first, then encoded as a whole.
        let v = Values {
            display_name: "Ærø, Jens".into(),
            email: "a@x".into(),
            ..Default::default()
        };
        let msg = String::from_utf8(t.fill(&v, "id@x", "Thu, 03 Dec 2026 12:00:00 +0000")).unwrap();
        let to = msg.lines().find(|l| l.starts_with("To: ")).unwrap();
        let words = to.trim_start_matches("To: ").trim_end_matches(" <a@x>");
        assert_eq!(decode_words(words), "Ærø, Jens");
    }

    #[test]
    fn long_non_ascii_subjects_become_several_short_encoded_words() {
        let s = "Vigtigt: din e-mail flytter til Office 365 på fredag, læs venligst dette før du går hjem";
        let enc = encode_value(s, false);
        assert!(enc.is_ascii());
        let mut out = String::new();
        header(&mut out, "Subject", &enc);
        for line in out.split("\r\n") {
            assert!(line.len() <= 78, "{line:?}");
        }
        // Unfolded, the words decode back to the text.
        let unfolded = out.replace("\r\n ", " ");
        let value = unfolded.trim_start_matches("Subject: ").trim_end();
        assert_eq!(decode_words(value), s);
    }
}
