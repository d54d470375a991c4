//! The `fleetlet` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{self, Config, LogFormat};

/// Exit code for configuration errors (sysexits EX_CONFIG).
pub const EX_CONFIG: u8 = 78;
/// Exit code when the agent is unreachable or fails at run time.
pub const EX_FAILURE: u8 = 1;

/// fleetlet: edge runtime for robot compute boards.
///
/// Supervises the ROS 2 processes of a workload, buffers telemetry on disk and ships it over
/// MQTT, signs and verifies workload bundles, and keeps a heartbeat with the robot's safety
/// microcontroller.
#[derive(Debug, Parser)]
#[command(name = "fleetlet", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the config comes from (shared by `run`, `config check` and `status`).
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: PathBuf,
    /// Environment overlay: layers `<stem>.<NAME>.toml` from beside the config file.
    #[arg(long, value_name = "NAME")]
    pub env: Option<String>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent in the foreground until SIGINT/SIGTERM.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        /// Log format; overrides `agent.log_format`.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Show the state of the running agent (from its local API).
    Status {
        /// Agent API address; defaults to `api.listen` of --config, else 127.0.0.1:7878.
        #[arg(long, value_name = "ADDR")]
        addr: Option<SocketAddr>,
        /// Read the API address from this configuration file.
        #[arg(long, short = 'c', value_name = "PATH")]
        config: Option<PathBuf>,
        /// Environment overlay for --config.
        #[arg(long, value_name = "NAME", requires = "config")]
        env: Option<String>,
        /// Print the raw JSON from /v1/status.
        #[arg(long)]
        json: bool,
    },
    /// Watch a robot's telemetry from the cloud side: subscribe to the broker and print
    /// decoded records, de-duplicated on device + boot + stream + sequence.
    Tail(crate::mqtt::tail::TailArgs),
    /// Show the captured output of a supervised process.
    Logs {
        /// Process name from the workload manifest.
        process: String,
        /// Keep streaming new lines until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
        /// How many of the latest lines to show first.
        #[arg(long, short = 'n', default_value_t = crate::api::logs::DEFAULT_LINES)]
        lines: usize,
        /// Agent API address; defaults to `api.listen` of --config, else 127.0.0.1:7878.
        #[arg(long, value_name = "ADDR")]
        addr: Option<SocketAddr>,
        /// Read the API address from this configuration file.
        #[arg(long, short = 'c', value_name = "PATH")]
        config: Option<PathBuf>,
        /// Environment overlay for --config.
        #[arg(long, value_name = "NAME", requires = "config")]
        env: Option<String>,
    },
    /// Send an operation to the running agent over its control socket.
    ///
    /// The socket is `<data_dir>/run/fleetlet.sock`, mode 0660: only the agent's user and
    /// group may act. `fleetlet ctl ops.list` lists the operations the agent offers.
    Ctl {
        /// Operation, e.g. `process.restart`.
        op: String,
        /// Arguments as JSON, e.g. '{"name":"nav"}'.
        #[arg(default_value = "null")]
        args: String,
        /// Socket path; defaults to the one under `agent.data_dir` of --config, else
        /// /var/lib/fleetlet/run/fleetlet.sock.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Read the data directory from this configuration file.
        #[arg(long, short = 'c', value_name = "PATH")]
        config: Option<PathBuf>,
        /// Environment overlay for --config.
        #[arg(long, value_name = "NAME", requires = "config")]
        env: Option<String>,
    },
    /// Print version, git commit, target triple and enabled features.
    Version,
    // ---- bundle (helper "bundle"): signing keys, trust roots, bundles ----
    /// Signing keys and trust roots: `keys gen`, `keys root init|sign|rotate|verify`.
    #[command(subcommand, after_long_help = crate::bundle::cli::WORKFLOW)]
    Keys(crate::bundle::cli::KeysCmd),
    /// Signed workload bundles: `bundle pack|sign|verify|inspect`.
    #[command(subcommand, after_long_help = crate::bundle::cli::WORKFLOW)]
    Bundle(crate::bundle::cli::BundleCmd),
    // ---- end bundle ----
}

/// `fleetlet config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate the configuration and print the effective values (secrets redacted).
    /// Exits 0 when valid, 78 (EX_CONFIG) listing every problem when not.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// Loads the config or prints every problem and returns the exit code to use.
///
/// # Errors
/// The exit code (`EX_CONFIG`) after printing the problems.
pub fn load(args: &ConfigArgs) -> Result<Config, ExitCode> {
    Config::load(&args.config, args.env.as_deref()).map_err(|e| {
        eprintln!("fleetlet: {e}");
        ExitCode::from(EX_CONFIG)
    })
}

