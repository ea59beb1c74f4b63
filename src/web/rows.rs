//! `GET /api/mailboxes` and `/api/mailboxes/{id}`: one row per mailbox, filtered, sorted
//! and paged on the server so that the page stays fast with thousands of mailboxes.

use std::collections::HashMap;

use serde::Serialize;

use super::inventory::Counts;
use crate::daemon::report::{MailboxRow, Snapshot};
use crate::daemon::state::Status;

/// Rows per page unless asked; and the most a page may have.
pub const PER_PAGE: usize = 100;
pub const MAX_PER_PAGE: usize = 1000;

/// A mailbox as the table shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub mailbox: String,
    pub status: String,
    pub items_synced: u64,
    pub items_skipped: u64,
    pub items_failed: u64,
    pub bytes: u64,
    pub last_sync_unix: Option<i64>,
    pub status_since_unix: i64,
    pub last_error: Option<String>,
    pub passes: u64,
    pub cutover_since_unix: Option<i64>,
    pub complete_after_unix: Option<i64>,
    pub completed_unix: Option<i64>,
    /// From the spool, counted a few seconds ago.
    pub counts: Counts,
    /// Done (at the destination or skipped) over found at the source, 0 to 1.
    pub progress_messages: f64,
    pub progress_bytes: f64,
    /// Why the mailbox is not moving, in a few words; empty while it moves.
    pub waiting_on: String,
    pub throttled_until_unix: Option<i64>,
    /// When the letters of `[notify]` were delivered: the notice at the source
    /// (`before`), the welcome at the destination (`after`); None: not (yet).
    pub notice_delivered_unix: Option<i64>,
    pub welcome_delivered_unix: Option<i64>,
}

fn ratio(part: u64, whole: u64, empty: f64) -> f64 {
    if whole == 0 {
        empty
    } else {
        (part as f64 / whole as f64).min(1.0)
    }
}

/// A few words for what a failed pass's error says the mailbox waits on (the texts are
/// those of [`crate::imap::ImapError`] and of the engine).
fn error_kind(e: &str) -> &'static str {
    let l = e.to_lowercase();
    if l.contains("refused the login") || l.contains("authenticat") || l.contains("oauth") {
        "login failing"
    } else if e.contains("CREATE refused") {
        "destination folder refused"
    } else if l.contains("quota") {
        "destination quota (retry errors once fixed)"
    } else if l.contains("throttled") {
        "throttled"
    } else if l.contains("cannot connect")
        || l.contains("did not answer")
        || l.contains("closed the connection")
        || l.contains("connection to")
        || l.contains("connection lost")
    {
        "server unreachable"
    } else {
        "error (see last error)"
    }
}

/// What the mailbox waits on, from its status, its last error and its throttle.
pub fn waiting_on(r: &MailboxRow, c: &Counts, throttled_until: Option<i64>) -> String {
    if let Some(t) = throttled_until {
        return format!("throttled until {}", hms(t));
    }
    match Status::parse(&r.status) {
        Some(Status::Queued) => "source connection limit (waiting for a slot)".into(),
        Some(Status::Syncing | Status::IncrementalSyncing) => String::new(),
        Some(Status::Failed) => match &r.last_error {
            Some(e) => error_kind(e).into(),
            None => "error".into(),
        },
        Some(Status::CutoverPending) => match r.complete_after_unix {
            Some(t) => format!(
                "cutover grace until {}",
                crate::daemon::report::time(Some(t))
            ),
            None => "cutover".into(),
        },
        Some(Status::Completed) => "nothing to do (completed)".into(),
        Some(Status::Stopped) => "paused by the admin (resume to go on)".into(),
        Some(Status::Synced) if c.failed > 0 || r.items_failed > 0 => {
            "failed items (retry errors)".into()
        }
        Some(Status::Synced) => "nothing to do".into(),
        None => String::new(),
    }
}

