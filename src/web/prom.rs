//! `GET /metrics`: the counters of [`crate::metrics`], with the gauges set from the
//! daemon's state and the last count of the spool just before they are written.

use std::sync::PoisonError;

use hyper::StatusCode;

use super::http::{self, Resp};
use super::Shared;
use crate::daemon::state::Status;
use crate::metrics::StatusLabel;

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Sets the gauges from what `shared` holds now.
pub fn refresh(shared: &Shared) {
    let m = crate::metrics::get();
    let snap = shared.snapshot();
    for st in Status::ALL {
        let n = snap
            .mailboxes
            .iter()
            .filter(|r| r.status == st.as_str())
            .count();
        m.mailboxes
            .get_or_create(&StatusLabel {
                status: st.as_str().into(),
            })
            .set(n as i64);
    }
    let t = shared.inventory().total;
    m.source_messages.set(clamp(t.source_messages));
    m.source_bytes.set(clamp(t.source_bytes));
    m.destination_messages.set(clamp(t.dest_messages));
    m.destination_bytes.set(clamp(t.dest_bytes));
    m.pending_messages.set(clamp(t.pending_messages));
    m.pending_bytes.set(clamp(t.pending_bytes));
    m.last_delta_sync.set(
        snap.mailboxes
            .iter()
            .filter_map(|r| r.last_sync_unix)
            .max()
            .unwrap_or(0),
    );
    let (used, free) = *shared.disk.lock().unwrap_or_else(PoisonError::into_inner);
    m.disk_used.set(clamp(used));
    if let Some(f) = free {
        m.disk_free.set(clamp(f));
    }
}

pub fn metrics(shared: &Shared) -> Resp {
    refresh(shared);
    http::full(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        crate::metrics::get().encode(),
    )
}
