"""The data service and the kernel's service mode (issue 11).

`safe-data serve --config C` alone opens the data, the audit log and the
histories; kernels started with `--service SOCKET` forward every request to
it. Each test builds a deployment in a fresh folder: the demo data (and, for
the interrupt tests, a generated 10-million-row table), a config with a
`[service]` section, and the service process.

Two modes:
- **same user** (always): the service and the kernels run as the current
  account, so developers can run these tests anywhere;
- **multi-user** (root only; CI runs as root): the service runs as
  `sd-service`, kernels as `sd-alice` and `sd-bob` (`setpriv`); the data and
  state folders belong to the service and are closed to everyone else.
Tests that need several accounts skip with the reason when not root.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

import accounts
import messages
from conftest import CONFIG as DEMO_CONFIG
from conftest import binary

STARTUP_TIMEOUT_S = 60
REPLY_TIMEOUT_S = 60
SERVICE_START_TIMEOUT_S = 60

# A self-join on region: ~2·10⁹ joined rows on the demo data; runs for
# minutes unless stopped.
EXPLODING = "SELECT a.sex, COUNT(*) AS n FROM patients a JOIN patients b ON a.region = b.region GROUP BY a.sex"
# Medians and correlations over 50,000 groups of 10 million rows: operators
# that poll polars' abort flag rarely, if at all (the issue's measurement).
SLOW_AGGREGATE = "SELECT k2, k1, MEDIAN(v2) AS m, STDDEV(v1) AS s, CORR(v1, v2) AS c FROM big GROUP BY k2, k1"
CHEAP = "SELECT region, COUNT(*) AS n FROM patients GROUP BY region"

BIG_ROWS = 10_000_000
BIG_TABLE = """
[tables.big]
source = "data/big.parquet"
description = "Generated: ten million rows for the interrupt tests"
privacy_unit = "pid"

[tables.big.columns]
pid = { role = "identifier" }
k1 = { role = "dimension" }
k2 = { role = "dimension" }
v1 = { role = "measure", bounds = [0, 1], aggregates = ["median"] }
v2 = { role = "measure", bounds = [0, 1], aggregates = ["median"] }
"""

ME = pwd.getpwuid(os.getuid()).pw_name


def as_user(user: str | None) -> list[str]:
    """The command prefix that runs as `user` (nothing for the current account)."""
    return [] if user is None else accounts.as_user(user)


def shared_dir(prefix: str) -> Path:
    """A fresh folder every account may traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------
# a deployment


