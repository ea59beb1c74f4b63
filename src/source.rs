//! The source side: walks a legacy mailbox and brings what is new or changed into the spool.
//!
//! The source never talks to the destination. For each folder it compares what the server
//! reports (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, then UID/FLAGS per message) with what the
//! spool holds, fetches only the bodies it lacks, and records flag changes. A folder's
//! bookkeeping is advanced only after all of its messages are in the spool, so a crash in
//! the middle means that folder is simply compared again on the next run.
//!
//! With `[sync] propagate_deletes` ([`DeletePolicy`]) it also notes which known messages
//! the source no longer has (UID SEARCH ALL) and records them as expunged, for the
//! upstream to delete at the destination, unless that would be more than
//! `max_delete_percent` of the folder: then nothing is recorded and the read reports it.

pub mod maildir;

use std::collections::{HashMap, HashSet};

use crate::details::Details;
use crate::imap::client::Client;
use crate::imap::response::FetchData;
use crate::imap::ListedFolder;
use crate::spool::{BodyHash, FolderState, MessageRecord, MessageState, Spool};

/// Limits the source applies while reading.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Messages larger than this are recorded as skipped, not fetched.
    pub max_message_bytes: u64,
    /// Bodies are fetched in UID FETCH commands of at most this many bytes (by RFC822.SIZE),
    /// which bounds memory and lets the upstream start before a big folder is done.
    pub fetch_batch_bytes: u64,
    /// And at most this many messages per command.
    pub fetch_batch_count: usize,
}

/// What one read of a mailbox did.
#[derive(Debug, Clone, Default)]
pub struct SourceReport {
    pub folders: usize,
    pub new_messages: u64,
    pub new_bytes: u64,
    pub flag_changes: u64,
    pub skipped: u64,
    /// One line per message skipped in this read (folder, UID, why, date, subject, size):
    /// the first ones; the spool keeps every one.
    pub skipped_details: Details,
    /// Per-folder problems, already phrased for the admin (folder and server text).
    pub errors: Details,
    /// What the admin should know although nothing failed (a Maildir's files that are
    /// not mail, symbolic links not followed), one line each (the first ones).
    pub notices: Details,
    /// Messages found expunged at the source in this read and recorded as such (with
    /// `propagate_deletes`; the upstream deletes those that reached the destination).
    pub expunged: u64,
    /// Messages left at the source in this read because they are flagged `\Deleted`
    /// (`[sync] deleted_messages = "skip"`); not recorded, so seen again next time.
    pub deleted_left: u64,
}

/// Microsoft's per-mailbox limits, applied while reading (see [`read_mailbox_with`]).
#[derive(Debug, Clone, Default)]
pub struct MailboxLimits {
    /// At most this many messages per mailbox (0: no limit). When the source holds more,
    /// the newest by INTERNALDATE across all folders are copied and the others skipped.
    /// Decided when a message is first seen: what was copied earlier stays.
    pub max_items: u64,
    /// Messages with a line longer than this many bytes (CRLF not counted) are skipped
    /// (0: no check). Exchange Online refuses such an APPEND (`BAD Command Argument
    /// Error`), and re-wrapping would change the message.
    pub max_line_length: usize,
    /// What to do about messages the source expunged (`[sync] propagate_deletes`).
    pub deletes: DeletePolicy,
    /// What to do about messages flagged `\Deleted` but not expunged
    /// (`[sync] deleted_messages`).
    pub deleted: DeletedMessages,
}

/// `[sync] deleted_messages`: messages the source holds flagged `\Deleted`, not expunged.
///
/// The default copies them, with the flag: such a message is not deleted yet (a client
/// in "mark as deleted" mode shows it struck through, and the user can still take it
/// back); skipping it would lose it for good once the legacy server is switched off.
/// Copied with its flag, it is in the same state at the destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeletedMessages {
    /// Copied like any other message, `\Deleted` included.
    #[default]
    Copy,
    /// Not copied while flagged `\Deleted`. Nothing is recorded for it, and its folder is
    /// listed in full on every pass while it is there: undeleted at the source before the
    /// final pass (or the policy set back to `Copy`), it is copied then. A message already
    /// copied keeps following the source's flags.
    Skip,
}

/// Source expunges (`[sync] propagate_deletes`, `max_delete_percent`). The default
/// records nothing: no message is ever deleted at the destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeletePolicy {
    /// Record the messages the source no longer has, so that the upstream deletes their
    /// destination copies.
    pub propagate: bool,
    /// Refuse, for the whole folder and with an error, when more than this percentage of
    /// the folder's known messages is gone in one read (a folder emptied by mistake at
    /// the source must not empty the destination). 0 refuses every deletion.
    pub max_percent: u8,
}

/// The length of the longest line of `body`, without its line ending.
pub fn longest_line(body: &[u8]) -> usize {
    body.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
        .max()
        .unwrap_or(0)
}

/// A message's place in the mailbox's order for `max_items_per_mailbox`: newer dates
/// first, equal dates in a fixed order (folder, then UID) so that reruns decide the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct LimitKey {
    ts: i64,
    folder: usize,
    uid: u32,
}

/// Where `max_items_per_mailbox` falls in a mailbox over it: a message is beyond the
/// limit when it is older than the oldest one kept. Only that one key is kept, not the
/// UIDs beyond it.
#[derive(Debug)]
struct ItemLimit {
    /// Each folder's position in the order of [`LimitKey::folder`].
    positions: HashMap<String, usize>,
    /// The oldest message within the limit.
    oldest_kept: LimitKey,
    /// How many messages were beyond it when it was found.
    beyond: u64,
}

impl ItemLimit {
    fn is_beyond(&self, folder: &str, ts: i64, uid: u32) -> bool {
        self.positions
            .get(folder)
            .is_some_and(|&folder| LimitKey { ts, folder, uid } < self.oldest_kept)
    }
}

/// The `max` newest of the keys pushed, holding `max` keys at most (16 bytes each), so
/// that a mailbox of millions is ranked in memory bounded by the limit, not by the mailbox.
struct Newest {
    max: usize,
    kept: std::collections::BinaryHeap<std::cmp::Reverse<LimitKey>>,
    seen: u64,
}

