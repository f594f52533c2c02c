"""Derives the expected results of tests/cases/protected/*.test from the
fixture CSVs (tests/rust/fixtures), independently of the kernel.

    /work/main/.venv/bin/python tests/cases/protected/derive.py  # rewrites the .test files

Nothing here runs the kernel. Each case gives the statement the runner sends
to the kernel and, separately, how its expected result is computed: with
duckdb over the CSVs and a small model of the release rules as documented
(ARCHITECTURE.md, lang/src/lower/mod.rs, the fixture README):

- measures are clamped to the owner's bounds before anything else;
- groups are formed over all rows (before WHERE and join matching); per
  group and per privacy unit: the people kept (at least one row passing
  WHERE / matched by the join), all people, the people touched (at least one
  row filtered out) and removed (all - kept); the same per aggregate over
  the rows feeding it (argument not NULL), and per UNION ALL branch;
- thin: fewer than k people kept, or an aggregate fed by fewer than k (a
  quantile q needs 1 + (k-1)/min(q, 1-q) people); thin groups are withheld
  and counted in a notice ("N groups withheld"), or refuse a whole-table
  aggregate (min_group_size);
- differencing: 1..k-1 people touched or removed (group, aggregate or
  branch), or a branch resting on 1..k-1 people, unless the group is thin
  both with and without the filters: refuses the statement (differencing);
- floating-point aggregates are rounded to 6 significant digits where they
  are computed, and every double of the result once more at the release;
- rows come ordered by the ORDER BY keys, then by every column ascending
  (NULLs last); at most max_rows = 30 rows, with a notice past that.

Refusals by the static rules (raw_rows, measure_use, ...) are written as
expected by reading the rule, with the reason in a comment.
"""

import math
import os

import duckdb

HERE = os.path.dirname(os.path.abspath(__file__))
FX = os.path.normpath(os.path.join(HERE, "..", "..", "rust", "fixtures"))
K = 5
MAX_ROWS = 30

con = duckdb.connect()
con.execute(f"""
CREATE TABLE patients_raw AS SELECT * FROM read_csv('{FX}/patients.csv', header = true);
CREATE TABLE visits_raw AS SELECT * FROM read_csv('{FX}/visits.csv', header = true);
CREATE TABLE labs_raw AS SELECT * FROM read_csv('{FX}/labs.csv', header = true,
    types = {{'value': 'DOUBLE', 'rare': 'DOUBLE'}});
CREATE TABLE regions AS SELECT * FROM read_csv('{FX}/regions.csv', header = true);
CREATE TABLE region_wards AS SELECT * FROM read_csv('{FX}/region_wards.csv', header = true);
-- The owner's bounds, applied as the protected scan does (NULL stays NULL:
-- duckdb's least/greatest skip NULLs, so the clamp is a macro).
CREATE MACRO clamp(x, lo, hi) AS CASE WHEN x IS NULL THEN NULL ELSE least(greatest(x, lo), hi) END;
CREATE VIEW patients AS SELECT patient_id, sex, clamp(age, 0, 110) AS age, region,
    clamp(diabetes, 0, 1) AS diabetes, clamp(bmi, 10.0, 50.0) AS bmi, income FROM patients_raw;
CREATE VIEW visits AS SELECT patient_id, visit_no, ward, clamp(cost, 0, 1000) AS cost FROM visits_raw;
CREATE VIEW labs AS SELECT patient_id, test, day, clamp(value, 0.0, 200.0) AS value,
    clamp(rare, 0.0, 100.0) AS rare FROM labs_raw;
""")


# ---------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------

def sig6(x):
    if x is None or not math.isfinite(x) or x == 0.0:
        return x
    return float(f"{x:.5e}")


def fmt(v):
    """As the kernel renders a value (Value::to_text, NULL for nulls)."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v == 0.0:
            v = 0.0
        if v.is_integer() and abs(v) < 1e15:
            return f"{v:.1f}"
        r = repr(v)
        assert "e" not in r, f"no exponent form expected: {r}"
        return r
    return str(v)


class Dbl(float):
    """Marks a value as DOUBLE in the kernel's typing (e.g. AVG of integers)."""


# ---------------------------------------------------------------------------
# The release model
# ---------------------------------------------------------------------------

AGG_SQL = {
    "count_star": "count(*)",
    "count": "count({a})",
    "count_distinct": "count(DISTINCT {a})",
    "sum": "sum({a})",
    "avg": "avg({a})",
    "stddev": "stddev_samp({a})",
    "median": "median({a})",
    "q25": "quantile_cont({a}, 0.25)",
    "q50": "quantile_cont({a}, 0.5)",
}
DOUBLE_AGGS = {"avg", "stddev", "median", "q25", "q50"}
QUANTILE_NEED = {"q25": 1 + math.ceil((K - 1) / 0.25), "q50": 1 + math.ceil((K - 1) / 0.5)}


