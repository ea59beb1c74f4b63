//! Which handler answers which request.

use std::sync::Arc;

use hyper::{Method, StatusCode};

use super::http::{self, Resp};
use super::Shared;

/// Answers a request whose body (for a POST) was read already.
pub fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Resp {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let pairs = http::query(query);
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match (method, segs.as_slice()) {
        (&Method::GET, ["healthz"]) => health(shared),
        (&Method::GET, ["metrics"]) => super::prom::metrics(shared),
        (&Method::GET, ["api", "status"]) => http::json(&super::overview::build(shared)),
        (&Method::GET, ["api", "history"]) => {
            let h = shared
                .history
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            http::json(&serde_json::json!({ "points": h.chart() }))
        }
        (&Method::GET, ["api", "events"]) => super::events::stream(shared.clone()),
        (&Method::GET, ["api", "mailboxes"]) => {
            let q = super::rows::Query::parse(&pairs);
            let inv = shared.inventory();
            let backoff = crate::metrics::get().in_backoff(chrono::Utc::now().timestamp());
            http::json(&super::rows::page(
                &shared.snapshot(),
                &inv.mailboxes,
                &backoff,
                &q,
            ))
        }
        (&Method::GET, ["api", "mailboxes", id, rest @ ..]) => {
            let Some(id) = http::percent_decode(id, false) else {
                return http::error(StatusCode::BAD_REQUEST, "bad mailbox name");
            };
            mailbox(shared, &id, rest)
        }
        (&Method::GET, ["api", "report.csv"]) => super::downloads::report(shared),
        (&Method::GET, ["api", "problems.csv"]) => {
            super::downloads::problems(shared, get("mailbox"))
        }
        (&Method::POST, ["api", "controls", action]) => match super::controls::kind(action) {
            Some(kind) => super::controls::submit(shared, kind, body),
            None => http::error(StatusCode::NOT_FOUND, "no such control"),
        },
        (&Method::GET, ["api", "controls", _]) => {
            http::error(StatusCode::METHOD_NOT_ALLOWED, "controls take a POST")
        }
        (&Method::GET, _) => super::assets::get(path)
            .unwrap_or_else(|| http::error(StatusCode::NOT_FOUND, "not found")),
        (_, ["api", ..]) | (_, ["metrics"]) | (_, ["healthz"]) => {
            http::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => http::error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `GET /healthz`: 200 while the daemon's loop publishes its state (at least every 10
/// s), 503 when it has not for a minute.
fn health(shared: &Shared) -> Resp {
    let age = chrono::Utc::now().timestamp() - shared.snapshot().written_unix;
    if age <= 60 {
        http::json(&serde_json::json!({ "ok": true, "snapshot_age_s": age }))
    } else {
        http::json_status(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "ok": false, "snapshot_age_s": age }),
        )
    }
}

fn mailbox(shared: &Shared, id: &str, rest: &[&str]) -> Resp {
    let snap = shared.snapshot();
    let Some(row) = super::rows::find(&snap, id) else {
        return http::error(StatusCode::NOT_FOUND, "not a mailbox of this migration");
    };
    let id = row.mailbox.clone();
    match rest {
        [] => {
            let inv = shared.inventory();
            let now = chrono::Utc::now().timestamp();
            let m = crate::metrics::get();
            let r = super::rows::row(
                row,
                inv.mailboxes.get(&id).copied().unwrap_or_default(),
                &m.in_backoff(now),
            );
            // The row is as of its last change: the current stretch goes on since.
            let mut aged = row.clone();
            aged.age_to(now);
            http::json(&serde_json::json!({
                "mailbox": r,
                "seconds_in_status": aged.seconds_in_status,
                "throttles": m.throttles_of(&id),
            }))
        }
        ["folders"] => http::json(&super::inventory::folders(
            &shared.spool,
            &id,
            &shared.config.sync,
        )),
        ["problems"] => http::json(&super::problems::items(&shared.spool, &id)),
        ["problems.csv"] => super::downloads::problems(shared, Some(&id)),
        _ => http::error(StatusCode::NOT_FOUND, "not found"),
    }
}
