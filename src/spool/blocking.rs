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
