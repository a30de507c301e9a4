//! `xtask`: the developers' CLI over the library's modules (lib.rs maps them): `dev` (with
//! `--run`), `bench`, `bench-scenario`.
//!
//! Exit codes: 0 success, 1 failure (the error chain is printed), 2 bad usage, 128 + the
//! signal when SIGINT or SIGTERM stopped `dev --run` or `bench-scenario` (what it started is
//! stopped first); `dev --run` exits with its command's code.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use local_etcd::EtcdVersion;
use xtask::stack::StackOptions;
use xtask::{bench, dev, scenario, stack};

/// Developers' tools for etcd-broker: the local stack, the bench, the standard bench scenario.
#[derive(Debug, Parser)]
#[command(name = "xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local etcd (auth enabled) and the broker with the example catalog; write
    /// <dir>/env (BROKER_URL, BROKER_USERNAME, BROKER_PASSWORD, ETCD_ENDPOINTS,
    /// ETCD_ROOT_USERNAME, ETCD_ROOT_PASSWORD, ETCDCTL, METRICS_URL, BROKER_PID, ETCD_PID) and
    /// run until Ctrl-C. With --run -- CMD ARGS...: run CMD with those variables in its
    /// environment once the stack answers, stop the stack, exit with CMD's exit code.
    Dev(DevArgs),
    /// Measure a running broker per OSB operation against the etcd floor (the same etcd calls
    /// without the broker), optionally after preloading; see docs/performance.md.
    Bench(Box<bench::BenchArgs>),
    /// The standard scenario of `make bench`: local stacks at two bcrypt costs, bench runs
    /// with 1 to 64 clients and a preload, wrk on the catalog, start-up time; rewrites the
    /// generated regions of docs/performance.md. Runs the release binaries next to this one
    /// (`make bench` builds them).
    BenchScenario(scenario::ScenarioArgs),
    /// The tenant proxy against etcd directly, same run, same clients: put, range and
    /// watch-event throughput and latency, encryption off and on; starts its own etcd and
    /// the release proxy next to this program (docs/performance.md).
    BenchProxy(bench::proxy::ProxyBenchArgs),
    /// bench-proxy's TCP relay: copies bytes between each connection to --listen and one to
    /// --to, on one thread, without reading them.
    #[command(hide = true)]
    TcpRelay(bench::relay::RelayArgs),
    /// bench-proxy's HTTP/2 relay: passes each HTTP/2 stream of a connection to --listen on to
    /// one to --to, frame by frame, on one thread, without decoding gRPC.
    #[command(hide = true)]
    Http2Relay(bench::relay::RelayArgs),
    /// Lifecycle churn against two brokers on one etcd for --minutes (30) at --rate (10
    /// lifecycles/s), sampling each broker's memory and file descriptors and etcd's keys, users
    /// and roles every minute; prints the table, the rate per minute and the slopes (all the
    /// churn and its steady part after --warm-up-minutes) and writes them into --out
    /// (docs/reliability.md with make soak). Not part of the tests.
    Soak(xtask::soak::SoakArgs),
}

/// Flags of `dev`.
#[derive(Debug, clap::Args)]
struct DevArgs {
    /// Broker port on 127.0.0.1; 0 picks a free port.
    #[arg(long, env = "BROKER_PORT", default_value_t = 0)]
    broker_port: u16,
    /// Port of the broker's monitoring listener (/metrics, /health, /ready); 0 picks a free port.
    #[arg(long, env = "METRICS_PORT", default_value_t = 0)]
    metrics_port: u16,
    /// etcd client port on 127.0.0.1; 0 picks a free port.
    #[arg(long, env = "ETCD_PORT", default_value_t = 0)]
    etcd_port: u16,
    /// The tenant proxy's port on 127.0.0.1; 0 picks a free port.
    #[arg(long, env = "PROXY_PORT", default_value_t = 0)]
    proxy_port: u16,
    /// Run without the tenant proxy (and its plan `encrypted`); PROXY_ENDPOINTS and
    /// PROXY_PLAN_ID are then empty.
    #[arg(long)]
    no_proxy: bool,
    /// etcd version to run: 3.5 or 3.4 (installed by scripts/install-tools.sh).
    #[arg(long, default_value = "3.5", value_parser = parse_version)]
    etcd_version: EtcdVersion,
    /// etcd's --bcrypt-cost (4 makes binds fast; etcd's default is 10).
    #[arg(long)]
    bcrypt_cost: Option<u32>,
    /// Folder for broker.toml, env and etcd.log [default: .dev; with --run, a temporary
    /// folder removed afterwards].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run the command given after `--` against the stack instead of waiting for Ctrl-C.
    #[arg(long, requires = "command")]
    run: bool,
    /// The command of --run and its arguments.
    #[arg(last = true, requires = "run", value_name = "CMD")]
    command: Vec<String>,
}

