//! The CHART statement: a chart is a query plus how to draw its result.
//!
//! ```sql
//! CHART BAR (x = region, y = patients, color = sex)
//! SELECT region, sex, COUNT(*) AS patients FROM patients GROUP BY region, sex;
//!
//! CHART HISTOGRAM (bins = 22) SELECT age FROM patients WHERE died;
//! ```
//!
//! The header (`CHART <kind> [(option = value, ...)]`) is read here; the
//! query after it is parsed by sqlparser like any other, with the header
//! blanked out so source locations stay those of the cell. A chart is never
//! drawn from anything but a released result: BAR, LINE and SCATTER draw the
//! rows of their query; HISTOGRAM rewrites its one-column query into a
//! GROUP BY over equal-width bins ([`histogram_sql`]), so each bin passes the
//! same k-threshold as any group. This module does not render: the kernel
//! turns a resolved [`Chart`] and released rows into Vega-Lite.

use crate::error::{Error, Result};
use crate::ir::{ExprKind, FromItem, Query, SetExpr};
use crate::span::{LineIndex, Span};
use crate::types::SqlType;
use serde::Serialize;
use sqlparser::ast;
use sqlparser::dialect::GenericDialect;
use sqlparser::tokenizer::{Token, Tokenizer};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChartKind {
    Bar,
    Line,
    Scatter,
    Histogram,
}

impl ChartKind {
    const ALL: [(&'static str, ChartKind); 4] =
        [("bar", ChartKind::Bar), ("line", ChartKind::Line), ("scatter", ChartKind::Scatter), ("histogram", ChartKind::Histogram)];

    fn from_name(name: &str) -> Option<ChartKind> {
        Self::ALL.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, k)| *k)
    }

    /// The options this kind accepts.
    fn options(self) -> &'static [&'static str] {
        match self {
            ChartKind::Histogram => &["bins", "min", "max", "title"],
            _ => &["x", "y", "color", "title"],
        }
    }
}

impl fmt::Display for ChartKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL.iter().find(|(_, k)| k == self).map(|(n, _)| *n).unwrap_or("bar");
        f.write_str(&name.to_ascii_uppercase())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    /// A bare word: a column name of the query's result.
    Name(String),
    Number(f64),
    Text(String),
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::Name(n) => f.write_str(n),
            OptionValue::Number(x) => write!(f, "{x}"),
            OptionValue::Text(t) => write!(f, "'{}'", t.replace('\'', "''")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChartOption {
    pub key: String,
    pub value: OptionValue,
    pub span: Span,
}

/// The header of a CHART statement, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartSpec {
    pub kind: ChartKind,
    pub options: Vec<ChartOption>,
    /// The header's extent in the statement.
    pub span: Span,
}

impl ChartSpec {
    fn get(&self, key: &str) -> Option<&ChartOption> {
        self.options.iter().find(|o| o.key == key)
    }

    /// The `title` option, which every kind takes.
    fn title(&self) -> Result<Option<String>> {
        match self.get("title") {
            None => Ok(None),
            Some(ChartOption { value: OptionValue::Text(t), .. }) => Ok(Some(t.clone())),
            Some(o) => Err(Error::invalid("`title` takes a 'quoted text'", Some(o.span))),
        }
    }
}

