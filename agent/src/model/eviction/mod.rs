//! Eviction signals and thresholds as kubelet defines them (`--eviction-hard`), and the
//! node conditions they drive: MemoryPressure from `memory.available`, DiskPressure
//! from the `nodefs.*` and `imagefs.*` signals, PIDPressure from `pid.available`. A
//! condition stays true for the pressure transition period after its signal last
//! crossed a threshold (kubelet's `evictionPressureTransitionPeriod`, 5 minutes).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::quantity::Quantity;

pub mod decide;
pub mod rank;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EvictionError {
    #[error(
        "{0}: {1:?} is not <signal><<quantity or percent> (signals: memory.available, allocatableMemory.available, nodefs.available, nodefs.inodesFree, imagefs.available, imagefs.inodesFree, pid.available)"
    )]
    Malformed(&'static str, String),
    #[error("{0}: unknown signal {1:?}")]
    Signal(&'static str, String),
    #[error("{0}: {1:?} is not a quantity or a percentage between 0 and 100")]
    Amount(&'static str, String),
    #[error("{0:?} is not a duration (like 5m0s, 30s, 1h)")]
    Duration(String),
    #[error("{0}: {1:?} is not <signal>=<value>[,<signal>=<value>...]")]
    Pair(&'static str, String),
    #[error(
        "--eviction-soft threshold {0} has no grace period: give one in --eviction-soft-grace-period ({0}=1m30s)"
    )]
    NoGrace(String),
    #[error("--eviction-soft-grace-period names {0}, which has no --eviction-soft threshold")]
    GraceWithoutThreshold(String),
}

/// A signal kubelet evicts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Signal {
    MemoryAvailable,
    /// What the pods may still use of the node's allocatable memory (the `kubepods`
    /// cgroup's `memory.max` less its working set); its hard threshold is
    /// `memory.available`'s, as kubelet copies it with `enforceNodeAllocatable: [pods]`.
    AllocatableMemoryAvailable,
    NodefsAvailable,
    NodefsInodesFree,
    ImagefsAvailable,
    ImagefsInodesFree,
    PidAvailable,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Self::MemoryAvailable => "memory.available",
            Self::AllocatableMemoryAvailable => "allocatableMemory.available",
            Self::NodefsAvailable => "nodefs.available",
            Self::NodefsInodesFree => "nodefs.inodesFree",
            Self::ImagefsAvailable => "imagefs.available",
            Self::ImagefsInodesFree => "imagefs.inodesFree",
            Self::PidAvailable => "pid.available",
        }
    }

    /// The resource kubelet reclaims for the signal, as its eviction messages name it.
    pub fn resource(self) -> &'static str {
        match self {
            Self::MemoryAvailable | Self::AllocatableMemoryAvailable => "memory",
            Self::NodefsAvailable | Self::ImagefsAvailable => "ephemeral-storage",
            Self::NodefsInodesFree | Self::ImagefsInodesFree => "inodes",
            Self::PidAvailable => "pids",
        }
    }

    /// Whether the signal reads memory (MemoryPressure; reclaimed before the others).
    pub fn is_memory(self) -> bool {
        matches!(
            self,
            Self::MemoryAvailable | Self::AllocatableMemoryAvailable
        )
    }

    fn parse(name: &str) -> Option<Self> {
        [
            Self::MemoryAvailable,
            Self::AllocatableMemoryAvailable,
            Self::NodefsAvailable,
            Self::NodefsInodesFree,
            Self::ImagefsAvailable,
            Self::ImagefsInodesFree,
            Self::PidAvailable,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// Below how much of a signal the threshold is crossed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    /// An absolute amount (bytes, inodes, processes).
    Absolute(u64),
    /// A percentage of the signal's capacity.
    Percent(f64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub below: Amount,
    /// A hard threshold evicts at once (pods get 1 s); a soft one once it has been
    /// crossed for `grace` (pods get at most `--eviction-max-pod-grace-period`).
    pub hard: bool,
    pub grace: Duration,
    /// How far past the threshold a reclaim must go before the threshold counts as
    /// resolved (kubelet's `evictionMinimumReclaim`).
    pub min_reclaim: Amount,
}

impl Default for Threshold {
    fn default() -> Self {
        Self {
            signal: Signal::MemoryAvailable,
            below: Amount::Absolute(0),
            hard: true,
            grace: Duration::ZERO,
            min_reclaim: Amount::Absolute(0),
        }
    }
}

fn amount_of(a: Amount, capacity: u64) -> u64 {
    match a {
        Amount::Absolute(n) => n,
        Amount::Percent(p) => (capacity as f64 * p / 100.0) as u64,
    }
}

impl Threshold {
    /// The threshold in absolute terms for a signal whose capacity is `capacity`.
    pub fn absolute(&self, capacity: u64) -> u64 {
        amount_of(self.below, capacity)
    }

    /// Whether `r` crosses the threshold; with `min_reclaim`, whether it is still
    /// short of the threshold plus the minimum reclaim.
    pub fn met(&self, r: Reading, min_reclaim: bool) -> bool {
        let extra = if min_reclaim {
            amount_of(self.min_reclaim, r.capacity)
        } else {
            0
        };
        r.available < self.absolute(r.capacity).saturating_add(extra)
    }
}

/// kubelet's hard thresholds on Linux when none are given.
pub const DEFAULT_HARD: &str = "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%,imagefs.inodesFree<5%";

/// Parses kubelet's `--eviction-hard` form, `signal<amount,...` (hard thresholds).
pub fn parse_thresholds(text: &str) -> Result<Vec<Threshold>, EvictionError> {
    parse_in("--eviction-hard", text)
}

fn parse_amount(flag: &'static str, amount: &str) -> Result<Amount, EvictionError> {
    let amount = amount.trim();
    let bad = || EvictionError::Amount(flag, amount.to_string());
    if let Some(p) = amount.strip_suffix('%') {
        let p: f64 = p.parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&p) {
            return Err(bad());
        }
        return Ok(Amount::Percent(p));
    }
    let q = Quantity::parse(amount).map_err(|_| bad())?;
    Ok(Amount::Absolute(
        u64::try_from(q.value()).map_err(|_| bad())?,
    ))
}

fn parse_signal(flag: &'static str, name: &str) -> Result<Signal, EvictionError> {
    Signal::parse(name.trim()).ok_or_else(|| EvictionError::Signal(flag, name.to_string()))
}

/// `signal<amount,...` of the flag `flag`.
fn parse_in(flag: &'static str, text: &str) -> Result<Vec<Threshold>, EvictionError> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, amount) = item
            .split_once('<')
            .ok_or_else(|| EvictionError::Malformed(flag, item.to_string()))?;
        out.push(Threshold {
            signal: parse_signal(flag, name)?,
            below: parse_amount(flag, amount)?,
            ..Default::default()
        });
    }
    Ok(out)
}

