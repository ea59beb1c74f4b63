//! Compaction: compressing the bodies that were spooled raw, when the machine is idle.
//!
//! # Why later
//!
//! While a mailbox is drained, the appliance's CPU is shared with the two servers (and,
//! on a small box, the TLS of both connections). Compressing every body as it arrives
//! costs about a third of cutover's own CPU during a copy, and that time comes out of
//! the copy. The body's bytes are on disk either way; compression only makes them
//! smaller. So bodies are spooled as they come (with a CRC-32), and a background thread
//! at the lowest priority (nice 19) compresses them afterwards, once no body was spooled
//! for a moment, stopping whenever the source spools again. Between delta passes, which
//! is most of an appliance's life, the machine is idle nearly all the time.
//!
//! # How
//!
//! A sealed segment (one no process appends to any more) that holds raw bodies is
//! rewritten: each body the index still points at is compressed and appended to the
//! segment being written, the index is pointed at the new copy, and once every body of
//! the old segment has moved and the index is durable, the old file is deleted. Bodies
//! the index does not point at (a copy two tasks spooled at once, a body spooled just
//! before a crash) are dropped on the way.
//!
//! Crash safety follows from the order: a new copy is synced before the index points at
//! it, and the old segment is deleted only after the index is flushed. A crash at any
//! point leaves every index entry pointing at a complete copy; the worst case is a
//! segment that is rewritten again by the next run. A reader that looked a body up just
//! before it moved and opens the old segment after its deletion looks it up again (see
//! [`Spool::get_body`]).

use super::{with_zstd, Result, Spool, Stored};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A segment nothing was appended to for this long is sealed, so that it can be
/// compacted while the process goes on (the daemon keeps its process for weeks).
const SEAL_AFTER: Duration = Duration::from_secs(30);

/// How often the compactor looks for work when it found none.
const POLL: Duration = Duration::from_secs(5);

/// Compaction waits until no body was spooled for this long, and stops when one is: the
/// CPU and the disk are the copy's while it runs.
const QUIET: Duration = Duration::from_secs(2);

/// The new copies are synced and indexed after this many bytes of them, so that an
/// interrupted compaction keeps most of its work.
const SYNC_EVERY: u64 = 16 * 1024 * 1024;

/// What one compaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactReport {
    /// Segments rewritten and deleted.
    pub segments: u64,
    /// Raw bodies compressed.
    pub compressed: u64,
    /// Their size before and after.
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
    /// Entries dropped because the index points elsewhere.
    pub dropped: u64,
}

impl Spool {
    /// Rewrites every sealed segment that holds raw bodies, compressing them, until done
    /// or until `stop` returns true (checked between bodies; what was done is kept).
    pub fn compact(&self, stop: &dyn Fn() -> bool) -> Result<CompactReport> {
        let mut report = CompactReport::default();
        // Bodies appended but not indexed yet are indexed first, so that "the index
        // points here" decides what is live.
        self.body_log.sync(&self.bodies)?;
        for id in self.body_log.sealed_segments()? {
            let entries = self.body_log.entries(id)?;
            if !entries.iter().any(|(_, _, stored)| *stored == Stored::Raw) {
                continue;
            }
            let mut unsynced = 0u64;
            let mut done = true;
            for (hash, loc, stored) in entries {
                if stop() {
                    done = false;
                    break;
                }
                if self.body_log.locate(&self.bodies, &hash)? != Some(loc) {
                    report.dropped += 1;
                    continue;
                }
                let Some((_, frame)) = self.body_log.read_frame(&hash, &loc, false)? else {
                    // The segment vanished under us: nobody else deletes segments.
                    return Err(std::io::Error::other(format!(
                        "body segment {id:08x} disappeared during compaction"
                    ))
                    .into());
                };
                let new_len = match stored {
                    Stored::Raw => {
                        let body = super::decode_body(&hash, stored, frame, loc.body_len)?;
                        let compressed = with_zstd(|c, _| c.compress(&body))?;
                        self.body_log
                            .append_moved(&hash, Stored::Zstd, &compressed, loc)?;
                        report.compressed += 1;
                        report.raw_bytes += loc.body_len;
                        report.compressed_bytes += compressed.len() as u64;
                        compressed.len() as u64
                    }
                    Stored::Zstd => {
                        self.body_log
                            .append_moved(&hash, Stored::Zstd, &frame, loc)?;
                        frame.len() as u64
                    }
                };
                unsynced += new_len;
                if unsynced >= SYNC_EVERY {
                    self.body_log.sync(&self.bodies)?;
                    unsynced = 0;
                }
            }
            self.body_log.sync(&self.bodies)?;
            if !done {
                break;
            }
            // The index points at the new copies on disk (the sync above wrote and synced
            // it) before the old ones go.
            self.body_log.remove_segment(id)?;
            report.segments += 1;
        }
        Ok(report)
    }
}

