//! What the spool holds, counted per mailbox and per folder: messages and bytes found at
//! the source, at the destination, still pending, skipped and failed.
//!
//! Counted from the message records (read only; no body is touched). A scan of every
//! record costs a few milliseconds per ten thousand messages, so the server keeps the
//! last count ([`super::Shared::inventory`]) and recounts every few seconds on a
//! blocking thread rather than on every request.

use std::collections::HashMap;

use serde::Serialize;

use crate::spool::{MessageRecord, MessageState, Spool};

/// Counts of one mailbox, one folder or the whole migration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Still in the source folder as far as the spool knows (every state but expunged).
    pub source_messages: u64,
    pub source_bytes: u64,
    pub dest_messages: u64,
    pub dest_bytes: u64,
    /// Waiting to be appended, in flight, or failed and to be retried.
    pub pending_messages: u64,
    pub pending_bytes: u64,
    pub skipped: u64,
    pub failed: u64,
}

impl Counts {
    fn add_record(&mut self, r: &MessageRecord) {
        // cutover's own notice at the source is not the user's mail: neither found nor
        // skipped (as in the spool's counts and the report).
        if crate::spool::is_own_notice(&r.state) {
            return;
        }
        if r.state.is_live() {
            self.source_messages += 1;
            self.source_bytes += r.size;
        }
        match &r.state {
            MessageState::Appended { .. } => {
                self.dest_messages += 1;
                self.dest_bytes += r.size;
            }
            MessageState::Spooled | MessageState::Appending { .. } => {
                self.pending_messages += 1;
                self.pending_bytes += r.size;
            }
            MessageState::Failed { .. } => {
                self.failed += 1;
                self.pending_messages += 1;
                self.pending_bytes += r.size;
            }
            MessageState::Skipped { .. } => self.skipped += 1,
            MessageState::Expunging { .. } | MessageState::Expunged => {}
        }
    }

    pub fn add(&mut self, o: &Counts) {
        self.source_messages += o.source_messages;
        self.source_bytes += o.source_bytes;
        self.dest_messages += o.dest_messages;
        self.dest_bytes += o.dest_bytes;
        self.pending_messages += o.pending_messages;
        self.pending_bytes += o.pending_bytes;
        self.skipped += o.skipped;
        self.failed += o.failed;
    }
}

/// One source folder of a mailbox.
#[derive(Debug, Clone, Serialize)]
pub struct FolderCounts {
    pub name: String,
    /// The destination folder chosen, once the upstream mapped it.
    pub dest_name: Option<String>,
    /// How the name was chosen: `folder_map` (the admin's entry), `INBOX`, `special-use
    /// \sent` (the folder's attribute), `well-known name`, `same path`, `renamed: why`.
    pub rule: String,
    /// The source no longer lists it.
    pub gone: bool,
    #[serde(flatten)]
    pub counts: Counts,
}

/// Every mailbox's counts, and their sum.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inventory {
    pub at_unix: i64,
    pub mailboxes: HashMap<String, Counts>,
    pub total: Counts,
}

/// Counts the folders of `mailbox`.
pub fn folders(
    spool: &Spool,
    mailbox: &str,
    sync: &crate::config::SyncConfig,
) -> Vec<FolderCounts> {
    let Ok(folders) = spool.folders(mailbox) else {
        return Vec::new();
    };
    let rules = rules(&folders, sync);
    folders
        .into_iter()
        .zip(rules)
        .map(|(f, rule)| {
            let mut counts = Counts::default();
            for uv in spool.generations(mailbox, &f.name).unwrap_or_default() {
                for r in spool.messages(mailbox, &f.name, uv).unwrap_or_default() {
                    counts.add_record(&r);
                }
            }
            FolderCounts {
                rule,
                name: f.name,
                dest_name: f.dest_name,
                gone: f.gone,
                counts,
            }
        })
        .collect()
}

/// Which of the mapper's rules chose each folder's destination: the mapper run again on
/// the spooled folders with the same `folder_map` and `exclude_folders` (against an
/// Exchange namespace, without the destination's LIST, which only decides between
/// "same path" and a renaming for case).
fn rules(folders: &[crate::spool::FolderState], sync: &crate::config::SyncConfig) -> Vec<String> {
    use crate::imap::ListedFolder;
    use crate::mapping::{FolderMapper, MapRule, Mapped, Namespace};
    let Some(first) = folders.first() else {
        return Vec::new();
    };
    let mapper = FolderMapper::new(
        Namespace {
            prefix: first.ns_prefix.clone(),
            delimiter: first.delimiter,
        },
        Namespace::exchange(),
        &[],
        &sync.folder_map,
        &sync.exclude_folders,
    );
    let Ok(mapper) = mapper else {
        return vec![String::new(); folders.len()];
    };
    folders
        .iter()
        .map(|f| {
            let listed = ListedFolder {
                name: f.name.clone(),
                delimiter: f.delimiter,
                attributes: f.attributes.clone(),
            };
            match mapper.map(&listed) {
                Mapped::Excluded { pattern } => format!("excluded by {pattern:?}"),
                Mapped::To { rule, .. } => match rule {
                    MapRule::FolderMap => "folder_map".into(),
                    MapRule::Inbox => "INBOX".into(),
                    MapRule::SpecialUse(a) => format!("special-use {a}"),
                    MapRule::WellKnownName => "well-known name".into(),
                    MapRule::SamePath => "same path".into(),
                    MapRule::Renamed(note) => format!("renamed: {note}"),
                },
            }
        })
        .collect()
}

/// Counts every mailbox in `ids`.
pub fn scan(spool: &Spool, ids: &[String]) -> Inventory {
    let mut inv = Inventory {
        at_unix: chrono::Utc::now().timestamp(),
        ..Default::default()
    };
    for id in ids {
        let mut c = Counts::default();
        for f in spool.folders(id).unwrap_or_default() {
            for uv in spool.generations(id, &f.name).unwrap_or_default() {
                for r in spool.messages(id, &f.name, uv).unwrap_or_default() {
                    c.add_record(&r);
                }
            }
        }
        inv.total.add(&c);
        inv.mailboxes.insert(id.clone(), c);
    }
    inv
}
