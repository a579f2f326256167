//! The Raft log, vote and commit index of a metadata node, durable in redb.
//!
//! Promises: `append` reports completion only after the entries are fsynced; `save_vote`
//! returns only after the vote is fsynced (a node never votes twice in a term, across
//! crashes). The commit index is written without an fsync of its own: it only tells a
//! restarting node how much of its log it may re-apply at once, and losing it costs nothing
//! but a catch-up from the leader. Truncation and purge ride on the next durable commit:
//! an entry openraft truncated can reappear after a crash only if no later append happened,
//! which is the same as never having received the replacement.
//!
//! The database is one file (`raft.redb` in the node's data dir) opened through
//! [`Disk::open_store`], so the simulation crashes this same code with its power-loss model.
//! Entries are stored as JSON, keyed by log index.
//!
//! redb's calls are synchronous: a commit blocks the calling task for one fsync. openraft 0.9
//! waits for each `append` before the next, and a leader appends each client write alone, so
//! one `append` is one fsync of usually one entry; a follower's `append` holds what one
//! AppendEntries carried. What groups writes is the engine's group commit (`Command::Batch`,
//! `meta/engine.rs`): many clients' commands in one entry.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AsyncRuntime, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::MetaTypes;
use crate::ids::MetaNodeId;

pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Small named values: the vote, the commit index, the last purged log id, the snapshot.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

type StorageResult<T> = Result<T, StorageError<MetaNodeId>>;

/// Opens (or creates) the metadata database on `backend` and makes sure its tables exist.
pub fn open_database(backend: impl redb::StorageBackend) -> Result<Database, redb::Error> {
    let db = Database::builder().create_with_backend(backend)?;
    let tx = db.begin_write()?;
    tx.open_table(LOG)?;
    tx.open_table(META)?;
    tx.commit()?;
    Ok(db)
}

/// What reading or writing the database can end with: the disk failed under redb (the
/// world's fault), or a record does not decode (damage on the disk, or a record written by
/// a newer version: retrying will not help).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("raft.redb: {0}")]
    Db(#[from] redb::Error),
    #[error("raft.redb: record {record}: {source}")]
    Record { record: String, source: serde_json::Error },
}

/// `?` on any of redb's error types.
fn db(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

fn record(record: impl fmt::Display) -> impl FnOnce(serde_json::Error) -> StoreError {
    move |source| StoreError::Record { record: record.to_string(), source }
}

/// Reads a JSON value from the META table.
pub(crate) fn read_meta<T: DeserializeOwned>(db_: &Database, key: &str) -> Result<Option<T>, StoreError> {
    let tx = db_.begin_read().map_err(db)?;
    let table = tx.open_table(META).map_err(db)?;
    let Some(value) = table.get(key).map_err(db)? else { return Ok(None) };
    serde_json::from_slice(value.value()).map(Some).map_err(record(key))
}

/// Writes a JSON value into the META table, fsynced when `durable`.
pub(crate) fn write_meta<T: Serialize>(db_: &Database, key: &str, value: &T, durable: bool) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(record(key))?;
    let mut tx = db_.begin_write().map_err(db)?;
    if !durable {
        tx.set_durability(Durability::None).map_err(db)?;
    }
    tx.open_table(META).map_err(db)?.insert(key, bytes.as_slice()).map_err(db)?;
    tx.commit().map_err(db)
}

/// openraft's storage errors carry an `AnyError` made from a std error.
fn io_error(e: StoreError) -> std::io::Error {
    std::io::Error::other(e)
}

pub struct RedbLogStore<RT> {
    db: Arc<Database>,
    _rt: PhantomData<fn() -> RT>,
}

impl<RT> Clone for RedbLogStore<RT> {
    fn clone(&self) -> Self {
        RedbLogStore { db: self.db.clone(), _rt: PhantomData }
    }
}

impl<RT: AsyncRuntime> RedbLogStore<RT> {
    pub fn new(db: Arc<Database>) -> Self {
        RedbLogStore { db, _rt: PhantomData }
    }

