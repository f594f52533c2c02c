//! Composition attacks (threat families 15–17, issue 17 "Threshold mode,
//! sound"): constructs that are each allowed, stacked so that one query
//! learns about one person. One or more concrete attacks per family of the
//! issue, each with a positive control, each asserting the specific outcome
//! (the rule of the refusal, or which rows are released and how many groups
//! the notices say were withheld); a syntax error, an unknown column or
//! another rule fails the test.
//!
//! The fixture (`tests/rust/fixtures/README.md`), k = 5:
//!
//! - patients: id 7 is the only 99-year-old (F, North, diabetes 1, bmi 31.7);
//!   id 60 the only patient of `Isle` (M, diabetes 0, bmi 27.3, six visits);
//! - visits: several rows per patient; visit numbers 4–6 belong to id 60 only;
//! - labs: several rows per patient (ids 1–42); day 4 is one row of id 2
//!   (value 88.434752696); `rare` is NULL except for nine rows of eight
//!   people (id 1 on days 1 and 2, ids 3, 6, 9, 12, 15, 21, 24 on day 1).
//!
//! The behaviour under test: every aggregation over protected rows withholds
//! its flagged groups (thin: fewer than k people kept, or an aggregate fed
//! by fewer than k, or a UNION ALL branch contributing 1..k-1; differencing:
//! the filters touched 1..k-1 people, overall, per aggregate or per branch)
//! right where it aggregates, so they feed nothing after it; a notice counts
//! them ("N groups withheld", "N groups of a subquery withheld"); a
//! whole-table aggregate at the top that would be withheld is refused;
//! a join key on protected rows is a bare declared key; released doubles have
//! 6 significant digits.

mod lab;

use lab::{Cell::*, Lab, Layer, assert_close, assert_rows, assert_withheld, assert_withheld_total, dbl, int, num, sig6, text, withheld_all};
use safe_data_lang::engine::Value;
use safe_data_policy::{NoticeKind, Rule};

/// The per-region query of the attack suite: Isle (one person) is its thin row.
const PER_REGION: &str = "SELECT region, COUNT(*) AS n, AVG(bmi) AS b FROM patients GROUP BY region";

/// Every region × diabetes group has >= 5 people except Isle/0 (id 60 alone).
const REGION_DIABETES: &str = "SELECT region, diabetes, COUNT(*) AS n FROM patients GROUP BY region, diabetes";

/// One thin aggregate (the 99-year-old's mean bmi, 31.7) next to four
/// released rows with constant values 0.0 and 100.0.
const THIN_AND_CONSTANTS: &str = "SELECT AVG(bmi) AS a FROM patients WHERE age = 99 \
     UNION ALL SELECT 0.0 AS a FROM patients GROUP BY sex \
     UNION ALL SELECT 100.0 AS a FROM patients GROUP BY sex";

/// Value of id 2's one lab row of day 4.
const LAB_DAY4_VALUE: f64 = 88.434752696;

// ---------------------------------------------------------------------------
// Controls
// ---------------------------------------------------------------------------

/// Control: the labs fixture (85 rows, 42 people) and its full-precision and
/// sparse measures, released whole.
#[test]
fn control_labs_fixture() {
    let lab = Lab::new();
    let sql = "SELECT COUNT(*) AS n, COUNT(DISTINCT patient_id) AS people, AVG(value) AS v, AVG(rare) AS r, COUNT(rare) AS nr FROM labs";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![I(85), I(42), F(119.309), F(20.3333), I(9)]], sql);
    assert!(rel.notices().is_empty(), "{:?}", rel.notices());
}

/// Control: post-processing released rows gives exactly what the rows say.
#[test]
fn control_post_processing_of_released_rows() {
    let lab = Lab::new();
    let sql = "SELECT SUM(n) AS people, COUNT(*) AS groups FROM (SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex) t";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![I(60), I(2)]], sql);
    assert!(rel.notices().is_empty(), "{:?}", rel.notices());
    // The inner query alone: six groups released, Isle/0 withheld.
    let rel = lab.released(&format!("{REGION_DIABETES} ORDER BY region, diabetes"));
    assert_eq!(rel.rows().len(), 6, "{:?}", rel.rows());
    assert!(rel.rows().iter().all(|r| text(&r[0]) != "Isle"));
    assert_withheld(&rel, (1, 0), (0, 0), REGION_DIABETES);
}

// ---------------------------------------------------------------------------
// Family 1: post-processing over an aggregating subquery
// ---------------------------------------------------------------------------

