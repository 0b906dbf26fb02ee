"""HIL: the real daemon against inverters that behave like the ones in the field (issue 16).

Each device is the plant's inverter with ``hil.inverter.field``'s switches: the field chain
(communication models 11 and 12, MPPT 160, a vendor model) at base 0 and silent at 40000, a slow
device (600 ms a reply), a busy one (random exception 6), one that serves a single TCP
connection, one that forgets its revert timer, and a 124 device whose rates are limits and that
would charge at full power by itself. ``make test`` runs the device that does all of it at
once; ``make test-deep`` runs each on its own.

For every device the daemon runs with the documented defaults for the inverter link (timeout
1 s, one retry, poll 0.5 s, revert 3 s, stale after 3 s), and the test asserts on the plant:
the power really delivered reaches the setpoint and stays there, the device never reverts while
the daemon lives, no fault reaches the aggregator, and after a SIGKILL of the daemon the device
returns to 0 W by its own timer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from hil.conftest import Rig, make_setup, running
from hil.harness import AggregatorClient, setpoint, until
from hil.mosquitto import Mosquitto

pytestmark = pytest.mark.hil

POWER_W = -3000.0
BAND_W = 150.0
FORGET_S = 6.0  # the forgetful device drops its timer this long after each arming

DEVICES: dict[str, tuple[str, ...]] = {
    "field chain at 0, silent at 40000": ("--field-chain", "--base", "0", "--silent-at-40000"),
    "slow (600 ms a reply)": ("--reply-delay-s", "0.6"),
    "busy (exception 6 on 10 % of requests)": ("--busy-probability", "0.1"),
    "one TCP connection": ("--max-connections", "1"),
    "forgets its revert timer": ("--forget-revert-after-s", f"{FORGET_S:g}"),
    "124 rates as limits, charging by itself": ("--free-power-w", "7400"),
}
# All at once, forgetting later: with the longer revert timer such a device needs (6 s), one
# that forgot 6 s after arming could forget before its timer ran out after a SIGKILL.
ALL_AT_ONCE = (
    *(arg for name, args in DEVICES.items() if name != "forgets its revert timer" for arg in args),
    "--forget-revert-after-s",
    "10",
)


def events(aggregator: AggregatorClient, kind: str) -> list[dict[str, object]]:
    found: list[dict[str, object]] = [m.json() for m in aggregator.on("event")]
    return [e for e in found if e.get("kind") == kind]


def run_against(
    short_dir: Path,
    broker: Mosquitto,
    behaviour: tuple[str, ...],
    *,
    stale_s: float = 3.0,
    revert_s: float = 3.0,
) -> None:
    setup = dataclasses.replace(
        make_setup(short_dir, broker, "gbt27930", "tcp"),
        inverter_timeout_s=1.0,
        inverter_retries=1,
        poll_interval_s=0.5,
        revert_timeout_s=revert_s,
        inverter_behaviour=behaviour,
        extra_safety={"inverter_stale_after_s": stale_s},
    )
    forget_s = (
        float(behaviour[behaviour.index("--forget-revert-after-s") + 1])
        if "--forget-revert-after-s" in behaviour
        else None
    )
    slow = "--reply-delay-s" in behaviour
    with running(setup, soc_pct=70, mode="discharge") as rig:

        async def scenario() -> None:
            async with AggregatorClient(setup.broker_port, setup.prefix) as aggregator:
                # Setup at 600 ms a reply, after 40000 stayed silent: about 15 s.
                online_s = 45.0 if slow else 20.0
                assert await until(
                    lambda: aggregator.availability()[-1:] == [b"online"], online_s
                ), "not online"
                await aggregator.publish("setpoint", setpoint("field", POWER_W, ttl_s=300))
                assert await until(
                    lambda: abs(rig.plant.status()["actual_w"] - POWER_W) < BAND_W,
                    40.0 if slow else 20.0,
                    every_s=0.1,
                ), "the plant never delivered the setpoint"
                # Held: every sample of the delivered power inside the band.
                outside = await sample_outside_band(rig, 4.0 if forget_s is None else forget_s)
                assert not outside, f"delivered power left the band: {outside[:5]}"
                if forget_s is not None:
                    # Kill just after a rewrite, so the device still holds the timer.
                    assert await until(
                        lambda: len(events(aggregator, "revert_settings_rewritten")) >= 1,
                        forget_s,
                    ), "no event for the rewritten revert timer"
                    seen = len(events(aggregator, "revert_settings_rewritten"))
                    assert await until(
                        lambda: len(events(aggregator, "revert_settings_rewritten")) > seen,
                        forget_s + 3.0,
                    ), "the timer was lost again and not rewritten"
                    assert rig.plant.status()["revert_forgets"] >= 2
                status = rig.plant.status()
                assert not events(aggregator, "fault_raised"), events(aggregator, "fault_raised")
                assert status["reverts"] == 0, "the device reverted while the daemon was alive"
                assert status["connections_refused"] == 0, status
                assert status["revert_timeout_s"] == revert_s, status
                rig.daemon.kill()
                killed_s = time.monotonic()
                assert await until(
                    lambda: rig.plant.status()["actual_w"] == 0.0, revert_s + 2.0, every_s=0.05
                ), f"still {rig.plant.status()['actual_w']} W {revert_s + 2:g} s after SIGKILL"
                assert rig.plant.status()["reverts"] == 1
                assert time.monotonic() - killed_s <= revert_s + 2.0

        play(rig, scenario)


async def sample_outside_band(rig: Rig, hold_s: float) -> list[float]:
    outside: list[float] = []
    deadline = time.monotonic() + hold_s
    while time.monotonic() < deadline:
        actual_w = rig.plant.status()["actual_w"]
        if abs(actual_w - POWER_W) >= BAND_W:
            outside.append(actual_w)
        await asyncio.sleep(0.1)
    return outside


def play(rig: Rig, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        asyncio.run(scenario())
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nplant: {rig.plant.status()}\n{rig.daemon_log(400)}") from None


@pytest.mark.timeout(150)
def test_a_device_with_every_field_behaviour_at_once(short_dir: Path, broker: Mosquitto) -> None:
    """The field chain at base 0, silent at 40000, 600 ms a reply, busy, one connection,
    forgetting its timer, rates as limits: the daemon finds it, holds the power, rewrites the
    timer (an event each time) and, killed, leaves the device to revert to 0 W.

    Slow and busy at once, a busy reply's retry can stretch a poll past the default 3 s stale
    limit and the time between two writes past a 3 s revert timer: docs/inverter.md tells the
    technician to raise them (to 5 s and 6 s here) for such a device."""
    run_against(short_dir, broker, ALL_AT_ONCE, stale_s=5.0, revert_s=6.0)


@pytest.mark.deep
@pytest.mark.timeout(150)
@pytest.mark.parametrize("name", list(DEVICES))
def test_each_field_device(name: str, short_dir: Path, broker: Mosquitto) -> None:
    """Each field behaviour on its own, so a failure names the one at fault."""
    run_against(short_dir, broker, DEVICES[name])
