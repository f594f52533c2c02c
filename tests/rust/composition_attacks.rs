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
//! The behaviour under test (since a1fff9a):
//!
//! - *thin* groups (fewer than k people kept, none included; an aggregate
//!   fed by fewer than k people; a QUANTILE_CONT without k-1 values on each
//!   side of its rank) are withheld right where they are aggregated, so they
//!   feed nothing after it, and a notice counts them ("N groups withheld",
//!   "N groups of a subquery withheld"); a whole-table aggregate at the top
//!   that is thin is refused (`MinGroupSize`);
//! - "none or at least k" rules (the filters or joins removed or touched
//!   1..k-1 people of a group, overall or among an aggregate's feeders; a
//!   UNION ALL branch contributes or touches 1..k-1 people of a group; in
//!   CORR/COVAR_SAMP, the people away from a column's min, or from its max,
//!   are 1..k-1) refuse the WHOLE statement (`Differencing`), at any level:
//!   withholding only that group would show which group the singled-out
//!   people are in;
//! - STDDEV/VARIANCE/CORR/COVAR_SAMP take bare columns, and no rounding cast
//!   is allowed inside an aggregate (`ConditionalAggregate`);
//! - a join key on protected rows is a bare declared key; released doubles
//!   have 6 significant digits.

mod lab;

use lab::{Cell::*, Lab, Layer, assert_close, assert_rows, assert_withheld, assert_withheld_total, dbl, int, sig6, text, withheld_all};
use safe_data_lang::value::Value;
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
    assert_withheld(&rel, 1, 0, REGION_DIABETES);
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
    let sql = format!("SELECT diabetes, COUNT(*) AS groups, SUM(n) AS people FROM ({REGION_DIABETES}) t GROUP BY diabetes ORDER BY diabetes");
    let rel = lab.released(&sql);
    assert_rows(&rel, &[vec![I(0), I(3), I(44)], vec![I(1), I(3), I(15)]], &sql);
    assert_withheld(&rel, 0, 1, &sql);

    // An outer WHERE that only the thin row (n = 1) passes: nothing comes out.
    let sql = format!("SELECT diabetes, COUNT(*) AS groups FROM ({REGION_DIABETES}) t WHERE n < 5 GROUP BY diabetes");
    let rel = lab.released(&sql);
    assert_rows(&rel, &[], &sql);
    assert_withheld(&rel, 0, 1, &sql);

    // DISTINCT over the inner rows a WHERE keeps: only released rows count.
    let sql = format!("SELECT DISTINCT diabetes FROM ({REGION_DIABETES}) t WHERE n < 14 ORDER BY 1");
    let rel = lab.released(&sql);
    assert_rows(&rel, &[vec![I(1)]], &sql);
    assert_withheld_total(&rel, 1, &sql);

    // ORDER BY ... LIMIT over the inner rows: the smallest *released* group.
    let sql = format!("SELECT region, diabetes, n FROM ({REGION_DIABETES}) t ORDER BY n, region, diabetes LIMIT 1");
    let rel = lab.released(&sql);
    assert_rows(&rel, &[vec![T("East"), I(1), I(5)]], &sql);
    assert_withheld_total(&rel, 1, &sql);

    // The same through a CTE.
    let sql = format!("WITH t AS ({REGION_DIABETES}) SELECT diabetes, SUM(n) AS people FROM t GROUP BY diabetes ORDER BY diabetes");
    let rel = lab.released(&sql);
    assert_rows(&rel, &[vec![I(0), I(44)], vec![I(1), I(15)]], &sql);
    assert_withheld(&rel, 0, 1, &sql);
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
        let sql = format!("SELECT CASE WHEN a < {t} THEN 'below' ELSE 'above' END AS side, COUNT(*) AS n FROM ({THIN_AND_CONSTANTS}) t GROUP BY 1 ORDER BY 1");
        let rel = lab.released(&sql);
        assert_rows(&rel, &[vec![T("above"), I(2)], vec![T("below"), I(2)]], &sql);
        assert_withheld(&rel, 0, 1, &sql);
        outcomes.push((rel.rows().to_vec(), rel.notices().to_vec()));

        // The outer WHERE and a whole-table count over released rows.
        let sql = format!("SELECT COUNT(*) AS n FROM ({THIN_AND_CONSTANTS}) t WHERE a < {t}");
        let rel = lab.released(&sql);
        assert_rows(&rel, &[vec![I(2)]], &sql);
        assert_withheld(&rel, 0, 1, &sql);
        outcomes.push((rel.rows().to_vec(), rel.notices().to_vec()));

        // HAVING over the outer groups.
        let sql = format!("SELECT a < {t} AS below, COUNT(*) AS n FROM ({THIN_AND_CONSTANTS}) t GROUP BY 1 HAVING COUNT(*) >= 2 ORDER BY 1");
        let rel = lab.released(&sql);
        assert_rows(&rel, &[vec![B(false), I(2)], vec![B(true), I(2)]], &sql);
        assert_withheld(&rel, 0, 1, &sql);
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
        assert_withheld(&rel, 0, 1, &sql);
    }
}

