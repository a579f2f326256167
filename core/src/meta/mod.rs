//! The metadata node: its own decisions (`engine`, pure) and the leader's (`leader`, pure),
//! the executor that carries them out (`server`), what it answers on the wire (`service`),
//! which reads share a leadership check (`read_rounds`, pure), Raft glue (`types`, `raft`), its durable storage (`log_store`, `state_machine`) and its
//! settings (`config`).

pub mod config;
pub mod engine;
pub mod guard;
pub mod leader;
pub mod log_store;
pub mod raft;
pub mod read_rounds;
pub mod server;
pub mod service;
pub mod state_machine;
pub mod types;

pub use crate::namespace::write_quorum;
pub use config::MetaConfig;
pub use server::{MetaServer, MetaStartError};
pub use service::{LeaderView, MetaView};
