//! Spool work run off the async runtime's thread.
//!
//! Most spool calls are short, but some wait for the disk (an fsync before records are
//! written or a batch is claimed) or decode thousands of records. On the runtime's
//! thread that time is taken from every session of every mailbox; on a blocking thread
//! it costs only the task that asked.

use super::{Result, Spool, SpoolError};

impl Spool {
    /// Runs `f` on a clone of this spool on tokio's blocking pool, and waits for it.
    pub async fn run_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Spool) -> Result<T> + Send + 'static,
    {
        let spool = self.clone();
        match tokio::task::spawn_blocking(move || f(&spool)).await {
            Ok(r) => r,
            Err(e) => Err(SpoolError::Io(std::io::Error::other(format!(
                "spool task failed: {e}"
            )))),
        }
    }
}

/// Bodies from this size up are hashed and written with the runtime's other tasks
/// handed to another thread ([`in_place_if_large`]). blake3 hashes 256 KiB in well under
/// a millisecond, and writing it lands in the page cache: below this size the hand-over
/// would cost more than the stall it saves.
pub const IN_PLACE_BYTES: usize = 256 * 1024;

/// Runs `f`, which works on a body of `len` bytes, where it is called; for a large body
/// the worker's other tasks move to another thread first (`block_in_place`), so one
/// 35 MB message does not stall every session of every mailbox while it is hashed and
/// written.
///
/// For callbacks that cannot await (the FETCH callback hands each body over as it comes
/// off the wire). On a current-thread runtime, where tasks cannot move, `f` just runs.
pub fn in_place_if_large<T>(len: usize, f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi =
        || Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    // The size first: most bodies are small, and they need no look at the runtime.
    if len >= IN_PLACE_BYTES && multi() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Ticks of a task that wakes every 10 ms, counted while `len`'s work blocks its
    /// caller's thread for 300 ms on a runtime with one worker.
    fn ticks_during_work(len: usize) -> u32 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ticks = Arc::new(AtomicU32::new(0));
            let t = ticks.clone();
            let ticker = tokio::spawn(async move {
                for _ in 0..1000 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    t.fetch_add(1, Ordering::Relaxed);
                }
            });
            // Let the ticker start on the worker before the work takes the thread.
            tokio::time::sleep(Duration::from_millis(30)).await;
            let worker = tokio::spawn(async move {
                let before = ticks.load(Ordering::Relaxed);
                in_place_if_large(len, || std::thread::sleep(Duration::from_millis(300)));
                ticks.load(Ordering::Relaxed) - before
            });
            let during = worker.await.unwrap();
            ticker.abort();
            during
        })
    }

    #[test]
    fn a_large_body_does_not_stall_the_other_tasks() {
        // 300 ms of work: the ticker, moved to another thread, ticks about 30 times.
        let during = ticks_during_work(IN_PLACE_BYTES);
        assert!(
            during >= 10,
            "only {during} ticks while a large body was handled"
        );
    }

    #[test]
    fn a_small_body_is_handled_where_it_is() {
        // Worked on in place: the one worker is busy, the ticker cannot run meanwhile.
        assert_eq!(ticks_during_work(1024), 0);
    }

    #[tokio::test]
    async fn runs_on_a_current_thread_runtime_too() {
        assert_eq!(in_place_if_large(IN_PLACE_BYTES * 4, || 7), 7);
    }
}
