//! Charts as Vega-Lite v5 specs (`application/vnd.vegalite.v5+json`), which
//! JupyterLab renders natively. The data of a spec is the released rows and
//! nothing else: a chart cannot show more than the table would.

use safe_data_lang::chart::{Chart, ChartKind, Encoding};
use safe_data_lang::types::SqlType;
use safe_data_policy::Released;
use serde_json::{Map, Value as Json, json};

pub const MIME: &str = "application/vnd.vegalite.v5+json";

/// Vega-Lite reads `.` and `[` in a field name as a path; escape them.
fn field(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '.' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The measurement type of a channel: numbers are quantitative, dates
/// temporal, the rest nominal. `discrete_numbers` makes numbers ordinal (the
/// x of a bar chart: one bar per value, not a thin bar on a number line).
fn measure(ty: SqlType, discrete_numbers: bool) -> &'static str {
    match ty {
        SqlType::Integer | SqlType::Double if discrete_numbers => "ordinal",
        SqlType::Integer | SqlType::Double => "quantitative",
        SqlType::Date | SqlType::Timestamp => "temporal",
        _ => "nominal",
    }
}

fn channel(e: &Encoding, ty: &'static str) -> Json {
    let mut c = json!({"field": field(&e.field), "type": ty, "title": e.field});
    if ty == "nominal" || ty == "ordinal" {
        // Keep the query's ORDER BY instead of sorting by name.
        c["sort"] = Json::Null;
    }
    if e.ty == SqlType::Integer && ty == "quantitative" {
        c["axis"] = json!({"format": ",d"});
    }
    c
}

/// The spec for a released result that carries a chart.
pub fn spec(r: &Released, chart: &Chart) -> Json {
    let values: Vec<Json> = r
        .rows()
        .iter()
        .map(|row| {
            let mut m = Map::new();
            for (c, v) in r.columns().iter().zip(row) {
                m.insert(c.name.clone(), v.to_json());
            }
            Json::Object(m)
        })
        .collect();
    let mut encoding = Map::new();
    let mark = match chart.kind {
        ChartKind::Bar => {
            encoding.insert("x".into(), channel(&chart.x, measure(chart.x.ty, true)));
            json!({"type": "bar", "tooltip": true})
        }
        ChartKind::Line => {
            encoding.insert("x".into(), channel(&chart.x, measure(chart.x.ty, false)));
            json!({"type": "line", "point": true, "tooltip": true})
        }
        ChartKind::Scatter => {
            encoding.insert("x".into(), channel(&chart.x, measure(chart.x.ty, false)));
            json!({"type": "point", "filled": true, "tooltip": true})
        }
        ChartKind::Histogram => {
            let mut x = channel(&chart.x, "quantitative");
            x["bin"] = json!({"binned": true});
            x["title"] = json!(chart.title.as_deref().and_then(|t| t.strip_prefix("Histogram of ")).unwrap_or("value"));
            encoding.insert("x".into(), x);
            if let Some(x2) = &chart.x2 {
                encoding.insert("x2".into(), json!({"field": field(&x2.field)}));
            }
            json!({"type": "bar", "tooltip": true})
        }
    };
    encoding.insert("y".into(), channel(&chart.y, "quantitative"));
    if let Some(color) = &chart.color {
        encoding.insert("color".into(), channel(color, measure(color.ty, true)));
        if chart.kind == ChartKind::Bar {
            // Bars side by side per x, not stacked: groups are compared, not summed.
            encoding.insert("xOffset".into(), json!({"field": field(&color.field), "sort": null}));
        }
    }
    let mut spec = json!({
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": values},
        "mark": mark,
        "encoding": encoding,
        "width": if chart.kind == ChartKind::Bar { json!({"step": if chart.color.is_some() { 12 } else { 28 }}) } else { json!(480) },
        "height": 260,
    });
    if let Some(title) = &chart.title {
        spec["title"] = json!(title);
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_escaped() {
        assert_eq!(field("a.b[0]"), "a\\.b\\[0\\]");
        assert_eq!(field("plain"), "plain");
    }

    #[test]
    fn measurement_types() {
        assert_eq!(measure(SqlType::Integer, true), "ordinal");
        assert_eq!(measure(SqlType::Double, false), "quantitative");
        assert_eq!(measure(SqlType::Date, true), "temporal");
        assert_eq!(measure(SqlType::Text, false), "nominal");
    }
}
