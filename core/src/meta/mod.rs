//! The metadata node: the leader's decisions (`leader`, pure), Raft glue (`raft`), its
//! durable storage (`log_store`, `state_machine`) and the service it answers (`server`).

pub mod config;
pub mod leader;
pub mod log_store;
pub mod raft;
pub mod server;
pub mod state_machine;
pub mod types;

pub use config::MetaConfig;
pub use server::{write_quorum, MetaServer, MetaStartError};
