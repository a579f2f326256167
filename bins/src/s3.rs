//! `dfs s3`: an S3-compatible gateway, so that S3 tools (aws-cli, boto3, rclone, `object_store`)
//! work against dfs with nothing to install.
//!
//! `s3s` parses each request into a typed input, checks its AWS Signature V4 (headers,
//! presigned URLs, `aws-chunked` bodies) against the secret `Keys` fetches from the cluster,
//! and writes answers and errors as S3 documents. What each operation asks of the cluster is
//! decided in `dfs_core::s3` (names, listings, conditions); this module carries it out with the
//! dfs client, streaming bytes both ways in bounded memory: a put is read from the request as
//! the upload machine asks for each chunk, a get fetches a few chunks ahead of the response.
//!
//! Access: every request must be signed by a key `dfs admin s3 key create` made. The key's
//! role and prefix are checked here (`auth::permit`, as the metadata nodes check tokens), and
//! the gateway acts on the cluster with its own credentials, which must be an admin's: it
//! reads keys' secrets, which only admins may.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use clap::Args;
use dfs_core::auth::{self, Grant, Principal};
use dfs_core::client::stream_source::{DigestKind, Expected, StreamSource};
use dfs_core::client::{ClientConfig, ClientError, DfsClient, MetaClient, NoProgress};
use dfs_core::proto;
use dfs_core::rpc::RpcError;
use dfs_core::s3::{self as rules, EtagTest, ListParams, Listing, NameError, ObjectPath, Verdict};
use dfs_io_real::RealEnv;
use futures::StreamExt;
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};

use crate::cli::MetaFlag;

/// What the gateway keeps of the object a request (PutObject, CreateMultipartUpload,
/// CopyObject with REPLACE) describes: `object_meta_of` its content type, standard headers
/// and user metadata, which each of those inputs carries under the same names.
macro_rules! object_meta {
    ($i:expr) => {
        object_meta_of(
            &$i.content_type,
            [
                ("cache-control", &$i.cache_control),
                ("content-disposition", &$i.content_disposition),
                ("content-encoding", &$i.content_encoding),
                ("content-language", &$i.content_language),
            ],
            &$i.metadata,
        )
    };
}

mod multipart;

#[derive(Args)]
pub struct S3Args {
    /// Where to serve S3, HOST:PORT (clients' endpoint: https://HOST:PORT, or http:// when
    /// the cluster runs without TLS).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    /// Serve HTTPS with this certificate (PEM; its chain after it), with --tls-key. Default:
    /// where the cluster runs TLS, the gateway's own certificate, which the cluster CA signed
    /// (clients trust that CA: AWS_CA_BUNDLE=ca.pem); plain HTTP for a cluster without TLS.
    #[arg(long, env = "DFS_S3_TLS_CERT", requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "DFS_S3_TLS_KEY", requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP even though the cluster runs TLS (behind a proxy that terminates TLS,
    /// or on a loopback only the gateway's users reach).
    #[arg(long, conflicts_with = "tls_cert")]
    plain_http: bool,
    #[command(flatten)]
    meta: MetaFlag,
}

/// How long a request's body may go without a byte before the request fails (S3's
/// RequestTimeout, which it applies after about 20 s): a client that stalls, or whose HTTP/2
/// stream is never reset when its connection goes, cannot hold an upload open.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a client may take over its TLS handshake before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a key's secret and grant are trusted after the cluster said so: a revoked key is
/// refused at most this long after `dfs admin s3 key revoke`.
const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// Keys remembered at once; past it the memory is cleared (and refilled on demand).
const KEY_CACHE_MAX: usize = 4096;
/// Keys one DeleteObjects may name (S3's limit).
const DELETE_OBJECTS_MAX: usize = 1000;
/// Chunks a get fetches ahead of what the response has sent: memory per get is at most this
/// many chunks (plus one being sent), throughput that of this many reads in flight.
const GET_READ_AHEAD: usize = 3;

pub async fn run(args: S3Args) -> anyhow::Result<()> {
    let addr: SocketAddr = args.listen.parse().map_err(|e| crate::cli::usage(format!("--listen {:?}: {e}", args.listen)))?;
    // The certificate clients see: the one given, else the gateway's own from the cluster CA.
    let https = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ if args.plain_http => None,
        _ => match crate::security::client_files(&args.meta.tls, &args.meta.addrs()?) {
            Some((_, Some(cert), Some(key))) => Some((cert, key)),
            _ => None,
        },
    };
    let acceptor = https.as_ref().map(|(cert, key)| tls_acceptor(cert, key)).transpose()?;
    let client = Arc::new(args.meta.client(ClientConfig::default())?);
    let meta = args.meta.meta_client()?;
    let keys = Arc::new(Keys { meta: meta.clone(), cache: Mutex::new(HashMap::new()) });
    let gateway = Gateway { client, meta, keys: keys.clone() };
    let mut builder = S3ServiceBuilder::new(gateway);
    builder.set_auth(Auth(keys));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    tracing::info!(addr = %listener.local_addr()?, scheme, "S3 gateway serving");
    match &https {
        Some((cert, _)) => eprintln!("dfs s3: serving S3 on https://{} (certificate {})", listener.local_addr()?, cert.display()),
        None => eprintln!("dfs s3: serving S3 on http://{} (plain HTTP: keep it on loopback or behind TLS)", listener.local_addr()?),
    }
    let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: the world's, and it passes.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let service = service.clone();
        let http = http.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let served = match acceptor {
                None => http.serve_connection(hyper_util::rt::TokioIo::new(socket), service).await,
                Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                    Ok(Ok(tls)) => http.serve_connection(hyper_util::rt::TokioIo::new(tls), service).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "S3 connection ended");
            }
        });
    }
}

