//! The Safe SQL dialect: the only language the Safe Data kernel evaluates.
//!
//! `parse` (sqlparser) → `bind` (typed IR with spans). This crate knows the
//! owner's configuration and the catalog's names, types and roles, and
//! nothing of data: it does not depend on polars. Lowering a query to a
//! plan, running it and releasing its result belong to the policy crate
//! (`safe-data-policy`), the only way from SQL to anything a client sees.

pub mod bind;
pub mod catalog;
pub mod chart;
pub mod config;
pub mod decimal;
pub mod error;
pub mod ir;
pub mod parse;
pub mod services;
pub mod span;
pub mod types;
pub mod value;

pub use catalog::Catalog;
pub use error::{Error, Result};

#[cfg(test)]
pub(crate) mod test_catalog;
