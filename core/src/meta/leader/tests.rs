//! The leader driven by a tiny in-memory loop: storage nodes that heartbeat on virtual time,
//! a namespace that applies what the leader proposes at once (as if committed), and leader
//! changes. No runtime, no Raft.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;
use crate::ids::{FileId, Sha256Digest};
use crate::namespace::{ChunkRecord, Outcome};

const CHUNK: u64 = crate::chunking::MIN_CHUNK_SIZE;
const TICK: Duration = Duration::from_millis(100);
const BEAT: Duration = Duration::from_secs(1);

struct Node {
    id: StorageNodeId,
    up: bool,
    held: BTreeSet<ChunkId>,
    deleted_unreported: Vec<ChunkId>,
    next_beat: Timestamp,
}

struct World {
    now: Timestamp,
    unix_ms: u64,
    ns: Namespace,
    config: LeaderConfig,
    leader: Leader,
    term: u64,
    nodes: Vec<Node>,
    /// (node, chunk) → how often the node was asked to delete it.
    delete_requests: BTreeMap<(StorageNodeId, ChunkId), u32>,
}

impl World {
    fn new(nodes: u64, config: LeaderConfig) -> World {
        let mut ns = Namespace::default();
        let nodes: Vec<Node> = (1..=nodes)
            .map(|i| {
                let id = StorageNodeId(i);
                ns.apply(Command::RegisterStorageNode { node: id, addr: format!("n{i}:1"), capacity_bytes: 1 << 40 }).unwrap();
                Node { id, up: true, held: BTreeSet::new(), deleted_unreported: vec![], next_beat: Timestamp(i * 100) }
            })
            .collect();
        let now = Timestamp(0);
        World { now, unix_ms: 1_700_000_000_000, ns, config, leader: Leader::new(config, 1, now), term: 1, nodes, delete_requests: BTreeMap::new() }
    }

    fn apply(&mut self, command: Command) -> Outcome {
        self.ns.apply(command).expect("the leader proposes only valid commands")
    }

