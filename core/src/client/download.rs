//! The download of one file, as a pure state machine: which replica to ask next, what to
//! write where, when to give up. Driven like `Upload` (see its module doc for the run loop).
//!
//! ## What it promises
//! - Chunks are fetched up to `chunks_in_flight_max` at once but written strictly in order,
//!   one write at a time: the driver hashes the file as it writes (one pass), and a reader of
//!   the output (stdout) sees a prefix of the file, never a hole.
//! - A chunk's bytes are written only once their SHA-256 matched the recorded one. A replica
//!   that returned other bytes is reported (`ReportBad`) and not asked again for that chunk.
//! - Replicas are tried in metadata's order; after every replica of a chunk failed, the whole
//!   list is tried again after a backoff, `rounds_max` times in all.
//! - The whole-file SHA-256, when metadata has one, is checked before the output is made
//!   final (`Finish`); a mismatch fails the download and nothing is renamed into place. When
//!   the chunks' own checks already prove it (one chunk whose SHA-256 is the file's, or a
//!   whole chain whose last checksum is the file's: see `crate::chain`), the driver makes no
//!   second pass (`needs_file_pass`); otherwise (files of earlier versions) it hashes what it
//!   writes.
//!
//! ## What it does not do
//! No I/O and no hashing of bytes: the driver fetches, hashes and writes, keeping each
//! chunk's bytes until `Write` or `Discard`.

use std::collections::VecDeque;
use std::time::Duration;

use crate::chain::Chain;
use crate::env::{LocalError, Timestamp};
use crate::ids::Sha256Digest;
use crate::proto;
use crate::rpc::RpcError;

#[derive(Clone, Debug)]
pub struct DownloadConfig {
    /// Chunks fetched but not yet written, at most.
    pub chunks_in_flight_max: usize,
    /// Passes over a chunk's replicas before giving up.
    pub rounds_max: u32,
    /// Wait before the second pass; doubles per pass.
    pub round_backoff: Duration,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig { chunks_in_flight_max: 4, rounds_max: 3, round_backoff: Duration::from_millis(500) }
    }
}

