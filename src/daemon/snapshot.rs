//! Writes `status.json` (see [`super::report`]) on a thread of its own.
//!
//! With thousands of mailboxes the file is megabytes: serialising and writing it on the
//! runtime's only thread every few seconds stalled every connection meanwhile. So the
//! daemon loop hands over only the rows that changed (copies of a few small fields; the
//! problem lists are shared, not copied), and this thread keeps each mailbox's row
//! serialised, re-serialises the changed ones, and writes the whole file (compact JSON,
//! temporary file + rename). Nothing changed, nothing is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::report::{MailboxRow, Problem, ScanProgress};
use crate::spool::MailboxState;

/// A mailbox row that changed.
pub struct RowUpdate {
    pub st: MailboxState,
    pub problems: Arc<(Vec<Problem>, u64)>,
}

enum Msg {
    Write {
        rows: Vec<RowUpdate>,
        now: i64,
        scan: Option<ScanProgress>,
    },
}

/// What the writer did, for the tests and the benchmark.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Files written.
    pub writes: AtomicU64,
    /// Size of the last one.
    pub last_bytes: AtomicU64,
}

/// The writer thread, and the way to it.
pub struct SnapshotWriter {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<WriterStats>,
}

impl SnapshotWriter {
    /// Starts the thread that writes `path`.
    pub fn start(path: PathBuf) -> std::io::Result<SnapshotWriter> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let stats = Arc::new(WriterStats::default());
        let thread = {
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("status-writer".into())
                .spawn(move || run(&path, rx, &stats))?
        };
        Ok(SnapshotWriter {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    /// Queues a new file with `rows` changed (and the others as they were), as of `now`
    /// (unix seconds). Returns at once.
    pub fn write(&self, rows: Vec<RowUpdate>, now: i64, scan: Option<ScanProgress>) {
        if let Some(tx) = &self.tx {
            // The thread ends only when this side is dropped.
            let _ = tx.send(Msg::Write { rows, now, scan });
        }
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Waits until everything queued is written (the daemon stops).
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(path: &Path, rx: mpsc::Receiver<Msg>, stats: &WriterStats) {
    let mut rows: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let pid = std::process::id();
    while let Ok(msg) = rx.recv() {
        let Msg::Write {
            rows: changed,
            mut now,
            mut scan,
        } = msg;
        let mut apply = |changed: Vec<RowUpdate>, now: i64| {
            for u in changed {
                let row = MailboxRow::new(&u.st, (*u.problems).clone(), now);
                match serde_json::to_vec(&row) {
                    Ok(json) => {
                        rows.insert(u.st.id.clone(), json);
                    }
                    Err(e) => tracing::warn!(mailbox = %u.st.id, error = %e,
                        "cannot serialise the mailbox's status row"),
                }
            }
        };
        apply(changed, now);
        // Writes queued meanwhile are taken together: one file for all of them.
        while let Ok(Msg::Write {
            rows: more,
            now: n,
            scan: s,
        }) = rx.try_recv()
        {
            apply(more, n);
            now = n;
            scan = s;
        }
        match write_file(path, &rows, now, pid, scan) {
            Ok(n) => {
                stats.writes.fetch_add(1, Ordering::SeqCst);
                stats.last_bytes.store(n as u64, Ordering::SeqCst);
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot write the status snapshot")
            }
        }
    }
}

/// The file as [`super::report::Snapshot`] reads it, from the rows already serialised.
fn write_file(
    path: &Path,
    rows: &BTreeMap<String, Vec<u8>>,
    now: i64,
    pid: u32,
    scan: Option<ScanProgress>,
) -> std::io::Result<usize> {
    let size: usize = rows.values().map(|r| r.len() + 1).sum();
    let mut data = Vec::with_capacity(size + 128);
    data.extend_from_slice(format!("{{\"written_unix\":{now},\"pid\":{pid},").as_bytes());
    if let Some(scan) = scan {
        data.extend_from_slice(b"\"spool_scan\":");
        serde_json::to_writer(&mut data, &scan).map_err(std::io::Error::other)?;
        data.push(b',');
    }
    data.extend_from_slice(b"\"mailboxes\":[");
    for (i, row) in rows.values().enumerate() {
        if i > 0 {
            data.push(b',');
        }
        data.extend_from_slice(row);
    }
    data.extend_from_slice(b"]}\n");
    let tmp = path.with_extension("json.tmp");
    // Every mailbox's errors and skipped messages: for the service user only.
    super::files::write(&tmp, &data)?;
    std::fs::rename(&tmp, path)?;
    Ok(data.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::report::read_snapshot;

    fn update(id: &str, status: &str) -> RowUpdate {
        RowUpdate {
            st: MailboxState {
                id: id.into(),
                status: status.into(),
                status_since_unix: 1_700_000_000,
                ..Default::default()
            },
            problems: Arc::new((Vec::new(), 3)),
        }
    }

    #[test]
    fn keeps_unchanged_rows_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let w = SnapshotWriter::start(path.clone()).unwrap();
        w.write(
            vec![update("b@x", "Queued"), update("a@x", "Syncing")],
            1_700_000_010,
            Some(ScanProgress { done: 0, total: 2 }),
        );
        w.write(vec![update("b@x", "Synced")], 1_700_000_020, None);
        w.finish();
        let snap = read_snapshot(&path).unwrap();
        assert_eq!(snap.written_unix, 1_700_000_020);
        assert_eq!(snap.spool_scan, None);
        let ids: Vec<(&str, &str)> = snap
            .mailboxes
            .iter()
            .map(|r| (r.mailbox.as_str(), r.status.as_str()))
            .collect();
        assert_eq!(ids, [("a@x", "Syncing"), ("b@x", "Synced")]);
        // The unchanged row keeps the time it was counted at.
        assert_eq!(snap.mailboxes[0].as_of_unix, 1_700_000_010);
        assert_eq!(snap.mailboxes[0].seconds_in_status["Syncing"], 10);
        assert_eq!(snap.mailboxes[1].problems_omitted, 3);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "compact: {text}");
    }
}
