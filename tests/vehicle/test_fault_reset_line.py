"""The board's fault reset button: read on GPIO and the simulated board, counted as presses by the
link (a release, then a press; held down counts once; down at start counts nothing)."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from controller.errors import VehicleLinkError
from controller.vehicle.canbus import CanLinkConfig
from controller.vehicle.factory import build_vehicle_link
from controller.vehicle.frames import LineInputs, LineOutputs
from controller.vehicle.lines import MAGIC, GpioLines, SharedFileLines
from controller.vehicle.link import LINE_POLL_S, CanVehicleLink
from hil.vehicle import SimulatedLines

from . import fake_gpiod
from .fake_gpiod import FakeChip
from .test_link_virtual import eventually
from .test_wiring import GPIO_CHADEMO, vehicle_config

CHIP = "/dev/gpiochip0"


# --- reading the line -----------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_gpio_reads_the_reset_button(monkeypatch: pytest.MonkeyPatch) -> None:
    """An active-low push-button wired as fault_reset reads pressed when its line is low."""
    chip = FakeChip(CHIP)
    monkeypatch.setitem(sys.modules, "gpiod", fake_gpiod.make_module(chip))
    lines = GpioLines(CHIP, {"plugged": 4, "fault_reset": 6}, active_low=("fault_reset",))
    lines.open()
    chip.levels[6] = True  # pulled up: released
    assert lines.read() == LineInputs()
    chip.levels[6] = False  # pressed to ground
    assert lines.read() == LineInputs(fault_reset=True)
    lines.close()


@pytest.mark.timeout(10)
def test_a_reset_button_in_the_config_reaches_the_gpio_lines() -> None:
    """vehicle.lines.offsets.fault_reset (and active_low) wire the button on the board."""
    text = GPIO_CHADEMO.replace("lock: 23}", "lock: 23, fault_reset: 6}").replace(
        "[plugged, k]", "[plugged, k, fault_reset]"
    )
    lines = build_vehicle_link(vehicle_config(text).vehicle)._lines
    assert isinstance(lines, GpioLines)
    assert "fault_reset=6(active-low)" in repr(lines)


@pytest.mark.timeout(10)
def test_shared_file_carries_the_reset_button_in_its_own_byte(tmp_path: Path) -> None:
    """The simulated side presses the button at byte 19; the other inputs keep bytes 16-18."""
    path = tmp_path / "lines"
    charger = SharedFileLines(path, side="charger")
    site = SharedFileLines(path, side="vehicle")
    charger.open()
    site.open()
    try:
        site.fault_reset = True
        assert charger.read() == LineInputs(fault_reset=True)
        assert site.fault_reset
        raw = path.read_bytes()
        assert raw[16:20] == bytes([0, 0, 0, 1])
        site.plugged, site.k, site.emergency_stop = True, True, True
        assert path.read_bytes()[16:20] == bytes([1, 1, 1, 1])
        site.fault_reset = False
        assert charger.read() == LineInputs(plugged=True, k=True, emergency_stop=True)
        with pytest.raises(VehicleLinkError, match="does not drive fault_reset"):
            charger.fault_reset = True
    finally:
        site.close()
        charger.close()


@pytest.mark.timeout(10)
def test_a_lines_file_from_before_the_button_reads_released(tmp_path: Path) -> None:
    """A file laid out by an older simulator (byte 19 always 0) is still layout 1: not pressed."""
    path = tmp_path / "lines"
    old = bytearray(32)
    old[:9] = MAGIC + bytes([1])
    old[16:19] = bytes([1, 0, 1])  # plugged, E-stop pressed
    path.write_bytes(bytes(old))
    charger = SharedFileLines(path, side="charger")
    charger.open()
    try:
        assert charger.read() == LineInputs(plugged=True, emergency_stop=True)
    finally:
        charger.close()


@pytest.mark.timeout(10)
def test_simulated_lines_in_memory_carry_the_button() -> None:
    """hil's in-memory lines report the button the test presses."""
    lines = SimulatedLines(plugged=False, insulation_ok=False)
    lines.fault_reset = True
    assert lines.read() == LineInputs(fault_reset=True)


# --- presses, as the link counts them -----------------------------------------------------------


