//! Delivering the letters: the notice to the source INBOX, the welcome to the Office 365
//! INBOX, each once per mailbox.
//!
//! A delivery is recorded in the spool in two steps around its APPEND (see
//! `spool/notified.rs`): first the Message-ID it will carry, then where it landed. A run
//! stopped in between looks for that Message-ID (UID SEARCH HEADER) before it sends
//! anything, so a letter is neither lost for good nor sent twice. The same search finds
//! a letter appended to a server without UIDPLUS, which gives no APPENDUID.
//!
//! The notice must not follow the user to Office 365: its UID is recorded as a skipped
//! message of the source INBOX ([`Spool::exclude_own_notice`]), which the source reader
//! takes for a message it knows. That holds for as long as the INBOX keeps its
//! UIDVALIDITY; a source INBOX that gets a new UIDVALIDITY is read again as new, and
//! the notice in it is copied with the rest (the README says so).

use std::collections::HashMap;

use anyhow::Context;

use super::template::{Template, Values};
use super::{words, Kind};
use crate::accounts::Account;
use crate::engine::Engine;
use crate::imap::client::{AppendItem, AppendOutcome, Client};
use crate::spool::{MessageState, Notified, Spool};

/// The folder both letters go to, on both sides.
const INBOX: &str = "INBOX";

/// What became of one mailbox's letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Appended now, at this time (Unix seconds).
    Sent(i64),
    /// Appended by an earlier run (at this time); not sent again.
    Already(i64),
    /// An earlier run was stopped during its APPEND, and the letter was found there.
    Found(i64),
}

impl Delivery {
    /// A line for the admin.
    pub fn describe(&self, kind: Kind) -> String {
        let what = match kind {
            Kind::Before => "notice",
            Kind::After => "welcome",
        };
        let t = |at: &i64| crate::daemon::report::time(Some(*at));
        match self {
            Delivery::Sent(at) => format!("{what} delivered at {}", t(at)),
            Delivery::Already(at) => format!(
                "{what} already delivered at {} (not sent again{})",
                t(at),
                if kind == Kind::Before {
                    "; --again to send another"
                } else {
                    ""
                }
            ),
            Delivery::Found(at) => format!(
                "{what} of an interrupted run found in the INBOX; recorded as delivered at {}",
                t(at)
            ),
        }
    }
}

/// The display names of the CSV's optional `DisplayName` column, by address; empty when
/// the CSV cannot be read or has no such column.
pub fn display_names(engine: &Engine) -> HashMap<String, String> {
    match std::fs::read(&engine.config.mailboxes) {
        Ok(text) => crate::accounts::display_names(&text),
        Err(_) => HashMap::new(),
    }
}

