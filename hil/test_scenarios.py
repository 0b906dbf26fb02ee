"""HIL scenarios: the real daemon process, the plant process and a real mosquitto.

Every assertion is on the plant: the power its inverter stage really delivers and the SoC of the
car's battery it moves, never on log lines. Every scenario runs on GB/T 27930 over Modbus TCP;
the core scenario (evening discharge stopping at the floor) runs on all four combinations of
CHAdeMO / GB/T and Modbus TCP / RTU. After every scenario the plant's true lowest SoC is at or
above the owner's floor, with no tolerance below it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hil.conftest import Rig, make_setup, running
from hil.harness import AggregatorClient, setpoint, until
from hil.mosquitto import Mosquitto

pytestmark = pytest.mark.hil

NIGHT = "2026-11-24T04:00:00+01:00"
DEFAULT = ("gbt27930", "tcp")


def play(rig: Rig, scenario: Callable[[AggregatorClient], Awaitable[None]]) -> None:
    """Run ``scenario`` with an aggregator on the rig's broker; the daemon's log on failure."""

    async def main() -> None:
        async with AggregatorClient(rig.setup.broker_port, rig.setup.prefix) as aggregator:
            await scenario(aggregator)

    try:
        asyncio.run(main())
        # The floor is a promise on the car's true SoC, in every scenario: the car's 1 % reports
        # are the controller's problem, not a tolerance the test grants.
        lowest_pct = rig.plant.status()["lowest_soc_pct"]
        floor_pct = rig.setup.soc_floor_pct
        assert lowest_pct >= floor_pct, (
            f"true SoC fell to {lowest_pct} %, below the {floor_pct:g} % floor"
        )
    except AssertionError as exc:
        code = rig.daemon.proc.poll() if rig.daemon.proc else None
        raise AssertionError(
            f"{exc}\nplant: {rig.plant.status()}\ndaemon exit code: {code}\n{rig.daemon_log()}"
        ) from None


def stop_cleanly(rig: Rig) -> list[dict[str, Any]]:
    """SIGTERM as systemd stops the service, mid-session: the daemon exits 0 and the vehicle
    session ends through its protocol, without a fault (issue 17: with no reading passed on
    after the stop, CHAdeMO and GB/T faulted on "output current not confirmed at or below
    5 A" and held the lock). The log records from the signal on, for a failure's message."""
    proc = rig.daemon.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=10)
    records: list[dict[str, Any]] = []
    for line in rig.daemon.log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if records or record.get("event") == "stop signal received; stopping cleanly":
            records.append(record)
    tail = "\n".join(json.dumps(r) for r in records)
    assert code == 0, f"exit code {code}\n{tail}"
    assert records, f"no stop signal in the log\n{rig.daemon_log()}"
    faults = [
        r for r in records if r.get("event") == "vehicle session event" and r.get("kind") == "fault"
    ]
    assert not faults, f"the clean stop ended the session in a fault\n{tail}"
    steps = [r.get("step") for r in records if r.get("event") == "stop step done"]
    assert "vehicle session ended" in steps, f"the session did not end in time\n{tail}"
    return records


async def plant_until(
    rig: Rig, predicate: Callable[[dict[str, Any]], bool], timeout_s: float
) -> bool:
    return await until(lambda: predicate(rig.plant.status()), timeout_s, every_s=0.1)


async def charger_online(aggregator: AggregatorClient) -> None:
    """Wait until the daemon announced itself (it subscribed to setpoints before that)."""
    assert await until(lambda: aggregator.availability()[-1:] == [b"online"], 20), "not online"


async def discharging(rig: Rig, aggregator: AggregatorClient, power_w: float = -3000.0) -> None:
    """Ask for ``power_w`` and wait until the plant delivers it."""
    await charger_online(aggregator)
    await aggregator.publish("setpoint", setpoint("discharge-1", power_w, ttl_s=120))
    assert await plant_until(rig, lambda s: abs(s["actual_w"] - power_w) < 150, 25), (
        f"plant never reached {power_w} W"
    )


