//! Expressions: names, literals, operators, CASE, CAST, IN, BETWEEN, LIKE.
//!
//! Every expression gets a type here. Operations that could fail on some
//! row's value (casts, date parsing) are made total instead: they yield
//! NULL, so no error can ever depend on one person's data.

use super::{Binder, Scope};
use crate::error::{Error, Result};
use crate::ir::{BinaryOp, ColumnRef, Expr, ExprKind, Literal, ScalarFunc, UnaryOp};
use crate::span::Span;
use crate::types::SqlType;
use sqlparser::ast;

const MAX_IN_LIST: usize = 10_000;

/// Where an expression appears, which decides whether aggregates are allowed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExprCtx<'s> {
    pub scope: &'s Scope,
    /// `Some(clause)` names the clause when aggregates are *not* allowed.
    pub no_aggregates: Option<&'static str>,
    /// True while binding an aggregate's arguments (no nesting).
    pub in_aggregate: bool,
}

impl<'s> ExprCtx<'s> {
    pub fn new(scope: &'s Scope, no_aggregates: Option<&'static str>) -> Self {
        ExprCtx { scope, no_aggregates, in_aggregate: false }
    }
}

pub(crate) fn lit(value: Literal, span: Span) -> Expr {
    let ty = match &value {
        Literal::Null => SqlType::Null,
        Literal::Boolean(_) => SqlType::Boolean,
        Literal::Integer(_) => SqlType::Integer,
        Literal::Double(_) => SqlType::Double,
        Literal::Text(_) => SqlType::Text,
        Literal::Date(_) => SqlType::Date,
    };
    Expr { kind: ExprKind::Literal(value), ty, span }
}

