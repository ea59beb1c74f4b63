//! What `cutover status` and `cutover report` show, and where they read it from.
//!
//! # Why a snapshot file
//!
//! The spool is a sled database, and sled takes an exclusive lock on it: while the daemon
//! runs, no other process can open it, not even to read. `status` and `report` therefore
//! have two sources:
//!
//! - the daemon writes a [`Snapshot`] of every mailbox's row (including its skipped and
//!   failed items) to `status.json` in the spool directory every few seconds, atomically
//!   (temporary file + rename). When the spool is locked, the daemon is alive and that
//!   file is at most a few seconds old, so it is what they read;
//! - when the spool is not locked, no daemon runs and the file may be stale, so they open
//!   the spool and build the same rows from it.
//!
//! A control socket would give fresher answers, but it is one more listening thing on an
//! appliance to secure and keep alive; the file needs nothing, survives the daemon's
//! death, and is readable with `jq` by anyone allowed into the state directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::state::{self, Status};
use crate::spool::{MailboxState, MessageState, Spool};

/// Skipped and failed items listed per mailbox when read from the spool of a stopped
/// daemon; the rest are counted.
pub const MAX_PROBLEMS: usize = 1000;

/// The same, for the running daemon, which keeps them for every mailbox in memory and in
/// `status.json`: with thousands of mailboxes, a thousand each would be megabytes to keep
/// and rewrite. The counts stay exact; every item stays in the spool, listed in full
/// (up to [`MAX_PROBLEMS`]) by `cutover report` once the daemon is stopped.
pub const LIVE_PROBLEMS: usize = 20;

/// One mailbox as `status` and `report` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxRow {
    pub mailbox: String,
    pub status: String,
    pub items_synced: u64,
    pub items_skipped: u64,
    pub items_failed: u64,
    pub bytes: u64,
    pub last_sync_unix: Option<i64>,
    pub last_error: Option<String>,
    pub status_since_unix: i64,
    /// Seconds spent in each status, including the current stretch.
    pub seconds_in_status: BTreeMap<String, u64>,
    pub passes: u64,
    pub cutover_since_unix: Option<i64>,
    pub complete_after_unix: Option<i64>,
    pub completed_unix: Option<i64>,
    pub problems: Vec<Problem>,
    /// Problems beyond [`MAX_PROBLEMS`] (or [`LIVE_PROBLEMS`]), not listed.
    pub problems_omitted: u64,
    /// When `seconds_in_status` was counted: the daemon rewrites a row only when it
    /// changes, and a reader adds the time since to the current status (see
    /// [`MailboxRow::age_to`]).
    #[serde(default)]
    pub as_of_unix: i64,
    /// When the notice of `[notify] before` reached the source INBOX.
    #[serde(default)]
    pub notice_delivered_unix: Option<i64>,
    /// When the welcome of `[notify] after` reached the destination INBOX.
    #[serde(default)]
    pub welcome_delivered_unix: Option<i64>,
}

/// A message that is not (yet) at the destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub folder: String,
    pub uidvalidity: u32,
    pub uid: u32,
    /// `skipped` (deliberately, for good), `failed` (retried later), or `notice`
    /// (copied, but the admin should look: the text says why).
    pub state: String,
    pub reason: String,
}

/// Every mailbox's row, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub written_unix: i64,
    /// The daemon's pid, or 0 when read from the spool of a stopped daemon.
    pub pid: u32,
    /// The daemon's start-up reading of the spool (every mailbox's skipped and failed
    /// messages), while it runs: mailboxes read so far, of how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_scan: Option<ScanProgress>,
    /// The watched domains' MX state (`[cutover] domains`), from the running daemon.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<crate::cutover::view::DomainView>,
    /// Shared: the daemon rebuilds only the rows that changed, and a new snapshot for the
    /// status page costs a pointer per unchanged mailbox, not a copy of its problems.
    pub mailboxes: Vec<Arc<MailboxRow>>,
}

/// How far a scan over the mailboxes got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanProgress {
    pub done: usize,
    pub total: usize,
}

/// `<spool>/status.json`.
pub fn snapshot_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join("status.json")
}