    /// Advances virtual time by one tick: heartbeats that are due, then housekeeping.
    fn step(&mut self) {
        self.now = self.now.plus(TICK);
        self.unix_ms += TICK.as_millis() as u64;
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            if !node.up || node.next_beat > self.now {
                continue;
            }
            node.next_beat = self.now.plus(BEAT);
            let hb = Heartbeat {
                node: node.id,
                addr: format!("n{}:1", node.id.0),
                stats: NodeStats { capacity_bytes: 1 << 40, free_bytes: 1 << 40, chunk_count: node.held.len() as u64 },
                deleted: node.deleted_unreported.clone(),
            };
            let decision = self.leader.on_heartbeat(self.now, &self.ns, hb);
            if let Some(command) = decision.propose {
                self.apply(command);
            }
            let node = &mut self.nodes[i];
            node.deleted_unreported.clear();
            assert!(!decision.reply.register, "a registered node was asked to register");
            for chunk in decision.reply.delete_chunks {
                *self.delete_requests.entry((node.id, chunk)).or_default() += 1;
                node.held.remove(&chunk);
                node.deleted_unreported.push(chunk);
            }
        }
        if self.now >= self.leader.poll_timeout() {
            for command in self.leader.tick(self.now, self.unix_ms, &self.ns, [self.term, 7]) {
                self.apply(command);
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now.plus(d);
        while self.now < until {
            self.step();
        }
    }

    fn new_leader(&mut self) {
        self.term += 1;
        self.leader = Leader::new(self.config, self.term, self.now);
    }

    fn liveness(&self, node: u64) -> Liveness {
        self.leader.nodes(self.now, &self.ns).into_iter().find(|n| n.id == StorageNodeId(node)).unwrap().liveness
    }

    /// Uploads and commits a file of `chunks` chunks on `replicas`, which then hold them.
    fn upload(&mut self, path: &str, chunks: u32, replicas: &[u64], commit: bool) -> FileId {
        let size = chunks as u64 * CHUNK;
        let id = match self.apply(Command::CreateFile {
            path: path.into(),
            size,
            chunk_size: CHUNK,
            replication: replicas.len() as u32,
            overwrite: false,
            expect_file_id: None,
            request_id: None,
            unix_ms: self.unix_ms,
        }) {
            Outcome::FileCreated(id) => id,
            other => panic!("{other:?}"),
        };
        let records = (0..chunks)
            .map(|index| ChunkRecord {
                index,
                size: CHUNK,
                sha256: Sha256Digest([index as u8; 32]),
                replicas: replicas.iter().map(|&r| StorageNodeId(r)).collect(),
            })
            .collect();
        self.apply(Command::RecordChunks { file: id, chunks: records });
        for index in 0..chunks {
            for &r in replicas {
                self.nodes[r as usize - 1].held.insert(ChunkId::derive(id, index));
            }
        }
        if commit {
            self.apply(Command::CommitFile { file: id, unix_ms: self.unix_ms, sha256: None, chunks: vec![] });
        }
        id
    }

    fn garbage_left(&self) -> usize {
        self.nodes.iter().map(|n| self.ns.garbage_for(n.id, usize::MAX).len()).sum()
    }
}

#[test]
fn liveness_follows_heartbeats_and_a_new_leader_gives_a_full_grace() {
    let config = LeaderConfig::default();
    let mut w = World::new(3, config);
    w.run_for(Duration::from_secs(2));
    assert!((1..=3).all(|n| w.liveness(n) == Liveness::Alive));

    w.nodes[2].up = false;
    w.run_for(config.health.suspect_after);
    assert_eq!(w.liveness(3), Liveness::Suspect);
    w.run_for(config.health.dead_after - config.health.suspect_after);
    assert_eq!(w.liveness(3), Liveness::Dead);
    // A suspect or dead node that speaks again is alive with no manual step.
    w.nodes[2].up = true;
    w.run_for(BEAT * 2);
    assert_eq!(w.liveness(3), Liveness::Alive);

    // Leader change while node 2 is silent: it stays Unknown for a whole dead interval, never
    // Dead before, and live nodes are Alive again within one heartbeat.
    w.nodes[1].up = false;
    w.new_leader();
    assert!((1..=3).all(|n| w.liveness(n) == Liveness::Unknown), "a new leader knows nobody yet");
    w.run_for(BEAT * 2);
    assert_eq!((w.liveness(1), w.liveness(2), w.liveness(3)), (Liveness::Alive, Liveness::Unknown, Liveness::Alive));
    w.run_for(config.health.dead_after - BEAT * 3);
    assert_eq!(w.liveness(2), Liveness::Unknown, "declared dead before its grace ran out");
    w.run_for(BEAT * 2);
    assert_eq!(w.liveness(2), Liveness::Dead);
}

#[test]
fn deletions_reach_every_holder_once_across_leader_changes_and_outages() {
    let mut w = World::new(4, LeaderConfig::default());
    w.run_for(Duration::from_secs(2));
    w.upload("/a", 3, &[1, 2, 3], true);
    w.upload("/b", 2, &[2, 3, 4], true);
    let held_before: usize = w.nodes.iter().map(|n| n.held.len()).sum();
    assert_eq!(held_before, 15);

    // Node 3 is down when the files are deleted; the leader changes twice meanwhile.
    w.nodes[2].up = false;
    w.apply(Command::Delete { path: "/a".into(), recursive: false, expect_file_id: None });
    w.apply(Command::Delete { path: "/b".into(), recursive: false, expect_file_id: None });
    w.run_for(Duration::from_millis(1500));
    w.new_leader();
    w.run_for(Duration::from_secs(5));
    w.new_leader();
    w.nodes[2].up = true;
    w.run_for(Duration::from_secs(5));

    assert!(w.nodes.iter().all(|n| n.held.is_empty()), "replicas left behind: {:?}", w.nodes.iter().map(|n| n.held.len()).collect::<Vec<_>>());
    assert_eq!(w.garbage_left(), 0, "metadata still waits for deletions that happened");
    assert_eq!(w.delete_requests.len(), 15, "every replica asked for exactly once");
    assert!(w.delete_requests.values().all(|&n| n == 1), "a deletion was asked for twice: {:?}", w.delete_requests);
    // Nothing more is handed out once everything is confirmed.
    w.run_for(Duration::from_secs(5));
    assert!(w.delete_requests.values().all(|&n| n == 1));
}

#[test]
fn placement_uses_only_nodes_heard_from_recently() {
    let config = LeaderConfig::default();
    let mut w = World::new(4, config);
    w.nodes[3].up = false;
    w.run_for(Duration::from_secs(2));
    let id = w.upload("/u", 4, &[1, 2, 3], false);
    let upload = w.ns.upload(id).unwrap().clone();
    let placed = w.leader.allocate(w.now, &upload, &[0, 1, 2, 3], &[]).unwrap();
    assert!(placed.iter().all(|nodes| nodes.len() == 3 && !nodes.contains(&StorageNodeId(4))), "{placed:?}");
    // Excluding a node: the others are used, with fewer targets than the replication factor.
    let placed = w.leader.allocate(w.now, &upload, &[0], &[StorageNodeId(1)]).unwrap();
    assert!(!placed[0].contains(&StorageNodeId(1)) && !placed[0].contains(&StorageNodeId(4)));
    let none = w.leader.allocate(w.now, &upload, &[0], &[StorageNodeId(1), StorageNodeId(2), StorageNodeId(3)]);
    assert_eq!(none, Err(AllocateError::NoLiveNode { alive: 3, excluded: 3 }));
    assert!(matches!(w.leader.allocate(w.now, &upload, &[9], &[]), Err(AllocateError::NoSuchChunk { .. })));
    // A suspect node gets nothing either.
    w.nodes[0].up = false;
    w.run_for(config.health.suspect_after + BEAT);
    let placed = w.leader.allocate(w.now, &upload, &[0, 1], &[]).unwrap();
    assert!(placed.iter().all(|nodes| nodes.len() == 2 && !nodes.contains(&StorageNodeId(1))), "{placed:?}");
    // Readers try live replicas first.
    assert_eq!(w.leader.read_order(w.now, &[StorageNodeId(1), StorageNodeId(2)], 0), vec![StorageNodeId(2), StorageNodeId(1)]);
}

#[test]
fn bad_replicas_are_never_served_and_every_replica_has_a_state() {
    let config = LeaderConfig::default();
    let mut w = World::new(4, config);
    w.run_for(Duration::from_secs(2));
    let replicas = [StorageNodeId(1), StorageNodeId(2), StorageNodeId(3)];
    let bad: BTreeSet<StorageNodeId> = [StorageNodeId(2)].into();
    for index in 0..4 {
        let served = w.leader.served_replicas(w.now, &replicas, Some(&bad), index);
        assert_eq!(served.len(), 2);
        assert!(!served.contains(&StorageNodeId(2)), "a bad replica was served");
    }
    assert_eq!(w.leader.served_replicas(w.now, &replicas, None, 0).len(), 3);
    w.nodes[0].up = false;
    w.run_for(config.health.suspect_after + BEAT);
    let states = w.leader.replica_states(w.now, &replicas, Some(&bad));
    assert_eq!(states, vec![(StorageNodeId(1), ReplicaState::Suspect), (StorageNodeId(2), ReplicaState::Bad), (StorageNodeId(3), ReplicaState::Ok)]);
    w.run_for(config.health.dead_after);
    assert_eq!(w.leader.replica_states(w.now, &replicas, None)[0], (StorageNodeId(1), ReplicaState::Dead));
    // A bad replica stays out even when it is the only one on a live node.
    assert_eq!(w.leader.served_replicas(w.now, &[StorageNodeId(1), StorageNodeId(2)], Some(&bad), 0), vec![StorageNodeId(1)]);
    // A new leader knows nothing yet: suspect, not dead and not ok.
    let fresh = Leader::new(config, 9, w.now);
    assert_eq!(fresh.replica_states(w.now, &replicas[2..], None), vec![(StorageNodeId(3), ReplicaState::Suspect)]);
}

#[test]
fn replication_beyond_the_usable_nodes_is_refused_at_once() {
    let config = LeaderConfig::default();
    let mut w = World::new(3, config);
    w.run_for(Duration::from_secs(2));
    assert!(w.leader.check_replication(w.now, &w.ns, 3).is_ok());
    let e = w.leader.check_replication(w.now, &w.ns, 4).unwrap_err();
    assert!(e.contains("replication factor 4") && e.contains("3 are available"), "{e}");
    w.nodes[0].up = false;
    w.run_for(config.health.dead_after + BEAT);
    assert!(w.leader.check_replication(w.now, &w.ns, 3).is_err(), "a dead node counted as usable");
    assert!(w.leader.check_replication(w.now, &w.ns, 2).is_ok());
}

#[test]
fn housekeeping_names_the_cluster_once_and_expires_abandoned_uploads() {
    let config = LeaderConfig { upload_expiry: Duration::from_secs(600), ..LeaderConfig::default() };
    let mut w = World::new(3, config);
    w.run_for(Duration::from_secs(2));
    let cluster_id = w.ns.cluster_id().expect("the first leader names the cluster").to_string();
    w.new_leader();
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.ns.cluster_id(), Some(cluster_id.as_str()), "a new leader renamed the cluster");