/// Parses `YYYY-MM-DD` into days since the epoch.
pub fn parse_date(text: &str) -> Option<i32> {
    let mut parts = text.trim().splitn(3, '-');
    let y: i32 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.get(..2)?.parse().ok()?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Howard Hinnant's days-from-civil algorithm.
pub(crate) fn days_from_civil(y: i32, m: u32, d: u32) -> i32 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i32;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i32 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

impl Binder<'_> {
    pub(crate) fn expr(&self, e: &ast::Expr, ctx: ExprCtx<'_>) -> Result<Expr> {
        let depth = self.expr_depth.get();
        if depth >= super::MAX_EXPR_DEPTH {
            let span = self.span_of(e, self.whole());
            return Err(Error::invalid(
                format!("this expression is nested more than {} levels deep; split it up (e.g. use IN (...) instead of long OR chains)", super::MAX_EXPR_DEPTH),
                Some(span),
            ));
        }
        self.expr_depth.set(depth + 1);
        let result = match self.charge(1, Span::default()) {
            Err(err) => Err(err.respanned(Some(self.span_of(e, self.whole())))),
            Ok(()) => self.expr_inner(e, ctx),
        };
        self.expr_depth.set(depth);
        result
    }

    fn expr_inner(&self, e: &ast::Expr, ctx: ExprCtx<'_>) -> Result<Expr> {
        let span = self.span_of(e, self.whole());
        match e {
            ast::Expr::Identifier(ident) => self.column(None, &ident.value, ctx, span),
            ast::Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [table, column] => self.column(Some(&table.value), &column.value, ctx, span),
                _ => Err(Error::UnknownColumn { name: parts.iter().map(|p| p.value.as_str()).collect::<Vec<_>>().join("."), span: Some(span) }),
            },
            ast::Expr::Value(v) => self.value(&v.value, span),
            ast::Expr::TypedString(ts) => {
                let ty = SqlType::from_sql_name(&ts.data_type.to_string());
                let text = match &ts.value.value {
                    ast::Value::SingleQuotedString(s) => s.clone(),
                    _ => return Err(Error::unsupported("this typed literal", "write DATE 'YYYY-MM-DD'", Some(span))),
                };
                match ty {
                    Some(SqlType::Date) => parse_date(&text)
                        .map(|d| lit(Literal::Date(d), span))
                        .ok_or_else(|| Error::invalid("invalid DATE literal; write DATE 'YYYY-MM-DD'", Some(span))),
                    _ => Err(Error::unsupported(format!("{} literals", ts.data_type), "write DATE 'YYYY-MM-DD', or CAST('...' AS <type>)", Some(span))),
                }
            }
            ast::Expr::Nested(inner) => {
                let mut bound = self.expr(inner, ctx)?;
                bound.span = span;
                Ok(bound)
            }
            ast::Expr::UnaryOp { op, expr } => {
                let inner = self.expr(expr, ctx)?;
                match op {
                    ast::UnaryOperator::Not => {
                        expect_type(&inner, SqlType::Boolean, "NOT")?;
                        Ok(Expr { kind: ExprKind::Unary { op: UnaryOp::Not, expr: Box::new(inner) }, ty: SqlType::Boolean, span })
                    }
                    ast::UnaryOperator::Minus => {
                        expect_numeric(&inner, "unary minus")?;
                        let ty = inner.ty;
                        Ok(Expr { kind: ExprKind::Unary { op: UnaryOp::Neg, expr: Box::new(inner) }, ty, span })
                    }
                    ast::UnaryOperator::Plus => {
                        expect_numeric(&inner, "unary plus")?;
                        Ok(Expr { span, ..inner })
                    }
                    other => Err(Error::unsupported(format!("the operator `{other}`"), "use arithmetic, comparison and boolean operators", Some(span))),
                }
            }
            ast::Expr::BinaryOp { left, op, right } => {
                let l = self.expr(left, ctx)?;
                let r = self.expr(right, ctx)?;
                self.binary(op, l, r, span)
            }
            ast::Expr::IsNull(inner) | ast::Expr::IsNotNull(inner) => {
                let negated = matches!(e, ast::Expr::IsNotNull(_));
                let inner = self.expr(inner, ctx)?;
                Ok(Expr { kind: ExprKind::IsNull { expr: Box::new(inner), negated }, ty: SqlType::Boolean, span })
            }
            ast::Expr::InList { expr, list, negated } => {
                if list.len() > MAX_IN_LIST {
                    return Err(Error::invalid(format!("IN lists may have at most {MAX_IN_LIST} items"), Some(span)));
                }
                let value = self.expr(expr, ctx)?;
                let mut ty = value.ty;
                let mut items = Vec::new();
                for item in list {
                    let item = self.expr(item, ctx)?;
                    ty = ty.unify(item.ty).ok_or_else(|| type_mismatch("IN", value.ty, item.ty, item.span))?;
                    items.push(item);
                }
                let value = coerce_literal_to(value, ty)?;
                let items = items.into_iter().map(|i| coerce_literal_to(i, ty)).collect::<Result<Vec<_>>>()?;
                Ok(Expr { kind: ExprKind::InList { expr: Box::new(value), list: items, negated: *negated }, ty: SqlType::Boolean, span })
            }
            ast::Expr::Between { expr, negated, low, high } => {
                let value = self.expr(expr, ctx)?;
                let low = self.expr(low, ctx)?;
                let high = self.expr(high, ctx)?;
                let ty = value.ty.unify(low.ty).and_then(|t| t.unify(high.ty)).ok_or_else(|| type_mismatch("BETWEEN", value.ty, low.ty, span))?;
                Ok(Expr {
                    kind: ExprKind::Between {
                        expr: Box::new(coerce_literal_to(value, ty)?),
                        low: Box::new(coerce_literal_to(low, ty)?),
                        high: Box::new(coerce_literal_to(high, ty)?),
                        negated: *negated,
                    },
                    ty: SqlType::Boolean,
                    span,
                })
            }
            ast::Expr::Like { negated, any, expr, pattern, escape_char } | ast::Expr::ILike { negated, any, expr, pattern, escape_char } => {
                let case_insensitive = matches!(e, ast::Expr::ILike { .. });
                if *any || escape_char.is_some() {
                    return Err(Error::unsupported("LIKE ANY / ESCAPE", "write a plain LIKE 'pattern' with % and _", Some(span)));
                }
                let value = self.expr(expr, ctx)?;
                expect_type(&value, SqlType::Text, "LIKE")?;
                let pattern_span = self.span_of(&**pattern, span);
                let pattern = match &**pattern {
                    ast::Expr::Value(v) => match &v.value {
                        ast::Value::SingleQuotedString(s) => s.clone(),
                        _ => return Err(Error::invalid("the LIKE pattern must be a string literal", Some(pattern_span))),
                    },
                    _ => return Err(Error::invalid("the LIKE pattern must be a string literal", Some(pattern_span))),
                };
                if pattern.len() > 256 {
                    return Err(Error::invalid("the LIKE pattern is too long (at most 256 characters)", Some(pattern_span)));
                }
                Ok(Expr { kind: ExprKind::Like { expr: Box::new(value), pattern, negated: *negated, case_insensitive }, ty: SqlType::Boolean, span })
            }
            ast::Expr::Cast { kind: _, expr, data_type, format, .. } => {
                if format.is_some() {
                    return Err(Error::unsupported("CAST ... FORMAT", "write CAST(x AS <type>)", Some(span)));
                }
                let inner = self.expr(expr, ctx)?;
                let to = SqlType::from_sql_name(&data_type.to_string()).ok_or_else(|| {
                    Error::unsupported(format!("the type {data_type}"), "cast to BOOLEAN, BIGINT, DOUBLE, TEXT, DATE or TIMESTAMP", Some(span))
                })?;
                Ok(Expr { kind: ExprKind::Cast { expr: Box::new(inner), to }, ty: to, span })
            }
            ast::Expr::Case { operand, conditions, else_result, .. } => {
                let operand = operand.as_ref().map(|o| self.expr(o, ctx)).transpose()?;
                let mut whens = Vec::new();
                let mut ty = SqlType::Null;
                for when in conditions {
                    let cond = self.expr(&when.condition, ctx)?;
                    let cond = match &operand {
                        Some(o) => self.binary(&ast::BinaryOperator::Eq, o.clone(), cond.clone(), cond.span)?,
                        None => {
                            expect_type(&cond, SqlType::Boolean, "CASE WHEN")?;
                            cond
                        }
                    };
                    let result = self.expr(&when.result, ctx)?;
                    ty = ty.unify(result.ty).ok_or_else(|| type_mismatch("CASE", ty, result.ty, result.span))?;
                    whens.push((cond, result));
                }
                let otherwise = else_result.as_ref().map(|e| self.expr(e, ctx)).transpose()?;
                if let Some(o) = &otherwise {
                    ty = ty.unify(o.ty).ok_or_else(|| type_mismatch("CASE", ty, o.ty, o.span))?;
                }
                Ok(Expr { kind: ExprKind::Case { whens, otherwise: otherwise.map(Box::new) }, ty, span })
            }
            ast::Expr::Extract { field, expr, .. } => {
                let inner = self.expr(expr, ctx)?;
                let field_name = date_field_name(&field.to_string(), span)?;
                self.scalar_checked(ScalarFunc::DatePart, vec![lit(Literal::Text(field_name), span), inner], span)
            }
            ast::Expr::Ceil { expr, field } | ast::Expr::Floor { expr, field } => {
                if !matches!(field, ast::CeilFloorKind::DateTimeField(ast::DateTimeField::NoDateTime)) {
                    return Err(Error::unsupported("CEIL/FLOOR TO a field or scale", "write CEIL(x) or FLOOR(x)", Some(span)));
                }
                let inner = self.expr(expr, ctx)?;
                let func = if matches!(e, ast::Expr::Ceil { .. }) { ScalarFunc::Ceil } else { ScalarFunc::Floor };
                self.scalar_checked(func, vec![inner], span)
            }
            ast::Expr::Substring { expr, substring_from, substring_for, .. } => {
                let mut args = vec![self.expr(expr, ctx)?];
                args.push(match substring_from {
                    Some(f) => self.expr(f, ctx)?,
                    None => lit(Literal::Integer(1), span),
                });
                if let Some(f) = substring_for {
                    args.push(self.expr(f, ctx)?);
                }
                self.scalar_checked(ScalarFunc::Substr, args, span)
            }
            ast::Expr::Trim { expr, trim_where, trim_what, trim_characters } => {
                if trim_what.is_some() || trim_characters.is_some() {
                    return Err(Error::unsupported("TRIM of specific characters", "TRIM removes whitespace; write TRIM(x)", Some(span)));
                }
                let func = match trim_where {
                    Some(ast::TrimWhereField::Leading) => ScalarFunc::Ltrim,
                    Some(ast::TrimWhereField::Trailing) => ScalarFunc::Rtrim,
                    _ => ScalarFunc::Trim,
                };
                let inner = self.expr(expr, ctx)?;
                self.scalar_checked(func, vec![inner], span)
            }
            ast::Expr::Function(f) => self.function(f, ctx, span),
            ast::Expr::Subquery(_) | ast::Expr::InSubquery { .. } | ast::Expr::Exists { .. } => {
                Err(Error::unsupported("subqueries in expressions", "join with a subquery in FROM instead", Some(span)))
            }
            other => Err(Error::unsupported(construct_name(other), "see the dialect reference in README.md for what is supported", Some(span))),
        }
    }

    fn column(&self, table: Option<&str>, name: &str, ctx: ExprCtx<'_>, span: Span) -> Result<Expr> {
        let full = match table {
            Some(t) => format!("{t}.{name}"),
            None => name.to_string(),
        };
        let mut found: Option<(ColumnRef, SqlType)> = None;
        for leaf in &ctx.scope.leaves {
            if let Some(t) = table
                && !leaf.alias.eq_ignore_ascii_case(t)
            {
                continue;
            }
            for (index, (col, ty)) in leaf.columns.iter().enumerate() {
                if table.is_none() && leaf.merged.contains(&index) {
                    continue;
                }
                if col.eq_ignore_ascii_case(name) {
                    if found.is_some() {
                        return Err(Error::AmbiguousColumn { name: full, span: Some(span) });
                    }
                    found = Some((ColumnRef { slot: leaf.slot, index, qualifier: leaf.alias.clone(), name: col.clone() }, *ty));
                }
            }
        }
        match found {
            Some((c, ty)) => Ok(Expr { kind: ExprKind::Column(c), ty, span }),
            None => Err(Error::UnknownColumn { name: full, span: Some(span) }),
        }
    }

    fn value(&self, v: &ast::Value, span: Span) -> Result<Expr> {
        Ok(match v {
            ast::Value::Number(text, _) => match text.parse::<i64>() {
                Ok(i) => lit(Literal::Integer(i), span),
                Err(_) => match text.parse::<f64>() {
                    Ok(x) if x.is_finite() => lit(Literal::Double(x), span),
                    _ => return Err(Error::invalid("this number is out of range", Some(span))),
                },
            },
            ast::Value::SingleQuotedString(s) => lit(Literal::Text(s.clone()), span),
            ast::Value::Boolean(b) => lit(Literal::Boolean(*b), span),
            ast::Value::Null => lit(Literal::Null, span),
            ast::Value::Placeholder(_) => {
                return Err(Error::unsupported("parameters", "write the value into the query", Some(span)));
            }
            _ => return Err(Error::unsupported("this kind of literal", "use 'single-quoted' strings and plain numbers", Some(span))),
        })
    }

    pub(crate) fn binary(&self, op: &ast::BinaryOperator, l: Expr, r: Expr, span: Span) -> Result<Expr> {
        use ast::BinaryOperator as B;
        let op = match op {
            B::Plus => BinaryOp::Add,
            B::Minus => BinaryOp::Sub,
            B::Multiply => BinaryOp::Mul,
            B::Divide => BinaryOp::Div,
            B::Modulo => BinaryOp::Mod,
            B::Eq => BinaryOp::Eq,
            B::NotEq => BinaryOp::NotEq,
            B::Lt => BinaryOp::Lt,
            B::LtEq => BinaryOp::LtEq,
            B::Gt => BinaryOp::Gt,
            B::GtEq => BinaryOp::GtEq,
            B::And => BinaryOp::And,
            B::Or => BinaryOp::Or,
            B::StringConcat => BinaryOp::Concat,
            other => {
                return Err(Error::unsupported(format!("the operator `{other}`"), "use + - * / %, comparisons, AND/OR/NOT, || and LIKE", Some(span)));
            }
        };
        make_binary(op, l, r, span)
    }
}

