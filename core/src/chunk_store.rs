//! A storage node's chunks: the file format, where files go, the steps of an atomic write, and
//! the in-memory table of what is stored. Pure: the storage-node driver carries out the steps
//! on a `Disk`.
//!
//! A chunk file is a 64-byte header followed by the chunk's bytes:
//!
//! ```text
//! 0..8    magic "DFSCHNK1"
//! 8..16   size of the data, u64 little-endian
//! 16..48  SHA-256 of the data
//! 48..64  zero (reserved)
//! ```
//!
//! Files are self-describing, so the table can always be rebuilt from them. A chunk becomes
//! visible only once complete: it is written under `tmp/`, fsynced, renamed into
//! `chunks/ab/cd/abcd….chunk`, and the directory is fsynced. A crash at any step leaves either
//! no chunk or the whole chunk; leftovers in `tmp/` are removed at start-up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};

use crate::ids::{ChunkId, Sha256Digest};

pub const CHUNK_FILE_MAGIC: [u8; 8] = *b"DFSCHNK1";
pub const HEADER_BYTES: usize = 64;
const CHUNK_SUFFIX: &str = ".chunk";

/// What the header says about the data that follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkMeta {
    pub size: u64,
    pub sha256: Sha256Digest,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkFileError {
    #[error("chunk file is {0} bytes, shorter than its header")]
    Truncated(u64),
    #[error("chunk file has a bad magic number")]
    BadMagic,
    #[error("chunk file holds {actual} bytes of data but its header says {announced}")]
    SizeMismatch { announced: u64, actual: u64 },
    #[error("chunk data does not match its SHA-256")]
    ChecksumMismatch,
}

pub fn encode_header(meta: ChunkMeta) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..8].copy_from_slice(&CHUNK_FILE_MAGIC);
    h[8..16].copy_from_slice(&meta.size.to_le_bytes());
    h[16..48].copy_from_slice(&meta.sha256.0);
    h
}

pub fn decode_header(bytes: &[u8]) -> Result<ChunkMeta, ChunkFileError> {
    if bytes.len() < HEADER_BYTES {
        return Err(ChunkFileError::Truncated(bytes.len() as u64));
    }
    if bytes[..8] != CHUNK_FILE_MAGIC {
        return Err(ChunkFileError::BadMagic);
    }
    let size = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let sha256 = Sha256Digest(bytes[16..48].try_into().expect("32 bytes"));
    Ok(ChunkMeta { size, sha256 })
}

/// The whole file: header then data.
pub fn encode_file(meta: ChunkMeta, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_BYTES + data.len());
    out.put_slice(&encode_header(meta));
    out.put_slice(data);
    out.freeze()
}

/// Checks a whole chunk file and returns its data. Every read goes through this: a replica
/// whose bytes do not match its checksum is never served.
pub fn decode_file(file: Bytes) -> Result<(ChunkMeta, Bytes), ChunkFileError> {
    let meta = decode_header(&file)?;
    let data = file.slice(HEADER_BYTES..);
    if data.len() as u64 != meta.size {
        return Err(ChunkFileError::SizeMismatch { announced: meta.size, actual: data.len() as u64 });
    }
    if Sha256Digest::of(&data) != meta.sha256 {
        return Err(ChunkFileError::ChecksumMismatch);
    }
    Ok((meta, data))
}

/// Where things live under a storage node's data directory.
#[derive(Clone, Debug)]
pub struct ChunkLayout {
    root: PathBuf,
}

impl ChunkLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ChunkLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn chunks_dir(&self) -> PathBuf {
        self.root.join("chunks")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// `chunks/ab/cd/abcd….chunk`: two levels of 256 directories keep each directory small.
    pub fn chunk_path(&self, id: ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.chunks_dir().join(&hex[0..2]).join(&hex[2..4]).join(format!("{hex}{CHUNK_SUFFIX}"))
    }

