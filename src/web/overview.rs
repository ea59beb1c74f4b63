//! `GET /api/status`: the migration at a glance.

use std::collections::BTreeMap;
use std::sync::PoisonError;

use serde::Serialize;

use super::history::{self, Rates, Sample};
use super::inventory::Counts;
use super::Shared;
use crate::cutover::view::DomainView;
use crate::daemon::report::Snapshot;
use crate::daemon::state::Status;

/// The migration's phase, with the names of Microsoft's migration batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Phase {
    /// Some mailbox has not finished its first pass.
    Syncing,
    /// Every mailbox synced cleanly; deltas run by themselves.
    Synced,
    /// Every mailbox had its first pass, but some failed or have failed items.
    SyncedWithErrors,
    /// The cutover began for some mailbox: final passes after the grace.
    CutoverPending,
    /// Every mailbox is Completed.
    Completed,
}

/// The phase that the mailboxes' statuses add up to.
pub fn phase(snap: &Snapshot) -> Phase {
    let st: Vec<Option<Status>> = snap
        .mailboxes
        .iter()
        .map(|r| Status::parse(&r.status))
        .collect();
    let any = |s: Status| st.contains(&Some(s));
    if !st.is_empty() && st.iter().all(|s| *s == Some(Status::Completed)) {
        Phase::Completed
    } else if any(Status::CutoverPending) || any(Status::Completed) {
        Phase::CutoverPending
    } else if any(Status::Queued) || any(Status::Syncing) || st.is_empty() {
        Phase::Syncing
    } else if any(Status::Failed) || snap.mailboxes.iter().any(|r| r.items_failed > 0) {
        Phase::SyncedWithErrors
    } else {
        Phase::Synced
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Throttling {
    /// Mailboxes paused after a throttle answer right now.
    pub mailboxes: usize,
    /// When the last of those pauses ends.
    pub until_unix: Option<i64>,
    pub throttled_total: u64,
    pub backoff_seconds_total: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub spool_used_bytes: u64,
    pub free_bytes: Option<u64>,
}

/// A watched domain's MX and the grace its mailboxes have left.
#[derive(Debug, Clone, Serialize)]
pub struct Domain {
    #[serde(flatten)]
    pub view: DomainView,
    /// Seconds until the last of its mailboxes in cutover gets its final pass.
    pub grace_left_seconds: Option<i64>,
}

/// One mailbox in its cutover grace.
#[derive(Debug, Clone, Serialize)]
pub struct Cutover {
    pub mailbox: String,
    pub since_unix: Option<i64>,
    /// The final pass runs after this.
    pub complete_after_unix: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub phase: Phase,
    pub mailboxes: usize,
    /// Every status, with 0 for those no mailbox has.
    pub by_status: BTreeMap<String, usize>,
    /// Found at the source, at the destination, pending, skipped, failed (from the spool).
    pub totals: Counts,
    /// Appended and read since the daemon started (the process's counters).
    pub appended_since_start: u64,
    pub fetched_since_start: u64,
    pub rates: Rates,
    /// Seconds to the end of the initial sync at the rate of the last
    /// [`history::ETA_WINDOW`] (throttle pauses included); None while unknown.
    pub eta_seconds: Option<u64>,
    pub throttling: Throttling,
    pub disk: Disk,
    pub cutover: Vec<Cutover>,
    /// Each domain of `[cutover] domains`: where its MX points and the grace left.
    pub domains: Vec<Domain>,
    /// When the daemon last wrote its state, and when the spool was last counted.
    pub snapshot_unix: i64,
    pub counted_unix: i64,
    pub now_unix: i64,
    /// The page asks for a password (it then offers to log out).
    pub login: bool,
    /// This appliance's shard and, with `[fleet] peers`, the others.
    pub fleet: super::fleet::Fleet,
    /// Which letters of `[notify]` are set up: a mailbox without one was not forgotten.
    pub letters: Letters,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Letters {
    /// `[notify] before`: the notice at the source, sent by `cutover notify before`.
    pub before: bool,
    /// `[notify] after`: the welcome at the destination, sent at completion.
    pub after: bool,
}

/// The overview, from what the server holds now.
pub fn build(shared: &Shared) -> Overview {
    let snap = shared.snapshot();
    let inv = shared.inventory();
    let now = chrono::Utc::now().timestamp();
    let sample = Sample::now();
    let (rates, eta_rate) = {
        let h = shared
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (
            h.rates(&sample, history::CURRENT_WINDOW),
            h.rates(&sample, history::ETA_WINDOW),
        )
    };
    let mut by_status: BTreeMap<String, usize> = Status::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    for r in &snap.mailboxes {
        *by_status.entry(r.status.clone()).or_default() += 1;
    }
    let phase = phase(&snap);
    let m = crate::metrics::get();
    let backoff = m.in_backoff(now);
    let eta_seconds = eta(phase, &snap, &inv.total, &eta_rate);
    let (used, free) = *shared.disk.lock().unwrap_or_else(PoisonError::into_inner);
    Overview {
        phase,
        mailboxes: snap.mailboxes.len(),
        by_status,
        totals: inv.total,
        appended_since_start: sample.appended,
        fetched_since_start: sample.fetched,
        rates,
        eta_seconds,
        throttling: Throttling {
            mailboxes: backoff.len(),
            until_unix: backoff.values().max().copied(),
            throttled_total: m.throttled.get(),
            backoff_seconds_total: m.backoff_seconds.get(),
        },
        disk: Disk {
            spool_used_bytes: used,
            free_bytes: free,
        },
        cutover: snap
            .mailboxes
            .iter()
            .filter(|r| r.status == Status::CutoverPending.as_str())
            .map(|r| Cutover {
                mailbox: r.mailbox.clone(),
                since_unix: r.cutover_since_unix,
                complete_after_unix: r.complete_after_unix,
            })
            .collect(),
        domains: snap
            .domains
            .iter()
            .map(|d| Domain {
                grace_left_seconds: d.grace_left(now),
                view: d.clone(),
            })
            .collect(),
        snapshot_unix: snap.written_unix,
        counted_unix: inv.at_unix,
        now_unix: now,
        login: shared.auth.is_some(),
        letters: Letters {
            before: shared.config.notify.before.is_some(),
            after: shared.config.notify.after.is_some(),
        },
        fleet: super::fleet::build(shared, snap.mailboxes.len()),
    }
}

/// The initial sync's ETA: what is pending over the recent rate. Unknown while a
/// mailbox has not been read at all yet (what it holds is not known) or nothing moved.
fn eta(phase: Phase, snap: &Snapshot, total: &Counts, rate: &Rates) -> Option<u64> {
    if phase != Phase::Syncing {
        return (total.pending_messages == 0).then_some(0);
    }
    if snap
        .mailboxes
        .iter()
        .any(|r| r.status == Status::Queued.as_str())
    {
        return None;
    }
    if rate.upstream_msgs_per_s <= 0.0 || rate.window_s < 10.0 {
        return None;
    }
    Some((total.pending_messages as f64 / rate.upstream_msgs_per_s).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::report::MailboxRow;
    use crate::spool::MailboxState;

    fn snap(statuses: &[(&str, u64)]) -> Snapshot {
        Snapshot {
            written_unix: 0,
            pid: 1,
            spool_scan: None,
            domains: Vec::new(),
            mailboxes: statuses
                .iter()
                .enumerate()
                .map(|(i, (s, failed))| {
                    let st = MailboxState {
                        id: format!("m{i}@x.test"),
                        status: s.to_string(),
                        items_failed: *failed,
                        ..Default::default()
                    };
                    std::sync::Arc::new(MailboxRow::new(&st, (vec![], 0), 0))
                })
                .collect(),
        }
    }

    #[test]
    fn phases_follow_microsofts_batch_names() {
        assert_eq!(
            phase(&snap(&[("Queued", 0), ("Synced", 0)])),
            Phase::Syncing
        );
        assert_eq!(phase(&snap(&[("Syncing", 0)])), Phase::Syncing);
        assert_eq!(
            phase(&snap(&[("Synced", 0), ("IncrementalSyncing", 0)])),
            Phase::Synced
        );
        assert_eq!(
            phase(&snap(&[("Synced", 0), ("Failed", 0)])),
            Phase::SyncedWithErrors
        );
        assert_eq!(phase(&snap(&[("Synced", 2)])), Phase::SyncedWithErrors);
        assert_eq!(
            phase(&snap(&[("CutoverPending", 0), ("Synced", 0)])),
            Phase::CutoverPending
        );
        assert_eq!(
            phase(&snap(&[("Completed", 0), ("Synced", 0)])),
            Phase::CutoverPending
        );
        assert_eq!(phase(&snap(&[("Completed", 0)])), Phase::Completed);
    }

    #[test]
    fn eta_is_unknown_until_it_can_be_told() {
        let pending = Counts {
            pending_messages: 100,
            ..Default::default()
        };
        let r = |msgs: f64, window: f64| Rates {
            upstream_msgs_per_s: msgs,
            window_s: window,
            ..Default::default()
        };
        let s = snap(&[("Syncing", 0)]);
        assert_eq!(eta(Phase::Syncing, &s, &pending, &r(4.0, 60.0)), Some(25));
        assert_eq!(eta(Phase::Syncing, &s, &pending, &r(0.0, 60.0)), None);
        assert_eq!(eta(Phase::Syncing, &s, &pending, &r(4.0, 2.0)), None);
        let q = snap(&[("Syncing", 0), ("Queued", 0)]);
        assert_eq!(eta(Phase::Syncing, &q, &pending, &r(4.0, 60.0)), None);
        let done = Counts::default();
        assert_eq!(eta(Phase::Synced, &s, &done, &r(0.0, 0.0)), Some(0));
    }
}
