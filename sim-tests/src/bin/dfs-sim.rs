//! `dfs-sim`: the chaos scenario's command line, for people.
//!
//! - `replay SEED [filters]`: reruns a seed and prints its timeline (simulated time, host,
//!   kind, event), filtered by host, chunk, file, kind or time; the whole raw log goes to a
//!   file. A failing seed also prints its verdict.
//! - `soak --seeds N [--from S] [--jobs J]`: runs N seeds, each in a process of its own, J at
//!   a time; prints progress with seeds per minute, every failure with its replay command, and
//!   the fault coverage table at the end.
//! - `atlas SEED`: prints the seed's fault plan without running it.
//! - `child --seed N`: runs one seed (what `soak` starts).
//!
//! Aliases (`.cargo/config.toml`): `cargo sim-replay`, `cargo sim-soak`, `cargo sim-atlas`.
//! Built for real only with `--cfg madsim`; otherwise it says how to get it.

#[cfg(not(madsim))]
fn main() {
    eprintln!("dfs-sim is built only for simulations: run it as `cargo sim-replay SEED`, `cargo sim-soak --seeds N` or `cargo sim-atlas SEED`");
    std::process::exit(2);
}

#[cfg(madsim)]
fn main() {
    real::main()
}

#[cfg(madsim)]
mod real {
    use std::collections::VecDeque;
    use std::io::Write as _;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use clap::{Parser, Subcommand};
    use dfs_sim_tests::chaos::{self, atlas::Atlas};
    use dfs_sim_tests::coverage::Table;
    use dfs_sim_tests::seeds::{self, SeedRun};
    use dfs_sim_tests::timeline::{self, Filter, Kind};

    /// A child that runs longer than this in wall time is stuck outside simulated time (a loop
    /// that never yields); it is killed and counted as a failure.
    const CHILD_WALL_MAX: Duration = Duration::from_secs(600);

    #[derive(Parser)]
    #[command(name = "dfs-sim", about = "Replay, soak and inspect the dfs chaos simulation")]
    struct Cli {
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(Subcommand)]
    enum Cmd {
        /// Rerun SEED and print its timeline.
        Replay {
            /// The seed (also `--seed N`).
            #[arg(required_unless_present = "seed_flag")]
            seed: Option<u64>,
            #[arg(long = "seed", id = "seed_flag", conflicts_with = "seed")]
            seed_flag: Option<u64>,
            /// The scenario to replay; `chaos` is the only one `dfs-sim` runs.
            #[arg(long, default_value = "chaos", value_parser = ["chaos"])]
            scenario: String,
            /// Only events of this host (meta-1, storage-3, client-2, ...) and those naming it.
            #[arg(long, alias = "node")]
            host: Option<String>,
            /// Only events about this chunk: FILE:INDEX (as the timeline shows it), or a prefix of
            /// its hex id.
            #[arg(long)]
            chunk: Option<String>,
            /// Only events about this remote path: its operations and its files' chunks.
            #[arg(long, alias = "path")]
            file: Option<String>,
            /// Only these kinds, comma-separated: phase, op, fault, site, leader, chunk, repair,
            /// node, check, log.
            #[arg(long, value_delimiter = ',')]
            kinds: Vec<String>,
            /// From this simulated time (ms).
            #[arg(long)]
            from_ms: Option<u64>,
            /// Up to this simulated time (ms).
            #[arg(long)]
            to_ms: Option<u64>,
            /// Only the last N events that pass the filters.
            #[arg(long)]
            last: Option<usize>,
            /// Hide the context (faults, leaders, phases, verdicts) that subject filters keep.
            #[arg(long)]
            no_context: bool,
            /// Where the raw debug log goes (default target/sim/replays/chaos-seed-N.log).
            #[arg(long)]
            log: Option<PathBuf>,
        },
        /// Run many seeds, in parallel processes.
        Soak {
            #[arg(long, default_value_t = 1000)]
            seeds: u64,
            #[arg(long, default_value_t = 1)]
            from: u64,
            /// Processes at once (default: the number of cores).
            #[arg(long)]
            jobs: Option<usize>,
            /// Stop at the first failure.
            #[arg(long)]
            stop_on_fail: bool,
        },
        /// Print SEED's fault plan.
        Atlas { seed: u64 },
        /// Run one seed and print its result line (used by `soak`).
        Child {
            #[arg(long)]
            seed: u64,
        },
    }

    fn target_dir() -> PathBuf {
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/sim"))
    }

    pub fn main() {
        let cli = Cli::parse();
        let code = match cli.command {
            Cmd::Atlas { seed } => {
                print!("{}", Atlas::from_seed(seed).describe());
                0
            }
            Cmd::Child { seed } => child(seed),
            Cmd::Replay { seed, seed_flag, scenario: _, host, chunk, file, kinds, from_ms, to_ms, last, no_context, log } => {
                let seed = seed.or(seed_flag).expect("clap requires a seed");
                let mut parsed = std::collections::BTreeSet::new();
                for k in &kinds {
                    match Kind::parse(k) {
                        Some(kind) => {
                            parsed.insert(kind);
                        }
                        None => {
                            eprintln!("dfs-sim: unknown kind {k:?}; kinds: {}", Kind::ALL.map(|k| k.name()).join(", "));
                            std::process::exit(2);
                        }
                    }
                }
                let filter = Filter { host, chunk, path: file, kinds: parsed, from_ms, to_ms, no_context };
                replay(seed, filter, last, log)
            }
            Cmd::Soak { seeds, from, jobs, stop_on_fail } => soak(from, seeds, jobs, stop_on_fail),
        };
        std::process::exit(code);
    }

