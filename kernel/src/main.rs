//! `safe-data`: a Jupyter kernel that evaluates only policy-checked SQL.

use safe_data_kernel::kernel::backend::{Backend, Embedded};
use safe_data_kernel::service::client::Remote;
use safe_data_kernel::{demo, deploy, install, kernel, memory, render};

/// Counts allocated bytes for the owner's memory budget (`max_memory_mb`).
#[global_allocator]
static ALLOCATOR: memory::Counting = memory::Counting;

use clap::{Args, Parser, Subcommand, ValueEnum};
use safe_data_lang::parse;
use safe_data_lang::span::caret_snippet;
use safe_data_policy::CancelFlag;
use safe_data_policy::{Catalog, Outcome};
use safe_data_policy::{Policy, Requester};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "safe-data", version, about = "A Jupyter kernel for SQL over data that must not leave its owner")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the kernel (what kernel.json starts).
    Kernel {
        #[arg(short = 'f', long, value_name = "FILE")]
        connection_file: PathBuf,
        #[command(flatten)]
        source: KernelSource,
    },
    /// Install the kernelspec so Jupyter lists "Safe Data".
    Install(InstallArgs),
    /// Run the data service: the only process that opens the data, the audit
    /// log and the histories; kernels started with --service connect to it.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// One of the service's query processes (started by `serve`, not by hand).
    #[command(hide = true)]
    Worker {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run SQL through the same pipeline and policy from a terminal.
    Query {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Read the statements from FILE (`-`: standard input).
        #[arg(long, value_name = "FILE", conflicts_with = "sql")]
        file: Option<PathBuf>,
        /// One or more `;`-separated statements (`-`: read them from standard
        /// input). They may begin with a `--` comment.
        #[arg(allow_hyphen_values = true, required_unless_present = "file")]
        sql: Option<String>,
    },
    /// Check the owner's configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Work with the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Write the synthetic demo hospital dataset and its configuration.
    Demo {
        /// Folder to write (created if missing).
        dir: PathBuf,
        /// Number of patients.
        #[arg(long, default_value_t = demo::DEFAULT_PATIENTS)]
        patients: usize,
    },
    #[command(flatten)]
    Deploy(deploy::Command),
}

/// Where a kernel finds the data: in this process, or in the data service.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct KernelSource {
    /// Open the owner's configuration in this process (one user, the demo, the tests).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Forward every request to the data service listening on SOCKET (`safe-data serve`).
    #[arg(long, value_name = "SOCKET")]
    service: Option<PathBuf>,
}

#[derive(Args)]
#[group(multiple = false)]
struct Where {
    /// Install for the current user (the default).
    #[arg(long)]
    user: bool,
    /// Install into the active Python environment.
    #[arg(long)]
    sys_prefix: bool,
    /// Install under PREFIX/share/jupyter/kernels.
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<PathBuf>,
}

