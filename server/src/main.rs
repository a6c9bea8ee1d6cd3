//! The `webfl` command line: parses and dispatches to [`webfl_server::cli`].

/// mimalloc returns freed memory to the system where glibc's per-thread arenas keep it: a
/// server that briefly holds many upload bodies or evaluation buffers does not stay that large.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    webfl_server::cli::main()
}