/// Family 1: an inner `ORDER BY … LIMIT 1` over groups that are all thin
/// (one person per age) chose among them by their values (DESC picks id 42,
/// age 74, bmi 69 clamped to 50; ASC id 53, age 61, bmi 18.9), and the outer
/// group of the chosen age was then hidden. The LIMIT now sees released
/// groups only (none): both orders give the same answer, two released outer
/// rows from the constant branches. (No WHERE: a filter emptying groups of
/// fewer than k people is a question of its own, see
/// `groups_emptied_by_the_filter_follow_none_or_at_least_k`.)
#[test]
fn family1_inner_order_by_limit_sees_released_rows_only() {
    let lab = Lab::new();
    let mut outcomes = Vec::new();
    for dir in ["DESC", "ASC"] {
        let sql = format!(
            "SELECT age, COUNT(*) AS c FROM ( \
               SELECT age FROM (SELECT age, AVG(bmi) AS b FROM patients GROUP BY age ORDER BY b {dir} LIMIT 1) best \
               UNION ALL SELECT 61 AS age FROM patients GROUP BY sex \
               UNION ALL SELECT 74 AS age FROM patients GROUP BY sex \
             ) t GROUP BY age ORDER BY age"
        );
        let rel = lab.released(&sql);
        assert_rows(&rel, &[vec![I(61), I(2)], vec![I(74), I(2)]], &sql);
        // All 60 age groups of the inner aggregation are withheld (one person each).
        assert_withheld(&rel, 0, 60, &sql);
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
        assert_withheld_total(&rel, 1, &sql);
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
        assert_withheld_total(&rel, 1, &sql);
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
    assert_withheld_total(&rel, 1, sql);
    // Two released results joined on their key: only keys released on both
    // sides. The right side removes the diabetics: 5 people from each of
    // North, South and East, nobody from Isle (thin on both sides).
    let sql = "SELECT a.region, a.n, b.m FROM (SELECT region, COUNT(*) AS n FROM patients GROUP BY region) a \
               JOIN (SELECT region, COUNT(*) AS m FROM patients WHERE diabetes = 0 GROUP BY region) b ON a.region = b.region ORDER BY a.region";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("East"), I(19), I(14)], vec![T("North"), I(20), I(15)], vec![T("South"), I(20), I(15)]], sql);
    assert_withheld(&rel, 0, 2, sql);
    // The right side removes the 99-year-old alone from North: withholding
    // North there (and so from the join) would say where she lives. The
    // subquery's rule refuses the whole statement.
    lab.refused_by(
        "SELECT a.region, a.n, b.m FROM (SELECT region, COUNT(*) AS n FROM patients GROUP BY region) a \
         JOIN (SELECT region, COUNT(*) AS m FROM patients WHERE age <> 99 GROUP BY region) b ON a.region = b.region ORDER BY a.region",
        Rule::Differencing,
    );
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
        assert_withheld(&rel, 60, 0, &sql);
        outcomes.push(rel.notices().to_vec());

        // The same with the 99-year-old's group among released ones (ages
        // split in two bands of 30; she is in the old band, alone at 99).
        let sql = format!("SELECT DISTINCT age >= 99 AS old, AVG(bmi) > {t} AS high FROM patients GROUP BY age >= 99, age >= 50");
        let rel = lab.released(&sql);
        assert!(rel.rows().iter().all(|r| r[0] == Value::Boolean(false)), "{sql}: {:?}", rel.rows());
        assert_withheld(&rel, 1, 0, &sql);
    }
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "{outcomes:?}");

    // Released groups are deduplicated, withheld ones counted one by one:
    // region × sex has 10 or 9 people per group except Isle/M (1).
    let sql = "SELECT DISTINCT COUNT(*) AS n FROM patients GROUP BY region, sex";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![I(9)], vec![I(10)]], sql);
    assert_withheld(&rel, 1, 0, sql);
    // A filter removing the 99-year-old alone (North F): withholding North/F
    // would name her group, so the statement is refused, DISTINCT or not.
    lab.refused_by("SELECT DISTINCT COUNT(*) >= 5 AS big FROM patients WHERE age <> 99 GROUP BY region, sex", Rule::Differencing);
    // Control: a filter removing 0 or >= k people per group (the diabetics,
    // 5 women per region) is released; only the thin Isle/M is withheld.
    let sql = "SELECT DISTINCT COUNT(*) >= 5 AS big FROM patients WHERE diabetes = 0 GROUP BY region, sex";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![B(true)]], sql);
    assert_withheld(&rel, 1, 0, sql);
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
    // A LEFT JOIN: the Isle patient (no region row) is kept, in the thin
    // NULL group. (An inner join drops him into a group of no one kept.)
    let sql = "SELECT x.region, COUNT(*) AS n FROM (SELECT region FROM patients) a LEFT JOIN regions x ON a.region = x.region \
               GROUP BY x.region ORDER BY x.region";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("East"), I(19)], vec![T("North"), I(20)], vec![T("South"), I(20)]], sql);
    assert_withheld(&rel, 1, 0, sql);
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
/// people: the single-person branch refuses the statement.
#[test]
fn family4_union_with_a_single_person_copy() {
    let lab = Lab::new();
    for one in ["age = 99", "region = 'Isle'", "age >= 99", "age = 99 AND sex = 'F'"] {
        let sql = format!("SELECT COUNT(*) AS n, SUM(bmi) AS s FROM (SELECT bmi FROM patients UNION ALL SELECT bmi FROM patients WHERE {one}) t");
        lab.refused_by(&sql, Rule::Differencing);
        let sql = format!("SELECT AVG(bmi) AS a FROM (SELECT bmi, sex FROM patients UNION ALL SELECT bmi, sex FROM patients WHERE {one}) t");
        lab.refused_by(&sql, Rule::Differencing);
    }
    // Through a CTE, and with the copy first.
    lab.refused_by(
        "WITH c AS (SELECT bmi, age FROM patients) SELECT COUNT(*) AS n FROM (SELECT bmi FROM c UNION ALL SELECT bmi FROM c WHERE age = 99) u",
        Rule::Differencing,
    );
    lab.refused_by("SELECT SUM(bmi) AS s FROM (SELECT bmi FROM patients WHERE region = 'Isle' UNION ALL SELECT bmi FROM patients) t", Rule::Differencing);
    // Grouped: the 99-year-old is F. Withholding F and releasing M (whose
    // copy branch is empty) would tell her sex: refused.
    lab.refused_by(
        "SELECT sex, COUNT(*) AS n, SUM(bmi) AS s FROM (SELECT sex, bmi FROM patients UNION ALL SELECT sex, bmi FROM patients WHERE age = 99) t \
         GROUP BY sex ORDER BY sex",
        Rule::Differencing,
    );
    // Control: `family4_union_with_a_large_copy_control`.
}

