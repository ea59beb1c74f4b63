//! The upstream side: pushes spooled messages to the destination, exactly once.
//!
//! The protocol with the spool, per batch of messages of one folder:
//! 1. take the destination folder's UIDVALIDITY and UIDNEXT (STATUS for a folder's first
//!    batch, then the last APPENDUID + 1: a lower bound is all recovery needs);
//! 2. mark every message of the batch `Appending { uidnext }` and flush the spool;
//! 3. APPEND them (pipelined with LITERAL+; as one MULTIAPPEND command where the server
//!    offers it), unchanged, with their flags and INTERNALDATE;
//! 4. record `Appended { dest_uid }` from APPENDUID, or `Failed` with the server's text.
//!
//! A MULTIAPPEND is all or nothing: when the server refuses one, none of its messages was
//! appended, and they are sent again one APPEND each, so that only the message at fault
//! is refused and recorded `Failed`.
//!
//! After a crash between 2 and 4 nobody knows which APPENDs took effect. Before anything
//! else is sent to that folder, [`recover`] reads the hash of every destination message at
//! or above the recorded UIDNEXT and matches it against the uncertain messages: a match is
//! recorded as appended, the rest go back to `Spooled`. Nothing is added to the message
//! (no tracking header), so every message arrives byte-identical.
//!
//! With `[sync] propagate_deletes`, the messages the source recorded `Expunging` are
//! deleted at the destination after the folder's APPENDs and flag changes, by UID and
//! nothing else (see `delete_expunged`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::imap::client::{AppendItem, AppendOutcome, AppendsSent, Client};
use crate::imap::response::Kind;
use crate::imap::ImapError;
use crate::spool::{BodyHash, MessageRecord, MessageState, Spool, SpoolError};
use crate::throttle::{self, MailboxLimiter};

/// Limits of the upstream.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Messages per pipelined APPEND batch.
    pub append_batch: usize,
    /// Bytes per batch (bodies are held in memory while a batch is in flight).
    pub append_batch_bytes: u64,
    /// A message refused this many times is left as failed until the next run.
    pub max_attempts: u32,
    /// The mailbox's rate limits (token buckets, AIMD); None: unlimited.
    pub limiter: Option<Arc<MailboxLimiter>>,
    /// `[sync] propagate_deletes`: delete at the destination what the source expunged
    /// (the messages the source recorded `Expunging`). Off: nothing is ever deleted.
    pub propagate_deletes: bool,
}

/// What one push of a folder did.
#[derive(Debug, Clone, Default)]
pub struct PushReport {
    pub appended: u64,
    pub bytes: u64,
    pub recovered: u64,
    pub flags_updated: u64,
    pub failed: u64,
    /// APPENDs the destination answered with "throttled" (they go back to `Spooled`).
    pub throttled: u64,
    /// Messages deleted at the destination because the source expunged them.
    pub deleted: u64,
    /// Messages the destination refused for good and that are now skipped, one line each.
    pub skipped_details: Vec<String>,
    /// Per-message problems, phrased for the admin.
    pub errors: Vec<String>,
}