/// The TLS side of HTTPS: the certificate chain and key at `cert` and `key`, HTTP/2 or 1.1.
fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| crate::cli::usage(format!("{what} {}: {e}", path.display()));
    let chain = CertificateDer::pem_file_iter(cert).and_then(|certs| certs.collect::<Result<Vec<_>, _>>()).map_err(|e| bad("--tls-cert", cert, &e))?;
    if chain.is_empty() {
        return Err(bad("--tls-cert", cert, &"no certificate in it"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("--tls-key", key, &e))?;
    // The process's provider: ring, the one rustls is built with here (as tonic's TLS is).
    let mut config =
        rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(chain, private).map_err(|e| bad("--tls-cert and --tls-key", cert, &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// S3 keys' secrets and grants, from the cluster, remembered briefly.
struct Keys {
    meta: MetaClient<RealEnv>,
    cache: Mutex<HashMap<String, (Instant, Principal, String)>>,
}

impl Keys {
    async fn lookup(&self, access_key: &str) -> S3Result<(Principal, String)> {
        if let Some((at, p, secret)) = self.cache.lock().expect("key cache lock").get(access_key) {
            if at.elapsed() < KEY_CACHE_TTL {
                return Ok((p.clone(), secret.clone()));
            }
        }
        if dfs_core::tokens::parse_s3_access_key_id(access_key).is_none() {
            return Err(s3_error!(InvalidAccessKeyId, "not an access key dfs made"));
        }
        let reply = match self.meta.call(proto::GetS3KeyRequest { access_key_id: access_key.to_string() }).await {
            Ok(reply) => reply,
            Err(RpcError::NotFound(m)) => return Err(s3_error!(InvalidAccessKeyId, "{m}")),
            Err(RpcError::PermissionDenied(m)) => {
                return Err(s3_error!(InternalError, "the gateway's credentials may not read S3 keys (it needs an admin's): {m}"));
            }
            Err(e) => return Err(s3_error!(ServiceUnavailable, "the metadata cluster: {e}")),
        };
        let info = reply.info.unwrap_or_default();
        let grant: Grant = info.role.parse().map_err(|_| s3_error!(InternalError, "key {access_key} has an unknown role {:?}", info.role))?;
        let principal = Principal { name: info.name, grant, prefix: info.prefix, proof: auth::Proof::Token { id: info.id } };
        let mut cache = self.cache.lock().expect("key cache lock");
        if cache.len() >= KEY_CACHE_MAX {
            cache.clear();
        }
        cache.insert(access_key.to_string(), (Instant::now(), principal.clone(), reply.secret_access_key.clone()));
        Ok((principal, reply.secret_access_key))
    }
}

struct Auth(Arc<Keys>);

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        Ok(SecretKey::from(self.0.lookup(access_key).await?.1))
    }
}

struct Gateway {
    client: Arc<DfsClient<RealEnv>>,
    meta: MetaClient<RealEnv>,
    keys: Arc<Keys>,
}

/// The S3 error for a name dfs cannot hold.
fn name_error(e: NameError) -> S3Error {
    match e {
        NameError::InvalidBucketName(_) => s3_error!(InvalidBucketName, "{e}"),
        NameError::KeyTooLong { .. } => s3_error!(KeyTooLongError, "{e}"),
        NameError::InvalidKey { .. } => s3_error!(InvalidArgument, "{e}"),
    }
}

/// The S3 error for a failed cluster call; `not_found` is what a missing path means here.
fn cluster_error(e: ClientError, not_found: S3ErrorCode) -> S3Error {
    let message = e.to_string();
    let code = match &e {
        ClientError::Metadata { source, .. } => match source {
            RpcError::NotFound(_) => not_found,
            RpcError::PermissionDenied(_) => S3ErrorCode::AccessDenied,
            RpcError::InvalidArgument(_) => S3ErrorCode::InvalidArgument,
            RpcError::AlreadyExists(_) | RpcError::FailedPrecondition(_) => S3ErrorCode::InvalidRequest,
            // The world's: clients retry a 503.
            _ => S3ErrorCode::ServiceUnavailable,
        },
        ClientError::Invalid(_) => S3ErrorCode::InvalidArgument,
        _ => S3ErrorCode::InternalError,
    };
    S3Error::with_message(code, message)
}

fn timestamp(unix_ms: u64) -> Timestamp {
    Timestamp::from(SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms))
}

fn unix_s(t: Timestamp) -> i64 {
    time::OffsetDateTime::from(t).unix_timestamp()
}

/// The ETag S3 clients see: the gateway's record, or for a file written otherwise (`dfs put`)
/// one made from its SHA-256, marked `-1` so that no client takes it for the bytes' MD5.
fn etag_of(info: &proto::FileInfo) -> String {
    match &info.object {
        Some(o) if !o.etag.is_empty() => o.etag.clone(),
        _ if info.sha256.len() == 32 => format!("{}-1", hex(&info.sha256[..16])),
        _ => format!("{:016x}-1", info.file_id),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Percent-encodes a key for `encoding-type=url` listings: all but unreserved bytes and `/`.
fn url_encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn etag_test(c: &ETagCondition) -> EtagTest {
    match c {
        ETagCondition::Any => EtagTest::Any,
        ETagCondition::ETag(e) => EtagTest::Etag(e.value().to_string()),
    }
}

/// What a HEAD and a GET answer about an object, besides its bytes.
struct Head {
    info: proto::FileInfo,
    etag: String,
}

impl Gateway {
    /// Who signed the request, with what the cluster granted their key.
    async fn principal<T>(&self, req: &S3Request<T>) -> S3Result<Principal> {
        let credentials = req.credentials.as_ref().ok_or_else(|| s3_error!(AccessDenied, "requests must be signed"))?;
        Ok(self.keys.lookup(&credentials.access_key).await?.0)
    }

    async fn allow<T>(&self, req: &S3Request<T>, call: &str, grant: Grant, path: &str) -> S3Result<()> {
        let p = self.principal(req).await?;
        auth::permit(&p, call, grant, Some(path)).map_err(|e| s3_error!(AccessDenied, "{e}"))
    }

    /// Fails with NoSuchBucket unless the bucket's directory exists.
    async fn bucket_exists(&self, bucket_dir: &str) -> S3Result<()> {
        match self.client.entry(bucket_dir).await.map_err(|e| cluster_error(e, S3ErrorCode::NoSuchBucket))? {
            Some(e) if e.kind == proto::EntryKind::Directory as i32 => Ok(()),
            _ => Err(s3_error!(NoSuchBucket, "no bucket {}", &bucket_dir[1..])),
        }
    }

    /// The object at `path` (a file), or NoSuchKey (NoSuchBucket when its bucket is missing).
    async fn head(&self, bucket_dir: &str, path: &ObjectPath) -> S3Result<Head> {
        let info = match path {
            ObjectPath::File(path) => match self.client.stat(path).await {
                Ok(reply) => reply.file.unwrap_or_default(),
                Err(e) => {
                    let e = cluster_error(e, S3ErrorCode::NoSuchKey);
                    if *e.code() == S3ErrorCode::NoSuchKey {
                        self.bucket_exists(bucket_dir).await?;
                    }
                    return Err(e);
                }
            },
            // A directory marker reads as an empty object while its directory exists.
            ObjectPath::Dir(dir) => match self.client.entry(dir).await.map_err(|e| cluster_error(e, S3ErrorCode::NoSuchKey))? {
                Some(e) if e.kind == proto::EntryKind::Directory as i32 => {
                    proto::FileInfo { path: dir.clone(), committed_unix_ms: e.modified_unix_ms, ..Default::default() }
                }
                _ => return Err(s3_error!(NoSuchKey)),
            },
        };
        let etag = match path {
            ObjectPath::Dir(_) => EMPTY_ETAG.to_string(),
            ObjectPath::File(_) => etag_of(&info),
        };
        Ok(Head { info, etag })
    }
}

/// A read's conditional headers (GetObject, HeadObject), or a copy's on its source.
fn conditions(
    if_match: &Option<ETagCondition>,
    if_none_match: &Option<ETagCondition>,
    modified: &Option<Timestamp>,
    unmodified: &Option<Timestamp>,
) -> rules::Conditions {
    rules::Conditions {
        if_match: if_match.as_ref().map(etag_test),
        if_none_match: if_none_match.as_ref().map(etag_test),
        if_modified_since_s: modified.clone().map(unix_s),
        if_unmodified_since_s: unmodified.clone().map(unix_s),
    }
}

fn check_conditions(c: &rules::Conditions, head: &Head) -> S3Result<()> {
    match rules::evaluate(c, &head.etag, (head.info.committed_unix_ms / 1000) as i64) {
        Verdict::Proceed => Ok(()),
        Verdict::NotModified => {
            // A 304 carries the ETag (RFC 9110 15.4.5): clients compare it with what they hold.
            let mut e = S3Error::new(S3ErrorCode::NotModified);
            let mut headers = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&format!("\"{}\"", head.etag)) {
                headers.insert(http::header::ETAG, v);
            }
            e.set_headers(headers);
            Err(e)
        }
        Verdict::PreconditionFailed => Err(s3_error!(PreconditionFailed)),
    }
}

fn metadata_of(o: &Option<proto::ObjectMeta>) -> Option<Metadata> {
    o.as_ref().filter(|o| !o.user.is_empty()).map(|o| o.user.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn header(o: &Option<proto::ObjectMeta>, name: &str) -> Option<String> {
    o.as_ref().and_then(|o| o.headers.get(name).cloned())
}

fn checksum_sha256(info: &proto::FileInfo, mode: &Option<ChecksumMode>, whole: bool) -> Option<String> {
    let enabled = mode.as_ref().is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
    (enabled && whole && info.sha256.len() == 32).then(|| base64::engine::general_purpose::STANDARD.encode(&info.sha256))
}

/// A request's body as the upload reads it, failing once it goes `BODY_IDLE_TIMEOUT` without
/// a byte.
fn body_stream(body: Option<StreamingBlob>) -> futures::stream::BoxStream<'static, io::Result<Bytes>> {
    let Some(body) = body else { return futures::stream::empty().boxed() };
    futures::stream::unfold(Some(body), |body| async move {
        let mut body = body?;
        match tokio::time::timeout(BODY_IDLE_TIMEOUT, body.next()).await {
            Ok(Some(piece)) => Some((piece.map_err(io::Error::other), Some(body))),
            Ok(None) => None,
            Err(_) => {
                let e = io::Error::new(io::ErrorKind::TimedOut, format!("no byte of the body for {} s", BODY_IDLE_TIMEOUT.as_secs()));
                Some((Err(e), None))
            }
        }
    })
    .boxed()
}

/// The MD5 of no bytes: an empty object's ETag (and a directory marker's).
const EMPTY_ETAG: &str = "d41d8cd98f00b204e9800998ecf8427e";

/// A request body's length: its Content-Length, or what its framing says.
fn body_size(content_length: Option<i64>, body: &Option<StreamingBlob>) -> S3Result<u64> {
    match (content_length, body.as_ref().and_then(|b| s3s::stream::ByteStream::remaining_length(b).exact())) {
        (Some(n), _) if n >= 0 => Ok(n as u64),
        (_, Some(n)) => Ok(n as u64),
        _ => Err(s3_error!(MissingContentLength)),
    }
}

/// The digests a body was sent with (`Content-MD5`, `x-amz-checksum-sha256`), decoded.
fn expected(content_md5: &Option<String>, checksum_sha256: &Option<String>) -> S3Result<Expected> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let md5 = match content_md5 {
        Some(m) => Some(b64.decode(m).ok().and_then(|d| <[u8; 16]>::try_from(d).ok()).ok_or_else(|| s3_error!(InvalidDigest))?),
        None => None,
    };
    let sha256 = match checksum_sha256 {
        Some(s) => Some(
            b64.decode(s)
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| s3_error!(InvalidArgument, "x-amz-checksum-sha256 is not 32 bytes in base64"))?,
        ),
        None => None,
    };
    Ok(Expected { md5, sha256 })
}

/// What the gateway keeps of an object a request describes, checked against its bounds
/// before any byte moves (not at the commit after all of them).
fn object_meta_of(content_type: &Option<ContentType>, headers: [(&str, &Option<String>); 4], metadata: &Option<Metadata>) -> S3Result<proto::ObjectMeta> {
    let object = proto::ObjectMeta {
        etag: String::new(),
        content_type: content_type.as_ref().map(|c| c.to_string()),
        headers: headers.into_iter().filter_map(|(name, v)| Some((name.to_string(), v.clone()?))).collect(),
        user: metadata.clone().unwrap_or_default().into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect(),
    };
    dfs_core::meta::service::object_meta(object.clone()).validate().map_err(|e| s3_error!(MetadataTooLarge, "{e}"))?;
    Ok(object)
}

#[async_trait::async_trait]
impl S3 for Gateway {
    async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let p = self.principal(&req).await?;
        let entries = self.client.list_dir("/", false).await.map_err(|e| cluster_error(e, S3ErrorCode::InternalError))?;
        let buckets = entries
            .into_iter()
            .filter(|e| e.kind == proto::EntryKind::Directory as i32 && rules::bucket_path(&e.name).is_ok())
            // A key reaching only part of the cluster sees the buckets it reaches into.
            .filter(|e| reaches(&p.prefix, &e.path))
            .map(|e| Bucket { name: Some(e.name), creation_date: Some(timestamp(e.modified_unix_ms)), bucket_region: None })
            .collect();
        Ok(S3Response::new(ListBucketsOutput { buckets: Some(buckets), ..Default::default() }))
    }

    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        let dir = rules::bucket_path(&req.input.bucket).map_err(name_error)?;
        self.allow(&req, "CreateBucket", Grant::Admin, &dir).await?;
        match self.client.mkdir(&dir, false).await {
            Ok(()) => Ok(S3Response::new(CreateBucketOutput { location: Some(dir) })),
            Err(ClientError::Metadata { source: RpcError::AlreadyExists(_), .. }) => Err(s3_error!(BucketAlreadyOwnedByYou)),
            Err(e) => Err(cluster_error(e, S3ErrorCode::InternalError)),
        }
    }

    async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
        let dir = rules::bucket_path(&req.input.bucket).map_err(name_error)?;
        self.allow(&req, "DeleteBucket", Grant::Admin, &dir).await?;
        self.bucket_exists(&dir).await?;
        // Empty to S3 means no object: directories left by deleted keys (`a/b/c` leaves `a/b`)
        // are no objects, and go with the bucket.
        let request = proto::ListFilesRequest { prefix: dir.clone(), start_after: String::new(), limit: 1 };
        let any = self
            .meta
            .call(request)
            .await
            .map_err(|e| cluster_error(ClientError::Metadata { context: "DeleteBucket".into(), source: e }, S3ErrorCode::NoSuchBucket))?;
        if let Some(f) = any.files.first() {
            return Err(s3_error!(BucketNotEmpty, "the bucket holds objects ({} among them)", f.path));
        }
        match self.client.delete_now(&dir, true).await {
            Ok(_) => {
                // Its uploads in progress go with it: a bucket made again under the name starts
                // with none.
                let uploads = dfs_core::s3::multipart::bucket_uploads_dir(&req.input.bucket);
                match self.client.delete_now(&uploads, true).await {
                    Ok(_) | Err(ClientError::Metadata { source: RpcError::NotFound(_), .. }) => {}
                    Err(e) => tracing::warn!(dir = uploads, error = %e, "a deleted bucket's uploads in progress were not removed"),
                }
                Ok(S3Response::new(DeleteBucketOutput {}))
            }
            Err(ClientError::Metadata { source: RpcError::FailedPrecondition(m), .. }) => Err(s3_error!(BucketNotEmpty, "{m}")),
            Err(e) => Err(cluster_error(e, S3ErrorCode::NoSuchBucket)),
        }
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        let dir = rules::bucket_path(&req.input.bucket).map_err(name_error)?;
        let p = self.principal(&req).await?;
        // Reachable if the key reaches the bucket or anything in it.
        if !reaches(&p.prefix, &dir) {
            return Err(s3_error!(AccessDenied, "{} reaches only {}", p.name, p.prefix));
        }
        self.bucket_exists(&dir).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(&self, req: S3Request<GetBucketLocationInput>) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let dir = rules::bucket_path(&req.input.bucket).map_err(name_error)?;
        self.principal(&req).await?;
        self.bucket_exists(&dir).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let bucket_dir = rules::bucket_path(&req.input.bucket).map_err(name_error)?;
        let path = rules::object_path(&req.input.bucket, &req.input.key).map_err(name_error)?;
        let target = match &path {
            ObjectPath::File(p) | ObjectPath::Dir(p) => p.clone(),
        };
        self.allow(&req, "PutObject", Grant::Write, &target).await?;
        self.bucket_exists(&bucket_dir).await?;
        let input = req.input;
        let size = body_size(input.content_length, &input.body)?;
        if let ObjectPath::Dir(dir) = &path {
            // A directory marker ("folder"): the directory itself, and nothing to store.
            if size > 0 {
                return Err(s3_error!(InvalidArgument, "a key ending in '/' names a directory in dfs and cannot hold bytes"));
            }
            self.client.mkdir(dir, true).await.map_err(|e| cluster_error(e, S3ErrorCode::InternalError))?;
            return Ok(S3Response::new(PutObjectOutput { e_tag: Some(ETag::Strong(EMPTY_ETAG.into())), ..Default::default() }));
        }
        let expect = expected(&input.content_md5, &input.checksum_sha256)?;
        let object = object_meta!(input)?;
        let source = StreamSource::new(size, body_stream(input.body)).expecting(expect);
        let info = self.store(&target, &source, object).await?;
        let checksum = expect.sha256.map(|_| base64::engine::general_purpose::STANDARD.encode(&info.sha256));
        Ok(S3Response::new(PutObjectOutput { e_tag: Some(ETag::Strong(etag_of(&info))), checksum_sha256: checksum, ..Default::default() }))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let bucket_dir = rules::bucket_path(&req.input.bucket).map_err(name_error)?;
        let path = rules::object_path(&req.input.bucket, &req.input.key).map_err(name_error)?;
        let (ObjectPath::File(p) | ObjectPath::Dir(p)) = &path;
        self.allow(&req, "HeadObject", Grant::Read, p).await?;
        let head = self.head(&bucket_dir, &path).await?;
        let i = &req.input;
        check_conditions(&conditions(&i.if_match, &i.if_none_match, &i.if_modified_since, &i.if_unmodified_since), &head)?;
        let (info, o) = (&head.info, &head.info.object);
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(info.size as i64),
            content_type: o.as_ref().and_then(|o| o.content_type.as_deref()).and_then(|c| c.parse().ok()),
            e_tag: Some(ETag::Strong(head.etag.clone())),
            last_modified: Some(timestamp(info.committed_unix_ms)),
            metadata: metadata_of(o),
            cache_control: header(o, "cache-control"),
            content_disposition: header(o, "content-disposition"),
            content_encoding: header(o, "content-encoding"),
            content_language: header(o, "content-language"),
            accept_ranges: Some("bytes".into()),
            checksum_sha256: checksum_sha256(info, &i.checksum_mode, true),
            ..Default::default()
        }))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let bucket_dir = rules::bucket_path(&req.input.bucket).map_err(name_error)?;
        let path = rules::object_path(&req.input.bucket, &req.input.key).map_err(name_error)?;
        let (ObjectPath::File(p) | ObjectPath::Dir(p)) = &path;
        self.allow(&req, "GetObject", Grant::Read, p).await?;
        let i = &req.input;
        let conds = conditions(&i.if_match, &i.if_none_match, &i.if_modified_since, &i.if_unmodified_since);
        // Opened once: every byte sent is of this version, whatever is put at the key meanwhile.
        let (head, opened) = match &path {
            ObjectPath::Dir(_) => (self.head(&bucket_dir, &path).await?, None),
            ObjectPath::File(file) => match self.client.open(file, "GetObject").await {
                Ok(reply) => {
                    let info = reply.file.clone().unwrap_or_default();
                    let etag = etag_of(&info);
                    (Head { info, etag }, Some(reply))
                }
                Err(e) => {
                    // Distinguishes a missing bucket from a missing key.
                    self.head(&bucket_dir, &path).await?;
                    return Err(cluster_error(e, S3ErrorCode::NoSuchKey));
                }
            },
        };
        check_conditions(&conds, &head)?;
        let size = head.info.size;
        let (start, end, content_range) = match &i.range {
            None => (0, size, None),
            Some(range) => {
                let r = range.check(size).map_err(|_| s3_error!(InvalidRange, "the object is {size} bytes"))?;
                (r.start, r.end, Some(format!("bytes {}-{}/{size}", r.start, r.end.saturating_sub(1))))
            }
        };
        let body = match opened {
            Some(reply) if end > start => Some(StreamingBlob::wrap(self.read_stream(p, reply, start, end))),
            _ => Some(StreamingBlob::wrap(futures::stream::empty::<Result<Bytes, io::Error>>())),
        };
        let (info, o) = (&head.info, &head.info.object);
        Ok(S3Response::new(GetObjectOutput {
            body,
            content_length: Some((end - start) as i64),
            content_range,
            content_type: o.as_ref().and_then(|o| o.content_type.as_deref()).and_then(|c| c.parse().ok()),
            e_tag: Some(ETag::Strong(head.etag.clone())),
            last_modified: Some(timestamp(info.committed_unix_ms)),
            metadata: metadata_of(o),
            cache_control: header(o, "cache-control"),
            content_disposition: header(o, "content-disposition"),
            content_encoding: header(o, "content-encoding"),
            content_language: header(o, "content-language"),
            accept_ranges: Some("bytes".into()),
            checksum_sha256: checksum_sha256(info, &i.checksum_mode, start == 0 && end == size),
            ..Default::default()
        }))
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        let bucket_dir = rules::bucket_path(&req.input.bucket).map_err(name_error)?;
        let path = rules::object_path(&req.input.bucket, &req.input.key).map_err(name_error)?;
        let (ObjectPath::File(p) | ObjectPath::Dir(p)) = &path;
        self.allow(&req, "DeleteObject", Grant::Write, p).await?;
        self.bucket_exists(&bucket_dir).await?;
        self.delete_key(&path).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let bucket_dir = rules::bucket_path(&req.input.bucket).map_err(name_error)?;
        let p = self.principal(&req).await?;
        self.bucket_exists(&bucket_dir).await?;
        if req.input.delete.objects.len() > DELETE_OBJECTS_MAX {
            return Err(s3_error!(MalformedXML, "at most {DELETE_OBJECTS_MAX} keys per DeleteObjects, as S3 allows"));
        }
        let quiet = req.input.delete.quiet.unwrap_or(false);
        let (mut deleted, mut errors) = (Vec::new(), Vec::new());
        for object in &req.input.delete.objects {
            let key = object.key.clone();
            let outcome = match rules::object_path(&req.input.bucket, &key).map_err(name_error) {
                Ok(path) => {
                    let (ObjectPath::File(target) | ObjectPath::Dir(target)) = &path;
                    match auth::permit(&p, "DeleteObjects", Grant::Write, Some(target)) {
                        Ok(()) => self.delete_key(&path).await,
                        Err(e) => Err(s3_error!(AccessDenied, "{e}")),
                    }
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) if !quiet => deleted.push(DeletedObject { key: Some(key), ..Default::default() }),
                Ok(()) => {}
                Err(e) => errors.push(Error {
                    key: Some(key),
                    code: Some(e.code().as_str().to_string()),
                    message: e.message().map(String::from),
                    ..Default::default()
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput { deleted: Some(deleted), errors: Some(errors), ..Default::default() }))
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let i = &req.input;
        let max_keys = max_keys(i.max_keys)?;
        let params = ListParams {
            prefix: i.prefix.clone().unwrap_or_default(),
            delimiter: i.delimiter.clone(),
            start_after: i.start_after.clone().filter(|s| !s.is_empty()),
            continuation: i.continuation_token.clone().filter(|s| !s.is_empty()),
            max_keys,
        };
        let page = self.list(&req, &i.bucket, params.clone()).await?;
        let enc = encoder(&i.encoding_type);
        let key_count = (page.contents.len() + page.common_prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(i.bucket.clone()),
            prefix: Some(enc(params.prefix)),
            delimiter: i.delimiter.clone().filter(|d| !d.is_empty()).map(enc),
            start_after: i.start_after.clone().map(enc),
            max_keys: Some(max_keys.min(rules::LIST_KEYS_MAX) as i32),
            key_count: Some(key_count),
            is_truncated: Some(page.is_truncated),
            continuation_token: i.continuation_token.clone(),
            next_continuation_token: page.next.clone(),
            encoding_type: i.encoding_type.clone(),
            contents: Some(page.contents.into_iter().map(|(k, info)| object_entry(enc(k), &info)).collect()),
            common_prefixes: Some(page.common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(enc(p)) }).collect()),
            ..Default::default()
        }))
    }

    /// A bucket is never versioned: each object is its one version, `null`, the latest (as S3
    /// lists a bucket that never had versioning on). Tools that clean buckets out ask for it.
    async fn list_object_versions(&self, req: S3Request<ListObjectVersionsInput>) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let i = &req.input;
        let max_keys = max_keys(i.max_keys)?;
        let params = ListParams {
            prefix: i.prefix.clone().unwrap_or_default(),
            delimiter: i.delimiter.clone(),
            start_after: i.key_marker.clone().filter(|s| !s.is_empty()),
            continuation: None,
            max_keys,
        };
        let page = self.list(&req, &i.bucket, params.clone()).await?;
        let enc = encoder(&i.encoding_type);
        let versions = page
            .contents
            .into_iter()
            .map(|(key, info)| ObjectVersion {
                key: Some(enc(key)),
                version_id: Some("null".into()),
                is_latest: Some(true),
                size: Some(info.size as i64),
                e_tag: Some(ETag::Strong(etag_of(&info))),
                last_modified: Some(timestamp(info.committed_unix_ms)),
                storage_class: Some(ObjectVersionStorageClass::from_static(ObjectVersionStorageClass::STANDARD)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(i.bucket.clone()),
            prefix: Some(enc(params.prefix)),
            delimiter: i.delimiter.clone().map(enc),
            key_marker: i.key_marker.clone().map(enc),
            version_id_marker: i.version_id_marker.clone(),
            max_keys: Some(max_keys.min(rules::LIST_KEYS_MAX) as i32),
            is_truncated: Some(page.is_truncated),
            next_key_marker: page.next.clone().map(enc),
            next_version_id_marker: page.next.map(|_| "null".into()),
            encoding_type: i.encoding_type.clone(),
            versions: Some(versions),
            common_prefixes: Some(page.common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(enc(p)) }).collect()),
            ..Default::default()
        }))
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        self.copy(req).await
    }

    async fn create_multipart_upload(&self, req: S3Request<CreateMultipartUploadInput>) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.create_upload(req).await
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        self.put_part(req).await
    }

    async fn upload_part_copy(&self, req: S3Request<UploadPartCopyInput>) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.copy_part(req).await
    }

    async fn complete_multipart_upload(&self, req: S3Request<CompleteMultipartUploadInput>) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.complete_upload(req).await
    }

    async fn abort_multipart_upload(&self, req: S3Request<AbortMultipartUploadInput>) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.abort_upload(req).await
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        self.parts(req).await
    }

    async fn list_multipart_uploads(&self, req: S3Request<ListMultipartUploadsInput>) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.uploads(req).await
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        let i = &req.input;
        let max_keys = max_keys(i.max_keys)?;
        let params = ListParams {
            prefix: i.prefix.clone().unwrap_or_default(),
            delimiter: i.delimiter.clone(),
            start_after: i.marker.clone().filter(|s| !s.is_empty()),
            continuation: None,
            max_keys,
        };
        let page = self.list(&req, &i.bucket, params.clone()).await?;
        let enc = encoder(&i.encoding_type);
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(i.bucket.clone()),
            prefix: Some(enc(params.prefix)),
            delimiter: i.delimiter.clone().filter(|d| !d.is_empty()).map(enc),
            marker: Some(enc(i.marker.clone().unwrap_or_default())),
            max_keys: Some(max_keys.min(rules::LIST_KEYS_MAX) as i32),
            is_truncated: Some(page.is_truncated),
            next_marker: page.next.clone().map(enc),
            encoding_type: i.encoding_type.clone(),
            contents: Some(page.contents.into_iter().map(|(k, info)| object_entry(enc(k), &info)).collect()),
            common_prefixes: Some(page.common_prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(enc(p)) }).collect()),
            ..Default::default()
        }))
    }
}