@pytest.mark.parametrize(
    ("protocol", "transport"),
    [("gbt27930", "tcp"), ("gbt27930", "rtu"), ("chademo", "tcp"), ("chademo", "rtu")],
)
def test_evening_discharge_stops_at_the_soc_floor(
    short_dir: Path, broker: Mosquitto, protocol: str, transport: str
) -> None:
    """An aggregator discharge at the peak drains the car to the 40 % floor and stops there.

    It stops before the floor, not after: the car reports whole percent and energy flows until a
    stop takes effect, so the controller keeps the reported 1 % and that energy in hand.
    """
    setup = make_setup(short_dir, broker, protocol, transport)
    with running(setup, soc_pct=44.6, mode="discharge", time_factor=120) as rig:

        async def scenario(aggregator: AggregatorClient) -> None:
            await discharging(rig, aggregator, -3700.0)
            # Stopped within 2 % above the floor: the 1 % resolution, the energy of the horizon
            # (3.9 kW for 1 s at 120x: 0.3 %) and the car's rounding.
            assert await plant_until(
                rig, lambda s: s["actual_w"] == 0.0 and s["soc_pct"] <= 42.0, 40
            ), "discharge did not stop near the floor"
            await asyncio.sleep(1.0)
            status = rig.plant.status()
            assert status["actual_w"] == 0.0
            assert status["lowest_soc_pct"] >= setup.soc_floor_pct, "true SoC below the floor"
            assert status["exported_wh"] > 800  # over 2 % of 40 kWh went to the grid

        play(rig, scenario)
        stop_cleanly(rig)  # the car still plugged in, its session at 0 W


def test_aggregator_silence_falls_back_to_the_local_policy(
    short_dir: Path, broker: Mosquitto
) -> None:
    """When the setpoint expires unrenewed, the peak-window fallback (-1500 W) takes over."""
    setup = make_setup(short_dir, broker, *DEFAULT)
    with running(setup, soc_pct=70, mode="discharge") as rig:

        async def scenario(aggregator: AggregatorClient) -> None:
            await charger_online(aggregator)
            await aggregator.publish("setpoint", setpoint("short", -3000.0, ttl_s=6))
            assert await plant_until(rig, lambda s: abs(s["actual_w"] + 3000) < 150, 25)
            assert await plant_until(rig, lambda s: abs(s["actual_w"] + 1500) < 150, 15)

        play(rig, scenario)


# One shape: discharging at 3 kW, a fault is injected into the plant, the plant must reach 0 W
# within the bound (and, where the fault persists, stay there).
INJECTED_STOPS: dict[str, tuple[dict[str, object], float, bool]] = {
    # The car asks to stop (CHAdeMO 0x102 / GB/T BST): 0 W within 2 s.
    "vehicle stop request": ({"cmd": "vehicle", "set": {"stop_request": True}}, 2.0, True),
    # The site's emergency stop pressed: 0 W within 1 s.
    "emergency stop": ({"cmd": "lines", "set": {"emergency_stop": True}}, 1.0, True),
    # A pack at 60 °C (cutoff 55 °C): 0 W within 2 s.
    "vehicle over-temperature": ({"cmd": "battery", "set": {"temperature_c": 60}}, 2.0, False),
    # The car falls silent on CAN: 0 W within 2.5 s (1 s staleness).
    "vehicle CAN silence": ({"cmd": "vehicle", "set": {"silence": True}}, 2.5, False),
    # The inverter stops answering: its own revert timer (3 s) leaves it at 0 W.
    "inverter unreachable": ({"cmd": "inverter", "set": {"drop_replies": True}}, 6.0, False),
}


@pytest.mark.parametrize("name", list(INJECTED_STOPS))
def test_injected_fault_mid_discharge_ends_at_zero(
    short_dir: Path, broker: Mosquitto, name: str
) -> None:
    """A fault injected while discharging brings the plant to 0 W within its bound."""
    request, bound_s, stays_off = INJECTED_STOPS[name]
    setup = make_setup(short_dir, broker, *DEFAULT)
    with running(setup, soc_pct=70, mode="discharge") as rig:

        async def scenario(aggregator: AggregatorClient) -> None:
            await discharging(rig, aggregator)
            rig.plant.client.request(request)
            assert await plant_until(rig, lambda s: s["actual_w"] == 0.0, bound_s)
            if stays_off:
                await asyncio.sleep(1.0)
                assert rig.plant.status()["actual_w"] == 0.0

        play(rig, scenario)


