//! Message records: reads, and the transitions of [`records`](super::records) applied to
//! the records as they are in the spool.
//!
//! Nothing outside the spool writes a record whole. The source creates records
//! ([`Spool::record_new`], [`Spool::carry`]) and changes their flags
//! ([`Spool::set_source_flags`]); the upstream changes their state ([`Spool::claim`],
//! [`Spool::settle`], [`Spool::resolve`]...). Each call is one sled transaction that reads
//! every record it touches, checks the state it starts from and writes the result, so two
//! writers never undo each other: a flag change the source records while a batch is in
//! flight survives the batch's outcome, and an outcome for a record that recovery (or a
//! new UIDVALIDITY) moved on is not applied at all.

use std::collections::{BTreeMap, HashSet};

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::chunks::{
    chunk_key, chunk_of, decode_chunk, describe_chunk_key, encode_chunk, insert_sorted,
};
use super::records::{Claim, MessageRecord, MessageState, Resolution, Settle};
use super::{
    folder_prefix, generation_prefix, mailbox_prefix, MessageCounts, Result, Spool, SpoolError,
    REMOVE_CHUNK,
};

/// Records per sled transaction when a call touches many (a transaction holds what it
/// writes in memory until it commits).
const TX_CHUNK: usize = 1024;

/// What the messages of a mailbox already own in one destination folder: recovery must
/// never take one of these for the copy of an uncertain APPEND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedAtDest {
    /// Destination UIDs recorded for a message (`Appended`, `Expunging`).
    pub uids: HashSet<u32>,
    /// Messages recorded `Appended` there without a UID (no APPENDUID): each is one copy
    /// somewhere in the folder that belongs to it, by content. (Source folder, UIDVALIDITY,
    /// record.)
    pub without_uid: Vec<(String, u32, MessageRecord)>,
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<SpoolError>>;

