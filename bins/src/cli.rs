//! What every client command shares: the global flags, the exit-code rule, checks of remote
//! paths, safe printing of names, writing to stdout, and the per-user spool directory.
//!
//! Exit codes: 0 success; 2 a usage error, i.e. a command that could not succeed as typed,
//! whatever the cluster's state (clap's parse errors, a value out of range, a malformed remote
//! path, a local source that is missing or not a file, a local destination in the way without
//! `--force`, or the metadata cluster refusing the request as an invalid argument); 1 any
//! other failure (not found or already exists remotely, cluster unreachable, too few storage
//! nodes, a transfer that failed, some files of a recursive copy failed).

use std::fmt;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use dfs_core::client::{ClientConfig, ClientError, DfsClient, MetaClient, RetryPolicy};
use dfs_core::namespace::{normalize_path, NAME_MAX_BYTES, PATH_MAX_BYTES};
use dfs_core::rpc::RpcError;
use dfs_io_real::RealEnv;

use crate::daemons::parse_addrs;

/// The flags every command takes (clap `global`), whatever their position.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctx {
    /// Print one JSON object on stdout instead of text.
    pub json: bool,
    /// No progress bars.
    pub quiet: bool,
}

impl Ctx {
    /// Progress bars only on a terminal (they are drawn on stderr), and never with `--quiet`.
    pub fn progress(&self) -> bool {
        !self.quiet && std::io::stderr().is_terminal()
    }
}

/// A caller's mistake, found after clap's parsing: exit code 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(message.into()))
}

/// The exit code for an error (see the module doc).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<Usage>() {
            return 2;
        }
        let rpc = cause.downcast_ref::<ClientError>().and_then(ClientError::rpc).or_else(|| cause.downcast_ref::<RpcError>());
        if matches!(rpc, Some(RpcError::InvalidArgument(_))) {
            return 2;
        }
    }
    1
}

/// `name` as it may be shown on a terminal: control characters escaped (`\n`, `\u{1b}`), so a
/// hostile name can neither break the one-line rule nor send escape sequences to the terminal.
pub fn shown(name: &str) -> String {
    if !name.chars().any(char::is_control) {
        return name.to_string();
    }
    name.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// Checks a remote path typed by the user and returns its canonical form. Stricter than the
/// namespace's own normalization: an empty component (`/a//b`) is refused rather than
/// collapsed, since it is most likely a mistake (an empty shell variable), as are control
/// characters. One trailing `/` is allowed. A relative path is taken from the root.
pub fn remote_path(path: &str) -> anyhow::Result<String> {
    let bad = |reason: &str| usage(format!("{:?}: invalid remote path: {reason}", shown(path)));
    if path.is_empty() {
        return Err(bad("empty"));
    }
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if path.chars().any(char::is_control) {
        return Err(bad("contains a control character"));
    }
    if path.len() > PATH_MAX_BYTES {
        return Err(bad(&format!("longer than {PATH_MAX_BYTES} bytes")));
    }
    let body = path.strip_prefix('/').unwrap_or(path);
    let body = body.strip_suffix('/').unwrap_or(body);
    if !body.is_empty() {
        for component in body.split('/') {
            if component.is_empty() {
                return Err(bad("empty path component ('//')"));
            }
            if component == "." || component == ".." {
                return Err(bad("'.' and '..' are not allowed"));
            }
            if component.len() > NAME_MAX_BYTES {
                return Err(bad(&format!("a component is longer than {NAME_MAX_BYTES} bytes")));
            }
        }
    }
    normalize_path(path).map_err(|e| usage(shown(&e.to_string())))
}

/// "1 chunk", "2 chunks": a count with its noun, plural when it is not one.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else if let Some(stem) = noun.strip_suffix('y').filter(|s| !s.ends_with(['a', 'e', 'o', 'u'])) {
        format!("{n} {stem}ies")
    } else {
        format!("{n} {noun}s")
    }
}

