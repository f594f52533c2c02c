//! Data-driven tests of the dialect: every `tests/cases/*.test` file holds
//! cases of the form
//!
//! ```text
//! # <case name>
//! <SQL, possibly several lines>
//! ----
//! <expected>
//! ```
//!
//! where `<expected>` is either the result (a header line of column names
//! joined by `|`, then one line per row, `NULL` for nulls) or
//! `error: <Kind>: <substring of the message>`. Cases run against the
//! fixtures in `tests/fixtures` (see `safe-data.toml` there): public tables,
//! run through the policy (`Policy::run`, the only way to run a statement).
//!
//! When a case's SQL has no `ORDER BY`, rows are compared as a multiset (SQL
//! does not define their order); otherwise in order.
//!
//! All failures are collected and reported together in one panic.

use safe_data_lang::bind::bind_sql;
use safe_data_lang::ir::Query;
use safe_data_lang::parse::{Statement, parse_cell};
use safe_data_lang::value::Value;
use safe_data_policy::{CancelFlag, Catalog, Outcome as Run, Policy, Requester};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The fewest cases the suite may hold (a guard against a broken parser).
const MIN_CASES: usize = 150;

struct Case {
    file: String,
    line: usize,
    name: String,
    sql: String,
    expected: Vec<String>,
}

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn catalog() -> Catalog {
    let path = tests_dir().join("fixtures").join("safe-data.toml");
    match Catalog::load(&path) {
        Ok(c) => c,
        Err(e) => panic!("cannot load {}: {e}", path.display()),
    }
}

/// Parses one `.test` file into its cases.
fn parse_cases(file: &str, text: &str) -> Vec<Case> {
    let lines: Vec<&str> = text.lines().collect();
    // A block starts at a `# ` line at the top of the file or after a blank line.
    let starts: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].starts_with("# ") && (i == 0 || lines[i - 1].trim().is_empty())).collect();
    let mut cases = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(lines.len());
        let block = &lines[start..end];
        let name = block[0][2..].trim().to_string();
        let Some(sep) = block.iter().position(|l| l.trim_end() == "----") else {
            panic!("{file}:{}: case `{name}` has no `----` line", start + 1);
        };
        let sql = block[1..sep].join("\n").trim().to_string();
        let mut expected: Vec<String> = block[sep + 1..].iter().map(|l| l.trim_end().to_string()).collect();
        while expected.last().is_some_and(|l| l.is_empty()) {
            expected.pop();
        }
        assert!(!sql.is_empty(), "{file}:{}: case `{name}` has no SQL", start + 1);
        assert!(!expected.is_empty(), "{file}:{}: case `{name}` has no expected result", start + 1);
        cases.push(Case { file: file.to_string(), line: start + 1, name, sql, expected });
    }
    cases
}

fn load_cases() -> Vec<Case> {
    let dir = tests_dir().join("cases");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "test"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        cases.extend(parse_cases(&name, &text));
    }
    cases
}

/// What a statement gives: the result lines, or an error.
enum Outcome {
    Rows(Vec<String>),
    Error { kind: String, message: String },
}

impl Outcome {
    fn render(&self) -> String {
        match self {
            Outcome::Rows(lines) => lines.join("\n"),
            Outcome::Error { kind, message } => format!("error: {kind}: {message}"),
        }
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".to_string(),
        other => other.to_text(),
    }
}

fn policy() -> Policy {
    Policy::new(Arc::new(catalog())).unwrap_or_else(|e| panic!("cannot open the fixture audit log: {e}"))
}

