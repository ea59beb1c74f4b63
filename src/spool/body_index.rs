//! The index of the bodies: hash -> where the body is ([`Location`]), an on-disk hash
//! table in a file of its own, `<spool>/body-index`, beside sled rather than in it.
//!
//! # Why not in sled
//!
//! A migration has one body per message, so this index has as many entries as the
//! migration has messages, and it is written once per body. In sled 0.34 what a process
//! holds in memory follows from the values and batches it has written, whatever
//! `cache_capacity` says: with the index packed into 65,536 sled values (buckets of
//! hashes), writing 1,000,000 message records and their bodies (`bench/spool_scale.rs`)
//! still took RSS from 37 to 91 MiB, most of it the index's pages (heaptrack), 387 bytes
//! per message of sled files, and each write slower than the one before (1.5 s for the
//! first 100,000 bodies, 5.6 s for the tenth). Here an entry is 32 bytes in a file, a
//! lookup is a read of one or two 4 KiB pages, and what the process keeps in memory is
//! nothing: the pages are the kernel's page cache, which it takes back when it needs to.
//!
//! # Layout
//!
//! Page 0 is the header: [`MAGIC`], the table's size as `bits` (u32 LE; 2^bits slots),
//! the number of entries (u64 LE) and a CRC-32 of those 20 bytes (u32 LE). Then come
//! 2^bits slots of [`SLOT`] bytes, 128 to a page:
//!
//! ```text
//! hash prefix (12) | segment (u32 LE) | offset (u32 LE) | frame length (u32 LE) | body length (u32 LE) | CRC-32 of the 28 bytes before (u32 LE)
//! ```
//!
//! An all-zero slot is empty. A slot is found by linear probing from the slot named by
//! the first 8 bytes of the hash (hashes are uniform), and the table doubles once it is
//! 7/8 full, so it holds 37 to 73 bytes per body on disk.
//!
//! Only 96 bits of the hash are kept: two different bodies share a prefix with a chance of
//! about 10^-15 in a migration of 10 million messages, and even then nothing is silently
//! wrong, because every read checks the whole hash in the segment's entry header
//! (`body_log.rs`) and fails loudly, naming the body. An offset fits in 32 bits because a
//! segment is closed at 256 MiB; a body length because an IMAP literal's does.
//!
//! # Durability
//!
//! The body log calls [`BodyIndex::insert_all`] after it fsynced the segments holding
//! the bodies, and the spool writes no message record naming them before that returns.
//! `insert_all` writes the pages it changed and fdatasyncs the file before it returns, so
//! a record that reaches the disk always finds its index entry. Growing writes the bigger
//! table to `body-index.new`, syncs it, renames it over the old one and syncs the
//! directory: a crash leaves one whole table or the other (a leftover `.new` is deleted
//! at the next open). A slot torn by a power cut fails its CRC and is reported as
//! damaged, naming the body; it is never taken for a location.
//!
//! Spools of older versions kept the index in sled (`body_buckets`, and before that one
//! value per hash in `bodies`). [`BodyIndex::open`] moves it into the file, syncs it,
//! and only then drops the old tree, so a crash in between moves it again, to the same
//! places.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use super::body_log::Location;
use super::{decode, hex, BodyHash, Result, SpoolError};

/// The index's file, in the spool's directory.
const FILE: &str = "body-index";
/// Where a bigger table is built before it replaces the file.
const NEW_FILE: &str = "body-index.new";

/// First bytes of the file: the layout of this module's docs, version 1.
const MAGIC: [u8; 8] = *b"CVBIDX01";

const PAGE: usize = 4096;
const SLOT: usize = 32;
const SLOTS_PER_PAGE: u64 = (PAGE / SLOT) as u64;
/// Bytes of the hash kept in a slot (see the module docs).
const PREFIX: usize = 12;

