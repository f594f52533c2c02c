//! The data service (`safe-data serve`): the owner's process, under its own
//! account, that alone opens the sources, caches, audit log and histories.
//! Kernels in service mode (`safe-data kernel --service SOCKET`) reach it
//! over a Unix socket; the user of each connection is taken from the
//! socket's peer credentials.
//!
//! - [`protocol`]: the versioned, framed, size-capped messages.
//! - [`server`]: `safe-data serve`: the socket, identities, requests.
//! - [`pool`]: the worker processes that run the statements reading data.
//! - [`worker`]: `safe-data worker`, one such process.
//! - [`client`]: the kernel's [`client::Remote`] backend.

pub mod client;
pub mod pool;
pub mod protocol;
pub mod server;
pub mod worker;
