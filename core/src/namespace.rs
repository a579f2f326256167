//! The replicated metadata state machine: a tree of directories and files, the files' chunks
//! and where the replicas live, the storage nodes, and the replicas waiting to be deleted.
//!
//! `apply(command)` is pure and deterministic: every metadata node applies the same Raft log
//! and ends in the same state. It never panics on bad input; a command that does not fit the
//! state is refused with a `NamespaceError` and changes nothing. Times are carried inside the
//! commands (chosen by the leader), never read here. `Command::validate` checks what can be
//! checked without the state, so a server can refuse bad input before it enters the log;
//! `apply` checks it again, since the log is not trusted either.
//!
//! The tree: the root `/` always exists; every other path is a file or a directory, never
//! both, and every ancestor of a path is a directory. Files are kept by full path, so a
//! directory's files lie together in path order; each directory keeps a sorted index of its
//! subdirectories only. A page of a listing costs O(page · log n) however large the directory
//! is (a subdirectory's files are skipped a subtree at a time).
//!
//! An upload goes through three commands: `CreateFile` reserves a file id, `RecordChunks`
//! (any number of times, idempotent) says which nodes hold verified copies of which chunks, and
//! `CommitFile` checks that every chunk is there and makes the file visible at its path,
//! atomically replacing an older file if asked to, and creating missing parent directories.
//! Until then readers see the old state: an upload in flight is not listed. An upload keeps
//! the path it was created for: if a directory above it is renamed or deleted meanwhile, the
//! commit still lands at the original path and creates its parents again. Uploads never
//! committed are dropped by `ExpireUploads`. An empty file has nothing to upload:
//! `CreateEmptyFile` creates and commits it in one command.

use arcstr::ArcStr;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use crate::chain::{Chain, SumKind};
use crate::chunking;
use crate::ids::{ChunkId, FileId, Sha256Digest, StorageNodeId};
use crate::limits::{BATCH_COMMANDS_MAX, RECORD_CHUNKS_MAX};

/// Longest path accepted, in bytes.
pub const PATH_MAX_BYTES: usize = 4096;
/// Longest path component accepted, in bytes.
pub const NAME_MAX_BYTES: usize = 255;
/// Highest replication factor accepted.
pub const REPLICATION_MAX: u32 = 16;
/// Most uploads in flight at once; beyond, `CreateFile` is refused until some commit or expire.
pub const UPLOADS_MAX: usize = 100_000;
/// Longest storage-node address accepted, in bytes.
pub const ADDR_MAX_BYTES: usize = 256;
/// Longest rack name accepted, in bytes.
pub const RACK_MAX_BYTES: usize = 64;
/// Longest cluster id accepted, in bytes.
pub const CLUSTER_ID_MAX_BYTES: usize = 128;
/// An upload not committed this long after its creation is dropped (1 hour).
pub const UPLOAD_EXPIRY_DEFAULT_MS: u64 = 60 * 60 * 1000;
/// Clients whose `Once` results are kept; the one unheard of for longest is forgotten first.
pub const SESSIONS_MAX: usize = 10_000;
/// `Once` results kept per client: its requests in flight at once must stay below this.
pub const SESSION_RESULTS_MAX: usize = 256;
/// Chunks with replicas marked bad at once. A report for a chunk no file or upload holds (yet)
/// is kept too, so this bounds what reports can pile up; repair (re-replication) will drain it.
pub const BAD_REPLICA_CHUNKS_MAX: usize = 100_000;
/// Most files one `CopyFile` joins after its first (`append`): S3's most parts of an object,
/// less one.
pub const COPY_APPEND_MAX: usize = 9_999;
/// Most replicas one `DropReplicas` command may carry.
pub const DROP_REPLICAS_MAX: usize = 1024;
/// Most replicas one `ReportReplicas` (or `ForgetDeletedReplicas`) command may carry: what one
/// heartbeat reports.
pub const REPLICA_REPORTS_MAX: usize = 4096;
/// Most storage nodes a cluster registers: a registration beyond is refused, so a holder of a
/// storage certificate cannot grow the namespace without end.
pub const STORAGE_NODES_MAX: usize = 10_000;

/// The root directory's path.
pub const ROOT: &str = "/";

/// A chunk's replicas: up to three are held inline, with no allocation of their own (the
/// usual replication factor; the namespace holds one such list per chunk). Serialized as the
/// list it replaced.
pub type Replicas = smallvec::SmallVec<[StorageNodeId; 3]>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub index: u32,
    pub size: u64,
    pub sha256: Sha256Digest,
    /// Nodes holding a verified copy, in the order the client reported them.
    pub replicas: Replicas,
    /// How `sha256` was computed (`crate::chain`). Absent from records of earlier versions,
    /// and left out when standalone, so such records read and write as they always did.
    #[serde(default, skip_serializing_if = "SumKind::is_standalone")]
    pub sum: SumKind,
}

/// A committed file. The leader holds one per file, so it is kept compact (DESIGN.md,
/// "Memory"): the attributes packed, the file's SHA-256 not kept twice when it is its last
/// chunk's checksum (a file of one chunk, or a chained upload: the usual case), and what few
/// files have (a SHA-256 of their own, chunks shared with a copy) behind one pointer. Built
/// from, and serialized as, `FileRecordParts`, the layout earlier versions kept.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(from = "FileRecordParts")]
pub struct FileRecord {
    /// Shared with the namespace's indexes: one allocation per file, however many hold it.
    pub path: ArcStr,
    pub id: FileId,
    pub size: u64,
    pub chunk_size: u64,
    pub committed_unix_ms: u64,
    /// By index, from 0. A boxed slice: a committed file's chunks never change in number.
    pub chunks: Box<[ChunkRecord]>,
    /// Valid with `HAS_MTIME`.
    mtime_unix_ms: u64,
    rare: Option<Box<RareParts>>,
    pub replication: u32,
    /// Valid with `HAS_MODE`. Permission bits fit: `apply` refuses a mode above `MODE_MAX`.
    mode: u16,
    /// `SHA_IS_LAST_CHUNK | HAS_MODE | HAS_MTIME`.
    flags: u8,
}

/// The file's SHA-256 is its last chunk's checksum.
const SHA_IS_LAST_CHUNK: u8 = 1;
const HAS_MODE: u8 = 1 << 1;
const HAS_MTIME: u8 = 1 << 2;

/// What few files have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RareParts {
    /// The file's SHA-256, when it is not its last chunk's checksum.
    sha256: Option<Sha256Digest>,
    /// Never empty.
    shared: Option<BTreeMap<u32, ChunkId>>,
    /// What the S3 gateway keeps of an object (ETag, content type, user metadata).
    object: Option<ObjectMeta>,
}

impl RareParts {
    /// What a record keeps of them: nothing (no allocation) when none is there.
    fn boxed(sha256: Option<Sha256Digest>, shared: Option<BTreeMap<u32, ChunkId>>, object: Option<ObjectMeta>) -> Option<Box<RareParts>> {
        let shared = shared.filter(|s| !s.is_empty());
        (sha256.is_some() || shared.is_some() || object.is_some()).then(|| Box::new(RareParts { sha256, shared, object }))
    }
}

/// A file record's fields, each on its own: what `FileRecord` is built from, and the layout
/// snapshots of earlier versions hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecordParts {
    pub path: ArcStr,
    pub id: FileId,
    pub size: u64,
    pub chunk_size: u64,
    pub replication: u32,
    pub committed_unix_ms: u64,
    /// By index, from 0.
    pub chunks: Box<[ChunkRecord]>,
    /// SHA-256 of the whole file, if the uploader sent one.
    #[serde(default)]
    pub sha256: Option<Sha256Digest>,
    /// Mode and modification time it had where it came from, if kept.
    #[serde(default, skip_serializing_if = "FileAttrs::is_empty")]
    pub attrs: FileAttrs,
    /// Chunks this file shares with another (`CopyFile`): index → the shared chunk's id, for
    /// the chunks whose id is not derived from this file's. Their replicas are listed in every
    /// file that holds them, alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<Box<BTreeMap<u32, ChunkId>>>,
    /// What the S3 gateway keeps of an object, for files it wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<Box<ObjectMeta>>,
}

impl From<FileRecordParts> for FileRecord {
    fn from(p: FileRecordParts) -> Self {
        let sha_is_last = p.sha256.is_some() && p.sha256 == p.chunks.last().map(|c| c.sha256);
        let own_sha = if sha_is_last { None } else { p.sha256 };
        let rare = RareParts::boxed(own_sha, p.shared.map(|s| *s), p.object.map(|o| *o));
        let mut record = FileRecord {
            path: p.path,
            id: p.id,
            size: p.size,
            chunk_size: p.chunk_size,
            committed_unix_ms: p.committed_unix_ms,
            chunks: p.chunks,
            mtime_unix_ms: 0,
            rare,
            replication: p.replication,
            mode: 0,
            flags: if sha_is_last { SHA_IS_LAST_CHUNK } else { 0 },
        };
        record.set_attrs(p.attrs);
        record
    }
}

impl Serialize for FileRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.parts().serialize(s)
    }
}

impl FileRecord {
    /// Its fields, each on its own (a copy).
    pub fn parts(&self) -> FileRecordParts {
        FileRecordParts {
            path: self.path.clone(),
            id: self.id,
            size: self.size,
            chunk_size: self.chunk_size,
            replication: self.replication,
            committed_unix_ms: self.committed_unix_ms,
            chunks: self.chunks.clone(),
            sha256: self.sha256(),
            attrs: self.attrs(),
            shared: self.shared().map(|s| Box::new(s.clone())),
            object: self.object().map(|o| Box::new(o.clone())),
        }
    }

    /// What the S3 gateway keeps of the object, if the gateway wrote it.
    pub fn object(&self) -> Option<&ObjectMeta> {
        self.rare.as_ref().and_then(|r| r.object.as_ref())
    }

    /// SHA-256 of the whole file, if the uploader sent one.
    pub fn sha256(&self) -> Option<Sha256Digest> {
        if self.flags & SHA_IS_LAST_CHUNK != 0 {
            return self.chunks.last().map(|c| c.sha256);
        }
        self.rare.as_ref().and_then(|r| r.sha256)
    }

    /// Mode and modification time it had where it came from, if kept.
    pub fn attrs(&self) -> FileAttrs {
        FileAttrs {
            mode: (self.flags & HAS_MODE != 0).then_some(u32::from(self.mode)),
            mtime_unix_ms: (self.flags & HAS_MTIME != 0).then_some(self.mtime_unix_ms),
        }
    }

    fn set_attrs(&mut self, attrs: FileAttrs) {
        self.flags &= !(HAS_MODE | HAS_MTIME);
        if let Some(mode) = attrs.mode {
            self.mode = (mode & MODE_MAX) as u16;
            self.flags |= HAS_MODE;
        }
        if let Some(mtime) = attrs.mtime_unix_ms {
            self.mtime_unix_ms = mtime;
            self.flags |= HAS_MTIME;
        }
    }

    /// Chunks this file shares with another (`CopyFile`): index → the shared chunk's id, for
    /// the chunks whose id is not derived from this file's.
    pub fn shared(&self) -> Option<&BTreeMap<u32, ChunkId>> {
        self.rare.as_ref().and_then(|r| r.shared.as_ref())
    }

    fn set_shared(&mut self, shared: BTreeMap<u32, ChunkId>) {
        let (sha256, object) = self.rare.take().map_or((None, None), |r| (r.sha256, r.object));
        self.rare = RareParts::boxed(sha256, Some(shared), object);
    }

    fn set_object(&mut self, object: ObjectMeta) {
        let (sha256, shared) = self.rare.take().map_or((None, None), |r| (r.sha256, r.shared));
        self.rare = RareParts::boxed(sha256, shared, Some(object));
    }

    /// Where in `chunks` this file holds `chunk`, if it does. A chunk sits at its own index
    /// in the file it was uploaded for and in plain copies; a joined copy (`CopyFile` with
    /// `append`) holds others' chunks elsewhere, found in its shared map.
    fn position_of(&self, chunk: ChunkId) -> Option<usize> {
        let (_, index) = chunk.owner()?;
        if self.chunks.get(index as usize).is_some_and(|c| c.index == index) && self.chunk_id(index) == chunk {
            return Some(index as usize);
        }
        let shared = self.shared()?;
        shared.iter().find(|(_, c)| **c == chunk).map(|(i, _)| *i as usize).filter(|i| *i < self.chunks.len())
    }

    pub fn chunk_id(&self, index: u32) -> ChunkId {
        self.shared().and_then(|s| s.get(&index)).copied().unwrap_or_else(|| ChunkId::derive(self.id, index))
    }

