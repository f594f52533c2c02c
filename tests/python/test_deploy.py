"""Issue 11, "The Jupyter server offers nothing else": `safe-data
jupyter-config` and `safe-data doctor` against real Jupyter servers.

A module fixture writes a small demo hospital into a folder every account may
traverse (so the permission checks see what a scientist would see), installs
the Safe Data kernelspec into a private JUPYTER_PATH, writes the hardened
configuration with `safe-data jupyter-config`, and starts two real
`jupyter server`s on free localhost ports, each with a token:

- *hardened*: JUPYTER_CONFIG_DIR holds only the generated configuration; its
  root_dir is the notebooks folder, apart from the data;
- *unhardened*: an empty configuration folder (Jupyter's defaults: terminals
  on, the `python3` kernel), with root_dir the owner's folder that holds the
  sources and the state_dir.

Both run as the current account. The hardened configuration sets
`ServerApp.allow_root = false`, so as root (CI) the server is given
`--ServerApp.allow_root=True` on its command line (a deployment runs it as the
scientist's account, never as root); nothing else of the configuration is
overridden.

A last test (root only) builds the layout of docs/deploy.md itself: `safe-data
serve` as sd-service, the hardened server as sd-alice (allow_root not
overridden) with the service-mode kernelspec, and doctor finding no hole.

The probes are first shown to work on the unhardened server (terminal, python3
kernel, the sources through /api/contents and /files), so a probe that cannot
see anything cannot pass on the hardened one.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import accounts
from conftest import binary

PATIENTS = "300"
KERNEL = "safe-data"
SERVER_START_S = 60
KERNEL_REPLY_S = 60
COMMAND_S = 120
# `jupyter-server` itself, not `jupyter server`: the dispatcher re-executes it.
JUPYTER_SERVER = Path(sys.executable).parent / "jupyter-server"



def own_warnings(stderr: str) -> list[str]:
    """Warnings of `jupyter-config`, leaving out those about kernelspecs other tests installed in
    this venv (`sys.prefix`), which any Jupyter server run from the venv sees."""
    venv_kernels = str(Path(sys.prefix) / "share" / "jupyter" / "kernels")
    return [line for line in stderr.splitlines() if line.startswith("warning") and venv_kernels not in line]

def sd(*args: str, timeout: float = COMMAND_S, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary()), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


def shared_dir(prefix: str) -> Path:
    """A fresh folder every account may traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def as_account(name: str) -> list[str]:
    """Runs the rest as `name` with its groups, keeping the environment the
    process is given (accounts.as_user resets it, and an `env` or `sh` in
    between could not start this environment's Python on the development
    machine)."""
    user = pwd.getpwnam(name)
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lock_down(owner_dir: Path, config: Path) -> list[Path]:
    """The owner's files private to the current account: folders 0700,
    files 0600 (the layout of docs/deploy.md, owner = this account). Returns
    the sources."""
    text = config.read_text()
    sources = [owner_dir / s for s in re.findall(r'^source\s*=\s*"([^"]+)"', text, re.M)]
    assert sources, "the demo configuration names no source"
    for folder in (owner_dir / "data", owner_dir / "state"):
        folder.mkdir(exist_ok=True)
        for p in [folder, *folder.rglob("*")]:
            p.chmod(0o700 if p.is_dir() else 0o600)
    config.chmod(0o600)
    return sources


def doctor_lines(out: str) -> list[tuple[str, str]]:
    """(`ok`|`note`|`HOLE`|`ERROR`, text) of each finding line."""
    found = []
    for line in out.splitlines():
        m = re.match(r"^(ok|note|HOLE|ERROR)\s+(.*)$", line)
        if m:
            found.append((m.group(1), m.group(2)))
    return found


def landlock_hole(text: str) -> bool:
    return text.startswith("Landlock is missing")


# --------------------------------------------------------------------------
# a Jupyter server