#[derive(Clone, Debug)]
pub enum Event {
    /// A replica answered with `len` bytes whose checksum, computed as `chain(index)` says, is
    /// `sha256`.
    Fetched {
        index: u32,
        attempt: u32,
        len: u64,
        sha256: Sha256Digest,
    },
    /// A replica did not answer with the chunk.
    FetchFailed {
        index: u32,
        attempt: u32,
        error: RpcError,
    },
    /// The bytes of chunk `index` are written.
    Written {
        index: u32,
    },
    WriteFailed {
        error: LocalError,
    },
    /// The driver finished hashing what it wrote.
    FileHashed {
        sha256: Sha256Digest,
    },
    /// The output is final (synced and renamed, or flushed).
    Finished,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Fetch the chunk from `from`; keep the bytes until `Write` or `Discard`.
    Fetch {
        index: u32,
        attempt: u32,
        chunk_id: bytes::Bytes,
        /// The chunk's access token, as its location came with it.
        token: Option<proto::ChunkToken>,
        from: proto::StorageNode,
    },
    /// Drop the bytes fetched for `index` (they did not match).
    Discard {
        index: u32,
    },
    /// Write the bytes of `index` at `offset` of the output, then drop them.
    Write {
        index: u32,
        offset: u64,
    },
    /// Tell metadata this replica holds bad bytes.
    ReportBad {
        chunk_id: bytes::Bytes,
        node: proto::StorageNode,
        reason: String,
    },
    /// Finish hashing the output.
    HashFile,
    /// Make the output final.
    Finish,
    Progress {
        bytes: u64,
    },
    Done,
    Failed(DownloadError),
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DownloadError {
    /// The peer's side: metadata's chunk list does not add up to the file.
    #[error("metadata's chunk list does not add up to the file: {0}")]
    BadChunkList(String),
    /// The world's side: no replica served good bytes (down, unreachable, or all bad).
    #[error("chunk {index}: no replica served it: {errors}")]
    ChunkUnavailable { index: u32, errors: String },
    /// The downloaded bytes, each chunk verified, do not hash to the file's recorded SHA-256.
    #[error("the file's SHA-256 does not match what was recorded at upload (expected {expected}, got {got})")]
    FileChecksumMismatch { expected: Sha256Digest, got: Sha256Digest },
    /// The caller's side: the output could not be written.
    #[error("writing the output: {0}")]
    Output(LocalError),
}

#[derive(Clone, Debug)]
struct ChunkState {
    location: proto::ChunkLocation,
    expected: Sha256Digest,
    chain: Option<Chain>,
    offset: u64,
    /// Index into `location.replicas` of the replica being (or to be) asked.
    next_replica: usize,
    /// Fetches started (across replicas and rounds).
    attempt: u32,
    round: u32,
    /// Replicas found bad: skipped in later rounds.
    bad: Vec<u64>,
    errors: Vec<String>,
    phase: Phase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Fetching,
    Waiting(Timestamp),
    /// Good bytes held, waiting for their turn to be written.
    Fetched,
    Writing,
    Written,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Transferring,
    Hashing,
    Finishing,
    Finished,
}

pub struct Download {
    config: DownloadConfig,
    file_sha256: Option<Sha256Digest>,
    /// The chunks' checks prove the file's SHA-256: no pass over the output is needed.
    proven_by_chunks: bool,
    chunks: Vec<ChunkState>,
    /// The lowest chunk not written yet: the window starts here.
    next_write: usize,
    writing: bool,
    stage: Stage,
    actions: VecDeque<Action>,
}

/// Errors kept per chunk for the final message, at most.
const CHUNK_ERRORS_MAX: usize = 8;

impl Download {
    /// Checks that `chunks` tile a file of `info.size`: indexes from 0 with no gap, each of
    /// 1 to `info.chunk_size` bytes, summing to the size. A file `put` wrote has full chunks
    /// but its last; a joined copy (S3's multipart objects) has chunks of any size, each at
    /// the sum of the sizes before it.
    pub fn new(info: &proto::FileInfo, mut chunks: Vec<proto::ChunkLocation>, config: DownloadConfig) -> Result<Self, DownloadError> {
        chunks.sort_by_key(|c| c.index);
        let expected_count = chunks.len() as u64;
        if expected_count > info.size || (info.size > 0 && expected_count == 0) {
            return Err(DownloadError::BadChunkList(format!("{expected_count} chunks listed for {} bytes", info.size)));
        }
        let mut states: Vec<ChunkState> = Vec::with_capacity(chunks.len());
        let mut offset = 0u64;
        for (i, c) in chunks.into_iter().enumerate() {
            if c.index as usize != i || c.size == 0 || c.size > info.chunk_size.max(1) {
                return Err(DownloadError::BadChunkList(format!("chunk {} has {} bytes at position {i}", c.index, c.size)));
            }
            let expected = Sha256Digest::from_slice(&c.sha256).ok_or_else(|| DownloadError::BadChunkList(format!("chunk {}: no SHA-256", c.index)))?;
            let chain = Chain::from_proto_opt(c.chain.as_ref()).map_err(|e| DownloadError::BadChunkList(format!("chunk {}: {e}", c.index)))?;
            if let Some(chain) = chain {
                // Checked here, not taken on trust: the chain must run from SHA-256's initial
                // state through every chunk before this one, so that the last chunk's check
                // proves the whole file.
                let before = match states.last() {
                    None => Some(Chain::initial()),
                    Some(p) => p.chain.filter(|pc: &Chain| !pc.last).map(|_| p.expected),
                };
                let fits = before == Some(chain.before) && chain.offset == offset && chain.last == (i as u64 + 1 == expected_count);
                if !fits {
                    return Err(DownloadError::BadChunkList(format!("chunk {}: its checksum's chain does not follow from the chunks before it", c.index)));
                }
            }
            let size = c.size;
            states.push(ChunkState {
                offset,
                expected,
                chain,
                location: c,
                next_replica: 0,
                attempt: 0,
                round: 1,
                bad: Vec::new(),
                errors: Vec::new(),
                phase: Phase::Idle,
            });
            offset += size;
        }
        if offset != info.size {
            return Err(DownloadError::BadChunkList(format!("the chunks hold {offset} bytes of {}", info.size)));
        }
        let file_sha256 = Sha256Digest::from_slice(&info.sha256);
        let proven_by_chunks = match (file_sha256, states.as_slice()) {
            (None, _) => true,
            (Some(f), []) => f == Sha256Digest::of(&[]),
            // One chunk: its own SHA-256 (standalone, or chained from the initial state) is
            // the file's.
            (Some(f), [only]) => only.expected == f,
            // Chained all along (checked above), the last checksum the file's SHA-256.
            (Some(f), [.., last]) => last.chain.is_some_and(|c| c.last) && last.expected == f,
        };
        let mut d = Download {
            config,
            file_sha256,
            proven_by_chunks,
            chunks: states,
            next_write: 0,
            writing: false,
            stage: Stage::Transferring,
            actions: VecDeque::new(),
        };
        d.advance();
        Ok(d)
    }

