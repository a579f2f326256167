//! Who may make which call: the rules every node applies to an incoming call once TLS has told
//! it who the caller is. Pure: the transport finds the caller's certificate and token, this
//! module decides.
//!
//! Two layers:
//! 1. **Certificate roles, for the cluster's own traffic** (`need`, `check`), applied to every
//!    call by the transport before it is decoded:
//!    - Raft traffic (`AppendEntries`, `Vote`, `InstallSnapshot`, `Campaign`) only from a
//!      metadata member's certificate: a process that merely reaches the port cannot vote,
//!      append entries or install a snapshot;
//!    - `RegisterStorage` and `Heartbeat` only with a storage certificate (a metadata member's
//!      too), so nothing else joins as a storage node and is sent data or repair orders;
//!    - replication between storage nodes (`ReplicateChunk`, `ReplicateChunks`) only with a
//!      storage certificate: it is how repair writes a copy, trusted as one the cluster placed.
//! 2. **Users, for everything a person or a tool asks of the metadata cluster** (`Principal`,
//!    `Want`, `permit`), applied by the metadata node to each decoded request (its `admit`):
//!    - a user proves who they are with a certificate of the cluster's CA (`admin` and `meta`
//!      may do everything, `client` read and write everywhere, `storage` read) or with a bearer
//!      token the cluster signed (`crate::tokens`), which names a grant (`read`, `write`,
//!      `admin`) and a path prefix; a token wins over the certificate it comes with, so a
//!      holder of both can act with less;
//!    - each request says what it needs (`Guard`): a grant over paths, over uploads (their
//!      paths looked up), or over the cluster (its state to read, its administration: membership,
//!      draining, forgetting, scrub orders, `fsck`, tokens);
//!    - a caller with neither certificate nor token is refused everything but a node's own
//!      status.
//!
//! Every certificate is first checked by TLS against the cluster's CA; a role is only ever
//! read from a certificate that passed. With TLS off (`--insecure`) nothing is checked: the
//! node says so when it starts.

use std::fmt;
use std::str::FromStr;

/// What a certificate says its holder is (`dfs cert issue --role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Meta,
    Storage,
    Client,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Meta, Role::Storage, Role::Client, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Meta => "meta",
            Role::Storage => "storage",
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }

    /// The URI subject alternative name a certificate of this role carries. A URI, not a
    /// hostname, so that TLS's name check can never mistake it for an address.
    pub fn san_uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }

    /// The role a URI subject alternative name stands for, if it is one of ours.
    pub fn from_san_uri(uri: &str) -> Option<Role> {
        uri.strip_prefix(ROLE_URI_PREFIX).and_then(|r| r.parse().ok())
    }
}

/// Prefix of the role URI in a certificate (`urn:dfs:role:storage`).
pub const ROLE_URI_PREFIX: &str = "urn:dfs:role:";

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (one of meta, storage, client, admin)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// Who is calling, as their certificate (already verified against the cluster CA) says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The certificate's common name (`dfs cert issue --name`).
    pub name: String,
    /// `None`: a certificate the cluster CA signed that names no role of ours.
    pub role: Option<Role>,
}

/// What a call needs of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Any caller past the TLS handshake.
    Anyone,
    /// A certificate of one of these roles.
    OneOf(&'static [Role]),
}

const RAFT: &[Role] = &[Role::Meta];
const STORAGE: &[Role] = &[Role::Storage, Role::Meta];
const REPLICATION: &[Role] = &[Role::Storage];

/// What the call at gRPC `path` (`/dfs.v1.Service/Method`) needs. An unknown path needs nothing
/// here: the server answers it `Unimplemented` anyway.
pub fn need(path: &str) -> Need {
    let Some((service, method)) = path.strip_prefix("/dfs.v1.").and_then(|p| p.split_once('/')) else {
        return Need::Anyone;
    };
    match (service, method) {
        ("RaftService", _) => Need::OneOf(RAFT),
        ("ReplicationService", _) | ("ChunkBatchService", "ReplicateChunks") => Need::OneOf(REPLICATION),
        ("MetadataService", "RegisterStorage" | "Heartbeat") => Need::OneOf(STORAGE),
        _ => Need::Anyone,
    }
}

