//! The engine driven by a tiny loop with virtual time and a model of Raft: no runtime, no
//! openraft. `World` carries out the engine's outputs the way `server.rs` does, against a
//! cluster that is only a status the test sets.

use std::time::Duration;

use super::*;

const ELECTION_MIN: Duration = Duration::from_millis(1000);
const ELECTION_MAX: Duration = Duration::from_millis(2000);

fn config(id: MetaNodeId, members: &[MetaNodeId]) -> EngineConfig {
    EngineConfig {
        id,
        members: members.iter().copied().collect(),
        raft_heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: ELECTION_MIN,
        election_timeout_max: ELECTION_MAX,
        leader: LeaderConfig::default(),
    }
}

fn member(id: MetaNodeId, lag: Option<u64>) -> MemberStatus {
    MemberStatus { id, addr: format!("10.0.0.{id}:7000"), target_voter: true, lag }
}

/// Node 1 leading a cluster of three, followers fully caught up.
fn leading() -> RaftStatus {
    RaftStatus { leader: Some(1), term: 2, members: vec![member(1, Some(0)), member(2, Some(0)), member(3, Some(5))], ..RaftStatus::default() }
}

fn command(n: u64) -> Command {
    Command::SetClusterId { cluster_id: format!("c{n}") }
}

struct World {
    now: Timestamp,
    engine: MetaEngine,
    ns: Namespace,
    /// What the model of Raft shows the engine.
    status: RaftStatus,
    /// Entries proposed and not yet answered, in order.
    proposed: Vec<(EntryId, Command)>,
    replies: Vec<(ProposalId, ProposalResult)>,
    housekept: Vec<Result<Outcome, RpcError>>,
    /// Every other output, in order.
    outputs: Vec<Output>,
    /// Answer `CheckInitialized` with this.
    initialized: bool,
}

impl World {
    fn new(config: EngineConfig, status: RaftStatus) -> Self {
        let now = Timestamp(1_000_000);
        let mut engine = MetaEngine::new(config, now, 7);
        engine.handle_status(status.clone());
        World { now, engine, ns: Namespace::default(), status, proposed: vec![], replies: vec![], housekept: vec![], outputs: vec![], initialized: false }
    }

    fn drain(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::Propose { entry, command } => self.proposed.push((entry, command)),
                Output::Reply { proposal, result } => self.replies.push((proposal, result)),
                Output::Housekept { result } => self.housekept.push(result),
                Output::CheckInitialized => {
                    let initialized = self.initialized;
                    self.engine.handle_initialized(self.now, initialized)
                }
                Output::Initialize => {
                    self.outputs.push(Output::Initialize);
                    self.initialized = true;
                    self.engine.handle_initialized(self.now, true);
                }
                other => self.outputs.push(other),
            }
        }
    }

    fn propose(&mut self, commands: Vec<Command>) -> ProposalId {
        let id = self.engine.next_proposal_id();
        self.engine.handle_status(self.status.clone());
        self.engine.handle_propose(id, commands);
        self.drain();
        id
    }

    /// Commits the oldest proposed entry, applying each of its commands as `Done`.
    fn commit_next(&mut self) {
        let (entry, command) = self.proposed.remove(0);
        let result = match command {
            Command::Batch(commands) => Ok(Outcome::Batch(commands.iter().map(|_| Ok(Outcome::Done)).collect())),
            _ => Ok(Outcome::Done),
        };
        self.engine.handle_written(entry, Ok(result));
        self.drain();
    }

    /// Advances virtual time through every timeout due until `now + d`.
    fn run_for(&mut self, d: Duration) {
        let end = self.now.plus(d);
        loop {
            self.engine.handle_status(self.status.clone());
            let Some(at) = self.engine.poll_timeout() else { break };
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            self.engine.handle_timeout(self.now, 1_700_000_000_000, &self.ns);
            self.drain();
            // A timeout handled moves the timer on: the driver would spin otherwise.
            let next = self.engine.poll_timeout();
            assert!(next.is_none_or(|t| t > self.now), "poll_timeout {next:?} not after {:?} once handled", self.now);
        }
        self.now = end;
    }

    fn reply(&self, id: ProposalId) -> Option<&ProposalResult> {
        self.replies.iter().find(|(p, _)| *p == id).map(|(_, r)| r)
    }
}