    fn last_entry_id(&self) -> Result<Option<LogId<MetaNodeId>>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(LOG).map_err(db)?;
        let Some((index, value)) = table.last().map_err(db)? else { return Ok(None) };
        let entry: Entry<MetaTypes<RT>> = serde_json::from_slice(value.value()).map_err(record(format_args!("log entry {}", index.value())))?;
        Ok(Some(entry.log_id))
    }

    /// Writes `entries` in one transaction, fsynced before it returns.
    fn write_entries(&self, entries: impl IntoIterator<Item = Entry<MetaTypes<RT>>>) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut table = tx.open_table(LOG).map_err(db)?;
            for entry in entries {
                let bytes = serde_json::to_vec(&entry).map_err(record(format_args!("log entry {}", entry.log_id.index)))?;
                table.insert(entry.log_id.index, bytes.as_slice()).map_err(db)?;
            }
        }
        // Durability::Immediate (the default): fsynced before commit returns.
        tx.commit().map_err(db)
    }

    /// Removes the entries whose index is in `range`, and records `last_purged` if given.
    fn remove(&self, range: (Bound<u64>, Bound<u64>), last_purged: Option<LogId<MetaNodeId>>) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(db)?;
        tx.set_durability(Durability::None).map_err(db)?;
        {
            let mut table = tx.open_table(LOG).map_err(db)?;
            table.retain_in(range, |_, _| false).map_err(db)?;
            if let Some(id) = last_purged {
                let bytes = serde_json::to_vec(&id).map_err(record(LAST_PURGED))?;
                tx.open_table(META).map_err(db)?.insert(LAST_PURGED, bytes.as_slice()).map_err(db)?;
            }
        }
        tx.commit().map_err(db)
    }
}

impl<RT: AsyncRuntime> RaftLogReader<MetaTypes<RT>> for RedbLogStore<RT> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(&mut self, range: RB) -> StorageResult<Vec<Entry<MetaTypes<RT>>>> {
        let read = || -> Result<Vec<Entry<MetaTypes<RT>>>, StoreError> {
            let tx = self.db.begin_read().map_err(db)?;
            let table = tx.open_table(LOG).map_err(db)?;
            let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
            let mut entries = Vec::new();
            for item in table.range::<u64>(bounds).map_err(db)? {
                let (index, value) = item.map_err(db)?;
                entries.push(serde_json::from_slice(value.value()).map_err(record(format_args!("log entry {}", index.value())))?);
            }
            Ok(entries)
        };
        read().map_err(|e| StorageIOError::read_logs(&io_error(e)).into())
    }
}

impl<RT: AsyncRuntime> RaftLogStorage<MetaTypes<RT>> for RedbLogStore<RT> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<MetaTypes<RT>>> {
        let state = || -> Result<LogState<MetaTypes<RT>>, StoreError> {
            let last_purged: Option<LogId<MetaNodeId>> = read_meta(&self.db, LAST_PURGED)?;
            let last = self.last_entry_id()?.or(last_purged);
            Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
        };
        state().map_err(|e| StorageIOError::read_logs(&io_error(e)).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<MetaNodeId>) -> StorageResult<()> {
        write_meta(&self.db, VOTE, vote, true).map_err(|e| StorageIOError::write_vote(&io_error(e)).into())
    }

    /// The vote comes back uncommitted. openraft 0.9 restores a node whose saved vote is a
    /// committed vote for itself straight to leader, with no new entry of its own term, and
    /// then serves linearizable reads at its saved commit index, which can lag writes it had
    /// acknowledged (found by the linearizability simulation after a power cut of every
    /// metadata node). As an uncommitted vote, it still forbids voting for anyone else in
    /// that term, and the node must win an election (and commit its first entry) to lead.
    async fn read_vote(&mut self) -> StorageResult<Option<Vote<MetaNodeId>>> {
        let vote: Option<Vote<MetaNodeId>> = read_meta(&self.db, VOTE).map_err(|e| StorageIOError::read_vote(&io_error(e)))?;
        Ok(vote.map(|v| Vote { committed: false, ..v }))
    }

