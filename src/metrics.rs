//! The process's counters, for `GET /metrics` and the status page (see [`crate::web`]).
//!
//! One registry per process, reached through [`get`], so that the source, the upstream
//! and the engine count what they do where they do it without a handle threaded through
//! every call. Counters only go up and are never per mailbox (a label per mailbox would
//! make thousands of series); what the page shows per mailbox comes from the spool.
//!
//! Besides the counters, the throttle pauses in progress are kept by mailbox: the page
//! says which mailboxes wait and until when, and keeps a short history of each one's
//! throttles. That map is small (one entry per throttled mailbox) and bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{LazyLock, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// Throttles remembered per mailbox for its detail page.
pub const THROTTLE_HISTORY: usize = 20;

/// Why a message was skipped, as a label: a few fixed words.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SkipReason {
    /// Over `[sync] max_message_bytes`.
    TooBig,
    /// A line longer than `[sync] max_line_length`.
    LineTooLong,
    /// Refused for good by the destination.
    Refused,
    /// Beyond `[sync] max_items_per_mailbox`.
    ItemLimit,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::TooBig => "too_big",
            SkipReason::LineTooLong => "line_too_long",
            SkipReason::Refused => "refused",
            SkipReason::ItemLimit => "item_limit",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

/// One throttle of one mailbox.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Throttle {
    pub at_unix: i64,
    pub until_unix: i64,
    pub backoff_ms: u64,
    /// The destination's text (no secret: a throttle answer names no credential).
    pub text: String,
}