def point(rows_sql, keys, aggs, units=("u",), branches=1, keep=True):
    """One aggregation over protected rows.

    rows_sql: a duckdb query with the unit columns, `keep` (the row passes
    WHERE and the join), `br` (UNION ALL branch, 0-based) when branches > 1,
    the key columns and the aggregates' arguments.
    keys: key column names; aggs: (name, func, arg) with func in AGG_SQL.
    Returns every group (dicts with keys, aggregates, `thin`, `diff`).
    """
    sel = [f'"{k}"' for k in keys]
    feeds = []
    for _, func, arg in aggs:
        if func != "count_star" and arg not in feeds:
            feeds.append(arg)
    for ui, u in enumerate(units):
        sel += [f"count(DISTINCT {u}) FILTER (WHERE keep) AS kept_{ui}",
                f"count(DISTINCT {u}) AS all_{ui}",
                f"count(DISTINCT {u}) FILTER (WHERE NOT keep) AS touched_{ui}"]
        for fi, a in enumerate(feeds):
            sel += [f"count(DISTINCT {u}) FILTER (WHERE keep AND ({a}) IS NOT NULL) AS fkept_{ui}_{fi}",
                    f"count(DISTINCT {u}) FILTER (WHERE ({a}) IS NOT NULL) AS fall_{ui}_{fi}",
                    f"count(DISTINCT {u}) FILTER (WHERE NOT keep AND ({a}) IS NOT NULL) AS ftouched_{ui}_{fi}"]
        for b in range(branches if branches > 1 else 0):
            sel += [f"count(DISTINCT {u}) FILTER (WHERE keep AND br = {b}) AS bkept_{ui}_{b}",
                    f"count(DISTINCT {u}) FILTER (WHERE NOT keep AND br = {b}) AS btouched_{ui}_{b}"]
    for name, func, arg in aggs:
        sel.append(AGG_SQL[func].format(a=arg) + f' FILTER (WHERE keep) AS "{name}"')
    group = f" GROUP BY {', '.join(sel[:len(keys)])}" if keys else ""
    sql = f"SELECT {', '.join(sel)} FROM ({rows_sql}) AS r{group}"
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    groups = []
    for row in cur.fetchall():
        g = dict(zip(names, row))
        thin = False
        diff = False
        thin_unfiltered = False
        few = lambda n: 0 < n < K  # noqa: E731
        for ui, _ in enumerate(units):
            thin |= g[f"kept_{ui}"] < K
            thin_unfiltered |= g[f"all_{ui}"] < K
            if keep:
                diff |= few(g[f"touched_{ui}"]) or few(g[f"all_{ui}"] - g[f"kept_{ui}"])
            for fi, _ in enumerate(feeds):
                thin |= g[f"fkept_{ui}_{fi}"] < K
                if keep:
                    diff |= few(g[f"ftouched_{ui}_{fi}"]) or few(g[f"fall_{ui}_{fi}"] - g[f"fkept_{ui}_{fi}"])
            for name, func, arg in aggs:
                if func in QUANTILE_NEED:
                    fi = feeds.index(arg)
                    thin |= g[f"fkept_{ui}_{fi}"] < QUANTILE_NEED[func]
            for b in range(branches if branches > 1 else 0):
                diff |= few(g[f"bkept_{ui}_{b}"])
                if keep:
                    diff |= few(g[f"btouched_{ui}_{b}"])
        diff = diff and not (thin and thin_unfiltered)
        out = {k: g[k] for k in keys}
        for name, func, _ in aggs:
            v = g[name]
            if func in DOUBLE_AGGS or isinstance(v, float):
                v = None if v is None else sig6(float(v))
            elif v is not None:
                v = int(v)
            out[name] = v
        out["thin"] = thin
        out["diff"] = diff
        groups.append(out)
    return groups


class Refused(Exception):
    def __init__(self, rule):
        self.rule = rule


def released(groups, whole=False, having=None):
    """The groups released at one aggregation and how many were withheld.
    Raises Refused(min_group_size / differencing) as the release would
    (for one point; see `verdict` for several)."""
    thin = sum(1 for g in groups if g["thin"] and not g["diff"])
    thin_all = sum(1 for g in groups if g["thin"])
    diff = sum(1 for g in groups if g["diff"])
    if whole and thin_all:
        raise Refused("min_group_size")
    if diff:
        raise Refused("differencing")
    rows = [g for g in groups if not g["thin"] and not g["diff"]]
    if having is not None:
        rows = [g for g in rows if having(g)]
    return rows, thin


def sort_rows(rows, order=()):
    """The kernel's order: the ORDER BY keys (index, descending), then every
    column ascending, NULLs last."""
    def key_of(v, desc):
        if v is None:
            return (1, 0)
        if desc:
            if isinstance(v, str):
                return (0, tuple(-ord(c) for c in v) + (1,))
            return (0, -v)
        return (0, v)
    keys = list(order) + [(i, False) for i in range(len(rows[0]) if rows else 0) if i not in [o[0] for o in order]]
    return sorted(rows, key=lambda r: [key_of(r[i], d) for i, d in keys])


def table(columns, rows, notices=(), chart=None, order=(), limit=None, sort=True, round_doubles=True):
    """The expected lines of a released table."""
    rows = [list(r) for r in rows]
    if round_doubles:
        rows = [[sig6(v) if isinstance(v, float) else v for v in r] for r in rows]
    if sort:
        rows = sort_rows(rows, order)
    if limit is not None:
        rows = rows[:limit]
    notices = list(notices)
    if len(rows) > MAX_ROWS:
        notices.append(f"truncated: showing the first {MAX_ROWS} of {len(rows)} rows (the data owner's row limit)")
        rows = rows[:MAX_ROWS]
    lines = ["|".join(columns)] + ["|".join(fmt(v) for v in r) for r in rows]
    lines += [f"~ notice {n}" for n in notices]
    if chart:
        lines.append(f"~ chart {chart}")
    return lines


def withheld(n, inner=False):
    if not n:
        return []
    of = " of a subquery" if inner else ""
    return [f"suppressed: {n} group{'' if n == 1 else 's'}{of} withheld: empty or fewer than {K} people"]


def simple(rows_sql, keys, aggs, columns=None, whole=False, having=None, order=(), limit=None, units=("u",), branches=1, keep=True, chart=None):
    """The common case: one aggregation at the top, its columns as output."""
    try:
        rows, thin = released(point(rows_sql, keys, aggs, units, branches, keep), whole, having)
    except Refused as r:
        return [f"refused {r.rule}"]
    names = list(keys) + [a[0] for a in aggs]
    return table(columns or names, [[g[n] for n in names] for g in rows], withheld(thin), chart=chart, order=order, limit=limit)


def public(sql, columns, order=(), sort=True):
    rows = con.execute(sql).fetchall()
    return table(columns, rows, order=order, sort=sort, round_doubles=False)


def post(rows, columns, sql, notices=(), order=(), limit=None):
    """Post-processing of released rows: `sql` runs over them as table `t`."""
    con.execute("DROP TABLE IF EXISTS t")
    if rows:
        cols = ", ".join(f'"{c}"' for c in columns)
        con.execute(f"CREATE TEMP TABLE t AS SELECT * FROM (VALUES {', '.join('(' + ', '.join(sql_lit(v) for v in r) + ')' for r in rows)}) AS v({cols})")
    else:
        raise ValueError("post over no rows")
    out = con.execute(sql).fetchall()
    return out


def sql_lit(v):
    if v is None:
        return "NULL"
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    if isinstance(v, float):
        return f"CAST({v!r} AS DOUBLE)"
    return str(v)


# ---------------------------------------------------------------------------
# Row sources of the model: every row of a table, `keep` = the WHERE
# ---------------------------------------------------------------------------

def P(where="TRUE"):
    return f"SELECT patient_id AS u, coalesce(({where}), false) AS keep, * FROM patients"


def V(where="TRUE"):
    return f"SELECT patient_id AS u, coalesce(({where}), false) AS keep, * FROM visits"


def L(where="TRUE"):
    return f"SELECT patient_id AS u, coalesce(({where}), false) AS keep, * FROM labs"


N = ("n", "count_star", None)


def cnt(name="n"):
    return (name, "count_star", None)


def refused(rule, why):
    """A refusal by a static rule, read off the rule (`why` says which)."""
    assert why
    return [f"refused {rule}"]


