//! The evidence plan: what the check decided a statement must carry, and the
//! only instructions the lowering takes.
//!
//! The lowering (`crate::lower`) reads no policy setting from the catalog: it
//! does not look at whether a table is public, at its privacy unit, its k or
//! its bounds. It asks the [`Evidence`] for each scan. An `Evidence` is built
//! only here, from a query that passed [`crate::check::check`]:
//!
//! - a scan is [`ScanPlan::Public`] only if the owner declared its table
//!   public: that is the proof a plain (unprotected) read needs;
//! - every other scan is [`ScanPlan::Protected`], with the unit column, the
//!   table's k and the clamp bounds of its columns;
//! - a scan the plan does not name fails the lowering (closed, never plain).

use crate::check::{Level, Verdict};
use crate::error::{Error, Result, Rule};
use safe_data_lang::catalog::Table;
use safe_data_lang::ir::visit::{Visitor, walk_from_item};
use safe_data_lang::ir::{Expr, FromItem, Query};
use safe_data_lang::span::Span;
use std::collections::HashMap;
use std::ops::ControlFlow;

/// How the lowering reads one scan of a table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ScanPlan {
    /// A public table, read as written.
    Public,
    /// A protected table: its unit is carried to count people, and its
    /// bounded columns are clamped.
    Protected(ProtectedScan),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProtectedScan {
    /// The source column that names a person (it may be hidden).
    pub(crate) unit: String,
    /// The table's threshold.
    pub(crate) k: u64,
    /// Per visible column, by index: the owner's bounds, which the scan clamps to.
    pub(crate) clamps: Vec<Option<(f64, f64)>>,
}

/// One scan of a query: slots are numbered per scope, so a slot alone does
/// not name a scan; with the table and where the statement names it, it does
/// (a CTE used twice is the same scan twice, with the same plan).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ScanKey {
    slot: usize,
    table: String,
    span: (usize, usize),
}

impl ScanKey {
    fn new(slot: usize, table: &Table, span: Span) -> ScanKey {
        ScanKey { slot, table: table.name.to_ascii_lowercase(), span: (span.start, span.end) }
    }
}

/// The plan the lowering obeys for one checked query.
#[derive(Debug, Clone)]
pub(crate) struct Evidence {
    level: Level,
    scans: HashMap<ScanKey, ScanPlan>,
    /// The strictest k of the protected tables read (the owner's default
    /// when none is read): what notices and EXPLAIN name.
    min_group_size: u64,
}

impl Evidence {
    /// The plan for `query`, which passed the check with `verdict`.
    /// `default_k` is the owner's global `min_group_size`.
    pub(crate) fn for_query(query: &Query, verdict: &Verdict, default_k: u64) -> Result<Evidence> {
        let mut scans = HashMap::new();
        visit_query(query, &mut |slot, table, span| {
            let plan = if table.public {
                ScanPlan::Public
            } else {
                let unit = table
                    .privacy_unit
                    .clone()
                    .ok_or_else(|| Error::refused(Rule::Shape, format!("table `{}` has no privacy unit; the data owner must declare one", table.name), None))?;
                ScanPlan::Protected(ProtectedScan { unit, k: table.min_group_size, clamps: table.columns.iter().map(|c| c.bounds).collect() })
            };
            let key = ScanKey::new(slot, table, span);
            if scans.get(&key).is_some_and(|known| *known != plan) {
                return Err(Error::refused(Rule::Shape, "internal error: one scan planned two ways", Some(span)));
            }
            scans.insert(key, plan);
            Ok(())
        })?;
        let protected_k = scans.values().filter_map(|s| if let ScanPlan::Protected(p) = s { Some(p.k) } else { None }).max();
        let any_protected = protected_k.is_some();
        // The check's level and the scans must agree: a public level with a
        // protected scan, or the reverse, is a bug that must not run.
        if (verdict.level == Level::Public) == any_protected {
            return Err(Error::refused(Rule::Shape, "internal error: the policy check and the plan disagree", Some(query.span)));
        }
        Ok(Evidence { level: verdict.level, scans, min_group_size: protected_k.unwrap_or(default_k) })
    }

    pub(crate) fn level(&self) -> Level {
        self.level
    }

    /// The plan of the scan of `table` in `slot` at `span`; `None` (never
    /// planned) fails the lowering.
    pub(crate) fn scan(&self, slot: usize, table: &Table, span: Span) -> Option<&ScanPlan> {
        self.scans.get(&ScanKey::new(slot, table, span))
    }

    pub(crate) fn min_group_size(&self) -> u64 {
        self.min_group_size
    }
}

