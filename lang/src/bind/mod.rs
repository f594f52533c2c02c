//! Binding: resolve names and types in a sqlparser AST and build the typed IR.
//!
//! Split by clause, like DataFusion's SQL planner: [`query`] (WITH, set
//! operations, ORDER BY, LIMIT), [`select`] (one SELECT block: projection,
//! WHERE, GROUP BY, HAVING), [`from`] (tables, joins, derived tables),
//! [`expr`] (expressions) and [`functions`] (the function registry).
//!
//! The binder is an allow-list: every AST node it does not know is refused
//! with the construct's name and a span. It knows nothing of the policy: it
//! does not decide what may be released, only what the SQL means. Hidden
//! columns are invisible to it (see [`crate::catalog`]), so a hidden column
//! cannot reach the IR in any form.

mod expr;
pub use expr::parse_date;
mod from;
pub mod functions;
mod query;
mod select;
pub use select::{MAX_GROUP_KEYS, MAX_SELECT_ITEMS, MAX_SORT_KEYS};

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::ir::Query;
use crate::span::{LineIndex, Span};
use crate::types::SqlType;
use sqlparser::ast;
use std::cell::Cell;
use std::rc::Rc;

/// Binds one parsed query. Spans in the result (and in errors) are relative
/// to `text`, the statement's own source.
pub fn bind_query(catalog: &Catalog, text: &str, query: &ast::Query) -> Result<Query> {
    let binder = Binder { catalog, index: LineIndex::new(text), text_len: text.len(), expr_depth: Cell::new(0), work: Cell::new(0) };
    binder.query(query, &Env::default())
}

/// Binds a statement's text end to end (parse + bind); handy for tests and tools.
pub fn bind_sql(catalog: &Catalog, text: &str) -> Result<Query> {
    match crate::parse::parse_statement(text)? {
        crate::parse::Statement::Query(q) | crate::parse::Statement::Explain(q) => bind_query(catalog, text, &q),
        _ => Err(Error::invalid("expected a SELECT query", Some(Span::new(0, text.len())))),
    }
}

pub(crate) struct Binder<'a> {
    catalog: &'a Catalog,
    index: LineIndex,
    text_len: usize,
    /// Nesting depth of the expression being bound.
    expr_depth: Cell<usize>,
    /// The size of the IR built so far, in [`MAX_STATEMENT_SIZE`]'s units.
    work: Cell<usize>,
}

/// Deeper expressions are refused: every later stage recurses over them.
pub(crate) const MAX_EXPR_DEPTH: usize = 64;

/// How deeply queries may nest (subqueries, CTE bodies, UNION operands).
pub const MAX_QUERY_DEPTH: usize = 48;

/// The most tables one WITH clause may define.
pub const MAX_CTES: usize = 64;

/// The largest statement the binder builds, in parts: every expression
/// node, SELECT block and FROM item counts one, and every use of a CTE counts
/// the whole of the CTE again (the IR inlines a copy of it, and every later
/// stage, the policy check, the lowering and the polars plan, works on each
/// copy). It bounds the work per statement after parsing, which is also what
/// keeps a WITH chain whose tables each use the previous one twice from
/// doubling at every link.
pub const MAX_STATEMENT_SIZE: usize = 20_000;

/// One table of a WITH clause, bound once, shared by the scopes that see it.
#[derive(Debug)]
pub(crate) struct Cte {
    pub name: String,
    pub query: Query,
    /// Its size in [`MAX_STATEMENT_SIZE`]'s units, charged again at every use.
    pub size: usize,
}

/// What a query sees from its surroundings: the CTEs in scope (innermost
/// last) and how deeply it is nested. Cloned for every nested query: the
/// CTEs are shared, never copied (a WITH chain bound in linear time).
#[derive(Debug, Clone, Default)]
pub(crate) struct Env {
    pub ctes: Vec<Rc<Cte>>,
    pub depth: usize,
}