impl Spool {
    /// Runs `f` as one sled transaction on the `messages` tree (sled retries it on a
    /// conflict, so it must only read and write through `tx`).
    fn transact<T>(&self, f: impl Fn(&TransactionalTree) -> TxResult<T>) -> Result<T> {
        self.messages.transaction(f).map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => SpoolError::Sled(e),
        })
    }

    /// Applies `step` to the record of each of `items` (UID and argument) of one folder
    /// generation, in transactions of up to [`TX_CHUNK`] items. `step` returns the
    /// record's new value, or `None` to leave it. Returns, in order, the records written
    /// (`None` for one left alone or missing). A UID given twice sees its first change.
    fn step<X>(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        items: &[(u32, X)],
        step: impl Fn(&MessageRecord, &X) -> Option<MessageRecord>,
    ) -> Result<Vec<Option<MessageRecord>>> {
        let prefix = generation_prefix(mailbox, folder, uidvalidity)?;
        let mut out = Vec::with_capacity(items.len());
        for group in items.chunks(TX_CHUNK) {
            out.extend(self.transact(|tx| {
                let mut chunks = Chunks::new(tx, &prefix);
                let mut written = Vec::with_capacity(group.len());
                for (uid, x) in group {
                    let recs = chunks.load(chunk_of(*uid))?;
                    let Ok(i) = recs.binary_search_by_key(uid, |r| r.uid) else {
                        written.push(None);
                        continue;
                    };
                    let new = step(&recs[i], x);
                    if let Some(new) = &new {
                        recs[i] = new.clone();
                        chunks.touch(chunk_of(*uid));
                    }
                    written.push(new);
                }
                chunks.store()?;
                Ok(written)
            })?);
        }
        Ok(out)
    }

    /// [`Spool::step`] of a state transition: the record keeps everything but its state.
    fn step_state<X>(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        items: &[(u32, X)],
        transition: impl Fn(&MessageState, &X) -> Option<MessageState>,
    ) -> Result<Vec<Option<MessageRecord>>> {
        self.step(mailbox, folder, uidvalidity, items, |rec, x| {
            transition(&rec.state, x).map(|state| MessageRecord {
                state,
                ..rec.clone()
            })
        })
    }

    // ===== The source's writes =====

    /// Records messages the source read for the first time (`Spooled`, or `Skipped` with
    /// the reason), in one transaction per chunk. A UID that already has a record keeps it
    /// as it is: a message seen twice (a server that sends two FETCH responses for one
    /// UID, a read that overlaps an earlier one) is never reset, so one already at the
    /// destination is never sent again. Returns how many records were new.
    ///
    /// The bodies spooled so far are synced first, so that a record can never reach the
    /// disk before the body it names.
    pub fn record_new(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        recs: &[MessageRecord],
    ) -> Result<usize> {
        for r in recs {
            if !matches!(
                r.state,
                MessageState::Spooled | MessageState::Skipped { .. }
            ) {
                return Err(invalid(format!(
                    "a new record of {mailbox}/{folder} UID {} must be Spooled or Skipped, not {:?}",
                    r.uid, r.state
                )));
            }
        }
        self.body_log.sync(&self.bodies)?;
        let prefix = generation_prefix(mailbox, folder, uidvalidity)?;
        let mut new = 0;
        for group in recs.chunks(TX_CHUNK) {
            new += self.transact(|tx| {
                let mut chunks = Chunks::new(tx, &prefix);
                let mut n = 0;
                for r in group {
                    if insert_sorted(chunks.load(chunk_of(r.uid))?, r.clone(), false) {
                        chunks.touch(chunk_of(r.uid));
                        n += 1;
                    }
                }
                chunks.store()?;
                Ok(n)
            })?;
        }
        Ok(new)
    }

    /// Records a message of generation `new_uv` whose content is the message `old_uid` of
    /// the older generation `old_uv` (the source folder got a new UIDVALIDITY), and removes
    /// the old record, in one transaction. The new record takes over what the old one had
    /// at the destination ([`MessageState::carried`]) as the old one is at that moment, so
    /// an APPEND the upstream settles for the old generation meanwhile is never lost nor
    /// made twice. `new` (its state `Spooled`) is recorded as it is when the old record is
    /// gone or has nothing at the destination. A UID already recorded in the new
    /// generation is left alone. Returns true if the new record was written.
    pub fn carry(
        &self,
        mailbox: &str,
        folder: &str,
        old_uv: u32,
        old_uid: u32,
        new_uv: u32,
        new: &MessageRecord,
    ) -> Result<bool> {
        self.body_log.sync(&self.bodies)?;
        let old_prefix = generation_prefix(mailbox, folder, old_uv)?;
        let new_prefix = generation_prefix(mailbox, folder, new_uv)?;
        self.transact(|tx| {
            let mut new_chunk = Chunks::new(tx, &new_prefix);
            let c = chunk_of(new.uid);
            if new_chunk
                .load(c)?
                .binary_search_by_key(&new.uid, |r| r.uid)
                .is_ok()
            {
                return Ok(false);
            }
            let mut rec = new.clone();
            let mut old_chunk = Chunks::new(tx, &old_prefix);
            let recs = old_chunk.load(chunk_of(old_uid))?;
            if let Ok(i) = recs.binary_search_by_key(&old_uid, |r| r.uid) {
                if let Some(state) = recs[i].state.carried() {
                    rec.state = state;
                }
                recs.remove(i);
                old_chunk.touch(chunk_of(old_uid));
            }
            old_chunk.store()?;
            insert_sorted(new_chunk.load(c)?, rec, false);
            new_chunk.touch(c);
            new_chunk.store()?;
            Ok(true)
        })
    }

    /// The flags the source reports now for each of `changes` (UID, flags); nothing else of
    /// the records changes. Returns how many records were changed.
    pub fn set_source_flags(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        changes: &[(u32, Vec<String>)],
    ) -> Result<usize> {
        let written = self.step(mailbox, folder, uidvalidity, changes, |rec, flags| {
            (rec.flags != *flags).then(|| MessageRecord {
                flags: flags.clone(),
                ..rec.clone()
            })
        })?;
        Ok(written.iter().flatten().count())
    }

    /// With `propagate_deletes`: the source no longer has these messages
    /// ([`MessageState::expunged_at_source`]). Returns how many are now recorded as gone.
    pub fn expunged_at_source(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        uids: &[u32],
    ) -> Result<usize> {
        let items: Vec<(u32, ())> = uids.iter().map(|u| (*u, ())).collect();
        let written = self.step_state(mailbox, folder, uidvalidity, &items, |s, _| {
            s.expunged_at_source()
        })?;
        Ok(written.iter().flatten().count())
    }

    // ===== The upstream's writes =====

    /// Claims messages for an APPEND batch ([`MessageState::claim`]; `now`: Unix seconds)
    /// and makes the claim durable before it returns: the mark must be on disk before the
    /// first byte of the APPEND leaves, since it is what tells a restarted run to look at
    /// the destination before appending again. Returns the records claimed, as they are
    /// now (their flags included), in the order of `uids`; a message that is no longer
    /// claimable (settled, expunged, moved to a new generation) is left out.
    pub fn claim(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        uids: &[u32],
        claim: &Claim,
        now: i64,
    ) -> Result<Vec<MessageRecord>> {
        let items: Vec<(u32, ())> = uids.iter().map(|u| (*u, ())).collect();
        let written = self.step_state(mailbox, folder, uidvalidity, &items, |s, _| {
            s.claim(claim, now)
        })?;
        self.flush()?;
        Ok(written.into_iter().flatten().collect())
    }

    /// Records the outcomes of a batch claimed under `claim` ([`MessageState::settle`]).
    /// Returns how many records were settled.
    pub fn settle(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        claim: &Claim,
        outcomes: &[(u32, Settle)],
        now: i64,
    ) -> Result<usize> {
        let written = self.step_state(mailbox, folder, uidvalidity, outcomes, |s, o| {
            s.settle(claim, o, now)
        })?;
        Ok(written.iter().flatten().count())
    }

    /// Records what recovery found of uncertain APPENDs ([`MessageState::resolve`]), and
    /// makes it durable. Returns how many records were resolved.
    pub fn resolve(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        found: &[(u32, Resolution)],
    ) -> Result<usize> {
        let written =
            self.step_state(mailbox, folder, uidvalidity, found, MessageState::resolve)?;
        self.flush()?;
        Ok(written.iter().flatten().count())
    }

    /// The destination copy `dest_uid` of message `uid` now has `flags`
    /// ([`MessageState::flags_written`]). Returns true if the record was changed.
    pub fn flags_written(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        uid: u32,
        dest_uid: u32,
        flags: &[String],
    ) -> Result<bool> {
        let written = self.step_state(mailbox, folder, uidvalidity, &[(uid, ())], |s, _| {
            s.flags_written(dest_uid, flags)
        })?;
        Ok(written.iter().flatten().count() == 1)
    }

    /// The destination copies of these messages (source UID, destination UID) were
    /// deleted ([`MessageState::deleted_at_dest`]). Returns how many were recorded.
    pub fn deleted_at_dest(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        pairs: &[(u32, u32)],
    ) -> Result<usize> {
        let written = self.step_state(mailbox, folder, uidvalidity, pairs, |s, d| {
            s.deleted_at_dest(*d)
        })?;
        Ok(written.iter().flatten().count())
    }

    /// The admin's "retry errors": every failed message of the mailbox is due again at
    /// once, with a fresh count ([`MessageState::retried`]). Returns how many.
    pub fn retry_failed(&self, mailbox: &str) -> Result<u64> {
        let mut n = 0;
        for folder in self.folders(mailbox)? {
            for uv in self.generations(mailbox, &folder.name)? {
                let uids: Vec<(u32, ())> = self
                    .messages(mailbox, &folder.name, uv)?
                    .into_iter()
                    .filter(|r| matches!(r.state, MessageState::Failed { .. }))
                    .map(|r| (r.uid, ()))
                    .collect();
                let written =
                    self.step_state(mailbox, &folder.name, uv, &uids, |s, _| s.retried())?;
                n += written.iter().flatten().count() as u64;
            }
        }
        Ok(n)
    }

    // ===== Reads =====

    /// Returns the record of one message, or `None` if the spool has never seen it.
    pub fn get_message(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        uid: u32,
    ) -> Result<Option<MessageRecord>> {
        let key = chunk_key(
            &generation_prefix(mailbox, folder, uidvalidity)?,
            chunk_of(uid),
        );
        let Some(value) = self.messages.get(&key)? else {
            return Ok(None);
        };
        let mut recs = decode_chunk(&key, &value)?;
        Ok(recs
            .binary_search_by_key(&uid, |r| r.uid)
            .ok()
            .map(|i| recs.swap_remove(i)))
    }

    /// Returns every record of one folder generation, in ascending UID order.
    ///
    /// The order comes for free from the key layout (big-endian UIDs), so callers can
    /// rely on it to resume where they stopped, or to append oldest-first.
    pub fn messages(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
    ) -> Result<Vec<MessageRecord>> {
        self.messages_from(mailbox, folder, uidvalidity, 0, usize::MAX)
    }

    /// Returns the records of one folder generation from UID `from` on, in ascending UID
    /// order, about `max` of them: whole chunks, so up to
    /// [`CHUNK_UIDS`](super::chunks::CHUNK_UIDS) - 1 more. The next call starts after the
    /// last one returned; an empty answer means there are no more.
    ///
    /// This is how a folder of millions of messages is walked with memory bounded by
    /// `max`, not by the folder.
    pub fn messages_from(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        from: u32,
        max: usize,
    ) -> Result<Vec<MessageRecord>> {
        let prefix = generation_prefix(mailbox, folder, uidvalidity)?;
        let start = chunk_key(&prefix, chunk_of(from));
        let mut out = Vec::new();
        for item in self.messages.range(start.as_slice()..) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            out.extend(
                decode_chunk(&key, &value)?
                    .into_iter()
                    .filter(|r| r.uid >= from),
            );
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Returns the records of one folder generation with UIDs `lo..=hi`, in ascending UID
    /// order.
    pub fn messages_between(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        lo: u32,
        hi: u32,
    ) -> Result<Vec<MessageRecord>> {
        let prefix = generation_prefix(mailbox, folder, uidvalidity)?;
        let start = chunk_key(&prefix, chunk_of(lo));
        let end = chunk_key(&prefix, chunk_of(hi));
        let mut out = Vec::new();
        for item in self.messages.range(start.as_slice()..=end.as_slice()) {
            let (key, value) = item?;
            out.extend(
                decode_chunk(&key, &value)?
                    .into_iter()
                    .filter(|r| r.uid >= lo && r.uid <= hi),
            );
        }
        Ok(out)
    }

    /// Returns the records of these UIDs (those the spool has) of one folder generation,
    /// in ascending UID order, reading each chunk once.
    pub fn messages_of(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        uids: &[u32],
    ) -> Result<Vec<MessageRecord>> {
        let prefix = generation_prefix(mailbox, folder, uidvalidity)?;
        let mut wanted: Vec<u32> = uids.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut out = Vec::new();
        let mut i = 0;
        while i < wanted.len() {
            let chunk = chunk_of(wanted[i]);
            let key = chunk_key(&prefix, chunk);
            let recs = match self.messages.get(&key)? {
                Some(value) => decode_chunk(&key, &value)?,
                None => Vec::new(),
            };
            let mut recs = recs.into_iter().peekable();
            while i < wanted.len() && chunk_of(wanted[i]) == chunk {
                while recs.next_if(|r| r.uid < wanted[i]).is_some() {}
                if let Some(r) = recs.next_if(|r| r.uid == wanted[i]) {
                    out.push(r);
                }
                i += 1;
            }
        }
        Ok(out)
    }

    /// Calls `f` on every record of the mailbox (all folders and generations; folder
    /// name and UIDVALIDITY with it), a chunk at a time, until `f` says stop (`false`).
    fn for_each_record(
        &self,
        mailbox: &str,
        mut f: impl FnMut(&[u8], u32, MessageRecord) -> Result<bool>,
    ) -> Result<()> {
        let prefix = mailbox_prefix(mailbox)?;
        for item in self.messages.scan_prefix(&prefix) {
            let (key, value) = item?;
            let Some((_, folder, uv, _)) = super::split_message_key(&key) else {
                return Err(SpoolError::Corrupt {
                    what: describe_chunk_key(&key),
                    detail: "malformed message chunk key".into(),
                });
            };
            for rec in decode_chunk(&key, &value)? {
                if !f(folder, uv, rec)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// What the mailbox's messages own in destination folder `dest` (UIDVALIDITY
    /// `dest_uv`) at or above UID `from`, over all its source folders and generations:
    /// two source folders may map to one destination folder.
    pub fn owned_at_dest(
        &self,
        mailbox: &str,
        dest: &str,
        dest_uv: u32,
        from: u32,
    ) -> Result<OwnedAtDest> {
        let mut owned = OwnedAtDest::default();
        self.for_each_record(mailbox, |folder, uv, rec| {
            match &rec.state {
                MessageState::Appended {
                    dest_folder,
                    dest_uidvalidity,
                    dest_uid: 0,
                    ..
                } if dest_folder == dest && *dest_uidvalidity == dest_uv => {
                    owned
                        .without_uid
                        .push((String::from_utf8_lossy(folder).into_owned(), uv, rec));
                }
                MessageState::Appended {
                    dest_folder,
                    dest_uidvalidity,
                    dest_uid,
                    ..
                }
                | MessageState::Expunging {
                    dest_folder,
                    dest_uidvalidity,
                    dest_uid,
                } if dest_folder == dest && *dest_uidvalidity == dest_uv && *dest_uid >= from => {
                    owned.uids.insert(*dest_uid);
                }
                _ => {}
            }
            Ok(true)
        })?;
        Ok(owned)
    }

    /// Removes every record of one folder generation.
    ///
    /// Called when the source reports a new UIDVALIDITY and has read the new generation:
    /// what is left of the old one (the messages that were not found again) means nothing
    /// any more. Bodies are left alone; they may be shared.
    ///
    /// The removal goes in batches of a few thousand keys so that memory stays flat
    /// however large the folder. A crash in the middle leaves part of the generation
    /// behind; that is harmless, because [`Spool::generations`] keeps listing it until it
    /// is gone and calling this again finishes the job.
    pub fn remove_generation(&self, mailbox: &str, folder: &str, uidvalidity: u32) -> Result<()> {
        let prefix = generation_prefix(mailbox, folder, uidvalidity)?;
        let mut batch = sled::Batch::default();
        let mut pending = 0;
        for key in self.messages.scan_prefix(&prefix).keys() {
            batch.remove(key?);
            pending += 1;
            if pending == REMOVE_CHUNK {
                self.messages.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        if pending > 0 {
            self.messages.apply_batch(batch)?;
        }
        Ok(())
    }

    /// Returns, in ascending order, the UIDVALIDITY of every generation of this folder that
    /// still has at least one record.
    ///
    /// A folder normally has one generation; more than one means the source changed
    /// UIDVALIDITY and the old one has not been cleaned up (or is kept on purpose until
    /// the new one is complete).
    ///
    /// Instead of walking every record, this reads the first key of a generation and then
    /// jumps straight past it (to `uidvalidity + 1`), so the cost is one seek per
    /// generation however many messages each holds.
    pub fn generations(&self, mailbox: &str, folder: &str) -> Result<Vec<u32>> {
        let prefix = folder_prefix(mailbox, folder)?;
        let mut out = Vec::new();
        let mut start = prefix.clone();
        loop {
            let Some(item) = self.messages.range(start.as_slice()..).next() else {
                break;
            };
            let (key, _) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let uidvalidity = match key.get(prefix.len()..prefix.len() + 4) {
                Some(bytes) if key.len() == prefix.len() + 8 => super::be_u32(bytes),
                _ => {
                    return Err(SpoolError::Corrupt {
                        what: describe_chunk_key(&key),
                        detail: "malformed message chunk key".into(),
                    })
                }
            };
            out.push(uidvalidity);
            let Some(next) = uidvalidity.checked_add(1) else {
                break;
            };
            start.truncate(prefix.len());
            start.extend_from_slice(&next.to_be_bytes());
        }
        Ok(out)
    }

    /// Counts the messages of a mailbox (all folders, all generations) by state.
    ///
    /// The counts are computed from the records rather than kept as counters next to
    /// them: a counter would have to be updated in the same transaction as every record
    /// change to stay right after a crash, which would serialise every writer of the
    /// mailbox on one key. A scan of a mailbox's records is fast enough for a status page
    /// (it touches small records only, never bodies).
    pub fn counts(&self, mailbox: &str) -> Result<MessageCounts> {
        let mut counts = MessageCounts::default();
        self.for_each_record(mailbox, |_, _, rec| {
            match rec.state {
                MessageState::Spooled => counts.spooled += 1,
                MessageState::Appending { .. } => counts.appending += 1,
                MessageState::Appended { .. } => {
                    counts.appended += 1;
                    counts.bytes_appended += rec.size;
                }
                // cutover's own notice to the user is no message of theirs.
                ref s if super::is_own_notice(s) => {}
                MessageState::Skipped { .. } => counts.skipped += 1,
                MessageState::Failed { .. } => counts.failed += 1,
                MessageState::Expunging { .. } => counts.expunging += 1,
                MessageState::Expunged => counts.expunged += 1,
            }
            Ok(true)
        })?;
        Ok(counts)
    }

    /// True if the upstream has anything to do for this mailbox now (`now`: Unix
    /// seconds): a folder not yet mapped to the destination, or a message to append
    /// (claimable), confirm (`Appending`), delete, or whose flags changed since they were
    /// written. Stops at the first one, so a mailbox with work answers fast; one without
    /// costs a scan of its records, which is what lets a pass with no change skip the
    /// destination altogether.
    pub fn needs_push(&self, mailbox: &str, now: i64) -> Result<bool> {
        if self
            .folders(mailbox)?
            .iter()
            .any(|f| f.dest_name.is_none() && !f.gone)
        {
            return Ok(true);
        }
        let mut pending = false;
        self.for_each_record(mailbox, |_, _, rec| {
            pending = match &rec.state {
                MessageState::Appending { .. } | MessageState::Expunging { .. } => true,
                // Without a destination UID the flags cannot be written (see upstream).
                MessageState::Appended {
                    flags, dest_uid, ..
                } => *dest_uid != 0 && !super::same_flag_set(flags, &rec.flags),
                other => other.claimable(now),
            };
            Ok(!pending)
        })?;
        Ok(pending)
    }

    // ===== For the spool's own tests =====

    /// Writes records as they are, replacing any with the same UID: only the spool's unit
    /// tests set up states this way.
    #[cfg(test)]
    pub(super) fn put_messages(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        recs: &[MessageRecord],
    ) -> Result<()> {
        let prefix = generation_prefix(mailbox, folder, uidvalidity)?;
        self.body_log.sync(&self.bodies)?;
        self.transact(|tx| {
            let mut chunks = Chunks::new(tx, &prefix);
            for rec in recs {
                insert_sorted(chunks.load(chunk_of(rec.uid))?, rec.clone(), true);
                chunks.touch(chunk_of(rec.uid));
            }
            chunks.store()
        })
    }

    /// [`Spool::put_messages`] of one record.
    #[cfg(test)]
    pub(super) fn put_message(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
        rec: &MessageRecord,
    ) -> Result<()> {
        self.put_messages(mailbox, folder, uidvalidity, std::slice::from_ref(rec))
    }
}

/// The chunks of one generation a transaction has read, changed or not, to be written
/// back at its end.
struct Chunks<'t> {
    tx: &'t TransactionalTree,
    prefix: &'t [u8],
    loaded: BTreeMap<u32, (Vec<MessageRecord>, bool)>,
}

impl<'t> Chunks<'t> {
    fn new(tx: &'t TransactionalTree, prefix: &'t [u8]) -> Chunks<'t> {
        Chunks {
            tx,
            prefix,
            loaded: BTreeMap::new(),
        }
    }

    /// The records of chunk `chunk` (empty if it has none), read once per transaction.
    fn load(&mut self, chunk: u32) -> TxResult<&mut Vec<MessageRecord>> {
        if !self.loaded.contains_key(&chunk) {
            let key = chunk_key(self.prefix, chunk);
            let recs = match self.tx.get(&key)? {
                Some(value) => {
                    decode_chunk(&key, &value).map_err(ConflictableTransactionError::Abort)?
                }
                None => Vec::new(),
            };
            self.loaded.insert(chunk, (recs, false));
        }
        Ok(&mut self.loaded.entry(chunk).or_default().0)
    }

    /// Chunk `chunk` was changed and is to be written back.
    fn touch(&mut self, chunk: u32) {
        if let Some((_, dirty)) = self.loaded.get_mut(&chunk) {
            *dirty = true;
        }
    }

    /// Writes back the chunks changed; a chunk left empty is removed.
    fn store(self) -> TxResult<()> {
        for (chunk, (recs, dirty)) in &self.loaded {
            if !dirty {
                continue;
            }
            let key = chunk_key(self.prefix, *chunk);
            if recs.is_empty() {
                self.tx.remove(key)?;
            } else {
                let value = encode_chunk(recs).map_err(ConflictableTransactionError::Abort)?;
                self.tx.insert(key, value)?;
            }
        }
        Ok(())
    }
}

fn invalid(detail: String) -> SpoolError {
    SpoolError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        detail,
    ))
}

#[cfg(test)]
mod tests {
    use super::super::records::MAX_ATTEMPTS;
    use super::*;

    fn open_temp() -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(&dir.path().join("spool")).expect("open spool");
        (dir, spool)
    }

    fn rec(uid: u32, flags: &[&str]) -> MessageRecord {
        MessageRecord {
            uid,
            hash: [uid as u8; 32],
            size: 100,
            internal_date: "17-Jul-1996 02:44:25 -0700".into(),
            internal_ts: 837_596_665,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            state: MessageState::Spooled,
        }
    }

    fn claim_at(ms: i64) -> Claim {
        Claim {
            dest_folder: "INBOX".into(),
            dest_uidvalidity: 9,
            dest_uidnext: 1,
            marked_ms: ms,
        }
    }

    #[test]
    fn record_new_never_overwrites() {
        let (_d, spool) = open_temp();
        assert_eq!(
            spool
                .record_new("m", "F", 1, &[rec(1, &[]), rec(2, &[])])
                .unwrap(),
            2
        );
        spool.claim("m", "F", 1, &[1], &claim_at(1), 0).unwrap();
        let outcome = Settle::Appended {
            dest_uidvalidity: 9,
            dest_uid: 40,
            flags: vec![],
        };
        spool
            .settle("m", "F", 1, &claim_at(1), &[(1, outcome)], 0)
            .unwrap();
        // The same UID read again (a second FETCH response): still Appended.
        assert_eq!(
            spool
                .record_new("m", "F", 1, &[rec(1, &["\\Seen"]), rec(3, &[])])
                .unwrap(),
            1
        );
        let r = spool.get_message("m", "F", 1, 1).unwrap().unwrap();
        assert!(matches!(
            r.state,
            MessageState::Appended { dest_uid: 40, .. }
        ));
        assert!(r.flags.is_empty());
        // Only new states are accepted.
        let mut bad = rec(9, &[]);
        bad.state = MessageState::Expunged;
        assert!(spool.record_new("m", "F", 1, &[bad]).is_err());
    }

    #[test]
    fn flags_and_states_do_not_undo_each_other() {
        let (_d, spool) = open_temp();
        spool.record_new("m", "F", 1, &[rec(1, &[])]).unwrap();
        let claimed = spool.claim("m", "F", 1, &[1], &claim_at(7), 0).unwrap();
        assert_eq!(claimed.len(), 1);
        // Claimed twice: the second claim finds nothing to take.
        assert!(spool
            .claim("m", "F", 1, &[1], &claim_at(8), 0)
            .unwrap()
            .is_empty());
        // The source records a flag change while the APPEND is in flight.
        assert_eq!(
            spool
                .set_source_flags("m", "F", 1, &[(1, vec!["\\Seen".into()])])
                .unwrap(),
            1
        );
        let outcome = Settle::Appended {
            dest_uidvalidity: 9,
            dest_uid: 5,
            flags: vec![],
        };
        // A settle under another claim does nothing; under its own it keeps the flags.
        assert_eq!(
            spool
                .settle("m", "F", 1, &claim_at(8), &[(1, outcome.clone())], 0)
                .unwrap(),
            0
        );
        assert_eq!(
            spool
                .settle("m", "F", 1, &claim_at(7), &[(1, outcome)], 0)
                .unwrap(),
            1
        );
        let r = spool.get_message("m", "F", 1, 1).unwrap().unwrap();
        assert_eq!(r.flags, vec!["\\Seen".to_string()]);
        assert!(
            matches!(r.state, MessageState::Appended { dest_uid: 5, ref flags, .. } if flags.is_empty())
        );
        // So the upstream still sees the flags to write.
        assert!(spool.needs_push("m", 0).unwrap());
        assert!(spool
            .flags_written("m", "F", 1, 1, 5, &["\\Seen".into()])
            .unwrap());
        assert!(!spool.needs_push("m", 0).unwrap());
    }

    #[test]
    fn failures_wait_and_are_retried_on_demand() {
        let (_d, spool) = open_temp();
        spool.record_new("m", "F", 1, &[rec(1, &[])]).unwrap();
        let refused = Settle::Refused {
            reason: "NO [OVERQUOTA]".into(),
            code: Some("OVERQUOTA".into()),
            permanent: false,
        };
        for attempt in 1..=MAX_ATTEMPTS {
            let now = i64::from(attempt) * 10_000;
            assert!(spool.needs_push("m", now).unwrap());
            assert_eq!(
                spool
                    .claim("m", "F", 1, &[1], &claim_at(now), now)
                    .unwrap()
                    .len(),
                1
            );
            spool
                .settle("m", "F", 1, &claim_at(now), &[(1, refused.clone())], now)
                .unwrap();
            // Not due again at once.
            assert!(spool
                .claim("m", "F", 1, &[1], &claim_at(now + 1), now + 1)
                .unwrap()
                .is_empty());
        }
        // Given up: nothing to push until the admin retries.
        assert!(!spool.needs_push("m", i64::MAX).unwrap());
        assert_eq!(
            spool.retry_failed("m").unwrap(),
            0,
            "no folder state, no folder scanned"
        );
        spool
            .put_folder(
                "m",
                &super::super::FolderState {
                    name: "F".into(),
                    dest_name: Some("INBOX".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(spool.retry_failed("m").unwrap(), 1);
        assert!(spool.needs_push("m", 0).unwrap());
    }

    #[test]
    fn carry_takes_the_old_state_as_it_is_at_that_moment() {
        let (_d, spool) = open_temp();
        spool
            .record_new("m", "F", 1, &[rec(1, &[]), rec(2, &[])])
            .unwrap();
        // The upstream appends UID 1 of the old generation after the source looked at it.
        spool.claim("m", "F", 1, &[1], &claim_at(3), 0).unwrap();
        let outcome = Settle::Appended {
            dest_uidvalidity: 9,
            dest_uid: 77,
            flags: vec![],
        };
        spool
            .settle("m", "F", 1, &claim_at(3), &[(1, outcome)], 0)
            .unwrap();
        // The new generation (UIDVALIDITY 2) has the same messages as UIDs 10 and 11.
        assert!(spool.carry("m", "F", 1, 1, 2, &rec(10, &[])).unwrap());
        assert!(spool.carry("m", "F", 1, 2, 2, &rec(11, &[])).unwrap());
        assert!(
            !spool.carry("m", "F", 1, 2, 2, &rec(11, &[])).unwrap(),
            "once"
        );
        assert!(spool.messages("m", "F", 1).unwrap().is_empty());
        let new = spool.messages("m", "F", 2).unwrap();
        assert!(matches!(
            new[0].state,
            MessageState::Appended { dest_uid: 77, .. }
        ));
        assert_eq!(new[1].state, MessageState::Spooled);
        // A settle that comes for the old generation now finds nothing to change.
        let late = Settle::Appended {
            dest_uidvalidity: 9,
            dest_uid: 78,
            flags: vec![],
        };
        assert_eq!(
            spool
                .settle("m", "F", 1, &claim_at(3), &[(2, late)], 0)
                .unwrap(),
            0
        );
    }

    #[test]
    fn owned_spans_every_folder_of_the_mailbox() {
        let (_d, spool) = open_temp();
        for (folder, uid, dest_uid) in [("A", 1, 10), ("B", 1, 11), ("B", 2, 0), ("C", 1, 3)] {
            spool.record_new("m", folder, 1, &[rec(uid, &[])]).unwrap();
            spool
                .claim("m", folder, 1, &[uid], &claim_at(1), 0)
                .unwrap();
            let outcome = Settle::Appended {
                dest_uidvalidity: 9,
                dest_uid,
                flags: vec![],
            };
            spool
                .settle("m", folder, 1, &claim_at(1), &[(uid, outcome)], 0)
                .unwrap();
        }
        let owned = spool.owned_at_dest("m", "INBOX", 9, 5).unwrap();
        assert_eq!(owned.uids, HashSet::from([10, 11]));
        assert_eq!(owned.without_uid.len(), 1);
        assert_eq!(owned.without_uid[0].0, "B");
        assert!(spool
            .owned_at_dest("m", "INBOX", 8, 0)
            .unwrap()
            .uids
            .is_empty());
    }

    #[test]
    fn expunges_and_deletions() {
        let (_d, spool) = open_temp();
        spool
            .record_new("m", "F", 1, &[rec(1, &[]), rec(2, &[])])
            .unwrap();
        spool.claim("m", "F", 1, &[1], &claim_at(1), 0).unwrap();
        let outcome = Settle::Appended {
            dest_uidvalidity: 9,
            dest_uid: 4,
            flags: vec![],
        };
        spool
            .settle("m", "F", 1, &claim_at(1), &[(1, outcome)], 0)
            .unwrap();
        assert_eq!(
            spool.expunged_at_source("m", "F", 1, &[1, 2, 3]).unwrap(),
            2
        );
        assert_eq!(spool.deleted_at_dest("m", "F", 1, &[(1, 5)]).unwrap(), 0);
        assert_eq!(spool.deleted_at_dest("m", "F", 1, &[(1, 4)]).unwrap(), 1);
        let c = spool.counts("m").unwrap();
        assert_eq!(c.expunged, 2);
    }
}
