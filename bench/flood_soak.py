"""Flood soak: the floods of the "Hostile clients" review, a minute each, against one kernel.

One kernel (the release build by default) on a fresh demo hospital. A well-behaved client runs a cheap cell
(``SELECT COUNT(*) FROM regions``) every ``--interval`` seconds throughout and times each one from the request
to its ``execute_reply`` *and* its ``status: idle``. Meanwhile an attacker process, which holds no key, runs
one flood at a time for ``--seconds`` (60) each:

- ``subscriptions`` (finding 3): SUB connections sending 1 MB SUBSCRIBE messages, 1 KB duplicates and
  distinct topics as fast as the kernel takes them, reconnecting whenever it closes them;
- ``heartbeat`` (finding 4): heartbeat peers that never read, sending 1 MB pings and floods of small ones;
- ``in_flight`` (finding 5): 200 connections at a time, each announcing a 60 MB frame (under the 64 MB cap)
  and pushing its body as fast as the kernel takes it;
- ``idle`` (finding 6): as many idle connections as the attacker can open (up to 1,000) to all five ports.

The kernel's RSS (``VmRSS``) is sampled every 0.25 s, and its open file descriptors every second. Goals:
RSS stays under ``--rss-bound-mib`` (default 400 MiB: the kernel at rest plus the in-flight budget, twice
the 64 MiB message cap, plus the heartbeat backlogs, with room to spare), the cheap cell's p99 stays
within 100 ms during every flood, and no cheap cell fails. Prints the figures, writes
``bench/results/flood_soak.json``, and exits 1 if a goal is missed. Run it with
``bench/run_flood_soak.sh``. This is a benchmark, not a CI test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.connect import write_connection_file

HERE = Path(__file__).resolve().parent
from common import git_commit  # noqa: E402  (bench/ is the script folder, first on sys.path)

CHEAP = "SELECT COUNT(*) FROM regions;"
TIMEOUT_S = 30  # bound on one cheap cell
FLOODS = ("subscriptions", "heartbeat", "in_flight", "idle")
GOALS = {"p99_ms_max": 100.0, "failures_max": 0}
CHANNELS = ("shell", "control", "stdin", "iopub", "hb")

# --------------------------------------------------------------------------
# the attacker (a separate process: it must not slow the good client's Python)


def greeting_and_ready(kind: bytes) -> bytes:
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
    body = b"\x05READY" + b"\x0bSocket-Type" + len(kind).to_bytes(4, "big") + kind
    return greeting + b"\x04" + bytes([len(body)]) + body


def frame(body: bytes, more: bool = False) -> bytes:
    flags = 0x01 if more else 0
    if len(body) > 255:
        return bytes([flags | 0x02]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


class Peer:
    """A raw, non-blocking connection with data waiting to be sent (refilled by `more()`)."""

    def __init__(self, addr: tuple[str, int], kind: bytes, more) -> None:
        self.sock = socket.create_connection(addr, timeout=2)
        self.sock.setblocking(False)
        self.pending = memoryview(greeting_and_ready(kind))
        self.more = more
        self.sent = 0

    def pump(self) -> bool:
        """Sends what the kernel takes now; False when the connection is gone."""
        try:
            while True:
                if not self.pending:
                    data = self.more(self)
                    if data is None:
                        return True
                    self.pending = memoryview(data)
                n = self.sock.send(self.pending)
                self.sent += n
                self.pending = self.pending[n:]
        except BlockingIOError:
            return True
        except OSError:
            return False

    def drain(self) -> bool:
        """Reads and drops what the kernel sent (only for peers that read); False when closed."""
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    return False
        except BlockingIOError:
            return True
        except OSError:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def attacker(flood: str, info: dict[str, Any], seconds: float, stats_path: str) -> None:
    """Runs one flood for `seconds`, then writes what it did to `stats_path`."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    rng = random.Random(flood)
    host = info["ip"]
    port = {ch: info[f"{ch}_port"] for ch in CHANNELS}
    stats = {"connections": 0, "refused_or_closed": 0, "bytes_sent": 0, "max_open": 0}
    peers: list[Peer] = []
    one_mb_sub = frame(b"\x01" + b"s" * (1 << 20))
    dup_subs = frame(b"\x01" + b"d" * 1000) * 1000
    big_ping = frame(b"", more=True) + frame(b"p" * (1 << 20))
    small_pings = (frame(b"", more=True) + frame(b"q" * 1000)) * 1000
    claim = 60 << 20
    chunk = b"x" * (1 << 20)

    def subs(p: Peer) -> bytes:
        r = rng.random()
        if r < 0.4:
            return one_mb_sub
        if r < 0.8:
            return dup_subs
        return b"".join(frame(b"\x01" + f"{rng.random()}".encode() * 20) for _ in range(200))

    def pings(p: Peer) -> bytes:
        return big_ping if rng.random() < 0.3 else small_pings

    def in_flight(p: Peer) -> bytes | None:
        if p.sent == 0 or not hasattr(p, "claimed"):
            p.claimed = True  # type: ignore[attr-defined]
            return b"\x02" + claim.to_bytes(8, "big")
        if p.sent > claim:
            return None
        return chunk

    def idle(p: Peer) -> None:
        return None

    plan = {
        "subscriptions": (["iopub"], b"SUB", subs, 20),
        "heartbeat": (["hb"], b"DEALER", pings, 20),
        "in_flight": (["shell", "control", "stdin"], b"DEALER", in_flight, 200),
        "idle": (list(CHANNELS), b"DEALER", idle, 1000),
    }[flood]
    channels, kind, more, width = plan
    end = time.monotonic() + seconds
    last_open = 0.0
    while time.monotonic() < end:
        # Keep `width` connections open, reopening the ones the kernel closed (at most 200 a second).
        if len(peers) < width and time.monotonic() - last_open > 0.005:
            last_open = time.monotonic()
            channel = channels[stats["connections"] % len(channels)]
            try:
                peers.append(Peer((host, port[channel]), b"SUB" if channel == "iopub" else kind, more))
                stats["connections"] += 1
            except OSError:
                stats["refused_or_closed"] += 1
        alive = []
        for p in peers:
            ok = p.pump() and (flood != "subscriptions" or p.drain())
            if ok:
                alive.append(p)
            else:
                stats["refused_or_closed"] += 1
                stats["bytes_sent"] += p.sent
                p.close()
        peers = alive
        stats["max_open"] = max(stats["max_open"], len(peers))
        if flood == "idle":
            # Idle peers: see whether the kernel closed any.
            for p in list(peers):
                if not p.drain():
                    peers.remove(p)
                    stats["refused_or_closed"] += 1
                    p.close()
            time.sleep(0.01)
        else:
            time.sleep(0.001)
    for p in peers:
        stats["bytes_sent"] += p.sent
        p.close()
    Path(stats_path).write_text(json.dumps(stats))


