//! The metadata node: Raft glue (`raft`) and the service it answers (`server`).

pub mod raft;
pub mod server;

pub use server::{write_quorum, MetaConfig, MetaServer, MetaStartError};
