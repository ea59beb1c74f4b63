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
        // The folder's problems apart from the others': files that are not mail are worth
        // knowing but do not make the mailbox fail.
        let earlier = std::mem::take(&mut report.errors);
        let read = folder::read_folder(&cx, f, &mut report, on_progress);
        let this = std::mem::replace(&mut report.errors, earlier);
        for line in &this {
            if line.contains("not read as mail") {
                report.notices.push(line.clone());
            } else {
                report.errors.push(line.clone());
            }
        }
        report.errors.add_omitted(this.omitted());
        read?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MaildirLayout;
    use crate::spool::MessageState;

    fn put(dir: &Path, name: &str, body: &str, mtime: i64) {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime as u64))
            .unwrap();
    }

    fn read(spool: &Spool, root: &Path, limits: &MailboxLimits) -> SourceReport {
        let layout = Layout {
            layout: MaildirLayout::MaildirPlusPlus,
            list: vec![],
            prefix: None,
        };
        let opts = SourceOptions {
            max_message_bytes: 1 << 20,
            fetch_batch_bytes: 1 << 20,
            fetch_batch_count: 100,
        };
        read_mailbox(
            spool,
            "m",
            root,
            &layout,
            &|_, _| true,
            &opts,
            limits,
            &mut |_| {},
        )
        .unwrap()
    }

    fn records(spool: &Spool) -> Vec<crate::spool::MessageRecord> {
        let st = spool.folder("m", "INBOX").unwrap().unwrap();
        spool.messages("m", "INBOX", st.uidvalidity).unwrap()
    }

    #[test]
    fn limits_stable_uids_and_a_uidlist_that_appears_later() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("Maildir");
        for s in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(root.join(s)).unwrap();
        }
        let spool = Spool::open(&d.path().join("spool")).unwrap();
        put(
            &root.join("cur"),
            "1.M1.h:2,S",
            "Subject: old\r\n\r\nx\r\n",
            1_000,
        );
        put(
            &root.join("cur"),
            "2.M2.h:2,",
            "Subject: mid\r\n\r\ny\r\n",
            2_000,
        );
        let long = format!("Subject: long\r\n\r\n{}\r\n", "z".repeat(3000));
        put(&root.join("new"), "3.M3.h", &long, 3_000);
        let limits = MailboxLimits {
            max_items: 2,
            max_line_length: 1000,
            ..Default::default()
        };
        let r = read(&spool, &root, &limits);
        assert_eq!(r.skipped, 2, "{:?}", r.skipped_details);
        let recs = records(&spool);
        assert_eq!(recs.len(), 3);
        let state = |ts: i64| &recs.iter().find(|r| r.internal_ts == ts).unwrap().state;
        assert!(
            matches!(state(1_000), MessageState::Skipped { reason } if reason.contains("max_items_per_mailbox")),
            "the oldest is beyond the limit"
        );
        assert!(matches!(state(2_000), MessageState::Spooled));
        assert!(
            matches!(state(3_000), MessageState::Skipped { reason } if reason.contains("max_line_length"))
        );
        let uids: Vec<(u32, i64)> = recs.iter().map(|r| (r.uid, r.internal_ts)).collect();

        // Renamed (flags) and moved (new/ -> cur/): same UIDs, flags follow, nothing new.
        std::fs::rename(root.join("cur/2.M2.h:2,"), root.join("cur/2.M2.h:2,FS")).unwrap();
        std::fs::rename(root.join("new/3.M3.h"), root.join("cur/3.M3.h:2,S")).unwrap();
        let r = read(&spool, &root, &limits);
        assert_eq!((r.new_messages, r.flag_changes), (0, 2), "{r:?}");
        let again = records(&spool);
        assert_eq!(
            again
                .iter()
                .map(|r| (r.uid, r.internal_ts))
                .collect::<Vec<_>>(),
            uids
        );
        let mid = again.iter().find(|r| r.internal_ts == 2_000).unwrap();
        assert!(crate::spool::same_flag_set(
            &mid.flags,
            &["\\Flagged".to_string(), "\\Seen".to_string()]
        ));

        // Dovecot starts on these files and writes its uidlist: a new UIDVALIDITY, whose
        // messages take over the records of the old one by content (nothing sent twice).
        let old_uv = spool.folder("m", "INBOX").unwrap().unwrap().uidvalidity;
        std::fs::write(
            root.join("dovecot-uidlist"),
            "3 V4242 N11 G0\n7 :1.M1.h\n8 :2.M2.h\n9 :3.M3.h\n",
        )
        .unwrap();
        let r = read(&spool, &root, &limits);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let st = spool.folder("m", "INBOX").unwrap().unwrap();
        assert_eq!((st.uidvalidity, st.uidnext), (4242, 11));
        assert_ne!(old_uv, 4242);
        assert_eq!(spool.generations("m", "INBOX").unwrap(), vec![4242]);
        let recs = records(&spool);
        let uids: Vec<u32> = recs.iter().map(|r| r.uid).collect();
        assert_eq!(uids, vec![7, 8, 9], "Dovecot's UIDs");
        // The one spooled message is carried over by content (counted as read, as over
        // IMAP); the two skipped ones are decided again, the same way.
        assert_eq!((r.new_messages, r.skipped), (1, 2), "{r:?}");
        let spooled = recs
            .iter()
            .filter(|r| matches!(r.state, MessageState::Spooled))
            .count();
        assert_eq!(spooled, 1);
    }
}
