//! The upstream side: pushes spooled messages to the destination, exactly once.
//!
//! The protocol with the spool, per batch of messages of one folder:
//! 1. take the destination folder's UIDVALIDITY and UIDNEXT (SELECT for a folder's first
//!    batch, then the last APPENDUID + 1: a lower bound is all recovery needs);
//! 2. claim the batch in the spool ([`Spool::claim`]: `Appending`, with that UIDNEXT and
//!    the time), durably;
//! 3. APPEND the messages (pipelined with LITERAL+; as one MULTIAPPEND command where the
//!    server offers it), unchanged, with their flags and INTERNALDATE;
//! 4. settle each one ([`Spool::settle`]): `Appended { dest_uid }` from APPENDUID; back to
//!    where it was when it was throttled or not sent; `Failed` (retried later, with a
//!    backoff) or `Skipped` (refused for good, [`refusal_is_permanent`]) when refused.
//!
//! The spool applies each step to the record as it is at that moment and only from the
//! state it expects, so a flag change the source records meanwhile is kept, and an
//! outcome for a message that moved on (a new UIDVALIDITY at the source) is not applied.
//!
//! A MULTIAPPEND is all or nothing: when the server refuses one, none of its messages was
//! appended, and they are sent again one APPEND each, so that only the message at fault
//! is refused.
//!
//! After a throttle answer on a live connection, the answers to everything still in
//! flight are read before the mailbox pauses, so a throttle leaves nothing uncertain.
//! After a crash or a cut connection between 2 and 4 nobody knows which APPENDs took
//! effect: before anything else is sent to that folder, [`recover::recover`] looks for
//! them at the destination, without relying on the destination giving back the bytes it
//! was given (see its module doc). Nothing is added to the message (no tracking header),
//! so every message arrives byte-identical.
//!
//! With `[sync] propagate_deletes`, the messages the source recorded `Expunging` are
//! deleted at the destination after the folder's APPENDs and flag changes, by UID and
//! nothing else (see `deletes.rs`).

mod adopt;
mod deletes;
pub mod fingerprint;
mod flags;
pub mod nul;
pub mod recover;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::budget::{Budget, Permit};
use crate::details::Details;
use crate::imap::client::{AppendItem, AppendOutcome, AppendsSent, Client};
use crate::imap::response::{Kind, RespCode};
use crate::imap::ImapError;
use crate::spool::{Claim, MessageRecord, Settle, Spool, SpoolError};
use crate::throttle::{self, MailboxLimiter};