/// A new table's size, 2^10 slots (one header page and eight of slots).
const MIN_BITS: u32 = 10;
/// Far beyond any spool: 2^36 slots would be a 2 TiB file.
const MAX_BITS: u32 = 36;
/// The table doubles once this many eighths of its slots are used.
const GROW_AT_EIGHTHS: u64 = 7;
/// Pages read at a time when the table is copied into a bigger one.
const COPY_PAGES: usize = 256;
/// Pages held back at most, while copying, before they are written out.
const COPY_FLUSH_PAGES: usize = 1024;

/// The sled tree of spools before this file: buckets of hashes.
const BUCKET_TREE: &str = "body_buckets";
/// The sled tree of spools before the buckets: one value per hash.
const LEGACY_TREE: &str = "bodies";
/// The layout tag of a bucket value in [`BUCKET_TREE`].
const BUCKET_TAG: u8 = 1;
/// Old entries moved per batch when an older spool is opened.
const MOVE_GROUP: usize = 4096;

/// The index of one spool. Cheap to clone; every clone shares the file.
#[derive(Clone)]
pub(super) struct BodyIndex {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// The table as readers see it; replaced whole when the table grows.
    table: RwLock<Table>,
    /// Serialises the writers (the body log's syncs, compaction through them), so a
    /// read-modify-write of a page never loses an entry.
    write: Mutex<()>,
}

struct Table {
    file: Arc<File>,
    bits: u32,
    /// Slots in use (kept in the header, written with every change).
    count: u64,
}

impl Table {
    fn slots(&self) -> u64 {
        1 << self.bits
    }

    fn mask(&self) -> u64 {
        self.slots() - 1
    }
}

/// What one slot holds.
enum Slot {
    Empty,
    Used([u8; PREFIX], Location),
    /// Neither empty nor matching its CRC.
    Damaged,
}

