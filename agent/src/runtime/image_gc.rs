//! Image garbage collection as kubelet's image manager does it: when the image
//! filesystem is fuller than `imageGCHighThresholdPercent` (85), images no container
//! uses go, the least recently used first, until it is down to
//! `imageGCLowThresholdPercent` (80); an image is never removed while a container of
//! the node (running or not yet removed) uses it, nor before `imageMinimumGCAge` (2m)
//! since kernlet first saw it; with `imageMaximumGCAge` set, an image unused for that
//! long goes whatever the disk.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::Runtime;

/// The thresholds (kubelet's flags of the same names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageGcPolicy {
    pub high_percent: u8,
    pub low_percent: u8,
    pub min_age: Duration,
    /// `None`: images are not removed for age alone.
    pub max_age: Option<Duration>,
}

impl Default for ImageGcPolicy {
    fn default() -> Self {
        Self {
            high_percent: 85,
            low_percent: 80,
            min_age: Duration::from_secs(120),
            max_age: None,
        }
    }
}

/// An image as the collector weighs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub size: u64,
    pub first_seen: Instant,
    pub last_used: Instant,
    pub in_use: bool,
}

/// The images to remove, in order, given the image filesystem's `(capacity,
/// available)` bytes.
pub fn choose(
    candidates: &[Candidate],
    policy: &ImageGcPolicy,
    (capacity, available): (u64, u64),
    now: Instant,
) -> Vec<String> {
    let mut unused: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !c.in_use && now.duration_since(c.first_seen) >= policy.min_age)
        .collect();
    unused.sort_by_key(|c| (c.last_used, c.id.clone()));
    let mut out: Vec<String> = Vec::new();
    if let Some(max) = policy.max_age {
        out.extend(
            unused
                .iter()
                .filter(|c| now.duration_since(c.last_used) > max)
                .map(|c| c.id.clone()),
        );
    }
    let used = capacity.saturating_sub(available);
    // 100 turns usage-driven collection off, as kubelet documents the threshold.
    let by_usage = policy.high_percent < 100;
    if by_usage && capacity > 0 && used * 100 >= capacity * u64::from(policy.high_percent) {
        let target = capacity * u64::from(policy.low_percent) / 100;
        let mut to_free = used.saturating_sub(target);
        for c in unused {
            if to_free == 0 {
                break;
            }
            if !out.contains(&c.id) {
                out.push(c.id.clone());
            }
            to_free = to_free.saturating_sub(c.size);
        }
    }
    out
}

/// The collector's memory of when it first saw each image and when one was last used
/// (kubelet keeps the same in memory).
#[derive(Debug, Default)]
pub struct ImageGc {
    pub policy: ImageGcPolicy,
    first_seen: HashMap<String, Instant>,
    last_used: HashMap<String, Instant>,
}

impl ImageGc {
    pub fn new(policy: ImageGcPolicy) -> Self {
        Self {
            policy,
            ..Default::default()
        }
    }

    /// One pass: removes what [`choose`] picks; returns the removed image IDs.
    pub fn run_once(&mut self, rt: &Runtime, now: Instant) -> Vec<String> {
        self.collect(rt, now, self.policy)
    }

    /// Removes every image no container uses that is past the minimum age, whatever
    /// the disk (kubelet's `DeleteUnusedImages`, the eviction manager's reclaim).
    pub fn delete_unused(&mut self, rt: &Runtime, now: Instant) -> Vec<String> {
        let all = ImageGcPolicy {
            high_percent: 0,
            low_percent: 0,
            ..self.policy
        };
        self.collect(rt, now, all)
    }

