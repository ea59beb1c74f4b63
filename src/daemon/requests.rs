//! `cutover complete` and `cutover retry-errors` while the daemon runs: a request file
//! it picks up.
//!
//! The running daemon holds the spool's lock, so the command cannot change the spool
//! itself. It drops a small JSON file into `<spool>/requests/` instead (written under a
//! temporary name and renamed, so the daemon never reads half of one); the daemon reads
//! and removes every such file about once a second. A request that arrives while the
//! daemon is stopping stays there and is honoured by the next start.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What an admin asks of the running daemon.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// Final pass, then Completed (files without a kind, from older versions, are this).
    #[default]
    Complete,
    /// Make the failed messages due again now, whatever their backoff says.
    RetryErrors,
    /// Stop taking passes (a running pass stops at its next batch); kept in the spool, so
    /// a restart keeps it. With no mailbox named: the whole migration.
    Pause,
    /// Undo [`RequestKind::Pause`].
    Resume,
    /// Run a pass now instead of at the next interval.
    SyncNow,
}

impl RequestKind {
    /// The word in the file name, and in the CLI's messages.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Complete => "complete",
            RequestKind::RetryErrors => "retry",
            RequestKind::Pause => "pause",
            RequestKind::Resume => "resume",
            RequestKind::SyncNow => "sync-now",
        }
    }
}

/// A request for these mailboxes (every mailbox when empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    #[serde(default)]
    pub kind: RequestKind,
    pub mailboxes: Vec<String>,
}

fn dir(spool_dir: &Path) -> PathBuf {
    spool_dir.join("requests")
}

/// Leaves a request for the daemon; returns the file written.
pub fn submit(spool_dir: &Path, req: &Request) -> std::io::Result<PathBuf> {
    let d = dir(spool_dir);
    super::files::create_dir_all(&d)?;
    let stamp = format!(
        "{}-{}-{}",
        req.kind.as_str(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0),
        std::process::id()
    );
    let tmp = d.join(format!(".{stamp}.tmp"));
    let file = d.join(format!("{stamp}.json"));
    super::files::write(
        &tmp,
        &serde_json::to_vec(req).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, &file)?;
    Ok(file)
}

/// Reads and removes every pending request, oldest first. Unreadable files are logged
/// and removed, so one bad file does not block the others forever.
pub fn take(spool_dir: &Path) -> Vec<Request> {
    let Ok(rd) = std::fs::read_dir(dir(spool_dir)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        match std::fs::read(&f)
            .map_err(anyhow::Error::from)
            .and_then(|d| Ok(serde_json::from_slice::<Request>(&d)?))
        {
            Ok(r) => out.push(r),
            Err(e) => {
                tracing::warn!(file = %f.display(), error = %e, "ignoring a bad request file")
            }
        }
        if let Err(e) = std::fs::remove_file(&f) {
            tracing::warn!(file = %f.display(), error = %e, "cannot remove a request file");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_then_take() {
        let d = tempfile::tempdir().unwrap();
        assert!(take(d.path()).is_empty());
        let a = Request {
            kind: RequestKind::Complete,
            mailboxes: vec!["a@x.test".into()],
        };
        let all = Request {
            kind: RequestKind::RetryErrors,
            mailboxes: vec![],
        };
        submit(d.path(), &a).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        submit(d.path(), &all).unwrap();
        std::fs::write(d.path().join("requests/junk.json"), b"{").unwrap();
        // Written by an older version: no kind.
        std::fs::write(
            d.path().join("requests/complete-9.json"),
            br#"{"mailboxes":["b@x.test"]}"#,
        )
        .unwrap();
        let b = Request {
            kind: RequestKind::Complete,
            mailboxes: vec!["b@x.test".into()],
        };
        let mut got = take(d.path());
        got.sort_by_key(|r| r.mailboxes.clone());
        let mut want = vec![a, all, b];
        want.sort_by_key(|r| r.mailboxes.clone());
        assert_eq!(got, want);
        assert!(take(d.path()).is_empty());
    }
}
