//! Where message bodies are kept: append-only segment files next to the sled database,
//! indexed by the body index (`body_index.rs`).
//!
//! # Why not in sled itself
//!
//! sled 0.34 keeps every value it has written in memory, whatever `cache_capacity` says.
//! Its LRU is split into 256 shards and each shard only looks at the accesses it has
//! seen in groups of 64, so a database of a few thousand large pages (which is what
//! thousands of 2-50 KB bodies make) never evicts anything: spooling 120 MB of bodies
//! into a tree leaves 120 MB resident. The appliance has a 100 MB budget for the whole
//! daemon, so bodies go to plain files, where they cost page cache (which the kernel
//! reclaims) instead of heap.
//!
//! # Layout
//!
//! `<spool>/bodies/<segment:08x>.seg` files, each a run of entries:
//!
//! ```text
//! magic | hash (32) | frame length (u32 BE) | body length (u64 BE) | frame
//! ```
//!
//! The magic says what the frame is ([`Stored`]): `CVB1`, one zstd frame with its
//! content size and checksum; `CVR1`, the body as fetched followed by its CRC-32 (u32 BE).
//! Bodies are spooled raw while a copy runs, because compressing them then would take
//! CPU from the servers being drained, and compressed later, when the machine is idle
//! (see `compact.rs`).
//!
//! The header repeats what the index says, so a read can tell a wrong or stale index
//! entry from a good one, and the index could be rebuilt from the segments alone. Every
//! process writes to a fresh segment: a crash can leave a torn entry at the end of the
//! last segment, and never appending to it again means nobody has to find where the
//! good data stops. A segment is closed for writing at [`MAX_SEGMENT_LEN`].
//!
//! The body index (`body_index.rs`) maps a hash to a [`Location`]. No body is ever deleted: a body may
//! be shared by many messages, and the spool lives only as long as the migration. A
//! segment file is deleted only by compaction, once every body in it has been written
//! again elsewhere and the index entries that point there are durable.
//!
//! # Durability
//!
//! A message record that reaches the disk must never point at a body that did not.
//! sled persists its writes in the background every half second, so "write the body
//! first" is not enough: the body has to be *synced* before the record is written.
//! Hence:
//!
//! 1. [`BodyLog::append`] writes the entry and remembers its location in memory
//!    (`pending`) only.
//! 2. [`BodyLog::sync`] fsyncs the segment, then writes the pending locations into the
//!    body index, which syncs its file before it returns: the index entries are on disk
//!    before any record written afterwards, so no crash leaves a record without them.
//! 3. The spool calls `sync` before it writes message records and in `Spool::flush`.
//!
//! The syncs group naturally: many tasks spool bodies, and the first one that writes
//! records syncs for all of them; the others find nothing pending. Bodies that were
//! never synced (the process died before any record referred to them) are just unused
//! bytes in a segment, and spooling them again appends a fresh copy.
//!
//! # A failed fsync
//!
//! Because one sync covers every task's bodies, its failure concerns every task, not
//! only the one whose call failed: the others are about to write records naming bodies
//! that may not be on disk. And after a failed fsync Linux may have dropped the dirty
//! pages, so a second fsync of the same file can succeed without writing them. So:
//!
//! - the segment is marked failed and never written or fsynced again; its pending
//!   bodies stay pending (nothing is forgotten);
//! - every sync from then on first copies those bodies, read back and checked against
//!   their CRC or zstd checksum, into a fresh segment, and fsyncs that; until that has
//!   worked, every sync fails, whoever calls it, so no record is written meanwhile;
//! - a body whose read-back does not check out is lost: every sync fails until it is
//!   spooled again (its message is fetched again when its record was not written), or
//!   until the process restarts (then nothing pending survives, and no record names it).
//!
//! Compaction deletes a segment only when it is not the one being written and no
//! pending body lives in it; a new entry is entered in `pending` before the writer
//! lock that wrote it is released, so no write is ever between the two.

use super::body_index::BodyIndex;
use super::{hex, BodyHash, Result, SpoolError};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Size at which a segment is closed and the next one started. Large enough that a
/// migration makes a handful of files, small enough to copy or inspect one by hand.
const MAX_SEGMENT_LEN: u64 = 256 * 1024 * 1024;

/// First bytes of an entry holding a zstd frame; lets a read tell an entry start from
/// garbage.
const MAGIC: [u8; 4] = *b"CVB1";

/// First bytes of an entry holding the raw body and its CRC-32.
const MAGIC_RAW: [u8; 4] = *b"CVR1";

/// What the frame of an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stored {
    /// One zstd frame (with content size and xxh64 checksum).
    Zstd,
    /// The body as it was fetched, then its CRC-32 (big-endian).
    Raw,
}

impl Stored {
    fn magic(self) -> [u8; 4] {
        match self {
            Stored::Zstd => MAGIC,
            Stored::Raw => MAGIC_RAW,
        }
    }

    fn from_magic(magic: &[u8]) -> Option<Stored> {
        match magic {
            m if m == MAGIC => Some(Stored::Zstd),
            m if m == MAGIC_RAW => Some(Stored::Raw),
            _ => None,
        }
    }
}