/// Limits of the upstream.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Messages per pipelined APPEND batch.
    pub append_batch: usize,
    /// Bytes per batch (bodies are held in memory while a batch is in flight).
    pub append_batch_bytes: u64,
    /// The mailbox's rate limits (token buckets, AIMD); None: unlimited.
    pub limiter: Option<Arc<MailboxLimiter>>,
    /// `[sync] propagate_deletes`: delete at the destination what the source expunged
    /// (the messages the source recorded `Expunging`). Off: nothing is ever deleted.
    pub propagate_deletes: bool,
    /// The client's timeout: how long an earlier session of ours may still have the
    /// server saving what it sent (see [`recover`]).
    pub session_timeout: Duration,
    /// The bytes of bodies in memory, shared with every connection: a batch takes its
    /// bodies' size before it reads them, and holds it until its answers are settled.
    pub budget: Option<Budget>,
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
    /// Messages the destination refused for good and that are now skipped, one line each
    /// (the first ones; the spool keeps every one).
    pub skipped_details: Details,
    /// Per-message problems, phrased for the admin.
    pub errors: Details,
    /// What the admin should know although nothing failed: messages sent again after an
    /// interrupted APPEND when recovery could not tell whether they had arrived.
    pub notices: Details,
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
        self.notices.extend(other.notices);
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

    /// The server answered and the connection can still be read: the answers to commands
    /// sent after the one that failed are still to come.
    fn answers_follow(&self) -> bool {
        matches!(
            self,
            UpstreamError::Throttled { .. } | UpstreamError::Disconnected(_)
        )
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

/// Unix seconds now.
fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Records of a folder generation handled at once by [`push_generation`]: what the
/// upstream holds of a folder, whatever its size (about 150 bytes each in memory).
const RANGE_RECORDS: usize = 4096;

/// The records of a generation from UID `from` on, about `max` of them
/// ([`Spool::messages_from`]), read on a blocking thread: decoding thousands of records
/// must not hold up the other mailboxes' sessions on the runtime's thread.
pub(crate) async fn records_from(
    spool: &Spool,
    mailbox: &str,
    folder: &str,
    uv: u32,
    from: u32,
    max: usize,
) -> Result<Vec<MessageRecord>, UpstreamError> {
    let (mailbox, folder) = (mailbox.to_string(), folder.to_string());
    Ok(spool
        .run_blocking(move |s| s.messages_from(&mailbox, &folder, uv, from, max))
        .await?)
}

/// Pushes one folder generation, a range of [`RANGE_RECORDS`] records at a time in UID
/// order (oldest first), so that memory is bounded by the range, not by the folder.
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
    // Every uncertain APPEND of the generation is settled before anything is sent:
    // recovery pairs what it finds at the destination with what nobody owns yet, which
    // new APPENDs must not change under it. Only those records are held.
    let mut uncertain = Vec::new();
    let adopt = adoption(client, spool, mailbox, dest).await?;
    let mut from = 0u32;
    loop {
        let mut records = records_from(spool, mailbox, folder, uv, from, RANGE_RECORDS).await?;
        let Some(last) = records.last().map(|r| r.uid) else {
            break;
        };
        if let Some(claim) = &adopt {
            records = adopt::claim_all(spool, mailbox, folder, uv, records, claim).await?;
        }
        uncertain.extend(
            records
                .into_iter()
                .filter(|r| matches!(r.state, crate::spool::MessageState::Appending { .. })),
        );
        match last.checked_add(1) {
            Some(next) => from = next,
            None => break,
        }
    }
    if !uncertain.is_empty() {
        report.recovered += recover::recover(
            client,
            spool,
            mailbox,
            folder,
            uv,
            &uncertain,
            opts.session_timeout,
            report,
        )
        .await?;
    }
    drop(uncertain);
    let mut from = 0u32;
    loop {
        let records = records_from(spool, mailbox, folder, uv, from, RANGE_RECORDS).await?;
        let Some(last) = records.last().map(|r| r.uid) else {
            break;
        };
        push_range(
            client, spool, mailbox, folder, uv, dest, opts, report, from, records,
        )
        .await?;
        match last.checked_add(1) {
            Some(next) => from = next,
            None => break,
        }
    }
    if opts.propagate_deletes {
        deletes::delete_expunged(client, spool, mailbox, folder, uv, report).await?;
    }
    Ok(())
}

/// For a mailbox this appliance took over from another shard (`spool/owned.rs`), the claim
/// under which its messages are taken as possibly sent already: from the destination
/// folder's first UID on, now. None when the mailbox is not adopting, or the folder holds
/// nothing (or does not exist) at the destination: then nothing can be there twice.
async fn adoption(
    client: &mut Client,
    spool: &Spool,
    mailbox: &str,
    dest: &str,
) -> Result<Option<Claim>, UpstreamError> {
    if !spool.is_adopting(mailbox)? {
        return Ok(None);
    }
    let st = match client.status(dest).await {
        Ok(st) => st,
        Err(e @ ImapError::Refused { .. }) if !is_throttle(&e) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if st.messages == 0 {
        return Ok(None);
    }
    Ok(Some(Claim {
        dest_folder: dest.to_string(),
        dest_uidvalidity: st.uidvalidity,
        dest_uidnext: 1,
        marked_ms: chrono::Utc::now().timestamp_millis(),
    }))
}

/// [`push_generation`] of the `records` read from UID `from` on.
#[allow(clippy::too_many_arguments)]
async fn push_range(
    client: &mut Client,
    spool: &Spool,
    mailbox: &str,
    folder: &str,
    uv: u32,
    dest: &str,
    opts: &UpstreamOptions,
    report: &mut PushReport,
    from: u32,
    records: Vec<MessageRecord>,
) -> Result<(), UpstreamError> {
    let count = records.len();
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
        let again = records_from(spool, mailbox, folder, uv, from, count).await?;
        client.set_multiappend(false);
        let r = append_pending(client, &ctx, &again, opts, report).await;
        client.set_multiappend(true);
        r?;
    }
    // The records as read before the APPENDs: the messages appended since carried their
    // flags, and a change the source makes meanwhile is seen by the next pass.
    flags::sync_flags(client, spool, mailbox, folder, uv, dest, &records, report).await
}