pub(crate) fn make_binary(op: BinaryOp, l: Expr, r: Expr, span: Span) -> Result<Expr> {
    let ty = if op.is_arithmetic() {
        expect_numeric(&l, op.symbol())?;
        expect_numeric(&r, op.symbol())?;
        match op {
            BinaryOp::Div => SqlType::Double,
            _ => l.ty.unify(r.ty).unwrap_or(SqlType::Double),
        }
    } else if op.is_comparison() {
        let common = l.ty.unify(r.ty).ok_or_else(|| type_mismatch(op.symbol(), l.ty, r.ty, span))?;
        let l = coerce_literal_to(l, common)?;
        let r = coerce_literal_to(r, common)?;
        return Ok(Expr { kind: ExprKind::Binary { op, left: Box::new(l), right: Box::new(r) }, ty: SqlType::Boolean, span });
    } else if matches!(op, BinaryOp::And | BinaryOp::Or) {
        expect_type(&l, SqlType::Boolean, op.symbol())?;
        expect_type(&r, SqlType::Boolean, op.symbol())?;
        SqlType::Boolean
    } else {
        SqlType::Text
    };
    Ok(Expr { kind: ExprKind::Binary { op, left: Box::new(l), right: Box::new(r) }, ty, span })
}

/// Turns a text literal into a date literal where a date is expected, so
/// `admitted >= '2021-01-01'` works without a CAST.
pub(crate) fn coerce_literal_to(e: Expr, ty: SqlType) -> Result<Expr> {
    match (&e.kind, ty) {
        (ExprKind::Literal(Literal::Text(s)), SqlType::Date | SqlType::Timestamp) if e.ty == SqlType::Text => {
            let days = parse_date(s).ok_or_else(|| Error::invalid("invalid date literal; write 'YYYY-MM-DD'", Some(e.span)))?;
            let date = lit(Literal::Date(days), e.span);
            Ok(if ty == SqlType::Timestamp { Expr { kind: ExprKind::Cast { expr: Box::new(date), to: ty }, ty, span: e.span } } else { date })
        }
        _ => Ok(e),
    }
}

