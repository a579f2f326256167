//! Calls to the metadata cluster that find and follow the leader.
//!
//! The client remembers the last leader. A follower's `NotLeader` names the new one and the
//! call goes there at once; a node that cannot be reached, or a cluster between leaders, is
//! retried on the next address with exponential backoff (with jitter) until `deadline` has passed. Errors
//! that retrying cannot fix (not found, invalid argument, ...) return at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::env::{call_with_timeout, Clock, Env, Transport};
use crate::rpc::{Rpc, RpcError};

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Give up on a call after this long.
    pub deadline: Duration,
    /// Give up on one attempt at one node after this long.
    pub attempt_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            // Long enough to ride out a leader election (a few seconds); short enough that a
            // command pointed at a cluster that is not running fails in reasonable time.
            deadline: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// Redirects followed in a row before backing off: bounds a redirect loop between two nodes
/// that each believe the other leads.
const REDIRECTS_MAX: u32 = 5;

#[derive(Clone)]
pub struct MetaClient<E: Env> {
    env: E,
    addrs: Arc<Vec<String>>,
    leader: Arc<Mutex<Option<String>>>,
    policy: RetryPolicy,
}

impl<E: Env> MetaClient<E> {
    /// `addrs` must not be empty.
    pub fn new(env: E, addrs: Vec<String>, policy: RetryPolicy) -> Self {
        assert!(!addrs.is_empty(), "a metadata client needs at least one address");
        MetaClient { env, addrs: Arc::new(addrs), leader: Arc::default(), policy }
    }

    /// The same client (sharing its cached leader) with another retry policy.
    pub fn with_policy(&self, policy: RetryPolicy) -> Self {
        MetaClient { policy, ..self.clone() }
    }

    pub async fn call<R: Rpc>(&self, request: R) -> Result<R::Response, RpcError> {
        let clock = self.env.clock();
        let started = clock.now();
        let mut backoff = self.policy.backoff_min;
        let mut next = 0usize;
        let mut redirects = 0u32;
        loop {
            let target = self.leader.lock().expect("leader lock").clone().unwrap_or_else(|| {
                next += 1;
                self.addrs[(next - 1) % self.addrs.len()].clone()
            });
            let call = self.env.transport().unary(&target, request.clone());
            let error = match call_with_timeout(clock, self.policy.attempt_timeout, &target, call).await {
                Ok(response) => {
                    *self.leader.lock().expect("leader lock") = Some(target);
                    return Ok(response);
                }
                Err(RpcError::NotLeader { leader: Some(leader) }) if redirects < REDIRECTS_MAX && leader.addr != target => {
                    tracing::debug!(from = %target, to = %leader.addr, "following metadata leader");
                    *self.leader.lock().expect("leader lock") = Some(leader.addr);
                    redirects += 1;
                    continue;
                }
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => e,
            };
            tracing::debug!(%target, error = %error, "metadata call failed; retrying");
            *self.leader.lock().expect("leader lock") = None;
            redirects = 0;
            if clock.now().saturating_since(started) + backoff > self.policy.deadline {
                return Err(match error {
                    RpcError::Transport(m) => RpcError::Transport(format!(
                        "metadata cluster unreachable at {} for {:?} (last error: {m})",
                        self.addrs.join(","),
                        self.policy.deadline
                    )),
                    other => other,
                });
            }
            // Jitter: clients that lost the same leader at the same moment do not all retry in
            // step against the next one.
            let half = backoff / 2;
            let jitter = Duration::from_millis(self.env.random_u64() % (half.as_millis() as u64 + 1));
            clock.sleep(half + jitter).await;
            backoff = (backoff * 2).min(self.policy.backoff_max);
        }
    }
}
