"""The vehicle section of the config, the link it builds, and what the daemon tells the vehicle."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from controller import app
from controller.config import Config, load_config, parse_config
from controller.core.snapshots import InverterState, VehiclePhase, VehicleState
from controller.daemon import Daemon, Links
from controller.errors import ConfigError
from controller.links import LinkStatus
from controller.sdnotify import Notifier
from controller.unavailable import UnavailableLink
from controller.vehicle.chademo import ChademoSession
from controller.vehicle.factory import build_vehicle_link, chademo_charger, gbt_charger
from controller.vehicle.gbt27930 import GbtSession
from controller.vehicle.lines import GpioLines, SharedFileLines, UnwiredLines
from controller.vehicle.link import CanVehicleLink
from controller.vehicle.profile import DbcProfileSession
from tests.support import FakeAggregator, FakeInverter, FakeVehicle, FixedStep, Journal, until

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "example.yaml"
PROFILE = REPO / "config" / "bms" / "example-pack.yaml"

BASE = """\
site: {site_id: s1, charger_id: c1}
inverter: {transport: tcp, tcp: {host: 192.0.2.10}}
aggregator: {enabled: false}
"""
GPIO_CHADEMO = """\
vehicle:
  protocol: chademo
  lines:
    kind: gpio
    chip: /dev/gpiochip0
    offsets: {plugged: 4, k: 5, insulation_ok: 24, d1: 17, d2: 18, contactors: 22, lock: 23}
    active_low: [plugged, k]
