//! Recovery: settles the APPENDs whose outcome nobody read (a crash, a cut connection, a
//! timeout), before anything else is sent to their folder.
//!
//! The rule, per destination folder that holds uncertain messages:
//!
//! 1. **Wait until nobody is saving.** The session that sent them may be dead while the
//!    server still works through the APPENDs it had received. If the newest claim is
//!    younger than the client's own timeout, the folder's UIDNEXT and message count are
//!    watched (STATUS every [`POLL`]) until they have stood still for [`QUIET`], and at
//!    most until the claim is a timeout old. The cost: up to [`QUIET`] once per folder
//!    after a crash or a cut connection, nothing otherwise.
//! 2. **Look at what arrived.** The destination is asked for UID, FLAGS, INTERNALDATE and
//!    the header fields of a [`Fingerprint`] of every message at or above the lowest
//!    UIDNEXT recorded with the claims. Nothing depends on the server giving back the bytes
//!    it was given (Exchange does not).
//! 3. **Match one to one.** A destination UID that any message of the mailbox already owns
//!    in that folder (any source folder, any generation) is never a candidate; nor is one
//!    whose copy is claimed, by content, by a message recorded without a UID. The
//!    uncertain messages and the candidates are then paired in UID order: a candidate
//!    whose fingerprint [matches](Fingerprint::matches) (every field the original has is
//!    equal; the server may add fields) and whose INTERNALDATE is equal (for a message sent
//!    with one), so identical messages pair up with identical copies.
//! 4. **When the evidence cannot decide, lose nothing.** A message with none of the
//!    fingerprint's fields (fallback included), or whose spooled copy cannot be read, is
//!    never taken as found:
//!    it is sent again, and the possible duplicate is reported with its folder and UID.
//!    Everything not found goes back to be sent.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::fingerprint::{Fingerprint, FIELDS};
use super::{is_throttle, PushReport, UpstreamError};
use crate::imap::client::{Client, StatusInfo};
use crate::imap::response::FetchData;
use crate::imap::ImapError;
use crate::spool::{MessageRecord, MessageState, Resolution, Spool};

/// How long the destination folder must stand still before recovery believes that no
/// earlier session of ours is still saving into it.
pub const QUIET: Duration = Duration::from_secs(3);
/// How often the folder is looked at meanwhile.
pub const POLL: Duration = Duration::from_millis(250);

/// One destination folder's uncertain messages.
struct Group<'a> {
    /// The lowest UIDNEXT recorded with their claims: their copies are at or above it.
    from: u32,
    /// When the newest of them was claimed (Unix ms; 0 for a claim of an older version).
    newest_ms: i64,
    uncertain: Vec<&'a MessageRecord>,
}

/// Resolves the messages of `records` (one folder generation) left `Appending` (see the
/// module doc). `bound` is the client's timeout: no session of ours waits on the server
/// longer than that. Returns how many were found at the destination.
#[allow(clippy::too_many_arguments)]
pub async fn recover(
    client: &mut Client,
    spool: &Spool,
    mailbox: &str,
    folder: &str,
    uv: u32,
    records: &[MessageRecord],
    bound: Duration,
    report: &mut PushReport,
) -> Result<u64, UpstreamError> {
    let mut groups: BTreeMap<(String, u32), Group<'_>> = BTreeMap::new();
    for r in records {
        if let MessageState::Appending {
            dest_folder,
            dest_uidvalidity,
            dest_uidnext,
            marked_ms,
            ..
        } = &r.state
        {
            let g = groups
                .entry((dest_folder.clone(), *dest_uidvalidity))
                .or_insert(Group {
                    from: u32::MAX,
                    newest_ms: 0,
                    uncertain: Vec::new(),
                });
            g.from = g.from.min(*dest_uidnext).max(1);
            g.newest_ms = g.newest_ms.max(*marked_ms);
            g.uncertain.push(r);
        }
    }
    let mut found = 0;
    for ((dest, dest_uv), group) in groups {
        let resolutions = match settled_status(client, &dest, group.newest_ms, bound).await {
            Ok(st) if st.uidvalidity == dest_uv && st.messages > 0 => {
                let candidates = candidates(client, &dest, group.from).await?;
                let owned = spool.owned_at_dest(mailbox, &dest, dest_uv, group.from)?;
                pair(spool, mailbox, folder, &group, candidates, &owned, report)
            }
            // Empty, or recreated since the claims (their copies went with the old one).
            Ok(_) => not_there(&group),
            // The folder is gone (deleted by the user): so are any copies in it. It is
            // created again when its messages are sent.
            Err(e @ ImapError::Refused { .. }) if !is_throttle(&e) => {
                tracing::warn!(mailbox, folder, dest = %dest, error = %e,
                    "destination folder of uncertain APPENDs cannot be opened; sending them again");
                not_there(&group)
            }
            Err(e) => return Err(e.into()),
        };
        found += resolutions
            .iter()
            .filter(|(_, r)| matches!(r, Resolution::Found { .. }))
            .count() as u64;
        for (uid, r) in &resolutions {
            if let Resolution::Found { dest_uid, .. } = r {
                tracing::info!(mailbox, folder, uid, dest_uid, dest = %dest,
                    "interrupted APPEND found at the destination");
            }
        }
        spool.resolve(mailbox, folder, uv, &resolutions)?;
    }
    Ok(found)
}

fn not_there(group: &Group<'_>) -> Vec<(u32, Resolution)> {
    group
        .uncertain
        .iter()
        .map(|r| (r.uid, Resolution::NotThere))
        .collect()
}

