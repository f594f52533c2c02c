//! The privacy attack suite: concrete attacks of the families in the threat
//! model (`threats.md`, families 1–9, 11 and 13) against `Policy::run`, on a
//! fixture with KNOWN individuals (see `tests/rust/fixtures/README.md`):
//!
//! - id 7: the only 99-year-old (F, North, diabetes 1, bmi 31.7, no visits);
//! - id 13: "Ada Lovelace" in the hidden `name` column (income 9 000 000);
//! - id 42: bmi 69.0, above the bounds [10, 50];
//! - id 60: the only patient of region `Isle` (bmi 27.3, six visits).
//!
//! k = 5. Every attack asserts that nothing about its target comes back:
//! the statement is refused, or the rows that would describe the target are
//! hidden (and a notice says so). Every error text and notice is checked for
//! the targets' data values. Positive controls (`control_*`) check that
//! legitimate aggregates are released with the values computed by hand.
//!
//! Tests marked `#[ignore = "known limit: ..."]` document attacks that do
//! succeed and that the design says need differential privacy; they fail
//! when run with `--ignored`.

use safe_data_lang::parse::parse_cell;
use safe_data_lang::value::Value;
use safe_data_policy::CancelFlag;
use safe_data_policy::{NoticeKind, Policy, Released, Requester, Rule};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const K: i64 = 5;
const TOTAL_PEOPLE: i64 = 60;
/// SUM(bmi) over everyone, bmi clamped to [10, 50] (by hand, see the fixture README).
const TOTAL_BMI: f64 = 1609.8;
const BMI_OF_99_YEAR_OLD: f64 = 31.7;
const BMI_OF_ISLE_PATIENT: f64 = 27.3;

/// Values of the targets that must never appear in an error text or a
/// notice (unless the attacker typed them into the statement).
const SECRETS: &[&str] = &["Ada", "Lovelace", "69.0", "31.7", "27.3", "23.4", "9000000", "5000"];

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

fn fixtures() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/rust/fixtures");
    std::fs::canonicalize(&p).unwrap_or(p)
}

static LABS: AtomicUsize = AtomicUsize::new(0);

/// A policy over the fixture with its own state dir (audit log) and config.
struct Lab {
    policy: Policy,
    dir: PathBuf,
}

#[derive(Debug)]
struct Refusal {
    rule: Option<Rule>,
    kind: String,
    text: String,
}

impl Lab {
    fn new() -> Lab {
        Lab::with_server(1000, 30)
    }

