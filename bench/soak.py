"""Soak: thousands of mixed executions through jupyter_client against one Safe Data kernel.

One kernel (the release build by default) on a fresh demo hospital, so the audit log and the history are
the soak's own, runs ``--executions`` (10,000) execute requests drawn from a fixed, seeded mix:

- cheap: SHOW TABLES, DESCRIBE, small aggregates on the public ``regions`` table and on ``patients`` with
  GROUP BY, refused queries (``SELECT * FROM patients``, a hidden column, an identifier), syntax errors,
  and two-statement cells;
- heavy (a few percent): joins of ``labs`` with ``patients`` and GROUP BY over several columns;

with complete, inspect and is_complete requests interleaved. Each execution is timed from the request to
its ``execute_reply`` *and* its ``status: idle`` (what a notebook waits for). Every result is checked
against the first one of the same cell (same status, same released text): a soak must not change answers.

The kernel's RSS (``VmRSS`` of ``/proc/<pid>/status``) is sampled every ``--sample-every`` executions. The
first ``--warmup`` executions (1,000) are the warm-up; the RSS at its end and at the end of the run are
taken after a two-second pause (so no query's transient memory is counted, and both are past the kernel's
idle trim, 0.5 s after its last execution). At the end the kernel is shut
down and ``safe-data audit verify`` checks the audit log's hash chain; the log must hold one line per
statement that reached the policy, and one per cell that did not parse; at least 10,000.

Goals (the soak issue): RSS growth after warm-up under 10 %; no cheap execution over 1 s; the audit chain
verifies with >= 10,000 lines; and (the soak's own) no unexpected or changed answer. Prints every figure,
writes bench/results/soak.json, and exits 1 if a goal is missed. Run it with bench/run_soak.sh.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty
from typing import Any

import zmq
from jupyter_client.manager import KernelManager

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
from common import git_commit  # noqa: E402  (bench/ is the script folder, first on sys.path)
TIMEOUT_S = 120  # bound on any single request
KERNEL_NAME = "soak-safe-data"

# Pause before the settled RSS samples: past Safe Data's 0.5 s idle trim, so both compare alike.
SETTLE_S = 2.0

GOALS = {
    "rss_growth_pct_max": 10.0,
    "cheap_over_1s_max": 0,
    "cheap_limit_s": 1.0,
    "audit_lines_min": 10_000,
}

# (name, cell, weight, kind): kind "cheap" or "heavy". Weights are relative.
MIX: list[tuple[str, str, float, str]] = [
    ("show_tables", "SHOW TABLES;", 6, "cheap"),
    ("describe_patients", "DESCRIBE patients;", 4, "cheap"),
    ("describe_labs", "DESCRIBE labs;", 2, "cheap"),
    ("describe_regions", "DESCRIBE regions;", 2, "cheap"),
    ("regions_count", "SELECT COUNT(*) AS n FROM regions;", 8, "cheap"),
    ("regions_rows", "SELECT region, population, beds FROM regions ORDER BY region;", 6, "cheap"),
    ("regions_sums", "SELECT SUM(population) AS population, SUM(beds) AS beds, AVG(beds) AS mean_beds FROM regions;",
     4, "cheap"),
    ("regions_ratio", "SELECT region, 1000.0 * beds / population AS beds_per_1000 FROM regions "
                      "WHERE population > 1500000 ORDER BY beds_per_1000 DESC;", 3, "cheap"),
    ("patients_by_sex", "SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex ORDER BY sex;", 8, "cheap"),
    ("patients_by_region", "SELECT region, COUNT(*) AS n, AVG(age) AS mean_age FROM patients "
                           "GROUP BY region ORDER BY region;", 8, "cheap"),
    ("mortality_60", "SELECT region, COUNT(*) AS n, AVG(died) AS mortality FROM patients WHERE age >= 60 "
                     "GROUP BY region ORDER BY region;", 6, "cheap"),
    ("comorbidities", "SELECT diabetes, hypertension, COUNT(*) AS n, AVG(length_of_stay) AS los "
                      "FROM patients GROUP BY diabetes, hypertension ORDER BY 1, 2;", 5, "cheap"),
    ("age_bands", "SELECT 10 * floor(age / 10) AS band, COUNT(*) AS n FROM patients GROUP BY 1 ORDER BY 1;",
     4, "cheap"),
    ("icu_total", "SELECT COUNT(*) AS n, AVG(icu) AS icu_rate FROM patients;", 4, "cheap"),
    ("two_statements", "SHOW TABLES; SELECT COUNT(*) AS n FROM regions;", 8, "cheap"),
    # refused: individual rows, a hidden column, an identifier as a value
    ("refused_rows", "SELECT * FROM patients;", 4, "cheap"),
    ("refused_hidden", "SELECT name, COUNT(*) FROM patients GROUP BY name;", 2, "cheap"),
    ("refused_identifier", "SELECT patient_id, COUNT(*) FROM patients GROUP BY patient_id;", 2, "cheap"),
    # syntax errors (stop the cell before it runs; audited as refused)
    ("syntax_select", "SELEC 1;", 2, "cheap"),
    ("syntax_from", "SELECT FROM WHERE;", 1, "cheap"),
    # heavy
    ("labs_join", "SELECT l.test, COUNT(*) AS n, AVG(l.value) AS mean FROM labs l "
                  "JOIN patients p ON l.patient_id = p.patient_id GROUP BY l.test ORDER BY l.test;", 1.2, "heavy"),
    ("labs_join_region", "SELECT p.region, l.test, COUNT(*) AS n, AVG(l.value) AS mean FROM labs l "
                         "JOIN patients p ON l.patient_id = p.patient_id GROUP BY p.region, l.test ORDER BY 1, 2;",
     1.2, "heavy"),
    ("patients_4way", "SELECT sex, region, diabetes, icu, COUNT(*) AS n, AVG(age) AS mean_age FROM patients "
                      "GROUP BY sex, region, diabetes, icu ORDER BY 1, 2, 3, 4;", 1.2, "heavy"),
    ("patients_regions_join", "SELECT p.region, r.beds, COUNT(*) AS n FROM patients p "
                              "JOIN regions r ON p.region = r.region GROUP BY p.region, r.beds ORDER BY 1;",
     1.2, "heavy"),
    # about half a second and a few hundred MB: the self-join of labs on the privacy unit
    ("labs_self_join", "SELECT a.test, COUNT(*) AS n FROM labs a JOIN labs b ON a.patient_id = b.patient_id "
                       "GROUP BY a.test ORDER BY a.test;", 0.3, "heavy"),
]

# Requests other than execute, interleaved: (name, msg_type, content).
SERVICES: list[tuple[str, str, dict[str, Any]]] = [
    ("complete_table", "complete_request", {"code": "SELECT * FROM pat", "cursor_pos": 17}),
    ("complete_column", "complete_request", {"code": "SELECT a FROM patients", "cursor_pos": 8}),
    ("inspect_table", "inspect_request", {"code": "SELECT * FROM patients", "cursor_pos": 18, "detail_level": 0}),
    ("is_complete", "is_complete_request", {"code": "SELECT sex, COUNT(*) FROM patients GROUP BY"}),
]


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def status_kib(pid: int) -> dict[str, int]:
    """The memory lines of /proc/<pid>/status, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            out[name] = int(rest.split()[0])
    return out


