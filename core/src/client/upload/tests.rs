//! The upload machine against a tiny in-memory world: a metadata service, storage nodes that
//! can be down or fail, and a virtual clock. No runtime: `World::run` is the run loop of the
//! module doc, with completions delivered in time order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use proptest::prelude::*;

use super::*;

const CHUNK: u64 = chunking::MIN_CHUNK_SIZE;
const LATENCY_MS: u64 = 3;
const TIMEOUT_MS: u64 = 50;

fn node(id: u64) -> proto::StorageNode {
    proto::StorageNode { id, addr: format!("n{id}") }
}

/// The bytes of chunk `index` stand for themselves by their digest.
fn chunk_sha(generation: u64, index: u32) -> Sha256Digest {
    Sha256Digest::of(format!("{generation}/{index}").as_bytes())
}

/// Probabilities (per mille) of each fault, and nodes down from the start.
#[derive(Clone, Debug, Default)]
struct Faults {
    primary_fails: u32,
    replica_fails: u32,
    meta_fails: u32,
    down: BTreeSet<u64>,
    /// The source changes (its digest generation) after this many reads.
    source_changes_after: Option<u32>,
}

struct World {
    now: Timestamp,
    seq: u64,
    queue: BinaryHeap<Reverse<(Timestamp, u64, usize)>>,
    events: Vec<Option<Event>>,
    nodes: Vec<u64>,
    held: BTreeMap<u64, BTreeSet<u32>>,
    faults: Faults,
    rng: u64,
    next_place: usize,
    recorded: BTreeMap<u32, StoredChunk>,
    committed: Option<(Vec<StoredChunk>, Sha256Digest)>,
    in_memory: BTreeSet<u32>,
    in_memory_max: usize,
    reads: u32,
    generation: u64,
    outcome: Option<Result<proto::FileInfo, UploadError>>,
    checkpoints: Vec<StoredChunk>,
    progress: u64,
    spec: UploadSpec,
}

impl World {
    fn new(spec: UploadSpec, nodes: u64, faults: Faults, seed: u64) -> Self {
        World {
            now: Timestamp(0),
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            nodes: (1..=nodes).collect(),
            held: BTreeMap::new(),
            faults,
            rng: seed | 1,
            next_place: 0,
            recorded: BTreeMap::new(),
            committed: None,
            in_memory: BTreeSet::new(),
            in_memory_max: 0,
            reads: 0,
            generation: 0,
            outcome: None,
            checkpoints: Vec::new(),
            progress: 0,
            spec,
        }
    }

    fn roll(&mut self, per_mille: u32) -> bool {
        // xorshift: deterministic per seed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 1000) < per_mille as u64
    }

    fn deliver(&mut self, after_ms: u64, event: Event) {
        self.seq += 1;
        self.events.push(Some(event));
        self.queue.push(Reverse((Timestamp(self.now.0 + after_ms), self.seq, self.events.len() - 1)));
    }

    fn up(&self, id: u64) -> bool {
        !self.faults.down.contains(&id)
    }

    fn place(&mut self, exclude: &[u64]) -> Vec<proto::StorageNode> {
        let mut out = Vec::new();
        for k in 0..self.nodes.len() {
            let id = self.nodes[(self.next_place + k) % self.nodes.len()];
            // Metadata only places on nodes it believes alive: down nodes still count as
            // alive here, as they would until their heartbeats time out.
            if !exclude.contains(&id) && out.len() < self.spec.replication as usize {
                out.push(node(id));
            }
        }
        self.next_place += 1;
        out
    }

