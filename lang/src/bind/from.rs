//! FROM: owner tables, CTE references, derived tables and equi-joins.
//!
//! Refused here: table functions and file paths (`read_csv('x')`), LATERAL,
//! comma/CROSS/RIGHT/FULL/SEMI/ANTI joins, and join conditions that are not
//! conjunctions of equalities between the two sides.

use super::expr::ExprCtx;
use super::{Binder, Env, Scope, ScopeLeaf};
use crate::error::{Error, Result};
use crate::ir::{BinaryOp, Expr, ExprKind, FromItem, JoinKind, Query};
use crate::span::Span;
use sqlparser::ast;

/// Hands out slot numbers to the leaves of one SELECT block.
#[derive(Default)]
pub(crate) struct Slots(usize);

impl Slots {
    fn next(&mut self) -> usize {
        self.0 += 1;
        self.0 - 1
    }
}

impl Binder<'_> {
    /// Binds a block's FROM list into one item and the scope it provides.
    pub(crate) fn from(&self, from: &[ast::TableWithJoins], env: &Env, span: Span) -> Result<Option<(FromItem, Scope)>> {
        match from {
            [] => Ok(None),
            [one] => {
                let mut slots = Slots::default();
                let mut scope = Scope::default();
                let item = self.table_with_joins(one, env, &mut slots, &mut scope)?;
                Ok(Some((item, scope)))
            }
            [_, second, ..] => Err(Error::unsupported(
                "comma-separated FROM lists (cross joins)",
                "join tables with JOIN ... ON a.key = b.key",
                Some(self.span_of(&second.relation, span)),
            )),
        }
    }

    fn table_with_joins(&self, twj: &ast::TableWithJoins, env: &Env, slots: &mut Slots, scope: &mut Scope) -> Result<FromItem> {
        let mut item = self.factor(&twj.relation, env, slots, scope)?;
        for join in &twj.joins {
            let span = self.span_of(join, self.whole());
            let left_slots: Vec<usize> = item.leaves().iter().filter_map(|l| l.slot()).collect();
            let (kind, constraint) = match &join.join_operator {
                ast::JoinOperator::Join(c) | ast::JoinOperator::Inner(c) => (JoinKind::Inner, c),
                ast::JoinOperator::Left(c) | ast::JoinOperator::LeftOuter(c) => (JoinKind::Left, c),
                other => {
                    let name = match other {
                        ast::JoinOperator::Right(_) | ast::JoinOperator::RightOuter(_) => "RIGHT JOIN",
                        ast::JoinOperator::FullOuter(_) => "FULL JOIN",
                        ast::JoinOperator::CrossJoin(_) => "CROSS JOIN",
                        ast::JoinOperator::Semi(_) | ast::JoinOperator::LeftSemi(_) | ast::JoinOperator::RightSemi(_) => "SEMI JOIN",
                        ast::JoinOperator::Anti(_) | ast::JoinOperator::LeftAnti(_) | ast::JoinOperator::RightAnti(_) => "ANTI JOIN",
                        ast::JoinOperator::AsOf { .. } => "ASOF JOIN",
                        ast::JoinOperator::CrossApply | ast::JoinOperator::OuterApply => "APPLY",
                        _ => "this kind of join",
                    };
                    return Err(Error::unsupported(name, "use [INNER] JOIN or LEFT JOIN with ON a.key = b.key", Some(span)));
                }
            };
            let right = self.factor(&join.relation, env, slots, scope)?;
            let right_slots: Vec<usize> = right.leaves().iter().filter_map(|l| l.slot()).collect();
            let on = match constraint {
                ast::JoinConstraint::On(cond) => {
                    let ctx = ExprCtx::new(scope, Some("JOIN conditions"));
                    let bound = self.expr(cond, ctx)?;
                    let mut pairs = Vec::new();
                    split_equalities(bound, &left_slots, &right_slots, &mut pairs)?;
                    pairs
                }
                ast::JoinConstraint::Using(names) => {
                    let mut pairs = Vec::new();
                    for name in names {
                        let col = name.to_string();
                        let col = col.trim_matches('"');
                        let left_scope = Scope { leaves: scope.leaves.iter().filter(|l| left_slots.contains(&l.slot)).cloned().collect() };
                        let right_scope = Scope { leaves: scope.leaves.iter().filter(|l| right_slots.contains(&l.slot)).cloned().collect() };
                        let ident = ast::Expr::Identifier(ast::Ident::new(col));
                        let l = self.expr(&ident, ExprCtx::new(&left_scope, Some("JOIN conditions"))).map_err(|e| at(e, span))?;
                        let r = self.expr(&ident, ExprCtx::new(&right_scope, Some("JOIN conditions"))).map_err(|e| at(e, span))?;
                        check_key_types(&l, &r, span)?;
                        if let ExprKind::Column(c) = &r.kind
                            && let Some(leaf) = scope.leaves.iter_mut().find(|leaf| leaf.slot == c.slot)
                        {
                            leaf.merged.push(c.index);
                        }
                        pairs.push((l, r));
                    }
                    pairs
                }
                _ => {
                    return Err(Error::unsupported("joins without ON", "write JOIN ... ON a.key = b.key", Some(span)));
                }
            };
            if on.is_empty() {
                return Err(Error::unsupported("joins without an equality", "write JOIN ... ON a.key = b.key", Some(span)));
            }
            item = FromItem::Join { left: Box::new(item), right: Box::new(right), kind, on, span };
        }
        Ok(item)
    }

    fn factor(&self, factor: &ast::TableFactor, env: &Env, slots: &mut Slots, scope: &mut Scope) -> Result<FromItem> {
        let span = self.span_of(factor, self.whole());
        self.charge(1, span)?;
        match factor {
            ast::TableFactor::Table { name, alias, args, with_hints, version, partitions, sample, index_hints, json_path, with_ordinality } => {
                if args.is_some() {
                    return Err(Error::unsupported(
                        format!("the table function `{name}`"),
                        "queries cannot read files or call table functions; query the owner's tables by name",
                        Some(span),
                    ));
                }
                if !with_hints.is_empty()
                    || version.is_some()
                    || !partitions.is_empty()
                    || sample.is_some()
                    || !index_hints.is_empty()
                    || json_path.is_some()
                    || *with_ordinality
                {
                    return Err(Error::unsupported("table hints, versions, partitions and samples", "name the table alone", Some(span)));
                }
                let parts: Vec<&ast::ObjectNamePart> = name.0.iter().collect();
                let [part] = parts.as_slice() else {
                    return Err(Error::UnknownTable { name: name.to_string(), span: Some(span) });
                };
                let ident = match part {
                    ast::ObjectNamePart::Identifier(i) => i,
                    _ => return Err(Error::UnknownTable { name: name.to_string(), span: Some(span) }),
                };
                let table_name = ident.value.clone();
                if ident.quote_style == Some('\'') || table_name.contains('/') || table_name.contains('.') {
                    return Err(Error::unsupported("reading files", "query the owner's tables by name (SHOW TABLES lists them)", Some(span)));
                }
                let (alias_name, alias_cols) = self.alias(alias.as_ref(), &table_name, span)?;
                // CTEs shadow catalog tables; the innermost wins.
                if let Some(cte) = env.ctes.iter().rev().find(|c| c.name.eq_ignore_ascii_case(&table_name)) {
                    // The IR inlines a copy of the CTE at every use.
                    self.charge(cte.size.max(1), span)?;
                    let query = rename_outputs(cte.query.clone(), &alias_cols, span)?;
                    return Ok(self.push_derived(query, alias_name, Some(cte.name.clone()), alias_cols, span, slots, scope));
                }
                let table = self.catalog.table(&table_name).ok_or_else(|| Error::UnknownTable { name: table_name.clone(), span: Some(span) })?;
                if !alias_cols.is_empty() {
                    return Err(Error::unsupported("column aliases on tables", "alias the columns in SELECT", Some(span)));
                }
                let slot = slots.next();
                scope.leaves.push(ScopeLeaf {
                    slot,
                    alias: alias_name.clone(),
                    columns: table.columns.iter().map(|c| (c.name.clone(), c.ty)).collect(),
                    merged: vec![],
                });
                Ok(FromItem::Table { slot, table: table.clone(), alias: alias_name, span })
            }
            ast::TableFactor::Derived { lateral, subquery, alias, sample } => {
                if *lateral {
                    return Err(Error::unsupported("LATERAL", "use a subquery in FROM without LATERAL, or a JOIN", Some(span)));
                }
                if sample.is_some() {
                    return Err(Error::unsupported("TABLESAMPLE", "filter with WHERE instead", Some(span)));
                }
                let query = self.query(subquery, &env.nested()?)?;
                let default = format!("subquery{}", slots.0 + 1);
                let (alias_name, alias_cols) = self.alias(alias.as_ref(), &default, span)?;
                let query = rename_outputs(query, &alias_cols, span)?;
                Ok(self.push_derived(query, alias_name, None, vec![], span, slots, scope))
            }
            ast::TableFactor::NestedJoin { table_with_joins, alias } => {
                if alias.is_some() {
                    return Err(Error::unsupported("aliases on parenthesised joins", "alias the individual tables", Some(span)));
                }
                self.table_with_joins(table_with_joins, env, slots, scope)
            }
            ast::TableFactor::Function { .. } | ast::TableFactor::TableFunction { .. } => {
                Err(Error::unsupported("table functions", "queries cannot read files or call table functions; query the owner's tables by name", Some(span)))
            }
            ast::TableFactor::UNNEST { .. } => Err(Error::unsupported("UNNEST", "query the owner's tables by name", Some(span))),
            ast::TableFactor::Pivot { .. } | ast::TableFactor::Unpivot { .. } => {
                Err(Error::unsupported("PIVOT / UNPIVOT", "GROUP BY the column instead", Some(span)))
            }
            _ => Err(Error::unsupported("this kind of FROM item", "use a table name, a CTE or a subquery", Some(span))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push_derived(
        &self,
        query: Query,
        alias: String,
        cte: Option<String>,
        columns: Vec<String>,
        span: Span,
        slots: &mut Slots,
        scope: &mut Scope,
    ) -> FromItem {
        let slot = slots.next();
        scope.leaves.push(ScopeLeaf { slot, alias: alias.clone(), columns: query.output().into_iter().map(|f| (f.name, f.ty)).collect(), merged: vec![] });
        FromItem::Derived { slot, query: Box::new(query), alias, cte, columns, span }
    }

    fn alias(&self, alias: Option<&ast::TableAlias>, default: &str, span: Span) -> Result<(String, Vec<String>)> {
        match alias {
            None => Ok((default.to_string(), vec![])),
            Some(a) => {
                if a.columns.iter().any(|c| c.data_type.is_some()) {
                    return Err(Error::unsupported("typed column aliases", "alias columns by name only", Some(span)));
                }
                Ok((a.name.value.clone(), a.columns.iter().map(|c| c.name.value.clone()).collect()))
            }
        }
    }
}

fn at(e: Error, span: Span) -> Error {
    match e {
        Error::UnknownColumn { name, .. } => Error::UnknownColumn { name, span: Some(span) },
        other => other,
    }
}

/// Renames a query's output columns (`AS t(a, b)` or `WITH t(a, b) AS`).
pub(crate) fn rename_outputs(mut query: Query, names: &[String], span: Span) -> Result<Query> {
    if names.is_empty() {
        return Ok(query);
    }
    let width = query.output().len();
    if names.len() != width {
        return Err(Error::invalid(format!("{} column names given for {width} columns", names.len()), Some(span)));
    }
    fn rename(body: &mut crate::ir::SetExpr, names: &[String]) {
        match body {
            crate::ir::SetExpr::Select(s) => {
                for (item, name) in s.projection.iter_mut().filter(|i| !i.sort_only).zip(names) {
                    item.name = name.clone();
                }
            }
            crate::ir::SetExpr::Union { left, .. } => rename(left, names),
            crate::ir::SetExpr::Query(q) => rename(&mut q.body, names),
        }
    }
    rename(&mut query.body, names);
    Ok(query)
}

fn check_key_types(l: &Expr, r: &Expr, span: Span) -> Result<()> {
    if l.ty.unify(r.ty).is_none() {
        return Err(Error::invalid(format!("join keys have different types ({} and {})", l.ty, r.ty), Some(span)));
    }
    Ok(())
}

fn slots_of(e: &Expr) -> Vec<usize> {
    e.column_refs().iter().map(|c| c.slot).collect()
}

/// Splits `a = b AND c = d ...` into (left-side, right-side) key pairs.
fn split_equalities(e: Expr, left: &[usize], right: &[usize], out: &mut Vec<(Expr, Expr)>) -> Result<()> {
    let span = e.span;
    match e.kind {
        ExprKind::Binary { op: BinaryOp::And, left: a, right: b } => {
            split_equalities(*a, left, right, out)?;
            split_equalities(*b, left, right, out)
        }
        ExprKind::Binary { op: BinaryOp::Eq, left: a, right: b } => {
            let (sa, sb) = (slots_of(&a), slots_of(&b));
            let side = |s: &[usize], of: &[usize]| !s.is_empty() && s.iter().all(|x| of.contains(x));
            let (l, r) = if side(&sa, left) && side(&sb, right) {
                (*a, *b)
            } else if side(&sa, right) && side(&sb, left) {
                (*b, *a)
            } else {
                return Err(Error::unsupported(
                    "this join condition",
                    "each equality must compare a column of the left side with one of the right side; filter with WHERE",
                    Some(span),
                ));
            };
            check_key_types(&l, &r, span)?;
            out.push((l, r));
            Ok(())
        }
        _ => Err(Error::unsupported("non-equi join conditions", "join on equalities (a.key = b.key AND ...) and filter with WHERE", Some(span))),
    }
}
