//! The index of the bodies: hash -> where the body is ([`Location`](super::body_log),
//! encoded), packed into one sled value per bucket of hashes.
//!
//! # Why buckets
//!
//! One sled value per body made the index the largest part of the spool once the
//! message records were packed (`chunks.rs`): sled 0.34's memory and disk follow the
//! number of values (a leaf page holds at most 16, each with its headers), and a
//! mailbox of a million messages has a million bodies. Hashes are uniform, so the first
//! two bytes of a hash pick one of 65,536 buckets: with a million bodies about 15 per
//! bucket (700 bytes), and never more than 65,536 values, whatever the number of bodies.
//!
//! A bucket is rewritten whole when a body goes in. Writers are few (the syncs of the
//! body log, which run one at a time, and compaction through them) and serialised by a
//! lock here, so a read-modify-write of a bucket never loses an entry.
//!
//! # Layout
//!
//! Key: the first [`BUCKET_BYTES`] bytes of the hash. Value: a tag byte ([`TAG`]), then
//! the bucket's `(hash, encoded location)` pairs in ascending hash order, bincode-encoded.
//! Spools of older versions had one value per hash in the `bodies` tree; they are moved
//! into buckets when the spool is opened ([`BodyIndex::open`]).

use std::sync::{Arc, Mutex};

use super::{decode, encode, hex, BodyHash, Result, SpoolError};

/// Bytes of the hash that name its bucket.
const BUCKET_BYTES: usize = 2;

/// The layout of a bucket value (see the module docs).
const TAG: u8 = 1;

/// Old index entries moved per batch when an older spool is opened.
const MOVE_GROUP: usize = 4096;

/// The tree that held one value per body in older versions.
const LEGACY_TREE: &str = "bodies";

/// Entries of one bucket: hash and encoded location, in hash order.
type Bucket = Vec<(BodyHash, Vec<u8>)>;

/// The bodies' index. Cheap to clone; every clone shares the tree and the writers' lock.
#[derive(Clone)]
pub(super) struct BodyIndex {
    tree: sled::Tree,
    write: Arc<Mutex<()>>,
}

impl BodyIndex {
    /// The index of `db`, with what an older version left in its `bodies` tree moved in.
    /// Returns it and whether the spool held any body before.
    pub(super) fn open(db: &sled::Db) -> Result<(BodyIndex, bool)> {
        let index = BodyIndex {
            tree: db.open_tree("body_buckets")?,
            write: Arc::new(Mutex::new(())),
        };
        let legacy = db.open_tree(LEGACY_TREE)?;
        let had_bodies = !legacy.is_empty() || !index.tree.is_empty();
        let mut moved = 0u64;
        loop {
            let mut group = Vec::new();
            for item in legacy.iter().take(MOVE_GROUP) {
                let (key, value) = item?;
                let hash: BodyHash = key.as_ref().try_into().map_err(|_| SpoolError::Corrupt {
                    what: format!("body index key {}", String::from_utf8_lossy(&key)),
                    detail: "not a 32-byte hash".into(),
                })?;
                group.push((hash, value.to_vec()));
            }
            if group.is_empty() {
                break;
            }
            // In the buckets first, then out of the old tree: a crash in between leaves
            // an entry in both, and the next open moves it again, to the same place.
            index.insert_all(&group)?;
            let mut batch = sled::Batch::default();
            for (hash, _) in &group {
                batch.remove(&hash[..]);
            }
            legacy.apply_batch(batch)?;
            moved += group.len() as u64;
        }
        if moved > 0 {
            db.flush()?;
            tracing::info!(bodies = moved, "spool: body index packed into buckets");
        }
        Ok((index, had_bodies))
    }

    /// A fresh index on its own tree (the body log's tests).
    #[cfg(test)]
    pub(super) fn on_tree(tree: sled::Tree) -> BodyIndex {
        BodyIndex {
            tree,
            write: Arc::new(Mutex::new(())),
        }
    }

    /// The encoded location of `hash`, if indexed.
    pub(super) fn get(&self, hash: &BodyHash) -> Result<Option<Vec<u8>>> {
        let bucket = self.bucket(hash)?;
        Ok(bucket
            .binary_search_by(|(h, _)| h.cmp(hash))
            .ok()
            .map(|i| bucket[i].1.clone()))
    }

    /// Indexes (or re-points) one body (tests set up damaged entries this way).
    #[cfg(test)]
    pub(super) fn insert(&self, hash: BodyHash, value: impl AsRef<[u8]>) -> Result<()> {
        self.insert_all(&[(hash, value.as_ref().to_vec())])
    }

