//! Staying within what Exchange Online tolerates, and reacting when it says "slow down".
//!
//! - [`classify`] reads an IMAP error the way Exchange means it: `NO Request is throttled.
//!   Suggested Backoff Time: N milliseconds` (and the same text in a `BAD` or `* BYE`) is a
//!   throttle with a backoff to honour; a dropped connection, a timeout or `BAD User is
//!   authenticated but not connected` is a transient fault worth a new session, and so is
//!   `* BYE Session invalidated - AccessTokenExpired`, for which [`needs_fresh_token`] also
//!   says the cached token must go; anything else is final.
//! - [`TokenBucket`]: messages/s and bytes/s, with a burst allowance. [`Limits`] holds the
//!   global buckets (all mailboxes together) and makes a [`MailboxLimiter`] per mailbox,
//!   which waits on its own buckets first and then on the global ones.
//! - Per mailbox, a [`controller::Controller`] learns the destination's budget from its
//!   throttles and settles under it instead of sawing across it: a throttle's rate, measured
//!   only while nothing but the limiter (or full speed) held the mailbox back, becomes a
//!   ceiling the mailbox holds 5 % under, floored by what it recently sustained and probed
//!   upwards now and then (see that module). Other mailboxes are not slowed down by one
//!   mailbox's throttling.
//! - [`Backoff`]: capped exponential backoff with jitter for transient faults.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::imap::client::ImapError;

pub mod controller;

use controller::Controller;
pub use controller::MIN_RATE;

/// The longest suggested backoff honoured as given; longer ones are cut to this (and logged).
pub const MAX_SUGGESTED_BACKOFF: Duration = Duration::from_secs(600);
/// Backoff used when Exchange says "throttled" without suggesting a time.
pub const DEFAULT_THROTTLE_BACKOFF: Duration = Duration::from_secs(5);

/// What an error from the destination means for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Exchange asked us to slow down: pause the mailbox for `backoff`, reconnect, resume.
    Throttled { backoff: Duration, text: String },
    /// The connection is gone or stuck: reconnect with exponential backoff.
    Transient,
    /// A definite answer (refused login, bad folder name...): retrying will not help.
    Fatal,
}

/// Parses Exchange's `Suggested Backoff Time: N milliseconds` (also `ms`, `seconds`, `s`),
/// case-insensitively, anywhere in `text`.
pub fn suggested_backoff(text: &str) -> Option<Duration> {
    let lower = text.to_ascii_lowercase();
    let at = lower.find("suggested backoff time")?;
    let rest = &lower[at + "suggested backoff time".len()..];
    let rest = rest.trim_start_matches([':', ' ', '\t', '=']);
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let n: u64 = digits.parse().ok()?;
    let unit = rest[digits.len()..].trim_start();
    let d = if unit.starts_with("ms") || unit.starts_with("milli") || unit.is_empty() {
        Duration::from_millis(n)
    } else if unit.starts_with('s') {
        Duration::from_secs(n)
    } else {
        Duration::from_millis(n)
    };
    Some(d)
}

/// True if `text` is Exchange telling us we are throttled.
pub fn is_throttle_text(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("throttl") || lower.contains("suggested backoff time")
}

/// Exchange's answer when the mailbox session behind an authenticated connection went away
/// (a backend move, a failover): the connection is useless, a new one works.
pub fn is_not_connected_text(text: &str) -> bool {
    text.to_ascii_lowercase()
        .contains("authenticated but not connected")
}

/// Exchange's answer when the OAuth token a session logged in with has expired: `* BYE
/// Session invalidated - AccessTokenExpired` (then it closes the connection), or the same
/// words in a refused command or login. A new session works, but only with a new token.
pub fn is_token_expired_text(text: &str) -> bool {
    text.to_ascii_lowercase().contains("accesstokenexpired")
}