/// Length of an entry header: magic, hash, frame length, body length.
const HEADER_LEN: usize = 4 + 32 + 4 + 8;

/// Where a body lives: what the body index says of it (`body_index.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Location {
    /// Segment number (the file name, in hex).
    pub segment: u32,
    /// Offset of the entry header within the segment.
    pub offset: u64,
    /// Length of the frame that follows the header.
    pub frame_len: u32,
    /// Length of the body once decoded.
    pub body_len: u64,
}

/// The segment files of one spool. Shared by every clone of the spool.
pub(super) struct BodyLog {
    dir: PathBuf,
    writer: Mutex<Writer>,
    /// Bodies appended but not yet synced and indexed (see the module docs).
    pending: Mutex<HashMap<BodyHash, Location>>,
    /// Held for the whole of a sync, so that concurrent syncs queue up and the ones
    /// behind find their work done.
    sync_lock: Mutex<()>,
    /// Pending entries nobody will read back soon (see [`BodyLog::release`]): their
    /// pages leave the page cache once the sync has made them durable.
    released: Mutex<Vec<Location>>,
    /// What failed fsyncs left to repair (see "A failed fsync" in the module docs).
    failure: Mutex<Failure>,
    /// Test hook: the next this many segment fsyncs fail (a real disk error is hard to
    /// produce on demand).
    /// [`REPAIR_BACKOFF`], except in tests.
    repair_backoff: Mutex<std::time::Duration>,
    #[cfg(test)]
    fail_fsyncs: std::sync::atomic::AtomicUsize,
}

/// The state a failed fsync leaves until a sync repairs it.
#[derive(Default)]
struct Failure {
    /// Segments whose fsync failed: never written or fsynced again, and their pending
    /// bodies must be copied elsewhere before they count as durable.
    segments: HashSet<u32>,
    /// Bodies that could not be read back intact from a failed segment.
    lost: HashSet<BodyHash>,
    /// The first error since the last sync that succeeded, for the messages.
    error: Option<String>,
    /// Failed fsyncs (or rewrites) since the last sync that succeeded.
    attempts: u32,
    /// No repair is tried before this. A disk that fails tends to go on failing, and
    /// each attempt writes every pending body again: without a pause, the tasks'
    /// retries would fill the disk with copies.
    not_before: Option<std::time::Instant>,
}

/// Pause after the first failed disk sync before a repair is tried; doubled after
/// each further failure, up to [`REPAIR_BACKOFF_MAX`].
const REPAIR_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);
const REPAIR_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// Failed disk syncs in a row after which no repair is tried any more in this process
/// (every sync then fails): the disk is broken, and the admin has to act.
const REPAIR_ATTEMPTS: u32 = 10;

impl Failure {
    /// Counts a failed fsync or rewrite and sets the pause before the next attempt.
    fn failed_attempt(&mut self, first_pause: std::time::Duration) {
        self.attempts += 1;
        let pause = first_pause
            .saturating_mul(1 << self.attempts.saturating_sub(1).min(16))
            .min(REPAIR_BACKOFF_MAX);
        self.not_before = Some(std::time::Instant::now() + pause);
    }

    /// Fails unless a repair may be tried now.
    fn repair_allowed(&self) -> Result<()> {
        if self.segments.is_empty() {
            return Ok(());
        }
        let error = self.error.as_deref().unwrap_or("unknown error");
        if self.attempts >= REPAIR_ATTEMPTS {
            return Err(std::io::Error::other(format!(
                "{} disk syncs of the spool's bodies failed in a row (first: {error}); \
                 nothing more is recorded until cutover is restarted with the disk fixed",
                self.attempts
            ))
            .into());
        }
        match self.not_before {
            Some(t) if std::time::Instant::now() < t => Err(std::io::Error::other(format!(
                "a disk sync of the spool's bodies failed ({error}); retried in {:.1} s",
                (t - std::time::Instant::now()).as_secs_f64()
            ))
            .into()),
            _ => Ok(()),
        }
    }
}

/// The segment being appended to, created on the first append of the process.
struct Writer {
    next_segment: u32,
    /// [`MAX_SEGMENT_LEN`], except in tests of segment rotation.
    max_segment_len: u64,
    current: Option<Segment>,
    /// When a body was last spooled (compaction's copies do not count): see
    /// [`BodyLog::seal_if_idle`] and [`BodyLog::idle_for`].
    last_append: std::time::Instant,
}

struct Segment {
    id: u32,
    /// Shared so that a sync can fsync it without holding the writer lock.
    file: Arc<File>,
    len: u64,
    /// A write failed part-way; the tail of this segment is unusable, so the next
    /// append starts a new one.
    broken: bool,
}

