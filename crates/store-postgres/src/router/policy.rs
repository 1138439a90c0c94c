//! Routing policy: which node serves a read, given every node's routing
//! state and the caller's read floor. Writes always go to the elected
//! primary (refused at once without one); a read goes round robin to the
//! replicas that are fit (within the lag ceiling, not marked down) and have
//! replayed the floor, those in the process's own site first, else to the
//! primary; a replica read that failed for
//! want of the node is retried once on the primary. No I/O here: the
//! router's facade asks, then does what it is told.

use super::topology::{NodeRole, NodeState};
use domain::StoreError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Why a read goes to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fallback {
    /// Usable replicas exist, but none has replayed the read floor.
    Floor,
    /// No replica is usable.
    NoReplica,
}

/// What the policy needs to know of a node to send it a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Candidate {
    pub role: NodeRole,
    /// Fit for reads as of the last probe (see [`Policy::replica_fit`]) and
    /// not marked down since.
    pub usable: bool,
    /// What its reads can see.
    pub replay_lsn: Option<u64>,
    /// In the reader's own site: preferred over the others.
    pub local: bool,
}

impl Candidate {
    /// A node's candidacy as of its routing state.
    pub fn of(st: &NodeState) -> Candidate {
        Candidate {
            role: st.role,
            usable: st.usable,
            replay_lsn: st.seen.and_then(|o| o.replay_lsn),
            local: false,
        }
    }
}

/// The routing policy of one router: its lag ceiling and its round-robin
/// position.
#[derive(Debug)]
pub(super) struct Policy {
    max_lag: Duration,
    /// Round-robin position among the eligible replicas.
    next: AtomicUsize,
}

impl Policy {
    /// A policy whose replicas get no reads once they lag more than
    /// `max_lag`.
    pub fn new(max_lag: Duration) -> Policy {
        Policy {
            max_lag,
            next: AtomicUsize::new(0),
        }
    }

    /// Whether a replica lagging `lag` may take reads: only within the
    /// ceiling, and never while its lag is unknown (`None`).
    pub fn replica_fit(&self, lag: Option<Duration>) -> bool {
        lag.is_some_and(|d| d <= self.max_lag)
    }

    /// The replica that serves the next read: the next in turn among the
    /// usable replicas (`nodes`, in the configuration's order) that have
    /// replayed `floor`, the local ones only when there are any; otherwise
    /// why the read goes to the primary. The turn advances only when a
    /// replica is chosen.
    pub fn read(
        &self,
        nodes: impl IntoIterator<Item = Candidate>,
        floor: Option<u64>,
    ) -> Result<usize, Fallback> {
        let mut usable = false;
        let mut eligible = Vec::new();
        let mut local = Vec::new();
        for (i, node) in nodes.into_iter().enumerate() {
            if node.role != NodeRole::Replica || !node.usable {
                continue;
            }
            usable = true;
            if floor.is_none_or(|floor| node.replay_lsn.is_some_and(|r| r >= floor)) {
                eligible.push(i);
                if node.local {
                    local.push(i);
                }
            }
        }
        if !local.is_empty() {
            eligible = local;
        }
        if eligible.is_empty() {
            return Err(if usable {
                Fallback::Floor
            } else {
                Fallback::NoReplica
            });
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(eligible[turn % eligible.len()])
    }

    /// Whether a read that failed on a replica with `error` is retried on
    /// the primary (marking the replica down): when the node could not
    /// answer. A conflict or a missing row is an answer, not a failure.
    pub fn retry_on_primary(error: &StoreError) -> bool {
        matches!(error, StoreError::Unavailable(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(role: NodeRole, replay_lsn: u64, usable: bool) -> Candidate {
        Candidate {
            role,
            usable,
            replay_lsn: Some(replay_lsn),
            local: false,
        }
    }

    #[test]
    fn reads_stay_in_the_site_while_a_local_replica_can_take_them() {
        let policy = Policy::new(Duration::from_secs(1));
        let local = |c: Candidate| Candidate { local: true, ..c };
        let mut nodes = vec![
            node(NodeRole::Primary, 0, true),
            node(NodeRole::Replica, 500, true),
            local(node(NodeRole::Replica, 400, true)),
        ];
        let picks: Vec<_> = (0..3).map(|_| policy.read(nodes.clone(), None)).collect();
        assert_eq!(picks, vec![Ok(2), Ok(2), Ok(2)]);
        // The local one has not replayed the floor: the remote one serves.
        assert_eq!(policy.read(nodes.clone(), Some(450)), Ok(1));
        // The local one is down: the remote one serves.
        nodes[2] = local(node(NodeRole::Down, 400, false));
        assert_eq!(policy.read(nodes, None), Ok(1));
    }

    #[test]
    fn reads_take_usable_replicas_in_turn_above_the_floor() {
        let policy = Policy::new(Duration::from_secs(1));
        let mut nodes = vec![
            node(NodeRole::Primary, 0, true),
            node(NodeRole::Replica, 500, true),
            node(NodeRole::Down, 500, false),
            node(NodeRole::Replica, 300, true),
            node(NodeRole::Replica, 500, false), // lagging
            node(NodeRole::Fenced, 900, false),
        ];
        let picks: Vec<_> = (0..4).map(|_| policy.read(nodes.clone(), None)).collect();
        assert_eq!(picks, vec![Ok(1), Ok(3), Ok(1), Ok(3)]);
        assert_eq!(policy.read(nodes.clone(), Some(400)), Ok(1));
        assert_eq!(policy.read(nodes.clone(), Some(500)), Ok(1));
        assert_eq!(policy.read(nodes.clone(), Some(501)), Err(Fallback::Floor));
        for i in [1, 3] {
            nodes[i] = node(NodeRole::Down, 500, false);
        }
        assert_eq!(policy.read(nodes, None), Err(Fallback::NoReplica));
    }

    #[test]
    fn a_replica_that_has_replayed_nothing_known_misses_every_floor() {
        let policy = Policy::new(Duration::from_secs(1));
        let blind = Candidate {
            role: NodeRole::Replica,
            usable: true,
            replay_lsn: None,
            local: false,
        };
        assert_eq!(policy.read([blind], None), Ok(0));
        assert_eq!(policy.read([blind], Some(1)), Err(Fallback::Floor));
    }

    #[test]
    fn the_turn_advances_only_when_a_replica_is_chosen() {
        let policy = Policy::new(Duration::from_secs(1));
        let two = [node(NodeRole::Replica, 5, true), node(NodeRole::Replica, 5, true)];
        assert_eq!(policy.read(two, None), Ok(0));
        assert_eq!(policy.read(two, Some(9)), Err(Fallback::Floor));
        assert_eq!(policy.read([], None), Err(Fallback::NoReplica));
        assert_eq!(policy.read(two, None), Ok(1), "the fallbacks took no turn");
    }

    #[test]
    fn the_lag_ceiling_is_inclusive_and_an_unknown_lag_is_unfit() {
        let policy = Policy::new(Duration::from_millis(500));
        assert!(policy.replica_fit(Some(Duration::ZERO)));
        assert!(policy.replica_fit(Some(Duration::from_millis(500))));
        assert!(!policy.replica_fit(Some(Duration::from_millis(501))));
        assert!(!policy.replica_fit(None));
    }

    #[test]
    fn only_an_unavailable_replica_sends_the_read_to_the_primary() {
        assert!(Policy::retry_on_primary(&StoreError::Unavailable("reset".into())));
        assert!(!Policy::retry_on_primary(&StoreError::Conflict));
        assert!(!Policy::retry_on_primary(&StoreError::NotFound));
    }
}
