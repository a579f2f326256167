//! The metadata node's durable storage on the simulated disk: openraft's own conformance suite
//! for log and state-machine storage, and what survives a power cut.

#![cfg(not(madsim))]

use std::path::Path;
use std::sync::Arc;

use dfs_core::env::Disk;
use dfs_core::meta::log_store::{open_database, RedbLogStore};
use dfs_core::meta::state_machine::MetaStateMachine;
use dfs_core::meta::types::MetaTypes;
use dfs_io_sim::SimDisk;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError, TokioRuntime};
use redb::{ReadableDatabase, TableDefinition};

type Types = MetaTypes<TokioRuntime>;

/// Every store of a suite run on one disk, each in a directory of its own (the suite hands one
/// store's snapshot to another, as if the file had been transferred).
struct Builder {
    disk: SimDisk,
    stores: std::sync::atomic::AtomicU64,
}

impl StoreBuilder<Types, RedbLogStore<TokioRuntime>, MetaStateMachine<SimDisk>, SimDisk> for Builder {
    async fn build(&self) -> Result<(SimDisk, RedbLogStore<TokioRuntime>, MetaStateMachine<SimDisk>), StorageError<u64>> {
        let disk = self.disk.clone();
        let dir = format!("/meta-{}", self.stores.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let dir = Path::new(&dir);
        let fail = |e: String| StorageError::from(StorageIOError::write(&std::io::Error::other(e)));
        dfs_core::env::create_dir_durable(&disk, dir).await.map_err(|e| fail(e.to_string()))?;
        let backend = disk.open_store(&dir.join("raft.redb")).await.map_err(|e| fail(e.to_string()))?;
        let db = Arc::new(open_database(backend).map_err(|e| fail(e.to_string()))?);
        let (sm, _state) = MetaStateMachine::open(disk.clone(), dir, db.clone()).await.map_err(|e| fail(e.to_string()))?;
        Ok((disk, RedbLogStore::new(db), sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder { disk: SimDisk::new(1 << 30), stores: Default::default() }).unwrap();
}

/// A large namespace takes snapshots further apart: asked for one before one entry per
/// `SNAPSHOT_FILES_PER_ENTRY` files has been applied since the last, the state machine answers
/// with the last, and builds a new one once they have.
#[test]
fn a_large_namespace_puts_off_snapshots_in_proportion_to_its_files() {
    use dfs_core::ids::StorageNodeId;
    use dfs_core::meta::config::SNAPSHOT_FILES_PER_ENTRY;
    use dfs_core::namespace::Command;
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    let disk = SimDisk::new(1 << 30);
    futures::executor::block_on(async {
        let dir = Path::new("/meta");
        dfs_core::env::create_dir_durable(&disk, dir).await.unwrap();
        let db = Arc::new(open_database(disk.open_store(&dir.join("raft.redb")).await.unwrap()).unwrap());
        let (mut sm, state) = MetaStateMachine::open(disk.clone(), dir, db).await.unwrap();
        let mut index = 0;
        let mut apply = async |sm: &mut MetaStateMachine<SimDisk>, commands: Vec<Command>| {
            let entries: Vec<Entry<Types>> = commands
                .into_iter()
                .map(|command| {
                    index += 1;
                    Entry { log_id: LogId::new(CommittedLeaderId::new(1, 0), index), payload: EntryPayload::Normal(command) }
                })
                .collect();
            sm.apply(entries).await.unwrap();
        };
        let files = 10 * SNAPSHOT_FILES_PER_ENTRY;
        let register = Command::RegisterStorageNode { node: StorageNodeId(1), addr: "n1:1".into(), capacity_bytes: 1 << 30, rack: None };
        let create = |i: u64| Command::CreateEmptyFile {
            path: format!("/f{i}"),
            chunk_size: 1 << 20,
            replication: 1,
            overwrite: false,
            expect_file_id: None,
            unix_ms: 1,
            attrs: Default::default(),
            object: None,
        };
        apply(&mut sm, std::iter::once(register).chain((0..files).map(create)).collect()).await;
        assert_eq!(state.read().unwrap().namespace.file_count(), files);
        let index_of = |s: &openraft::storage::Snapshot<Types>| s.meta.last_log_id.map(|l| l.index);
        // The first is always built.
        let first = sm.build_snapshot().await.unwrap();
        assert_eq!(index_of(&first), Some(files + 1));
        // Fewer entries since than files / SNAPSHOT_FILES_PER_ENTRY: the same one again.
        let due = files / SNAPSHOT_FILES_PER_ENTRY;
        apply(&mut sm, (files..files + due - 1).map(create).collect()).await;
        let again = sm.build_snapshot().await.unwrap();
        assert_eq!(index_of(&again), index_of(&first), "a snapshot was built {} entries after the last", due - 1);
        assert_eq!(again.meta.snapshot_id, first.meta.snapshot_id);
        // One more: a new one, covering everything applied.
        apply(&mut sm, vec![create(files + due)]).await;
        let next = sm.build_snapshot().await.unwrap();
        assert_eq!(index_of(&next), Some(files + 1 + due));
        let current = sm.get_current_snapshot().await.unwrap().expect("a current snapshot");
        assert_eq!(index_of(&current), index_of(&next));
    });
}

const T: TableDefinition<&str, u64> = TableDefinition::new("t");

fn write(db: &redb::Database, key: &str, value: u64, durability: redb::Durability) {
    let mut tx = db.begin_write().unwrap();
    tx.set_durability(durability).unwrap();
    tx.open_table(T).unwrap().insert(key, value).unwrap();
    tx.commit().unwrap();
}

fn read(db: &redb::Database, key: &str) -> Option<u64> {
    let tx = db.begin_read().unwrap();
    let table = tx.open_table(T).unwrap();
    table.get(key).unwrap().map(|v| v.value())
}

#[test]
fn a_power_cut_keeps_exactly_the_durable_commits() {
    let disk = SimDisk::new(1 << 30);
    let path = Path::new("/m/raft.redb");
    futures::executor::block_on(async {
        dfs_core::env::create_dir_durable(&disk, Path::new("/m")).await.unwrap();
        let db = redb::Database::builder().create_with_backend(disk.open_store(path).await.unwrap()).unwrap();
        write(&db, "a", 1, redb::Durability::Immediate);
        write(&db, "b", 2, redb::Durability::None);
        // A second open of a live store is refused, as redb's file lock does for real.
        assert!(disk.open_store(path).await.is_err());
        disk.crash();
        // The dead process's handle is fenced: its late writes (e.g. on drop) land nowhere.
        drop(db);
        let db = redb::Database::builder().create_with_backend(disk.open_store(path).await.unwrap()).unwrap();
        assert_eq!(read(&db, "a"), Some(1));
        assert_eq!(read(&db, "b"), None, "an unsynced commit survived a power cut");
        write(&db, "b", 3, redb::Durability::None);
        write(&db, "c", 4, redb::Durability::Immediate);
        disk.crash();
        drop(db);
        let db = redb::Database::builder().create_with_backend(disk.open_store(path).await.unwrap()).unwrap();
        // A durable commit makes the non-durable ones before it durable too.
        assert_eq!((read(&db, "b"), read(&db, "c")), (Some(3), Some(4)));
    });
}
