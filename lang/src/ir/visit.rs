//! The one traversal of the IR.
//!
//! A [`Visitor`] has a method per node kind, each of which by default calls
//! the matching `walk_*` function, which visits the node's children. To find
//! something, override the methods for the nodes you look at; call the
//! `walk_*` function from an override to go on into the node's children, or
//! leave it out to skip them. Every method returns a [`ControlFlow`]: return
//! `ControlFlow::Break(b)` to stop the whole walk (its value comes back from
//! the outermost call), `ControlFlow::Continue(())` to go on.
//!
//! What the walk visits, in order:
//!
//! - [`Query`]: its body. Not its `ctes`: they are copies kept for display,
//!   and every use of a CTE is inlined where it is read as a
//!   [`FromItem::Derived`], which the walk does visit. (An override of
//!   [`Visitor::visit_query`] can look at `ctes` if it needs to.) ORDER BY
//!   keys are positions in the body's output, not expressions.
//! - [`SetExpr`]: a `SELECT` block, both sides of a `UNION` (left first), or a
//!   parenthesised query.
//! - [`Select`]: in the order of the SQL text: the projection (sort-only
//!   items included), FROM, WHERE, GROUP BY, HAVING.
//! - [`FromItem`]: nothing below a table; the query of a derived table; the
//!   left side of a join, its right side, then each `ON` pair (left key,
//!   right key).
//! - [`Expr`]: its sub-expressions in the order they are written (the same
//!   order as [`Expr::children`]).
//!
//! For the common cases there are closure helpers: [`Expr::walk`] (every
//! sub-expression), [`Expr::any`] (stops at the first match),
//! [`Expr::try_walk`] (skip sub-trees, stop with an error),
//! [`Expr::column_refs`], and [`Query::tables`] (the tables a query reads).
//!
//! ```
//! use safe_data_lang::ir::visit::{Visitor, walk_select};
//! use safe_data_lang::ir::{Query, Select};
//! use std::ops::ControlFlow;
//!
//! /// Counts the SELECT blocks of a query, nested ones included.
//! struct Blocks(usize);
//!
//! impl<'ir> Visitor<'ir> for Blocks {
//!     type Break = std::convert::Infallible;
//!     fn visit_select(&mut self, select: &'ir Select) -> ControlFlow<Self::Break> {
//!         self.0 += 1;
//!         walk_select(self, select)
//!     }
//! }
//!
//! fn blocks(query: &Query) -> usize {
//!     let mut v = Blocks(0);
//!     let _ = v.visit_query(query);
//!     v.0
//! }
//! ```

use super::{ColumnRef, Expr, ExprKind, FromItem, Query, Select, SetExpr};
use crate::catalog::Table;
use std::convert::Infallible;
use std::ops::ControlFlow;

/// A walk over the IR; see [the module docs](self).
pub trait Visitor<'ir> {
    /// What stops the walk early (`()` to stop without a value,
    /// [`Infallible`] for a walk that never stops).
    type Break;

    fn visit_query(&mut self, query: &'ir Query) -> ControlFlow<Self::Break> {
        walk_query(self, query)
    }

    fn visit_set_expr(&mut self, set: &'ir SetExpr) -> ControlFlow<Self::Break> {
        walk_set_expr(self, set)
    }

    fn visit_select(&mut self, select: &'ir Select) -> ControlFlow<Self::Break> {
        walk_select(self, select)
    }

    fn visit_from_item(&mut self, item: &'ir FromItem) -> ControlFlow<Self::Break> {
        walk_from_item(self, item)
    }

    fn visit_expr(&mut self, expr: &'ir Expr) -> ControlFlow<Self::Break> {
        walk_expr(self, expr)
    }
}

/// Visits the query's body (not its display-only `ctes`).
pub fn walk_query<'ir, V: Visitor<'ir> + ?Sized>(v: &mut V, query: &'ir Query) -> ControlFlow<V::Break> {
    v.visit_set_expr(&query.body)
}

/// Visits a SELECT block, both sides of a UNION (left first), or a parenthesised query.
pub fn walk_set_expr<'ir, V: Visitor<'ir> + ?Sized>(v: &mut V, set: &'ir SetExpr) -> ControlFlow<V::Break> {
    match set {
        SetExpr::Select(select) => v.visit_select(select),
        SetExpr::Union { left, right, .. } => {
            v.visit_set_expr(left)?;
            v.visit_set_expr(right)
        }
        SetExpr::Query(query) => v.visit_query(query),
    }
}