def histogram(rows_sql, x, n, low, high):
    """The bins of CHART HISTOGRAM: WIDTH_BUCKET(x, low, high, n) as the
    group, COUNT(*) per bin, ordered by bin."""
    w = (high - low) / n
    bucket = f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} < {low} THEN 0 WHEN {x} >= {high} THEN {n + 1} ELSE CAST(floor(({x} - {low}) / {w}) AS INTEGER) + 1 END"
    src = f"SELECT *, {bucket} AS bin FROM ({rows_sql}) AS h"
    try:
        rows, thin = released(point(src, ["bin"], [cnt("count")]))
    except Refused as r:
        return [f"refused {r.rule}"]
    edge = lambda j: (low * (n - j) + high * j) / n  # noqa: E731
    out = [[float(edge(g["bin"] - 1)) if g["bin"] >= 1 else None, float(edge(g["bin"])) if g["bin"] <= n else None, g["count"], g["bin"]] for g in rows]
    return table(["bin_start", "bin_end", "count", "bin"], out, withheld(thin), chart="histogram", order=[(3, False)])


# ---------------------------------------------------------------------------
# The cases, per file: (name, statement, expected lines)
# ---------------------------------------------------------------------------

FILES = {}


def case(file, name, sql, expected):
    FILES.setdefault(file, []).append((name, sql.strip(), expected))


# --- group_by.test ----------------------------------------------------------
G = "group_by.test"
case(G, "count by sex: both groups released", "SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex",
     simple(P(), ["sex"], [N]))
case(G, "count, sum and average by region: the one-person Isle is withheld",
     "SELECT region, COUNT(*) AS n, SUM(bmi) AS total, AVG(bmi) AS mean FROM patients GROUP BY region ORDER BY region",
     simple(P(), ["region"], [N, ("total", "sum", "bmi"), ("mean", "avg", "bmi")], order=[(0, False)]))
case(G, "two keys: only the Isle group is thin", "SELECT region, sex, COUNT(*) AS n FROM patients GROUP BY region, sex",
     simple(P(), ["region", "sex"], [N]))
case(G, "a group per age: every group holds one person, all withheld", "SELECT age, COUNT(*) AS n FROM patients GROUP BY age",
     simple(P(), ["age"], [N]))
case(G, "diabetes levels with average bmi (bmi 69.0 clamped to 50)",
     "SELECT diabetes, COUNT(*) AS n, AVG(bmi) AS mean FROM patients GROUP BY diabetes",
     simple(P(), ["diabetes"], [N, ("mean", "avg", "bmi")]))
case(G, "a computed dimension",
     "SELECT CASE WHEN age < 40 THEN 'under 40' ELSE '40 and over' END AS band, COUNT(*) AS n FROM patients\n"
     "GROUP BY CASE WHEN age < 40 THEN 'under 40' ELSE '40 and over' END",
     simple(f"SELECT *, CASE WHEN age < 40 THEN 'under 40' ELSE '40 and over' END AS band FROM ({P()})", ["band"], [N]))
case(G, "visits by ward: rows, people and clamped cost",
     "SELECT ward, COUNT(*) AS n, COUNT(DISTINCT patient_id) AS people, SUM(cost) AS total FROM visits GROUP BY ward",
     simple(V(), ["ward"], [N, ("people", "count_distinct", "patient_id"), ("total", "sum", "cost")]))
case(G, "visit numbers 4 to 6 belong to one person: three groups withheld",
     "SELECT visit_no, COUNT(*) AS n FROM visits GROUP BY visit_no",
     simple(V(), ["visit_no"], [N]))
case(G, "median cost per ward (the owner allows MEDIAN on cost)",
     "SELECT ward, MEDIAN(cost) AS med FROM visits GROUP BY ward",
     simple(V(), ["ward"], [("med", "median", "cost")]))
case(G, "an aggregate fed by fewer than k people withholds its group (rare is NULL but for 8 people)",
     "SELECT day, COUNT(*) AS n, AVG(rare) AS mean_rare FROM labs GROUP BY day",
     simple(L(), ["day"], [N, ("mean_rare", "avg", "rare")]))
case(G, "a quantile needs 1 + (k-1)/0.25 = 17 people: day 3 (14 people) is withheld",
     "SELECT day, QUANTILE_CONT(value, 0.25) AS q1 FROM labs GROUP BY day",
     simple(L(), ["day"], [("q1", "q25", "value")]))
case(G, "standard deviation of clamped bmi by sex",
     "SELECT sex, STDDEV(bmi) AS sd FROM patients GROUP BY sex",
     simple(P(), ["sex"], [("sd", "stddev", "bmi")]))
case(G, "labs by test: rows, people, average value",
     "SELECT test, COUNT(*) AS n, COUNT(DISTINCT patient_id) AS people, AVG(value) AS mean FROM labs GROUP BY test",
     simple(L(), ["test"], [N, ("people", "count_distinct", "patient_id"), ("mean", "avg", "value")]))
case(G, "a filter that leaves a group empty withholds it (Isle has no woman)",
     "SELECT region, COUNT(*) AS n FROM patients WHERE sex = 'F' GROUP BY region",
     simple(P("sex = 'F'"), ["region"], [N]))
case(G, "a filter that removes a whole group withholds it, with the thin Isle",
     "SELECT region, COUNT(*) AS n FROM patients WHERE region <> 'North' GROUP BY region",
     simple(P("region <> 'North'"), ["region"], [N]))
case(G, "a filter removing one person of a group refuses the statement",
     "SELECT region, COUNT(*) AS n FROM patients WHERE age < 99 GROUP BY region",
     simple(P("age < 99"), ["region"], [N]))

# --- whole_table.test -------------------------------------------------------
W = "whole_table.test"
case(W, "everyone: count, sum and average of clamped bmi",
     "SELECT COUNT(*) AS n, SUM(bmi) AS total, AVG(bmi) AS mean FROM patients",
     simple(P(), [], [N, ("total", "sum", "bmi"), ("mean", "avg", "bmi")], whole=True))
case(W, "one person left by the filter: refused", "SELECT COUNT(*) AS n, AVG(bmi) AS mean FROM patients WHERE region = 'Isle'",
     simple(P("region = 'Isle'"), [], [N, ("mean", "avg", "bmi")], whole=True))
case(W, "four people left: refused", "SELECT COUNT(*) AS n FROM patients WHERE age BETWEEN 20 AND 23",
     simple(P("age BETWEEN 20 AND 23"), [], [N], whole=True))
case(W, "five people left: released", "SELECT COUNT(*) AS n, AVG(bmi) AS mean FROM patients WHERE age < 25",
     simple(P("age < 25"), [], [N, ("mean", "avg", "bmi")], whole=True))