impl PushReport {
    /// Adds `other`'s counts and errors to this report.
    pub fn add(&mut self, other: PushReport) {
        self.appended += other.appended;
        self.bytes += other.bytes;
        self.recovered += other.recovered;
        self.flags_updated += other.flags_updated;
        self.failed += other.failed;
        self.throttled += other.throttled;
        self.deleted += other.deleted;
        self.skipped_details.extend(other.skipped_details);
        self.errors.extend(other.errors);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Imap(#[from] ImapError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The destination throttled an APPEND: the mailbox must pause for `backoff`. The
    /// messages concerned are `Spooled` again; nothing was lost.
    #[error("destination throttled the mailbox (backoff {} ms): {text}", .backoff.as_millis())]
    Throttled { backoff: Duration, text: String },
    /// The destination says the session is unusable (Exchange's `BAD User is
    /// authenticated but not connected`): reconnect.
    #[error("destination session lost: {0}")]
    Disconnected(String),
}

impl UpstreamError {
    /// How the caller should react (pause, reconnect, or give up).
    pub fn fault(&self) -> throttle::Fault {
        match self {
            UpstreamError::Throttled { backoff, text } => throttle::Fault::Throttled {
                backoff: *backoff,
                text: text.clone(),
            },
            UpstreamError::Disconnected(_) => throttle::Fault::Transient,
            UpstreamError::Imap(e) => throttle::classify(e),
            UpstreamError::Spool(_) => throttle::Fault::Fatal,
        }
    }
}

/// Pushes everything pending of one source folder (all generations) to `dest`.
pub async fn push_folder(
    client: &mut Client,
    spool: &Spool,
    mailbox: &str,
    folder: &str,
    dest: &str,
    opts: &UpstreamOptions,
) -> Result<PushReport, UpstreamError> {
    let mut report = PushReport::default();
    push_folder_into(client, spool, mailbox, folder, dest, opts, &mut report).await?;
    Ok(report)
}

/// [`push_folder`], counting into `report` as it goes, so what was done before an error
/// (a throttle, a lost connection) is still counted.
pub async fn push_folder_into(
    client: &mut Client,
    spool: &Spool,
    mailbox: &str,
    folder: &str,
    dest: &str,
    opts: &UpstreamOptions,
    report: &mut PushReport,
) -> Result<(), UpstreamError> {
    for uv in spool.generations(mailbox, folder)? {
        push_generation(client, spool, mailbox, folder, uv, dest, opts, report).await?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn push_generation(
    client: &mut Client,
    spool: &Spool,
    mailbox: &str,
    folder: &str,
    uv: u32,
    dest: &str,
    opts: &UpstreamOptions,
    report: &mut PushReport,
) -> Result<(), UpstreamError> {
    let mut records = spool.messages(mailbox, folder, uv)?;
    if records
        .iter()
        .any(|r| matches!(r.state, MessageState::Appending { .. }))
    {
        report.recovered += recover(client, spool, mailbox, folder, uv, &records).await?;
        // Reload: recovery changed states.
        records = spool.messages(mailbox, folder, uv)?;
    }
    let ctx = BatchContext {
        spool,
        mailbox,
        folder,
        uv,
        dest,
        limiter: opts.limiter.as_deref(),
        refused_together: std::sync::atomic::AtomicBool::new(false),
    };
    append_pending(client, &ctx, &records, opts, report).await?;
    if ctx.refused_together.load(Relaxed) && client.uses_multiappend() {
        let again = spool.messages(mailbox, folder, uv)?;
        client.set_multiappend(false);
        let r = append_pending(client, &ctx, &again, opts, report).await;
        client.set_multiappend(true);
        r?;
    }
    // The records as read before the APPENDs: the messages appended since carried their
    // flags, and a change the source makes meanwhile is seen by the next pass.
    sync_flags(client, spool, mailbox, folder, uv, dest, &records, report).await?;
    if opts.propagate_deletes {
        delete_expunged(client, spool, mailbox, folder, uv, report).await?;
    }
    Ok(())
}

/// APPENDs the messages of `records` still to be sent, in batches, pipelined where the
/// destination allows.
async fn append_pending(
    client: &mut Client,
    ctx: &BatchContext<'_>,
    records: &[MessageRecord],
    opts: &UpstreamOptions,
    report: &mut PushReport,
) -> Result<(), UpstreamError> {
    let pending: Vec<&MessageRecord> = records
        .iter()
        .filter(|r| match &r.state {
            MessageState::Spooled => true,
            MessageState::Failed { attempts, .. } => *attempts < opts.max_attempts,
            _ => false,
        })
        .collect();
    // A rate-limited mailbox sends at most what its bucket holds at once.
    let max_batch = match opts.limiter.as_ref().and_then(|l| l.max_batch()) {
        Some(m) => opts.append_batch.min(m).max(1),
        None => opts.append_batch,
    };
    let mut cursor = None;
    // With LITERAL+ a batch goes out while the answers to the one before are still
    // coming, so the destination is never idle while a batch is prepared (marked,
    // flushed, read from the spool) and the last answers travel back.
    let pipeline = client.can_pipeline_appends();
    let mut in_flight: Option<Flight<'_>> = None;
    let mut i = 0;
    while i < pending.len() {
        let mut j = i;
        let mut bytes = 0;
        while j < pending.len()
            && (j == i || (j - i < max_batch && bytes + pending[j].size <= opts.append_batch_bytes))
        {
            bytes += pending[j].size;
            j += 1;
        }
        if let Some(limiter) = &opts.limiter {
            for r in &pending[i..j] {
                limiter.acquire(r.size).await;
            }
        }
        // Without a carried UIDNEXT the folder is asked again, which must not happen
        // with answers still on the way.
        if cursor.is_none() {
            if let Some(prev) = in_flight.take() {
                ctx.settle(client, prev, report, &mut cursor).await?;
            }
        }
        let batch = ctx.prepare(client, &pending[i..j], cursor).await?;
        cursor.get_or_insert((batch.dest_uidvalidity, batch.dest_uidnext));
        let flight = ctx.send(client, batch).await;
        if let Some(prev) = in_flight.take() {
            ctx.settle(client, prev, report, &mut cursor).await?;
        }
        if pipeline {
            in_flight = Some(flight);
        } else {
            ctx.settle(client, flight, report, &mut cursor).await?;
        }
        i = j;
    }
    if let Some(prev) = in_flight.take() {
        ctx.settle(client, prev, report, &mut cursor).await?;
    }
    Ok(())
}

/// What every batch of one folder generation shares.
struct BatchContext<'a> {
    spool: &'a Spool,
    mailbox: &'a str,
    folder: &'a str,
    uv: u32,
    dest: &'a str,
    limiter: Option<&'a MailboxLimiter>,
    /// Set when a MULTIAPPEND was refused as a whole: its messages are still to be sent,
    /// one APPEND each, so that only the one at fault is refused.
    refused_together: std::sync::atomic::AtomicBool,
}

/// A batch ready to go: marked `Appending` in the spool, its bodies at hand.
struct Prepared<'r> {
    batch: &'r [&'r MessageRecord],
    marked: Vec<MessageRecord>,
    bodies: Vec<Vec<u8>>,
    /// The destination's (UIDVALIDITY, UIDNEXT) this batch was marked with.
    dest_uidvalidity: u32,
    dest_uidnext: u32,
    started: std::time::Instant,
    prepare_time: Duration,
}

/// A batch on its way: sent (or failed to send), its answers not read yet.
struct Flight<'r> {
    batch: Prepared<'r>,
    sent: Result<AppendsSent, ImapError>,
}

