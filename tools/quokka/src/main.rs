//! `quokka`: runs a linked app as a service, lists the apps, or runs the built-in demo.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use quokka::duration::parse_duration;
use quokka::inputs::{parse_addr, resolve, resolve_endpoints, OUTPUTS};
use quokka_engine::{Config, Ending, Engine, Input, JoinError, SourcesClosed};
use quokka_io::control::{Request, Response, Timeouts};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Quokka: a thread-per-core stream processing engine.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an app as a service until Ctrl-C or SIGTERM, then drain and print a summary (on a
    /// joined node, the signal leaves the cluster: see --leave-grace).
    ///
    /// Once it serves, it prints the addresses it bound as one line on stdout (a port given as
    /// 0 is chosen then), e.g. `listening control=127.0.0.1:6000 data=127.0.0.1:41235
    /// http=127.0.0.1:6001 in=text@127.0.0.1:7000`: one `in=NAME@HOST:PORT` per source, none on
    /// a joining node without --in, `control=none` on a joining node without --control, and
    /// `http=none` with `--http none`.
    Run(Box<RunArgs>),
    /// List the apps linked into this binary.
    Apps,
    /// Run word count on bundled and generated text over loopback TCP, growing from 1 core
    /// mid-stream, and print the results.
    Demo(quokka::demo::DemoArgs),
    /// Drive a running engine through its control endpoint.
    Ctl(CtlArgs),
}

#[derive(clap::Args)]
struct CtlArgs {
    /// The coordinator's control address (`quokka run --control`).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:6000")]
    control: String,
    #[command(flatten)]
    token: TokenArgs,
    /// Seconds to wait for the answer (a change may take a while). Separately, an endpoint
    /// that does not greet within 5 s is taken for something else and gets nothing.
    #[arg(long, value_name = "SECS", default_value_t = Timeouts::ANSWER.as_secs())]
    timeout: u64,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The cluster's shared secret: every join, control and data connection must present it
    /// [default: none, and then none is checked]
    #[arg(long, value_name = "TOKEN")]
    cluster_token: Option<String>,
    /// Read the cluster token from a file (its first line).
    #[arg(long, value_name = "FILE", conflicts_with = "cluster_token")]
    cluster_token_file: Option<std::path::PathBuf>,
}

impl TokenArgs {
    fn token(&self) -> Result<String> {
        match (&self.cluster_token, &self.cluster_token_file) {
            (Some(t), _) if t.is_empty() => {
                anyhow::bail!(
                    "--cluster-token is empty: give a secret, or leave the flag out to check none"
                )
            }
            (Some(t), _) => Ok(t.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read --cluster-token-file {}", path.display())
                })?;
                let token = text.lines().next().unwrap_or("").trim().to_string();
                if token.is_empty() {
                    // A blank first line would silently turn every check off.
                    anyhow::bail!(
                        "--cluster-token-file {}: its first line is empty; the token goes there",
                        path.display()
                    );
                }
                Ok(token)
            }
            (None, None) => Ok(String::new()),
        }
    }
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Every node with its cores, slots per core, routing epoch, per-core rates and latency,
    /// any migration, any lost node, the last checkpoint.
    Status {
        /// One JSON object instead of text (its fields are listed in the README).
        #[arg(long)]
        json: bool,
    },
    /// Start N more cores on the coordinator's node and move slots onto them while the app runs
    /// (a node runs at most 256 cores).
    GrowCores { n: u16 },
    /// Move the slots and connections of the coordinator's N newest cores to its others, then
    /// stop them.
    ShrinkCores { n: u16 },
    /// Move every slot of a member node to the others, then let it exit. A node with open source
    /// connections refuses (close them, or send to another node, first).
    RemoveNode { name: String },
    /// Take a checkpoint now (needs `--state-dir` on `quokka run`) and wait until it is
    /// durable; refused while a change runs.
    Checkpoint,
    /// Autoscaling: `MIN..MAX` turns it on between those core counts, `on` with the range it
    /// last had, `off` turns it off (see `quokka run --autoscale`).
    Autoscale {
        #[arg(value_name = "on|off|MIN..MAX")]
        how: String,
    },
}

/// `--cores`: a count, or one per CPU this process may use.
#[derive(Clone, Copy)]
enum Cores {
    Count(usize),
    Auto,
}

