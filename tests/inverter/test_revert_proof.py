"""The revert timer is proven, not assumed (issue 16, item 2).

A device that loses its revert timer while the connection stays up (a firmware reset, a
gateway) would have left the link "ready" and, once the controller died, the stage pushing
forever. Every command's read-back now covers the timer (and the revert settings beside it): a
lost one is rewritten with a log line, and a device that will not keep it is a fault with a
reason. Against the simulator's forgetful devices, every profile, over TCP and RTU.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from controller.core.snapshots import PowerCommand
from controller.inverter.drivers import RevertNotKeptError
from controller.inverter.link import ModbusInverterLink
from controller.links import LinkStatus
from hil.inverter.profiles import RevertMemory, SunSpec100Profile, SunSpec700Profile
from tests.inverter.devices import Device, device, faults, link_for, until

LOST = "inverter lost its revert settings; rewriting them"
PROFILE_NAMES = ["sunspec-700", "sunspec-100", "map"]


def memory(dev: Device) -> RevertMemory:
    profile = dev.profile
    assert isinstance(profile, RevertMemory)
    return profile


@pytest.mark.parametrize("link", ["tcp", "rtu"])
@pytest.mark.parametrize("profile_name", PROFILE_NAMES)
def test_a_lost_revert_timer_is_rewritten_at_the_next_command(
    profile_name: str, link: str, tmp_path: Path
) -> None:
    """The device resets its timer to 0 (and never reverts); the next command reads it back,
    rewrites it, logs it, and the device reverts again when left alone."""

    async def scenario() -> None:
        async with device(profile_name, link, tmp_path, revert_timeout_s=3) as dev:
            await dev.driver.setup()
            await dev.driver.command(-2000.0, enable=True)
            assert dev.stage.revert_timeout_s == 3
            memory(dev).forget_revert_timer()
            await dev.driver.read(0.0)  # the device forgets at this request
            assert dev.stage.revert_timeout_s == 0
            assert memory(dev).timer_register_s() == 0
            logs: list[MutableMapping[str, Any]]
            with structlog.testing.capture_logs() as logs:
                await dev.driver.command(-2000.0, enable=True)  # the heartbeat
            assert dev.stage.revert_timeout_s == 3
            assert memory(dev).timer_register_s() == 3
            [line] = [e for e in logs if e["event"] == LOST]
            assert line["log_level"] == "warning"
            assert dev.driver.proof.rewrites == 1
            # A clean command ends the streak: losing it once more is rewritten, not a fault.
            await dev.driver.command(-2000.0, enable=True)
            memory(dev).forget_revert_timer()
            await dev.driver.command(-2000.0, enable=True)
            assert dev.stage.revert_timeout_s == 3
            assert dev.driver.proof.rewrites == 2

    asyncio.run(scenario())


@pytest.mark.parametrize("link", ["tcp", "rtu"])
def test_lost_control_mode_enable_and_revert_enable_are_restored(link: str, tmp_path: Path) -> None:
    """A 704 device that loses WSetMod, WSetEna and WSetEnaRvrt with its timer gets them all
    back at the next command, and its stage runs again."""

    async def scenario() -> None:
        async with device("sunspec-700", link, tmp_path, revert_timeout_s=3) as dev:
            profile = dev.profile
            assert isinstance(profile, SunSpec700Profile)
            await dev.driver.setup()
            await dev.driver.command(-2000.0, enable=True)
            profile.forget_controls = True
            profile.forget_revert_timer()
            await dev.driver.read(0.0)
            image = profile.image

            def controls() -> list[object]:
                """WSetMod, WSetEna, WSetEnaRvrt, and whether the stage runs."""
                points = [image.get_raw(704, p) for p in ("WSetMod", "WSetEna", "WSetEnaRvrt")]
                return [*points, dev.stage.enabled]

            assert controls() == [0, 0, 0, False]
            with structlog.testing.capture_logs() as logs:
                await dev.driver.command(-2000.0, enable=True)
            assert controls() == [1, 1, 1, True]
            assert image.get_raw(704, "WSetRvrtTms") == 3
            assert dev.stage.revert_timeout_s == 3
            [line] = [e for e in logs if e["event"] == LOST]
            assert set(line["found"]) == {"WSetEnaRvrt", "WSetRvrtTms"}

    asyncio.run(scenario())


@pytest.mark.parametrize("profile_name", PROFILE_NAMES)
def test_a_timer_that_will_not_stay_written_is_a_fault(profile_name: str, tmp_path: Path) -> None:
    """The device acknowledges the rewrite but holds 0: RevertNotKeptError naming the read-back."""

    async def scenario() -> None:
        async with device(profile_name, "tcp", tmp_path, revert_timeout_s=3) as dev:
            await dev.driver.setup()
            await dev.driver.command(-2000.0, enable=True)
            memory(dev).refuse_revert_timer = True
            memory(dev).forget_revert_timer()
            with pytest.raises(RevertNotKeptError, match=r"revert timer not kept: .*read back"):
                await dev.driver.command(-2000.0, enable=True)
            assert dev.stage.revert_timeout_s == 0

    asyncio.run(scenario())


@pytest.mark.parametrize("profile_name", PROFILE_NAMES)
def test_a_timer_lost_again_after_its_rewrite_is_a_fault(profile_name: str, tmp_path: Path) -> None:
    """The device forgets its timer 0.1 s after every arming: rewritten once, then, lost again
    at the next command, a fault (a revert the device keeps for 0.1 s is no revert)."""

    async def scenario() -> None:
        async with device(profile_name, "tcp", tmp_path, revert_timeout_s=3) as dev:
            await dev.driver.setup()
            memory(dev).forget_revert_after_s = 0.1
            await asyncio.sleep(0.2)
            await dev.driver.command(-2000.0, enable=True)  # lost: rewritten
            assert memory(dev).timer_register_s() == 3
            await asyncio.sleep(0.2)
            with pytest.raises(RevertNotKeptError, match="lost again one command after"):
                await dev.driver.command(-2000.0, enable=True)

    asyncio.run(scenario())


# -- through the link ----------------------------------------------------------------------------

REVERT_S = 2.0  # heartbeat every 0.67 s


def rewrites(link: ModbusInverterLink) -> int | None:
    snapshot = link.snapshot()
    return snapshot.revert_rewrites if snapshot is not None else None


@pytest.mark.parametrize("link", ["tcp", "rtu"])
@pytest.mark.parametrize("profile_name", PROFILE_NAMES)
def test_after_a_lost_timer_a_dead_controller_still_leaves_the_inverter_at_zero(
    profile_name: str, link: str, tmp_path: Path
) -> None:
    """The issue's scenario: the device forgets its timer while charging; the link's heartbeat
    rewrites it (no fault); the controller then dies, and the stage returns to 0 W by itself
    within the revert time."""

    async def scenario() -> None:
        async with device(profile_name, link, tmp_path, revert_timeout_s=REVERT_S) as dev:
            link_ = link_for(dev, REVERT_S)
            task = asyncio.create_task(link_.run(lambda: None))
            try:
                assert await until(lambda: link_.status is LinkStatus.UP)
                await link_.apply(PowerCommand(3000.0, enable=True))
                assert await until(lambda: abs(dev.stage.actual_w - 3000) < 10)  # 0.1 % steps
                memory(dev).forget_revert_timer()
                assert await until(lambda: dev.stage.revert_timeout_s == 0, 2.0)
                assert await until(lambda: dev.stage.revert_timeout_s == REVERT_S, 3.0)
                assert faults(link_) == ()
                # The snapshot counts the rewrite: the daemon's report turns it into an event.
                assert await until(lambda: rewrites(link_) == 1, 2.0), rewrites(link_)
            finally:
                task.cancel()  # the controller dies: no safe_stop
                await asyncio.gather(task, return_exceptions=True)
                await dev.transport.close()
            assert await until(lambda: dev.stage.actual_w == 0.0, REVERT_S + 1.5)
            assert dev.stage.reverts == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("link", ["tcp", "rtu"])
def test_a_device_that_keeps_forgetting_faults_the_link(link: str, tmp_path: Path) -> None:
    """Forgotten 0.1 s after every arming, the timer is lost at every heartbeat: the link faults
    with the reason, and writes no setpoint until set up anew."""

    async def scenario() -> None:
        async with device("sunspec-700", link, tmp_path, revert_timeout_s=REVERT_S) as dev:
            link_ = link_for(dev, REVERT_S)
            task = asyncio.create_task(link_.run(lambda: None))
            try:
                assert await until(lambda: link_.status is LinkStatus.UP)
                await link_.apply(PowerCommand(-3000.0, enable=True))
                assert await until(lambda: abs(dev.stage.actual_w + 3000) < 10)
                memory(dev).forget_revert_after_s = 0.1
                assert await until(
                    lambda: any("revert timer not kept" in f for f in faults(link_)), 5.0
                ), faults(link_)
                assert "lost again" in " ".join(faults(link_))
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await link_.safe_stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("profile_name", PROFILE_NAMES)
def test_a_heartbeat_is_one_write_and_one_read_back(profile_name: str, tmp_path: Path) -> None:
    """Once the stage is enabled and the mode written, re-sending the command is one write and
    one read-back: at 600 ms a reply every further request stretched the time between two
    writes towards the revert timer (it was 4 requests on 704 with 703, 5 on 124 with 123)."""

    async def scenario() -> None:
        async with device(profile_name, "tcp", tmp_path, revert_timeout_s=3) as dev:
            await dev.driver.setup()
            await dev.driver.command(-2000.0, enable=True)
            before = dev.transport.requests
            await dev.driver.command(-2000.0, enable=True)
            assert dev.transport.requests - before == 2
            before = dev.transport.requests
            await dev.driver.command(1000.0, enable=True)  # a new power costs no more
            assert dev.transport.requests - before == 2
            assert abs(dev.stage.target_w - 1000.0) < 10

    asyncio.run(scenario())


def test_a_changed_enable_is_written_again(tmp_path: Path) -> None:
    """The enable is not re-sent with every heartbeat, but a poll that finds it changed (123
    Conn dropped by the device) has it written with the next command."""

    async def scenario() -> None:
        async with device("sunspec-100", "tcp", tmp_path, revert_timeout_s=3) as dev:
            profile = dev.profile
            assert isinstance(profile, SunSpec100Profile)
            await dev.driver.setup()
            await dev.driver.command(-2000.0, enable=True)
            assert dev.stage.enabled
            profile.image.set_raw(123, "Conn", 0)
            dev.stage.set_enabled(False, 0.0)
            state = await dev.driver.read(0.0)
            assert not state.enabled
            await dev.driver.command(-2000.0, enable=True)
            assert profile.image.get_raw(123, "Conn") == 1
            assert dev.stage.enabled

    asyncio.run(scenario())


def test_a_lost_124_control_mode_is_rewritten(tmp_path: Path) -> None:
    """124's StorCtl_Mod is proven like the timer: a device that drops it (and runs its own way,
    its limits off) has it written back at the next command, with the log line."""

    async def scenario() -> None:
        async with device("sunspec-100", "tcp", tmp_path, revert_timeout_s=3) as dev:
            profile = dev.profile
            assert isinstance(profile, SunSpec100Profile)
            await dev.driver.setup()
            await dev.driver.command(-2000.0, enable=True)
            profile.image.set_raw(124, "StorCtl_Mod", 0)
            with structlog.testing.capture_logs() as logs:
                await dev.driver.command(-2000.0, enable=True)
            assert profile.image.get_raw(124, "StorCtl_Mod") == 3  # charge and discharge
            [line] = [e for e in logs if e["event"] == LOST]
            assert set(line["found"]) == {"StorCtl_Mod"}
            assert dev.driver.proof.rewrites == 1

    asyncio.run(scenario())
