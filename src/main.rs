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

/// Where the config comes from: a TOML file, or BOSH job properties rendered through the
/// built-in template.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct ConfigSource {
    /// The TOML config file (see docs/config.md); ETCD_BROKER__* variables override it.
    #[arg(long, env = "ETCD_BROKER_CONFIG")]
    config: Option<PathBuf>,
    /// The properties.json of the BOSH job (see docs/rendering.md); rendered into TOML, then
    /// loaded like --config.
    #[arg(long)]
    bosh_properties: Option<PathBuf>,
}

impl ConfigSource {
    fn load(&self, template: Option<&std::path::Path>) -> Result<Config, etcd_broker::config::ConfigError> {
        match (&self.config, &self.bosh_properties) {
            (_, Some(properties)) => Config::from_bosh_properties(properties, template),
            (Some(path), None) => Config::load(path),
            (None, None) => Err(etcd_broker::config::ConfigError::Load(
                "give --config FILE or --bosh-properties FILE".into(),
            )),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the OSB API until SIGTERM or SIGINT (in-flight requests are drained).
    Serve {
        #[command(flatten)]
        source: ConfigSource,
        /// With --bosh-properties: a handlebars template instead of the built-in
        /// templates/etcd-broker.toml.hbs.
        #[arg(long, conflicts_with = "config")]
        template: Option<PathBuf>,
    },
    /// Print the TOML config rendered from a BOSH properties file, then exit.
    Render {
        /// The properties.json written by the BOSH job's ERB template.
        #[arg(long)]
        bosh_properties: PathBuf,
        /// A handlebars template instead of the built-in templates/etcd-broker.toml.hbs.
        #[arg(long)]
        template: Option<PathBuf>,
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
        Command::Render { bosh_properties, template } => {
            print!("{}", Config::render_bosh_properties(&bosh_properties, template.as_deref())?);
            Ok(())
        }
        Command::Serve { source, template } => {
            let config = source.load(template.as_deref())?;
            logging::init(config.log_level, config.log_format);
            Ok(server::run(&config)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("etcd-broker").chain(args.iter().copied())).map(|c| c.command)
    }

    #[test]
    fn serve_takes_exactly_one_config_source() {
        let Command::Serve { source, template } = parse(&["serve", "--config", "b.toml"]).unwrap() else {
            panic!()
        };
        assert_eq!((source.config, source.bosh_properties, template), (Some("b.toml".into()), None, None));
        let Command::Serve { source, template } =
            parse(&["serve", "--bosh-properties", "p.json", "--template", "t.hbs"]).unwrap()
        else {
            panic!()
        };
        assert_eq!((source.bosh_properties, template), (Some("p.json".into()), Some("t.hbs".into())));
        for bad in [
            &["serve", "--config", "b.toml", "--bosh-properties", "p.json"][..],
            &["serve", "--config", "b.toml", "--template", "t.hbs"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn render_and_check_config_parse() {
        let Command::Render { bosh_properties, template } =
            parse(&["render", "--bosh-properties", "p.json"]).unwrap()
        else {
            panic!()
        };
        assert_eq!((bosh_properties, template), ("p.json".into(), None));
        assert!(parse(&["render"]).is_err());
        assert!(matches!(parse(&["check-config", "--config", "b.toml"]), Ok(Command::CheckConfig { .. })));
    }
}
