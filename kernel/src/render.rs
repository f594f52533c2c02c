//! Rendering of released results: aligned text, HTML, a data resource for
//! tools, CSV and JSON for scripts. Every function here takes a
//! [`Released`], the only value the policy lets out.

use safe_data_lang::types::SqlType;
use safe_data_lang::value::{Value, format_double};
use safe_data_policy::{NoticeKind, Released};
use serde_json::{Map, Value as Json, json};

const NULL_TEXT: &str = "NULL";

fn is_numeric(ty: SqlType) -> bool {
    matches!(ty, SqlType::Integer | SqlType::Double)
}

fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => NULL_TEXT.to_string(),
        other => other.to_text(),
    }
}

/// An aligned text table with a row count, and the notices after it.
pub fn text(r: &Released) -> String {
    if let Some(t) = r.text() {
        return t.trim_end().to_string();
    }
    let cols = r.columns();
    let cells: Vec<Vec<String>> = r.rows().iter().map(|row| row.iter().map(cell_text).collect()).collect();
    let widths: Vec<usize> =
        cols.iter().enumerate().map(|(i, c)| cells.iter().map(|row| row[i].chars().count()).chain([c.name.chars().count()]).max().unwrap_or(0)).collect();
    let pad = |s: &str, w: usize, right: bool| {
        let n = w.saturating_sub(s.chars().count());
        if right { format!("{}{s}", " ".repeat(n)) } else { format!("{s}{}", " ".repeat(n)) }
    };
    let mut out = String::new();
    let header: Vec<String> = cols.iter().zip(&widths).map(|(c, w)| pad(&c.name, *w, is_numeric(c.ty))).collect();
    out.push_str(header.join("  ").trim_end());
    out.push('\n');
    out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
    out.push('\n');
    for row in &cells {
        let line: Vec<String> = row.iter().zip(cols).zip(&widths).map(|((v, c), w)| pad(v, *w, is_numeric(c.ty))).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let n = r.rows().len();
    out.push_str(&format!("({n} row{})", if n == 1 { "" } else { "s" }));
    for note in notes(r) {
        out.push_str(&format!("\nNote: {note}"));
    }
    out
}

/// The policy's notices, then a chart's own notes (withheld bins, values
/// outside a histogram's bins).
fn notes(r: &Released) -> Vec<String> {
    let chart_notes = r.chart().map(|c| crate::vegalite::notes(r, c)).unwrap_or_default();
    r.notices().iter().map(|n| n.message.clone()).chain(chart_notes).collect()
}

/// HTML-escapes text.
pub fn escape(s: &str) -> String {
    html_escape(s)
}

/// The style of the progress display of long-running cells.
pub const PROGRESS_STYLE: &str = "<style>\
.sd-progress{font-size:13px;color:var(--jp-ui-font-color2,#666);padding:2px 0}\
.sd-running::before{content:'';display:inline-block;width:9px;height:9px;margin-right:8px;border-radius:50%;\
border:2px solid var(--jp-brand-color1,#1976d2);border-right-color:transparent;animation:sd-spin 0.8s linear infinite}\
@keyframes sd-spin{to{transform:rotate(360deg)}}\
</style>";

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Thousands separators for the integer part of a number's text.
fn group_thousands(text: &str) -> String {
    let (sign, rest) = text.strip_prefix('-').map(|r| ("-", r)).unwrap_or(("", text));
    let (int, frac) = rest.split_once('.').map(|(i, f)| (i, Some(f))).unwrap_or((rest, None));
    if !int.chars().all(|c| c.is_ascii_digit()) {
        return text.to_string();
    }
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

fn html_cell(v: &Value) -> String {
    match v {
        Value::Null => "<td class=\"sd-null\">NULL</td>".to_string(),
        Value::Integer(i) => format!("<td class=\"sd-num\">{}</td>", group_thousands(&i.to_string())),
        Value::Double(x) => {
            let text = if x.abs() >= 1e15 || (x.abs() < 1e-4 && *x != 0.0) { format!("{x:e}") } else { format_double(*x) };
            format!("<td class=\"sd-num\">{}</td>", group_thousands(&text))
        }
        other => format!("<td>{}</td>", html_escape(&other.to_text())),
    }
}

// Cell selectors repeat the class (table.sd-table.sd-table tr td) to outrank
// JupyterLab's `:not(.jp-RenderedMarkdown).jp-RenderedHTMLCommon td`, which
// right-aligns every cell.
const STYLE: &str = "<style>\
table.sd-table{border-collapse:collapse;font-size:13px;font-family:var(--jp-code-font-family,monospace)}\
table.sd-table.sd-table tr th,table.sd-table.sd-table tr td{padding:2px 10px;border:none;border-bottom:1px solid var(--jp-border-color2,#ddd);text-align:left}\
table.sd-table.sd-table tr th{border-bottom:2px solid var(--jp-border-color1,#999)}\
table.sd-table.sd-table tr th .sd-type{display:block;font-weight:normal;font-size:11px;color:var(--jp-ui-font-color2,#777)}\
table.sd-table.sd-table tr td.sd-num,table.sd-table.sd-table tr th.sd-num{text-align:right;font-variant-numeric:tabular-nums}\
table.sd-table.sd-table tr td.sd-null{color:var(--jp-ui-font-color3,#aaa);font-style:italic}\
.sd-count{font-size:12px;color:var(--jp-ui-font-color2,#777);margin:4px 0}\
.sd-notice{border-left:4px solid var(--jp-warn-color1,#f0ad4e);background:color-mix(in srgb,var(--jp-warn-color1,#f0ad4e) 14%,transparent);color:var(--jp-ui-font-color1,inherit);padding:4px 10px;margin:4px 0;font-size:13px;max-width:fit-content}\
</style>";

/// An HTML table (typed header, right-aligned numbers, null marks, row count) and styled notices.
pub fn html(r: &Released) -> String {
    if let Some(t) = r.text() {
        return format!("<pre>{}</pre>", html_escape(t));
    }
    let mut out = String::from(STYLE);
    out.push_str("<table class=\"sd-table\"><thead><tr>");
    for c in r.columns() {
        let class = if is_numeric(c.ty) { " class=\"sd-num\"" } else { "" };
        out.push_str(&format!("<th{class}>{}<span class=\"sd-type\">{}</span></th>", html_escape(&c.name), c.ty.to_string().to_lowercase()));
    }
    out.push_str("</tr></thead><tbody>");
    for row in r.rows() {
        out.push_str("<tr>");
        for v in row {
            out.push_str(&html_cell(v));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    let n = r.rows().len();
    out.push_str(&format!("<div class=\"sd-count\">{} row{}</div>", group_thousands(&n.to_string()), if n == 1 { "" } else { "s" }));
    out.push_str(&notices_html(r));
    out
}

pub fn notices_html(r: &Released) -> String {
    let chart_notes = r.chart().map(|c| crate::vegalite::notes(r, c)).unwrap_or_default();
    r.notices()
        .iter()
        .map(|n| {
            let label = match n.kind {
                NoticeKind::Suppressed | NoticeKind::Differencing => "Suppressed",
                NoticeKind::Truncated => "Truncated",
            };
            (label, &n.message)
        })
        .chain(chart_notes.iter().map(|n| ("Chart", n)))
        .map(|(label, message)| format!("<div class=\"sd-notice\"><b>{label}:</b> {}</div>", html_escape(message)))
        .collect()
}

fn table_schema_type(ty: SqlType) -> &'static str {
    match ty {
        SqlType::Integer => "integer",
        SqlType::Double => "number",
        SqlType::Boolean => "boolean",
        SqlType::Date => "date",
        SqlType::Timestamp => "datetime",
        SqlType::Text | SqlType::Null => "string",
    }
}

/// The rows as JSON objects keyed by column name (a data resource's
/// `data`, a chart's `values`).
pub fn records(r: &Released) -> Vec<Json> {
    r.rows().iter().map(|row| Json::Object(r.columns().iter().zip(row).map(|(c, v)| (c.name.clone(), v.to_json())).collect())).collect()
}

/// `application/vnd.dataresource+json` (Table Schema + records).
pub fn data_resource(r: &Released) -> Json {
    let fields: Vec<Json> = r.columns().iter().map(|c| json!({"name": c.name, "type": table_schema_type(c.ty)})).collect();
    json!({"schema": {"fields": fields}, "data": records(r)})
}

/// The MIME bundle of a released result.
pub fn bundle(r: &Released) -> Json {
    let mut data = Map::new();
    data.insert("text/plain".into(), Json::String(text(r)));
    data.insert("text/html".into(), Json::String(html(r)));
    if r.text().is_none() {
        data.insert("application/vnd.dataresource+json".into(), data_resource(r));
    }
    Json::Object(data)
}

/// The outputs of a released result, in display order; the first is the
/// result itself. A table is one bundle (its notices inside). A chart is the
/// chart (Vega-Lite with the aligned table as the text fallback, and no
/// HTML, which JupyterLab would prefer to the chart), then its notices as a
/// bundle of their own, under it as under a table.
pub fn outputs(r: &Released) -> Vec<Json> {
    let Some(chart) = r.chart() else { return vec![bundle(r)] };
    let mut data = Map::new();
    data.insert(crate::vegalite::MIME.into(), crate::vegalite::spec(r, chart));
    data.insert("text/plain".into(), Json::String(text(r)));
    let mut out = vec![Json::Object(data)];
    let notes = notes(r);
    if !notes.is_empty() {
        let plain: Vec<String> = notes.iter().map(|n| format!("Note: {n}")).collect();
        out.push(json!({"text/plain": plain.join("\n"), "text/html": format!("{STYLE}{}", notices_html(r))}));
    }
    out
}

/// `{"columns": [...], "rows": [[...]], "notices": [...]}` for `safe-data query --format json`.
pub fn json_document(r: &Released) -> Json {
    if let Some(t) = r.text() {
        return json!({"text": t, "notices": []});
    }
    json!({
        "columns": r.columns().iter().map(|c| json!({"name": c.name, "type": c.ty.to_string()})).collect::<Vec<_>>(),
        "rows": r.rows().iter().map(|row| row.iter().map(Value::to_json).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "notices": r
            .notices()
            .iter()
            .map(|n| json!({"kind": n.kind, "message": n.message}))
            .chain(r.chart().into_iter().flat_map(|c| crate::vegalite::notes(r, c)).map(|m| json!({"kind": "chart", "message": m})))
            .collect::<Vec<_>>(),
    })
}

/// RFC 4180 CSV.
pub fn csv(r: &Released) -> String {
    if let Some(t) = r.text() {
        return t.to_string();
    }
    let quote = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
    };
    let mut out = r.columns().iter().map(|c| quote(&c.name)).collect::<Vec<_>>().join(",");
    out.push('\n');
    for row in r.rows() {
        out.push_str(&row.iter().map(|v| quote(&v.to_text())).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(group_thousands("1234567"), "1,234,567");
        assert_eq!(group_thousands("-1234.5"), "-1,234.5");
        assert_eq!(group_thousands("123"), "123");
        assert_eq!(group_thousands("1e20"), "1e20");
    }
}
