//! Where message bodies are kept: append-only segment files next to the sled database,
//! indexed by the `bodies` tree.
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
//! magic "CVB1" | sha256 (32) | frame length (u32 BE) | body length (u64 BE) | zstd frame
//! ```
//!
//! The header repeats what the index says, so a read can tell a wrong or stale index
//! entry from a good one, and the index could be rebuilt from the segments alone. Every
//! process writes to a fresh segment: a crash can leave a torn entry at the end of the
//! last segment, and never appending to it again means nobody has to find where the
//! good data stops. A segment is closed for writing at [`MAX_SEGMENT_LEN`].
//!
//! The `bodies` tree maps a hash to a [`Location`]. Nothing is ever deleted: a body
//! may be shared by many messages, and the spool lives only as long as the migration.
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
//!    `bodies` tree. sled has one log for all trees, so these index entries precede any
//!    record written afterwards in that log, and no prefix of it that survives a crash
//!    holds the record without the index entry.
//! 3. The spool calls `sync` before it writes message records and in `Spool::flush`.
//!
//! The syncs group naturally: many tasks spool bodies, and the first one that writes
//! records syncs for all of them; the others find nothing pending. Bodies that were
//! never synced (the process died before any record referred to them) are just unused
//! bytes in a segment, and spooling them again appends a fresh copy.

use super::{hex, BodyHash, Result, SpoolError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Size at which a segment is closed and the next one started. Large enough that a
/// migration makes a handful of files, small enough to copy or inspect one by hand.
const MAX_SEGMENT_LEN: u64 = 256 * 1024 * 1024;

/// First bytes of every entry; lets a read tell an entry start from garbage.
const MAGIC: [u8; 4] = *b"CVB1";

/// Length of an entry header: magic, hash, frame length, body length.
const HEADER_LEN: usize = 4 + 32 + 4 + 8;

/// Where a body lives. Stored, bincode-encoded, as the value of the `bodies` tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Location {
    /// Segment number (the file name, in hex).
    pub segment: u32,
    /// Offset of the entry header within the segment.
    pub offset: u64,
    /// Length of the zstd frame that follows the header.
    pub frame_len: u32,
    /// Length of the body once decompressed.
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
}

