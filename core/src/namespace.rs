//! The replicated metadata state machine: files, their chunks and where the replicas live, the
//! storage nodes, and the replicas waiting to be deleted.
//!
//! `apply(command)` is pure and deterministic: every metadata node applies the same Raft log
//! and ends in the same state. It never panics on bad input; a command that does not fit the
//! state is refused with a `NamespaceError` and changes nothing. Times are carried inside the
//! commands (chosen by the leader), never read here.
//!
//! An upload goes through three commands: `CreateFile` reserves a file id, `RecordChunks`
//! (any number of times, idempotent) says which nodes hold verified copies of which chunks, and
//! `CommitFile` checks that every chunk is there and makes the file visible at its path,
//! atomically replacing an older file if asked to. Until then readers see the old state.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::chunking;
use crate::ids::{ChunkId, FileId, Sha256Digest, StorageNodeId};

/// Longest path accepted, in bytes.
pub const PATH_MAX_BYTES: usize = 4096;
/// Longest path component accepted, in bytes.
pub const NAME_MAX_BYTES: usize = 255;
/// Highest replication factor accepted.
pub const REPLICATION_MAX: u32 = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub index: u32,
    pub size: u64,
    pub sha256: Sha256Digest,
    /// Nodes holding a verified copy, in the order the client reported them.
    pub replicas: Vec<StorageNodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: String,
    pub id: FileId,
    pub size: u64,
    pub chunk_size: u64,
    pub replication: u32,
    pub committed_unix_ms: u64,
    pub chunks: Vec<ChunkRecord>,
}

impl FileRecord {
    pub fn chunk_id(&self, index: u32) -> ChunkId {
        ChunkId::derive(self.id, index)
    }
}

/// An upload that has not been committed yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    pub id: FileId,
    pub path: String,
    pub size: u64,
    pub chunk_size: u64,
    pub replication: u32,
    pub overwrite: bool,
    pub created_unix_ms: u64,
    pub chunks: BTreeMap<u32, ChunkRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageNodeRecord {
    pub id: StorageNodeId,
    pub addr: String,
    pub capacity_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A storage node announces itself (again, after a restart or an address change).
    RegisterStorageNode { node: StorageNodeId, addr: String, capacity_bytes: u64 },
    CreateFile { path: String, size: u64, chunk_size: u64, replication: u32, overwrite: bool, unix_ms: u64 },
    RecordChunks { file: FileId, chunks: Vec<ChunkRecord> },
    CommitFile { file: FileId, unix_ms: u64 },
    DeleteFile { path: String },
    /// A storage node deleted these replicas on request: stop asking.
    ForgetDeletedReplicas { node: StorageNodeId, chunks: Vec<ChunkId> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    FileCreated(FileId),
    FileCommitted(FileSummary),
    FileDeleted(FileSummary),
}

/// A file without its chunk list: what listings and replies carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSummary {
    pub path: String,
    pub id: FileId,
    pub size: u64,
    pub chunk_size: u64,
    pub replication: u32,
    pub chunk_count: u64,
    pub committed_unix_ms: u64,
}