/// Family 4: the copy filtered to everyone but one person touches one person
/// in its branch: the differencing rule, per branch, refuses the statement.
#[test]
fn family4_union_with_an_everyone_but_one_copy() {
    let lab = Lab::new();
    for but_one in ["age <> 99", "region <> 'Isle'", "NOT (age = 99)"] {
        let sql = format!("SELECT COUNT(*) AS n FROM (SELECT bmi FROM patients UNION ALL SELECT bmi FROM patients WHERE {but_one}) t");
        lab.refused_by(&sql, Rule::Differencing);
    }
    // Grouped: only F loses someone (the 99-year-old) in the copy branch;
    // withholding F alone would tell her sex.
    lab.refused_by(
        "SELECT sex, COUNT(*) AS n, SUM(bmi) AS s FROM (SELECT sex, bmi FROM patients UNION ALL SELECT sex, bmi FROM patients WHERE age <> 99) t \
         GROUP BY sex ORDER BY sex",
        Rule::Differencing,
    );
    // Control: the copy without the diabetics removes 0 (M) or 15 (F) people.
    let sql = "SELECT sex, COUNT(*) AS n, SUM(bmi) AS s FROM (SELECT sex, bmi FROM patients UNION ALL SELECT sex, bmi FROM patients WHERE diabetes = 0) t \
               GROUP BY sex ORDER BY sex";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("F"), I(45), F(1167.1)], vec![T("M"), I(60), F(1649.4)]], sql);
    assert_withheld(&rel, 0, 0, sql);
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
    // Grouped: visit 6 is in ward B; withholding B alone (A is untouched)
    // would tell which ward he was in on his sixth visit: refused.
    lab.refused_by("SELECT ward, COUNT(*) AS n, SUM(cost) AS s FROM visits WHERE visit_no <> 6 GROUP BY ward ORDER BY ward", Rule::Differencing);
    // Control: visit 3 (ward A) is 21 people's; B is untouched.
    let sql = "SELECT ward, COUNT(*) AS n, SUM(cost) AS s FROM visits WHERE visit_no <> 3 GROUP BY ward ORDER BY ward";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("A"), I(60), I(17877)], vec![T("B"), I(42), I(12602)]], sql);
    assert_withheld(&rel, 0, 0, sql);
    // Labs: day 4 is one of id 2's four rows.
    lab.refused_by("SELECT COUNT(*) AS n, AVG(value) AS v FROM labs WHERE day <> 4", Rule::Differencing);
    lab.refused_by("SELECT SUM(value) AS v FROM labs WHERE day < 4", Rule::Differencing);
    // Join pairs: the Isle patient loses one of his eight ward pairs.
    lab.refused_by("SELECT COUNT(*) AS n FROM patients p JOIN region_wards w ON p.region = w.region WHERE w.ward <> 'I1'", Rule::Differencing);
    lab.refused_by(
        "SELECT p.sex, COUNT(*) AS n FROM patients p JOIN region_wards w ON p.region = w.region WHERE w.ward <> 'I1' GROUP BY p.sex ORDER BY p.sex",
        Rule::Differencing,
    );
    // Control: every patient loses one ward pair (30 people per sex).
    let sql = "SELECT p.sex, COUNT(*) AS n FROM patients p JOIN region_wards w ON p.region = w.region \
               WHERE w.ward NOT IN ('N1', 'S1', 'E1', 'I1') GROUP BY p.sex ORDER BY p.sex";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("F"), I(210)], vec![T("M"), I(210)]], sql);
    assert_withheld(&rel, 0, 0, sql);
    // Inside a subquery: the rule of the subquery's aggregation refuses the
    // whole statement (an outer SUM would otherwise add up ward A alone).
    lab.refused_by("SELECT SUM(n) AS n FROM (SELECT ward, COUNT(*) AS n FROM visits WHERE visit_no <> 6 GROUP BY ward) t", Rule::Differencing);
    lab.refused_by("WITH w AS (SELECT ward, COUNT(*) AS n FROM visits WHERE visit_no <> 6 GROUP BY ward) SELECT COUNT(*) AS wards FROM w", Rule::Differencing);
    let sql = "SELECT SUM(n) AS n FROM (SELECT ward, COUNT(*) AS n FROM visits WHERE visit_no <> 3 GROUP BY ward) t";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![I(102)]], sql);
    assert_withheld(&rel, 0, 0, sql);
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
    assert_withheld(&rel, 3, 0, sql);
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
    assert_withheld(&rel, 1, 0, sql);
}

