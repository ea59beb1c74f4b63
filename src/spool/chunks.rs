//! How message records are packed into sled values: one value per chunk of
//! [`CHUNK_UIDS`] consecutive UIDs of a folder generation.
//!
//! # Why packed
//!
//! What sled 0.34 costs follows from how many values it holds and how many writes it
//! takes, much more than from their bytes. A leaf page holds at most 16 entries, each
//! entry carries its own key and length headers in every page image and log record, and
//! the page table, cache and log grow with the number of pages. With one value per
//! message, 2,000,000 records of under 100 bytes took 413 bytes each on disk and 2.47 GB
//! of memory to write. Packed 64 to a value, the same records are 1/64 of the values and
//! pages, and a whole chunk is one zstd frame (a chunk's dates, flags and destination
//! names repeat; its hashes do not).
//!
//! A chunk is small enough that rewriting it on every change costs little (a claim or
//! settle of a 64-message batch touches one or two chunks), and far below the size at
//! which sled moves a page out to a blob file of its own (a quarter of a 512 KiB
//! segment, for a page of up to 16 chunks).
//!
//! # Layout
//!
//! Key: `mailbox \0 folder \0 uidvalidity(u32 BE) chunk(u32 BE)`, where `chunk` is
//! `uid / CHUNK_UIDS`: the same shape as the per-message keys of older spools (see
//! `legacy.rs`), so a prefix scan of a generation returns its chunks, and their records,
//! in UID order.
//!
//! Value: a tag byte, then the records of the chunk in ascending UID order, bincode-encoded
//! as a `Vec<MessageRecord>` ([`TAG_PLAIN`]) or that encoding in one zstd frame
//! ([`TAG_ZSTD`]). A future layout of the records gets a new tag; the old tags keep
//! decoding as they do.

use super::records::MessageRecord;
use super::{split_message_key, with_zstd, Result, SpoolError};

/// UIDs per chunk: a power of two, so that a chunk is `uid >> CHUNK_BITS`.
pub(super) const CHUNK_BITS: u32 = 6;
pub(super) const CHUNK_UIDS: u32 = 1 << CHUNK_BITS;

/// The records, bincode-encoded, as they are.
const TAG_PLAIN: u8 = 1;
/// The records, bincode-encoded, in one zstd frame (with its content size and checksum).
const TAG_ZSTD: u8 = 2;

/// Below this many encoded bytes a chunk is stored plain: a frame would not pay for
/// itself.
const COMPRESS_FROM: usize = 256;

/// The largest decoded chunk accepted: 64 records with long reasons and many flags stay
/// far below it, and a corrupt frame cannot make a read allocate more.
const MAX_CHUNK_LEN: usize = 4 * 1024 * 1024;

/// The chunk that holds `uid`.
pub(super) fn chunk_of(uid: u32) -> u32 {
    uid >> CHUNK_BITS
}

/// The key of chunk `chunk` under a generation's prefix.
pub(super) fn chunk_key(prefix: &[u8], chunk: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 4);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&chunk.to_be_bytes());
    key
}

/// Names a chunk key for an error message: `messages m/INBOX uidvalidity 7 uids 256-319`.
pub(super) fn describe_chunk_key(key: &[u8]) -> String {
    match split_message_key(key) {
        Some((mailbox, folder, uidvalidity, chunk)) => {
            let first = chunk.saturating_mul(CHUNK_UIDS);
            format!(
                "messages {}/{} uidvalidity {uidvalidity} uids {first}-{}",
                String::from_utf8_lossy(mailbox),
                String::from_utf8_lossy(folder),
                first.saturating_add(CHUNK_UIDS - 1),
            )
        }
        None => format!(
            "message chunk key {}",
            String::from_utf8_lossy(key).escape_debug()
        ),
    }
}

/// Encodes the records of one chunk (ascending UIDs, all of that chunk).
pub(super) fn encode_chunk(recs: &[MessageRecord]) -> Result<Vec<u8>> {
    let plain = super::encode(&recs)?;
    if plain.len() < COMPRESS_FROM {
        let mut out = Vec::with_capacity(plain.len() + 1);
        out.push(TAG_PLAIN);
        out.extend_from_slice(&plain);
        return Ok(out);
    }
    let frame = with_zstd(|c, _| c.compress(&plain))?;
    let mut out = Vec::with_capacity(frame.len() + 1);
    out.push(TAG_ZSTD);
    out.extend_from_slice(&frame);
    Ok(out)
}

