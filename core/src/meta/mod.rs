//! The metadata node: Raft glue (`raft`), its durable storage (`log_store`, `state_machine`)
//! and the service it answers (`server`).

pub mod log_store;
pub mod raft;
pub mod server;
pub mod state_machine;

pub use server::{write_quorum, MetaConfig, MetaServer, MetaStartError};
