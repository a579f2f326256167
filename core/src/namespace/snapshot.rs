//! The namespace's binary snapshot form (version 2): the files and directories, which are
//! nearly all of a large namespace, in a compact layout read in one pass; the rest as JSON.
//!
//! Why not JSON for all of it, as version 1 did: at ten million files, loading JSON took
//! 33-38 s, most of it spent parsing each SHA-256 as a list of 32 numbers, and writing it held
//! the state's lock for about 28 s. Here a digest is 32 raw bytes and a path is the bytes it
//! does not share with the previous one (paths come sorted, and neighbours share their
//! directory), so the form is smaller as well as faster both ways. DESIGN.md gives the figures.
//!
//! Layout. Integers are LEB128 varints unless said otherwise; `bytes` is a varint length then
//! that many bytes; a path is prefix-coded: how many bytes it shares with the previous path of
//! the same list, then the rest as `bytes`.
//!
//! ```text
//! version      u8 = 2
//! rest         bytes: JSON of every field but the files and directories (`RestRef`)
//! dirs         count, then each directory in path order: path, modified_unix_ms
//! files        count, then each file in path order:
//!                path, id, size, chunk_size, replication, committed_unix_ms,
//!                flags (u8, `FLAG_*`), [sha256: 32 bytes], [mode], [mtime_unix_ms],
//!                chunk count, chunks, [shared: count, then (index, chunk id: 16 bytes) each],
//!                [object: bytes, JSON of the S3 gateway's `ObjectMeta`]
//! chunk        index, size, sum (u8: 0 standalone, 1 chained, 2 chained and last),
//!              sha256 (32 bytes), replica count, replica node ids
//! ```
//!
//! Left out because they are derived: the id index (`paths_by_id`), each directory's
//! subdirectories, and a file's SHA-256 when it equals its last chunk's checksum (a file of
//! one chunk, or a chained upload: `crate::chain`), which is the usual case.
//!
//! Decoding trusts nothing beyond the caller's checksum of the whole: no length is allocated
//! ahead of the bytes that would back it, and every malformed input is an error, never a panic.

use std::collections::{BTreeMap, BTreeSet};

use arcstr::ArcStr;
use integer_encoding::VarInt;
use serde::{Deserialize, Serialize};

use super::map_as_pairs::Pairs;

use super::{parent_of, ChunkRecord, DirRecord, FileAttrs, FileRecord, FileRecordParts, Namespace, Session, StorageNodeRecord, Upload, PATH_MAX_BYTES, ROOT};
use crate::chain::SumKind;
use crate::chunk_tokens::ChunkKeys;
use crate::ids::{ChunkId, FileId, Sha256Digest, StorageNodeId};
use crate::tokens::TokenTable;

/// The version byte this module writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 2;

/// The file's own SHA-256 follows.
const FLAG_SHA: u8 = 1;
/// The file's SHA-256 is its last chunk's checksum.
const FLAG_SHA_IS_LAST_CHUNK: u8 = 1 << 1;
const FLAG_MODE: u8 = 1 << 2;
const FLAG_MTIME: u8 = 1 << 3;
const FLAG_SHARED: u8 = 1 << 4;
/// An S3 object's metadata follows (JSON: a few of many files have it, and it is small).
const FLAG_OBJECT: u8 = 1 << 5;
const FLAGS_KNOWN: u8 = FLAG_SHA | FLAG_SHA_IS_LAST_CHUNK | FLAG_MODE | FLAG_MTIME | FLAG_SHARED | FLAG_OBJECT;

/// Fewest bytes a file takes (a one-byte path suffix, one byte per other field, no chunk):
/// bounds what a claimed count may reserve.
const FILE_BYTES_MIN: usize = 9;
/// Fewest bytes a chunk takes: its digest and four one-byte fields.
const CHUNK_BYTES_MIN: usize = 36;

