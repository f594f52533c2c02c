//! `safe-data doctor`: checks a deployment and names each hole.
//!
//! What it checks (each line of its output is `ok`, `note` or `HOLE`):
//! - Landlock on this kernel (and, with `--self-test`, that a child confined
//!   as the service would be cannot read outside its allow-list, cannot use
//!   TCP, and can still start the executable again);
//! - the owner's files: no source or state file readable or writable, and
//!   the configuration not writable, by any other account (permission bits)
//!   or by each scientist's account (as root: the kernel's own answer with
//!   the account's credentials, ACLs included; otherwise permission bits);
//! - the service socket: not open to accounts the `[service]` section does
//!   not allow, in the configured group, in a folder others cannot write;
//! - given a Jupyter server (`--url`, `--token`), through its REST API: no
//!   access without the token, no terminal, no kernelspec but Safe Data's,
//!   no other kernel startable (`python3` is always tried), no source or
//!   state file reachable through `/api/contents` or `/files` (relative
//!   paths for every root_dir above the file, and `..` escapes); no symlink
//!   in the notebooks folder (`--notebooks`) that leads to them; no
//!   kernelspec installed in this environment's Jupyter folders that is not
//!   offered but starts by name.
//!
//! It only looks: the terminal or kernel it manages to start is deleted at
//! once; files are opened for nothing (the REST probes ask for metadata, or
//! HEAD). Exit status: 0 no hole, 1 a hole, 2 a check could not run.

use super::jupyter::{Protected, protected_paths, resolve};
use super::perms::{self, Access, Account};
use crate::sandbox;
use safe_data_lang::config::Config;
use serde_json::Value;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// The doctor's options (see `safe-data doctor --help`).
#[derive(Debug, Clone, Default)]
pub struct Args {
    pub config: PathBuf,
    pub url: Option<String>,
    pub token: Option<String>,
    pub as_users: Vec<String>,
    pub notebooks: Option<PathBuf>,
    pub self_test: bool,
}

#[derive(Default)]
struct Report {
    holes: usize,
    errors: usize,
}

impl Report {
    fn ok(&mut self, text: impl AsRef<str>) {
        println!("ok    {}", text.as_ref());
    }
    fn note(&mut self, text: impl AsRef<str>) {
        println!("note  {}", text.as_ref());
    }
    fn hole(&mut self, text: impl AsRef<str>) {
        self.holes += 1;
        println!("HOLE  {}", text.as_ref());
    }
    fn error(&mut self, text: impl AsRef<str>) {
        self.errors += 1;
        println!("ERROR {}", text.as_ref());
    }
}

/// Runs every check and prints one line per finding.
pub fn run(args: &Args) -> ExitCode {
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut r = Report::default();
    check_landlock(&mut r);
    if args.self_test {
        check_self_test(&cfg, &mut r);
    }
    let protected = protected_paths(&cfg);
    let accounts = match scientists(&args.as_users, &cfg) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    check_files(&cfg, &protected, &accounts, &mut r);
    if let Some(url) = &args.url {
        check_jupyter(url, args.token.as_deref(), args.notebooks.as_deref(), &protected, &cfg, &mut r);
    }
    match (r.holes, r.errors) {
        (0, 0) => {
            println!("No holes found.");
            ExitCode::SUCCESS
        }
        (0, n) => {
            println!("No holes found, but {n} check(s) could not run.");
            ExitCode::from(2)
        }
        (n, _) => {
            println!("{n} hole(s) found.");
            ExitCode::FAILURE
        }
    }
}

fn check_landlock(r: &mut Report) {
    match sandbox::landlock_abi() {
        Ok(abi) if abi >= 4 => r.ok(format!("Landlock ABI {abi}: the service can confine its files and refuse TCP")),
        Ok(abi) => {
            r.ok(format!("Landlock ABI {abi}: the service can confine its files"));
            r.note("this kernel's Landlock cannot refuse TCP (ABI 4, Linux 6.7, needed)");
        }
        Err(why) => r.hole(format!("Landlock is missing, so the data service cannot confine itself: {why}")),
    }
}