/// A call refused: the caller's fault, said so that the one line tells them what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{call} needs a certificate of role {} signed by the cluster CA; the caller presented none", roles(.need))]
    NoCertificate { call: String, need: &'static [Role] },
    #[error("{call} needs a certificate of role {}; the caller's ({name}) names no dfs role", roles(.need))]
    NoRole { call: String, need: &'static [Role], name: String },
    #[error("{call} needs a certificate of role {}; the caller's ({name}) is of role {role}", roles(.need))]
    WrongRole { call: String, need: &'static [Role], name: String, role: Role },
}

fn roles(need: &[Role]) -> String {
    need.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" or ")
}

/// Whether `caller` (`None`: no certificate) may make the call at `path`.
pub fn check(path: &str, caller: Option<&Caller>) -> Result<(), Refusal> {
    let Need::OneOf(need) = self::need(path) else { return Ok(()) };
    if crate::planted::on(crate::planted::Bug::RolesUnchecked) {
        return Ok(());
    }
    let call = path.rsplit('/').next().unwrap_or(path).to_string();
    match caller {
        None => Err(Refusal::NoCertificate { call, need }),
        Some(Caller { name, role: None }) => Err(Refusal::NoRole { call, need, name: name.clone() }),
        Some(Caller { name, role: Some(role) }) if !need.contains(role) => Err(Refusal::WrongRole { call, need, name: name.clone(), role: *role }),
        Some(_) => Ok(()),
    }
}

// ---- Users: what a caller may do with files --------------------------------------------

/// What a user may do, each including the ones before: read files and the cluster's state;
/// also write (create, delete, rename, set attributes); also administer (membership, storage
/// nodes, `fsck`, tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    Read,
    Write,
    Admin,
}

impl Grant {
    pub const ALL: [Grant; 3] = [Grant::Read, Grant::Write, Grant::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Read => "read",
            Grant::Write => "write",
            Grant::Admin => "admin",
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A grant's name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (one of read, write, admin)")]
pub struct UnknownGrant(pub String);

impl FromStr for Grant {
    type Err = UnknownGrant;
    fn from_str(s: &str) -> Result<Grant, UnknownGrant> {
        Grant::ALL.into_iter().find(|g| g.as_str() == s).ok_or_else(|| UnknownGrant(crate::limits::echo(s)))
    }
}

/// Who a call comes from, as its transport knows: what a metadata node's `admit` weighs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// Whether this node checks callers at all: `false` on a node run with `--insecure`.
    pub checked: bool,
    /// The caller's certificate, verified against the cluster CA.
    pub cert: Option<Caller>,
    /// The bearer token the call carried (`authorization: Bearer ...`).
    pub token: Option<String>,
    /// Where the call came from, for the log of refusals.
    pub addr: Option<String>,
}

impl Peer {
    /// A caller on a node that checks nothing (`--insecure`, real or simulated).
    pub fn unchecked() -> Peer {
        Peer { checked: false, ..Peer::default() }
    }
}

/// How a user proved who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    Certificate(Role),
    Token { id: u64 },
}

/// A user, once proven: a name, a grant, and the subtree it reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub grant: Grant,
    /// Normalized; `/` reaches everything.
    pub prefix: String,
    pub proof: Proof,
}

impl Principal {
    /// What a certificate of the cluster's CA lets its holder do as a user: an admin's or a
    /// metadata member's everything; a client's read and write everywhere; a storage node's
    /// read (it reports bad replicas). `None`: a certificate naming no role of ours.
    pub fn of_certificate(caller: &Caller) -> Option<Principal> {
        let role = caller.role?;
        let grant = match role {
            Role::Admin | Role::Meta => Grant::Admin,
            Role::Client => Grant::Write,
            Role::Storage => Grant::Read,
        };
        Some(Principal { name: caller.name.clone(), grant, prefix: crate::namespace::ROOT.into(), proof: Proof::Certificate(role) })
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proof {
            Proof::Certificate(role) => write!(f, "certificate {:?} (role {role})", self.name),
            Proof::Token { id } => write!(f, "token {:016x} ({})", id, self.name),
        }
    }
}

