//! The `webfl` command line: parses and dispatches to [`webfl_server::cli`].

/// mimalloc returns freed memory to the system where glibc's per-thread arenas keep it: a
/// server that briefly holds many upload bodies or evaluation buffers does not stay that large.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// How long freed memory stays mapped before mimalloc gives it back. Its default, 1 s, kept
/// ~150 MiB more resident under the 10,000-client load test (`webfl loadtest`), where a round's
/// uploads arrive at once; at 100 ms throughput was the same.
const PURGE_DELAY_MS: std::ffi::c_long = 100;

fn main() -> anyhow::Result<()> {
    // SAFETY: sets a plain integer option; mimalloc reads options on each purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    webfl_server::cli::main()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_mimallocs() {
        // mimalloc 3's default purge delay is 1000 ms (`options.c`); no neighbouring option has it.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) }, 1000);
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY - 1) }, 1);
    }
}