impl MailboxRow {
    pub fn new(st: &MailboxState, problems: (Vec<Problem>, u64), now: i64) -> MailboxRow {
        let mut seconds = st.seconds_in_status.clone();
        if !st.status.is_empty() {
            seconds.insert(st.status.clone(), state::seconds_in(st, &st.status, now));
        }
        MailboxRow {
            mailbox: st.id.clone(),
            status: st.status.clone(),
            items_synced: st.items_synced,
            items_skipped: st.items_skipped,
            items_failed: st.items_failed,
            bytes: st.bytes,
            last_sync_unix: st.last_sync_unix,
            last_error: st.last_error.clone(),
            status_since_unix: st.status_since_unix,
            seconds_in_status: seconds,
            passes: st.passes,
            cutover_since_unix: st.cutover_since_unix,
            complete_after_unix: st.complete_after_unix,
            completed_unix: st.completed_unix,
            problems: problems.0,
            problems_omitted: problems.1,
            as_of_unix: now,
            notice_delivered_unix: None,
            welcome_delivered_unix: None,
        }
    }

    /// Counts the time from `as_of_unix` to `now` in the current status.
    pub fn age_to(&mut self, now: i64) {
        let extra = now.saturating_sub(self.as_of_unix);
        if extra > 0 && self.as_of_unix > 0 && !self.status.is_empty() {
            *self
                .seconds_in_status
                .entry(self.status.clone())
                .or_default() += extra as u64;
            self.as_of_unix = now;
        }
    }

    /// The row with the delivery times of the user's letters, from the spool.
    pub fn with_letters(mut self, spool: &Spool) -> MailboxRow {
        let at = |kind: &str| {
            spool
                .notified(&self.mailbox, kind)
                .ok()
                .flatten()
                .and_then(|n| n.delivered_unix)
        };
        self.notice_delivered_unix = at("before");
        self.welcome_delivered_unix = at("after");
        self
    }
}

/// The skipped and failed messages of a mailbox (at most `max`, and how many more).
pub fn problems(spool: &Spool, mailbox: &str, max: usize) -> (Vec<Problem>, u64) {
    let mut out = Vec::new();
    let mut omitted = 0;
    let folders = match spool.folders(mailbox) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(mailbox, error = %e, "cannot list the spooled folders");
            return (out, 0);
        }
    };
    for folder in folders {
        for uv in spool.generations(mailbox, &folder.name).unwrap_or_default() {
            for rec in spool
                .messages(mailbox, &folder.name, uv)
                .unwrap_or_default()
            {
                let (state, reason) = match rec.state {
                    // cutover's own notice at the source: not the user's, not a problem.
                    MessageState::Skipped { reason }
                        if reason != crate::spool::OWN_NOTICE_REASON =>
                    {
                        ("skipped", reason)
                    }
                    MessageState::Failed {
                        reason,
                        attempts,
                        retry_after,
                        ..
                    } => {
                        let next = if attempts >= crate::spool::MAX_ATTEMPTS {
                            "not retried by itself any more: `cutover retry-errors` sends it again"
                                .to_string()
                        } else {
                            match chrono::DateTime::from_timestamp(retry_after, 0) {
                                Some(t) if retry_after > 0 => {
                                    format!("next try after {}", t.format("%Y-%m-%d %H:%M:%S UTC"))
                                }
                                _ => "tried again on the next pass".to_string(),
                            }
                        };
                        (
                            "failed",
                            format!("{reason} (after {attempts} attempts; {next})"),
                        )
                    }
                    _ => continue,
                };
                if out.len() >= max {
                    omitted += 1;
                    continue;
                }
                out.push(Problem {
                    folder: folder.name.clone(),
                    uidvalidity: uv,
                    uid: rec.uid,
                    state: state.into(),
                    reason,
                });
            }
        }
    }
    // Notices (a message that may be at the destination twice) come with the problems:
    // the line names its folder and UID.
    for (_, text) in spool.notices(mailbox).unwrap_or_default() {
        if out.len() >= max {
            omitted += 1;
            continue;
        }
        out.push(Problem {
            folder: String::new(),
            uidvalidity: 0,
            uid: 0,
            state: "notice".into(),
            reason: text,
        });
    }
    (out, omitted)
}

