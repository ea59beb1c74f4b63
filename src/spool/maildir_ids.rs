//! UIDs for the files of a Maildir source: the assignment table.
//!
//! The spool keys messages by (folder, UIDVALIDITY, UID), as IMAP does. A Maildir has no
//! UIDs of its own: a file is named by its base name (the part before `:2,`), which
//! stays when the flags change (the info suffix is renamed) and when the file moves from
//! `new/` to `cur/`. This table gives each base name a UID once, for good:
//!
//! - Where Dovecot left a `dovecot-uidlist`, its UIDVALIDITY and UIDs are used as they
//!   are (nothing is stored here for them), so that a later switch to reading the same
//!   server over IMAP finds the same UIDs in the spool and copies nothing twice.
//! - A file without a UID there (no `dovecot-uidlist`, or mail delivered after Dovecot
//!   last wrote it) gets the next UID of the table's counter, which starts above the
//!   uidlist's next UID and every UID the table gave, and is recorded here: base name ->
//!   UID, and UID -> base name. The table is looked at first, so a UID once given is
//!   never given again, nor changed when Dovecot later lists the file under a UID of its
//!   own. A UID Dovecot hands out later that the table already gave to another file is
//!   never taken for a second message: that file gets one of the table's instead.
//! - Without a `dovecot-uidlist`, the folder's UIDVALIDITY is made once (the time of the
//!   first read) and kept here too.
//!
//! Each assignment is made durable (flushed) before it is returned, so before any
//! record of the message can be written: after a crash no record names a UID that the
//! table could give to another file.
//!
//! Keys (tree `maildir_ids`):
//! - `mailbox \0 folder \0 uidvalidity(BE) 'N'` -> the next UID the counter gives (BE);
//! - `mailbox \0 folder \0 uidvalidity(BE) 'F' base name` -> UID (BE);
//! - `mailbox \0 folder \0 uidvalidity(BE) 'R' UID(BE)` -> base name;
//! - `mailbox \0 folder \0 'V'` -> the UIDVALIDITY made for a folder without uidlist (BE).
//!
//! The tag after the 4-byte UIDVALIDITY cannot be confused with the `'V'` key: that one
//! is 1 byte long after the prefix, the others at least 5.

use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{be_u32, folder_prefix, generation_prefix, Result, Spool, SpoolError};

/// What a file of a Maildir folder asks of [`Spool::maildir_assign`]: its base name and
/// the UID the folder's `dovecot-uidlist` gives it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaildirName {
    pub base: String,
    pub proposed: Option<u32>,
}

impl Spool {
    /// The UIDVALIDITY of a Maildir folder that has no `dovecot-uidlist`: made on the first
    /// call (from the clock, never 0) and durable before it is returned.
    pub fn maildir_uidvalidity(&self, mailbox: &str, folder: &str) -> Result<u32> {
        let mut key = folder_prefix(mailbox, folder)?;
        key.push(b'V');
        if let Some(v) = self.maildir_ids.get(&key)? {
            return Ok(be_u32(&v));
        }
        let now = chrono::Utc::now().timestamp().clamp(1, i64::from(u32::MAX)) as u32;
        let made = match self.maildir_ids.compare_and_swap(
            &key,
            None as Option<&[u8]>,
            Some(&now.to_be_bytes()[..]),
        )? {
            Ok(()) => now,
            Err(e) => e.current.map(|v| be_u32(&v)).unwrap_or(now),
        };
        self.maildir_ids.flush()?;
        Ok(made)
    }

    /// The UID of each name: the table's where it has one, else the proposed one (from
    /// `dovecot-uidlist`) unless the table gave that UID to another file, else a new one
    /// from the counter, which never goes below `floor` (the uidlist's next UID). New
    /// assignments are written in one transaction and flushed before this returns.
    pub fn maildir_assign(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        names: &[MaildirName],
        floor: u32,
    ) -> Result<Vec<u32>> {
        let prefix = generation_prefix(mailbox, folder, uidvalidity)?;
        let key = |tag: u8, rest: &[u8]| {
            let mut k = prefix.clone();
            k.push(tag);
            k.extend_from_slice(rest);
            k
        };
        let mut wrote = false;
        let out = self
            .maildir_ids
            .transaction(|tx| {
                let next_key = key(b'N', &[]);
                let mut next = tx
                    .get(&next_key)?
                    .map(|v| be_u32(&v))
                    .unwrap_or(1)
                    .max(floor)
                    .max(1);
                let start = next;
                let mut out = Vec::with_capacity(names.len());
                // Names given twice in one call get one UID.
                let mut given: std::collections::HashMap<&str, u32> = Default::default();
                let mut changed = false;
                for n in names {
                    if let Some(uid) = given.get(n.base.as_str()) {
                        out.push(*uid);
                        continue;
                    }
                    let fwd = key(b'F', n.base.as_bytes());
                    if let Some(v) = tx.get(&fwd)? {
                        let uid = be_u32(&v);
                        given.insert(&n.base, uid);
                        out.push(uid);
                        continue;
                    }
                    if let Some(uid) = n.proposed.filter(|u| *u > 0) {
                        let taken = tx.get(key(b'R', &uid.to_be_bytes()))?;
                        if taken.is_none() {
                            given.insert(&n.base, uid);
                            out.push(uid);
                            continue;
                        }
                    }
                    if next == u32::MAX {
                        return Err(ConflictableTransactionError::Abort(SpoolError::Corrupt {
                            what: format!("Maildir UIDs of {mailbox}/{folder}"),
                            detail: "no UID left in this UIDVALIDITY".into(),
                        }));
                    }
                    let uid = next;
                    next += 1;
                    tx.insert(fwd, &uid.to_be_bytes())?;
                    tx.insert(key(b'R', &uid.to_be_bytes()), n.base.as_bytes())?;
                    changed = true;
                    given.insert(&n.base, uid);
                    out.push(uid);
                }
                if changed || next != start {
                    tx.insert(next_key, &next.to_be_bytes())?;
                }
                Ok((out, changed))
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => SpoolError::Sled(e),
            })
            .map(|(out, changed)| {
                wrote = changed;
                out
            })?;
        if wrote {
            self.maildir_ids.flush()?;
        }
        Ok(out)
    }