    /// Indexes (or re-points) these bodies, in one atomic sled batch.
    pub(super) fn insert_all(&self, entries: &[(BodyHash, Vec<u8>)]) -> Result<()> {
        let _write = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut buckets: std::collections::BTreeMap<Vec<u8>, Bucket> = Default::default();
        for (hash, value) in entries {
            let key = hash[..BUCKET_BYTES].to_vec();
            if !buckets.contains_key(&key) {
                let bucket = self.bucket(hash)?;
                buckets.insert(key.clone(), bucket);
            }
            let bucket = buckets.entry(key).or_default();
            match bucket.binary_search_by(|(h, _)| h.cmp(hash)) {
                Ok(i) => bucket[i].1 = value.clone(),
                Err(i) => bucket.insert(i, (*hash, value.clone())),
            }
        }
        let mut batch = sled::Batch::default();
        for (key, bucket) in &buckets {
            let mut value = vec![TAG];
            value.extend_from_slice(&encode(bucket)?);
            batch.insert(key.as_slice(), value);
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Whether `hash` is indexed.
    #[cfg(test)]
    pub(super) fn contains_key(&self, hash: &BodyHash) -> Result<bool> {
        Ok(self.get(hash)?.is_some())
    }

    /// Bodies indexed (a scan of every bucket: for tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.tree
            .iter()
            .filter_map(|item| item.ok())
            .map(|(key, value)| decode_bucket(&key, &value).map_or(0, |b| b.len()))
            .sum()
    }

    /// The bucket `hash` belongs to (empty if none).
    fn bucket(&self, hash: &BodyHash) -> Result<Bucket> {
        let key = &hash[..BUCKET_BYTES];
        match self.tree.get(key)? {
            Some(value) => decode_bucket(key, &value).map_err(|e| match e {
                // Name the body asked for: that is what the admin sees failing.
                SpoolError::Corrupt { detail, .. } => SpoolError::Corrupt {
                    what: format!("body {}", hex(hash)),
                    detail: format!("its index bucket is damaged: {detail}"),
                },
                e => e,
            }),
            None => Ok(Vec::new()),
        }
    }
}

/// Decodes a bucket stored under `key`, and checks that its hashes belong there, in order.
fn decode_bucket(key: &[u8], value: &[u8]) -> Result<Bucket> {
    let what = || format!("body index bucket {key:02x?}");
    let bucket: Bucket = match value.split_first() {
        Some((&TAG, rest)) => decode(rest, what)?,
        _ => {
            return Err(SpoolError::Corrupt {
                what: what(),
                detail: "unknown layout".into(),
            })
        }
    };
    let ordered = bucket.windows(2).all(|w| w[0].0 < w[1].0);
    if !ordered || bucket.iter().any(|(h, _)| &h[..BUCKET_BYTES] != key) {
        return Err(SpoolError::Corrupt {
            what: what(),
            detail: "entries out of place".into(),
        });
    }
    Ok(bucket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_many_bodies_and_old_indexes_move_in() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let hash = |n: u32| -> BodyHash {
            let mut h = [0u8; 32];
            h[0] = (n % 3) as u8; // a few buckets, many entries each
            h[28..].copy_from_slice(&n.to_be_bytes());
            h
        };
        // An index as an older version wrote it: one value per hash.
        let legacy = db.open_tree(LEGACY_TREE).unwrap();
        for n in 0..5000u32 {
            legacy.insert(hash(n), n.to_be_bytes().to_vec()).unwrap();
        }
        let (index, had) = BodyIndex::open(&db).unwrap();
        assert!(had);
        assert!(legacy.is_empty());
        assert_eq!(index.len(), 5000);
        assert_eq!(index.tree.len(), 3);
        for n in [0u32, 1, 2, 4999] {
            assert_eq!(index.get(&hash(n)).unwrap(), Some(n.to_be_bytes().to_vec()));
        }
        assert_eq!(index.get(&hash(5000)).unwrap(), None);
        // Re-pointed, and new ones.
        index
            .insert_all(&[(hash(7), vec![9]), (hash(6000), vec![1])])
            .unwrap();
        assert_eq!(index.get(&hash(7)).unwrap(), Some(vec![9]));
        assert!(index.contains_key(&hash(6000)).unwrap());
        assert_eq!(index.len(), 5001);
        // A damaged bucket names the body asked for.
        index.tree.insert(&hash(1)[..2], &[7u8, 1][..]).unwrap();
        let err = index.get(&hash(1)).unwrap_err().to_string();
        assert!(err.contains(&hex(&hash(1))), "{err}");
    }
}
