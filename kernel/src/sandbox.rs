//! Self-confinement (Linux): Landlock rules and process hardening for the
//! data service and the service-mode kernel.
//!
//! [`confine`] restricts the calling process to an allow-list of paths with
//! Landlock and refuses TCP `bind`/`connect` where the kernel's Landlock ABI
//! can (ABI 4, Linux 6.7). It is best effort across kernels and says what it
//! could not enforce ([`Enforcement`]), in its return value and in one log
//! line; it never fails silently. [`harden_process`] turns off privilege gain,
//! core dumps and ptrace. [`self_test`] applies a confinement in a forked child
//! and tries to escape it, for `safe-data doctor --self-test` and the tests.
//!
//! Besides the paths a [`Confinement`] names, a confined process keeps what it
//! needs after start-up (and nothing that holds data):
//! - its executable and the code it has mapped (the loader and shared
//!   libraries): read and execute, so that worker processes can be started by
//!   exec'ing the executable again; `/etc/ld.so.cache`: read;
//! - `/proc/self` (this process's own entry, for memory readings) and
//!   `/proc/meminfo`: read; a process exec'd after confinement inherits the
//!   rules, so it cannot read its *own* `/proc` entry (only its parent's);
//! - `/etc/passwd`, `/etc/group`, `/etc/nsswitch.conf` (world-readable
//!   account databases: a peer's uid is mapped to its name after start-up),
//!   `/etc/localtime`: read;
//! - `/dev/null`: read and write (standard streams of child processes);
//!   `/dev/urandom`: read.
//!
//! It does not restrict: connecting to a path-named Unix socket (Landlock ABI
//! 9, not handled yet, so a service-mode kernel reaches its service socket),
//! UDP (ABI 10), signals to other processes (a service that pre-started its
//! workers before confining itself must still be able to stop them), nor
//! anything already open (file descriptors, mapped memory, bound sockets).
//! File permissions still apply on top of it: Landlock only ever takes away.

use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a confined process may still reach.
#[derive(Debug, Clone, Default)]
pub struct Confinement {
    /// Files and folders it may read (recursively for folders).
    pub read: Vec<PathBuf>,
    /// Folders it may read and write (recursively).
    pub write: Vec<PathBuf>,
    /// Refuse TCP bind and connect where the kernel's Landlock ABI allows it.
    pub deny_tcp: bool,
    /// With `deny_tcp`, the ports it may still bind (a kernel's own).
    pub bind_tcp: Vec<u16>,
}

/// How far the confinement could be enforced on this kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Enforcement {
    /// Every rule is enforced.
    Full,
    /// Some rules are enforced; the text says which are not.
    Partial(String),
    /// Landlock is missing; the text says why.
    None(String),
}

impl std::fmt::Display for Enforcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Enforcement::Full => f.write_str("fully enforced"),
            Enforcement::Partial(what) => write!(f, "partly enforced: {what}"),
            Enforcement::None(why) => write!(f, "not enforced: {why}"),
        }
    }
}

/// What went wrong around a confinement (not the confinement itself, whose
/// result is an [`Enforcement`]).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the probe path {0} does not exist; give a file that exists outside the allow-list")]
    ProbeMissing(PathBuf),
    #[error("the probe path {0} is inside the allow-list, so it proves nothing; give a file outside it")]
    ProbeInside(PathBuf),
    #[error("cannot start the self-test process: {0}")]
    Spawn(io::Error),
    #[error("the self-test process did not answer within {0} s")]
    Timeout(u64),
    #[error("the self-test process failed: {0}")]
    Child(String),
}

/// The Landlock ABI the crate targets for rights: filesystem rights up to
/// ABI 5 (device ioctl), TCP (ABI 4), abstract Unix socket scoping (ABI 6).
/// Newer ABIs add rights this module does not grant through its allow-list
/// (path-named Unix sockets, UDP), so they are not handled yet.
const TARGET: landlock::ABI = landlock::ABI::V6;

