//! Folder names between the two servers. Pure functions, no I/O.
//!
//! - [`decode_mutf7`] / [`encode_mutf7`]: the wire encoding of mailbox names.
//! - [`Namespace`], [`components`], [`join`]: a server's hierarchy (prefix and delimiter)
//!   versus the hierarchy-neutral list of path components we reason about. A legacy
//!   Courier or Cyrus server names a folder `INBOX.Work.Projects`, Exchange names the same
//!   folder `Work/Projects`; both are `["Work", "Projects"]` here.
//! - [`FolderMapper`]: which destination folder each source folder goes to.

mod mapper;
mod mutf7;

pub use mapper::{FolderMapper, MapRule, Mapped};
pub use mutf7::{decode_mutf7, encode_mutf7};

/// Substitute for a destination hierarchy delimiter found inside a component name,
/// and the name given to an empty component.
pub const DELIMITER_SUBSTITUTE: char = '_';

/// Errors from this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("invalid modified UTF-7 folder name {name:?}: {reason}")]
    InvalidMutf7 { name: String, reason: &'static str },
    #[error("sync.exclude_folders: bad pattern {pattern:?}: {message}")]
    BadGlob { pattern: String, message: String },
    #[error("sync.folder_map: {key:?}: {message}")]
    BadFolderMap { key: String, message: String },
}

/// A server's personal namespace (RFC 2342): the prefix of the user's own folders and
/// the hierarchy delimiter. Courier and Cyrus use `("INBOX.", Some('.'))`, Dovecot
/// usually `("", Some('/'))` or `("", Some('.'))`, Exchange `("", Some('/'))`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Namespace {
    pub prefix: String,
    /// `None` for a flat server without hierarchy.
    pub delimiter: Option<char>,
}

impl Namespace {
    pub fn new(prefix: impl Into<String>, delimiter: Option<char>) -> Self {
        Namespace {
            prefix: prefix.into(),
            delimiter,
        }
    }

    /// Exchange / Office 365: no prefix, `/`.
    pub fn exchange() -> Self {
        Namespace::new("", Some('/'))
    }
}

fn is_inbox(s: &str) -> bool {
    s.eq_ignore_ascii_case("INBOX")
}

/// Strips `prefix` from `name`. The `INBOX` part of a prefix is matched
/// case-insensitively (RFC 3501 makes `INBOX` case-insensitive, and servers differ in
/// how they spell it back), the rest exactly.
fn strip_prefix<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        return Some(name);
    }
    if prefix.len() >= 5 && prefix.is_char_boundary(5) && is_inbox(&prefix[..5]) {
        let head = name.get(..5)?;
        if is_inbox(head) {
            return name[5..].strip_prefix(&prefix[5..]);
        }
        return None;
    }
    name.strip_prefix(prefix)
}

/// Splits a server's folder name into path components below its personal namespace.
///
/// `INBOX` (any case) is always `["INBOX"]`. Otherwise `ns.prefix` is stripped when
/// present (a name outside the prefix, e.g. another namespace, is split whole), and the
/// rest split on the delimiter. Components are returned as they are, empty ones
/// included, so that [`join`] can reproduce the name.
///
/// `"INBOX.Work.Projects"` with `("INBOX.", '.')` -> `["Work", "Projects"]`;
/// `"Work/Projects"` with `("", '/')` -> `["Work", "Projects"]`.
pub fn components(name: &str, ns: &Namespace) -> Vec<String> {
    if is_inbox(name) {
        return vec!["INBOX".to_string()];
    }
    let rest = match strip_prefix(name, &ns.prefix) {
        Some(rest) if !rest.is_empty() => rest,
        _ => name,
    };
    match ns.delimiter {
        Some(d) => rest.split(d).map(str::to_string).collect(),
        None => vec![rest.to_string()],
    }
}

/// Builds a server's folder name from path components: the inverse of [`components`].
///
/// `["INBOX"]` (any case) is `"INBOX"`, without prefix. Otherwise the result is
/// `ns.prefix` followed by the components joined with the delimiter.
///
/// Rules when a component cannot be represented as is, each reported by one note in the
/// returned list (empty when the name is faithful):
/// - a component containing the destination's delimiter has every occurrence replaced by
///   [`DELIMITER_SUBSTITUTE`] (`_`): a `Q1/Q2` folder on a `.` server must not become two
///   levels `Q1` and `Q2` on Exchange;
/// - an empty component (from `a..b` or a trailing delimiter) becomes `_`;
/// - on a flat destination (`delimiter: None`) the components are joined with `_`.
pub fn join(components: &[String], ns: &Namespace) -> (String, Vec<String>) {
    let mut notes = Vec::new();
    if let [only] = components {
        if is_inbox(only) {
            return ("INBOX".to_string(), notes);
        }
    }
    let parts: Vec<String> = components
        .iter()
        .map(|c| sanitize_component(c, ns.delimiter, &mut notes))
        .collect();
    let sep = match ns.delimiter {
        Some(d) => d.to_string(),
        None => {
            if parts.len() > 1 {
                notes.push(format!(
                    "the destination has no folder hierarchy; levels joined with '{DELIMITER_SUBSTITUTE}'"
                ));
            }
            DELIMITER_SUBSTITUTE.to_string()
        }
    };
    (format!("{}{}", ns.prefix, parts.join(&sep)), notes)
}

