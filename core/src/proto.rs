//! The wire messages of `dfs.v1`, generated from `proto/dfs/v1/messages.proto`, plus (from
//! `services.proto`) the `Rpc` impls, handler traits and byte-level dispatchers of the unary
//! methods. See `build.rs`.
#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/dfs.v1.rs"));
