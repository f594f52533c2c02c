"""Issue 14: the `safe-data` wheel, installed with pip into a fresh virtual
environment with JupyterLab, works as a Jupyter kernel the way ipykernel does.

The wheel is $SAFE_DATA_WHEEL when set (scripts/test.sh builds it once after
the cargo build), else this module builds it with scripts/build_wheel.sh.

Every command runs with a clean environment: PATH is /usr/bin:/bin (neither
the venv's bin folder nor the repository's target/), HOME is a fresh folder,
no JUPYTER_* or VIRTUAL_ENV variables. The venv's programs are started by
their absolute paths, as `.venv/bin/jupyter lab` is without activating the
venv: the kernelspec's "python" must then become the server's own interpreter
(jupyter_client's rule) and the launcher must find the binary next to it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_S = 1800
PIP_S = 600
RUN_S = 300
KERNEL = "safe-data"
PACKAGES = ["jupyterlab", "nbclient", "nbformat"]


def workspace_version() -> str:
    m = re.search(r'^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"', (REPO / "Cargo.toml").read_text(), re.M | re.S)
    assert m, "no [workspace.package] version in Cargo.toml"
    return m.group(1)


def run(args: list[str], env: dict[str, str], timeout: float = RUN_S, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)


@pytest.fixture(scope="module")
def wheel() -> Path:
    given = os.environ.get("SAFE_DATA_WHEEL")
    if given:
        path = Path(given)
        assert path.is_file(), f"SAFE_DATA_WHEEL={given} does not exist"
        return path.resolve()
    done = subprocess.run([str(REPO / "scripts" / "build_wheel.sh")], capture_output=True, text=True, timeout=BUILD_S, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return Path(done.stdout.strip().splitlines()[-1])


class Venv:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "venv"
        self.bin = self.root / "bin"
        self.home = base / "home"
        self.home.mkdir()

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: the venv is not activated and not on PATH."""
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8"}
        if "PIP_INDEX_URL" in os.environ:  # the machine's package index, if it has its own
            env["PIP_INDEX_URL"] = os.environ["PIP_INDEX_URL"]
        env.update(extra)
        return env


@pytest.fixture(scope="module")
def venv(wheel: Path) -> Iterator[Venv]:
    base = Path(tempfile.mkdtemp(prefix="sd-wheel-"))
    try:
        v = Venv(base)
        done = run([sys.executable, "-m", "venv", str(v.root)], env=v.env())
        assert done.returncode == 0, done.stderr
        # The user's pip cache (HOME is the real one here) makes this quick.
        pip_env = v.env(HOME=os.environ.get("HOME", str(v.home)))
        done = run([str(v.bin / "pip"), "install", "--disable-pip-version-check", "--quiet", str(wheel), *PACKAGES], env=pip_env, timeout=PIP_S)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        yield v
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_wheel_is_tagged_for_linux_x86_64(wheel: Path):
    m = re.fullmatch(r"safe_data-(?P<version>[^-]+)-py3-none-(?P<platform>.+)\.whl", wheel.name)
    assert m, wheel.name
    assert m.group("version") == workspace_version()
    # manylinux_2_X where the binary's glibc symbols allow it (maturin's audit).
    assert re.fullmatch(r"manylinux_2_\d+_x86_64|linux_x86_64", m.group("platform")), m.group("platform")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    data = f"safe_data-{workspace_version()}.data"
    for name in (
        f"{data}/scripts/safe-data",
        f"{data}/data/share/jupyter/kernels/safe-data/kernel.json",
        f"{data}/data/share/jupyter/kernels/safe-data/logo-32x32.png",
        f"{data}/data/share/jupyter/kernels/safe-data/logo-64x64.png",
        f"{data}/data/share/jupyter/kernels/safe-data/logo-svg.svg",
        "safe_data/__main__.py",
    ):
        assert name in names, (name, sorted(names))


def test_pip_installs_the_command_and_the_kernelspec(venv: Venv):
    exe = venv.bin / "safe-data"
    assert exe.is_file() and os.access(exe, os.X_OK), sorted(p.name for p in venv.bin.iterdir())
    done = run([str(exe), "--version"], env=venv.env())
    assert done.returncode == 0 and done.stdout.split() == ["safe-data", workspace_version()], done.stdout + done.stderr
    done = run([str(venv.bin / "jupyter"), "kernelspec", "list", "--json"], env=venv.env(), cwd=venv.home)
    assert done.returncode == 0, done.stderr
    specs = json.loads(done.stdout)["kernelspecs"]
    assert KERNEL in specs, specs
    assert Path(specs[KERNEL]["resource_dir"]) == venv.root / "share" / "jupyter" / "kernels" / KERNEL, specs[KERNEL]
    spec = specs[KERNEL]["spec"]
    assert spec["argv"][:4] == ["python", "-I", "-m", "safe_data"], spec["argv"]
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "local-provisioner", spec["metadata"]
    assert isinstance(spec["metadata"]["safe_data"], dict)
    # The human-readable listing too (what the README tells an owner to run).
    done = run([str(venv.bin / "jupyter"), "kernelspec", "list"], env=venv.env(), cwd=venv.home)
    assert re.search(rf"^\s*{KERNEL}\s+{re.escape(str(venv.root))}/share/jupyter/kernels/{KERNEL}$", done.stdout, re.M), done.stdout


