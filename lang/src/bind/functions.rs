//! The function registry: every function the dialect knows, its signature
//! and documentation (shown by inspect and completion), and how calls are
//! typed. A name not in [`FUNCTIONS`] is refused.

use super::Binder;
use super::expr::{ExprCtx, date_field_name, expect_numeric, expect_type, lit};
use crate::error::{Error, Result};
use crate::ir::{AggFunc, Expr, ExprKind, Literal, ScalarFunc};
use crate::span::Span;
use crate::types::SqlType;
use sqlparser::ast;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionKind {
    Scalar(ScalarFunc),
    Aggregate(AggFunc),
}

/// A documented function of the dialect.
#[derive(Debug, Clone, Copy)]
pub struct FunctionDoc {
    pub name: &'static str,
    pub kind: FunctionKind,
    pub signature: &'static str,
    pub doc: &'static str,
}

macro_rules! f {
    ($name:literal, $kind:expr, $sig:literal, $doc:literal) => {
        FunctionDoc { name: $name, kind: $kind, signature: $sig, doc: $doc }
    };
}

use FunctionKind::{Aggregate as A, Scalar as S};

/// Every function name the binder accepts (aliases included).
pub const FUNCTIONS: &[FunctionDoc] = &[
    f!("count", A(AggFunc::Count), "COUNT(*) | COUNT(x) | COUNT(DISTINCT x) -> BIGINT", "Number of rows, of non-null values, or of distinct values."),
    f!("sum", A(AggFunc::Sum), "SUM(x) -> same type as x", "Sum of the values; each value is first clamped to the column's bounds."),
    f!("avg", A(AggFunc::Avg), "AVG(x) -> DOUBLE", "Arithmetic mean of the (clamped) values."),
    f!("mean", A(AggFunc::Avg), "MEAN(x) -> DOUBLE", "Alias of AVG."),
    f!("min", A(AggFunc::Min), "MIN(x) -> same type as x", "Smallest value. Returns one person's value: only where the owner allows it."),
    f!("max", A(AggFunc::Max), "MAX(x) -> same type as x", "Largest value. Returns one person's value: only where the owner allows it."),
    f!("stddev", A(AggFunc::Stddev), "STDDEV(x) -> DOUBLE", "Sample standard deviation of the (clamped) values."),
    f!("stddev_samp", A(AggFunc::Stddev), "STDDEV_SAMP(x) -> DOUBLE", "Alias of STDDEV."),
    f!("variance", A(AggFunc::Variance), "VARIANCE(x) -> DOUBLE", "Sample variance of the (clamped) values."),
    f!("var_samp", A(AggFunc::Variance), "VAR_SAMP(x) -> DOUBLE", "Alias of VARIANCE."),
    f!("median", A(AggFunc::Median), "MEDIAN(x) -> DOUBLE", "Median. Returns one person's value: only where the owner allows it."),
    f!("quantile_cont", A(AggFunc::Quantile), "QUANTILE_CONT(x, q) -> DOUBLE", "Interpolated quantile q in [0, 1]. Only where the owner allows it."),
    f!(
        "percentile_cont",
        A(AggFunc::Quantile),
        "PERCENTILE_CONT(q) WITHIN GROUP (ORDER BY x) -> DOUBLE",
        "Interpolated percentile, SQL-standard form of QUANTILE_CONT."
    ),
    f!("corr", A(AggFunc::Corr), "CORR(y, x) -> DOUBLE", "Pearson correlation coefficient of two (clamped) columns."),
    f!("covar_samp", A(AggFunc::CovarSamp), "COVAR_SAMP(y, x) -> DOUBLE", "Sample covariance of two (clamped) columns."),
    f!("lower", S(ScalarFunc::Lower), "LOWER(text) -> TEXT", "Lower-case text."),
    f!("upper", S(ScalarFunc::Upper), "UPPER(text) -> TEXT", "Upper-case text."),
    f!("length", S(ScalarFunc::Length), "LENGTH(text) -> BIGINT", "Number of characters."),
    f!("char_length", S(ScalarFunc::Length), "CHAR_LENGTH(text) -> BIGINT", "Alias of LENGTH."),
    f!("substr", S(ScalarFunc::Substr), "SUBSTR(text, start [, length]) -> TEXT", "Substring; start is 1-based."),
    f!("substring", S(ScalarFunc::Substr), "SUBSTRING(text FROM start [FOR length]) -> TEXT", "Substring; start is 1-based."),
    f!("trim", S(ScalarFunc::Trim), "TRIM(text) -> TEXT", "Removes leading and trailing whitespace."),
    f!("ltrim", S(ScalarFunc::Ltrim), "LTRIM(text) -> TEXT", "Removes leading whitespace."),
    f!("rtrim", S(ScalarFunc::Rtrim), "RTRIM(text) -> TEXT", "Removes trailing whitespace."),
    f!(
        "round",
        S(ScalarFunc::Round),
        "ROUND(x [, digits]) -> DOUBLE",
        "Rounds half away from zero to `digits` decimals (default 0), as the number prints: ROUND(2.675, 2) is 2.68."
    ),
    f!("floor", S(ScalarFunc::Floor), "FLOOR(x) -> same type", "Largest integer not above x."),
    f!("ceil", S(ScalarFunc::Ceil), "CEIL(x) -> same type", "Smallest integer not below x."),
    f!("ceiling", S(ScalarFunc::Ceil), "CEILING(x) -> same type", "Alias of CEIL."),
    f!("abs", S(ScalarFunc::Abs), "ABS(x) -> same type", "Absolute value."),
    f!("sqrt", S(ScalarFunc::Sqrt), "SQRT(x) -> DOUBLE", "Square root (NULL for negative x)."),
    f!("ln", S(ScalarFunc::Ln), "LN(x) -> DOUBLE", "Natural logarithm (NULL for x <= 0)."),
    f!("exp", S(ScalarFunc::Exp), "EXP(x) -> DOUBLE", "e raised to x."),
    f!("power", S(ScalarFunc::Power), "POWER(x, y) -> DOUBLE", "x raised to y."),
    f!("pow", S(ScalarFunc::Power), "POW(x, y) -> DOUBLE", "Alias of POWER."),
    f!("coalesce", S(ScalarFunc::Coalesce), "COALESCE(a, b, ...) -> common type", "First non-null argument."),
    f!("nullif", S(ScalarFunc::Nullif), "NULLIF(a, b) -> type of a", "NULL when a = b, else a."),
    f!("year", S(ScalarFunc::Year), "YEAR(date) -> BIGINT", "Calendar year."),
    f!("month", S(ScalarFunc::Month), "MONTH(date) -> BIGINT", "Month, 1 to 12."),
    f!("day", S(ScalarFunc::Day), "DAY(date) -> BIGINT", "Day of the month."),
    f!(
        "date_trunc",
        S(ScalarFunc::DateTrunc),
        "DATE_TRUNC('year'|'quarter'|'month'|'week'|'day', date) -> same type",
        "Truncates a date to the start of its period."
    ),
    f!(
        "date_part",
        S(ScalarFunc::DatePart),
        "DATE_PART('field', date) -> BIGINT",
        "A part of a date: year, quarter, month, week, day, dow, doy, hour, minute, second."
    ),
    f!(
        "width_bucket",
        S(ScalarFunc::WidthBucket),
        "WIDTH_BUCKET(x, low, high, n) -> BIGINT",
        "Equal-width bin number of x: 1..n inside [low, high), 0 below, n+1 at or above high; exact on edges. For histograms."
    ),
];

