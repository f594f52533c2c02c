//! Values of a released result and their text forms. No polars here: the
//! policy converts a collected frame into these.

use serde::Serialize;

/// One cell of a released result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Null,
    Boolean(bool),
    Integer(i64),
    Double(f64),
    Text(String),
    /// Days since the epoch; serialised as ISO text by renderers.
    #[serde(skip)]
    Date(i32),
    /// Microseconds since the epoch.
    #[serde(skip)]
    Timestamp(i64),
}

impl Value {
    /// Plain text for tables and CSV (`NULL` is rendered by the caller).
    pub fn to_text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Boolean(b) => b.to_string(),
            Value::Integer(i) => i.to_string(),
            Value::Double(x) => format_double(*x),
            Value::Text(s) => s.clone(),
            Value::Date(d) => format_date(*d),
            Value::Timestamp(t) => format_timestamp(*t),
        }
    }

    /// JSON for scripts and structured outputs.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Boolean(b) => (*b).into(),
            Value::Integer(i) => (*i).into(),
            Value::Double(x) => serde_json::Number::from_f64(*x).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null),
            Value::Text(s) => s.clone().into(),
            Value::Date(_) | Value::Timestamp(_) => self.to_text().into(),
        }
    }
}

/// A double as a value; NaN (a computation without a result) is NULL.
pub fn float(x: f64) -> Value {
    if x.is_nan() { Value::Null } else { Value::Double(x) }
}

/// Shortest text that reads back as the same double, without exponent for common magnitudes.
pub fn format_double(x: f64) -> String {
    // -0.0 (e.g. a rounded tiny negative) reads as 0.0.
    let x = if x == 0.0 { 0.0 } else { x };
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if x.fract() == 0.0 && x.abs() < 1e15 {
        return format!("{x:.1}");
    }
    format!("{x}")
}

/// ISO date of days since 1970-01-01 (Howard Hinnant's civil-from-days).
pub fn format_date(days: i32) -> String {
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn format_timestamp(micros: i64) -> String {
    let days = micros.div_euclid(86_400_000_000);
    let rest = micros.rem_euclid(86_400_000_000) / 1_000_000;
    format!("{} {:02}:{:02}:{:02}", format_date(days as i32), rest / 3600, rest / 60 % 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(format_date(18_628), "2021-01-01");
        assert_eq!(crate::bind::parse_date("2021-01-01"), Some(18_628));
        assert_eq!(format_date(-1), "1969-12-31");
    }
}