#[test]
fn proposals_arriving_while_entries_are_in_flight_share_the_next_entry() {
    let mut w = World::new(config(1, &[]), leading());
    // The first PROPOSALS_IN_FLIGHT_MAX go out alone: nothing is in flight yet to wait for.
    let first: Vec<ProposalId> = (0..PROPOSALS_IN_FLIGHT_MAX as u64).map(|n| w.propose(vec![command(n)])).collect();
    assert_eq!(w.proposed.len(), PROPOSALS_IN_FLIGHT_MAX);
    // The rest wait, and then go as one batch, a proposal's commands never split.
    let waiting: Vec<ProposalId> = (0..10).map(|n| w.propose(vec![command(100 + 2 * n), command(101 + 2 * n)])).collect();
    assert_eq!(w.proposed.len(), PROPOSALS_IN_FLIGHT_MAX, "more entries in flight than allowed");
    w.commit_next();
    assert_eq!(w.proposed.len(), PROPOSALS_IN_FLIGHT_MAX);
    let (_, batch) = w.proposed.last().unwrap();
    assert!(matches!(batch, Command::Batch(c) if c.len() == 20), "{batch:?}");
    while !w.proposed.is_empty() {
        w.commit_next();
    }
    for id in first {
        assert_eq!(w.reply(id), Some(&Ok(vec![Ok(Outcome::Done)])));
    }
    for id in waiting {
        assert_eq!(w.reply(id), Some(&Ok(vec![Ok(Outcome::Done), Ok(Outcome::Done)])));
    }
    assert_eq!(w.replies.len(), PROPOSALS_IN_FLIGHT_MAX + 10, "every proposal answered once");
}

#[test]
fn an_entry_never_holds_more_than_a_batch_and_an_uncommitted_one_fails_all_it_carried() {
    let mut w = World::new(config(1, &[]), leading());
    for n in 0..PROPOSALS_IN_FLIGHT_MAX as u64 {
        w.propose(vec![command(n)]);
    }
    let big: Vec<ProposalId> = (0..3).map(|n| w.propose((0..100).map(|k| command(n * 1000 + k)).collect())).collect();
    w.commit_next();
    // 200 commands fit one entry, the third proposal's 100 do not.
    let (_, batch) = w.proposed.last().unwrap();
    assert!(matches!(batch, Command::Batch(c) if c.len() == 200));
    let (entry, _) = w.proposed.pop().unwrap();
    w.engine.handle_written(entry, Err(RpcError::NotLeader { leader: None }));
    w.drain();
    assert_eq!(w.reply(big[0]), Some(&Err(RpcError::NotLeader { leader: None })));
    assert_eq!(w.reply(big[1]), Some(&Err(RpcError::NotLeader { leader: None })));
    while !w.proposed.is_empty() {
        w.commit_next();
    }
    assert!(matches!(w.reply(big[2]), Some(Ok(r)) if r.len() == 100));
}

#[test]
fn a_namespace_refusal_answers_only_its_own_command() {
    let mut w = World::new(config(1, &[]), leading());
    let id = w.propose(vec![command(1)]);
    let (entry, _) = w.proposed.remove(0);
    w.engine.handle_written(entry, Ok(Err(NamespaceError::NotFound("/a".into()))));
    w.drain();
    assert!(matches!(w.reply(id), Some(Ok(r)) if matches!(r[..], [Err(RpcError::NotFound(_))])));
}