/// The Landlock ABI version of the running kernel; `Err` says why there is
/// none (not built in, or not enabled at boot).
pub fn landlock_abi() -> Result<u32, String> {
    #[cfg(target_os = "linux")]
    {
        const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
        // SAFETY: with a null attribute, size 0 and the VERSION flag the
        // syscall only returns the ABI version (or an error); it reads and
        // writes no memory.
        let v = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<libc::c_void>(), 0usize, LANDLOCK_CREATE_RULESET_VERSION) };
        if v > 0 {
            return Ok(v as u32);
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EOPNOTSUPP) => Err("Landlock is built into this kernel but not enabled at boot (add `landlock` to the `lsm=` kernel parameter)".into()),
            _ => Err("this kernel has no Landlock (Linux 5.13 or later built with CONFIG_SECURITY_LANDLOCK is needed)".into()),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err("Landlock exists only on Linux".into())
    }
}

/// What the kernel's Landlock ABI leaves unenforced of `rules`, given how
/// many other threads the process already runs. Empty: everything holds.
fn unenforced(abi: u32, deny_tcp: bool, other_threads: usize) -> Vec<String> {
    let mut missing = Vec::new();
    if abi < 3 {
        missing.push("truncating existing files is not restricted (needs Landlock ABI 3, Linux 6.2)".to_string());
    }
    if deny_tcp && abi < 4 {
        missing.push("TCP bind and connect are not restricted (needs Landlock ABI 4, Linux 6.7)".to_string());
    }
    if other_threads > 0 && abi < 8 {
        missing.push(format!(
            "{other_threads} thread(s) started before the confinement are not confined (confine before starting threads, or Landlock ABI 8 confines them all)"
        ));
    }
    missing
}

/// Threads of this process other than the calling one.
fn other_threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count().saturating_sub(1)).unwrap_or(0)
}

/// The files a process needs after start-up (see the module documentation),
/// each with whether it may be executed, plus the problems found (e.g. an
/// executable replaced since start-up).
fn runtime_paths() -> (Vec<(PathBuf, RuntimeAccess)>, Vec<String>) {
    let mut paths = Vec::new();
    let mut notes = Vec::new();
    match std::fs::read_link("/proc/self/exe") {
        Ok(exe) if exe.to_string_lossy().ends_with(" (deleted)") => {
            notes.push("the executable was replaced since start-up; worker processes cannot be started from it".to_string())
        }
        Ok(exe) => paths.push((exe, RuntimeAccess::Execute)),
        Err(e) => notes.push(format!("cannot locate the executable: {e}")),
    }
    // Code mapped now (loader, shared libraries): what re-exec'ing needs.
    if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let perms = fields.nth(1).unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            if perms.as_bytes().get(2) == Some(&b'x') && path.starts_with('/') && !line.ends_with(" (deleted)") {
                paths.push((PathBuf::from(path), RuntimeAccess::Execute));
            }
        }
    }
    // `/etc` as a folder, not its files one by one: `useradd` and editors
    // replace `/etc/passwd` and `/etc/group` by a rename, and a rule on the
    // old file would refuse every account lookup after it (file permissions
    // still keep `/etc/shadow` out of reach; nothing in `/etc` holds data).
    for p in ["/etc", "/proc/meminfo", "/dev/urandom"] {
        paths.push((PathBuf::from(p), RuntimeAccess::Read));
    }
    paths.push((PathBuf::from("/dev/null"), RuntimeAccess::ReadWrite));
    // `/proc/self` is a link: the rule holds for this process's own entry.
    if let Ok(own) = std::fs::canonicalize("/proc/self") {
        paths.push((own, RuntimeAccess::Read));
    }
    paths.sort();
    paths.dedup_by(|a, b| a.0 == b.0);
    (paths, notes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum RuntimeAccess {
    Read,
    ReadWrite,
    Execute,
}

/// Applies `rules` to this process (and every thread it starts afterwards).
///
/// Call it early, before starting threads: threads already running are
/// confined too only where the kernel's Landlock ABI is 8 or later (else the
/// result is [`Enforcement::Partial`]). The paths are resolved now: a file
/// replaced later by another (a rename over it) is not covered, a new file in
/// an allowed folder is. A path that does not exist is skipped (and logged):
/// nothing is allowed there. Logs one line with the result.
pub fn confine(rules: &Confinement) -> Enforcement {
    let (enforcement, notes) = apply(rules, other_threads());
    let notes = if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) };
    match &enforcement {
        Enforcement::Full => tracing::info!(
            "Landlock: confined to {} read and {} write path(s){}{notes}",
            rules.read.len(),
            rules.write.len(),
            if rules.deny_tcp { ", TCP refused" } else { "" }
        ),
        Enforcement::Partial(what) => tracing::warn!("Landlock: only partly confined: {what}{notes}"),
        Enforcement::None(why) => tracing::warn!("Landlock: NOT confined: {why}{notes}"),
    }
    enforcement
}