/// APPENDs the messages of `records` that can be claimed now, in batches, pipelined where
/// the destination allows.
async fn append_pending(
    client: &mut Client,
    ctx: &BatchContext<'_>,
    records: &[MessageRecord],
    opts: &UpstreamOptions,
    report: &mut PushReport,
) -> Result<(), UpstreamError> {
    let now = now();
    let pending: Vec<&MessageRecord> = records.iter().filter(|r| r.state.claimable(now)).collect();
    // A rate-limited mailbox sends at most what its bucket holds at once.
    let max_batch = match opts.limiter.as_ref().and_then(|l| l.max_batch()) {
        Some(m) => opts.append_batch.min(m).max(1),
        None => opts.append_batch,
    };
    let mut cursor = None;
    // With LITERAL+ a batch goes out while the answers to the one before are still
    // coming, so the destination is never idle while a batch is prepared (claimed,
    // flushed, read from the spool) and the last answers travel back.
    let pipeline = client.can_pipeline_appends();
    let mut in_flight: Option<Flight> = None;
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
        // The batch's share of the memory budget, before its bodies are read. Waiting for
        // it while the batch before holds its own share could wait for ever (every
        // connection doing the same): that batch is settled first, which frees its share.
        let permit = match &opts.budget {
            None => None,
            Some(budget) => Some(match budget.try_take(bytes) {
                Some(p) => p,
                None => {
                    if let Some(prev) = in_flight.take() {
                        ctx.settle(client, prev, report, &mut cursor).await?;
                    }
                    budget.take(bytes).await
                }
            }),
        };
        let uids: Vec<u32> = pending[i..j].iter().map(|r| r.uid).collect();
        i = j;
        let Some(mut batch) = ctx.prepare(client, &uids, cursor, report).await? else {
            continue;
        };
        batch.permit = permit;
        cursor.get_or_insert((batch.claim.dest_uidvalidity, batch.claim.dest_uidnext));
        let flight = ctx.send(client, batch).await;
        if let Some(prev) = in_flight.take() {
            if let Err(e) = ctx.settle(client, prev, report, &mut cursor).await {
                // Read what the server says of the batch just sent before pausing or
                // reconnecting, so that a throttle leaves nothing uncertain.
                if e.answers_follow() {
                    let _ = ctx.settle(client, flight, report, &mut cursor).await;
                }
                return Err(e);
            }
        }
        if pipeline {
            in_flight = Some(flight);
        } else {
            ctx.settle(client, flight, report, &mut cursor).await?;
        }
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

/// A batch ready to go: claimed in the spool, its bodies at hand.
struct Prepared {
    /// The records as claimed (with the flags the source reports now).
    records: Vec<MessageRecord>,
    bodies: Vec<Vec<u8>>,
    claim: Claim,
    started: std::time::Instant,
    prepare_time: Duration,
    /// The bodies' share of the memory budget, given back with the batch.
    permit: Option<Permit>,
}

/// A batch on its way: sent (or failed to send), its answers not read yet.
struct Flight {
    batch: Prepared,
    sent: Result<AppendsSent, ImapError>,
}

impl BatchContext<'_> {
    /// Claims the messages `uids` in the spool (durably) and reads their bodies. `None`
    /// when none of them can be claimed any more (settled or moved on meanwhile).
    ///
    /// `cursor` is the destination's (UIDVALIDITY, UIDNEXT): asked once per folder, then
    /// carried forward from APPENDUID. Any lower bound of the UIDs this batch will get is
    /// enough for recovery (it looks from there up), and UIDs only grow, so the value
    /// from before the previous batch, or its last UID + 1, both are; it saves a round
    /// trip per batch.
    ///
    /// It is asked with SELECT rather than STATUS: an APPEND into the selected folder
    /// uses the folder the server already has open, where an APPEND anywhere else makes
    /// the server open (and, with maildir, rescan) the folder for every single message.
    ///
    /// A message whose spooled copy cannot be read is not sent: it is recorded failed,
    /// with the spool's words, and the rest of the batch goes on.
    async fn prepare(
        &self,
        client: &mut Client,
        uids: &[u32],
        cursor: Option<(u32, u32)>,
        report: &mut PushReport,
    ) -> Result<Option<Prepared>, UpstreamError> {
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
        let claim = Claim {
            dest_folder: self.dest.to_string(),
            dest_uidvalidity,
            dest_uidnext,
            marked_ms: chrono::Utc::now().timestamp_millis(),
        };
        // The claim waits for an fsync, and bodies not in memory are read from disk: off
        // the runtime's thread.
        let (mailbox, folder, uv) = (self.mailbox.to_string(), self.folder.to_string(), self.uv);
        let (uids, claim_now, claim_c) = (uids.to_vec(), now(), claim.clone());
        let claimed = self
            .spool
            .run_blocking(move |s| {
                let claimed = s.claim(&mailbox, &folder, uv, &uids, &claim_c, claim_now)?;
                Ok(claimed
                    .into_iter()
                    .map(|r| {
                        let body = s.take_body(&r.hash);
                        (r, body)
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        let mut records = Vec::with_capacity(claimed.len());
        let mut bodies = Vec::with_capacity(claimed.len());
        let mut unreadable = Vec::new();
        let binary = client.can_append_binary();
        for (r, body) in claimed {
            match body {
                Ok(mut b) => {
                    if let nul::NulHandling::Replaced(n) = nul::prepare(&mut b, binary) {
                        self.altered(&r, n, report);
                    }
                    records.push(r);
                    bodies.push(b);
                }
                Err(e) => {
                    let reason = format!("its spooled copy cannot be read: {e}");
                    tracing::error!(mailbox = self.mailbox, folder = self.folder, uid = r.uid,
                        %reason, "message not sent");
                    report.failed += 1;
                    crate::metrics::get().failed.inc();
                    report
                        .errors
                        .push(format!("folder {:?} UID {}: {reason}", self.folder, r.uid));
                    unreadable.push((
                        r.uid,
                        Settle::Refused {
                            reason,
                            code: None,
                            permanent: false,
                        },
                    ));
                }
            }
        }
        if !unreadable.is_empty() {
            self.spool.settle(
                self.mailbox,
                self.folder,
                self.uv,
                &claim,
                &unreadable,
                now(),
            )?;
        }
        if records.is_empty() {
            return Ok(None);
        }
        Ok(Some(Prepared {
            records,
            bodies,
            claim,
            prepare_time: started.elapsed(),
            started,
            permit: None,
        }))
    }

    /// Reports a message sent with its `n` NUL bytes replaced (see [`nul`]), as a notice
    /// kept with the mailbox: it is copied, but not byte for byte.
    fn altered(&self, r: &MessageRecord, n: usize, report: &mut PushReport) {
        let line = format!(
            "folder {:?} UID {}: altered: {n} NUL byte(s) replaced by 0x{:02X} (the \
             destination does not offer BINARY, and an IMAP literal cannot carry NUL)",
            self.folder,
            r.uid,
            nul::REPLACEMENT
        );
        tracing::warn!(
            mailbox = self.mailbox,
            folder = self.folder,
            uid = r.uid,
            nul = n,
            "message altered: NUL bytes replaced"
        );
        if let Err(e) = self.spool.add_notice(self.mailbox, &line) {
            tracing::warn!(mailbox = self.mailbox, "notice not kept: {e}");
        }
        report.notices.push(line);
    }

    /// Sends the APPENDs of a prepared batch; a failure is kept for [`Self::settle`].
    async fn send(&self, client: &mut Client, batch: Prepared) -> Flight {
        let items: Vec<AppendItem<'_>> = batch
            .records
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

    /// Reads the answers to a sent batch and settles each message. What the server
    /// answered before a failure is settled; the rest stays `Appending`, to be looked for
    /// at the destination by recovery in the next session.
    async fn settle(
        &self,
        client: &mut Client,
        flight: Flight,
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
        flight: Flight,
        report: &mut PushReport,
        cursor: &mut Option<(u32, u32)>,
    ) -> Result<(), UpstreamError> {
        let Flight {
            batch:
                Prepared {
                    records,
                    bodies,
                    claim,
                    started,
                    prepare_time,
                    // Held (with the bodies) until the batch is settled.
                    permit: _permit,
                },
            sent,
        } = flight;
        let (mailbox, folder, dest) = (self.mailbox, self.folder, self.dest);
        let answers = match sent {
            Ok(sent) => client.append_collect(sent).await,
            Err(e) => Err(e),
        };
        let (outcomes, error) = match answers {
            Ok(o) => {
                advance_cursor(cursor, &claim, &o);
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
        let mut throttled: Option<(Duration, String)> = None;
        let mut disconnected: Option<String> = None;
        let mut settled = Vec::with_capacity(outcomes.len());
        for ((r, outcome), body) in records.iter().zip(outcomes).zip(&bodies) {
            let s = match outcome {
                AppendOutcome::Appended { uidvalidity, uid } => {
                    report.appended += 1;
                    report.bytes += r.size;
                    crate::metrics::get().appended.inc();
                    crate::metrics::get().appended_bytes.inc_by(r.size);
                    Settle::Appended {
                        dest_uidvalidity: uidvalidity,
                        dest_uid: uid,
                        flags: r.flags.clone(),
                    }
                }
                AppendOutcome::AppendedNoUid => {
                    report.appended += 1;
                    report.bytes += r.size;
                    crate::metrics::get().appended.inc();
                    crate::metrics::get().appended_bytes.inc_by(r.size);
                    Settle::Appended {
                        dest_uidvalidity: claim.dest_uidvalidity,
                        dest_uid: 0,
                        flags: r.flags.clone(),
                    }
                }
                // Nothing of the command was appended: back as it was, to be sent alone.
                AppendOutcome::RefusedTogether { .. } => Settle::Unsent,
                // Exchange's "NO/BAD Request is throttled. Suggested Backoff Time: N ms": not
                // the message's fault. It goes back and the mailbox pauses.
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
                    Settle::Unsent
                }
                AppendOutcome::Refused {
                    kind: Kind::Bad,
                    text,
                    ..
                } if throttle::is_not_connected_text(&text) => {
                    disconnected = Some(text);
                    Settle::Unsent
                }
                AppendOutcome::Refused { kind, code, text } => {
                    let refusal = Refusal::of(kind, code.as_ref(), &text, body);
                    let reason = refusal.reason(dest, r, body, kind, &text);
                    if refusal.permanent {
                        crate::metrics::get().skip(crate::metrics::SkipReason::Refused, 1);
                        tracing::warn!(mailbox, folder, uid = r.uid, %reason, "message skipped");
                        report.skipped_details.push(format!(
                            "folder {folder:?} UID {}: skipped: {reason}",
                            r.uid
                        ));
                    } else {
                        report.failed += 1;
                        crate::metrics::get().failed.inc();
                        tracing::warn!(mailbox, folder, uid = r.uid, %reason, "message not appended");
                        report
                            .errors
                            .push(format!("folder {folder:?} UID {}: {reason}", r.uid));
                    }
                    Settle::Refused {
                        reason,
                        code: refusal.code,
                        permanent: refusal.permanent,
                    }
                }
            };
            settled.push((r.uid, s));
        }
        self.spool
            .settle(mailbox, folder, self.uv, &claim, &settled, now())?;
        tracing::debug!(
            mailbox,
            folder,
            messages = records.len(),
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

/// Carries the destination's UIDNEXT past a batch whose every message reported where it
/// went.
fn advance_cursor(cursor: &mut Option<(u32, u32)>, claim: &Claim, outcomes: &[AppendOutcome]) {
    let mut next = Some((claim.dest_uidvalidity, claim.dest_uidnext));
    for o in outcomes {
        next = match (next, o) {
            (Some((v, n)), AppendOutcome::Appended { uidvalidity, uid }) if *uidvalidity == v => {
                Some((v, n.max(uid.saturating_add(1))))
            }
            (next, AppendOutcome::Refused { .. } | AppendOutcome::RefusedTogether { .. }) => next,
            _ => None,
        };
    }
    *cursor = match (*cursor, next) {
        // A batch sent after this one may have carried it further already.
        (Some((v, n)), Some((nv, nn))) if v == nv => Some((v, n.max(nn))),
        (_, next) => next,
    };
}

/// Lines longer than this make a "Command Argument Error" from Exchange a line-length refusal.
const LONG_LINE_HINT: usize = 8_000;

/// Response codes (RFC 5530 and others) that say the destination will never take the
/// message as it is: retrying it is pointless, so it is skipped and reported.
const PERMANENT_CODES: [&str; 4] = ["TOOBIG", "PARSE", "CANNOT", "CLIENTBUG"];

/// How a refused APPEND is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The response code, by name (`OVERQUOTA`), if the server gave one.
    pub code: Option<String>,
    /// The destination will never take it: skipped rather than retried.
    pub permanent: bool,
    /// Exchange's refusal of a line over about 10,000 characters.
    long_line: bool,
}

impl Refusal {
    /// Classifies a refusal. Permanent: one of [`PERMANENT_CODES`], a refusal cutover made
    /// itself because the message cannot be carried at all, and Exchange's "Command
    /// Argument Error" for a message with a very long line (re-wrapping it would change
    /// the message). Anything else (`[OVERQUOTA]`, `[LIMIT]`, `[UNAVAILABLE]`, no code) may
    /// pass, and is retried with a backoff a limited number of times
    /// ([`crate::spool::MAX_ATTEMPTS`]).
    pub fn of(kind: Kind, code: Option<&RespCode>, text: &str, body: &[u8]) -> Refusal {
        let code = code.map(|c| match c {
            RespCode::TooBig => "TOOBIG".to_string(),
            RespCode::Other(s) => s
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase(),
            other => format!("{other:?}").to_ascii_uppercase(),
        });
        let long_line = kind == Kind::Bad
            && text.to_ascii_lowercase().contains("command argument error")
            && crate::source::longest_line(body) > LONG_LINE_HINT;
        let permanent = long_line
            || code
                .as_deref()
                .is_some_and(|c| PERMANENT_CODES.contains(&c));
        Refusal {
            code,
            permanent,
            long_line,
        }
    }

    /// The reason recorded and shown to the admin.
    fn reason(&self, dest: &str, r: &MessageRecord, body: &[u8], kind: Kind, text: &str) -> String {
        let code = self
            .code
            .as_deref()
            .map(|c| format!("[{c}] "))
            .unwrap_or_default();
        if !self.long_line {
            return format!("destination refused APPEND to {dest:?}: {kind:?} {code}{text}");
        }
        format!(
            "the destination refused it ({kind:?} {text}): it has a line of {} characters \
             and Exchange Online refuses lines over about 10,000; date {}; subject {:?}; {} bytes",
            crate::source::longest_line(body),
            if r.internal_date.is_empty() {
                "?"
            } else {
                &r.internal_date
            },
            crate::imap::response::header_value(fingerprint::header_block(body), "subject")
                .unwrap_or_default(),
            r.size
        )
    }
}

/// A refusal that is Exchange asking us to slow down (the mailbox pauses and retries),
/// not an answer about the command.
fn is_throttle(e: &ImapError) -> bool {
    matches!(throttle::classify(e), throttle::Fault::Throttled { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_by_code() {
        let of = |kind, code: Option<RespCode>, text: &str| {
            Refusal::of(kind, code.as_ref(), text, b"Subject: x\r\n\r\nshort\r\n")
        };
        let r = of(Kind::No, Some(RespCode::Other("OVERQUOTA".into())), "full");
        assert_eq!((r.code.as_deref(), r.permanent), (Some("OVERQUOTA"), false));
        let r = of(Kind::No, Some(RespCode::TooBig), "too big");
        assert_eq!((r.code.as_deref(), r.permanent), (Some("TOOBIG"), true));
        let r = of(Kind::No, Some(RespCode::Other("PARSE".into())), "bad mime");
        assert!(r.permanent);
        let r = of(Kind::No, None, "try later");
        assert_eq!((r.code, r.permanent), (None, false));
        // A "Command Argument Error" is a line-length refusal only with a long line.
        let r = of(Kind::Bad, None, "Command Argument Error. 11");
        assert!(!r.permanent);
        let long = format!("Subject: x\r\n\r\n{}\r\n", "a".repeat(LONG_LINE_HINT + 1));
        let r = Refusal::of(
            Kind::Bad,
            None,
            "Command Argument Error. 11",
            long.as_bytes(),
        );
        assert!(r.permanent);
    }
}
