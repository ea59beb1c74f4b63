//! The source side: walks a legacy mailbox and brings what is new or changed into the spool.
//!
//! The source never talks to the destination. For each folder it compares what the server
//! reports (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, then UID/FLAGS per message) with what the
//! spool holds, fetches only the bodies it lacks, and records flag changes. A folder's
//! bookkeeping is advanced only after all of its messages are in the spool, so a crash in
//! the middle means that folder is simply compared again on the next run.

use std::collections::HashMap;

use crate::imap::client::Client;
use crate::imap::response::FetchData;
use crate::imap::ListedFolder;
use crate::spool::{BodyHash, FolderState, MessageRecord, MessageState, Spool};

/// Limits the source applies while reading.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Messages larger than this are recorded as skipped, not fetched.
    pub max_message_bytes: u64,
    /// Bodies are fetched in UID FETCH commands of at most this many bytes (by RFC822.SIZE),
    /// which bounds memory and lets the upstream start before a big folder is done.
    pub fetch_batch_bytes: u64,
    /// And at most this many messages per command.
    pub fetch_batch_count: usize,
}

/// What one read of a mailbox did.
#[derive(Debug, Clone, Default)]
pub struct SourceReport {
    pub folders: usize,
    pub new_messages: u64,
    pub new_bytes: u64,
    pub flag_changes: u64,
    pub skipped: u64,
    /// Per-folder problems, already phrased for the admin (folder and server text).
    pub errors: Vec<String>,
}

/// Errors that stop the read of the whole mailbox (a folder-level problem is only reported).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Imap(#[from] crate::imap::ImapError),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
}

/// Lists the selectable source folders and the personal namespace prefix.
pub async fn list_folders(client: &mut Client) -> Result<(Vec<ListedFolder>, String), SourceError> {
    let prefix = client
        .namespace()
        .await?
        .map(|(p, _)| p)
        .unwrap_or_default();
    let folders = client
        .list()
        .await?
        .into_iter()
        .filter(|f| f.selectable())
        .collect();
    Ok((folders, prefix))
}

