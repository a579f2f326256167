//! The fuzz targets (`dfs_core::fuzz`) under AFL++, briefly: `scripts/fuzz.sh` builds the
//! instrumented harness and runs each target for `DFS_FUZZ_SECONDS` (default 10), failing on
//! any crash. The committed corpus and regressions are replayed without AFL by dfs-core's
//! `fuzz_corpus_replays` in every run; this adds coverage-guided mutation. Long campaigns:
//! `scripts/fuzz.sh --seconds 600` (docs/CONTRIBUTING.md, "Fuzzing").

#![cfg(not(madsim))]

use std::path::Path;
use std::process::{Command, Stdio};

/// cargo-afl present; with `CI` set it must be (`.ci/run` installs it).
fn afl_available() -> bool {
    let ok = Command::new("cargo").args(["afl", "--version"]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI must fuzz: no cargo-afl here (.ci/run installs it)");
        eprintln!("SKIPPED: no cargo-afl (cargo install cargo-afl && cargo afl config --build)");
    }
    ok
}

#[test]
fn every_fuzz_target_runs_clean_under_afl() {
    if !afl_available() {
        return;
    }
    let seconds = std::env::var("DFS_FUZZ_SECONDS").unwrap_or_else(|_| "10".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fuzz.sh");
    let out = tempfile::tempdir().unwrap();
    // A brief run is spent mostly building: the harness is optimized less than a campaign's
    // (opt-level 1, not 3), which builds in about half the time and still runs thousands of
    // executions a second.
    let run = Command::new(&script)
        .args(["--seconds", &seconds, "--out"])
        .arg(out.path())
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", std::env::var("DFS_FUZZ_OPT_LEVEL").unwrap_or_else(|_| "1".into()))
        .output()
        .expect("run scripts/fuzz.sh");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    eprintln!("{stdout}");
    assert!(run.status.success(), "fuzzing failed:\n{stdout}\n{stderr}");
    // One line per target, each with executions: a run that fuzzed nothing must not pass.
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains(" executions, ")).collect();
    assert_eq!(lines.len(), dfs_core::fuzz::TARGETS.len(), "a line per target: {stdout}");
    for line in lines {
        let execs: u64 = line.split(", ").nth(1).and_then(|p| p.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(execs > 100, "{line}: too few executions to have fuzzed anything");
    }
}