/// `signal=value,...` of the flag `flag`.
fn parse_pairs(flag: &'static str, text: &str) -> Result<Vec<(Signal, String)>, EvictionError> {
    text.split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(|item| {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| EvictionError::Pair(flag, item.to_string()))?;
            Ok((parse_signal(flag, name)?, value.trim().to_string()))
        })
        .collect()
}

/// The eviction flags as kubelet takes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// `--eviction-hard`
    pub hard: String,
    /// `--eviction-soft`
    pub soft: String,
    /// `--eviction-soft-grace-period`: `signal=duration,...`
    pub soft_grace: String,
    /// `--eviction-minimum-reclaim`: `signal=quantity or percent,...`
    pub min_reclaim: String,
}

/// Every threshold the flags set, hard then soft, validated as kubelet validates them:
/// a soft threshold needs a grace period and a grace period a soft threshold.
pub fn thresholds(flags: &Flags) -> Result<Vec<Threshold>, EvictionError> {
    let mut out = parse_in("--eviction-hard", &flags.hard)?;
    let graces = parse_pairs("--eviction-soft-grace-period", &flags.soft_grace)?;
    let mut soft = parse_in("--eviction-soft", &flags.soft)?;
    for t in &mut soft {
        let (_, g) = graces
            .iter()
            .find(|(s, _)| *s == t.signal)
            .ok_or_else(|| EvictionError::NoGrace(t.signal.name().to_string()))?;
        t.hard = false;
        t.grace = parse_duration(g)?;
    }
    if let Some((s, _)) = graces
        .iter()
        .find(|(s, _)| !soft.iter().any(|t| t.signal == *s))
    {
        return Err(EvictionError::GraceWithoutThreshold(s.name().to_string()));
    }
    out.extend(soft);
    for (signal, amount) in parse_pairs("--eviction-minimum-reclaim", &flags.min_reclaim)? {
        let amount = parse_amount("--eviction-minimum-reclaim", &amount)?;
        for t in out.iter_mut().filter(|t| t.signal == signal) {
            t.min_reclaim = amount;
        }
    }
    // The pods' share: kubernetes limits `kubepods` to the allocatable
    // (`enforceNodeAllocatable: [pods]`, always so on kernlet), so kubelet adds a hard
    // `allocatableMemory.available` threshold beside each hard `memory.available` one.
    let allocatable: Vec<Threshold> = out
        .iter()
        .filter(|t| t.hard && t.signal == Signal::MemoryAvailable)
        .map(|t| Threshold {
            signal: Signal::AllocatableMemoryAvailable,
            ..*t
        })
        .collect();
    out.extend(allocatable);
    Ok(out)
}

