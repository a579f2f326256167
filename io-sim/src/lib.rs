//! # dfs-io-sim: dfs's environment inside a deterministic simulation
//!
//! The `dfs_core::env` traits on madsim: virtual time (`SimClock`), a network that madsim can
//! partition, delay and cut (`SimTransport`, carrying the same protobuf messages as
//! production), openraft's runtime on madsim tasks and RNG (`SimRuntime`), and a disk that
//! separates synced from unsynced data and loses the latter on a crash (`SimDisk`, usable
//! without madsim too), and TLS's admission rules (`identity`: who a host is, whom its servers
//! let in).
//!
//! Everything but `SimDisk` and `identity` exists only when built with `--cfg madsim` (see `cargo sim`).
//! Decisions do not live here: this crate only carries out what `dfs-core` asks for, and
//! injects faults the test harness asks for.

pub mod disk;
pub mod identity;
pub use disk::{CrashModel, CrashReport, SimDisk, SplitMix};
pub use identity::{SimCert, SimCredentials};

#[cfg(madsim)]
pub mod clock;
#[cfg(madsim)]
pub mod env;
#[cfg(madsim)]
pub mod runtime;
#[cfg(madsim)]
pub mod transport;

#[cfg(madsim)]
pub use {
    clock::{ClockSkew, SimClock},
    env::SimEnv,
    runtime::SimRuntime,
    transport::{serve, SimService, SimTransport},
};