class Deployment:
    """The demo data, a config with `[service]`, and the service process.

    `owner`: the account the service runs as (None: the current one). Data and
    state folders are 0700 and belong to it."""

    def __init__(
        self,
        owner: str | None = None,
        *,
        workers: int = 2,
        socket_group: str | None = None,
        allowed_users: list[str] | None = None,
        allowed_groups: list[str] | None = None,
        big: bool = False,
        server: dict[str, Any] | None = None,
    ) -> None:
        self.owner = owner
        self.root = shared_dir("sd-service-test-")
        self.deploy = self.root / "deploy"
        self.run_dir = self.root / "run"
        self.conn_dir = self.root / "conn"
        self.kernels_dir = self.root / "kernels"
        for d in (self.deploy, self.run_dir, self.conn_dir, self.kernels_dir):
            d.mkdir()
            d.chmod(0o755)
        self.socket = self.run_dir / "safe-data.sock"
        self.data = self.deploy / "data"
        shutil.copytree(DEMO_CONFIG.parent / "data", self.data)
        if big:
            make_big_table(self.data / "big.parquet")
        text = DEMO_CONFIG.read_text()
        for key, value in (server or {}).items():
            text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
            assert n == 1, key
        service = [f'socket = "{self.socket}"', f"workers = {workers}"]
        if socket_group:
            service.append(f'socket_group = "{socket_group}"')
        if allowed_users is not None:
            service.append(f"allowed_users = {json.dumps(allowed_users)}")
        if allowed_groups is not None:
            service.append(f"allowed_groups = {json.dumps(allowed_groups)}")
        text += "\n[service]\n" + "\n".join(service) + "\n" + (BIG_TABLE if big else "")
        self.config = self.deploy / "safe-data.toml"
        self.config.write_text(text)
        self.state = self.deploy / "state"
        self.state.mkdir(mode=0o700)
        for d in (self.data, self.state):
            d.chmod(0o700)
        self.config.chmod(0o600)
        if owner is not None:
            uid, gid = accounts.uid(owner), pwd.getpwnam(owner).pw_gid
            for path in [self.deploy, self.run_dir, *self.deploy.rglob("*")]:
                os.chown(path, uid, gid)
        self.log_path = self.root / "service.log"
        self.process: subprocess.Popen | None = None

    # -- the service --------------------------------------------------------

    def serve_command(self) -> list[str]:
        return as_user(self.owner) + ["env", "SAFE_DATA_LOG=info", str(binary()), "serve", "--config", str(self.config)]

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.serve_command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if "Safe Data service listening" in self.log():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"the service exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"the service did not start in time:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def rss_kib(self) -> int:
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))

    def workers(self) -> list[int]:
        """The pids of the service's worker processes."""
        assert self.process is not None
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def audit(self) -> list[dict[str, Any]]:
        path = self.state / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- kernels -------------------------------------------------------------

    @contextmanager
    def kernel(self, user: str | None = None, env: dict[str, str] | None = None, socket_path: Path | None = None) -> Iterator[tuple[KernelManager, Any]]:
        """A service-mode kernel running as `user` (the current account when None)."""
        name = f"sd-svc-{user or 'me'}-{len(list(self.kernels_dir.iterdir()))}"
        spec = self.kernels_dir / name
        spec.mkdir()
        env_args = [f"{k}={v}" for k, v in (env or {}).items()]
        kernel = [str(binary()), "kernel", "-f", "{connection_file}", "--service", str(socket_path or self.socket)]
        if user is None:
            argv = ["env", *env_args, *kernel]
        else:
            # The connection file is written by this (root) process: give it to the kernel's account.
            inner = " ".join(["exec", *as_user(user), "env", *env_args, *kernel]).replace("{connection_file}", '"$1"')
            argv = ["sh", "-c", f'chown {user} "$1" && {inner}', "sh", "{connection_file}"]
        (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "sql", "interrupt_mode": "message"}))
        ksm = KernelSpecManager(kernel_dirs=[str(self.kernels_dir)])
        km = KernelManager(kernel_name=name, kernel_spec_manager=ksm, connection_file=str(self.conn_dir / f"{name}.json"))
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=STARTUP_TIMEOUT_S)
            yield km, kc
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)


def make_big_table(path: Path) -> None:
    import duckdb

    duckdb.sql(
        f"""COPY (SELECT i AS pid, i % 1000 AS k1, (i // 1000) % 50 AS k2,
                 hash(i) % 1000000 / 1000000.0 AS v1, hash(i * 7 + 1) % 1000000 / 1000000.0 AS v2
                 FROM range({BIG_ROWS}) t(i)) TO '{path}' (FORMAT parquet)"""
    )


@pytest.fixture
def deployments() -> Iterator[list[Deployment]]:
    """Deployments made by a test, stopped and removed after it."""
    made: list[Deployment] = []
    yield made
    for d in made:
        d.cleanup()


MODES = ["same-user", "multi-user"]


def mode_users(mode: str) -> tuple[str | None, str | None, str | None]:
    """(service account, first scientist, second scientist) of a mode."""
    if mode == "multi-user":
        accounts.ensure_accounts()
        return accounts.SERVICE, accounts.ALICE, accounts.BOB
    return None, None, None


def deployment_for(mode: str, deployments: list[Deployment], **kw: Any) -> Deployment:
    service, _, _ = mode_users(mode)
    if mode == "multi-user":
        kw.setdefault("socket_group", accounts.SCIENTISTS)
        kw.setdefault("allowed_groups", [accounts.SCIENTISTS])
    d = Deployment(service, **kw)
    deployments.append(d)
    d.start()
    return d


# --------------------------------------------------------------------------
# running cells


def run(kc, code: str, timeout: float = REPLY_TIMEOUT_S, **kwargs: Any) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """Executes `code`; returns the reply, its iopub messages up to idle, and the seconds taken."""
    started = time.monotonic()
    msg_id = kc.execute(code, **kwargs)
    deadline = started + timeout
    reply = messages.shell_reply(kc, msg_id, deadline)
    took = time.monotonic() - started
    return reply, messages.iopub_until_idle(kc, msg_id, deadline), took