/// Writes the process environment the agent's subsystems read once at start (the ROS 2
/// graph: `ROS_DOMAIN_ID`, `RMW_IMPLEMENTATION`, discovery; children inherit it). Call it
/// while the process has one thread, before [`run_agent`]: `setenv` races with `getenv` on
/// any other thread (C code included), and the logger, the tokio runtime and DDS start threads.
///
/// # Errors
/// `EX_CONFIG` after printing the problem (an invalid `ROS_*` variable in the environment).
pub fn apply_process_env(cfg: &Config) -> Result<(), ExitCode> {
    #[cfg(feature = "ros2")]
    if cfg.ros2.enabled {
        let env = cfg.ros2.resolve_env().map_err(|e| {
            eprintln!("fleetlet: {e}");
            ExitCode::from(EX_CONFIG)
        })?;
        env.apply_to_own_process();
    }
    #[cfg(not(feature = "ros2"))]
    let _ = cfg;
    Ok(())
}

/// Builds a tokio runtime with all drivers enabled.
///
/// # Errors
/// `EX_FAILURE` after printing why the runtime could not start.
fn build_runtime(b: &mut tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    b.enable_all().build().map_err(|e| {
        eprintln!("fleetlet: cannot start the async runtime: {e}");
        ExitCode::from(EX_FAILURE)
    })
}

/// `fleetlet run` with a loaded config: logging, the async runtime, [`crate::runtime::run`].
pub fn run_agent(cfg: Config, log_format: Option<LogFormat>) -> ExitCode {
    crate::logging::init(
        log_format.unwrap_or(cfg.agent.log_format),
        &cfg.agent.log_level,
    );
    let rt = match build_runtime(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fleetlet"),
    ) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(crate::runtime::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetlet: {e}");
            ExitCode::from(EX_FAILURE)
        }
    }
}

/// Runs the parsed command. Call it before any thread is started: `run` writes the process
/// environment first (see [`apply_process_env`]).
pub fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run { config, log_format } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // Still the only thread: set the ROS 2 environment
            // (`Ros2Env::apply_to_own_process`) before logging and tokio start threads.
            if let Err(code) = apply_process_env(&cfg) {
                return code;
            }
            // Also while single-threaded: arenas created before it would be kept.
            if let Err(rejected) = crate::malloc::apply_agent_policy() {
                for r in rejected {
                    eprintln!("fleetlet: warning: {r}; keeping glibc's default");
                }
            }
            run_agent(cfg, log_format)
        }
        Command::Config(ConfigCmd::Check { config }) => match load(&config) {
            Ok(cfg) => {
                println!(
                    "# effective configuration from {}{} (valid)",
                    config.config.display(),
                    config
                        .env
                        .as_ref()
                        .map(|e| format!(
                            " + {}",
                            Config::overlay_path(&config.config, e).display()
                        ))
                        .unwrap_or_default()
                );
                print!("{}", cfg.redacted_toml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Status {
            addr,
            config,
            env,
            json,
        } => report(status(addr, config, env, json)),
        Command::Tail(args) => {
            let rt = match build_runtime(&mut tokio::runtime::Builder::new_current_thread()) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(crate::mqtt::tail::run(args)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("fleetlet: {e}");
                    ExitCode::from(EX_FAILURE)
                }
            }
        }
        Command::Logs {
            process,
            follow,
            lines,
            addr,
            config,
            env,
        } => report(logs(&process, follow, lines, addr, config, env)),
        Command::Ctl {
            op,
            args,
            socket,
            config,
            env,
        } => report(ctl(&op, &args, socket, config, env)),
        // ---- bundle (helper "bundle") ----
        Command::Keys(cmd) => report(crate::bundle::cli::run_keys(cmd)),
        Command::Bundle(cmd) => report(crate::bundle::cli::run_bundle(cmd)),
        // ---- end bundle ----
        Command::Version => {
            println!("fleetlet {}", env!("CARGO_PKG_VERSION"));
            println!("commit:   {}", env!("BUILD_GIT_COMMIT"));
            println!("target:   {}", env!("BUILD_TARGET"));
            println!("features: {}", enabled_features().join(", "));
            ExitCode::SUCCESS
        }
    }
}

fn report(r: anyhow::Result<ExitCode>) -> ExitCode {
    r.unwrap_or_else(|e| {
        eprintln!("fleetlet: {e:#}");
        ExitCode::from(EX_FAILURE)
    })
}

/// Cargo features compiled in.
pub fn enabled_features() -> Vec<&'static str> {
    let mut f = Vec::new();
    if cfg!(feature = "ros2") {
        f.push("ros2");
    }
    if cfg!(feature = "rpi") {
        f.push("rpi");
    }
    if f.is_empty() {
        f.push("(none)");
    }
    f
}

