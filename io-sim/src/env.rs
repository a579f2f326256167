//! The simulated `Env`: madsim time and network, a `SimDisk`, and the seed's randomness.

use dfs_core::env::Env;

use crate::clock::SimClock;
use crate::disk::SimDisk;
use crate::identity::SimCredentials;
use crate::runtime::SimRuntime;
use crate::transport::SimTransport;

#[derive(Clone, Debug)]
pub struct SimEnv {
    clock: SimClock,
    transport: SimTransport,
    disk: SimDisk,
}

impl SimEnv {
    /// An environment for code running inside a simulated node, with that node's disk.
    pub fn new(disk: SimDisk) -> Self {
        SimEnv { clock: SimClock::default(), transport: SimTransport::default(), disk }
    }

    /// The same, for a host whose clock is `clock` (skewed, say).
    pub fn with_clock(disk: SimDisk, clock: SimClock) -> Self {
        SimEnv { clock, transport: SimTransport::default(), disk }
    }

    /// The same host, calling out with `credentials` (by default it presents none and
    /// speaks plaintext, as an `--insecure` one).
    pub fn with_credentials(mut self, credentials: SimCredentials) -> Self {
        self.transport = SimTransport::new(credentials);
        self
    }
}

impl Env for SimEnv {
    type Clock = SimClock;
    type Transport = SimTransport;
    type Disk = SimDisk;
    type RaftRuntime = SimRuntime;

    fn clock(&self) -> &SimClock {
        &self.clock
    }

    fn transport(&self) -> &SimTransport {
        &self.transport
    }

    fn disk(&self) -> &SimDisk {
        &self.disk
    }

    fn random_u64(&self) -> u64 {
        madsim::rand::random()
    }

    /// Distinct keys, the same in every run of a seed (its process makes them in the same
    /// order), drawn from no stream the seed's timeline depends on.
    fn random_key(&self) -> [u8; 32] {
        use sha2::Digest;
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sha2::Sha256::digest(format!("dfs simulated key {n}")).into()
    }
}
