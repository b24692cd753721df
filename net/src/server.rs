//! Serving a router on a public port so that no client can hold the process: a request's
//! headers must arrive within a timeout (HTTP/1.1: also the wait for a kept-alive
//! connection's next request), a connection with no request in flight is closed after an
//! idle timeout (HTTP/1.1 and HTTP/2 alike), HTTP/2 connections carry a bounded number of
//! streams, and shutdown is graceful (in-flight requests and streams finish).
//!
//! [`BodyBudget`] is the other half: request bodies in flight bounded in bytes across the
//! process, each with a deadline by which it must have arrived.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::{CappedListener, CappedStream};

/// How long clients may take, and how many streams an HTTP/2 connection carries.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// A request's headers must arrive within this long.
    pub header_read: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle: Duration,
    /// Concurrent streams of one HTTP/2 connection.
    pub max_streams: u32,
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets
/// every connection finish its requests (streams included) and returns.
pub async fn serve(
    listener: CappedListener,
    app: Router,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()> + Send,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut listener = listener;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (io, _) = axum::serve::Listener::accept(&mut listener) => {
                connections.spawn(connection(io, app.clone(), timeouts, stop_rx.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
}

/// Requests in flight on one connection, and when that last changed.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    changed_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            changed_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn touch(&self) {
        self.changed_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    /// How long the connection has had no request in flight (`None` while it has one).
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.changed_ms.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(since))
    }
}

/// A request in flight until its response body is finished or dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

async fn connection(io: CappedStream, app: Router, t: Timeouts, mut stop: watch::Receiver<bool>) {
    let activity = Activity::new();
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let guard = activity.start();
            let app = app.clone();
            async move {
                let res = app.oneshot(req.map(Body::new)).await?;
                Ok::<_, Infallible>(res.map(|body| Body::new(Holding::new(body, guard))))
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(t.header_read);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(t.max_streams)
        .keep_alive_interval(t.idle / 2)
        .keep_alive_timeout(t.header_read);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut check = tokio::time::interval((t.idle / 8).max(Duration::from_millis(50)));
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.wait_for(|s| *s), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = check.tick(), if !closing => {
                if activity.idle_for().is_some_and(|d| d >= t.idle) {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// A body that holds `T` (a guard, a permit) until it is finished or dropped.
#[derive(Debug)]
pub struct Holding<T> {
    inner: Body,
    held: Option<T>,
}

impl<T> Holding<T> {
    pub fn new(inner: Body, held: T) -> Self {
        Self {
            inner,
            held: Some(held),
        }
    }
}

impl<T: Unpin + Send + 'static> http_body::Body for Holding<T> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let out = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = out {
            self.held = None;
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Request bodies in flight, bounded in bytes across the process, each with a deadline.
///
/// A request reserves its body's bytes (its `Content-Length`, or the largest body when it
/// has none) before its handler runs, and holds them until its response is finished.
/// Bodies above [`BodyBudget::LARGE`] may hold at most half of the budget together (or
/// one largest body, if that is more), so that small requests always find room. A request that finds no room within the body
/// deadline is refused (503); a body that has not arrived by its deadline fails with
/// [`BodyTimedOut`].
#[derive(Debug)]
pub struct BodyBudget {
    all: Arc<tokio::sync::Semaphore>,
    large: Arc<tokio::sync::Semaphore>,
    max_body: usize,
    deadline: Duration,
    refuse: fn(axum::http::StatusCode, String) -> Response,
}

/// Why a request body could not be read: it did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub Duration);

/// Whether `e` (or an error it wraps) is a [`BodyTimedOut`].
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Budget units are KiB (a semaphore counts in `u32`).
const UNIT: usize = 1024;

fn units(bytes: usize) -> u32 {
    bytes.div_ceil(UNIT).min(u32::MAX as usize) as u32
}

impl BodyBudget {
    /// Bodies larger than this draw from the large half of the budget too.
    pub const LARGE: usize = 1 << 20;

    /// A budget of `bytes` for bodies up to `max_body` each, which must arrive within
    /// `deadline`; `refuse` answers a request that found no room.
    pub fn new(
        bytes: usize,
        max_body: usize,
        deadline: Duration,
        refuse: fn(axum::http::StatusCode, String) -> Response,
    ) -> Arc<Self> {
        Arc::new(Self {
            all: Arc::new(tokio::sync::Semaphore::new(units(bytes) as usize)),
            large: Arc::new(tokio::sync::Semaphore::new(
                units((bytes / 2).max(max_body).min(bytes)) as usize,
            )),
            max_body,
            deadline,
            refuse,
        })
    }

    /// Bytes of the budget in use.
    pub fn in_use(&self, total: usize) -> usize {
        total.saturating_sub(self.all.available_permits() * UNIT)
    }

    /// Axum middleware (`from_fn_with_state(budget, BodyBudget::guard)`).
    pub async fn guard(
        axum::extract::State(b): axum::extract::State<Arc<Self>>,
        req: Request,
        next: axum::middleware::Next,
    ) -> Response {
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        // A body declared larger than the largest allowed is read up to that and refused
        // by the handler.
        let bytes = declared.unwrap_or(b.max_body).min(b.max_body);
        let deadline = tokio::time::Instant::now() + b.deadline;
        let reserve = async {
            let large = if bytes > Self::LARGE {
                Some(b.large.clone().acquire_many_owned(units(bytes)).await)
            } else {
                None
            };
            let all = b.all.clone().acquire_many_owned(units(bytes)).await;
            (all, large)
        };
        let permits = match tokio::time::timeout_at(deadline, reserve).await {
            Ok((Ok(all), large)) => (all, large.and_then(Result::ok)),
            _ => {
                return (b.refuse)(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "too many request bodies in flight to take {bytes} more bytes; try again"
                    ),
                );
            }
        };
        let timeout = b.deadline;
        let req = req.map(|body| {
            Body::new(Deadlined {
                inner: body,
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
                timeout,
                done: false,
            })
        });
        let res = next.run(req).await;
        res.map(|body| Body::new(Holding::new(body, permits)))
    }
}

/// A request body that fails with [`BodyTimedOut`] once its deadline passes.
struct Deadlined {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    done: bool,
}

impl http_body::Body for Deadlined {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(out) = Pin::new(&mut self.inner).poll_frame(cx) {
            if out.is_none() {
                self.done = true;
            }
            return Poll::Ready(out);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(self.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