/// The background thread that compacts the spool while the process runs. Stopped (and
/// joined; it finishes the body at hand) when dropped.
pub struct Compactor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Compactor {
    /// Starts compacting `spool` at low priority, whenever no body was spooled for a moment.
    pub fn start(spool: Spool) -> Compactor {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("spool-compact".into())
            .spawn(move || run(&spool, &flag))
            .map_err(|e| tracing::warn!(error = %e, "cannot start the spool compactor"))
            .ok();
        Compactor { stop, thread }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn run(spool: &Spool, stop: &AtomicBool) {
    low_priority();
    let stopped = || stop.load(Ordering::SeqCst);
    let busy = || stopped() || spool.body_log.idle_for() < QUIET;
    while !stopped() {
        if let Err(e) = spool.body_log.seal_if_idle(SEAL_AFTER) {
            tracing::warn!(error = %e, spool = %spool.path().display(), "cannot seal a body segment");
        }
        if !busy() {
            match spool.compact(&busy) {
                Ok(r) if r.segments > 0 || r.compressed > 0 => tracing::info!(
                    segments = r.segments,
                    bodies = r.compressed,
                    raw_bytes = r.raw_bytes,
                    compressed_bytes = r.compressed_bytes,
                    dropped = r.dropped,
                    "spool compacted"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, spool = %spool.path().display(), "spool compaction failed; retrying later")
                }
            }
        }
        if !stopped() {
            std::thread::park_timeout(if busy() { QUIET } else { POLL });
        }
    }
}

/// Lowers the calling thread to nice 19, so that compaction only gets the CPU time
/// others leave. Not `SCHED_IDLE`: compaction holds the spool's sync lock for moments,
/// and a thread that can be starved outright would make the copy wait on that lock.
fn low_priority() {
    // SAFETY: plain syscalls on the calling thread (its kernel thread id) with valid
    // arguments.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19)
    };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the compactor's priority; compacting at normal priority"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_after_a_failed_fsync_keeps_every_body() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        spool.body_log.set_repair_backoff(Duration::ZERO);
        let bodies: Vec<Vec<u8>> = (0..20u8)
            .map(|i| {
                format!(
                    "Subject: {i}\r\n\r\n{}",
                    "body text ".repeat(50 + usize::from(i))
                )
                .into_bytes()
            })
            .collect();
        let hashes: Vec<_> = bodies.iter().map(|b| spool.put_body(b).unwrap()).collect();
        // The segment is sealed, but its fsync fails: the bodies in it are not durable.
        spool.body_log.fail_next_fsyncs(1);
        assert!(spool.body_log.seal_if_idle(Duration::ZERO).is_err());
        let sealed = spool.body_log.sealed_segments().unwrap();
        assert_eq!(sealed.len(), 1);
        // A compaction that cannot repair that now does nothing rash.
        spool.body_log.fail_next_fsyncs(1);
        assert!(spool.compact(&|| false).is_err());
        assert!(spool
            .body_log
            .dir()
            .join(format!("{:08x}.seg", sealed[0]))
            .exists());
        // Then it repairs: the bodies are written again (the first repair's own fsync
        // failed above, so its segment goes too), the failed segments are deleted.
        let report = spool.compact(&|| false).unwrap();
        assert_eq!((report.segments, report.dropped), (2, 40), "{report:?}");
        assert!(!spool
            .body_log
            .dir()
            .join(format!("{:08x}.seg", sealed[0]))
            .exists());
        // The copies are compressed once their segment is sealed.
        assert!(spool.body_log.seal_if_idle(Duration::ZERO).unwrap());
        assert_eq!(spool.compact(&|| false).unwrap().compressed, 20);
        spool.flush().unwrap();
        for (hash, body) in hashes.iter().zip(&bodies) {
            assert_eq!(&spool.get_body(hash).unwrap(), body);
        }
    }
}