/// Family 1: re-grouping an aggregate whose inner groups include a thin one
/// must not tell the thin group's key. Isle/0 is thin: if it fed the outer
/// GROUP BY, the outer `diabetes = 0` row would be flagged (telling that
/// the Isle patient is not diabetic). It is withheld before: both outer rows
/// are released, computed from released inner rows only, and the notice
/// says one group of the subquery was withheld (what the inner query shows
/// on its own).
#[test]
fn family1_regrouping_does_not_name_the_thin_groups_key() {
    let lab = Lab::new();
    let sql = format!(
        "SELECT diabetes, COUNT(*) AS groups, SUM(n) AS people FROM ({REGION_DIABETES}) t GROUP BY diabetes ORDER BY diabetes"
    );
    let rel = lab.released(&sql);
    assert_rows(&rel, &[vec![I(0), I(3), I(44)], vec![I(1), I(3), I(15)]], &sql);
    assert_withheld(&rel, (0, 0), (1, 0), &sql);

    // An outer WHERE that only the thin row (n = 1) passes: nothing comes out.
    let sql = format!("SELECT diabetes, COUNT(*) AS groups FROM ({REGION_DIABETES}) t WHERE n < 5 GROUP BY diabetes");
    let rel = lab.released(&sql);
    assert_rows(&rel, &[], &sql);
    assert_withheld(&rel, (0, 0), (1, 0), &sql);

    // DISTINCT over the inner rows a WHERE keeps: only released rows count.
    let sql = format!("SELECT DISTINCT diabetes FROM ({REGION_DIABETES}) t WHERE n < 14 ORDER BY 1");
    let rel = lab.released(&sql);
    assert_rows(&rel, &[vec![I(1)]], &sql);
    assert_withheld_total(&rel, (1, 0), &sql);

    // ORDER BY ... LIMIT over the inner rows: the smallest *released* group.
    let sql = format!("SELECT region, diabetes, n FROM ({REGION_DIABETES}) t ORDER BY n, region, diabetes LIMIT 1");
    let rel = lab.released(&sql);
    assert_rows(&rel, &[vec![T("East"), I(1), I(5)]], &sql);
    assert_withheld_total(&rel, (1, 0), &sql);

    // The same through a CTE.
    let sql = format!("WITH t AS ({REGION_DIABETES}) SELECT diabetes, SUM(n) AS people FROM t GROUP BY diabetes ORDER BY diabetes");
    let rel = lab.released(&sql);
    assert_rows(&rel, &[vec![I(0), I(44)], vec![I(1), I(15)]], &sql);
    assert_withheld(&rel, (0, 0), (1, 0), &sql);
}

/// Family 1: `CASE WHEN inner_aggregate < T` over a UNION ALL of a thin
/// aggregate (the 99-year-old's mean bmi, 31.7) with released constant rows
/// was a one-bit oracle on the thin value (the outer group it landed in was
/// hidden). Withheld at its aggregation, it lands nowhere: every threshold
/// gives the same answer, computed from the four constant rows.
#[test]
fn family1_case_on_a_thin_aggregate_is_no_oracle() {
    let lab = Lab::new();
    let mut outcomes = Vec::new();
    for t in ["30.0", "31.6", "31.8", "35.0"] {
        let sql = format!(
            "SELECT CASE WHEN a < {t} THEN 'below' ELSE 'above' END AS side, COUNT(*) AS n FROM ({THIN_AND_CONSTANTS}) t GROUP BY 1 ORDER BY 1"
        );
        let rel = lab.released(&sql);
        assert_rows(&rel, &[vec![T("above"), I(2)], vec![T("below"), I(2)]], &sql);
        assert_withheld(&rel, (0, 0), (1, 0), &sql);
        outcomes.push((rel.rows().to_vec(), rel.notices().to_vec()));

        // The outer WHERE and a whole-table count over released rows.
        let sql = format!("SELECT COUNT(*) AS n FROM ({THIN_AND_CONSTANTS}) t WHERE a < {t}");
        let rel = lab.released(&sql);
        assert_rows(&rel, &[vec![I(2)]], &sql);
        assert_withheld(&rel, (0, 0), (1, 0), &sql);
        outcomes.push((rel.rows().to_vec(), rel.notices().to_vec()));

        // HAVING over the outer groups.
        let sql = format!(
            "SELECT a < {t} AS below, COUNT(*) AS n FROM ({THIN_AND_CONSTANTS}) t GROUP BY 1 HAVING COUNT(*) >= 2 ORDER BY 1"
        );
        let rel = lab.released(&sql);
        assert_rows(&rel, &[vec![B(false), I(2)], vec![B(true), I(2)]], &sql);
        assert_withheld(&rel, (0, 0), (1, 0), &sql);
    }
    // Pairs of identical answers per shape, whatever the threshold.
    for w in outcomes.chunks(2).collect::<Vec<_>>().windows(2) {
        assert_eq!(w[0], w[1], "the answer depends on the threshold compared with a thin value");
    }
    // ORDER BY / LIMIT / OFFSET over the union: pages of the four released rows.
    for (order, want) in [("a DESC LIMIT 1", 100.0), ("a LIMIT 1", 0.0), ("a LIMIT 1 OFFSET 2", 100.0), ("a DESC LIMIT 1 OFFSET 2", 0.0)] {
        let sql = format!("SELECT a FROM ({THIN_AND_CONSTANTS}) t ORDER BY {order}");
        let rel = lab.released(&sql);
        assert_rows(&rel, &[vec![F(want)]], &sql);
        assert_withheld(&rel, (0, 0), (1, 0), &sql);
    }
}

