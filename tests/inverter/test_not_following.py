"""Model 124 as field devices read it, and an inverter that does not follow its command
(issue 16, item 10).

A 124 device treats InWRte / OutWRte as limits: only both edges of the window pinned on the
command force the power, whatever the device would do by itself. A device that acknowledges
setpoint writes but never acts on them passes every read-back; only the measured power shows it,
and the link faults with the reason, for every driver, over TCP and RTU.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from controller.core.snapshots import PowerCommand
from controller.inverter.following import FollowingBand
from controller.links import LinkStatus
from hil.inverter.profiles import SunSpec100Profile
from hil.inverter.stage import PowerStage, StageRatings
from tests.inverter.devices import device, faults, link_for, until

# Charge and discharge ratings that differ, so WChaMax and WDisChaMax (120 MaxDisChaRte) differ.
RATINGS = StageRatings(max_charge_w=9000.0, max_discharge_w=6000.0)


@pytest.mark.parametrize("link", ["tcp", "rtu"])
@pytest.mark.parametrize("free_power_w", [0.0, 9000.0, -6000.0])
@pytest.mark.parametrize("power_w", [-3000.0, 2500.0])
def test_a_storage_device_that_treats_rates_as_limits_runs_at_the_command(
    power_w: float, free_power_w: float, link: str, tmp_path: Path
) -> None:
    """Whatever the device would do by itself (hold at 0 W, charge or discharge at full power),
    the window pinned on the command from both edges holds it there, each rate of its own base
    (WChaMax 9 kW, WDisChaMax 6 kW)."""

    def limits_device(stage: PowerStage) -> SunSpec100Profile:
        return SunSpec100Profile(stage, free_power_w=free_power_w)

    async def scenario() -> None:
        async with device(limits_device, link, tmp_path, ratings=RATINGS) as dev:
            await dev.driver.setup()
            await dev.driver.command(power_w, enable=True)
            deadline = time.monotonic() + 5
            state = await dev.driver.read(time.monotonic())
            while time.monotonic() < deadline:
                state = await dev.driver.read(time.monotonic())
                if (
                    state.measured_power_w is not None
                    and abs(state.measured_power_w - power_w) < 10
                ):
                    break
                await asyncio.sleep(0.05)
            # Rates in tenths of a percent, rounded toward zero: within 9 W, never beyond.
            assert dev.stage.target_w == pytest.approx(power_w, abs=9)
            assert abs(dev.stage.target_w) <= abs(power_w)
            assert state.measured_power_w == pytest.approx(power_w, abs=9)
            await dev.driver.command(0.0, enable=False)
            assert dev.stage.target_w == 0.0

    asyncio.run(scenario())


FAST = FollowingBand(settle_s=1.0, hold_s=0.5)


@pytest.mark.parametrize(
    ("profile_name", "link"),
    [
        ("sunspec-700", "tcp"),
        ("sunspec-100", "tcp"),
        ("map", "tcp"),
        ("sunspec-700", "rtu"),
        ("sunspec-100", "rtu"),
    ],
)
def test_an_inverter_that_ignores_setpoints_faults_the_link(
    profile_name: str, link: str, tmp_path: Path
) -> None:
    """Setpoint writes acknowledged and held in the registers, the power never moves: after the
    settle time the link faults "not following" with the figures, and writes nothing more until
    it has been set up anew."""

    async def scenario() -> None:
        async with device(profile_name, link, tmp_path) as dev:
            link_ = link_for(dev, 3.0, FAST)
            task = asyncio.create_task(link_.run(lambda: None))
            try:
                assert await until(lambda: link_.status is LinkStatus.UP)
                dev.stage.ignore_setpoints = True
                started = time.monotonic()
                await link_.apply(PowerCommand(-3000.0, enable=True))
                assert await until(
                    lambda: any("not following" in f for f in faults(link_)), 10.0
                ), faults(link_)
                assert time.monotonic() - started >= FAST.settle_s + FAST.hold_s - 0.1
                [reason] = faults(link_)
                assert "measured 0 W, commanded -3000 W (band 300 W)" in reason
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await link_.safe_stop()

    asyncio.run(scenario())


def test_an_inverter_that_follows_is_never_faulted(tmp_path: Path) -> None:
    """The simulator follows (ramp 20 kW/s): steps up, down and across 0 W raise no fault."""

    async def scenario() -> None:
        async with device("sunspec-100", "tcp", tmp_path, ratings=RATINGS) as dev:
            link_ = link_for(dev, 3.0, FAST)
            task = asyncio.create_task(link_.run(lambda: None))
            try:
                assert await until(lambda: link_.status is LinkStatus.UP)
                for power_w in (5000.0, -4000.0, 0.0, 9000.0):
                    await link_.apply(PowerCommand(power_w, enable=True))
                    await asyncio.sleep(FAST.settle_s + FAST.hold_s + 0.3)
                    assert faults(link_) == ()
                    assert dev.stage.actual_w == pytest.approx(power_w, abs=10)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await link_.safe_stop()

    asyncio.run(scenario())


def test_the_default_band_finds_an_ignoring_inverter(tmp_path: Path) -> None:
    """With the link's default settle (3 s) and hold (2 s): faulted within about 5 s."""

    async def scenario() -> None:
        async with device("sunspec-700", "tcp", tmp_path) as dev:
            link_ = link_for(dev, 3.0)
            task = asyncio.create_task(link_.run(lambda: None))
            try:
                assert await until(lambda: link_.status is LinkStatus.UP)
                dev.stage.ignore_setpoints = True
                await link_.apply(PowerCommand(2000.0, enable=True))
                assert await until(lambda: any("not following" in f for f in faults(link_)), 9.0), (
                    faults(link_)
                )
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await link_.safe_stop()

    asyncio.run(scenario())