/// Visits the projection (sort-only items included), FROM, WHERE, GROUP BY and HAVING.
pub fn walk_select<'ir, V: Visitor<'ir> + ?Sized>(v: &mut V, select: &'ir Select) -> ControlFlow<V::Break> {
    for item in &select.projection {
        v.visit_expr(&item.expr)?;
    }
    if let Some(from) = &select.from {
        v.visit_from_item(from)?;
    }
    if let Some(filter) = &select.filter {
        v.visit_expr(filter)?;
    }
    for key in &select.group_by {
        v.visit_expr(key)?;
    }
    if let Some(having) = &select.having {
        v.visit_expr(having)?;
    }
    ControlFlow::Continue(())
}

/// Visits a derived table's query, or a join's left side, right side and `ON` pairs.
pub fn walk_from_item<'ir, V: Visitor<'ir> + ?Sized>(v: &mut V, item: &'ir FromItem) -> ControlFlow<V::Break> {
    match item {
        FromItem::Table { .. } => ControlFlow::Continue(()),
        FromItem::Derived { query, .. } => v.visit_query(query),
        FromItem::Join { left, right, on, .. } => {
            v.visit_from_item(left)?;
            v.visit_from_item(right)?;
            for (l, r) in on {
                v.visit_expr(l)?;
                v.visit_expr(r)?;
            }
            ControlFlow::Continue(())
        }
    }
}

/// Visits the direct sub-expressions of `expr`, in the order they are written.
pub fn walk_expr<'ir, V: Visitor<'ir> + ?Sized>(v: &mut V, expr: &'ir Expr) -> ControlFlow<V::Break> {
    match &expr.kind {
        ExprKind::Column(_) | ExprKind::Literal(_) => ControlFlow::Continue(()),
        ExprKind::Unary { expr, .. } | ExprKind::Cast { expr, .. } | ExprKind::Like { expr, .. } | ExprKind::IsNull { expr, .. } => v.visit_expr(expr),
        ExprKind::Binary { left, right, .. } => {
            v.visit_expr(left)?;
            v.visit_expr(right)
        }
        ExprKind::Scalar { args, .. } | ExprKind::Aggregate { args, .. } => args.iter().try_for_each(|a| v.visit_expr(a)),
        ExprKind::Case { whens, otherwise } => {
            for (condition, result) in whens {
                v.visit_expr(condition)?;
                v.visit_expr(result)?;
            }
            match otherwise {
                Some(o) => v.visit_expr(o),
                None => ControlFlow::Continue(()),
            }
        }
        ExprKind::InList { expr, list, .. } => {
            v.visit_expr(expr)?;
            list.iter().try_for_each(|e| v.visit_expr(e))
        }
        ExprKind::Between { expr, low, high, .. } => {
            v.visit_expr(expr)?;
            v.visit_expr(low)?;
            v.visit_expr(high)
        }
    }
}

/// The direct sub-expressions of `expr`, in the order [`walk_expr`] visits them.
pub(super) fn children(expr: &Expr) -> Vec<&Expr> {
    struct Children<'ir>(Vec<&'ir Expr>);
    impl<'ir> Visitor<'ir> for Children<'ir> {
        type Break = Infallible;
        fn visit_expr(&mut self, expr: &'ir Expr) -> ControlFlow<Infallible> {
            self.0.push(expr);
            ControlFlow::Continue(())
        }
    }
    let mut v = Children(Vec::new());
    let _ = walk_expr(&mut v, expr);
    v.0
}

/// The leaves of a FROM item: the tables and derived tables joined by it,
/// left to right (not what is inside a derived table).
pub(super) fn leaves(item: &FromItem) -> Vec<&FromItem> {
    struct Leaves<'ir>(Vec<&'ir FromItem>);
    impl<'ir> Visitor<'ir> for Leaves<'ir> {
        type Break = Infallible;
        fn visit_from_item(&mut self, item: &'ir FromItem) -> ControlFlow<Infallible> {
            match item {
                FromItem::Join { .. } => walk_from_item(self, item),
                leaf => {
                    self.0.push(leaf);
                    ControlFlow::Continue(())
                }
            }
        }
        /// The `ON` keys hold no FROM items.
        fn visit_expr(&mut self, _: &'ir Expr) -> ControlFlow<Infallible> {
            ControlFlow::Continue(())
        }
    }
    let mut v = Leaves(Vec::new());
    let _ = v.visit_from_item(item);
    v.0
}

/// What [`Expr::try_walk`] does after its closure has seen an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<B> {
    /// Go on into the expression's sub-expressions.
    Descend,
    /// Skip its sub-expressions; go on with the rest.
    Prune,
    /// Stop the walk; `try_walk` returns `Err(b)`.
    Stop(B),
}