/// What a metadata call asks of its caller (`Guard::want`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want<'a> {
    /// Nothing of a user: the certificate role check was all (`need`), or the answer is a
    /// node's own status.
    Open,
    /// A grant over the cluster as a whole: its state, or its administration.
    Cluster(Grant),
    /// A grant over each path: the file or directory, and what is under it.
    Paths(Vec<(Grant, &'a str)>),
    /// Write over each of these uploads (file ids): the server looks up their paths.
    Uploads(Vec<u64>),
}

/// A metadata request: what it asks of its caller. Implemented for every request of
/// `MetadataService` (`crate::meta::guard`), so a new call cannot be added without deciding.
pub trait Guard {
    fn want(&self) -> Want<'_>;
}

/// A user's call refused: the caller's fault, in one line naming what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{call} needs a user's credential: a client certificate (--cert/--key) or a token (--token, DFS_TOKEN); the caller presented neither")]
    Anonymous { call: String },
    #[error("{call}: the caller's certificate ({name}) names no dfs role")]
    NoRole { call: String, name: String },
    #[error("{call}: {0}", .reason)]
    Token { call: String, reason: crate::tokens::TokenError },
    #[error("{call} needs the {need} role; {who} has {has}")]
    Grant { call: String, need: Grant, who: String, has: Grant },
    #[error("{call}: {path} is outside {prefix}, the prefix of {who}")]
    Prefix { call: String, path: String, prefix: String, who: String },
}

