//! The node IDs `hostUsers: false` pods are mapped to, allocated as kubelet does: a
//! range of 65,536 IDs per pod (container IDs 0–65535), ranges aligned on their size;
//! by default every range from 65,536 up (so no pod maps onto the node's own IDs
//! below 65,536), or — when the node gives the user `kubelet` subordinate IDs in
//! `/etc/subuid` and `/etc/subgid` — only those.

use std::collections::BTreeSet;

use crate::sys::userns::IdRange;

/// IDs per pod (kubelet's default `userNamespaces.idsPerPod`).
pub const IDS_PER_POD: u32 = 65_536;

/// The user whose subordinate IDs kubelet takes for pods.
pub const KUBELET_USER: &str = "kubelet";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsernsError {
    #[error(
        "/etc/subuid and /etc/subgid give the user {KUBELET_USER} different ranges ({uids} and {gids}): they must be the same"
    )]
    Different { uids: String, gids: String },
    #[error(
        "/etc/{file} gives the user {KUBELET_USER} more than one range: give it one, a multiple of {IDS_PER_POD} long"
    )]
    Several { file: &'static str },
    #[error("/etc/{file}: the line {line:?} is not user:first:count")]
    Malformed { file: &'static str, line: String },
    #[error(
        "the subordinate IDs of {KUBELET_USER} ({first}, {count} long) must start at a multiple of {IDS_PER_POD} (not 0) and be a multiple of it long"
    )]
    Misaligned { first: u32, count: u64 },
    #[error(
        "the subordinate IDs of {KUBELET_USER} hold {ranges} pod ranges of {IDS_PER_POD} IDs; maxPods is {max_pods}: give it at least {need} IDs"
    )]
    TooFew {
        ranges: u64,
        max_pods: u64,
        need: u64,
    },
    #[error("every ID range of this node is in use ({ranges} pods have one)")]
    Exhausted { ranges: u64 },
}

/// The ranges pods may be given: `count` ranges of [`IDS_PER_POD`] from `first`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    first: u32,
    count: u64,
}

impl Default for Pool {
    /// kubelet's default: from 65,536 to the last 32-bit ID.
    fn default() -> Self {
        Self {
            first: IDS_PER_POD,
            count: ((1u64 << 32) - u64::from(IDS_PER_POD)) / u64::from(IDS_PER_POD),
        }
    }
}

/// The one `user:first:count` entry of `user` in a subid file, if any.
fn entry(text: &str, file: &'static str) -> Result<Option<(u32, u64)>, UsernsError> {
    let mut found = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split(':');
        let (Some(user), Some(first), Some(count), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(UsernsError::Malformed {
                file,
                line: line.into(),
            });
        };
        if user != KUBELET_USER {
            continue;
        }
        let (Ok(first), Ok(count)) = (first.parse::<u32>(), count.parse::<u64>()) else {
            return Err(UsernsError::Malformed {
                file,
                line: line.into(),
            });
        };
        if found.replace((first, count)).is_some() {
            return Err(UsernsError::Several { file });
        }
    }
    Ok(found)
}

impl Pool {
    /// The pool for this node: the `kubelet` user's subordinate IDs when the files
    /// give it some (checked as kubelet checks them), else the default.
    pub fn from_subids(subuid: &str, subgid: &str, max_pods: u64) -> Result<Self, UsernsError> {
        let uids = entry(subuid, "subuid")?;
        let gids = entry(subgid, "subgid")?;
        let (first, count) = match (uids, gids) {
            (None, None) => return Ok(Self::default()),
            (u, g) if u != g => {
                let show = |e: Option<(u32, u64)>| {
                    e.map_or("none".to_string(), |(f, c)| format!("{f}:{c}"))
                };
                return Err(UsernsError::Different {
                    uids: show(u),
                    gids: show(g),
                });
            }
            (Some(e), _) => e,
            (None, Some(_)) => unreachable!("the two differ"),
        };
        let unit = u64::from(IDS_PER_POD);
        if first == 0 || first % IDS_PER_POD != 0 || count % unit != 0 {
            return Err(UsernsError::Misaligned { first, count });
        }
        let ranges = count / unit;
        if ranges < max_pods {
            return Err(UsernsError::TooFew {
                ranges,
                max_pods,
                need: max_pods * unit,
            });
        }
        Ok(Self {
            first,
            count: ranges,
        })
    }

