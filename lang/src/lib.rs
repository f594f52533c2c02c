//! The Safe SQL dialect: the only language the Safe Data kernel evaluates.
//!
//! `parse` (sqlparser) → `bind` (typed IR with spans) → `lower` (polars plan)
//! → `engine` (collect with cancellation). The policy crate sits between
//! bind and lower, and after the engine; this crate knows nothing of it
//! except the hooks [`lower::Mode::Protected`] offers.

pub mod bind;
pub mod catalog;
pub mod chart;
pub mod config;
pub mod decimal;
pub mod engine;
pub mod error;
pub mod ir;
pub mod lower;
pub mod parse;
pub mod services;
pub mod span;
pub mod types;

pub use catalog::Catalog;
pub use error::{Error, Result};
pub use polars;

#[cfg(test)]
pub(crate) mod bind_support {
    pub use crate::bind::parse_date;
}
