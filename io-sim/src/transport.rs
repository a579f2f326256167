//! The network, simulated: every call is a madsim connection carrying encoded protobuf, so
//! partitions, delays, node kills and message sizes are those of the simulation.
//!
//! One connection per call, like one HTTP/2 stream per gRPC call in production:
//!
//! ```text
//! unary:       client → Open(Unary{path, body})          server → Reply(Ok(body) | Err(detail))
//! write chunk: client → Open(WriteChunk{service}), Frame*, End   server → Reply(..)
//! read chunk:  client → Open(ReadChunk{body})             server → Frame*, End | Reply(Err)
//! ```
//!
//! Each opening carries the caller's credentials (`identity`): the server admits or refuses the
//! call as a TLS one would before any handler sees it.
//!
//! As with tonic, the server cancels a handler (drops its future, or the frame stream it
//! returned) as soon as the caller goes away: its end of the connection closes when the caller
//! drops the call, gives up on a timeout, or its node is killed. Frames of an incoming chunk
//! are handed to the handler as it asks for them.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use dfs_core::auth::Peer;
use dfs_core::env::Transport;
use dfs_core::fault::{self, Site};
use dfs_core::limits;
use dfs_core::proto::{self, ReadChunkFrame, ReadChunkRequest, WriteChunkFrame, WriteChunkResponse};
use dfs_core::rpc::{self, ChunkDownload, ChunkService, ChunkUpload, FrameStream, Rpc, RpcError};
use futures::future::{BoxFuture, Either};
use futures::StreamExt;
use madsim::net::{Endpoint, Receiver, Sender};
use prost::Message;

use crate::identity::{self, Refused, SimCredentials};

/// What travels on a simulated connection. Payloads are encoded protobuf.
#[derive(Debug, Clone)]
enum Wire {
    Unary { path: String, body: Bytes, from: Arc<SimCredentials> },
    WriteChunk { service: ChunkService, from: Arc<SimCredentials> },
    ReadChunk { body: Bytes, from: Arc<SimCredentials> },
    Frame(Bytes),
    End,
    Reply(Result<Bytes, Bytes>),
}

fn transport_error(to: &str, e: impl std::fmt::Display) -> RpcError {
    RpcError::Transport(format!("{to}: {e}"))
}

async fn send(tx: &Sender, msg: Wire) -> io::Result<()> {
    tx.send(Box::new(msg)).await
}

async fn recv(rx: &mut Receiver) -> io::Result<Wire> {
    let payload = rx.recv().await?;
    payload.downcast::<Wire>().map(|b| *b).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "unexpected message type"))
}

fn reply_result(reply: Result<Bytes, Bytes>) -> Result<Bytes, RpcError> {
    reply.map_err(|detail| RpcError::decode_detail(&detail))
}

/// A host's way out: its calls carry its credentials (`SimCredentials::insecure()` by default).
#[derive(Clone, Debug, Default)]
pub struct SimTransport {
    credentials: Arc<SimCredentials>,
}

impl SimTransport {
    pub fn new(credentials: SimCredentials) -> Self {
        SimTransport { credentials: Arc::new(credentials) }
    }

    async fn connect(to: &str) -> Result<(Sender, Receiver), RpcError> {
        let addr: SocketAddr = to.parse().map_err(|e| transport_error(to, format!("bad address: {e}")))?;
        let endpoint = Endpoint::bind("0.0.0.0:0").await.map_err(|e| transport_error(to, e))?;
        endpoint.connect1(addr).await.map_err(|e| transport_error(to, e))
    }
}

/// Runs a call, unless the `NetAbandonCall` fault site makes the caller give up first (as a
/// client timeout or a reset would), which cancels the server's handler wherever it is.
async fn abandonable<T>(to: &str, call: impl Future<Output = Result<T, RpcError>>) -> Result<T, RpcError> {
    match fault::decide(Site::NetAbandonCall) {
        Some(fault::Fault::Delay(after)) => match madsim::time::timeout(after, call).await {
            Ok(result) => result,
            Err(_) => Err(transport_error(to, format!("call abandoned after {after:?} (fault site {})", Site::NetAbandonCall.name()))),
        },
        _ => call.await,
    }
}

/// Whether the `NetLoseReply` fault site loses this answer.
fn reply_lost() -> bool {
    fault::decide(Site::NetLoseReply) == Some(fault::Fault::Fail)
}

