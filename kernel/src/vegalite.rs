//! Charts as Vega-Lite v5 specs (`application/vnd.vegalite.v5+json`), which
//! JupyterLab renders natively. The data of a spec is the released rows and
//! nothing else: a chart cannot show more than the table would.

use safe_data_lang::chart::{Chart, ChartKind, Encoding, HistogramBins};
use safe_data_lang::ir::Field;
use safe_data_lang::types::SqlType;
use safe_data_lang::value::Value;
use safe_data_policy::{NoticeKind, Released};
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

/// A histogram's released rows sorted by what they are (see [`HistogramBins`]).
struct BinRows<'a> {
    bins: &'a HistogramBins,
    /// Rows of bins `1..=n`, drawn as bars.
    inside: Vec<usize>,
    /// Bins of `1..=n` that are not among the released rows.
    missing: Vec<u32>,
    /// The released counts of bin 0 (below the range), bin n + 1 (at or
    /// above it) and the NULL bin.
    below: Option<i64>,
    above: Option<i64>,
    null: Option<i64>,
}

fn bin_rows<'a>(r: &Released, chart: &'a Chart) -> Option<BinRows<'a>> {
    let truncated = r.notices().iter().any(|notice| notice.kind == NoticeKind::Truncated);
    sort_bins(r.columns(), r.rows(), truncated, chart)
}

/// `truncated`: the rows were cut at the owner's row limit.
fn sort_bins<'a>(columns: &[Field], rows: &[Vec<Value>], truncated: bool, chart: &'a Chart) -> Option<BinRows<'a>> {
    let bins = chart.bins.as_ref()?;
    let position = |name: &str| columns.iter().position(|c| c.name == name);
    let bin = position(&bins.field)?;
    let count = position(&chart.y.field)?;
    let released = rows;
    let n = bins.count;
    let mut rows = BinRows { bins, inside: vec![], missing: vec![], below: None, above: None, null: None };
    let mut present = vec![false; n as usize + 2];
    let count_of = |row: &[Value]| match row.get(count) {
        Some(Value::Integer(c)) => Some(*c),
        _ => None,
    };
    for (i, row) in released.iter().enumerate() {
        match row.get(bin) {
            Some(Value::Integer(b)) if (1..=i64::from(n)).contains(b) => {
                present[*b as usize] = true;
                rows.inside.push(i);
            }
            Some(Value::Integer(0)) => rows.below = count_of(row),
            Some(Value::Integer(b)) if *b == i64::from(n) + 1 => rows.above = count_of(row),
            Some(Value::Null) => rows.null = count_of(row),
            _ => {}
        }
    }
    // Rows cut at the owner's row limit are not withheld: only bins below
    // the last one shown can be said to be missing.
    let last = if truncated { present.iter().rposition(|p| *p).unwrap_or(0) as u32 } else { n };
    rows.missing = (1..=last).filter(|b| !present[*b as usize]).collect();
    Some(rows)
}

/// An edge as the options or the owner's bounds wrote it (`0.6`, `110`).
fn edge_text(x: f64) -> String {
    let x = if x == 0.0 { 0.0 } else { x };
    format!("{x}")
}

/// The notes a chart adds under itself: which bins were withheld (drawn as
/// grey bands), and what was counted but not drawn (values outside the
/// bins' range, NULLs), so nothing is merged or dropped silently.
pub fn notes(r: &Released, chart: &Chart) -> Vec<String> {
    bin_rows(r, chart).map(|rows| bin_notes(&rows)).unwrap_or_default()
}

fn bin_notes(rows: &BinRows<'_>) -> Vec<String> {
    let edges = &rows.bins.edges;
    let mut notes = Vec::new();
    if let (Some(k), false) = (rows.bins.min_group_size, rows.missing.is_empty()) {
        const LISTED: usize = 12;
        let mut listed: Vec<String> =
            rows.missing.iter().take(LISTED).map(|b| format!("[{}, {})", edge_text(edges[*b as usize - 1]), edge_text(edges[*b as usize]))).collect();
        if rows.missing.len() > LISTED {
            listed.push(format!("and {} more", rows.missing.len() - LISTED));
        }
        let m = rows.missing.len();
        notes.push(format!("{m} bin{} withheld (empty or fewer than {k} people), drawn as grey bands: {}", if m == 1 { "" } else { "s" }, listed.join(", ")));
    }
    let (lo, hi) = (edges.first().copied().unwrap_or(0.0), edges.last().copied().unwrap_or(0.0));
    let mut apart = Vec::new();
    if let Some(c) = rows.below {
        apart.push(format!("{c} below {} (bin 0)", edge_text(lo)));
    }
    if let Some(c) = rows.above {
        apart.push(format!("{c} at or above {} (bin {})", edge_text(hi), rows.bins.count + 1));
    }
    if let Some(c) = rows.null {
        apart.push(format!("{c} NULL"));
    }
    if !apart.is_empty() {
        notes.push(format!("Counted in the table but outside the bins from {} to {}: {}", edge_text(lo), edge_text(hi), apart.join(", ")));
    }
    notes
}