pub(crate) fn expect_type(e: &Expr, ty: SqlType, what: &str) -> Result<()> {
    if e.ty == ty || e.ty == SqlType::Null {
        Ok(())
    } else {
        Err(Error::invalid(format!("{what} expects {ty}, but this expression is {}", e.ty), Some(e.span)))
    }
}

pub(crate) fn expect_numeric(e: &Expr, what: &str) -> Result<()> {
    if e.ty.is_numeric() { Ok(()) } else { Err(Error::invalid(format!("{what} expects a number, but this expression is {}", e.ty), Some(e.span))) }
}

pub(crate) fn type_mismatch(what: &str, a: SqlType, b: SqlType, span: Span) -> Error {
    Error::invalid(format!("{what} cannot combine {a} and {b}; CAST one side"), Some(span))
}

/// Canonical names of the date parts `EXTRACT` and `date_part` accept.
pub(crate) fn date_field_name(field: &str, span: Span) -> Result<String> {
    let f = field.trim_matches('\'').to_ascii_lowercase();
    let canonical = match f.as_str() {
        "year" | "years" => "year",
        "quarter" => "quarter",
        "month" | "months" => "month",
        "week" | "weeks" => "week",
        "day" | "days" => "day",
        "dow" | "dayofweek" => "dow",
        "doy" | "dayofyear" => "doy",
        "hour" | "hours" => "hour",
        "minute" | "minutes" => "minute",
        "second" | "seconds" => "second",
        _ => {
            return Err(Error::invalid(format!("unknown date part `{f}`; use year, quarter, month, week, day, dow, doy, hour, minute or second"), Some(span)));
        }
    };
    Ok(canonical.to_string())
}

