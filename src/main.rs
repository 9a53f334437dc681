//! The `crmgate` command: serve, check, export, sim (plain or TLS) and demo.
//!
//! Everything here is wiring: parse arguments, set up logging, load the
//! config, hook signals to drain (SIGTERM/SIGINT) and reload (SIGHUP), and
//! turn failures into a precise message and a non-zero exit.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use crmgate::config::{self, Config};
use crmgate::server::Server;
use crmgate::sim::{LimiterKind, SimConfig, SimTls, Simulator};
use crmgate::{access_line, log_writer};
use tokio::signal::unix::{signal, SignalKind};

/// jemalloc, with its background purging thread: after a burst of waiting
/// requests ends, it hands the freed pages back to the OS within seconds
/// (10,000 waiting GETs: 156 MiB → under 64 MiB 7 s after the queue
/// emptied), where glibc malloc kept every page, also with its trim and
/// arena tunables. mimalloc held 380 MiB and kept it. See docs/performance.md,
/// "Where the gaps to nginx are".
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A local rate-limiting gateway for the RetailCRM REST API.
#[derive(Parser)]
#[command(name = "crmgate", version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file [default: config/crmgate.toml, then /etc/crmgate/crmgate.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config and print a summary without secrets.
    Check {
        /// Config file [default: config/crmgate.toml, then /etc/crmgate/crmgate.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also ask the CRM, per tenant, whether the key works (GET
        /// /api/credentials and /api/api-versions through the tenant's
        /// egress, within the budget); exit 1 if any key is refused.
        #[arg(long)]
        online: bool,
    },
    /// Export every page of a list (or history since a cursor) through a
    /// running gateway, as NDJSON.
    Export(crmgate::export::cli::ExportArgs),
    /// Run the built-in RetailCRM simulator (key "demo-crm-key").
    Sim(SimArgs),
    /// Start the simulator and a gateway in front of it, and show how to call it.
    Demo {
        /// Gateway API address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Gateway admin address.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
    },
}

/// `crmgate sim`'s flags.
#[derive(clap::Args)]
struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Serve HTTPS with a certificate generated at start-up (for localhost
    /// and 127.0.0.1-8); its CA is written to --ca-out.
    #[arg(long)]
    tls: bool,
    /// With --tls, offer only HTTP/1.1 through ALPN (default: h2 and http/1.1).
    #[arg(long, requires = "tls")]
    http1_only: bool,
    /// Where --tls writes its CA certificate (PEM) [default: a file in the temp dir]
    #[arg(long, requires = "tls")]
    ca_out: Option<PathBuf>,
    /// A network round trip, added to every new connection (before its first
    /// byte is read) and to every request, e.g. "60ms".
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    rtt: Duration,
    /// Added before every TLS handshake, e.g. "30ms".
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s", requires = "tls")]
    handshake: Duration,
    /// How arrivals over the limit are refused: strict (sliding window,
    /// refused arrivals count), lenient (sliding window of accepted ones),
    /// leaky (nginx limit_req, with --burst) or fixed (fixed windows). See
    /// docs/architecture.md, "Limiter models".
    #[arg(long, default_value = "leaky", value_parser = ["strict", "lenient", "leaky", "fixed"])]
    limiter: String,
    /// With --limiter leaky: nginx's `burst=N nodelay` (default 0: no burst).
    #[arg(long)]
    burst: Option<u32>,
    /// Allowed general requests per second per source IP.
    #[arg(long, default_value_t = 10)]
    general_limit: u32,
}

