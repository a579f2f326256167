//! What the primary of a chunk write answers once its own copy and the replicas' are done:
//! the fan-out's outcome policy, pure.
//!
//! The client needs to know where the chunk is and where it is not: it counts the copies
//! against the write quorum and retries only the failed ones elsewhere. So every replica's
//! failure is listed with its node and reason, and so is the primary's own when a replica
//! holds the chunk. Only when no copy exists anywhere is the write itself an error: then the
//! primary's own error says most (no space, a disk failing), and the client tries another
//! primary.

use crate::proto::{ReplicaFailure, StorageNode, WriteChunkResponse};
use crate::rpc::RpcError;

/// The answer to a write fanned out by primary `me`: `local` is its own copy, `replicas` the
/// peers' results (their ids when they stored it), `refused` the forward targets it would not
/// send to.
pub fn outcome(
    me: &StorageNode,
    local: Result<(), RpcError>,
    replicas: Vec<Result<u64, ReplicaFailure>>,
    refused: Vec<ReplicaFailure>,
) -> Result<WriteChunkResponse, RpcError> {
    let mut stored_on = Vec::new();
    let mut replicated = Vec::new();
    let mut failures = refused;
    for result in replicas {
        match result {
            Ok(id) => replicated.push(id),
            Err(f) => failures.push(f),
        }
    }
    match local {
        Ok(()) => stored_on.push(me.id),
        Err(e) if replicated.is_empty() => return Err(e),
        Err(e) => failures.push(ReplicaFailure { node: Some(me.clone()), error: e.to_string() }),
    }
    stored_on.extend(replicated);
    Ok(WriteChunkResponse { stored_on, failures })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> StorageNode {
        StorageNode { id, addr: format!("10.0.1.{id}:7100") }
    }

    fn failed(id: u64, why: &str) -> ReplicaFailure {
        ReplicaFailure { node: Some(node(id)), error: why.into() }
    }

    #[test]
    fn a_fan_out_with_one_replica_failing_lists_the_copies_made_and_the_one_that_failed() {
        let answer = outcome(&node(1), Ok(()), vec![Ok(2), Err(failed(3, "timed out"))], vec![]).unwrap();
        assert_eq!(answer.stored_on, vec![1, 2]);
        assert_eq!(answer.failures, vec![failed(3, "timed out")]);
    }

    #[test]
    fn a_primary_that_failed_itself_still_reports_the_replicas_that_hold_the_chunk() {
        let answer = outcome(&node(1), Err(RpcError::NoSpace("full".into())), vec![Ok(2)], vec![failed(4, "not a peer")]).unwrap();
        assert_eq!(answer.stored_on, vec![2]);
        assert_eq!(answer.failures.len(), 2);
        assert_eq!(answer.failures[0], failed(4, "not a peer"));
        assert!(answer.failures[1].error.contains("full") && answer.failures[1].node == Some(node(1)));
    }

    #[test]
    fn no_copy_anywhere_is_the_primarys_own_error() {
        let e = outcome(&node(1), Err(RpcError::NoSpace("full".into())), vec![Err(failed(2, "down"))], vec![]).unwrap_err();
        assert_eq!(e, RpcError::NoSpace("full".into()));
    }
}
