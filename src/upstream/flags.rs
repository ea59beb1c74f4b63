//! Source flag changes carried to the copies already at the destination.

use super::{PushReport, UpstreamError};
use crate::imap::client::Client;
use crate::spool::{same_flag_set, MessageRecord, MessageState, Spool};

/// Writes the source's flags to the destination copies of `records` (one folder
/// generation, pushed to `dest`) whose flags there differ, and records them written.
///
/// A copy is named by its destination UID, which means something only under the
/// UIDVALIDITY it was given under: when the folder was recreated at the destination (the
/// user deleted it, a restore), that UID may now be another message, so nothing is stored
/// there and the admin is told. Copies without a UID (no APPENDUID) cannot be named at all.
#[allow(clippy::too_many_arguments)]
pub async fn sync_flags(
    client: &mut Client,
    spool: &Spool,
    mailbox: &str,
    folder: &str,
    uv: u32,
    dest: &str,
    records: &[MessageRecord],
    report: &mut PushReport,
) -> Result<(), UpstreamError> {
    let mut selected: Option<u32> = None;
    let mut stale = 0u64;
    for r in records {
        let MessageState::Appended {
            dest_folder,
            dest_uidvalidity,
            dest_uid,
            flags,
        } = &r.state
        else {
            continue;
        };
        if *dest_uid == 0 || dest_folder != dest || same_flag_set(flags, &r.flags) {
            continue;
        }
        let current = match selected {
            Some(v) => v,
            None => *selected.insert(client.select(dest, false).await?.uidvalidity),
        };
        if current != *dest_uidvalidity {
            stale += 1;
            continue;
        }
        client.uid_store_flags(*dest_uid, &r.flags).await?;
        spool.flags_written(mailbox, folder, uv, r.uid, *dest_uid, &r.flags)?;
        report.flags_updated += 1;
    }
    if stale > 0 {
        let msg = format!(
            "folder {folder:?}: flag changes of {stale} message(s) are not carried to {dest:?}: \
             that folder was recreated at the destination (its UIDVALIDITY changed), so the \
             UIDs they were given there no longer name them"
        );
        tracing::error!(mailbox, folder, "{msg}");
        report.errors.push(msg);
    }
    Ok(())
}