def rss_kib(pid: int) -> int:
    return status_kib(pid)["VmRSS"]


def hwm_kib(pid: int) -> int:
    return status_kib(pid).get("VmHWM", 0)


def sample(pid: int, executions: int, t_s: float, settled: bool = False) -> dict[str, Any]:
    """VmRSS, split into anonymous memory (heap) and file-backed pages (the binary's code, mapped data)."""
    st = status_kib(pid)
    s: dict[str, Any] = {"executions": executions, "t_s": round(t_s, 3), "rss_kib": st["VmRSS"],
                         "anon_kib": st.get("RssAnon"), "file_kib": st.get("RssFile")}
    if settled:
        s["settled"] = True
    return s


def count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)




class Client:
    """A started kernel and a blocking client, with bounded waits."""

    def __init__(self, km: KernelManager) -> None:
        self.km = km
        self.kc = km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=TIMEOUT_S)

    def _shell_reply(self, msg_id: str, deadline: float) -> dict[str, Any]:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply to {msg_id} within {TIMEOUT_S} s")
            try:
                msg = self.kc.get_shell_msg(timeout=remaining)
            except Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg

    def execute(self, code: str) -> tuple[float, float, dict[str, Any], list[dict[str, Any]]]:
        """(seconds to the execute_reply, seconds to both the reply and idle, reply content, outputs)."""
        shell, iopub = self.kc.shell_channel, self.kc.iopub_channel
        poller = zmq.Poller()
        poller.register(shell.socket, zmq.POLLIN)
        poller.register(iopub.socket, zmq.POLLIN)
        t0 = time.perf_counter()
        deadline = time.monotonic() + TIMEOUT_S
        msg_id = self.kc.execute(code, store_history=True, stop_on_error=False)
        reply: dict[str, Any] | None = None
        t_reply = 0.0
        outputs: list[dict[str, Any]] = []
        idle = False
        while reply is None or not idle:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply and idle for {code!r} within {TIMEOUT_S} s")
            ready = dict(poller.poll(int(remaining * 1000) + 1))
            if shell.socket in ready:
                m = shell.get_msg(timeout=0)
                if m["parent_header"].get("msg_id") == msg_id:
                    reply, t_reply = m, time.perf_counter() - t0
            if iopub.socket in ready:
                m = iopub.get_msg(timeout=0)
                if m["parent_header"].get("msg_id") != msg_id:
                    continue
                if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                    idle = True
                elif m["msg_type"] in ("execute_result", "display_data", "error"):
                    outputs.append(m)
        return t_reply, time.perf_counter() - t0, reply["content"], outputs

    def service(self, msg_type: str, content: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        msg = self.kc.session.msg(msg_type, content)
        self.kc.shell_channel.send(msg)
        reply = self._shell_reply(msg["header"]["msg_id"], time.monotonic() + TIMEOUT_S)
        return time.perf_counter() - t0, reply["content"]

    def stop(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def fingerprint(content: dict[str, Any], outputs: list[dict[str, Any]]) -> str:
    """Status, error name and released text of one execution (times in notices are not expected)."""
    parts = [content.get("status", ""), content.get("ename", "")]
    for m in outputs:
        data = m["content"].get("data", {})
        parts.append(m["msg_type"] + ":" + str(data.get("text/plain", m["content"].get("ename", ""))))
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def summary(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "p50_ms": statistics.median(xs) * 1e3,
        "p99_ms": percentile(xs, 99) * 1e3,
        "max_ms": max(xs) * 1e3,
        "mean_ms": statistics.fmean(xs) * 1e3,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", type=Path, default=REPO / "target" / "release" / "safe-data")
    ap.add_argument("--executions", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=1_000, help="executions before the reference RSS")
    ap.add_argument("--sample-every", type=int, default=100, help="executions between RSS samples")
    ap.add_argument("--service-every", type=int, default=4,
                    help="a complete/inspect/is_complete request after every N-th execution")
    ap.add_argument("--patients", type=int, default=100_000, help="size of the demo hospital (the demo default)")
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "soak.json")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (demo, state, audit log)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="restrict the mix to these cells (repeatable; for diagnosis): "
                         + ", ".join(m[0] for m in MIX))
    ap.add_argument("--kernel-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment of the kernel (repeatable; e.g. MALLOC_ARENA_MAX=2)")
    a = ap.parse_args()
    if a.warmup >= a.executions:
        ap.error("--warmup must be smaller than --executions")

    binary = a.binary.resolve()
    if not binary.is_file():
        print(f"no binary at {binary}: build it first (cargo build --release --bin safe-data)", file=sys.stderr)
        return 2
    profile = binary.parent.name

    tmp = Path(tempfile.mkdtemp(prefix="sd-soak-"))
    demo = tmp / "demo"
    config = demo / "safe-data.toml"
    subprocess.run([str(binary), "demo", str(demo), "--patients", str(a.patients)], check=True,
                   capture_output=True, timeout=600)
    prefix = tmp / "prefix"
    subprocess.run([str(binary), "install", "--config", str(config), "--name", KERNEL_NAME, "--prefix", str(prefix)],
                   check=True, capture_output=True, timeout=120)
    os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    audit_path = demo / "state" / "audit.jsonl"

    rng = random.Random(a.seed)
    unknown = set(a.only) - {m[0] for m in MIX}
    if unknown:
        ap.error(f"unknown cells: {', '.join(sorted(unknown))}")
    mix = [m for m in MIX if not a.only or m[0] in a.only]
    names = [m[0] for m in mix]
    weights = [m[2] for m in mix]
    by_name = {m[0]: m for m in mix}
    schedule = rng.choices(names, weights=weights, k=a.executions)

    stderr_log = (tmp / "kernel.log").open("wb")
    km = KernelManager(kernel_name=KERNEL_NAME)
    kernel_env = dict(os.environ)
    kernel_env.update(kv.split("=", 1) for kv in a.kernel_env)
    km.start_kernel(stderr=stderr_log, env=kernel_env)
    client = Client(km)
    pid = km.provisioner.process.pid  # type: ignore[union-attr]

    latencies: dict[str, list[float]] = {"cheap": [], "heavy": []}
    reply_latencies: dict[str, list[float]] = {"cheap": [], "heavy": []}
    per_query: dict[str, list[float]] = {n: [] for n in names}
    service_lat: dict[str, list[float]] = {s[0]: [] for s in SERVICES}
    reference: dict[str, str] = {}
    audit_per_cell: dict[str, int] = {}
    statuses: dict[str, dict[str, int]] = {n: {} for n in names}
    changed: list[dict[str, Any]] = []
    slow_cheap: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    service_errors = 0
    expected_audit = 0
    failure = None
    rss_warm = rss_final = None
    warm_sample: dict[str, Any] = {}
    final_sample: dict[str, Any] = {}
    done = 0

    t_start = time.perf_counter()
    samples.append(sample(pid, 0, 0.0))
    print(f"Soak: {a.executions} executions ({a.warmup} warm-up) against {binary} ({profile}), pid {pid}", flush=True)
    try:
        for i, name in enumerate(schedule, start=1):
            _, code, _, kind = by_name[name]
            first = name not in reference
            before = count_lines(audit_path) if first and audit_path.exists() else 0
            t_reply, t_idle, content, outputs = client.execute(code)
            done = i
            if first:
                audit_per_cell[name] = count_lines(audit_path) - before if audit_path.exists() else 0
            expected_audit += audit_per_cell[name]
            latencies[kind].append(t_idle)
            reply_latencies[kind].append(t_reply)
            per_query[name].append(t_idle)
            status = content.get("status", "?") + ("" if content.get("status") == "ok" else f":{content.get('ename')}")
            statuses[name][status] = statuses[name].get(status, 0) + 1
            fp = fingerprint(content, outputs)
            if first:
                reference[name] = fp
            elif fp != reference[name]:
                changed.append({"execution": i, "query": name, "status": status})
            if kind == "cheap" and t_idle > GOALS["cheap_limit_s"]:
                slow_cheap.append({"execution": i, "query": name, "seconds": round(t_idle, 3)})

            if a.service_every and i % a.service_every == 0:
                sname, msg_type, scontent = SERVICES[(i // a.service_every) % len(SERVICES)]
                t, reply = client.service(msg_type, scontent)
                service_lat[sname].append(t)
                if reply.get("status") == "error":
                    service_errors += 1

            if i == a.warmup:
                time.sleep(SETTLE_S)
                samples.append(sample(pid, i, time.perf_counter() - t_start, settled=True))
                warm_sample = samples[-1]
                rss_warm = warm_sample["rss_kib"]
            elif i % a.sample_every == 0:
                samples.append(sample(pid, i, time.perf_counter() - t_start))
            if i % 500 == 0 or i == a.executions:
                cheap = latencies["cheap"]
                print(f"[{i:6d}/{a.executions}] {time.perf_counter() - t_start:7.1f} s  "
                      f"rss {samples[-1]['rss_kib'] / 1024:7.1f} MiB  cheap p50 {statistics.median(cheap) * 1e3:6.1f} ms"
                      f"  p99 {percentile(cheap, 99) * 1e3:7.1f} ms  max {max(cheap) * 1e3:7.1f} ms"
                      f"  over 1 s: {len(slow_cheap)}", flush=True)
        time.sleep(SETTLE_S)
        samples.append(sample(pid, done, time.perf_counter() - t_start, settled=True))
        final_sample = samples[-1]
        rss_final = final_sample["rss_kib"]
        peak = hwm_kib(pid)
    except Exception as e:  # noqa: BLE001 - report what was measured, then fail
        failure = f"{type(e).__name__}: {e}"
        alive = km.is_alive()
        print(f"\nthe soak stopped at execution {done}: {failure} (kernel {'alive' if alive else 'dead'})", flush=True)
        peak = hwm_kib(pid) if alive else 0
    total_s = time.perf_counter() - t_start
    try:
        client.stop()
    except Exception as e:  # noqa: BLE001
        print(f"shutting the kernel down: {e}", file=sys.stderr)
    stderr_log.close()

    verify = subprocess.run([str(binary), "audit", "verify", "--config", str(config)], capture_output=True, text=True,
                            timeout=600)
    audit_lines = count_lines(audit_path) if audit_path.exists() else 0
    audit_ok = verify.returncode == 0

    # ---- figures
    after_warm = [s["rss_kib"] for s in samples if s["executions"] >= a.warmup]
    growth = None if not (rss_warm and rss_final) else 100.0 * (rss_final - rss_warm) / rss_warm
    max_after_warm = max(after_warm) if after_warm else None
    cheap = summary(latencies["cheap"])
    heavy = summary(latencies["heavy"])
    goals_met = {
        "completed": failure is None and done == a.executions,
        "rss_growth": growth is not None and growth < GOALS["rss_growth_pct_max"],
        "cheap_latency": len(slow_cheap) <= GOALS["cheap_over_1s_max"] and bool(latencies["cheap"]),
        "audit_verifies": audit_ok,
        "audit_lines": audit_lines >= GOALS["audit_lines_min"] and audit_lines == expected_audit,
        "answers_unchanged": not changed,
    }

    print(f"\nSoak of safe-data ({profile} build: {binary}), {done} executions in {total_s:.1f} s "
          f"({done / total_s if total_s else 0:.1f}/s), {sum(len(v) for v in service_lat.values())} service requests")
    mib = lambda k: f"{k / 1024:.1f} MiB" if k else "n/a"  # noqa: E731
    print(f"  RSS at start {mib(samples[0]['rss_kib'])}, after warm-up ({a.warmup}) {mib(rss_warm)}, "
          f"at the end {mib(rss_final)}; max after warm-up {mib(max_after_warm)}; peak (VmHWM) {mib(peak)}")
    print(f"  RSS growth after warm-up: {'n/a' if growth is None else f'{growth:+.2f} %'} "
          f"(goal < {GOALS['rss_growth_pct_max']:.0f} %) {'ok' if goals_met['rss_growth'] else 'MISSED'}")
    if warm_sample.get("anon_kib") is not None and final_sample.get("anon_kib") is not None:
        print(f"    of which anonymous (heap) {mib(warm_sample['anon_kib'])} -> {mib(final_sample['anon_kib'])}, "
              f"file-backed (code, mapped files) {mib(warm_sample['file_kib'])} -> {mib(final_sample['file_kib'])}")
    if cheap.get("n"):
        print(f"  cheap executions ({cheap['n']}): p50 {cheap['p50_ms']:.1f} ms, p99 {cheap['p99_ms']:.1f} ms, "
              f"max {cheap['max_ms']:.1f} ms; over 1 s: {len(slow_cheap)} "
              f"(goal 0) {'ok' if goals_met['cheap_latency'] else 'MISSED'}")
    if heavy.get("n"):
        print(f"  heavy executions ({heavy['n']}): p50 {heavy['p50_ms']:.1f} ms, p99 {heavy['p99_ms']:.1f} ms, "
              f"max {heavy['max_ms']:.1f} ms")
    for sname, xs in service_lat.items():
        if xs:
            s = summary(xs)
            print(f"  {sname} ({s['n']}): p50 {s['p50_ms']:.1f} ms, max {s['max_ms']:.1f} ms")
    print(f"  audit verify: {(verify.stdout or verify.stderr).strip()} "
          f"{'ok' if audit_ok else 'MISSED'}")
    print(f"  audit lines: {audit_lines} (expected {expected_audit}, goal >= {GOALS['audit_lines_min']}) "
          f"{'ok' if goals_met['audit_lines'] else 'MISSED'}")
    print(f"  answers changed during the soak: {len(changed)} {'ok' if not changed else 'MISSED'}")
    if failure:
        print(f"  FAILED: {failure}")

    report = {
        "benchmark": "soak",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "safe_data": {"binary": str(binary), "profile": profile, "commit": git_commit()},
        "settings": {"executions": a.executions, "warmup": a.warmup, "sample_every": a.sample_every,
                     "service_every": a.service_every, "patients": a.patients, "seed": a.seed,
                     "only": a.only, "kernel_env": a.kernel_env},
        "completed_executions": done,
        "failure": failure,
        "total_s": total_s,
        "rss_kib": {"start": samples[0]["rss_kib"], "warmup_end": rss_warm, "end": rss_final,
                    "max_after_warmup": max_after_warm, "peak_hwm": peak,
                    "warmup_end_split": {k: warm_sample.get(k) for k in ("anon_kib", "file_kib")},
                    "end_split": {k: final_sample.get(k) for k in ("anon_kib", "file_kib")}},
        "rss_growth_pct": growth,
        "latency": {"cheap": cheap, "heavy": heavy,
                    "cheap_reply_only": summary(reply_latencies["cheap"]),
                    "services": {k: summary(v) for k, v in service_lat.items()}},
        "cheap_over_1s": slow_cheap,
        "per_query": {n: {**summary(v), "statuses": statuses[n], "audit_lines_each": audit_per_cell.get(n)}
                      for n, v in per_query.items()},
        "service_errors": service_errors,
        "answers_changed": changed[:100],
        "audit": {"verify_exit": verify.returncode, "verify_output": (verify.stdout + verify.stderr).strip(),
                  "lines": audit_lines, "expected_lines": expected_audit},
        "goals": GOALS,
        "goals_met": goals_met,
        "rss_samples": samples,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {a.out}")
    if a.keep:
        print(f"kept {tmp}")
    else:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return 0 if all(goals_met.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