impl BatchContext<'_> {
    /// Marks the batch `Appending` (durably) and reads its bodies from the spool.
    ///
    /// `cursor` is the destination's (UIDVALIDITY, UIDNEXT): asked once per folder, then
    /// carried forward from APPENDUID. Any lower bound of the UIDs this batch will get is
    /// enough for recovery (it scans from there up), and UIDs only grow, so the value
    /// from before the previous batch, or its last UID + 1, both are; it saves a round
    /// trip per batch.
    ///
    /// It is asked with SELECT rather than STATUS: an APPEND into the selected folder
    /// uses the folder the server already has open, where an APPEND anywhere else makes
    /// the server open (and, with maildir, rescan) the folder for every single message.
    async fn prepare<'r>(
        &self,
        client: &mut Client,
        batch: &'r [&'r MessageRecord],
        cursor: Option<(u32, u32)>,
    ) -> Result<Prepared<'r>, UpstreamError> {
        let (dest_uidvalidity, dest_uidnext) = match cursor {
            Some(c) => c,
            None => {
                let info = client.select(self.dest, false).await?;
                if info.uidvalidity == 0 {
                    let st = client.status(self.dest).await?;
                    (st.uidvalidity, st.uidnext)
                } else {
                    (info.uidvalidity, info.uidnext)
                }
            }
        };
        let started = std::time::Instant::now();
        let mut marked: Vec<MessageRecord> = batch.iter().map(|r| (*r).clone()).collect();
        for r in &mut marked {
            r.state = MessageState::Appending {
                dest_folder: self.dest.to_string(),
                dest_uidvalidity,
                dest_uidnext,
            };
        }
        self.spool
            .put_messages(self.mailbox, self.folder, self.uv, &marked)?;
        // The mark must be on disk before the first byte of the APPEND leaves: it is what
        // tells a restarted run to look at the destination before appending again.
        self.spool.flush()?;
        let mut bodies = Vec::with_capacity(batch.len());
        for r in batch {
            bodies.push(self.spool.take_body(&r.hash)?);
        }
        Ok(Prepared {
            batch,
            marked,
            bodies,
            dest_uidvalidity,
            dest_uidnext,
            prepare_time: started.elapsed(),
            started,
        })
    }

    /// Sends the APPENDs of a prepared batch; a failure is kept for [`Self::settle`].
    async fn send<'r>(&self, client: &mut Client, batch: Prepared<'r>) -> Flight<'r> {
        let items: Vec<AppendItem<'_>> = batch
            .batch
            .iter()
            .zip(&batch.bodies)
            .map(|(r, body)| AppendItem {
                flags: &r.flags,
                internal_date: Some(r.internal_date.as_str()).filter(|d| !d.is_empty()),
                body,
            })
            .collect();
        let sent = client.append_send(self.dest, &items).await;
        drop(items);
        Flight { batch, sent }
    }

    /// Reads the answers to a sent batch and records each message's outcome. What the
    /// server answered before a failure is recorded; the rest stays `Appending`, to be
    /// looked for at the destination by `recover` in the next session.
    async fn settle(
        &self,
        client: &mut Client,
        flight: Flight<'_>,
        report: &mut PushReport,
        cursor: &mut Option<(u32, u32)>,
    ) -> Result<(), UpstreamError> {
        let appended_before = report.appended;
        let r = self.settle_inner(client, flight, report, cursor).await;
        if let Some(limiter) = self.limiter {
            limiter.on_appended(report.appended - appended_before, r.is_ok());
        }
        r
    }

    async fn settle_inner(
        &self,
        client: &mut Client,
        flight: Flight<'_>,
        report: &mut PushReport,
        cursor: &mut Option<(u32, u32)>,
    ) -> Result<(), UpstreamError> {
        let Flight {
            batch:
                Prepared {
                    batch,
                    mut marked,
                    bodies,
                    dest_uidvalidity,
                    dest_uidnext,
                    started,
                    prepare_time,
                },
            sent,
        } = flight;
        let (spool, mailbox, folder, uv, dest) =
            (self.spool, self.mailbox, self.folder, self.uv, self.dest);
        let answers = match sent {
            Ok(sent) => client.append_collect(sent).await,
            Err(e) => Err(e),
        };
        let (outcomes, error) = match answers {
            Ok(o) => {
                // Carry the cursor only when every message reported where it went.
                let mut next = Some((dest_uidvalidity, dest_uidnext));
                for o in &o {
                    next = match (next, o) {
                        (Some((v, n)), AppendOutcome::Appended { uidvalidity, uid })
                            if *uidvalidity == v =>
                        {
                            Some((v, n.max(uid.saturating_add(1))))
                        }
                        (
                            next,
                            AppendOutcome::Refused { .. } | AppendOutcome::RefusedTogether { .. },
                        ) => next,
                        _ => None,
                    };
                }
                *cursor = match (*cursor, next) {
                    // A batch sent after this one may have carried it further already.
                    (Some((v, n)), Some((nv, nn))) if v == nv => Some((v, n.max(nn))),
                    (_, next) => next,
                };
                (o, None)
            }
            // Mid-batch failure: the answers received before it are still facts.
            Err(e) => (client.take_partial_outcomes(), Some(e)),
        };
        if let Some(AppendOutcome::RefusedTogether {
            kind,
            text,
            messages,
        }) = outcomes
            .iter()
            .find(|o| matches!(o, AppendOutcome::RefusedTogether { .. }))
        {
            tracing::warn!(
                mailbox,
                folder,
                messages,
                "the destination refused a MULTIAPPEND of {messages} messages as a whole \
                 ({kind:?} {text}); none was appended, they are sent one at a time"
            );
            self.refused_together.store(true, Relaxed);
        }
        let known = outcomes.len().min(marked.len());
        let mut throttled: Option<(Duration, String)> = None;
        let mut disconnected: Option<String> = None;
        for ((r, outcome), body) in marked.iter_mut().zip(outcomes).zip(&bodies) {
            r.state = match outcome {
                AppendOutcome::Appended { uidvalidity, uid } => {
                    report.appended += 1;
                    report.bytes += r.size;
                    MessageState::Appended {
                        dest_folder: dest.to_string(),
                        dest_uidvalidity: uidvalidity,
                        dest_uid: uid,
                        flags: r.flags.clone(),
                    }
                }
                // Nothing of the command was appended: back as it was, to be sent alone.
                AppendOutcome::RefusedTogether { .. } => {
                    batch_state(batch, r.uid).unwrap_or(MessageState::Spooled)
                }
                AppendOutcome::AppendedNoUid => {
                    report.appended += 1;
                    report.bytes += r.size;
                    MessageState::Appended {
                        dest_folder: dest.to_string(),
                        dest_uidvalidity,
                        dest_uid: 0,
                        flags: r.flags.clone(),
                    }
                }
                // Exchange's "NO/BAD Request is throttled. Suggested Backoff Time: N ms": not
                // the message's fault. It goes back to Spooled and the mailbox pauses.
                AppendOutcome::Refused { text, .. } if throttle::is_throttle_text(&text) => {
                    report.throttled += 1;
                    let backoff = throttle::throttle_backoff(&text);
                    tracing::warn!(
                        mailbox,
                        folder,
                        uid = r.uid,
                        backoff_ms = backoff.as_millis() as u64,
                        "APPEND throttled by the destination: {text}"
                    );
                    if throttled.as_ref().is_none_or(|(b, _)| backoff > *b) {
                        throttled = Some((backoff, text));
                    }
                    MessageState::Spooled
                }
                AppendOutcome::Refused {
                    kind: Kind::Bad,
                    text,
                } if throttle::is_not_connected_text(&text) => {
                    disconnected = Some(text);
                    MessageState::Spooled
                }
                // Exchange refuses a message with a line over ~10,000 characters with "BAD
                // Command Argument Error": permanent, so skipped (and reported) rather than
                // retried. Re-wrapping the line would change the message.
                AppendOutcome::Refused { kind, text }
                    if text.to_ascii_lowercase().contains("command argument error")
                        && crate::source::longest_line(body) > LONG_LINE_HINT =>
                {
                    let reason = format!(
                        "the destination refused it ({kind:?} {text}): it has a line of {} \
                     characters and Exchange Online refuses lines over about 10,000; \
                     date {}; subject {:?}; {} bytes",
                        crate::source::longest_line(body),
                        if r.internal_date.is_empty() {
                            "?"
                        } else {
                            &r.internal_date
                        },
                        crate::imap::response::header_value(header_block(body), "subject")
                            .unwrap_or_default(),
                        r.size
                    );
                    tracing::warn!(mailbox, folder, uid = r.uid, %reason, "message skipped");
                    report.skipped_details.push(format!(
                        "folder {folder:?} UID {}: skipped: {reason}",
                        r.uid
                    ));
                    MessageState::Skipped { reason }
                }
                AppendOutcome::Refused { kind, text } => {
                    report.failed += 1;
                    let attempts = match &batch_state(batch, r.uid) {
                        Some(MessageState::Failed { attempts, .. }) => attempts + 1,
                        _ => 1,
                    };
                    let reason = format!("destination refused APPEND to {dest:?}: {kind:?} {text}");
                    tracing::warn!(mailbox, folder, uid = r.uid, %reason, "message not appended");
                    report
                        .errors
                        .push(format!("folder {folder:?} UID {}: {reason}", r.uid));
                    MessageState::Failed { reason, attempts }
                }
            };
        }
        spool.put_messages(mailbox, folder, uv, &marked[..known])?;
        tracing::debug!(
            mailbox,
            folder,
            messages = batch.len(),
            prepare_ms = prepare_time.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "append batch"
        );
        if let Some((backoff, text)) = throttled {
            return Err(UpstreamError::Throttled { backoff, text });
        }
        if let Some(e) = error {
            return Err(e.into());
        }
        if let Some(text) = disconnected {
            return Err(UpstreamError::Disconnected(text));
        }
        Ok(())
    }
}

