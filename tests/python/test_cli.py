"""`safe-data query` from a terminal, on the demo hospital: how statements are
given (argument, after `--`, file, standard input), distinct output names, and
what a histogram's table and notes say.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120
COMMENTED = "-- patients per region\nSELECT region, COUNT(*) AS n FROM patients GROUP BY region ORDER BY region"


def binary() -> Path:
    return Path(os.environ.get("SAFE_DATA_BIN", REPO / "target" / "debug" / "safe-data")).resolve()


def query(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(binary()), "query", "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def json_query(config: Path, sql: str) -> dict[str, Any]:
    done = query(config, "--format", "json", sql)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def regions(done: subprocess.CompletedProcess) -> list[str]:
    assert done.returncode == 0, f"exit code {done.returncode}: {done.stderr}"
    return [r[0] for r in json.loads(done.stdout)["rows"]]


REGIONS = ["Central", "East", "North", "South", "West"]


def test_a_statement_may_begin_with_a_comment(demo_config: Path, tmp_path: Path) -> None:
    # As the argument, after `--`, and with options after it.
    assert regions(query(demo_config, "--format", "json", COMMENTED)) == REGIONS
    assert regions(query(demo_config, "--format", "json", "--", COMMENTED)) == REGIONS
    assert regions(query(demo_config, COMMENTED, "--format", "json")) == REGIONS
    # From a file, and from standard input (`-` as the argument or the file).
    script = tmp_path / "regions.sql"
    script.write_text(COMMENTED + ";\n")
    assert regions(query(demo_config, "--format", "json", "--file", str(script))) == REGIONS
    assert regions(query(demo_config, "--format", "json", "-", stdin=COMMENTED)) == REGIONS
    assert regions(query(demo_config, "--format", "json", "--file", "-", stdin=COMMENTED)) == REGIONS


def test_no_statement_is_an_error(demo_config: Path, tmp_path: Path) -> None:
    done = query(demo_config)
    assert done.returncode != 0
    done = query(demo_config, "--file", str(tmp_path / "missing.sql"))
    assert done.returncode != 0 and "cannot read" in done.stderr


def test_repeated_aggregates_get_distinct_names(demo_config: Path) -> None:
    doc = json_query(
        demo_config,
        "SELECT QUANTILE_CONT(length_of_stay, 0.25), QUANTILE_CONT(length_of_stay, 0.75) FROM patients",
    )
    assert [c["name"] for c in doc["columns"]] == ["quantile_cont", "quantile_cont_1"]
    low, high = doc["rows"][0]
    assert low < high


def test_histogram_counts_values_outside_its_range_apart(demo_config: Path) -> None:
    total = json_query(demo_config, "SELECT COUNT(*) FROM patients")["rows"][0][0]
    doc = json_query(demo_config, "CHART HISTOGRAM (bins = 10, min = 20, max = 70) SELECT age FROM patients")
    assert [c["name"] for c in doc["columns"]] == ["bin_start", "bin_end", "count", "bin"]
    rows = {r[3]: r[:3] for r in doc["rows"]}
    # Below 20 and at or above 70 are rows of their own, not in bins 1 and 10.
    assert rows[0][:2] == [None, 20.0] and rows[0][2] > 0
    assert rows[11][:2] == [70.0, None] and rows[11][2] > 0
    assert rows[1][:2] == [20.0, 25.0] and rows[10][:2] == [65.0, 70.0]
    assert sum(r[2] for r in rows.values()) == total
    # Each inside bin counts its ages exactly: [60, 65) is ages 60 to 64.
    ages = json_query(
        demo_config, "SELECT COUNT(*) FROM patients WHERE age >= 60 AND age < 65"
    )["rows"][0][0]
    assert rows[9][2] == ages
    text = query(demo_config, "CHART HISTOGRAM (bins = 10, min = 20, max = 70) SELECT age FROM patients").stdout
    assert f"Note: Counted in the table but outside the bins from 20 to 70: {rows[0][2]} below 20 (bin 0), {rows[11][2]} at or above 70 (bin 11)" in text


def test_histogram_edges_print_as_written(demo_config: Path) -> None:
    sql = "CHART HISTOGRAM (bins = 5, min = 0, max = 3) SELECT diabetes FROM patients"
    doc = json_query(demo_config, sql)
    # diabetes is 0 or 1: bins [0, 0.6) and [0.6, 1.2), with edges as written.
    assert [[r[3], r[0], r[1]] for r in doc["rows"]] == [[1, 0.0, 0.6], [2, 0.6, 1.2]]
    text = query(demo_config, sql).stdout
    assert "0.6000000000000001" not in text and "1.2000000000000002" not in text
    assert "Note: 3 bins withheld (empty or fewer than 10 people), drawn as grey bands: [1.2, 1.8), [1.8, 2.4), [2.4, 3)" in text


def test_histogram_names_its_withheld_bins(demo_config: Path) -> None:
    sql = "CHART HISTOGRAM (bins = 22) SELECT age FROM patients WHERE died = 1"
    doc = json_query(demo_config, sql)
    shown = {r[3] for r in doc["rows"]}
    # Nobody is 105 or older: bin 22, [105, 110), is empty and withheld like a thin one.
    assert 22 not in shown
    missing = [b for b in range(1, 23) if b not in shown]
    text = query(demo_config, sql).stdout
    line = next((l for l in text.splitlines() if "withheld (empty or fewer than 10 people)" in l), None)
    assert line is not None, text
    assert line.startswith(f"Note: {len(missing)} bin{'s' if len(missing) > 1 else ''} withheld")
    assert "[105, 110)" in line


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_histogram_over_a_subquery(demo_config: Path, fmt: str) -> None:
    done = query(
        demo_config,
        "--format",
        fmt,
        "CHART HISTOGRAM (bins = 11) SELECT s.a FROM (SELECT age AS a FROM patients WHERE sex = 'F') AS s",
    )
    assert done.returncode == 0, done.stderr
    assert "bin_start" in done.stdout


# A statement that runs for minutes on the demo: every pair of patients of a region.
HEAVY = "SELECT COUNT(*) AS n FROM patients a JOIN patients b ON a.region = b.region"


def limited_config(demo_config: Path, tmp_path: Path, timeout_s: int) -> Path:
    """The demo's configuration with its own state folder and a short query timeout."""
    text = demo_config.read_text()
    text = text.replace('source = "data/', f'source = "{demo_config.parent}/data/')
    text = text.replace('state_dir = "state"', f'state_dir = "{tmp_path / "state"}"')
    lines = [f"query_timeout_s = {timeout_s}" if line.startswith("query_timeout_s") else line for line in text.splitlines()]
    path = tmp_path / "limited.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_cli_stops_a_statement_at_the_owners_timeout(demo_config: Path, tmp_path: Path) -> None:
    config = limited_config(demo_config, tmp_path, timeout_s=1)
    started = time.monotonic()
    done = query(config, HEAVY)
    elapsed = time.monotonic() - started
    assert done.returncode != 0, done.stdout
    stopped = ("longer than the 1 s limit" in done.stderr) or ("memory the data owner allows" in done.stderr)
    assert stopped, done.stderr
    # Stopped (polars aborted), not waited for: well under the minutes it would run.
    assert elapsed < 20, f"took {elapsed:.1f} s"


def test_ctrl_c_stops_the_running_statement(demo_config: Path, tmp_path: Path) -> None:
    config = limited_config(demo_config, tmp_path, timeout_s=600)
    proc = subprocess.Popen(
        [str(binary()), "query", "--config", str(config), HEAVY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(2.0)
        assert proc.poll() is None, "the heavy statement ended by itself"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "interrupted" in err, err
