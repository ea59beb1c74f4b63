//! The spool: an embedded sled store on the appliance, the only place state lives.
//!
//! Layout (one sled `Db`, several trees):
//! - `<spool>/body-index` (a file beside sled, not a tree: `body_index.rs` says why):
//!   hash(body) -> where the body is (BLAKE3, or sha256 in a spool made before BLAKE3;
//!   see [`BodyHasher`]). Each body is stored once, whatever the number of mailboxes or
//!   folders that hold it. It is spooled as fetched and compressed (zstd) later, when the
//!   machine is idle (`compact.rs`; `[spool] compress = "inline"` compresses at once).
//!   The bytes themselves live in append-only segment files under `<spool>/bodies/`, not
//!   in sled: sled 0.34 keeps every value it holds in memory, and bodies would not fit
//!   the appliance's memory budget (see `body_log.rs` for the details and the crash
//!   rules).
//! - `mailboxes`: mailbox id (the destination address) -> [`MailboxState`].
//! - `folders`:  mailbox \0 source folder -> [`FolderState`].
//! - `message_chunks`: mailbox \0 source folder \0 uidvalidity(u32 BE) chunk(u32 BE) ->
//!   the [`MessageRecord`]s of 64 consecutive UIDs (`chunk` = uid / 64), packed into one
//!   value (see `chunks.rs` for why and how). Spools of older versions kept one record
//!   per value in the `messages` tree; they are packed when the spool is opened
//!   (`legacy.rs`).
//! - `maildir_ids`: the UIDs given to the files of Maildir sources (see
//!   `maildir_ids.rs`).
//! - the default tree holds `body_hash`, the name of the spool's [`BodyHasher`].
//!   The big-endian integers make a prefix scan return a folder's messages in UID order.
//!
//! Values are encoded with bincode. Writes that belong together go through one sled
//! transaction or batch; [`Spool::flush`] makes everything written so far durable and is
//! what the upstream calls before it starts an APPEND whose outcome must survive a crash.
//! Message records are only written once the bodies spooled before them are on disk, so a
//! record that survives a crash always finds its body.
//!
//! # Why the keys look like this
//!
//! sled orders keys as plain byte strings, and a prefix scan is the only cheap query it
//! offers. The key layout is chosen so that every question the daemon asks is one prefix
//! scan:
//!
//! - "the messages of one folder generation, in UID order" scans
//!   `mailbox \0 folder \0 uidvalidity`; the UID that follows is big-endian, so byte
//!   order is numeric order (little-endian would put UID 256 before UID 2).
//! - "everything about one folder" scans `mailbox \0 folder \0`. The trailing NUL matters:
//!   without it a scan of folder `A` would also return folder `AB`.
//! - "everything about one mailbox" scans `mailbox \0`, for the same reason.
//!
//! This only works because names never contain NUL. IMAP strings cannot carry one (RFC
//! 3501's CHAR8 excludes it) and neither can e-mail addresses; the only way to get one is
//! a perverse modified UTF-7 sequence such as `&AAA-`. Such a name is refused with
//! [`SpoolError::Corrupt`] rather than written under a key that could alias another
//! folder.
//!
//! # Encoding
//!
//! Values use bincode's [`DefaultOptions`](bincode::DefaultOptions) (variable-length
//! integers, little-endian, trailing bytes rejected), which keeps records small: a typical
//! [`MessageRecord`] is well under 100 bytes. Decoding is bounded by the length of the
//! stored value, so a corrupt length prefix fails cleanly instead of asking the allocator
//! for gigabytes. A compressed body is one plain zstd frame behind a small header in a
//! segment file, so it can be cut out and inspected with the `zstd` tool if ever needed;
//! a body not compressed yet is its bytes and their CRC-32.

mod blocking;
pub use blocking::in_place_if_large;
mod body_index;
mod body_log;
mod chunks;
mod compact;
mod legacy;
mod maildir_ids;
mod messages;
mod notices;
mod notified;
mod owned;
mod pauses;
mod recent;
mod records;

use bincode::Options;
use body_log::{BodyLog, Stored};
pub use compact::{CompactReport, Compactor};
pub use maildir_ids::MaildirName;
pub use messages::OwnedAtDest;
pub use notices::MAX_NOTICES;
pub use notified::{is_own_notice, Notified, OWN_NOTICE_REASON};
pub use pauses::Pauses;
use recent::Recent;
pub use records::{
    retry_delay, same_flag_set, BodyHash, Claim, MessageRecord, MessageState, Resolution, Settle,
    MAX_ATTEMPTS,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Errors of the spool. sled errors are storage errors (disk full, corruption); they stop
/// the mailbox that hit them and are shown to the admin with the path of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("spool record is corrupt ({what}): {detail}")]
    Corrupt { what: String, detail: String },
    #[error("spool body {0} is missing")]
    MissingBody(String),
    #[error("spool I/O error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = SpoolError> = std::result::Result<T, E>;

/// How a spool hashes bodies; fixed when the spool is created, and recorded in it.
///
/// The hash keys the bodies (one copy of a message that sits in many folders or
/// mailboxes) and recognises an interrupted APPEND at the destination, so every body
/// of a spool must be hashed the same way for as long as it lives. New spools use
/// BLAKE3: on the appliance's CPU it runs at about 5 GB/s against 1.8 GB/s for sha256
/// with the SHA extensions, and every byte of every mailbox goes through it once. A
/// spool created before BLAKE3 (it holds data and no record of its hasher) keeps sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyHasher {
    Sha256,
    Blake3,
}

impl BodyHasher {
    /// The hash of `body`.
    pub fn hash(self, body: &[u8]) -> BodyHash {
        match self {
            BodyHasher::Sha256 => Sha256::digest(body).into(),
            BodyHasher::Blake3 => *blake3::hash(body).as_bytes(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            BodyHasher::Sha256 => "sha256",
            BodyHasher::Blake3 => "blake3",
        }
    }

    /// The hasher recorded in `db`; a spool without that record is given one: sha256
    /// if it already holds bodies or records (made before the record existed), BLAKE3
    /// if it is new.
    fn of(db: &sled::Db, had_bodies: bool, messages: &[&sled::Tree]) -> Result<BodyHasher> {
        if let Some(v) = db.get(HASHER_KEY)? {
            return [BodyHasher::Blake3, BodyHasher::Sha256]
                .into_iter()
                .find(|h| h.name().as_bytes() == v.as_ref())
                .ok_or_else(|| SpoolError::Corrupt {
                    what: "body_hash".into(),
                    detail: format!(
                        "unknown body hash {:?}: made by a newer cutover?",
                        String::from_utf8_lossy(&v)
                    ),
                });
        }
        let hasher = if !had_bodies && messages.iter().all(|t| t.is_empty()) {
            BodyHasher::Blake3
        } else {
            BodyHasher::Sha256
        };
        db.insert(HASHER_KEY, hasher.name())?;
        Ok(hasher)
    }
}

/// The key of the spool's [`BodyHasher`] in the default tree.
const HASHER_KEY: &[u8] = b"body_hash";

/// Per-folder state of one mailbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderState {
    /// Source folder name as the server spells it (modified UTF-7 already decoded to UTF-8).
    pub name: String,
    pub uidvalidity: u32,
    /// Source UIDNEXT at the end of the last complete read.
    pub uidnext: u32,
    /// Source HIGHESTMODSEQ at the end of the last complete read (0 when not offered).
    pub highestmodseq: u64,
    /// Destination folder this one maps to, once known.
    pub dest_name: Option<String>,
    /// The source no longer lists this folder.
    pub gone: bool,
    /// The source's hierarchy delimiter for this folder, as LIST gave it.
    pub delimiter: Option<char>,
    /// LIST attributes (lowercased), kept for the special-use mapping upstream.
    pub attributes: Vec<String>,
    /// The source's personal namespace prefix (e.g. `INBOX.`), for the mapping upstream.
    pub ns_prefix: String,
}

/// Per-mailbox state: status and counters shown to the admin.
///
/// The fields after `last_sync_unix` belong to the daemon (`cutover run`, see
/// [`crate::daemon`]); `sync --once` leaves them alone. Records written before they
/// existed still decode (see [`decode_mailbox`]): a spool filled by the timer-driven
/// `sync --once` can be handed to the daemon as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxState {
    pub id: String,
    /// One of the daemon's statuses (`Queued`, `Syncing`, `Synced`, `IncrementalSyncing`,
    /// `Failed`, `CutoverPending`, `Completed`).
    pub status: String,
    pub last_error: Option<String>,
    /// End of the last pass that finished without error.
    pub last_sync_unix: Option<i64>,
    /// Messages at the destination, after the last pass.
    pub items_synced: u64,
    /// Messages deliberately not copied (too big...), after the last pass.
    pub items_skipped: u64,
    /// Messages that failed or are still waiting to be pushed, after the last pass.
    pub items_failed: u64,
    /// Bytes of the messages at the destination.
    pub bytes: u64,
    /// When `status` was entered.
    pub status_since_unix: i64,
    /// Seconds spent in each status, not counting the current stretch (see
    /// `status_since_unix`).
    pub seconds_in_status: std::collections::BTreeMap<String, u64>,
    /// Passes run by the daemon, successful or not.
    pub passes: u64,
    /// When the cutover of this mailbox began (its domain's MX moved, or by hand).
    pub cutover_since_unix: Option<i64>,
    /// End of the cutover grace: the final pass runs after this.
    pub complete_after_unix: Option<i64>,
    /// The cutover was asked for by hand (`cutover complete`), not seen in DNS; an MX that
    /// moves back does not cancel it.
    pub cutover_manual: bool,
    /// When the final pass succeeded; the mailbox is no longer synced.
    pub completed_unix: Option<i64>,
}