    pub fn tmp_path(&self, id: ChunkId, nonce: u64) -> PathBuf {
        self.tmp_dir().join(format!("{}.{nonce:016x}.tmp", id.to_hex()))
    }

    /// The chunk a file in a shard directory holds, if its name is one of ours.
    pub fn parse_chunk_file_name(name: &str) -> Option<ChunkId> {
        ChunkId::from_hex(name.strip_suffix(CHUNK_SUFFIX)?)
    }

    /// Is `name` a two-hex-digit shard directory name?
    pub fn is_shard_name(name: &str) -> bool {
        name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    }
}

/// One step of an atomic chunk write, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum DiskStep {
    CreateDir(PathBuf),
    WriteFile { path: PathBuf, data: Bytes },
    SyncFile(PathBuf),
    Rename { from: PathBuf, to: PathBuf },
    SyncDir(PathBuf),
}

/// The steps that make a chunk durable and visible atomically. `nonce` keeps concurrent or
/// crashed attempts from sharing a temporary file.
pub fn write_steps(layout: &ChunkLayout, id: ChunkId, nonce: u64, meta: ChunkMeta, data: &[u8]) -> Vec<DiskStep> {
    let tmp = layout.tmp_path(id, nonce);
    let dest = layout.chunk_path(id);
    let dir = dest.parent().expect("chunk paths have a parent").to_path_buf();
    vec![
        DiskStep::CreateDir(layout.tmp_dir()),
        DiskStep::WriteFile { path: tmp.clone(), data: encode_file(meta, data) },
        DiskStep::SyncFile(tmp.clone()),
        DiskStep::CreateDir(dir.clone()),
        DiskStep::Rename { from: tmp, to: dest },
        DiskStep::SyncDir(dir),
    ]
}

/// The state of one chunk on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkState {
    /// Bytes are on their way to disk; not readable yet.
    Writing(ChunkMeta),
    /// Durable, verified when written.
    Stored(ChunkMeta),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkStoreError {
    #[error("chunk {0} is being written by another request")]
    WriteInProgress(ChunkId),
    #[error("chunk {0} is already stored with different contents")]
    Conflict(ChunkId),
    #[error("chunk {0} is not stored here")]
    NotStored(ChunkId),
}

/// What to do with an incoming write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum WriteDecision {
    /// Write it: carry out `write_steps`, then `finish_write` or `abort_write`.
    Write,
    /// The same bytes are already stored: nothing to do (a retried write).
    AlreadyStored,
}

/// The table of chunks on this node, in memory; rebuilt from the files at start-up.
#[derive(Clone, Debug, Default)]
pub struct ChunkTable {
    chunks: BTreeMap<ChunkId, ChunkState>,
}

impl ChunkTable {
    /// A chunk found on disk at start-up.
    pub fn insert_stored(&mut self, id: ChunkId, meta: ChunkMeta) {
        self.chunks.insert(id, ChunkState::Stored(meta));
    }

    pub fn begin_write(&mut self, id: ChunkId, meta: ChunkMeta) -> Result<WriteDecision, ChunkStoreError> {
        match self.chunks.get(&id) {
            None => {
                self.chunks.insert(id, ChunkState::Writing(meta));
                Ok(WriteDecision::Write)
            }
            Some(ChunkState::Writing(_)) => Err(ChunkStoreError::WriteInProgress(id)),
            Some(ChunkState::Stored(existing)) if *existing == meta => Ok(WriteDecision::AlreadyStored),
            Some(ChunkState::Stored(_)) => Err(ChunkStoreError::Conflict(id)),
        }
    }

    pub fn finish_write(&mut self, id: ChunkId) {
        if let Some(ChunkState::Writing(meta)) = self.chunks.get(&id).copied() {
            self.chunks.insert(id, ChunkState::Stored(meta));
        }
    }

    pub fn abort_write(&mut self, id: ChunkId) {
        if let Some(ChunkState::Writing(_)) = self.chunks.get(&id) {
            self.chunks.remove(&id);
        }
    }