    fn with_server(max_rows: usize, timeout_s: u64) -> Lab {
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("sd-attacks-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fx = fixtures();
        let fx = fx.display();
        let state = dir.join("state");
        let state = state.display();
        let toml = format!(
            r#"
[server]
display_name = "attack lab"
state_dir = '{state}'
max_rows = {max_rows}
query_timeout_s = {timeout_s}

[policy]
min_group_size = {K}

[tables.patients]
source = '{fx}/patients.csv'
description = "One row per patient, with known individuals"
privacy_unit = "patient_id"
join_keys = ["patient_id", "region"]

[tables.patients.columns]
patient_id = {{ role = "identifier" }}
name       = {{ role = "hidden" }}
sex        = {{ role = "dimension" }}
age        = {{ role = "dimension", bounds = [0, 110] }}
region     = {{ role = "dimension" }}
diabetes   = {{ role = "dimension", bounds = [0, 1] }}
bmi        = {{ role = "measure", bounds = [10, 50] }}
income     = {{ role = "measure" }}

[tables.visits]
source = '{fx}/visits.csv'
description = "Several rows per patient"
privacy_unit = "patient_id"
join_keys = ["patient_id"]

[tables.visits.columns]
patient_id = {{ role = "identifier" }}
visit_no   = {{ role = "dimension" }}
ward       = {{ role = "dimension" }}
cost       = {{ role = "measure", bounds = [0, 1000], aggregates = ["median"] }}

[tables.regions]
source = '{fx}/regions.csv'
description = "Public figures per region"
public = true

[tables.region_wards]
source = '{fx}/region_wards.csv'
description = "Eight wards per region: the region repeats"
public = true
"#
        );
        let path = dir.join("safe-data.toml");
        std::fs::write(&path, toml).unwrap();
        let catalog = Arc::new(safe_data_policy::Catalog::load(&path).unwrap_or_else(|e| panic!("fixture config: {e}")));
        let policy = Policy::new(catalog).expect("policy");
        Lab { policy, dir }
    }

    /// Runs one statement through the whole pipeline, as the kernel does.
    /// Every error text and notice is checked for the targets' values.
    fn run(&self, sql: &str) -> Result<Released, Refusal> {
        let who = Requester { user: "mallory".into(), session: "attack".into() };
        let cancel = CancelFlag::new();
        let out = match parse_cell(sql) {
            Err(e) => Err(Refusal { rule: None, kind: e.kind().to_string(), text: e.to_string() }),
            Ok(parsed) => {
                assert_eq!(parsed.len(), 1, "one statement per attack: {sql}");
                self.policy.run(&parsed[0], &who, &cancel).into_result().map_err(|e| Refusal {
                    rule: e.rule(),
                    kind: e.kind().to_string(),
                    text: e.to_string(),
                })
            }
        };
        match &out {
            Err(r) => assert_no_secrets(sql, &r.text),
            Ok(rel) => {
                for n in rel.notices() {
                    assert_no_secrets(sql, &n.message);
                }
            }
        }
        out
    }

    fn released(&self, sql: &str) -> Released {
        match self.run(sql) {
            Ok(r) => r,
            Err(e) => panic!("expected a release of\n  {sql}\ngot {e:?}"),
        }
    }

    /// Refused, for any reason: callers assert which (see `refused_by`,
    /// `refused_as`), so an attack with a typo cannot pass silently.
    fn refused(&self, sql: &str) -> Refusal {
        match self.run(sql) {
            Ok(r) => panic!("expected a refusal of\n  {sql}\ngot rows {:?} notices {:?}", r.rows(), r.notices()),
            Err(e) => e,
        }
    }

    /// Refused by the dialect (not a policy rule) with this kind of error,
    /// e.g. `UnsupportedError` for a construct the dialect does not have.
    fn refused_as(&self, sql: &str, kind: &str) -> Refusal {
        let e = self.refused(sql);
        assert!(e.rule.is_none() && e.kind == kind, "expected a {kind} for\n  {sql}\ngot {e:?}");
        e
    }

    fn refused_by(&self, sql: &str, rule: Rule) -> Refusal {
        let e = self.refused(sql);
        assert_eq!(e.rule, Some(rule), "wrong rule for\n  {sql}\n{e:?}");
        e
    }

    /// Refused, or released with no row the `is_target` predicate matches and
    /// a notice that rows were hidden.
    /// Refused by the threshold or differencing rule, or released with no
    /// row the `is_target` predicate matches and a notice that groups were
    /// withheld.
    fn hidden_or_refused(&self, sql: &str, is_target: impl Fn(&[Value]) -> bool) -> Option<Released> {
        match self.run(sql) {
            Err(e) => {
                assert!(matches!(e.rule, Some(Rule::MinGroupSize | Rule::Differencing)), "expected a threshold refusal of\n  {sql}\ngot {e:?}");
                None
            }
            Ok(rel) => {
                for row in rel.rows() {
                    assert!(!is_target(row), "the target's row was released by\n  {sql}\nrow {row:?}");
                }
                assert!(hid_rows(&rel), "expected a notice that rows were hidden for\n  {sql}\n{:?}", rel.notices());
                Some(rel)
            }
        }
    }

    /// `SELECT COUNT(DISTINCT patient_id), SUM(bmi) FROM patients WHERE <w>`.
    fn people_and_bmi(&self, where_: &str) -> (i64, f64) {
        let rel = self.released(&format!("SELECT COUNT(DISTINCT patient_id) AS n, SUM(bmi) AS s FROM patients WHERE {where_}"));
        (int(&rel.rows()[0][0]), num(&rel.rows()[0][1]))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn assert_no_secrets(sql: &str, text: &str) {
    for s in SECRETS {
        if !sql.contains(s) {
            assert!(!text.contains(s), "output text leaks `{s}`:\n  {text}\nfor\n  {sql}");
        }
    }
}

/// What an attack must be refused with: a policy rule, or (for constructs
/// the dialect does not have) a kind of error.
#[derive(Debug, Clone, Copy)]
enum Want {
    Rule(Rule),
    Kind(&'static str),
}

impl Want {
    fn check(self, lab: &Lab, sql: &str) {
        match self {
            Want::Rule(rule) => drop(lab.refused_by(sql, rule)),
            Want::Kind(kind) => drop(lab.refused_as(sql, kind)),
        }
    }
}

fn hid_rows(rel: &Released) -> bool {
    rel.notices().iter().any(|n| matches!(n.kind, NoticeKind::Suppressed | NoticeKind::Differencing))
}

fn has_notice(rel: &Released, kind: NoticeKind) -> bool {
    rel.notices().iter().any(|n| n.kind == kind)
}

fn num(v: &Value) -> f64 {
    match v {
        Value::Integer(i) => *i as f64,
        Value::Double(x) => *x,
        other => panic!("expected a number, got {other:?}"),
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Integer(i) => *i,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn text(v: &Value) -> &str {
    match v {
        Value::Text(s) => s,
        other => panic!("expected text, got {other:?}"),
    }
}

/// Equal up to the release's rounding to 6 significant digits.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 5.000_001e-6 * a.abs().max(b.abs()).max(1.0)
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!(close(got, want), "{what}: got {got}, want {want}");
}

/// The row whose first column is `key`.
fn row_of<'a>(rel: &'a Released, key: &str) -> Option<&'a Vec<Value>> {
    rel.rows().iter().find(|r| matches!(&r[0], Value::Text(s) if s == key))
}

fn any_cell_is(rel: &Released, x: f64) -> bool {
    rel.rows().iter().flatten().any(|v| matches!(v, Value::Integer(_) | Value::Double(_)) && (num(v) - x).abs() < 1e-6)
}

// ---------------------------------------------------------------------------
// Positive controls: legitimate aggregates, values computed by hand
// ---------------------------------------------------------------------------

/// Control: whole-table aggregates over all 60 patients, bmi clamped.
#[test]
fn control_whole_table_aggregates() {
    let lab = Lab::new();
    let rel = lab.released("SELECT COUNT(*) AS n, COUNT(DISTINCT patient_id) AS people, SUM(bmi) AS s, AVG(bmi) AS a FROM patients");
    let r = &rel.rows()[0];
    assert_eq!(int(&r[0]), 60);
    assert_eq!(int(&r[1]), 60);
    assert_close(num(&r[2]), TOTAL_BMI, "SUM(bmi)");
    assert_close(num(&r[3]), 26.83, "AVG(bmi)");
    assert!(rel.notices().is_empty(), "{:?}", rel.notices());
}

/// Control: GROUP BY sex and GROUP BY region release the big groups exactly.
#[test]
fn control_grouped_aggregates() {
    let lab = Lab::new();
    let rel = lab.released("SELECT sex, COUNT(*) AS n, SUM(bmi) AS s, AVG(bmi) AS a FROM patients GROUP BY sex ORDER BY sex");
    assert_eq!(rel.rows().len(), 2);
    let f = row_of(&rel, "F").unwrap();
    assert_eq!(int(&f[1]), 30);
    assert_close(num(&f[2]), 785.1, "F sum");
    assert_close(num(&f[3]), 785.1 / 30.0, "F avg");
    let m = row_of(&rel, "M").unwrap();
    assert_eq!(int(&m[1]), 30);
    assert_close(num(&m[2]), 824.7, "M sum");
    let rel = lab.released("SELECT region, COUNT(*) AS n, SUM(bmi) AS s FROM patients GROUP BY region");
    for (region, n, s) in [("North", 20, 507.1), ("South", 20, 558.0), ("East", 19, 517.4)] {
        let r = row_of(&rel, region).unwrap_or_else(|| panic!("{region} missing: {:?}", rel.rows()));
        assert_eq!(int(&r[1]), n, "{region}");
        assert_close(num(&r[2]), s, region);
    }
    // A filter that removes at least k people is fine.
    let (n, s) = lab.people_and_bmi("region <> 'North'");
    assert_eq!(n, 40);
    assert_close(s, 1102.7, "SUM(bmi) outside North");
}

/// Control: the second protected table, its fan-out join, MEDIAN where the owner allows it, and the public table.
#[test]
fn control_visits_joins_and_public_table() {
    let lab = Lab::new();
    let rel = lab.released("SELECT COUNT(*) AS n, COUNT(DISTINCT patient_id) AS people, SUM(cost) AS s, MEDIAN(cost) AS m FROM visits");
    let r = &rel.rows()[0];
    assert_eq!(int(&r[0]), 123);
    assert_eq!(int(&r[1]), 59);
    assert_close(num(&r[2]), 36749.0, "SUM(cost), clamped");
    assert_close(num(&r[3]), 286.0, "MEDIAN(cost)");
    let rel = lab.released("SELECT ward, COUNT(*) AS n, COUNT(DISTINCT patient_id) AS people, SUM(cost) AS s FROM visits GROUP BY ward");
    for (ward, n, people, s) in [("A", 81, 59, 24147.0), ("B", 42, 40, 12602.0)] {
        let r = row_of(&rel, ward).unwrap();
        assert_eq!((int(&r[1]), int(&r[2])), (n, people), "ward {ward}");
        assert_close(num(&r[3]), s, ward);
    }
    // The inner join drops patient 7 (no visits) from North: 1 < k people
    // removed, like a filter. Withholding North alone would say where he
    // lives, so the statement is refused.
    lab.refused_by(
        "SELECT p.region, COUNT(*) AS n, COUNT(DISTINCT p.patient_id) AS people, SUM(v.cost) AS s \
         FROM patients p JOIN visits v ON p.patient_id = v.patient_id GROUP BY p.region",
        Rule::Differencing,
    );
    // A LEFT JOIN keeps him (with no visit): every region is whole.
    let rel = lab.released(
        "SELECT p.region, COUNT(*) AS n, COUNT(DISTINCT p.patient_id) AS people, SUM(v.cost) AS s \
         FROM patients p LEFT JOIN visits v ON p.patient_id = v.patient_id GROUP BY p.region",
    );
    for (region, n, people, s) in [("South", 39, 20, 11603.0), ("East", 39, 19, 12688.0)] {
        let r = row_of(&rel, region).unwrap();
        assert_eq!((int(&r[1]), int(&r[2])), (n, people), "{region}");
        assert_close(num(&r[3]), s, region);
    }
    let north = row_of(&rel, "North").expect("North is whole with a LEFT JOIN");
    assert_eq!((int(&north[1]), int(&north[2])), (40, 20), "North: 39 visits of 19 people, and patient 7's empty row");
    assert!(row_of(&rel, "Isle").is_none(), "Isle is one person");
    assert!(has_notice(&rel, NoticeKind::Suppressed), "{:?}", rel.notices());
    // Public data is released as is.
    let rel = lab.released("SELECT region, population FROM regions ORDER BY region");
    let got: Vec<(String, i64)> = rel.rows().iter().map(|r| (text(&r[0]).to_string(), int(&r[1]))).collect();
    assert_eq!(got, vec![("East".into(), 150000), ("North".into(), 100000), ("South".into(), 200000)]);
}

// ---------------------------------------------------------------------------
// Family 1: single-person aggregates
// ---------------------------------------------------------------------------

/// Family 1: a whole-table aggregate filtered down to the 99-year-old is refused.
#[test]
fn family1_whole_table_aggregate_of_one_person() {
    let lab = Lab::new();
    for sql in [
        "SELECT COUNT(*), SUM(bmi), AVG(bmi) FROM patients WHERE age = 99",
        "SELECT AVG(bmi) FROM patients WHERE age > 90",
        "SELECT SUM(bmi) FROM patients WHERE region = 'Isle'",
        "SELECT COUNT(DISTINCT patient_id) FROM patients WHERE region = 'Isle' AND sex = 'M'",
        "SELECT STDDEV(bmi), VARIANCE(bmi), AVG(bmi) FROM patients WHERE age BETWEEN 95 AND 110",
    ] {
        lab.refused_by(sql, Rule::MinGroupSize);
    }
}

/// Family 1: a GROUP BY whose one group is a single person hides that row.
#[test]
fn family1_unique_region_group_is_hidden() {
    let lab = Lab::new();
    let rel = lab
        .hidden_or_refused("SELECT region, COUNT(*) AS n, AVG(bmi) AS a FROM patients GROUP BY region", |r| {
            text(&r[0]) == "Isle" || (num(&r[2]) - BMI_OF_ISLE_PATIENT).abs() < 1e-9
        })
        .expect("the other regions are releasable");
    assert_eq!(rel.rows().len(), 3, "{:?}", rel.rows());
    assert!(has_notice(&rel, NoticeKind::Suppressed));
    // Same when grouping by an expression that singles the person out.
    lab.hidden_or_refused("SELECT age >= 90 AS old, COUNT(*) AS n, SUM(bmi) AS s FROM patients GROUP BY 1", |r| {
        r[0] == Value::Boolean(true) || any_cell_is_row(r, BMI_OF_99_YEAR_OLD)
    });
    // HAVING cannot bring a thin group back.
    let rel = lab.run("SELECT region, COUNT(*) AS n FROM patients GROUP BY region HAVING COUNT(*) < 5").unwrap();
    assert!(rel.rows().is_empty(), "{:?}", rel.rows());
}

fn any_cell_is_row(r: &[Value], x: f64) -> bool {
    r.iter().any(|v| matches!(v, Value::Integer(_) | Value::Double(_)) && (num(v) - x).abs() < 1e-6)
}

/// Family 1: the single-person filter hidden in a subquery, a CTE or a UNION ALL branch.
#[test]
fn family1_filter_wrapped_in_subquery_cte_union() {
    let lab = Lab::new();
    for sql in [
        "WITH old AS (SELECT bmi, age FROM patients WHERE age > 90) SELECT AVG(bmi) FROM old",
        "SELECT SUM(x) FROM (SELECT bmi AS x FROM patients WHERE region = 'Isle') t",
        "SELECT a FROM (SELECT AVG(bmi) AS a FROM patients WHERE age = 99) t",
        "SELECT * FROM (SELECT SUM(bmi) AS s FROM patients WHERE age = 99) t WHERE s > 0",
        "SELECT SUM(bmi) FROM (SELECT bmi, age FROM patients WHERE age = 99 UNION ALL SELECT bmi, age FROM patients WHERE region = 'Isle') t",
        "SELECT COUNT(*), SUM(v.cost) FROM visits v JOIN patients p ON v.patient_id = p.patient_id WHERE p.age = 99",
    ] {
        if let Some(rel) = lab.hidden_or_refused(sql, |r| any_cell_is_row(r, BMI_OF_99_YEAR_OLD) || any_cell_is_row(r, BMI_OF_ISLE_PATIENT)) {
            assert!(rel.rows().is_empty(), "{sql}: {:?}", rel.rows());
        }
    }
}

// ---------------------------------------------------------------------------
// Family 2: differencing
// ---------------------------------------------------------------------------

/// Family 2: everyone vs everyone-but-the-99-year-old, written several ways.
#[test]
fn family2_everyone_minus_one_whole_table() {
    let lab = Lab::new();
    let (n, s) = lab.people_and_bmi("TRUE");
    assert_eq!(n, TOTAL_PEOPLE);
    assert_close(s, TOTAL_BMI, "everyone");
    for w in [
        "age <> 99",
        "NOT (age = 99)",
        "age < 99",
        "age <= 79",
        "age <> 99 OR age IS NULL",
        "region IN ('North', 'South', 'East')",
        "region <> 'Isle'",
        "NOT (region = 'Isle' AND sex = 'M')",
    ] {
        let sql = format!("SELECT SUM(bmi) FROM patients WHERE {w}");
        lab.refused_by(&sql, Rule::Differencing);
    }
}

/// Family 2: the same GROUP BY with and without a filter removing one person.
#[test]
fn family2_grouped_with_and_without_filter() {
    let lab = Lab::new();
    let full = lab.released("SELECT sex, COUNT(*) AS n, SUM(bmi) AS s FROM patients GROUP BY sex");
    assert_eq!(full.rows().len(), 2);
    // The 99-year-old is F: the F row loses one person. Hiding F alone and
    // showing M would tell her sex, so the statement is refused.
    lab.refused_by("SELECT sex, COUNT(*) AS n, SUM(bmi) AS s FROM patients WHERE age <> 99 GROUP BY sex", Rule::Differencing);
    // The Isle patient is M, in region Isle: grouped by sex the M row loses one person.
    lab.refused_by("SELECT sex, AVG(bmi) AS a FROM patients WHERE region <> 'Isle' GROUP BY sex", Rule::Differencing);
    lab.refused_by("SELECT diabetes, SUM(bmi) AS s FROM patients WHERE NOT (age = 99) GROUP BY diabetes", Rule::Differencing);
    // Control: a filter removing at least k people from every group it touches.
    let rel = lab.released("SELECT sex, COUNT(*) AS n FROM patients WHERE region <> 'North' GROUP BY sex ORDER BY sex");
    assert_eq!(rel.rows().len(), 2, "{:?}", rel.rows());
}

/// Family 2: an inner join with the public table, which has no `Isle` row,
/// silently drops the Isle patient: "everyone" minus "everyone who joins" is him.
#[test]
fn family2_inner_join_with_public_table_drops_one_person() {
    let lab = Lab::new();
    let (_, everyone) = lab.people_and_bmi("TRUE");
    let sql = "SELECT COUNT(DISTINCT p.patient_id) AS n, SUM(p.bmi) AS s FROM patients p JOIN regions r ON p.region = r.region";
    if let Ok(rel) = lab.run(sql) {
        let n = int(&rel.rows()[0][0]);
        let s = num(&rel.rows()[0][1]);
        let removed = TOTAL_PEOPLE - n;
        assert!(
            removed == 0 || removed >= K,
            "the join removed {removed} person(s) from the table without the differencing check; \
             {everyone} - {s} = {} is the Isle patient's bmi",
            everyone - s
        );
    }
}

/// Family 2: an inner join with visits drops the 99-year-old (who has none);
/// filtering on the first visit makes each person count once.
#[test]
fn family2_inner_join_with_visits_drops_one_person() {
    let lab = Lab::new();
    let (_, everyone) = lab.people_and_bmi("TRUE");
    let sql = "SELECT COUNT(DISTINCT p.patient_id) AS n, SUM(p.bmi) AS s FROM patients p \
               JOIN visits v ON p.patient_id = v.patient_id WHERE v.visit_no = 1";
    if let Ok(rel) = lab.run(sql) {
        let n = int(&rel.rows()[0][0]);
        let s = num(&rel.rows()[0][1]);
        let removed = TOTAL_PEOPLE - n;
        assert!(
            removed == 0 || removed >= K,
            "the join removed {removed} person(s) without the differencing check; {everyone} - {s} = {} is the 99-year-old's bmi",
            everyone - s
        );
    }
}

/// Family 2 (grouped, no filter): GROUP BY sex against GROUP BY sex, region.
/// The finer grouping hides the Isle cell, but the coarser one still counts
/// him, so the difference of released totals is his row (complementary
/// suppression). No single query is thin or filtered.
#[test]
#[ignore = "known limit: differences of several allowed queries (complementary suppression) need differential privacy (later issue)"]
fn family2_marginal_totals_recover_suppressed_cell() {
    // KNOWN LIMIT: trackers need differential privacy (later issue)
    let lab = Lab::new();
    let coarse = lab.released("SELECT sex, COUNT(*) AS n, SUM(bmi) AS s FROM patients GROUP BY sex");
    let fine = lab.released("SELECT sex, region, COUNT(*) AS n, SUM(bmi) AS s FROM patients GROUP BY sex, region");
    assert!(fine.rows().iter().all(|r| text(&r[1]) != "Isle"), "the Isle cell itself is hidden");
    let m = row_of(&coarse, "M").unwrap();
    let released_m: f64 = fine.rows().iter().filter(|r| text(&r[0]) == "M").map(|r| num(&r[3])).sum();
    let released_n: i64 = fine.rows().iter().filter(|r| text(&r[0]) == "M").map(|r| int(&r[2])).sum();
    let derived = num(&m[2]) - released_m;
    assert!(
        !(int(&m[1]) - released_n == 1 && (derived - BMI_OF_ISLE_PATIENT).abs() < 1e-6),
        "the difference of two released results is one person: bmi {derived}"
    );
}

/// Family 2 without a WHERE: moving the single-person filter into GROUP BY
/// makes "everyone but the 99-year-old" a released group of 59 people (her
/// own group is hidden), and the unfiltered total is allowed too: their
/// difference is her row. The differencing defense only looks at WHERE.
#[test]
#[ignore = "known limit: differences of several allowed queries (trackers) need differential privacy (later issue); see report"]
fn family2_filter_moved_into_group_by() {
    // KNOWN LIMIT: trackers need differential privacy (later issue)
    let lab = Lab::new();
    let (n_all, s_all) = lab.people_and_bmi("TRUE");
    let rel = lab.released("SELECT COUNT(DISTINCT patient_id) AS n, SUM(bmi) AS s FROM patients GROUP BY age = 99");
    assert!(hid_rows(&rel));
    for r in rel.rows() {
        let derived = s_all - num(&r[1]);
        assert!(!(n_all - int(&r[0]) == 1 && (derived - BMI_OF_99_YEAR_OLD).abs() < 1e-6), "total minus the released group is one person: bmi {derived}");
    }
}

// ---------------------------------------------------------------------------
// Family 3: trackers (Denning). KNOWN LIMIT: query-set-size control does not
// stop them; the tests below check what the policy does guarantee (each query
// rests on >= k people and its filter removed none or >= k), and the ignored
// ones document that the arithmetic still isolates the target.
// ---------------------------------------------------------------------------

/// C = "age = 99" (the target), T = "sex = 'M'" (C is not in T).
const TRACKER_C: &str = "age = 99";
const TRACKER_T: &str = "sex = 'M'";

/// Each of the tracker's queries: its people count and its SUM(bmi).
fn tracker_queries(lab: &Lab) -> Vec<(String, i64, f64)> {
    [format!("{TRACKER_C} OR {TRACKER_T}"), TRACKER_T.to_string(), format!("{TRACKER_C} OR NOT ({TRACKER_T})"), "TRUE".to_string()]
        .into_iter()
        .map(|w| {
            let (n, s) = lab.people_and_bmi(&w);
            (w, n, s)
        })
        .collect()
}

fn assert_tracker_guarantees(queries: &[(String, i64, f64)]) {
    for (w, n, _) in queries {
        assert!(*n >= K, "WHERE {w}: released on {n} people");
        let removed = TOTAL_PEOPLE - n;
        assert!(removed == 0 || removed >= K, "WHERE {w}: removed {removed} people");
    }
}

/// Family 3: the individual tracker C OR T minus T. KNOWN LIMIT: each query is
/// allowed; this test checks the per-query guarantee only.
#[test]
fn family3_individual_tracker_each_query_rests_on_k() {
    // KNOWN LIMIT: trackers need differential privacy (later issue)
    let lab = Lab::new();
    let q = tracker_queries(&lab);
    assert_tracker_guarantees(&q[..2]);
}

/// Family 3: the individual tracker isolates the 99-year-old's bmi.
#[test]
#[ignore = "known limit: trackers need differential privacy (later issue)"]
fn family3_individual_tracker_isolates_target() {
    // KNOWN LIMIT: trackers need differential privacy (later issue)
    let lab = Lab::new();
    let q = tracker_queries(&lab);
    let (count, derived) = (q[0].1 - q[1].1, q[0].2 - q[1].2);
    assert!(!(count == 1 && (derived - BMI_OF_99_YEAR_OLD).abs() < 1e-6), "tracker recovered bmi {derived} of the single person in C");
}

/// Family 3: the general tracker Q(C OR T) + Q(C OR NOT T) - Q(all). KNOWN LIMIT.
#[test]
fn family3_general_tracker_each_query_rests_on_k() {
    // KNOWN LIMIT: trackers need differential privacy (later issue)
    let lab = Lab::new();
    let q = tracker_queries(&lab);
    assert_tracker_guarantees(&q);
}

/// Family 3: the general tracker isolates the 99-year-old's bmi.
#[test]
#[ignore = "known limit: trackers need differential privacy (later issue)"]
fn family3_general_tracker_isolates_target() {
    // KNOWN LIMIT: trackers need differential privacy (later issue)
    let lab = Lab::new();
    let q = tracker_queries(&lab);
    let count = q[0].1 + q[2].1 - q[3].1;
    let derived = q[0].2 + q[2].2 - q[3].2;
    assert!(!(count == 1 && (derived - BMI_OF_99_YEAR_OLD).abs() < 1e-6), "tracker recovered bmi {derived} of the single person in C");
}

fn grouped_tracker(lab: &Lab) -> (Released, Released) {
    let padded = lab.released(&format!("SELECT ({TRACKER_C} OR {TRACKER_T}) AS g, COUNT(DISTINCT patient_id) AS n, SUM(bmi) AS s FROM patients GROUP BY 1"));
    let plain = lab.released(&format!("SELECT ({TRACKER_T}) AS g, COUNT(DISTINCT patient_id) AS n, SUM(bmi) AS s FROM patients GROUP BY 1"));
    (padded, plain)
}

/// Family 3: a tracker without any WHERE: GROUP BY the padded predicate vs
/// GROUP BY the padding. KNOWN LIMIT: every released row rests on >= k people.
#[test]
fn family3_grouped_tracker_each_row_rests_on_k() {
    // KNOWN LIMIT: trackers need differential privacy (later issue)
    let lab = Lab::new();
    let (padded, plain) = grouped_tracker(&lab);
    for rel in [&padded, &plain] {
        assert_eq!(rel.rows().len(), 2);
        for r in rel.rows() {
            assert!(int(&r[1]) >= K, "{r:?}");
        }
    }
}

/// Family 3: the grouped tracker isolates the 99-year-old's bmi.
#[test]
#[ignore = "known limit: trackers need differential privacy (later issue)"]
fn family3_grouped_tracker_isolates_target() {
    // KNOWN LIMIT: trackers need differential privacy (later issue)
    let lab = Lab::new();
    let (padded, plain) = grouped_tracker(&lab);
    let t = |rel: &Released| rel.rows().iter().find(|r| r[0] == Value::Boolean(true)).cloned().unwrap();
    let (a, b) = (t(&padded), t(&plain));
    let count = int(&a[1]) - int(&b[1]);
    let derived = num(&a[2]) - num(&b[2]);
    assert!(!(count == 1 && (derived - BMI_OF_99_YEAR_OLD).abs() < 1e-6), "tracker recovered bmi {derived}");
}

/// Family 3: trackers need padding sets that are large AND leave >= k people
/// out; small paddings are refused.
#[test]
fn family3_small_paddings_are_refused() {
    let lab = Lab::new();
    // C OR T with a tiny T: fewer than k people.
    lab.refused_by("SELECT SUM(bmi) FROM patients WHERE age = 99 OR region = 'Isle'", Rule::MinGroupSize);
    lab.refused_by("SELECT SUM(bmi) FROM patients WHERE age = 99 OR age IN (20, 21, 22)", Rule::MinGroupSize);
    // C OR NOT T with a tiny T: removes fewer than k people.
    lab.refused_by("SELECT SUM(bmi) FROM patients WHERE age = 99 OR age <> 20", Rule::Differencing);
    lab.refused_by("SELECT SUM(bmi) FROM patients WHERE NOT (age IN (21, 22) AND age <> 99)", Rule::Differencing);
}

// ---------------------------------------------------------------------------
// Family 4: extremes and order statistics
// ---------------------------------------------------------------------------

/// Family 4: MIN/MAX on measures and dimensions (numbers and strings) are refused.
#[test]
fn family4_min_max_refused() {
    let lab = Lab::new();
    for sql in [
        "SELECT MAX(bmi) FROM patients",
        "SELECT MIN(bmi) FROM patients",
        "SELECT sex, MAX(bmi) FROM patients GROUP BY sex",
        "SELECT MAX(age) FROM patients",
        "SELECT region, MIN(age) FROM patients GROUP BY region",
        "SELECT MAX(region) FROM patients",
        "SELECT MIN(sex) FROM patients",
        "SELECT MAX(cost) FROM visits",
        "SELECT -MIN(-age) FROM patients",
        "SELECT MAX(bmi * 1) FROM patients",
    ] {
        let e = lab.refused(sql);
        assert!(matches!(e.rule, Some(Rule::AggregateNotAllowed | Rule::ConditionalAggregate)), "{sql}: {e:?}");
    }
}

/// Family 4: MEDIAN / quantiles are refused unless the owner allows them on
/// that column; cost allows only the median, not other quantiles.
#[test]
fn family4_median_and_quantiles_need_permission() {
    let lab = Lab::new();
    for sql in [
        "SELECT MEDIAN(bmi) FROM patients",
        "SELECT MEDIAN(age) FROM patients",
        "SELECT QUANTILE_CONT(bmi, 1.0) FROM patients",
        "SELECT PERCENTILE_CONT(0.0) WITHIN GROUP (ORDER BY bmi) FROM patients",
        "SELECT QUANTILE_CONT(cost, 1.0) FROM visits",
        "SELECT PERCENTILE_CONT(1.0) WITHIN GROUP (ORDER BY cost) FROM visits",
        "SELECT MEDIAN(cost + 0) FROM visits",
    ] {
        let e = lab.refused(sql);
        assert!(matches!(e.rule, Some(Rule::AggregateNotAllowed | Rule::ConditionalAggregate)), "{sql}: {e:?}");
    }
    // The allowed median still obeys the threshold: the Isle patient's visits alone.
    lab.refused_by("SELECT MEDIAN(v.cost) FROM visits v JOIN patients p ON v.patient_id = p.patient_id WHERE p.region = 'Isle'", Rule::MinGroupSize);
}

/// Family 4: "top 1" orderings by an extreme, or of raw rows.
#[test]
fn family4_top_one_orderings() {
    let lab = Lab::new();
    // Ordering groups by a refused aggregate is refused like selecting it.
    lab.refused_by("SELECT region, COUNT(*) FROM patients GROUP BY region ORDER BY MAX(bmi) DESC LIMIT 1", Rule::AggregateNotAllowed);
    lab.refused_by("SELECT sex, COUNT(*) FROM patients GROUP BY sex ORDER BY MIN(age) LIMIT 1", Rule::AggregateNotAllowed);
    // Raw rows ordered by a measure or a dimension.
    lab.refused_by("SELECT sex FROM patients ORDER BY bmi DESC LIMIT 1", Rule::RawRows);
    lab.refused_by("SELECT region, age FROM patients ORDER BY age DESC LIMIT 1", Rule::RawRows);
    // The top group by age is the 99-year-old alone: hidden.
    let rel = lab.hidden_or_refused("SELECT age, COUNT(*) AS n, AVG(bmi) AS a FROM patients GROUP BY age ORDER BY age DESC LIMIT 1", |r| int(&r[0]) == 99);
    if let Some(rel) = rel {
        assert!(rel.rows().is_empty());
    }
    // Aggregating the aggregates (max of per-group averages) sees only the
    // released groups: the withheld Isle group never reaches the MAX.
    let rel = lab.released("SELECT MAX(a) FROM (SELECT region, AVG(bmi) AS a FROM patients GROUP BY region) t");
    assert!(!any_cell_is(&rel, BMI_OF_ISLE_PATIENT), "{:?}", rel.rows());
    let regions = lab.released("SELECT region, AVG(bmi) AS a FROM patients GROUP BY region");
    let max = regions.rows().iter().map(|r| num(&r[1])).fold(f64::MIN, f64::max);
    assert_eq!(rel.rows(), &[vec![Value::Double(max)]]);
    assert!(rel.notices().iter().any(|n| n.kind == NoticeKind::Suppressed && n.message.starts_with("1 group of a subquery withheld")));
}

// ---------------------------------------------------------------------------
// Family 5: row duplication
// ---------------------------------------------------------------------------

/// Family 5: UNION ALL of the target with itself makes 5 rows of 1 person.
#[test]
fn family5_union_all_copies_of_one_person() {
    let lab = Lab::new();
    let one = "SELECT bmi, sex FROM patients WHERE age = 99";
    let five = [one; 5].join(" UNION ALL ");
    lab.refused_by(&format!("SELECT COUNT(*), AVG(bmi) FROM ({five}) t"), Rule::MinGroupSize);
    let rel = lab.hidden_or_refused(&format!("SELECT sex, COUNT(*) AS n, SUM(bmi) AS s FROM ({five}) t GROUP BY sex"), |r| text(&r[0]) == "F");
    if let Some(rel) = rel {
        assert!(rel.rows().is_empty());
    }
    // Copies through a CTE referenced several times.
    lab.refused_by(
        "WITH t AS (SELECT bmi FROM patients WHERE region = 'Isle') \
         SELECT SUM(bmi) FROM (SELECT bmi FROM t UNION ALL SELECT bmi FROM t UNION ALL SELECT bmi FROM t UNION ALL SELECT bmi FROM t UNION ALL SELECT bmi FROM t) u",
        Rule::MinGroupSize,
    );
}

/// Family 5: self-joins multiply the target's rows but not the people.
#[test]
fn family5_self_join_fan_out() {
    let lab = Lab::new();
    // 1 × 20 rows: one person on the left side.
    lab.refused_by("SELECT COUNT(*), SUM(a.bmi) FROM patients a JOIN patients b ON a.region = b.region WHERE a.age = 99", Rule::MinGroupSize);
    lab.refused_by(
        "SELECT COUNT(*), AVG(a.bmi) FROM patients a JOIN patients b ON a.patient_id = b.patient_id JOIN patients c ON b.patient_id = c.patient_id WHERE a.region = 'Isle'",
        Rule::MinGroupSize,
    );
    lab.hidden_or_refused("SELECT a.region, COUNT(*) AS n, SUM(a.bmi) AS s FROM patients a JOIN patients b ON a.region = b.region GROUP BY a.region", |r| {
        text(&r[0]) == "Isle"
    })
    .expect("the other regions are releasable");
}

/// Family 5: the Isle patient's six visits are six rows of one person.
#[test]
fn family5_visits_fan_out_counts_people() {
    let lab = Lab::new();
    // North lost patient 7 (no visits) to the join: refused (differencing).
    lab.refused_by(
        "SELECT p.region, COUNT(*) AS n, SUM(v.cost) AS s FROM patients p JOIN visits v ON p.patient_id = v.patient_id GROUP BY p.region",
        Rule::Differencing,
    );
    // With a LEFT JOIN nobody is dropped: Isle (one person, six visits) is thin.
    let rel = lab
        .hidden_or_refused(
            "SELECT p.region, COUNT(*) AS n, SUM(v.cost) AS s FROM patients p LEFT JOIN visits v ON p.patient_id = v.patient_id GROUP BY p.region",
            |r| text(&r[0]) == "Isle",
        )
        .expect("the other regions are releasable");
    assert_eq!(rel.rows().len(), 3, "{:?}", rel.rows());
    // Visit numbers 4..6 exist only for him.
    let rel = lab.hidden_or_refused("SELECT visit_no, COUNT(*) AS n FROM visits GROUP BY visit_no", |r| int(&r[0]) >= 4).unwrap();
    assert_eq!(rel.rows().len(), 3, "{:?}", rel.rows());
    lab.refused_by("SELECT COUNT(*), SUM(cost) FROM visits WHERE visit_no >= 4", Rule::MinGroupSize);
    lab.refused_by("SELECT COUNT(*), AVG(p.bmi) FROM visits v JOIN patients p ON v.patient_id = p.patient_id WHERE p.region = 'Isle'", Rule::MinGroupSize);
}

/// Family 5: a public table whose join key repeats copies each person's row
/// (eight wards per region: the Isle patient becomes eight rows), and a join
/// onto a key that does not repeat keeps one row per person. People must be
/// counted, not rows, in the first case; the second may count rows, and both
/// must give the same people as the raw data.
#[test]
fn family5_join_fan_out_onto_a_public_table_counts_people() {
    let lab = Lab::new();
    // Eight copies of one person are still one person: Isle stays hidden.
    let rel = lab
        .hidden_or_refused(
            "SELECT p.region, COUNT(*) AS n, SUM(p.bmi) AS s FROM patients p JOIN region_wards w ON p.region = w.region GROUP BY p.region",
            |r| text(&r[0]) == "Isle",
        )
        .expect("the other regions are releasable");
    assert_eq!(rel.rows().len(), 3, "{:?}", rel.rows());
    let north = row_of(&rel, "North").expect("North is released");
    assert_eq!(int(&north[1]), 160, "20 patients × 8 wards");
    lab.refused_by("SELECT COUNT(*), AVG(p.bmi) FROM patients p JOIN region_wards w ON p.region = w.region WHERE p.region = 'Isle'", Rule::MinGroupSize);
    lab.hidden_or_refused("SELECT w.ward, COUNT(*) AS n FROM patients p JOIN region_wards w ON p.region = w.region GROUP BY w.ward", |r| {
        text(&r[0]).starts_with('I')
    })
    .expect("the wards of the other regions are releasable");
    // regions.region does not repeat: one row per person, and Isle (no
    // region row) is dropped by the join: North, South and East are whole.
    // The join removed only the Isle patient (M) from the M group: refused,
    // as hiding M alone would say which sex he is.
    lab.refused_by(
        "SELECT p.sex, COUNT(*) AS n, COUNT(DISTINCT p.patient_id) AS people FROM patients p JOIN regions r ON p.region = r.region GROUP BY p.sex ORDER BY p.sex",
        Rule::Differencing,
    );
    let rel = lab.released("SELECT p.sex, COUNT(*) AS n, COUNT(DISTINCT p.patient_id) AS people FROM patients p LEFT JOIN regions r ON p.region = r.region GROUP BY p.sex ORDER BY p.sex");
    assert!(rel.rows().iter().all(|r| int(&r[1]) == int(&r[2])), "{:?}", rel.rows());
    let f = row_of(&rel, "F").expect("F is whole");
    assert_eq!(int(&f[1]), 30);
}

// ---------------------------------------------------------------------------
// Family 6: window functions and per-row expressions
// ---------------------------------------------------------------------------

/// Family 6: window functions (aggregate or ranking OVER ...) are refused.
#[test]
fn family6_window_functions_refused() {
    let lab = Lab::new();
    for sql in [
        "SELECT SUM(bmi) OVER () FROM patients",
        "SELECT region, AVG(bmi) OVER (PARTITION BY region) FROM patients",
        "SELECT ROW_NUMBER() OVER (ORDER BY bmi) FROM patients",
        "SELECT RANK() OVER (ORDER BY age) FROM patients",
        "SELECT LAG(bmi) OVER (ORDER BY age) FROM patients",
        "SELECT sex, COUNT(*) OVER (PARTITION BY sex) FROM patients",
        "SELECT sex, SUM(COUNT(*)) OVER () FROM patients GROUP BY sex",
        "SELECT sex FROM patients QUALIFY ROW_NUMBER() OVER (ORDER BY age DESC) = 1",
        "SELECT sex, AVG(bmi) OVER w FROM patients WINDOW w AS (PARTITION BY sex)",
    ] {
        lab.refused_as(sql, "UnsupportedError");
    }
}

/// Family 6: per-row expressions of measures and identifiers are refused.
#[test]
fn family6_per_row_expressions_refused() {
    let lab = Lab::new();
    for (sql, want) in [
        ("SELECT bmi * 1 FROM patients", Want::Rule(Rule::RawRows)),
        ("SELECT age, bmi + 0 AS x FROM patients", Want::Rule(Rule::RawRows)),
        ("SELECT region, bmi FROM patients WHERE age = 99", Want::Rule(Rule::RawRows)),
        ("SELECT * FROM patients", Want::Rule(Rule::RawRows)),
        ("SELECT * FROM visits WHERE visit_no = 6", Want::Rule(Rule::RawRows)),
        ("SELECT COUNT(*) + 0 * bmi FROM patients", Want::Kind("QueryError")),
        ("SELECT DISTINCT region FROM patients", Want::Rule(Rule::RawRows)),
        ("SELECT sex, CAST(bmi AS TEXT) FROM patients", Want::Rule(Rule::RawRows)),
    ] {
        want.check(&lab, sql);
    }
}

/// Family 6: "aggregates" that are one row per person: GROUP BY the
/// identifier or the measure is refused; GROUP BY a unique dimension hides
/// every row.
#[test]
fn family6_one_group_per_person() {
    let lab = Lab::new();
    lab.refused_by("SELECT patient_id, SUM(bmi) FROM patients GROUP BY patient_id", Rule::IdentifierUse);
    lab.refused_by("SELECT COUNT(*), SUM(bmi) FROM patients GROUP BY patient_id", Rule::IdentifierUse);
    lab.refused_by("SELECT COUNT(*) FROM patients GROUP BY patient_id % 1000", Rule::IdentifierUse);
    lab.refused_by("SELECT COUNT(*) FROM patients GROUP BY bmi", Rule::MeasureUse);
    lab.refused_by("SELECT ROUND(bmi) AS b, COUNT(*) FROM patients GROUP BY 1", Rule::MeasureUse);
    // Every age occurs once: every row is hidden.
    let rel = lab.hidden_or_refused("SELECT age, COUNT(*) AS n, AVG(bmi) AS a FROM patients GROUP BY age", |_| true);
    if let Some(rel) = rel {
        assert!(rel.rows().is_empty());
        assert!(rel.notices().iter().any(|n| n.message.starts_with("60 groups withheld")), "{:?}", rel.notices());
    }
}

// ---------------------------------------------------------------------------
// Family 7: side channels in expressions
// ---------------------------------------------------------------------------

/// Family 7: conditions and functions inside aggregates (hidden filters) are refused.
#[test]
fn family7_conditions_inside_aggregates_refused() {
    let lab = Lab::new();
    for sql in [
        "SELECT SUM(CASE WHEN age = 99 THEN bmi ELSE 0 END) FROM patients",
        "SELECT COUNT(CASE WHEN region = 'Isle' THEN 1 END) FROM patients",
        "SELECT AVG(CASE age WHEN 99 THEN bmi END) FROM patients",
        "SELECT SUM(bmi * CASE WHEN age = 99 THEN 1000000 ELSE 1 END) FROM patients",
        "SELECT SUM(COALESCE(NULLIF(age, 99), 0)) FROM patients",
        "SELECT SUM(NULLIF(bmi, 0)) FROM patients",
        "SELECT SUM(bmi * ABS(age - 99)) FROM patients",
        "SELECT SUM(bmi / (age - 98)) FROM patients",
        "SELECT SUM(POWER(bmi, age)) FROM patients",
        "SELECT COUNT(DISTINCT CASE WHEN age = 99 THEN patient_id END) FROM patients",
        "SELECT SUM(WIDTH_BUCKET(age, 98, 100, 1)) FROM patients",
        "SELECT SUM(CAST(age = 99 AS INTEGER) * bmi) FROM patients",
    ] {
        let e = lab.refused(sql);
        assert!(e.rule.is_some() || e.kind != "ExecutionError", "{sql}: {e:?}");
    }
}

/// Family 7: a polynomial of a bounded dimension is 0 for every integer age
/// in [0, 110] except 99: plain arithmetic acting as the hidden filter
/// `CASE WHEN age = 99`. Each product is "arithmetic of bounded columns".
#[test]
fn family7_polynomial_indicator_inside_sum() {
    // A big stack: the binder recurses once per operator (see
    // family13_long_operator_chain_does_not_crash); this test is about the release.
    with_big_stack(|| {
        let lab = Lab::new();
        let factors: Vec<String> = (0..=110).filter(|a| *a != 99).map(|a| format!("(age - {a}.0)")).collect();
        let indicator = factors.join(" * ");
        let sql = format!("SELECT SUM(bmi * {indicator}) AS weighted, SUM(1.0 * {indicator}) AS weight FROM patients");
        match lab.run(&sql) {
            Err(e) => assert_ne!(e.kind, "ExecutionError", "{e:?}"),
            Ok(rel) => {
                let r = &rel.rows()[0];
                let (weighted, weight) = (num(&r[0]), num(&r[1]));
                let derived = weighted / weight;
                assert!((derived - BMI_OF_99_YEAR_OLD).abs() > 0.05, "a whole-table SUM over 60 people released the 99-year-old's bmi: {derived}");
            }
        }
    });
}

/// Runs `f` on a thread with a 1 GiB stack (for statements deliberately deeper
/// than the default 2 MiB stack allows; the crash itself is family 13).
fn with_big_stack(f: impl FnOnce() + Send + 'static) {
    let handle = std::thread::Builder::new().stack_size(1 << 30).spawn(f).unwrap();
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Family 7: per-row operations that could fail only on the target (casts,
/// division by zero, logs, overflow) never error; the outcome is the same
/// whether the "bad" value belongs to someone (age 99) or to nobody (age 98).
#[test]
fn family7_no_errors_that_depend_on_one_person() {
    let lab = Lab::new();
    let probes = [
        "1 / (age - {A}) > 0",
        "LN(age - {A}) IS NULL",
        "SQRT(age - {A}) IS NULL",
        "POWER(age - {A}, -1) > 0",
        "CAST(SUBSTR(region, age - {A}) AS INTEGER) IS NULL",
        "(age - {A}) * 4611686018427387904 > 0",
        "(age - {A}) % 0 IS NULL",
        "CAST(CAST(age - {A} AS TEXT) || 'x' AS DOUBLE) IS NULL",
        "EXP((age - {A}) * 1000.0) > 0",
    ];
    for probe in probes {
        let outcome = |a: i64| {
            let sql = format!("SELECT COUNT(*) AS n FROM patients WHERE ({}) OR sex IN ('F', 'M')", probe.replace("{A}", &a.to_string()));
            match lab.run(&sql) {
                Ok(rel) => format!("released {:?}", rel.rows()),
                Err(e) => {
                    assert_ne!(e.kind, "ExecutionError", "{sql}: a data-dependent error: {e:?}");
                    format!("refused {:?} {}", e.rule, e.text)
                }
            }
        };
        assert_eq!(outcome(99), outcome(98), "the outcome depends on whether someone is 99: {probe}");
    }
}

/// Family 7: a refusal for "fewer than k people" reads the same whether the
/// filter matches one person or nobody.
#[test]
fn family7_thin_refusal_same_for_one_and_zero_people() {
    let lab = Lab::new();
    let one = lab.refused_by("SELECT COUNT(*) FROM patients WHERE age = 99", Rule::MinGroupSize);
    let zero = lab.refused_by("SELECT COUNT(*) FROM patients WHERE age = 98", Rule::MinGroupSize);
    assert_eq!((one.rule, one.text), (zero.rule, zero.text));
    let one = lab.refused_by("SELECT COUNT(*) FROM patients WHERE region = 'Isle' AND diabetes = 0", Rule::MinGroupSize);
    let zero = lab.refused_by("SELECT COUNT(*) FROM patients WHERE region = 'Isle' AND diabetes = 1", Rule::MinGroupSize);
    assert_eq!((one.rule, one.text), (zero.rule, zero.text));
}

/// Family 7: the bare fact of a differencing refusal is an oracle: "everyone
/// except (the 99-year-old AND diabetic)" is refused exactly when the
/// 99-year-old is diabetic. The outcome must not depend on her diabetes.
#[test]
#[ignore = "known limit: the differencing rule allows 0 removed people, so whether a filter removes 0 or 1..k-1 people shows (as a refusal or a hidden row); closing it needs noise (differential privacy, a later issue)"]
fn family7_refusal_oracle_reveals_attribute() {
    let lab = Lab::new();
    let outcome = |d: i64| match lab.run(&format!("SELECT COUNT(*) AS n FROM patients WHERE NOT (age = 99 AND diabetes = {d})")) {
        Ok(_) => "released".to_string(),
        Err(e) => format!("refused {:?}", e.rule),
    };
    assert_eq!(outcome(1), outcome(0), "the refusal tells whether the 99-year-old has diabetes");
}

/// Family 7: the bare fact of a suppressed row is an oracle: grouped queries
/// drop groups with nobody in them but announce thin ones, so "1 row hidden"
/// vs nothing tells whether the 99-year-old is diabetic.
#[test]
fn family7_suppression_notice_oracle_reveals_attribute() {
    let lab = Lab::new();
    let outcome = |d: i64| {
        let rel = lab.released(&format!("SELECT sex, COUNT(*) AS n FROM patients WHERE age = 99 AND diabetes = {d} GROUP BY sex"));
        (rel.rows().to_vec(), rel.notices().to_vec())
    };
    assert_eq!(outcome(1), outcome(0), "the notices tell whether the 99-year-old has diabetes");
}

/// Family 7: HAVING is evaluated on the hidden (thin) Isle group before the
/// release counts the hidden rows, so "1 row hidden" vs no notice answers
/// "is the Isle patient's bmi above t?" — a binary search on one person's
/// value. The released rows are the same for both thresholds; the notices
/// must be too.
#[test]
fn family7_having_on_hidden_group_is_an_oracle() {
    let lab = Lab::new();
    let outcome = |t: f64| {
        let rel = lab.released(&format!("SELECT region, COUNT(*) AS n FROM patients GROUP BY region HAVING AVG(bmi) > {t}"));
        (rel.rows().to_vec(), rel.notices().to_vec())
    };
    // Released averages: North 25.355, East 27.23, South 27.9; the Isle patient has 27.3.
    let below = outcome(27.25);
    let above = outcome(27.35);
    assert_eq!(below.0, above.0, "same released rows (South only)");
    assert_eq!(below.1, above.1, "the notice tells whether the hidden person's bmi is above the threshold");
}

/// Family 7: the grouped differencing flag is an oracle as well: the F row is
/// hidden exactly when the 99-year-old (F) is diabetic.
#[test]
#[ignore = "known limit: the differencing rule allows 0 removed people, so whether a filter removes 0 or 1..k-1 people shows (as a refusal or a hidden row); closing it needs noise (differential privacy, a later issue)"]
fn family7_grouped_differencing_oracle_reveals_attribute() {
    let lab = Lab::new();
    let outcome = |d: i64| {
        let rel = lab.released(&format!("SELECT sex, COUNT(*) AS n FROM patients WHERE NOT (age = 99 AND diabetes = {d}) GROUP BY sex"));
        let sexes: Vec<String> = rel.rows().iter().map(|r| text(&r[0]).to_string()).collect();
        (sexes, rel.notices().iter().map(|n| n.kind).collect::<Vec<_>>())
    };
    assert_eq!(outcome(1), outcome(0), "which rows are hidden tells whether the 99-year-old has diabetes");
}

// ---------------------------------------------------------------------------
// Family 8: hidden and masked columns
// ---------------------------------------------------------------------------

/// Family 8: the hidden `name` column cannot be reached through any clause,
/// alias, function or join, and the error is exactly the one of a column
/// that does not exist.
#[test]
fn family8_hidden_column_indistinguishable_from_missing() {
    let lab = Lab::new();
    let templates = [
        "SELECT {c} FROM patients",
        "SELECT COUNT(*) FROM patients WHERE {c} = 'Ada Lovelace'",
        "SELECT COUNT(*) FROM patients WHERE {c} LIKE 'A%'",
        "SELECT COUNT(*) FROM patients WHERE {c} >= 'M'",
        "SELECT {c}, COUNT(*) FROM patients GROUP BY {c}",
        "SELECT sex, COUNT(*) FROM patients GROUP BY sex ORDER BY MAX({c})",
        "SELECT COUNT(*) FROM patients GROUP BY UPPER({c})",
        "SELECT COUNT(*) FROM patients WHERE SUBSTR({c}, 1, 1) = 'A'",
        "SELECT COUNT(*) FROM patients WHERE LENGTH({c}) = 12",
        "SELECT COUNT(*) FROM patients WHERE CAST({c} AS INTEGER) IS NULL",
        "SELECT COUNT(DISTINCT {c}) FROM patients",
        "SELECT COUNT(*) FROM patients p WHERE p.{c} = 'x'",
        "SELECT COUNT(*) FROM patients WHERE \"{c}\" = 'x'",
        "SELECT COUNT(*) FROM (SELECT * FROM patients) t WHERE t.{c} = 'x'",
        "WITH t AS (SELECT {c} AS n FROM patients) SELECT COUNT(*) FROM t",
        "SELECT COUNT(*) FROM patients p JOIN visits v ON p.{c} = v.ward",
        "SELECT sex, COUNT(*) FROM patients GROUP BY sex HAVING MIN({c}) = 'Ada'",
        "SELECT COUNT(*) FROM visits WHERE visit_{c} = 1",
    ];
    for t in templates {
        let hidden_sql = t.replace("{c}", "name").replace("visit_name", "visit_id");
        let missing_sql = t.replace("{c}", "nosuch");
        let hidden = lab.refused(&hidden_sql);
        let missing = lab.refused(&missing_sql);
        let expect = missing.text.replace("visit_nosuch", "visit_id").replace("nosuch", "name");
        assert_eq!(
            (hidden.rule, hidden.kind.as_str(), hidden.text.as_str()),
            (missing.rule, missing.kind.as_str(), expect.as_str()),
            "hidden and missing columns differ for {t}"
        );
    }
}

/// Family 8: hidden columns do not appear in DESCRIBE, `*`, EXPLAIN or completion.
#[test]
fn family8_hidden_column_not_listed_anywhere() {
    let lab = Lab::new();
    let rel = lab.released("DESCRIBE patients");
    let cols: Vec<&str> = rel.rows().iter().map(|r| text(&r[0])).collect();
    assert!(!cols.contains(&"name"), "{cols:?}");
    assert!(cols.contains(&"bmi"));
    let rel = lab.released("DESCRIBE visits");
    assert!(!rel.rows().iter().any(|r| text(&r[0]) == "visit_id"));
    let rel = lab.released("EXPLAIN SELECT * FROM patients");
    let plan = rel.text().unwrap();
    assert!(!plan.contains("name") && !plan.contains("Lovelace"), "{plan}");
    let e = lab.refused_by("SELECT * FROM patients", Rule::RawRows);
    assert!(!e.text.contains("name"), "{e:?}");
    let code = "SELECT na FROM patients";
    let c = safe_data_policy::complete(lab.policy.catalog(), code, 9);
    assert!(!c.matches.iter().any(|m| m.eq_ignore_ascii_case("name")), "{:?}", c.matches);
    let code = "SELECT p. FROM patients p";
    let c = safe_data_policy::complete(lab.policy.catalog(), code, 9);
    assert!(!c.matches.iter().any(|m| m.eq_ignore_ascii_case("name")), "{:?}", c.matches);
    assert!(c.matches.iter().any(|m| m == "bmi"), "{:?}", c.matches);
    // Before any FROM, completion offers every table's visible columns.
    let catalog = lab.policy.catalog();
    let c = safe_data_policy::complete(catalog, "SELECT na", 9);
    assert!(!c.matches.iter().any(|m| m.eq_ignore_ascii_case("name")), "{:?}", c.matches);
    let c = safe_data_policy::complete(catalog, "SELECT bm", 9);
    assert_eq!(c.matches, vec!["bmi"]);
    let c = safe_data_policy::complete(catalog, "CHART ", 6);
    assert_eq!(c.matches, vec!["BAR", "LINE", "SCATTER", "HISTOGRAM"]);
    let c = safe_data_policy::complete(catalog, "CHART BAR (x = region, co", 25);
    assert_eq!(c.matches, vec!["color"]);
    // Inspect (shift-tab) knows nothing about hidden columns, as about missing ones.
    let catalog = lab.policy.catalog();
    assert!(safe_data_policy::inspect(catalog, "SELECT name FROM patients", 9).is_none());
    assert!(safe_data_policy::inspect(catalog, "SELECT visit_id FROM visits", 10).is_none());
    assert!(safe_data_policy::inspect(catalog, "SELECT bmi FROM patients", 9).is_some());
}

/// Family 8: a measure (masked outside aggregates) stays a measure through
/// aliases, CTEs, subqueries, unions, casts and functions; binary search on
/// it with ranges or LIKE is refused.
#[test]
fn family8_measure_masked_through_aliases_and_functions() {
    let lab = Lab::new();
    for sql in [
        "SELECT COUNT(*) FROM patients WHERE bmi > 60",
        "SELECT COUNT(*) FROM patients WHERE bmi BETWEEN 68 AND 70",
        "SELECT COUNT(*) FROM (SELECT bmi AS x FROM patients) t WHERE x > 60",
        "WITH t AS (SELECT bmi * 1 AS x FROM patients) SELECT COUNT(*) FROM t WHERE x > 60",
        "SELECT COUNT(*) FROM (SELECT age AS x FROM patients UNION ALL SELECT bmi AS x FROM patients) t WHERE x > 60",
        "SELECT COUNT(*) FROM patients WHERE CAST(bmi AS INTEGER) = 69",
        "SELECT COUNT(*) FROM patients WHERE CAST(bmi AS TEXT) LIKE '69%'",
        "SELECT COUNT(*) FROM patients WHERE ROUND(bmi) > 60",
        "SELECT COUNT(*) FROM patients WHERE NOT (age = 99 AND bmi > 30)",
        "SELECT x > 60 AS big, COUNT(*) FROM (SELECT bmi AS x FROM patients) t GROUP BY 1",
        "SELECT sex, COUNT(*) FROM patients GROUP BY sex HAVING SUM(bmi) > 0 AND MAX(bmi) > 60",
        "SELECT COUNT(*) FROM patients p JOIN visits v ON p.patient_id = v.patient_id WHERE v.cost > 4000",
        "SELECT COUNT(*) FROM patients p JOIN regions r ON p.bmi = r.beds",
        "SELECT COUNT(*) FROM patients WHERE income > 1000000",
    ] {
        let e = lab.refused(sql);
        assert!(matches!(e.rule, Some(Rule::MeasureUse | Rule::JoinKey | Rule::AggregateNotAllowed)), "{sql}: {e:?}");
    }
}

/// Family 8: the identifier only joins and counts; no filtering, grouping or
/// arithmetic can single a person out by id.
#[test]
fn family8_identifier_masked() {
    let lab = Lab::new();
    for sql in [
        "SELECT SUM(bmi) FROM patients WHERE patient_id = 13",
        "SELECT SUM(bmi) FROM patients WHERE patient_id BETWEEN 13 AND 13",
        "SELECT AVG(bmi) FROM patients WHERE patient_id IN (13)",
        "SELECT SUM(patient_id) FROM patients",
        "SELECT MIN(patient_id) FROM patients",
        "SELECT COUNT(patient_id) FROM patients",
        "SELECT COUNT(*) FROM (SELECT patient_id AS pid FROM patients) t WHERE pid < 14",
        "SELECT COUNT(*) FROM patients p JOIN visits v ON p.patient_id + 0 = v.patient_id",
        "SELECT COUNT(*) FROM patients p JOIN visits v ON p.patient_id = v.visit_no",
    ] {
        let e = lab.refused(sql);
        assert!(matches!(e.rule, Some(Rule::IdentifierUse | Rule::JoinKey | Rule::AggregateNotAllowed)), "{sql}: {e:?}");
    }
    // Binary search on the unique region's name: every narrowing is thin.
    for p in ["I%", "Is%", "Isl%", "Isle"] {
        lab.refused_by(&format!("SELECT COUNT(*) FROM patients WHERE region LIKE '{p}'"), Rule::MinGroupSize);
    }
    lab.hidden_or_refused("SELECT region LIKE 'I%' AS g, COUNT(*) AS n FROM patients GROUP BY 1", |r| r[0] == Value::Boolean(true));
}

// ---------------------------------------------------------------------------
// Family 9: outliers
// ---------------------------------------------------------------------------

/// Family 7 (products hidden in second moments): COVAR_SAMP(y, x) adds up
/// y·x, so with x = age + a 0/1 column (or two such combinations) the sum
/// isolates the people whose flag is set; VAR(y + d) - VAR(y) - VAR(d) is
/// 2·COV(y, d). Second moments take table columns passed on unchanged, also
/// through subqueries (a second red-team round computed the sum in one).
#[test]
fn family7_second_moments_take_table_columns_only() {
    let lab = Lab::new();
    for sql in [
        "SELECT VARIANCE(bmi + diabetes) FROM patients",
        "SELECT COVAR_SAMP(bmi, age + diabetes) FROM patients",
        "SELECT COVAR_SAMP(bmi, x) FROM (SELECT bmi, age + diabetes AS x FROM patients) t",
        "WITH t AS (SELECT bmi, age + 2 * diabetes AS x FROM patients) SELECT CORR(bmi, x) FROM t",
        "SELECT STDDEV(b) FROM (SELECT bmi * 2 AS b FROM patients) t",
    ] {
        lab.refused_by(sql, Rule::ConditionalAggregate);
    }
    // Control: columns passed on unchanged, with both levels of the 0/1
    // column holding at least k people.
    let rel = lab.released("SELECT COVAR_SAMP(b, a) AS c, CORR(b, d) AS r FROM (SELECT bmi AS b, age AS a, diabetes AS d FROM patients) t");
    assert_eq!(rel.rows().len(), 1);
    // From 70 on, 11 patients of whom 4 diabetics: that level holds fewer
    // than k people, and the sum of bmi·diabetes would be theirs: refused.
    lab.refused_by("SELECT COVAR_SAMP(bmi, diabetes) FROM patients WHERE age >= 70", Rule::Differencing);
    lab.released("SELECT COVAR_SAMP(bmi, diabetes) FROM patients WHERE age >= 65");
}

/// Family 9: SUM/AVG clamp each value to the owner's bounds: bmi 69 counts as 50.
#[test]
fn family9_sum_and_avg_clamp_to_bounds() {
    let lab = Lab::new();
    let rel = lab.released("SELECT SUM(bmi) AS s, AVG(bmi) AS a FROM patients");
    assert_close(num(&rel.rows()[0][0]), TOTAL_BMI, "clamped sum (raw would be 1628.8)");
    let rel = lab.released("SELECT region, SUM(bmi) AS s FROM patients GROUP BY region");
    assert_close(num(&row_of(&rel, "East").unwrap()[1]), 517.4, "East clamped (raw 536.4)");
    assert!(!any_cell_is(&rel, 536.4));
    let rel = lab.released("SELECT SUM(cost) AS s FROM visits");
    assert_close(num(&rel.rows()[0][0]), 36749.0, "cost clamped (raw 40749)");
    // Scaling applies to the clamped values.
    let rel = lab.released("SELECT SUM(bmi * 1000000) AS s, SUM(bmi / 0.001) AS t, SUM(bmi - 10) AS u FROM patients");
    assert_close(num(&rel.rows()[0][0]), TOTAL_BMI * 1e6, "scaled sum");
    assert_close(num(&rel.rows()[0][1]), TOTAL_BMI * 1e3, "divided sum");
    assert_close(num(&rel.rows()[0][2]), TOTAL_BMI - 600.0, "shifted sum");
}

/// Family 9: sums of columns without bounds, or divided by a column, are
/// refused: one person could dominate them.
#[test]
fn family9_unbounded_contributions_refused() {
    let lab = Lab::new();
    for sql in [
        "SELECT SUM(income) FROM patients",
        "SELECT AVG(income) FROM patients",
        "SELECT STDDEV(income) FROM patients",
        "SELECT sex, VARIANCE(income) FROM patients GROUP BY sex",
        "SELECT SUM(bmi * income) FROM patients",
        "SELECT CORR(bmi, income) FROM patients",
        "SELECT SUM(bmi / age) FROM patients",
        "SELECT SUM(visit_no * cost) FROM visits",
    ] {
        let e = lab.refused(sql);
        assert!(matches!(e.rule, Some(Rule::Unbounded | Rule::ConditionalAggregate)), "{sql}: {e:?}");
    }
}

/// Family 9: the outlier's value never shows through the clamping: the East
/// group's average, the bmi-by-region totals and the visit costs do not
/// contain 69 or 5000, and the difference of two allowed queries differs
/// from the raw outlier.
#[test]
fn family9_outlier_value_never_released() {
    let lab = Lab::new();
    let rel = lab.released("SELECT region, sex, COUNT(*) AS n, SUM(bmi) AS s, AVG(bmi) AS a FROM patients GROUP BY region, sex");
    assert!(!any_cell_is(&rel, 69.0));
    // East M with and without the East F: the difference is a sum of clamped values.
    let all_east = lab.released("SELECT SUM(bmi) AS s FROM patients WHERE region = 'East'");
    let east_f = lab.released("SELECT SUM(bmi) AS s FROM patients WHERE region = 'East' AND sex = 'F'");
    let east_m = num(&all_east.rows()[0][0]) - num(&east_f.rows()[0][0]);
    let east_m_raw_others = 517.4 - 50.0 - num(&east_f.rows()[0][0]);
    assert!((east_m - east_m_raw_others - 69.0).abs() > 1.0, "the outlier's raw bmi is recoverable");
    let rel = lab.released("SELECT visit_no, SUM(cost) AS s, AVG(cost) AS a FROM visits GROUP BY visit_no");
    assert!(!any_cell_is(&rel, 5000.0));
}

/// Family 9: bounded columns multiplied together are "bounded", yet a high
/// power of age weights the oldest person so heavily that the weighted mean
/// SUM(bmi * age^40) / SUM(age^40) over all 60 people is her bmi.
#[test]
fn family9_amplified_weights_dominate_sum() {
    with_big_stack(|| {
        let lab = Lab::new();
        let power = vec!["age"; 40].join(" * ");
        let sql = format!("SELECT SUM(bmi * 1.0 * {power}) AS weighted, SUM(1.0 * {power}) AS weight FROM patients");
        match lab.run(&sql) {
            Err(e) => assert_ne!(e.kind, "ExecutionError", "{e:?}"),
            Ok(rel) => {
                let r = &rel.rows()[0];
                let derived = num(&r[0]) / num(&r[1]);
                assert!(
                    (derived - BMI_OF_99_YEAR_OLD).abs() > 0.5,
                    "one person dominates a whole-table sum: weighted mean {derived} vs her bmi {BMI_OF_99_YEAR_OLD}"
                );
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Family 11: row limits are not privacy
// ---------------------------------------------------------------------------

/// Family 11: LIMIT/OFFSET on raw rows is refused however it is wrapped.
#[test]
fn family11_limit_on_raw_rows_refused() {
    let lab = Lab::new();
    for (sql, want) in [
        ("SELECT * FROM patients ORDER BY age DESC LIMIT 1", Rule::RawRows),
        ("SELECT sex FROM patients LIMIT 1 OFFSET 6", Rule::RawRows),
        ("SELECT region FROM patients ORDER BY age DESC LIMIT 1", Rule::RawRows),
        ("SELECT age FROM patients ORDER BY age LIMIT 100 OFFSET 59", Rule::RawRows),
        ("SELECT ward FROM visits ORDER BY visit_no DESC LIMIT 1", Rule::RawRows),
    ] {
        lab.refused_by(sql, want);
    }
}

/// Family 11: a LIMIT below the aggregation picks the person the aggregate describes.
#[test]
fn family11_limit_inside_subquery_refused() {
    let lab = Lab::new();
    for (sql, want) in [
        ("SELECT AVG(bmi) FROM (SELECT bmi FROM patients ORDER BY age DESC LIMIT 1) t", Rule::RawRows),
        ("SELECT COUNT(*), SUM(bmi) FROM (SELECT bmi FROM patients ORDER BY age DESC LIMIT 5) t", Rule::RawRows),
        ("WITH top AS (SELECT bmi, sex FROM patients ORDER BY age DESC LIMIT 1) SELECT sex, SUM(bmi) FROM top GROUP BY sex", Rule::RawRows),
        ("SELECT SUM(bmi) FROM (SELECT bmi FROM patients ORDER BY age LIMIT 100 OFFSET 59) t", Rule::RawRows),
        ("SELECT SUM(bmi) FROM (SELECT bmi FROM patients ORDER BY age LIMIT 59) t", Rule::RawRows),
        ("SELECT COUNT(*) FROM (SELECT DISTINCT region FROM patients) t", Rule::RawRows),
    ] {
        lab.refused_by(sql, want);
    }
}

/// Family 11: ORDER BY ... LIMIT and OFFSET walks over groups never show a thin group.
#[test]
fn family11_limit_offset_walk_never_shows_thin_group() {
    let lab = Lab::new();
    for offset in 0..6 {
        let sql = format!("SELECT region, COUNT(*) AS n, SUM(bmi) AS s FROM patients GROUP BY region ORDER BY n LIMIT 1 OFFSET {offset}");
        let rel = lab.run(&sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        for r in rel.rows() {
            assert_ne!(text(&r[0]), "Isle", "{sql}");
            assert!(int(&r[1]) >= K);
        }
    }
    for offset in 0..61 {
        let sql = format!("SELECT age, COUNT(*) AS n FROM patients GROUP BY age ORDER BY age DESC LIMIT 1 OFFSET {offset}");
        let rel = lab.run(&sql).unwrap();
        assert!(rel.rows().is_empty(), "{sql}: {:?}", rel.rows());
    }
}

/// Family 11: LIMIT/OFFSET pages must be pages of the *released* rows. If
/// they are cut before the thin rows are hidden, the empty page of an
/// OFFSET walk ordered by AVG(bmi) tells where the hidden Isle group ranks
/// among the released averages (here: between South 27.9 and East 27.23),
/// i.e. an interval for one person's bmi.
#[test]
fn family11_offset_walk_ranks_hidden_group() {
    let lab = Lab::new();
    let full = lab.released("SELECT region, COUNT(*) AS n FROM patients GROUP BY region ORDER BY AVG(bmi) DESC");
    let full: Vec<Vec<Value>> = full.rows().to_vec();
    assert_eq!(full.len(), 3);
    let mut pages = Vec::new();
    for offset in 0..4 {
        let rel = lab.released(&format!("SELECT region, COUNT(*) AS n FROM patients GROUP BY region ORDER BY AVG(bmi) DESC LIMIT 1 OFFSET {offset}"));
        pages.push((rel.rows().to_vec(), rel.notices().to_vec()));
    }
    for (offset, (rows, notices)) in pages.iter().enumerate() {
        let want: Vec<Vec<Value>> = full.get(offset).cloned().into_iter().collect();
        assert_eq!(rows, &want, "page {offset} of the walk is not page {offset} of the released rows (notices {notices:?}); all pages: {pages:?}");
    }
}

/// Family 11 (and the owner's row limit): truncation at max_rows is announced
/// and comes after suppression.
#[test]
fn family11_max_rows_truncates_after_suppression() {
    let lab = Lab::with_server(2, 30);
    let rel = lab.released("SELECT region, COUNT(*) AS n FROM patients GROUP BY region ORDER BY region");
    assert_eq!(rel.rows().len(), 2);
    assert!(has_notice(&rel, NoticeKind::Truncated) && has_notice(&rel, NoticeKind::Suppressed), "{:?}", rel.notices());
    assert!(rel.rows().iter().all(|r| text(&r[0]) != "Isle"));
}

// ---------------------------------------------------------------------------
// Family 13: resource abuse
// ---------------------------------------------------------------------------

/// Family 13: cross joins in every spelling are refused before running.
#[test]
fn family13_cross_joins_refused() {
    let lab = Lab::new();
    let started = Instant::now();
    for (sql, want) in [
        ("SELECT COUNT(*) FROM patients CROSS JOIN visits", Want::Kind("UnsupportedError")),
        ("SELECT COUNT(*) FROM patients, visits", Want::Kind("UnsupportedError")),
        ("SELECT COUNT(*) FROM patients a, patients b, patients c", Want::Kind("UnsupportedError")),
        ("SELECT COUNT(*) FROM patients a JOIN patients b ON 1 = 1", Want::Kind("UnsupportedError")),
        ("SELECT COUNT(*) FROM patients a JOIN patients b ON TRUE", Want::Kind("UnsupportedError")),
        ("SELECT COUNT(*) FROM patients a JOIN patients b ON a.sex = b.sex", Want::Rule(Rule::JoinKey)),
        ("SELECT COUNT(*) FROM patients a NATURAL JOIN patients b", Want::Kind("UnsupportedError")),
        ("SELECT COUNT(*) FROM patients a FULL JOIN visits v ON a.patient_id = v.patient_id", Want::Kind("UnsupportedError")),
        ("SELECT COUNT(*) FROM regions a, regions b, regions c", Want::Kind("UnsupportedError")),
        ("SELECT COUNT(*) FROM patients a JOIN patients b ON a.age < b.age", Want::Kind("UnsupportedError")),
    ] {
        want.check(&lab, sql);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Family 13: the biggest fan-outs the join keys allow, and a GROUP BY with
/// a group per person, finish quickly and still hide thin rows.
#[test]
fn family13_fan_out_and_many_groups_bounded() {
    let lab = Lab::new();
    let started = Instant::now();
    let rel = lab.released(
        "SELECT a.region, COUNT(*) AS n FROM patients a JOIN patients b ON a.region = b.region \
         JOIN patients c ON b.region = c.region JOIN patients d ON c.region = d.region GROUP BY a.region",
    );
    // 20^4 + 20^4 + 19^4 rows; Isle (1 row, 1 person) hidden.
    let total: i64 = rel.rows().iter().map(|r| int(&r[1])).sum();
    assert_eq!(total, 2 * 20i64.pow(4) + 19i64.pow(4));
    assert!(rel.rows().iter().all(|r| text(&r[0]) != "Isle"));
    let rel = lab.released(
        "SELECT a.age, b.age, a.sex, b.region, COUNT(*) AS n FROM patients a JOIN patients b ON a.region = b.region \
         GROUP BY a.age, b.age, a.sex, b.region",
    );
    assert!(rel.rows().is_empty() && hid_rows(&rel));
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
}

/// Runs `attack` in a child process (this test binary re-executed on one
/// test), so a stack overflow or abort shows up as a failed test instead of
/// killing the whole suite. Returns whether the child succeeded.
fn in_child(test: &str, attack: impl FnOnce()) {
    if std::env::var("SD_ATTACK_CHILD").as_deref() == Ok(test) {
        attack();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("SD_ATTACK_CHILD", test)
        .output()
        .expect("re-running the test binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the attack crashed or failed the process ({:?}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("1 passed"), "the child did not run the test:\n{stdout}");
}

/// Family 13: deep nesting of parentheses and subqueries is refused quickly, without crashing.
#[test]
fn family13_deep_nesting_refused() {
    in_child("family13_deep_nesting_refused", || {
        let lab = Lab::new();
        let started = Instant::now();
        lab.refused(&format!("SELECT COUNT(*) FROM patients WHERE {}TRUE{}", "(".repeat(1000), ")".repeat(1000)));
        lab.refused(&format!("SELECT {}1{}", "(".repeat(1000), ")".repeat(1000)));
        lab.refused(&format!("SELECT COUNT(*) FROM {} patients {}", "(SELECT * FROM ".repeat(300), ") t".repeat(300)));
        lab.refused(&format!("SELECT COUNT(*) FROM patients WHERE {}age > 0{}", "NOT (".repeat(1000), ")".repeat(1000)));
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    });
}

/// Family 13: a long flat chain of operators (`a OR b OR c ...`, `x + x + ...`)
/// is not nested for sqlparser's recursion limit, but the binder recurses once
/// per operator: 150 terms (~2 KB of SQL) must not overflow the evaluation
/// thread's stack (an abort kills the kernel for everyone). Default 2 MiB
/// stack, as the kernel's evaluation thread has.
#[test]
fn family13_long_operator_chain_does_not_crash() {
    in_child("family13_long_operator_chain_does_not_crash", || {
        let lab = Lab::new();
        let started = Instant::now();
        let chain: Vec<String> = (0..150).map(|i| format!("age = {}", i % 111)).collect();
        if let Ok(rel) = lab.run(&format!("SELECT COUNT(*) AS n FROM patients WHERE {}", chain.join(" OR "))) {
            assert_eq!(int(&rel.rows()[0][0]), 60);
        }
        let _ = lab.run(&format!("SELECT SUM({}) FROM patients", vec!["bmi"; 150].join(" + ")));
        let _ = lab.run(&format!("SELECT COUNT(*) FROM patients WHERE {}", vec!["age > 0"; 150].join(" AND ")));
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    });
}

/// Family 13: a 1500-item IN list (~7 KB) is answered, or refused, within
/// 1.5 s (the plan must not grow with the square of the list). Run in a child so an abandoned computation cannot outlive the test.
#[test]
fn family13_long_in_list_bounded() {
    in_child("family13_long_in_list_bounded", || {
        let lab = Lab::new();
        let list: Vec<String> = (0..1500).map(|i| i.to_string()).collect();
        let sql = format!("SELECT COUNT(*) AS n FROM patients WHERE age IN ({})", list.join(", "));
        let started = Instant::now();
        let out = lab.run(&sql);
        let took = started.elapsed();
        if let Ok(rel) = &out {
            assert_eq!(int(&rel.rows()[0][0]), 60);
        }
        assert!(took < Duration::from_millis(1500), "a 1500-item IN list took {took:?} ({:?})", out.err());
    });
}

/// Family 13: splitting and parsing a long one-line statement is linear: a
/// 2500-item IN list (~12 KB) parses within half a second. (Parsing runs on
/// the evaluation thread before any timeout or interrupt applies.)
#[test]
fn family13_long_statement_parses_quickly() {
    let list: Vec<String> = (0..2500).map(|i| i.to_string()).collect();
    let sql = format!("SELECT COUNT(*) AS n FROM patients WHERE age IN ({})", list.join(", "));
    let started = Instant::now();
    let parsed = parse_cell(&sql);
    let took = started.elapsed();
    assert!(parsed.is_ok());
    assert!(took < Duration::from_millis(500), "parsing a 12 KB statement took {took:?}");
}

/// Family 13: an interrupted query stops with `Interrupted`, and a cancelled
/// flag does not leak into the next query's result.
#[test]
fn family13_interrupt_stops_a_query() {
    let lab = Lab::new();
    let who = Requester { user: "mallory".into(), session: "attack".into() };
    let cancel = CancelFlag::new();
    cancel.cancel();
    let sql = "SELECT a.region, COUNT(*) FROM patients a JOIN patients b ON a.region = b.region \
               JOIN patients c ON b.region = c.region JOIN patients d ON c.region = d.region GROUP BY a.region";
    let parsed = parse_cell(sql).unwrap();
    let started = Instant::now();
    let out = lab.policy.run(&parsed[0], &who, &cancel).into_result();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    match out {
        Err(e) => assert_eq!(e.kind(), "Interrupted", "{e}"),
        // Finished before the first poll: still thresholded.
        Ok(rel) => assert!(rel.rows().iter().all(|r| text(&r[0]) != "Isle")),
    }
}

// ---------------------------------------------------------------------------
// Charts: every bar and bin is a released row
// ---------------------------------------------------------------------------

#[test]
fn histogram_bins_face_the_threshold() {
    let lab = Lab::new();
    // Bins of 10 years over [0, 110]: id 7 alone is in [90, 100).
    let rel = lab.released("CHART HISTOGRAM (bins = 11) SELECT age FROM patients");
    let chart = rel.chart().expect("a chart");
    assert_eq!((chart.x.field.as_str(), chart.y.field.as_str()), ("bin_start", "count"));
    assert_eq!(chart.x2.as_ref().map(|e| e.field.as_str()), Some("bin_end"));
    assert!(rel.rows().iter().all(|r| num(&r[0]) < 90.0), "{:?}", rel.rows());
    assert!(hid_rows(&rel), "{:?}", rel.notices());
    // Everyone but id 7 is in a released bin of at least k people.
    let counts: Vec<i64> = rel.rows().iter().map(|r| int(&r[2])).collect();
    assert!(counts.iter().all(|c| *c >= K), "{counts:?}");
    assert_eq!(counts.iter().sum::<i64>(), TOTAL_PEOPLE - 1);
}

#[test]
fn histogram_of_a_measure_uses_the_owners_bounds() {
    let lab = Lab::new();
    let rel = lab.released("CHART HISTOGRAM (bins = 4) SELECT bmi FROM patients");
    let starts: Vec<f64> = rel.rows().iter().map(|r| num(&r[0])).collect();
    assert!(starts.iter().all(|s| [10.0, 20.0, 30.0, 40.0].contains(s)), "{starts:?}");
    let total: i64 = rel.rows().iter().map(|r| int(&r[2])).sum();
    assert!(total <= TOTAL_PEOPLE);
}

#[test]
fn histogram_cannot_bin_identifiers_or_follow_the_data() {
    let lab = Lab::new();
    lab.refused_by("CHART HISTOGRAM (bins = 60, min = 1, max = 61) SELECT patient_id FROM patients", Rule::IdentifierUse);
    // An unbounded measure needs the range from the user, never from the data.
    let e = lab.refused("CHART HISTOGRAM SELECT income FROM patients");
    assert!(e.text.contains("min = ... and max = ..."), "{e:?}");
    // Edges that follow a column would be a per-row condition.
    lab.refused_as("SELECT WIDTH_BUCKET(bmi, age, 100, 10) AS b, COUNT(*) AS n FROM patients GROUP BY 1", "QueryError");
}

#[test]
fn fine_bins_do_not_single_out_the_millionaire() {
    let lab = Lab::new();
    let rel = lab.hidden_or_refused("CHART HISTOGRAM (bins = 1000, min = 0, max = 10000000) SELECT income FROM patients", |row| num(&row[0]) >= 8_000_000.0);
    if let Some(rel) = rel {
        assert!(rel.rows().iter().all(|r| int(&r[2]) >= K), "{:?}", rel.rows());
    }
}

#[test]
fn bar_chart_channels_name_result_columns() {
    let lab = Lab::new();
    let rel = lab.released("CHART BAR (x = region, y = n) SELECT region, COUNT(*) AS n FROM patients GROUP BY region ORDER BY region");
    let chart = rel.chart().unwrap();
    assert_eq!((chart.x.field.as_str(), chart.y.field.as_str()), ("region", "n"));
    // The Isle row is hidden from the chart as from the table.
    assert!(rel.rows().iter().all(|r| r[0] != Value::Text("Isle".into())));
    let e = lab.refused("CHART BAR (x = ward) SELECT region, COUNT(*) AS n FROM patients GROUP BY region");
    assert!(e.text.contains("not a column of the result"), "{e:?}");
    // A chart of raw rows is refused like the rows themselves.
    let e = lab.refused("CHART SCATTER SELECT age, bmi FROM patients");
    assert!(matches!(e.rule, Some(Rule::RawRows | Rule::MeasureUse)), "{e:?}");
}

// ---------------------------------------------------------------------------
// Post-processing released rows
// ---------------------------------------------------------------------------

/// Per-region counts: Isle (one person) is the hidden row.
const PER_REGION: &str = "SELECT region, COUNT(*) AS n, AVG(bmi) AS b FROM patients GROUP BY region";

#[test]
fn where_over_released_rows_is_no_oracle_on_a_hidden_row() {
    let lab = Lab::new();
    // Whether Isle's mean BMI (27.3) is above or below the cut, the hidden
    // row stays in the result until the release hides it: the notice is
    // the same for both filters.
    let above = lab.released(&format!("SELECT region, n FROM ({PER_REGION}) AS r WHERE b > 27"));
    let below = lab.released(&format!("SELECT region, n FROM ({PER_REGION}) AS r WHERE b <= 27"));
    assert!(hid_rows(&above) && hid_rows(&below), "{:?} / {:?}", above.notices(), below.notices());
    for rel in [&above, &below] {
        assert!(rel.rows().iter().all(|r| r[0] != Value::Text("Isle".into())));
    }
}

#[test]
fn aggregating_released_rows_never_sees_a_withheld_row() {
    let lab = Lab::new();
    // The total over the released regions: Isle (one person) was withheld
    // inside and never reaches the outer SUM; a notice says one group of
    // the subquery was withheld.
    let total = lab.released(&format!("SELECT SUM(n) AS people FROM ({PER_REGION}) AS r"));
    assert_eq!(total.rows(), &[vec![Value::Integer(TOTAL_PEOPLE - 1)]]);
    let notice = total.notices().iter().find(|n| n.kind == NoticeKind::Suppressed).expect("a notice");
    assert!(notice.message.starts_with("1 group of a subquery withheld"), "{}", notice.message);
    // Grouped: the withheld row lands in no group, so where it would have
    // landed cannot be seen (before, its outer group was hidden instead).
    let rel = lab.released(&format!("SELECT region = 'North' AS north, SUM(n) AS people FROM ({PER_REGION}) AS r GROUP BY region = 'North' ORDER BY 1"));
    assert_eq!(rel.rows(), &[vec![Value::Boolean(false), Value::Integer(39)], vec![Value::Boolean(true), Value::Integer(20)]]);
    assert!(hid_rows(&rel));
    // Released rows combine freely: a ratio between two released groups.
    let rel = lab.released(
        "SELECT MAX(CASE WHEN sex = 'F' THEN b END) / MAX(CASE WHEN sex = 'M' THEN b END) AS ratio \
         FROM (SELECT sex, AVG(bmi) AS b FROM patients GROUP BY sex) AS s",
    );
    assert_close(num(&rel.rows()[0][0]), (785.1 / 30.0) / (824.7 / 30.0), "ratio of released averages");
}

// ---------------------------------------------------------------------------
// Red team, issue 15 (black box, demo data): two attacks that worked, both
// of the kinds threshold mode cannot stop. Kept as known limits, reproduced
// on the fixture.
// ---------------------------------------------------------------------------

#[test]
#[ignore = "known limit: two allowed queries that share a base filter differ by one person (a tracker); the differencing rule counts removals against the unfiltered group only; needs differential privacy (later issue)"]
fn red_team_shared_base_filter_differencing() {
    let lab = Lab::new();
    // Both filters remove many people from the whole table (allowed); between
    // them they differ by the Isle patient alone.
    let base = lab.released("SELECT COUNT(*) AS n, SUM(bmi) AS s FROM patients WHERE sex = 'M'");
    let without = lab.released("SELECT COUNT(*) AS n, SUM(bmi) AS s FROM patients WHERE sex = 'M' AND region <> 'Isle'");
    let (n, s) = (int(&base.rows()[0][0]), num(&base.rows()[0][1]));
    let (n2, s2) = (int(&without.rows()[0][0]), num(&without.rows()[0][1]));
    assert!(!(n - n2 == 1 && (s - s2 - BMI_OF_ISLE_PATIENT).abs() < 0.05), "the Isle patient's BMI is the difference of two allowed sums");
}

#[test]
#[ignore = "known limit: a histogram's range bins are a GROUP BY a predicate on a measure; total minus the released bins recovers a withheld tail of 1..k-1 people (marginal totals); needs differential privacy (later issue)"]
fn red_team_histogram_range_bins_recover_a_thin_tail() {
    let lab = Lab::new();
    // With one bin, the groups are below / in / at or above the range; the
    // tail above is withheld when thin, the rest is released.
    let mut learned = Vec::new();
    for tenth in (300..=500).step_by(5) {
        let max = tenth as f64 / 10.0;
        let Ok(rel) = lab.run(&format!("CHART HISTOGRAM (bins = 1, min = 10, max = {max}) SELECT bmi FROM patients")) else { continue };
        let released: i64 = rel.rows().iter().map(|r| int(&r[2])).sum();
        let tail = TOTAL_PEOPLE - released;
        if (1..K).contains(&tail) {
            learned.push((max, tail));
        }
    }
    assert!(learned.is_empty(), "counts of 1..k-1 people above a BMI threshold: {learned:?}");
}
