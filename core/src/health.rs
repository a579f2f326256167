//! Liveness of storage nodes, from their heartbeats: Alive → Suspect → Dead as silence grows.
//!
//! Kept by the metadata leader in memory and rebuilt from heartbeats after a leader change:
//! a node the new leader has not heard from yet is `Unknown`, neither alive (no new replicas
//! go there) nor dead (nothing is repaired away from it) until a full dead interval passes.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::env::Timestamp;
use crate::ids::StorageNodeId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Silence after which a node is Suspect: it gets no new replicas.
    pub suspect_after: Duration,
    /// Silence after which a node is Dead: its replicas count as lost.
    pub dead_after: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { suspect_after: Duration::from_secs(10), dead_after: Duration::from_secs(30) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Suspect,
    Dead,
    /// Registered, but not heard from since this tracker started (and not yet for long).
    Unknown,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Suspect => "suspect",
            Liveness::Dead => "dead",
            Liveness::Unknown => "unknown",
        }
    }
}

/// What a heartbeat reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeStats {
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub chunk_count: u64,
    /// Bytes of the node's chunk files.
    pub stored_bytes: u64,
    /// Free space every write must leave: `free_bytes` less this is what dfs may still use.
    pub reserve_bytes: u64,
    /// The volume of its data dir on its host (0: unknown).
    pub volume_id: u64,
}

impl NodeStats {
    /// What dfs may still write there: free space above the reserve.
    pub fn usable_bytes(&self) -> u64 {
        self.free_bytes.saturating_sub(self.reserve_bytes)
    }
}

#[derive(Clone, Debug)]
struct Seen {
    at: Timestamp,
    stats: NodeStats,
    /// It said it is stopping: Suspect (not Alive) until it heartbeats again.
    stopping: bool,
}

#[derive(Clone, Debug)]
pub struct HealthTracker {
    config: HealthConfig,
    started: Timestamp,
    seen: BTreeMap<StorageNodeId, Seen>,
}

impl HealthTracker {
    pub fn new(config: HealthConfig, now: Timestamp) -> Self {
        HealthTracker { config, started: now, seen: BTreeMap::new() }
    }

    pub fn record_heartbeat(&mut self, node: StorageNodeId, stats: NodeStats, now: Timestamp) {
        self.seen.insert(node, Seen { at: now, stats, stopping: false });
    }

    /// A planned stop: `node` is Suspect from `now` (Dead after the usual silence), until its
    /// next heartbeat.
    /// Whether `node`'s last heartbeat said it is stopping.
    pub fn is_stopping(&self, node: StorageNodeId) -> bool {
        self.seen.get(&node).is_some_and(|s| s.stopping)
    }

    pub fn record_stopping(&mut self, node: StorageNodeId, stats: NodeStats, now: Timestamp) {
        self.seen.insert(node, Seen { at: now, stats, stopping: true });
    }

    pub fn liveness(&self, node: StorageNodeId, now: Timestamp) -> Liveness {
        match self.seen.get(&node) {
            Some(seen) => {
                let silent = now.saturating_since(seen.at);
                if silent >= self.config.dead_after {
                    Liveness::Dead
                } else if silent >= self.config.suspect_after || seen.stopping {
                    Liveness::Suspect
                } else {
                    Liveness::Alive
                }
            }
            None if now.saturating_since(self.started) >= self.config.dead_after => Liveness::Dead,
            None => Liveness::Unknown,
        }
    }

    /// Last reported stats and time since the last heartbeat, if any was received.
    pub fn last_seen(&self, node: StorageNodeId, now: Timestamp) -> Option<(NodeStats, Duration)> {
        self.seen.get(&node).map(|s| (s.stats, now.saturating_since(s.at)))
    }

    /// Nodes that may receive new replicas, with their free space.
    pub fn alive(&self, now: Timestamp) -> impl Iterator<Item = (StorageNodeId, NodeStats)> + '_ {
        self.seen.iter().filter(move |(id, _)| self.liveness(**id, now) == Liveness::Alive).map(|(id, s)| (*id, s.stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_moves_a_node_through_the_states() {
        let cfg = HealthConfig { suspect_after: Duration::from_secs(10), dead_after: Duration::from_secs(30) };
        let mut h = HealthTracker::new(cfg, Timestamp(0));
        let n = StorageNodeId(1);
        assert_eq!(h.liveness(n, Timestamp(5_000)), Liveness::Unknown);
        h.record_heartbeat(n, NodeStats::default(), Timestamp(5_000));
        assert_eq!(h.liveness(n, Timestamp(14_999)), Liveness::Alive);
        assert_eq!(h.liveness(n, Timestamp(15_000)), Liveness::Suspect);
        assert_eq!(h.liveness(n, Timestamp(35_000)), Liveness::Dead);
        assert_eq!(h.alive(Timestamp(14_999)).count(), 1);
        assert_eq!(h.alive(Timestamp(15_000)).count(), 0);
        h.record_heartbeat(n, NodeStats::default(), Timestamp(40_000));
        assert_eq!(h.liveness(n, Timestamp(40_000)), Liveness::Alive);
        assert_eq!(h.liveness(StorageNodeId(2), Timestamp(30_000)), Liveness::Dead);
    }

    #[test]
    fn a_node_that_says_it_stops_takes_no_new_chunks_until_it_is_back_and_dies_on_the_usual_clock() {
        let cfg = HealthConfig { suspect_after: Duration::from_secs(10), dead_after: Duration::from_secs(30) };
        let mut h = HealthTracker::new(cfg, Timestamp(0));
        let n = StorageNodeId(1);
        h.record_heartbeat(n, NodeStats { free_bytes: 7, ..NodeStats::default() }, Timestamp(1_000));
        h.record_stopping(n, NodeStats { free_bytes: 7, ..NodeStats::default() }, Timestamp(2_000));
        assert_eq!(h.liveness(n, Timestamp(2_000)), Liveness::Suspect);
        assert_eq!(h.alive(Timestamp(2_000)).count(), 0);
        assert_eq!(h.last_seen(n, Timestamp(2_000)).map(|(s, _)| s.free_bytes), Some(7));
        assert_eq!(h.liveness(n, Timestamp(32_000)), Liveness::Dead);
        h.record_heartbeat(n, NodeStats::default(), Timestamp(5_000));
        assert_eq!(h.liveness(n, Timestamp(5_000)), Liveness::Alive);
    }
}
