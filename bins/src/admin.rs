//! `dfs admin`: cluster administration.

use std::fmt::Write as _;

use clap::{Args, Subcommand};
use dfs_core::client::{ClientConfig, ClientError};
use dfs_core::proto::{self, MetaStatusResponse};

use dfs_core::namespace::utc_time;

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
    /// Users' bearer tokens: make one (for DFS_TOKEN or --token), list them, revoke one.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The S3 gateway (`dfs s3`): its access keys.
    S3 {
        #[command(subcommand)]
        command: S3Command,
    },
}

#[derive(Subcommand)]
pub enum S3Command {
    /// S3 access keys: make one (an access key id and its secret), list them, revoke one.
    Key {
        #[command(subcommand)]
        command: S3KeyCommand,
    },
}

#[derive(Subcommand)]
pub enum S3KeyCommand {
    /// Make an access key for S3 clients; its secret is printed once (with --json:
    /// access_key_id and secret_access_key) and never shown again.
    Create(S3KeyCreateArgs),
    /// Every S3 access key: id, name, role, prefix, when made, when it expires.
    List(TokenListArgs),
    /// Revoke an access key at once: the gateway refuses it within its cache's lifetime.
    Revoke(TokenRevokeArgs),
}

#[derive(Args)]
pub struct S3KeyCreateArgs {
    /// Whose key it is: named in listings (letters, digits, . _ @ -).
    #[arg(long)]
    name: String,
    /// What it may do: read (list and get objects), write (also put and delete them), admin
    /// (also create and delete buckets).
    #[arg(long, value_parser = ["read", "write", "admin"])]
    role: String,
    /// The only bucket or subtree it reaches (/bucket or /bucket/dir); default: everything.
    #[arg(long, default_value = "/")]
    prefix: String,
    /// How long it lasts (e.g. 1h, 30d, 1y), or `never`.
    #[arg(long, default_value = "never", value_parser = parse_ttl)]
    ttl: TokenTtl,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is printed once, alone on stdout (what it is goes to stderr), and kept
    /// nowhere: `export DFS_TOKEN=$(dfs admin token create --name alice --role read)`.
    Create(TokenCreateArgs),
    /// Every token the cluster keeps: id, name, role, prefix, when made, when it expires.
    List(TokenListArgs),
    /// Revoke a token at once, on every metadata node.
    Revoke(TokenRevokeArgs),
}

#[derive(Args)]
pub struct TokenCreateArgs {
    /// Whose token it is: named in listings and in refusals (letters, digits, . _ @ -).
    #[arg(long)]
    name: String,
    /// What it may do: read (files and the cluster's state), write (also create, change and
    /// delete files), admin (also administer the cluster and its tokens).
    #[arg(long, value_parser = ["read", "write", "admin"])]
    role: String,
    /// The only subtree it reaches (e.g. /home/alice); default: everything.
    #[arg(long, default_value = "/")]
    prefix: String,
    /// How long it lasts (e.g. 1h, 30d, 1y), or `never`.
    #[arg(long, default_value = "30d", value_parser = parse_ttl)]
    ttl: TokenTtl,
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Args)]
pub struct TokenListArgs {
    #[command(flatten)]
    meta: MetaFlag,
}

#[derive(Args)]
pub struct TokenRevokeArgs {
    /// The token's id, as `dfs admin token list` shows it (16 hex digits).
    id: String,
    #[command(flatten)]
    meta: MetaFlag,
}

/// A token's lifetime: `None` never ends.
#[derive(Clone, Copy, Debug)]
struct TokenTtl(Option<std::time::Duration>);

