//! The `grip-proxy` binary: parses the command line, loads the config (exit 64 if invalid, before binding
//! anything), installs logging and signal handlers, and runs the proxy until SIGTERM or SIGINT; SIGHUP reloads
//! the config file. `grip-proxy publish ...` publishes one item instead ([`grip_proxy::cli::publish`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use grip_proxy::config::{Config, Overrides, RuntimeMode};
use grip_proxy::App;

/// A GRIP long-poll reverse proxy (a drop-in for Pushpin's long-poll use).
#[derive(Parser, Debug)]
#[command(
    name = "grip-proxy",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// With no subcommand, the proxy runs.
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML config file (default: built-in defaults, as in config/grip-proxy.toml).
    #[arg(long, short = 'c', value_name = "PATH", env = "GRIP_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Route every request to this origin (replaces the file's routes), e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    origin: Option<String>,
    /// Client listener address (default 0.0.0.0:7999).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Control API listener address (default 127.0.0.1:5561).
    #[arg(long, value_name = "ADDR")]
    control_listen: Option<String>,
    /// Publish bus: a Redis URL shared by every instance (e.g. redis://127.0.0.1:6379/0), or `memory`
    /// (default: bus.url of the config file, else memory).
    #[arg(long, value_name = "URL", env = "GRIP_PROXY_BUS")]
    bus: Option<String>,
    /// Log format on stderr. Filter with RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Check the configuration and exit (0 if valid, 64 if not).
    #[arg(long)]
    check_config: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publish one item to a running grip-proxy's control API (as Pushpin's pushpin-publish).
    Publish(grip_proxy::cli::publish::Args),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Exit code for an unusable configuration (EX_CONFIG would be 78; 64 is EX_USAGE, as linkerd uses).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider for the process (ring): TLS configs made by libraries (the Redis client's) find it.
    grip_proxy::tls::client::install_provider();
    if let Some(Command::Publish(args)) = cli.command {
        return ExitCode::from(grip_proxy::cli::publish::main(args));
    }
    let overrides = Overrides {
        origin: cli.origin.clone(),
        listen: cli.listen.clone(),
        control_listen: cli.control_listen.clone(),
        bus: cli.bus.clone(),
    };
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("grip-proxy: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.check_config {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    init_tracing(cli.log_format);
    let built = match config.runtime {
        RuntimeMode::Shared => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads)
            .enable_all()
            .build(),
        // Clients are served on runtimes of their own (`App::start`); this one runs the control API, the bus,
        // the sweepers and the signals.
        RuntimeMode::PerCore => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("grip-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reload = Reload {
        path: cli.config,
        overrides,
    };
    runtime.block_on(run(config, reload))
}

/// What SIGHUP reloads: the same file, with the same command-line overrides.
struct Reload {
    path: Option<PathBuf>,
    overrides: Overrides,
}

async fn run(config: Config, reload: Reload) -> ExitCode {
    // Installed before anything starts, and kept: a signal arriving at any point is seen, and the second one is
    // not lost between the first and a re-registration.
    let mut signals = match StopSignals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("grip-proxy: cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let app = match App::start(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            eprintln!("grip-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    while let Event::Reload = signals.next_event().await {
        match &reload.path {
            // Errors are logged by the reloader, and the running configuration stays.
            Some(path) => {
                let _ = app.reloader().reload_from(Some(path), &reload.overrides);
            }
            None => {
                tracing::warn!("SIGHUP: no config file was given (--config): nothing to reload")
            }
        }
    }
    // A second signal exits at once.
    tokio::spawn(async move {
        signals.next().await;
        tracing::warn!("second stop signal: exiting now");
        std::process::exit(130);
    });
    app.shutdown().await;
    ExitCode::SUCCESS
}

/// What a signal asks for.
enum Event {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP.
    Reload,
}

/// SIGTERM and SIGINT, and SIGHUP (reload).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Resolves on the next SIGTERM, SIGINT or SIGHUP.
    async fn next_event(&mut self) -> Event {
        tokio::select! {
            _ = self.term.recv() => { tracing::info!("SIGTERM received"); Event::Stop }
            _ = self.int.recv() => { tracing::info!("SIGINT received"); Event::Stop }
            _ = self.hup.recv() => { tracing::info!("SIGHUP received: reloading the configuration"); Event::Reload }
        }
    }

    /// Resolves on the next SIGTERM or SIGINT.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
