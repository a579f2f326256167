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
    /// Metadata of an earlier version: it ignores `commit_empty` and leaves the upload open.
    ignores_commit_empty: bool,
    /// Metadata writes asked for: creates and commits.
    creates: u32,
    commits: u32,
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
            ignores_commit_empty: false,
            creates: 0,
            commits: 0,
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
            Action::Create { place_chunks, commit_empty } => {
                if self.roll(self.faults.meta_fails) {
                    return self.deliver(LATENCY_MS, Event::MetaFailed { op: MetaOp::Create, error: RpcError::Unavailable("x".into()) });
                }
                self.creates += 1;
                let placements = (0..place_chunks).map(|index| Placement { index, targets: self.place(&[]) }).collect();
                let committed = (commit_empty && !self.ignores_commit_empty).then(|| {
                    assert_eq!(self.spec.size, 0, "commit_empty asked for a file of {} bytes", self.spec.size);
                    assert!(self.generation == 0, "an empty file committed from a changed source");
                    self.committed = Some((Vec::new(), Sha256Digest::of(&[])));
                    proto::FileInfo { file_id: 7, size: 0, ..Default::default() }
                });
                self.deliver(LATENCY_MS, Event::Created { file: FileId(7), placements, write_quorum: quorum as u32, committed });
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
                self.deliver(1, Event::Read { index, sha256: chunk_sha(self.generation, index), chain: None });
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
                self.commits += 1;
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
            up.check_indexes();
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
fn an_empty_file_is_created_and_committed_in_one_write_without_transfers() {
    let mut up = Upload::new(spec(0, 3), config(), Start::Fresh).unwrap();
    let mut w = World::new(up.spec.clone(), 3, Faults::default(), 1);
    w.run(&mut up);
    assert_eq!(w.outcome.clone().unwrap().unwrap().file_id, 7);
    assert_eq!((w.reads, w.creates, w.commits), (0, 1, 0));
    assert_eq!(w.committed.unwrap().0.len(), 0);
}

#[test]
fn an_empty_file_is_committed_apart_when_metadata_ignores_commit_empty() {
    let mut up = Upload::new(spec(0, 3), config(), Start::Fresh).unwrap();
    let mut w = World::new(up.spec.clone(), 3, Faults::default(), 1);
    w.ignores_commit_empty = true;
    w.run(&mut up);
    assert_eq!(w.outcome.clone().unwrap().unwrap().file_id, 7);
    assert_eq!((w.reads, w.creates, w.commits), (0, 1, 1));
    assert_eq!(w.committed.unwrap().1, Sha256Digest::of(b"file-0"));
}

#[test]
fn an_empty_file_whose_source_changed_is_never_created() {
    let mut up = Upload::new(spec(0, 3), config(), Start::Fresh).unwrap();
    let mut w = World::new(up.spec.clone(), 3, Faults::default(), 1);
    w.generation = 1;
    w.run(&mut up);
    assert_eq!(w.outcome.clone().unwrap(), Err(UploadError::SourceChanged));
    assert_eq!((w.creates, w.commits), (0, 0));
}

#[test]
fn a_commit_with_the_create_of_a_file_with_bytes_is_a_bad_reply() {
    let mut up = Upload::new(spec(2, 3), config(), Start::Fresh).unwrap();
    let info = proto::FileInfo { file_id: 7, size: 0, ..Default::default() };
    up.poll_action();
    up.handle(Event::Created { file: FileId(7), placements: Vec::new(), write_quorum: 2, committed: Some(info) }, Timestamp(0));
    let actions: Vec<Action> = std::iter::from_fn(|| up.poll_action()).collect();
    assert!(matches!(actions.as_slice(), [Action::Failed(UploadError::BadReply(_))]), "{actions:?}");
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
    let stored: Vec<StoredChunk> =
        (0..4u32).map(|index| StoredChunk { index, size: CHUNK, sha256: chunk_sha(0, index), replicas: vec![1, 2, 3], chain: None }).collect();
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
    let stored = vec![StoredChunk { index: 1, size: CHUNK, sha256: chunk_sha(9, 1), replicas: vec![1], chain: None }];
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

/// One step of a chaos run: what the machine was given.
#[derive(Clone, Debug)]
// A test's script of steps, a few dozen at most: their size does not matter.
#[allow(clippy::large_enum_variant)]
enum Step {
    Handle(Event, Timestamp),
    Timeout(Timestamp),
}

/// A world that answers every action, but out of order, twice, late, wrongly for the chunk's
/// current attempt, with faults, and with timeouts at any time; `ops` choose which. Checks the
/// indexes after every step, drains what is left once `ops` run out, and keeps what it did
/// with what the machine answered.
struct Chaos {
    now: Timestamp,
    rng: u64,
    pending: Vec<Event>,
    delivered: Vec<Event>,
    chunks: u32,
    replication: u32,
    /// Scales every fault's probability, in percent.
    faults: u64,
    /// Each step, the actions it emitted and the timeout asked for after it.
    transcript: Vec<(Step, Vec<Action>, Option<Timestamp>)>,
}

impl Chaos {
    fn new(chunks: u32, replication: u32, faults: u64, seed: u64) -> Self {
        Chaos { now: Timestamp(0), rng: seed | 1, pending: Vec::new(), delivered: Vec::new(), chunks, replication, faults, transcript: Vec::new() }
    }

    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Whether a fault of probability `per_mille` (before scaling) happens.
    fn roll(&mut self, per_mille: u64) -> bool {
        self.next() % 100_000 < per_mille * self.faults
    }

    /// Where metadata places a chunk: `replication` of five nodes, or, as a fault, none,
    /// fewer, or some twice.
    fn targets(&mut self) -> Vec<proto::StorageNode> {
        if self.roll(250) {
            let count = self.next() % 4;
            return (0..count).map(|_| node(1 + self.next() % 5)).collect();
        }
        let first = self.next();
        (0..u64::from(self.replication)).map(|k| node(1 + (first + k) % 5)).collect()
    }

    /// The write quorum metadata names: the one for the replication, or, as a fault, another.
    fn quorum(&mut self) -> u32 {
        if self.roll(100) {
            1 + (self.next() % 3) as u32
        } else {
            crate::namespace::write_quorum(self.replication)
        }
    }

    /// The completion the world will give `action`, if it has one.
    fn answer(&mut self, action: &Action) {
        let failure = || RpcError::Unavailable("x".into());
        let event = match action {
            Action::Create { .. } if self.roll(30) => Event::MetaFailed { op: MetaOp::Create, error: failure() },
            Action::Create { place_chunks, commit_empty } => {
                let placements = (0..*place_chunks).map(|index| Placement { index, targets: self.targets() }).collect();
                let committed = commit_empty.then(|| proto::FileInfo { file_id: 7, ..Default::default() });
                Event::Created { file: FileId(7), placements, write_quorum: self.quorum(), committed }
            }
            Action::Read { index, .. } if self.roll(5) => Event::ReadFailed { index: *index, error: LocalError::Shrank { got: 0, expected: 1 } },
            Action::Read { index, .. } => Event::Read { index: *index, sha256: chunk_sha(0, *index), chain: None },
            Action::Allocate { .. } if self.roll(20) => Event::MetaFailed { op: MetaOp::Allocate, error: failure() },
            Action::Allocate { indexes, .. } => {
                let mut placements = Vec::new();
                for &index in indexes {
                    // One in five not placed: no node found.
                    if !self.roll(200) {
                        placements.push(Placement { index, targets: self.targets() });
                    }
                }
                // A placement for a chunk not asked about.
                if self.chunks > 0 && self.roll(100) {
                    let index = (self.next() % u64::from(self.chunks)) as u32;
                    placements.push(Placement { index, targets: self.targets() });
                }
                Event::Placed { placements, write_quorum: self.quorum() }
            }
            Action::Send { index, attempt, .. } if self.roll(150) => {
                Event::SendFailed { index: *index, attempt: *attempt, error: RpcError::Transport("timed out".into()) }
            }
            Action::Send { index, attempt, primary, forward_to, .. } => {
                let (mut stored_on, mut failed) = (vec![primary.id], Vec::new());
                for peer in forward_to {
                    if self.roll(300) {
                        failed.push((peer.id, "unreachable".to_string()));
                    } else {
                        stored_on.push(peer.id);
                    }
                }
                Event::Stored { index: *index, attempt: *attempt, stored_on, failed }
            }
            Action::Record { .. } => Event::Recorded,
            Action::FinishSource => Event::SourceFinished { sha256: Sha256Digest::of(b"file-0"), unchanged: !self.roll(20) },
            Action::Commit { .. } if self.roll(20) => Event::MetaFailed { op: MetaOp::Commit, error: failure() },
            Action::Commit { .. } => Event::Committed { file: proto::FileInfo { file_id: 7, ..Default::default() } },
            Action::Release { .. } | Action::Checkpoint(_) | Action::Progress { .. } | Action::Done(_) | Action::Failed(_) => return,
        };
        self.pending.push(event);
    }

    fn step(&mut self, up: &mut Upload, step: Step) {
        match &step {
            Step::Handle(event, now) => up.handle(event.clone(), *now),
            Step::Timeout(now) => up.handle_timeout(*now),
        }
        up.check_indexes();
        let actions: Vec<Action> = std::iter::from_fn(|| up.poll_action()).collect();
        for action in &actions {
            self.answer(action);
        }
        self.transcript.push((step, actions, up.poll_timeout()));
    }

    fn deliver(&mut self, up: &mut Upload, at: usize) {
        let event = self.pending.remove(at);
        if matches!(event, Event::Read { .. } | Event::Stored { .. } | Event::SendFailed { .. }) {
            self.delivered.push(event.clone());
        }
        self.step(up, Step::Handle(event, self.now));
    }

    fn run(&mut self, up: &mut Upload, ops: &[(u8, u32)]) {
        up.check_indexes();
        let actions: Vec<Action> = std::iter::from_fn(|| up.poll_action()).collect();
        for action in &actions {
            self.answer(action);
        }
        for &(kind, pick) in ops {
            match kind {
                // Mostly: a completion, any of those pending.
                0..=5 if !self.pending.is_empty() => {
                    let at = pick as usize % self.pending.len();
                    self.deliver(up, at);
                }
                // A chunk's completion delivered before, again (late, or for an attempt given up
                // on).
                6 if !self.delivered.is_empty() => {
                    let event = self.delivered[pick as usize % self.delivered.len()].clone();
                    self.step(up, Step::Handle(event, self.now));
                }
                // Time passes, and the machine is woken whether or not it asked.
                7 => {
                    self.now = self.now.plus(Duration::from_millis(u64::from(pick % 3000)));
                    self.step(up, Step::Timeout(self.now));
                }
                // The timeout the machine asked for.
                8 => {
                    if let Some(at) = up.poll_timeout() {
                        self.now = self.now.max(at);
                        self.step(up, Step::Timeout(self.now));
                    }
                }
                _ => {}
            }
        }
        // Then everything pending, in order, and the timeouts asked for.
        for _ in 0..100_000 {
            if up.is_finished() {
                return;
            }
            if !self.pending.is_empty() {
                self.deliver(up, 0);
            } else if let Some(at) = up.poll_timeout() {
                self.now = self.now.max(at);
                self.step(up, Step::Timeout(self.now));
            } else {
                panic!("the upload waits for nothing and never finishes");
            }
        }
        panic!("the upload did not finish in 100,000 steps");
    }
}

/// A direct driver for a big upload: every action answered at once, in order, on three nodes,
/// with one send in 997 failing (so that retries and their timeouts happen all along). Returns
/// the machine finished, and how many steps it took.
fn run_big(chunks: u64) -> (Upload, u64) {
    let spec = UploadSpec { size: chunks * CHUNK, chunk_size: CHUNK, replication: 3 };
    let mut up = Upload::new(spec, UploadConfig::default(), Start::Fresh).unwrap();
    assert_eq!(up.chunk_count() as u64, chunks);
    let nodes: Vec<proto::StorageNode> = (1..=3).map(node).collect();
    let mut queue: VecDeque<Event> = VecDeque::new();
    let (mut now, mut steps, mut sends, mut progress) = (Timestamp(0), 0u64, 0u64, 0u64);
    let mut outcome = None;
    loop {
        while let Some(action) = up.poll_action() {
            let event = match action {
                Action::Create { place_chunks, .. } => {
                    let placements = (0..place_chunks).map(|index| Placement { index, targets: nodes.clone() }).collect();
                    Event::Created { file: FileId(7), placements, write_quorum: 2, committed: None }
                }
                Action::Read { index, .. } => {
                    let mut sha = [0; 32];
                    sha[..4].copy_from_slice(&index.to_le_bytes());
                    Event::Read { index, sha256: Sha256Digest(sha), chain: None }
                }
                Action::Allocate { indexes, .. } => {
                    let placements = indexes.into_iter().map(|index| Placement { index, targets: nodes.clone() }).collect();
                    Event::Placed { placements, write_quorum: 2 }
                }
                Action::Send { index, attempt, primary, forward_to, .. } => {
                    sends += 1;
                    if sends % 997 == 0 {
                        Event::SendFailed { index, attempt, error: RpcError::Transport("timed out".into()) }
                    } else {
                        let stored_on = std::iter::once(primary.id).chain(forward_to.iter().map(|n| n.id)).collect();
                        Event::Stored { index, attempt, stored_on, failed: vec![] }
                    }
                }
                Action::Record { .. } => Event::Recorded,
                Action::FinishSource => Event::SourceFinished { sha256: Sha256Digest::of(b"file"), unchanged: true },
                Action::Commit { .. } => Event::Committed { file: proto::FileInfo { file_id: 7, ..Default::default() } },
                Action::Progress { bytes } => {
                    progress += bytes;
                    continue;
                }
                Action::Done(info) => {
                    outcome = Some(Ok(info));
                    continue;
                }
                Action::Failed(e) => {
                    outcome = Some(Err(e));
                    continue;
                }
                Action::Release { .. } | Action::Checkpoint(_) => continue,
            };
            queue.push_back(event);
        }
        if up.is_finished() {
            break;
        }
        steps += 1;
        assert!(steps <= 10 * chunks + 100, "the upload of {chunks} chunks did not finish in {steps} steps");
        match (queue.pop_front(), up.poll_timeout()) {
            (Some(event), _) => up.handle(event, now),
            (None, Some(at)) => {
                now = now.max(at);
                up.handle_timeout(now);
            }
            (None, None) => panic!("the upload waits for nothing and never finishes"),
        }
    }
    up.check_indexes();
    assert!(outcome.expect("finished without Done or Failed").is_ok());
    assert_eq!(progress, chunks * CHUNK);
    (up, steps)
}

/// A 64 GiB file of 1 Mi chunks (no bytes: the machine never sees them) goes through, and the
/// work per step does not grow with the file: the chunk states and index entries looked at
/// stay a small multiple of the chunk count (some 17 per chunk; a scan of every chunk per
/// step would make them some 3 × chunks²). About 5 s in a debug build.
#[test]
fn an_upload_of_1_mi_chunks_does_work_linear_in_the_chunks() {
    assert_eq!(std::mem::size_of::<Chunk>(), 16, "the module doc counts 16 bytes per chunk");
    let chunks = 1024 * 1024;
    let (up, steps) = run_big(chunks);
    let visits = up.chunks.visits();
    assert!(steps >= 3 * chunks, "{steps} steps for {chunks} chunks");
    assert!(visits < 32 * chunks, "{visits} visits for {chunks} chunks in {steps} steps");
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-client-upload-chaos.txt")))),
        cases: 512,
        ..ProptestConfig::default()
    })]
    /// Whatever arrives in whatever order (late, twice, unasked, with timeouts at any time),
    /// the indexes stay what a scan of every chunk makes of them, and the upload ends.
    #[test]
    fn indexes_match_a_scan_after_every_step(
        chunks in 0u32..40,
        replication in 1u32..=3,
        window in 1usize..6,
        allocate_batch in 1usize..5,
        record_batch in 1usize..6,
        attempts in 1u32..6,
        resumed in proptest::collection::btree_set(0u32..40, 0..10),
        resume in any::<bool>(),
        ops in proptest::collection::vec((0u8..10, any::<u32>()), 0..300),
        faults in prop_oneof![Just(0u64), 0u64..=100],
        seed in any::<u64>(),
    ) {
        let spec = UploadSpec { size: u64::from(chunks) * CHUNK, chunk_size: CHUNK, replication };
        let config = UploadConfig {
            chunks_in_flight_max: window,
            allocate_batch_chunks: allocate_batch,
            record_batch_chunks: record_batch,
            chunk_attempts_max: attempts,
            ..UploadConfig::default()
        };
        let start = if resume {
            // Most with the digest the source has, one in eight not.
            let stored = resumed.iter().filter(|&&i| i < chunks).map(|&index| StoredChunk {
                index,
                size: CHUNK,
                sha256: chunk_sha(u64::from(index % 8 == 7), index),
                replicas: vec![1, 2, 3],
                chain: None,
            });
            Start::Resume { file: FileId(7), stored: stored.collect() }
        } else {
            Start::Fresh
        };
        let mut up = Upload::new(spec.clone(), config.clone(), start.clone()).unwrap();
        let mut chaos = Chaos::new(chunks, replication, faults, seed);
        chaos.run(&mut up, &ops);
        prop_assert!(up.is_finished());
        // The same steps again, on a new machine: the same answers.
        let mut again = Upload::new(spec, config, start).unwrap();
        std::iter::from_fn(|| again.poll_action()).for_each(drop);
        for (step, actions, timeout) in chaos.transcript {
            match step {
                Step::Handle(event, now) => again.handle(event, now),
                Step::Timeout(now) => again.handle_timeout(now),
            }
            prop_assert_eq!(std::iter::from_fn(|| again.poll_action()).collect::<Vec<_>>(), actions);
            prop_assert_eq!(again.poll_timeout(), timeout);
        }
    }
}