case(W, "nobody left: refused", "SELECT COUNT(*) AS n FROM patients WHERE age > 200",
     simple(P("age > 200"), [], [N], whole=True))
case(W, "a third of the people filtered out", "SELECT COUNT(*) AS n, SUM(bmi) AS total FROM patients WHERE region <> 'North'",
     simple(P("region <> 'North'"), [], [N, ("total", "sum", "bmi")], whole=True))
case(W, "diabetics", "SELECT COUNT(*) AS n FROM patients WHERE diabetes = 1",
     simple(P("diabetes = 1"), [], [N], whole=True))
case(W, "two conditions", "SELECT COUNT(*) AS n, AVG(age) AS mean_age FROM patients WHERE region = 'North' AND sex = 'F'",
     simple(P("region = 'North' AND sex = 'F'"), [], [N, ("mean_age", "avg", "age")], whole=True))
case(W, "visits: rows, clamped sum, median", "SELECT COUNT(*) AS n, SUM(cost) AS total, MEDIAN(cost) AS med FROM visits",
     simple(V(), [], [N, ("total", "sum", "cost"), ("med", "median", "cost")], whole=True))
case(W, "labs: rows, people, average of a full-precision measure",
     "SELECT COUNT(*) AS n, COUNT(DISTINCT patient_id) AS people, AVG(value) AS mean FROM labs",
     simple(L(), [], [N, ("people", "count_distinct", "patient_id"), ("mean", "avg", "value")], whole=True))
case(W, "a sparse measure fed by eight people", "SELECT COUNT(rare) AS n, AVG(rare) AS mean FROM labs",
     simple(L(), [], [("n", "count", "rare"), ("mean", "avg", "rare")], whole=True))
case(W, "a sparse measure fed by one person on day 2: refused", "SELECT AVG(rare) AS mean FROM labs WHERE day = 2",
     simple(L("day = 2"), [], [("mean", "avg", "rare")], whole=True))
case(W, "counting an unbounded measure is allowed", "SELECT COUNT(income) AS n FROM patients",
     simple(P(), [], [("n", "count", "income")], whole=True))

# --- differencing.test ------------------------------------------------------
D = "differencing.test"
case(D, "removing the one 99-year-old", "SELECT COUNT(*) AS n, AVG(bmi) AS mean FROM patients WHERE age < 99",
     simple(P("age < 99"), [], [N, ("mean", "avg", "bmi")], whole=True))
case(D, "removing four people (ages 20 to 23)", "SELECT COUNT(*) AS n FROM patients WHERE age >= 24",
     simple(P("age >= 24"), [], [N], whole=True))
case(D, "removing five people (ages 20 to 24) is allowed", "SELECT COUNT(*) AS n FROM patients WHERE age >= 25",
     simple(P("age >= 25"), [], [N], whole=True))
case(D, "removing three people, grouped", "SELECT sex, COUNT(*) AS n FROM patients WHERE age NOT BETWEEN 20 AND 22 GROUP BY sex",
     simple(P("age NOT BETWEEN 20 AND 22"), ["sex"], [N]))
case(D, "removing five people per group, grouped", "SELECT sex, COUNT(*) AS n, AVG(bmi) AS mean FROM patients WHERE age >= 30 GROUP BY sex",
     simple(P("age >= 30"), ["sex"], [N, ("mean", "avg", "bmi")]))
case(D, "removing some rows of one person (his visits 4 to 6) touches him", "SELECT COUNT(*) AS n FROM visits WHERE visit_no <= 3",
     simple(V("visit_no <= 3"), [], [N], whole=True))
case(D, "a filter on a measure is no way to single out rows", "SELECT ward, COUNT(*) AS n FROM visits WHERE cost < 1000 GROUP BY ward",
     refused("measure_use", "cost is a measure: not in WHERE"))
case(D, "removing the whole of a group of one is no differencing (Isle is thin anyway)",
     "SELECT region, COUNT(*) AS n FROM patients WHERE sex = 'F' AND age < 99 GROUP BY region",
     simple(P("sex = 'F' AND age < 99"), ["region"], [N]))
case(D, "a filter on a dimension of visits touching many people per ward",
     "SELECT ward, COUNT(*) AS n, COUNT(DISTINCT patient_id) AS people FROM visits WHERE visit_no = 1 GROUP BY ward",
     simple(V("visit_no = 1"), ["ward"], [N, ("people", "count_distinct", "patient_id")]))

# --- refusals.test: the static rules ------------------------------------------
R = "refusals.test"
case(R, "all columns of a protected table", "SELECT * FROM patients", refused("raw_rows", "no aggregate"))
case(R, "dimensions only, no aggregate", "SELECT sex, age FROM patients", refused("raw_rows", "no aggregate"))
case(R, "DISTINCT lists individual values", "SELECT DISTINCT region FROM patients", refused("raw_rows", "DISTINCT on protected rows"))
case(R, "LIMIT does not make rows private", "SELECT sex FROM patients LIMIT 5", refused("raw_rows", "rows with LIMIT"))
case(R, "rows with LIMIT inside a subquery", "SELECT COUNT(*) AS n FROM (SELECT sex FROM patients LIMIT 10) t",
     refused("raw_rows", "rows with LIMIT in a subquery"))
case(R, "a hidden column is an unknown column", "SELECT name FROM patients", refused("NameError", "name is hidden"))
case(R, "a hidden column in GROUP BY", "SELECT COUNT(*) AS n FROM patients GROUP BY name", refused("NameError", "name is hidden"))
case(R, "a hidden column in WHERE", "SELECT COUNT(*) AS n FROM patients WHERE name = 'Ada Lovelace'", refused("NameError", "name is hidden"))
case(R, "a hidden column of labs", "SELECT COUNT(DISTINCT lab_id) AS n FROM labs", refused("NameError", "lab_id is hidden"))
case(R, "a measure as a group key", "SELECT bmi, COUNT(*) AS n FROM patients GROUP BY bmi", refused("measure_use", "bmi in GROUP BY"))
case(R, "a measure in WHERE", "SELECT AVG(bmi) AS mean FROM patients WHERE bmi > 30", refused("measure_use", "bmi in WHERE"))
case(R, "an identifier as a group key", "SELECT patient_id, COUNT(*) AS n FROM visits GROUP BY patient_id",
     refused("identifier_use", "patient_id in GROUP BY"))