fn parse_cores(s: &str) -> std::result::Result<Cores, String> {
    match s {
        "auto" => Ok(Cores::Auto),
        n => n
            .parse()
            .map(Cores::Count)
            .map_err(|_| format!("`{n}` is neither a number of cores nor `auto`")),
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum GuaranteeArg {
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The app to run (see `quokka apps`).
    app: String,
    /// A source: NAME@HOST:PORT to listen on, NAME@file:PATH for a file of frames, or
    /// NAME@lines:PATH for a file of lines (one message per line); NAME@ may be left out for a
    /// one-source app. Repeat for each source. A file is replayable: with --state-dir a restart
    /// goes on from where the last checkpoint says it stood. Optional on a joining node (it
    /// then hosts no source connections).
    #[arg(
        long = "in",
        value_name = "[NAME@]HOST:PORT|file:PATH|lines:PATH",
        required_unless_present = "join"
    )]
    inputs: Vec<String>,
    /// Keep reading file sources as they grow (like `tail -f`) instead of finishing at their end.
    #[arg(long)]
    follow: bool,
    /// Keep checkpoints here (a directory, created if missing; one per app and node): every
    /// stage's entities and timers, and where each file source and durable stream stood.
    /// Started again with the same command after a crash (kill -9, power cut), the engine
    /// restores the newest complete checkpoint and those sources go on from there; what plain
    /// TCP sources sent after it is lost. In a cluster every node has one (a joining node also
    /// needs --name); restart the coordinator first, then each node with its command: no
    /// source is read until all are back.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<std::path::PathBuf>,
    /// How often to take a checkpoint (with --state-dir), e.g. `1s`, `100ms`; `0s` takes them
    /// only when asked (`quokka ctl checkpoint`).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    checkpoint_interval: Duration,
    /// What sinks receive across a crash. at-least-once: outputs leave at once; after a crash,
    /// those produced after the last checkpoint come again (a reader sees a key's value repeat
    /// or go back, then rise again). exactly-once (needs --state-dir): outputs are released
    /// only by the checkpoint that covers them (the sink must speak the exactly-once protocol,
    /// as `quokka-recv --exactly-once` does; see the README): none lost, none twice, at the
    /// cost of a checkpoint interval of latency.
    #[arg(long, value_enum, default_value_t = GuaranteeArg::AtLeastOnce)]
    guarantee: GuaranteeArg,
    /// A sink: NAME@HOST:PORT, or HOST:PORT for a one-sink app; repeat for each sink (see
    /// `quokka apps`). Every core of every node connects to each and writes its outputs there
    /// (retrying until it is up). A joining node uses the cluster's unless given.
    #[arg(
        long = "out",
        value_name = "[NAME@]HOST:PORT",
        required_unless_present = "join"
    )]
    outputs: Vec<String>,
    /// This node's name in the cluster [default: w1, or node-PID when joining]
    #[arg(long)]
    name: Option<String>,
    /// Where the other nodes link to this one; only members (and a node joining) get in, each
    /// link proving its node with a secret the coordinator hands out [default: the control
    /// address's host or, when joining, the address this node reaches the coordinator from; any
    /// free port]
    #[arg(long, value_name = "HOST:PORT")]
    data: Option<String>,
    /// Join the running cluster whose coordinator has this control address.
    #[arg(long, value_name = "HOST:PORT")]
    join: Option<String>,
    #[command(flatten)]
    token: TokenArgs,
    /// Executors, 1 to 256 (one per CPU in production; more than the CPUs share them), or
    /// `auto`: one per CPU this process may use (its CPU affinity, e.g. `taskset` or a
    /// container's cpuset, capped by its cgroup's CPU quota, e.g. `docker --cpus 1.5` gives 2),
    /// placed on those CPUs.
    #[arg(long, value_name = "N|auto", default_value = "auto", value_parser = parse_cores)]
    cores: Cores,
    /// CPUs to place this node's executors on, e.g. `1` or `0,2`, each an online CPU (two
    /// nodes on one machine should not share CPUs) [default: every online CPU]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Slots in the routing table (the unit of placement), 1 to 16384; every node of a cluster
    /// has the same.
    #[arg(long, default_value_t = Config::DEFAULT_SLOTS)]
    slots: u32,
    /// Largest accepted frame payload in bytes (at least 1); a larger frame closes its
    /// connection.
    #[arg(long, default_value_t = quokka_io::framing::DEFAULT_MAX_FRAME)]
    max_frame: usize,
    /// Bytes of outputs each core buffers for the sink before it back-pressures the sources (at
    /// least 1).
    #[arg(long, default_value_t = Config::DEFAULT_SINK_BUFFER)]
    sink_buffer: usize,
    /// On shutdown, seconds to keep retrying an unreachable sink before giving up (and saying so).
    #[arg(long, default_value_t = 10)]
    drain_timeout: u64,
    /// Seconds a change (grow, shrink, a join, remove-node) waits for the cores at any one point
    /// before it gives up: steps not switched yet are called off, and a join or grow that moved
    /// nothing is rolled back. A step takes milliseconds; this is for a node or sink that stopped
    /// answering.
    #[arg(long, default_value_t = Config::DEFAULT_CHANGE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86400))]
    change_timeout: u64,
    /// On a joined node, SIGTERM (or Ctrl-C) leaves the cluster: the node stops accepting
    /// source connections, waits this long for the open ones to close, then closes them itself
    /// (everything they delivered is applied) and leaves. A second signal ends the wait at once.
    /// E.g. `10s`, `500ms`, `2m`.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    leave_grace: Duration,
    /// Where `quokka ctl` reaches this engine [default: 127.0.0.1:6000; none on a joining node,
    /// whose cluster is driven through its coordinator]
    #[arg(long, value_name = "HOST:PORT")]
    control: Option<String>,
    /// Where this node serves HTTP, for reading only: `/` a live dashboard, `/metrics` for
    /// Prometheus, `/status.json` (what `quokka ctl status --json` prints) and `/series.json`;
    /// `none` serves nothing. With a cluster token, every request must carry it
    /// (`Authorization: Bearer TOKEN`, or `?token=TOKEN` in the URL). [default: the control
    /// port + 1 on the control host (127.0.0.1:6001), or any free port if that one is taken or
    /// given to --data or --in; on a joining node without --control, any free port on the
    /// --data host or 127.0.0.1]
    #[arg(long, value_name = "HOST:PORT|none")]
    http: Option<String>,
    #[command(flatten)]
    autoscale: quokka::scaling::AutoscaleArgs,
}

