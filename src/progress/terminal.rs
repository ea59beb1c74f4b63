//! On a terminal: indicatif bars on standard error, redrawn a few times a second.
//!
//! - the overall bar: messages appended of those the sources listed as new so far (the
//!   length grows while folders are listed), bytes likewise, msgs/s and the ETA;
//! - one line per mailbox in flight, with its time so far and its throttle, if any;
//! - each throttle as a line of its own above the bars, as it happens.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use super::lines::{human_bytes, summary_line};
use super::{Counters, Observer, ObserverHandle};
use crate::engine::MailboxSummary;

/// How often the bars are brought up to date from the counters.
const TICK: Duration = Duration::from_millis(250);

struct Active {
    bar: ProgressBar,
    since: Instant,
    /// Throttles of the mailbox already printed.
    throttles_seen: usize,
}

struct Inner {
    multi: MultiProgress,
    overall: ProgressBar,
    active: Mutex<HashMap<String, Active>>,
    base: Counters,
    stop: AtomicBool,
}

/// The bars of one pass; [`ObserverHandle::finish`] (or drop) takes them away.
pub struct Terminal {
    inner: Arc<Inner>,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

fn overall_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} messages, {msg}, {rate}, ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{:.1} msgs/s", s.per_sec());
    })
    .progress_chars("=> ")
}

fn mailbox_style() -> ProgressStyle {
    ProgressStyle::with_template("  {spinner} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// A bar over `len` things (`what`: "mailboxes checked") on standard error when it is a
/// terminal, else a bar that draws nothing (its `suspend` still runs what it is given).
pub fn count_bar(len: u64, what: &str) -> ProgressBar {
    let target = if super::bars_wanted() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} [{{bar:30}}] {{pos}}/{{len}} {what}, ETA {{eta}}: {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(Some(len), target).with_style(style);
    bar.enable_steady_tick(TICK);
    bar
}

impl Terminal {
    /// Bars on standard error.
    pub fn stderr() -> Terminal {
        Terminal::to(ProgressDrawTarget::stderr())
    }

    /// Bars drawn to `target` (a test draws them into a buffer).
    pub fn to(target: ProgressDrawTarget) -> Terminal {
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new(0).with_style(overall_style()));
        overall.set_message("0 B of 0 B");
        let inner = Arc::new(Inner {
            multi,
            overall,
            active: Mutex::new(HashMap::new()),
            base: Counters::now(),
            stop: AtomicBool::new(false),
        });
        let ticker = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || {
                    while !inner.stop.load(Ordering::Relaxed) {
                        inner.tick();
                        std::thread::sleep(TICK);
                    }
                })
                .ok()
        };
        Terminal {
            inner,
            ticker: Mutex::new(ticker),
        }
    }

    /// Brings the bars up to date now (the ticker does it every [`TICK`]).
    pub fn tick(&self) {
        self.inner.tick();
    }
}

impl Inner {
    fn tick(&self) {
        let c = Counters::now().since(&self.base);
        let len = c.found.messages.max(c.appended.messages);
        self.overall.set_length(len);
        self.overall.set_position(c.appended.messages);
        self.overall.set_message(format!(
            "{} of {}",
            human_bytes(c.appended.bytes),
            human_bytes(c.found.bytes.max(c.appended.bytes))
        ));
        let now = chrono::Utc::now().timestamp();
        let m = crate::metrics::get();
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        for (mailbox, a) in active.iter_mut() {
            let throttles = m.throttles_of(mailbox);
            // The history keeps the last few: count from what is still there.
            let seen = a.throttles_seen.min(throttles.len());
            for t in &throttles[seen..] {
                let _ = self.multi.println(format!(
                    "throttled: {mailbox}: paused {:.1} s: {}",
                    t.backoff_ms as f64 / 1000.0,
                    t.text
                ));
            }
            a.throttles_seen = throttles.len();
            let mut line = format!("{mailbox}  {:.0} s", a.since.elapsed().as_secs_f64());
            if let Some(t) = throttles.last().filter(|t| t.until_unix > now) {
                let _ = write!(line, "  throttled, resumes in {} s", t.until_unix - now);
            }
            a.bar.set_message(line);
            a.bar.tick();
        }
    }
}

impl Observer for Terminal {
    fn started(&self, mailbox: &str) {
        let bar = self
            .inner
            .multi
            .add(ProgressBar::new_spinner().with_style(mailbox_style()));
        bar.set_message(mailbox.to_string());
        let seen = crate::metrics::get().throttles_of(mailbox).len();
        self.inner
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                mailbox.to_string(),
                Active {
                    bar,
                    since: Instant::now(),
                    throttles_seen: seen,
                },
            );
    }

    fn finished(&self, summary: &MailboxSummary) {
        let gone = self
            .inner
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&summary.mailbox);
        if let Some(a) = gone {
            a.bar.finish_and_clear();
            self.inner.multi.remove(&a.bar);
        }
        // What was a line in flight stays as the mailbox's summary above the bars.
        let _ = self.inner.multi.println(summary_line(summary));
    }
}

impl ObserverHandle for Terminal {
    fn finish(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self
            .ticker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = t.join();
        }
        self.inner.tick();
        self.inner.overall.finish_and_clear();
        let _ = self.inner.multi.clear();
    }

    fn observer(self: Arc<Self>) -> Arc<dyn Observer> {
        self
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::TermLike;

    /// A terminal that keeps what is written to it.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<String>>);

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            160
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            let mut t = self.0.lock().unwrap();
            t.push_str(s);
            t.push('\n');
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_bars_show_messages_bytes_rate_eta_mailboxes_and_throttles() {
        let screen = Screen::default();
        let t = Terminal::to(ProgressDrawTarget::term_like(Box::new(screen.clone())));
        let mailbox = "progress-bars@example.test";
        t.started(mailbox);
        let m = crate::metrics::get();
        m.source_found.inc_by(10);
        m.source_found_bytes.inc_by(20_000);
        m.appended.inc_by(4);
        m.appended_bytes.inc_by(8_000);
        let now = chrono::Utc::now().timestamp();
        m.throttle(mailbox, now, 30_000, "Server Unavailable. 15");
        // Past indicatif's redraw limit, then drawn from the counters.
        std::thread::sleep(Duration::from_millis(300));
        t.tick();
        std::thread::sleep(Duration::from_millis(100));
        let drawn = screen.0.lock().unwrap().clone();
        for want in [
            "messages,",
            "msgs/s",
            "ETA",
            mailbox,
            "throttled, resumes in",
            &format!("throttled: {mailbox}: paused 30.0 s: Server Unavailable. 15"),
        ] {
            assert!(drawn.contains(want), "{want:?} in {drawn:?}");
        }
        t.finished(&MailboxSummary {
            mailbox: mailbox.into(),
            copied: 4,
            bytes: 8_000,
            ..Default::default()
        });
        t.finish();
        let drawn = screen.0.lock().unwrap().clone();
        assert!(
            drawn.contains(&format!("{mailbox}: Synced: 4 copied")),
            "{drawn:?}"
        );
    }
}