/// A histogram as layers: the released bins as bars and, for protected
/// data, each withheld bin as a labelled grey band, so a missing bin never
/// looks like a count of zero.
fn histogram_layers(all: &[Json], chart: &Chart, rows: &BinRows<'_>, x: Json, y: Json) -> Json {
    let bars: Vec<Json> = rows.inside.iter().filter_map(|i| all.get(*i).cloned()).collect();
    let edges = &rows.bins.edges;
    let mut layers = vec![json!({
        "data": {"values": bars},
        "mark": {"type": "bar", "tooltip": true},
        "encoding": {"x": x.clone(), "x2": {"field": field(&chart.x2.as_ref().map(|e| e.field.clone()).unwrap_or_default())}, "y": y},
    })];
    if let (Some(k), false) = (rows.bins.min_group_size, rows.missing.is_empty()) {
        let start = chart.x.field.clone();
        let end = chart.x2.as_ref().map(|e| e.field.clone()).unwrap_or_default();
        let status = format!("withheld: empty or fewer than {k} people");
        let withheld: Vec<Json> = rows
            .missing
            .iter()
            .map(|b| {
                let (a, z) = (edges[*b as usize - 1], edges[*b as usize]);
                let mut o = Map::new();
                o.insert(rows.bins.field.clone(), json!(b));
                o.insert(start.clone(), json!(a));
                o.insert(end.clone(), json!(z));
                o.insert("__mid".into(), json!(a + (z - a) / 2.0));
                o.insert("status".into(), json!(status));
                Json::Object(o)
            })
            .collect();
        let tooltip = json!([
            {"field": field(&rows.bins.field), "type": "quantitative", "title": "bin"},
            {"field": field(&start), "type": "quantitative"},
            {"field": field(&end), "type": "quantitative"},
            {"field": "status", "type": "nominal"},
        ]);
        layers.push(json!({
            "data": {"values": withheld},
            "mark": {"type": "rect", "fill": "#9e9e9e", "fillOpacity": 0.22, "stroke": "#9e9e9e", "strokeDash": [3, 3], "strokeWidth": 1},
            "encoding": {
                "x": {"field": field(&start), "type": "quantitative", "scale": x["scale"].clone()},
                "x2": {"field": field(&end)},
                "tooltip": tooltip,
            },
        }));
        // A label when the bands are wide enough to hold one.
        if rows.bins.count <= 40 {
            layers.push(json!({
                "data": {"values": withheld},
                "mark": {"type": "text", "text": "withheld", "angle": 270, "align": "left", "baseline": "middle", "fontSize": 10, "color": "#757575"},
                "encoding": {"x": {"field": "__mid", "type": "quantitative", "scale": x["scale"].clone()}, "y": {"value": 254}},
            }));
        }
    }
    Json::Array(layers)
}

/// A histogram's spec, from its rows as records.
fn histogram_spec(records: &[Json], chart: &Chart, rows: &BinRows<'_>) -> Json {
    let edges = &rows.bins.edges;
    let mut x = channel(&chart.x, "quantitative");
    x["bin"] = json!({"binned": true});
    x["title"] = json!(chart.x_title.clone().unwrap_or_else(|| chart.x.field.clone()));
    // The axis spans the bins exactly, withheld first or last ones included.
    if let (Some(lo), Some(hi)) = (edges.first(), edges.last()) {
        x["scale"] = json!({"domain": [lo, hi], "nice": false, "zero": false});
    }
    let y = channel(&chart.y, "quantitative");
    let mut spec = json!({
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "layer": histogram_layers(records, chart, rows, x, y),
        "width": 480,
        "height": 260,
        "background": "transparent",
    });
    if let Some(title) = &chart.title {
        spec["title"] = json!(title);
    }
    spec
}

