//! Lowering of scalar expressions and aggregate calls to polars expressions.
//!
//! Every operation is total: casts are non-strict, division is in floating
//! point, and functions undefined on a value yield NULL, so no error can
//! depend on one row's data.

use crate::error::{Error, Result};
use crate::ir::{AggFunc, BinaryOp, Expr, ExprKind, Literal, ScalarFunc, UnaryOp};
use crate::types::SqlType;
use polars::prelude::{self as pl, DataType, Expr as PExpr, QuantileMethod, RoundMode, col, lit};

/// Column name of a FROM leaf's column inside a block's frame.
pub(crate) fn leaf_column(slot: usize, index: usize) -> String {
    format!("{slot}#{index}")
}

fn null_of(ty: SqlType) -> PExpr {
    let null = lit(pl::Null {});
    if ty == SqlType::Null { null } else { null.cast(ty.to_polars()) }
}

/// Lowers `e`; `resolve` may replace any sub-expression (used after
/// aggregation, where group keys and aggregates are columns).
pub(crate) fn lower(e: &Expr, resolve: &dyn Fn(&Expr) -> Option<PExpr>) -> Result<PExpr> {
    if let Some(done) = resolve(e) {
        return Ok(done);
    }
    let go = |x: &Expr| lower(x, resolve);
    Ok(match &e.kind {
        ExprKind::Column(c) => col(leaf_column(c.slot, c.index)),
        ExprKind::Literal(l) => literal(l, e.ty),
        ExprKind::Unary { op: UnaryOp::Not, expr } => typed(go(expr)?, expr.ty, SqlType::Boolean).not(),
        ExprKind::Unary { op: UnaryOp::Neg, expr } => lit(0i64).cast(e.ty.to_polars()) - go(expr)?.cast(e.ty.to_polars()),
        ExprKind::Binary { op, left, right } => binary(*op, go(left)?, left.ty, go(right)?, right.ty, e.ty),
        ExprKind::Scalar { func, args } => scalar(*func, args, e.ty, resolve)?,
        ExprKind::Aggregate { .. } => {
            return Err(Error::Engine("internal error: an aggregate outside an aggregation".into()));
        }
        ExprKind::Case { whens, otherwise } => {
            let mut iter = whens.iter();
            let (c0, r0) = iter.next().ok_or_else(|| Error::Engine("internal error: empty CASE".into()))?;
            let otherwise = match otherwise {
                Some(o) => convert(go(o)?, o.ty, e.ty),
                None => null_of(e.ty),
            };
            let cond = |c: &Expr| -> Result<PExpr> { Ok(typed(go(c)?, c.ty, SqlType::Boolean)) };
            let first = pl::when(cond(c0)?).then(convert(go(r0)?, r0.ty, e.ty));
            let rest: Vec<(PExpr, PExpr)> = iter.map(|(c, r)| Ok((cond(c)?, convert(go(r)?, r.ty, e.ty)))).collect::<Result<_>>()?;
            if rest.is_empty() {
                first.otherwise(otherwise)
            } else {
                let mut chained: Option<pl::ChainedThen> = None;
                for (c, r) in rest {
                    chained = Some(match chained {
                        None => first.clone().when(c).then(r),
                        Some(ch) => ch.when(c).then(r),
                    });
                }
                chained.map(|ch| ch.otherwise(otherwise.clone())).unwrap_or(otherwise)
            }
        }
        ExprKind::Cast { expr, to } => cast(go(expr)?, expr.ty, *to),
        ExprKind::InList { expr, list, negated } if list.len() > 8 && list.iter().all(|i| matches!(i.kind, ExprKind::Literal(_))) => {
            // A long list of constants: one hash lookup, not an OR chain.
            let common = list.iter().fold(expr.ty, |t, i| t.unify(i.ty).unwrap_or(t));
            let items = pl::concat_list(list.iter().map(|i| convert(go(i).unwrap_or_else(|_| lit(pl::Null {})), i.ty, common)).collect::<Vec<_>>())
                .map_err(|_| Error::Engine("internal error: IN list".into()))?;
            let value = convert(go(expr)?, expr.ty, common);
            let has_null = list.iter().any(|i| matches!(i.kind, ExprKind::Literal(Literal::Null)));
            // SQL: x IN (..) is NULL when x is NULL, or when nothing matched and the list holds a NULL.
            let found = value.clone().is_in(items.first(), false);
            let result = pl::when(value.is_null())
                .then(null_of(SqlType::Boolean))
                .when(found.clone().not().and(lit(has_null)))
                .then(null_of(SqlType::Boolean))
                .otherwise(found);
            if *negated { result.not() } else { result }
        }
        ExprKind::InList { expr, list, negated } => {
            let value = go(expr)?;
            let common = list.iter().fold(expr.ty, |t, i| t.unify(i.ty).unwrap_or(t));
            let mut any: Option<PExpr> = None;
            for item in list {
                let eq = convert(value.clone(), expr.ty, common).eq(convert(go(item)?, item.ty, common));
                any = Some(match any {
                    None => eq,
                    Some(a) => a.or(eq),
                });
            }
            let any = any.unwrap_or_else(|| lit(false));
            if *negated { any.not() } else { any }
        }
        ExprKind::Between { expr, low, high, negated } => {
            let common = expr.ty.unify(low.ty).and_then(|t| t.unify(high.ty)).unwrap_or(expr.ty);
            let v = convert(go(expr)?, expr.ty, common);
            let inside = v.clone().gt_eq(convert(go(low)?, low.ty, common)).and(v.lt_eq(convert(go(high)?, high.ty, common)));
            if *negated { inside.not() } else { inside }
        }
        ExprKind::Like { expr, pattern, negated, case_insensitive } => {
            let regex = like_to_regex(pattern, *case_insensitive);
            let m = typed(go(expr)?, expr.ty, SqlType::Text).str().contains(lit(regex), true);
            if *negated { m.not() } else { m }
        }
        ExprKind::IsNull { expr, negated } => {
            let v = go(expr)?;
            if *negated { v.is_not_null() } else { v.is_null() }
        }
    })
}

