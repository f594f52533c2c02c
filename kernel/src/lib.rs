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
