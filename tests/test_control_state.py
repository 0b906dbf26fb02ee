"""Promises that span restarts (issue 14): latches and the departure survive a new control step.

Each test plays what a service restart does: a second ``CoreControlStep`` on the same state
file, as the daemon builds after a crash, a watchdog kill or a power blip.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from controller.config import load_config, parse_config
from controller.control import (
    UNREADABLE_STATE_CAUSE,
    CoreControlStep,
    CoreStateFile,
    policy_from_config,
)
from controller.core.policy import Policy
from controller.core.snapshots import PowerState, Setpoint, SetpointMode, VehiclePhase
from tests.test_control import EXAMPLE, WALL, inverter, vehicle

DISCHARGE = Setpoint("sp-1", 0.0, 10_000.0, SetpointMode.POWER, -7400.0)


def _policy(manual: bool = False) -> Policy:
    text = EXAMPLE.read_text()
    if manual:
        text = text.replace("fault_reset: auto", "fault_reset: manual")
    return policy_from_config(parse_config(text))


def _run(
    step: CoreControlStep,
    from_s: float,
    seconds: float,
    setpoint: Setpoint | None = DISCHARGE,
    soc_pct: float = 70.0,
) -> float:
    """Decisions every 0.1 s; the last command's power."""
    power_w = 0.0
    for i in range(round(seconds / 0.1)):
        now_s = from_s + i * 0.1
        output = step(vehicle(now_s, soc_pct), inverter(now_s), setpoint, now_s, WALL)
        power_w = output.command.power_w
    return power_w


def test_a_released_emergency_stop_never_restarts_by_itself(tmp_path: Path) -> None:
    """fault_reset auto: released, the E-stop stays latched past any hold (ISO 13850)."""
    pressed = [False]
    step = CoreControlStep(_policy(), emergency_stop=lambda: pressed[0])
    assert _run(step, 1.0, 6.0) == -7400.0
    pressed[0] = True
    assert _run(step, 7.0, 0.2) == 0.0
    pressed[0] = False
    assert _run(step, 8.0, 120.0) == 0.0  # twice the 60 s hold of an automatic reset
    assert step.reset_faults().accepted
    # The reset is not a start: the old setpoint does not bring power back.
    assert _run(step, 130.0, 5.0) == 0.0
    assert not step(vehicle(135.0, 70.0), inverter(135.0), DISCHARGE, 135.0, WALL).session_allowed
    fresh = Setpoint("sp-2", 136.0, 10_000.0, SetpointMode.POWER, -7400.0)
    assert _run(step, 136.0, 6.0, fresh) == -7400.0


def test_an_automatic_fault_still_resets_by_itself() -> None:
    """An inverter fault (not marked manual) clears after the hold, as fault_reset auto says."""
    step = CoreControlStep(_policy())
    faulty = replace(inverter(1.0), faults=("inverter state FAULT",))
    step(vehicle(1.0, 70.0), faulty, DISCHARGE, 1.0, WALL)
    assert _run(step, 1.1, 30.0) == 0.0
    assert _run(step, 31.1, 40.0) < 0.0  # 60 s after the cause went, the latch clears


def test_a_restart_keeps_a_manual_latch(tmp_path: Path) -> None:
    """fault_reset manual: an E-stop released but not reset holds 0 W in the next process."""
    state_file = CoreStateFile(tmp_path / "core-state.json")
    pressed = [False]
    first = CoreControlStep(
        _policy(manual=True), emergency_stop=lambda: pressed[0], state_file=state_file
    )
    assert _run(first, 1.0, 6.0) == -7400.0
    pressed[0] = True
    _run(first, 7.0, 0.2)
    # Written before the step returned, i.e. before the 0 W command it caused was applied.
    saved = json.loads(state_file.path.read_text())
    assert saved["fault_latch"]["causes"] == ["emergency stop"]
    pressed[0] = False
    _run(first, 8.0, 1.0)

    second = CoreControlStep(_policy(manual=True), state_file=state_file)
    output = second(vehicle(0.5, 70.0), inverter(0.5), DISCHARGE, 0.5, WALL)
    assert output.command.power_w == 0.0
    assert output.state is PowerState.FAULT
    assert output.faults == ("emergency stop",)
    assert _run(second, 1.0, 10.0) == 0.0
    assert second.reset_faults().accepted
    assert json.loads(state_file.path.read_text())["fault_latch"]["causes"] == []
    # A third start after the reset still waits for a start, not for the old setpoint.
    third = CoreControlStep(_policy(manual=True), state_file=state_file)
    assert _run(third, 1.0, 5.0) == 0.0
    fresh = Setpoint("sp-2", 6.0, 10_000.0, SetpointMode.POWER, -7400.0)
    assert _run(third, 6.0, 6.0, fresh) == -7400.0


def test_a_restart_keeps_an_automatic_latch_and_holds_again(tmp_path: Path) -> None:
    """An automatic latch survives a restart and its hold starts again there."""
    state_file = CoreStateFile(tmp_path / "core-state.json")
    first = CoreControlStep(_policy(), state_file=state_file)
    faulty = replace(inverter(1.0), faults=("inverter state FAULT",))
    first(vehicle(1.0, 70.0), faulty, DISCHARGE, 1.0, WALL)
    second = CoreControlStep(_policy(), state_file=state_file)
    assert _run(second, 1.0, 30.0) == 0.0
    assert _run(second, 31.0, 40.0) < 0.0