/// Family 5: the filter `day = 1` touches 28 people, but among the people
/// whose `rare` values feed AVG(rare) it touches one (id 1 loses her day-2
/// value): the difference with the unfiltered AVG(rare) is that one value.
#[test]
fn family5_touched_feeders_are_counted_per_aggregate() {
    let lab = Lab::new();
    lab.refused_by("SELECT AVG(rare) AS r FROM labs WHERE day = 1", Rule::Differencing);
    lab.refused_by("SELECT COUNT(*) AS n, AVG(value) AS v, AVG(rare) AS r FROM labs WHERE day = 1", Rule::Differencing);
    // Grouped by test: among glucose's AVG(rare) feeders the filter touches
    // id 1 alone (her day-2 row is glucose): refused, whatever lipids (days
    // 3 and 4, emptied by the filter) says.
    lab.refused_by("SELECT test, COUNT(*) AS n, AVG(rare) AS r FROM labs WHERE day = 1 GROUP BY test", Rule::Differencing);
    lab.refused_by("SELECT COUNT(*) AS groups FROM (SELECT test, AVG(rare) AS r FROM labs WHERE day = 1 GROUP BY test) t", Rule::Differencing);
    // Control: the unfiltered AVG(rare), and the filtered AVG(value) (the
    // filter touches 28 people's values in glucose, removes 14 from lipids,
    // which is then empty and withheld).
    let sql = "SELECT AVG(rare) AS r FROM labs";
    assert_rows(&lab.released(sql), &[vec![F(20.3333)]], sql);
    let sql = "SELECT test, COUNT(*) AS n, AVG(value) AS v FROM labs WHERE day = 1 GROUP BY test";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("glucose"), I(42), F(122.013)]], sql);
    assert_withheld(&rel, 1, 0, sql);
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
    assert_withheld(&rel, 2, 0, sql);
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
    assert_withheld(&rel, 1, 0, sql);
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
    assert_withheld(&rest, 1, 0, "GROUP BY day = 4");
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
        assert_withheld(&rel, 0, 1, &sql);
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
/// without id 2's day-4 row (the other group, one row, is withheld) would be
/// that row's value to nine decimals (the red team's attack). A cast to an
/// integer of a non-integer rounds: it is no linear arithmetic, and is
/// refused inside an aggregate (ConditionalAggregate), at any level.
#[test]
fn family5_integer_cast_inside_sum_does_not_bypass_rounding() {
    let lab = Lab::new();
    let scaled = "SUM(CAST(value * 1000000000 AS INTEGER))";
    for sql in [
        format!("SELECT SUM(s) AS d FROM (SELECT {scaled} AS s FROM labs UNION ALL SELECT -{scaled} AS s FROM labs GROUP BY day = 4) t"),
        format!("SELECT {scaled} AS s FROM labs"),
        format!("SELECT {scaled} AS s FROM labs GROUP BY day = 4"),
        "SELECT SUM(CAST(value AS INTEGER)) AS s FROM labs".to_string(),
        "SELECT test, AVG(CAST(value * 1000 AS INTEGER)) AS a FROM labs GROUP BY test".to_string(),
        "SELECT SUM(CAST(bmi * 10 AS INTEGER)) AS s FROM patients".to_string(),
        "SELECT COUNT(*) AS n FROM (SELECT day, SUM(CAST(value * 1000000000 AS INTEGER)) AS s FROM labs GROUP BY day) t".to_string(),
    ] {
        lab.refused_by(&sql, Rule::ConditionalAggregate);
    }
    // Controls: a cast of an integer column is exact arithmetic, and a cast
    // to DOUBLE is rounded like any double.
    let sql = "SELECT SUM(CAST(cost AS INTEGER)) AS s FROM visits";
    assert_rows(&lab.released(sql), &[vec![I(36749)]], sql);
    let sql = "SELECT SUM(CAST(value AS DOUBLE)) AS s FROM labs";
    assert_rows(&lab.released(sql), &[vec![F(10141.3)]], sql);
}

