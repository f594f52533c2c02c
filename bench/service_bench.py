"""Service benchmark: the data service (`safe-data serve`) and its kernels against embedded kernels.

Measures, in one run on the demo hospital (plus a generated table ``big`` for the
aggregate), the figures of issue 11 ("Speed and memory"):

- round trip: a cheap cell through a service-mode kernel (``kernel --service``,
  kernel -> Unix socket -> service -> worker) against the same cell in an
  embedded kernel (``kernel --config``), p50/p99, the two kernels alive side by
  side and their executions interleaved so drift hits both alike. Two cheap
  cells: ``SELECT 1;`` (the kernel benchmark's cell) and a small aggregate on
  the demo ``patients`` table (which a worker runs). Goal: service p50 <= 1.2 x
  embedded p50.
- load: N service-mode kernels (default 20) of U accounts (default 10, two
  kernels each; the service under its own account, the socket 0660 to a group
  of them). Cheap cells go round-robin to kernels 1..N-1, one at a time, first
  with nothing else running ("idle") and then while kernel 0 runs a
  ``--big-rows`` (default 10M) row aggregate back to back ("under load");
  p50/p99 of each, and the aggregate's own durations. Only cheap cells that
  ran entirely within one of the aggregate's round trips count as under load.
- memory: the sum over all processes of PSS (``/proc/PID/smaps_rollup``; a
  shared page counts once, split among the processes that map it) and of RSS,
  for the service + its workers + N service-mode kernels against N embedded
  kernels, each kernel after one of each cheap cell, once the figure has
  settled (at least 2 s idle, past the idle trim). The two sets are measured
  one after the other, never alive at once, so neither shares pages with the
  other. Goal: PSS ratio service/embedded <= 0.5.

Without root the accounts cannot be made: everything then runs as the current
account (one "user"), which the output and the JSON say (``--one-account``
does the same as root).

Prints a table and writes bench/results/service.json. ``--check`` exits 1 when
a goal is missed. ``--quick`` is a smoke run (4 kernels of 2 accounts, 1M rows,
few executions). Run it with bench/run_service_bench.sh.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import platform
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
from common import git_commit  # noqa: E402  (bench/ is the script folder, first on sys.path)
from kernel_bench import execute, percentile  # noqa: E402

TIMEOUT_S = 120
GOALS = {"roundtrip_p50_select1": 1.2, "roundtrip_p50_small_aggregate": 1.2, "memory_pss": 0.5}

CHEAP = {
    "select1": "SELECT 1;",
    "small_aggregate": "SELECT region, COUNT(*) AS n FROM patients GROUP BY region;",
}
BIG_AGGREGATE = "SELECT k2, COUNT(*) AS n, AVG(v1) AS mean_v1, STDDEV(v2) AS sd_v2 FROM big GROUP BY k2;"
BIG_TABLE = """
[tables.big]
source = "data/big.parquet"
description = "Generated: the service benchmark's aggregate"
privacy_unit = "pid"

