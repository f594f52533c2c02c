"""Issue 14: docs/jupyterhub.md works as written.

Every `sh` block of the guide is extracted and each of its commands is run
with bash, in order, as root, with:

- every absolute path of the deployment but alice's home moved under a temporary folder
  (`/etc/safe-data` becomes `$BASE/etc/safe-data`, ...);
- the accounts of tests/python/accounts.py for `safe-data` (the service),
  `scientists` and `alice` (an account or group that exists already is
  accepted: `useradd`/`groupadd` exit 9);
- the wheel of this run ($SAFE_DATA_WHEEL, else scripts/build_wheel.sh).

What a test machine lacks is stood in for (the guide's last section says so):
`systemctl daemon-reload` checks the unit is in place; `systemctl enable --now`
runs the unit's ExecStart= as its User= with its groups, NoNewPrivileges= and
MemoryDenyWriteExecute= (PR_SET_MDWE), in the folders systemd would make;
`npm install -g` installs the proxy under the base folder; `jupyterhub -f
FILE` first loads FILE into JupyterHub's classes, then runs the hub on free
ports and starts alice's server through its REST API with her token from
`jupyterhub token` (without npm: the test starts what LocalProcessSpawner
would, a Jupyter server as alice with the spawner's environment); the last
doctor gets that server's URL and token. A command the test does not know fails the test, so a command
added to the guide must be run here too.

Then a Safe Data kernel on alice's server answers a query through the
service, and the audit log names alice.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

import accounts
import test_deploy
from test_deploy import SERVER_OK, doctor_lines, execute, landlock_hole

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "jupyterhub.md"
COMMAND_S = 600
SERVICE_START_S = 60
SERVER_START_S = 60

# The deployment's folders, moved under the test's base folder.
# Not alice's home: the spawner starts her server in her account's own home.
ROOTS = ["/etc/safe-data", "/etc/jupyterhub", "/etc/jupyter", "/etc/systemd/system", "/srv", "/var/lib/safe-data", "/run/safe-data", "/opt/jupyterhub"]
PATH_RE = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(r) for r in sorted(ROOTS, key=len, reverse=True)) + r")(?=[/\s\"'|]|$)", re.M)
# `safe-data` as an account (after -o/-g/--user, in owner:group, last on a
# useradd/usermod line), not the binary (after a /) nor the unit (.service).
ACCOUNT_RE = re.compile(r"(?<=[ :])safe-data(?=[ :]|$)", re.M)
WHEEL_RE = re.compile(r"safe_data-\S+\.whl")
HUB_URL = "http://127.0.0.1:8000/user/alice/"
HUB_START_S = 90
NETWORK_ENV = ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
TOKEN = "ALICE_TOKEN"
MDWE_EXEC = textwrap.dedent(
    """
    # Sets the rules of the unit systemd would apply, then execs the rest.
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        sys.exit("prctl(PR_SET_MDWE) failed: errno %d" % ctypes.get_errno())
    os.umask(int(sys.argv[1], 8))
    os.execv(sys.argv[2], sys.argv[2:])
    """
)
HUB_CONFIG_CHECK = textwrap.dedent(
    """
    # Loads the hub's configuration into JupyterHub's classes: every setting
    # must be a trait of its class and pass the trait's validation.
    import json, sys
    from traitlets.config import Config
    from jupyterhub.app import JupyterHub
    from jupyterhub.auth import Authenticator
    from jupyterhub.spawner import Spawner
    app = JupyterHub()
    app.load_config_file(sys.argv[1])
    cfg = app.config
    classes = {"JupyterHub": JupyterHub, "Spawner": Spawner, "Authenticator": Authenticator}
    for section, values in cfg.items():
        cls = classes[section]
        for key in values:
            if key not in cls.class_trait_names(config=True):
                sys.exit(f"{section}.{key} is not a setting of {cls.__name__}")
    hub = JupyterHub(config=cfg)
    spawner_class = hub.spawner_class
    spawner = spawner_class(config=cfg)
    authenticator = hub.authenticator_class(config=cfg)
    print(json.dumps({
        "spawner_class": f"{spawner_class.__module__}.{spawner_class.__name__}",
        "cmd": list(spawner.cmd), "notebook_dir": spawner.notebook_dir, "default_url": spawner.default_url,
        "environment": dict(spawner.environment), "disable_user_config": spawner.disable_user_config,
        "allowed_users": sorted(authenticator.allowed_users), "bind_url": hub.bind_url,
        "allow_named_servers": hub.allow_named_servers,
    }))
    """
)


def guide_commands(text: str) -> list[str]:
    """The commands of the `sh` blocks, in order: continuation lines joined,
    a heredoc kept with its command."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            i += 1
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            while line.endswith("\\") and i < len(lines):
                line = line[:-1] + lines[i].strip()
                i += 1
            heredoc = re.search(r"<<\s*'?(\w+)'?", line)
            if heredoc:
                body = []
                while i < len(lines) and lines[i] != heredoc.group(1):
                    body.append(lines[i])
                    i += 1
                assert i < len(lines), f"unterminated heredoc in: {line}"
                i += 1
                line = "\n".join([line, *body, heredoc.group(1)])
            commands.append(line)
    return commands


