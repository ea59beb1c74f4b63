//! The folders of one mailbox's Maildir tree, by layout, with the names an IMAP server on
//! the same files would list.

use std::path::{Path, PathBuf};

use crate::config::MaildirLayout;
use crate::mapping::decode_mutf7;

/// One folder: its name for the spool and its Maildir directory (holding `cur/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    pub name: String,
    pub dir: PathBuf,
    pub delimiter: char,
}

/// How deep `LAYOUT=fs` folders are looked for: far more than any mail client nests, and
/// a bound on a tree with a loop of bind mounts.
const MAX_DEPTH: usize = 32;

/// What to read of a mailbox: the layout and naming of `[source]`.
#[derive(Debug, Clone)]
pub struct Layout {
    pub layout: MaildirLayout,
    /// `layout = "list"`: name -> directory relative to the root.
    pub list: Vec<(String, String)>,
    /// Prefix of every folder name but INBOX; `None`: the layout's default.
    pub prefix: Option<String>,
}

impl Layout {
    pub fn prefix(&self) -> &str {
        match (&self.prefix, self.layout) {
            (Some(p), _) => p,
            (None, MaildirLayout::MaildirPlusPlus) => "INBOX.",
            (None, _) => "",
        }
    }

    pub fn delimiter(&self) -> char {
        match self.layout {
            MaildirLayout::MaildirPlusPlus => '.',
            _ => '/',
        }
    }
}

/// The folders of the Maildir at `root`. A root that does not exist, is not a directory
/// or is not a Maildir is an error for the whole mailbox (with the path); a folder that
/// cannot be used is a problem, and the others are read.
pub fn folders(
    root: &Path,
    layout: &Layout,
    problems: &mut Vec<String>,
) -> Result<Vec<Folder>, String> {
    let meta = std::fs::metadata(root).map_err(|e| format!("Maildir {}: {e}", root.display()))?;
    if !meta.is_dir() {
        return Err(format!("Maildir {}: not a directory", root.display()));
    }
    let delimiter = layout.delimiter();
    let prefix = layout.prefix();
    let mut out = Vec::new();
    match layout.layout {
        MaildirLayout::List => {
            for (name, rel) in &layout.list {
                let dir = if rel == "." {
                    root.to_path_buf()
                } else {
                    root.join(rel)
                };
                if !dir.join("cur").is_dir() {
                    problems.push(format!(
                        "folder {name:?}: {} is not a Maildir (no cur/)",
                        dir.display()
                    ));
                    continue;
                }
                out.push(Folder {
                    name: name.clone(),
                    dir,
                    delimiter,
                });
            }
            if out.is_empty() {
                return Err(format!(
                    "Maildir {}: none of the listed folders is a Maildir",
                    root.display()
                ));
            }
        }
        MaildirLayout::MaildirPlusPlus => {
            if !root.join("cur").is_dir() {
                return Err(format!(
                    "{} is not a Maildir (no cur/ directory)",
                    root.display()
                ));
            }
            out.push(Folder {
                name: "INBOX".into(),
                dir: root.to_path_buf(),
                delimiter,
            });
            for (entry, name) in sorted_dirs(root, problems)? {
                let Some(rest) = name.strip_prefix('.') else {
                    continue;
                };
                if rest.is_empty() || rest == "." {
                    continue;
                }
                let path = entry;
                let decoded: Result<Vec<String>, _> = rest
                    .split('.')
                    .map(|c| {
                        if c.is_empty() {
                            Err(())
                        } else {
                            decode_mutf7(c).map_err(|_| ())
                        }
                    })
                    .collect();
                let Ok(parts) = decoded else {
                    problems.push(format!(
                        "{}: not a Maildir++ folder name (bad modified UTF-7 or empty level); \
                         not read",
                        path.display()
                    ));
                    continue;
                };
                if !path.join("cur").is_dir() {
                    // Dovecot leaves such directories for folders that only have children.
                    tracing::debug!(dir = %path.display(), "no cur/: not a folder");
                    continue;
                }
                // `.INBOX` cannot be told from INBOX by name; Dovecot lists it as INBOX.INBOX.
                out.push(Folder {
                    name: format!("{prefix}{}", parts.join(".")),
                    dir: path,
                    delimiter,
                });
            }
        }
        MaildirLayout::Fs => {
            let inbox_dir = if root.join("cur").is_dir() {
                Some(root.to_path_buf())
            } else if root.join("INBOX").join("cur").is_dir() {
                Some(root.join("INBOX"))
            } else {
                None
            };
            let Some(inbox) = inbox_dir else {
                return Err(format!(
                    "{} is not a Maildir (no cur/ directory, nor INBOX/cur/)",
                    root.display()
                ));
            };
            let inbox_sub = inbox != root;
            out.push(Folder {
                name: "INBOX".into(),
                dir: inbox,
                delimiter,
            });
            walk_fs(
                root,
                &mut Vec::new(),
                0,
                inbox_sub,
                prefix,
                &mut out,
                problems,
            )?;
        }
    }
    Ok(out)
}