fn check_self_test(cfg: &Config, r: &mut Report) {
    let probe = std::env::temp_dir().join(format!("safe-data-doctor-probe-{}", std::process::id()));
    if let Err(e) = std::fs::write(&probe, "probe\n") {
        r.error(format!("self-test: cannot write the probe file {}: {e}", probe.display()));
        return;
    }
    match sandbox::self_test(&sandbox::service_confinement(cfg), &probe) {
        Ok(report) => {
            match &report.enforcement {
                sandbox::Enforcement::Full => r.ok("self-test: the service's confinement is fully enforced"),
                other => r.hole(format!("self-test: the service's confinement is {other}")),
            }
            for p in &report.probes {
                if p.as_expected() {
                    r.ok(format!("self-test: {p}"));
                } else {
                    r.hole(format!("self-test: {p}"));
                }
            }
        }
        Err(e) => r.error(format!("self-test: {e}")),
    }
    let _ = std::fs::remove_file(&probe);
}

/// The accounts to check: the named ones, or every human account but the
/// state_dir's owner (taken to be the service account).
fn scientists(names: &[String], cfg: &Config) -> Result<Vec<Account>, super::DeployError> {
    if !names.is_empty() {
        return names.iter().map(|n| perms::account(n)).collect();
    }
    let owner = std::fs::metadata(&cfg.server.state_dir).ok().map(|m| m.uid());
    Ok(perms::human_accounts(owner))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// One protected item's files, with what counts as a hole.
struct Expanded<'a> {
    item: &'a Protected,
    paths: Vec<PathBuf>,
}

fn check_files(cfg: &Config, protected: &[Protected], accounts: &[Account], r: &mut Report) {
    let mut expanded = Vec::new();
    for p in protected {
        let path = resolve(&p.path);
        if std::fs::symlink_metadata(&path).is_err() {
            r.note(format!("{} ({}) does not exist: not checked", p.what, p.path.display()));
            continue;
        }
        let (paths, stopped) = perms::walk(&path);
        if stopped {
            r.error(format!("{} has more than {} entries: only the first were checked", p.what, perms::MAX_WALK));
        }
        expanded.push(Expanded { item: p, paths });
    }
    let socket = cfg.service.as_ref().map(|s| s.socket.clone());

    // Any account at all: the permission bits of the "other" class.
    let mut clean = true;
    for e in &expanded {
        let hits: Vec<(usize, Access)> = e.paths.iter().enumerate().map(|(i, p)| (i, perms::mode_access(p, None))).filter(|(_, a)| a.any()).collect();
        clean &= report_hits(r, "any account on this machine", e, &hits);
    }
    if clean {
        r.ok("no source or state file is readable or writable by every account (permission bits of \"other\")");
    }

    if accounts.is_empty() {
        r.note("no scientist account to check (none with a human uid, except the state_dir's owner): name them with --as-user NAME");
    } else if !is_root() {
        r.note("not running as root: access computed from permission bits (POSIX ACLs are not seen); run as root for an exact check");
    }
    let mut all: Vec<PathBuf> = expanded.iter().flat_map(|e| e.paths.iter().cloned()).collect();
    if let Some(s) = &socket {
        all.push(s.clone());
    }
    let mut socket_access = Vec::new();
    for account in accounts {
        let hits: Vec<(usize, Access)> = if is_root() {
            match perms::exact_access(account, &all) {
                Ok(h) => h,
                Err(e) => {
                    r.error(format!("cannot check as {}: {e}", account.name));
                    continue;
                }
            }
        } else {
            all.iter().enumerate().map(|(i, p)| (i, perms::mode_access(p, Some(account)))).filter(|(_, a)| a.any()).collect()
        };
        let mut offset = 0;
        let mut clean = true;
        for e in &expanded {
            let own: Vec<(usize, Access)> = hits.iter().filter(|(i, _)| (offset..offset + e.paths.len()).contains(i)).map(|(i, a)| (i - offset, *a)).collect();
            clean &= report_hits(r, &account.name, e, &own);
            offset += e.paths.len();
        }
        if clean {
            r.ok(format!("{} can neither read nor write the sources and state files", account.name));
        }
        let on_socket = socket.is_some() && hits.iter().any(|(i, a)| *i == all.len() - 1 && a.write);
        socket_access.push((account, on_socket));
    }
    check_socket(cfg, &socket_access, r);
}

