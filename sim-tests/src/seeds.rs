//! Which seeds a simulation runs, and how a failure is reported.
//!
//! `MADSIM_TEST_SEED` (first seed, default 1) and `MADSIM_TEST_NUM` (how many, default 50)
//! choose the seeds; plain `cargo test` therefore always runs the same ones. Each seed gets a
//! fresh thread and a fresh madsim runtime, so one seed's run never depends on another's.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use crate::trace;

/// Simulated time after which a run counts as hung.
pub const SIMULATED_TIME_LIMIT: Duration = Duration::from_secs(900);

/// A simulation test: the test file (its binary) and the test function, for the replay command.
#[derive(Clone, Copy, Debug)]
pub struct SimTest {
    pub file: &'static str,
    pub name: &'static str,
}

/// Seeds per simulation when `MADSIM_TEST_NUM` is not set.
pub const DEFAULT_SEED_COUNT: u64 = 50;

pub struct SeedRange {
    pub first: u64,
    pub count: u64,
}

pub fn from_env() -> SeedRange {
    let read = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
            .unwrap_or(default)
    };
    SeedRange { first: read("MADSIM_TEST_SEED", 1), count: read("MADSIM_TEST_NUM", DEFAULT_SEED_COUNT) }
}

/// What one seed's run produced.
pub struct SeedRun {
    pub seed: u64,
    pub trace_hash: String,
    pub trace_lines: usize,
    pub wall: Duration,
}

/// Runs `scenario` once under `seed` on a fresh thread. Panics (with the replay command) if
/// the scenario panics.
pub fn run_one<F, Fut>(test: SimTest, seed: u64, scenario: F) -> SeedRun
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let started = Instant::now();
    trace::install_subscriber();
    let outcome = std::thread::Builder::new()
        .name(format!("sim-seed-{seed}"))
        .spawn(move || {
            trace::reset();
            let mut runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
            // Simulated time after which a run counts as hung.
            runtime.set_time_limit(SIMULATED_TIME_LIMIT);
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(scenario())));
            let lines = if result.is_err() { trace::lines() } else { Vec::new() };
            (result, trace::hash(), trace::len(), lines)
        })
        .expect("spawn simulation thread")
        .join()
        .expect("simulation thread");
    let (result, trace_hash, trace_lines, lines) = outcome;
    if let Err(panic) = result {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into());
        let dump = std::env::temp_dir().join(format!("dfs-sim-{}-seed-{seed}.log", test.name));
        let _ = std::fs::write(&dump, lines.join("\n"));
        eprintln!("---- last trace lines of seed {seed} (all {} in {}) ----", lines.len(), dump.display());
        for line in &lines[lines.len().saturating_sub(30)..] {
            eprintln!("{line}");
        }
        panic!(
            "simulation {name} failed with seed {seed}: {message}\n\
             replay it with:\n  MADSIM_TEST_SEED={seed} MADSIM_TEST_NUM=1 DFS_SIM_VERBOSE=1 cargo sim --test {file} -- {name} --exact --nocapture",
            name = test.name,
            file = test.file,
        );
    }
    SeedRun { seed, trace_hash, trace_lines, wall: started.elapsed() }
}

/// Runs `scenario` for every seed of `MADSIM_TEST_SEED`/`MADSIM_TEST_NUM` and prints one line
/// per seed with its trace hash and wall time.
pub fn run_all<F, Fut>(test: SimTest, scenario: F)
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let range = from_env();
    let started = Instant::now();
    for seed in range.first..range.first + range.count {
        let run = run_one(test, seed, scenario.clone());
        println!(
            "[sim] {} seed={} trace={} lines={} wall={:.2}s",
            test.name,
            run.seed,
            run.trace_hash,
            run.trace_lines,
            run.wall.as_secs_f64()
        );
    }
    let wall = started.elapsed();
    println!(
        "[sim] {}: {} seeds from {} passed in {:.1}s ({:.2}s per seed)",
        test.name,
        range.count,
        range.first,
        wall.as_secs_f64(),
        wall.as_secs_f64() / range.count.max(1) as f64
    );
}
