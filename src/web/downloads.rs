//! The CSV files: the per-mailbox report (as `cutover report --csv` writes it) and the
//! skipped and failed items with Microsoft's fields.

use hyper::header::{HeaderValue, CONTENT_DISPOSITION};
use hyper::StatusCode;

use super::http::{self, Resp};
use super::Shared;

fn attachment(mut r: Resp, name: &'static str) -> Resp {
    r.headers_mut()
        .insert(CONTENT_DISPOSITION, HeaderValue::from_static(name));
    r
}

/// `GET /api/report.csv`.
pub fn report(shared: &Shared) -> Resp {
    let mut out = Vec::new();
    match crate::daemon::report::write_csv(&shared.snapshot(), &mut out) {
        Ok(()) => attachment(
            http::full(StatusCode::OK, "text/csv; charset=utf-8", out),
            "attachment; filename=\"cutover-report.csv\"",
        ),
        Err(e) => http::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `GET /api/problems.csv`: every mailbox's, or those of `mailbox`.
pub fn problems(shared: &Shared, mailbox: Option<&str>) -> Resp {
    let snap = shared.snapshot();
    let ids: Vec<String> = match mailbox {
        Some(m) => match super::rows::find(&snap, m) {
            Some(r) => vec![r.mailbox.clone()],
            None => return http::error(StatusCode::NOT_FOUND, "not a mailbox of this migration"),
        },
        None => snap.mailboxes.iter().map(|r| r.mailbox.clone()).collect(),
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    let header = [
        "mailbox", "folder", "date", "subject", "sender", "size", "state", "reason", "uid",
    ];
    let mut ok = w.write_record(header).is_ok();
    for id in &ids {
        let items = super::problems::items(&shared.spool, id);
        for i in items.items {
            ok &= w
                .write_record([
                    id.as_str(),
                    &i.folder,
                    &i.date,
                    &i.subject,
                    &i.sender,
                    &i.size.to_string(),
                    &i.state,
                    &i.reason,
                    &i.uid.to_string(),
                ])
                .is_ok();
        }
        if items.omitted > 0 {
            let more = format!("{} more items not listed", items.omitted);
            ok &= w
                .write_record([id.as_str(), "", "", "", "", "", "omitted", &more, ""])
                .is_ok();
        }
    }
    match (ok, w.into_inner()) {
        (true, Ok(out)) => attachment(
            http::full(StatusCode::OK, "text/csv; charset=utf-8", out),
            "attachment; filename=\"cutover-skipped-failed.csv\"",
        ),
        _ => http::error(StatusCode::INTERNAL_SERVER_ERROR, "cannot write the CSV"),
    }
}
