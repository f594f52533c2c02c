"""Session set-up of the Python-driven tests.

Before any test is collected (jupyter_kernel_test starts its kernel in
``setUpClass``), this:

1. finds the kernel binary: ``$SAFE_DATA_BIN``, else ``target/debug/safe-data``;
2. writes the demo hospital (``safe-data demo tests/.work/demo``) unless it is
   already there. Its state folder (history, audit log) is kept: several runs
   may share it at once (two developers, or CI and a developer), and no test
   depends on an empty history;
3. installs the kernelspec ``safe-data-test`` into this Python environment
   (``--prefix sys.prefix``), where jupyter_client and nbclient look for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "tests" / ".work"
DEMO = WORK / "demo"
CONFIG = DEMO / "safe-data.toml"
KERNEL_NAME = "safe-data-test"
DISPLAY_NAME = "Safe Data (test)"

# Every wait in the suite is bounded; these bound the set-up commands.
DEMO_TIMEOUT_S = 600
INSTALL_TIMEOUT_S = 120


def binary() -> Path:
    return Path(os.environ.get("SAFE_DATA_BIN", REPO / "target" / "debug" / "safe-data")).resolve()


def _run(args: list[str], timeout: float) -> None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise pytest.UsageError(f"`{' '.join(args)}` did not finish within {timeout} s") from e
    if done.returncode != 0:
        raise pytest.UsageError(
            f"`{' '.join(args)}` failed with exit code {done.returncode}:\n{done.stdout}{done.stderr}"
        )


def pytest_configure(config: pytest.Config) -> None:
    # `pytest --help` and the like need no kernel.
    if config.option.help or config.option.version:
        return
    exe = binary()
    if not exe.is_file() or not os.access(exe, os.X_OK):
        raise pytest.UsageError(
            f"the safe-data binary is not at {exe}: run `cargo build --bin safe-data` first "
            "(or set SAFE_DATA_BIN)"
        )
    WORK.mkdir(parents=True, exist_ok=True)
    if not CONFIG.is_file():
        # Written aside and renamed, so a run started meanwhile never sees a
        # half-written demo.
        scratch = WORK / f"demo.tmp-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            _run([str(exe), "demo", str(scratch)], DEMO_TIMEOUT_S)
            try:
                scratch.rename(DEMO)
            except OSError:
                if not CONFIG.is_file():  # not another run's demo: a real failure
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    _run(
        [
            str(exe),
            "install",
            "--config",
            str(CONFIG),
            "--name",
            KERNEL_NAME,
            "--display-name",
            DISPLAY_NAME,
            "--prefix",
            sys.prefix,
        ],
        INSTALL_TIMEOUT_S,
    )
    # jupyter_client looks in JUPYTER_PATH before the user's data dir and
    # sys.prefix: put this environment first so a stale `safe-data-test`
    # kernelspec elsewhere (say in ~/.local/share/jupyter) cannot win.
    share = str(Path(sys.prefix) / "share" / "jupyter")
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if share not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([share, *paths])


@pytest.fixture(scope="session")
def kernel_name() -> str:
    return KERNEL_NAME


@pytest.fixture(scope="session")
def demo_config() -> Path:
    return CONFIG


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