    /// The chain of the chunk at `pos` in `chunks`: `before` is the previous chunk's checksum.
    /// `None` for a standalone checksum.
    pub fn chain_at(&self, pos: usize) -> Option<Chain> {
        let c = self.chunks.get(pos)?;
        if c.sum.is_standalone() {
            return None;
        }
        let before = pos.checked_sub(1).and_then(|p| self.chunks.get(p)).map_or_else(Chain::initial, |p| p.sha256);
        Some(Chain::at(c.index, self.chunk_size, before, c.sum == SumKind::ChainedLast))
    }
}

/// What a file keeps of its source besides its bytes: permission bits and when its content
/// last changed (`put -r` keeps them, `get -p` restores them, `touch` sets the time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAttrs {
    /// Permission bits (`st_mode & 0o7777`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_unix_ms: Option<u64>,
}

impl FileAttrs {
    pub fn is_empty(&self) -> bool {
        self.mode.is_none() && self.mtime_unix_ms.is_none()
    }
}

/// What the S3 gateway keeps with an object besides its bytes (`dfs s3`): what S3 clients
/// read back from a HEAD or GET. Files written otherwise have none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// The ETag, without quotes: the hex MD5 of the bytes, or S3's `<hex>-<parts>` for a
    /// multipart object.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub etag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Standard headers S3 stores and returns as given (`cache-control`, `content-disposition`,
    /// `content-encoding`, `content-language`, `expires`), by lowercase name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// User metadata (`x-amz-meta-<name>`), by lowercase name without the prefix.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, String>,
}

/// Most bytes of user metadata an object keeps (names and values): S3's limit.
pub const OBJECT_USER_META_MAX_BYTES: usize = 2048;
/// Most bytes of an ETag, a content type or any one standard header an object keeps.
pub const OBJECT_FIELD_MAX_BYTES: usize = 1024;
/// Most standard headers an object keeps.
pub const OBJECT_HEADERS_MAX: usize = 8;

impl ObjectMeta {
    /// Checks the bounds, so that no client grows a file record beyond a few KiB.
    pub fn validate(&self) -> Result<(), NamespaceError> {
        let bad = |what: String| Err(NamespaceError::InvalidArgument(what));
        if self.etag.len() > OBJECT_FIELD_MAX_BYTES || self.content_type.as_ref().is_some_and(|c| c.len() > OBJECT_FIELD_MAX_BYTES) {
            return bad(format!("an object's ETag and content type are at most {OBJECT_FIELD_MAX_BYTES} bytes each"));
        }
        if self.headers.len() > OBJECT_HEADERS_MAX || self.headers.iter().any(|(k, v)| k.len() + v.len() > OBJECT_FIELD_MAX_BYTES) {
            return bad(format!("an object keeps at most {OBJECT_HEADERS_MAX} standard headers of at most {OBJECT_FIELD_MAX_BYTES} bytes each"));
        }
        let user: usize = self.user.iter().map(|(k, v)| k.len() + v.len()).sum();
        if user > OBJECT_USER_META_MAX_BYTES {
            return bad(format!("user metadata is {user} bytes; at most {OBJECT_USER_META_MAX_BYTES}"));
        }
        Ok(())
    }
}

/// Highest permission bits a file may carry.
pub const MODE_MAX: u32 = 0o7777;
/// The directory deleted files and directories are moved to, per user, until they expire.
pub const TRASH_DIR: &str = "/.trash";
/// Longest user name a trash directory takes, in bytes.
pub const USER_MAX_BYTES: usize = 64;
/// Variants of a trash bucket tried when the moved path collides with what is there already.
pub const TRASH_VARIANTS_MAX: u32 = 100;

/// Names one `CreateFile` request of one client, so that a retried request (its reply lost)
/// finds the upload the first attempt created instead of creating a second one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// Drawn at random by each client.
    pub client: u64,
    /// Counts the client's requests.
    pub seq: u64,
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
    /// With `overwrite`: the file the client saw at `path`, which the commit must still find
    /// there. `None`: replace whatever is there.
    pub expect_file_id: Option<FileId>,
    pub request: Option<RequestId>,
    pub created_unix_ms: u64,
    pub chunks: BTreeMap<u32, ChunkRecord>,
    #[serde(default, skip_serializing_if = "FileAttrs::is_empty")]
    pub attrs: FileAttrs,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageNodeRecord {
    pub id: StorageNodeId,
    pub addr: String,
    pub capacity_bytes: u64,
    /// Its failure domain (`dfs storage --rack`); replicas of a chunk span two racks or more
    /// when the cluster has them.
    #[serde(default)]
    pub rack: Option<String>,
    /// Being decommissioned.
    #[serde(default)]
    pub draining: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Dir,
}

/// A directory: its subdirectories by name. Its files need no index of their own here: they
/// lie together in `Namespace::files` under the directory's path (`Namespace::files_in`), and
/// a second key per file would cost more memory than the file's path itself.
///
/// Snapshots list the files among the `children` as well, as earlier versions wrote and read
/// them (`DirOut`), so that a node of an earlier version can still load a newer snapshot;
/// they are left out again on load.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
struct DirRecord {
    /// When it was created or last moved.
    modified_unix_ms: u64,
    #[serde(rename = "children", deserialize_with = "subdirs_of_children")]
    subdirs: BTreeSet<String>,
}

impl DirRecord {
    fn new(unix_ms: u64) -> Self {
        DirRecord { modified_unix_ms: unix_ms, subdirs: BTreeSet::new() }
    }
}

/// A directory's subdirectories, from the `children` of a snapshot (files and directories by
/// name), built in one pass (see `bulk_map`).
fn subdirs_of_children<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeSet<String>, D::Error> {
    struct Children;
    impl<'de> serde::de::Visitor<'de> for Children {
        type Value = BTreeSet<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of names to entry kinds")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut dirs = Vec::new();
            while let Some((name, kind)) = map.next_entry::<String, EntryKind>()? {
                if kind == EntryKind::Dir {
                    dirs.push(name);
                }
            }
            Ok(dirs.into_iter().collect())
        }
    }
    d.deserialize_map(Children)
}

/// A directory as snapshots hold it: its files among its children, as earlier versions kept
/// them.
struct DirOut<'a> {
    ns: &'a Namespace,
    path: &'a str,
    dir: &'a DirRecord,
}

impl Serialize for DirOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Children<'a>(&'a DirOut<'a>);
        impl Serialize for Children<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let DirOut { ns, path, dir } = self.0;
                let files = ns.files_in(path, "").map(|(name, _)| (name, EntryKind::File));
                let dirs = dir.subdirs.iter().map(|name| (name.as_str(), EntryKind::Dir));
                s.collect_map(merge_sorted(files, dirs))
            }
        }
        let mut out = s.serialize_struct("DirRecord", 2)?;
        out.serialize_field("modified_unix_ms", &self.dir.modified_unix_ms)?;
        out.serialize_field("children", &Children(self))?;
        out.end()
    }
}

/// Every directory by path, as snapshots hold them (`DirOut`).
struct DirsOut<'a>(&'a Namespace);

impl Serialize for DirsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ns = self.0;
        s.collect_map(ns.dirs.iter().map(|(path, dir)| (path, DirOut { ns, path, dir })))
    }
}

/// One entry of a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The last component of `path` (`/` for the root).
    pub name: String,
    pub path: String,
    pub kind: EntryKind,
    /// Set for files.
    pub file: Option<FileSummary>,
    /// A file's commit time; a directory's creation (or last move) time.
    pub modified_unix_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A storage node announces itself (again, after a restart or an address change).
    /// Whether it is draining survives re-registration.
    RegisterStorageNode {
        node: StorageNodeId,
        addr: String,
        capacity_bytes: u64,
        #[serde(default)]
        rack: Option<String>,
    },
    /// Decommissioning (`draining`): the node takes no new replicas, its replicas stop
    /// counting, and repair copies them elsewhere. Undone with `draining: false`.
    SetDraining {
        node: StorageNodeId,
        draining: bool,
    },
    /// Forgets a storage node that will not come back: its record, its replicas in every
    /// chunk's list, its pending deletions and bad marks.
    ForgetStorageNode {
        node: StorageNodeId,
    },
    /// Names the cluster, once; naming it again with the same id is a no-op.
    SetClusterId {
        cluster_id: String,
    },
    CreateFile {
        path: String,
        size: u64,
        chunk_size: u64,
        replication: u32,
        overwrite: bool,
        /// Only with `overwrite`: the commit replaces this file or nothing (see `Upload`).
        expect_file_id: Option<FileId>,
        request_id: Option<RequestId>,
        unix_ms: u64,
        /// Kept with the file once committed.
        #[serde(default)]
        attrs: FileAttrs,
    },
    RecordChunks {
        file: FileId,
        chunks: Vec<ChunkRecord>,
    },
    CommitFile {
        file: FileId,
        unix_ms: u64,
        /// SHA-256 of the whole file, as the uploader computed it.
        #[serde(default)]
        sha256: Option<Sha256Digest>,
        /// Chunk records not sent yet, recorded (as `RecordChunks` would) just before the
        /// commit, in the same command: one Raft entry for a small file.
        #[serde(default)]
        chunks: Vec<ChunkRecord>,
        /// Kept with the file: what the S3 gateway records of an object. A metadata node of
        /// an earlier version ignores it (README, "Upgrading").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object: Option<Box<ObjectMeta>>,
    },
    /// An empty file created and committed at once (`dfs put` of a 0-byte file): one log
    /// entry where `CreateFile` and `CommitFile` take two. Its SHA-256 is the empty string's.
    /// A variant of its own, not a flag on `CreateFile`: a node of an earlier version would
    /// ignore the flag and apply an open upload, while this it cannot decode at all, so no
    /// node ever applies the same entry differently (README, "Upgrading").
    CreateEmptyFile {
        path: String,
        chunk_size: u64,
        replication: u32,
        overwrite: bool,
        /// Only with `overwrite`: replaces this file or nothing.
        expect_file_id: Option<FileId>,
        unix_ms: u64,
        #[serde(default)]
        attrs: FileAttrs,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object: Option<Box<ObjectMeta>>,
    },
    /// Creates a directory; with `parents`, also its missing ancestors, and an existing
    /// directory is fine (`mkdir -p`).
    Mkdir {
        path: String,
        parents: bool,
        unix_ms: u64,
    },
    /// Moves a file or a whole directory, atomically, never replacing anything.
    Rename {
        src: String,
        dst: String,
        unix_ms: u64,
    },
    /// Deletes a file, an empty directory, or with `recursive` a whole subtree (the root keeps
    /// existing, emptied). With `expect_file_id`, only that file: a retried delete must not
    /// remove a newer file at the same path.
    Delete {
        path: String,
        recursive: bool,
        expect_file_id: Option<FileId>,
    },
    /// Drops uploads created before `now_unix_ms - older_than_ms`; their replicas become garbage.
    ExpireUploads {
        now_unix_ms: u64,
        older_than_ms: u64,
    },
    /// A storage node deleted these replicas on request: stop asking.
    ForgetDeletedReplicas {
        node: StorageNodeId,
        chunks: Vec<ChunkId>,
    },
    /// `node`'s replica of `chunk` was found corrupt (by the node on a read, or by a client whose
    /// check of its bytes failed): never hand it out again. The replica stays in its chunk's
    /// record (so it is still deleted with the file) but is no longer served.
    MarkReplicaBad {
        chunk: ChunkId,
        node: StorageNodeId,
    },
    /// `node` says it holds these replicas (verified when it stored them). Metadata learns
    /// from it, not only from the uploader's word: a replica of a recorded chunk with the
    /// recorded size and SHA-256 is counted; one with another size or digest is stale (no
    /// longer counted, deleted); a chunk of a file or upload that is gone (deleted, replaced,
    /// expired) is deleted. A chunk of an upload not recorded yet is left alone: the uploader
    /// records it, or the upload expires.
    ReportReplicas {
        node: StorageNodeId,
        replicas: Vec<ReplicaReport>,
    },
    /// `node`'s complete inventory lacks these chunks it is listed for: its replicas are gone
    /// (lost with a disk, quarantined before the report got out). Marked bad, as a corrupt
    /// replica would be: never served, not counted, replaced by repair, then dropped.
    MarkReplicasMissing {
        node: StorageNodeId,
        chunks: Vec<ChunkId>,
    },
    /// Surplus or bad replicas no longer wanted (the repair planner's choice): unlisted and
    /// deleted from their nodes. A chunk's last listed replica is never dropped.
    DropReplicas {
        drops: Vec<(ChunkId, StorageNodeId)>,
    },
    /// A new file at `dst` with `src`'s content, sharing its chunks (copy-on-write: no byte
    /// moves, and a shared chunk's replicas go only once no file holds it). Like a commit, it
    /// creates `dst`'s missing parents, and with `overwrite` replaces a file there.
    ///
    /// With `append`, the new file is `src`'s content followed by each of theirs, in order,
    /// still sharing every chunk (the S3 gateway's multipart completion): its chunks then
    /// differ in size, so a chunk's offset is the sum of the sizes before it, and it keeps no
    /// SHA-256 of the whole. Joined files must have standalone checksums (a chained one
    /// hashes on from its own file's bytes). `object`, when given, replaces what the gateway
    /// keeps of the object (otherwise a single source's is kept).
    CopyFile {
        src: String,
        dst: String,
        overwrite: bool,
        unix_ms: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        append: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object: Option<ObjectMeta>,
    },
    /// Sets the replication factor of the file at `path`, or of every file under the
    /// directory `path`: repair copies what is missing, surplus replicas go.
    SetReplication {
        path: String,
        replication: u32,
    },
    /// Sets a file's kept mode and modification time (those given), or a directory's time.
    SetAttributes {
        path: String,
        mode: Option<u32>,
        mtime_unix_ms: Option<u64>,
    },
    /// Drops an upload that was never committed, at once (`ExpireUploads` does it by age).
    AbortUpload {
        file: FileId,
    },
    /// Deletes like `Delete`, but keeps what it removes: moves `path` to `trash` followed by
    /// `path` (`/.trash/alice/2026-12-06T09:31:00Z/logs/a`), or, when that is taken, to the
    /// first free of `trash.1`, `trash.2`, ... (at most `TRASH_VARIANTS_MAX`). The leader
    /// chooses `trash` (the user's trash bucket of this minute) and purges buckets later.
    MoveToTrash {
        path: String,
        recursive: bool,
        expect_file_id: Option<FileId>,
        trash: String,
        unix_ms: u64,
    },
    /// Applies `command` at most once for `request`: a retry (its first reply lost) gets the
    /// first attempt's result instead of acting again. Without it, a retried delete would
    /// answer "no such file" for the delete it did itself, and a retried rename "not found".
    Once {
        request: RequestId,
        command: Box<Command>,
    },
    /// A user's bearer token (`crate::tokens`). `key` becomes the cluster's token key if it has
    /// none yet (the first token), and is ignored otherwise.
    CreateToken {
        record: crate::tokens::TokenRecord,
        key: crate::tokens::TokenKey,
    },
    /// Revokes token `id`: its record goes, and with it every member's acceptance of it.
    RevokeToken {
        id: u64,
    },
    /// Adds a chunk key (`crate::chunk_tokens`), made by the leader at `made_unix_ms` from its
    /// OS's randomness; the oldest beyond `CHUNK_KEYS_KEPT` goes.
    RotateChunkKey {
        key: crate::tokens::TokenKey,
        made_unix_ms: u64,
    },
    /// Independent commands of several clients in one log entry (the leader groups what
    /// arrives together, so that one fsync carries many). Each is applied on its own, in
    /// order, with its own result: one refused command does not affect the others.
    Batch(Vec<Command>),
}