case(R, "an identifier in WHERE", "SELECT COUNT(*) AS n FROM patients WHERE patient_id <> 13", refused("identifier_use", "patient_id in WHERE"))
case(R, "an identifier summed", "SELECT SUM(patient_id) AS s FROM patients", refused("identifier_use", "only COUNT(DISTINCT)"))
case(R, "MAX of a measure the owner allows only MEDIAN on", "SELECT MAX(cost) AS m FROM visits", refused("aggregate_not_allowed", "MAX on cost"))
case(R, "MIN of bmi", "SELECT sex, MIN(bmi) AS m FROM patients GROUP BY sex", refused("aggregate_not_allowed", "MIN on bmi"))
case(R, "MEDIAN where the owner does not allow it", "SELECT MEDIAN(bmi) AS m FROM patients", refused("aggregate_not_allowed", "MEDIAN on bmi"))
case(R, "AVG of a measure without bounds", "SELECT AVG(income) AS m FROM patients", refused("unbounded", "income has no bounds"))
case(R, "SUM of a measure without bounds, grouped", "SELECT sex, SUM(income) AS s FROM patients GROUP BY sex", refused("unbounded", "income has no bounds"))
case(R, "a condition inside an aggregate", "SELECT AVG(CASE WHEN sex = 'F' THEN bmi END) AS m FROM patients",
     refused("conditional_aggregate", "CASE inside AVG"))
case(R, "a product of columns inside an aggregate", "SELECT SUM(bmi * diabetes) AS s FROM patients",
     refused("conditional_aggregate", "product of columns"))
case(R, "arithmetic inside a second moment", "SELECT STDDEV(bmi + age) AS sd FROM patients",
     refused("conditional_aggregate", "second moment of a sum"))
case(R, "a linear combination inside AVG is allowed",
     "SELECT sex, AVG(bmi * 2 + 1) AS m FROM patients GROUP BY sex",
     simple(f"SELECT *, bmi * 2 + 1 AS x FROM ({P()})", ["sex"], [("m", "avg", "x")]))

# --- joins.test ---------------------------------------------------------------
J = "joins.test"
PR = ("SELECT p.patient_id AS u, (p.patient_id IS NOT NULL AND r.region IS NOT NULL) AS keep, p.region AS region, r.population AS population, "
      "p.sex AS sex, p.bmi AS bmi, r.region AS r_region FROM patients p FULL JOIN regions r ON p.region = r.region")
case(J, "with a public table: the Isle patient has no region row (withheld: one person)",
     "SELECT p.region, r.population, COUNT(*) AS n, AVG(p.bmi) AS mean\nFROM patients p JOIN regions r ON p.region = r.region\nGROUP BY p.region, r.population",
     simple(PR, ["region", "population"], [N, ("mean", "avg", "bmi")]))
case(J, "with a public table, whole table: the join drops one person",
     "SELECT COUNT(*) AS n FROM patients p JOIN regions r ON p.region = r.region",
     simple(PR, [], [N], whole=True))
case(J, "with a public table, filtered on its column",
     "SELECT p.sex, COUNT(*) AS n FROM patients p JOIN regions r ON p.region = r.region WHERE r.population > 120000 GROUP BY p.sex",
     simple(f"SELECT u, keep AND coalesce(population > 120000, false) AS keep, sex FROM ({PR})", ["sex"], [N]))
PW = ("SELECT p.patient_id AS u, (p.patient_id IS NOT NULL AND w.region IS NOT NULL) AS keep, w.ward AS ward, p.sex AS sex, p.patient_id AS pid "
      "FROM patients p FULL JOIN region_wards w ON p.region = w.region")
case(J, "a fan-out: eight rows per person, counted as one person per ward",
     "SELECT w.ward, COUNT(*) AS n FROM patients p JOIN region_wards w ON p.region = w.region GROUP BY w.ward",
     simple(PW, ["ward"], [N]))
case(J, "a fan-out by sex: rows repeat, people do not",
     "SELECT p.sex, COUNT(*) AS n, COUNT(DISTINCT p.patient_id) AS people FROM patients p JOIN region_wards w ON p.region = w.region GROUP BY p.sex",
     simple(PW, ["sex"], [N, ("people", "count_distinct", "pid")]))
PV = ("SELECT p.patient_id AS u0, v.patient_id AS u1, {keep} AS keep, p.region AS region, p.sex AS sex, v.ward AS ward, "
      "p.patient_id AS pid, v.cost AS cost, p.bmi AS bmi FROM patients p FULL JOIN visits v ON p.patient_id = v.patient_id")
PV_INNER = PV.format(keep="(p.patient_id IS NOT NULL AND v.patient_id IS NOT NULL)")
PV_LEFT = PV.format(keep="(p.patient_id IS NOT NULL)")
case(J, "on the declared key: patient 7 has no visit, so the inner join removes him from North",
     "SELECT p.region, COUNT(*) AS n, SUM(v.cost) AS s FROM patients p JOIN visits v ON p.patient_id = v.patient_id GROUP BY p.region",
     simple(PV_INNER, ["region"], [N, ("s", "sum", "cost")], units=("u0", "u1")))
case(J, "LEFT JOIN keeps him: every region whole, Isle withheld",
     "SELECT p.region, COUNT(*) AS n, COUNT(DISTINCT p.patient_id) AS people, SUM(v.cost) AS s\n"
     "FROM patients p LEFT JOIN visits v ON p.patient_id = v.patient_id\nGROUP BY p.region ORDER BY p.region",
     simple(PV_LEFT, ["region"], [N, ("people", "count_distinct", "pid"), ("s", "sum", "cost")], units=("u0", "u1"), order=[(0, False)]))
case(J, "on the declared key, grouped by the right side: patient 7's unmatched row is a thin NULL group",
     "SELECT v.ward, COUNT(*) AS n, COUNT(DISTINCT p.patient_id) AS people, AVG(p.bmi) AS mean_bmi\n"
     "FROM patients p JOIN visits v ON p.patient_id = v.patient_id GROUP BY v.ward",
     simple(PV_INNER, ["ward"], [N, ("people", "count_distinct", "pid"), ("mean_bmi", "avg", "bmi")], units=("u0", "u1")))
LP = ("SELECT l.patient_id AS u0, p.patient_id AS u1, (l.patient_id IS NOT NULL AND p.patient_id IS NOT NULL) AS keep, p.sex AS sex, "
      "l.value AS value FROM labs l FULL JOIN patients p ON l.patient_id = p.patient_id")
case(J, "labs with patients: patients 43 to 60 have no labs (nine of each sex removed)",
     "SELECT p.sex, COUNT(*) AS n, AVG(l.value) AS mean FROM labs l JOIN patients p ON l.patient_id = p.patient_id GROUP BY p.sex",
     simple(LP, ["sex"], [N, ("mean", "avg", "value")], units=("u0", "u1")))
