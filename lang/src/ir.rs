//! The typed IR the binder produces: SQL-shaped (one [`Select`] block per
//! `SELECT`), with every column reference resolved to a slot of its block's
//! `FROM`, every expression typed, and every node carrying its source span.
//!
//! The IR is what the policy reads and what [`crate::lower`] compiles. It has
//! no "raw" escape hatch: anything the binder cannot express here is refused.
//! Its `Display` prints SQL that binds back to the same IR (see the round-trip
//! tests in `tests/dialect.rs`).
//!
//! # Equality
//!
//! Every IR type is `PartialEq + Eq + Hash`, *structurally*: two trees are
//! equal when they have the same shape, types and values, whatever text they
//! were bound from. Spans are neither compared nor hashed (they locate a
//! node, they are not part of it); a `DOUBLE` literal compares by its bit
//! pattern (`NaN` equals the same `NaN`, `0.0` differs from `-0.0`); a
//! catalog table compares by its name as bound. Compare IR nodes with `==`,
//! never through their printed text.
//!
//! # Traversal
//!
//! [`visit`] is the one way to walk the IR: a [`visit::Visitor`] with a
//! method per node kind, the `walk_*` functions that recurse, and helpers
//! built on them ([`Expr::walk`], [`Expr::any`], [`Expr::try_walk`],
//! [`Expr::column_refs`], [`Query::tables`]).

mod eq;
pub mod visit;

use crate::catalog::Table;
use crate::span::Span;
use crate::types::SqlType;
use std::fmt;
use std::sync::Arc;

/// A bound query: optional CTEs, a body, and the ordering and limit on it.
#[derive(Debug, Clone)]
pub struct Query {
    /// CTEs, kept for display; every reference is also inlined as a [`FromItem::Derived`].
    pub ctes: Vec<(String, Query)>,
    pub body: SetExpr,
    /// Keys refer to output columns of `body` (possibly hidden sort-only ones).
    pub order_by: Vec<OrderKey>,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum SetExpr {
    Select(Box<Select>),
    /// `left UNION [ALL] right`; columns line up by position.
    Union {
        left: Box<SetExpr>,
        right: Box<SetExpr>,
        all: bool,
        span: Span,
    },
    /// A parenthesised query with its own ORDER BY / LIMIT.
    Query(Box<Query>),
}

/// One `SELECT` block.
#[derive(Debug, Clone)]
pub struct Select {
    pub distinct: bool,
    pub projection: Vec<SelectItem>,
    pub from: Option<FromItem>,
    pub filter: Option<Expr>,
    pub group_by: Vec<Expr>,
    pub having: Option<Expr>,
    /// True when the block aggregates (GROUP BY or an aggregate in SELECT/HAVING).
    pub aggregate: bool,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SelectItem {
    pub expr: Expr,
    pub name: String,
    /// Added only so ORDER BY can sort by it; dropped after sorting.
    pub sort_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JoinKind {
    Inner,
    Left,
}

/// A relation in a `FROM` clause. Leaves have a `slot`, unique in their
/// block, that column references point to.
#[derive(Debug, Clone)]
pub enum FromItem {
    Table {
        slot: usize,
        table: Arc<Table>,
        alias: String,
        span: Span,
    },
    /// `columns` are the column aliases written where a CTE is used (`FROM t AS u(a, b)`).
    Derived {
        slot: usize,
        query: Box<Query>,
        alias: String,
        cte: Option<String>,
        columns: Vec<String>,
        span: Span,
    },
    /// An equi-join: `on` pairs a left-side and a right-side expression.
    Join {
        left: Box<FromItem>,
        right: Box<FromItem>,
        kind: JoinKind,
        on: Vec<(Expr, Expr)>,
        span: Span,
    },
}

/// A column reference resolved to the `FROM` leaf that provides it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnRef {
    pub slot: usize,
    /// Position in the leaf's visible columns.
    pub index: usize,
    pub qualifier: String,
    pub name: String,
}

/// `==` and `Hash` take a [`Literal::Double`] by its bit pattern (see
/// [the module docs](self#equality)).
#[derive(Debug, Clone)]
pub enum Literal {
    Null,
    Boolean(bool),
    Integer(i64),
    Double(f64),
    Text(String),
    /// Days since 1970-01-01.
    Date(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Not,
    Neg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    And,
    Or,
    Concat,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        use BinaryOp::*;
        match self {
            Add => "+",
            Sub => "-",
            Mul => "*",
            Div => "/",
            Mod => "%",
            Eq => "=",
            NotEq => "<>",
            Lt => "<",
            LtEq => "<=",
            Gt => ">",
            GtEq => ">=",
            And => "AND",
            Or => "OR",
            Concat => "||",
        }
    }

    pub fn is_arithmetic(self) -> bool {
        matches!(self, BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod)
    }