/// Gives an untyped NULL the type an operation expects.
pub(crate) fn typed(e: PExpr, from: SqlType, to: SqlType) -> PExpr {
    if from == SqlType::Null { e.cast(to.to_polars()) } else { e }
}

fn literal(l: &Literal, ty: SqlType) -> PExpr {
    match l {
        Literal::Null => null_of(ty),
        Literal::Boolean(b) => lit(*b),
        Literal::Integer(i) => lit(*i),
        Literal::Double(x) => lit(*x),
        Literal::Text(s) => lit(s.as_str()),
        Literal::Date(d) => lit(*d).cast(DataType::Date),
    }
}

/// Converts a value of type `from` to `to` (the SQL way, never failing),
/// e.g. to the common type it is compared in.
pub(crate) fn convert(e: PExpr, from: SqlType, to: SqlType) -> PExpr {
    if from == to { e } else if from == SqlType::Null { e.cast(to.to_polars()) } else { cast(e, from, to) }
}

fn cast(e: PExpr, from: SqlType, to: SqlType) -> PExpr {
    match (from, to) {
        // Text to number: trim first so ' 42' converts like in SQL engines.
        (SqlType::Text, SqlType::Integer | SqlType::Double) => {
            e.str().strip_chars(lit(pl::Null {})).cast(DataType::Float64).cast(to.to_polars())
        }
        (SqlType::Double, SqlType::Integer) => e.round(0, RoundMode::HalfAwayFromZero).cast(DataType::Int64),
        (SqlType::Text, SqlType::Boolean) => {
            let s = e.str().strip_chars(lit(pl::Null {})).str().to_lowercase();
            let is = |words: &[&str]| words.iter().fold(lit(false), |acc, w| acc.or(s.clone().eq(lit(*w))));
            pl::when(is(&["true", "t", "yes", "y", "1", "on"]))
                .then(lit(true))
                .when(is(&["false", "f", "no", "n", "0", "off"]))
                .then(lit(false))
                .otherwise(null_of(SqlType::Boolean))
        }
        (SqlType::Text, SqlType::Date) => e.str().to_date(date_format("%Y-%m-%d")),
        (SqlType::Text, SqlType::Timestamp) => {
            let t = e.str().strip_chars(lit(pl::Null {}));
            pl::coalesce(&[
                t.clone().str().to_datetime(Some(pl::TimeUnit::Microseconds), None, date_format("%Y-%m-%d %H:%M:%S"), lit("raise")),
                t.str().to_date(date_format("%Y-%m-%d")).cast(to.to_polars()),
            ])
        }
        _ => e.cast(to.to_polars()),
    }
}