/// Notices as channels (family 17): the count of a subquery's withheld
/// groups is what the subquery shows on its own.
#[test]
fn notice_counts_match_the_inner_query_alone() {
    let lab = Lab::new();
    for inner in [
        PER_REGION,
        REGION_DIABETES,
        "SELECT age, COUNT(*) AS n FROM patients GROUP BY age",
        "SELECT ward, COUNT(*) AS n FROM visits WHERE visit_no <> 3 GROUP BY ward",
        "SELECT test, COUNT(*) AS n FROM labs WHERE day = 1 GROUP BY test",
    ] {
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
    // A subquery that singles someone out is refused alone and inside.
    let inner = "SELECT ward, COUNT(*) AS n FROM visits WHERE visit_no <> 6 GROUP BY ward";
    lab.refused_by(inner, Rule::Differencing);
    lab.refused_by(&format!("SELECT COUNT(*) AS groups FROM ({inner}) t"), Rule::Differencing);
}

// ---------------------------------------------------------------------------
// Red team (issue 17, fixed in a1fff9a): each attack with its rule and a control
// ---------------------------------------------------------------------------

/// Red team (a): CORR and COVAR_SAMP add up products. With a 0/1 column, the
/// sum of x·y is the sum of x over the people whose column is 1: in North
/// under 50 (10 people, released as a group) only id 15 is diabetic, so
/// `COVAR_SAMP(bmi, diabetes)·(n-1) + n·AVG(bmi)·AVG(diabetes)` is her bmi
/// (20.5). Each column's people away from its min, and away from its max,
/// must be none or at least k; 1..k-1 refuse the statement (Differencing).
#[test]
fn redteam_covar_with_a_level_held_by_few_is_refused() {
    let lab = Lab::new();
    // The filter alone is fine (it removes 50 people): the control.
    let sql = "SELECT COUNT(*) AS n, AVG(bmi) AS a FROM patients WHERE region = 'North' AND age < 50";
    assert_rows(&lab.released(sql), &[vec![I(10), F(25.13)]], sql);
    for sql in [
        "SELECT COUNT(*) AS n, AVG(bmi) AS a, COVAR_SAMP(bmi, diabetes) AS c FROM patients WHERE region = 'North' AND age < 50",
        "SELECT COUNT(*) AS n, AVG(bmi) AS a, CORR(bmi, diabetes) AS c FROM patients WHERE region = 'North' AND age < 50",
        "SELECT COVAR_SAMP(diabetes, bmi) AS c FROM patients WHERE region = 'North' AND age < 50",
        // The 45 people without diabetes and the 99-year-old (who has it).
        "SELECT COUNT(*) AS n, COVAR_SAMP(bmi, diabetes) AS c FROM patients WHERE age >= 90 OR diabetes = 0",
        // Grouped: North under 50 has one diabetic, North over 50 four (1..k-1 too).
        "SELECT region, age >= 50 AS old, COUNT(*) AS n, COVAR_SAMP(bmi, diabetes) AS c FROM patients GROUP BY region, age >= 50",
        "SELECT region, age >= 50 AS old, CORR(bmi, diabetes) AS c FROM patients GROUP BY region, age >= 50",
        // In a subquery, whatever the outer query keeps of it.
        "SELECT COUNT(*) AS groups FROM (SELECT region, age >= 50 AS old, COVAR_SAMP(bmi, diabetes) AS c FROM patients GROUP BY region, age >= 50) t",
    ] {
        lab.refused_by(sql, Rule::Differencing);
    }
    // Controls: per region, 5 diabetics and 14 or 15 others (both levels >= k);
    // Isle (one person) is thin.
    let sql = "SELECT region, COUNT(*) AS n, COVAR_SAMP(bmi, diabetes) AS c, CORR(bmi, diabetes) AS r FROM patients GROUP BY region ORDER BY region";
    let rel = lab.released(sql);
    assert_rows(
        &rel,
        &[
            vec![T("East"), I(19), F(-0.203216), F(-0.0630452)],
            vec![T("North"), I(20), F(0.280263), F(0.141061)],
            vec![T("South"), I(20), F(-0.0526316), F(-0.0228822)],
        ],
        sql,
    );
    assert_withheld(&rel, 1, 0, sql);
    let sql = "SELECT COVAR_SAMP(bmi, diabetes) AS c, CORR(bmi, diabetes) AS r FROM patients";
    assert_rows(&lab.released(sql), &[vec![F(0.0110169), F(0.00447816)]], sql);
}

/// Red team (a): second moments take bare columns. VAR(x + y) - VAR(x) -
/// VAR(y) = 2·COV(x, y), which with a 0/1 column is the attack above, with
/// no CORR/COVAR_SAMP in sight. Refused with ConditionalAggregate.
#[test]
fn redteam_second_moments_of_arithmetic_are_refused() {
    let lab = Lab::new();
    for sql in [
        "SELECT VARIANCE(bmi + diabetes) AS v FROM patients",
        "SELECT VARIANCE(bmi + diabetes) - VARIANCE(bmi) - VARIANCE(diabetes) AS c FROM patients WHERE region = 'North' AND age < 50",
        "SELECT STDDEV(bmi - age) AS s FROM patients",
        "SELECT VARIANCE(bmi * 2) AS v FROM patients",
        "SELECT CORR(bmi + 0, age) AS r FROM patients",
        "SELECT COVAR_SAMP(bmi, diabetes * 10) AS c FROM patients",
        "SELECT sex, STDDEV(value + day) AS s FROM labs l JOIN patients p ON l.patient_id = p.patient_id GROUP BY sex",
        "SELECT COUNT(*) AS groups FROM (SELECT sex, VARIANCE(bmi + diabetes) AS v FROM patients GROUP BY sex) t",
    ] {
        lab.refused_by(sql, Rule::ConditionalAggregate);
    }
    // Control: the same moments of columns.
    let sql = "SELECT VARIANCE(bmi) AS v, STDDEV(bmi) AS s, CORR(bmi, age) AS r, COVAR_SAMP(bmi, age) AS c FROM patients";
    assert_rows(&lab.released(sql), &[vec![F(31.7411), F(5.63393), F(0.041805), F(4.3661)]], sql);
}

/// Red team (b): `WIDTH_BUCKET` bins as groups, with a filter removing one
/// person. Withholding the bin she left (the red team's 0.1-wide bins read a
/// bmi to 0.1) would name her bmi: the statement is refused. Bins of 5 (k =
/// 5): the 99-year-old (bmi 31.7) is one of the 16 people of bin 5.
#[test]
fn redteam_width_bucket_of_a_removed_person_is_refused() {
    let lab = Lab::new();
    let bins = "WIDTH_BUCKET(bmi, 10, 50, 8)";
    let sql = format!("SELECT {bins} AS b, COUNT(*) AS n FROM patients GROUP BY b ORDER BY b");
    let rel = lab.released(&sql);
    let whole = vec![vec![I(2), I(5)], vec![I(3), I(20)], vec![I(4), I(18)], vec![I(5), I(16)]];
    // Bin 9 (id 42, clamped to 50) is thin.
    assert_rows(&rel, &whole, &sql);
    assert_withheld(&rel, 1, 0, &sql);
    for w in ["NOT (age = 99)", "age <> 99", "age < 99", "age NOT IN (99)"] {
        lab.refused_by(&format!("SELECT {bins} AS b, COUNT(*) AS n FROM patients WHERE {w} GROUP BY b"), Rule::Differencing);
        lab.refused_by(&format!("SELECT {bins} AS b, AVG(age) AS a FROM patients WHERE {w} GROUP BY b"), Rule::Differencing);
        // Control: the same literal matching nobody removes no one.
        let sql = format!("SELECT {bins} AS b, COUNT(*) AS n FROM patients WHERE {} GROUP BY b ORDER BY b", w.replace("99", "105"));
        let rel = lab.released(&sql);
        assert_rows(&rel, &whole, &sql);
        assert_withheld(&rel, 1, 0, &sql);
    }
    // Padding through a UNION ALL branch that holds her alone: her bin gets
    // one more row, from one person.
    for sql in [
        format!("SELECT {bins} AS b, COUNT(*) AS n FROM (SELECT bmi FROM patients UNION ALL SELECT bmi FROM patients WHERE age = 99) t GROUP BY b"),
        format!("SELECT b, COUNT(*) AS n FROM (SELECT {bins} AS b FROM patients UNION ALL SELECT {bins} AS b FROM patients WHERE age = 99) t GROUP BY b"),
        format!(
            "SELECT COUNT(*) AS bins FROM (SELECT {bins} AS b, COUNT(*) AS n FROM (SELECT bmi FROM patients UNION ALL SELECT bmi FROM patients WHERE age = 99) t GROUP BY b) u"
        ),
    ] {
        lab.refused_by(&sql, Rule::Differencing);
    }
    // Control: two wide bins and a filter removing 0 or >= k people from
    // each (the diabetics: 10 and 5; none from bin 3, id 42 alone, thin).
    let sql = "SELECT WIDTH_BUCKET(bmi, 10, 50, 2) AS b, COUNT(*) AS n FROM patients WHERE diabetes = 0 GROUP BY b ORDER BY b";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![I(1), I(33)], vec![I(2), I(11)]], sql);
    assert_withheld(&rel, 1, 0, sql);
}

