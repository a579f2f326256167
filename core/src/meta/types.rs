//! openraft's type configuration for the metadata cluster, and the snapshot data it names:
//! what the Raft network (`raft`), the log (`log_store`) and the state machine
//! (`state_machine`) all speak of.

use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;

use openraft::{AsyncRuntime, BasicNode, Entry, RaftTypeConfig};
use serde::{Deserialize, Serialize};

use crate::ids::MetaNodeId;
use crate::namespace::{ApplyResult, Command};

/// openraft's type configuration, generic over the async runtime so that the same metadata
/// code runs on tokio in production and on madsim in simulation.
pub struct MetaTypes<RT>(PhantomData<fn() -> RT>);

// Written out because derives would demand the same traits of `RT`.
impl<RT> fmt::Debug for MetaTypes<RT> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MetaTypes")
    }
}
impl<RT> Clone for MetaTypes<RT> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<RT> Copy for MetaTypes<RT> {}
impl<RT> Default for MetaTypes<RT> {
    fn default() -> Self {
        MetaTypes(PhantomData)
    }
}
impl<RT> PartialEq for MetaTypes<RT> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<RT> Eq for MetaTypes<RT> {}
impl<RT> PartialOrd for MetaTypes<RT> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<RT> Ord for MetaTypes<RT> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl<RT: AsyncRuntime> RaftTypeConfig for MetaTypes<RT> {
    type D = Command;
    type R = ApplyResult;
    type NodeId = MetaNodeId;
    type Node = BasicNode;
    type Entry = Entry<Self>;
    /// A snapshot file on this node's disk.
    type SnapshotData = SnapshotFile;
    type AsyncRuntime = RT;
    type Responder = openraft::impls::OneshotResponder<Self>;
}

pub type MetaRaft<RT> = openraft::Raft<MetaTypes<RT>>;

/// openraft's snapshot data: a snapshot file on this node's disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub len: u64,
}
