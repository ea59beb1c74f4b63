//! The byte budget of message bodies held in memory, shared by every connection.
//!
//! Each source connection holds the body it is receiving, each destination connection the
//! batch (or two, pipelined) it is sending. Without a common bound, 8 + 8 connections and
//! 35 MB messages could hold more than 800 MB at once, far beyond an appliance's
//! `MemoryMax`. So a body's bytes are taken from this budget before it is allocated: the
//! source's framer asks for it when a `BODY[]` literal is announced, the upstream before it
//! reads a batch's bodies from the spool. A connection that finds the budget spent waits
//! (the server's TCP window fills meanwhile; nothing is lost).
//!
//! A message larger than the whole budget takes all of it: it waits until nothing else is
//! held, then goes alone. Memory is then bounded by that message, and a mailbox is never
//! stuck behind a limit it can never meet.
//!
//! A holder must never wait for more budget while it keeps some: two such holders could
//! wait for each other for ever. The upstream settles its batch in flight before it waits
//! (see `upstream::append_pending`); the source takes one literal's share per response.
//!
//! Not counted here, and part of the base instead: the spool's cache of bodies just
//! spooled (a fixed budget of its own, `spool/recent.rs`), and the rare body of the
//! destination that recovery fetches to compare after an interrupted session (one at a
//! time). A body whose FLAGS the server sends in a later response is kept until they come
//! and no longer counted meanwhile (Dovecot sends them together).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The largest budget: tokio's semaphore counts permits in `u32` per acquisition.
pub const MAX_BUDGET: u64 = u32::MAX as u64;

/// A shared byte budget (cheap to clone: every clone is the same budget).
#[derive(Clone, Debug)]
pub struct Budget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sem: Arc<Semaphore>,
    total: u32,
    /// Bytes held now, the most ever held at once, and all ever taken (for the tests and
    /// the benchmark: they show that the bodies went through the budget).
    held: AtomicU64,
    peak: AtomicU64,
    taken: AtomicU64,
}

/// Bytes of the budget held; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    budget: Arc<Inner>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

impl Permit {
    /// The bytes this permit holds of the budget (at most the budget).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Budget {
    /// A budget of `bytes` (at least 1, at most [`MAX_BUDGET`]).
    pub fn new(bytes: u64) -> Budget {
        let total = bytes.clamp(1, MAX_BUDGET) as u32;
        Budget {
            inner: Arc::new(Inner {
                sem: Arc::new(Semaphore::new(total as usize)),
                total,
                held: AtomicU64::new(0),
                peak: AtomicU64::new(0),
                taken: AtomicU64::new(0),
            }),
        }
    }

    /// The budget's size in bytes.
    pub fn total(&self) -> u64 {
        self.inner.total as u64
    }

    /// What a body of `bytes` takes: itself, or the whole budget if it is larger (then it
    /// goes alone); at least 1, so that an empty body still waits its turn.
    fn share(&self, bytes: u64) -> u32 {
        bytes.clamp(1, self.inner.total as u64) as u32
    }

    /// Takes `bytes`, waiting until they are free.
    pub async fn take(&self, bytes: u64) -> Permit {
        let n = self.share(bytes);
        let permit = self
            .inner
            .sem
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the budget's semaphore is never closed");
        self.held(permit, n, bytes)
    }

    /// Takes `bytes` if they are free now.
    pub fn try_take(&self, bytes: u64) -> Option<Permit> {
        let n = self.share(bytes);
        let permit = self.inner.sem.clone().try_acquire_many_owned(n).ok()?;
        Some(self.held(permit, n, bytes))
    }

    fn held(&self, permit: OwnedSemaphorePermit, n: u32, bytes: u64) -> Permit {
        let n = n as u64;
        let now = self.inner.held.fetch_add(n, Ordering::SeqCst) + n;
        self.inner.peak.fetch_max(now, Ordering::SeqCst);
        self.inner.taken.fetch_add(bytes, Ordering::SeqCst);
        Permit {
            _permit: permit,
            bytes: n,
            budget: self.inner.clone(),
        }
    }

    /// Bytes held now.
    pub fn held_now(&self) -> u64 {
        self.inner.held.load(Ordering::SeqCst)
    }

    /// The most bytes held at once so far.
    pub fn peak(&self) -> u64 {
        self.inner.peak.load(Ordering::SeqCst)
    }

    /// The bytes of every body taken so far (each counted at its own size, also when it
    /// was larger than the budget).
    pub fn taken(&self) -> u64 {
        self.inner.taken.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_for_room_and_a_larger_body_goes_alone() {
        let b = Budget::new(100);
        let a = b.take(60).await;
        assert!(b.try_take(50).is_none(), "60 + 50 is over 100");
        let c = b.try_take(40).expect("60 + 40 fits");
        assert_eq!(b.held_now(), 100);
        drop(c);
        // Larger than the budget: it waits for everything, then holds all of it.
        let big = {
            let b = b.clone();
            tokio::spawn(async move { b.take(1000).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!big.is_finished(), "must wait while 60 bytes are held");
        drop(a);
        let big = tokio::time::timeout(Duration::from_secs(5), big)
            .await
            .expect("goes once nothing else is held")
            .unwrap();
        assert_eq!(big.bytes(), 100);
        assert_eq!(b.held_now(), 100);
        assert!(b.try_take(1).is_none());
        drop(big);
        assert_eq!(b.held_now(), 0);
        assert_eq!(b.peak(), 100);
        assert_eq!(b.taken(), 60 + 40 + 1000);
    }
}