/// The spec for a released result that carries a chart.
pub fn spec(r: &Released, chart: &Chart) -> Json {
    if let (ChartKind::Histogram, Some(rows)) = (chart.kind, bin_rows(r, chart)) {
        return histogram_spec(&crate::render::records(r), chart, &rows);
    }
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
    let longest =
        r.rows().iter().filter_map(|row| column_of(r, &chart.x.field).and_then(|i| row.get(i))).map(|v| v.to_text().chars().count()).max().unwrap_or(0);
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

    fn histogram(k: Option<u64>) -> Chart {
        Chart {
            kind: ChartKind::Histogram,
            x: Encoding { field: "bin_start".into(), ty: SqlType::Double },
            x2: Some(Encoding { field: "bin_end".into(), ty: SqlType::Double }),
            y: Encoding { field: "count".into(), ty: SqlType::Integer },
            color: None,
            title: None,
            x_title: Some("age".into()),
            bins: Some(HistogramBins { field: "bin".into(), count: 4, edges: vec![0.0, 0.6, 1.2, 1.8, 2.4], min_group_size: k }),
        }
    }

    fn columns() -> Vec<Field> {
        [("bin", SqlType::Integer), ("bin_start", SqlType::Double), ("bin_end", SqlType::Double), ("count", SqlType::Integer)]
            .iter()
            .map(|(n, ty)| Field { name: n.to_string(), ty: *ty })
            .collect()
    }

    /// Rows of (bin, count); edges as the query gives them.
    fn rows(bins: &[(Option<i64>, i64)]) -> Vec<Vec<Value>> {
        let edges = [0.0, 0.6, 1.2, 1.8, 2.4];
        bins.iter()
            .map(|(b, c)| {
                let start = b.filter(|b| *b >= 1).map(|b| Value::Double(edges[b as usize - 1])).unwrap_or(Value::Null);
                let end = b.filter(|b| *b <= 4).map(|b| Value::Double(edges[b as usize])).unwrap_or(Value::Null);
                vec![b.map(Value::Integer).unwrap_or(Value::Null), start, end, Value::Integer(*c)]
            })
            .collect()
    }

    fn records(columns: &[Field], rows: &[Vec<Value>]) -> Vec<Json> {
        rows.iter().map(|row| Json::Object(columns.iter().zip(row).map(|(c, v)| (c.name.clone(), v.to_json())).collect())).collect()
    }

    #[test]
    fn withheld_bins_are_drawn_and_named() {
        let chart = histogram(Some(10));
        let (cols, rows) = (columns(), rows(&[(Some(0), 12), (Some(1), 40), (Some(2), 31), (Some(4), 18), (Some(5), 3), (None, 2)]));
        let sorted = sort_bins(&cols, &rows, false, &chart).unwrap();
        assert_eq!(sorted.missing, vec![3]);
        let notes = bin_notes(&sorted);
        assert_eq!(
            notes,
            vec![
                "1 bin withheld (empty or fewer than 10 people), drawn as grey bands: [1.2, 1.8)".to_string(),
                "Counted in the table but outside the bins from 0 to 2.4: 12 below 0 (bin 0), 3 at or above 2.4 (bin 5), 2 NULL".to_string(),
            ]
        );
        let spec = histogram_spec(&records(&cols, &rows), &chart, &sorted);
        let layers = spec["layer"].as_array().unwrap();
        // The bars: bins 1, 2 and 4 only (out of range and NULL rows are not drawn).
        let bars: Vec<i64> = layers[0]["data"]["values"].as_array().unwrap().iter().map(|v| v["bin"].as_i64().unwrap()).collect();
        assert_eq!(bars, vec![1, 2, 4]);
        // The withheld bin: a band over its edges, labelled.
        let band = &layers[1]["data"]["values"][0];
        assert_eq!((band["bin"].as_i64(), band["bin_start"].as_f64(), band["bin_end"].as_f64()), (Some(3), Some(1.2), Some(1.8)));
        assert_eq!(band["status"], "withheld: empty or fewer than 10 people");
        assert_eq!(layers[1]["mark"]["type"], "rect");
        assert_eq!(layers[2]["mark"]["text"], "withheld");
        assert_eq!(layers[0]["encoding"]["x"]["scale"]["domain"], json!([0.0, 2.4]));
    }

    #[test]
    fn public_data_has_no_withheld_bins_and_cut_rows_are_not_withheld() {
        let (cols, rows) = (columns(), rows(&[(Some(1), 4), (Some(3), 1)]));
        let chart = histogram(None);
        let sorted = sort_bins(&cols, &rows, false, &chart).unwrap();
        assert!(bin_notes(&sorted).is_empty(), "an empty bin of public data is a true zero");
        assert_eq!(histogram_spec(&records(&cols, &rows), &chart, &sorted)["layer"].as_array().unwrap().len(), 1);
        // Truncated after bin 3: bin 2 is withheld, bin 4 merely not shown.
        let chart = histogram(Some(5));
        let sorted = sort_bins(&cols, &rows, true, &chart).unwrap();
        assert_eq!(sorted.missing, vec![2]);
    }

    #[test]
    fn measurement_types() {
        assert_eq!(measure(SqlType::Integer, true), "ordinal");
        assert_eq!(measure(SqlType::Double, false), "quantitative");
        assert_eq!(measure(SqlType::Date, true), "temporal");
        assert_eq!(measure(SqlType::Text, false), "nominal");
    }
}
