//! The `safe-data` kernel as a library: the binary (`main.rs`) is a thin CLI
//! over these modules, and the fuzz targets (`fuzz/`) reach the wire decoder
//! through them.

pub mod demo;
pub mod deploy;
pub mod frame_guard;
pub mod history;
pub mod install;
pub mod kernel;
pub mod memory;
pub mod render;
pub mod sandbox;
pub mod service;
pub mod vegalite;
pub mod wire;

/// A fresh, empty folder for a unit test: `safe-data-<name>-<pid>` in the
/// temporary folder (removed first if a previous run left it).
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("safe-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