/// One replica a storage node holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    pub chunk: ChunkId,
    pub size: u64,
    pub sha256: Sha256Digest,
}

/// What a `ReportReplicas` changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportTally {
    /// Replicas now counted that the namespace did not list.
    pub learned: u64,
    /// Replicas to delete: stale, or of a file or upload that is gone.
    pub discarded: u64,
    /// Replicas left alone: already listed, of a chunk not recorded yet, or of an id this
    /// namespace has not handed out.
    pub unchanged: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    TokenCreated(crate::tokens::TokenRecord),
    TokenRevoked(crate::tokens::TokenRecord),
    ReplicasReported(ReportTally),
    FileCreated(FileId),
    FileCommitted(FileSummary),
    FileDeleted(FileSummary),
    DirDeleted {
        path: String,
        files: u64,
        dirs: u64,
    },
    /// `MoveToTrash` moved a file (`file` set, `files` 1, `dirs` 0) or a directory to `to`.
    Trashed {
        path: String,
        to: String,
        file: Option<FileSummary>,
        files: u64,
        dirs: u64,
    },
    /// `SetReplication` changed this many files.
    ReplicationSet {
        files: u64,
    },
    UploadsExpired(u64),
    /// The results of a `Batch`, in its order.
    Batch(Vec<ApplyResult>),
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
    pub sha256: Option<Sha256Digest>,
    /// Absent from snapshots of older versions (in kept `Once` results), hence the default.
    #[serde(default)]
    pub attrs: FileAttrs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<Box<ObjectMeta>>,
}

impl From<&FileRecord> for FileSummary {
    fn from(f: &FileRecord) -> Self {
        FileSummary {
            path: f.path.to_string(),
            id: f.id,
            size: f.size,
            chunk_size: f.chunk_size,
            replication: f.replication,
            chunk_count: f.chunks.len() as u64,
            committed_unix_ms: f.committed_unix_ms,
            sha256: f.sha256(),
            attrs: f.attrs(),
            object: f.object().map(|o| Box::new(o.clone())),
        }
    }
}

/// Why a command was refused. The first group is the caller's fault whatever the state (bad
/// names, bad sizes); the rest say the state does not allow the command now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NamespaceError {
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("invalid upload: {0}")]
    InvalidUpload(String),
    #[error("chunk {index} of upload {file}: {reason}")]
    BadChunk { file: FileId, index: u32, reason: String },
    #[error("cannot move {src} into itself ({dst})")]
    MoveIntoItself { src: String, dst: String },
    #[error("the root directory cannot be {0}")]
    Root(String),

    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{path}: parent directory {parent} does not exist")]
    NoParent { path: String, parent: String },
    #[error("{path}: {conflict} is a file, so {path} cannot be created")]
    ParentIsFile { path: String, conflict: String },
    #[error("{0} is a directory")]
    IsDirectory(String),
    #[error("{0} is a file, not a directory")]
    NotADirectory(String),
    #[error("{0}: directory not empty (delete it recursively to remove its contents)")]
    DirectoryNotEmpty(String),
    #[error("{path} no longer holds file {expected}: it was replaced or removed since it was looked at")]
    FileChanged { path: String, expected: FileId, found: Option<FileId> },
    #[error("upload {0} not found (never created, already committed elsewhere, expired, or deleted)")]
    UploadNotFound(FileId),
    #[error("upload {file} is incomplete: {missing} of {total} chunks not recorded")]
    Incomplete { file: FileId, missing: u64, total: u64 },
    #[error("{max} uploads are already in flight; retry when some have finished")]
    TooManyUploads { max: usize },
    #[error("{max} chunks already have replicas marked bad; retry once some are deleted")]
    TooManyBadReplicas { max: usize },
    #[error("request {seq} of client {client:016x} is too old to tell whether it was applied; look at the current state and decide again")]
    RequestTooOld { client: u64, seq: u64 },
    #[error("this cluster is {current:?}, not {proposed:?}")]
    ClusterIdMismatch { current: String, proposed: String },
    #[error(transparent)]
    Token(#[from] crate::tokens::TokenError),
}

pub type ApplyResult = Result<Outcome, NamespaceError>;

/// What a new file's creation (`CreateFile`, `CreateEmptyFile`) must satisfy whatever the state.
fn validate_create(
    path: &str,
    size: u64,
    chunk_size: u64,
    replication: u32,
    overwrite: bool,
    expect_file_id: Option<FileId>,
    attrs: &FileAttrs,
) -> Result<(), NamespaceError> {
    if let Some(mode) = attrs.mode.filter(|m| *m > MODE_MAX) {
        return Err(NamespaceError::InvalidUpload(format!("mode {mode:o} is more than permission bits ({MODE_MAX:o})")));
    }
    if normalize_path(path)? == ROOT {
        return Err(NamespaceError::IsDirectory(ROOT.into()));
    }
    chunking::validate(size, chunk_size).map_err(|e| NamespaceError::InvalidUpload(e.to_string()))?;
    if !(1..=REPLICATION_MAX).contains(&replication) {
        return Err(NamespaceError::InvalidUpload(format!("replication factor {replication} is outside 1..={REPLICATION_MAX}")));
    }
    if expect_file_id.is_some() && !overwrite {
        return Err(NamespaceError::InvalidUpload("an expected file to replace needs overwrite".into()));
    }
    Ok(())
}

impl Command {
    /// Checks everything that does not depend on the state: paths, sizes, bounds. A command
    /// refused here is refused by `apply` too, whatever the state.
    pub fn validate(&self) -> Result<(), NamespaceError> {
        match self {
            Command::RegisterStorageNode { addr, rack, .. } => {
                if rack.as_ref().is_some_and(|r| r.is_empty() || r.len() > RACK_MAX_BYTES || r.chars().any(char::is_control)) {
                    return Err(NamespaceError::InvalidArgument(format!("rack name must be 1..={RACK_MAX_BYTES} bytes with no control characters")));
                }
                if addr.is_empty() || addr.len() > ADDR_MAX_BYTES {
                    return Err(NamespaceError::InvalidArgument(format!("storage node address must be 1..={ADDR_MAX_BYTES} bytes, not {}", addr.len())));
                }
            }
            Command::SetClusterId { cluster_id } => {
                if cluster_id.is_empty() || cluster_id.len() > CLUSTER_ID_MAX_BYTES || cluster_id.chars().any(char::is_control) {
                    return Err(NamespaceError::InvalidArgument(format!(
                        "cluster id {:?} must be 1..={CLUSTER_ID_MAX_BYTES} bytes with no control characters",
                        crate::limits::echo(cluster_id)
                    )));
                }
            }
            Command::CreateFile { path, size, chunk_size, replication, overwrite, expect_file_id, attrs, .. } => {
                validate_create(path, *size, *chunk_size, *replication, *overwrite, *expect_file_id, attrs)?;
            }
            Command::CreateEmptyFile { path, chunk_size, replication, overwrite, expect_file_id, attrs, object, .. } => {
                validate_create(path, 0, *chunk_size, *replication, *overwrite, *expect_file_id, attrs)?;
                object.as_ref().map_or(Ok(()), |o| o.validate())?;
            }
            Command::RecordChunks { file, chunks } | Command::CommitFile { file, chunks, .. } => {
                if let Command::CommitFile { object: Some(object), .. } = self {
                    object.validate()?;
                }
                if chunks.len() > RECORD_CHUNKS_MAX {
                    return Err(NamespaceError::InvalidUpload(format!("{} chunk records in one command; at most {RECORD_CHUNKS_MAX}", chunks.len())));
                }
                for c in chunks {
                    let bad = |reason: &str| NamespaceError::BadChunk { file: *file, index: c.index, reason: reason.into() };
                    if c.replicas.is_empty() {
                        return Err(bad("no replicas"));
                    }
                    if c.replicas.len() > REPLICATION_MAX as usize {
                        return Err(bad("more replicas than the highest replication factor"));
                    }
                    if c.replicas.iter().collect::<BTreeSet<_>>().len() != c.replicas.len() {
                        return Err(bad("a replica is listed twice"));
                    }
                }
            }
            Command::Mkdir { path, .. } => {
                normalize_path(path)?;
            }
            Command::CreateToken { record, .. } => {
                crate::tokens::check_name(&record.name)?;
                if normalize_path(&record.prefix)? != record.prefix {
                    return Err(NamespaceError::InvalidArgument(format!("token prefix {:?} is not normalized", record.prefix)));
                }
            }
            Command::CopyFile { src, dst, append, object, .. } => {
                let dst = normalize_path(dst)?;
                if append.len() > COPY_APPEND_MAX {
                    return Err(NamespaceError::InvalidArgument(format!("a copy joins at most {} files, not {}", COPY_APPEND_MAX + 1, append.len() + 1)));
                }
                let mut sources = BTreeSet::new();
                for src in std::iter::once(src).chain(append) {
                    let src = normalize_path(src)?;
                    // Onto itself, a copy only makes sense to replace what the gateway keeps.
                    if src == dst && (object.is_none() || !append.is_empty()) {
                        return Err(NamespaceError::InvalidArgument(format!("{src} cannot be copied onto itself")));
                    }
                    if !sources.insert(src) {
                        return Err(NamespaceError::InvalidArgument("a copy joins each file at most once".into()));
                    }
                }
                if dst == ROOT {
                    return Err(NamespaceError::IsDirectory(ROOT.into()));
                }
                if let Some(o) = object {
                    o.validate()?;
                }
            }
            Command::SetReplication { path, replication } => {
                normalize_path(path)?;
                if !(1..=REPLICATION_MAX).contains(replication) {
                    return Err(NamespaceError::InvalidArgument(format!("replication factor {replication} is outside 1..={REPLICATION_MAX}")));
                }
            }
            Command::SetAttributes { path, mode, .. } => {
                normalize_path(path)?;
                if mode.is_some_and(|m| m > MODE_MAX) {
                    return Err(NamespaceError::InvalidArgument(format!("mode {:o} is more than permission bits ({MODE_MAX:o})", mode.unwrap_or(0))));
                }
            }
            Command::AbortUpload { .. } => {}
            Command::MoveToTrash { path, trash, .. } => {
                let path = normalize_path(path)?;
                if path == ROOT {
                    return Err(NamespaceError::Root("moved to the trash".into()));
                }
                let trash = normalize_path(trash)?;
                if !is_under(&trash, TRASH_DIR) || trash == TRASH_DIR {
                    return Err(NamespaceError::InvalidArgument(format!("{trash} is not a trash bucket under {TRASH_DIR}")));
                }
                if is_under(&path, TRASH_DIR) {
                    return Err(NamespaceError::InvalidArgument(format!("{path} is in the trash already: delete it instead")));
                }
            }
            Command::Rename { src, dst, .. } => {
                let (src, dst) = (normalize_path(src)?, normalize_path(dst)?);
                if src == ROOT {
                    return Err(NamespaceError::Root("moved".into()));
                }
                if is_under(&dst, &src) {
                    return Err(NamespaceError::MoveIntoItself { src, dst });
                }
            }
            Command::Delete { path, expect_file_id, .. } => {
                if normalize_path(path)? == ROOT && expect_file_id.is_some() {
                    return Err(NamespaceError::IsDirectory(ROOT.into()));
                }
            }
            Command::ForgetDeletedReplicas { chunks, .. } => {
                if chunks.len() > REPLICA_REPORTS_MAX {
                    return Err(NamespaceError::InvalidArgument(format!("{} deleted replicas in one command; at most {REPLICA_REPORTS_MAX}", chunks.len())));
                }
            }
            Command::ExpireUploads { .. }
            | Command::MarkReplicaBad { .. }
            | Command::SetDraining { .. }
            | Command::ForgetStorageNode { .. }
            | Command::RevokeToken { .. }
            | Command::RotateChunkKey { .. } => {}
            Command::MarkReplicasMissing { chunks, .. } => {
                if chunks.len() > DROP_REPLICAS_MAX {
                    return Err(NamespaceError::InvalidArgument(format!("{} missing replicas in one command; at most {DROP_REPLICAS_MAX}", chunks.len())));
                }
            }
            Command::DropReplicas { drops } => {
                if drops.len() > DROP_REPLICAS_MAX {
                    return Err(NamespaceError::InvalidArgument(format!("{} replicas to drop in one command; at most {DROP_REPLICAS_MAX}", drops.len())));
                }
            }
            Command::ReportReplicas { replicas, .. } => {
                if replicas.len() > REPLICA_REPORTS_MAX {
                    return Err(NamespaceError::InvalidArgument(format!("{} replica reports in one command; at most {REPLICA_REPORTS_MAX}", replicas.len())));
                }
            }
            Command::Once { command, .. } => {
                if matches!(**command, Command::Once { .. } | Command::Batch(_)) {
                    return Err(NamespaceError::InvalidArgument("a request inside a request".into()));
                }
                command.validate()?;
            }
            Command::Batch(commands) => {
                if commands.len() > BATCH_COMMANDS_MAX {
                    return Err(NamespaceError::InvalidArgument(format!("{} commands in a batch; at most {BATCH_COMMANDS_MAX}", commands.len())));
                }
                // Inner commands are validated when each is applied: one bad command must not
                // refuse the others.
                if commands.iter().any(|c| matches!(c, Command::Batch(_))) {
                    return Err(NamespaceError::InvalidArgument("a batch inside a batch".into()));
                }
            }
        }
        Ok(())
    }
}

