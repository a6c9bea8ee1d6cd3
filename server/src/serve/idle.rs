//! Keep-alive connections that cost next to nothing while idle.
//!
//! hyper gives every connection a read buffer and a write buffer (8 KiB each, the read one
//! grown by bodies) and keeps them until the connection closes. Browsers poll and keep their
//! connection open between polls, so at 10,000 clients those buffers were most of the
//! server's memory while almost every connection sat idle. As nginx does for idle keep-alive
//! connections, a connection here holds hyper only while a request is being read or answered:
//! between requests hyper is let go (its buffers freed) and the bare socket waits to become
//! readable again, then a fresh hyper connection takes the next request.
//!
//! hyper has no "stop between requests" call, so [`Watched`] tells it the peer closed: a read
//! that would block, with no request in flight, the last response flushed and no byte of a
//! next request read, is answered end-of-file. hyper then closes the exchange cleanly (no
//! response is cut: the answer has been flushed) and hands the socket back through
//! `poll_without_shutdown`, with any bytes it read ahead. A client that pipelines a request
//! before reading the previous answer may see its connection closed after that answer, which
//! HTTP/1.1 clients must handle anyway; browsers do not pipeline.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::{Buf, Bytes};
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tower::ServiceExt;

/// What the socket wrapper and the request handler of one hyper connection share.
#[derive(Default)]
struct Exchange {
    /// Requests dispatched whose responses have not been written to the end.
    in_flight: AtomicUsize,
    /// The last request's body has been read to its end: hyper is between requests once the
    /// answer is out (a body left unread makes hyper close the connection instead).
    request_read: AtomicBool,
    /// Bytes of a next request have been read: hyper is mid-head, not idle.
    partial: AtomicBool,
    /// The last flush came after the last response ended: nothing is left to write.
    flushed: AtomicBool,
    /// The peer really closed its side (a read returned 0 bytes).
    peer_closed: AtomicBool,
    /// An idle read was answered end-of-file: hyper let go to wait, not to close.
    parked: AtomicBool,
}

impl Exchange {
    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.request_read.load(Ordering::Acquire)
            && !self.partial.load(Ordering::Acquire)
            && self.flushed.load(Ordering::Acquire)
    }
}

/// The socket as one hyper connection sees it: first the bytes the previous one read ahead,
/// then the stream; an idle would-block read reads as end-of-file (see the module docs).
struct Watched {
    stream: TcpStream,
    ahead: Bytes,
    exchange: Arc<Exchange>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.ahead.is_empty() {
            let n = this.ahead.len().min(buf.remaining());
            buf.put_slice(&this.ahead[..n]);
            this.ahead.advance(n);
            this.exchange.partial.store(true, Ordering::Release);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending if this.exchange.idle() => {
                this.exchange.parked.store(true, Ordering::Release);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) => {
                let exchange = &this.exchange;
                if buf.filled().len() == before {
                    exchange.peer_closed.store(true, Ordering::Release);
                } else if exchange.in_flight.load(Ordering::Acquire) == 0 {
                    exchange.partial.store(true, Ordering::Release);
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.exchange.flushed.store(false, Ordering::Release);
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.exchange.flushed.store(false, Ordering::Release);
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.stream).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) && this.exchange.in_flight.load(Ordering::Acquire) == 0 {
            this.exchange.flushed.store(true, Ordering::Release);
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Counts a request in flight until its response body has been written to the end (hyper
/// drops the body then) or abandoned.
struct InFlight(Arc<Exchange>);

impl InFlight {
    fn start(exchange: &Arc<Exchange>, body_empty: bool) -> Self {
        exchange.in_flight.fetch_add(1, Ordering::AcqRel);
        exchange.request_read.store(body_empty, Ordering::Release);
        exchange.partial.store(false, Ordering::Release);
        exchange.flushed.store(false, Ordering::Release);
        InFlight(exchange.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request body that marks its [`Exchange`] when it has been read to the end.
struct ReadToEnd {
    body: hyper::body::Incoming,
    exchange: Arc<Exchange>,
}

impl hyper::body::Body for ReadToEnd {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || this.body.is_end_stream() {
            this.exchange.request_read.store(true, Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that holds its request's [`InFlight`].
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// How a connection ended, for the log.
pub(super) enum Ended {
    /// The peer closed it, or it stayed silent past the idle timeout, or the server is stopping.
    Closed,
    Failed(hyper::Error),
}

/// Serves one accepted connection until it closes: a fresh hyper connection per busy spell,
/// the bare socket in between (closed after `idle_timeout` of silence or when `stopping`
/// changes).
pub(super) async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    http: hyper::server::conn::http1::Builder,
    idle_timeout: Duration,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Ended {
    let mut ahead = Bytes::new();
    loop {
        if ahead.is_empty() {
            tokio::select! {
                readable = tokio::time::timeout(idle_timeout, stream.readable()) => {
                    if !matches!(readable, Ok(Ok(()))) {
                        return Ended::Closed;
                    }
                }
                _ = stopping.changed() => return Ended::Closed,
            }
        }
        let exchange = Arc::new(Exchange { flushed: AtomicBool::new(true), ..Exchange::default() });
        let handler = {
            let (exchange, app) = (exchange.clone(), app.clone());
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let in_flight = InFlight::start(&exchange, hyper::body::Body::is_end_stream(req.body()));
                let exchange = exchange.clone();
                let mut req = req.map(|body| Body::new(ReadToEnd { body, exchange }));
                req.extensions_mut().insert(ConnectInfo(peer));
                let answer = app.clone().oneshot(req);
                // Boxed: hyper hands the connection back only from an `Unpin` one.
                Box::pin(async move {
                    let response = answer.await?;
                    Ok::<_, std::convert::Infallible>(response.map(|body| Tracked { body, _in_flight: in_flight }))
                })
            })
        };
        let io = Watched { stream, ahead, exchange: exchange.clone() };
        let mut conn = http.serve_connection(TokioIo::new(io), handler);
        let mut stop = pin!(stopping.changed());
        let mut draining = false;
        let served = std::future::poll_fn(|cx| {
            if !draining && stop.as_mut().poll(cx).is_ready() {
                // Finish the request being answered, then close.
                Pin::new(&mut conn).graceful_shutdown();
                draining = true;
            }
            conn.poll_without_shutdown(cx)
        })
        .await;
        if let Err(e) = served {
            return Ended::Failed(e);
        }
        let parts = conn.into_parts();
        stream = parts.io.into_inner().stream;
        ahead = parts.read_buf;
        // Closed by hyper itself (the client asked to, or left a body unread), by the peer or
        // for the shutdown: end it as hyper would have.
        if draining || exchange.peer_closed.load(Ordering::Acquire) || !exchange.parked.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(idle_timeout, stream.shutdown()).await;
            return Ended::Closed;
        }
    }
}
