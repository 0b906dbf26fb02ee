"""A clean stop while a car discharges ends its session without a fault (issue 17).

The real daemon, built from a config as ``app.run`` builds it (CAN vehicle link, Modbus inverter
link, the safety core), runs against the plant in this process: a simulated car on the virtual
CAN bus and the board's simulated lines, a simulated inverter over Modbus TCP, coupled by the
plant's physics (the output voltage is the pack's while the car's contactor is closed, then bleeds
down). With the control loop gone, the session can only open its contactors on a measured current
of at most 5 A and unlock on a measured voltage at most 10 V (CHAdeMO) or below 60 V (GB/T)
if the stop sequence passes the inverter's readings on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller import app
from controller.config import Config, parse_config
from controller.core.snapshots import VehiclePhase
from controller.daemon import Daemon, ExitCode
from controller.sdnotify import Notifier
from controller.vehicle.frames import LineOutputs
from controller.vehicle.link import CanVehicleLink
from hil.plant import Plant, PlantConfig
from tests.support import until

EVENING = dt.datetime(2026, 11, 23, 19, 0)  # in the fallback's peak window: it discharges
DISCHARGE_W = 1500.0
UNLOCK_V = {"chademo": 10.0, "gbt27930": 60.0}  # CHAdeMO 0x109.5 bit2; GB/T 18487.1 lock


def daemon_config(directory: Path, protocol: str, channel: str, port: int) -> Config:
    return parse_config(f"""\
site: {{site_id: stop, charger_id: c1, timezone: Europe/Amsterdam}}
vehicle:
  protocol: {protocol}
  can: {{interface: virtual, channel: "{channel}"}}
  lines: {{kind: simulated, path: {directory / "lines"}}}
  charger: {{discharge_offered: true, max_discharge_current_a: 30}}
inverter:
  transport: tcp
  tcp: {{host: 127.0.0.1, port: {port}}}
  timeout_s: 0.5
  poll_interval_s: 0.1
  revert_timeout_s: 3
aggregator: {{enabled: false}}
owner: {{soc_floor_pct: 40, soc_ceiling_pct: 90}}
safety: {{max_charge_power_w: 7400, max_discharge_power_w: 7400, ramp_w_per_s: 5000}}
fallback:
  policy: time_of_use
  cheap_window: {{start: '00:30', end: '06:30'}}
  peak_window: {{start: '17:00', end: '21:00'}}
  charge_power_w: 3700
  discharge_power_w: {DISCHARGE_W:g}
control: {{tick_s: 0.05, shutdown_timeout_s: 4.5}}
ledger: {{path: {directory / "ledger.sqlite"}}}
logging: {{format: json}}
""")


@dataclass
class Watch:
    """What the charger told its board and what the stop sequence told the session, in time."""

    outputs: list[tuple[float, LineOutputs]] = field(default_factory=list)
    reports: list[tuple[float, float, float]] = field(default_factory=list)  # (t, volts, amps)

    def install(self, link: CanVehicleLink) -> None:
        lines_write = link._lines.write
        update_output = link.update_output

        def write(outputs: LineOutputs) -> None:
            self.outputs.append((time.monotonic(), outputs))
            lines_write(outputs)

        def report(voltage_v: float, current_a: float) -> None:
            self.reports.append((time.monotonic(), voltage_v, current_a))
            update_output(voltage_v, current_a)

        link._lines.write = write  # type: ignore[method-assign]  # a spy on the board's lines
        link.update_output = report  # type: ignore[method-assign]  # and on the reports

    def first(self, since_s: float, opened: str) -> float | None:
        """When the output ``opened`` (contactors, lock) was first off at or after ``since_s``."""
        return next(
            (t for t, o in self.outputs if t >= since_s and not getattr(o, opened)),
            None,
        )


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", ["chademo", "gbt27930"])
def test_a_clean_stop_mid_discharge_ends_the_session_without_a_fault(
    tmp_path: Path, protocol: str
) -> None:
    """Stopped while discharging, the daemon ends the session through its protocol: the
    contactors open after a reading of at most 5 A taken since the stop, the connector unlocks
    after a reading below the unlock voltage taken since they opened, and no fault is raised."""
    channel = f"stop-{uuid.uuid4().hex}"
    plant = Plant(
        PlantConfig(
            protocol=protocol,
            mode="discharge",
            soc_pct=70.0,
            can_interface="virtual",
            can_channel=channel,
            lines_path=tmp_path / "lines",
            tcp=("127.0.0.1", 0),
        )
    )
    watch = Watch()

    async def scenario() -> tuple[float, CanVehicleLink]:
        plant_task = asyncio.create_task(plant.run(), name="plant")
        try:
            async with asyncio.timeout(40):
                assert await until(lambda: plant.ready, 20), "the plant never came up"
                port = plant.inverter.port
                assert port is not None
                config = daemon_config(tmp_path, protocol, channel, port)
                links = app.build_links(config)
                assert isinstance(links.vehicle, CanVehicleLink)
                watch.install(links.vehicle)
                wall_clock = lambda tz: EVENING.replace(tzinfo=tz)  # noqa: E731  a fixed evening
                daemon = Daemon(
                    config,
                    links,
                    app.build_control_step(config, links, wall_clock=wall_clock),
                    Notifier({}),
                    wall_clock=wall_clock,
                    handle_signals=False,
                )
                task = asyncio.create_task(daemon.run(), name="daemon")
                while abs(plant.stage.actual_w + DISCHARGE_W) > 50:
                    assert not task.done(), "the daemon ended before discharging"
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # discharging steadily
                stopped_at = time.monotonic()
                daemon.request_stop()
                assert await task is ExitCode.OK
                return stopped_at, links.vehicle
        finally:
            plant_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await plant_task

    stopped_at, link = asyncio.run(scenario())
    state = link.snapshot()  # the session as the link last saw it
    assert state is not None
    assert state.faults == (), f"the stop ended in a fault: {state.faults}"
    assert state.phase is VehiclePhase.ENDED, f"the session did not end: {state.phase}"
    opened_at = watch.first(stopped_at, "contactors")
    assert opened_at is not None, "the contactors never opened"
    low = [(t, a) for t, _v, a in watch.reports if stopped_at < t <= opened_at and abs(a) <= 5.0]
    assert low, f"contactors opened without a reading of <= 5 A since the stop: {watch.reports}"
    unlocked_at = watch.first(opened_at, "lock")
    assert unlocked_at is not None, "the connector was never unlocked"
    dead = [
        (t, v)
        for t, v, _a in watch.reports
        if opened_at < t <= unlocked_at and not math.isnan(v) and v <= UNLOCK_V[protocol]
    ]
    assert dead, f"unlocked without a reading below {UNLOCK_V[protocol]} V: {watch.reports}"
