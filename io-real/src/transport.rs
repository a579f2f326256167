//! Calls to other nodes over gRPC. One HTTP/2 connection per peer address, opened lazily and
//! re-established by tonic after a failure.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dfs_core::env::Transport;
use dfs_core::proto::{ReadChunkFrame, ReadChunkHeader, ReadChunkRequest, WriteChunkFrame, WriteChunkResponse};
use dfs_core::rpc::{self, ChunkDownload, ChunkService, ChunkUpload, FrameAssembler, Rpc, RpcError};
use futures::StreamExt;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_prost::ProstCodec;

use dfs_core::limits::UNARY_MESSAGE_MAX_BYTES;

use crate::grpc::from_status;
use crate::tls::Credentials;

/// Calls to it carry the user's token; chunk calls to storage nodes do not.
const METADATA_SERVICE: &str = "/dfs.v1.MetadataService/";

#[derive(Clone)]
pub struct GrpcTransport {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    connect_timeout: Duration,
    /// `None`: plaintext (`--insecure`).
    tls: Option<ClientTlsConfig>,
    /// A user's bearer token (`--token`, `DFS_TOKEN`), sent with each call to a metadata node
    /// (`authorization: Bearer ...`): the `authorization` value, made once.
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

/// Written by hand so that the token is never printed.
impl std::fmt::Debug for GrpcTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTransport").field("tls", &self.tls.is_some()).field("token", &self.token.is_some()).finish_non_exhaustive()
    }
}

impl Default for GrpcTransport {
    fn default() -> Self {
        GrpcTransport { channels: Arc::default(), connect_timeout: Duration::from_secs(3), tls: None, token: None }
    }
}

impl GrpcTransport {
    /// Calls out over TLS with `credentials` (the CA to check servers against, and this
    /// process's certificate if it has one), or in plaintext with `None`.
    pub fn new(credentials: Option<&Credentials>) -> Self {
        GrpcTransport { tls: credentials.map(Credentials::client_config), ..GrpcTransport::default() }
    }

    /// The same, also sending `token` to metadata nodes. A token is refused here if it could not
    /// travel as a header value (control characters, non-ASCII): no token the cluster makes
    /// is like that.
    pub fn with_token(mut self, token: &str) -> Result<Self, RpcError> {
        let value = format!("Bearer {}", token.trim());
        self.token =
            Some(value.parse().map_err(|_| RpcError::InvalidArgument("the token has characters no dfs token has (check DFS_TOKEN or --token)".into()))?);
        Ok(self)
    }

    fn client(&self, to: &str) -> Result<tonic::client::Grpc<Channel>, RpcError> {
        let mut channels = self.channels.lock().expect("channel cache lock");
        let channel = match channels.get(to) {
            Some(c) => c.clone(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                let mut endpoint =
                    Endpoint::from_shared(format!("{scheme}://{to}")).map_err(|e| RpcError::InvalidArgument(format!("bad address {to:?}: {e}")))?;
                if let Some(tls) = &self.tls {
                    endpoint = endpoint.tls_config(tls.clone()).map_err(|e| RpcError::InvalidArgument(format!("TLS to {to:?}: {e}")))?;
                }
                let endpoint = endpoint
                    .connect_timeout(self.connect_timeout)
                    .tcp_nodelay(true)
                    .initial_stream_window_size(crate::grpc::HTTP2_STREAM_WINDOW_BYTES)
                    .initial_connection_window_size(crate::grpc::HTTP2_CONNECTION_WINDOW_BYTES)
                    .max_frame_size(crate::grpc::HTTP2_FRAME_BYTES_MAX)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(20));
                let channel = endpoint.connect_lazy();
                channels.insert(to.to_string(), channel.clone());
                channel
            }
        };
        Ok(tonic::client::Grpc::new(channel).max_decoding_message_size(UNARY_MESSAGE_MAX_BYTES).max_encoding_message_size(UNARY_MESSAGE_MAX_BYTES))
    }

    async fn ready(&self, to: &str) -> Result<tonic::client::Grpc<Channel>, RpcError> {
        let mut client = self.client(to)?;
        client.ready().await.map_err(|e| self.tls_failure(RpcError::Transport(format!("{to}: {e}"))))?;
        Ok(client)
    }

    /// The error of a call that failed on the wire, with TLS failures made plain. Those are not
    /// transient (the same certificates fail again), so they become `FailedPrecondition`: not
    /// retried, the caller's to fix, with a line saying what.
    fn status_error(&self, to: &str, status: tonic::Status) -> RpcError {
        self.tls_failure(from_status(to, status))
    }

    fn tls_failure(&self, e: RpcError) -> RpcError {
        let (RpcError::Transport(text) | RpcError::Internal(text)) = &e else { return e };
        let to = text.split(": ").next().unwrap_or("");
        let refused = |why: String| RpcError::FailedPrecondition(format!("{to}: {why}"));
        if self.tls.is_some() {
            if let Some(i) = text.find("invalid peer certificate") {
                return refused(format!(
                    "its certificate is not accepted ({}): it must be signed by the CA this client was given (--ca, DFS_CA or the config dir) and name this address",
                    &text[i..]
                ));
            }
            if let Some(i) = text.find("received fatal alert") {
                return refused(format!("it refused this client's TLS credentials ({}): the certificate must be signed by the cluster's CA", &text[i..]));
            }
            if text.contains("corrupt message") || text.contains("InvalidContentType") || text.contains("tls handshake eof") {
                return refused("it does not answer in TLS (a node run with --insecure?): talk to it with --insecure, or run the cluster with TLS".into());
            }
        } else if text.contains("h2 protocol error") {
            return refused(
                "it did not answer in plaintext HTTP/2: if the cluster runs TLS, this client needs its CA (--ca or DFS_CA, or the credentials `dfs cluster up` writes to the config dir)".into(),
            );
        }
        e
    }
}