impl BodyLog {
    /// Opens the body directory, creating it if needed. Existing segments are only
    /// read; the next append goes to a new segment numbered after the last one.
    pub(super) fn open(dir: PathBuf) -> Result<BodyLog> {
        create_private_dir(&dir)?;
        // Make the directory itself durable, or the segments in it could vanish with it.
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
        let last = segment_ids(&dir)?.into_iter().max().unwrap_or(0);
        let next_segment = last.checked_add(1).ok_or_else(|| SpoolError::Corrupt {
            what: format!("body directory {}", dir.display()),
            detail: "no segment number left".into(),
        })?;
        Ok(BodyLog {
            dir,
            writer: Mutex::new(Writer {
                next_segment,
                max_segment_len: MAX_SEGMENT_LEN,
                current: None,
                last_append: std::time::Instant::now(),
            }),
            pending: Mutex::new(HashMap::new()),
            sync_lock: Mutex::new(()),
            released: Mutex::new(Vec::new()),
            failure: Mutex::new(Failure::default()),
            repair_backoff: Mutex::new(REPAIR_BACKOFF),
            #[cfg(test)]
            fail_fsyncs: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn segment_path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{id:08x}.seg"))
    }

    /// Where the body with this hash is, if it has been appended (synced or not).
    pub(super) fn locate(&self, index: &BodyIndex, hash: &BodyHash) -> Result<Option<Location>> {
        if let Some(loc) = lock(&self.pending).get(hash) {
            return Ok(Some(*loc));
        }
        index.get(hash)
    }

    /// Appends a body stored as `stored`, its frame being the concatenation of `parts`
    /// (written as they are, without copying them together). The caller has checked that
    /// the hash is not known yet.
    ///
    /// Any encoding happens before, outside any lock; the lock only covers the `write`
    /// into the page cache, so many tasks can spool at once.
    pub(super) fn append(
        &self,
        hash: &BodyHash,
        stored: Stored,
        parts: &[&[u8]],
        body_len: u64,
    ) -> Result<()> {
        self.write_entry(hash, stored, parts, body_len, true, |pending, loc| {
            // Another task may have appended the same body meanwhile; the first location
            // wins, and this copy is a few wasted bytes.
            pending.entry(*hash).or_insert(loc);
        })?;
        // Spooled again: no longer lost.
        lock(&self.failure).lost.remove(hash);
        Ok(())
    }

    /// Appends a new copy of the body at `old` (compaction), which the index points at
    /// from the next sync on.
    pub(super) fn append_moved(
        &self,
        hash: &BodyHash,
        stored: Stored,
        frame: &[u8],
        old: Location,
    ) -> Result<()> {
        self.write_entry(
            hash,
            stored,
            &[frame],
            old.body_len,
            false,
            |pending, loc| {
                pending.insert(*hash, loc);
            },
        )?;
        Ok(())
    }

    /// Writes one entry at the end of the current segment and returns where it went;
    /// `record` enters it into `pending` before the writer lock is released, so that
    /// compaction never sees a segment with an entry written but not yet pending.
    /// `spooled`: a new body, not a copy (see [`BodyLog::idle_for`]).
    fn write_entry(
        &self,
        hash: &BodyHash,
        stored: Stored,
        parts: &[&[u8]],
        body_len: u64,
        spooled: bool,
        record: impl FnOnce(&mut HashMap<BodyHash, Location>, Location),
    ) -> Result<Location> {
        let frame_len = u32::try_from(parts.iter().map(|p| p.len()).sum::<usize>())
            .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "body frame over 4 GiB"))?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(&stored.magic());
        header.extend_from_slice(hash);
        header.extend_from_slice(&frame_len.to_be_bytes());
        header.extend_from_slice(&body_len.to_be_bytes());
        let mut slices = Vec::with_capacity(parts.len() + 1);
        slices.push(IoSlice::new(&header));
        slices.extend(parts.iter().map(|p| IoSlice::new(p)));
        let entry_len = (HEADER_LEN + frame_len as usize) as u64;

        let mut writer = lock(&self.writer);
        let segment = self.writable_segment(&mut writer, entry_len)?;
        let offset = segment.len;
        if let Err(e) = write_all_vectored(&segment.file, &mut slices) {
            segment.broken = true;
            return Err(e.into());
        }
        segment.len += entry_len;
        let loc = Location {
            segment: segment.id,
            offset,
            frame_len,
            body_len,
        };
        record(&mut lock(&self.pending), loc);
        if spooled {
            writer.last_append = std::time::Instant::now();
        }
        Ok(loc)
    }