[tables.big.columns]
pid = { role = "identifier" }
k1 = { role = "dimension" }
k2 = { role = "dimension" }
v1 = { role = "measure", bounds = [0, 1] }
v2 = { role = "measure", bounds = [0, 1] }
"""

SERVICE_ACCOUNT = "sd-bench-svc"
GROUP = "sd-bench"
USER_PREFIX = "sd-bench-"


# --------------------------------------------------------------------------
# accounts


def ensure_accounts(users: int) -> tuple[str, list[str]] | None:
    """(service account, scientists) created if missing (idempotent; left in place
    afterwards, like the tests' accounts), or None when not root."""
    if os.geteuid() != 0:
        return None

    def exists(db: Any, name: str) -> bool:
        try:
            db(name)
            return True
        except KeyError:
            return False

    def sh(*args: str) -> None:
        subprocess.run(list(args), check=True, capture_output=True)

    if not exists(grp.getgrnam, GROUP):
        sh("groupadd", GROUP)
    if not exists(pwd.getpwnam, SERVICE_ACCOUNT):
        sh("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_ACCOUNT)
    # The service gives its socket to socket_group: it must be a member (docs/deploy.md).
    sh("usermod", "--append", "--groups", GROUP, SERVICE_ACCOUNT)
    names = [f"{USER_PREFIX}{i}" for i in range(users)]
    for name in names:
        if not exists(pwd.getpwnam, name):
            sh("useradd", "--create-home", "--groups", GROUP, "--shell", "/usr/sbin/nologin", name)
        else:
            sh("usermod", "--append", "--groups", GROUP, name)
    return SERVICE_ACCOUNT, names


def as_user(name: str | None) -> list[str]:
    """The command prefix that runs the rest as `name` with its groups (nothing for None)."""
    if name is None:
        return []
    pw = pwd.getpwnam(name)
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--reset-env", "--"]


# --------------------------------------------------------------------------
# data and deployment


def big_table(cache: Path, rows: int) -> Path:
    """The generated table (pid, k1, k2, v1, v2) of `rows` rows, made once into `cache`."""
    path = cache / f"service-big-{rows}.parquet"
    if path.is_file():
        print(f"data: reusing {path}")
        return path
    import duckdb

    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute(
        f"""COPY (SELECT i AS pid, i % 1000 AS k1, (i // 1000) % 50 AS k2,
                 hash(i) % 1000000 / 1000000.0 AS v1, hash(i * 7 + 1) % 1000000 / 1000000.0 AS v2
                 FROM range({int(rows)}) t(i)) TO '{tmp}' (FORMAT parquet)"""
    )
    con.close()
    tmp.chmod(0o644)  # the service account reads it through a hard link
    tmp.rename(path)
    print(f"data: generated {rows:,} rows in {time.perf_counter() - t0:.1f} s into {path}")
    return path


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


class Setup:
    """A shared temporary folder with the demo data and two configurations of it:
    `embedded` (no [service]) and `service` (with [service]; data and state 0700,
    owned by the service account)."""

    def __init__(self, binary: Path, root: Path, patients: int, big: Path, workers: int,
                 service_account: str | None, group: str | None) -> None:
        self.binary = binary
        self.root = root
        self.root.chmod(0o755)
        self.service_account = service_account
        subprocess.run([str(binary), "demo", str(root / "demo"), "--patients", str(patients)], check=True,
                       capture_output=True, timeout=600)
        demo_text = (root / "demo" / "safe-data.toml").read_text()

        # embedded: the current account, its own state
        self.embedded = root / "embedded"
        shutil.copytree(root / "demo", self.embedded)
        link_or_copy(big, self.embedded / "data" / "big.parquet")
        self.embedded_config = self.embedded / "safe-data.toml"
        self.embedded_config.write_text(demo_text + BIG_TABLE)

        # service: the service account, 0700 folders, a socket folder every kernel may search
        self.deploy = root / "deploy"
        shutil.copytree(root / "demo", self.deploy)
        link_or_copy(big, self.deploy / "data" / "big.parquet")
        self.run_dir = root / "run"
        self.run_dir.mkdir()
        self.run_dir.chmod(0o755)
        self.socket = self.run_dir / "safe-data.sock"
        service = [f'socket = "{self.socket}"', f"workers = {workers}"]
        if group is not None:
            service.append(f'socket_group = "{group}"')
            service.append(f'allowed_groups = ["{group}"]')
        self.service_config = self.deploy / "safe-data.toml"
        self.service_config.write_text(demo_text + "\n[service]\n" + "\n".join(service) + "\n" + BIG_TABLE)
        state = self.deploy / "state"
        state.mkdir(mode=0o700, exist_ok=True)
        for d in (self.deploy / "data", state):
            d.chmod(0o700)
        self.service_config.chmod(0o600)
        if service_account is not None:
            pw = pwd.getpwnam(service_account)
            for path in [self.deploy, self.run_dir, *self.deploy.rglob("*")]:
                if path.name == "big.parquet":
                    continue  # a hard link to the cache: readable (0644) under a 0700 folder
                os.chown(path, pw.pw_uid, pw.pw_gid)

        # kernelspecs and connection files
        self.kernels_dir = root / "kernels"
        self.conn_dir = root / "conn"
        for d in (self.kernels_dir, self.conn_dir):
            d.mkdir()
            d.chmod(0o755)
        self.ksm = KernelSpecManager(kernel_dirs=[str(self.kernels_dir)])
        self.log_path = root / "service.log"
        self.process: subprocess.Popen | None = None
        self._n = 0

    # -- the service

    def start_service(self) -> None:
        cmd = as_user(self.service_account) + ["env", "SAFE_DATA_LOG=info", str(self.binary), "serve", "--config",
                                               str(self.service_config)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if "Safe Data service listening" in self.log():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}; log: {self.log_path}")
            time.sleep(0.05)
        raise RuntimeError(f"the service did not start within {TIMEOUT_S} s; log: {self.log_path}")

    def stop_service(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def service_pids(self) -> list[int]:
        """The service and its worker processes."""
        assert self.process is not None
        p = psutil.Process(self.process.pid)
        return [p.pid, *(c.pid for c in p.children(recursive=True))]

    # -- kernels

    def kernel(self, mode: str, user: str | None = None) -> tuple[KernelManager, Any]:
        """A started and ready kernel: `embedded` (current account) or `service` (as `user`)."""
        name = f"bench-{mode}-{user or 'me'}-{self._n}"
        self._n += 1
        spec = self.kernels_dir / name
        spec.mkdir()
        if mode == "embedded":
            argv = [str(self.binary), "kernel", "-f", "{connection_file}", "--config", str(self.embedded_config)]
        elif user is None:
            argv = [str(self.binary), "kernel", "-f", "{connection_file}", "--service", str(self.socket)]
        else:
            # This (root) process writes the connection file: give it to the kernel's account, then
            # exec (the kernel keeps the pid jupyter_client knows, which the memory figure reads).
            inner = " ".join(["exec", *as_user(user), str(self.binary), "kernel", "-f", '"$1"', "--service",
                              str(self.socket)])
            argv = ["sh", "-c", f'chown {user} "$1" && {inner}', "sh", "{connection_file}"]
        (spec / "kernel.json").write_text(json.dumps(
            {"argv": argv, "display_name": name, "language": "sql", "interrupt_mode": "message"}))
        km = KernelManager(kernel_name=name, kernel_spec_manager=self.ksm,
                           connection_file=str(self.conn_dir / f"{name}.json"))
        km.start_kernel(stderr=subprocess.DEVNULL)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=TIMEOUT_S)
        except Exception:
            stop(km, kc)
            raise
        return km, kc


def stop(km: KernelManager, kc: Any) -> None:
    try:
        kc.stop_channels()
    finally:
        km.shutdown_kernel(now=True)


def stop_all(kernels: list[tuple[KernelManager, Any]]) -> None:
    for km, kc in kernels:
        try:
            stop(km, kc)
        except Exception as e:  # noqa: BLE001 - keep stopping the others
            print(f"warning: a kernel did not stop cleanly: {type(e).__name__}", file=sys.stderr)
    kernels.clear()


def kernel_pid(km: KernelManager) -> int:
    return km.provisioner.process.pid  # type: ignore[union-attr]


# --------------------------------------------------------------------------
# measurements


def memory_kib(pids: list[int], children: bool = True) -> dict[str, Any]:
    """Sums over `pids` and their children, from /proc/PID/smaps_rollup, in MiB: PSS (and its
    anonymous and file-backed parts) and RSS."""
    seen: set[int] = set()
    for pid in pids:
        seen.add(pid)
        if not children:
            continue
        try:
            seen.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    keys = {"Pss": "pss_mib", "Pss_Anon": "pss_anon_mib", "Pss_File": "pss_file_mib", "Rss": "rss_mib"}
    sums = dict.fromkeys(keys.values(), 0)
    for pid in sorted(seen):
        fields: dict[str, int] = {}
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1])
        for field, key in keys.items():
            sums[key] += fields.get(field, 0)
    return {"processes": len(seen), **{k: v / 1024 for k, v in sums.items()}}