/// How a binary snapshot fails to decode. The caller checked its checksum, so any of these
/// means it was written wrong or by a version that writes differently.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFormatError {
    #[error("version {0} of the namespace's form, this binary reads version {SNAPSHOT_FORMAT_VERSION}")]
    UnknownVersion(u8),
    #[error("cut short at byte {0}")]
    Truncated(usize),
    #[error("{what} at byte {at}")]
    Malformed { what: &'static str, at: usize },
    #[error("{len} bytes left over after the namespace")]
    TrailingBytes { len: usize },
    #[error("the namespace's other fields: {0}")]
    Rest(#[from] serde_json::Error),
}

/// Every field but the files and directories, as written.
#[derive(Serialize)]
struct RestRef<'a> {
    uploads: &'a BTreeMap<FileId, Upload>,
    uploads_by_request: &'a BTreeMap<u64, BTreeMap<u64, FileId>>,
    storage_nodes: &'a BTreeMap<StorageNodeId, StorageNodeRecord>,
    garbage: &'a BTreeMap<StorageNodeId, BTreeSet<ChunkId>>,
    next_file_id: u64,
    cluster_id: &'a Option<String>,
    sessions: &'a BTreeMap<u64, Session>,
    bad_replicas: Pairs<'a, ChunkId, BTreeSet<StorageNodeId>>,
    shared_chunks: Pairs<'a, ChunkId, BTreeSet<FileId>>,
    applied: u64,
    #[serde(skip_serializing_if = "TokenTable::is_empty")]
    tokens: &'a TokenTable,
    #[serde(skip_serializing_if = "ChunkKeys::is_empty")]
    chunk_keys: &'a ChunkKeys,
}

/// Every field but the files and directories, as read.
#[derive(Deserialize)]
struct Rest {
    uploads: BTreeMap<FileId, Upload>,
    uploads_by_request: BTreeMap<u64, BTreeMap<u64, FileId>>,
    storage_nodes: BTreeMap<StorageNodeId, StorageNodeRecord>,
    garbage: BTreeMap<StorageNodeId, BTreeSet<ChunkId>>,
    next_file_id: u64,
    cluster_id: Option<String>,
    sessions: BTreeMap<u64, Session>,
    #[serde(with = "super::map_as_pairs")]
    bad_replicas: BTreeMap<ChunkId, BTreeSet<StorageNodeId>>,
    #[serde(with = "super::map_as_pairs")]
    shared_chunks: BTreeMap<ChunkId, BTreeSet<FileId>>,
    applied: u64,
    /// Absent when the cluster never made a token, and from earlier versions.
    #[serde(default)]
    tokens: TokenTable,
    #[serde(default)]
    chunk_keys: ChunkKeys,
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
    /// The previous path of the list being written.
    prev: &'a [u8],
}

impl Writer<'_> {
    fn varint(&mut self, v: u64) {
        let mut buf = [0u8; 10];
        let n = v.encode_var(&mut buf);
        self.out.extend_from_slice(&buf[..n]);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.out.extend_from_slice(b);
    }
}

fn write_path<'p>(w: &mut Writer<'p>, path: &'p str) {
    let shared = w.prev.iter().zip(path.as_bytes()).take_while(|(a, b)| a == b).count();
    w.varint(shared as u64);
    w.bytes(&path.as_bytes()[shared..]);
    w.prev = path.as_bytes();
}

fn sum_code(sum: SumKind) -> u8 {
    match sum {
        SumKind::Standalone => 0,
        SumKind::Chained => 1,
        SumKind::ChainedLast => 2,
    }
}