    fn execute(&mut self, up: &Upload, action: Action) {
        let quorum = crate::namespace::write_quorum(self.spec.replication) as usize;
        match action {
            Action::Create { place_chunks } => {
                if self.roll(self.faults.meta_fails) {
                    return self.deliver(LATENCY_MS, Event::MetaFailed { op: MetaOp::Create, error: RpcError::Unavailable("x".into()) });
                }
                let placements = (0..place_chunks).map(|index| Placement { index, targets: self.place(&[]) }).collect();
                self.deliver(LATENCY_MS, Event::Created { file: FileId(7), placements, write_quorum: quorum as u32 });
            }
            Action::Read { index, len, offset } => {
                assert_eq!(offset, index as u64 * self.spec.chunk_size);
                assert_eq!(Some(len), chunking::chunk_len(self.spec.size, self.spec.chunk_size, index));
                assert!(self.in_memory.insert(index), "chunk {index} read twice without a release");
                self.in_memory_max = self.in_memory_max.max(self.in_memory.len());
                self.reads += 1;
                if self.faults.source_changes_after == Some(self.reads) {
                    self.generation += 1;
                }
                self.deliver(1, Event::Read { index, sha256: chunk_sha(self.generation, index) });
            }
            Action::Release { index } => {
                assert!(self.in_memory.remove(&index), "release of chunk {index} not held");
            }
            Action::Allocate { indexes, exclude } => {
                if self.roll(self.faults.meta_fails) {
                    return self.deliver(LATENCY_MS, Event::MetaFailed { op: MetaOp::Allocate, error: RpcError::Unavailable("x".into()) });
                }
                let placements = indexes.iter().map(|&index| Placement { index, targets: self.place(&exclude) }).collect();
                self.deliver(LATENCY_MS, Event::Placed { placements, write_quorum: quorum as u32 });
            }
            Action::Send { index, attempt, primary, forward_to, .. } => {
                assert!(self.in_memory.contains(&index), "chunk {index} sent but not held");
                assert!(forward_to.len() < self.spec.replication as usize);
                if !self.up(primary.id) || self.roll(self.faults.primary_fails) {
                    let error = RpcError::Transport("timed out".into());
                    return self.deliver(TIMEOUT_MS, Event::SendFailed { index, attempt, error });
                }
                self.held.entry(primary.id).or_default().insert(index);
                let mut stored_on = vec![primary.id];
                let mut failed = Vec::new();
                for peer in forward_to {
                    if self.up(peer.id) && !self.roll(self.faults.replica_fails) {
                        self.held.entry(peer.id).or_default().insert(index);
                        stored_on.push(peer.id);
                    } else {
                        failed.push((peer.id, "unreachable".to_string()));
                    }
                }
                self.deliver(LATENCY_MS * 2, Event::Stored { index, attempt, stored_on, failed });
            }
            Action::Checkpoint(stored) => self.checkpoints.push(stored),
            Action::Progress { bytes } => self.progress += bytes,
            Action::Record { chunks } => {
                for c in chunks {
                    self.recorded.insert(c.index, c);
                }
                self.deliver(LATENCY_MS, Event::Recorded);
            }
            Action::FinishSource => {
                let sha = Sha256Digest::of(format!("file-{}", self.generation).as_bytes());
                self.deliver(1, Event::SourceFinished { sha256: sha, unchanged: self.generation == 0 });
            }
            Action::Commit { chunks, sha256 } => {
                if self.roll(self.faults.meta_fails) {
                    return self.deliver(LATENCY_MS, Event::MetaFailed { op: MetaOp::Commit, error: RpcError::Unavailable("x".into()) });
                }
                for c in chunks {
                    self.recorded.insert(c.index, c);
                }
                // What metadata checks at commit: every chunk recorded, on a quorum.
                let count = chunking::chunk_count(self.spec.size, self.spec.chunk_size) as u32;
                let complete = (0..count).all(|i| self.recorded.get(&i).is_some_and(|c| c.replicas.len() >= quorum));
                assert!(complete, "the machine committed with a chunk missing: {:?}", self.recorded.keys().collect::<Vec<_>>());
                self.committed = Some((self.recorded.values().cloned().collect(), sha256));
                let file = proto::FileInfo { file_id: up.file().map_or(0, |f| f.0), size: self.spec.size, ..Default::default() };
                self.deliver(LATENCY_MS, Event::Committed { file });
            }
            Action::Done(info) => self.outcome = Some(Ok(info)),
            Action::Failed(e) => self.outcome = Some(Err(e)),
        }
    }

    /// The run loop of the module doc; returns when the machine finishes.
    fn run(&mut self, up: &mut Upload) {
        for _ in 0..100_000 {
            while let Some(action) = up.poll_action() {
                self.execute(up, action);
            }
            if up.is_finished() {
                assert!(self.outcome.is_some(), "finished without Done or Failed");
                assert!(self.in_memory.is_empty(), "chunks still held at the end: {:?}", self.in_memory);
                return;
            }
            let next_event = self.queue.peek().map(|Reverse((at, _, _))| *at);
            match (next_event, up.poll_timeout()) {
                (Some(at), timeout) if timeout.is_none_or(|t| at <= t) => {
                    let _ = at;
                    let Reverse((at, _, i)) = self.queue.pop().unwrap();
                    self.now = self.now.max(at);
                    let event = self.events[i].take().unwrap();
                    up.handle(event, self.now);
                }
                (_, Some(t)) => {
                    self.now = self.now.max(t);
                    up.handle_timeout(self.now);
                }
                (Some(_), None) => unreachable!("covered by the first arm"),
                (None, None) => panic!("the upload waits for nothing and never finishes"),
            }
        }
        panic!("the upload did not finish in 100,000 steps");
    }