    pub fn is_comparison(self) -> bool {
        matches!(self, BinaryOp::Eq | BinaryOp::NotEq | BinaryOp::Lt | BinaryOp::LtEq | BinaryOp::Gt | BinaryOp::GtEq)
    }
}

/// Aggregate functions the dialect can express. The policy decides which
/// are allowed on which columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AggFunc {
    /// `COUNT(*)`
    CountStar,
    Count,
    Sum,
    Avg,
    Min,
    Max,
    Stddev,
    Variance,
    Median,
    /// `QUANTILE_CONT(x, q)` / `PERCENTILE_CONT(q) WITHIN GROUP (ORDER BY x)`; q is a literal in [0, 1].
    Quantile,
    Corr,
    CovarSamp,
}

impl AggFunc {
    /// Names accepted in the owner's `aggregates = [...]` lists.
    pub const CONFIG_NAMES: &'static [&'static str] = &["count", "sum", "avg", "stddev", "variance", "min", "max", "median", "quantile", "corr", "covar"];

    pub fn from_config_name(name: &str) -> Option<AggFunc> {
        Some(match name.to_ascii_lowercase().as_str() {
            "count" => AggFunc::Count,
            "sum" => AggFunc::Sum,
            "avg" | "mean" => AggFunc::Avg,
            "stddev" => AggFunc::Stddev,
            "variance" => AggFunc::Variance,
            "min" => AggFunc::Min,
            "max" => AggFunc::Max,
            "median" => AggFunc::Median,
            "quantile" | "percentile" => AggFunc::Quantile,
            "corr" => AggFunc::Corr,
            "covar" | "covar_samp" => AggFunc::CovarSamp,
            _ => return None,
        })
    }

    /// The name used in the owner's config and in policy messages.
    pub fn config_name(self) -> &'static str {
        match self {
            AggFunc::CountStar | AggFunc::Count => "count",
            AggFunc::Sum => "sum",
            AggFunc::Avg => "avg",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::Stddev => "stddev",
            AggFunc::Variance => "variance",
            AggFunc::Median => "median",
            AggFunc::Quantile => "quantile",
            AggFunc::Corr => "corr",
            AggFunc::CovarSamp => "covar",
        }
    }

    pub fn sql_name(self) -> &'static str {
        match self {
            AggFunc::CountStar | AggFunc::Count => "COUNT",
            AggFunc::Sum => "SUM",
            AggFunc::Avg => "AVG",
            AggFunc::Min => "MIN",
            AggFunc::Max => "MAX",
            AggFunc::Stddev => "STDDEV",
            AggFunc::Variance => "VARIANCE",
            AggFunc::Median => "MEDIAN",
            AggFunc::Quantile => "QUANTILE_CONT",
            AggFunc::Corr => "CORR",
            AggFunc::CovarSamp => "COVAR_SAMP",
        }
    }

    /// Whether the aggregate returns one person's own value (an order statistic).
    pub fn is_order_statistic(self) -> bool {
        matches!(self, AggFunc::Min | AggFunc::Max | AggFunc::Median | AggFunc::Quantile)
    }

    /// Whether the aggregate adds up values, so one outlier could dominate it.
    pub fn needs_bounds(self) -> bool {
        matches!(self, AggFunc::Sum | AggFunc::Avg | AggFunc::Stddev | AggFunc::Variance | AggFunc::Corr | AggFunc::CovarSamp)
    }
}

/// Scalar (per-row) functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScalarFunc {
    Lower,
    Upper,
    Length,
    Substr,
    Trim,
    Ltrim,
    Rtrim,
    Round,
    Floor,
    Ceil,
    Abs,
    Sqrt,
    Ln,
    Exp,
    Power,
    Coalesce,
    Nullif,
    Year,
    Month,
    Day,
    /// `date_trunc('unit', x)`; the unit is the first (literal) argument.
    DateTrunc,
    /// `date_part('field', x)` / `EXTRACT(field FROM x)`.
    DatePart,
    /// `width_bucket(x, low, high, n)`: 1-based equal-width bins, 0 below, n+1 above.
    WidthBucket,
}

