//! The daemon's bookkeeping: which mailbox is due, what a finished pass means for it, and
//! what an MX observation or a `cutover complete` request changes.
//!
//! Everything here is synchronous and talks to nothing but the spool, so the whole state
//! machine is tested without a server. The daemon loop ([`super::run`]) owns the only
//! [`Scheduler`] and runs the passes it asks for; every change is written to the spool
//! at once, so a crash loses at most the pass that was running.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::report::{self, MailboxRow, Problem, Snapshot};
use super::snapshot::RowUpdate;
use super::state::{self, Facts, Status};
use crate::accounts::Account;
use crate::cutover::mx::Observation;
use crate::cutover::view::{DomainView, DomainWatch, MxState};
use crate::cutover::CutoverConfig;
use crate::engine::MailboxSummary;
use crate::spool::{MailboxState, MessageCounts, Spool};

/// What a pass's end found in the spool: counted and listed off the runtime's thread (a
/// scan of the mailbox's records), then handed to [`Scheduler::finish`].
#[derive(Debug, Default)]
pub struct AfterPass {
    pub counts: Option<MessageCounts>,
    pub problems: (Vec<Problem>, u64),
}

impl AfterPass {
    /// Scans `mailbox`'s records (blocking: on a blocking thread in the daemon).
    pub fn scan(spool: &Spool, mailbox: &str) -> AfterPass {
        AfterPass {
            counts: spool.counts(mailbox).ok(),
            problems: report::problems(spool, mailbox, report::LIVE_PROBLEMS),
        }
    }
}

/// One mailbox of the CSV.
pub struct Entry {
    pub account: Account,
    pub st: MailboxState,
    pub facts: Facts,
    /// The watched domain the mailbox belongs to, if any.
    pub domain: Option<String>,
    /// When the next pass may start (unix milliseconds).
    pub next_due_ms: i64,
    /// The first skipped and failed messages, and how many more (see
    /// [`report::LIVE_PROBLEMS`]); shared with the snapshot writer, never copied.
    pub problems: Arc<(Vec<Problem>, u64)>,
    /// The problems come from the end of a pass, so the start-up scan's are older.
    problems_fresh: bool,
    /// The row changed since the last snapshot.
    changed: bool,
    /// The status page's row, as of the last change ([`Scheduler::page_snapshot`]).
    page_row: Option<Arc<MailboxRow>>,
}

impl Entry {
    pub fn id(&self) -> &str {
        &self.st.id
    }
}

pub struct Scheduler {
    pub entries: BTreeMap<String, Entry>,
    spool: Spool,
    interval: Duration,
    grace: Duration,
    mx_suffix: String,
    domains: HashMap<String, DomainWatch>,
    /// The watched domains (normalised), in the config's order.
    watched: Vec<String>,
    /// Something changed since the last snapshot.
    pub dirty: bool,
}