    /// Everything the commit claims holds: each chunk on each replica it names.
    fn check_committed(&self) {
        let (chunks, _) = self.committed.as_ref().expect("committed");
        for c in chunks {
            for r in &c.replicas {
                assert!(self.held.get(r).is_some_and(|h| h.contains(&c.index)), "chunk {} claimed on node {r} which lacks it", c.index);
            }
        }
    }
}

fn spec(chunks: u64, replication: u32) -> UploadSpec {
    UploadSpec { size: chunks * CHUNK - if chunks > 0 { 7 } else { 0 }, chunk_size: CHUNK, replication }
}

fn config() -> UploadConfig {
    UploadConfig { record_batch_chunks: 4, allocate_batch_chunks: 3, ..UploadConfig::default() }
}

#[test]
fn a_clean_upload_commits_every_chunk_on_every_replica_in_one_create_and_one_commit() {
    let mut up = Upload::new(spec(10, 3), config(), Start::Fresh).unwrap();
    let mut w = World::new(up.spec.clone(), 5, Faults::default(), 1);
    w.run(&mut up);
    let info = w.outcome.clone().unwrap().unwrap();
    assert_eq!(info.file_id, 7);
    w.check_committed();
    let (chunks, sha) = w.committed.clone().unwrap();
    assert_eq!(chunks.len(), 10);
    assert!(chunks.iter().all(|c| c.replicas.len() == 3));
    assert_eq!(sha, Sha256Digest::of(b"file-0"));
    assert_eq!(w.progress, up.spec.size);
    assert_eq!(w.checkpoints.len(), 10);
    assert!(w.in_memory_max <= 4, "held {} chunks at once", w.in_memory_max);
}

#[test]
fn an_empty_file_is_created_and_committed_without_transfers() {
    let mut up = Upload::new(spec(0, 3), config(), Start::Fresh).unwrap();
    let mut w = World::new(up.spec.clone(), 3, Faults::default(), 1);
    w.run(&mut up);
    assert!(w.outcome.clone().unwrap().is_ok());
    assert_eq!(w.reads, 0);
    assert_eq!(w.committed.unwrap().0.len(), 0);
}

#[test]
fn a_dead_node_is_routed_around_and_never_asked_again() {
    let faults = Faults { down: [2].into(), ..Faults::default() };
    let mut up = Upload::new(spec(8, 3), config(), Start::Fresh).unwrap();
    let mut w = World::new(up.spec.clone(), 5, faults, 3);
    w.run(&mut up);
    assert!(w.outcome.clone().unwrap().is_ok());
    w.check_committed();
    assert!(!w.held.contains_key(&2));
}

#[test]
fn too_few_nodes_fails_with_the_last_error_after_the_attempts() {
    let faults = Faults { down: [1, 2].into(), ..Faults::default() };
    let mut up = Upload::new(spec(2, 3), config(), Start::Fresh).unwrap();
    let mut w = World::new(up.spec.clone(), 3, faults, 5);
    w.run(&mut up);
    match w.outcome.clone().unwrap() {
        Err(UploadError::ChunkNotStored { attempts, last_error, .. }) => {
            assert_eq!(attempts, 5);
            assert!(!last_error.is_empty());
        }
        other => panic!("expected ChunkNotStored, got {other:?}"),
    }
    assert!(w.committed.is_none());
}

#[test]
fn retries_back_off_in_virtual_time() {
    let faults = Faults { down: [1, 2, 3].into(), ..Faults::default() };
    let mut up = Upload::new(spec(1, 1), config(), Start::Fresh).unwrap();
    let mut w = World::new(up.spec.clone(), 3, faults, 5);
    w.run(&mut up);
    assert!(w.outcome.clone().unwrap().is_err());
    // 5 attempts, 4 backoffs of 200, 400, 800, 1600 ms, plus the timeouts.
    assert!(w.now.0 >= 3000, "gave up after {} ms", w.now.0);
}

#[test]
fn a_source_that_changes_is_refused() {
    let faults = Faults { source_changes_after: Some(3), ..Faults::default() };
    let mut up = Upload::new(spec(5, 3), config(), Start::Fresh).unwrap();
    let mut w = World::new(up.spec.clone(), 3, faults, 1);
    w.run(&mut up);
    assert_eq!(w.outcome.clone().unwrap().unwrap_err(), UploadError::SourceChanged);
    assert!(w.committed.is_none());
}