/// Reports one account's access to one item; true when there is none that
/// counts as a hole.
fn report_hits(r: &mut Report, who: &str, e: &Expanded, hits: &[(usize, Access)]) -> bool {
    let reads: Vec<&PathBuf> = hits.iter().filter(|(_, a)| a.read && e.item.secret).map(|(i, _)| &e.paths[*i]).collect();
    let writes: Vec<&PathBuf> = hits.iter().filter(|(_, a)| a.write).map(|(i, _)| &e.paths[*i]).collect();
    for (verb, list) in [("read", &reads), ("write", &writes)] {
        if let Some(first) = list.first() {
            let more = if list.len() > 1 { format!(" and {} more", list.len() - 1) } else { String::new() };
            r.hole(format!(
                "{who} can {verb} {} ({}{more}): make it owned by the service account and not accessible to others (chmod o-rwx)",
                e.item.what,
                first.display()
            ));
        }
    }
    reads.is_empty() && writes.is_empty()
}

fn check_socket(cfg: &Config, accounts: &[(&Account, bool)], r: &mut Report) {
    let Some(service) = &cfg.service else {
        r.note("no [service] section: kernels open the data themselves, as the scientist (only the service mode keeps the data from their accounts)");
        return;
    };
    let socket = &service.socket;
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(_) => {
            r.note(format!("the socket {} does not exist (is `safe-data serve` running?): not checked", socket.display()));
            return;
        }
    };
    if !meta.file_type().is_socket() {
        r.hole(format!("{} is not a socket: remove it and start `safe-data serve`", socket.display()));
        return;
    }
    let lists = service.allowed_users.is_some() || service.allowed_groups.is_some();
    let anyone = perms::mode_access(socket, None).write;
    let mode = meta.mode() & 0o777;
    if anyone && !lists {
        r.hole(format!(
            "anyone on this machine can connect to the data service ({} is {mode:04o}) and [service] lists no allowed_users or allowed_groups: set socket_group (the socket becomes 0660) or allowed_users",
            socket.display()
        ));
    } else {
        r.ok(format!("the socket {} ({mode:04o}) is not open to every account, or the service checks who connects", socket.display()));
    }
    if let Some(group) = &service.socket_group {
        match nix::unistd::Group::from_name(group).ok().flatten() {
            Some(g) if g.gid.as_raw() == meta.gid() => r.ok(format!("the socket belongs to the group `{group}`")),
            Some(_) => r.hole(format!("the socket does not belong to socket_group `{group}`: restart `safe-data serve`, or chgrp it")),
            None => r.hole(format!("socket_group `{group}` is not a group of this machine")),
        }
    }
    if let Some(dir) = socket.parent()
        && let Ok(d) = std::fs::metadata(dir)
        && d.mode() & 0o002 != 0
        && d.mode() & 0o1000 == 0
    {
        r.hole(format!("the socket's folder {} is writable by every account: another account could put its own socket there", dir.display()));
    }
    let groups: Option<Vec<u32>> = service
        .allowed_groups
        .as_ref()
        .map(|names| names.iter().filter_map(|n| nix::unistd::Group::from_name(n).ok().flatten().map(|g| g.gid.as_raw())).collect());
    for (account, can_connect) in accounts {
        let allowed = service.allowed_users.as_ref().is_none_or(|u| u.contains(&account.name))
            && groups.as_ref().is_none_or(|gs| gs.iter().any(|g| account.in_group(*g)));
        match (can_connect, allowed) {
            (true, false) => r.hole(format!(
                "{} can open the service socket but is not allowed by [service] (the service refuses them; the socket should not be open to them: use socket_group)",
                account.name
            )),
            (false, true) if lists || service.socket_group.is_some() => r.note(format!("{} is allowed but cannot open the service socket", account.name)),
            _ => {}
        }
    }
}

/// The Jupyter server's REST API, with the token when one is given.
struct Jupyter {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

/// The largest REST answer read (kernelspecs, a kernel model).
const MAX_ANSWER: u64 = 1 << 20;

impl Jupyter {
    fn new(url: &str, token: Option<&str>) -> Result<Jupyter, super::DeployError> {
        if !url.starts_with("http://") {
            return Err(super::DeployError::Url);
        }
        let config =
            ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).proxy(None).timeout_global(Some(Duration::from_secs(20))).build();
        Ok(Jupyter { agent: config.into(), base: url.trim_end_matches('/').to_string(), token: token.map(str::to_string) })
    }