impl Env {
    fn nested(&self) -> Result<Env> {
        if self.depth >= MAX_QUERY_DEPTH {
            return Err(Error::invalid(
                format!("the query nests more than {MAX_QUERY_DEPTH} queries deep (subqueries, CTEs, UNION operands); flatten it"),
                None,
            ));
        }
        Ok(Env { ctes: self.ctes.clone(), depth: self.depth + 1 })
    }
}

impl Binder<'_> {
    /// Counts `parts` more of the statement's IR; refuses the statement past
    /// [`MAX_STATEMENT_SIZE`].
    pub(crate) fn charge(&self, parts: usize, span: Span) -> Result<()> {
        let total = self.work.get().saturating_add(parts);
        self.work.set(total);
        if total > MAX_STATEMENT_SIZE {
            return Err(Error::invalid(
                format!(
                    "this statement is too large: it makes more than {MAX_STATEMENT_SIZE} expressions, blocks and tables (every use of a CTE counts its whole query again); simplify it or split it into several statements"
                ),
                Some(span),
            ));
        }
        Ok(())
    }

    /// The byte span of an AST node, or `fallback` when sqlparser has none.
    fn span_of(&self, node: &impl ast::Spanned, fallback: Span) -> Span {
        self.index.span(node.span()).unwrap_or(fallback)
    }

    fn whole(&self) -> Span {
        Span::new(0, self.text_len)
    }
}

/// One relation visible in a SELECT block's scope.
#[derive(Debug, Clone)]
pub(crate) struct ScopeLeaf {
    pub slot: usize,
    pub alias: String,
    pub columns: Vec<(String, SqlType)>,
    /// Columns merged into the left side by `JOIN ... USING`: reachable
    /// only qualified, and not part of `*`.
    pub merged: Vec<usize>,
}

