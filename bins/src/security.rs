//! TLS for the binary: the `--ca`/`--cert`/`--key`/`--insecure` flags of the nodes and of the
//! client, the credentials `cluster up` writes for the local user, the local PKI of a cluster
//! this binary starts itself (`cluster up`, the benches), and `dfs cert init|issue`.
//!
//! - A node (`dfs meta`, `dfs storage`) runs TLS with `--ca`, `--cert` and `--key` (a
//!   certificate of its own role), or plaintext with `--insecure`, which it says at start-up;
//!   with neither it refuses to start, so that no node is left open by a forgotten flag.
//! - A client uses TLS when it has a CA for the cluster: `--ca` (`DFS_CA`), else the
//!   credentials `cluster up` wrote for the cluster's addresses in the per-user config dir
//!   (`$DFS_CONFIG_DIR`, else `$XDG_CONFIG_HOME/dfs`, else `~/.config/dfs`); else plaintext.
//!   `--insecure` forces plaintext. There is no fallback from TLS to plaintext: a client with a
//!   CA never speaks plaintext.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use dfs_core::auth::Role;
use dfs_io_real::server::ServerSecurity;
use dfs_io_real::tls::{self, Credentials, TlsError};
use dfs_io_real::{GrpcTransport, RealEnv};

use crate::cli::{emit, emit_json, usage, Ctx};

/// The TLS flags of a node.
#[derive(Args, Clone, Debug, Default)]
pub struct NodeTlsArgs {
    /// The cluster CA's certificate (PEM): every peer's certificate must chain to it.
    #[arg(long, env = "DFS_CA")]
    pub ca: Option<PathBuf>,
    /// This node's certificate (PEM), of its role (`dfs cert issue --role meta|storage`).
    #[arg(long, env = "DFS_CERT")]
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "DFS_KEY")]
    pub key: Option<PathBuf>,
    /// Run without TLS: any process that reaches the port can make any call. For tests and
    /// trusted networks only.
    #[arg(long, env = "DFS_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
}

/// The TLS flags of a client command.
#[derive(Args, Clone, Debug, Default)]
pub struct ClientTlsArgs {
    /// The cluster CA's certificate (PEM). Default: the one `dfs cluster up` wrote for these
    /// addresses in the config dir ($DFS_CONFIG_DIR, else ~/.config/dfs), if any.
    #[arg(long, env = "DFS_CA")]
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) to present, with --key (`dfs cert issue --role client|admin`).
    #[arg(long, env = "DFS_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "DFS_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Talk to the cluster without TLS, whatever CA is known or given (a cluster run with
    /// --insecure).
    #[arg(long, env = "DFS_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
    /// A bearer token the cluster made (`dfs admin token create`): act as its user, with its
    /// role and path prefix. It wins over a certificate. Sent only over TLS.
    #[arg(long, env = "DFS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The transport every call of this process goes out on (its credentials), set once.
static TRANSPORT: OnceLock<GrpcTransport> = OnceLock::new();

/// The production environment with this process's credentials (plaintext if none were set).
pub fn env() -> RealEnv {
    RealEnv::with_transport(TRANSPORT.get_or_init(GrpcTransport::default).clone())
}

fn set_credentials(credentials: Option<&Credentials>) {
    set_transport(GrpcTransport::new(credentials));
}

fn set_transport(transport: GrpcTransport) {
    // The first setting wins: a process has one identity.
    let _ = TRANSPORT.set(transport);
}

/// Loads a node's credentials (checking the certificate is of `role`) and makes them the
/// process's; `None` with `--insecure`, said in the log (a warning).
pub fn node_credentials(args: &NodeTlsArgs, role: Role, what: &'static str) -> anyhow::Result<Option<Credentials>> {
    if args.insecure && (args.ca.is_some() || args.cert.is_some() || args.key.is_some()) {
        return Err(usage(format!("{what}: --insecure (DFS_INSECURE) and --ca/--cert/--key (DFS_CA, DFS_CERT, DFS_KEY) exclude each other: say which")));
    }
    if args.insecure {
        let line = format!("{what}: TLS is off (--insecure): any process that reaches this node's port can make any call");
        tracing::warn!("{line}");
        set_credentials(None);
        return Ok(None);
    }
    let (Some(ca), Some(cert), Some(key)) = (&args.ca, &args.cert, &args.key) else {
        return Err(usage(format!(
            "{what} needs --ca, --cert and --key (make them with `dfs cert init` and `dfs cert issue --role {role}`), or --insecure to run without TLS"
        )));
    };
    let credentials = Credentials::load(ca, Some(cert), Some(key)).map_err(tls_error)?;
    credentials.require_role(what, role).map_err(tls_error)?;
    tracing::info!(name = credentials.name().unwrap_or(""), %role, "TLS on: peers are checked against the cluster CA");
    set_credentials(Some(&credentials));
    Ok(Some(credentials))
}