impl Transport for GrpcTransport {
    fn unary<R: Rpc>(&self, to: &str, request: R) -> impl Future<Output = Result<R::Response, RpcError>> + Send {
        let to = to.to_string();
        async move {
            let mut client = self.ready(&to).await?;
            let codec = ProstCodec::<R, R::Response>::default();
            let mut request = tonic::Request::new(request);
            if let Some(token) = self.token.as_ref().filter(|_| R::PATH.starts_with(METADATA_SERVICE)) {
                request.metadata_mut().insert("authorization", token.clone());
            }
            client.unary(request, PathAndQuery::from_static(R::PATH), codec).await.map(|r| r.into_inner()).map_err(|s| self.status_error(&to, s))
        }
    }

    fn write_chunk(&self, to: &str, service: ChunkService, upload: ChunkUpload) -> impl Future<Output = Result<WriteChunkResponse, RpcError>> + Send {
        self.write_chunk_frames(to, service, futures::stream::iter(rpc::write_frames(upload)).boxed())
    }

    fn write_chunk_frames(
        &self,
        to: &str,
        service: ChunkService,
        frames: futures::stream::BoxStream<'static, WriteChunkFrame>,
    ) -> impl Future<Output = Result<WriteChunkResponse, RpcError>> + Send {
        let to = to.to_string();
        async move {
            let mut client = self.ready(&to).await?;
            let path = service.write_path();
            let codec = ProstCodec::<WriteChunkFrame, WriteChunkResponse>::default();
            client
                .client_streaming(tonic::Request::new(frames), PathAndQuery::from_static(path), codec)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| self.status_error(&to, s))
        }
    }

    fn read_chunk(&self, to: &str, request: ReadChunkRequest) -> impl Future<Output = Result<ChunkDownload, RpcError>> + Send {
        let to = to.to_string();
        async move {
            let mut client = self.ready(&to).await?;
            let codec = ProstCodec::<ReadChunkRequest, ReadChunkFrame>::default();
            let mut frames = client
                .server_streaming(tonic::Request::new(request), PathAndQuery::from_static(rpc::READ_CHUNK_PATH), codec)
                .await
                .map_err(|s| self.status_error(&to, s))?
                .into_inner();
            let mut assembler = FrameAssembler::<ReadChunkHeader>::new();
            while let Some(frame) = frames.next().await {
                let frame = frame.map_err(|s| self.status_error(&to, s))?;
                assembler.push(frame.header, frame.data).map_err(|e| RpcError::Malformed(format!("{to}: {e}")))?;
            }
            let (header, data) = assembler.finish().map_err(|e| RpcError::Malformed(format!("{to}: {e}")))?;
            Ok(ChunkDownload { header, data })
        }
    }
}