impl Transport for SimTransport {
    fn unary<R: Rpc>(&self, to: &str, request: R) -> impl Future<Output = Result<R::Response, RpcError>> + Send {
        let to = to.to_string();
        let name = to.clone();
        let from = self.credentials.clone();
        let call = async move {
            let (tx, mut rx) = Self::connect(&to).await?;
            let body = Bytes::from(request.encode_to_vec());
            // As gRPC does in production: an oversized message is refused, never sent.
            if body.len() > limits::UNARY_MESSAGE_MAX_BYTES {
                return Err(RpcError::InvalidArgument(format!("{to}: request of {} bytes exceeds {}", body.len(), limits::UNARY_MESSAGE_MAX_BYTES)));
            }
            send(&tx, Wire::Unary { path: R::PATH.to_string(), body, from }).await.map_err(|e| transport_error(&to, e))?;
            match recv(&mut rx).await.map_err(|e| transport_error(&to, e))? {
                Wire::Reply(reply) => {
                    let body = reply_result(reply)?;
                    R::Response::decode(body).map_err(|e| RpcError::Malformed(format!("{to}: undecodable reply: {e}")))
                }
                other => Err(RpcError::Malformed(format!("{to}: unexpected {other:?}"))),
            }
        };
        async move { abandonable(&name, call).await }
    }

    fn write_chunk(&self, to: &str, service: ChunkService, upload: ChunkUpload) -> impl Future<Output = Result<WriteChunkResponse, RpcError>> + Send {
        self.write_chunk_frames(to, service, futures::stream::iter(rpc::write_frames(upload)).boxed())
    }

    fn write_chunk_frames(
        &self,
        to: &str,
        service: ChunkService,
        mut frames: futures::stream::BoxStream<'static, WriteChunkFrame>,
    ) -> impl Future<Output = Result<WriteChunkResponse, RpcError>> + Send {
        let to = to.to_string();
        let name = to.clone();
        let from = self.credentials.clone();
        let call = async move {
            let (tx, mut rx) = Self::connect(&to).await?;
            let io = |e| transport_error(&to, e);
            send(&tx, Wire::WriteChunk { service, from }).await.map_err(io)?;
            while let Some(frame) = frames.next().await {
                send(&tx, Wire::Frame(frame.encode_to_vec().into())).await.map_err(io)?;
            }
            send(&tx, Wire::End).await.map_err(io)?;
            match recv(&mut rx).await.map_err(io)? {
                Wire::Reply(reply) => {
                    WriteChunkResponse::decode(reply_result(reply)?).map_err(|e| RpcError::Malformed(format!("{to}: undecodable reply: {e}")))
                }
                other => Err(RpcError::Malformed(format!("{to}: unexpected {other:?}"))),
            }
        };
        async move { abandonable(&name, call).await }
    }

    fn read_chunk(&self, to: &str, request: ReadChunkRequest) -> impl Future<Output = Result<ChunkDownload, RpcError>> + Send {
        let to = to.to_string();
        let from = self.credentials.clone();
        async move {
            let (tx, mut rx) = Self::connect(&to).await?;
            let io = |e| transport_error(&to, e);
            send(&tx, Wire::ReadChunk { body: request.encode_to_vec().into(), from }).await.map_err(io)?;
            let mut assembler = rpc::FrameAssembler::<proto::ReadChunkHeader>::new();
            loop {
                match recv(&mut rx).await.map_err(io)? {
                    Wire::Frame(bytes) => {
                        let frame = ReadChunkFrame::decode(bytes).map_err(|e| RpcError::Malformed(format!("{to}: bad frame: {e}")))?;
                        assembler.push(frame.header, frame.data).map_err(|e| RpcError::Malformed(format!("{to}: {e}")))?;
                    }
                    Wire::End => break,
                    Wire::Reply(reply) => {
                        reply_result(reply)?;
                        return Err(RpcError::Malformed(format!("{to}: reply without a chunk")));
                    }
                    other => return Err(RpcError::Malformed(format!("{to}: unexpected {other:?}"))),
                }
            }
            let (header, data) = assembler.finish().map_err(|e| RpcError::Malformed(format!("{to}: {e}")))?;
            Ok(ChunkDownload { header, data })
        }
    }
}

/// What a simulated node answers. Implemented for the metadata and storage servers below.
pub trait SimService: Send + Sync + 'static {
    /// A unary call from `peer` (as the transport admitted it).
    fn unary(&self, _peer: Peer, _path: String, _body: Bytes) -> BoxFuture<'_, Result<Bytes, RpcError>> {
        Box::pin(async { Err(RpcError::InvalidArgument("no such service on this node".into())) })
    }
    fn write_chunk(&self, _service: ChunkService, _frames: FrameStream<WriteChunkFrame>) -> BoxFuture<'_, Result<WriteChunkResponse, RpcError>> {
        Box::pin(async { Err(RpcError::InvalidArgument("this node stores no chunks".into())) })
    }
    fn read_chunk(&self, _request: ReadChunkRequest) -> BoxFuture<'_, Result<FrameStream<ReadChunkFrame>, RpcError>> {
        Box::pin(async { Err(RpcError::InvalidArgument("this node stores no chunks".into())) })
    }
}

