"""Hostile *text*: cells and editor requests that used to cost unbounded parse or bind work.

The protocol tests (`test_hostile.py`) send malformed messages; these send well-formed ones whose
code is built to make the parser or binder recurse or loop: repeated CHART headers (each one used to
re-parse the rest, recursing once per header), long WITH chains (bound in cubic time), operator
chains, deep parentheses and subqueries. `is_complete_request` (sent by `jupyter console` on every
Enter), `complete_request` and `inspect_request` run on the kernel's socket tasks, whose stacks are
small; an execute runs on the evaluation thread, where binding cannot be interrupted. Each must get
its reply (a clear error for an execute) within a hang guard, and the kernel must keep answering.

The bounds themselves (`MAX_NESTING`, `MAX_CTES`, `MAX_STATEMENT_SIZE`, ...) are asserted by the
Rust tests next to them (lang/src/parse.rs, lang/src/bind/mod.rs, lang/src/services.rs); here they
are seen from a client: the error names the bound.

Every wait is bounded.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

# Fixtures and helpers of the protocol tests (imported, so pytest registers the fixtures here too).
from test_hostile import (  # noqa: F401 - fixtures are used by name
    _shared,
    assert_serves,
    dumps,
    good_execute,
    hostile_config,
    kernel,
    new_header,
    recv_reply,
    shared_kernel,
    signed,
    start_kernel,
)

# A hang guard, not a performance target: a debug build answers these in well under a second.
REPLY_WITHIN_S = 20.0

QUERY = "SELECT region, COUNT(*) AS n FROM regions GROUP BY region"
# Finding 1: 3 KB, sent by `jupyter console` as is_complete on Enter.
CHART_300 = "CHART BAR " * 300 + QUERY
# Finding 2: 120 KB, under the 256 KiB cell cap.
CHART_12000 = "CHART BAR " * 12000 + QUERY + ";"
# Finding 12: a 3,000-link WITH chain (~120 KB).
CTE_CHAIN = (
    "WITH c0 AS (SELECT region FROM regions), "
    + ", ".join(f"c{i} AS (SELECT region FROM c{i - 1})" for i in range(1, 3000))
    + " SELECT COUNT(*) AS n FROM c2999;"
)
# Each table uses the previous one twice: the inlined query doubles at every link.
CTE_DOUBLING = (
    "WITH c0 AS (SELECT region FROM regions), "
    + ", ".join(f"c{i} AS (SELECT a.region FROM c{i - 1} a JOIN c{i - 1} b ON a.region = b.region)"
                for i in range(1, 40))
    + " SELECT COUNT(*) AS n FROM c39;"
)
LONG_CHAIN = "SELECT " + " + ".join(["1"] * 60_000) + " AS x;"
UNION_CHAIN = " UNION ALL ".join(["SELECT 1 AS x"] * 10_000) + ";"

def _nested_chains(levels: int, length: int) -> str:
    """`((1 + 1 ...) + 1 ...)`: each level short, but a chain puts its first operand as deep as it is long."""
    inner = "1"
    for _ in range(levels):
        inner = "(" + inner + " + 1" * length + ")"
    return "SELECT " + inner + " AS x;"


NESTED_CHAINS = _nested_chains(40, 200)

EDITOR_REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "is_complete_chart_300": ("is_complete_request", {"code": CHART_300}),
    "is_complete_chart_12000": ("is_complete_request", {"code": CHART_12000}),
    "complete_chart_12000": ("complete_request", {"code": CHART_12000, "cursor_pos": len(CHART_12000) - 1}),
    "inspect_chart_12000": ("inspect_request", {"code": CHART_12000, "cursor_pos": len(CHART_12000) - 5,
                                                "detail_level": 0}),
    "is_complete_cte_chain": ("is_complete_request", {"code": CTE_CHAIN}),
    "complete_cte_chain": ("complete_request", {"code": CTE_CHAIN, "cursor_pos": len(CTE_CHAIN) - 1}),
    "inspect_cte_chain": ("inspect_request", {"code": CTE_CHAIN, "cursor_pos": 30, "detail_level": 0}),
    "is_complete_long_chain": ("is_complete_request", {"code": LONG_CHAIN}),
    "is_complete_union_chain": ("is_complete_request", {"code": UNION_CHAIN}),
    "is_complete_nested_chains": ("is_complete_request", {"code": NESTED_CHAINS}),
    # Longer than any cell may be: answered without reading it all.
    "is_complete_oversized": ("is_complete_request", {"code": "SELECT 1 + " * 100_000 + "1;"}),
    "complete_oversized": ("complete_request", {"code": "SELECT " + "(" * 400_000, "cursor_pos": 400_007}),
}


def _request(kernel, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
    sock = kernel.dealer("shell")
    header = new_header(msg_type)
    sock.send_multipart(signed(kernel.key, [dumps(header), b"{}", b"{}", dumps(content)]))
    return recv_reply(kernel, sock, header["msg_id"], timeout=REPLY_WITHIN_S)


@pytest.mark.parametrize("case", sorted(EDITOR_REQUESTS))
def test_hostile_editor_request_is_answered(shared_kernel, case):
    msg_type, content = EDITOR_REQUESTS[case]
    reply = _request(shared_kernel, msg_type, content)
    assert reply["msg_type"] == msg_type.replace("_request", "_reply")
    if msg_type == "is_complete_request":
        # None of these cells can run: a second CHART header, too deep, too long. A chain of
        # CTEs parses (is_complete only parses): binding refuses it when it runs.
        expected = "complete" if case == "is_complete_cte_chain" else "invalid"
        assert reply["content"]["status"] == expected, reply["content"]
    else:
        assert reply["content"]["status"] == "ok", reply["content"]
    assert_serves(shared_kernel)


def test_the_editor_requests_of_a_session_are_answered_in_a_row(kernel):
    """`jupyter console` sends is_complete on every Enter: many hostile ones in a row, then a good cell."""
    for _ in range(20):
        reply = _request(kernel, "is_complete_request", {"code": CHART_300})
        assert reply["content"]["status"] == "invalid", reply["content"]
    assert _request(kernel, "is_complete_request", {"code": QUERY + ";"})["content"]["status"] == "complete"
    assert_serves(kernel)


CELLS: dict[str, tuple[str, str]] = {
    # case: (cell, a word of the error that names the bound)
    "chart_headers": (CHART_12000, "one header"),
    "cte_chain": (CTE_CHAIN, "at most 64 tables"),
    "cte_doubling": (CTE_DOUBLING, "too large"),
    "long_chain": (LONG_CHAIN, "nests too deeply"),
    "union_chain": (UNION_CHAIN, "nests too deeply"),
    "nested_chains": (NESTED_CHAINS, "nests too deeply"),
}


@pytest.mark.parametrize("case", sorted(CELLS))
def test_hostile_cell_gets_a_clear_error(shared_kernel, case):
    cell, words = CELLS[case]
    started = time.monotonic()
    reply, msgs = good_execute(shared_kernel, cell, started + REPLY_WITHIN_S)
    content = reply["content"]
    assert content["status"] == "error", content
    assert words in content["evalue"], content["evalue"]
    errors = [m for m in msgs if m["msg_type"] == "error"]
    assert len(errors) == 1 and words in errors[0]["content"]["evalue"], [m["msg_type"] for m in msgs]
    assert_serves(shared_kernel)


def test_the_chart_cell_leaves_the_kernel_interruptible(kernel):
    """Finding 2 burned a core for 92 s: now the refusal is immediate, and the next cell runs."""
    started = time.monotonic()
    reply, _ = good_execute(kernel, CHART_12000, started + REPLY_WITHIN_S)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "SyntaxError", reply["content"]
    reply, msgs = good_execute(kernel, "CHART BAR " + QUERY + ";", time.monotonic() + REPLY_WITHIN_S)
    assert reply["content"]["status"] == "ok", reply["content"]
    assert any(m["msg_type"] in ("execute_result", "display_data") for m in msgs), [m["msg_type"] for m in msgs]
    assert_serves(kernel)