fn hms(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

pub fn row(r: &MailboxRow, c: Counts, backoff: &HashMap<String, i64>) -> Row {
    let throttled_until = backoff.get(&r.mailbox).copied();
    let done = c.dest_messages + c.skipped;
    let finished = matches!(
        Status::parse(&r.status),
        Some(Status::Synced | Status::Completed)
    );
    let empty = if finished { 1.0 } else { 0.0 };
    Row {
        mailbox: r.mailbox.clone(),
        status: r.status.clone(),
        items_synced: r.items_synced,
        items_skipped: r.items_skipped,
        items_failed: r.items_failed,
        bytes: r.bytes,
        last_sync_unix: r.last_sync_unix,
        status_since_unix: r.status_since_unix,
        last_error: r.last_error.clone(),
        passes: r.passes,
        cutover_since_unix: r.cutover_since_unix,
        complete_after_unix: r.complete_after_unix,
        completed_unix: r.completed_unix,
        progress_messages: ratio(done, c.source_messages, empty),
        progress_bytes: ratio(c.dest_bytes, c.source_bytes, empty),
        waiting_on: waiting_on(r, &c, throttled_until),
        throttled_until_unix: throttled_until,
        notice_delivered_unix: r.notice_delivered_unix,
        welcome_delivered_unix: r.welcome_delivered_unix,
        counts: c,
    }
}

/// What `GET /api/mailboxes` was asked.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Statuses to keep (any of them); empty: all.
    pub status: Vec<String>,
    /// Part of the address, any case.
    pub search: String,
    pub sort: String,
    pub descending: bool,
    pub page: usize,
    pub per_page: usize,
}

impl Query {
    pub fn parse(pairs: &[(String, String)]) -> Query {
        let mut q = Query {
            page: 1,
            per_page: PER_PAGE,
            sort: "mailbox".into(),
            ..Default::default()
        };
        for (k, v) in pairs {
            match k.as_str() {
                "status" => q.status.extend(
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from),
                ),
                "q" => q.search = v.trim().to_lowercase(),
                "sort" => q.sort = v.clone(),
                "order" => q.descending = v == "desc",
                "page" => q.page = v.parse().unwrap_or(1).max(1),
                "per_page" => q.per_page = v.parse().unwrap_or(PER_PAGE).clamp(1, MAX_PER_PAGE),
                _ => {}
            }
        }
        q
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// Rows that match, over all pages.
    pub total: usize,
    pub page: usize,
    pub per_page: usize,
    pub pages: usize,
    pub rows: Vec<Row>,
}

/// The rows of `snap` that match `q`, sorted, one page of them.
pub fn page(
    snap: &Snapshot,
    counts: &HashMap<String, Counts>,
    backoff: &HashMap<String, i64>,
    q: &Query,
) -> Page {
    let mut rows: Vec<Row> = snap
        .mailboxes
        .iter()
        .filter(|r| {
            q.status.is_empty() || q.status.iter().any(|s| s.eq_ignore_ascii_case(&r.status))
        })
        .filter(|r| q.search.is_empty() || r.mailbox.to_lowercase().contains(&q.search))
        .map(|r| {
            row(
                r,
                counts.get(&r.mailbox).copied().unwrap_or_default(),
                backoff,
            )
        })
        .collect();
    let key = q.sort.as_str();
    rows.sort_by(|a, b| {
        let o = match key {
            "status" => a.status.cmp(&b.status),
            "progress" => a.progress_messages.total_cmp(&b.progress_messages),
            "items_synced" => a.items_synced.cmp(&b.items_synced),
            "items_skipped" => a.items_skipped.cmp(&b.items_skipped),
            "items_failed" => a.items_failed.cmp(&b.items_failed),
            "bytes" => a.counts.source_bytes.cmp(&b.counts.source_bytes),
            "last_sync" => a.last_sync_unix.cmp(&b.last_sync_unix),
            "status_since" => a.status_since_unix.cmp(&b.status_since_unix),
            "waiting_on" => a.waiting_on.cmp(&b.waiting_on),
            _ => std::cmp::Ordering::Equal,
        };
        o.then_with(|| a.mailbox.cmp(&b.mailbox))
    });
    if q.descending {
        rows.reverse();
    }
    let total = rows.len();
    let pages = total.div_ceil(q.per_page).max(1);
    let start = (q.page - 1).saturating_mul(q.per_page).min(total);
    let rows = rows.into_iter().skip(start).take(q.per_page).collect();
    Page {
        total,
        page: q.page,
        per_page: q.per_page,
        pages,
        rows,
    }
}

