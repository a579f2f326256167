//! A metadata node's own decisions, as a pure machine: group commit, the hand-over of
//! leadership, finishing a half-done membership change, the split-vote breaker, cluster
//! formation, when the leader does its housekeeping, and which snapshot pieces it accepts.
//! openraft decides Raft itself; the leader's decisions about storage nodes are `Leader`'s
//! (held here, one per term led); `server.rs` only carries out what this machine says.
//!
//! ## How it is driven
//! Like quinn-proto's `Connection`: inputs carry `now`, outputs are values, nothing here reads a
//! clock, touches a disk or sends a message. The driver's loop, in full:
//!
//! 1. Before every input, `handle_status(status)`: what openraft's metrics say now (role,
//!    leader, term, members and their replication lag).
//! 2. Inputs as they happen: `handle_propose` (a caller's commands; refused while a hand-over
//!    runs or when the queue is full), `handle_written` (a log entry committed and applied, or
//!    not), `handle_hand_over` (a caller wants this leader gone), `handle_campaign_asked`,
//!    `handle_initialized`, `handle_membership_done`, and `handle_timeout` whenever
//!    `poll_timeout()` has passed.
//! 3. After every input, drain `poll_output()` and carry each `Output` out; the ones that
//!    call openraft report back with the matching `handle_*`.
//!
//! ## What it promises
//! - **Group commit.** Proposals that arrive while earlier ones are in flight go to Raft
//!   together, as one `Command::Batch` entry of at most `BATCH_COMMANDS_MAX` commands; a
//!   proposal's commands always share one entry; at most `PROPOSALS_IN_FLIGHT_MAX` entries
//!   are in flight; at most `PROPOSALS_QUEUED_MAX` proposals wait (more are refused as
//!   `Unavailable`, which clients retry). Every proposal gets exactly one reply.
//! - **Hand-over.** openraft 0.9 trips over a leader removing itself, and a stopping leader
//!   should not make the cluster wait out an election timeout: the leader hands over to its
//!   most caught-up voter. Writes stop first (a successor that campaigns while the leader
//!   still appends loses the election to voters with a newer log, and the leader wins the
//!   next one and hands over again, for ever: found in simulation, meta_durability seed 66):
//!   new proposals are refused until the successor has every entry (at most
//!   `election_timeout_max`), then the leader goes quiet for a lease (no heartbeats, no
//!   campaign) so that the followers will vote, asks the successor to campaign, and stays
//!   quiet one more lease. Requests that arrive meanwhile share the hand-over in progress.
//!   Before a planned stop (`handle_step_down`) a hand-over whose successor did not take over
//!   is tried again, up to `STEP_DOWN_ATTEMPTS_MAX` times.
//! - **Membership.** A change left in joint consensus by a leader that stopped in the middle
//!   is finished by the next leader's housekeeping (openraft 0.9 does not finish it, and a
//!   joint configuration needs a majority of both the old and the new voters); a leader that
//!   is not among the new voters hands over instead.
//! - **No split vote for ever.** openraft 0.9 draws each node's election timeout once and
//!   checks it on ticks of 1.5 heartbeat intervals: two candidates in the same tick slot split
//!   every vote (seen in simulation after the leader was killed). A node that stays a
//!   candidate with no leader across two randomized intervals starts an election at a random
//!   moment of its own.
//! - **Formation with no bootstrap step.** The member with the lowest id initializes at once;
//!   the others wait three election timeouts for it and initialize themselves only if it has
//!   not reached them (several members initializing with one list is safe; it is avoided
//!   only because candidates starting at once tend to split the vote).
//! - **Housekeeping when due.** While this node leads, `Leader::tick` runs whenever the
//!   leader's `poll_timeout()` has passed and the previous tick's proposals are answered;
//!   an idle cluster's log does not grow (a tick proposes only what it must).
//! - **One snapshot at a time.** Pieces of an incoming snapshot are accepted only in order,
//!   for the transfer in progress; a piece at offset 0 starts a new transfer (the old one's
//!   file is discarded).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::leader::{Leader, LeaderConfig};
use crate::env::Timestamp;
use crate::ids::MetaNodeId;
use crate::limits::BATCH_COMMANDS_MAX;
use crate::namespace::{ApplyResult, Command, Namespace, NamespaceError, Outcome};
use crate::rpc::RpcError;

/// Proposals waiting for a slot; more are refused (`Unavailable`).
pub const PROPOSALS_QUEUED_MAX: usize = 4096;
/// Log entries of grouped proposals in flight at once.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 4;
/// How often a hand-over looks whether its successor has caught up.
const HAND_OVER_POLL: Duration = Duration::from_millis(10);
/// Members waiting for the first one to form the cluster wait this many election timeouts.
const FORMATION_GRACE_ELECTIONS: u32 = 3;

