//! Model tests: the controller and the mailbox's bucket, on a simulated clock, against a
//! model of Exchange's per-mailbox budget, driven the way the engine drives a mailbox.

use super::*;
use crate::throttle::MailboxState;

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);

/// Exchange's per-mailbox budget as the test proxy models it: a token bucket; past it an
/// APPEND is refused with a suggested backoff (at least the time to the next token), which
/// doubles when the client comes back before it is over.
struct Budget {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    blocked_until: Instant,
    backoff: Duration,
}

const BASE_BACKOFF: Duration = Duration::from_millis(200);

impl Budget {
    fn new(rate: f64, burst: f64, now: Instant) -> Budget {
        Budget {
            rate,
            burst,
            tokens: burst,
            last: now,
            blocked_until: now,
            backoff: BASE_BACKOFF,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    fn append(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if now < self.blocked_until {
            self.backoff = (self.backoff * 2).min(5 * SEC);
            self.blocked_until = now + self.backoff;
            return Err(self.backoff);
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.backoff = BASE_BACKOFF;
            return Ok(());
        }
        let need = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
        let b = need.max(BASE_BACKOFF);
        self.blocked_until = now + b;
        Err(b)
    }
}

/// One mailbox: its limiter state (bucket and controller, as the limiter holds them), the
/// destination's budget, and how fast the machine is.
struct Sim {
    start: Instant,
    now: Instant,
    st: MailboxState,
    dest: Budget,
    /// The machine's time per message: full speed is its inverse.
    send_cost: Duration,
    rtt: Duration,
    reconnect: Duration,
    /// Throttle the next batch whatever the rate (a busy backend, a proxy's schedule).
    force_throttle: bool,
    appended: Vec<Instant>,
    throttles: Vec<Instant>,
}

impl Sim {
    fn new(configured: Option<f64>, budget: f64, burst: f64, full_speed: f64) -> Sim {
        let start = Instant::now();
        let mut st = MailboxState {
            msgs: None,
            bytes: None,
            control: Controller::new(configured),
            throttled: 0,
            backoff_total: Duration::ZERO,
        };
        st.apply(1.0, start, false);
        Sim {
            start,
            now: start,
            st,
            dest: Budget::new(budget, burst, start),
            send_cost: Duration::from_secs_f64(1.0 / full_speed),
            rtt: Duration::from_millis(5),
            reconnect: Duration::from_millis(50),
            force_throttle: false,
            appended: Vec::new(),
            throttles: Vec::new(),
        }
    }

    fn at(&self, d: Duration) -> Instant {
        self.start + d
    }

    /// One batch as `append_pending` sends it: as many as the bucket holds (50 without a
    /// limit), each waiting for the limiter, then the answers; a throttle refuses the rest
    /// of its batch, and the mailbox pauses for the backoff and reconnects.
    fn batch(&mut self) {
        let n = self
            .st
            .msgs
            .as_ref()
            .map_or(50, |b| (b.capacity().floor() as usize).max(1))
            .min(50);
        let (mut ok, mut refused) = (0u64, None);
        for _ in 0..n {
            self.now += self.send_cost;
            let asked = self.now;
            let mut held = false;
            if let Some(b) = self.st.msgs.as_mut() {
                while let Err(w) = b.try_take(1.0, self.now) {
                    held = true;
                    self.now += w;
                }
            }
            self.st.control.on_send(self.now, self.now - asked, held);
            if refused.is_some() {
                continue;
            }
            let r = if self.force_throttle {
                self.force_throttle = false;
                Err(BASE_BACKOFF)
            } else {
                self.dest.append(self.now)
            };
            match r {
                Ok(()) => {
                    ok += 1;
                    self.appended.push(self.now);
                }
                Err(b) => refused = Some(b),
            }
        }
        self.now += self.rtt;
        match refused {
            None => {
                self.st.control.on_clean(self.now, ok);
                self.st.apply(1.0, self.now, false);
            }
            Some(backoff) => {
                self.throttles.push(self.now);
                self.st.control.on_throttle(self.now);
                self.st.apply(1.0, self.now, true);
                self.now += backoff + self.reconnect;
            }
        }
    }

    fn run_until(&mut self, t: Duration) {
        let end = self.at(t);
        while self.now < end {
            self.batch();
        }
    }

    /// The session is cut: a reconnect and the recovery of interrupted APPENDs take `pause`.
    fn interrupt(&mut self, pause: Duration) {
        self.st.control.on_interrupted();
        self.now += pause;
    }

    /// Appended in [from, to) as a share of the budget over that time.
    fn share(&self, from: Duration, to: Duration) -> f64 {
        let (a, b) = (self.at(from), self.at(to));
        let n = self.appended.iter().filter(|t| **t >= a && **t < b).count();
        n as f64 / (to - from).as_secs_f64() / self.dest.rate
    }

    fn throttles_in(&self, from: Duration, to: Duration) -> usize {
        let (a, b) = (self.at(from), self.at(to));
        self.throttles
            .iter()
            .filter(|t| **t >= a && **t < b)
            .count()
    }

    fn rate(&self) -> f64 {
        self.st.control.rate().unwrap_or(f64::INFINITY)
    }
}

/// The goal: at least 90 % of the budget, and after the first minute at most one
/// throttle per 10 minutes; whether the budget is unknown, configured or configured too
/// high, and whether the machine is much faster than the budget or only a little.
#[test]
fn finds_the_budget_and_stays_under_it() {
    for (budget, burst) in [(20.0, 40.0), (5.0, 10.0)] {
        for full_speed in [100.0, 1.3 * budget] {
            for configured in [None, Some(budget), Some(2.5 * budget)] {
                let what =
                    format!("budget {budget}/s, machine {full_speed}/s, configured {configured:?}");
                let mut sim = Sim::new(configured, budget, burst, full_speed);
                sim.run_until(31 * MIN);
                let share = sim.share(MIN, 31 * MIN);
                let after = sim.throttles_in(MIN, 31 * MIN);
                assert!(share >= 0.9, "{what}: {:.1} % of the budget", share * 100.0);
                assert!(
                    after <= 2,
                    "{what}: {after} throttles in the 30 minutes after the first ({} in all)",
                    sim.throttles.len()
                );
                if configured == Some(budget) {
                    assert_eq!(sim.throttles.len(), 0, "{what}: told the budget");
                }
                let c = sim.st.control.ceiling();
                if let Some(c) = c.filter(|_| configured != Some(budget)) {
                    assert!(
                        c.rate > budget && c.rate < 1.2 * budget,
                        "{what}: ceiling {c:?}"
                    );
                }
            }
        }
    }
}

/// Sessions cut every second and reconnects (with recovery) of 4 s leave the mailbox at a
/// fraction of the budget for its first minute, and a throttle comes that has nothing to
/// do with the rate. That slow minute must not become the ceiling.
#[test]
fn a_slow_stretch_before_the_first_throttle_learns_no_low_ceiling() {
    let mut sim = Sim::new(None, 20.0, 40.0, 30.0);
    while sim.now < sim.at(MIN) {
        let cut = sim.now + SEC;
        while sim.now < cut {
            sim.batch();
        }
        if sim.now >= sim.at(30 * SEC) && sim.throttles.is_empty() {
            sim.force_throttle = true;
            sim.batch();
        }
        sim.interrupt(4 * SEC);
    }
    let slow = sim.share(Duration::ZERO, MIN);
    assert!(
        slow < 0.5,
        "the first minute is slow: {:.0} %",
        slow * 100.0
    );
    assert!(!sim.throttles.is_empty());
    let c = sim.st.control.ceiling().expect("a ceiling").rate;
    assert!(
        c >= 20.0,
        "learned from the driven rate, not the slow minute: {c}"
    );
    sim.run_until(11 * MIN);
    let share = sim.share(2 * MIN, 11 * MIN);
    assert!(share >= 0.9, "{:.1} % of the budget", share * 100.0);
    assert!(
        sim.throttles_in(2 * MIN, 11 * MIN) <= 1,
        "{:?}",
        sim.throttles
    );
}

/// The slow stretch as the previous controller measured it (everything since the mailbox
/// started) would have been 6 msg/s; the measurement leaves out the reconnects.
#[test]
fn reconnects_are_not_counted_as_sending_time() {
    let t0 = Instant::now();
    let mut c = Controller::new(None);
    let mut now = t0;
    // 10 sends in 0.1 s, then a 4 s reconnect, five times over.
    for _ in 0..5 {
        for _ in 0..10 {
            now += Duration::from_millis(10);
            c.on_send(now, Duration::ZERO, false);
        }
        c.on_interrupted();
        now += 4 * SEC;
    }
    for _ in 0..10 {
        now += Duration::from_millis(10);
        c.on_send(now, Duration::ZERO, false);
    }
    let r = c.on_throttle(now);
    let ceiling = c.ceiling().unwrap();
    assert!(
        ceiling.rate >= 40.0 && !ceiling.at_limiter,
        "the driven rate (at least 10 in 0.25 s), not 60 in 20 s: {ceiling:?}"
    );
    assert!((r - ceiling.rate / 2.0).abs() < 1e-9);
    // A throttle with too few sends since the last break teaches nothing.
    c.on_interrupted();
    now += 4 * SEC;
    c.on_send(now, Duration::ZERO, false);
    let before = c.ceiling();
    assert_eq!(c.on_throttle(now + SEC), r);
    assert_eq!(c.ceiling(), before);
    // Nor does waiting for the source: a gap ends the stretch.
    let mut c = Controller::new(None);
    for i in 0..20 {
        c.on_send(t0 + i * 3 * SEC, Duration::ZERO, false);
    }
    c.on_throttle(t0 + MIN);
    assert_eq!(c.ceiling(), None, "one send per stretch tells no rate");
    assert_eq!(c.rate(), None);
}

/// A ceiling measured at full speed while the machine was slow (8 msg/s against a budget
/// of 20) is raised within minutes once the machine is faster, by probes that double.
#[test]
fn a_ceiling_measured_on_a_slow_machine_is_raised_within_minutes() {
    let mut sim = Sim::new(None, 20.0, 40.0, 8.0);
    sim.run_until(MIN);
    sim.force_throttle = true;
    sim.run_until(2 * MIN);
    let c = sim.st.control.ceiling().expect("a ceiling");
    assert!(c.rate < 10.0 && !c.at_limiter, "{c:?}");
    sim.send_cost = Duration::from_millis(10);
    sim.run_until(7 * MIN);
    let r = sim.rate();
    assert!(r >= 17.0, "5 minutes after the machine got faster: {r}");
    sim.run_until(20 * MIN);
    let share = sim.share(10 * MIN, 20 * MIN);
    assert!(share >= 0.9, "{:.1} % of the budget", share * 100.0);
    assert!(
        sim.throttles_in(10 * MIN, 20 * MIN) <= 1,
        "{:?}",
        sim.throttles
    );
}

/// A budget that grows (10 to 20 msg/s) is found again after the probe interval; until
/// then the mailbox holds the old one without throttles.
#[test]
fn a_budget_that_grew_is_found_again() {
    let mut sim = Sim::new(None, 10.0, 20.0, 100.0);
    sim.run_until(5 * MIN);
    let c = sim.st.control.ceiling().expect("a ceiling");
    assert!(c.at_limiter && c.rate < 11.0, "{c:?}");
    sim.dest.rate = 20.0;
    sim.dest.burst = 40.0;
    // The first probe comes PROBE_INTERVAL (15 minutes) after the last throttle.
    sim.run_until(26 * MIN);
    let r = sim.rate();
    assert!(r >= 18.0, "probed up to the new budget: {r}");
    assert!(
        sim.throttles_in(2 * MIN, 15 * MIN) == 0,
        "{:?}",
        sim.throttles
    );
    sim.run_until(37 * MIN);
    let share = sim.share(26 * MIN, 37 * MIN);
    assert!(share >= 0.9, "{:.1} % of the new budget", share * 100.0);
    assert!(
        sim.throttles_in(26 * MIN, 37 * MIN) <= 1,
        "{:?}",
        sim.throttles
    );
}

/// Throttles that come whatever the rate, one every 89 APPENDs (as the crash harness's
/// proxy schedules them), do not drive the mailbox down to a crawl: the ceiling falls with
/// each, but not below a third of the best rate the destination accepted.
#[test]
fn throttles_whatever_the_rate_do_not_ratchet_it_down() {
    let mut sim = Sim::new(None, 1000.0, 2000.0, 40.0);
    let mut next = 89;
    while sim.now < sim.at(10 * MIN) {
        if sim.appended.len() + sim.throttles.len() >= next {
            sim.force_throttle = true;
            next += 89;
        }
        sim.batch();
    }
    let r = sim.rate();
    let sent = sim.share(5 * MIN, 10 * MIN) * sim.dest.rate;
    let best = sim.st.control.best(sim.now);
    assert!(
        best >= 15.0,
        "the destination accepted {best:.1} msg/s at best"
    );
    assert!(
        sent >= best * BEST_SHARE * 0.9 && r >= best * BEST_SHARE * 0.9,
        "{sent:.1} msg/s out of a full speed of 40 (rate now {r:.1})"
    );
}

/// A budget that shrank (20 to 10 msg/s) is followed down: the proven rate does not hold
/// the ceiling above it for long.
#[test]
fn a_budget_that_shrank_is_followed_down() {
    let mut sim = Sim::new(None, 20.0, 40.0, 100.0);
    sim.run_until(5 * MIN);
    sim.dest.rate = 10.0;
    sim.run_until(15 * MIN);
    let share = sim.share(7 * MIN, 15 * MIN);
    assert!(share >= 0.9, "{:.1} % of the new budget", share * 100.0);
    assert!(
        sim.throttles_in(7 * MIN, 15 * MIN) <= 1,
        "{:?}",
        sim.throttles
    );
    assert!(sim.rate() <= 10.0, "{}", sim.rate());
}