    /// A stored chunk's metadata; a chunk still being written is not readable.
    pub fn stored(&self, id: ChunkId) -> Result<ChunkMeta, ChunkStoreError> {
        match self.chunks.get(&id) {
            Some(ChunkState::Stored(meta)) => Ok(*meta),
            _ => Err(ChunkStoreError::NotStored(id)),
        }
    }

    /// Forget a chunk (deleted, or found corrupt). Returns whether it was stored.
    pub fn remove(&mut self, id: ChunkId) -> bool {
        matches!(self.chunks.remove(&id), Some(ChunkState::Stored(_)))
    }

    pub fn stored_count(&self) -> u64 {
        self.chunks.values().filter(|s| matches!(s, ChunkState::Stored(_))).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::FileId;

    fn meta(data: &[u8]) -> ChunkMeta {
        ChunkMeta { size: data.len() as u64, sha256: Sha256Digest::of(data) }
    }

    #[test]
    fn files_round_trip_and_damage_is_detected() {
        let data = b"hello chunk";
        let file = encode_file(meta(data), data);
        assert_eq!(decode_file(file.clone()).unwrap(), (meta(data), Bytes::from_static(data)));
        let mut flipped = file.to_vec();
        flipped[HEADER_BYTES + 3] ^= 0x10;
        assert_eq!(decode_file(flipped.into()), Err(ChunkFileError::ChecksumMismatch));
        assert_eq!(decode_file(file.slice(..file.len() - 1)), Err(ChunkFileError::SizeMismatch { announced: 11, actual: 10 }));
        assert_eq!(decode_file(file.slice(..10)), Err(ChunkFileError::Truncated(10)));
        let mut magic = file.to_vec();
        magic[0] = b'X';
        assert_eq!(decode_file(magic.into()), Err(ChunkFileError::BadMagic));
    }

    #[test]
    fn layout_is_sharded_and_parseable() {
        let layout = ChunkLayout::new("/data");
        let id = ChunkId::derive(FileId(5), 3);
        let path = layout.chunk_path(id);
        let hex = id.to_hex();
        assert_eq!(path, PathBuf::from(format!("/data/chunks/{}/{}/{hex}.chunk", &hex[..2], &hex[2..4])));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(ChunkLayout::parse_chunk_file_name(name), Some(id));
        assert_eq!(ChunkLayout::parse_chunk_file_name("x.chunk"), None);
        assert!(ChunkLayout::is_shard_name("0f") && !ChunkLayout::is_shard_name("0F") && !ChunkLayout::is_shard_name("abc"));
        let steps = write_steps(&layout, id, 1, meta(b"x"), b"x");
        assert!(matches!(&steps[4], DiskStep::Rename { to, .. } if *to == path));
        assert_eq!(steps.last(), Some(&DiskStep::SyncDir(path.parent().unwrap().to_path_buf())));
    }

    #[test]
    fn table_lifecycle() {
        let mut t = ChunkTable::default();
        let id = ChunkId::derive(FileId(1), 0);
        let m = meta(b"a");
        assert_eq!(t.begin_write(id, m), Ok(WriteDecision::Write));
        assert_eq!(t.begin_write(id, m), Err(ChunkStoreError::WriteInProgress(id)));
        assert_eq!(t.stored(id), Err(ChunkStoreError::NotStored(id)));
        t.finish_write(id);
        assert_eq!(t.stored(id), Ok(m));
        assert_eq!(t.begin_write(id, m), Ok(WriteDecision::AlreadyStored));
        assert_eq!(t.begin_write(id, meta(b"b")), Err(ChunkStoreError::Conflict(id)));
        assert_eq!(t.stored_count(), 1);
        assert!(t.remove(id));
        let other = ChunkId::derive(FileId(1), 1);
        assert_eq!(t.begin_write(other, m), Ok(WriteDecision::Write));
        t.abort_write(other);
        assert_eq!(t.begin_write(other, m), Ok(WriteDecision::Write));
    }
}
