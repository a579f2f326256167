//! The leader driven by a tiny in-memory loop: storage nodes that heartbeat on virtual time,
//! a namespace that applies what the leader proposes at once (as if committed), and leader
//! changes. No runtime, no Raft.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;
use crate::ids::{FileId, Sha256Digest};
use crate::namespace::{ChunkRecord, Outcome, ReplicaReport};
use crate::repair::RepairConfig;

const CHUNK: u64 = crate::chunking::MIN_CHUNK_SIZE;
const TICK: Duration = Duration::from_millis(100);
const BEAT: Duration = Duration::from_secs(1);

struct Node {
    id: StorageNodeId,
    up: bool,
    held: BTreeSet<ChunkId>,
    deleted_unreported: Vec<ChunkId>,
    stored_unreported: Vec<ReplicaReport>,
    /// Repair jobs running here, each done at its time (lost if the node goes down).
    repairing: Vec<(crate::repair::RepairJob, Timestamp)>,
    repairs_failed: Vec<(ChunkId, String)>,
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
    /// Log entries heartbeats cost, by command name.
    heartbeat_entries: BTreeMap<&'static str, u32>,
    /// How long a repair job takes once its target has it.
    repair_time: Duration,
    /// Copies made by repair jobs, in order: (chunk, target).
    repaired: Vec<(ChunkId, StorageNodeId)>,
    /// Most repair jobs seen running on one node at once.
    repairs_per_node_max: usize,
}

impl World {
    fn new(nodes: u64, config: LeaderConfig) -> World {
        let mut ns = Namespace::default();
        let nodes: Vec<Node> = (1..=nodes)
            .map(|i| {
                let id = StorageNodeId(i);
                ns.apply(Command::RegisterStorageNode { node: id, addr: format!("n{i}:1"), capacity_bytes: 1 << 40, rack: None }).unwrap();
                Node {
                    id,
                    up: true,
                    held: BTreeSet::new(),
                    deleted_unreported: vec![],
                    stored_unreported: vec![],
                    repairing: vec![],
                    repairs_failed: vec![],
                    next_beat: Timestamp(i * 100),
                }
            })
            .collect();
        let now = Timestamp(0);
        World {
            now,
            unix_ms: 1_700_000_000_000,
            ns,
            config,
            leader: Leader::new(config, 1, now),
            term: 1,
            nodes,
            delete_requests: BTreeMap::new(),
            heartbeat_entries: BTreeMap::new(),
            repair_time: TICK * 2,
            repaired: vec![],
            repairs_per_node_max: 0,
        }
    }

    fn apply(&mut self, command: Command) -> Outcome {
        self.ns.apply(command).expect("the leader proposes only valid commands")
    }