/// [`confine`] without the log line: the enforcement and notes about paths
/// that could not be allowed.
fn apply(rules: &Confinement, other_threads: usize) -> (Enforcement, Vec<String>) {
    #[cfg(target_os = "linux")]
    {
        apply_linux(rules, other_threads)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (rules, other_threads);
        (Enforcement::None("Landlock exists only on Linux".into()), Vec::new())
    }
}

#[cfg(target_os = "linux")]
fn apply_linux(rules: &Confinement, other_threads: usize) -> (Enforcement, Vec<String>) {
    use landlock::{
        Access, AccessFs, AccessNet, BitFlags, NetPort, PathBeneath, PathFd, RestrictSelfAttr, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
        make_bitflags,
    };

    let abi = match landlock_abi() {
        Ok(abi) => abi,
        Err(why) => return (Enforcement::None(why), Vec::new()),
    };
    let read: BitFlags<AccessFs> = make_bitflags!(AccessFs::{ReadFile | ReadDir});
    let write = read | make_bitflags!(AccessFs::{WriteFile | RemoveDir | RemoveFile | MakeDir | MakeReg | MakeSock | Refer | Truncate});
    let file_only: BitFlags<AccessFs> = make_bitflags!(AccessFs::{ReadFile | WriteFile | Execute | Truncate | IoctlDev});

    let (runtime, mut notes) = runtime_paths();
    let mut wanted: Vec<(&Path, BitFlags<AccessFs>)> = Vec::new();
    for (path, access) in &runtime {
        let access = match access {
            RuntimeAccess::Read => read,
            RuntimeAccess::ReadWrite => read | AccessFs::WriteFile,
            RuntimeAccess::Execute => read | AccessFs::Execute,
        };
        wanted.push((path, access));
    }
    wanted.extend(rules.read.iter().map(|p| (p.as_path(), read)));
    wanted.extend(rules.write.iter().map(|p| (p.as_path(), write)));

    let mut build = || -> Result<landlock::RestrictionStatus, landlock::RulesetError> {
        let mut ruleset = Ruleset::default().handle_access(AccessFs::from_all(TARGET))?;
        if rules.deny_tcp {
            ruleset = ruleset.handle_access(AccessNet::from_all(TARGET))?;
        }
        let mut created = ruleset.scope(Scope::AbstractUnixSocket)?.create()?;
        for (path, access) in &wanted {
            let fd = match PathFd::new(path) {
                Ok(fd) => fd,
                Err(_) => {
                    // Only the rules' own paths are worth a note: the runtime
                    // list names files that may not exist on every system.
                    if rules.read.iter().chain(&rules.write).any(|p| p == path) {
                        notes.push(format!("{} does not exist or cannot be opened; nothing is allowed there", path.display()));
                    }
                    continue;
                }
            };
            let is_dir = std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false);
            let access = if is_dir { *access } else { *access & file_only };
            created = created.add_rule(PathBeneath::new(fd, access))?;
        }
        if rules.deny_tcp {
            for port in &rules.bind_tcp {
                created = created.add_rule(NetPort::new(*port, AccessNet::BindTcp))?;
            }
        }
        if other_threads > 0 && abi >= 8 {
            created = created.all_threads(true)?;
        }
        created.restrict_self()
    };
    let status = match build() {
        Ok(status) => status,
        Err(e) => return (Enforcement::None(format!("the Landlock rules could not be applied: {e}")), notes),
    };
    if status.ruleset == RulesetStatus::NotEnforced {
        return (Enforcement::None(format!("the kernel did not enforce the rules (Landlock ABI {abi})")), notes);
    }
    let missing = unenforced(abi, rules.deny_tcp, other_threads);
    let enforcement = if missing.is_empty() { Enforcement::Full } else { Enforcement::Partial(missing.join("; ")) };
    (enforcement, notes)
}

