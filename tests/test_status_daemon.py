"""``status`` and ``reset`` against a running daemon: in process (the daemon's own answers, with
the real safety core and its E-stop latch) and as systemd runs it (the real ``v2g-controller``
process, the simulated inverter and a simulated board, asked through the command line)."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.control import CoreControlStep, policy_from_config
from controller.daemon import Daemon, ExitCode, Links
from controller.links import LinkStatus
from controller.sdnotify import Notifier
from controller.statusd import StatusClientError, ask
from controller.vehicle.lines import SharedFileLines
from tests.support import FakeAggregator, FakeInverter, FakeVehicle, FixedStep, Journal, make_config

ROOT = Path(__file__).resolve().parents[1]


class DownAggregator(FakeAggregator):
    """An aggregator link that stays down and says why, as the MQTT link does."""

    reason = "TLS: certificate verify failed (broker.example: certificate has expired)"

    async def run(self, wake: Callable[[], None]) -> None:
        self._status = LinkStatus.DOWN
        wake()
        await asyncio.Event().wait()


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``predicate`` (bounded): the daemon's counters have no event to wait on."""
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


def run_daemon(daemon: Daemon, scenario: Callable[[Daemon], Coroutine[Any, Any, None]]) -> ExitCode:
    async def main() -> ExitCode:
        task = asyncio.create_task(daemon.run())
        try:
            await until(lambda: daemon.ready and daemon.cycles > 0)
            await scenario(daemon)
        finally:
            daemon.request_stop()
        return await task

    return asyncio.run(main())


async def ask_async(path: Path, command: str) -> dict[str, object]:
    """The blocking client, off the daemon's event loop (as the CLI is another process)."""
    return await asyncio.to_thread(ask, path, command)


@pytest.mark.timeout(20)
def test_status_over_the_socket_shows_the_decision_each_link_and_the_reset(
    tmp_path: Path,
) -> None:
    """The socket's status is the last cycle's decision, each link with why it is down, the
    E-stop latch with the reset refused while pressed; reset over the socket goes to the core
    (refused with the reason, then accepted once released); the socket is gone after the stop."""
    path = tmp_path / "status.sock"
    config = make_config("control: {tick_s: 0.02, shutdown_timeout_s: 1.0}\n")
    estop = [False]
    step = CoreControlStep(policy_from_config(config), emergency_stop=lambda: estop[0])
    journal = Journal()
    daemon = Daemon(
        config,
        Links(FakeVehicle(journal), FakeInverter(journal), DownAggregator(journal)),
        step,
        Notifier({}),
        handle_signals=False,
        status_socket=path,
    )

    async def scenario(daemon: Daemon) -> None:
        await until(path.exists)
        status = await ask_async(path, "status")
        assert status["state"] == "idle"  # no vehicle, no inverter data: held at 0 W
        assert status["commanded_w"] == 0.0
        assert status["enabled"] is False
        assert status["source"] == "fallback"
        assert status["ready"] is True
        assert status["stopping"] is False
        assert isinstance(status["uptime_s"], float)
        assert status["version"] == "0.1.0"
        links = status["links"]
        assert isinstance(links, dict)
        assert links["vehicle"] == {"status": "up", "reason": None, "data_age_s": None}
        assert links["aggregator"]["status"] == "down"
        assert links["aggregator"]["reason"] == DownAggregator.reason
        assert status["limits"], "the limits in force"
        assert status["reasons"], "why the command is what it is"

        estop[0] = True
        cycles = daemon.cycles
        await until(lambda: daemon.cycles > cycles + 2)
        faults = (await ask_async(path, "status"))["faults"]
        assert isinstance(faults, dict)
        assert "emergency stop" in faults["latched"]
        assert faults["reset"]["would_be_accepted"] is False
        assert "release the emergency stop" in faults["how_to_reset"]
        refused = await ask_async(path, "reset")
        assert refused["accepted"] is False
        assert "refused, a cause is still present" in str(refused["reason"])
        assert "emergency stop" in str(refused["reason"])

    assert run_daemon(daemon, scenario) is ExitCode.OK
    assert not path.exists()


@pytest.mark.timeout(20)
def test_reset_over_the_socket_is_accepted_once_every_cause_is_gone(tmp_path: Path) -> None:
    """A latch whose cause is gone: status says the reset would be accepted and how; reset
    over the socket clears it through the daemon's reset_faults (logged as from the socket)."""
    path = tmp_path / "status.sock"
    config = make_config(
        "control: {tick_s: 0.02, shutdown_timeout_s: 1.0}\nsafety: {fault_hold_s: 3600}\n"
    )
    estop = [True]
    step = CoreControlStep(policy_from_config(config), emergency_stop=lambda: estop[0])
    journal = Journal()
    links = Links(FakeVehicle(journal), FakeInverter(journal), FakeAggregator(journal))
    daemon = Daemon(config, links, step, Notifier({}), handle_signals=False, status_socket=path)

    async def scenario(daemon: Daemon) -> None:
        await until(path.exists)
        estop[0] = False
        cycles = daemon.cycles
        await until(lambda: daemon.cycles > cycles + 2)
        before = await ask_async(path, "status")
        faults = before["faults"]
        assert isinstance(faults, dict)
        assert faults["latched"] == ["emergency stop"]
        assert faults["reset"] == {
            "would_be_accepted": True,
            "answer": "fault_reset: cleared: emergency stop; power resumes only after a start",
        }
        assert str(faults["how_to_reset"]).startswith(
            "every cause is gone: `v2g-controller reset` (or the board's reset button) clears "
            "it now; after an emergency stop power resumes only on a new start"
        )
        answer = await ask_async(path, "reset")
        assert answer == {"command": "reset", "accepted": True, "reason": faults["reset"]["answer"]}
        cycles = daemon.cycles
        await until(lambda: daemon.cycles > cycles + 1)
        after = await ask_async(path, "status")
        assert after["faults"]["latched"] == []  # type: ignore[index]

    assert run_daemon(daemon, scenario) is ExitCode.OK