/// Who runs this command, for the trash (`/.trash/<user>/`): `$DFS_USER`, else `$USER`, else
/// `$LOGNAME`, else the name of this process's user id, else `uid-N`.
pub fn user_name() -> String {
    for var in ["DFS_USER", "USER", "LOGNAME"] {
        if let Some(v) = std::env::var(var).ok().filter(|v| !v.is_empty() && dfs_core::namespace::check_user(v).is_ok()) {
            return v;
        }
    }
    // SAFETY: getuid cannot fail; getpwuid_r writes only into the buffers given.
    unsafe {
        let uid = libc::getuid();
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut result = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) == 0 && !result.is_null() && !pwd.pw_name.is_null() {
            if let Ok(name) = std::ffi::CStr::from_ptr(pwd.pw_name).to_str() {
                if dfs_core::namespace::check_user(name).is_ok() {
                    return name.to_string();
                }
            }
        }
        format!("uid-{uid}")
    }
}

/// `parent/name` for canonical `parent`.
pub fn join_remote(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// The flags that say where the cluster is and how long to wait for it.
#[derive(clap::Args, Clone)]
pub struct MetaFlag {
    /// Metadata nodes: HOST:PORT,... (any of them; the client finds the leader).
    #[arg(long, env = "DFS_META", default_value = crate::DEFAULT_META)]
    pub meta: String,
    /// Give up on the metadata cluster after this long (e.g. 10s, 2m): an unreachable cluster
    /// fails the command within about this time, naming the addresses tried.
    #[arg(long, env = "DFS_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Send chunks of at most 256 KiB to and from storage nodes many to a call (true), or
    /// each as its own stream (false: for comparison and diagnosis).
    #[arg(long, env = "DFS_CHUNK_BATCHES", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub chunk_batches: bool,
    #[command(flatten)]
    pub tls: crate::security::ClientTlsArgs,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(d)
}

impl MetaFlag {
    pub fn addrs(&self) -> anyhow::Result<Vec<String>> {
        parse_addrs(&self.meta, "--meta").map_err(|e| usage(format!("{e:#}")))
    }

    /// The metadata retry policy for a command: the default (20 s) rides out long elections,
    /// but a person at a terminal pointed at a cluster that is not there should hear so in
    /// seconds. One attempt at one node never outlasts the whole deadline.
    pub fn policy(&self) -> RetryPolicy {
        let default = RetryPolicy::default();
        RetryPolicy { deadline: self.timeout, attempt_timeout: default.attempt_timeout.min(self.timeout), ..default }
    }

    pub fn client(&self, mut config: ClientConfig) -> anyhow::Result<DfsClient<RealEnv>> {
        config.metadata = self.policy();
        config.small_chunk_batches = self.chunk_batches;
        if config.user.is_empty() {
            config.user = user_name();
        }
        Ok(DfsClient::new(self.env()?, self.addrs()?, config))
    }

    /// The environment calls go out on, with this command's credentials (`crate::security`).
    pub fn env(&self) -> anyhow::Result<RealEnv> {
        crate::security::client_credentials(&self.tls, &self.addrs()?)?;
        Ok(crate::security::env())
    }

    /// A bare metadata client, for paged calls the library does not offer (yet).
    pub fn meta_client(&self) -> anyhow::Result<MetaClient<RealEnv>> {
        Ok(MetaClient::new(self.env()?, self.addrs()?, self.policy()))
    }
}

/// Writes `text` to stdout. A reader that went away (`dfs ls | head`) is not an error: the
/// command's work is done and nobody is left to read the rest.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::Error::new(e).context("writing to stdout")),
        _ => Ok(()),
    }
}

/// One JSON object on one line of stdout.
pub fn emit_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut line = serde_json::to_string(value)?;
    line.push('\n');
    emit(&line)
}

