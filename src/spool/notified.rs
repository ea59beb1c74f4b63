//! The letters cutover sends the users (`[notify]`): which was delivered to a mailbox, and
//! when, so that a rerun does not send it twice; and the notice cutover itself appended
//! to the source INBOX, so that the migration leaves it behind.
//!
//! They live in the default tree under `notified \0 mailbox \0 kind` (`before`, the
//! notice at the source; `after`, the welcome at the destination). A record is written
//! with `delivered_unix` None before the APPEND and completed after it: a run stopped in
//! between finds the letter by its Message-ID instead of sending it again.
//!
//! The notice at the source is recorded as a `Skipped` message of its folder with
//! [`OWN_NOTICE_REASON`]: the source reader takes it for a message it already knows and
//! never copies it, and the counts and reports leave it out ([`is_own_notice`]).

use serde::{Deserialize, Serialize};

use super::records::{MessageRecord, MessageState};
use super::{check_name, decode, encode, Result, Spool, SEP};

const PREFIX: &[u8] = b"notified";

/// The reason recorded for the notice cutover appended to the source: exact, because it
/// is also how the notice is told from the messages skipped for the admin to see.
pub const OWN_NOTICE_REASON: &str =
    "cutover's own notice to the user (`cutover notify before`); never migrated";

/// True for the record of cutover's own notice at the source.
pub fn is_own_notice(state: &MessageState) -> bool {
    matches!(state, MessageState::Skipped { reason } if reason == OWN_NOTICE_REASON)
}

/// One letter to one mailbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notified {
    /// The Message-ID it carries, without angle brackets.
    pub message_id: String,
    /// When the server took it (Unix seconds); None while the APPEND may not have happened.
    pub delivered_unix: Option<i64>,
    /// Where it went: folder, UIDVALIDITY and UID (0 where not known).
    pub folder: String,
    pub uidvalidity: u32,
    pub uid: u32,
}

fn key(mailbox: &str, kind: &str) -> Result<Vec<u8>> {
    check_name("mailbox", mailbox)?;
    let mut key = PREFIX.to_vec();
    key.push(SEP);
    key.extend_from_slice(mailbox.as_bytes());
    key.push(SEP);
    key.extend_from_slice(kind.as_bytes());
    Ok(key)
}

impl Spool {
    /// The letter of `kind` recorded for `mailbox`, if any.
    pub fn notified(&self, mailbox: &str, kind: &str) -> Result<Option<Notified>> {
        let k = key(mailbox, kind)?;
        match self.db.get(&k)? {
            Some(v) => Ok(Some(decode(&v, || {
                format!("notified {}", String::from_utf8_lossy(&k).escape_debug())
            })?)),
            None => Ok(None),
        }
    }

    /// Records the letter of `kind` for `mailbox` (replacing the one before), durably.
    pub fn set_notified(&self, mailbox: &str, kind: &str, n: &Notified) -> Result<()> {
        self.db.insert(key(mailbox, kind)?, encode(n)?)?;
        self.db.flush()?;
        Ok(())
    }

    /// Records the message `uid` of `folder` (generation `uidvalidity`), cutover's own
    /// notice, as skipped with [`OWN_NOTICE_REASON`], so that the source never copies it.
    /// A UID the spool already has a record for keeps it (it was read before: then it is
    /// not the notice).
    pub fn exclude_own_notice(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        uid: u32,
        body: &[u8],
        internal_ts: i64,
    ) -> Result<bool> {
        let internal_date = chrono::DateTime::from_timestamp(internal_ts, 0)
            .unwrap_or_default()
            .format("%d-%b-%Y %H:%M:%S +0000")
            .to_string();
        let rec = MessageRecord {
            uid,
            hash: self.hash_body(body),
            size: body.len() as u64,
            internal_date,
            internal_ts,
            flags: Vec::new(),
            state: MessageState::Skipped {
                reason: OWN_NOTICE_REASON.into(),
            },
        };
        let new = self.record_new(mailbox, folder, uidvalidity, &[rec])? == 1;
        self.db.flush()?;
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_are_kept_per_mailbox_and_kind_and_the_own_notice_is_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path()).unwrap();
            assert_eq!(spool.notified("a@x", "before").unwrap(), None);
            let n = Notified {
                message_id: "m1@x".into(),
                delivered_unix: Some(1_800_000_000),
                folder: "INBOX".into(),
                uidvalidity: 7,
                uid: 3,
            };
            spool.set_notified("a@x", "before", &n).unwrap();
            assert!(spool
                .exclude_own_notice("a@x", "INBOX", 7, 3, b"Subject: x\r\n\r\nhi\r\n", 0)
                .unwrap());
        }
        let spool = Spool::open(dir.path()).unwrap();
        let n = spool.notified("a@x", "before").unwrap().unwrap();
        assert_eq!((n.uid, n.delivered_unix), (3, Some(1_800_000_000)));
        assert_eq!(spool.notified("a@x", "after").unwrap(), None);
        assert_eq!(spool.notified("b@x", "before").unwrap(), None);
        let rec = spool.get_message("a@x", "INBOX", 7, 3).unwrap().unwrap();
        assert!(is_own_notice(&rec.state));
        assert_eq!(spool.counts("a@x").unwrap().skipped, 0);
        // A message skipped for another reason still counts.
        assert!(!is_own_notice(&MessageState::Skipped {
            reason: "too big".into()
        }));
    }
}