#[test]
fn a_hand_over_stops_writes_waits_for_the_successor_goes_quiet_and_asks_it_to_campaign() {
    let mut w = World::new(config(1, &[]), leading());
    let successors = [2, 3].into_iter().collect();
    // Node 3 lags: node 2, the most caught up, is chosen.
    w.status.members[1].lag = Some(4);
    w.engine.handle_status(w.status.clone());
    w.engine.handle_hand_over(w.now, 7, &successors);
    w.drain();
    assert!(w.engine.handing_over());
    let refused = w.propose(vec![command(1)]);
    assert!(matches!(w.reply(refused), Some(Err(RpcError::Unavailable(m))) if m.contains("handing leadership over")));
    // A second caller shares the hand-over in progress.
    w.engine.handle_hand_over(w.now, 8, &successors);
    w.run_for(Duration::from_millis(50));
    assert!(w.outputs.is_empty(), "quiet before the successor caught up: {:?}", w.outputs);
    w.status.members[1].lag = Some(0);
    w.run_for(Duration::from_millis(20));
    assert_eq!(w.outputs, vec![Output::SetActive(false)]);
    w.run_for(ELECTION_MAX);
    assert_eq!(w.outputs[1], Output::AskToCampaign { node: 2, addr: "10.0.0.2:7000".into(), timeout: ELECTION_MAX });
    w.engine.handle_campaign_asked(w.now, true);
    w.run_for(ELECTION_MAX);
    assert_eq!(w.outputs[2], Output::SetActive(true));
    assert!(matches!(&w.outputs[3], Output::HandedOver { requests, error: RpcError::Unavailable(m) } if requests == &vec![7, 8] && m.contains("node 2")));
    assert!(!w.engine.handing_over());
    let accepted = w.propose(vec![command(2)]);
    assert!(w.reply(accepted).is_none() && w.proposed.iter().any(|(_, c)| *c == command(2)), "writes resume after the hand-over");
}

#[test]
fn a_hand_over_with_no_caught_up_voter_is_refused_and_one_whose_successor_never_catches_up_ends() {
    let mut w = World::new(config(1, &[]), RaftStatus { members: vec![member(1, Some(0)), member(2, None)], ..leading() });
    w.engine.handle_hand_over(w.now, 1, &[2].into_iter().collect());
    w.drain();
    assert!(matches!(&w.outputs[..], [Output::HandedOver { error: RpcError::Unavailable(m), .. }] if m.contains("no other voter")));
    assert!(!w.engine.handing_over());

    let mut w = World::new(config(1, &[]), RaftStatus { members: vec![member(1, Some(0)), member(2, Some(3))], ..leading() });
    w.engine.handle_hand_over(w.now, 1, &[2].into_iter().collect());
    w.run_for(ELECTION_MAX + Duration::from_millis(50));
    assert!(matches!(&w.outputs[..], [Output::HandedOver { .. }]), "{:?}", w.outputs);
    assert!(!w.engine.handing_over(), "writes stopped for good");
}

#[test]
fn a_membership_change_interrupted_by_a_crash_is_finished_by_the_next_leader() {
    // The leader that started moving {1,2,3} to {1,2,3,4} died in joint consensus; node 1
    // leads now and is among the new voters: its housekeeping finishes the change.
    let mut status = leading();
    status.joint = true;
    status.members.push(member(4, Some(0)));
    let mut w = World::new(config(1, &[]), status.clone());
    w.run_for(Duration::from_secs(2));
    let voters: BTreeSet<MetaNodeId> = [1, 2, 3, 4].into_iter().collect();
    assert_eq!(w.outputs.iter().filter(|o| **o == Output::ChangeVoters { voters: voters.clone() }).count(), 1, "{:?}", w.outputs);
    // Not again while the change is out; again if it failed and the cluster is still joint.
    w.run_for(Duration::from_secs(3));
    assert_eq!(w.outputs.iter().filter(|o| matches!(o, Output::ChangeVoters { .. })).count(), 1);
    w.engine.handle_membership_done();
    while !w.proposed.is_empty() {
        w.commit_next(); // the housekeeping proposals of the ticks before
    }
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.outputs.iter().filter(|o| matches!(o, Output::ChangeVoters { .. })).count(), 2);
    // Any request to change membership meanwhile finishes the change first.
    assert_eq!(plan_add(&status, 1, 5, "10.0.0.5:7000").unwrap()[0], MembershipStep::ChangeVoters(voters.clone()));

    // A leader the change removes cannot finish it: it hands over to the new voters.
    let mut status = leading();
    status.joint = true;
    status.members[0].target_voter = false;
    let mut w = World::new(config(1, &[]), status.clone());
    w.run_for(Duration::from_millis(1100));
    assert!(w.engine.handing_over(), "{:?}", w.outputs);
    assert_eq!(plan_remove(&status, 1, 3).unwrap(), vec![MembershipStep::HandOver([2, 3].into_iter().collect())]);
    // ... and while no new voter has caught up, it keeps leading and housekeeping (run_for
    // checks that its timer moves on), trying the hand-over again at each tick.
    status.members[1].lag = None;
    status.members[2].lag = None;
    let mut w = World::new(config(1, &[]), status);
    for _ in 0..5 {
        w.run_for(Duration::from_millis(1100));
        while !w.proposed.is_empty() {
            w.commit_next();
        }
    }
    assert!(!w.engine.handing_over());
    assert!(w.outputs.iter().filter(|o| matches!(o, Output::HandedOver { .. })).count() >= 3, "{:?}", w.outputs);
    assert!(w.housekept.len() >= 3, "housekeeping goes on: {:?}", w.housekept);
}

