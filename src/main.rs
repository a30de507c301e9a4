//! The `etcd-broker` binary: load the config, start the OSB API, serve until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use etcd_broker::config::Config;
use etcd_broker::{logging, server};

/// An Open Service Broker for etcd: isolated, revocable etcd namespaces on a shared cluster.
#[derive(Debug, Parser)]
#[command(name = "etcd-broker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the OSB API until SIGTERM or SIGINT (in-flight requests are drained).
    Serve {
        /// The TOML config file (see docs/config.md); ETCD_BROKER__* variables override it.
        #[arg(long, env = "ETCD_BROKER_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and exit: 0 if valid, 1 with the offending field if not.
    CheckConfig {
        /// The TOML config file.
        #[arg(long, env = "ETCD_BROKER_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etcd-broker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig { config } => {
            Config::load(&config)?;
            println!("{}: valid", config.display());
            Ok(())
        }
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            logging::init(config.log_level, config.log_format);
            actix_web::rt::System::new().block_on(async move {
                let running = server::start(&config)?;
                tracing::info!(addr = %running.addr, "etcd-broker listening");
                running.serve().await?;
                tracing::info!("etcd-broker stopped");
                Ok(())
            })
        }
    }
}