impl BodyIndex {
    /// The index of the spool in `dir`, with what an older version left in `db` moved
    /// in. Returns it and whether the spool held any body before.
    pub(super) fn open(db: &sled::Db, dir: &Path) -> Result<(BodyIndex, bool)> {
        // A growth that a crash interrupted: the old table is whole, the copy is not.
        match std::fs::remove_file(dir.join(NEW_FILE)) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let path = dir.join(FILE);
        let table = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => load(file, &path)?,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let table = create(&path, MIN_BITS, 0)?;
                File::open(dir)?.sync_all()?;
                table
            }
            Err(e) => return Err(e.into()),
        };
        let index = BodyIndex {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                table: RwLock::new(table),
                write: Mutex::new(()),
            }),
        };
        let moved = index.move_in(db)?;
        if moved > 0 {
            tracing::info!(
                bodies = moved,
                "spool: body index moved out of sled into its own file"
            );
        }
        let had_bodies = index
            .inner
            .table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .count
            > 0;
        Ok((index, had_bodies))
    }

    /// Moves the entries of older versions' sled trees into the file; returns how many.
    fn move_in(&self, db: &sled::Db) -> Result<u64> {
        let mut moved = 0u64;
        for name in [LEGACY_TREE, BUCKET_TREE] {
            if !db
                .tree_names()
                .iter()
                .any(|n| n.as_ref() == name.as_bytes())
            {
                continue;
            }
            let tree = db.open_tree(name)?;
            let mut group = Vec::new();
            for item in tree.iter() {
                let (key, value) = item?;
                if name == LEGACY_TREE {
                    let hash: BodyHash =
                        key.as_ref().try_into().map_err(|_| SpoolError::Corrupt {
                            what: format!("body index key {}", String::from_utf8_lossy(&key)),
                            detail: "not a 32-byte hash".into(),
                        })?;
                    let loc = decode(&value, || format!("body {}", hex(&hash)))?;
                    group.push((hash, loc));
                } else {
                    for (hash, value) in decode_bucket(&key, &value)? {
                        let loc = decode(&value, || format!("body {}", hex(&hash)))?;
                        group.push((hash, loc));
                    }
                }
                if group.len() >= MOVE_GROUP {
                    moved += group.len() as u64;
                    self.insert_all(&std::mem::take(&mut group))?;
                }
            }
            moved += group.len() as u64;
            self.insert_all(&group)?;
            drop(tree);
            // In the file (synced) first, then out of sled: a crash in between leaves the
            // entries in both, and the next open moves them again.
            db.drop_tree(name)?;
            db.flush()?;
        }
        Ok(moved)
    }

    /// A fresh index in `dir`, with no sled behind it (the body log's tests).
    #[cfg(test)]
    pub(super) fn in_dir(dir: &Path) -> BodyIndex {
        let db = sled::Config::new().temporary(true).open().unwrap();
        BodyIndex::open(&db, dir).unwrap().0
    }

    /// Where the body `hash` is, if indexed.
    pub(super) fn get(&self, hash: &BodyHash) -> Result<Option<Location>> {
        let table = self.inner.table.read().unwrap_or_else(|e| e.into_inner());
        let prefix = prefix_of(hash);
        let mut slot = home(hash, table.mask());
        let mut page = [0u8; PAGE];
        let mut loaded = None;
        for _ in 0..table.slots() {
            let p = slot / SLOTS_PER_PAGE;
            if loaded != Some(p) {
                table.file.read_exact_at(&mut page, page_offset(p))?;
                loaded = Some(p);
            }
            let at = (slot % SLOTS_PER_PAGE) as usize * SLOT;
            match decode_slot(&page[at..at + SLOT]) {
                Slot::Empty => return Ok(None),
                Slot::Used(p, loc) if p == prefix => return Ok(Some(loc)),
                Slot::Used(..) => {}
                Slot::Damaged => return Err(damaged(hash, slot)),
            }
            slot = (slot + 1) & table.mask();
        }
        Ok(None)
    }

    /// Indexes (or re-points) these bodies, durably: the file is synced before this
    /// returns (see "Durability" in the module docs).
    pub(super) fn insert_all(&self, entries: &[(BodyHash, Location)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let _write = self.inner.write.lock().unwrap_or_else(|e| e.into_inner());
        let needed = self.count() + entries.len() as u64;
        self.grow_for(needed)?;
        let (file, bits, count) = {
            let table = self.inner.table.read().unwrap_or_else(|e| e.into_inner());
            (Arc::clone(&table.file), table.bits, table.count)
        };
        let mut pages = Pages::new(&file, bits);
        let mut added = 0u64;
        for (hash, loc) in entries {
            let slot = encode_slot(hash, loc)?;
            if pages.place(hash, &slot)? {
                added += 1;
            }
        }
        {
            // Readers wait for the pages, not for the sync below.
            let mut table = self.inner.table.write().unwrap_or_else(|e| e.into_inner());
            pages.write_out()?;
            table.count = count + added;
            write_header(&table.file, table.bits, table.count)?;
        }
        file.sync_data()?;
        Ok(())
    }

    fn count(&self) -> u64 {
        self.inner
            .table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .count
    }

    /// Doubles the table until `needed` entries fit under the fill limit. The caller
    /// holds the writers' lock.
    fn grow_for(&self, needed: u64) -> Result<()> {
        let bits = self
            .inner
            .table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .bits;
        let mut new_bits = bits;
        while needed > (1u64 << new_bits) / 8 * GROW_AT_EIGHTHS {
            new_bits += 1;
            if new_bits > MAX_BITS {
                return Err(SpoolError::Corrupt {
                    what: "body index".into(),
                    detail: format!("{needed} bodies are more than the index can hold"),
                });
            }
        }
        if new_bits == bits {
            return Ok(());
        }
        let (old, count) = {
            let table = self.inner.table.read().unwrap_or_else(|e| e.into_inner());
            (Arc::clone(&table.file), table.count)
        };
        let new_path = self.inner.dir.join(NEW_FILE);
        let new = create(&new_path, new_bits, count)?;
        {
            let mut pages = Pages::new(&new.file, new_bits);
            let mut buf = vec![0u8; COPY_PAGES * PAGE];
            let old_pages = (1u64 << bits) / SLOTS_PER_PAGE;
            let mut p = 0u64;
            while p < old_pages {
                let n = (old_pages - p).min(COPY_PAGES as u64) as usize;
                old.read_exact_at(&mut buf[..n * PAGE], page_offset(p))?;
                for (i, raw) in buf[..n * PAGE].chunks_exact(SLOT).enumerate() {
                    match decode_slot(raw) {
                        Slot::Empty => {}
                        Slot::Used(prefix, _) => {
                            let mut hash = [0u8; 32];
                            hash[..PREFIX].copy_from_slice(&prefix);
                            let slot: [u8; SLOT] = raw.try_into().expect("slot-sized chunk");
                            pages.place(&hash, &slot)?;
                        }
                        Slot::Damaged => {
                            return Err(SpoolError::Corrupt {
                                what: "body index".into(),
                                detail: format!(
                                    "slot {} is damaged; the table cannot grow past it",
                                    p * SLOTS_PER_PAGE + i as u64
                                ),
                            })
                        }
                    }
                }
                if pages.len() >= COPY_FLUSH_PAGES {
                    pages.write_out()?;
                }
                p += n as u64;
            }
            pages.write_out()?;
        }
        new.file.sync_all()?;
        {
            let mut table = self.inner.table.write().unwrap_or_else(|e| e.into_inner());
            std::fs::rename(&new_path, self.inner.dir.join(FILE))?;
            *table = new;
        }
        File::open(&self.inner.dir)?.sync_all()?;
        tracing::debug!(
            slots = 1u64 << new_bits,
            bodies = count,
            "spool: body index grown"
        );
        Ok(())
    }

    /// Indexes (or re-points) one body (tests set up wrong entries this way).
    #[cfg(test)]
    pub(super) fn insert(&self, hash: BodyHash, loc: Location) -> Result<()> {
        self.insert_all(&[(hash, loc)])
    }

    /// Damages the slot of `hash` as a torn write would (tests).
    #[cfg(test)]
    pub(super) fn damage(&self, hash: &BodyHash) {
        let table = self.inner.table.read().unwrap();
        let prefix = prefix_of(hash);
        let mut slot = home(hash, table.mask());
        loop {
            let mut raw = [0u8; SLOT];
            let at = page_offset(0) + slot * SLOT as u64;
            table.file.read_exact_at(&mut raw, at).unwrap();
            if let Slot::Used(p, _) = decode_slot(&raw) {
                if p == prefix {
                    raw[SLOT - 1] ^= 0x55;
                    table.file.write_all_at(&raw, at).unwrap();
                    return;
                }
            }
            slot = (slot + 1) & table.mask();
        }
    }

    /// Whether `hash` is indexed.
    #[cfg(test)]
    pub(super) fn contains_key(&self, hash: &BodyHash) -> Result<bool> {
        Ok(self.get(hash)?.is_some())
    }

    /// Bodies indexed.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.count() as usize
    }
}