impl Newest {
    fn new(max: u64) -> Newest {
        Newest {
            max: usize::try_from(max).unwrap_or(usize::MAX),
            kept: std::collections::BinaryHeap::new(),
            seen: 0,
        }
    }

    fn push(&mut self, key: LimitKey) {
        self.seen += 1;
        if self.kept.len() < self.max {
            self.kept.push(std::cmp::Reverse(key));
        } else if self.kept.peek().is_some_and(|oldest| oldest.0 < key) {
            self.kept.pop();
            self.kept.push(std::cmp::Reverse(key));
        }
    }

    /// The oldest key kept and how many were beyond it; `None` when nothing is beyond.
    fn cutoff(&self) -> Option<(LimitKey, u64)> {
        let beyond = self.seen - self.kept.len() as u64;
        (beyond > 0)
            .then(|| self.kept.peek().map(|k| (k.0, beyond)))
            .flatten()
    }
}

/// Where `max` falls for the mailbox ([`ItemLimit`]), ranking every message of `folders`
/// by INTERNALDATE; `None` when the mailbox is within the limit. The folders are listed
/// one window of UIDs at a time, like [`read_folder`] does.
async fn item_limit(
    client: &mut Client,
    folders: &[ListedFolder],
    max: u64,
) -> Result<Option<ItemLimit>, SourceError> {
    let mut total = 0u64;
    for f in folders {
        match client.status(&f.name).await {
            Ok(st) => total += u64::from(st.messages),
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(_) => {}
        }
    }
    if total <= max {
        return Ok(None);
    }
    let mut newest = Newest::new(max);
    let mut positions = HashMap::new();
    for (i, f) in folders.iter().enumerate() {
        positions.insert(f.name.clone(), i);
        let info = match client.select(&f.name, true).await {
            Ok(info) => info,
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(_) => continue,
        };
        let mut windows = Windows::open(client, &info, 0, None).await?;
        while let Some(window) = windows.next(client).await? {
            for m in window {
                if let Some(uid) = m.uid {
                    newest.push(LimitKey {
                        ts: m.internal_ts.unwrap_or(0),
                        folder: i,
                        uid,
                    });
                }
            }
        }
    }
    Ok(newest.cutoff().map(|(oldest_kept, beyond)| ItemLimit {
        positions,
        oldest_kept,
        beyond,
    }))
}

/// What [`read_folder`] needs besides the options.
struct ReadContext<'a> {
    limits: &'a MailboxLimits,
    /// Where `max_items_per_mailbox` falls, for a mailbox over it.
    limit: Option<ItemLimit>,
    /// `<Message-ID>` of cutover's own notice to the user (`cutover notify before`), when
    /// one was sent.
    own_notice: Option<Vec<u8>>,
}

/// Errors that stop the read of the whole mailbox (a folder-level problem is only reported).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Imap(#[from] crate::imap::ImapError),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    /// A Maildir source's mailbox that cannot be read at all (its root is missing or is
    /// not a Maildir), with the path.
    #[error("{0}")]
    Maildir(String),
}

/// Lists the selectable source folders of the personal namespace, and its prefix.
pub async fn list_folders(client: &mut Client) -> Result<(Vec<ListedFolder>, String), SourceError> {
    list_folders_with(client, false).await
}

/// [`list_folders`], with the folders of the other namespaces (other users', shared) as
/// well when `other_namespaces` is set (`[sync] other_namespaces`).
pub async fn list_folders_with(
    client: &mut Client,
    other_namespaces: bool,
) -> Result<(Vec<ListedFolder>, String), SourceError> {
    let ns = client.namespaces().await?.unwrap_or_default();
    let prefix = ns
        .personal
        .first()
        .map(|(p, _)| p.clone())
        .unwrap_or_default();
    let others: Vec<String> = ns
        .other
        .iter()
        .chain(&ns.shared)
        .map(|(p, _)| p.clone())
        .collect();
    let folders = client
        .list()
        .await?
        .into_iter()
        .filter(|f| f.selectable() && !virtual_folder(f))
        .filter(|f| other_namespaces || personal(f, &prefix, &others))
        .collect();
    Ok((folders, prefix))
}

/// True for INBOX and the folders of the personal namespace. `LIST "" "*"` also returns
/// other users' folders and shared ones (Cyrus: `user.bob.Team`, `Announcements`; with
/// `altnamespace`, `Other Users/bob/Team` and `Shared Folders/Announcements`), which
/// belong to other mailboxes and would be copied into every mailbox that can see them.
/// A folder is personal when it is under the personal prefix and under no other
/// namespace's prefix (the personal prefix may be empty, as with Cyrus's `altnamespace`
/// and Dovecot, and then only the others' prefixes tell them apart). A shared namespace
/// with an empty prefix (Cyrus's default `Announcements`) tells nothing apart: those
/// folders look personal here.
fn personal(f: &ListedFolder, prefix: &str, others: &[String]) -> bool {
    let under = |p: &str| {
        f.name
            .get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p))
    };
    if f.name.eq_ignore_ascii_case("INBOX") {
        return true;
    }
    // The longest prefix that fits decides: `INBOX.` personal, `INBOX.shared.` not.
    let own = (prefix.is_empty() || under(prefix)).then_some(prefix.len());
    let other = others
        .iter()
        .filter(|p| !p.is_empty() && under(p))
        .map(String::len)
        .max();
    match (own, other) {
        (Some(a), Some(b)) => a > b,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// True if the listing says the message is flagged `\Deleted`.
fn flagged_deleted(m: &FetchData) -> bool {
    m.flags
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f.eq_ignore_ascii_case("\\Deleted")))
}

/// Views of messages kept elsewhere (RFC 6154 `\All`, `\Flagged`; Gmail's `\Important`):
/// copying them would copy those messages twice.
fn virtual_folder(f: &ListedFolder) -> bool {
    f.attributes
        .iter()
        .any(|a| ["\\all", "\\flagged", "\\important"].contains(&a.to_ascii_lowercase().as_str()))
}

/// Size of a folder's first body batch, in bytes and messages; each next batch doubles,
/// up to `fetch_batch_bytes` and `fetch_batch_count`.
pub(crate) const FIRST_BATCH_BYTES: u64 = 256 * 1024;
pub(crate) const FIRST_BATCH_COUNT: usize = 16;