    /// Returns the segment to append `len` bytes to, starting a new one if needed.
    fn writable_segment<'w>(&self, writer: &'w mut Writer, len: u64) -> Result<&'w mut Segment> {
        let full = match &writer.current {
            None => true,
            Some(seg) => seg.broken || (seg.len > 0 && seg.len + len > writer.max_segment_len),
        };
        if full {
            // The old segment may hold pending bodies, and a sync only fsyncs the
            // current segment: make the old one durable before leaving it (unless its
            // fsync failed already: a second one proves nothing, see the module docs).
            if let Some(old) = &mut writer.current {
                if !self.has_failed(old.id) {
                    if let Err(e) = self.fsync(&old.file) {
                        old.broken = true;
                        self.fsync_failed(old.id, &e);
                        return Err(e.into());
                    }
                }
            }
            let id = writer.next_segment;
            // Taken before the file exists: a failure below must not reuse the number.
            writer.next_segment = id.checked_add(1).unwrap_or(id);
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .mode(FILE_MODE)
                .open(self.segment_path(id))?;
            // The new file's name must survive a crash too, or its contents go with it.
            File::open(&self.dir)?.sync_all()?;
            writer.current = Some(Segment {
                id,
                file: Arc::new(file),
                len: 0,
                broken: false,
            });
        }
        match &mut writer.current {
            Some(segment) => Ok(segment),
            // Set just above; kept as an error rather than a panic.
            None => Err(std::io::Error::other("no body segment open").into()),
        }
    }

    /// Makes every appended body durable and indexes it. Cheap when nothing is pending.
    ///
    /// Fails while an earlier failed fsync is not repaired (see "A failed fsync" in the
    /// module docs), whoever made the call that saw it: a caller must not write records
    /// unless this succeeded.
    pub(super) fn sync(&self, index: &BodyIndex) -> Result<()> {
        let _sync = lock(&self.sync_lock);
        lock(&self.failure).repair_allowed()?;
        self.rewrite_failed()?;
        let synced: Vec<(BodyHash, Location)> = lock(&self.pending)
            .iter()
            .map(|(hash, loc)| (*hash, *loc))
            .collect();
        if synced.is_empty() {
            return self.settle();
        }
        // Released before this point: appended before it, so synced below.
        let released = std::mem::take(&mut *lock(&self.released));
        // Every pending entry is in this segment or an older one, and older ones were
        // synced when the writer left them.
        let current = lock(&self.writer)
            .current
            .as_ref()
            .map(|seg| (seg.id, Arc::clone(&seg.file)));
        if let Some((id, file)) = current {
            if let Err(e) = self.fsync(&file) {
                let mut writer = lock(&self.writer);
                if let Some(seg) = writer.current.as_mut().filter(|seg| seg.id == id) {
                    seg.broken = true;
                }
                self.fsync_failed(id, &e);
                // Those released stay in the page cache: a read-back may need them.
                return Err(e.into());
            }
        }
        index.insert_all(&synced)?;
        // Entries appended since the snapshot stay pending for the next sync.
        {
            let mut pending = lock(&self.pending);
            for (hash, loc) in &synced {
                if pending.get(hash) == Some(loc) {
                    pending.remove(hash);
                }
            }
        }
        self.drop_cached(&released);
        self.settle()
    }

    /// The outcome of a sync that got this far: fine unless a body was lost. Clears the
    /// remembered error once nothing is left to repair.
    fn settle(&self) -> Result<()> {
        let mut failure = lock(&self.failure);
        if let Some(hash) = failure.lost.iter().next() {
            return Err(std::io::Error::other(format!(
                "body {} (and {} more) could not be made durable after a failed disk sync ({}); \
                 no message record is written until it is spooled again or cutover is \
                 restarted",
                hex(hash),
                failure.lost.len() - 1,
                failure.error.as_deref().unwrap_or("unknown error")
            ))
            .into());
        }
        if failure.segments.is_empty() {
            failure.error = None;
            failure.attempts = 0;
            failure.not_before = None;
        }
        Ok(())
    }

    /// Copies the pending bodies of segments whose fsync failed into the segment being
    /// written, after checking each one read back, so that the sync that follows makes
    /// them durable. Fails (and leaves everything pending) if that cannot be done now.
    fn rewrite_failed(&self) -> Result<()> {
        let failed: HashSet<u32> = lock(&self.failure).segments.clone();
        if failed.is_empty() {
            return Ok(());
        }
        let stranded: Vec<(BodyHash, Location)> = lock(&self.pending)
            .iter()
            .filter(|(_, loc)| failed.contains(&loc.segment))
            .map(|(hash, loc)| (*hash, *loc))
            .collect();
        for (hash, old) in stranded {
            let checked = self.read_frame(&hash, &old, false).and_then(|read| {
                let (stored, frame) = read.ok_or_else(|| SpoolError::Corrupt {
                    what: format!("body {}", hex(&hash)),
                    detail: "its segment file is missing".into(),
                })?;
                super::decode_body(&hash, stored, frame.clone(), old.body_len)?;
                Ok((stored, frame))
            });
            let (stored, frame) = match checked {
                Ok(read) => read,
                Err(e) => {
                    tracing::error!(
                        body = %hex(&hash),
                        error = %e,
                        "a spooled body did not survive a failed disk sync"
                    );
                    let mut pending = lock(&self.pending);
                    if pending.get(&hash) == Some(&old) {
                        pending.remove(&hash);
                        lock(&self.failure).lost.insert(hash);
                    }
                    continue;
                }
            };
            let moved = self.write_entry(
                &hash,
                stored,
                &[&frame],
                old.body_len,
                false,
                |pending, loc| {
                    // Only if nothing (compaction) moved it meanwhile.
                    if pending.get(&hash) == Some(&old) {
                        pending.insert(hash, loc);
                    }
                },
            );
            if let Err(e) = moved {
                let pause = *lock(&self.repair_backoff);
                let mut failure = lock(&self.failure);
                failure.failed_attempt(pause);
                return Err(std::io::Error::other(format!(
                    "cannot write again the bodies of a failed disk sync ({}): {e}",
                    failure.error.as_deref().unwrap_or("unknown error")
                ))
                .into());
            }
        }
        // Nothing pending lives there any more; the files go with compaction.
        let mut failure = lock(&self.failure);
        for id in &failed {
            failure.segments.remove(id);
        }
        Ok(())
    }

    /// fsync of a segment's data (or the failure the test hook asks for).
    fn fsync(&self, file: &File) -> std::io::Result<()> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering;
            if self
                .fail_fsyncs
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(std::io::Error::other("injected fsync failure"));
            }
        }
        file.sync_data()
    }

    /// Records that the fsync of segment `id` failed (see the module docs).
    fn fsync_failed(&self, id: u32, e: &std::io::Error) {
        tracing::error!(
            segment = %self.segment_path(id).display(),
            error = %e,
            "fsync of a body segment failed; its bodies are written again elsewhere"
        );
        let pause = *lock(&self.repair_backoff);
        let mut failure = lock(&self.failure);
        failure.segments.insert(id);
        failure.failed_attempt(pause);
        failure
            .error
            .get_or_insert_with(|| format!("fsync of {}: {e}", self.segment_path(id).display()));
    }

    fn has_failed(&self, id: u32) -> bool {
        lock(&self.failure).segments.contains(&id)
    }

    /// Says that the body `hash` will not be read back soon: its caller holds it in
    /// memory. Its pages are dropped from the page cache as soon as they are durable, now
    /// if they are already (`index` is the spool's index of durable bodies).
    ///
    /// Why: a copy writes every body once and mostly never reads it again (the
    /// upstream takes it from memory, `recent.rs`), yet each write takes fresh page-cache
    /// pages. On a virtual machine a page never touched before can cost the guest many
    /// times the copy itself (the host backs it on first touch; a ballooned VM hands free
    /// pages back), which made the spool's writes the largest cost of a copy once the
    /// page cache had grown. Dropped pages are reused, already backed, by the next writes.
    pub(super) fn release(&self, index: &BodyIndex, hash: &BodyHash) -> Result<()> {
        if let Some(loc) = lock(&self.pending).get(hash) {
            lock(&self.released).push(*loc);
            return Ok(());
        }
        if let Some(loc) = self.locate(index, hash)? {
            self.drop_cached(&[loc]);
        }
        Ok(())
    }

    /// Advises the kernel to drop the (clean) page-cache pages of these entries. Only
    /// whole pages within an entry go, and a dirty page is never dropped, so this can
    /// cost a later read, never data. Advisory: failures are ignored.
    fn drop_cached(&self, locs: &[Location]) {
        let mut open: Option<(u32, File)> = None;
        for loc in locs {
            if open.as_ref().is_none_or(|(id, _)| *id != loc.segment) {
                open = File::open(self.segment_path(loc.segment))
                    .ok()
                    .map(|f| (loc.segment, f));
            }
            if let Some((_, file)) = &open {
                drop_cached_range(file, loc);
            }
        }
    }

    /// Reads the frame of a body, checking the entry header against `loc`. `None` when
    /// the segment file is gone: compaction moved the body meanwhile, and the caller
    /// looks it up again.
    ///
    /// With `release`, the entry's pages leave the page cache after the read (see
    /// [`BodyLog::release`]): for a body read to be sent, which nobody reads again soon.
    pub(super) fn read_frame(
        &self,
        hash: &BodyHash,
        loc: &Location,
        release: bool,
    ) -> Result<Option<(Stored, Vec<u8>)>> {
        let corrupt = |detail: String| SpoolError::Corrupt {
            what: format!("body {}", hex(hash)),
            detail,
        };
        let path = self.segment_path(loc.segment);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // Check the extent against the file before allocating for it: a damaged index
        // entry must not make us allocate gigabytes.
        let end = loc
            .offset
            .checked_add(HEADER_LEN as u64 + u64::from(loc.frame_len));
        let file_len = file.metadata()?.len();
        if end.is_none_or(|end| end > file_len) {
            return Err(corrupt(format!(
                "entry at {}:{} runs past the end of the segment ({file_len} bytes)",
                path.display(),
                loc.offset
            )));
        }
        file.seek(SeekFrom::Start(loc.offset))?;
        let mut header = [0u8; HEADER_LEN];
        // Read into spare capacity: a zeroed buffer would be written twice.
        let mut frame = Vec::with_capacity(loc.frame_len as usize);
        let read = file.read_exact(&mut header).and_then(|()| {
            match (&mut file)
                .take(u64::from(loc.frame_len))
                .read_to_end(&mut frame)?
            {
                n if n == loc.frame_len as usize => Ok(()),
                _ => Err(ErrorKind::UnexpectedEof.into()),
            }
        });
        match read {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                return Err(corrupt(format!(
                    "segment {} ends before the entry at offset {}",
                    path.display(),
                    loc.offset
                )))
            }
            Err(e) => return Err(e.into()),
        }
        match parse_header(&header) {
            Some((stored, h, frame_len, body_len))
                if h == *hash && frame_len == loc.frame_len && body_len == loc.body_len =>
            {
                if release {
                    drop_cached_range(&file, loc);
                }
                Ok(Some((stored, frame)))
            }
            _ => Err(corrupt(format!(
                "entry header at {}:{} does not match the index",
                path.display(),
                loc.offset
            ))),
        }
    }

    /// The segments no process appends to any more, oldest first: every segment of the
    /// directory except the one this process is writing.
    pub(super) fn sealed_segments(&self) -> Result<Vec<u32>> {
        // Listed under the writer lock: a segment started after `current` was read would
        // otherwise be listed as sealed while it is being written.
        let writer = lock(&self.writer);
        let current = writer.current.as_ref().map(|seg| seg.id);
        let mut ids = segment_ids(&self.dir)?;
        drop(writer);
        ids.retain(|id| Some(*id) != current);
        ids.sort_unstable();
        Ok(ids)
    }

    /// Every entry of a sealed segment, in order: its hash, location and kind. A torn
    /// entry at the end (a crash while appending) ends the list.
    pub(super) fn entries(&self, id: u32) -> Result<Vec<(BodyHash, Location, Stored)>> {
        let file = File::open(self.segment_path(id))?;
        let file_len = file.metadata()?.len();
        let mut reader = std::io::BufReader::with_capacity(HEADER_LEN, file);
        let mut out = Vec::new();
        let mut offset = 0u64;
        let mut header = [0u8; HEADER_LEN];
        while offset + HEADER_LEN as u64 <= file_len {
            reader.read_exact(&mut header)?;
            let Some((stored, hash, frame_len, body_len)) = parse_header(&header) else {
                break;
            };
            let next = offset + HEADER_LEN as u64 + u64::from(frame_len);
            if next > file_len {
                break;
            }
            out.push((
                hash,
                Location {
                    segment: id,
                    offset,
                    frame_len,
                    body_len,
                },
                stored,
            ));
            reader.seek_relative(i64::from(frame_len))?;
            offset = next;
        }
        Ok(out)
    }

    /// Deletes a segment whose bodies all live elsewhere now (durably).
    ///
    /// Refused while the segment is being written or a pending body lives in it (a body
    /// of a failed fsync waiting to be written again, or one the caller did not see):
    /// checked under the writer lock, so no write can slip in between.
    pub(super) fn remove_segment(&self, id: u32) -> Result<()> {
        let writer = lock(&self.writer);
        let in_use = writer.current.as_ref().is_some_and(|seg| seg.id == id)
            || lock(&self.pending).values().any(|loc| loc.segment == id);
        if in_use {
            return Err(std::io::Error::other(format!(
                "body segment {} is still in use; not deleted",
                self.segment_path(id).display()
            ))
            .into());
        }
        std::fs::remove_file(self.segment_path(id))?;
        drop(writer);
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// How long ago a body was last spooled (by this process).
    pub(super) fn idle_for(&self) -> std::time::Duration {
        lock(&self.writer).last_append.elapsed()
    }

    /// Closes the segment being written if nothing was appended to it for `idle`, so
    /// that compaction can take it. True if a segment was sealed.
    pub(super) fn seal_if_idle(&self, idle: std::time::Duration) -> Result<bool> {
        let mut writer = lock(&self.writer);
        if writer.last_append.elapsed() < idle {
            return Ok(false);
        }
        let Some(seg) = writer.current.take() else {
            return Ok(false);
        };
        // Its pending bodies must be durable before the writer leaves it, as on rotation:
        // a sync only fsyncs the current segment. One that failed already is repaired by
        // the next sync instead.
        if !self.has_failed(seg.id) {
            if let Err(e) = self.fsync(&seg.file) {
                self.fsync_failed(seg.id, &e);
                return Err(e.into());
            }
        }
        Ok(true)
    }

    /// Number of bodies known, synced or not (for tests).
    #[cfg(test)]
    pub(super) fn count(&self, index: &BodyIndex) -> usize {
        let pending = lock(&self.pending);
        index.len()
            + pending
                .keys()
                .filter(|h| !index.contains_key(h).unwrap_or(false))
                .count()
    }

    /// Sets the pause before the first repair (for tests).
    #[cfg(test)]
    pub(super) fn set_repair_backoff(&self, pause: std::time::Duration) {
        *lock(&self.repair_backoff) = pause;
    }

    /// Makes the next `n` segment fsyncs fail (for tests).
    #[cfg(test)]
    pub(super) fn fail_next_fsyncs(&self, n: usize) {
        self.fail_fsyncs
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    #[cfg(test)]
    pub(super) fn set_max_segment_len(&self, len: u64) {
        lock(&self.writer).max_segment_len = len;
    }

    #[cfg(test)]
    pub(super) fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

/// Mode of the segment files: they are the mail itself.
const FILE_MODE: u32 = 0o600;

/// Mode of the spool's directories.
const DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing parents with [`DIR_MODE`], whatever the umask.
pub(super) fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    Ok(())
}

/// Takes the group and other permissions off `root` and, with `deep`, off everything
/// below it (symbolic links are neither changed nor followed).
///
/// A spool made by an older version, or sled's files made under the usual umask 022,
/// are readable by every local user: the spool is the migrated mail. Best effort: a
/// file this user may not change (another owner) is logged and left, since refusing to
/// start would stop the migration over what the 0700 directory already protects.
pub(super) fn make_private(root: &Path, deep: bool) {
    let mut todo = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot check the permissions of a spool file");
                continue;
            }
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            let private = std::fs::Permissions::from_mode(mode & 0o700);
            if let Err(e) = std::fs::set_permissions(&path, private) {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    error = %e,
                    "cannot make a spool file private to its owner"
                );
            }
        }
        if deep && meta.is_dir() {
            match std::fs::read_dir(&path) {
                Ok(entries) => todo.extend(entries.filter_map(|e| e.ok().map(|e| e.path()))),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot list a spool directory")
                }
            }
        }
    }
}

