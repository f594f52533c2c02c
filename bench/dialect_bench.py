"""Dialect benchmark: `safe-data query` against Python polars and DuckDB on 10M rows.

Data (generated once, seeded, by numpy + polars into bench/data/, git-ignored):

- ``facts``: 10,000,000 rows: ``id`` (0..N-1), low-cardinality keys ``k1``
  (5 texts), ``k2`` (10 integers), ``k3`` (3 texts), a high-cardinality key
  ``hk`` (~1M distinct integers), two float measures ``m1`` (0..100) and ``m2``
  (0..200, correlated with m1), and a date ``d`` (2020..2024); as Parquet and
  as the same rows in CSV (``facts_csv``);
- ``dims``: 10 rows (``k2``, ``label``, ``weight``), to join.

Two configurations of the same files:

- public: every table ``public = true`` (the release applies, nothing is
  suppressed) -- the engine's cost;
- protected: ``facts``/``facts_csv`` with ``privacy_unit = "id"``, bounded
  measures and ``min_group_size = 10`` (``dims`` stays public) -- the policy's
  overhead (people counted per group in the same plan, clamping, flags).

Every query runs through ``safe-data query --format json`` (a new process each
time: process start, config and catalog load, query, release, audit, JSON),
through polars (lazy scan of the same file, POLARS_MAX_THREADS=2) and through
DuckDB (threads=2) in this process; median of 3 timed runs after one warm-up.
Because `safe-data query` pays a process start and catalog load that the
in-process peers do not, the "engine" ratio subtracts the median time of a
trivial ``SELECT 1`` through the same command.

Writes bench/results/dialect.json. Run it with bench/run_dialect_bench.sh.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

# Both peers get 2 threads (the machine has 2 cores); polars reads this at import.
os.environ["POLARS_MAX_THREADS"] = "2"

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
from common import git_commit  # noqa: E402  (bench/ is the script folder, first on sys.path)
SEED = 20240611
GOAL_VS_POLARS = 1.15

# --------------------------------------------------------------------------
# data


def generate(data: Path, n: int, seed: int) -> None:
    """Writes facts.parquet, facts.csv and dims.csv into `data` (skipped if already there)."""
    stamp = data / "STAMP"
    want = f"rows={n} seed={seed} v1\n"
    if stamp.is_file() and stamp.read_text() == want:
        print(f"data: reusing {data} ({n:,} rows)")
        return
    data.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    m1 = np.clip(rng.normal(50, 15, n), 0, 100).round(2)
    m2 = np.clip(0.8 * m1 + rng.normal(20, 10, n), 0, 200).round(2)
    facts = pl.DataFrame(
        {
            "id": np.arange(n, dtype=np.int64),
            "k1": np.array(["r0", "r1", "r2", "r3", "r4"])[rng.integers(0, 5, n)],
            "k2": rng.integers(0, 10, n, dtype=np.int64),
            "k3": np.array(["A", "B", "C"])[rng.integers(0, 3, n)],
            "hk": rng.integers(0, 1_000_000, n, dtype=np.int64),
            "m1": m1,
            "m2": m2,
            "d": (np.datetime64("2020-01-01") + rng.integers(0, 1827, n).astype("timedelta64[D]")),
        }
    ).with_columns(pl.col("d").cast(pl.Date))
    facts.write_parquet(data / "facts.parquet")
    facts.write_csv(data / "facts.csv")
    pl.DataFrame(
        {"k2": list(range(10)), "label": [f"g{i}" for i in range(10)], "weight": [0.5 + i / 4 for i in range(10)]}
    ).write_csv(data / "dims.csv")
    stamp.write_text(want)
    print(f"data: generated {n:,} rows in {time.perf_counter() - t0:.1f} s into {data}")


def write_configs(data: Path) -> dict[str, Path]:
    common = "[server]\nmax_rows = 100000\nquery_timeout_s = 3600\n"
    public = common + 'state_dir = "state-public"\n'
    for name, src in (("facts", "facts.parquet"), ("facts_csv", "facts.csv"), ("dims", "dims.csv")):
        public += f'\n[tables.{name}]\nsource = "{src}"\npublic = true\n'
    protected = common + 'state_dir = "state-protected"\n\n[policy]\nmin_group_size = 10\n'
    for name, src in (("facts", "facts.parquet"), ("facts_csv", "facts.csv")):
        protected += (
            f'\n[tables.{name}]\nsource = "{src}"\nprivacy_unit = "id"\njoin_keys = ["id", "k2"]\n'
            f"\n[tables.{name}.columns]\n"
            'id = { role = "identifier" }\n'
            'k1 = { role = "dimension" }\n'
            'k2 = { role = "dimension" }\n'
            'k3 = { role = "dimension" }\n'
            'hk = { role = "dimension" }\n'
            'd = { role = "dimension" }\n'
            'm1 = { role = "measure", bounds = [0, 100], aggregates = ["median"] }\n'
            'm2 = { role = "measure", bounds = [0, 200] }\n'
        )
    protected += '\n[tables.dims]\nsource = "dims.csv"\npublic = true\n'
    paths = {"public": data / "public.toml", "protected": data / "protected.toml"}
    paths["public"].write_text(public)
    paths["protected"].write_text(protected)
    return paths


# --------------------------------------------------------------------------
# the queries: (name, SQL for safe-data and DuckDB, polars plan)

FilesT = dict[str, Path]


def queries(files: FilesT) -> list[tuple[str, str, Callable[[], pl.LazyFrame]]]:
    facts = lambda: pl.scan_parquet(files["facts"])  # noqa: E731
    facts_csv = lambda: pl.scan_csv(files["facts_csv"], try_parse_dates=True)  # noqa: E731
    dims = lambda: pl.scan_csv(files["dims"])  # noqa: E731
    return [
        (
            "groupby_few_keys",
            "SELECT k1, COUNT(*) AS n, AVG(m1) AS avg_m1 FROM facts GROUP BY k1",
            lambda: facts().group_by("k1").agg(n=pl.len(), avg_m1=pl.col("m1").mean()),
        ),
        (
            "groupby_many_keys",
            "SELECT k1, k2, k3, year(d) AS y, COUNT(*) AS n, AVG(m1) AS a, SUM(m2) AS s "
            "FROM facts GROUP BY 1, 2, 3, 4",
            lambda: facts()
            .group_by("k1", "k2", "k3", pl.col("d").dt.year().alias("y"))
            .agg(n=pl.len(), a=pl.col("m1").mean(), s=pl.col("m2").sum()),
        ),
        (
            "groupby_high_cardinality",
            "SELECT hk, COUNT(*) AS n, AVG(m1) AS a FROM facts GROUP BY hk HAVING COUNT(*) > 25",
            lambda: facts().group_by("hk").agg(n=pl.len(), a=pl.col("m1").mean()).filter(pl.col("n") > 25),
        ),
        (
            "median_stddev",
            "SELECT k1, MEDIAN(m1) AS med, STDDEV(m2) AS sd FROM facts GROUP BY k1",
            lambda: facts().group_by("k1").agg(med=pl.col("m1").median(), sd=pl.col("m2").std()),
        ),
        (
            "corr",
            "SELECT k2, CORR(m1, m2) AS c FROM facts GROUP BY k2",
            lambda: facts().group_by("k2").agg(c=pl.corr("m1", "m2")),
        ),
        (
            "filter_join",
            "SELECT g.label, COUNT(*) AS n, AVG(f.m1) AS a FROM facts f JOIN dims g ON f.k2 = g.k2 "
            "WHERE f.hk < 500000 AND f.k1 IN ('r1', 'r3') AND f.d >= DATE '2022-01-01' GROUP BY g.label",
            lambda: facts()
            .filter((pl.col("hk") < 500000) & pl.col("k1").is_in(["r1", "r3"]) & (pl.col("d") >= dt.date(2022, 1, 1)))
            .join(dims(), on="k2")
            .group_by("label")
            .agg(n=pl.len(), a=pl.col("m1").mean()),
        ),
        (
            "groupby_few_keys_csv",
            "SELECT k1, COUNT(*) AS n, AVG(m1) AS avg_m1 FROM facts_csv GROUP BY k1",
            lambda: facts_csv().group_by("k1").agg(n=pl.len(), avg_m1=pl.col("m1").mean()),
        ),
    ]


# --------------------------------------------------------------------------
# runners: each returns (seconds, result rows)


def run_safe_data(binary: Path, config: Path, sql: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    done = subprocess.run(
        [str(binary), "query", "--config", str(config), "--format", "json", sql],
        capture_output=True, text=True, timeout=3600, check=False,
    )
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"safe-data failed on {sql!r} with {config.name}: {done.stderr.strip()}")
    doc = json.loads(done.stdout.splitlines()[0])
    return elapsed, len(doc["rows"])


def run_polars(plan: Callable[[], pl.LazyFrame]) -> tuple[float, int]:
    t0 = time.perf_counter()
    df = plan().collect()
    return time.perf_counter() - t0, df.height


def run_duckdb(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    rows = con.execute(sql).fetchall()
    return time.perf_counter() - t0, len(rows)


def timed(fn: Callable[[], tuple[float, int]], runs: int) -> dict[str, Any]:
    fn()  # warm-up: file cache, lazily loaded code
    times, nrows = [], set()
    for _ in range(runs):
        t, n = fn()
        times.append(t)
        nrows.add(n)
    return {"median_s": statistics.median(times), "runs_s": [round(t, 4) for t in times], "rows": sorted(nrows)}


# --------------------------------------------------------------------------




def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", type=Path, default=REPO / "target" / "release" / "safe-data")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--only", help="comma-separated query names")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "dialect.json")
    a = ap.parse_args()

    binary = a.binary.resolve()
    if not binary.is_file():
        print(f"no binary at {binary}: build it first (cargo build --release --bin safe-data)", file=sys.stderr)
        return 2
    profile = binary.parent.name
    data = a.data.resolve() / f"rows-{a.rows}"
    generate(data, a.rows, SEED)
    configs = write_configs(data)
    files = {"facts": data / "facts.parquet", "facts_csv": data / "facts.csv", "dims": data / "dims.csv"}

    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute(f"CREATE VIEW facts AS SELECT * FROM read_parquet('{files['facts']}')")
    con.execute(f"CREATE VIEW facts_csv AS SELECT * FROM read_csv('{files['facts_csv']}')")
    con.execute(f"CREATE VIEW dims AS SELECT * FROM read_csv('{files['dims']}')")

    print(f"safe-data: {profile} build ({binary}); polars {pl.__version__}; duckdb {duckdb.__version__}; "
          f"{a.rows:,} rows; median of {a.runs} runs")
    baseline = {
        mode: timed(lambda c=cfg: run_safe_data(binary, c, "SELECT 1"), a.runs) for mode, cfg in configs.items()
    }
    print(f"SELECT 1 through `safe-data query`: public {baseline['public']['median_s'] * 1e3:.0f} ms, "
          f"protected {baseline['protected']['median_s'] * 1e3:.0f} ms")

    chosen = queries(files)
    if a.only:
        keep = set(a.only.split(","))
        chosen = [q for q in chosen if q[0] in keep]

    results: dict[str, Any] = {}
    hdr = (f"{'query':26}{'sd':>8}{'sd-S1':>8}{'sd prot':>9}{'polars':>8}{'duckdb':>8}"
           f"{'sd/pl':>7}{'eng/pl':>7}{'sd/dk':>7}{'eng/dk':>7}{'prot/pub':>9}")
    print("\ntimes in seconds; sd-S1 = safe-data minus its SELECT 1 time; eng/* use sd-S1\n" + hdr)
    for name, sql, plan in chosen:
        r = {
            "sql": sql,
            "safe_data_public": timed(lambda: run_safe_data(binary, configs["public"], sql), a.runs),
            "polars": timed(lambda: run_polars(plan), a.runs),
            "duckdb": timed(lambda: run_duckdb(con, sql), a.runs),
            "safe_data_protected": timed(lambda: run_safe_data(binary, configs["protected"], sql), a.runs),
        }
        sd = r["safe_data_public"]["median_s"]
        eng = max(sd - baseline["public"]["median_s"], 1e-9)
        prot = r["safe_data_protected"]["median_s"]
        pol, duck = r["polars"]["median_s"], r["duckdb"]["median_s"]
        r["ratios"] = {
            "safe_data_over_polars": sd / pol,
            "safe_data_over_duckdb": sd / duck,
            "engine_over_polars": eng / pol,
            "engine_over_duckdb": eng / duck,
            "protected_over_public": prot / sd,
            "protected_engine_over_public_engine": max(prot - baseline["protected"]["median_s"], 1e-9) / eng,
        }
        r["same_row_count"] = r["safe_data_public"]["rows"] == r["polars"]["rows"] == r["duckdb"]["rows"]
        results[name] = r
        x = r["ratios"]
        print(f"{name:26}{sd:8.3f}{eng:8.3f}{prot:9.3f}{pol:8.3f}{duck:8.3f}"
              f"{x['safe_data_over_polars']:7.2f}{x['engine_over_polars']:7.2f}"
              f"{x['safe_data_over_duckdb']:7.2f}{x['engine_over_duckdb']:7.2f}{x['protected_over_public']:9.2f}"
              + ("" if r["same_row_count"] else "   ROW COUNTS DIFFER"))

    def geomean(key: str) -> float:
        xs = [r["ratios"][key] for r in results.values()]
        return float(np.exp(np.mean(np.log(xs)))) if xs else float("nan")

    summary = {k: geomean(k) for k in next(iter(results.values()))["ratios"]} if results else {}
    print("\ngeometric means: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    worst = max((r["ratios"]["engine_over_polars"], n) for n, r in results.items()) if results else (0, "")
    print(f"goal safe-data/polars <= {GOAL_VS_POLARS}: engine ratio geomean {summary.get('engine_over_polars', 0):.2f}"
          f", worst {worst[0]:.2f} ({worst[1]}); whole-command ratio geomean "
          f"{summary.get('safe_data_over_polars', 0):.2f}")

    report = {
        "benchmark": "dialect",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "safe_data": {"binary": str(binary), "profile": profile, "commit": git_commit()},
        "peers": {"polars": pl.__version__, "duckdb": duckdb.__version__, "threads": 2},
        "settings": {"rows": a.rows, "runs": a.runs, "seed": SEED, "warmup_runs": 1},
        "select_1_baseline": baseline,
        "queries": results,
        "geomean_ratios": summary,
        "goal": {"safe_data_over_polars": GOAL_VS_POLARS},
        "notes": [
            "safe-data is timed as a whole `safe-data query` process (start, config and catalog load, "
            "query, release, audit line, JSON); polars and DuckDB in-process.",
            "engine_* ratios subtract the median time of `SELECT 1` through the same command.",
            "protected: privacy_unit = id (every row a person), bounded measures, min_group_size 10.",
        ],
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
