//! `safe-data jupyter-config`: a Jupyter server configuration that offers
//! nothing but the Safe Data kernels.
//!
//! Traits checked against jupyter_server 2.21, jupyter_client 8.10,
//! JupyterLab 4.6. The settings go into `jupyter_server_config.json`, not
//! `jupyter_server_config.d/`: jupyter_server reads only
//! `ServerApp.jpserver_extensions` from the `.d` folders.

use super::DeployError;
use safe_data_lang::config::Config;
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

/// The provisioner name the hardened configuration makes the default: it
/// does not exist, so a kernelspec that does not name its provisioner (every
/// kernelspec but Safe Data's) cannot start. `allowed_kernelspecs` alone only
/// filters the list: jupyter_client starts any installed kernel by name, and
/// `python3` whenever ipykernel is importable (JupyterLab depends on it).
pub const REFUSING_PROVISIONER: &str = "safe-data-refuses-other-kernels";

/// The file written into the configuration folder.
pub const FILE_NAME: &str = "jupyter_server_config.json";

/// A file or folder of the owner's that no scientist may reach.
#[derive(Debug, Clone)]
pub struct Protected {
    /// E.g. "the source of table `patients`".
    pub what: String,
    pub path: PathBuf,
    /// Readable by scientists is a hole (false for the configuration file,
    /// where only writing is).
    pub secret: bool,
}

/// The owner's paths: the configuration file, every source, the state_dir.
pub fn protected_paths(config: &Config) -> Vec<Protected> {
    let mut paths = vec![Protected { what: "the configuration file".into(), path: config.path.clone(), secret: false }];
    for t in &config.tables {
        paths.push(Protected { what: format!("the source of table `{}`", t.name), path: t.source.clone(), secret: true });
    }
    paths.push(Protected { what: "the state_dir (audit log, histories, caches)".into(), path: config.server.state_dir.clone(), secret: true });
    paths
}

/// `path` made absolute with symlinks resolved as far as it exists (a
/// state_dir may not exist yet).
pub fn resolve(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            return rest.iter().rev().fold(real, |p, c: &std::ffi::OsString| p.join(c));
        }
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Checks that `notebooks` neither contains nor lies inside a protected
/// path; returns it resolved.
pub fn check_notebooks(notebooks: &Path, protected: &[Protected]) -> Result<PathBuf, DeployError> {
    let dir = std::fs::canonicalize(notebooks).map_err(|e| DeployError::Notebooks(notebooks.to_path_buf(), format!("{e}; create it first")))?;
    if !dir.is_dir() {
        return Err(DeployError::Notebooks(notebooks.to_path_buf(), "is not a folder".into()));
    }
    for p in protected {
        let path = resolve(&p.path);
        let relation = if path == dir {
            "is"
        } else if path.starts_with(&dir) {
            "contains"
        } else if dir.starts_with(&path) {
            "is inside"
        } else {
            continue;
        };
        return Err(DeployError::Overlap {
            notebooks: dir,
            relation,
            what: p.what.clone(),
            path,
            fix: "Choose a notebooks folder apart from every source, the state_dir and the configuration (e.g. each scientist's ~/notebooks), or move the data out of it.",
        });
    }
    Ok(dir)
}

/// The hardened settings, by traitlets class.
pub fn settings(root_dir: &Path, kernel_names: &[String]) -> Value {
    json!({
        "ServerApp": {
            "root_dir": root_dir.display().to_string(),
            "terminals_enabled": false,
            // Wins over the `.d` files that enable them (jupyter_server
            // takes the trait's entries first).
            "jpserver_extensions": {
                "jupyter_server_terminals": false,
                // Language servers are processes started for the browser.
                "jupyter_lsp": false
            },
            "allow_unauthenticated_access": false,
            "allow_root": false
        },
        "ContentsManager": { "allow_hidden": false },
        "KernelSpecManager": { "allowed_kernelspecs": kernel_names, "ensure_native_kernel": false },
        "KernelProvisionerFactory": { "default_provisioner_name": REFUSING_PROVISIONER },
        "MultiKernelManager": { "default_kernel_name": kernel_names.first() },
        // Issue 20: Unix sockets in the user's private runtime folder, not
        // TCP ports every local account can reach.
        "KernelManager": { "transport": "ipc" },
        "LabApp": {
            "extension_manager": "readonly",
            "news_url": null,
            "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate"
        }
    })
}

