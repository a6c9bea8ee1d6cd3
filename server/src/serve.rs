//! `webfl serve`: a task served to browser clients over HTTP, its versions kept in the embedded
//! store.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};

use crate::config::TaskConfig;
use crate::service::Service;
use crate::{api, store};

/// Serves `config` on `addr` until Ctrl-C, resuming the task stored under `data` if there is
/// one; serves the built pages from `www` when they are there.
pub fn run(addr: SocketAddr, config: &TaskConfig, data: &Path, www: &Path) -> Result<()> {
    let task = config.setup()?;
    let store = store::TaskDb::open(data, &task.name, &serde_json::to_string(config)?, store::unix_ms())
        .with_context(|| format!("opening the store in {}", data.display()))?;
    let state = Service::with_store(task, Box::new(store))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(url = %format!("http://{local}/"), upload_limit_bytes = state.upload_limit_bytes(), "webfl serving");
        // On stdout too, so scripts and tests that bind port 0 learn the address.
        println!("webfl serving at http://{local}/");
        let ticker = state.spawn_ticker();
        let service = state.clone();
        let app = if www.join("index.html").is_file() {
            api::app_with_pages(state, www)
        } else {
            tracing::warn!(www = %www.display(), "no built pages there (run scripts/build-web); serving the API only");
            api::app(state)
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("shutting down");
                // Long polls answer now instead of holding the shutdown for up to 20 s.
                service.shut_down();
            })
            .await
            .context("serving HTTP")?;
        ticker.abort();
        Ok(())
    })
}
