//! Notices: what the admin should know of a mailbox although nothing failed, kept with
//! the mailbox so that the reports show it after the run that found it.
//!
//! Today that is a message sent again after an interrupted APPEND that recovery could not
//! find for sure (see `upstream/recover.rs`): the destination may hold it twice, and the
//! admin should be able to look. Notices live in the default tree under
//! `notice \0 mailbox \0 time(u64 BE)`, so a prefix scan gives a mailbox's in order, and at
//! most [`MAX_NOTICES`] are kept per mailbox (the oldest go first).

use super::{check_name, Result, Spool, SEP};

/// Notices kept per mailbox.
pub const MAX_NOTICES: usize = 1000;

const PREFIX: &[u8] = b"notice";

fn mailbox_key(mailbox: &str) -> Result<Vec<u8>> {
    check_name("mailbox", mailbox)?;
    let mut key = PREFIX.to_vec();
    key.push(SEP);
    key.extend_from_slice(mailbox.as_bytes());
    key.push(SEP);
    Ok(key)
}

impl Spool {
    /// Records a notice for `mailbox`.
    pub fn add_notice(&self, mailbox: &str, text: &str) -> Result<()> {
        let prefix = mailbox_key(mailbox)?;
        // Microseconds, then the next free key: notices of one moment keep their order.
        let mut at = u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or(0);
        loop {
            let mut key = prefix.clone();
            key.extend_from_slice(&at.to_be_bytes());
            if self
                .db
                .compare_and_swap(&key, None as Option<&[u8]>, Some(text.as_bytes()))?
                .is_ok()
            {
                break;
            }
            at += 1;
        }
        let n = self.db.scan_prefix(&prefix).keys().count();
        for key in self
            .db
            .scan_prefix(&prefix)
            .keys()
            .take(n.saturating_sub(MAX_NOTICES))
        {
            self.db.remove(key?)?;
        }
        Ok(())
    }

    /// The notices of `mailbox`, oldest first, with their time (Unix seconds).
    pub fn notices(&self, mailbox: &str) -> Result<Vec<(i64, String)>> {
        let prefix = mailbox_key(mailbox)?;
        let mut out = Vec::new();
        for item in self.db.scan_prefix(&prefix) {
            let (key, value) = item?;
            let micros = key
                .get(prefix.len()..)
                .filter(|b| b.len() == 8)
                .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
                .unwrap_or(0);
            out.push((
                (micros / 1_000_000) as i64,
                String::from_utf8_lossy(&value).into_owned(),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kept_in_order_per_mailbox_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let spool = super::Spool::open(&dir.path().join("s")).unwrap();
        spool.add_notice("a@x", "first").unwrap();
        spool.add_notice("a@x", "second").unwrap();
        spool.add_notice("a@xy", "other").unwrap();
        let got: Vec<String> = spool
            .notices("a@x")
            .unwrap()
            .into_iter()
            .map(|n| n.1)
            .collect();
        assert_eq!(got, ["first", "second"]);
        for i in 0..super::MAX_NOTICES + 5 {
            spool.add_notice("b@x", &format!("n{i}")).unwrap();
        }
        let got = spool.notices("b@x").unwrap();
        assert_eq!(got.len(), super::MAX_NOTICES);
        assert_eq!(got[0].1, "n5");
        assert!(got[0].0 > 1_700_000_000);
    }
}