/// Decodes a chunk stored under `key`, and checks that every record belongs there, in
/// ascending UID order.
pub(super) fn decode_chunk(key: &[u8], value: &[u8]) -> Result<Vec<MessageRecord>> {
    let corrupt = |detail: String| SpoolError::Corrupt {
        what: describe_chunk_key(key),
        detail,
    };
    let Some((_, _, _, chunk)) = split_message_key(key) else {
        return Err(corrupt("malformed message chunk key".into()));
    };
    let recs: Vec<MessageRecord> = match value.split_first() {
        Some((&TAG_PLAIN, plain)) => super::decode(plain, || describe_chunk_key(key))?,
        Some((&TAG_ZSTD, frame)) => {
            let len = match zstd::zstd_safe::get_frame_content_size(frame) {
                Ok(Some(len)) if len <= MAX_CHUNK_LEN as u64 => len as usize,
                Ok(Some(len)) => return Err(corrupt(format!("zstd frame claims {len} bytes"))),
                _ => return Err(corrupt("not a zstd frame with its size".into())),
            };
            let plain = with_zstd(|_, d| d.decompress(frame, len))
                .map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
            super::decode(&plain, || describe_chunk_key(key))?
        }
        Some((tag, _)) => {
            return Err(corrupt(format!(
                "unknown chunk layout {tag}: made by a newer cutover?"
            )))
        }
        None => return Err(corrupt("empty value".into())),
    };
    let mut last = None;
    for r in &recs {
        if chunk_of(r.uid) != chunk {
            return Err(corrupt(format!("record holds uid {}", r.uid)));
        }
        if last.is_some_and(|l| l >= r.uid) {
            return Err(corrupt(format!("uid {} out of order", r.uid)));
        }
        last = Some(r.uid);
    }
    Ok(recs)
}

/// Puts `rec` into the records of its chunk, in UID order; `replace` says whether a
/// record already there with its UID gives way. Returns true if `rec` went in.
pub(super) fn insert_sorted(
    recs: &mut Vec<MessageRecord>,
    rec: MessageRecord,
    replace: bool,
) -> bool {
    match recs.binary_search_by_key(&rec.uid, |r| r.uid) {
        Ok(i) if replace => {
            recs[i] = rec;
            true
        }
        Ok(_) => false,
        Err(i) => {
            recs.insert(i, rec);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::records::MessageState;
    use super::super::Spool;
    use super::*;

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

    #[test]
    fn chunks_roundtrip_plain_and_compressed() {
        let key = chunk_key(&super::super::generation_prefix("m", "F", 1).unwrap(), 2);
        let one = [rec(130, &[])];
        let value = encode_chunk(&one).unwrap();
        assert_eq!(value[0], TAG_PLAIN);
        assert_eq!(decode_chunk(&key, &value).unwrap(), one);
        let full: Vec<MessageRecord> = (128..192).map(|u| rec(u, &["\\Seen"])).collect();
        let value = encode_chunk(&full).unwrap();
        assert_eq!(value[0], TAG_ZSTD);
        assert!(value.len() < super::super::encode(&full).unwrap().len());
        assert_eq!(decode_chunk(&key, &value).unwrap(), full);
        // Not this chunk's records.
        assert!(decode_chunk(&chunk_key(&key[..key.len() - 4], 3), &value).is_err());
        assert!(describe_chunk_key(&key).ends_with("m/F uidvalidity 1 uids 128-191"));
    }

    #[test]
    fn a_generation_is_walked_in_bounded_steps() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        // Sparse UIDs over many chunks, one chunk with a single record.
        let uids: Vec<u32> = (1..=1000).map(|i| i * 3).chain([100_000]).collect();
        let recs: Vec<MessageRecord> = uids.iter().map(|u| rec(*u, &[])).collect();
        assert_eq!(spool.record_new("m", "F", 1, &recs).unwrap(), recs.len());
        let mut seen = Vec::new();
        let mut from = 0;
        loop {
            let step = spool.messages_from("m", "F", 1, from, 100).unwrap();
            let Some(last) = step.last() else { break };
            assert!(step.len() < 100 + CHUNK_UIDS as usize);
            from = last.uid + 1;
            seen.extend(step.into_iter().map(|r| r.uid));
        }
        assert_eq!(seen, uids);
        assert_eq!(spool.messages("m", "F", 1).unwrap(), recs);
        assert!(spool
            .messages_from("m", "F", 1, 100_001, 10)
            .unwrap()
            .is_empty());
        // A UID in the middle of a chunk starts there.
        let mid = spool.messages_from("m", "F", 1, 301, 1).unwrap();
        assert_eq!(mid.first().map(|r| r.uid), Some(303));
    }
}
