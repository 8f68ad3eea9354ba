//! Graceful node shutdown as kubelet 1.36 orders it: pods end in groups of priority,
//! lowest first, each group given its share of the shutdown grace period (kubelet's
//! `shutdownGracePeriod` and `shutdownGracePeriodCriticalPods`, or
//! `shutdownGracePeriodByPodPriority`), a pod never more than its own
//! `terminationGracePeriodSeconds`. Ended pods are `Failed`/`Terminated`.

use std::time::Duration;

use super::pod_lifecycle::SYSTEM_CRITICAL_PRIORITY;

/// The status reason and message of a pod ended by the node's shutdown.
pub const REASON: &str = "Terminated";
pub const MESSAGE: &str = "Pod was terminated in response to imminent node shutdown.";
/// What a pod bound to a node that is shutting down is refused with.
pub const NOT_ADMITTED_REASON: &str = "NodeShutdown";
pub const NOT_ADMITTED_MESSAGE: &str = "Pod was rejected as the node is shutting down.";
/// The Ready condition's message while the node shuts down.
pub const NOT_READY_MESSAGE: &str = "node is shutting down";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShutdownError {
    #[error(
        "--shutdown-grace-period-by-pod-priority: {0:?} is not <priority>=<seconds>[,...] (like 0=30,2000000000=10)"
    )]
    Malformed(String),
    #[error(
        "--shutdown-grace-period-critical-pods ({critical:?}) must not be longer than --shutdown-grace-period ({total:?})"
    )]
    CriticalLonger { critical: Duration, total: Duration },
}

/// A priority group: pods of this priority or above (up to the next group's) and the
/// time they get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    pub priority: i32,
    pub grace: Duration,
}

/// The groups, lowest priority first: `by_priority` (`priority=seconds,...`) when
/// given, else kubelet's two from `total` and `critical` (none when `total` is zero:
/// graceful shutdown off).
pub fn groups(
    total: Duration,
    critical: Duration,
    by_priority: &str,
) -> Result<Vec<Group>, ShutdownError> {
    let mut out = Vec::new();
    for item in by_priority
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        let bad = || ShutdownError::Malformed(item.to_string());
        let (p, s) = item.split_once('=').ok_or_else(bad)?;
        out.push(Group {
            priority: p.trim().parse().map_err(|_| bad())?,
            grace: Duration::from_secs(s.trim().parse().map_err(|_| bad())?),
        });
    }
    if out.is_empty() && !total.is_zero() {
        if critical > total {
            return Err(ShutdownError::CriticalLonger { critical, total });
        }
        out = vec![
            Group {
                priority: 0,
                grace: total - critical,
            },
            Group {
                priority: SYSTEM_CRITICAL_PRIORITY,
                grace: critical,
            },
        ];
    }
    out.sort_by_key(|g| g.priority);
    Ok(out)
}

/// The group (index) of a pod of `priority`: the highest group at or below it; pods
/// below every group go to the lowest, above every group to the highest.
pub fn group_of(groups: &[Group], priority: i32) -> usize {
    let i = groups.partition_point(|g| g.priority < priority);
    if i == groups.len() {
        return groups.len().saturating_sub(1);
    }
    if i > 0 && groups[i].priority > priority {
        i - 1
    } else {
        i
    }
}

/// The grace period a pod of its group gets: the group's, or the pod's own when
/// shorter.
pub fn pod_grace(group: &Group, own: Option<i64>) -> Duration {
    match own.and_then(|s| u64::try_from(s).ok()) {
        Some(s) if Duration::from_secs(s) <= group.grace => Duration::from_secs(s),
        _ => group.grace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelets_two_groups_and_custom_ones() {
        assert_eq!(groups(Duration::ZERO, Duration::ZERO, ""), Ok(vec![]));
        let g = groups(Duration::from_secs(30), Duration::from_secs(10), "").unwrap();
        assert_eq!(
            g,
            [
                Group {
                    priority: 0,
                    grace: Duration::from_secs(20)
                },
                Group {
                    priority: SYSTEM_CRITICAL_PRIORITY,
                    grace: Duration::from_secs(10)
                }
            ]
        );
        assert_eq!(group_of(&g, -5), 0);
        assert_eq!(group_of(&g, 0), 0);
        assert_eq!(group_of(&g, 1000), 0);
        assert_eq!(group_of(&g, SYSTEM_CRITICAL_PRIORITY), 1);
        assert_eq!(group_of(&g, SYSTEM_CRITICAL_PRIORITY + 1000), 1);
        assert!(matches!(
            groups(Duration::from_secs(5), Duration::from_secs(10), ""),
            Err(ShutdownError::CriticalLonger { .. })
        ));
        let custom = groups(Duration::ZERO, Duration::ZERO, "100000=5, 0=60,1000=20").unwrap();
        assert_eq!(
            custom.iter().map(|g| g.priority).collect::<Vec<_>>(),
            [0, 1000, 100000]
        );
        assert_eq!(group_of(&custom, 999), 0);
        assert_eq!(group_of(&custom, 1000), 1);
        assert_eq!(group_of(&custom, 5000), 1);
        assert!(groups(Duration::ZERO, Duration::ZERO, "x=1").is_err());
        assert_eq!(pod_grace(&g[0], Some(5)), Duration::from_secs(5));
        assert_eq!(pod_grace(&g[0], Some(60)), Duration::from_secs(20));
        assert_eq!(pod_grace(&g[0], None), Duration::from_secs(20));
    }
}
