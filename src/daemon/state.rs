//! The per-mailbox state machine, with the statuses admins know from Microsoft's IMAP
//! migration.
//!
//! ```text
//!   Queued ──> Syncing ──> Synced <──> IncrementalSyncing
//!                 │           │  ▲            │
//!                 └──> Failed <──┼────────────┘      (a failed pass is retried next interval)
//!                             │  │
//!   MX moved / `complete` ──> CutoverPending ──(grace over, final pass ok)──> Completed
//! ```
//!
//! The status is *derived* from a few facts ([`Facts`]) rather than stored as the only
//! truth: whether a pass runs, how the last one ended, whether the cutover began, whether
//! the final pass succeeded. The facts live in [`MailboxState`] (persisted in the spool), so
//! a daemon restarted after a crash recomputes the right status even if the crash hit in
//! the middle of a pass (when the stored status still said `Syncing`).

use std::fmt;

use crate::spool::MailboxState;

/// A mailbox's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Never synced, waiting for its first pass.
    Queued,
    /// First pass running.
    Syncing,
    /// Last pass finished cleanly; the next delta pass comes after `[sync] interval`.
    Synced,
    /// A delta pass is running.
    IncrementalSyncing,
    /// The last pass did not finish cleanly (see the error); retried after the interval.
    Failed,
    /// The domain's MX points at Office 365 (or `cutover complete` was used): syncing
    /// goes on until the grace is over, then a final pass.
    CutoverPending,
    /// The final pass succeeded; the mailbox is no longer synced.
    Completed,
    /// Paused by the admin (`cutover pause`, the status page): no pass runs until it is
    /// resumed. Microsoft's name for a stopped migration user.
    Stopped,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Queued,
        Status::Syncing,
        Status::Synced,
        Status::IncrementalSyncing,
        Status::Failed,
        Status::CutoverPending,
        Status::Completed,
        Status::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "Queued",
            Status::Syncing => "Syncing",
            Status::Synced => "Synced",
            Status::IncrementalSyncing => "IncrementalSyncing",
            Status::Failed => "Failed",
            Status::CutoverPending => "CutoverPending",
            Status::Completed => "Completed",
            Status::Stopped => "Stopped",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the status is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub running: bool,
    /// How the last pass ended; `None` if no pass has ended yet.
    pub last_ok: Option<bool>,
    /// At least one pass has succeeded.
    pub synced_once: bool,
    /// The cutover began (grace running or over).
    pub in_cutover: bool,
    pub completed: bool,
    /// Paused by the admin; the scheduler sets it from the spool's pauses.
    pub paused: bool,
}

impl Facts {
    /// Recovers the facts from a persisted state, as a daemon starting up sees it: nothing
    /// runs yet.
    pub fn restore(st: &MailboxState) -> Facts {
        let completed = st.completed_unix.is_some() || st.status == Status::Completed.as_str();
        Facts {
            running: false,
            last_ok: if st.status == Status::Failed.as_str() {
                Some(false)
            } else if st.last_sync_unix.is_some() {
                Some(true)
            } else {
                None
            },
            synced_once: st.last_sync_unix.is_some(),
            in_cutover: st.complete_after_unix.is_some(),
            completed,
            paused: false,
        }
    }

    /// The status these facts mean. A failure shows even during the cutover: the admin
    /// must see it, and the cutover goes on regardless (the final pass must succeed).
    pub fn status(&self) -> Status {
        if self.completed {
            Status::Completed
        } else if self.paused {
            Status::Stopped
        } else if self.running {
            if self.in_cutover {
                Status::CutoverPending
            } else if self.synced_once {
                Status::IncrementalSyncing
            } else {
                Status::Syncing
            }
        } else if self.last_ok == Some(false) {
            Status::Failed
        } else if self.in_cutover {
            Status::CutoverPending
        } else if self.synced_once {
            Status::Synced
        } else {
            Status::Queued
        }
    }
}

