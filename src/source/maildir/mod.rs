//! Maildir as a source: a legacy server's mail read straight from its disk (or a backup
//! of it), for when its IMAP daemon is gone, too slow, limited to a few connections, or
//! the passwords are unknown (`[source] kind = "maildir"`).
//!
//! Everything after the spool is the same as for the IMAP source: what this writes is
//! the records and bodies the IMAP source would write for the same files (the folder
//! names an IMAP server on them would list, the UIDs Dovecot gives them where its
//! `dovecot-uidlist` says, the flags of the info suffix and keywords, the file's mtime
//! as INTERNALDATE), so the upstream, the statuses and the status page do not know the
//! difference, and a later switch to reading the same server over IMAP continues without
//! copying anything twice (see `spool/maildir_ids.rs` for the UIDs).
//!
//! The source is never changed: files are opened read-only and never renamed, moved or
//! touched; nothing is written below the Maildir root.
//!
//! - `tree.rs`: the folders of a mailbox by layout (Maildir++, `LAYOUT=fs`, a list);
//! - `folder.rs`: one folder into the spool, a window of files at a time;
//! - `files.rs`: reading one file, and finding it again after a rename;
//! - `names.rs`: base name, info suffix and flags; `keywords.rs`, `uidlist.rs`: the
//!   servers' files beside the mail.

mod files;
pub mod folder;
pub mod keywords;
pub mod names;
pub mod tree;
pub mod uidlist;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::imap::ListedFolder;
use crate::source::{MailboxLimits, Progress, SourceError, SourceOptions, SourceReport};
use crate::spool::Spool;
pub use tree::{Folder, Layout};

/// The folders of a mailbox as the IMAP source would list them (for `exclude_folders`
/// and the folder mapping, which take the same input from both sources).
pub fn listed(folders: &[Folder]) -> Vec<ListedFolder> {
    folders
        .iter()
        .map(|f| ListedFolder {
            name: f.name.clone(),
            delimiter: Some(f.delimiter),
            attributes: Vec::new(),
        })
        .collect()
}

/// Reads every folder of the Maildir at `root` (those `keep` keeps) into the spool.
/// A root that does not exist or is not a Maildir fails the mailbox with its path; a
/// folder's or a file's problem is reported and the rest is read. Synchronous: it reads
/// the disk, so it runs on a blocking thread.
#[allow(clippy::too_many_arguments)]
pub fn read_mailbox(
    spool: &Spool,
    mailbox: &str,
    root: &Path,
    layout: &Layout,
    keep: &dyn Fn(&ListedFolder, &str) -> bool,
    opts: &SourceOptions,
    limits: &MailboxLimits,
    on_progress: &mut dyn FnMut(Progress<'_>),
) -> Result<SourceReport, SourceError> {
    let mut report = SourceReport::default();
    let mut problems = Vec::new();
    let prefix = layout.prefix().to_string();
    let all = tree::folders(root, layout, &mut problems).map_err(SourceError::Maildir)?;
    let folders: Vec<Folder> = all
        .into_iter()
        .filter(|f| keep(&listed(std::slice::from_ref(f))[0], &prefix))
        .collect();
    for p in problems {
        tracing::warn!(mailbox, "{p}");
        report.notices.push(p);
    }
    let beyond = if limits.max_items > 0 {
        beyond_max_items(&folders, limits.max_items)
    } else {
        HashMap::new()
    };
    let known = spool.folders(mailbox)?;
    for f in &folders {
        report.folders += 1;
        let cx = folder::FolderContext {
            spool,
            mailbox,
            opts,
            limits,
            ns_prefix: &prefix,
            beyond: beyond.get(&f.name),
        };
        let notices_before = report.errors.len();
        folder::read_folder(&cx, f, &mut report, on_progress)?;
        // Files that are not mail are worth knowing but do not make the mailbox fail.
        let (errors, notices): (Vec<String>, Vec<String>) = report
            .errors
            .drain(notices_before..)
            .partition(|e| !e.contains("not read as mail"));
        report.errors.extend(errors);
        report.notices.extend(notices);
    }
    for mut st in known {
        if !st.gone && !folders.iter().any(|f| f.name == st.name) {
            st.gone = true;
            spool.put_folder(mailbox, &st)?;
        }
    }
    Ok(report)
}

/// With `max_items_per_mailbox`: the base names, per folder, of the files beyond the
/// limit (the oldest by mtime across folders). Only names and mtimes are held, and only
/// when the mailbox is over the limit.
fn beyond_max_items(folders: &[Folder], max: u64) -> HashMap<String, HashSet<String>> {
    let mut total = 0u64;
    for f in folders {
        for sub in ["cur", "new"] {
            if let Ok(rd) = std::fs::read_dir(f.dir.join(sub)) {
                total += rd.count() as u64;
            }
        }
    }
    if total <= max {
        return HashMap::new();
    }
    let mut all: Vec<(i64, usize, String)> = Vec::new();
    for (i, f) in folders.iter().enumerate() {
        for sub in ["cur", "new"] {
            let Ok(rd) = std::fs::read_dir(f.dir.join(sub)) else {
                continue;
            };
            for e in rd.flatten() {
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if names::not_mail(&name).is_some() {
                    continue;
                }
                let mtime = e.metadata().map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.mtime()
                });
                all.push((mtime.unwrap_or(0), i, names::split(&name).0.to_string()));
            }
        }
    }
    all.sort_by(|a, b| b.cmp(a));
    let mut beyond: HashMap<String, HashSet<String>> = HashMap::new();
    for (_, i, base) in all.into_iter().skip(max as usize) {
        beyond
            .entry(folders[i].name.clone())
            .or_default()
            .insert(base);
    }
    beyond
}