NOTEBOOK_RUNNER = textwrap.dedent(
    """
    import json, sys
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(sys.argv[1], as_version=4)
    # Cells tagged raises-exception may fail (nbclient's rule); any other error stops the run.
    NotebookClient(nb, kernel_name=sys.argv[2], timeout=120, startup_timeout=60, allow_errors=False).execute()
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code" or not "".join(cell.source).strip():
            continue
        tags = cell.get("metadata", {}).get("tags", [])
        text = "\\n".join(o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in cell.outputs)
        cells.append({"tagged": "raises-exception" in tags, "errors": sum(o.output_type == "error" for o in cell.outputs), "outputs": len(cell.outputs), "text": text})
    print(json.dumps(cells))
    """
)


@pytest.mark.parametrize("notebook", sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb")))
def test_demo_notebook_runs_on_the_installed_kernelspec(venv: Venv, notebook: str, tmp_path: Path):
    """`safe-data demo` from the wheel's binary, then the notebook through
    nbclient in the venv's Python (not activated), the kernel finding the
    owner's configuration through SAFE_DATA_CONFIG."""
    demo = tmp_path / "demo"
    done = run([str(venv.bin / "safe-data"), "demo", str(demo)], env=venv.env())
    assert done.returncode == 0, done.stderr
    runner = tmp_path / "run_notebook.py"
    runner.write_text(NOTEBOOK_RUNNER)
    env = venv.env(SAFE_DATA_CONFIG=str(demo / "safe-data.toml"))
    done = run([str(venv.bin / "python"), str(runner), str(REPO / "notebooks" / notebook), KERNEL], env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cells = json.loads(done.stdout.strip().splitlines()[-1])
    assert cells, "the notebook has no code cell"
    for i, cell in enumerate(cells):
        assert cell["outputs"] > 0, (i, cell)
        assert bool(cell["errors"]) == cell["tagged"], (i, cell)
    # The kernel answered from the demo hospital (SHOW TABLES or a query on it).
    assert any("patients" in c["text"] for c in cells), cells


KERNEL_RUNNER = textwrap.dedent(
    """
    import json, sys
    from jupyter_client.manager import start_new_kernel
    km, kc = start_new_kernel(kernel_name=sys.argv[1], startup_timeout=60)
    try:
        reply = kc.execute_interactive(sys.argv[2], timeout=60, output_hook=lambda m: None)
        print(json.dumps(reply["content"]))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    """
)


def test_launcher_finds_the_source(venv: Venv, tmp_path: Path):
    """The kernel's data source without --config/--service: an error naming
    the three ways when there is none, SAFE_DATA_SERVICE, and the well-known
    file {sys.prefix}/etc/safe-data/safe-data.toml."""
    launcher = [str(venv.bin / "python"), "-I", "-m", "safe_data", "kernel", "--connection-file", str(tmp_path / "none.json")]
    done = run(launcher, env=venv.env(), cwd=tmp_path)
    assert done.returncode != 0 and all(w in done.stderr for w in ("SAFE_DATA_SERVICE", "SAFE_DATA_CONFIG", "etc/safe-data/safe-data.toml")), done.stderr
    done = run(launcher, env=venv.env(SAFE_DATA_CONFIG="/x.toml", SAFE_DATA_SERVICE="/x.sock"), cwd=tmp_path)
    assert done.returncode != 0 and "both" in done.stderr, done.stderr

    runner = tmp_path / "run_kernel.py"
    runner.write_text(KERNEL_RUNNER)
    # A service that does not exist: the kernel starts and says so per cell.
    sock = tmp_path / "nothing-listens.sock"
    done = run([str(venv.bin / "python"), str(runner), KERNEL, "SHOW TABLES"], env=venv.env(SAFE_DATA_SERVICE=str(sock)), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    reply = json.loads(done.stdout.strip().splitlines()[-1])
    assert reply["status"] == "error" and "service" in json.dumps(reply).lower(), reply

    # The well-known file of the environment.
    etc = venv.root / "etc" / "safe-data"
    done = run([str(venv.bin / "safe-data"), "demo", str(etc), "--patients", "500"], env=venv.env())
    assert done.returncode == 0, done.stderr
    try:
        done = run([str(venv.bin / "python"), str(runner), KERNEL, "SHOW TABLES"], env=venv.env(), cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        reply = json.loads(done.stdout.strip().splitlines()[-1])
        assert reply["status"] == "ok", reply
    finally:
        shutil.rmtree(etc, ignore_errors=True)


def test_a_file_in_the_notebooks_folder_cannot_replace_the_launcher(venv: Venv, tmp_path: Path):
    """Jupyter starts the kernel in the notebook's folder; `python -I` keeps
    that folder off sys.path, so a `safe_data.py` saved there is not run."""
    marker = tmp_path / "ran"
    (tmp_path / "safe_data.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (tmp_path / "safe_data").mkdir()
    (tmp_path / "safe_data" / "__main__.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    done = run([str(venv.bin / "python"), "-I", "-m", "safe_data", "--version"], env=venv.env(PYTHONPATH=str(tmp_path)), cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.split() == ["safe-data", workspace_version()], done.stdout + done.stderr
    assert not marker.exists()
    # The control: without -I the folder's module is what runs.
    run([str(venv.bin / "python"), "-m", "safe_data", "--version"], env=venv.env(), cwd=tmp_path)
    assert marker.exists()