/// Family 1: an inner `ORDER BY … LIMIT 1` over groups that are all thin
/// (ages 78, 79 and 99, one person each) chose among them by their values
/// (DESC picks the 99-year-old, bmi 31.7; ASC the 79-year-old, 28.1), and
/// the outer group of the chosen age was then hidden. The LIMIT now sees
/// released groups only (none): both orders give the same answer, three
/// released outer rows from the constant branches.
#[test]
fn family1_inner_order_by_limit_sees_released_rows_only() {
    let lab = Lab::new();
    let mut outcomes = Vec::new();
    for dir in ["DESC", "ASC"] {
        let sql = format!(
            "SELECT age, COUNT(*) AS c FROM ( \
               SELECT age FROM (SELECT age, AVG(bmi) AS b FROM patients WHERE age >= 78 GROUP BY age ORDER BY b {dir} LIMIT 1) best \
               UNION ALL SELECT 78 AS age FROM patients GROUP BY sex \
               UNION ALL SELECT 79 AS age FROM patients GROUP BY sex \
               UNION ALL SELECT 99 AS age FROM patients GROUP BY sex \
             ) t GROUP BY age ORDER BY age"
        );
        let rel = lab.released(&sql);
        assert_rows(&rel, &[vec![I(78), I(2)], vec![I(79), I(2)], vec![I(99), I(2)]], &sql);
        // All 60 age groups of the inner aggregation are withheld (3 thin, 57 empty).
        assert_withheld(&rel, (0, 0), (60, 0), &sql);
        outcomes.push((rel.rows().to_vec(), rel.notices().to_vec()));
    }
    assert_eq!(outcomes[0], outcomes[1], "the inner ORDER BY ... LIMIT chose among withheld groups");

    // Control: over released groups the inner LIMIT picks by value (mean
    // bmi: South 27.9 > East 27.23 > North 25.355; Isle, 27.3, is withheld
    // and takes no place in the order).
    for (order, want) in [("b DESC LIMIT 1", "South"), ("b LIMIT 1", "North"), ("b DESC LIMIT 1 OFFSET 1", "East"), ("b DESC LIMIT 1 OFFSET 2", "North")] {
        let sql = format!("SELECT region, n FROM ({PER_REGION} ORDER BY {order}) t");
        let rel = lab.released(&sql);
        assert_eq!(rel.rows().len(), 1, "{sql}: {:?}", rel.rows());
        assert_eq!(text(&rel.rows()[0][0]), want, "{sql}");
        assert_withheld_total(&rel, (1, 0), &sql);
    }
}

/// Family 1: an outer WHERE on a released value around the thin row's value
/// (Isle: 27.3) neither shows the thin row nor changes the notice.
#[test]
fn family1_outer_where_around_a_thin_value() {
    let lab = Lab::new();
    let mut notices = Vec::new();
    for (t, want) in [("27.2", vec!["East", "South"]), ("27.4", vec!["South"])] {
        let sql = format!("SELECT region, n FROM ({PER_REGION}) r WHERE b > {t} ORDER BY region");
        let rel = lab.released(&sql);
        let got: Vec<&str> = rel.rows().iter().map(|r| text(&r[0])).collect();
        assert_eq!(got, want, "{sql}");
        assert_withheld_total(&rel, (1, 0), &sql);
        notices.push(rel.notices().to_vec());
    }
    assert_eq!(notices[0], notices[1]);
}

/// Family 1: a join of released rows with a public table. Joined before it
/// was withheld, the thin Isle row became eight hidden rows (one per Isle
/// ward): the count of hidden rows told the fan-out of the thin group's
/// key. Withheld at its aggregation, it is one group, and joins nothing.
#[test]
fn family1_join_with_released_rows_only() {
    let lab = Lab::new();
    let sql = "SELECT w.ward, t.n FROM (SELECT region, COUNT(*) AS n FROM patients GROUP BY region) t \
               JOIN region_wards w ON t.region = w.region ORDER BY w.ward";
    let rel = lab.released(sql);
    assert_eq!(rel.rows().len(), 24, "{:?}", rel.rows());
    assert!(rel.rows().iter().all(|r| !text(&r[0]).starts_with('I')), "{:?}", rel.rows());
    assert_withheld_total(&rel, (1, 0), sql);
    // Two released results joined on their key: only keys released on both sides.
    let sql = "SELECT a.region, a.n, b.m FROM (SELECT region, COUNT(*) AS n FROM patients GROUP BY region) a \
               JOIN (SELECT region, COUNT(*) AS m FROM patients WHERE age <> 99 GROUP BY region) b ON a.region = b.region ORDER BY a.region";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("East"), I(19), I(19)], vec![T("South"), I(20), I(20)]], sql);
    // Isle thin on both sides, North withheld on the right (the 99-year-old).
    assert_withheld_total(&rel, (2, 1), sql);
}

// ---------------------------------------------------------------------------
// Family 2: notices count what DISTINCT merged
// ---------------------------------------------------------------------------

