"""Correctness cross-check of the Safe SQL dialect against DuckDB.

A small public-only fixture (two CSV tables, every column visible, no
suppression) is written into a temporary folder. A seeded generator draws
random queries from a small grammar: projections with arithmetic, CAST, WHERE with
comparisons / AND / OR / NOT / IN / BETWEEN / LIKE / ILIKE / IS NULL, GROUP BY
with COUNT / SUM / AVG / MIN / MAX / STDDEV / VARIANCE / MEDIAN / CORR, HAVING,
ORDER BY every output column, LIMIT, DISTINCT, inner and left joins, CASE,
COALESCE, NULLIF, subqueries in FROM, WITH, UNION ALL and UNION. Every query runs
through ``safe-data query --format json`` (all of them in a few invocations:
one JSON document per statement on its own stdout line) and through DuckDB on
the same CSV files, and the values are compared:

- rows in order when the query has an ORDER BY (it always orders by every
  output column, so the order is fully determined), as multisets otherwise;
- floats within 1e-9 relative or 1e-12 absolute; NULL equals NULL;
- column names and types are not compared (they legitimately differ, e.g.
  ``7 / 2`` is DOUBLE in both but ``SUM`` of BIGINT is HUGEINT in DuckDB).

Differences by design, so the DuckDB side of a query is written to mean what
the dialect means (see ARCHITECTURE.md, invariant 5, "every operation is
total"):

- ``a % 0`` is NULL in the dialect; DuckDB 2 raises an error, so it gets
  ``a % NULLIF(b, 0)``.
- ``a / 0`` is +-inf and ``0 / 0`` NaN in both engines, but NaN then behaves
  differently (polars' MAX skips it, DuckDB orders it above every number; the
  dialect shows it as NULL), so a generated divisor is wrapped in
  ``NULLIF(b, 0)`` in both dialects unless it is a non-zero literal.
- ``safe-data query --format json`` writes +-Infinity and NaN as null (JSON has
  no such numbers), so non-finite DuckDB floats compare as NULL.
- CORR without variance (fewer than two pairs, or a constant column) is NULL
  in SQL (PostgreSQL) and in the dialect's output; DuckDB gives NaN, so it gets
  ``NULLIF(CORR(..), 'NaN')``.
- ``CAST(double AS INTEGER)`` rounds half away from zero in the dialect
  (``2.5`` -> 3) and half to even in DuckDB (-> 2): DuckDB gets
  ``CAST(round(x) AS BIGINT)``.
- A decimal literal is a DOUBLE in the dialect; DuckDB reads it as an exact
  DECIMAL, so it gets ``CAST(lit AS DOUBLE)``.
- ``round(x, n)`` with n > 0 rounds the decimal a double prints as, half away
  from zero (``round(2.675, 2)`` is 2.68 and ``round(1.005, 2)`` 1.01, as
  PostgreSQL's ``round(numeric, int)`` for the numbers as written); DuckDB's
  ``round(DOUBLE, n)`` rounds the binary value (2.67, 1.0), so it gets the
  macro ``sd_round``: the same through ``CAST(CAST(x AS VARCHAR) AS DECIMAL)``
  (DuckDB prints a double as its shortest round-trip text too).
- Text cast to a number: an integer's text converts exactly, a decimal one
  rounds half away from zero (``CAST('2.5' AS INTEGER)`` is 3, as in DuckDB);
  hexadecimal text (``'0x10'``) is no number in the dialect, so the sweep has none.
- ``sqrt``/``ln`` of invalid input are NULL in the dialect (NaN / error in
  DuckDB): the grammar does not generate them.
- Integer overflow is not generated: the fixture's integers are small and
  expressions are at most a few levels deep (DuckDB raises an error; the
  dialect's constant folding panics in a debug build).
- ``width_bucket`` does not exist in DuckDB; not generated. The edge sweep
  below compares it with a Python reference of PostgreSQL's definition in
  exact rational arithmetic (a double read as the decimal it prints as).
- Concatenating a DOUBLE to text depends on each engine's float formatting
  (``'x' || 2.0``); only text operands are concatenated.

The cases in ``PINNED_SQL`` are the smallest forms of the mismatches the
random draw found, kept so each one has a named test.

A sweep of numeric functions on edge values (``SWEEP``: ROUND, FLOOR, CEIL,
division, remainder and casts over a table of halves, signed zeros, values
near 2^52, huge ones and texts that may or may not be numbers; and
``WIDTH_BUCKET`` on every edge of many (low, high, n), and the doubles just
around each edge) runs on a third table, ``edges``, and a fourth, ``wb``.

Run with ``CROSSCHECK_N`` / ``CROSSCHECK_SEED`` to draw more or other queries.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import os
import random
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("CROSSCHECK_SEED", "20240611"))
N_QUERIES = int(os.environ.get("CROSSCHECK_N", "300"))
# Statements per `safe-data query` invocation.
BATCH = 100
QUERY_TIMEOUT_S = 300
REL_TOL = 1e-9
ABS_TOL = 1e-12


def binary() -> Path:
    return Path(os.environ.get("SAFE_DATA_BIN", REPO / "target" / "debug" / "safe-data")).resolve()


# --------------------------------------------------------------------------
# the fixture: two small tables with NULLs in every nullable column

# name -> DuckDB type; safe-data infers the same from the CSV (test_fixture_types_match)
T1_COLUMNS = {
    "id": "BIGINT",
    "g": "VARCHAR",  # low cardinality text key
    "h": "BIGINT",  # low cardinality integer key, the join key
    "a": "BIGINT",
    "x": "DOUBLE",
    "y": "DOUBLE",
    "name": "VARCHAR",
    "dt": "DATE",
}
T2_COLUMNS = {"h": "BIGINT", "label": "VARCHAR", "w": "DOUBLE"}

NAMES = ["alpha", "Beta", "gamma", "Delta", "epsilon", "zeta", "Eta", "theta", "iota", "kappa",
         "lambda", "Mu", "nu", "xi", "omicron", "pi", "Rho", "sigma", "tau", "upsilon"]


def _fixture_rows(rng: random.Random) -> tuple[list[list[Any]], list[list[Any]]]:
    def maybe(v: Any, p: float = 0.12) -> Any:
        return None if rng.random() < p else v

    t1 = []
    for i in range(1, 81):
        t1.append([
            i,
            maybe(rng.choice(["red", "green", "blue", "Red"])),
            maybe(rng.randint(0, 4)),
            maybe(rng.randint(-20, 60)),
            # two decimals; a few repeated values so ties and DISTINCT matter
            maybe(round(rng.choice([rng.uniform(-50, 150), 12.5, 0.0, -3.25]), 2)),
            maybe(round(rng.uniform(0, 10), 2), 0.2),
            maybe(rng.choice(NAMES), 0.08),
            maybe(dt.date(2023, 1, 1) + dt.timedelta(days=rng.randint(0, 730))),
        ])
    # h: duplicates (1), a key with no match in t1 (7), a NULL key, and key 0 missing
    t2 = [
        [1, "one", 0.5],
        [1, "uno", 1.25],
        [2, "two", None],
        [3, "three", 2.0],
        [4, None, -1.5],
        [7, "seven", 3.75],
        [None, "none", 9.0],
    ]
    return t1, t2


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, float):
        return repr(v)  # the shortest text that reads back as the same double
    return str(v)


# --------------------------------------------------------------------------
# the edge tables of the numeric sweep

EDGES_COLUMNS = {"k": "BIGINT", "v": "DOUBLE", "i": "BIGINT", "s": "VARCHAR"}
# Halves (rounding ties), signed zeros, the last doubles with a fraction
# (2^52), doubles whose decimal form is a tie but whose binary value is not
# (2.675, 1.005), huge and tiny values.
EDGE_DOUBLES = [
    0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 3.5, 0.125, -0.125, 0.375, 2.675, 1.005, -1.005,
    0.49999999999999994, -0.49999999999999994, 4503599627370495.5, -4503599627370495.5,
    4503599627370497.0, 9007199254740993.0, 0.1, 0.3, 0.6, 0.7, 75.0, 110.0, 1e-9, -1e-9, 5e-324,
    123.456, -123.456, 1e15 + 0.5, 2.0**62, -(2.0**62), 1e300, -1e300,
]
EDGE_INTEGERS = [0, 1, -1, 2, -2, 3, -3, 7, -7, 75, 110, 2**53 + 1, -(2**53) - 1, 2**62, -(2**62)]
# Text that is a number, a number with blanks or signs, or not a number. The
# first is no number, so both engines type the column as text.
EDGE_TEXTS = [
    "abc", "2.5", "-2.5", "3.5", "42", "+7", "-0", "1e3", "1.5e0", "0.49999999999999994", "9223372036854775807",
    "-9223372036854775808", "1e19", "12abc", "", ".5", "5.", "Infinity", "2.675", "-1.005e0",
]


def _edge_rows() -> list[list[Any]]:
    n = max(len(EDGE_DOUBLES), len(EDGE_INTEGERS), len(EDGE_TEXTS))
    at = lambda xs, k: xs[k] if k < len(xs) else None  # noqa: E731
    return [[k, at(EDGE_DOUBLES, k), at(EDGE_INTEGERS, k), at(EDGE_TEXTS, k) or None] for k in range(n)]


WB_COLUMNS = {"k": "BIGINT", "x": "DOUBLE", "xi": "BIGINT"}
# (low, high, n) as written. The first is the issue's: WIDTH_BUCKET(75, 0, 110, 22) = 16.
WB_CASES = [
    ("0", "110", 22), ("0", "3", 5), ("0", "1", 3), ("0", "1", 10), ("0.1", "0.7", 6), ("-1", "1", 8),
    ("-37.5", "62.5", 40), ("18", "90", 12), ("2.25", "3", 3), ("-0.3", "0.4", 7), ("1000", "1000.125", 5),
    ("0", "100", 7), ("10", "70", 24), ("0", "120", 9), ("0", "400", 13), ("-5", "5", 1), ("0.001", "0.002", 9),
    ("0", "1", 1000), ("-110", "0", 22), ("1e-3", "7.5", 11),
]


def _wb_values() -> tuple[list[float], list[int]]:
    """Every edge of every case, the doubles just around it, and the integers around it."""
    from fractions import Fraction

    doubles: set[float] = {0.0, -0.0, math.inf, -math.inf}
    integers: set[int] = {0}
    for lo, hi, n in WB_CASES:
        low, high = Fraction(lo), Fraction(hi)
        for j in range(n + 1):
            edge = low + j * (high - low) / n
            e = float(edge)
            doubles.update({e, math.nextafter(e, -math.inf), math.nextafter(e, math.inf)})
            doubles.add(math.nextafter(math.nextafter(e, -math.inf), -math.inf))
            if j < n:
                doubles.add(float(edge + (high - low) / n / 2))
            integers.update({math.floor(edge) - 1, math.floor(edge), math.ceil(edge), math.ceil(edge) + 1})
    return sorted(doubles), sorted(integers)


def _wb_rows() -> list[list[Any]]:
    doubles, integers = _wb_values()
    doubles = [d for d in doubles if math.isfinite(d)]  # the CSV has no infinities; they are checked as literals
    n = max(len(doubles), len(integers))
    at = lambda xs, k: xs[k] if k < len(xs) else None  # noqa: E731
    return [[k, at(doubles, k), at(integers, k)] for k in range(n)]


def pg_width_bucket(x: Any, low: str, high: str, n: int) -> int | None:
    """PostgreSQL's WIDTH_BUCKET, exactly: 0 below low, n + 1 at or above high,
    else 1 + floor(n (x - low) / (high - low)); a double is the decimal it prints as."""
    from fractions import Fraction

    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    if isinstance(x, float) and math.isinf(x):
        return 0 if x < 0 else n + 1
    v = Fraction(repr(x)) if isinstance(x, float) else Fraction(x)
    lo, hi = Fraction(low), Fraction(high)
    if v < lo:
        return 0
    if v >= hi:
        return n + 1
    return math.floor(n * (v - lo) / (hi - lo)) + 1


@dataclass
class Fixture:
    dir: Path
    config: Path
    t1: Path
    t2: Path
    edges: Path
    wb: Path


def write_fixture(d: Path) -> Fixture:
    """Writes the two CSV tables and a public-only config into `d`."""
    t1_rows, t2_rows = _fixture_rows(random.Random(SEED))
    t1 = d / "t1.csv"
    t2 = d / "t2.csv"
    edges = d / "edges.csv"
    wb = d / "wb.csv"
    for path, cols, rows in (
        (t1, T1_COLUMNS, t1_rows),
        (t2, T2_COLUMNS, t2_rows),
        (edges, EDGES_COLUMNS, _edge_rows()),
        (wb, WB_COLUMNS, _wb_rows()),
    ):
        lines = [",".join(cols)] + [",".join(_csv_value(v) for v in r) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    config = d / "safe-data.toml"
    config.write_text(
        "[server]\n"
        'state_dir = "state"\n'
        "max_rows = 100000\n"
        "\n"
        "[tables.t1]\n"
        'source = "t1.csv"\n'
        "public = true\n"
        "\n"
        "[tables.t2]\n"
        'source = "t2.csv"\n'
        "public = true\n"
        "\n"
        "[tables.edges]\n"
        'source = "edges.csv"\n'
        "public = true\n"
        "\n"
        "[tables.wb]\n"
        'source = "wb.csv"\n'
        "public = true\n"
    )
    return Fixture(d, config, t1, t2, edges, wb)


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return write_fixture(tmp_path_factory.mktemp("crosscheck"))


# --------------------------------------------------------------------------
# the grammar: every generator returns the same expression in both dialects


@dataclass(frozen=True)
class E:
    sd: str  # Safe SQL
    dk: str  # DuckDB
    ty: str  # "int" | "float" | "text" | "date" | "bool"


def same(sql: str, ty: str) -> E:
    return E(sql, sql, ty)


@dataclass
class Scope:
    """The columns a query can name: alias -> {column: type}."""

    tables: dict[str, dict[str, str]] = field(default_factory=dict)

    def columns(self, ty: str | None = None) -> list[E]:
        out = []
        for alias, cols in self.tables.items():
            for c, t in cols.items():
                if ty is None or t == ty:
                    out.append(same(f"{alias}.{c}", t))
        return out


T1_TYPES = {"id": "int", "g": "text", "h": "int", "a": "int", "x": "float", "y": "float", "name": "text", "dt": "date"}
T2_TYPES = {"h": "int", "label": "text", "w": "float"}

TEXT_LITERALS = ["red", "green", "blue", "Red", "alpha", "Beta", "gamma", "zeta", "one", "none", "xyz"]
LIKE_PATTERNS = ["%a", "a%", "%e%", "_e%", "%ta", "B%", "%A%", "r_d", "%", "gamma", "%mm%", "_"]
DATE_LITERALS = ["2023-01-01", "2023-06-15", "2023-12-31", "2024-02-29", "2024-07-01", "2024-12-31"]


class Gen:
    def __init__(self, rng: random.Random):
        self.r = rng

    def choice(self, xs):
        return self.r.choice(xs)

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    # ---- literals

    def int_lit(self) -> E:
        return same(str(self.r.randint(0, 12)), "int")

    def float_lit(self) -> E:
        v = self.choice(["0.5", "1.5", "2.25", "10.0", "0.1", "3.75", "100.5"])
        return E(v, f"CAST({v} AS DOUBLE)", "float")

    def text_lit(self) -> E:
        return same("'" + self.choice(TEXT_LITERALS) + "'", "text")

    def date_lit(self) -> E:
        return same("DATE '" + self.choice(DATE_LITERALS) + "'", "date")

    # ---- numeric expressions

    def num(self, s: Scope, depth: int = 2) -> E:
        cols = s.columns("int") + s.columns("float")
        if depth <= 0 or self.chance(0.35):
            k = self.r.random()
            if k < 0.7:
                return self.choice(cols)
            if k < 0.85:
                return self.int_lit()
            return self.float_lit()
        k = self.r.randrange(12)
        if k <= 3:
            left, right = self.num(s, depth - 1), self.num(s, depth - 1)
            op = self.choice(["+", "-", "*", "+"])
            ty = "int" if left.ty == right.ty == "int" else "float"
            return E(f"({left.sd} {op} {right.sd})", f"({left.dk} {op} {right.dk})", ty)
        if k == 4:
            left, right = self.num(s, depth - 1), self.num(s, depth - 1)
            # `/` is always floating point, as in DuckDB 2. The divisor is kept from 0 in
            # both dialects: 0 / 0 is NaN, which the engines order and aggregate
            # differently (see the module docstring).
            if right.sd.isdigit() and right.sd != "0":
                return E(f"({left.sd} / {right.sd})", f"({left.dk} / {right.dk})", "float")
            return E(f"({left.sd} / NULLIF({right.sd}, 0))", f"({left.dk} / NULLIF({right.dk}, 0))", "float")
        if k == 5:
            e = self.num(s, depth - 1)
            return E(f"(-{e.sd})", f"(-{e.dk})", e.ty)
        if k == 6:
            e = self.num(s, depth - 1)
            f = self.choice(["abs", "abs", "floor", "ceil"])
            ty = e.ty if f == "abs" else "float" if e.ty == "float" else "int"
            return E(f"{f}({e.sd})", f"{f}({e.dk})", ty)
        if k == 7:
            e = self.num(s, depth - 1)
            n = self.r.randint(0, 2)
            return E(f"round({e.sd}, {n})", f"sd_round({e.dk}::DOUBLE, {n})", "float")
        if k == 8:
            c = self.pred(s, depth - 1)
            t, f = self.num(s, depth - 1), self.num(s, depth - 1)
            ty = "int" if t.ty == f.ty == "int" else "float"
            if self.chance(0.3):
                return E(f"CASE WHEN {c.sd} THEN {t.sd} END", f"CASE WHEN {c.dk} THEN {t.dk} END", t.ty)
            return E(f"CASE WHEN {c.sd} THEN {t.sd} ELSE {f.sd} END",
                     f"CASE WHEN {c.dk} THEN {t.dk} ELSE {f.dk} END", ty)
        if k == 9:
            a, b = self.num(s, depth - 1), self.num(s, depth - 1)
            ty = "int" if a.ty == b.ty == "int" else "float"
            return E(f"COALESCE({a.sd}, {b.sd})", f"COALESCE({a.dk}, {b.dk})", ty)
        if k == 10:
            texts = s.columns("text")
            dates = s.columns("date")
            if dates and self.chance(0.5):
                d = self.choice(dates)
                f = self.choice(["year", "month", "day", "quarter", "dow"])
                if f in ("quarter", "dow"):
                    form = self.choice([f"extract({f} FROM {{}})", f"date_part('{f}', {{}})"])
                    return E(form.format(d.sd), form.format(d.dk), "int")
                return E(f"{f}({d.sd})", f"{f}({d.dk})", "int")
            t = self.choice(texts)
            return E(f"length({t.sd})", f"length({t.dk})", "int")
        if k == 11 and self.chance(0.6):
            e = self.num(s, depth - 1)
            j = self.r.randrange(4)
            if j == 0:
                # the dialect rounds half away from zero, DuckDB half to even
                return E(f"CAST({e.sd} AS INTEGER)", f"CAST(round({e.dk}) AS BIGINT)", "int")
            if j == 1:
                return E(f"CAST({e.sd} AS DOUBLE)", f"CAST({e.dk} AS DOUBLE)", "float")
            if j == 2:
                lit = self.int_lit()
                return E(f"NULLIF({e.sd}, {lit.sd})", f"NULLIF({e.dk}, {lit.dk})", e.ty)
            n = self.r.randint(0, 3)
            return E(f"power({e.sd}, {n})", f"power({e.dk}, {n})", "float")
        # k == 11: modulo of integers (NULL on a zero divisor)
        left = self.choice(s.columns("int"))
        right = self.int_lit()
        return E(f"({left.sd} % {right.sd})", f"({left.dk} % NULLIF({right.dk}, 0))", "int")

    # ---- text expressions

    def text(self, s: Scope, depth: int = 1) -> E:
        cols = s.columns("text")
        if depth <= 0 or self.chance(0.5):
            return self.choice(cols) if self.chance(0.85) else self.text_lit()
        k = self.r.randrange(7)
        if k == 6:
            # integers as text (doubles are left out: float formatting differs)
            i = self.num(s, 0)
            if i.ty == "int":
                return E(f"CAST({i.sd} AS TEXT)", f"CAST({i.dk} AS VARCHAR)", "text")
            k = 0
        e = self.text(s, depth - 1)
        if k == 0:
            f = self.choice(["upper", "lower", "trim"])
            return E(f"{f}({e.sd})", f"{f}({e.dk})", "text")
        if k == 1:
            return E(f"COALESCE({e.sd}, 'none')", f"COALESCE({e.dk}, 'none')", "text")
        if k == 2:
            o = self.text(s, depth - 1)
            return E(f"({e.sd} || '-' || {o.sd})", f"({e.dk} || '-' || {o.dk})", "text")
        if k == 3:
            i, n = self.r.randint(1, 3), self.r.randint(1, 4)
            return E(f"substr({e.sd}, {i}, {n})", f"substr({e.dk}, {i}, {n})", "text")
        if k == 4:
            c = self.pred(s, depth)
            lit = self.text_lit()
            return E(f"CASE WHEN {c.sd} THEN {lit.sd} ELSE {e.sd} END",
                     f"CASE WHEN {c.dk} THEN {lit.dk} ELSE {e.dk} END", "text")
        lit = self.text_lit()
        return E(f"NULLIF({e.sd}, {lit.sd})", f"NULLIF({e.dk}, {lit.dk})", "text")

    def date(self, s: Scope) -> E:
        d = self.choice(s.columns("date"))
        if self.chance(0.25):
            unit = self.choice(["month", "year"])
            return E(f"date_trunc('{unit}', {d.sd})", f"CAST(date_trunc('{unit}', {d.dk}) AS DATE)", "date")
        return d

    def of_type(self, s: Scope, ty: str) -> E:
        if ty in ("int", "float"):
            return self.num(s)
        if ty == "text":
            return self.text(s)
        if ty == "date":
            return self.date(s)
        return self.pred(s, 1)

    # ---- predicates

    def pred(self, s: Scope, depth: int = 2) -> E:
        if depth > 0 and self.chance(0.35):
            k = self.r.randrange(5)
            a = self.pred(s, depth - 1)
            if k == 4:
                return E(f"(NOT {a.sd})", f"(NOT {a.dk})", "bool")
            b = self.pred(s, depth - 1)
            op = "AND" if k < 2 else "OR"
            return E(f"({a.sd} {op} {b.sd})", f"({a.dk} {op} {b.dk})", "bool")
        k = self.r.randrange(10)
        if k == 8 and not s.columns("date"):
            k = 0
        if k <= 2:
            left, right = self.num(s, 1), self.num(s, 1) if self.chance(0.4) else self.int_lit()
            op = self.choice(["=", "<>", "!=", "<", "<=", ">", ">="])
            return E(f"{left.sd} {op} {right.sd}", f"{left.dk} {op} {right.dk}", "bool")
        if k == 3:
            t = self.text(s, 0)
            op = self.choice(["=", "<>", "<", ">="])
            lit = self.text_lit()
            return E(f"{t.sd} {op} {lit.sd}", f"{t.dk} {op} {lit.dk}", "bool")
        if k == 4:
            neg = "NOT " if self.chance(0.3) else ""
            if self.chance(0.15):
                # a list of expressions
                e = self.num(s, 0)
                xs = [self.num(s, 1) for _ in range(self.r.randint(1, 3))]
                lst_sd, lst_dk = ", ".join(x.sd for x in xs), ", ".join(x.dk for x in xs)
                return E(f"{e.sd} {neg}IN ({lst_sd})", f"{e.dk} {neg}IN ({lst_dk})", "bool")
            if self.chance(0.5):
                e = self.choice(s.columns("int"))
                items = [str(self.r.randint(-2, 6)) for _ in range(self.r.randint(1, 4))]
                if self.chance(0.2):
                    items.append("NULL")
            else:
                e = self.text(s, 0)
                items = ["'" + self.choice(TEXT_LITERALS) + "'" for _ in range(self.r.randint(1, 3))]
            lst = ", ".join(items)
            return E(f"{e.sd} {neg}IN ({lst})", f"{e.dk} {neg}IN ({lst})", "bool")
        if k == 5:
            neg = "NOT " if self.chance(0.3) else ""
            if s.columns("date") and self.chance(0.3):
                d = self.choice(s.columns("date"))
                lo, hi = sorted(self.r.sample(DATE_LITERALS, 2))
                if self.chance(0.1):
                    lo, hi = hi, lo
                return E(f"{d.sd} {neg}BETWEEN DATE '{lo}' AND DATE '{hi}'",
                         f"{d.dk} {neg}BETWEEN DATE '{lo}' AND DATE '{hi}'", "bool")
            e = self.num(s, 1)
            lo = self.r.randint(-20, 40)
            hi = lo + self.r.randint(-5, 60)
            return E(f"{e.sd} {neg}BETWEEN {lo} AND {hi}", f"{e.dk} {neg}BETWEEN {lo} AND {hi}", "bool")
        if k == 6:
            t = self.text(s, 1)
            op = self.choice(["LIKE", "LIKE", "NOT LIKE", "ILIKE", "NOT ILIKE"])
            p = self.choice(LIKE_PATTERNS)
            return E(f"{t.sd} {op} '{p}'", f"{t.dk} {op} '{p}'", "bool")
        if k == 7:
            e = self.choice(s.columns())
            op = self.choice(["IS NULL", "IS NOT NULL"])
            return E(f"{e.sd} {op}", f"{e.dk} {op}", "bool")
        if k == 8:
            d = self.choice(s.columns("date"))
            op = self.choice(["<", "<=", ">", ">=", "="])
            lit = self.date_lit()
            return E(f"{d.sd} {op} {lit.sd}", f"{d.dk} {op} {lit.dk}", "bool")
        # k == 9: comparing two columns of the same kind
        if self.chance(0.5):
            a, b = self.choice(s.columns("int") + s.columns("float")), self.choice(s.columns("int") + s.columns("float"))
        else:
            a, b = self.choice(s.columns("text")), self.choice(s.columns("text"))
        op = self.choice(["=", "<>", "<", ">"])
        return E(f"{a.sd} {op} {b.sd}", f"{a.dk} {op} {b.dk}", "bool")

    # ---- aggregates

    def agg(self, s: Scope) -> E:
        k = self.r.randrange(14)
        if k == 0:
            return same("COUNT(*)", "int")
        if k == 1:
            e = self.choice(s.columns())
            return E(f"COUNT({e.sd})", f"COUNT({e.dk})", "int")
        if k == 2:
            e = self.choice(s.columns()) if self.chance(0.6) else self.text(s, 1)
            return E(f"COUNT(DISTINCT {e.sd})", f"COUNT(DISTINCT {e.dk})", "int")
        if k in (3, 4):
            e = self.num(s, 1)
            return E(f"SUM({e.sd})", f"SUM({e.dk})", e.ty)
        if k == 5:
            e = self.num(s, 1)
            return E(f"AVG({e.sd})", f"AVG({e.dk})", "float")
        if k in (6, 7):
            f = self.choice(["MIN", "MAX"])
            kk = self.r.randrange(3)
            e = self.num(s, 1) if kk == 0 else self.text(s, 0) if kk == 1 else self.choice(s.columns("date"))
            return E(f"{f}({e.sd})", f"{f}({e.dk})", e.ty)
        if k == 8:
            e = self.num(s, 1)
            f = self.choice(["STDDEV", "VARIANCE", "STDDEV_SAMP", "VAR_SAMP"])
            return E(f"{f}({e.sd})", f"{f}({e.dk})", "float")
        if k == 9:
            e = self.num(s, 1)
            return E(f"MEDIAN({e.sd})", f"MEDIAN({e.dk})", "float")
        if k == 10:
            e = self.choice(s.columns("int") + s.columns("float"))
            q = self.choice(["0.25", "0.5", "0.9"])
            return E(f"QUANTILE_CONT({e.sd}, {q})", f"QUANTILE_CONT({e.dk}, {q})", "float")
        if k == 11:
            a = self.choice(s.columns("int") + s.columns("float"))
            b = self.choice(s.columns("int") + s.columns("float"))
            if self.chance(0.5):
                # SQL's CORR is NULL without variance (DuckDB: NaN)
                return E(f"CORR({a.sd}, {b.sd})", f"NULLIF(CORR({a.dk}, {b.dk}), 'NaN'::DOUBLE)", "float")
            return E(f"COVAR_SAMP({a.sd}, {b.sd})", f"COVAR_SAMP({a.dk}, {b.dk})", "float")
        if k == 12:
            # arithmetic on aggregates
            e = self.num(s, 0)
            return E(f"SUM({e.sd}) / COUNT(*)", f"SUM({e.dk}) / COUNT(*)", "float")
        # k == 13: a conditional count
        c = self.pred(s, 1)
        return E(f"SUM(CASE WHEN {c.sd} THEN 1 ELSE 0 END)", f"SUM(CASE WHEN {c.dk} THEN 1 ELSE 0 END)", "int")


# --------------------------------------------------------------------------
# query shapes


@dataclass
class Case:
    n: int
    sd: str
    dk: str
    ordered: bool


def _order_by(g: Gen, width: int) -> str:
    keys = []
    for i in range(1, width + 1):
        d = g.choice(["", "", " DESC"])
        nulls = g.choice(["", "", "", " NULLS FIRST", " NULLS LAST"])
        keys.append(f"{i}{d}{nulls}")
    return " ORDER BY " + ", ".join(keys)


def _source(g: Gen) -> tuple[str, str, Scope]:
    """A FROM clause (both dialects) and the scope it opens."""
    k = g.r.randrange(10)
    if k <= 4:
        return "t1 AS p", "t1 AS p", Scope({"p": dict(T1_TYPES)})
    if k <= 6:
        join = g.choice(["JOIN", "INNER JOIN", "LEFT JOIN"])
        src = f"t1 AS p {join} t2 AS q ON p.h = q.h"
        return src, src, Scope({"p": dict(T1_TYPES), "q": dict(T2_TYPES)})
    if k == 7:
        # a subquery in FROM with a filter and a computed column
        inner = Scope({"t1": dict(T1_TYPES)})
        w = g.pred(inner, 1)
        z = g.num(inner, 1)
        sd = f"(SELECT t1.*, {z.sd} AS z FROM t1 WHERE {w.sd}) AS p"
        dk = f"(SELECT t1.*, {z.dk} AS z FROM t1 WHERE {w.dk}) AS p"
        return sd, dk, Scope({"p": {**T1_TYPES, "z": z.ty}})
    if k == 8:
        # join of a filtered subquery with the small table
        inner = Scope({"t2": dict(T2_TYPES)})
        w = g.pred(inner, 0)
        sd = f"t1 AS p JOIN (SELECT * FROM t2 WHERE {w.sd}) AS q ON p.h = q.h"
        dk = f"t1 AS p JOIN (SELECT * FROM t2 WHERE {w.dk}) AS q ON p.h = q.h"
        return sd, dk, Scope({"p": dict(T1_TYPES), "q": dict(T2_TYPES)})
    # a UNION ALL of two filtered halves of t1, as a subquery
    inner = Scope({"t1": dict(T1_TYPES)})
    a, b = g.pred(inner, 1), g.pred(inner, 1)
    sd = f"(SELECT * FROM t1 WHERE {a.sd} UNION ALL SELECT * FROM t1 WHERE {b.sd}) AS p"
    dk = f"(SELECT * FROM t1 WHERE {a.dk} UNION ALL SELECT * FROM t1 WHERE {b.dk}) AS p"
    return sd, dk, Scope({"p": dict(T1_TYPES)})


def _select_list(items: list[E], dialect: str) -> str:
    return ", ".join(f"{getattr(e, dialect)} AS c{i}" for i, e in enumerate(items))


def gen_projection(g: Gen) -> tuple[str, str, bool]:
    src_sd, src_dk, s = _source(g)
    items = []
    for _ in range(g.r.randint(1, 4)):
        k = g.r.random()
        items.append(g.num(s) if k < 0.5 else g.text(s) if k < 0.75 else g.date(s) if k < 0.85 else g.pred(s, 1))
    distinct = "DISTINCT " if g.chance(0.15) else ""
    where = g.pred(s) if g.chance(0.7) else None
    sd = f"SELECT {distinct}{_select_list(items, 'sd')} FROM {src_sd}"
    dk = f"SELECT {distinct}{_select_list(items, 'dk')} FROM {src_dk}"
    if where:
        sd += f" WHERE {where.sd}"
        dk += f" WHERE {where.dk}"
    ordered = g.chance(0.6)
    if ordered:
        ob = _order_by(g, len(items))
        if g.chance(0.3):
            ob += f" LIMIT {g.r.randint(1, 20)}"
            if g.chance(0.3):
                ob += f" OFFSET {g.r.randint(0, 5)}"
        sd += ob
        dk += ob
    return sd, dk, ordered


def gen_group_by(g: Gen) -> tuple[str, str, bool]:
    src_sd, src_dk, s = _source(g)
    keys = []
    for _ in range(g.r.randint(1, 2)):
        k = g.r.random()
        if k < 0.55:
            keys.append(g.choice([c for c in s.columns() if c.ty in ("text", "int")]))
        elif k < 0.7:
            keys.append(g.date(s) if g.chance(0.5) else g.choice(s.columns("date")))
        elif k < 0.85:
            c = g.pred(s, 0)
            lit1, lit2 = g.text_lit(), g.text_lit()
            keys.append(E(f"CASE WHEN {c.sd} THEN {lit1.sd} ELSE {lit2.sd} END",
                          f"CASE WHEN {c.dk} THEN {lit1.dk} ELSE {lit2.dk} END", "text"))
        else:
            keys.append(g.text(s, 1))
    aggs = [g.agg(s) for _ in range(g.r.randint(1, 3))]
    items = keys + aggs
    ordinals = ", ".join(str(i) for i in range(1, len(keys) + 1))
    sd = f"SELECT {_select_list(items, 'sd')} FROM {src_sd}"
    dk = f"SELECT {_select_list(items, 'dk')} FROM {src_dk}"
    if g.chance(0.6):
        w = g.pred(s)
        sd += f" WHERE {w.sd}"
        dk += f" WHERE {w.dk}"
    sd += f" GROUP BY {ordinals}"
    dk += f" GROUP BY {ordinals}"
    if g.chance(0.25):
        h = g.choice([same("COUNT(*)", "int"), g.agg(s)])
        if h.ty in ("int", "float"):
            n = g.r.randint(0, 6)
            sd += f" HAVING {h.sd} > {n}"
            dk += f" HAVING {h.dk} > {n}"
    ordered = g.chance(0.7)
    if ordered:
        ob = _order_by(g, len(items))
        sd += ob
        dk += ob
    return sd, dk, ordered


def gen_global_agg(g: Gen) -> tuple[str, str, bool]:
    src_sd, src_dk, s = _source(g)
    aggs = [g.agg(s) for _ in range(g.r.randint(1, 4))]
    sd = f"SELECT {_select_list(aggs, 'sd')} FROM {src_sd}"
    dk = f"SELECT {_select_list(aggs, 'dk')} FROM {src_dk}"
    if g.chance(0.7):
        w = g.pred(s)
        sd += f" WHERE {w.sd}"
        dk += f" WHERE {w.dk}"
    return sd, dk, False


def gen_union(g: Gen) -> tuple[str, str, bool]:
    s = Scope({"p": dict(T1_TYPES)})
    s2 = Scope({"q": dict(T2_TYPES)})
    tys = [g.choice(["int", "float", "text", "text", "date"]) for _ in range(g.r.randint(1, 3))]

    def side(scope: Scope, src: str) -> tuple[str, str]:
        items = []
        for ty in tys:
            if ty == "date" and not scope.columns("date"):
                items.append(g.date_lit())
            else:
                items.append(g.of_type(scope, ty))
        sd = f"SELECT {_select_list(items, 'sd')} FROM {src}"
        dk = f"SELECT {_select_list(items, 'dk')} FROM {src}"
        if g.chance(0.6):
            w = g.pred(scope, 1)
            sd += f" WHERE {w.sd}"
            dk += f" WHERE {w.dk}"
        return sd, dk

    parts = [side(s, "t1 AS p")]
    parts.append(side(s2, "t2 AS q") if g.chance(0.5) else side(s, "t1 AS p"))
    if g.chance(0.2):
        parts.append(side(s, "t1 AS p"))
    op = " UNION ALL " if g.chance(0.8) else " UNION "
    sd = op.join(p[0] for p in parts)
    dk = op.join(p[1] for p in parts)
    ordered = g.chance(0.5)
    if ordered:
        ob = _order_by(g, len(tys))
        sd += ob
        dk += ob
    return sd, dk, ordered


def gen_cte(g: Gen) -> tuple[str, str, bool]:
    """WITH: a grouped CTE read by an outer projection."""
    inner = Scope({"t1": dict(T1_TYPES)})
    key = g.choice([E("t1.g", "t1.g", "text"), E("t1.h", "t1.h", "int"), g.text(inner, 1)])
    agg = g.agg(inner)
    w = g.pred(inner, 1)
    if agg.ty in ("int", "float"):
        v = E("c.v", "c.v", agg.ty)
        e = g.choice([v, E("(c.v * 2)", "(c.v * 2)", agg.ty), E("(c.v / 3)", "(c.v / 3)", "float")])
    else:
        e = E("c.v", "c.v", agg.ty)
    ob = _order_by(g, 2)
    sd = (f"WITH c AS (SELECT {key.sd} AS k, {agg.sd} AS v FROM t1 WHERE {w.sd} GROUP BY 1) "
          f"SELECT c.k, {e.sd} FROM c{ob}")
    dk = (f"WITH c AS (SELECT {key.dk} AS k, {agg.dk} AS v FROM t1 WHERE {w.dk} GROUP BY 1) "
          f"SELECT c.k, {e.dk} FROM c{ob}")
    return sd, dk, True


SHAPES = [(gen_projection, 30), (gen_group_by, 30), (gen_global_agg, 12), (gen_union, 14), (gen_cte, 8)]


def generate_cases(seed: int = SEED, n: int = N_QUERIES) -> list[Case]:
    g = Gen(random.Random(seed))
    fns = [f for f, _ in SHAPES]
    weights = [w for _, w in SHAPES]
    cases = []
    for i in range(n):
        fn = g.r.choices(fns, weights)[0]
        sd, dk, ordered = fn(g)
        assert ";" not in sd
        cases.append(Case(i, sd, dk, ordered))
    return cases


# Hand-written cases, each the smallest query found for one mismatch the
# random draw turned up (the DuckDB side is the SQL-standard answer).
PINNED_SQL: list[tuple[str, str, str]] = [
    # A SELECT list of constants only must give one row per input row.
    ("const_select_rows", "SELECT 'k' AS c0 FROM t1 AS p", "SELECT 'k' AS c0 FROM t1 AS p"),
    ("const_select_filtered_empty", "SELECT 10 AS c0 FROM t1 AS p WHERE p.x > 1000",
     "SELECT 10 AS c0 FROM t1 AS p WHERE p.x > 1000"),
    # GROUP BY a constant over no rows gives no group.
    ("group_by_const_empty", "SELECT 'k' AS k, COUNT(*) AS n FROM t1 AS p WHERE p.id < 0 GROUP BY 1",
     "SELECT 'k' AS k, COUNT(*) AS n FROM t1 AS p WHERE p.id < 0 GROUP BY 1"),
    # The sample covariance of a single pair is NULL (n - 1 = 0).
    ("covar_samp_one_pair", "SELECT p.id AS k, COVAR_SAMP(p.x, p.a) AS v FROM t1 AS p GROUP BY 1 ORDER BY 1",
     "SELECT p.id AS k, COVAR_SAMP(p.x, p.a) AS v FROM t1 AS p GROUP BY 1 ORDER BY 1"),
    # A repeated constant call next to a filter (polars' CSE: a panic, "internal error").
    ("repeated_const_call_with_where", "SELECT p.name AS c0, abs(-3) + abs(-3) AS c1 FROM t1 AS p WHERE p.id > 3",
     "SELECT p.name AS c0, abs(-3) + abs(-3) AS c1 FROM t1 AS p WHERE p.id > 3"),
    # CORR without variance is NULL, so `> 0` is not true (the dialect keeps NaN).
    ("having_corr_without_variance",
     "SELECT p.id AS k, COUNT(*) AS n FROM t1 AS p GROUP BY 1 HAVING CORR(p.x, p.a) > 0",
     "SELECT p.id AS k, COUNT(*) AS n FROM t1 AS p GROUP BY 1 HAVING NULLIF(CORR(p.x, p.a), 'NaN'::DOUBLE) > 0"),
]

CASES = generate_cases()
PINNED = [Case(len(CASES) + i, sd, dk, "ORDER BY" in sd) for i, (_, sd, dk) in enumerate(PINNED_SQL)]

# The numeric sweep: (name, Safe SQL, DuckDB) expressions of the edge table
# `e` (columns v DOUBLE, i BIGINT, s TEXT; see EDGE_DOUBLES and the others).
# The DuckDB side is written to mean what the dialect means (module
# docstring): casts never fail (TRY_CAST), a double cast to an integer
# rounds half away from zero (DuckDB's round, not its cast), round(x, n) is
# sd_round. Values must be identical, to the last bit: these are single
# operations, which both engines round once.
SWEEP: list[tuple[str, str, str]] = [
    ("round", "round(e.v)", "round(e.v)"),
    ("round_1", "round(e.v, 1)", "sd_round(e.v, 1)"),
    ("round_2", "round(e.v, 2)", "sd_round(e.v, 2)"),
    ("round_2_of_text", "round(CAST(e.s AS DOUBLE), 2)", "sd_round(TRY_CAST(e.s AS DOUBLE), 2)"),
    ("round_of_integer", "round(e.i)", "round(CAST(e.i AS DOUBLE))"),
    ("floor", "floor(e.v)", "floor(e.v)"),
    ("ceil", "ceil(e.v)", "ceil(e.v)"),
    # An integer's floor and ceiling are itself, exactly (DuckDB's are doubles: 2^53 + 1 would lose its last bit).
    ("floor_of_integer", "floor(e.i)", "e.i"),
    ("ceil_of_integer", "ceil(e.i)", "e.i"),
    ("divide_double", "e.v / 3", "e.v / 3"),
    ("divide_integer", "e.i / 2", "e.i / 2"),
    ("divide_by_zero", "e.i / 0", "e.i / 0"),
    ("remainder", "e.i % 3", "e.i % 3"),
    ("remainder_negative_divisor", "e.i % -7", "e.i % -7"),
    ("cast_double_to_integer", "CAST(e.v AS INTEGER)", "TRY_CAST(round(e.v) AS BIGINT)"),
    ("cast_integer_to_double", "CAST(e.i AS DOUBLE)", "CAST(e.i AS DOUBLE)"),
    ("cast_text_to_integer", "CAST(e.s AS INTEGER)", "TRY_CAST(e.s AS BIGINT)"),
    ("cast_text_to_double", "CAST(e.s AS DOUBLE)", "TRY_CAST(e.s AS DOUBLE)"),
    ("cast_padded_text_to_integer", "CAST(' ' || e.s || ' ' AS INTEGER)", "TRY_CAST(' ' || e.s || ' ' AS BIGINT)"),
]


def sweep_sql(expr: str) -> str:
    return f"SELECT e.k, {expr} AS r FROM edges AS e ORDER BY 1"


def wb_sql(low: str, high: str, n: int) -> str:
    return (f"SELECT w.k, WIDTH_BUCKET(w.x, {low}, {high}, {n}) AS b, WIDTH_BUCKET(w.xi, {low}, {high}, {n}) AS bi "
            "FROM wb AS w ORDER BY 1")


# Infinities (not in the CSV) and the issue's example, as literals.
WB_LITERAL_SQL = ("SELECT WIDTH_BUCKET(1.0 / 0, 0, 110, 22) AS a, WIDTH_BUCKET(-1.0 / 0, 0, 110, 22) AS b, "
                  "WIDTH_BUCKET(75, 0, 110, 22) AS c, WIDTH_BUCKET(75.0, 0, 110, 22) AS d, WIDTH_BUCKET(-75, -110, 0, 22) AS e")


# --------------------------------------------------------------------------
# running both engines


def run_safe_data(config: Path, statements: list[str]) -> list[dict[str, Any]]:
    """One outcome per statement: {"rows": [...]} or {"error": text}.

    Statements run in batches, one invocation each; an invocation stops at the
    first statement that fails (exit code 1, the error on stderr), so the batch
    goes on after it in a new invocation.
    """
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(statements):
        batch = statements[i : i + BATCH]
        done = subprocess.run(
            [str(binary()), "query", "--config", str(config), "--format", "json", ";\n".join(batch)],
            capture_output=True,
            text=True,
            timeout=QUERY_TIMEOUT_S,
            check=False,
        )
        docs = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        out.extend({"rows": d["rows"]} for d in docs)
        i += len(docs)
        if done.returncode != 0:
            if len(docs) >= len(batch):
                raise AssertionError(f"safe-data failed after its last statement: {done.stderr}")
            err = done.stderr.strip().splitlines()
            out.append({"error": err[0] if err else f"exit code {done.returncode}"})
            i += 1
        elif len(docs) != len(batch):
            raise AssertionError(f"expected {len(batch)} JSON documents, got {len(docs)}: {done.stderr}")
    return out


def duckdb_connection(fx: Fixture) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET threads = 1")
    # The dialect's round(x, n): the printed decimal, half away from zero (module docstring).
    con.execute(
        "CREATE MACRO sd_round(x, n) AS CASE WHEN n = 0 OR abs(x) >= 1e17 THEN round(x, n) "
        "ELSE CAST(round(CAST(CAST(x AS VARCHAR) AS DECIMAL(38, 20)), n) AS DOUBLE) END"
    )
    for name, path, cols in (("t1", fx.t1, T1_COLUMNS), ("t2", fx.t2, T2_COLUMNS), ("edges", fx.edges, EDGES_COLUMNS)):
        spec = ", ".join(f"'{c}': '{t}'" for c, t in cols.items())
        con.execute(
            f"CREATE TABLE {name} AS SELECT * FROM read_csv('{path}', header = true, "
            f"auto_detect = false, columns = {{{spec}}})"
        )
    return con


def run_duckdb(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, Any]:
    try:
        return {"rows": [list(r) for r in con.execute(sql).fetchall()]}
    except duckdb.Error as e:
        return {"error": str(e).splitlines()[0]}


# --------------------------------------------------------------------------
# comparing values


def norm(v: Any) -> Any:
    """A comparable form: None, bool, str, or a number (int or float)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, dt.datetime):
        return v.date().isoformat() if v.time() == dt.time() else v.isoformat(sep=" ")
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, float) and not math.isfinite(v):
        # safe-data's JSON writes +-Infinity and NaN as null (JSON has no such
        # numbers; NaN is shown as NULL in every format).
        return None
    return v


