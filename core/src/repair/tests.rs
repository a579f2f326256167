//! The planner alone: priorities, bounds and what it drops. (The leader's tiny-loop world in
//! `meta/leader/tests.rs` runs it with nodes, heartbeats and virtual time.)

use super::*;
use crate::ids::FileId;

const NOW: Timestamp = Timestamp(1_000_000);

fn node(liveness: Liveness, free_bytes: u64) -> NodeState {
    NodeState { liveness, free_bytes, draining: false, rack: None }
}

fn nodes(states: &[(u64, Liveness)]) -> BTreeMap<StorageNodeId, NodeState> {
    states.iter().map(|&(id, l)| (StorageNodeId(id), node(l, 1 << 40))).collect()
}

struct Chunk {
    id: ChunkId,
    replicas: Vec<StorageNodeId>,
    bad: Option<BTreeSet<StorageNodeId>>,
    replication: u32,
}

fn chunk(file: u64, index: u32, replicas: &[u64], replication: u32) -> Chunk {
    Chunk { id: ChunkId::derive(FileId(file), index), replicas: replicas.iter().map(|&r| StorageNodeId(r)).collect(), bad: None, replication }
}

fn states(chunks: &[Chunk]) -> impl Iterator<Item = ChunkState<'_>> {
    chunks.iter().map(|c| ChunkState {
        id: c.id,
        size: 4 << 20,
        sha256: Sha256Digest([1; 32]),
        chain: None,
        replication: c.replication,
        replicas: &c.replicas,
        bad: c.bad.as_ref(),
        deleting: vec![],
    })
}

fn planner(config: RepairConfig) -> RepairPlanner {
    RepairPlanner::new(config, Timestamp(0))
}

#[test]
fn nothing_is_planned_during_the_start_grace() {
    let config = RepairConfig { start_grace: Some(Duration::from_secs(10)), ..RepairConfig::default() };
    let mut p = RepairPlanner::new(config, NOW);
    let chunks = [chunk(1, 0, &[1], 3)];
    let n = nodes(&[(1, Liveness::Alive), (2, Liveness::Alive), (3, Liveness::Alive)]);
    p.plan(NOW.plus(config.start_grace.unwrap() / 2), states(&chunks), &n);
    assert_eq!(p.stats().planned, 0);
    p.plan(NOW.plus(config.start_grace.unwrap()), states(&chunks), &n);
    assert_eq!(p.stats().planned, 1);
}

#[test]
fn fewest_replicas_left_first_within_the_bounds() {
    let config = RepairConfig { jobs_max: 3, streams_out_max: 10, streams_in_max: 10, ..RepairConfig::default() };
    let mut p = planner(config);
    // Node 9 is dead: chunks of file 1 keep two replicas, those of file 2 keep one.
    let mut chunks: Vec<Chunk> = (0..5).map(|i| chunk(1, i, &[1, 2, 9], 3)).collect();
    chunks.extend((0..2).map(|i| chunk(2, i, &[3, 9], 2)));
    chunks.push(chunk(3, 0, &[9], 1)); // no replica left: missing, nothing to copy from
    let n = nodes(&[(1, Liveness::Alive), (2, Liveness::Alive), (3, Liveness::Alive), (4, Liveness::Alive), (9, Liveness::Dead)]);
    p.plan(NOW, states(&chunks), &n);
    let census = p.census();
    assert_eq!((census.chunks, census.under_replicated, census.missing), (8, 8, 1));
    let mut planned: Vec<ChunkId> = (1..=4).flat_map(|t| p.jobs_for(NOW, StorageNodeId(t), &n)).map(|j| j.chunk).collect();
    planned.sort();
    let mut expected = vec![ChunkId::derive(FileId(2), 0), ChunkId::derive(FileId(2), 1)];
    let first_of_file_1 = (0..5).map(|i| ChunkId::derive(FileId(1), i)).min().unwrap();
    expected.push(first_of_file_1);
    expected.sort();
    assert_eq!(planned, expected, "the one-left chunks first, then by chunk id, at most jobs_max");
}