/// The values common to both letters; the counts are the caller's.
fn base_values(engine: &Engine, account: &Account, names: &HashMap<String, String>) -> Values {
    let notify = &engine.config.notify;
    Values {
        email: account.email.clone(),
        username: account.username.clone(),
        display_name: names
            .get(&account.email.to_lowercase())
            .cloned()
            .unwrap_or_else(|| account.email.clone()),
        cutover_date: notify.cutover_date.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// (state, reason) of every item the report lists as skipped or failed for `mailbox`.
fn left_behind(spool: &Spool, mailbox: &str) -> Vec<(String, String)> {
    let (problems, _) = crate::daemon::report::problems(spool, mailbox, usize::MAX);
    problems
        .into_iter()
        .filter(|p| p.state == "skipped" || p.state == "failed")
        .map(|p| (p.state, p.reason))
        .collect()
}

/// A Message-ID no other message has: random, in the mailbox's own domain.
fn new_message_id(kind: Kind, email: &str) -> String {
    let domain = email
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or("cutover.invalid");
    format!(
        "cutover-{}-{:016x}{:016x}@{domain}",
        kind.as_str(),
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

fn internal_date(at: i64) -> (String, String) {
    let t = chrono::DateTime::from_timestamp(at, 0).unwrap_or_default();
    (
        t.format("%d-%b-%Y %H:%M:%S +0000").to_string(),
        t.to_rfc2822(),
    )
}

/// The UID of the message with `message_id` in the selected folder, if there is one.
async fn find(client: &mut Client, message_id: &str) -> anyhow::Result<Option<u32>> {
    let uids = client
        .uid_search_header("Message-ID", &format!("<{message_id}>"))
        .await?;
    Ok(uids.last().copied())
}

/// The UID of a letter a stopped run recorded as pending, if it reached the INBOX.
///
/// Looked for at once; if it is not there, the killed run's APPEND may still be on its
/// way into the folder (a server goes on with a dead session's commands), so it is
/// looked for again once the INBOX has stood still, as the recovery of interrupted
/// messages does (`upstream::recover`), at most `bound` (the client's timeout). Returns
/// the UIDVALIDITY of the INBOX with it.
async fn find_pending(
    client: &mut Client,
    message_id: &str,
    bound: std::time::Duration,
) -> anyhow::Result<(u32, Option<u32>)> {
    let info = client.select(INBOX, true).await?;
    if let Some(uid) = find(client, message_id).await? {
        return Ok((info.uidvalidity, Some(uid)));
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    crate::upstream::recover::settled_status(client, INBOX, now_ms, bound).await?;
    let info = client.select(INBOX, true).await?;
    Ok((info.uidvalidity, find(client, message_id).await?))
}

/// Appends `body` to the INBOX of `client` unread, dated `at`; returns (UIDVALIDITY, UID),
/// by APPENDUID or else by its Message-ID.
async fn append(
    client: &mut Client,
    body: &[u8],
    at: i64,
    message_id: &str,
) -> anyhow::Result<(u32, u32)> {
    let (date, _) = internal_date(at);
    let item = AppendItem {
        flags: &[],
        internal_date: Some(&date),
        body,
    };
    let outcome = client
        .append_batch(INBOX, std::slice::from_ref(&item))
        .await?
        .into_iter()
        .next();
    match outcome {
        Some(AppendOutcome::Appended { uidvalidity, uid }) => Ok((uidvalidity, uid)),
        Some(AppendOutcome::AppendedNoUid) => {
            let info = client.select(INBOX, true).await?;
            let uid = find(client, message_id).await?.with_context(|| {
                format!("appended, but not found again by its Message-ID <{message_id}>")
            })?;
            Ok((info.uidvalidity, uid))
        }
        Some(AppendOutcome::Refused { text, .. }) => anyhow::bail!("the server refused it: {text}"),
        Some(AppendOutcome::RefusedTogether { text, .. }) => {
            anyhow::bail!("the server refused it: {text}")
        }
        None => anyhow::bail!("the server did not answer the APPEND"),
    }
}

/// Items and bytes of the mailbox at the source, every selectable folder.
async fn source_size(client: &mut Client) -> anyhow::Result<(u64, u64)> {
    let (mut items, mut bytes) = (0u64, 0u64);
    for f in client.list().await? {
        if !f.selectable() {
            continue;
        }
        let info = client.select(&f.name, true).await?;
        if info.exists == 0 {
            continue;
        }
        let meta = client.uid_fetch_meta("1:*", None).await?;
        items += meta.len() as u64;
        bytes += meta.iter().map(|m| m.size.unwrap_or(0) as u64).sum::<u64>();
    }
    Ok((items, bytes))
}

/// `cutover notify before` for one mailbox: the filled notice, APPENDed to its INBOX at
/// the source and excluded from the migration. With `again`, sent even if it was before.
pub async fn before(
    engine: &Engine,
    template: &Template,
    account: &Account,
    names: &HashMap<String, String>,
    again: bool,
) -> anyhow::Result<Delivery> {
    let spool = &engine.spool;
    let id = &account.email;
    let recorded = spool.notified(id, Kind::Before.as_str())?;
    if let Some(at) = recorded.as_ref().and_then(|n| n.delivered_unix) {
        if !again {
            return Ok(Delivery::Already(at));
        }
    }
    if engine.config.source.kind == crate::config::SourceKind::Maildir {
        anyhow::bail!(
            "the notice is put into the INBOX at the source over IMAP, and this [source] is a \
             Maildir, which cutover only reads (never writes); deliver the notice by mail instead"
        );
    }
    let creds = engine
        .config
        .source
        .credentials(&account.username, account.password.as_ref())?;
    let mut client = engine.source.session(&creds).await?;
    let result = before_in(
        engine,
        &mut client,
        template,
        account,
        names,
        recorded,
        again,
    )
    .await;
    client.logout().await;
    result
}

async fn before_in(
    engine: &Engine,
    client: &mut Client,
    template: &Template,
    account: &Account,
    names: &HashMap<String, String>,
    recorded: Option<Notified>,
    again: bool,
) -> anyhow::Result<Delivery> {
    let spool = &engine.spool;
    let id = &account.email;
    let lang = engine.config.notify.language;
    if let Some(pending) = recorded.filter(|n| n.delivered_unix.is_none() && !again) {
        let bound = engine.config.source.timeout();
        if let (uidvalidity, Some(uid)) = find_pending(client, &pending.message_id, bound).await? {
            let now = chrono::Utc::now().timestamp();
            // The body is not at hand: the record only needs to exist for the reader.
            spool.exclude_own_notice(id, INBOX, uidvalidity, uid, b"", now)?;
            spool.set_notified(
                id,
                Kind::Before.as_str(),
                &Notified {
                    delivered_unix: Some(now),
                    folder: INBOX.into(),
                    uidvalidity,
                    uid,
                    ..pending
                },
            )?;
            return Ok(Delivery::Found(now));
        }
    }
    let mut values = base_values(engine, account, names);
    if template.uses_placeholder("items") || template.uses_placeholder("bytes") {
        let (items, bytes) = source_size(client).await?;
        values.items = items.to_string();
        values.bytes = words::bytes(bytes, lang);
    }
    values.skipped = words::skipped(&left_behind(spool, id), lang, true);
    let now = chrono::Utc::now().timestamp();
    let message_id = new_message_id(Kind::Before, id);
    let (_, date) = internal_date(now);
    let body = template.fill(&values, &message_id, &date);
    let mut record = Notified {
        message_id: message_id.clone(),
        ..Default::default()
    };
    // Before the APPEND: a run stopped during it finds the notice by this Message-ID.
    spool.set_notified(id, Kind::Before.as_str(), &record)?;
    let (uidvalidity, uid) = append(client, &body, now, &message_id).await?;
    if !spool.exclude_own_notice(id, INBOX, uidvalidity, uid, &body, now)? {
        // The reader had already recorded the UID (it was read in the moment between):
        // then it may be on its way; say so rather than claim it is left behind.
        if let Some(rec) = spool.get_message(id, INBOX, uidvalidity, uid)? {
            if !matches!(rec.state, MessageState::Skipped { .. }) {
                tracing::warn!(mailbox = %id, uid, "the notice was read by a sync before it could be excluded");
            }
        }
    }
    record.delivered_unix = Some(now);
    record.folder = INBOX.into();
    record.uidvalidity = uidvalidity;
    record.uid = uid;
    spool.set_notified(id, Kind::Before.as_str(), &record)?;
    Ok(Delivery::Sent(now))
}

/// The welcome for one Completed mailbox: APPENDed to its Office 365 INBOX, unread, dated
/// `completed_unix`. Once: a mailbox already welcomed is left alone unless `again`.
pub async fn after(
    engine: &Engine,
    template: &Template,
    account: &Account,
    names: &HashMap<String, String>,
    completed_unix: i64,
    again: bool,
) -> anyhow::Result<Delivery> {
    let spool = &engine.spool;
    let id = &account.email;
    let recorded = spool.notified(id, Kind::After.as_str())?;
    if let Some(at) = recorded.as_ref().and_then(|n| n.delivered_unix) {
        if !again {
            return Ok(Delivery::Already(at));
        }
    }
    let creds = engine.dest_login(id)?.credentials().await?;
    let mut client = engine.upstream.session(&creds).await?;
    let result = after_in(
        engine,
        &mut client,
        template,
        account,
        names,
        recorded.filter(|_| !again),
        completed_unix,
    )
    .await;
    client.logout().await;
    result
}

async fn after_in(
    engine: &Engine,
    client: &mut Client,
    template: &Template,
    account: &Account,
    names: &HashMap<String, String>,
    recorded: Option<Notified>,
    completed_unix: i64,
) -> anyhow::Result<Delivery> {
    let spool = &engine.spool;
    let id = &account.email;
    let lang = engine.config.notify.language;
    if let Some(pending) = recorded.filter(|n| n.delivered_unix.is_none()) {
        let bound = engine.config.upstream.timeout();
        if let (uidvalidity, Some(uid)) = find_pending(client, &pending.message_id, bound).await? {
            let now = chrono::Utc::now().timestamp();
            spool.set_notified(
                id,
                Kind::After.as_str(),
                &Notified {
                    delivered_unix: Some(now),
                    folder: INBOX.into(),
                    uidvalidity,
                    uid,
                    ..pending
                },
            )?;
            return Ok(Delivery::Found(now));
        }
    }
    let counts = spool.counts(id)?;
    let mut values = base_values(engine, account, names);
    values.items = counts.appended.to_string();
    values.bytes = words::bytes(counts.bytes_appended, lang);
    values.skipped = words::skipped(&left_behind(spool, id), lang, false);
    let message_id = new_message_id(Kind::After, id);
    let (_, date) = internal_date(completed_unix);
    let body = template.fill(&values, &message_id, &date);
    let mut record = Notified {
        message_id: message_id.clone(),
        ..Default::default()
    };
    spool.set_notified(id, Kind::After.as_str(), &record)?;
    let (uidvalidity, uid) = append(client, &body, completed_unix, &message_id).await?;
    let now = chrono::Utc::now().timestamp();
    record.delivered_unix = Some(now);
    record.folder = INBOX.into();
    record.uidvalidity = uidvalidity;
    record.uid = uid;
    spool.set_notified(id, Kind::After.as_str(), &record)?;
    Ok(Delivery::Sent(now))
}

/// The daemon's welcome for a mailbox that just reached Completed, when `[notify] after`
/// is set. Reported in the log; a failure does not undo the completion (`cutover notify
/// after` sends it by hand).
pub async fn welcome_completed(
    engine: std::sync::Arc<Engine>,
    account: Account,
    completed_unix: i64,
) {
    let template = match engine.config.notify.template(Kind::After) {
        Ok(Some(t)) => t,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(mailbox = %account.email, error = %e, "the welcome template cannot be used; no welcome sent");
            return;
        }
    };
    let names = display_names(&engine);
    match after(&engine, &template, &account, &names, completed_unix, false).await {
        Ok(d) => tracing::info!(mailbox = %account.email, "{}", d.describe(Kind::After)),
        Err(e) => tracing::error!(
            mailbox = %account.email,
            error = %format!("{e:#}"),
            "the welcome could not be delivered; `cutover notify after --mailbox {}` sends it by hand",
            account.email
        ),
    }
}
