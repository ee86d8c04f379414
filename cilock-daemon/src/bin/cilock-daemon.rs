//! `cilock-daemon`: the privileged per-runner daemon. It traces CI steps
//! (one cgroup per step) and signs their attestations; the CLI talks to it
//! over a Unix socket.
//!
//! Start-up: read the config (`--config`, default `/etc/cilock/cilock.toml`,
//! which may be absent), refuse a signing key that is not root-owned or is
//! accessible to group/others, load it, start the engine, bind the socket,
//! then tell systemd `READY=1`. `WATCHDOG=1` pings follow when systemd asks
//! for them (`WatchdogSec=`), each after checking that the engine answers.
//! SIGTERM/SIGINT: `STOPPING=1`, stop accepting, finish requests in flight
//! (for at most a third of `stop_timeout`), remove the socket, end every
//! active step and keep its signed attestation in `state_dir/kept/<uid>/`, exit
//! 0. The whole stop takes at most `stop_timeout` (default 45 s, below the
//! unit's `TimeoutStopSec`): a request stuck in a blocking call (a FIFO, a
//! hung attestor helper) or a step that cannot be ended in time never holds
//! the exit up. What was cut short is logged, and the daemon then exits 1;
//! steps it could not end keep their records in `state_dir/steps/` and the
//! next daemon on the same `cgroup_parent` ends them with an attestation
//! that says the trace was interrupted.
//!
//! The Docker API proxy (`docker_proxy`) starts after the socket is bound
//! and stops first at a stop (its hijacked streams and builds are cut).
//!
//! One daemon per `cgroup_parent`: the engine holds a lock on the parent
//! cgroup; a second daemon on the same parent refuses to start (exit 1)
//! before touching anything.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser};
use sd_notify::NotifyState;
use tracing::{debug, error, info, warn};

use cilock_api::{Peer, StepService};
use cilock_daemon::config::{check_key_file, DaemonConfig, DEFAULT_CONFIG_PATH};
use cilock_daemon::docker::{Proxy as DockerProxy, StepDirectory};
use cilock_daemon::engine::{EngineConfig, Reap};
use cilock_daemon::server::{Access, Server};
use cilock_daemon::service::DaemonService;
use cilock_evidence::keys::Signer;

/// cilock-daemon: traces CI steps and signs their attestations.
#[derive(Debug, Parser)]
#[command(name = "cilock-daemon", version, about, long_about = None)]
struct Args {
    /// Configuration file [default: /etc/cilock/cilock.toml, used only if it exists].
    #[arg(long, value_name = "FILE", env = "CILOCK_CONFIG")]
    config: Option<PathBuf>,
    /// Socket to listen on (overrides the config file).
    #[arg(long, value_name = "PATH", env = "CILOCK_SOCKET")]
    socket: Option<PathBuf>,
    /// Signing key, PEM (overrides the config file).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Check the configuration and the signing key, print a summary, exit.
    #[arg(long)]
    check_config: bool,
    /// Write this man page (cilock-daemon.8) into DIR, created if missing,
    /// and exit (packaging).
    #[arg(long, value_name = "DIR", hide = true)]
    manpage: Option<PathBuf>,
}

