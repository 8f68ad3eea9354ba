//! The node's relist (kubelet's PLEG): once a pass, the state of every container of
//! the pods that have a worker, summed up per pod; a pod whose sum changed since the
//! last pass has its worker woken. So a settled pod's worker sleeps until one of its
//! containers starts, exits or fails, instead of reading its records every second.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use crate::runtime::shim::{ERROR, EXIT, STATE, ShimState};
use crate::runtime::{Runtime, read_json};

/// What the last relist saw, by pod uid.
#[derive(Default)]
pub(super) struct Relist {
    seen: HashMap<String, u64>,
    /// The shim of each started container, by ID (its `state.json` is written once,
    /// so it is read once).
    shims: HashMap<String, u32>,
    /// When the last relist was made.
    at: Option<Instant>,
}

impl Relist {
    /// Whether a relist is due: none in the last `every` (the dispatcher passes more
    /// often while pods change; the relist keeps its own pace).
    pub(super) fn due(&self, every: Duration) -> bool {
        self.at.is_none_or(|at| at.elapsed() >= every)
    }

    /// Relists the containers of `pods`: those whose containers changed since the last
    /// relist (a pod seen for the first time is not a change). Pods not passed are
    /// forgotten.
    pub(super) fn changed<'a>(
        &mut self,
        rt: &Runtime,
        pods: impl Iterator<Item = &'a String>,
    ) -> Vec<String> {
        let start = Instant::now();
        let metrics = super::metrics::pod_manager();
        if let Some(before) = self.at {
            metrics
                .relist_interval
                .observe(start.duration_since(before).as_secs_f64());
        }
        self.at = Some(start);
        let mut shims = std::mem::take(&mut self.shims);
        let mut listed = HashMap::new();
        let changed = self.changed_by(pods, |uid| summary(rt, uid, &mut shims, &mut listed));
        self.shims = listed;
        metrics
            .relist_duration
            .observe(start.elapsed().as_secs_f64());
        changed
    }

    /// [`Relist::changed`] with each pod's summary from `sum`.
    fn changed_by<'a>(
        &mut self,
        pods: impl Iterator<Item = &'a String>,
        mut sum: impl FnMut(&str) -> u64,
    ) -> Vec<String> {
        let mut now = HashMap::new();
        let mut changed = Vec::new();
        for uid in pods {
            let sum = sum(uid);
            if self.seen.get(uid).is_some_and(|before| *before != sum) {
                changed.push(uid.clone());
            }
            now.insert(uid.clone(), sum);
        }
        self.seen = now;
        changed
    }
}

/// One number for where every container of pod `uid` stands, from the shims' files
/// looked at (not read: the shim pid comes from `known`) and whether each shim lives;
/// the shims seen go into `listed`.
fn summary(
    rt: &Runtime,
    uid: &str,
    known: &mut HashMap<String, u32>,
    listed: &mut HashMap<String, u32>,
) -> u64 {
    let mut h = DefaultHasher::new();
    for id in rt.pod_container_ids(uid) {
        id.hash(&mut h);
        let dir = rt.container_dir(&id);
        let shim = known.remove(&id).or_else(|| {
            let state: ShimState = read_json(&dir.join(STATE)).ok().flatten()?;
            Some(state.shim_pid)
        });
        let exited = dir.join(EXIT).exists();
        let failed = !exited && dir.join(ERROR).exists();
        state_key(shim, exited, failed, crate::sys::process::alive).hash(&mut h);
        if let Some(pid) = shim {
            listed.insert(id, pid);
        }
    }
    h.finish()
}

/// What of a container's state a worker acts on: created, running (under which
/// shim), exited, failed, or its shim gone without a word.
fn state_key(shim: Option<u32>, exited: bool, failed: bool, alive: fn(u32) -> bool) -> (u8, u32) {
    match (shim, exited, failed) {
        (_, true, _) => (2, 0),
        (_, _, true) => (3, 0),
        (None, _, _) => (0, 0),
        (Some(pid), _, _) if alive(pid) => (1, pid),
        (Some(_), _, _) => (4, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_woken_when_its_containers_change_and_not_when_first_seen() {
        let mut r = Relist::default();
        let pods = ["a".to_string(), "b".to_string()];
        let states = std::cell::RefCell::new(HashMap::from([("a", 1u64), ("b", 1)]));
        let sum = |uid: &str| states.borrow()[uid];
        assert!(r.changed_by(pods.iter(), sum).is_empty());
        assert!(r.changed_by(pods.iter(), sum).is_empty());
        states.borrow_mut().insert("b", 2);
        assert_eq!(r.changed_by(pods.iter(), sum), vec!["b".to_string()]);
        assert!(r.changed_by(pods.iter(), sum).is_empty());
        // A pod gone is forgotten: back, it is new.
        assert!(r.changed_by(pods[..1].iter(), sum).is_empty());
        states.borrow_mut().insert("b", 3);
        assert!(r.changed_by(pods.iter(), sum).is_empty());
    }

    #[test]
    fn what_a_worker_acts_on_tells_states_apart() {
        let alive = |pid: u32| pid == 7;
        let keys = [
            state_key(None, false, false, alive),
            state_key(Some(7), false, false, alive),
            state_key(Some(8), false, false, alive),
            state_key(Some(7), true, false, alive),
            state_key(Some(7), false, true, alive),
        ];
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
        // An exit is an exit whether or not its shim is still there.
        assert_eq!(
            state_key(Some(9), true, false, alive),
            state_key(Some(7), true, false, alive)
        );
    }
}