/// A caller's proposal, as the driver names it (to route the reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId(pub u64);

/// A log entry this machine asked the driver to propose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId(pub u64);

/// One result per command of a proposal, in order; `Err` when no entry carrying them was
/// committed (not the leader, stopping), which no command caused.
pub type ProposalResult = Result<Vec<Result<Outcome, RpcError>>, RpcError>;

/// The settings the machine needs (from `MetaConfig`).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub id: MetaNodeId,
    /// The members a new cluster forms with; empty: join when added.
    pub members: BTreeSet<MetaNodeId>,
    pub raft_heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    pub leader: LeaderConfig,
}

/// A member as openraft's metrics show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: MetaNodeId,
    pub addr: String,
    /// A voter of the configuration the cluster is moving to (or is in).
    pub target_voter: bool,
    /// Entries behind the leader's log; `None` when unknown (this node does not lead, or has
    /// not heard from it).
    pub lag: Option<u64>,
}

/// What openraft's metrics say, read by the driver before every input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// Raft has stopped (shut down or failed): the machine stops too.
    pub stopped: bool,
    pub candidate: bool,
    pub leader: Option<MetaNodeId>,
    pub term: u64,
    /// A membership change is half done (joint consensus).
    pub joint: bool,
    pub members: Vec<MemberStatus>,
}

impl RaftStatus {
    fn target_voters(&self) -> BTreeSet<MetaNodeId> {
        self.members.iter().filter(|m| m.target_voter).map(|m| m.id).collect()
    }
}

/// What the driver must do.
#[derive(Debug, PartialEq)]
#[must_use]
pub enum Output {
    /// Propose `command` as one log entry; answer with `handle_written(entry, ..)`.
    Propose { entry: EntryId, command: Command },
    /// Hand a proposal's results to its caller.
    Reply { proposal: ProposalId, result: ProposalResult },
    /// A housekeeping proposal's outcome, for the log (nobody waits for it).
    Housekept { result: Result<Outcome, RpcError> },
    /// Start an election now (the split-vote breaker).
    Elect,
    /// Ask openraft whether this node is initialized; answer with `handle_initialized`.
    CheckInitialized,
    /// Initialize the cluster with the member list; answer with `handle_initialized(true)`
    /// once done (or refused because it already formed).
    Initialize,
    /// Move the cluster to these voters (finishing a joint configuration); answer with
    /// `handle_membership_done`.
    ChangeVoters { voters: BTreeSet<MetaNodeId> },
    /// Stop (`false`) or resume (`true`) sending heartbeats and campaigning.
    SetActive(bool),
    /// Ask the successor to campaign, waiting at most `timeout`; answer with
    /// `handle_campaign_asked`.
    AskToCampaign { node: MetaNodeId, addr: String, timeout: Duration },
    /// A hand-over ended: answer every caller that asked for it with `error` (the caller
    /// retries and reaches the new leader).
    HandedOver { requests: Vec<u64>, error: RpcError },
    /// A step-down ended: whether leadership moved to another node.
    SteppedDown { requests: Vec<u64>, handed_over: bool },
}

/// A hand-over in progress.
#[derive(Clone, Debug)]
struct HandOver {
    successor: MetaNodeId,
    addr: String,
    phase: HandOverPhase,
    /// The callers waiting for it.
    requests: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HandOverPhase {
    /// Writes refused until the successor has every entry, or the deadline passes.
    CatchingUp { deadline: Timestamp },
    /// Quiet for a lease before the successor is asked.
    Quiet { until: Timestamp },
    /// The successor is being asked to campaign.
    Asking,
    /// Quiet one more lease while the successor's election runs.
    Settling { until: Timestamp },
}

/// A planned stop under way: the callers waiting, and the hand-overs still allowed.
#[derive(Clone, Debug)]
struct StepDown {
    requests: Vec<u64>,
    tries_left: usize,
    successors: BTreeSet<MetaNodeId>,
}

/// Hand-overs a stopping leader tries before it stops anyway: a successor that could not catch
/// up in time (a busy machine) gets another chance, since stopping without a hand-over costs
/// the cluster an election timeout.
pub const STEP_DOWN_ATTEMPTS_MAX: usize = 3;
/// The request id of the hand-overs a step-down starts.
const STEP_DOWN_REQUEST: u64 = u64::MAX;

/// Cluster formation from the member list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Forming {
    /// Waiting for the first member until `deadline`; next look at `next_check`.
    Waiting {
        deadline: Timestamp,
        next_check: Timestamp,
    },
    /// A `CheckInitialized` or `Initialize` is out.
    Asking {
        deadline: Timestamp,
    },
    Done,
}

