//! A value one part of the agent sets and another reads: the node's pressure
//! conditions, whether it is shutting down and its labels, set by the eviction
//! manager, the shutdown and the watch of the Node, and read by admission and the
//! volume manager. Compared by value, so that the admission's view
//! of the node stays comparable.

use std::sync::{Arc, RwLock};

/// A value shared between the part that sets it and the parts that read it.
#[derive(Clone, Debug, Default)]
pub struct Shared<T>(Arc<RwLock<T>>);

impl<T: Clone> Shared<T> {
    pub fn new(value: T) -> Self {
        Self(Arc::new(RwLock::new(value)))
    }

    pub fn set(&self, value: T) {
        // A writer that panicked left a whole value behind: it is only ever replaced.
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = value;
    }

    pub fn get(&self) -> T {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl<T: Clone + PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl<T: Clone + Eq> Eq for Shared<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_see_what_is_set_and_compare_by_value() {
        let a = Shared::<bool>::default();
        let b = a.clone();
        let other = Shared::<bool>::default();
        assert_eq!(a, other);
        a.set(true);
        assert!(b.get());
        assert_ne!(b, other);
        other.set(true);
        assert_eq!(a, other);
    }
}