#[test]
fn a_resumed_upload_sends_only_the_missing_chunks() {
    let spec = spec(6, 3);
    let stored: Vec<StoredChunk> = (0..4u32).map(|index| StoredChunk { index, size: CHUNK, sha256: chunk_sha(0, index), replicas: vec![1, 2, 3] }).collect();
    let mut up = Upload::new(spec.clone(), config(), Start::Resume { file: FileId(7), stored: stored.clone() }).unwrap();
    assert_eq!(up.resumed_chunks(), 4);
    let mut w = World::new(spec, 3, Faults::default(), 1);
    for s in &stored {
        for r in &s.replicas {
            w.held.entry(*r).or_default().insert(s.index);
        }
    }
    w.run(&mut up);
    assert!(w.outcome.clone().unwrap().is_ok());
    w.check_committed();
    // Every chunk was read (for the whole-file hash), only two were sent.
    assert_eq!(w.reads, 6);
    assert_eq!(w.checkpoints.iter().map(|c| c.index).collect::<Vec<_>>(), vec![4, 5]);
}

#[test]
fn a_resume_whose_chunk_changed_is_refused() {
    let spec = spec(3, 1);
    let stored = vec![StoredChunk { index: 1, size: CHUNK, sha256: chunk_sha(9, 1), replicas: vec![1] }];
    let mut up = Upload::new(spec.clone(), config(), Start::Resume { file: FileId(7), stored }).unwrap();
    let mut w = World::new(spec, 3, Faults::default(), 1);
    w.run(&mut up);
    assert_eq!(w.outcome.unwrap().unwrap_err(), UploadError::SourceChanged);
}

#[test]
fn a_resume_metadata_forgot_says_so() {
    let spec = spec(2, 1);
    let mut up = Upload::new(spec.clone(), config(), Start::Resume { file: FileId(7), stored: vec![] }).unwrap();
    let mut w = World::new(spec, 3, Faults::default(), 1);
    // Metadata answers the first allocation with "no such upload".
    while let Some(a) = up.poll_action() {
        if matches!(a, Action::Allocate { .. }) {
            break;
        }
        w.execute(&up, a);
        if let Some(Reverse((_, _, i))) = w.queue.pop() {
            up.handle(w.events[i].take().unwrap(), w.now);
        }
    }
    up.handle(Event::MetaFailed { op: MetaOp::Allocate, error: RpcError::NotFound("upload 7".into()) }, w.now);
    let failed = std::iter::from_fn(|| up.poll_action()).find_map(|a| match a {
        Action::Failed(e) => Some(e),
        _ => None,
    });
    assert_eq!(failed, Some(UploadError::UploadGone));
}

#[test]
fn late_completions_of_abandoned_attempts_are_ignored() {
    let mut up = Upload::new(spec(1, 1), config(), Start::Fresh).unwrap();
    let mut w = World::new(up.spec.clone(), 3, Faults::default(), 1);
    w.run(&mut up);
    assert!(w.outcome.clone().unwrap().is_ok());
    // A duplicate reply after the end changes nothing and emits nothing.
    up.handle(Event::Stored { index: 0, attempt: 1, stored_on: vec![9], failed: vec![] }, w.now);
    up.handle(Event::SendFailed { index: 0, attempt: 9, error: RpcError::Transport("x".into()) }, w.now);
    assert_eq!(up.poll_action(), None);
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-client-upload.txt")))),
        cases: 256,
        ..ProptestConfig::default()
    })]
    /// Whatever fails and whenever, the machine ends, never holds more than its window, never
    /// commits a file with a chunk missing or claimed on a node that lacks it, and succeeds
    /// when nothing fails.
    #[test]
    fn never_commits_a_file_with_a_missing_chunk(
        chunks in 0u64..40,
        replication in 1u32..=3,
        nodes in 3u64..6,
        down in proptest::collection::btree_set(1u64..6, 0..3),
        primary_fails in 0u32..400,
        replica_fails in 0u32..400,
        meta_fails in 0u32..50,
        window in 1usize..6,
        seed in any::<u64>(),
    ) {
        let spec = spec(chunks, replication);
        let faults = Faults { primary_fails, replica_fails, meta_fails, down: down.clone(), source_changes_after: None };
        let config = UploadConfig { chunks_in_flight_max: window, ..config() };
        let mut up = Upload::new(spec.clone(), config, Start::Fresh).unwrap();
        let mut w = World::new(spec, nodes, faults, seed);
        w.run(&mut up);
        prop_assert!(w.in_memory_max <= window);
        match w.outcome.clone().unwrap() {
            Ok(_) => w.check_committed(),
            Err(e) => {
                prop_assert!(w.committed.is_none());
                let clean = primary_fails == 0 && replica_fails == 0 && meta_fails == 0 && down.iter().all(|d| *d > nodes);
                prop_assert!(!clean, "failed with no fault: {e}");
            }
        }
    }
}
