"""``v2g-controller reset-faults``: SIGUSR1 to the running daemon, found by --pid or by systemd."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.cli import main
from tests.support import NotifyListener
from tests.test_daemon_process import start_daemon

# Stands in for the daemon: named and invoked like the installed entry point
# (``.../bin/v2g-controller run -c ...``), it says when its handler is in place and records
# SIGUSR1 (which would end it without one). It gives up after 20 s so it can never linger.
DAEMON = textwrap.dedent(
    """
    import signal, sys, time
    got = []
    signal.signal(signal.SIGUSR1, lambda *_: got.append(True))
    print("ready", flush=True)
    deadline = time.monotonic() + 20
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    print("got SIGUSR1" if got else "no signal", flush=True)
    """
)


def start(argv: list[str]) -> subprocess.Popen[str]:
    """A child process that has printed its first line (bounded wait)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10.0)
    assert ready, "the child never started"
    assert proc.stdout.readline().strip() == "ready"
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    script = tmp_path / "bin" / "v2g-controller"
    script.parent.mkdir()
    script.write_text(DAEMON)
    proc = start([sys.executable, str(script), "run", "-c", "/etc/v2g-controller/config.yaml"])
    yield proc
    stop(proc)


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[str]]:
    """Some other program, which SIGUSR1 would kill."""
    proc = start([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(30)"])
    yield proc
    stop(proc)


def fake_systemctl(directory: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """A ``systemctl`` on a PATH of its own, recording its arguments."""
    directory.mkdir(exist_ok=True)
    tool = directory / "systemctl"
    tool.write_text(f'#!/bin/sh\necho "$@" > "{directory}/args"\n{body}\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(directory))
    return directory / "args"


def received(proc: subprocess.Popen[str]) -> str:
    out, _ = proc.communicate(timeout=30)
    return out.strip()


@pytest.mark.timeout(60)
def test_pid_gets_sigusr1_and_the_output_says_what_happens_next(
    daemon: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--pid N: the daemon receives SIGUSR1; the command says it sent a reset, that the daemon
    accepts it only once every cause is gone, and where the answer is logged."""
    assert main(["reset-faults", "--pid", str(daemon.pid)]) == 0
    assert received(daemon) == "got SIGUSR1"
    out = capsys.readouterr().out
    assert f"SIGUSR1) to the v2g-controller daemon, process {daemon.pid}" in out
    assert "only when every cause is gone" in out
    assert "journalctl -u v2g-controller" in out


@pytest.mark.timeout(60)
def test_without_pid_systemd_main_pid_is_used(
    daemon: subprocess.Popen[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --pid: the PID is systemd's MainPID of v2g-controller.service."""
    args = fake_systemctl(tmp_path / "tools", monkeypatch, f"echo {daemon.pid}")
    assert main(["reset-faults"]) == 0
    assert received(daemon) == "got SIGUSR1"
    assert args.read_text().split() == [
        "show",
        "-p",
        "MainPID",
        "--value",
        "v2g-controller.service",
    ]


@pytest.mark.timeout(30)
def test_service_not_running_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """MainPID 0 (the service is stopped): exit 1, saying so and what to do."""
    fake_systemctl(tmp_path / "tools", monkeypatch, "echo 0")
    assert main(["reset-faults"]) == 1
    err = capsys.readouterr().err
    assert "v2g-controller.service is not running" in err
    assert "--pid" in err
    assert "Traceback" not in err


@pytest.mark.timeout(30)
def test_systemctl_missing_or_failing_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No systemctl on PATH, or one that fails (a system not booted with systemd): exit 1."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main(["reset-faults"]) == 1
    assert "systemctl not found" in capsys.readouterr().err
    fake_systemctl(
        tmp_path / "tools",
        monkeypatch,
        'echo "System has not been booted with systemd as init system (PID 1)." >&2; exit 1',
    )
    assert main(["reset-faults"]) == 1
    err = capsys.readouterr().err
    assert "System has not been booted with systemd" in err
    assert "--pid" in err


@pytest.mark.timeout(60)
def test_a_pid_that_is_not_the_daemon_is_refused_and_left_alone(
    bystander: subprocess.Popen[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGUSR1 would end another program: a PID that is not the daemon gets nothing."""
    assert main(["reset-faults", "--pid", str(bystander.pid)]) == 1
    assert "is not the v2g-controller daemon" in capsys.readouterr().err
    assert bystander.poll() is None  # still running


@pytest.mark.timeout(30)
def test_a_pid_with_no_process_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A process that has ended: exit 1, no traceback."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    assert main(["reset-faults", "--pid", str(proc.pid)]) == 1
    err = capsys.readouterr().err
    assert f"no process {proc.pid}" in err


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("value", "message"),
    [("abc", "'abc' is not a process id"), ("0", "expected a process id above 0, found 0")],
)
def test_a_bad_pid_is_a_usage_error(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--pid that is not a positive number: usage error (exit 2) naming the value."""
    with pytest.raises(SystemExit) as exit_info:
        main(["reset-faults", "--pid", value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.timeout(90)
def test_the_real_daemon_hears_it_and_logs_the_answer(
    tmp_path: Path, listener: NotifyListener, capsys: pytest.CaptureFixture[str]
) -> None:
    """Against ``python -m controller run``: recognised as the daemon, and its log answers the
    reset (refused or accepted, with the source)."""
    proc = start_daemon(tmp_path, listener)
    try:
        assert listener.wait_for("READY=1", timeout_s=30), "daemon never became ready"
        assert main(["reset-faults", "--pid", str(proc.pid)]) == 0
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert "sent a fault reset" in capsys.readouterr().out
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    resets = [r for r in records if r.get("event") == "fault reset"]
    assert len(resets) == 1, output
    assert resets[0]["source"] == "SIGUSR1"
    assert isinstance(resets[0]["accepted"], bool)
