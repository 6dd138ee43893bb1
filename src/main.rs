//! The `detour` binary: CLI → config → bind → serve until SIGINT/SIGTERM.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use detour::{Config, Detour, Source};

/// A JSON-RPC failover proxy for Ethereum-style nodes.
#[derive(Parser, Debug)]
#[command(name = "detour", version, about)]
struct Cli {
    /// Config file (default: $DETOUR_CONFIG, else ./detour.toml if present, else built-in).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address, overriding server.listen.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Log format (default: pretty on a terminal, json otherwise). RUST_LOG sets the filter.
    #[arg(long, value_enum, env = "DETOUR_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load and validate the config, print it with secrets redacted, and exit.
    Check,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Pretty,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let source = Source::discover(cli.config.as_deref());
    if let Some(Command::Check) = cli.command {
        return check(&source);
    }
    init_logging(cli.log_format);
    let mut config = match Config::load(&source) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("detour: invalid configuration:\n{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(listen) = cli.listen {
        config.server.listen = listen;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("detour: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(source, config))
}

async fn run(source: Source, config: Config) -> ExitCode {
    let listen = config.server.listen;
    let proxy = match Detour::new(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("detour: invalid configuration:\n{e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("detour: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(listen);
    tracing::info!(config = %source, "detour {} listening on http://{addr}", env!("CARGO_PKG_VERSION"));
    for line in proxy.describe() {
        tracing::info!("{line}");
    }
    match detour::serve(listener, proxy, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("detour: server error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(source: &Source) -> ExitCode {
    match Config::load(source) {
        Ok(config) => {
            println!("# {source}: OK\n{}", config.redacted().to_toml());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: Option<LogFormat>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Pretty) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