/// Moves `st` to `status` at `now` (unix seconds), adding the time spent in the previous
/// status to its total. No-op if the status does not change.
pub fn enter(st: &mut MailboxState, status: Status, now: i64) {
    if st.status == status.as_str() {
        return;
    }
    close_stretch(st, now);
    st.status = status.as_str().to_string();
}

/// Adds the current stretch (since `status_since_unix`) to the current status's total and
/// starts a new stretch at `now`. Done at every change and before the daemon stops, so
/// that time while no daemon runs is not counted.
pub fn close_stretch(st: &mut MailboxState, now: i64) {
    if !st.status.is_empty() && st.status_since_unix > 0 {
        // Listed even when under a second: the report shows every status passed through.
        *st.seconds_in_status.entry(st.status.clone()).or_default() +=
            (now - st.status_since_unix).max(0) as u64;
    }
    st.status_since_unix = now;
}

/// Seconds spent in `status`, including the current stretch.
pub fn seconds_in(st: &MailboxState, status: &str, now: i64) -> u64 {
    let mut s = st.seconds_in_status.get(status).copied().unwrap_or(0);
    if st.status == status && st.status_since_unix > 0 && now > st.status_since_unix {
        s += (now - st.status_since_unix) as u64;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            running: false,
            last_ok: None,
            synced_once: false,
            in_cutover: false,
            completed: false,
            paused: false,
        }
    }

    #[test]
    fn statuses_follow_the_facts() {
        let mut f = facts();
        assert_eq!(f.status(), Status::Queued);
        f.running = true;
        assert_eq!(f.status(), Status::Syncing);
        f.running = false;
        f.last_ok = Some(false);
        assert_eq!(f.status(), Status::Failed);
        f.last_ok = Some(true);
        f.synced_once = true;
        assert_eq!(f.status(), Status::Synced);
        f.running = true;
        assert_eq!(f.status(), Status::IncrementalSyncing);
        f.in_cutover = true;
        assert_eq!(f.status(), Status::CutoverPending);
        f.running = false;
        assert_eq!(f.status(), Status::CutoverPending);
        f.last_ok = Some(false);
        assert_eq!(f.status(), Status::Failed);
        f.completed = true;
        assert_eq!(f.status(), Status::Completed);
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn restore_after_a_crash_mid_pass() {
        // Crashed during a delta pass: the stored status still says so.
        let st = MailboxState {
            status: "IncrementalSyncing".into(),
            last_sync_unix: Some(100),
            ..Default::default()
        };
        assert_eq!(Facts::restore(&st).status(), Status::Synced);
        // During the first pass: back to the queue.
        let st = MailboxState {
            status: "Syncing".into(),
            ..Default::default()
        };
        assert_eq!(Facts::restore(&st).status(), Status::Queued);
        let st = MailboxState {
            status: "Syncing".into(),
            last_sync_unix: Some(100),
            complete_after_unix: Some(200),
            ..Default::default()
        };
        assert_eq!(Facts::restore(&st).status(), Status::CutoverPending);
        let st = MailboxState {
            status: "Completed".into(),
            completed_unix: Some(300),
            ..Default::default()
        };
        assert_eq!(Facts::restore(&st).status(), Status::Completed);
    }

    #[test]
    fn time_per_status_adds_up() {
        let mut st = MailboxState::default();
        enter(&mut st, Status::Queued, 1000);
        enter(&mut st, Status::Syncing, 1010);
        enter(&mut st, Status::Syncing, 1015);
        enter(&mut st, Status::Synced, 1030);
        assert_eq!(seconds_in(&st, "Queued", 2000), 10);
        assert_eq!(seconds_in(&st, "Syncing", 2000), 20);
        assert_eq!(seconds_in(&st, "Synced", 1100), 70);
        close_stretch(&mut st, 1100);
        assert_eq!(st.seconds_in_status["Synced"], 70);
        assert_eq!(seconds_in(&st, "Synced", 1100), 70);
    }
}