@pytest.mark.timeout(20)
def test_a_control_step_without_a_latch_refuses_reset_and_says_so(tmp_path: Path) -> None:
    """A step that keeps no latch: reset is refused with that reason, status has no preview."""
    path = tmp_path / "status.sock"
    journal = Journal()
    links = Links(FakeVehicle(journal), FakeInverter(journal), FakeAggregator(journal))
    config = make_config("control: {tick_s: 0.02, shutdown_timeout_s: 1.0}\n")
    daemon = Daemon(
        config, links, FixedStep(), Notifier({}), handle_signals=False, status_socket=path
    )

    async def scenario(daemon: Daemon) -> None:
        await until(path.exists)
        answer = await ask_async(path, "reset")
        assert answer == {
            "command": "reset",
            "accepted": False,
            "reason": "this control step keeps no latch",
        }
        status = await ask_async(path, "status")
        assert status["state"] == "charging"
        assert status["commanded_w"] == 1000.0
        assert status["faults"] == {
            "latched": [],
            "present": [],
            "reset": None,
            "how_to_reset": "nothing latched: nothing to reset",
            "reset_mode": "auto",
            "fault_hold_s": 60.0,
            "manual_reset": [],
        }

    assert run_daemon(daemon, scenario) is ExitCode.OK


# -- the real process, asked through the command line ----------------------------------------------


def cli(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        cwd=ROOT,
        user=user,
    )


class Process:
    """A child process, ended (by its id) on the way out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def stop(self, timeout_s: float = 10.0) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            output, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            output, _ = self.proc.communicate()
        return self.proc.returncode, output


@pytest.fixture
def inverter_port() -> Iterator[int]:
    """The simulated SunSpec inverter (``python -m hil.inverter``) on a free port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil.inverter", "--tcp", "127.0.0.1:0"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    child = Process(proc)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        found = re.search(r"tcp 127\.0\.0\.1:(\d+)", first)
        assert found, first
        yield int(found.group(1))
    finally:
        child.stop()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline_s = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline_s, what
        time.sleep(0.05)


def status_of(path: Path) -> dict[str, Any]:
    try:
        return ask(path, "status")
    except StatusClientError:
        return {}


def estop_refused_then_accepted(path: Path, lines_path: Path) -> None:
    """Press the E-stop on the simulated board: reset refused; release it: reset accepted."""
    board = SharedFileLines(lines_path, side="vehicle")
    board.open()
    try:
        board.emergency_stop = True
        wait_for(
            lambda: "emergency stop" in status_of(path)["faults"]["latched"],
            10,
            "the E-stop never latched",
        )
        shown = cli("status", "--socket", str(path))
        assert "latched: emergency stop" in shown.stdout
        assert "reset would be refused" in shown.stdout
        assert "release the emergency stop" in shown.stdout
        refused = cli("reset", "--socket", str(path))
        assert refused.returncode == 1
        assert refused.stderr.startswith("reset refused: ")
        assert "a cause is still present" in refused.stderr

        board.emergency_stop = False
        wait_for(
            lambda: status_of(path)["faults"]["reset"]["would_be_accepted"] is True,
            10,
            "the released E-stop never became resettable",
        )
        accepted = cli("reset", "--socket", str(path))
        assert accepted.returncode == 0, accepted.stderr
        assert accepted.stdout.startswith("reset accepted: ")
        assert "cleared: emergency stop" in accepted.stdout
        wait_for(lambda: not status_of(path)["faults"]["latched"], 10, "the latch stayed")
    finally:
        board.close()