pub struct MetaEngine {
    config: EngineConfig,
    /// A splitmix64 stream seeded by the driver: the split-vote breaker's random moments.
    rng: u64,
    status: RaftStatus,
    next_proposal: u64,
    next_entry: u64,
    queued: VecDeque<Queued>,
    /// Entries in flight: the proposals each carries, with their command counts.
    in_flight: BTreeMap<EntryId, Vec<(Origin, usize)>>,
    hand_over: Option<HandOver>,
    /// A planned stop's hand-over, tried again when the successor could not take over.
    stepping_down: Option<StepDown>,
    /// A `ChangeVoters` is out.
    changing_membership: bool,
    /// The split-vote breaker: when it next looks, and the term it saw a candidate stuck in.
    split_vote_check: Timestamp,
    stuck_term: Option<u64>,
    forming: Forming,
    /// Housekeeping proposals not yet answered: no new tick until they are.
    housekeeping_pending: usize,
    /// Not leading: when to look again (for a joint configuration left behind).
    next_housekeeping: Timestamp,
    leader: Option<Leader>,
    outputs: VecDeque<Output>,
    /// The latest `now` an input carried.
    last_now: Timestamp,
    /// Key material from the OS's randomness for the next chunk key (`set_fresh_key`, which
    /// the driver calls before `handle_timeout` when `needs_fresh_key`): never derived from
    /// `rng`, whose outputs (the cluster id) are public. Spent by a rotation.
    fresh_key: Option<crate::tokens::TokenKey>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Caller(ProposalId),
    Housekeeping,
}

struct Queued {
    origin: Origin,
    commands: Vec<Command>,
}

impl MetaEngine {
    /// A node starting at `now`; `seed` feeds its random moments.
    pub fn new(config: EngineConfig, now: Timestamp, seed: u64) -> Self {
        let forming = if config.members.is_empty() {
            Forming::Done
        } else {
            let first = config.members.first() == Some(&config.id);
            let grace = if first { Duration::ZERO } else { config.election_timeout_max * FORMATION_GRACE_ELECTIONS };
            Forming::Waiting { deadline: now.plus(grace), next_check: now }
        };
        let mut engine = MetaEngine {
            fresh_key: None,
            config,
            rng: seed,
            status: RaftStatus::default(),
            next_proposal: 0,
            next_entry: 0,
            queued: VecDeque::new(),
            in_flight: BTreeMap::new(),
            hand_over: None,
            stepping_down: None,
            changing_membership: false,
            split_vote_check: now,
            stuck_term: None,
            forming,
            housekeeping_pending: 0,
            next_housekeeping: now,
            leader: None,
            outputs: VecDeque::new(),
            last_now: now,
        };
        engine.split_vote_check = now.plus(engine.election_wait());
        engine.next_housekeeping = now.plus(engine.config.leader.housekeeping_interval);
        engine
    }

    pub fn id(&self) -> MetaNodeId {
        self.config.id
    }

    /// A fresh id for a caller's proposal.
    pub fn next_proposal_id(&mut self) -> ProposalId {
        self.next_proposal += 1;
        ProposalId(self.next_proposal)
    }