fn parse_version(s: &str) -> Result<EtcdVersion, String> {
    EtcdVersion::parse(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            match e.downcast_ref::<stack::Interrupted>() {
                Some(interrupted) => ExitCode::from(u8::try_from(interrupted.exit_code()).unwrap_or(u8::MAX)),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Dev(args) if args.run => {
            let options = StackOptions {
                etcd_version: args.etcd_version,
                bcrypt_cost: args.bcrypt_cost,
                broker_port: args.broker_port,
                metrics_port: args.metrics_port,
                etcd_port: args.etcd_port,
                proxy_port: args.proxy_port,
                proxy: !args.no_proxy,
            };
            let temporary;
            let dir = match &args.dir {
                Some(dir) => dir.as_path(),
                None => {
                    temporary = tempfile::tempdir().context("cannot create a temporary folder")?;
                    temporary.path()
                }
            };
            let code = stack::run_command(&current_exe()?, &options, dir, &args.command)?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)))
        }
        Command::Dev(args) => {
            dev::run(dev::DevOptions {
                broker_port: args.broker_port,
                metrics_port: args.metrics_port,
                etcd_port: args.etcd_port,
                proxy_port: args.proxy_port,
                proxy: !args.no_proxy,
                etcd_version: args.etcd_version,
                bcrypt_cost: args.bcrypt_cost,
                dir: args.dir.unwrap_or_else(|| PathBuf::from(".dev")),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => bench::run(*args).map(|()| ExitCode::SUCCESS),
        Command::BenchProxy(args) => bench::proxy::run(args).map(|()| ExitCode::SUCCESS),
        Command::TcpRelay(args) => bench::relay::tcp(args).map(|()| ExitCode::SUCCESS),
        Command::Http2Relay(args) => bench::relay::http2(args).map(|()| ExitCode::SUCCESS),
        Command::BenchScenario(args) => scenario::run(&current_exe()?, &args).map(|()| ExitCode::SUCCESS),
        Command::Soak(args) => xtask::soak::run(&current_exe()?, &args).map(|()| ExitCode::SUCCESS),
    }
}

fn current_exe() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find this program's own path")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_parses_ports_and_version() {
        let cli =
            Cli::try_parse_from(["xtask", "dev", "--broker-port", "8080", "--etcd-version", "3.4"]).unwrap();
        let Command::Dev(args) = cli.command else { panic!() };
        assert_eq!((args.broker_port, args.etcd_version, args.dir), (8080, EtcdVersion::V3_4, None));
        assert!(!args.run && args.command.is_empty());
        assert!(Cli::try_parse_from(["xtask", "dev", "--etcd-version", "2.0"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "dev", "--broker-port", "99999"]).is_err());
        assert!(!args.no_proxy && args.proxy_port == 0, "the proxy runs by default");
        let cli = Cli::try_parse_from(["xtask", "dev", "--no-proxy", "--proxy-port", "2391"]).unwrap();
        let Command::Dev(args) = cli.command else { panic!() };
        assert!(args.no_proxy && args.proxy_port == 2391);
    }

    #[test]
    fn dev_run_takes_the_whole_command_with_its_own_flags() {
        let cli =
            Cli::try_parse_from(["xtask", "dev", "--bcrypt-cost", "4", "--run", "--", "sh", "-c", "exit 3"])
                .unwrap();
        let Command::Dev(args) = cli.command else { panic!() };
        assert_eq!(args.bcrypt_cost, Some(4));
        assert_eq!(args.command, ["sh", "-c", "exit 3"]);
        let cli =
            Cli::try_parse_from(["xtask", "dev", "--run", "--", "env", "--etcd-version", "3.4"]).unwrap();
        let Command::Dev(args) = cli.command else { panic!() };
        assert_eq!(args.command, ["env", "--etcd-version", "3.4"], "flags after -- are the command's");
        assert_eq!(args.etcd_version, EtcdVersion::V3_5);
        assert!(Cli::try_parse_from(["xtask", "dev", "--run"]).is_err(), "--run without a command");
        assert!(Cli::try_parse_from(["xtask", "dev", "--", "env"]).is_err(), "a command without --run");
    }

    #[test]
    fn bench_scenario_parses_its_sizes() {
        let cli =
            Cli::try_parse_from(["xtask", "bench-scenario", "--count", "10", "--preload", "0"]).unwrap();
        let Command::BenchScenario(args) = cli.command else { panic!() };
        assert_eq!((args.count, args.preload), (10, 0));
        assert!(Cli::try_parse_from(["xtask", "bench-scenario", "--count", "0"]).is_err());
        assert!(!args.allow_debug_build);
        let cli = Cli::try_parse_from(["xtask", "bench-scenario", "--allow-debug-build"]).unwrap();
        let Command::BenchScenario(args) = cli.command else { panic!() };
        assert!(args.allow_debug_build);
    }

    #[test]
    fn soak_parses_its_rate_and_warm_up() {
        let cli = Cli::try_parse_from(["xtask", "soak", "--rate", "2.5", "--warm-up-minutes", "5"]).unwrap();
        let Command::Soak(args) = cli.command else { panic!() };
        assert_eq!((args.rate, args.warm_up_minutes), (2.5, 5));
        let cli = Cli::try_parse_from(["xtask", "soak", "--rate", "0"]).unwrap();
        let Command::Soak(args) = cli.command else { panic!() };
        assert_eq!(args.rate, 0.0, "0: as fast as the clients go");
        let refused = Cli::try_parse_from(["xtask", "soak", "--rate=-3"]).unwrap_err().to_string();
        assert!(refused.contains("between 0 and 10000"), "{refused}");
    }
}
