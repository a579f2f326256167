//! The metadata state machine as openraft sees it: the `Namespace`, applied in memory, made
//! durable by snapshot files plus the Raft log.
//!
//! Promises:
//! - After a crash the state is rebuilt exactly: the newest durable snapshot is loaded, and
//!   openraft re-applies the committed log entries after it (`read_committed`).
//! - A snapshot file is complete and checksummed before anything points at it: it is written
//!   as `<name>.tmp`, fsynced, renamed, the directory fsynced, and only then recorded in the
//!   database (fsynced). Only then may openraft purge the log behind it.
//! - Installing a snapshot received from the leader follows the same steps.
//! - A snapshot costs in proportion to the namespace, so a large one takes them further apart:
//!   openraft asks for one every `snapshot_every` entries, and `build_snapshot` answers with
//!   the current one, building nothing, until one entry per `SNAPSHOT_FILES_PER_ENTRY` files
//!   has been applied since (`snapshot_put_off`; openraft keeps the newer of the two and asks
//!   again at its next commit).
//!
//! Not promised: the applied index is not persisted on its own (re-applying is cheap and
//! deterministic). Old snapshot files are removed best-effort; a leftover is harmless.
//!
//! A snapshot file is `body ‖ SHA-256(body)`, verified on load, so a damaged file is refused
//! rather than loaded. The body is, in the form written since version 2,
//! `SNAPSHOT_MAGIC ‖ u64 LE length ‖ JSON(SnapshotMeta) ‖ namespace` with the namespace in its
//! binary form (`Namespace::write_snapshot`); files of earlier versions hold `JSON(SnapshotBody)`
//! and are still read (the body then starts with `{`, never with the magic).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{AsyncRuntime, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError, StoredMembership};
use redb::Database;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::SNAPSHOT_FILES_PER_ENTRY;
use super::log_store::{read_meta, write_meta};
use super::types::{MetaTypes, SnapshotFile};
use crate::env::Disk;
use crate::ids::MetaNodeId;
use crate::namespace::{ApplyResult, Namespace, Outcome};

const SNAPSHOT_KEY: &str = "snapshot";

type StorageResult<T> = Result<T, StorageError<MetaNodeId>>;

/// The applied state, shared with the metadata server for reads.
#[derive(Debug, Default)]
pub struct AppliedState {
    pub last_applied: Option<LogId<MetaNodeId>>,
    pub membership: StoredMembership<MetaNodeId, BasicNode>,
    pub namespace: Namespace,
}

pub type SharedState = Arc<RwLock<AppliedState>>;

/// What a snapshot file holds.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    meta: SnapshotMeta<MetaNodeId, BasicNode>,
    namespace: Namespace,
}

/// The database record naming the current snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SnapshotPointer {
    meta: SnapshotMeta<MetaNodeId, BasicNode>,
    file: String,
    len: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: damaged snapshot ({damage})")]
    Damaged { path: PathBuf, damage: SnapshotDamage },
    #[error("the pointer to the newest snapshot: {0}")]
    Pointer(#[from] super::log_store::StoreError),
}

/// How a snapshot file fails its checks (it was damaged on the disk, or torn by a crash).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotDamage {
    #[error("{0} bytes is too short")]
    TooShort(usize),
    #[error("checksum mismatch")]
    ChecksumMismatch,
    #[error("{0}")]
    Undecodable(#[from] serde_json::Error),
    #[error("the namespace: {0}")]
    Namespace(#[from] crate::namespace::SnapshotFormatError),
}

/// How a snapshot file in the binary form begins (the first form began with `{`).
const SNAPSHOT_MAGIC: &[u8; 8] = b"dfs-snap";

/// Serializes a snapshot file's contents but for the checksum (`seal`).
fn encode(meta: &SnapshotMeta<MetaNodeId, BasicNode>, namespace: &Namespace) -> Vec<u8> {
    let meta = serde_json::to_vec(meta).expect("snapshot metadata serializes");
    let mut bytes = Vec::with_capacity(SNAPSHOT_MAGIC.len() + 8 + meta.len() + 32);
    bytes.extend_from_slice(SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&meta);
    namespace.write_snapshot(&mut bytes);
    bytes
}

/// Appends the checksum that ends a snapshot file: done outside the state's lock.
fn seal(mut bytes: Vec<u8>) -> Vec<u8> {
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    bytes.extend_from_slice(&digest);
    bytes
}

/// A snapshot file's contents in the form versions before 2 wrote (and still read here).
#[cfg(test)]
fn encode_json(meta: &SnapshotMeta<MetaNodeId, BasicNode>, namespace: &Namespace) -> Vec<u8> {
    #[derive(Serialize)]
    struct BodyRef<'a> {
        meta: &'a SnapshotMeta<MetaNodeId, BasicNode>,
        namespace: &'a Namespace,
    }
    let mut bytes = serde_json::to_vec(&BodyRef { meta, namespace }).expect("the namespace serializes");
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    bytes.extend_from_slice(&digest);
    bytes
}