/// [`MailboxState`] as written before the daemon's fields were added.
#[derive(Deserialize)]
struct MailboxStateV1 {
    id: String,
    status: String,
    last_error: Option<String>,
    last_sync_unix: Option<i64>,
}

/// Counts of a mailbox's messages by state, computed from the `messages` tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCounts {
    pub spooled: u64,
    pub appending: u64,
    pub appended: u64,
    pub skipped: u64,
    pub failed: u64,
    pub bytes_appended: u64,
    /// Expunged at the source, deletion at the destination still to do.
    pub expunging: u64,
    /// Expunged at the source and done with (deleted at the destination, or never there).
    pub expunged: u64,
}

/// Handle to the spool; cheap to clone and shared by every task.
///
/// All the fields are reference-counted handles, so cloning costs a few atomic
/// increments and every clone sees the same data. Every method is synchronous: sled
/// operations are short (reads mostly hit its cache, writes go to an in-memory log
/// buffer) and bodies are read and written with single small file operations, so they
/// are called directly from async tasks. What can wait for the disk is an fsync: in
/// [`Spool::flush`], and in the record writes that follow newly spooled bodies.
#[derive(Clone)]
pub struct Spool {
    db: sled::Db,
    /// Where each body is (`body_index.rs`).
    bodies: body_index::BodyIndex,
    mailboxes: sled::Tree,
    folders: sled::Tree,
    /// The packed message records (`chunks.rs`).
    messages: sled::Tree,
    /// UIDs given to the files of Maildir sources (`maildir_ids.rs`).
    maildir_ids: sled::Tree,
    /// The segment files that hold the bodies; `bodies` is their index.
    body_log: Arc<BodyLog>,
    /// See [`Spool::set_compress_inline`].
    compress_inline: Arc<AtomicBool>,
    /// Where the spool lives, for error messages shown to the admin.
    path: Arc<PathBuf>,
    hasher: BodyHasher,
    /// Bodies just spooled, for the upstream to take without reading them back.
    recent: Arc<Recent>,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Default size of sled's page cache (`[spool] cache_bytes`).
///
/// sled only holds the small records (bodies are elsewhere), so this is plenty. The
/// figure is a target more than a limit: sled 0.34 evicts late and counts on-disk sizes,
/// so its real use can run well past it. The whole daemon must fit in 100 MB, hence a
/// cache far below that.
pub const DEFAULT_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// The smallest page cache `[spool] cache_bytes` accepts: sled needs a few pages per
/// shard of its cache to work at all.
pub const MIN_CACHE_BYTES: u64 = 1024 * 1024;

/// zstd level for bodies: -1, zstd's fastest family. On the shared corpus (7.6 MB of
/// real mail) level 1 compresses 2.07x at 372 MB/s and decompresses at 1.1 GB/s; level
/// -1 compresses 1.59x at 1.2-1.4 GB/s and decompresses at ~5 GB/s. Every byte of a
/// mailbox goes through both once, on a box whose CPU the legacy server's copy is
/// waiting for, while the spool is temporary: throughput wins over 30 % of disk.
const ZSTD_LEVEL: i32 = -1;

thread_local! {
    /// Compression and decompression contexts, reused: creating one per message showed up
    /// in profiles (allocation plus clearing its tables).
    static ZSTD: std::cell::RefCell<Option<(zstd::bulk::Compressor<'static>, zstd::bulk::Decompressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's zstd contexts.
fn with_zstd<T>(
    f: impl FnOnce(
        &mut zstd::bulk::Compressor<'static>,
        &mut zstd::bulk::Decompressor<'static>,
    ) -> std::io::Result<T>,
) -> std::io::Result<T> {
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
            // A frame checksum (xxh64) lets every read detect a damaged segment file at a
            // fraction of the cost of re-hashing the body with sha256.
            c.include_checksum(true)?;
            c.include_contentsize(true)?;
            *slot = Some((c, zstd::bulk::Decompressor::new()?));
        }
        let (c, d) = slot.as_mut().expect("set above");
        f(c, d)
    })
}

/// The largest body the spool accepts, in bytes.
///
/// The limit exists for the read side: the decompressed size comes from the stored
/// frame, and a corrupt frame must not make us allocate an absurd buffer. No mail
/// system in scope accepts anything near this (Office 365 stops at 150 MB).
const MAX_BODY_LEN: usize = 256 * 1024 * 1024;

/// Bytes of bodies kept in memory between the source and the upstream (see
/// `recent.rs`): two APPEND batches' worth. Peak memory grows by at most this much.
const RECENT_BUDGET: usize = 16 * 1024 * 1024;

/// How many removals [`Spool::remove_generation`] groups in one batch, so that removing
/// a folder of a million messages does not hold a million keys in memory at once.
const REMOVE_CHUNK: usize = 4096;

/// Separator between the names in a key. Names never contain it (see the module docs).
const SEP: u8 = 0;

impl Spool {
    /// Opens the spool at `path` (a directory), creating it if needed.
    ///
    /// Opening takes sled's lock on the directory: a second process (or a second `open`
    /// in this one while the first handle lives) fails with [`SpoolError::Sled`]. Clone
    /// the returned handle instead of opening the spool twice.
    ///
    /// The sled files and the `bodies/` directory of segment files live side by side in
    /// `path`.
    ///
    /// Everything in it is for the service user's eyes only: the directory is made (or
    /// made again, for a spool an older version left readable) mode 0700, and every file
    /// below it loses its group and other permissions, sled's own included (sled creates
    /// them with the process umask; see `body_log::make_private`).
    pub fn open(path: &Path) -> Result<Spool> {
        Spool::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// [`Spool::open`] with `cache_bytes` for sled's page cache (`[spool] cache_bytes`):
    /// less memory, more reads from the disk (the kernel's page cache, mostly).
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Spool> {
        body_log::create_private_dir(path)?;
        // At once, before sled writes in it: this alone shuts everyone else out.
        body_log::make_private(path, false);
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes.max(MIN_CACHE_BYTES))
            .open()?;
        let (bodies, had_bodies) = body_index::BodyIndex::open(&db, path)?;
        let messages = db.open_tree("message_chunks")?;
        let legacy = db.open_tree(legacy::TREE)?;
        let hasher = BodyHasher::of(&db, had_bodies, &[&messages, &legacy])?;
        let body_log = Arc::new(BodyLog::open(path.join("bodies"))?);
        body_log::make_private(path, true);
        legacy::pack(&db, &legacy, &messages)?;
        Ok(Spool {
            bodies,
            mailboxes: db.open_tree("mailboxes")?,
            folders: db.open_tree("folders")?,
            maildir_ids: db.open_tree("maildir_ids")?,
            messages,
            body_log,
            compress_inline: Arc::new(AtomicBool::new(false)),
            db,
            path: Arc::new(path.to_path_buf()),
            hasher,
            recent: Arc::new(Recent::new(RECENT_BUDGET)),
        })
    }

    /// The hash of `body` as this spool keys it (see [`BodyHasher`]).
    pub fn hash_body(&self, body: &[u8]) -> BodyHash {
        self.hasher.hash(body)
    }

    /// How this spool hashes bodies.
    pub fn hasher(&self) -> BodyHasher {
        self.hasher
    }

    /// The directory the spool lives in, for messages shown to the admin.
    pub fn path(&self) -> &Path {
        &self.path
    }

    // ===== Bodies =====