    /// Advances virtual time by one tick: heartbeats that are due, then housekeeping.
    fn step(&mut self) {
        self.now = self.now.plus(TICK);
        self.unix_ms += TICK.as_millis() as u64;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                // A crash: the copies it was making are lost.
                self.nodes[i].repairing.clear();
                continue;
            }
            let due: Vec<crate::repair::RepairJob> = {
                let node = &mut self.nodes[i];
                let (due, later): (Vec<_>, Vec<_>) = node.repairing.drain(..).partition(|(_, at)| *at <= self.now);
                node.repairing = later;
                due.into_iter().map(|(job, _)| job).collect()
            };
            for job in due {
                let source = job.sources.iter().find(|s| self.nodes.iter().any(|n| n.id == **s && n.up && n.held.contains(&job.chunk)));
                if source.is_some() {
                    self.repaired.push((job.chunk, self.nodes[i].id));
                    self.store(self.nodes[i].id.0, job.chunk, job.size, job.sha256);
                } else {
                    self.nodes[i].repairs_failed.push((job.chunk, "no source serves it".into()));
                }
            }
            let node = &mut self.nodes[i];
            if node.next_beat > self.now {
                continue;
            }
            node.next_beat = self.now.plus(BEAT);
            let hb = Heartbeat {
                node: node.id,
                addr: format!("n{}:1", node.id.0),
                stats: NodeStats { capacity_bytes: 1 << 40, free_bytes: 1 << 40, chunk_count: node.held.len() as u64, ..Default::default() },
                deleted: node.deleted_unreported.clone(),
                stored: node.stored_unreported.clone(),
                repairs_running: node.repairing.iter().map(|(j, _)| j.chunk).collect(),
                repairs_failed: std::mem::take(&mut node.repairs_failed),
                inventory: None,
                scrub_request_seen: 0,
                stopping: false,
            };
            let decision = self.leader.on_heartbeat(self.now, &self.ns, hb);
            for command in decision.propose {
                let name = match &command {
                    Command::ReportReplicas { .. } => "ReportReplicas",
                    Command::ForgetDeletedReplicas { .. } => "ForgetDeletedReplicas",
                    other => panic!("a heartbeat proposed {other:?}"),
                };
                *self.heartbeat_entries.entry(name).or_default() += 1;
                self.apply(command);
            }
            let node = &mut self.nodes[i];
            node.deleted_unreported.clear();
            node.stored_unreported.clear();
            assert!(!decision.reply.register, "a registered node was asked to register");
            for chunk in decision.reply.delete_chunks {
                *self.delete_requests.entry((node.id, chunk)).or_default() += 1;
                node.held.remove(&chunk);
                node.deleted_unreported.push(chunk);
            }
            for (job, sources) in decision.reply.repair_jobs {
                assert_eq!(sources.iter().map(|(id, _)| *id).collect::<Vec<_>>(), job.sources, "every source has an address");
                node.repairing.push((job, self.now.plus(self.repair_time)));
            }
            self.repairs_per_node_max = self.repairs_per_node_max.max(node.repairing.len());
        }
        if self.now >= self.leader.poll_timeout() {
            for command in self.leader.tick(self.now, self.unix_ms, &self.ns, [self.term, 7], Some(crate::tokens::TokenKey([7; 32]))) {
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
        self.upload_with(path, chunks, replicas, replicas.len() as u32, commit)
    }

    /// `upload`, with a replication factor that may exceed the replicas written.
    fn upload_with(&mut self, path: &str, chunks: u32, replicas: &[u64], replication: u32, commit: bool) -> FileId {
        let size = chunks as u64 * CHUNK;
        let id = match self.apply(Command::CreateFile {
            path: path.into(),
            size,
            chunk_size: CHUNK,
            replication,
            overwrite: false,
            expect_file_id: None,
            request_id: None,
            unix_ms: self.unix_ms,
            attrs: Default::default(),
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
                sum: Default::default(),
            })
            .collect();
        self.apply(Command::RecordChunks { file: id, chunks: records });
        for index in 0..chunks {
            for &r in replicas {
                self.nodes[r as usize - 1].held.insert(ChunkId::derive(id, index));
            }
        }
        if commit {
            self.apply(Command::CommitFile { file: id, unix_ms: self.unix_ms, sha256: None, chunks: vec![], object: None });
        }
        id
    }

    /// Node `node` stores a replica (and will report it).
    fn store(&mut self, node: u64, chunk: ChunkId, size: u64, sha256: Sha256Digest) {
        let n = &mut self.nodes[node as usize - 1];
        n.held.insert(chunk);
        n.stored_unreported.push(ReplicaReport { chunk, size, sha256 });
    }

    fn replicas(&self, path: &str, index: usize) -> Vec<u64> {
        self.ns.file(path).unwrap().chunks[index].replicas.iter().map(|r| r.0).collect()
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
    // A new leader's safety delay starts when it first sees each piece of garbage.
    w.run_for(Duration::from_secs(5) + LeaderConfig::default().gc_delay);

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
    w.run_for(config.placement_settle);
    let id = w.upload("/u", 4, &[1, 2, 3], false);
    let upload = w.ns.upload(id).unwrap().clone();
    let placed = w.leader.allocate(w.now, &w.ns, &upload, &[0, 1, 2, 3], &[]).unwrap();
    assert!(placed.iter().all(|nodes| nodes.len() == 3 && !nodes.contains(&StorageNodeId(4))), "{placed:?}");
    // Excluding a node: the others are used, with fewer targets than the replication factor.
    let placed = w.leader.allocate(w.now, &w.ns, &upload, &[0], &[StorageNodeId(1)]).unwrap();
    assert!(!placed[0].contains(&StorageNodeId(1)) && !placed[0].contains(&StorageNodeId(4)));
    let none = w.leader.allocate(w.now, &w.ns, &upload, &[0], &[StorageNodeId(1), StorageNodeId(2), StorageNodeId(3)]);
    assert_eq!(none, Err(AllocateError::NoLiveNode { alive: 3, excluded: 3 }));
    assert!(matches!(w.leader.allocate(w.now, &w.ns, &upload, &[9], &[]), Err(AllocateError::NoSuchChunk { .. })));
    // A suspect node gets nothing either.
    w.nodes[0].up = false;
    w.run_for(config.health.suspect_after + BEAT);
    let placed = w.leader.allocate(w.now, &w.ns, &upload, &[0, 1], &[]).unwrap();
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
    assert_eq!(e, Refused::TooFewNodes { replication: 4, usable: 3 });
    assert!(e.to_string().contains("replication factor 4") && e.to_string().contains("3 are available"), "{e}");
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
    w.run_for(Duration::from_secs(3) + config.gc_delay);
    // Its replicas are freed; the committed file's stay.
    let held: Vec<usize> = w.nodes.iter().map(|n| n.held.len()).collect();
    assert_eq!(held, vec![1, 1, 1]);
    assert_eq!(w.garbage_left(), 0);
}

#[test]
fn an_unknown_node_is_told_to_register() {
    let mut w = World::new(1, LeaderConfig::default());
    let hb = Heartbeat {
        node: StorageNodeId(9),
        addr: "x:1".into(),
        stats: NodeStats::default(),
        deleted: vec![],
        stored: vec![],
        repairs_running: vec![],
        repairs_failed: vec![],
        inventory: None,
        scrub_request_seen: 0,
        stopping: false,
    };
    let d = w.leader.on_heartbeat(w.now, &w.ns, hb);
    assert!(d.reply.register && d.propose.is_empty());
    // Same id at a new address: register again (the address is part of the record).
    let hb = Heartbeat {
        node: StorageNodeId(1),
        addr: "moved:1".into(),
        stats: NodeStats::default(),
        deleted: vec![],
        stored: vec![],
        repairs_running: vec![],
        repairs_failed: vec![],
        inventory: None,
        scrub_request_seen: 0,
        stopping: false,
    };
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

#[test]
fn replicas_are_learned_from_the_nodes_that_hold_them_and_stale_ones_deleted() {
    // No repairs here: only what the reports change.
    let config = LeaderConfig { repair: RepairConfig { start_grace: Some(Duration::from_secs(3600)), ..RepairConfig::default() }, ..LeaderConfig::default() };
    let mut w = World::new(4, config);
    w.run_for(Duration::from_secs(2));
    // Written to two nodes of three, the write quorum.
    let f = w.upload_with("/f", 2, &[1, 2], 3, true);
    let sha = |index: u32| Sha256Digest([index as u8; 32]);
    // The holders the uploader named confirm: that costs no log entry.
    for node in [1, 2] {
        for index in 0..2 {
            w.store(node, ChunkId::derive(f, index), CHUNK, sha(index));
        }
    }
    w.run_for(BEAT * 2);
    assert_eq!(w.heartbeat_entries.get("ReportReplicas"), None, "confirmations took log entries");

    // Node 3 holds chunk 0 too, though the uploader never said so (its acknowledgement was
    // lost): metadata learns it from node 3.
    w.store(3, ChunkId::derive(f, 0), CHUNK, sha(0));
    // Node 4 holds chunk 1 with other bytes (stale), a chunk of a deleted file, a chunk index
    // the file does not have, and a chunk of an upload not recorded yet.
    w.store(4, ChunkId::derive(f, 1), CHUNK, Sha256Digest([9; 32]));
    let g = w.upload("/g", 1, &[1, 2], true);
    w.apply(Command::Delete { path: "/g".into(), recursive: false, expect_file_id: None });
    w.store(4, ChunkId::derive(g, 0), CHUNK, sha(0));
    w.store(4, ChunkId::derive(f, 7), CHUNK, sha(7));
    let pending = match w.apply(Command::CreateFile {
        path: "/pending".into(),
        size: CHUNK,
        chunk_size: CHUNK,
        replication: 2,
        overwrite: false,
        expect_file_id: None,
        request_id: None,
        unix_ms: w.unix_ms,
        attrs: Default::default(),
    }) {
        Outcome::FileCreated(id) => id,
        other => panic!("{other:?}"),
    };
    w.store(4, ChunkId::derive(pending, 0), CHUNK, sha(0));
    // An id this namespace never handed out is left alone.
    w.store(4, ChunkId::derive(FileId(1_000), 0), CHUNK, sha(0));
    w.run_for(BEAT * 3 + config.gc_delay);

    assert_eq!(w.replicas("/f", 0), vec![1, 2, 3], "the replica node 3 reported was not learned");
    assert_eq!(w.replicas("/f", 1), vec![1, 2], "a stale replica was counted");
    let held4 = &w.nodes[3].held;
    assert!(!held4.contains(&ChunkId::derive(f, 1)), "the stale replica was not deleted");
    assert!(!held4.contains(&ChunkId::derive(g, 0)), "a deleted file's replica was kept");
    assert!(!held4.contains(&ChunkId::derive(f, 7)), "a chunk the file does not have was kept");
    assert!(held4.contains(&ChunkId::derive(pending, 0)), "a chunk of an upload in progress was deleted");
    assert!(held4.contains(&ChunkId::derive(FileId(1_000), 0)));
    assert_eq!(w.garbage_left(), 0);
    // Node 1 reports chunk 0 again with other bytes: it no longer counts and is deleted.
    w.store(1, ChunkId::derive(f, 0), CHUNK, Sha256Digest([7; 32]));
    w.run_for(BEAT * 2 + config.gc_delay);
    assert_eq!(w.replicas("/f", 0), vec![2, 3]);
    assert!(!w.nodes[0].held.contains(&ChunkId::derive(f, 0)));
}

#[test]
fn a_node_that_says_it_stops_gets_no_new_chunks_starts_no_repair_and_is_back_with_its_next_heartbeat() {
    let config = LeaderConfig::default();
    let mut w = World::new(4, config);
    w.run_for(Duration::from_secs(2));
    let id = w.upload("/u", 4, &[1, 2, 3], false);
    let upload = w.ns.upload(id).unwrap().clone();
    let stopping = Heartbeat {
        node: StorageNodeId(4),
        addr: "n4:1".into(),
        stats: NodeStats::default(),
        deleted: vec![],
        stored: vec![],
        repairs_running: vec![],
        repairs_failed: vec![],
        inventory: None,
        scrub_request_seen: 0,
        stopping: true,
    };
    let decision = w.leader.on_heartbeat(w.now, &w.ns, stopping);
    assert!(decision.propose.is_empty() && decision.reply.repair_jobs.is_empty() && decision.reply.delete_chunks.is_empty());
    assert!(w.leader.events().any(|e| e.kind == "node" && e.text.contains("is stopping")), "no event for the stop");
    w.nodes[3].up = false;
    let placed = w.leader.allocate(w.now, &w.ns, &upload, &[0, 1, 2, 3], &[]).unwrap();
    assert!(placed.iter().all(|nodes| nodes.len() == 3 && !nodes.contains(&StorageNodeId(4))), "{placed:?}");
    // Away for less than the dead timeout: nothing is copied anywhere.
    w.run_for(config.health.dead_after - Duration::from_secs(3));
    assert_eq!(w.leader.repair_status().0.planned, 0);
    w.nodes[3].up = true;
    w.run_for(BEAT * 2);
    let placed = w.leader.allocate(w.now, &w.ns, &upload, &[0, 1, 2, 3], &[]).unwrap();
    assert!(placed.iter().any(|nodes| nodes.contains(&StorageNodeId(4))), "back, yet given nothing: {placed:?}");
}

#[test]
fn a_new_leader_places_nothing_short_before_it_has_heard_from_its_nodes() {
    let config = LeaderConfig::default();
    let mut w = World::new(3, config);
    w.nodes[2].up = false;
    w.run_for(Duration::from_secs(1));
    let id = w.upload_with("/u", 1, &[1, 2], 3, false);
    let upload = w.ns.upload(id).unwrap().clone();
    assert_eq!(w.leader.allocate(w.now, &w.ns, &upload, &[0], &[]), Err(AllocateError::Settling { heard: 2, unheard: 1 }));
    // Settled: what is heard from is all there is; the chunk goes short, to be repaired.
    w.run_for(config.placement_settle);
    let placed = w.leader.allocate(w.now, &w.ns, &upload, &[0], &[]).unwrap();
    assert_eq!(placed[0].len(), 2, "{placed:?}");
}

#[test]
fn heartbeat_replies_list_every_registered_node_as_a_peer() {
    let mut w = World::new(3, LeaderConfig::default());
    let hb = Heartbeat {
        node: StorageNodeId(2),
        addr: "n2:1".into(),
        stats: NodeStats::default(),
        deleted: vec![],
        stored: vec![],
        repairs_running: vec![],
        repairs_failed: vec![],
        inventory: None,
        scrub_request_seen: 0,
        stopping: false,
    };
    let peers = w.leader.on_heartbeat(w.now, &w.ns, hb).reply.peers;
    assert_eq!(peers, (1..=3).map(|i| (StorageNodeId(i), format!("n{i}:1"))).collect::<Vec<_>>());
    w.step();
}

impl World {
    /// Every chunk of `path` with its replicas that count: listed, not bad, on a node that is up.
    fn valid_replicas(&self, path: &str) -> Vec<Vec<u64>> {
        let f = self.ns.file(path).unwrap();
        f.chunks
            .iter()
            .map(|c| {
                let bad = self.ns.bad_replicas(f.chunk_id(c.index));
                c.replicas.iter().filter(|r| self.nodes[r.0 as usize - 1].up && !bad.is_some_and(|b| b.contains(r))).map(|r| r.0).collect()
            })
            .collect()
    }

    /// The end state repair promises once all is quiet: every chunk listed on exactly its
    /// factor of nodes, each of which holds it, and no node holding anything unlisted.
    fn assert_converged(&self) {
        let mut listed: BTreeSet<(StorageNodeId, ChunkId)> = BTreeSet::new();
        for f in self.ns.files() {
            for c in &f.chunks {
                let id = f.chunk_id(c.index);
                assert_eq!(c.replicas.len(), f.replication as usize, "{} chunk {} listed on {:?}", f.path, c.index, c.replicas);
                for r in &c.replicas {
                    assert!(self.nodes[r.0 as usize - 1].held.contains(&id), "{} chunk {} listed on node {r} that lacks it", f.path, c.index);
                    listed.insert((*r, id));
                }
            }
        }
        for n in &self.nodes {
            for c in &n.held {
                assert!(listed.contains(&(n.id, *c)), "node {} holds an orphan {c}", n.id);
            }
        }
        assert_eq!(self.garbage_left(), 0);
    }
}

#[test]
fn a_dead_nodes_replicas_are_copied_back_fewest_first_and_the_surplus_goes_when_it_returns() {
    let config = LeaderConfig::default();
    let mut w = World::new(5, config);
    w.run_for(Duration::from_secs(2));
    w.upload("/three", 6, &[1, 2, 3], true);
    let two = w.upload("/two", 3, &[1, 2], true);
    w.run_for(Duration::from_secs(20));
    assert_eq!(w.leader.repair_status().0.planned, 0, "repairs planned with every node up");

    w.nodes[0].up = false;
    w.run_for(config.health.dead_after + Duration::from_secs(30));
    assert!(w.valid_replicas("/three").iter().all(|r| r.len() == 3), "{:?}", w.valid_replicas("/three"));
    assert!(w.valid_replicas("/two").iter().all(|r| r.len() == 2), "{:?}", w.valid_replicas("/two"));
    assert_eq!(w.repaired.len(), 9, "copies made: exactly the replicas lost");
    // (The order, fewest left first, is the planner's unit tests' to check: here the bounds
    // on streams per node interleave the two files.)
    assert!((0..3).all(|i| w.repaired.iter().any(|(c, _)| *c == ChunkId::derive(two, i))));
    // A node is handed its streams' worth and as many queued (it runs only the former at
    // once: `storage_reports::Repairs`).
    assert!(w.repairs_per_node_max <= config.repair.streams_in_max * 2, "{} repairs handed to one node at once", w.repairs_per_node_max);

    // The node comes back with its old replicas: now there are too many, and the surplus goes.
    w.nodes[0].up = true;
    w.run_for(Duration::from_secs(20));
    w.assert_converged();
    assert_eq!(w.repaired.len(), 9, "nothing copied again");
}

#[test]
fn a_flapping_node_causes_no_repair_storm() {
    let config = LeaderConfig::default();
    let mut w = World::new(4, config);
    w.run_for(Duration::from_secs(2));
    w.upload("/f", 8, &[1, 2, 3], true);
    for _ in 0..10 {
        w.nodes[1].up = false;
        w.run_for(config.health.dead_after / 2);
        w.nodes[1].up = true;
        w.run_for(Duration::from_secs(3));
    }
    assert_eq!(w.leader.repair_status().0.planned, 0, "a node down for less than the dead timeout caused repairs");
    w.assert_converged();
}

#[test]
fn a_leader_change_mid_repair_neither_loses_nor_duplicates_copies() {
    let config = LeaderConfig::default();
    let mut w = World::new(5, config);
    w.repair_time = Duration::from_secs(25);
    w.run_for(Duration::from_secs(2));
    w.upload("/f", 4, &[1, 2, 3], true);
    w.nodes[0].up = false;
    let deadline = w.now.plus(Duration::from_secs(120));
    while w.nodes.iter().all(|n| n.repairing.is_empty()) {
        assert!(w.now < deadline, "no repair started");
        w.step();
    }
    w.new_leader();
    w.run_for(Duration::from_secs(150));
    assert!(w.valid_replicas("/f").iter().all(|r| r.len() == 3), "{:?}", w.valid_replicas("/f"));
    let copies: BTreeSet<ChunkId> = w.repaired.iter().map(|(c, _)| *c).collect();
    assert_eq!((w.repaired.len(), copies.len()), (4, 4), "each lost replica copied exactly once: {:?}", w.repaired);
}

#[test]
fn a_repair_whose_source_dies_is_retried_once_a_source_is_back() {
    let config = LeaderConfig::default();
    let mut w = World::new(4, config);
    w.repair_time = Duration::from_secs(5);
    w.run_for(Duration::from_secs(2));
    w.upload("/f", 1, &[1, 2], true);
    w.nodes[0].up = false;
    let deadline = w.now.plus(Duration::from_secs(120));
    while w.nodes.iter().all(|n| n.repairing.is_empty()) {
        assert!(w.now < deadline, "no repair started");
        w.step();
    }
    w.nodes[1].up = false; // the only source
    w.run_for(Duration::from_secs(8));
    assert!(w.repaired.is_empty());
    w.nodes[1].up = true;
    w.run_for(Duration::from_secs(60));
    assert!(w.leader.repair_status().0.failed >= 1, "the failure was never reported");
    assert_eq!(w.valid_replicas("/f")[0].len(), 2, "{:?}", w.valid_replicas("/f"));
}

#[test]
fn a_replica_being_deleted_is_not_readmitted_by_a_report() {
    let config = LeaderConfig { repair: RepairConfig { start_grace: Some(Duration::from_secs(3600)), ..RepairConfig::default() }, ..LeaderConfig::default() };
    let mut w = World::new(4, config);
    let f = w.upload_with("/f", 1, &[1, 2, 3], 2, true);
    let chunk = ChunkId::derive(f, 0);
    // Node 3's replica is dropped as surplus; before it deletes it, its inventory
    // (or a repair) reports it again.
    w.apply(Command::DropReplicas { drops: vec![(chunk, StorageNodeId(3))] });
    let report = ReplicaReport { chunk, size: CHUNK, sha256: Sha256Digest([0; 32]) };
    let outcome = w.apply(Command::ReportReplicas { node: StorageNodeId(3), replicas: vec![report] });
    assert_eq!(outcome, Outcome::ReplicasReported(crate::namespace::ReportTally { learned: 0, discarded: 0, unchanged: 1 }));
    assert_eq!(w.ns.file("/f").unwrap().chunks[0].replicas[..], [StorageNodeId(1), StorageNodeId(2)]);
    assert_eq!(w.ns.deleting(chunk), vec![StorageNodeId(3)]);
    // Dropping below the factor is refused on apply, whatever the planner asked.
    w.apply(Command::DropReplicas { drops: vec![(chunk, StorageNodeId(1)), (chunk, StorageNodeId(2))] });
    assert_eq!(w.ns.file("/f").unwrap().chunks[0].replicas.len(), 2);
}

/// A heartbeat from node 1 carrying `stored` and an inventory part.
fn beat(stored: Vec<ReplicaReport>, inventory: Option<InventoryPart>) -> Heartbeat {
    Heartbeat {
        node: StorageNodeId(1),
        addr: "n1:1".into(),
        stats: NodeStats::default(),
        deleted: vec![],
        stored,
        repairs_running: vec![],
        repairs_failed: vec![],
        inventory,
        scrub_request_seen: 0,
        stopping: false,
    }
}

#[test]
fn a_whole_inventory_reveals_listed_replicas_a_node_no_longer_has() {
    let config = LeaderConfig { repair: RepairConfig { start_grace: Some(Duration::from_secs(3600)), ..RepairConfig::default() }, ..LeaderConfig::default() };
    let mut w = World::new(3, config);
    let f = w.upload("/f", 3, &[1, 2, 3], true);
    let sha = |index: u32| Sha256Digest([index as u8; 32]);
    let report = |index: u32| ReplicaReport { chunk: ChunkId::derive(f, index), size: CHUNK, sha256: sha(index) };
    // A new leader wants an inventory from every node.
    let d = w.leader.on_heartbeat(w.now, &w.ns, beat(vec![], None));
    assert!(d.reply.inventory_wanted);
    // A pass seen only from its middle concludes nothing.
    let part = |from: Option<u32>, through: Option<u32>, done| InventoryPart {
        pass: 9,
        from: from.map(|i| ChunkId::derive(f, i)),
        through: through.map(|i| ChunkId::derive(f, i)),
        done,
    };
    let d = w.leader.on_heartbeat(w.now, &w.ns, beat(vec![report(2)], Some(part(Some(1), None, true))));
    assert!(d.propose.is_empty(), "{:?}", d.propose);
    // A whole pass in two parts that lacks chunk 1: that replica is marked missing.
    let d = w.leader.on_heartbeat(w.now, &w.ns, beat(vec![report(0)], Some(part(None, Some(0), false))));
    assert!(d.propose.is_empty() && !d.reply.inventory_wanted);
    let d = w.leader.on_heartbeat(w.now, &w.ns, beat(vec![report(2)], Some(part(Some(0), None, true))));
    assert!(d.propose.is_empty(), "judged on the next heartbeat, not this one: {:?}", d.propose);
    let d = w.leader.on_heartbeat(w.now, &w.ns, beat(vec![], None));
    assert_eq!(d.propose, vec![Command::MarkReplicasMissing { node: StorageNodeId(1), chunks: vec![ChunkId::derive(f, 1)] }]);
    for c in d.propose {
        w.apply(c);
    }
    assert!(w.ns.bad_replicas(ChunkId::derive(f, 1)).is_some_and(|b| b.contains(&StorageNodeId(1))), "the missing replica is no longer served");
    let d = w.leader.on_heartbeat(w.now, &w.ns, beat(vec![], None));
    assert!(!d.reply.inventory_wanted, "this leader has seen a whole inventory");
}

/// Found by the simulation (meta_durability, seed 3042): a chunk stored just after a node built
/// the heartbeat that ends its inventory, and committed by its uploader before the leader read
/// that heartbeat, is not in the inventory; it must not be marked missing, for it is in the
/// node's next heartbeat.
#[test]
fn a_chunk_stored_while_the_last_inventory_part_was_on_its_way_is_not_marked_missing() {
    let config = LeaderConfig { repair: RepairConfig { start_grace: Some(Duration::from_secs(3600)), ..RepairConfig::default() }, ..LeaderConfig::default() };
    let mut w = World::new(3, config);
    let old = w.upload("/old", 1, &[1, 2, 3], true);
    let report = |f: FileId, index: u32| ReplicaReport { chunk: ChunkId::derive(f, index), size: CHUNK, sha256: Sha256Digest([index as u8; 32]) };
    // The node builds its last inventory part (holding only /old's chunk); meanwhile a new
    // file's chunk lands on it and the upload commits.
    let new = w.upload("/new", 1, &[1, 2, 3], true);
    let whole = InventoryPart { pass: 4, from: None, through: None, done: true };
    let d = w.leader.on_heartbeat(w.now, &w.ns, beat(vec![report(old, 0)], Some(whole)));
    assert!(d.propose.is_empty(), "{:?}", d.propose);
    // The next heartbeat reports the new chunk: nothing is missing.
    let d = w.leader.on_heartbeat(w.now, &w.ns, beat(vec![report(new, 0)], None));
    assert!(!d.propose.iter().any(|c| matches!(c, Command::MarkReplicasMissing { .. })), "{:?}", d.propose);
    assert_eq!(w.valid_replicas("/new")[0].len(), 3);
}

#[test]
fn garbage_waits_the_safety_delay_before_its_node_is_asked_to_delete_it() {
    let config = LeaderConfig { gc_delay: Duration::from_secs(20), ..LeaderConfig::default() };
    let mut w = World::new(3, config);
    w.run_for(Duration::from_secs(2));
    w.upload("/f", 2, &[1, 2, 3], true);
    w.apply(Command::Delete { path: "/f".into(), recursive: false, expect_file_id: None });
    w.run_for(config.gc_delay - BEAT * 2);
    assert!(w.nodes.iter().all(|n| n.held.len() == 2), "deleted before the safety delay");
    w.run_for(BEAT * 4);
    assert!(w.nodes.iter().all(|n| n.held.is_empty()), "not deleted after the safety delay");
    assert_eq!(w.garbage_left(), 0);
}

/// One chunk of the convergence property: which nodes list it, and which of those copies are
/// bad (and whether the node still holds the bad bytes or already quarantined them).
#[derive(Clone, Debug)]
struct ShapeChunk {
    replicas: Vec<u64>,
    bad: Vec<(u64, bool)>,
}

/// A cluster shape for the convergence property.
#[derive(Clone, Debug)]
struct Shape {
    replication: u32,
    nodes: u64,
    /// Down for good from the start (a dead node).
    down: Option<u64>,
    draining: Option<u64>,
    chunks: Vec<ShapeChunk>,
}

fn shape() -> impl proptest::strategy::Strategy<Value = Shape> {
    use proptest::prelude::*;
    (1u32..=3, 0u64..=2, proptest::option::of(0u64..5), proptest::option::of(0u64..5)).prop_flat_map(|(replication, extra, down, draining)| {
        let nodes = replication as u64 + extra;
        let chunk = (
            proptest::sample::subsequence((1..=nodes).collect::<Vec<_>>(), crate::namespace::write_quorum(replication) as usize..=replication as usize),
            proptest::collection::vec((any::<bool>(), any::<bool>()), replication as usize),
        )
            .prop_map(|(replicas, marks)| {
                let bad = replicas.iter().zip(marks).filter(|(_, (bad, _))| *bad).map(|(r, (_, held))| (*r, held)).collect();
                ShapeChunk { replicas, bad }
            });
        proptest::collection::vec(chunk, 1..5).prop_map(move |chunks| Shape {
            replication,
            nodes,
            down: down.filter(|d| *d < nodes).map(|d| d + 1),
            draining: draining.filter(|d| *d < nodes).map(|d| d + 1),
            chunks,
        })
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 48,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-meta-leader.txt")))),
        ..proptest::prelude::ProptestConfig::default()
    })]
    /// On any cluster shape (as many nodes as copies or more, one dead, one draining, copies
    /// marked bad anywhere, held or already quarantined): every chunk with a readable copy
    /// comes back to its factor of counted copies, or to as many as there are nodes that may
    /// hold one, and stays there. This is the deadlock the first contact found: three nodes at
    /// replication 3 with one bad copy stayed "2 of 3" forever.
    #[test]
    fn a_readable_chunk_converges_to_full_replication_on_any_cluster_shape(shape in shape()) {
        let config = LeaderConfig {
            health: crate::health::HealthConfig { suspect_after: Duration::from_secs(2), dead_after: Duration::from_secs(4) },
            gc_delay: Duration::from_secs(1),
            repair: RepairConfig { start_grace: Some(Duration::from_secs(2)), ..RepairConfig::default() },
            ..LeaderConfig::default()
        };
        let mut w = World::new(shape.nodes, config);
        if let Some(d) = shape.draining {
            w.apply(Command::SetDraining { node: StorageNodeId(d), draining: true });
        }
        w.run_for(Duration::from_secs(2));
        let mut readable = Vec::new();
        for (i, c) in shape.chunks.iter().enumerate() {
            let path = format!("/f{i}");
            let file = w.upload_with(&path, 1, &c.replicas, shape.replication, true);
            let id = ChunkId::derive(file, 0);
            for &(node, held) in &c.bad {
                w.apply(Command::MarkReplicaBad { chunk: id, node: StorageNodeId(node) });
                if !held {
                    w.nodes[node as usize - 1].held.remove(&id);
                }
            }
            let good = c.replicas.iter().any(|r| Some(*r) != shape.down && !c.bad.iter().any(|(b, _)| b == r));
            readable.push((path, good));
        }
        if let Some(d) = shape.down {
            w.nodes[d as usize - 1].up = false;
        }
        let eligible = (1..=shape.nodes).filter(|n| Some(*n) != shape.down && Some(*n) != shape.draining).count();
        let want = (shape.replication as usize).min(eligible);
        let counted = |w: &World, path: &str| -> usize {
            let f = w.ns.file(path).unwrap();
            let bad = w.ns.bad_replicas(f.chunk_id(0));
            f.chunks[0]
                .replicas
                .iter()
                .filter(|r| w.nodes[r.0 as usize - 1].up && Some(r.0) != shape.draining && !bad.is_some_and(|b| b.contains(r)))
                .filter(|r| w.nodes[r.0 as usize - 1].held.contains(&f.chunk_id(0)))
                .count()
        };
        w.run_for(Duration::from_secs(90));
        for (path, good) in &readable {
            if *good {
                proptest::prop_assert_eq!(counted(&w, path), want, "{} of {:?}: listed {:?}, bad {:?}", path, shape, w.replicas(path, 0), w.ns.bad_replicas(w.ns.file(path).unwrap().chunk_id(0)));
            }
        }
        // And it stays there: nothing is dropped below it, nothing copied on and on.
        let repaired = w.repaired.len();
        w.run_for(Duration::from_secs(30));
        for (path, good) in &readable {
            if *good {
                proptest::prop_assert_eq!(counted(&w, path), want);
            }
        }
        proptest::prop_assert_eq!(w.repaired.len(), repaired, "copies made with nothing left to repair");
    }
}

#[test]
fn fsck_counts_chunks_no_live_node_can_serve_as_unreachable_not_healthy() {
    let config = LeaderConfig::default();
    let mut w = World::new(3, config);
    w.run_for(Duration::from_secs(2));
    w.upload("/f", 2, &[1, 2, 3], true);
    w.run_for(Duration::from_secs(2));
    let report = w.leader.fsck(w.now, &w.ns, "/", 10);
    assert!(report.healthy(), "{report:?}");
    // Every storage node stops, and the metadata leader changes (a restart of the metadata
    // nodes): nobody has been heard from in this term, yet nothing is dead for a while.
    for n in &mut w.nodes {
        n.up = false;
    }
    w.new_leader();
    w.run_for(Duration::from_secs(3));
    let report = w.leader.fsck(w.now, &w.ns, "/", 10);
    assert_eq!((report.unreachable, report.missing), (2, 0), "{report:?}");
    assert!(!report.healthy());
    assert!(report.problems.iter().all(|p| p.kind == "unreachable"), "{:?}", report.problems);
    // One node back: readable again, so healthy once it is alive.
    w.nodes[0].up = true;
    w.run_for(BEAT * 2);
    let report = w.leader.fsck(w.now, &w.ns, "/", 10);
    assert_eq!(report.unreachable, 0, "{report:?}");
    // The others are still within their grace: their copies count, nothing is repaired yet.
    assert!(report.healthy(), "{report:?}");
    // Suspect nodes count as unreachable too, while no live node holds the chunk.
    w.nodes[0].up = false;
    w.run_for(config.health.suspect_after + BEAT);
    let report = w.leader.fsck(w.now, &w.ns, "/", 10);
    assert_eq!(report.unreachable, 2, "{report:?}");
}

#[test]
fn trash_buckets_older_than_the_trash_interval_are_deleted() {
    let config = LeaderConfig::default();
    let mut w = World::new(3, config);
    w.run_for(Duration::from_secs(2));
    let day_ms = config.trash_interval.as_millis() as u64;
    w.upload("/old", 1, &[1, 2, 3], true);
    w.upload("/new", 1, &[1, 2, 3], true);
    let old = crate::namespace::trash_bucket("alice", w.unix_ms - day_ms - 120_000);
    let new = crate::namespace::trash_bucket("alice", w.unix_ms - day_ms + 600_000);
    for (path, trash) in [("/old", &old), ("/new", &new)] {
        w.apply(Command::MoveToTrash { path: path.into(), recursive: false, expect_file_id: None, trash: trash.clone(), unix_ms: w.unix_ms });
    }
    // A directory in the trash that is no bucket of ours is left alone.
    w.apply(Command::Mkdir { path: "/.trash/alice/notes".into(), parents: true, unix_ms: w.unix_ms });
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.ns.kind(&old), None, "an expired bucket was kept");
    assert!(w.ns.kind(&new).is_some() && w.ns.kind("/.trash/alice/notes").is_some());
    // Its file is gone for good: its replicas are garbage.
    w.run_for(config.gc_delay + BEAT * 2);
    assert_eq!(w.ns.files().count(), 1);
    // Ten minutes later the other bucket expires too.
    w.run_for(Duration::from_secs(601));
    assert_eq!(w.ns.kind(&new), None);
    assert_eq!(w.ns.files().count(), 0);
    // With the trash off, nothing is purged (and the server deletes at once instead).
    let mut off = World::new(3, LeaderConfig { trash_interval: Duration::ZERO, ..config });
    off.run_for(Duration::from_secs(2));
    off.upload("/f", 1, &[1, 2, 3], true);
    off.apply(Command::MoveToTrash { path: "/f".into(), recursive: false, expect_file_id: None, trash: old.clone(), unix_ms: off.unix_ms });
    off.run_for(Duration::from_secs(3));
    assert_eq!(off.ns.files().count(), 1);
}

