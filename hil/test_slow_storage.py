"""HIL: the real daemon on a slow, a full and a dead SD card (issue 15: the control loop never
waits on the disk).

The daemon runs as a process against the plant (GB/T 27930 over Modbus TCP) and a real
mosquitto, with ``tools/slowdisk.c`` preloaded (``hil/slowdisk.py``): every fsync of the daemon
sleeps first, and writes under its data directory (the "card": ledger, outbox, core-state.json)
fail with a chosen errno while a flag file exists. Its log, its stdout and its sockets are not on
the card and never fail.

The fault of every scenario is the car's BMS reporting its pack too hot (GB/T BSM byte 6,
TemperatureStatus = 01): a vehicle fault that latches, so the core's durable state changes and
core-state.json must be written. Before issue 15 that write (fsync of the file, then of its
directory) ran on the event loop before the 0 W command: at least two fsync delays.

The fault-to-0 W bound (``REACTION_BOUND_MS``) is a wall-clock bound, which docs/testing.md
otherwise keeps out of tests: here it is the behaviour under test. It is set far above the
daemon's loaded p99 (25 ms, docs/testing.md) and below the two fsyncs the old code waited for
(400 ms at the smaller delay). Beside it, an ordering that no load can blur: the 0 W write lands
at the inverter before the latch is visible in core-state.json, at least one fsync later.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.vehicle.dbc import DbcCodec
from hil.conftest import EVENING, Rig, make_setup
from hil.harness import (
    AggregatorClient,
    DaemonProcess,
    PlantProcess,
    Setup,
    plant_args,
    setpoint,
    simulated_clock_env,
    until,
)
from hil.mosquitto import Mosquitto
from hil.slowdisk import Card, Failure, SlowdiskUnavailableError, shim_path, slowdisk_env

pytestmark = pytest.mark.hil

NS_PER_MS = 1_000_000
DISCHARGE_W = -3000.0
# Far above the loaded p99 of the fault path (25 ms), below two fsyncs at the smaller delay.
REACTION_BOUND_MS = 300.0
# systemd/v2g-controller.service TimeoutStopSec: systemd SIGKILLs a daemon still running then.
TIMEOUT_STOP_S = 10.0
WATCHDOG_USEC = 2_000_000  # the daemon pings every second (half of it, sd_watchdog_enabled(3))
ZERO_W = 8.0  # one 0.1 % rate step of the simulator's 124 registers is 7.4 W
CODEC = DbcCodec.gbt27930()
BSM_ID = CODEC.frame_id("BSM")
OVER_TEMPERATURE = {"cmd": "vehicle", "set": {"over_temperature": True}}
STORAGE_FAILED_LOG = "storage write failed; the charger keeps running"
STATE_NOT_SAVED_LOG = "safety state not saved"


@pytest.fixture
def shim() -> Path:
    try:
        return shim_path()
    except SlowdiskUnavailableError as exc:
        pytest.skip(str(exc))  # a failure under CI=true (conftest.py)


@pytest.fixture
def notify(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    """systemd's notify socket for the daemon, which must not see a WATCHDOG_PID (it would name
    the test's process, and the daemon would ignore WATCHDOG_USEC)."""
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    listener = NotifyListener(short_dir / "notify.sock")
    yield listener
    listener.close()


@pytest.fixture
def card(short_dir: Path) -> Card:
    """The card is a directory of its own: the daemon's log and the lines file stay off it."""
    (short_dir / "card").mkdir()
    return Card(short_dir / "card", short_dir / "fail", short_dir / "fsyncs")


# -- the shim on its own -------------------------------------------------------------------------