    /// Stores a message body once and returns its hash, which is what records refer to.
    ///
    /// The same message often reaches the spool many times over: it sits in several
    /// folders, was sent to several mailboxes of the organisation, or is read again after
    /// a restart. Keying bodies by their hash makes all of these one stored copy, and
    /// the existence check comes first so that a body already there costs a hash and a
    /// lookup, not a compression.
    ///
    /// Two tasks may spool the same body at the same moment. Both then append a copy,
    /// the first one to finish is the one the index keeps, and the other is a few
    /// wasted bytes in a segment file: rare, harmless, and cheaper than a lock held
    /// across the compression.
    ///
    /// Nothing is synced here. The body reaches the disk, at the latest, when a message
    /// record is next written or the spool is flushed (see `body_log.rs`).
    pub fn put_body(&self, body: &[u8]) -> Result<BodyHash> {
        if body.len() > MAX_BODY_LEN {
            return Err(SpoolError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "body of {} bytes exceeds the spool limit of {MAX_BODY_LEN} bytes",
                    body.len()
                ),
            )));
        }
        let hash = self.hash_body(body);
        if self.body_log.locate(&self.bodies, &hash)?.is_some() {
            return Ok(hash);
        }
        let len = body.len() as u64;
        if self.compress_inline.load(Ordering::Relaxed) {
            let frame = with_zstd(|c, _| c.compress(body))?;
            self.body_log.append(&hash, Stored::Zstd, &[&frame], len)?;
        } else {
            let crc = crc32fast::hash(body).to_be_bytes();
            self.body_log
                .append(&hash, Stored::Raw, &[body, &crc], len)?;
        }
        Ok(hash)
    }

    /// [`Spool::put_body`], then keeps the body in memory a while for
    /// [`Spool::take_body`]: the source's way to hand a message to the upstream without
    /// the upstream reading it back from disk.
    pub fn put_body_kept(&self, body: Vec<u8>) -> Result<BodyHash> {
        let hash = self.put_body(&body)?;
        // Held in memory for the upstream: the spool's copy is for a crash, not for
        // reading back (see `BodyLog::release`).
        if self.recent.keep(hash, body) {
            self.body_log.release(&self.bodies, &hash)?;
        }
        Ok(hash)
    }

    /// The body with this hash, for sending it: from memory if the source just spooled it
    /// with [`Spool::put_body_kept`] (it is then no longer kept), else
    /// [`Spool::get_body`].
    pub fn take_body(&self, hash: &BodyHash) -> Result<Vec<u8>> {
        match self.recent.take(hash) {
            Some(body) => Ok(body),
            None => self.read_body(hash, true),
        }
    }

    /// (bodies [`Spool::take_body`] found in memory, bodies it read from the spool).
    pub fn take_body_stats(&self) -> (u64, u64) {
        self.recent.stats()
    }

    /// How [`Spool::put_body`] stores new bodies: compressed at once (`true`), or as
    /// they come, for compaction to compress when the machine is idle (`false`, the
    /// default; see `compact.rs`).
    pub fn set_compress_inline(&self, inline: bool) {
        self.compress_inline.store(inline, Ordering::Relaxed);
    }

    /// Returns the body with this hash, exactly as it was given to [`Spool::put_body`].
    ///
    /// The body is checked before it is returned (length, and the zstd frame checksum or
    /// the CRC-32 over the content). It is about to be appended to someone's mailbox, and
    /// a silently damaged message there is far worse than an error here.
    ///
    /// Fails with [`SpoolError::MissingBody`] when no body has this hash, and with
    /// [`SpoolError::Corrupt`] when the stored data does not decode to bytes with this
    /// hash.
    pub fn get_body(&self, hash: &BodyHash) -> Result<Vec<u8>> {
        self.read_body(hash, false)
    }

    /// [`Spool::get_body`]; with `release`, its pages leave the page cache once read.
    fn read_body(&self, hash: &BodyHash, release: bool) -> Result<Vec<u8>> {
        // Twice at most: compaction may move the body between the lookup and the read
        // (its old segment is then gone), and the second lookup finds the new place.
        for _ in 0..2 {
            let Some(loc) = self.body_log.locate(&self.bodies, hash)? else {
                return Err(SpoolError::MissingBody(hex(hash)));
            };
            if let Some((stored, frame)) = self.body_log.read_frame(hash, &loc, release)? {
                return decode_body(hash, stored, frame, loc.body_len);
            }
        }
        Err(SpoolError::Corrupt {
            what: format!("body {}", hex(hash)),
            detail: "its segment file is missing".into(),
        })
    }

    // ===== Folders =====

    /// Returns the state of one source folder of a mailbox, if the spool knows it.
    pub fn folder(&self, mailbox: &str, folder: &str) -> Result<Option<FolderState>> {
        let key = folder_key(mailbox, folder)?;
        match self.folders.get(&key)? {
            Some(value) => decode_folder(&key, &value).map(Some),
            None => Ok(None),
        }
    }

    /// Writes the state of one source folder, keyed by `state.name`.
    pub fn put_folder(&self, mailbox: &str, state: &FolderState) -> Result<()> {
        let key = folder_key(mailbox, &state.name)?;
        self.folders.insert(key, encode(state)?)?;
        Ok(())
    }

    /// Returns the state of every folder of a mailbox, ordered by folder name (bytewise).
    ///
    /// Folders the source no longer lists are included, with `gone` set: their messages
    /// are still in the spool and the admin still wants to see them.
    pub fn folders(&self, mailbox: &str) -> Result<Vec<FolderState>> {
        let prefix = mailbox_prefix(mailbox)?;
        let mut out = Vec::new();
        for item in self.folders.scan_prefix(&prefix) {
            let (key, value) = item?;
            out.push(decode_folder(&key, &value)?);
        }
        Ok(out)
    }

    // ===== Mailboxes =====

    /// Returns the state of one mailbox, if the spool knows it.
    pub fn mailbox(&self, id: &str) -> Result<Option<MailboxState>> {
        check_name("mailbox", id)?;
        match self.mailboxes.get(id.as_bytes())? {
            Some(value) => decode_mailbox(id.as_bytes(), &value).map(Some),
            None => Ok(None),
        }
    }

    /// Writes the state of one mailbox, keyed by `state.id`.
    ///
    /// The id is checked like any other name: it is the first part of every folder and
    /// message key of the mailbox, so it must not contain NUL either.
    pub fn put_mailbox(&self, state: &MailboxState) -> Result<()> {
        check_name("mailbox", &state.id)?;
        self.mailboxes.insert(state.id.as_bytes(), encode(state)?)?;
        Ok(())
    }

    /// Returns the state of every mailbox, ordered by id (bytewise).
    pub fn mailboxes(&self) -> Result<Vec<MailboxState>> {
        let mut out = Vec::new();
        for item in self.mailboxes.iter() {
            let (key, value) = item?;
            out.push(decode_mailbox(&key, &value)?);
        }
        Ok(out)
    }

    /// Makes everything written so far durable, and waits until it is.
    ///
    /// sled writes to an in-memory log that reaches the disk in the background (every
    /// half second), so a crash can lose the last moments of writes. That is fine for
    /// most of them, which are simply done again, but not before an APPEND: the record
    /// saying "this message may be at the destination" must be on disk before the message
    /// is, or a crash could make us copy it twice. The upstream therefore calls this just
    /// before it starts an APPEND batch.
    ///
    /// Bodies are synced first, then sled's log, which covers every tree.
    pub fn flush(&self) -> Result<()> {
        self.body_log.sync(&self.bodies)?;
        self.db.flush()?;
        Ok(())
    }
}

// ===== Keys =====

/// Refuses names that contain the key separator, which would make their keys ambiguous.
fn check_name(kind: &str, name: &str) -> Result<()> {
    if name.as_bytes().contains(&SEP) {
        return Err(SpoolError::Corrupt {
            what: format!("{kind} name {name:?}"),
            detail: "contains a NUL byte, which the spool reserves as its key separator".into(),
        });
    }
    Ok(())
}

/// `mailbox \0`: prefix of everything stored under a mailbox.
fn mailbox_prefix(mailbox: &str) -> Result<Vec<u8>> {
    check_name("mailbox", mailbox)?;
    let mut key = Vec::with_capacity(mailbox.len() + 1);
    key.extend_from_slice(mailbox.as_bytes());
    key.push(SEP);
    Ok(key)
}

/// `mailbox \0 folder`: key of a folder's state in the `folders` tree.
fn folder_key(mailbox: &str, folder: &str) -> Result<Vec<u8>> {
    check_name("folder", folder)?;
    let mut key = mailbox_prefix(mailbox)?;
    // Room for the rest of a message key, which is built on top of this one.
    key.reserve(folder.len() + 1 + 8);
    key.extend_from_slice(folder.as_bytes());
    Ok(key)
}

/// `mailbox \0 folder \0`: prefix of every message record of a folder.
fn folder_prefix(mailbox: &str, folder: &str) -> Result<Vec<u8>> {
    let mut key = folder_key(mailbox, folder)?;
    key.push(SEP);
    Ok(key)
}

/// `mailbox \0 folder \0 uidvalidity`: prefix of the message records of one generation.
fn generation_prefix(mailbox: &str, folder: &str, uidvalidity: u32) -> Result<Vec<u8>> {
    let mut key = folder_prefix(mailbox, folder)?;
    key.extend_from_slice(&uidvalidity.to_be_bytes());
    Ok(key)
}

/// Key of one message record in a spool of an older version (`legacy.rs`).
#[cfg(test)]
fn message_key(mailbox: &str, folder: &str, uidvalidity: u32, uid: u32) -> Result<Vec<u8>> {
    let mut key = generation_prefix(mailbox, folder, uidvalidity)?;
    key.extend_from_slice(&uid.to_be_bytes());
    Ok(key)
}

/// Splits a message key into mailbox, folder, uidvalidity and uid; `None` if malformed.
///
/// `splitn(3, ..)` leaves the last part whole, which matters: the two integers can
/// contain zero bytes themselves.
fn split_message_key(key: &[u8]) -> Option<(&[u8], &[u8], u32, u32)> {
    let mut parts = key.splitn(3, |b| *b == SEP);
    let mailbox = parts.next()?;
    let folder = parts.next()?;
    let ints = parts.next()?;
    if ints.len() != 8 {
        return None;
    }
    Some((mailbox, folder, be_u32(&ints[..4]), be_u32(&ints[4..])))
}