#[test]
fn a_scrub_request_is_repeated_until_its_node_says_it_saw_it() {
    let mut w = World::new(3, LeaderConfig::default());
    let hb = |seen: u64| Heartbeat {
        node: StorageNodeId(2),
        addr: "n2:1".into(),
        stats: NodeStats::default(),
        deleted: vec![],
        stored: vec![],
        repairs_running: vec![],
        repairs_failed: vec![],
        inventory: None,
        scrub_request_seen: seen,
        stopping: false,
    };
    assert!(!w.leader.on_heartbeat(w.now, &w.ns, hb(0)).reply.scrub_now, "nothing asked yet");
    assert_eq!(w.leader.request_scrub(&w.ns, "n2:1").map(|(id, _)| id), Some(StorageNodeId(2)));
    let first = w.leader.on_heartbeat(w.now, &w.ns, hb(0)).reply;
    assert!(first.scrub_now && first.scrub_request != 0);
    // That reply was lost (the node's next heartbeat has not seen the request): asked again.
    let again = w.leader.on_heartbeat(w.now, &w.ns, hb(0)).reply;
    assert_eq!((again.scrub_now, again.scrub_request), (true, first.scrub_request));
    // Seen: no more.
    assert!(!w.leader.on_heartbeat(w.now, &w.ns, hb(first.scrub_request)).reply.scrub_now);
    // A second request is a new one, even to a node that saw the first.
    w.leader.request_scrub(&w.ns, "n2:1");
    let second = w.leader.on_heartbeat(w.now, &w.ns, hb(first.scrub_request)).reply;
    assert!(second.scrub_now && second.scrub_request != first.scrub_request);
    // A new leader numbers its requests apart from the old one's.
    let mut next = Leader::new(LeaderConfig::default(), 2, w.now);
    next.request_scrub(&w.ns, "n2:1");
    assert_ne!(next.on_heartbeat(w.now, &w.ns, hb(second.scrub_request)).reply.scrub_request, second.scrub_request);
}
