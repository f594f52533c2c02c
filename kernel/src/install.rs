//! `safe-data install`: writes the kernelspec where `jupyter kernelspec list` finds it.

use std::path::PathBuf;

const LOGO_32: &[u8] = include_bytes!("../../kernelspec/logo-32x32.png");
const LOGO_64: &[u8] = include_bytes!("../../kernelspec/logo-64x64.png");
const LOGO_SVG: &[u8] = include_bytes!("../../kernelspec/logo-svg.svg");
const TEMPLATE: &str = include_str!("../../kernelspec/kernel.json.in");

/// Where the kernel finds the data.
#[derive(Debug, Clone)]
pub enum Source {
    /// The owner's configuration, opened by the kernel itself (one process).
    Config(PathBuf),
    /// The data service's socket (`safe-data kernel --service SOCKET`): the
    /// kernelspec then names no configuration and no data path.
    Service(PathBuf),
}

/// Where the kernelspec goes.
#[derive(Debug, Clone)]
pub enum Location {
    User,
    SysPrefix,
    Prefix(PathBuf),
}

fn python_prefix() -> Result<PathBuf, String> {
    if let Ok(v) = std::env::var("VIRTUAL_ENV").or_else(|_| std::env::var("CONDA_PREFIX")) {
        return Ok(PathBuf::from(v));
    }
    for python in ["python3", "python"] {
        if let Ok(out) = std::process::Command::new(python).args(["-c", "import sys; print(sys.prefix)"]).output()
            && out.status.success()
        {
            return Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    Err("--sys-prefix needs an active Python environment (VIRTUAL_ENV) or python3 on PATH; use --prefix instead".into())
}

fn kernels_dir(location: &Location) -> Result<PathBuf, String> {
    Ok(match location {
        Location::User => {
            let data = match std::env::var("JUPYTER_DATA_DIR") {
                Ok(d) => PathBuf::from(d),
                Err(_) => {
                    let home = std::env::var("HOME").map_err(|_| "HOME is not set; use --prefix".to_string())?;
                    if cfg!(target_os = "macos") {
                        PathBuf::from(home).join("Library/Jupyter")
                    } else {
                        std::env::var("XDG_DATA_HOME").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(&home).join(".local/share")).join("jupyter")
                    }
                }
            };
            data.join("kernels")
        }
        Location::SysPrefix => python_prefix()?.join("share/jupyter/kernels"),
        Location::Prefix(p) => p.join("share/jupyter/kernels"),
    })
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The kernel's flag, the path it takes (absolute), and the metadata key.
fn source_args(source: &Source) -> Result<(&'static str, PathBuf, &'static str), String> {
    Ok(match source {
        Source::Config(config) => ("--config", std::fs::canonicalize(config).map_err(|e| format!("cannot find {}: {e}", config.display()))?, "config"),
        // The socket need not exist yet (the service may start later).
        Source::Service(socket) => ("--service", std::path::absolute(socket).map_err(|e| format!("cannot resolve {}: {e}", socket.display()))?, "service"),
    })
}

/// Writes `kernel.json` and the logos; returns the kernelspec folder.
pub fn install(source: &Source, name: &str, display_name: &str, location: &Location) -> Result<PathBuf, String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("kernel name `{name}` may only contain letters, digits, '-', '_' and '.'"));
    }
    let binary = std::env::current_exe().and_then(std::fs::canonicalize).map_err(|e| format!("cannot locate the safe-data binary: {e}"))?;
    let (flag, path, key) = source_args(source)?;
    let dir = kernels_dir(location)?.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let kernel_json = TEMPLATE
        .replace("@BINARY@", &json_string(&binary.display().to_string()))
        .replace("@SOURCE_FLAG@", &json_string(flag))
        .replace("@SOURCE_KEY@", &json_string(key))
        .replace("@SOURCE@", &json_string(&path.display().to_string()))
        .replace("@DISPLAY_NAME@", &json_string(display_name))
        .replace("@VERSION@", &json_string(env!("CARGO_PKG_VERSION")));
    // Validate what we write.
    serde_json::from_str::<serde_json::Value>(&kernel_json).map_err(|e| format!("internal error: kernel.json template: {e}"))?;
    let write = |file: &str, bytes: &[u8]| std::fs::write(dir.join(file), bytes).map_err(|e| format!("cannot write {}: {e}", dir.join(file).display()));
    write("kernel.json", kernel_json.as_bytes())?;
    write("logo-32x32.png", LOGO_32)?;
    write("logo-64x64.png", LOGO_64)?;
    write("logo-svg.svg", LOGO_SVG)?;
    Ok(dir)
}