class Server:
    """`jupyter server` on a free port; as `user` (setpriv, with `env` only)
    when given, else as this account (root: with allow_root overridden)."""

    def __init__(self, name: str, base: Path, env: dict[str, str], extra: list[str], user: str | None = None) -> None:
        self.port = free_port()
        self.token = uuid.uuid4().hex
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / f"{name}.log"
        args = [
            str(JUPYTER_SERVER),
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            *extra,
        ]
        if user is not None:
            args = [*as_account(user), *args]
        elif os.geteuid() == 0:
            args.append("--ServerApp.allow_root=True")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["nice", *args], stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"jupyter server `{name}` exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if requests.get(f"{self.url}/api/status", headers=self.auth, timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"jupyter server `{name}` did not answer within {SERVER_START_S} s:\n{self.log_text()}")
            time.sleep(0.3)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        return requests.request(method, f"{self.url}/{path}", headers=self.auth, timeout=30, allow_redirects=False, **kw)

    def raw_get(self, path: str) -> int:
        """The status of GET /PATH sent as is (requests and curl remove `..`
        segments before sending)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", "/" + path, headers=self.auth)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self.log.close()


class Deployment:
    def __init__(self) -> None:
        self.base = shared_dir("sd-deploy-")
        self.owner = self.base / "owner"
        done = sd("demo", str(self.owner), "--patients", PATIENTS)
        assert done.returncode == 0, done.stderr
        self.config = self.owner / "safe-data.toml"
        self.sources = lock_down(self.owner, self.config)
        self.state = self.owner / "state"
        self.notebooks = self.base / "notebooks"
        (self.notebooks / "sub").mkdir(parents=True)
        (self.notebooks / "visible.txt").write_text("nothing secret\n")
        (self.notebooks / ".hidden.txt").write_text("a dot-file\n")
        (self.notebooks / ".jupyter").mkdir()
        (self.notebooks / ".jupyter" / "x.json").write_text("{}\n")
        jup = self.base / "jupyter"
        self.config_dir = jup / "config"
        self.plain_config_dir = jup / "plain-config"
        self.prefix = jup / "prefix"
        self.runtime = jup / "runtime"
        for d in (self.config_dir, self.plain_config_dir, jup / "data", self.runtime):
            d.mkdir(parents=True)
        env = dict(os.environ)
        env.update(
            JUPYTER_CONFIG_DIR=str(self.config_dir),
            JUPYTER_PATH=str(self.prefix / "share" / "jupyter"),
            JUPYTER_DATA_DIR=str(jup / "data"),
            JUPYTER_RUNTIME_DIR=str(self.runtime),
            JUPYTER_ALLOW_INSECURE_WRITES="0",
        )
        self.env = env
        self.servers: list[Server] = []

    def start(self, name: str, config_dir: Path, extra: list[str]) -> Server:
        env = dict(self.env, JUPYTER_CONFIG_DIR=str(config_dir))
        server = Server(name, self.base, env, extra)
        self.servers.append(server)
        return server

    def cleanup(self) -> None:
        for s in self.servers:
            s.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def write_kernelspec(prefix: Path, name: str, provisioner: bool) -> Path:
    """A Python kernelspec (not Safe Data's) under PREFIX/share/jupyter."""
    folder = prefix / "share" / "jupyter" / "kernels" / name
    folder.mkdir(parents=True)
    spec: dict[str, Any] = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": name, "language": "python", "metadata": {}}
    if provisioner:
        spec["metadata"]["kernel_provisioner"] = {"provisioner_name": "local-provisioner"}
    (folder / "kernel.json").write_text(json.dumps(spec))
    return folder


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    d = Deployment()
    try:
        done = sd("install", "--config", str(d.config), "--name", KERNEL, "--prefix", str(d.prefix), env=d.env)
        assert done.returncode == 0, done.stderr
        # A Python kernelspec that does not name its provisioner (as
        # `ipykernel install` writes them): the hardened server must refuse it.
        write_kernelspec(d.prefix, "plain-python", provisioner=False)
        done = sd("jupyter-config", "--config", str(d.config), "--out", str(d.config_dir), "--notebooks", str(d.notebooks), env=d.env)
        assert done.returncode == 0, done.stdout + done.stderr
        # The kernelspec is found where the server looks: no warning (but for the other tests'
        # kernelspecs in this venv, which every server started from it sees).
        assert not own_warnings(done.stderr), done.stderr
        d.hardened = d.start("hardened", d.config_dir, [])
        d.unhardened = d.start("unhardened", d.plain_config_dir, [f"--ServerApp.root_dir={d.owner}"])
        yield d
    finally:
        d.cleanup()


# --------------------------------------------------------------------------
# probes


def start_kernel(server: Server, name: str) -> requests.Response:
    r = server.call("POST", "api/kernels", json={"name": name})
    if r.ok:
        # Started anyway: never leave it running.
        server.call("DELETE", f"api/kernels/{r.json()['id']}")
    return r


def reachable(server: Server, targets: list[Path], root: Path) -> list[str]:
    """Every way a file of `targets` is served: /api/contents and /files, by
    paths relative to each folder above it, `..` escapes from `root` (plain,
    percent-encoded, through a subfolder), absolute paths."""
    hits = []
    for target in targets:
        target = target.resolve()
        parts = target.parts[1:]
        rel = os.path.relpath(target, root)
        names = {rel, "sub/../" + rel, "sub/../../" + rel}
        names |= {"/".join(parts[i:]) for i in range(len(parts))}
        for up in range(1, 7):
            names.add("../" * up + "/".join(parts))
            names.add("%2E%2E/" * up + "/".join(parts))
            names.add("..%2F" * up + "%2F".join(parts))
        names.add(str(target))  # absolute: a leading '/' after the endpoint
        for name in sorted(names):
            for path in (f"api/contents/{name}", f"files/{name}"):
                if server.raw_get(path) == 200:
                    hits.append(path)
    return hits


def execute(server: Any, kernel_id: str, code: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Runs `code` in the kernel through the server's WebSocket (under its
    base URL: through a hub's proxy too; `server` has `url`, `auth` and
    `log_text`); returns the execute_reply content and the IOPub messages of
    the request."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    async def go() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        url = server.url.replace("http://", "ws://", 1) + f"/api/kernels/{kernel_id}/channels"
        conn = await asyncio.wait_for(websocket_connect(HTTPRequest(url, headers=server.auth)), 30)
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request", "version": "5.3", "date": ""}
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}
        await conn.write_message(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": "shell", "buffers": []}))
        iopub: list[dict[str, Any]] = []
        deadline = time.monotonic() + KERNEL_REPLY_S
        reply = None
        idle = False
        while not (reply is not None and idle):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no answer from the kernel within {KERNEL_REPLY_S} s:\n{server.log_text()}")
            raw = await asyncio.wait_for(conn.read_message(), left)
            if raw is None:
                raise AssertionError(f"the server closed the kernel's WebSocket:\n{server.log_text()}")
            if not isinstance(raw, str):
                continue
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["channel"] == "shell" and msg["msg_type"] == "execute_reply":
                reply = msg["content"]
            elif msg["channel"] == "iopub":
                iopub.append(msg)
                if msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
                    idle = True
        conn.close()
        return reply, iopub

    return asyncio.run(go())


# --------------------------------------------------------------------------
# jupyter-config


def test_jupyter_config_refuses_a_notebooks_folder_over_the_data_and_warns_of_a_missing_kernelspec(deployment):
    d = deployment
    out = d.base / "refused"
    (d.state / "inside").mkdir(exist_ok=True)
    for notebooks, relation in ((d.owner, "contains"), (d.state / "inside", "is inside"), (d.state, "is the state_dir"), (d.owner / "data", "contains the source")):
        done = sd("jupyter-config", "--config", str(d.config), "--out", str(out), "--notebooks", str(notebooks), env=d.env)
        assert done.returncode != 0, done.stdout
        assert relation in done.stderr and "Choose a notebooks folder" in done.stderr, done.stderr
        assert not (out / "jupyter_server_config.json").exists()
    # Where Jupyter does not find the kernelspec, it says so (and still writes).
    env = dict(d.env, JUPYTER_PATH=str(d.base / "nowhere"), JUPYTER_DATA_DIR=str(d.base / "nowhere"))
    done = sd("jupyter-config", "--config", str(d.config), "--out", str(out), "--notebooks", str(d.notebooks), "--kernel-name", "not-installed", env=env)
    assert done.returncode == 0, done.stderr
    assert "no kernelspec `not-installed` found" in done.stderr, done.stderr
    # The service-mode kernelspec names its provisioner, as the hardened server requires.
    done = sd("install", "--service", str(d.base / "nowhere.sock"), "--name", "sd-service-mode", "--prefix", str(d.base / "svc"))
    assert done.returncode == 0, done.stderr
    spec = json.loads((d.base / "svc/share/jupyter/kernels/sd-service-mode/kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "local-provisioner"
    assert "--service" in spec["argv"] and "--config" not in spec["argv"], spec["argv"]
    # An existing file is merged into: other settings kept, replaced ones named.
    (out / "jupyter_server_config.json").write_text(json.dumps({"ServerApp": {"terminals_enabled": True, "port": 9999}}))
    done = sd("jupyter-config", "--config", str(d.config), "--out", str(out), "--notebooks", str(d.notebooks), env=d.env)
    assert done.returncode == 0, done.stderr
    assert "replaced the file's previous ServerApp.terminals_enabled" in done.stdout, done.stdout
    merged = json.loads((out / "jupyter_server_config.json").read_text())
    assert merged["ServerApp"]["port"] == 9999 and merged["ServerApp"]["terminals_enabled"] is False


# --------------------------------------------------------------------------
# the servers through their REST API


def test_the_probes_see_the_holes_of_an_unhardened_server(deployment):
    """The control: each probe below finds its hole on a default server."""
    s = deployment.unhardened
    r = s.call("POST", "api/terminals")
    assert r.status_code == 200, r.status_code
    s.call("DELETE", f"api/terminals/{r.json()['name']}")
    assert "python3" in s.call("GET", "api/kernelspecs").json()["kernelspecs"]
    assert start_kernel(s, "python3").status_code == 201
    hits = reachable(s, [*deployment.sources, deployment.config], deployment.owner)
    for src in deployment.sources:
        assert f"api/contents/data/{src.name}" in hits and f"files/data/{src.name}" in hits, hits


def test_hardened_server_refuses_terminals_and_other_kernels(deployment):
    s = deployment.hardened
    r = s.call("POST", "api/terminals")
    assert r.status_code in (403, 404), (r.status_code, r.text[:200])
    assert s.call("GET", "api/terminals").status_code in (403, 404)
    specs = s.call("GET", "api/kernelspecs").json()
    assert set(specs["kernelspecs"]) == {KERNEL}, specs["kernelspecs"].keys()
    assert specs["default"] == KERNEL
    # python3 (ipykernel is importable here) and an installed Python
    # kernelspec that does not name its provisioner are refused.
    for name in ("python3", "plain-python"):
        r = start_kernel(s, name)
        assert not r.ok, (name, r.status_code)
    assert s.call("GET", "api/kernels").json() == []


@pytest.fixture(scope="module")
def kernel_run(deployment) -> dict[str, Any]:
    """A Safe Data kernel started by the hardened server, asked `SHOW TABLES`
    through the server's WebSocket, and shut down (it writes the audit log
    that the probes below look for)."""
    s = deployment.hardened
    r = s.call("POST", "api/kernels", json={"name": KERNEL})
    assert r.status_code == 201, (r.status_code, r.text[:300], s.log_text())
    kid = r.json()["id"]
    try:
        reply, iopub = execute(s, kid, "SHOW TABLES")
        # The kernel's connection file, read while it runs.
        files = list(deployment.runtime.glob(f"kernel-{kid}*.json"))
        conn = json.loads(files[0].read_text()) if files else None
    finally:
        s.call("DELETE", f"api/kernels/{kid}")
    return {"reply": reply, "iopub": iopub, "connection": conn}


def test_hardened_server_starts_the_safe_data_kernel_over_ipc_and_it_answers(deployment, kernel_run):
    assert kernel_run["reply"]["status"] == "ok", kernel_run["reply"]
    shown = json.dumps([m["content"] for m in kernel_run["iopub"] if m["msg_type"] in ("execute_result", "display_data", "stream")])
    for src in ("patients", "labs", "regions"):
        assert src in shown, shown[:500]
    # Unix sockets, not TCP ports.
    assert kernel_run["connection"] is not None, list(deployment.runtime.iterdir())
    assert kernel_run["connection"]["transport"] == "ipc", kernel_run["connection"]["transport"]
    # The kernel wrote its audit log: the state file the probes look for is real.
    assert (deployment.state / "audit.jsonl").is_file()
    assert deployment.hardened.call("GET", "api/kernels").json() == []


def test_hardened_server_serves_nothing_of_the_data_nor_hidden_files(deployment, kernel_run):
    d = deployment
    s = d.hardened
    # Controls: an ordinary file of the notebooks folder is served both ways.
    assert s.call("GET", "api/contents/visible.txt").status_code == 200
    assert s.call("GET", "files/visible.txt").status_code == 200
    targets = [*d.sources, d.config, d.state, *[p for p in d.state.rglob("*") if p.is_file()]]
    assert reachable(s, targets, d.notebooks) == []
    # Hidden files: not listed, not served, not written.
    listing = [e["name"] for e in s.call("GET", "api/contents/").json()["content"]]
    assert "visible.txt" in listing and ".hidden.txt" not in listing and ".jupyter" not in listing, listing
    for path in ("api/contents/.hidden.txt", "files/.hidden.txt", "api/contents/.jupyter/x.json", "files/.jupyter/x.json"):
        assert s.call("GET", path).status_code in (403, 404), path
    r = s.call("PUT", "api/contents/.evil.txt", json={"type": "file", "format": "text", "content": "x"})
    assert not r.ok and not (d.notebooks / ".evil.txt").exists(), r.status_code


def test_a_hidden_kernelspec_that_names_its_provisioner_is_found(deployment):
    """The limit of the hardened configuration (docs/deploy.md, Known limits):
    jupyter_client starts an installed kernelspec by name whatever
    allowed_kernelspecs says, when its provisioner exists. jupyter-config
    warns of such a kernelspec and doctor reports it as a hole."""
    d = deployment
    s = d.hardened
    folder = write_kernelspec(d.prefix, "sneaky-python", provisioner=True)
    try:
        assert "sneaky-python" not in s.call("GET", "api/kernelspecs").json()["kernelspecs"]
        # The limit is real (if jupyter_client ever refuses it, this test
        # says so and the warning and the doctor check can be revisited).
        assert start_kernel(s, "sneaky-python").status_code == 201
        done = sd("jupyter-config", "--config", str(d.config), "--out", str(d.base / "warn"), "--notebooks", str(d.notebooks), env=d.env)
        assert done.returncode == 0 and f"{folder / 'kernel.json'} names its kernel provisioner" in done.stderr, done.stderr
        done = sd("doctor", "--config", str(d.config), "--url", s.url, "--token", s.token, *as_user_args(), env=d.env)
        holes = [t for k, t in doctor_lines(done.stdout) if k == "HOLE"]
        assert done.returncode == 1, done.stdout
        assert any(h.startswith(f"the kernelspec `sneaky-python` ({folder / 'kernel.json'}) is not offered but a kernel of it can be started") for h in holes), done.stdout
        assert s.call("GET", "api/kernels").json() == []
    finally:
        shutil.rmtree(folder)


# --------------------------------------------------------------------------
# doctor


SERVER_OK = (
    "the Jupyter server refuses its API without a token",
    "no terminal can be created",
    "only Safe Data kernelspecs are offered (safe-data)",
    "a `python3` kernel cannot be started",
    "no source or state file is reachable through /api/contents or /files",
)


def as_user_args() -> list[str]:
    """As root, check the scientists' accounts; otherwise the default (every
    human account but the state_dir's owner, this one)."""
    if os.geteuid() == 0:
        accounts.ensure_accounts()
        return ["--as-user", accounts.ALICE, "--as-user", accounts.BOB]
    return []


def test_doctor_passes_the_hardened_server(deployment, kernel_run):
    d = deployment
    s = d.hardened
    done = sd("doctor", "--config", str(d.config), "--url", s.url + "/", "--token", s.token, "--notebooks", str(d.notebooks), *as_user_args(), env=d.env)
    lines = doctor_lines(done.stdout)
    for want in SERVER_OK:
        assert any(kind == "ok" and text.startswith(want) for kind, text in lines), (want, done.stdout)
    holes = [t for k, t in lines if k == "HOLE"]
    errors = [t for k, t in lines if k == "ERROR"]
    assert errors == [], done.stdout
    # The owner's files are 0600/0700: no file hole either. Only a kernel
    # without Landlock may leave one (the machine's, not the deployment's).
    assert [h for h in holes if not landlock_hole(h)] == [], done.stdout
    assert done.returncode == (1 if holes else 0), (done.returncode, done.stdout)
    # Nothing was left running by the probes.
    assert s.call("GET", "api/kernels").json() == [] and s.call("GET", "api/terminals").status_code in (403, 404)


def test_doctor_names_each_hole_of_an_unhardened_server(deployment, kernel_run):
    d = deployment
    s = d.unhardened
    done = sd("doctor", "--config", str(d.config), "--url", s.url, "--token", s.token, *as_user_args(), env=d.env)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    holes = [t for k, t in doctor_lines(done.stdout) if k == "HOLE"]
    want = [
        "a terminal can be created (POST /api/terminals)",
        "the kernelspec `python3`",
        "a `python3` kernel can be started",
        *[f"the source of table `{src.stem}` ({src.resolve()}) is reachable through /api/contents/data/{src.name}" for src in d.sources],
        *[f"the source of table `{src.stem}` ({src.resolve()}) is reachable through /files/data/{src.name}" for src in d.sources],
        f"the state_dir (audit log, histories, caches) ({d.state.resolve()}) is reachable through /api/contents/{d.state.name}",
        f"the audit log ({(d.state / 'audit.jsonl').resolve()}) is reachable through /api/contents/{d.state.name}/audit.jsonl",
        f"the audit log ({(d.state / 'audit.jsonl').resolve()}) is reachable through /files/{d.state.name}/audit.jsonl",
    ]
    for w in want:
        assert any(h.startswith(w) for h in holes), (w, done.stdout)
    # The file checks pass here too: the holes are the server's.
    assert not any("can read" in h or "can write" in h for h in holes), done.stdout
    # The doctor deleted what it managed to start.
    assert s.call("GET", "api/kernels").json() == []
    assert s.call("GET", "api/terminals").json() == []


def test_doctor_names_a_symlink_from_the_notebooks_folder_to_the_data(deployment):
    """jupyter_server follows a symlink out of its root and serves the
    target's content through /api/contents (no setting stops it; /files
    refuses). A scientist without a shell cannot make one, but an
    administrator can: doctor --notebooks names each."""
    d = deployment
    s = d.hardened
    labs = next(p for p in d.sources if p.name == "labs.csv")
    links = {d.notebooks / "data-link": labs.parent, d.notebooks / "sub" / "audit-link": d.state / "audit.jsonl"}
    (d.state / "audit.jsonl").touch()
    args = ["doctor", "--config", str(d.config), "--url", s.url, "--token", s.token, "--notebooks", str(d.notebooks), *as_user_args()]
    done = sd(*args, env=d.env)
    assert ("ok", "no symlink in the notebooks folder leads to a source or the state_dir") in doctor_lines(done.stdout), done.stdout
    for link, target in links.items():
        link.symlink_to(target)
    try:
        # The fact behind the check (docs/deploy.md, Known limits).
        assert s.call("GET", "files/data-link/labs.csv").status_code in (403, 404)
        r = s.call("GET", "api/contents/data-link/labs.csv?content=1")
        assert r.status_code == 200 and r.json()["content"], r.status_code
        done = sd(*args, env=d.env)
        holes = [t for k, t in doctor_lines(done.stdout) if k == "HOLE"]
        assert done.returncode == 1, done.stdout
        assert any(h.startswith(f"the symlink {d.notebooks.resolve() / 'data-link'} in the notebooks folder leads to the source of table `") for h in holes), done.stdout
        assert any(h.startswith(f"the symlink {d.notebooks.resolve() / 'sub' / 'audit-link'} in the notebooks folder leads to the state_dir") for h in holes), done.stdout
    finally:
        for link in links:
            link.unlink()


def test_doctor_refuses_a_wrong_token_and_an_https_url(deployment):
    d = deployment
    done = sd("doctor", "--config", str(d.config), "--url", d.hardened.url, "--token", "wrong", *as_user_args())
    assert done.returncode == 2, done.stdout
    assert any(k == "ERROR" and "refuses this token" in t for k, t in doctor_lines(done.stdout)), done.stdout
    done = sd("doctor", "--config", str(d.config), "--url", "https://127.0.0.1:1/", "--token", "x", *as_user_args())
    assert done.returncode == 2 and "https is not supported" in done.stdout, done.stdout


# --------------------------------------------------------------------------
# file permissions, with the accounts


def test_doctor_names_a_source_a_scientist_can_read():
    accounts.ensure_accounts()
    base = shared_dir("sd-deploy-perms-")
    try:
        owner = base / "owner"
        done = sd("demo", str(owner), "--patients", PATIENTS)
        assert done.returncode == 0, done.stderr
        config = owner / "safe-data.toml"
        sources = lock_down(owner, config)
        state = owner / "state"
        (state / "audit.jsonl").write_text("")
        (state / "audit.jsonl").chmod(0o600)
        svc_uid, svc_gid = accounts.uid(accounts.SERVICE), pwd.getpwnam(accounts.SERVICE).pw_gid
        for p in [owner, *owner.rglob("*")]:
            os.chown(p, svc_uid, svc_gid)
        owner.chmod(0o755)  # the folder above data/ and state/ (both 0700)
        args = ["doctor", "--config", str(config), "--as-user", accounts.ALICE, "--as-user", accounts.BOB]

        def holes() -> list[str]:
            done = sd(*args)
            lines = doctor_lines(done.stdout)
            assert not any(k == "ERROR" for k, _ in lines), done.stdout
            found = [t for k, t in lines if k == "HOLE" and not landlock_hole(t)]
            assert done.returncode == (1 if any(k == "HOLE" for k, _ in lines) else 0), done.stdout
            return found

        assert holes() == []
        labs = next(s for s in sources if s.name == "labs.csv")
        # World-readable (the folder too): every account, alice and bob.
        labs.chmod(0o644)
        (owner / "data").chmod(0o755)
        found = holes()
        for who in ("any account on this machine", accounts.ALICE, accounts.BOB):
            assert f"{who} can read the source of table `labs` ({labs.resolve()})" in "\n".join(found), found
        assert len(found) == 3 and not any("`patients`" in h or "`regions`" in h for h in found), found
        # Readable through a group alice and bob are in, not by everyone: checked as each account.
        labs.chmod(0o640)
        os.chown(labs, svc_uid, accounts.gid(accounts.SCIENTISTS))
        found = holes()
        assert len(found) == 2 and all(f"can read the source of table `labs` ({labs.resolve()})" in h for h in found), found
        assert {h.split(" ")[0] for h in found} == {accounts.ALICE, accounts.BOB}, found
        # The audit log writable by everyone is a write hole of the state_dir.
        (state / "audit.jsonl").chmod(0o602)
        state.chmod(0o711)
        found = holes()
        assert any(h.startswith(f"{accounts.ALICE} can write the state_dir") and "audit.jsonl" in h for h in found), found
        # Fixed: 0600/0700, owned by the service account.
        os.chown(labs, svc_uid, svc_gid)
        labs.chmod(0o600)
        (owner / "data").chmod(0o700)
        (state / "audit.jsonl").chmod(0o600)
        state.chmod(0o700)
        assert holes() == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------
# Landlock


def test_doctor_self_test_cannot_escape_the_confinement(deployment):
    done = sd("doctor", "--config", str(deployment.config), "--self-test")
    lines = doctor_lines(done.stdout)
    if any(k == "HOLE" and landlock_hole(t) for k, t in lines):
        pytest.skip("this kernel lacks Landlock: " + next(t for k, t in lines if landlock_hole(t)))
    tests = {t.removeprefix("self-test: "): k for k, t in lines if t.startswith("self-test: ")}
    assert tests, done.stdout + done.stderr
    want = {
        "read a file outside the allow-list: blocked (should be blocked)": "ok",
        "open a file outside the allow-list for writing: blocked (should be blocked)": "ok",
        # The controls: the allow-list itself works.
        "read a path on the read list: allowed (should work)": "ok",
        "create a file in a folder on the write list: allowed (should work)": "ok",
    }
    for text, kind in want.items():
        assert tests.get(text) == kind, (text, done.stdout)
    assert not any(k == "HOLE" for k in tests.values()), done.stdout


# --------------------------------------------------------------------------
# the deployment of docs/deploy.md, with the accounts


def test_service_mode_deployment_as_the_scientist_passes_doctor():
    """The layout of docs/deploy.md: `safe-data serve` as the service account
    (socket 0660 to the scientists' group), the hardened Jupyter server as
    sd-alice (allow_root not overridden), the service-mode kernelspec. Alice's
    kernel answers through the service, the audit names her, and doctor finds
    no hole: not in the files, the socket, nor the server."""
    accounts.ensure_accounts()
    alice, svc = accounts.ALICE, accounts.SERVICE
    probe = subprocess.run([*as_account(alice), str(JUPYTER_SERVER), "--version"], capture_output=True, text=True, check=False, env={"PATH": "/usr/bin:/bin"}, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"{alice} cannot run this environment's Python ({os.path.realpath(sys.executable)}) to start a Jupyter server: {(probe.stderr or probe.stdout).strip()[-200:]}")
    base = shared_dir("sd-deploy-svc-")
    service = None
    server = None
    try:
        owner = base / "owner"
        done = sd("demo", str(owner), "--patients", PATIENTS)
        assert done.returncode == 0, done.stderr
        config = owner / "safe-data.toml"
        run = base / "run"
        run.mkdir()
        sock = run / "safe-data.sock"
        with config.open("a") as f:
            f.write(f'\n[service]\nsocket = "{sock}"\nsocket_group = "{accounts.SCIENTISTS}"\nallowed_users = ["{alice}", "{accounts.BOB}"]\nworkers = 1\n')
        lock_down(owner, config)
        for p in [owner, run, *owner.rglob("*")]:
            os.chown(p, accounts.uid(svc), pwd.getpwnam(svc).pw_gid)
        owner.chmod(0o755)
        run.chmod(0o755)
        log = base / "service.log"
        with open(log, "wb") as out:
            service = subprocess.Popen([*accounts.as_user(svc), "env", "SAFE_DATA_LOG=info", str(binary()), "serve", "--config", str(config)], stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + SERVER_START_S
        while "Safe Data service listening" not in log.read_text(errors="replace"):
            assert service.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)

        # Alice's side: her notebooks, Jupyter folders and the server's configuration.
        home = base / "alice"
        notebooks = home / "notebooks"
        jup = home / "jupyter"
        for d in (notebooks, jup / "config", jup / "data", jup / "runtime"):
            d.mkdir(parents=True)
        prefix = jup / "prefix"
        env = {
            "HOME": str(home),
            "PATH": f"{JUPYTER_SERVER.parent}:/usr/bin:/bin",
            "JUPYTER_CONFIG_DIR": str(jup / "config"),
            "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
            "JUPYTER_DATA_DIR": str(jup / "data"),
            "JUPYTER_RUNTIME_DIR": str(jup / "runtime"),
        }
        done = sd("install", "--service", str(sock), "--name", KERNEL, "--display-name", "Safe Data", "--prefix", str(prefix))
        assert done.returncode == 0, done.stderr
        done = sd("jupyter-config", "--config", str(config), "--out", env["JUPYTER_CONFIG_DIR"], "--notebooks", str(notebooks), env={**os.environ, **env})
        assert done.returncode == 0 and not own_warnings(done.stderr), done.stdout + done.stderr
        for p in [home, *home.rglob("*")]:
            os.chown(p, accounts.uid(alice), pwd.getpwnam(alice).pw_gid)
        home.chmod(0o700)
        server = Server("alice", base, env, [], user=alice)

        specs = server.call("GET", "api/kernelspecs").json()["kernelspecs"]
        assert set(specs) == {KERNEL} and "--service" in specs[KERNEL]["spec"]["argv"], specs
        r = server.call("POST", "api/kernels", json={"name": KERNEL})
        assert r.status_code == 201, (r.status_code, server.log_text())
        kid = r.json()["id"]
        try:
            reply, iopub = execute(server, kid, "SHOW TABLES")
        finally:
            server.call("DELETE", f"api/kernels/{kid}")
        assert reply["status"] == "ok", (reply, server.log_text())
        assert "patients" in json.dumps([m["content"] for m in iopub]), iopub
        audit = [json.loads(line) for line in (owner / "state" / "audit.jsonl").read_text().splitlines() if line.strip()]
        assert audit and audit[-1]["user"] == alice, audit[-1:]

        done = sd("doctor", "--config", str(config), "--url", server.url, "--token", server.token, "--notebooks", str(notebooks), "--as-user", alice, "--as-user", accounts.BOB, env={**os.environ, **env})
        print(done.stdout)  # shown with -s, or when the test fails
        lines = doctor_lines(done.stdout)
        holes = [t for k, t in lines if k == "HOLE"]
        assert [h for h in holes if not landlock_hole(h)] == [] and not any(k == "ERROR" for k, _ in lines), done.stdout
        assert done.returncode == (1 if holes else 0), done.stdout
        for want in (*SERVER_OK, f"{alice} can neither read nor write the sources and state files", f"the socket belongs to the group `{accounts.SCIENTISTS}`"):
            assert any(k == "ok" and t.startswith(want) for k, t in lines), (want, done.stdout)
    finally:
        if server is not None:
            server.stop()
        if service is not None and service.poll() is None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=15)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait(timeout=15)
        shutil.rmtree(base, ignore_errors=True)