# --------------------------------------------------------------------------
# the kernel and the good client


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cheap_cell(kc: BlockingKernelClient) -> float:
    """Seconds from the request to its execute_reply and its idle status; raises on a failure."""
    started = time.perf_counter()
    msg_id = kc.execute(CHEAP, store_history=False)
    reply = None
    idle = False
    deadline = time.monotonic() + TIMEOUT_S
    while reply is None or not idle:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the cheap cell got no answer in time")
        if reply is None:
            try:
                msg = kc.get_shell_msg(timeout=min(remaining, 0.05))
                if msg["parent_header"].get("msg_id") == msg_id:
                    reply = msg
            except Exception:  # noqa: BLE001 - Empty
                pass
        if not idle:
            try:
                msg = kc.get_iopub_msg(timeout=min(remaining, 0.05) if reply is not None else 0)
                if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                        and msg["content"]["execution_state"] == "idle"):
                    idle = True
            except Exception:  # noqa: BLE001 - Empty
                pass
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"the cheap cell failed: {reply['content'].get('ename')}")
    return time.perf_counter() - started


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def run_phase(name: str, kc: BlockingKernelClient, pid: int, info: dict[str, Any], seconds: float, interval: float,
              work: Path) -> dict[str, Any]:
    stats_path = work / f"{name}.json"
    proc = None
    if name != "baseline":
        proc = multiprocessing.Process(target=attacker, args=(name, info, seconds, str(stats_path)), daemon=True)
        proc.start()
    latencies: list[float] = []
    failures: list[str] = []
    rss: list[float] = []
    open_fds: list[int] = []
    end = time.monotonic() + seconds
    next_sample = 0.0
    next_fds = 0.0
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_sample:
            rss.append(rss_mib(pid))
            next_sample = now + 0.25
        if now >= next_fds:
            open_fds.append(fds(pid))
            next_fds = now + 1.0
        try:
            latencies.append(cheap_cell(kc))
        except Exception as e:  # noqa: BLE001 - counted and reported
            failures.append(str(e)[:200])
        time.sleep(interval)
    if proc is not None:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
    attack = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    ms = [x * 1000 for x in latencies]
    return {
        "flood": name,
        "seconds": seconds,
        "cells": len(latencies),
        "failures": failures,
        "p50_ms": round(percentile(ms, 50), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(max(ms), 1) if ms else None,
        "rss_max_mib": round(max(rss), 1) if rss else None,
        "rss_end_mib": round(rss[-1], 1) if rss else None,
        "fds_max": max(open_fds) if open_fds else None,
        "attacker": attack,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each flood (60)")
    parser.add_argument("--interval", type=float, default=0.05, help="pause between cheap cells (0.05 s)")
    parser.add_argument("--rss-bound-mib", type=float, default=400.0)
    parser.add_argument("--only", action="append", choices=FLOODS, help="run only these floods")
    parser.add_argument("--out", default=str(HERE / "results" / "flood_soak.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="flood-soak-"))
    subprocess.run([args.binary, "demo", str(work / "demo")], check=True, capture_output=True, timeout=600)
    conn, info = write_connection_file(str(work / "kernel.json"), ip="127.0.0.1", transport="tcp",
                                       signature_scheme="hmac-sha256")
    log = (work / "kernel.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFE_DATA_")}
    kernel = subprocess.Popen([args.binary, "kernel", "--connection-file", conn, "--config",
                               str(work / "demo" / "safe-data.toml")], stdin=subprocess.DEVNULL, stdout=log,
                              stderr=log, env=env)
    kc = BlockingKernelClient()
    kc.load_connection_info(info)
    kc.start_channels(hb=False)
    results: dict[str, Any] = {}
    failed = False
    try:
        kc.wait_for_ready(timeout=120)
        for _ in range(20):  # warm-up
            cheap_cell(kc)
        info = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in info.items()}
        phases = ["baseline"] + [f for f in FLOODS if not args.only or f in args.only]
        rows = []
        for name in phases:
            row = run_phase(name, kc, kernel.pid, info, args.seconds if name != "baseline" else 10.0,
                            args.interval, work)
            rows.append(row)
            print(f"{name:>13}: {row['cells']:5d} cells, p50 {row['p50_ms']:6.1f} ms, p99 {row['p99_ms']:6.1f} ms, "
                  f"max {row['max_ms']} ms, failures {len(row['failures'])}, RSS max {row['rss_max_mib']} MiB, "
                  f"fds max {row['fds_max']}, attacker {row['attacker']}", flush=True)
            if kernel.poll() is not None:
                print(f"the kernel exited with {kernel.returncode}", flush=True)
                failed = True
                break
        peak = hwm_mib(kernel.pid) if kernel.poll() is None else None
        verdicts = {}
        for row in rows:
            if row["flood"] == "baseline":
                continue
            verdicts[row["flood"]] = {
                "p99_ok": row["p99_ms"] <= GOALS["p99_ms_max"],
                "failures_ok": len(row["failures"]) <= GOALS["failures_max"],
                "rss_ok": row["rss_max_mib"] is not None and row["rss_max_mib"] <= args.rss_bound_mib,
            }
        failed = failed or not all(all(v.values()) for v in verdicts.values())
        results = {
            "commit": git_commit(),
            "binary": args.binary,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
            "goals": {**GOALS, "rss_bound_mib": args.rss_bound_mib},
            "phases": rows,
            "peak_rss_mib": peak,
            "verdicts": verdicts,
            "passed": not failed,
        }
        print(f"peak RSS (VmHWM) {peak} MiB; bound {args.rss_bound_mib} MiB; "
              f"{'all goals met' if not failed else 'GOAL MISSED'}", flush=True)
    finally:
        kc.stop_channels()
        if kernel.poll() is None:
            kernel.send_signal(signal.SIGTERM)
            try:
                kernel.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kernel.kill()
        log.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}; kernel log in {work / 'kernel.log'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