impl fmt::Display for ChartSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CHART {}", self.kind)?;
        if !self.options.is_empty() {
            let parts: Vec<String> = self.options.iter().map(|o| format!("{} = {}", o.key, o.value)).collect();
            write!(f, " ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

/// True when the statement starts with the word CHART.
pub fn is_chart(text: &str) -> bool {
    let t = text.trim_start();
    t.get(..5).is_some_and(|head| head.eq_ignore_ascii_case("chart")) && !t[5..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
}

/// Reads the header of a CHART statement. Returns the spec and the text with
/// the header replaced by spaces (one per byte, newlines kept): it parses as
/// the bare query, and its byte offsets are the statement's. Bind the query
/// against this text (its columns differ from the original's after a
/// non-ASCII character in the header).
pub fn parse_header(text: &str) -> Result<(ChartSpec, String)> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| Error::Syntax { message: e.message.clone(), span: None })?;
    let index = LineIndex::new(text);
    let mut tokens = tokens.into_iter().filter(|t| !matches!(t.token, Token::Whitespace(_))).filter_map(|t| {
        let span = index.span(t.span)?;
        Some((t.token, span))
    });
    let mut next = || tokens.next().unwrap_or((Token::EOF, Span::new(text.len(), text.len())));
    let kinds = "BAR, LINE, SCATTER or HISTOGRAM";

    let (chart, chart_span) = next();
    if !matches!(&chart, Token::Word(w) if w.value.eq_ignore_ascii_case("chart")) {
        return Err(Error::Syntax { message: format!("expected CHART <kind>, e.g. CHART BAR; use {kinds}"), span: Some(chart_span) });
    }
    let (kind_token, kind_span) = next();
    let kind = match &kind_token {
        Token::Word(w) => ChartKind::from_name(&w.value)
            .ok_or_else(|| Error::invalid(format!("unknown chart kind `{}`: use {kinds}", w.value), Some(kind_span)))?,
        _ => return Err(Error::Syntax { message: format!("CHART needs a kind: {kinds}"), span: Some(kind_span) }),
    };
    let mut options: Vec<ChartOption> = Vec::new();
    let mut header_end = kind_span.end;
    let (mut token, mut span) = next();
    if token == Token::LParen {
        loop {
            let (key_token, key_span) = next();
            let key = match key_token {
                Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_lowercase(),
                Token::RParen if options.is_empty() => {
                    header_end = key_span.end;
                    break;
                }
                _ => return Err(Error::Syntax { message: "expected a chart option such as `x = region`".into(), span: Some(key_span) }),
            };
            if !kind.options().contains(&key.as_str()) {
                return Err(Error::invalid(
                    format!("{kind} charts have no option `{key}`; they take {}", kind.options().join(", ")),
                    Some(key_span),
                ));
            }
            if options.iter().any(|o| o.key == key) {
                return Err(Error::invalid(format!("the option `{key}` is given twice"), Some(key_span)));
            }
            let (eq, eq_span) = next();
            if eq != Token::Eq {
                return Err(Error::Syntax { message: format!("expected `=` after `{key}`"), span: Some(eq_span) });
            }
            let (value_token, value_span) = next();
            let (value, value_span) = match value_token {
                Token::Word(w) => (OptionValue::Name(w.value), value_span),
                Token::SingleQuotedString(s) => (OptionValue::Text(s), value_span),
                Token::Number(n, _) => (OptionValue::Number(parse_number(&n, value_span)?), value_span),
                Token::Minus => {
                    let (n, n_span) = next();
                    match n {
                        Token::Number(n, _) => (OptionValue::Number(-parse_number(&n, n_span)?), value_span.union(n_span)),
                        _ => return Err(Error::Syntax { message: "expected a number after `-`".into(), span: Some(n_span) }),
                    }
                }
                _ => {
                    return Err(Error::Syntax {
                        message: format!("expected a column name, a number or a 'text' for `{key}`"),
                        span: Some(value_span),
                    });
                }
            };
            options.push(ChartOption { key, value, span: key_span.union(value_span) });
            let (sep, sep_span) = next();
            match sep {
                Token::Comma => {}
                Token::RParen => {
                    header_end = sep_span.end;
                    break;
                }
                _ => return Err(Error::Syntax { message: "expected `,` or `)` in the chart options".into(), span: Some(sep_span) }),
            }
        }
        (token, span) = next();
    }
    if token == Token::EOF {
        return Err(Error::Syntax { message: format!("CHART {kind} needs a query after it, e.g. CHART {kind} SELECT ..."), span: Some(span) });
    }
    let spec = ChartSpec { kind, options, span: chart_span.union(Span::new(header_end, header_end)) };
    let mut blanked = String::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        match c {
            '\n' | '\r' => blanked.push(c),
            _ if i < header_end => blanked.extend(std::iter::repeat_n(' ', c.len_utf8())),
            _ => blanked.push(c),
        }
    }
    Ok((spec, blanked))
}

fn parse_number(text: &str, span: Span) -> Result<f64> {
    text.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| Error::invalid("expected a finite number", Some(span)))
}

