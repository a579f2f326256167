//! TLS between every dfs process: rustls with the `ring` provider, through tonic.
//!
//! - **Certificates.** `make_ca` makes a cluster CA; `issue` signs a node's or a user's
//!   certificate with it, naming its role as a URI subject alternative name
//!   (`urn:dfs:role:storage`, see `dfs_core::auth::Role`) beside the host names and addresses
//!   it serves on. `dfs cert init` and `dfs cert issue` are these two functions.
//! - **Credentials.** A process loads the CA (every peer is checked against it) and, for nodes
//!   and for users who have one, its own certificate and key (`Credentials::load`). A node
//!   refuses to start with a certificate of another role than its own.
//! - **Servers** use TLS with client certificates optional (`server_config`): a client may come
//!   without one, but a certificate presented must chain to the CA. `AuthLayer` then checks
//!   each call's caller against `dfs_core::auth` and refuses, logging the peer, what its role
//!   does not allow.
//! - **Calls out** (`GrpcTransport`) use `client_config`: the server's certificate must chain to
//!   the CA and name the address dialled; the process's own certificate is presented.
//!
//! Why these crates: `rcgen` is the rustls project's certificate generator (pure Rust on
//! `ring`, which rustls already links); `x509-parser` reads the role out of a peer's
//! certificate after rustls has verified it, which rustls itself does not expose.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use dfs_core::auth::{self, Caller, Peer, Role};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Default lifetime of a certificate `issue` makes, and of the CA.
pub const CERT_DAYS_DEFAULT: u32 = 825;
pub const CA_DAYS_DEFAULT: u32 = 3650;

/// The files `dfs cert init` writes in its directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{} already exists; remove it first, or use another directory", path.display())]
    Exists { path: PathBuf },
    #[error("{} holds no PEM certificate: {detail}", path.display())]
    BadCertificate { path: PathBuf, detail: String },
    #[error("{} holds no usable private key: {detail}", path.display())]
    BadKey { path: PathBuf, detail: String },
    #[error("a certificate and its key go together: give both --cert and --key, or neither")]
    HalfIdentity,
    #[error("{what} needs a certificate and key (--cert, --key) to serve TLS")]
    NoIdentity { what: &'static str },
    #[error("{what} needs a certificate of role {need}; {} is of role {}", path.display(), got.map(|r| r.as_str()).unwrap_or("none"))]
    WrongOwnRole { what: &'static str, need: Role, path: PathBuf, got: Option<Role> },
    #[error("{} is not signed by the CA in {}: {detail}", cert.display(), ca.display())]
    NotSignedByCa { cert: PathBuf, ca: PathBuf, detail: String },
    #[error("bad certificate request: {0}")]
    Request(String),
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

/// The first certificate of a PEM file, as DER.
fn first_cert_der(pem: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let bad = |detail: String| TlsError::BadCertificate { path: path.to_path_buf(), detail };
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    if pem.label != "CERTIFICATE" {
        return Err(bad(format!("its first block is a {}", pem.label)));
    }
    Ok(pem.contents)
}

/// Who a certificate (DER) names: its common name and its dfs role, if any.
pub fn caller_of(der: &[u8]) -> Result<Caller, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or("").to_string();
    let role = match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => Role::from_san_uri(uri),
            _ => None,
        }),
        _ => None,
    };
    Ok(Caller { name, role })
}

/// A process's TLS credentials: the cluster CA, and its own certificate and key if it has one.
#[derive(Clone)]
pub struct Credentials {
    ca_pem: String,
    identity: Option<(String, String)>,
    own: Option<Caller>,
    cert_path: Option<PathBuf>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("own", &self.own).field("cert", &self.cert_path).finish_non_exhaustive()
    }
}

