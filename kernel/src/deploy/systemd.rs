//! `safe-data systemd-unit`: the systemd unit of the data service for the
//! owner's paths.
//!
//! The unit is the repository's `deploy/safe-data.service` (written for the
//! paths of `docs/deploy.md`), with the lines that name a path, an account or
//! the binary rewritten from the configuration: `User=`, `Group=`,
//! `SupplementaryGroups=` (`socket_group`), `ExecStart=`, `RuntimeDirectory=`
//! (the socket's folder under /run), `StateDirectory=` (a `state_dir` under
//! /var/lib) and `ReadWritePaths=` (the `state_dir`). It reads the
//! configuration file only (never a source) and prints no data.

use super::DeployError;
use safe_data_lang::config::Config;
use std::path::{Path, PathBuf};

/// The unit as shipped, for the paths of `docs/deploy.md`.
pub const TEMPLATE: &str = include_str!("../../../deploy/safe-data.service");

/// The account the unit runs the service as, when `--user` is not given.
pub const DEFAULT_USER: &str = "safe-data";

/// Everything of the unit that depends on the deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub binary: PathBuf,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub socket_group: Option<String>,
    pub user: String,
    pub group: String,
}

impl Paths {
    /// The paths the shipped unit is written for.
    pub fn shipped() -> Paths {
        Paths {
            binary: "/usr/local/bin/safe-data".into(),
            config: "/etc/safe-data/hospital.toml".into(),
            state_dir: "/var/lib/safe-data".into(),
            socket: "/run/safe-data/safe-data.sock".into(),
            socket_group: Some("scientists".into()),
            user: DEFAULT_USER.into(),
            group: DEFAULT_USER.into(),
        }
    }
}

/// A path as a unit file takes it: absolute, no characters the unit syntax
/// would split or quote, `%` (a specifier) doubled.
fn unit_path(what: &str, path: &Path) -> Result<String, DeployError> {
    let text = path.to_str().ok_or_else(|| DeployError::Config(format!("the {what} path {} is not UTF-8", path.display())))?;
    if !path.is_absolute() {
        return Err(DeployError::Config(format!("the {what} path {text} is not absolute")));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control() || "\"'\\;".contains(c)) {
        return Err(DeployError::Config(format!(
            "the {what} path {text} holds a space, a quote, a backslash or a ';': move it to a plain path for the unit file"
        )));
    }
    Ok(text.replace('%', "%%"))
}

/// An account or group name as a unit takes it (systemd's own rule, roughly:
/// letters, digits, `_`, `-`, `.`; not starting with a digit or `-`).
fn unit_name(what: &str, name: &str) -> Result<String, DeployError> {
    let ok =
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) && !name.starts_with(|c: char| c.is_ascii_digit() || c == '-');
    if ok { Ok(name.to_string()) } else { Err(DeployError::Config(format!("`{name}` is not a valid {what} name for a unit file"))) }
}

/// `dir` relative to `base`, when `dir` lies strictly inside it.
fn below(dir: &Path, base: &str) -> Option<String> {
    let rel = dir.strip_prefix(base).ok()?;
    let text = rel.to_str()?;
    (!text.is_empty()).then(|| text.to_string())
}

