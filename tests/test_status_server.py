"""The status socket server (controller/statusd.py) on a real Unix socket: one JSON line in, one
JSON answer out, every bad request answered with its reason, and nothing left behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import stat
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.statusd import (
    MAX_REQUEST_BYTES,
    Answer,
    StatusServer,
    _BadRequest,
    parse_request,
)


class Handler:
    """Answers every command with its name, counting the calls."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def __call__(self, command: str) -> Answer:
        self.commands.append(command)
        return {"command": command, "ok": True}


@asynccontextmanager
async def serving(server: StatusServer) -> AsyncIterator[asyncio.Task[None]]:
    """``server`` listening; cancelled (and awaited) on the way out."""
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(5):
            await server.listening.wait()
        yield task
    finally:
        task.cancel()
        await asyncio.wait([task])


async def exchange(path: Path, request: bytes, *, whole: bool = True) -> dict[str, Any]:
    """Send ``request`` and read the answer line; when the server reads the ``whole`` request
    (it does unless it is oversized), end the input and check that the answer is all there is."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        with contextlib.suppress(ConnectionResetError):  # a server that stopped reading
            writer.write(request)
            await writer.drain()
        if whole:
            writer.write_eof()
        async with asyncio.timeout(5):
            data = await reader.readline()
            if whole:
                assert await reader.read() == b""  # one answer, then the server closes
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError):
            await writer.wait_closed()
    assert data.endswith(b"\n"), data
    answer = json.loads(data)
    assert isinstance(answer, dict)
    return answer


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_status_and_reset_are_answered_and_the_socket_is_0660(tmp_path: Path) -> None:
    """Each command gets the handler's answer; the socket is mode 0660 while it serves and is
    gone once the server ends."""
    path = tmp_path / "status.sock"
    handler = Handler()
    server = StatusServer(path, handler)

    async def scenario() -> None:
        async with serving(server) as task:
            mode = path.stat().st_mode
            assert stat.S_ISSOCK(mode)
            assert stat.S_IMODE(mode) == 0o660
            assert await exchange(path, b'{"command": "status"}\n') == {
                "command": "status",
                "ok": True,
            }
            assert (await exchange(path, b'{"command":"reset"}\n'))["command"] == "reset"
            # The end of input ends a request as a newline does.
            assert (await exchange(path, b' {"command": "status"} '))["ok"] is True
        assert task.cancelled()

    run(scenario)
    assert handler.commands == ["status", "reset", "status"]
    assert not path.exists()


BAD_REQUESTS = [
    (b"status\n", "request is not JSON"),
    (b"[1, 2]\n", "request is a JSON list, not an object"),
    (b'{"cmd": "status"}\n', "request has no 'command'"),
    (b'{"command": 7}\n', "'command' is a int, expected a string"),
    (b'{"command": "shutdown"}\n', "unknown command 'shutdown'; expected one of status, reset"),
    (b'{"command": "status", "x": 1}\n', "unexpected keys 'x'"),
    (b"\n", "empty request"),
    (b"", "empty request"),
    (b'{"command": "st\xffatus"}\n', "request is not UTF-8 text (byte 15)"),
]


@pytest.mark.timeout(10)
def test_bad_requests_get_their_reason_and_the_handler_is_not_called(tmp_path: Path) -> None:
    """Every malformed request is answered {"error": <why>}, and the server serves on."""
    path = tmp_path / "status.sock"
    handler = Handler()
    server = StatusServer(path, handler)

    async def scenario() -> None:
        async with serving(server):
            for request, reason in BAD_REQUESTS:
                answer = await exchange(path, request)
                assert list(answer) == ["error"], (request, answer)
                assert reason in str(answer["error"]), (request, answer)
            assert (await exchange(path, b'{"command": "status"}\n'))["ok"] is True

    run(scenario)
    assert handler.commands == ["status"]


@pytest.mark.timeout(10)
def test_an_oversized_request_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    """A line over the limit is refused by size, whether or not a newline ever comes; a line
    of exactly the limit is read."""
    path = tmp_path / "status.sock"
    handler = Handler()
    server = StatusServer(path, handler, max_request_bytes=64)

    async def scenario() -> None:
        async with serving(server):
            padded = b'{"command": "status"' + b" " * (64 - 21) + b"}"
            assert len(padded) == 64
            assert (await exchange(path, padded + b"\n"))["ok"] is True
            for request in (padded + b" \n", b"x" * 100_000):
                answer = await exchange(path, request, whole=False)
                assert answer == {"error": "request longer than 64 bytes; expected one short line"}

    run(scenario)
    assert handler.commands == ["status"]


@pytest.mark.timeout(10)
def test_a_slow_client_is_answered_at_the_read_timeout_and_dropped(tmp_path: Path) -> None:
    """A client that sends half a line and waits gets the timeout's reason, then EOF, within
    the read timeout; other clients are served meanwhile."""
    path = tmp_path / "status.sock"
    server = StatusServer(path, Handler(), read_timeout_s=0.3)

    async def scenario() -> None:
        async with serving(server):
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b'{"command": "sta')
            await writer.drain()
            loop = asyncio.get_running_loop()
            started_s = loop.time()
            assert (await exchange(path, b'{"command": "status"}\n'))["ok"] is True
            async with asyncio.timeout(3):
                data = await reader.read()  # to EOF: the server closed
            waited_s = loop.time() - started_s
            writer.close()
            answer = json.loads(data)
            assert "no complete request line within 0.3 s" in answer["error"]
            assert 0.2 <= waited_s < 2.0

    run(scenario)


@pytest.mark.timeout(10)
def test_cancel_mid_request_ends_the_server_and_its_exchanges(tmp_path: Path) -> None:
    """Cancelled while a client is connected and has sent part of its line (with a long read
    timeout), the server ends at once: the task is cancelled, the client sees the connection
    close without an answer, and the socket file is removed."""
    path = tmp_path / "status.sock"
    server = StatusServer(path, Handler(), read_timeout_s=3600)

    async def scenario() -> None:
        task = asyncio.create_task(server.serve())
        async with asyncio.timeout(5):
            await server.listening.wait()
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b'{"command"')
        await writer.drain()
        await asyncio.sleep(0.1)  # the exchange is under way, waiting for the rest
        task.cancel()
        async with asyncio.timeout(2):
            done, _ = await asyncio.wait([task])
            data = await reader.read()
        writer.close()
        assert task in done
        assert task.cancelled()
        assert data == b""

    with structlog.testing.capture_logs() as logs:
        run(scenario)
    assert not path.exists()
    assert not [entry for entry in logs if entry["log_level"] == "error"], logs


@pytest.mark.timeout(10)
def test_a_failing_handler_is_an_error_answer_not_a_traceback(tmp_path: Path) -> None:
    """A handler that raises gives the client the reason; the server serves the next one."""
    path = tmp_path / "status.sock"
    calls: list[str] = []

    def handler(command: str) -> Answer:
        calls.append(command)
        if len(calls) == 1:
            raise KeyError("links")
        return {"ok": True}

    server = StatusServer(path, handler)

    async def scenario() -> None:
        async with serving(server):
            answer = await exchange(path, b'{"command": "status"}\n')
            assert answer == {"error": "internal error answering 'status': KeyError: 'links'"}
            assert (await exchange(path, b'{"command": "status"}\n')) == {"ok": True}

    with structlog.testing.capture_logs():
        run(scenario)


@pytest.mark.timeout(10)
def test_more_clients_than_allowed_are_told_busy(tmp_path: Path) -> None:
    """With max_clients exchanges under way, the next client is answered "busy" at once."""
    path = tmp_path / "status.sock"
    server = StatusServer(path, Handler(), max_clients=1, read_timeout_s=3)

    async def scenario() -> None:
        async with serving(server):
            _, holder = await asyncio.open_unix_connection(str(path))  # sends nothing
            await asyncio.sleep(0.05)
            answer = await exchange(path, b'{"command": "status"}\n')
            holder.close()
            assert answer == {"error": "busy: 1 requests under way; try again"}

    run(scenario)


@pytest.mark.timeout(10)
def test_a_stale_socket_is_replaced_but_a_live_one_and_other_files_are_not(tmp_path: Path) -> None:
    """A socket nobody listens on (a killed daemon's) is replaced; a second server on a live
    socket logs why and returns without touching it; a regular file there is never removed."""
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as leftover:
        leftover.bind(str(stale))  # bound, never listening: what a SIGKILL leaves
    regular = tmp_path / "regular"
    regular.write_text("keep me")

    async def scenario() -> None:
        first = StatusServer(stale, Handler())
        async with serving(first):
            assert (await exchange(stale, b'{"command": "status"}\n'))["ok"] is True
            second = StatusServer(stale, Handler())
            async with asyncio.timeout(5):
                await second.serve()  # returns: the socket is in use
            assert not second.listening.is_set()
            assert (await exchange(stale, b'{"command": "status"}\n'))["ok"] is True
        blocked = StatusServer(regular, Handler())
        async with asyncio.timeout(5):
            await blocked.serve()
        missing = StatusServer(tmp_path / "no-such-dir" / "status.sock", Handler())
        async with asyncio.timeout(5):
            await missing.serve()

    with structlog.testing.capture_logs() as logs:
        run(scenario)
    assert regular.read_text() == "keep me"
    errors = [str(entry["error"]) for entry in logs if entry["log_level"] == "error"]
    assert errors == [
        f"another process answers on {stale}; is a daemon running?",
        f"{regular} exists and is not a socket; not removed",
        f"directory {tmp_path / 'no-such-dir'} does not exist (systemd makes "
        "/run/v2g-controller with RuntimeDirectory=v2g-controller)",
    ]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2 * MAX_REQUEST_BYTES))
def test_any_request_line_names_a_command_or_is_refused_with_a_reason(line: bytes) -> None:
    """Whatever the bytes, the parser returns a known command or raises its declared error
    with a non-empty reason; nothing else escapes."""
    try:
        outcome = parse_request(line)
    except _BadRequest as exc:
        outcome = f"refused: {exc}"
    assert outcome in ("status", "reset") or len(outcome) > len("refused: ")