/// Runs the case's statement (the last, if there are several) as the kernel does.
fn run(policy: &Policy, sql: &str) -> Outcome {
    // One SELECT per case: the binder's own errors (several statements,
    // SHOW TABLES where a query is expected) come first, as text.
    if let Err(e) = bind_sql(policy.catalog(), sql) {
        return Outcome::Error { kind: e.kind().to_string(), message: e.to_string() };
    }
    let statements = match parse_cell(sql) {
        Ok(s) => s,
        Err(e) => return Outcome::Error { kind: e.kind().to_string(), message: e.to_string() },
    };
    let who = Requester::new("dialect-tests", "dialect");
    let mut last = Outcome::Rows(vec![]);
    for statement in &statements {
        last = match policy.run(statement, &who, &CancelFlag::new()) {
            Run::Refused(e) => return Outcome::Error { kind: e.kind().to_string(), message: e.to_string() },
            Run::Released(released) => match released.text() {
                Some(text) => Outcome::Rows(text.lines().map(str::to_string).collect()),
                None => {
                    let mut lines = vec![released.columns().iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join("|")];
                    lines.extend(released.rows().iter().map(|r| r.iter().map(cell).collect::<Vec<_>>().join("|")));
                    Outcome::Rows(lines)
                }
            },
        };
    }
    last
}

fn run_guarded(policy: &Policy, sql: &str) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| run(policy, sql))) {
        Ok(o) => o,
        Err(p) => {
            let text = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Outcome::Error { kind: "PANIC".into(), message: text }
        }
    }
}

fn has_order_by(sql: &str) -> bool {
    sql.split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_uppercase().contains("ORDER BY")
}

