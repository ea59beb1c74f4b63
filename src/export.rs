//! `cutover export`: what the spool holds for a mailbox, written as a Maildir++ tree.
//!
//! The admin keeps an archive of what was migrated, or hands a mailbox to its user,
//! without the destination. INBOX is the root; every other folder is a `.Name`
//! directory (hierarchy with `.`, each level in modified UTF-7, a `maildirfolder` file
//! inside), as Dovecot and Courier write them. Each message is its spooled bytes, with
//! its flags in the info suffix (keywords through the folder's `dovecot-keywords`) and
//! its INTERNALDATE as the file's mtime, so Dovecot serves it back as it came.
//!
//! Messages the spool holds no body for (skipped: too big, over a limit) are not
//! written and are counted. Records and bodies are read a range at a time: the memory
//! used does not grow with the mailbox.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context};

use crate::mapping::encode_mutf7;
use crate::source::maildir::keywords::Keywords;
use crate::source::maildir::names;
use crate::spool::{FolderState, MessageState, Spool};

/// What one export wrote.
#[derive(Debug, Default, Clone)]
pub struct ExportReport {
    /// (folder, directory, messages written).
    pub folders: Vec<(String, PathBuf, u64)>,
    pub messages: u64,
    pub bytes: u64,
    /// Messages without a body in the spool (skipped), not written.
    pub without_body: u64,
    /// What did not fit (more than 26 keywords in a folder), one line each.
    pub notes: Vec<String>,
}

/// Writes the folders of `mailbox` (or only `folder`, by its source name) below `to`,
/// which must not exist or be empty: an export never mixes with other mail.
pub fn export(
    spool: &Spool,
    mailbox: &str,
    to: &Path,
    folder: Option<&str>,
) -> anyhow::Result<ExportReport> {
    let all = spool.folders(mailbox)?;
    if all.is_empty() {
        bail!("the spool holds no folder of mailbox {mailbox}");
    }
    let folders: Vec<FolderState> = match folder {
        Some(name) => {
            let f: Vec<FolderState> = all.into_iter().filter(|f| f.name == name).collect();
            if f.is_empty() {
                bail!("the spool holds no folder {name:?} of mailbox {mailbox}");
            }
            f
        }
        None => all,
    };
    if let Ok(mut rd) = std::fs::read_dir(to) {
        if rd.next().is_some() {
            bail!(
                "{} is not empty: an export is written into a new or empty directory",
                to.display()
            );
        }
    }
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut report = ExportReport::default();
    for f in &folders {
        let dir = match maildir_dir(f) {
            None => to.to_path_buf(),
            Some(name) => to.join(name),
        };
        let n = export_folder(spool, mailbox, f, &dir, &mut report)
            .with_context(|| format!("folder {:?} into {}", f.name, dir.display()))?;
        report.folders.push((f.name.clone(), dir, n));
    }
    Ok(report)
}

/// The Maildir++ directory name of a spool folder (`None` for INBOX, the root): the
/// source's namespace prefix taken off, levels split at its delimiter, each level in
/// modified UTF-7 and a `.` inside a level (from a source whose delimiter is not `.`)
/// written `_`, since Maildir++ has no way to say it.
pub fn maildir_dir(f: &FolderState) -> Option<String> {
    if f.name.eq_ignore_ascii_case("INBOX") {
        return None;
    }
    let rest = f
        .name
        .strip_prefix(f.ns_prefix.as_str())
        .filter(|r| !r.is_empty())
        .unwrap_or(&f.name);
    let levels: Vec<String> = match f.delimiter {
        Some(d) => rest.split(d).map(str::to_string).collect(),
        None => vec![rest.to_string()],
    };
    let levels: Vec<String> = levels
        .iter()
        .map(|l| {
            let l = if l.is_empty() { "_" } else { l };
            encode_mutf7(&l.replace('.', "_"))
        })
        .collect();
    Some(format!(".{}", levels.join(".")))
}

fn export_folder(
    spool: &Spool,
    mailbox: &str,
    f: &FolderState,
    dir: &Path,
    report: &mut ExportReport,
) -> anyhow::Result<u64> {
    let md = maildir::Maildir::from(dir.to_path_buf());
    md.create_dirs()?;
    if maildir_dir(f).is_some() {
        std::fs::write(dir.join("maildirfolder"), b"")?;
    }
    let mut keywords = Keywords::default();
    let mut dropped: Vec<String> = Vec::new();
    let mut written = 0u64;
    let mut from = 0u32;
    loop {
        let recs = spool.messages_from(mailbox, &f.name, f.uidvalidity, from, 1024)?;
        let Some(last) = recs.last().map(|r| r.uid) else {
            break;
        };
        for r in recs {
            if !r.state.is_live() {
                continue;
            }
            if matches!(r.state, MessageState::Skipped { .. }) {
                report.without_body += 1;
                continue;
            }
            let body = spool
                .get_body(&r.hash)
                .with_context(|| format!("the body of UID {}", r.uid))?;
            let letters = names::letters(&r.flags, &mut keywords);
            for k in &r.flags {
                if !k.starts_with('\\') && keywords.assign(k).is_none() && !dropped.contains(k) {
                    dropped.push(k.clone());
                }
            }
            let id = md.store_cur_with_flags(&body, &letters)?;
            let path = dir.join("cur").join(format!("{id}:2,{letters}"));
            let path = if path.exists() {
                path
            } else {
                md.find(&id)
                    .map(|e| e.path().clone())
                    .with_context(|| format!("the file just written for UID {}", r.uid))?
            };
            let when = if r.internal_ts >= 0 {
                UNIX_EPOCH + Duration::from_secs(r.internal_ts as u64)
            } else {
                UNIX_EPOCH - Duration::from_secs(r.internal_ts.unsigned_abs())
            };
            std::fs::File::options()
                .write(true)
                .open(&path)?
                .set_modified(when)?;
            written += 1;
            report.messages += 1;
            report.bytes += body.len() as u64;
        }
        match last.checked_add(1) {
            Some(n) => from = n,
            None => break,
        }
    }
    if !keywords.is_empty() {
        std::fs::write(dir.join("dovecot-keywords"), keywords.dovecot_file())?;
    }
    for k in dropped {
        report.notes.push(format!(
            "folder {:?}: keyword {k:?} not exported: a Maildir folder has 26 keyword letters",
            f.name
        ));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str, prefix: &str, delim: char) -> FolderState {
        FolderState {
            name: name.into(),
            ns_prefix: prefix.into(),
            delimiter: Some(delim),
            ..Default::default()
        }
    }

    #[test]
    fn maildir_plus_plus_names() {
        assert_eq!(maildir_dir(&folder("INBOX", "INBOX.", '.')), None);
        assert_eq!(
            maildir_dir(&folder("INBOX.Work.Projects", "INBOX.", '.')).as_deref(),
            Some(".Work.Projects")
        );
        assert_eq!(
            maildir_dir(&folder("Entwürfe/v1.2", "", '/')).as_deref(),
            Some(".Entw&APw-rfe.v1_2")
        );
    }
}