/// True if `e` says the session's OAuth token expired: the caller must forget its cached
/// token (`TokenProvider::invalidate`) before it reconnects, or the next login presents
/// the same token. [`classify`] makes such an error [`Fault::Transient`].
pub fn needs_fresh_token(e: &ImapError) -> bool {
    match e {
        ImapError::Closed {
            bye: Some(text), ..
        }
        | ImapError::Refused { text, .. }
        | ImapError::Auth { text, .. } => is_token_expired_text(text),
        _ => false,
    }
}

/// The backoff to honour for a throttle answer, cut to [`MAX_SUGGESTED_BACKOFF`].
pub fn throttle_backoff(text: &str) -> Duration {
    suggested_backoff(text)
        .unwrap_or(DEFAULT_THROTTLE_BACKOFF)
        .min(MAX_SUGGESTED_BACKOFF)
}

/// How to react to `e` (see [`Fault`]).
pub fn classify(e: &ImapError) -> Fault {
    match e {
        ImapError::Refused { text, .. } | ImapError::Auth { text, .. }
            if is_throttle_text(text) =>
        {
            Fault::Throttled {
                backoff: throttle_backoff(text),
                text: text.clone(),
            }
        }
        ImapError::Closed { bye: Some(b), .. } if is_throttle_text(b) => Fault::Throttled {
            backoff: throttle_backoff(b),
            text: b.clone(),
        },
        ImapError::Refused { text, .. } if is_not_connected_text(text) => Fault::Transient,
        // The token expired, not the credentials: a new session with a new token works.
        e if needs_fresh_token(e) => Fault::Transient,
        e if e.is_transient() => Fault::Transient,
        _ => Fault::Fatal,
    }
}

/// Capped exponential backoff with jitter: `base`, `2 base`, `4 base`... up to `cap`, each
/// plus a random 0-50 %, so that many mailboxes dropped at once do not come back at once.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// Failures since the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The next delay (and counts one more failure).
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        self.attempt += 1;
        let d = exp.min(self.cap);
        let jitter = d.mul_f64(rand::random::<f64>() * 0.5);
        d + jitter
    }

    /// Progress was made: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A token bucket: `rate` tokens per second, holding at most `capacity`.
///
/// A request for more than the capacity (a message larger than a second's worth of bytes)
/// is not refused: it waits until the bucket is full and leaves it in debt, so the average
/// rate still holds.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, capacity: f64) -> TokenBucket {
        let capacity = capacity.max(1.0);
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn capacity(&self) -> f64 {
        self.capacity
    }

    /// Spends everything saved: after a throttle the destination's own bucket is empty,
    /// and a burst saved here would only be throttled again.
    fn drain(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = self.tokens.min(0.0);
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.last = now;
    }

    /// Changes the rate (tokens already saved are kept, up to the new capacity).
    pub fn set_rate(&mut self, rate: f64, capacity: f64) {
        self.set_rate_at(rate, capacity, Instant::now());
    }

    fn set_rate_at(&mut self, rate: f64, capacity: f64, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.capacity = capacity.max(1.0);
        self.tokens = self.tokens.min(self.capacity);
    }

    /// Takes `n` tokens if possible now; otherwise says how long to wait before trying again.
    pub fn try_take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let need = n.min(self.capacity);
        if self.tokens + 1e-9 >= need {
            self.tokens -= n;
            Ok(())
        } else {
            let secs = (need - self.tokens) / self.rate.max(1e-9);
            Err(Duration::from_secs_f64(secs.clamp(0.000_5, 3600.0)))
        }
    }
}

/// Waits until `bucket` gives `n` tokens.
async fn take(bucket: &Mutex<TokenBucket>, n: f64) {
    loop {
        let r = bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_take(n, Instant::now());
        match r {
            Ok(()) => return,
            Err(wait) => tokio::time::sleep(wait).await,
        }
    }
}