/// A readable name for an expression the dialect refuses.
fn construct_name(e: &ast::Expr) -> String {
    let name = match e {
        ast::Expr::JsonAccess { .. } | ast::Expr::CompoundFieldAccess { .. } => "field access",
        ast::Expr::IsDistinctFrom(..) | ast::Expr::IsNotDistinctFrom(..) => "IS [NOT] DISTINCT FROM",
        ast::Expr::IsTrue(_) | ast::Expr::IsFalse(_) | ast::Expr::IsNotTrue(_) | ast::Expr::IsNotFalse(_) => "IS TRUE / IS FALSE",
        ast::Expr::SimilarTo { .. } | ast::Expr::RLike { .. } => "regular expression matching",
        ast::Expr::AnyOp { .. } | ast::Expr::AllOp { .. } => "ANY / ALL",
        ast::Expr::AtTimeZone { .. } => "AT TIME ZONE",
        ast::Expr::Interval(_) => "INTERVAL literals",
        ast::Expr::Array(_) | ast::Expr::Tuple(_) | ast::Expr::Struct { .. } | ast::Expr::Map(_) | ast::Expr::Dictionary(_) => "arrays, tuples and structs",
        ast::Expr::Wildcard(_) | ast::Expr::QualifiedWildcard(..) => "`*` here",
        ast::Expr::Lambda(_) => "lambda functions",
        ast::Expr::Collate { .. } => "COLLATE",
        ast::Expr::Position { .. } => "POSITION",
        ast::Expr::Overlay { .. } => "OVERLAY",
        ast::Expr::Convert { .. } => "CONVERT",
        ast::Expr::MatchAgainst { .. } => "MATCH ... AGAINST",
        ast::Expr::GroupingSets(_) | ast::Expr::Cube(_) | ast::Expr::Rollup(_) => "GROUPING SETS / CUBE / ROLLUP",
        _ => "this expression",
    };
    name.to_string()
}
