//! The connections, accepted here rather than by `axum::serve`, for what it does not offer:
//! a deadline for each request's head, which also bounds how long a connection may sit idle
//! between requests (a client that sends a byte a second, or nothing, is dropped), and a bound
//! on the connections held. At the bound, the connection idle the longest (no request in
//! flight) is closed to make room; when every connection has a request in flight, the new one
//! gets a 503 and is closed. So clients that open connections and send nothing cannot lock
//! others out, however many they open. A client that stops reading its response is dropped
//! too, once a write to it has waited the same deadline ([`WriteDeadline`]): its sample then
//! ends and gives its worker back.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// How long a client has to send a request's head (and, once connected or after a response,
/// to start the next one), and how many connections are held at once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub read_timeout: Duration,
    pub max_connections: usize,
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Requests whose response is not finished (its body not yet dropped).
    in_flight: AtomicUsize,
    /// When it last had nothing in flight (milliseconds since the server started).
    idle_since: AtomicU64,
    /// Closes it (its task drops the connection).
    close: Notify,
}

/// The open connections, by a number of their own.
#[derive(Default)]
struct Table {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Room for one more connection, made by closing the one idle the longest when the table
    /// is full; `None` when it is full of connections with requests in flight.
    fn admit(&self, max: usize, now: u64) -> Option<(u64, Arc<Conn>)> {
        let mut conns = self.lock();
        if conns.len() >= max {
            let idle = conns
                .iter()
                .filter(|(_, c)| c.in_flight.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, c)| c.idle_since.load(Ordering::Acquire))
                .map(|(&id, _)| id)?;
            if let Some(victim) = conns.remove(&idle) {
                victim.close.notify_one();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now),
            close: Notify::new(),
        });
        conns.insert(id, conn.clone());
        Some((id, conn))
    }
}

/// Accepts connections on `listener` and serves `router` on each, within `limits`, until
/// dropped; dropping it closes every connection it opened (their tasks are in its `JoinSet`).
pub(crate) async fn serve(listener: TcpListener, router: Router, limits: Limits) {
    let table = Arc::new(Table::default());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            // Out of file descriptors or the like: wait for connections to close.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Each character goes out as it is drawn: no waiting to fill a packet (Nagle's
        // algorithm would hold a small write back until the last one is acknowledged).
        let _ = tcp.set_nodelay(true);
        let now = start.elapsed().as_millis() as u64;
        match table.admit(limits.max_connections, now) {
            Some((id, conn)) => {
                let (table, router) = (table.clone(), router.clone());
                tasks.spawn(async move {
                    serve_one(tcp, router, &conn, start, limits.read_timeout).await;
                    table.lock().remove(&id);
                });
            }
            None => {
                tasks.spawn(refuse(tcp));
            }
        }
    }
}

/// Answers a connection beyond the bound with a 503 and closes it.
async fn refuse(tcp: TcpStream) {
    let body =
        "{\"error\": \"the server holds as many connections as it may: try again in a moment\"}\n";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        let mut rest = answer.as_bytes();
        while !rest.is_empty() {
            tcp.writable().await?;
            match tcp.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Serves HTTP/1 on one connection until the client closes it, its head deadline passes, or
/// the table closes it to make room.
async fn serve_one(
    tcp: TcpStream,
    router: Router,
    conn: &Arc<Conn>,
    start: Instant,
    read_timeout: Duration,
) {
    let tracked = conn.clone();
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let guard = InFlight::new(tracked.clone(), start);
        let mut router = router.clone();
        async move {
            let response = tower_service::Service::call(&mut router, req.map(Body::new)).await?;
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                Body::new(Tracked {
                    body,
                    _guard: guard,
                })
            }))
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    let io = TokioIo::new(WriteDeadline::new(tcp, read_timeout));
    let connection = http.serve_connection(io, service);
    tokio::select! {
        _ = connection => {}
        () = conn.close.notified() => {}
    }
}

/// A request in flight on a connection, from its head to the end of its response.
struct InFlight {
    conn: Arc<Conn>,
    start: Instant,
}

impl InFlight {
    fn new(conn: Arc<Conn>, start: Instant) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Self { conn, start }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.conn.idle_since.store(now, Ordering::Release);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it is done (or dropped).
struct Tracked {
    body: Body,
    _guard: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A stream whose writes fail with [`std::io::ErrorKind::TimedOut`] once one has waited
/// `limit` without progress: a client that stops reading cannot hold its connection, and the
/// sample streaming to it, forever. Reads pass through.
pub(crate) struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write (or flush) is waiting; reset by any progress.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub(crate) fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            timer: None,
        }
    }

    /// `poll`'s result, with the timer disarmed on progress and armed (or checked) while it
    /// waits.
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if poll.is_ready() {
            self.timer = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing of its response in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.deadline(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.deadline(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.deadline(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.deadline(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A reader that stops reading makes the writer's wait end in `TimedOut` after the limit;
    /// one that reads, however slowly, keeps it going.
    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_past_the_limit_fails_and_progress_resets_it() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut ours = WriteDeadline::new(ours, Duration::from_secs(10));
        // The pipe holds 64 bytes; a reader that takes 32 every 9 s keeps the writer going.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 32];
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_secs(9)).await;
                theirs.read_exact(&mut buf).await.unwrap();
            }
            theirs // then it stops reading, and keeps its end open
        });
        let started = tokio::time::Instant::now();
        let mut sent = 0;
        let err = loop {
            match ours.write(&[7u8; 16]).await {
                Ok(n) => sent += n,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        // 64 bytes in the pipe and 6 reads of 32: all of it written before the reader stopped.
        assert_eq!(sent, 64 + 6 * 32);
        // The reader's last read was at 54 s; the writer then waited 10 s more.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(64) && waited < Duration::from_secs(65),
            "{waited:?}"
        );
        drop(reader.await.unwrap());
    }
}
