//! Lowering of scalar expressions and aggregate calls to polars expressions.
//!
//! Every operation is total: casts are non-strict, division is in floating
//! point, and functions undefined on a value yield NULL, so no error can
//! depend on one row's data.

use crate::error::{Result, RunError};
use crate::types::ToPolars;
use polars::prelude::{self as pl, DataType, Expr as PExpr, IntoColumn, QuantileMethod, RoundMode, col, lit};
use safe_data_lang::decimal::{self, Decimal, Edges};
use safe_data_lang::ir::{AggFunc, BinaryOp, Expr, ExprKind, Literal, ScalarFunc, UnaryOp};
use safe_data_lang::types::SqlType;

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
            return Err(RunError::Engine("internal error: an aggregate outside an aggregation").into());
        }
        ExprKind::Case { whens, otherwise } => {
            let mut iter = whens.iter();
            let (c0, r0) = iter.next().ok_or(RunError::Engine("internal error: empty CASE"))?;
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
                .map_err(|_| RunError::Engine("internal error: IN list"))?;
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
    if from == to {
        e
    } else if from == SqlType::Null {
        e.cast(to.to_polars())
    } else {
        cast(e, from, to)
    }
}

fn cast(e: PExpr, from: SqlType, to: SqlType) -> PExpr {
    match (from, to) {
        // Text to number: trim first so ' 42' converts like in SQL engines.
        (SqlType::Text, SqlType::Double) => e.str().strip_chars(lit(pl::Null {})).cast(DataType::Float64),
        // An integer's text exactly (through a double, 9223372036854775807
        // would not fit); other numbers round like a double does ('2.5' is 3).
        (SqlType::Text, SqlType::Integer) => {
            let t = e.str().strip_chars(lit(pl::Null {}));
            pl::coalesce(&[t.clone().cast(DataType::Int64), cast(t.cast(DataType::Float64), SqlType::Double, SqlType::Integer)])
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
        // SQL's remainder truncates toward zero (polars' % floors), exactly:
        // integers stay integers (through a double, 2^62 + 1 would lose its
        // last bits), a double's is IEEE fmod. x % 0 is NULL.
        Mod if out == SqlType::Integer => elementwise_i64(l, r, |a, b| (b != 0).then(|| a.wrapping_rem(b))),
        Mod => elementwise_f64(l, r, |a, b| Some(a % b).filter(|x| !x.is_nan())),
        Add | Sub | Mul => {
            let t = out.to_polars();
            let (l, r) = (l.cast(t.clone()), r.cast(t));
            match op {
                Add => l + r,
                Sub => l - r,
                _ => l * r,
            }
        }
        Div => elementwise_f64(l, r, |a, b| Some(a / b)),
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

/// `f` of two columns, row by row (a one-row side is broadcast), computed
/// here rather than by polars' arithmetic, which divides by a constant as a
/// multiplication by its reciprocal: `x / 5` would be `x * 0.2`, so `3 / 5`
/// printed 0.6000000000000001 and `49 % 49` was 49 (49 × (1/49) is just
/// below 1). NULL in, NULL out.
fn elementwise<T, F>(l: PExpr, r: PExpr, dtype: DataType, f: F) -> PExpr
where
    T: pl::PolarsNumericType,
    F: Fn(T::Native, T::Native) -> Option<T::Native> + Send + Sync + 'static,
{
    let output_type = dtype.clone();
    l.cast(dtype.clone()).map_many(
        move |cols: &mut [pl::Column]| {
            let (a, b) = (cols[0].as_materialized_series().unpack::<T>()?, cols[1].as_materialized_series().unpack::<T>()?);
            let at = |c: &pl::ChunkedArray<T>, i: usize| if c.len() == 1 { c.get(0) } else { c.get(i) };
            let len = if a.len() == 1 { b.len() } else { a.len() };
            let out: pl::ChunkedArray<T> =
                if a.len() == b.len() { a.iter().zip(b.iter()).map(|(x, y)| f(x?, y?)).collect() } else { (0..len).map(|i| f(at(a, i)?, at(b, i)?)).collect() };
            Ok(out.with_name(cols[0].name().clone()).into_column())
        },
        &[r.cast(dtype)],
        move |_: &pl::Schema, fields: &[pl::Field]| Ok(pl::Field::new(fields[0].name().clone(), output_type.clone())),
    )
}

fn elementwise_f64(l: PExpr, r: PExpr, f: impl Fn(f64, f64) -> Option<f64> + Send + Sync + 'static) -> PExpr {
    elementwise::<pl::Float64Type, _>(l, r, DataType::Float64, f)
}

fn elementwise_i64(l: PExpr, r: PExpr, f: impl Fn(i64, i64) -> Option<i64> + Send + Sync + 'static) -> PExpr {
    elementwise::<pl::Int64Type, _>(l, r, DataType::Int64, f)
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
                Some(_) => (a(2)?.cast(DataType::Int64) + pl::when(start.clone().lt(lit(1i64))).then(start - lit(1i64)).otherwise(lit(0i64)))
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
            if digits == 0 {
                // A tie at 0 digits (x.5) is exact in binary: rounding the double is exact.
                f64_of(0)?.round(0, RoundMode::HalfAwayFromZero)
            } else {
                let output = |_: &pl::Schema, f: &pl::Field| Ok(pl::Field::new(f.name().clone(), DataType::Float64));
                f64_of(0)?.map_with_fmt_str(
                    move |c: pl::Column| {
                        let out: pl::Float64Chunked = c.f64()?.iter().map(|v| v.map(|v| decimal::round_half_away(v, digits))).collect();
                        Ok(out.with_name(c.name().clone()).into_column())
                    },
                    output,
                    "round",
                )
            }
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
        WidthBucket => width_bucket(a(0)?, args)?,
    })
}

/// A literal number argument as the decimal it was written as.
fn decimal_literal(e: &Expr) -> Option<Decimal> {
    match e.kind {
        ExprKind::Literal(Literal::Integer(i)) => Some(Decimal::of_i64(i)),
        ExprKind::Literal(Literal::Double(x)) => Decimal::of_f64(x),
        _ => None,
    }
}

/// `WIDTH_BUCKET(x, low, high, n)`, PostgreSQL's definition computed
/// exactly: bucket `i` holds `low + (i-1)·w <= x < low + i·w` with
/// `w = (high - low) / n`, 0 is below `low`, `n + 1` at or above `high`.
/// Dividing in floating point puts values on an edge in the bucket below
/// (75 / 110 × 22 is 14.999…): here each edge is turned once, exactly, into
/// the least value at or above it ([`Edges`]), and `x` is compared with
/// those. Doubles are read as the decimals they print as (`0.6` is on the
/// edge 0.6), integers as themselves.
fn width_bucket(x: PExpr, args: &[Expr]) -> Result<PExpr> {
    let invalid = || crate::Error::from(RunError::Engine("internal error: WIDTH_BUCKET needs literal edges and count"));
    let (low, high) = (decimal_literal(&args[1]).ok_or_else(invalid)?, decimal_literal(&args[2]).ok_or_else(invalid)?);
    let n = match args[3].kind {
        ExprKind::Literal(Literal::Integer(n)) if (1..=i64::from(u32::MAX)).contains(&n) => n as u32,
        _ => return Err(invalid()),
    };
    let approx = |e: &Expr| match e.kind {
        ExprKind::Literal(Literal::Integer(i)) => i as f64,
        ExprKind::Literal(Literal::Double(x)) => x,
        _ => 0.0,
    };
    let (lo, hi) = (approx(&args[1]), approx(&args[2]));
    // Any approximation of the edges: it only starts the exact search.
    let guess = move |i: u32| lo * (f64::from(n - i) / f64::from(n)) + hi * (f64::from(i) / f64::from(n));
    let edges = Edges::new(low, high, n);
    let output = |_: &pl::Schema, f: &pl::Field| Ok(pl::Field::new(f.name().clone(), DataType::Int64));
    Ok(match args[0].ty {
        SqlType::Integer => {
            let thresholds = edges.integer_thresholds(guess);
            x.cast(DataType::Int64).map_with_fmt_str(
                move |c: pl::Column| {
                    let out: pl::Int64Chunked = c.i64()?.iter().map(|v| v.map(|v| decimal::bucket(&thresholds, &i128::from(v)))).collect();
                    Ok(out.with_name(c.name().clone()).into_column())
                },
                output,
                "width_bucket",
            )
        }
        SqlType::Null => null_of(SqlType::Integer),
        _ => {
            let thresholds = edges.float_thresholds(guess);
            x.cast(DataType::Float64).map_with_fmt_str(
                move |c: pl::Column| {
                    // NaN (0/0) has no bucket.
                    let out: pl::Int64Chunked = c.f64()?.iter().map(|v| v.filter(|v| !v.is_nan()).map(|v| decimal::bucket(&thresholds, &v))).collect();
                    Ok(out.with_name(c.name().clone()).into_column())
                },
                output,
                "width_bucket",
            )
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
    let order_sensitive =
        matches!(func, AggFunc::Sum | AggFunc::Avg | AggFunc::Stddev | AggFunc::Variance) && args.first().is_some_and(|a| a.ty == SqlType::Double);
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
    s.chars().flat_map(|c| if "\\.+*?()|[]{}^$#&-~".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use polars::prelude::IntoLazy;
    use safe_data_lang::span::Span;

    /// A decimal text (`-37.5`, `6.000000000000001e-1`) as `mantissa × 10^exponent`.
    fn decimal(text: &str) -> (i128, i32) {
        let (mantissa, exp) = text.split_once('e').unwrap_or((text, "0"));
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        (format!("{int}{frac}").parse().unwrap(), exp.parse::<i32>().unwrap() - frac.len() as i32)
    }

    /// PostgreSQL's WIDTH_BUCKET in exact rational arithmetic, on the
    /// decimals as written (a double is the decimal it prints as).
    fn reference(x: &str, low: &str, high: &str, n: i64) -> i64 {
        let (mut x, l, h) = (decimal(x), decimal(low), decimal(high));
        // A subnormal next to an edge at 0 (5e-324) would not fit an i128 at
        // the common scale; no edge of these tests lies within 1e-20 of 0
        // but 0 itself, so it is on the same side of every edge as ±1e-20.
        if x.0 != 0 && (x.0.unsigned_abs().ilog10() as i32 + 1 + x.1) < -20 {
            x = (x.0.signum(), -20);
        }
        let e = x.1.min(l.1).min(h.1);
        let at = |(m, k): (i128, i32)| m * 10i128.pow((k - e) as u32);
        let (x, l, h) = (at(x), at(l), at(h));
        if x < l {
            0
        } else if x >= h {
            n + 1
        } else {
            ((i128::from(n) * (x - l)).div_euclid(h - l) + 1) as i64
        }
    }

    fn literal_of(text: &str) -> Expr {
        let (kind, ty) = match text.parse::<i64>() {
            Ok(i) => (Literal::Integer(i), SqlType::Integer),
            Err(_) => (Literal::Double(text.parse().unwrap()), SqlType::Double),
        };
        Expr { kind: ExprKind::Literal(kind), ty, span: Span::new(0, 0) }
    }

    /// WIDTH_BUCKET of `xs` (a column of type `ty`) through polars.
    fn buckets(xs: pl::Column, ty: SqlType, low: &str, high: &str, n: i64) -> Vec<Option<i64>> {
        let value = Expr { kind: ExprKind::Literal(Literal::Null), ty, span: Span::new(0, 0) };
        let args = [value, literal_of(low), literal_of(high), literal_of(&n.to_string())];
        let df = pl::DataFrame::new_infer_height(vec![xs]).unwrap();
        let out = df.lazy().select([width_bucket(col("x"), &args).unwrap().alias("b")]).collect().unwrap();
        out.column("b").unwrap().i64().unwrap().iter().collect()
    }

    fn neighbours(x: f64) -> [f64; 5] {
        let step = |x: f64, up: bool| {
            let bits = x.to_bits() as i64;
            let key = bits ^ ((((bits >> 63) as u64) >> 1) as i64);
            let key = if up { key + 1 } else { key - 1 };
            f64::from_bits((key ^ ((((key >> 63) as u64) >> 1) as i64)) as u64)
        };
        [step(step(x, false), false), step(x, false), x, step(x, true), step(step(x, true), true)]
    }

    #[test]
    fn width_bucket_is_exact_on_every_edge() {
        assert_eq!(buckets(pl::Column::new("x".into(), [75i64]), SqlType::Integer, "0", "110", 22), vec![Some(16)]);
        assert_eq!(buckets(pl::Column::new("x".into(), [75.0f64]), SqlType::Double, "0", "110", 22), vec![Some(16)]);
        let ends = ["-37.5", "-1", "-0.3", "0", "0.1", "0.3", "0.6", "1", "2.25", "3", "75", "110", "1000.125"];
        let mut checked = 0;
        for (i, low) in ends.iter().enumerate() {
            for high in &ends[i + 1..] {
                for n in [1i64, 2, 3, 5, 7, 10, 22, 49] {
                    let (lo, hi): (f64, f64) = (low.parse().unwrap(), high.parse().unwrap());
                    // Every edge, the doubles around it, and integers near it.
                    let mut doubles = vec![f64::NEG_INFINITY, f64::INFINITY, -0.0];
                    let mut integers = vec![i64::MIN, i64::MAX, 0];
                    for j in 0..=n {
                        let edge = lo + (hi - lo) * (j as f64 / n as f64);
                        doubles.extend(neighbours(edge));
                        integers.extend([edge.floor() as i64 - 1, edge.floor() as i64, edge.ceil() as i64, edge.ceil() as i64 + 1]);
                    }
                    let got = buckets(pl::Column::new("x".into(), doubles.clone()), SqlType::Double, low, high, n);
                    for (x, b) in doubles.iter().zip(got) {
                        let want = match *x {
                            x if x == f64::NEG_INFINITY => 0,
                            x if x == f64::INFINITY => n + 1,
                            x => reference(&format!("{x:e}"), low, high, n),
                        };
                        assert_eq!(b, Some(want), "WIDTH_BUCKET({x:e}, {low}, {high}, {n})");
                        checked += 1;
                    }
                    let got = buckets(pl::Column::new("x".into(), integers.clone()), SqlType::Integer, low, high, n);
                    for (x, b) in integers.iter().zip(got) {
                        assert_eq!(b, Some(reference(&x.to_string(), low, high, n)), "WIDTH_BUCKET({x}, {low}, {high}, {n})");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 50_000, "{checked}");
    }

    #[test]
    fn width_bucket_of_nan_and_null_is_null() {
        let xs = pl::Column::new("x".into(), [Some(f64::NAN), None, Some(0.5)]);
        assert_eq!(buckets(xs, SqlType::Double, "0", "1", 2), vec![None, None, Some(2)]);
    }

    #[test]
    fn like_patterns_become_anchored_regexes() {
        assert_eq!(like_to_regex("a%b_", false), "(?s)^a.*b.$");
        assert_eq!(like_to_regex("1.5%", true), "(?is)^1\\.5.*$");
    }
}
