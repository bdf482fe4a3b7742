//! Small helpers for `std::sync`, shared so that each rule is written once.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering the guard if another thread panicked while holding it.
///
/// Sound for this crate's mutexes because every critical section leaves its data consistent
/// before it does anything that can panic (counters and queues are updated in one step, and
/// no guard is held across `.await` or a call into user code), so a poisoned mutex holds
/// valid data. Giving up instead would turn one panic into a server that fails every request.
pub(crate) fn lock_unpoisoned<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let m = std::sync::Arc::new(Mutex::new(5));
        let clone = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = clone.lock();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock_unpoisoned(&m), 5);
    }
}