#[derive(Debug, Clone)]
pub struct Expr {
    pub kind: ExprKind,
    pub ty: SqlType,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExprKind {
    Column(ColumnRef),
    Literal(Literal),
    Unary {
        op: UnaryOp,
        expr: Box<Expr>,
    },
    Binary {
        op: BinaryOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    Scalar {
        func: ScalarFunc,
        args: Vec<Expr>,
    },
    /// `args` is empty for `COUNT(*)`; the quantile's fraction is the second argument.
    Aggregate {
        func: AggFunc,
        args: Vec<Expr>,
        distinct: bool,
    },
    /// Searched CASE (a simple CASE is desugared to one).
    Case {
        whens: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    /// Never fails: values that do not convert become NULL (no data-dependent errors).
    Cast {
        expr: Box<Expr>,
        to: SqlType,
    },
    InList {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    /// The pattern is a literal (SQL `%`/`_` wildcards).
    Like {
        expr: Box<Expr>,
        pattern: String,
        negated: bool,
        case_insensitive: bool,
    },
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrderKey {
    /// Index into the body's output columns.
    pub column: usize,
    pub descending: bool,
    pub nulls_first: bool,
}

/// A column of a query's output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Field {
    pub name: String,
    pub ty: SqlType,
}

impl Expr {
    /// The direct sub-expressions, in the order they are written. To walk
    /// the whole tree, use [`Expr::walk`] or a [`visit::Visitor`].
    pub fn children(&self) -> Vec<&Expr> {
        visit::children(self)
    }

    /// Whether any column is referenced (otherwise the value is a constant).
    pub fn references_columns(&self) -> bool {
        self.any(|e| matches!(e.kind, ExprKind::Column(_)))
    }

    pub fn contains_aggregate(&self) -> bool {
        self.any(|e| matches!(e.kind, ExprKind::Aggregate { .. }))
    }

    /// Structural equality, ignoring spans: the same as `self == other`
    /// (see [the module docs](self#equality)), kept for existing callers.
    pub fn same_as(&self, other: &Expr) -> bool {
        self == other
    }
}

impl Query {
    /// The output columns (sort-only helper columns excluded).
    pub fn output(&self) -> Vec<Field> {
        self.body.output()
    }
}

impl SetExpr {
    pub fn output(&self) -> Vec<Field> {
        match self {
            SetExpr::Select(s) => s.projection.iter().filter(|i| !i.sort_only).map(|i| Field { name: i.name.clone(), ty: i.expr.ty }).collect(),
            SetExpr::Union { left, right, .. } => {
                left.output().into_iter().zip(right.output()).map(|(l, r)| Field { ty: l.ty.unify(r.ty).unwrap_or(l.ty), name: l.name }).collect()
            }
            SetExpr::Query(q) => q.output(),
        }
    }

    pub fn span(&self) -> Span {
        match self {
            SetExpr::Select(s) => s.span,
            SetExpr::Union { span, .. } => *span,
            SetExpr::Query(q) => q.span,
        }
    }
}

impl FromItem {
    pub fn span(&self) -> Span {
        match self {
            FromItem::Table { span, .. } | FromItem::Derived { span, .. } | FromItem::Join { span, .. } => *span,
        }
    }

    /// The leaves of this item (tables and derived tables), left to right.
    pub fn leaves(&self) -> Vec<&FromItem> {
        visit::leaves(self)
    }

    pub fn slot(&self) -> Option<usize> {
        match self {
            FromItem::Table { slot, .. } | FromItem::Derived { slot, .. } => Some(*slot),
            FromItem::Join { .. } => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Display: canonical SQL that binds back to the same IR.

fn quote_ident(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    let keyword = sqlparser::keywords::ALL_KEYWORDS.binary_search(&upper.as_str()).is_ok();
    if crate::config::is_identifier(name) && !keyword { name.to_string() } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Null => f.write_str("NULL"),
            Literal::Boolean(b) => f.write_str(if *b { "TRUE" } else { "FALSE" }),
            Literal::Integer(i) => write!(f, "{i}"),
            Literal::Double(x) => {
                if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e15 {
                    write!(f, "{x:.1}")
                } else {
                    write!(f, "{x:?}")
                }
            }
            Literal::Text(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Literal::Date(d) => write!(f, "DATE '{}'", crate::value::format_date(*d)),
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Column(c) => write!(f, "{}.{}", quote_ident(&c.qualifier), quote_ident(&c.name)),
            ExprKind::Literal(l) => write!(f, "{l}"),
            ExprKind::Unary { op: UnaryOp::Not, expr } => write!(f, "(NOT {expr})"),
            ExprKind::Unary { op: UnaryOp::Neg, expr } => write!(f, "(- {expr})"),
            ExprKind::Binary { op, left, right } => write!(f, "({left} {} {right})", op.symbol()),
            ExprKind::Scalar { func, args } => {
                let name = format!("{func:?}").to_ascii_uppercase();
                let name = match func {
                    ScalarFunc::DateTrunc => "DATE_TRUNC".to_string(),
                    ScalarFunc::DatePart => "DATE_PART".to_string(),
                    ScalarFunc::WidthBucket => "WIDTH_BUCKET".to_string(),
                    _ => name,
                };
                write!(f, "{name}(")?;
                write_list(f, args)?;
                f.write_str(")")
            }
            ExprKind::Aggregate { func: AggFunc::CountStar, .. } => f.write_str("COUNT(*)"),
            ExprKind::Aggregate { func, args, distinct } => {
                write!(f, "{}({}", func.sql_name(), if *distinct { "DISTINCT " } else { "" })?;
                write_list(f, args)?;
                f.write_str(")")
            }
            ExprKind::Case { whens, otherwise } => {
                f.write_str("CASE")?;
                for (c, r) in whens {
                    write!(f, " WHEN {c} THEN {r}")?;
                }
                if let Some(o) = otherwise {
                    write!(f, " ELSE {o}")?;
                }
                f.write_str(" END")
            }
            ExprKind::Cast { expr, to } => write!(f, "CAST({expr} AS {to})"),
            ExprKind::InList { expr, list, negated } => {
                write!(f, "({expr} {}IN (", if *negated { "NOT " } else { "" })?;
                write_list(f, list)?;
                f.write_str("))")
            }
            ExprKind::Between { expr, low, high, negated } => {
                write!(f, "({expr} {}BETWEEN {low} AND {high})", if *negated { "NOT " } else { "" })
            }
            ExprKind::Like { expr, pattern, negated, case_insensitive } => write!(
                f,
                "({expr} {}{} {})",
                if *negated { "NOT " } else { "" },
                if *case_insensitive { "ILIKE" } else { "LIKE" },
                Literal::Text(pattern.clone())
            ),
            ExprKind::IsNull { expr, negated } => write!(f, "({expr} IS {}NULL)", if *negated { "NOT " } else { "" }),
        }
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, items: &[Expr]) -> fmt::Result {
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{e}")?;
    }
    Ok(())
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.ctes.is_empty() {
            f.write_str("WITH ")?;
            for (i, (name, q)) in self.ctes.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{} AS ({q})", quote_ident(name))?;
            }
            f.write_str(" ")?;
        }
        write!(f, "{}", self.body)?;
        if !self.order_by.is_empty() {
            f.write_str(" ORDER BY ")?;
            for (i, k) in self.order_by.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                let sort_only = match &self.body {
                    SetExpr::Select(s) => s.projection.get(k.column).filter(|i| i.sort_only).map(|i| &i.expr),
                    _ => None,
                };
                match sort_only {
                    Some(expr) => write!(f, "{expr}")?,
                    None => write!(f, "{}", k.column + 1)?,
                }
                write!(f, " {} NULLS {}", if k.descending { "DESC" } else { "ASC" }, if k.nulls_first { "FIRST" } else { "LAST" })?;
            }
        }
        if let Some(l) = self.limit {
            write!(f, " LIMIT {l}")?;
        }
        if let Some(o) = self.offset {
            write!(f, " OFFSET {o}")?;
        }
        Ok(())
    }
}

impl fmt::Display for SetExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetExpr::Select(s) => write!(f, "{s}"),
            SetExpr::Union { left, right, all, .. } => {
                write!(f, "{left} UNION {}{right}", if *all { "ALL " } else { "" })
            }
            SetExpr::Query(q) => write!(f, "({q})"),
        }
    }
}