/// Family 2: `SELECT DISTINCT <expr of an aggregate> … GROUP BY age`: every
/// age group is one person (all 60 withheld). Counted after DISTINCT, the
/// hidden rows merged by value ("2 rows hidden" when the threshold splits
/// the people, "1 row" when it does not): a question answered by a notice.
/// Counted where they are withheld, it is 60 groups whatever the threshold.
#[test]
fn family2_distinct_does_not_merge_withheld_groups() {
    let lab = Lab::new();
    let mut outcomes = Vec::new();
    for t in ["25.0", "30.0", "60.0"] {
        let sql = format!("SELECT DISTINCT AVG(bmi) > {t} AS high FROM patients GROUP BY age");
        let rel = lab.released(&sql);
        assert_rows(&rel, &[], &sql);
        assert_withheld(&rel, (60, 0), (0, 0), &sql);
        outcomes.push(rel.notices().to_vec());

        // The same with the 99-year-old's group among released ones (ages
        // split in two bands of 30; she is in the old band, alone at 99).
        let sql = format!("SELECT DISTINCT age >= 99 AS old, AVG(bmi) > {t} AS high FROM patients GROUP BY age >= 99, age >= 50");
        let rel = lab.released(&sql);
        assert!(rel.rows().iter().all(|r| r[0] == Value::Boolean(false)), "{sql}: {:?}", rel.rows());
        assert_withheld(&rel, (1, 0), (0, 0), &sql);
    }
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "{outcomes:?}");

    // Released groups are deduplicated, withheld ones counted one by one:
    // region × sex has 10 or 9 people per group except Isle/M (1).
    let sql = "SELECT DISTINCT COUNT(*) AS n FROM patients GROUP BY region, sex";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![I(9)], vec![I(10)]], sql);
    assert_withheld(&rel, (1, 0), (0, 0), sql);
    // A filter touching the 99-year-old (North F): that group is withheld
    // by the differencing rule, counted apart from the thin Isle/M.
    let sql = "SELECT DISTINCT COUNT(*) >= 5 AS big FROM patients WHERE age <> 99 GROUP BY region, sex";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![B(true)]], sql);
    assert_withheld(&rel, (1, 1), (0, 0), sql);
}

// ---------------------------------------------------------------------------
// Family 3: constant or computed join keys
// ---------------------------------------------------------------------------

/// Family 3: a literal column of a row-level subquery of a protected table
/// as a join key is a cross join (in which a WHERE on one side weighs the
/// other side's people). Refused with JoinKey, whatever the spelling; so is
/// a computed key on a side that carries protected rows.
#[test]
fn family3_constant_and_computed_join_keys_refused() {
    let lab = Lab::new();
    for sql in [
        "SELECT COUNT(*) AS n FROM (SELECT 1 AS one, bmi FROM patients) a JOIN (SELECT 1 AS one, age FROM patients WHERE age = 99) b ON a.one = b.one",
        "SELECT COUNT(*) AS n FROM (SELECT 1 AS one, bmi FROM patients) a JOIN (SELECT 1 AS one FROM patients WHERE age = 99) b USING (one)",
        "SELECT a.sex, COUNT(*) AS n FROM (SELECT 1 AS one, sex FROM patients) a LEFT JOIN (SELECT 1 AS one FROM visits) b ON a.one = b.one GROUP BY a.sex",
        "SELECT COUNT(*) AS n FROM (SELECT 'x' AS one, sex FROM patients) a JOIN (SELECT 'x' AS one FROM visits WHERE visit_no = 6) b ON a.one = b.one",
        "WITH c AS (SELECT 1 AS one, sex FROM patients) SELECT COUNT(*) AS n FROM c a JOIN c b ON a.one = b.one",
        // A constant key on the protected side against a public table.
        "SELECT COUNT(*) AS n FROM (SELECT 'North' AS r, bmi FROM patients) a JOIN regions x ON a.r = x.region",
        "SELECT x.region, COUNT(*) AS n FROM regions x JOIN (SELECT 'North' AS r FROM patients WHERE age = 99) a ON x.region = a.r GROUP BY x.region",
        // Computed keys on protected rows.
        "SELECT COUNT(*) AS n FROM (SELECT region || '' AS r FROM patients) a JOIN regions x ON a.r = x.region",
        "SELECT COUNT(*) AS n FROM (SELECT UPPER(region) AS r FROM patients) a JOIN (SELECT UPPER(region) AS r FROM patients) b ON a.r = b.r",
        "SELECT COUNT(*) AS n FROM (SELECT patient_id + 0 AS pid FROM patients) a JOIN visits v ON a.pid = v.patient_id",
        "SELECT COUNT(*) AS n FROM patients p JOIN visits v ON p.patient_id = v.patient_id + 0",
    ] {
        lab.refused_by(sql, Rule::JoinKey);
    }
}

/// Family 3, control: declared keys passed through subqueries, USING and
/// LEFT JOIN are joins like any other.
#[test]
fn family3_declared_keys_through_subqueries_control() {
    let lab = Lab::new();
    let sql = "SELECT COUNT(*) AS n, COUNT(DISTINCT a.patient_id) AS people FROM (SELECT patient_id, region FROM patients) a \
               LEFT JOIN (SELECT patient_id, cost FROM visits) b USING (patient_id)";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![I(124), I(60)]], sql);
    let sql = "SELECT x.region, COUNT(*) AS n FROM (SELECT region FROM patients) a JOIN regions x ON a.region = x.region \
               GROUP BY x.region ORDER BY x.region";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("East"), I(19)], vec![T("North"), I(20)], vec![T("South"), I(20)]], sql);
    let sql = "SELECT p.sex, COUNT(*) AS n FROM patients p JOIN (SELECT patient_id FROM patients) q ON p.patient_id = q.patient_id \
               GROUP BY p.sex ORDER BY p.sex";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("F"), I(30)], vec![T("M"), I(30)]], sql);
    assert!(rel.notices().is_empty(), "{:?}", rel.notices());
}

