"""Regression tests for the red team's findings against the data service
(kernel/src/service/server.rs, pool.rs, sandbox.rs).

F1  history replies that blew up the service's memory;
F2  rewriting /etc/passwd (useradd/userdel) locked everyone out of the
    confined service;
F3  the config replaced by a rename plus killed workers: replacements could
    not start and every data query hung;
F4  a connect/close flood from an account in the socket group but not
    allowed locked others out and flooded the audit log.

All need OS accounts (root): they skip with the reason otherwise. Clients
that speak the service's protocol directly run as the scientists' accounts
(`CLIENT` below: 4-byte big-endian length + JSON, hello first).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

import accounts
import messages
from test_service import (  # noqa: F401  (deployments is a fixture)
    EXPLODING,
    REPLY_TIMEOUT_S,
    Deployment,
    deployment_for,
    deployments,
    mode_users,
    ok,
    run,
    shell_request,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the service attack tests need root (OS accounts for the service and the scientists; CI runs as root)")

# Speaks the service's protocol; run as a scientist's account with
# `python3 -c CLIENT MODE SOCKET ...`. Prints one JSON line.
CLIENT = textwrap.dedent(
    r"""
    import json, socket, struct, sys, time
    mode, path = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]

    def conn(timeout=15, wait=True):
        # wait: a blocking connect (it waits while the listen queue is
        # full); otherwise non-blocking, as the kernel's (tokio) connect.
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(None if wait else timeout)
        s.connect(path)
        s.settimeout(timeout)
        return s

    def send(s, obj):
        body = json.dumps(obj).encode()
        s.sendall(struct.pack(">I", len(body)) + body)

    def recv(s):
        head = b""
        while len(head) < 4:
            chunk = s.recv(4 - len(head))
            if not chunk:
                return None
            head += chunk
        n = struct.unpack(">I", head)[0]
        body = b""
        while len(body) < n:
            chunk = s.recv(min(n - len(body), 1 << 20))
            if not chunk:
                return None
            body += chunk
        return json.loads(body)

    def hello(s):
        send(s, {"type": "hello", "version": 1})
        return recv(s)

    if mode == "fill":
        # N cells of SIZE characters, each with its number first, stored in the history.
        n, size = int(args[0]), int(args[1])
        s = conn(60)
        assert hello(s)["type"] == "welcome"
        ends = []
        for i in range(n):
            head = "-- cell %04d\n" % i
            code = head + "\x01" * (size - len(head))
            send(s, {"type": "execute", "id": i + 1, "code": code, "silent": False, "store_history": True, "execution_count": i + 1})
            while True:
                m = recv(s)
                if m is None or (m["type"] in ("done", "failed") and m.get("id") == i + 1):
                    ends.append(None if m is None else m["type"])
                    break
        print(json.dumps({"ends": ends}))

    elif mode == "history-flood":
        # NCONN connections that never read, each sending 16 history requests per round.
        nconn, rounds, hold = int(args[0]), int(args[1]), float(args[2])
        conns = []
        for _ in range(nconn):
            s = conn()
            assert hello(s)["type"] == "welcome"
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            conns.append(s)
        sent = errors = 0
        rid = 0
        for _ in range(rounds):
            for s in conns:
                for _ in range(16):
                    rid += 1
                    try:
                        s.settimeout(5)
                        send(s, {"type": "history", "id": rid, "query": {"access": "tail", "n": 10000}})
                        sent += 1
                    except OSError:
                        errors += 1
                        break
            time.sleep(1.5)
        time.sleep(hold)
        for s in conns:
            s.close()
        print(json.dumps({"sent": sent, "errors": errors}))

    elif mode == "connect-flood":
        # Connect and close as fast as possible for SECONDS.
        seconds = float(args[0])
        started, n, failed = time.monotonic(), 0, 0
        while time.monotonic() - started < seconds:
            try:
                s = conn(2)
                s.close()
                n += 1
            except OSError:
                failed += 1
        print(json.dumps({"connections": n, "failed": failed}))

    elif mode == "hellos":
        # COUNT connections, one after another, each with a hello: what did the service answer?
        count, pause, wait = int(args[0]), float(args[1]), args[2] == "wait"
        answers = []
        for _ in range(count):
            try:
                s = conn(10, wait)
                m = hello(s)
                answers.append("closed" if m is None else m["type"] if m["type"] != "refused" else "refused: " + m["reason"])
                s.close()
            except OSError as e:
                answers.append(type(e).__name__)
            time.sleep(pause)
        print(json.dumps({"answers": answers}))
    """
)


def client(user: str, mode: str, sock: Path, *args: object) -> list[str]:
    return accounts.as_user(user) + ["python3", "-c", CLIENT, mode, str(sock), *map(str, args)]


def finish(proc: subprocess.Popen, timeout: float = 60) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out)


def status_kib(d: Deployment, field: str) -> int:
    assert d.process is not None
    for line in Path(f"/proc/{d.process.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def service_is_the_process(d: Deployment) -> None:
    """d.rss_kib() reads the Popen's pid: setpriv and env exec, so it is the
    service itself (its workers are separate processes, not counted)."""
    assert d.process is not None
    exe = os.readlink(f"/proc/{d.process.pid}/exe")
    assert Path(exe).name.startswith("safe-data"), exe
    cmdline = Path(f"/proc/{d.process.pid}/cmdline").read_bytes().split(b"\0")
    assert b"serve" in cmdline, cmdline


def timed_ok(kc, code: str, timeout: float = REPLY_TIMEOUT_S) -> float:
    reply, _, took = run(kc, code, timeout)
    assert reply["content"]["status"] == "ok", reply["content"]
    return took


# --------------------------------------------------------------------------
# F1: history replies and the service's memory

CELLS = 34
CELL_CHARS = 250_000
MIB = 1 << 20


def test_f1_history_replies_cannot_blow_up_the_service_memory(deployments):
    d = deployment_for("multi-user", deployments)
    _, alice, bob = mode_users("multi-user")
    service_is_the_process(d)
    done = subprocess.run(client(alice, "fill", d.socket, CELLS, CELL_CHARS), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert None not in json.loads(done.stdout)["ends"], done.stdout

    with d.kernel(bob) as (_, kc_b):
        timed_ok(kc_b, "SHOW TABLES")
        base = d.rss_kib()
        limit = base + 512 * 1024
        peak = [base]
        stop = threading.Event()
        flood = subprocess.Popen(client(alice, "history-flood", d.socket, 3, 3, 2.0), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def sample() -> None:
            while not stop.is_set() and flood.poll() is None:
                try:
                    rss = d.rss_kib()
                except (OSError, AttributeError):
                    return
                peak[0] = max(peak[0], rss)
                if rss > base + 1024 * 1024:
                    flood.kill()  # far over the bound: keep the machine alive
                    return
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        timings = []
        try:
            while flood.poll() is None:
                timings.append(timed_ok(kc_b, "SHOW TABLES", timeout=30))
                time.sleep(0.2)
        finally:
            stop.set()
            sampler.join()
            out, err = flood.communicate(timeout=60)
        hwm = status_kib(d, "VmHWM")
        print(f"F1: service RSS base {base} KiB, peak sampled {peak[0]} KiB, VmHWM {hwm} KiB; flood {out.strip()} {err.strip()[-300:]}")
        print(f"F1: bob's SHOW TABLES during the flood: {len(timings)} runs, max {max(timings, default=0) * 1000:.0f} ms")
        assert peak[0] < limit and hwm < limit, f"the service's RSS went from {base} KiB to {max(peak[0], hwm)} KiB"
        assert d.alive(), d.log()[-3000:]
        assert len(timings) >= 3 and max(timings) < 1.0, timings
        assert flood.returncode == 0, (flood.returncode, err, d.log()[-3000:])
        assert json.loads(out)["sent"] >= 3 * 16, out
        # And after it.
        after = [timed_ok(kc_b, "SHOW TABLES") for _ in range(3)]
        assert max(after) < 1.0, after

    # Alice's own history, through her kernel: the newest entries only, at most 1 MiB of source.
    with d.kernel(alice) as (_, kc):
        for _ in range(10):
            reply = shell_request(kc, lambda: kc.history(hist_access_type="tail", n=10_000))
            if reply["status"] == "ok" or "try again" not in reply.get("evalue", ""):
                break
            time.sleep(0.5)
        assert reply["status"] == "ok", reply
        sources = [h[2] for h in reply["history"]]
        numbers = [int(s[len("-- cell ") : len("-- cell ") + 4]) for s in sources if s.startswith("-- cell ")]
        total = sum(len(s.encode()) for s in sources)
        print(f"F1: alice's history reply: {len(sources)} entries, {total} bytes of source, cells {numbers}")
        assert sources and numbers == list(range(CELLS - len(numbers), CELLS)) and len(numbers) == len(sources), numbers
        assert total <= MIB, total
        # The newest that fit: one more would be over the bound.
        assert total + CELL_CHARS > MIB, total


# --------------------------------------------------------------------------
# F2: /etc/passwd rewritten while the service runs


def test_f2_useradd_and_userdel_leave_the_confined_service_serving(deployments):
    d = deployment_for("multi-user", deployments)
    _, alice, _ = mode_users("multi-user")
    passwd_inode = os.stat("/etc/passwd").st_ino
    temp = "sd-tmp-f2"
    subprocess.run(["userdel", temp], capture_output=True)
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", temp], check=True, capture_output=True)
    subprocess.run(["userdel", temp], check=True, capture_output=True)
    # The test means something only if /etc/passwd was replaced (a new inode).
    assert os.stat("/etc/passwd").st_ino != passwd_inode, "useradd edited /etc/passwd in place"
    done = subprocess.run(client(alice, "hellos", d.socket, 1, 0, "wait"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["answers"] == ["welcome"], (done.stdout, d.log()[-3000:])
    with d.kernel(alice) as (_, kc):
        out, _ = ok(kc, "SHOW TABLES")
        assert "patients" in out[0][1], out
    assert "has no account name" not in d.log(), d.log()[-3000:]


# --------------------------------------------------------------------------
# F3: the config replaced by a rename, then workers killed


def test_f3_config_replaced_by_rename_and_killed_workers_leave_data_queries_working(deployments):
    d = deployment_for("multi-user", deployments, workers=2)
    _, alice, bob = mode_users("multi-user")
    with d.kernel(alice) as (km_a, kc_a), d.kernel(bob) as (_, kc_b):
        timed_ok(kc_b, "SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex")
        # The owner saves the config the way editors do: a new file renamed over the old one.
        before = os.stat(d.config)
        fresh = d.config.with_name(d.config.name + ".new")
        fresh.write_text(d.config.read_text())
        os.chown(fresh, before.st_uid, before.st_gid)
        fresh.chmod(before.st_mode & 0o7777)
        os.rename(fresh, d.config)
        after = os.stat(d.config)
        assert after.st_ino != before.st_ino and (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)
        # Interrupted data cells: their workers are killed and replaced (from the new file).
        workers_before = set(d.workers())
        for _ in range(3):
            msg_id = kc_a.execute(EXPLODING)
            time.sleep(1.0)
            km_a.interrupt_kernel()
            reply = messages.shell_reply(kc_a, msg_id, time.monotonic() + REPLY_TIMEOUT_S)
            assert reply["content"]["status"] == "error", reply["content"]
        print(f"F3: workers before {sorted(workers_before)}, after the interrupts {sorted(d.workers())}")
        assert workers_before and not workers_before <= set(d.workers()), "no worker was killed: the interrupts came too late"
        reply, iopub, took = run(kc_b, "SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex", timeout=30)
        print(f"F3: bob's data query after the rename and the killed workers: {took:.2f} s")
        assert reply["content"]["status"] == "ok", (reply["content"], d.log()[-3000:])
        assert took < 30
        # Still answering after that (the replacement workers really work).
        timed_ok(kc_a, "SELECT region, COUNT(*) AS n FROM patients GROUP BY region", timeout=30)


# --------------------------------------------------------------------------
# F4: a connect/close flood from an account the owner did not allow

INTRUDER = "sd-intruder"


@pytest.fixture
def intruder():
    """An account in the socket's group but not in allowed_users (removed after the test)."""
    accounts.ensure_accounts()
    subprocess.run(["userdel", INTRUDER], capture_output=True)
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--groups", accounts.SCIENTISTS, INTRUDER], check=True, capture_output=True)
    try:
        yield INTRUDER
    finally:
        subprocess.run(["userdel", INTRUDER], capture_output=True)