@pytest.mark.timeout(60)
def test_status_and_reset_from_the_command_line_against_the_daemon_process(
    tmp_path: Path, inverter_port: int
) -> None:
    """``v2g-controller status`` and ``reset`` on the real daemon with the simulated inverter
    and board: the links and state read right; with the E-stop pressed, reset is refused with
    the reason (exit 1); released, it is accepted (exit 0) and the latch is gone; the daemon
    then stops cleanly and takes its socket with it."""
    path = tmp_path / "status.sock"
    lines_path = tmp_path / "lines"
    config = tmp_path / "config.yaml"
    config.write_text(
        "site: {site_id: test-site, charger_id: c1}\n"
        "vehicle:\n"
        "  protocol: chademo\n"
        f"  can: {{interface: virtual, channel: status-{os.getpid()}}}\n"
        f"  lines: {{kind: simulated, path: {lines_path}}}\n"
        f"inverter: {{transport: tcp, tcp: {{host: 127.0.0.1, port: {inverter_port}}}}}\n"
        "aggregator: {enabled: false}\n"
        "logging: {format: json}\n"
        f"ledger: {{path: {tmp_path / 'ledger.sqlite'}}}\n"
        "safety: {fault_hold_s: 3600}\n"
        f"status: {{socket_path: {path}}}\n"
    )
    daemon = Process(
        subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "-c", str(config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    )
    try:
        wait_for(
            lambda: (
                status_of(path).get("links", {}).get("inverter", {}).get("status") == "up"
                and not status_of(path)["faults"]["latched"]
            ),
            30,
            "the daemon never reported its inverter up with nothing latched",
        )
        shown = cli("status", "--socket", str(path))
        assert shown.returncode == 0, shown.stderr
        assert re.search(
            r"^state\s+idle \(source: fallback\), power stage disabled$", shown.stdout, re.M
        ), shown.stdout
        assert re.search(r"^links\s+vehicle\s+up$", shown.stdout, re.M), shown.stdout
        assert re.search(r"^\s+inverter\s+up \(data [0-9.]+ s old\)$", shown.stdout, re.M)
        assert re.search(
            r"^\s+aggregator disabled: switched off in the config$", shown.stdout, re.M
        )
        assert re.search(r"^faults\s+none latched$", shown.stdout, re.M), shown.stdout
        as_json = cli("status", "--json", "--socket", str(path))
        assert as_json.returncode == 0, as_json.stderr
        document = json.loads(as_json.stdout)
        assert document["state"] == "idle"
        assert document["links"]["inverter"] == {
            "status": "up",
            "reason": None,
            "data_age_s": document["links"]["inverter"]["data_age_s"],
        }

        estop_refused_then_accepted(path, lines_path)
    finally:
        code, output = daemon.stop()
    assert code == 0, output
    assert "Traceback" not in output
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    resets = [r for r in records if r.get("event") == "fault reset"]
    assert [(r["source"], r["accepted"]) for r in resets] == [
        ("status socket", False),
        ("status socket", True),
    ]
    # Who asked, as the kernel says (SO_PEERCRED): the two `reset` processes, as this user.
    asked = [r for r in records if r.get("event") == "status socket request"]
    assert [(r["command"], r["peer_uid"]) for r in asked] == [("reset", os.getuid())] * 2
    assert all(r["peer_pid"] > 0 for r in asked)
    assert not path.exists()
    gone = cli("status", "--socket", str(path))
    assert gone.returncode == 1
    assert gone.stderr.startswith(f"status: no status socket at {path}: the daemon is not running")


@pytest.mark.timeout(30)
def test_the_command_line_says_what_to_do_when_the_daemon_cannot_be_asked(
    tmp_path: Path,
) -> None:
    """A socket left by a killed daemon, and a socket this user may not open (the group to
    join is named), each give exit 1 and a message that says what to do."""
    import socket  # noqa: PLC0415  only this test makes a raw socket

    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as leftover:
        leftover.bind(str(stale))
    result = cli("reset", "--socket", str(stale))
    assert result.returncode == 1
    assert result.stderr.startswith(f"reset: nothing answers on {stale}: the daemon")

    # Permission: root may open anything, so the client runs as nobody (a forked child of
    # this test: the interpreter is under /root, which nobody may not read), against a
    # listening socket of mode 0660 owned by root's group, in a directory all may enter.
    if os.geteuid() != 0:
        pytest.fail("this test needs to run as root to drop to another user")
    nobody = pwd.getpwnam("nobody")
    shared = Path(tempfile.mkdtemp(prefix="v2g-status-"))
    try:
        shared.chmod(0o755)
        guarded = shared / "status.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(str(guarded))
            listener.listen()
            guarded.chmod(0o660)
            read_end, write_end = os.pipe()
            child = os.fork()
            if child == 0:  # pragma: no cover  (the child reports through the pipe)
                code = 0
                try:
                    os.setgroups([])
                    os.setgid(nobody.pw_gid)
                    os.setuid(nobody.pw_uid)
                    ask(guarded, "status", timeout_s=2.0)
                    message = "answered"
                except StatusClientError as exc:
                    message = str(exc)
                except BaseException as exc:  # noqa: BLE001  reported to the parent, not raised
                    message = f"unexpected {type(exc).__name__}: {exc}"
                    code = 1
                os.write(write_end, message.encode())
                os._exit(code)
            os.close(write_end)
            with os.fdopen(read_end, "rb") as pipe:
                message = pipe.read().decode()
            _, wait_status = os.waitpid(child, 0)
    finally:
        shutil.rmtree(shared)
    assert os.waitstatus_to_exitcode(wait_status) == 0, message
    assert message.startswith(
        f"not allowed to open {guarded}: only the service's user and group 'root' may"
    ), message
    assert "sudo usermod -aG root $USER" in message