/// Names a message key for an error message: `message mailbox/folder uidvalidity N uid M`.
fn describe_message_key(key: &[u8]) -> String {
    match split_message_key(key) {
        Some((mailbox, folder, uidvalidity, uid)) => format!(
            "message {}/{} uidvalidity {uidvalidity} uid {uid}",
            String::from_utf8_lossy(mailbox),
            String::from_utf8_lossy(folder),
        ),
        None => format!(
            "message key {}",
            String::from_utf8_lossy(key).escape_debug()
        ),
    }
}

/// Names a folder key for an error message: `folder mailbox/folder`.
fn describe_folder_key(key: &[u8]) -> String {
    let mut parts = key.splitn(2, |b| *b == SEP);
    let mailbox = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let folder = String::from_utf8_lossy(parts.next().unwrap_or_default());
    format!("folder {mailbox}/{folder}")
}

/// Reads a big-endian u32 from the first four bytes of `bytes`.
///
/// Only called on slices whose length has been checked, so the zero padding never shows.
fn be_u32(bytes: &[u8]) -> u32 {
    let mut buf = [0u8; 4];
    for (dst, src) in buf.iter_mut().zip(bytes) {
        *dst = *src;
    }
    u32::from_be_bytes(buf)
}

// ===== Values =====

/// The bincode configuration used for every value (see the module docs).
fn bincode_options() -> impl Options {
    bincode::DefaultOptions::new()
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    // The spool's types contain nothing bincode cannot encode, so this cannot fail in
    // practice; it is still reported rather than unwrapped.
    bincode_options()
        .serialize(value)
        .map_err(|e| SpoolError::Corrupt {
            what: std::any::type_name::<T>().into(),
            detail: format!("cannot encode: {e}"),
        })
}

/// Decodes a stored value; `what` names the key in the error.
fn decode<T: DeserializeOwned>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T> {
    bincode_options()
        .with_limit(bytes.len() as u64)
        .deserialize(bytes)
        .map_err(|e| SpoolError::Corrupt {
            what: what(),
            detail: e.to_string(),
        })
}

/// Decodes a folder state, and checks that it is the one its key says it is.
fn decode_folder(key: &[u8], value: &[u8]) -> Result<FolderState> {
    let state: FolderState = decode(value, || describe_folder_key(key))?;
    let key_folder = key.splitn(2, |b| *b == SEP).nth(1);
    if key_folder != Some(state.name.as_bytes()) {
        return Err(SpoolError::Corrupt {
            what: describe_folder_key(key),
            detail: format!("record holds folder {:?}", state.name),
        });
    }
    Ok(state)
}

/// Decodes a mailbox state, and checks that it is the one its key says it is.
///
/// bincode has no field names or versions: a record of the older, shorter layout
/// ([`MailboxStateV1`]) fails to decode as the current one (it ends too early), so that
/// layout is tried next and its missing fields take their defaults.
fn decode_mailbox(key: &[u8], value: &[u8]) -> Result<MailboxState> {
    let what = || format!("mailbox {}", String::from_utf8_lossy(key));
    let state: MailboxState = match decode(value, what) {
        Ok(state) => state,
        Err(e) => match decode::<MailboxStateV1>(value, what) {
            Ok(v1) => MailboxState {
                id: v1.id,
                status: v1.status,
                last_error: v1.last_error,
                last_sync_unix: v1.last_sync_unix,
                ..Default::default()
            },
            Err(_) => return Err(e),
        },
    };
    if state.id.as_bytes() != key {
        return Err(SpoolError::Corrupt {
            what: what(),
            detail: format!("record holds mailbox {:?}", state.id),
        });
    }
    Ok(state)
}

/// Decodes a stored frame into the body, checking its length and checksum.
fn decode_body(
    hash: &BodyHash,
    stored: Stored,
    mut frame: Vec<u8>,
    body_len: u64,
) -> Result<Vec<u8>> {
    match stored {
        Stored::Zstd => decompress_body(hash, &frame, body_len),
        Stored::Raw => {
            let corrupt = |detail: String| SpoolError::Corrupt {
                what: format!("body {}", hex(hash)),
                detail,
            };
            if frame.len() as u64 != body_len + 4 {
                return Err(corrupt(format!(
                    "raw frame of {} bytes for a body of {body_len}",
                    frame.len()
                )));
            }
            let split = frame.len() - 4;
            let want = u32::from_be_bytes([
                frame[split],
                frame[split + 1],
                frame[split + 2],
                frame[split + 3],
            ]);
            frame.truncate(split);
            if crc32fast::hash(&frame) != want {
                return Err(corrupt("CRC-32 mismatch: the segment is damaged".into()));
            }
            Ok(frame)
        }
    }
}

/// Decompresses a stored body and checks it against its length and hash.
fn decompress_body(hash: &BodyHash, stored: &[u8], body_len: u64) -> Result<Vec<u8>> {
    let corrupt = |detail: String| SpoolError::Corrupt {
        what: format!("body {}", hex(hash)),
        detail,
    };
    // The frame records the body's size (zstd writes it when the input size is known, as
    // it always is here). Checking it before decompressing sizes the output buffer
    // exactly, and stops a damaged frame from claiming an absurd size.
    let len = match zstd::zstd_safe::get_frame_content_size(stored) {
        Ok(Some(len)) if len == body_len => len,
        Ok(Some(len)) => {
            return Err(corrupt(format!(
                "zstd frame claims {len} bytes, index says {body_len}"
            )))
        }
        Ok(None) => return Err(corrupt("zstd frame does not record its size".into())),
        Err(_) => return Err(corrupt("not a zstd frame".into())),
    };
    let len = match usize::try_from(len) {
        Ok(len) if len <= MAX_BODY_LEN => len,
        _ => return Err(corrupt(format!("zstd frame claims {len} bytes"))),
    };
    let body = with_zstd(|_, d| d.decompress(stored, len))
        .map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
    if body.len() != len {
        return Err(corrupt(format!(
            "decompressed to {} bytes, frame claims {len}",
            body.len()
        )));
    }
    // Content integrity: the frame's xxh64 checksum was verified by the decompressor
    // (frames are written with one); the index entry was found by this very hash.
    Ok(body)
}