    /// The next thing the driver must do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When `handle_timeout` must next be called (`None`: Raft stopped, nothing will be due).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.status.stopped {
            return None;
        }
        let mut at = self.split_vote_check;
        match self.forming {
            Forming::Waiting { next_check, .. } => at = at.min(next_check),
            Forming::Asking { .. } | Forming::Done => {}
        }
        match self.hand_over.as_ref().map(|h| h.phase) {
            Some(HandOverPhase::CatchingUp { .. }) => return Some(at.min(self.hand_over_poll_at())),
            Some(HandOverPhase::Quiet { until } | HandOverPhase::Settling { until }) => at = at.min(until),
            Some(HandOverPhase::Asking) | None => {}
        }
        // Housekeeping waits while its last proposals are out and while a hand-over runs:
        // its time may long have passed then, and must not count (or this loop would spin).
        if self.housekeeping_pending == 0 && self.hand_over.is_none() {
            let housekeeping = match &self.leader {
                Some(leader) if self.leads() && leader.term() == self.status.term => leader.poll_timeout(),
                _ => self.next_housekeeping,
            };
            at = at.min(housekeeping);
        }
        Some(at)
    }

    /// Catching up is checked often: the successor usually has every entry within a round trip.
    fn hand_over_poll_at(&self) -> Timestamp {
        self.last_now.plus(HAND_OVER_POLL)
    }

    /// What openraft's metrics say now.
    pub fn handle_status(&mut self, status: RaftStatus) {
        if status.stopped && !self.status.stopped {
            // Nothing will be committed any more: every waiting caller hears so.
            self.fail_all(RpcError::Unavailable("metadata node is stopping".into()));
        }
        self.status = status;
    }

    fn leads(&self) -> bool {
        self.status.leader == Some(self.config.id)
    }

    /// The leader's state machine of the current term, made afresh when leadership changed:
    /// everything it needs beyond heartbeats is re-derived from the namespace. `None` unless
    /// this node leads.
    pub fn leader(&mut self, now: Timestamp) -> Option<&mut Leader> {
        if !self.leads() {
            return None;
        }
        Some(self.leader_of(self.status.term, now))
    }

    /// The leader of `term` (a caller that checked leadership itself names the term it saw).
    pub fn leader_of(&mut self, term: u64, now: Timestamp) -> &mut Leader {
        if self.leader.as_ref().is_none_or(|l| l.term() != term) {
            self.leader = Some(Leader::new(self.config.leader, term, now));
        }
        self.leader.as_mut().expect("set above")
    }

    /// The leader's state as last made, of whatever term (for views and tests).
    pub fn last_leader(&self) -> Option<&Leader> {
        self.leader.as_ref()
    }

    /// A caller's commands, each already validated, at most `BATCH_COMMANDS_MAX`: they will be
    /// committed in one log entry (possibly shared), and `Reply` carries one result each.
    pub fn handle_propose(&mut self, proposal: ProposalId, commands: Vec<Command>) {
        debug_assert!(!commands.is_empty() && commands.len() <= BATCH_COMMANDS_MAX);
        let refused = if self.status.stopped {
            Some(RpcError::Unavailable("metadata node is stopping".into()))
        } else if self.hand_over.is_some() {
            Some(RpcError::Unavailable(format!("metadata node {} is handing leadership over; retry", self.config.id)))
        } else if self.queued.len() >= PROPOSALS_QUEUED_MAX {
            Some(RpcError::Unavailable(format!("metadata node {} has {PROPOSALS_QUEUED_MAX} proposals waiting; retry", self.config.id)))
        } else {
            None
        };
        if let Some(error) = refused {
            self.outputs.push_back(Output::Reply { proposal, result: Err(error) });
            return;
        }
        self.queued.push_back(Queued { origin: Origin::Caller(proposal), commands });
        self.start_entries();
    }

    /// Groups queued proposals into entries while there is room in flight.
    fn start_entries(&mut self) {
        while self.in_flight.len() < PROPOSALS_IN_FLIGHT_MAX && !self.queued.is_empty() {
            let mut carried = Vec::new();
            let mut commands = Vec::new();
            while let Some(next) = self.queued.front() {
                if !commands.is_empty() && commands.len() + next.commands.len() > BATCH_COMMANDS_MAX {
                    break;
                }
                let next = self.queued.pop_front().expect("looked at above");
                carried.push((next.origin, next.commands.len()));
                commands.extend(next.commands);
            }
            self.next_entry += 1;
            let entry = EntryId(self.next_entry);
            let command = if commands.len() == 1 { commands.pop().expect("one") } else { Command::Batch(commands) };
            self.in_flight.insert(entry, carried);
            self.outputs.push_back(Output::Propose { entry, command });
        }
    }

    /// The entry was committed and applied (`Ok`, with its result), or was not (`Err`).
    pub fn handle_written(&mut self, entry: EntryId, written: Result<ApplyResult, RpcError>) {
        let Some(carried) = self.in_flight.remove(&entry) else { return };
        let total: usize = carried.iter().map(|(_, n)| n).sum();
        match written {
            Err(e) => {
                for (origin, _) in carried {
                    self.answer(origin, Err(e.clone()));
                }
            }
            Ok(result) => {
                let mut results: Vec<Result<Outcome, RpcError>> = match result {
                    result if total == 1 => vec![result.map_err(namespace_error)],
                    Ok(Outcome::Batch(results)) if results.len() == total => results.into_iter().map(|r| r.map_err(namespace_error)).collect(),
                    other => (0..total).map(|_| Err(RpcError::Internal(format!("unexpected batch outcome {other:?}")))).collect(),
                }
                .into_iter()
                .rev()
                .collect();
                for (origin, count) in carried {
                    let mine: Vec<_> = (0..count).filter_map(|_| results.pop()).collect();
                    self.answer(origin, Ok(mine));
                }
            }
        }
        self.start_entries();
    }

    fn answer(&mut self, origin: Origin, result: ProposalResult) {
        match origin {
            Origin::Caller(proposal) => self.outputs.push_back(Output::Reply { proposal, result }),
            Origin::Housekeeping => {
                self.housekeeping_pending = self.housekeeping_pending.saturating_sub(1);
                let result = result.and_then(|mut r| r.pop().ok_or_else(|| RpcError::Internal("no result for a proposal".into()))).and_then(|r| r);
                self.outputs.push_back(Output::Housekept { result });
            }
        }
    }

    fn fail_all(&mut self, error: RpcError) {
        let queued: Vec<Origin> = self.queued.drain(..).map(|q| q.origin).collect();
        let carried: Vec<Origin> = std::mem::take(&mut self.in_flight).into_values().flatten().map(|(o, _)| o).collect();
        for origin in queued.into_iter().chain(carried) {
            self.answer(origin, Err(error.clone()));
        }
        if let Some(h) = self.hand_over.take() {
            let requests: Vec<u64> = h.requests.into_iter().filter(|r| *r != STEP_DOWN_REQUEST).collect();
            self.outputs.push_back(Output::HandedOver { requests, error });
        }
        if let Some(s) = self.stepping_down.take() {
            self.outputs.push_back(Output::SteppedDown { requests: s.requests, handed_over: false });
        }
    }

    /// Request `request` wants this leader replaced by one of `successors` (a voter removing
    /// this node, a planned stop). Answered by `HandedOver`, with the error that tells the
    /// caller to retry (on the new leader).
    pub fn handle_hand_over(&mut self, now: Timestamp, request: u64, successors: &BTreeSet<MetaNodeId>) {
        self.last_now = now;
        if let Some(h) = &mut self.hand_over {
            h.requests.push(request);
            return;
        }
        let successor = self
            .status
            .members
            .iter()
            .filter(|m| m.id != self.config.id && successors.contains(&m.id))
            .min_by_key(|m| m.lag.unwrap_or(u64::MAX))
            .filter(|m| m.lag.is_some())
            .cloned();
        let Some(successor) = successor else {
            let error = RpcError::Unavailable(format!("metadata node {} leads and no other voter can take over yet", self.config.id));
            self.hand_over_ended(now, vec![request], error);
            return;
        };
        let deadline = now.plus(self.config.election_timeout_max);
        self.hand_over =
            Some(HandOver { successor: successor.id, addr: successor.addr, phase: HandOverPhase::CatchingUp { deadline }, requests: vec![request] });
        self.step_hand_over(now);
    }

    /// Request `request` wants leadership gone before a planned stop: handed to the most
    /// caught-up other voter, tried up to `STEP_DOWN_ATTEMPTS_MAX` times. Answered by
    /// `SteppedDown`.
    pub fn handle_step_down(&mut self, now: Timestamp, request: u64) {
        self.last_now = now;
        if let Some(s) = &mut self.stepping_down {
            s.requests.push(request);
            return;
        }
        let mut successors = self.status.target_voters();
        successors.remove(&self.config.id);
        if !self.leads() || successors.is_empty() {
            self.outputs.push_back(Output::SteppedDown { requests: vec![request], handed_over: false });
            return;
        }
        self.stepping_down = Some(StepDown { requests: vec![request], tries_left: STEP_DOWN_ATTEMPTS_MAX, successors });
        self.try_step_down(now);
    }

    /// The next move of a step-down: done once this node no longer leads, else another
    /// hand-over while tries are left.
    fn try_step_down(&mut self, now: Timestamp) {
        if self.hand_over.is_some() {
            return;
        }
        let leads = self.leads();
        let Some(s) = &mut self.stepping_down else { return };
        if !leads || s.tries_left == 0 {
            let requests = std::mem::take(&mut s.requests);
            self.stepping_down = None;
            self.outputs.push_back(Output::SteppedDown { requests, handed_over: !leads });
            return;
        }
        s.tries_left -= 1;
        let successors = s.successors.clone();
        self.handle_hand_over(now, STEP_DOWN_REQUEST, &successors);
    }

    /// A hand-over ended with `error`: its callers hear so, and a step-down moves on.
    fn hand_over_ended(&mut self, now: Timestamp, requests: Vec<u64>, error: RpcError) {
        let stepping = requests.contains(&STEP_DOWN_REQUEST);
        let requests: Vec<u64> = requests.into_iter().filter(|r| *r != STEP_DOWN_REQUEST).collect();
        if stepping {
            tracing::info!(id = self.config.id, outcome = %error, "stepping down before stopping");
        }
        if !requests.is_empty() {
            self.outputs.push_back(Output::HandedOver { requests, error });
        }
        if stepping {
            self.try_step_down(now);
        }
    }

    /// Whether a hand-over is running (proposals are refused meanwhile).
    pub fn handing_over(&self) -> bool {
        self.hand_over.is_some()
    }

    fn step_hand_over(&mut self, now: Timestamp) {
        let lease = self.config.election_timeout_max;
        let Some(h) = &mut self.hand_over else { return };
        match h.phase {
            HandOverPhase::CatchingUp { deadline } => {
                let lag = self.status.members.iter().find(|m| m.id == h.successor).and_then(|m| m.lag);
                if lag == Some(0) {
                    // Followers refuse votes while their leader lease runs (openraft renews it
                    // with every heartbeat): go quiet for a lease, and do not campaign, so that
                    // the successor's election is the one that can win.
                    h.phase = HandOverPhase::Quiet { until: now.plus(lease) };
                    self.outputs.push_back(Output::SetActive(false));
                } else if now >= deadline {
                    self.end_hand_over(now);
                }
            }
            HandOverPhase::Quiet { until } if now >= until => {
                h.phase = HandOverPhase::Asking;
                let (node, addr) = (h.successor, h.addr.clone());
                self.outputs.push_back(Output::AskToCampaign { node, addr, timeout: lease });
            }
            HandOverPhase::Settling { until } if now >= until => {
                self.outputs.push_back(Output::SetActive(true));
                self.end_hand_over(now);
            }
            HandOverPhase::Quiet { .. } | HandOverPhase::Asking | HandOverPhase::Settling { .. } => {}
        }
    }

    /// The successor was asked to campaign; `answered`: it said it would. One that did not
    /// answer (stopped, unreachable) will not take over: the hand-over ends now rather than
    /// after settling, and a step-down does not try it again (when the whole cluster stops
    /// at once, the leader's stop would otherwise wait out every try).
    pub fn handle_campaign_asked(&mut self, now: Timestamp, answered: bool) {
        let Some(h) = &mut self.hand_over else { return };
        if h.phase != HandOverPhase::Asking {
            return;
        }
        if answered {
            h.phase = HandOverPhase::Settling { until: now.plus(self.config.election_timeout_max) };
            return;
        }
        let gone = h.successor;
        if let Some(s) = &mut self.stepping_down {
            s.successors.remove(&gone);
            if s.successors.is_empty() {
                s.tries_left = 0;
            }
        }
        self.outputs.push_back(Output::SetActive(true));
        self.end_hand_over(now);
    }

    fn end_hand_over(&mut self, now: Timestamp) {
        if let Some(h) = self.hand_over.take() {
            let error = RpcError::Unavailable(format!("metadata node {} leads: handing over to node {} before it leaves", self.config.id, h.successor));
            self.hand_over_ended(now, h.requests, error);
        }
    }

    /// The answer to `CheckInitialized` or `Initialize`.
    pub fn handle_initialized(&mut self, now: Timestamp, initialized: bool) {
        let Forming::Asking { deadline } = self.forming else { return };
        if initialized {
            self.forming = Forming::Done;
        } else if now >= deadline {
            self.forming = Forming::Asking { deadline };
            self.outputs.push_back(Output::Initialize);
        } else {
            self.forming = Forming::Waiting { deadline, next_check: now.plus(self.config.raft_heartbeat_interval) };
        }
    }

    /// Initializing failed for a reason other than an existing cluster: formation gives up
    /// (the node still joins when it is added).
    pub fn handle_formation_failed(&mut self) {
        self.forming = Forming::Done;
    }

    /// The answer to `ChangeVoters`.
    pub fn handle_membership_done(&mut self) {
        self.changing_membership = false;
    }

    /// Does what is due at `now`: `ns` is the applied namespace, `unix_ms` the wall clock (for
    /// upload expiry and the trash).
    /// Key material for the next chunk key the leader makes (from the OS's randomness).
    pub fn set_fresh_key(&mut self, key: crate::tokens::TokenKey) {
        self.fresh_key = Some(key);
    }

    /// Whether the next chunk key has no key material yet (at start, and after each rotation):
    /// the driver draws it only then.
    pub fn needs_fresh_key(&self) -> bool {
        self.fresh_key.is_none()
    }

    pub fn handle_timeout(&mut self, now: Timestamp, unix_ms: u64, ns: &Namespace) {
        self.last_now = now;
        if self.status.stopped {
            return;
        }
        if now >= self.split_vote_check {
            self.break_split_vote();
            self.split_vote_check = now.plus(self.election_wait());
        }
        if let Forming::Waiting { deadline, next_check } = self.forming {
            if now >= next_check {
                self.forming = Forming::Asking { deadline };
                self.outputs.push_back(Output::CheckInitialized);
            }
        }
        self.step_hand_over(now);
        self.housekeep(now, unix_ms, ns);
    }

    /// A node that has stayed a candidate with no leader across two of its randomized waits
    /// starts an election of its own.
    fn break_split_vote(&mut self) {
        if !self.status.candidate || self.status.leader.is_some() {
            self.stuck_term = None;
            return;
        }
        if self.stuck_term.is_some_and(|t| t < self.status.term) {
            tracing::info!(id = self.config.id, term = self.status.term, "no leader after repeated elections; starting one at a random moment");
            self.outputs.push_back(Output::Elect);
            self.stuck_term = None;
        } else {
            self.stuck_term = Some(self.status.term);
        }
    }

    /// A random wait between the election timeouts.
    fn election_wait(&mut self) -> Duration {
        let (min, max) = (self.config.election_timeout_min, self.config.election_timeout_max);
        let spread_ms = (max.saturating_sub(min).as_millis() as u64).max(1);
        min + Duration::from_millis(self.random() % spread_ms)
    }

    /// splitmix64.
    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn housekeep(&mut self, now: Timestamp, unix_ms: u64, ns: &Namespace) {
        if self.housekeeping_pending > 0 || !self.leads() || self.hand_over.is_some() {
            if now >= self.next_housekeeping {
                self.next_housekeeping = now.plus(self.config.leader.housekeeping_interval);
            }
            return;
        }
        if self.status.joint && !self.changing_membership {
            let voters = self.status.target_voters();
            if voters.contains(&self.config.id) {
                tracing::info!(voters = ?voters, "finishing a membership change left half done");
                self.changing_membership = true;
                self.outputs.push_back(Output::ChangeVoters { voters });
            } else {
                // A leader that is not among the new voters cannot finish the change itself.
                self.handle_hand_over(now, HOUSEKEEPING_REQUEST, &voters);
                if self.hand_over.is_some() {
                    return;
                }
                // No voter can take over yet: keep leading (and ticking) until one can.
            }
        }
        let random = [self.random(), self.random()];
        let term = self.status.term;
        let fresh_key = self.fresh_key;
        let commands = self.leader_of(term, now).tick(now, unix_ms, ns, random, fresh_key);
        if commands.iter().any(|c| matches!(c, Command::RotateChunkKey { .. })) {
            self.fresh_key = None;
        }
        self.next_housekeeping = now.plus(self.config.leader.housekeeping_interval);
        for command in commands {
            self.housekeeping_pending += 1;
            self.queued.push_back(Queued { origin: Origin::Housekeeping, commands: vec![command] });
        }
        self.start_entries();
    }
}