/// A whole snapshot file's bytes decoded, for the fuzzer (`crate::fuzz::snapshot`).
pub(crate) fn decode_file_bytes(bytes: &[u8]) -> bool {
    decode(Path::new("fuzz.snap"), bytes).is_ok()
}

fn decode(path: &Path, bytes: &[u8]) -> Result<SnapshotBody, SnapshotFileError> {
    let damaged = |damage: SnapshotDamage| SnapshotFileError::Damaged { path: path.to_path_buf(), damage };
    if bytes.len() < 32 {
        return Err(damaged(SnapshotDamage::TooShort(bytes.len())));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    let actual: [u8; 32] = Sha256::digest(body).into();
    if actual[..] != digest[..] {
        return Err(damaged(SnapshotDamage::ChecksumMismatch));
    }
    let Some(framed) = body.strip_prefix(SNAPSHOT_MAGIC) else {
        let mut body: SnapshotBody = serde_json::from_slice(body).map_err(|e| damaged(e.into()))?;
        body.namespace.shrink_to_fit();
        return Ok(body);
    };
    let (len, rest) = framed.split_first_chunk::<8>().ok_or(damaged(SnapshotDamage::TooShort(bytes.len())))?;
    let len = usize::try_from(u64::from_le_bytes(*len)).ok().filter(|l| *l <= rest.len()).ok_or(damaged(SnapshotDamage::TooShort(bytes.len())))?;
    let (meta, namespace) = rest.split_at(len);
    let meta = serde_json::from_slice(meta).map_err(|e| damaged(e.into()))?;
    let namespace = Namespace::read_snapshot(namespace).map_err(|e| damaged(e.into()))?;
    Ok(SnapshotBody { meta, namespace })
}

/// Whether a snapshot asked for `entries_since` entries after the current one is put off: the
/// namespace holds `files` files, and one costs in proportion to them (`SNAPSHOT_FILES_PER_ENTRY`).
pub fn snapshot_put_off(entries_since: u64, files: u64) -> bool {
    entries_since < files / SNAPSHOT_FILES_PER_ENTRY
}

/// Characters of a snapshot's id that name its incoming file (openraft's ids are far shorter).
const SNAPSHOT_ID_MAX_CHARS: usize = 128;

/// Where a snapshot received from the leader is assembled before it is installed.
pub(crate) fn incoming_snapshot_path(data_dir: &Path, snapshot_id: &str) -> PathBuf {
    // Sanitized and cut: the id comes from the leader, and names a file here.
    let safe: String = snapshot_id.chars().take(SNAPSHOT_ID_MAX_CHARS).map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    data_dir.join("snapshots").join(format!("incoming-{safe}.part"))
}

/// File name of the snapshot covering the log up to `last`: the same log id always means the
/// same state (the state machine is deterministic), so one name per log id suffices.
fn file_name(meta: &SnapshotMeta<MetaNodeId, BasicNode>) -> String {
    match meta.last_log_id {
        Some(id) => format!("snap-{:020}-{}.snap", id.index, id.leader_id.term),
        None => "snap-empty.snap".to_string(),
    }
}

pub struct MetaStateMachine<D: Disk> {
    disk: D,
    dir: PathBuf,
    db: Arc<Database>,
    state: SharedState,
    current: Arc<Mutex<Option<SnapshotPointer>>>,
    /// Held across writing a snapshot file and pointing the database at it, so that two
    /// snapshots (one built, one received) never race to point at and delete each other's file.
    files: Arc<futures::lock::Mutex<()>>,
}

impl<D: Disk> MetaStateMachine<D> {
    /// Opens the state machine of `dir` (snapshots live in `dir/snapshots`), loading the
    /// newest durable snapshot.
    pub async fn open(disk: D, dir: &Path, db: Arc<Database>) -> Result<(Self, SharedState), SnapshotFileError> {
        let snapshots = dir.join("snapshots");
        let io = |source| SnapshotFileError::Io { path: snapshots.clone(), source };
        crate::env::create_dir_durable(&disk, &snapshots).await.map_err(io)?;
        // Leftovers of a crash: snapshots half written or half received.
        for name in disk.list_dir(&snapshots).await.map_err(io)? {
            if name.ends_with(".tmp") || name.ends_with(".part") {
                let _ = disk.remove_file(&snapshots.join(name)).await;
            }
        }
        let pointer: Option<SnapshotPointer> = read_meta(&db, SNAPSHOT_KEY)?;
        let mut applied = AppliedState::default();
        if let Some(p) = &pointer {
            let path = snapshots.join(&p.file);
            let bytes = disk.read_file(&path).await.map_err(|source| SnapshotFileError::Io { path: path.clone(), source })?;
            let body = decode(&path, &bytes)?;
            applied = AppliedState { last_applied: body.meta.last_log_id, membership: body.meta.last_membership, namespace: body.namespace };
            tracing::info!(snapshot = %p.file, applied = ?applied.last_applied, "loaded snapshot");
        }
        let state = Arc::new(RwLock::new(applied));
        let sm = MetaStateMachine { disk, dir: snapshots, db, state: state.clone(), current: Arc::new(Mutex::new(pointer)), files: Arc::default() };
        Ok((sm, state))
    }

    fn handle(&self) -> Self {
        MetaStateMachine {
            disk: self.disk.clone(),
            dir: self.dir.clone(),
            db: self.db.clone(),
            state: self.state.clone(),
            current: self.current.clone(),
            files: self.files.clone(),
        }
    }

    /// Makes `tmp` (complete and fsynced) the current snapshot described by `meta`, unless a
    /// newer one is already current. Returns the file it is kept as.
    async fn adopt(&self, tmp: &Path, meta: &SnapshotMeta<MetaNodeId, BasicNode>, len: u64) -> std::io::Result<SnapshotFile> {
        let _files = self.files.lock().await;
        let name = file_name(meta);
        let path = self.dir.join(&name);
        self.disk.rename(tmp, &path).await?;
        self.disk.sync_dir(&self.dir).await?;
        let newer_exists = self.current.lock().expect("snapshot lock").as_ref().is_some_and(|c| c.meta.last_log_id > meta.last_log_id);
        if !newer_exists {
            let pointer = SnapshotPointer { meta: meta.clone(), file: name.clone(), len };
            write_meta(&self.db, SNAPSHOT_KEY, &pointer, true).map_err(std::io::Error::other)?;
            *self.current.lock().expect("snapshot lock") = Some(pointer);
        }
        // Best effort: every other finished snapshot file is superseded.
        let keep = self.current.lock().expect("snapshot lock").as_ref().map(|c| c.file.clone());
        if let Ok(names) = self.disk.list_dir(&self.dir).await {
            for old in names.iter().filter(|n| n.ends_with(".snap") && Some(*n) != keep.as_ref() && **n != name) {
                let _ = self.disk.remove_file(&self.dir.join(old)).await;
            }
        }
        Ok(SnapshotFile { path, len })
    }
}

impl<D: Disk> MetaStateMachine<D> {
    /// The current snapshot, when a new one is not worth its cost yet (`snapshot_put_off`).
    fn put_off<RT: AsyncRuntime>(&self) -> Option<Snapshot<MetaTypes<RT>>> {
        let current = self.current.lock().expect("snapshot lock").clone()?;
        let state = self.state.read().expect("state lock");
        let index = |id: Option<LogId<MetaNodeId>>| id.map_or(0, |l| l.index);
        let since = index(state.last_applied).saturating_sub(index(current.meta.last_log_id));
        if !snapshot_put_off(since, state.namespace.file_count()) {
            return None;
        }
        let file = SnapshotFile { path: self.dir.join(&current.file), len: current.len };
        Some(Snapshot { meta: current.meta, snapshot: Box::new(file) })
    }
}

impl<D: Disk, RT: AsyncRuntime> RaftSnapshotBuilder<MetaTypes<RT>> for MetaStateMachine<D> {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<MetaTypes<RT>>> {
        if let Some(current) = self.put_off() {
            return Ok(current);
        }
        let (meta, bytes) = {
            let state = self.state.read().expect("state lock");
            let snapshot_id = match state.last_applied {
                Some(id) => format!("{}-{}", id.leader_id.term, id.index),
                None => "empty".to_string(),
            };
            let meta = SnapshotMeta { last_log_id: state.last_applied, last_membership: state.membership.clone(), snapshot_id };
            // Writes stall while this holds the lock: the binary form takes about 0.15 s per
            // million files (DESIGN.md, "Snapshots").
            let bytes = encode(&meta, &state.namespace);
            (meta, bytes)
        };
        let bytes = seal(bytes);
        let len = bytes.len() as u64;
        let tmp = self.dir.join(format!("{}.tmp", file_name(&meta)));
        let written = async {
            self.disk.write_file(&tmp, Bytes::from(bytes)).await?;
            self.disk.sync_file(&tmp).await?;
            self.adopt(&tmp, &meta, len).await
        };
        let file = written.await.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = len, "snapshot built");
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

impl<D: Disk, RT: AsyncRuntime> RaftStateMachine<MetaTypes<RT>> for MetaStateMachine<D> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<MetaNodeId>>, StoredMembership<MetaNodeId, BasicNode>)> {
        let state = self.state.read().expect("state lock");
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<ApplyResult>>
    where
        I: IntoIterator<Item = Entry<MetaTypes<RT>>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.state.write().expect("state lock");
        let mut results = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => Ok(Outcome::Done),
                EntryPayload::Normal(command) => state.namespace.apply(command),
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m);
                    Ok(Outcome::Done)
                }
            };
            results.push(result);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.handle()
    }

    /// Only used by openraft's chunked snapshot API, which dfs does not use: snapshots arrive
    /// through `RaftServiceHandler::install_snapshot` in pieces written straight to disk.
    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<SnapshotFile>> {
        Ok(Box::new(SnapshotFile { path: self.dir.join("incoming-openraft.part"), len: 0 }))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta<MetaNodeId, BasicNode>, snapshot: Box<SnapshotFile>) -> StorageResult<()> {
        let read_error = |e: &dyn std::error::Error| StorageIOError::read_snapshot(Some(meta.signature()), &std::io::Error::other(e.to_string()));
        let bytes = self.disk.read_file(&snapshot.path).await.map_err(|e| read_error(&e))?;
        let body = decode(&snapshot.path, &bytes).map_err(|e| read_error(&e))?;
        if body.meta.last_log_id != meta.last_log_id {
            let e = std::io::Error::other(format!("snapshot file covers {:?}, not {:?}", body.meta.last_log_id, meta.last_log_id));
            return Err(read_error(&e).into());
        }
        // A file received from the leader is assembled in our directory; anything else is
        // copied there first, so that adopting it never moves another owner's file.
        let source = if snapshot.path.parent() == Some(self.dir.as_path()) {
            self.disk.sync_file(&snapshot.path).await.map_err(|e| read_error(&e))?;
            snapshot.path.clone()
        } else {
            let copy = self.dir.join(format!("{}.tmp", file_name(meta)));
            let written = async {
                self.disk.write_file(&copy, bytes).await?;
                self.disk.sync_file(&copy).await
            };
            written.await.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
            copy
        };
        self.adopt(&source, meta, snapshot.len).await.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let mut state = self.state.write().expect("state lock");
        state.namespace = body.namespace;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<MetaTypes<RT>>>> {
        let current = self.current.lock().expect("snapshot lock").clone();
        Ok(current.map(|p| Snapshot { snapshot: Box::new(SnapshotFile { path: self.dir.join(&p.file), len: p.len }), meta: p.meta }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::StorageNodeId;
    use crate::namespace::Command;

    fn namespace() -> Namespace {
        let mut ns = Namespace::default();
        let register = Command::RegisterStorageNode { node: StorageNodeId(1), addr: "n1:1".into(), capacity_bytes: 1 << 30, rack: None };
        ns.apply(register).unwrap();
        ns.apply(Command::Mkdir { path: "/a/b".into(), parents: true, unix_ms: 5 }).unwrap();
        ns
    }

    fn meta() -> SnapshotMeta<MetaNodeId, BasicNode> {
        SnapshotMeta { last_log_id: None, last_membership: StoredMembership::default(), snapshot_id: "7-42".into() }
    }

    /// A snapshot file as 4eb2716 (the last version writing JSON) wrote it, from a real
    /// cluster: `put -r` of a tree keeping mode and time, a file of five chained chunks, a copy
    /// sharing its chunks, empty files, one in the trash. It still loads, means what it meant,
    /// and comes back equal through the binary form.
    #[test]
    fn a_snapshot_file_written_by_the_json_version_still_loads() {
        use crate::chain::SumKind;
        let bytes = include_bytes!("../../tests/fixtures/snapshot-json-4eb2716.snap");
        let body = decode(Path::new("snapshot-json-4eb2716.snap"), bytes).unwrap();
        assert_eq!(body.meta.snapshot_id, "2-17");
        let ns = body.namespace;
        assert_eq!(ns.file_count(), 6);
        let chained = ns.file("/chained.bin").unwrap();
        assert_eq!((chained.size, chained.chunk_size, chained.chunks.len()), (300_000, 65_536, 5));
        assert_eq!(chained.chunks.last().unwrap().sum, SumKind::ChainedLast);
        let sha = hex::encode(chained.sha256().unwrap().0);
        assert_eq!(sha, "73950723d5b287e02db094ecd17438d09b722917c96d54fbafe3ba1b43fe0bc2", "sha256sum of the uploaded bytes");
        let copy = ns.file("/copy.bin").unwrap();
        assert!(copy.shared().is_some());
        assert!((0..5).all(|i| copy.chunk_id(i) == chained.chunk_id(i)), "the copy shares every chunk");
        let kept = ns.file("/t/a.txt").unwrap().attrs();
        assert_eq!((kept.mode, kept.mtime_unix_ms), (Some(0o640), Some(1_767_323_045_000)));
        assert_eq!(ns.file("/t/sub/big.bin").unwrap().chunks[0].sum, SumKind::Standalone);
        // Written again in the binary form, it reads back the same.
        let again = decode(Path::new("again"), &seal(encode(&body.meta, &ns))).unwrap();
        assert_eq!(again.namespace, ns);
    }

    #[test]
    fn snapshots_are_put_off_in_proportion_to_the_files() {
        // A small namespace: never put off (openraft's `snapshot_every` alone decides).
        assert!(!snapshot_put_off(0, SNAPSHOT_FILES_PER_ENTRY - 1));
        assert!(!snapshot_put_off(1, SNAPSHOT_FILES_PER_ENTRY * 2 - 1));
        // Ten million files: one per 500,000 entries.
        let files = 10_000_000;
        assert!(snapshot_put_off(10_000, files));
        assert!(snapshot_put_off(files / SNAPSHOT_FILES_PER_ENTRY - 1, files));
        assert!(!snapshot_put_off(files / SNAPSHOT_FILES_PER_ENTRY, files));
    }

    /// A file is written in the binary form and read back; a file of an earlier version (JSON)
    /// still loads; either, cut or with a byte changed, is refused as damaged.
    #[test]
    fn snapshot_files_of_both_forms_load_and_damage_is_refused() {
        let path = Path::new("snap");
        let ns = namespace();
        let binary = seal(encode(&meta(), &ns));
        assert!(binary.starts_with(SNAPSHOT_MAGIC));
        let json = encode_json(&meta(), &ns);
        assert_eq!(json[0], b'{');
        for bytes in [&binary, &json] {
            let body = decode(path, bytes).unwrap();
            assert_eq!((body.namespace, body.meta.snapshot_id), (ns.clone(), "7-42".to_string()));
            let mut flipped = bytes.clone();
            flipped[10] ^= 1;
            assert!(matches!(decode(path, &flipped), Err(SnapshotFileError::Damaged { damage: SnapshotDamage::ChecksumMismatch, .. })));
            assert!(matches!(decode(path, &bytes[..bytes.len() - 1]), Err(SnapshotFileError::Damaged { .. })));
        }
        // A well-checksummed body that is not a namespace: refused, naming why.
        let mut lying = binary[..binary.len() - 32].to_vec();
        lying.truncate(lying.len() - 3);
        let digest: [u8; 32] = Sha256::digest(&lying).into();
        lying.extend_from_slice(&digest);
        let err = decode(path, &lying).err().expect("refused");
        assert!(matches!(err, SnapshotFileError::Damaged { damage: SnapshotDamage::Namespace(_), .. }), "{err}");
    }
}