/// The configured limits (`[upstream] messages_per_second`, `bytes_per_second`, `burst`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSettings {
    /// Per mailbox; 0 = no configured limit (AIMD still applies after a throttle).
    pub messages_per_second: f64,
    /// Per mailbox; 0 = unlimited.
    pub bytes_per_second: f64,
    /// All mailboxes together; 0 = unlimited.
    pub global_messages_per_second: f64,
    /// All mailboxes together; 0 = unlimited.
    pub global_bytes_per_second: f64,
    /// Seconds of the rate an idle bucket saves up (the burst allowed after a pause).
    pub burst: f64,
}

impl Default for RateSettings {
    fn default() -> Self {
        RateSettings {
            messages_per_second: 0.0,
            bytes_per_second: 0.0,
            global_messages_per_second: 0.0,
            global_bytes_per_second: 0.0,
            burst: 1.0,
        }
    }
}

/// Shared by every mailbox of a run: the global buckets and the settings.
#[derive(Debug)]
pub struct Limits {
    settings: RateSettings,
    global_msgs: Option<Mutex<TokenBucket>>,
    global_bytes: Option<Mutex<TokenBucket>>,
}

fn bucket(rate: f64, burst: f64) -> Option<Mutex<TokenBucket>> {
    (rate > 0.0).then(|| Mutex::new(TokenBucket::new(rate, rate * burst)))
}

impl Limits {
    pub fn new(settings: RateSettings) -> Arc<Limits> {
        let burst = if settings.burst > 0.0 {
            settings.burst
        } else {
            1.0
        };
        Arc::new(Limits {
            global_msgs: bucket(settings.global_messages_per_second, burst),
            global_bytes: bucket(settings.global_bytes_per_second, burst),
            settings: RateSettings { burst, ..settings },
        })
    }

    pub fn settings(&self) -> &RateSettings {
        &self.settings
    }

    /// A limiter for one mailbox (its own buckets and controller).
    pub fn mailbox(self: &Arc<Self>) -> MailboxLimiter {
        let s = &self.settings;
        MailboxLimiter {
            limits: self.clone(),
            state: Mutex::new(MailboxState {
                msgs: bucket(s.messages_per_second, s.burst)
                    .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner())),
                bytes: bucket(s.bytes_per_second, s.burst)
                    .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner())),
                control: Controller::new(Some(s.messages_per_second)),
                throttled: 0,
                backoff_total: Duration::ZERO,
            }),
        }
    }
}

#[derive(Debug)]
struct MailboxState {
    msgs: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    /// Decides the message rate; `msgs` follows it.
    control: Controller,
    throttled: u64,
    backoff_total: Duration,
}

impl MailboxState {
    /// Puts the controller's rate into the message bucket (made on the first limit).
    fn apply(&mut self, burst: f64, now: Instant, drain: bool) {
        let Some(rate) = self.control.rate() else {
            return;
        };
        match self.msgs.as_mut() {
            Some(b) => {
                if b.rate() != rate {
                    b.set_rate_at(rate, rate * burst, now);
                }
            }
            None => {
                let mut b = TokenBucket::new(rate, rate * burst);
                b.last = now;
                self.msgs = Some(b);
            }
        }
        if drain {
            if let Some(b) = self.msgs.as_mut() {
                b.drain(now);
            }
        }
    }
}

/// Throttling state of one mailbox, as shown in the summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThrottleStats {
    /// Throttle answers received from the destination.
    pub throttled: u64,
    /// Time spent paused because of them.
    pub backoff: Duration,
    /// The mailbox's current message rate limit (None: unlimited).
    pub rate: Option<f64>,
    /// The learned ceiling: a rate the destination refused, raised by probes since.
    pub ceiling: Option<f64>,
}

/// One mailbox's buckets and controller, plus the global buckets.
#[derive(Debug)]
pub struct MailboxLimiter {
    limits: Arc<Limits>,
    state: Mutex<MailboxState>,
}

