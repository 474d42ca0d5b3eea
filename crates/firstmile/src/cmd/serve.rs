//! Helpers shared by the long-running subcommands (`director`, `entry`, `up`).

use crate::Failure;

/// Logs to stderr, filtered by RUST_LOG (else `default`), as JSON lines or compact text —
/// coloured only on a terminal (a log file or a journal gets plain text).
pub fn init_tracing(default: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().try_init()
    } else {
        b.compact().try_init()
    };
}

/// The multi-threaded runtime the services run on.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    runtime_with(0)
}

/// The multi-threaded runtime with `threads` workers (0 = one per CPU core).
pub fn runtime_with(threads: usize) -> Result<tokio::runtime::Runtime, Failure> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        b.worker_threads(threads);
    }
    b.enable_all()
        .build()
        .map_err(|e| Failure::other(anyhow::anyhow!("cannot start the runtime: {e}")))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn terminated() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down");
}