#[test]
fn per_node_streams_are_bounded_in_and_out() {
    let config = RepairConfig { streams_out_max: 2, streams_in_max: 1, jobs_max: 100, ..RepairConfig::default() };
    let mut p = planner(config);
    // Every chunk's only source is node 1 (four jobs out: two streams, twice over); targets 2
    // and 3 take two each (one stream, and one queued).
    let chunks: Vec<Chunk> = (0..10).map(|i| chunk(1, i, &[1], 2)).collect();
    let n = nodes(&[(1, Liveness::Alive), (2, Liveness::Alive), (3, Liveness::Alive), (4, Liveness::Suspect)]);
    p.plan(NOW, states(&chunks), &n);
    let to2 = p.jobs_for(NOW, StorageNodeId(2), &n);
    let to3 = p.jobs_for(NOW, StorageNodeId(3), &n);
    assert_eq!((to2.len(), to3.len()), (2, 2), "one stream (and one queued) per target, two (twice) out of the source");
    assert!(p.jobs_for(NOW, StorageNodeId(4), &n).is_empty(), "a suspect node got a job");
    assert!(to2.iter().chain(&to3).all(|j| j.sources == vec![StorageNodeId(1)]));
    // Handed out once only.
    assert!(p.jobs_for(NOW, StorageNodeId(2), &n).is_empty());
}

#[test]
fn a_failed_or_silent_job_is_retried_later_on_another_pair() {
    let config = RepairConfig::default();
    let mut p = planner(config);
    let chunks = [chunk(1, 0, &[1], 2)];
    let n = nodes(&[(1, Liveness::Alive), (2, Liveness::Alive), (3, Liveness::Alive)]);
    p.plan(NOW, states(&chunks), &n);
    let job = p.jobs_for(NOW, StorageNodeId(2), &n).pop().expect("node 2 has the most free space at the lowest id");
    p.on_heartbeat(NOW, StorageNodeId(2), &[], &[(job.chunk, "disk error".into())], &[]);
    assert_eq!(p.stats().failed, 1);
    p.plan(NOW, states(&chunks), &n);
    assert!(p.jobs_for(NOW, StorageNodeId(3), &n).is_empty(), "retried before the backoff");
    let later = NOW.plus(config.retry_backoff);
    p.plan(later, states(&chunks), &n);
    assert!(p.jobs_for(later, StorageNodeId(2), &n).is_empty(), "the failed pair was chosen again");
    let retry = p.jobs_for(later, StorageNodeId(3), &n);
    assert_eq!(retry.len(), 1);
    // Silence: the job times out and is planned again after the (doubled) backoff.
    let silent = later.plus(config.job_timeout);
    p.plan(silent, states(&chunks), &n);
    assert_eq!(p.stats().timed_out, 1);
}

#[test]
fn a_job_its_target_never_received_is_planned_again_without_waiting_for_the_timeout() {
    let mut p = planner(RepairConfig::default());
    let chunks = [chunk(1, 0, &[1], 2)];
    let n = nodes(&[(1, Liveness::Alive), (2, Liveness::Alive)]);
    p.plan(NOW, states(&chunks), &n);
    let job = p.jobs_for(NOW, StorageNodeId(2), &n).pop().expect("a job for node 2");
    // The next heartbeat lists it as in flight: still a job.
    p.on_heartbeat(NOW, StorageNodeId(2), &[job.chunk], &[], &[]);
    assert_eq!(p.stats().lost, 0);
    // One that knows nothing of it (the reply that carried it was lost): planned again at once.
    p.on_heartbeat(NOW, StorageNodeId(2), &[], &[], &[]);
    assert_eq!(p.stats().lost, 1);
    p.plan(NOW, states(&chunks), &n);
    assert_eq!(p.jobs_for(NOW, StorageNodeId(2), &n).len(), 1, "the lost job was not handed out again");
    // Another node's heartbeat says nothing about it.
    p.on_heartbeat(NOW, StorageNodeId(1), &[], &[], &[]);
    assert_eq!(p.stats().lost, 1);
}

