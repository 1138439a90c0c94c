//! The failover controller's decisions, as a pure function: the states of
//! the nodes in (process, last probe, fenced), the actions out. No process,
//! no clock (how long the primary has been silent is an input), so every
//! case is a unit test; the cluster shell (`mod.rs`) observes, calls
//! [`decide`] and carries the actions out through the supervisor.

use std::time::Duration;

/// A node's process, as the supervisor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// Running (it may still not answer: hung, or starting up).
    Running,
    /// Being started or restarted by the supervisor.
    Starting,
    /// Exited; the supervisor waits for the controller's word.
    Down,
    /// Held down (fenced by the controller, or stopped by an operator).
    Stopped,
}

/// What the controller knows of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeState {
    pub process: Process,
    /// The last probe was answered (within its deadline).
    pub answers: bool,
    /// WAL position it has received (a replica) or written (a primary),
    /// from the last answered probe.
    pub received_lsn: Option<u64>,
    /// An old primary that must never take writes again until rebuilt.
    pub fenced: bool,
    /// Held down with its whole site (`ctl site fail`): never restarted,
    /// rebuilt or promoted until the site is restored.
    pub held: bool,
}

/// The cluster as observed at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub nodes: Vec<NodeState>,
    /// Index of the node that is (or was last) the primary.
    pub primary: usize,
    /// How long the primary has answered no probe; `None` if it answers.
    pub primary_silent_for: Option<Duration>,
    /// How long a silent primary is waited for before failing over.
    pub failover_after: Duration,
    /// Synchronous replication: the promoted node first gets a quorum of
    /// the other nodes, so no commit it acknowledges is on it alone.
    pub synchronous: bool,
}

/// One step the cluster shell carries out, in order; a failed step ends
/// the list (the next observation decides again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a node again (a dead replica; a dead primary with no replica
    /// to promote), after the supervisor's back-off.
    Restart(usize),
    /// Kill the node if it runs, keep it down, and mark its data
    /// directory as a standby: it never takes writes again.
    Fence(usize),
    /// Set `synchronous_standby_names = 'ANY 1 (standbys)'` on `node`.
    SetQuorum { node: usize, standbys: Vec<usize> },
    /// Promote a replica to primary.
    Promote(usize),
    /// Point a replica at a new primary.
    Repoint { node: usize, to: usize },
    /// Empty a fenced node, copy it anew from `from` and start it as a
    /// replica (its history may hold writes past the fork).
    Rebuild { node: usize, from: usize },
}