#[test]
fn membership_plans_add_a_learner_first_and_never_remove_the_last_voter() {
    let status = leading();
    assert_eq!(
        plan_add(&status, 1, 4, "h:1").unwrap(),
        vec![MembershipStep::AddLearner { id: 4, addr: "h:1".into() }, MembershipStep::ChangeVoters([1, 2, 3, 4].into_iter().collect())]
    );
    assert_eq!(plan_add(&status, 1, 2, "10.0.0.2:7000").unwrap(), vec![], "already a voter: nothing to do");
    assert!(matches!(plan_add(&status, 1, 2, "elsewhere:1"), Err(RpcError::AlreadyExists(_))));
    assert!(matches!(plan_add(&status, 1, 0, "h:1"), Err(RpcError::InvalidArgument(_))));
    assert!(matches!(plan_add(&status, 1, 4, "nope"), Err(RpcError::InvalidArgument(_))));
    assert_eq!(plan_remove(&status, 1, 3).unwrap(), vec![MembershipStep::ChangeVoters([1, 2].into_iter().collect())]);
    assert_eq!(plan_remove(&status, 1, 1).unwrap(), vec![MembershipStep::HandOver([2, 3].into_iter().collect())]);
    assert!(matches!(plan_remove(&status, 1, 9), Err(RpcError::NotFound(_))));
    let alone = RaftStatus { members: vec![member(1, Some(0))], ..leading() };
    assert!(matches!(plan_remove(&alone, 1, 1), Err(RpcError::FailedPrecondition(_))));
}

#[test]
fn a_candidate_stuck_across_two_waits_starts_an_election_of_its_own() {
    let status = RaftStatus { candidate: true, term: 5, members: vec![member(1, None), member(2, None)], ..RaftStatus::default() };
    let mut w = World::new(config(1, &[]), status);
    w.run_for(ELECTION_MAX);
    assert!(!w.outputs.contains(&Output::Elect), "one wait is not stuck");
    // The term moves on (its own elections fail) and it is still a candidate with no leader.
    w.status.term = 6;
    w.run_for(ELECTION_MAX);
    assert!(w.outputs.contains(&Output::Elect), "{:?}", w.outputs);
    // A node that sees a leader never does.
    let mut w = World::new(config(1, &[]), RaftStatus { leader: Some(2), term: 5, ..RaftStatus::default() });
    w.run_for(ELECTION_MAX * 10);
    assert!(!w.outputs.contains(&Output::Elect));
}

#[test]
fn the_first_member_forms_the_cluster_and_the_others_wait_for_it() {
    let mut first = World::new(config(1, &[1, 2, 3]), RaftStatus::default());
    first.run_for(Duration::from_millis(1));
    assert_eq!(first.outputs, vec![Output::Initialize]);

    // Reached by the first member in time: never initializes.
    let mut second = World::new(config(2, &[1, 2, 3]), RaftStatus::default());
    second.run_for(ELECTION_MAX);
    second.initialized = true;
    second.run_for(ELECTION_MAX * 3);
    assert!(second.outputs.is_empty(), "{:?}", second.outputs);

    // The first member is down: after the grace, it initializes itself.
    let mut third = World::new(config(3, &[1, 2, 3]), RaftStatus::default());
    third.run_for(ELECTION_MAX * 3 - Duration::from_millis(200));
    assert!(third.outputs.is_empty());
    third.run_for(Duration::from_millis(400));
    assert_eq!(third.outputs, vec![Output::Initialize]);

    // No member list: it waits to be added.
    let mut joining = World::new(config(4, &[]), RaftStatus::default());
    joining.run_for(ELECTION_MAX * 10);
    assert!(joining.outputs.is_empty());
}

