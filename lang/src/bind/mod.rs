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

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::ir::Query;
use crate::span::{LineIndex, Span};
use crate::types::SqlType;
use sqlparser::ast;

/// Binds one parsed query. Spans in the result (and in errors) are relative
/// to `text`, the statement's own source.
pub fn bind_query(catalog: &Catalog, text: &str, query: &ast::Query) -> Result<Query> {
    let binder = Binder { catalog, index: LineIndex::new(text), text_len: text.len(), expr_depth: std::cell::Cell::new(0) };
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
    expr_depth: std::cell::Cell<usize>,
}

/// Deeper expressions are refused: every later stage recurses over them.
pub(crate) const MAX_EXPR_DEPTH: usize = 64;

/// What a query sees from its surroundings: the CTEs in scope (innermost
/// last) and how deeply it is nested.
#[derive(Debug, Clone, Default)]
pub(crate) struct Env {
    pub ctes: Vec<(String, Query)>,
    pub depth: usize,
}

const MAX_DEPTH: usize = 48;

impl Env {
    fn nested(&self) -> Result<Env> {
        if self.depth >= MAX_DEPTH {
            return Err(Error::invalid("the query is nested too deeply", None));
        }
        Ok(Env { ctes: self.ctes.clone(), depth: self.depth + 1 })
    }
}

impl Binder<'_> {
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