/// What a replica report means for the namespace (`Namespace::judge_report`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Already listed, with the recorded content.
    Counted,
    /// A valid replica the record does not list yet.
    Learn,
    /// Stale (other content), or of a file or upload that is gone: delete it.
    Discard,
    /// Nothing to decide yet: a chunk of an upload not recorded yet.
    Unknown,
}

/// The whole replicated state. Serialized as a unit for Raft snapshots (its `Serialize` is
/// written by hand, to keep the shape earlier versions read: see `DirRecord`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Namespace {
    #[serde(deserialize_with = "bulk_map::deserialize")]
    files: BTreeMap<ArcStr, Box<FileRecord>>,
    /// Every directory by path, the root included.
    #[serde(deserialize_with = "bulk_map::deserialize")]
    dirs: BTreeMap<String, DirRecord>,
    /// Committed file id → path, so a retried commit finds what it already did.
    #[serde(deserialize_with = "bulk_map::deserialize")]
    paths_by_id: BTreeMap<FileId, ArcStr>,
    uploads: BTreeMap<FileId, Upload>,
    /// Request ids of the uploads in flight (client → seq → upload): an entry lives exactly
    /// as long as its upload, which bounds it. A retry comes while the upload is in flight,
    /// since the client needs the file id to go on.
    uploads_by_request: BTreeMap<u64, BTreeMap<u64, FileId>>,
    storage_nodes: BTreeMap<StorageNodeId, StorageNodeRecord>,
    /// Replicas to delete, per node, until the node confirms.
    garbage: BTreeMap<StorageNodeId, BTreeSet<ChunkId>>,
    next_file_id: u64,
    cluster_id: Option<String>,
    /// Results of `Once` requests, per client, for retries. Bounded: see `SESSIONS_MAX`.
    sessions: BTreeMap<u64, Session>,
    /// Replicas reported corrupt, by chunk: never served. Kept by chunk id, not in the chunk's
    /// record, because a report names only the chunk (and may come for an upload not yet
    /// committed). Entries leave with their file or upload. Bounded by `BAD_REPLICA_CHUNKS_MAX`.
    /// Absent from snapshots of older versions, hence the default.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", with = "map_as_pairs")]
    bad_replicas: BTreeMap<ChunkId, BTreeSet<StorageNodeId>>,
    /// Chunks held by more than the file they were uploaded for, or whose first file is gone
    /// while a copy still holds them (`CopyFile`): every committed file holding each. A chunk
    /// absent here is held by the file its id derives from, if that file is committed. Its
    /// replicas become garbage only when its last holder goes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", with = "map_as_pairs")]
    shared_chunks: BTreeMap<ChunkId, BTreeSet<FileId>>,
    /// `Once` requests applied so far: orders sessions by last use, deterministically.
    applied: u64,
    /// Users' tokens and the key that signs them. Absent from snapshots of older versions and
    /// of clusters that never made one.
    #[serde(default)]
    tokens: crate::tokens::TokenTable,
    /// The keys chunk access tokens are signed with. Absent from snapshots of older versions.
    #[serde(default)]
    chunk_keys: crate::chunk_tokens::ChunkKeys,
}

/// The same fields in the same shape as earlier versions wrote them, with each directory's
/// files among its children again (`DirsOut`).
impl Serialize for Namespace {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use map_as_pairs::Pairs;
        use serde::ser::SerializeStruct;
        let optional = usize::from(!self.bad_replicas.is_empty())
            + usize::from(!self.shared_chunks.is_empty())
            + usize::from(!self.tokens.is_empty())
            + usize::from(!self.chunk_keys.is_empty());
        let mut out = s.serialize_struct("Namespace", 11 + optional)?;
        out.serialize_field("files", &self.files)?;
        out.serialize_field("dirs", &DirsOut(self))?;
        out.serialize_field("paths_by_id", &self.paths_by_id)?;
        out.serialize_field("uploads", &self.uploads)?;
        out.serialize_field("uploads_by_request", &self.uploads_by_request)?;
        out.serialize_field("storage_nodes", &self.storage_nodes)?;
        out.serialize_field("garbage", &self.garbage)?;
        out.serialize_field("next_file_id", &self.next_file_id)?;
        out.serialize_field("cluster_id", &self.cluster_id)?;
        out.serialize_field("sessions", &self.sessions)?;
        if !self.bad_replicas.is_empty() {
            out.serialize_field("bad_replicas", &Pairs(&self.bad_replicas))?;
        }
        if !self.shared_chunks.is_empty() {
            out.serialize_field("shared_chunks", &Pairs(&self.shared_chunks))?;
        }
        out.serialize_field("applied", &self.applied)?;
        if !self.tokens.is_empty() {
            out.serialize_field("tokens", &self.tokens)?;
        }
        if !self.chunk_keys.is_empty() {
            out.serialize_field("chunk_keys", &self.chunk_keys)?;
        }
        out.end()
    }
}

/// A map whose keys JSON cannot take as object keys (chunk ids are byte arrays), as a list of
/// (key, value) pairs.
mod map_as_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(map: &BTreeMap<K, V>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<K, V>, D::Error> {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }

    /// A borrowed map, written as `serialize` writes it.
    pub struct Pairs<'a, K, V>(pub &'a BTreeMap<K, V>);

    impl<K: Serialize, V: Serialize> Serialize for Pairs<'_, K, V> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            serialize(self.0, s)
        }
    }
}

/// A map read from a snapshot, built in one pass instead of key by key: a snapshot lists each
/// map's keys in order, so collecting them first and building the tree from the sorted run
/// costs O(n) and fills every node, where inserting one by one costs O(n log n) comparisons
/// of long paths and leaves nodes half empty. Same JSON as the map; a repeated key keeps its
/// last value, as inserting would.
mod bulk_map {
    use std::collections::BTreeMap;
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{MapAccess, Visitor};
    use serde::{Deserialize, Deserializer};

    /// Entries reserved ahead, at most: the length a snapshot claims is not trusted.
    const RESERVE_MAX: usize = 1 << 16;

    pub fn deserialize<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<K, V>, D::Error> {
        struct Entries<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Visitor<'de> for Entries<K, V> {
            type Value = BTreeMap<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(RESERVE_MAX));
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(entries.into_iter().collect())
            }
        }
        d.deserialize_map(Entries(PhantomData))
    }
}

/// One client's recent `Once` results, by request seq.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    last_used: u64,
    results: BTreeMap<u64, ApplyResult>,
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace {
            files: BTreeMap::new(),
            dirs: BTreeMap::from([(ROOT.to_string(), DirRecord::new(0))]),
            paths_by_id: BTreeMap::new(),
            uploads: BTreeMap::new(),
            uploads_by_request: BTreeMap::new(),
            storage_nodes: BTreeMap::new(),
            garbage: BTreeMap::new(),
            next_file_id: 0,
            cluster_id: None,
            sessions: BTreeMap::new(),
            applied: 0,
            bad_replicas: BTreeMap::new(),
            shared_chunks: BTreeMap::new(),
            tokens: crate::tokens::TokenTable::default(),
            chunk_keys: crate::chunk_tokens::ChunkKeys::default(),
        }
    }
}

impl Namespace {
    /// Users' tokens (`crate::tokens`).
    pub fn tokens(&self) -> &crate::tokens::TokenTable {
        &self.tokens
    }

    /// The keys chunk access tokens are signed with (`crate::chunk_tokens`).
    pub fn chunk_keys(&self) -> &crate::chunk_tokens::ChunkKeys {
        &self.chunk_keys
    }

    pub fn apply(&mut self, command: Command) -> ApplyResult {
        // The log is not trusted: what a server checked before proposing is checked again.
        command.validate()?;
        match command {
            Command::Batch(commands) => Ok(Outcome::Batch(commands.into_iter().map(|c| self.apply(c)).collect())),
            Command::Once { request, command } => self.apply_once(request, *command),
            command => self.apply_one(command),
        }
    }

    fn apply_once(&mut self, request: RequestId, command: Command) -> ApplyResult {
        self.applied += 1;
        let applied = self.applied;
        if let Some(session) = self.sessions.get_mut(&request.client) {
            session.last_used = applied;
            if let Some(result) = session.results.get(&request.seq) {
                if !crate::planted::on(crate::planted::Bug::DoubleApply) {
                    return result.clone();
                }
            }
            let oldest = session.results.keys().next().copied();
            if session.results.len() >= SESSION_RESULTS_MAX && oldest.is_some_and(|o| request.seq < o) {
                return Err(NamespaceError::RequestTooOld { client: request.client, seq: request.seq });
            }
        }
        let result = self.apply_one(command);
        if !self.sessions.contains_key(&request.client) && self.sessions.len() >= SESSIONS_MAX {
            // Forget the client unheard of for longest.
            let idle = self.sessions.iter().min_by_key(|(_, s)| s.last_used).map(|(c, _)| *c).expect("sessions is full");
            self.sessions.remove(&idle);
        }
        let session = self.sessions.entry(request.client).or_default();
        session.last_used = applied;
        session.results.insert(request.seq, result.clone());
        while session.results.len() > SESSION_RESULTS_MAX {
            session.results.pop_first();
        }
        result
    }