/// How a released result is drawn: the kernel renders exactly this.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chart {
    pub kind: ChartKind,
    pub x: Encoding,
    /// The end of each bar (histograms: the bin's upper edge).
    pub x2: Option<Encoding>,
    pub y: Encoding,
    pub color: Option<Encoding>,
    pub title: Option<String>,
    /// The x axis's title when it is not the x column's name (a histogram's
    /// bins are of the binned column).
    pub x_title: Option<String>,
}

/// One channel of a chart: a column of the result and its type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Encoding {
    pub field: String,
    pub ty: SqlType,
}

/// Matches the options of a BAR, LINE or SCATTER chart to the columns of its
/// result. Unnamed channels default to: x the first column, y the last
/// numeric column, color a third column when there are exactly three.
pub fn resolve(spec: &ChartSpec, columns: &[(String, SqlType)]) -> Result<Chart> {
    let find = |key: &str| -> Result<Option<Encoding>> {
        let Some(option) = spec.get(key) else { return Ok(None) };
        let OptionValue::Name(name) = &option.value else {
            return Err(Error::invalid(format!("`{key}` names a column of the query's result"), Some(option.span)));
        };
        let hit = columns.iter().find(|(n, _)| n == name).or_else(|| columns.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)));
        match hit {
            Some((n, ty)) => Ok(Some(Encoding { field: n.clone(), ty: *ty })),
            None => {
                let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
                Err(Error::invalid(format!("`{name}` is not a column of the result; it has {}", names.join(", ")), Some(option.span)))
            }
        }
    };
    let title = spec.title()?;
    let enc = |(n, ty): &(String, SqlType)| Encoding { field: n.clone(), ty: *ty };
    let x = match find("x")? {
        Some(x) => x,
        None => columns.first().map(enc).ok_or_else(|| Error::invalid("the chart's query has no columns", Some(spec.span)))?,
    };
    let y = match find("y")? {
        Some(y) => y,
        None => columns
            .iter()
            .rev()
            .find(|(n, ty)| ty.is_numeric() && *n != x.field)
            .map(enc)
            .ok_or_else(|| Error::invalid("the chart needs a numeric column to plot: name it with y = <column>", Some(spec.span)))?,
    };
    if !y.ty.is_numeric() {
        return Err(Error::invalid(format!("y must be a numeric column; `{}` is {}", y.field, y.ty), spec.get("y").map(|o| o.span)));
    }
    if spec.kind == ChartKind::Scatter && !(x.ty.is_numeric() || matches!(x.ty, SqlType::Date | SqlType::Timestamp)) {
        return Err(Error::invalid(format!("a SCATTER chart needs a numeric or date x; `{}` is {}", x.field, x.ty), Some(spec.span)));
    }
    let color = match find("color")? {
        Some(c) => Some(c),
        None if columns.len() == 3 && spec.get("x").is_none() && spec.get("y").is_none() => {
            columns.iter().find(|(n, _)| *n != x.field && *n != y.field).map(enc)
        }
        None => None,
    };
    Ok(Chart { kind: spec.kind, x, x2: None, y, color, title, x_title: None })
}

/// The equal-width bins of a histogram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bins {
    pub min: f64,
    pub max: f64,
    pub count: u32,
}

/// Most bins a histogram may ask for.
pub const MAX_BINS: u32 = 1000;