"""


def vehicle_config(text: str) -> Config:
    """A whole config around a vehicle section."""
    return parse_config(BASE + text, "c.yaml")


def problems(text: str) -> list[tuple[int | None, str, str]]:
    """Every problem in a config around a vehicle section."""
    with pytest.raises(ConfigError) as info:
        vehicle_config(text)
    return [(p.line, p.path, p.message) for p in info.value.problems]


def test_vehicle_section_defaults_are_safe() -> None:
    """Without lines, charger or dbc_dir: no board lines, charge-only ratings, default search."""
    vehicle = vehicle_config("vehicle: {protocol: chademo}\n").vehicle
    assert vehicle.lines is None
    assert vehicle.charger.discharge_offered is False
    assert vehicle.charger.max_discharge_current_a == 0
    assert vehicle.dbc_dir is None
    assert vehicle.can.reconnect_delay_s == 1.0
    link = build_vehicle_link(vehicle)
    assert isinstance(link._lines, UnwiredLines)


def test_example_config_builds_a_chademo_link_on_simulated_lines() -> None:
    """config/example.yaml: CHAdeMO on udp_multicast, lines in ./demo-out/lines."""
    vehicle = load_config(EXAMPLE).vehicle
    assert vehicle.lines is not None
    assert (vehicle.lines.kind, vehicle.lines.path) == ("simulated", "./demo-out/lines")
    link = build_vehicle_link(vehicle)
    assert isinstance(link, CanVehicleLink)
    assert isinstance(link.session, ChademoSession)
    assert isinstance(link._lines, SharedFileLines)
    assert link.config.interface == "udp_multicast"
    assert link.config.bitrate == 500_000


def test_gpio_lines_are_built_from_the_config() -> None:
    """kind gpio gives GpioLines on the chip with the offsets and active-low lines given."""
    link = build_vehicle_link(vehicle_config(GPIO_CHADEMO).vehicle)
    lines = link._lines
    assert isinstance(lines, GpioLines)
    assert repr(lines) == (
        "GpioLines(/dev/gpiochip0: plugged=4(active-low), k=5(active-low), insulation_ok=24, "
        "d1=17, d2=18, contactors=22, lock=23; closed)"
    )


def test_charger_ratings_reach_both_sessions() -> None:
    """The charger section becomes CHAdeMO 0x108/0x208 values and GB/T CML/CRM values."""
    text = (
        "vehicle:\n  protocol: gbt27930\n  charger:\n    max_output_voltage_v: 750\n"
        "    min_output_voltage_v: 200\n    max_output_current_a: 300\n"
        "    discharge_offered: true\n    max_discharge_current_a: 100\n"
        "    region_code: 'BJ1'\n"
    )
    ratings = vehicle_config(text).vehicle.charger
    gbt = gbt_charger(ratings)
    assert (gbt.max_output_voltage_v, gbt.min_output_voltage_v) == (750.0, 200.0)
    assert (gbt.max_output_current_a, gbt.region_code, gbt.discharge_offered) == (
        300.0,
        "BJ1",
        True,
    )
    chademo = chademo_charger(ratings)
    assert (chademo.available_output_voltage_v, chademo.threshold_voltage_v) == (750, 750)
    assert (chademo.available_input_voltage_v, chademo.lower_threshold_voltage_v) == (200, 200)
    assert (chademo.available_input_current_a, chademo.discharge_offered) == (100, True)
    link = build_vehicle_link(vehicle_config(text).vehicle)
    assert isinstance(link.session, GbtSession)
    assert link.session.config == gbt


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        (
            GPIO_CHADEMO.replace("d2: 18", "d2: 17"),
            "vehicle.lines.offsets",
            "expected each line on its own offset, found d1 and d2 both at 17",
        ),
        (
            GPIO_CHADEMO.replace("k: 5, ", "").replace("[plugged, k]", "[plugged]"),
            "vehicle",
            "protocol is 'chademo': expected lines.offsets for plugged, k, insulation_ok, d1, d2, "
            "contactors, found none for k",
        ),
        (
            GPIO_CHADEMO.replace("    chip: /dev/gpiochip0\n", ""),
            "vehicle.lines",
            "kind is 'gpio': expected chip (e.g. /dev/gpiochip0), found none",
        ),
        (
            GPIO_CHADEMO.replace("[plugged, k]", "[plugged, relay]"),
            "vehicle.lines.active_low.1",
            "expected 'plugged', 'k', 'emergency_stop', 'fault_reset', 'insulation_ok', 'd1', "
            "'d2', 'contactors' or 'lock'; found 'relay'",
        ),
        (
            "vehicle: {protocol: chademo, lines: {kind: simulated}}\n",
            "vehicle.lines",
            "kind is 'simulated': expected path, found none",
        ),
        (
            "vehicle: {protocol: chademo, charger: {max_output_current_a: 300}}\n",
            "vehicle",
            "protocol is 'chademo': expected charger.max_output_current_a at most 255 "
            "(one byte in 0x108/0x208), found 300",
        ),
        (
            "vehicle: {protocol: chademo, charger: {discharge_offered: true}}\n",
            "vehicle.charger",
            "discharge_offered is true: expected max_discharge_current_a above 0, found 0",
        ),
        (
            "vehicle: {protocol: gbt27930, charger: {min_output_voltage_v: 600}}\n",
            "vehicle.charger",
            "expected min_output_voltage_v below max_output_voltage_v, found 600 and 500",
        ),
        (
            "vehicle: {protocol: dbc, can: {bitrate_bps: 500000}}\n",
            "vehicle",
            "protocol is 'dbc': expected profile (a BMS profile), found none",
        ),
        (
            "vehicle: {protocol: dbc, profile: p.yaml}\n",
            "vehicle",
            "protocol is 'dbc': expected can.bitrate_bps (the BMS bus speed), found none",
        ),
        (
            "vehicle: {protocol: chademo, profile: p.yaml}\n",
            "vehicle",
            "protocol is 'chademo': expected no profile, found 'p.yaml' (set protocol: dbc to "
            "use it)",
        ),
    ],
)
def test_vehicle_mistakes_say_what_was_expected_and_found(
    text: str, path: str, message: str
) -> None:
    """Each wrong vehicle setting is one located problem with what was expected and found."""
    found = problems(text)
    assert [(p, m) for _, p, m in found] == [(path.replace(".1", "[1]"), message)]
    line = found[0][0]
    assert line is not None
    assert line >= 4  # located in the vehicle section


def test_dbc_protocol_builds_the_profile_session() -> None:
    """protocol dbc with the example pack's profile gives a DbcProfileSession at its bitrate."""
    text = (
        f"vehicle:\n  protocol: dbc\n  profile: {PROFILE}\n"
        "  can: {interface: virtual, channel: pack, bitrate_bps: 500000}\n"
    )
    link = build_vehicle_link(vehicle_config(text).vehicle)
    assert isinstance(link.session, DbcProfileSession)
    assert link.config.bitrate == 500_000
    assert isinstance(link._lines, UnwiredLines)


