//! End-to-end processing latency (Q19): time from publish to FIN, per
//! channel, over a sliding window of two rotating histograms.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::stats::{E2eLatency, GoFloat, Percentile};

/// `--e2e-processing-latency-percentile` and `-window-time`.
#[derive(Debug, Clone)]
pub struct E2eConfig {
    pub percentiles: Vec<f64>,
    pub window: Duration,
}

pub struct E2eWindow {
    percentiles: Vec<f64>,
    half: Duration,
    current: Histogram<u64>,
    previous: Histogram<u64>,
    rotated_at: Instant,
}

fn histogram() -> Histogram<u64> {
    // 3 significant digits, auto-resizing: ns values up to hours.
    Histogram::new(3).expect("3 significant figures is a valid histogram precision")
}

impl E2eWindow {
    pub fn new(config: &E2eConfig) -> E2eWindow {
        E2eWindow {
            percentiles: config.percentiles.clone(),
            half: (config.window / 2).max(Duration::from_millis(1)),
            current: histogram(),
            previous: histogram(),
            rotated_at: Instant::now(),
        }
    }

    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.rotated_at);
        if age >= self.half * 2 {
            self.current.reset();
            self.previous.reset();
            self.rotated_at = now;
        } else if age >= self.half {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.reset();
            self.rotated_at = now;
        }
    }

    pub fn record(&mut self, latency_ns: u64) {
        self.rotate(Instant::now());
        let _ = self.current.record(latency_ns.max(1));
    }

    /// The halves still inside the window at `now`: reading must drop what
    /// expired even when nothing was recorded since (nsqd moves its window
    /// on every query).
    fn live(&self, now: Instant) -> [Option<&Histogram<u64>>; 2] {
        let age = now.saturating_duration_since(self.rotated_at);
        if age >= self.half * 2 {
            [None, None]
        } else if age >= self.half {
            [Some(&self.current), None]
        } else {
            [Some(&self.current), Some(&self.previous)]
        }
    }

    /// Adds this window's samples to `into` (for the topic's aggregate).
    pub fn merge_into(&self, into: &mut Histogram<u64>) {
        for h in self.live(Instant::now()).into_iter().flatten() {
            let _ = into.add(h);
        }
    }

    pub fn result(&self) -> E2eLatency {
        let mut all = histogram();
        self.merge_into(&mut all);
        result_of(&all, &self.percentiles)
    }

    pub fn percentiles(&self) -> &[f64] {
        &self.percentiles
    }

    pub fn empty_histogram() -> Histogram<u64> {
        histogram()
    }
}

pub fn result_of(h: &Histogram<u64>, percentiles: &[f64]) -> E2eLatency {
    E2eLatency {
        count: h.len(),
        percentiles: Some(
            percentiles
                .iter()
                .map(|&q| Percentile {
                    quantile: GoFloat(q),
                    value: GoFloat(if h.is_empty() {
                        0.0
                    } else {
                        h.value_at_quantile(q) as f64
                    }),
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_recorded_latencies() {
        let mut w = E2eWindow::new(&E2eConfig {
            percentiles: vec![0.5, 1.0],
            window: Duration::from_secs(600),
        });
        for ms in 1..=100u64 {
            w.record(ms * 1_000_000);
        }
        let r = w.result();
        assert_eq!(r.count, 100);
        let p = r.percentiles.unwrap();
        assert!((p[0].value.0 - 50e6).abs() < 1e6, "{}", p[0].value.0);
        assert!((p[1].value.0 - 100e6).abs() < 1e6);
    }

    #[test]
    fn old_samples_expire_without_new_ones() {
        let mut w = E2eWindow::new(&E2eConfig {
            percentiles: vec![0.5],
            window: Duration::from_millis(40),
        });
        w.record(5_000_000);
        assert_eq!(w.result().count, 1);
        std::thread::sleep(Duration::from_millis(45));
        let r = w.result();
        assert_eq!(r.count, 0);
        assert_eq!(r.percentiles.unwrap()[0].value.0, 0.0);
    }
}