/// The snapshot's row of `id`, matched without regard to case.
pub fn find<'a>(snap: &'a Snapshot, id: &str) -> Option<&'a MailboxRow> {
    let row = snap.mailboxes.iter().find(|r| r.mailbox == id).or_else(|| {
        snap.mailboxes
            .iter()
            .find(|r| r.mailbox.eq_ignore_ascii_case(id))
    });
    row.map(|r| &**r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::MailboxState;

    fn snap(n: usize) -> Snapshot {
        Snapshot {
            written_unix: 0,
            pid: 1,
            spool_scan: None,
            domains: Vec::new(),
            mailboxes: (0..n)
                .map(|i| {
                    let st = MailboxState {
                        id: format!("user{i:04}@x.test"),
                        status: if i % 10 == 3 { "Failed" } else { "Synced" }.into(),
                        last_error: (i % 10 == 3)
                            .then(|| "source: login refused: AUTHENTICATIONFAILED".into()),
                        items_synced: i as u64,
                        ..Default::default()
                    };
                    std::sync::Arc::new(MailboxRow::new(&st, (vec![], 0), 0))
                })
                .collect(),
        }
    }

    fn q(s: &str) -> Query {
        Query::parse(&super::super::http::query(Some(s)))
    }

    #[test]
    fn filters_sorts_and_pages_five_thousand_rows() {
        let s = snap(5000);
        let none = HashMap::new();
        let p = page(&s, &HashMap::new(), &none, &q(""));
        assert_eq!((p.total, p.pages, p.rows.len()), (5000, 50, 100));
        assert_eq!(p.rows[0].mailbox, "user0000@x.test");
        let p = page(
            &s,
            &HashMap::new(),
            &none,
            &q("status=Failed&per_page=1000&sort=items_synced&order=desc"),
        );
        assert_eq!(p.total, 500);
        assert_eq!(p.rows[0].mailbox, "user4993@x.test");
        assert!(p
            .rows
            .iter()
            .all(|r| r.status == "Failed" && r.waiting_on == "login failing"));
        let p = page(
            &s,
            &HashMap::new(),
            &none,
            &q("q=USER012&page=2&per_page=5"),
        );
        assert_eq!(p.total, 10);
        assert_eq!(p.rows.len(), 5);
        assert_eq!(p.rows[0].mailbox, "user0125@x.test");
        let p = page(&s, &HashMap::new(), &none, &q("page=999"));
        assert!(p.rows.is_empty());
        assert_eq!(
            find(&s, "USER0001@X.TEST").unwrap().mailbox,
            "user0001@x.test"
        );
    }

    #[test]
    fn progress_and_waiting_on() {
        let s = snap(1);
        let c = Counts {
            source_messages: 10,
            source_bytes: 1000,
            dest_messages: 4,
            dest_bytes: 250,
            skipped: 1,
            ..Default::default()
        };
        let mut backoff = HashMap::new();
        let r = row(&s.mailboxes[0], c, &backoff);
        assert_eq!(r.progress_messages, 0.5);
        assert_eq!(r.progress_bytes, 0.25);
        assert_eq!(r.waiting_on, "nothing to do");
        backoff.insert("user0000@x.test".to_string(), 3600);
        let r = row(&s.mailboxes[0], c, &backoff);
        assert_eq!(r.waiting_on, "throttled until 01:00:00Z");
        for (e, want) in [
            ("source: 127.0.0.1 refused the login for bob: Authentication failed.", "login failing"),
            ("CREATE refused by outlook.office365.com: No [CANNOT] bad name", "destination folder refused"),
            ("folder \"INBOX\" UID 1: destination refused APPEND to \"INBOX\": No [OVERQUOTA] Mailbox is full", "destination quota (retry errors once fixed)"),
            ("source: cannot connect to 127.0.0.1:993: refused", "server unreachable"),
            ("internal error: boom", "error (see last error)"),
        ] {
            assert_eq!(error_kind(e), want, "{e}");
        }
        // Nothing found yet at the source: a Synced mailbox is done, a Syncing one not.
        let r = row(&s.mailboxes[0], Counts::default(), &HashMap::new());
        assert_eq!(r.progress_messages, 1.0);
    }
}
