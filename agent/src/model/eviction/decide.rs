//! What kubelet's eviction manager decides from one set of readings: which thresholds
//! are met (a threshold met in the last round stays met until its minimum reclaim is
//! reached), which have been met for their grace period, the pressure conditions, and
//! the one threshold to reclaim for (memory before anything else).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::{Observer, Pressure, Reading, Signal, Threshold};

/// The eviction manager's memory between rounds.
#[derive(Debug)]
pub struct Decider {
    thresholds: Vec<Threshold>,
    observer: Observer,
    /// When each met threshold (by index) was first seen met.
    first_met: HashMap<usize, Instant>,
    /// The thresholds the last round acted on (their grace periods over).
    acted: Vec<usize>,
}

/// One round's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Round {
    /// The conditions, held for the transition period.
    pub pressure: Pressure,
    /// The thresholds met now, grace periods aside (by index).
    pub met: Vec<usize>,
    /// The threshold to reclaim for now, if any has been met for its grace period.
    pub reclaim: Option<usize>,
}

impl Decider {
    pub fn new(thresholds: Vec<Threshold>, transition: Duration) -> Self {
        Self {
            thresholds,
            observer: Observer::new(transition),
            first_met: HashMap::new(),
            acted: Vec::new(),
        }
    }

    pub fn thresholds(&self) -> &[Threshold] {
        &self.thresholds
    }

    /// The thresholds (by index) `readings` meet; with `min_reclaim`, those still short
    /// of their threshold plus the minimum reclaim.
    fn met(&self, readings: &BTreeMap<Signal, Reading>, min_reclaim: bool) -> Vec<usize> {
        (0..self.thresholds.len())
            .filter(|&i| {
                let t = &self.thresholds[i];
                readings
                    .get(&t.signal)
                    .is_some_and(|r| t.met(*r, min_reclaim))
            })
            .collect()
    }

    /// One round at `now`.
    pub fn round(&mut self, readings: &BTreeMap<Signal, Reading>, now: Instant) -> Round {
        let mut met = self.met(readings, false);
        // What the last round acted on stays until its minimum reclaim is reached.
        let unresolved = self.met(readings, true);
        for i in &self.acted {
            if unresolved.contains(i) && !met.contains(i) {
                met.push(*i);
            }
        }
        met.sort_unstable();
        self.first_met.retain(|i, _| met.contains(i));
        for i in &met {
            self.first_met.entry(*i).or_insert(now);
        }
        let signals: Vec<Signal> = met.iter().map(|&i| self.thresholds[i].signal).collect();
        let pressure = self.observer.observe(&signals, now);
        let due: Vec<usize> = met
            .iter()
            .copied()
            .filter(|i| {
                self.first_met
                    .get(i)
                    .is_some_and(|t| now.duration_since(*t) >= self.thresholds[*i].grace)
            })
            .collect();
        // Memory first, then the others in the order given.
        let reclaim = due
            .iter()
            .copied()
            .find(|&i| self.thresholds[i].signal.is_memory())
            .or_else(|| due.first().copied());
        self.acted = due;
        Round {
            pressure,
            met,
            reclaim,
        }
    }

    /// Whether readings taken after a node-level reclaim (image and container
    /// collection) leave every threshold met with its minimum reclaim: then no pod
    /// needs to go.
    pub fn relieved(&self, readings: &BTreeMap<Signal, Reading>) -> bool {
        self.met(readings, true).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Flags, thresholds};
    use super::*;

    fn readings(memory: u64, nodefs: u64) -> BTreeMap<Signal, Reading> {
        [
            (
                Signal::MemoryAvailable,
                Reading {
                    available: memory << 20,
                    capacity: 8 << 30,
                },
            ),
            (
                Signal::NodefsAvailable,
                Reading {
                    available: nodefs << 20,
                    capacity: 1000 << 20,
                },
            ),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn soft_thresholds_act_after_their_grace_and_hard_ones_at_once() {
        let t = thresholds(&Flags {
            hard: "memory.available<100Mi,nodefs.available<10%".into(),
            soft: "memory.available<1Gi".into(),
            soft_grace: "memory.available=30s".into(),
            ..Default::default()
        })
        .unwrap();
        let mut d = Decider::new(t, Duration::from_secs(60));
        let t0 = Instant::now();
        // Below the soft threshold only: pressure at once, no reclaim yet.
        let r = d.round(&readings(500, 500), t0);
        assert!(r.pressure.memory && !r.pressure.disk);
        assert_eq!(r.met, [2]);
        assert_eq!(r.reclaim, None);
        let r = d.round(&readings(500, 500), t0 + Duration::from_secs(29));
        assert_eq!(r.reclaim, None);
        let r = d.round(&readings(500, 500), t0 + Duration::from_secs(30));
        assert_eq!(r.reclaim, Some(2));
        // Relieved past the soft threshold: the grace starts again next time.
        let r = d.round(&readings(2000, 500), t0 + Duration::from_secs(31));
        assert_eq!((r.met.len(), r.reclaim), (0, None));
        assert!(r.pressure.memory, "held for the transition period");
        let r = d.round(&readings(500, 500), t0 + Duration::from_secs(32));
        assert_eq!(r.reclaim, None);
        // A hard threshold acts at once; memory goes first.
        let r = d.round(&readings(50, 50), t0 + Duration::from_secs(33));
        assert_eq!(r.reclaim, Some(0));
        let r = d.round(&readings(2000, 50), t0 + Duration::from_secs(34));
        assert_eq!(r.reclaim, Some(1));
        let r = d.round(&readings(2000, 500), t0 + Duration::from_secs(95));
        assert_eq!(r.pressure, Pressure::default());
    }

    #[test]
    fn a_threshold_acted_on_stays_until_its_minimum_reclaim() {
        let t = thresholds(&Flags {
            hard: "nodefs.available<100Mi".into(),
            min_reclaim: "nodefs.available=50Mi".into(),
            ..Default::default()
        })
        .unwrap();
        let mut d = Decider::new(t, Duration::ZERO);
        let t0 = Instant::now();
        assert_eq!(d.round(&readings(4000, 90), t0).reclaim, Some(0));
        // 120Mi is past the threshold but short of 150Mi: still reclaiming.
        assert!(!d.relieved(&readings(4000, 120)));
        assert_eq!(
            d.round(&readings(4000, 120), t0 + Duration::from_secs(1))
                .reclaim,
            Some(0)
        );
        assert!(d.relieved(&readings(4000, 160)));
        let r = d.round(&readings(4000, 160), t0 + Duration::from_secs(2));
        assert_eq!(r.reclaim, None);
        // Not acted on before: 120Mi is no pressure.
        let r = d.round(&readings(4000, 120), t0 + Duration::from_secs(3));
        assert_eq!(r.reclaim, None);
    }
}