/// Rewrites `SELECT <x> FROM ... [WHERE ...]` (already bound as `bound`)
/// into the query that counts rows per bin of `x`:
/// `bin_start, bin_end, count`, one row per bin, in order. Values outside
/// `[min, max]` fall into the first or last bin; NULLs make a bin of their
/// own (drawn nowhere, listed in the table). The bins come from the
/// options, else from the owner's bounds of the column: never from the data,
/// whose minimum and maximum are one person's values.
pub fn histogram_sql(spec: &ChartSpec, text: &str, query: &ast::Query, bound: &Query) -> Result<(String, Chart)> {
    let shape_error = || {
        Error::invalid(
            "HISTOGRAM takes a query of one numeric column without GROUP BY, e.g. CHART HISTOGRAM (bins = 20) SELECT age FROM patients WHERE ...",
            Some(bound.span),
        )
    };
    let ast::SetExpr::Select(select) = query.body.as_ref() else { return Err(shape_error()) };
    let SetExpr::Select(bound_select) = &bound.body else { return Err(shape_error()) };
    if query.with.is_some()
        || query.order_by.is_some()
        || query.limit_clause.is_some()
        || select.projection.len() != 1
        || select.distinct.is_some()
        || select.having.is_some()
        || !matches!(&select.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty())
        || bound_select.projection.iter().any(|p| p.expr.contains_aggregate())
        || select.from.is_empty()
    {
        return Err(shape_error());
    }
    let item = &bound_select.projection[0];
    if !item.expr.ty.is_numeric() {
        return Err(Error::invalid(format!("HISTOGRAM needs a numeric column; this one is {}", item.expr.ty), Some(item.expr.span)));
    }
    let bins = bins(spec, bound_select, &item.expr)?;
    let index = LineIndex::new(text);
    let piece = |span: sqlparser::tokenizer::Span| index.span(span).map(|s| &text[s.start..s.end]);
    let expr_sql = match &select.projection[0] {
        ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. } => piece(ast::Spanned::span(e)),
        _ => None,
    }
    .ok_or_else(shape_error)?;
    // Everything from the first table to the end: FROM's tables, WHERE. (A
    // newline follows it, so a trailing `--` comment ends there.)
    let first_table = ast::Spanned::span(&select.from[0]);
    let from_start = index.span(first_table).ok_or_else(shape_error)?.start;
    let from_sql = text[from_start..].trim_end();

    let width = (bins.max - bins.min) / bins.count as f64;
    let (lo, hi, n) = (num(bins.min), num(bins.max), bins.count);
    let bucket = format!("WIDTH_BUCKET(({expr_sql}), {lo}, {hi}, {n})");
    let sql = format!(
        "SELECT {lo} + (bin - 1) * {w} AS bin_start, {lo} + bin * {w} AS bin_end, \"count\" \
         FROM (SELECT CASE WHEN {bucket} < 1 THEN 1 WHEN {bucket} > {n} THEN {n} ELSE {bucket} END AS bin, COUNT(*) AS \"count\" \
         FROM {from_sql}\n GROUP BY 1) AS histogram ORDER BY bin_start",
        w = num(width)
    );
    let title = spec.title()?;
    let chart = Chart {
        kind: ChartKind::Histogram,
        x: Encoding { field: "bin_start".into(), ty: SqlType::Double },
        x2: Some(Encoding { field: "bin_end".into(), ty: SqlType::Double }),
        y: Encoding { field: "count".into(), ty: SqlType::Integer },
        color: None,
        title: title.or_else(|| Some(format!("Histogram of {}", item.name))),
        x_title: Some(item.name.clone()),
    };
    Ok((sql, chart))
}

/// A number as SQL text that reads back exactly.
fn num(x: f64) -> String {
    let s = format!("{x:?}");
    if s.contains('e') { format!("{x:.17}") } else { s }
}

fn bins(spec: &ChartSpec, select: &crate::ir::Select, expr: &crate::ir::Expr) -> Result<Bins> {
    let number = |key: &str| -> Result<Option<f64>> {
        match spec.get(key) {
            None => Ok(None),
            Some(ChartOption { value: OptionValue::Number(x), .. }) => Ok(Some(*x)),
            Some(o) => Err(Error::invalid(format!("`{key}` takes a number"), Some(o.span))),
        }
    };
    let count = match number("bins")? {
        None => 20,
        Some(b) if b.fract() == 0.0 && (1.0..=MAX_BINS as f64).contains(&b) => b as u32,
        Some(_) => {
            return Err(Error::invalid(format!("`bins` is a whole number from 1 to {MAX_BINS}"), spec.get("bins").map(|o| o.span)));
        }
    };
    let owner_bounds = column_bounds(select, expr);
    let (min, max) = match (number("min")?, number("max")?, owner_bounds) {
        (Some(lo), Some(hi), _) => (lo, hi),
        (lo, hi, Some((blo, bhi))) => (lo.unwrap_or(blo), hi.unwrap_or(bhi)),
        _ => {
            return Err(Error::invalid(
                "give the histogram's range with min = ... and max = ...: this expression has no bounds from the data owner, and the data's own minimum and maximum are individual values",
                Some(expr.span),
            ));
        }
    };
    if !(min < max) {
        return Err(Error::invalid("the histogram's min must be below its max", Some(spec.span)));
    }
    Ok(Bins { min, max, count })
}