/// A listing's `max-keys`: S3's default when absent (`Listing` caps it).
fn max_keys(asked: Option<i32>) -> S3Result<usize> {
    match asked {
        Some(n) if n < 0 => Err(s3_error!(InvalidArgument, "max-keys must not be negative")),
        Some(n) => Ok(n as usize),
        None => Ok(rules::LIST_KEYS_MAX),
    }
}

/// How a listing shows keys: percent-encoded when the client asked for `encoding-type=url`.
fn encoder(encoding: &Option<EncodingType>) -> impl Fn(String) -> String + Copy {
    let url = encoding.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL);
    move |s| if url { url_encode(&s) } else { s }
}

/// Whether a key confined to `prefix` reaches the bucket `dir` or something in it.
fn reaches(prefix: &str, dir: &str) -> bool {
    dfs_core::namespace::is_at_or_under(dir, prefix) || dfs_core::namespace::is_at_or_under(prefix, dir)
}

fn object_entry(key: String, info: &proto::FileInfo) -> Object {
    Object {
        key: Some(key),
        size: Some(info.size as i64),
        e_tag: Some(ETag::Strong(etag_of(info))),
        last_modified: Some(timestamp(info.committed_unix_ms)),
        storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
        ..Default::default()
    }
}

impl Gateway {
    /// Streams `source` into a file at `path`, with `object` kept and the body's MD5 as its
    /// ETag. A body that breaks off, runs long or fails its digests leaves nothing
    /// (`put_stream` aborts the upload).
    async fn store(&self, path: &str, source: &StreamSource, object: proto::ObjectMeta) -> S3Result<proto::FileInfo> {
        match self.client.put_stream(source, path, true, object, &NoProgress).await {
            Ok(info) => Ok(info),
            Err(e) => Err(match source.mismatch() {
                Some(DigestKind::Md5) => s3_error!(BadDigest, "the body's MD5 differs from Content-MD5"),
                Some(DigestKind::Sha256) => s3_error!(BadDigest, "the body's SHA-256 differs from x-amz-checksum-sha256"),
                None => match e {
                    ClientError::Upload { source: dfs_core::client::upload::UploadError::Source { .. }, .. } | ClientError::Local { .. } => {
                        s3_error!(IncompleteBody, "{e}")
                    }
                    e => cluster_error(e, S3ErrorCode::NoSuchBucket),
                },
            }),
        }
    }