    pub fn is_finished(&self) -> bool {
        self.stage == Stage::Finished
    }

    /// How chunk `index`'s checksum was computed: the driver hashes fetched bytes this way.
    pub fn chain(&self, index: u32) -> Option<Chain> {
        self.chunks.get(index as usize).and_then(|c| c.chain)
    }

    /// Whether the driver must hash the output as it writes it: the file's SHA-256 is known and
    /// the chunks' checks do not already prove it. Fixed from the start.
    pub fn needs_file_pass(&self) -> bool {
        !self.proven_by_chunks
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.chunks
            .iter()
            .filter_map(|c| match c.phase {
                Phase::Waiting(at) => Some(at),
                _ => None,
            })
            .min()
    }

    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.stage != Stage::Transferring {
            return;
        }
        for c in &mut self.chunks {
            if matches!(c.phase, Phase::Waiting(at) if at <= now) {
                c.phase = Phase::Idle;
            }
        }
        self.advance();
    }

    pub fn handle(&mut self, event: Event, now: Timestamp) {
        if self.stage == Stage::Finished {
            return;
        }
        match event {
            Event::Fetched { index, attempt, len, sha256 } => {
                let Some(c) = self.fetching(index, attempt) else { return };
                let replica = c.location.replicas[c.next_replica].clone();
                if len == c.location.size && sha256 == c.expected {
                    c.phase = Phase::Fetched;
                } else {
                    let reason = format!("returned {len} bytes with SHA-256 {sha256}, expected {} bytes with {}", c.location.size, c.expected);
                    c.bad.push(replica.id);
                    push_error(&mut c.errors, format!("{}: bad bytes", replica.addr));
                    let chunk_id = c.location.chunk_id.clone();
                    self.actions.push_back(Action::Discard { index });
                    self.actions.push_back(Action::ReportBad { chunk_id, node: replica, reason });
                    self.next_replica(index as usize, now);
                }
            }
            Event::FetchFailed { index, attempt, error } => {
                let Some(c) = self.fetching(index, attempt) else { return };
                let replica = &c.location.replicas[c.next_replica];
                // A replica that answers "checksum mismatch" found its own copy bad and has
                // reported it itself.
                if matches!(error, RpcError::ChecksumMismatch(_)) {
                    let id = replica.id;
                    c.bad.push(id);
                }
                let message = format!("{}: {error}", replica.addr);
                push_error(&mut c.errors, message);
                self.next_replica(index as usize, now);
            }
            Event::Written { index } => {
                let Some(c) = self.chunks.get_mut(index as usize) else { return };
                if c.phase != Phase::Writing {
                    return;
                }
                c.phase = Phase::Written;
                let bytes = c.location.size;
                self.writing = false;
                self.next_write += 1;
                self.actions.push_back(Action::Progress { bytes });
            }
            Event::WriteFailed { error } => return self.fail(DownloadError::Output(error)),
            Event::FileHashed { sha256 } => {
                if self.stage != Stage::Hashing {
                    return;
                }
                if let Some(expected) = self.file_sha256 {
                    if expected != sha256 {
                        return self.fail(DownloadError::FileChecksumMismatch { expected, got: sha256 });
                    }
                }
                self.stage = Stage::Finishing;
                self.actions.push_back(Action::Finish);
                return;
            }
            Event::Finished => {
                if self.stage == Stage::Finishing {
                    self.stage = Stage::Finished;
                    self.actions.push_back(Action::Done);
                }
                return;
            }
        }
        self.advance();
    }