impl Namespace {
    /// Appends the namespace in the binary snapshot form (module doc) to `out`.
    pub fn write_snapshot(&self, out: &mut Vec<u8>) {
        // Every field named, so that a field added to the namespace or to a record does not
        // compile until this form writes it (or says why it is derived).
        let Namespace {
            files,
            dirs,
            paths_by_id: _, // derived from `files`
            uploads,
            uploads_by_request,
            storage_nodes,
            garbage,
            next_file_id,
            cluster_id,
            sessions,
            bad_replicas,
            shared_chunks,
            applied,
            tokens,
            chunk_keys,
        } = self;
        out.reserve(files.len().saturating_mul(80));
        out.push(SNAPSHOT_FORMAT_VERSION);
        let rest = RestRef {
            uploads,
            uploads_by_request,
            storage_nodes,
            garbage,
            next_file_id: *next_file_id,
            cluster_id,
            sessions,
            bad_replicas: Pairs(bad_replicas),
            shared_chunks: Pairs(shared_chunks),
            applied: *applied,
            tokens,
            chunk_keys,
        };
        let rest = serde_json::to_vec(&rest).expect("the namespace's fields serialize");
        let mut w = Writer { out, prev: b"" };
        w.bytes(&rest);
        w.varint(dirs.len() as u64);
        for (path, DirRecord { modified_unix_ms, subdirs: _ /* derived from the paths */ }) in dirs {
            write_path(&mut w, path);
            w.varint(*modified_unix_ms);
        }
        w.prev = b"";
        w.varint(files.len() as u64);
        for (path, f) in files {
            // The packed fields are written through their accessors: the form does not follow
            // the record's layout in memory.
            let FileRecord { path: _, id, size, chunk_size, committed_unix_ms, chunks, mtime_unix_ms: _, rare: _, replication, mode: _, flags: _ } = &**f;
            write_path(&mut w, path);
            for v in [id.0, *size, *chunk_size, u64::from(*replication), *committed_unix_ms] {
                w.varint(v);
            }
            let (sha256, attrs, shared) = (f.sha256(), f.attrs(), f.shared());
            let mut flags = 0;
            match sha256 {
                Some(sha) if Some(sha) == chunks.last().map(|c| c.sha256) => flags |= FLAG_SHA_IS_LAST_CHUNK,
                Some(_) => flags |= FLAG_SHA,
                None => {}
            }
            flags |= if attrs.mode.is_some() { FLAG_MODE } else { 0 };
            flags |= if attrs.mtime_unix_ms.is_some() { FLAG_MTIME } else { 0 };
            flags |= if shared.is_some() { FLAG_SHARED } else { 0 };
            flags |= if f.object().is_some() { FLAG_OBJECT } else { 0 };
            w.out.push(flags);
            if let (Some(sha), true) = (sha256, flags & FLAG_SHA != 0) {
                w.out.extend_from_slice(&sha.0);
            }
            if let Some(mode) = attrs.mode {
                w.varint(u64::from(mode));
            }
            if let Some(mtime) = attrs.mtime_unix_ms {
                w.varint(mtime);
            }
            w.varint(chunks.len() as u64);
            for ChunkRecord { index, size, sha256, replicas, sum } in chunks.iter() {
                w.varint(u64::from(*index));
                w.varint(*size);
                w.out.push(sum_code(*sum));
                w.out.extend_from_slice(&sha256.0);
                w.varint(replicas.len() as u64);
                for r in replicas {
                    w.varint(r.0);
                }
            }
            if let Some(shared) = shared {
                w.varint(shared.len() as u64);
                for (index, chunk) in shared {
                    w.varint(u64::from(*index));
                    w.out.extend_from_slice(&chunk.0);
                }
            }
            if let Some(object) = f.object() {
                w.bytes(&serde_json::to_vec(object).expect("an object's metadata serializes"));
            }
        }
    }

