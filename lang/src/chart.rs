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
//! rows of their query; HISTOGRAM rewrites its one-column query, on the IR,
//! into a GROUP BY over equal-width bins ([`histogram_query`]), so each bin
//! passes the same k-threshold as any group. This module does not render:
//! the kernel turns a resolved [`Chart`] and released rows into Vega-Lite.

use crate::decimal::Decimal;
use crate::error::{Error, Result};
use crate::ir::{AggFunc, BinaryOp, ColumnRef, Expr, ExprKind, FromItem, Literal, OrderKey, Query, ScalarFunc, Select, SelectItem, SetExpr, UnaryOp};
use crate::span::{LineIndex, Span};
use crate::types::SqlType;
use serde::Serialize;
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
    let tokens = Tokenizer::new(&dialect, text).tokenize_with_location().map_err(|e| Error::Syntax { message: e.message.clone(), span: None })?;
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
        Token::Word(w) => {
            ChartKind::from_name(&w.value).ok_or_else(|| Error::invalid(format!("unknown chart kind `{}`: use {kinds}", w.value), Some(kind_span)))?
        }
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
                return Err(Error::invalid(format!("{kind} charts have no option `{key}`; they take {}", kind.options().join(", ")), Some(key_span)));
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
                    return Err(Error::Syntax { message: format!("expected a column name, a number or a 'text' for `{key}`"), span: Some(value_span) });
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
    text.parse::<f64>().ok().filter(|x| x.is_finite()).ok_or_else(|| Error::invalid("expected a finite number", Some(span)))
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
    /// A histogram's bins, so the chart can show the ones missing from the
    /// released rows.
    pub bins: Option<HistogramBins>,
}

/// The bins of a histogram's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistogramBins {
    /// The column of each row's bin number: `1..=count` inside the range, 0
    /// below it, `count + 1` at or above its end, NULL for NULL values.
    pub field: String,
    pub count: u32,
    /// The `count + 1` edges, the very numbers of the rows' `bin_start` and `bin_end`.
    pub edges: Vec<f64>,
    /// The strictest k of the protected tables read; `None` for public data only.
    pub min_group_size: Option<u64>,
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
    Ok(Chart { kind: spec.kind, x, x2: None, y, color, title, x_title: None, bins: None })
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

/// The columns of a histogram's result.
const BIN: &str = "bin";
const BIN_START: &str = "bin_start";
const BIN_END: &str = "bin_end";
const COUNT: &str = "count";
/// The alias of the chart's own query inside the histogram's.
const SOURCE: &str = "histogram";

