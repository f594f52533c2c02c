//! Deployment commands for the data owner: a hardened Jupyter server
//! configuration (`safe-data jupyter-config`), the data service's systemd
//! unit (`safe-data systemd-unit`) and a check of a running deployment
//! (`safe-data doctor`). See `docs/deploy.md`.

pub mod doctor;
pub mod jupyter;
mod perms;
pub mod systemd;

use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

/// Errors of the deployment commands. Texts name paths and settings, never
/// data values.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    Config(String),
    #[error("the notebooks folder {notebooks} {relation} {what} {path}: a scientist could open it from the file browser. {fix}")]
    Overlap { notebooks: PathBuf, relation: &'static str, what: String, path: PathBuf, fix: &'static str },
    #[error("the notebooks folder {0}: {1}")]
    Notebooks(PathBuf, String),
    #[error("kernel name `{0}` may only contain letters, digits, '-', '_' and '.'")]
    KernelName(String),
    #[error("cannot find the Jupyter configuration folder: set JUPYTER_CONFIG_DIR or HOME, or give --out DIR")]
    NoConfigDir,
    #[error("{path} exists but is not a JSON object ({reason}); fix or move it, then run again")]
    ExistingConfig { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "the Jupyter URL must start with http:// (probe the server where it listens, e.g. http://127.0.0.1:8888/ or the hub's /user/NAME/ URL; https is not supported)"
    )]
    Url,
    #[error("unknown account `{0}` (--as-user takes an account name of this machine)")]
    UnknownUser(String),
}

/// The deployment subcommands, flattened into `safe-data`'s own.
#[derive(Subcommand)]
pub enum Command {
    /// Write a hardened Jupyter server configuration for Safe Data.
    ///
    /// Writes DIR/jupyter_server_config.json (merged into an existing one):
    /// terminals off, only the Safe Data kernels, the notebooks folder as the
    /// contents root, hidden files not served, kernels over Unix sockets.
    JupyterConfig {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Folder to write `jupyter_server_config.json` into (default:
        /// $JUPYTER_CONFIG_DIR, else ~/.jupyter; system-wide: /etc/jupyter).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The folder the file browser shows (the server's root_dir). It must
        /// not contain, nor be inside, a source or the state_dir.
        #[arg(long, value_name = "DIR")]
        notebooks: PathBuf,
        /// The Safe Data kernelspec(s) to allow (as `safe-data install --name`).
        #[arg(long = "kernel-name", value_name = "NAME", default_value = "safe-data")]
        kernel_names: Vec<String>,
    },
    /// Check a deployment and name each hole (exits 1 on any, 2 when the
    /// check itself cannot run).
    Doctor {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// A running Jupyter server to probe through its REST API (http://...,
        /// with its base URL, e.g. a JupyterHub user server's /user/NAME/).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        #[arg(long, value_name = "TOKEN", requires = "url")]
        token: Option<String>,
        /// A scientist's account to check file and socket access for
        /// (repeatable). Default: every human account (UID_MIN..UID_MAX of
        /// /etc/login.defs) except the owner of the state_dir.
        #[arg(long = "as-user", value_name = "NAME")]
        as_users: Vec<String>,
        /// The Jupyter server's notebooks folder (root_dir), to try the exact
        /// relative paths to the data through the REST API as well.
        #[arg(long, value_name = "DIR", requires = "url")]
        notebooks: Option<PathBuf>,
        /// Also confine a child process as the service would be and try to
        /// escape (read outside the allow-list, TCP, re-exec).
        #[arg(long)]
        self_test: bool,
    },
    /// Print the systemd unit of `safe-data serve` for a configuration's
    /// paths (state_dir, [service] socket and socket_group), hardened.
    ///
    /// Save it as /etc/systemd/system/safe-data.service. It reads only the
    /// configuration file.
    SystemdUnit {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The service account (User=; Group= is its primary group).
        #[arg(long, value_name = "NAME", default_value = systemd::DEFAULT_USER)]
        user: String,
        /// The safe-data binary ExecStart runs (default: this one).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
}

/// Runs one deployment subcommand.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::JupyterConfig { config, out, notebooks, kernel_names } => match jupyter::run(&config, out.as_deref(), &notebooks, &kernel_names) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Doctor { config, url, token, as_users, notebooks, self_test } => {
            let args = doctor::Args { config, url, token, as_users, notebooks, self_test };
            doctor::run(&args)
        }
        Command::SystemdUnit { config, user, binary } => match systemd::run(&config, &user, binary.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