def values_equal(a: Any, b: Any) -> bool:
    a, b = norm(a), norm(b)
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    return a == b


def values_identical(a: Any, b: Any) -> bool:
    """Equal without tolerance (0.0 and -0.0 are equal; NULL equals NULL)."""
    a, b = norm(a), norm(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def sort_key(row: list[Any]) -> tuple:
    def k(v: Any) -> tuple:
        v = norm(v)
        if v is None:
            return (0, "")
        if isinstance(v, bool):
            return (1, int(v))
        if isinstance(v, (int, float)):
            # coarse enough that a last-bit difference cannot reorder rows
            return (2, float(f"{float(v):.6g}"))
        return (3, str(v))

    return tuple(k(v) for v in row)


def rows_equal(a: list[list[Any]], b: list[list[Any]], ordered: bool) -> bool:
    if len(a) != len(b):
        return False
    if not ordered:
        a, b = sorted(a, key=sort_key), sorted(b, key=sort_key)
    for ra, rb in zip(a, b):
        if len(ra) != len(rb) or not all(values_equal(x, y) for x, y in zip(ra, rb)):
            return False
    return True


# --------------------------------------------------------------------------
# the tests


@pytest.fixture(scope="module")
def outcomes(fixture: Fixture) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    cases = CASES + PINNED
    sd = run_safe_data(fixture.config, [c.sd for c in cases])
    con = duckdb_connection(fixture)
    try:
        dk = [run_duckdb(con, c.dk) for c in cases]
    finally:
        con.close()
    return list(zip(sd, dk))


def test_fixture_types_match(fixture: Fixture) -> None:
    """safe-data infers the CSV types DuckDB is told, so both read the same values."""
    expected = {"BIGINT": "BIGINT", "VARCHAR": "TEXT", "DOUBLE": "DOUBLE", "DATE": "DATE"}
    out = run_safe_data(fixture.config, ["DESCRIBE t1", "DESCRIBE t2"])
    for doc, cols in zip(out, (T1_COLUMNS, T2_COLUMNS)):
        assert "rows" in doc, doc
        got = {r[0]: r[1] for r in doc["rows"]}
        assert got == {c: expected[t] for c, t in cols.items()}


def test_the_grammar_is_varied() -> None:
    """The draw covers every construct the module docstring promises."""
    text = "\n".join(c.sd for c in CASES)
    for construct in ["GROUP BY", "HAVING", "ORDER BY", "LIMIT", "DISTINCT", " JOIN ", "LEFT JOIN", "UNION ALL",
                      "WITH ", "CASE WHEN", "COALESCE", "NULLIF", " IN (", "BETWEEN", " LIKE ", "ILIKE",
                      "IS NULL", "IS NOT NULL", " AND ", " OR ", "NOT ", "COUNT(*)", "COUNT(DISTINCT", "SUM(",
                      "AVG(", "MIN(", "MAX(", "STDDEV(", "VARIANCE(", "MEDIAN(", "QUANTILE_CONT(", "CORR(",
                      " / ", " % ", " * "]:
        assert construct in text, construct
    assert len(CASES) >= 200


@pytest.mark.parametrize(
    "case", CASES + PINNED, ids=[f"q{c.n:03d}" for c in CASES] + [name for name, _, _ in PINNED_SQL]
)
def test_query_matches_duckdb(case: Case, outcomes) -> None:
    sd, dk = outcomes[case.n]
    assert "error" not in dk, f"DuckDB failed (the generator is wrong): {dk['error']}\n{case.dk}"
    assert "error" not in sd, f"safe-data refused or failed: {sd['error']}\nSQL: {case.sd}"
    assert rows_equal(sd["rows"], dk["rows"], case.ordered), (
        f"results differ\nSQL (safe-data): {case.sd}\nSQL (DuckDB):    {case.dk}\n"
        f"safe-data ({len(sd['rows'])} rows): {sd['rows'][:20]}\n"
        f"DuckDB    ({len(dk['rows'])} rows): {[[norm(v) for v in r] for r in dk['rows'][:20]]}"
    )


# --------------------------------------------------------------------------
# the numeric sweep on edge values


@pytest.fixture(scope="module")
def sweep_outcomes(fixture: Fixture) -> dict[str, Any]:
    statements = [sweep_sql(sd) for _, sd, _ in SWEEP] + [wb_sql(*c) for c in WB_CASES] + [WB_LITERAL_SQL]
    sd = run_safe_data(fixture.config, statements)
    con = duckdb_connection(fixture)
    try:
        dk = [run_duckdb(con, sweep_sql(d)) for _, _, d in SWEEP]
    finally:
        con.close()
    return {"sweep": list(zip(sd[: len(SWEEP)], dk)), "wb": sd[len(SWEEP) : -1], "literals": sd[-1]}


def test_the_edge_table_reads_as_written(fixture: Fixture) -> None:
    """safe-data reads the edge values as DuckDB does (the sweep compares functions, not CSV readers)."""
    out = run_safe_data(fixture.config, ["SELECT e.k, e.v, e.i, e.s FROM edges AS e ORDER BY 1"])[0]
    assert "rows" in out, out
    assert rows_equal(out["rows"], _edge_rows(), ordered=True), out["rows"]


@pytest.mark.parametrize("name", [name for name, _, _ in SWEEP])
def test_numeric_function_on_edge_values_matches_duckdb(name: str, sweep_outcomes) -> None:
    i = [n for n, _, _ in SWEEP].index(name)
    (sd, dk), (_, sd_sql, dk_sql) = sweep_outcomes["sweep"][i], SWEEP[i]
    assert "error" not in dk, f"DuckDB failed (the sweep is wrong): {dk['error']}\n{sweep_sql(dk_sql)}"
    assert "error" not in sd, f"safe-data failed: {sd['error']}\n{sweep_sql(sd_sql)}"
    inputs = {r[0]: r[1:] for r in _edge_rows()}
    differ = [
        f"  v={inputs[a[0]][0]!r} i={inputs[a[0]][1]!r} s={inputs[a[0]][2]!r}: safe-data {a[1]!r}, DuckDB {norm(b[1])!r}"
        for a, b in zip(sd["rows"], dk["rows"])
        if not values_identical(a[1], b[1])
    ]
    assert len(sd["rows"]) == len(dk["rows"]) and not differ, f"{sd_sql} differs from DuckDB's {dk_sql}:\n" + "\n".join(differ)


@pytest.mark.parametrize("case", WB_CASES, ids=[f"{lo}_{hi}_{n}" for lo, hi, n in WB_CASES])
def test_width_bucket_is_postgresql_on_every_edge(case, sweep_outcomes) -> None:
    low, high, n = case
    got = sweep_outcomes["wb"][WB_CASES.index(case)]
    assert "error" not in got, f"safe-data failed: {got['error']}\n{wb_sql(*case)}"
    rows = _wb_rows()
    assert len(got["rows"]) == len(rows)
    differ = []
    for (k, x, xi), (gk, b, bi) in zip(rows, got["rows"]):
        assert gk == k
        for value, bucket in ((x, b), (xi, bi)):
            want = pg_width_bucket(value, low, high, n)
            if bucket != want:
                differ.append(f"  WIDTH_BUCKET({value!r}, {low}, {high}, {n}) = {bucket}, PostgreSQL: {want}")
    assert not differ, f"{len(differ)} of {2 * len(rows)} differ:\n" + "\n".join(differ[:30])


def test_width_bucket_of_infinities_and_the_issue_example(sweep_outcomes) -> None:
    got = sweep_outcomes["literals"]
    assert "error" not in got, got
    assert got["rows"] == [[23, 0, 16, 16, 8]]
