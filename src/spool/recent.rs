//! Bodies just spooled, kept in memory (within a byte budget) for the upstream.
//!
//! The source writes every body to the spool, and the upstream used to read each one
//! back moments later to APPEND it: a system call, a copy and a CRC check per message,
//! about 7 % of a copy's CPU. The source now also hands the body it already holds to
//! this cache, and the upstream takes it from here when it is still there.
//!
//! The cache is an optimisation, never the record: a body is in it only after it is in
//! the spool, and anything missing (not kept for lack of room, evicted, taken already by
//! a message with the same content) is read from the spool as before.
//!
//! A body is kept only if it fits the budget. When the source runs ahead of a slower
//! destination, that keeps the bodies the upstream needs next rather than the newest
//! ones, which it would reach last. A body nobody takes (a message skipped, a second
//! copy of the same content) leaves after [`STALE`], so it cannot hold the budget.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::BodyHash;

/// A kept body nobody took within this time makes room for new ones.
const STALE: Duration = Duration::from_secs(30);

/// The bodies kept, and how often the upstream found what it looked for.
#[derive(Debug)]
pub(super) struct Recent {
    budget: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each body with the moment it was kept.
    bodies: HashMap<BodyHash, (Instant, Vec<u8>)>,
    /// Insertion order, for eviction; may name bodies already taken (their moment no
    /// longer matches, or they are gone).
    order: VecDeque<(Instant, BodyHash)>,
    bytes: usize,
}

impl Recent {
    /// A cache of at most `budget` bytes of bodies (0 keeps nothing).
    pub(super) fn new(budget: usize) -> Recent {
        Recent {
            budget,
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Keeps `body` (whose hash is `hash`) if it fits, after dropping stale ones. True
    /// if this call kept it.
    pub(super) fn keep(&self, hash: BodyHash, body: Vec<u8>) -> bool {
        if body.len() > self.budget {
            return false;
        }
        let mut inner = lock(&self.inner);
        if inner.bodies.contains_key(&hash) {
            return false;
        }
        let now = Instant::now();
        while inner.bytes + body.len() > self.budget {
            let Some(&(at, old)) = inner.order.front() else {
                return false;
            };
            let live = inner.bodies.get(&old).is_some_and(|(kept, _)| *kept == at);
            if live && now.duration_since(at) < STALE {
                return false;
            }
            inner.order.pop_front();
            if live {
                let (_, b) = inner.bodies.remove(&old).expect("live entry");
                inner.bytes -= b.len();
            }
        }
        inner.bytes += body.len();
        inner.bodies.insert(hash, (now, body));
        inner.order.push_back((now, hash));
        // Entries taken leave their place in `order` behind; keep it from growing
        // without bound when most bodies are taken (the usual case).
        if inner.order.len() > 2 * inner.bodies.len() + 64 {
            let Inner { bodies, order, .. } = &mut *inner;
            order.retain(|(at, h)| bodies.get(h).is_some_and(|(kept, _)| kept == at));
        }
        true
    }

    /// Takes the body with this hash out of the cache, if it is there.
    pub(super) fn take(&self, hash: &BodyHash) -> Option<Vec<u8>> {
        let mut inner = lock(&self.inner);
        let body = inner.bodies.remove(hash).map(|(_, b)| b);
        match &body {
            Some(b) => {
                inner.bytes -= b.len();
                self.hits.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
            }
        }
        body
    }

    /// (bodies taken from memory, bodies that had to be read from the spool).
    pub(super) fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        lock(&self.inner).bytes
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> BodyHash {
        [n; 32]
    }

    #[test]
    fn keeps_within_budget_and_gives_each_body_once() {
        let r = Recent::new(100);
        assert!(r.keep(h(1), vec![1; 60]));
        assert!(!r.keep(h(2), vec![2; 60])); // no room: not kept
        assert!(!r.keep(h(1), vec![1; 60])); // kept already
        assert_eq!(r.bytes(), 60);
        assert_eq!(r.take(&h(2)), None);
        assert_eq!(r.take(&h(1)), Some(vec![1; 60]));
        assert_eq!(r.take(&h(1)), None);
        assert_eq!(r.bytes(), 0);
        r.keep(h(2), vec![2; 100]);
        assert_eq!(r.take(&h(2)).map(|b| b.len()), Some(100));
        assert!(!r.keep(h(3), vec![3; 101])); // larger than the whole budget
        assert_eq!(r.take(&h(3)), None);
        assert_eq!(r.stats(), (2, 3));
    }

    #[test]
    fn order_does_not_grow_with_taken_bodies() {
        let r = Recent::new(1000);
        for n in 0..=255u8 {
            for m in 0..4u8 {
                let mut hash = h(n);
                hash[0] = m;
                r.keep(hash, vec![n; 10]);
                assert!(r.take(&hash).is_some());
            }
        }
        assert!(lock(&r.inner).order.len() <= 64 + 1);
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn bodies_taken_do_not_block_new_ones() {
        let r = Recent::new(100);
        r.keep(h(1), vec![1; 80]);
        assert!(r.take(&h(1)).is_some());
        r.keep(h(1), vec![1; 80]); // kept again: the first entry in order is a ghost
        r.keep(h(2), vec![2; 20]);
        assert_eq!(r.bytes(), 100);
        assert!(r.take(&h(1)).is_some());
        r.keep(h(3), vec![3; 80]);
        assert!(r.take(&h(3)).is_some());
        assert!(r.take(&h(2)).is_some());
    }

    #[test]
    fn stale_bodies_make_room() {
        let r = Recent::new(100);
        r.keep(h(1), vec![1; 80]);
        // Age the entry as if nobody took it for longer than STALE.
        {
            let mut inner = lock(&r.inner);
            let old = Instant::now()
                .checked_sub(STALE + Duration::from_secs(1))
                .expect("clock far enough from its origin");
            inner.order.front_mut().expect("one entry").0 = old;
            inner.bodies.get_mut(&h(1)).expect("kept").0 = old;
        }
        r.keep(h(2), vec![2; 80]);
        assert_eq!(r.take(&h(1)), None);
        assert_eq!(r.take(&h(2)).map(|b| b.len()), Some(80));
    }
}