/// The request id of hand-overs housekeeping starts (nobody waits for their answer).
pub const HOUSEKEEPING_REQUEST: u64 = 0;

/// A namespace error as the caller sees it: whose fault, and whether to retry.
pub fn namespace_error(e: NamespaceError) -> RpcError {
    use crate::tokens::TokenError;
    let message = e.to_string();
    match e {
        NamespaceError::InvalidPath { .. }
        | NamespaceError::InvalidArgument(_)
        | NamespaceError::InvalidUpload(_)
        | NamespaceError::BadChunk { .. }
        | NamespaceError::MoveIntoItself { .. }
        | NamespaceError::Root(_) => RpcError::InvalidArgument(message),
        NamespaceError::AlreadyExists(_) => RpcError::AlreadyExists(message),
        NamespaceError::NotFound(_) | NamespaceError::NoParent { .. } | NamespaceError::UploadNotFound(_) => RpcError::NotFound(message),
        NamespaceError::ParentIsFile { .. }
        | NamespaceError::IsDirectory(_)
        | NamespaceError::NotADirectory(_)
        | NamespaceError::DirectoryNotEmpty(_)
        | NamespaceError::FileChanged { .. }
        | NamespaceError::Incomplete { .. }
        | NamespaceError::ClusterIdMismatch { .. }
        | NamespaceError::RequestTooOld { .. } => RpcError::FailedPrecondition(message),
        // The cluster's load, not the request: worth retrying later.
        NamespaceError::TooManyUploads { .. } | NamespaceError::TooManyBadReplicas { .. } => RpcError::Unavailable(message),
        NamespaceError::Token(e) => match e {
            TokenError::Unknown { .. } => RpcError::NotFound(message),
            TokenError::Exists(_) => RpcError::AlreadyExists(message),
            TokenError::BadName(_) => RpcError::InvalidArgument(message),
            TokenError::TooMany => RpcError::FailedPrecondition(message),
            TokenError::Malformed | TokenError::BadSignature { .. } | TokenError::Expired { .. } => RpcError::PermissionDenied(message),
        },
    }
}

