//! The `grip-proxy` binary: parses the command line, loads the config (exit 64 if invalid, before binding
//! anything), installs logging and signal handlers, and runs the proxy until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use grip_proxy::config::{Config, Overrides};
use grip_proxy::App;

/// A GRIP long-poll reverse proxy (a drop-in for Pushpin's long-poll use).
#[derive(Parser, Debug)]
#[command(name = "grip-proxy", version, about)]
struct Cli {
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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Exit code for an unusable configuration (EX_CONFIG would be 78; 64 is EX_USAGE, as linkerd uses).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("grip-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let app = match App::start(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            eprintln!("grip-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = stop_signal().await {
        tracing::error!(error = %e, "cannot listen for signals");
    }
    // A second signal exits at once.
    tokio::spawn(async {
        let _ = stop_signal().await;
        tracing::warn!("second stop signal: exiting now");
        std::process::exit(130);
    });
    app.shutdown().await;
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
