//! `webfl serve`: a task served to browser clients over HTTP, its versions kept in the embedded
//! store.
//!
//! The connection layer guards the process before any request reaches the API: at most
//! `[server] max_connections` connections (kept below the descriptor limit), each beyond that
//! answered `503` with `Retry-After` and closed at once; hyper's header-read timeout, and the
//! same timeout for connections idle between requests; and (in the API's extractors) a deadline
//! for bodies. So half-sent headers, silent sockets and stalled bodies cannot pile up until
//! accept fails. An idle connection holds no hyper state, only its socket ([`idle`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use hyper_util::rt::TokioTimer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config::{ServerConfig, TaskConfig};
use crate::service::Service;
use crate::{api, store};

mod idle;

/// Descriptors kept free beyond the connection limit: the store, logs, shed answers, accept.
const RESERVED_DESCRIPTORS: u64 = 64;
/// Connections being answered `503` at once; beyond that they are closed without an answer.
const SHEDDING_AT_ONCE: usize = 32;
/// How long a shed connection is given to read its `503` before it is closed.
const SHED_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// What a shed connection is told.
const SHED_ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 2\r\n\
connection: close\r\ncontent-length: 86\r\n\r\n\
{\"error\":\"overloaded\",\"message\":\"the server is at its connection limit; retry in 2 s\"}";
/// Largest read buffer of one connection (hyper's minimum is 8 KiB + one 4 KiB read).
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// How long open connections get to finish after Ctrl-C (held check-ins are answered at once).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `config` on `addr` until Ctrl-C, resuming the task stored under `data` if there is
/// one; serves the built pages from `www` when they are there.
pub fn run(addr: SocketAddr, config: &TaskConfig, data: &Path, www: &Path) -> Result<()> {
    let task = config.setup()?;
    let store = store::TaskDb::open(data, &task.name, &config.identity_json()?, store::unix_ms())
        .with_context(|| format!("opening the store in {}", data.display()))?;
    let state = Service::with_store(task, Box::new(store))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        let max_connections = connection_limit(config.server.max_connections);
        tracing::info!(
            url = %format!("http://{local}/"),
            upload_limit_bytes = state.upload_limit_bytes(),
            max_connections,
            "webfl serving"
        );
        // On stdout too, so scripts and tests that bind port 0 learn the address.
        println!("webfl serving at http://{local}/");
        let ticker = state.spawn_ticker();
        let service = state.clone();
        let last = state.clone();
        let app = if www.join("index.html").is_file() {
            api::app_with_pages(state, www)
        } else {
            tracing::warn!(www = %www.display(), "no built pages there (run scripts/build-web); serving the API only");
            api::app(state)
        };
        let shutdown = async move {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
            // Long polls answer now instead of holding the shutdown for up to 20 s.
            service.shut_down();
        };
        serve(listener, app, &config.server, max_connections, shutdown).await;
        ticker.abort();
        // Client bookkeeping still queued is written before the process ends.
        let _ = tokio::task::spawn_blocking(move || last.flush_clients()).await;
        Ok(())
    })
}

/// The connection limit: the configured one, lowered to fit the process's descriptor limit
/// (raised first to its hard maximum).
fn connection_limit(configured: usize) -> usize {
    let descriptors = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the descriptor limit; assuming 1024");
            1024
        }
    };
    let fits = descriptors.saturating_sub(RESERVED_DESCRIPTORS).max(1) as usize;
    if fits < configured {
        tracing::warn!(configured, descriptors, limit = fits, "lowering max_connections to fit the descriptor limit");
    }
    configured.min(fits)
}

/// Accepts connections until `shutdown` resolves, then lets open ones finish (briefly).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &ServerConfig,
    max_connections: usize,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let open = Arc::new(Semaphore::new(max_connections));
    let shedding = Arc::new(Semaphore::new(SHEDDING_AT_ONCE));
    let (stopping, _) = tokio::sync::watch::channel(false);
    let header_timeout = Duration::from_secs_f64(config.header_timeout_secs);
    let mut http = hyper::server::conn::http1::Builder::new();
    // A small read buffer per connection: hyper grows it towards ~400 KiB for large bodies,
    // which at thousands of busy connections is gigabytes; bodies still stream through.
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(READ_BUFFER_BYTES);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors (or a connection reset before accept): wait, then go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            shed(stream, &shedding);
            continue;
        };
        let (app, http, stopping) = (app.clone(), http.clone(), stopping.subscribe());
        tokio::spawn(async move {
            // hyper holds the connection only while it is busy; silent past the header timeout,
            // it is closed.
            if let idle::Ended::Failed(e) =
                idle::serve_connection(stream, peer, app, http, header_timeout, stopping).await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    // Every connection holds a permit until it ends: all of them back means all are closed.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, open.acquire_many(all)).await.is_err() {
        tracing::warn!("connections still open after the shutdown grace period; closing them");
    }
}

/// Answers a connection over the limit with `503` + `Retry-After` and closes it. The answer
/// fits a fresh socket's send buffer, so it is written without waiting; a few connections at a
/// time are then closed gently (reading what the client sent, so the close does not reset the
/// answer away), the rest at once.
fn shed(stream: TcpStream, shedding: &Arc<Semaphore>) {
    // Straight to the kernel: tokio's own `try_write` would refuse until the reactor has seen
    // the new socket writable.
    let Ok(socket) = stream.into_std() else { return };
    let _ = std::io::Write::write(&mut &socket, SHED_ANSWER);
    let Ok(permit) = shedding.clone().try_acquire_owned() else { return };
    let Ok(mut stream) = TcpStream::from_std(socket) else { return };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(SHED_WRITE_TIMEOUT, async {
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        drop(permit);
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shed_answer_declares_its_length() {
        let text = std::str::from_utf8(super::SHED_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "overloaded");
    }
}