// ---------------------------------------------------------------------------
// Family 4: a union with a filtered copy of the table
// ---------------------------------------------------------------------------

/// Family 4: `UNION ALL` of the table with a copy filtered down to one
/// person: the unfiltered branch keeps everyone, yet every aggregate counts
/// that person twice. Each branch's contribution must rest on 0 or >= k
/// people: the single-person branch makes the row thin.
#[test]
fn family4_union_with_a_single_person_copy() {
    let lab = Lab::new();
    for one in ["age = 99", "region = 'Isle'", "age >= 99", "age = 99 AND sex = 'F'"] {
        let sql = format!("SELECT COUNT(*) AS n, SUM(bmi) AS s FROM (SELECT bmi FROM patients UNION ALL SELECT bmi FROM patients WHERE {one}) t");
        lab.refused_by(&sql, Rule::MinGroupSize);
        let sql = format!("SELECT AVG(bmi) AS a FROM (SELECT bmi, sex FROM patients UNION ALL SELECT bmi, sex FROM patients WHERE {one}) t");
        lab.refused_by(&sql, Rule::MinGroupSize);
    }
    // Through a CTE, and with the copy first.
    lab.refused_by(
        "WITH c AS (SELECT bmi, age FROM patients) SELECT COUNT(*) AS n FROM (SELECT bmi FROM c UNION ALL SELECT bmi FROM c WHERE age = 99) u",
        Rule::MinGroupSize,
    );
    lab.refused_by(
        "SELECT SUM(bmi) AS s FROM (SELECT bmi FROM patients WHERE region = 'Isle' UNION ALL SELECT bmi FROM patients) t",
        Rule::MinGroupSize,
    );
    // Grouped: the 99-year-old is F; the F row is withheld, M is released
    // (its copy branch is empty: 0 people is fine).
    let sql = "SELECT sex, COUNT(*) AS n, SUM(bmi) AS s FROM (SELECT sex, bmi FROM patients UNION ALL SELECT sex, bmi FROM patients WHERE age = 99) t \
               GROUP BY sex ORDER BY sex";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("M"), I(30), F(824.7)]], sql);
    assert_withheld(&rel, (1, 0), (0, 0), sql);
}

/// Family 4: the copy filtered to everyone but one person touches one person
/// in its branch: the differencing rule, per branch.
#[test]
fn family4_union_with_an_everyone_but_one_copy() {
    let lab = Lab::new();
    for but_one in ["age <> 99", "region <> 'Isle'", "NOT (age = 99)"] {
        let sql = format!("SELECT COUNT(*) AS n FROM (SELECT bmi FROM patients UNION ALL SELECT bmi FROM patients WHERE {but_one}) t");
        lab.refused_by(&sql, Rule::Differencing);
    }
    let sql = "SELECT sex, COUNT(*) AS n, SUM(bmi) AS s FROM (SELECT sex, bmi FROM patients UNION ALL SELECT sex, bmi FROM patients WHERE age <> 99) t \
               GROUP BY sex ORDER BY sex";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("M"), I(60), F(1649.4)]], sql);
    assert_withheld(&rel, (0, 1), (0, 0), sql);
}

/// Family 4, control: a copy filtered to >= k people, removing >= k, is a
/// union like any other (North: 20 people, 10 F and 10 M).
#[test]
fn family4_union_with_a_large_copy_control() {
    let lab = Lab::new();
    let sql = "SELECT COUNT(*) AS n, SUM(bmi) AS s FROM (SELECT bmi FROM patients UNION ALL SELECT bmi FROM patients WHERE region = 'North') t";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![I(80), F(2116.9)]], sql);
    assert!(rel.notices().is_empty(), "{:?}", rel.notices());
    let sql = "SELECT sex, COUNT(*) AS n, SUM(bmi) AS s FROM (SELECT sex, bmi FROM patients UNION ALL SELECT sex, bmi FROM patients WHERE region = 'North') t \
               GROUP BY sex ORDER BY sex";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("F"), I(40), F(1037.2)], vec![T("M"), I(40), F(1079.7)]], sql);
    assert!(rel.notices().is_empty(), "{:?}", rel.notices());
}

// ---------------------------------------------------------------------------
// Family 5: partial removal, sparse aggregates, NULL padding, precision
// ---------------------------------------------------------------------------