#[derive(Args)]
struct InstallArgs {
    #[command(flatten)]
    source: KernelSource,
    #[arg(long, default_value = "safe-data")]
    name: String,
    /// Defaults to the config's server.display_name (with --service: "Safe Data").
    #[arg(long)]
    display_name: Option<String>,
    #[command(flatten)]
    location: Where,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration and its data sources.
    Check { config: PathBuf },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain of the audit log.
    Verify {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SAFE_DATA_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn load(config: &Path) -> Result<Catalog, String> {
    Catalog::load(config).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    init_logging();
    // A panic's message can quote data (polars formats values into some);
    // log only where it happened. Evaluation panics become error replies.
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!("internal panic at {at}");
    }));
    let cli = Cli::parse();
    match cli.command {
        Command::Kernel { connection_file, source: KernelSource { config: Some(config), .. } } => embedded_kernel(&connection_file, &config),
        Command::Kernel { connection_file, source: KernelSource { service: Some(socket), .. } } => service_kernel(&connection_file, &socket),
        Command::Kernel { .. } => fail("give --config FILE (one process) or --service SOCKET (the data service)"),
        Command::Install(args) => install(args),
        Command::Serve { config } => match safe_data_kernel::service::server::serve(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::Worker { config } => match safe_data_kernel::service::worker::run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(format!("worker: {e}")),
        },
        Command::Query { config, format, file, sql } => match statements(file.as_deref(), sql) {
            Ok(sql) => query(&config, format, &sql),
            Err(e) => fail(e),
        },
        Command::Config { command: ConfigCommand::Check { config } } => match load(&config) {
            Ok(catalog) => {
                println!("{}: ok", config.display());
                for t in catalog.tables() {
                    let kind = if t.public { "public".to_string() } else { format!("protected, k = {}", t.min_group_size) };
                    println!("  {} ({kind}): {} visible columns from {}", t.name, t.columns.len(), t.source_path().display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Audit { command: AuditCommand::Verify { config } } => {
            let cfg = match safe_data_lang::config::Config::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let path = cfg.server.state_dir.join("audit.jsonl");
            match safe_data_policy::audit::verify(&path) {
                Ok(Ok(n)) => {
                    println!("{}: ok, {n} records, chain intact", path.display());
                    ExitCode::SUCCESS
                }
                Ok(Err(b)) => fail(format!("{}: line {} {}", path.display(), b.line, b.reason)),
                Err(e) => fail(format!("cannot read {}: {e}", path.display())),
            }
        }
        Command::Demo { dir, patients } => match demo::write_demo(&dir, patients.max(1)) {
            Ok(()) => {
                println!("Wrote {} patients to {}; configuration: {}", patients, dir.join("data").display(), dir.join("safe-data.toml").display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Deploy(command) => deploy::run(command),
    }
}

/// The kernel's runtime: two worker threads move the sockets' frames.
fn kernel_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Serves a kernel until it is shut down.
fn run_kernel(runtime: tokio::runtime::Runtime, connection_file: &Path, backend: Arc<dyn Backend>, options: kernel::Options) -> ExitCode {
    match runtime.block_on(kernel::run(connection_file, backend, options)) {
        Ok(()) => {
            runtime.shutdown_timeout(std::time::Duration::from_millis(100));
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `safe-data kernel --config C`: everything in this process.
fn embedded_kernel(connection_file: &Path, config: &Path) -> ExitCode {
    let catalog = match load(config) {
        Ok(c) => Arc::new(c),
        Err(e) => return fail(e),
    };
    let options = kernel::Options::new(catalog.config.server.max_message_mb);
    let backend = match Embedded::open(catalog, options.session.clone()) {
        Ok(b) => Arc::new(b),
        Err(e) => return fail(kernel::KernelError::Audit(e)),
    };
    // Start-up (loader, config, catalog) is done: drop the pages only it used.
    memory::map_binary_sparsely();
    // Interrupts, timeouts and the memory budget stop polars itself.
    safe_data_policy::runtime::enable_aborts();
    safe_data_policy::runtime::set_memory_gauge(memory::in_use);
    match kernel_runtime() {
        Ok(runtime) => run_kernel(runtime, connection_file, backend, options),
        Err(e) => fail(e),
    }
}

/// The statements of `safe-data query`: the argument, a file, or standard
/// input (`-` as either).
fn statements(file: Option<&Path>, sql: Option<String>) -> Result<String, String> {
    use std::io::Read;
    let from_stdin = || {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text).map_err(|e| format!("cannot read the statements from standard input: {e}"))
    };
    match (file, sql) {
        (Some(path), _) if path == Path::new("-") => from_stdin(),
        (Some(path), _) => std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display())),
        (None, Some(sql)) if sql == "-" => from_stdin(),
        (None, Some(sql)) => Ok(sql),
        (None, None) => Err("give the statements as an argument, with --file FILE, or - to read standard input".into()),
    }
}

fn query(config: &Path, format: Format, sql: &str) -> ExitCode {
    let catalog = match load(config) {
        Ok(c) => Arc::new(c),
        Err(e) => return fail(e),
    };
    let policy = match Policy::new(catalog) {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot open the audit log: {e}")),
    };
    let who = Requester::from_env(format!("cli-{}", std::process::id()));
    let statements = match parse::parse_cell(sql) {
        Ok(s) => s,
        Err(e) => {
            if let Err(audit) = policy.record_unparsed(sql, &who, &e) {
                return fail(audit);
            }
            return report(sql, &e.to_string(), e.span());
        }
    };
    // Stopped like a kernel's queries: Ctrl-C, the owner's timeout and
    // memory budget stop polars itself, not just the wait for it.
    let cancel = CancelFlag::new();
    safe_data_policy::runtime::enable_aborts();
    safe_data_policy::runtime::set_memory_gauge(memory::in_use);
    stop_on_ctrl_c(cancel.clone());
    for statement in &statements {
        match policy.run(statement, &who, &cancel) {
            Outcome::Released(released) => match format {
                Format::Table => println!("{}", render::text(&released)),
                Format::Csv => {
                    print!("{}", render::csv(&released));
                    for n in released.notices() {
                        eprintln!("note: {}", n.message);
                    }
                }
                Format::Json => println!("{}", render::json_document(&released)),
            },
            Outcome::Refused(e) => return report(sql, &e.to_string(), e.span()),
        }
    }
    ExitCode::SUCCESS
}

/// Ctrl-C stops the running statement (through `cancel`); a second one,
/// when nothing is running, ends the process as usual.
fn stop_on_ctrl_c(cancel: CancelFlag) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_io().build() else { return };
    let _ = std::thread::Builder::new().name("safe-data-ctrl-c".into()).spawn(move || {
        runtime.block_on(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                // Polars' abort is a SIGINT the engine sends itself.
                if safe_data_policy::runtime::self_interrupted_recently() {
                    continue;
                }
                if cancel.is_cancelled() {
                    std::process::exit(130);
                }
                cancel.cancel();
            }
        })
    });
}

fn report(sql: &str, message: &str, span: Option<safe_data_lang::span::Span>) -> ExitCode {
    eprintln!("error: {message}");
    if let Some(span) = span {
        eprintln!("{}", caret_snippet(sql, span));
    }
    ExitCode::FAILURE
}

/// The message cap of a service-mode kernel, which reads no configuration
/// (`max_message_mb`'s default).
const SERVICE_MODE_MAX_MESSAGE_MB: u64 = 64;

/// `safe-data kernel --service SOCKET`: every request goes to the data
/// service; this process opens no data file and reads no configuration.
fn service_kernel(connection_file: &Path, socket: &Path) -> ExitCode {
    // No core dumps, not dumpable, no new privileges: before any thread starts.
    if let Err(e) = safe_data_kernel::sandbox::harden_process() {
        tracing::warn!("the kernel process could not be hardened: {e}");
    }
    // Before any thread starts, so that every thread is confined.
    safe_data_kernel::sandbox::confine(&safe_data_kernel::sandbox::kernel_confinement(connection_file));
    let runtime = match kernel_runtime() {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let remote = Arc::new(Remote::new(socket.to_path_buf(), runtime.handle().clone()));
    if let Err(e) = remote.connect() {
        // The kernel starts anyway: each cell says so, and tries again.
        tracing::warn!("the Safe Data service is not reachable at {}: {e}", socket.display());
    }
    memory::map_binary_sparsely();
    run_kernel(runtime, connection_file, remote, kernel::Options::new(SERVICE_MODE_MAX_MESSAGE_MB))
}

/// `safe-data install`: a kernelspec for one process (--config) or for the service (--service).
fn install(args: InstallArgs) -> ExitCode {
    let location = match (args.location.sys_prefix, args.location.prefix) {
        (true, _) => install::Location::SysPrefix,
        (_, Some(p)) => install::Location::Prefix(p),
        _ => install::Location::User,
    };
    let (source, default_name) = match args.source {
        KernelSource { config: Some(config), .. } => match load(&config) {
            Ok(catalog) => (install::Source::Config(config), catalog.config.server.display_name.clone()),
            Err(e) => return fail(e),
        },
        KernelSource { service: Some(socket), .. } => (install::Source::Service(socket), "Safe Data".to_string()),
        KernelSource { .. } => return fail("give --config FILE or --service SOCKET"),
    };
    let display = args.display_name.unwrap_or(default_name);
    match install::install(&source, &args.name, &display, &location) {
        Ok(dir) => {
            println!("Installed kernelspec `{}` ({display}) in {}", args.name, dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