/// Lines longer than this make a "Command Argument Error" from Exchange a line-length refusal.
const LONG_LINE_HINT: usize = 8_000;

/// The header block of a message (up to the first empty line).
fn header_block(body: &[u8]) -> &[u8] {
    let end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(body.len());
    &body[..end]
}

fn batch_state(batch: &[&MessageRecord], uid: u32) -> Option<MessageState> {
    batch.iter().find(|r| r.uid == uid).map(|r| r.state.clone())
}

/// Resolves messages left `Appending` by an interrupted run (see the module doc).
async fn recover(
    client: &mut Client,
    spool: &Spool,
    mailbox: &str,
    folder: &str,
    uv: u32,
    records: &[MessageRecord],
) -> Result<u64, UpstreamError> {
    // Group by destination folder; each group is checked from its lowest recorded UIDNEXT.
    let mut groups: HashMap<(String, u32), (u32, Vec<&MessageRecord>)> = HashMap::new();
    for r in records {
        if let MessageState::Appending {
            dest_folder,
            dest_uidvalidity,
            dest_uidnext,
        } = &r.state
        {
            let g = groups
                .entry((dest_folder.clone(), *dest_uidvalidity))
                .or_insert((u32::MAX, Vec::new()));
            g.0 = g.0.min(*dest_uidnext);
            g.1.push(r);
        }
    }
    let mut found = 0;
    for ((dest, dest_uv), (from, uncertain)) in groups {
        let status = client.status(&dest).await?;
        // Destination UIDs already owned by a confirmed message of this folder; they cannot
        // be the copy of an uncertain one.
        let owned: HashSet<u32> = records
            .iter()
            .filter_map(|r| match &r.state {
                MessageState::Appended {
                    dest_folder,
                    dest_uid,
                    ..
                }
                | MessageState::Expunging {
                    dest_folder,
                    dest_uid,
                    ..
                } if *dest_folder == dest => Some(*dest_uid),
                _ => None,
            })
            .collect();
        let mut at_dest: HashMap<BodyHash, Vec<u32>> = HashMap::new();
        if status.uidvalidity == dest_uv && status.messages > 0 {
            client.select(&dest, true).await?;
            for (uid, hash) in client
                .uid_hashes(&format!("{}:*", from.max(1)), |b| spool.hash_body(b))
                .await?
            {
                if uid >= from && !owned.contains(&uid) {
                    at_dest.entry(hash).or_default().push(uid);
                }
            }
        }
        let mut updated = Vec::new();
        for r in uncertain {
            let mut r = r.clone();
            match at_dest.get_mut(&r.hash).and_then(|v| v.pop()) {
                Some(dest_uid) => {
                    found += 1;
                    tracing::info!(
                        mailbox,
                        folder,
                        uid = r.uid,
                        dest_uid,
                        "interrupted APPEND found at the destination"
                    );
                    r.state = MessageState::Appended {
                        dest_folder: dest.clone(),
                        dest_uidvalidity: dest_uv,
                        dest_uid,
                        flags: r.flags.clone(),
                    };
                }
                None => r.state = MessageState::Spooled,
            }
            updated.push(r);
        }
        spool.put_messages(mailbox, folder, uv, &updated)?;
    }
    spool.flush()?;
    Ok(found)
}

