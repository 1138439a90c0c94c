//! The topology update, a pure function of the probes: one round of answers
//! and the instants it started and ended go in (the clock is the caller's),
//! every node's new routing state and the primary come out. The memory it
//! keeps between rounds: the primary last elected, the highest timeline
//! ever elected (the fence), and the primary's WAL history for measuring
//! lag ([`LagHistory`]).

use super::election::{elect, Observation};
use super::lag::LagHistory;
use super::policy::Policy;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, Instant};

/// The role a node plays for the router, as of its last probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// The elected primary: every write, and the reads no replica can take.
    Primary,
    /// A replica (in recovery): reads, when usable.
    Replica,
    /// Did not answer its last probe, failed a read since, or was never
    /// reached.
    #[default]
    Down,
    /// Claims to be a primary but lost the election (an old primary back
    /// after a failover): gets nothing.
    Fenced,
}

impl NodeRole {
    /// Every role, in the order of the metrics' `role` label.
    pub const ALL: [NodeRole; 4] = [
        NodeRole::Primary,
        NodeRole::Replica,
        NodeRole::Down,
        NodeRole::Fenced,
    ];

    /// The role's name, as it prints.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Primary => "primary",
            NodeRole::Replica => "replica",
            NodeRole::Down => "down",
            NodeRole::Fenced => "fenced",
        }
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node's routing state: what the policy routes on and the status
/// reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct NodeState {
    pub role: NodeRole,
    /// The last answer (kept while down, for the status).
    pub seen: Option<Observation>,
    pub lag_bytes: Option<u64>,
    pub lag_ms: Option<u64>,
    pub usable: bool,
    /// When a read failed on it: it stays down until a probe that started
    /// later answers.
    pub marked_down: Option<Instant>,
}

impl NodeState {
    /// Takes the node out of the read rotation, as of `now`, until a probe
    /// started later answers.
    pub fn mark_down(&mut self, now: Instant) {
        self.role = NodeRole::Down;
        self.usable = false;
        self.marked_down = Some(now);
    }
}

/// The prober's memory between rounds.
#[derive(Debug, Default)]
pub(super) struct Topology {
    /// The last primary elected, with its timeline (kept while no node is
    /// primary, so a primary that comes back keeps its lag history).
    elected: Option<(usize, u32)>,
    /// The highest timeline ever elected: a node claiming to be primary on
    /// a lower one is fenced, even when it is the only claimant.
    fence: u32,
    history: LagHistory,
}

/// The outcome of one round of probes, to apply to every node's state.
#[derive(Debug)]
pub(super) struct Round {
    started: Instant,
    seen: Vec<Option<Observation>>,
    /// The node elected, with its timeline.
    primary: Option<(usize, u32)>,
    /// Whether `primary` differs from the one elected before.
    changed: bool,
    fenced: Vec<bool>,
    /// The primary's last known WAL position.
    latest: Option<u64>,
    /// Per node: how long the primary has been past its replay position
    /// (`None`: unknown, or not a replica).
    lag: Vec<Option<Duration>>,
}

impl Topology {
    /// Takes in one round of answers (`seen`, one per node in the
    /// configuration's order; `None` for a node that did not answer), probed
    /// from `started` until `now`: elects the primary, fences the other
    /// claimants, and measures every replica's lag.
    pub fn round(&mut self, seen: Vec<Option<Observation>>, started: Instant, now: Instant) -> Round {
        let election = elect(&seen, self.elected.map(|(i, _)| i), self.fence);
        let primary = election.primary.map(|i| (i, seen[i].map_or(0, |o| o.timeline)));
        let mut changed = false;
        if let Some((i, timeline)) = primary {
            if self.elected != primary {
                // Another node (or timeline): its WAL positions are not
                // comparable with the old history.
                self.history.clear();
                self.elected = primary;
                changed = true;
            }
            self.fence = self.fence.max(timeline);
            if let Some(lsn) = seen[i].and_then(|o| o.wal_lsn) {
                self.history.observe(lsn, now);
            }
        }
        let lag = seen
            .iter()
            .map(|o| {
                o.and_then(|o| o.replay_lsn)
                    .and_then(|r| self.history.lag(r, now))
            })
            .collect();
        Round {
            started,
            latest: self.history.latest(),
            seen,
            primary,
            changed,
            fenced: election.fenced,
            lag,
        }
    }
}