def test_the_guide_has_commands_in_every_step():
    commands = guide_commands(GUIDE.read_text())
    for needle in ("useradd", "pip install", "systemd-unit", "systemctl enable", "jupyter-config", "jupyterhub -f", "doctor"):
        assert any(needle in c for c in commands), needle
    # doctor is the last step.
    assert "doctor" in commands[-1] and "doctor" in commands[-2], commands[-2:]


class Substitute:
    def __init__(self, base: Path, wheel: Path) -> None:
        self.base = base
        self.wheel = wheel

    def path(self, guide_path: str) -> Path:
        return Path(self(guide_path))

    def __call__(self, command: str) -> str:
        command = WHEEL_RE.sub(str(self.wheel), command)
        command = PATH_RE.sub(lambda m: f"{self.base}{m.group(1)}", command)
        command = ACCOUNT_RE.sub(accounts.SERVICE, command)
        command = re.sub(r"\bscientists\b", accounts.SCIENTISTS, command)
        return re.sub(r"\balice\b", accounts.ALICE, command)


def unit_values(unit: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values[key] = value
    return values


def alice_notebooks() -> Path | None:
    """~alice/notebooks (the guide's notebook_dir), if alice exists."""
    try:
        return Path(pwd.getpwnam(accounts.ALICE).pw_dir) / "notebooks"
    except KeyError:
        return None


class Hub:
    """The guide's `jupyterhub -f FILE` command, on free ports (command-line
    settings override the file's), and alice's server started through the
    hub's REST API with her token: LocalProcessSpawner starts it as her
    account. `url`, `auth`, `call` and `log_text` are those of her server
    behind the hub's proxy."""

    def __init__(self, sub: Substitute, base: Path, env: dict[str, str], command: str) -> None:
        venv = sub.path("/opt/jupyterhub")
        config = sub.path("/etc/jupyterhub/jupyterhub_config.py")
        # /etc/jupyter moved under $BASE: linked from {sys.prefix}/etc/jupyter,
        # which every Jupyter server of the environment reads as well.
        link = venv / "etc" / "jupyter" / "jupyter_server_config.json"
        link.parent.mkdir(parents=True, exist_ok=True)
        assert not link.exists(), f"{link} exists already"
        link.symlink_to(sub.path("/etc/jupyter") / "jupyter_server_config.json")
        done = subprocess.run([str(venv / "bin" / "jupyterhub"), "token", "-f", str(config), accounts.ALICE], capture_output=True, text=True, timeout=COMMAND_S, env=env, cwd=config.parent, check=False)
        assert done.returncode == 0 and done.stdout.strip(), done.stdout + done.stderr[-3000:]
        self.token = done.stdout.strip().splitlines()[-1]
        self.port = test_deploy.free_port()
        self.hub = f"http://127.0.0.1:{self.port}"
        ports = [f"--JupyterHub.bind_url={self.hub}", f"--JupyterHub.hub_bind_url=http://127.0.0.1:{test_deploy.free_port()}", f"--ConfigurableHTTPProxy.api_url=http://127.0.0.1:{test_deploy.free_port()}"]
        self.log_path = base / "hub.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["bash", "-c", " ".join([command, *ports])], stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=base, start_new_session=True)
        self.url = f"{self.hub}/user/{accounts.ALICE}"
        self.started = False
        deadline = time.monotonic() + HUB_START_S
        while "JupyterHub is now running" not in self.log_text():
            assert self.proc.poll() is None, self.log_text()
            assert time.monotonic() < deadline, self.log_text()
            time.sleep(0.3)
        r = requests.post(f"{self.hub}/hub/api/users/{accounts.ALICE}/server", headers=self.auth, timeout=60)
        assert r.status_code in (201, 202), (r.status_code, r.text, self.log_text())
        self.started = True
        while True:
            model = requests.get(f"{self.hub}/hub/api/users/{accounts.ALICE}", headers=self.auth, timeout=30).json()
            server = model.get("servers", {}).get("", {})
            if server.get("ready"):
                break
            assert server, (model, self.log_text())
            assert time.monotonic() < deadline, (model, self.log_text())
            time.sleep(0.5)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        return requests.request(method, f"{self.url}/{path}", headers=self.auth, timeout=30, allow_redirects=False, **kw)

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.started:
            try:
                requests.delete(f"{self.hub}/hub/api/users/{accounts.ALICE}/server", headers=self.auth, timeout=60)
            except requests.RequestException:
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self.log.close()


class AliceServer(test_deploy.Server):
    """What LocalProcessSpawner starts for alice: a Jupyter server from the
    hub's environment, as alice, with the spawner's environment."""

    def __init__(self, base: Path, exe: Path, env: dict[str, str], extra: list[str], user: str, cwd: Path) -> None:
        self.port = test_deploy.free_port()
        self.token = uuid.uuid4().hex
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "alice-server.log"
        args = [*test_deploy.as_account(user), str(exe), "--no-browser", "--ip=127.0.0.1", f"--port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}", *extra]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"alice's server exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if requests.get(f"{self.url}/api/status", headers=self.auth, timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"alice's server did not answer within {SERVER_START_S} s:\n{self.log_text()}")
            time.sleep(0.3)


@pytest.fixture(scope="module")
def wheel() -> Path:
    given = os.environ.get("SAFE_DATA_WHEEL")
    if given:
        assert Path(given).is_file(), f"SAFE_DATA_WHEEL={given} does not exist"
        return Path(given).resolve()
    done = subprocess.run([str(REPO / "scripts" / "build_wheel.sh")], capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return Path(done.stdout.strip().splitlines()[-1])


def test_the_guide_works_as_written(wheel: Path):
    if os.geteuid() != 0:
        pytest.skip("the guide's commands create accounts and change owners: they run as root (CI does)")
    if not shutil.which("setpriv") or not shutil.which("useradd"):
        pytest.skip("setpriv and useradd are needed to run the guide's commands")
    base = Path(tempfile.mkdtemp(prefix="sdg-"))
    base.chmod(0o755)
    sub = Substitute(base, wheel)
    home = base / "root-home"  # no Jupyter folders of this machine's root account
    home.mkdir()
    pip_cache = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True, check=False).stdout.strip()
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    if pip_cache:
        env["PIP_CACHE_DIR"] = pip_cache
    # The machine's own package-index and certificate settings (pip, npm).
    env.update({k: v for k, v in os.environ.items() if k.startswith(("PIP_", "NPM_CONFIG_", "npm_config_")) or k in NETWORK_ENV})
    npmrc = Path(os.environ.get("HOME", "/root")) / ".npmrc"
    if npmrc.is_file() and "NPM_CONFIG_USERCONFIG" not in env:
        env["NPM_CONFIG_USERCONFIG"] = str(npmrc)
    # What a Debian system has already.
    sub.path("/etc/systemd/system").mkdir(parents=True)
    service = None
    server = None
    proxy_bin: Path | None = None
    ran: list[str] = []
    not_run: list[str] = []
    before = alice_notebooks()
    created_notebooks = before is None or not before.exists()
    try:
        for original in guide_commands(GUIDE.read_text()):
            command = sub(original)
            assert PATH_RE.search(command) is None, f"a path of the deployment left outside the test's folder: {command}"

            def bash(cmd: str = command) -> subprocess.CompletedProcess:
                return subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=COMMAND_S, env=env, cwd=base, check=False)

            words = original.split()
            if words[0] in ("useradd", "groupadd"):
                done = bash()
                # 9: the name exists already (the test accounts of other tests).
                assert done.returncode in (0, 9), (command, done.stderr)
            elif words[:2] == ["systemd-analyze", "verify"]:
                if shutil.which("systemd-analyze") is None:
                    print(f"not run (systemd-analyze is not installed; CI installs it): {command}")
                    not_run.append(command)
                    continue
                done = bash(command.replace("systemd-analyze verify", "systemd-analyze verify --man=no", 1))
                assert done.returncode == 0 and done.stdout.strip() == "" and done.stderr.strip() == "", (command, done.stdout, done.stderr)
            elif words[:2] == ["systemctl", "daemon-reload"]:
                assert sub.path("/etc/systemd/system/safe-data.service").is_file()
            elif words[:3] == ["systemctl", "enable", "--now"]:
                assert words[3] == "safe-data.service", command
                service = start_service(sub, base, env)
            elif words[:3] == ["npm", "install", "-g"]:
                if shutil.which("npm") is None:
                    print(f"not run (npm is not installed): {command}; the hub's spawner is stood in for")
                    not_run.append(command)
                    continue
                prefix = base / "node"
                done = bash(command.replace("npm install -g", f"npm install --no-audit --no-fund --prefix {prefix}", 1))
                assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
                proxy_bin = prefix / "node_modules" / ".bin"
                assert (proxy_bin / "configurable-http-proxy").exists(), sorted(p.name for p in prefix.rglob("*"))[:50]
            elif "/bin/jupyterhub -f" in original:
                hub = check_hub_config(sub, base, env)
                if proxy_bin is None:
                    server = start_alice_server(sub, base, env, hub)
                else:
                    server = Hub(sub, base, {**env, "PATH": f"{proxy_bin}:{env['PATH']}"}, command)
            elif words[0] == "VIRTUAL_ENV=/opt/jupyterhub" and "doctor" in words:
                if HUB_URL in original:
                    assert server is not None, "the guide probes alice's server before the hub starts it"
                    command = command.replace(sub(HUB_URL), server.url + "/").replace(TOKEN, server.token)
                check_doctor(bash(command), command, with_server=HUB_URL in original)
            else:
                assert words[0] in ("python3", "install", "usermod", "sed", "cat", "rm", "chown", "chmod", "VIRTUAL_ENV=/opt/jupyterhub") or words[0].startswith("/opt/jupyterhub/bin/"), f"a command this test does not know: {original}"
                done = bash()
                assert done.returncode == 0, (command, done.stdout[-3000:], done.stderr[-3000:])
                if original.endswith("jupyter kernelspec list"):
                    assert re.search(rf"^\s*safe-data\s+{re.escape(str(base))}/opt/jupyterhub/share/jupyter/kernels/safe-data$", done.stdout, re.M), done.stdout
                if "jupyter-config" in original:
                    assert not [w for w in done.stderr.splitlines() if w.startswith("warning")], done.stderr
            ran.append(command)

        assert service is not None and server is not None, "the guide starts neither the service nor the hub"
        # alice's kernel answers through the service, and the audit names her.
        r = server.call("POST", "api/kernels", json={"name": "safe-data"})
        assert r.status_code == 201, (r.status_code, server.log_text())
        kid = r.json()["id"]
        try:
            reply, iopub = execute(server, kid, "SELECT sex, COUNT(*) AS patients FROM patients GROUP BY sex ORDER BY sex")
        finally:
            server.call("DELETE", f"api/kernels/{kid}")
        assert reply["status"] == "ok", (reply, server.log_text())
        assert "patients" in json.dumps([m["content"] for m in iopub]), iopub
        state = sub.path("/var/lib/safe-data")
        audit = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines() if line.strip()]
        assert audit and audit[-1]["user"] == accounts.ALICE, audit[-1:]
        print(f"ran {len(ran)} commands of the guide; not run: {not_run or 'none'}")
    finally:
        if server is not None:
            server.stop()
        after = alice_notebooks()
        if created_notebooks and after is not None:
            shutil.rmtree(after, ignore_errors=True)
        if service is not None and service.poll() is None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=15)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait(timeout=15)
        shutil.rmtree(base, ignore_errors=True)


