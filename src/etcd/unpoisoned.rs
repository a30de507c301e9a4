//! Locking a mutex whether or not a holder panicked.
//!
//! The broker's std mutexes guard small state that no code panics while holding (queues,
//! counters, maps of connections), so a poisoned one is still consistent. Refusing it would
//! turn one panic into a failure of every later request that needs the lock.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, also when it is poisoned.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
