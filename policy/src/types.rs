//! The dialect's types as polars types.

use polars::prelude::DataType;
use safe_data_lang::types::SqlType;

/// The polars type values of a SQL type are computed in.
pub(crate) trait ToPolars {
    fn to_polars(self) -> DataType;
}

impl ToPolars for SqlType {
    fn to_polars(self) -> DataType {
        match self {
            SqlType::Boolean => DataType::Boolean,
            SqlType::Integer => DataType::Int64,
            SqlType::Double => DataType::Float64,
            SqlType::Text => DataType::String,
            SqlType::Date => DataType::Date,
            SqlType::Timestamp => DataType::Datetime(polars::prelude::TimeUnit::Microseconds, None),
            SqlType::Null => DataType::Null,
        }
    }
}

/// Maps a source column's polars type; `None` for types the dialect does not expose.
pub(crate) fn sql_type_of(dtype: &DataType) -> Option<SqlType> {
    Some(match dtype {
        DataType::Boolean => SqlType::Boolean,
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 | DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            SqlType::Integer
        }
        DataType::Float32 | DataType::Float64 => SqlType::Double,
        DataType::String => SqlType::Text,
        DataType::Date => SqlType::Date,
        DataType::Datetime(_, _) => SqlType::Timestamp,
        DataType::Null => SqlType::Null,
        _ => return None,
    })
}