def settled_memory(pids: Any, min_wait_s: float = 2.0, max_wait_s: float = 15.0) -> dict[str, Any]:
    """`memory_kib(pids())` once it has settled: at least `min_wait_s` after the last cell (the
    idle trim runs 0.5 s after it, later on a busy machine), then every 0.5 s until two samples'
    PSS differ by under 1 % (or `max_wait_s`)."""
    t0 = time.perf_counter()
    time.sleep(min_wait_s)
    last = memory_kib(pids())
    while time.perf_counter() - t0 < max_wait_s:
        time.sleep(0.5)
        now = memory_kib(pids())
        if abs(now["pss_mib"] - last["pss_mib"]) <= 0.01 * max(last["pss_mib"], 1.0):
            return {**now, "settled_after_s": round(time.perf_counter() - t0, 2)}
        last = now
    return {**last, "settled_after_s": None}


def stats(ts: list[float]) -> dict[str, float]:
    return {
        "n": len(ts),
        "p50_ms": statistics.median(ts) * 1e3,
        "p99_ms": percentile(ts, 99) * 1e3,
        "mean_ms": statistics.fmean(ts) * 1e3,
        "max_ms": max(ts) * 1e3,
    }


def warm(kernels: list[tuple[KernelManager, Any]]) -> None:
    """One of each cheap cell in every kernel."""
    for _, kc in kernels:
        for code in CHEAP.values():
            execute(kc, code)


