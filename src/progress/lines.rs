//! Without a terminal: one line per mailbox per pass, for journald and pipes.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use super::{Observer, ObserverHandle};
use crate::engine::MailboxSummary;

/// Writes [`summary_line`] to its writer as each mailbox ends.
pub struct Lines<W: Write + Send> {
    out: Mutex<W>,
}

impl<W: Write + Send> Lines<W> {
    pub fn new(out: W) -> Lines<W> {
        Lines {
            out: Mutex::new(out),
        }
    }

    pub fn into_inner(self) -> W {
        self.out
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// `alice@example.org: Synced: 12 copied, 0 skipped, 0 failed, 1.2 MB in 3.4 s`, with
/// `, 2 throttles (4.0 s paused)` when the destination throttled it, and `: why` when
/// it failed (the first error; the final table and its error lines have the rest).
pub fn summary_line(s: &MailboxSummary) -> String {
    let mut line = format!(
        "{}: {}: {} copied, {} skipped, {} failed, {} in {:.1} s",
        s.mailbox,
        if s.ok() { "Synced" } else { "Failed" },
        s.copied,
        s.skipped,
        s.failed,
        human_bytes(s.bytes),
        s.seconds
    );
    if s.throttled > 0 {
        line.push_str(&format!(
            ", {} throttle{} ({:.1} s paused)",
            s.throttled,
            if s.throttled == 1 { "" } else { "s" },
            s.backoff_seconds
        ));
    }
    if let Some(why) = s.fatal.as_ref().or(s.errors.first()) {
        let why: String = why.chars().take(200).collect();
        line.push_str(&format!(": {why}"));
    }
    line
}

/// Bytes in decimal units, as the page shows them.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

impl<W: Write + Send> Observer for Lines<W> {
    fn started(&self, _mailbox: &str) {}

    fn finished(&self, summary: &MailboxSummary) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = writeln!(out, "{}", summary_line(summary));
        let _ = out.flush();
    }
}

impl<W: Write + Send + 'static> ObserverHandle for Lines<W> {
    fn finish(&self) {}
    fn observer(self: Arc<Self>) -> Arc<dyn Observer> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_mailbox_says_what_happened() {
        let ok = MailboxSummary {
            mailbox: "alice@example.test".into(),
            copied: 12,
            skipped: 1,
            bytes: 1_234_567,
            seconds: 3.42,
            ..Default::default()
        };
        assert_eq!(
            summary_line(&ok),
            "alice@example.test: Synced: 12 copied, 1 skipped, 0 failed, 1.2 MB in 3.4 s"
        );
        let throttled = MailboxSummary {
            throttled: 2,
            backoff_seconds: 4.0,
            ..ok.clone()
        };
        assert!(summary_line(&throttled).ends_with(", 2 throttles (4.0 s paused)"));
        let bad = MailboxSummary {
            mailbox: "bob@example.test".into(),
            fatal: Some("source: login refused".into()),
            bytes: 999,
            ..Default::default()
        };
        assert_eq!(
            summary_line(&bad),
            "bob@example.test: Failed: 0 copied, 0 skipped, 0 failed, 999 B in 0.0 s: source: login refused"
        );
        let lines = Lines::new(Vec::new());
        lines.started("alice@example.test");
        lines.finished(&ok);
        lines.finished(&bad);
        let text = String::from_utf8(lines.into_inner()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }
}
