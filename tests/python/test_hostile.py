"""Hostile protocol input, driven with raw pyzmq sockets.

For every kind of bad input the kernel must log it and drop it (no reply, no
iopub message) or answer it with the documented error, and it must never
crash nor stall the other clients. Each test starts its own kernel from a
connection file written here (so the test chooses the key and the
environment), attaches a well-behaved ``jupyter_client`` client, the "good
client", then plays the hostile peer on raw DEALER/SUB/TCP sockets. After the
hostile input the good client must still get a ``kernel_info_reply`` and the
``execute_reply``, result and ``idle`` of ``SELECT COUNT(*) FROM regions``
within a few seconds (`assert_serves`).

Expected behaviour (the protocol issue, and "Hostile clients"):

- bad or missing signature, truncated frames (fewer than 5 after
  ``<IDS|MSG>``, no delimiter), a header that is not a JSON object or lacks
  ``msg_type``/``msg_id``: dropped, no reply;
- a correctly signed ``*_request`` whose header is good but whose parent
  header, metadata or content is not a JSON object (invalid UTF-8, a lone
  surrogate escape, nesting deeper than 128, not JSON): answered with an
  error reply (ename ``BadMessage``), never left waiting;
- a signed message re-sent byte for byte: dropped the second time (only when
  a key is set: unsigned messages cannot be told apart);
- a message over the size cap (``[server] max_message_mb``, or
  ``SAFE_DATA_MAX_MESSAGE_BYTES`` in the kernel's environment): dropped;
  handled messages are not kept (memory comes back after large ones);
- an unknown ``foo_request`` → ``foo_reply`` with status ``error`` and ename
  ``UnknownMessageType``; an unknown type that is not a request: ignored;
- ``execute_request`` on control → ``execute_reply`` error ``WrongChannel``;
  anything on stdin: ignored;
- floods of garbage, connection churn, raw TCP garbage, and peers that never
  read (iopub, shell, heartbeat) must not stall the good client;
- odd but well-formed requests (wrong types, extreme numbers, deep nesting)
  are answered, never a crash;
- what a peer can make the kernel hold is bounded, with or without the key
  (the frame guard in front of every endpoint, TCP or ipc): subscriptions,
  heartbeat pings and echoes, replies a client does not read, bytes of
  partly sent frames, connections (and so file descriptors); another
  account's connections are refused; nothing is taken after the shutdown
  reply; a flood of garbage writes a bounded number of log lines; a message
  replayed to a restarted kernel is dropped.

Every wait is bounded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
import zmq
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from messages import iopub_until_idle, shell_reply

STARTUP_TIMEOUT_S = 60
# "Within a few seconds": the bound on the good client after hostile input.
HEALTHY_WITHIN_S = 5.0
# How long a dropped message is given to (wrongly) produce an answer.
SILENCE_S = 1.0
# After a probe's reply proved the hostile message was handled, the wait for anything late.
LATE_S = 0.5
# The bound on a reply the hostile peer is owed.
REPLY_TIMEOUT_S = 10.0

GOOD_QUERY = "SELECT COUNT(*) FROM regions;"
REGIONS = 5  # rows of the demo's public regions table

DELIM = b"<IDS|MSG>"
KEY = uuid.uuid4().hex.encode()


# --------------------------------------------------------------------------
# messages


def sign(key: bytes, parts: list[bytes]) -> bytes:
    """The hex HMAC-SHA256 of the four JSON frames (empty without a key)."""
    if not key:
        return b""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for p in parts:
        mac.update(p)
    return mac.hexdigest().encode()


def new_header(msg_type: Any, **extra: Any) -> dict[str, Any]:
    header = {
        "msg_id": uuid.uuid4().hex,
        "session": "hostile-session",
        "username": "mallory",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
        "msg_type": msg_type,
        "version": "5.3",
    }
    header.update(extra)
    return header


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def signed(key: bytes, parts: list[bytes], buffers: tuple[bytes, ...] = ()) -> list[bytes]:
    """`[<IDS|MSG>, signature, header, parent, metadata, content, buffers...]` for four raw JSON frames."""
    return [DELIM, sign(key, parts), *parts, *buffers]


def message(key: bytes, msg_type: str, content: Any = None, **header_extra: Any) -> tuple[str, list[bytes]]:
    """A correctly signed message: its msg_id and its frames."""
    header = new_header(msg_type, **header_extra)
    parts = [dumps(header), b"{}", b"{}", dumps({} if content is None else content)]
    return header["msg_id"], signed(key, parts)


def execute_content(code: str, **over: Any) -> dict[str, Any]:
    content = {"code": code, "silent": False, "store_history": False, "user_expressions": {},
               "allow_stdin": False, "stop_on_error": False}
    content.update(over)
    return content


def parse_reply(frames: list[bytes]) -> dict[str, Any]:
    """Decodes a message the kernel sent to a DEALER (no identity frames left)."""
    i = frames.index(DELIM)
    header, parent, _metadata, content = (json.loads(f) for f in frames[i + 2 : i + 6])
    return {"header": header, "parent_header": parent, "content": content, "msg_type": header["msg_type"],
            "signature": frames[i + 1], "parts": frames[i + 2 : i + 6]}


# --------------------------------------------------------------------------
# the kernel under attack


@dataclass
class Kernel:
    proc: subprocess.Popen
    info: dict[str, Any]
    key: bytes
    kc: BlockingKernelClient
    log: Path
    connection_file: Path
    ctx: zmq.Context = field(default_factory=zmq.Context)
    sockets: list[Any] = field(default_factory=list)
    # msg_ids the good client sent: iopub messages with another parent came from a hostile peer.
    good_ids: set[str] = field(default_factory=set)
    executions: int = 0

    @property
    def ipc(self) -> bool:
        return self.info.get("transport") == "ipc"

    def path(self, channel: str) -> str:
        """The socket file of `channel` on the ipc transport (jupyter_client's `{ip}-{port}`)."""
        return f"{self.info['ip']}-{self.info[channel + '_port']}"

    def url(self, channel: str) -> str:
        if self.ipc:
            return f"ipc://{self.path(channel)}"
        return f"tcp://{self.info['ip']}:{self.info[channel + '_port']}"

    def socket(self, kind: int, channel: str, **options: int) -> zmq.Socket:
        s = self.ctx.socket(kind)
        s.linger = 0
        for name, value in options.items():
            s.setsockopt(getattr(zmq, name.upper()), value)
        s.connect(self.url(channel))
        self.sockets.append(s)
        return s

    def dealer(self, channel: str, **options: int) -> zmq.Socket:
        return self.socket(zmq.DEALER, channel, **options)

    def tcp(self, channel: str) -> socket.socket:
        """A raw stream socket connected to `channel` (TCP, or a Unix socket on the ipc transport)."""
        if self.ipc:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(self.path(channel))
        else:
            s = socket.create_connection((self.info["ip"], self.info[channel + "_port"]), timeout=5)
        self.sockets.append(s)
        return s

    def message(self, msg_type: str, content: Any = None, **header_extra: Any) -> tuple[str, list[bytes]]:
        return message(self.key, msg_type, content, **header_extra)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no kernel log)"
        return "kernel log (last lines):\n" + "\n".join(text[-lines:])

    def close(self) -> None:
        try:
            self.kc.stop_channels()
        except Exception:  # noqa: BLE001 - tear-down must go on
            pass
        for s in self.sockets:
            try:
                s.close(linger=0) if isinstance(s, zmq.Socket) else s.close()
            except Exception:  # noqa: BLE001
                pass
        self.ctx.destroy(linger=0)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def safe_data_binary(repo_root: Path) -> Path:
    return Path(os.environ.get("SAFE_DATA_BIN", repo_root / "target" / "debug" / "safe-data")).resolve()