PROBE = """
import json, os, sys, time
card, outside = sys.argv[1], sys.argv[2]
out = {}
fd = os.open(os.path.join(card, "f"), os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"x")
start = time.monotonic()
os.fsync(fd)
os.fdatasync(fd)
out["two_syncs_s"] = time.monotonic() - start
os.fsync(os.open(card, os.O_RDONLY))
open(os.environ["SLOWDISK_FAIL_FILE"], "w").write("EROFS\\n")
def errno_of(call):
    try:
        call()
    except OSError as exc:
        return exc.errno
    return 0
out["write"] = errno_of(lambda: os.write(fd, b"y"))
out["fsync"] = errno_of(lambda: os.fsync(fd))
out["create"] = errno_of(lambda: open(os.path.join(card, "new"), "w"))
out["read"] = errno_of(lambda: open(os.path.join(card, "f")).read())
out["outside"] = errno_of(lambda: open(outside, "w").write("fine"))
os.unlink(os.environ["SLOWDISK_FAIL_FILE"])
out["healed"] = errno_of(lambda: os.write(fd, b"z"))
print(json.dumps(out))
"""


@pytest.mark.usefixtures("shim")
def test_the_shim_delays_counts_and_fails_only_on_the_card(card: Card, short_dir: Path) -> None:
    """Preloaded, the shim delays each fsync, counts those on the card, and fails writes there
    with the flag's errno (reads and files elsewhere untouched) until the flag is removed."""
    delay_ms = 200
    env = {**os.environ, **slowdisk_env(card, fsync_delay_ms=delay_ms)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(card.directory), str(short_dir / "outside")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = json.loads(done.stdout)
    assert out["two_syncs_s"] >= 2 * delay_ms / 1000, "fsync and fdatasync were not delayed"
    assert card.fsyncs() == 4, "fsync, fdatasync, the directory's fsync and the refused fsync"
    assert (out["write"], out["fsync"], out["create"]) == (errno.EROFS,) * 3
    assert (out["read"], out["outside"], out["healed"]) == (0, 0, 0)


# -- the rig -------------------------------------------------------------------------------------


class NotifyListener:
    """systemd's end of sd_notify: every datagram with the monotonic time it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode(errors="replace")))

    def times_of(self, line: str) -> list[float]:
        return [t for t, m in list(self.messages) if line in m.split("\n")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.sock.close()


def card_config(setup: Setup, card: Card) -> str:
    """The HIL config with the ledger (and core-state.json beside it) on the card."""
    ledger = f"ledger: {{path: {card.directory / 'ledger.sqlite'}}}"
    return re.sub(r"ledger: \{path: [^}]*\}", ledger, setup.config_yaml())


@contextlib.contextmanager
def on_card(
    setup: Setup, card: Card, *, fsync_delay_ms: int, notify: NotifyListener | None = None
) -> Iterator[Rig]:
    """The plant, then the daemon with the shim preloaded; both stopped on the way out."""
    config = setup.directory / "config.yaml"
    config.write_text(card_config(setup, card), encoding="utf-8")
    args = plant_args(setup, soc_pct=70, mode="discharge", time_factor=1.0)
    plant = PlantProcess(args, setup.directory / "plant.sock", setup.directory / "plant.log")
    env = {
        "V2G_SIMULATED_CLOCK": simulated_clock_env(EVENING, 1.0),
        **slowdisk_env(card, fsync_delay_ms=fsync_delay_ms),
    }
    if notify is not None:
        env |= {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    daemon = DaemonProcess(config, setup.directory / "daemon.log", env)
    with plant, daemon:
        yield Rig(setup, plant, daemon)


def play(rig: Rig, scenario: Callable[[AggregatorClient], Awaitable[None]]) -> None:
    """Run ``scenario(aggregator)``; on failure, the plant and the daemon's log."""

    async def main() -> None:
        async with AggregatorClient(rig.setup.broker_port, rig.setup.prefix) as aggregator:
            await scenario(aggregator)

    try:
        asyncio.run(main())
    except AssertionError as exc:
        code = rig.daemon.proc.poll() if rig.daemon.proc else None
        raise AssertionError(
            f"{exc}\nplant: {rig.plant.status()}\ndaemon exit code: {code}\n{rig.daemon_log(60)}"
        ) from None


async def discharging(rig: Rig, aggregator: AggregatorClient) -> None:
    """Online, a discharge setpoint, and the plant delivering it."""
    assert await until(lambda: aggregator.availability()[-1:] == [b"online"], 30), "not online"
    await aggregator.publish("setpoint", setpoint("discharge-1", DISCHARGE_W, ttl_s=300))
    assert await until(
        lambda: abs(rig.plant.status()["actual_w"] - DISCHARGE_W) < 150, 30, every_s=0.1
    ), "the plant never discharged"


def preloaded(rig: Rig) -> bool:
    """The daemon process really carries the shim (not just the variable)."""
    assert rig.daemon.proc is not None
    maps = Path(f"/proc/{rig.daemon.proc.pid}/maps").read_text(encoding="utf-8")
    return str(shim_path()) in maps


def latched(state_file: Path) -> bool:
    """core-state.json holds a fault latch (a whole file: it is replaced by a rename)."""
    try:
        data = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    return bool(data["fault_latch"]["causes"])


def bsm_too_hot(data_hex: str) -> bool:
    return CODEC.decode_frame(BSM_ID, bytes.fromhex(data_hex)).signals["TemperatureStatus"] != 0


async def fault_to_zero(rig: Rig, state_file: Path) -> tuple[float, float]:
    """Inject the too-hot pack; (ms from its first BSM to the first 0 W write at the inverter,
    ms from that write to the latch appearing in core-state.json)."""
    assert not latched(state_file), "a latch before the fault"
    injected_ns = time.monotonic_ns()
    rig.plant.client.request(OVER_TEMPERATURE)
    seen_ns: list[int] = []

    def latch_visible() -> bool:
        if latched(state_file):
            seen_ns.append(time.monotonic_ns())
            return True
        return False

    assert await until(latch_visible, 20, every_s=0.005), "the latch was never saved"
    found: dict[str, int] = {}

    def zero_written() -> bool:
        trace = rig.plant.client.ask(
            {"cmd": "trace", "since_ns": injected_ns, "frame_ids": [BSM_ID]}
        )["trace"]
        frame = next((int(t) for t, _, data in trace["frames"] if bsm_too_hot(data)), None)
        if frame is None:
            return False
        zero = next((int(t) for t, w in trace["writes"] if t >= frame and abs(w) < ZERO_W), None)
        if zero is None:
            return False
        found.update(frame=frame, zero=zero)
        return True

    assert await until(zero_written, 5, every_s=0.05), "no 0 W write after the fault frame"
    return (found["zero"] - found["frame"]) / NS_PER_MS, (seen_ns[0] - found["zero"]) / NS_PER_MS


def stop(rig: Rig, timeout_s: float = 30.0) -> tuple[int, float]:
    """SIGTERM as systemd sends it; (exit code, seconds to exit)."""
    proc = rig.daemon.proc
    assert proc is not None
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=timeout_s)
    return code, time.monotonic() - started


