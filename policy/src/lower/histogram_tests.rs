//! Histograms rewritten on the IR (`safe_data_lang::chart::histogram_query`)
//! and run: the bins, the values outside the range, the edges.

use crate::engine::{self, CancelFlag, Limits};
use crate::sources::{Catalog, Guard};
use safe_data_lang::Result;
use safe_data_lang::bind::{bind_query, bind_sql};
use safe_data_lang::chart::{Chart, histogram_query};
use safe_data_lang::ir::Query;
use safe_data_lang::parse::{Statement, parse_statement};
use safe_data_lang::value::Value;

fn catalog() -> Catalog {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lang/tests/fixtures/safe-data.toml");
    Catalog::load(&path).unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()))
}

/// The histogram query of a CHART HISTOGRAM statement, and its chart.
fn rewrite(catalog: &Catalog, statement: &str) -> Result<(Query, Chart)> {
    let Statement::Chart { spec, query, text } = parse_statement(statement)? else { panic!("not a chart: {statement}") };
    let bound = bind_query(catalog, &text, &query)?;
    histogram_query(&spec, &bound)
}

/// The rows of a query run as is (public tables), as text lines.
fn run(query: &Query) -> Vec<String> {
    let catalog = catalog();
    let guard = Guard { cancel: CancelFlag::new(), limits: Limits::time_only(std::time::Duration::from_secs(30)) };
    let (_, lowered) = crate::check_and_lower(&catalog, query, &guard).expect("checks and lowers");
    let df = engine::collect(lowered.frame, &guard.cancel, guard.limits).expect("runs");
    let types: Vec<_> = lowered.output.iter().map(|f| f.ty).collect();
    let mut lines = vec![lowered.output.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join("|")];
    for row in engine::rows_of(&df, &types, &(0..df.height()).collect::<Vec<_>>()) {
        lines.push(row.iter().map(|v| if *v == Value::Null { "NULL".into() } else { v.to_text() }).collect::<Vec<_>>().join("|"));
    }
    lines
}

#[test]
fn values_outside_the_range_are_counted_apart() {
    let catalog = catalog();
    // Ages 19 (below 20) and 60 (at max) are not merged into the first and last bins.
    let (q, chart) = rewrite(&catalog, "CHART HISTOGRAM (bins = 4, min = 20, max = 60) SELECT age FROM people").unwrap();
    assert_eq!(
        run(&q),
        vec!["bin_start|bin_end|count|bin", "NULL|20.0|1|0", "20.0|30.0|3|1", "30.0|40.0|3|2", "40.0|50.0|3|3", "50.0|60.0|1|4", "60.0|NULL|1|5",]
    );
    let bins = chart.bins.unwrap();
    assert_eq!((bins.field.as_str(), bins.count, bins.min_group_size), ("bin", 4, None));
    assert_eq!(bins.edges, vec![20.0, 30.0, 40.0, 50.0, 60.0]);
}

