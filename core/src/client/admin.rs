//! Administration of the metadata cluster: membership and status (`dfs admin meta ...`).

use std::time::Duration;

use super::{metadata, ClientError, DfsClient, MetaClient};
use crate::env::Env;
use crate::proto;

/// Adding a member waits for it to catch up (the whole log or a snapshot): give it time.
const MEMBERSHIP_CHANGE_DEADLINE: Duration = Duration::from_secs(600);

impl<E: Env> DfsClient<E> {
    /// The metadata client with deadlines long enough for membership changes.
    fn admin_meta(&self) -> MetaClient<E> {
        let mut policy = self.config.metadata.clone();
        policy.deadline = policy.deadline.max(MEMBERSHIP_CHANGE_DEADLINE);
        policy.attempt_timeout = policy.attempt_timeout.max(MEMBERSHIP_CHANGE_DEADLINE);
        self.meta.with_policy(policy)
    }

    /// Adds metadata node `id` at `addr`: a learner until it has caught up, then a voter.
    pub async fn add_meta_member(&self, id: u64, addr: &str) -> Result<proto::MetaStatusResponse, ClientError> {
        let request = proto::AddMetaMemberRequest { id, addr: addr.to_string() };
        let response = self.admin_meta().call(request).await.map_err(metadata(format!("add metadata node {id} at {addr}")))?;
        response.status.ok_or_else(|| ClientError::Invalid("the leader's answer has no status".into()))
    }

    pub async fn remove_meta_member(&self, id: u64) -> Result<proto::MetaStatusResponse, ClientError> {
        let request = proto::RemoveMetaMemberRequest { id };
        let response = self.admin_meta().call(request).await.map_err(metadata(format!("remove metadata node {id}")))?;
        response.status.ok_or_else(|| ClientError::Invalid("the leader's answer has no status".into()))
    }

    pub async fn meta_status(&self) -> Result<proto::MetaStatusResponse, ClientError> {
        self.meta.call(proto::MetaStatusRequest {}).await.map_err(metadata("metadata status"))
    }
}
