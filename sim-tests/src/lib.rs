//! # dfs-sim-tests: whole-cluster simulations
//!
//! Seeded madsim runs of real dfs nodes (`dfs-core` drivers on `dfs-io-sim`), with checkers.
//! Built only with `--cfg madsim`; plain `cargo test` reaches them through
//! `tests/simulations.rs`, which runs the nested simulation build (see the README).
//!
//! - [`seeds`]: which seeds run (`MADSIM_TEST_SEED`, `MADSIM_TEST_NUM`), each on a fresh thread
//!   and runtime; a failing seed prints the command that replays it.
//! - [`trace`]: the raw log of a run and its hash.
//! - [`timeline`]: the typed events of a run (operations, faults, leaders, chunks, repairs,
//!   verdicts), readable and filterable; its hash is the determinism check's.
//! - [`coverage`]: which faults were on and fired, per run and over many.
//! - [`chaos`]: the chaos scenario (every fault kind, a fault atlas, two phases).
//! - [`checks`]: cluster-wide checkers shared by scenarios (replicas, orphans, downloads).
//! - [`faults`]: the seed's plan for core's fault sites (delays and failures injected in the
//!   drivers), and what fired.
//! - [`cluster`]: starts metadata and storage nodes as simulated hosts, kills and restarts
//!   them, and checks cluster-wide invariants.

#![cfg(madsim)]

pub mod chaos;
pub mod checks;
pub mod cluster;
pub mod coverage;
pub mod faults;
pub mod seeds;
pub mod timeline;
pub mod trace;