/// The owner's bounds of a bare table column.
fn column_bounds(select: &crate::ir::Select, expr: &crate::ir::Expr) -> Option<(f64, f64)> {
    let ExprKind::Column(c) = &expr.kind else { return None };
    let from = select.from.as_ref()?;
    from.leaves().into_iter().find_map(|leaf| match leaf {
        FromItem::Table { slot, table, .. } if *slot == c.slot => table.columns.get(c.index).and_then(|col| col.bounds),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_read_and_blanked() {
        let text = "CHART bar (x = region, y = n, title = 'Par région')\nSELECT region, COUNT(*) AS n FROM t GROUP BY region";
        let (spec, blanked) = parse_header(text).unwrap();
        assert_eq!(spec.kind, ChartKind::Bar);
        assert_eq!(spec.to_string(), "CHART BAR (x = region, y = n, title = 'Par région')");
        assert_eq!(blanked.lines().count(), 2);
        assert!(blanked.trim_start().starts_with("SELECT region"));
        assert_eq!(blanked.len(), text.len());
    }

    #[test]
    fn header_errors_point_at_the_option() {
        for (text, fragment) in [
            ("CHART pie SELECT 1", "unknown chart kind `pie`"),
            ("CHART bar (z = a) SELECT 1", "no option `z`"),
            ("CHART bar (x = a, x = b) SELECT 1", "given twice"),
            ("CHART bar (x a) SELECT 1", "expected `=`"),
            ("CHART histogram (bins = 'ten') SELECT 1", ""),
            ("CHART bar", "needs a query"),
            ("CHART", "needs a kind"),
        ] {
            match parse_header(text) {
                Err(e) => assert!(e.to_string().contains(fragment), "{text}: {e}"),
                Ok(_) if fragment.is_empty() => {}
                Ok(_) => panic!("{text}: accepted"),
            }
        }
    }

    #[test]
    fn recognises_the_keyword_only_as_a_word() {
        assert!(is_chart("  chart bar SELECT 1"));
        assert!(!is_chart("charts"));
        assert!(!is_chart("SELE«"));
        assert!(parse_header("CHART# bar SELECT 1").is_err());
        assert!(!is_chart("SELECT 1"));
    }

    fn cols(list: &[(&str, SqlType)]) -> Vec<(String, SqlType)> {
        list.iter().map(|(n, t)| (n.to_string(), *t)).collect()
    }

    #[test]
    fn defaults_and_explicit_channels() {
        let (spec, _) = parse_header("CHART bar SELECT 1").unwrap();
        let c = resolve(&spec, &cols(&[("region", SqlType::Text), ("sex", SqlType::Text), ("n", SqlType::Integer)])).unwrap();
        assert_eq!((c.x.field.as_str(), c.y.field.as_str()), ("region", "n"));
        assert_eq!(c.color.unwrap().field, "sex");

        let (spec, _) = parse_header("CHART line (x = m, y = avg_stay) SELECT 1").unwrap();
        let c = resolve(&spec, &cols(&[("m", SqlType::Date), ("n", SqlType::Integer), ("avg_stay", SqlType::Double)])).unwrap();
        assert_eq!((c.x.field.as_str(), c.y.field.as_str()), ("m", "avg_stay"));
        assert!(c.color.is_none());

        let (spec, _) = parse_header("CHART bar (y = region) SELECT 1").unwrap();
        let err = resolve(&spec, &cols(&[("region", SqlType::Text), ("n", SqlType::Integer)])).unwrap_err();
        assert!(err.to_string().contains("y must be a numeric column"), "{err}");

        let (spec, _) = parse_header("CHART bar (x = nope) SELECT 1").unwrap();
        let err = resolve(&spec, &cols(&[("region", SqlType::Text), ("n", SqlType::Integer)])).unwrap_err();
        assert!(err.to_string().contains("it has region, n"), "{err}");
    }
}