impl<E: dfs_core::env::Env> SimService for dfs_core::meta::MetaServer<E> {
    fn unary(&self, peer: Peer, path: String, body: Bytes) -> BoxFuture<'_, Result<Bytes, RpcError>> {
        Box::pin(async move {
            let unknown = || RpcError::InvalidArgument(format!("unknown method {path}"));
            let (service, method) = rpc::split_path(&path).ok_or_else(unknown)?;
            let reply = match service {
                "dfs.v1.MetadataService" => proto::metadata_service_dispatch(self, &peer, method, body).await,
                "dfs.v1.RaftService" => proto::raft_service_dispatch(self, method, body).await,
                _ => None,
            };
            reply.ok_or_else(unknown)?
        })
    }
}

impl<E: dfs_core::env::Env> SimService for dfs_core::storage_node::StorageNode<E> {
    // Storage nodes weigh chunk calls by their chunk tokens, not by who calls.
    fn unary(&self, _peer: Peer, path: String, body: Bytes) -> BoxFuture<'_, Result<Bytes, RpcError>> {
        Box::pin(async move {
            let unknown = || RpcError::InvalidArgument(format!("unknown method {path}"));
            let (service, method) = rpc::split_path(&path).ok_or_else(unknown)?;
            let reply = match service {
                "dfs.v1.ChunkBatchService" => proto::chunk_batch_service_dispatch(self, method, body).await,
                _ => None,
            };
            reply.ok_or_else(unknown)?
        })
    }
    fn write_chunk(&self, service: ChunkService, frames: FrameStream<WriteChunkFrame>) -> BoxFuture<'_, Result<WriteChunkResponse, RpcError>> {
        Box::pin(rpc::ChunkHandler::write_chunk(self, service, frames))
    }
    fn read_chunk(&self, request: ReadChunkRequest) -> BoxFuture<'_, Result<FrameStream<ReadChunkFrame>, RpcError>> {
        Box::pin(rpc::ChunkHandler::read_chunk(self, request))
    }
}

/// Accepts connections on `listen` (inside the current simulated node) and answers them with
/// `service`, one task per connection, admitting callers as a server holding `credentials`
/// would (`identity::admit`). Runs until the node is killed.
pub async fn serve<S: SimService>(listen: SocketAddr, service: Arc<S>, credentials: SimCredentials) -> io::Result<()> {
    let endpoint = Endpoint::bind(listen).await?;
    let credentials = Arc::new(credentials);
    loop {
        let (tx, rx, from) = endpoint.accept1().await?;
        let (service, credentials) = (service.clone(), credentials.clone());
        madsim::task::spawn(async move {
            if let Err(e) = handle_connection(&*service, &credentials, from, tx, rx).await {
                tracing::debug!(error = %e, "simulated connection ended early");
            }
        });
    }
}

/// Runs `work` unless the caller goes away first (its end of the connection closes); then
/// `work` is dropped, cancelling the handler, as tonic does when a client resets its stream.
async fn unless_caller_gone<T>(tx: &Sender, work: impl std::future::Future<Output = T>) -> Option<T> {
    futures::pin_mut!(work);
    let gone = tx.closed();
    futures::pin_mut!(gone);
    match futures::future::select(work, gone).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(((), _)) => {
            tracing::debug!("caller went away; handler cancelled");
            None
        }
    }
}

/// The frames of an incoming chunk, received as the handler pulls them.
fn incoming_frames(rx: Receiver) -> FrameStream<WriteChunkFrame> {
    futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        let item = match recv(&mut rx).await {
            // As the real server's decoder: no frame larger than a frame may be.
            Ok(Wire::Frame(bytes)) if bytes.len() > limits::CHUNK_FRAME_MESSAGE_MAX_BYTES => {
                Err(RpcError::Malformed(format!("a frame of {} bytes exceeds {}", bytes.len(), limits::CHUNK_FRAME_MESSAGE_MAX_BYTES)))
            }
            Ok(Wire::Frame(bytes)) => WriteChunkFrame::decode(bytes).map_err(|e| RpcError::Malformed(format!("bad frame: {e}"))),
            Ok(Wire::End) => return None,
            Ok(other) => Err(RpcError::Malformed(format!("unexpected {other:?} in a chunk stream"))),
            Err(e) => Err(RpcError::Transport(format!("the sender: {e}"))),
        };
        // An error ends the stream.
        let next = item.is_ok().then_some(rx);
        Some((item, next))
    })
    .boxed()
}

