//! Queries: WITH (non-recursive CTEs), set operations (UNION [ALL]), and the
//! ORDER BY / LIMIT / OFFSET that apply to a query's body.

use super::from::rename_outputs;
use super::select::{MAX_SORT_KEYS, order_options, ordinal};
use super::{Binder, Cte, Env, MAX_CTES};
use crate::error::{Error, Result};
use crate::ir::{OrderKey, Query, SetExpr};
use crate::span::Span;
use sqlparser::ast;
use std::rc::Rc;

/// The largest LIMIT/OFFSET accepted (the policy caps released rows anyway).
const MAX_LIMIT: u64 = 1 << 40;

impl Binder<'_> {
    pub(crate) fn query(&self, q: &ast::Query, env: &Env) -> Result<Query> {
        let span = self.span_of(q, self.whole());
        if q.fetch.is_some()
            || !q.locks.is_empty()
            || q.for_clause.is_some()
            || q.settings.is_some()
            || q.format_clause.is_some()
            || !q.pipe_operators.is_empty()
        {
            return Err(Error::unsupported("FETCH / FOR / SETTINGS / FORMAT / pipe syntax", "use LIMIT and OFFSET", Some(span)));
        }
        let mut env = env.nested()?;
        let mut ctes = Vec::new();
        if let Some(with) = &q.with {
            if with.recursive {
                return Err(Error::unsupported("WITH RECURSIVE", "use non-recursive CTEs", Some(span)));
            }
            if let Some(extra) = with.cte_tables.get(MAX_CTES) {
                let at = self.index.span(extra.alias.name.span).unwrap_or(span);
                return Err(Error::invalid(format!("a WITH clause may define at most {MAX_CTES} tables; split the statement up"), Some(at)));
            }
            for cte in &with.cte_tables {
                let cte_span = self.index.span(cte.alias.name.span).unwrap_or(span);
                if cte.materialized.is_some() || cte.from.is_some() {
                    return Err(Error::unsupported("CTE modifiers", "write WITH name AS (query)", Some(cte_span)));
                }
                let name = cte.alias.name.value.clone();
                if ctes.iter().any(|(n, _): &(String, Query)| n.eq_ignore_ascii_case(&name)) {
                    return Err(Error::invalid(format!("the CTE `{name}` is defined twice"), Some(cte_span)));
                }
                let before = self.work.get();
                let bound = self.query(&cte.query, &env)?;
                let names: Vec<String> = cte.alias.columns.iter().map(|c| c.name.value.clone()).collect();
                let bound = rename_outputs(bound, &names, cte_span)?;
                // The statement keeps this copy for its text (EXPLAIN, the
                // audit); each use inlines another, charged in `from`.
                let size = self.work.get() - before;
                env.ctes.push(Rc::new(Cte { name: name.clone(), query: bound.clone(), size }));
                ctes.push((name, bound));
            }
        }

        let order_by: &[ast::OrderByExpr] = match &q.order_by {
            None => &[],
            Some(o) => match &o.kind {
                ast::OrderByKind::Expressions(exprs) => exprs,
                ast::OrderByKind::All(_) => return Err(Error::unsupported("ORDER BY ALL", "list the sort keys", Some(span))),
            },
        };
        if q.order_by.as_ref().is_some_and(|o| o.interpolate.is_some()) {
            return Err(Error::unsupported("INTERPOLATE", "order by plain expressions", Some(span)));
        }

        let (body, order_by) = match &*q.body {
            ast::SetExpr::Select(s) => {
                let (select, keys) = self.select(s, order_by, &env)?;
                (SetExpr::Select(Box::new(select)), keys)
            }
            other => {
                let body = self.set_expr(other, &env)?;
                let keys = self.output_order_keys(order_by, &body)?;
                (body, keys)
            }
        };
        let (limit, offset) = self.limit(q.limit_clause.as_ref(), span)?;
        Ok(Query { ctes, body, order_by, limit, offset, span })
    }

    fn set_expr(&self, e: &ast::SetExpr, env: &Env) -> Result<SetExpr> {
        let span = self.span_of(e, self.whole());
        match e {
            ast::SetExpr::Select(s) => {
                let (select, _) = self.select(s, &[], env)?;
                Ok(SetExpr::Select(Box::new(select)))
            }
            ast::SetExpr::Query(q) => Ok(SetExpr::Query(Box::new(self.query(q, &env.nested()?)?))),
            ast::SetExpr::SetOperation { left, op, set_quantifier, right } => {
                let all = match set_quantifier {
                    ast::SetQuantifier::All => true,
                    ast::SetQuantifier::None | ast::SetQuantifier::Distinct => false,
                    _ => return Err(Error::unsupported(format!("UNION {set_quantifier}"), "write UNION or UNION ALL", Some(span))),
                };
                if !matches!(op, ast::SetOperator::Union) {
                    return Err(Error::unsupported(format!("{op}"), "only UNION [ALL] is supported", Some(span)));
                }
                let env = env.nested()?;
                let l = self.set_expr(left, &env)?;
                let r = self.set_expr(right, &env)?;
                let (lo, ro) = (l.output(), r.output());
                if lo.len() != ro.len() {
                    return Err(Error::invalid(format!("UNION sides have {} and {} columns", lo.len(), ro.len()), Some(span)));
                }
                for (a, b) in lo.iter().zip(&ro) {
                    if a.ty.unify(b.ty).is_none() {
                        return Err(Error::invalid(format!("UNION column `{}` is {} on one side and {} on the other", a.name, a.ty, b.ty), Some(span)));
                    }
                }
                Ok(SetExpr::Union { left: Box::new(l), right: Box::new(r), all, span })
            }
            ast::SetExpr::Values(_) => Err(Error::unsupported("VALUES lists", "query the owner's tables", Some(span))),
            ast::SetExpr::Table(_) => Err(Error::unsupported("TABLE t", "write SELECT ... FROM t", Some(span))),
            _ => Err(Error::unsupported("data-changing statements", "Safe Data is read-only", Some(span))),
        }
    }

    /// ORDER BY on a set operation: output names or ordinals only.
    fn output_order_keys(&self, order_by: &[ast::OrderByExpr], body: &SetExpr) -> Result<Vec<OrderKey>> {
        if let Some(extra) = order_by.get(MAX_SORT_KEYS) {
            return Err(Error::invalid(format!("ORDER BY may have at most {MAX_SORT_KEYS} keys"), Some(self.span_of(&extra.expr, self.whole()))));
        }
        let output = body.output();
        order_by
            .iter()
            .map(|o| {
                let span = self.span_of(&o.expr, self.whole());
                let (descending, nulls_first) = order_options(o, span)?;
                let column = match (&o.expr, ordinal(&o.expr)) {
                    (_, Some(i)) if i >= 1 && i <= output.len() => i - 1,
                    (ast::Expr::Identifier(id), None) => output
                        .iter()
                        .position(|f| f.name.eq_ignore_ascii_case(&id.value))
                        .ok_or_else(|| Error::UnknownColumn { name: id.value.clone(), span: Some(span) })?,
                    _ => {
                        return Err(Error::invalid("ORDER BY of a UNION must name an output column or its position", Some(span)));
                    }
                };
                Ok(OrderKey { column, descending, nulls_first })
            })
            .collect()
    }

    fn limit(&self, clause: Option<&ast::LimitClause>, span: Span) -> Result<(Option<u64>, Option<u64>)> {
        let number = |e: &ast::Expr, what: &str| -> Result<u64> {
            let at = self.span_of(e, span);
            match e {
                ast::Expr::Value(v) => match &v.value {
                    ast::Value::Number(n, _) => n.parse::<u64>().ok().filter(|n| *n <= MAX_LIMIT),
                    _ => None,
                },
                _ => None,
            }
            .ok_or_else(|| Error::invalid(format!("{what} must be a non-negative integer literal"), Some(at)))
        };
        match clause {
            None => Ok((None, None)),
            Some(ast::LimitClause::LimitOffset { limit, offset, limit_by }) => {
                if !limit_by.is_empty() {
                    return Err(Error::unsupported("LIMIT BY", "use LIMIT", Some(span)));
                }
                let limit = match limit {
                    None => None,
                    Some(ast::Expr::Value(v)) if matches!(v.value, ast::Value::Null) => None,
                    Some(e) => Some(number(e, "LIMIT")?),
                };
                let offset = offset.as_ref().map(|o| number(&o.value, "OFFSET")).transpose()?;
                Ok((limit, offset))
            }
            Some(ast::LimitClause::OffsetCommaLimit { offset, limit }) => Ok((Some(number(limit, "LIMIT")?), Some(number(offset, "OFFSET")?))),
        }
    }
}