/// kubelet's duration form (`5m0s`, `30s`, `1h`, `0`).
pub fn parse_duration(text: &str) -> Result<Duration, EvictionError> {
    let bad = || EvictionError::Duration(text.to_string());
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0u64;
    let mut number = String::new();
    let mut any = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().map_err(|_| bad())?;
        number.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        any = true;
    }
    if !number.is_empty() || !any {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// What is left of a signal and how much there is of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    pub available: u64,
    pub capacity: u64,
}

/// Each reading beside its threshold (absolute), for `kernlet status`.
pub fn report(thresholds: &[Threshold], readings: &BTreeMap<Signal, Reading>) -> serde_json::Value {
    serde_json::Value::Array(
        readings
            .iter()
            .map(|(signal, r)| {
                let threshold = thresholds
                    .iter()
                    .filter(|t| t.signal == *signal)
                    .map(|t| t.absolute(r.capacity))
                    .max();
                serde_json::json!({
                    "signal": signal.name(),
                    "available": r.available,
                    "capacity": r.capacity,
                    "threshold": threshold,
                    "crossed": threshold.is_some_and(|t| r.available < t),
                })
            })
            .collect(),
    )
}

/// An end of one pod for the node's sake: kubelet's status reason (`Evicted` for node
/// pressure, `Terminated` for the node's shutdown) and message, the grace period its
/// containers get, and whether the pod gets the `DisruptionTarget` condition (all do
/// but evictions for a pod's own local-storage limit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eviction {
    pub reason: String,
    pub message: String,
    pub grace: Duration,
    pub disruption_condition: bool,
}

/// The status reason of an evicted pod.
pub const REASON: &str = "Evicted";

/// The three pressure conditions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