/// How a node's server meets callers.
pub fn server_security(credentials: Option<&Credentials>, what: &'static str) -> anyhow::Result<ServerSecurity> {
    match credentials {
        None => Ok(ServerSecurity::Plaintext),
        Some(c) => {
            let config = c.server_config(what).map_err(tls_error)?;
            Ok(ServerSecurity::Tls { config, node: c.name().unwrap_or(what).into() })
        }
    }
}

/// A credential problem is the caller's to fix: exit 2 for what they typed, else 1.
fn tls_error(e: TlsError) -> anyhow::Error {
    match e {
        TlsError::HalfIdentity | TlsError::WrongOwnRole { .. } | TlsError::NoIdentity { .. } | TlsError::Request(_) => usage(e.to_string()),
        other => anyhow::Error::new(other),
    }
}

/// The per-user config dir: `$DFS_CONFIG_DIR`, else `$XDG_CONFIG_HOME/dfs`, else `~/.config/dfs`.
pub fn config_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("DFS_CONFIG_DIR").or_else(|| var("XDG_CONFIG_HOME").map(|d| d.join("dfs"))).or_else(|| var("HOME").map(|h| h.join(".config/dfs")))
}

/// Where `cluster up` keeps the credentials for the cluster with a metadata node at `addr`.
fn cluster_record(config: &Path, addr: &str) -> PathBuf {
    let name: String = addr.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    config.join("clusters").join(name)
}

/// The files of a cluster record.
const RECORD_CA: &str = "ca.pem";
const RECORD_CERT: &str = "cert.pem";
const RECORD_KEY: &str = "key.pem";

/// Resolves a client's credentials for the metadata nodes at `meta` (see the module doc) and
/// makes them the process's. Once they are set, later calls (a command that builds several
/// clients) read no file again: a process has one identity.
pub fn client_credentials(args: &ClientTlsArgs, meta: &[String]) -> anyhow::Result<()> {
    if TRANSPORT.get().is_some() {
        return Ok(());
    }
    if args.insecure {
        // A token over plaintext would be readable on the wire, and a node run with
        // --insecure checks none: it is not sent.
        set_credentials(None);
        return Ok(());
    }
    let Some((ca, cert, key)) = client_files(args, meta) else {
        if args.token.is_some() {
            return Err(usage(
                "a token is sent only over TLS, and no CA is known for this cluster: give its CA (--ca or DFS_CA), or --insecure for a cluster without TLS (which needs no token)",
            ));
        }
        set_credentials(None);
        return Ok(());
    };
    let credentials = Credentials::load(&ca, cert.as_deref(), key.as_deref()).map_err(tls_error)?;
    let mut transport = GrpcTransport::new(Some(&credentials));
    if let Some(token) = &args.token {
        transport = transport.with_token(token).map_err(|e| usage(e.to_string()))?;
    }
    set_transport(transport);
    Ok(())
}

/// The CA, certificate and key files a client of the metadata nodes at `meta` uses: those
/// given, else the record `cluster up` wrote for these addresses; `None` when no CA is known
/// (or with --insecure).
pub fn client_files(args: &ClientTlsArgs, meta: &[String]) -> Option<(PathBuf, Option<PathBuf>, Option<PathBuf>)> {
    if args.insecure {
        return None;
    }
    if let Some(ca) = &args.ca {
        return Some((ca.clone(), args.cert.clone(), args.key.clone()));
    }
    let record = config_dir().and_then(|config| meta.iter().map(|a| cluster_record(&config, a)).find(|r| r.join(RECORD_CA).is_file()))?;
    let (cert, key) = (record.join(RECORD_CERT), record.join(RECORD_KEY));
    let identity = cert.is_file() && key.is_file();
    let cert = args.cert.clone().or_else(|| identity.then_some(cert));
    let key = args.key.clone().or_else(|| identity.then_some(key));
    Some((record.join(RECORD_CA), cert, key))
}

/// The CA, certificates and keys of a cluster this binary runs itself (`cluster up`, the
/// benches), under `<data-dir>/tls`: made on first use, kept across restarts.
pub struct LocalPki {
    dir: PathBuf,
    ca_cert: String,
    ca_key: String,
}

/// Host names and addresses a local node's certificate is valid for.
const LOCAL_SANS: [&str; 3] = ["127.0.0.1", "localhost", "::1"];