    /// `(status, body)` of one request; `auth` false leaves the token out.
    fn call(&self, method: &str, path: &str, body: Option<&str>, auth: bool) -> Result<(u16, String), String> {
        let url = format!("{}/{path}", self.base);
        let header = self.token.as_ref().filter(|_| auth).map(|t| format!("token {t}"));
        let result = match method {
            "POST" => {
                let mut req = self.agent.post(&url).header("Content-Type", "application/json");
                if let Some(h) = &header {
                    req = req.header("Authorization", h);
                }
                req.send(body.unwrap_or("{}"))
            }
            _ => {
                let mut req = match method {
                    "DELETE" => self.agent.delete(&url),
                    "HEAD" => self.agent.head(&url),
                    _ => self.agent.get(&url),
                };
                if let Some(h) = &header {
                    req = req.header("Authorization", h);
                }
                req.call()
            }
        };
        let mut response = result.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status().as_u16();
        let text = if method == "HEAD" { String::new() } else { response.body_mut().with_config().limit(MAX_ANSWER).read_to_string().unwrap_or_default() };
        Ok((status, text))
    }
}

fn check_jupyter(url: &str, token: Option<&str>, notebooks: Option<&Path>, protected: &[Protected], cfg: &Config, r: &mut Report) {
    let api = match Jupyter::new(url, token) {
        Ok(a) => a,
        Err(e) => {
            r.error(e.to_string());
            return;
        }
    };
    // Authentication: the API must refuse a client without the token.
    match api.call("GET", "api/status", None, false) {
        Err(e) => {
            r.error(format!("cannot reach the Jupyter server: {e}"));
            return;
        }
        Ok((200..=299, _)) => r.hole("the Jupyter server answers its API without a token: anyone who can reach it can use it"),
        Ok(_) => r.ok("the Jupyter server refuses its API without a token"),
    }
    if token.is_some() {
        match api.call("GET", "api/status", None, true) {
            Ok((200..=299, _)) => {}
            Ok((status, _)) => {
                r.error(format!("the Jupyter server refuses this token (status {status}): give the server's token"));
                return;
            }
            Err(e) => {
                r.error(format!("cannot reach the Jupyter server: {e}"));
                return;
            }
        }
    }
    check_terminals(&api, r);
    let (others, ours) = check_kernelspecs(&api, r);
    check_kernel_starts(&api, &others, &ours, r);
    check_contents(&api, notebooks, protected, cfg, r);
    if let Some(nb) = notebooks {
        check_symlinks(nb, protected, r);
    }
}

/// Symlinks in the notebooks folder that lead to a protected path:
/// jupyter_server (2.21) serves a symlink's target through `/api/contents`
/// wherever it points, and no setting stops it.
fn check_symlinks(notebooks: &Path, protected: &[Protected], r: &mut Report) {
    let (paths, stopped) = perms::walk(&resolve(notebooks));
    if stopped {
        r.note(format!("the notebooks folder has more than {} entries: only the first were checked for symlinks", perms::MAX_WALK));
    }
    let targets: Vec<(&Protected, PathBuf)> = protected.iter().filter(|p| p.secret).map(|p| (p, resolve(&p.path))).collect();
    let mut clean = true;
    for link in paths.iter().filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())) {
        let Ok(to) = std::fs::canonicalize(link) else { continue };
        for (p, path) in &targets {
            if to.starts_with(path) || (to.is_dir() && path.starts_with(&to)) {
                clean = false;
                r.hole(format!(
                    "the symlink {} in the notebooks folder leads to {} ({}): jupyter_server serves a symlink's target through /api/contents; remove the symlink",
                    link.display(),
                    p.what,
                    path.display()
                ));
                break;
            }
        }
    }
    if clean {
        r.ok("no symlink in the notebooks folder leads to a source or the state_dir");
    }
}

