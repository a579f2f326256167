//! # dfs-io-real: dfs's production environment
//!
//! The `dfs_core::env` traits on real things: tokio time (`RealClock`), gRPC over HTTP/2 with
//! tonic (`GrpcTransport`, and `serve_metadata` / `serve_storage` for the servers, generated
//! from `proto/dfs/v1/services.proto`), and the local filesystem with real fsyncs (`RealDisk`).
//! openraft runs on its own tokio runtime.
//!
//! Nothing here decides anything: requests go straight to `dfs-core`'s handlers and calls
//! straight onto the wire.

pub mod clock;
pub mod disk;
pub mod env;
pub mod grpc;
pub mod metrics;
pub mod server;
pub mod tls;
pub mod transport;

/// tonic code generated from `services.proto`, against `dfs_core::proto` messages.
#[allow(clippy::all)]
pub mod generated {
    include!(concat!(env!("OUT_DIR"), "/dfs.v1.rs"));
}

pub use clock::RealClock;
pub use disk::RealDisk;
pub use env::RealEnv;
pub use server::{serve_metadata, serve_storage};
pub use transport::GrpcTransport;
