"""Hard limits and rich output, through jupyter_client: the owner's timeout and
memory budget stop a query (not the kernel), an interrupt stops it within a
second, long cells show progress, and CHART statements arrive as Vega-Lite.

Kernels with their own limits are started from a copy of the demo config in a
temporary folder (own state dir, own kernelspec), so no other test sees them.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager, start_new_kernel

from conftest import binary
from messages import iopub_until_idle, shell_reply

STARTUP_TIMEOUT_S = 60
REPLY_TIMEOUT_S = 60
VEGALITE = "application/vnd.vegalite.v5+json"

# A self-join on region: ~2·10⁹ joined rows on the demo data. It runs for
# minutes and gigabytes unless something stops it.
EXPLODING = (
    "SELECT a.sex, COUNT(*) AS n FROM patients a "
    "JOIN patients b ON a.region = b.region GROUP BY a.sex"
)


@contextmanager
def limited_kernel(tmp_path: Path, demo_config: Path, **server: int) -> Iterator[tuple[KernelManager, Any]]:
    """A kernel on the demo data with `server` settings overridden, shut down on exit."""
    text = demo_config.read_text()
    data = demo_config.parent / "data"
    text = text.replace('"data/', f'"{data}/')
    text = re.sub(r'state_dir = "[^"]*"', f'state_dir = "{tmp_path / "state"}"', text)
    for key, value in server.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        if n == 0:
            text = text.replace("[server]\n", f"[server]\n{key} = {value}\n", 1)
    config = tmp_path / "safe-data.toml"
    config.write_text(text)
    spec_dir = tmp_path / "kernels" / "sd-limited"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(binary()), "kernel", "--connection-file", "{connection_file}", "--config", str(config)],
                "display_name": "Safe Data (limits)",
                "language": "sql",
                "interrupt_mode": "message",
            }
        )
    )
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    km = KernelManager(kernel_name="sd-limited", kernel_spec_manager=ksm)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=STARTUP_TIMEOUT_S)
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def run(kc, code: str, timeout: float = REPLY_TIMEOUT_S) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """Executes `code`; returns the reply, the iopub messages up to idle, and the seconds taken."""
    started = time.monotonic()
    msg_id = kc.execute(code)
    deadline = started + timeout
    reply = shell_reply(kc, msg_id, deadline)
    took = time.monotonic() - started
    return reply, iopub_until_idle(kc, msg_id, deadline), took


@pytest.fixture
def demo_kernel(kernel_name: str):
    km, kc = start_new_kernel(kernel_name=kernel_name, startup_timeout=STARTUP_TIMEOUT_S)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_timeout_stops_the_query_not_the_kernel(tmp_path, demo_config):
    with limited_kernel(tmp_path, demo_config, query_timeout_s=1) as (_, kc):
        reply, _, took = run(kc, EXPLODING)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "Timeout", reply["content"]
        assert "1 s limit" in reply["content"]["evalue"]
        assert took < 3, f"a 1 s timeout took {took:.1f} s"
        reply, _, took = run(kc, "SELECT COUNT(*) AS n FROM regions")
        assert reply["content"]["status"] == "ok"
        assert took < 5


def test_memory_budget_stops_the_query_not_the_kernel(tmp_path, demo_config):
    with limited_kernel(tmp_path, demo_config, max_memory_mb=300) as (km, kc):
        reply, _, _ = run(kc, EXPLODING)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "MemoryLimit", reply["content"]
        assert "300 MiB" in reply["content"]["evalue"]
        assert km.is_alive()
        # The process stayed near its budget (the gauge is polled, so allow slack).
        status = Path(f"/proc/{km.provisioner.pid}/status").read_text()
        peak_kib = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
        assert peak_kib < 300 * 1024 * 2, f"peak RSS {peak_kib} KiB with a 300 MiB budget"
        reply, _, _ = run(kc, "SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex")
        assert reply["content"]["status"] == "ok"


def test_interrupt_stops_within_a_second_and_progress_is_shown(demo_kernel):
    km, kc = demo_kernel
    msg_id = kc.execute(EXPLODING)
    time.sleep(1.8)
    km.interrupt_kernel()
    sent = time.monotonic()
    while True:
        m = kc.get_shell_msg(timeout=10)
        if m["parent_header"].get("msg_id") == msg_id:
            break
    took = time.monotonic() - sent
    assert m["content"]["ename"] == "Interrupted", m["content"]
    assert took < 1.5, f"the interrupt took {took:.2f} s"
    outputs = iopub_until_idle(kc, msg_id, time.monotonic() + 10)
    # The cell ran past a second: an updating display with the elapsed time.
    shown = [o for o in outputs if o["msg_type"] == "display_data" and o["content"].get("transient", {}).get("display_id")]
    assert len(shown) == 1, [o["msg_type"] for o in outputs]
    display_id = shown[0]["content"]["transient"]["display_id"]
    assert shown[0]["content"]["data"]["text/plain"].startswith("Running for")
    updates = [o for o in outputs if o["msg_type"] == "update_display_data"]
    assert updates and all(u["content"]["transient"]["display_id"] == display_id for u in updates)
    assert updates[-1]["content"]["data"]["text/plain"].startswith("Stopped after")
    # Stopped, not abandoned: the next query is answered at once.
    reply, _, took = run(kc, "SELECT COUNT(*) AS n FROM regions")
    assert reply["content"]["status"] == "ok"
    assert took < 2, f"the next query waited {took:.1f} s"


def test_quick_cells_show_no_progress(demo_kernel):
    _, kc = demo_kernel
    reply, outputs, _ = run(kc, "SELECT COUNT(*) AS n FROM regions")
    assert reply["content"]["status"] == "ok"
    assert not [o for o in outputs if o["msg_type"] in ("display_data", "update_display_data")]


def test_bar_chart_is_vegalite_of_the_released_rows(demo_kernel):
    _, kc = demo_kernel
    reply, outputs, _ = run(
        kc,
        "CHART BAR (x = region, y = n, color = sex) "
        "SELECT region, sex, COUNT(*) AS n FROM patients GROUP BY region, sex ORDER BY region, sex",
    )
    assert reply["content"]["status"] == "ok", reply["content"]
    (result,) = [o for o in outputs if o["msg_type"] == "execute_result"]
    data = result["content"]["data"]
    # No HTML: JupyterLab would prefer it to the chart.
    assert set(data) == {VEGALITE, "text/plain"}
    spec = data[VEGALITE]
    assert spec["$schema"].endswith("/v5.json")
    assert spec["mark"]["type"] == "bar"
    assert spec["encoding"]["x"]["field"] == "region"
    assert spec["encoding"]["y"] == {"field": "n", "type": "quantitative", "title": "n", "axis": {"format": ",d"}}
    assert spec["encoding"]["color"]["field"] == "sex"
    values = spec["data"]["values"]
    assert len(values) == 10 and all(v["n"] >= 10 for v in values)
    # The text fallback is the same table.
    assert "(10 rows)" in data["text/plain"]


def test_histogram_hides_thin_bins_and_says_so(demo_kernel):
    _, kc = demo_kernel
    reply, outputs, _ = run(kc, "CHART HISTOGRAM (bins = 60) SELECT bmi FROM patients")
    assert reply["content"]["status"] == "ok", reply["content"]
    displays = [o for o in outputs if o["msg_type"] == "display_data"]
    (result,) = [o for o in outputs if o["msg_type"] == "execute_result"]
    spec = result["content"]["data"][VEGALITE]
    bars, bands = spec["layer"][0], spec["layer"][1]
    assert bars["encoding"]["x"]["bin"] == {"binned": True}
    assert bars["encoding"]["x2"]["field"] == "bin_end"
    counts = [v["count"] for v in bars["data"]["values"]]
    assert counts and min(counts) >= 10
    # 1-unit bins over [10, 70]: the extreme BMIs are thin: withheld, drawn as
    # grey bands (not as zeros), and noticed apart from the chart.
    drawn = {v["bin"] for v in bars["data"]["values"]}
    withheld = {v["bin"] for v in bands["data"]["values"]}
    assert withheld and not withheld & drawn and withheld | drawn == set(range(1, 61))
    assert bands["mark"]["type"] == "rect"
    assert displays, "expected a notice with the chart"
    notes = displays[0]["content"]["data"]["text/plain"]
    first = min(withheld)  # bin b is [9 + b, 10 + b)
    assert f"{len(withheld)} bins withheld (empty or fewer than 10 people), drawn as grey bands: [{9 + first}, {10 + first})" in notes


def test_chart_errors_name_the_columns(demo_kernel):
    _, kc = demo_kernel
    reply, _, _ = run(kc, "CHART LINE (x = month) SELECT region, COUNT(*) AS n FROM patients GROUP BY region")
    assert reply["content"]["status"] == "error"
    assert "`month` is not a column of the result; it has region, n" in reply["content"]["evalue"]
    reply, _, _ = run(kc, "CHART PIE SELECT 1 AS a")
    assert "unknown chart kind `PIE`" in reply["content"]["evalue"]


def test_cells_that_do_not_parse_are_audited(tmp_path, demo_config):
    with limited_kernel(tmp_path, demo_config) as (_, kc):
        audit = tmp_path / "state" / "audit.jsonl"
        before = len(audit.read_text().splitlines()) if audit.exists() else 0
        reply, _, _ = run(kc, "SELEC name FROM patients")
        assert reply["content"]["ename"] == "SyntaxError"
        lines = audit.read_text().splitlines()
        assert len(lines) == before + 1
        last = json.loads(lines[-1])
        assert (last["verdict"], last["rule"], last["rows_released"]) == ("refused", "SyntaxError", 0)
        assert last["statement"] == "SELEC name FROM patients"
    verified = subprocess.run([str(binary()), "audit", "verify", "--config", str(tmp_path / "safe-data.toml")],
                              capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))


def _result_text(messages: list[dict[str, Any]]) -> str:
    return "".join(
        m["content"]["data"].get("text/plain", "")
        for m in messages
        if m["header"]["msg_type"] in ("execute_result", "display_data")
    )


def test_idle_kernel_returns_memory_and_still_answers(demo_kernel):
    """After 0.5 s idle the kernel hands freed and code pages back to the OS;
    the pages it needs come back on use and the answers do not change."""
    km, kc = demo_kernel
    pid = km.provisioner.pid
    queries = [
        "SELECT sex, COUNT(*) AS n, AVG(age) AS mean_age FROM patients GROUP BY sex ORDER BY sex",
        "CHART BAR SELECT region, COUNT(*) AS n FROM patients GROUP BY region ORDER BY region",
        "SELECT 1 AS one",
    ]
    before = []
    for q in queries:
        reply, messages, _ = run(kc, q)
        assert reply["content"]["status"] == "ok", reply["content"]
        before.append(_result_text(messages))
    busy = _rss_kib(pid)
    time.sleep(2.0)
    idle = _rss_kib(pid)
    assert idle < busy, f"RSS {busy} KiB right after the cells, {idle} KiB after 2 s idle"
    for q, expected in zip(queries, before):
        reply, messages, _ = run(kc, q)
        assert reply["content"]["status"] == "ok", reply["content"]
        assert _result_text(messages) == expected