/// Destination UIDs per UID STORE / UID EXPUNGE command.
const DELETE_CHUNK: usize = 500;

/// A message's UID at the source and at the destination.
type UidPair = (u32, u32);

/// Deletes at the destination the messages of one folder generation that the source
/// expunged (`Expunging`, recorded by the source within `max_delete_percent`), and
/// records them `Expunged`.
///
/// Exactly those messages, exactly once: per destination folder, after checking that its
/// UIDVALIDITY is still the one the UIDs were given under, `\Deleted` is added to their
/// UIDs and UID EXPUNGE removes those UIDs alone; other messages marked `\Deleted` there
/// are left alone, and without UIDPLUS nothing is deleted at all (a plain EXPUNGE would
/// take them too). After a crash between the EXPUNGE and the record, the next run sends
/// the same two commands again: the UIDs no longer exist and are never reused, so the
/// repeat changes nothing.
async fn delete_expunged(
    client: &mut Client,
    spool: &Spool,
    mailbox: &str,
    folder: &str,
    uv: u32,
    report: &mut PushReport,
) -> Result<(), UpstreamError> {
    // (destination folder, its UIDVALIDITY) -> (source UID, destination UID).
    let mut groups: BTreeMap<(String, u32), Vec<UidPair>> = BTreeMap::new();
    for r in spool.messages(mailbox, folder, uv)? {
        if let MessageState::Expunging {
            dest_folder,
            dest_uidvalidity,
            dest_uid,
        } = r.state
        {
            groups
                .entry((dest_folder, dest_uidvalidity))
                .or_default()
                .push((r.uid, dest_uid));
        }
    }
    if groups.is_empty() {
        return Ok(());
    }
    if !client.caps().has("UIDPLUS") {
        let n: usize = groups.values().map(Vec::len).sum();
        let msg = format!(
            "folder {folder:?}: {n} message(s) expunged at the source are not deleted at the \
             destination: {} does not offer UIDPLUS (UID EXPUNGE), and a plain EXPUNGE could \
             remove other messages",
            client.host()
        );
        tracing::error!(mailbox, folder, "{msg}");
        report.errors.push(msg);
        return Ok(());
    }
    // The source's records are what says "delete this UID"; they are on disk before the
    // first deletion, so no restart can see the message as still wanted.
    spool.flush()?;
    for ((dest, dest_uv), items) in groups {
        let (unknown, known): (Vec<UidPair>, Vec<UidPair>) =
            items.into_iter().partition(|(_, d)| *d == 0);
        if !unknown.is_empty() {
            let msg = format!(
                "folder {folder:?}: {} message(s) expunged at the source are not deleted in \
                 {dest:?}: the destination gave no UID for them when they were appended (no \
                 APPENDUID)",
                unknown.len()
            );
            tracing::error!(mailbox, folder, "{msg}");
            report.errors.push(msg);
        }
        if known.is_empty() {
            continue;
        }
        let info = match client.select(&dest, false).await {
            Ok(info) => info,
            Err(e @ ImapError::Refused { .. }) if !is_throttle(&e) => {
                let msg = format!(
                    "folder {folder:?}: {} message(s) expunged at the source are not deleted \
                     in {dest:?}: {e}",
                    known.len()
                );
                tracing::error!(mailbox, folder, "{msg}");
                report.errors.push(msg);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if info.uidvalidity != dest_uv {
            let msg = format!(
                "folder {folder:?}: {} message(s) expunged at the source are not deleted in \
                 {dest:?}: that folder was recreated at the destination (UIDVALIDITY {dest_uv} \
                 is now {}), so their UIDs no longer name them",
                known.len(),
                info.uidvalidity
            );
            tracing::error!(mailbox, folder, "{msg}");
            report.errors.push(msg);
            continue;
        }
        let mut deleted = 0u64;
        for chunk in known.chunks(DELETE_CHUNK) {
            let uids: Vec<u32> = chunk.iter().map(|(_, d)| *d).collect();
            match client.uid_delete(&uids).await {
                Ok(()) => {}
                Err(e @ ImapError::Refused { .. }) if !is_throttle(&e) => {
                    let msg = format!(
                        "folder {folder:?}: {} message(s) expunged at the source are not \
                         deleted in {dest:?}: {e}",
                        chunk.len()
                    );
                    tracing::error!(mailbox, folder, "{msg}");
                    report.errors.push(msg);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
            for (src_uid, dest_uid) in chunk {
                spool.update_message(mailbox, folder, uv, *src_uid, |rec| {
                    if matches!(&rec.state, MessageState::Expunging { dest_uid: d, .. } if d == dest_uid)
                    {
                        rec.state = MessageState::Expunged;
                    }
                })?;
            }
            deleted += chunk.len() as u64;
        }
        if deleted > 0 {
            report.deleted += deleted;
            tracing::info!(
                mailbox,
                folder,
                dest = %dest,
                count = deleted,
                "deleted at the destination: expunged at the source"
            );
        }
    }
    Ok(())
}

/// A refusal that is Exchange asking us to slow down (the mailbox pauses and retries),
/// not an answer about the command.
fn is_throttle(e: &ImapError) -> bool {
    matches!(throttle::classify(e), throttle::Fault::Throttled { .. })
}

/// Carries source flag changes to messages already at the destination.
#[allow(clippy::too_many_arguments)]
async fn sync_flags(
    client: &mut Client,
    spool: &Spool,
    mailbox: &str,
    folder: &str,
    uv: u32,
    dest: &str,
    records: &[MessageRecord],
    report: &mut PushReport,
) -> Result<(), UpstreamError> {
    let mut selected = false;
    for r in records {
        let MessageState::Appended {
            dest_folder,
            dest_uid,
            flags,
            ..
        } = &r.state
        else {
            continue;
        };
        if *dest_uid == 0 || dest_folder != dest || crate::spool::same_flag_set(flags, &r.flags) {
            continue;
        }
        if !selected {
            client.select(dest, false).await?;
            selected = true;
        }
        client.uid_store_flags(*dest_uid, &r.flags).await?;
        let new_flags = r.flags.clone();
        spool.update_message(mailbox, folder, uv, r.uid, |rec| {
            if let MessageState::Appended { flags, .. } = &mut rec.state {
                *flags = new_flags.clone();
            }
        })?;
        report.flags_updated += 1;
    }
    Ok(())
}
