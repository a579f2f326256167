//! `dfs admin`: cluster administration.

use std::fmt::Write as _;

use clap::{Args, Subcommand};
use dfs_core::client::{ClientConfig, ClientError};
use dfs_core::proto::{self, MetaStatusResponse};

use crate::cli::{emit, emit_json, usage, Ctx, MetaFlag};
use crate::output::MetaStatusJson;

#[derive(Subcommand)]
pub enum AdminCommand {
    /// The metadata cluster's members.
    Meta {
        #[command(subcommand)]
        command: MetaCommand,
    },
    /// Start a full scrub pass on a storage node now (every chunk re-read and verified;
    /// damaged replicas are reported and repaired).
    Scrub(ScrubArgs),
    /// Drain a storage node: no new chunks, its replicas copied elsewhere; `dfs nodes` shows
    /// it `decommissioned` (safe to switch off) once every chunk it holds is whole without it.
    Decommission(NodeArg),
    /// Put a draining storage node back in service.
    Recommission(NodeArg),
    /// Storage nodes.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Forget a storage node that will never come back (it must not be heartbeating): its
    /// replicas stop being listed anywhere, and repair replaces them.
    Forget(NodeArg),
}

#[derive(Args)]
pub struct NodeArg {
    /// The storage node: its id (as `dfs nodes` shows it) or its address.
    node: String,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Args)]
pub struct ScrubArgs {
    /// The storage node: its id (as `dfs nodes` shows it) or its address.
    node: String,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Subcommand)]
pub enum MetaCommand {
    /// Add a metadata node (started with `dfs meta --id ID --listen ...` and no --peers): it
    /// catches up as a learner, then becomes a voter.
    Add(AddArgs),
    /// Remove a metadata node from the cluster.
    Remove(RemoveArgs),
    /// Members, leader, term, log and applied indexes, and each member's lag.
    Status(crate::client_cmds::StatusArgs),
}

#[derive(Args)]
pub struct AddArgs {
    /// ID=HOST:PORT of the node to add.
    member: String,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Args)]
pub struct RemoveArgs {
    /// Id of the node to remove.
    id: u64,
    #[command(flatten)]
    meta: MetaFlag,
}

pub async fn run(ctx: &Ctx, command: AdminCommand) -> anyhow::Result<()> {
    let (status, done) = match command {
        AdminCommand::Scrub(args) => return scrub(ctx, args).await,
        AdminCommand::Decommission(args) => return set_draining(ctx, args, true).await,
        AdminCommand::Recommission(args) => return set_draining(ctx, args, false).await,
        AdminCommand::Node { command: NodeCommand::Forget(args) } => return forget(ctx, args).await,
        AdminCommand::Meta { command: MetaCommand::Add(args) } => {
            let bad = || usage(format!("{:?} is not ID=HOST:PORT with an id of 1 or more", args.member));
            let (id, addr) = args.member.split_once('=').ok_or_else(bad)?;
            let id: u64 = id.trim().parse().map_err(|_| bad())?;
            let addr = addr.trim();
            if id == 0 || addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return Err(bad());
            }
            let status = args.meta.client(ClientConfig::default())?.add_meta_member(id, addr).await?;
            (status, Some(format!("added metadata node {id} at {addr}\n")))
        }
        AdminCommand::Meta { command: MetaCommand::Remove(args) } => {
            let status = args.meta.client(ClientConfig::default())?.remove_meta_member(args.id).await?;
            (status, Some(format!("removed metadata node {}\n", args.id)))
        }
        AdminCommand::Meta { command: MetaCommand::Status(args) } => (args.meta.client(ClientConfig::default())?.meta_status().await?, None),
    };
    if ctx.json {
        return emit_json(&MetaStatusJson::from(&status));
    }
    emit(&format!("{}{}", done.unwrap_or_default(), status_text(&status)))
}

fn status_text(s: &MetaStatusResponse) -> String {
    let mut out = String::new();
    let _ = match &s.leader {
        Some(l) => writeln!(out, "leader: {} {}", l.id, l.addr),
        None => writeln!(out, "leader: none"),
    };
    let _ = writeln!(
        out,
        "term: {}  last log index: {}  applied index: {}  snapshot index: {}  purged index: {}",
        s.term, s.last_log_index, s.applied_index, s.snapshot_index, s.purged_index
    );
    let _ = writeln!(out, "{:>4}  {:<21}  {:<7}  {:>10}  {:>6}", "id", "address", "role", "matched", "lag");
    let unknown = || "?".to_string();
    for m in &s.members {
        let _ = writeln!(
            out,
            "{:>4}  {:<21}  {:<7}  {:>10}  {:>6}",
            m.id,
            m.addr,
            m.role,
            m.matched_index.map(|i| i.to_string()).unwrap_or_else(unknown),
            m.lag.map(|i| i.to_string()).unwrap_or_else(unknown)
        );
    }
    out
}

async fn scrub(ctx: &Ctx, args: ScrubArgs) -> anyhow::Result<()> {
    let client = args.meta.meta_client()?;
    let reply = client
        .call(proto::ScrubStorageNodeRequest { node: args.node.clone() })
        .await
        .map_err(|source| crate::transfer::explain(ClientError::Metadata { context: format!("scrub {}", args.node), source }))?;
    let node = reply.node.unwrap_or_default();
    if ctx.json {
        return emit_json(&serde_json::json!({ "node_id": crate::output::node_id(node.id), "addr": node.addr, "scrub": "requested" }));
    }
    emit(&format!("scrub requested on storage node {} ({}); it starts with the node's next heartbeat\n", crate::output::node_id(node.id), node.addr))
}

async fn set_draining(ctx: &Ctx, args: NodeArg, draining: bool) -> anyhow::Result<()> {
    let verb = if draining { "decommission" } else { "recommission" };
    let client = args.meta.meta_client()?;
    let reply = client
        .call(proto::SetDrainingRequest { node: args.node.clone(), draining })
        .await
        .map_err(|source| crate::transfer::explain(ClientError::Metadata { context: format!("{verb} {}", args.node), source }))?;
    let node = reply.node.unwrap_or_default();
    let id = crate::output::node_id(node.id);
    if ctx.json {
        return emit_json(&serde_json::json!({ "node_id": id, "addr": node.addr, "draining": draining }));
    }
    if draining {
        emit(&format!(
            "storage node {id} ({}) is draining: its chunks are being copied elsewhere; `dfs nodes` shows it decommissioned when it is safe to switch off\n",
            node.addr
        ))
    } else {
        emit(&format!("storage node {id} ({}) is back in service\n", node.addr))
    }
}

async fn forget(ctx: &Ctx, args: NodeArg) -> anyhow::Result<()> {
    let client = args.meta.meta_client()?;
    let reply = client
        .call(proto::ForgetStorageNodeRequest { node: args.node.clone() })
        .await
        .map_err(|source| crate::transfer::explain(ClientError::Metadata { context: format!("forget {}", args.node), source }))?;
    let node = reply.node.unwrap_or_default();
    let id = crate::output::node_id(node.id);
    if ctx.json {
        return emit_json(&serde_json::json!({ "node_id": id, "addr": node.addr, "forgotten": true }));
    }
    emit(&format!("storage node {id} ({}) forgotten; repair replaces its replicas\n", node.addr))
}