    let abandoned = w.upload("/abandoned", 2, &[1, 2, 3], false);
    w.upload("/kept", 1, &[1, 2, 3], true);
    w.run_for(Duration::from_secs(300));
    assert!(w.ns.upload(abandoned).is_some(), "expired too early");
    w.new_leader(); // expiry is re-derived from the namespace by whoever leads
    w.run_for(Duration::from_secs(302));
    assert!(w.ns.upload(abandoned).is_none(), "the abandoned upload outlived its expiry");
    w.run_for(Duration::from_secs(3));
    // Its replicas are freed; the committed file's stay.
    let held: Vec<usize> = w.nodes.iter().map(|n| n.held.len()).collect();
    assert_eq!(held, vec![1, 1, 1]);
    assert_eq!(w.garbage_left(), 0);
}

#[test]
fn an_unknown_node_is_told_to_register() {
    let mut w = World::new(1, LeaderConfig::default());
    let hb = Heartbeat { node: StorageNodeId(9), addr: "x:1".into(), stats: NodeStats::default(), deleted: vec![] };
    let d = w.leader.on_heartbeat(w.now, &w.ns, hb);
    assert!(d.reply.register && d.propose.is_none());
    // Same id at a new address: register again (the address is part of the record).
    let hb = Heartbeat { node: StorageNodeId(1), addr: "moved:1".into(), stats: NodeStats::default(), deleted: vec![] };
    assert!(w.leader.on_heartbeat(w.now, &w.ns, hb).reply.register);
    w.step();
}

#[test]
fn storage_nodes_of_another_cluster_are_refused() {
    let mut ns = Namespace::default();
    assert_eq!(admit(&ns, ""), Err(AdmitError::Forming));
    ns.apply(Command::SetClusterId { cluster_id: "c1".into() }).unwrap();
    assert_eq!(admit(&ns, ""), Ok("c1".to_string()));
    assert_eq!(admit(&ns, "c1"), Ok("c1".to_string()));
    assert!(matches!(admit(&ns, "c2"), Err(AdmitError::OtherCluster { .. })));
}
