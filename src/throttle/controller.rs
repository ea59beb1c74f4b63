//! The per-mailbox rate controller: pure logic over an explicit clock, so that it can be
//! driven by a simulated one. [`super::MailboxLimiter`] feeds it and applies its rate to
//! the mailbox's token bucket.
//!
//! What a throttle says depends on what held the mailbox back just before it. The
//! controller therefore measures the rate only over *driven* stretches: runs of sends with
//! no pause between them other than the mailbox's own limiter (or none at all, at full
//! speed with work queued). A reconnect, the recovery of interrupted APPENDs, a wait for
//! the source or a throttle's backoff ends a stretch, so none of them passes for a low rate
//! the destination allowed.
//!
//! - A throttle with a measurement sets the *ceiling*: the driven rate over the last
//!   [`MEASURE_WINDOW`] of the stretch, no more than the limiter's rate. Since the
//!   destination's own bucket was full or less when the window began, it refused more
//!   than it refills: its budget is below that rate. The mailbox climbs back to
//!   [`SETTLE_MARGIN`] below it and holds there. The first throttle, and one within
//!   [`REPEAT_WINDOW`] of the previous, cuts the rate first: by half if measured at full
//!   speed (the budget may be anywhere below), to [`REPEAT_CUT`] of the ceiling if measured
//!   while the limiter held the sends back (it is close); a lone throttle after a long
//!   clean stretch sets the rate straight to the target.
//! - A throttle without a measurement (too few sends since the last break to tell a rate)
//!   teaches nothing: the backoff is honoured, the rate stays.
//! - Floors: the ceiling never goes below [`FLOOR_SHARE`] of the best rate the destination
//!   accepted over [`PROVE_MIN`] of driven time ("proven", halving every
//!   [`PROVEN_HALF_LIFE`], so that a budget that shrank is followed within minutes), nor
//!   below [`BEST_SHARE`] of the best ever proven (halving every [`BEST_HALF_LIFE`]).
//!   Throttles that come whatever the rate (a busy backend, a test proxy's scheduled ones)
//!   would otherwise ratchet the ceiling down throttle by throttle.
//! - Healing: a ceiling is probed, upwards, while the limiter holds the mailbox back at its
//!   target. A ceiling measured at full speed (the machine, not the budget, set that rate)
//!   is probed after [`PROBE_SOON`]; one measured at the limiter's rate after
//!   [`PROBE_INTERVAL`], because each probe that finds the budget where it was costs a
//!   throttle. The first step ([`PROBE_STEP`]) is held [`PROBE_HOLD_FIRST`], long enough
//!   for the destination's saved burst to run out if it went too far; each later one
//!   doubles (up to [`PROBE_STEP_MAX`]) after [`PROBE_HOLD`], so a ceiling far too low is
//!   raised within minutes once probing starts. A throttle on a probe step puts the
//!   ceiling back to the step before; if that was not the first step, probing resumes
//!   after [`PROBE_SOON`] with smaller steps.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The rate never goes below this many messages per second.
pub const MIN_RATE: f64 = 0.2;
/// The target is this fraction below the ceiling. The ceiling is a rate the destination
/// refused, which overshoots its budget by a few percent at most.
pub const SETTLE_MARGIN: f64 = 0.05;
/// A throttle within this time of the previous one cuts the rate before it climbs back:
/// what was just learned did not hold.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);
/// A pause between two sends longer than this (not spent in the limiter) ends a driven
/// stretch: the mailbox was waiting for something else.
pub const DRIVEN_GAP: Duration = Duration::from_secs(1);
/// The driven rate at a throttle is measured over at most this much of the latest stretch.
/// Long, because the destination's saved burst counts as rate over the window: with a
/// burst of two seconds' budget (Exchange-like: 20/s, 40 saved), 10 s overstate the
/// budget by up to 20 %, more than [`SETTLE_MARGIN`] takes off; 30 s by up to 7 %.
pub const MEASURE_WINDOW: Duration = Duration::from_secs(30);
/// Fewer sends than this since the stretch began tell no rate.
pub const MIN_SENDS: usize = 4;
/// Shorter spans are counted as this long: a batch acquired at once has no duration, and
/// rounding up only overestimates the rate (a ceiling too high costs a throttle; one too
/// low costs throughput for minutes).
pub const MIN_SPAN: Duration = Duration::from_millis(250);
/// Clean driven time needed before a rate counts as proven.
pub const PROVE_MIN: Duration = Duration::from_secs(10);
/// A proven rate loses half its weight in this time (the budget may have shrunk).
pub const PROVEN_HALF_LIFE: Duration = Duration::from_secs(180);
/// The ceiling is never set below this share of the proven rate.
pub const FLOOR_SHARE: f64 = 0.8;
/// Nor below this share of the best rate proven, which fades in [`BEST_HALF_LIFE`]: the
/// last stop for throttles that keep coming whatever the rate (they would otherwise
/// ratchet the ceiling down as the proven rate fades); a budget that shrank further is
/// followed only as fast as this fades.
pub const BEST_SHARE: f64 = 1.0 / 3.0;
/// The best proven rate loses half its weight in this time.
pub const BEST_HALF_LIFE: Duration = Duration::from_secs(1800);
/// First probe above a ceiling measured at full speed.
pub const PROBE_SOON: Duration = Duration::from_secs(60);
/// First probe above a ceiling measured at the limiter's rate. A probe that finds the
/// budget where it was costs one throttle, so this is what a settled mailbox pays: one
/// throttle per 15 minutes, under the goal of one per 10.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(900);
/// How long the first probe step must go through before the next, larger one.
pub const PROBE_HOLD_FIRST: Duration = Duration::from_secs(60);
/// How long each later step must go through before the next.
pub const PROBE_HOLD: Duration = Duration::from_secs(30);
/// The first probe raises the ceiling by this fraction; each that goes through doubles it.
pub const PROBE_STEP: f64 = 0.1;
/// Probe steps double up to this (the ceiling at most doubles per step).
pub const PROBE_STEP_MAX: f64 = 1.0;
/// The limiter counts as holding the mailbox back if it made it wait this recently.
const HELD_RECENTLY: Duration = Duration::from_secs(5);
/// Each clean batch raises the rate by this share of the first ceiling learned (or of the
/// configured rate).
pub const CLIMB_STEP: f64 = 0.05;
/// A throttle soon after another, at the limiter's rate, cuts the rate to this share of the
/// ceiling: the ceiling is close, a halving would give away more than it saves.
pub const REPEAT_CUT: f64 = 0.7;
/// The additive step never gets smaller than this (msg/s).
const MIN_STEP: f64 = 0.05;