class ScriptedLines(SimulatedLines):
    """In-memory lines whose reads can be made to fail, counting the reads."""

    def __init__(self) -> None:
        super().__init__(plugged=False)
        self.reads = 0
        self.fail_reads = False

    def read(self) -> LineInputs:
        if self.fail_reads:
            raise VehicleLinkError("GPIO chip went away")
        self.reads += 1
        return super().read()


def link_on(lines: ScriptedLines) -> CanVehicleLink:
    """A CHAdeMO link with nobody plugged in; the virtual bus ticks the session every 100 ms."""
    channel = f"reset-{uuid.uuid4().hex}"
    config = CanLinkConfig(
        interface="virtual", channel=channel, protocol="chademo", reconnect_delay_s=0.05
    )
    return CanVehicleLink(config, lines)


async def reads_pass(lines: ScriptedLines, count: int = 2) -> None:
    """Until the link has read the lines ``count`` more times (bounded)."""
    target = lines.reads + count
    await eventually(lambda: lines.reads >= target, 5.0)


def run_link(
    link: CanVehicleLink, wakes: list[int], scenario: Callable[[], Awaitable[None]]
) -> None:
    async def main() -> None:
        task = asyncio.create_task(link.run(lambda: wakes.append(link.fault_reset_presses())))
        try:
            await scenario()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


@pytest.mark.timeout(20)
def test_a_press_counts_once_and_wakes_the_loop_and_holding_adds_nothing() -> None:
    """Released, then pressed: one press and a wake. Held over many reads: still one. Released
    and pressed again: two."""
    lines = ScriptedLines()
    link = link_on(lines)
    wakes: list[int] = []

    async def scenario() -> None:
        await reads_pass(lines)
        assert link.fault_reset_presses() == 0
        lines.fault_reset = True
        await reads_pass(lines)
        assert link.fault_reset_presses() == 1
        assert link.fault_reset_pressed()
        assert 1 in wakes  # the control loop was woken for the press
        await reads_pass(lines, 5)  # held down
        assert link.fault_reset_presses() == 1
        lines.fault_reset = False
        await reads_pass(lines)
        assert not link.fault_reset_pressed()
        lines.fault_reset = True
        await reads_pass(lines)
        assert link.fault_reset_presses() == 2

    run_link(link, wakes, scenario)


@pytest.mark.timeout(20)
def test_a_button_down_at_start_is_no_press_until_released_and_pressed() -> None:
    """A button already held (or stuck) when the lines are first read asks for nothing."""
    lines = ScriptedLines()
    lines.fault_reset = True
    link = link_on(lines)
    wakes: list[int] = []

    async def scenario() -> None:
        await reads_pass(lines, 5)
        assert link.fault_reset_pressed()
        assert link.fault_reset_presses() == 0
        lines.fault_reset = False
        await reads_pass(lines)
        lines.fault_reset = True
        await reads_pass(lines)
        assert link.fault_reset_presses() == 1

    run_link(link, wakes, scenario)


@pytest.mark.timeout(20)
def test_lines_that_come_back_with_the_button_down_are_no_press() -> None:
    """Unreadable lines make the button unknown; back with it down is not a press."""
    lines = ScriptedLines()
    link = link_on(lines)
    wakes: list[int] = []

    async def scenario() -> None:
        await reads_pass(lines)
        lines.fail_reads = True
        await eventually(lambda: "lines failed" in link.last_error, 5.0)
        assert not link.fault_reset_pressed()
        lines.fault_reset = True
        lines.fail_reads = False
        await reads_pass(lines, 3)
        assert link.fault_reset_pressed()
        assert link.fault_reset_presses() == 0

    run_link(link, wakes, scenario)


@pytest.mark.timeout(20)
def test_the_button_is_followed_while_the_bus_is_down() -> None:
    """No CAN interface (the link waits to retry it): the lines are still read every
    LINE_POLL_S, so a technician's press is seen; no output is driven meanwhile."""
    lines = ScriptedLines()
    config = CanLinkConfig(
        interface="socketcan", channel="nosuchcan0", protocol="chademo", reconnect_delay_s=5.0
    )
    link = CanVehicleLink(config, lines)
    wakes: list[int] = []

    async def scenario() -> None:
        await reads_pass(lines)
        lines.fault_reset = True
        # Seen within a few polls: long before the bus is tried again, 5 s on.
        await eventually(lambda: link.fault_reset_presses() == 1, LINE_POLL_S * 30)
        assert "nosuchcan0" in link.last_error
        assert lines.outputs == LineOutputs()

    run_link(link, wakes, scenario)
