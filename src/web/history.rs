//! Throughput over time: the counters of [`crate::metrics`] sampled every few seconds,
//! for the current rates, the ETA and the chart.

use std::collections::VecDeque;

use serde::Serialize;

/// Samples kept: six hours at one every five seconds.
pub const KEEP_SECONDS: i64 = 6 * 3600;
/// Points in the chart, at most.
pub const CHART_POINTS: usize = 240;
/// Window of the "current" rates.
pub const CURRENT_WINDOW: i64 = 30;
/// Window of the ETA's rate: long enough that throttle pauses count in it.
pub const ETA_WINDOW: i64 = 15 * 60;

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub t: f64,
    pub appended: u64,
    pub appended_bytes: u64,
    pub fetched: u64,
    pub fetched_bytes: u64,
}

impl Sample {
    /// Now, from the process's counters.
    pub fn now() -> Sample {
        let m = crate::metrics::get();
        Sample {
            t: chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
            appended: m.appended.get(),
            appended_bytes: m.appended_bytes.get(),
            fetched: m.source_fetched.get(),
            fetched_bytes: m.source_fetched_bytes.get(),
        }
    }
}

/// Rates between two samples, per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rates {
    pub source_msgs_per_s: f64,
    pub source_bytes_per_s: f64,
    pub upstream_msgs_per_s: f64,
    pub upstream_bytes_per_s: f64,
    /// Seconds the rates were measured over (0: not enough samples yet).
    pub window_s: f64,
}

fn rates(a: &Sample, b: &Sample) -> Rates {
    let dt = b.t - a.t;
    if dt <= 0.0 {
        return Rates::default();
    }
    let per = |x: u64, y: u64| y.saturating_sub(x) as f64 / dt;
    Rates {
        source_msgs_per_s: per(a.fetched, b.fetched),
        source_bytes_per_s: per(a.fetched_bytes, b.fetched_bytes),
        upstream_msgs_per_s: per(a.appended, b.appended),
        upstream_bytes_per_s: per(a.appended_bytes, b.appended_bytes),
        window_s: dt,
    }
}

/// The samples of the last [`KEEP_SECONDS`].
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    pub fn push(&mut self, s: Sample) {
        while self
            .samples
            .front()
            .is_some_and(|f| s.t - f.t > KEEP_SECONDS as f64)
        {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// Rates over the last `window` seconds, up to `now` (a fresh sample of the counters).
    pub fn rates(&self, now: &Sample, window: i64) -> Rates {
        let from = self
            .samples
            .iter()
            .find(|s| now.t - s.t <= window as f64)
            .or(self.samples.back());
        match from {
            Some(a) => rates(a, now),
            None => Rates::default(),
        }
    }

    /// `[unix seconds, upstream msgs/s, source msgs/s, upstream bytes/s]` per chart point,
    /// oldest first: consecutive samples grouped so that there are at most
    /// [`CHART_POINTS`].
    pub fn chart(&self) -> Vec<[f64; 4]> {
        let n = self.samples.len();
        if n < 2 {
            return Vec::new();
        }
        let step = (n - 1).div_ceil(CHART_POINTS).max(1);
        let v: Vec<&Sample> = self.samples.iter().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i + step < n {
            let r = rates(v[i], v[i + step]);
            out.push([
                v[i + step].t.round(),
                r.upstream_msgs_per_s,
                r.source_msgs_per_s,
                r.upstream_bytes_per_s,
            ]);
            i += step;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, appended: u64) -> Sample {
        Sample {
            t,
            appended,
            appended_bytes: appended * 1000,
            fetched: appended * 2,
            fetched_bytes: 0,
        }
    }

    #[test]
    fn rates_over_a_window_and_a_bounded_chart() {
        let mut h = History::default();
        assert_eq!(h.rates(&s(0.0, 0), 30), Rates::default());
        for i in 0..1000u64 {
            h.push(s(i as f64 * 5.0, i * 10));
        }
        let now = s(5000.0, 10_000);
        let r = h.rates(&now, 30);
        // From the sample at t=4970 (appended 9940) to now: 60 in 30 s.
        assert_eq!(r.window_s, 30.0);
        assert!((r.upstream_msgs_per_s - 2.0).abs() < 1e-9, "{r:?}");
        assert!((r.source_msgs_per_s - 4.0).abs() < 1e-9, "{r:?}");
        assert!((r.upstream_bytes_per_s - 2000.0).abs() < 1e-9, "{r:?}");
        let c = h.chart();
        assert!(c.len() <= CHART_POINTS && c.len() > 100, "{}", c.len());
        assert!((c[0][1] - 2.0).abs() < 1e-9, "{:?}", c[0]);
        // Old samples go.
        h.push(s(1_000_000.0, 20_000));
        assert_eq!(h.samples.len(), 1);
    }
}
