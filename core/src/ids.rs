//! Identifiers. Each kind of id has its own type so that a storage node id can never be passed
//! where a metadata node id or an address is expected (the seed system once mixed them).

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A metadata (Raft) node, numbered by the operator: `--id N`.
pub type MetaNodeId = u64;

/// A storage node. Generated once by the node itself and kept in its data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StorageNodeId(pub u64);

impl fmt::Display for StorageNodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A file, assigned by metadata when an upload is created. Never reused: overwriting a path
/// gives the new contents a new id, so chunks of different versions never share an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileId(pub u64);

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A chunk: 4 bytes of SHA-256(file id ‖ chunk index), then the file id and the chunk index
/// (all little-endian).
///
/// Derived rather than stored so that client, metadata and storage nodes agree on it without
/// coordination. The hashed prefix spreads chunk files evenly over the sharded directories;
/// the plain file id and index let metadata find the file a chunk reported by a storage node
/// belongs to (`owner`) with no index of its own, and the prefix lets it tell a chunk id of
/// ours from noise.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 16]);

impl ChunkId {
    pub fn derive(file: FileId, index: u32) -> Self {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&Self::check(file, index));
        id[4..12].copy_from_slice(&file.0.to_le_bytes());
        id[12..].copy_from_slice(&index.to_le_bytes());
        ChunkId(id)
    }

    fn check(file: FileId, index: u32) -> [u8; 4] {
        let mut hasher = Sha256::new();
        hasher.update(file.0.to_le_bytes());
        hasher.update(index.to_le_bytes());
        let digest: [u8; 32] = hasher.finalize().into();
        [digest[0], digest[1], digest[2], digest[3]]
    }

    /// The file and chunk index this id was derived from; `None` for 16 bytes that are not a
    /// chunk id of this format.
    pub fn owner(&self) -> Option<(FileId, u32)> {
        let file = FileId(u64::from_le_bytes(self.0[4..12].try_into().expect("8 bytes")));
        let index = u32::from_le_bytes(self.0[12..].try_into().expect("4 bytes"));
        (self.0[..4] == Self::check(file, index)).then_some((file, index))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Parses the 16 raw bytes carried on the wire.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(ChunkId(bytes.try_into().ok()?))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s).ok()?;
        Self::from_slice(&bytes)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.to_hex())
    }
}

/// A SHA-256 digest of a chunk's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    pub fn of(data: &[u8]) -> Self {
        Sha256Digest(Sha256::digest(data).into())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Sha256Digest(bytes.try_into().ok()?))
    }
}

/// The full digest in lowercase hex, as `sha256sum` prints it.
impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(&self.0[..8]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_differ_by_file_and_index_and_round_trip_through_hex() {
        let a = ChunkId::derive(FileId(1), 0);
        assert_ne!(a, ChunkId::derive(FileId(1), 1));
        assert_ne!(a, ChunkId::derive(FileId(2), 0));
        assert_eq!(a, ChunkId::derive(FileId(1), 0));
        assert_eq!(a.owner(), Some((FileId(1), 0)));
        assert_eq!(ChunkId::derive(FileId(u64::MAX), u32::MAX).owner(), Some((FileId(u64::MAX), u32::MAX)));
        let mut noise = a;
        noise.0[0] ^= 1;
        assert_eq!(noise.owner(), None, "a damaged prefix is not an id of ours");
        assert_eq!(ChunkId::from_hex(&a.to_hex()), Some(a));
        assert_eq!(ChunkId::from_slice(&[0u8; 15]), None);
    }
}