    fn apply_one(&mut self, command: Command) -> ApplyResult {
        match command {
            Command::Once { .. } | Command::Batch(_) => Err(NamespaceError::InvalidArgument("a request inside a request".into())),
            Command::RegisterStorageNode { node, addr, capacity_bytes, rack } => {
                if !self.storage_nodes.contains_key(&node) && self.storage_nodes.len() >= STORAGE_NODES_MAX {
                    return Err(NamespaceError::InvalidArgument(format!(
                        "the cluster has {STORAGE_NODES_MAX} storage nodes registered, the most it takes; forget one first"
                    )));
                }
                let draining = self.storage_nodes.get(&node).is_some_and(|n| n.draining);
                self.storage_nodes.insert(node, StorageNodeRecord { id: node, addr, capacity_bytes, rack, draining });
                Ok(Outcome::Done)
            }
            Command::SetDraining { node, draining } => {
                let record = self.storage_nodes.get_mut(&node).ok_or_else(|| NamespaceError::NotFound(format!("storage node {node}")))?;
                record.draining = draining;
                Ok(Outcome::Done)
            }
            Command::ForgetStorageNode { node } => {
                if self.storage_nodes.remove(&node).is_none() {
                    return Err(NamespaceError::NotFound(format!("storage node {node}")));
                }
                for f in self.files.values_mut() {
                    for c in &mut f.chunks {
                        c.replicas.retain(|r| *r != node);
                    }
                }
                for u in self.uploads.values_mut() {
                    for c in u.chunks.values_mut() {
                        c.replicas.retain(|r| *r != node);
                    }
                }
                self.garbage.remove(&node);
                self.bad_replicas.retain(|_, nodes| {
                    nodes.remove(&node);
                    !nodes.is_empty()
                });
                Ok(Outcome::Done)
            }
            Command::CreateToken { record, key } => Ok(Outcome::TokenCreated(self.tokens.create(record, key)?)),
            Command::RevokeToken { id } => Ok(Outcome::TokenRevoked(self.tokens.revoke(id)?)),
            Command::RotateChunkKey { key, made_unix_ms } => {
                self.chunk_keys.rotate(key, made_unix_ms);
                Ok(Outcome::Done)
            }
            Command::SetClusterId { cluster_id } => match &self.cluster_id {
                Some(current) if *current != cluster_id => Err(NamespaceError::ClusterIdMismatch { current: current.clone(), proposed: cluster_id }),
                Some(_) => Ok(Outcome::Done),
                None => {
                    self.cluster_id = Some(cluster_id);
                    Ok(Outcome::Done)
                }
            },
            Command::CreateFile { path, size, chunk_size, replication, overwrite, expect_file_id, request_id, unix_ms, attrs } => {
                let path = normalize_path(&path)?;
                if let Some(r) = request_id {
                    if let Some(&id) = self.uploads_by_request.get(&r.client).and_then(|seqs| seqs.get(&r.seq)) {
                        let same = self.uploads.get(&id).is_some_and(|u| {
                            (&u.path, u.size, u.chunk_size, u.replication, u.overwrite, u.expect_file_id)
                                == (&path, size, chunk_size, replication, overwrite, expect_file_id)
                        });
                        if !same {
                            return Err(NamespaceError::InvalidUpload(format!("request {}/{} was already used for a different upload", r.client, r.seq)));
                        }
                        return Ok(Outcome::FileCreated(id));
                    }
                }
                if self.uploads.len() >= UPLOADS_MAX {
                    return Err(NamespaceError::TooManyUploads { max: UPLOADS_MAX });
                }
                self.check_path_free(&path, overwrite)?;
                self.check_expected(&path, expect_file_id)?;
                self.next_file_id += 1;
                let id = FileId(self.next_file_id);
                if let Some(r) = request_id {
                    self.uploads_by_request.entry(r.client).or_default().insert(r.seq, id);
                }
                self.uploads.insert(
                    id,
                    Upload {
                        id,
                        path,
                        size,
                        chunk_size,
                        replication,
                        overwrite,
                        expect_file_id,
                        request: request_id,
                        created_unix_ms: unix_ms,
                        chunks: BTreeMap::new(),
                        attrs,
                    },
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
                    let quorum = write_quorum(upload.replication) as usize;
                    if c.replicas.len() < quorum {
                        return Err(bad(format!(
                            "{} confirmed replicas, below the write quorum of {quorum} for replication {}",
                            c.replicas.len(),
                            upload.replication
                        )));
                    }
                    if c.size != expected {
                        return Err(bad(format!("size {} but expected {expected}", c.size)));
                    }
                    let last = u64::from(c.index) + 1 == chunking::chunk_count(upload.size, upload.chunk_size);
                    match c.sum {
                        SumKind::Standalone => {}
                        _ if !Chain::applies(upload.size, upload.chunk_size) => {
                            return Err(bad("a chained checksum in a file that cannot be chained".into()));
                        }
                        SumKind::Chained if last => return Err(bad("the last chunk's chained checksum must be marked last".into())),
                        SumKind::ChainedLast if !last => return Err(bad("only the last chunk's chained checksum is the file's".into())),
                        _ => {}
                    }
                    if let Some(unknown) = c.replicas.iter().find(|r| !self.storage_nodes.contains_key(r)) {
                        return Err(bad(format!("unknown storage node {unknown}")));
                    }
                }
                if let Some(upload) = self.uploads.get_mut(&file) {
                    for c in chunks {
                        upload.chunks.insert(c.index, c);
                    }
                }
                Ok(Outcome::Done)
            }
            Command::CommitFile { file, unix_ms, sha256, chunks, object } => {
                // A retried commit finds no upload: it is answered below, the records ignored.
                if !chunks.is_empty() && self.uploads.contains_key(&file) {
                    self.apply_one(Command::RecordChunks { file, chunks })?;
                }
                let Some(upload) = self.uploads.get(&file) else {
                    // A retried commit whose first attempt went through.
                    if let Some(f) = self.paths_by_id.get(&file).and_then(|p| self.files.get(p)) {
                        return Ok(Outcome::FileCommitted(FileSummary::from(&**f)));
                    }
                    return Err(NamespaceError::UploadNotFound(file));
                };
                let total = chunking::chunk_count(upload.size, upload.chunk_size);
                let missing = total.saturating_sub(upload.chunks.len() as u64);
                if missing > 0 {
                    return Err(NamespaceError::Incomplete { file, missing, total });
                }
                // A chained chunk hashes on from the one before it, which must be chained too;
                // and a chained last chunk's checksum is the file's SHA-256.
                let mut prev: Option<&ChunkRecord> = None;
                for c in upload.chunks.values() {
                    if c.sum != SumKind::Standalone && c.index > 0 && prev.is_none_or(|p| p.sum != SumKind::Chained) {
                        let reason = "a chained checksum after a chunk that is not chained".into();
                        return Err(NamespaceError::BadChunk { file, index: c.index, reason });
                    }
                    if c.sum == SumKind::ChainedLast && sha256.is_some_and(|s| s != c.sha256) {
                        let reason = "the file's SHA-256 differs from its last chunk's chained checksum".into();
                        return Err(NamespaceError::BadChunk { file, index: c.index, reason });
                    }
                    prev = Some(c);
                }
                self.check_path_free(&upload.path, upload.overwrite)?;
                self.check_expected(&upload.path, upload.expect_file_id)?;
                let Some(upload) = self.remove_upload(file) else {
                    return Err(NamespaceError::UploadNotFound(file));
                };
                let record = FileRecord::from(FileRecordParts {
                    path: upload.path.into(),
                    id: upload.id,
                    size: upload.size,
                    chunk_size: upload.chunk_size,
                    replication: upload.replication,
                    committed_unix_ms: unix_ms,
                    chunks: upload.chunks.into_values().collect(),
                    sha256,
                    attrs: upload.attrs,
                    shared: None,
                    object,
                });
                Ok(Outcome::FileCommitted(self.commit_record(record, unix_ms)))
            }
            Command::CreateEmptyFile { path, chunk_size, replication, overwrite, expect_file_id, unix_ms, attrs, object } => {
                let path = normalize_path(&path)?;
                self.check_path_free(&path, overwrite)?;
                self.check_expected(&path, expect_file_id)?;
                self.next_file_id += 1;
                let record = FileRecord::from(FileRecordParts {
                    path: path.into(),
                    id: FileId(self.next_file_id),
                    size: 0,
                    chunk_size,
                    replication,
                    committed_unix_ms: unix_ms,
                    chunks: Box::default(),
                    sha256: Some(Sha256Digest::of(&[])),
                    attrs,
                    shared: None,
                    object,
                });
                Ok(Outcome::FileCommitted(self.commit_record(record, unix_ms)))
            }
            Command::Mkdir { path, parents, unix_ms } => {
                let path = normalize_path(&path)?;
                match self.kind(&path) {
                    Some(EntryKind::Dir) if parents => return Ok(Outcome::Done),
                    Some(EntryKind::Dir) => return Err(NamespaceError::AlreadyExists(path)),
                    Some(EntryKind::File) => return Err(NamespaceError::NotADirectory(path)),
                    None => {}
                }
                if let Some(file) = ancestors(&path).find(|a| self.files.contains_key(*a)) {
                    return Err(NamespaceError::ParentIsFile { path: path.clone(), conflict: file.to_string() });
                }
                let parent = parent_of(&path).0;
                if !parents && !self.dirs.contains_key(parent) {
                    return Err(NamespaceError::NoParent { parent: parent.to_string(), path });
                }
                self.ensure_dir(&path, unix_ms);
                Ok(Outcome::Done)
            }
            Command::Rename { src, dst, unix_ms } => {
                let (src, dst) = (normalize_path(&src)?, normalize_path(&dst)?);
                let kind = self.kind(&src).ok_or_else(|| NamespaceError::NotFound(src.clone()))?;
                if self.kind(&dst).is_some() {
                    return Err(NamespaceError::AlreadyExists(dst));
                }
                let dst_parent = parent_of(&dst).0;
                if self.files.contains_key(dst_parent) {
                    return Err(NamespaceError::ParentIsFile { conflict: dst_parent.to_string(), path: dst });
                }
                if !self.dirs.contains_key(dst_parent) {
                    return Err(NamespaceError::NoParent { parent: dst_parent.to_string(), path: dst });
                }
                match kind {
                    EntryKind::File => {
                        if let Some(mut record) = self.remove_file(&src) {
                            record.path = dst.into();
                            self.insert_file(record, unix_ms);
                        }
                    }
                    EntryKind::Dir => self.move_dir(&src, &dst, unix_ms),
                }
                Ok(Outcome::Done)
            }
            Command::Delete { path, recursive, expect_file_id } => {
                let path = normalize_path(&path)?;
                self.check_deletable(&path, recursive, expect_file_id)?;
                if let Some(old) = self.remove_file(&path) {
                    let summary = FileSummary::from(&old);
                    self.discard(old);
                    return Ok(Outcome::FileDeleted(summary));
                }
                let (files, dirs) = self.delete_dir(&path);
                Ok(Outcome::DirDeleted { path, files, dirs })
            }
            Command::ExpireUploads { now_unix_ms, older_than_ms } => {
                let cutoff = now_unix_ms.saturating_sub(older_than_ms);
                let expired: Vec<FileId> = self.uploads.values().filter(|u| u.created_unix_ms < cutoff).map(|u| u.id).collect();
                for id in &expired {
                    if let Some(upload) = self.remove_upload(*id) {
                        self.drop_upload(upload);
                    }
                }
                Ok(Outcome::UploadsExpired(expired.len() as u64))
            }
            Command::AbortUpload { file } => {
                let upload = self.remove_upload(file).ok_or(NamespaceError::UploadNotFound(file))?;
                self.drop_upload(upload);
                Ok(Outcome::Done)
            }
            Command::CopyFile { src, dst, overwrite, unix_ms, append, object } => {
                let dst = normalize_path(&dst)?;
                let mut sources = Vec::with_capacity(1 + append.len());
                for src in std::iter::once(src).chain(append) {
                    let src = normalize_path(&src)?;
                    let Some(source) = self.files.get(src.as_str()) else {
                        return Err(if self.dirs.contains_key(&src) { NamespaceError::IsDirectory(src) } else { NamespaceError::NotFound(src) });
                    };
                    sources.push(source.clone());
                }
                // Checked before anything changes: a refused command changes nothing.
                let joined = sources.len() > 1;
                let mut seen = BTreeSet::new();
                for source in &sources {
                    for c in source.chunks.iter() {
                        if joined && !c.sum.is_standalone() {
                            let reason = format!("{} has chained checksums, which cannot be joined to other files' chunks", source.path);
                            return Err(NamespaceError::InvalidArgument(reason));
                        }
                        if !seen.insert(source.chunk_id(c.index)) {
                            return Err(NamespaceError::InvalidArgument(format!("{} shares a chunk with another file joined", source.path)));
                        }
                    }
                }
                self.check_path_free(&dst, overwrite)?;
                self.next_file_id += 1;
                let id = FileId(self.next_file_id);
                let mut shared = BTreeMap::new();
                let mut chunks = Vec::with_capacity(seen.len());
                for source in &sources {
                    for c in source.chunks.iter() {
                        let chunk = source.chunk_id(c.index);
                        let index = chunks.len() as u32;
                        shared.insert(index, chunk);
                        // Absent: the source is the file the chunk was uploaded for, its only holder.
                        self.shared_chunks.entry(chunk).or_insert_with(|| BTreeSet::from([source.id])).insert(id);
                        chunks.push(ChunkRecord { index, ..c.clone() });
                    }
                }
                let record = if joined {
                    FileRecord::from(FileRecordParts {
                        path: dst.as_str().into(),
                        id,
                        size: sources.iter().map(|s| s.size).sum(),
                        chunk_size: sources.iter().map(|s| s.chunk_size).max().unwrap_or(chunking::DEFAULT_CHUNK_SIZE),
                        replication: sources[0].replication,
                        committed_unix_ms: unix_ms,
                        chunks: chunks.into(),
                        sha256: None,
                        attrs: FileAttrs::default(),
                        shared: Some(Box::new(shared)),
                        object: object.map(Box::new),
                    })
                } else {
                    let mut record = *sources.pop().expect("one source");
                    (record.path, record.id, record.committed_unix_ms) = (dst.as_str().into(), id, unix_ms);
                    record.set_shared(shared);
                    if let Some(object) = object {
                        record.set_object(object);
                    }
                    record
                };
                // Only now, with the new file holding its chunks: a file copied onto itself (S3's
                // CopyObject that replaces an object's metadata) keeps them.
                if let Some(old) = self.remove_file(&dst) {
                    self.discard(old);
                }
                let summary = FileSummary::from(&record);
                self.insert_file(record, unix_ms);
                Ok(Outcome::FileCommitted(summary))
            }
            Command::SetReplication { path, replication } => {
                let path = normalize_path(&path)?;
                let targets: Vec<String> = if self.files.contains_key(path.as_str()) {
                    vec![path]
                } else if self.dirs.contains_key(&path) {
                    keys_under(&self.files, &subtree_prefix(&path)).collect()
                } else {
                    return Err(NamespaceError::NotFound(path));
                };
                for t in &targets {
                    if let Some(f) = self.files.get_mut(t.as_str()) {
                        f.replication = replication;
                    }
                }
                Ok(Outcome::ReplicationSet { files: targets.len() as u64 })
            }
            Command::SetAttributes { path, mode, mtime_unix_ms } => {
                let path = normalize_path(&path)?;
                if let Some(f) = self.files.get_mut(path.as_str()) {
                    let old = f.attrs();
                    f.set_attrs(FileAttrs { mode: mode.or(old.mode), mtime_unix_ms: mtime_unix_ms.or(old.mtime_unix_ms) });
                } else if let Some(d) = self.dirs.get_mut(&path) {
                    if let Some(t) = mtime_unix_ms {
                        d.modified_unix_ms = t;
                    }
                } else {
                    return Err(NamespaceError::NotFound(path));
                }
                Ok(Outcome::Done)
            }
            Command::MoveToTrash { path, recursive, expect_file_id, trash, unix_ms } => {
                let (path, trash) = (normalize_path(&path)?, normalize_path(&trash)?);
                self.check_deletable(&path, recursive, expect_file_id)?;
                let kind = self.kind(&path).ok_or_else(|| NamespaceError::NotFound(path.clone()))?;
                let variants = (0..=TRASH_VARIANTS_MAX).map(|n| if n == 0 { format!("{trash}{path}") } else { format!("{trash}.{n}{path}") });
                let mut too_long = None;
                let mut to = None;
                for dst in variants {
                    if let Err(e) = normalize_path(&dst) {
                        too_long = Some(e);
                        break;
                    }
                    if self.kind(&dst).is_none() && !ancestors(&dst).any(|a| self.files.contains_key(a)) {
                        to = Some(dst);
                        break;
                    }
                }
                let Some(to) = to else {
                    return Err(too_long.unwrap_or_else(|| {
                        NamespaceError::InvalidArgument(format!("no free place for {path} in the trash bucket {trash}: delete it instead"))
                    }));
                };
                let file = self.files.get(path.as_str()).map(|f| FileSummary::from(&**f));
                let (files, dirs) = match kind {
                    EntryKind::File => (1, 0),
                    EntryKind::Dir => {
                        let prefix = subtree_prefix(&path);
                        (keys_under(&self.files, &prefix).count() as u64, keys_under(&self.dirs, &prefix).count() as u64 + 1)
                    }
                };
                self.ensure_dir(parent_of(&to).0, unix_ms);
                match kind {
                    EntryKind::File => {
                        if let Some(mut record) = self.remove_file(&path) {
                            record.path = to.as_str().into();
                            self.insert_file(record, unix_ms);
                        }
                    }
                    EntryKind::Dir => self.move_dir(&path, &to, unix_ms),
                }
                Ok(Outcome::Trashed { path, to, file, files, dirs })
            }
            Command::MarkReplicaBad { chunk, node } => {
                if !self.storage_nodes.contains_key(&node) {
                    return Err(NamespaceError::InvalidArgument(format!("storage node {node} is not registered")));
                }
                if !self.bad_replicas.contains_key(&chunk) && self.bad_replicas.len() >= BAD_REPLICA_CHUNKS_MAX {
                    return Err(NamespaceError::TooManyBadReplicas { max: BAD_REPLICA_CHUNKS_MAX });
                }
                self.bad_replicas.entry(chunk).or_default().insert(node);
                Ok(Outcome::Done)
            }
            Command::ReportReplicas { node, replicas } => {
                if !self.storage_nodes.contains_key(&node) {
                    return Err(NamespaceError::InvalidArgument(format!("storage node {node} is not registered")));
                }
                let mut tally = ReportTally::default();
                for report in replicas {
                    match self.judge_report(node, &report) {
                        Verdict::Counted => tally.unchanged += 1,
                        Verdict::Unknown => tally.unchanged += 1,
                        Verdict::Learn => {
                            self.update_chunk(report.chunk, |record| record.replicas.push(node));
                            tally.learned += 1;
                        }
                        Verdict::Discard => {
                            self.update_chunk(report.chunk, |record| record.replicas.retain(|r| *r != node));
                            self.garbage.entry(node).or_default().insert(report.chunk);
                            tally.discarded += 1;
                        }
                    }
                }
                Ok(Outcome::ReplicasReported(tally))
            }
            Command::MarkReplicasMissing { node, chunks } => {
                for chunk in chunks {
                    let listed = self.chunk_record(chunk).is_some_and(|(_, r)| r.replicas.contains(&node));
                    if !listed || (!self.bad_replicas.contains_key(&chunk) && self.bad_replicas.len() >= BAD_REPLICA_CHUNKS_MAX) {
                        continue;
                    }
                    self.bad_replicas.entry(chunk).or_default().insert(node);
                }
                Ok(Outcome::Done)
            }
            Command::DropReplicas { drops } => {
                for (chunk, node) in drops {
                    let bad = self.bad_replicas.get(&chunk).cloned().unwrap_or_default();
                    let Some((replication, record)) = self.chunk_record(chunk) else { continue };
                    if !record.replicas.contains(&node) {
                        continue;
                    }
                    // Checked here, on the committed state, so that two plans racing (one
                    // not applied yet when the next is made) never drop below the factor.
                    let good = record.replicas.iter().filter(|r| !bad.contains(r)).count();
                    let allowed =
                        if bad.contains(&node) { good >= 1 } else { good > replication as usize } || crate::planted::on(crate::planted::Bug::SurplusDropsValid);
                    if !allowed {
                        continue;
                    }
                    self.update_chunk(chunk, |record| record.replicas.retain(|r| *r != node));
                    if let Some(bad) = self.bad_replicas.get_mut(&chunk) {
                        bad.remove(&node);
                        if bad.is_empty() {
                            self.bad_replicas.remove(&chunk);
                        }
                    }
                    self.garbage.entry(node).or_default().insert(chunk);
                }
                Ok(Outcome::Done)
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

    /// What a storage node's word that it holds `report` means here (see `ReportReplicas`).
    /// Pure: the leader uses it to leave out reports that would change nothing.
    pub fn judge_report(&self, node: StorageNodeId, report: &ReplicaReport) -> Verdict {
        let Some((file, index)) = report.chunk.owner() else {
            // Not an id any namespace hands out: nothing of ours.
            return Verdict::Discard;
        };
        if file.0 > self.next_file_id {
            // Not handed out yet, by this state: a report can't come before the upload that
            // made the chunk, so this is noise; leave it rather than guess.
            return Verdict::Unknown;
        }
        let (size, chunk_size, record) = if let Some(upload) = self.uploads.get(&file) {
            (upload.size, upload.chunk_size, upload.chunks.get(&index))
        } else if let Some(f) = self.holders(report.chunk).first().and_then(|h| self.paths_by_id.get(h)).and_then(|p| self.files.get(p)) {
            match Self::record_in(f, report.chunk) {
                Some(record) => (f.size, f.chunk_size, Some(record)),
                // Its file holds another chunk at that index (a copy's): not ours.
                None => return Verdict::Discard,
            }
        } else {
            // Every file or upload holding it is gone: deleted, replaced or expired.
            return Verdict::Discard;
        };
        if chunking::chunk_len(size, chunk_size, index).is_none() {
            return Verdict::Discard;
        }
        let Some(record) = record else { return Verdict::Unknown };
        if self.garbage.get(&node).is_some_and(|g| g.contains(&report.chunk)) {
            // Its deletion is under way (a reply may already carry it): re-admitting it now
            // would list a replica about to vanish.
            return Verdict::Unknown;
        }
        if record.size != report.size || record.sha256 != report.sha256 {
            return Verdict::Discard;
        }
        if record.replicas.contains(&node) {
            Verdict::Counted
        } else if record.replicas.len() >= REPLICATION_MAX as usize {
            // A record never lists more replicas than the highest replication factor.
            Verdict::Unknown
        } else {
            Verdict::Learn
        }
    }

    /// The committed files holding `chunk`, by id (see `shared_chunks`).
    fn holders(&self, chunk: ChunkId) -> Vec<FileId> {
        if let Some(holders) = self.shared_chunks.get(&chunk) {
            return holders.iter().copied().collect();
        }
        match chunk.owner() {
            Some((file, _)) if self.paths_by_id.contains_key(&file) => vec![file],
            _ => Vec::new(),
        }
    }

    /// `file`'s record of `chunk`, if it holds it.
    fn record_in(f: &FileRecord, chunk: ChunkId) -> Option<&ChunkRecord> {
        f.position_of(chunk).and_then(|p| f.chunks.get(p))
    }

    /// A record of `chunk` (its upload's, or any committed holder's: they list the same
    /// replicas) and the chunk's replication factor: the highest of its holders'.
    fn chunk_record(&self, chunk: ChunkId) -> Option<(u32, &ChunkRecord)> {
        let (file, index) = chunk.owner()?;
        if let Some(upload) = self.uploads.get(&file) {
            return upload.chunks.get(&index).map(|r| (upload.replication, r));
        }
        let mut found = None;
        for holder in self.holders(chunk) {
            let Some(f) = self.paths_by_id.get(&holder).and_then(|p| self.files.get(p)) else { continue };
            let Some(record) = Self::record_in(f, chunk) else { continue };
            found = match found {
                None => Some((f.replication, record)),
                Some((r, first)) => Some((f.replication.max(r), first)),
            };
        }
        found
    }

    /// The chunk's replication factor, as `chunk_record` says.
    pub fn chunk_replication(&self, chunk: ChunkId) -> Option<u32> {
        self.chunk_record(chunk).map(|(r, _)| r)
    }

    /// Whether more than the file it was uploaded for holds `chunk` (or a copy holds it alone).
    pub fn is_shared(&self, chunk: ChunkId) -> bool {
        self.shared_chunks.contains_key(&chunk)
    }

    /// Whether `file` is the holder of `chunk` that speaks for it (the lowest id): what visits
    /// every chunk once, not once per file sharing it, looks at its records only.
    pub fn speaks_for(&self, file: FileId, chunk: ChunkId) -> bool {
        match self.shared_chunks.get(&chunk) {
            Some(holders) => holders.first() == Some(&file),
            None => true,
        }
    }

    /// Applies `change` to every record of `chunk`: its upload's, or each committed holder's,
    /// so that files sharing a chunk keep listing the same replicas.
    fn update_chunk(&mut self, chunk: ChunkId, mut change: impl FnMut(&mut ChunkRecord)) {
        let Some((file, index)) = chunk.owner() else { return };
        if let Some(upload) = self.uploads.get_mut(&file) {
            if let Some(record) = upload.chunks.get_mut(&index) {
                change(record);
            }
            return;
        }
        for holder in self.holders(chunk) {
            let Some(path) = self.paths_by_id.get(&holder) else { continue };
            let Some(f) = self.files.get_mut(path) else { continue };
            let Some(position) = f.position_of(chunk) else { continue };
            if let Some(record) = f.chunks.get_mut(position) {
                change(record);
            }
        }
    }

    /// A file leaves the namespace: its replicas become garbage on their nodes.
    fn discard(&mut self, file: FileRecord) {
        self.paths_by_id.remove(&file.id);
        for c in &file.chunks {
            let id = file.chunk_id(c.index);
            if let Some(holders) = self.shared_chunks.get_mut(&id) {
                holders.remove(&file.id);
                if !holders.is_empty() {
                    // Another file still holds it: its replicas stay. Held by the file it was
                    // uploaded for alone, it is an ordinary chunk again.
                    let owner = id.owner().map(|(f, _)| f);
                    if holders.len() == 1 && holders.first() == owner.as_ref() {
                        self.shared_chunks.remove(&id);
                    }
                    continue;
                }
                self.shared_chunks.remove(&id);
            }
            self.bad_replicas.remove(&id);
            for node in &c.replicas {
                self.garbage.entry(*node).or_default().insert(id);
            }
        }
    }

    /// An upload leaves without a commit: its replicas become garbage.
    fn drop_upload(&mut self, upload: Upload) {
        for c in upload.chunks.values() {
            let chunk = ChunkId::derive(upload.id, c.index);
            self.bad_replicas.remove(&chunk);
            for node in &c.replicas {
                self.garbage.entry(*node).or_default().insert(chunk);
            }
        }
    }

    /// What `Delete` (and `MoveToTrash`) of `path` requires: it exists, is still the file the
    /// caller saw, and is not a directory with something in it unless `recursive`.
    fn check_deletable(&self, path: &str, recursive: bool, expect_file_id: Option<FileId>) -> Result<(), NamespaceError> {
        if let Some(expected) = expect_file_id {
            match self.files.get(path) {
                Some(f) if f.id == expected => {}
                Some(f) => return Err(NamespaceError::FileChanged { path: path.to_string(), expected, found: Some(f.id) }),
                None if self.dirs.contains_key(path) => return Err(NamespaceError::FileChanged { path: path.to_string(), expected, found: None }),
                None => return Err(NamespaceError::NotFound(path.to_string())),
            }
        }
        if self.files.contains_key(path) {
            return Ok(());
        }
        let Some(dir) = self.dirs.get(path) else {
            return Err(NamespaceError::NotFound(path.to_string()));
        };
        if !recursive && (!dir.subdirs.is_empty() || self.files_in(path, "").next().is_some()) {
            return Err(NamespaceError::DirectoryNotEmpty(path.to_string()));
        }
        if !recursive && path == ROOT {
            return Err(NamespaceError::Root("deleted (delete it recursively to empty it)".into()));
        }
        Ok(())
    }

    fn remove_upload(&mut self, id: FileId) -> Option<Upload> {
        let upload = self.uploads.remove(&id)?;
        if let Some(r) = upload.request {
            if let Some(seqs) = self.uploads_by_request.get_mut(&r.client) {
                seqs.remove(&r.seq);
                if seqs.is_empty() {
                    self.uploads_by_request.remove(&r.client);
                }
            }
        }
        Some(upload)
    }

    /// Takes the file at `path` out of the tree (and of the id index); the caller discards it
    /// or puts it back elsewhere.
    fn remove_file(&mut self, path: &str) -> Option<FileRecord> {
        let record = self.files.remove(path)?;
        self.paths_by_id.remove(&record.id);
        Some(*record)
    }

    /// Puts a committed file at its path, in place of (and discarding) a file there.
    fn commit_record(&mut self, record: FileRecord, unix_ms: u64) -> FileSummary {
        let summary = FileSummary::from(&record);
        if let Some(old) = self.remove_file(&record.path) {
            self.discard(old);
        }
        self.insert_file(record, unix_ms);
        summary
    }

    /// Puts a file at its path, creating missing parents. The caller checked that no
    /// directory is in the way and that the path is free.
    fn insert_file(&mut self, record: FileRecord, unix_ms: u64) {
        self.ensure_dir(parent_of(&record.path).0, unix_ms);
        // One allocation of the path, shared by the tree and the id index.
        let key = record.path.clone();
        self.paths_by_id.insert(record.id, key.clone());
        self.files.insert(key, Box::new(record));
    }

    /// Creates `dir` and its missing ancestors. The caller checked that none is a file.
    fn ensure_dir(&mut self, dir: &str, unix_ms: u64) {
        for d in ancestors(dir).chain(std::iter::once(dir)) {
            if d == ROOT || self.dirs.contains_key(d) {
                continue;
            }
            self.dirs.insert(d.to_string(), DirRecord::new(unix_ms));
            let (parent, name) = parent_of(d);
            if let Some(p) = self.dirs.get_mut(parent) {
                p.subdirs.insert(name.to_string());
            }
        }
    }

    /// Moves the directory `src` and everything under it to `dst`, which the caller checked is
    /// free, outside `src`, and has a parent directory. Costs O(subtree · log n).
    fn move_dir(&mut self, src: &str, dst: &str, unix_ms: u64) {
        let prefix = subtree_prefix(src);
        let moved_dirs: Vec<String> = std::iter::once(src.to_string()).chain(keys_under(&self.dirs, &prefix)).collect();
        let moved_files: Vec<String> = keys_under(&self.files, &prefix).collect();
        let renamed = |old: &str| format!("{dst}{}", &old[src.len()..]);
        for old in moved_dirs {
            if let Some(mut dir) = self.dirs.remove(&old) {
                if old == src {
                    dir.modified_unix_ms = unix_ms;
                }
                self.dirs.insert(renamed(&old), dir);
            }
        }
        for old in moved_files {
            if let Some(mut record) = self.files.remove(old.as_str()) {
                record.path = renamed(&old).into();
                let key = record.path.clone();
                self.paths_by_id.insert(record.id, key.clone());
                self.files.insert(key, record);
            }
        }
        let (src_parent, src_name) = parent_of(src);
        if let Some(p) = self.dirs.get_mut(src_parent) {
            p.subdirs.remove(src_name);
        }
        let (dst_parent, dst_name) = parent_of(dst);
        if let Some(p) = self.dirs.get_mut(dst_parent) {
            p.subdirs.insert(dst_name.to_string());
        }
    }

    /// Deletes the directory `path` with everything under it (the root is only emptied).
    /// Returns how many files and directories went.
    fn delete_dir(&mut self, path: &str) -> (u64, u64) {
        let prefix = subtree_prefix(path);
        let files: Vec<String> = keys_under(&self.files, &prefix).collect();
        let mut dirs: Vec<String> = keys_under(&self.dirs, &prefix).filter(|d| d != ROOT).collect();
        let file_count = files.len() as u64;
        for f in files {
            if let Some(old) = self.files.remove(f.as_str()) {
                self.discard(*old);
            }
        }
        if path != ROOT {
            dirs.push(path.to_string());
            let (parent, name) = parent_of(path);
            if let Some(p) = self.dirs.get_mut(parent) {
                p.subdirs.remove(name);
            }
        }
        let dir_count = dirs.len() as u64;
        for d in dirs {
            self.dirs.remove(&d);
        }
        if let Some(root) = self.dirs.get_mut(ROOT) {
            if path == ROOT {
                root.subdirs.clear();
            }
        }
        (file_count, dir_count)
    }

    /// The path can hold a new file: not a directory, no file there (unless replacing), no
    /// file above it. Missing parents are fine: the commit creates them.
    fn check_path_free(&self, path: &str, overwrite: bool) -> Result<(), NamespaceError> {
        if self.dirs.contains_key(path) {
            return Err(NamespaceError::IsDirectory(path.to_string()));
        }
        if self.files.contains_key(path) && !overwrite {
            return Err(NamespaceError::AlreadyExists(path.to_string()));
        }
        if let Some(file) = ancestors(path).find(|a| self.files.contains_key(*a)) {
            return Err(NamespaceError::ParentIsFile { path: path.to_string(), conflict: file.to_string() });
        }
        Ok(())
    }

    /// With `expected` set, `path` still holds that file.
    fn check_expected(&self, path: &str, expected: Option<FileId>) -> Result<(), NamespaceError> {
        let Some(expected) = expected else { return Ok(()) };
        match self.files.get(path) {
            Some(f) if f.id == expected => Ok(()),
            other => Err(NamespaceError::FileChanged { path: path.to_string(), expected, found: other.map(|f| f.id) }),
        }
    }

    // ---- reads -------------------------------------------------------------------------

    pub fn file(&self, path: &str) -> Option<&FileRecord> {
        self.files.get(path).map(|f| &**f)
    }

    /// What `path` (normalized) names, if anything.
    pub fn kind(&self, path: &str) -> Option<EntryKind> {
        if self.files.contains_key(path) {
            Some(EntryKind::File)
        } else if self.dirs.contains_key(path) {
            Some(EntryKind::Dir)
        } else {
            None
        }
    }

    /// Where upload `file` goes, or, once committed, where its file is.
    pub fn path_of_upload(&self, file: FileId) -> Option<&str> {
        self.uploads.get(&file).map(|u| u.path.as_str()).or_else(|| self.paths_by_id.get(&file).map(|p| p.as_str()))
    }

    pub fn upload(&self, file: FileId) -> Option<&Upload> {
        self.uploads.get(&file)
    }

    pub fn uploads(&self) -> impl Iterator<Item = &Upload> {
        self.uploads.values()
    }

    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// Files at `dir` or below it, in path order, after `start_after`, at most `limit`.
    /// Returns whether more remain. `dir` may also name a single file.
    pub fn list(&self, dir: &str, start_after: &str, limit: usize) -> (Vec<&FileRecord>, bool) {
        let dir = dir.trim_end_matches('/');
        if let Some(file) = self.files.get(dir) {
            // A file has nothing below it.
            let page = if start_after < dir { vec![&**file] } else { vec![] };
            return (page, false);
        }
        let under = format!("{dir}/");
        let from = if start_after >= under.as_str() { Bound::Excluded(start_after) } else { Bound::Included(under.as_str()) };
        let mut matching = self.files.range::<str, _>((from, Bound::Unbounded)).take_while(|(p, _)| p.starts_with(&under)).map(|(_, f)| &**f);
        let page: Vec<_> = matching.by_ref().take(limit).collect();
        let more = matching.next().is_some();
        (page, more)
    }

    /// The entries directly under the directory `dir`, by name, after the name `start_after`,
    /// at most `limit`, and whether more remain. A file lists as itself. O(page · log n).
    pub fn list_dir(&self, dir: &str, start_after: &str, limit: usize) -> Result<(Vec<DirEntry>, bool), NamespaceError> {
        let dir = normalize_path(dir)?;
        if let Some(f) = self.files.get(dir.as_str()) {
            let entry = self.file_entry(f);
            let page = if start_after < entry.name.as_str() && limit > 0 { vec![entry] } else { vec![] };
            return Ok((page, false));
        }
        let record = self.dirs.get(&dir).ok_or_else(|| NamespaceError::NotFound(dir.clone()))?;
        let files = self.files_in(&dir, start_after).map(|(name, f)| (name, self.file_entry(f)));
        let subdirs = record.subdirs.range::<str, _>((Bound::Excluded(start_after), Bound::Unbounded)).filter_map(|name| {
            let path = child_path(&dir, name);
            self.dirs.get(&path).map(|d| (name.as_str(), dir_entry(&path, d)))
        });
        Ok(page_of(merge_sorted(files, subdirs).map(|(_, entry)| entry), limit))
    }

    /// The files directly in the directory `dir` (normalized), by name, after the name
    /// `start_after`. They lie together in `files` under the directory's prefix, among its
    /// subdirectories' files, which are skipped a subtree at a time: O(log n) per file listed
    /// and per subdirectory passed.
    fn files_in<'a>(&'a self, dir: &str, start_after: &str) -> impl Iterator<Item = (&'a str, &'a FileRecord)> + 'a {
        let prefix = subtree_prefix(dir);
        let from = format!("{prefix}{start_after}");
        let first = if start_after.is_empty() { Bound::Included(from.as_str()) } else { Bound::Excluded(from.as_str()) };
        let mut range = self.files.range::<str, _>((first, Bound::Unbounded));
        std::iter::from_fn(move || loop {
            let (path, f) = range.next()?;
            let name = path.strip_prefix(prefix.as_str())?;
            let Some(slash) = name.find('/') else { return Some((name, &**f)) };
            // A subdirectory's subtree: every path in it starts with `prefix` + its name +
            // `/`, and '0' is the byte after '/', so the next path past it is at least this.
            let past = format!("{prefix}{}0", &name[..slash]);
            range = self.files.range::<str, _>((Bound::Included(past.as_str()), Bound::Unbounded));
        })
    }

    /// Everything under the directory `dir` at any depth (not `dir` itself), in byte order
    /// of the full path, after the path `start_after`, at most `limit`, and whether more
    /// remain. A file lists as itself. O(page · log n).
    pub fn list_recursive(&self, dir: &str, start_after: &str, limit: usize) -> Result<(Vec<DirEntry>, bool), NamespaceError> {
        let dir = normalize_path(dir)?;
        if let Some(f) = self.files.get(dir.as_str()) {
            let page = if start_after < dir.as_str() && limit > 0 { vec![self.file_entry(f)] } else { vec![] };
            return Ok((page, false));
        }
        if !self.dirs.contains_key(&dir) {
            return Err(NamespaceError::NotFound(dir));
        }
        let prefix = subtree_prefix(&dir);
        let from = if start_after >= prefix.as_str() { Bound::Excluded(start_after) } else { Bound::Included(prefix.as_str()) };
        let files = self.files.range::<str, _>((from, Bound::Unbounded)).take_while(|(p, _)| p.starts_with(&prefix)).map(|(p, f)| (&**p, self.file_entry(f)));
        let dirs = self
            .dirs
            .range::<str, _>((from, Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter(|(p, _)| **p != dir)
            .map(|(p, d)| (p.as_str(), dir_entry(p, d)));
        Ok(page_of(merge_sorted(files, dirs).map(|(_, entry)| entry), limit))
    }

    fn file_entry(&self, f: &FileRecord) -> DirEntry {
        DirEntry {
            name: parent_of(&f.path).1.to_string(),
            path: f.path.to_string(),
            kind: EntryKind::File,
            file: Some(f.into()),
            modified_unix_ms: f.committed_unix_ms,
        }
    }

    pub fn storage_node(&self, id: StorageNodeId) -> Option<&StorageNodeRecord> {
        self.storage_nodes.get(&id)
    }

    /// Replicas of `chunk` reported corrupt.
    pub fn bad_replicas(&self, chunk: ChunkId) -> Option<&BTreeSet<StorageNodeId>> {
        self.bad_replicas.get(&chunk)
    }

    pub fn storage_nodes(&self) -> impl Iterator<Item = &StorageNodeRecord> {
        self.storage_nodes.values()
    }

    /// Replicas `node` should delete, at most `limit`.
    /// Whether `node` is being asked to delete its replica of `chunk`.
    /// Whether a committed file lists `node` as holding `chunk`.
    pub fn lists_replica(&self, node: StorageNodeId, chunk: ChunkId) -> bool {
        let Some((file, _)) = chunk.owner() else { return false };
        !self.uploads.contains_key(&file) && self.chunk_record(chunk).is_some_and(|(_, c)| c.replicas.contains(&node))
    }

    pub fn deleting_on(&self, node: StorageNodeId, chunk: ChunkId) -> bool {
        self.garbage.get(&node).is_some_and(|g| g.contains(&chunk))
    }

    /// Nodes asked to delete their replica of `chunk` that have not confirmed yet.
    pub fn deleting(&self, chunk: ChunkId) -> Vec<StorageNodeId> {
        self.garbage.iter().filter(|(_, g)| g.contains(&chunk)).map(|(n, _)| *n).collect()
    }

    pub fn garbage_for(&self, node: StorageNodeId, limit: usize) -> Vec<ChunkId> {
        self.garbage.get(&node).map(|g| g.iter().take(limit).copied().collect()).unwrap_or_default()
    }

    /// Gives back what a deserializer spends beyond a namespace built by commands: the second
    /// and third copies of each path (in the id index and in the record), the spare capacity
    /// of replica lists read from an upload, and empty maps of shared chunks. The path is
    /// shared by the tree, the id index and the record again, as `insert_file` made it.
    pub fn shrink_to_fit(&mut self) {
        for (path, f) in &mut self.files {
            if let Some(p) = self.paths_by_id.get_mut(&f.id).filter(|p| ***p == **path) {
                *p = path.clone();
            }
            if *f.path == **path {
                f.path = path.clone();
            }
            for c in f.chunks.iter_mut() {
                c.replicas.shrink_to_fit();
            }
        }
        for u in self.uploads.values_mut() {
            for c in u.chunks.values_mut() {
                c.replicas.shrink_to_fit();
            }
        }
    }

    pub fn file_count(&self) -> u64 {
        self.files.len() as u64
    }

    /// Directories, the root included.
    pub fn dir_count(&self) -> u64 {
        self.dirs.len() as u64
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }

    pub fn files(&self) -> impl Iterator<Item = &FileRecord> {
        self.files.values().map(|f| &**f)
    }

    /// Every directory path, the root included, in order.
    pub fn dirs(&self) -> impl Iterator<Item = &str> {
        self.dirs.keys().map(String::as_str)
    }
}

fn dir_entry(path: &str, d: &DirRecord) -> DirEntry {
    DirEntry {
        name: if path == ROOT { ROOT.to_string() } else { parent_of(path).1.to_string() },
        path: path.to_string(),
        kind: EntryKind::Dir,
        file: None,
        modified_unix_ms: d.modified_unix_ms,
    }
}

/// The keys of `map` that start with `prefix`, in order.
fn keys_under<'a, K: std::borrow::Borrow<str> + Ord, V>(map: &'a BTreeMap<K, V>, prefix: &'a str) -> impl Iterator<Item = String> + 'a {
    map.range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(k, _)| k.borrow().starts_with(prefix))
        .map(|(k, _)| k.borrow().to_string())
}

/// The proper ancestors of a normalized path, root excluded, top down: `/a/b/c` → `/a`, `/a/b`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').skip(1).map(move |(i, _)| &path[..i])
}

/// A normalized path's parent directory and last component; the root is its own parent.
fn parent_of(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => (ROOT, &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (ROOT, path),
    }
}

fn child_path(dir: &str, name: &str) -> String {
    if dir == ROOT {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Two sequences, each in ascending order of its keys, as one in that order (the first's item
/// first on equal keys).
fn merge_sorted<K: Ord, T>(a: impl Iterator<Item = (K, T)>, b: impl Iterator<Item = (K, T)>) -> impl Iterator<Item = (K, T)> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some((x, _)), Some((y, _))) if y < x => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}

/// At most `limit` entries of a listing, and whether more remain.
fn page_of(entries: impl Iterator<Item = DirEntry>, limit: usize) -> (Vec<DirEntry>, bool) {
    let mut entries = entries.peekable();
    let page = entries.by_ref().take(limit).collect();
    (page, entries.peek().is_some())
}

/// What every path strictly under the directory `dir` starts with.
fn subtree_prefix(dir: &str) -> String {
    if dir == ROOT {
        ROOT.to_string()
    } else {
        format!("{dir}/")
    }
}

/// `path` is `dir` or lies under it (both normalized).
fn is_under(path: &str, dir: &str) -> bool {
    path == dir || path.starts_with(&subtree_prefix(dir))
}

/// `path` is `dir` or lies under it (both normalized).
pub fn is_at_or_under(path: &str, dir: &str) -> bool {
    is_under(path, dir)
}

/// Whether a (normalized) path is the trash or in it.
pub fn in_trash(path: &str) -> bool {
    is_under(path, TRASH_DIR)
}

/// A user name as it may name a trash directory: one path component, at most
/// `USER_MAX_BYTES`, no control characters.
pub fn check_user(user: &str) -> Result<(), NamespaceError> {
    let bad = user.is_empty() || user.len() > USER_MAX_BYTES || user == "." || user == ".." || user.contains('/') || user.chars().any(char::is_control);
    if bad {
        return Err(NamespaceError::InvalidArgument(format!("{user:?} cannot be a user name (one path component, at most {USER_MAX_BYTES} bytes)")));
    }
    Ok(())
}

/// What a delete request becomes: a move to `user`'s trash bucket of `unix_ms` when `trash`
/// is given (the cluster keeps a trash and the caller did not skip it) and the path can move
/// there (not the root, not in the trash already); else a delete for good.
pub fn delete_command(path: &str, recursive: bool, expect_file_id: Option<FileId>, trash: Option<(&str, u64)>) -> Result<Command, NamespaceError> {
    let path = normalize_path(path)?;
    match trash {
        Some((user, unix_ms)) if path != ROOT && !in_trash(&path) => {
            check_user(user)?;
            Ok(Command::MoveToTrash { trash: trash_bucket(user, unix_ms), path, recursive, expect_file_id, unix_ms })
        }
        _ => Ok(Command::Delete { path, recursive, expect_file_id }),
    }
}

/// `user`'s trash bucket for what is deleted at `unix_ms`: one per minute,
/// `/.trash/<user>/2026-12-06T09:31:00Z`.
pub fn trash_bucket(user: &str, unix_ms: u64) -> String {
    let minutes = unix_ms / 60_000;
    let (y, m, d) = civil_from_days((minutes / (24 * 60)) as i64);
    let (hh, mm) = ((minutes / 60) % 24, minutes % 60);
    format!("{TRASH_DIR}/{user}/{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:00Z")
}

/// `unix_ms` as a UTC time to the second, `2026-12-06T09:31:05Z`.
pub fn utc_time(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    let (y, m, d) = civil_from_days((seconds / 86_400) as i64);
    let (hh, mm, ss) = ((seconds / 3600) % 24, (seconds / 60) % 60, seconds % 60);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// When a trash bucket (its name, `2026-12-06T09:31:00Z` or a variant `...Z.3`) was filled,
/// in ms since the epoch; `None` for a name that is not a bucket's.
pub fn trash_bucket_unix_ms(name: &str) -> Option<u64> {
    let stamp = match name.rsplit_once('.') {
        Some((stamp, n)) if n.parse::<u32>().is_ok() => stamp,
        _ => name,
    };
    let b = stamp.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| stamp.get(r).filter(|t| t.bytes().all(|c| c.is_ascii_digit()))?.parse::<u64>().ok();
    let (y, m, d, hh, mm, ss) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    let days = u64::try_from(days_from_civil(y as i64, m, d)).ok()?;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000)
}

/// Days since 1970-01-01 of a date of the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`): pure arithmetic, so the namespace reads no clock and no time zone.
fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01 (the inverse of `days_from_civil`).
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Majority of the replication factor: the copies a write must reach before it is acknowledged,
/// and the fewest confirmed replicas `RecordChunks` accepts for a chunk.
pub fn write_quorum(replication: u32) -> u32 {
    if crate::planted::on(crate::planted::Bug::WriteQuorumOne) {
        return 1;
    }
    replication / 2 + 1
}

/// The canonical form of a user's path: absolute, `/`-separated, no empty, `.` or `..`
/// components, no trailing slash. `//a/b/` becomes `/a/b`; `a/b` becomes `/a/b`; `/` and
/// `//` are the root. The empty string names nothing and is refused.
pub fn normalize_path(path: &str) -> Result<String, NamespaceError> {
    let invalid = |reason: &str| NamespaceError::InvalidPath { path: crate::limits::echo(path), reason: reason.to_string() };
    if path.is_empty() {
        return Err(invalid("empty"));
    }
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
        out.push('/');
    }
    Ok(out)
}

mod snapshot;
pub use snapshot::{SnapshotFormatError, SNAPSHOT_FORMAT_VERSION};

#[cfg(test)]
mod tests;