/// Looks a function up by name (case-insensitive).
pub fn lookup(name: &str) -> Option<&'static FunctionDoc> {
    FUNCTIONS.iter().find(|f| f.name.eq_ignore_ascii_case(name))
}

impl Binder<'_> {
    pub(crate) fn function(&self, f: &ast::Function, ctx: ExprCtx<'_>, span: Span) -> Result<Expr> {
        let name = match f.name.0.as_slice() {
            [part] => part.to_string().trim_matches('"').to_string(),
            _ => return Err(Error::unsupported(format!("the function `{}`", f.name), "functions are not qualified with a schema", Some(span))),
        };
        if f.over.is_some() {
            return Err(Error::unsupported("window functions (OVER)", "aggregate with GROUP BY instead", Some(span)));
        }
        if f.filter.is_some() {
            return Err(Error::unsupported("FILTER (WHERE ...) on aggregates", "put the condition in WHERE, or GROUP BY it", Some(span)));
        }
        if f.null_treatment.is_some() || !matches!(f.parameters, ast::FunctionArguments::None) {
            return Err(Error::unsupported(format!("this form of `{name}`"), "call it as name(arguments)", Some(span)));
        }
        let Some(doc) = lookup(&name) else {
            let lower = name.to_ascii_lowercase();
            let hint = if lower.starts_with("read_") || lower.contains("scan") || lower.contains("file") {
                "queries cannot read files; query the owner's tables by name"
            } else {
                "it is not one of the dialect's functions (Tab completion lists them)"
            };
            return Err(Error::unsupported(format!("the function `{name}`"), hint, Some(span)));
        };
        let (distinct, args) = match &f.args {
            ast::FunctionArguments::List(list) => {
                if !list.clauses.is_empty() {
                    return Err(Error::unsupported(format!("clauses inside `{name}(...)`"), "call it with plain arguments", Some(span)));
                }
                let distinct = matches!(list.duplicate_treatment, Some(ast::DuplicateTreatment::Distinct));
                (distinct, list.args.as_slice())
            }
            ast::FunctionArguments::None => {
                return Err(Error::unsupported(format!("`{name}` without parentheses"), "write it as a function call", Some(span)));
            }
            ast::FunctionArguments::Subquery(_) => {
                return Err(Error::unsupported("subqueries as function arguments", "join with a subquery in FROM instead", Some(span)));
            }
        };
        let mut star = false;
        let mut exprs = Vec::new();
        for arg in args {
            match arg {
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => exprs.push(e),
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Wildcard) => star = true,
                _ => return Err(Error::unsupported("named or qualified-wildcard arguments", "pass plain expressions", Some(span))),
            }
        }
        match doc.kind {
            FunctionKind::Aggregate(func) => self.aggregate(func, &name, f, distinct, star, &exprs, ctx, span),
            FunctionKind::Scalar(func) => {
                if distinct || star || !f.within_group.is_empty() {
                    return Err(Error::invalid(format!("`{name}` is not an aggregate"), Some(span)));
                }
                // date_part's first argument is a field name, not a value.
                let mut bound = Vec::new();
                for (i, e) in exprs.iter().enumerate() {
                    if func == ScalarFunc::DatePart
                        && i == 0
                        && let ast::Expr::Value(v) = e
                        && let ast::Value::SingleQuotedString(s) = &v.value
                    {
                        bound.push(lit(Literal::Text(date_field_name(s, span)?), self.span_of(*e, span)));
                        continue;
                    }
                    bound.push(self.expr(e, ctx)?);
                }
                self.scalar_checked(func, bound, span)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn aggregate(
        &self,
        func: AggFunc,
        name: &str,
        f: &ast::Function,
        distinct: bool,
        star: bool,
        exprs: &[&ast::Expr],
        ctx: ExprCtx<'_>,
        span: Span,
    ) -> Result<Expr> {
        if let Some(clause) = ctx.no_aggregates {
            return Err(Error::invalid(format!("aggregate functions are not allowed in {clause}"), Some(span)));
        }
        if ctx.in_aggregate {
            return Err(Error::invalid("aggregate functions cannot be nested", Some(span)));
        }
        let inner = ExprCtx { in_aggregate: true, ..ctx };
        if distinct && func != AggFunc::Count {
            return Err(Error::unsupported(format!("DISTINCT inside {}", func.sql_name()), "only COUNT(DISTINCT x) is supported", Some(span)));
        }
        let arity = |n: usize| -> Result<()> {
            if exprs.len() != n || star {
                Err(Error::invalid(format!("{} takes {n} argument{}", func.sql_name(), if n == 1 { "" } else { "s" }), Some(span)))
            } else {
                Ok(())
            }
        };
        if func != AggFunc::Quantile && !f.within_group.is_empty() {
            return Err(Error::unsupported(format!("WITHIN GROUP on `{name}`"), "only PERCENTILE_CONT takes WITHIN GROUP", Some(span)));
        }
        let (func, args) = match func {
            AggFunc::Count if star && exprs.is_empty() && !distinct => (AggFunc::CountStar, vec![]),
            AggFunc::Count => {
                arity(1)?;
                (AggFunc::Count, vec![self.expr(exprs[0], inner)?])
            }
            AggFunc::Quantile if name.eq_ignore_ascii_case("percentile_cont") => {
                arity(1)?;
                let fraction = self.fraction(exprs[0], span)?;
                let [order] = f.within_group.as_slice() else {
                    return Err(Error::invalid("write PERCENTILE_CONT(q) WITHIN GROUP (ORDER BY x)", Some(span)));
                };
                let x = self.expr(&order.expr, inner)?;
                expect_numeric(&x, "PERCENTILE_CONT")?;
                (AggFunc::Quantile, vec![x, fraction])
            }
            AggFunc::Quantile => {
                arity(2)?;
                let x = self.expr(exprs[0], inner)?;
                expect_numeric(&x, "QUANTILE_CONT")?;
                (AggFunc::Quantile, vec![x, self.fraction(exprs[1], span)?])
            }
            AggFunc::Corr | AggFunc::CovarSamp => {
                arity(2)?;
                let y = self.expr(exprs[0], inner)?;
                let x = self.expr(exprs[1], inner)?;
                expect_numeric(&y, func.sql_name())?;
                expect_numeric(&x, func.sql_name())?;
                (func, vec![y, x])
            }
            AggFunc::Min | AggFunc::Max => {
                arity(1)?;
                (func, vec![self.expr(exprs[0], inner)?])
            }
            _ => {
                arity(1)?;
                let x = self.expr(exprs[0], inner)?;
                expect_numeric(&x, func.sql_name())?;
                (func, vec![x])
            }
        };
        let ty = match func {
            AggFunc::CountStar | AggFunc::Count => SqlType::Integer,
            AggFunc::Sum => match args[0].ty {
                SqlType::Integer => SqlType::Integer,
                _ => SqlType::Double,
            },
            AggFunc::Min | AggFunc::Max => args[0].ty,
            _ => SqlType::Double,
        };
        Ok(Expr { kind: ExprKind::Aggregate { func, args, distinct }, ty, span })
    }

    /// A quantile fraction: a numeric literal in [0, 1].
    fn fraction(&self, e: &ast::Expr, span: Span) -> Result<Expr> {
        let at = self.span_of(e, span);
        let value = match e {
            ast::Expr::Value(v) => match &v.value {
                ast::Value::Number(n, _) => n.parse::<f64>().ok(),
                _ => None,
            },
            _ => None,
        };
        match value {
            Some(q) if (0.0..=1.0).contains(&q) => Ok(lit(Literal::Double(q), at)),
            _ => Err(Error::invalid("the quantile must be a number literal between 0 and 1", Some(at))),
        }
    }

    /// Types a scalar call whose arguments are already bound.
    pub(crate) fn scalar_checked(&self, func: ScalarFunc, args: Vec<Expr>, span: Span) -> Result<Expr> {
        use ScalarFunc::*;
        // WIDTH_BUCKET's edges are literals, negative ones included (`-5`
        // parses as a negation of 5).
        let args = match func {
            WidthBucket => args.into_iter().map(negated_literal).collect(),
            _ => args,
        };
        let name = format!("{func:?}").to_ascii_uppercase();
        let arity = |lo: usize, hi: usize| -> Result<()> {
            if args.len() < lo || args.len() > hi {
                let n = if lo == hi { format!("{lo}") } else { format!("{lo} to {hi}") };
                Err(Error::invalid(format!("{name} takes {n} arguments"), Some(span)))
            } else {
                Ok(())
            }
        };
        let ty = match func {
            Lower | Upper | Trim | Ltrim | Rtrim => {
                arity(1, 1)?;
                expect_type(&args[0], SqlType::Text, &name)?;
                SqlType::Text
            }
            Length => {
                arity(1, 1)?;
                expect_type(&args[0], SqlType::Text, &name)?;
                SqlType::Integer
            }
            Substr => {
                arity(2, 3)?;
                expect_type(&args[0], SqlType::Text, &name)?;
                for a in &args[1..] {
                    expect_type(a, SqlType::Integer, &name)?;
                }
                SqlType::Text
            }
            Round => {
                arity(1, 2)?;
                expect_numeric(&args[0], &name)?;
                if let Some(d) = args.get(1)
                    && !matches!(d.kind, ExprKind::Literal(Literal::Integer(0..=15)))
                {
                    return Err(Error::invalid("ROUND's digits must be an integer literal from 0 to 15", Some(d.span)));
                }
                SqlType::Double
            }
            Floor | Ceil | Abs => {
                arity(1, 1)?;
                expect_numeric(&args[0], &name)?;
                args[0].ty
            }
            Sqrt | Ln | Exp => {
                arity(1, 1)?;
                expect_numeric(&args[0], &name)?;
                SqlType::Double
            }
            Power => {
                arity(2, 2)?;
                expect_numeric(&args[0], &name)?;
                expect_numeric(&args[1], &name)?;
                SqlType::Double
            }
            Coalesce => {
                arity(1, 64)?;
                let mut ty = SqlType::Null;
                for a in &args {
                    ty = ty.unify(a.ty).ok_or_else(|| Error::invalid(format!("COALESCE cannot combine {ty} and {}", a.ty), Some(a.span)))?;
                }
                ty
            }
            Nullif => {
                arity(2, 2)?;
                args[0].ty.unify(args[1].ty).ok_or_else(|| Error::invalid("NULLIF compares values of different types", Some(span)))?;
                args[0].ty
            }
            Year | Month | Day => {
                arity(1, 1)?;
                expect_temporal(&args[0], &name)?;
                SqlType::Integer
            }
            DatePart => {
                arity(2, 2)?;
                if !matches!(args[0].kind, ExprKind::Literal(Literal::Text(_))) {
                    return Err(Error::invalid("DATE_PART's first argument is a field name like 'year'", Some(args[0].span)));
                }
                expect_temporal(&args[1], &name)?;
                SqlType::Integer
            }
            DateTrunc => {
                arity(2, 2)?;
                match &args[0].kind {
                    ExprKind::Literal(Literal::Text(u)) if matches!(u.to_ascii_lowercase().as_str(), "year" | "quarter" | "month" | "week" | "day") => {}
                    _ => return Err(Error::invalid("DATE_TRUNC's unit must be 'year', 'quarter', 'month', 'week' or 'day'", Some(args[0].span))),
                }
                expect_temporal(&args[1], &name)?;
                args[1].ty
            }
            WidthBucket => {
                arity(4, 4)?;
                expect_numeric(&args[0], &name)?;
                let num = |e: &Expr| match e.kind {
                    ExprKind::Literal(Literal::Integer(i)) => Some(i as f64),
                    ExprKind::Literal(Literal::Double(x)) => Some(x),
                    _ => None,
                };
                let (lo, hi) = (num(&args[1]), num(&args[2]));
                let n = match args[3].kind {
                    ExprKind::Literal(Literal::Integer(n)) => n,
                    _ => 0,
                };
                match (lo, hi) {
                    (Some(lo), Some(hi)) if lo < hi && (1..=10_000).contains(&n) => {}
                    _ => return Err(Error::invalid("WIDTH_BUCKET needs literal low < high and a bucket count from 1 to 10000", Some(span))),
                }
                SqlType::Integer
            }
        };
        // Normalise DATE_TRUNC's unit so the IR prints canonically.
        let args = match func {
            DateTrunc => {
                let mut args = args;
                if let ExprKind::Literal(Literal::Text(u)) = &mut args[0].kind {
                    *u = u.to_ascii_lowercase();
                }
                args
            }
            _ => args,
        };
        Ok(Expr { kind: ExprKind::Scalar { func, args }, ty, span })
    }
}

/// `-(literal number)` as one literal; any other expression as it is.
fn negated_literal(e: Expr) -> Expr {
    let ExprKind::Unary { op: crate::ir::UnaryOp::Neg, expr } = &e.kind else { return e };
    let folded = match expr.kind {
        ExprKind::Literal(Literal::Integer(i)) => i.checked_neg().map(Literal::Integer),
        ExprKind::Literal(Literal::Double(x)) => Some(Literal::Double(-x)),
        _ => None,
    };
    match folded {
        Some(l) => Expr { kind: ExprKind::Literal(l), ty: e.ty, span: e.span },
        None => e,
    }
}

fn expect_temporal(e: &Expr, what: &str) -> Result<()> {
    if e.ty.is_temporal() { Ok(()) } else { Err(Error::invalid(format!("{what} expects a DATE or TIMESTAMP, but this expression is {}", e.ty), Some(e.span))) }
}