/// A mailbox's row as of `now`, with its letters' delivery times from the spool.
fn page_row(e: &Entry, spool: &Spool, now: i64) -> MailboxRow {
    MailboxRow::new(&e.st, (*e.problems).clone(), now).with_letters(spool)
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

impl Scheduler {
    /// Restores every mailbox of `accounts` from the spool (new ones start `Queued`).
    pub fn new(
        spool: Spool,
        accounts: &[Account],
        interval: Duration,
        cutover: &CutoverConfig,
        now_ms: i64,
    ) -> anyhow::Result<Scheduler> {
        let now = secs(now_ms);
        let pauses = spool.pauses()?;
        let mut entries = BTreeMap::new();
        for a in accounts {
            let mut st = spool.mailbox(&a.email)?.unwrap_or_else(|| MailboxState {
                id: a.email.clone(),
                ..Default::default()
            });
            let mut facts = Facts::restore(&st);
            facts.paused = pauses.of(&a.email).is_some();
            // Time while no daemon ran is not counted in any status.
            st.status_since_unix = now;
            state::enter(&mut st, facts.status(), now);
            let next_due_ms = match (facts.completed, st.last_sync_unix, facts.last_ok) {
                (true, _, _) => i64::MAX,
                // Synced before the restart: the next delta when the interval is up.
                (false, Some(last), Some(true)) => {
                    (last * 1000 + interval.as_millis() as i64).max(now_ms)
                }
                _ => now_ms,
            };
            // The problems are listed after READY (see `set_problems`): a scan of every
            // mailbox's records here could outlast systemd's start timeout.
            spool.put_mailbox(&st)?;
            entries.insert(
                a.email.clone(),
                Entry {
                    account: a.clone(),
                    domain: cutover.domain_of(&a.email),
                    st,
                    facts,
                    next_due_ms,
                    problems: Arc::default(),
                    problems_fresh: false,
                    changed: true,
                    page_row: None,
                },
            );
        }
        let mut s = Scheduler {
            entries,
            spool,
            interval,
            grace: cutover.grace,
            mx_suffix: cutover.mx_suffix.clone(),
            domains: HashMap::new(),
            watched: cutover
                .domains
                .iter()
                .map(|d| crate::cutover::normalise(d))
                .collect(),
            dirty: true,
        };
        // A restart in the cutover phase: the final pass is due when the grace ends.
        for e in s.entries.values_mut() {
            if let (Some(after), false) = (e.st.complete_after_unix, e.facts.completed) {
                e.next_due_ms = e.next_due_ms.min(after * 1000);
            }
        }
        s.dirty = true;
        Ok(s)
    }

    /// Mailboxes whose next pass is due, oldest due first.
    pub fn due(&self, now_ms: i64) -> Vec<String> {
        let mut due: Vec<(&i64, &String)> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                !e.facts.running && !e.facts.completed && !e.facts.paused && e.next_due_ms <= now_ms
            })
            .map(|(id, e)| (&e.next_due_ms, id))
            .collect();
        due.sort();
        due.into_iter().map(|(_, id)| id.clone()).collect()
    }

    /// Marks a pass of `id` as started; returns true if it is the final one (the grace
    /// is over), after which the mailbox is Completed if the pass succeeds.
    pub fn start(&mut self, id: &str, now_ms: i64) -> bool {
        let Some(e) = self.entries.get_mut(id) else {
            return false;
        };
        e.facts.running = true;
        let is_final =
            e.st.complete_after_unix
                .is_some_and(|after| after * 1000 <= now_ms);
        state::enter(&mut e.st, e.facts.status(), secs(now_ms));
        if is_final {
            tracing::info!(mailbox = id, "grace over: final pass");
        }
        self.persist(id);
        is_final
    }

    /// The problems the start-up scan found for `id`, unless a pass found newer ones.
    pub fn set_problems(&mut self, id: &str, problems: (Vec<Problem>, u64)) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        if e.problems_fresh || (problems.0.is_empty() && e.problems.0.is_empty()) {
            return;
        }
        e.problems = Arc::new(problems);
        e.changed = true;
        self.dirty = true;
    }

    /// Records the outcome of a pass, with what its end found in the spool.
    pub fn finish(
        &mut self,
        id: &str,
        summary: &MailboxSummary,
        is_final: bool,
        now_ms: i64,
        after: AfterPass,
    ) {
        let AfterPass { counts, problems } = after;
        let interval_ms = self.interval.as_millis() as i64;
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        let now = secs(now_ms);
        e.facts.running = false;
        e.st.passes += 1;
        if let Some(c) = counts {
            e.st.items_synced = c.appended;
            e.st.items_skipped = c.skipped;
            e.st.items_failed = c.failed + c.spooled + c.appending;
            e.st.bytes = c.bytes_appended;
        }
        e.problems = Arc::new(problems);
        e.problems_fresh = true;
        let ok = summary.ok();
        e.facts.last_ok = Some(ok);
        if ok {
            e.facts.synced_once = true;
            e.st.last_sync_unix = Some(now);
            e.st.last_error = None;
            if is_final {
                e.facts.completed = true;
                e.st.completed_unix = Some(now);
                tracing::info!(mailbox = id, "final pass done: Completed");
            }
        } else {
            let error = summary
                .fatal
                .clone()
                .or_else(|| summary.errors.first().cloned())
                .unwrap_or_else(|| {
                    format!("{} messages are not at the destination yet", summary.failed)
                });
            tracing::warn!(mailbox = id, %error, "pass failed; retried after the interval");
            e.st.last_error = Some(error);
        }
        e.next_due_ms = if e.facts.completed {
            i64::MAX
        } else {
            let mut due = now_ms + interval_ms;
            if let Some(after) = e.st.complete_after_unix {
                due = due.min(after * 1000);
            }
            due
        };
        state::enter(&mut e.st, e.facts.status(), now);
        self.persist(id);
    }

    /// Forgets that a pass runs (the daemon aborted it while stopping).
    pub fn abandon(&mut self, id: &str, now_ms: i64) {
        if let Some(e) = self.entries.get_mut(id) {
            e.facts.running = false;
            e.next_due_ms = now_ms;
            state::enter(&mut e.st, e.facts.status(), secs(now_ms));
            self.persist(id);
        }
    }

    /// Applies one MX lookup result.
    pub fn observe_mx(&mut self, obs: &Observation, now_ms: i64) {
        let now = secs(now_ms);
        let watch = self.domains.entry(obs.domain.clone()).or_default();
        watch.checked_unix = Some(now);
        // The page shows each lookup's outcome.
        self.dirty = true;
        let answer = match &obs.answer {
            Ok(a) => a,
            Err(e) => {
                watch.error = Some(e.clone());
                return;
            }
        };
        watch.error = None;
        watch.exchanges = answer.exchanges.iter().map(|(_, e)| e.clone()).collect();
        let moved = answer.all_point_to(&self.mx_suffix);
        let was_moved = watch.state == MxState::Office365;
        let mut changed = Vec::new();
        if moved {
            let floor = Duration::from_secs(watch.old_ttl.into());
            let grace = self.grace.max(floor);
            if !was_moved {
                watch.moved_since_unix = Some(now);
                tracing::info!(domain = %obs.domain, mx = ?answer.exchanges, grace = %crate::duration::format(grace),
                    "every MX points at Office 365: cutover begins");
            }
            watch.state = MxState::Office365;
            for e in self.entries.values_mut() {
                if e.domain.as_deref() != Some(obs.domain.as_str())
                    || e.facts.completed
                    || e.facts.in_cutover
                {
                    continue;
                }
                let after = now + grace.as_secs() as i64;
                e.st.cutover_since_unix = Some(now);
                e.st.complete_after_unix = Some(after);
                e.st.cutover_manual = false;
                e.facts.in_cutover = true;
                e.next_due_ms = e.next_due_ms.min(after * 1000);
                state::enter(&mut e.st, e.facts.status(), now);
                changed.push(e.id().to_string());
            }
        } else {
            if was_moved {
                tracing::warn!(domain = %obs.domain, mx = ?answer.exchanges,
                    "the MX no longer points at Office 365 only: cutover cancelled, syncing goes on");
            }
            watch.state = MxState::Legacy;
            watch.moved_since_unix = None;
            watch.old_ttl = answer.ttl;
            for e in self.entries.values_mut() {
                if e.domain.as_deref() != Some(obs.domain.as_str())
                    || e.facts.completed
                    || !e.facts.in_cutover
                    || e.st.cutover_manual
                {
                    continue;
                }
                e.st.cutover_since_unix = None;
                e.st.complete_after_unix = None;
                e.facts.in_cutover = false;
                state::enter(&mut e.st, e.facts.status(), now);
                changed.push(e.id().to_string());
            }
        }
        for id in changed {
            self.persist(&id);
        }
    }

    /// `cutover complete`: the named mailboxes (all when empty) get their final pass as
    /// soon as possible. Returns the names that are not mailboxes of the CSV.
    pub fn request_complete(&mut self, mailboxes: &[String], now_ms: i64) -> Vec<String> {
        let now = secs(now_ms);
        let (ids, unknown) = self.named(mailboxes);
        let mut changed = Vec::new();
        for id in ids {
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            e.st.cutover_since_unix.get_or_insert(now);
            e.st.complete_after_unix = Some(now);
            e.st.cutover_manual = true;
            e.facts.in_cutover = true;
            e.next_due_ms = e.next_due_ms.min(now_ms);
            state::enter(&mut e.st, e.facts.status(), now);
            changed.push(e.id().to_string());
        }
        for id in changed {
            tracing::info!(mailbox = %id, "completion requested by hand: final pass next");
            self.persist(&id);
        }
        unknown
    }

    /// The ids of the named mailboxes (every one when `mailboxes` is empty) that are not
    /// Completed, and the names that are not mailboxes.
    fn named(&self, mailboxes: &[String]) -> (Vec<String>, Vec<String>) {
        let mut unknown = Vec::new();
        let mut wanted = Vec::new();
        for m in mailboxes {
            match self.resolve(m) {
                Some(id) => wanted.push(id),
                None => unknown.push(m.clone()),
            }
        }
        let ids = self
            .entries
            .values()
            .filter(|e| !e.facts.completed && (mailboxes.is_empty() || wanted.contains(&e.st.id)))
            .map(|e| e.st.id.clone())
            .collect();
        (ids, unknown)
    }

    /// `cutover pause` / `resume`: pauses (or resumes) the named mailboxes, or with none
    /// named the whole migration, in the spool first so that a restart keeps it. Returns
    /// the mailboxes whose pass runs and must be stopped (the caller aborts it: like a
    /// crash, which recovery makes safe), and the names that are not mailboxes.
    pub fn request_pause(
        &mut self,
        mailboxes: &[String],
        paused: bool,
        now_ms: i64,
    ) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let (ids, unknown) = self.named(mailboxes);
        if mailboxes.is_empty() {
            self.spool.set_paused(None, paused)?;
        } else {
            for id in &ids {
                self.spool.set_paused(Some(id), paused)?;
            }
        }
        let pauses = self.spool.pauses()?;
        let mut stop = Vec::new();
        let mut changed = Vec::new();
        for e in self.entries.values_mut() {
            let now_paused = pauses.of(&e.st.id).is_some();
            if e.facts.paused == now_paused || e.facts.completed {
                continue;
            }
            e.facts.paused = now_paused;
            if now_paused && e.facts.running {
                stop.push(e.st.id.clone());
            }
            if !now_paused {
                e.next_due_ms = e.next_due_ms.min(now_ms);
            }
            state::enter(&mut e.st, e.facts.status(), secs(now_ms));
            changed.push(e.st.id.clone());
        }
        for id in changed {
            tracing::info!(mailbox = %id, paused, "{} by hand", if paused { "paused" } else { "resumed" });
            self.persist(&id);
        }
        Ok((stop, unknown))
    }

    /// `cutover sync-now`: the next pass of the named mailboxes (or every one) is due now
    /// instead of at the interval. A paused mailbox stays paused.
    pub fn request_sync_now(&mut self, mailboxes: &[String], now_ms: i64) -> Vec<String> {
        let (ids, unknown) = self.named(mailboxes);
        for id in ids {
            if let Some(e) = self.entries.get_mut(&id) {
                e.next_due_ms = e.next_due_ms.min(now_ms);
            }
        }
        self.dirty = true;
        unknown
    }

    /// `cutover retry-errors`: the failed messages of these mailboxes (every mailbox when
    /// empty) go on their next pass, which is now; returns the names that are not
    /// mailboxes. A mailbox whose pass is running picks them up on the following one.
    pub fn request_retry(&mut self, mailboxes: &[String], now_ms: i64) -> Vec<String> {
        let (ids, unknown) = self.named(mailboxes);
        for id in ids {
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            match self.spool.retry_failed(&e.st.id) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(mailbox = %e.st.id, messages = n, "failed messages retried by hand");
                    e.next_due_ms = e.next_due_ms.min(now_ms);
                }
                Err(err) => {
                    tracing::warn!(mailbox = %e.st.id, error = %err, "cannot retry failed messages")
                }
            }
        }
        unknown
    }

    /// The id of the mailbox an admin names (`cutover complete --mailbox`), compared
    /// without regard to case as Office 365 does: ids are lower-cased addresses, or the
    /// spelling an older spool used (see [`crate::accounts::adopt_spool_ids`]).
    pub fn resolve(&self, name: &str) -> Option<String> {
        let name = name.trim();
        if self.entries.contains_key(name) {
            return Some(name.to_string());
        }
        let folded = name.to_lowercase();
        self.entries
            .keys()
            .find(|id| id.to_lowercase() == folded)
            .cloned()
    }

    pub fn all_completed(&self) -> bool {
        self.entries.values().all(|e| e.facts.completed)
    }

    pub fn running(&self) -> usize {
        self.entries.values().filter(|e| e.facts.running).count()
    }

    /// Closes every status stretch (the daemon stops) and writes everything.
    pub fn close_all(&mut self, now_ms: i64) {
        let ids: Vec<String> = self.entries.keys().cloned().collect();
        for id in ids {
            if let Some(e) = self.entries.get_mut(&id) {
                state::close_stretch(&mut e.st, secs(now_ms));
            }
            self.persist(&id);
        }
    }

    /// Every mailbox's row as of now (tests; the daemon writes [`Self::take_changed`]).
    pub fn snapshot(&self, now_ms: i64) -> Snapshot {
        let now = secs(now_ms);
        Snapshot {
            written_unix: now,
            pid: std::process::id(),
            spool_scan: None,
            domains: self.domain_views(),
            mailboxes: self
                .entries
                .values()
                .map(|e| Arc::new(page_row(e, &self.spool, now)))
                .collect(),
        }
    }

    /// [`Self::snapshot`] for the status page, made after every change: only the rows
    /// changed since the last [`Self::take_changed`] are built again (with 5,000
    /// mailboxes, building every row took tens of milliseconds of the runtime's thread);
    /// the others are the rows built at their own last change, which readers age with
    /// [`MailboxRow::age_to`].
    pub fn page_snapshot(&mut self, now_ms: i64) -> Snapshot {
        let now = secs(now_ms);
        let spool = &self.spool;
        let mailboxes = self
            .entries
            .values_mut()
            .map(|e| match &e.page_row {
                Some(row) if !e.changed => row.clone(),
                _ => {
                    let row = Arc::new(page_row(e, spool, now));
                    e.page_row = Some(row.clone());
                    row
                }
            })
            .collect();
        Snapshot {
            written_unix: now,
            pid: std::process::id(),
            spool_scan: None,
            domains: self.domain_views(),
            mailboxes,
        }
    }

    /// Each watched domain's MX state and its mailboxes' cutover, for the status page.
    pub fn domain_views(&self) -> Vec<DomainView> {
        let mut views: Vec<DomainView> = self
            .watched
            .iter()
            .map(|d| DomainView::new(d, self.domains.get(d)))
            .collect();
        for e in self.entries.values() {
            if let Some(v) = views
                .iter_mut()
                .find(|v| Some(v.domain.as_str()) == e.domain.as_deref())
            {
                v.count(e.facts.completed, e.st.complete_after_unix);
            }
        }
        views
    }

    /// The rows that changed since the last call, for the snapshot writer: the state is
    /// copied (a few small fields), the problems are shared. Clears [`Self::dirty`].
    pub fn take_changed(&mut self) -> Vec<RowUpdate> {
        self.dirty = false;
        self.entries
            .values_mut()
            .filter_map(|e| std::mem::take(&mut e.changed).then_some(e))
            .map(|e| RowUpdate {
                st: e.st.clone(),
                problems: e.problems.clone(),
            })
            .collect()
    }

    /// `3 mailboxes: 2 Synced, 1 IncrementalSyncing`, for sd_notify's STATUS.
    pub fn status_line(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for e in self.entries.values() {
            *counts.entry(e.st.status.as_str()).or_default() += 1;
        }
        report::summary_line(&counts, self.entries.len())
    }

    pub fn status_of(&self, id: &str) -> Option<Status> {
        self.entries.get(id).map(|e| e.facts.status())
    }

    fn persist(&mut self, id: &str) {
        self.dirty = true;
        if let Some(e) = self.entries.get_mut(id) {
            e.changed = true;
            if let Err(err) = self.spool.put_mailbox(&e.st) {
                tracing::error!(mailbox = id, error = %err, "cannot record the mailbox state");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cutover::mx::MxAnswer;

    fn account(email: &str) -> Account {
        crate::accounts::parse(format!("EmailAddress,UserName,Password\n{email},u,p\n").as_bytes())
            .accounts
            .remove(0)
    }

    fn setup(grace: u64) -> (tempfile::TempDir, Spool, Vec<Account>, CutoverConfig) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        let accounts = vec![account("a@moved.test"), account("b@stays.test")];
        let cfg = CutoverConfig {
            domains: vec!["moved.test".into()],
            grace: Duration::from_secs(grace),
            ..Default::default()
        };
        (dir, spool, accounts, cfg)
    }

    fn ok() -> MailboxSummary {
        MailboxSummary::default()
    }

    fn mx(domain: &str, exchange: &str, ttl: u32) -> Observation {
        Observation {
            domain: domain.into(),
            answer: Ok(MxAnswer {
                exchanges: vec![(10, exchange.into())],
                ttl,
            }),
        }
    }

    #[test]
    fn complete_finds_a_mailbox_whatever_its_capitals() {
        let (_d, spool, mut accounts, cfg) = setup(100);
        // The spool of an older version knows the first mailbox with capitals.
        accounts[0].email = "A@Moved.test".into();
        let t0 = 1_700_000_000_000;
        let mut s =
            Scheduler::new(spool.clone(), &accounts, Duration::from_secs(60), &cfg, t0).unwrap();
        let unknown = s.request_complete(
            &[" a@MOVED.test".to_string(), "B@Stays.Test".to_string()],
            t0,
        );
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(s.status_of("A@Moved.test"), Some(Status::CutoverPending));
        assert_eq!(s.status_of("b@stays.test"), Some(Status::CutoverPending));
        assert_eq!(
            s.request_complete(&["c@moved.test".to_string()], t0),
            ["c@moved.test"]
        );
    }

    /// The status page's snapshot after a change rebuilds that mailbox's row only; the
    /// others are the rows already built, and all say the same as a snapshot made afresh.
    #[test]
    fn page_snapshot_rebuilds_only_the_changed_rows() {
        let (_d, spool, accounts, cfg) = setup(100);
        let t0 = 1_700_000_000_000;
        let mut s =
            Scheduler::new(spool.clone(), &accounts, Duration::from_secs(60), &cfg, t0).unwrap();
        let first = s.page_snapshot(t0);
        s.take_changed();
        assert_eq!(first.mailboxes, s.snapshot(t0).mailboxes);
        let again = s.page_snapshot(t0 + 1_000);
        for (a, b) in first.mailboxes.iter().zip(&again.mailboxes) {
            assert!(Arc::ptr_eq(a, b), "nothing changed: {}", a.mailbox);
        }
        assert!(!s.start("a@moved.test", t0 + 2_000));
        let after = s.page_snapshot(t0 + 2_000);
        s.take_changed();
        assert!(!Arc::ptr_eq(&first.mailboxes[0], &after.mailboxes[0]));
        assert_eq!(after.mailboxes[0].status, "Syncing");
        assert!(Arc::ptr_eq(&first.mailboxes[1], &after.mailboxes[1]));
        // The unchanged row, aged to now, says what a row built now says.
        let fresh = s.snapshot(t0 + 2_000);
        let mut aged = (*after.mailboxes[1]).clone();
        aged.age_to(1_700_000_002);
        assert_eq!(aged.seconds_in_status, fresh.mailboxes[1].seconds_in_status);
        assert_eq!(*after.mailboxes[0], *fresh.mailboxes[0]);
    }

    #[test]
    fn from_queued_to_completed() {
        let (_d, spool, accounts, cfg) = setup(100);
        let t0 = 1_700_000_000_000;
        let mut s =
            Scheduler::new(spool.clone(), &accounts, Duration::from_secs(60), &cfg, t0).unwrap();
        assert_eq!(s.status_of("a@moved.test"), Some(Status::Queued));
        assert_eq!(s.due(t0), ["a@moved.test", "b@stays.test"]);
        assert!(!s.start("a@moved.test", t0));
        assert_eq!(s.status_of("a@moved.test"), Some(Status::Syncing));
        assert!(s.due(t0).len() == 1, "a running mailbox is not due");
        s.finish(
            "a@moved.test",
            &ok(),
            false,
            t0 + 5_000,
            AfterPass::default(),
        );
        assert_eq!(s.status_of("a@moved.test"), Some(Status::Synced));
        assert!(
            s.due(t0 + 60_000).is_empty()
                || !s.due(t0 + 60_000).contains(&"a@moved.test".to_string())
        );
        assert!(s.due(t0 + 65_000).contains(&"a@moved.test".to_string()));
        s.start("a@moved.test", t0 + 65_000);
        assert_eq!(
            s.status_of("a@moved.test"),
            Some(Status::IncrementalSyncing)
        );
        let failed = MailboxSummary {
            fatal: Some("login refused".into()),
            ..Default::default()
        };
        s.finish(
            "a@moved.test",
            &failed,
            false,
            t0 + 66_000,
            AfterPass::default(),
        );
        assert_eq!(s.status_of("a@moved.test"), Some(Status::Failed));
        let st = spool.mailbox("a@moved.test").unwrap().unwrap();
        assert_eq!(st.status, "Failed");
        assert_eq!(st.last_error.as_deref(), Some("login refused"));
        assert_eq!(st.passes, 2);

        // The old MX (TTL 300) is seen first, then the move: grace = max(100, 300).
        assert_eq!(s.domain_views()[0].mx, MxState::Unknown);
        s.observe_mx(&mx("moved.test", "mx.legacy.test", 300), t0 + 70_000);
        assert_eq!(s.status_of("a@moved.test"), Some(Status::Failed));
        let v = &s.domain_views()[0];
        assert_eq!((v.domain.as_str(), v.mx), ("moved.test", MxState::Legacy));
        assert_eq!((v.mailboxes, v.in_cutover), (1, 0));
        assert_eq!(v.exchanges, ["mx.legacy.test"]);
        s.observe_mx(
            &Observation {
                domain: "moved.test".into(),
                answer: Err("MX lookup of moved.test: timed out".into()),
            },
            t0 + 75_000,
        );
        let v = &s.domain_views()[0];
        assert_eq!(v.mx, MxState::Legacy, "a failed lookup changes nothing");
        assert!(v.error.as_deref().unwrap().contains("timed out"));
        assert_eq!(v.checked_unix, Some(1_700_000_075));
        s.observe_mx(
            &mx("moved.test", "x.mail.protection.outlook.com", 3600),
            t0 + 80_000,
        );
        let st = &s.entries["a@moved.test"].st;
        assert_eq!(st.complete_after_unix, Some(1_700_000_080 + 300));
        let v = &s.domain_views()[0];
        assert_eq!(v.mx, MxState::Office365);
        assert_eq!(v.error, None);
        assert_eq!(v.moved_since_unix, Some(1_700_000_080));
        assert_eq!((v.mailboxes, v.in_cutover), (1, 1));
        assert_eq!(v.grace_left(1_700_000_080), Some(300));
        assert_eq!(
            s.status_of("b@stays.test"),
            Some(Status::Queued),
            "other domain"
        );
        // A pass during the grace is not final and keeps the mailbox pending.
        assert!(!s.start("a@moved.test", t0 + 90_000));
        assert_eq!(s.status_of("a@moved.test"), Some(Status::CutoverPending));
        s.finish(
            "a@moved.test",
            &ok(),
            false,
            t0 + 91_000,
            AfterPass::default(),
        );
        assert_eq!(s.status_of("a@moved.test"), Some(Status::CutoverPending));
        // Due again after the interval, or when the grace ends if that comes first.
        assert_eq!(s.entries["a@moved.test"].next_due_ms, 1_700_000_151_000);
        s.start("a@moved.test", t0 + 360_000);
        s.finish(
            "a@moved.test",
            &ok(),
            false,
            t0 + 361_000,
            AfterPass::default(),
        );
        assert_eq!(s.entries["a@moved.test"].next_due_ms, 1_700_000_380_000);
        assert!(s.start("a@moved.test", t0 + 380_000));
        s.finish(
            "a@moved.test",
            &ok(),
            true,
            t0 + 381_000,
            AfterPass::default(),
        );
        assert_eq!(s.status_of("a@moved.test"), Some(Status::Completed));
        assert!(!s.due(i64::MAX - 1).contains(&"a@moved.test".to_string()));

        // A restart keeps it Completed; the other mailbox is queued again.
        drop(s);
        let s = Scheduler::new(
            spool,
            &accounts,
            Duration::from_secs(60),
            &cfg,
            t0 + 400_000,
        )
        .unwrap();
        assert_eq!(s.status_of("a@moved.test"), Some(Status::Completed));
        assert_eq!(s.due(t0 + 400_000), ["b@stays.test"]);
        let st = &s.entries["a@moved.test"].st;
        assert!(st.seconds_in_status["CutoverPending"] >= 290, "{st:?}");
    }

    #[test]
    fn mx_moving_back_cancels_but_not_by_hand() {
        let (_d, spool, mut accounts, cfg) = setup(100);
        accounts.push(account("c@moved.test"));
        let t0 = 1_700_000_000_000;
        let mut s = Scheduler::new(spool, &accounts, Duration::from_secs(60), &cfg, t0).unwrap();
        for id in ["a@moved.test", "c@moved.test"] {
            s.start(id, t0);
            s.finish(id, &ok(), false, t0 + 1000, AfterPass::default());
        }
        s.request_complete(&["c@moved.test".to_string()], t0 + 2000);
        s.observe_mx(
            &mx("moved.test", "x.mail.protection.outlook.com", 60),
            t0 + 3000,
        );
        assert_eq!(s.status_of("a@moved.test"), Some(Status::CutoverPending));
        s.observe_mx(&mx("moved.test", "mx.legacy.test", 60), t0 + 4000);
        assert_eq!(s.status_of("a@moved.test"), Some(Status::Synced));
        assert_eq!(s.status_of("c@moved.test"), Some(Status::CutoverPending));
        let due = s.due(t0 + 4000);
        assert!(due.contains(&"c@moved.test".to_string()), "{due:?}");
        assert!(!due.contains(&"a@moved.test".to_string()), "{due:?}");
        let unknown = s.request_complete(&["nobody@x.test".to_string()], t0 + 5000);
        assert_eq!(unknown, ["nobody@x.test"]);
    }
}
