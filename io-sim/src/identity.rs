//! TLS in the simulation: who a simulated host is, and what its servers accept.
//!
//! The simulation does not encrypt or sign anything: madsim's network carries values, and no
//! simulated host can read another's traffic. What it keeps of TLS is what decides who gets
//! in, with the same outcomes as production:
//! - a host holds a cluster CA (or none: plaintext, `--insecure`), maybe a certificate (a
//!   name, maybe a dfs role, and the CA that issued it), and maybe a user's bearer token;
//! - each call carries the caller's credentials to the server, as the TLS handshake and the
//!   `authorization` header do;
//! - a server with a CA refuses the handshake of a caller that speaks plaintext, trusts another
//!   CA, or presents a certificate its CA did not issue: the connection is dropped, as rustls
//!   drops it, and the caller sees a transport error;
//! - past the handshake, the call goes through the same rules as production's `AuthLayer`:
//!   `dfs_core::auth::check` for the cluster's own traffic (Raft, storage registration,
//!   replication), and the metadata node's `admit` for user calls, given the caller's
//!   certificate and token as a `Peer`.
//!
//! A server without a CA accepts everyone and checks nothing (`Peer::unchecked`), as
//! `--insecure` nodes do.

use dfs_core::auth::{self, Caller, Peer, Role};

/// A certificate as the simulation models it: what it names and which CA issued it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimCert {
    pub caller: Caller,
    /// The issuing CA (`SimCredentials::ca` of the cluster that trusts it).
    pub issuer: u64,
}

/// What a simulated host presents and trusts: the configuration directory of a real one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimCredentials {
    /// The cluster CA this host trusts (servers it calls must be of it; callers it serves must
    /// present certificates of it). `None`: plaintext, checking nothing.
    pub ca: Option<u64>,
    pub cert: Option<SimCert>,
    /// A user's bearer token, sent with metadata calls (`--token`, `DFS_TOKEN`).
    pub token: Option<String>,
}

impl SimCredentials {
    /// Plaintext: presents nothing, checks nothing (`--insecure`).
    pub fn insecure() -> Self {
        SimCredentials::default()
    }

    /// Trusts cluster CA `ca` and presents no certificate: a client with only the CA.
    pub fn tls(ca: u64) -> Self {
        SimCredentials { ca: Some(ca), ..SimCredentials::default() }
    }

    /// The same host with a certificate of `role` named `name`, issued by `issuer`.
    pub fn with_cert(mut self, role: Role, name: &str, issuer: u64) -> Self {
        self.cert = Some(SimCert { caller: Caller { name: name.to_string(), role: Some(role) }, issuer });
        self
    }

    /// The same host holding a user's token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
}

/// Why a server would not take a call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The TLS handshake fails: the server drops the connection.
    #[error("TLS handshake refused: {0}")]
    Handshake(&'static str),
    /// Past the handshake, the certificate's role does not allow the call.
    #[error(transparent)]
    Role(#[from] auth::Refusal),
}

/// What a server holding `server` makes of a call at `path` from a caller holding `from`
/// (at `addr`): the `Peer` its handler weighs, or why it is refused.
pub fn admit(server: &SimCredentials, from: &SimCredentials, path: &str, addr: Option<String>) -> Result<Peer, Refused> {
    let Some(ca) = server.ca else {
        // A plaintext server cannot complete a caller's TLS handshake.
        return match from.ca {
            Some(_) => Err(Refused::Handshake("the caller speaks TLS to a plaintext server")),
            None => Ok(Peer::unchecked()),
        };
    };
    match from.ca {
        None => return Err(Refused::Handshake("the caller speaks plaintext to a TLS server")),
        Some(theirs) if theirs != ca => return Err(Refused::Handshake("the caller does not trust the server's CA")),
        Some(_) => {}
    }
    let caller = match &from.cert {
        Some(cert) if cert.issuer != ca => return Err(Refused::Handshake("the caller's certificate is not signed by the cluster CA")),
        Some(cert) => Some(cert.caller.clone()),
        None => None,
    };
    auth::check(path, caller.as_ref())?;
    Ok(Peer { checked: true, cert: caller, token: from.token.clone(), addr })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAFT: &str = "/dfs.v1.RaftService/Vote";
    const USER: &str = "/dfs.v1.MetadataService/GetFile";

    #[test]
    fn a_tls_server_admits_its_cas_certificates_by_role_and_refuses_the_rest() {
        let server = SimCredentials::tls(1).with_cert(Role::Meta, "meta-1", 1);
        let meta = SimCredentials::tls(1).with_cert(Role::Meta, "meta-2", 1);
        let peer = admit(&server, &meta, RAFT, None).unwrap();
        assert!(peer.checked);
        assert_eq!(peer.cert.unwrap().role, Some(Role::Meta));

        let client = SimCredentials::tls(1).with_cert(Role::Client, "alice", 1);
        assert!(matches!(admit(&server, &client, RAFT, None), Err(Refused::Role(auth::Refusal::WrongRole { .. }))));
        let bare = SimCredentials::tls(1);
        assert!(matches!(admit(&server, &bare, RAFT, None), Err(Refused::Role(auth::Refusal::NoCertificate { .. }))));
        // A user call passes the handshake with nothing but the CA; `admit` on the metadata
        // node weighs it, with the token it carried.
        let peer = admit(&server, &bare.clone().with_token("dfs1_x"), USER, Some("10.0.2.1:1".into())).unwrap();
        assert_eq!((peer.checked, peer.cert, peer.token.as_deref()), (true, None, Some("dfs1_x")));

        let forged = SimCredentials::tls(1).with_cert(Role::Meta, "meta-9", 2);
        assert!(matches!(admit(&server, &forged, USER, None), Err(Refused::Handshake(_))));
        assert!(matches!(admit(&server, &SimCredentials::tls(2), USER, None), Err(Refused::Handshake(_))));
        assert!(matches!(admit(&server, &SimCredentials::insecure(), USER, None), Err(Refused::Handshake(_))));
    }

    #[test]
    fn a_plaintext_server_checks_nothing_but_cannot_speak_tls() {
        let server = SimCredentials::insecure();
        assert_eq!(admit(&server, &SimCredentials::insecure(), RAFT, None).unwrap(), Peer::unchecked());
        assert!(matches!(admit(&server, &SimCredentials::tls(1), RAFT, None), Err(Refused::Handshake(_))));
    }
}
