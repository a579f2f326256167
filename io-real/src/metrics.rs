//! What a server's RPC port does, for its operator's metrics: every call by method and gRPC
//! status with its latency, calls in progress, and the bytes its connections carry. Observes
//! only: a tower layer around tonic's services and a counting wrapper around accepted
//! connections, feeding `prometheus-client` families that the daemon's `/metrics` encodes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `Service/Method`, e.g. `MetadataService/Lookup`; `other` for a path no service has.
    pub method: String,
    /// The gRPC status code's name: `Ok`, `NotFound`, `Unavailable`...
    pub code: String,
}

type HistogramFamily = Family<RpcLabels, Histogram, fn() -> Histogram>;

/// One server's RPC figures.
pub struct RpcMetrics {
    duration: HistogramFamily,
    in_flight: Gauge,
    received: Counter,
    sent: Counter,
}

/// Latency buckets: 0.5 ms to 16 s, doubling (a small metadata call to a large chunk stream).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl RpcMetrics {
    /// New families, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = RpcMetrics {
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            in_flight: Gauge::default(),
            received: Counter::default(),
            sent: Counter::default(),
        };
        registry.register_with_unit(
            "dfs_rpc_server_duration",
            "RPCs this node served, by method and gRPC status, and how long each took (to its last byte)",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        registry.register("dfs_rpc_server_in_flight", "RPCs being served now", metrics.in_flight.clone());
        registry.register_with_unit("dfs_rpc_received", "Bytes received on this node's RPC connections", Unit::Bytes, metrics.received.clone());
        registry.register_with_unit("dfs_rpc_sent", "Bytes sent on this node's RPC connections", Unit::Bytes, metrics.sent.clone());
        Arc::new(metrics)
    }

    fn done(&self, method: &str, code: tonic::Code, started: Instant) {
        // A method no service has is answered Unimplemented: one label for all of them, so a
        // caller cannot grow the metrics without bound.
        let method = if code == tonic::Code::Unimplemented { "other".to_string() } else { method.to_string() };
        let labels = RpcLabels { method, code: format!("{code:?}") };
        self.duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        self.in_flight.dec();
    }
}

/// `Service/Method` from a gRPC path (`/dfs.v1.MetadataService/Lookup`).
fn method_of(path: &str) -> String {
    let path = path.trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let service = service.rsplit('.').next().unwrap_or(service);
    format!("{service}/{method}")
}

/// The tower layer tonic's `Server::builder().layer(..)` takes.
#[derive(Clone)]
pub struct RpcMetricsLayer(pub Arc<RpcMetrics>);

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = Observed<S>;
    fn layer(&self, inner: S) -> Observed<S> {
        Observed { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct Observed<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Observed<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: http_body::Body<Data = Bytes>,
{
    type Response = http::Response<ObservedBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_of(request.uri().path());
        let metrics = self.metrics.clone();
        metrics.in_flight.inc();
        let started = Instant::now();
        let mut call = Call { metrics: Some(metrics), method, started };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match response.await {
                Ok(r) => r,
                Err(e) => {
                    call.finish(tonic::Code::Internal);
                    return Err(e);
                }
            };
            // An error answered at once travels in the headers (trailers-only); otherwise the
            // status comes in the trailers, after the body.
            if let Some(code) = grpc_code(response.headers()) {
                call.finish(code);
            }
            let (parts, body) = response.into_parts();
            Ok(http::Response::from_parts(parts, ObservedBody { inner: body, call }))
        })
    }
}

fn grpc_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(value))
}

/// A call not yet counted; counted once, when its status is known or when it is dropped (the
/// client went away: `Cancelled`).
struct Call {
    metrics: Option<Arc<RpcMetrics>>,
    method: String,
    started: Instant,
}

impl Call {
    fn finish(&mut self, code: tonic::Code) {
        if let Some(m) = self.metrics.take() {
            m.done(&self.method, code, self.started);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its call when the trailers (with the status) go out.
    pub struct ObservedBody<R> {
        #[pin]
        inner: R,
        call: Call,
    }
}

impl<R: http_body::Body<Data = Bytes>> http_body::Body for ObservedBody<R> {
    type Data = Bytes;
    type Error = R::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, R::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_code) {
                    this.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish(tonic::Code::Internal),
            // Ended with no status in trailers: a gRPC server always sends one, so this is Ok
            // only by default.
            Poll::Ready(None) => this.call.finish(tonic::Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// An accepted connection whose bytes are counted.
    pub struct CountedStream {
        #[pin]
        inner: TcpStream,
        metrics: Arc<RpcMetrics>,
    }
}

impl CountedStream {
    pub fn new(inner: TcpStream, metrics: Arc<RpcMetrics>) -> Self {
        CountedStream { inner, metrics }
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        this.metrics.received.inc_by((buf.filled().len() - before) as u64);
        polled
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &polled {
            this.metrics.sent.inc_by(*n as u64);
        }
        polled
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &polled {
            this.metrics.sent.inc_by(*n as u64);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for CountedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_named_by_service_and_method() {
        assert_eq!(method_of("/dfs.v1.MetadataService/Lookup"), "MetadataService/Lookup");
        assert_eq!(method_of("/x"), "x/");
    }
}