impl From<&FileRecord> for FileSummary {
    fn from(f: &FileRecord) -> Self {
        FileSummary {
            path: f.path.clone(),
            id: f.id,
            size: f.size,
            chunk_size: f.chunk_size,
            replication: f.replication,
            chunk_count: f.chunks.len() as u64,
            committed_unix_ms: f.committed_unix_ms,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NamespaceError {
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}: no such file")]
    NotFound(String),
    #[error("{path}: {conflict} is a file, so {path} cannot be created")]
    ParentIsFile { path: String, conflict: String },
    #[error("{0} is a directory (it has files under it)")]
    IsDirectory(String),
    #[error("upload {0} not found (never created, already committed elsewhere, or deleted)")]
    UploadNotFound(FileId),
    #[error("invalid upload: {0}")]
    InvalidUpload(String),
    #[error("chunk {index} of upload {file}: {reason}")]
    BadChunk { file: FileId, index: u32, reason: String },
    #[error("upload {file} is incomplete: {missing} of {total} chunks not recorded")]
    Incomplete { file: FileId, missing: u64, total: u64 },
}

pub type ApplyResult = Result<Outcome, NamespaceError>;

/// The whole replicated state. Serialized as a unit for Raft snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    files: BTreeMap<String, FileRecord>,
    /// Committed file id → path, so a retried commit finds what it already did.
    paths_by_id: BTreeMap<FileId, String>,
    uploads: BTreeMap<FileId, Upload>,
    storage_nodes: BTreeMap<StorageNodeId, StorageNodeRecord>,
    /// Replicas to delete, per node, until the node confirms.
    garbage: BTreeMap<StorageNodeId, BTreeSet<ChunkId>>,
    next_file_id: u64,
}

impl Namespace {
    pub fn apply(&mut self, command: Command) -> ApplyResult {
        match command {
            Command::RegisterStorageNode { node, addr, capacity_bytes } => {
                self.storage_nodes.insert(node, StorageNodeRecord { id: node, addr, capacity_bytes });
                Ok(Outcome::Done)
            }
            Command::CreateFile { path, size, chunk_size, replication, overwrite, unix_ms } => {
                let path = normalize_path(&path)?;
                chunking::validate(size, chunk_size).map_err(|e| NamespaceError::InvalidUpload(e.to_string()))?;
                if !(1..=REPLICATION_MAX).contains(&replication) {
                    return Err(NamespaceError::InvalidUpload(format!(
                        "replication factor {replication} is outside 1..={REPLICATION_MAX}"
                    )));
                }
                self.check_path_free(&path, overwrite)?;
                self.next_file_id += 1;
                let id = FileId(self.next_file_id);
                self.uploads.insert(
                    id,
                    Upload { id, path, size, chunk_size, replication, overwrite, created_unix_ms: unix_ms, chunks: BTreeMap::new() },
                );
                Ok(Outcome::FileCreated(id))
            }
            Command::RecordChunks { file, chunks } => {
                let upload = self.uploads.get(&file).ok_or(NamespaceError::UploadNotFound(file))?;
                // Check all before changing anything: a refused command changes nothing.
                for c in &chunks {
                    let bad = |reason: String| NamespaceError::BadChunk { file, index: c.index, reason };
                    let expected = chunking::chunk_len(upload.size, upload.chunk_size, c.index)
                        .ok_or_else(|| bad(format!("the file has only {} chunks", chunking::chunk_count(upload.size, upload.chunk_size))))?;
                    if c.size != expected {
                        return Err(bad(format!("size {} but expected {expected}", c.size)));
                    }
                    if c.replicas.is_empty() {
                        return Err(bad("no replicas".into()));
                    }
                    if c.replicas.iter().collect::<BTreeSet<_>>().len() != c.replicas.len() {
                        return Err(bad("a replica is listed twice".into()));
                    }
                    if let Some(unknown) = c.replicas.iter().find(|r| !self.storage_nodes.contains_key(r)) {
                        return Err(bad(format!("unknown storage node {unknown}")));
                    }
                }
                let upload = self.uploads.get_mut(&file).expect("checked above");
                for c in chunks {
                    upload.chunks.insert(c.index, c);
                }
                Ok(Outcome::Done)
            }
            Command::CommitFile { file, unix_ms } => {
                let Some(upload) = self.uploads.get(&file) else {
                    // A retried commit whose first attempt went through.
                    if let Some(f) = self.paths_by_id.get(&file).and_then(|p| self.files.get(p)) {
                        return Ok(Outcome::FileCommitted(f.into()));
                    }
                    return Err(NamespaceError::UploadNotFound(file));
                };
                let total = chunking::chunk_count(upload.size, upload.chunk_size);
                let missing = total - upload.chunks.len() as u64;
                if missing > 0 {
                    return Err(NamespaceError::Incomplete { file, missing, total });
                }
                self.check_path_free(&upload.path, upload.overwrite)?;
                let upload = self.uploads.remove(&file).expect("checked above");
                let record = FileRecord {
                    path: upload.path,
                    id: upload.id,
                    size: upload.size,
                    chunk_size: upload.chunk_size,
                    replication: upload.replication,
                    committed_unix_ms: unix_ms,
                    chunks: upload.chunks.into_values().collect(),
                };
                let summary = FileSummary::from(&record);
                if let Some(old) = self.files.insert(record.path.clone(), record) {
                    self.discard(old);
                }
                self.paths_by_id.insert(file, summary.path.clone());
                Ok(Outcome::FileCommitted(summary))
            }
            Command::DeleteFile { path } => {
                let path = normalize_path(&path)?;
                let old = self.files.remove(&path).ok_or_else(|| NamespaceError::NotFound(path.clone()))?;
                let summary = FileSummary::from(&old);
                self.discard(old);
                Ok(Outcome::FileDeleted(summary))
            }
            Command::ForgetDeletedReplicas { node, chunks } => {
                if let Some(pending) = self.garbage.get_mut(&node) {
                    for c in &chunks {
                        pending.remove(c);
                    }
                    if pending.is_empty() {
                        self.garbage.remove(&node);
                    }
                }
                Ok(Outcome::Done)
            }
        }
    }