def ledger_rows(db: Path) -> dict[str, Any]:
    """What a reader finds in the ledger after the daemon stopped."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {
            "integrity": conn.execute("PRAGMA integrity_check").fetchone()[0],
            "sessions": conn.execute("SELECT count(*) FROM ledger_sessions").fetchone()[0],
            "audit": conn.execute(
                "SELECT setpoint_id, action FROM ledger_audit ORDER BY id"
            ).fetchall(),
            "trips": [r[0] for r in conn.execute("SELECT cause FROM ledger_trips").fetchall()],
        }
    finally:
        conn.close()


def log_records(rig: Rig, event: str) -> list[dict[str, Any]]:
    """The daemon's JSON log records whose event is ``event``."""
    records = []
    for line in rig.daemon.log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        if event not in line:
            continue
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == event:
                records.append(record)
    return records


def events(aggregator: AggregatorClient, kind: str) -> list[dict[str, Any]]:
    return [e for e in (m.json() for m in aggregator.on("event")) if e.get("kind") == kind]


# -- a slow card ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fsync_delay_ms", [200, 1000])
@pytest.mark.usefixtures("shim")
def test_a_slow_card_delays_neither_a_stop_nor_the_watchdog(
    short_dir: Path, broker: Mosquitto, card: Card, notify: NotifyListener, fsync_delay_ms: int
) -> None:
    """Every fsync takes 200 ms or 1 s: a latching fault still gives 0 W at once, before the
    latch is on the card; no watchdog ping comes late; the daemon stops cleanly; and the ledger
    holds the session, the setpoint's audit line and the trip."""
    setup = make_setup(short_dir, broker, "gbt27930", "tcp")
    state_file = card.directory / "core-state.json"
    figures: dict[str, Any] = {"fsync_delay_ms": fsync_delay_ms}
    with on_card(setup, card, fsync_delay_ms=fsync_delay_ms, notify=notify) as rig:
        started = time.monotonic()

        async def scenario(aggregator: AggregatorClient) -> None:
            await discharging(rig, aggregator)
            assert preloaded(rig), "the daemon runs without the shim"
            before = card.fsyncs()
            await asyncio.sleep(3.0)  # the storage thread is now busy with slow commits
            figures["fsyncs_in_3_s"] = card.fsyncs() - before
            reaction_ms, durable_after_ms = await fault_to_zero(rig, state_file)
            figures.update(reaction_ms=reaction_ms, latch_on_card_after_0w_ms=durable_after_ms)
            assert await until(lambda: rig.plant.status()["actual_w"] == 0.0, 2.0), (
                "the plant still delivers power"
            )
            await asyncio.sleep(3.0)  # more pings while the latch's write completes

        play(rig, scenario)
        stopped_at = time.monotonic()
        code, stop_s = stop(rig)
        fsyncs = card.fsyncs()
        figures.update(
            exit_code=code,
            stop_s=round(stop_s, 2),
            fsyncs=fsyncs,
            fsyncs_per_h=round(fsyncs / (stopped_at - started) * 3600),
        )
        log_tail = rig.daemon_log(60)
    ready = notify.times_of("READY=1")
    assert ready, f"never READY\n{log_tail}"
    pings = [t for t in notify.times_of("WATCHDOG=1") if t < stopped_at]
    marks = [ready[0], *pings, stopped_at]
    longest_gap_s = max(b - a for a, b in itertools.pairwise(marks))
    figures.update(pings=len(pings), longest_watchdog_gap_s=round(longest_gap_s, 3))
    rows = ledger_rows(card.directory / "ledger.sqlite")
    print(f"slow card: {figures}; ledger {rows}")  # noqa: T201  the figures, for the report
    reaction_ms = figures["reaction_ms"]
    assert reaction_ms < REACTION_BOUND_MS, f"0 W only {reaction_ms:.0f} ms after the fault frame"
    # The latch lands one fsync after the decision; the 0 W write a few ms after it. Negative if
    # the command waited for the write; near 0 if the daemon's fsync was not slowed at all.
    durable_after_ms = figures["latch_on_card_after_0w_ms"]
    assert durable_after_ms > fsync_delay_ms / 2, (
        f"the latch was on the card {durable_after_ms:.0f} ms after the 0 W write"
    )
    assert len(pings) >= 5, f"only {len(pings)} watchdog pings\n{log_tail}"
    assert longest_gap_s < WATCHDOG_USEC / 1e6, f"a watchdog gap of {longest_gap_s:.2f} s"
    assert code == 0, f"exit code {code}\n{log_tail}"
    assert stop_s < TIMEOUT_STOP_S, f"{stop_s:.1f} s to stop: systemd would have killed it"
    assert fsyncs > 0, "the ledger's commits never reached fsync through the shim"
    assert rows["integrity"] == "ok"
    assert rows["sessions"] >= 1, "no session in the ledger"
    assert ("discharge-1", "accepted") in rows["audit"], f"audit: {rows['audit']}"
    assert any("temperature" in cause for cause in rows["trips"]), f"trips: {rows['trips']}"