def start_service(sub: Substitute, base: Path, env: dict[str, str]) -> subprocess.Popen:
    """`systemctl enable --now safe-data.service`, without systemd: the
    unit's ExecStart= as its User=, in the folders it would make."""
    unit = unit_values(sub.path("/etc/systemd/system/safe-data.service").read_text())
    user, group = unit["User"], unit["Group"]
    assert user == accounts.SERVICE and unit["SupplementaryGroups"] == accounts.SCIENTISTS, unit
    assert unit["NoNewPrivileges"] == "yes" and unit["MemoryDenyWriteExecute"] == "yes" and unit["PrivateNetwork"] == "yes", unit
    config = sub.path("/etc/safe-data/hospital.toml")
    socket = sub.path("/run/safe-data/safe-data.sock")
    state = sub.path("/var/lib/safe-data")
    # The paths moved under $BASE are outside /run and /var/lib: the unit
    # lists them as writable instead of asking systemd to make them.
    assert unit["ReadWritePaths"].split() == [str(state), str(socket.parent)], unit["ReadWritePaths"]
    assert unit["ExecStart"].split()[1:] == ["serve", "--config", str(config)], unit["ExecStart"]
    # RuntimeDirectory=safe-data with RuntimeDirectoryMode=0755, as in the shipped unit.
    socket.parent.mkdir(parents=True, exist_ok=True)
    os.chown(socket.parent, accounts.uid(user), accounts.gid(group))
    socket.parent.chmod(0o755)
    wrapper = base / "mdwe_exec.py"
    wrapper.write_text(MDWE_EXEC)
    wrapper.chmod(0o644)
    log = base / "service.log"
    argv = unit["ExecStart"].split()
    pw = pwd.getpwnam(user)
    out = open(log, "wb")
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--no-new-privs", "--", "/usr/bin/python3", "-I", str(wrapper), unit["UMask"], *argv],
        stdout=out,
        stderr=out,
        stdin=subprocess.DEVNULL,
        env={"PATH": env["PATH"], "LANG": "C.UTF-8", "SAFE_DATA_LOG": "info"},
        cwd="/",
    )
    deadline = time.monotonic() + SERVICE_START_S
    while "Safe Data service listening" not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.1)
    return proc