/// What the controller knows of the destination's budget for one mailbox.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ceiling {
    /// A rate the destination refused (raised by probes that went through).
    pub rate: f64,
    /// Measured at the limiter's rate (trusted), not at full speed.
    pub at_limiter: bool,
}

/// One send: when, and whether the limiter had made it wait.
#[derive(Debug, Clone, Copy)]
struct Send {
    at: Instant,
    held: bool,
}

/// A run of sends with no pause between them but the limiter's.
#[derive(Debug)]
struct Stretch {
    start: Instant,
    last: Instant,
    /// The sends of the last [`MEASURE_WINDOW`].
    recent: VecDeque<Send>,
    count: usize,
}

/// The controller of one mailbox (see the module documentation).
#[derive(Debug)]
pub struct Controller {
    configured: Option<f64>,
    rate: Option<f64>,
    ceiling: Option<Ceiling>,
    step: f64,
    last_throttle: Option<Instant>,
    stretch: Option<Stretch>,
    /// Driven time and messages accepted in the current window (across stretches and
    /// throttles), for the proven rate.
    win_secs: f64,
    win_accepted: u64,
    proven: Option<(f64, Instant)>,
    /// The best proven rate, kept much longer (for the last floor).
    best: Option<(f64, Instant)>,
    last_held: Option<Instant>,
    probe_at: Option<Instant>,
    probe_step: f64,
    /// While probing: the ceiling before the latest step, and that step.
    probe_base: Option<(f64, f64)>,
}

