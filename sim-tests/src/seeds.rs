//! Which seeds a simulation runs, how each runs in isolation, and how a failure is reported.
//!
//! `MADSIM_TEST_SEED` (first seed, default 1) and `MADSIM_TEST_NUM` (how many, default 50)
//! choose the seeds; plain `cargo test` therefore always runs the same ones.
//!
//! **Every seed runs in a process of its own** (this test binary, re-run with the seed in
//! `DFS_SIM_CHILD_SEED`), on a fresh thread and madsim runtime. A seed's run must not depend on
//! what ran before it in the process: tokio's `select!` (used unbiased inside openraft) draws
//! from a thread-local RNG seeded partly by a process-wide counter that madsim does not
//! control, so a second simulation in one process can take other branches than the first.
//! With one process per seed, the sweep, the determinism test and the replay command all run
//! a seed in the same state.
//!
//! `DFS_SIM_TRACE_DIR=dir` writes every run's whole trace there, named by seed and hash.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::coverage;
use crate::timeline::{self, Kind};
use crate::trace;

/// Set in a child process: the one seed it runs.
const CHILD_SEED_ENV: &str = "DFS_SIM_CHILD_SEED";
/// The line a child prints with its result.
const CHILD_RESULT_TAG: &str = "[sim-child]";

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
    from_env_or(DEFAULT_SEED_COUNT)
}

/// Like `from_env`, with another default count for a scenario too long for 50 seeds in CI.
pub fn from_env_or(default_count: u64) -> SeedRange {
    seed_range(std::env::var("MADSIM_TEST_SEED").ok(), std::env::var("MADSIM_TEST_NUM").ok(), default_count)
}

/// The range `MADSIM_TEST_SEED` (`first`) and `MADSIM_TEST_NUM` (`num`) say. Zero seeds
/// would pass every simulation with nothing run: refused.
fn seed_range(first: Option<String>, num: Option<String>, default_count: u64) -> SeedRange {
    let read = |name: &str, value: Option<String>, default: u64| {
        value.map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))).unwrap_or(default)
    };
    let range = SeedRange { first: read("MADSIM_TEST_SEED", first, 1), count: read("MADSIM_TEST_NUM", num, default_count) };
    assert!(range.count > 0, "MADSIM_TEST_NUM=0 runs no seed and would prove nothing; to skip the simulations say SKIP_SIMS=1");
    range
}

/// What one seed's run produced.
pub struct SeedRun {
    pub seed: u64,
    /// Hash and length of the raw log (changes with the log filter).
    pub trace_hash: String,
    pub trace_lines: usize,
    /// Hash and length of the timeline (independent of the log filter).
    pub timeline_hash: String,
    pub timeline_records: usize,
    pub coverage: std::collections::BTreeMap<String, coverage::Count>,
    pub wall: Duration,
    /// Simulated time the run took.
    pub simulated: Duration,
}

impl SeedRun {
    /// The line a child process prints with its result (`parse` reads it back).
    pub fn line(&self) -> String {
        format!(
            "{CHILD_RESULT_TAG} seed={} trace={} lines={} timeline={} records={} simulated_ms={} cov={}",
            self.seed,
            self.trace_hash,
            self.trace_lines,
            self.timeline_hash,
            self.timeline_records,
            self.simulated.as_millis(),
            coverage::encode(&self.coverage)
        )
    }

    /// Reads a child's output back; `None` if it printed no result line.
    pub fn parse(stdout: &str, wall: Duration) -> Option<SeedRun> {
        // libtest prints "test <name> ... " without a newline first: the tag may be mid-line.
        let fields = stdout.lines().find_map(|l| l.split_once(CHILD_RESULT_TAG).map(|(_, fields)| fields))?;
        let field = |name: &str| fields.split_whitespace().find_map(|f| f.strip_prefix(name)).map(str::to_string);
        Some(SeedRun {
            seed: field("seed=")?.parse().ok()?,
            trace_hash: field("trace=")?,
            trace_lines: field("lines=")?.parse().ok()?,
            timeline_hash: field("timeline=")?,
            timeline_records: field("records=")?.parse().ok()?,
            coverage: coverage::decode(&field("cov=")?),
            wall,
            simulated: Duration::from_millis(field("simulated_ms=")?.parse().ok()?),
        })
    }
}