/// Family 5: a filter that drops some rows of a person who keeps others
/// touches that person. Visits 4–6 are id 60's (who keeps visits 1–3).
#[test]
fn family5_dropping_some_of_a_persons_rows_is_differencing() {
    let lab = Lab::new();
    for w in ["visit_no <> 6", "visit_no < 6", "visit_no <= 3", "NOT (visit_no = 6)", "visit_no IN (1, 2, 3, 4, 5)"] {
        let sql = format!("SELECT COUNT(*) AS n, AVG(cost) AS a FROM visits WHERE {w}");
        lab.refused_by(&sql, Rule::Differencing);
        let sql = format!("SELECT COUNT(DISTINCT patient_id) AS people FROM visits WHERE {w}");
        lab.refused_by(&sql, Rule::Differencing);
    }
    // Grouped: visit 6 is in ward B; A is untouched and released whole.
    let sql = "SELECT ward, COUNT(*) AS n, SUM(cost) AS s FROM visits WHERE visit_no <> 6 GROUP BY ward ORDER BY ward";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("A"), I(81), I(24147)]], sql);
    assert_withheld(&rel, (0, 1), (0, 0), sql);
    // Labs: day 4 is one of id 2's four rows.
    lab.refused_by("SELECT COUNT(*) AS n, AVG(value) AS v FROM labs WHERE day <> 4", Rule::Differencing);
    lab.refused_by("SELECT SUM(value) AS v FROM labs WHERE day < 4", Rule::Differencing);
    // Join pairs: the Isle patient loses one of his eight ward pairs.
    lab.refused_by("SELECT COUNT(*) AS n FROM patients p JOIN region_wards w ON p.region = w.region WHERE w.ward <> 'I1'", Rule::Differencing);
    let sql = "SELECT p.sex, COUNT(*) AS n FROM patients p JOIN region_wards w ON p.region = w.region WHERE w.ward <> 'I1' GROUP BY p.sex ORDER BY p.sex";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("F"), I(240)]], sql);
    assert_withheld(&rel, (0, 1), (0, 0), sql);
    // Inside a subquery: withheld there, counted as a subquery's group.
    let sql = "SELECT SUM(n) AS n FROM (SELECT ward, COUNT(*) AS n FROM visits WHERE visit_no <> 6 GROUP BY ward) t";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![I(81)]], sql);
    assert_withheld(&rel, (0, 0), (0, 1), sql);
}

/// Family 5, control: filters that touch >= k people are released, with
/// the exact counts (visit 3: 21 people; every patient loses a ward pair).
#[test]
fn family5_partial_removal_of_many_control() {
    let lab = Lab::new();
    let sql = "SELECT COUNT(*) AS n, COUNT(DISTINCT patient_id) AS people, SUM(cost) AS s FROM visits WHERE visit_no <> 3";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![I(102), I(59), I(36749 - 6270)]], sql);
    let sql = "SELECT COUNT(*) AS n FROM patients p JOIN region_wards w ON p.region = w.region WHERE w.ward NOT IN ('N1', 'S1', 'E1', 'I1')";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![I(420)]], sql);
    let sql = "SELECT COUNT(*) AS n, AVG(value) AS v FROM labs WHERE day = 1";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![I(42), F(122.013)]], sql);
    assert!(rel.notices().is_empty(), "{:?}", rel.notices());
}

/// Family 5: an aggregate over a column that is NULL for all but a few
/// people rests on those few, however many people the group has. `rare` on
/// day 2 is id 1's value alone (in a group of 28 people); on days 3 and 4
/// nobody's (withheld too: an aggregate fed by no one).
#[test]
fn family5_sparse_column_needs_k_feeders() {
    let lab = Lab::new();
    let sql = "SELECT day, COUNT(*) AS n, AVG(rare) AS r FROM labs GROUP BY day ORDER BY day";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![I(1), I(42), F(21.475)]], sql);
    assert_withheld(&rel, (3, 0), (0, 0), sql);
    for sql in [
        "SELECT AVG(rare) AS r FROM labs WHERE day = 2",
        "SELECT COUNT(*) AS n, AVG(rare) AS r FROM labs WHERE day = 2",
        "SELECT SUM(rare) AS r FROM labs WHERE test = 'glucose' AND day >= 2",
        "SELECT COUNT(rare) AS r FROM labs WHERE day = 2",
    ] {
        lab.refused_by(sql, Rule::MinGroupSize);
    }
    // Control: the same group without the sparse aggregate is released.
    let sql = "SELECT COUNT(*) AS n, COUNT(DISTINCT patient_id) AS people FROM labs WHERE day = 2";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![I(28), I(28)]], sql);
    // By test: lipids has no rare value at all.
    let sql = "SELECT test, COUNT(*) AS n, AVG(rare) AS r FROM labs GROUP BY test ORDER BY test";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("glucose"), I(70), F(20.3333)]], sql);
    assert_withheld(&rel, (1, 0), (0, 0), sql);
}

/// Family 5: the filter `day = 1` touches 28 people, but among the people
/// whose `rare` values feed AVG(rare) it touches one (id 1 loses her day-2
/// value): the difference with the unfiltered AVG(rare) is that one value.
#[test]
fn family5_touched_feeders_are_counted_per_aggregate() {
    let lab = Lab::new();
    lab.refused_by("SELECT AVG(rare) AS r FROM labs WHERE day = 1", Rule::Differencing);
    lab.refused_by("SELECT COUNT(*) AS n, AVG(value) AS v, AVG(rare) AS r FROM labs WHERE day = 1", Rule::Differencing);
    // Grouped by test: glucose (id 1's day-2 row is glucose) is withheld by
    // the differencing rule, lipids (days 3 and 4) is empty after the filter.
    let sql = "SELECT test, COUNT(*) AS n, AVG(rare) AS r FROM labs WHERE day = 1 GROUP BY test";
    let rel = lab.released(sql);
    assert_rows(&rel, &[], sql);
    assert_withheld(&rel, (1, 1), (0, 0), sql);
    // Control: the unfiltered AVG(rare), and the filtered AVG(value).
    let sql = "SELECT AVG(rare) AS r FROM labs";
    assert_rows(&lab.released(sql), &[vec![F(20.3333)]], sql);
}