/// Whether `p` may do what needs `grant` on `path` (normalized; `None`: the cluster as a
/// whole, which any prefix reaches).
pub fn permit(p: &Principal, call: &str, grant: Grant, path: Option<&str>) -> Result<(), Denied> {
    if p.grant < grant {
        return Err(Denied::Grant { call: call.into(), need: grant, who: p.to_string(), has: p.grant });
    }
    match path {
        Some(path) if !crate::namespace::is_at_or_under(path, &p.prefix) => {
            Err(Denied::Prefix { call: call.into(), path: path.into(), prefix: p.prefix.clone(), who: p.to_string() })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role) -> Caller {
        Caller { name: format!("{role}-1"), role: Some(role) }
    }

    #[test]
    fn roles_round_trip_through_names_and_uris() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(Role::from_san_uri(&role.san_uri()), Some(role));
        }
        assert!("root".parse::<Role>().is_err());
        assert_eq!(Role::from_san_uri("urn:dfs:role:root"), None);
        assert_eq!(Role::from_san_uri("meta"), None);
    }

    /// Each guarded call, with every role and with none: only the roles the module doc promises
    /// get through.
    #[test]
    fn each_guarded_call_admits_exactly_its_roles() {
        let cases: &[(&str, &[Role])] = &[
            ("/dfs.v1.RaftService/AppendEntries", &[Role::Meta]),
            ("/dfs.v1.RaftService/Vote", &[Role::Meta]),
            ("/dfs.v1.RaftService/InstallSnapshot", &[Role::Meta]),
            ("/dfs.v1.RaftService/Campaign", &[Role::Meta]),
            ("/dfs.v1.ReplicationService/ReplicateChunk", &[Role::Storage]),
            ("/dfs.v1.ChunkBatchService/ReplicateChunks", &[Role::Storage]),
            ("/dfs.v1.MetadataService/RegisterStorage", &[Role::Storage, Role::Meta]),
            ("/dfs.v1.MetadataService/Heartbeat", &[Role::Storage, Role::Meta]),
        ];
        for (path, admitted) in cases {
            assert!(matches!(check(path, None), Err(Refusal::NoCertificate { .. })), "{path}");
            let nameless = Caller { name: "x".into(), role: None };
            assert!(matches!(check(path, Some(&nameless)), Err(Refusal::NoRole { .. })), "{path}");
            for role in Role::ALL {
                assert_eq!(check(path, Some(&caller(role))).is_ok(), admitted.contains(&role), "{path} by {role}");
            }
        }
    }

    /// Calls a user makes pass the certificate layer whatever the certificate: the user layer
    /// (`permit`, with tokens) decides them, administration included.
    #[test]
    fn client_calls_are_open_to_any_caller() {
        for path in [
            "/dfs.v1.MetadataService/Fsck",
            "/dfs.v1.MetadataService/SetDraining",
            "/dfs.v1.MetadataService/AddMetaMember",
            "/dfs.v1.MetadataService/CreateToken",
            "/dfs.v1.MetadataService/CreateFile",
            "/dfs.v1.MetadataService/GetFile",
            "/dfs.v1.MetadataService/ReportBadReplica",
            "/dfs.v1.MetadataService/ClusterStatus",
            "/dfs.v1.StorageService/WriteChunk",
            "/dfs.v1.StorageService/ReadChunk",
            "/dfs.v1.ChunkBatchService/WriteChunks",
            "/dfs.v1.ChunkBatchService/ReadChunks",
            "/grpc.health.v1.Health/Check",
            "garbage",
        ] {
            assert_eq!(check(path, None), Ok(()), "{path}");
        }
    }

    #[test]
    fn a_refusal_names_the_call_the_need_and_the_caller() {
        let e = check("/dfs.v1.RaftService/Vote", Some(&caller(Role::Storage))).unwrap_err();
        assert_eq!(e.to_string(), "Vote needs a certificate of role meta; the caller's (storage-1) is of role storage");
        let e = check("/dfs.v1.MetadataService/Heartbeat", None).unwrap_err();
        assert_eq!(e.to_string(), "Heartbeat needs a certificate of role storage or meta signed by the cluster CA; the caller presented none");
    }

    fn principal(grant: Grant, prefix: &str) -> Principal {
        Principal { name: "alice".into(), grant, prefix: prefix.into(), proof: Proof::Token { id: 0xab } }
    }

    /// Each grant reaches what the ones below it do, and no more; a prefix reaches itself and
    /// what is under it, not a sibling sharing its first letters.
    #[test]
    fn permit_weighs_the_grant_and_the_prefix() {
        for has in Grant::ALL {
            for need in Grant::ALL {
                assert_eq!(permit(&principal(has, "/"), "X", need, Some("/a")).is_ok(), has >= need, "{has} for {need}");
            }
        }
        let p = principal(Grant::Write, "/home/alice");
        for ok in ["/home/alice", "/home/alice/x", "/home/alice/x/y"] {
            permit(&p, "CreateFile", Grant::Write, Some(ok)).unwrap();
        }
        for out in ["/", "/home", "/home/alicex", "/home/bob/x", "/.trash"] {
            let e = permit(&p, "CreateFile", Grant::Write, Some(out)).unwrap_err();
            assert_eq!(e.to_string(), format!("CreateFile: {out} is outside /home/alice, the prefix of token 00000000000000ab (alice)"));
        }
        // The cluster as a whole is no path: a prefix does not stop reading its state.
        permit(&p, "ClusterStatus", Grant::Read, None).unwrap();
        let e = permit(&principal(Grant::Read, "/"), "CreateFile", Grant::Write, Some("/a")).unwrap_err();
        assert_eq!(e.to_string(), "CreateFile needs the write role; token 00000000000000ab (alice) has read");
    }

    #[test]
    fn certificates_grant_by_role() {
        let grant = |role| Principal::of_certificate(&caller(role)).map(|p| (p.grant, p.prefix));
        assert_eq!(grant(Role::Admin), Some((Grant::Admin, "/".into())));
        assert_eq!(grant(Role::Meta), Some((Grant::Admin, "/".into())));
        assert_eq!(grant(Role::Client), Some((Grant::Write, "/".into())));
        assert_eq!(grant(Role::Storage), Some((Grant::Read, "/".into())));
        assert_eq!(Principal::of_certificate(&Caller { name: "x".into(), role: None }), None);
        for g in Grant::ALL {
            assert_eq!(g.as_str().parse::<Grant>(), Ok(g));
        }
        assert!("root".parse::<Grant>().is_err());
    }
}