/// The pages of a table that a change touches, read once and written out together.
struct Pages<'a> {
    file: &'a File,
    mask: u64,
    pages: BTreeMap<u64, Box<[u8; PAGE]>>,
}

impl<'a> Pages<'a> {
    fn new(file: &'a File, bits: u32) -> Pages<'a> {
        Pages {
            file,
            mask: (1u64 << bits) - 1,
            pages: BTreeMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.pages.len()
    }

    fn slot_mut(&mut self, slot: u64) -> Result<&mut [u8]> {
        let p = slot / SLOTS_PER_PAGE;
        let page = match self.pages.entry(p) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let mut page = Box::new([0u8; PAGE]);
                self.file.read_exact_at(&mut page[..], page_offset(p))?;
                e.insert(page)
            }
        };
        let at = (slot % SLOTS_PER_PAGE) as usize * SLOT;
        Ok(&mut page[at..at + SLOT])
    }

    /// Puts `slot` (an encoded entry for `hash`) where `hash` belongs: over the entry of
    /// the same hash, or in the first empty slot of its probe. True if it is a new entry.
    fn place(&mut self, hash: &BodyHash, slot: &[u8; SLOT]) -> Result<bool> {
        let prefix = prefix_of(hash);
        let mut at = home(hash, self.mask);
        for _ in 0..=self.mask {
            let raw = self.slot_mut(at)?;
            match decode_slot(raw) {
                Slot::Empty => {
                    raw.copy_from_slice(slot);
                    return Ok(true);
                }
                Slot::Used(p, _) if p == prefix => {
                    raw.copy_from_slice(slot);
                    return Ok(false);
                }
                Slot::Used(..) => {}
                Slot::Damaged => return Err(damaged(hash, at)),
            }
            at = (at + 1) & self.mask;
        }
        // The table is grown before it fills; a full one is a damaged header.
        Err(SpoolError::Corrupt {
            what: "body index".into(),
            detail: "no free slot".into(),
        })
    }

