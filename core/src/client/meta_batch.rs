//! Coalesces one client's concurrent metadata calls of a kind (`CreateFile`, `CommitFile`,
//! `GetFile`) into batch calls (`CreateFiles`, `CommitFiles`, `GetFiles`), so that many small
//! files in flight share round trips and Raft entries. The same coalescer, with another `Sink`,
//! batches small chunk writes and reads to one storage node (`chunk_batch`).
//!
//! What it promises: a call answers exactly what the single call would have answered, item
//! by item. The server applies a batch as one log entry whose commands keep their own
//! results, so an item's error is that item's (caller's or world's, as before). An item the
//! server answers with a retryable error (too many uploads, reply too large for the batch), and
//! every item of a batch whose background task is gone, is sent again alone through the
//! single call and its retry policy; a failure of the whole batch call (after the metadata
//! client's own retries) is every item's. What it does not promise: order between items.
//!
//! How it is driven: the first call starts a background task (on the environment's runtime)
//! that lives as long as the coalescer. Callers queue their item and wait for its answer; the
//! task sends the first queued item at once, and items that arrive while batches are in
//! flight (at most `in_flight_max`) go together in the next one: no timer, no delay when idle.
//! The queue is bounded (`queued_max`): callers beyond it wait for room. A caller that gives up
//! leaves its item in the batch; its answer is dropped.

use std::sync::Mutex;

use futures::channel::{mpsc, oneshot};
use futures::future::{select, Either};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::SinkExt;

use crate::env::Env;
use crate::meta_client::MetaClient;
use crate::proto;
use crate::rpc::{Rpc, RpcError};

/// Bounds of one coalescer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Items per batch call (the server takes at most `limits::BATCH_FILES_MAX`);
    /// 1 or less turns batching off: every call goes alone.
    pub files_max: usize,
    /// Chunk records per batch call, all items together (the server's `RECORD_CHUNKS_MAX`).
    pub records_max: usize,
    /// Batch calls in flight at once.
    pub in_flight_max: usize,
    /// Items waiting for a batch before callers wait for room.
    pub queued_max: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits { files_max: crate::limits::BATCH_FILES_MAX, records_max: crate::limits::RECORD_CHUNKS_MAX, in_flight_max: 2, queued_max: 1024 }
    }
}

/// A single call and its batch form.
pub trait BatchKind: Send + Sync + 'static {
    type Item: Clone + Send + Sync + 'static;
    /// What one item's call answers.
    type Reply: Send + 'static;
    type Batch: Rpc;
    /// What `item` weighs against `BatchLimits::records_max`: chunk records for commits, bytes
    /// for chunk writes.
    fn records(_item: &Self::Item) -> usize {
        0
    }
    fn batch(items: Vec<Self::Item>) -> Self::Batch;
    /// The items' results, in the batch's order.
    fn results(reply: <Self::Batch as Rpc>::Response) -> Vec<Result<Self::Reply, RpcError>>;
    /// Whether an item the batch answered with `error` is sent again alone.
    fn alone_after(error: &RpcError) -> bool {
        error.is_retryable()
    }
}

/// Where a coalescer's calls go: the batch call, and the single call of an item sent alone.
pub trait Sink<K: BatchKind>: Clone + Send + Sync + 'static {
    fn call_batch(&self, batch: K::Batch) -> impl std::future::Future<Output = Result<<K::Batch as Rpc>::Response, RpcError>> + Send;
    fn call_one(&self, item: K::Item) -> impl std::future::Future<Output = Reply<K>> + Send;
}

/// The metadata leader, through the metadata client (its retries, its leader following).
impl<E: Env, K: BatchKind> Sink<K> for MetaClient<E>
where
    K::Item: Rpc<Response = K::Reply>,
{
    fn call_batch(&self, batch: K::Batch) -> impl std::future::Future<Output = Result<<K::Batch as Rpc>::Response, RpcError>> + Send {
        self.call(batch)
    }
    fn call_one(&self, item: K::Item) -> impl std::future::Future<Output = Reply<K>> + Send {
        self.call(item)
    }
}

type Reply<K> = Result<<K as BatchKind>::Reply, RpcError>;

/// How the background task answers one item.
enum Answer<K: BatchKind> {
    Done(Reply<K>),
    /// Send it alone (the server asked for it, or the batch could not take it).
    Alone,
}

type Waiting<K> = (<K as BatchKind>::Item, oneshot::Sender<Answer<K>>);

pub struct Coalescer<E: Env, K: BatchKind, S: Sink<K> = MetaClient<E>> {
    sink: S,
    limits: BatchLimits,
    /// The background task's queue, once started.
    queue: Mutex<Option<mpsc::Sender<Waiting<K>>>>,
    _env: std::marker::PhantomData<fn() -> E>,
}

impl<E: Env, K: BatchKind, S: Sink<K>> Coalescer<E, K, S> {
    pub fn new(sink: S, limits: BatchLimits) -> Self {
        Coalescer { sink, limits, queue: Mutex::new(None), _env: std::marker::PhantomData }
    }

    pub async fn call(&self, item: K::Item) -> Reply<K> {
        if self.limits.files_max <= 1 || K::records(&item) > self.limits.records_max {
            return self.sink.call_one(item).await;
        }
        let mut queue = self.queue();
        let (tx, rx) = oneshot::channel();
        // The task is gone only if its runtime is (a node stopping): then the item goes alone.
        let answer = match queue.send((item.clone(), tx)).await {
            Ok(()) => rx.await.unwrap_or(Answer::Alone),
            Err(_) => Answer::Alone,
        };
        match answer {
            Answer::Done(reply) => reply,
            Answer::Alone => self.sink.call_one(item).await,
        }
    }