fn check_terminals(api: &Jupyter, r: &mut Report) {
    match api.call("POST", "api/terminals", Some("{}"), true) {
        Ok((200..=299, body)) => {
            r.hole("a terminal can be created (POST /api/terminals): set ServerApp.terminals_enabled = false (safe-data jupyter-config)");
            if let Some(name) = serde_json::from_str::<Value>(&body).ok().and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_string)) {
                let _ = api.call("DELETE", &format!("api/terminals/{}", encode(&name)), None, true);
            }
        }
        Ok((status, _)) => r.ok(format!("no terminal can be created (status {status})")),
        Err(e) => r.error(format!("terminals: {e}")),
    }
}

/// Checks the offered kernelspecs; returns the names that are not Safe
/// Data's and those that are.
fn check_kernelspecs(api: &Jupyter, r: &mut Report) -> (Vec<String>, Vec<String>) {
    let specs = match api.call("GET", "api/kernelspecs", None, true) {
        Ok((200, body)) => match serde_json::from_str::<Value>(&body) {
            Ok(v) => v,
            Err(_) => {
                r.error("kernelspecs: the answer is not JSON");
                return (Vec::new(), Vec::new());
            }
        },
        Ok((status, _)) => {
            r.error(format!("kernelspecs: status {status}"));
            return (Vec::new(), Vec::new());
        }
        Err(e) => {
            r.error(format!("kernelspecs: {e}"));
            return (Vec::new(), Vec::new());
        }
    };
    let mut others = Vec::new();
    let mut ours = Vec::new();
    for (name, entry) in specs.get("kernelspecs").and_then(Value::as_object).into_iter().flatten() {
        if entry.pointer("/spec/metadata/safe_data").is_some_and(Value::is_object) {
            ours.push(name.clone());
        } else {
            let display = entry.pointer("/spec/display_name").and_then(Value::as_str).unwrap_or("");
            r.hole(format!("the kernelspec `{name}` ({display}) is offered: allow only Safe Data's (KernelSpecManager.allowed_kernelspecs)"));
            others.push(name.clone());
        }
    }
    if others.is_empty() {
        r.ok(format!("only Safe Data kernelspecs are offered ({})", if ours.is_empty() { "none".to_string() } else { ours.join(", ") }));
    }
    (others, ours)
}

fn check_kernel_starts(api: &Jupyter, others: &[String], offered: &[String], r: &mut Report) {
    let mut names = vec!["python3".to_string()];
    names.extend(others.iter().filter(|n| *n != "python3").take(10).cloned());
    // Installed on this machine but not listed: jupyter_client starts any
    // kernelspec by name (the list is only a filter) when its provisioner
    // exists, and every kernelspec that names `local-provisioner` has it.
    let mut tried = 0;
    for spec in super::jupyter::installed_kernelspecs() {
        if !spec.names_provisioner || offered.iter().chain(&names).any(|n| n.eq_ignore_ascii_case(&spec.name)) {
            continue;
        }
        tried += 1;
        if tried > 20 {
            r.note("more than 20 kernelspecs installed but not offered: only the first 20 were tried");
            break;
        }
        let body = serde_json::json!({ "name": spec.name }).to_string();
        match api.call("POST", "api/kernels", Some(&body), true) {
            Ok((200..=299, answer)) => {
                let text = format!(
                    "the kernelspec `{}` ({}) is not offered but a kernel of it can be started (POST /api/kernels): the allow-list only hides it; remove it from the server's Jupyter folders, or allow it with jupyter-config --kernel-name",
                    spec.name,
                    spec.file.display()
                );
                if spec.safe_data {
                    r.note(format!("a Safe Data {text}"))
                } else {
                    r.hole(text)
                }
                if let Some(id) = serde_json::from_str::<Value>(&answer).ok().and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string)) {
                    let _ = api.call("DELETE", &format!("api/kernels/{}", encode(&id)), None, true);
                }
            }
            Ok(_) => {}
            Err(e) => r.error(format!("kernels: {e}")),
        }
    }
    for name in names {
        let body = serde_json::json!({ "name": name }).to_string();
        match api.call("POST", "api/kernels", Some(&body), true) {
            Ok((200..=299, answer)) => {
                r.hole(format!(
                    "a `{name}` kernel can be started (POST /api/kernels): the allow-list only hides it; use the provisioner setting of safe-data jupyter-config"
                ));
                if let Some(id) = serde_json::from_str::<Value>(&answer).ok().and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string)) {
                    let _ = api.call("DELETE", &format!("api/kernels/{}", encode(&id)), None, true);
                }
            }
            Ok((status, _)) => r.ok(format!("a `{name}` kernel cannot be started (status {status})")),
            Err(e) => r.error(format!("kernels: {e}")),
        }
    }
}