#[test]
fn housekeeping_runs_when_the_leader_says_and_not_while_its_last_proposals_are_out() {
    let mut w = World::new(config(1, &[]), leading());
    // A chunk key that is not due for rotation: this test follows the cluster id alone.
    w.ns.apply(Command::RotateChunkKey { key: crate::tokens::TokenKey([1; 32]), made_unix_ms: 1_700_000_000_000 }).unwrap();
    // A new cluster: the first tick, one interval after the node started, proposes its id.
    w.run_for(LeaderConfig::default().housekeeping_interval - Duration::from_millis(1));
    assert!(w.proposed.is_empty());
    w.run_for(Duration::from_millis(2));
    assert_eq!(w.proposed.len(), 1, "{:?}", w.proposed);
    assert!(matches!(&w.proposed[0].1, Command::SetClusterId { .. }));
    // Unanswered: no further tick however long it takes.
    w.run_for(Duration::from_secs(10));
    assert_eq!(w.proposed.len(), 1);
    w.commit_next();
    assert_eq!(w.housekept, vec![Ok(Outcome::Done)]);
    // The namespace still has no id (this world applies nothing): the tick due long ago
    // runs at once and proposes it again; the one after waits a housekeeping interval.
    w.run_for(Duration::from_millis(1));
    assert_eq!(w.proposed.len(), 1);
    w.commit_next();
    w.run_for(LeaderConfig::default().housekeeping_interval - Duration::from_millis(2));
    assert!(w.proposed.is_empty());
    w.run_for(Duration::from_millis(2));
    assert_eq!(w.proposed.len(), 1);
    // A follower does no housekeeping.
    let mut f = World::new(config(2, &[]), RaftStatus { leader: Some(1), ..leading() });
    f.run_for(Duration::from_secs(10));
    assert!(f.proposed.is_empty());
}

#[test]
fn a_stopped_raft_answers_every_waiting_caller_and_the_engine_goes_quiet() {
    let mut w = World::new(config(1, &[]), leading());
    let ids: Vec<ProposalId> = (0..PROPOSALS_IN_FLIGHT_MAX as u64 + 2).map(|n| w.propose(vec![command(n)])).collect();
    w.status.stopped = true;
    w.engine.handle_status(w.status.clone());
    w.drain();
    for id in ids {
        assert!(matches!(w.reply(id), Some(Err(RpcError::Unavailable(_)))));
    }
    assert_eq!(w.engine.poll_timeout(), None);
    let late = w.propose(vec![command(9)]);
    assert!(matches!(w.reply(late), Some(Err(RpcError::Unavailable(_)))));
}

#[test]
fn snapshot_pieces_are_taken_in_order_for_one_transfer_at_a_time() {
    let mut r = SnapshotReceiver::default();
    assert!(matches!(r.accept("s1", 10), Err(RpcError::FailedPrecondition(_))), "no transfer yet");
    assert_eq!(r.accept("s1", 0), Ok(None));
    r.written("s1", 10, false);
    assert!(r.accept("s1", 5).is_err() && r.accept("s2", 10).is_err(), "a piece that does not continue it");
    // A failed write leaves the transfer where it was: the same piece may come again.
    assert_eq!(r.accept("s1", 10), Ok(None));
    assert_eq!(r.accept("s1", 10), Ok(None));
    r.written("s1", 20, false);
    // A new transfer replaces it.
    assert_eq!(r.accept("s2", 0), Ok(Some("s1".into())));
    r.written("s2", 5, true);
    assert!(r.accept("s2", 5).is_err(), "a finished transfer takes no more pieces");
}

#[test]
fn a_leader_handing_over_does_no_housekeeping_and_its_timer_still_moves_on() {
    // Leading for a while (its housekeeping due again and again), then handing over: the
    // successor never catches up to the quiet phase here, and later it does.
    let mut w = World::new(config(1, &[]), leading());
    w.run_for(Duration::from_secs(3));
    while !w.proposed.is_empty() {
        w.commit_next();
    }
    w.status.members[1].lag = Some(0);
    w.engine.handle_hand_over(w.now, 5, &[2].into_iter().collect());
    w.drain();
    let proposed_before = w.proposed.len();
    // Quiet, asking and settling; run_for asserts the timer moves on.
    w.run_for(ELECTION_MAX + Duration::from_millis(20));
    assert!(w.outputs.iter().any(|o| matches!(o, Output::AskToCampaign { .. })), "{:?}", w.outputs);
    w.engine.handle_campaign_asked(w.now, true);
    w.run_for(ELECTION_MAX - Duration::from_millis(1));
    assert_eq!(w.proposed.len(), proposed_before, "no housekeeping proposal during a hand-over");
    w.run_for(Duration::from_millis(2));
    assert!(w.outputs.iter().any(|o| matches!(o, Output::HandedOver { .. })), "{:?}", w.outputs);
    // Still the leader here (the model's status did not move): housekeeping resumes.
    w.run_for(Duration::from_secs(2));
    assert!(w.proposed.len() > proposed_before);
}