#[test]
fn a_job_whose_target_goes_silent_before_it_is_handed_out_is_planned_again_at_once() {
    let mut p = planner(RepairConfig::default());
    let chunks = [chunk(1, 0, &[1], 2)];
    let mut n = nodes(&[(1, Liveness::Alive), (2, Liveness::Alive), (3, Liveness::Alive)]);
    n.get_mut(&StorageNodeId(3)).unwrap().free_bytes = 8 << 20;
    p.plan(NOW, states(&chunks), &n);
    // Node 2 (most free space) got it, but goes silent before its next heartbeat.
    n.get_mut(&StorageNodeId(2)).unwrap().liveness = Liveness::Suspect;
    p.plan(NOW, states(&chunks), &n);
    assert!(p.jobs_for(NOW, StorageNodeId(2), &n).is_empty());
    assert_eq!(p.jobs_for(NOW, StorageNodeId(3), &n).len(), 1, "the job moved to a live target without waiting for a timeout");
}

#[test]
fn surplus_and_bad_replicas_are_dropped_only_when_safe() {
    let mut p = planner(RepairConfig::default());
    let mut n = nodes(&[(1, Liveness::Alive), (2, Liveness::Alive), (3, Liveness::Alive), (4, Liveness::Alive)]);
    n.get_mut(&StorageNodeId(2)).unwrap().free_bytes = 10; // fullest: its copy goes
    let chunks = [chunk(1, 0, &[1, 2, 3, 4], 3)];
    let commands = p.plan(NOW, states(&chunks), &n);
    assert_eq!(commands, vec![Command::DropReplicas { drops: vec![(chunks[0].id, StorageNodeId(2))] }]);
    // With one of them only suspect, nothing goes (it may be back in a moment, or not).
    n.get_mut(&StorageNodeId(4)).unwrap().liveness = Liveness::Suspect;
    assert!(p.plan(NOW, states(&chunks), &n).is_empty());
    // A bad replica goes once the chunk is whole without it.
    let mut c = chunk(2, 0, &[1, 2, 3], 2);
    c.bad = Some([StorageNodeId(3)].into());
    let commands = p.plan(NOW, states(std::slice::from_ref(&c)), &n);
    assert_eq!(commands, vec![Command::DropReplicas { drops: vec![(c.id, StorageNodeId(3))] }]);
    // And before, as long as a healthy copy can be read: its node may then take a fresh copy.
    let mut c = chunk(2, 0, &[1, 3], 2);
    c.bad = Some([StorageNodeId(3)].into());
    assert_eq!(p.plan(NOW, states(std::slice::from_ref(&c)), &n), vec![Command::DropReplicas { drops: vec![(c.id, StorageNodeId(3))] }]);
    // Not when no healthy copy can be read now: the bad listing is what fsck shows.
    // (node 4 is suspect)
    let mut c = chunk(3, 0, &[4, 3], 2);
    c.bad = Some([StorageNodeId(3)].into());
    assert!(p.plan(NOW, states(std::slice::from_ref(&c)), &n).is_empty(), "a bad replica was dropped with no copy to repair from");
}

#[test]
fn a_draining_nodes_replicas_stop_counting_but_serve_as_sources() {
    let mut p = planner(RepairConfig::default());
    let mut n = nodes(&[(1, Liveness::Alive), (2, Liveness::Alive), (3, Liveness::Alive)]);
    n.get_mut(&StorageNodeId(1)).unwrap().draining = true;
    let chunks = [chunk(1, 0, &[1], 1)];
    p.plan(NOW, states(&chunks), &n);
    let jobs: Vec<RepairJob> = (2..=3).flat_map(|t| p.jobs_for(NOW, StorageNodeId(t), &n)).collect();
    assert_eq!(jobs.len(), 1, "the only copy, on a draining node, is copied elsewhere");
    assert_eq!(jobs[0].sources, vec![StorageNodeId(1)]);
    assert_eq!(p.census().missing, 0, "a draining node's copy is not missing");
    assert!(p.jobs_for(NOW, StorageNodeId(1), &n).is_empty(), "a draining node is never a target");
}