/// Admits a call at `path` or says why not; a refusal is logged as a TLS node logs one. `Err(None)`:
/// the handshake failed, and the connection is dropped unanswered.
fn admit(server: &SimCredentials, from: &SimCredentials, addr: SocketAddr, path: &str) -> Result<Peer, Option<RpcError>> {
    identity::admit(server, from, path, Some(addr.to_string())).map_err(|refused| {
        let caller = from.cert.as_ref().map(|c| c.caller.name.as_str()).unwrap_or("(no certificate)");
        tracing::warn!(peer = %addr, caller, "refused: {refused}");
        match refused {
            Refused::Handshake(_) => None,
            Refused::Role(refusal) => Some(RpcError::PermissionDenied(refusal.to_string())),
        }
    })
}

async fn handle_connection<S: SimService>(service: &S, credentials: &SimCredentials, addr: SocketAddr, tx: Sender, mut rx: Receiver) -> io::Result<()> {
    let encode = |r: Result<Bytes, RpcError>| Wire::Reply(r.map_err(|e| e.encode_detail()));
    // A refused call is answered at once (or, for a failed handshake, not at all).
    let refuse = |refusal: Option<RpcError>| {
        let tx = &tx;
        async move {
            match refusal {
                Some(e) => send(tx, encode(Err(e))).await,
                None => Ok(()),
            }
        }
    };
    match recv(&mut rx).await? {
        Wire::Unary { path, body, from } => {
            let peer = match admit(credentials, &from, addr, &path) {
                Ok(peer) => peer,
                Err(refusal) => return refuse(refusal).await,
            };
            // As the real servers' decoders: nothing larger than the call may carry.
            let max = if path.starts_with("/dfs.v1.ChunkBatchService/") { limits::CHUNK_BATCH_MESSAGE_MAX_BYTES } else { limits::UNARY_MESSAGE_MAX_BYTES };
            if body.len() > max {
                return refuse(Some(RpcError::InvalidArgument(format!("a request of {} bytes exceeds {max}", body.len())))).await;
            }
            // Cancelled when the caller goes away (a timeout, a crash), as tonic drops a
            // handler whose client reset the stream: handlers must not count on finishing.
            let Some(reply) = unless_caller_gone(&tx, service.unary(peer, path, body)).await else { return Ok(()) };
            let reply = reply.and_then(|reply| {
                if reply.len() > limits::UNARY_MESSAGE_MAX_BYTES {
                    return Err(RpcError::Internal(format!("reply of {} bytes exceeds {}", reply.len(), limits::UNARY_MESSAGE_MAX_BYTES)));
                }
                Ok(reply)
            });
            if reply_lost() {
                return Ok(());
            }
            send(&tx, encode(reply)).await
        }
        Wire::WriteChunk { service: which, from } => {
            if let Err(refusal) = admit(credentials, &from, addr, which.write_path()) {
                return refuse(refusal).await;
            }
            let handled = unless_caller_gone(&tx, service.write_chunk(which, incoming_frames(rx))).await;
            match handled {
                Some(_) if reply_lost() => Ok(()),
                Some(reply) => send(&tx, encode(reply.map(|r| Bytes::from(r.encode_to_vec())))).await,
                None => Ok(()),
            }
        }
        Wire::ReadChunk { body, from } => {
            if let Err(refusal) = admit(credentials, &from, addr, rpc::READ_CHUNK_PATH) {
                return refuse(refusal).await;
            }
            let request = match ReadChunkRequest::decode(body) {
                Ok(r) => r,
                Err(e) => return send(&tx, encode(Err(RpcError::InvalidArgument(format!("bad request: {e}"))))).await,
            };
            let streamed = async {
                let mut frames = match service.read_chunk(request).await {
                    Ok(frames) => frames,
                    Err(e) => return send(&tx, encode(Err(e))).await,
                };
                while let Some(frame) = frames.next().await {
                    match frame {
                        Ok(frame) => send(&tx, Wire::Frame(frame.encode_to_vec().into())).await?,
                        Err(e) => return send(&tx, encode(Err(e))).await,
                    }
                }
                send(&tx, Wire::End).await
            };
            unless_caller_gone(&tx, streamed).await.unwrap_or(Ok(()))
        }
        other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected opening {other:?}"))),
    }
}