    /// Writes the touched pages into the file (not synced) and forgets them.
    fn write_out(&mut self) -> Result<()> {
        for (p, page) in std::mem::take(&mut self.pages) {
            self.file.write_all_at(&page[..], page_offset(p))?;
        }
        Ok(())
    }
}

fn prefix_of(hash: &BodyHash) -> [u8; PREFIX] {
    hash[..PREFIX]
        .try_into()
        .expect("a hash is longer than its prefix")
}

/// The slot a hash's probe starts from, in a table of `mask + 1` slots.
fn home(hash: &BodyHash, mask: u64) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().expect("8 bytes")) & mask
}

/// Where page `p` of the slots starts in the file (page 0 of the file is the header).
fn page_offset(p: u64) -> u64 {
    (p + 1) * PAGE as u64
}

fn damaged(hash: &BodyHash, slot: u64) -> SpoolError {
    SpoolError::Corrupt {
        what: format!("body {}", hex(hash)),
        detail: format!("its body index slot {slot} (or one before it in its probe) is damaged"),
    }
}

fn encode_slot(hash: &BodyHash, loc: &Location) -> Result<[u8; SLOT]> {
    let too_large = |what: &str| SpoolError::Corrupt {
        what: format!("body {}", hex(hash)),
        detail: format!("its {what} does not fit the body index"),
    };
    let offset = u32::try_from(loc.offset).map_err(|_| too_large("offset"))?;
    let body_len = u32::try_from(loc.body_len).map_err(|_| too_large("length"))?;
    let mut slot = [0u8; SLOT];
    slot[..PREFIX].copy_from_slice(&hash[..PREFIX]);
    slot[12..16].copy_from_slice(&loc.segment.to_le_bytes());
    slot[16..20].copy_from_slice(&offset.to_le_bytes());
    slot[20..24].copy_from_slice(&loc.frame_len.to_le_bytes());
    slot[24..28].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32fast::hash(&slot[..28]);
    slot[28..].copy_from_slice(&crc.to_le_bytes());
    Ok(slot)
}

fn decode_slot(raw: &[u8]) -> Slot {
    if raw.iter().all(|&b| b == 0) {
        return Slot::Empty;
    }
    let u32_at = |i: usize| u32::from_le_bytes(raw[i..i + 4].try_into().expect("4 bytes"));
    if crc32fast::hash(&raw[..28]) != u32_at(28) {
        return Slot::Damaged;
    }
    let prefix = raw[..PREFIX].try_into().expect("prefix-sized");
    Slot::Used(
        prefix,
        Location {
            segment: u32_at(12),
            offset: u64::from(u32_at(16)),
            frame_len: u32_at(20),
            body_len: u64::from(u32_at(24)),
        },
    )
}

/// A new, empty table of 2^bits slots at `path` (its header says `count` entries, which
/// the caller then puts in).
fn create(path: &Path, bits: u32, count: u64) -> Result<Table> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // Sparse: a page takes disk once an entry is written in it.
    file.set_len(page_offset((1u64 << bits) / SLOTS_PER_PAGE))?;
    write_header(&file, bits, count)?;
    file.sync_all()?;
    Ok(Table {
        file: Arc::new(file),
        bits,
        count,
    })
}