impl LocalPki {
    pub fn open(data_dir: &Path) -> anyhow::Result<LocalPki> {
        let dir = data_dir.join("tls");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let (cert_path, key_path) = (dir.join(tls::CA_CERT_FILE), dir.join(tls::CA_KEY_FILE));
        if !cert_path.exists() {
            let (cert, key) = tls::make_ca("dfs local cluster CA", tls::CA_DAYS_DEFAULT)?;
            // The key first: a CA certificate without its key would be of no use.
            tls::write_new(&key_path, &key, true)?;
            tls::write_new(&cert_path, &cert, false)?;
        }
        let read = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
        Ok(LocalPki { ca_cert: read(&cert_path)?, ca_key: read(&key_path)?, dir })
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(tls::CA_CERT_FILE)
    }

    /// The certificate and key of `name` (made if missing) with `role`, valid on loopback.
    pub fn identity(&self, role: Role, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (cert_path, key_path) = (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}.key")));
        if !cert_path.exists() || !key_path.exists() {
            let sans: Vec<String> = LOCAL_SANS.iter().map(|s| s.to_string()).collect();
            let (cert, key) = tls::issue(&self.ca_cert, &self.ca_key, role, name, &sans, tls::CERT_DAYS_DEFAULT)?;
            let _ = std::fs::remove_file(&cert_path);
            let _ = std::fs::remove_file(&key_path);
            tls::write_new(&key_path, &key, true)?;
            tls::write_new(&cert_path, &cert, false)?;
        }
        Ok((cert_path, key_path))
    }

    /// The flags a node of `role` named `name` is started with.
    pub fn node_flags(&self, role: Role, name: &str) -> anyhow::Result<Vec<String>> {
        let (cert, key) = self.identity(role, name)?;
        Ok(vec!["--ca".into(), path_arg(&self.ca_path()), "--cert".into(), path_arg(&cert), "--key".into(), path_arg(&key)])
    }