/// Logging to stderr through [`log_writer`]: access lines are written in
/// blocks, not one system call each. Keep the guard until the process ends.
fn init_logging(format: LogFormat) -> log_writer::FlushGuard {
    let (writer, guard) = log_writer::buffered(std::io::stderr());
    let ansi = std::io::stderr().is_terminal();
    if !ansi {
        // Access lines written directly: the same bytes, far cheaper.
        let format = match format {
            LogFormat::Json => access_line::Format::Json,
            LogFormat::Pretty => access_line::Format::Pretty,
        };
        access_line::install(format, writer.clone());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal: in a file or a log
        // collector they are noise, and cost time on every line.
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
    guard
}

/// The runtime `main` blocks on. For `serve` it is the control runtime, one
/// thread: signals, reloads, the admin port, the scheduler's dispatchers,
/// Redis and the history sampler; the API is served by the
/// `server.worker_threads` worker runtimes that [`Server::run`] starts.
fn runtime(serving: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if serving {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()
}

/// The config `serve` will use (read before the runtime, which it sizes).
fn serve_config(path: Option<PathBuf>) -> anyhow::Result<(PathBuf, Config)> {
    let path = config::resolve_path(path.as_deref())?;
    let config =
        Config::load(&path).with_context(|| format!("invalid config {}", path.display()))?;
    Ok((path, config))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `check` prints to stdout and needs no runtime or logging.
    if let Command::Check { config, online } = &cli.command {
        return check(config.as_deref(), *online);
    }
    // `export` writes items to stdout and its own progress to stderr.
    let cli = match cli.command {
        Command::Export(args) => return export(args),
        command => Cli { command, ..cli },
    };
    let log = init_logging(cli.log_format);
    let (serving, command) = match cli.command {
        Command::Serve { config } => match serve_config(config) {
            Ok(loaded) => (Some(loaded), None),
            Err(e) => {
                eprintln!("crmgate: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        command => (None, Some(command)),
    };
    let runtime = match runtime(serving.is_some()) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crmgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        if let Some((path, config)) = serving {
            return serve(path, config).await;
        }
        match command.expect("serve returned above") {
            Command::Serve { .. } => unreachable!("loaded above"),
            Command::Sim(args) => sim(args).await,
            Command::Demo {
                listen,
                admin_listen,
            } => demo(listen, admin_listen).await,
            Command::Check { .. } | Command::Export(_) => unreachable!("handled above"),
        }
    });
    // Buffered lines first, so the error is the last thing said.
    log.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crmgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: Option<&std::path::Path>, online: bool) -> ExitCode {
    let loaded = config::resolve_path(path).and_then(|p| Config::load(&p).map(|c| (p, c)));
    match loaded {
        Ok((path, config)) => {
            println!("{}: OK", path.display());
            print!("{}", config.summary());
            if online {
                check_online(config)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            for problem in &e.problems {
                eprintln!("error: {problem}");
            }
            eprintln!("crmgate check: {} problem(s) found", e.problems.len());
            ExitCode::from(2)
        }
    }
}

/// `check --online`: each tenant's key asked about at the CRM. Exit 1 when
/// any key was refused or could not be checked.
fn check_online(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crmgate check: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reports = runtime.block_on(async {
        let gw = crmgate::gateway::Gateway::new(config, None)
            .map_err(|e| format!("cannot build the CRM clients: {e}"))?;
        let reports = crmgate::online::check_all(&gw).await;
        gw.scheduler.close();
        Ok::<_, String>(reports)
    });
    let reports = match reports {
        Ok(r) => r,
        Err(e) => {
            eprintln!("crmgate check: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("\nonline:");
    for report in &reports {
        print!("{report}");
    }
    let failed = reports.iter().filter(|r| r.failed()).count();
    let warned: usize = reports.iter().map(|r| r.warnings.len()).sum();
    println!(
        "crmgate check --online: {} tenant(s), {failed} key(s) refused or unchecked, {warned} warning(s)",
        reports.len()
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn export(args: crmgate::export::cli::ExportArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("crmgate export: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ended = runtime.block_on(crmgate::export::cli::run(args));
    eprintln!("crmgate export: {}", ended.message);
    ExitCode::from(ended.code)
}

/// Resolves on SIGTERM or SIGINT.
async fn terminated() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

async fn serve(path: PathBuf, config: Config) -> anyhow::Result<()> {
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let server = Server::bind(config, Some(path.clone())).await?;
    match server.tls_addr() {
        Some(tls) => {
            tracing::info!(api = %server.api_addr(), api_tls = %tls, admin = %server.admin_addr(), config = %path.display(), "crmgate listening")
        }
        None => {
            tracing::info!(api = %server.api_addr(), admin = %server.admin_addr(), config = %path.display(), "crmgate listening")
        }
    }
    let gateway = server.gateway();
    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading config");
            let gw = gateway.clone();
            let _ = tokio::task::spawn_blocking(move || gw.reload()).await;
        }
    });
    server.run(terminated()).await?;
    Ok(())
}

async fn sim(args: SimArgs) -> anyhow::Result<()> {
    let listen = args.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let limiter = LimiterKind::parse(&args.limiter, args.burst).map_err(anyhow::Error::msg)?;
    let simulator = Simulator::new(SimConfig {
        limiter,
        general_per_second: args.general_limit,
        tls: args.tls.then_some(SimTls {
            http2: !args.http1_only,
        }),
        rtt: args.rtt,
        handshake: args.handshake,
        ..SimConfig::default()
    });
    if let Some(pem) = simulator.ca_pem() {
        let path = args.ca_out.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("crmgate-sim-ca-{}.pem", std::process::id()))
        });
        std::fs::write(&path, pem)
            .with_context(|| format!("cannot write the CA certificate to {}", path.display()))?;
        // On stdout, for a script to pick up; the key never leaves memory.
        println!("CA certificate: {}", path.display());
        println!("Trust it with: [upstream] ca_file = \"{}\"", path.display());
    }
    let scheme = if args.tls { "https" } else { "http" };
    tracing::info!(
        url = %format!("{scheme}://{}", listener.local_addr()?),
        key = "demo-crm-key",
        rtt = ?args.rtt,
        handshake = ?args.handshake,
        http2 = args.tls && !args.http1_only,
        limiter = %limiter,
        general_limit = args.general_limit,
        "RetailCRM simulator listening"
    );
    simulator.serve(listener, terminated()).await?;
    Ok(())
}

async fn demo(listen: SocketAddr, admin_listen: SocketAddr) -> anyhow::Result<()> {
    let sim = Simulator::spawn(SimConfig::default(), "127.0.0.1:0".parse()?)
        .await
        .context("cannot start the simulator")?;
    let text = format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin_listen}\"\n\
         [[tenants]]\nname = \"demo\"\nbase_url = \"{}\"\napi_key = \"demo-crm-key\"\n\
         client_keys = [\"demo-client-key\"]\nsite = \"main\"\n",
        sim.base_url()
    );
    let config =
        Config::from_toml(&text, "demo config", &|_| None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = Server::bind(config, None)
        .await
        .context("cannot start the gateway (is the port free? try --listen)")?;
    let (api, admin) = (server.api_addr(), server.admin_addr());
    println!(
        "Status page: http://{admin}/\n\n\
         crmgate demo: a simulated RetailCRM at {sim} and crmgate in front of it.\n\n\
         Gateway: http://{api}   (client key: demo-client-key; the CRM key stays inside crmgate)\n\
         Admin:   http://{admin}/status  http://{admin}/metrics\n\n\
         Try:\n  \
         curl -s 'http://{api}/api/v5/orders?limit=20&page=2' -H 'X-API-KEY: demo-client-key'\n  \
         curl -s -X POST 'http://{api}/demo/api/v5/orders/create' -H 'X-API-KEY: demo-client-key' \
         --data-urlencode 'order={{\"externalId\":\"demo-1\",\"firstName\":\"Ann\"}}'\n\n\
         Press Ctrl-C to stop.",
        sim = sim.base_url()
    );
    server.run(terminated()).await?;
    sim.shutdown();
    Ok(())
}
