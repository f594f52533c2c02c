//! Structural equality and hashing of the IR (`==`, `Eq`, `Hash`).
//!
//! Two IR trees are equal when they have the same shape, the same types and
//! the same values, whatever text they were bound from:
//!
//! - **Spans are not compared** (nor hashed): they say where a node came
//!   from, not what it is. The same expression written twice in a statement
//!   (in SELECT and in GROUP BY, say) is one expression; a query printed
//!   with its `Display` and bound again equals the original.
//! - **Floats compare by bit pattern** ([`f64::to_bits`]): `NaN` equals a
//!   `NaN` of the same bits, and `0.0` differs from `-0.0`. This makes `==`
//!   an equivalence (so `Eq` and `Hash` hold) and keeps literals that print
//!   differently apart.
//! - **Catalog tables compare by name** (as bound, case included), not by
//!   their settings or by pointer: a query bound twice against the same
//!   catalog reads the same tables.
//!
//! The impls below destructure every struct and variant exhaustively, so a
//! field added to the IR fails to compile here until it is compared too.

use super::{Expr, FromItem, Literal, Query, Select, SetExpr};
use crate::catalog::Table;
use std::hash::{Hash, Hasher};

impl PartialEq for Literal {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Literal::Null, Literal::Null) => true,
            (Literal::Boolean(a), Literal::Boolean(b)) => a == b,
            (Literal::Integer(a), Literal::Integer(b)) => a == b,
            (Literal::Double(a), Literal::Double(b)) => a.to_bits() == b.to_bits(),
            (Literal::Text(a), Literal::Text(b)) => a == b,
            (Literal::Date(a), Literal::Date(b)) => a == b,
            (Literal::Null | Literal::Boolean(_) | Literal::Integer(_) | Literal::Double(_) | Literal::Text(_) | Literal::Date(_), _) => false,
        }
    }
}

impl Eq for Literal {}

impl Hash for Literal {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Literal::Null => {}
            Literal::Boolean(b) => b.hash(state),
            Literal::Integer(i) => i.hash(state),
            Literal::Double(x) => x.to_bits().hash(state),
            Literal::Text(s) => s.hash(state),
            Literal::Date(d) => d.hash(state),
        }
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        let Expr { kind, ty, span: _ } = self;
        *ty == other.ty && *kind == other.kind
    }
}

impl Eq for Expr {}

impl Hash for Expr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let Expr { kind, ty, span: _ } = self;
        ty.hash(state);
        kind.hash(state);
    }
}

impl PartialEq for Query {
    fn eq(&self, other: &Self) -> bool {
        let Query { ctes, body, order_by, limit, offset, span: _ } = self;
        *ctes == other.ctes && *body == other.body && *order_by == other.order_by && *limit == other.limit && *offset == other.offset
    }
}

impl Eq for Query {}

impl Hash for Query {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let Query { ctes, body, order_by, limit, offset, span: _ } = self;
        ctes.hash(state);
        body.hash(state);
        order_by.hash(state);
        limit.hash(state);
        offset.hash(state);
    }
}

impl PartialEq for SetExpr {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (SetExpr::Select(a), SetExpr::Select(b)) => a == b,
            (SetExpr::Union { left, right, all, span: _ }, SetExpr::Union { left: l, right: r, all: a, span: _ }) => all == a && left == l && right == r,
            (SetExpr::Query(a), SetExpr::Query(b)) => a == b,
            (SetExpr::Select(_) | SetExpr::Union { .. } | SetExpr::Query(_), _) => false,
        }
    }
}

impl Eq for SetExpr {}

impl Hash for SetExpr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            SetExpr::Select(s) => s.hash(state),
            SetExpr::Union { left, right, all, span: _ } => {
                left.hash(state);
                right.hash(state);
                all.hash(state);
            }
            SetExpr::Query(q) => q.hash(state),
        }
    }
}

impl PartialEq for Select {
    fn eq(&self, other: &Self) -> bool {
        let Select { distinct, projection, from, filter, group_by, having, aggregate, span: _ } = self;
        *distinct == other.distinct
            && *aggregate == other.aggregate
            && *projection == other.projection
            && *from == other.from
            && *filter == other.filter
            && *group_by == other.group_by
            && *having == other.having
    }
}

impl Eq for Select {}

impl Hash for Select {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let Select { distinct, projection, from, filter, group_by, having, aggregate, span: _ } = self;
        distinct.hash(state);
        projection.hash(state);
        from.hash(state);
        filter.hash(state);
        group_by.hash(state);
        having.hash(state);
        aggregate.hash(state);
    }
}

/// Tables are the same when they have the same name (see the module docs).
fn same_table(a: &Table, b: &Table) -> bool {
    std::ptr::eq(a, b) || a.name == b.name
}

