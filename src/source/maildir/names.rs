//! A Maildir file's name: the base name that identifies the message for good, and the
//! info suffix (`:2,` and the flag letters) that changes with its flags.

use super::keywords::Keywords;

/// The base name and the flag letters of a file name (`None` without an info suffix, as
/// in `new/`). The base name is everything before the first `:`; Dovecot and Courier
/// write the flags as `:2,` followed by letters in ASCII order. An experimental `:1,`
/// suffix carries no flags.
pub fn split(name: &str) -> (&str, Option<&str>) {
    match name.split_once(':') {
        Some((base, info)) => (base, info.strip_prefix("2,")),
        None => (name, None),
    }
}

/// The IMAP flags of a file: the system flags of its letters, `P` (passed) as the
/// `$Forwarded` keyword (Dovecot ignores `P`; Exchange and mail clients know
/// `$Forwarded`), the letters `a`-`z` through `dovecot-keywords`, and the keywords
/// Courier keeps for its base name. In letter order, without duplicates.
pub fn flags(letters: Option<&str>, base: &str, keywords: &Keywords) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |f: &str| {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(f)) {
            out.push(f.to_string());
        }
    };
    for c in letters.unwrap_or("").chars() {
        match c {
            'D' => push("\\Draft"),
            'F' => push("\\Flagged"),
            'P' => push("$Forwarded"),
            'R' => push("\\Answered"),
            'S' => push("\\Seen"),
            'T' => push("\\Deleted"),
            'a'..='z' => {
                if let Some(k) = keywords.letter(c) {
                    push(k);
                }
            }
            _ => {}
        }
    }
    for k in keywords.courier(base) {
        push(k);
    }
    out
}

/// Why a directory entry of `cur/` or `new/` is not read as mail, or `None` when it is a
/// message file. Dot files are what Maildir readers ignore by convention (Dovecot and
/// Courier write their temporary and lock files so); the others are worth telling.
pub fn not_mail(name: &str) -> Option<&'static str> {
    if name.starts_with('.') {
        Some("a dot file")
    } else if name.ends_with(".lock") {
        Some("a lock file")
    } else if name.starts_with("dovecot") || name.starts_with("courier") {
        Some("a server's own file")
    } else {
        None
    }
}

/// The info suffix letters of `flags` for a file of an exported Maildir, and the
/// keywords that need a letter of `dovecot-keywords` (see [`Keywords::assign`]).
pub fn letters(flags: &[String], keywords: &mut Keywords) -> String {
    let mut letters: Vec<char> = Vec::new();
    for f in flags {
        let c = match f.to_ascii_lowercase().as_str() {
            "\\draft" => Some('D'),
            "\\flagged" => Some('F'),
            "\\answered" => Some('R'),
            "\\seen" => Some('S'),
            "\\deleted" => Some('T'),
            "\\recent" => None,
            k if k.starts_with('\\') => None,
            _ => {
                // $Forwarded is also the Maildir P (passed) for readers without keywords.
                if f.eq_ignore_ascii_case("$forwarded") {
                    letters.push('P');
                }
                keywords.assign(f)
            }
        };
        letters.extend(c);
    }
    letters.sort_unstable();
    letters.dedup();
    letters.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_and_letters() {
        assert_eq!(
            split("1700.M1P2.h,S=5:2,FS"),
            ("1700.M1P2.h,S=5", Some("FS"))
        );
        assert_eq!(split("1700.M1P2.h"), ("1700.M1P2.h", None));
        assert_eq!(split("1700.x:2,"), ("1700.x", Some("")));
        assert_eq!(split("1700.x:1,abc"), ("1700.x", None));
    }

    #[test]
    fn letters_map_to_flags_and_keywords() {
        let mut kw = Keywords::default();
        kw.set_dovecot(0, "$Label1");
        kw.set_dovecot(2, "Work");
        let f = flags(Some("DFPRSTacz"), "b", &kw);
        assert_eq!(
            f,
            [
                "\\Draft",
                "\\Flagged",
                "$Forwarded",
                "\\Answered",
                "\\Seen",
                "\\Deleted",
                "$Label1",
                "Work"
            ]
        );
        assert!(flags(None, "b", &kw).is_empty());
    }

    #[test]
    fn export_letters_round_trip() {
        let mut kw = Keywords::default();
        let fl: Vec<String> = ["\\Seen", "Work", "\\Answered", "$Forwarded", "\\Recent"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let l = letters(&fl, &mut kw);
        assert_eq!(l, "PRSab");
        let back = flags(Some(&l), "x", &kw);
        assert!(crate::spool::same_flag_set(&back, &fl[..4]));
    }

    #[test]
    fn server_files_are_not_mail() {
        assert!(not_mail(".1700.tmp").is_some());
        assert!(not_mail("dovecot.index").is_some());
        assert!(not_mail("x.lock").is_some());
        assert!(not_mail("1700.M1.host:2,S").is_none());
    }
}
