//! Plain `cargo test` entry point for the deterministic simulations.
//!
//! madsim needs `--cfg madsim` on the whole dependency graph, which stable Cargo cannot set
//! per crate, and which must never reach a production build. So this test runs a nested
//! `cargo test -p dfs-sim-tests` with `RUSTFLAGS="--cfg madsim"` into `target/sim`: the two
//! builds never invalidate each other, and `cargo sim` (see .cargo/config.toml) shares the
//! nested one. Seeds: `MADSIM_TEST_SEED` / `MADSIM_TEST_NUM`, passed through. `SKIP_SIMS=1`
//! skips this (for quick local iterations only: refused when `CI` is set, as `.ci/run` does;
//! `MADSIM_TEST_NUM=0` fails rather than pass with nothing run). The nested build also has
//! `--cfg dfs_planted`, for the planted bugs' tests (`core/src/planted.rs`).

#![cfg(not(madsim))]

use std::io::Write;
use std::path::Path;
use std::process::Command;

#[test]
fn seeded_simulations() {
    let mut report = std::io::stderr().lock();
    if std::env::var_os("SKIP_SIMS").is_some() {
        // A CI run must never pass with a layer skipped.
        assert!(std::env::var_os("CI").is_none(), "SKIP_SIMS is set in CI (CI is set): the simulations must run there");
        let _ = writeln!(report, "[sim] SKIP_SIMS is set: SIMULATIONS NOT RUN (quick local iterations only)");
        return;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").join("sim");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Keep the caller's flags (e.g. -D warnings) and add the simulation cfg.
    // `dfs_planted`: the planted bugs' tests switch them on one at a time (core/src/planted.rs).
    let rustflags = format!("{} --cfg madsim --cfg dfs_planted", std::env::var("RUSTFLAGS").unwrap_or_default());
    let started = std::time::Instant::now();
    let out = Command::new(cargo)
        .current_dir(workspace)
        .env("RUSTFLAGS", rustflags.trim())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_TARGET_DIR", &target)
        // The `sim` profile (Cargo.toml): dfs's crates optimized too, as `cargo sim` builds.
        .args(["test", "-p", "dfs-sim-tests", "--profile", "sim", "--", "--nocapture"])
        .output()
        .expect("cannot run the nested cargo for the simulations");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Written to stderr directly, not through the test harness's capture, so that plain
    // `cargo test` shows which simulations ran, for how many seeds, and how long they took.
    for line in stdout.lines().filter(|l| is_summary(l)) {
        let prefix = if line.starts_with("[sim]") { "" } else { "[sim] " };
        let _ = writeln!(report, "{prefix}{line}");
    }
    let _ = writeln!(report, "[sim] nested simulation build and run took {:.1}s", started.elapsed().as_secs_f64());
    assert!(out.status.success(), "simulations failed:\n{stdout}\n{stderr}");
}

/// The per-simulation summary lines and test verdicts, not the per-seed lines.
fn is_summary(line: &str) -> bool {
    (line.starts_with("[sim]") && !line.contains(" seed=")) || (line.starts_with("test ") && line.contains(" ... "))
}