    fn child(seed: u64) -> i32 {
        let captured = seeds::run_captured(seed, false, chaos::scenario);
        println!("{}", captured.run.line());
        match captured.failure {
            None => 0,
            Some(message) => {
                // The first line is what the soak reports.
                eprintln!("{}", message.lines().next().unwrap_or_default());
                1
            }
        }
    }

    fn replay(seed: u64, filter: Filter, last: Option<usize>, log: Option<PathBuf>) -> i32 {
        eprintln!("replaying chaos seed {seed} ...");
        let captured = seeds::run_captured(seed, true, chaos::scenario);
        let log = log.unwrap_or_else(|| target_dir().join("replays").join(format!("chaos-seed-{seed}.log")));
        if let Some(dir) = log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let written = std::fs::write(&log, captured.lines.join("\n"));
        print!("{}", timeline::render(&captured.records, &filter, last));
        let run = &captured.run;
        println!(
            "\nseed {seed}: {} records, timeline {}, {:.1} s simulated in {:.1} s",
            run.timeline_records,
            run.timeline_hash,
            run.simulated.as_secs_f64(),
            run.wall.as_secs_f64()
        );
        match written {
            Ok(()) => println!("raw log ({} lines): {}", captured.lines.len(), log.display()),
            Err(e) => println!("raw log not written to {}: {e}", log.display()),
        }
        match captured.failure {
            None => {
                println!("result: passed");
                0
            }
            Some(message) => {
                println!("result: FAILED: {}", message.lines().next().unwrap_or_default());
                if filter.path.is_none() {
                    if let Some(p) = seeds::verdict_path(&captured.records) {
                        println!("the events about {p}: cargo sim-replay {seed} --file {p}");
                    }
                }
                1
            }
        }
    }

    struct Running {
        seed: u64,
        child: Child,
        started: Instant,
    }

    fn soak(from: u64, count: u64, jobs: Option<usize>, stop_on_fail: bool) -> i32 {
        let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1);
        let exe = std::env::current_exe().expect("own path");
        let started = Instant::now();
        let mut queue: VecDeque<u64> = (from..from + count).collect();
        let mut running: Vec<Running> = Vec::new();
        let mut table = Table::default();
        let (mut done, mut failed) = (0u64, Vec::new());
        let (mut simulated, mut child_wall) = (Duration::ZERO, Duration::ZERO);
        let report_every = (count / 20).clamp(1, 250);
        println!("[sim] soak: chaos seeds {from}..{} with {jobs} processes at once", from + count - 1);
        while !queue.is_empty() || !running.is_empty() {
            while running.len() < jobs && (failed.is_empty() || !stop_on_fail) {
                let Some(seed) = queue.pop_front() else { break };
                let mut command = Command::new(&exe);
                // The raw log is not kept by a soak (a failure is replayed for it), and
                // formatting it costs; the timeline does not depend on it.
                if std::env::var_os("RUST_LOG").is_none() {
                    command.env("RUST_LOG", "warn");
                }
                let child = command
                    .args(["child", "--seed", &seed.to_string()])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("start a simulation child");
                running.push(Running { seed, child, started: Instant::now() });
            }
            if stop_on_fail && !failed.is_empty() {
                queue.clear();
            }
            std::thread::sleep(Duration::from_millis(20));
            let mut i = 0;
            while i < running.len() {
                let r = &mut running[i];
                let status = r.child.try_wait().expect("wait for a child");
                let hung = status.is_none() && r.started.elapsed() > CHILD_WALL_MAX;
                if status.is_none() && !hung {
                    i += 1;
                    continue;
                }
                let mut r = running.swap_remove(i);
                if hung {
                    let _ = r.child.kill();
                }
                let out = r.child.wait_with_output().expect("child output");
                let stdout = String::from_utf8_lossy(&out.stdout);
                let stderr = String::from_utf8_lossy(&out.stderr);
                done += 1;
                if let Some(run) = SeedRun::parse(&stdout, r.started.elapsed()) {
                    table.add(&run.coverage);
                    simulated += run.simulated;
                    child_wall += run.wall;
                }
                if hung || !out.status.success() {
                    let why = if hung {
                        format!("no result after {CHILD_WALL_MAX:?} of wall time (stuck outside simulated time)")
                    } else {
                        stderr
                            .lines()
                            .rev()
                            .find(|l| l.contains("VERDICT"))
                            .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
                            .unwrap_or("no output")
                            .to_string()
                    };
                    println!("[sim] soak: seed {} FAILED: {why}\n[sim]   replay: cargo sim-replay {}", r.seed, r.seed);
                    failed.push(r.seed);
                }
                if done % report_every == 0 {
                    let minutes = started.elapsed().as_secs_f64() / 60.0;
                    println!("[sim] soak {done}/{count}, {} failed, {:.1} seeds/min", failed.len(), done as f64 / minutes.max(1e-9));
                    let _ = std::io::stdout().flush();
                }
            }
        }
        let minutes = started.elapsed().as_secs_f64() / 60.0;
        let summary = format!(
            "[sim] soak done: {done} seeds from {from}, {} failed{}, {:.1} min, {:.1} seeds/min with {jobs} processes; {:.2} s wall and {:.1} s simulated per seed",
            failed.len(),
            if failed.is_empty() { String::new() } else { format!(" ({failed:?})") },
            minutes,
            done as f64 / minutes.max(1e-9),
            child_wall.as_secs_f64() / done.max(1) as f64,
            simulated.as_secs_f64() / done.max(1) as f64,
        );
        let text = format!("{summary}\n{}", table.render("chaos soak"));
        print!("{text}");
        let dir = target_dir().join("soak");
        let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join(format!("{from}-{count}.txt")), &text));
        i32::from(!failed.is_empty())
    }
}