/// Lowercase hex, or `None` for an empty digest (the file was stored without one).
pub fn hex(bytes: &[u8]) -> Option<String> {
    (!bytes.is_empty()).then(|| bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A per-user directory for spool files (stdin for `put -`), created
/// private (0700): `$XDG_CACHE_HOME/dfs`, else `~/.cache/dfs`, else `<tmp>/dfs-<uid>`.
pub fn spool_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let from_env = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    let dir = match (from_env("XDG_CACHE_HOME"), from_env("HOME")) {
        (Some(cache), _) => cache.join("dfs"),
        (None, Some(home)) => home.join(".cache").join("dfs"),
        // SAFETY: getuid has no preconditions and cannot fail.
        (None, None) => std::env::temp_dir().join(format!("dfs-{}", unsafe { libc::getuid() })),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create the spool directory {}: {e}", dir.display()))?;
    let meta = std::fs::metadata(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        // Spooled bytes are the user's data: keep other users out even of a directory that
        // existed before with looser permissions.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    }
    Ok(dir)
}

/// The per-user state directory for resume manifests: `$DFS_STATE_DIR`, else
/// `$XDG_STATE_HOME/dfs`, else `~/.local/state/dfs`; `None` if none can be named (uploads then
/// do not resume).
pub fn state_dir() -> Option<PathBuf> {
    let from_env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    from_env("DFS_STATE_DIR").or_else(|| from_env("XDG_STATE_HOME").map(|d| d.join("dfs"))).or_else(|| from_env("HOME").map(|h| h.join(".local/state/dfs")))
}

/// A new, empty spool file, removed when dropped (on success and on every error path).
pub fn spool_file(what: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    let dir = spool_dir()?;
    tempfile::Builder::new()
        .prefix(&format!("{what}-"))
        .suffix(".spool")
        .tempfile_in(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create a spool file in {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_are_checked_strictly() {
        assert_eq!(remote_path("/a/b").unwrap(), "/a/b");
        assert_eq!(remote_path("/a/b/").unwrap(), "/a/b");
        assert_eq!(remote_path("a/b").unwrap(), "/a/b");
        assert_eq!(remote_path("/").unwrap(), "/");
        let long_name = format!("/{}", "x".repeat(NAME_MAX_BYTES + 1));
        let long_path = "/abc".repeat(PATH_MAX_BYTES / 4 + 1);
        for bad in ["", "/a//b", "//a", "/a/../b", "/./a", "/a\0b", "/a\nb", "/a\u{1b}[31m", &long_name, &long_path] {
            let e = remote_path(bad).unwrap_err();
            assert_eq!(exit_code(&e), 2, "{bad:?}");
            let text = format!("{e:#}");
            assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text:?}");
        }
    }

    #[test]
    fn exit_codes_tell_usage_from_failure() {
        assert_eq!(exit_code(&usage("x").context("y")), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("x")), 1);
        let invalid = ClientError::Metadata { context: "put".into(), source: RpcError::InvalidArgument("bad".into()) };
        assert_eq!(exit_code(&anyhow::Error::new(invalid)), 2);
        let missing = ClientError::Metadata { context: "get".into(), source: RpcError::NotFound("gone".into()) };
        assert_eq!(exit_code(&anyhow::Error::new(missing)), 1);
    }

    #[test]
    fn each_cause_is_said_once() {
        let local = ClientError::Local { path: "/x/y".into(), source: std::io::Error::from_raw_os_error(13) };
        let text = format!("{:#}", anyhow::Error::new(local).context("get /r"));
        assert_eq!(text.matches("os error 13").count(), 1, "{text}");
        assert!(text.starts_with("get /r: /x/y: "), "{text}");
        let meta = ClientError::Metadata { context: "cat /r".into(), source: RpcError::NotFound("/r: no such file".into()) };
        let text = format!("{:#}", anyhow::Error::new(meta));
        assert_eq!(text, "cat /r: /r: no such file");
    }

    #[test]
    fn counts_take_the_right_plural() {
        assert_eq!(plural(1, "chunk"), "1 chunk");
        assert_eq!(plural(0, "chunk"), "0 chunks");
        assert_eq!(plural(2, "directory"), "2 directories");
        assert_eq!(plural(1, "directory"), "1 directory");
        assert_eq!(plural(3, "item"), "3 items");
    }

    #[test]
    fn names_are_shown_without_control_characters() {
        assert_eq!(shown("/plain"), "/plain");
        assert_eq!(shown("/a\nb\u{1b}"), "/a\\nb\\u{1b}");
    }
}