fn child_seed() -> Option<u64> {
    std::env::var(CHILD_SEED_ENV).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{CHILD_SEED_ENV}={v:?} is not a number")))
}

pub fn replay_command(test: SimTest, seed: u64) -> String {
    if test.file == "chaos" {
        // The chaos scenario replays through its own command, which prints the timeline.
        return format!("cargo sim-replay {seed}");
    }
    format!("MADSIM_TEST_SEED={seed} MADSIM_TEST_NUM=1 DFS_SIM_VERBOSE=1 cargo sim --test {} -- {} --exact --nocapture", test.file, test.name)
}

/// One seed's run, captured: what it produced, whether it failed, and (when `keep`, or when
/// it failed) its timeline and raw log.
pub struct Captured {
    pub run: SeedRun,
    /// The panic message of a failed run (a checker's verdict starts with `VERDICT`).
    pub failure: Option<String>,
    pub records: Vec<timeline::Record>,
    pub lines: Vec<String>,
}

/// Runs `scenario` under `seed` on a fresh thread of this process; never panics.
pub fn run_captured<F, Fut>(seed: u64, keep: bool, scenario: F) -> Captured
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let started = Instant::now();
    trace::install_subscriber();
    let keep = keep || std::env::var_os("DFS_SIM_TRACE_DIR").is_some();
    let (result, mut run, lines, records) = std::thread::Builder::new()
        .name(format!("sim-seed-{seed}"))
        .spawn(move || {
            trace::reset();
            timeline::reset();
            coverage::reset();
            let mut runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
            runtime.set_time_limit(SIMULATED_TIME_LIMIT);
            let simulated = std::rc::Rc::new(std::cell::Cell::new(Duration::ZERO));
            let end = simulated.clone();
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                runtime.block_on(async move {
                    scenario().await;
                    end.set(madsim::time::TimeHandle::current().elapsed());
                })
            }));
            let keep = keep || result.is_err();
            let lines = if keep { trace::lines() } else { Vec::new() };
            let records = if keep { timeline::records().0 } else { Vec::new() };
            let run = SeedRun {
                seed,
                trace_hash: trace::hash(),
                trace_lines: trace::len(),
                timeline_hash: timeline::hash(),
                timeline_records: timeline::len(),
                coverage: coverage::run(),
                wall: Duration::ZERO,
                simulated: simulated.get(),
            };
            (result, run, lines, records)
        })
        .expect("spawn simulation thread")
        .join()
        .expect("simulation thread");
    run.wall = started.elapsed();
    let failure = result.err().map(|panic| {
        panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "non-string panic".into())
    });
    Captured { run, failure, records, lines }
}

/// The path a failed run's verdict is about, if it names one.
pub fn verdict_path(records: &[timeline::Record]) -> Option<String> {
    records.iter().rev().find(|r| r.kind == Kind::Check).and_then(|r| r.paths.first().cloned())
}