#[test]
fn a_subquery_in_from_and_ctes_are_rewritten_on_the_ir() {
    let catalog = catalog();
    let expected = vec!["bin_start|bin_end|count|bin", "20.0|40.0|6|1", "40.0|60.0|4|2", "60.0|NULL|1|3"];
    for sql in [
        "CHART HISTOGRAM (bins = 2, min = 20, max = 60) SELECT a FROM (SELECT age AS a FROM people WHERE age >= 20) s",
        "CHART HISTOGRAM (bins = 2, min = 20, max = 60)\nSELECT s.a FROM (SELECT age AS a FROM people) AS s WHERE s.a >= 20 ORDER BY 1",
        "CHART HISTOGRAM (bins = 2, min = 20, max = 60) WITH c AS (SELECT age FROM people) SELECT age FROM c WHERE age >= 20",
        "CHART HISTOGRAM (bins = 2, min = 20, max = 60) SELECT age FROM people WHERE age >= 20 -- a comment",
    ] {
        let (q, _) = rewrite(&catalog, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(run(&q), expected, "{sql}");
        // The SQL text of the rewrite binds back to the same query.
        let again = bind_sql(&catalog, &q.to_string()).unwrap_or_else(|e| panic!("{sql}: {e}\n{q}"));
        assert_eq!(again.to_string(), q.to_string());
        assert!(again == q, "{sql}: the rewrite and its text bound again differ:\n{q:#?}\n{again:#?}");
    }
}

#[test]
fn edges_print_as_written() {
    let catalog = catalog();
    let (q, chart) = rewrite(&catalog, "CHART HISTOGRAM (bins = 5, min = 0, max = 3) SELECT age / 20 FROM people").unwrap();
    let edges: Vec<String> = chart.bins.unwrap().edges.iter().map(|e| e.to_string()).collect();
    assert_eq!(edges, ["0", "0.6", "1.2", "1.8", "2.4", "3"]);
    let rows = run(&q);
    assert!(rows.contains(&"0.6|1.2|2|2".to_string()), "{rows:?}");
    assert!(rows.iter().all(|r| !r.contains("0000000")), "{rows:?}");
    // Negative and decimal edges; 0.1 steps.
    let (_, chart) = rewrite(&catalog, "CHART HISTOGRAM (bins = 7, min = -0.3, max = 0.4) SELECT score FROM people").unwrap();
    let edges: Vec<String> = chart.bins.unwrap().edges.iter().map(|e| e.to_string()).collect();
    assert_eq!(edges, ["-0.3", "-0.2", "-0.1", "0", "0.1", "0.2", "0.3", "0.4"]);
}

#[test]
fn bounds_and_k_come_through_subqueries() {
    let catalog = catalog();
    let (_, chart) = rewrite(&catalog, "CHART HISTOGRAM (bins = 4) SELECT v FROM (SELECT val AS v FROM secret) s").unwrap();
    let bins = chart.bins.unwrap();
    assert_eq!(bins.edges, vec![0.0, 25.0, 50.0, 75.0, 100.0]);
    assert_eq!(bins.min_group_size, Some(2));
    let err = rewrite(&catalog, "CHART HISTOGRAM SELECT age FROM people").unwrap_err();
    assert!(err.to_string().contains("min = ... and max = ..."), "{err}");
}

#[test]
fn shape_errors() {
    let catalog = catalog();
    for (sql, fragment) in [
        ("CHART HISTOGRAM (min = 0, max = 1) SELECT age, score FROM people", "one numeric column"),
        ("CHART HISTOGRAM (min = 0, max = 1) SELECT name FROM people", "needs a numeric column"),
        ("CHART HISTOGRAM (min = 1, max = 1) SELECT age FROM people", "min must be below its max"),
        ("CHART HISTOGRAM (min = 0, max = 1, bins = 0) SELECT age FROM people", "`bins` is a whole number"),
    ] {
        let err = rewrite(&catalog, sql).unwrap_err();
        assert!(err.to_string().contains(fragment), "{sql}: {err}");
    }
}

#[test]
fn rewrites_print_as_sql_that_binds_to_the_same_ir() {
    let catalog = catalog();
    for spec in [
        "bins = 4, min = 20, max = 60",
        "bins = 4, min = -10, max = 60",
        "bins = 3, min = -0.5, max = -0.25",
        "bins = 7, min = -0.1234567890123, max = 1e10",
        "bins = 2, min = -1e300, max = 1e300",
    ] {
        for query in ["SELECT age FROM people", "SELECT score - 50 AS s FROM people ORDER BY 1 LIMIT 5"] {
            let sql = format!("CHART HISTOGRAM ({spec}) {query}");
            let (q, _) = rewrite(&catalog, &sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let again = bind_sql(&catalog, &q.to_string()).unwrap_or_else(|e| panic!("{sql}: {e}\n{q}"));
            assert!(again == q, "{sql}: the rewrite and its text bound again differ:\n{q}\n{again}\n{q:#?}\n{again:#?}");
            assert_eq!(run(&again), run(&q), "{sql}");
        }
    }
}
