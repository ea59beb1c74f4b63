//! Dovecot's `dovecot-uidlist`: the UIDVALIDITY of a Maildir folder and the UID of each
//! base name, as Dovecot serves them over IMAP.

use std::collections::HashMap;
use std::path::Path;

/// What a folder's `dovecot-uidlist` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uidlist {
    pub uidvalidity: u32,
    /// The UID Dovecot gives the next new file.
    pub next_uid: u32,
    /// Base name -> UID.
    pub uids: HashMap<String, u32>,
}

impl Uidlist {
    /// Reads the folder's `dovecot-uidlist`: `Ok(None)` when there is none (or it gives
    /// no UIDVALIDITY), an error text with the path when it cannot be read.
    pub fn load(dir: &Path) -> Result<Option<Uidlist>, String> {
        let file = dir.join("dovecot-uidlist");
        match std::fs::read(&file) {
            Ok(bytes) => Ok(Uidlist::parse(&String::from_utf8_lossy(&bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", file.display())),
        }
    }

    /// Versions 3 (`3 V<uidvalidity> N<next> G<guid>`, then `<uid> [ext...] :<base>`)
    /// and 1 (`1 <uidvalidity> <next>`, then `<uid> <base>`).
    pub fn parse(text: &str) -> Option<Uidlist> {
        let mut lines = text.lines();
        let header = lines.next()?;
        let mut fields = header.split_whitespace();
        let version = fields.next()?;
        let mut out = Uidlist::default();
        match version {
            "1" => {
                out.uidvalidity = fields.next()?.parse().ok()?;
                out.next_uid = fields.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            }
            _ => {
                for f in fields {
                    if let Some(v) = f.strip_prefix('V') {
                        out.uidvalidity = v.parse().ok()?;
                    } else if let Some(n) = f.strip_prefix('N') {
                        out.next_uid = n.parse().unwrap_or(0);
                    }
                }
            }
        }
        if out.uidvalidity == 0 {
            return None;
        }
        for line in lines {
            let Some((uid, rest)) = line.split_once(' ') else {
                continue;
            };
            let Ok(uid) = uid.parse::<u32>() else {
                continue;
            };
            let base = if version == "1" {
                rest.trim()
            } else {
                match rest.find(':') {
                    Some(i) => &rest[i + 1..],
                    None => continue,
                }
            };
            // Older Dovecots wrote the whole file name; the base name is what counts.
            let base = super::names::split(base).0;
            if uid > 0 && !base.is_empty() {
                out.uids.insert(base.to_string(), uid);
                out.next_uid = out.next_uid.max(uid.saturating_add(1));
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_3_and_1() {
        let u = Uidlist::parse(
            "3 V1700000001 N4 G0123abcd\n1 :1700.M1.h,S=10,W=12\n3 W12 :1700.M3.h\nbad\n",
        )
        .unwrap();
        assert_eq!(u.uidvalidity, 1700000001);
        assert_eq!(u.next_uid, 4);
        assert_eq!(u.uids.get("1700.M1.h,S=10,W=12"), Some(&1));
        assert_eq!(u.uids.get("1700.M3.h"), Some(&3));
        let u = Uidlist::parse("1 42 9\n7 1700.M7.h:2,S\n").unwrap();
        assert_eq!((u.uidvalidity, u.next_uid), (42, 9));
        assert_eq!(u.uids.get("1700.M7.h"), Some(&7));
        assert_eq!(Uidlist::parse(""), None);
        assert_eq!(Uidlist::parse("3 N5\n"), None);
    }
}
