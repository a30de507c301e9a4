//! `etcd-broker-ops`: the operators' CLI.
//!
//! - `names` (names.rs): the keys, user and role an instance/binding id maps to.
//! - `blackbox` (blackbox/): the end-to-end suite against any deployment (osb.rs: the OSB client).
//! - `register` / `deregister` (registration/): the broker in Cloud Foundry via the CF v3 API.
//! - `check release` (check.rs): the release tree's specs, packages and manifests.
//! - `render` (render/): a manifest + ops files + vars -> the job's properties.json and the
//!   broker's TOML, exactly as a BOSH deployment would get them.
//!
//! Exit codes: 0 success, 1 failure (the error chain is printed), 2 bad usage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use etcd_broker::broker::names::{Names, DEFAULT_DATA_PREFIX, DEFAULT_STATE_PREFIX};
use etcd_broker::config::Config;
use etcd_broker_ops::{blackbox, check, names, registration, render};

/// Operators' tools for etcd-broker.
#[derive(Debug, Parser)]
#[command(name = "etcd-broker-ops", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resolve a BOSH manifest (+ ops files, vars) like the director and render the job's
    /// properties.json and the broker's TOML config (see docs/rendering.md).
    Render(render::RenderArgs),
    /// Run the end-to-end suite (lifecycle + isolation) against a broker and its etcd; exit 0
    /// only if every step passes (see docs/blackbox.md).
    Blackbox(blackbox::BlackboxArgs),
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
        Command::Render(args) => render::run(&args),
        Command::Blackbox(args) => blackbox::run(&args),
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
