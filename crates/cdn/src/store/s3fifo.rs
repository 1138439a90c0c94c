//! S3-FIFO eviction (Yang et al., SOSP 2023) over byte-sized entries: the
//! order in which a tier's objects leave, kept apart from the objects.
//!
//! Three FIFO queues: a small one (a tenth of the bytes) where new entries
//! land, a main one for entries read again while in the small queue, and a
//! ghost list of the hashes of entries recently evicted from the small
//! queue (an entry inserted again while its ghost is remembered goes
//! straight to main). A read only bumps a 2-bit counter (an atomic: the hit
//! path needs no exclusive lock and moves nothing). A one-time scan passes
//! through the small queue and leaves; the main queue, where the hot set
//! lives, is only touched when the small queue is under its share.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};

use super::index::shrink_map;

/// Which queue an entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

#[derive(Debug)]
struct Node {
    charge: u64,
    freq: AtomicU8,
    queue: Queue,
    ghost: u64,
}

/// Reads counted per entry saturate here (S3-FIFO's two bits).
const MAX_FREQ: u8 = 3;

/// The eviction order of one tier (or one shard of it). Entries are ids
/// chosen by the owner; the owner removes the victims it is handed.
#[derive(Debug)]
pub(crate) struct S3Fifo {
    capacity: u64,
    small_target: u64,
    nodes: HashMap<u64, Node>,
    small: VecDeque<u64>,
    main: VecDeque<u64>,
    small_bytes: u64,
    main_bytes: u64,
    ghost: VecDeque<(u64, u64)>,
    ghost_set: HashMap<u64, u64>,
    ghost_seq: u64,
}

impl S3Fifo {
    /// An empty order for `capacity` bytes; the small queue's share is a
    /// tenth of it.
    pub(crate) fn new(capacity: u64) -> Self {
        S3Fifo {
            capacity,
            small_target: (capacity / 10).max(1),
            nodes: HashMap::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            small_bytes: 0,
            main_bytes: 0,
            ghost: VecDeque::new(),
            ghost_set: HashMap::new(),
            ghost_seq: 0,
        }
    }

    /// Bytes of all entries.
    pub(crate) fn bytes(&self) -> u64 {
        self.small_bytes + self.main_bytes
    }

    /// The byte bound.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the entries exceed the bound.
    #[cfg(test)]
    pub(crate) fn over(&self) -> bool {
        self.bytes() > self.capacity
    }

    /// Adds entry `id` of `charge` bytes; `ghost` is the hash of its key,
    /// remembered if it is evicted from the small queue. An entry whose
    /// ghost is remembered goes to the main queue. The caller evicts
    /// afterwards while [`S3Fifo::over`].
    pub(crate) fn insert(&mut self, id: u64, charge: u64, ghost: u64) {
        let queue = if self.ghost_set.remove(&ghost).is_some() {
            Queue::Main
        } else {
            Queue::Small
        };
        self.push(id, charge, ghost, queue);
    }

    /// Adds entry `id` straight to the main queue (entries that survived a
    /// restart: they earned their place before).
    pub(crate) fn insert_main(&mut self, id: u64, charge: u64, ghost: u64) {
        self.push(id, charge, ghost, Queue::Main);
    }

    fn push(&mut self, id: u64, charge: u64, ghost: u64, queue: Queue) {
        self.remove(id);
        match queue {
            Queue::Small => {
                self.small.push_back(id);
                self.small_bytes += charge;
            }
            Queue::Main => {
                self.main.push_back(id);
                self.main_bytes += charge;
            }
        }
        self.nodes.insert(
            id,
            Node {
                charge,
                freq: AtomicU8::new(0),
                queue,
                ghost,
            },
        );
    }

