//! The `detour` binary: CLI → config → bind → serve until SIGINT/SIGTERM; reload on SIGHUP,
//! on a change of the config file, and on `POST /admin/reload` (admin listener).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use detour::ops::{logline, logwriter};
use detour::proxy::admin::{self, Admin, Loader};
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

/// glibc's allocator serves a block of more than 128 KiB (a threshold it raises, one freed
/// block at a time, up to 32 MiB) with its own `mmap` and hands it back with `munmap` when it is
/// freed, and gives the top of a heap back once more than twice that is free there. Every
/// large answer (a block with its transactions is 200 KB, receipts and logs are megabytes) was
/// read into fresh pages, which the kernel zeroed on the first touch: a tenth of the CPU a
/// full block cost through detour went to `clear_page`. Blocks up to 16 MiB now come from the
/// heaps and are reused, and up to 32 MiB of free heap is kept; the memory an answer takes
/// while it is served is unchanged. `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` in
/// the environment still win (other allocators are not touched).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only sets a parameter of the allocator; it is called before any
        // thread is started.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20) };
    }
    if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() {
        // SAFETY: as above.
        unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> ExitCode {
    tune_allocator();
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
    // One worker (configured, or the only core this process may use): Tokio's single-threaded
    // scheduler, which needs no work-stealing queues, atomics or cross-thread wake-ups — the
    // multi-threaded one with one worker costs more per request for nothing.
    let workers = match config.server.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("detour: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(source, config, cli.listen));
    logwriter::flush();
    code
}

async fn run(source: Source, config: Config, listen_override: Option<SocketAddr>) -> ExitCode {
    let listen = config.server.listen;
    let admin_listen = config.admin.listen;
    let admin_token = config.admin.token.clone();
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
    if !addr.ip().is_loopback() && proxy.pool().config.api_keys.is_empty() {
        tracing::warn!(%addr, "listening beyond this machine without client API keys: anyone who can reach it can use your upstreams (add [[api_keys]], or bind 127.0.0.1)");
    }
    let runtime = tokio::runtime::Handle::current();
    let scheduler = match runtime.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => "current-thread",
        _ => "multi-thread",
    };
    tracing::info!(config = %source, scheduler, workers = runtime.metrics().num_workers(),
        "detour {} listening on http://{addr}", env!("CARGO_PKG_VERSION"));
    for line in proxy.describe() {
        tracing::info!("{line}");
    }
    let watched = match &source {
        Source::File(path) => Some(path.clone()),
        Source::BuiltIn => None,
    };
    let loader: Loader = Arc::new(move || {
        let mut config = Config::load(&source)?;
        if let Some(listen) = listen_override {
            config.server.listen = listen;
        }
        Ok(config)
    });
    tokio::spawn(reload_on_sighup(proxy.clone(), loader.clone()));
    if let Some(path) = watched {
        tokio::spawn(reload_on_change(path, proxy.clone(), loader.clone()));
    }
    if let Some(addr) = admin_listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                let addr = l.local_addr().unwrap_or(addr);
                if admin_token.is_none() && !addr.ip().is_loopback() {
                    tracing::warn!(%addr, "the admin listener is reachable from other hosts and has no token: set admin.token (e.g. DETOUR_ADMIN__TOKEN)");
                }
                tracing::info!("admin endpoints on http://{addr}/admin/");
                let admin = Admin::new(proxy.clone(), loader.clone(), admin_token);
                tokio::spawn(admin::serve_admin(l, admin, std::future::pending()));
            }
            Err(e) => {
                eprintln!("detour: cannot listen on {addr} (admin.listen): {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match detour::serve(listener, proxy, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("detour: server error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reloads the configuration on each SIGHUP.
async fn reload_on_sighup(proxy: Detour, loader: Loader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: reload with the admin API or a file change");
            return;
        };
        while hup.recv().await.is_some() {
            let _ = admin::reload(&proxy, &loader, "SIGHUP");
        }
    }
    #[cfg(not(unix))]
    let _ = (proxy, loader);
}

/// Reloads the configuration when its file changes: checked every second, and once a change is
/// seen, after the file has stopped changing for 300 ms (editors write in several steps).
async fn reload_on_change(path: PathBuf, proxy: Detour, loader: Loader) {
    fn stamp(path: &Path) -> Option<(Option<std::time::SystemTime>, u64)> {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    }
    let mut last = stamp(&path);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = stamp(&path);
        if now == last {
            continue;
        }
        let mut settled = now;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let again = stamp(&path);
            if again == settled {
                break;
            }
            settled = again;
        }
        last = settled;
        if settled.is_none() {
            tracing::warn!(file = %path.display(), "the config file is gone: still serving the current configuration");
            continue;
        }
        let _ = admin::reload(&proxy, &loader, "file change");
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
        .with_writer(logwriter::stderr());
    if json {
        builder.json().map_event_format(logline::Json::new).init();
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
