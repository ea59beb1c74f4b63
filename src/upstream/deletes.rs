//! Source expunges carried to the destination (`[sync] propagate_deletes`).

use std::collections::BTreeMap;

use super::{is_throttle, PushReport, UpstreamError};
use crate::imap::client::Client;
use crate::imap::ImapError;
use crate::spool::{MessageState, Spool};

/// Destination UIDs per UID STORE / UID EXPUNGE command.
const DELETE_CHUNK: usize = 500;

/// A message's UID at the source and at the destination.
type UidPair = (u32, u32);

/// Deletes at the destination the messages of one folder generation that the source
/// expunged (`Expunging`, recorded by the source within `max_delete_percent`), and
/// records them `Expunged`.
///
/// Exactly those messages, exactly once: per destination folder, after checking that its
/// UIDVALIDITY is still the one the UIDs were given under, `\Deleted` is added to their
/// UIDs and UID EXPUNGE removes those UIDs alone; other messages marked `\Deleted` there
/// are left alone, and without UIDPLUS nothing is deleted at all (a plain EXPUNGE would
/// take them too). After a crash between the EXPUNGE and the record, the next run sends
/// the same two commands again: the UIDs no longer exist and are never reused, so the
/// repeat changes nothing.
pub async fn delete_expunged(
    client: &mut Client,
    spool: &Spool,
    mailbox: &str,
    folder: &str,
    uv: u32,
    report: &mut PushReport,
) -> Result<(), UpstreamError> {
    // (destination folder, its UIDVALIDITY) -> (source UID, destination UID).
    // Only these are held; the folder's records are read a range at a time.
    let mut groups: BTreeMap<(String, u32), Vec<UidPair>> = BTreeMap::new();
    let mut from = 0u32;
    loop {
        let records = super::records_from(spool, mailbox, folder, uv, from, 4096).await?;
        let Some(last) = records.last().map(|r| r.uid) else {
            break;
        };
        for r in records {
            if let MessageState::Expunging {
                dest_folder,
                dest_uidvalidity,
                dest_uid,
            } = r.state
            {
                groups
                    .entry((dest_folder, dest_uidvalidity))
                    .or_default()
                    .push((r.uid, dest_uid));
            }
        }
        match last.checked_add(1) {
            Some(next) => from = next,
            None => break,
        }
    }
    if groups.is_empty() {
        return Ok(());
    }
    if !client.caps().has("UIDPLUS") {
        let n: usize = groups.values().map(Vec::len).sum();
        let msg = format!(
            "folder {folder:?}: {n} message(s) expunged at the source are not deleted at the \
             destination: {} does not offer UIDPLUS (UID EXPUNGE), and a plain EXPUNGE could \
             remove other messages",
            client.host()
        );
        tracing::error!(mailbox, folder, "{msg}");
        report.errors.push(msg);
        return Ok(());
    }
    // The source's records are what says "delete this UID"; they are on disk before the
    // first deletion, so no restart can see the message as still wanted.
    spool.flush()?;
    for ((dest, dest_uv), items) in groups {
        let (unknown, known): (Vec<UidPair>, Vec<UidPair>) =
            items.into_iter().partition(|(_, d)| *d == 0);
        if !unknown.is_empty() {
            let msg = format!(
                "folder {folder:?}: {} message(s) expunged at the source are not deleted in \
                 {dest:?}: the destination gave no UID for them when they were appended (no \
                 APPENDUID)",
                unknown.len()
            );
            tracing::error!(mailbox, folder, "{msg}");
            report.errors.push(msg);
        }
        if known.is_empty() {
            continue;
        }
        let info = match client.select(&dest, false).await {
            Ok(info) => info,
            Err(e @ ImapError::Refused { .. }) if !is_throttle(&e) => {
                let msg = format!(
                    "folder {folder:?}: {} message(s) expunged at the source are not deleted \
                     in {dest:?}: {e}",
                    known.len()
                );
                tracing::error!(mailbox, folder, "{msg}");
                report.errors.push(msg);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if info.uidvalidity != dest_uv {
            let msg = format!(
                "folder {folder:?}: {} message(s) expunged at the source are not deleted in \
                 {dest:?}: that folder was recreated at the destination (UIDVALIDITY {dest_uv} \
                 is now {}), so their UIDs no longer name them",
                known.len(),
                info.uidvalidity
            );
            tracing::error!(mailbox, folder, "{msg}");
            report.errors.push(msg);
            continue;
        }
        let mut deleted = 0u64;
        for chunk in known.chunks(DELETE_CHUNK) {
            let uids: Vec<u32> = chunk.iter().map(|(_, d)| *d).collect();
            match client.uid_delete(&uids).await {
                Ok(()) => {}
                Err(e @ ImapError::Refused { .. }) if !is_throttle(&e) => {
                    let msg = format!(
                        "folder {folder:?}: {} message(s) expunged at the source are not \
                         deleted in {dest:?}: {e}",
                        chunk.len()
                    );
                    tracing::error!(mailbox, folder, "{msg}");
                    report.errors.push(msg);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
            spool.deleted_at_dest(mailbox, folder, uv, chunk)?;
            deleted += chunk.len() as u64;
        }
        if deleted > 0 {
            report.deleted += deleted;
            tracing::info!(
                mailbox,
                folder,
                dest = %dest,
                count = deleted,
                "deleted at the destination: expunged at the source"
            );
        }
    }
    Ok(())
}