/// Runs `scenario` under `seed` on a fresh thread of this process. Panics (with the replay
/// command, the verdict and the timeline that led to it) if the scenario panics.
pub fn run_in_process<F, Fut>(test: SimTest, seed: u64, scenario: F) -> SeedRun
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let Captured { run, failure, records, lines } = run_captured(seed, false, scenario);
    if let Some(dir) = std::env::var_os("DFS_SIM_TRACE_DIR") {
        // Every run's whole trace, for comparing two runs of a seed line by line.
        let path = Path::new(&dir).join(format!("{}-seed-{seed}-{}.log", test.name, run.trace_hash));
        let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, lines.join("\n")));
        let path = Path::new(&dir).join(format!("{}-seed-{seed}-{}.timeline", test.name, run.timeline_hash));
        let _ = std::fs::write(&path, timeline::render(&records, &timeline::Filter::default(), None));
    }
    if let Some(message) = failure {
        let dump = std::env::temp_dir().join(format!("dfs-sim-{}-seed-{seed}.log", test.name));
        let _ = std::fs::write(&dump, lines.join("\n"));
        let timeline_dump = dump.with_extension("timeline");
        let _ = std::fs::write(&timeline_dump, timeline::render(&records, &timeline::Filter::default(), None));
        // The events that led to the verdict: about its subject (a path), if it names one.
        let filter = timeline::Filter { path: verdict_path(&records), ..timeline::Filter::default() };
        eprintln!(
            "---- the timeline of seed {seed}{} (whole: {}; raw log: {}) ----",
            filter.path.as_ref().map(|p| format!(", about {p}")).unwrap_or_default(),
            timeline_dump.display(),
            dump.display()
        );
        eprint!("{}", timeline::render(&records, &filter, Some(40)));
        if records.is_empty() {
            for line in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{line}");
            }
        }
        let replay = match &filter.path {
            Some(p) if test.file == "chaos" => format!("{} --file {p}", replay_command(test, seed)),
            _ => replay_command(test, seed),
        };
        panic!("simulation {} failed with seed {seed}: {message}\nreplay it with:\n  {replay}", test.name);
    }
    run
}

/// Runs one seed in a child process (this test binary, filtered to `test`).
pub fn run_in_child(test: SimTest, seed: u64) -> SeedRun {
    let started = Instant::now();
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args([test.name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_SEED_ENV, seed.to_string())
        .output()
        .expect("run a simulation child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if std::env::var_os("DFS_SIM_VERBOSE").is_some() {
        print!("{stdout}");
    }
    match SeedRun::parse(&stdout, started.elapsed()) {
        Some(run) if out.status.success() => run,
        _ => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            eprintln!("{stderr}");
            panic!("simulation {} failed with seed {seed} ({}); replay it with:\n  {}", test.name, out.status, replay_command(test, seed));
        }
    }
}

/// In a child process: runs its seed and prints the result line. Returns whether this is one.
fn serve_as_child<F, Fut>(test: SimTest, scenario: F) -> bool
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let Some(seed) = child_seed() else { return false };
    let run = run_in_process(test, seed, scenario);
    println!("{}", run.line());
    true
}

/// Runs `scenario` for every seed of `MADSIM_TEST_SEED`/`MADSIM_TEST_NUM`, each in its own
/// process, and prints one line per seed with its trace hash and wall time.
pub fn run_all<F, Fut>(test: SimTest, scenario: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    run_seeds(test, DEFAULT_SEED_COUNT, scenario)
}