PRL = PR.replace("(p.patient_id IS NOT NULL AND r.region IS NOT NULL) AS keep", "(p.patient_id IS NOT NULL) AS keep")
case(J, "LEFT JOIN with a public table keeps the Isle patient (a NULL population, thin)",
     "SELECT r.population, COUNT(*) AS n, AVG(p.bmi) AS mean FROM patients p LEFT JOIN regions r ON p.region = r.region GROUP BY r.population",
     simple(PRL, ["population"], [N, ("mean", "avg", "bmi")]))
case(J, "a computed join key", "SELECT COUNT(*) AS n FROM patients p JOIN visits v ON p.patient_id + 0 = v.patient_id",
     refused("join_key", "a computed key is no declared join key"))
case(J, "a join on an undeclared column", "SELECT COUNT(*) AS n FROM patients p JOIN visits v ON p.age = v.visit_no",
     refused("join_key", "age is not a join key"))
case(J, "a join of a protected dimension with a public column", "SELECT COUNT(*) AS n FROM patients p JOIN regions r ON p.sex = r.region",
     refused("join_key", "sex is not a join key"))
case(J, "an aggregated result joined with protected rows",
     "SELECT COUNT(*) AS n FROM patients p JOIN (SELECT region, COUNT(*) AS c FROM patients GROUP BY region) t ON p.region = t.region",
     refused("shape", "aggregate joined with rows"))
try:
    _c, _thin = released(point(P(), ["region"], [N]))
    _rows = post([[g["region"], g["n"]] for g in _c], ["region", "n"],
                 "SELECT t.region, t.n, r.beds FROM t JOIN regions r ON t.region = r.region")
    _exp = table(["region", "n", "beds"], _rows, withheld(_thin, inner=True), order=[(0, False)])
except Refused as _r:
    _exp = [f"refused {_r.rule}"]
case(J, "released groups joined with a public table",
     "WITH c AS (SELECT region, COUNT(*) AS n FROM patients GROUP BY region)\nSELECT c.region, c.n, r.beds FROM c JOIN regions r ON c.region = r.region ORDER BY c.region",
     _exp)
case(J, "a filtered right side of a LEFT JOIN (the lowering's shape refusal, which EXPLAIN shows too)",
     "SELECT p.sex, COUNT(*) AS n FROM patients p LEFT JOIN (SELECT patient_id FROM visits WHERE ward = 'A') v ON p.patient_id = v.patient_id GROUP BY p.sex",
     ["refused shape: a filtered right side of a LEFT JOIN"])

# --- unions.test --------------------------------------------------------------
U = "unions.test"
_pf, _pm = P("sex = 'F'"), P("sex = 'M'")
UB = f"SELECT *, 0 AS br FROM ({_pf}) UNION ALL SELECT *, 1 AS br FROM ({_pm})"
case(U, "UNION ALL of filtered rows, aggregated after: each branch counted apart",
     "SELECT region, COUNT(*) AS n FROM (\n  SELECT region FROM patients WHERE sex = 'F'\n  UNION ALL\n  SELECT region FROM patients WHERE sex = 'M'\n) t GROUP BY region",
     simple(UB, ["region"], [N], branches=2))
try:
    _f, _ = released(point(P("sex = 'F'"), [], [N]))
    _m, _ = released(point(P("sex = 'M'"), [], [N]))
    _exp = table(["sex", "n"], [["F", _f[0]["n"]], ["M", _m[0]["n"]]])
except Refused as _r:
    _exp = [f"refused {_r.rule}"]
case(U, "UNION ALL of two whole-table aggregates",
     "SELECT 'F' AS sex, COUNT(*) AS n FROM patients WHERE sex = 'F'\nUNION ALL\nSELECT 'M' AS sex, COUNT(*) AS n FROM patients WHERE sex = 'M'",
     _exp)
try:
    _f, _tf = released(point(P("sex = 'F'"), ["region"], [N]))
    _m, _tm = released(point(P("sex = 'M'"), ["region"], [N]))
    _exp = table(["region", "n"], [[g["region"], g["n"]] for g in _f + _m], withheld(_tf + _tm, inner=True))
except Refused as _r:
    _exp = [f"refused {_r.rule}"]
case(U, "UNION ALL of grouped aggregates: the Isle group of each branch is withheld",
     "SELECT region, COUNT(*) AS n FROM patients WHERE sex = 'F' GROUP BY region\nUNION ALL\nSELECT region, COUNT(*) AS n FROM patients WHERE sex = 'M' GROUP BY region",
     _exp)
_pn, _pi = P("region <> 'Isle'"), P("region = 'Isle'")
UI = f"SELECT *, 0 AS br FROM ({_pn}) UNION ALL SELECT *, 1 AS br FROM ({_pi})"
case(U, "a UNION ALL branch resting on one person refuses the statement",
     "SELECT COUNT(*) AS n FROM (\n  SELECT region FROM patients WHERE region <> 'Isle'\n  UNION ALL\n  SELECT region FROM patients WHERE region = 'Isle'\n) t",
     simple(UI, [], [N], branches=2, whole=True))
case(U, "UNION without ALL of protected rows", "SELECT COUNT(*) AS n FROM (SELECT region FROM patients UNION SELECT region FROM patients) t",
     refused("shape", "UNION distinct on protected rows"))
case(U, "a UNION mixing rows and an aggregate",
     "SELECT region, 1 AS n FROM patients UNION ALL SELECT region, COUNT(*) AS n FROM patients GROUP BY region",
     refused("shape", "rows and aggregates mixed"))
case(U, "UNION ALL of public rows", "SELECT region FROM regions UNION ALL SELECT region FROM region_wards WHERE ward = 'N1'",
     public("SELECT region FROM regions UNION ALL SELECT region FROM region_wards WHERE ward = 'N1'", ["region"]))
VLU = (f"SELECT u, keep, patient_id, 0 AS br FROM ({V()}) UNION ALL SELECT u, keep, patient_id, 1 AS br FROM ({L()})")
case(U, "UNION ALL of two protected tables, counted after",
     "SELECT COUNT(*) AS n, COUNT(DISTINCT patient_id) AS people FROM (SELECT patient_id FROM visits UNION ALL SELECT patient_id FROM labs) t",
     simple(VLU, [], [N, ("people", "count_distinct", "patient_id")], branches=2, whole=True))
VLW = (f"SELECT u, keep, ward AS k, 0 AS br FROM ({V()}) UNION ALL SELECT u, keep, test AS k, 1 AS br FROM ({L()})")
case(U, "UNION ALL of two protected tables, grouped after",
     "SELECT k, COUNT(*) AS n FROM (SELECT ward AS k FROM visits UNION ALL SELECT test AS k FROM labs) t GROUP BY k",
     simple(VLW, ["k"], [N], branches=2))