impl Controller {
    /// `configured`: the rate never to exceed (None or 0: none; the mailbox goes at full
    /// speed until its first throttle).
    pub fn new(configured: Option<f64>) -> Controller {
        let configured = configured.filter(|r| *r > 0.0 && r.is_finite());
        Controller {
            configured,
            rate: configured,
            ceiling: None,
            step: configured.map_or(1.0, |c| (c * 0.05).max(MIN_STEP)),
            last_throttle: None,
            stretch: None,
            win_secs: 0.0,
            win_accepted: 0,
            proven: None,
            best: None,
            last_held: None,
            probe_at: None,
            probe_step: PROBE_STEP,
            probe_base: None,
        }
    }

    /// The message rate to hold (None: unlimited).
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    pub fn ceiling(&self) -> Option<Ceiling> {
        self.ceiling
    }

    /// The rate the mailbox climbs to and holds.
    pub fn target(&self) -> f64 {
        let learned = self.ceiling.map(|c| c.rate * (1.0 - SETTLE_MARGIN));
        match (self.configured, learned) {
            (Some(c), Some(l)) => c.min(l),
            (Some(c), None) => c,
            (None, Some(l)) => l,
            (None, None) => f64::INFINITY,
        }
    }

    /// The proven rate, weighed down by its age.
    fn proven(&self, now: Instant) -> f64 {
        self.proven.map_or(0.0, |(r, at)| {
            let age = now.saturating_duration_since(at).as_secs_f64();
            r * 0.5f64.powf(age / PROVEN_HALF_LIFE.as_secs_f64())
        })
    }

    /// The best rate ever proven, weighed down (slowly) by its age.
    fn best(&self, now: Instant) -> f64 {
        self.best.map_or(0.0, |(r, at)| {
            let age = now.saturating_duration_since(at).as_secs_f64();
            r * 0.5f64.powf(age / BEST_HALF_LIFE.as_secs_f64())
        })
    }

    /// One message is sent now, after `waited` in the limiters; `held`: the mailbox's own
    /// limiter was among what made it wait.
    pub fn on_send(&mut self, now: Instant, waited: Duration, held: bool) {
        let asked = now.checked_sub(waited).unwrap_or(now);
        if held {
            self.last_held = Some(now);
        }
        let send = Send { at: now, held };
        match self.stretch.as_mut() {
            Some(s) if asked.saturating_duration_since(s.last) <= DRIVEN_GAP => {
                self.win_secs += now.saturating_duration_since(s.last).as_secs_f64();
                s.last = now;
                s.count += 1;
                s.recent.push_back(send);
                while s
                    .recent
                    .front()
                    .is_some_and(|f| now.saturating_duration_since(f.at) > MEASURE_WINDOW)
                {
                    s.recent.pop_front();
                }
            }
            _ => {
                self.win_secs += waited.as_secs_f64();
                self.stretch = Some(Stretch {
                    start: asked,
                    last: now,
                    recent: VecDeque::from([send]),
                    count: 1,
                });
            }
        }
    }

    /// The mailbox stopped sending for a reason of its own (a lost session, a reconnect):
    /// what comes next is a new stretch.
    pub fn on_interrupted(&mut self) {
        self.stretch = None;
    }

    /// The rate the destination refused, if the current stretch tells one, and whether the
    /// limiter was what held the sends back.
    fn measure(&self, now: Instant) -> Option<(f64, bool)> {
        let s = self.stretch.as_ref()?;
        if s.count < MIN_SENDS || s.recent.len() < MIN_SENDS {
            return None;
        }
        let from = s
            .start
            .max(now.checked_sub(MEASURE_WINDOW).unwrap_or(s.start));
        let span = now.saturating_duration_since(from).max(MIN_SPAN);
        let sends = s.recent.iter().filter(|x| x.at >= from).count();
        let driven = sends as f64 / span.as_secs_f64();
        let held = s.recent.iter().filter(|x| x.held).count() * 2 >= s.recent.len();
        Some((driven.min(self.rate.unwrap_or(f64::INFINITY)), held))
    }

