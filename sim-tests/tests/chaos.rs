//! The chaos scenario (`dfs_sim_tests::chaos`): every fault kind at once, a safety phase with
//! checkers after every operation, then a liveness phase. `cargo test` runs `CI_SEEDS` seeds
//! and the determinism check; `cargo sim-soak` runs thousands, `cargo sim-replay SEED` replays
//! one as a timeline.

#![cfg(madsim)]

use dfs_sim_tests::chaos;
use dfs_sim_tests::seeds::{self, SimTest};

/// Seeds `cargo test` runs (`MADSIM_TEST_NUM` overrides). Enough that every fault kind the
/// atlas switches on fires in some run (the coverage check fails otherwise): the loss of every
/// metadata node at once is the rarest, hit in about a third of the runs that have it on, so
/// 12 seeds left it idle once the chaos client made a token at the start and every timeline
/// moved. A seed takes about a second.
const CI_SEEDS: u64 = 24;

#[test]
fn chaos_ci_seeds() {
    seeds::run_seeds(chaos::TEST, CI_SEEDS, chaos::scenario);
}

/// One seed twice and the next once must give the same and a different timeline; and
/// `dfs-sim` (what `cargo sim-replay` runs) must give the test's timeline for the seed, so the
/// replay command printed on a failure replays exactly the failed run.
#[test]
fn chaos_same_seed_same_timeline() {
    let test = SimTest { file: "chaos", name: "chaos_same_seed_same_timeline" };
    seeds::check_determinism(test, chaos::scenario);
    if std::env::var_os("DFS_SIM_CHILD_SEED").is_some() {
        return;
    }
    let seed = seeds::from_env().first;
    let in_test = seeds::run_in_child(test, seed);
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dfs-sim")).args(["child", "--seed", &seed.to_string()]).output().expect("run dfs-sim");
    let replayed = seeds::SeedRun::parse(&String::from_utf8_lossy(&out.stdout), started.elapsed()).expect("dfs-sim prints its result");
    println!("[sim] chaos seed {seed}: test timeline {}, dfs-sim timeline {}", in_test.timeline_hash, replayed.timeline_hash);
    assert_eq!(in_test.timeline_hash, replayed.timeline_hash, "dfs-sim does not replay the test's run of seed {seed}");
}

/// Bugs planted on purpose (`core/src/planted.rs`): the chaos scenario must catch each, with
/// the verdict of the checker meant to, within the seeds given (from seed 1; the first that
/// catches it is printed). `DFS_PLANTED_SEEDS` tries more.
mod planted {
    use dfs_core::planted::Bug;
    use dfs_sim_tests::{chaos, seeds};

    fn caught(bug: Bug, verdict: &str, seeds: u64) {
        seeds::expect_caught(chaos::TEST, bug, verdict, 1, seeds);
    }

    #[test]
    fn a_read_served_unchecked_leaves_damage_the_replica_check_finds() {
        caught(Bug::UncheckedRead, "does not match metadata's checksum", 8);
    }

    #[test]
    fn a_stale_read_from_a_deposed_leader_breaks_the_history() {
        caught(Bug::StaleRead, "VERDICT [linearizable history]", 160);
    }

    #[test]
    fn write_quorum_one_loses_acknowledged_chunks() {
        caught(Bug::WriteQuorumOne, "live holders []", 120);
    }

    #[test]
    fn an_ambiguous_commit_reported_done_loses_an_acknowledged_write() {
        caught(Bug::LostCommit, "VERDICT [acknowledged writes kept]", 120);
    }

    #[test]
    fn surplus_removal_counting_bad_and_dead_copies_never_heals() {
        caught(Bug::SurplusDropsValid, "VERDICT [liveness] not healed", 8);
    }

    /// The first-contact deadlock: on the atlas's shapes with no node to spare, a chunk with a
    /// bad copy stays short of its factor.
    #[test]
    fn a_node_with_a_bad_copy_never_a_target_deadlocks_repair() {
        caught(Bug::BadCopyNeverTarget, "VERDICT [liveness] not healed", 8);
    }
}