/// What the source reports while it reads (see [`read_mailbox`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress<'a> {
    /// A folder has messages to fetch: the upstream can get ready for them.
    Fetching,
    /// A batch (or a folder's state) of this folder is durable in the spool: the
    /// upstream can push it.
    Spooled { folder: &'a str },
}

/// Reads every folder in `folders` into the spool. `on_progress` is told when new
/// messages are found and after each batch is durable in the spool, so the upstream can
/// start pushing it.
pub async fn read_mailbox(
    client: &mut Client,
    spool: &Spool,
    mailbox: &str,
    folders: &[ListedFolder],
    ns_prefix: &str,
    opts: &SourceOptions,
    on_progress: impl FnMut(Progress<'_>),
) -> Result<SourceReport, SourceError> {
    let limits = MailboxLimits::default();
    read_mailbox_with(
        client,
        spool,
        mailbox,
        folders,
        ns_prefix,
        opts,
        &limits,
        on_progress,
    )
    .await
}

/// [`read_mailbox`] within Microsoft's per-mailbox limits ([`MailboxLimits`]): messages
/// beyond them are recorded as skipped, with the reason, and reported.
#[allow(clippy::too_many_arguments)]
pub async fn read_mailbox_with(
    client: &mut Client,
    spool: &Spool,
    mailbox: &str,
    folders: &[ListedFolder],
    ns_prefix: &str,
    opts: &SourceOptions,
    limits: &MailboxLimits,
    mut on_progress: impl FnMut(Progress<'_>),
) -> Result<SourceReport, SourceError> {
    let mut report = SourceReport::default();
    let limit = if limits.max_items > 0 {
        item_limit(client, folders, limits.max_items).await?
    } else {
        None
    };
    if let Some(limit) = &limit {
        tracing::warn!(
            mailbox,
            max_items = limits.max_items,
            beyond = limit.beyond,
            "mailbox over max_items_per_mailbox: only the newest messages are copied"
        );
    }
    // The notice is excluded by its UID as well (see `spool/notified.rs`), but a UID means
    // nothing once the INBOX gets a new UIDVALIDITY: then only its Message-ID tells it.
    let own_notice = spool
        .notified(mailbox, crate::notify::Kind::Before.as_str())?
        .filter(|n| !n.message_id.is_empty())
        .map(|n| format!("<{}>", n.message_id).into_bytes());
    let ctx = ReadContext {
        limits,
        limit,
        own_notice,
    };
    let known: Vec<FolderState> = spool.folders(mailbox)?;
    for folder in folders {
        report.folders += 1;
        match read_folder(
            client,
            spool,
            mailbox,
            folder,
            ns_prefix,
            opts,
            &ctx,
            &mut report,
            &mut on_progress,
        )
        .await
        {
            Ok(()) => {}
            Err(SourceError::Imap(e)) if !e.is_transient() => {
                let msg = format!("folder {:?}: {e}", folder.name);
                tracing::warn!(mailbox, folder = %folder.name, error = %e, "folder not read");
                report.errors.push(msg);
            }
            Err(e) => return Err(e),
        }
    }
    // Folders the source no longer lists are kept (nothing is deleted by default) but
    // marked, so the status shows them.
    for mut st in known {
        if !st.gone && !folders.iter().any(|f| f.name == st.name) {
            st.gone = true;
            spool.put_folder(mailbox, &st)?;
        }
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn read_folder(
    client: &mut Client,
    spool: &Spool,
    mailbox: &str,
    folder: &ListedFolder,
    ns_prefix: &str,
    opts: &SourceOptions,
    ctx: &ReadContext<'_>,
    report: &mut SourceReport,
    on_progress: &mut impl FnMut(Progress<'_>),
) -> Result<(), SourceError> {
    let info = client.select(&folder.name, true).await?;
    let errors_before = report.errors.total();
    let deleted_before = report.deleted_left;
    let previous = spool.folder(mailbox, &folder.name)?;
    let mut state = previous.clone().unwrap_or_default();
    state.name = folder.name.clone();
    state.delimiter = folder.delimiter;
    state.attributes = folder.attributes.clone();
    state.ns_prefix = ns_prefix.to_string();
    state.gone = false;

    let same_generation = previous.as_ref().map(|p| p.uidvalidity) == Some(info.uidvalidity);
    let deletes = ctx.limits.deletes;
    if same_generation
        && info.highestmodseq != 0
        && info.highestmodseq == state.highestmodseq
        && info.uidnext == state.uidnext
        // Watching for expunges: as many messages as the spool knows, or look closer.
        && (!deletes.propagate
            || live_count(spool, mailbox, &folder.name, info.uidvalidity)?
                == info.exists as usize)
    {
        // CONDSTORE says nothing changed since the last complete read: no FETCH at all.
        // The state itself may have changed (a folder listed again, new attributes).
        if previous.as_ref() != Some(&state) {
            put_folder_keeping_dest(spool, mailbox, &mut state)?;
            on_progress(Progress::Spooled {
                folder: &folder.name,
            });
        }
        return Ok(());
    }

    // Messages of an earlier UIDVALIDITY: the folder was recreated at the source. Their
    // records are matched by content to the new UIDs below, so what already reached the
    // destination is not sent again.
    let mut carried = Carried::default();
    for uv in spool.generations(mailbox, &folder.name)? {
        if uv != info.uidvalidity {
            tracing::warn!(mailbox, folder = %folder.name, old = uv, new = info.uidvalidity,
                "UIDVALIDITY changed; matching messages by content");
            for rec in spool.messages(mailbox, &folder.name, uv)? {
                carried.add(uv, &rec);
            }
        }
    }

    // Only what changed since the last complete read, where CONDSTORE allows. A
    // HIGHESTMODSEQ lower than the one recorded (an index rebuilt at the source) says
    // nothing about what changed: then the whole folder is read.
    let changed_since =
        (same_generation && state.highestmodseq != 0 && info.highestmodseq >= state.highestmodseq)
            .then_some(state.highestmodseq);
    if same_generation && info.highestmodseq != 0 && info.highestmodseq < state.highestmodseq {
        tracing::warn!(mailbox, folder = %folder.name, was = state.highestmodseq,
            now = info.highestmodseq, "HIGHESTMODSEQ went backwards; reading the whole folder");
    }
    // Which UIDs the source still has, when deletes are propagated. A FETCH with
    // CHANGEDSINCE shows only the changed messages (expunges do not show at all), and even
    // a FETCH of 1:* is no proof of absence: a response that cannot be parsed is skipped.
    // UID SEARCH ALL answers with nothing but the UIDs.
    let present: Option<HashSet<u32>> = if deletes.propagate && same_generation {
        Some(client.uid_search_all().await?.into_iter().collect())
    } else {
        None
    };
    // The folder is listed, compared with the spool and fetched one window of UIDs at a
    // time (see [`Windows`]): what is held is bounded by the window, not the folder.
    let mut windows = Windows::open(client, &info, state.uidnext, changed_since).await?;
    let mut listed: Vec<u32> = Vec::new();
    let mut announced = false;
    let mut ramp = 0u32;
    while let Some(meta) = windows.next(client).await? {
        let uids: Vec<u32> = meta.iter().filter_map(|m| m.uid).collect();
        if changed_since.is_none() {
            listed.extend(&uids);
        }
        let mut have: HashMap<u32, MessageRecord> = spool
            .messages_of(mailbox, &folder.name, info.uidvalidity, &uids)?
            .into_iter()
            .map(|r| (r.uid, r))
            .collect();
        let mut wanted: Vec<FetchData> = Vec::new();
        let mut oversized: Vec<FetchData> = Vec::new();
        let mut skipped: Vec<MessageRecord> = Vec::new();
        let mut updates = Vec::new();
        for m in meta {
            let Some(uid) = m.uid else { continue };
            if let Some(rec) = have.remove(&uid) {
                if m.flags.is_none() {
                    continue;
                }
                let flags = m.flags.clone().unwrap_or_default();
                if flags != rec.flags {
                    report.flag_changes += 1;
                    updates.push((uid, flags));
                }
                continue;
            }
            if ctx.limits.deleted == DeletedMessages::Skip && flagged_deleted(&m) {
                // Not recorded: a later pass sees it again, and copies it once undeleted.
                report.deleted_left += 1;
                report.skipped_details.push(format!(
                    "folder {:?} UID {uid}: not copied: flagged \\Deleted at the source \
                     ([sync] deleted_messages = \"skip\"); copied if it is undeleted",
                    folder.name
                ));
                continue;
            }
            let size = m.size.unwrap_or(0) as u64;
            let beyond = ctx
                .limit
                .as_ref()
                .is_some_and(|l| l.is_beyond(&folder.name, m.internal_ts.unwrap_or(0), uid));
            if beyond {
                let date = m.internal_date.clone().unwrap_or_default();
                let reason = format!(
                    "over max_items_per_mailbox ({}): only the newest messages of the mailbox \
                     (by INTERNALDATE across folders) are copied; this one is from {date}",
                    ctx.limits.max_items
                );
                crate::metrics::get().skip(crate::metrics::SkipReason::ItemLimit, 1);
                skipped.push(skipped_record(&m, uid, size, reason));
                continue;
            }
            if size > opts.max_message_bytes {
                crate::metrics::get().skip(crate::metrics::SkipReason::TooBig, 1);
                oversized.push(m);
                continue;
            }
            wanted.push(m);
        }
        if !oversized.is_empty() {
            // Name them for the admin: the Subject header only, not the body.
            let uids: Vec<u32> = oversized.iter().filter_map(|m| m.uid).collect();
            let subjects: HashMap<u32, String> = match client.uid_fetch_subjects(&uids).await {
                Ok(v) => v.into_iter().collect(),
                Err(e) if e.is_transient() => return Err(e.into()),
                Err(_) => HashMap::new(),
            };
            for m in oversized {
                let uid = m.uid.unwrap_or(0);
                let size = m.size.unwrap_or(0) as u64;
                let reason = format!(
                    "{size} bytes, over max_message_bytes ({}); date {}; subject {:?}",
                    opts.max_message_bytes,
                    m.internal_date.as_deref().unwrap_or("?"),
                    subjects.get(&uid).map(String::as_str).unwrap_or("")
                );
                skipped.push(skipped_record(&m, uid, size, reason));
            }
        }
        for rec in &skipped {
            if let MessageState::Skipped { reason } = &rec.state {
                tracing::warn!(mailbox, folder = %folder.name, uid = rec.uid, %reason, "message skipped");
                report.skipped_details.push(format!(
                    "folder {:?} UID {}: skipped: {reason}",
                    folder.name, rec.uid
                ));
            }
        }
        report.skipped += skipped.len() as u64;
        spool.record_new(mailbox, &folder.name, info.uidvalidity, &skipped)?;
        spool.set_source_flags(mailbox, &folder.name, info.uidvalidity, &updates)?;

        // Fetch the bodies in batches bounded by bytes and count. The first batches of a
        // folder are small and double in size, so that the upstream can start on the first
        // messages while the rest are fetched, rather than wait for a whole batch.
        let counters = crate::metrics::get();
        counters.source_found.inc_by(wanted.len() as u64);
        counters.source_found_bytes.inc_by(
            wanted
                .iter()
                .map(|m| m.size.unwrap_or(0) as u64)
                .sum::<u64>(),
        );
        if !wanted.is_empty() && !announced {
            announced = true;
            // Make the folder known to the upstream now, not when all of it is read, so that
            // it can push the first batches while the source fetches the rest. Until the read
            // completes, a new generation records no UIDNEXT or HIGHESTMODSEQ: a run that
            // stops half-way reads the folder in full next time.
            let mut early = state.clone();
            if !same_generation {
                early.uidvalidity = info.uidvalidity;
                early.uidnext = 0;
                early.highestmodseq = 0;
            }
            put_folder_keeping_dest(spool, mailbox, &mut early)?;
            on_progress(Progress::Fetching);
        }
        let mut start = 0;
        while start < wanted.len() {
            let max_bytes = opts.fetch_batch_bytes.min(FIRST_BATCH_BYTES << ramp);
            let max_count = opts.fetch_batch_count.min(FIRST_BATCH_COUNT << ramp);
            ramp = (ramp + 1).min(16);
            let mut end = start;
            let mut bytes = 0u64;
            while end < wanted.len()
                && (end == start
                    || (bytes + wanted[end].size.unwrap_or(0) as u64 <= max_bytes
                        && end - start < max_count))
            {
                bytes += wanted[end].size.unwrap_or(0) as u64;
                end += 1;
            }
            let uids: Vec<u32> = wanted[start..end].iter().filter_map(|m| m.uid).collect();
            // What the listing said of them: a server may send INTERNALDATE and FLAGS in
            // another response than the body, or not again with it.
            let listed: HashMap<u32, &FetchData> = wanted[start..end]
                .iter()
                .filter_map(|m| m.uid.map(|u| (u, m)))
                .collect();
            let mut records = Vec::with_capacity(uids.len());
            let mut carries: Vec<((u32, u32), MessageRecord)> = Vec::new();
            let mut spool_err = None;
            let mut long_lines: Vec<String> = Vec::new();
            // Bodies over max_message_bytes though announced smaller: UID, size, subject.
            let mut too_big: Vec<(u32, u64, String)> = Vec::new();
            let fetched = client
                .uid_fetch_bodies(&uids, |f| {
                    let (Some(uid), Some(body)) = (f.uid, f.body) else {
                        return Ok(());
                    };
                    // RFC822.SIZE is only an estimate on some servers: the size that counts
                    // is the body's.
                    if body.len() as u64 > opts.max_message_bytes {
                        let subject =
                            crate::imap::response::header_value(header_block(&body), "subject")
                                .unwrap_or_default();
                        too_big.push((uid, body.len() as u64, subject));
                        return Ok(());
                    }
                    // Scanning every byte costs ~4 % of a copy: only when asked.
                    let max = ctx.limits.max_line_length;
                    let longest = if max > 0 { longest_line(&body) } else { 0 };
                    let too_long = (max > 0 && longest > max).then(|| {
                        let subject =
                            crate::imap::response::header_value(header_block(&body), "subject")
                                .unwrap_or_default();
                        format!(
                            "has a line of {longest} characters, over max_line_length ({max}; \
                             Exchange Online refuses longer lines); date {}; subject {subject:?}; \
                             {} bytes",
                            f.internal_date.as_deref().unwrap_or("?"),
                            body.len()
                        )
                    });
                    let size = body.len() as u64;
                    let own_notice =
                        carries_message_id(header_block(&body), ctx.own_notice.as_deref());
                    // A body the upstream will send is also handed to it in memory.
                    let spooled = crate::spool::in_place_if_large(body.len(), || {
                        if too_long.is_some() || own_notice {
                            spool.put_body(&body)
                        } else {
                            spool.put_body_kept(body)
                        }
                    });
                    let listed = listed.get(&uid);
                    let (internal_date, internal_ts) = match (f.internal_date, f.internal_ts) {
                        (Some(d), ts) => (d, ts.unwrap_or(0)),
                        (None, _) => (
                            listed
                                .and_then(|m| m.internal_date.clone())
                                .unwrap_or_default(),
                            listed.and_then(|m| m.internal_ts).unwrap_or(0),
                        ),
                    };
                    let flags = f
                        .flags
                        .or_else(|| listed.and_then(|m| m.flags.clone()))
                        .unwrap_or_default();
                    match spooled {
                        Ok(hash) => {
                            let mut rec = MessageRecord {
                                uid,
                                hash,
                                size,
                                internal_date,
                                internal_ts,
                                flags,
                                state: MessageState::Spooled,
                            };
                            if own_notice {
                                rec.state = MessageState::Skipped {
                                    reason: crate::spool::OWN_NOTICE_REASON.into(),
                                };
                                records.push(rec);
                                return Ok(());
                            }
                            if let Some(old) = carried.take(&hash, internal_ts) {
                                carries.push((old, rec));
                                return Ok(());
                            }
                            if let Some(reason) = too_long {
                                long_lines.push(format!(
                                    "folder {:?} UID {uid}: skipped: {reason}",
                                    folder.name
                                ));
                                rec.state = MessageState::Skipped { reason };
                            }
                            records.push(rec);
                        }
                        Err(e) => spool_err = Some(e),
                    }
                    Ok(())
                })
                .await?;
            if let Some(e) = spool_err {
                return Err(e.into());
            }
            crate::metrics::get().skip(
                crate::metrics::SkipReason::LineTooLong,
                long_lines.len() as u64,
            );
            // Over the response limit, the client read the body off the wire and dropped it.
            for (uid, n) in &fetched.too_large {
                if !too_big.iter().any(|(u, _, _)| u == uid) {
                    too_big.push((*uid, *n, String::new()));
                }
            }
            crate::metrics::get().skip(crate::metrics::SkipReason::TooBig, too_big.len() as u64);
            for (uid, size, subject) in too_big {
                let Some(m) = listed.get(&uid) else { continue };
                let reason = format!(
                    "{size} bytes, over max_message_bytes ({}), though the server announced {} \
                     bytes; date {}; subject {subject:?}",
                    opts.max_message_bytes,
                    m.size.unwrap_or(0),
                    m.internal_date.as_deref().unwrap_or("?"),
                );
                long_lines.push(format!(
                    "folder {:?} UID {uid}: skipped: {reason}",
                    folder.name
                ));
                records.push(skipped_record(m, uid, size, reason));
            }
            for line in long_lines {
                tracing::warn!(mailbox, "{line}");
                report.skipped += 1;
                report.skipped_details.push(line);
            }
            if records.len() + carries.len() < uids.len() {
                let got: HashSet<u32> = records
                    .iter()
                    .map(|r| r.uid)
                    .chain(carries.iter().map(|(_, r)| r.uid))
                    .collect();
                for uid in uids.iter().filter(|u| !got.contains(u)) {
                    // Why, where the client could tell: a response it could not read, or a
                    // body over the response limit. Otherwise the message went away meanwhile.
                    let why = fetched
                        .unreadable
                        .iter()
                        .find(|(u, _)| *u == Some(*uid))
                        .map(|(_, why)| format!("its FETCH response could not be read ({why})"))
                        .or_else(|| {
                            fetched
                                .too_large
                                .iter()
                                .find(|(u, _)| u == uid)
                                .map(|(_, n)| {
                                    format!("its body of {n} bytes is over the response limit")
                                })
                        })
                        .unwrap_or_else(|| {
                            "the source returned no body (expunged meanwhile?)".into()
                        });
                    tracing::warn!(mailbox, folder = %folder.name, uid, "{why}; tried again on the next pass");
                    report.errors.push(format!(
                        "folder {:?} UID {uid}: {why}; not copied yet, tried again on the next pass",
                        folder.name
                    ));
                }
            }
            report.new_messages += (records.len() + carries.len()) as u64;
            report.new_bytes += records
                .iter()
                .chain(carries.iter().map(|(_, r)| r))
                .map(|r| r.size)
                .sum::<u64>();
            let counters = crate::metrics::get();
            counters.source_fetched.inc_by(records.len() as u64);
            counters
                .source_fetched_bytes
                .inc_by(records.iter().map(|r| r.size).sum::<u64>());
            // Its fsync waits for the disk: off the runtime's thread.
            let (m, f, uv) = (mailbox.to_string(), folder.name.clone(), info.uidvalidity);
            spool
                .run_blocking(move |s| s.record_new(&m, &f, uv, &records))
                .await?;
            for ((old_uv, old_uid), rec) in &carries {
                spool.carry(
                    mailbox,
                    &folder.name,
                    *old_uv,
                    *old_uid,
                    info.uidvalidity,
                    rec,
                )?;
            }
            on_progress(Progress::Spooled {
                folder: &folder.name,
            });
            start = end;
        }
    }
    // Every message the folder holds must be accounted for: one whose FETCH response could
    // not be read is named, never silently left behind.
    if changed_since.is_none() && listed.len() < info.exists as usize {
        listed.sort_unstable();
        let missing: Vec<u32> = client
            .uid_search_all()
            .await?
            .into_iter()
            .filter(|u| listed.binary_search(u).is_err())
            .collect();
        for uid in &missing {
            let msg = format!(
                "folder {:?} UID {uid}: the source lists the message but its FETCH response \
                 could not be read; it is not copied yet and is tried again on the next pass",
                folder.name
            );
            tracing::warn!(mailbox, folder = %folder.name, uid, "{msg}");
            report.errors.push(msg);
        }
    }
    drop(listed);
    if let Some(present) = &present {
        // Gone: known as live, and not in the SEARCH. The records are read a range at a
        // time; only the UIDs gone are kept.
        let mut live_known = 0usize;
        let mut gone: Vec<u32> = Vec::new();
        let mut from = 0u32;
        loop {
            let recs = spool.messages_from(mailbox, &folder.name, info.uidvalidity, from, 4096)?;
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
        record_expunges(
            spool,
            mailbox,
            &folder.name,
            info.uidvalidity,
            live_known,
            &gone,
            deletes,
            report,
        )?;
    }

    for uv in spool.generations(mailbox, &folder.name)? {
        if uv != info.uidvalidity {
            spool.remove_generation(mailbox, &folder.name, uv)?;
        }
    }
    // The watermarks move only past what was read: a message left unread on this pass
    // (a FETCH response that could not be read, a body that did not come) is neither new
    // nor changed on the next, and would never be asked for again.
    let all_read = report.errors.total() == errors_before;
    if all_read || !same_generation {
        let (uidnext, modseq) = if all_read {
            (info.uidnext, info.highestmodseq)
        } else {
            (0, 0)
        };
        state.uidvalidity = info.uidvalidity;
        state.uidnext = uidnext;
        // A message left behind for its \Deleted flag is not recorded: without a
        // HIGHESTMODSEQ the next pass lists the whole folder and sees it again, whether it
        // was undeleted or the policy changed.
        state.highestmodseq = if report.deleted_left > deleted_before {
            0
        } else {
            modseq
        };
    }
    put_folder_keeping_dest(spool, mailbox, &mut state)?;
    on_progress(Progress::Spooled {
        folder: &folder.name,
    });
    Ok(())
}

/// Writes the folder's state, keeping the destination the upstream may have recorded
/// for it meanwhile (`dest_name` is the upstream's to set).
pub(crate) fn put_folder_keeping_dest(
    spool: &Spool,
    mailbox: &str,
    state: &mut FolderState,
) -> Result<(), SourceError> {
    if let Some(current) = spool.folder(mailbox, &state.name)? {
        state.dest_name = current.dest_name;
    }
    spool.put_folder(mailbox, state)?;
    Ok(())
}

/// Records the messages of one folder generation that the source no longer has
/// (`gone`, out of `known` live records): `Expunging` where a copy is at the destination,
/// `Expunged` where none is. Over the policy's percentage nothing is recorded and the
/// refusal is reported, every read, until the limit is raised or the mail comes back.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_expunges(
    spool: &Spool,
    mailbox: &str,
    folder: &str,
    uidvalidity: u32,
    known: usize,
    gone: &[u32],
    policy: DeletePolicy,
    report: &mut SourceReport,
) -> Result<(), SourceError> {
    if gone.is_empty() {
        return Ok(());
    }
    let count = gone.len() as u64;
    let known = (known as u64).max(count);
    if count * 100 > u64::from(policy.max_percent) * known {
        let percent = percent(count, known);
        let msg = format!(
            "mailbox {mailbox}, folder {folder:?}: refusing to delete {count} of {known} \
             messages ({percent}) that the source no longer has: over [sync] \
             max_delete_percent = {}; nothing is deleted in this folder (raise the limit if \
             the source really expunged them)",
            policy.max_percent
        );
        tracing::error!(mailbox, folder, count, known, %percent, "{msg}");
        report.errors.push(msg);
        return Ok(());
    }
    let recorded = spool.expunged_at_source(mailbox, folder, uidvalidity, gone)? as u64;
    if recorded > 0 {
        tracing::info!(
            mailbox,
            folder,
            count = recorded,
            known,
            "messages expunged at the source; their destination copies will be deleted"
        );
    }
    report.expunged += recorded;
    Ok(())
}

/// `part` of `whole` as a percentage for the admin: `75%`, `33.3%`.
fn percent(part: u64, whole: u64) -> String {
    let p = part as f64 * 100.0 / whole.max(1) as f64;
    let s = format!("{p:.1}");
    format!("{}%", s.strip_suffix(".0").unwrap_or(&s))
}

/// How many messages of one folder generation the spool holds as still at the source.
fn live_count(
    spool: &Spool,
    mailbox: &str,
    folder: &str,
    uidvalidity: u32,
) -> Result<usize, SourceError> {
    Ok(spool
        .messages(mailbox, folder, uidvalidity)?
        .iter()
        .filter(|r| r.state.is_live())
        .count())
}

/// Messages listed per window: what the source holds of a folder at once, besides the
/// bodies of one fetch batch (a listed message costs a few hundred bytes).
const WINDOW: usize = 4096;

/// The listing of a folder (UID, FLAGS, INTERNALDATE, RFC822.SIZE), one window at a time.
///
/// A full listing asks `UID FETCH lo:hi` for consecutive ranges of UIDs up to the
/// folder's UIDNEXT, the last one `lo:*` (so that mail arriving meanwhile is not missed).
/// The width of the ranges follows the density of the UIDs seen so far, aiming at
/// [`WINDOW`] messages: a folder whose UIDs are sparse (many expunged) is not listed in
/// thousands of near-empty commands. A listing of changes (CHANGEDSINCE) is asked at
/// once (it holds the changed messages only) and handed out in windows of [`WINDOW`].
enum Windows {
    Full {
        lo: u32,
        width: u32,
        uidnext: u32,
        done: bool,
    },
    Changed(std::vec::IntoIter<FetchData>),
}

impl Windows {
    async fn open(
        client: &mut Client,
        info: &crate::imap::SelectInfo,
        known_uidnext: u32,
        changed_since: Option<u64>,
    ) -> Result<Windows, SourceError> {
        if info.exists == 0 {
            return Ok(Windows::Changed(Vec::new().into_iter()));
        }
        let Some(since) = changed_since else {
            return Ok(Windows::Full {
                lo: 1,
                width: WINDOW as u32,
                uidnext: info.uidnext,
                done: false,
            });
        };
        let mut meta = client.uid_fetch_meta("1:*", Some(since)).await?;
        // New mail must never hang on CHANGEDSINCE alone: what arrived since the last read
        // (UIDs from the old UIDNEXT) is asked for by UID as well.
        if info.uidnext > known_uidnext && known_uidnext > 0 {
            let set = format!("{known_uidnext}:*");
            meta.extend(
                client
                    .uid_fetch_meta(&set, None)
                    .await?
                    .into_iter()
                    .filter(|m| m.uid.is_some_and(|u| u >= known_uidnext)),
            );
        }
        let mut meta = merge_by_uid(meta);
        meta.sort_by_key(|m| m.uid);
        Ok(Windows::Changed(meta.into_iter()))
    }

    /// The next window of the listing, `None` at the end.
    async fn next(&mut self, client: &mut Client) -> Result<Option<Vec<FetchData>>, SourceError> {
        match self {
            Windows::Changed(rest) => {
                let window: Vec<FetchData> = rest.by_ref().take(WINDOW).collect();
                Ok((!window.is_empty()).then_some(window))
            }
            Windows::Full {
                lo,
                width,
                uidnext,
                done,
            } => {
                if *done {
                    return Ok(None);
                }
                let hi = lo.saturating_add(*width - 1);
                let last = hi.saturating_add(1) >= *uidnext || hi == u32::MAX;
                let set = if last {
                    format!("{lo}:*")
                } else {
                    format!("{lo}:{hi}")
                };
                let (from, to) = (*lo, if last { u32::MAX } else { hi });
                let window: Vec<FetchData> = merge_by_uid(client.uid_fetch_meta(&set, None).await?)
                    .into_iter()
                    .filter(|m| m.uid.is_some_and(|u| u >= from && u <= to))
                    .collect();
                if last {
                    *done = true;
                } else {
                    let seen = window.len().max(1) as u64;
                    *width = (u64::from(*width) * WINDOW as u64 / seen)
                        .clamp(WINDOW as u64, 1 << 24) as u32;
                    *lo = hi + 1;
                }
                Ok(Some(window))
            }
        }
    }
}

/// A skipped message's record: no body in the spool, the reason kept for the reports.
fn skipped_record(m: &FetchData, uid: u32, size: u64, reason: String) -> MessageRecord {
    MessageRecord {
        uid,
        hash: [0; 32],
        size,
        internal_date: m.internal_date.clone().unwrap_or_default(),
        internal_ts: m.internal_ts.unwrap_or(0),
        flags: m.flags.clone().unwrap_or_default(),
        state: MessageState::Skipped { reason },
    }
}

/// The header block of a message (up to the first empty line).
/// True if `head` (a message's header block) carries the Message-ID `own` of cutover's
/// notice to the user.
fn carries_message_id(head: &[u8], own: Option<&[u8]>) -> bool {
    own.is_some_and(|id| head.windows(id.len()).any(|w| w == id))
}

pub(crate) fn header_block(body: &[u8]) -> &[u8] {
    let end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| body.windows(2).position(|w| w == b"\n\n"))
        .unwrap_or(body.len());
    &body[..end]
}

/// The records of a folder's older generations (the source gave it a new UIDVALIDITY),
/// by content, for the new generation's messages to take over what reached the
/// destination (see [`Spool::carry`]).
#[derive(Default)]
pub(crate) struct Carried {
    /// Content hash -> (UIDVALIDITY, UID, INTERNALDATE) of the old records, in UID order.
    by_hash: HashMap<BodyHash, Vec<(u32, u32, i64)>>,
}

impl Carried {
    /// Every old record with a body counts, whatever its state: [`Spool::carry`] reads the
    /// state it takes over at the moment it moves the record, and the old record is then
    /// gone, so the upstream cannot also send it under its old UID.
    pub(crate) fn add(&mut self, uv: u32, rec: &MessageRecord) {
        if rec.state.is_live() && !matches!(rec.state, MessageState::Skipped { .. }) {
            self.by_hash
                .entry(rec.hash)
                .or_default()
                .push((uv, rec.uid, rec.internal_ts));
        }
    }

    /// The old record a new message with this content and INTERNALDATE takes over: of
    /// identical copies, the first in UID order with the same INTERNALDATE, else the first,
    /// so that copies pair up in the order they were filed and keep their own flags.
    pub(crate) fn take(&mut self, hash: &BodyHash, internal_ts: i64) -> Option<(u32, u32)> {
        let list = self.by_hash.get_mut(hash)?;
        let i = list
            .iter()
            .position(|(_, _, ts)| *ts == internal_ts)
            .or((!list.is_empty()).then_some(0))?;
        let (uv, uid, _) = list.remove(i);
        Some((uv, uid))
    }
}

/// One entry per UID, in the order first seen: a server may send a message's items in
/// several FETCH responses (or an unsolicited flag update in the middle of a listing);
/// later values fill in or replace earlier ones.
fn merge_by_uid(meta: Vec<FetchData>) -> Vec<FetchData> {
    let mut at: HashMap<u32, usize> = HashMap::new();
    let mut out: Vec<FetchData> = Vec::with_capacity(meta.len());
    for m in meta {
        let Some(uid) = m.uid else { continue };
        match at.get(&uid) {
            Some(&i) => {
                let e = &mut out[i];
                e.flags = m.flags.or(e.flags.take());
                e.internal_date = m.internal_date.or(e.internal_date.take());
                e.internal_ts = m.internal_ts.or(e.internal_ts);
                e.size = m.size.or(e.size);
                e.modseq = m.modseq.or(e.modseq);
            }
            None => {
                at.insert(uid, out.len());
                out.push(m);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limit keeps exactly the `max` newest, whatever order they come in, and ties on
    /// the date are broken the same way every time (folder, then UID).
    #[test]
    fn item_limit_keeps_the_newest_in_bounded_memory() {
        let key = |ts, folder, uid| LimitKey { ts, folder, uid };
        // 1,000 messages over 3 folders, dates repeating (ties), in a scrambled order.
        let mut keys: Vec<LimitKey> = (0..1000u32)
            .map(|i| key(i64::from((i * 7919) % 400), (i % 3) as usize, i))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        for max in [1u64, 37, 400, 999] {
            keys.rotate_left(311);
            let mut newest = Newest::new(max);
            for k in &keys {
                newest.push(*k);
                assert!(newest.kept.len() as u64 <= max, "holds no more than max");
            }
            let (oldest_kept, beyond) = newest.cutoff().expect("over the limit");
            assert_eq!(beyond, 1000 - max);
            assert_eq!(oldest_kept, sorted[max as usize - 1]);
            let limit = ItemLimit {
                positions: (0..3).map(|i| (format!("f{i}"), i)).collect(),
                oldest_kept,
                beyond,
            };
            let kept = keys
                .iter()
                .filter(|k| !limit.is_beyond(&format!("f{}", k.folder), k.ts, k.uid))
                .count();
            assert_eq!(kept as u64, max, "max {max}");
        }
        let mut within = Newest::new(1000);
        keys.iter().for_each(|k| within.push(*k));
        assert!(
            within.cutoff().is_none(),
            "nothing beyond at exactly the limit"
        );
    }

    #[test]
    fn personal_folders_by_every_namespace_prefix() {
        let f = |name: &str| ListedFolder {
            name: name.into(),
            delimiter: Some('/'),
            attributes: Vec::new(),
        };
        // Cyrus with altnamespace: no personal prefix, the others tell them apart.
        let others = ["Other Users/".to_string(), "Shared Folders/".to_string()];
        assert!(personal(&f("INBOX"), "", &others));
        assert!(personal(&f("Work/Deep"), "", &others));
        assert!(!personal(&f("Other Users/tom/Team"), "", &others));
        assert!(!personal(&f("shared folders/News"), "", &others));
        // Debian's Cyrus: `INBOX.` personal, `user.` others, shared with no prefix.
        let others = ["user.".to_string(), String::new()];
        assert!(personal(&f("INBOX.Work"), "INBOX.", &others));
        assert!(!personal(&f("user.tom.Team"), "INBOX.", &others));
        assert!(!personal(&f("Announcements"), "INBOX.", &others));
        // A prefix of another namespace inside the personal one: the longer decides.
        let others = ["INBOX.shared.".to_string()];
        assert!(!personal(&f("INBOX.shared.Team"), "INBOX.", &others));
        assert!(personal(&f("INBOX.sharedstuff"), "INBOX.", &others));
    }

    fn meta(uid: u32, flags: Option<&[&str]>, date: Option<&str>) -> FetchData {
        FetchData {
            uid: Some(uid),
            flags: flags.map(|f| f.iter().map(|s| s.to_string()).collect()),
            internal_date: date.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn split_fetch_responses_make_one_entry() {
        let merged = merge_by_uid(vec![
            meta(3, Some(&["\\Seen"]), None),
            meta(4, Some(&[]), Some("d4")),
            meta(3, None, Some("d3")),
            meta(3, Some(&["\\Seen", "\\Flagged"]), None),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].uid, Some(3));
        assert_eq!(merged[0].internal_date.as_deref(), Some("d3"));
        assert_eq!(merged[0].flags.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn identical_copies_are_carried_in_order_and_by_date() {
        let mut c = Carried::default();
        let rec = |uid, ts| MessageRecord {
            uid,
            hash: [1; 32],
            size: 1,
            internal_date: String::new(),
            internal_ts: ts,
            flags: vec![],
            state: MessageState::Appended {
                dest_folder: "INBOX".into(),
                dest_uidvalidity: 1,
                dest_uid: uid,
                flags: vec![],
            },
        };
        c.add(5, &rec(1, 100));
        c.add(5, &rec(2, 200));
        c.add(5, &rec(3, 100));
        assert_eq!(c.take(&[1; 32], 200), Some((5, 2)));
        assert_eq!(c.take(&[1; 32], 100), Some((5, 1)));
        assert_eq!(c.take(&[1; 32], 999), Some((5, 3)));
        assert_eq!(c.take(&[1; 32], 100), None);
        assert_eq!(c.take(&[2; 32], 100), None);
    }
}