/// Red team (c): QUANTILE_CONT at p = 1 or 0 is MAX or MIN, and near them
/// it interpolates between the last two values: it needs k - 1 values on
/// each side of its rank p·(n - 1). Extreme quantiles are thin (withheld;
/// refused as a whole-table result), a central one over a big enough group
/// is released. The owner allows QUANTILE_CONT on labs.value (lab fixture).
#[test]
fn redteam_extreme_quantiles_are_thin() {
    let lab = Lab::new();
    for p in ["1.0", "0.0", "0.999", "0.001"] {
        lab.refused_by(&format!("SELECT QUANTILE_CONT(value, {p}) AS q FROM labs"), Rule::MinGroupSize);
        lab.refused_by(&format!("SELECT PERCENTILE_CONT({p}) WITHIN GROUP (ORDER BY value) AS q FROM labs"), Rule::MinGroupSize);
        let sql = format!("SELECT test, QUANTILE_CONT(value, {p}) AS q FROM labs GROUP BY test");
        let rel = lab.released(&sql);
        assert_rows(&rel, &[], &sql);
        assert_withheld(&rel, 2, 0, &sql);
        // An outer comparison with the withheld quantiles sees none of them.
        let sql = format!("SELECT COUNT(*) AS n FROM (SELECT test, QUANTILE_CONT(value, {p}) AS q FROM labs GROUP BY test) t WHERE q > 100");
        let rel = lab.released(&sql);
        assert_rows(&rel, &[vec![I(0)]], &sql);
        assert_withheld(&rel, 0, 2, &sql);
    }
    // Controls: the median needs 1 + 4/0.5 = 9 people (glucose 42, lipids 14),
    // the quartiles 1 + 4/0.25 = 17 (lipids is withheld).
    let sql = "SELECT QUANTILE_CONT(value, 0.5) AS q FROM labs";
    assert_rows(&lab.released(sql), &[vec![F(118.113)]], sql);
    let sql = "SELECT test, QUANTILE_CONT(value, 0.5) AS q FROM labs GROUP BY test ORDER BY test";
    let rel = lab.released(sql);
    assert_rows(&rel, &[vec![T("glucose"), F(121.304)], vec![T("lipids"), F(109.615)]], sql);
    assert_withheld(&rel, 0, 0, sql);
    for (p, want) in [("0.25", 96.1273), ("0.75", 146.283)] {
        let sql = format!("SELECT test, QUANTILE_CONT(value, {p}) AS q FROM labs GROUP BY test ORDER BY test");
        let rel = lab.released(&sql);
        assert_rows(&rel, &[vec![T("glucose"), F(want)]], &sql);
        assert_withheld(&rel, 1, 0, &sql);
    }
}