impl Pressure {
    /// The conditions that hold, in kubelet's order and spelling.
    pub fn conditions(self) -> Vec<&'static str> {
        [
            (self.memory, "MemoryPressure"),
            (self.disk, "DiskPressure"),
            (self.pid, "PIDPressure"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// The node's pressure conditions as the eviction manager last computed them, read
/// by the node controller and admission (kubelet's eviction admit handler).
pub type SharedPressure = super::shared::Shared<Pressure>;

/// kubelet's eviction admission: under pressure only critical pods are admitted,
/// except that under memory pressure alone pods other than BestEffort are, and
/// BestEffort ones that tolerate the memory-pressure taint. `Err` is kubelet's message.
pub fn admit(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    best_effort: bool,
    pressure: Pressure,
) -> Result<(), String> {
    let conditions = pressure.conditions();
    if conditions.is_empty() || spec.priority.is_some_and(|p| p >= 2_000_000_000) {
        return Ok(());
    }
    if conditions == ["MemoryPressure"] {
        let tolerated = spec.tolerations.iter().flatten().any(|t| {
            let key = t.key.as_deref().unwrap_or_default();
            let key_matches = if key.is_empty() {
                t.operator.as_deref() == Some("Exists")
            } else {
                key == "node.kubernetes.io/memory-pressure"
            };
            key_matches && matches!(t.effect.as_deref(), None | Some("" | "NoSchedule"))
        });
        if !best_effort || tolerated {
            return Ok(());
        }
    }
    Err(format!(
        "The node had condition: [{}]. ",
        conditions.join(" ")
    ))
}

/// The conditions of the signals crossed now, held for the transition period after
/// they were last crossed.
#[derive(Debug)]
pub struct Observer {
    period: Duration,
    last: [Option<Instant>; 3],
}

impl Observer {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            last: [None; 3],
        }
    }

    /// The conditions at `now` given the signals crossed now.
    pub fn observe(&mut self, crossed: &[Signal], now: Instant) -> Pressure {
        for s in crossed {
            let i = match s {
                s if s.is_memory() => 0,
                Signal::PidAvailable => 2,
                _ => 1,
            };
            self.last[i] = Some(now);
        }
        let held = |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) < self.period);
        Pressure {
            memory: held(self.last[0]) || crossed.iter().any(|s| s.is_memory()),
            disk: held(self.last[1])
                || crossed
                    .iter()
                    .any(|s| !s.is_memory() && *s != Signal::PidAvailable),
            pid: held(self.last[2]) || crossed.contains(&Signal::PidAvailable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use decide::Decider;

    #[test]
    fn kubelets_defaults_and_forms_parse() {
        let t = parse_thresholds(DEFAULT_HARD).unwrap();
        assert_eq!(t.len(), 5);
        assert_eq!(t[0].below, Amount::Absolute(100 << 20));
        assert_eq!(t[1].below, Amount::Percent(10.0));
        assert_eq!(t[1].absolute(1000), 100);
        assert!(matches!(
            parse_thresholds("memory.free<1Gi"),
            Err(EvictionError::Signal(..))
        ));
        assert!(matches!(
            parse_thresholds("nodefs.available<120%"),
            Err(EvictionError::Amount(..))
        ));
        assert!(matches!(
            parse_thresholds("nodefs.available>1"),
            Err(EvictionError::Malformed(..))
        ));
        assert_eq!(parse_thresholds("").unwrap(), vec![]);
        assert_eq!(parse_duration("5m0s").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30s").unwrap(), Duration::from_secs(3630));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn soft_thresholds_need_grace_periods_and_minimum_reclaim_applies_to_both() {
        let flags = Flags {
            hard: "memory.available<100Mi".into(),
            soft: "memory.available<1Gi,nodefs.available<20%".into(),
            soft_grace: "memory.available=1m30s,nodefs.available=2m".into(),
            min_reclaim: "memory.available=200Mi,nodefs.available=5%".into(),
        };
        let t = thresholds(&flags).unwrap();
        assert_eq!(t.len(), 4);
        // The pods' share gets the hard memory threshold, with its minimum reclaim.
        assert_eq!(
            t[3],
            Threshold {
                signal: Signal::AllocatableMemoryAvailable,
                ..t[0]
            }
        );
        assert!(t[0].hard && t[0].grace.is_zero());
        assert_eq!(t[0].min_reclaim, Amount::Absolute(200 << 20));
        assert!(!t[1].hard);
        assert_eq!(t[1].grace, Duration::from_secs(90));
        assert_eq!(t[2].min_reclaim, Amount::Percent(5.0));
        let r = Reading {
            available: 1000 << 20,
            capacity: 8 << 30,
        };
        assert!(t[1].met(r, false), "1000Mi is below 1Gi");
        assert!(!t[0].met(r, false));
        let r = Reading {
            available: 250 << 20,
            capacity: 8 << 30,
        };
        assert!(!t[0].met(r, false));
        assert!(t[0].met(r, true), "250Mi is short of 100Mi + 200Mi");
        let no_grace = Flags {
            soft: "memory.available<1Gi".into(),
            ..Default::default()
        };
        assert_eq!(
            thresholds(&no_grace),
            Err(EvictionError::NoGrace("memory.available".into()))
        );
        let stray = Flags {
            soft_grace: "pid.available=1m".into(),
            ..Default::default()
        };
        assert_eq!(
            thresholds(&stray),
            Err(EvictionError::GraceWithoutThreshold("pid.available".into()))
        );
        let bad = Flags {
            min_reclaim: "memory.available".into(),
            ..Default::default()
        };
        assert!(matches!(thresholds(&bad), Err(EvictionError::Pair(..))));
        assert!(
            EvictionError::Signal("--eviction-soft", "x".into())
                .to_string()
                .starts_with("--eviction-soft: ")
        );
    }

    #[test]
    fn admission_under_pressure_as_kubelets() {
        let spec = |json: serde_json::Value| -> k8s_openapi::api::core::v1::PodSpec {
            serde_json::from_value(json).unwrap()
        };
        let plain = spec(serde_json::json!({"containers": [{"name": "c"}]}));
        let memory = Pressure {
            memory: true,
            ..Default::default()
        };
        let disk = Pressure {
            disk: true,
            ..Default::default()
        };
        assert_eq!(admit(&plain, true, Pressure::default()), Ok(()));
        assert_eq!(
            admit(&plain, true, memory),
            Err("The node had condition: [MemoryPressure]. ".into())
        );
        assert_eq!(
            admit(&plain, false, memory),
            Ok(()),
            "Burstable under memory"
        );
        assert_eq!(
            admit(&plain, false, disk),
            Err("The node had condition: [DiskPressure]. ".into())
        );
        assert_eq!(
            admit(
                &plain,
                false,
                Pressure {
                    memory: true,
                    disk: true,
                    pid: false
                }
            ),
            Err("The node had condition: [MemoryPressure DiskPressure]. ".into())
        );
        let tolerant = spec(serde_json::json!({"containers": [{"name": "c"}],
            "tolerations": [{"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"}]}));
        assert_eq!(admit(&tolerant, true, memory), Ok(()));
        assert!(admit(&tolerant, true, disk).is_err());
        let critical =
            spec(serde_json::json!({"containers": [{"name": "c"}], "priority": 2_000_001_000}));
        assert_eq!(admit(&critical, true, disk), Ok(()));
        let shared = SharedPressure::default();
        shared.set(disk);
        assert_eq!(shared.get(), disk);
    }

    #[test]
    fn crossed_thresholds_set_conditions_held_for_the_period() {
        let t = parse_thresholds(DEFAULT_HARD).unwrap();
        let mut r = BTreeMap::new();
        r.insert(
            Signal::MemoryAvailable,
            Reading {
                available: 50 << 20,
                capacity: 8 << 30,
            },
        );
        r.insert(
            Signal::NodefsAvailable,
            Reading {
                available: 500,
                capacity: 1000,
            },
        );
        r.insert(
            Signal::ImagefsInodesFree,
            Reading {
                available: 1,
                capacity: 1000,
            },
        );
        let mut d = Decider::new(t.clone(), Duration::from_secs(300));
        let t0 = Instant::now();
        let round = d.round(&r, t0);
        let met: Vec<Signal> = round.met.iter().map(|&i| t[i].signal).collect();
        assert_eq!(met, [Signal::MemoryAvailable, Signal::ImagefsInodesFree]);
        assert_eq!(
            round.pressure,
            Pressure {
                memory: true,
                disk: true,
                pid: false
            }
        );
        // Relieved: still under pressure within the period, not after it.
        r.clear();
        let p = d.round(&r, t0 + Duration::from_secs(299)).pressure;
        assert!(p.memory && p.disk);
        assert_eq!(
            d.round(&r, t0 + Duration::from_secs(301)).pressure,
            Pressure::default()
        );
    }
}
