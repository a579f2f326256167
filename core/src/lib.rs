//! # dfs-core: the protocol of dfs, with no I/O
//!
//! This crate is the whole logic of the dfs distributed file system and none of its I/O. It
//! opens no sockets and no files, reads no clock and draws no entropy: those come in through
//! the traits of [`env`] (`Clock`, `Transport`, `Disk`, and openraft's runtime), implemented by
//! `dfs-io-real` (tokio, tonic, the real filesystem) and `dfs-io-sim` (madsim, a simulated disk).
//!
//! Two kinds of code live here:
//!
//! 1. **Pure state machines**, driven by inputs and the current time, returning decisions:
//!    [`namespace`] (the replicated metadata: `apply(command)`), [`placement`], [`health`]
//!    (the failure detector), [`chunk_store`] (a storage node's chunk lifecycle and file
//!    format), [`chunking`]. Each is tested on its own, with proptest, no runtime at all.
//! 2. **Drivers** that connect them to an [`env::Env`]: the metadata node ([`meta`], openraft
//!    carrying `Namespace` commands), the storage node ([`storage_node`]) and the client
//!    ([`client`]). They are `async` and generic over the environment; the same driver code runs
//!    in production and in the deterministic simulation.
//!
//! The wire format is [`proto`], generated from `proto/dfs/v1/*.proto`; [`rpc`] holds what
//! every transport shares (typed unary calls, errors, chunk framing); [`limits`] the sizes every
//! role agrees on; [`meta_client`] how any role (a client, a storage node) calls the metadata
//! cluster.

pub mod auth;
pub mod bulk_buf;
pub mod chain;
pub mod chunk_store;
pub mod chunk_tokens;
pub mod chunking;
pub mod client;
pub mod env;
pub mod fault;
pub mod fuzz;
pub mod health;
pub mod ids;
pub mod limits;
pub mod meta;
pub mod meta_client;
pub mod namespace;
pub mod placement;
pub mod planted;
pub mod proto;
pub mod repair;
pub mod rpc;
pub mod s3;
pub mod scrub;
pub mod storage_node;
pub mod storage_reports;
pub mod tokens;