/// Rewrites a histogram's one-column query (`bound`) into the query that
/// counts its rows per bin: `bin_start, bin_end, count, bin`, one row per
/// bin, in bin order. `bin` is `WIDTH_BUCKET`'s number: bins `1..=n` cover
/// `[min, max)`; values below `min` are bin 0 (no `bin_start`), values at or
/// above `max` bin `n + 1` (no `bin_end`), and NULLs a row of their own: they
/// are counted apart, never merged into the first or last bin. The bins come
/// from the options, else from the owner's bounds of the column: never from
/// the data, whose minimum and maximum are one person's values.
///
/// The rewrite is on the IR: the chart's query, whatever its shape
/// (subqueries, CTEs, joins, unions), is the FROM of one GROUP BY
/// `WIDTH_BUCKET(x, min, max, n)`, so each bin is a group released like any
/// other. Its ORDER BY, which cannot change a count, is dropped.
pub fn histogram_query(spec: &ChartSpec, bound: &Query) -> Result<(Query, Chart)> {
    let output = bound.output();
    let [column] = output.as_slice() else {
        return Err(Error::invalid(
            "HISTOGRAM takes a query of one numeric column, e.g. CHART HISTOGRAM (bins = 20) SELECT age FROM patients WHERE ...",
            Some(bound.span),
        ));
    };
    let column_span = match &bound.body {
        SetExpr::Select(s) => s.projection.iter().find(|i| !i.sort_only).map(|i| i.expr.span).unwrap_or(bound.span),
        _ => bound.span,
    };
    if !column.ty.is_numeric() {
        return Err(Error::invalid(format!("HISTOGRAM needs a numeric column; this one is {}", column.ty), Some(column_span)));
    }
    let bins = bins(spec, bound, column_span)?;
    let span = bound.span;
    let mut source = bound.clone();
    if source.limit.is_none() && source.offset.is_none() {
        source.order_by.clear();
        if let SetExpr::Select(s) = &mut source.body {
            s.projection.retain(|i| !i.sort_only);
        }
    }
    let value = Expr { kind: ExprKind::Column(ColumnRef { slot: 0, index: 0, qualifier: SOURCE.into(), name: column.name.clone() }), ty: column.ty, span };
    let n = bins.count;
    let bucket = Expr {
        kind: ExprKind::Scalar {
            func: ScalarFunc::WidthBucket,
            args: vec![value, number(bins.min, span), number(bins.max, span), integer(i64::from(n), span)],
        },
        ty: SqlType::Integer,
        span,
    };
    let edges = EdgeFormula::new(&bins);
    let when = |test: Expr, then: Expr| Expr { kind: ExprKind::Case { whens: vec![(test, then)], otherwise: None }, ty: SqlType::Double, span };
    // Bin i runs from edge i - 1 to edge i; bin 0 has no start, bin n + 1 no end.
    let start = when(
        binary(BinaryOp::GtEq, bucket.clone(), integer(1, span), SqlType::Boolean),
        edges.expr(n, binary(BinaryOp::Sub, bucket.clone(), integer(1, span), SqlType::Integer)),
    );
    let end = when(binary(BinaryOp::LtEq, bucket.clone(), integer(i64::from(n), span), SqlType::Boolean), edges.expr(n, bucket.clone()));
    let count = Expr { kind: ExprKind::Aggregate { func: AggFunc::CountStar, args: vec![], distinct: false }, ty: SqlType::Integer, span };
    let item = |expr: Expr, name: &str| SelectItem { expr, name: name.into(), sort_only: false };
    let select = Select {
        distinct: false,
        projection: vec![item(start, BIN_START), item(end, BIN_END), item(count, COUNT), item(bucket.clone(), BIN)],
        from: Some(FromItem::Derived { slot: 0, query: Box::new(source), alias: SOURCE.into(), cte: None, columns: vec![], span }),
        filter: None,
        group_by: vec![bucket],
        having: None,
        aggregate: true,
        span,
    };
    let query = Query {
        ctes: vec![],
        body: SetExpr::Select(Box::new(select)),
        order_by: vec![OrderKey { column: 3, descending: false, nulls_first: false }],
        limit: None,
        offset: None,
        span,
    };
    let chart = Chart {
        kind: ChartKind::Histogram,
        x: Encoding { field: BIN_START.into(), ty: SqlType::Double },
        x2: Some(Encoding { field: BIN_END.into(), ty: SqlType::Double }),
        y: Encoding { field: COUNT.into(), ty: SqlType::Integer },
        color: None,
        title: spec.title()?.or_else(|| Some(format!("Histogram of {}", column.name))),
        x_title: Some(column.name.clone()),
        bins: Some(HistogramBins { field: BIN.into(), count: n, edges: (0..=n).map(|j| edges.value(n, j)).collect(), min_group_size: strictest_k(bound) }),
    };
    Ok((query, chart))
}

/// How the query computes a bin edge from its index `j` (0 is `min`, `n`
/// is `max`), so that it prints as written: `0.6`, not `0.6000000000000001`.
enum EdgeFormula {
    /// `(a·(n - j) + b·j) / d` with `min = a / 10^s`, `max = b / 10^s` and
    /// `d = n·10^s`: integers exact in a double, so one rounding (the
    /// division) gives the double nearest to the exact edge, which prints
    /// as the exact edge whenever it has a short decimal form.
    Exact { a: i64, b: i64, d: i64 },
    /// `min + j·width`, for edges with too many digits for the above.
    Float { min: f64, width: f64 },
}

impl EdgeFormula {
    fn new(bins: &Bins) -> EdgeFormula {
        const EXACT: i64 = 1 << 53;
        let n = i64::from(bins.count);
        let exact = || -> Option<EdgeFormula> {
            let (a, sa) = Decimal::of_f64(bins.min)?.as_scaled_i64()?;
            let (b, sb) = Decimal::of_f64(bins.max)?.as_scaled_i64()?;
            let s = sa.max(sb);
            let a = a.checked_mul(10i64.checked_pow(s - sa)?)?;
            let b = b.checked_mul(10i64.checked_pow(s - sb)?)?;
            let d = n.checked_mul(10i64.checked_pow(s)?)?;
            let fits = |v: i64| v.checked_abs().and_then(|v| v.checked_mul(n)).is_some_and(|v| v <= EXACT);
            (fits(a) && fits(b) && d <= EXACT).then_some(EdgeFormula::Exact { a, b, d })
        };
        exact().unwrap_or(EdgeFormula::Float { min: bins.min, width: (bins.max - bins.min) / bins.count as f64 })
    }

    /// Edge `j`, computed as the query computes it.
    fn value(&self, n: u32, j: u32) -> f64 {
        match *self {
            EdgeFormula::Exact { a, b, d } => (a * i64::from(n - j) + b * i64::from(j)) as f64 / d as f64,
            EdgeFormula::Float { min, width } => min + f64::from(j) * width,
        }
    }