/// The rows of a stopped daemon, read from the spool: every mailbox it knows, plus the
/// mailboxes of the CSV (`expected`) it has never seen, as `Queued`.
pub fn from_spool(spool: &Spool, expected: &[String]) -> anyhow::Result<Snapshot> {
    let now = chrono::Utc::now().timestamp();
    let mut states = spool.mailboxes()?;
    for m in expected {
        // An older spool may know the mailbox under other capitals (see
        // `accounts::adopt_spool_ids`): it is the same mailbox, not a new one.
        if !states
            .iter()
            .any(|s| s.id.to_lowercase() == m.to_lowercase())
        {
            states.push(MailboxState {
                id: m.clone(),
                status: Status::Queued.as_str().into(),
                ..Default::default()
            });
        }
    }
    let mut rows: Vec<MailboxRow> = states
        .iter()
        .map(|st| {
            MailboxRow::new(st, problems(spool, &st.id, MAX_PROBLEMS), now).with_letters(spool)
        })
        .collect();
    rows.sort_by(|a, b| a.mailbox.cmp(&b.mailbox));
    Ok(Snapshot {
        written_unix: now,
        pid: 0,
        spool_scan: None,
        domains: Vec::new(),
        mailboxes: rows.into_iter().map(Arc::new).collect(),
    })
}

/// Writes the snapshot atomically: readers see the old file or the new one, never half.
pub fn write_snapshot(path: &Path, snap: &Snapshot) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let data = serde_json::to_vec_pretty(snap).map_err(std::io::Error::other)?;
    // Every mailbox's errors and skipped messages: for the service user only.
    super::files::write(&tmp, &data)?;
    std::fs::rename(&tmp, path)
}

pub fn read_snapshot(path: &Path) -> anyhow::Result<Snapshot> {
    let data = std::fs::read(path)?;
    Ok(serde_json::from_slice(&data)?)
}