case(U, "UNION ALL of protected and public rows",
     "SELECT COUNT(*) AS n FROM (SELECT region FROM patients UNION ALL SELECT region FROM regions) t",
     ["refused shape: UNION of rows of protected tables with other rows"])

# --- cte_subquery.test: post-processing of released groups --------------------
C = "cte_subquery.test"


def released_of(rows_sql, keys, aggs, **kw):
    rows, thin = released(point(rows_sql, keys, aggs, kw.pop("units", ("u",)), kw.pop("branches", 1)), **kw)
    names = list(keys) + [a[0] for a in aggs]
    return [[g[n] for n in names] for g in rows], names, thin


def outer(file, name, sql, rows_sql, keys, aggs, outer_sql, columns, inner=False, order=(), limit=None, **kw):
    try:
        rows, names, thin = released_of(rows_sql, keys, aggs, **kw)
        got = post(rows, names, outer_sql) if rows else []
        exp = table(columns, got, withheld(thin, inner=inner), order=order, limit=limit)
    except Refused as r:
        exp = [f"refused {r.rule}"]
    case(file, name, sql, exp)


outer(C, "outer arithmetic on a CTE's groups (rounded again)",
      "WITH s AS (SELECT region, COUNT(*) AS n, SUM(bmi) AS total FROM patients GROUP BY region)\nSELECT region, total / n AS mean FROM s ORDER BY region",
      P(), ["region"], [N, ("total", "sum", "bmi")], "SELECT region, total / n FROM t", ["region", "mean"], order=[(0, False)])
outer(C, "ORDER BY and LIMIT on released groups",
      "WITH s AS (SELECT region, COUNT(*) AS n FROM patients GROUP BY region)\nSELECT region, n FROM s ORDER BY n DESC, region LIMIT 2",
      P(), ["region"], [N], "SELECT region, n FROM t", ["region", "n"], order=[(1, True), (0, False)], limit=2)
outer(C, "WHERE on an aggregated column of a subquery",
      "SELECT region, n FROM (SELECT region, COUNT(*) AS n FROM patients GROUP BY region) t WHERE n < 20",
      P(), ["region"], [N], "SELECT region, n FROM t WHERE n < 20", ["region", "n"])
outer(C, "an aggregate of released groups (the groups' notice is a subquery's)",
      "SELECT AVG(n) AS mean_n, COUNT(*) AS groups FROM (SELECT region, COUNT(*) AS n FROM patients GROUP BY region) t",
      P(), ["region"], [N], "SELECT avg(n), count(*) FROM t", ["mean_n", "groups"], inner=True)
outer(C, "outer arithmetic: average times count gives back the sum, to 6 digits",
      "WITH s AS (SELECT sex, AVG(bmi) AS m, COUNT(*) AS n FROM patients GROUP BY sex)\nSELECT sex, m * n AS total FROM s",
      P(), ["sex"], [("m", "avg", "bmi"), N], "SELECT sex, m * n FROM t", ["sex", "total"])
outer(C, "WHERE, ORDER BY and LIMIT on two-key groups (three visit numbers withheld)",
      "WITH w AS (SELECT ward, visit_no, COUNT(*) AS n FROM visits GROUP BY ward, visit_no)\nSELECT ward, visit_no, n FROM w WHERE n > 10 ORDER BY n DESC LIMIT 3",
      V(), ["ward", "visit_no"], [N], "SELECT ward, visit_no, n FROM t WHERE n > 10", ["ward", "visit_no", "n"], order=[(2, True)], limit=3)
case(C, "HAVING on a count: the withheld Isle group is counted, East is filtered",
     "SELECT region, COUNT(*) AS n FROM patients GROUP BY region HAVING COUNT(*) >= 20",
     simple(P(), ["region"], [N], having=lambda g: g["n"] >= 20))
case(C, "HAVING cannot remove a withheld group (it is counted as withheld)",
     "SELECT region, COUNT(*) AS n FROM patients GROUP BY region HAVING COUNT(*) < 5",
     simple(P(), ["region"], [N], having=lambda g: g["n"] < 5))
case(C, "HAVING on an average",
     "SELECT ward, AVG(cost) AS mean FROM visits GROUP BY ward HAVING AVG(cost) > 299",
     simple(V(), ["ward"], [("mean", "avg", "cost")], having=lambda g: g["mean"] > 299))
case(C, "a filtered subquery, grouped outside: it removes one man (id 60)",
     "SELECT sex, COUNT(*) AS n FROM (SELECT sex, region FROM patients WHERE region <> 'Isle') t GROUP BY sex",
     simple(P("region <> 'Isle'"), ["sex"], [N]))
case(C, "a filtered CTE of rows, aggregated outside (five people removed per sex)",
     "WITH adults AS (SELECT sex, bmi FROM patients WHERE age >= 30)\nSELECT sex, COUNT(*) AS n, AVG(bmi) AS mean FROM adults GROUP BY sex",
     simple(P("age >= 30"), ["sex"], [N, ("mean", "avg", "bmi")]))
case(C, "a subquery's WHERE and the outer WHERE add up",
     "SELECT region, COUNT(*) AS n FROM (SELECT region, sex FROM patients WHERE age >= 30) t WHERE sex = 'F' GROUP BY region",
     simple(P("age >= 30 AND sex = 'F'"), ["region"], [N]))
case(C, "nested CTEs of rows",
     "WITH a AS (SELECT region, bmi FROM patients), b AS (SELECT region, bmi FROM a WHERE region <> 'South')\nSELECT region, AVG(bmi) AS mean FROM b GROUP BY region",
     simple(P("region <> 'South'"), ["region"], [("mean", "avg", "bmi")]))

# --- charts.test ----------------------------------------------------------------
H = "charts.test"
case(H, "a bar chart of released groups",
     "CHART BAR (x = region, y = n) SELECT region, COUNT(*) AS n FROM patients GROUP BY region",
     simple(P(), ["region"], [N], chart="bar"))
case(H, "a bar chart with color, two keys",
     "CHART BAR (x = ward, y = n, color = visit_no) SELECT ward, visit_no, COUNT(*) AS n FROM visits GROUP BY ward, visit_no",
     simple(V(), ["ward", "visit_no"], [N], chart="bar"))
case(H, "a line chart: day 4 rests on one person",
     "CHART LINE (x = day, y = mean) SELECT day, AVG(value) AS mean FROM labs GROUP BY day",
     simple(L(), ["day"], [("mean", "avg", "value")], chart="line"))
case(H, "a bar chart of a refused query is refused",
     "CHART BAR (x = sex, y = n) SELECT sex, COUNT(*) AS n FROM patients WHERE age < 99 GROUP BY sex",
     simple(P("age < 99"), ["sex"], [N]))