    async fn save_committed(&mut self, committed: Option<LogId<MetaNodeId>>) -> StorageResult<()> {
        write_meta(&self.db, COMMITTED, &committed, false).map_err(|e| StorageIOError::write(&io_error(e)).into())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<MetaNodeId>>> {
        let committed: Option<Option<LogId<MetaNodeId>>> = read_meta(&self.db, COMMITTED).map_err(|e| StorageIOError::read(&io_error(e)))?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<MetaTypes<RT>>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<MetaTypes<RT>>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        match self.write_entries(entries) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let error = io_error(e);
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(StorageIOError::write_logs(&error).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<MetaNodeId>) -> StorageResult<()> {
        self.remove((Bound::Included(log_id.index), Bound::Unbounded), None).map_err(|e| StorageIOError::write_logs(&io_error(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<MetaNodeId>) -> StorageResult<()> {
        self.remove((Bound::Unbounded, Bound::Included(log_id.index)), Some(log_id)).map_err(|e| StorageIOError::write_logs(&io_error(e)).into())
    }
}

#[cfg(test)]
mod tests {
    //! The store against a model: any sequence of appends, truncations, purges and votes,
    //! read back through a fresh handle on the same database (as after a restart), gives
    //! exactly what the model holds.

    use std::collections::BTreeMap;

    use openraft::{CommittedLeaderId, EntryPayload, TokioRuntime};
    use proptest::prelude::*;

    use super::*;
    use crate::namespace::Command;

    type Store = RedbLogStore<TokioRuntime>;

    #[derive(Clone, Debug)]
    enum Op {
        /// Appends this many entries after the last one, in this term.
        Append {
            count: u64,
            term: u64,
        },
        /// Truncates at this fraction of the log (entries from there on go).
        Truncate(u8),
        /// Purges up to this fraction of the log.
        Purge(u8),
        Vote {
            term: u64,
            node: u64,
        },
        Committed(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..20, 1u64..5).prop_map(|(count, term)| Op::Append { count, term }),
            any::<u8>().prop_map(Op::Truncate),
            any::<u8>().prop_map(Op::Purge),
            (1u64..5, 1u64..4).prop_map(|(term, node)| Op::Vote { term, node }),
            any::<u8>().prop_map(Op::Committed),
        ]
    }

    fn log_id(term: u64, index: u64) -> LogId<MetaNodeId> {
        LogId::new(CommittedLeaderId::new(term, 0), index)
    }

    fn entry(term: u64, index: u64) -> Entry<MetaTypes<TokioRuntime>> {
        let payload = EntryPayload::Normal(Command::SetClusterId { cluster_id: format!("c{index}") });
        Entry { log_id: log_id(term, index), payload }
    }

    #[derive(Default)]
    struct Model {
        entries: BTreeMap<u64, u64>, // index -> term
        last_purged: Option<LogId<MetaNodeId>>,
        vote: Option<Vote<MetaNodeId>>,
        committed: Option<LogId<MetaNodeId>>,
    }

    fn at(model: &Model, fraction: u8) -> Option<u64> {
        let (first, last) = (*model.entries.keys().next()?, *model.entries.keys().next_back()?);
        Some(first + (last - first) * fraction as u64 / 255)
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../proptest-regressions/core-log-store.txt")))),
            cases: 64,
            ..ProptestConfig::default()
        })]
        #[test]
        fn the_store_round_trips_any_history(ops in proptest::collection::vec(op(), 1..40)) {
            let db = Arc::new(open_database(redb::backends::InMemoryBackend::new()).unwrap());
            let mut store = Store::new(db.clone());
            let mut model = Model::default();
            futures::executor::block_on(async {
                for op in ops {
                    match op {
                        Op::Append { count, term } => {
                            let next = model.entries.keys().next_back().map(|i| i + 1)
                                .or(model.last_purged.map(|p| p.index + 1)).unwrap_or(1);
                            let entries: Vec<_> = (next..next + count).map(|i| entry(term, i)).collect();
                            store.write_entries(entries).unwrap();
                            for i in next..next + count {
                                model.entries.insert(i, term);
                            }
                        }
                        Op::Truncate(f) => {
                            if let Some(i) = at(&model, f) {
                                store.truncate(log_id(model.entries[&i], i)).await.unwrap();
                                model.entries.split_off(&i);
                            }
                        }
                        Op::Purge(f) => {
                            if let Some(i) = at(&model, f) {
                                let id = log_id(model.entries[&i], i);
                                store.purge(id).await.unwrap();
                                model.entries = model.entries.split_off(&(i + 1));
                                model.last_purged = Some(id);
                            }
                        }
                        Op::Vote { term, node } => {
                            let vote = Vote::new(term, node);
                            store.save_vote(&vote).await.unwrap();
                            model.vote = Some(vote);
                        }
                        Op::Committed(f) => {
                            let committed = at(&model, f).map(|i| log_id(model.entries[&i], i));
                            store.save_committed(committed).await.unwrap();
                            model.committed = committed;
                        }
                    }
                    // A fresh handle reads what the model holds.
                    let mut fresh = Store::new(db.clone());
                    let state = fresh.get_log_state().await.unwrap();
                    let last = model.entries.iter().next_back().map(|(i, t)| log_id(*t, *i)).or(model.last_purged);
                    prop_assert_eq!(state.last_purged_log_id, model.last_purged);
                    prop_assert_eq!(state.last_log_id, last);
                    let read: Vec<(u64, u64)> = fresh.try_get_log_entries(0..u64::MAX).await.unwrap()
                        .into_iter().map(|e| (e.log_id.index, e.log_id.leader_id.term)).collect();
                    let expected: Vec<(u64, u64)> = model.entries.iter().map(|(i, t)| (*i, *t)).collect();
                    prop_assert_eq!(read, expected);
                    prop_assert_eq!(fresh.read_vote().await.unwrap(), model.vote);
                    prop_assert_eq!(fresh.read_committed().await.unwrap(), model.committed);
                }
                Ok(())
            })?;
        }
    }
}
