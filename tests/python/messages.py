"""Reading a kernel's shell replies and iopub stream, shared by the Python-driven tests."""

from __future__ import annotations

import time
from queue import Empty
from typing import Any, Callable


def shell_reply(kc, msg_id: str, deadline: float, context: Callable[[], str] = lambda: "") -> dict[str, Any]:
    """The shell reply whose parent is `msg_id` (other replies are skipped), read before `deadline`
    (time.monotonic()); `context()` is appended to the failure message (a kernel's log, say)."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no shell reply to {msg_id} in time\n{context()}")
        try:
            msg = kc.get_shell_msg(timeout=remaining)
        except Empty:
            continue
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def iopub_until_idle(kc, msg_id: str, deadline: float, context: Callable[[], str] = lambda: "") -> list[dict[str, Any]]:
    """The iopub messages whose parent is `msg_id`, up to and including its `idle` status, read before
    `deadline` (time.monotonic()); `context()` is appended to the failure message (a kernel's log, say)."""
    msgs: list[dict[str, Any]] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no idle status for {msg_id} in time; got {[m['msg_type'] for m in msgs]}\n{context()}")
        try:
            msg = kc.get_iopub_msg(timeout=remaining)
        except Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        msgs.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return msgs