/// One component made safe for a destination with `delimiter`; see [`join`].
pub(crate) fn sanitize_component(
    component: &str,
    delimiter: Option<char>,
    notes: &mut Vec<String>,
) -> String {
    if component.is_empty() {
        notes.push(format!(
            "empty folder name level replaced by '{DELIMITER_SUBSTITUTE}'"
        ));
        return DELIMITER_SUBSTITUTE.to_string();
    }
    match delimiter {
        Some(d) if component.contains(d) => {
            let fixed = component.replace(d, &DELIMITER_SUBSTITUTE.to_string());
            notes.push(format!(
                "{component:?} contains the destination's hierarchy delimiter '{d}'; \
                 renamed {fixed:?}"
            ));
            fixed
        }
        _ => component.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn components_courier() {
        let ns = Namespace::new("INBOX.", Some('.'));
        assert_eq!(components("INBOX", &ns), v(&["INBOX"]));
        assert_eq!(components("inbox", &ns), v(&["INBOX"]));
        assert_eq!(components("INBOX.Work", &ns), v(&["Work"]));
        assert_eq!(
            components("INBOX.Work.Projects", &ns),
            v(&["Work", "Projects"])
        );
        assert_eq!(components("Inbox.Work", &ns), v(&["Work"]));
        // Outside the personal namespace: split whole.
        assert_eq!(components("shared.Team", &ns), v(&["shared", "Team"]));
    }

    #[test]
    fn components_exchange_and_flat() {
        let ns = Namespace::exchange();
        assert_eq!(components("Work/Projects", &ns), v(&["Work", "Projects"]));
        assert_eq!(components("INBOX/Sub", &ns), v(&["INBOX", "Sub"]));
        assert_eq!(components("Sent Items", &ns), v(&["Sent Items"]));
        let flat = Namespace::new("", None);
        assert_eq!(components("a/b.c", &flat), v(&["a/b.c"]));
        // A case-sensitive prefix that is not INBOX must match exactly.
        let ns = Namespace::new("Mail/", Some('/'));
        assert_eq!(components("Mail/x", &ns), v(&["x"]));
        assert_eq!(components("mail/x", &ns), v(&["mail", "x"]));
    }

    #[test]
    fn join_is_inverse() {
        let courier = Namespace::new("INBOX.", Some('.'));
        let exchange = Namespace::exchange();
        for (name, ns) in [
            ("INBOX", &courier),
            ("INBOX.Work.Projects", &courier),
            ("Work/Projects", &exchange),
            ("INBOX/Sub", &exchange),
            ("INBOX", &exchange),
        ] {
            let (back, notes) = join(&components(name, ns), ns);
            assert_eq!(back, name);
            assert!(notes.is_empty());
        }
        assert_eq!(join(&v(&["inbox"]), &courier).0, "INBOX");
        assert_eq!(
            join(&v(&["Work", "Projects"]), &courier).0,
            "INBOX.Work.Projects"
        );
    }

    #[test]
    fn join_substitutes_delimiter() {
        let exchange = Namespace::exchange();
        let (name, notes) = join(&v(&["Reports", "Q1/Q2"]), &exchange);
        assert_eq!(name, "Reports/Q1_Q2");
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("Q1/Q2"), "{notes:?}");

        let courier = Namespace::new("INBOX.", Some('.'));
        let (name, notes) = join(&v(&["v1.2", "x"]), &courier);
        assert_eq!(name, "INBOX.v1_2.x");
        assert_eq!(notes.len(), 1);

        let (name, notes) = join(&v(&["a", ""]), &exchange);
        assert_eq!(name, "a/_");
        assert_eq!(notes.len(), 1);

        let (name, notes) = join(&v(&["a", "b"]), &Namespace::new("", None));
        assert_eq!(name, "a_b");
        assert_eq!(notes.len(), 1);
    }
}
