//! Who may make which call: the rule every node applies to an incoming call once TLS has told it
//! who the caller is. Pure: the transport finds the caller's certificate and reads its role
//! (`dfs-io-real`'s `tls`), this module decides.
//!
//! ## What it promises
//! - Raft traffic (`AppendEntries`, `Vote`, `InstallSnapshot`, `Campaign`) is accepted only from
//!   a metadata member's certificate: a process that merely reaches the port cannot vote, append
//!   entries or install a snapshot.
//! - A storage node registers and heartbeats only with a storage certificate (a metadata
//!   member's is accepted too), so nothing else can join the cluster as a storage node and be
//!   sent data or repair orders.
//! - Replication between storage nodes (`ReplicateChunk`, `ReplicateChunks`) needs a storage
//!   certificate: it is how repair writes a copy, and a copy written that way is trusted as one
//!   the cluster placed.
//! - Cluster administration (membership, draining, forgetting a node, scrub orders, `fsck`)
//!   needs an admin certificate (or a metadata member's, which adds itself with `--join`).
//! - Every other call (a client's file operations, chunk reads and writes) is open to any caller
//!   that completed the TLS handshake, with a certificate or without one: users' tokens and chunk
//!   access tokens are the checks for those.
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
const ADMIN: &[Role] = &[Role::Admin, Role::Meta];

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
        ("MetadataService", "AddMetaMember" | "RemoveMetaMember" | "SetDraining" | "ForgetStorageNode" | "ScrubStorageNode" | "Fsck") => Need::OneOf(ADMIN),
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
    let call = path.rsplit('/').next().unwrap_or(path).to_string();
    match caller {
        None => Err(Refusal::NoCertificate { call, need }),
        Some(Caller { name, role: None }) => Err(Refusal::NoRole { call, need, name: name.clone() }),
        Some(Caller { name, role: Some(role) }) if !need.contains(role) => Err(Refusal::WrongRole { call, need, name: name.clone(), role: *role }),
        Some(_) => Ok(()),
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
            ("/dfs.v1.MetadataService/AddMetaMember", &[Role::Admin, Role::Meta]),
            ("/dfs.v1.MetadataService/RemoveMetaMember", &[Role::Admin, Role::Meta]),
            ("/dfs.v1.MetadataService/SetDraining", &[Role::Admin, Role::Meta]),
            ("/dfs.v1.MetadataService/ForgetStorageNode", &[Role::Admin, Role::Meta]),
            ("/dfs.v1.MetadataService/ScrubStorageNode", &[Role::Admin, Role::Meta]),
            ("/dfs.v1.MetadataService/Fsck", &[Role::Admin, Role::Meta]),
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

    #[test]
    fn client_calls_are_open_to_any_caller() {
        for path in [
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
}
