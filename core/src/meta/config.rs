//! A metadata node's settings: one struct, with the leader's (`LeaderConfig`) inside it.
//! Every default is defined here or in the struct it embeds, once; the CLI shows these.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::leader::LeaderConfig;
use super::raft::SnapshotTransfer;
use crate::ids::MetaNodeId;

/// Default of `MetaConfig::snapshot_every`: a snapshot per this many applied log entries.
pub const SNAPSHOT_EVERY_DEFAULT: u64 = 10_000;
/// Files in the namespace per log entry between snapshots, at least: once `snapshot_every`
/// entries are applied, a snapshot still waits until one entry per this many files has been
/// applied since the last. Taking one costs in proportion to the namespace (1.5 s under the
/// state's lock and 657 MiB written at 10 M files), so a large namespace takes them further
/// apart: one per 500,000 entries at 10 M files, and at most that many entries to re-apply
/// on a restart. A namespace under 200,000 files keeps `snapshot_every`.
pub const SNAPSHOT_FILES_PER_ENTRY: u64 = 20;
/// Default of `MetaConfig::logs_kept_behind_snapshot`.
pub const LOGS_KEPT_BEHIND_SNAPSHOT_MAX: u64 = 1000;

#[derive(Clone, Debug)]
pub struct MetaConfig {
    pub id: MetaNodeId,
    /// The members a new cluster forms with, this one included: id → address other nodes and
    /// clients reach it at. Empty: this node joins an existing cluster when an administrator
    /// adds it (`AddMetaMember`). Ignored once the node has state: it rejoins as what it was.
    pub members: BTreeMap<MetaNodeId, String>,
    /// This node's durable state: `raft.redb` (log, vote) and `snapshots/`.
    pub data_dir: PathBuf,
    /// Build a snapshot (and purge the log behind it) every this many applied entries, or
    /// further apart in a large namespace (`SNAPSHOT_FILES_PER_ENTRY`).
    pub snapshot_every: u64,
    /// Log entries kept behind the newest snapshot (a lagging follower within them catches
    /// up from the log; one further behind gets the snapshot).
    pub logs_kept_behind_snapshot: u64,
    pub snapshot_transfer: SnapshotTransfer,
    pub raft_heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Where this node serves its status page and metrics (HOST:PORT), if it does: told to
    /// the other members' pages, which link to the leader's.
    pub http_address: Option<String>,
    /// What this node does while it leads: storage node health, repair, garbage collection,
    /// upload expiry, the trash.
    pub leader: LeaderConfig,
}

impl MetaConfig {
    pub fn new(id: MetaNodeId, members: BTreeMap<MetaNodeId, String>, data_dir: impl Into<PathBuf>) -> Self {
        MetaConfig {
            id,
            members,
            data_dir: data_dir.into(),
            snapshot_every: SNAPSHOT_EVERY_DEFAULT,
            logs_kept_behind_snapshot: LOGS_KEPT_BEHIND_SNAPSHOT_MAX,
            snapshot_transfer: SnapshotTransfer {
                piece_bytes: 1 << 20,
                piece_timeout: Duration::from_secs(10),
                // Loading a snapshot of millions of files takes seconds, not milliseconds.
                install_timeout: Duration::from_secs(300),
            },
            // openraft checks election timeouts on ticks of 1.5 heartbeat intervals: a short
            // interval keeps the randomized timeouts from collapsing onto a few tick slots.
            raft_heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            http_address: None,
            leader: LeaderConfig::default(),
        }
    }
}