#[test]
fn a_planned_stop_hands_over_and_tries_again_when_the_successor_did_not_take_over() {
    // The successor is caught up, but leadership does not move (its election fails): after
    // STEP_DOWN_ATTEMPTS_MAX hand-overs the stop goes ahead without one.
    let mut w = World::new(config(1, &[]), RaftStatus { members: vec![member(1, Some(0)), member(2, Some(0))], ..leading() });
    w.engine.handle_step_down(w.now, 9);
    w.drain();
    for _ in 0..STEP_DOWN_ATTEMPTS_MAX {
        w.run_for(ELECTION_MAX + Duration::from_millis(20));
        w.engine.handle_campaign_asked(w.now, true);
        w.run_for(ELECTION_MAX + Duration::from_millis(20));
    }
    let asked = w.outputs.iter().filter(|o| matches!(o, Output::AskToCampaign { .. })).count();
    assert_eq!(asked, STEP_DOWN_ATTEMPTS_MAX, "{:?}", w.outputs);
    assert!(w.outputs.contains(&Output::SteppedDown { requests: vec![9], handed_over: false }), "{:?}", w.outputs);
    assert!(!w.outputs.iter().any(|o| matches!(o, Output::HandedOver { .. })), "a step-down's own hand-overs answer nobody else");

    // This time the successor wins its election during the first hand-over.
    let mut w = World::new(config(1, &[]), RaftStatus { members: vec![member(1, Some(0)), member(2, Some(0))], ..leading() });
    w.engine.handle_step_down(w.now, 9);
    w.run_for(ELECTION_MAX + Duration::from_millis(20));
    w.engine.handle_campaign_asked(w.now, true);
    w.status.leader = Some(2);
    w.run_for(ELECTION_MAX + Duration::from_millis(20));
    assert!(w.outputs.contains(&Output::SteppedDown { requests: vec![9], handed_over: true }), "{:?}", w.outputs);
    assert_eq!(w.outputs.iter().filter(|o| matches!(o, Output::AskToCampaign { .. })).count(), 1);

    // The whole cluster stops at once: each successor asked does not answer, is not tried
    // again, and the stop goes ahead as soon as none is left (not after every try).
    let mut w = World::new(config(1, &[]), RaftStatus { members: vec![member(1, Some(0)), member(2, Some(0)), member(3, Some(0))], ..leading() });
    let started = w.now;
    w.engine.handle_step_down(w.now, 9);
    let mut asked = Vec::new();
    for _ in 0..2 {
        w.run_for(ELECTION_MAX + Duration::from_millis(20));
        let Some(Output::AskToCampaign { node, .. }) = w.outputs.iter().rev().find(|o| matches!(o, Output::AskToCampaign { .. })) else {
            panic!("no successor asked: {:?}", w.outputs)
        };
        asked.push(*node);
        w.engine.handle_campaign_asked(w.now, false);
        w.drain();
    }
    asked.sort();
    assert_eq!(asked, vec![2, 3], "each successor asked once");
    assert!(w.outputs.contains(&Output::SteppedDown { requests: vec![9], handed_over: false }), "{:?}", w.outputs);
    assert_eq!(w.outputs.last(), Some(&Output::SteppedDown { requests: vec![9], handed_over: false }));
    assert!(w.outputs.iter().filter(|o| **o == Output::SetActive(true)).count() >= 2, "active again after each quiet phase: {:?}", w.outputs);
    assert!(w.now.saturating_since(started) < ELECTION_MAX * 3, "the stop waited {:?}", w.now.saturating_since(started));

    // A follower, or a leader alone, has nobody to hand over to.
    let mut w = World::new(config(1, &[]), RaftStatus { members: vec![member(1, Some(0))], ..leading() });
    w.engine.handle_step_down(w.now, 3);
    w.drain();
    assert_eq!(w.outputs, vec![Output::SteppedDown { requests: vec![3], handed_over: false }]);
}
