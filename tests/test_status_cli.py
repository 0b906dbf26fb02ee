"""``v2g-controller status`` and ``reset`` (controller/cli.py) against a status server on a
thread of its own: what is printed and the exit status for each kind of answer."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import structlog

from controller.cli import main
from controller.statusd import Answer, Handler, StatusServer


@contextmanager
def daemon_answering(path: Path, handler: Handler) -> Iterator[None]:
    """A status server at ``path`` answering with ``handler``, on its own loop and thread;
    its log is captured (not printed among the command's output)."""
    loop = asyncio.new_event_loop()
    server = StatusServer(path, handler)
    listening = threading.Event()
    stop = asyncio.Event()
    ended: list[bool] = []

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        waiter = asyncio.create_task(server.listening.wait())
        waiter.add_done_callback(lambda _: listening.set())
        await stop.wait()
        task.cancel()
        waiter.cancel()
        await asyncio.wait([task, waiter])
        ended.append(task.cancelled())

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    with structlog.testing.capture_logs():
        thread.start()
        try:
            assert listening.wait(5), "the status server never listened"
            yield
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(5)
            loop.close()
    assert ended == [True]


def answers(answer: Answer) -> Handler:
    return lambda _command: answer


STATUS = {
    "command": "status",
    "version": "0.1.0",
    "uptime_s": 12.5,
    "ready": True,
    "cycles": 125,
    "state": "idle",
    "source": "none",
    "links": {"vehicle": {"status": "down", "reason": "bus-off (can0)", "data_age_s": None}},
    "faults": {"latched": []},
}


@pytest.mark.timeout(10)
def test_status_prints_the_summary_or_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 0 with the readable summary; with --json, the daemon's answer as it came."""
    path = tmp_path / "status.sock"
    with daemon_answering(path, answers(STATUS)):
        assert main(["status", "--socket", str(path)]) == 0
        text = capsys.readouterr().out
        assert "links       vehicle    down: bus-off (can0)" in text
        assert main(["status", "--json", "--socket", str(path)]) == 0
        assert json.loads(capsys.readouterr().out) == STATUS


@pytest.mark.timeout(10)
def test_reset_exits_0_when_accepted_and_1_with_the_reason_when_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Accepted: exit 0 and the core's note on stdout; refused: exit 1 and why on stderr."""
    path = tmp_path / "status.sock"
    accepted = {"command": "reset", "accepted": True, "reason": "fault_reset: cleared: x"}
    with daemon_answering(path, answers(accepted)):
        assert main(["reset", "--socket", str(path)]) == 0
    assert capsys.readouterr().out == "reset accepted: fault_reset: cleared: x\n"
    refused = {"command": "reset", "accepted": False, "reason": "a cause is still present"}
    with daemon_answering(path, answers(refused)):
        assert main(["reset", "--socket", str(path)]) == 1
    assert capsys.readouterr().err == "reset refused: a cause is still present\n"


@pytest.mark.timeout(10)
def test_an_error_answer_or_no_daemon_exits_1_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon's {"error": ...} is passed on; no socket says the daemon is not running."""
    path = tmp_path / "status.sock"
    with daemon_answering(path, answers({"error": "busy: 8 requests under way; try again"})):
        assert main(["status", "--socket", str(path)]) == 1
    assert capsys.readouterr().err == (
        "status: the daemon refused the request: busy: 8 requests under way; try again\n"
    )
    assert main(["reset", "--socket", str(tmp_path / "none.sock")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"reset: no status socket at {tmp_path / 'none.sock'}: the daemon")