impl Credentials {
    /// Loads the CA at `ca` and, if given, the certificate and key at `cert` and `key`, checking
    /// that the certificate is one the CA signed (a node with a certificate of another cluster
    /// would otherwise start and then fail every call).
    pub fn load(ca: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<Credentials, TlsError> {
        let ca_pem = read(ca)?;
        let ca_der = first_cert_der(&ca_pem, ca)?;
        let (identity, own, cert_path) = match (cert, key) {
            (None, None) => (None, None, None),
            (Some(cert), Some(key)) => {
                let cert_pem = read(cert)?;
                let key_pem = read(key)?;
                KeyPair::from_pem(&key_pem).map_err(|e| TlsError::BadKey { path: key.to_path_buf(), detail: e.to_string() })?;
                let der = first_cert_der(&cert_pem, cert)?;
                verify_signed_by(&der, &ca_der).map_err(|detail| TlsError::NotSignedByCa { cert: cert.to_path_buf(), ca: ca.to_path_buf(), detail })?;
                let own = caller_of(&der).map_err(|detail| TlsError::BadCertificate { path: cert.to_path_buf(), detail })?;
                (Some((cert_pem, key_pem)), Some(own), Some(cert.to_path_buf()))
            }
            _ => return Err(TlsError::HalfIdentity),
        };
        Ok(Credentials { ca_pem, identity, own, cert_path })
    }

    /// The role of this process's own certificate (`None` without one, or if it names none).
    pub fn role(&self) -> Option<Role> {
        self.own.as_ref().and_then(|c| c.role)
    }

    /// The name on this process's own certificate.
    pub fn name(&self) -> Option<&str> {
        self.own.as_ref().map(|c| c.name.as_str())
    }

    /// Refuses to serve as `what` (a node of role `need`) with another role's certificate.
    pub fn require_role(&self, what: &'static str, need: Role) -> Result<(), TlsError> {
        let Some(path) = self.cert_path.clone() else { return Err(TlsError::NoIdentity { what }) };
        if self.role() != Some(need) {
            return Err(TlsError::WrongOwnRole { what, need, path, got: self.role() });
        }
        Ok(())
    }

    /// For calls out: the CA to check servers against, and this process's certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }

    /// For a server: its certificate, and the CA that a client's certificate (optional) must
    /// chain to.
    pub fn server_config(&self, what: &'static str) -> Result<ServerTlsConfig, TlsError> {
        let Some((cert, key)) = &self.identity else { return Err(TlsError::NoIdentity { what }) };
        Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)).client_ca_root(Certificate::from_pem(&self.ca_pem)).client_auth_optional(true))
    }
}

/// Whether `cert` (DER) carries a valid signature by `ca` (DER)'s key and names it as issuer.
fn verify_signed_by(cert: &[u8], ca: &[u8]) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    let (_, ca) = x509_parser::parse_x509_certificate(ca).map_err(|e| e.to_string())?;
    if cert.issuer() != ca.subject() {
        return Err(format!("it was issued by {:?}, the CA is {:?}", cert.issuer().to_string(), ca.subject().to_string()));
    }
    cert.verify_signature(Some(ca.public_key())).map_err(|e| format!("its signature does not verify ({e})"))
}