/// Lower-case hex of a hash, as shown to the admin.
fn hex(hash: &BodyHash) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(64);
    for byte in hash {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn open_temp() -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(&dir.path().join("spool")).expect("open spool");
        (dir, spool)
    }

    fn record(uid: u32, state: MessageState) -> MessageRecord {
        MessageRecord {
            uid,
            hash: Sha256::digest(uid.to_be_bytes()).into(),
            size: 1000 + u64::from(uid),
            internal_date: "17-Jul-1996 02:44:25 -0700".into(),
            internal_ts: 837_596_665,
            flags: vec!["\\Seen".into(), "$Forwarded".into()],
            state,
        }
    }

    fn all_states() -> Vec<MessageState> {
        vec![
            MessageState::Spooled,
            MessageState::Appending {
                dest_folder: "Inbox".into(),
                dest_uidvalidity: 7,
                dest_uidnext: 1234,
                marked_ms: 1_764_000_000_123,
                attempts: 2,
            },
            MessageState::Appended {
                dest_folder: "Éléments envoyés".into(),
                dest_uidvalidity: u32::MAX,
                dest_uid: 0,
                flags: vec!["\\Seen".into(), "\\Flagged".into()],
            },
            MessageState::Skipped {
                reason: "larger than 150 MB".into(),
            },
            MessageState::Failed {
                reason: "NO [OVERQUOTA]".into(),
                attempts: 3,
                code: Some("OVERQUOTA".into()),
                retry_after: 1_764_000_000,
            },
            MessageState::Failed {
                reason: "NO".into(),
                attempts: 1,
                code: None,
                retry_after: 0,
            },
            MessageState::Expunging {
                dest_folder: "Inbox".into(),
                dest_uidvalidity: 7,
                dest_uid: 99,
            },
            MessageState::Expunged,
        ]
    }

    fn body_count(spool: &Spool) -> usize {
        spool.body_log.count(&spool.bodies)
    }

    fn segment_bytes(spool: &Spool) -> u64 {
        std::fs::read_dir(spool.body_log.dir())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn body_roundtrip_and_dedup() {
        let (_dir, spool) = open_temp();
        let body = b"Subject: hi\r\n\r\nhello hello hello hello\r\n".repeat(100);
        let h1 = spool.put_body(&body).unwrap();
        let h2 = spool.put_body(&body).unwrap();
        assert_eq!(h1, h2);
        assert_eq!(h1, *blake3::hash(&body).as_bytes());
        assert_eq!(body_count(&spool), 1);
        // Readable before and after it is synced and indexed.
        assert_eq!(spool.get_body(&h1).unwrap(), body);
        spool.flush().unwrap();
        assert_eq!(spool.bodies.len(), 1);
        assert_eq!(spool.get_body(&h1).unwrap(), body);
        // Stored once, as it came (header, body, CRC-32).
        let stored = segment_bytes(&spool);
        assert_eq!(stored, body.len() as u64 + 48 + 4);
        assert_eq!(spool.put_body(&body).unwrap(), h1);
        assert_eq!(segment_bytes(&spool), stored);
        assert_eq!(spool.bodies.len(), 1);
        // Compacted: compressed, still readable, still once.
        assert!(spool.body_log.seal_if_idle(Duration::ZERO).unwrap());
        let r = spool.compact(&|| false).unwrap();
        assert_eq!((r.segments, r.compressed, r.dropped), (1, 1, 0));
        let stored = segment_bytes(&spool);
        assert!(stored < body.len() as u64 / 10, "{stored} bytes on disk");
        assert_eq!(spool.get_body(&h1).unwrap(), body);
        assert_eq!(spool.put_body(&body).unwrap(), h1);
        assert_eq!(segment_bytes(&spool), stored);
        assert_eq!(spool.bodies.len(), 1);

        let other = spool.put_body(b"another body").unwrap();
        assert_ne!(other, h1);
        assert_eq!(body_count(&spool), 2);
        assert_eq!(spool.get_body(&other).unwrap(), b"another body");

        let empty = spool.put_body(b"").unwrap();
        assert_eq!(spool.get_body(&empty).unwrap(), b"");
        spool.flush().unwrap();
        assert_eq!(spool.bodies.len(), 3);
    }

    #[test]
    fn concurrent_put_body_stores_once() {
        let (_dir, spool) = open_temp();
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let spool = spool.clone();
                let body = body.clone();
                std::thread::spawn(move || spool.put_body(&body).unwrap())
            })
            .collect();
        let hashes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(hashes.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(body_count(&spool), 1);
        spool.flush().unwrap();
        assert_eq!(spool.bodies.len(), 1);
        assert_eq!(spool.get_body(&hashes[0]).unwrap(), body);
    }

    #[test]
    fn records_sync_their_bodies() {
        let (_dir, spool) = open_temp();
        let hash = spool.put_body(b"body of uid 1").unwrap();
        assert_eq!(spool.bodies.len(), 0, "indexed only once synced");
        let rec = MessageRecord {
            hash,
            ..record(1, MessageState::Spooled)
        };
        spool.put_messages("m", "INBOX", 1, &[rec]).unwrap();
        assert_eq!(spool.bodies.len(), 1);
        let hash = spool.put_body(b"body of uid 2").unwrap();
        let rec = MessageRecord {
            hash,
            ..record(2, MessageState::Spooled)
        };
        spool.put_message("m", "INBOX", 1, &rec).unwrap();
        assert_eq!(spool.bodies.len(), 2);
    }

    /// Bodies of assorted sizes and contents, some of them twice.
    fn assorted_bodies(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                // The last three repeat the first three.
                let i = i % (n - 3);
                let mut b = format!("Subject: message {i}\r\n\r\n").into_bytes();
                b.extend(std::iter::repeat_n(b"text \x00\xff\r\n".as_slice(), i * 37).flatten());
                b
            })
            .collect()
    }

    #[test]
    fn compaction_compresses_moves_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let bodies = assorted_bodies(40);
        let mut hashes = Vec::new();
        {
            let spool = Spool::open(&path).unwrap();
            // Half spooled compressed at once, half raw, in one segment.
            for (i, b) in bodies.iter().enumerate() {
                spool.set_compress_inline(i % 2 == 0);
                hashes.push(spool.put_body(b).unwrap());
            }
            spool.flush().unwrap();
        }
        let before = std::fs::read_dir(path.join("bodies")).unwrap().count();
        assert_eq!(before, 1);
        let spool = reopen(&path);
        // A lookup made before the move...
        let early = spool
            .body_log
            .locate(&spool.bodies, &hashes[1])
            .unwrap()
            .unwrap();
        let r = spool.compact(&|| false).unwrap();
        assert_eq!(r.segments, 1);
        // 37 distinct bodies, 19 of them raw (odd indexes, minus repeats).
        assert_eq!(spool.bodies.len(), 37);
        assert!(r.compressed > 0 && r.compressed < 37, "{r:?}");
        assert!(r.compressed_bytes < r.raw_bytes, "{r:?}");
        // ... finds its segment gone; get_body looks again and finds the new copy.
        assert!(spool
            .body_log
            .read_frame(&hashes[1], &early, false)
            .unwrap()
            .is_none());
        for (h, b) in hashes.iter().zip(&bodies) {
            assert_eq!(&spool.get_body(h).unwrap(), b);
        }
        // The old segment is gone, the new one holds only compressed entries, and a
        // second compaction has nothing to do.
        let sealed = spool.body_log.sealed_segments().unwrap();
        assert!(sealed.is_empty(), "{sealed:?}");
        drop(spool);
        let spool = reopen(&path);
        let ids = spool.body_log.sealed_segments().unwrap();
        assert_eq!(ids.len(), 1);
        let entries = spool.body_log.entries(ids[0]).unwrap();
        assert_eq!(entries.len(), 37);
        assert!(entries.iter().all(|(_, _, s)| *s == Stored::Zstd));
        assert_eq!(spool.compact(&|| false).unwrap(), CompactReport::default());
        for (h, b) in hashes.iter().zip(&bodies) {
            assert_eq!(&spool.get_body(h).unwrap(), b);
        }
    }

    #[test]
    fn interrupted_compaction_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let bodies = assorted_bodies(30); // 27 distinct
        let hashes: Vec<BodyHash> = {
            let spool = Spool::open(&path).unwrap();
            let h = bodies.iter().map(|b| spool.put_body(b).unwrap()).collect();
            spool.flush().unwrap();
            h
        };
        let spool = reopen(&path);
        // Stop after ten bodies: they moved, the rest did not, the old segment stays.
        let calls = std::cell::Cell::new(0);
        let r = spool
            .compact(&|| {
                calls.set(calls.get() + 1);
                calls.get() > 10
            })
            .unwrap();
        assert_eq!((r.segments, r.compressed), (0, 10));
        for (h, b) in hashes.iter().zip(&bodies) {
            assert_eq!(&spool.get_body(h).unwrap(), b);
        }
        // As after a crash: a new process finishes the job, and drops the ten stale
        // copies in the old segment instead of moving them twice.
        drop(spool);
        let spool = reopen(&path);
        let r = spool.compact(&|| false).unwrap();
        // The first run's new segment holds compressed bodies only and is left alone.
        assert_eq!((r.segments, r.compressed, r.dropped), (1, 17, 10), "{r:?}");
        for (h, b) in hashes.iter().zip(&bodies) {
            assert_eq!(&spool.get_body(h).unwrap(), b);
        }
    }

    #[test]
    fn compactor_thread_compacts_and_stops() {
        let (_dir, spool) = open_temp();
        let body = b"Subject: x\r\n\r\n".repeat(5000);
        let h = spool.put_body(&body).unwrap();
        spool.flush().unwrap();
        assert!(spool.body_log.seal_if_idle(Duration::ZERO).unwrap());
        let raw = segment_bytes(&spool);
        let compactor = Compactor::start(spool.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while segment_bytes(&spool) >= raw && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(compactor);
        assert!(segment_bytes(&spool) < raw / 10, "not compacted");
        assert_eq!(spool.get_body(&h).unwrap(), body);
    }

    #[test]
    fn missing_and_corrupt_bodies() {
        let (_dir, spool) = open_temp();
        let missing = [7u8; 32];
        assert!(
            matches!(spool.get_body(&missing), Err(SpoolError::MissingBody(h)) if h == "07".repeat(32))
        );

        let body = b"x".repeat(10_000);
        let good = spool.put_body(&body).unwrap();
        spool.flush().unwrap();
        let loc = spool
            .body_log
            .locate(&spool.bodies, &good)
            .unwrap()
            .unwrap();
        let is_corrupt = |hash: &BodyHash| match spool.get_body(hash) {
            Err(SpoolError::Corrupt { what, .. }) => what == format!("body {}", hex(hash)),
            other => panic!("expected Corrupt, got {other:?}"),
        };

        // An index entry pointing at another body's entry.
        spool.bodies.insert(missing, loc).unwrap();
        assert!(is_corrupt(&missing));
        // ... past the end of the segment, or into a segment that does not exist.
        let far = body_log::Location {
            offset: 1 << 30,
            ..loc
        };
        spool.bodies.insert(missing, far).unwrap();
        assert!(is_corrupt(&missing));
        let gone = body_log::Location {
            segment: 999,
            ..loc
        };
        spool.bodies.insert(missing, gone).unwrap();
        assert!(is_corrupt(&missing));

        // Damaged bytes inside the frame of a good entry.
        let seg = std::fs::read_dir(spool.body_log.dir())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&seg).unwrap();
        let last = bytes.len() - 5;
        bytes[last] ^= 0x55;
        std::fs::write(&seg, &bytes).unwrap();
        assert!(is_corrupt(&good));
        // A wrong body length in the index.
        let longer = body_log::Location {
            body_len: loc.body_len + 1,
            ..loc
        };
        spool.bodies.insert(good, longer).unwrap();
        assert!(is_corrupt(&good));
        // An index entry that is not a location (a torn slot).
        spool.bodies.damage(&missing);
        assert!(is_corrupt(&missing));
    }

    #[test]
    fn decompress_checks_length_and_hash() {
        let body = b"some body".to_vec();
        let hash: BodyHash = Sha256::digest(&body).into();
        let frame = with_zstd(|c, _| c.compress(&body)).unwrap();
        assert_eq!(
            decompress_body(&hash, &frame, body.len() as u64).unwrap(),
            body
        );
        assert!(decompress_body(&hash, &frame, 3).is_err());
        // A damaged byte of content is caught by the frame checksum.
        let pos = frame
            .windows(4)
            .position(|w| w == b"some")
            .expect("stored raw");
        let mut damaged = frame.clone();
        damaged[pos] ^= 0x20;
        assert!(decompress_body(&hash, &damaged, body.len() as u64).is_err());
        assert!(decompress_body(&hash, b"not zstd", body.len() as u64).is_err());
        assert!(decompress_body(&hash, &frame[..frame.len() - 2], body.len() as u64).is_err());
    }

    #[test]
    fn every_state_roundtrips() {
        let (_dir, spool) = open_temp();
        let recs: Vec<_> = all_states()
            .into_iter()
            .enumerate()
            .map(|(i, s)| record(i as u32 + 1, s))
            .collect();
        spool
            .put_messages("a@example.com", "INBOX", 42, &recs)
            .unwrap();
        for rec in &recs {
            let got = spool
                .get_message("a@example.com", "INBOX", 42, rec.uid)
                .unwrap();
            assert_eq!(got.as_ref(), Some(rec));
        }
        assert_eq!(spool.messages("a@example.com", "INBOX", 42).unwrap(), recs);

        // put_message replaces.
        let mut changed = recs[0].clone();
        changed.state = MessageState::Failed {
            reason: "BAD".into(),
            attempts: 1,
            code: None,
            retry_after: 0,
        };
        spool
            .put_message("a@example.com", "INBOX", 42, &changed)
            .unwrap();
        assert_eq!(
            spool.get_message("a@example.com", "INBOX", 42, 1).unwrap(),
            Some(changed)
        );
        assert_eq!(
            spool.get_message("a@example.com", "INBOX", 42, 99).unwrap(),
            None
        );
        assert_eq!(
            spool.get_message("a@example.com", "INBOX", 41, 1).unwrap(),
            None
        );
    }

    #[test]
    fn concurrent_flag_and_state_changes_all_land() {
        let (_dir, spool) = open_temp();
        let recs: Vec<_> = (1..=3)
            .map(|uid| record(uid, MessageState::Spooled))
            .collect();
        spool.record_new("m", "INBOX", 1, &recs).unwrap();
        // The source changes UID 1's flags over and over while the upstream claims and
        // settles it over and over: neither undoes the other.
        let flags = {
            let spool = spool.clone();
            std::thread::spawn(move || {
                for j in 0..200 {
                    spool
                        .set_source_flags("m", "INBOX", 1, &[(1, vec![format!("k{j}")])])
                        .unwrap();
                }
            })
        };
        let states = {
            let spool = spool.clone();
            std::thread::spawn(move || {
                for j in 0..50 {
                    let claim = Claim {
                        dest_folder: "INBOX".into(),
                        dest_uidvalidity: 1,
                        dest_uidnext: 1,
                        marked_ms: j,
                    };
                    assert_eq!(
                        spool.claim("m", "INBOX", 1, &[1], &claim, 0).unwrap().len(),
                        1
                    );
                    let s = spool
                        .settle("m", "INBOX", 1, &claim, &[(1, Settle::Unsent)], 0)
                        .unwrap();
                    assert_eq!(s, 1);
                }
            })
        };
        flags.join().unwrap();
        states.join().unwrap();
        let rec = spool.get_message("m", "INBOX", 1, 1).unwrap().unwrap();
        assert_eq!(rec.flags, vec!["k199".to_string()]);
        assert_eq!(rec.state, MessageState::Spooled);
        let got = spool.messages("m", "INBOX", 1).unwrap();
        assert_eq!((&got[1], &got[2]), (&recs[1], &recs[2]));
    }

    #[test]
    fn messages_come_in_uid_order() {
        let (_dir, spool) = open_temp();
        // Little-endian or decimal keys would order these wrongly.
        let uids = [70_000u32, 2, 256, 1, u32::MAX, 255, 65_536, 257, 10];
        for uid in uids {
            spool
                .put_message("m", "INBOX", 1, &record(uid, MessageState::Spooled))
                .unwrap();
        }
        let got: Vec<u32> = spool
            .messages("m", "INBOX", 1)
            .unwrap()
            .iter()
            .map(|r| r.uid)
            .collect();
        let mut want = uids.to_vec();
        want.sort_unstable();
        assert_eq!(got, want);
    }

    #[test]
    fn prefix_folders_and_mailboxes_do_not_bleed() {
        let (_dir, spool) = open_temp();
        spool
            .put_messages("m", "A", 1, &[record(1, MessageState::Spooled)])
            .unwrap();
        spool
            .put_messages(
                "m",
                "AB",
                1,
                &[
                    record(2, MessageState::Spooled),
                    record(3, MessageState::Spooled),
                ],
            )
            .unwrap();
        spool
            .put_messages("mx", "A", 1, &[record(4, MessageState::Spooled)])
            .unwrap();
        // A folder whose name starts like the key of another folder's generation.
        spool
            .put_messages("m", "A\u{1}", 1, &[record(5, MessageState::Spooled)])
            .unwrap();

        let uids = |m: &str, f: &str| -> Vec<u32> {
            spool
                .messages(m, f, 1)
                .unwrap()
                .iter()
                .map(|r| r.uid)
                .collect()
        };
        assert_eq!(uids("m", "A"), [1]);
        assert_eq!(uids("m", "AB"), [2, 3]);
        assert_eq!(uids("mx", "A"), [4]);
        assert_eq!(uids("m", "A\u{1}"), [5]);
        assert_eq!(spool.generations("m", "A").unwrap(), [1]);
        assert_eq!(spool.counts("m").unwrap().spooled, 4);
        assert_eq!(spool.counts("mx").unwrap().spooled, 1);

        spool.remove_generation("m", "A", 1).unwrap();
        assert!(uids("m", "A").is_empty());
        assert_eq!(uids("m", "AB"), [2, 3]);
        assert_eq!(uids("mx", "A"), [4]);
        assert_eq!(uids("m", "A\u{1}"), [5]);

        for (m, f) in [("m", "A"), ("m", "AB")] {
            spool
                .put_folder(
                    m,
                    &FolderState {
                        name: f.into(),
                        ..Default::default()
                    },
                )
                .unwrap();
        }
        spool
            .put_folder(
                "mx",
                &FolderState {
                    name: "A".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        let names: Vec<String> = spool
            .folders("m")
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["A", "AB"]);
        assert_eq!(spool.folders("mx").unwrap().len(), 1);
    }

    #[test]
    fn generations_and_remove_generation() {
        let (_dir, spool) = open_temp();
        assert!(spool.generations("m", "INBOX").unwrap().is_empty());
        for uv in [300u32, 5, u32::MAX, 0] {
            let recs: Vec<_> = (1..=3)
                .map(|uid| record(uid, MessageState::Spooled))
                .collect();
            spool.put_messages("m", "INBOX", uv, &recs).unwrap();
        }
        spool
            .put_messages("m", "Sent", 9, &[record(1, MessageState::Spooled)])
            .unwrap();
        assert_eq!(
            spool.generations("m", "INBOX").unwrap(),
            [0, 5, 300, u32::MAX]
        );

        spool.remove_generation("m", "INBOX", 5).unwrap();
        assert_eq!(spool.generations("m", "INBOX").unwrap(), [0, 300, u32::MAX]);
        assert!(spool.messages("m", "INBOX", 5).unwrap().is_empty());
        assert_eq!(spool.messages("m", "INBOX", 300).unwrap().len(), 3);
        assert_eq!(spool.generations("m", "Sent").unwrap(), [9]);

        // Removing an absent generation is a no-op.
        spool.remove_generation("m", "INBOX", 5).unwrap();

        // Larger than one removal chunk.
        let many: Vec<_> = (1..=(REMOVE_CHUNK as u32 * 2 + 7))
            .map(|uid| record(uid, MessageState::Spooled))
            .collect();
        spool.put_messages("m", "Big", 1, &many).unwrap();
        spool.remove_generation("m", "Big", 1).unwrap();
        assert!(spool.generations("m", "Big").unwrap().is_empty());
        assert_eq!(spool.generations("m", "INBOX").unwrap(), [0, 300, u32::MAX]);
    }

    #[test]
    fn counts_by_state() {
        let (_dir, spool) = open_temp();
        assert_eq!(spool.counts("m").unwrap(), MessageCounts::default());
        let recs: Vec<_> = all_states()
            .into_iter()
            .enumerate()
            .map(|(i, s)| record(i as u32 + 1, s))
            .collect();
        spool.put_messages("m", "INBOX", 1, &recs).unwrap();
        spool.put_messages("m", "Sent", 1, &recs).unwrap();
        spool.put_messages("m", "Sent", 2, &recs[2..3]).unwrap();
        spool.put_messages("other", "INBOX", 1, &recs).unwrap();
        let appended_size = recs[2].size;
        assert_eq!(
            spool.counts("m").unwrap(),
            MessageCounts {
                spooled: 2,
                appending: 2,
                appended: 3,
                skipped: 2,
                failed: 4,
                bytes_appended: 3 * appended_size,
                expunging: 2,
                expunged: 2,
            }
        );
    }

    /// Records written before `Expunging` and `Expunged` existed decode unchanged: the
    /// new variants were added at the end, so the stored variant indexes keep their
    /// meaning.
    #[test]
    fn message_states_of_the_old_layout_decode() {
        #[derive(Serialize)]
        #[allow(dead_code)]
        enum OldState {
            Spooled,
            Appending {
                dest_folder: String,
                dest_uidvalidity: u32,
                dest_uidnext: u32,
            },
            Appended {
                dest_folder: String,
                dest_uidvalidity: u32,
                dest_uid: u32,
                flags: Vec<String>,
            },
            Skipped {
                reason: String,
            },
            Failed {
                reason: String,
                attempts: u32,
            },
        }
        #[derive(Serialize)]
        struct OldRecord {
            uid: u32,
            hash: BodyHash,
            size: u64,
            internal_date: String,
            internal_ts: i64,
            flags: Vec<String>,
            state: OldState,
        }
        let (_dir, spool) = open_temp();
        let olds = [
            (OldState::Spooled, MessageState::Spooled),
            (
                OldState::Appended {
                    dest_folder: "Inbox".into(),
                    dest_uidvalidity: 7,
                    dest_uid: 12,
                    flags: vec!["\\Seen".into()],
                },
                MessageState::Appended {
                    dest_folder: "Inbox".into(),
                    dest_uidvalidity: 7,
                    dest_uid: 12,
                    flags: vec!["\\Seen".into()],
                },
            ),
            (
                OldState::Failed {
                    reason: "NO".into(),
                    attempts: 2,
                },
                MessageState::Failed {
                    reason: "NO".into(),
                    attempts: 2,
                    code: None,
                    retry_after: 0,
                },
            ),
            (
                OldState::Appending {
                    dest_folder: "Inbox".into(),
                    dest_uidvalidity: 7,
                    dest_uidnext: 30,
                },
                MessageState::Appending {
                    dest_folder: "Inbox".into(),
                    dest_uidvalidity: 7,
                    dest_uidnext: 30,
                    marked_ms: 0,
                    attempts: 0,
                },
            ),
        ];
        for (i, (old, new)) in olds.into_iter().enumerate() {
            let uid = i as u32 + 1;
            let want = record(uid, new);
            let bytes = encode(&OldRecord {
                uid,
                hash: want.hash,
                size: want.size,
                internal_date: want.internal_date.clone(),
                internal_ts: want.internal_ts,
                flags: want.flags.clone(),
                state: old,
            })
            .unwrap();
            // Variants that did not change are encoded as they were.
            if matches!(
                want.state,
                MessageState::Spooled | MessageState::Appended { .. }
            ) {
                assert_eq!(bytes, encode(&want).unwrap());
            }
            // Such records were only ever written one per value, by older versions, and
            // are packed when their spool is opened.
            let key = message_key("m", "INBOX", 1, uid).unwrap();
            let old_tree = spool.db.open_tree(legacy::TREE).unwrap();
            old_tree.insert(key, bytes).unwrap();
            assert_eq!(
                legacy::pack(&spool.db, &old_tree, &spool.messages).unwrap(),
                1
            );
            assert_eq!(spool.get_message("m", "INBOX", 1, uid).unwrap(), Some(want));
        }
    }

    #[test]
    fn folder_and_mailbox_state_roundtrip() {
        let (_dir, spool) = open_temp();
        assert_eq!(spool.folder("m", "INBOX").unwrap(), None);
        assert_eq!(spool.mailbox("m").unwrap(), None);
        assert!(spool.mailboxes().unwrap().is_empty());

        let inbox = FolderState {
            name: "INBOX".into(),
            uidvalidity: 1_700_000_000,
            uidnext: 4242,
            highestmodseq: 1 << 40,
            dest_name: Some("Inbox".into()),
            gone: false,
            delimiter: Some('/'),
            attributes: vec!["\\haschildren".into()],
            ns_prefix: "INBOX.".into(),
        };
        let old = FolderState {
            name: "Old/Ärchiv".into(),
            gone: true,
            ..Default::default()
        };
        spool.put_folder("m", &inbox).unwrap();
        spool.put_folder("m", &old).unwrap();
        assert_eq!(spool.folder("m", "INBOX").unwrap(), Some(inbox.clone()));
        assert_eq!(spool.folders("m").unwrap(), [inbox.clone(), old.clone()]);
        let updated = FolderState {
            uidnext: 5000,
            ..inbox
        };
        spool.put_folder("m", &updated).unwrap();
        assert_eq!(spool.folder("m", "INBOX").unwrap(), Some(updated));

        let a = MailboxState {
            id: "alice@example.com".into(),
            status: "syncing".into(),
            last_error: Some("timeout".into()),
            last_sync_unix: Some(-5),
            items_synced: 7,
            seconds_in_status: [("Syncing".to_string(), 12)].into(),
            complete_after_unix: Some(1_700_000_000),
            ..Default::default()
        };
        let b = MailboxState {
            id: "bob@example.com".into(),
            ..Default::default()
        };
        spool.put_mailbox(&b).unwrap();
        spool.put_mailbox(&a).unwrap();
        assert_eq!(spool.mailbox("alice@example.com").unwrap(), Some(a.clone()));
        assert_eq!(spool.mailboxes().unwrap(), [a, b]);
    }

    /// A record of the layout `sync --once` wrote before the daemon's fields existed.
    #[test]
    fn mailbox_state_of_the_old_layout_decodes() {
        #[derive(Serialize)]
        struct V1<'a> {
            id: &'a str,
            status: &'a str,
            last_error: Option<&'a str>,
            last_sync_unix: Option<i64>,
        }
        let (_dir, spool) = open_temp();
        let old = encode(&V1 {
            id: "old@example.com",
            status: "Synced",
            last_error: None,
            last_sync_unix: Some(1_700_000_000),
        })
        .unwrap();
        spool.mailboxes.insert("old@example.com", old).unwrap();
        let got = spool.mailbox("old@example.com").unwrap().unwrap();
        assert_eq!(
            got,
            MailboxState {
                id: "old@example.com".into(),
                status: "Synced".into(),
                last_sync_unix: Some(1_700_000_000),
                ..Default::default()
            }
        );
        // Garbage is still refused.
        spool.mailboxes.insert("x", &[0xff, 0x01][..]).unwrap();
        assert!(matches!(
            spool.mailbox("x"),
            Err(SpoolError::Corrupt { .. })
        ));
    }

    #[test]
    fn nul_in_names_is_refused() {
        let (_dir, spool) = open_temp();
        let rec = record(1, MessageState::Spooled);
        assert!(matches!(
            spool.put_message("m\0x", "INBOX", 1, &rec),
            Err(SpoolError::Corrupt { .. })
        ));
        assert!(matches!(
            spool.put_messages("m", "IN\0BOX", 1, &[rec]),
            Err(SpoolError::Corrupt { .. })
        ));
        assert!(matches!(
            spool.messages("m", "a\0", 1),
            Err(SpoolError::Corrupt { .. })
        ));
        assert!(matches!(
            spool.generations("\0", "a"),
            Err(SpoolError::Corrupt { .. })
        ));
        assert!(matches!(
            spool.counts("\0"),
            Err(SpoolError::Corrupt { .. })
        ));
        let folder = FolderState {
            name: "a\0b".into(),
            ..Default::default()
        };
        assert!(matches!(
            spool.put_folder("m", &folder),
            Err(SpoolError::Corrupt { .. })
        ));
        let mailbox = MailboxState {
            id: "a\0b".into(),
            ..Default::default()
        };
        assert!(matches!(
            spool.put_mailbox(&mailbox),
            Err(SpoolError::Corrupt { .. })
        ));
        assert_eq!(spool.messages.len(), 0);
    }

    #[test]
    fn corrupt_records_name_their_key() {
        let (_dir, spool) = open_temp();
        let key = chunks::chunk_key(
            &generation_prefix("m", "INBOX", 7).unwrap(),
            chunks::chunk_of(300),
        );
        spool
            .messages
            .insert(&key, &[0xff, 0xff, 0xff][..])
            .unwrap();
        let err = spool.messages("m", "INBOX", 7).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("m/INBOX uidvalidity 7 uids 256-319"),
            "{text}"
        );
        assert!(matches!(spool.counts("m"), Err(SpoolError::Corrupt { .. })));
        for bad in [&[1u8, 0xff, 0xff][..], &[2, 1, 2, 3], &[9, 0], &[]] {
            spool.messages.insert(&key, bad).unwrap();
            assert!(matches!(
                spool.get_message("m", "INBOX", 7, 300),
                Err(SpoolError::Corrupt { .. })
            ));
        }

        // A record stored in another chunk than its own, or out of order.
        let wrong = chunks::encode_chunk(&[record(400, MessageState::Spooled)]).unwrap();
        spool.messages.insert(&key, wrong).unwrap();
        assert!(matches!(
            spool.get_message("m", "INBOX", 7, 300),
            Err(SpoolError::Corrupt { .. })
        ));
        let unordered = chunks::encode_chunk(&[
            record(301, MessageState::Spooled),
            record(300, MessageState::Spooled),
        ])
        .unwrap();
        spool.messages.insert(&key, unordered).unwrap();
        assert!(matches!(
            spool.messages("m", "INBOX", 7),
            Err(SpoolError::Corrupt { .. })
        ));

        spool
            .folders
            .insert(folder_key("m", "INBOX").unwrap(), &b"\x05"[..])
            .unwrap();
        let text = spool.folder("m", "INBOX").unwrap_err().to_string();
        assert!(text.contains("folder m/INBOX"), "{text}");
    }

    /// sled releases its file lock from its flusher thread, a moment after the last handle
    /// is dropped; a reopen in the same process waits for it (bounded).
    fn reopen(path: &Path) -> Spool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Spool::open(path) {
                Ok(s) => return s,
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(25))
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }

    #[test]
    fn new_spools_hash_with_blake3_and_older_ones_keep_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let body = b"From: a@example.com\r\n\r\nbody\r\n".to_vec();
        let spool = Spool::open(&path).unwrap();
        assert_eq!(spool.hasher(), BodyHasher::Blake3);
        let hash = spool.put_body(&body).unwrap();
        assert_eq!(hash, *blake3::hash(&body).as_bytes());
        // A spool made before the hasher was recorded: data, and no record.
        spool.db.remove(HASHER_KEY).unwrap();
        spool.flush().unwrap();
        drop(spool);
        let spool = reopen(&path);
        assert_eq!(spool.hasher(), BodyHasher::Sha256);
        assert_eq!(
            spool.hash_body(&body),
            <BodyHash>::from(Sha256::digest(&body))
        );
        // Its bodies are still found by the hash they were stored under.
        assert_eq!(spool.get_body(&hash).unwrap(), body);
        drop(spool);
        // The choice is recorded: it holds on the next open.
        assert_eq!(reopen(&path).hasher(), BodyHasher::Sha256);
        // A record this version does not know is refused, not guessed.
        let spool = reopen(&path);
        spool.db.insert(HASHER_KEY, "md5").unwrap();
        spool.flush().unwrap();
        drop(spool);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let err = loop {
            match Spool::open(&path) {
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(25))
                }
                Err(e) => break e,
                Ok(_) => panic!("a spool with an unknown body hash opened"),
            }
        };
        assert!(err.to_string().contains("md5"), "{err}");
    }

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("spool");
        let body1 = b"From: a@example.com\r\n\r\nbody\r\n".to_vec();
        let body2 = b"From: b@example.com\r\n\r\nanother body\r\n".to_vec();
        let rec1;
        let rec2;
        {
            let spool = reopen(&path);
            let hash = spool.put_body(&body1).unwrap();
            rec1 = MessageRecord {
                hash,
                ..record(9, MessageState::Spooled)
            };
            spool
                .put_messages("m", "INBOX", 3, std::slice::from_ref(&rec1))
                .unwrap();
            let folder = FolderState {
                name: "INBOX".into(),
                uidvalidity: 3,
                ..Default::default()
            };
            spool.put_folder("m", &folder).unwrap();
            let mailbox = MailboxState {
                id: "m".into(),
                status: "done".into(),
                ..Default::default()
            };
            spool.put_mailbox(&mailbox).unwrap();
            spool.flush().unwrap();
        }
        // Without an explicit flush: writing the record syncs the body, and dropping the
        // last handle flushes sled. The body goes to a second segment.
        {
            let spool = reopen(&path);
            let hash = spool.put_body(&body2).unwrap();
            rec2 = MessageRecord {
                hash,
                ..record(10, MessageState::Spooled)
            };
            spool.put_message("m", "INBOX", 3, &rec2).unwrap();
            // Known bodies are not stored again after a reopen.
            assert_eq!(spool.put_body(&body1).unwrap(), rec1.hash);
        }
        let spool = reopen(&path);
        assert_eq!(spool.path(), path);
        assert_eq!(std::fs::read_dir(spool.body_log.dir()).unwrap().count(), 2);
        assert_eq!(spool.bodies.len(), 2);
        assert_eq!(spool.get_body(&rec1.hash).unwrap(), body1);
        assert_eq!(spool.get_body(&rec2.hash).unwrap(), body2);
        assert_eq!(spool.messages("m", "INBOX", 3).unwrap(), [rec1, rec2]);
        assert_eq!(
            spool.folder("m", "INBOX").unwrap().map(|f| f.uidvalidity),
            Some(3)
        );
        assert_eq!(
            spool.mailbox("m").unwrap().map(|m| m.status),
            Some("done".into())
        );
    }

    #[test]
    fn segments_rotate() {
        let (_dir, spool) = open_temp();
        spool.body_log.set_max_segment_len(4096);
        // Pseudo-random, so that zstd cannot shrink them much and a few fill a segment.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let bodies: Vec<Vec<u8>> = (0..50)
            .map(|_| {
                (0..1500)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect()
            })
            .collect();
        let mut hashes = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            hashes.push(spool.put_body(body).unwrap());
            if i % 10 == 9 {
                spool.flush().unwrap();
            }
        }
        let segments = std::fs::read_dir(spool.body_log.dir()).unwrap().count();
        assert!(segments > 10, "{segments} segments");
        for (hash, body) in hashes.iter().zip(&bodies) {
            assert_eq!(&spool.get_body(hash).unwrap(), body);
        }
        spool.flush().unwrap();
        assert_eq!(spool.bodies.len(), 50);
    }

    /// How many of the whole pages inside `loc`'s entry are in the page cache (mincore
    /// over a mapping of the segment), and how many whole pages there are.
    fn resident_pages(spool: &Spool, loc: &body_log::Location) -> (usize, usize) {
        use std::os::fd::AsRawFd;
        let page = 4096u64;
        let path = spool
            .body_log
            .dir()
            .join(format!("{:08x}.seg", loc.segment));
        let file = std::fs::File::open(&path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        let first = loc.offset.div_ceil(page) as usize;
        let end = ((loc.offset + 48 + u64::from(loc.frame_len)) / page) as usize;
        let mut vec = vec![0u8; len.div_ceil(page as usize)];
        // SAFETY: a read-only shared mapping of `len` bytes of an open file, only passed
        // to mincore (never read) and unmapped before `file` is dropped.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            assert_eq!(libc::mincore(map, len, vec.as_mut_ptr()), 0);
            libc::munmap(map, len);
        }
        let whole = end.saturating_sub(first);
        (
            vec[first..end].iter().filter(|b| *b & 1 == 1).count(),
            whole,
        )
    }

    /// Whether the filesystem of `dir` drops a synced file's pages when advised to: not
    /// so on a tmpfs, whose pages are the storage itself. Checked with a file of its own.
    fn page_cache_can_be_dropped(dir: &Path) -> bool {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let path = dir.join("probe");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.write_all(&vec![7u8; 64 * 1024]).unwrap();
        file.sync_all().unwrap();
        // SAFETY: advice about an open descriptor's pages; no memory is touched.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let mut resident = vec![0u8; 16];
        // SAFETY: a read-only mapping of the 64 KiB file, only passed to mincore.
        let mapped = unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                64 * 1024,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            let ok = libc::mincore(map, 64 * 1024, resident.as_mut_ptr()) == 0;
            libc::munmap(map, 64 * 1024);
            ok
        };
        std::fs::remove_file(&path).unwrap();
        mapped && resident.iter().all(|b| b & 1 == 0)
    }

    /// A body the upstream will take from memory leaves the page cache once it is
    /// durable; one it must read back stays until it is read, then leaves too. Either is
    /// still read back intact from the disk.
    #[test]
    fn bodies_leave_the_page_cache_when_nobody_reads_them_back() {
        // On disk: a tmpfs has no page cache to leave (its pages are the storage).
        let disk = concat!(env!("CARGO_MANIFEST_DIR"), "/target");
        std::fs::create_dir_all(disk).unwrap();
        let dir = tempfile::tempdir_in(disk).expect("tempdir under target/");
        if !page_cache_can_be_dropped(dir.path()) {
            eprintln!(
                "NOTICE: {} keeps clean pages after POSIX_FADV_DONTNEED (a tmpfs?); \
                 nothing to check here",
                dir.path().display()
            );
            return;
        }
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        let body = |n: u8| -> Vec<u8> {
            (0..256 * 1024u32)
                .map(|i| (i as u8).wrapping_mul(n).wrapping_add(n))
                .collect()
        };
        let (kept, read_back) = (body(3), body(7));
        let kept_hash = spool.put_body_kept(kept.clone()).unwrap();
        let read_hash = spool.put_body(&read_back).unwrap();
        let loc = |h: &BodyHash| spool.body_log.locate(&spool.bodies, h).unwrap().unwrap();
        let (kept_loc, read_loc) = (loc(&kept_hash), loc(&read_hash));
        let (resident, whole) = resident_pages(&spool, &kept_loc);
        assert!(whole >= 60, "{whole} pages");
        assert_eq!(resident, whole, "written, not yet durable: still cached");

        spool.flush().unwrap();
        assert_eq!(
            resident_pages(&spool, &kept_loc).0,
            0,
            "durable and in memory"
        );
        let (resident, whole) = resident_pages(&spool, &read_loc);
        assert_eq!(resident, whole, "to be read back: stays");

        assert_eq!(spool.take_body(&read_hash).unwrap(), read_back);
        assert_eq!(resident_pages(&spool, &read_loc).0, 0, "read back: gone");
        assert_eq!(spool.take_body(&kept_hash).unwrap(), kept, "from memory");
        assert_eq!(
            spool.get_body(&kept_hash).unwrap(),
            kept,
            "and from the disk"
        );
        assert_eq!(spool.get_body(&read_hash).unwrap(), read_back);
    }
}