/// The segment being appended to, created on the first append of the process.
struct Writer {
    next_segment: u32,
    /// [`MAX_SEGMENT_LEN`], except in tests of segment rotation.
    max_segment_len: u64,
    current: Option<Segment>,
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
        std::fs::create_dir_all(&dir)?;
        // Make the directory itself durable, or the segments in it could vanish with it.
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
        let mut last = 0u32;
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name();
            let id = name
                .to_str()
                .and_then(|name| name.strip_suffix(".seg"))
                .and_then(|id| u32::from_str_radix(id, 16).ok());
            if let Some(id) = id {
                last = last.max(id);
            }
        }
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
            }),
            pending: Mutex::new(HashMap::new()),
            sync_lock: Mutex::new(()),
        })
    }

    fn segment_path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{id:08x}.seg"))
    }

    /// Where the body with this hash is, if it has been appended (synced or not).
    pub(super) fn locate(&self, index: &sled::Tree, hash: &BodyHash) -> Result<Option<Location>> {
        if let Some(loc) = lock(&self.pending).get(hash) {
            return Ok(Some(*loc));
        }
        match index.get(hash)? {
            Some(value) => super::decode(&value, || format!("body {}", hex(hash))).map(Some),
            None => Ok(None),
        }
    }

    /// Appends a compressed body. The caller has checked that the hash is not known yet.
    ///
    /// Compression happens before, outside any lock; the lock only covers one `write`
    /// into the page cache, so many tasks can spool at once.
    pub(super) fn append(&self, hash: &BodyHash, frame: &[u8], body_len: u64) -> Result<()> {
        let frame_len = u32::try_from(frame.len()).map_err(|_| {
            std::io::Error::new(ErrorKind::InvalidInput, "compressed body over 4 GiB")
        })?;
        let mut entry = Vec::with_capacity(HEADER_LEN + frame.len());
        entry.extend_from_slice(&MAGIC);
        entry.extend_from_slice(hash);
        entry.extend_from_slice(&frame_len.to_be_bytes());
        entry.extend_from_slice(&body_len.to_be_bytes());
        entry.extend_from_slice(frame);

        let loc = {
            let mut writer = lock(&self.writer);
            let segment = self.writable_segment(&mut writer, entry.len() as u64)?;
            let offset = segment.len;
            if let Err(e) = (&*segment.file).write_all(&entry) {
                segment.broken = true;
                return Err(e.into());
            }
            segment.len += entry.len() as u64;
            Location {
                segment: segment.id,
                offset,
                frame_len,
                body_len,
            }
        };
        // Another task may have appended the same body meanwhile; the first location
        // wins, and this copy is a few wasted bytes.
        lock(&self.pending).entry(*hash).or_insert(loc);
        Ok(())
    }

    /// Returns the segment to append `len` bytes to, starting a new one if needed.
    fn writable_segment<'w>(&self, writer: &'w mut Writer, len: u64) -> Result<&'w mut Segment> {
        let full = match &writer.current {
            None => true,
            Some(seg) => seg.broken || (seg.len > 0 && seg.len + len > writer.max_segment_len),
        };
        if full {
            // The old segment may hold pending bodies, and a sync only fsyncs the
            // current segment: make the old one durable before leaving it.
            if let Some(old) = &mut writer.current {
                if let Err(e) = old.file.sync_data() {
                    old.broken = true;
                    self.forget_segment(old.id);
                    return Err(e.into());
                }
            }
            let id = writer.next_segment;
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(self.segment_path(id))?;
            // The new file's name must survive a crash too, or its contents go with it.
            File::open(&self.dir)?.sync_all()?;
            writer.next_segment = id.checked_add(1).unwrap_or(id);
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
    pub(super) fn sync(&self, index: &sled::Tree) -> Result<()> {
        let _sync = lock(&self.sync_lock);
        let synced: Vec<(BodyHash, Location)> = lock(&self.pending)
            .iter()
            .map(|(hash, loc)| (*hash, *loc))
            .collect();
        if synced.is_empty() {
            return Ok(());
        }
        // Every pending entry is in this segment or an older one, and older ones were
        // synced when the writer left them.
        let current = lock(&self.writer)
            .current
            .as_ref()
            .map(|seg| (seg.id, Arc::clone(&seg.file)));
        if let Some((id, file)) = current {
            if let Err(e) = file.sync_data() {
                let mut writer = lock(&self.writer);
                if let Some(seg) = writer.current.as_mut().filter(|seg| seg.id == id) {
                    seg.broken = true;
                }
                self.forget_segment(id);
                return Err(e.into());
            }
        }
        let mut batch = sled::Batch::default();
        for (hash, loc) in &synced {
            batch.insert(&hash[..], super::encode(loc)?);
        }
        index.apply_batch(batch)?;
        // Entries appended since the snapshot stay pending for the next sync.
        let mut pending = lock(&self.pending);
        for (hash, loc) in &synced {
            if pending.get(hash) == Some(loc) {
                pending.remove(hash);
            }
        }
        Ok(())
    }

    /// Drops the pending bodies of a segment whose fsync failed.
    ///
    /// After a failed fsync, Linux may have discarded the dirty pages, and a second fsync
    /// can report success without writing them: the only safe assumption is that those
    /// bodies are lost. Forgetting them makes the caller's retry (which spools the
    /// bodies again, since `put_messages` failed) append fresh copies to a new segment,
    /// as the failed one is marked broken.
    fn forget_segment(&self, id: u32) {
        lock(&self.pending).retain(|_, loc| loc.segment != id);
    }

    /// Reads the compressed frame of a body, checking the entry header against `loc`.
    pub(super) fn read_frame(&self, hash: &BodyHash, loc: &Location) -> Result<Vec<u8>> {
        let corrupt = |detail: String| SpoolError::Corrupt {
            what: format!("body {}", hex(hash)),
            detail,
        };
        let path = self.segment_path(loc.segment);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(corrupt(format!("segment {} is missing", path.display())))
            }
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
        let mut frame = vec![0u8; loc.frame_len as usize];
        let read = file
            .read_exact(&mut header)
            .and_then(|()| file.read_exact(&mut frame));
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
        let mut want = Vec::with_capacity(HEADER_LEN);
        want.extend_from_slice(&MAGIC);
        want.extend_from_slice(hash);
        want.extend_from_slice(&loc.frame_len.to_be_bytes());
        want.extend_from_slice(&loc.body_len.to_be_bytes());
        if header[..] != want[..] {
            return Err(corrupt(format!(
                "entry header at {}:{} does not match the index",
                path.display(),
                loc.offset
            )));
        }
        Ok(frame)
    }

    /// Number of bodies known, synced or not (for tests).
    #[cfg(test)]
    pub(super) fn count(&self, index: &sled::Tree) -> usize {
        let pending = lock(&self.pending);
        index.len()
            + pending
                .keys()
                .filter(|h| !index.contains_key(h).unwrap_or(false))
                .count()
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

/// Locks a mutex, ignoring poisoning: the critical sections here leave the data
/// consistent at every point, so a panic elsewhere is no reason to stop the spool.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