/// `PR_SET_NO_NEW_PRIVS`, no core dumps (`RLIMIT_CORE = 0`) and not
/// dumpable: a core or a ptrace of the process would hold the data.
///
/// Not dumpable also makes `/proc/<pid>/mem`, `environ` and the like owned by
/// root, so another process of the same account cannot read them. The
/// no-new-privileges flag belongs to the calling thread and the processes and
/// threads it starts afterwards: call this first thing in `main`.
pub fn harden_process() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        nix::sys::prctl::set_no_new_privs()?;
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)?;
        nix::sys::prctl::set_dumpable(false)?;
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(io::Error::new(io::ErrorKind::Unsupported, "process hardening exists only on Linux"))
    }
}

/// Raises the soft limit on open files to the hard limit (at most 65,536)
/// and returns the limit in force (1,024 when it cannot be read). The
/// kernel's frame guard and the service size their connection limits to
/// it, so connections can never take the descriptors the audit log, the
/// workers and the sources need.
pub fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 1024 };
    let want = hard.min(65_536).max(soft);
    if want > soft && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
        return want;
    }
    soft
}

/// The data service's confinement: read its configuration and every
/// source, read and write `state_dir` (audit log, histories, caches), no TCP.
/// The service binds its socket before confining itself (binding needs the
/// socket's folder, which is not on the list).
pub fn service_confinement(config: &safe_data_lang::config::Config) -> Confinement {
    // The folders of the configuration and of each source, not the files:
    // an owner who saves the configuration or refreshes a source by a
    // rename replaces the file, and workers started afterwards must read the
    // new one.
    let folder = |p: &Path| p.parent().filter(|d| !d.as_os_str().is_empty()).map_or_else(|| p.to_path_buf(), Path::to_path_buf);
    let mut read = vec![folder(&config.path)];
    read.extend(config.tables.iter().map(|t| folder(&t.source)));
    read.sort();
    read.dedup();
    Confinement { read, write: vec![config.server.state_dir.clone()], deny_tcp: true, bind_tcp: Vec::new() }
}

/// A service-mode kernel's confinement: read its connection file, no TCP
/// (its Jupyter sockets are bound before, and connecting to the service's
/// Unix socket is not restricted by the Landlock ABIs handled here).
///
/// Applied first thing, before any thread starts (so every thread is
/// confined whatever the Landlock ABI): it may read its connection file, write
/// the connection file's folder (the replay memory and `ipc` socket files)
/// and the temporary folder (its private zeromq sockets), and bind only the
/// connection file's TCP ports (none on the `ipc` transport); no TCP connect.
pub fn kernel_confinement(connection_file: &Path) -> Confinement {
    let mut write = vec![std::env::temp_dir()];
    if let Some(dir) = connection_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        write.push(dir.to_path_buf());
    }
    let bind_tcp = std::fs::read_to_string(connection_file)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .filter(|info| info.get("transport").and_then(serde_json::Value::as_str).unwrap_or("tcp") == "tcp")
        .map(|info| {
            ["shell_port", "control_port", "stdin_port", "iopub_port", "hb_port"]
                .iter()
                .filter_map(|k| info.get(*k).and_then(serde_json::Value::as_u64).and_then(|p| u16::try_from(p).ok()))
                .collect()
        })
        .unwrap_or_default();
    Confinement { read: vec![connection_file.to_path_buf()], write, deny_tcp: true, bind_tcp }
}

/// One escape attempt of [`self_test`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// What was tried, e.g. "read a file outside the allow-list".
    pub what: String,
    /// Whether a working confinement blocks it.
    pub should_block: bool,
    pub outcome: Outcome,
}

/// What happened to a [`Probe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Refused with "permission denied" (what Landlock answers).
    Blocked,
    Allowed,
    /// Failed some other way (the text says how): proves nothing.
    Failed(String),
    /// Not tried; the text says why.
    Skipped(String),
}

impl Probe {
    /// Whether the outcome is what a working confinement gives.
    pub fn as_expected(&self) -> bool {
        match self.outcome {
            Outcome::Blocked => self.should_block,
            Outcome::Allowed => !self.should_block,
            Outcome::Skipped(_) => true,
            Outcome::Failed(_) => false,
        }
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcome = match &self.outcome {
            Outcome::Blocked => "blocked".to_string(),
            Outcome::Allowed => "allowed".to_string(),
            Outcome::Failed(how) => format!("failed: {how}"),
            Outcome::Skipped(why) => format!("skipped: {why}"),
        };
        let expected = if self.should_block { "should be blocked" } else { "should work" };
        write!(f, "{}: {outcome} ({expected})", self.what)
    }
}