impl fmt::Display for Select {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SELECT ")?;
        if self.distinct {
            f.write_str("DISTINCT ")?;
        }
        for (i, item) in self.projection.iter().filter(|i| !i.sort_only).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} AS {}", item.expr, quote_ident(&item.name))?;
        }
        if let Some(from) = &self.from {
            write!(f, " FROM {from}")?;
        }
        if let Some(w) = &self.filter {
            write!(f, " WHERE {w}")?;
        }
        if !self.group_by.is_empty() {
            f.write_str(" GROUP BY ")?;
            write_list(f, &self.group_by)?;
        }
        if let Some(h) = &self.having {
            write!(f, " HAVING {h}")?;
        }
        Ok(())
    }
}

impl fmt::Display for FromItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FromItem::Table { table, alias, .. } => write!(f, "{} AS {}", quote_ident(&table.name), quote_ident(alias)),
            FromItem::Derived { alias, cte: Some(name), columns, .. } => {
                write!(f, "{} AS {}", quote_ident(name), quote_ident(alias))?;
                if !columns.is_empty() {
                    let names: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
                    write!(f, "({})", names.join(", "))?;
                }
                Ok(())
            }
            FromItem::Derived { query, alias, cte: None, .. } => write!(f, "({query}) AS {}", quote_ident(alias)),
            FromItem::Join { left, right, kind, on, .. } => {
                let join = if *kind == JoinKind::Left { "LEFT JOIN" } else { "JOIN" };
                match &**right {
                    FromItem::Join { .. } => write!(f, "{left} {join} ({right}) ON ")?,
                    _ => write!(f, "{left} {join} {right} ON ")?,
                }
                for (i, (l, r)) in on.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" AND ")?;
                    }
                    write!(f, "{l} = {r}")?;
                }
                Ok(())
            }
        }
    }
}
