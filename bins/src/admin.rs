//! `dfs admin`: cluster administration.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use dfs_core::client::ClientConfig;
use dfs_core::proto::MetaStatusResponse;

use crate::client_cmds::{client, MetaFlag};

#[derive(Subcommand)]
pub enum AdminCommand {
    /// The metadata cluster's members.
    Meta {
        #[command(subcommand)]
        command: MetaCommand,
    },
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

pub async fn run(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Meta { command: MetaCommand::Add(args) } => {
            let (id, addr) = args.member.split_once('=').with_context(|| format!("{:?} is not ID=HOST:PORT", args.member))?;
            let id: u64 = id.trim().parse().with_context(|| format!("{id:?} is not a node id"))?;
            let addr = addr.trim();
            if id == 0 || addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                bail!("{:?} is not ID=HOST:PORT with an id of 1 or more", args.member);
            }
            let status = client(&args.meta, ClientConfig::default())?.add_meta_member(id, addr).await?;
            println!("added metadata node {id} at {addr}");
            print_status(&status);
        }
        AdminCommand::Meta { command: MetaCommand::Remove(args) } => {
            let status = client(&args.meta, ClientConfig::default())?.remove_meta_member(args.id).await?;
            println!("removed metadata node {}", args.id);
            print_status(&status);
        }
        AdminCommand::Meta { command: MetaCommand::Status(args) } => {
            let status = client(&args.meta, ClientConfig::default())?.meta_status().await?;
            print_status(&status);
        }
    }
    Ok(())
}

fn print_status(s: &MetaStatusResponse) {
    match &s.leader {
        Some(l) => println!("leader: {} {}", l.id, l.addr),
        None => println!("leader: none"),
    }
    println!("term: {}  last log index: {}  applied index: {}  snapshot index: {}  purged index: {}", s.term, s.last_log_index, s.applied_index, s.snapshot_index, s.purged_index);
    println!("{:>4}  {:<21}  {:<7}  {:>10}  {:>6}", "id", "address", "role", "matched", "lag");
    let unknown = || "?".to_string();
    for m in &s.members {
        println!(
            "{:>4}  {:<21}  {:<7}  {:>10}  {:>6}",
            m.id,
            m.addr,
            m.role,
            m.matched_index.map(|i| i.to_string()).unwrap_or_else(unknown),
            m.lag.map(|i| i.to_string()).unwrap_or_else(unknown)
        );
    }
}
