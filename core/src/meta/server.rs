//! A metadata node: one member of the Raft group. This is the executor: it starts openraft
//! and the engine (`engine`, every decision of the node's own), feeds the engine its inputs
//! and carries out its outputs (`carry_out`), and offers the requests' handlers (`service`)
//! the few primitives they need: propose, read, hand over, the leader of a term.
//!
//! Writes go through Raft (`client_write`); reads are served by the leader once a ReadIndex
//! round (`get_read_log_id`) that began after they arrived confirmed its leadership, and its
//! state is applied that far, so a client never sees state older than a write it saw
//! acknowledged. Reads that arrive together share rounds (`read_rounds` decides which).
//! A follower answers `NotLeader` naming the leader, and the client follows.
//!
//! Liveness of storage nodes and chunk placement are the leader's alone and live in its memory:
//! heartbeats are frequent and cheap and need no log entry. A new leader starts with every
//! node `Unknown` and learns within one heartbeat interval.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::channel::oneshot;
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Raft};

use super::engine::{EngineConfig, MemberStatus, MetaEngine, Output, ProposalId, ProposalResult, RaftStatus, SnapshotReceiver};
use super::leader::{admit, AdmitError, Leader};
use super::log_store::{open_database, RedbLogStore};
use super::raft::RaftNet;
use super::read_rounds::{Arrival, ReadRounds, READS_WAITING_MAX};
use super::state_machine::{AppliedState, MetaStateMachine, SharedState};
use super::types::{MetaRaft, MetaTypes};
use super::MetaConfig;
use crate::env::{Clock, Disk, Env, Transport};
use crate::ids::{MetaNodeId, StorageNodeId};
use crate::namespace::{Command, Namespace, Outcome};
use crate::proto;
use crate::rpc::RpcError;

