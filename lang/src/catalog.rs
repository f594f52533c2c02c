//! The catalog: the owner's tables as the binder sees them (names, types,
//! roles), checked against their sources' schemas. No data and no polars:
//! the policy crate reads the schemas and opens the sources.
//!
//! A [`Table`] exposes only its *visible* columns (identifiers, dimensions,
//! measures). Hidden columns — listed as hidden or not listed at all — are
//! not in [`Table::columns`], so the binder cannot resolve them and no plan
//! can ever contain them; only the privacy unit column is read internally,
//! for counting people.

use crate::config::{Config, Role, TableConfig};
use crate::error::Result;
use crate::ir::AggFunc;
use crate::types::SqlType;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A column a query may reference.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: SqlType,
    pub role: Role,
    pub bounds: Option<(f64, f64)>,
    /// Aggregates allowed beyond the role's defaults.
    pub aggregates: Vec<AggFunc>,
    pub description: Option<String>,
}

#[derive(Debug)]
pub struct Table {
    pub name: String,
    pub description: Option<String>,
    /// A reference table without restrictions.
    pub public: bool,
    pub min_group_size: u64,
    /// The column that identifies a person (may itself be hidden).
    pub privacy_unit: Option<String>,
    pub join_keys: Vec<String>,
    /// Visible columns only, in source order.
    pub columns: Vec<Column>,
    /// The owner's source file.
    source: PathBuf,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<(usize, &Column)> {
        self.columns.iter().enumerate().find(|(_, c)| c.name.eq_ignore_ascii_case(name))
    }

    pub fn source_path(&self) -> &Path {
        &self.source
    }

    /// Checks the owner's table against its source's schema and keeps the
    /// visible columns. `schema` is the source's columns in order; a `None`
    /// type is one the dialect cannot expose (its text is for the message).
    pub fn from_schema(config: &Config, t: &TableConfig, schema: &[SourceColumn]) -> Result<Table> {
        let names: Vec<&str> = schema.iter().map(|c| c.name.as_str()).collect();
        let known = |col: &str| names.contains(&col);
        let list = names.join(", ");
        for (col, c) in &t.columns {
            if !known(col) {
                return Err(config.error_at(c.line, format!("table `{}` has no column `{col}`; its source has: {list}", t.name)));
            }
        }
        if let Some(unit) = &t.privacy_unit
            && !known(unit)
        {
            return Err(config.error_at(t.line, format!("table `{}`: privacy_unit `{unit}` is not a column; its source has: {list}", t.name)));
        }
        for key in &t.join_keys {
            if !known(key) {
                return Err(config.error_at(t.line, format!("table `{}`: join key `{key}` is not a column; its source has: {list}", t.name)));
            }
            let role = t.columns.get(key).map(|c| c.role);
            if !t.public && !matches!(role, Some(Role::Identifier | Role::Dimension)) {
                return Err(config.error_at(
                    t.line,
                    format!(
                        "table `{}`: join key `{key}` must be listed as an identifier or dimension column, e.g. {key} = {{ role = \"identifier\" }}",
                        t.name
                    ),
                ));
            }
        }
        let mut columns = Vec::new();
        for source_column in schema {
            let name = source_column.name.as_str();
            let listed = t.columns.get(name);
            // Fail closed: unlisted columns of protected tables are hidden.
            let role = match listed {
                Some(c) => c.role,
                None if t.public => Role::Dimension,
                None => Role::Hidden,
            };
            if role == Role::Hidden {
                continue;
            }
            let Some(ty) = source_column.ty else {
                if listed.is_some() {
                    return Err(config.error_at(
                        listed.map(|c| c.line).unwrap_or(t.line),
                        format!("table `{}`: column `{name}` has type {}, which Safe Data cannot expose; mark it hidden", t.name, source_column.type_name),
                    ));
                }
                continue;
            };
            if let Some(c) = listed
                && c.bounds.is_some()
                && !ty.is_numeric()
            {
                return Err(config.error_at(c.line, format!("table `{}`: column `{name}` is {ty}; bounds only apply to numeric columns", t.name)));
            }
            columns.push(Column {
                name: name.to_string(),
                ty,
                role,
                bounds: listed.and_then(|c| c.bounds),
                aggregates: listed.map(|c| c.aggregates.clone()).unwrap_or_default(),
                description: listed.and_then(|c| c.description.clone()),
            });
        }
        Ok(Table {
            name: t.name.clone(),
            description: t.description.clone(),
            public: t.public,
            min_group_size: t.min_group_size,
            privacy_unit: t.privacy_unit.clone(),
            join_keys: t.join_keys.clone(),
            columns,
            source: t.source.clone(),
        })
    }
}

/// One column of a source's schema, as the policy crate read it.
#[derive(Debug, Clone)]
pub struct SourceColumn {
    pub name: String,
    /// `None`: a type the dialect does not expose.
    pub ty: Option<SqlType>,
    /// The source's own name for the type, for error messages.
    pub type_name: String,
}

/// The owner's configuration with every table checked against its source.
#[derive(Debug)]
pub struct Catalog {
    pub config: Config,
    tables: Vec<Arc<Table>>,
}

impl Catalog {
    /// The tables of `config`, in its order (see [`Table::from_schema`]).
    pub fn new(config: Config, tables: Vec<Table>) -> Catalog {
        Catalog { config, tables: tables.into_iter().map(Arc::new).collect() }
    }

    pub fn tables(&self) -> &[Arc<Table>] {
        &self.tables
    }

    pub fn table(&self, name: &str) -> Option<&Arc<Table>> {
        self.tables.iter().find(|t| t.name.eq_ignore_ascii_case(name))
    }
}
