//! The production `Env`.

use dfs_core::env::Env;

use crate::{GrpcTransport, RealClock, RealDisk};

#[derive(Clone, Debug, Default)]
pub struct RealEnv {
    clock: RealClock,
    transport: GrpcTransport,
    disk: RealDisk,
}

impl RealEnv {
    /// The production environment calling out through `transport` (TLS or not).
    pub fn with_transport(transport: GrpcTransport) -> Self {
        RealEnv { transport, ..RealEnv::default() }
    }
}

impl Env for RealEnv {
    type Clock = RealClock;
    type Transport = GrpcTransport;
    type Disk = RealDisk;
    type RaftRuntime = openraft::TokioRuntime;

    fn clock(&self) -> &RealClock {
        &self.clock
    }

    fn transport(&self) -> &GrpcTransport {
        &self.transport
    }

    fn disk(&self) -> &RealDisk {
        &self.disk
    }

    fn random_u64(&self) -> u64 {
        rand::random()
    }

    fn random_key(&self) -> [u8; 32] {
        // ThreadRng: a CSPRNG seeded from the OS.
        rand::random()
    }

    async fn compute<T, F>(&self, work: F) -> T
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match tokio::task::spawn_blocking(work).await {
            Ok(out) => out,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}