/// A new cluster CA: its certificate and key, as PEM.
pub fn make_ca(name: &str, days: u32) -> Result<(String, String), TlsError> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(DnType::OrganizationName, "dfs");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back: a peer whose clock is a little behind still accepts a certificate just made.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// A certificate of `role` for `name`, serving on `sans` (host names or IP addresses), signed
/// by the CA (`ca_cert_pem`, `ca_key_pem`): its certificate and key, as PEM.
pub fn issue(ca_cert_pem: &str, ca_key_pem: &str, role: Role, name: &str, sans: &[String], days: u32) -> Result<(String, String), TlsError> {
    if name.is_empty() || name.len() > 64 {
        return Err(TlsError::Request(format!("a name of 1 to 64 bytes, not {} bytes", name.len())));
    }
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| TlsError::Request(format!("the CA key: {e}")))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(|e| TlsError::Request(format!("the CA certificate: {e}")))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(DnType::OrganizationName, "dfs");
    params.distinguished_name.push(DnType::OrganizationalUnitName, role.as_str());
    for san in sans {
        let entry = match san.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) if is_host_name(san) => SanType::DnsName(san.as_str().try_into().map_err(|_| TlsError::Request(format!("{san:?} is not a host name")))?),
            Err(_) => return Err(TlsError::Request(format!("--san {san:?} is neither a host name nor an IP address"))),
        };
        params.subject_alt_names.push(entry);
    }
    let uri = role.san_uri().try_into().map_err(|_| TlsError::Request("role URI".into()))?;
    params.subject_alt_names.push(SanType::URI(uri));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every process both serves and calls (storage nodes call each other and metadata).
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A DNS host name (RFC 1123): dot-separated labels of 1 to 63 letters, digits and hyphens, not
/// starting or ending with a hyphen, 253 bytes at most. What a TLS client can match an address
/// it dials against; anything else in a certificate would only ever fail that check.
fn is_host_name(name: &str) -> bool {
    let label =
        |l: &str| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-') && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label)
}

/// Writes `contents` to `path`, which must not exist yet; `private` files are readable by their
/// owner only (0600).
pub fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true).mode(if private { 0o600 } else { 0o644 });
    let mut file = options.open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => TlsError::Exists { path: path.to_path_buf() },
        _ => TlsError::Write { path: path.to_path_buf(), source },
    })?;
    file.write_all(contents.as_bytes()).and_then(|()| file.sync_all()).map_err(|source| TlsError::Write { path: path.to_path_buf(), source })
}

/// Checks each call against `dfs_core::auth` with the caller's certificate, when the server runs
/// TLS (`node`, the server's name for its logs, is `Some`; `None` passes every call, for a
/// plaintext server). A refusal is answered `PermissionDenied` with the reason, and logged with
/// the peer's address and certificate name.
#[derive(Clone)]
pub struct AuthLayer {
    pub node: Option<Arc<str>>,
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner, node: self.node.clone() }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    node: Option<Arc<str>>,
}

impl<S, B> tower_service::Service<http::Request<B>> for Auth<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<futures::future::Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(node) = &self.node else {
            request.extensions_mut().insert(Peer::unchecked());
            return futures::future::Either::Right(self.inner.call(request));
        };
        let path = request.uri().path();
        let guarded = auth::need(path) != auth::Need::Anyone;
        let user_call = path.starts_with(USER_SERVICE);
        if !guarded && !user_call {
            return futures::future::Either::Right(self.inner.call(request));
        }
        let info = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
        let addr = info.and_then(|i| i.get_ref().remote_addr());
        let leaf = info.and_then(|i| i.peer_certs()).and_then(|certs| certs.first().map(|c| caller_of(c.as_ref())));
        let caller = match leaf {
            Some(Ok(caller)) => Some(caller),
            // rustls accepted it, so it parses; if it did not, it names no role.
            Some(Err(_)) => Some(Caller { name: "(unreadable certificate)".into(), role: None }),
            None => None,
        };
        if let Err(refusal) = auth::check(path, caller.as_ref()) {
            tracing::warn!(node = %node, peer = ?addr, caller = caller.as_ref().map(|c| c.name.as_str()).unwrap_or("(no certificate)"), "refused: {refusal}");
            return futures::future::Either::Left(futures::future::ready(Ok(tonic::Status::permission_denied(refusal.to_string()).into_http())));
        }
        if user_call {
            let token = request.headers().get(http::header::AUTHORIZATION).map(|v| bearer(v.as_bytes()));
            request.extensions_mut().insert(Peer { checked: true, cert: caller, token, addr: addr.map(|a| a.to_string()) });
        }
        futures::future::Either::Right(self.inner.call(request))
    }
}

/// The service whose calls are weighed as a user's (`dfs_core::auth`, the metadata node's
/// `admit`): its calls get the caller's `Peer`.
const USER_SERVICE: &str = "/dfs.v1.MetadataService/";