/// Which pieces of an incoming snapshot a follower accepts: one transfer at a time, its pieces
/// in order.
#[derive(Debug, Default)]
pub struct SnapshotReceiver {
    /// The transfer in progress: snapshot id, bytes received.
    incoming: Option<(String, u64)>,
}

impl SnapshotReceiver {
    /// Whether a piece of snapshot `id` at `offset` may be written: one at offset 0 starts a
    /// new transfer (returning the id of the one it replaces, whose file goes); any other
    /// must continue the transfer in progress, else it is refused and the leader starts
    /// over at 0. Nothing advances until `written`.
    pub fn accept(&mut self, id: &str, offset: u64) -> Result<Option<String>, RpcError> {
        let mut replaced = None;
        if offset == 0 {
            replaced = self.incoming.take().map(|(old, _)| old);
            self.incoming = Some((id.to_string(), 0));
        }
        match &self.incoming {
            Some((current, received)) if current == id && *received == offset => Ok(replaced),
            _ => Err(RpcError::FailedPrecondition(format!("snapshot {id} piece at offset {offset} does not continue the transfer in progress"))),
        }
    }

    /// The accepted piece is written: `received` bytes in all. The last piece (`done`) ends
    /// the transfer, which the caller then installs.
    pub fn written(&mut self, id: &str, received: u64, done: bool) {
        self.incoming = (!done).then(|| (id.to_string(), received));
    }
}