/// Reads every folder in `folders` into the spool. `on_progress` is called after each batch
/// is durable in the spool, so the upstream can start pushing it.
pub async fn read_mailbox(
    client: &mut Client,
    spool: &Spool,
    mailbox: &str,
    folders: &[ListedFolder],
    ns_prefix: &str,
    opts: &SourceOptions,
    mut on_progress: impl FnMut(),
) -> Result<SourceReport, SourceError> {
    let mut report = SourceReport::default();
    let known: Vec<FolderState> = spool.folders(mailbox)?;
    for folder in folders {
        report.folders += 1;
        match read_folder(
            client,
            spool,
            mailbox,
            folder,
            ns_prefix,
            opts,
            &mut report,
            &mut on_progress,
        )
        .await
        {
            Ok(()) => {}
            Err(SourceError::Imap(e)) if !e.is_transient() => {
                let msg = format!("folder {:?}: {e}", folder.name);
                tracing::warn!(mailbox, folder = %folder.name, error = %e, "folder not read");
                report.errors.push(msg);
            }
            Err(e) => return Err(e),
        }
    }
    // Folders the source no longer lists are kept (nothing is deleted by default) but
    // marked, so the status shows them.
    for mut st in known {
        if !st.gone && !folders.iter().any(|f| f.name == st.name) {
            st.gone = true;
            spool.put_folder(mailbox, &st)?;
        }
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn read_folder(
    client: &mut Client,
    spool: &Spool,
    mailbox: &str,
    folder: &ListedFolder,
    ns_prefix: &str,
    opts: &SourceOptions,
    report: &mut SourceReport,
    on_progress: &mut impl FnMut(),
) -> Result<(), SourceError> {
    let info = client.select(&folder.name, true).await?;
    let previous = spool.folder(mailbox, &folder.name)?;
    let mut state = previous.clone().unwrap_or_default();
    state.name = folder.name.clone();
    state.delimiter = folder.delimiter;
    state.attributes = folder.attributes.clone();
    state.ns_prefix = ns_prefix.to_string();
    state.gone = false;

    let same_generation = previous.as_ref().map(|p| p.uidvalidity) == Some(info.uidvalidity);
    if same_generation
        && info.highestmodseq != 0
        && info.highestmodseq == state.highestmodseq
        && info.uidnext == state.uidnext
    {
        // CONDSTORE says nothing changed since the last complete read: no FETCH at all.
        spool.put_folder(mailbox, &state)?;
        return Ok(());
    }

    // Messages of an earlier UIDVALIDITY: the folder was recreated at the source. Their
    // records are matched by content to the new UIDs below, so what already reached the
    // destination is not sent again.
    let mut carried: HashMap<BodyHash, Vec<MessageRecord>> = HashMap::new();
    for uv in spool.generations(mailbox, &folder.name)? {
        if uv != info.uidvalidity {
            tracing::warn!(mailbox, folder = %folder.name, old = uv, new = info.uidvalidity,
                "UIDVALIDITY changed; matching messages by content");
            for rec in spool.messages(mailbox, &folder.name, uv)? {
                carried.entry(rec.hash).or_default().push(rec);
            }
        }
    }

    let changed_since = if same_generation && state.highestmodseq != 0 {
        Some(state.highestmodseq)
    } else {
        None
    };
    let meta = if info.exists == 0 {
        Vec::new()
    } else {
        client.uid_fetch_meta("1:*", changed_since).await?
    };
    let mut have: HashMap<u32, MessageRecord> = spool
        .messages(mailbox, &folder.name, info.uidvalidity)?
        .into_iter()
        .map(|r| (r.uid, r))
        .collect();

    let mut wanted: Vec<FetchData> = Vec::new();
    let mut updates = Vec::new();
    for m in meta {
        let Some(uid) = m.uid else { continue };
        if let Some(rec) = have.remove(&uid) {
            let flags = m.flags.clone().unwrap_or_default();
            if flags != rec.flags {
                report.flag_changes += 1;
                updates.push((uid, flags));
            }
            continue;
        }
        let size = m.size.unwrap_or(0) as u64;
        if size > opts.max_message_bytes {
            report.skipped += 1;
            tracing::warn!(mailbox, folder = %folder.name, uid, size, "message over max_message_bytes skipped");
            spool.put_message(
                mailbox,
                &folder.name,
                info.uidvalidity,
                &MessageRecord {
                    uid,
                    hash: [0; 32],
                    size,
                    internal_date: m.internal_date.clone().unwrap_or_default(),
                    internal_ts: m.internal_ts.unwrap_or(0),
                    flags: m.flags.clone().unwrap_or_default(),
                    state: MessageState::Skipped {
                        reason: format!(
                            "message is {size} bytes, over max_message_bytes ({})",
                            opts.max_message_bytes
                        ),
                    },
                },
            )?;
            continue;
        }
        wanted.push(m);
    }
    for (uid, flags) in updates {
        spool.update_message(mailbox, &folder.name, info.uidvalidity, uid, |r| {
            r.flags = flags.clone()
        })?;
    }

    // Fetch the bodies in batches bounded by bytes and count.
    let mut start = 0;
    while start < wanted.len() {
        let mut end = start;
        let mut bytes = 0u64;
        while end < wanted.len()
            && (end == start
                || (bytes + wanted[end].size.unwrap_or(0) as u64 <= opts.fetch_batch_bytes
                    && end - start < opts.fetch_batch_count))
        {
            bytes += wanted[end].size.unwrap_or(0) as u64;
            end += 1;
        }
        let uids: Vec<u32> = wanted[start..end].iter().filter_map(|m| m.uid).collect();
        let mut records = Vec::with_capacity(uids.len());
        let mut spool_err = None;
        client
            .uid_fetch_bodies(&uids, |f| {
                let (Some(uid), Some(body)) = (f.uid, f.body) else {
                    return Ok(());
                };
                match spool.put_body(&body) {
                    Ok(hash) => {
                        let state =
                            take_carried(&mut carried, &hash).unwrap_or(MessageState::Spooled);
                        records.push(MessageRecord {
                            uid,
                            hash,
                            size: body.len() as u64,
                            internal_date: f.internal_date.unwrap_or_default(),
                            internal_ts: f.internal_ts.unwrap_or(0),
                            flags: f.flags.unwrap_or_default(),
                            state,
                        });
                    }
                    Err(e) => spool_err = Some(e),
                }
                Ok(())
            })
            .await?;
        if let Some(e) = spool_err {
            return Err(e.into());
        }
        if records.len() < uids.len() {
            let got: std::collections::HashSet<u32> = records.iter().map(|r| r.uid).collect();
            for uid in uids.iter().filter(|u| !got.contains(u)) {
                tracing::warn!(mailbox, folder = %folder.name, uid, "source returned no body (expunged meanwhile?); will retry next run");
                report.errors.push(format!(
                    "folder {:?} UID {uid}: the source returned no body",
                    folder.name
                ));
            }
        }
        report.new_messages += records.len() as u64;
        report.new_bytes += records.iter().map(|r| r.size).sum::<u64>();
        spool.put_messages(mailbox, &folder.name, info.uidvalidity, &records)?;
        on_progress();
        start = end;
    }

    for uv in spool.generations(mailbox, &folder.name)? {
        if uv != info.uidvalidity {
            spool.remove_generation(mailbox, &folder.name, uv)?;
        }
    }
    state.uidvalidity = info.uidvalidity;
    state.uidnext = info.uidnext;
    state.highestmodseq = info.highestmodseq;
    spool.put_folder(mailbox, &state)?;
    on_progress();
    Ok(())
}

/// If a message with this content was already at the destination under an old UIDVALIDITY,
/// its destination state moves to the new UID.
fn take_carried(
    carried: &mut HashMap<BodyHash, Vec<MessageRecord>>,
    hash: &BodyHash,
) -> Option<MessageState> {
    let list = carried.get_mut(hash)?;
    let rec = list.pop()?;
    match rec.state {
        s @ MessageState::Appended { .. } => Some(s),
        // Not yet confirmed at the destination: fetch-and-append as a new message; an
        // Appending record of the old generation is resolved the same way as any other.
        s @ MessageState::Appending { .. } => Some(s),
        _ => None,
    }
}
