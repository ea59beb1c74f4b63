//! Reads one Maildir folder into the spool, a window of directory entries at a time.
//!
//! The folder's `new/` and then its `cur/` are listed in windows of [`WINDOW`] entries
//! (names only). Each window's base names get their UIDs (`dovecot-uidlist`, or the
//! spool's assignment table, see `spool/maildir_ids.rs`), are compared with the spool's
//! records, and only the files the spool lacks are read, one at a time, straight into
//! the spool. What is held at once is one window of names and one body, whatever the
//! size of the folder; with `propagate_deletes` also the set of UIDs seen (4 bytes each),
//! as the IMAP source holds its `UID SEARCH ALL`.
//!
//! `new/` is listed before `cur/`: a file a mail client moves from `new/` to `cur/` in
//! the meantime is then seen at least once, and a file renamed between its listing and
//! its read is looked for again by its base name.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::files::{self, FileRead};
use super::keywords::Keywords;
use super::names;
use super::tree::Folder;
use super::uidlist::Uidlist;
use crate::source::{
    header_block, longest_line, put_folder_keeping_dest, record_expunges, Carried, MailboxLimits,
    Progress, SourceError, SourceOptions, SourceReport, FIRST_BATCH_BYTES, FIRST_BATCH_COUNT,
};
use crate::spool::{same_flag_set, MaildirName, MessageRecord, MessageState, Spool};

/// Directory entries compared with the spool at once.
pub const WINDOW: usize = 4096;

/// What a folder read needs besides the folder.
pub struct FolderContext<'a> {
    pub spool: &'a Spool,
    pub mailbox: &'a str,
    pub opts: &'a SourceOptions,
    pub limits: &'a MailboxLimits,
    pub ns_prefix: &'a str,
    /// With `max_items_per_mailbox`: the base names of this folder beyond the limit.
    pub beyond: Option<&'a HashSet<String>>,
}

/// One message file as listed.
struct Entry {
    path: PathBuf,
    base: String,
    letters: Option<String>,
}

/// The names of `new/` then `cur/`, a window at a time. A directory that cannot be
/// listed is reported, and the listing is then incomplete (no deletes are inferred).
pub struct Listing {
    dirs: Vec<PathBuf>,
    current: Option<std::fs::ReadDir>,
    pub complete: bool,
    pub problems: Vec<String>,
}

impl Listing {
    pub fn new(dir: &Path) -> Listing {
        Listing {
            dirs: vec![dir.join("cur"), dir.join("new")],
            current: None,
            complete: true,
            problems: Vec::new(),
        }
    }

    /// Up to `n` message files; empty at the end.
    fn next_window(&mut self, n: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        while out.len() < n {
            let rd = match &mut self.current {
                Some(rd) => rd,
                None => {
                    let Some(dir) = self.dirs.pop() else { break };
                    match std::fs::read_dir(&dir) {
                        Ok(rd) => self.current.insert(rd),
                        Err(e) => {
                            self.complete = false;
                            self.problems.push(format!("{}: {e}", dir.display()));
                            continue;
                        }
                    }
                }
            };
            let Some(item) = rd.next() else {
                self.current = None;
                continue;
            };
            let entry = match item {
                Ok(e) => e,
                Err(e) => {
                    self.complete = false;
                    self.problems
                        .push(format!("listing a Maildir directory: {e}"));
                    self.current = None;
                    continue;
                }
            };
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                self.problems.push(format!(
                    "{}: a file name that is not UTF-8; not read as mail",
                    path.display()
                ));
                continue;
            };
            if let Some(why) = names::not_mail(&name) {
                // Dot files are the servers' own business; the rest is worth a line.
                if !name.starts_with('.') {
                    self.problems
                        .push(format!("{}: {why}; not read as mail", path.display()));
                }
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_symlink()) {
                self.problems.push(format!(
                    "{}: a symbolic link; not followed, not read as mail",
                    path.display()
                ));
                continue;
            }
            let (base, letters) = names::split(&name);
            out.push(Entry {
                base: base.to_string(),
                letters: letters.map(str::to_string),
                path,
            });
        }
        out
    }
}