/// The token in an `authorization` header's value: what follows `Bearer `, else the whole
/// value (which then fails as malformed, saying what a token looks like).
fn bearer(value: &[u8]) -> String {
    let value = String::from_utf8_lossy(value);
    match value.strip_prefix("Bearer ") {
        Some(token) => token.trim().to_string(),
        None => value.into_owned(),
    }
}

/// The caller of a metadata call, as `AuthLayer` found it. A request that did not pass the
/// layer is taken as from a checked node's caller with nothing to show: refused, not waved
/// through.
pub fn peer_of<T>(request: &tonic::Request<T>) -> Peer {
    request.extensions().get::<Peer>().cloned().unwrap_or(Peer { checked: true, ..Peer::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_their_role_and_chain_to_their_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = make_ca("test CA", 30).unwrap();
        let (other_ca, other_key) = make_ca("another CA", 30).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca).unwrap();
        std::fs::write(dir.path().join("other.pem"), &other_ca).unwrap();
        for role in Role::ALL {
            let (cert, key) = issue(&ca, &ca_key, role, &format!("{role}-1"), &["127.0.0.1".into(), "localhost".into()], 30).unwrap();
            let cert_path = dir.path().join(format!("{role}.pem"));
            let key_path = dir.path().join(format!("{role}.key"));
            std::fs::write(&cert_path, &cert).unwrap();
            std::fs::write(&key_path, &key).unwrap();
            let creds = Credentials::load(&dir.path().join("ca.pem"), Some(&cert_path), Some(&key_path)).unwrap();
            assert_eq!(creds.role(), Some(role));
            assert_eq!(creds.name(), Some(format!("{role}-1").as_str()));
            creds.require_role("a node", role).unwrap();
            let other = Role::ALL.into_iter().find(|r| *r != role).unwrap();
            assert!(matches!(creds.require_role("a node", other), Err(TlsError::WrongOwnRole { .. })));
            // Another cluster's CA did not sign it.
            let e = Credentials::load(&dir.path().join("other.pem"), Some(&cert_path), Some(&key_path)).unwrap_err();
            assert!(matches!(e, TlsError::NotSignedByCa { .. }), "{e}");
        }
        let (forged, _) = issue(&other_ca, &other_key, Role::Meta, "meta-9", &[], 30).unwrap();
        let der = first_cert_der(&forged, Path::new("forged")).unwrap();
        let ca_der = first_cert_der(&ca, Path::new("ca")).unwrap();
        assert!(verify_signed_by(&der, &ca_der).is_err());
    }

    #[test]
    fn bad_files_and_requests_are_refused_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        assert!(matches!(Credentials::load(&junk, None, None), Err(TlsError::BadCertificate { .. })));
        assert!(matches!(Credentials::load(&dir.path().join("absent.pem"), None, None), Err(TlsError::Read { .. })));
        let (ca, ca_key) = make_ca("test CA", 30).unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &ca).unwrap();
        assert!(matches!(Credentials::load(&ca_path, Some(&ca_path), None), Err(TlsError::HalfIdentity)));
        assert!(matches!(issue(&ca, &ca_key, Role::Client, "", &[], 30), Err(TlsError::Request(_))));
        for bad in ["bad name!", "", "a..b", "-a.b", "a_b.c"] {
            assert!(matches!(issue(&ca, &ca_key, Role::Client, "x", &[bad.into()], 30), Err(TlsError::Request(_))), "{bad:?}");
        }
        for good in ["meta1", "node-1.example.com", "127.0.0.1", "::1"] {
            issue(&ca, &ca_key, Role::Meta, "x", &[good.into()], 30).unwrap();
        }
        write_new(&dir.path().join("once"), "x", true).unwrap();
        assert!(matches!(write_new(&dir.path().join("once"), "y", true), Err(TlsError::Exists { .. })));
    }
}