    /// Writes the CA and an admin credential for the cluster at `meta` into the per-user config
    /// dir, so that client commands on this machine need no flags. Returns the record's place.
    pub fn write_client_record(&self, meta: &[String]) -> anyhow::Result<Option<PathBuf>> {
        let Some(config) = config_dir() else { return Ok(None) };
        let (cert, key) = self.identity(Role::Admin, "admin")?;
        let mut first = None;
        for addr in meta {
            let record = cluster_record(&config, addr);
            std::fs::create_dir_all(&record).with_context(|| format!("cannot create {}", record.display()))?;
            set_private(&config);
            for (from, to) in [(self.ca_path(), RECORD_CA), (cert.clone(), RECORD_CERT), (key.clone(), RECORD_KEY)] {
                let to = record.join(to);
                // Into a temporary name, then renamed: a client reading at that moment sees the
                // old file or the new one, never half of one.
                let tmp = record.join(format!(".{}.tmp", to.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
                std::fs::copy(&from, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
                std::fs::rename(&tmp, &to).with_context(|| format!("cannot write {}", to.display()))?;
            }
            first.get_or_insert(record);
        }
        Ok(first)
    }
}

/// TLS for a cluster this process starts and then calls itself (`cluster up`, the benches): its
/// PKI under `data_dir` (`None` with `insecure`), and this process's credentials for it (the
/// cluster's admin).
pub fn local_cluster(data_dir: &Path, insecure: bool, meta: &[String]) -> anyhow::Result<Option<LocalPki>> {
    if insecure {
        client_credentials(&ClientTlsArgs { insecure: true, ..ClientTlsArgs::default() }, meta)?;
        return Ok(None);
    }
    let pki = LocalPki::open(data_dir)?;
    let (cert, key) = pki.identity(Role::Admin, "admin")?;
    client_credentials(&ClientTlsArgs { ca: Some(pki.ca_path()), cert: Some(cert), key: Some(key), insecure: false, token: None }, meta)?;
    Ok(Some(pki))
}

/// The environment that gives a process of a local cluster (a node of `role` named `name`, or a
/// client) its TLS settings: by variables rather than flags, so that a build that predates TLS
/// (`dfs bench transfer --exe`) still starts, in plaintext.
pub fn local_env(pki: Option<&LocalPki>, role: Role, name: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let Some(pki) = pki else { return Ok(vec![("DFS_INSECURE", "1".into())]) };
    let (cert, key) = pki.identity(role, name)?;
    Ok(vec![("DFS_CA", path_arg(&pki.ca_path())), ("DFS_CERT", path_arg(&cert)), ("DFS_KEY", path_arg(&key))])
}

/// Removes what `cluster up` recorded for the cluster at `meta` (it now runs without TLS, and a
/// client would otherwise keep trying TLS there).
pub fn forget_client_record(meta: &[String]) {
    if let Some(config) = config_dir() {
        for addr in meta {
            let _ = std::fs::remove_dir_all(cluster_record(&config, addr));
        }
    }
}

fn set_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

#[derive(Subcommand)]
pub enum CertCommand {
    /// Make a cluster CA (ca.pem, and its key ca.key, readable by you only) in --dir.
    Init(CertInitArgs),
    /// Make a certificate for a node or a user, signed by the CA in --dir: NAME.pem and NAME.key.
    Issue(CertIssueArgs),
}

#[derive(Args)]
pub struct CertInitArgs {
    /// Directory for the CA (created if missing; an existing CA there is never overwritten).
    #[arg(long, env = "DFS_CERT_DIR", default_value = "./dfs-certs")]
    dir: PathBuf,
    /// Days the CA is valid.
    #[arg(long, default_value_t = tls::CA_DAYS_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=36500))]
    days: u32,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CertRole {
    Meta,
    Storage,
    Client,
    Admin,
}

impl From<CertRole> for Role {
    fn from(r: CertRole) -> Role {
        match r {
            CertRole::Meta => Role::Meta,
            CertRole::Storage => Role::Storage,
            CertRole::Client => Role::Client,
            CertRole::Admin => Role::Admin,
        }
    }
}

#[derive(Args)]
pub struct CertIssueArgs {
    /// What the holder is: a metadata node, a storage node, a user, or an administrator.
    #[arg(long, value_enum)]
    role: CertRole,
    /// The holder's name (the certificate's common name; also the files' name).
    #[arg(long)]
    name: String,
    /// Host names and IP addresses the holder serves on (nodes: every address others dial).
    #[arg(long, num_args = 1..)]
    san: Vec<String>,
    /// Directory of the CA (`dfs cert init --dir`).
    #[arg(long, env = "DFS_CERT_DIR", default_value = "./dfs-certs")]
    dir: PathBuf,
    /// Directory for NAME.pem and NAME.key (default: --dir).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = tls::CERT_DAYS_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=36500))]
    days: u32,
}

pub fn run_cert(ctx: &Ctx, command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::Init(args) => {
            std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
            let (cert_path, key_path) = (args.dir.join(tls::CA_CERT_FILE), args.dir.join(tls::CA_KEY_FILE));
            for p in [&cert_path, &key_path] {
                if p.exists() {
                    return Err(usage(format!("{} already exists: a cluster CA is never overwritten (use another --dir)", p.display())));
                }
            }
            let (cert, key) = tls::make_ca("dfs cluster CA", args.days)?;
            tls::write_new(&key_path, &key, true)?;
            tls::write_new(&cert_path, &cert, false)?;
            if ctx.json {
                emit_json(&serde_json::json!({ "ca": cert_path, "key": key_path }))
            } else {
                emit(&format!("cluster CA: {} (its key {}, readable by you only: keep it off the nodes)\n", cert_path.display(), key_path.display()))
            }
        }
        CertCommand::Issue(args) => {
            if args.name.is_empty() || !args.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
                return Err(usage(format!("--name {:?}: letters, digits and - _ . @ only", args.name)));
            }
            let role = Role::from(args.role);
            if matches!(role, Role::Meta | Role::Storage) && args.san.is_empty() {
                return Err(usage(format!("a {role} node's certificate needs --san with the host names or addresses others reach it at")));
            }
            let read = |name: &str| {
                let p = args.dir.join(name);
                std::fs::read_to_string(&p)
                    .with_context(|| format!("cannot read {} (make the CA with `dfs cert init --dir {}`)", p.display(), args.dir.display()))
            };
            let (ca_cert, ca_key) = (read(tls::CA_CERT_FILE)?, read(tls::CA_KEY_FILE)?);
            let (cert, key) = tls::issue(&ca_cert, &ca_key, role, &args.name, &args.san, args.days).map_err(tls_error)?;
            let out = args.out.unwrap_or(args.dir);
            std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
            let (cert_path, key_path) = (out.join(format!("{}.pem", args.name)), out.join(format!("{}.key", args.name)));
            if cert_path.exists() {
                return Err(usage(format!("{} already exists (remove it first to issue a new one)", cert_path.display())));
            }
            tls::write_new(&key_path, &key, true)?;
            tls::write_new(&cert_path, &cert, false)?;
            if ctx.json {
                emit_json(&serde_json::json!({ "role": role.as_str(), "name": args.name, "cert": cert_path, "key": key_path, "san": args.san }))
            } else {
                emit(&format!("{role} certificate for {}: {} (key {})\n", args.name, cert_path.display(), key_path.display()))
            }
        }
    }
}
