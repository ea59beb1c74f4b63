//! What the daemon knows of each watched domain's MX, as the status page shows it: the
//! admin waits days for the MX to move and then for the grace to run out, and needs to
//! see which domain is where without reading the log.
//!
//! The daemon's scheduler keeps one [`DomainWatch`] per domain from the watch's
//! observations ([`super::mx::Observation`]) and hands a [`DomainView`] of each to the
//! snapshot the page reads; nothing here looks anything up.

use serde::{Deserialize, Serialize};

/// Where a domain's MX points, as last seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MxState {
    /// The watch has not answered for it yet.
    #[default]
    Unknown,
    /// Some MX still points elsewhere: mail still reaches the legacy server.
    Legacy,
    /// Every MX points at Office 365: the domain's mailboxes are in their grace.
    Office365,
}

/// The watch's record of one domain.
#[derive(Debug, Clone, Default)]
pub struct DomainWatch {
    pub state: MxState,
    /// TTL of the last answer that did not point at Office 365: senders may cache it that
    /// long, so it is the floor of the grace.
    pub old_ttl: u32,
    /// The exchanges of the last answer, by preference.
    pub exchanges: Vec<String>,
    /// When the last lookup ended (answered or not).
    pub checked_unix: Option<i64>,
    /// The last lookup's error, while lookups fail (the state stays as it was).
    pub error: Option<String>,
    /// Since when every MX points at Office 365.
    pub moved_since_unix: Option<i64>,
}

/// One watched domain on the status page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainView {
    pub domain: String,
    pub mx: MxState,
    pub exchanges: Vec<String>,
    pub checked_unix: Option<i64>,
    pub error: Option<String>,
    pub moved_since_unix: Option<i64>,
    /// The domain's mailboxes, those in their cutover grace, and those Completed.
    pub mailboxes: usize,
    pub in_cutover: usize,
    pub completed: usize,
    /// When the last of its mailboxes in cutover gets its final pass.
    pub complete_after_unix: Option<i64>,
}

impl DomainView {
    pub fn new(domain: &str, w: Option<&DomainWatch>) -> DomainView {
        let w = w.cloned().unwrap_or_default();
        DomainView {
            domain: domain.to_string(),
            mx: w.state,
            exchanges: w.exchanges,
            checked_unix: w.checked_unix,
            error: w.error,
            moved_since_unix: w.moved_since_unix,
            ..Default::default()
        }
    }

    /// Counts one of the domain's mailboxes.
    pub fn count(&mut self, completed: bool, complete_after_unix: Option<i64>) {
        self.mailboxes += 1;
        if completed {
            self.completed += 1;
        } else if let Some(t) = complete_after_unix {
            self.in_cutover += 1;
            self.complete_after_unix = Some(self.complete_after_unix.map_or(t, |m| m.max(t)));
        }
    }

    /// Seconds of grace left at `now`: None unless some mailbox waits for its final pass.
    pub fn grace_left(&self, now: i64) -> Option<i64> {
        self.complete_after_unix.map(|t| (t - now).max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_left_is_the_last_final_pass_of_the_domain() {
        let w = DomainWatch {
            state: MxState::Office365,
            moved_since_unix: Some(100),
            ..Default::default()
        };
        let mut v = DomainView::new("example.test", Some(&w));
        assert_eq!(v.grace_left(0), None);
        v.count(false, Some(500));
        v.count(false, Some(800));
        v.count(true, Some(300));
        v.count(false, None);
        assert_eq!((v.mailboxes, v.in_cutover, v.completed), (4, 2, 1));
        assert_eq!(v.grace_left(200), Some(600));
        assert_eq!(v.grace_left(900), Some(0));
        let fresh = DomainView::new("other.test", None);
        assert_eq!(fresh.mx, MxState::Unknown);
    }
}
