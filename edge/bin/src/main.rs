//! `edge`: the WebAssembly-extensible video edge. See `edge --help` and the README.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use edge_config::{EdgeConfig, Env, ProcessEnv, Role, Roles};
use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

mod policy;

#[derive(Parser)]
#[command(name = "edge", version, about = "WebAssembly-extensible video edge")]
struct Cli {
    /// Edge config file (TOML). Without it, built-in defaults serve the demo stream.
    #[arg(long, short, global = true, env = "EDGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the configured roles (`roles`, default the edge) until SIGTERM/SIGINT, then drain.
    Serve {
        /// A role to run: edge, seeder, signaling, or all (repeatable; replaces `roles` of the
        /// config).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Plain HTTP/1.1 + h2c listener (repeatable; replaces `server.listen`; port 0 = any free port).
        #[arg(long)]
        listen: Vec<SocketAddr>,
        /// TLS listener (repeatable; replaces `server.tls_listen`).
        #[arg(long)]
        tls_listen: Vec<SocketAddr>,
        /// Disable the TLS listeners.
        #[arg(long, conflicts_with = "tls_listen")]
        no_tls: bool,
        /// Admin listener (health, metrics).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Run only the seeder role (`serve --role seeder`): serve `seeder.cache_path` to edges,
    /// publish it in the Redis directory (`stream:<id>:segment:*`), expire old files. Same config
    /// file as `serve`.
    Seeder {
        /// Seeder listener (replaces `seeder.listen`; port 0 = any free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Admin listener (health, metrics).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Check the config, the policies file and every policy module; list every problem.
    Validate,
    /// Print a signed URL for PATH with the configured secret.
    SignUrl {
        /// Path to sign, e.g. /vod/movies/demo/index.m3u8 (its directory is covered).
        path: String,
        /// Lifetime in seconds (default: `signed_url.expiration`).
        #[arg(long)]
        ttl: Option<u64>,
        /// Base URL to prefix (default: the first plain listener of the config).
        #[arg(long)]
        base: Option<String>,
    },
    /// Write, build, test, validate and sign policies (needs no edge config).
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Read the event spool (`events.spool_path`, default `<data_dir>/events`).
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Print spooled events as JSON lines (seq, kind, key, publish, at, payload), oldest first.
    /// Works while an edge is running.
    Tail {
        /// Only the last N events (then new ones with --follow).
        #[arg(long, short = 'n')]
        last: Option<usize>,
        /// Keep printing events as they are appended.
        #[arg(long, short)]
        follow: bool,
        /// Only events of this kind: stream.start, stream.progress, stream.stop, policy.denied,
        /// cache.fill, signaling.peers.
        #[arg(long)]
        kind: Option<String>,
    },
}

/// Large buffers (the cache's slices, 4 MiB by default) always get their own mapping, returned to
/// the system when freed. glibc otherwise raises its mmap threshold to the size of the first such
/// buffer freed and serves later ones from its heaps, which keep what is freed: an edge that had
/// streamed a 1 GiB object through its 256 MiB memory tier held 520 MiB instead of 340 MiB.
/// 1 MiB, not lower: at 256 KiB every segment-sized buffer (a disk hit, a 256 KiB slice) was an
/// mmap + munmap and its page faults, -20 % requests/s on the zipf bench (bench/RESULTS.md).
#[allow(
    unsafe_code,
    reason = "mallopt has no safe binding; the only unsafe in the project"
)]
fn map_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// The process environment, with `--role` in place of `EDGE_ROLES`.
struct CliEnv {
    roles: Option<String>,
}

impl Env for CliEnv {
    fn var(&self, name: &str) -> Option<String> {
        match (name, &self.roles) {
            ("EDGE_ROLES", Some(roles)) => Some(roles.clone()),
            _ => ProcessEnv.var(name),
        }
    }

    fn all(&self) -> std::collections::HashMap<String, String> {
        ProcessEnv.all()
    }
}