/// What to do now. Replicas first: a dead one is restarted, a fenced one
/// that is down is rebuilt from an answering primary (one that runs again
/// is fenced again). Then the primary: once silent for `failover_after`,
/// the running, unfenced replica that answered with the most WAL received
/// is promoted, after the old primary is fenced, and the others follow it;
/// with no replica to promote, a dead primary is restarted.
pub fn decide(view: &ClusterView) -> Vec<Action> {
    let mut actions = Vec::new();
    let primary = view.primary;
    let primary_answers = view.nodes[primary].answers && view.primary_silent_for.is_none();
    for (i, node) in view.nodes.iter().enumerate() {
        if i == primary || node.held {
            continue;
        }
        match (node.process, node.fenced) {
            (Process::Down | Process::Stopped, true) if primary_answers => actions.push(Action::Rebuild {
                node: i,
                from: primary,
            }),
            (Process::Running | Process::Starting, true) => actions.push(Action::Fence(i)),
            (Process::Down, false) => actions.push(Action::Restart(i)),
            _ => {}
        }
    }
    let Some(silent) = view.primary_silent_for else {
        return actions;
    };
    if silent < view.failover_after {
        return actions;
    }
    let candidate = view
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| *i != primary && !n.fenced && !n.held && n.process == Process::Running)
        // The most WAL received: with synchronous replication an
        // acknowledged commit is on at least one replica, perhaps only
        // received. An answering node beats a silent one.
        .fold(None::<(usize, (bool, u64))>, |best, (i, n)| {
            let key = (n.answers, n.received_lsn.unwrap_or(0));
            match best {
                Some((_, b)) if b >= key => best,
                _ => Some((i, key)),
            }
        })
        .map(|(i, _)| i);
    let Some(new) = candidate else {
        if view.nodes[primary].process == Process::Down && !view.nodes[primary].held {
            actions.push(Action::Restart(primary));
        }
        return actions;
    };
    // A failover replaces whatever was planned for the replicas.
    actions.clear();
    actions.push(Action::Fence(primary));
    if view.synchronous {
        actions.push(Action::SetQuorum {
            node: new,
            standbys: (0..view.nodes.len()).filter(|&i| i != new).collect(),
        });
    }
    actions.push(Action::Promote(new));
    for (i, n) in view.nodes.iter().enumerate() {
        if i != primary && i != new && !n.fenced {
            actions.push(Action::Repoint { node: i, to: new });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: NodeState = NodeState {
        process: Process::Running,
        answers: true,
        received_lsn: Some(100),
        fenced: false,
        held: false,
    };
    const DEAD: NodeState = NodeState {
        process: Process::Down,
        answers: false,
        received_lsn: None,
        fenced: false,
        held: false,
    };

    fn view(nodes: Vec<NodeState>, silent_ms: Option<u64>) -> ClusterView {
        ClusterView {
            nodes,
            primary: 0,
            primary_silent_for: silent_ms.map(Duration::from_millis),
            failover_after: Duration::from_millis(3000),
            synchronous: false,
        }
    }

    fn lsn(n: u64) -> NodeState {
        NodeState {
            received_lsn: Some(n),
            ..LIVE
        }
    }

    #[test]
    fn a_healthy_cluster_needs_nothing() {
        assert_eq!(decide(&view(vec![LIVE, LIVE, LIVE], None)), []);
    }

    #[test]
    fn a_dead_replica_is_restarted() {
        assert_eq!(decide(&view(vec![LIVE, DEAD, LIVE], None)), [Action::Restart(1)]);
        let starting = NodeState {
            process: Process::Starting,
            ..DEAD
        };
        assert_eq!(
            decide(&view(vec![LIVE, starting, LIVE], None)),
            [],
            "the supervisor is on it"
        );
    }

    #[test]
    fn a_silent_primary_is_waited_for_until_the_threshold() {
        let down = DEAD;
        assert_eq!(decide(&view(vec![down, LIVE, LIVE], Some(0))), []);
        assert_eq!(decide(&view(vec![down, LIVE, LIVE], Some(2999))), []);
        assert!(!decide(&view(vec![down, LIVE, LIVE], Some(3000))).is_empty());
    }

    #[test]
    fn the_replica_with_the_most_wal_received_is_promoted_after_the_primary_is_fenced() {
        let actions = decide(&view(vec![DEAD, lsn(200), lsn(300), lsn(250)], Some(5000)));
        assert_eq!(
            actions,
            [
                Action::Fence(0),
                Action::Promote(2),
                Action::Repoint { node: 1, to: 2 },
                Action::Repoint { node: 3, to: 2 },
            ]
        );
    }

    #[test]
    fn a_hung_primary_is_fenced_too() {
        let hung = NodeState {
            process: Process::Running,
            answers: false,
            ..LIVE
        };
        let actions = decide(&view(vec![hung, lsn(10), lsn(20)], Some(4000)));
        assert_eq!(actions[0], Action::Fence(0));
        assert!(actions.contains(&Action::Promote(2)));
    }

    #[test]
    fn a_synchronous_cluster_gets_its_quorum_before_the_promotion() {
        let mut v = view(vec![DEAD, lsn(200), lsn(100)], Some(5000));
        v.synchronous = true;
        assert_eq!(
            decide(&v),
            [
                Action::Fence(0),
                Action::SetQuorum {
                    node: 1,
                    standbys: vec![0, 2]
                },
                Action::Promote(1),
                Action::Repoint { node: 2, to: 1 },
            ]
        );
    }

    #[test]
    fn fenced_dead_and_silent_replicas_are_never_promoted() {
        let fenced = NodeState {
            fenced: true,
            ..lsn(900)
        };
        let silent = NodeState {
            answers: false,
            ..lsn(800)
        };
        let actions = decide(&view(vec![DEAD, fenced, DEAD, silent, lsn(5)], Some(5000)));
        assert!(actions.contains(&Action::Promote(4)), "{actions:?}");
        // With only a silent one left, it is promoted rather than nothing.
        let actions = decide(&view(vec![DEAD, fenced, silent], Some(5000)));
        assert!(actions.contains(&Action::Promote(2)), "{actions:?}");
    }

    #[test]
    fn without_a_replica_a_dead_primary_is_restarted() {
        assert_eq!(decide(&view(vec![DEAD], Some(5000))), [Action::Restart(0)]);
        let hung = NodeState {
            answers: false,
            ..LIVE
        };
        assert_eq!(
            decide(&view(vec![hung], Some(5000))),
            [],
            "a hung only copy is left alone"
        );
    }

    #[test]
    fn a_fenced_old_primary_is_rebuilt_from_an_answering_primary() {
        let mut v = view(
            vec![
                LIVE,
                NodeState {
                    process: Process::Stopped,
                    fenced: true,
                    ..DEAD
                },
                LIVE,
            ],
            None,
        );
        assert_eq!(decide(&v), [Action::Rebuild { node: 1, from: 0 }]);
        v.primary_silent_for = Some(Duration::from_millis(100));
        v.nodes[0].answers = false;
        assert_eq!(decide(&v), [], "not from a primary that does not answer");
    }

    #[test]
    fn a_fenced_node_that_runs_again_is_fenced_again() {
        let back = NodeState { fenced: true, ..LIVE };
        assert_eq!(decide(&view(vec![LIVE, back], None)), [Action::Fence(1)]);
    }

    #[test]
    fn nodes_held_with_their_site_are_neither_restarted_rebuilt_nor_promoted() {
        let held = |n: NodeState| NodeState { held: true, ..n };
        // The primary's site failed: the replica in the other site is
        // promoted, the held primary is fenced but not restarted, and the
        // held replica is pointed at the new primary (its configuration
        // only: it follows it once restored).
        let v = view(vec![held(DEAD), LIVE, held(DEAD)], Some(5000));
        assert_eq!(
            decide(&v),
            [
                Action::Fence(0),
                Action::Promote(1),
                Action::Repoint { node: 2, to: 1 }
            ]
        );
        // Later, primary 1: the held old primary (fenced) and the held
        // replica stay down until their site is restored.
        let mut v = view(
            vec![LIVE, held(NodeState { fenced: true, ..DEAD }), held(DEAD)],
            None,
        );
        assert_eq!(decide(&v), []);
        // Restored: rebuilt and restarted.
        v.nodes[1].held = false;
        v.nodes[2].held = false;
        assert_eq!(
            decide(&v),
            [Action::Rebuild { node: 1, from: 0 }, Action::Restart(2)]
        );
        // A held primary with no replica to promote is not restarted.
        assert_eq!(decide(&view(vec![held(DEAD), held(DEAD)], Some(5000))), []);
    }
}