impl Round {
    /// The node elected primary in this round, if any.
    pub fn primary(&self) -> Option<usize> {
        self.primary.map(|(i, _)| i)
    }

    /// The primary and its timeline, when it was not the one elected
    /// before (for the log).
    pub fn newly_elected(&self) -> Option<(usize, u32)> {
        self.primary.filter(|_| self.changed)
    }

    /// Node `i`'s state after this round, from `st` its state now; the
    /// lag ceiling is `policy`'s. A node marked down after the round
    /// started keeps its state: its answer may predate the failure.
    pub fn apply(&self, i: usize, st: &mut NodeState, policy: &Policy) {
        if let Some(at) = st.marked_down {
            if at >= self.started {
                return;
            }
            st.marked_down = None;
        }
        let Some(o) = self.seen[i] else {
            st.role = NodeRole::Down;
            st.usable = false;
            return;
        };
        st.seen = Some(o);
        (st.lag_bytes, st.lag_ms) = (None, None);
        if self.primary() == Some(i) {
            st.role = NodeRole::Primary;
            st.usable = true;
        } else if !o.in_recovery || self.fenced[i] {
            st.role = NodeRole::Fenced;
            st.usable = false;
        } else {
            st.role = NodeRole::Replica;
            let lag = self.lag[i];
            st.lag_bytes = self.latest.zip(o.replay_lsn).map(|(p, r)| p.saturating_sub(r));
            st.lag_ms = lag.map(|d| d.as_millis().try_into().unwrap_or(u64::MAX));
            st.usable = policy.replica_fit(lag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::election::fixtures::{primary, replica};
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs one round over `states` at `now` (started 10 ms before).
    fn round(
        topology: &mut Topology,
        states: &mut [NodeState],
        seen: Vec<Option<Observation>>,
        now: Instant,
    ) -> Option<usize> {
        let policy = Policy::new(ms(1000));
        let round = topology.round(seen, now - ms(10), now);
        for (i, st) in states.iter_mut().enumerate() {
            round.apply(i, st, &policy);
        }
        round.primary()
    }

    fn roles(states: &[NodeState]) -> Vec<(NodeRole, bool)> {
        states.iter().map(|s| (s.role, s.usable)).collect()
    }

    #[test]
    fn roles_and_lag_follow_the_answers() {
        let t0 = Instant::now();
        let mut topology = Topology::default();
        let mut states = vec![NodeState::default(); 4];
        let seen = vec![primary(1, 100), replica(1, 100), None, replica(1, 100)];
        assert_eq!(round(&mut topology, &mut states, seen, t0), Some(0));
        use NodeRole::*;
        assert_eq!(
            roles(&states),
            [(Primary, true), (Replica, true), (Down, false), (Replica, true)]
        );
        assert_eq!((states[1].lag_ms, states[1].lag_bytes), (Some(0), Some(0)));

        // The primary moves on; replica 3 stays behind for 1.5 s.
        let t1 = t0 + ms(500);
        let seen = vec![primary(1, 300), replica(1, 300), None, replica(1, 100)];
        round(&mut topology, &mut states, seen, t1);
        assert_eq!(states[3].lag_ms, Some(0), "not behind yet: 300 was just seen");
        let t2 = t0 + ms(2000);
        let seen = vec![primary(1, 300), replica(1, 300), None, replica(1, 100)];
        round(&mut topology, &mut states, seen, t2);
        assert_eq!((states[3].lag_ms, states[3].lag_bytes), (Some(1500), Some(200)));
        assert_eq!(roles(&states)[3], (Replica, false), "over the ceiling");
        assert_eq!(roles(&states)[1], (Replica, true));
        // A node that stops answering is down but keeps its last answer.
        let seen = vec![primary(1, 300), None, None, replica(1, 300)];
        round(&mut topology, &mut states, seen, t2 + ms(200));
        assert_eq!(roles(&states)[1], (Down, false));
        assert_eq!(states[1].seen, replica(1, 300));
        assert_eq!(roles(&states)[3], (Replica, true), "caught up");
    }

    #[test]
    fn a_replica_behind_all_history_has_unknown_lag_and_no_reads() {
        let t0 = Instant::now();
        let mut topology = Topology::default();
        let mut states = vec![NodeState::default(); 2];
        round(
            &mut topology,
            &mut states,
            vec![primary(1, 900), replica(1, 10)],
            t0,
        );
        assert_eq!(states[1].role, NodeRole::Replica);
        assert_eq!((states[1].lag_ms, states[1].usable), (None, false));
        assert_eq!(states[1].lag_bytes, Some(890));
    }

    #[test]
    fn a_new_primary_starts_a_new_history_and_the_old_one_is_fenced() {
        let t0 = Instant::now();
        let mut topology = Topology::default();
        let mut states = vec![NodeState::default(); 3];
        let seen = vec![primary(1, 1000), replica(1, 1000), replica(1, 1000)];
        round(&mut topology, &mut states, seen, t0);
        // Failover: node 1 promoted to timeline 2, node 0 down.
        let seen = vec![None, primary(2, 50), replica(2, 50)];
        let r = topology.round(seen, t0, t0 + ms(100));
        assert_eq!(r.newly_elected(), Some((1, 2)));
        let policy = Policy::new(ms(1000));
        for (i, st) in states.iter_mut().enumerate() {
            r.apply(i, st, &policy);
        }
        assert_eq!(states[2].lag_ms, Some(0), "measured against the new primary only");
        let r = topology.round(vec![None, primary(2, 60), replica(2, 60)], t0, t0 + ms(200));
        assert_eq!(r.newly_elected(), None, "the same primary");
        // The old primary comes back on timeline 1, and stays fenced even
        // while the new one is unreachable.
        let seen = vec![primary(1, 5000), None, replica(2, 60)];
        assert_eq!(round(&mut topology, &mut states, seen, t0 + ms(300)), None);
        assert_eq!(roles(&states)[0], (NodeRole::Fenced, false));
        assert_eq!(roles(&states)[1], (NodeRole::Down, false));
    }

    #[test]
    fn a_node_marked_down_during_a_round_ignores_that_round() {
        let t0 = Instant::now();
        let mut topology = Topology::default();
        let policy = Policy::new(ms(1000));
        let mut states = vec![NodeState::default(); 2];
        round(&mut topology, &mut states, vec![primary(1, 5), replica(1, 5)], t0);
        let r = topology.round(vec![primary(1, 5), replica(1, 5)], t0 + ms(100), t0 + ms(110));
        // A read failed while the round was probing.
        states[1].mark_down(t0 + ms(105));
        r.apply(1, &mut states[1], &policy);
        assert_eq!(roles(&states)[1], (NodeRole::Down, false));
        // The next round started after the failure: its answer counts.
        let r = topology.round(vec![primary(1, 5), replica(1, 5)], t0 + ms(200), t0 + ms(210));
        r.apply(1, &mut states[1], &policy);
        assert_eq!(roles(&states)[1], (NodeRole::Replica, true));
        assert_eq!(states[1].marked_down, None);
    }

    #[test]
    fn roles_print_as_their_metric_labels() {
        let names: Vec<_> = NodeRole::ALL.iter().map(|r| r.to_string()).collect();
        assert_eq!(names, ["primary", "replica", "down", "fenced"]);
    }
}