/// One step of a membership change, carried out in order by the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipStep {
    /// Add a learner and wait until it has caught up (it never counts toward a quorum it
    /// cannot serve yet).
    AddLearner { id: MetaNodeId, addr: String },
    /// Move the cluster to these voters (through joint consensus; the removed leave the
    /// learners too and stop receiving the log).
    ChangeVoters(BTreeSet<MetaNodeId>),
    /// This leader cannot make the change itself: hand over (the caller retries on the new
    /// leader, which makes it).
    HandOver(BTreeSet<MetaNodeId>),
}

/// Steps that first finish a change left half done (joint consensus), if any: a leader not
/// among the new voters hands over instead of finishing it.
fn finish_joint(status: &RaftStatus, me: MetaNodeId) -> (Vec<MembershipStep>, BTreeSet<MetaNodeId>, bool) {
    let voters = status.target_voters();
    if !status.joint {
        return (vec![], voters, true);
    }
    if !voters.contains(&me) {
        return (vec![MembershipStep::HandOver(voters.clone())], voters, false);
    }
    (vec![MembershipStep::ChangeVoters(voters.clone())], voters, true)
}

/// The steps that make `id` (at `addr`) a voter, as leader `me` sees the cluster.
pub fn plan_add(status: &RaftStatus, me: MetaNodeId, id: MetaNodeId, addr: &str) -> Result<Vec<MembershipStep>, RpcError> {
    if id == 0 {
        return Err(RpcError::InvalidArgument("metadata node ids start at 1".into()));
    }
    if addr.len() > crate::namespace::ADDR_MAX_BYTES || addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
        return Err(RpcError::InvalidArgument(format!(
            "{:?} is not HOST:PORT of at most {} bytes",
            crate::limits::echo(addr),
            crate::namespace::ADDR_MAX_BYTES
        )));
    }
    if let Some(m) = status.members.iter().find(|m| m.id == id) {
        if m.addr != addr {
            return Err(RpcError::AlreadyExists(format!("metadata node {id} is already a member at {}", m.addr)));
        }
    }
    let (mut steps, mut voters, can_go_on) = finish_joint(status, me);
    if can_go_on && !voters.contains(&id) {
        steps.push(MembershipStep::AddLearner { id, addr: addr.to_string() });
        voters.insert(id);
        steps.push(MembershipStep::ChangeVoters(voters));
    }
    Ok(steps)
}

/// The steps that remove member `id`, as leader `me` sees the cluster.
pub fn plan_remove(status: &RaftStatus, me: MetaNodeId, id: MetaNodeId) -> Result<Vec<MembershipStep>, RpcError> {
    if !status.members.iter().any(|m| m.id == id) {
        return Err(RpcError::NotFound(format!("metadata node {id} is not a member")));
    }
    let (mut steps, voters, can_go_on) = finish_joint(status, me);
    if !can_go_on {
        return Ok(steps);
    }
    let voters: BTreeSet<MetaNodeId> = voters.into_iter().filter(|v| *v != id).collect();
    if voters.is_empty() {
        return Err(RpcError::FailedPrecondition("cannot remove the last voter".into()));
    }
    steps.push(if id == me { MembershipStep::HandOver(voters) } else { MembershipStep::ChangeVoters(voters) });
    Ok(steps)
}

#[cfg(test)]
mod tests;
