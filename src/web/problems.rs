//! `GET /api/mailboxes/{id}/problems`: the skipped and failed messages of a mailbox with
//! Microsoft's fields (folder, date, subject, sender, size, reason), and its notices.
//!
//! Subject and sender come from the header of the spooled copy when there is one (a
//! failed message keeps its body for the retry; a message skipped for its size was never
//! fetched, and its reason already quotes the subject the source gave).

use serde::Serialize;

use crate::spool::{MessageState, Spool};

/// Items listed per mailbox; the rest are counted.
pub const MAX_ITEMS: usize = 1000;
/// Headers read from spooled copies per request, at most (each is a body read), and only
/// of copies up to [`MAX_HEADER_READ_BYTES`]: the page asks again every few seconds while
/// a detail is open, and a mailbox's failures may be big messages.
const MAX_HEADER_READS: usize = 100;
const MAX_HEADER_READ_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub folder: String,
    pub uidvalidity: u32,
    pub uid: u32,
    /// `skipped`, `failed` or `notice`.
    pub state: String,
    /// INTERNALDATE as the source gave it.
    pub date: String,
    pub subject: String,
    pub sender: String,
    pub size: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Items {
    pub items: Vec<Item>,
    pub omitted: u64,
}

/// The skipped and failed items of `mailbox`, then its notices.
pub fn items(spool: &Spool, mailbox: &str) -> Items {
    let mut out = Vec::new();
    let mut omitted = 0u64;
    let mut reads = 0;
    for folder in spool.folders(mailbox).unwrap_or_default() {
        for uv in spool.generations(mailbox, &folder.name).unwrap_or_default() {
            for rec in spool
                .messages(mailbox, &folder.name, uv)
                .unwrap_or_default()
            {
                let (state, reason) = match &rec.state {
                    // cutover's own notice at the source: not the user's, not a problem.
                    s if crate::spool::is_own_notice(s) => continue,
                    MessageState::Skipped { reason } => ("skipped", reason.clone()),
                    MessageState::Failed {
                        reason, attempts, ..
                    } => ("failed", format!("{reason} (after {attempts} attempts)")),
                    _ => continue,
                };
                if out.len() >= MAX_ITEMS {
                    omitted += 1;
                    continue;
                }
                let (mut subject, mut sender) = (String::new(), String::new());
                if rec.hash != [0; 32]
                    && rec.size <= MAX_HEADER_READ_BYTES
                    && reads < MAX_HEADER_READS
                {
                    reads += 1;
                    if let Ok(body) = spool.get_body(&rec.hash) {
                        subject = header(&body, "subject").unwrap_or_default();
                        sender = header(&body, "from").unwrap_or_default();
                    }
                }
                if subject.is_empty() {
                    subject = quoted_subject(&reason).unwrap_or_default();
                }
                out.push(Item {
                    folder: folder.name.clone(),
                    uidvalidity: uv,
                    uid: rec.uid,
                    state: state.into(),
                    date: rec.internal_date.clone(),
                    subject,
                    sender,
                    size: rec.size,
                    reason,
                });
            }
        }
    }
    for (at, text) in spool.notices(mailbox).unwrap_or_default() {
        if out.len() >= MAX_ITEMS {
            omitted += 1;
            continue;
        }
        out.push(Item {
            folder: String::new(),
            uidvalidity: 0,
            uid: 0,
            state: "notice".into(),
            date: crate::daemon::report::time(Some(at)),
            subject: String::new(),
            sender: String::new(),
            size: 0,
            reason: text,
        });
    }
    Items {
        items: out,
        omitted,
    }
}

/// The `subject "..."` the source's reason for a skipped oversized message quotes.
fn quoted_subject(reason: &str) -> Option<String> {
    let i = reason.find("subject \"")? + "subject ".len();
    let s: String = serde_json::from_str::<String>(reason.get(i..)?)
        .ok()
        .or_else(|| {
            // The reason goes on after the quoted subject: cut at its closing quote.
            let rest = reason.get(i + 1..)?;
            let end = rest.find('"')?;
            Some(rest[..end].to_string())
        })?;
    Some(s)
}

/// One header of a message (unfolded, RFC 2047 words decoded), from its header block
/// (at most the first 64 KiB when there is no blank line).
pub fn header(body: &[u8], name: &str) -> Option<String> {
    let end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(body.len().min(64 * 1024));
    crate::imap::response::header_value(&body[..end.min(body.len())], name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_unfolded_and_decoded() {
        let m = b"From: =?UTF-8?Q?Ren=C3=A9e?= <renee@x.test>\r\nSubject: =?utf-8?B?SMOpbGxv?=\r\n =?utf-8?B?IHfDtnJsZA==?=\r\nX: y\r\n\r\nSubject: not this\r\n";
        assert_eq!(header(m, "subject").unwrap(), "Héllo wörld");
        assert_eq!(header(m, "FROM").unwrap(), "Renée <renee@x.test>");
        assert_eq!(header(m, "to"), None);
        let odd = b"Subject: a =?koi8-r?B?x?= b\r\nFrom: =?utf-8?Q?broken\r\n\r\n";
        assert_eq!(header(odd, "subject").unwrap(), "a =?koi8-r?B?x?= b");
        assert_eq!(header(odd, "from").unwrap(), "=?utf-8?Q?broken");
    }

    #[test]
    fn subject_from_a_size_reason() {
        let r = "40000000 bytes, over max_message_bytes (1000); date 01-Jan-2024 10:00:00 +0000; subject \"Big \\\"one\\\"\"";
        assert_eq!(quoted_subject(r).unwrap(), "Big \"one\"");
        assert_eq!(quoted_subject("no subject here"), None);
    }
}
