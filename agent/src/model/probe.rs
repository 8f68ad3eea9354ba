//! Container probes as kubelet runs them: their timing fields with the API defaults,
//! and the thresholds that turn single results into a probe's verdict.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Startup => "Startup",
            Self::Liveness => "Liveness",
            Self::Readiness => "Readiness",
        }
    }

    /// The probe of this kind on `c`.
    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            Self::Startup => c.startup_probe.as_ref(),
            Self::Liveness => c.liveness_probe.as_ref(),
            Self::Readiness => c.readiness_probe.as_ref(),
        }
    }
}

/// A probe's timing with the API defaults (initialDelaySeconds 0, periodSeconds 10,
/// timeoutSeconds 1, successThreshold 1, failureThreshold 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn secs(v: Option<i32>, default: u64, min: u64) -> Duration {
    Duration::from_secs(
        v.map_or(default, |s| u64::try_from(s).unwrap_or(default))
            .max(min),
    )
}

impl Timing {
    pub fn of(p: &Probe) -> Self {
        let count = |v: Option<i32>, default: u32| {
            v.and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .unwrap_or(default)
        };
        Self {
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            success_threshold: count(p.success_threshold, 1),
            failure_threshold: count(p.failure_threshold, 3),
        }
    }
}

/// One probe of one container run: its verdict so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    pub timing: Timing,
    /// `None` until a threshold is reached.
    pub verdict: Option<bool>,
    successes: u32,
    failures: u32,
    /// The output of the last failed run, for the Unhealthy event and the log.
    pub last_failure: String,
}

impl Tracker {
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            verdict: None,
            successes: 0,
            failures: 0,
            last_failure: String::new(),
        }
    }

    /// Counts one result; the verdict flips once `successThreshold` successes or
    /// `failureThreshold` failures come in a row.
    pub fn record(&mut self, ok: bool, why: &str) {
        if ok {
            self.failures = 0;
            self.successes += 1;
            if self.successes >= self.timing.success_threshold {
                self.verdict = Some(true);
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            self.last_failure = why.to_string();
            if self.failures >= self.timing.failure_threshold {
                self.verdict = Some(false);
            }
        }
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_apis() {
        let t = Timing::of(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
        assert_eq!(t.initial_delay, Duration::ZERO);
        let t = Timing::of(&Probe {
            period_seconds: Some(2),
            failure_threshold: Some(1),
            initial_delay_seconds: Some(5),
            ..Default::default()
        });
        assert_eq!(t.period, Duration::from_secs(2));
        assert_eq!(t.failure_threshold, 1);
        assert_eq!(t.initial_delay, Duration::from_secs(5));
    }

    #[test]
    fn thresholds_need_results_in_a_row() {
        let mut t = Tracker::new(Timing {
            success_threshold: 2,
            failure_threshold: 3,
            ..Timing::of(&Probe::default())
        });
        t.record(true, "");
        assert_eq!(t.verdict, None);
        t.record(false, "x");
        t.record(true, "");
        assert_eq!(t.verdict, None, "a failure breaks the run of successes");
        t.record(true, "");
        assert_eq!(t.verdict, Some(true));
        t.record(false, "a");
        t.record(false, "b");
        assert_eq!(t.verdict, Some(true));
        t.record(false, "c");
        assert_eq!(t.verdict, Some(false));
        assert_eq!(t.last_failure, "c");
        assert_eq!(t.failures(), 3);
    }
}