fn main() {
    quokka::init_logging();
    let result = match Cli::parse().command {
        Command::Run(args) => run(*args),
        Command::Apps => quokka_apps::all()
            .iter()
            .try_for_each(|info| {
                let app = (info.build)();
                quokka::outln!("{:<14} {}", info.name, info.about)?;
                quokka::outln!(
                    "{:<14} sources: {}; sinks: {}",
                    "",
                    app.sources().join(", "),
                    app.sinks().join(", ")
                )
            })
            .map_err(Into::into),
        Command::Demo(args) => quokka::demo::run(args),
        Command::Ctl(args) => ctl(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn ctl(args: CtlArgs) -> Result<()> {
    let addr = parse_addr(&args.control).context("--control")?;
    let request = match args.command {
        CtlCommand::Status { json: false } => Request::Status,
        CtlCommand::Status { json: true } => Request::StatusJson,
        CtlCommand::GrowCores { n } => Request::GrowCores(n),
        CtlCommand::ShrinkCores { n } => Request::ShrinkCores(n),
        CtlCommand::RemoveNode { name } => Request::RemoveNode(name),
        CtlCommand::Checkpoint => Request::Checkpoint,
        CtlCommand::Autoscale { how } => Request::Autoscale(how),
    };
    let timeouts = Timeouts {
        answer: Duration::from_secs(args.timeout),
        ..Timeouts::default()
    };
    match quokka::control::request(addr, &args.token.token()?, &request, timeouts)? {
        Response::Ok(text) => Ok(quokka::outln!("{}", text.trim_end())?),
        Response::Error(text) => anyhow::bail!("{text}"),
        Response::Welcome(_) | Response::Joined(_) => {
            anyhow::bail!("unexpected answer (a join's) from {addr}")
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    let info = quokka_apps::find(&args.app).with_context(|| {
        let names: Vec<_> = quokka_apps::all().iter().map(|a| a.name).collect();
        format!(
            "no app named `{}` (linked apps: {})",
            args.app,
            names.join(", ")
        )
    })?;
    let app = (info.build)();
    let joining = args
        .join
        .as_deref()
        .map(parse_addr)
        .transpose()
        .context("--join")?;
    let inputs = if joining.is_some() && args.inputs.is_empty() {
        Vec::new()
    } else {
        resolve(app.sources(), &args.inputs, args.follow)?
    };
    let outputs = if joining.is_some() && args.outputs.is_empty() {
        Vec::new()
    } else {
        resolve_endpoints(OUTPUTS, app.sinks(), &args.outputs)?
    };
    let mut config = Config::new(Vec::new(), ([127, 0, 0, 1], 0).into());
    config.inputs = inputs;
    config.outputs = outputs.clone();
    config.state_dir = args.state_dir;
    config.checkpoint_interval = Some(args.checkpoint_interval).filter(|d| !d.is_zero());
    config.guarantee = match args.guarantee {
        GuaranteeArg::AtLeastOnce => quokka_engine::Guarantee::AtLeastOnce,
        GuaranteeArg::ExactlyOnce => quokka_engine::Guarantee::ExactlyOnce,
    };
    config.cpus = args.cpus;
    match args.cores {
        Cores::Count(n) => config.cores = n,
        Cores::Auto => {
            config.cores = quokka_engine::auto_cores();
            if config.cpus.is_empty() {
                config.cpus = quokka_engine::usable_cpus();
            }
            tracing::info!(
                "--cores auto: {} core(s), on CPUs {:?} (this process's affinity and CPU quota)",
                config.cores,
                config.cpus
            );
        }
    }
    config.n_slots = args.slots;
    config.max_frame = args.max_frame;
    config.sink_buffer = args.sink_buffer;
    config.drain_timeout = Duration::from_secs(args.drain_timeout);
    config.change_timeout = Duration::from_secs(args.change_timeout);
    config.token = args.token.token()?;
    config.autoscale_policy = args.autoscale.policy()?;
    config.autoscale = args.autoscale.autoscale;
    config.name = match (&args.name, joining) {
        (Some(name), _) => name.clone(),
        (None, None) => "w1".into(),
        (None, Some(_)) if config.state_dir.is_some() => anyhow::bail!(
            "a joining node with --state-dir needs --name: after a crash it must come back under the same name"
        ),
        (None, Some(_)) => format!("node-{}", std::process::id()),
    };
    config.data = args
        .data
        .as_deref()
        .map(parse_addr)
        .transpose()
        .context("--data")?;
    let control = match (&args.control, joining) {
        (Some(addr), _) => Some(addr.clone()),
        (None, None) => Some("127.0.0.1:6000".into()),
        (None, Some(_)) => None,
    };
    let control = control
        .map(|addr| -> Result<TcpListener> {
            let addr = parse_addr(&addr).context("--control")?;
            TcpListener::bind(addr).with_context(|| {
                format!(
                    "cannot listen for control connections on {addr} (choose another --control)"
                )
            })
        })
        .transpose()?;
    if config.data.is_none() {
        if let Some(l) = &control {
            config.data = Some((l.local_addr()?.ip(), 0).into());
        }
    }
    let control_addr = control.as_ref().map(TcpListener::local_addr).transpose()?;
    config.on_scale = args.autoscale.commands(control_addr, joining.is_some())?;
    // Ports asked for explicitly, which the default HTTP port must leave alone.
    let asked: Vec<u16> = (config.inputs.iter())
        .filter_map(|i| match i {
            Input::Tcp(a) => Some(a.port()),
            _ => None,
        })
        .chain(config.data.map(|d| d.port()))
        .filter(|&p| p != 0)
        .collect();
    let http = bind_http(args.http.as_deref(), control_addr, config.data, &asked)?;
    config.http = http.as_ref().map(TcpListener::local_addr).transpose()?;

    // Signals go into a channel, so the main thread can also wait for the cluster's word.
    let (signal_tx, signal_rx) = flume::unbounded();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    std::thread::spawn(move || {
        for s in signals.forever() {
            if signal_tx.send(s).is_err() {
                return;
            }
        }
    });

    // A member whose coordinator is lost joins it again as it was: same name, state dir and
    // source ports (a port given as 0 is the one chosen the first time).
    let mut again = config.clone();
    let engine = match joining {
        None => Engine::start(&app, config)?,
        Some(coordinator) => {
            let (engine, report) = Engine::join(&app, config, coordinator, outputs.clone())?;
            tracing::info!("node {} joined: {report}", engine.node_name());
            engine
        }
    };
    for &(source, addr) in engine.listening() {
        again.inputs[source] = Input::Tcp(addr);
    }
    let mut engine = Arc::new(engine);
    let current = Arc::new(RwLock::new(Some(engine.clone())));
    if let Some(control) = control {
        quokka::control::serve(control, current.clone());
    }
    // The policy decides about once a second (it does nothing while autoscaling is off).
    let scaling = current.clone();
    std::thread::Builder::new()
        .name("quokka-autoscale".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let engine = scaling.read().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(engine) = engine {
                engine.autoscale_step();
            }
        })?;
    if let Some(http) = http {
        quokka::web::serve(http, again.token.clone(), current.clone())
            .context("cannot start the HTTP endpoint")?;
    }
    report_listening(control_addr, again.http, &engine, app.sources());
    let listening: Vec<String> = (app.sources().iter().enumerate())
        .map(
            |(i, name)| match engine.listening().iter().find(|(s, _)| *s == i) {
                Some((_, addr)) => format!("{name}@{addr}"),
                None => format!("{name}@file"),
            },
        )
        .collect();
    tracing::info!(
        "{} running as node {} (data {}): sources {}",
        app.name(),
        engine.node_name(),
        engine.data_addr(),
        if listening.is_empty() {
            "none".to_string()
        } else {
            listening.join(" ")
        },
    );
    let summary = loop {
        let event = flume::Selector::new()
            .recv(&signal_rx, |s| s.ok().map(Err))
            .recv(engine.ended(), |e| e.ok().map(Ok))
            .wait();
        match event {
            Some(Ok(Ending::CoordinatorLost)) => {
                let Some(coordinator) = joining.filter(|_| again.state_dir.is_some()) else {
                    tracing::warn!(
                        "the coordinator is lost; without --state-dir this node cannot come back with the cluster: it runs on alone until a signal stops it"
                    );
                    continue;
                };
                tracing::warn!(
                    "the coordinator is lost: this node stops its cores and joins it again once it is back (restart it with its command and --state-dir); the whole cluster then goes on from its last checkpoint"
                );
                // The control endpoint lets go of the old engine first: its state dir and ports
                // are free once it is dropped.
                *current.write().unwrap_or_else(|e| e.into_inner()) = None;
                let summary = engine.finish(Ending::CoordinatorLost);
                tracing::info!("until the coordinator was lost:\n{summary}");
                drop(engine);
                match join_again(&app, &again, coordinator, &outputs, &signal_rx) {
                    Some(joined) => {
                        engine = Arc::new(joined);
                        *current.write().unwrap_or_else(|e| e.into_inner()) = Some(engine.clone());
                    }
                    None => break summary,
                }
            }
            Some(Ok(Ending::Rollback)) => {
                again.adopt = engine.lost_dirs();
                *current.write().unwrap_or_else(|e| e.into_inner()) = None;
                let summary = engine.finish(Ending::Rollback);
                tracing::info!("until the rollback:\n{summary}");
                drop(engine);
                engine = Arc::new(start_again(&app, &again)?);
                *current.write().unwrap_or_else(|e| e.into_inner()) = Some(engine.clone());
            }
            Some(Ok(ending)) => {
                tracing::info!("{ending:?}: finishing");
                break engine.finish(ending);
            }
            Some(Err(signal)) if joining.is_some() && engine.coordinator_lost() => {
                tracing::warn!(
                    "signal {signal}: the coordinator is lost; stopping this node on its own"
                );
                break engine.stop();
            }
            Some(Err(signal)) if joining.is_some() => {
                let grace = args.leave_grace;
                tracing::info!(
                    "signal {signal}: leaving the cluster; no new source connections, the open ones get {grace:?} to close (another signal closes them now)"
                );
                match engine.close_sources(grace, &signal_rx) {
                    SourcesClosed::BySenders => {}
                    SourcesClosed::Cut { cut } => {
                        tracing::info!("closed {cut} source connection(s) after the grace period")
                    }
                    SourcesClosed::StillOpen { open } => tracing::warn!(
                        "{open} source connection(s) still finishing what they received; asking to leave anyway"
                    ),
                }
                tracing::info!("asking the coordinator to remove this node");
                match engine.request_leave() {
                    Ok(report) => tracing::info!("{report}"),
                    // The coordinator cannot be reached or does not answer: as when it is lost,
                    // this node stops on its own (a stop must not wait on a silent peer).
                    Err(e @ JoinError::Control(_)) => {
                        tracing::warn!(
                            "cannot reach the coordinator to leave ({:#}); stopping this node on its own",
                            anyhow::Error::new(e)
                        );
                        break engine.stop();
                    }
                    Err(e) => {
                        tracing::error!("cannot leave the cluster: {:#}", anyhow::Error::new(e))
                    }
                }
            }
            Some(Err(signal)) => {
                tracing::info!("signal {signal}: stopping sources, draining in-flight messages");
                break engine.stop();
            }
            None => break engine.stop(),
        }
    };
    quokka::stdout::print(format_args!("{summary}"))?;
    if summary.undelivered() > 0 {
        anyhow::bail!("{} outputs were not delivered", summary.undelivered());
    }
    Ok(())
}

/// Joins the coordinator at `coordinator` again, once it is back, as the node `config` ran:
/// tries every second (logging each new reason it is not back yet) until the join goes
/// through, or a signal ends the wait (`None`).
fn join_again(
    app: &quokka_engine::App,
    config: &Config,
    coordinator: SocketAddr,
    outputs: &[SocketAddr],
    signals: &flume::Receiver<i32>,
) -> Option<Engine> {
    let mut said = String::new();
    loop {
        match Engine::join(app, config.clone(), coordinator, outputs.to_vec()) {
            Ok((engine, report)) => {
                tracing::info!(
                    "node {} joined the coordinator again: {report}",
                    engine.node_name()
                );
                return Some(engine);
            }
            Err(e) => {
                let why = format!("{:#}", anyhow::Error::new(e));
                if why != said {
                    tracing::warn!("not joined again yet ({why}); trying every second");
                    said = why;
                }
            }
        }
        if let Ok(signal) = signals.recv_timeout(Duration::from_secs(1)) {
            tracing::info!("signal {signal}: no longer waiting for the coordinator");
            return None;
        }
    }
}

/// Starts the coordinator again after a rollback, from its last checkpoint; retried for a
/// minute while the old engine's state dir and ports are let go of (a control request still
/// under way holds it a moment).
fn start_again(app: &quokka_engine::App, config: &Config) -> Result<Engine> {
    let mut tries = 0;
    loop {
        match Engine::start(app, config.clone()) {
            Ok(engine) => return Ok(engine),
            Err(e) if tries < 120 => {
                tries += 1;
                tracing::debug!("not started again yet: {e:#}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context("cannot start again after the rollback"))
            }
        }
    }
}

/// Binds the HTTP endpoint: `--http` as given (`none`: none), else next to the control port
/// (any free port if that one is taken or `asked` for something else), else any free port on
/// the data host.
fn bind_http(
    flag: Option<&str>,
    control: Option<SocketAddr>,
    data: Option<SocketAddr>,
    asked: &[u16],
) -> Result<Option<TcpListener>> {
    let bind = |addr: SocketAddr| {
        TcpListener::bind(addr).with_context(|| {
            format!("cannot serve HTTP on {addr} (choose another --http, or --http none)")
        })
    };
    match flag {
        Some("none") => Ok(None),
        Some(addr) => Ok(Some(bind(parse_addr(addr).context("--http")?)?)),
        None => {
            let Some(control) = control else {
                let ip = data.map_or([127, 0, 0, 1].into(), |d| d.ip());
                return bind((ip, 0).into()).map(Some);
            };
            // Not a port --data or --in asks for (the README's cluster puts --data there).
            let next = match control.port() {
                0 | u16::MAX => 0,
                port if asked.contains(&(port + 1)) => 0,
                port => port + 1,
            };
            match TcpListener::bind((control.ip(), next)) {
                Ok(l) => Ok(Some(l)),
                Err(e) => {
                    tracing::warn!("cannot serve HTTP on {}:{next} ({e}): serving it on any free port instead (see the listening line, or give --http)", control.ip());
                    bind((control.ip(), 0).into()).map(Some)
                }
            }
        }
    }
}

/// Prints the addresses `quokka run` bound, once every listener accepts connections:
/// `listening control=ADDR|none data=ADDR http=ADDR|none [in=NAME@ADDR]...`. Tests and scripts pass port 0
/// and read the ports from here, instead of guessing a free one.
fn report_listening(
    control: Option<SocketAddr>,
    http: Option<SocketAddr>,
    engine: &Engine,
    sources: &[String],
) {
    let name = |addr: Option<SocketAddr>| addr.map_or("none".to_string(), |a| a.to_string());
    let mut line = format!(
        "listening control={} data={} http={}",
        name(control),
        engine.data_addr(),
        name(http)
    );
    for &(source, addr) in engine.listening() {
        line += &format!(" in={}@{addr}", sources[source]);
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        tracing::warn!("cannot print the listening addresses to stdout: {e}");
    }
}