/// Non-strict parsing with an explicit format: unparsable text becomes NULL.
fn date_format(format: &str) -> pl::StrptimeOptions {
    pl::StrptimeOptions { format: Some(format.into()), strict: false, exact: true, cache: true }
}

fn binary(op: BinaryOp, l: PExpr, lt: SqlType, r: PExpr, rt: SqlType, out: SqlType) -> PExpr {
    use BinaryOp::*;
    match op {
        Mod => {
            // SQL's remainder truncates toward zero (polars' % floors).
            let t = out.to_polars();
            let q = l.clone().cast(DataType::Float64) / r.clone().cast(DataType::Float64);
            let truncated = pl::when(q.clone().gt_eq(lit(0.0))).then(q.clone().floor()).otherwise(q.ceil());
            let rem = l.cast(DataType::Float64) - r.cast(DataType::Float64) * truncated;
            // x % 0 is NULL (the float division gives NaN there).
            pl::when(rem.clone().is_nan()).then(null_of(out)).otherwise(rem).cast(t)
        }
        Add | Sub | Mul => {
            let t = out.to_polars();
            let (l, r) = (l.cast(t.clone()), r.cast(t));
            match op {
                Add => l + r,
                Sub => l - r,
                _ => l * r,
            }
        }
        Div => l.cast(DataType::Float64) / r.cast(DataType::Float64),
        Eq | NotEq | Lt | LtEq | Gt | GtEq => {
            let common = lt.unify(rt).unwrap_or(lt);
            let (l, r) = (convert(l, lt, common), convert(r, rt, common));
            match op {
                Eq => l.eq(r),
                NotEq => l.neq(r),
                Lt => l.lt(r),
                LtEq => l.lt_eq(r),
                Gt => l.gt(r),
                _ => l.gt_eq(r),
            }
        }
        And => typed(l, lt, SqlType::Boolean).and(typed(r, rt, SqlType::Boolean)),
        Or => typed(l, lt, SqlType::Boolean).or(typed(r, rt, SqlType::Boolean)),
        Concat => pl::concat_str([l.cast(DataType::String), r.cast(DataType::String)], "", false),
    }
}