    /// A file leaves the namespace: its replicas become garbage on their nodes.
    fn discard(&mut self, file: FileRecord) {
        self.paths_by_id.remove(&file.id);
        for c in &file.chunks {
            let id = file.chunk_id(c.index);
            for node in &c.replicas {
                self.garbage.entry(*node).or_default().insert(id);
            }
        }
    }

    /// The path can hold a new file: no file there (unless replacing), no file above it, no
    /// files below it.
    fn check_path_free(&self, path: &str, overwrite: bool) -> Result<(), NamespaceError> {
        if self.files.contains_key(path) && !overwrite {
            return Err(NamespaceError::AlreadyExists(path.to_string()));
        }
        for (i, _) in path.match_indices('/').skip(1) {
            let ancestor = &path[..i];
            if self.files.contains_key(ancestor) {
                return Err(NamespaceError::ParentIsFile { path: path.to_string(), conflict: ancestor.to_string() });
            }
        }
        let dir = format!("{path}/");
        if self.files.range(dir.clone()..).next().is_some_and(|(p, _)| p.starts_with(&dir)) {
            return Err(NamespaceError::IsDirectory(path.to_string()));
        }
        Ok(())
    }

    // ---- reads -------------------------------------------------------------------------

    pub fn file(&self, path: &str) -> Option<&FileRecord> {
        self.files.get(path)
    }

    pub fn upload(&self, file: FileId) -> Option<&Upload> {
        self.uploads.get(&file)
    }

    /// Files at `dir` or below it, in path order, after `start_after`, at most `limit`.
    /// Returns whether more remain. `dir` may also name a single file.
    pub fn list(&self, dir: &str, start_after: &str, limit: usize) -> (Vec<&FileRecord>, bool) {
        use std::ops::Bound;
        let dir = dir.trim_end_matches('/');
        if let Some(file) = self.files.get(dir) {
            // A file has nothing below it (see check_path_free).
            let page = if start_after < dir { vec![file] } else { vec![] };
            return (page, false);
        }
        let under = format!("{dir}/");
        let from = if start_after >= under.as_str() { Bound::Excluded(start_after) } else { Bound::Included(under.as_str()) };
        let mut matching = self
            .files
            .range::<str, _>((from, Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(&under))
            .map(|(_, f)| f);
        let page: Vec<_> = matching.by_ref().take(limit).collect();
        let more = matching.next().is_some();
        (page, more)
    }

    pub fn storage_node(&self, id: StorageNodeId) -> Option<&StorageNodeRecord> {
        self.storage_nodes.get(&id)
    }

    pub fn storage_nodes(&self) -> impl Iterator<Item = &StorageNodeRecord> {
        self.storage_nodes.values()
    }

    /// Replicas `node` should delete, at most `limit`.
    pub fn garbage_for(&self, node: StorageNodeId, limit: usize) -> Vec<ChunkId> {
        self.garbage.get(&node).map(|g| g.iter().take(limit).copied().collect()).unwrap_or_default()
    }

    pub fn file_count(&self) -> u64 {
        self.files.len() as u64
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }

    pub fn files(&self) -> impl Iterator<Item = &FileRecord> {
        self.files.values()
    }
}

/// The canonical form of a user's path: absolute, `/`-separated, no empty, `.` or `..`
/// components, no trailing slash. `//a/b/` becomes `/a/b`; `a/b` becomes `/a/b`.
pub fn normalize_path(path: &str) -> Result<String, NamespaceError> {
    let invalid = |reason: &str| NamespaceError::InvalidPath { path: path.to_string(), reason: reason.to_string() };
    if path.len() > PATH_MAX_BYTES {
        return Err(invalid("longer than 4096 bytes"));
    }
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let mut out = String::with_capacity(path.len() + 1);
    for component in path.split('/').filter(|c| !c.is_empty()) {
        if component == "." || component == ".." {
            return Err(invalid("'.' and '..' are not allowed"));
        }
        if component.len() > NAME_MAX_BYTES {
            return Err(invalid("a component is longer than 255 bytes"));
        }
        out.push('/');
        out.push_str(component);
    }
    if out.is_empty() {
        return Err(invalid("names no file"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