def check_hub_config(sub: Substitute, base: Path, env: dict[str, str]) -> dict:
    """The hub's configuration loaded into JupyterHub's classes."""
    venv = sub.path("/opt/jupyterhub")
    check = base / "check_hub_config.py"
    check.write_text(HUB_CONFIG_CHECK)
    done = subprocess.run([str(venv / "bin" / "python"), str(check), str(sub.path("/etc/jupyterhub/jupyterhub_config.py"))], capture_output=True, text=True, timeout=COMMAND_S, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    hub = json.loads(done.stdout.strip().splitlines()[-1])
    assert hub["spawner_class"] == "jupyterhub.spawner.LocalProcessSpawner", hub
    assert hub["disable_user_config"] is True and hub["allowed_users"] == [accounts.ALICE] and hub["allow_named_servers"] is False, hub
    assert hub["cmd"] == [str(venv / "bin" / "jupyterhub-singleuser")] and Path(hub["cmd"][0]).is_file(), hub
    assert hub["notebook_dir"].startswith("~/"), hub
    return hub


def start_alice_server(sub: Substitute, base: Path, env: dict[str, str], hub: dict) -> AliceServer:
    """Without the hub's proxy: what LocalProcessSpawner starts for alice."""
    venv = sub.path("/opt/jupyterhub")
    home = Path(pwd.getpwnam(accounts.ALICE).pw_dir)
    notebooks = home / hub["notebook_dir"].removeprefix("~/")
    assert notebooks.is_dir(), notebooks
    user_config = base / "alice-user-config"  # disable_user_config: nothing of alice's own
    user_config.mkdir()
    os.chown(user_config, accounts.uid(accounts.ALICE), pwd.getpwnam(accounts.ALICE).pw_gid)
    server_env = {
        "PATH": env["PATH"],  # the hub's PATH: not the venv's bin
        "HOME": str(home),
        "USER": accounts.ALICE,
        "LANG": "C.UTF-8",
        "JUPYTER_CONFIG_DIR": str(user_config),
        # /etc/jupyter, moved under $BASE: a system configuration folder.
        "JUPYTER_CONFIG_PATH": str(sub.path("/etc/jupyter")),
        **hub["environment"],
    }
    # jupyterhub-singleuser needs a hub to talk to; jupyter-server is the server it runs.
    exe = venv / "bin" / "jupyter-server"
    return AliceServer(base, exe, server_env, [f"--ServerApp.root_dir={notebooks}", f"--ServerApp.default_url={hub['default_url']}"], accounts.ALICE, cwd=notebooks)


def check_doctor(done: subprocess.CompletedProcess, command: str, with_server: bool) -> None:
    lines = doctor_lines(done.stdout)
    holes = [t for k, t in lines if k == "HOLE"]
    if any(landlock_hole(h) for h in holes):  # without Landlock, the self-test escapes
        holes_left = [h for h in holes if not landlock_hole(h) and not h.startswith("self-test: ")]
    else:
        holes_left = holes
    assert holes_left == [] and not any(k == "ERROR" for k, _ in lines), (command, done.stdout, done.stderr)
    assert done.returncode == (1 if holes else 0), (command, done.stdout, done.stderr)
    want = [f"{accounts.ALICE} can neither read nor write the sources and state files", f"the socket belongs to the group `{accounts.SCIENTISTS}`"]
    if with_server:
        want += list(SERVER_OK)
    for text in want:
        assert any(k == "ok" and t.startswith(text) for k, t in lines), (text, done.stdout)


def test_the_unit_runs_under_memory_deny_write_execute(tmp_path: Path):
    """MemoryDenyWriteExecute=yes is safe: polars (a query with a join, a sort and
    aggregates) and jemalloc run under PR_SET_MDWE, which refuses the
    same mappings; a W+X mapping in the same setting is refused (the rule
    is really on)."""
    from conftest import binary

    wrapper = tmp_path / "mdwe_exec.py"
    wrapper.write_text(MDWE_EXEC)
    demo = tmp_path / "demo"
    done = subprocess.run([str(binary()), "demo", str(demo), "--patients", "2000"], capture_output=True, text=True, timeout=COMMAND_S, check=False)
    assert done.returncode == 0, done.stderr
    sql = "SELECT p.sex, COUNT(*) AS n, AVG(p.age) AS m, STDDEV(p.age) AS s FROM patients p JOIN regions r ON p.region = r.region GROUP BY p.sex ORDER BY p.sex"
    done = subprocess.run([sys.executable, str(wrapper), "077", str(binary()), "query", "--config", str(demo / "safe-data.toml"), "--format", "json", sql], capture_output=True, text=True, timeout=COMMAND_S, check=False)
    if "prctl(PR_SET_MDWE) failed" in done.stderr:
        pytest.skip(f"this kernel has no PR_SET_MDWE (Linux 6.3): {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert '"sex"' in done.stdout, done.stdout
    probe = "import mmap\ntry:\n    mmap.mmap(-1, 4096, prot=7)\n    print('allowed')\nexcept OSError:\n    print('refused')\n"
    done = subprocess.run([sys.executable, str(wrapper), "077", sys.executable, "-c", probe], capture_output=True, text=True, timeout=COMMAND_S, check=False)
    assert done.stdout.strip() == "refused", done.stdout + done.stderr


def syscall_set(spec: str) -> set[str]:
    """The system calls of a SystemCallFilter= value (groups expanded by
    systemd-analyze itself)."""
    names: set[str] = set()
    seen: set[str] = set()

    def expand(group: str) -> None:
        out = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True, timeout=60, check=True).stdout
        for line in out.splitlines()[1:]:
            word = line.strip()
            if not word or word.startswith("#"):
                continue
            if word.startswith("@"):
                if word not in seen:
                    seen.add(word)
                    expand(word)
            else:
                names.add(word)

    for word in spec.split():
        if word.startswith("@"):
            expand(word)
        else:
            names.add(word)
    return names


def test_the_service_makes_no_system_call_the_unit_filters(tmp_path: Path):
    """The unit's SystemCallFilter= against the calls the service really makes
    (strace -f): start-up, Landlock, the worker pool (fork and exec), a
    query from a service-mode kernel, shutdown. A call outside the filter
    would fail with EPERM under systemd."""
    from jupyter_client.manager import start_new_kernel

    from conftest import binary

    if shutil.which("strace") is None or shutil.which("systemd-analyze") is None:
        pytest.skip("strace and systemd-analyze are needed (CI installs them)")
    filters = [line.split("=", 1)[1] for line in (REPO / "deploy" / "safe-data.service").read_text().splitlines() if line.startswith("SystemCallFilter=")]
    allowed = set().union(*(syscall_set(f) for f in filters if not f.startswith("~")))
    denied = set().union(*(syscall_set(f[1:]) for f in filters if f.startswith("~")))
    assert allowed and denied and "execve" in allowed and "mount" in denied

    demo = tmp_path / "demo"
    done = subprocess.run([str(binary()), "demo", str(demo), "--patients", "2000"], capture_output=True, text=True, timeout=COMMAND_S, check=False)
    assert done.returncode == 0, done.stderr
    (demo / "state").mkdir(mode=0o700, exist_ok=True)
    (demo / "state").chmod(0o700)
    sock = tmp_path / "sd.sock"
    with (demo / "safe-data.toml").open("a") as f:
        f.write(f'\n[service]\nsocket = "{sock}"\nworkers = 1\n')
    trace = tmp_path / "trace"
    log = tmp_path / "service.log"
    with open(log, "wb") as out:
        service = subprocess.Popen(["strace", "-f", "-qq", "-o", str(trace), str(binary()), "serve", "--config", str(demo / "safe-data.toml")], stdout=out, stderr=out, env={**os.environ, "SAFE_DATA_LOG": "info"})
    km = kc = None
    try:
        deadline = time.monotonic() + SERVICE_START_S
        while "Safe Data service listening" not in log.read_text(errors="replace"):
            assert service.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        kernels = tmp_path / "jupyter" / "kernels" / "sd-strace"
        kernels.mkdir(parents=True)
        spec = {"argv": [str(binary()), "kernel", "--connection-file", "{connection_file}", "--service", str(sock)], "display_name": "strace", "language": "sql"}
        (kernels / "kernel.json").write_text(json.dumps(spec))
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = str(tmp_path / "jupyter")
        try:
            km, kc = start_new_kernel(kernel_name="sd-strace", startup_timeout=60)
        finally:
            if old is None:
                del os.environ["JUPYTER_PATH"]
            else:
                os.environ["JUPYTER_PATH"] = old
        reply = kc.execute_interactive("SELECT sex, COUNT(*) AS n, AVG(age) AS a FROM patients GROUP BY sex ORDER BY sex", timeout=60, output_hook=lambda m: None)
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        if kc is not None:
            kc.stop_channels()
        if km is not None:
            km.shutdown_kernel(now=True)
        # Stop the service itself (strace's child); strace ends with it.
        children = Path(f"/proc/{service.pid}/task/{service.pid}/children")
        pids = [int(p) for p in children.read_text().split()] if children.exists() else []
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            service.kill()
            service.wait(timeout=15)
    made = set(re.findall(r"^\d+\s+([a-z0-9_]+)\(", trace.read_text(errors="replace"), re.M))
    # The trace covers the worker's exec and the socket's accept (and Landlock where the kernel has it).
    assert {"execve", "accept4", "bind"} <= made, sorted(made)
    print(f"{len(made)} system calls: {' '.join(sorted(made))}")
    outside = sorted(s for s in made if s not in allowed or s in denied)
    assert outside == [], f"the service makes system calls the unit's filter refuses: {outside}"
