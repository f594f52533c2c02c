"""The history and what is stored of a cell, against real kernels (issue 20, findings 8-10; issue 11:
one user's history is invisible to the others).

- Users whose names differ only in punctuation (``alice.smith`` and ``alice_smith``) shared one
  history file: each must see only their own cells.
- A cell over the 256 KiB cap was refused but written whole to the history and to the audit log
  (40 MB per cell): only its digest may be stored, and the audit chain must still verify.
- A history search with a pathological pattern over large stored cells blocked both runtime threads
  and the lock the evaluation needs: while such searches run, the heartbeat, ``kernel_info`` and a
  cell that is stored in the history must keep answering.

The kernels run embedded (``--config``), so the user is ``JUPYTERHUB_USER``. Every wait is bounded.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from test_hostile import (
    HEALTHY_WITHIN_S,
    Kernel,
    assert_serves,
    demo_config_copy,
    good_execute,
    launch,
    new_header,
    recv_reply,
    safe_data_binary,
    signed,
    dumps,
)

# The kernel's cell cap (safe_data_lang::parse::MAX_CELL_BYTES) and history bounds (kernel/src/history.rs).
MAX_CELL_BYTES = 256 * 1024
MAX_PATTERN_CHARS = 255
MAX_BYTES_PER_USER = 8 << 20
# Searches in flight at once on each of shell and control.
SEARCHES_PER_CHANNEL = 4
# The longest a heartbeat echo may take while searches run (a blocked runtime took > 3 s).
HEARTBEAT_WITHIN_S = 1.0
# How long the searches themselves may take in all (a debug build reads 8 MiB per search).
SEARCHES_WITHIN_S = 120.0


@pytest.fixture(scope="module")
def history_config(demo_config: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The demo configuration with a state folder of this module's own: (config, state folder)."""
    work = tmp_path_factory.mktemp("history")
    state = work / "state"
    return demo_config_copy(demo_config, work / "history.toml", state), state


@pytest.fixture
def start(repo_root: Path, history_config: tuple[Path, Path], tmp_path: Path) -> Iterator[Callable[[str], Kernel]]:
    """Starts a kernel for a user (``JUPYTERHUB_USER``); stops them all afterwards."""
    started: list[Kernel] = []

    def start_for(user: str) -> Kernel:
        kernel = launch(safe_data_binary(repo_root), history_config[0], tmp_path, env={"JUPYTERHUB_USER": user})
        started.append(kernel)
        return kernel

    yield start_for
    for kernel in started:
        kernel.close()


def history(k: Kernel, timeout: float = 30.0, **query: Any) -> dict[str, Any]:
    """The content of the kernel's history_reply to `query` (raw sources, no outputs)."""
    sock = k.dealer("shell")
    header = new_header("history_request")
    content = {"output": False, "raw": True, **query}
    sock.send_multipart(signed(k.key, [dumps(header), b"{}", b"{}", dumps(content)]))
    reply = recv_reply(k, sock, header["msg_id"], timeout=timeout)
    assert reply["msg_type"] == "history_reply", reply
    return reply["content"]


def sources(k: Kernel) -> list[str]:
    content = history(k, hist_access_type="tail", n=1000)
    assert content["status"] == "ok", content
    return [entry[2] for entry in content["history"]]


def run(k: Kernel, code: str, within: float = 30.0) -> dict[str, Any]:
    reply, _ = good_execute(k, code, time.monotonic() + within, store_history=True)
    return reply["content"]


@pytest.mark.parametrize("first, second", [("alice.smith", "alice_smith"), ("john.doe@uni.edu", "john_doe@uni_edu")])
def test_users_whose_names_differ_in_punctuation_do_not_share_a_history(start, first, second):
    """Finding 8: both names mapped to one file (`alice_smith.jsonl`): each read the other's cells."""
    a = start(first)
    secret_a = f"SELECT 1 AS secret_{uuid.uuid4().hex};"
    assert run(a, secret_a)["status"] == "ok"
    b = start(second)  # opened after `first` stored its cell
    assert secret_a not in sources(b), f"{second!r} reads the history of {first!r}"
    secret_b = f"SELECT 2 AS secret_{uuid.uuid4().hex};"
    assert run(b, secret_b)["status"] == "ok"
    assert secret_b in sources(b)
    assert secret_b not in sources(a), f"{first!r} reads the history of {second!r}"
    assert secret_a in sources(a)
    search = history(b, hist_access_type="search", pattern="*secret_*", unique=True)
    assert search["status"] == "ok" and [e[2] for e in search["history"]] == [secret_b], search