    fn collect(&mut self, rt: &Runtime, now: Instant, policy: ImageGcPolicy) -> Vec<String> {
        let Ok(images) = rt.images.list() else {
            return Vec::new();
        };
        let in_use: HashSet<String> = rt
            .containers()
            .into_iter()
            .map(|c| c.image_id)
            .chain(rt.image_volume_ids())
            .collect();
        let mut candidates = Vec::new();
        for l in &images {
            let id = l.image.id.clone();
            let first_seen = *self.first_seen.entry(id.clone()).or_insert(now);
            if in_use.contains(&id) {
                self.last_used.insert(id.clone(), now);
            }
            candidates.push(Candidate {
                last_used: *self.last_used.get(&id).unwrap_or(&first_seen),
                first_seen,
                in_use: in_use.contains(&id),
                size: l.image.size,
                id,
            });
        }
        let Some((capacity, available, _, _)) = crate::sys::stats::filesystem(rt.images.root())
        else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for id in choose(&candidates, &policy, (capacity, available), now) {
            match rt.images.remove(&id) {
                Ok(r) => {
                    tracing::info!(image = %id, references = ?r.references, layers = r.layers, "image garbage-collected");
                    self.first_seen.remove(&id);
                    self.last_used.remove(&id);
                    removed.push(id);
                }
                Err(e) => tracing::warn!(image = %id, "image garbage collection failed: {e}"),
            }
        }
        removed
    }
}

/// The collector, shared by its own pass and the eviction manager's reclaim.
pub type SharedImageGc = std::sync::Arc<std::sync::Mutex<ImageGc>>;

/// Runs the collector every `period` until `stop` is set.
pub fn run(rt: Runtime, gc: SharedImageGc, period: Duration, stop: &std::sync::atomic::AtomicBool) {
    let mut next = Instant::now() + period;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200).min(period));
        if Instant::now() >= next {
            if let Ok(mut gc) = gc.lock() {
                gc.run_once(&rt, Instant::now());
            }
            next = Instant::now() + period;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, size: u64, age_s: u64, unused_s: u64, in_use: bool, now: Instant) -> Candidate {
        Candidate {
            id: id.into(),
            size,
            first_seen: now - Duration::from_secs(age_s),
            last_used: now - Duration::from_secs(unused_s),
            in_use,
        }
    }

    #[test]
    fn the_least_recently_used_unused_images_go_down_to_the_low_threshold() {
        let now = Instant::now() + Duration::from_secs(10_000);
        let p = ImageGcPolicy::default();
        let images = [
            c("used", 500, 9000, 0, true, now),
            c("old", 100, 9000, 5000, false, now),
            c("older", 100, 9000, 8000, false, now),
            c("recent", 100, 9000, 100, false, now),
            c("young", 900, 60, 60, false, now),
        ];
        // Below 85 % used: nothing.
        assert!(choose(&images, &p, (1000, 200), now).is_empty());
        // 90 % used: 100 bytes to free to reach 80 %: the least recently used goes.
        assert_eq!(choose(&images, &p, (1000, 100), now), ["older"]);
        // 100 % used: 200 to free: two, never the one in use or the one seen 60 s ago.
        assert_eq!(choose(&images, &p, (1000, 0), now), ["older", "old"]);
        let all = choose(&images, &p, (10_000, 0), now);
        assert_eq!(all, ["older", "old", "recent"]);
    }

    #[test]
    fn the_maximum_age_removes_long_unused_images_whatever_the_disk() {
        let now = Instant::now() + Duration::from_secs(10_000);
        let p = ImageGcPolicy {
            max_age: Some(Duration::from_secs(3600)),
            ..Default::default()
        };
        let images = [
            c("stale", 1, 9000, 7200, false, now),
            c("fresh", 1, 9000, 60, false, now),
            c("busy", 1, 9000, 7200, true, now),
        ];
        assert_eq!(choose(&images, &p, (1000, 900), now), ["stale"]);
    }

    #[test]
    fn a_high_threshold_of_100_collects_nothing_for_a_full_disk() {
        let now = Instant::now() + Duration::from_secs(10_000);
        let p = ImageGcPolicy {
            high_percent: 100,
            low_percent: 99,
            ..Default::default()
        };
        let images = [c("old", 100, 9000, 8000, false, now)];
        assert!(choose(&images, &p, (1000, 0), now).is_empty());
    }
}
