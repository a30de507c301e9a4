//! `etcd-broker-ops`: the operators' CLI.
//!
//! - `dev` (dev.rs): a local etcd with auth plus the broker, and `.dev/env` for scripts.
//! - `names` (names.rs): the keys, user and role an instance/binding id maps to.
//! - `bench` (bench/): latency and throughput per operation against the etcd floor.
//! - `blackbox` (blackbox/): the end-to-end suite against any deployment (osb.rs: the OSB client).
//! - `register` / `deregister` (registration/): the broker in Cloud Foundry via the CF v3 API.
//! - `check release` (check.rs): the release tree's specs, packages and manifests.
//! - `render` (render/): a manifest + ops files + vars -> the job's properties.json and the
//!   broker's TOML, exactly as a BOSH deployment would get them.
//!
//! Exit codes: 0 success, 1 failure (the error chain is printed), 2 bad usage.

mod bench;
mod blackbox;
mod check;
mod dev;
mod names;
mod osb;
mod registration;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use etcd_broker::broker::names::{Names, DEFAULT_DATA_PREFIX, DEFAULT_STATE_PREFIX};
use etcd_broker::config::Config;
use local_etcd::EtcdVersion;

/// Operators' tools for etcd-broker.
#[derive(Debug, Parser)]
#[command(name = "etcd-broker-ops", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local etcd (auth enabled) and the broker with the example catalog; write
    /// <dir>/env (BROKER_URL, BROKER_USERNAME, BROKER_PASSWORD, ETCD_ENDPOINTS,
    /// ETCD_ROOT_USERNAME, ETCD_ROOT_PASSWORD, ETCDCTL, METRICS_URL) and run until Ctrl-C.
    Dev {
        /// Broker port on 127.0.0.1; 0 picks a free port.
        #[arg(long, env = "BROKER_PORT", default_value_t = 0)]
        broker_port: u16,
        /// Port of the broker's monitoring listener (/metrics, /health, /ready); 0 picks a free port.
        #[arg(long, env = "METRICS_PORT", default_value_t = 0)]
        metrics_port: u16,
        /// etcd client port on 127.0.0.1; 0 picks a free port.
        #[arg(long, env = "ETCD_PORT", default_value_t = 0)]
        etcd_port: u16,
        /// etcd version to run: 3.5 or 3.4 (installed by scripts/install-tools.sh).
        #[arg(long, default_value = "3.5", value_parser = parse_version)]
        etcd_version: EtcdVersion,
        /// etcd's --bcrypt-cost (4 makes binds fast; etcd's default is 10).
        #[arg(long)]
        bcrypt_cost: Option<u32>,
        /// Folder for broker.toml, env and etcd.log.
        #[arg(long, default_value = ".dev")]
        dir: PathBuf,
    },
    /// Resolve a BOSH manifest (+ ops files, vars) like the director and render the job's
    /// properties.json and the broker's TOML config (see docs/rendering.md).
    Render(render::RenderArgs),
    /// Run the end-to-end suite (lifecycle + isolation) against a broker and its etcd; exit 0
    /// only if every step passes (see docs/blackbox.md).
    Blackbox(blackbox::BlackboxArgs),
    /// Measure a running broker per OSB operation against the etcd floor (the same etcd calls
    /// without the broker), optionally after preloading; see docs/performance.md.
    Bench(Box<bench::BenchArgs>),
    /// Register the broker in Cloud Foundry (create or update it) and make its plans visible;
    /// idempotent (see docs/registration.md).
    Register(registration::RegisterArgs),
    /// Remove the broker from Cloud Foundry; nothing to do when it is not registered.
    Deregister(registration::CfArgs),
    /// Validate something before it reaches a director.
    Check {
        #[command(subcommand)]
        what: CheckWhat,
    },
    /// Print the etcd key prefix, record keys, user and role that ids map to.
    Names {
        /// The service instance id.
        instance_id: String,
        /// A service binding id of that instance.
        binding_id: Option<String>,
        /// Take the prefixes from this broker config instead of the flags.
        #[arg(long, conflicts_with_all = ["data_prefix", "state_prefix"])]
        config: Option<PathBuf>,
        /// Prefix of tenant data.
        #[arg(long, default_value = DEFAULT_DATA_PREFIX)]
        data_prefix: String,
        /// Prefix of the broker's records.
        #[arg(long, default_value = DEFAULT_STATE_PREFIX)]
        state_prefix: String,
        /// Print a JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CheckWhat {
    /// The BOSH release tree: job and package specs, templates, package files, and every
    /// manifest + ops file combination listed in manifests/check.yml rendered into a config the
    /// broker accepts. Prints every problem; exit 1 if there is any.
    Release {
        /// The release tree (the folder holding jobs/, packages/, config/, manifests/).
        #[arg(long, default_value = ".")]
        release_dir: PathBuf,
    },
}

fn parse_version(s: &str) -> Result<EtcdVersion, String> {
    EtcdVersion::parse(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etcd-broker-ops: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Dev { broker_port, metrics_port, etcd_port, etcd_version, bcrypt_cost, dir } => {
            dev::run(dev::DevOptions { broker_port, metrics_port, etcd_port, etcd_version, bcrypt_cost, dir })
        }
        Command::Render(args) => render::run(&args),
        Command::Blackbox(args) => blackbox::run(&args),
        Command::Bench(args) => bench::run(*args),
        Command::Register(args) => registration::register(&args),
        Command::Deregister(args) => registration::deregister(&args),
        Command::Check { what: CheckWhat::Release { release_dir } } => check::run_release(&release_dir),
        Command::Names { instance_id, binding_id, config, data_prefix, state_prefix, json } => {
            let names = match config {
                Some(path) => {
                    let config = Config::load(&path)?;
                    Names::new(&config.prefixes.data, &config.prefixes.state)
                }
                None => {
                    for (flag, prefix) in [("--data-prefix", &data_prefix), ("--state-prefix", &state_prefix)]
                    {
                        if !prefix.starts_with('/') || !prefix.ends_with('/') {
                            anyhow::bail!("{flag} '{prefix}' must start and end with '/'");
                        }
                    }
                    Names::new(&data_prefix, &state_prefix)
                }
            };
            print!("{}", names::report(&names, &instance_id, binding_id.as_deref(), json)?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_parses_ports_and_version() {
        let cli =
            Cli::try_parse_from(["etcd-broker-ops", "dev", "--broker-port", "8080", "--etcd-version", "3.4"])
                .unwrap();
        let Command::Dev { broker_port, etcd_version, dir, .. } = cli.command else { panic!() };
        assert_eq!((broker_port, etcd_version, dir), (8080, EtcdVersion::V3_4, PathBuf::from(".dev")));
        assert!(Cli::try_parse_from(["etcd-broker-ops", "dev", "--etcd-version", "2.0"]).is_err());
        assert!(Cli::try_parse_from(["etcd-broker-ops", "dev", "--broker-port", "99999"]).is_err());
    }

    #[test]
    fn names_parses_ids_and_refuses_mixed_prefix_sources() {
        let cli = Cli::try_parse_from(["etcd-broker-ops", "names", "i1", "b1", "--json"]).unwrap();
        let Command::Names { instance_id, binding_id, json, .. } = cli.command else { panic!() };
        assert_eq!((instance_id.as_str(), binding_id.as_deref(), json), ("i1", Some("b1"), true));
        assert!(Cli::try_parse_from([
            "etcd-broker-ops",
            "names",
            "i1",
            "--config",
            "x",
            "--data-prefix",
            "/d/"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["etcd-broker-ops", "names"]).is_err());
    }
}