def test_an_oversized_cell_is_stored_only_as_its_digest(start, history_config, repo_root):
    """Finding 9: a refused 40 MB cell was written whole to the history and to the audit log shared by
    all users (5 cells: 200 MB each). Scaled down: a cell just over the 256 KiB cap."""
    config, state = history_config
    k = start("oversized")
    marker = uuid.uuid4().hex  # 32 characters, repeated: any run of them on disk is a stored copy
    cell = "SELECT '" + marker * (MAX_CELL_BYTES // len(marker)) + "';"
    assert len(cell.encode()) > MAX_CELL_BYTES
    content = run(k, cell)
    assert content["status"] == "error", content
    placeholder = f"<{len(cell.encode())} bytes not stored; sha256 {hashlib.sha256(cell.encode()).hexdigest()}>"

    assert sources(k)[-1] == f"-- {placeholder}"
    audit = (state / "audit.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in audit]
    mine = [r for r in records if r["statement"] == placeholder]
    assert len(mine) == 1 and mine[0]["not_stored"] == ["statement"] and mine[0]["verdict"] == "refused", mine
    assert max(len(line) for line in audit) < 64 * 1024, "an audit line holds the refused cell"
    run_of_markers = (marker * 64).encode()
    for f in sorted(state.rglob("*")):
        if f.is_file():
            assert run_of_markers not in f.read_bytes(), f"{f.name} holds the refused cell"
    verified = subprocess.run([str(safe_data_binary(repo_root)), "audit", "verify", "--config", str(config)],
                              capture_output=True, text=True, timeout=60, check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert_serves(k)


def heartbeat_delay(k: Kernel, sock: zmq.Socket, limit: float) -> float:
    """Seconds until the heartbeat echoes a ping (`limit` + 1 when it does not within `limit`)."""
    started = time.monotonic()
    sock.send(b"ping")
    if not sock.poll(int(limit * 1000)):
        return limit + 1
    sock.recv()
    return time.monotonic() - started


def test_a_pathological_history_search_leaves_the_kernel_responsive(start):
    """Finding 10: `*` + `A` x 3000 + `B` over a stored 4 MB cell, on shell and control at once, left the
    heartbeat silent for > 3 s and held the lock the evaluation needs. Here the worst a search may
    do: the longest pattern accepted over the most history a user keeps (8 MiB, in cells just under
    the cap), several at once on shell and control, while the good client pings, asks kernel_info
    and runs a cell that is stored in the history (so it appends while the searches read)."""
    k = start("searcher")
    cell = "B" + "A" * (MAX_CELL_BYTES - 1)
    for _ in range(MAX_BYTES_PER_USER // MAX_CELL_BYTES):
        run(k, cell, within=60)  # not SQL: refused, but stored
    # Over the pattern cap: a clear error at once, no search.
    too_long = history(k, hist_access_type="search", pattern="*" + "A" * 3000 + "B")
    assert too_long["status"] == "error" or too_long["history"] == [], too_long

    pattern = "*" + "A" * (MAX_PATTERN_CHARS - 2) + "B"
    pending: list[tuple[zmq.Socket, str]] = []
    for channel in ("shell", "control"):
        sock = k.dealer(channel)
        for _ in range(SEARCHES_PER_CHANNEL):
            header = new_header("history_request")
            content = {"hist_access_type": "search", "pattern": pattern, "output": False, "raw": True}
            sock.send_multipart(signed(k.key, [dumps(header), b"{}", b"{}", dumps(content)]))
            pending.append((sock, header["msg_id"]))

    hb = k.socket(zmq.REQ, "hb")
    delays = [heartbeat_delay(k, hb, HEARTBEAT_WITHIN_S * 3) for _ in range(5)]
    assert max(delays) <= HEARTBEAT_WITHIN_S, f"heartbeat echoes took {delays} s while history searches ran\n{k.log_tail()}"
    started = time.monotonic()
    msg_id = k.kc.kernel_info()
    k.good_ids.add(msg_id)
    info = k.kc.get_shell_msg(timeout=HEALTHY_WITHIN_S)
    assert info["parent_header"]["msg_id"] == msg_id and time.monotonic() - started <= HEALTHY_WITHIN_S
    # The evaluation appends to the history while the searches read it: it must not wait for them.
    started = time.monotonic()
    assert run(k, "SELECT COUNT(*) FROM regions;", within=HEALTHY_WITHIN_S)["status"] == "ok"
    took = time.monotonic() - started
    assert took <= HEALTHY_WITHIN_S, f"a stored cell took {took:.1f} s while history searches ran"
    delays.append(heartbeat_delay(k, hb, HEARTBEAT_WITHIN_S * 3))
    assert max(delays) <= HEARTBEAT_WITHIN_S, f"heartbeat echoes took {delays} s while history searches ran"

    deadline = time.monotonic() + SEARCHES_WITHIN_S
    for sock, search_id in pending:
        reply = recv_reply(k, sock, search_id, timeout=max(1.0, deadline - time.monotonic()))
        assert reply["content"]["status"] == "ok" and reply["content"]["history"] == [], reply["content"].get("status")
    assert_serves(k)