/// The UID a base name has in this folder generation, without giving one.
fn lookup(
    cx: &FolderContext<'_>,
    folder: &str,
    uv: u32,
    uidlist: Option<&Uidlist>,
    base: &str,
) -> Result<Option<u32>, SourceError> {
    if let Some(uid) = cx.spool.maildir_known(cx.mailbox, folder, uv, base)? {
        return Ok(Some(uid));
    }
    match uidlist.and_then(|u| u.uids.get(base)) {
        Some(&uid) if !cx.spool.maildir_uid_taken(cx.mailbox, folder, uv, uid)? => Ok(Some(uid)),
        _ => Ok(None),
    }
}

/// Reads one folder into the spool (see the module docs).
pub fn read_folder(
    cx: &FolderContext<'_>,
    folder: &Folder,
    report: &mut SourceReport,
    on_progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(), SourceError> {
    let (spool, mailbox) = (cx.spool, cx.mailbox);
    let errors_before = report.errors.total();
    let mut problems = Vec::new();
    let uidlist = match Uidlist::load(&folder.dir) {
        Ok(u) => u,
        Err(e) => {
            problems.push(format!("{e}; UIDs are given by cutover instead"));
            None
        }
    };
    let uv = match &uidlist {
        Some(u) => u.uidvalidity,
        None => spool.maildir_uidvalidity(mailbox, &folder.name)?,
    };
    let floor = uidlist.as_ref().map(|u| u.next_uid).unwrap_or(0);
    let keywords = Keywords::load(&folder.dir, &mut problems);

    let previous = spool.folder(mailbox, &folder.name)?;
    let mut state = previous.clone().unwrap_or_default();
    state.name = folder.name.clone();
    state.delimiter = Some(folder.delimiter);
    state.ns_prefix = cx.ns_prefix.to_string();
    state.gone = false;
    let same_generation = previous.as_ref().map(|p| p.uidvalidity) == Some(uv);

    let mut carried = Carried::default();
    for old in spool.generations(mailbox, &folder.name)? {
        if old != uv {
            tracing::warn!(mailbox, folder = %folder.name, old, new = uv,
                "UIDVALIDITY changed; matching messages by content");
            for rec in spool.messages(mailbox, &folder.name, old)? {
                carried.add(old, &rec);
            }
        }
    }

    let deletes = cx.limits.deletes;
    let mut present: Option<HashSet<u32>> =
        (deletes.propagate && same_generation).then(HashSet::new);
    let mut listing = Listing::new(&folder.dir);
    let mut batch = Batch::default();
    let mut announced = false;
    let mut max_uid = 0u32;
    loop {
        let mut window = listing.next_window(WINDOW);
        if window.is_empty() {
            break;
        }
        // New files get their UIDs in name order, which for Maildir names is arrival order.
        window.sort_by(|a, b| a.base.cmp(&b.base));
        let asks: Vec<MaildirName> = window
            .iter()
            .map(|e| MaildirName {
                base: e.base.clone(),
                proposed: uidlist.as_ref().and_then(|u| u.uids.get(&e.base).copied()),
            })
            .collect();
        let uids = spool.maildir_assign(mailbox, &folder.name, uv, &asks, floor)?;
        drop(asks);
        max_uid = max_uid.max(uids.iter().copied().max().unwrap_or(0));
        if let Some(p) = &mut present {
            p.extend(&uids);
        }
        let mut have: HashMap<u32, MessageRecord> = spool
            .messages_of(mailbox, &folder.name, uv, &uids)?
            .into_iter()
            .map(|r| (r.uid, r))
            .collect();
        let mut updates: Vec<(u32, Vec<String>)> = Vec::new();
        let mut wanted: Vec<(u32, Entry, Vec<String>)> = Vec::new();
        let mut seen: HashSet<u32> = HashSet::new();
        for (entry, uid) in window.into_iter().zip(uids) {
            // The same message twice in one window (moved to cur/ meanwhile): once.
            if !seen.insert(uid) {
                continue;
            }
            let flags = names::flags(entry.letters.as_deref(), &entry.base, &keywords);
            if let Some(rec) = have.remove(&uid) {
                if !same_flag_set(&flags, &rec.flags) {
                    report.flag_changes += 1;
                    updates.push((uid, flags));
                }
                continue;
            }
            wanted.push((uid, entry, flags));
        }
        spool.set_source_flags(mailbox, &folder.name, uv, &updates)?;
        if !wanted.is_empty() && !announced {
            announced = true;
            let mut early = state.clone();
            if !same_generation {
                early.uidvalidity = uv;
                early.uidnext = 0;
                early.highestmodseq = 0;
            }
            put_folder_keeping_dest(spool, mailbox, &mut early)?;
            on_progress(Progress::Fetching);
        }
        for (uid, entry, flags) in wanted {
            // Read in an earlier window and not written yet (moved to cur/ meanwhile).
            if !batch.uids.insert(uid) {
                continue;
            }
            read_one(
                cx,
                folder,
                uid,
                entry,
                flags,
                &keywords,
                &mut carried,
                &mut batch,
                report,
            )?;
            if batch.full(cx.opts) {
                batch.write(cx, folder, uv, report)?;
                on_progress(Progress::Spooled {
                    folder: &folder.name,
                });
            }
        }
    }
    if !batch.records.is_empty() || !batch.carries.is_empty() {
        batch.write(cx, folder, uv, report)?;
        on_progress(Progress::Spooled {
            folder: &folder.name,
        });
    }
    problems.append(&mut listing.problems);
    for p in problems {
        tracing::warn!(mailbox, folder = %folder.name, "{p}");
        report.errors.push(format!("folder {:?}: {p}", folder.name));
    }

    if let (Some(present), true) = (&present, listing.complete) {
        let mut live_known = 0usize;
        let mut gone: Vec<u32> = Vec::new();
        let mut from = 0u32;
        loop {
            let recs = spool.messages_from(mailbox, &folder.name, uv, from, 4096)?;
            let Some(last) = recs.last().map(|r| r.uid) else {
                break;
            };
            for r in recs.iter().filter(|r| r.state.is_live()) {
                live_known += 1;
                if !present.contains(&r.uid) {
                    gone.push(r.uid);
                }
            }
            match last.checked_add(1) {
                Some(next) => from = next,
                None => break,
            }
        }
        if !gone.is_empty() {
            // A directory listed while files are renamed in it may miss a file: a message
            // is gone only if a second listing does not find it either.
            let mut missing: HashSet<u32> = gone.iter().copied().collect();
            let mut again = Listing::new(&folder.dir);
            loop {
                let window = again.next_window(WINDOW);
                if window.is_empty() {
                    break;
                }
                for e in window {
                    if let Some(uid) = lookup(cx, &folder.name, uv, uidlist.as_ref(), &e.base)? {
                        missing.remove(&uid);
                    }
                }
            }
            if again.complete {
                gone.retain(|u| missing.contains(u));
            } else {
                gone.clear();
            }
        }
        record_expunges(
            spool,
            mailbox,
            &folder.name,
            uv,
            live_known,
            &gone,
            deletes,
            report,
        )?;
    }

    for old in spool.generations(mailbox, &folder.name)? {
        if old != uv {
            spool.remove_generation(mailbox, &folder.name, old)?;
            spool.maildir_forget_generation(mailbox, &folder.name, old)?;
        }
    }
    let all_read = report.errors.total() == errors_before;
    state.uidvalidity = uv;
    // What an IMAP server on these files would announce as UIDNEXT; no HIGHESTMODSEQ,
    // so that a later read over IMAP lists the folder in full once.
    state.uidnext = if all_read || !same_generation {
        floor.max(max_uid.saturating_add(1))
    } else {
        state.uidnext
    };
    state.highestmodseq = 0;
    put_folder_keeping_dest(spool, mailbox, &mut state)?;
    on_progress(Progress::Spooled {
        folder: &folder.name,
    });
    Ok(())
}

/// Records and bodies read since the last write to the spool. The first batches of a
/// folder are small and double, as over IMAP, so the upstream starts early.
#[derive(Default)]
struct Batch {
    records: Vec<MessageRecord>,
    carries: Vec<((u32, u32), MessageRecord)>,
    /// The UIDs of `records` and `carries`.
    uids: HashSet<u32>,
    bytes: u64,
    ramp: u32,
}

impl Batch {
    fn full(&self, opts: &SourceOptions) -> bool {
        let max_bytes = opts.fetch_batch_bytes.min(FIRST_BATCH_BYTES << self.ramp);
        let max_count = opts.fetch_batch_count.min(FIRST_BATCH_COUNT << self.ramp);
        self.bytes >= max_bytes || self.records.len() + self.carries.len() >= max_count
    }

    fn write(
        &mut self,
        cx: &FolderContext<'_>,
        folder: &Folder,
        uv: u32,
        report: &mut SourceReport,
    ) -> Result<(), SourceError> {
        self.ramp = (self.ramp + 1).min(16);
        let spooled: Vec<&MessageRecord> = self
            .records
            .iter()
            .filter(|r| matches!(r.state, MessageState::Spooled))
            .chain(self.carries.iter().map(|(_, r)| r))
            .collect();
        report.new_messages += spooled.len() as u64;
        report.new_bytes += spooled.iter().map(|r| r.size).sum::<u64>();
        let counters = crate::metrics::get();
        counters.source_fetched.inc_by(spooled.len() as u64);
        counters
            .source_fetched_bytes
            .inc_by(spooled.iter().map(|r| r.size).sum::<u64>());
        cx.spool
            .record_new(cx.mailbox, &folder.name, uv, &self.records)?;
        for ((old_uv, old_uid), rec) in &self.carries {
            cx.spool
                .carry(cx.mailbox, &folder.name, *old_uv, *old_uid, uv, rec)?;
        }
        self.records.clear();
        self.carries.clear();
        self.uids.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// A record for a message not copied, with the reason (`hash` zero: no body spooled).
fn skipped(uid: u32, size: u64, mtime: i64, flags: Vec<String>, reason: String) -> MessageRecord {
    MessageRecord {
        uid,
        hash: [0; 32],
        size,
        internal_date: internal_date(mtime),
        internal_ts: mtime,
        flags,
        state: MessageState::Skipped { reason },
    }
}

/// The INTERNALDATE of a file's mtime, as Dovecot gives it (in UTC here).
pub fn internal_date(mtime: i64) -> String {
    let dt = chrono::DateTime::from_timestamp(mtime, 0)
        .unwrap_or_default()
        .fixed_offset();
    crate::imap::response::format_internal_date(&dt)
}

/// Reads one file the spool lacks into `batch` (or reports why not).
#[allow(clippy::too_many_arguments)]
fn read_one(
    cx: &FolderContext<'_>,
    folder: &Folder,
    uid: u32,
    entry: Entry,
    mut flags: Vec<String>,
    keywords: &Keywords,
    carried: &mut Carried,
    batch: &mut Batch,
    report: &mut SourceReport,
) -> Result<(), SourceError> {
    let max = cx.opts.max_message_bytes;
    let mut path = entry.path;
    // Renamed (flags changed, or moved from new/ to cur/) between the listing and here:
    // looked for again by base name, a few times at most (a client may rename it again).
    let mut tries = 0;
    let read = loop {
        match files::read(&path, max) {
            Ok(r) => break r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => {
                tries += 1;
                match files::relocate(&folder.dir, &entry.base) {
                    Some(p) => {
                        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                        let (_, letters) = names::split(name);
                        flags = names::flags(letters, &entry.base, keywords);
                        path = p;
                    }
                    None => {
                        // Deleted meanwhile: nothing to copy.
                        tracing::debug!(path = %path.display(), "message file gone while read");
                        return Ok(());
                    }
                }
            }
            Err(e) => {
                let msg = format!(
                    "folder {:?}: {}: cannot be read: {e}; not copied yet, tried again on the \
                     next pass",
                    folder.name,
                    path.display()
                );
                tracing::warn!(mailbox = cx.mailbox, "{msg}");
                report.errors.push(msg);
                return Ok(());
            }
        }
    };
    let subject_of = |head: &[u8]| {
        crate::imap::response::header_value(header_block(head), "subject").unwrap_or_default()
    };
    let (body, mtime) = match read {
        FileRead::NotAFile(what) => {
            let msg = format!(
                "folder {:?}: {}: {what}, not a message file; not read",
                folder.name,
                path.display()
            );
            tracing::warn!(mailbox = cx.mailbox, "{msg}");
            report.errors.push(msg);
            return Ok(());
        }
        FileRead::TooBig { size, mtime, head } => {
            crate::metrics::get().skip(crate::metrics::SkipReason::TooBig, 1);
            let reason = format!(
                "{size} bytes, over max_message_bytes ({max}); date {}; subject {:?}; file {}",
                internal_date(mtime),
                subject_of(&head),
                path.display()
            );
            note_skip(cx, folder, uid, &reason, report);
            batch.records.push(skipped(uid, size, mtime, flags, reason));
            return Ok(());
        }
        FileRead::Body { body, mtime } => (body, mtime),
    };
    if cx.beyond.is_some_and(|b| b.contains(&entry.base)) {
        crate::metrics::get().skip(crate::metrics::SkipReason::ItemLimit, 1);
        let reason = format!(
            "over max_items_per_mailbox ({}): only the newest messages of the mailbox \
             (by INTERNALDATE across folders) are copied; this one is from {}",
            cx.limits.max_items,
            internal_date(mtime)
        );
        note_skip(cx, folder, uid, &reason, report);
        batch
            .records
            .push(skipped(uid, body.len() as u64, mtime, flags, reason));
        return Ok(());
    }
    let max_line = cx.limits.max_line_length;
    let longest = if max_line > 0 { longest_line(&body) } else { 0 };
    let size = body.len() as u64;
    let too_long = (max_line > 0 && longest > max_line).then(|| {
        format!(
            "has a line of {longest} characters, over max_line_length ({max_line}; Exchange \
             Online refuses longer lines); date {}; subject {:?}; {size} bytes",
            internal_date(mtime),
            subject_of(&body)
        )
    });
    let hash = match too_long {
        Some(_) => cx.spool.put_body(&body)?,
        None => cx.spool.put_body_kept(body)?,
    };
    let mut rec = MessageRecord {
        uid,
        hash,
        size,
        internal_date: internal_date(mtime),
        internal_ts: mtime,
        flags,
        state: MessageState::Spooled,
    };
    batch.bytes += size;
    if let Some(old) = carried.take(&hash, mtime) {
        batch.carries.push((old, rec));
        return Ok(());
    }
    if let Some(reason) = too_long {
        crate::metrics::get().skip(crate::metrics::SkipReason::LineTooLong, 1);
        note_skip(cx, folder, uid, &reason, report);
        rec.state = MessageState::Skipped { reason };
    }
    batch.records.push(rec);
    Ok(())
}

fn note_skip(
    cx: &FolderContext<'_>,
    folder: &Folder,
    uid: u32,
    reason: &str,
    report: &mut SourceReport,
) {
    tracing::warn!(mailbox = cx.mailbox, folder = %folder.name, uid, %reason, "message skipped");
    report.skipped += 1;
    report.skipped_details.push(format!(
        "folder {:?} UID {uid}: skipped: {reason}",
        folder.name
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_moved_to_cur_while_read_is_found_again_with_its_new_flags() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("Maildir");
        for s in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(dir.join(s)).unwrap();
        }
        let spool = Spool::open(&d.path().join("spool")).unwrap();
        std::fs::write(dir.join("new/1700.M1.h"), b"Subject: a\r\n\r\nbody\r\n").unwrap();
        let mut listing = Listing::new(&dir);
        let mut window = listing.next_window(WINDOW);
        assert_eq!(window.len(), 1);
        // A mail client reads it now: new/ -> cur/, seen.
        std::fs::rename(dir.join("new/1700.M1.h"), dir.join("cur/1700.M1.h:2,S")).unwrap();
        let opts = SourceOptions {
            max_message_bytes: 1 << 20,
            fetch_batch_bytes: 1 << 20,
            fetch_batch_count: 10,
        };
        let limits = MailboxLimits::default();
        let cx = FolderContext {
            spool: &spool,
            mailbox: "m",
            opts: &opts,
            limits: &limits,
            ns_prefix: "INBOX.",
            beyond: None,
        };
        let folder = Folder {
            name: "INBOX".into(),
            dir: dir.clone(),
            delimiter: '.',
        };
        let mut batch = Batch::default();
        let mut report = SourceReport::default();
        let entry = window.remove(0);
        let flags = names::flags(entry.letters.as_deref(), &entry.base, &Keywords::default());
        read_one(
            &cx,
            &folder,
            1,
            entry,
            flags,
            &Keywords::default(),
            &mut Carried::default(),
            &mut batch,
            &mut report,
        )
        .unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(batch.records.len(), 1);
        assert_eq!(batch.records[0].flags, ["\\Seen"]);
        assert_eq!(
            spool.get_body(&batch.records[0].hash).unwrap(),
            b"Subject: a\r\n\r\nbody\r\n"
        );
        // The source was not touched: the file is where the client put it.
        assert!(dir.join("cur/1700.M1.h:2,S").is_file());
        assert_eq!(std::fs::read_dir(dir.join("new")).unwrap().count(), 0);
    }
}