/// Calls `f` on every table scan of `q`, through subqueries, CTEs, joins
/// and unions (the IR's one traversal, `safe_data_lang::ir::visit`).
fn visit_query(q: &Query, f: &mut dyn FnMut(usize, &Table, Span) -> Result<()>) -> Result<()> {
    struct Scans<'f>(&'f mut dyn FnMut(usize, &Table, Span) -> Result<()>);
    impl<'ir> Visitor<'ir> for Scans<'_> {
        type Break = Error;
        fn visit_from_item(&mut self, item: &'ir FromItem) -> ControlFlow<Error> {
            if let FromItem::Table { slot, table, span, .. } = item
                && let Err(e) = (self.0)(*slot, table, *span)
            {
                return ControlFlow::Break(e);
            }
            walk_from_item(self, item)
        }
        // Expressions hold no scans (the IR has no subqueries in expressions).
        fn visit_expr(&mut self, _: &'ir Expr) -> ControlFlow<Error> {
            ControlFlow::Continue(())
        }
    }
    match Scans(f).visit_query(q) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CancelFlag, Limits};
    use crate::sources::{Catalog, Guard};
    use safe_data_lang::bind::bind_sql;

    fn catalog() -> Catalog {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lang/tests/fixtures/safe-data.toml");
        Catalog::load(&path).unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()))
    }

    fn plan(catalog: &Catalog, sql: &str) -> Result<Evidence> {
        let query = bind_sql(catalog, sql).expect("binds");
        let verdict = crate::check::check(&query)?;
        Evidence::for_query(&query, &verdict, catalog.config.min_group_size)
    }

    #[test]
    fn a_protected_scan_carries_its_unit_k_and_clamps() {
        let catalog = catalog();
        let evidence = plan(&catalog, "SELECT grp, SUM(val) FROM secret GROUP BY grp").unwrap();
        assert_eq!(evidence.level(), Level::Aggregated);
        assert_eq!(evidence.min_group_size(), 2);
        let plans: Vec<&ScanPlan> = evidence.scans.values().collect();
        let [ScanPlan::Protected(p)] = plans[..] else { panic!("one protected scan expected: {plans:?}") };
        assert_eq!((p.unit.as_str(), p.k), ("pid", 2));
        // pid, grp, val: only val has bounds.
        assert_eq!(p.clamps, vec![None, None, Some((0.0, 100.0))]);
    }

    #[test]
    fn only_public_tables_are_planned_public_also_through_subqueries_and_joins() {
        let catalog = catalog();
        let evidence =
            plan(&catalog, "SELECT p.city, COUNT(*) FROM people p JOIN (SELECT person_id FROM visits) v ON p.id = v.person_id GROUP BY p.city").unwrap();
        assert_eq!(evidence.level(), Level::Public);
        assert_eq!(evidence.scans.len(), 2);
        assert!(evidence.scans.values().all(|s| *s == ScanPlan::Public));
    }

    #[test]
    fn the_same_slot_in_two_scopes_is_two_scans() {
        let catalog = catalog();
        // `secret` and `people` are both slot 0 of their own SELECT.
        let evidence = plan(&catalog, "SELECT n FROM (SELECT COUNT(*) AS n FROM secret) s UNION ALL SELECT COUNT(*) FROM people").unwrap();
        let protected = evidence.scans.values().filter(|s| matches!(s, ScanPlan::Protected(_))).count();
        let public = evidence.scans.values().filter(|s| **s == ScanPlan::Public).count();
        assert_eq!((protected, public), (1, 1), "{:?}", evidence.scans);
    }

    #[test]
    fn a_check_and_plan_that_disagree_refuse() {
        let catalog = catalog();
        let query = bind_sql(&catalog, "SELECT grp, COUNT(*) FROM secret GROUP BY grp").unwrap();
        let lying = Verdict { level: Level::Public };
        let err = Evidence::for_query(&query, &lying, 2).unwrap_err();
        assert_eq!(err.rule(), Some(Rule::Shape));
    }

    #[test]
    fn a_scan_the_plan_does_not_name_is_never_read() {
        let catalog = catalog();
        let query = bind_sql(&catalog, "SELECT grp, COUNT(*) FROM secret GROUP BY grp").unwrap();
        let empty = Evidence { level: Level::Aggregated, scans: HashMap::new(), min_group_size: 2 };
        let guard = Guard { cancel: CancelFlag::new(), limits: Limits::time_only(std::time::Duration::from_secs(30)) };
        let Err(err) = crate::lower::lower_query(&query, &empty, &catalog, &guard) else { panic!("lowered a scan the plan does not name") };
        assert_eq!(err.kind(), "ExecutionError", "{err}");
    }
}
