//! The fixture catalog for this crate's unit tests. Opening sources is the
//! policy crate's work (polars); these tests only bind, so the schema is
//! read from the fixture CSVs' text with a small type inference.

use crate::catalog::{Catalog, SourceColumn, Table};
use crate::config::Config;
use crate::types::SqlType;

/// The type every non-empty value of a column parses as.
fn infer(values: &[&str]) -> SqlType {
    let present: Vec<&str> = values.iter().copied().filter(|v| !v.is_empty()).collect();
    if present.iter().all(|v| v.parse::<i64>().is_ok()) {
        SqlType::Integer
    } else if present.iter().all(|v| v.parse::<f64>().is_ok()) {
        SqlType::Double
    } else if present.iter().all(|v| crate::bind::parse_date(v).is_some()) {
        SqlType::Date
    } else {
        SqlType::Text
    }
}

pub(crate) fn fixture_catalog() -> Catalog {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/safe-data.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()));
    let tables = config
        .tables
        .iter()
        .map(|t| {
            let text = std::fs::read_to_string(&t.source).unwrap_or_else(|e| panic!("{}: {e}", t.source.display()));
            let mut lines = text.lines();
            let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
            let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
            let schema: Vec<SourceColumn> = header
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let values: Vec<&str> = rows.iter().map(|r| r.get(i).copied().unwrap_or("")).collect();
                    let ty = infer(&values);
                    SourceColumn { name: name.to_string(), ty: Some(ty), type_name: ty.to_string() }
                })
                .collect();
            Table::from_schema(&config, t, &schema).unwrap_or_else(|e| panic!("{}: {e}", t.name))
        })
        .collect();
    Catalog::new(config, tables)
}