def test_unbuildable_vehicle_link_leaves_the_daemon_at_zero(tmp_path: Path) -> None:
    """DBC files not found or a wrong profile: the vehicle is unavailable with the reason."""
    missing = vehicle_config(f"vehicle: {{protocol: chademo, dbc_dir: {tmp_path}}}\n")
    link = app._build_vehicle(missing)
    assert isinstance(link, UnavailableLink)
    assert str(tmp_path / "chademo.dbc") in link.reason
    bad_profile = tmp_path / "bad.yaml"
    bad_profile.write_text("dbc_file: nowhere.dbc\nmessages: {}\n")
    text = f"vehicle: {{protocol: dbc, profile: {bad_profile}, can: {{bitrate_bps: 250000}}}}\n"
    link = app._build_vehicle(vehicle_config(text))
    assert isinstance(link, UnavailableLink)
    assert f"{bad_profile}:2: messages:" in link.reason


def test_app_builds_the_can_link() -> None:
    """The daemon's wiring builds the CAN link, not a stand-in, for a valid config."""
    link = app._build_vehicle(vehicle_config("vehicle: {protocol: gbt27930}\n"))
    assert isinstance(link, CanVehicleLink)
    assert link.status is LinkStatus.STARTING


# --- the daemon tells the vehicle what the stage delivers ---------------------------------------


class MeasuredInverter(FakeInverter):
    """An inverter reporting a measured output."""

    def __init__(self, journal: Journal, state: InverterState | None) -> None:
        super().__init__(journal)
        self.state = state

    def snapshot(self) -> InverterState | None:
        return self.state


class PackVehicle(FakeVehicle):
    """A vehicle reporting its pack voltage."""

    def __init__(self, journal: Journal, pack_voltage_v: float | None) -> None:
        super().__init__(journal)
        self.state = VehicleState(
            observed_at_s=0.0,
            phase=VehiclePhase.ENERGY_TRANSFER,
            protocol="chademo",
            pack_voltage_v=pack_voltage_v,
        )
        self.outputs: list[tuple[float, float]] = []

    def snapshot(self) -> VehicleState | None:
        return self.state

    def update_output(self, voltage_v: float, current_a: float) -> None:
        self.outputs.append((voltage_v, current_a))


NAN = math.nan


@pytest.mark.parametrize(
    ("inverter", "pack_voltage_v", "expected"),
    [
        (InverterState(0.0, True, measured_power_w=-8000.0, dc_voltage_v=400.0), 380.0, (400, -20)),
        # The vehicle's own figure is never echoed back: CHAdeMO's is our measurement.
        (InverterState(0.0, True, measured_power_w=7600.0), 380.0, (NAN, NAN)),
        (InverterState(0.0, True, dc_voltage_v=400.0), 380.0, (400, NAN)),
        (InverterState(0.0, False), None, (NAN, NAN)),
        (None, 380.0, (NAN, NAN)),
    ],
    ids=["dc-voltage", "no-dc-voltage", "no-power", "nothing-known", "no-inverter"],
)
def test_daemon_reports_the_measured_output_to_the_vehicle(
    inverter: InverterState | None, pack_voltage_v: float | None, expected: tuple[float, float]
) -> None:
    """Each cycle tells the vehicle the stage's measured voltage and current (power / voltage,
    + charges); what the stage did not measure is NaN, never 0 or the vehicle's figure."""
    journal = Journal()
    vehicle = PackVehicle(journal, pack_voltage_v)
    daemon = Daemon(
        parse_config(BASE + "vehicle: {protocol: chademo}\ncontrol: {tick_s: 0.02}\n"),
        Links(vehicle, MeasuredInverter(journal, inverter), FakeAggregator(journal)),
        FixedStep(),
        Notifier({}),
        handle_signals=False,
    )

    async def scenario() -> None:
        task = asyncio.create_task(daemon.run())
        assert await until(lambda: len(vehicle.outputs) >= 3)
        daemon.request_stop()
        await task

    asyncio.run(scenario())
    assert vehicle.outputs[-1] == pytest.approx(expected, nan_ok=True)
    assert vehicle.allowed  # update_output comes with every allow_energy_transfer