/// Family 5: a LEFT JOIN pads the people without a match with NULLs; an
/// aggregate of the padded side is fed by the matched people only. East has
/// 19 patients but labs of two: its AVG(l.value) is theirs. Isle has none.
#[test]
fn family5_left_join_padding_does_not_hide_few_feeders() {
    let lab = Lab::new();
    let sql = "SELECT p.region, COUNT(*) AS n, AVG(l.value) AS v FROM patients p LEFT JOIN labs l ON p.patient_id = l.patient_id \
               GROUP BY p.region ORDER BY p.region";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("North"), I(42), F(116.336)], vec![T("South"), I(39), F(122.850)]], sql);
    assert_withheld(&rel, (2, 0), (0, 0), sql);
    lab.refused_by(
        "SELECT COUNT(*) AS n, AVG(l.value) AS v FROM patients p LEFT JOIN labs l ON p.patient_id = l.patient_id WHERE p.region = 'East'",
        Rule::MinGroupSize,
    );
    // Control: South, all matched.
    let sql = "SELECT COUNT(*) AS n, AVG(l.value) AS v FROM patients p LEFT JOIN labs l ON p.patient_id = l.patient_id WHERE p.region = 'South'";
    assert_rows(&lab.released(sql), &[vec![I(39), F(122.850)]], sql);
    // The sparse column through the padding: F has five feeders (ids 1, 3,
    // 9, 15, 21), M three (6, 12, 24).
    let sql = "SELECT p.sex, COUNT(*) AS n, AVG(l.rare) AS r FROM patients p LEFT JOIN labs l ON p.patient_id = l.patient_id \
               GROUP BY p.sex ORDER BY p.sex";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("F"), I(51), F(18.45)]], sql);
    assert_withheld(&rel, (1, 0), (0, 0), sql);
}

/// Family 5: released doubles have 6 significant digits; integers are exact.
#[test]
fn family5_released_doubles_are_rounded_integers_exact() {
    let lab = Lab::new();
    let sql = "SELECT region, COUNT(*) AS n, SUM(bmi) AS s, AVG(bmi) AS a FROM patients GROUP BY region ORDER BY region";
    let rel = lab.released(sql);
    let east = &rel.rows()[0];
    assert_eq!(text(&east[0]), "East");
    assert_eq!(east[1], Value::Integer(19));
    assert_close(dbl(&east[2]), 517.4, "SUM(bmi) East");
    // 517.4 / 19 = 27.231578947...
    assert_close(dbl(&east[3]), 27.2316, "AVG(bmi) East, 6 significant digits");
    let sql = "SELECT COUNT(*) AS n, SUM(cost) AS s FROM visits";
    assert_eq!(lab.released(sql).rows(), &[vec![Value::Integer(123), Value::Integer(36749)]]);
    for sql in [
        "SELECT test, AVG(value) AS v, SUM(value) AS s, STDDEV(value) AS sd, VARIANCE(value) AS var FROM labs GROUP BY test",
        "SELECT AVG(value) * 3.7 AS x, SUM(value) / 7 AS y, AVG(value) - 119.3 AS z FROM labs",
        "SELECT AVG(a) AS m FROM (SELECT day, AVG(value) AS a FROM labs GROUP BY day) t",
    ] {
        let rel = lab.released(sql);
        assert!(!rel.rows().is_empty(), "{sql}");
        for v in rel.rows().iter().flatten() {
            if let Value::Double(x) = v {
                assert_eq!(*x, sig6(*x), "{sql}: {x} has more than 6 significant digits ({:?})", rel.rows());
            }
        }
    }
}

/// Family 5: AVG × COUNT. The total over labs (85 rows) and the group of 84
/// rows without id 2's day-4 row are both released (the other group is
/// thin); their difference is that one row's value (88.434752696). Rounded
/// to 6 digits, the difference is off by far more than the value's
/// precision, whether the arithmetic is done by the analyst or inside the
/// query, and whatever a second query subtracts.
#[test]
fn family5_avg_times_count_does_not_recover_one_row() {
    let lab = Lab::new();
    let total = lab.released("SELECT COUNT(*) AS n, AVG(value) AS a FROM labs");
    let rest = lab.released("SELECT COUNT(*) AS n, AVG(value) AS a FROM labs GROUP BY day = 4");
    assert_eq!(rest.rows().len(), 1, "{:?}", rest.rows());
    assert_withheld(&rest, (1, 0), (0, 0), "GROUP BY day = 4");
    let (n1, a1) = (int(&total.rows()[0][0]), dbl(&total.rows()[0][1]));
    let (n0, a0) = (int(&rest.rows()[0][0]), dbl(&rest.rows()[0][1]));
    assert_eq!((n1, n0), (85, 84));
    let derived = n1 as f64 * a1 - n0 as f64 * a0;
    assert!((derived - LAB_DAY4_VALUE).abs() > 1e-6, "AVG × COUNT of two released rows gives one row's value: {derived}");
}