/// The result of [`self_test`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfTestReport {
    /// What the child's [`confine`] reported.
    pub enforcement: Enforcement,
    pub probes: Vec<Probe>,
}

impl SelfTestReport {
    /// Every probe went as a working confinement would have it.
    pub fn passed(&self) -> bool {
        self.probes.iter().all(Probe::as_expected)
    }
}

/// How long a self-test child may take.
const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Applies `rules` in a forked child process and tries to get past them:
/// read and open for writing `probe_outside` (a file that exists outside the
/// allow-list; nothing is written to it), read the first `read` path, create
/// and remove a file in the first `write` folder, TCP connect to a listener of
/// the parent and TCP bind (when `deny_tcp`), and exec this executable again
/// with `--version` (as the service starts its workers). The parent is not
/// confined.
pub fn self_test(rules: &Confinement, probe_outside: &Path) -> Result<SelfTestReport, SandboxError> {
    if !probe_outside.exists() {
        return Err(SandboxError::ProbeMissing(probe_outside.to_path_buf()));
    }
    let probe = std::fs::canonicalize(probe_outside).map_err(|_| SandboxError::ProbeMissing(probe_outside.to_path_buf()))?;
    let inside = rules.read.iter().chain(&rules.write).filter_map(|p| std::fs::canonicalize(p).ok()).any(|p| probe.starts_with(&p));
    if inside {
        return Err(SandboxError::ProbeInside(probe_outside.to_path_buf()));
    }
    // Prepared before the fork: a listener to connect to and the exec's arguments.
    let listener = if rules.deny_tcp { std::net::TcpListener::bind(("127.0.0.1", 0)).ok() } else { None };
    let port = listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.port());
    let exe = std::fs::read_link("/proc/self/exe").ok().and_then(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok());
    let rules = rules.clone();
    let report = in_child(SELF_TEST_TIMEOUT, move || {
        let (enforcement, _) = apply(&rules, 0);
        let mut probes = vec![
            Probe { what: "read a file outside the allow-list".into(), should_block: true, outcome: try_open(&probe, libc::O_RDONLY) },
            Probe {
                what: "open a file outside the allow-list for writing".into(),
                should_block: true,
                outcome: try_open(&probe, libc::O_WRONLY | libc::O_APPEND),
            },
        ];
        let outcome = match rules.read.iter().find(|p| p.exists()) {
            Some(p) if p.is_dir() => try_open(p, libc::O_RDONLY | libc::O_DIRECTORY),
            Some(p) => try_open(p, libc::O_RDONLY),
            None => Outcome::Skipped("no read path exists".into()),
        };
        probes.push(Probe { what: "read a path on the read list".into(), should_block: false, outcome });
        let outcome = match rules.write.iter().find(|p| p.is_dir()) {
            Some(dir) => try_create(&dir.join(format!(".safe-data-self-test-{}", std::process::id()))),
            None => Outcome::Skipped("no write folder exists".into()),
        };
        probes.push(Probe { what: "create a file in a folder on the write list".into(), should_block: false, outcome });
        if rules.deny_tcp {
            let outcome = match port {
                Some(port) => io_outcome(std::net::TcpStream::connect(("127.0.0.1", port)).map(drop)),
                None => Outcome::Skipped("no local TCP listener could be opened to connect to".into()),
            };
            probes.push(Probe { what: "connect to a TCP port".into(), should_block: true, outcome });
            probes.push(Probe {
                what: "bind a TCP port".into(),
                should_block: true,
                outcome: io_outcome(std::net::TcpListener::bind(("127.0.0.1", 0)).map(drop)),
            });
        }
        let outcome = match &exe {
            Some(exe) => exec_outcome(exe),
            None => Outcome::Skipped("the executable cannot be located".into()),
        };
        probes.push(Probe { what: "start the executable again (as the service starts its workers)".into(), should_block: false, outcome });
        SelfTestReport { enforcement, probes }
    });
    drop(listener);
    report
}