    fn fetching(&mut self, index: u32, attempt: u32) -> Option<&mut ChunkState> {
        self.chunks.get_mut(index as usize).filter(|c| c.phase == Phase::Fetching && c.attempt == attempt)
    }

    /// The replica asked failed: move to the next one, or the next round, or give up.
    fn next_replica(&mut self, i: usize, now: Timestamp) {
        let rounds_max = self.config.rounds_max.max(1);
        let backoff = self.config.round_backoff;
        let c = &mut self.chunks[i];
        c.phase = Phase::Idle;
        c.next_replica += 1;
        let usable = c.location.replicas.iter().any(|r| !c.bad.contains(&r.id));
        if c.next_replica >= c.location.replicas.len() {
            if c.round >= rounds_max || !usable {
                let errors = if c.errors.is_empty() { "no replica recorded".to_string() } else { c.errors.join("; ") };
                let index = c.location.index;
                return self.fail(DownloadError::ChunkUnavailable { index, errors });
            }
            c.next_replica = 0;
            c.round += 1;
            c.phase = Phase::Waiting(now.plus(backoff.saturating_mul(1 << (c.round - 2).min(8))));
        }
    }

    fn advance(&mut self) {
        if self.stage != Stage::Transferring {
            return;
        }
        let window_end = (self.next_write + self.config.chunks_in_flight_max.max(1)).min(self.chunks.len());
        for i in self.next_write..window_end {
            let c = &mut self.chunks[i];
            if c.phase != Phase::Idle {
                continue;
            }
            // Skip replicas already found bad for this chunk.
            while c.next_replica < c.location.replicas.len() && c.bad.contains(&c.location.replicas[c.next_replica].id) {
                c.next_replica += 1;
            }
            let Some(from) = c.location.replicas.get(c.next_replica).cloned() else {
                // Every replica left is known bad (or none is recorded): no later round can
                // do better.
                let errors = if c.errors.is_empty() { "no replica recorded".to_string() } else { c.errors.join("; ") };
                let index = c.location.index;
                return self.fail(DownloadError::ChunkUnavailable { index, errors });
            };
            c.attempt += 1;
            c.phase = Phase::Fetching;
            self.actions.push_back(Action::Fetch {
                index: i as u32,
                attempt: c.attempt,
                chunk_id: c.location.chunk_id.clone(),
                token: c.location.token.clone(),
                from,
            });
        }
        if !self.writing {
            if let Some(c) = self.chunks.get_mut(self.next_write) {
                if c.phase == Phase::Fetched {
                    c.phase = Phase::Writing;
                    self.writing = true;
                    self.actions.push_back(Action::Write { index: self.next_write as u32, offset: c.offset });
                }
            }
        }
        if self.next_write == self.chunks.len() {
            if self.proven_by_chunks {
                self.stage = Stage::Finishing;
                self.actions.push_back(Action::Finish);
            } else {
                self.stage = Stage::Hashing;
                self.actions.push_back(Action::HashFile);
            }
        }
    }

    fn fail(&mut self, error: DownloadError) {
        self.stage = Stage::Finished;
        for (i, c) in self.chunks.iter().enumerate() {
            if matches!(c.phase, Phase::Fetched) {
                self.actions.push_back(Action::Discard { index: i as u32 });
            }
        }
        self.actions.push_back(Action::Failed(error));
    }
}

fn push_error(errors: &mut Vec<String>, e: String) {
    if errors.len() < CHUNK_ERRORS_MAX {
        errors.push(e);
    }
}

#[cfg(test)]
mod tests;