# -- a full or a dead card -----------------------------------------------------------------------

# What the daemon's two writers say: core-state.json's writer the errno's text (OSError), the
# ledger's SQLite its own words (SQLITE_FULL for ENOSPC, SQLITE_IOERR_WRITE for the rest).
REFUSALS: dict[Failure, tuple[int, str]] = {
    "ENOSPC": (errno.ENOSPC, "database or disk is full"),
    "EROFS": (errno.EROFS, "disk I/O error"),
}


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("failure", ["ENOSPC", "EROFS"])
@pytest.mark.usefixtures("shim")
def test_a_full_or_dead_card_leaves_the_charger_running(
    short_dir: Path, broker: Mosquitto, card: Card, failure: Failure
) -> None:
    """The card refuses every write mid-discharge (full; gone read-only): the daemon keeps
    following the setpoint and a fault still gives 0 W; the log and a storage_failed event say
    why; once the card works again the refused latch is retried and lands, and after a clean
    stop the ledger is sound and holds the trip whose first commit the card refused.

    storage_restored is not awaited: it follows 60 s without a failure (RECOVERED_AFTER_S in
    controller/storage/writer.py), longer than this test may take."""
    setup = make_setup(short_dir, broker, "gbt27930", "tcp")
    state_file = card.directory / "core-state.json"
    errno_text, sqlite_text = os.strerror(REFUSALS[failure][0]), REFUSALS[failure][1]
    figures: dict[str, Any] = {"failure": failure}
    with on_card(setup, card, fsync_delay_ms=0) as rig:

        async def scenario(aggregator: AggregatorClient) -> None:
            await discharging(rig, aggregator)
            assert preloaded(rig), "the daemon runs without the shim"
            assert not latched(state_file)
            failed_at = time.monotonic()
            card.fail(failure)
            # Telemetry is refused from the next second on. Whether storage_failed follows before
            # the fault depends on when the ledger's next commit falls due: a figure, not a rule.
            if await until(lambda: bool(events(aggregator, "storage_failed")), 2.0):
                figures["storage_failed_before_fault_s"] = round(time.monotonic() - failed_at, 2)
            assert rig.daemon.running, "the daemon exited when the card failed"
            status = rig.plant.status()
            assert abs(status["actual_w"] - DISCHARGE_W) < 150, "the setpoint was dropped"
            injected_at = time.monotonic()
            rig.plant.client.request(OVER_TEMPERATURE)
            assert await until(lambda: rig.plant.status()["actual_w"] == 0.0, 2.0), (
                "a fault on a failed card did not give 0 W"
            )
            figures["fault_to_0w_s"] = round(time.monotonic() - injected_at, 3)
            # The trip's commit is urgent: it fails at once, and the link reports it.
            assert await until(lambda: bool(events(aggregator, "storage_failed")), 10), (
                "no storage_failed event"
            )
            figures["event"] = events(aggregator, "storage_failed")[0]["message"]
            assert await until(lambda: bool(log_records(rig, STATE_NOT_SAVED_LOG)), 10), (
                "no log of the refused core-state write"
            )
            assert not latched(state_file), "core-state.json changed on a card refusing writes"
            healed_at = time.monotonic()
            card.heal()
            assert await until(lambda: latched(state_file), 10), "the latch was never retried"
            figures["latch_saved_after_heal_s"] = round(time.monotonic() - healed_at, 2)
            assert rig.daemon.running

        play(rig, scenario)
        code, stop_s = stop(rig)
        figures.update(exit_code=code, stop_s=round(stop_s, 2))
        not_saved = [str(r.get("error")) for r in log_records(rig, STATE_NOT_SAVED_LOG)]
        write_failed = [str(r.get("error")) for r in log_records(rig, STORAGE_FAILED_LOG)]
        log_tail = rig.daemon_log(60)
    figures.update(state_not_saved=not_saved, storage_write_failed=write_failed)
    rows = ledger_rows(card.directory / "ledger.sqlite")
    print(f"failed card: {figures}; ledger {rows}")  # noqa: T201  the figures, for the report
    assert code == 0, f"exit code {code}\n{log_tail}"
    assert any(errno_text in error for error in not_saved), f"{errno_text!r} not in {not_saved}"
    assert any(sqlite_text in error for error in write_failed), (
        f"no {STORAGE_FAILED_LOG!r} saying {sqlite_text!r}: {write_failed}\n{log_tail}"
    )
    assert sqlite_text in figures["event"], f"storage_failed without the reason: {figures['event']}"
    assert latched(state_file), "core-state.json lost the latch (or is not whole JSON)"
    assert rows["integrity"] == "ok"
    assert ("discharge-1", "accepted") in rows["audit"], f"audit: {rows['audit']}"
    assert any("temperature" in cause for cause in rows["trips"]), (
        f"the trip the card refused was never written: {rows['trips']}"
    )