    /// Counts a read of `id` (shared access: an atomic add, nothing moves).
    pub(crate) fn touch(&self, id: u64) {
        if let Some(node) = self.nodes.get(&id) {
            let _ = node.freq.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                (f < MAX_FREQ).then_some(f + 1)
            });
        }
    }

    /// Forgets `id` (purged or replaced): no ghost is kept. Its slot in the
    /// queue is skipped when reached, and the queues are compacted when
    /// such slots outnumber the entries.
    pub(crate) fn remove(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            match node.queue {
                Queue::Small => self.small_bytes -= node.charge,
                Queue::Main => self.main_bytes -= node.charge,
            }
            self.shrink();
            if self.small.len() + self.main.len() > 2 * self.nodes.len() + 64 {
                let nodes = &self.nodes;
                self.small
                    .retain(|id| nodes.get(id).is_some_and(|n| n.queue == Queue::Small));
                self.main
                    .retain(|id| nodes.get(id).is_some_and(|n| n.queue == Queue::Main));
            }
        }
    }

    /// Gives back the slots of maps and queues grown for many more entries
    /// than are left (they never shrink by themselves).
    fn shrink(&mut self) {
        shrink_map(&mut self.nodes);
        shrink_map(&mut self.ghost_set);
        for queue in [&mut self.small, &mut self.main] {
            if queue.capacity() > 3 * queue.len() + 64 {
                queue.shrink_to(queue.len());
            }
        }
        if self.ghost.capacity() > 3 * self.ghost.len() + 64 {
            self.ghost.shrink_to(self.ghost.len());
        }
    }

    /// Chooses and forgets the next victim, or `None` when empty.
    pub(crate) fn evict(&mut self) -> Option<u64> {
        self.shrink();
        loop {
            if self.nodes.is_empty() {
                return None;
            }
            let from_small = self.small_bytes >= self.small_target || self.main_bytes == 0;
            let victim = if from_small {
                self.evict_small()
            } else {
                self.evict_main()
            };
            if victim.is_some() {
                return victim;
            }
        }
    }

    /// The small queue's oldest entry leaves (its hash joins the ghost
    /// list) unless it was read since it came in: then it moves to main.
    fn evict_small(&mut self) -> Option<u64> {
        while let Some(id) = self.small.pop_front() {
            let Some(node) = self.nodes.get_mut(&id) else {
                continue;
            };
            if node.queue != Queue::Small {
                continue;
            }
            if *node.freq.get_mut() > 0 {
                *node.freq.get_mut() = 0;
                node.queue = Queue::Main;
                self.small_bytes -= node.charge;
                self.main_bytes += node.charge;
                self.main.push_back(id);
                continue;
            }
            let node = self.nodes.remove(&id).expect("present");
            self.small_bytes -= node.charge;
            self.remember(node.ghost);
            return Some(id);
        }
        None
    }

    /// The main queue's oldest entry leaves unless read since it was last
    /// passed over: then it goes round again with one read less.
    fn evict_main(&mut self) -> Option<u64> {
        while let Some(id) = self.main.pop_front() {
            let Some(node) = self.nodes.get_mut(&id) else {
                continue;
            };
            if node.queue != Queue::Main {
                continue;
            }
            let freq = node.freq.get_mut();
            if *freq > 0 {
                *freq -= 1;
                self.main.push_back(id);
                continue;
            }
            let node = self.nodes.remove(&id).expect("present");
            self.main_bytes -= node.charge;
            return Some(id);
        }
        None
    }

    /// Keeps `hash` in the ghost list, bounded to as many hashes as there
    /// are entries (each entry's overhead estimate pays for one ghost).
    fn remember(&mut self, hash: u64) {
        self.ghost_seq += 1;
        self.ghost.push_back((hash, self.ghost_seq));
        self.ghost_set.insert(hash, self.ghost_seq);
        let bound = self.nodes.len().max(16);
        while self.ghost.len() > bound {
            let (old, seq) = self.ghost.pop_front().expect("non-empty");
            if self.ghost_set.get(&old) == Some(&seq) {
                self.ghost_set.remove(&old);
            }
        }
    }

    /// Number of entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(fifo: &mut S3Fifo) -> Vec<u64> {
        let mut out = Vec::new();
        while fifo.over() {
            out.push(fifo.evict().expect("over means non-empty"));
        }
        out
    }

    #[test]
    fn new_entries_leave_first_in_first_out_when_never_read() {
        let mut f = S3Fifo::new(100);
        for id in 0..10 {
            f.insert(id, 10, id);
        }
        assert!(drain(&mut f).is_empty());
        f.insert(10, 10, 10);
        assert_eq!(drain(&mut f), vec![0]);
        f.insert(11, 25, 11);
        assert_eq!(drain(&mut f), vec![1, 2, 3]);
        assert_eq!(f.bytes(), 95);
    }

    #[test]
    fn an_entry_read_in_the_small_queue_moves_to_main_and_outlives_a_scan() {
        let mut f = S3Fifo::new(100);
        for id in 0..10 {
            f.insert(id, 10, id);
        }
        f.touch(0);
        f.touch(1);
        for id in 100..1100 {
            f.insert(id, 10, id);
            let evicted = drain(&mut f);
            assert!(!evicted.contains(&0) && !evicted.contains(&1));
        }
        assert!(f.nodes.contains_key(&0) && f.nodes.contains_key(&1));
        assert_eq!(f.nodes[&0].queue, Queue::Main);
    }

    #[test]
    fn a_key_coming_back_while_its_ghost_is_remembered_goes_to_main() {
        let mut f = S3Fifo::new(100);
        for id in 0..11 {
            f.insert(id, 10, id);
        }
        assert_eq!(drain(&mut f), vec![0]);
        // Same key (ghost hash 0), new id.
        f.insert(50, 10, 0);
        assert_eq!(f.nodes[&50].queue, Queue::Main);
        assert_eq!(drain(&mut f), vec![1]);
    }

    #[test]
    fn main_entries_go_round_once_per_read_then_leave() {
        let mut f = S3Fifo::new(100);
        f.insert_main(1, 40, 1);
        f.insert_main(2, 40, 2);
        f.touch(1);
        f.insert_main(3, 40, 3);
        // Small queue empty: main evicts; 1 was read so 2 goes first.
        assert_eq!(drain(&mut f), vec![2]);
        f.insert_main(4, 40, 4);
        assert_eq!(drain(&mut f), vec![3]);
    }

    #[test]
    fn removed_entries_leave_no_bytes_and_no_ghost_and_queues_compact() {
        let mut f = S3Fifo::new(1_000_000);
        for id in 0..1000 {
            f.insert(id, 10, id);
        }
        for id in 0..990 {
            f.remove(id);
        }
        assert_eq!(f.bytes(), 100);
        assert_eq!(f.len(), 10);
        assert!(f.small.len() <= 2 * 10 + 64 + 1);
        assert!(f.ghost_set.is_empty());
        // Re-inserting a removed key does not count as a ghost hit.
        f.insert(5000, 10, 3);
        assert_eq!(f.nodes[&5000].queue, Queue::Small);
    }

    #[test]
    fn the_ghost_list_stays_bounded() {
        let mut f = S3Fifo::new(100);
        for id in 0..10_000 {
            f.insert(id, 10, id);
            drain(&mut f);
        }
        assert!(f.ghost.len() <= 16);
        assert!(f.ghost_set.len() <= 16);
    }

    #[test]
    fn evicting_an_empty_order_yields_nothing() {
        let mut f = S3Fifo::new(10);
        assert_eq!(f.evict(), None);
        f.insert(1, 50, 1);
        assert!(f.over());
        assert_eq!(f.evict(), Some(1));
        assert_eq!(f.evict(), None);
        assert_eq!(f.capacity(), 10);
    }
}
