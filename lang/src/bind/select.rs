//! One SELECT block: projection (with `*` expansion), WHERE, GROUP BY
//! (expressions, output aliases, ordinals), HAVING, and the block's ORDER BY
//! keys, which may add sort-only columns.
//!
//! Grouping rules are checked here: in an aggregating block every column
//! outside an aggregate must be (part of) a GROUP BY expression.

use super::expr::{ExprCtx, expect_type};
use super::{Binder, Env, Scope};
use crate::error::{Error, Result};
use crate::ir::visit::Step;
use crate::ir::{Expr, ExprKind, Literal, OrderKey, Select, SelectItem};
use crate::span::Span;
use sqlparser::ast;
use std::collections::{HashMap, HashSet};

/// The most columns one SELECT block may output (after `*` is expanded).
pub const MAX_SELECT_ITEMS: usize = 1024;
/// The most GROUP BY keys of one SELECT block.
pub const MAX_GROUP_KEYS: usize = 128;
/// The most ORDER BY keys of one query.
pub const MAX_SORT_KEYS: usize = 128;

impl Binder<'_> {
    /// Binds a SELECT block together with the ORDER BY of its query.
    pub(crate) fn select(&self, s: &ast::Select, order_by: &[ast::OrderByExpr], env: &Env) -> Result<(Select, Vec<OrderKey>)> {
        let span = self.span_of(s, self.whole());
        self.charge(1, span)?;
        refuse_select_extras(s, span)?;
        let distinct = match &s.distinct {
            None | Some(ast::Distinct::All) => false,
            Some(ast::Distinct::Distinct) => true,
            Some(ast::Distinct::On(_)) => return Err(Error::unsupported("DISTINCT ON", "use GROUP BY", Some(span))),
        };
        let (from, scope) = match self.from(&s.from, env, span)? {
            Some((item, scope)) => (Some(item), scope),
            None => (None, Scope::default()),
        };

        let filter = match &s.selection {
            Some(w) => {
                let e = self.expr(w, ExprCtx::new(&scope, Some("WHERE (use HAVING)")))?;
                expect_type(&e, crate::types::SqlType::Boolean, "WHERE")?;
                Some(e)
            }
            None => None,
        };

        let too_many_items = || Error::invalid(format!("a SELECT may have at most {MAX_SELECT_ITEMS} columns (after expanding *)"), Some(span));
        if s.projection.len() > MAX_SELECT_ITEMS {
            return Err(too_many_items());
        }
        let mut projection = self.projection(&s.projection, &scope, span)?;
        if projection.len() > MAX_SELECT_ITEMS {
            return Err(too_many_items());
        }
        distinct_names(&mut projection);

        let group_by = match &s.group_by {
            ast::GroupByExpr::Expressions(exprs, modifiers) => {
                if !modifiers.is_empty() {
                    return Err(Error::unsupported("ROLLUP / CUBE / GROUPING SETS", "run one GROUP BY per grouping", Some(span)));
                }
                if let Some(extra) = exprs.get(MAX_GROUP_KEYS) {
                    return Err(Error::invalid(format!("GROUP BY may have at most {MAX_GROUP_KEYS} keys"), Some(self.span_of(extra, span))));
                }
                exprs.iter().map(|g| self.group_key(g, &scope, &projection)).collect::<Result<Vec<_>>>()?
            }
            ast::GroupByExpr::All(_) => {
                return Err(Error::unsupported("GROUP BY ALL", "list the grouping columns", Some(span)));
            }
        };

        let having = match &s.having {
            Some(h) => {
                let e = self.expr(h, ExprCtx::new(&scope, None))?;
                expect_type(&e, crate::types::SqlType::Boolean, "HAVING")?;
                Some(e)
            }
            None => None,
        };

        let aggregate = !group_by.is_empty() || having.is_some() || projection.iter().any(|i| i.expr.contains_aggregate());
        let mut select = Select { distinct, projection, from, filter, group_by, having, aggregate, span };
        let keys = self.order_keys(order_by, &mut select, &scope)?;

        if select.aggregate {
            let keys: HashSet<&Expr> = select.group_by.iter().collect();
            for item in &select.projection {
                check_grouped(&item.expr, &keys)?;
            }
            if let Some(h) = &select.having {
                check_grouped(h, &keys)?;
            }
        }
        Ok((select, keys))
    }

    fn projection(&self, items: &[ast::SelectItem], scope: &Scope, span: Span) -> Result<Vec<SelectItem>> {
        let mut out = Vec::new();
        for item in items {
            match item {
                ast::SelectItem::UnnamedExpr(e) => {
                    let bound = self.expr(e, ExprCtx::new(scope, None))?;
                    let name = default_name(e, &bound);
                    out.push(SelectItem { expr: bound, name, sort_only: false });
                }
                ast::SelectItem::ExprWithAlias { expr, alias } => {
                    let bound = self.expr(expr, ExprCtx::new(scope, None))?;
                    out.push(SelectItem { expr: bound, name: alias.value.clone(), sort_only: false });
                }
                ast::SelectItem::ExprWithAliases { .. } => {
                    return Err(Error::unsupported("multiple aliases", "give each column one alias", Some(self.span_of(item, span))));
                }
                ast::SelectItem::Wildcard(options) | ast::SelectItem::QualifiedWildcard(_, options) => {
                    let item_span = self.span_of(item, span);
                    if options.opt_exclude.is_some()
                        || options.opt_except.is_some()
                        || options.opt_replace.is_some()
                        || options.opt_rename.is_some()
                        || options.opt_ilike.is_some()
                    {
                        return Err(Error::unsupported("wildcard options", "list the columns you want", Some(item_span)));
                    }
                    let qualifier = match item {
                        ast::SelectItem::QualifiedWildcard(ast::SelectItemQualifiedWildcardKind::ObjectName(n), _) => {
                            Some(n.to_string().trim_matches('"').to_string())
                        }
                        ast::SelectItem::QualifiedWildcard(_, _) => {
                            return Err(Error::unsupported("this wildcard", "write t.* or *", Some(item_span)));
                        }
                        _ => None,
                    };
                    let mut any = false;
                    for leaf in &scope.leaves {
                        if qualifier.as_ref().is_some_and(|q| !leaf.alias.eq_ignore_ascii_case(q)) {
                            continue;
                        }
                        any = true;
                        self.charge(leaf.columns.len(), item_span)?;
                        for (index, (name, ty)) in leaf.columns.iter().enumerate() {
                            if qualifier.is_none() && leaf.merged.contains(&index) {
                                continue;
                            }
                            out.push(SelectItem {
                                expr: Expr {
                                    kind: ExprKind::Column(crate::ir::ColumnRef { slot: leaf.slot, index, qualifier: leaf.alias.clone(), name: name.clone() }),
                                    ty: *ty,
                                    span: item_span,
                                },
                                name: name.clone(),
                                sort_only: false,
                            });
                        }
                    }
                    if !any {
                        return Err(match qualifier {
                            Some(q) => Error::UnknownTable { name: q, span: Some(item_span) },
                            None => Error::invalid("SELECT * needs a FROM clause", Some(item_span)),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// A GROUP BY item: an input expression, an output alias, or an ordinal.
    fn group_key(&self, g: &ast::Expr, scope: &Scope, projection: &[SelectItem]) -> Result<Expr> {
        let span = self.span_of(g, self.whole());
        if let Some(i) = ordinal(g) {
            let item =
                projection.get(i.wrapping_sub(1)).ok_or_else(|| Error::invalid(format!("GROUP BY position {i} is not in the select list"), Some(span)))?;
            if item.expr.contains_aggregate() {
                return Err(Error::invalid("cannot GROUP BY an aggregate", Some(span)));
            }
            return Ok(item.expr.clone());
        }
        match self.expr(g, ExprCtx::new(scope, Some("GROUP BY"))) {
            Ok(e) => Ok(e),
            Err(err @ Error::UnknownColumn { .. }) => {
                if let ast::Expr::Identifier(id) = g
                    && let Some(item) = projection.iter().find(|i| i.name.eq_ignore_ascii_case(&id.value))
                {
                    if item.expr.contains_aggregate() {
                        return Err(Error::invalid("cannot GROUP BY an aggregate", Some(span)));
                    }
                    return Ok(item.expr.clone());
                }
                Err(err)
            }
            Err(e) => Err(e),
        }
    }

    /// Resolves ORDER BY keys to output columns, adding sort-only columns
    /// for expressions that are not in the select list.
    fn order_keys(&self, order_by: &[ast::OrderByExpr], select: &mut Select, scope: &Scope) -> Result<Vec<OrderKey>> {
        if let Some(extra) = order_by.get(MAX_SORT_KEYS) {
            return Err(Error::invalid(format!("ORDER BY may have at most {MAX_SORT_KEYS} keys"), Some(self.span_of(&extra.expr, self.whole()))));
        }
        let mut keys = Vec::new();
        let visible = select.projection.iter().filter(|i| !i.sort_only).count();
        for o in order_by {
            let span = self.span_of(&o.expr, self.whole());
            let (descending, nulls_first) = order_options(o, span)?;
            let column = if let Some(i) = ordinal(&o.expr) {
                if i == 0 || i > visible {
                    return Err(Error::invalid(format!("ORDER BY position {i} is not in the select list"), Some(span)));
                }
                i - 1
            } else if let Some(i) = match &o.expr {
                ast::Expr::Identifier(id) => select.projection.iter().position(|p| !p.sort_only && p.name.eq_ignore_ascii_case(&id.value)),
                _ => None,
            } {
                i
            } else {
                let e = self.expr(&o.expr, ExprCtx::new(scope, if select.aggregate { None } else { Some("ORDER BY of a query without GROUP BY") }))?;
                match select.projection.iter().position(|p| p.expr == e) {
                    Some(i) => i,
                    None => {
                        if select.distinct {
                            return Err(Error::invalid("with SELECT DISTINCT, ORDER BY expressions must appear in the select list", Some(span)));
                        }
                        select.projection.push(SelectItem { name: format!("__sort{}", keys.len()), expr: e, sort_only: true });
                        select.projection.len() - 1
                    }
                }
            };
            keys.push(OrderKey { column, descending, nulls_first });
        }
        Ok(keys)
    }
}

pub(crate) fn order_options(o: &ast::OrderByExpr, span: Span) -> Result<(bool, bool)> {
    if o.with_fill.is_some() {
        return Err(Error::unsupported("WITH FILL", "order by plain expressions", Some(span)));
    }
    let descending = match &o.options.sort {
        None | Some(ast::OrderBySort::Asc) => false,
        Some(ast::OrderBySort::Desc) => true,
        Some(ast::OrderBySort::Using(_)) => return Err(Error::unsupported("ORDER BY ... USING", "write ASC or DESC", Some(span))),
    };
    Ok((descending, o.options.nulls_first.unwrap_or(false)))
}

/// `GROUP BY 1` / `ORDER BY 2`: a plain positive integer literal.
pub(crate) fn ordinal(e: &ast::Expr) -> Option<usize> {
    match e {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::Number(n, _) => n.parse::<usize>().ok(),
            _ => None,
        },
        _ => None,
    }
}

fn default_name(source: &ast::Expr, bound: &Expr) -> String {
    match (&bound.kind, source) {
        (ExprKind::Column(c), _) => c.name.clone(),
        (ExprKind::Aggregate { func, .. }, _) => func.sql_name().to_ascii_lowercase(),
        (ExprKind::Scalar { func, .. }, _) => format!("{func:?}").to_ascii_lowercase(),
        (ExprKind::Literal(Literal::Text(_)), _) | (_, _) => {
            let text = source.to_string();
            if text.len() > 40 { format!("{}…", &text[..text.char_indices().nth(39).map(|(i, _)| i).unwrap_or(text.len())]) } else { text }
        }
    }
}

/// Makes the output names distinct, as DuckDB does: a name already taken
/// (ignoring case) gets the first free `_1`, `_2`, ... suffix, so
/// `QUANTILE_CONT(x, 0.25), QUANTILE_CONT(x, 0.75)` are `quantile_cont` and
/// `quantile_cont_1`. A result keyed by column name (a data resource, JSON
/// objects) would otherwise keep only one of them.
///
/// Linear: names are only ever added to the taken set, so the search for a
/// name's suffix resumes where the previous one for that name stopped.
pub(crate) fn distinct_names(items: &mut [SelectItem]) {
    let mut taken: HashSet<String> = HashSet::new();
    let mut next_suffix: HashMap<String, usize> = HashMap::new();
    for item in items.iter_mut().filter(|i| !i.sort_only) {
        let lower = item.name.to_lowercase();
        if taken.insert(lower.clone()) {
            continue;
        }
        let suffix = next_suffix.entry(lower).or_insert(1);
        let name = loop {
            let candidate = format!("{}_{suffix}", item.name);
            *suffix += 1;
            if !taken.contains(&candidate.to_lowercase()) {
                break candidate;
            }
        };
        taken.insert(name.to_lowercase());
        item.name = name;
    }
}

/// In an aggregating block: every column outside an aggregate must be inside
/// a GROUP BY expression (one of `group_by`, compared structurally).
pub(crate) fn check_grouped(e: &Expr, group_by: &HashSet<&Expr>) -> Result<()> {
    e.try_walk(|x| match &x.kind {
        ExprKind::Aggregate { .. } | ExprKind::Literal(_) => Step::Prune,
        _ if group_by.contains(x) => Step::Prune,
        ExprKind::Column(c) => Step::Stop(Error::invalid(format!("column `{}` must appear in GROUP BY or be used inside an aggregate", c.name), Some(x.span))),
        _ => Step::Descend,
    })
}

fn refuse_select_extras(s: &ast::Select, span: Span) -> Result<()> {
    let refuse = |what: &str| Err(Error::unsupported(what.to_string(), "this is not part of the dialect", Some(span)));
    if s.top.is_some() {
        return refuse("TOP");
    }
    if s.into.is_some() {
        return refuse("SELECT INTO");
    }
    if !s.lateral_views.is_empty() {
        return refuse("LATERAL VIEW");
    }
    if s.prewhere.is_some() {
        return refuse("PREWHERE");
    }
    if !s.connect_by.is_empty() {
        return refuse("CONNECT BY");
    }
    if !s.cluster_by.is_empty() || !s.distribute_by.is_empty() || !s.sort_by.is_empty() {
        return refuse("CLUSTER/DISTRIBUTE/SORT BY");
    }
    if !s.named_window.is_empty() || s.qualify.is_some() {
        return Err(Error::unsupported("window functions (WINDOW / QUALIFY)", "aggregate with GROUP BY instead", Some(span)));
    }
    if s.value_table_mode.is_some() || s.exclude.is_some() || s.select_modifiers.is_some() || !s.optimizer_hints.is_empty() {
        return refuse("this SELECT modifier");
    }
    Ok(())
}