fn main() -> ExitCode {
    map_large_buffers();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let command = match cli.command {
        Command::Policy { command } => return policy::run(command),
        other => other,
    };
    // Roles named on the command line replace the file's before it is validated (a seeder-only
    // process needs no viewer listener).
    let cli_roles: Vec<String> = match &command {
        Command::Serve { roles, .. } => roles.clone(),
        Command::Seeder { .. } => vec![Role::Seeder.name().to_owned()],
        _ => Vec::new(),
    };
    if let Err(problems) = Roles::parse(&cli_roles)
        && !cli_roles.is_empty()
    {
        for p in &problems {
            eprintln!("--role: {p}");
        }
        eprintln!("edge: {} error(s)", problems.len());
        return ExitCode::from(2);
    }
    let env = CliEnv {
        roles: (!cli_roles.is_empty()).then(|| cli_roles.join(",")),
    };
    let (cfg, errors) = EdgeConfig::load_partial(cli.config.as_deref(), &env);
    if !errors.is_empty() {
        eprintln!("{errors}");
        let mut count = errors.len();
        // `edge validate` goes on to the policies file when the edge file names it validly.
        let policies_named = !errors.iter().any(|e| {
            e.field.starts_with("policies") || e.field == "EDGE_POLICIES" || e.field.is_empty()
        });
        if matches!(command, Command::Validate)
            && policies_named
            && let Err(e) = edge_app::validate_policies(&cfg)
        {
            count += report(&e);
        }
        eprintln!("edge: {count} error(s)");
        return ExitCode::from(2);
    }
    let result = match command {
        Command::Validate => edge_app::validate(&cfg).map(|summary| println!("{summary}")),
        Command::SignUrl { path, ttl, base } => sign_url(&cfg, &path, ttl, base),
        Command::Serve {
            roles: _,
            listen,
            tls_listen,
            no_tls,
            admin_listen,
        } => {
            let mut cfg = cfg;
            if !listen.is_empty() {
                cfg.server.listen = listen;
            }
            if !tls_listen.is_empty() {
                cfg.server.tls_listen = tls_listen;
            }
            if no_tls {
                cfg.server.tls_listen.clear();
            }
            if let Some(a) = admin_listen {
                cfg.server.admin_listen = a;
            }
            serve(cfg)
        }
        Command::Seeder {
            listen,
            admin_listen,
        } => {
            let mut cfg = cfg;
            if let Some(a) = listen {
                cfg.seeder.listen = a;
            }
            if let Some(a) = admin_listen {
                cfg.server.admin_listen = a;
            }
            serve(cfg)
        }
        Command::Events {
            command: EventsCommand::Tail { last, follow, kind },
        } => events_tail(&cfg, last, follow, kind),
        Command::Policy { .. } => unreachable!("handled before the config is loaded"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let count = report(&e);
            eprintln!("edge: {count} error(s)");
            ExitCode::FAILURE
        }
    }
}

/// Prints every problem of a failed load, one per line; returns how many.
fn report(e: &anyhow::Error) -> usize {
    match e.downcast_ref::<edge_app::Problems>() {
        Some(p) => {
            eprintln!("{p}");
            p.0.len()
        }
        None => {
            eprintln!("edge: {e:#}");
            1
        }
    }
}

fn sign_url(
    cfg: &EdgeConfig,
    path: &str,
    ttl: Option<u64>,
    base: Option<String>,
) -> anyhow::Result<()> {
    anyhow::ensure!(path.starts_with('/'), "PATH must start with /");
    let signed = edge_app::sign_path(cfg, path, ttl.unwrap_or(cfg.signed_url.expiration))?;
    let base = match (
        base.or_else(|| cfg.server.public_url.clone()),
        cfg.server.listen.first(),
        cfg.server.tls_listen.first(),
    ) {
        (Some(base), _, _) => base,
        (None, Some(a), _) => format!("http://{a}"),
        (None, None, Some(a)) => format!("https://{a}"),
        (None, None, None) => {
            anyhow::bail!(
                "no viewer listener to build the URL on: pass --base or set server.public_url"
            )
        }
    };
    println!("{}{signed}", base.trim_end_matches('/'));
    Ok(())
}

fn events_tail(
    cfg: &EdgeConfig,
    last: Option<usize>,
    follow: bool,
    kind: Option<String>,
) -> anyhow::Result<()> {
    let kind = kind
        .map(|k| {
            edge_events::EventKind::ALL
                .into_iter()
                .find(|e| e.as_str() == k)
                .with_context(|| format!("unknown event kind {k:?}"))
        })
        .transpose()?;
    let dir = cfg.spool_dir();
    anyhow::ensure!(
        dir.is_dir(),
        "no event spool at {} (set events.spool_path or EDGE_EVENTS_SPOOL)",
        dir.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let opts = edge_events::TailOptions { last, follow, kind };
    let mut out = std::io::stdout();
    runtime.block_on(edge_events::tail(&dir, opts, &mut out))?;
    Ok(())
}

fn serve(cfg: EdgeConfig) -> anyhow::Result<()> {
    // One thread: a current-thread runtime has no cross-thread wake-ups (measured: see bench/RESULTS.md).
    let mut builder = if cfg.server.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cfg.server.threads);
        b
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let edge = edge_app::Edge::start(cfg).await?;
        let addrs = edge.addrs().clone();
        for a in &addrs.http {
            tracing::info!("listening on http://{a} (http/1.1, h2c)");
        }
        for a in &addrs.https {
            tracing::info!("listening on https://{a} (h2, http/1.1)");
        }
        if let Some(a) = addrs.seeder {
            tracing::info!("listening on http://{a} (seeder)");
        }
        for a in &addrs.signaling_http {
            tracing::info!("listening on ws://{a} (signaling)");
        }
        for a in &addrs.signaling_https {
            tracing::info!("listening on wss://{a} (signaling)");
        }
        tracing::info!("listening on http://{} (admin)", addrs.admin);
        if let Some(url) = edge.demo_url() {
            tracing::info!("demo stream: {url}");
            tracing::info!("play it: ffmpeg -i '{url}' -c copy demo.ts");
        }
        wait_for_signal().await?;
        tracing::info!("draining");
        let cut = edge.shutdown().await;
        if cut > 0 {
            tracing::warn!(cut, "drain timed out with requests in flight");
        }
        tracing::info!("stopped");
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