/// Every counter and gauge of the process.
pub struct Metrics {
    pub registry: Registry,
    pub appended: Counter,
    pub appended_bytes: Counter,
    pub source_fetched: Counter,
    pub source_fetched_bytes: Counter,
    /// New messages the sources listed, to be copied (the length of `sync --once`'s bar).
    pub source_found: Counter,
    pub source_found_bytes: Counter,
    pub skipped: Family<ReasonLabel, Counter>,
    pub failed: Counter,
    pub throttled: Counter,
    pub backoff_seconds: Counter<f64, AtomicU64>,
    /// Set from the daemon's state each time `/metrics` is read (see `web::metrics`).
    pub mailboxes: Family<StatusLabel, Gauge>,
    pub source_messages: Gauge,
    pub source_bytes: Gauge,
    pub destination_messages: Gauge,
    pub destination_bytes: Gauge,
    pub pending_messages: Gauge,
    pub pending_bytes: Gauge,
    pub last_delta_sync: Gauge,
    pub oauth_token_expiry: Gauge,
    pub disk_free: Gauge,
    pub disk_used: Gauge,
    throttles: Mutex<HashMap<String, VecDeque<Throttle>>>,
    /// Unix seconds of the last throttle anywhere, 0 if none.
    pub last_throttle: AtomicI64,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::default();
        let appended = Counter::default();
        r.register(
            "cutover_messages_appended",
            "Messages appended at the destination",
            appended.clone(),
        );
        let appended_bytes = Counter::default();
        r.register(
            "cutover_appended_bytes",
            "Bytes of the messages appended at the destination",
            appended_bytes.clone(),
        );
        let source_fetched = Counter::default();
        r.register(
            "cutover_source_fetched_messages",
            "Messages read from the source into the spool",
            source_fetched.clone(),
        );
        let source_fetched_bytes = Counter::default();
        r.register(
            "cutover_source_fetched_bytes",
            "Bytes read from the source into the spool",
            source_fetched_bytes.clone(),
        );
        let source_found = Counter::default();
        r.register(
            "cutover_source_found_messages",
            "New messages listed at the source, to be read into the spool",
            source_found.clone(),
        );
        let source_found_bytes = Counter::default();
        r.register(
            "cutover_source_found_bytes",
            "Bytes of the new messages listed at the source (as the source announced them)",
            source_found_bytes.clone(),
        );
        let skipped = Family::<ReasonLabel, Counter>::default();
        r.register(
            "cutover_messages_skipped",
            "Messages deliberately not copied, by reason",
            skipped.clone(),
        );
        let failed = Counter::default();
        r.register(
            "cutover_messages_failed",
            "Refusals by the destination that are retried later",
            failed.clone(),
        );
        let throttled = Counter::default();
        r.register(
            "cutover_upstream_throttled",
            "Throttle answers from the destination",
            throttled.clone(),
        );
        let backoff_seconds = Counter::<f64, AtomicU64>::default();
        r.register(
            "cutover_upstream_backoff_seconds",
            "Seconds mailboxes spent paused after throttle answers",
            backoff_seconds.clone(),
        );
        let mailboxes = Family::<StatusLabel, Gauge>::default();
        r.register(
            "cutover_mailboxes",
            "Mailboxes by status",
            mailboxes.clone(),
        );
        let mut gauge = |name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let source_messages = gauge(
            "cutover_source_messages",
            "Messages found at the source (as spooled records)",
        );
        let source_bytes = gauge(
            "cutover_source_bytes",
            "Bytes of the messages found at the source",
        );
        let destination_messages = gauge(
            "cutover_destination_messages",
            "Messages at the destination",
        );
        let destination_bytes = gauge(
            "cutover_destination_bytes",
            "Bytes of the messages at the destination",
        );
        let pending_messages = gauge(
            "cutover_spool_pending_messages",
            "Spooled messages not yet at the destination (waiting, in flight or failed)",
        );
        let pending_bytes = gauge(
            "cutover_spool_pending_bytes",
            "Bytes of the spooled messages not yet at the destination",
        );
        let last_delta_sync = gauge(
            "cutover_last_delta_sync_timestamp_seconds",
            "End of the most recent pass that finished cleanly (Unix seconds)",
        );
        let oauth_token_expiry = gauge(
            "cutover_oauth_token_expiry_timestamp_seconds",
            "When the destination's current OAuth token expires (Unix seconds; 0 without OAuth)",
        );
        let disk_free = gauge(
            "cutover_spool_disk_free_bytes",
            "Free bytes on the spool's file system (for the service user)",
        );
        let disk_used = gauge(
            "cutover_spool_disk_used_bytes",
            "Bytes the spool takes on disk",
        );
        Metrics {
            registry: r,
            appended,
            appended_bytes,
            source_fetched,
            source_fetched_bytes,
            source_found,
            source_found_bytes,
            skipped,
            failed,
            throttled,
            backoff_seconds,
            mailboxes,
            source_messages,
            source_bytes,
            destination_messages,
            destination_bytes,
            pending_messages,
            pending_bytes,
            last_delta_sync,
            oauth_token_expiry,
            disk_free,
            disk_used,
            throttles: Mutex::new(HashMap::new()),
            last_throttle: AtomicI64::new(0),
        }
    }

    /// `n` messages skipped for `reason`.
    pub fn skip(&self, reason: SkipReason, n: u64) {
        self.skipped
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().into(),
            })
            .inc_by(n);
    }

    /// A throttle answer for `mailbox`: it pauses for `backoff_ms` from `now_unix`.
    pub fn throttle(&self, mailbox: &str, now_unix: i64, backoff_ms: u64, text: &str) {
        self.throttled.inc();
        self.backoff_seconds.inc_by(backoff_ms as f64 / 1000.0);
        self.last_throttle
            .store(now_unix, std::sync::atomic::Ordering::Relaxed);
        let mut map = self
            .throttles
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let h = map.entry(mailbox.to_string()).or_default();
        if h.len() >= THROTTLE_HISTORY {
            h.pop_front();
        }
        let end = now_unix + (backoff_ms.div_ceil(1000)) as i64;
        h.push_back(Throttle {
            at_unix: now_unix,
            until_unix: end,
            backoff_ms,
            text: text.chars().take(300).collect(),
        });
    }

    /// The throttles of `mailbox`, oldest first.
    pub fn throttles_of(&self, mailbox: &str) -> Vec<Throttle> {
        let map = self
            .throttles
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(mailbox)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Mailbox -> end of its pause, for the mailboxes paused at `now_unix`.
    pub fn in_backoff(&self, now_unix: i64) -> HashMap<String, i64> {
        let map = self
            .throttles
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .filter_map(|(m, h)| {
                h.back()
                    .filter(|t| t.until_unix > now_unix)
                    .map(|t| (m.clone(), t.until_unix))
            })
            .collect()
    }

    /// The Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_are_kept_bounded_and_expire() {
        let m = Metrics::new();
        for i in 0..(THROTTLE_HISTORY as i64 + 5) {
            m.throttle("a@x.test", 1000 + i, 2500, "[THROTTLED] slow down");
        }
        let h = m.throttles_of("a@x.test");
        assert_eq!(h.len(), THROTTLE_HISTORY);
        assert_eq!(h[0].at_unix, 1005);
        let last = h.last().unwrap();
        assert_eq!(last.until_unix, last.at_unix + 3);
        assert_eq!(m.in_backoff(last.at_unix)["a@x.test"], last.until_unix);
        assert!(m.in_backoff(last.until_unix).is_empty());
        m.skip(SkipReason::TooBig, 2);
        let text = m.encode();
        assert!(
            text.contains("cutover_upstream_throttled_total 25"),
            "{text}"
        );
        assert!(
            text.contains("cutover_messages_skipped_total{reason=\"too_big\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("cutover_upstream_backoff_seconds_total 62.5"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