/// The outcome of `sql` if it is not a refusal with `rule`, for tests that
/// list every statement that fails before failing.
fn unless_refused_by(lab: &Lab, sql: &str, rule: Rule) -> Option<String> {
    match lab.run(sql) {
        Err(e) if e.kind == "PolicyRefusal" && e.rule == Some(rule) => None,
        Err(e) => Some(format!("{sql}\n    refused {:?} ({}): {}", e.rule, e.kind, e.text)),
        Ok(rel) => Some(format!("{sql}\n    released rows {:?}\n    notices {:?}", rel.rows(), rel.notices())),
    }
}

/// LEAK (found with these tests, a1fff9a): a group of exactly k people
/// from which the filter removes 1..k-1 is thin afterwards, and the plan
/// counts a group that is both thin and singling people out as thin only
/// (`WITHHELD_DIFF` = diff AND NOT thin in `lang/src/lower/mod.rs`). It is
/// then withheld instead of refusing the statement, and the group missing
/// from the answer (released whole without the filter) names the removed
/// person's group: the red team's WIDTH_BUCKET attack, with bins of k.
///
/// - North/diabetes 1 has 5 people, one of them the 99-year-old: `WHERE
///   age <> 99 GROUP BY region, diabetes` withholds North/1 → she lives in
///   North and is diabetic;
/// - bin 2 of `WIDTH_BUCKET(bmi, 10, 50, 8)` has 5 people, one of them the
///   57-year-old (id 1): `WHERE age <> 57` withholds bin 2 → her bmi is in
///   [15, 20).
#[test]
fn leak_a_group_the_filter_brings_below_k_is_refused_not_withheld() {
    let lab = Lab::new();
    // Controls: unfiltered, both groups are released with 5 people.
    let rel = lab.released(REGION_DIABETES);
    assert!(rel.rows().iter().any(|r| text(&r[0]) == "North" && int(&r[1]) == 1 && int(&r[2]) == 5), "{:?}", rel.rows());
    let bins = "SELECT WIDTH_BUCKET(bmi, 10, 50, 8) AS b, COUNT(*) AS n FROM patients";
    let rel = lab.released(&format!("{bins} GROUP BY b"));
    assert!(rel.rows().iter().any(|r| int(&r[0]) == 2 && int(&r[1]) == 5), "{:?}", rel.rows());
    let mut leaks = Vec::new();
    for sql in [
        "SELECT region, diabetes, COUNT(*) AS n FROM patients WHERE age <> 99 GROUP BY region, diabetes".to_string(),
        "SELECT COUNT(*) AS groups FROM (SELECT region, diabetes, COUNT(*) AS n FROM patients WHERE age <> 99 GROUP BY region, diabetes) t".to_string(),
        format!("{bins} WHERE age <> 57 GROUP BY b"),
        format!("{bins} WHERE NOT (age = 57) GROUP BY b ORDER BY b"),
        // The metamorphic oracle's template (seed 0x175afe0000).
        "SELECT DISTINCT region AS k0, diabetes AS k1, COUNT(*) >= 10 AS a0 FROM (SELECT p.region AS region, p.diabetes AS diabetes FROM patients p WHERE p.age < 99 \
         UNION ALL SELECT p.region AS region, p.diabetes AS diabetes FROM patients p WHERE p.age < 99) s GROUP BY 1, 2"
            .to_string(),
    ] {
        leaks.extend(unless_refused_by(&lab, &sql, Rule::Differencing));
    }
    assert!(leaks.is_empty(), "LEAK: expected Differencing, the group the filter brought below k is withheld instead:\n  {}", leaks.join("\n  "));
}