#[test]
fn copies_and_drops_keep_two_racks() {
    let mut n = nodes(&[(1, Liveness::Alive), (2, Liveness::Alive), (3, Liveness::Alive), (4, Liveness::Alive)]);
    for (id, rack, free) in [(1, "a", 100), (2, "a", 90), (3, "a", 80), (4, "b", 10)] {
        let s = n.get_mut(&StorageNodeId(id)).unwrap();
        s.rack = Some(rack.into());
        s.free_bytes = free << 20;
    }
    // Two copies in rack a: the third goes to rack b, though it has the least room.
    let mut p = planner(RepairConfig::default());
    let chunks = [chunk(1, 0, &[1, 2], 3)];
    p.plan(NOW, states(&chunks), &n);
    assert_eq!(p.jobs_for(NOW, StorageNodeId(4), &n).len(), 1);
    // Four copies, one in rack b: the surplus dropped is in rack a.
    let mut p = planner(RepairConfig::default());
    let chunks = [chunk(2, 0, &[1, 2, 3, 4], 3)];
    let commands = p.plan(NOW, states(&chunks), &n);
    assert_eq!(commands, vec![Command::DropReplicas { drops: vec![(chunks[0].id, StorageNodeId(3))] }]);
}

#[test]
fn a_finished_copy_is_not_planned_again_before_the_next_scan() {
    let config = RepairConfig { streams_in_max: 1, ..RepairConfig::default() };
    let mut p = planner(config);
    let chunks = [chunk(1, 0, &[1], 2), chunk(1, 1, &[1], 2)];
    let n = nodes(&[(1, Liveness::Alive), (2, Liveness::Alive)]);
    p.plan(NOW, states(&chunks), &n);
    let first = p.jobs_for(NOW, StorageNodeId(2), &n);
    assert_eq!(first.len(), 2, "one running and one queued");
    // Node 2 reports the first copy stored; the scan has not run since.
    p.on_heartbeat(NOW, StorageNodeId(2), &[first[1].chunk], &[], &[first[0].chunk]);
    let next = p.jobs_for(NOW, StorageNodeId(2), &n);
    assert!(next.iter().all(|j| j.chunk != first[0].chunk), "a finished copy was planned again: {next:?}");
    assert_eq!(p.stats().completed, 1);
}

#[test]
fn a_copy_reported_stored_and_still_running_frees_its_slot_at_once() {
    // The target reports a replica as soon as it is stored, and stops listing the job as
    // running a moment later: one heartbeat may carry both. The slot must be free in that
    // heartbeat's reply, not at the next scan.
    let config = RepairConfig { streams_in_max: 1, ..RepairConfig::default() };
    let mut p = planner(config);
    let chunks: Vec<Chunk> = (0..4).map(|i| chunk(1, i, &[1], 2)).collect();
    let n = nodes(&[(1, Liveness::Alive), (2, Liveness::Alive)]);
    p.plan(NOW, states(&chunks), &n);
    let first = p.jobs_for(NOW, StorageNodeId(2), &n);
    assert_eq!(first.len(), 2, "one running and one queued");
    let running = [first[0].chunk, first[1].chunk];
    p.on_heartbeat(NOW, StorageNodeId(2), &running, &[], &[first[0].chunk]);
    let next = p.jobs_for(NOW, StorageNodeId(2), &n);
    assert_eq!(next.len(), 1, "the finished copy's slot was not freed: {next:?}");
    assert_eq!(p.jobs_in_flight(), 2);
}

#[test]
fn small_chunks_take_a_slot_each_so_a_stream_carries_a_batch() {
    let config = RepairConfig { streams_out_max: 2, streams_in_max: 1, jobs_max: 100, ..RepairConfig::default() };
    let mut p = planner(config);
    let chunks: Vec<Chunk> = (0..500).map(|i| chunk(1, i, &[1], 2)).collect();
    let n = nodes(&[(1, Liveness::Alive), (2, Liveness::Alive), (3, Liveness::Alive)]);
    p.plan(NOW, small_states(&chunks), &n);
    let to2 = p.jobs_for(NOW, StorageNodeId(2), &n);
    let to3 = p.jobs_for(NOW, StorageNodeId(3), &n);
    // One stream in, and one queued: two batches' worth per target.
    assert_eq!((to2.len(), to3.len()), (2 * SLOTS_PER_STREAM, 2 * SLOTS_PER_STREAM));
    assert!(p.jobs_for(NOW, StorageNodeId(2), &n).is_empty(), "handed out twice");
    // A target that reports its copies stored gets the next ones in the same reply.
    let done: Vec<ChunkId> = to2.iter().take(SLOTS_PER_STREAM).map(|j| j.chunk).collect();
    let running: Vec<ChunkId> = to2.iter().skip(SLOTS_PER_STREAM).map(|j| j.chunk).collect();
    p.on_heartbeat(NOW, StorageNodeId(2), &running, &[], &done);
    assert_eq!(p.jobs_for(NOW, StorageNodeId(2), &n).len(), SLOTS_PER_STREAM);
    // The cluster's bound counts slots too: 100 streams' worth in all.
    let config = RepairConfig { streams_out_max: 64, streams_in_max: 64, jobs_max: 3, ..RepairConfig::default() };
    let mut p = planner(config);
    p.plan(NOW, small_states(&chunks), &n);
    let handed: usize = (2..=3).map(|t| p.jobs_for(NOW, StorageNodeId(t), &n).len()).sum();
    assert_eq!(handed, 3 * SLOTS_PER_STREAM);
}