/// Whether `got` matches the case's expectation.
fn matches(case: &Case, got: &Outcome) -> bool {
    let first = &case.expected[0];
    if let Some(rest) = first.strip_prefix("error: ") {
        let (kind, sub) = rest.split_once(": ").unwrap_or((rest, ""));
        let mut sub = sub.to_string();
        for more in &case.expected[1..] {
            sub.push('\n');
            sub.push_str(more);
        }
        return match got {
            Outcome::Error { kind: k, message } => k == kind && message.contains(sub.as_str()),
            Outcome::Rows(_) => false,
        };
    }
    match got {
        Outcome::Error { .. } => false,
        Outcome::Rows(lines) => {
            if lines.len() != case.expected.len() || lines[0] != case.expected[0] {
                return false;
            }
            let mut a: Vec<&String> = lines[1..].iter().collect();
            let mut b: Vec<&String> = case.expected[1..].iter().collect();
            if !has_order_by(&case.sql) {
                a.sort();
                b.sort();
            }
            a == b
        }
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

#[test]
fn star_on_a_protected_table_lists_only_the_visible_columns() {
    let catalog = catalog();
    let query = bind_sql(&catalog, "SELECT * FROM secret").expect("binds");
    let names: Vec<String> = query.output().into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["pid", "grp", "val"]);
}

#[test]
fn dialect_cases() {
    let policy = policy();
    let cases = load_cases();
    let mut failures = Vec::new();
    for case in &cases {
        let got = run_guarded(&policy, &case.sql);
        if !matches(case, &got) {
            failures.push(format!(
                "{}:{}: {}\n  sql:\n{}\n  expected:\n{}\n  got:\n{}",
                case.file,
                case.line,
                case.name,
                indent(&case.sql),
                indent(&case.expected.join("\n")),
                indent(&got.render())
            ));
        }
    }
    let total = cases.len();
    let failed = failures.len();
    eprintln!("dialect cases: {total} total, {} passed, {failed} failed", total - failed);
    assert!(total >= MIN_CASES, "only {total} cases found; expected at least {MIN_CASES}");
    if !failures.is_empty() {
        panic!("{failed} of {total} dialect cases failed:\n\n{}", failures.join("\n\n"));
    }
}

/// Why a bound query does not round-trip: its IR printed as SQL does not
/// bind, binds to another tree (compared structurally, spans aside: see
/// `safe_data_lang::ir`), or prints differently the second time.
fn round_trip(catalog: &Catalog, query: &Query) -> Option<String> {
    let printed = query.to_string();
    match catch_unwind(AssertUnwindSafe(|| bind_sql(catalog, &printed))) {
        Ok(Ok(again)) if again != *query => Some(format!(
            "  printed:\n{}\n  binds to another tree:\n{}\n  than the original:\n{}",
            indent(&printed),
            indent(&format!("{again:#?}")),
            indent(&format!("{query:#?}"))
        )),
        Ok(Ok(again)) => {
            let reprinted = again.to_string();
            (reprinted != printed).then(|| format!("  printed:\n{}\n  printed again:\n{}", indent(&printed), indent(&reprinted)))
        }
        Ok(Err(e)) => Some(format!("  printed:\n{}\n  does not bind: {}: {e}", indent(&printed), e.kind())),
        Err(_) => Some(format!("  printed:\n{}\n  binding it panicked", indent(&printed))),
    }
}

/// The IR of every case that binds prints as SQL that binds back to the
/// same IR (the same tree, and the same text).
#[test]
fn printed_ir_binds_to_the_same_ir() {
    let catalog = catalog();
    let cases = load_cases();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in &cases {
        let Ok(query) = bind_sql(&catalog, &case.sql) else { continue };
        checked += 1;
        if let Some(why) = round_trip(&catalog, &query) {
            failures.push(format!("{}:{}: {}\n  sql:\n{}\n{why}", case.file, case.line, case.name, indent(&case.sql)));
        }
    }
    eprintln!("round trip: {checked} bound cases checked, {} failed", failures.len());
    assert!(checked >= 100, "only {checked} cases bound; the round trip checks too little");
    if !failures.is_empty() {
        panic!("{} of {checked} printed queries do not round-trip:\n\n{}", failures.len(), failures.join("\n\n"));
    }
}

/// Statements at the edges of what the IR's SQL printing must preserve,
/// beyond the cases: signs and extremes of numbers, quoting, keywords as
/// names, nesting of joins and unions, every expression form.
#[test]
fn printed_ir_of_edge_cases_binds_to_the_same_ir() {
    let catalog = catalog();
    let statements = [
        // Numbers: signs, zero, extremes, exponents.
        "SELECT -1 AS a, - 2.5 AS b, -0.0 AS c, 0.0 AS d, 1e300 AS e, 1.5e-300 AS f, 123456789012345678 AS g, 0.1 + 0.2 AS h",
        "SELECT 9223372036854775807 AS a, -9223372036854775807 AS b, 9223372036854775808 AS c, 4.9e-324 AS d, 1e15 AS e, 123456789012345.5 AS f",
        "SELECT - (- age) AS a, -age * -2 AS b, age - -1 AS c FROM people",
        "SELECT WIDTH_BUCKET(score, -10, 100.5, 4) AS b, WIDTH_BUCKET(age, -1.5, -0.5, 2) AS c FROM people",
        // Strings and names that need quoting.
        "SELECT 'it''s' AS \"the \"\"quoted\"\" name\", '' AS \"select\", 'a\nb' AS \"Mixed Case\" FROM people AS \"from\"",
        "SELECT \"order\".id AS \"group\" FROM people \"order\" WHERE \"order\".name LIKE '%''%'",
        "SELECT name FROM people WHERE name ILIKE 'a%' OR name NOT LIKE '_b%' OR name NOT ILIKE '%C'",
        // Every expression form.
        "SELECT CASE sex WHEN 'F' THEN 1 WHEN 'M' THEN 2 END AS s, CASE WHEN age > 40 THEN 'old' ELSE 'young' END AS a FROM people",
        "SELECT CAST(age AS DOUBLE) AS a, CAST(score AS INTEGER) AS b, CAST(age AS VARCHAR) AS c, CAST('2020-01-02' AS DATE) AS d FROM people",
        "SELECT age IN (1, 2, 3) AS a, age NOT IN (4) AS b, age BETWEEN 10 AND 20 AS c, age NOT BETWEEN -1 AND 1 AS d FROM people",
        "SELECT city IS NULL AS a, city IS NOT NULL AS b, NOT (age > 3) AS c, TRUE AS d, FALSE AS e, NULL AS f FROM people",
        "SELECT coalesce(city, 'none') AS a, nullif(age, 3) AS b, round(score, 1) AS c, abs(-age) AS d, substr(name, 2, 3) AS e FROM people",
        "SELECT EXTRACT(year FROM born) AS y, date_trunc('month', born) AS m, date_part('day', born) AS d FROM people",
        "SELECT born FROM people WHERE born >= DATE '1990-01-01' AND born < '2000-01-01'",
        "SELECT name || '-' || city AS nc, age % 7 AS m, age / 2 AS h FROM people",
        // Aggregates.
        "SELECT count(DISTINCT city) AS a, count(city) AS b, count(*) AS c, sum(age) AS d, avg(score) AS e, stddev(age) AS f, variance(age) AS g FROM people",
        "SELECT median(age) AS a, quantile_cont(age, 0.25) AS b, percentile_cont(0.75) WITHIN GROUP (ORDER BY age) AS c, corr(age, score) AS d, covar_samp(age, score) AS e FROM people",
        "SELECT sex, count(*) AS n FROM people GROUP BY sex HAVING count(*) > 1 AND max(age) < 100 ORDER BY count(*) DESC, sex NULLS FIRST",
        "SELECT age / 10 AS decade, count(*) AS n FROM people GROUP BY age / 10 ORDER BY 1 DESC NULLS LAST LIMIT 3 OFFSET 1",
        "SELECT DISTINCT city FROM people ORDER BY city DESC",
        "SELECT name FROM people ORDER BY age + 1, score",
        // Joins, derived tables, CTEs, unions.
        "SELECT count(*) AS n FROM people a JOIN visits b USING (id)",
        "SELECT a.name, c.cost FROM people a LEFT JOIN (visits b JOIN visits c ON b.id = c.id) ON a.id = b.person_id AND a.id = c.person_id",
        "SELECT a.name FROM people a JOIN visits b ON b.person_id = a.id LEFT JOIN people c ON c.id = b.person_id",
        "WITH t(x, y) AS (SELECT id, age FROM people), u AS (SELECT x FROM t WHERE y > 30) SELECT u.x, v.x AS x2 FROM u JOIN t AS v(x, z) ON u.x = v.x",
        "WITH unused AS (SELECT id FROM visits) SELECT 1 AS one",
        "(SELECT id FROM people ORDER BY id LIMIT 2) UNION ALL (SELECT id FROM visits UNION SELECT person_id FROM visits) ORDER BY 1",
        "SELECT x FROM (SELECT id AS x FROM people UNION ALL SELECT id FROM visits) t WHERE x > 3 ORDER BY x LIMIT 5",
        "SELECT * FROM (SELECT * FROM (SELECT id, name FROM people) a) b",
    ];
    let mut failures = Vec::new();
    for sql in statements {
        match bind_sql(&catalog, sql) {
            Err(e) => failures.push(format!("{sql}\n  does not bind: {}: {e}", e.kind())),
            Ok(query) => {
                if let Some(why) = round_trip(&catalog, &query) {
                    failures.push(format!("{sql}\n{why}"));
                }
            }
        }
    }
    if !failures.is_empty() {
        panic!("{} of {} edge cases do not round-trip:\n\n{}", failures.len(), statements.len(), failures.join("\n\n"));
    }
}

#[test]
fn parse_cell_splits_statements_with_offsets() {
    let cell = "SELECT 1 AS a;\n  SELECT 'x;y' AS b ;\n\nSHOW TABLES;;  DESCRIBE people";
    let parsed = parse_cell(cell).expect("the cell parses");
    assert_eq!(parsed.len(), 4, "{parsed:?}");
    let expected = [("SELECT 1 AS a", 0), ("SELECT 'x;y' AS b", 17), ("SHOW TABLES", 38), ("DESCRIBE people", 53)];
    for (p, (text, offset)) in parsed.iter().zip(expected) {
        assert_eq!(p.text, text);
        assert_eq!(p.offset, offset, "offset of `{text}`");
        assert_eq!(&cell[p.offset..p.offset + p.text.len()], text);
    }
    assert!(matches!(parsed[0].statement, Statement::Query(_)));
    assert!(matches!(parsed[1].statement, Statement::Query(_)));
    assert!(matches!(parsed[2].statement, Statement::ShowTables));
    assert!(matches!(&parsed[3].statement, Statement::Describe { table, .. } if table == "people"));

    // Every statement binds and runs on its own.
    let catalog = catalog();
    for p in &parsed[..2] {
        let q = bind_sql(&catalog, &p.text).expect("binds");
        assert_eq!(q.output().len(), 1);
    }

    // An error in a later statement points into the cell, not the statement.
    let cell = "SELECT 1;\nSELEC name FROM people";
    let err = parse_cell(cell).unwrap_err();
    assert_eq!(err.kind(), "SyntaxError");
    let span = err.span().expect("a syntax error has a span");
    assert!(span.start >= 10 && span.start <= cell.len(), "span {span:?} is not inside the second statement");

    // DDL in a cell is refused by name.
    let err = parse_cell("SELECT 1; DROP TABLE people").unwrap_err();
    assert_eq!(err.kind(), "UnsupportedError");
    assert!(err.to_string().starts_with("DROP TABLE"), "{err}");
    assert!(err.span().is_some_and(|s| s.start == 10), "{:?}", err.span());
}

/// A hidden column and a column that does not exist give the same error,
/// wherever they appear: same kind, same text (but for the name), same place.
#[test]
fn hidden_column_is_indistinguishable_from_a_missing_one() {
    let catalog = catalog();
    let templates = [
        "SELECT {c} FROM secret",
        "SELECT s.{c} FROM secret s",
        "SELECT grp FROM secret WHERE {c} = 'x'",
        "SELECT count(*) FROM secret GROUP BY {c}",
        "SELECT grp FROM secret ORDER BY {c}",
        "SELECT count(DISTINCT {c}) FROM secret",
        "SELECT grp FROM secret GROUP BY grp HAVING max({c}) = 'x'",
        "SELECT count(*) FROM secret a JOIN secret b ON a.{c} = b.pid",
        "SELECT count(*) FROM secret a JOIN secret b USING ({c})",
        "SELECT t.{c} FROM (SELECT * FROM secret) t",
        "WITH w AS (SELECT * FROM secret) SELECT {c} FROM w",
        "SELECT lower({c}) FROM secret",
        "SELECT CASE WHEN {c} IS NULL THEN 1 END FROM secret",
    ];
    let mut failures = Vec::new();
    for t in templates {
        let hidden = bind_sql(&catalog, &t.replace("{c}", "ssn")).err();
        let missing = bind_sql(&catalog, &t.replace("{c}", "nosuch")).err();
        let (Some(h), Some(m)) = (hidden, missing) else {
            failures.push(format!("{t}: both must fail to bind"));
            continue;
        };
        let same = h.kind() == m.kind()
            && h.kind() == "NameError"
            && h.to_string().replace("ssn", "{c}") == m.to_string().replace("nosuch", "{c}")
            && h.span().map(|s| s.start) == m.span().map(|s| s.start);
        if !same {
            failures.push(format!("{t}:\n  hidden:  {}: {h} at {:?}\n  missing: {}: {m} at {:?}", h.kind(), h.span(), m.kind(), m.span()));
        }
    }
    assert!(failures.is_empty(), "hidden and missing columns differ:\n{}", failures.join("\n"));
}

#[test]
fn case_files_parse() {
    let cases = parse_cases("inline", "# first\nSELECT 1\n----\na\n1\n\n# second\nSELECT\n  2\n----\nerror: QueryError: x\n");
    assert_eq!(cases.len(), 2);
    assert_eq!(cases[0].name, "first");
    assert_eq!(cases[0].expected, vec!["a", "1"]);
    assert_eq!(cases[1].sql, "SELECT\n  2");
    assert_eq!(cases[1].expected, vec!["error: QueryError: x"]);
}