fn main() -> ExitCode {
    // The attestor helper: dispatched before any argument, configuration or
    // key is read (the key must never be in the helper's memory).
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(
            cilock_daemon::attest_helper::protocol::HELPER_ARG,
        ))
    {
        return cilock_daemon::attest_helper::child::main();
    }
    let args = Args::parse();
    if let Some(dir) = &args.manpage {
        return match manpage::write(Args::command(), dir) {
            Ok(path) => {
                println!("{}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cilock-daemon: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("cilock-daemon: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn non_empty(p: Option<PathBuf>) -> Option<PathBuf> {
    p.filter(|p| !p.as_os_str().is_empty())
}

fn run(args: Args) -> anyhow::Result<()> {
    let explicit = non_empty(args.config);
    let config_path = explicit
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let (mut cfg, read) = DaemonConfig::load_or_default(&config_path, explicit.is_some())?;
    if let Some(socket) = non_empty(args.socket) {
        cfg.socket = socket;
    }
    if let Some(key) = non_empty(args.key) {
        cfg.key = key;
    }
    // Overrides must be as valid as the file's values.
    cfg.validate("command line")?;

    init_logging(&cfg.log_level);
    if read {
        info!(config = %config_path.display(), "configuration loaded");
    } else {
        info!(config = %config_path.display(), "no configuration file; using defaults");
    }

    check_key_file(&cfg.key)?;
    let signer = Signer::from_file(&cfg.key)
        .with_context(|| format!("loading signing key {}", cfg.key.display()))?;

    if args.check_config {
        print_summary(&cfg, &config_path, read, &signer)?;
        return Ok(());
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cilock-daemon")
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve(cfg, signer));
    // Blocking-pool threads stuck in a call (a FIFO, a slow file system)
    // must not keep the daemon alive: they are abandoned.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    result
}

/// How long the runtime waits for blocking threads at exit (part of the
/// stop timeout's last margin).
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(500);
/// Left of the stop timeout after ending the steps: the runtime's shutdown
/// and the exit.
const STOP_MARGIN: Duration = Duration::from_secs(1);

/// Once a stop begins: a thread that ends the process when the stop
/// timeout is reached, whatever is still running (the last resort; the
/// phases of the stop are bounded to finish before it).
fn arm_stop_deadline(stop_timeout: Duration) {
    let spawned = std::thread::Builder::new()
        .name("cilock-stop-deadline".into())
        .spawn(move || {
            std::thread::sleep(stop_timeout);
            error!("stop: the stop timeout ({stop_timeout:?}) is reached; exiting now. Steps not ended keep their records and the next daemon on this cgroup_parent ends them");
            // SAFETY: ends the process at once; nothing is unwound.
            unsafe { libc::_exit(1) };
        });
    if let Err(e) = spawned {
        warn!("cannot start the stop deadline thread: {e}");
    }
}
/// The peer the daemon's own status queries run as.
const ROOT: Peer = Peer {
    uid: 0,
    gid: 0,
    pid: 0,
};

fn init_logging(level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| {
            tracing_subscriber::EnvFilter::try_new(level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        });
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // journald stamps lines itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn print_summary(
    cfg: &DaemonConfig,
    config_path: &std::path::Path,
    read: bool,
    signer: &Signer,
) -> anyhow::Result<()> {
    let access = Access::for_group(&cfg.group)
        .with_context(|| format!("looking up group {:?}", cfg.group))?;
    println!(
        "config:        {}{}",
        config_path.display(),
        if read { "" } else { " (absent: defaults)" }
    );
    println!("socket:        {}", cfg.socket.display());
    match access {
        Access::Group { gid, .. } => println!(
            "access:        root and group {} (gid {gid}); socket mode 0660",
            cfg.group
        ),
        Access::RootOnly => println!(
            "access:        root only (group {} does not exist); socket mode 0600",
            cfg.group
        ),
    }
    println!(
        "key:           {} (keyid {})",
        cfg.key.display(),
        signer.key_id()
    );
    println!("backend:       {:?}", cfg.backend);
    println!("step_timeout:  {} s", cfg.step_timeout.as_secs());
    println!("cgroup_parent: {}", cfg.cgroup_parent);
    println!(
        "attestations:  {}",
        if cfg.default_attestations.is_empty() {
            "(none besides command-run, material, product)".to_string()
        } else {
            cfg.default_attestations.join(", ")
        }
    );
    println!(
        "helper:        PATH {}; timeout {} s; cpu {} s; memory {} bytes; max reply {} bytes",
        cfg.helper.path,
        cfg.helper.timeout.as_secs(),
        cfg.helper.cpu_seconds,
        cfg.helper.memory,
        cfg.helper.max_reply
    );
    println!("stop_timeout:  {} s", cfg.stop_timeout.as_secs_f64());
    match cfg.docker_proxy_config() {
        Some(p) => println!(
            "docker proxy:  {} -> {} (BuildKit cgroup {})",
            p.socket.display(),
            p.engine.display(),
            p.buildkit_cgroup
        ),
        None => println!("docker proxy:  disabled"),
    }
    if cfg.store.is_empty() {
        println!("stores:        none");
    } else {
        println!(
            "stores:        {} (timeout {} s, retry every {} s, credentials from {})",
            cfg.store.join(", "),
            cfg.store_timeout.as_secs_f64(),
            cfg.store_retry.as_secs_f64(),
            cfg.store_docker_config
                .as_ref()
                .map_or("$DOCKER_CONFIG or ~/.docker".to_string(), |d| d
                    .display()
                    .to_string())
        );
    }
    println!("state_dir:     {}", cfg.state_dir.display());
    println!("log_level:     {}", cfg.log_level);
    println!("configuration OK");
    Ok(())
}

/// Builds the engine-backed service.
fn build_service(
    cfg: EngineConfig,
    signer: Signer,
    stores: cilock_daemon::unpushed::StoreSettings,
) -> anyhow::Result<Arc<DaemonService>> {
    DaemonService::with_stores(cfg, signer, stores)
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        debug!("sd_notify failed: {e}");
    }
}

async fn serve(cfg: DaemonConfig, signer: Signer) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;

    notify(&[NotifyState::Status("starting the tracing engine")]);
    let keyid = signer.key_id().to_string();
    let engine_cfg = cfg.engine_config();
    let stores = cfg.store_settings();
    // Loading probes can block for a while: keep it off the async workers,
    // but inside the runtime (the engine may spawn tasks).
    let handle = tokio::runtime::Handle::current();
    let service = tokio::task::spawn_blocking(move || {
        let _guard = handle.enter();
        build_service(engine_cfg, signer, stores)
    })
    .await
    .context("the engine start-up task failed")?
    .context("starting the tracing engine")?;
    let daemon_service = service.clone();
    let service: Arc<dyn StepService> = service;

    let server = Server::bind(cfg.server_config())?;
    // The Docker API proxy: a failure to start it is logged, not fatal
    // (the daemon's own service does not depend on it).
    let proxy = match cfg.docker_proxy_config() {
        Some(pc) => {
            let dir: Arc<dyn StepDirectory> = daemon_service.engine().clone();
            match DockerProxy::start(pc, dir) {
                Ok(p) => Some(p),
                Err(e) => {
                    error!("the docker proxy did not start: {e}");
                    None
                }
            }
        }
        None => None,
    };
    let status = {
        let s = service.clone();
        tokio::task::spawn_blocking(move || s.status(ROOT))
            .await
            .context("querying the engine's status")?
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server_task = tokio::spawn(server.serve(service.clone(), async move {
        let _ = stop_rx.await;
    }));

    let ready = format!(
        "listening on {}; backend {}; key {keyid}",
        cfg.socket.display(),
        status.backend
    );
    info!(socket = %cfg.socket.display(), backend = %status.backend, keyid = %keyid, "ready");
    notify(&[NotifyState::Ready, NotifyState::Status(&ready)]);

    let watchdog = if let Some(usec) = watchdog_usec() {
        let period = Duration::from_micros(usec / 2).max(Duration::from_millis(100));
        info!(every = ?period, "systemd watchdog enabled");
        Some(tokio::spawn(watchdog_loop(service.clone(), period)))
    } else {
        None
    };

    let result = tokio::select! {
        _ = sigterm.recv() => { info!("SIGTERM: shutting down"); None }
        _ = sigint.recv() => { info!("SIGINT: shutting down"); None }
        r = &mut server_task => Some(r),
    };
    let stop_began = std::time::Instant::now();
    arm_stop_deadline(cfg.stop_timeout);
    notify(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
    if let Some(w) = watchdog {
        w.abort();
    }
    if let Some(p) = proxy {
        p.stop().await;
    }
    let served = match result {
        Some(r) => r,
        None => {
            let _ = stop_tx.send(());
            server_task.await
        }
    };
    drop(service);
    // End every step still active and keep its attestation, within a bound.
    notify(&[NotifyState::Status("ending active steps")]);
    let reaper = daemon_service.clone();
    let reap = tokio::task::spawn_blocking(move || {
        reaper.reap(Reap::All);
        reaper.engine().remove_parent();
    });
    let left = cfg
        .stop_timeout
        .saturating_sub(stop_began.elapsed())
        .saturating_sub(STOP_MARGIN);
    let mut cut_short = false;
    match tokio::time::timeout(left, reap).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!("ending the active steps failed: {e}"),
        Err(_) => {
            cut_short = true;
            let left = daemon_service.engine().recorded_steps();
            error!(
                "stop: ending the active steps did not finish within the stop timeout ({:?}); exiting anyway. Steps not attested ({}): {}; the next daemon on this cgroup_parent ends them (their attestation says the trace was interrupted)",
                cfg.stop_timeout,
                left.len(),
                left.join(", ")
            );
        }
    }
    drop(daemon_service);
    match served {
        Ok(Ok(())) if cut_short => Err(anyhow::anyhow!(
            "the stop was cut short at stop_timeout ({:?})",
            cfg.stop_timeout
        )),
        Ok(Ok(())) => {
            info!("stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(anyhow::anyhow!("the socket server failed: {e}")),
    }
}

/// The watchdog interval systemd asks for, as `sd_watchdog_enabled(3)`
/// reads it: `WATCHDOG_USEC`, applying to this process unless `WATCHDOG_PID`
/// names another one.
fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    match std::env::var("WATCHDOG_PID") {
        Ok(pid) if !pid.is_empty() => {
            (pid.trim().parse::<u32>().ok()? == std::process::id()).then_some(usec)
        }
        _ => Some(usec),
    }
}

/// Pings the systemd watchdog every `period`, but only while the engine
/// answers a status query within that period; the status line shows the
/// active steps.
async fn watchdog_loop(service: Arc<dyn StepService>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = service.clone();
        let probe = tokio::task::spawn_blocking(move || s.status(ROOT));
        match tokio::time::timeout(period, probe).await {
            Ok(Ok(status)) => {
                let line = match status.steps.len() {
                    0 => "serving; no active step".to_string(),
                    1 => format!("serving; 1 active step ({})", status.steps[0]),
                    n => format!("serving; {n} active steps"),
                };
                notify(&[NotifyState::Watchdog, NotifyState::Status(&line)]);
            }
            Ok(Err(e)) => warn!("engine status query failed: {e}; withholding the watchdog ping"),
            Err(_) => {
                warn!("engine did not answer within {period:?}; withholding the watchdog ping")
            }
        }
    }
}

/// `cilock-daemon --manpage DIR` (hidden; packaging): `cilock-daemon.8`,
/// generated from the argument definition (clap_mangen) with the daemon's
/// FILES and related pages.
mod manpage {
    use std::path::{Path, PathBuf};

    use anyhow::Context as _;
    use cilock_api::manpage::{finish_page, title_line};
    use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
    use clap_mangen::Man;

    /// The page's section: system administration, daemons.
    const SECTION: &str = "8";

    /// What the daemon reads and writes, with their defaults.
    const FILES: &[(&str, &str)] = &[
        (
            cilock_daemon::config::DEFAULT_CONFIG_PATH,
            "The configuration (TOML; every key optional, unknown keys are an error). \
             Check it with cilock-daemon --check-config.",
        ),
        (
            cilock_daemon::config::DEFAULT_KEY_PATH,
            "The signing key (PEM, PKCS#8), owned by root with mode 0600 or 0400, else the \
             daemon refuses to start; its public key is beside it (.pem.pub). Created by \
             cilock keygen.",
        ),
        (
            cilock_api::DEFAULT_SOCKET,
            "The socket the cilock command talks to: mode 0660 with group cilock when \
             that group exists, else 0600 (root only).",
        ),
        (
            "/var/lib/cilock",
            "The state directory: attestations of steps the daemon ended (kept/, for \
             cilock step fetch), envelopes not yet pushed to a store (unpushed/).",
        ),
    ];

    /// What the page adds to clap's description.
    const DESCRIPTION: &[&str] = &[
        "cilock-daemon runs as root, usually as the systemd service cilock.service \
         (Type=notify: it reports readiness once the socket listens). Members of the \
         cilock group mark CI steps through it (cilock step begin, cilock step end, \
         cilock run): it traces every process of a step (eBPF, else ptrace), hashes \
         the files they read and wrote, and signs the step's attestation with its key, \
         which no job can read.",
    ];

    /// Renders the page.
    pub fn render(cmd: clap::Command) -> anyhow::Result<Vec<u8>> {
        let version = cmd.get_version().unwrap_or_default().to_owned();
        let man = Man::new(cmd).section(SECTION);
        let mut w = Vec::new();
        w.extend_from_slice(title_line("CILOCK-DAEMON", SECTION, &version).as_bytes());
        man.render_name_section(&mut w)?;
        man.render_synopsis_section(&mut w)?;
        man.render_description_section(&mut w)?;
        let mut roff = Roff::new();
        for p in DESCRIPTION {
            roff.control("PP", []);
            roff.text([roman(*p)]);
        }
        roff.to_writer(&mut w)?;
        man.render_options_section(&mut w)?;
        let mut roff = Roff::new();
        roff.control("SH", ["FILES"]);
        for (path, what) in FILES {
            roff.control("TP", []);
            roff.text([italic(*path)]);
            roff.text([roman(*what)]);
        }
        roff.control("SH", ["VERSION"]);
        roff.text([roman(format!("cilock {version}"))]);
        roff.control("SH", ["SEE ALSO"]);
        let pages = ["cilock", "cilock-step", "cilock-run", "cilock-keygen"];
        let mut line: Vec<Inline> = Vec::new();
        for (i, p) in pages.iter().enumerate() {
            line.push(bold(*p));
            let sep = if i + 1 < pages.len() { ", " } else { "" };
            line.push(roman(format!("(1){sep}")));
        }
        roff.text(line);
        roff.to_writer(&mut w)?;
        Ok(finish_page(&w))
    }

    /// Writes `DIR/cilock-daemon.8` (DIR created if missing); returns its path.
    pub fn write(cmd: clap::Command, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the man page directory {}", dir.display()))?;
        let path = dir.join(format!("cilock-daemon.{SECTION}"));
        let page = render(cmd)?;
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}