    /// Bytes `[start, end)` of the file `reply` opened, as a stream fed by a task that reads
    /// at most `GET_READ_AHEAD` chunks ahead of what was taken (and stops when the stream is
    /// dropped). Pieces end at chunk boundaries: each is one chunk's read.
    fn read_stream(
        &self,
        file: &str,
        reply: proto::GetFileResponse,
        start: u64,
        end: u64,
    ) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + Sync + 'static {
        let mut pieces = Vec::new();
        for (chunk_start, loc) in dfs_core::chunking::placed(&reply.chunks) {
            let (from, to) = (start.max(chunk_start), end.min(chunk_start + loc.size));
            if from < to {
                pieces.push((from, to - from));
            }
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(1);
        let client = self.client.clone();
        let file = file.to_string();
        let reply = Arc::new(reply);
        tokio::spawn(async move {
            let reads = futures::stream::iter(pieces)
                .map(|(offset, len)| {
                    let (client, reply, file) = (client.clone(), reply.clone(), file.clone());
                    async move {
                        let mut buf = Vec::with_capacity(len as usize);
                        client.read_opened(&file, &reply, offset, len, &mut buf).await.map_err(io::Error::other)?;
                        if buf.len() as u64 != len {
                            return Err(io::Error::other(format!("{file}: read {} of {len} bytes at {offset}", buf.len())));
                        }
                        Ok(Bytes::from(buf))
                    }
                })
                .buffered(GET_READ_AHEAD);
            futures::pin_mut!(reads);
            while let Some(piece) = reads.next().await {
                let failed = piece.is_err();
                if let Err(e) = &piece {
                    tracing::warn!(file, error = %e, "a read failed mid-stream; the stream is cut short");
                }
                // The reader went away: stop reading.
                if tx.send(piece).await.is_err() || failed {
                    break;
                }
            }
        });
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    /// Deletes the object at `path`: a missing one is no error (S3's DELETE is idempotent).
    async fn delete_key(&self, path: &ObjectPath) -> S3Result<()> {
        let (target, is_dir) = match path {
            ObjectPath::File(p) => (p, false),
            ObjectPath::Dir(p) => (p, true),
        };
        if !is_dir {
            if let Some(e) = self.client.entry(target).await.map_err(|e| cluster_error(e, S3ErrorCode::NoSuchKey))? {
                if e.kind != proto::EntryKind::File as i32 {
                    // A "directory" of other keys is no object: nothing to delete.
                    return Ok(());
                }
            }
        }
        match self.client.delete_now(target, false).await {
            Ok(_) => Ok(()),
            Err(ClientError::Metadata { source: RpcError::NotFound(_), .. }) => Ok(()),
            // A marker of a directory still holding keys: S3 would delete only the marker.
            Err(ClientError::Metadata { source: RpcError::FailedPrecondition(_), .. }) if is_dir => Ok(()),
            Err(e) => Err(cluster_error(e, S3ErrorCode::NoSuchKey)),
        }
    }

    /// One page of a bucket's listing, driven by `rules::Listing`.
    async fn list<T>(&self, req: &S3Request<T>, bucket: &str, params: ListParams) -> S3Result<rules::ListPage<proto::FileInfo>> {
        let dir = rules::bucket_path(bucket).map_err(name_error)?;
        let listed = match params.prefix.rfind('/') {
            Some(i) => format!("{dir}/{}", &params.prefix[..i]),
            None => dir.clone(),
        };
        self.allow(req, "ListObjects", Grant::Read, &listed).await?;
        self.bucket_exists(&dir).await?;
        let mut listing = Listing::new(&dir, params);
        while let Some(page) = listing.next_page() {
            let request = proto::ListFilesRequest { prefix: page.dir, start_after: page.start_after, limit: page.limit };
            match self.meta.call(request).await {
                Ok(reply) => listing.feed(reply.files.into_iter().map(|f| (f.path.clone(), f)), reply.truncated),
                // A directory the prefix names that does not exist holds no keys.
                Err(RpcError::NotFound(_)) => listing.feed(std::iter::empty(), false),
                Err(e) => return Err(cluster_error(ClientError::Metadata { context: "ListObjects".into(), source: e }, S3ErrorCode::NoSuchBucket)),
            }
        }
        Ok(listing.finish())
    }
}