def demo_config_copy(demo_config: Path, path: Path, state_dir: Path, server_lines: str = "") -> Path:
    """The demo configuration at `path`, its sources made absolute, with its own state folder
    (hostile input lands in the audit log and the history: keep it out of the other suites' state)
    and `server_lines` added to `[server]` (replacing settings of the same name)."""
    text = demo_config.read_text()
    base = demo_config.parent
    text = re.sub(r'^(\s*source\s*=\s*")(?!/)', lambda m: m.group(1) + str(base) + "/", text, flags=re.M)
    text = re.sub(r'^\s*state_dir\s*=.*$', lambda m: f"state_dir = {json.dumps(str(state_dir))}", text,
                  count=1, flags=re.M)
    for line in server_lines.splitlines():
        name = line.split("=")[0].strip()
        text = re.sub(rf"^\s*{re.escape(name)}\s*=.*$", "", text, flags=re.M)
    text = text.replace("[server]\n", "[server]\n" + server_lines, 1)
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def hostile_config(demo_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("hostile")
    return demo_config_copy(demo_config, work / "hostile.toml", work / "state")


def launch(binary: Path, config: Path, workdir: Path, key: bytes = KEY, env: dict[str, str] | None = None,
           transport: str = "tcp", connection_file: Path | None = None,
           preexec_fn: Callable[[], None] | None = None) -> Kernel:
    """Starts `safe-data kernel` on a connection file written here (or on `connection_file`, as a
    restart does: same ports, same key) and attaches the good client."""
    workdir.mkdir(parents=True, exist_ok=True)
    n = len(list(workdir.glob("kernel-*.log")))
    if connection_file is None:
        ip = str(workdir / f"kernel-{n}-ipc") if transport == "ipc" else "127.0.0.1"
        conn, info = write_connection_file(str(workdir / f"kernel-{n}.json"), ip=ip, key=key,
                                           transport=transport, signature_scheme="hmac-sha256")
    else:
        conn, info = str(connection_file), json.loads(connection_file.read_text())
        info["key"] = info["key"].encode()
        key = info["key"]
    log = workdir / f"kernel-{n}.log"
    environment = {k: v for k, v in os.environ.items() if k != "SAFE_DATA_MAX_MESSAGE_BYTES"}
    environment.update(env or {})
    with log.open("wb") as out:  # a file, not a pipe nobody reads: the kernel's logging must not block
        proc = subprocess.Popen(
            [str(binary), "kernel", "--connection-file", conn, "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=environment, preexec_fn=preexec_fn,
        )
    kc = BlockingKernelClient()
    kc.load_connection_info(info)
    kernel = Kernel(proc=proc, info=dict(info), key=key, kc=kc, log=log, connection_file=Path(conn))
    # No heartbeat channel: without a kernel manager, jupyter_client takes a first ping answered later
    # than 1 s (a slow start on a busy machine) for a dead kernel. The heartbeat is tested on its own.
    kc.start_channels(hb=False)
    try:
        kc.wait_for_ready(timeout=STARTUP_TIMEOUT_S)
    except RuntimeError as e:
        kernel.close()
        raise AssertionError(f"the kernel did not become ready: {e}\n{kernel.log_tail()}") from e
    return kernel


@pytest.fixture
def start_kernel(repo_root: Path, hostile_config: Path, tmp_path: Path) -> Iterator[Callable[..., Kernel]]:
    """Starts kernels (the key, environment and config are the caller's); stops them all afterwards."""
    started: list[Kernel] = []

    def start(key: bytes = KEY, env: dict[str, str] | None = None, config: Path | None = None,
              **options: Any) -> Kernel:
        kernel = launch(safe_data_binary(repo_root), config or hostile_config, tmp_path, key, env, **options)
        started.append(kernel)
        return kernel

    yield start
    for kernel in started:
        kernel.close()


@pytest.fixture
def kernel(start_kernel: Callable[..., Kernel]) -> Kernel:
    k = start_kernel()
    assert_serves(k)
    return k


@pytest.fixture(scope="module")
def _shared() -> Iterator[list[Kernel]]:
    holder: list[Kernel] = []
    yield holder
    for k in holder:
        k.close()


@pytest.fixture
def shared_kernel(_shared: list[Kernel], repo_root: Path, hostile_config: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """One kernel for the many small cases of a parametrized test; replaced when a case killed it
    (that case fails, the next ones get a fresh kernel). The sockets a case opens are closed after
    it, as a client would: the kernel keeps at most 32 connections per port (`CONNECTIONS_PER_PORT`)
    and never evicts one that proved the key."""
    if _shared and _shared[-1].proc.poll() is not None:
        _shared.pop().close()
    if not _shared:
        _shared.append(launch(safe_data_binary(repo_root), hostile_config, tmp_path_factory.mktemp("shared")))
    k = _shared[-1]
    try:
        assert_serves(k, within=REPLY_TIMEOUT_S)
    except AssertionError:
        _shared.pop().close()
        _shared.append(launch(safe_data_binary(repo_root), hostile_config, tmp_path_factory.mktemp("shared")))
        k = _shared[-1]
        assert_serves(k)
    opened = len(k.sockets)
    yield k
    for sock in k.sockets[opened:]:
        sock.close()
    del k.sockets[opened:]


# --------------------------------------------------------------------------
# the good client


def _shell_reply(k: Kernel, msg_id: str, deadline: float, what: str) -> dict[str, Any]:
    def context() -> str:
        alive = "alive" if k.proc.poll() is None else f"exited with {k.proc.returncode}"
        return f"the good client got no {what} (kernel {alive})\n{k.log_tail()}"

    return shell_reply(k.kc, msg_id, deadline, context)


def _iopub_until_idle(k: Kernel, msg_id: str, deadline: float) -> list[dict[str, Any]]:
    return iopub_until_idle(k.kc, msg_id, deadline, k.log_tail)


def good_execute(k: Kernel, code: str, deadline: float, **kwargs: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    msg_id = k.kc.execute(code, **kwargs)
    k.good_ids.add(msg_id)
    reply = _shell_reply(k, msg_id, deadline, f"execute_reply to {code[:60]!r}")
    return reply, _iopub_until_idle(k, msg_id, deadline)


def assert_serves(k: Kernel, within: float = HEALTHY_WITHIN_S, count: int | None = None) -> float:
    """The kernel is alive and the good client gets kernel_info and a query answered within `within` s.

    `count`: the execution_count the good client's execution must have (it tells whether a hostile
    execute_request was run). Returns the seconds it took.
    """
    assert k.proc.poll() is None, f"the kernel exited with {k.proc.returncode}\n{k.log_tail()}"
    started = time.monotonic()
    deadline = started + within
    msg_id = k.kc.kernel_info()
    k.good_ids.add(msg_id)
    reply = _shell_reply(k, msg_id, deadline, "kernel_info_reply")
    assert reply["msg_type"] == "kernel_info_reply" and reply["content"]["status"] == "ok", reply["content"]
    reply, msgs = good_execute(k, GOOD_QUERY, deadline, store_history=True)
    assert reply["content"]["status"] == "ok", reply["content"]
    k.executions = reply["content"]["execution_count"]
    if count is not None:
        assert k.executions == count, (
            f"execution_count {k.executions}, expected {count}: "
            "a hostile execute_request was run (or a good one was not)"
        )
    results = [m for m in msgs if m["msg_type"] == "execute_result"]
    assert len(results) == 1, [m["msg_type"] for m in msgs]
    rows = results[0]["content"]["data"]["application/vnd.dataresource+json"]["data"]
    assert [list(r.values()) for r in rows] == [[REGIONS]], rows
    assert k.proc.poll() is None, f"the kernel exited with {k.proc.returncode}\n{k.log_tail()}"
    return time.monotonic() - started


def hostile_iopub(k: Kernel, window: float) -> list[dict[str, Any]]:
    """The iopub messages the good client sees within `window` s that a hostile peer caused
    (a parent that is not one of the good client's requests; iopub_welcome aside)."""
    deadline = time.monotonic() + window
    found = []
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            msg = k.kc.get_iopub_msg(timeout=remaining)
        except Empty:
            break
        parent = msg["parent_header"].get("msg_id")
        if parent and parent not in k.good_ids and msg["msg_type"] != "iopub_welcome":
            found.append(msg)
    return found


# --------------------------------------------------------------------------
# the hostile peer


def recv_all(sock: zmq.Socket, window: float) -> list[list[bytes]]:
    """Everything `sock` receives within `window` s."""
    got = []
    deadline = time.monotonic() + window
    while (remaining := deadline - time.monotonic()) > 0:
        if sock.poll(max(1, int(remaining * 1000))):
            got.append(sock.recv_multipart())
    return got


def describe(frames_list: list[list[bytes]]) -> list[str]:
    out = []
    for frames in frames_list:
        try:
            m = parse_reply(frames)
            out.append(f"{m['msg_type']} {json.dumps(m['content'])[:200]}")
        except Exception:  # noqa: BLE001 - describing garbage
            out.append(repr(frames)[:200])
    return out


def recv_reply(k: Kernel, sock: zmq.Socket, msg_id: str, timeout: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
    """The reply to `msg_id` on `sock`; fails on any other message."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if not sock.poll(max(1, int(remaining * 1000))):
            break
        msg = parse_reply(sock.recv_multipart())
        assert msg["parent_header"].get("msg_id") == msg_id, f"unexpected {msg['msg_type']} {msg['content']}"
        return msg
    raise AssertionError(f"no reply to {msg_id} within {timeout} s\n{k.log_tail()}")


def await_idle(k: Kernel, msg_id: str, timeout: float = REPLY_TIMEOUT_S) -> list[dict[str, Any]]:
    """Reads the good client's iopub up to the idle status of `msg_id` (a raw request that is answered),
    so later checks do not take its messages for a leak."""
    return _iopub_until_idle(k, msg_id, time.monotonic() + timeout)


def assert_dropped(k: Kernel, sock: zmq.Socket, channel: str, msg_id: str | None = None,
                   allow_status: bool = False) -> None:
    """What was just sent on `sock` got no answer: none on `sock`, and no iopub message.

    On shell and control a correctly signed probe follows on the same socket: the kernel reads a
    peer's messages in order, so when the probe's reply arrives the hostile message was handled.
    Then SILENCE_S more for anything late. `msg_id`: only iopub messages with this parent count
    (the test sent answered requests before); `allow_status`: busy/idle around it are allowed.
    """
    if channel in ("shell", "control"):
        probe_id, probe = k.message("kernel_info_request")
        k.good_ids.add(probe_id)
        sock.send_multipart(probe)
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no reply to the probe sent after the hostile message\n{k.log_tail()}"
            if not sock.poll(max(1, int(remaining * 1000))):
                continue
            frames = sock.recv_multipart()
            msg = parse_reply(frames)
            if msg["parent_header"].get("msg_id") == probe_id:
                break
            raise AssertionError(f"a dropped message got an answer: {describe([frames])}")
    late = recv_all(sock, LATE_S if channel in ("shell", "control") else SILENCE_S)
    assert late == [], f"a dropped message got an answer: {describe(late)}"
    leaked = hostile_iopub(k, 0.2)
    if msg_id is not None:
        leaked = [m for m in leaked if m["parent_header"].get("msg_id") == msg_id]
    if allow_status:
        leaked = [m for m in leaked if m["msg_type"] != "status"]
    assert leaked == [], f"a dropped message caused iopub messages: {[m['msg_type'] for m in leaked]}"


def assert_oversized_refused(k: Kernel, sock: zmq.Socket, msg_id: str | None = None) -> None:
    """An oversized message got no answer. Over TCP the kernel's frame guard closes the connection
    that sent it (as libzmq's ZMQ_MAXMSGSIZE does), so a probe on that socket may be lost with the
    connection: nothing may come back on it, no iopub message may name it, and a new client is served."""
    late = recv_all(sock, SILENCE_S)
    assert late == [], f"an oversized message got an answer: {describe(late)}"
    leaked = hostile_iopub(k, 0.2)
    if msg_id is not None:
        leaked = [m for m in leaked if m["parent_header"].get("msg_id") == msg_id]
    assert leaked == [], f"an oversized message caused iopub messages: {[m['msg_type'] for m in leaked]}"
    assert_serves(k)


# --------------------------------------------------------------------------
# malformed messages: dropped, no reply


def _valid_parts(key: bytes, msg_type: str = "kernel_info_request") -> list[bytes]:
    return [dumps(new_header(msg_type)), b"{}", b"{}", b"{}"]


def _with_frame(key: bytes, index: int, raw: bytes, msg_type: str = "kernel_info_request") -> list[bytes]:
    """A correctly signed message whose JSON frame `index` (0 header .. 3 content) is `raw`."""
    parts = _valid_parts(key, msg_type)
    parts[index] = raw
    return signed(key, parts)


def _truncated(key: bytes, keep: int) -> list[bytes]:
    full = signed(key, _valid_parts(key))
    return full[: 1 + keep]  # the delimiter and `keep` of the 5 frames after it


def _no_delimiter(key: bytes) -> list[bytes]:
    return signed(key, _valid_parts(key))[1:]


def _header_without(key: bytes, name: str) -> list[bytes]:
    header = new_header("kernel_info_request")
    del header[name]
    return signed(key, [dumps(header), b"{}", b"{}", b"{}"])


def _header_with(key: bytes, **fields: Any) -> list[bytes]:
    header = new_header("kernel_info_request")
    header.update(fields)
    return signed(key, [dumps(header), b"{}", b"{}", b"{}"])


def _resigned(key: bytes, change: Callable[[bytes], bytes]) -> list[bytes]:
    frames = signed(key, _valid_parts(key))
    frames[1] = change(frames[1])
    return frames


NESTED = 100_000  # far past serde_json's recursion limit: must be an error, not a stack overflow

MALFORMED: dict[str, Callable[[bytes], list[bytes]]] = {
    # signatures
    "wrong_key": lambda key: signed(b"not-the-key", _valid_parts(key)),
    "empty_signature": lambda key: [DELIM, b"", *_valid_parts(key)],
    "no_signature_frame": lambda key: [DELIM, *_valid_parts(key)],
    "signature_not_hex": lambda key: _resigned(key, lambda s: b"z" * len(s)),
    "signature_uppercase": lambda key: _resigned(key, bytes.upper),
    "signature_with_newline": lambda key: _resigned(key, lambda s: s + b"\n"),
    "signature_truncated": lambda key: _resigned(key, lambda s: s[:-2]),
    "signature_huge": lambda key: _resigned(key, lambda s: s * 4096),
    "signature_of_other_frames": lambda key: [DELIM, sign(key, _valid_parts(key)), *_valid_parts(key)],
    # framing
    "truncated_0": lambda key: _truncated(key, 0),
    "truncated_1": lambda key: _truncated(key, 1),
    "truncated_2": lambda key: _truncated(key, 2),
    "truncated_3": lambda key: _truncated(key, 3),
    "truncated_4": lambda key: _truncated(key, 4),
    "no_delimiter": _no_delimiter,
    "misspelled_delimiter": lambda key: [b"<IDS|MSG >", *signed(key, _valid_parts(key))[1:]],
    "single_empty_frame": lambda key: [b""],
    "single_garbage_frame": lambda key: [os.urandom(64)],
    "only_delimiters": lambda key: [DELIM] * 6,
    # a header that is not JSON, correctly signed: nothing to answer to
    "header_invalid_utf8": lambda key: _with_frame(key, 0, b'{"msg_type": "kernel_info_request\xff\xfe"}'),
    "header_not_json": lambda key: _with_frame(key, 0, b"{not json"),
    "header_deeply_nested": lambda key: _with_frame(key, 0, b'{"msg_type":' * NESTED + b"1" + b"}" * NESTED),
    # a header that is not an object
    "header_array": lambda key: _with_frame(key, 0, b'["kernel_info_request"]'),
    "header_string": lambda key: _with_frame(key, 0, b'"kernel_info_request"'),
    "header_number": lambda key: _with_frame(key, 0, b"42"),
    "header_null": lambda key: _with_frame(key, 0, b"null"),
    # headers without what identifies a message
    "header_without_msg_type": lambda key: _header_without(key, "msg_type"),
    "header_without_msg_id": lambda key: _header_without(key, "msg_id"),
    "header_msg_type_number": lambda key: _header_with(key, msg_type=5),
    "header_msg_type_null": lambda key: _header_with(key, msg_type=None),
    "header_msg_id_number": lambda key: _header_with(key, msg_id=12345),
    "header_msg_id_object": lambda key: _header_with(key, msg_id={"a": 1}),
    "header_empty_object": lambda key: _with_frame(key, 0, b"{}"),
}


# Correctly signed requests with a good header whose other frames cannot be read: answered with an
# error (the sender holds the key; without an answer it would wait forever).
UNREADABLE: dict[str, Callable[[bytes], list[bytes]]] = {
    "parent_invalid_utf8": lambda key: _with_frame(key, 1, b"\xff\xfe\xfd"),
    "metadata_invalid_utf8": lambda key: _with_frame(key, 2, b'{"a": "\xc3\x28"}'),
    "content_invalid_utf8": lambda key: _with_frame(key, 3, b'{"code": "\xed\xa0\x80"}', "execute_request"),
    "content_not_json": lambda key: _with_frame(key, 3, b'{"code": "SELECT 1;"', "execute_request"),
    "content_trailing_garbage": lambda key: _with_frame(key, 3, b'{"code": "SELECT 1;"} x', "execute_request"),
    "content_nan": lambda key: _with_frame(key, 3, b'{"cursor_pos": NaN}', "complete_request"),
    "content_empty_frame": lambda key: _with_frame(key, 3, b"", "execute_request"),
    "content_deeply_nested_arrays": lambda key: _with_frame(key, 3, b"[" * NESTED + b"]" * NESTED, "execute_request"),
    "content_deeply_nested_objects": lambda key: _with_frame(
        key, 3, b'{"a":' * NESTED + b"1" + b"}" * NESTED, "execute_request"),
    "parent_array": lambda key: _with_frame(key, 1, b"[]"),
    "metadata_string": lambda key: _with_frame(key, 2, b'"x"'),
    "content_array": lambda key: _with_frame(key, 3, b'["SELECT 1;"]', "execute_request"),
    "content_null": lambda key: _with_frame(key, 3, b"null", "execute_request"),
    "content_lone_surrogate": lambda key: _with_frame(
        key, 3, json.dumps(execute_content("SELECT '\ud800' AS s;")).encode(), "execute_request"),
    "content_depth_129": lambda key: _with_frame(key, 3, b'{"a":' * 129 + b"1" + b"}" * 129, "complete_request"),
    "metadata_depth_200": lambda key: _with_frame(key, 2, b'{"a":' * 200 + b"[]" + b"}" * 200),
}


# Cases larger than the frame guard's free in-flight part (256 KiB) whose signature is wrong.
CLOSES_CONNECTION = {"signature_huge"}


@pytest.mark.parametrize("channel", ["shell", "control"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_message_is_dropped(shared_kernel, case, channel):
    k = shared_kernel
    sock = k.dealer(channel)
    sock.send_multipart(MALFORMED[case](k.key))
    if case in CLOSES_CONNECTION:
        # Over the free in-flight part and not signed with the key: the frame guard closes the
        # connection (UnsignedLarge); nothing is answered, and a new connection is served.
        sock = k.dealer(channel)
    assert_dropped(k, sock, channel)
    assert_serves(k, count=k.executions + 1)  # nothing was executed but the good client's queries


def test_forged_execute_is_not_run(kernel):
    sock = kernel.dealer("shell")
    header = new_header("execute_request")
    parts = [dumps(header), b"{}", b"{}", dumps(execute_content("SELECT 1;", store_history=True))]
    sock.send_multipart(signed(b"wrong key", parts))
    assert_dropped(kernel, sock, "shell", header["msg_id"])
    assert_serves(kernel, count=2)


def test_forged_shutdown_on_control_is_ignored(kernel):
    sock = kernel.dealer("control")
    header = new_header("shutdown_request")
    sock.send_multipart(signed(b"wrong key", [dumps(header), b"{}", b"{}", dumps({"restart": False})]))
    assert_dropped(kernel, sock, "control", header["msg_id"])
    time.sleep(0.5)
    assert_serves(kernel)


def test_unsigned_message_to_a_keyed_kernel_is_dropped(kernel):
    sock = kernel.dealer("shell")
    msg_id, frames = message(b"", "execute_request", execute_content("SELECT 1;", store_history=True))
    assert frames[1] == b""
    sock.send_multipart(frames)
    assert_dropped(kernel, sock, "shell", msg_id)
    assert_serves(kernel, count=2)


def test_malformed_on_stdin_is_dropped(kernel):
    sock = kernel.dealer("stdin")
    for case in sorted(MALFORMED) + sorted(UNREADABLE):
        sock.send_multipart((MALFORMED | UNREADABLE)[case](kernel.key))
    assert_dropped(kernel, sock, "stdin")
    assert_serves(kernel, count=2)


@pytest.mark.parametrize("channel", ["shell", "control"])
@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_unreadable_request_gets_an_error_reply(shared_kernel, case, channel):
    """A signed request whose header is good but whose other frames are not JSON objects (finding 13:
    a lone surrogate escape or nesting deeper than 128 left the client waiting forever) gets an
    error reply that names the frame and never quotes it; nothing is run."""
    k = shared_kernel
    sock = k.dealer(channel)
    frames = UNREADABLE[case](k.key)
    header = json.loads(frames[2])
    k.good_ids.add(header["msg_id"])
    sock.send_multipart(frames)
    reply = recv_reply(k, sock, header["msg_id"])
    assert reply["msg_type"] == header["msg_type"].removesuffix("_request") + "_reply"
    content = reply["content"]
    assert content["status"] == "error" and content["ename"] == "BadMessage", content
    assert re.fullmatch(r"the request could not be read: frame (parent_header|metadata|content) is not valid JSON",
                        content["evalue"]), content
    assert recv_all(sock, LATE_S) == []
    await_idle(k, header["msg_id"])
    # A replay of it is dropped like any other.
    sock.send_multipart(frames)
    assert_dropped(k, sock, channel, header["msg_id"])
    assert_serves(k, count=k.executions + 1)


def test_unreadable_non_request_is_not_answered(kernel):
    """Only requests have replies: an unreadable comm message is dropped."""
    sock = kernel.dealer("shell")
    sock.send_multipart(_with_frame(kernel.key, 3, b"[1, 2]", "comm_msg"))
    assert_dropped(kernel, sock, "shell")
    assert_serves(kernel)


# --------------------------------------------------------------------------
# odd but well-formed messages: answered (any status), never a crash


HUGE = 10**30  # a JSON number no integer type holds
DEEP = 50_000

ODD_REQUESTS: dict[str, tuple[str, Any]] = {
    "execute_code_number": ("execute_request", {"code": 5, "silent": "yes", "store_history": [],
                                                "stop_on_error": "no", "user_expressions": 3}),
    "execute_no_content": ("execute_request", {}),
    "execute_nul": ("execute_request", execute_content("SELECT 1;\x00 SELECT 2;")),
    "complete_cursor_huge": ("complete_request", {"code": "SELECT * FROM pat", "cursor_pos": HUGE}),
    "complete_cursor_u64_max": ("complete_request", {"code": "SELECT é FROM pat", "cursor_pos": 2**64 - 1}),
    "complete_cursor_negative": ("complete_request", {"code": "SELECT * FROM pat", "cursor_pos": -5}),
    "complete_cursor_string": ("complete_request", {"code": "SELECT * FROM pat", "cursor_pos": "4"}),
    "complete_multibyte": ("complete_request", {"code": "SELECT 'ééé😀', * FROM pat", "cursor_pos": 11}),
    "complete_code_null": ("complete_request", {"code": None, "cursor_pos": 3}),
    "inspect_cursor_huge": ("inspect_request", {"code": "patients", "cursor_pos": HUGE, "detail_level": 9}),
    "inspect_code_list": ("inspect_request", {"code": ["patients"], "cursor_pos": 0}),
    "is_complete_code_object": ("is_complete_request", {"code": {"a": 1}}),
    "is_complete_open_quote": ("is_complete_request", {"code": "SELECT '" + "(" * 10000}),
    # Deep or long expressions: a parser or binder that recurses must stop with an error, not
    # overflow a stack (complete/inspect/is_complete run on the socket tasks' small stacks).
    "is_complete_deep_parens": ("is_complete_request", {"code": "SELECT " + "(" * DEEP + "1" + ")" * DEEP}),
    "complete_deep_parens": ("complete_request", {"code": "SELECT " + "(" * DEEP + "a", "cursor_pos": DEEP + 8}),
    "inspect_deep_parens": ("inspect_request", {"code": "SELECT " + "(" * DEEP + "age", "cursor_pos": DEEP + 9}),
    "complete_long_sum": ("complete_request", {"code": "SELECT " + "+".join(["1"] * DEEP) + " FROM pat",
                                               "cursor_pos": 2 * DEEP + 15}),
    "execute_deep_parens": ("execute_request", execute_content("SELECT " + "(" * DEEP + "1" + ")" * DEEP + ";")),
    "execute_long_sum": ("execute_request", execute_content("SELECT " + "+".join(["1"] * DEEP) + ";")),
    "execute_long_and": ("execute_request", execute_content(
        "SELECT COUNT(*) FROM regions WHERE " + " AND ".join(["beds > 0"] * DEEP) + ";")),
    "execute_deep_not": ("execute_request", execute_content("SELECT " + "NOT " * DEEP + "TRUE;")),
    "execute_deep_subqueries": ("execute_request", execute_content(
        "SELECT * FROM " + "(SELECT * FROM " * 2000 + "regions" + ") s" * 2000 + ";")),
    "execute_many_statements": ("execute_request", execute_content("SELECT 1;" * 1000)),
    "history_tail_huge": ("history_request", {"hist_access_type": "tail", "n": 2**64 - 1, "output": True}),
    "history_tail_negative": ("history_request", {"hist_access_type": "tail", "n": -1}),
    "history_range_extremes": ("history_request", {"hist_access_type": "range", "session": -(2**63),
                                                   "start": 2**64 - 1, "stop": 0}),
    "history_range_min_session": ("history_request", {"hist_access_type": "range", "session": 2**63 - 1,
                                                      "start": 0, "stop": 2**64 - 1}),
    "history_search_stars": ("history_request", {"hist_access_type": "search", "pattern": "*?" * 5000,
                                                 "n": 2**64 - 1, "unique": "yes"}),
    "history_unknown_access": ("history_request", {"hist_access_type": "nope"}),
    "kernel_info_with_buffers": ("kernel_info_request", {}),
    "comm_info_target_number": ("comm_info_request", {"target_name": 7}),
    "long_unknown_request": ("x" * 100_000 + "_request", {}),
    "bare_request_suffix": ("_request", {}),
}


@pytest.mark.parametrize("case", sorted(ODD_REQUESTS))
def test_odd_request_is_answered(shared_kernel, case):
    kernel = shared_kernel
    msg_type, content = ODD_REQUESTS[case]
    sock = kernel.dealer("shell")
    header = new_header(msg_type)
    parts = [dumps(header), b"{}", b"{}", dumps(content)]
    buffers = (b"\x00" * 100, b"", os.urandom(1000)) if case == "kernel_info_with_buffers" else ()
    sock.send_multipart(signed(kernel.key, parts, buffers))
    reply = recv_reply(kernel, sock, header["msg_id"], timeout=60)
    assert reply["msg_type"] == msg_type[: -len("_request")] + "_reply"
    statuses = ("complete", "incomplete", "invalid", "unknown") if msg_type == "is_complete_request" else (
        "ok", "error", "aborted")
    assert reply["content"]["status"] in statuses, reply["content"]
    assert_serves(kernel)


def test_lone_surrogate_is_answered(kernel):
    """`\\ud800` is well-formed JSON text but no Unicode: the request is answered with an error, once."""
    sock = kernel.dealer("shell")
    header = new_header("execute_request")
    content = json.dumps(execute_content("SELECT '\ud800' AS s;")).encode()
    assert b"\\ud800" in content
    sock.send_multipart(signed(kernel.key, [dumps(header), b"{}", b"{}", content]))
    got = recv_all(sock, 3.0)
    assert len(got) == 1, describe(got)
    reply = parse_reply(got[0])
    assert reply["msg_type"] == "execute_reply" and reply["content"]["ename"] == "BadMessage", reply["content"]
    assert_serves(kernel, count=2)


def test_routing_prefix_is_echoed(kernel):
    """Frames before the delimiter are routing identities: the reply carries them back."""
    sock = kernel.dealer("shell")
    msg_id, frames = kernel.message("kernel_info_request")
    prefix = [f"hop-{i}".encode() for i in range(100)] + [b"", os.urandom(300)]
    sock.send_multipart(prefix + frames)
    got = recv_all(sock, 3.0)
    assert len(got) == 1, describe(got)
    assert got[0][: len(prefix)] == prefix
    assert parse_reply(got[0])["parent_header"]["msg_id"] == msg_id
    assert_serves(kernel)


def test_odd_comm_messages_are_harmless(kernel):
    sock = kernel.dealer("shell")
    for msg_type, content in [("comm_open", {}), ("comm_open", {"comm_id": [1], "target_name": None}),
                              ("comm_msg", {"comm_id": "nope", "data": "x" * 10000}), ("comm_close", [])]:
        _, frames = kernel.message(msg_type, content)
        sock.send_multipart(frames)
    # No shell reply to comm messages (the kernel closes an opened comm on iopub).
    probe_id, probe = kernel.message("kernel_info_request")
    sock.send_multipart(probe)
    assert recv_reply(kernel, sock, probe_id)["msg_type"] == "kernel_info_reply"
    assert recv_all(sock, SILENCE_S) == []
    assert_serves(kernel)


# --------------------------------------------------------------------------
# replays


def test_replayed_message_is_dropped(kernel):
    sock = kernel.dealer("shell")
    msg_id, frames = kernel.message("kernel_info_request")
    sock.send_multipart(frames)
    assert recv_reply(kernel, sock, msg_id)["msg_type"] == "kernel_info_reply"
    await_idle(kernel, msg_id)
    sock.send_multipart(frames)  # byte for byte
    assert_dropped(kernel, sock, "shell", msg_id)
    assert_serves(kernel)


def test_replayed_execute_runs_once(kernel):
    sock = kernel.dealer("shell")
    msg_id, frames = kernel.message("execute_request", execute_content(GOOD_QUERY, store_history=True))
    sock.send_multipart(frames)
    reply = recv_reply(kernel, sock, msg_id)
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["execution_count"] == 2  # the fixture's check was the first
    await_idle(kernel, msg_id)
    sock.send_multipart(frames)
    assert_dropped(kernel, sock, "shell", msg_id)
    assert_serves(kernel, count=3)


def test_replay_from_another_connection_is_dropped(kernel):
    first = kernel.dealer("shell")
    msg_id, frames = kernel.message("execute_request", execute_content(GOOD_QUERY, store_history=True))
    first.send_multipart(frames)
    assert recv_reply(kernel, first, msg_id)["content"]["status"] == "ok"
    await_idle(kernel, msg_id)
    second = kernel.dealer("shell")
    second.send_multipart(frames)
    assert_dropped(kernel, second, "shell", msg_id)
    assert_serves(kernel, count=3)


def test_replay_on_another_channel_is_dropped(kernel):
    shell = kernel.dealer("shell")
    msg_id, frames = kernel.message("kernel_info_request")
    shell.send_multipart(frames)
    assert recv_reply(kernel, shell, msg_id)["msg_type"] == "kernel_info_reply"
    await_idle(kernel, msg_id)
    control = kernel.dealer("control")
    control.send_multipart(frames)
    assert_dropped(kernel, control, "control", msg_id)
    assert_serves(kernel)


def test_replay_of_a_good_clients_message_is_dropped(kernel):
    """A message captured from the well-behaved client, replayed by another peer."""
    session = kernel.kc.session
    msg = session.msg("execute_request", execute_content(GOOD_QUERY, store_history=True))
    frames = session.serialize(msg)
    msg_id = msg["header"]["msg_id"]
    kernel.good_ids.add(msg_id)
    kernel.kc.shell_channel.socket.send_multipart(frames)
    reply = _shell_reply(kernel, msg_id, time.monotonic() + REPLY_TIMEOUT_S, "execute_reply")
    assert reply["content"]["execution_count"] == 2
    await_idle(kernel, msg_id)
    mallory = kernel.dealer("shell")
    mallory.send_multipart(frames)
    assert_dropped(kernel, mallory, "shell")
    assert_serves(kernel, count=3)


def test_replay_with_uppercased_signature_is_dropped(kernel):
    """The same HMAC spelled differently is no way around the replay guard."""
    sock = kernel.dealer("shell")
    msg_id, frames = kernel.message("kernel_info_request")
    sock.send_multipart(frames)
    recv_reply(kernel, sock, msg_id)
    await_idle(kernel, msg_id)
    frames[1] = frames[1].upper()
    sock.send_multipart(frames)
    assert_dropped(kernel, sock, "shell", msg_id)
    assert_serves(kernel)


def rss_mib(k: Kernel) -> float:
    for line in Path(f"/proc/{k.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_handled_messages_are_not_kept(kernel):
    """Memory comes back after large messages: the replay guard remembers signatures, not messages.

    Each message is 40 MiB (glibc serves allocations that large with mmap and unmaps them when freed),
    answered, then dropped; a kernel that kept a slice of each receive buffer would hold all 480 MiB.
    """
    sock = kernel.dealer("shell", sndhwm=0)
    before = rss_mib(kernel)
    for _ in range(12):
        header = new_header("kernel_info_request")
        sock.send_multipart(signed(kernel.key, [dumps(header), b"{}", b"{}", b"{}"], (b"x" * (40 << 20),)))
        recv_reply(kernel, sock, header["msg_id"], timeout=60)
    time.sleep(1.0)
    grown = rss_mib(kernel) - before
    assert grown < 150, f"the kernel's RSS grew by {grown:.0f} MiB after 12 answered 40 MiB messages"
    assert_serves(kernel)


def test_without_a_key_a_resent_message_is_answered_again(start_kernel):
    """Documented limit: unsigned messages cannot be told apart, so there is no replay guard."""
    k = start_kernel(key=b"")
    assert_serves(k)
    sock = k.dealer("shell")
    msg_id, frames = message(b"", "kernel_info_request")
    for _ in range(2):
        sock.send_multipart(frames)
        assert recv_reply(k, sock, msg_id)["msg_type"] == "kernel_info_reply"
    assert_serves(k)


# --------------------------------------------------------------------------
# oversized messages

CAP = 100_000


@pytest.fixture
def capped(start_kernel: Callable[..., Kernel]) -> Kernel:
    k = start_kernel(env={"SAFE_DATA_MAX_MESSAGE_BYTES": str(CAP)})
    assert_serves(k)
    return k


def padded_query(size: int) -> str:
    """`GOOD_QUERY` followed by a comment: a cell of about `size` bytes."""
    return GOOD_QUERY + " -- " + "x" * max(0, size - len(GOOD_QUERY) - 4)


def test_oversized_execute_is_dropped(capped):
    sock = capped.dealer("shell")
    msg_id, frames = capped.message("execute_request", execute_content(padded_query(2 * CAP), store_history=True))
    assert sum(map(len, frames)) > CAP
    sock.send_multipart(frames)
    assert_oversized_refused(capped, sock, msg_id)
    # It was not executed: the next execution is the second.
    msg_id, frames = capped.message("execute_request", execute_content(GOOD_QUERY, store_history=True))
    fresh = capped.dealer("shell")
    fresh.send_multipart(frames)
    assert recv_reply(capped, fresh, msg_id)["content"]["execution_count"] == 3


def test_message_under_the_cap_is_answered(capped):
    sock = capped.dealer("shell")
    msg_id, frames = capped.message("execute_request", execute_content(padded_query(CAP - 2000)))
    assert sum(map(len, frames)) < CAP
    sock.send_multipart(frames)
    assert recv_reply(capped, sock, msg_id)["content"]["status"] == "ok"
    assert_serves(capped)


def test_oversized_by_buffers_is_dropped(capped):
    sock = capped.dealer("shell")
    header = new_header("kernel_info_request")
    sock.send_multipart(signed(capped.key, [dumps(header), b"{}", b"{}", b"{}"], tuple([b"b" * 1000] * 300)))
    assert_oversized_refused(capped, sock, header["msg_id"])


def test_oversized_by_identities_is_dropped(capped):
    sock = capped.dealer("control")
    msg_id, frames = capped.message("kernel_info_request")
    sock.send_multipart([b"i" * 1000] * 300 + frames)
    assert_oversized_refused(capped, sock, msg_id)


def test_oversized_flood_leaves_the_good_client_served(capped):
    sock = capped.dealer("shell", sndhwm=0)
    big = padded_query(4 * CAP)
    for _ in range(50):  # 20 MB of messages over the cap
        _, frames = capped.message("execute_request", execute_content(big))
        sock.send_multipart(frames)
    assert_oversized_refused(capped, sock)


def test_max_message_mb_in_the_config_caps_messages(start_kernel, demo_config, hostile_config, tmp_path):
    """The owner's cap, `[server] max_message_mb`, without the environment override."""
    config = demo_config_copy(demo_config, tmp_path / "capped.toml", hostile_config.parent / "state",
                              "max_message_mb = 1\n")
    k = start_kernel(config=config)
    assert_serves(k)
    sock = k.dealer("shell")
    msg_id, frames = k.message("execute_request", execute_content(padded_query(2 << 20)))
    sock.send_multipart(frames)
    assert_oversized_refused(k, sock, msg_id)
    msg_id, frames = k.message("execute_request", execute_content(padded_query(200_000)))
    sock = k.dealer("shell")
    sock.send_multipart(frames)
    reply = recv_reply(k, sock, msg_id)
    assert reply["content"]["status"] == "ok", reply["content"]
    assert_serves(k)


# --------------------------------------------------------------------------
# unknown message types, wrong channels


@pytest.mark.parametrize("channel", ["shell", "control"])
def test_unknown_request_gets_an_error_reply(kernel, channel):
    sock = kernel.dealer(channel)
    msg_id, frames = kernel.message("foo_request", {"x": 1})
    sock.send_multipart(frames)
    reply = recv_reply(kernel, sock, msg_id)
    assert reply["msg_type"] == "foo_reply"
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "UnknownMessageType"
    assert recv_all(sock, 0.3) == []
    assert_serves(kernel)


@pytest.mark.parametrize("msg_type", ["foo", "foo_reply", "", "execute_reply", "status", "input_reply"])
def test_unknown_non_request_is_ignored(shared_kernel, msg_type):
    kernel = shared_kernel
    sock = kernel.dealer("shell")
    msg_id, frames = kernel.message(msg_type, {"status": "ok"})
    sock.send_multipart(frames)
    # No reply; at most busy/idle around it on iopub (as ipykernel does), never an output.
    assert_dropped(kernel, sock, "shell", msg_id, allow_status=True)
    assert_serves(kernel)


def test_execute_on_control_is_wrong_channel(kernel):
    sock = kernel.dealer("control")
    msg_id, frames = kernel.message("execute_request", execute_content(GOOD_QUERY, store_history=True))
    sock.send_multipart(frames)
    reply = recv_reply(kernel, sock, msg_id)
    assert reply["msg_type"] == "execute_reply"
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "WrongChannel"
    results = [m for m in hostile_iopub(kernel, 0.5) if m["msg_type"] in ("execute_result", "display_data")]
    assert results == []
    assert_serves(kernel, count=2)  # it was not run


@pytest.mark.parametrize(
    "msg_type,content",
    [
        ("execute_request", execute_content(GOOD_QUERY, store_history=True)),
        ("kernel_info_request", {}),
        ("shutdown_request", {"restart": False}),
        ("interrupt_request", {}),
        ("input_reply", {"value": "x" * 1000}),
        ("foo_request", {}),
        ("complete_request", {"code": "SELECT", "cursor_pos": 6}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_anything_on_stdin_is_ignored(shared_kernel, msg_type, content):
    kernel = shared_kernel
    sock = kernel.dealer("stdin")
    msg_id, frames = kernel.message(msg_type, content)
    sock.send_multipart(frames)
    assert_dropped(kernel, sock, "stdin", msg_id)
    time.sleep(0.3)  # a shutdown would have happened by now
    assert_serves(kernel, count=kernel.executions + 1)  # the execute_request on stdin was not run


# --------------------------------------------------------------------------
# floods and churn


def random_frames(rng: random.Random, key: bytes) -> list[bytes]:
    """One random multipart message: garbage, near misses, wrong keys."""
    kind = rng.randrange(6)
    if kind == 0:
        return [rng.randbytes(rng.randrange(0, 300)) for _ in range(rng.randrange(1, 9))]
    if kind == 1:  # the delimiter among garbage
        frames = [rng.randbytes(rng.randrange(0, 100)) for _ in range(rng.randrange(0, 8))]
        frames.insert(rng.randrange(len(frames) + 1), DELIM)
        return frames
    if kind == 2:  # well-formed, wrong key
        return signed(rng.randbytes(16), _valid_parts(key, rng.choice(["execute_request", "kernel_info_request"])))
    if kind == 3:  # right key, one frame replaced by garbage
        frames = signed(key, _valid_parts(key, "execute_request"))
        frames[rng.randrange(2, 6)] = rng.randbytes(rng.randrange(0, 200))
        return frames
    if kind == 4:  # right key, garbage JSON
        return _with_frame(key, rng.randrange(4), rng.randbytes(rng.randrange(0, 200)))
    return signed(key, _valid_parts(key))[: rng.randrange(1, 6)]  # truncated


def test_garbage_flood(kernel):
    rng = random.Random(20261123)
    socks = {ch: kernel.dealer(ch, sndhwm=0) for ch in ("shell", "control", "stdin")}
    plan = ["shell"] * 1400 + ["control"] * 300 + ["stdin"] * 300
    rng.shuffle(plan)
    for channel in plan:
        socks[channel].send_multipart(random_frames(rng, kernel.key))
    # All sent (queued in libzmq); the good client must be served within a few seconds of it.
    took = assert_serves(kernel, within=HEALTHY_WITHIN_S)
    # A signed request whose header is readable but another frame is not gets an error reply
    # (issue 20, finding 13: the client must not wait forever); nothing else is answered.
    for sock in socks.values():
        while sock.poll(1000):
            msg = parse_reply(sock.recv_multipart())
            assert msg["content"].get("ename") == "BadMessage", msg["content"]
    for channel, sock in socks.items():
        # Those answers come with busy/idle on iopub; nothing else may.
        assert_dropped(kernel, sock, channel, allow_status=True)
    assert took < HEALTHY_WITHIN_S
    assert_serves(kernel, count=3)


def test_connection_churn(kernel):
    """Hundreds of peers that connect, send garbage and vanish."""
    rng = random.Random(7)
    for i in range(300):
        channel = ("shell", "control", "stdin", "iopub", "hb")[i % 5]
        kind = zmq.SUB if channel == "iopub" else (zmq.REQ if channel == "hb" else zmq.DEALER)
        s = kernel.ctx.socket(kind)
        s.linger = 0
        s.connect(kernel.url(channel))
        if kind == zmq.SUB:
            s.setsockopt(zmq.SUBSCRIBE, rng.randbytes(rng.randrange(0, 50)))
        else:
            s.send_multipart(random_frames(rng, kernel.key))
        s.close(linger=0)
    assert_serves(kernel)


def test_raw_tcp_garbage(kernel):
    """Peers that do not speak ZMTP at all, or stop half-way through the greeting."""
    rng = random.Random(11)
    for i in range(60):
        s = kernel.tcp(("shell", "control", "stdin", "iopub", "hb")[i % 5])
        if i % 3 == 0:
            s.sendall(rng.randbytes(rng.randrange(1, 5000)))
        elif i % 3 == 1:
            s.sendall(b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f")  # half a greeting, then silence
        # else: connect and say nothing
    assert_serves(kernel)
    # A client that connects now is not held up by the silent connections.
    fresh = BlockingKernelClient()
    fresh.load_connection_info(kernel.info)
    fresh.start_channels()
    try:
        msg_id = fresh.kernel_info()
        shell_reply(fresh, msg_id, time.monotonic() + HEALTHY_WITHIN_S, lambda: f"a new client got no kernel_info_reply\n{kernel.log_tail()}")
    finally:
        fresh.stop_channels()
    assert_serves(kernel)


def zmtp_greeting_and_ready(socket_type: bytes) -> bytes:
    """A ZMTP 3.0 NULL-mechanism greeting and READY command, as a client sends them."""
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
    body = b"\x05READY" + b"\x0bSocket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
    return greeting + b"\x04" + bytes([len(body)]) + body


def test_huge_frame_length_claim(kernel):
    """A ZMTP peer that claims a 1 TiB frame and sends 10 bytes of it. (zeromq 0.7 would reserve the
    claimed size at once and abort; the kernel's frame guard closes the connection instead.)"""
    s = kernel.tcp("shell")
    s.sendall(zmtp_greeting_and_ready(b"DEALER"))
    s.sendall(b"\x02" + (1 << 40).to_bytes(8, "big") + b"0123456789")
    time.sleep(1.0)
    assert_serves(kernel)


def test_iopub_subscription_flood(kernel):
    """An XSUB peer that sends thousands of (un)subscriptions and garbage to the XPUB."""
    rng = random.Random(3)
    xsub = kernel.socket(zmq.XSUB, "iopub", sndhwm=0)
    for i in range(3000):
        kind = i % 4
        if kind == 0:
            xsub.send(b"\x01" + rng.randbytes(rng.randrange(0, 200)))
        elif kind == 1:
            xsub.send(b"\x00" + rng.randbytes(rng.randrange(0, 200)))
        elif kind == 2:
            xsub.send_multipart([rng.randbytes(rng.randrange(0, 100)) for _ in range(rng.randrange(1, 4))])
        else:
            xsub.send(b"")
    assert_serves(kernel)
    assert_serves(kernel)


# --------------------------------------------------------------------------
# peers that never read


def test_stalled_iopub_subscriber(kernel):
    """A subscriber that never reads must not stall the good client's outputs."""
    stalled = kernel.socket(zmq.SUB, "iopub", rcvhwm=1, rcvbuf=4096)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    time.sleep(0.5)  # let the subscription reach the kernel
    # Each execution publishes its code in execute_input: ~200 KB (cells are at most 256 KiB) to each
    # subscriber, 12 MB in all: more than the socket buffers to the stalled subscriber hold.
    # The kernel may take one send timeout to notice the stalled subscriber; after that the good client
    # must be served at full speed again.
    big = padded_query(200_000)
    started = time.monotonic()
    slow: list[tuple[int, float]] = []
    for i in range(60):
        t0 = time.monotonic()
        reply, msgs = good_execute(kernel, big, time.monotonic() + 30, store_history=False)
        assert reply["content"]["status"] == "ok", reply["content"]
        took = time.monotonic() - t0
        if took >= HEALTHY_WITHIN_S:
            slow.append((i, round(took, 1)))
        assert len(slow) <= 1, (
            f"with a stalled iopub subscriber, executions (index, seconds) {slow} of the good client were slow "
            f"({time.monotonic() - started:.1f} s so far)\n{kernel.log_tail()}"
        )
    for _ in range(3):
        assert_serves(kernel)


def test_stalled_shell_client(kernel):
    """A shell client that sends requests and never reads its replies must not stall the good client."""
    stalled = kernel.dealer("shell", rcvhwm=1, rcvbuf=4096, sndhwm=0)
    # Replies of ~300 KB fill the socket buffers, then small ones fill the kernel's per-peer queue.
    for _ in range(40):
        _, frames = kernel.message("y" * 100_000 + "_request")
        stalled.send_multipart(frames)
    for _ in range(2000):
        _, frames = kernel.message("kernel_info_request")
        stalled.send_multipart(frames)
    time.sleep(2.0)
    for _ in range(3):
        assert_serves(kernel)


def test_stalled_heartbeat_client(kernel):
    """A heartbeat peer that never reads its echoes must not stop the good client's heartbeat."""
    stalled = kernel.dealer("hb", rcvhwm=1, rcvbuf=4096, sndhwm=0)
    payload = b"p" * 65536
    for _ in range(1500):
        stalled.send_multipart([b"", payload])  # the REQ envelope, so the REP answers
    time.sleep(2.0)
    good = kernel.socket(zmq.REQ, "hb")
    for i in range(3):
        ping = f"ping-{i}".encode()
        good.send(ping)
        assert good.poll(int(HEALTHY_WITHIN_S * 1000)), f"no heartbeat echo within {HEALTHY_WITHIN_S} s"
        assert good.recv() == ping
    assert_serves(kernel)


# --------------------------------------------------------------------------
# bounds on what a peer can make the kernel hold (issue "Hostile clients"; "no key" means the
# finding needs no connection key: any local account could do it before the frame guard bound it)


def zmtp_frame(body: bytes, more: bool = False, command: bool = False) -> bytes:
    """One ZMTP 3 frame (the long form when the body is over 255 bytes)."""
    flags = (0x01 if more else 0) | (0x04 if command else 0)
    if len(body) > 255:
        return bytes([flags | 0x02]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


def raw_peer(k: Kernel, channel: str, socket_type: bytes) -> socket.socket:
    """A raw connection that has sent its greeting and READY (it reads nothing unless asked)."""
    s = k.tcp(channel)
    s.sendall(zmtp_greeting_and_ready(socket_type))
    return s


def closed_by_kernel(s: socket.socket, within: float) -> bool:
    """Whether the kernel's side closes `s` within `within` s (what it sends meanwhile is read and dropped)."""
    deadline = time.monotonic() + within
    while (remaining := deadline - time.monotonic()) > 0:
        s.settimeout(remaining)
        try:
            if not s.recv(1 << 16):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def send_until_refused(s: socket.socket, data: bytes, timeout: float = 5.0) -> bool:
    """Sends `data`; False when the kernel's side closed the connection (or stopped reading) first."""
    s.settimeout(timeout)
    try:
        s.sendall(data)
        return True
    except OSError:
        return False


def open_fds(k: Kernel) -> int:
    return len(os.listdir(f"/proc/{k.proc.pid}/fd"))


def settled_rss(k: Kernel, pause: float = 2.0) -> float:
    time.sleep(pause)
    return rss_mib(k)


def test_iopub_subscriptions_are_bounded(kernel):
    """Finding 3 (no key): an XSUB sent 600 x 1 MB SUBSCRIBE messages and zeromq kept them all
    (18 -> 609 MB in 4 s), duplicates included. Scaled down: 150 x 1 MB, then 20,000 copies of one
    1 KB topic, then distinct topics past the per-connection limit. The kernel may grow by at most
    48 MiB, and the peer that breaks a limit is disconnected."""
    before = settled_rss(kernel, 0.5)
    big = raw_peer(kernel, "iopub", b"SUB")
    topic = b"\x01" + b"t" * (1 << 20)
    for _ in range(150):
        if not send_until_refused(big, zmtp_frame(topic)):
            big = raw_peer(kernel, "iopub", b"SUB")
    dup = raw_peer(kernel, "iopub", b"SUB")
    same = zmtp_frame(b"\x01" + b"d" * 1000)
    assert send_until_refused(dup, same * 20_000), "a duplicate subscription is not an offence"
    many = raw_peer(kernel, "iopub", b"SUB")
    send_until_refused(many, b"".join(zmtp_frame(b"\x01" + f"topic-{i}-".encode() * 50) for i in range(2000)))
    grown = settled_rss(kernel) - before
    assert grown < 48, f"the kernel's RSS grew by {grown:.0f} MiB from subscriptions\n{kernel.log_tail()}"
    assert closed_by_kernel(many, 5.0), "a peer holding thousands of subscriptions was kept"
    assert not closed_by_kernel(dup, 0.5), "a peer repeating one subscription was disconnected"
    assert_serves(kernel)


def test_heartbeat_floods_are_bounded(kernel):
    """Finding 4 (no key): a heartbeat peer that never reads sent 2,300 x 1 MB pings (2.36 GB held:
    zeromq queues 100,000 messages per peer, so the 200 ms send timeout never fired). Scaled down:
    300 x 1 MB, and 60,000 small pings, from peers that never read. The kernel may grow by at most
    48 MiB, and another client's heartbeat is echoed at once."""
    before = settled_rss(kernel, 0.5)
    big = kernel.dealer("hb", rcvhwm=1, rcvbuf=4096, sndhwm=0)
    for _ in range(300):
        big.send_multipart([b"", b"p" * (1 << 20)])
    small = kernel.dealer("hb", rcvhwm=1, rcvbuf=4096, sndhwm=0)
    for _ in range(60_000):
        small.send_multipart([b"", b"q" * 1000])
    time.sleep(3.0)
    grown = settled_rss(kernel) - before
    assert grown < 48, f"the kernel's RSS grew by {grown:.0f} MiB from heartbeats nobody read\n{kernel.log_tail()}"
    good = kernel.socket(zmq.REQ, "hb")
    for i in range(3):
        ping = f"ping-{i}".encode()
        good.send(ping)
        assert good.poll(int(HEALTHY_WITHIN_S * 1000)), f"no heartbeat echo within {HEALTHY_WITHIN_S} s"
        assert good.recv() == ping
    assert_serves(kernel)


def test_bytes_in_flight_are_bounded_across_connections(kernel):
    """Finding 5 (no key): 200 connections each announcing a 60 MB frame (under the 64 MB cap) made
    zeromq reserve 16.5 GB; the frame guard capped one frame, not the total. Scaled down: 12
    connections announce 60 MB frames and push 40 MB of each as fast as the kernel takes it. Past a
    small free part per connection, partly received messages share one budget (twice the message
    cap), so the kernel may grow by at most 250 MiB, not the 480 MB the peers sent."""
    before = settled_rss(kernel, 0.5)
    claim, push = 60 << 20, 40 << 20
    conns = []
    for _ in range(12):
        s = raw_peer(kernel, "shell", b"DEALER")
        s.sendall(b"\x02" + claim.to_bytes(8, "big"))
        s.setblocking(False)
        conns.append(s)
    chunk = b"x" * (1 << 20)
    sent = [0] * len(conns)
    peak = 0.0
    last_progress = time.monotonic()
    while time.monotonic() - last_progress < 3.0 and any(n < push for n in sent):
        progressed = False
        for i, s in enumerate(conns):
            if sent[i] >= push:
                continue
            try:
                n = s.send(chunk[: push - sent[i]])
            except BlockingIOError:
                continue
            except OSError:
                sent[i] = push  # closed by the kernel: counts as done
                continue
            sent[i] += n
            progressed = progressed or n > 0
        if progressed:
            last_progress = time.monotonic()
        else:
            time.sleep(0.01)
        peak = max(peak, rss_mib(kernel))
    grown = max(peak, rss_mib(kernel)) - before
    assert grown < 250, f"the kernel's RSS grew by {grown:.0f} MiB with 12 partly sent 60 MB frames\n{kernel.log_tail()}"
    for s in conns:
        s.close()
    assert_serves(kernel)


def test_idle_connections_cannot_exhaust_file_descriptors(start_kernel):
    """Finding 6 (no key): ~340 idle connections used up 1,024 file descriptors (three each: the
    client's, the guard's and zeromq's), and every query then failed with AuditError. With the same
    limit, 400 idle connections: the kernel keeps a reserve of descriptors, the good client's
    queries are answered, and a new client connects."""
    import resource

    def limit_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    k = start_kernel(preexec_fn=limit_fds)
    assert_serves(k)
    for i in range(400):
        channel = ("shell", "control", "stdin", "iopub", "hb")[i % 5]
        try:
            raw_peer(k, channel, b"SUB" if channel == "iopub" else b"DEALER")
        except OSError:
            pass  # refused: the port is full of connections that proved themselves
    time.sleep(1.0)
    fds = open_fds(k)
    assert fds <= 1024 - 200, f"the kernel holds {fds} of its 1,024 file descriptors\n{k.log_tail()}"
    assert_serves(k, within=2 * HEALTHY_WITHIN_S)
    fresh = BlockingKernelClient()
    fresh.load_connection_info(k.info)
    fresh.start_channels(hb=False)
    try:
        msg_id = fresh.kernel_info()
        shell_reply(fresh, msg_id, time.monotonic() + 2 * HEALTHY_WITHIN_S,
                    lambda: f"a new client got no kernel_info_reply\n{k.log_tail()}")
    finally:
        fresh.stop_channels()
    assert_serves(k)


BOB_PROBE = r"""
import json, socket, sys, time
host, ports, seconds = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
def ready(kind):
    body = b"\x05READY" + b"\x0bSocket-Type" + len(kind).to_bytes(4, "big") + kind
    return b"\x04" + bytes([len(body)]) + body
out = {}
for name, port in ports.items():
    got, closed = b"", False
    try:
        s = socket.create_connection((host, port), timeout=2)
        s.sendall(greeting + ready(b"SUB" if name == "iopub" else b"DEALER") + (b"\x00\x01\x01" if name == "iopub" else b""))
        s.settimeout(0.2)
        end = time.time() + seconds
        while time.time() < end:
            try:
                data = s.recv(65536)
            except socket.timeout:
                continue
            if not data:
                closed = True
                break
            got += data
    except OSError:
        closed = True
    out[name] = {"closed": closed, "received": len(got), "execute_input": b"execute_input" in got}
print(json.dumps(out))
"""


def test_another_account_cannot_read_iopub_or_connect(kernel):
    """Finding 7 (no key): iopub was readable by anyone who could reach it (statement text, released
    rows, user and session). On this host only the kernel's own account (and root) may connect: the
    frame guard looks the peer's socket up in the kernel's socket table and closes another
    account's connection before it reads anything."""
    from accounts import BOB, as_user, ensure_accounts

    ensure_accounts()
    ports = {"iopub": kernel.info["iopub_port"]}
    probe = subprocess.Popen(as_user(BOB) + ["/usr/bin/python3", "-c", BOB_PROBE, kernel.info["ip"],
                                             json.dumps(ports), "4"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    for _ in range(3):
        good_execute(kernel, GOOD_QUERY, time.monotonic() + REPLY_TIMEOUT_S)
    out, err = probe.communicate(timeout=30)
    assert probe.returncode == 0, err
    seen = json.loads(out)["iopub"]
    assert not seen["execute_input"], f"another account read the kernel's iopub: {seen}"
    assert seen["closed"] and seen["received"] == 0, f"another account's iopub connection was served: {seen}"
    others = {ch: kernel.info[f"{ch}_port"] for ch in ("shell", "control", "stdin", "hb")}
    out = subprocess.run(as_user(BOB) + ["/usr/bin/python3", "-c", BOB_PROBE, kernel.info["ip"], json.dumps(others), "1"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    for channel, seen in json.loads(out).items():
        assert seen["closed"] and seen["received"] == 0, f"another account's {channel} connection was served: {seen}"
    assert "another account" in kernel.log.read_text(errors="replace")
    assert_serves(kernel)


def test_unread_replies_are_bounded(kernel):
    """Finding 11: a client that never reads its replies pinned them (1,000 requests with a 1 MB
    header: 3.15 GB; each reply carries the request's header as its parent). Scaled down: 300
    requests with a 1 MB header. What waits for one peer is bounded (8 MiB of replies), so the
    kernel may grow by at most 64 MiB. (The good client unsubscribes from iopub meanwhile, so the
    busy/idle messages, which carry the header too, are not piled up in this test process.)"""
    iopub = kernel.kc.iopub_channel.socket
    iopub.setsockopt(zmq.UNSUBSCRIBE, b"")
    time.sleep(0.5)
    before = settled_rss(kernel, 0.5)
    stalled = kernel.dealer("shell", rcvhwm=1, rcvbuf=4096, sndhwm=0)
    for _ in range(300):
        header = new_header("kernel_info_request", padding="h" * (1 << 20))
        stalled.send_multipart(signed(kernel.key, [dumps(header), b"{}", b"{}", b"{}"]))
    probe = kernel.dealer("shell")
    msg_id, frames = kernel.message("kernel_info_request")
    probe.send_multipart(frames)
    recv_reply(kernel, probe, msg_id, timeout=60)  # served even while the flood is handled
    time.sleep(3.0)
    grown = settled_rss(kernel) - before
    assert grown < 64, f"the kernel's RSS grew by {grown:.0f} MiB holding replies nobody reads\n{kernel.log_tail()}"
    iopub.setsockopt(zmq.SUBSCRIBE, b"")
    time.sleep(0.5)
    assert_serves(kernel)


def test_no_request_is_taken_after_the_shutdown_reply(kernel):
    """Finding 13: requests were served for 200 ms after `shutdown_reply`. Once the reply is sent,
    nothing more is taken, on any channel."""
    control, shell = kernel.dealer("control"), kernel.dealer("shell")
    for sock in (control, shell):  # connected and served before the shutdown
        msg_id, frames = kernel.message("kernel_info_request")
        sock.send_multipart(frames)
        recv_reply(kernel, sock, msg_id)
    msg_id, frames = kernel.message("shutdown_request", {"restart": False})
    control.send_multipart(frames)
    assert recv_reply(kernel, control, msg_id)["msg_type"] == "shutdown_reply"
    _, frames = kernel.message("kernel_info_request")
    shell.send_multipart(frames)
    _, frames = kernel.message("execute_request", execute_content(GOOD_QUERY))
    shell.send_multipart(frames)
    late = recv_all(shell, 1.0)
    assert late == [], f"requests were answered after the shutdown reply: {describe(late)}"
    kernel.proc.wait(timeout=10)


def warnings_in(k: Kernel) -> int:
    return sum(1 for line in k.log.read_text(errors="replace").splitlines() if "WARN" in line)


def test_a_garbage_flood_writes_few_log_lines(start_kernel):
    """Finding 13: unsigned garbage wrote one WARN line per message (~3 MB/s of logs). 3,000 unsigned
    messages, 3,000 with a wrong key and 300 with a header that is not JSON write at most 60 lines."""
    kernel = start_kernel(env={"SAFE_DATA_LOG": "warn"})
    assert_serves(kernel)
    before = warnings_in(kernel)
    sock = kernel.dealer("shell", sndhwm=0)
    for _ in range(3000):
        sock.send_multipart([DELIM, b"", *_valid_parts(kernel.key)])
        sock.send_multipart(signed(b"not-the-key", _valid_parts(kernel.key)))
    for _ in range(300):
        sock.send_multipart(_with_frame(kernel.key, 0, b"{not json"))
    assert_dropped(kernel, sock, "shell")
    written = warnings_in(kernel) - before
    assert written <= 60, f"{written} warning lines for a flood of 6,300 bad messages\n{kernel.log_tail(10)}"
    assert "left out" in kernel.log.read_text(errors="replace") or written < 20
    assert_serves(kernel)


def test_a_message_replayed_after_a_restart_is_dropped(start_kernel):
    """Finding 13: a restart keeps the connection file and its key, and the replay memory started
    empty, so a message captured before the restart was executed again after it."""
    first = start_kernel()
    assert_serves(first, count=1)
    sock = first.dealer("shell")
    msg_id, frames = first.message("execute_request", execute_content(GOOD_QUERY, store_history=True))
    sock.send_multipart(frames)
    assert recv_reply(first, sock, msg_id)["content"]["execution_count"] == 2
    # What jupyter_client's restart sends.
    control = first.dealer("control")
    shutdown_id, shutdown = first.message("shutdown_request", {"restart": True})
    control.send_multipart(shutdown)
    recv_reply(first, control, shutdown_id)
    first.proc.wait(timeout=10)
    first.close()
    second = start_kernel(connection_file=first.connection_file)
    mallory = second.dealer("shell")
    mallory.send_multipart(frames)
    assert_dropped(second, mallory, "shell", msg_id)
    assert_serves(second, count=1)  # the replayed execution was not run


def test_the_replay_memory_is_removed_at_a_final_shutdown(kernel):
    """The file that carries the replay memory over a restart is the kernel's to clean up."""
    memory = kernel.connection_file.with_name(f".{kernel.connection_file.name}.replay")
    assert memory.is_file() and memory.stat().st_mode & 0o077 == 0, "the replay memory is kept, private"
    control = kernel.dealer("control")
    msg_id, frames = kernel.message("shutdown_request", {"restart": False})
    control.send_multipart(frames)
    recv_reply(kernel, control, msg_id)
    kernel.proc.wait(timeout=10)
    assert not memory.exists()


def test_ipc_transport_is_guarded(start_kernel):
    """The ipc transport: the kernel binds the client's socket paths, private to its user, behind the
    same frame guard as TCP (before, zeromq bound them directly: one frame claiming 1 TiB aborted the
    kernel, and nothing bounded subscriptions or pings)."""
    import stat

    k = start_kernel(transport="ipc")
    assert k.ipc
    assert_serves(k)
    for channel in ("shell", "control", "stdin", "iopub", "hb"):
        mode = stat.S_IMODE(os.stat(k.path(channel)).st_mode)
        assert mode & 0o077 == 0, f"the {channel} socket is open to others: {oct(mode)}"
    s = raw_peer(k, "shell", b"DEALER")
    s.sendall(b"\x02" + (1 << 40).to_bytes(8, "big") + b"0123456789")
    assert closed_by_kernel(s, 5.0)
    sub = raw_peer(k, "iopub", b"SUB")
    send_until_refused(sub, zmtp_frame(b"\x01" + b"t" * (1 << 20)))
    assert closed_by_kernel(sub, 5.0)
    assert_serves(k)
    good = k.socket(zmq.REQ, "hb")
    good.send(b"ping")
    assert good.poll(int(HEALTHY_WITHIN_S * 1000)) and good.recv() == b"ping"
    # After a final shutdown the socket files are gone.
    control = k.dealer("control")
    msg_id, frames = k.message("shutdown_request", {"restart": False})
    control.send_multipart(frames)
    recv_reply(k, control, msg_id)
    k.proc.wait(timeout=10)
    assert not any(os.path.exists(k.path(ch)) for ch in ("shell", "control", "stdin", "iopub", "hb"))