/// The numbers of the segment files in `dir` (names `<segment:08x>.seg`, see
/// [`BodyLog::segment_path`]); other files are ignored.
fn segment_ids(dir: &std::path::Path) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let id = name
            .to_str()
            .and_then(|name| name.strip_suffix(".seg"))
            .and_then(|id| u32::from_str_radix(id, 16).ok());
        ids.extend(id);
    }
    Ok(ids)
}

/// The fields of an entry header, if it starts with a known magic.
fn parse_header(header: &[u8; HEADER_LEN]) -> Option<(Stored, BodyHash, u32, u64)> {
    let stored = Stored::from_magic(&header[..4])?;
    let hash: BodyHash = header[4..36].try_into().ok()?;
    let frame_len = u32::from_be_bytes(header[36..40].try_into().ok()?);
    let body_len = u64::from_be_bytes(header[40..48].try_into().ok()?);
    Some((stored, hash, frame_len, body_len))
}

/// Writes every byte of `slices` with as few `write` calls as the kernel allows.
/// `posix_fadvise(DONTNEED)` over the entry at `loc` (see [`BodyLog::drop_cached`]).
fn drop_cached_range(file: &File, loc: &Location) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (
        libc::off_t::try_from(loc.offset),
        libc::off_t::try_from(HEADER_LEN as u64 + u64::from(loc.frame_len)),
    ) else {
        return;
    };
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open
    // for as long as `file` is borrowed.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED);
    }
}

