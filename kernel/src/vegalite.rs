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

fn column_of(r: &Released, name: &str) -> Option<usize> {
    r.columns().iter().position(|c| c.name == name)
}

/// The spec for a released result that carries a chart.
pub fn spec(r: &Released, chart: &Chart) -> Json {
    let values = crate::render::records(r);
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
            encoding.insert("x".into(), x);
            if let Some(x2) = &chart.x2 {
                encoding.insert("x2".into(), json!({"field": field(&x2.field)}));
            }
            json!({"type": "bar", "tooltip": true})
        }
    };
    if let (Some(title), Some(x)) = (&chart.x_title, encoding.get_mut("x")) {
        x["title"] = json!(title);
    }
    // Labels read horizontally unless they are many or long.
    let categories = r.rows().len();
    let longest = r.rows().iter().filter_map(|row| column_of(r, &chart.x.field).and_then(|i| row.get(i))).map(|v| v.to_text().chars().count()).max().unwrap_or(0);
    if let Some(x) = encoding.get_mut("x") {
        let discrete = x["type"] == "nominal" || x["type"] == "ordinal";
        if discrete {
            x["axis"] = json!({"labelAngle": if longest * categories.min(40) <= 90 { 0 } else { -40 }, "labelLimit": 160});
        }
    }
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
        // One width for every kind; only a bar chart with many bars grows by step.
        "width": if chart.kind == ChartKind::Bar && categories > 30 { json!({"step": 16}) } else { json!(480) },
        "height": 260,
        // The notebook's own background, in light and dark themes alike.
        "background": "transparent",
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