fn scalar(func: ScalarFunc, args: &[Expr], ty: SqlType, resolve: &dyn Fn(&Expr) -> Option<PExpr>) -> Result<PExpr> {
    use ScalarFunc::*;
    // Untyped NULL arguments get the type the function expects.
    let a = |i: usize| -> Result<PExpr> {
        let x = lower(&args[i], resolve)?;
        Ok(match func {
            Lower | Upper | Length | Substr | Trim | Ltrim | Rtrim if i == 0 => typed(x, args[i].ty, SqlType::Text),
            Year | Month | Day | DateTrunc | DatePart if i == args.len() - 1 => typed(x, args[i].ty, SqlType::Date),
            _ => x,
        })
    };
    let f64_of = |i: usize| -> Result<PExpr> { Ok(a(i)?.cast(DataType::Float64)) };
    let text_arg = |i: usize| match &args[i].kind {
        ExprKind::Literal(Literal::Text(s)) => s.clone(),
        _ => String::new(),
    };
    let num_lit = |i: usize| match args[i].kind {
        ExprKind::Literal(Literal::Integer(n)) => n as f64,
        ExprKind::Literal(Literal::Double(x)) => x,
        _ => 0.0,
    };
    Ok(match func {
        Lower => a(0)?.str().to_lowercase(),
        Upper => a(0)?.str().to_uppercase(),
        Length => a(0)?.str().len_chars().cast(DataType::Int64),
        Substr => {
            let s = a(0)?;
            let start = a(1)?.cast(DataType::Int64);
            let offset = (start.clone() - lit(1i64)).clip_min(lit(0i64));
            let length = match args.get(2) {
                // SQL counts the length from `start` even when start < 1.
                Some(_) => (a(2)? .cast(DataType::Int64) + pl::when(start.clone().lt(lit(1i64))).then(start - lit(1i64)).otherwise(lit(0i64)))
                    .clip_min(lit(0i64))
                    .cast(DataType::UInt64),
                None => s.clone().str().len_chars().cast(DataType::UInt64),
            };
            s.str().slice(offset, length)
        }
        Trim => a(0)?.str().strip_chars(lit(pl::Null {})),
        Ltrim => a(0)?.str().strip_chars_start(lit(pl::Null {})),
        Rtrim => a(0)?.str().strip_chars_end(lit(pl::Null {})),
        Round => {
            let digits = match args.get(1).map(|d| &d.kind) {
                Some(ExprKind::Literal(Literal::Integer(d))) => *d as u32,
                _ => 0,
            };
            f64_of(0)?.round(digits, RoundMode::HalfAwayFromZero)
        }
        Floor | Ceil | Abs if args[0].ty == SqlType::Null => null_of(SqlType::Double),
        Floor | Ceil if args[0].ty == SqlType::Integer => a(0)?,
        Floor => f64_of(0)?.floor(),
        Ceil => f64_of(0)?.ceil(),
        Abs => a(0)?.abs(),
        Sqrt => {
            let x = f64_of(0)?;
            pl::when(x.clone().lt(lit(0.0))).then(null_of(SqlType::Double)).otherwise(x.sqrt())
        }
        Ln => {
            let x = f64_of(0)?;
            pl::when(x.clone().lt_eq(lit(0.0))).then(null_of(SqlType::Double)).otherwise(x.log(lit(std::f64::consts::E)))
        }
        Exp => f64_of(0)?.exp(),
        Power => f64_of(0)?.pow(f64_of(1)?),
        Coalesce => {
            let parts = args.iter().map(|x| Ok(convert(lower(x, resolve)?, x.ty, ty))).collect::<Result<Vec<_>>>()?;
            pl::coalesce(&parts)
        }
        Nullif => {
            let common = args[0].ty.unify(args[1].ty).unwrap_or(args[0].ty);
            let x = a(0)?;
            let same = convert(x.clone(), args[0].ty, common).eq(convert(a(1)?, args[1].ty, common));
            pl::when(same).then(null_of(ty)).otherwise(x)
        }
        Year => a(0)?.dt().year().cast(DataType::Int64),
        Month => a(0)?.dt().month().cast(DataType::Int64),
        Day => a(0)?.dt().day().cast(DataType::Int64),
        DatePart => {
            let x = a(1)?;
            let v = match text_arg(0).as_str() {
                "year" => x.dt().year(),
                "quarter" => x.dt().quarter(),
                "month" => x.dt().month(),
                "week" => x.dt().week(),
                "day" => x.dt().day(),
                // polars: Monday = 1 .. Sunday = 7; SQL: Sunday = 0 .. Saturday = 6.
                "dow" => x.dt().weekday().cast(DataType::Int64) % lit(7i64),
                "doy" => x.dt().ordinal_day(),
                "hour" => x.cast(SqlType::Timestamp.to_polars()).dt().hour(),
                "minute" => x.cast(SqlType::Timestamp.to_polars()).dt().minute(),
                _ => x.cast(SqlType::Timestamp.to_polars()).dt().second(),
            };
            v.cast(DataType::Int64)
        }
        DateTrunc => {
            let every = match text_arg(0).as_str() {
                "year" => "1y",
                "quarter" => "1q",
                "month" => "1mo",
                "week" => "1w",
                _ => "1d",
            };
            a(1)?.dt().truncate(lit(every))
        }
        WidthBucket => {
            let x = f64_of(0)?;
            let (lo, hi, n) = (num_lit(1), num_lit(2), num_lit(3));
            let inside = ((x.clone() - lit(lo)) / lit(hi - lo) * lit(n)).floor() + lit(1.0);
            pl::when(x.clone().lt(lit(lo)))
                .then(lit(0.0))
                .when(x.gt_eq(lit(hi)))
                .then(lit(n + 1.0))
                .otherwise(inside)
                .cast(DataType::Int64)
        }
    })
}

/// Lowers an aggregate call over rows where `keep` holds (all rows if `None`).
/// Spreads a constant over the input's rows: polars would otherwise give a
/// constant one row (and one group on empty input), so `COUNT(1)` or
/// `SELECT 'k' FROM t` would not see one value per row.
pub(crate) fn per_row(e: &Expr, lowered: PExpr) -> PExpr {
    if e.references_columns() { lowered } else { pl::repeat(lowered, pl::len()) }
}

