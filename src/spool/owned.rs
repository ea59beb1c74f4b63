//! Which mailboxes this spool's appliance owned on its last run, in a fleet
//! (`[fleet] shard`), and which of them it took over from another appliance.
//!
//! A mailbox new to this appliance may already be at the destination, copied by its
//! earlier owner, while this spool knows nothing of it (or something stale, from a time
//! it owned it before). Until its first whole pass here succeeds it is *adopting*: the
//! upstream treats each of its messages as an APPEND whose outcome is unknown, so that
//! recovery (fingerprint match, `upstream/recover.rs`) finds the copies already there
//! instead of sending them again.
//!
//! Keys in the default tree: `owned \0 mailbox`; the value is one byte, 1 while adopting.

use super::{check_name, Result, Spool, SEP};

const PREFIX: &[u8] = b"owned";
const ADOPTING: u8 = 1;
const SETTLED: u8 = 0;

fn key(mailbox: &str) -> Result<Vec<u8>> {
    check_name("mailbox", mailbox)?;
    let mut key = PREFIX.to_vec();
    key.push(SEP);
    key.extend_from_slice(mailbox.as_bytes());
    Ok(key)
}

impl Spool {
    /// Records the mailboxes owned now (`owned`): those not owned on the last run start
    /// adopting, those no longer owned are forgotten (should one come back, it is adopted
    /// again: another appliance copied it meanwhile). Returns the mailboxes that started
    /// adopting.
    pub fn set_owned<'a>(&self, owned: impl IntoIterator<Item = &'a str>) -> Result<Vec<String>> {
        let mut prefix = PREFIX.to_vec();
        prefix.push(SEP);
        let mut before = std::collections::BTreeSet::new();
        for k in self.db.scan_prefix(&prefix).keys() {
            before.insert(String::from_utf8_lossy(&k?[prefix.len()..]).into_owned());
        }
        let mut adopting = Vec::new();
        let mut now = std::collections::BTreeSet::new();
        for m in owned {
            if !before.contains(m) {
                self.db.insert(key(m)?, &[ADOPTING][..])?;
                adopting.push(m.to_string());
            }
            now.insert(m);
        }
        for m in before.iter().filter(|m| !now.contains(m.as_str())) {
            self.db.remove(key(m)?)?;
        }
        self.db.flush()?;
        Ok(adopting)
    }

    /// Whether `mailbox` was taken over and has not had a whole pass here yet.
    pub fn is_adopting(&self, mailbox: &str) -> Result<bool> {
        Ok(self
            .db
            .get(key(mailbox)?)?
            .is_some_and(|v| v.first() == Some(&ADOPTING)))
    }

    /// `mailbox` had a whole pass here: its spool now knows what is at the destination.
    pub fn adopted(&self, mailbox: &str) -> Result<()> {
        let k = key(mailbox)?;
        if self.db.get(&k)?.is_some() {
            self.db.insert(k, &[SETTLED][..])?;
            self.db.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_mailboxes_adopt_until_a_pass_and_returning_ones_adopt_again() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let first = spool.set_owned(["a@x.test", "b@x.test"]).unwrap();
        assert_eq!(first, ["a@x.test", "b@x.test"]);
        assert!(spool.is_adopting("a@x.test").unwrap());
        spool.adopted("a@x.test").unwrap();
        spool.adopted("b@x.test").unwrap();
        assert!(!spool.is_adopting("a@x.test").unwrap());
        // A restart with the same shard: nothing new.
        assert!(spool
            .set_owned(["a@x.test", "b@x.test"])
            .unwrap()
            .is_empty());
        // b moves away, c arrives.
        assert_eq!(
            spool.set_owned(["a@x.test", "c@x.test"]).unwrap(),
            ["c@x.test"]
        );
        assert!(!spool.is_adopting("b@x.test").unwrap());
        // b comes back: someone else copied it meanwhile.
        assert_eq!(
            spool
                .set_owned(["a@x.test", "b@x.test", "c@x.test"])
                .unwrap(),
            ["b@x.test"]
        );
        assert!(spool.is_adopting("b@x.test").unwrap());
        assert!(!spool.is_adopting("a@x.test").unwrap());
        // Not owned at all: adopted() records nothing.
        spool.adopted("z@x.test").unwrap();
        assert!(!spool.is_adopting("z@x.test").unwrap());
    }
}
