//! Reading one message file, read-only, and finding it again when it was renamed.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How much of an oversized file is read, for its Subject header in the report.
const HEAD_BYTES: u64 = 64 * 1024;

/// What reading a file gave.
pub enum FileRead {
    /// The whole file; its mtime (Unix seconds) is the INTERNALDATE.
    Body { body: Vec<u8>, mtime: i64 },
    /// Over the size limit: its size, mtime and first bytes (the header, for the report).
    TooBig {
        size: u64,
        mtime: i64,
        head: Vec<u8>,
    },
    /// Not a regular file (a FIFO, a device, a socket): never opened for reading.
    NotAFile(&'static str),
}

/// Reads `path`, at most `max` bytes of it. The file is opened read-only, without
/// following a symbolic link and without blocking (a FIFO would otherwise hang the
/// read); nothing of it is changed (Linux updates no atime on a read with the default
/// `relatime` beyond once a day, and that is the kernel's, not a change of the file).
pub fn read(path: &Path, max: u64) -> std::io::Result<FileRead> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    let ft = meta.file_type();
    if !ft.is_file() && !ft.is_dir() {
        use std::os::unix::fs::FileTypeExt;
        let what = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Ok(FileRead::NotAFile(what));
    }
    let mtime = meta.mtime();
    if meta.len() > max {
        let mut head = Vec::new();
        f.take(HEAD_BYTES).read_to_end(&mut head)?;
        return Ok(FileRead::TooBig {
            size: meta.len(),
            mtime,
            head,
        });
    }
    // A directory fails here with the OS's own words (EISDIR), as any unreadable file.
    let mut body = Vec::with_capacity(meta.len() as usize);
    f.by_ref()
        .take(max.saturating_add(1))
        .read_to_end(&mut body)?;
    if body.len() as u64 > max {
        // It grew while read: still over the limit.
        return Ok(FileRead::TooBig {
            size: body.len() as u64,
            mtime,
            head: body[..body.len().min(HEAD_BYTES as usize)].to_vec(),
        });
    }
    Ok(FileRead::Body { body, mtime })
}

/// Where the file of `base` is now, in `cur/` or `new/` of `dir`: a mail client moves a
/// file from `new/` to `cur/` and renames it when its flags change, while it is being
/// read. Reads the two directories; `None` when the message is gone (deleted).
pub fn relocate(dir: &Path, base: &str) -> Option<PathBuf> {
    for sub in ["cur", "new"] {
        let Ok(rd) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for entry in rd.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if super::names::split(name).0 == base {
                return Some(entry.path());
            }
        }
    }
    None
}