fn write_header(file: &File, bits: u32, count: u64) -> Result<()> {
    let mut header = [0u8; 24];
    header[..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&bits.to_le_bytes());
    header[12..20].copy_from_slice(&count.to_le_bytes());
    let crc = crc32fast::hash(&header[..20]);
    header[20..].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&header, 0)?;
    Ok(())
}

/// The table in `file`, its header checked.
fn load(file: File, path: &Path) -> Result<Table> {
    let corrupt = |detail: String| SpoolError::Corrupt {
        what: format!("body index {}", path.display()),
        detail,
    };
    let mut header = [0u8; 24];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| corrupt(format!("cannot read its header: {e}")))?;
    if header[..8] != MAGIC {
        return Err(corrupt("not a body index of this version".into()));
    }
    let crc = u32::from_le_bytes(header[20..].try_into().expect("4 bytes"));
    if crc32fast::hash(&header[..20]) != crc {
        return Err(corrupt("its header is damaged".into()));
    }
    let bits = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let count = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    if !(MIN_BITS..=MAX_BITS).contains(&bits) || count > 1u64 << bits {
        return Err(corrupt(format!(
            "impossible size (2^{bits} slots, {count} entries)"
        )));
    }
    let len = file.metadata()?.len();
    if len < page_offset((1u64 << bits) / SLOTS_PER_PAGE) {
        return Err(corrupt(format!(
            "cut short ({len} bytes for 2^{bits} slots)"
        )));
    }
    Ok(Table {
        file: Arc::new(file),
        bits,
        count,
    })
}

/// Decodes a bucket of [`BUCKET_TREE`] stored under `key`, and checks that its hashes
/// belong there, in order.
fn decode_bucket(key: &[u8], value: &[u8]) -> Result<Vec<(BodyHash, Vec<u8>)>> {
    let what = || format!("body index bucket {key:02x?}");
    let bucket: Vec<(BodyHash, Vec<u8>)> = match value.split_first() {
        Some((&BUCKET_TAG, rest)) => decode(rest, what)?,
        _ => {
            return Err(SpoolError::Corrupt {
                what: what(),
                detail: "unknown layout".into(),
            })
        }
    };
    let ordered = bucket.windows(2).all(|w| w[0].0 < w[1].0);
    if !ordered || bucket.iter().any(|(h, _)| !h.starts_with(key)) {
        return Err(SpoolError::Corrupt {
            what: what(),
            detail: "entries out of place".into(),
        });
    }
    Ok(bucket)
}

#[cfg(test)]
mod tests {
    use super::super::encode;
    use super::*;

    fn hash(n: u32) -> BodyHash {
        *blake3::hash(&n.to_be_bytes()).as_bytes()
    }

    fn loc(n: u32) -> Location {
        Location {
            segment: n % 7,
            offset: u64::from(n) * 100,
            frame_len: n + 1,
            body_len: u64::from(n) + 2,
        }
    }

