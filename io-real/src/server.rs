//! gRPC servers for the two kinds of node.

use std::future::Future;
use std::sync::Arc;

use dfs_core::limits::{CHUNK_BATCH_MESSAGE_MAX_BYTES, CHUNK_FRAME_MESSAGE_MAX_BYTES, STREAMS_PER_CONNECTION_MAX, UNARY_MESSAGE_MAX_BYTES};
use dfs_core::proto::{ChunkBatchServiceHandler, MetadataServiceHandler, RaftServiceHandler};
use dfs_core::rpc::ChunkHandler;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::transport::{Server, ServerTlsConfig};
use tower_layer::{Identity, Stack};

use crate::tls::AuthLayer;

use crate::generated::chunk_batch_service_server::ChunkBatchServiceServer;
use crate::generated::metadata_service_server::MetadataServiceServer;
use crate::generated::raft_service_server::RaftServiceServer;
use crate::generated::replication_service_server::ReplicationServiceServer;
use crate::generated::storage_service_server::StorageServiceServer;
use crate::grpc::{Adapter, HTTP2_CONNECTION_WINDOW_BYTES, HTTP2_FRAME_BYTES_MAX, HTTP2_STREAM_WINDOW_BYTES};
use crate::metrics::{CountedStream, RpcMetrics, RpcMetricsLayer};

/// Accepted connections with Nagle's algorithm off. tonic applies its builder's `tcp_nodelay`
/// only to listeners it binds itself, not to an incoming stream: without this, a small reply
/// written in pieces waits for the peer's delayed ACK.
/// Their bytes are counted for the node's metrics.
fn incoming(listener: TcpListener, metrics: Arc<RpcMetrics>) -> impl tokio_stream::Stream<Item = std::io::Result<CountedStream>> {
    TcpListenerStream::new(listener).map(move |accepted| {
        let stream = accepted?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        Ok(CountedStream::new(stream, metrics.clone()))
    })
}

/// How a server meets its callers: in plaintext (`--insecure`), or over TLS with each call's
/// caller checked (`crate::tls::AuthLayer`).
#[derive(Clone, Debug, Default)]
pub enum ServerSecurity {
    #[default]
    Plaintext,
    Tls {
        config: ServerTlsConfig,
        node: Arc<str>,
    },
}

/// A server builder with dfs's layers: metrics, then the role check.
type Layered = Server<Stack<AuthLayer, Stack<RpcMetricsLayer, Identity>>>;

impl ServerSecurity {
    /// A server builder with the flow-control settings, TLS if on, and the layers: metrics
    /// outermost (a refused call is counted, as `PermissionDenied`), then the role check.
    fn builder(&self, metrics: &Arc<RpcMetrics>) -> Result<Layered, tonic::transport::Error> {
        let (builder, auth) = match self {
            ServerSecurity::Plaintext => (Server::builder(), AuthLayer { node: None }),
            ServerSecurity::Tls { config, node } => (Server::builder().tls_config(config.clone())?, AuthLayer { node: Some(node.clone()) }),
        };
        Ok(builder
            .tcp_nodelay(true)
            .initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES)
            .max_frame_size(HTTP2_FRAME_BYTES_MAX)
            // tonic leaves HTTP/2's stream count unbounded unless told.
            .max_concurrent_streams(Some(STREAMS_PER_CONNECTION_MAX))
            .layer(RpcMetricsLayer(metrics.clone()))
            .layer(auth))
    }
}

/// Serves `MetadataService` and `RaftService` on `listener` until `shutdown` completes, each
/// call observed in `metrics`.
pub async fn serve_metadata<H>(
    listener: TcpListener,
    handler: Arc<H>,
    metrics: Arc<RpcMetrics>,
    security: ServerSecurity,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    H: MetadataServiceHandler + RaftServiceHandler,
{
    let metadata = MetadataServiceServer::new(Adapter(handler.clone()))
        .max_decoding_message_size(UNARY_MESSAGE_MAX_BYTES)
        .max_encoding_message_size(UNARY_MESSAGE_MAX_BYTES);
    let raft = RaftServiceServer::new(Adapter(handler)).max_decoding_message_size(UNARY_MESSAGE_MAX_BYTES).max_encoding_message_size(UNARY_MESSAGE_MAX_BYTES);
    security.builder(&metrics)?.add_service(metadata).add_service(raft).serve_with_incoming_shutdown(incoming(listener, metrics), shutdown).await
}

/// Serves `StorageService`, `ReplicationService` and `ChunkBatchService` on `listener` until
/// `shutdown` completes.
pub async fn serve_storage<H>(
    listener: TcpListener,
    handler: Arc<H>,
    metrics: Arc<RpcMetrics>,
    security: ServerSecurity,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    H: ChunkHandler + ChunkBatchServiceHandler,
{
    // A batch carries at most `CHUNK_BATCH_BYTES_MAX` of chunks, a stream frame at most
    // `CHUNK_FRAME_BYTES`: nothing larger is decoded (answers may be as large as any unary one).
    let batches = ChunkBatchServiceServer::new(Adapter(handler.clone()))
        .max_decoding_message_size(CHUNK_BATCH_MESSAGE_MAX_BYTES)
        .max_encoding_message_size(UNARY_MESSAGE_MAX_BYTES);
    let storage = StorageServiceServer::new(Adapter(handler.clone())).max_decoding_message_size(CHUNK_FRAME_MESSAGE_MAX_BYTES);
    let replication = ReplicationServiceServer::new(Adapter(handler)).max_decoding_message_size(CHUNK_FRAME_MESSAGE_MAX_BYTES);
    security
        .builder(&metrics)?
        .add_service(batches)
        .add_service(storage)
        .add_service(replication)
        .serve_with_incoming_shutdown(incoming(listener, metrics), shutdown)
        .await
}
