//! The upload of one file, as a pure state machine: it decides, the driver does.
//!
//! ## What it promises
//! - A file is committed only when every chunk is on at least the write quorum of nodes that
//!   confirmed it, and the whole-file SHA-256 is sent with the commit.
//! - The source is read once, in order, one span at a time: the driver can hash the whole
//!   file as it reads (one pass over the bytes), and a resumed upload re-reads chunks it does
//!   not send again so that the whole-file hash covers them and a changed source is caught.
//! - At most `chunks_in_flight_max` chunks are held in memory (read, not yet stored).
//! - A chunk that fails is retried on other nodes after a backoff, at most
//!   `chunk_attempts_max` times; nodes that failed are excluded from later placements.
//!
//! ## What it does not do
//! No I/O, no clock, no hashing of bytes: the driver reads spans, hashes them, talks to
//! metadata and storage nodes, and keeps the bytes of each chunk until told to release them.
//! Metadata calls are retried by the metadata client below the machine (leader changes,
//! unavailability); an error reported to the machine is final.
//!
//! ## How it is driven (the run loop, the same for `Download`)
//! ```text
//! let mut up = Upload::new(spec, config, start, now);
//! loop {
//!     while let Some(action) = up.poll_action() { execute(action) }   // starts I/O
//!     if up.is_finished() { break }
//!     wait for the next I/O completion, or until up.poll_timeout();
//!     up.handle(event, now) or up.handle_timeout(now);
//! }
//! ```
//! Completions may arrive in any order; each carries what the machine needs to match it to
//! its action (chunk index and attempt). A completion for an attempt the machine has given up
//! on is ignored.
//!
//! ## What it costs
//! For a file of n chunks: O(n) time and memory once, at `new` (a 16-byte state per chunk, so
//! 256 MiB for 1 TiB at 64 KiB chunks). Then each call (`handle`, `handle_timeout`,
//! `poll_timeout`, `poll_action`) costs O(log n) for each chunk it touches (the one an event
//! names, those a placement lists, those in the allocation it answers, those whose backoff
//! ends, the next one to read) and for each action it emits. None scans all the chunks, so a
//! whole upload costs O(n log n). The indexes this takes (the active chunks, the count of
//! stored ones, the chunks to send, to allocate, being allocated, and those backing off by
//! deadline) live with the chunk states in `chunks::Chunks`, which changes a state only
//! together with its indexes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use self::chunks::Chunks;

use crate::chain::Chain;
use crate::chunking;
use crate::env::{LocalError, Timestamp};
use crate::ids::{FileId, Sha256Digest};
use crate::proto;
use crate::rpc::RpcError;

#[derive(Clone, Debug)]
pub struct UploadConfig {
    /// Chunks read but not yet stored, at most (each held in memory by the driver).
    pub chunks_in_flight_max: usize,
    /// Placements tried per chunk before the upload fails.
    pub chunk_attempts_max: u32,
    /// Wait before the second attempt of a chunk; doubles per attempt up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// Chunk records per `RecordChunks` call while the upload runs; the rest go with the commit.
    pub record_batch_chunks: usize,
    /// Chunks placed per `AllocateChunks` call, at most.
    pub allocate_batch_chunks: usize,
    /// A node that failed is left out of this upload's placements for this long.
    pub node_exclusion: Duration,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            chunks_in_flight_max: 4,
            chunk_attempts_max: 5,
            retry_backoff: Duration::from_millis(200),
            retry_backoff_max: Duration::from_secs(5),
            record_batch_chunks: 1024,
            allocate_batch_chunks: 64,
            node_exclusion: Duration::from_secs(30),
        }
    }
}

/// What is uploaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadSpec {
    pub size: u64,
    pub chunk_size: u64,
    pub replication: u32,
}

/// A chunk stored on a write quorum: what metadata records, and what a resume manifest keeps.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredChunk {
    pub index: u32,
    pub size: u64,
    pub sha256: Sha256Digest,
    pub replicas: Vec<u64>,
    /// How `sha256` was computed (`crate::chain`); absent in manifests of earlier versions,
    /// whose chunks were standalone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Chain>,
}