impl MailboxLimiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, MailboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many messages to put in one pipelined batch at most: a limited mailbox sends no
    /// more than its bucket holds at once, so the rate is smooth rather than bursty.
    pub fn max_batch(&self) -> Option<usize> {
        let st = self.lock();
        st.msgs
            .as_ref()
            .map(|b| (b.capacity().floor() as usize).max(1))
    }

    /// Waits until one message of `bytes` may be sent (mailbox buckets, then global ones).
    pub async fn acquire(&self, bytes: u64) {
        let asked = Instant::now();
        let mut held = false;
        loop {
            let wait = {
                let mut st = self.lock();
                let now = Instant::now();
                let m = match st.msgs.as_mut() {
                    Some(b) => b.try_take(1.0, now),
                    None => Ok(()),
                };
                match m {
                    Err(w) => Some(w),
                    Ok(()) => {
                        let b = match st.bytes.as_mut() {
                            Some(b) => b.try_take(bytes as f64, now),
                            None => Ok(()),
                        };
                        match b {
                            Ok(()) => None,
                            Err(w) => {
                                // Give the message token back; both are taken together.
                                if let Some(mb) = st.msgs.as_mut() {
                                    mb.tokens += 1.0;
                                }
                                Some(w)
                            }
                        }
                    }
                }
            };
            match wait {
                Some(w) => {
                    held = true;
                    tokio::time::sleep(w).await
                }
                None => break,
            }
        }
        if let Some(b) = &self.limits.global_msgs {
            take(b, 1.0).await;
        }
        if let Some(b) = &self.limits.global_bytes {
            take(b, bytes as f64).await;
        }
        let now = Instant::now();
        self.lock()
            .control
            .on_send(now, now.saturating_duration_since(asked), held);
    }

    /// `n` messages were appended; `clean`: their batch met no throttle, so the rate may
    /// go up (see [`Controller::on_clean`]).
    pub fn on_appended(&self, n: u64, clean: bool) {
        if !clean || n == 0 {
            return;
        }
        let burst = self.limits.settings.burst;
        let mut st = self.lock();
        let now = Instant::now();
        st.control.on_clean(now, n);
        st.apply(burst, now, false);
    }

    /// The session ended for a reason other than a throttle (a dropped connection, an
    /// expired session): the time until the next send is not a rate the destination set.
    pub fn on_interrupted(&self) {
        self.lock().control.on_interrupted();
    }

    /// The destination throttled this mailbox, which will pause for `backoff`. Returns the
    /// new message rate (infinite: still unlimited, nothing learned).
    pub fn on_throttle(&self, backoff: Duration) -> f64 {
        let burst = self.limits.settings.burst;
        let mut st = self.lock();
        let now = Instant::now();
        st.throttled += 1;
        st.backoff_total += backoff;
        let rate = st.control.on_throttle(now);
        st.apply(burst, now, true);
        rate
    }

    pub fn stats(&self) -> ThrottleStats {
        let st = self.lock();
        ThrottleStats {
            throttled: st.throttled,
            backoff: st.backoff_total,
            rate: st.msgs.as_ref().map(|b| b.rate()),
            ceiling: st.control.ceiling().map(|c| c.rate),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::response::Kind;

    #[test]
    fn parses_exchange_backoff() {
        let t = "Request is throttled. Suggested Backoff Time: 1234 milliseconds";
        assert_eq!(suggested_backoff(t), Some(Duration::from_millis(1234)));
        assert!(is_throttle_text(t));
        assert_eq!(
            suggested_backoff("[THROTTLED] suggested backoff time: 3 seconds"),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            suggested_backoff("Suggested Backoff Time:250 ms"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(suggested_backoff("Request is throttled."), None);
        assert_eq!(
            throttle_backoff("Request is throttled."),
            DEFAULT_THROTTLE_BACKOFF
        );
        assert_eq!(
            throttle_backoff("Suggested Backoff Time: 99999999 milliseconds"),
            MAX_SUGGESTED_BACKOFF
        );
        assert!(!is_throttle_text("APPEND completed"));
    }

    #[test]
    fn classifies_errors() {
        let refused = |kind, text: &str| ImapError::Refused {
            host: "h".into(),
            command: "APPEND".into(),
            kind,
            code: None,
            text: text.into(),
        };
        assert_eq!(
            classify(&refused(
                Kind::No,
                "Request is throttled. Suggested Backoff Time: 500 milliseconds"
            )),
            Fault::Throttled {
                backoff: Duration::from_millis(500),
                text: "Request is throttled. Suggested Backoff Time: 500 milliseconds".into()
            }
        );
        assert_eq!(
            classify(&refused(
                Kind::Bad,
                "User is authenticated but not connected."
            )),
            Fault::Transient
        );
        assert_eq!(
            classify(&refused(Kind::No, "Mailbox does not exist")),
            Fault::Fatal
        );
        let bye = ImapError::Closed {
            host: "h".into(),
            bye: Some("Request is throttled. Suggested Backoff Time: 20 milliseconds".into()),
        };
        assert!(matches!(classify(&bye), Fault::Throttled { .. }));
        let closed = ImapError::Closed {
            host: "h".into(),
            bye: None,
        };
        assert_eq!(classify(&closed), Fault::Transient);
        let timeout = ImapError::Timeout {
            host: "h".into(),
            secs: 1,
        };
        assert_eq!(classify(&timeout), Fault::Transient);
    }

    /// Exchange ends a session whose token expired with an untagged BYE: worth a new
    /// session (with a new token), and told apart from other transient faults.
    #[test]
    fn expired_token_is_transient_and_distinguishable() {
        let bye = ImapError::Closed {
            host: "h".into(),
            bye: Some("Session invalidated - AccessTokenExpired".into()),
        };
        assert_eq!(classify(&bye), Fault::Transient);
        assert!(needs_fresh_token(&bye));
        // A login refused for the same reason is not a wrong credential.
        let auth = ImapError::Auth {
            host: "h".into(),
            user: "u".into(),
            text: "AUTHENTICATE failed: AccessTokenExpired".into(),
        };
        assert_eq!(classify(&auth), Fault::Transient);
        assert!(needs_fresh_token(&auth));
        let refused = ImapError::Refused {
            host: "h".into(),
            command: "SELECT".into(),
            kind: Kind::Bad,
            code: None,
            text: "Session invalidated - AccessTokenExpired".into(),
        };
        assert_eq!(classify(&refused), Fault::Transient);
        // Other faults do not ask for a new token.
        let other = ImapError::Closed {
            host: "h".into(),
            bye: Some("Server shutting down".into()),
        };
        assert_eq!(classify(&other), Fault::Transient);
        assert!(!needs_fresh_token(&other));
        let wrong = ImapError::Auth {
            host: "h".into(),
            user: "u".into(),
            text: "AUTHENTICATE failed.".into(),
        };
        assert_eq!(classify(&wrong), Fault::Fatal);
        assert!(!needs_fresh_token(&wrong));
    }

    #[test]
    fn backoff_grows_to_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let d: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        for (i, want) in [100u64, 200, 400, 800, 1000, 1000].iter().enumerate() {
            let want = Duration::from_millis(*want);
            assert!(d[i] >= want && d[i] <= want.mul_f64(1.5), "{i}: {:?}", d[i]);
        }
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(151));
    }

    #[test]
    fn bucket_rate_and_debt() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0);
        b.last = start;
        for _ in 0..5 {
            assert!(b.try_take(1.0, start).is_ok());
        }
        let w = b.try_take(1.0, start).unwrap_err();
        assert!((w.as_secs_f64() - 0.1).abs() < 1e-3, "{w:?}");
        // 0.5 s later: 5 tokens again, never more than the capacity.
        let later = start + Duration::from_secs(10);
        assert!(b.try_take(5.0, later).is_ok());
        assert!(b.try_take(1.0, later).is_err());
        // More than the capacity: waits for a full bucket, then goes into debt.
        let mut b = TokenBucket::new(100.0, 100.0);
        b.last = start;
        assert!(b.try_take(250.0, start).is_ok());
        let w = b.try_take(1.0, start).unwrap_err();
        assert!((w.as_secs_f64() - 1.51).abs() < 1e-2, "{w:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_holds_the_rate() {
        let limits = Limits::new(RateSettings {
            messages_per_second: 20.0,
            burst: 1.0,
            ..Default::default()
        });
        let m = limits.mailbox();
        assert_eq!(m.max_batch(), Some(20));
        let start = Instant::now();
        for _ in 0..120 {
            m.acquire(1000).await;
        }
        // 20 at once (the burst), then 100 at 20/s.
        let secs = start.elapsed().as_secs_f64();
        assert!((secs - 5.0).abs() < 0.05, "{secs}");
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_and_global_limits() {
        let limits = Limits::new(RateSettings {
            bytes_per_second: 10_000.0,
            global_messages_per_second: 4.0,
            burst: 1.0,
            ..Default::default()
        });
        let a = limits.mailbox();
        let b = limits.mailbox();
        let start = Instant::now();
        // 5 KB messages: the mailbox byte bucket allows 2/s; two mailboxes share 4 msg/s.
        let t1 = async {
            for _ in 0..10 {
                a.acquire(5_000).await;
            }
        };
        let t2 = async {
            for _ in 0..10 {
                b.acquire(5_000).await;
            }
        };
        tokio::join!(t1, t2);
        let secs = start.elapsed().as_secs_f64();
        // Per mailbox 10 messages of 5 KB at 10 KB/s: (10 - 2) / 2 = 4 s.
        assert!((3.9..=4.6).contains(&secs), "{secs}");
    }

    /// The limiter feeds its controller what it sees: sends held back by the bucket at the
    /// configured rate make a throttle's ceiling that rate; the rate halves, drains the
    /// bucket, and climbs back to 5 % under the ceiling.
    #[tokio::test(start_paused = true)]
    async fn limiter_learns_from_its_sends() {
        let limits = Limits::new(RateSettings {
            messages_per_second: 40.0,
            burst: 1.0,
            ..Default::default()
        });
        let m = limits.mailbox();
        for _ in 0..200 {
            m.acquire(100).await;
        }
        assert_eq!(m.on_throttle(Duration::from_millis(100)), 28.0);
        let s = m.stats();
        assert_eq!(s.throttled, 1);
        assert_eq!(s.backoff, Duration::from_millis(100));
        assert_eq!(s.rate, Some(28.0), "cut to 70 % of the rate it was held at");
        assert_eq!(s.ceiling, Some(40.0), "held at 40/s by its own limiter");
        let start = Instant::now();
        m.acquire(100).await;
        assert!(
            start.elapsed() >= Duration::from_millis(35),
            "the bucket was drained"
        );
        m.on_appended(10, false);
        assert_eq!(
            m.stats().rate,
            Some(28.0),
            "a throttled batch changes nothing"
        );
        m.on_appended(10, true);
        assert_eq!(m.stats().rate, Some(30.0), "5 % of 40 per clean batch");
        for _ in 0..100 {
            m.on_appended(10, true);
        }
        assert_eq!(m.stats().rate, Some(38.0), "5 % under the ceiling");

        // Unlimited: the first throttle limits the mailbox from the rate it was sending at.
        let limits = Limits::new(RateSettings::default());
        let m = limits.mailbox();
        assert_eq!(m.max_batch(), None);
        for _ in 0..100 {
            for _ in 0..4 {
                m.acquire(100).await;
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let r = m.on_throttle(Duration::from_secs(1));
        assert!((r - 20.0).abs() < 0.5, "half of the 40/s sent: {r}");
        assert_eq!(m.max_batch(), Some(20));
        let _ = Kind::Ok;
    }
}