    #[test]
    fn grows_keeps_every_entry_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let index = BodyIndex::in_dir(dir.path());
        // Enough to double the table several times, in batches of mixed sizes.
        let all: Vec<u32> = (0..20_000).collect();
        for batch in all.chunks(1500) {
            let entries: Vec<_> = batch.iter().map(|&n| (hash(n), loc(n))).collect();
            index.insert_all(&entries).unwrap();
        }
        assert_eq!(index.len(), 20_000);
        let bits = index.inner.table.read().unwrap().bits;
        assert!(
            bits > MIN_BITS && 20_000 <= (1u64 << bits) / 8 * 7,
            "bits {bits}"
        );
        for n in [0u32, 1, 777, 19_999] {
            assert_eq!(index.get(&hash(n)).unwrap(), Some(loc(n)));
        }
        assert_eq!(index.get(&hash(20_000)).unwrap(), None);
        // Re-pointed: the count does not change.
        index.insert(hash(5), loc(99)).unwrap();
        assert_eq!(index.get(&hash(5)).unwrap(), Some(loc(99)));
        assert_eq!(index.len(), 20_000);
        drop(index);
        // What was synced is there after a reopen, and a half-built growth is dropped.
        std::fs::write(dir.path().join(NEW_FILE), b"half a table").unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let (index, had) = BodyIndex::open(&db, dir.path()).unwrap();
        assert!(had);
        assert!(!dir.path().join(NEW_FILE).exists());
        assert_eq!(index.len(), 20_000);
        for n in (0..20_000).step_by(97) {
            let want = if n == 5 { loc(99) } else { loc(n) };
            assert_eq!(index.get(&hash(n)).unwrap(), Some(want), "body {n}");
        }
        // On disk: 32 bytes a slot and at most 8/7 slots... times two right after a growth.
        let len = std::fs::metadata(dir.path().join(FILE)).unwrap().len();
        assert!(len <= (PAGE as u64) + 20_000 * 32 * 16 / 7, "{len} bytes");
    }

    #[test]
    fn damage_is_reported_naming_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let index = BodyIndex::in_dir(dir.path());
        index
            .insert_all(&[(hash(1), loc(1)), (hash(2), loc(2))])
            .unwrap();
        index.damage(&hash(1));
        let err = index.get(&hash(1)).unwrap_err().to_string();
        assert!(err.contains(&hex(&hash(1))), "{err}");
        assert_eq!(index.get(&hash(2)).unwrap(), Some(loc(2)));
        // A damaged header is refused at open.
        drop(index);
        let path = dir.path().join(FILE);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], 9).unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let err = BodyIndex::open(&db, dir.path()).err().unwrap().to_string();
        assert!(err.contains("header is damaged"), "{err}");
    }

    #[test]
    fn too_large_a_location_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let index = BodyIndex::in_dir(dir.path());
        let far = Location {
            offset: 1 << 33,
            ..loc(1)
        };
        let err = index.insert(hash(1), far).unwrap_err().to_string();
        assert!(
            err.contains("offset") && err.contains(&hex(&hash(1))),
            "{err}"
        );
        assert_eq!(index.get(&hash(1)).unwrap(), None);
    }

    #[test]
    fn older_sled_indexes_move_into_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        // One value per hash (the oldest layout) and buckets (the one before the file).
        let legacy = db.open_tree(LEGACY_TREE).unwrap();
        for n in 0..3000u32 {
            legacy.insert(hash(n), encode(&loc(n)).unwrap()).unwrap();
        }
        let buckets = db.open_tree(BUCKET_TREE).unwrap();
        let mut by_key: BTreeMap<Vec<u8>, Vec<(BodyHash, Vec<u8>)>> = BTreeMap::new();
        for n in 3000..6000u32 {
            by_key
                .entry(hash(n)[..2].to_vec())
                .or_default()
                .push((hash(n), encode(&loc(n)).unwrap()));
        }
        for (key, mut bucket) in by_key {
            bucket.sort();
            let mut value = vec![BUCKET_TAG];
            value.extend_from_slice(&encode(&bucket).unwrap());
            buckets.insert(key, value).unwrap();
        }
        let (index, had) = BodyIndex::open(&db, dir.path()).unwrap();
        assert!(had);
        assert_eq!(index.len(), 6000);
        for n in [0u32, 2999, 3000, 5999] {
            assert_eq!(index.get(&hash(n)).unwrap(), Some(loc(n)), "body {n}");
        }
        let names = db.tree_names();
        assert!(!names.iter().any(|n| n.as_ref() == LEGACY_TREE.as_bytes()));
        assert!(!names.iter().any(|n| n.as_ref() == BUCKET_TREE.as_bytes()));
        // Opened again: nothing moves twice.
        drop(index);
        let (index, _) = BodyIndex::open(&db, dir.path()).unwrap();
        assert_eq!(index.len(), 6000);
    }
}
