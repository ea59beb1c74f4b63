//! `POST /api/controls/{pause,resume,retry-errors,sync-now,complete}`: the same requests
//! as the CLI's commands, left for the daemon in the spool directory
//! ([`crate::daemon::requests`]); the daemon acts on them within a second, in the spool,
//! so they survive a restart.
//!
//! The body is JSON, `{"mailboxes": ["a@example.org"]}` (empty or absent: every mailbox).
//! Only `Content-Type: application/json` is accepted: a page on another site can make a
//! browser send a form or a "simple" POST here, but not a JSON one without asking first
//! (a CORS preflight, which this server never grants). See [`super::server`] for the
//! Origin and Host checks.

use serde::Deserialize;

use super::http::{self, Resp};
use super::Shared;
use crate::daemon::requests::{self, Request, RequestKind};
use hyper::StatusCode;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    mailboxes: Vec<String>,
}

pub fn kind(action: &str) -> Option<RequestKind> {
    Some(match action {
        "pause" => RequestKind::Pause,
        "resume" => RequestKind::Resume,
        "retry-errors" => RequestKind::RetryErrors,
        "sync-now" => RequestKind::SyncNow,
        "complete" => RequestKind::Complete,
        _ => return None,
    })
}

/// Submits the request; 202 with what was asked, 400 for a bad body, 404 for a mailbox
/// that is not being migrated.
pub fn submit(shared: &Shared, kind: RequestKind, body: &[u8]) -> Resp {
    let parsed: Body = if body.iter().all(u8::is_ascii_whitespace) {
        Body::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => return http::error(StatusCode::BAD_REQUEST, &format!("bad JSON body: {e}")),
        }
    };
    let snap = shared.snapshot();
    let mut mailboxes = Vec::new();
    let mut unknown = Vec::new();
    for m in &parsed.mailboxes {
        match super::rows::find(&snap, m.trim()) {
            Some(r) => mailboxes.push(r.mailbox.clone()),
            None => unknown.push(m.clone()),
        }
    }
    if !unknown.is_empty() {
        return http::json_status(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": "not a mailbox of this migration", "mailboxes": unknown }),
        );
    }
    let req = Request { kind, mailboxes };
    match requests::submit(&shared.spool_dir, &req) {
        Ok(_) => {
            tracing::info!(request = kind.as_str(), mailboxes = ?req.mailboxes, "request from the status page");
            http::json_status(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "submitted": kind.as_str(), "mailboxes": req.mailboxes }),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot leave a request for the daemon");
            http::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot leave the request for the daemon",
            )
        }
    }
}
