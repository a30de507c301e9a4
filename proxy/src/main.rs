//! `etcd-broker-proxy`: the binary. Parses the flags (`--help`), logs (tracing), serves until
//! SIGTERM or Ctrl-C. Exit codes: 0 after a clean stop, 1 when it cannot start or serve (the
//! error chain is printed), 2 for bad usage (clap's, and flags whose values are unusable).

use std::process::ExitCode;

use clap::Parser;
use etcd_broker_proxy::config::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match args.into_config(std::env::var("ETCD_BROKER_PROXY_PASSWORD").ok()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("etcd-broker-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
    // One thread by default: on loopback a request's tasks (the client's connection, the
    // handler, the channel to etcd) woke each other across two workers, and that cost more CPU
    // than the request itself (docs/performance.md, the tenant proxy).
    let mut builder = match config.workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        workers => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("etcd-broker-proxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(etcd_broker_proxy::server::run(config, shutdown())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etcd-broker-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM (bpm, systemd) or Ctrl-C.
async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