/// Merges `ours` into `existing` by class: our keys replace theirs. Returns
/// the `Class.key` names whose value changed.
pub fn merge(existing: &mut Map<String, Value>, ours: &Value) -> Vec<String> {
    let mut replaced = Vec::new();
    let Some(ours) = ours.as_object() else { return replaced };
    for (class, traits) in ours {
        let entry = existing.entry(class.clone()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            replaced.push(class.clone());
            *entry = Value::Object(Map::new());
        }
        let Some(section) = entry.as_object_mut() else { continue };
        for (key, value) in traits.as_object().into_iter().flatten() {
            if let Some(old) = section.insert(key.clone(), value.clone())
                && &old != value
            {
                replaced.push(format!("{class}.{key}"));
            }
        }
    }
    replaced
}

fn default_out() -> Result<PathBuf, DeployError> {
    if let Some(dir) = std::env::var_os("JUPYTER_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".jupyter")).ok_or(DeployError::NoConfigDir)
}

/// Where Jupyter looks for kernelspecs (the usual places; a server may add
/// more through JUPYTER_PATH).
fn kernelspec_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(path) = std::env::var_os("JUPYTER_PATH") {
        dirs.extend(std::env::split_paths(&path).map(|p| p.join("kernels")));
    }
    match std::env::var_os("JUPYTER_DATA_DIR").filter(|d| !d.is_empty()) {
        Some(d) => dirs.push(PathBuf::from(d).join("kernels")),
        None => {
            if let Some(home) = std::env::var_os("HOME") {
                dirs.push(PathBuf::from(home).join(".local/share/jupyter/kernels"));
            }
        }
    }
    if let Some(prefix) = std::env::var_os("VIRTUAL_ENV").or_else(|| std::env::var_os("CONDA_PREFIX")) {
        dirs.push(PathBuf::from(prefix).join("share/jupyter/kernels"));
    }
    dirs.push(PathBuf::from("/usr/local/share/jupyter/kernels"));
    dirs.push(PathBuf::from("/usr/share/jupyter/kernels"));
    dirs
}

/// A kernelspec found in the usual Jupyter folders.
#[derive(Debug, Clone)]
pub struct Installed {
    pub name: String,
    pub file: PathBuf,
    /// Its metadata names a kernel provisioner: the hardened server's
    /// refusing default does not stop it.
    pub names_provisioner: bool,
    /// Its metadata has `safe_data` (written by `safe-data install`).
    pub safe_data: bool,
}

/// The kernelspecs installed where Jupyter usually looks (the first of each
/// name, as Jupyter takes it), at most 100.
pub fn installed_kernelspecs() -> Vec<Installed> {
    let mut out: Vec<Installed> = Vec::new();
    for dir in kernelspec_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut names: Vec<String> = entries.filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok())).collect();
        names.sort();
        for name in names {
            // Jupyter finds kernelspecs by lower-cased name.
            let key = name.to_lowercase();
            let file = dir.join(&name).join("kernel.json");
            if out.len() >= 100 || out.iter().any(|i| i.name.to_lowercase() == key) || !file.is_file() {
                continue;
            }
            let spec: Option<Value> = std::fs::read_to_string(&file).ok().and_then(|t| serde_json::from_str(&t).ok());
            let names_provisioner = spec.as_ref().and_then(|s| s.pointer("/metadata/kernel_provisioner/provisioner_name")).is_some_and(Value::is_string);
            let safe_data = spec.as_ref().and_then(|s| s.pointer("/metadata/safe_data")).is_some_and(Value::is_object);
            out.push(Installed { name, file, names_provisioner, safe_data });
        }
    }
    out
}

/// Warnings about the kernelspecs as installed: an allowed one missing, or
/// not naming its provisioner (the hardened server would refuse it); another
/// one that names its provisioner (the server would start it by name, though
/// it does not list it).
pub fn kernelspec_warnings(kernel_names: &[String]) -> Vec<String> {
    let dirs = kernelspec_dirs();
    let mut warnings = Vec::new();
    for other in installed_kernelspecs() {
        if other.names_provisioner && !kernel_names.iter().any(|n| n.eq_ignore_ascii_case(&other.name)) {
            warnings.push(format!(
                "{} names its kernel provisioner, so the hardened server starts `{}` by name (POST /api/kernels) although it does not list it: remove that kernelspec, or allow it with --kernel-name",
                other.file.display(),
                other.name
            ));
        }
    }
    for name in kernel_names {
        let Some(file) = dirs.iter().map(|d| d.join(name).join("kernel.json")).find(|f| f.is_file()) else {
            warnings.push(format!(
                "no kernelspec `{name}` found in the usual Jupyter folders; install it with `safe-data install --name {name}` where the server looks"
            ));
            continue;
        };
        let spec: Option<Value> = std::fs::read_to_string(&file).ok().and_then(|t| serde_json::from_str(&t).ok());
        let named = spec.as_ref().and_then(|s| s.pointer("/metadata/kernel_provisioner/provisioner_name")).is_some_and(Value::is_string);
        if !named {
            warnings.push(format!(
                "{} does not name its kernel provisioner, so the hardened server refuses it too; add \"kernel_provisioner\": {{\"provisioner_name\": \"local-provisioner\"}} to its metadata (re-install it with a safe-data that writes it)",
                file.display()
            ));
        }
    }
    warnings
}