/// Groups the filter empties (0 kept, 1..k-1 removed) that are thin without
/// the filter too (fewer than k people on all their rows) are withheld by
/// any query, filtered or not: they name nothing, and the statement is
/// released exactly as the same query with a literal that matches nobody.
/// (With k people in a bin, the filter that brings it below k refuses the
/// statement: the leak test above.) The red team's 0.1-wide bins.
#[test]
fn groups_thin_with_and_without_the_filter_name_nothing() {
    let lab = Lab::new();
    let control = "SELECT WIDTH_BUCKET(bmi, 10, 70, 600) AS b, COUNT(*) AS n FROM patients WHERE NOT (age = 105) GROUP BY b";
    let want = lab.released(control);
    assert_rows(&want, &[], control);
    assert_withheld(&want, 60, 0, control);
    for sql in [
        "SELECT WIDTH_BUCKET(bmi, 10, 70, 600) AS b, COUNT(*) AS n FROM patients WHERE NOT (age = 99) GROUP BY b",
        "SELECT WIDTH_BUCKET(bmi, 10, 70, 600) AS b, COUNT(*) AS n FROM (SELECT bmi FROM patients UNION ALL SELECT bmi FROM patients WHERE age = 99) t GROUP BY b",
    ] {
        let rel = lab.released(sql);
        assert_eq!((rel.rows(), rel.notices()), (want.rows(), want.notices()), "{sql}");
    }
}

/// Not a leak, a determinism bug (found by the metamorphic oracle, seed
/// 0x5afe17, template 1343): an outer SUM over released doubles adds them in
/// the order the inner (parallel, unordered) group-by returns them. The six
/// released means below add up to 161.3025 exactly in decimal, so the last
/// bits of the double sum, which depend on that order, decide whether
/// 161.302 or 161.303 is shown: about one run in three differs. The same
/// statement must give the same answer (ARCHITECTURE, "the same query must
/// show the same rows").
#[test]
#[ignore = "known limit: polars' streaming reduction adds released doubles in the order its threads finish; at a rounding boundary the 6th digit flips"]
fn outer_sum_of_released_doubles_is_deterministic() {
    let lab = Lab::new();
    let sql = "SELECT COUNT(*) AS groups, SUM(a0) AS total FROM (SELECT CASE WHEN age >= 50 THEN 'old' ELSE 'young' END AS k0, region AS k1, AVG(bmi) AS a0 \
               FROM (SELECT p.region AS region, p.age AS age, p.bmi AS bmi FROM patients p JOIN region_wards w ON p.region = w.region) s \
               GROUP BY CASE WHEN age >= 50 THEN 'old' ELSE 'young' END, region) t";
    let mut seen: Vec<Vec<Vec<Value>>> = Vec::new();
    for _ in 0..40 {
        let rows = lab.released(sql).rows().to_vec();
        if !seen.contains(&rows) {
            seen.push(rows);
        }
    }
    assert_eq!(seen.len(), 1, "the same statement gave different answers: {seen:?}\n  {sql}");
}