/// Percent-encodes one URL path segment.
fn encode(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The deepest `..` escape tried.
const MAX_ESCAPE: usize = 8;

/// API paths under which `path` could be served: relative to every folder
/// above it (whatever root_dir is, if it is above the file), relative to
/// `notebooks` (with `..`), and `..` escapes from a root_dir up to 8 levels
/// deep, both plain and percent-encoded.
fn candidates(path: &Path, notebooks: Option<&Path>) -> Vec<String> {
    let parts: Vec<String> =
        path.components().filter(|c| matches!(c, std::path::Component::Normal(_))).map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let encoded: Vec<String> = parts.iter().map(|p| encode(p)).collect();
    let mut out = Vec::new();
    for start in 0..encoded.len() {
        out.push(encoded[start..].join("/"));
    }
    if let Some(nb) = notebooks {
        let nb = resolve(nb);
        let nb_parts: Vec<_> = nb.components().collect();
        let common = nb_parts.iter().zip(path.components()).take_while(|(a, b)| *a == b).count();
        let ups = nb_parts.len().saturating_sub(common);
        let rest: Vec<String> = path.components().skip(common).map(|c| encode(&c.as_os_str().to_string_lossy())).collect();
        out.push(std::iter::repeat_n("..".to_string(), ups).chain(rest).collect::<Vec<_>>().join("/"));
    }
    let full = encoded.join("/");
    for up in 1..=MAX_ESCAPE {
        out.push(format!("{}{full}", "../".repeat(up)));
        out.push(format!("{}{full}", "%2E%2E/".repeat(up)));
    }
    out.dedup();
    out
}

fn check_contents(api: &Jupyter, notebooks: Option<&Path>, protected: &[Protected], cfg: &Config, r: &mut Report) {
    let state = &cfg.server.state_dir;
    let mut targets: Vec<(String, PathBuf)> = protected.iter().filter(|p| p.secret).map(|p| (p.what.clone(), resolve(&p.path))).collect();
    for (what, file) in [("the audit log", "audit.jsonl"), ("the histories", "history"), ("the caches", "cache")] {
        let path = state.join(file);
        if path.exists() {
            targets.push((what.to_string(), resolve(&path)));
        }
    }
    let mut clean = true;
    for (what, path) in &targets {
        for (endpoint, method, suffix) in [("api/contents", "GET", "?content=0"), ("files", "HEAD", "")] {
            for candidate in candidates(path, notebooks) {
                match api.call(method, &format!("{endpoint}/{candidate}{suffix}"), None, true) {
                    Ok((200..=299, _)) => {
                        clean = false;
                        r.hole(format!(
                            "{what} ({}) is reachable through /{endpoint}/{candidate}: make the notebooks folder (root_dir) a folder apart from the data",
                            path.display()
                        ));
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        r.error(format!("contents: {e}"));
                        return;
                    }
                }
            }
        }
    }
    if clean {
        r.ok(format!("no source or state file is reachable through /api/contents or /files ({} path(s) tried)", targets.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_cover_every_root_above_and_escapes() {
        let c = candidates(Path::new("/srv/data/t 1.csv"), Some(Path::new("/home/alice/notebooks")));
        for want in ["srv/data/t%201.csv", "data/t%201.csv", "t%201.csv", "../../../srv/data/t%201.csv", "%2E%2E/srv/data/t%201.csv"] {
            assert!(c.iter().any(|x| x == want), "{want} not in {c:?}");
        }
        assert!(c.len() <= 3 + 1 + 2 * MAX_ESCAPE);
    }

    #[test]
    fn encode_keeps_unreserved_characters_only() {
        assert_eq!(encode("a b/é?"), "a%20b%2F%C3%A9%3F");
        assert_eq!(encode("x-y_z.~"), "x-y_z.~");
    }
}