impl PartialEq for FromItem {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (FromItem::Table { slot, table, alias, span: _ }, FromItem::Table { slot: s, table: t, alias: a, span: _ }) => {
                slot == s && alias == a && same_table(table, t)
            }
            (
                FromItem::Derived { slot, query, alias, cte, columns, span: _ },
                FromItem::Derived { slot: s, query: q, alias: a, cte: c, columns: cols, span: _ },
            ) => slot == s && alias == a && cte == c && columns == cols && query == q,
            (FromItem::Join { left, right, kind, on, span: _ }, FromItem::Join { left: l, right: r, kind: k, on: o, span: _ }) => {
                kind == k && left == l && right == r && on == o
            }
            (FromItem::Table { .. } | FromItem::Derived { .. } | FromItem::Join { .. }, _) => false,
        }
    }
}

impl Eq for FromItem {}

impl Hash for FromItem {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            FromItem::Table { slot, table, alias, span: _ } => {
                slot.hash(state);
                table.name.hash(state);
                alias.hash(state);
            }
            FromItem::Derived { slot, query, alias, cte, columns, span: _ } => {
                slot.hash(state);
                query.hash(state);
                alias.hash(state);
                cte.hash(state);
                columns.hash(state);
            }
            FromItem::Join { left, right, kind, on, span: _ } => {
                left.hash(state);
                right.hash(state);
                kind.hash(state);
                on.hash(state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Catalog;
    use crate::bind::bind_sql;
    use crate::span::Span;
    use crate::types::SqlType;
    use std::collections::hash_map::DefaultHasher;

    fn catalog() -> Catalog {
        crate::test_catalog::fixture_catalog()
    }

    fn hash_of(x: &impl Hash) -> u64 {
        let mut h = DefaultHasher::new();
        x.hash(&mut h);
        h.finish()
    }

    #[test]
    fn the_same_query_written_differently_is_equal_and_hashes_alike() {
        let catalog = catalog();
        let bind = |sql: &str| bind_sql(&catalog, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let a = bind("SELECT city, count(*) AS n FROM people WHERE age > 30 GROUP BY city ORDER BY 2 DESC LIMIT 3");
        let b = bind("select   CITY ,\n COUNT( * ) n from PEOPLE as people where (age > 30) group by 1 order by n desc limit 3");
        assert_ne!(a.span, b.span, "the texts differ, and so do the spans");
        assert!(a == b, "{a}\n{b}");
        assert_eq!(hash_of(&a), hash_of(&b));

        // A query bound against another catalog loaded from the same file reads the same tables.
        let other = self::catalog();
        let c = bind_sql(&other, "SELECT city, count(*) AS n FROM people WHERE age > 30 GROUP BY city ORDER BY 2 DESC LIMIT 3").unwrap();
        assert!(a == c);
    }

    #[test]
    fn any_difference_in_meaning_is_unequal() {
        let catalog = catalog();
        let bind = |sql: &str| bind_sql(&catalog, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let base = bind("SELECT age + 1 AS x FROM people p WHERE city = 'Paris' ORDER BY 1");
        for other in [
            "SELECT age + 2 AS x FROM people p WHERE city = 'Paris' ORDER BY 1",
            "SELECT age + 1.0 AS x FROM people p WHERE city = 'Paris' ORDER BY 1",
            "SELECT age - 1 AS x FROM people p WHERE city = 'Paris' ORDER BY 1",
            "SELECT age + 1 AS y FROM people p WHERE city = 'Paris' ORDER BY 1",
            "SELECT age + 1 AS x FROM people q WHERE city = 'Paris' ORDER BY 1",
            "SELECT age + 1 AS x FROM people p WHERE city = 'Lyon' ORDER BY 1",
            "SELECT age + 1 AS x FROM people p WHERE city = 'Paris' ORDER BY 1 DESC",
            "SELECT age + 1 AS x FROM people p WHERE city = 'Paris'",
            "SELECT age + 1 AS x FROM people p WHERE city = 'Paris' ORDER BY 1 LIMIT 5",
            "SELECT DISTINCT age + 1 AS x FROM people p WHERE city = 'Paris' ORDER BY 1",
            "SELECT person_id + 1 AS x FROM visits p WHERE person_id = 1 ORDER BY 1",
        ] {
            let q = bind(other);
            assert!(base != q, "{base}\nequals\n{q}");
        }
    }

    fn double(x: f64) -> Expr {
        Expr { kind: super::super::ExprKind::Literal(Literal::Double(x)), ty: SqlType::Double, span: Span::new(0, 1) }
    }

    #[test]
    fn doubles_compare_by_their_bits() {
        assert!(double(0.5) == double(0.5));
        assert!(double(0.0) != double(-0.0), "0.0 and -0.0 print differently");
        assert!(double(f64::NAN) == double(f64::NAN), "equality is reflexive, NaN included");
        assert_eq!(hash_of(&double(f64::NAN)), hash_of(&double(f64::NAN)));
        assert!(double(f64::NAN) != double(-f64::NAN));
        assert!(Literal::Double(1.0) != Literal::Integer(1));
        // Spans do not count.
        let mut moved = double(0.5);
        moved.span = Span::new(10, 20);
        assert!(moved == double(0.5));
        assert_eq!(hash_of(&moved), hash_of(&double(0.5)));
    }
}
