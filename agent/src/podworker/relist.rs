//! The node's relist (kubelet's PLEG): once a pass, the state of every container of
//! the pods that have a worker, summed up per pod; a pod whose sum changed since the
//! last pass has its worker woken. So a settled pod's worker sleeps until one of its
//! containers starts, exits or fails, instead of reading its records every second.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use crate::runtime::Runtime;
use crate::runtime::container::ContainerState;

/// What the last relist saw, by pod uid.
#[derive(Default)]
pub(super) struct Relist {
    seen: HashMap<String, u64>,
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
        self.at = Some(Instant::now());
        self.changed_by(pods, |uid| summary(rt, uid))
    }

    /// [`Relist::changed`] with each pod's summary from `sum`.
    fn changed_by<'a>(
        &mut self,
        pods: impl Iterator<Item = &'a String>,
        sum: impl Fn(&str) -> u64,
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

/// One number for where every container of pod `uid` stands.
fn summary(rt: &Runtime, uid: &str) -> u64 {
    let mut h = DefaultHasher::new();
    for id in rt.pod_container_ids(uid) {
        id.hash(&mut h);
        state_key(&rt.container_state(&id)).hash(&mut h);
    }
    h.finish()
}

/// What of a container's state a worker acts on: created, running (which process),
/// exited (with what code), or failed.
fn state_key(s: &ContainerState) -> (u8, i64) {
    match s {
        ContainerState::Created => (0, 0),
        ContainerState::Running { pid, .. } => (1, i64::from(*pid)),
        ContainerState::Exited { exit, .. } => (2, i64::from(exit.exit_code)),
        ContainerState::Failed(_) => (3, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::shim::ExitRecord;

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
        let exit = |code| ContainerState::Exited {
            exit: ExitRecord {
                exit_code: code,
                signal: None,
                oom_killed: false,
                finished_at: "t".into(),
                message: String::new(),
            },
            started_at: None,
        };
        let running = |pid| ContainerState::Running {
            pid,
            started_at: "t".into(),
        };
        let keys = [
            state_key(&ContainerState::Created),
            state_key(&running(1)),
            state_key(&running(2)),
            state_key(&exit(0)),
            state_key(&exit(1)),
            state_key(&ContainerState::Failed("x".into())),
        ];
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
    }
}