    /// The lowest free range, given the first IDs of those in use.
    pub fn allocate(&self, used: &BTreeSet<u32>) -> Result<IdRange, UsernsError> {
        (0..self.count)
            .map(|i| u64::from(self.first) + i * u64::from(IDS_PER_POD))
            .filter_map(|id| u32::try_from(id).ok())
            .find(|id| !used.contains(id))
            .map(|host_id| IdRange {
                host_id,
                length: IDS_PER_POD,
            })
            .ok_or(UsernsError::Exhausted { ranges: self.count })
    }

    /// Whether `range` is one of this pool's (a recorded pod's range after a change
    /// of `/etc/subuid` may not be).
    pub fn holds(&self, range: IdRange) -> bool {
        let unit = u64::from(IDS_PER_POD);
        let id = u64::from(range.host_id);
        range.length == IDS_PER_POD
            && id >= u64::from(self.first)
            && (id - u64::from(self.first)) % unit == 0
            && (id - u64::from(self.first)) / unit < self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_pods_get_the_lowest_free_range_above_the_nodes_ids() {
        let pool = Pool::default();
        let first = pool.allocate(&BTreeSet::new()).unwrap();
        assert_eq!(
            first,
            IdRange {
                host_id: 65_536,
                length: 65_536
            }
        );
        assert_eq!(first.map_line(), "0 65536 65536\n");
        let used: BTreeSet<u32> = [65_536, 196_608].into();
        assert_eq!(pool.allocate(&used).unwrap().host_id, 131_072);
        let used: BTreeSet<u32> = [65_536, 131_072].into();
        assert_eq!(pool.allocate(&used).unwrap().host_id, 196_608);
        // The last range ends at the last 32-bit ID.
        assert_eq!(pool.count, 65_535);
        assert!(pool.holds(IdRange {
            host_id: u32::MAX - 65_535,
            length: 65_536
        }));
        assert!(!pool.holds(IdRange {
            host_id: 0,
            length: 65_536
        }));
        assert!(!pool.holds(IdRange {
            host_id: 65_537,
            length: 65_536
        }));
    }

    #[test]
    fn the_kubelet_users_subordinate_ids_bound_the_ranges() {
        let sub = "root:100000:65536\nkubelet:655360:7208960\n";
        let pool = Pool::from_subids(sub, sub, 110).unwrap();
        assert_eq!(pool.allocate(&BTreeSet::new()).unwrap().host_id, 655_360);
        let all: BTreeSet<u32> = (0..110).map(|i| 655_360 + i * 65_536).collect();
        assert_eq!(
            pool.allocate(&all),
            Err(UsernsError::Exhausted { ranges: 110 })
        );
        // No entry for kubelet: the default.
        assert_eq!(
            Pool::from_subids("root:100000:65536\n", "", 110),
            Ok(Pool::default())
        );
    }

    #[test]
    fn subordinate_ids_kubelet_would_refuse_are_refused() {
        let ok = "kubelet:65536:7208960\n";
        assert!(matches!(
            Pool::from_subids(ok, "kubelet:131072:7208960\n", 110),
            Err(UsernsError::Different { .. })
        ));
        assert!(matches!(
            Pool::from_subids("kubelet:100000:7208960\n", "kubelet:100000:7208960\n", 110),
            Err(UsernsError::Misaligned { .. })
        ));
        assert!(matches!(
            Pool::from_subids("kubelet:65536:65536\n", "kubelet:65536:65536\n", 110),
            Err(UsernsError::TooFew { ranges: 1, .. })
        ));
        let two = "kubelet:65536:7208960\nkubelet:65536000:7208960\n";
        assert!(matches!(
            Pool::from_subids(two, two, 110),
            Err(UsernsError::Several { .. })
        ));
        assert!(matches!(
            Pool::from_subids("kubelet:x:1\n", "", 110),
            Err(UsernsError::Malformed { .. })
        ));
    }
}
