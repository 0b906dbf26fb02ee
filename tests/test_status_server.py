"""The status socket server (controller/statusd.py) on a real Unix socket: one JSON line in, one
JSON answer out, every bad request answered with its reason, and nothing left behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable, Coroutine, MutableMapping
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
    _ask_on,
    _BadRequest,
    ask,
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
    """With max_clients exchanges under way, the next client (``ask``, as the command line
    uses it) is answered "busy" at once."""
    path = tmp_path / "status.sock"
    server = StatusServer(path, Handler(), max_clients=1, read_timeout_s=3)

    async def scenario() -> None:
        async with serving(server):
            _, holder = await asyncio.open_unix_connection(str(path))  # sends nothing
            await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            started_s = loop.time()
            answer = await asyncio.to_thread(ask, path, "status")
            assert loop.time() - started_s < 1.0  # not after the holder's read timeout
            holder.close()
            assert answer == {"error": "busy: 1 requests under way; try again"}

    run(scenario)


@pytest.mark.timeout(10)
def test_a_connect_loop_over_the_limit_gets_busy_without_reads_or_tasks(tmp_path: Path) -> None:
    """Connections over max_clients that send nothing and stay open are each answered "busy"
    and closed by the server at once: no read, no task per connection (the tasks on the loop
    do not grow), and the server serves normally once the holder has gone."""
    path = tmp_path / "status.sock"
    server = StatusServer(path, Handler(), max_clients=1, read_timeout_s=3)
    connections = 200

    async def scenario() -> None:
        async with serving(server):
            held, holder = await asyncio.open_unix_connection(str(path))  # sends nothing yet
            await asyncio.sleep(0.05)
            assert server.exchanges_under_way == 1
            tasks_before = len(asyncio.all_tasks())
            opened: list[asyncio.StreamWriter] = []
            try:
                for _ in range(connections):
                    reader, writer = await asyncio.open_unix_connection(str(path))
                    opened.append(writer)
                    async with asyncio.timeout(1):
                        line = await reader.readline()  # sent nothing: the server did not wait
                        assert await reader.read() == b""  # and it closed
                    assert json.loads(line) == {"error": "busy: 1 requests under way; try again"}
                assert len(asyncio.all_tasks()) <= tasks_before
                assert server.exchanges_under_way == 1
                assert server.refused_busy == connections
            finally:
                for writer in opened:
                    writer.close()
            holder.write(b'{"command": "status"}\n')  # the holder is served after all
            async with asyncio.timeout(2):
                assert json.loads(await held.readline())["ok"] is True
                assert await held.read() == b""
            holder.close()
            await asyncio.sleep(0.05)
            assert server.exchanges_under_way == 0
            assert (await exchange(path, b'{"command": "status"}\n'))["ok"] is True

    run(scenario)


def test_ask_reads_the_answer_of_a_daemon_that_closed_before_the_request() -> None:
    """A busy daemon writes its line and closes without reading; a client whose request then
    meets a closed socket (EPIPE) still reads the line waiting for it."""
    client, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with client:
        client.settimeout(2)
        daemon.sendall(b'{"error": "busy: 8 requests under way; try again"}\n')
        daemon.close()
        with client.dup() as probe, pytest.raises(BrokenPipeError):  # what a request meets
            probe.send(b"x")
        data = _ask_on(client, b'{"command": "status"}\n')
    assert json.loads(data) == {"error": "busy: 8 requests under way; try again"}


def _serve_once_logging(server: StatusServer) -> list[MutableMapping[str, Any]]:
    """Run ``server.serve()`` (which must return by itself) and give its log."""
    with structlog.testing.capture_logs() as logs:
        asyncio.run(asyncio.wait_for(server.serve(), 5))
    return logs


@pytest.mark.timeout(10)
def test_a_directory_without_search_permission_is_logged_and_serve_returns(
    tmp_path: Path,
) -> None:
    """A socket under a directory the service may not search (is_dir() raises
    PermissionError on 3.11) is a logged error and serve() returns: the daemon runs on. Root
    searches anything, so under root the server runs in a forked child as nobody."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    server = StatusServer(locked / "run" / "status.sock", Handler())
    if os.geteuid() != 0:
        locked.chmod(0)
        try:
            logs = _serve_once_logging(server)
        finally:
            locked.chmod(0o700)
    else:
        logs = _in_child_as_nobody(lambda: _serve_once_logging(server))
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert [entry["event"] for entry in errors] == [
        "status socket not opened; `v2g-controller status` cannot reach this daemon, which runs on"
    ]
    assert errors[0]["error"] == (
        f"cannot look at directory {locked / 'run'}: "
        f"[Errno 13] Permission denied: '{locked / 'run'}'"
    )


def _in_child_as_nobody(
    work: Callable[[], list[MutableMapping[str, Any]]],
) -> list[MutableMapping[str, Any]]:
    """``work()`` in a forked child running as nobody; its result (JSON) or its failure."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(_NOBODY, _NOBODY, _NOBODY)
            os.setresuid(_NOBODY, _NOBODY, _NOBODY)
            result = json.dumps(work(), default=str)
            code = 0
        except BaseException as exc:  # noqa: BLE001  reported to the parent, which fails
            result = json.dumps({"child failed": f"{type(exc).__name__}: {exc}"})
        finally:
            with os.fdopen(write_end, "w") as out:
                out.write(result)
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as source:
        output = source.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    logs = json.loads(output)
    assert isinstance(logs, list)
    return logs


_NOBODY = 65534


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
