//! # dfs-sim-tests: whole-cluster simulations
//!
//! Seeded madsim runs of real dfs nodes (`dfs-core` drivers on `dfs-io-sim`), with checkers.
//! Built only with `--cfg madsim`; plain `cargo test` reaches them through
//! `tests/simulations.rs`, which runs the nested simulation build (see the README).
//!
//! - [`seeds`]: which seeds run (`MADSIM_TEST_SEED`, `MADSIM_TEST_NUM`), each on a fresh thread
//!   and runtime; a failing seed prints the command that replays it.
//! - [`trace`]: the event trace of a run and its hash, for the determinism check.
//! - [`faults`]: the seed's plan for core's fault sites (delays and failures injected in the
//!   drivers), and what fired.
//! - [`cluster`]: starts metadata and storage nodes as simulated hosts, kills and restarts
//!   them, and checks cluster-wide invariants.

#![cfg(madsim)]

pub mod cluster;
pub mod faults;
pub mod seeds;
pub mod trace;