def test_inverter_fault_latches_zero(short_dir: Path, broker: Mosquitto) -> None:
    """An inverter trip gives 0 W; once cleared, power stays off while the fault latch holds."""
    setup = make_setup(short_dir, broker, *DEFAULT)
    with running(setup, soc_pct=70, mode="discharge") as rig:

        async def scenario(aggregator: AggregatorClient) -> None:
            await discharging(rig, aggregator)
            rig.plant.client.request({"cmd": "inverter", "trip": "DC overcurrent"})
            assert await plant_until(rig, lambda s: s["actual_w"] == 0.0, 1.0)
            # The link tells the faulted inverter 0 W at once, well before its 3 s revert timer,
            # so a fault that clears by itself cannot bring back the old setpoint.
            assert await plant_until(rig, lambda s: s["target_w"] == 0.0, 1.5)
            rig.plant.client.request({"cmd": "inverter", "clear_fault": True})
            for _ in range(15):  # fault_hold_s is 30 s: still 0 W 1.5 s after the clear
                await asyncio.sleep(0.1)
                assert rig.plant.status()["actual_w"] == 0.0

        play(rig, scenario)


async def held_at_zero(rig: Rig, seconds: float) -> None:
    """The plant delivers 0 W throughout ``seconds``."""
    for _ in range(round(seconds / 0.1)):
        await asyncio.sleep(0.1)
        assert rig.plant.status()["actual_w"] == 0.0, "power came back"


def test_emergency_stop_waits_for_a_person_and_a_start_across_a_restart(
    short_dir: Path, broker: Mosquitto
) -> None:
    """ISO 13850: released, an E-stop stays latched past any hold and across a SIGKILL restart;
    the reset button clears it but does not restart; a new setpoint does."""
    setup = dataclasses.replace(make_setup(short_dir, broker, *DEFAULT), fault_hold_s=1.0)
    with running(setup, soc_pct=70, mode="discharge") as rig:

        async def scenario(aggregator: AggregatorClient) -> None:
            await discharging(rig, aggregator)
            lines = rig.plant.client
            lines.request({"cmd": "lines", "set": {"emergency_stop": True}})
            assert await plant_until(rig, lambda s: s["actual_w"] == 0.0, 1.0)
            lines.request({"cmd": "lines", "set": {"emergency_stop": False}})
            await held_at_zero(rig, 4.0)  # four times fault_hold_s, the old setpoint still valid
            announced = len(aggregator.availability())
            rig.daemon.kill()
            rig.daemon.__exit__(None, None, None)
            rig.daemon.__enter__()
            assert await until(
                lambda: (
                    len(aggregator.availability()) > announced + 1
                    and aggregator.availability()[-1:] == [b"online"]
                ),
                20,
            ), "the restarted daemon never came online"
            await held_at_zero(rig, 3.0)
            assert "safety state restored" in rig.daemon_log(400)
            lines.request({"cmd": "lines", "set": {"fault_reset": True}})
            await asyncio.sleep(0.5)
            lines.request({"cmd": "lines", "set": {"fault_reset": False}})
            await held_at_zero(rig, 2.0)  # reset, but the reset is not a start
            await aggregator.publish("setpoint", setpoint("after-reset", -2000.0, ttl_s=120))
            assert await plant_until(rig, lambda s: abs(s["actual_w"] + 2000.0) < 150, 25), (
                "a new setpoint after the reset did not start the charger"
            )

        play(rig, scenario)


def test_daemon_sigkill_mid_discharge_inverter_reverts_by_itself(
    short_dir: Path, broker: Mosquitto
) -> None:
    """SIGKILL while discharging: nobody writes again, the inverter is at 0 W within ~3 s."""
    setup = make_setup(short_dir, broker, *DEFAULT)
    with running(setup, soc_pct=70, mode="discharge") as rig:

        async def scenario(aggregator: AggregatorClient) -> None:
            await discharging(rig, aggregator)
            reverts = rig.plant.status()["reverts"]
            rig.daemon.kill()
            assert await plant_until(rig, lambda s: s["actual_w"] == 0.0, 6.0)
            assert rig.plant.status()["reverts"] > reverts

        play(rig, scenario)