/// `LAYOUT=fs`: every directory below the root that holds `cur/` is a folder, named by
/// its path (each level in modified UTF-7).
fn walk_fs(
    dir: &Path,
    path: &mut Vec<String>,
    depth: usize,
    inbox_sub: bool,
    prefix: &str,
    out: &mut Vec<Folder>,
    problems: &mut Vec<String>,
) -> Result<(), String> {
    if depth >= MAX_DEPTH {
        problems.push(format!(
            "{}: folders nested deeper than {MAX_DEPTH} levels are not read",
            dir.display()
        ));
        return Ok(());
    }
    let entries = match sorted_dirs(dir, problems) {
        Ok(e) => e,
        Err(e) if depth > 0 => {
            problems.push(e);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for (entry, name) in entries {
        if ["cur", "new", "tmp"].contains(&name.as_str()) || name.starts_with('.') {
            continue;
        }
        if depth == 0 && inbox_sub && name == "INBOX" {
            continue;
        }
        let Ok(level) = decode_mutf7(&name) else {
            problems.push(format!(
                "{}: not a folder name (bad modified UTF-7); not read",
                entry.display()
            ));
            continue;
        };
        path.push(level);
        if entry.join("cur").is_dir() {
            out.push(Folder {
                name: format!("{prefix}{}", path.join("/")),
                dir: entry.clone(),
                delimiter: '/',
            });
        }
        walk_fs(&entry, path, depth + 1, inbox_sub, prefix, out, problems)?;
        path.pop();
    }
    Ok(())
}

/// The subdirectories of `dir` (path, name), in name order. Symbolic links are not
/// followed: a link could lead out of the mailbox, into another user's mail, or loop;
/// one is reported. A name that is not UTF-8 is reported and left.
fn sorted_dirs(dir: &Path, problems: &mut Vec<String>) -> Result<Vec<(PathBuf, String)>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let ft = match entry.file_type() {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: {e}", entry.path().display()));
                continue;
            }
        };
        if ft.is_symlink() {
            problems.push(format!(
                "{}: a symbolic link; not followed, not read",
                entry.path().display()
            ));
            continue;
        }
        if !ft.is_dir() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            problems.push(format!(
                "{}: a name that is not UTF-8; not read",
                entry.path().display()
            ));
            continue;
        };
        out.push((entry.path(), name));
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk(p: &Path) {
        for s in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(p.join(s)).unwrap();
        }
    }

    #[test]
    fn maildir_plus_plus_names() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        mk(r);
        mk(&r.join(".Sent"));
        mk(&r.join(".Work.Projects"));
        mk(&r.join(".Entw&APw-rfe"));
        std::fs::create_dir(r.join(".Work")).unwrap(); // no cur/: a parent only
        std::os::unix::fs::symlink(r.join(".Sent"), r.join(".Linked")).unwrap();
        let layout = Layout {
            layout: MaildirLayout::MaildirPlusPlus,
            list: vec![],
            prefix: None,
        };
        let mut problems = Vec::new();
        let f = folders(r, &layout, &mut problems).unwrap();
        let names: Vec<&str> = f.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "INBOX",
                "INBOX.Entwürfe",
                "INBOX.Sent",
                "INBOX.Work.Projects"
            ]
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains(".Linked"), "{problems:?}");
    }

    #[test]
    fn fs_layout_and_errors() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        mk(&r.join("INBOX"));
        mk(&r.join("Work/Projects"));
        mk(&r.join("Sent"));
        let layout = Layout {
            layout: MaildirLayout::Fs,
            list: vec![],
            prefix: None,
        };
        let mut problems = Vec::new();
        let f = folders(r, &layout, &mut problems).unwrap();
        let names: Vec<&str> = f.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["INBOX", "Sent", "Work/Projects"]);
        assert!(f[0].dir.ends_with("INBOX"));
        let missing = folders(&r.join("nope"), &layout, &mut problems).unwrap_err();
        assert!(missing.contains("nope"), "{missing}");
        let pp = Layout {
            layout: MaildirLayout::MaildirPlusPlus,
            ..layout
        };
        let not = folders(&r.join("Work"), &pp, &mut problems).unwrap_err();
        assert!(not.contains("not a Maildir"), "{not}");
    }
}
