//! Single flight: when many callers miss the same key at once (a stampede on
//! a hot photo whose cache entry just expired), one of them loads it and the
//! others wait for that result instead of each querying the database.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// Deduplicates concurrent loads by key.
pub struct SingleFlight<V> {
    in_flight: Mutex<HashMap<String, Arc<OnceCell<V>>>>,
}

impl<V> Default for SingleFlight<V> {
    fn default() -> Self {
        SingleFlight {
            in_flight: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: Clone> SingleFlight<V> {
    /// Runs `load` for `key` unless a load of the same key is already
    /// running, in which case its result is shared. If the caller running
    /// the load is cancelled, a waiting caller takes over.
    pub async fn run<F, Fut>(&self, key: &str, load: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = self
            .lock()
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let value = cell.get_or_init(load).await.clone();
        // The next miss after this one loads afresh (the cache has the value by then).
        let mut map = self.lock();
        if map.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(key);
        }
        value
    }

    /// Loads running now (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }

    /// Callers sharing the load of `key` now (the map holds one reference
    /// to its cell, each caller another).
    pub fn callers(&self, key: &str) -> usize {
        self.lock().get(key).map_or(0, |c| Arc::strong_count(c) - 1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<OnceCell<V>>>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    #[tokio::test]
    async fn a_stampede_makes_one_load() {
        let flights = Arc::new(SingleFlight::<u32>::default());
        let loads = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut callers = Vec::new();
        for _ in 0..50 {
            let (flights, loads, gate) = (flights.clone(), loads.clone(), gate.clone());
            callers.push(tokio::spawn(async move {
                flights
                    .run("photo:1", || async move {
                        loads.fetch_add(1, SeqCst);
                        gate.notified().await;
                        7
                    })
                    .await
            }));
        }
        // Every caller is waiting on the one load.
        while flights.callers("photo:1") < 50 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for c in callers {
            assert_eq!(c.await.unwrap(), 7);
        }
        assert_eq!(loads.load(SeqCst), 1);
        assert_eq!(flights.in_flight(), 0, "finished loads are forgotten");
        // Different keys do not share.
        assert_eq!(flights.run("a", || async { 1 }).await, 1);
        assert_eq!(flights.run("b", || async { 2 }).await, 2);
    }

    #[tokio::test]
    async fn a_cancelled_loader_hands_over() {
        let flights = Arc::new(SingleFlight::<u32>::default());
        let first = tokio::spawn({
            let flights = flights.clone();
            async move { flights.run("k", std::future::pending::<u32>).await }
        });
        while flights.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        let second = tokio::spawn({
            let flights = flights.clone();
            async move { flights.run("k", || async { 9 }).await }
        });
        while flights.callers("k") < 2 {
            tokio::task::yield_now().await;
        }
        first.abort();
        assert_eq!(second.await.unwrap(), 9);
    }
}
