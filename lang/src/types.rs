//! The dialect's small type system (the policy crate maps it to polars types).

use serde::Serialize;
use std::fmt;

/// The type of every expression in the IR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SqlType {
    Boolean,
    Integer,
    Double,
    Text,
    Date,
    Timestamp,
    /// The type of a bare `NULL` literal; it unifies with anything.
    Null,
}

impl SqlType {
    pub fn is_numeric(self) -> bool {
        matches!(self, SqlType::Integer | SqlType::Double | SqlType::Null)
    }

    pub fn is_temporal(self) -> bool {
        matches!(self, SqlType::Date | SqlType::Timestamp | SqlType::Null)
    }

    /// The common type two operands are compared or combined in, if any.
    pub fn unify(self, other: SqlType) -> Option<SqlType> {
        use SqlType::*;
        match (self, other) {
            (a, b) if a == b => Some(a),
            (Null, b) => Some(b),
            (a, Null) => Some(a),
            (Integer, Double) | (Double, Integer) => Some(Double),
            (Date, Timestamp) | (Timestamp, Date) => Some(Timestamp),
            // String literals compare with dates: `admitted >= '2021-01-01'`.
            (Date, Text) | (Text, Date) => Some(Date),
            (Timestamp, Text) | (Text, Timestamp) => Some(Timestamp),
            _ => None,
        }
    }

    /// Parses a type name written in `CAST(x AS <name>)`.
    pub fn from_sql_name(name: &str) -> Option<SqlType> {
        let lower = name.to_ascii_lowercase();
        let base = lower.split('(').next().unwrap_or("").trim();
        Some(match base {
            "bool" | "boolean" => SqlType::Boolean,
            "int" | "integer" | "bigint" | "smallint" | "tinyint" | "int2" | "int4" | "int8" | "int64" => SqlType::Integer,
            "double" | "double precision" | "float" | "float4" | "float8" | "real" | "numeric" | "decimal" => SqlType::Double,
            "text" | "varchar" | "string" | "char" | "character varying" | "character" => SqlType::Text,
            "date" => SqlType::Date,
            "timestamp" | "datetime" | "timestamp without time zone" => SqlType::Timestamp,
            _ => return None,
        })
    }
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SqlType::Boolean => "BOOLEAN",
            SqlType::Integer => "BIGINT",
            SqlType::Double => "DOUBLE",
            SqlType::Text => "TEXT",
            SqlType::Date => "DATE",
            SqlType::Timestamp => "TIMESTAMP",
            SqlType::Null => "NULL",
        })
    }
}