def test_broker_restart_keeps_following_the_aggregator(short_dir: Path, broker: Mosquitto) -> None:
    """A broker restart neither stops a valid setpoint nor the next one from being followed."""
    setup = make_setup(short_dir, broker, *DEFAULT)
    with running(setup, soc_pct=70, mode="discharge") as rig:

        async def scenario(aggregator: AggregatorClient) -> None:
            await discharging(rig, aggregator, -3000.0)
            announced = len(aggregator.availability())
            broker.stop()
            await asyncio.sleep(2.0)
            assert abs(rig.plant.status()["actual_w"] + 3000) < 150  # setpoint still valid
            broker.start()
            # The restarted broker lost the retained "online": only a new one shows a reconnect.
            assert await until(
                lambda: aggregator.availability()[announced:][-1:] == [b"online"], 15
            ), f"no new 'online' within 15 s of the broker restart: {aggregator.availability()}"
            await aggregator.publish("setpoint", setpoint("after-restart", -2000.0, ttl_s=60))
            assert await plant_until(rig, lambda s: abs(s["actual_w"] + 2000) < 150, 20)

        play(rig, scenario)


def test_burst_of_bad_setpoints_changes_nothing(short_dir: Path, broker: Mosquitto) -> None:
    """Twenty malformed, oversized, expired or retained setpoints: all refused, power unchanged."""
    setup = make_setup(short_dir, broker, *DEFAULT)
    with running(setup, soc_pct=70, mode="discharge") as rig:

        async def scenario(aggregator: AggregatorClient) -> None:
            await discharging(rig, aggregator, -2000.0)
            bad: list[bytes | dict[str, Any]] = [
                b"{not json",
                b"\xff\xfe",
                setpoint("huge", -50_000.0),
                setpoint("long", -3000.0, ttl_s=100_000),
                setpoint("expired", -3000.0, ttl_s=1, issued_at="2020-01-01T00:00:00+00:00"),
                {"id": "no-ttl", "issued_at": "2026-01-01T00:00:00Z", "power_w": -3000},
                setpoint("nan", -3000.0) | {"power_w": "NaN"},
                setpoint("extra", -3000.0, colour="red"),
            ]
            for i in range(20):
                await aggregator.publish("setpoint", bad[i % len(bad)])
            await aggregator.publish("setpoint", setpoint("kept-retained", -3000.0), retain=True)
            for _ in range(30):  # 3 s of watching the plant
                await asyncio.sleep(0.1)
                assert abs(rig.plant.status()["actual_w"] + 2000) < 150
            assert await until(lambda: len(aggregator.all_acks()) >= 22, 5)
            refused = [a for a in aggregator.all_acks() if a["id"] != "discharge-1"]
            assert refused
            assert all(a["accepted"] is False for a in refused)

        play(rig, scenario)
        stop_cleanly(rig)  # mid-discharge at 2 kW


def test_night_charge_reaches_the_departure_target(short_dir: Path, broker: Mosquitto) -> None:
    """From 04:00 in the cheap window the fallback charges to 80 % and stops there."""
    setup = make_setup(short_dir, broker, *DEFAULT)
    with running(setup, soc_pct=77, mode="charge", time_factor=60, clock_start=NIGHT) as rig:

        async def scenario(aggregator: AggregatorClient) -> None:
            await aggregator.connected()
            assert await plant_until(rig, lambda s: s["actual_w"] > 3000, 25), "never charged"
            # The target is a promise on the true SoC too: no tolerance below it.
            assert await plant_until(
                rig,
                lambda s: s["soc_pct"] >= setup.departure_target_pct and s["actual_w"] == 0.0,
                40,
            ), "charge did not stop at the departure target"
            status = rig.plant.status()
            assert status["highest_soc_pct"] <= 81.0
            assert status["imported_wh"] > 800

        play(rig, scenario)