impl StoredChunk {
    pub fn to_proto(&self) -> proto::ChunkInfo {
        proto::ChunkInfo {
            index: self.index,
            size: self.size,
            sha256: self.sha256.0.to_vec().into(),
            replicas: self.replicas.clone(),
            chain: self.chain.map(Chain::to_proto),
        }
    }
}

/// Where an upload starts.
#[derive(Clone, Debug)]
pub enum Start {
    /// Create the file at metadata first.
    Fresh,
    /// An upload created earlier (same source, same spec): `stored` chunks are not sent again.
    Resume { file: FileId, stored: Vec<StoredChunk> },
}

/// Where a chunk should go, as metadata placed it: the first target is the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub index: u32,
    pub targets: Vec<proto::StorageNode>,
}

/// The metadata call an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaOp {
    Create,
    Allocate,
    Record,
    Commit,
}

impl MetaOp {
    pub fn as_str(self) -> &'static str {
        match self {
            MetaOp::Create => "creating the file",
            MetaOp::Allocate => "placing chunks",
            MetaOp::Record => "recording chunks",
            MetaOp::Commit => "committing",
        }
    }
}

#[derive(Clone, Debug)]
pub enum Event {
    /// `CreateFile` answered, possibly with placements for the first chunks, or with the
    /// file committed (an empty file, asked with `commit_empty`).
    Created { file: FileId, placements: Vec<Placement>, write_quorum: u32, committed: Option<proto::FileInfo> },
    /// The span of chunk `index` is read into the driver's buffer; `sha256` is its checksum,
    /// computed as `chain` says.
    Read { index: u32, sha256: Sha256Digest, chain: Option<Chain> },
    /// Reading the source failed.
    ReadFailed { index: u32, error: LocalError },
    /// `AllocateChunks` answered.
    Placed { placements: Vec<Placement>, write_quorum: u32 },
    /// The primary answered: the nodes that stored the chunk, and the replicas that failed.
    Stored { index: u32, attempt: u32, stored_on: Vec<u64>, failed: Vec<(u64, String)> },
    /// The write to the primary failed as a whole (unreachable, timeout, refused).
    SendFailed { index: u32, attempt: u32, error: RpcError },
    /// `RecordChunks` answered.
    Recorded,
    /// The driver finished the whole-file hash and looked at the source again.
    SourceFinished { sha256: Sha256Digest, unchanged: bool },
    /// `CommitFile` answered.
    Committed { file: proto::FileInfo },
    /// A metadata call failed for good.
    MetaFailed { op: MetaOp, error: RpcError },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// `CreateFile`, asking for placements of the first `place_chunks` chunks; with
    /// `commit_empty` (an empty file), to commit it in the same write.
    Create {
        place_chunks: u32,
        commit_empty: bool,
    },
    /// Read chunk `index` (`len` bytes at `offset`) and keep it until `Release`.
    Read {
        index: u32,
        offset: u64,
        len: u64,
    },
    /// `AllocateChunks` for these chunks, avoiding `exclude`.
    Allocate {
        indexes: Vec<u32>,
        exclude: Vec<u64>,
    },
    /// Write chunk `index` (whose digest is `sha256`) to `primary`, which forwards it to
    /// `forward_to`.
    Send {
        index: u32,
        attempt: u32,
        sha256: Sha256Digest,
        chain: Option<Chain>,
        primary: proto::StorageNode,
        forward_to: Vec<proto::StorageNode>,
    },
    /// The chunk's bytes are no longer needed.
    Release {
        index: u32,
    },
    /// The chunk is stored: worth remembering for a resume.
    Checkpoint(StoredChunk),
    /// `RecordChunks`.
    Record {
        chunks: Vec<StoredChunk>,
    },
    /// Finish the whole-file hash and check the source did not change since the upload began.
    FinishSource,
    /// `CommitFile` with the chunks not recorded yet and the file's SHA-256.
    Commit {
        chunks: Vec<StoredChunk>,
        sha256: Sha256Digest,
    },
    /// `bytes` more of the file are stored.
    Progress {
        bytes: u64,
    },
    Done(proto::FileInfo),
    Failed(UploadError),
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum UploadError {
    /// The caller's side: the local file could not be read.
    #[error("reading chunk {index} of the source: {error}")]
    Source { index: u32, error: LocalError },
    /// The caller's side: the file changed while it was being uploaded.
    #[error("the source file changed during the upload; nothing was committed")]
    SourceChanged,
    /// The upload this resume refers to is gone at metadata (expired or committed).
    #[error("the interrupted upload is no longer known to metadata")]
    UploadGone,
    #[error("{}: {error}", op.as_str())]
    Metadata { op: MetaOp, error: RpcError },
    /// The world's side: storage nodes unreachable or failing.
    #[error("chunk {index}: not stored on a write quorum after {attempts} attempts; last error: {last_error}")]
    ChunkNotStored { index: u32, attempts: u32, last_error: String },
    /// The peer's side: metadata answered something that makes no sense.
    #[error("metadata's reply makes no sense: {0}")]
    BadReply(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Chunk {
    /// Not read yet.
    Unread,
    /// In memory (or being read) and on its way to a quorum.
    Active(Box<ActiveChunk>),
    /// Stored on a quorum (or resumed): needs no more bytes.
    Stored,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ActiveChunk {
    /// Known once read.
    sha256: Option<Sha256Digest>,
    chain: Option<Chain>,
    /// Placement for the next attempt, if one has come.
    placement: Option<Vec<proto::StorageNode>>,
    /// Nodes that confirmed they store it.
    holders: BTreeSet<u64>,
    /// Attempts started so far.
    attempt: u32,
    phase: Phase,
    last_error: String,
    /// From a resume manifest: read only to hash and check it, never sent.
    resumed: Option<StoredChunk>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Reading,
    /// Waiting for a placement (requested or to request).
    NeedsPlacement,
    Allocating,
    Sending,
    /// Backing off until then, after a failed attempt.
    Waiting(Timestamp),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Creating,
    Transferring,
    FinishingSource,
    Committing,
    Finished,
}

pub struct Upload {
    spec: UploadSpec,
    config: UploadConfig,
    stage: Stage,
    file: Option<FileId>,
    write_quorum: usize,
    /// Every chunk's state, with the indexes that spare each event a scan of them all.
    chunks: Chunks,
    /// The next chunk to read; reads go in order, one at a time.
    next_read: u32,
    reading: bool,
    allocating: bool,
    recording: bool,
    /// Stored chunks not yet sent to metadata, in index order.
    unrecorded: VecDeque<StoredChunk>,
    /// Nodes that failed during this upload, and until when they are not asked again.
    failed_nodes: BTreeMap<u64, Timestamp>,
    /// Placements that came before their chunk was read (with the create).
    placed_ahead: BTreeMap<u32, Vec<proto::StorageNode>>,
    /// Chunks a resume manifest says are stored, not read yet.
    resumed: BTreeMap<u32, StoredChunk>,
    /// Started from a manifest rather than a fresh create.
    resuming: bool,
    resumed_total: usize,
    actions: VecDeque<Action>,
}

impl Upload {
    pub fn new(spec: UploadSpec, config: UploadConfig, start: Start) -> Result<Self, UploadError> {
        chunking::validate(spec.size, spec.chunk_size).map_err(|e| UploadError::BadReply(e.to_string()))?;
        let count = chunking::chunk_count(spec.size, spec.chunk_size) as usize;
        let mut up = Upload {
            spec,
            config,
            stage: Stage::Creating,
            file: None,
            write_quorum: 1,
            chunks: Chunks::new(count),
            next_read: 0,
            reading: false,
            allocating: false,
            recording: false,
            unrecorded: VecDeque::new(),
            failed_nodes: BTreeMap::new(),
            placed_ahead: BTreeMap::new(),
            resumed: BTreeMap::new(),
            resuming: false,
            resumed_total: 0,
            actions: VecDeque::new(),
        };
        match start {
            // An empty file: nothing to read, so the source is looked at first, and then one
            // write creates and commits it.
            Start::Fresh if count == 0 => {
                up.stage = Stage::FinishingSource;
                up.actions.push_back(Action::FinishSource);
            }
            Start::Fresh => {
                let place = count.min(up.window()).min(up.config.allocate_batch_chunks) as u32;
                up.actions.push_back(Action::Create { place_chunks: place, commit_empty: false });
            }
            Start::Resume { file, stored } => {
                up.file = Some(file);
                up.resuming = true;
                up.write_quorum = crate::namespace::write_quorum(up.spec.replication) as usize;
                for s in stored {
                    let len = chunking::chunk_len(up.spec.size, up.spec.chunk_size, s.index);
                    // A record that does not fit this file or lacks a quorum is sent again.
                    if len == Some(s.size) && s.replicas.len() >= up.write_quorum {
                        up.resumed.insert(s.index, s);
                    }
                }
                up.resumed_total = up.resumed.len();
                up.stage = Stage::Transferring;
                up.advance();
            }
        }
        Ok(up)
    }

    /// Chunks the resume manifest covers (for "resuming: N of M chunks already stored").
    pub fn resumed_chunks(&self) -> usize {
        self.resumed_total
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    pub fn file(&self) -> Option<FileId> {
        self.file
    }

    pub fn is_finished(&self) -> bool {
        self.stage == Stage::Finished
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest time `handle_timeout` has work to do.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.chunks.next_retry()
    }

    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.stage != Stage::Transferring {
            return;
        }
        for index in self.chunks.retries_due(now) {
            self.chunks.update(index, |a| a.phase = Phase::NeedsPlacement);
        }
        self.advance();
    }

    pub fn handle(&mut self, event: Event, now: Timestamp) {
        if self.stage == Stage::Finished {
            return;
        }
        match event {
            Event::Created { file, placements, write_quorum, committed } => {
                if self.stage != Stage::Creating {
                    return;
                }
                if let Some(info) = committed {
                    if self.chunks.len() != 0 || info.size != 0 || info.file_id != file.0 {
                        let what = format!("file {} of {} bytes committed with its creation", info.file_id, info.size);
                        return self.fail(UploadError::BadReply(what));
                    }
                    self.file = Some(file);
                    self.stage = Stage::Finished;
                    self.actions.push_back(Action::Done(info));
                    return;
                }
                // Without `committed`, a metadata node of an earlier version left the upload
                // open: an empty one goes on to look at the source again and commit.
                self.file = Some(file);
                self.write_quorum = (write_quorum as usize).max(1);
                self.stage = Stage::Transferring;
                if let Err(e) = self.accept_placements(placements, now) {
                    return self.fail(e);
                }
            }
            Event::Read { index, sha256, chain } => {
                self.reading = false;
                let Some(Chunk::Active(a)) = self.chunks.get(index) else { return };
                if a.phase != Phase::Reading {
                    return;
                }
                let (resumed, placed) = (a.resumed.clone(), a.placement.is_some());
                self.chunks.update(index, |a| {
                    a.sha256 = Some(sha256);
                    a.chain = chain;
                });
                if let Some(resumed) = resumed {
                    // A chunk stored with a checksum of another kind (an earlier version's
                    // manifest) is stored again: its replicas' headers say otherwise.
                    if resumed.sha256 != sha256 || resumed.chain != chain {
                        return self.fail(UploadError::SourceChanged);
                    }
                    self.actions.push_back(Action::Release { index });
                    self.actions.push_back(Action::Progress { bytes: resumed.size });
                    self.chunks.set(index, Chunk::Stored);
                    // Metadata may not have recorded it before the interruption: record again
                    // (idempotent).
                    self.unrecorded.push_back(resumed);
                } else if placed {
                    self.send(index);
                } else {
                    self.chunks.update(index, |a| a.phase = Phase::NeedsPlacement);
                }
            }
            Event::ReadFailed { index, error } => return self.fail(UploadError::Source { index, error }),
            Event::Placed { placements, write_quorum } => {
                self.allocating = false;
                self.write_quorum = (write_quorum as usize).max(1);
                if let Err(e) = self.accept_placements(placements, now) {
                    return self.fail(e);
                }
                // Chunks asked for but not placed: an attempt that found no node.
                for index in self.chunks.allocating() {
                    self.chunks.update(index, |a| {
                        a.attempt += 1;
                        a.last_error = "metadata offered no storage node beyond those that failed".into();
                    });
                    self.attempt_over(index, now);
                    if self.stage == Stage::Finished {
                        return;
                    }
                }
            }
            Event::Stored { index, attempt, stored_on, failed } => {
                if !self.is_sending(index, attempt) {
                    return;
                }
                let failed = self.chunks.update(index, |a| {
                    a.holders.extend(stored_on);
                    for (node, error) in &failed {
                        a.last_error = format!("replica on node {node:016x}: {error}");
                    }
                    failed.into_iter().map(|(n, _)| n).filter(|n| !a.holders.contains(n)).collect::<Vec<u64>>()
                });
                let until = now.plus(self.config.node_exclusion);
                self.failed_nodes.extend(failed.unwrap_or_default().into_iter().map(|n| (n, until)));
                self.attempt_over(index, now);
            }
            Event::SendFailed { index, attempt, error } => {
                if !self.is_sending(index, attempt) {
                    return;
                }
                let primary = self.chunks.update(index, |a| {
                    a.last_error = error.to_string();
                    let primary = a.placement.take().and_then(|p| p.into_iter().next());
                    if let Some(p) = &primary {
                        a.last_error = format!("primary {}: {error}", p.addr);
                    }
                    primary
                });
                if let Some(p) = primary.flatten() {
                    self.failed_nodes.insert(p.id, now.plus(self.config.node_exclusion));
                }
                self.attempt_over(index, now);
            }
            Event::Recorded => self.recording = false,
            Event::SourceFinished { sha256, unchanged } => {
                if self.stage != Stage::FinishingSource {
                    return;
                }
                if !unchanged {
                    return self.fail(UploadError::SourceChanged);
                }
                if self.file.is_none() {
                    self.stage = Stage::Creating;
                    self.actions.push_back(Action::Create { place_chunks: 0, commit_empty: true });
                    return;
                }
                self.stage = Stage::Committing;
                let chunks: Vec<StoredChunk> = self.unrecorded.drain(..).collect();
                self.actions.push_back(Action::Commit { chunks, sha256 });
                return;
            }
            Event::Committed { file } => {
                if self.stage != Stage::Committing {
                    return;
                }
                if self.file.is_some_and(|f| f.0 != file.file_id) {
                    return self.fail(UploadError::BadReply(format!("committed file {} is not this upload", file.file_id)));
                }
                self.stage = Stage::Finished;
                self.actions.push_back(Action::Done(file));
                return;
            }
            Event::MetaFailed { op, error } => {
                if op == MetaOp::Commit && error.is_retryable() && crate::planted::on(crate::planted::Bug::LostCommit) {
                    // Planted: an ambiguous commit taken for a done one.
                    let file = proto::FileInfo {
                        file_id: self.file.map_or(0, |f| f.0),
                        size: self.spec.size,
                        chunk_size: self.spec.chunk_size,
                        replication: self.spec.replication,
                        chunk_count: self.chunks.len() as u64,
                        ..Default::default()
                    };
                    self.stage = Stage::Finished;
                    self.actions.push_back(Action::Done(file));
                    return;
                }
                // A resumed upload that metadata no longer knows (expired, or committed by the
                // interrupted run) is not an error of this run: the caller starts over.
                let gone = self.resuming && matches!(error, RpcError::NotFound(_)) && op != MetaOp::Create;
                return self.fail(if gone { UploadError::UploadGone } else { UploadError::Metadata { op, error } });
            }
        }
        self.advance();
    }

    /// Whether chunk `index` is active and in the sending phase of `attempt`.
    fn is_sending(&self, index: u32, attempt: u32) -> bool {
        matches!(self.chunks.get(index), Some(Chunk::Active(a)) if a.phase == Phase::Sending && a.attempt == attempt)
    }

    fn accept_placements(&mut self, placements: Vec<Placement>, now: Timestamp) -> Result<(), UploadError> {
        self.failed_nodes.retain(|_, until| *until > now);
        for p in placements {
            let Some(chunk) = self.chunks.get(p.index) else {
                return Err(UploadError::BadReply(format!("placement for chunk {} of a {}-chunk file", p.index, self.chunks.len())));
            };
            if p.targets.is_empty() {
                continue;
            }
            match chunk {
                // Placed ahead of the read (with the create): kept for when it is read.
                Chunk::Unread => {
                    self.placed_ahead.insert(p.index, p.targets);
                }
                Chunk::Active(a) if matches!(a.phase, Phase::Allocating | Phase::NeedsPlacement | Phase::Reading) => {
                    self.chunks.update(p.index, |a| {
                        a.placement = Some(p.targets);
                        if a.phase == Phase::Allocating {
                            a.phase = Phase::NeedsPlacement;
                        }
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The attempt in flight on `index` is over: done, retry later, or give up.
    fn attempt_over(&mut self, index: u32, now: Timestamp) {
        let quorum = self.write_quorum;
        let attempts_max = self.config.chunk_attempts_max;
        let Some((holders, attempt)) = self.chunks.update(index, |a| {
            a.placement = None;
            (a.holders.len(), a.attempt)
        }) else {
            return;
        };
        let Some(Chunk::Active(a)) = self.chunks.get(index) else { return };
        if holders >= quorum {
            let stored = StoredChunk {
                index,
                size: chunking::chunk_len(self.spec.size, self.spec.chunk_size, index).unwrap_or(0),
                sha256: a.sha256.expect("a chunk is sent only once read"),
                replicas: a.holders.iter().copied().collect(),
                chain: a.chain,
            };
            self.chunks.set(index, Chunk::Stored);
            self.actions.push_back(Action::Release { index });
            self.actions.push_back(Action::Checkpoint(stored.clone()));
            self.actions.push_back(Action::Progress { bytes: stored.size });
            self.unrecorded.push_back(stored);
            return;
        }
        if attempt >= attempts_max {
            let error = UploadError::ChunkNotStored { index, attempts: attempt, last_error: a.last_error.clone() };
            return self.fail(error);
        }
        let at = now.plus(self.backoff_after(attempt));
        self.chunks.update(index, |a| a.phase = Phase::Waiting(at));
    }

    fn backoff_after(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.config.retry_backoff.saturating_mul(factor).min(self.config.retry_backoff_max)
    }

    fn window(&self) -> usize {
        self.config.chunks_in_flight_max.max(1)
    }

    fn send(&mut self, index: u32) {
        let replication = self.spec.replication as usize;
        let send = self.chunks.update(index, |a| {
            let wanted = replication.saturating_sub(a.holders.len()).max(1);
            let targets: Vec<proto::StorageNode> =
                a.placement.clone().unwrap_or_default().into_iter().filter(|t| !a.holders.contains(&t.id)).take(wanted).collect();
            let mut targets = targets.into_iter();
            let Some(primary) = targets.next() else {
                a.placement = None;
                a.phase = Phase::NeedsPlacement;
                return None;
            };
            let sha256 = a.sha256?;
            a.attempt += 1;
            a.phase = Phase::Sending;
            Some(Action::Send { index, attempt: a.attempt, sha256, chain: a.chain, primary, forward_to: targets.collect() })
        });
        if let Some(send) = send.flatten() {
            self.actions.push_back(send);
        }
    }

    /// Starts whatever can start now.
    fn advance(&mut self) {
        if self.stage != Stage::Transferring {
            return;
        }
        // Reads, in order, one at a time, while the window has room. Resumed chunks are read
        // (to hash and check them) but hold no window slot for long.
        while !self.reading && (self.next_read as usize) < self.chunks.len() {
            let index = self.next_read;
            if self.chunks.get(index) != Some(&Chunk::Unread) {
                self.next_read += 1;
                continue;
            }
            let resumed = self.resumed.remove(&index);
            if resumed.is_none() && self.chunks.active_len() >= self.window() {
                break;
            }
            let mut chunk = match resumed {
                Some(stored) => ActiveChunk::resumed(stored),
                None => ActiveChunk::new(),
            };
            chunk.placement = self.placed_ahead.remove(&index);
            self.chunks.set(index, Chunk::Active(Box::new(chunk)));
            let offset = index as u64 * self.spec.chunk_size;
            let len = chunking::chunk_len(self.spec.size, self.spec.chunk_size, index).unwrap_or(0);
            self.actions.push_back(Action::Read { index, offset, len });
            self.reading = true;
            self.next_read += 1;
        }
        // Chunks whose placement came: send, in index order.
        for index in self.chunks.to_send() {
            self.send(index);
        }
        // Chunks that need a placement: one allocation at a time, for all of them.
        if !self.allocating {
            let needing = self.chunks.to_allocate(self.config.allocate_batch_chunks.max(1));
            if !needing.is_empty() {
                let mut exclude: BTreeSet<u64> = self.failed_nodes.keys().copied().collect();
                for &i in &needing {
                    let holders = self.chunks.update(i, |a| {
                        a.phase = Phase::Allocating;
                        a.holders.clone()
                    });
                    exclude.extend(holders.unwrap_or_default());
                }
                self.allocating = true;
                self.actions.push_back(Action::Allocate { indexes: needing, exclude: exclude.into_iter().collect() });
            }
        }
        // Records while the upload runs, in full batches only: the rest goes with the commit.
        if !self.recording && self.unrecorded.len() >= self.config.record_batch_chunks.max(1) {
            let chunks: Vec<StoredChunk> = self.unrecorded.drain(..self.config.record_batch_chunks.max(1)).collect();
            self.recording = true;
            self.actions.push_back(Action::Record { chunks });
        }
        if self.chunks.all_stored() && !self.reading && !self.recording {
            self.stage = Stage::FinishingSource;
            self.actions.push_back(Action::FinishSource);
        }
    }

    fn fail(&mut self, error: UploadError) {
        self.stage = Stage::Finished;
        // Whatever the driver still holds is of no use now. (The chunks keep their states:
        // nothing looks at them once finished, and this runs once.)
        for index in self.chunks.active() {
            self.actions.push_back(Action::Release { index });
        }
        self.actions.push_back(Action::Failed(error));
    }

    /// Recomputes the indexes by a scan of every chunk and panics if they differ from those
    /// kept: the tests call it after every step.
    #[cfg(test)]
    fn check_indexes(&self) {
        self.chunks.check();
    }
}

impl ActiveChunk {
    fn new() -> Self {
        ActiveChunk {
            sha256: None,
            chain: None,
            placement: None,
            holders: BTreeSet::new(),
            attempt: 0,
            phase: Phase::Reading,
            last_error: String::from("no attempt made"),
            resumed: None,
        }
    }

    fn resumed(stored: StoredChunk) -> Self {
        ActiveChunk { resumed: Some(stored), ..ActiveChunk::new() }
    }
}

/// The chunks' states and the indexes over them, in a module of their own so that nothing
/// changes a state without its indexes: [`Chunks::set`] and [`Chunks::update`] are the only
/// ways in.
mod chunks {
    use std::collections::BTreeSet;

    use super::{ActiveChunk, Chunk, Phase};
    use crate::env::Timestamp;

    pub(super) struct Chunks {
        states: Vec<Chunk>,
        index: Indexes,
        /// Chunk states looked at or changed, and index entries listed: the work done, which
        /// the tests bound.
        #[cfg(test)]
        visits: std::cell::Cell<u64>,
    }

    /// What the per-event paths would otherwise find by a scan of every chunk.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Indexes {
        /// Active chunks.
        active: BTreeSet<u32>,
        /// How many chunks are stored.
        stored: usize,
        /// Read and placed: to send.
        to_send: BTreeSet<u32>,
        /// Read, not placed: to allocate.
        to_allocate: BTreeSet<u32>,
        /// In the allocation in flight.
        allocating: BTreeSet<u32>,
        /// Backing off after a failed attempt, by the time the backoff ends.
        retries: BTreeSet<(Timestamp, u32)>,
    }

    /// The queue of the indexes an active chunk stands in, if any.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Queue {
        ToSend,
        ToAllocate,
        Allocating,
        Retry(Timestamp),
    }

    fn queue(a: &ActiveChunk) -> Option<Queue> {
        match a.phase {
            Phase::NeedsPlacement if a.sha256.is_some() => Some(if a.placement.is_some() { Queue::ToSend } else { Queue::ToAllocate }),
            Phase::Allocating => Some(Queue::Allocating),
            Phase::Waiting(at) => Some(Queue::Retry(at)),
            Phase::Reading | Phase::NeedsPlacement | Phase::Sending => None,
        }
    }

    /// Adds `item` to `set` (where it must not be yet) or takes it out (where it must be).
    fn toggle<T: Ord>(set: &mut BTreeSet<T>, item: T, add: bool) {
        let changed = if add { set.insert(item) } else { set.remove(&item) };
        debug_assert!(changed, "an upload index drifted from the chunk states");
    }

    impl Indexes {
        /// Files chunk `index` in state `chunk` (`add`), or takes it out.
        fn file(&mut self, index: u32, chunk: &Chunk, add: bool) {
            match chunk {
                Chunk::Unread => {}
                Chunk::Stored if add => self.stored += 1,
                Chunk::Stored => self.stored -= 1,
                Chunk::Active(a) => {
                    toggle(&mut self.active, index, add);
                    self.file_queue(index, queue(a), add);
                }
            }
        }

        fn file_queue(&mut self, index: u32, queue: Option<Queue>, add: bool) {
            match queue {
                None => {}
                Some(Queue::ToSend) => toggle(&mut self.to_send, index, add),
                Some(Queue::ToAllocate) => toggle(&mut self.to_allocate, index, add),
                Some(Queue::Allocating) => toggle(&mut self.allocating, index, add),
                Some(Queue::Retry(at)) => toggle(&mut self.retries, (at, index), add),
            }
        }
    }

    impl Chunks {
        /// `count` chunks, none read.
        pub(super) fn new(count: usize) -> Self {
            Chunks {
                states: vec![Chunk::Unread; count],
                index: Indexes::default(),
                #[cfg(test)]
                visits: std::cell::Cell::new(0),
            }
        }

        /// Counts `n` chunk states or index entries looked at (in tests; nothing otherwise).
        fn visit(&self, n: usize) {
            #[cfg(test)]
            self.visits.set(self.visits.get() + n as u64);
            let _ = n;
        }

        pub(super) fn len(&self) -> usize {
            self.states.len()
        }

        pub(super) fn get(&self, index: u32) -> Option<&Chunk> {
            self.visit(1);
            self.states.get(index as usize)
        }

        /// Puts chunk `index` in state `chunk` (unread, active, stored), and files it so.
        pub(super) fn set(&mut self, index: u32, chunk: Chunk) {
            self.visit(1);
            let slot = &mut self.states[index as usize];
            self.index.file(index, slot, false);
            self.index.file(index, &chunk, true);
            *slot = chunk;
        }

        /// Changes active chunk `index` by `f`, and files it anew; `None` if it is not active.
        pub(super) fn update<R>(&mut self, index: u32, f: impl FnOnce(&mut ActiveChunk) -> R) -> Option<R> {
            self.visit(1);
            let Some(Chunk::Active(a)) = self.states.get_mut(index as usize) else { return None };
            let before = queue(a);
            let out = f(a);
            let after = queue(a);
            if before != after {
                self.index.file_queue(index, before, false);
                self.index.file_queue(index, after, true);
            }
            Some(out)
        }

        pub(super) fn all_stored(&self) -> bool {
            self.index.stored == self.states.len()
        }

        pub(super) fn active_len(&self) -> usize {
            self.index.active.len()
        }

        /// The active chunks, in index order.
        pub(super) fn active(&self) -> impl Iterator<Item = u32> + '_ {
            self.index.active.iter().inspect(|_| self.visit(1)).copied()
        }

        /// The chunks read and placed, in index order.
        pub(super) fn to_send(&self) -> Vec<u32> {
            self.listed(self.index.to_send.iter().copied().collect())
        }

        /// The first `max` chunks read and not placed, in index order.
        pub(super) fn to_allocate(&self, max: usize) -> Vec<u32> {
            self.listed(self.index.to_allocate.iter().copied().take(max).collect())
        }

        /// The chunks in the allocation in flight, in index order.
        pub(super) fn allocating(&self) -> Vec<u32> {
            self.listed(self.index.allocating.iter().copied().collect())
        }

        /// When the first backoff ends.
        pub(super) fn next_retry(&self) -> Option<Timestamp> {
            self.index.retries.first().map(|&(at, _)| at)
        }

        /// The chunks whose backoff has ended by `now`.
        pub(super) fn retries_due(&self, now: Timestamp) -> Vec<u32> {
            self.listed(self.index.retries.iter().take_while(|&&(at, _)| at <= now).map(|&(_, index)| index).collect())
        }

        fn listed(&self, list: Vec<u32>) -> Vec<u32> {
            self.visit(list.len());
            list
        }

        /// Panics unless the indexes are what a scan of every chunk makes of them.
        #[cfg(test)]
        pub(super) fn check(&self) {
            let mut scanned = Indexes::default();
            for (index, chunk) in self.states.iter().enumerate() {
                scanned.file(index as u32, chunk, true);
            }
            assert_eq!(self.index, scanned, "the upload's indexes drifted from its chunk states");
        }

        #[cfg(test)]
        pub(super) fn visits(&self) -> u64 {
            self.visits.get()
        }
    }
}

#[cfg(test)]
mod tests;