/// Writes the hardened configuration (see the module documentation).
pub fn run(config: &Path, out: Option<&Path>, notebooks: &Path, kernel_names: &[String]) -> Result<(), DeployError> {
    for name in kernel_names {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(DeployError::KernelName(name.clone()));
        }
    }
    let cfg = Config::load(config).map_err(|e| DeployError::Config(e.to_string()))?;
    let root = check_notebooks(notebooks, &protected_paths(&cfg))?;
    let out = match out {
        Some(dir) => dir.to_path_buf(),
        None => default_out()?,
    };
    let path = out.join(FILE_NAME);
    let mut existing = match std::fs::read_to_string(&path) {
        Ok(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(DeployError::ExistingConfig { path, reason: "not an object".into() }),
            Err(e) => return Err(DeployError::ExistingConfig { path, reason: e.to_string() }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
        Err(source) => return Err(DeployError::Write { path, source }),
    };
    let replaced = merge(&mut existing, &settings(&root, kernel_names));
    let text = serde_json::to_string_pretty(&Value::Object(existing)).unwrap_or_default() + "\n";
    std::fs::create_dir_all(&out).map_err(|source| DeployError::Write { path: out.clone(), source })?;
    // Written beside and renamed: a server starting now reads the old or the new file, whole.
    let tmp = out.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        DeployError::Write { path: path.clone(), source }
    })?;
    println!("Wrote the hardened Jupyter server configuration to {}", path.display());
    println!("  contents root: {}; kernels: {}; terminals off; hidden files not served; kernels over ipc", root.display(), kernel_names.join(", "));
    for key in replaced {
        println!("  replaced the file's previous {key}");
    }
    for warning in kernelspec_warnings(kernel_names) {
        eprintln!("warning: {warning}");
    }
    println!("Check the running server with: safe-data doctor --config {} --url http://127.0.0.1:PORT/ --token TOKEN", config.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        crate::test_dir(&format!("jupyter-{name}"))
    }

    fn protected(dir: &Path) -> Vec<Protected> {
        vec![
            Protected { what: "the source of table `t`".into(), path: dir.join("data/t.csv"), secret: true },
            Protected { what: "the state_dir".into(), path: dir.join("state"), secret: true },
        ]
    }

    #[test]
    fn notebooks_apart_from_the_data_is_accepted() {
        let dir = tmp("apart");
        std::fs::create_dir_all(dir.join("notebooks")).unwrap();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        assert_eq!(check_notebooks(&dir.join("notebooks"), &protected(&dir)).unwrap(), dir.join("notebooks").canonicalize().unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn notebooks_containing_or_inside_the_data_is_refused() {
        let dir = tmp("overlap");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::create_dir_all(dir.join("state/history")).unwrap();
        // The parent of everything contains a source (state_dir need not exist).
        let text = check_notebooks(&dir, &protected(&dir)).unwrap_err().to_string();
        assert!(text.contains("contains the source of table `t`") && text.contains("Choose a notebooks folder"), "{text}");
        let text = check_notebooks(&dir.join("state/history"), &protected(&dir)).unwrap_err().to_string();
        assert!(text.contains("is inside the state_dir"), "{text}");
        let text = check_notebooks(&dir.join("state"), &protected(&dir)).unwrap_err().to_string();
        assert!(text.contains("state is the state_dir"), "{text}");
        // A symlink to the data folder is resolved.
        std::os::unix::fs::symlink(dir.join("data"), dir.join("link")).unwrap();
        assert!(check_notebooks(&dir.join("link"), &protected(&dir)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn merge_keeps_other_settings_and_names_what_it_replaced() {
        let mut existing = serde_json::from_str::<Value>(r#"{"ServerApp": {"port": 9999, "terminals_enabled": true}, "Other": {"x": 1}}"#).unwrap();
        let map = existing.as_object_mut().unwrap();
        let replaced = merge(map, &settings(Path::new("/nb"), &["safe-data".into()]));
        assert_eq!(replaced, vec!["ServerApp.terminals_enabled".to_string()]);
        assert_eq!(map["ServerApp"]["port"], 9999);
        assert_eq!(map["ServerApp"]["terminals_enabled"], false);
        assert_eq!(map["Other"]["x"], 1);
        assert_eq!(map["KernelSpecManager"]["allowed_kernelspecs"], json!(["safe-data"]));
        assert_eq!(map["KernelManager"]["transport"], "ipc");
    }
}
