//! Spools of older versions: one message record per sled value, in the `messages` tree.
//!
//! When such a spool is opened, its records are packed into the chunks of `chunks.rs`
//! and removed from the old tree, a few thousand at a time, each group in one transaction
//! over both trees: a crash in the middle leaves every record in exactly one of them, and
//! the next open goes on where this one stopped. The records decode as each version wrote
//! them (see [`MessageRecord`](super::records::MessageRecord) and `records.rs`).

use std::collections::BTreeMap;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::chunks::{chunk_key, chunk_of, decode_chunk, encode_chunk, insert_sorted};
use super::records::{self, MessageRecord};
use super::{decode, describe_message_key, split_message_key, Result, SpoolError};

/// The tree that held one record per message.
pub(super) const TREE: &str = "messages";

/// Old records moved per transaction.
const PACK_GROUP: usize = 4096;

/// Moves every record of the old `messages` tree into `chunks`. A record whose UID
/// already has one in `chunks` is dropped: that one is newer. Returns how many moved.
pub(super) fn pack(db: &sled::Db, legacy: &sled::Tree, chunks: &sled::Tree) -> Result<u64> {
    let mut moved = 0u64;
    loop {
        let mut group: Vec<(sled::IVec, Vec<u8>, MessageRecord)> = Vec::new();
        for item in legacy.iter().take(PACK_GROUP) {
            let (key, value) = item?;
            let rec = decode_message(&key, &value)?;
            // The generation's prefix: the key without its UID.
            let prefix = key[..key.len() - 4].to_vec();
            group.push((key, prefix, rec));
        }
        if group.is_empty() {
            break;
        }
        (legacy, chunks)
            .transaction(|(old, new)| {
                let mut packed: BTreeMap<Vec<u8>, Vec<MessageRecord>> = BTreeMap::new();
                for (key, prefix, rec) in &group {
                    let ckey = chunk_key(prefix, chunk_of(rec.uid));
                    if !packed.contains_key(&ckey) {
                        let recs = match new.get(&ckey)? {
                            Some(v) => decode_chunk(&ckey, &v)
                                .map_err(ConflictableTransactionError::Abort)?,
                            None => Vec::new(),
                        };
                        packed.insert(ckey.clone(), recs);
                    }
                    if let Some(recs) = packed.get_mut(&ckey) {
                        insert_sorted(recs, rec.clone(), false);
                    }
                    old.remove(key.clone())?;
                }
                for (ckey, recs) in &packed {
                    let value = encode_chunk(recs).map_err(ConflictableTransactionError::Abort)?;
                    new.insert(ckey.as_slice(), value)?;
                }
                Ok(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => SpoolError::Sled(e),
            })?;
        moved += group.len() as u64;
    }
    if moved > 0 {
        db.flush()?;
        tracing::info!(records = moved, "spool: message records packed into chunks");
    }
    Ok(moved)
}

/// Decodes an old message record, and checks that it is the one its key says it is.
///
/// A record of the layout before claims recorded their time ([`records::MessageRecordV1`])
/// ends too early for the current one and is decoded by the old layout (see
/// [`MessageState`](super::records::MessageState)).
pub(super) fn decode_message(key: &[u8], value: &[u8]) -> Result<MessageRecord> {
    let rec: MessageRecord = match decode(value, || describe_message_key(key)) {
        Ok(rec) => rec,
        Err(e) => match decode::<records::MessageRecordV1>(value, || describe_message_key(key)) {
            Ok(v1) => v1.into(),
            Err(_) => return Err(e),
        },
    };
    match split_message_key(key) {
        Some((_, _, _, uid)) if uid == rec.uid => Ok(rec),
        Some(_) => Err(SpoolError::Corrupt {
            what: describe_message_key(key),
            detail: format!("record holds uid {}", rec.uid),
        }),
        None => Err(SpoolError::Corrupt {
            what: describe_message_key(key),
            detail: "malformed message key".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::records::MessageState;
    use super::super::{encode, message_key, Spool};
    use super::*;

    fn rec(uid: u32, state: MessageState) -> MessageRecord {
        MessageRecord {
            uid,
            hash: [uid as u8; 32],
            size: 100 + u64::from(uid),
            internal_date: "17-Jul-1996 02:44:25 -0700".into(),
            internal_ts: 837_596_665,
            flags: vec!["\\Seen".into()],
            state,
        }
    }

    /// sled releases its file lock from its flusher thread, a moment after the last handle
    /// is dropped; a reopen in the same process waits for it (bounded).
    fn reopen(path: &std::path::Path) -> Spool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Spool::open(path) {
                Ok(s) => return s,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }

    #[test]
    fn an_old_spool_opens_with_its_records_packed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let appended = MessageState::Appended {
            dest_folder: "Inbox".into(),
            dest_uidvalidity: 9,
            dest_uid: 5,
            flags: vec![],
        };
        let mut want_a = Vec::new();
        {
            let spool = Spool::open(&path).unwrap();
            let old = spool.db.open_tree(TREE).unwrap();
            // More records than one transaction packs, over many chunks, as an older
            // version wrote them: the current layout...
            for uid in 1..=(PACK_GROUP as u32 + 100) {
                let r = rec(uid, MessageState::Spooled);
                old.insert(message_key("m", "A", 1, uid).unwrap(), encode(&r).unwrap())
                    .unwrap();
                want_a.push(r);
            }
            // ... and the first one, whose claims had no time.
            #[derive(serde::Serialize)]
            #[allow(dead_code)]
            enum OldState {
                Spooled,
                Appending {
                    dest_folder: String,
                    dest_uidvalidity: u32,
                    dest_uidnext: u32,
                },
            }
            #[derive(serde::Serialize)]
            struct OldRecord {
                uid: u32,
                hash: [u8; 32],
                size: u64,
                internal_date: String,
                internal_ts: i64,
                flags: Vec<String>,
                state: OldState,
            }
            let r = rec(7, MessageState::Spooled);
            let v1 = OldRecord {
                uid: 7,
                hash: r.hash,
                size: r.size,
                internal_date: r.internal_date,
                internal_ts: r.internal_ts,
                flags: r.flags,
                state: OldState::Appending {
                    dest_folder: "Inbox".into(),
                    dest_uidvalidity: 9,
                    dest_uidnext: 30,
                },
            };
            old.insert(message_key("m", "B", 2, 7).unwrap(), encode(&v1).unwrap())
                .unwrap();
            // A record that is in the new layout already (written after a pack that a
            // crash interrupted) is newer than the old one for its UID.
            old.insert(
                message_key("m", "C", 3, 1).unwrap(),
                encode(&rec(1, MessageState::Spooled)).unwrap(),
            )
            .unwrap();
            spool
                .put_message("m", "C", 3, &rec(1, appended.clone()))
                .unwrap();
            spool.db.flush().unwrap();
        }
        let spool = reopen(&path);
        assert!(spool.db.open_tree(TREE).unwrap().is_empty());
        assert_eq!(spool.messages("m", "A", 1).unwrap(), want_a);
        let b = spool.get_message("m", "B", 2, 7).unwrap().unwrap();
        assert_eq!(
            b.state,
            MessageState::Appending {
                dest_folder: "Inbox".into(),
                dest_uidvalidity: 9,
                dest_uidnext: 30,
                marked_ms: 0,
                attempts: 0,
            }
        );
        assert_eq!(spool.messages("m", "C", 3).unwrap(), [rec(1, appended)]);
        assert_eq!(spool.generations("m", "A").unwrap(), [1]);
        // Packed, the records cost a value per 64 UIDs.
        assert_eq!(spool.messages.len(), (PACK_GROUP + 100) / 64 + 1 + 1 + 1);
    }
}