    /// Reads a namespace written by `write_snapshot`: all of `bytes`, nothing left over.
    pub fn read_snapshot(bytes: &[u8]) -> Result<Namespace, SnapshotFormatError> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.u8()?;
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(SnapshotFormatError::UnknownVersion(version));
        }
        let rest_len = r.len()?;
        let rest: Rest = serde_json::from_slice(r.take(rest_len)?)?;

        let mut prev = Vec::new();
        let count = r.count(2)?;
        let mut dirs = Vec::with_capacity(count);
        for _ in 0..count {
            let path = r.path(&mut prev)?.to_string();
            dirs.push((path, DirRecord::new(r.varint()?)));
        }
        let mut dirs: BTreeMap<String, DirRecord> = dirs.into_iter().collect();
        if !dirs.contains_key(ROOT) {
            return Err(SnapshotFormatError::Malformed { what: "no root directory", at: r.at });
        }
        let subdirs: Vec<(String, String)> = dirs.keys().filter(|d| *d != ROOT).map(|d| parent_of(d)).map(|(p, n)| (p.to_string(), n.to_string())).collect();
        for (parent, name) in subdirs {
            let Some(p) = dirs.get_mut(&parent) else {
                return Err(SnapshotFormatError::Malformed { what: "a directory without its parent", at: r.at });
            };
            p.subdirs.insert(name);
        }

        prev.clear();
        let count = r.count(FILE_BYTES_MIN)?;
        let mut files = Vec::with_capacity(count);
        let mut paths_by_id = Vec::with_capacity(count);
        for _ in 0..count {
            let path = ArcStr::from(r.path(&mut prev)?);
            let f = r.file(path.clone())?;
            paths_by_id.push((f.id, path.clone()));
            files.push((path, Box::new(f)));
        }
        if r.at != bytes.len() {
            return Err(SnapshotFormatError::TrailingBytes { len: bytes.len() - r.at });
        }
        paths_by_id.sort_unstable_by_key(|(id, _)| *id);
        Ok(Namespace {
            // Collected from runs already in order: built in one pass (see `bulk_map`).
            files: files.into_iter().collect(),
            dirs,
            paths_by_id: paths_by_id.into_iter().collect(),
            uploads: rest.uploads,
            uploads_by_request: rest.uploads_by_request,
            storage_nodes: rest.storage_nodes,
            garbage: rest.garbage,
            next_file_id: rest.next_file_id,
            cluster_id: rest.cluster_id,
            sessions: rest.sessions,
            applied: rest.applied,
            bad_replicas: rest.bad_replicas,
            shared_chunks: rest.shared_chunks,
            tokens: rest.tokens,
            chunk_keys: rest.chunk_keys,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn malformed(&self, what: &'static str) -> SnapshotFormatError {
        SnapshotFormatError::Malformed { what, at: self.at }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotFormatError> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.bytes.len()).ok_or(SnapshotFormatError::Truncated(self.bytes.len()))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, SnapshotFormatError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, SnapshotFormatError> {
        match u64::decode_var(&self.bytes[self.at..]) {
            Some((v, n)) => {
                self.at += n;
                Ok(v)
            }
            None if self.bytes[self.at..].iter().all(|b| b & 0x80 != 0) && self.bytes.len() - self.at < 10 => {
                Err(SnapshotFormatError::Truncated(self.bytes.len()))
            }
            None => Err(self.malformed("an integer of more than 64 bits")),
        }
    }

    fn u32(&mut self) -> Result<u32, SnapshotFormatError> {
        let v = self.varint()?;
        u32::try_from(v).map_err(|_| self.malformed("a 32-bit field out of range"))
    }

    /// A length of bytes that must follow.
    fn len(&mut self) -> Result<usize, SnapshotFormatError> {
        let v = self.varint()?;
        usize::try_from(v).ok().filter(|n| *n <= self.bytes.len() - self.at).ok_or(SnapshotFormatError::Truncated(self.bytes.len()))
    }

    /// A count of items of at least `min_bytes` each: what may be reserved for them.
    fn count(&mut self, min_bytes: usize) -> Result<usize, SnapshotFormatError> {
        let v = self.varint()?;
        usize::try_from(v).ok().filter(|n| n.saturating_mul(min_bytes) <= self.bytes.len() - self.at).ok_or(SnapshotFormatError::Truncated(self.bytes.len()))
    }

    fn digest<const N: usize>(&mut self) -> Result<[u8; N], SnapshotFormatError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    /// A prefix-coded path, following `prev`, which becomes it.
    fn path<'p>(&mut self, prev: &'p mut Vec<u8>) -> Result<&'p str, SnapshotFormatError> {
        let shared = self.varint()?;
        let shared = usize::try_from(shared).ok().filter(|s| *s <= prev.len()).ok_or_else(|| self.malformed("a path sharing more than the previous one"))?;
        let len = self.len()?;
        let suffix = self.take(len)?;
        prev.truncate(shared);
        prev.extend_from_slice(suffix);
        if prev.len() > PATH_MAX_BYTES || !prev.starts_with(b"/") {
            return Err(self.malformed("a path that is not absolute or is too long"));
        }
        std::str::from_utf8(prev).map_err(|_| self.malformed("a path that is not UTF-8"))
    }

    fn file(&mut self, path: ArcStr) -> Result<FileRecord, SnapshotFormatError> {
        let id = FileId(self.varint()?);
        let size = self.varint()?;
        let chunk_size = self.varint()?;
        let replication = self.u32()?;
        let committed_unix_ms = self.varint()?;
        let flags = self.u8()?;
        if flags & !FLAGS_KNOWN != 0 || flags & (FLAG_SHA | FLAG_SHA_IS_LAST_CHUNK) == FLAG_SHA | FLAG_SHA_IS_LAST_CHUNK {
            return Err(self.malformed("unknown file flags"));
        }
        let sha = if flags & FLAG_SHA != 0 { Some(Sha256Digest(self.digest()?)) } else { None };
        let mode = if flags & FLAG_MODE != 0 { Some(self.u32()?) } else { None };
        let mtime_unix_ms = if flags & FLAG_MTIME != 0 { Some(self.varint()?) } else { None };
        let count = self.count(CHUNK_BYTES_MIN)?;
        let mut chunks = Vec::with_capacity(count);
        for _ in 0..count {
            let index = self.u32()?;
            let size = self.varint()?;
            let sum = match self.u8()? {
                0 => SumKind::Standalone,
                1 => SumKind::Chained,
                2 => SumKind::ChainedLast,
                _ => return Err(self.malformed("an unknown checksum kind")),
            };
            let sha256 = Sha256Digest(self.digest()?);
            let replica_count = self.count(1)?;
            let mut replicas = super::Replicas::with_capacity(replica_count);
            for _ in 0..replica_count {
                replicas.push(StorageNodeId(self.varint()?));
            }
            chunks.push(ChunkRecord { index, size, sha256, replicas, sum });
        }
        let sha256 = match flags & FLAG_SHA_IS_LAST_CHUNK {
            0 => sha,
            _ => Some(chunks.last().ok_or_else(|| self.malformed("a file's checksum taken from no chunk"))?.sha256),
        };
        let shared = if flags & FLAG_SHARED != 0 {
            let count = self.count(17)?;
            let mut shared = Vec::with_capacity(count);
            for _ in 0..count {
                let index = self.u32()?;
                shared.push((index, ChunkId(self.digest()?)));
            }
            Some(Box::new(shared.into_iter().collect()))
        } else {
            None
        };
        let object = if flags & FLAG_OBJECT != 0 {
            let len = self.len()?;
            let json = self.take(len)?;
            Some(Box::new(serde_json::from_slice(json).map_err(|_| self.malformed("an object's metadata that is not its JSON"))?))
        } else {
            None
        };
        Ok(FileRecord::from(FileRecordParts {
            path,
            id,
            size,
            chunk_size,
            replication,
            committed_unix_ms,
            chunks: chunks.into_boxed_slice(),
            sha256,
            attrs: FileAttrs { mode, mtime_unix_ms },
            shared,
            object,
        }))
    }
}
