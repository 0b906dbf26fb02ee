"""The simulation-only clock: V2G_SIMULATED_CLOCK gives the daemon's policy a compressed night."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
import zoneinfo
from pathlib import Path

import pytest

from controller.core.snapshots import InverterState, Setpoint, VehicleState
from controller.daemon import Daemon, Links
from controller.links import ControlOutput
from controller.simclock import SIMULATED_CLOCK_ENV, SimulatedClock
from tests.support import (
    FakeAggregator,
    FakeInverter,
    FakeVehicle,
    FixedStep,
    Journal,
    make_config,
    until,
)

AMS = zoneinfo.ZoneInfo("Europe/Amsterdam")


def env_value(start: str, at_unix_s: float, rate: float) -> dict[str, str]:
    return {SIMULATED_CLOCK_ENV: json.dumps({"start": start, "at_unix_s": at_unix_s, "rate": rate})}


def test_unset_means_the_real_clock() -> None:
    """Without the variable there is no simulated clock."""
    assert SimulatedClock.from_env({}) is None


def test_clock_runs_at_its_rate_from_its_anchor() -> None:
    """Ten real seconds after the anchor at rate 360 it is one simulated hour later."""
    anchor = time.time() - 10.0
    clock = SimulatedClock.from_env(env_value("2026-11-23T18:00:00+01:00", anchor, 360))
    assert clock is not None
    now = clock(AMS)
    assert now.tzinfo is AMS
    assert dt.datetime(2026, 11, 23, 18, 59, tzinfo=AMS) < now
    assert now < dt.datetime(2026, 11, 23, 19, 5, tzinfo=AMS)


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        json.dumps({"start": "2026-11-23T18:00:00", "at_unix_s": 0, "rate": 1}),
        json.dumps({"start": "2026-11-23T18:00:00+01:00", "at_unix_s": 0, "rate": 0}),
        json.dumps({"start": "2026-11-23T18:00:00+01:00", "rate": 10}),
        json.dumps({"start": "tonight", "at_unix_s": 0, "rate": 10}),
    ],
)
def test_malformed_values_are_refused(value: str) -> None:
    """A malformed value raises rather than silently running on the real clock."""
    with pytest.raises(ValueError, match=SIMULATED_CLOCK_ENV):
        SimulatedClock.from_env({SIMULATED_CLOCK_ENV: value})


def test_daemon_hands_the_simulated_time_to_the_core() -> None:
    """The control step sees the wall time the daemon's clock gives, not the real one."""
    seen: list[dt.datetime] = []
    clock = SimulatedClock(dt.datetime(2026, 11, 23, 19, 0, tzinfo=AMS), time.time(), 1.0)

    class Step(FixedStep):
        def __call__(
            self,
            vehicle: VehicleState | None,
            inverter: InverterState | None,
            setpoint: Setpoint | None,
            monotonic_s: float,
            wall: dt.datetime,
        ) -> ControlOutput:
            seen.append(wall)
            return super().__call__(vehicle, inverter, setpoint, monotonic_s, wall)

    async def scenario() -> None:
        journal = Journal()
        links = Links(FakeVehicle(journal), FakeInverter(journal), FakeAggregator(journal))
        daemon = Daemon(make_config(), links, Step(), wall_clock=clock, handle_signals=False)
        task = asyncio.create_task(daemon.run())
        assert await until(lambda: len(seen) >= 2, 5)
        daemon.request_stop()
        await task

    asyncio.run(scenario())
    assert all(dt.time(18, 59) < w.astimezone(AMS).time() < dt.time(19, 1) for w in seen)


def test_daemon_process_refuses_a_malformed_clock(tmp_path: Path) -> None:
    """`run` with a malformed V2G_SIMULATED_CLOCK exits 2 and starts nothing."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "site: {site_id: s, charger_id: c}\n"
        "vehicle: {protocol: chademo, can: {interface: virtual, channel: clk}}\n"
        "inverter: {transport: tcp, tcp: {host: 127.0.0.1, port: 1}}\n"
        "aggregator: {enabled: false}\n"
        "logging: {format: json}\n"
    )
    env = dict(os.environ, **{SIMULATED_CLOCK_ENV: "{"})
    result = subprocess.run(
        [sys.executable, "-m", "controller", "run", "-c", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert SIMULATED_CLOCK_ENV in result.stdout + result.stderr


def test_under_a_simulated_clock_the_ramp_and_the_horizon_run_on_simulated_seconds(
    tmp_path: Path,
) -> None:
    """At 720x the core's ramp and floor horizon are per simulated second: a 7 s swing at
    2000 W/s is 7 simulated seconds, not 84 simulated minutes (docs/hil.md)."""
    from controller.app import build_control_step  # noqa: PLC0415
    from controller.config import load_config  # noqa: PLC0415

    shipped = load_config(Path(__file__).resolve().parents[1] / "config" / "example-cn.yaml")
    config = shipped.model_copy(
        update={"ledger": shipped.ledger.model_copy(update={"path": str(tmp_path / "l.sqlite")})}
    )
    clock = SimulatedClock(dt.datetime(2026, 12, 3, 18, tzinfo=dt.UTC), time.time(), 720.0)
    built = [build_control_step(config, wall_clock=clock), build_control_step(config)]
    try:
        simulated, real = (step.policy.safety for step in built)
        assert simulated.ramp_w_per_s == config.safety.ramp_w_per_s * 720
        assert simulated.battery_time_factor == 720
        assert real.ramp_w_per_s == config.safety.ramp_w_per_s
        assert real.battery_time_factor == 1
    finally:
        for step in built:
            if step.saver is not None:
                step.saver.stop(1.0)
            if step.planner is not None:
                step.planner.close()