    /// The background task's queue, starting the task on first use.
    fn queue(&self) -> mpsc::Sender<Waiting<K>> {
        let mut queue = self.queue.lock().expect("coalescer lock");
        if let Some(q) = queue.as_ref().filter(|q| !q.is_closed()) {
            return q.clone();
        }
        let (tx, rx) = mpsc::channel(self.limits.queued_max);
        // Detached: it ends when the coalescer (holding the only long-lived sender) is dropped.
        drop(<E::RaftRuntime as openraft::AsyncRuntime>::spawn(run::<K, S>(self.sink.clone(), self.limits, rx)));
        *queue = Some(tx.clone());
        tx
    }
}

async fn run<K: BatchKind, S: Sink<K>>(sink: S, limits: BatchLimits, mut rx: mpsc::Receiver<Waiting<K>>) {
    let in_flight_max = limits.in_flight_max.max(1);
    let mut in_flight = FuturesUnordered::new();
    // An item taken from the queue that did not fit the batch before: starts the next.
    let mut held: Option<Waiting<K>> = None;
    loop {
        let next = if let Some(w) = held.take() {
            Some(w)
        } else if in_flight.is_empty() {
            rx.next().await
        } else if in_flight.len() >= in_flight_max {
            in_flight.next().await;
            continue;
        } else {
            match select(rx.next(), in_flight.next()).await {
                Either::Left((next, _)) => next,
                Either::Right(_) => continue,
            }
        };
        let Some(first) = next else { break };
        let mut records = K::records(&first.0);
        let mut batch = vec![first];
        while batch.len() < limits.files_max {
            match rx.try_recv() {
                Ok(w) if records + K::records(&w.0) <= limits.records_max => {
                    records += K::records(&w.0);
                    batch.push(w);
                }
                Ok(w) => {
                    held = Some(w);
                    break;
                }
                _ => break,
            }
        }
        in_flight.push(flush::<K, S>(&sink, batch));
        if held.is_some() && in_flight.len() >= in_flight_max {
            in_flight.next().await;
        }
    }
    while in_flight.next().await.is_some() {}
}

/// One batch call; answers every item.
async fn flush<K: BatchKind, S: Sink<K>>(sink: &S, batch: Vec<Waiting<K>>) {
    let (items, replies): (Vec<K::Item>, Vec<_>) = batch.into_iter().unzip();
    match sink.call_batch(K::batch(items)).await {
        Ok(reply) => {
            let mut results = K::results(reply).into_iter();
            for reply in replies {
                let answer = match results.next() {
                    Some(Err(e)) if K::alone_after(&e) => Answer::Alone,
                    Some(result) => Answer::Done(result),
                    None => Answer::Done(Err(RpcError::Malformed("a batch reply holds fewer results than the batch had items".into()))),
                };
                let _ = reply.send(answer); // the caller may have given up
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Answer::Done(Err(e.clone())));
            }
        }
    }
}

pub(super) fn missing() -> RpcError {
    RpcError::Malformed("a batch reply item carries no result".into())
}

pub struct Creates;
impl BatchKind for Creates {
    type Item = proto::CreateFileRequest;
    type Reply = proto::CreateFileResponse;
    type Batch = proto::CreateFilesRequest;
    fn batch(files: Vec<Self::Item>) -> Self::Batch {
        proto::CreateFilesRequest { files }
    }
    fn results(reply: proto::CreateFilesResponse) -> Vec<Result<proto::CreateFileResponse, RpcError>> {
        use proto::create_file_result::Result as R;
        reply
            .results
            .into_iter()
            .map(|r| match r.result {
                Some(R::Ok(ok)) => Ok(ok),
                Some(R::Error(e)) => Err(RpcError::from_detail(e)),
                None => Err(missing()),
            })
            .collect()
    }
}

pub struct Commits;
impl BatchKind for Commits {
    type Item = proto::CommitFileRequest;
    type Reply = proto::CommitFileResponse;
    type Batch = proto::CommitFilesRequest;
    fn records(item: &Self::Item) -> usize {
        item.chunks.len()
    }
    fn batch(files: Vec<Self::Item>) -> Self::Batch {
        proto::CommitFilesRequest { files }
    }
    fn results(reply: proto::CommitFilesResponse) -> Vec<Result<proto::CommitFileResponse, RpcError>> {
        use proto::commit_file_result::Result as R;
        reply
            .results
            .into_iter()
            .map(|r| match r.result {
                Some(R::Ok(ok)) => Ok(ok),
                Some(R::Error(e)) => Err(RpcError::from_detail(e)),
                None => Err(missing()),
            })
            .collect()
    }
}

pub struct Gets;
impl BatchKind for Gets {
    type Item = proto::GetFileRequest;
    type Reply = proto::GetFileResponse;
    type Batch = proto::GetFilesRequest;
    fn batch(files: Vec<Self::Item>) -> Self::Batch {
        proto::GetFilesRequest { files }
    }
    fn results(reply: proto::GetFilesResponse) -> Vec<Result<proto::GetFileResponse, RpcError>> {
        use proto::get_file_result::Result as R;
        reply
            .results
            .into_iter()
            .map(|r| match r.result {
                Some(R::Ok(ok)) => Ok(ok),
                Some(R::Error(e)) => Err(RpcError::from_detail(e)),
                None => Err(missing()),
            })
            .collect()
    }
}