def interleaved(embedded: Any, service: Any, n: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Round trips of each cheap cell, alternating between the two kernels."""
    out: dict[str, dict[str, Any]] = {}
    for key, code in CHEAP.items():
        for _ in range(warmup):
            execute(embedded, code)
            execute(service, code)
        ts: dict[str, list[float]] = {"embedded": [], "service": []}
        for i in range(n):
            order = (("embedded", embedded), ("service", service)) if i % 2 == 0 else \
                (("service", service), ("embedded", embedded))
            for mode, kc in order:
                ts[mode].append(execute(kc, code))
        out[key] = {"code": code, "embedded": stats(ts["embedded"]), "service": stats(ts["service"])}
    return out


def round_robin(clients: list[Any], n: int, code: str) -> list[tuple[float, float]]:
    """(start, seconds) of `n` executions of `code`, one kernel after the other."""
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        out.append((t0, execute(clients[i % len(clients)], code)))
    return out


def under_load(loader: Any, clients: list[Any], n: int, code: str, aggregate: str) -> dict[str, Any]:
    """Cheap cells round-robin on `clients` while `loader` runs the big aggregate back to back;
    only the cells sent while an aggregate was in flight count."""
    intervals: list[tuple[float, float]] = []
    errors: list[str] = []
    done = threading.Event()
    started = threading.Event()

    def load() -> None:
        try:
            while not done.is_set():
                t0 = time.perf_counter()
                started.set()
                dt = execute(loader, aggregate)
                intervals.append((t0, t0 + dt))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{type(e).__name__}: {e}")
            started.set()

    th = threading.Thread(target=load, daemon=True)
    th.start()
    started.wait(TIMEOUT_S)
    time.sleep(0.2)  # let the first aggregate reach its worker
    samples = round_robin(clients, n, code)
    end_cheap = time.perf_counter()
    done.set()
    th.join(TIMEOUT_S * 5)
    if errors:
        raise RuntimeError(f"the aggregate failed: {errors[0]}")
    if th.is_alive():
        raise RuntimeError("the aggregate did not finish")

    def in_flight(t0: float, dt: float) -> bool:
        """Whether the cell ran entirely within one aggregate's round trip."""
        return any(a <= t0 and t0 + dt <= b for a, b in intervals)

    loaded = [dt for t0, dt in samples if in_flight(t0, dt)]
    agg = [b - a for a, b in intervals]
    return {
        "cheap": stats(loaded) if loaded else None,
        "cheap_sent": len(samples),
        "cheap_during_aggregate": len(loaded),
        "cheap_window_s": end_cheap - samples[0][0],
        "aggregate": {"code": aggregate, **stats(agg)},
    }


# --------------------------------------------------------------------------
# the run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", type=Path, default=REPO / "target" / "release" / "safe-data")
    ap.add_argument("--kernels", type=int, default=20, help="service-mode kernels (and embedded kernels)")
    ap.add_argument("--users", type=int, default=10, help="accounts the service-mode kernels run as (root only)")
    ap.add_argument("--workers", type=int, default=4, help="the service's worker processes ([service].workers)")
    ap.add_argument("--executions", type=int, default=200, help="timed executions per cell and mode")
    ap.add_argument("--load-executions", type=int, default=200, help="cheap cells while the aggregate runs")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--patients", type=int, default=100_000, help="size of the demo hospital (the demo default)")
    ap.add_argument("--big-rows", type=int, default=10_000_000, help="rows of the generated aggregate table")
    ap.add_argument("--aggregate", default=BIG_AGGREGATE, help="the cell kernel 0 repeats on the table big")
    ap.add_argument("--cache", type=Path, default=HERE / "data", help="where the generated table is kept")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 4 kernels of 2 accounts, 1M rows, 20 executions, 2 warm-ups")
    ap.add_argument("--one-account", action="store_true",
                    help="run the service and every kernel as the current account (what happens without root)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "service.json")
    a = ap.parse_args()
    if a.quick:
        a.kernels, a.users, a.big_rows, a.executions, a.load_executions, a.warmup = 4, 2, 1_000_000, 20, 20, 2
    if a.kernels < 2 or a.users < 1:
        ap.error("--kernels must be >= 2 (one runs the aggregate) and --users >= 1")

    binary = a.binary.resolve()
    if not binary.is_file():
        print(f"no binary at {binary}: build it first (cargo build --release --bin safe-data)", file=sys.stderr)
        return 2
    profile = binary.parent.name  # "release" or "debug" under target/

    accounts = None if a.one_account else ensure_accounts(a.users)
    if accounts is None:
        why = "--one-account" if a.one_account else "not root"
        print(f"{why}: the service and every kernel run as the current account (one user)", file=sys.stderr)
        service_account, users, group = None, [None], None
    else:
        service_account, names = accounts
        users, group = list(names), GROUP
    user_of = [users[i % len(users)] for i in range(a.kernels)]

    big = big_table(a.cache, a.big_rows)
    results: dict[str, Any] = {}
    kernels: list[tuple[KernelManager, Any]] = []
    root = Path(tempfile.mkdtemp(prefix="sd-service-bench-"))
    s: Setup | None = None
    try:
        s = Setup(binary, root, a.patients, big, a.workers, service_account, group)

        # 1. memory of N embedded kernels (the service is not running yet)
        print(f"memory: {a.kernels} embedded kernels ...", flush=True)
        for _ in range(a.kernels):
            kernels.append(s.kernel("embedded"))
        warm(kernels)
        mem_embedded = settled_memory(lambda: [kernel_pid(km) for km, _ in kernels])
        stop_all(kernels)

        # 2. memory of the service, its workers and N service-mode kernels
        print(f"memory: the service ({a.workers} workers) and {a.kernels} service-mode kernels"
              f" of {len(set(user_of))} account(s) ...", flush=True)
        s.start_service()
        for u in user_of:
            kernels.append(s.kernel("service", u))
        warm(kernels)
        kernel_accounts = sorted({psutil.Process(kernel_pid(km)).username() for km, _ in kernels})
        mem_service = settled_memory(lambda: s.service_pids() + [kernel_pid(km) for km, _ in kernels])
        mem_service_only = memory_kib(s.service_pids())
        assert s.process is not None
        mem_service_main = memory_kib([s.process.pid], children=False)
        results["memory"] = {
            "kernel_accounts": kernel_accounts,
            "embedded": mem_embedded,
            "service_total": mem_service,
            "service_and_workers": mem_service_only,
            "service_process": mem_service_main,
            "per_embedded_kernel_pss_mib": mem_embedded["pss_mib"] / a.kernels,
            "per_service_kernel_pss_mib": (mem_service["pss_mib"] - mem_service_only["pss_mib"]) / a.kernels,
        }

        # 3. round trip: one embedded kernel next to service-mode kernel 0, interleaved
        print("round trip: embedded vs service, interleaved ...", flush=True)
        emb = s.kernel("embedded")
        try:
            results["roundtrip"] = interleaved(emb[1], kernels[0][1], a.executions, a.warmup)
        finally:
            stop(*emb)

        # 4. cheap cells on kernels 1..N-1: idle, then while kernel 0 runs the big aggregate
        print(f"load: cheap cells on {a.kernels - 1} kernels, idle and while one runs a"
              f" {a.big_rows:,}-row aggregate ...", flush=True)
        clients = [kc for _, kc in kernels[1:]]
        load: dict[str, Any] = {}
        for key, code in CHEAP.items():
            idle = round_robin(clients, a.load_executions, code)
            loaded = under_load(kernels[0][1], clients, a.load_executions, code, a.aggregate)
            load[key] = {"code": code, "idle": stats([dt for _, dt in idle]), **loaded}
        results["load"] = load
        stop_all(kernels)
        results["service_log_errors"] = sum(1 for line in s.log().splitlines() if "ERROR" in line)
    except Exception:
        if s is not None:  # the service's log names no data values
            print("the service's log, last lines:\n" + "\n".join(s.log().splitlines()[-20:]), file=sys.stderr)
        raise
    finally:
        stop_all(kernels)
        if s is not None:
            s.stop_service()
        shutil.rmtree(root, ignore_errors=True)

    rt, mem = results["roundtrip"], results["memory"]
    ratios = {
        "roundtrip_p50_select1": rt["select1"]["service"]["p50_ms"] / rt["select1"]["embedded"]["p50_ms"],
        "roundtrip_p99_select1": rt["select1"]["service"]["p99_ms"] / rt["select1"]["embedded"]["p99_ms"],
        "roundtrip_p50_small_aggregate": rt["small_aggregate"]["service"]["p50_ms"]
        / rt["small_aggregate"]["embedded"]["p50_ms"],
        "roundtrip_p99_small_aggregate": rt["small_aggregate"]["service"]["p99_ms"]
        / rt["small_aggregate"]["embedded"]["p99_ms"],
        "memory_pss": mem["service_total"]["pss_mib"] / mem["embedded"]["pss_mib"],
        "memory_rss": mem["service_total"]["rss_mib"] / mem["embedded"]["rss_mib"],
    }
    goals_met = {k: ratios[k] <= g for k, g in GOALS.items()}

    # ---- the table
    who = (f"kernels of {len(mem['kernel_accounts'])} accounts ({USER_PREFIX}*), service as {service_account}"
           if service_account else "service and kernels as one account (not root, or --one-account)")
    print(f"\nService benchmark ({profile} build of safe-data: {binary})")
    print(f"{a.kernels} kernels, {who}, {a.workers} workers, demo {a.patients:,} patients, big {a.big_rows:,} rows")
    print(f"{'':40}{'service':>11}{'embedded':>11}{'ratio':>8}  goal")
    rows = [
        ("SELECT 1 round trip p50 (ms)", rt["select1"]["service"]["p50_ms"], rt["select1"]["embedded"]["p50_ms"],
         "roundtrip_p50_select1"),
        ("  p99 (ms)", rt["select1"]["service"]["p99_ms"], rt["select1"]["embedded"]["p99_ms"],
         "roundtrip_p99_select1"),
        ("small aggregate round trip p50 (ms)", rt["small_aggregate"]["service"]["p50_ms"],
         rt["small_aggregate"]["embedded"]["p50_ms"], "roundtrip_p50_small_aggregate"),
        ("  p99 (ms)", rt["small_aggregate"]["service"]["p99_ms"], rt["small_aggregate"]["embedded"]["p99_ms"],
         "roundtrip_p99_small_aggregate"),
        (f"memory, sum of PSS, {a.kernels} kernels (MiB)", mem["service_total"]["pss_mib"],
         mem["embedded"]["pss_mib"], "memory_pss"),
        ("  sum of RSS (MiB)", mem["service_total"]["rss_mib"], mem["embedded"]["rss_mib"], "memory_rss"),
    ]
    for label, x, y, key in rows:
        goal = GOALS.get(key)
        verdict = "" if goal is None else (f"<= {goal:<4}" + (" ok" if goals_met[key] else " MISSED"))
        print(f"{label:40}{x:11.2f}{y:11.2f}{ratios[key]:8.3f}  {verdict}")
    for key in ("service_total", "embedded"):
        if mem[key]["settled_after_s"] is None:
            print(f"warning: the {key} memory did not settle within 15 s (the machine is busy?)")
    sw, sp = mem["service_and_workers"], mem["service_process"]
    print(f"  service + {sw['processes'] - 1} workers: PSS {sw['pss_mib']:.1f} MiB (anon {sw['pss_anon_mib']:.1f},"
          f" file {sw['pss_file_mib']:.1f}; the service process {sp['pss_mib']:.1f}), RSS {sw['rss_mib']:.1f} MiB")
    print(f"  per kernel PSS: service-mode {mem['per_service_kernel_pss_mib']:.1f} MiB, embedded"
          f" {mem['per_embedded_kernel_pss_mib']:.1f} MiB (anon: service-mode"
          f" {(mem['service_total']['pss_anon_mib'] - sw['pss_anon_mib']) / a.kernels:.1f},"
          f" embedded {mem['embedded']['pss_anon_mib'] / a.kernels:.1f})")
    print(f"\nCheap cells round-robin on {a.kernels - 1} service-mode kernels (ms):")
    print(f"{'':40}{'idle p50':>10}{'idle p99':>10}{'load p50':>10}{'load p99':>10}{'counted':>9}")
    for key, r in results["load"].items():
        c = r["cheap"] or {"p50_ms": float("nan"), "p99_ms": float("nan")}
        print(f"{r['code'][:38]:40}{r['idle']['p50_ms']:10.2f}{r['idle']['p99_ms']:10.2f}{c['p50_ms']:10.2f}"
              f"{c['p99_ms']:10.2f}{r['cheap_during_aggregate']:>5}/{r['cheap_sent']}")
    for key, r in results["load"].items():
        ag = r["aggregate"]
        print(f"  aggregate during the {key} cells: {ag['n']} runs, p50 {ag['p50_ms']:.0f} ms,"
              f" max {ag['max_ms']:.0f} ms")
    print(f"  load = while kernel 0 ran: {a.aggregate}")
    print("round trip = execute_request until execute_reply and status idle; the embedded and service-mode kernels"
          " alternate.")
    print("memory = after one of each cheap cell per kernel, once settled (>= 2 s idle, past the idle trim);"
          " PSS splits shared pages among the processes that map them.")
    if results["service_log_errors"]:
        print(f"warning: the service logged {results['service_log_errors']} ERROR line(s)")

    report = {
        "benchmark": "service",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "memory_mib": psutil.virtual_memory().total / 2**20},
        "safe_data": {"binary": str(binary), "profile": profile, "commit": git_commit()},
        "settings": {"kernels": a.kernels, "users": len(set(user_of)), "multi_user": service_account is not None,
                     "workers": a.workers, "aggregate": a.aggregate, "executions": a.executions,
                     "load_executions": a.load_executions,
                     "warmup": a.warmup, "patients": a.patients, "big_rows": a.big_rows, "quick": a.quick},
        "results": results,
        "ratios_service_over_embedded": ratios,
        "goals": GOALS,
        "goals_met": goals_met,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {a.out}")
    missed = [k for k, ok in goals_met.items() if not ok]
    if missed:
        print(f"goals missed: {', '.join(missed)}")
        if a.check:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