def outputs(iopub: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(msg_type, text/plain) of each output, without the progress display of a cell that ran over a second."""
    return [
        (m["msg_type"], m["content"]["data"].get("text/plain", ""))
        for m in iopub
        if m["msg_type"] in ("execute_result", "display_data") and not m["content"].get("transient", {}).get("display_id")
    ]


def ok(kc, code: str, timeout: float = REPLY_TIMEOUT_S) -> tuple[list[tuple[str, str]], float]:
    reply, iopub, took = run(kc, code, timeout)
    assert reply["content"]["status"] == "ok", reply["content"]
    return outputs(iopub), took


def error(kc, code: str, timeout: float = REPLY_TIMEOUT_S) -> tuple[dict[str, Any], float]:
    reply, _, took = run(kc, code, timeout)
    assert reply["content"]["status"] == "error", reply["content"]
    return reply["content"], took


def shell_request(kc, send, timeout: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
    msg_id = send()
    return messages.shell_reply(kc, msg_id, time.monotonic() + timeout)["content"]


# --------------------------------------------------------------------------
# start-up checks


def serve(config: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary()), "serve", "--config", str(config)], capture_output=True, text=True, timeout=timeout)


def test_serve_refuses_bad_setups_naming_the_fix(deployments):
    d = Deployment()
    deployments.append(d)
    plain = d.deploy / "plain.toml"
    plain.write_text(d.config.read_text().split("\n[service]\n")[0])
    done = serve(plain)
    assert done.returncode != 0 and "has no [service] section" in done.stderr, done.stderr

    missing = d.deploy / "missing-folder.toml"
    missing.write_text(d.config.read_text().replace(str(d.socket), str(d.root / "nope" / "s.sock")))
    done = serve(missing)
    assert done.returncode != 0 and "does not exist; create it" in done.stderr, done.stderr

    d.state.chmod(0o777)
    done = serve(d.config)
    assert done.returncode != 0 and "set it to 0700" in done.stderr and "0777" in done.stderr, done.stderr
    d.state.chmod(0o700)

    d.socket.write_text("not a socket")
    done = serve(d.config)
    assert done.returncode != 0 and "is not a socket" in done.stderr, done.stderr
    d.socket.unlink()

    # A stale socket (nobody listens) is removed; a live one is refused.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(d.socket))
    stale.close()
    d.start()
    assert "removing the stale socket" in d.log()
    done = serve(d.config)
    assert done.returncode != 0 and "already listening" in done.stderr, done.stderr
    assert d.alive()


# --------------------------------------------------------------------------
# the kernel in service mode


def test_kernel_says_the_service_is_unreachable_then_reconnects(deployments):
    d = Deployment()
    deployments.append(d)
    with d.kernel() as (_, kc):
        content, took = error(kc, "SHOW TABLES")
        assert content["ename"] == "ServiceUnavailable", content
        assert f"not reachable at {d.socket}" in content["evalue"] and "safe-data serve" in content["evalue"], content
        assert took < 10
        d.start()
        out, _ = ok(kc, "SHOW TABLES")
        assert "patients" in out[0][1]
        # The service stops: the next cell says so instead of hanging.
        d.stop()
        content, took = error(kc, CHEAP)
        assert content["ename"] == "ServiceUnavailable" and took < 10, content


@pytest.mark.parametrize("mode", MODES)
def test_service_mode_answers_like_the_embedded_kernel(mode, deployments, kernel_name):
    from jupyter_client.manager import start_new_kernel

    d = deployment_for(mode, deployments)
    _, alice, _ = mode_users(mode)
    cells = [
        "SHOW TABLES",
        "DESCRIBE patients; EXPLAIN SELECT sex, COUNT(*) FROM patients GROUP BY sex",
        CHEAP,
        "SELECT sex, AVG(bmi) AS bmi FROM patients GROUP BY sex; CHART BAR SELECT region, COUNT(*) AS n FROM patients GROUP BY region",
        "SELECT * FROM patients",  # refused: raw rows
        "SELECT nope FROM patients",  # unknown column
        "SELEC 1",  # syntax error
    ]

    def answers(kc) -> list[Any]:
        got = []
        for cell in cells:
            reply, iopub, _ = run(kc, cell)
            c = reply["content"]
            got.append((c["status"], c.get("ename"), c.get("evalue"), outputs(iopub)))
        complete = shell_request(kc, lambda: kc.complete("SELECT * FROM pat", 17))
        inspect = shell_request(kc, lambda: kc.inspect("patients", 3))
        got.append((complete["matches"], complete["cursor_start"], complete["cursor_end"], inspect["found"], inspect["data"]))
        return got

    with d.kernel(alice) as (_, kc):
        remote = answers(kc)
        info = shell_request(kc, kc.kernel_info)
        assert "demo hospital" in info["banner"]
    km, kc = start_new_kernel(kernel_name=kernel_name, startup_timeout=STARTUP_TIMEOUT_S)
    try:
        embedded = answers(kc)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert remote == embedded


@pytest.mark.parametrize("mode", MODES)
def test_audit_names_the_peer_account_whatever_the_environment_says(mode, deployments):
    d = deployment_for(mode, deployments)
    _, alice, bob = mode_users(mode)
    claimed = bob or "somebody-else"
    with d.kernel(alice, env={"JUPYTERHUB_USER": claimed, "USER": claimed, "LOGNAME": claimed}) as (_, kc):
        ok(kc, CHEAP + "; SHOW TABLES")
        error(kc, "SELECT * FROM patients")
        error(kc, "SELEC 1")
    lines = d.audit()
    assert len(lines) >= 4
    assert {line["user"] for line in lines} == {alice or ME}, lines
    assert [line["statement"] for line in lines[-4:]] == [CHEAP, "SHOW TABLES", "SELECT * FROM patients", "SELEC 1"]
    assert lines[-2]["rule"] == "raw_rows"
    assert subprocess.run([str(binary()), "audit", "verify", "--config", str(d.config)], capture_output=True).returncode == 0


def test_histories_are_per_account(deployments):
    d = deployment_for("multi-user", deployments)
    _, alice, bob = mode_users("multi-user")
    marker = "SELECT 'alice-private-marker' AS m"
    with d.kernel(alice) as (_, kc):
        run(kc, marker)
        mine = shell_request(kc, lambda: kc.history(hist_access_type="search", pattern="*alice-private-marker*"))
        assert any("alice-private-marker" in h[2] for h in mine["history"]), mine
    with d.kernel(bob, env={"JUPYTERHUB_USER": alice}) as (_, kc):
        ok(kc, "SHOW TABLES")
        for ask in (
            lambda: kc.history(hist_access_type="tail", n=10_000),
            lambda: kc.history(hist_access_type="search", pattern="*alice*"),
            lambda: kc.history(hist_access_type="range", session=-1, start=0, stop=None),
        ):
            seen = shell_request(kc, ask)
            assert seen["status"] == "ok"
            assert not any("alice-private-marker" in h[2] for h in seen["history"]), seen
        tail = shell_request(kc, lambda: kc.history(hist_access_type="tail", n=10))
        assert [h[2] for h in tail["history"]][-1:] == ["SHOW TABLES"], tail


def test_scientists_cannot_open_sources_caches_audit_or_histories(deployments):
    d = deployment_for("multi-user", deployments)
    _, alice, _ = mode_users("multi-user")
    with d.kernel(alice) as (_, kc):
        ok(kc, CHEAP)  # writes the audit log, the history and the CSV caches
    files = [p for p in [*d.data.rglob("*"), *d.state.rglob("*")] if p.is_file()]
    assert any(p.name == "audit.jsonl" for p in files) and any("cache" in p.parts for p in files), files
    assert any("history" in str(p) for p in files), files
    targets = [d.config, d.data, d.state, *files]
    probe = textwrap.dedent(
        """
        import json, os, sys
        result = {}
        for path in sys.argv[1:]:
            try:
                if os.path.isdir(path):
                    os.listdir(path)
                else:
                    open(path, "rb").read(1)
                result[path] = "opened"
            except PermissionError:
                result[path] = "denied"
            except OSError as e:
                result[path] = type(e).__name__
        print(json.dumps(result))
        """
    )
    done = subprocess.run(as_user(alice) + ["python3", "-c", probe, *map(str, targets)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result.values()) == {"denied"}, {k: v for k, v in result.items() if v != "denied"}
    # And writing the audit log from the scientist's side fails too.
    done = subprocess.run(as_user(alice) + ["sh", "-c", f"echo x >> {d.state / 'audit.jsonl'}"], capture_output=True, text=True)
    assert done.returncode != 0 and "Permission denied" in done.stderr


@pytest.mark.parametrize("mode", MODES)
def test_an_account_the_owner_did_not_allow_is_refused_and_audited(mode, deployments):
    service, alice, bob = mode_users(mode)
    if mode == "multi-user":
        # bob can open the socket (he is in its group) but is not listed.
        d = deployment_for(mode, deployments, allowed_users=[alice], allowed_groups=None)
        outsider = bob
    else:
        d = deployment_for(mode, deployments, allowed_users=["sd-nobody-listed"])
        outsider = None
    with d.kernel(outsider) as (_, kc):
        content, took = error(kc, "SHOW TABLES")
        assert content["ename"] == "ServiceUnavailable" and "has not allowed the account" in content["evalue"], content
        assert took < 10
    refused = [line for line in d.audit() if line["rule"] == "NotAllowed"]
    assert refused and refused[-1]["user"] == (outsider or ME) and refused[-1]["verdict"] == "refused", d.audit()
    if mode == "multi-user":
        with d.kernel(alice) as (_, kc):
            ok(kc, "SHOW TABLES")


# --------------------------------------------------------------------------
# stopping queries; many users


@pytest.mark.parametrize("mode", MODES)
def test_interrupt_returns_promptly_and_the_next_statement_runs_at_once(mode, deployments):
    d = deployment_for(mode, deployments, big=True, workers=1)
    _, alice, _ = mode_users(mode)
    with d.kernel(alice) as (km, kc):
        ok(kc, "SELECT COUNT(*) AS n FROM big")
        for slow in (SLOW_AGGREGATE, EXPLODING):
            workers_before = d.workers()
            started = time.monotonic()
            msg_id = kc.execute(slow)
            time.sleep(1.5)
            km.interrupt_kernel()
            reply = messages.shell_reply(kc, msg_id, time.monotonic() + REPLY_TIMEOUT_S)
            took = time.monotonic() - started
            assert reply["content"]["status"] == "error", f"{slow} finished before the interrupt: make it heavier"
            assert reply["content"]["ename"] == "Interrupted", reply["content"]
            assert took < 1.5 + 2.0, f"the interrupt took {took - 1.5:.2f} s"
            # The worker that ran it was killed and replaced.
            assert set(d.workers()).isdisjoint(workers_before) or len(workers_before) == 0
            out, took = ok(kc, "SELECT k1 % 10 AS k, COUNT(*) AS n FROM big GROUP BY k1 % 10", timeout=30)
            assert len(out) == 1 and took < 5, f"the next statement took {took:.2f} s"
        stopped = [line for line in d.audit() if line["rule"] == "Interrupted"]
        assert [line["statement"] for line in stopped[-2:]] == [SLOW_AGGREGATE, EXPLODING], d.audit()[-6:]
    assert subprocess.run([str(binary()), "audit", "verify", "--config", str(d.config)], capture_output=True).returncode == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_heavy_query_does_not_delay_another_users_catalog_statements(mode, deployments):
    d = deployment_for(mode, deployments, workers=1)
    _, alice, bob = mode_users(mode)
    with d.kernel(alice) as (km_a, kc_a), d.kernel(bob) as (_, kc_b):
        ok(kc_b, "SHOW TABLES")
        msg_id = kc_a.execute(EXPLODING)
        time.sleep(1.0)
        timings = []
        for _ in range(10):
            out, took = ok(kc_b, "SHOW TABLES")
            timings.append(took)
        # The pool's only worker is busy: data statements queue, catalog ones do not.
        assert sorted(timings)[5] < 0.25, timings
        km_a.interrupt_kernel()
        messages.shell_reply(kc_a, msg_id, time.monotonic() + REPLY_TIMEOUT_S)
        print(f"SHOW TABLES while the pool is busy: p50 {sorted(timings)[5] * 1000:.1f} ms, max {max(timings) * 1000:.1f} ms")


@pytest.mark.parametrize("mode", MODES)
def test_a_kernel_killed_mid_query_leaves_the_service_serving_others(mode, deployments):
    d = deployment_for(mode, deployments, workers=1)
    _, alice, bob = mode_users(mode)
    with d.kernel(bob) as (_, kc_b):
        with d.kernel(alice) as (km_a, kc_a):
            kc_a.execute(EXPLODING)
            time.sleep(1.0)
            os.kill(km_a.provisioner.pid, signal.SIGKILL)
            time.sleep(0.5)
        # The only worker was running alice's query: it is killed and replaced at once.
        out, took = ok(kc_b, CHEAP, timeout=30)
        assert out and took < 10, took
        assert d.alive()
    gone = [line for line in d.audit() if line["rule"] == "Disconnected"]
    assert gone and gone[-1]["statement"] == EXPLODING and gone[-1]["user"] == (alice or ME), d.audit()[-4:]


# --------------------------------------------------------------------------
# hostile clients

PROBE = textwrap.dedent(
    r"""
    import json, socket, struct, sys, time
    path, rounds = sys.argv[1], int(sys.argv[2])

    def conn():
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(15)
        s.connect(path)
        return s

    def frame(obj):
        body = json.dumps(obj).encode()
        return struct.pack(">I", len(body)) + body

    def answer(s):
        head = b""
        while len(head) < 4:
            chunk = s.recv(4 - len(head))
            if not chunk:
                return None
            head += chunk
        n = struct.unpack(">I", head)[0]
        body = b""
        while len(body) < n:
            chunk = s.recv(n - len(body))
            if not chunk:
                return None
            body += chunk
        return json.loads(body)

    def closed(s):
        try:
            while True:
                if not s.recv(65536):
                    return True
        except socket.timeout:
            return False
        except OSError:
            return True

    out = {}
    # Wrong version: refused with a reason naming both versions.
    s = conn(); s.sendall(frame({"type": "hello", "version": 999})); out["version"] = answer(s); s.close()
    # A request before the handshake.
    s = conn(); s.sendall(frame({"type": "interrupt"})); out["no_hello"] = answer(s); s.close()
    # Garbage, an oversized claim, a truncated frame, each after a good hello.
    for name, payload in [
        ("garbage", struct.pack(">I", 11) + b"\xff\xfe not json"),
        ("oversized", struct.pack(">I", 0xFFFFFFFF)),
        ("unknown", frame({"type": "drop_tables", "id": 1})),
        ("second_hello", frame({"type": "hello", "version": 1})),
        ("truncated", struct.pack(">I", 1000) + b"{\"type\""),
    ]:
        s = conn(); s.sendall(frame({"type": "hello", "version": 1}))
        welcome = answer(s)
        s.sendall(payload)
        if name == "truncated":
            s.shutdown(socket.SHUT_WR)
        out[name] = {"welcome": welcome and welcome["type"], "closed": closed(s)}
        s.close()
    # Many connections opened and dropped, at every stage.
    started = time.monotonic()
    for i in range(rounds):
        s = conn()
        if i % 3 == 1:
            s.sendall(frame({"type": "hello", "version": 1}))
        elif i % 3 == 2:
            s.sendall(struct.pack(">I", 5))
        s.close()
    out["churn_s"] = time.monotonic() - started
    # One account holding many connections at once: capped per account.
    held, answers = [], []
    for i in range(40):
        s = conn()
        # A refused connection is told at once, before any hello.
        s.settimeout(0.3)
        try:
            a = answer(s)
        except socket.timeout:
            s.settimeout(15)
            s.sendall(frame({"type": "hello", "version": 1}))
            a = answer(s)
        answers.append(a and a["type"]); held.append(s)
        if a and a["type"] == "refused":
            out["held_reason"] = a["reason"]
    out["held"] = answers
    for s in held:
        s.close()
    time.sleep(1.0)
    s = conn(); s.sendall(frame({"type": "hello", "version": 1})); out["after_held"] = (answer(s) or {}).get("type"); s.close()
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("mode", MODES)
def test_malformed_frames_and_a_thousand_connections_leave_the_service_alive(mode, deployments):
    d = deployment_for(mode, deployments)
    _, alice, _ = mode_users(mode)
    with d.kernel(alice) as (_, kc):
        ok(kc, "SHOW TABLES")
        before = d.rss_kib()
        done = subprocess.run(as_user(alice) + [sys.executable if alice is None else "python3", "-c", PROBE, str(d.socket), "1000"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["version"]["type"] == "refused" and "999" in out["version"]["reason"], out
        assert out["no_hello"]["type"] == "refused" and "hello" in out["no_hello"]["reason"], out
        for name in ("garbage", "oversized", "unknown", "second_hello", "truncated"):
            assert out[name] == {"welcome": "welcome", "closed": True}, (name, out)
        # At most 32 connections per account (the kernel holds one): the rest refused, with the reason.
        assert 1 <= out["held"].count("welcome") <= 31 and out["held"].count("refused") >= 9, out["held"]
        assert "kernels connected" in out["held_reason"], out
        assert out["after_held"] == "welcome", out
        # The kernel's own connection still works, and so does a new one.
        ok(kc, CHEAP)
        time.sleep(1.0)
        after = d.rss_kib()
        print(f"service RSS before {before} KiB, after 1,000 connections and malformed frames {after} KiB")
        assert after - before < 32 * 1024, (before, after)
    with d.kernel(alice) as (_, kc):
        ok(kc, "SHOW TABLES")
    assert d.alive()
    log = d.log()
    # Logged, without the frames' content.
    assert "closed a connection" in log and "drop_tables" not in log and "not json" not in log