/// `2026-11-26 09:30:00Z`, or `-`.
pub fn time(ts: Option<i64>) -> String {
    ts.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|d| d.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

/// The table `cutover status` prints.
pub fn table(snap: &Snapshot) -> String {
    let mut s = format!(
        "{:<32} {:<18} {:>8} {:>8} {:>7} {:>12}  {:<20}  {}\n",
        "mailbox", "status", "items", "skipped", "failed", "bytes", "last sync", "error"
    );
    for r in &snap.mailboxes {
        s.push_str(&format!(
            "{:<32} {:<18} {:>8} {:>8} {:>7} {:>12}  {:<20}  {}\n",
            r.mailbox,
            r.status,
            r.items_synced,
            r.items_skipped,
            r.items_failed,
            r.bytes,
            time(r.last_sync_unix),
            r.last_error.as_deref().unwrap_or("")
        ));
    }
    let letters: Vec<&MailboxRow> = snap
        .mailboxes
        .iter()
        .filter(|r| r.notice_delivered_unix.is_some() || r.welcome_delivered_unix.is_some())
        .map(|r| &**r)
        .collect();
    if !letters.is_empty() {
        s.push_str(&format!(
            "\n{:<32} {:<20}  {:<20}\n",
            "letters to the users", "notice (before)", "welcome (after)"
        ));
        for r in letters {
            s.push_str(&format!(
                "{:<32} {:<20}  {:<20}\n",
                r.mailbox,
                time(r.notice_delivered_unix),
                time(r.welcome_delivered_unix)
            ));
        }
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &snap.mailboxes {
        *counts.entry(r.status.as_str()).or_default() += 1;
    }
    s.push_str(&format!(
        "\n{}\n",
        summary_line(&counts, snap.mailboxes.len())
    ));
    s
}

/// `3 mailboxes: 2 Synced, 1 Syncing`.
pub fn summary_line(counts: &BTreeMap<&str, usize>, total: usize) -> String {
    let parts: Vec<String> = Status::ALL
        .iter()
        .filter_map(|st| counts.get(st.as_str()).map(|n| format!("{n} {st}")))
        .collect();
    format!("{total} mailboxes: {}", parts.join(", "))
}

/// The CSV `cutover report --csv` writes: one header, then a `mailbox` row per mailbox and
/// an `item` row per skipped or failed message. One file with a `row_type` column rather
/// than two files, so it can be mailed as is and filtered in a spreadsheet.
pub fn write_csv(snap: &Snapshot, out: impl Write) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    let mut header: Vec<String> = [
        "row_type",
        "mailbox",
        "status",
        "items_synced",
        "items_skipped",
        "items_failed",
        "bytes",
        "last_sync_utc",
        "last_error",
        "passes",
        "cutover_since_utc",
        "completed_utc",
        "notice_delivered_utc",
        "welcome_delivered_utc",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(Status::ALL.iter().map(|s| format!("seconds_{s}")));
    header.extend(
        ["folder", "uidvalidity", "uid", "item_state", "reason"]
            .iter()
            .map(|s| s.to_string()),
    );
    w.write_record(&header)?;
    let blank_item = ["", "", "", "", ""];
    for r in &snap.mailboxes {
        let mut rec: Vec<String> = vec![
            "mailbox".into(),
            r.mailbox.clone(),
            r.status.clone(),
            r.items_synced.to_string(),
            r.items_skipped.to_string(),
            r.items_failed.to_string(),
            r.bytes.to_string(),
            opt_time(r.last_sync_unix),
            r.last_error.clone().unwrap_or_default(),
            r.passes.to_string(),
            opt_time(r.cutover_since_unix),
            opt_time(r.completed_unix),
            opt_time(r.notice_delivered_unix),
            opt_time(r.welcome_delivered_unix),
        ];
        rec.extend(Status::ALL.iter().map(|s| {
            r.seconds_in_status
                .get(s.as_str())
                .copied()
                .unwrap_or(0)
                .to_string()
        }));
        rec.extend(blank_item.iter().map(|s| s.to_string()));
        w.write_record(&rec)?;
    }
    let mailbox_cols = header.len() - blank_item.len() - 2;
    for r in &snap.mailboxes {
        let items = r.problems.iter().map(|p| {
            (
                p.folder.clone(),
                p.uidvalidity.to_string(),
                p.uid.to_string(),
                p.state.clone(),
                p.reason.clone(),
            )
        });
        let omitted = (r.problems_omitted > 0).then(|| {
            (
                String::new(),
                String::new(),
                String::new(),
                "omitted".to_string(),
                format!("{} more items not listed", r.problems_omitted),
            )
        });
        for (folder, uv, uid, state, reason) in items.chain(omitted) {
            let mut rec = vec!["item".to_string(), r.mailbox.clone()];
            rec.extend(std::iter::repeat_n(String::new(), mailbox_cols));
            rec.extend([folder, uv, uid, state, reason]);
            w.write_record(&rec)?;
        }
    }
    w.flush()?;
    Ok(())
}

fn opt_time(ts: Option<i64>) -> String {
    match ts {
        Some(_) => time(ts),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mailbox: &str, status: Status, problems: Vec<Problem>) -> MailboxRow {
        let st = MailboxState {
            id: mailbox.into(),
            status: status.as_str().into(),
            items_synced: 5,
            bytes: 1234,
            last_sync_unix: Some(1_700_000_000),
            status_since_unix: 1_700_000_000,
            ..Default::default()
        };
        MailboxRow::new(&st, (problems, 0), 1_700_000_060)
    }

    #[test]
    fn csv_has_mailbox_and_item_rows() {
        let snap = Snapshot {
            written_unix: 0,
            pid: 0,
            spool_scan: None,
            domains: Vec::new(),
            mailboxes: vec![
                row("a@x.test", Status::Synced, vec![]),
                row(
                    "b@x.test",
                    Status::Failed,
                    vec![Problem {
                        folder: "INBOX, old".into(),
                        uidvalidity: 7,
                        uid: 42,
                        state: "skipped".into(),
                        reason: "too big".into(),
                    }],
                ),
            ]
            .into_iter()
            .map(Arc::new)
            .collect(),
        };
        let mut out = Vec::new();
        write_csv(&snap, &mut out).unwrap();
        let mut r = csv::Reader::from_reader(out.as_slice());
        let header = r.headers().unwrap().clone();
        let rows: Vec<csv::StringRecord> = r.records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 3);
        let col = |name: &str| header.iter().position(|h| h == name).unwrap();
        assert_eq!(&rows[0][col("row_type")], "mailbox");
        assert_eq!(&rows[0][col("status")], "Synced");
        assert_eq!(&rows[0][col("seconds_Synced")], "60");
        assert_eq!(&rows[0][col("last_sync_utc")], "2023-11-14 22:13:20Z");
        assert_eq!(&rows[2][col("row_type")], "item");
        assert_eq!(&rows[2][col("mailbox")], "b@x.test");
        assert_eq!(&rows[2][col("folder")], "INBOX, old");
        assert_eq!(&rows[2][col("uid")], "42");
        assert_eq!(&rows[2][col("reason")], "too big");
        for row in &rows {
            assert_eq!(row.len(), header.len());
        }
        let t = table(&snap);
        assert!(t.contains("a@x.test") && t.contains("Failed"), "{t}");
        assert!(t.contains("2 mailboxes: 1 Synced, 1 Failed"), "{t}");
    }
}