case(H, "a histogram over the owner's bounds of age [0, 110]: the 99-year-old's bin and the youngest bin are withheld",
     "CHART HISTOGRAM (bins = 5) SELECT age FROM patients",
     histogram(P(), "age", 5, 0, 110))
case(H, "a histogram of clamped bmi: the clamped 69.0 is at max, in the bin above the range",
     "CHART HISTOGRAM (bins = 4, min = 10, max = 50) SELECT bmi FROM patients",
     histogram(P(), "bmi", 4, 10, 50))
case(H, "a histogram of visit costs (rows, not people, are counted)",
     "CHART HISTOGRAM (bins = 4) SELECT cost FROM visits",
     histogram(V(), "cost", 4, 0, 1000))
case(H, "a histogram with a filter",
     "CHART HISTOGRAM (bins = 4, min = 20, max = 80) SELECT age FROM patients WHERE sex = 'M'",
     histogram(P("sex = 'M'"), "age", 4, 20, 80))
case(H, "a histogram whose filter removes one person from a bin is refused",
     "CHART HISTOGRAM (bins = 5) SELECT age FROM patients WHERE region <> 'South' OR age <> 54",
     histogram(P("region <> 'South' OR age <> 54"), "age", 5, 0, 110))
case(H, "a histogram of a column without bounds needs min and max",
     "CHART HISTOGRAM SELECT visit_no FROM visits",
     ["refused QueryError: give the histogram's range with min = ... and max = ..."])

# --- explain.test -----------------------------------------------------------------
E = "explain.test"
ALLOWED = "allowed: aggregated; each group is released only if it rests on at least 5 people"
case(E, "an aggregate", "EXPLAIN SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex", [f"policy: {ALLOWED}"])
case(E, "a data-dependent refusal is not known before running", "EXPLAIN SELECT COUNT(*) AS n FROM patients WHERE age < 99",
     [f"policy: {ALLOWED}"])
case(E, "public rows", "EXPLAIN SELECT region, beds FROM regions", ["policy: allowed: public data only"])
case(E, "raw rows", "EXPLAIN SELECT sex, age FROM patients", ["policy: refused (raw_rows)"])
case(E, "an undeclared join key", "EXPLAIN SELECT COUNT(*) AS n FROM patients p JOIN visits v ON p.age = v.visit_no",
     ["policy: refused (join_key)"])
case(E, "an unbounded sum", "EXPLAIN SELECT SUM(income) AS s FROM patients", ["policy: refused (unbounded)"])
case(E, "a measure in WHERE", "EXPLAIN SELECT COUNT(*) AS n FROM patients WHERE bmi > 30", ["policy: refused (measure_use)"])
case(E, "an order statistic the owner does not allow", "EXPLAIN SELECT MAX(cost) AS m FROM visits",
     ["policy: refused (aggregate_not_allowed)"])
case(E, "a condition inside an aggregate", "EXPLAIN SELECT SUM(CASE WHEN sex = 'F' THEN 1 ELSE 0 END) AS n FROM patients",
     ["policy: refused (conditional_aggregate)"])
case(E, "UNION without ALL of protected rows", "EXPLAIN SELECT COUNT(*) AS n FROM (SELECT region FROM patients UNION SELECT region FROM patients) t",
     ["policy: refused (shape)"])
case(E, "a join with released groups", "EXPLAIN WITH c AS (SELECT region, COUNT(*) AS n FROM patients GROUP BY region)\nSELECT c.region, c.n, r.beds FROM c JOIN regions r ON c.region = r.region",
     [f"policy: {ALLOWED}"])
case(E, "a hidden column does not bind", "EXPLAIN SELECT COUNT(*) AS n FROM patients GROUP BY name", refused("NameError", "name is hidden"))

# --- limits.test: rounding and the row limit -----------------------------------------
M = "limits.test"
case(M, "public rows past max_rows = 30 are cut, in scan order", "SELECT region, ward FROM region_wards",
     public("SELECT region, ward FROM region_wards", ["region", "ward"], sort=False))
case(M, "released groups past max_rows: thin groups withheld, then the rest cut",
     "SELECT w.ward, p.sex, COUNT(*) AS n FROM patients p JOIN region_wards w ON p.region = w.region GROUP BY w.ward, p.sex",
     simple(PW, ["ward", "sex"], [N]))
case(M, "a full-precision average and sum, to 6 significant digits", "SELECT AVG(value) AS mean, SUM(value) AS total FROM labs",
     simple(L(), [], [("mean", "avg", "value"), ("total", "sum", "value")], whole=True))
case(M, "a standard deviation, to 6 significant digits", "SELECT test, STDDEV(value) AS sd FROM labs GROUP BY test",
     simple(L(), ["test"], [("sd", "stddev", "value")]))
outer(M, "arithmetic on a released count is rounded too",
      "WITH s AS (SELECT COUNT(*) AS n FROM patients) SELECT n / 7.0 AS x FROM s",
      P(), [], [N], "SELECT n / 7.0 FROM t", ["x"], whole=True)
case(M, "public values are not rounded", "SELECT AVG(beds) AS mean FROM regions",
     public("SELECT avg(beds) FROM regions", ["mean"]))
case(M, "integer sums are exact", "SELECT SUM(cost) AS total FROM visits",
     simple(V(), [], [("total", "sum", "cost")], whole=True))
case(M, "an average of integers is a double, rounded", "SELECT region, AVG(age) AS mean_age FROM patients GROUP BY region",
     simple(P(), ["region"], [("mean_age", "avg", "age")]))
case(M, "an integer sum of seven digits is not rounded", "SELECT SUM(age * 1001) AS s FROM patients",
     simple(f"SELECT *, age * 1001 AS x FROM ({P()})", [], [("s", "sum", "x")], whole=True))


# ---------------------------------------------------------------------------
# Writing the files
# ---------------------------------------------------------------------------

HEADER = "# {file}: protected-mode cases, run by tests/rust/protected_cases.rs (format there).\n# Generated with the expected results by derive.py from the fixture CSVs; do not edit by hand.\n"


def main():
    total = 0
    for file, cases in FILES.items():
        out = []
        for name, sql, expected in cases:
            assert "\n\n" not in sql
            out.append(f"# {name}\n{sql}\n----\n" + "\n".join(expected) + "\n")
            total += 1
        body = "\n".join(out)
        # The header is a comment block, not a case: a case starts with "# " after a blank line,
        # so the header's lines start with "#" and a tab-free text, and the first case follows a blank line.
        with open(os.path.join(HERE, file), "w") as f:
            f.write(HEADER.format(file=file).replace("# ", "#: ") + "\n" + body)
    print(f"{total} cases in {len(FILES)} files")


if __name__ == "__main__":
    main()