def flood_while(d: Deployment, flooders: list[str], action, seconds: float = 8.0):
    """Runs connect/close floods as `flooders` for `seconds` while `action()`
    runs; returns (the floods' counts, action's result, whether the floods
    outlasted it)."""
    floods = [subprocess.Popen(client(user, "connect-flood", d.socket, seconds), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for user in flooders]
    try:
        time.sleep(0.5)
        started = time.monotonic()
        result = action()
        print(f"(the action took {time.monotonic() - started:.2f} s during the flood)")
        outlasted = all(f.poll() is None for f in floods)
    finally:
        counts = [finish(f) for f in floods]
    return counts, result, outlasted


def test_f4_a_connection_flood_from_a_refused_account_neither_locks_others_out_nor_floods_the_audit(intruder, deployments):
    _, alice, bob = mode_users("multi-user")
    d = deployment_for("multi-user", deployments, allowed_users=[alice, bob], allowed_groups=None)
    # bob's connections wait while the listen queue is full (a blocking
    # connect): what is measured is what the service answers.
    counts, done, outlasted = flood_while(
        d, [intruder, intruder, alice, alice], lambda: subprocess.run(client(bob, "hellos", d.socket, 20, 0.15, "wait"), capture_output=True, text=True, timeout=120)
    )
    print(f"F4: floods {counts}; bob {done.stdout.strip()}")
    assert done.returncode == 0, done.stderr
    assert outlasted, "bob's 20 connections ended after the flood: make the flood longer"
    assert sum(r["connections"] for r in counts[:2]) >= 200, counts
    answers = json.loads(done.stdout)["answers"]
    assert answers == ["welcome"] * 20, (answers, d.log()[-3000:])
    time.sleep(0.5)
    lines = [line for line in d.audit() if line["user"] == intruder]
    print(f"F4: {len(lines)} audit lines for {intruder}: {[line['statement'] for line in lines]}")
    assert 1 <= len(lines) < 10, len(lines)
    assert all(line["rule"] == "NotAllowed" and line["verdict"] == "refused" for line in lines), lines
    assert d.alive()


def test_f4_a_kernel_starting_during_a_connection_flood_is_served(intruder, deployments):
    """A flood keeps the socket's listen queue full, so a connect is refused at once (EAGAIN);
    the kernel tries again for a moment instead of reporting the service unreachable."""
    from test_service import ok  # noqa: PLC0415 - the helper of the service tests

    _, alice, bob = mode_users("multi-user")
    d = deployment_for("multi-user", deployments, allowed_users=[alice, bob], allowed_groups=None)

    def bob_works() -> list[str]:
        got = []
        with d.kernel(bob) as (_, kc):
            for _ in range(3):
                outs, _took = ok(kc, "SHOW TABLES")
                got.append("ok" if outs else "empty")
        return got

    counts, done, outlasted = flood_while(d, [intruder, intruder, alice, alice], bob_works)
    print(f"F4 (a kernel during the flood): floods {counts}; bob {done}")
    assert outlasted, "bob's kernel finished after the flood: make the flood longer"
    assert done == ["ok"] * 3, done