/// STATUS of `dest` once nothing is being saved into it any more (rule 1 of the module
/// doc): at once when the newest claim is older than `bound`.
pub(crate) async fn settled_status(
    client: &mut Client,
    dest: &str,
    newest_ms: i64,
    bound: Duration,
) -> Result<StatusInfo, ImapError> {
    let mut st = client.status(dest).await?;
    let age = Duration::from_millis(
        u64::try_from(
            chrono::Utc::now()
                .timestamp_millis()
                .saturating_sub(newest_ms),
        )
        .unwrap_or(0),
    );
    let Some(left) = bound.checked_sub(age) else {
        return Ok(st);
    };
    let deadline = Instant::now() + left;
    let mut still_since = Instant::now();
    while still_since.elapsed() < QUIET && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        let now = client.status(dest).await?;
        if (now.uidnext, now.messages) != (st.uidnext, st.messages) {
            still_since = Instant::now();
        }
        st = now;
    }
    Ok(st)
}

/// A destination message recovery may pair with an uncertain one.
struct Candidate {
    uid: u32,
    internal_ts: Option<i64>,
    flags: Vec<String>,
    print: Fingerprint,
}

/// The messages of `dest` at or above UID `from`, in UID order, one per UID (a server
/// may send one message's items in several responses).
async fn candidates(
    client: &mut Client,
    dest: &str,
    from: u32,
) -> Result<Vec<Candidate>, UpstreamError> {
    client.select(dest, true).await?;
    let fetched = client
        .uid_fetch_header_fields(&format!("{from}:*"), &FIELDS)
        .await?;
    let mut by_uid: BTreeMap<u32, FetchData> = BTreeMap::new();
    for f in fetched {
        let Some(uid) = f.uid.filter(|u| *u >= from) else {
            continue;
        };
        let e = by_uid.entry(uid).or_default();
        e.flags = f.flags.or(e.flags.take());
        e.internal_ts = f.internal_ts.or(e.internal_ts);
        e.section = f.section.or(e.section.take());
    }
    Ok(by_uid
        .into_iter()
        .map(|(uid, f)| Candidate {
            uid,
            internal_ts: f.internal_ts,
            flags: f.flags.unwrap_or_default(),
            print: Fingerprint::of_headers(f.section.as_deref().unwrap_or_default()),
        })
        .collect())
}

/// Rules 3 and 4 of the module doc.
fn pair(
    spool: &Spool,
    mailbox: &str,
    folder: &str,
    group: &Group<'_>,
    candidates: Vec<Candidate>,
    owned: &crate::spool::OwnedAtDest,
    report: &mut PushReport,
) -> Vec<(u32, Resolution)> {
    // In UID order; a candidate is taken once.
    let mut free: Vec<Option<Candidate>> = candidates
        .into_iter()
        .filter(|c| !owned.uids.contains(&c.uid))
        .map(Some)
        .collect();
    // A message recorded there without a UID owns one copy with its content.
    for (_, _, rec) in &owned.without_uid {
        if let Some(print) = spooled_print(spool, rec) {
            take(&mut free, &print, rec);
        }
    }
    let mut uncertain = group.uncertain.clone();
    uncertain.sort_by_key(|r| r.uid);
    let mut out = Vec::with_capacity(uncertain.len());
    for r in uncertain {
        let print = spooled_print(spool, r);
        let found = match &print {
            Some(p) if !p.is_blank() => take(&mut free, p, r),
            _ => None,
        };
        match found {
            Some(c) => out.push((
                r.uid,
                Resolution::Found {
                    dest_uid: c.uid,
                    flags: c.flags,
                },
            )),
            None => {
                let at_risk = match &print {
                    None => Some("its spooled copy cannot be read"),
                    Some(p) if p.is_blank() => {
                        Some("it has no Message-ID, Date, From, Subject, To, Cc or Content-Type to recognise it by")
                    }
                    Some(_) => None,
                };
                if let Some(why) = at_risk {
                    let line = format!(
                        "folder {folder:?} UID {}: sent again after an interrupted APPEND, \
                         since {why}; the destination may hold it twice",
                        r.uid
                    );
                    tracing::warn!(mailbox, folder, uid = r.uid, "{line}");
                    if let Err(e) = spool.add_notice(mailbox, &line) {
                        tracing::error!(mailbox, error = %e, "cannot record a notice");
                    }
                    report.notices.push(line);
                }
                out.push((r.uid, Resolution::NotThere));
            }
        }
    }
    out
}

/// The first free candidate (in UID order) that can be a copy of `rec` (fingerprint
/// `print`): its fingerprint matches, and it has `rec`'s INTERNALDATE if `rec` was sent
/// with one. Taken out of `free`.
fn take(
    free: &mut [Option<Candidate>],
    print: &Fingerprint,
    rec: &MessageRecord,
) -> Option<Candidate> {
    let dated = !rec.internal_date.is_empty();
    free.iter_mut()
        .find(|c| {
            c.as_ref().is_some_and(|c| {
                print.matches(&c.print) && (!dated || c.internal_ts == Some(rec.internal_ts))
            })
        })?
        .take()
}

/// The fingerprint of a spooled message, from its body; `None` if it cannot be read.
fn spooled_print(spool: &Spool, rec: &MessageRecord) -> Option<Fingerprint> {
    spool
        .get_body(&rec.hash)
        .ok()
        .map(|b| Fingerprint::of_message(&b))
}