    /// The UIDs the table itself gave in a folder generation (never those taken from a
    /// `dovecot-uidlist`), for looking a name up without assigning: `None` where none.
    pub fn maildir_known(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        base: &str,
    ) -> Result<Option<u32>> {
        let mut k = generation_prefix(mailbox, folder, uidvalidity)?;
        k.push(b'F');
        k.extend_from_slice(base.as_bytes());
        Ok(self.maildir_ids.get(&k)?.map(|v| be_u32(&v)))
    }

    /// True if the table gave `uid` to a file of this folder generation.
    pub fn maildir_uid_taken(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        uid: u32,
    ) -> Result<bool> {
        let mut k = generation_prefix(mailbox, folder, uidvalidity)?;
        k.push(b'R');
        k.extend_from_slice(&uid.to_be_bytes());
        Ok(self.maildir_ids.contains_key(&k)?)
    }

    /// Forgets the table of a folder generation the source no longer has (its records
    /// were carried to the new generation or removed).
    pub fn maildir_forget_generation(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
    ) -> Result<()> {
        let prefix = generation_prefix(mailbox, folder, uidvalidity)?;
        let keys: Vec<sled::IVec> = self
            .maildir_ids
            .scan_prefix(&prefix)
            .keys()
            .collect::<std::result::Result<_, _>>()?;
        for group in keys.chunks(super::REMOVE_CHUNK) {
            let mut batch = sled::Batch::default();
            for k in group {
                // Only this generation: `V` keys are one byte after the folder prefix.
                if k.len() > prefix.len() {
                    batch.remove(k.clone());
                }
            }
            self.maildir_ids.apply_batch(batch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(base: &str, proposed: Option<u32>) -> MaildirName {
        MaildirName {
            base: base.into(),
            proposed,
        }
    }

    #[test]
    fn a_uid_once_given_stays_and_is_never_given_twice() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        // Dovecot listed a (UID 1) and b (UID 2), next UID 3; c is not listed yet.
        let got = spool
            .maildir_assign(
                "m",
                "INBOX",
                7,
                &[name("a", Some(1)), name("b", Some(2)), name("c", None)],
                3,
            )
            .unwrap();
        assert_eq!(got, vec![1, 2, 3]);
        // Dovecot later lists c as 4 and a new file d as 3: c keeps 3, d may not take it.
        let got = spool
            .maildir_assign(
                "m",
                "INBOX",
                7,
                &[name("c", Some(4)), name("d", Some(3)), name("d", Some(3))],
                5,
            )
            .unwrap();
        assert_eq!(got, vec![3, 5, 5]);
        assert_eq!(spool.maildir_known("m", "INBOX", 7, "c").unwrap(), Some(3));
        assert_eq!(spool.maildir_known("m", "INBOX", 7, "a").unwrap(), None);
        assert!(spool.maildir_uid_taken("m", "INBOX", 7, 5).unwrap());
        // Another generation starts afresh; forgetting one leaves the other.
        let got = spool
            .maildir_assign("m", "INBOX", 8, &[name("z", None)], 0)
            .unwrap();
        assert_eq!(got, vec![1]);
        spool.maildir_forget_generation("m", "INBOX", 7).unwrap();
        assert_eq!(spool.maildir_known("m", "INBOX", 7, "c").unwrap(), None);
        assert_eq!(spool.maildir_known("m", "INBOX", 8, "z").unwrap(), Some(1));
    }

    #[test]
    fn a_made_uidvalidity_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let a = spool.maildir_uidvalidity("m", "INBOX").unwrap();
        assert!(a > 0);
        assert_eq!(spool.maildir_uidvalidity("m", "INBOX").unwrap(), a);
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.maildir_uidvalidity("m", "INBOX").unwrap(), a);
    }
}
