//! Files the daemon and its commands write beside the spool (`status.json`, the
//! `requests/` directory, `report -o`): readable by their owner alone.
//!
//! They name every mailbox, its errors and its skipped messages (with subjects), and
//! they sit next to the spool, which holds the mail itself. The process umask decides
//! nothing here: the modes are set explicitly, so that a command started by hand under
//! the usual umask 022 does not leave a world-readable file behind.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file written here.
pub const FILE_MODE: u32 = 0o600;

/// Mode of every directory created here.
pub const DIR_MODE: u32 = 0o700;

/// Opens `path` for writing, created or truncated, with [`FILE_MODE`]. A file that was
/// already there (a temporary file left by a crash, say) gets the mode too: `mode` at
/// creation cannot tighten an existing file.
pub fn create(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Writes `data` to `path` with [`create`].
pub fn write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut file = create(path)?;
    file.write_all(data)?;
    Ok(())
}

/// Creates `path` and its missing parents with [`DIR_MODE`]; an existing directory is
/// left as it is.
pub fn create_dir_all(path: &Path) -> std::io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn files_and_directories_are_private_even_when_they_existed() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("a/b");
        create_dir_all(&sub).unwrap();
        assert_eq!(mode(&d.path().join("a")), DIR_MODE);
        assert_eq!(mode(&sub), DIR_MODE);
        let f = sub.join("f");
        std::fs::write(&f, b"old").unwrap();
        std::fs::set_permissions(&f, Permissions::from_mode(0o644)).unwrap();
        write(&f, b"new").unwrap();
        assert_eq!(mode(&f), FILE_MODE);
        assert_eq!(std::fs::read(&f).unwrap(), b"new");
    }
}