/// Family 5: the same arithmetic inside the statement, on the aggregates of
/// its subqueries: rounding only the statement's final values would let the
/// query compute on the full-precision aggregates (and a second query read
/// the next digits by subtracting the first answer). The aggregates over
/// protected rows must be rounded where they are computed.
#[test]
fn family5_arithmetic_inside_a_statement_sees_rounded_aggregates() {
    let lab = Lab::new();
    // The products are computed from the aggregates over protected rows,
    // then summed over the released rows.
    let one = |minus: &str| {
        let sql = format!(
            "SELECT SUM(s) - {minus} AS d FROM (SELECT AVG(value) * COUNT(*) AS s FROM labs \
             UNION ALL SELECT -AVG(value) * COUNT(*) AS s FROM labs GROUP BY day = 4) t"
        );
        let rel = lab.released(&sql);
        assert_withheld(&rel, (0, 0), (1, 0), &sql);
        dbl(&rel.rows()[0][0])
    };
    let d1 = one("0");
    // A second query subtracts the first answer to read the next digits.
    let d2 = one(&format!("{d1:?}"));
    let recovered = d1 + d2;
    assert!(
        (recovered - LAB_DAY4_VALUE).abs() > 1e-6,
        "one row's value recovered from released aggregates: {d1} + {d2} = {recovered} (the row: {LAB_DAY4_VALUE}); \
         rounding only the statement's final values does not stop arithmetic on unrounded aggregates inside it"
    );
    // Likewise one released aggregate read through a subtraction.
    let sql = "SELECT a - 119.3 AS d FROM (SELECT AVG(value) AS a FROM labs) t";
    let d = dbl(&lab.released(sql).rows()[0][0]);
    let exact = 10141.287574138 / 85.0;
    assert!(
        (119.3 + d - exact).abs() > 1e-6,
        "{sql}: gives AVG(value) = {} (exact {exact}), more digits than the 6 it is released with ({})",
        119.3 + d,
        sig6(exact)
    );
}

/// Family 5: the 6-digit rounding of doubles must not be bypassed by
/// summing integers made from the double: `SUM(CAST(value * 1e9 AS
/// INTEGER))` is an exact integer, so the total minus the released group
/// without id 2's day-4 row (the other group, one row, is withheld) is that
/// row's value to nine decimals. Either the policy refuses the cast inside
/// the aggregate (a rule on aggregate arguments), or what it releases does
/// not give the value to better than 1e-6.
#[test]
fn family5_integer_cast_inside_sum_does_not_bypass_rounding() {
    let lab = Lab::new();
    let scaled = "SUM(CAST(value * 1000000000 AS INTEGER))";
    let one = format!(
        "SELECT SUM(s) AS d FROM (SELECT {scaled} AS s FROM labs UNION ALL SELECT -{scaled} AS s FROM labs GROUP BY day = 4) t"
    );
    let total = format!("SELECT {scaled} AS s FROM labs");
    let rest = format!("SELECT {scaled} AS s FROM labs GROUP BY day = 4");
    let outcomes = [lab.run(&one), lab.run(&total), lab.run(&rest)];
    match outcomes {
        [Ok(one_rel), Ok(total_rel), Ok(rest_rel)] => {
            let d = num(&one_rel.rows()[0][0]) / 1e9;
            assert!(
                (d - LAB_DAY4_VALUE).abs() > 1e-6,
                "one row's value recovered through integer sums: {one}\n  gives {} → {d} (the row: {LAB_DAY4_VALUE})",
                num(&one_rel.rows()[0][0])
            );
            let d = (num(&total_rel.rows()[0][0]) - num(&rest_rel.rows()[0][0])) / 1e9;
            assert!((d - LAB_DAY4_VALUE).abs() > 1e-6, "one row's value recovered from two integer sums: {d}");
        }
        outcomes => {
            for o in &outcomes {
                if let Err(e) = o {
                    assert_eq!(e.kind, "PolicyRefusal", "{e:?}");
                    assert!(
                        matches!(e.rule, Some(Rule::ConditionalAggregate | Rule::MeasureUse | Rule::Unbounded | Rule::AggregateNotAllowed)),
                        "refused by a rule that is not about aggregate arguments: {e:?}"
                    );
                }
            }
        }
    }
}

/// Notices as channels (family 17): the count of a subquery's withheld
/// groups is what the subquery shows on its own.
#[test]
fn notice_counts_match_the_inner_query_alone() {
    let lab = Lab::new();
    for inner in [PER_REGION, REGION_DIABETES, "SELECT age, COUNT(*) AS n FROM patients GROUP BY age", "SELECT ward, COUNT(*) AS n FROM visits WHERE visit_no <> 6 GROUP BY ward"] {
        let alone = lab.released(inner);
        let outer = lab.released(&format!("SELECT COUNT(*) AS groups FROM ({inner}) t"));
        assert_eq!(int(&outer.rows()[0][0]) as usize, alone.rows().len(), "{inner}");
        for kind in [NoticeKind::Suppressed, NoticeKind::Differencing] {
            assert_eq!(
                lab::withheld(&outer, kind, Layer::Inner),
                lab::withheld(&alone, kind, Layer::Top),
                "{kind:?} for {inner}: alone {:?}, inside {:?}",
                alone.notices(),
                outer.notices()
            );
        }
        assert_eq!(withheld_all(&outer, Layer::Top), 0);
    }
}