def test_an_unreadable_state_file_latches_until_a_person_resets(tmp_path: Path) -> None:
    """A corrupt file may have held an E-stop: latched, manual, with the reason logged."""
    path = tmp_path / "core-state.json"
    for content in ("{not json", json.dumps({"version": 99}), json.dumps({"version": 1})):
        path.write_text(content)
        step = CoreControlStep(_policy(), state_file=CoreStateFile(path))
        output = step(vehicle(1.0, 70.0), inverter(1.0), DISCHARGE, 1.0, WALL)
        assert output.command.power_w == 0.0
        assert output.faults == (UNREADABLE_STATE_CAUSE,)
        assert _run(step, 1.1, 90.0) == 0.0  # never by itself
        assert step.reset_faults().accepted
        assert _run(step, 91.0, 6.0) == -7400.0  # reset, and the setpoint is not the E-stop's


def test_a_missing_state_file_is_a_first_start(tmp_path: Path) -> None:
    """No file yet: nothing latched; the first change creates it."""
    state_file = CoreStateFile(tmp_path / "sub" / "core-state.json")
    step = CoreControlStep(_policy(), state_file=state_file)
    assert _run(step, 1.0, 6.0) == -7400.0
    assert state_file.path.exists()  # the session's departure was fixed and saved
    saved = json.loads(state_file.path.read_text())
    assert saved["departure_at"] is not None


def test_the_departure_survives_a_restart(tmp_path: Path) -> None:
    """Restarted after departure time with the car still plugged in: the reserve is the target."""
    state_file = CoreStateFile(tmp_path / "core-state.json")
    policy = _policy()
    departure = policy.owner.departure
    assert departure is not None
    before = dt.datetime.combine(WALL.date() + dt.timedelta(days=1), departure.time_local, dt.UTC)
    first = CoreControlStep(policy, state_file=state_file)
    first(vehicle(1.0, 70.0), inverter(1.0), DISCHARGE, 1.0, before - dt.timedelta(hours=1))
    second = CoreControlStep(policy, state_file=state_file)
    after = before + dt.timedelta(minutes=10)
    power_w = 0.0
    for i in range(60):
        now_s = 1.0 + i * 0.1
        output = second(vehicle(now_s, 70.0), inverter(now_s), DISCHARGE, now_s, after)
        power_w = output.command.power_w
    assert power_w > 0.0  # the guarantee charges toward the 80 % target
    assert output.binding_limit is not None
    assert "departure" in output.binding_limit


def test_an_unplugged_car_clears_the_departure(tmp_path: Path) -> None:
    """The reserve holds until the car is unplugged; the next car gets its own departure."""
    state_file = CoreStateFile(tmp_path / "core-state.json")
    step = CoreControlStep(_policy(), state_file=state_file)
    step(vehicle(1.0, 70.0), inverter(1.0), None, 1.0, WALL)
    assert json.loads(state_file.path.read_text())["departure_at"] is not None
    gone = replace(vehicle(2.0, 70.0), phase=VehiclePhase.UNPLUGGED)
    step(gone, inverter(2.0), None, 2.0, WALL)
    assert json.loads(state_file.path.read_text())["departure_at"] is None


@pytest.mark.parametrize("clock_trusted", [True, False])
def test_an_unsynchronised_clock_blocks_discharge(clock_trusted: bool) -> None:
    """No NTP sync: the departure reserve is the target, so no discharge, and a reason says so."""
    step = CoreControlStep(load_policy(), clock_trusted=lambda _now_s: clock_trusted)
    power_w = _run(step, 1.0, 6.0)
    assert (power_w == -7400.0) is clock_trusted
    if not clock_trusted:
        output = step(vehicle(7.0, 70.0), inverter(7.0), DISCHARGE, 7.0, WALL)
        assert any("not synchronised" in reason for reason in output.reasons)


def load_policy() -> Policy:
    return policy_from_config(load_config(EXAMPLE))


class HeldDisk(CoreStateFile):
    """A state file whose writes wait for the test (a slow SD card) or fail (a full one)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.opened = threading.Event()
        self.refuse: OSError | None = None
        self.attempts = 0

    def save(self, data: dict[str, object]) -> None:
        self.attempts += 1
        assert self.opened.wait(10.0)
        if self.refuse is not None:
            raise self.refuse
        super().save(data)


def test_the_daemon_step_never_waits_for_the_state_file(tmp_path: Path) -> None:
    """With the daemon's background saver, the 0 W of an E-stop is decided while the disk still
    holds the write; the latch is in the file once the disk lets it through, and a failed write
    is retried with the newest state (issue 15)."""
    disk = HeldDisk(tmp_path / "core-state.json")
    pressed = [False]
    step = CoreControlStep(
        _policy(manual=True),
        emergency_stop=lambda: pressed[0],
        state_file=disk,
        save_in_background=True,
    )
    saver = step.saver
    assert saver is not None
    disk.opened.set()
    assert _run(step, 1.0, 6.0) == -7400.0
    disk.opened.clear()
    disk.refuse = OSError(28, "No space left on device")
    pressed[0] = True
    assert _run(step, 7.0, 0.2) == 0.0  # decided while the write is held
    assert saver.pending or disk.attempts >= 1
    disk.opened.set()  # the disk answers: full
    assert _wait(lambda: disk.attempts >= 2)  # retried
    disk.refuse = None
    assert _wait(lambda: not saver.pending and saver.last_error is None)
    assert json.loads(disk.path.read_text())["fault_latch"]["causes"] == ["emergency stop"]
    assert saver.stop(10.0)


def _wait(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