/// The unit for `paths`: the shipped one with its deployment lines rewritten.
pub fn render(paths: &Paths) -> Result<String, DeployError> {
    let binary = unit_path("binary", &paths.binary)?;
    let config = unit_path("configuration", &paths.config)?;
    let state_dir = unit_path("state_dir", &paths.state_dir)?;
    let socket_dir = paths.socket.parent().ok_or_else(|| DeployError::Config(format!("the socket path {} has no folder", paths.socket.display())))?;
    let socket_dir_text = unit_path("socket folder", socket_dir)?;
    unit_path("socket", &paths.socket)?;
    let user = unit_name("user", &paths.user)?;
    let group = unit_name("group", &paths.group)?;
    let socket_group = paths.socket_group.as_deref().map(|g| unit_name("socket_group", g)).transpose()?;
    // systemd makes the socket's folder when it is under /run, and the
    // state_dir when it is under /var/lib; anything else must exist, and a
    // socket folder outside the state_dir and /run must be writable too.
    let runtime = below(socket_dir, "/run");
    let state = below(&paths.state_dir, "/var/lib");
    let mut writable = vec![state_dir];
    if runtime.is_none() && !socket_dir.starts_with(&paths.state_dir) {
        writable.push(socket_dir_text);
    }
    let value = |key: &str| -> Option<String> {
        Some(match key {
            "User" => user.clone(),
            "Group" => group.clone(),
            "SupplementaryGroups" => socket_group.clone()?,
            "ExecStart" => format!("{binary} serve --config {config}"),
            "RuntimeDirectory" => runtime.clone()?,
            "RuntimeDirectoryMode" => {
                runtime.as_ref()?;
                "0755".into()
            }
            "StateDirectory" => state.clone()?,
            "StateDirectoryMode" => {
                state.as_ref()?;
                "0700".into()
            }
            "ReadWritePaths" => writable.join(" "),
            _ => unreachable!("not a deployment key"),
        })
    };
    const KEYS: [&str; 9] = [
        "User",
        "Group",
        "SupplementaryGroups",
        "ExecStart",
        "RuntimeDirectory",
        "RuntimeDirectoryMode",
        "StateDirectory",
        "StateDirectoryMode",
        "ReadWritePaths",
    ];
    let mut out = String::with_capacity(TEMPLATE.len() + 256);
    let mut seen = Vec::new();
    for line in TEMPLATE.lines() {
        let key = line.split_once('=').map(|(k, _)| k).filter(|k| KEYS.contains(k));
        match key {
            Some(key) => {
                seen.push(key);
                if let Some(v) = value(key) {
                    out.push_str(&format!("{key}={v}\n"));
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    // The template is compiled in: a key missing from it is a bug, not input.
    debug_assert!(KEYS.iter().all(|k| seen.contains(k)), "deploy/safe-data.service lacks a deployment key");
    Ok(out)
}

/// Folders the unit hides from the service (`ProtectHome=yes`,
/// `PrivateTmp=yes`): a path of the deployment inside one would not be found.
const HIDDEN: [(&str, &str); 5] =
    [("/home", "ProtectHome=yes"), ("/root", "ProtectHome=yes"), ("/run/user", "ProtectHome=yes"), ("/tmp", "PrivateTmp=yes"), ("/var/tmp", "PrivateTmp=yes")];

/// One warning per deployment path the unit hides from the service.
pub fn warnings(paths: &Paths, sources: &[PathBuf]) -> Vec<String> {
    let mut named: Vec<(String, &Path)> = vec![
        ("the configuration".into(), paths.config.as_path()),
        ("the state_dir".into(), paths.state_dir.as_path()),
        ("the socket".into(), paths.socket.as_path()),
    ];
    named.extend(sources.iter().map(|s| ("a source".to_string(), s.as_path())));
    let mut out = Vec::new();
    for (what, path) in named {
        if let Some((dir, directive)) = HIDDEN.iter().find(|(dir, _)| path.starts_with(dir)) {
            out.push(format!("{what} {} is under {dir}, which the unit's {directive} hides from the service: move it, or change the unit", path.display()));
        }
    }
    out
}

/// The primary group of `user`, or `user` itself when the account does not
/// exist here (yet).
fn primary_group(user: &str) -> String {
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => match nix::unistd::Group::from_gid(u.gid) {
            Ok(Some(g)) => g.name,
            _ => user.to_string(),
        },
        _ => user.to_string(),
    }
}

/// `safe-data systemd-unit`: prints the unit on standard output, warnings on
/// standard error.
pub fn run(config: &Path, user: &str, binary: Option<&Path>) -> Result<(), DeployError> {
    let cfg = Config::load(config).map_err(|e| DeployError::Config(e.to_string()))?;
    let service = cfg.service.as_ref().ok_or_else(|| {
        DeployError::Config(format!("{} has no [service] section: `safe-data serve` needs one (socket, socket_group, allowed_users)", config.display()))
    })?;
    let binary = match binary {
        Some(b) => std::path::absolute(b).map_err(|e| DeployError::Config(format!("cannot resolve {}: {e}", b.display())))?,
        None => std::env::current_exe().and_then(std::fs::canonicalize).map_err(|e| DeployError::Config(format!("cannot locate the safe-data binary: {e}")))?,
    };
    let paths = Paths {
        binary,
        config: std::fs::canonicalize(config).map_err(|e| DeployError::Config(format!("cannot find {}: {e}", config.display())))?,
        state_dir: cfg.server.state_dir.clone(),
        socket: service.socket.clone(),
        socket_group: service.socket_group.clone(),
        user: user.to_string(),
        group: primary_group(user),
    };
    let unit = render(&paths)?;
    let sources: Vec<PathBuf> = cfg.tables.iter().map(|t| t.source.clone()).collect();
    for w in warnings(&paths, &sources) {
        eprintln!("warning: {w}");
    }
    print!("{unit}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
        unit.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).collect()
    }

    #[test]
    fn the_shipped_unit_is_the_rendering_of_its_own_paths() {
        assert_eq!(render(&Paths::shipped()).unwrap(), TEMPLATE);
    }

    #[test]
    fn the_owners_paths_replace_the_shipped_ones() {
        let paths = Paths {
            binary: "/opt/jupyterhub/bin/safe-data".into(),
            config: "/srv/owner/clinic.toml".into(),
            state_dir: "/var/lib/clinic/state".into(),
            socket: "/run/clinic/sd.sock".into(),
            socket_group: Some("analysts".into()),
            user: "clinic-data".into(),
            group: "clinic".into(),
        };
        let unit = render(&paths).unwrap();
        assert_eq!(line(&unit, "ExecStart"), ["/opt/jupyterhub/bin/safe-data serve --config /srv/owner/clinic.toml"]);
        assert_eq!(line(&unit, "User"), ["clinic-data"]);
        assert_eq!(line(&unit, "Group"), ["clinic"]);
        assert_eq!(line(&unit, "SupplementaryGroups"), ["analysts"]);
        assert_eq!(line(&unit, "RuntimeDirectory"), ["clinic"]);
        assert_eq!(line(&unit, "StateDirectory"), ["clinic/state"]);
        assert_eq!(line(&unit, "ReadWritePaths"), ["/var/lib/clinic/state"]);
        // Nothing of the shipped paths is left.
        for shipped in ["/etc/safe-data", "/var/lib/safe-data", "/usr/local/bin", "=scientists", "User=safe-data"] {
            assert!(!unit.contains(shipped), "{shipped} left in:\n{unit}");
        }
        // The hardening is untouched.
        for directive in
            ["ProtectSystem=strict", "PrivateNetwork=yes", "NoNewPrivileges=yes", "RestrictAddressFamilies=AF_UNIX", "UMask=0077", "ProtectHome=yes"]
        {
            assert_eq!(unit.lines().filter(|l| *l == directive).count(), 1, "{directive}");
        }
    }

    #[test]
    fn a_socket_outside_run_is_made_writable_and_no_runtime_directory_is_asked_for() {
        let mut paths = Paths::shipped();
        paths.socket = "/srv/sock/sd.sock".into();
        paths.state_dir = "/srv/state".into();
        paths.socket_group = None;
        let unit = render(&paths).unwrap();
        assert!(line(&unit, "RuntimeDirectory").is_empty() && line(&unit, "RuntimeDirectoryMode").is_empty(), "{unit}");
        assert!(line(&unit, "StateDirectory").is_empty() && line(&unit, "SupplementaryGroups").is_empty(), "{unit}");
        assert_eq!(line(&unit, "ReadWritePaths"), ["/srv/state /srv/sock"]);
        // A socket inside the state_dir needs nothing more.
        paths.socket = "/srv/state/sd.sock".into();
        assert_eq!(line(&render(&paths).unwrap(), "ReadWritePaths"), ["/srv/state"]);
    }

    #[test]
    fn paths_the_unit_syntax_would_split_are_refused_and_percent_is_escaped() {
        for bad in ["/srv/my data/x.toml", "/srv/a\"b.toml", "/srv/a;b.toml", "relative.toml"] {
            let mut paths = Paths::shipped();
            paths.config = bad.into();
            let err = render(&paths).unwrap_err().to_string();
            assert!(err.contains("configuration path"), "{bad}: {err}");
        }
        let mut paths = Paths::shipped();
        paths.config = "/srv/100%/x.toml".into();
        assert_eq!(line(&render(&paths).unwrap(), "ExecStart"), ["/usr/local/bin/safe-data serve --config /srv/100%%/x.toml"]);
        paths.user = "0day".into();
        assert!(render(&paths).unwrap_err().to_string().contains("user name"));
    }

    #[test]
    fn paths_the_unit_hides_are_named() {
        let mut paths = Paths::shipped();
        assert!(warnings(&paths, &["/srv/hospital/data/p.csv".into()]).is_empty());
        paths.state_dir = "/home/owner/state".into();
        let found = warnings(&paths, &["/tmp/data/p.csv".into()]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("the state_dir /home/owner/state") && found[0].contains("ProtectHome=yes"), "{found:?}");
        assert!(found[1].starts_with("a source /tmp/data/p.csv") && found[1].contains("PrivateTmp=yes"), "{found:?}");
    }
}