/// Resolves the API address for client commands.
pub fn api_addr(
    addr: Option<SocketAddr>,
    config: Option<PathBuf>,
    env: Option<String>,
) -> anyhow::Result<SocketAddr> {
    if let Some(a) = addr {
        return Ok(a);
    }
    if let Some(path) = config {
        let cfg = Config::load(&path, env.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
        return Ok(cfg.api.listen);
    }
    config::DEFAULT_API_LISTEN
        .parse()
        .context("default API address")
}

fn status(
    addr: Option<SocketAddr>,
    config: Option<PathBuf>,
    env: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let addr = api_addr(addr, config, env)?;
    let reply = crate::api::client::get(addr, "/v1/status", Duration::from_secs(3))?;
    if reply.status != 200 {
        anyhow::bail!(
            "agent at {addr} answered HTTP {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&reply.body)
        .with_context(|| format!("agent at {addr} sent invalid JSON"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render_status(&v));
    }
    Ok(ExitCode::SUCCESS)
}

/// Human table of a `/v1/status` document.
pub fn render_status(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let s = |k: &str| {
        v.get(k)
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| x.to_string())
            })
            .unwrap_or_else(|| "-".into())
    };
    let rss = v
        .get("rss_bytes")
        .and_then(serde_json::Value::as_u64)
        .map(|b| format!("{:.1} MiB", b as f64 / 1048576.0))
        .unwrap_or_else(|| "-".into());
    let uptime = v
        .get("uptime_seconds")
        .and_then(serde_json::Value::as_f64)
        .map(|u| humantime::format_duration(Duration::from_secs(u as u64)).to_string())
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(out, "device   {}", s("device_id"));
    let _ = writeln!(
        out,
        "version  {}   pid {}   boot {}",
        s("version"),
        s("pid"),
        s("boot_id")
    );
    let _ = writeln!(
        out,
        "uptime   {uptime}   rss {rss}   ready {}   live {}",
        s("ready"),
        s("live")
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<12} {:<10} DETAIL", "SUBSYSTEM", "STATE");
    if let Some(subs) = v.get("subsystems").and_then(serde_json::Value::as_object) {
        for (name, sub) in subs {
            let state = sub
                .get("state")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("-");
            let detail = match sub.get("detail") {
                Some(serde_json::Value::Null) | None => String::new(),
                Some(d) => summarize(d),
            };
            let _ = writeln!(out, "{name:<12} {state:<10} {detail}");
        }
    }
    if let Some(procs) = v
        .pointer("/subsystems/supervisor/detail/processes")
        .and_then(serde_json::Value::as_object)
        .filter(|p| !p.is_empty())
    {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<20} {:<10} {:>8} {:>8} {:<6} {:<8} {:<22} REASON",
            "PROCESS", "STATE", "PID", "RESTARTS", "READY", "HEALTHY", "LIMITS"
        );
        for (name, p) in procs {
            let f = |k: &str| match p.get(k) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) | None => "-".into(),
                Some(x) => x.to_string(),
            };
            let limits = p
                .get("limits")
                .map(|l| {
                    format!(
                        "mem:{} cpu:{}",
                        l.get("memory").map(short).unwrap_or_default(),
                        l.get("cpu").map(short).unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{name:<20} {:<10} {:>8} {:>8} {:<6} {:<8} {:<22} {}",
                f("state"),
                f("pid"),
                f("restarts"),
                f("ready"),
                f("healthy"),
                limits,
                f("reason")
            );
        }
    }
    out
}

/// How a limit was applied (`cgroup`, `rlimit`, `none`).
fn short(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(m) => m
            .get("via")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("-")
            .to_owned(),
        other => other.to_string(),
    }
}

fn summarize(d: &serde_json::Value) -> String {
    match d {
        serde_json::Value::Object(m) => m
            .iter()
            .filter(|(_, v)| !v.is_object() && !v.is_array())
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// Resolves the control socket for client commands.
pub fn socket_path(
    socket: Option<PathBuf>,
    config: Option<PathBuf>,
    env: Option<String>,
) -> anyhow::Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s);
    }
    let data_dir = match config {
        Some(path) => {
            Config::load(&path, env.as_deref())
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .agent
                .data_dir
        }
        None => PathBuf::from(config::DEFAULT_DATA_DIR),
    };
    Ok(crate::datadir::DataDir::new(data_dir).socket())
}

fn ctl(
    op: &str,
    args: &str,
    socket: Option<PathBuf>,
    config: Option<PathBuf>,
    env: Option<String>,
) -> anyhow::Result<ExitCode> {
    let args: serde_json::Value = serde_json::from_str(args)
        .with_context(|| format!("arguments must be JSON, got {args:?}"))?;
    let path = socket_path(socket, config, env)?;
    let result = crate::control::call(&path, op, args)?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(ExitCode::SUCCESS)
}

fn logs(
    process: &str,
    follow: bool,
    lines: usize,
    addr: Option<SocketAddr>,
    config: Option<PathBuf>,
    env: Option<String>,
) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let addr = api_addr(addr, config, env)?;
    let name: String = process
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let path = format!("/v1/logs/{name}?lines={lines}&follow={follow}");
    let mut body = Vec::new();
    let mut stdout = std::io::stdout();
    let status = crate::api::client::stream(addr, &path, |status, chunk| {
        body.extend_from_slice(chunk);
        if status != 200 {
            return;
        }
        if let Some(end) = body.iter().rposition(|b| *b == b'\n') {
            let _ = stdout.write_all(&body[..=end]);
            let _ = stdout.flush();
            body.drain(..=end);
        }
    })?;
    if status != 200 {
        anyhow::bail!("{}", String::from_utf8_lossy(&body).trim());
    }
    let _ = stdout.write_all(&body);
    Ok(ExitCode::SUCCESS)
}