    /// Edge `j` as an expression of `j`.
    fn expr(&self, n: u32, j: Expr) -> Expr {
        let span = j.span;
        match *self {
            EdgeFormula::Exact { a, b, d } => {
                let rest = binary(BinaryOp::Sub, integer(i64::from(n), span), j.clone(), SqlType::Integer);
                let low = binary(BinaryOp::Mul, signed(integer(a, span)), rest, SqlType::Integer);
                let high = binary(BinaryOp::Mul, signed(integer(b, span)), j, SqlType::Integer);
                let numerator = match (a, b) {
                    (0, _) => high,
                    (_, 0) => low,
                    _ => binary(BinaryOp::Add, low, high, SqlType::Integer),
                };
                binary(BinaryOp::Div, numerator, integer(d, span), SqlType::Double)
            }
            EdgeFormula::Float { min, width } => {
                binary(BinaryOp::Add, signed(double(min, span)), binary(BinaryOp::Mul, j, double(width, span), SqlType::Double), SqlType::Double)
            }
        }
    }
}

fn literal(l: Literal, ty: SqlType, span: Span) -> Expr {
    Expr { kind: ExprKind::Literal(l), ty, span }
}

fn integer(v: i64, span: Span) -> Expr {
    literal(Literal::Integer(v), SqlType::Integer, span)
}

fn double(x: f64, span: Span) -> Expr {
    literal(Literal::Double(x), SqlType::Double, span)
}

/// A constant as the binder binds its printed text: `-10` is the negation
/// of the literal `10`, so a negative literal becomes one (the sign bit of a
/// double decides, `-0.0` included). The rewrite then prints as SQL that
/// binds back to the same IR. (Not for WIDTH_BUCKET's arguments: the binder
/// folds their signs into the literals.)
fn signed(e: Expr) -> Expr {
    let positive = match &e.kind {
        ExprKind::Literal(Literal::Integer(i)) if *i < 0 => i.checked_neg().map(Literal::Integer),
        ExprKind::Literal(Literal::Double(x)) if x.is_sign_negative() => Some(Literal::Double(-x)),
        _ => None,
    };
    match positive {
        Some(l) => Expr { kind: ExprKind::Unary { op: UnaryOp::Neg, expr: Box::new(literal(l, e.ty, e.span)) }, ty: e.ty, span: e.span },
        None => e,
    }
}

/// A number literal: an integer when it is one (and exact), else a double.
fn number(x: f64, span: Span) -> Expr {
    if x.fract() == 0.0 && x.abs() < (1u64 << 53) as f64 { integer(x as i64, span) } else { double(x, span) }
}

fn binary(op: BinaryOp, left: Expr, right: Expr, ty: SqlType) -> Expr {
    let span = left.span;
    Expr { kind: ExprKind::Binary { op, left: Box::new(left), right: Box::new(right) }, ty, span }
}

fn bins(spec: &ChartSpec, query: &Query, span: Span) -> Result<Bins> {
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
    let owner_bounds = output_bounds(query, 0);
    let (min, max) = match (number("min")?, number("max")?, owner_bounds) {
        (Some(lo), Some(hi), _) => (lo, hi),
        (lo, hi, Some((blo, bhi))) => (lo.unwrap_or(blo), hi.unwrap_or(bhi)),
        _ => {
            return Err(Error::invalid(
                "give the histogram's range with min = ... and max = ...: this expression has no bounds from the data owner, and the data's own minimum and maximum are individual values",
                Some(span),
            ));
        }
    };
    // NaN edges compare as not below: refused too.
    if min.partial_cmp(&max) != Some(std::cmp::Ordering::Less) {
        return Err(Error::invalid("the histogram's min must be below its max", Some(spec.span)));
    }
    Ok(Bins { min, max, count })
}

/// The owner's bounds of output column `index` of `query`, when it is a bare
/// table column, through subqueries, CTEs and unions whose sides agree.
fn output_bounds(query: &Query, index: usize) -> Option<(f64, f64)> {
    set_bounds(&query.body, index)
}

fn set_bounds(body: &SetExpr, index: usize) -> Option<(f64, f64)> {
    match body {
        SetExpr::Query(q) => output_bounds(q, index),
        SetExpr::Union { left, right, .. } => {
            let l = set_bounds(left, index)?;
            (set_bounds(right, index)? == l).then_some(l)
        }
        SetExpr::Select(s) => {
            let item = s.projection.iter().filter(|i| !i.sort_only).nth(index)?;
            let ExprKind::Column(c) = &item.expr.kind else { return None };
            s.from.as_ref()?.leaves().into_iter().find_map(|leaf| match leaf {
                FromItem::Table { slot, table, .. } if *slot == c.slot => table.columns.get(c.index).and_then(|col| col.bounds),
                FromItem::Derived { slot, query, .. } if *slot == c.slot => output_bounds(query, c.index),
                _ => None,
            })
        }
    }
}

/// The strictest k of the protected tables a query reads (`None`: public
/// tables only).
fn strictest_k(query: &Query) -> Option<u64> {
    query.tables().into_iter().filter(|t| !t.public).map(|t| t.min_group_size).max()
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
