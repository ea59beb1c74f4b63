//! Pauses asked for by the admin (`cutover pause`, the status page): kept in the spool so
//! that a restart, or a daemon started later, keeps them.
//!
//! They live in the default tree under `pause \0 mailbox`, and `pause \0 *` for the whole
//! migration (`*` cannot be a mailbox id: ids are addresses). A key is there while its
//! pause holds; the value is the Unix time it began.

use std::collections::BTreeMap;

use super::{check_name, Result, Spool, SEP};

const PREFIX: &[u8] = b"pause";

/// The id that stands for every mailbox.
const ALL: &str = "*";

fn key(mailbox: Option<&str>) -> Result<Vec<u8>> {
    let id = match mailbox {
        Some(m) => {
            check_name("mailbox", m)?;
            m
        }
        None => ALL,
    };
    let mut key = PREFIX.to_vec();
    key.push(SEP);
    key.extend_from_slice(id.as_bytes());
    Ok(key)
}

/// What is paused, and since when (Unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pauses {
    /// The whole migration.
    pub all: Option<i64>,
    pub mailboxes: BTreeMap<String, i64>,
}

impl Pauses {
    /// When `mailbox` was paused, by itself or with every mailbox.
    pub fn of(&self, mailbox: &str) -> Option<i64> {
        match (self.all, self.mailboxes.get(mailbox)) {
            (Some(a), Some(m)) => Some(a.min(*m)),
            (a, m) => a.or(m.copied()),
        }
    }
}

impl Spool {
    /// Pauses (`paused`) or resumes `mailbox`, or with None the whole migration, durably.
    /// Resuming the whole migration also resumes every mailbox paused by itself: "resume
    /// all" means that nothing stays paused.
    pub fn set_paused(&self, mailbox: Option<&str>, paused: bool) -> Result<()> {
        let k = key(mailbox)?;
        if paused {
            let now = chrono::Utc::now().timestamp();
            self.db
                .compare_and_swap(&k, None as Option<&[u8]>, Some(&now.to_be_bytes()[..]))?
                .ok();
        } else if mailbox.is_some() {
            self.db.remove(k)?;
        } else {
            let mut prefix = PREFIX.to_vec();
            prefix.push(SEP);
            for key in self.db.scan_prefix(&prefix).keys() {
                self.db.remove(key?)?;
            }
        }
        self.db.flush()?;
        Ok(())
    }

    /// Everything paused now.
    pub fn pauses(&self) -> Result<Pauses> {
        let mut prefix = PREFIX.to_vec();
        prefix.push(SEP);
        let mut out = Pauses::default();
        for item in self.db.scan_prefix(&prefix) {
            let (k, v) = item?;
            let since = v
                .as_ref()
                .try_into()
                .map(i64::from_be_bytes)
                .unwrap_or_default();
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if id == ALL {
                out.all = Some(since);
            } else {
                out.mailboxes.insert(id, since);
            }
        }
        Ok(out)
    }

    /// Whether `mailbox` is paused, by itself or with the whole migration.
    pub fn is_paused(&self, mailbox: &str) -> Result<bool> {
        Ok(self.db.contains_key(key(None)?)? || self.db.contains_key(key(Some(mailbox))?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_hold_until_resumed_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path()).unwrap();
            assert!(!spool.is_paused("a@x.test").unwrap());
            spool.set_paused(Some("a@x.test"), true).unwrap();
            assert!(spool.is_paused("a@x.test").unwrap());
            assert!(!spool.is_paused("b@x.test").unwrap());
        }
        let spool = Spool::open(dir.path()).unwrap();
        assert!(spool.is_paused("a@x.test").unwrap());
        spool.set_paused(None, true).unwrap();
        assert!(spool.is_paused("b@x.test").unwrap());
        let p = spool.pauses().unwrap();
        assert!(p.all.is_some() && p.mailboxes.contains_key("a@x.test"));
        assert!(p.of("b@x.test").is_some());
        // One mailbox resumed: still paused with everything.
        spool.set_paused(Some("a@x.test"), false).unwrap();
        assert!(spool.is_paused("a@x.test").unwrap());
        spool.set_paused(Some("a@x.test"), true).unwrap();
        // Resume all: nothing stays paused.
        spool.set_paused(None, false).unwrap();
        assert!(!spool.is_paused("a@x.test").unwrap());
        assert_eq!(spool.pauses().unwrap(), Pauses::default());
    }
}