pub(crate) fn aggregate(func: AggFunc, args: &[Expr], distinct: bool, ty: SqlType, keep: Option<&PExpr>) -> Result<PExpr> {
    let none = |_: &Expr| None;
    let per_row = |e: &Expr| -> Result<PExpr> { Ok(per_row(e, lower(e, &none)?)) };
    // Floating-point sums whose digits depend on the order of addition.
    let order_sensitive = matches!(func, AggFunc::Sum | AggFunc::Avg | AggFunc::Stddev | AggFunc::Variance)
        && args.first().is_some_and(|a| a.ty == SqlType::Double);
    let arg = |i: usize| -> Result<PExpr> {
        let x = per_row(&args[i])?;
        Ok(match keep {
            // Filtered: polars' per-group path adds in row order, so the
            // same query always gives the same digits.
            Some(k) if order_sensitive => x.filter(k.clone()),
            // Masked: a filter inside a group-by takes polars' slow
            // per-group path. Every aggregate below skips nulls.
            Some(k) => pl::when(k.clone()).then(x).otherwise(lit(pl::Null {})),
            None => x,
        })
    };
    Ok(match func {
        AggFunc::CountStar => match keep {
            Some(k) => k.clone().sum().cast(DataType::Int64),
            None => pl::len().cast(DataType::Int64),
        },
        AggFunc::Count if distinct => arg(0)?.drop_nulls().n_unique().cast(DataType::Int64),
        AggFunc::Count => arg(0)?.count().cast(DataType::Int64),
        AggFunc::Sum => {
            let x = arg(0)?.cast(ty.to_polars());
            // SQL: the sum of no values is NULL, not 0.
            pl::when(x.clone().count().eq(lit(0u32))).then(null_of(ty)).otherwise(x.sum())
        }
        AggFunc::Avg => arg(0)?.cast(DataType::Float64).mean(),
        AggFunc::Min => arg(0)?.min(),
        AggFunc::Max => arg(0)?.max(),
        AggFunc::Stddev | AggFunc::Variance => {
            // Sample statistics of fewer than two values are NULL in SQL.
            let x = arg(0)?.cast(DataType::Float64);
            let stat = if func == AggFunc::Stddev { x.clone().std(1) } else { x.clone().var(1) };
            pl::when(x.count().lt(lit(2u32))).then(null_of(SqlType::Double)).otherwise(stat)
        }
        AggFunc::Median => arg(0)?.cast(DataType::Float64).median(),
        AggFunc::Quantile => {
            let q = match args.get(1).map(|a| &a.kind) {
                Some(ExprKind::Literal(Literal::Double(q))) => *q,
                _ => 0.5,
            };
            arg(0)?.cast(DataType::Float64).quantile(lit(q), QuantileMethod::Linear)
        }
        AggFunc::Corr | AggFunc::CovarSamp => {
            // Pairwise-complete rows only, like SQL engines.
            let y = per_row(&args[0])?.cast(DataType::Float64);
            let x = per_row(&args[1])?.cast(DataType::Float64);
            let mut both = y.clone().is_not_null().and(x.clone().is_not_null());
            if let Some(k) = keep {
                both = both.and(k.clone());
            }
            // Masked (not filtered: a filter inside a group-by takes polars'
            // slow per-group path) so both sides hold the same pairs.
            let masked = |e: PExpr| pl::when(both.clone()).then(e).otherwise(null_of(SqlType::Double));
            let (y, x) = (masked(y), masked(x));
            let pairs = y.clone().count();
            let stat = if func == AggFunc::Corr { pl::pearson_corr(y, x) } else { pl::cov(y, x, 1) };
            // Fewer than two pairs, or no variance (NaN), is NULL in SQL.
            pl::when(pairs.lt(lit(2u32))).then(null_of(SqlType::Double)).otherwise(stat.fill_nan(null_of(SqlType::Double)))
        }
    })
}

/// SQL LIKE pattern to an anchored regex.
pub fn like_to_regex(pattern: &str, case_insensitive: bool) -> String {
    let mut out = String::from(if case_insensitive { "(?is)^" } else { "(?s)^" });
    for ch in pattern.chars() {
        match ch {
            '%' => out.push_str(".*"),
            '_' => out.push('.'),
            c => {
                let mut buf = [0u8; 4];
                out.push_str(&regex_escape(c.encode_utf8(&mut buf)));
            }
        }
    }
    out.push('$');
    out
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$#&-~".contains(c) { vec!['\\', c] } else { vec![c] }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_become_anchored_regexes() {
        assert_eq!(like_to_regex("a%b_", false), "(?s)^a.*b.$");
        assert_eq!(like_to_regex("1.5%", true), "(?is)^1\\.5.*$");
    }
}