#[derive(Debug, thiserror::Error)]
pub enum MetaStartError {
    #[error("node id {id} is not among the members {members:?}")]
    NotAMember { id: MetaNodeId, members: Vec<MetaNodeId> },
    /// The caller's: settings openraft (or this node) refuses.
    #[error("invalid raft configuration: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("snapshot_every must be at least 1")]
    SnapshotEveryZero,
    #[error("raft failed to start: {0}")]
    Raft(#[from] openraft::error::Fatal<MetaNodeId>),
    /// The disk's (or damage on it).
    #[error("cannot open the metadata store in {}: {source}", dir.display())]
    Store { dir: PathBuf, source: StoreOpenError },
}

/// What opening a metadata node's durable state ran into.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("raft.redb: {0}")]
    Db(#[from] redb::Error),
    #[error("{0}")]
    Snapshot(#[from] super::state_machine::SnapshotFileError),
}

pub struct MetaServer<E: Env> {
    pub(super) env: E,
    pub(super) config: MetaConfig,
    pub(super) raft: MetaRaft<E::RaftRuntime>,
    pub(super) state: SharedState,
    /// Every decision of this node's own (see `engine`); locked briefly, never across an await.
    /// Lock order: the engine, then the state.
    pub(super) engine: Mutex<MetaEngine>,
    /// Callers waiting for their proposal's results, or for a hand-over's end.
    pub(super) waiting: Mutex<Waiting>,
    /// Wakes the timer loop when an input may have moved the engine's next timeout.
    wake: event_listener::Event,
    /// The snapshot being received from the leader, piece by piece.
    pub(super) incoming: futures::lock::Mutex<SnapshotReceiver>,
    /// This server, for the tasks it spawns (handlers get only `&self`).
    me: Weak<Self>,
}

#[derive(Default)]
pub(super) struct Waiting {
    proposals: HashMap<ProposalId, oneshot::Sender<ProposalResult>>,
    hand_overs: HashMap<u64, oneshot::Sender<RpcError>>,
    pub(super) step_downs: HashMap<u64, oneshot::Sender<bool>>,
    /// Reads waiting for a ReadIndex round, and which round answers each: where each one's
    /// round result goes (the read index, or why there is none).
    read_rounds: ReadRounds<oneshot::Sender<Result<Option<u64>, RpcError>>>,
    /// The last request id handed out (0 is the engine's own).
    last_request: u64,
}

impl Waiting {
    pub(super) fn next_request(&mut self) -> u64 {
        self.last_request += 1;
        self.last_request
    }
}

impl<E: Env> MetaServer<E> {
    /// Starts this member. Every member started with the same member list forms the cluster:
    /// each initializes itself with that list, which openraft allows when the lists agree.
    pub async fn start(env: E, config: MetaConfig) -> Result<Arc<Self>, MetaStartError> {
        if !config.members.is_empty() && !config.members.contains_key(&config.id) {
            return Err(MetaStartError::NotAMember { id: config.id, members: config.members.keys().copied().collect() });
        }
        if config.snapshot_every == 0 {
            return Err(MetaStartError::SnapshotEveryZero);
        }
        let raft_config = openraft::Config {
            cluster_name: "dfs-metadata".into(),
            heartbeat_interval: config.raft_heartbeat_interval.as_millis() as u64,
            election_timeout_min: config.election_timeout_min.as_millis() as u64,
            election_timeout_max: config.election_timeout_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.logs_kept_behind_snapshot,
            // Keeps a batch of the largest entries (4096 chunk records) under the message limit.
            max_payload_entries: 64,
            ..Default::default()
        }
        .validate()?;
        let (log_store, state_machine, state) = Self::open_store(&env, &config.data_dir).await?;
        let raft = Raft::<MetaTypes<E::RaftRuntime>>::new(
            config.id,
            Arc::new(raft_config),
            RaftNet::new(env.clone(), config.snapshot_transfer),
            log_store,
            state_machine,
        )
        .await?;

        let engine_config = EngineConfig {
            id: config.id,
            members: config.members.keys().copied().collect(),
            raft_heartbeat_interval: config.raft_heartbeat_interval,
            election_timeout_min: config.election_timeout_min,
            election_timeout_max: config.election_timeout_max,
            leader: config.leader,
        };
        let engine = MetaEngine::new(engine_config, env.clock().now(), env.random_u64());
        let server = Arc::new_cyclic(|me| MetaServer {
            env,
            config,
            raft,
            state,
            engine: Mutex::new(engine),
            waiting: Mutex::default(),
            wake: event_listener::Event::new(),
            incoming: futures::lock::Mutex::new(SnapshotReceiver::default()),
            me: me.clone(),
        });
        if server.config.members.is_empty() && !server.raft.is_initialized().await? {
            tracing::info!(id = server.config.id, "no members given: waiting to be added to a cluster (dfs admin meta add)");
        }
        // Detached: it lives as long as Raft does (dropping a handle does not stop a task).
        drop(<E::RaftRuntime as openraft::AsyncRuntime>::spawn(server.clone().run_timers()));
        Ok(server)
    }

    /// Opens `data_dir/raft.redb` and the snapshots beside it: what this node was before it
    /// stopped, or nothing for a new node.
    async fn open_store(env: &E, data_dir: &std::path::Path) -> Result<(RedbLogStore<E::RaftRuntime>, MetaStateMachine<E::Disk>, SharedState), MetaStartError> {
        let store_error = |e: StoreOpenError| MetaStartError::Store { dir: data_dir.to_path_buf(), source: e };
        let disk = env.disk();
        crate::env::create_dir_durable(disk, data_dir).await.map_err(|e| store_error(e.into()))?;
        let backend = disk.open_store(&data_dir.join("raft.redb")).await.map_err(|e| store_error(e.into()))?;
        let db = Arc::new(open_database(backend).map_err(|e| store_error(e.into()))?);
        let (state_machine, state) = MetaStateMachine::open(disk.clone(), data_dir, db.clone()).await.map_err(|e| store_error(e.into()))?;
        Ok((RedbLogStore::new(db), state_machine, state))
    }

    /// The engine's clock: calls `handle_timeout` whenever `poll_timeout` has passed, and
    /// sleeps until then or until an input may have moved it. Ends when Raft stops.
    async fn run_timers(self: Arc<Self>) {
        loop {
            let listener = self.wake.listen();
            let now = self.env.clock().now();
            let next = {
                let mut engine = self.engine.lock().expect("engine lock");
                engine.handle_status(self.raft_status());
                if engine.poll_timeout().is_some_and(|at| at <= now) {
                    let state = self.state.read().expect("state lock");
                    if engine.needs_fresh_key() {
                        engine.set_fresh_key(crate::tokens::TokenKey(self.env.random_key()));
                    }
                    engine.handle_timeout(now, self.env.clock().unix_ms(), &state.namespace);
                }
                self.carry_out(&mut engine);
                engine.poll_timeout()
            };
            let Some(at) = next else { return };
            // `handle_timeout` moves every timer past `now` (the engine's tests check it after
            // every step); were one not to, this waits a millisecond rather than spin.
            let wait = at.saturating_since(now).max(Duration::from_millis(1));
            futures::future::select(std::pin::pin!(self.env.clock().sleep(wait)), listener).await;
        }
    }

    /// Carries out what the engine says, with the engine locked: what needs openraft or the
    /// network runs in a task of its own that reports back.
    fn carry_out(&self, engine: &mut MetaEngine) {
        let spawn = |f: futures::future::BoxFuture<'static, ()>| drop(<E::RaftRuntime as openraft::AsyncRuntime>::spawn(f));
        while let Some(output) = engine.poll_output() {
            match output {
                Output::Propose { entry, command } => {
                    let server = self.arc();
                    spawn(Box::pin(async move {
                        // May only be delayed: a site cannot fail a proposal the caller would see answered.
                        let _ = crate::fault::inject(server.env.clock(), crate::fault::Site::MetaPropose).await;
                        let written = match server.raft.client_write(command).await {
                            Ok(response) => Ok(response.data),
                            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(server.not_leader(f.leader_id)),
                            Err(RaftError::APIError(e)) => Err(RpcError::Internal(e.to_string())),
                            Err(RaftError::Fatal(e)) => Err(RpcError::Unavailable(format!("metadata node stopped: {e}"))),
                        };
                        server.input(|engine| engine.handle_written(entry, written));
                    }));
                }
                Output::Reply { proposal, result } => {
                    if let Some(reply) = self.waiting.lock().expect("waiting lock").proposals.remove(&proposal) {
                        let _ = reply.send(result); // the caller may have given up
                    }
                }
                Output::Housekept { result } => match result {
                    Ok(Outcome::UploadsExpired(n)) => tracing::info!(uploads = n, "expired abandoned uploads"),
                    Ok(_) => {}
                    // A proposal that fails is re-derived by a later tick.
                    Err(e) => tracing::debug!(error = %e, "housekeeping proposal failed"),
                },
                Output::Elect => {
                    let server = self.arc();
                    spawn(Box::pin(async move {
                        let _ = server.raft.trigger().elect().await; // fails only once Raft has stopped
                    }));
                }
                Output::CheckInitialized | Output::Initialize => {
                    let server = self.arc();
                    let initialize = output == Output::Initialize;
                    spawn(Box::pin(async move { server.form(initialize).await }));
                }
                Output::ChangeVoters { voters } => {
                    let server = self.arc();
                    spawn(Box::pin(async move {
                        if let Err(e) = server.raft.change_membership(voters, false).await {
                            tracing::debug!(error = %e, "could not finish the membership change yet");
                        }
                        server.input(|engine| engine.handle_membership_done());
                    }));
                }
                Output::SetActive(active) => {
                    self.raft.runtime_config().heartbeat(active);
                    self.raft.runtime_config().elect(active);
                }
                Output::AskToCampaign { addr, timeout, .. } => {
                    let server = self.arc();
                    spawn(Box::pin(async move {
                        let call = server.env.transport().unary(&addr, proto::CampaignRequest {});
                        let answered = crate::env::call_with_timeout(server.env.clock(), timeout, &addr, call).await.is_ok();
                        let now = server.env.clock().now();
                        server.input(|engine| engine.handle_campaign_asked(now, answered));
                    }));
                }
                Output::SteppedDown { requests, handed_over } => {
                    let mut waiting = self.waiting.lock().expect("waiting lock");
                    for request in requests {
                        if let Some(reply) = waiting.step_downs.remove(&request) {
                            let _ = reply.send(handed_over);
                        }
                    }
                }
                Output::HandedOver { requests, error } => {
                    let mut waiting = self.waiting.lock().expect("waiting lock");
                    for request in requests {
                        if let Some(reply) = waiting.hand_overs.remove(&request) {
                            let _ = reply.send(error.clone());
                        }
                    }
                }
            }
        }
    }

    fn arc(&self) -> Arc<Self> {
        self.me.upgrade().expect("a server in use is alive")
    }

    /// Feeds the engine one input (after the latest status), carries out what follows, and
    /// wakes the timer loop.
    pub(super) fn input<T>(&self, f: impl FnOnce(&mut MetaEngine) -> T) -> T {
        let result = {
            let mut engine = self.engine.lock().expect("engine lock");
            engine.handle_status(self.raft_status());
            let result = f(&mut engine);
            self.carry_out(&mut engine);
            result
        };
        self.wake.notify(1);
        result
    }

    /// Cluster formation's calls into openraft: whether this node is initialized, or
    /// initializing it with the member list.
    async fn form(self: Arc<Self>, initialize: bool) {
        let outcome = if initialize {
            let members: BTreeMap<MetaNodeId, BasicNode> = self.config.members.iter().map(|(id, addr)| (*id, BasicNode::new(addr))).collect();
            match self.raft.initialize(members).await {
                Ok(()) => {
                    tracing::info!(id = self.config.id, "initialized cluster membership");
                    Ok(true)
                }
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                    tracing::info!(id = self.config.id, "cluster already formed; joining as a member");
                    Ok(true)
                }
                Err(e) => Err(e.to_string()),
            }
        } else {
            self.raft.is_initialized().await.map_err(|e| e.to_string())
        };
        let now = self.env.clock().now();
        match outcome {
            Ok(initialized) => self.input(|engine| engine.handle_initialized(now, initialized)),
            Err(e) => {
                tracing::error!(error = %e, "could not form the metadata cluster");
                self.input(|engine| engine.handle_formation_failed());
            }
        }
    }

    /// What openraft's metrics say now, as the engine takes it.
    pub(super) fn raft_status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters = target_voters(membership);
        let last_log = m.last_log_index.unwrap_or(0);
        RaftStatus {
            stopped: m.running_state.is_err(),
            candidate: m.state == openraft::ServerState::Candidate,
            leader: m.current_leader,
            term: m.current_term,
            joint: membership.get_joint_config().len() > 1,
            members: membership
                .nodes()
                .map(|(id, node)| {
                    let matched =
                        if *id == m.id { m.last_log_index } else { m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index) };
                    MemberStatus { id: *id, addr: node.addr.clone(), target_voter: voters.contains(id), lag: matched.map(|i| last_log.saturating_sub(i)) }
                })
                .collect(),
        }
    }

    pub fn id(&self) -> MetaNodeId {
        self.config.id
    }

    pub fn raft(&self) -> &MetaRaft<E::RaftRuntime> {
        &self.raft
    }

    /// The applied state, for tests and checkers: no leadership check.
    pub fn local_state(&self) -> std::sync::RwLockReadGuard<'_, AppliedState> {
        self.state.read().expect("state lock")
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    /// Hands leadership to one of `successors` (see the engine's hand-over). Returns the error
    /// that tells the caller to retry (and reach the new leader).
    pub(super) async fn hand_over(&self, successors: BTreeSet<MetaNodeId>) -> RpcError {
        let (tx, rx) = oneshot::channel();
        let request = {
            let mut waiting = self.waiting.lock().expect("waiting lock");
            let request = waiting.next_request();
            waiting.hand_overs.insert(request, tx);
            request
        };
        let now = self.env.clock().now();
        self.input(|engine| engine.handle_hand_over(now, request, &successors));
        rx.await.unwrap_or_else(|_| RpcError::Unavailable("metadata node is stopping".into()))
    }

    pub(super) fn not_leader(&self, leader: Option<MetaNodeId>) -> RpcError {
        RpcError::NotLeader { leader: self.leader_hint(leader) }
    }

    /// Cheap leadership check from the latest metrics, for leader-local work (placement,
    /// heartbeats) whose mistakes are harmless because nothing is committed by them.
    pub(super) fn require_leader(&self) -> Result<u64, RpcError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader == Some(self.config.id) {
            Ok(metrics.current_term)
        } else {
            Err(self.not_leader(metrics.current_leader))
        }
    }

    /// Validates `command` and has it committed and applied, grouped with whatever other
    /// commands arrive meanwhile (see `run_proposals`): bad input never enters the log.
    pub(super) async fn propose(&self, command: Command) -> Result<Outcome, RpcError> {
        command.validate().map_err(|e| RpcError::InvalidArgument(e.to_string()))?;
        let mut results = self.propose_together(vec![command]).await?;
        results.pop().unwrap_or_else(|| Err(RpcError::Internal("no result for a proposal".into())))
    }

    /// Has `commands` (each already validated, at most `BATCH_COMMANDS_MAX`) committed in one
    /// log entry, possibly shared with other proposals (the engine's group commit); one result
    /// per command, in order. `Err` when none was committed.
    pub(super) async fn propose_together(&self, commands: Vec<Command>) -> Result<Vec<Result<Outcome, RpcError>>, RpcError> {
        let count = commands.len();
        let (tx, rx) = oneshot::channel();
        self.input(|engine| {
            let id = engine.next_proposal_id();
            self.waiting.lock().expect("waiting lock").proposals.insert(id, tx);
            engine.handle_propose(id, commands);
        });
        let results = rx.await.map_err(|_| RpcError::Unavailable("metadata node is stopping".into()))??;
        if results.len() != count {
            return Err(RpcError::Internal(format!("{} results for {count} commands", results.len())));
        }
        Ok(results)
    }

    /// Runs `read` on state at least as new as every write acknowledged before this call.
    pub(super) async fn read<T>(&self, read: impl FnOnce(&AppliedState) -> T) -> Result<T, RpcError> {
        if crate::planted::on(crate::planted::Bug::StaleRead) {
            // Believing itself leader is not being leader: a deposed one serves its old state.
            self.require_leader()?;
            return Ok(read(&self.state.read().expect("state lock")));
        }
        let read_index = self.read_index().await?;
        let applied = self.state.read().expect("state lock").last_applied.map(|l| l.index);
        if read_index > applied {
            // Committed but not applied here yet: openraft applies it shortly.
            self.raft.wait(None).applied_index_at_least(read_index, "read").await.map_err(|e| match e {
                openraft::metrics::WaitError::ShuttingDown => RpcError::Unavailable("metadata node stopped".into()),
                openraft::metrics::WaitError::Timeout(..) => RpcError::Unavailable("state not applied in time".into()),
            })?;
        }
        Ok(read(&self.state.read().expect("state lock")))
    }

    /// The index this node's state must be applied to for a read arriving now to be
    /// linearizable, from a ReadIndex round that began after it arrived (shared with the reads
    /// that arrive alongside: see `read_rounds`).
    async fn read_index(&self) -> Result<Option<u64>, RpcError> {
        let (tx, rx) = oneshot::channel();
        let arrival = self.waiting.lock().expect("waiting lock").read_rounds.arrive(tx);
        match arrival {
            Arrival::Busy => return Err(RpcError::Unavailable(format!("{READS_WAITING_MAX} reads are waiting already; retry"))),
            Arrival::StartRound => drop(<E::RaftRuntime as openraft::AsyncRuntime>::spawn(self.arc().run_read_rounds())),
            Arrival::Joined => {}
        }
        rx.await.map_err(|_| RpcError::Unavailable("metadata node is stopping".into()))?
    }

    /// ReadIndex rounds, one after another, while reads wait for one (`read_rounds`).
    async fn run_read_rounds(self: Arc<Self>) {
        loop {
            let result = match self.raft.get_read_log_id().await {
                Ok((read_log_id, _applied)) => Ok(read_log_id.map(|l| l.index)),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(self.not_leader(f.leader_id)),
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => Err(RpcError::Unavailable(format!("metadata quorum not reachable: {e}"))),
                Err(RaftError::Fatal(e)) => Err(RpcError::Unavailable(format!("metadata node stopped: {e}"))),
            };
            let over = self.waiting.lock().expect("waiting lock").read_rounds.round_over();
            for reply in over.answered {
                let _ = reply.send(result.clone()); // the reader may have given up
            }
            if !over.start_next {
                return;
            }
        }
    }

    /// Refuses a storage node of another cluster (see `leader::admit`), loudly on this side too.
    pub(super) async fn admit_storage(&self, node: StorageNodeId, presented: &str) -> Result<String, RpcError> {
        // The local state suffices: a cluster id never changes once set, so a stale view can
        // only say the cluster is still forming.
        let admitted = admit(&self.state.read().expect("state lock").namespace, presented);
        admitted.map_err(|e| match e {
            AdmitError::Forming => RpcError::Unavailable(e.to_string()),
            AdmitError::OtherCluster { .. } => {
                tracing::error!(%node, error = %e, "storage node of another cluster refused");
                RpcError::FailedPrecondition(e.to_string())
            }
        })
    }

    /// The leader state machine of `term` (the engine makes it afresh when leadership changed:
    /// everything it needs beyond heartbeats is re-derived from the namespace).
    pub(super) fn with_leader<T>(&self, term: u64, f: impl FnOnce(&mut Leader, &Namespace) -> T) -> T {
        let now = self.env.clock().now();
        let mut engine = self.engine.lock().expect("engine lock");
        let state = self.state.read().expect("state lock");
        f(engine.leader_of(term, now), &state.namespace)
    }
}

/// The voters a membership is heading to: its only configuration, or the new one of a joint
/// configuration.
pub(super) fn target_voters(membership: &openraft::Membership<MetaNodeId, BasicNode>) -> std::collections::BTreeSet<MetaNodeId> {
    membership.get_joint_config().last().cloned().unwrap_or_default()
}
