//! What `sync --once` and `check` tell the admin while they run.
//!
//! Over 200,000 messages a pass runs for minutes; printing nothing until the final table
//! leaves the admin guessing whether it works. So:
//!
//! - on a terminal ([`terminal`]): an overall bar (messages and bytes, msgs/s, ETA), a
//!   line per mailbox in flight, and each throttle as it happens, drawn with indicatif
//!   on standard error;
//! - anywhere else (journald, a pipe, a file: [`lines`]): one summary line per mailbox
//!   per pass on standard error, which a log keeps and a terminal would only scroll.
//!
//! Standard output keeps the final table alone, so scripts that read it see no change.
//! The engine calls an [`Observer`] when a mailbox starts and ends; the rest is read
//! from the process's counters ([`crate::metrics`]).

pub mod lines;
pub mod terminal;

use std::io::IsTerminal;
use std::sync::Arc;

use crate::engine::MailboxSummary;

/// Told by the engine as a pass goes. Both calls come from the mailbox's own task.
pub trait Observer: Send + Sync {
    fn started(&self, mailbox: &str);
    fn finished(&self, summary: &MailboxSummary);
}

/// A message count and its bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub messages: u64,
    pub bytes: u64,
}

/// The counters a pass's progress is read from, since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// New messages the sources listed (to be copied).
    pub found: Tally,
    /// Appended at the destination.
    pub appended: Tally,
    pub throttled: u64,
}

impl Counters {
    pub fn now() -> Counters {
        let m = crate::metrics::get();
        Counters {
            found: Tally {
                messages: m.source_found.get(),
                bytes: m.source_found_bytes.get(),
            },
            appended: Tally {
                messages: m.appended.get(),
                bytes: m.appended_bytes.get(),
            },
            throttled: m.throttled.get(),
        }
    }

    /// What happened between `base` and `self`.
    pub fn since(&self, base: &Counters) -> Counters {
        let d = |a: Tally, b: Tally| Tally {
            messages: a.messages.saturating_sub(b.messages),
            bytes: a.bytes.saturating_sub(b.bytes),
        };
        Counters {
            found: d(self.found, base.found),
            appended: d(self.appended, base.appended),
            throttled: self.throttled.saturating_sub(base.throttled),
        }
    }
}

/// The observer for a command run by hand: bars on a terminal, lines elsewhere.
/// `CUTOVER_PROGRESS=lines` forces the lines (and `bars` the bars) whatever standard
/// error is.
pub fn for_this_process() -> Arc<dyn ObserverHandle> {
    if bars_wanted() {
        Arc::new(terminal::Terminal::stderr())
    } else {
        Arc::new(lines::Lines::new(std::io::stderr()))
    }
}

/// Bars rather than lines: standard error is a terminal, or `CUTOVER_PROGRESS` says so.
pub fn bars_wanted() -> bool {
    match std::env::var("CUTOVER_PROGRESS").as_deref() {
        Ok("lines") => false,
        Ok("bars") => true,
        _ => std::io::stderr().is_terminal(),
    }
}

/// An observer that is closed when the pass ends.
pub trait ObserverHandle: Observer {
    /// The pass is over: the bars go away.
    fn finish(&self);
    /// The observer as the engine takes it.
    fn observer(self: Arc<Self>) -> Arc<dyn Observer>;
}
