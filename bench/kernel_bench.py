"""Kernel benchmark: Safe Data against ipykernel, side by side, through jupyter_client.

Measures, for each kernel in the same run:

- start-up to ready: from ``KernelManager.start_kernel()`` to the first
  ``kernel_info_reply``, median of several starts (the kernels are started
  alternately so drift hits both alike); also the time of jupyter_client's
  ``wait_for_ready()``, which adds an IOPub check and a drain that waits until
  0.2 s pass without a message (a floor every kernel pays);
- execute round trip: from sending an ``execute_request`` to having both its
  ``execute_reply`` and its ``status: idle`` on iopub (what a notebook waits
  for), p50 and p99 over many executions of a cheap statement (``SELECT 1;``
  for Safe Data, ``1`` for ipykernel), plus a cheap aggregate on the demo
  hospital for Safe Data;
- idle RSS of the kernel process (psutil) 1 s after start-up and the cheap
  executions (the goal's figure; Safe Data trims its memory after 0.5 s idle),
  its USS, the RSS 50 ms after the last execution (before that trim), and for
  Safe Data also the RSS after the aggregates.

Prints a table and the ratios safe-data / ipykernel against the goals
(start-up <= 0.1, round trip p50 <= 0.5, idle RSS <= 0.5) and writes
bench/results/kernel.json. Run it with bench/run_kernel_bench.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty
from typing import Any

import psutil
from jupyter_client.manager import KernelManager

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
from common import git_commit  # noqa: E402  (bench/ is the script folder, first on sys.path)
TIMEOUT_S = 60

GOALS = {"startup": 0.1, "roundtrip_p50": 0.5, "idle_rss": 0.5}


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def run(args: list[str], **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=600, **kw)


# --------------------------------------------------------------------------
# one kernel


def start(name: str, wait_for_ready: bool = False) -> tuple[KernelManager, Any, float]:
    """A started kernel and the seconds until it answered its first kernel_info_request.

    With `wait_for_ready`, the time is jupyter_client's `wait_for_ready()` instead, which
    also waits for IOPub and then drains it until 0.2 s pass without a message: a fixed
    floor of at least 200 ms that every kernel pays.
    """
    t0 = time.perf_counter()
    km = KernelManager(kernel_name=name)
    km.start_kernel(stderr=subprocess.DEVNULL)
    kc = km.client()
    kc.start_channels()
    if wait_for_ready:
        kc.wait_for_ready(timeout=TIMEOUT_S)
        return km, kc, time.perf_counter() - t0
    msg_id = kc.kernel_info()
    sent = time.perf_counter()
    while True:
        now = time.perf_counter()
        if now - t0 > TIMEOUT_S:
            raise TimeoutError(f"{name}: no kernel_info_reply within {TIMEOUT_S} s")
        if not km.is_alive():
            raise RuntimeError(f"{name}: the kernel died during start-up")
        if now - sent > 0.5:  # resend, as jupyter_client does (it waits 1 s)
            msg_id = kc.kernel_info()
            sent = now
        try:
            msg = kc.get_shell_msg(timeout=0.005)
        except Empty:
            continue
        if msg["msg_type"] == "kernel_info_reply":
            elapsed = time.perf_counter() - t0
            del msg_id
            # the kernel is up: let the client settle (IOPub subscription) before use
            kc.wait_for_ready(timeout=TIMEOUT_S)
            return km, kc, elapsed


def stop(km: KernelManager, kc: Any) -> None:
    kc.stop_channels()
    km.shutdown_kernel(now=False)


def execute(kc: Any, code: str) -> float:
    """Seconds from the request to its execute_reply and its idle status."""
    t0 = time.perf_counter()
    msg_id = kc.execute(code)
    got_reply = got_idle = False
    deadline = t0 + TIMEOUT_S
    while not (got_reply and got_idle):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"no answer to {code!r} within {TIMEOUT_S} s")
        if not got_idle:
            try:
                msg = kc.get_iopub_msg(timeout=TIMEOUT_S)
            except Empty:
                continue
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
            ):
                got_idle = True
        else:
            try:
                msg = kc.get_shell_msg(timeout=TIMEOUT_S)
            except Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                if msg["content"]["status"] != "ok":
                    raise RuntimeError(f"{code!r} failed: {msg['content']}")
                got_reply = True
    return time.perf_counter() - t0


def roundtrips(kc: Any, code: str, n: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        execute(kc, code)
    ts = [execute(kc, code) for _ in range(n)]
    return {
        "code": code,
        "n": n,
        "p50_ms": statistics.median(ts) * 1e3,
        "p99_ms": percentile(ts, 99) * 1e3,
        "mean_ms": statistics.fmean(ts) * 1e3,
        "min_ms": min(ts) * 1e3,
    }


def idle_memory_mb(km: KernelManager, settle_s: float = 1.0) -> dict[str, float]:
    """Memory of the idle kernel process and any children it started, in MiB: RSS, its
    file-backed part (`shared`: mapped pages of the executable and libraries) and USS,
    `settle_s` after the last request (Safe Data hands memory back after 0.5 s idle)."""
    time.sleep(settle_s)
    pid = km.provisioner.process.pid  # type: ignore[union-attr]
    p = psutil.Process(pid)
    procs = [p, *p.children(recursive=True)]
    infos = [q.memory_full_info() for q in procs]
    return {
        "rss": sum(i.rss for i in infos) / 2**20,
        "file_backed": sum(i.shared for i in infos) / 2**20,
        "uss": sum(i.uss for i in infos) / 2**20,
    }


# --------------------------------------------------------------------------
# the run


def setup(binary: Path, work: Path, patients: int) -> dict[str, str]:
    """Demo data, and both kernelspecs in a private prefix."""
    demo = work / "demo"
    run([str(binary), "demo", str(demo), "--patients", str(patients)])
    prefix = work / "prefix"
    run([str(binary), "install", "--config", str(demo / "safe-data.toml"), "--name", "bench-safe-data",
         "--prefix", str(prefix)])
    run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", "bench-ipykernel"])
    os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    return {"safe-data": "bench-safe-data", "ipykernel": "bench-ipykernel"}




def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", type=Path, default=REPO / "target" / "release" / "safe-data")
    ap.add_argument("--starts", type=int, default=10, help="start-ups per kernel")
    ap.add_argument("--executions", type=int, default=200, help="timed executions per statement")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--patients", type=int, default=100_000, help="size of the demo hospital (the demo default)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "kernel.json")
    a = ap.parse_args()

    binary = a.binary.resolve()
    if not binary.is_file():
        print(f"no binary at {binary}: build it first (cargo build --release --bin safe-data)", file=sys.stderr)
        return 2
    profile = binary.parent.name  # "release" or "debug" under target/

    with tempfile.TemporaryDirectory(prefix="sd-kernel-bench-") as tmp:
        names = setup(binary, Path(tmp), a.patients)

        # start-up, alternating the kernels
        startup: dict[str, list[float]] = {k: [] for k in names}
        startup_wfr: dict[str, list[float]] = {k: [] for k in names}
        for _ in range(a.starts):
            for k, name in names.items():
                km, kc, t = start(name)
                startup[k].append(t)
                stop(km, kc)
                km, kc, t = start(name, wait_for_ready=True)
                startup_wfr[k].append(t)
                stop(km, kc)

        # round trips and idle RSS, one kernel at a time
        results: dict[str, dict[str, Any]] = {}
        cheap = {"safe-data": "SELECT 1;", "ipykernel": "1"}
        for k, name in names.items():
            km, kc, _ = start(name)
            try:
                mem = {"after_start": idle_memory_mb(km)}
                rt = {"cheap": roundtrips(kc, cheap[k], a.executions, a.warmup)}
                # right after the executions, before Safe Data's idle trim (0.5 s)
                mem["just_after_cheap"] = idle_memory_mb(km, settle_s=0.05)
                mem["after_cheap"] = idle_memory_mb(km)
                if k == "safe-data":
                    rt["aggregate"] = roundtrips(
                        kc, "SELECT sex, COUNT(*) AS n, AVG(age) AS mean_age FROM patients GROUP BY sex;",
                        a.executions, a.warmup,
                    )
                    mem["after_aggregate"] = idle_memory_mb(km)
            finally:
                stop(km, kc)
            results[k] = {
                "startup_ms": {
                    "median": statistics.median(startup[k]) * 1e3,
                    "min": min(startup[k]) * 1e3,
                    "max": max(startup[k]) * 1e3,
                    "all": [round(t * 1e3, 2) for t in startup[k]],
                },
                "wait_for_ready_ms": {
                    "median": statistics.median(startup_wfr[k]) * 1e3,
                    "all": [round(t * 1e3, 2) for t in startup_wfr[k]],
                },
                "roundtrip": rt,
                # the goal's figure: RSS after start-up and the cheap executions
                "idle_rss_mb": mem["after_cheap"]["rss"],
                "idle_memory_mb": mem,
            }

    sd, ip = results["safe-data"], results["ipykernel"]
    ratios = {
        "startup": sd["startup_ms"]["median"] / ip["startup_ms"]["median"],
        "startup_wait_for_ready": sd["wait_for_ready_ms"]["median"] / ip["wait_for_ready_ms"]["median"],
        "roundtrip_p50": sd["roundtrip"]["cheap"]["p50_ms"] / ip["roundtrip"]["cheap"]["p50_ms"],
        "roundtrip_p99": sd["roundtrip"]["cheap"]["p99_ms"] / ip["roundtrip"]["cheap"]["p99_ms"],
        "idle_rss": sd["idle_rss_mb"] / ip["idle_rss_mb"],
        "idle_rss_after_aggregates": sd["idle_memory_mb"]["after_aggregate"]["rss"] / ip["idle_rss_mb"],
        "idle_uss": sd["idle_memory_mb"]["after_cheap"]["uss"] / ip["idle_memory_mb"]["after_cheap"]["uss"],
        "rss_just_after": sd["idle_memory_mb"]["just_after_cheap"]["rss"]
        / ip["idle_memory_mb"]["just_after_cheap"]["rss"],
    }

    # ---- the table
    print(f"\nKernel benchmark ({profile} build of safe-data: {binary})")
    print(f"{'':34}{'safe-data':>12}{'ipykernel':>12}{'ratio':>9}{'goal':>8}")
    rows = [
        ("start-up to ready, median (ms)", sd["startup_ms"]["median"], ip["startup_ms"]["median"], "startup"),
        ("  via wait_for_ready(), median (ms)", sd["wait_for_ready_ms"]["median"],
         ip["wait_for_ready_ms"]["median"], "startup_wait_for_ready"),
        ("round trip p50 (ms)", sd["roundtrip"]["cheap"]["p50_ms"], ip["roundtrip"]["cheap"]["p50_ms"],
         "roundtrip_p50"),
        ("round trip p99 (ms)", sd["roundtrip"]["cheap"]["p99_ms"], ip["roundtrip"]["cheap"]["p99_ms"],
         "roundtrip_p99"),
        ("idle RSS (MiB)", sd["idle_rss_mb"], ip["idle_rss_mb"], "idle_rss"),
        ("  idle USS (MiB)", sd["idle_memory_mb"]["after_cheap"]["uss"], ip["idle_memory_mb"]["after_cheap"]["uss"],
         "idle_uss"),
        ("  RSS 50 ms after the last cell (MiB)", sd["idle_memory_mb"]["just_after_cheap"]["rss"],
         ip["idle_memory_mb"]["just_after_cheap"]["rss"], "rss_just_after"),
        ("  RSS after the aggregates (MiB)", sd["idle_memory_mb"]["after_aggregate"]["rss"], ip["idle_rss_mb"],
         "idle_rss_after_aggregates"),
    ]
    for label, x, y, key in rows:
        goal = GOALS.get(key)
        verdict = "" if goal is None else (f"<={goal:<4}" + (" ok" if ratios[key] <= goal else " MISSED"))
        print(f"{label:34}{x:12.2f}{y:12.2f}{ratios[key]:9.3f}  {verdict}")
    agg = sd["roundtrip"]["aggregate"]
    print(f"safe-data aggregate round trip: p50 {agg['p50_ms']:.2f} ms, p99 {agg['p99_ms']:.2f} ms"
          f" ({a.patients} patients: {agg['code']})")
    print("start-up to ready = start_kernel() until the first kernel_info_reply; wait_for_ready() adds"
          " jupyter_client's IOPub check and >= 200 ms drain.")
    print("idle RSS = 1 s after start-up and the cheap executions (Safe Data returns freed and"
          " code pages to the OS after 0.5 s idle; '50 ms after' is before that);")
    print("  'after the aggregates' also counts the"
          " executable's pages that polars' query code touched (file-backed"
          f" {sd['idle_memory_mb']['after_aggregate']['file_backed']:.1f} MiB of it).")

    report = {
        "benchmark": "kernel",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "safe_data": {"binary": str(binary), "profile": profile, "commit": git_commit()},
        "settings": {"starts": a.starts, "executions": a.executions, "warmup": a.warmup, "patients": a.patients},
        "results": results,
        "ratios_safe_data_over_ipykernel": ratios,
        "goals": GOALS,
        "goals_met": {k: ratios[k] <= g for k, g in GOALS.items()},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