fn io_outcome(result: io::Result<()>) -> Outcome {
    match result {
        Ok(()) => Outcome::Allowed,
        Err(e) if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EPERM) => Outcome::Blocked,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

fn try_open(path: &Path, flags: libc::c_int) -> Outcome {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    let access = flags & libc::O_ACCMODE;
    options.read(access == libc::O_RDONLY).write(access == libc::O_WRONLY).custom_flags(flags & !libc::O_ACCMODE);
    io_outcome(options.open(path).map(drop))
}

fn try_create(path: &Path) -> Outcome {
    let outcome = io_outcome(std::fs::OpenOptions::new().write(true).create_new(true).open(path).map(drop));
    if outcome == Outcome::Allowed
        && let Err(e) = std::fs::remove_file(path)
    {
        return Outcome::Failed(format!("created but could not remove it: {e}"));
    }
    outcome
}

/// Execs `exe --version` with no environment and standard streams on
/// `/dev/null`; allowed when it ran (the loader found every library).
fn exec_outcome(exe: &std::ffi::CStr) -> Outcome {
    let arg = c"--version";
    let argv = [exe.as_ptr(), arg.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: fork in a single-threaded child; the grandchild only calls
    // async-signal-safe functions (open, dup2, execve, _exit) on memory
    // prepared before the fork.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            return Outcome::Failed(io::Error::last_os_error().to_string());
        }
        if pid == 0 {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 {
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
            }
            libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let code = if io::Error::last_os_error().raw_os_error() == Some(libc::EACCES) { 126 } else { 125 };
            libc::_exit(code);
        }
        let mut status = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = libc::waitpid(pid, &mut status, libc::WNOHANG);
            if r == pid {
                break;
            }
            if r < 0 || std::time::Instant::now() > deadline {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
                return Outcome::Failed("the executable did not exit within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
            (true, 126) => Outcome::Blocked,
            (true, 125) => Outcome::Failed("exec failed".into()),
            (true, 127) => Outcome::Blocked, // the loader could not open a library
            (true, _) => Outcome::Allowed,
            (false, _) => Outcome::Failed("the executable was killed by a signal".into()),
        }
    }
}

/// Runs `f` in a forked child and returns its result (JSON over a pipe, at
/// most 1 MiB). The parent waits at most `timeout`, then kills the child.
///
/// The child starts with only the calling thread; `f` must not wait for
/// locks another thread of the parent could have held at the fork (the
/// allocators used here register fork handlers; logging is not used).
pub(crate) fn in_child<T: Serialize + serde::de::DeserializeOwned>(timeout: Duration, f: impl FnOnce() -> T) -> Result<T, SandboxError> {
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const MAX_REPLY: u64 = 1 << 20;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SandboxError::Spawn(io::Error::last_os_error()));
    }
    // SAFETY: pipe2 just returned these descriptors; nothing else owns them.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child runs `f`, writes its answer and leaves with `_exit`
    // (no destructors, no atexit handlers of the parent's state).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SandboxError::Spawn(io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(read_end);
        let value = f();
        let mut out = std::fs::File::from(write_end);
        let code = match serde_json::to_vec(&value).map(|bytes| out.write_all(&bytes)) {
            Ok(Ok(())) => 0,
            _ => 1,
        };
        // SAFETY: leaves the child at once, as a forked child must.
        unsafe { libc::_exit(code) };
    }
    drop(write_end);
    let deadline = std::time::Instant::now() + timeout;
    let mut bytes = Vec::new();
    let mut input = std::fs::File::from(read_end);
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut poll = libc::pollfd { fd: input.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if ready == 0 {
            timed_out = true;
            break;
        }
        if ready < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        let mut chunk = [0u8; 8192];
        match input.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if (bytes.len() + n) as u64 <= MAX_REPLY => bytes.extend_from_slice(&chunk[..n]),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let mut status = 0;
    // SAFETY: `pid` is our child; killing a child that already exited (not yet
    // reaped) is harmless, and waitpid reaps it.
    unsafe {
        if timed_out {
            libc::kill(pid, libc::SIGKILL);
        }
        libc::waitpid(pid, &mut status, 0);
    }
    if timed_out {
        return Err(SandboxError::Timeout(timeout.as_secs()));
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(SandboxError::Child(format!("it ended with wait status {status}")));
    }
    serde_json::from_slice(&bytes).map_err(|e| SandboxError::Child(format!("unreadable answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        crate::test_dir(&format!("sandbox-{name}"))
    }

    #[test]
    fn unenforced_names_what_each_abi_lacks() {
        assert!(unenforced(8, true, 3).is_empty());
        assert!(unenforced(4, true, 0).is_empty());
        assert!(unenforced(3, false, 0).is_empty());
        let v3 = unenforced(3, true, 0);
        assert!(v3.len() == 1 && v3[0].contains("TCP"), "{v3:?}");
        let v1 = unenforced(1, true, 2);
        assert!(v1.iter().any(|m| m.contains("truncat")) && v1.iter().any(|m| m.contains("2 thread")), "{v1:?}");
    }

    #[test]
    fn harden_process_turns_off_privileges_cores_and_dumps() {
        let got = in_child(Duration::from_secs(10), || {
            let hardened = harden_process().is_ok();
            let nnp = nix::sys::prctl::get_no_new_privs().unwrap_or(false);
            let dumpable = nix::sys::prctl::get_dumpable().unwrap_or(true);
            let core = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE).map(|l| l.0 == 0 && l.1 == 0).unwrap_or(false);
            (hardened, nnp, dumpable, core)
        })
        .unwrap();
        assert_eq!(got, (true, true, false, true));
    }

    /// The confined child cannot open a file outside its allow-list, can
    /// read and write what is on it, refuses TCP and still execs itself.
    #[test]
    fn confined_child_cannot_leave_its_allow_list() {
        let abi = match landlock_abi() {
            Ok(abi) => abi,
            Err(why) => {
                eprintln!("SKIPPED: {why}");
                return;
            }
        };
        let dir = tmp("escape");
        let data = dir.join("data");
        let state = dir.join("state");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(data.join("t.csv"), "id\n1\n").unwrap();
        let secret = dir.join("secret.csv");
        std::fs::write(&secret, "id\n2\n").unwrap();
        let rules = Confinement { read: vec![data.join("t.csv")], write: vec![state.clone()], deny_tcp: true, bind_tcp: Vec::new() };
        let report = self_test(&rules, &secret).unwrap();
        let outcome = |what: &str| report.probes.iter().find(|p| p.what.starts_with(what)).map(|p| p.outcome.clone());
        assert_eq!(outcome("read a file outside"), Some(Outcome::Blocked), "{report:?}");
        assert_eq!(outcome("open a file outside"), Some(Outcome::Blocked), "{report:?}");
        assert_eq!(outcome("read a path on"), Some(Outcome::Allowed), "{report:?}");
        assert_eq!(outcome("create a file"), Some(Outcome::Allowed), "{report:?}");
        if abi >= 4 {
            assert_eq!(report.enforcement, Enforcement::Full, "{report:?}");
            assert_eq!(outcome("connect to a TCP"), Some(Outcome::Blocked), "{report:?}");
            assert_eq!(outcome("bind a TCP"), Some(Outcome::Blocked), "{report:?}");
        }
        // The test binary answers `--version` with an error, but it ran.
        assert_eq!(outcome("start the executable"), Some(Outcome::Allowed), "{report:?}");
        assert!(report.passed(), "{report:?}");
        // Nothing was left behind in the write folder, nothing written to the probe.
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "id\n2\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_rules_the_probes_get_through() {
        // The same probes against an empty confinement run in a child where
        // nothing is applied: they report the hole (the test can fail).
        let dir = tmp("open");
        let secret = dir.join("secret.csv");
        std::fs::write(&secret, "x").unwrap();
        let report = in_child(Duration::from_secs(10), || try_open(&secret, libc::O_RDONLY)).unwrap();
        assert_eq!(report, Outcome::Allowed);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_probe_inside_the_allow_list_or_missing_is_refused() {
        let dir = tmp("probe");
        let f = dir.join("t.csv");
        std::fs::write(&f, "x").unwrap();
        let rules = Confinement { read: vec![dir.clone()], ..Confinement::default() };
        assert!(matches!(self_test(&rules, &f), Err(SandboxError::ProbeInside(_))));
        assert!(matches!(self_test(&rules, &dir.join("missing")), Err(SandboxError::ProbeMissing(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
