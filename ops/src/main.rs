//! `etcd-broker-ops`: the operators' CLI.
//!
//! - `names` (names.rs): the keys, user and role an instance/binding id maps to.
//! - `blackbox` (blackbox/): the end-to-end suite against any deployment (osb.rs: the OSB client).
//! - `register` / `deregister` (registration/): the broker in Cloud Foundry via the CF v3 API.
//! - `check release` (check.rs): the release tree's specs, packages and manifests.
//! - `render` (render/): a manifest + ops files + vars -> the job's properties.json and the
//!   broker's TOML, exactly as a BOSH deployment would get them.
//! - `keys generate` / `keys list` / `seal` / `unseal` (sealing.rs): the keys that seal
//!   secrets at rest, and one value sealed or unsealed for operators' scripts.
//! - `reseal` (reseal.rs): binding records rewritten sealed by the active key.
//! - `reconcile` (reconcile.rs): records compared with etcd, the safe repairs.
//! - `data-keys` (data_keys.rs): encrypted instances' data keys added, retired, values rewritten.
//! - `usage` (usage.rs): one instance's keys and bytes against its plan's quotas.
//!
//! Exit codes: 0 success, 1 failure (the error chain is printed), 2 bad usage; `reseal` also
//! 130 when Ctrl-C stopped it (`data-keys rewrite` too); `reconcile` 0 nothing found, 1 findings, 2 error.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use etcd_broker::broker::names::{Names, DEFAULT_DATA_PREFIX, DEFAULT_STATE_PREFIX};
use etcd_broker::config::Config;
use etcd_broker_ops::{
    blackbox, check, data_keys, names, proxy_user, reconcile, registration, render, reseal, sealing, usage,
};

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
    /// Create and list the keys that seal secrets at rest (the [secrets] table of the
    /// broker's config; see docs/config.md).
    Keys {
        #[command(subcommand)]
        what: KeysWhat,
    },
    /// Seal the value on stdin (exactly as read) for one record with the config's active key;
    /// print the sealed value.
    Seal(sealing::SealArgs),
    /// Unseal the sealed value on stdin for the record it was sealed for; print the secret
    /// exactly (no newline added). Exit 1 if it does not unseal.
    Unseal(sealing::SealArgs),
    /// Rewrite every binding record sealed by a key other than the active one, or in clear,
    /// sealed by the active key, while brokers serve (key rotation; see docs/config.md). One
    /// compare-and-swap per record: a broker's concurrent change wins and the record is
    /// retried. Prints a progress report on stderr and a summary (rewritten per source key,
    /// skipped, raced, failed records by key) on stdout. Safe to stop (Ctrl-C stops after the
    /// records being rewritten, exit 130) and to run again: records done are skipped. Exit 0 when every
    /// record is done, 1 when any failed.
    Reseal(reseal::ResealArgs),
    /// Compare the broker's records with etcd's users, roles, role grants and tenant data, and
    /// report what disagrees: users or roles named like the broker's without a record, ready
    /// bindings whose user or role is missing or holds other grants, keys under the data prefix
    /// of no instance, records stuck in creating or deleting, stale queued role deletions,
    /// records sealed by a key the keychain lacks, unreadable records (docs/reconcile.md).
    /// Read-only unless --repair. Exit 0 when nothing is found, 1 when something is (repaired
    /// or not), 2 when the check could not run.
    Reconcile(reconcile::ReconcileArgs),
    /// An encrypted instance's data keys (values sealed by the tenant proxy): status, add a
    /// version, rewrite the values under the newest through the proxy, retire a version no
    /// value uses (docs/proxy.md). Exit 0 done, 1 refused or not every value done, 130 after
    /// Ctrl-C.
    DataKeys {
        #[command(subcommand)]
        what: data_keys::DataKeysCommand,
    },
    /// Make (or bring back) the tenant proxy's own etcd user and role with the broker's root
    /// credentials: read-write on the proxy's records, read on the broker's binding and
    /// instance records and on the tenants' data (quotas), nothing else; the proxy never
    /// holds root credentials (docs/proxy.md). Idempotent: an existing user gets the password
    /// again. On BOSH the etcd-broker-proxy-user job's post-start runs it on every deploy.
    ProxyUser(proxy_user::ProxyUserArgs),
    /// Print one instance's usage against its plan's quotas (docs/proxy.md#quotas): keys,
    /// bytes (keys' and stored values' bytes), the plan's quota_keys, quota_bytes and
    /// quota_requests_per_second, and the share of the fuller quota; counted by a range over
    /// the instance's prefix with the config's credentials. Exit 0 when printed, 1 when the
    /// instance or its cluster cannot be read.
    Usage(usage::UsageArgs),
    /// Print the etcd key prefix, record keys, user and role that ids map to.
    Names {
        /// The service instance id.
        instance_id: String,
        /// A service binding id of that instance.
        binding_id: Option<String>,
        /// The binding's bind parameters (JSON, e.g. '{"access": "read", "key_prefix":
        /// "config/"}'): the role's permission shown follows from them.
        #[arg(long)]
        parameters: Option<String>,
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

#[derive(Debug, Subcommand)]
enum KeysWhat {
    /// Write a fresh 256-bit key (base64 text) into a new file readable by its owner only
    /// (mode 0600; an existing file is never replaced). Prints the file and the key's name,
    /// never the key.
    Generate(sealing::GenerateArgs),
    /// Print whether sealing is on, the configured keys (the active one marked) with how many
    /// records each seals, keys that seal records but are not configured, and the records in
    /// clear. Counts come from the broker's indexes in the state cluster (the config's
    /// credentials); no record is read.
    List {
        /// The broker's TOML config (ETCD_BROKER__* variables apply).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Only the configured keys: read nothing from etcd (no record counts).
        #[arg(long)]
        offline: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Reseal(args) = &cli.command {
        return match reseal::run(args) {
            Ok(reseal::Outcome::Done) => ExitCode::SUCCESS,
            Ok(reseal::Outcome::Failed) => ExitCode::FAILURE,
            Ok(reseal::Outcome::Interrupted) => ExitCode::from(130),
            Err(e) => {
                eprintln!("etcd-broker-ops: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Reconcile(args) = &cli.command {
        return match reconcile::run(args) {
            Ok(reconcile::Outcome::Clean) => ExitCode::SUCCESS,
            Ok(reconcile::Outcome::Findings) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("etcd-broker-ops: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::DataKeys { what } = &cli.command {
        return match data_keys::run(what) {
            Ok(data_keys::Outcome::Done) => ExitCode::SUCCESS,
            Ok(data_keys::Outcome::Failed) => ExitCode::FAILURE,
            Ok(data_keys::Outcome::Interrupted) => ExitCode::from(130),
            Err(e) => {
                eprintln!("etcd-broker-ops: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
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
        Command::Keys { what: KeysWhat::Generate(args) } => {
            print!("{}", sealing::generate(&args)?);
            Ok(())
        }
        Command::Keys { what: KeysWhat::List { config, offline } } => {
            print!("{}", sealing::list(&config, offline)?);
            Ok(())
        }
        Command::Seal(args) => sealing::seal(&args),
        Command::Reseal(args) => reseal::run(&args).map(|_| ()),
        Command::Reconcile(args) => reconcile::run(&args).map(|_| ()),
        Command::DataKeys { what } => data_keys::run(&what).map(|_| ()),
        Command::ProxyUser(args) => proxy_user::run(&args),
        Command::Unseal(args) => sealing::unseal(&args),
        Command::Usage(args) => {
            print!("{}", usage::run(&args)?);
            Ok(())
        }
        Command::Names { instance_id, binding_id, parameters, config, data_prefix, state_prefix, json } => {
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
            print!(
                "{}",
                names::report(&names, &instance_id, binding_id.as_deref(), parameters.as_deref(), json)?
            );
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

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(["etcd-broker-ops"].iter().chain(args)).map(|cli| cli.command)
    }

    #[test]
    fn keys_generate_takes_a_name_and_one_destination() {
        let Ok(Command::Keys { what: KeysWhat::Generate(args) }) =
            parse(&["keys", "generate", "k1", "--dir", "d"])
        else {
            panic!()
        };
        assert_eq!((args.name.as_str(), args.dir, args.out), ("k1", Some(PathBuf::from("d")), None));
        let Ok(Command::Keys { what: KeysWhat::Generate(args) }) =
            parse(&["keys", "generate", "k1", "--out", "f"])
        else {
            panic!()
        };
        assert_eq!(args.out, Some(PathBuf::from("f")));
        for usage in [
            &["keys", "generate", "k1"][..],
            &["keys", "generate", "--dir", "d"],
            &["keys", "generate", "k1", "--dir", "d", "--out", "f"],
        ] {
            let error = parse(usage).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{usage:?}: {error}");
        }
    }

    #[test]
    fn proxy_user_takes_a_password_file_or_the_jobs_properties() {
        let Ok(Command::ProxyUser(args)) =
            parse(&["proxy-user", "--bosh-properties", "b.json", "--job-properties", "j.json"])
        else {
            panic!()
        };
        assert_eq!((args.job_properties, args.password_file), (Some(PathBuf::from("j.json")), None));
        assert!(parse(&["proxy-user", "--config", "c.toml", "--password-file", "p"]).is_ok());
        for usage in [
            &["proxy-user", "--config", "c.toml"][..],
            &["proxy-user", "--config", "c.toml", "--job-properties", "j", "--password-file", "p"],
            &["proxy-user", "--config", "c.toml", "--job-properties", "j", "--user", "u"],
        ] {
            let error = parse(usage).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{usage:?}: {error}");
        }
    }

    #[test]
    fn keys_list_needs_a_config() {
        let Ok(Command::Keys { what: KeysWhat::List { config, .. } }) =
            parse(&["keys", "list", "--config", "b.toml"])
        else {
            panic!()
        };
        assert_eq!(config, PathBuf::from("b.toml"));
        assert_eq!(parse(&["keys", "list"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn data_keys_take_an_instance_a_config_and_a_version_to_retire() {
        let Ok(Command::DataKeys { what: data_keys::DataKeysCommand::Rewrite(args) }) = parse(&[
            "data-keys",
            "rewrite",
            "i1",
            "--config",
            "b.toml",
            "--proxy",
            "http://a:2379,http://b:2379",
            "--dry-run",
        ]) else {
            panic!()
        };
        assert_eq!(
            (args.instance.instance_id.as_str(), args.dry_run, args.proxy.proxy.len()),
            ("i1", true, 2)
        );
        let Ok(Command::DataKeys { what: data_keys::DataKeysCommand::Retire(args) }) =
            parse(&["data-keys", "retire", "i1", "2", "--config", "b.toml"])
        else {
            panic!()
        };
        assert_eq!(args.version, 2);
        for usage in [
            &["data-keys", "add", "i1"][..],
            &["data-keys", "retire", "i1", "--config", "b.toml"],
            &["data-keys", "retire", "i1", "x", "--config", "b.toml"],
            &["data-keys", "rewrite", "i1", "--config", "b.toml", "--proxy", "not a url"],
        ] {
            assert_eq!(parse(usage).unwrap_err().exit_code(), 2, "{usage:?}");
        }
    }

    #[test]
    fn usage_needs_an_instance_and_a_config() {
        let Ok(Command::Usage(args)) = parse(&["usage", "i-1", "--config", "b.toml", "--json"]) else {
            panic!()
        };
        assert_eq!(
            (args.instance_id.as_str(), args.config, args.json),
            ("i-1", PathBuf::from("b.toml"), true)
        );
        assert_eq!(parse(&["usage", "i-1"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["usage", "--config", "b.toml"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn reseal_needs_a_config() {
        let Ok(Command::Reseal(args)) = parse(&["reseal", "--config", "b.toml", "--dry-run"]) else {
            panic!()
        };
        assert_eq!((args.config, args.dry_run), (PathBuf::from("b.toml"), true));
        assert_eq!(parse(&["reseal"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn reconcile_needs_one_config_and_deletes_data_only_when_repairing() {
        let Ok(Command::Reconcile(args)) = parse(&["reconcile", "--config", "b.toml"]) else { panic!() };
        assert_eq!(args.config, Some(PathBuf::from("b.toml")));
        assert!(!args.repair && !args.delete_orphan_data && !args.json && !args.skip_grants);
        assert_eq!(args.stuck_after_seconds, reconcile::DEFAULT_STUCK_AFTER_SECONDS);
        let Ok(Command::Reconcile(args)) = parse(&[
            "reconcile",
            "--bosh-properties",
            "p.json",
            "--repair",
            "--delete-orphan-data",
            "--stuck-after-seconds",
            "60",
            "--json",
        ]) else {
            panic!()
        };
        assert!(args.repair && args.delete_orphan_data && args.json);
        assert_eq!(args.stuck_after_seconds, 60);
        for usage in [
            &["reconcile"][..],
            &["reconcile", "--config", "b.toml", "--bosh-properties", "p.json"],
            &["reconcile", "--config", "b.toml", "--delete-orphan-data"],
            &["reconcile", "--config", "b.toml", "--stuck-after-seconds", "-1"],
        ] {
            assert_eq!(parse(usage).unwrap_err().exit_code(), 2, "{usage:?}");
        }
    }

    #[test]
    fn seal_and_unseal_need_a_config_and_a_non_empty_record() {
        for verb in ["seal", "unseal"] {
            let args = match parse(&[verb, "--config", "b.toml", "--record", "/etcd-broker/bindings/i/b"]) {
                Ok(Command::Seal(args)) if verb == "seal" => args,
                Ok(Command::Unseal(args)) if verb == "unseal" => args,
                other => panic!("{verb}: {other:?}"),
            };
            assert_eq!(
                (args.config, args.record.as_str()),
                (PathBuf::from("b.toml"), "/etcd-broker/bindings/i/b")
            );
            for usage in [
                &[verb, "--config", "b.toml"][..],
                &[verb, "--record", "r"],
                &[verb, "--config", "b.toml", "--record", ""],
            ] {
                assert_eq!(parse(usage).unwrap_err().exit_code(), 2, "{usage:?}");
            }
        }
    }
}