/// The visitor behind the closure helpers: calls `f` on every expression,
/// parents first, and follows its [`Step`].
struct Exprs<F>(F);

impl<'ir, B, F: FnMut(&'ir Expr) -> Step<B>> Visitor<'ir> for Exprs<F> {
    type Break = B;

    fn visit_expr(&mut self, expr: &'ir Expr) -> ControlFlow<B> {
        match (self.0)(expr) {
            Step::Descend => walk_expr(self, expr),
            Step::Prune => ControlFlow::Continue(()),
            Step::Stop(b) => ControlFlow::Break(b),
        }
    }
}

impl Expr {
    /// Calls `f` on this expression and every sub-expression, parents first,
    /// in the order they are written.
    pub fn walk<'a>(&'a self, f: &mut dyn FnMut(&'a Expr)) {
        let _ = self.try_walk(|e| -> Step<Infallible> {
            f(e);
            Step::Descend
        });
    }

    /// Calls `f` on this expression and its sub-expressions, parents first;
    /// `f` says whether to look inside the one it was given ([`Step`]). The
    /// first [`Step::Stop`] ends the walk with its value as the error.
    pub fn try_walk<'a, B>(&'a self, f: impl FnMut(&'a Expr) -> Step<B>) -> Result<(), B> {
        match Exprs(f).visit_expr(self) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(b) => Err(b),
        }
    }

    /// Whether `pred` holds for this expression or any sub-expression
    /// (parents first; stops at the first that matches).
    pub fn any(&self, mut pred: impl FnMut(&Expr) -> bool) -> bool {
        self.try_walk(|e| if pred(e) { Step::Stop(()) } else { Step::Descend }).is_err()
    }

    /// The column references in this expression, in the order they are written.
    pub fn column_refs(&self) -> Vec<&ColumnRef> {
        let mut refs = Vec::new();
        self.walk(&mut |e| {
            if let ExprKind::Column(c) = &e.kind {
                refs.push(c);
            }
        });
        refs
    }
}

/// Collects the tables of the FROM leaves.
struct Tables<'ir>(Vec<&'ir Table>);

impl<'ir> Visitor<'ir> for Tables<'ir> {
    type Break = Infallible;

    fn visit_from_item(&mut self, item: &'ir FromItem) -> ControlFlow<Self::Break> {
        if let FromItem::Table { table, .. } = item {
            self.0.push(table);
        }
        walk_from_item(self, item)
    }

    /// Expressions hold no tables (the dialect has no subqueries in expressions).
    fn visit_expr(&mut self, _: &'ir Expr) -> ControlFlow<Self::Break> {
        ControlFlow::Continue(())
    }
}