fn write_all_vectored(mut file: &File, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Locks a mutex, ignoring poisoning: the critical sections here leave the data
/// consistent at every point, so a panic elsewhere is no reason to stop the spool.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body log in a temporary directory, with its index.
    fn open() -> (tempfile::TempDir, BodyLog, BodyIndex) {
        let dir = tempfile::tempdir().unwrap();
        let log = BodyLog::open(dir.path().join("bodies")).unwrap();
        log.set_repair_backoff(std::time::Duration::ZERO);
        let index = BodyIndex::in_dir(dir.path());
        (dir, log, index)
    }

    fn hash(n: u8) -> BodyHash {
        [n; 32]
    }

    /// Appends body `n` raw, as the spool does.
    fn append(log: &BodyLog, n: u8) -> Result<()> {
        let body = vec![n; 1000 + usize::from(n)];
        let crc = crc32fast::hash(&body).to_be_bytes();
        log.append(&hash(n), Stored::Raw, &[&body, &crc], body.len() as u64)
    }

    fn indexed(index: &BodyIndex, n: u8) -> Option<Location> {
        index.get(&hash(n)).unwrap()
    }

    /// Reads body `n` back through the index and checks it.
    fn read_back(log: &BodyLog, index: &BodyIndex, n: u8) {
        let loc = indexed(index, n).unwrap_or_else(|| panic!("body {n} is not indexed"));
        let (stored, frame) = log.read_frame(&hash(n), &loc, false).unwrap().unwrap();
        let body = super::super::decode_body(&hash(n), stored, frame, loc.body_len).unwrap();
        assert_eq!(body, vec![n; 1000 + usize::from(n)]);
    }

    #[test]
    fn a_failed_sync_keeps_the_bodies_and_fails_for_everyone_until_repaired() {
        let (_d, log, index) = open();
        append(&log, 1).unwrap();
        append(&log, 2).unwrap();
        let first = log.locate(&index, &hash(1)).unwrap().unwrap().segment;
        log.fail_next_fsyncs(1);
        assert!(log.sync(&index).is_err());
        // Nothing forgotten: both are still known, and not indexed.
        assert!(log.locate(&index, &hash(1)).unwrap().is_some());
        assert!(indexed(&index, 2).is_none());
        // Another caller, with nothing of its own pending: it must not be told that
        // all is durable while the repair fails.
        log.fail_next_fsyncs(1);
        assert!(log.sync(&index).is_err());
        assert!(indexed(&index, 1).is_none());
        // The next sync writes them again elsewhere and succeeds.
        log.sync(&index).unwrap();
        for n in [1, 2] {
            let loc = indexed(&index, n).unwrap();
            assert_ne!(loc.segment, first, "body {n} left in the failed segment");
            read_back(&log, &index, n);
        }
        // And the log is healthy again.
        append(&log, 3).unwrap();
        log.sync(&index).unwrap();
        read_back(&log, &index, 3);
    }

    #[test]
    fn a_body_damaged_by_the_failure_keeps_the_log_failed_until_spooled_again() {
        let (_d, log, index) = open();
        append(&log, 1).unwrap();
        append(&log, 2).unwrap();
        let loc = log.locate(&index, &hash(1)).unwrap().unwrap();
        log.fail_next_fsyncs(1);
        assert!(log.sync(&index).is_err());
        // What the kernel may do after a failed writeback: the page is gone, the disk
        // holds something else.
        {
            let f = OpenOptions::new()
                .write(true)
                .open(log.segment_path(loc.segment))
                .unwrap();
            use std::os::unix::fs::FileExt;
            f.write_all_at(&[0xAA; 64], loc.offset + HEADER_LEN as u64)
                .unwrap();
        }
        let err = log.sync(&index).unwrap_err().to_string();
        assert!(err.contains(&hex(&hash(1))), "{err}");
        // Body 2 survived and is durable; body 1 is not known any more, so that putting
        // it again appends a fresh copy.
        read_back(&log, &index, 2);
        assert!(log.locate(&index, &hash(1)).unwrap().is_none());
        assert!(
            log.sync(&index).is_err(),
            "a lost body must keep every sync failing"
        );
        append(&log, 1).unwrap();
        log.sync(&index).unwrap();
        read_back(&log, &index, 1);
    }

    #[test]
    fn a_failed_fsync_on_rotation_or_seal_loses_nothing() {
        let (_d, log, index) = open();
        log.set_max_segment_len(1500);
        append(&log, 1).unwrap();
        log.fail_next_fsyncs(1);
        // Body 2 does not fit: the writer leaves segment 1, whose fsync fails.
        assert!(append(&log, 2).is_err());
        append(&log, 2).unwrap();
        log.sync(&index).unwrap();
        read_back(&log, &index, 1);
        read_back(&log, &index, 2);

        append(&log, 3).unwrap();
        log.fail_next_fsyncs(1);
        assert!(log.seal_if_idle(std::time::Duration::ZERO).is_err());
        log.sync(&index).unwrap();
        read_back(&log, &index, 3);
    }

    #[test]
    fn repairs_back_off_and_give_up() {
        let (_d, log, index) = open();
        log.set_repair_backoff(std::time::Duration::from_millis(200));
        append(&log, 1).unwrap();
        log.fail_next_fsyncs(1);
        assert!(log.sync(&index).is_err());
        // Within the pause, a sync fails at once, and writes nothing.
        let files = std::fs::read_dir(&log.dir).unwrap().count();
        let err = log.sync(&index).unwrap_err().to_string();
        assert!(err.contains("retried in"), "{err}");
        assert_eq!(std::fs::read_dir(&log.dir).unwrap().count(), files);
        std::thread::sleep(std::time::Duration::from_millis(250));
        log.sync(&index).unwrap();
        read_back(&log, &index, 1);

        // A disk that keeps failing: given up after REPAIR_ATTEMPTS in a row.
        log.set_repair_backoff(std::time::Duration::ZERO);
        append(&log, 2).unwrap();
        log.fail_next_fsyncs(usize::MAX);
        for _ in 0..REPAIR_ATTEMPTS {
            assert!(log.sync(&index).is_err());
        }
        log.fail_next_fsyncs(0);
        let err = log.sync(&index).unwrap_err().to_string();
        assert!(err.contains("restarted"), "{err}");
        let segments = segment_ids(&log.dir).unwrap().len();
        assert!(
            segments <= REPAIR_ATTEMPTS as usize + 2,
            "{segments} segments"
        );
    }

    #[test]
    fn a_segment_in_use_is_never_removed() {
        let (_d, log, index) = open();
        append(&log, 1).unwrap();
        let loc = log.locate(&index, &hash(1)).unwrap().unwrap();
        // Being written.
        assert!(log.remove_segment(loc.segment).is_err());
        assert!(log.segment_path(loc.segment).exists());
        // Sealed, but its fsync failed: the body waits in it to be written again.
        log.fail_next_fsyncs(1);
        assert!(log.seal_if_idle(std::time::Duration::ZERO).is_err());
        assert_eq!(log.sealed_segments().unwrap(), [loc.segment]);
        assert!(log.remove_segment(loc.segment).is_err());
        assert!(log.segment_path(loc.segment).exists());
        // Once the body lives elsewhere, durably, the segment may go.
        log.sync(&index).unwrap();
        log.remove_segment(loc.segment).unwrap();
        read_back(&log, &index, 1);
    }
}