    /// A batch of `n` messages went through without a throttle: the rate climbs one step
    /// towards the target, or, held there long enough, probes above the ceiling.
    pub fn on_clean(&mut self, now: Instant, n: u64) {
        self.win_accepted += n;
        if self.win_secs >= PROVE_MIN.as_secs_f64() {
            let r = self.win_accepted as f64 / self.win_secs;
            if r > self.proven(now) {
                self.proven = Some((r, now));
            }
            if r > self.best(now) {
                self.best = Some((r, now));
            }
            self.win_secs = 0.0;
            self.win_accepted = 0;
        }
        let Some(rate) = self.rate else { return };
        if n == 0 {
            return;
        }
        let target = self.target();
        if rate < target {
            self.rate = Some((rate + self.step).min(target));
            return;
        }
        let Some(c) = self.ceiling else { return };
        let held = self
            .last_held
            .is_some_and(|t| now.saturating_duration_since(t) <= HELD_RECENTLY);
        let room = self.configured.is_none_or(|cfg| target < cfg);
        if held && room && self.probe_at.is_some_and(|t| now >= t) {
            // The first step is held long enough for the destination's saved burst to run
            // out if it was one step too far; the later ones follow a probe that held.
            let hold = if self.probe_base.is_none() {
                PROBE_HOLD_FIRST
            } else {
                PROBE_HOLD
            };
            self.probe_base = Some((c.rate, self.probe_step));
            self.ceiling = Some(Ceiling {
                rate: c.rate * (1.0 + self.probe_step),
                ..c
            });
            self.probe_step = (self.probe_step * 2.0).min(PROBE_STEP_MAX);
            self.probe_at = Some(now + hold);
            self.rate = Some(self.target());
        }
    }

    /// The destination throttled the mailbox now. Returns the new rate.
    pub fn on_throttle(&mut self, now: Instant) -> f64 {
        let repeated = self
            .last_throttle
            .is_none_or(|t| now.saturating_duration_since(t) < REPEAT_WINDOW);
        if let Some((measured, at_limiter)) = self.measure(now) {
            // The floor holds against throttles that come whatever the rate; it fades, so
            // that a budget that really shrank is followed within minutes.
            let floor = (self.proven(now) * FLOOR_SHARE).max(self.best(now) * BEST_SHARE);
            // While probing: the step that failed was one too far, the one before held.
            // Only the first step failing says the ceiling was right; after a larger one
            // the budget lies between, and probing goes on soon from smaller steps.
            let failed_step = self.probe_base.take();
            let measured = match failed_step {
                Some((base, _)) => measured.min(base),
                None => measured,
            };
            let c = measured.max(floor).max(MIN_RATE * 2.0);
            if self.configured.is_none() && self.ceiling.is_none() {
                // The first thing known of the budget: climb in steps of 5 % of it.
                self.step = (c * CLIMB_STEP).max(MIN_STEP);
            }
            self.ceiling = Some(Ceiling {
                rate: c,
                at_limiter,
            });
            let (wait, step) = match failed_step {
                Some((_, s)) if s > PROBE_STEP * 1.5 => (PROBE_SOON, (s / 4.0).max(PROBE_STEP)),
                _ if at_limiter => (PROBE_INTERVAL, PROBE_STEP),
                _ => (PROBE_SOON, PROBE_STEP),
            };
            self.probe_at = Some(now + wait);
            self.probe_step = step;
            let rate = match (repeated, at_limiter) {
                (false, _) => self.target(),
                // Found at full speed: the budget may be anywhere below.
                (true, false) => c / 2.0,
                (true, true) => c * REPEAT_CUT,
            };
            self.rate = Some(rate.min(self.target()).max(MIN_RATE));
        } else if let Some(r) = self.rate {
            self.rate = Some(r.min(self.target()).max(MIN_RATE));
        }
        self.last_throttle = Some(now);
        self.stretch = None;
        self.rate.unwrap_or(f64::INFINITY)
    }
}

#[cfg(test)]
mod tests;