impl Query {
    /// The tables the query reads, once per FROM leaf (a table read twice is
    /// listed twice), left to right, through derived tables, CTE uses,
    /// unions and parenthesised queries. A CTE that is never used reads
    /// nothing and adds nothing.
    pub fn tables(&self) -> Vec<&Table> {
        let mut v = Tables(Vec::new());
        let _ = v.visit_query(self);
        v.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Catalog;
    use crate::bind::bind_sql;
    use crate::ir::{AggFunc, Literal};

    fn catalog() -> Catalog {
        crate::test_catalog::fixture_catalog()
    }

    fn bind(sql: &str) -> Query {
        bind_sql(&catalog(), sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Records every node the walk enters, as a short label.
    #[derive(Default)]
    struct Trace(Vec<String>);

    impl<'ir> Visitor<'ir> for Trace {
        type Break = Infallible;
        fn visit_query(&mut self, q: &'ir Query) -> ControlFlow<Self::Break> {
            self.0.push("query".into());
            walk_query(self, q)
        }
        fn visit_set_expr(&mut self, s: &'ir SetExpr) -> ControlFlow<Self::Break> {
            if let SetExpr::Union { .. } = s {
                self.0.push("union".into());
            }
            walk_set_expr(self, s)
        }
        fn visit_select(&mut self, s: &'ir Select) -> ControlFlow<Self::Break> {
            self.0.push("select".into());
            walk_select(self, s)
        }
        fn visit_from_item(&mut self, f: &'ir FromItem) -> ControlFlow<Self::Break> {
            self.0.push(match f {
                FromItem::Table { table, .. } => format!("table {}", table.name),
                FromItem::Derived { alias, .. } => format!("derived {alias}"),
                FromItem::Join { .. } => "join".into(),
            });
            walk_from_item(self, f)
        }
        fn visit_expr(&mut self, e: &'ir Expr) -> ControlFlow<Self::Break> {
            self.0.push(e.to_string());
            // Only the outermost expressions: their text holds the rest.
            ControlFlow::Continue(())
        }
    }

    fn trace(sql: &str) -> Vec<String> {
        let mut t = Trace::default();
        let _ = t.visit_query(&bind(sql));
        t.0
    }

    #[test]
    fn the_walk_visits_every_clause_in_text_order() {
        let got = trace(
            "SELECT p.city, count(*) AS n FROM people p JOIN visits v ON p.id = v.person_id \
             WHERE v.cost > 10 GROUP BY p.city HAVING count(*) > 1 ORDER BY count(*) + 1",
        );
        let want = [
            "query",
            "select",
            "p.city",
            "COUNT(*)",
            "(COUNT(*) + 1)",
            "join",
            "table people",
            "table visits",
            "p.\"id\"",
            "v.person_id",
            "(v.\"cost\" > 10)",
            "p.city",
            "(COUNT(*) > 1)",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn the_walk_enters_unions_derived_tables_and_cte_uses_but_not_the_cte_list() {
        let got = trace(
            "WITH w AS (SELECT age FROM people) \
             SELECT age FROM w UNION ALL (SELECT d.person_id FROM (SELECT person_id FROM visits) d ORDER BY 1 LIMIT 1)",
        );
        let want = [
            "query",
            "union",
            "select",
            "w.age",
            "derived w",
            "query",
            "select",
            "people.age",
            "table people",
            "query",
            "select",
            "d.person_id",
            "derived d",
            "query",
            "select",
            "visits.person_id",
            "table visits",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn a_break_stops_the_walk_and_comes_back() {
        struct FirstTable;
        impl<'ir> Visitor<'ir> for FirstTable {
            type Break = &'ir str;
            fn visit_from_item(&mut self, f: &'ir FromItem) -> ControlFlow<&'ir str> {
                match f {
                    FromItem::Table { table, .. } => ControlFlow::Break(&table.name),
                    _ => walk_from_item(self, f),
                }
            }
        }
        let q = bind("SELECT 1 AS one FROM (SELECT * FROM visits) a JOIN people b ON a.person_id = b.id");
        assert_eq!(FirstTable.visit_query(&q), ControlFlow::Break("visits"));
        let q = bind("SELECT 1 AS one");
        assert_eq!(FirstTable.visit_query(&q), ControlFlow::Continue(()));
    }

    fn projection(q: &Query) -> Vec<&Expr> {
        let SetExpr::Select(s) = &q.body else { panic!("not a SELECT: {q}") };
        s.projection.iter().map(|i| &i.expr).collect()
    }

    #[test]
    fn expression_helpers() {
        let q = bind("SELECT CASE WHEN age > 30 THEN sum(score) ELSE -1 END AS a, coalesce(age, id, 3) AS b, 2 + 3 AS c FROM people GROUP BY age, id");
        let [a, b, c] = projection(&q)[..] else { panic!("three items") };

        let mut seen = Vec::new();
        a.walk(&mut |e| seen.push(e.to_string()));
        assert_eq!(seen[0], a.to_string(), "parents first");
        assert_eq!(&seen[1..4], ["(people.age > 30)", "people.age", "30"]);
        assert!(seen.contains(&"SUM(people.score)".to_string()) && seen.contains(&"people.score".to_string()), "{seen:?}");

        assert!(a.any(|e| matches!(e.kind, ExprKind::Aggregate { func: AggFunc::Sum, .. })));
        assert!(!b.any(|e| matches!(e.kind, ExprKind::Aggregate { .. })));
        assert!(a.contains_aggregate() && !b.contains_aggregate());
        assert!(b.references_columns() && !c.references_columns());

        let names: Vec<&str> = b.column_refs().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["age", "id"]);
        assert!(c.column_refs().is_empty());

        // `any` stops at the first match.
        let mut calls = 0;
        assert!(b.any(|e| {
            calls += 1;
            matches!(e.kind, ExprKind::Column(_))
        }));
        assert_eq!(calls, 2, "the call, then its first argument");
    }

    #[test]
    fn children_and_leaves() {
        let q = bind(
            "SELECT CASE WHEN age > 1 THEN 'a' ELSE city END AS a, age BETWEEN 1 AND 2 AS b, age IN (3, 4) AS c \
             FROM people p JOIN (visits v JOIN (SELECT id FROM people) d ON v.id = d.id) ON p.id = v.person_id",
        );
        let texts = |e: &Expr| -> Vec<String> { e.children().iter().map(|c| c.to_string()).collect() };
        let [a, b, c] = projection(&q)[..] else { panic!("three items") };
        assert_eq!(texts(a), ["(p.age > 1)", "'a'", "p.city"]);
        assert_eq!(texts(b), ["p.age", "1", "2"]);
        assert_eq!(texts(c), ["p.age", "3", "4"]);
        assert!(a.children()[1].children().is_empty());

        let SetExpr::Select(s) = &q.body else { panic!("a SELECT") };
        let aliases: Vec<&str> = s
            .from
            .as_ref()
            .unwrap()
            .leaves()
            .iter()
            .map(|l| match l {
                FromItem::Table { alias, .. } | FromItem::Derived { alias, .. } => alias.as_str(),
                FromItem::Join { .. } => panic!("a join is not a leaf"),
            })
            .collect();
        assert_eq!(aliases, ["p", "v", "d"], "left to right, not into the derived table");
    }

    #[test]
    fn try_walk_prunes_and_stops() {
        let q = bind("SELECT sum(age) + max(score) * 2 AS x FROM people");
        let x = projection(&q)[0];
        // Pruned at aggregates: the columns inside are never seen.
        let mut seen = Vec::new();
        let r: Result<(), ()> = x.try_walk(|e| {
            seen.push(e.to_string());
            if matches!(e.kind, ExprKind::Aggregate { .. }) { Step::Prune } else { Step::Descend }
        });
        assert_eq!(r, Ok(()));
        assert!(!seen.iter().any(|s| s == "people.age" || s == "people.score"), "{seen:?}");
        assert!(seen.iter().any(|s| s == "2"), "{seen:?}");
        // Stopped at the first literal: its value comes back.
        let first = x.try_walk(|e| match &e.kind {
            ExprKind::Literal(Literal::Integer(i)) => Step::Stop(*i),
            _ => Step::Descend,
        });
        assert_eq!(first, Err(2));
    }

    #[test]
    fn the_deepest_statements_walk_compare_and_hash_on_a_small_stack() {
        use crate::bind::{MAX_EXPR_DEPTH, MAX_QUERY_DEPTH};
        use std::hash::{DefaultHasher, Hash, Hasher};
        let deep_expr = |d: usize| {
            let deep = format!("{}age{}", "abs(".repeat(d), ")".repeat(d));
            format!("SELECT {deep} AS a, count(*) AS n FROM people GROUP BY {deep} ORDER BY {deep}")
        };
        let deep_query = |d: usize| format!("SELECT * FROM {}people{}", "(SELECT * FROM ".repeat(d), ") s".repeat(d));
        let catalog = catalog();
        // The deepest of each shape that the parser's and the binder's bounds accept.
        let deepest = |max: usize, make: &dyn Fn(usize) -> String| -> String {
            let d = (1..=max).rev().find(|&d| bind_sql(&catalog, &make(d)).is_ok()).expect("some depth binds");
            assert!(d >= 16, "only {d} levels bind");
            make(d)
        };
        for text in [deepest(MAX_EXPR_DEPTH, &deep_expr), deepest(MAX_QUERY_DEPTH, &deep_query)] {
            crate::parse::on_small_stack(|| {
                let q = bind_sql(&catalog, &text).unwrap_or_else(|e| panic!("{e}"));
                let again = bind_sql(&catalog, &q.to_string()).unwrap_or_else(|e| panic!("{e}"));
                assert!(q == again);
                let hash = |q: &Query| {
                    let mut h = DefaultHasher::new();
                    q.hash(&mut h);
                    h.finish()
                };
                assert_eq!(hash(&q), hash(&again));
                assert_eq!(q.tables().len(), 1);
                let mut t = Trace::default();
                let _ = t.visit_query(&q);
                assert!(t.0.len() > 3);
            });
        }
    }

    #[test]
    fn tables_of_a_query() {
        let names = |sql: &str| -> Vec<String> { bind(sql).tables().iter().map(|t| t.name.clone()).collect() };
        assert_eq!(names("SELECT 1 AS one"), Vec::<String>::new());
        assert_eq!(names("SELECT * FROM people"), ["people"]);
        assert_eq!(names("SELECT count(*) AS n FROM people a JOIN visits b ON a.id = b.person_id"), ["people", "visits"]);
        // A CTE counts where it is used, once per use; an unused one reads nothing.
        assert_eq!(
            names("WITH s AS (SELECT grp FROM secret), u AS (SELECT id FROM visits) SELECT count(*) AS n FROM s x JOIN s y ON x.grp = y.grp"),
            ["secret", "secret"]
        );
        assert_eq!(names("SELECT id FROM people UNION SELECT id FROM (SELECT id FROM visits) v"), ["people", "visits"]);
    }
}