/// The relations a SELECT block's expressions can reference.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    pub leaves: Vec<ScopeLeaf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::on_small_stack;
    use std::sync::{Arc, mpsc};
    use std::time::Duration;

    fn catalog() -> Arc<Catalog> {
        Arc::new(crate::test_catalog::fixture_catalog())
    }

    /// Parses and binds `text` on its own thread; fails if that takes longer
    /// than a minute (a hang guard: these bind in milliseconds).
    fn bind_guarded(catalog: &Arc<Catalog>, text: String) -> Result<Query> {
        let catalog = catalog.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || {
                let _ = tx.send(bind_sql(&catalog, &text));
            })
            .expect("spawning a thread");
        rx.recv_timeout(Duration::from_secs(60)).expect("binding took more than a minute")
    }

    /// `WITH c0 AS (...), c1 AS (SELECT ... FROM c0), ...`: `links` tables,
    /// each using the one before once (`uses` 1) or twice (a self-join).
    fn with_chain(links: usize, uses: usize) -> String {
        let mut text = String::from("WITH c0 AS (SELECT sex, age FROM people)");
        for i in 1..links {
            let p = i - 1;
            text.push_str(&match uses {
                1 => format!(", c{i} AS (SELECT x.sex, x.age FROM c{p} x)"),
                _ => format!(", c{i} AS (SELECT x.sex, x.age FROM c{p} x JOIN c{p} y ON x.sex = y.sex)"),
            });
        }
        text.push_str(&format!(" SELECT sex, COUNT(*) AS n FROM c{} GROUP BY sex", links - 1));
        text
    }

    #[test]
    fn a_with_chain_is_bounded_and_binds_in_linear_time() {
        let catalog = catalog();
        // Issue 20, finding 12: 3,000 links took ~45 min (every nested query
        // cloned every CTE bound so far): refused at once.
        let err = bind_guarded(&catalog, with_chain(3000, 1)).unwrap_err();
        assert!(err.to_string().contains(&format!("at most {MAX_CTES} tables")), "{err}");
        assert!(err.span().is_some());
        // The most a WITH clause may hold binds.
        let q = bind_guarded(&catalog, with_chain(MAX_CTES, 1)).unwrap();
        assert_eq!(q.ctes.len(), MAX_CTES);
    }

    #[test]
    fn copies_of_ctes_count_towards_the_statement_size() {
        let catalog = catalog();
        // Each table joins the previous one with itself: the IR doubles at
        // every link (2^40 copies of c0 in the last).
        let err = bind_guarded(&catalog, with_chain(40, 2)).unwrap_err();
        assert!(err.to_string().contains(&format!("more than {MAX_STATEMENT_SIZE}")), "{err}");
        // A few doublings are fine.
        bind_guarded(&catalog, with_chain(6, 2)).unwrap();
    }

    #[test]
    fn wide_statements_are_bounded() {
        let catalog = catalog();
        let items = |n: usize| vec!["age"; n].join(", ");
        let q = bind_guarded(&catalog, format!("SELECT {} FROM people", items(MAX_SELECT_ITEMS))).unwrap();
        // Repeated names get distinct suffixes (in linear time).
        let names: std::collections::HashSet<String> = q.output().into_iter().map(|f| f.name).collect();
        assert_eq!(names.len(), MAX_SELECT_ITEMS);
        assert!(names.contains("age") && names.contains(&format!("age_{}", MAX_SELECT_ITEMS - 1)));
        let err = bind_guarded(&catalog, format!("SELECT {} FROM people", items(MAX_SELECT_ITEMS + 1))).unwrap_err();
        assert!(err.to_string().contains(&format!("at most {MAX_SELECT_ITEMS} columns")), "{err}");
        // `*` of a join of wide subqueries counts after expansion.
        let wide = format!("(SELECT {} FROM people)", items(MAX_SELECT_ITEMS / 2 + 1));
        let err = bind_guarded(&catalog, format!("SELECT * FROM {wide} a JOIN {wide} b ON a.age = b.age")).unwrap_err();
        assert!(err.to_string().contains(&format!("at most {MAX_SELECT_ITEMS} columns")), "{err}");
        let keys = |n: usize| (1..=n).map(|i| format!("age + {i}")).collect::<Vec<_>>().join(", ");
        bind_guarded(&catalog, format!("SELECT COUNT(*) FROM people GROUP BY {}", keys(MAX_GROUP_KEYS))).unwrap();
        let err = bind_guarded(&catalog, format!("SELECT COUNT(*) FROM people GROUP BY {}", keys(MAX_GROUP_KEYS + 1))).unwrap_err();
        assert!(err.to_string().contains(&format!("at most {MAX_GROUP_KEYS} keys")), "{err}");
        let err = bind_guarded(&catalog, format!("SELECT age FROM people ORDER BY {}", keys(MAX_SORT_KEYS + 1))).unwrap_err();
        assert!(err.to_string().contains(&format!("at most {MAX_SORT_KEYS} keys")), "{err}");
        // Statement size: many items, each a long (flat) IN list.
        let list = vec!["1"; 5000].join(", ");
        let err = bind_guarded(&catalog, format!("SELECT {} FROM people", vec![format!("age IN ({list})"); 5].join(", "))).unwrap_err();
        assert!(err.to_string().contains(&format!("more than {MAX_STATEMENT_SIZE}")), "{err}");
    }

    #[test]
    fn the_deepest_statements_bind_on_a_small_stack() {
        // The binder's own bounds (expressions, nested queries) refuse before
        // its recursion needs more than a tokio worker's stack.
        let catalog = catalog();
        let deep_expr = format!("SELECT {}age{} FROM people", "abs(".repeat(MAX_EXPR_DEPTH + 1), ")".repeat(MAX_EXPR_DEPTH + 1));
        let deep_query = format!("SELECT * FROM {}people{}", "(SELECT * FROM ".repeat(MAX_QUERY_DEPTH + 1), ") s".repeat(MAX_QUERY_DEPTH + 1));
        for text in [deep_expr, deep_query] {
            let err = on_small_stack(|| bind_sql(&catalog, &text).unwrap_err());
            assert!(err.to_string().contains("nest"), "{err}");
        }
    }
}