fn small_states(chunks: &[Chunk]) -> impl Iterator<Item = ChunkState<'_>> {
    chunks.iter().map(|c| ChunkState {
        id: c.id,
        size: 4096,
        sha256: Sha256Digest([1; 32]),
        chain: None,
        replication: c.replication,
        replicas: &c.replicas,
        bad: None,
        deleting: vec![],
    })
}

#[test]
fn a_pair_that_failed_is_tried_again_when_no_other_can_serve() {
    let config = RepairConfig::default();
    let mut p = planner(config);
    // Three nodes, factor 3, one copy missing: node 3 is the only target there is.
    let chunks = [chunk(1, 0, &[1, 2], 3)];
    let n = nodes(&[(1, Liveness::Alive), (2, Liveness::Alive), (3, Liveness::Alive)]);
    let mut at = NOW;
    let mut sources_tried = BTreeSet::new();
    for attempt in 0..4 {
        p.plan(at, states(&chunks), &n);
        let job = p.jobs_for(at, StorageNodeId(3), &n).pop().unwrap_or_else(|| panic!("attempt {attempt}: the only target was ruled out"));
        sources_tried.insert(job.sources[0]);
        p.on_heartbeat(at, StorageNodeId(3), &[], &[(job.chunk, "disk error".into())], &[]);
        at = at.plus(config.retry_backoff_max);
    }
    assert_eq!(sources_tried.len(), 2, "the pair that had not failed was tried first");
}

#[test]
fn an_adopted_copy_its_node_stops_running_no_longer_holds_the_chunk_back() {
    // Chaos seed 226: the copy to node 4 finished and the scan saw it listed (the job done)
    // before the heartbeat that still listed it as running came in, so that heartbeat adopted
    // it; a surplus drop then took node 4's copy, and once node 3 drained the chunk was short
    // again, but the stale adoption kept it out of planning for the whole job timeout.
    let config = RepairConfig::default();
    let mut p = planner(config);
    let n = nodes(&[(1, Liveness::Alive), (2, Liveness::Alive), (3, Liveness::Alive), (4, Liveness::Alive)]);
    let short = [chunk(1, 0, &[1, 2], 3)];
    let id = short[0].id;
    p.plan(NOW, states(&short), &n);
    let job = p.jobs_for(NOW, StorageNodeId(3), &n).into_iter().chain(p.jobs_for(NOW, StorageNodeId(4), &n)).next().expect("a copy is planned");
    let target = job.target;
    let whole = [chunk(1, 0, &[1, 2, target.0], 3)];
    p.plan(NOW, states(&whole), &n);
    p.on_heartbeat(NOW, target, &[id], &[], &[]);
    assert!(p.adopted.contains_key(&id), "a copy reported running without a job is adopted");
    // The copy ended; the node says so by no longer listing it. Its copy is gone again.
    p.on_heartbeat(NOW.plus(Duration::from_secs(1)), target, &[], &[], &[]);
    let later = NOW.plus(Duration::from_secs(2));
    p.plan(later, states(&short), &n);
    let replanned: Vec<RepairJob> = [3, 4].into_iter().flat_map(|t| p.jobs_for(later, StorageNodeId(t), &n)).collect();
    assert_eq!(replanned.iter().map(|j| j.chunk).collect::<Vec<_>>(), vec![id], "the short chunk waits for a job that ended");
}