/// `run_all` with `default_count` seeds unless `MADSIM_TEST_NUM` says otherwise.
pub fn run_seeds<F, Fut>(test: SimTest, default_count: u64, scenario: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    if serve_as_child(test, scenario) {
        return;
    }
    let range = from_env_or(default_count);
    let started = Instant::now();
    let mut table = coverage::Table::default();
    for seed in range.first..range.first + range.count {
        let run = run_in_child(test, seed);
        println!(
            "[sim] {} seed={} timeline={} trace={} lines={} simulated={:.1}s wall={:.2}s",
            test.name,
            run.seed,
            run.timeline_hash,
            run.trace_hash,
            run.trace_lines,
            run.simulated.as_secs_f64(),
            run.wall.as_secs_f64()
        );
        table.add(&run.coverage);
    }
    if table.rows.values().any(|r| r.0 > 0 || r.2 > 0) {
        print!("{}", table.render(test.name));
    }
    // Over a sweep (not a replay of a few seeds), a fault that was on but never acted means
    // the runs proved nothing about it.
    let idle = table.idle();
    assert!(range.count < default_count || idle.is_empty(), "{}: fault kinds on in some of {} seeds but never fired: {idle:?}", test.name, range.count);
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

/// Runs the first seed twice and the next seed once, each in its own process: the first two
/// traces must be identical and the third different.
pub fn check_determinism<F, Fut>(test: SimTest, scenario: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    if serve_as_child(test, scenario) {
        return;
    }
    let seed = from_env().first;
    let a = run_in_child(test, seed);
    let b = run_in_child(test, seed);
    let c = run_in_child(test, seed + 1);
    println!("[sim] determinism: seed {seed} -> timeline {} and {}; seed {} -> {}", a.timeline_hash, b.timeline_hash, seed + 1, c.timeline_hash);
    assert_eq!((a.trace_hash.as_str(), a.trace_lines), (b.trace_hash.as_str(), b.trace_lines), "seed {seed} gave two different traces");
    assert_eq!(a.timeline_hash, b.timeline_hash, "seed {seed} gave two different timelines");
    assert_ne!(a.trace_hash, c.trace_hash, "seeds {seed} and {} gave the same trace", seed + 1);
}

/// How many seeds a planted bug's test tries when `DFS_PLANTED_SEEDS` does not say.
pub const PLANTED_SEEDS_DEFAULT: u64 = 8;

/// A planted bug's test: runs `test`'s scenario with `bug` planted (`DFS_PLANTED`), one seed
/// per process from `first`, for at most `DFS_PLANTED_SEEDS` seeds (default `default_count`),
/// and returns the first seed whose run fails with a message containing `expected` (the
/// verdict of the checker that should catch it). Panics if no seed does (the check would be
/// vacuous for this bug), or if this build cannot plant bugs.
pub fn expect_caught(test: SimTest, bug: dfs_core::planted::Bug, expected: &str, first: u64, default_count: u64) -> u64 {
    if !dfs_core::planted::AVAILABLE {
        panic!("this build cannot plant bugs: build the simulations with `--cfg dfs_planted` (as `cargo sim` and plain `cargo test` do)");
    }
    let count = std::env::var("DFS_PLANTED_SEEDS")
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("DFS_PLANTED_SEEDS={v:?} is not a number")))
        .unwrap_or(default_count);
    assert!(count > 0, "DFS_PLANTED_SEEDS=0: a planted bug's test that runs no seed proves nothing");
    let exe = std::env::current_exe().expect("test binary path");
    let started = Instant::now();
    let mut other = Vec::new();
    for seed in first..first + count {
        let out = Command::new(&exe)
            .args([test.name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_SEED_ENV, seed.to_string())
            .env(dfs_core::planted::ENV, bug.name())
            .output()
            .expect("run a simulation child process");
        let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            continue;
        }
        let said = text.lines().find(|l| l.contains(expected)).map(str::trim);
        if let Some(line) = said {
            let wall = started.elapsed();
            let tried = seed - first + 1;
            println!(
                "[sim] planted {}: caught by {} at seed {seed} ({tried} seeds in {:.1}s, {:.1} seeds/min): {}",
                bug.name(),
                test.name,
                wall.as_secs_f64(),
                tried as f64 * 60.0 / wall.as_secs_f64().max(1e-3),
                line.chars().take(200).collect::<String>()
            );
            return seed;
        }
        let why = text.lines().find(|l| l.contains("panicked") || l.contains("VERDICT")).unwrap_or("(no message)").trim().to_string();
        other.push(format!("seed {seed}: {why}"));
    }
    panic!(
        "planted bug {} was not caught by {} in seeds {first}..{} (no run failed with {expected:?}){}",
        bug.name(),
        test.name,
        first + count,
        if other.is_empty() { String::new() } else { format!("; other failures:\n  {}", other.join("\n  ")) }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_range_defaults_and_reads_its_variables() {
        let r = seed_range(None, None, 50);
        assert_eq!((r.first, r.count), (1, 50));
        let r = seed_range(Some("7".into()), Some("3".into()), 50);
        assert_eq!((r.first, r.count), (7, 3));
    }

    #[test]
    #[should_panic(expected = "MADSIM_TEST_NUM=0 runs no seed")]
    fn zero_seeds_fail_instead_of_passing_with_nothing_run() {
        seed_range(None, Some("0".into()), 50);
    }
}