fn parse_ttl(s: &str) -> Result<TokenTtl, String> {
    if s == "never" {
        return Ok(TokenTtl(None));
    }
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a lifetime like 1h, 30d or never: {e}"))?;
    if d < std::time::Duration::from_secs(1) {
        return Err("a token lasts at least 1s (or `never`)".into());
    }
    Ok(TokenTtl(Some(d)))
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
        AdminCommand::Token { command } => return token(ctx, command).await,
        AdminCommand::S3 { command: S3Command::Key { command } } => return s3_key(ctx, command).await,
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

/// A token as listings and `--json` show it.
#[derive(serde::Serialize)]
struct TokenJson {
    id: String,
    name: String,
    role: String,
    prefix: String,
    created: String,
    /// `None`: never.
    expires: Option<String>,
    expired: bool,
}

impl TokenJson {
    fn new(t: &proto::TokenInfo, now_unix_ms: u64) -> TokenJson {
        TokenJson {
            id: format!("{:016x}", t.id),
            name: t.name.clone(),
            role: t.role.clone(),
            prefix: t.prefix.clone(),
            created: utc_time(t.created_unix_ms),
            expires: t.expires_unix_ms.map(utc_time),
            expired: t.expires_unix_ms.is_some_and(|at| now_unix_ms >= at),
        }
    }
}

/// A token's or key's expiry as listings show it.
fn expires_shown(expires: &Option<String>, expired: bool) -> String {
    match (expires, expired) {
        (None, _) => "never".to_string(),
        (Some(at), false) => at.clone(),
        (Some(at), true) => format!("{at} (expired)"),
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

async fn token(ctx: &Ctx, command: TokenCommand) -> anyhow::Result<()> {
    let failed = |context: String| move |source| crate::transfer::explain(ClientError::Metadata { context, source });
    match command {
        TokenCommand::Create(args) => {
            dfs_core::tokens::check_name(&args.name).map_err(|e| usage(e.to_string()))?;
            let prefix = crate::cli::remote_path(&args.prefix)?;
            let ttl_ms = args.ttl.0.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0);
            let client = args.meta.meta_client()?;
            let request = proto::CreateTokenRequest { name: args.name.clone(), role: args.role.clone(), prefix, ttl_ms, s3: false };
            let reply = client.call(request).await.map_err(failed(format!("token create {}", args.name)))?;
            let info = TokenJson::new(&reply.info.unwrap_or_default(), now_unix_ms());
            if ctx.json {
                let mut value = serde_json::to_value(&info)?;
                value["token"] = reply.token.into();
                return emit_json(&value);
            }
            eprintln!(
                "token {} for {}: role {}, prefix {}, expires {}. It is shown only now: keep it secret, pass it as DFS_TOKEN or --token",
                info.id,
                info.name,
                info.role,
                info.prefix,
                info.expires.as_deref().unwrap_or("never")
            );
            emit(&format!("{}\n", reply.token))
        }
        TokenCommand::List(args) => {
            let reply = args.meta.meta_client()?.call(proto::ListTokensRequest {}).await.map_err(failed("token list".into()))?;
            let now = now_unix_ms();
            let tokens: Vec<TokenJson> = reply.tokens.iter().filter(|t| t.s3_access_key_id.is_empty()).map(|t| TokenJson::new(t, now)).collect();
            if ctx.json {
                return emit_json(&tokens);
            }
            let mut out = format!("{:<16}  {:<20}  {:<5}  {:<24}  {:<20}  {}\n", "ID", "NAME", "ROLE", "PREFIX", "CREATED", "EXPIRES");
            for t in &tokens {
                let expires = expires_shown(&t.expires, t.expired);
                let _ = writeln!(out, "{:<16}  {:<20}  {:<5}  {:<24}  {:<20}  {expires}", t.id, t.name, t.role, crate::cli::shown(&t.prefix), t.created);
            }
            if tokens.is_empty() {
                out.push_str("(no tokens: make one with `dfs admin token create --name NAME --role read|write|admin`)\n");
            }
            emit(&out)
        }
        TokenCommand::Revoke(args) => {
            let text = args.id.trim();
            let id = u64::from_str_radix(text, 16)
                .ok()
                .filter(|_| !text.is_empty() && text.len() <= 16)
                .ok_or_else(|| usage(format!("{:?} is not a token id: 16 hex digits, as `dfs admin token list` shows", args.id)))?;
            let reply = args.meta.meta_client()?.call(proto::RevokeTokenRequest { id }).await.map_err(failed(format!("token revoke {id:016x}")))?;
            let info = TokenJson::new(&reply.info.unwrap_or_default(), now_unix_ms());
            if ctx.json {
                return emit_json(&serde_json::json!({ "id": info.id, "name": info.name, "revoked": true }));
            }
            emit(&format!("revoked token {} ({}): it is refused from now on\n", info.id, info.name))
        }
    }
}

/// An S3 access key as listings and `--json` show it.
#[derive(serde::Serialize)]
struct S3KeyJson {
    access_key_id: String,
    name: String,
    role: String,
    prefix: String,
    created: String,
    /// `None`: never.
    expires: Option<String>,
    expired: bool,
}

impl S3KeyJson {
    fn new(t: &proto::TokenInfo, now_unix_ms: u64) -> S3KeyJson {
        S3KeyJson {
            access_key_id: t.s3_access_key_id.clone(),
            name: t.name.clone(),
            role: t.role.clone(),
            prefix: t.prefix.clone(),
            created: utc_time(t.created_unix_ms),
            expires: t.expires_unix_ms.map(utc_time),
            expired: t.expires_unix_ms.is_some_and(|at| now_unix_ms >= at),
        }
    }
}

async fn s3_key(ctx: &Ctx, command: S3KeyCommand) -> anyhow::Result<()> {
    let failed = |context: String| move |source| crate::transfer::explain(ClientError::Metadata { context, source });
    match command {
        S3KeyCommand::Create(args) => {
            dfs_core::tokens::check_name(&args.name).map_err(|e| usage(e.to_string()))?;
            let prefix = crate::cli::remote_path(&args.prefix)?;
            let ttl_ms = args.ttl.0.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0);
            let client = args.meta.meta_client()?;
            let request = proto::CreateTokenRequest { name: args.name.clone(), role: args.role.clone(), prefix, ttl_ms, s3: true };
            let reply = client.call(request).await.map_err(failed(format!("s3 key create {}", args.name)))?;
            let info = S3KeyJson::new(&reply.info.unwrap_or_default(), now_unix_ms());
            if info.access_key_id.is_empty() || reply.s3_secret_access_key.is_empty() {
                anyhow::bail!("the metadata leader made a bearer token, not an S3 key: it runs an earlier version; upgrade every metadata node first");
            }
            if ctx.json {
                let mut value = serde_json::to_value(&info)?;
                value["secret_access_key"] = reply.s3_secret_access_key.into();
                return emit_json(&value);
            }
            eprintln!(
                "S3 key for {}: role {}, prefix {}, expires {}. The secret is shown only now: keep it secret",
                info.name,
                info.role,
                info.prefix,
                info.expires.as_deref().unwrap_or("never")
            );
            emit(&format!("access_key_id     {}\nsecret_access_key {}\n", info.access_key_id, reply.s3_secret_access_key))
        }
        S3KeyCommand::List(args) => {
            let reply = args.meta.meta_client()?.call(proto::ListTokensRequest {}).await.map_err(failed("s3 key list".into()))?;
            let now = now_unix_ms();
            let keys: Vec<S3KeyJson> = reply.tokens.iter().filter(|t| !t.s3_access_key_id.is_empty()).map(|t| S3KeyJson::new(t, now)).collect();
            if ctx.json {
                return emit_json(&keys);
            }
            let mut out = format!("{:<20}  {:<20}  {:<5}  {:<24}  {:<20}  {}\n", "ACCESS KEY ID", "NAME", "ROLE", "PREFIX", "CREATED", "EXPIRES");
            for k in &keys {
                let expires = expires_shown(&k.expires, k.expired);
                let _ =
                    writeln!(out, "{:<20}  {:<20}  {:<5}  {:<24}  {:<20}  {expires}", k.access_key_id, k.name, k.role, crate::cli::shown(&k.prefix), k.created);
            }
            if keys.is_empty() {
                out.push_str("(no S3 keys: make one with `dfs admin s3 key create --name NAME --role read|write|admin`)\n");
            }
            emit(&out)
        }
        S3KeyCommand::Revoke(args) => {
            let id = dfs_core::tokens::parse_s3_access_key_id(args.id.trim())
                .ok_or_else(|| usage(format!("{:?} is not an S3 access key id: DFSK and 16 hex digits, as `dfs admin s3 key list` shows", args.id)))?;
            let client = args.meta.meta_client()?;
            let reply = client.call(proto::RevokeTokenRequest { id }).await.map_err(failed(format!("s3 key revoke {}", args.id.trim())))?;
            let info = S3KeyJson::new(&reply.info.unwrap_or_default(), now_unix_ms());
            if ctx.json {
                return emit_json(&serde_json::json!({ "access_key_id": args.id.trim(), "name": info.name, "revoked": true }));
            }
            emit(&format!("revoked S3 key {} ({})\n", args.id.trim(), info.name))
        }
    }
}
