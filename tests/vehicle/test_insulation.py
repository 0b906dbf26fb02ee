"""The insulation test and insulation monitoring (issue 17, item 1): a session moves energy only
after the insulation monitor's OK was measured during the test, and fails with the reason
otherwise (IEC 61851-23; GB/T 18487.1 B.3.2)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.config import parse_config
from controller.core.snapshots import VehiclePhase
from controller.errors import ConfigError
from controller.vehicle.chademo import ChademoChargerConfig, ChademoSession, ChademoState
from controller.vehicle.frames import LineInputs, LineOutputs
from controller.vehicle.gbt27930 import GbtChargerConfig, GbtSession, GbtState
from controller.vehicle.lines import GpioLines, SharedFileLines
from controller.vehicle.session import insulation_test_result
from hil.insulation import InsulationMonitor
from hil.vehicle import BatteryModel, ChademoVehicle, GbtVehicle, SimulatedLines
from hil.vehicle.chademo_ev import ChademoVehicleConfig
from hil.vehicle.gbt_ev import GbtVehicleConfig

from . import fake_gpiod
from .harness import Bench
from .test_chademo_session import ChademoBench
from .test_gbt_session import ConnectorBench

CHADEMO = ChademoChargerConfig(
    insulation_test_s=0.5, insulation_timeout_s=3.0, discharge_offered=True
)
GBT = GbtChargerConfig(insulation_test_s=0.5, insulation_timeout_s=3.0)


def chademo_bench(*, insulation_ok: bool, mode: str = "charge") -> Bench:
    lines = SimulatedLines(plugged=True, insulation_ok=insulation_ok)
    vehicle = ChademoVehicle(
        BatteryModel(soc_pct=50.0), config=ChademoVehicleConfig(mode=mode), lines=lines
    )
    session = ChademoSession(CHADEMO)
    session.allow_energy_transfer(True)
    return ChademoBench(session, vehicle, lines, direction=1 if mode == "charge" else -1)


def gbt_bench(*, insulation_ok: bool) -> Bench:
    lines = SimulatedLines(plugged=True, insulation_ok=insulation_ok)
    vehicle = GbtVehicle(BatteryModel(soc_pct=50.0), config=GbtVehicleConfig(), lines=lines)
    session = GbtSession(GBT)
    session.allow_energy_transfer(True)
    return ConnectorBench(session, vehicle, lines)


def time_in_test(b: Bench, testing: Callable[[], bool]) -> float:
    """Run until the session is in its insulation test, then until it leaves it: how long."""
    b.run(6.0, until=lambda _s: testing())
    started_s = b.now
    b.run(2.0, until=lambda _s: not testing())
    return b.now - started_s


def contactors_ever_closed(b: Bench) -> bool:
    return any(step.outputs.contactors for _, step in b.trace.steps)


def faults(b: Bench) -> list[str]:
    return [reason for reason in b.trace.last.faults if "insulation" in reason]


# --- the verdict -------------------------------------------------------------------------------


def test_ok_must_hold_from_the_tests_start_not_from_before() -> None:
    """An OK asserted long before the test counts only from the test's start."""
    verdict = insulation_test_result(10.0, 0.0, None, 10.4, hold_s=0.5, timeout_s=3.0)
    assert verdict is None
    assert insulation_test_result(10.0, 0.0, None, 10.5, hold_s=0.5, timeout_s=3.0) is True


def test_an_ok_that_rose_late_counts_from_when_it_rose() -> None:
    assert insulation_test_result(10.0, 11.0, 10.6, 11.4, hold_s=0.5, timeout_s=3.0) is not True
    assert insulation_test_result(10.0, 11.0, None, 11.5, hold_s=0.5, timeout_s=3.0) is True


def test_an_ok_that_fell_during_the_test_fails_it_at_once() -> None:
    verdict = insulation_test_result(10.0, None, 10.2, 10.25, hold_s=0.5, timeout_s=3.0)
    assert isinstance(verdict, str)
    assert "insulation fault" in verdict


def test_a_fall_during_the_test_fails_it_even_after_a_new_hold() -> None:
    """Fell at 10.2, rose again at 10.3 and held 0.5 s: the test still failed (judged by a caller
    that looks less often than every tick)."""
    verdict = insulation_test_result(10.0, 10.3, 10.2, 10.8, hold_s=0.5, timeout_s=3.0)
    assert isinstance(verdict, str)
    assert "insulation fault" in verdict


def test_no_ok_within_the_timeout_fails_with_the_reason() -> None:
    assert insulation_test_result(10.0, None, None, 12.9, hold_s=0.5, timeout_s=3.0) is None
    verdict = insulation_test_result(10.0, None, None, 13.0, hold_s=0.5, timeout_s=3.0)
    assert isinstance(verdict, str)
    assert "did not report OK for 0.5 s within 3 s" in verdict


@given(
    rose_s=st.one_of(st.none(), st.floats(0, 20)),
    fell_s=st.one_of(st.none(), st.floats(0, 20)),
    now_s=st.floats(10, 30),
)
def test_a_pass_always_rests_on_a_hold_inside_the_test(
    rose_s: float | None, fell_s: float | None, now_s: float
) -> None:
    """Whatever the history, True means OK held for hold_s within [start, now]."""
    if rose_s is not None and rose_s > now_s:
        return
    verdict = insulation_test_result(10.0, rose_s, fell_s, now_s, hold_s=0.5, timeout_s=3.0)
    if verdict is True:
        assert rose_s is not None
        assert now_s - max(rose_s, 10.0) >= 0.5
        assert fell_s is None or fell_s < 10.0  # no fall during the test


# --- CHAdeMO -----------------------------------------------------------------------------------


def test_chademo_passes_only_after_the_monitor_reports_ok() -> None:
    """With the OK held, d2 and the contactors come on insulation_test_s into the test."""
    b = chademo_bench(insulation_ok=True)
    session = b.session
    assert isinstance(session, ChademoSession)
    in_test_s = time_in_test(b, lambda: session.state is ChademoState.INSULATION_TEST)
    assert session.state is ChademoState.WAIT_VEHICLE_CONTACTOR
    assert in_test_s == pytest.approx(CHADEMO.insulation_test_s, abs=0.015)
    b.run(6.0, until=lambda s: s.phase is VehiclePhase.ENERGY_TRANSFER)
    assert b.trace.last.phase is VehiclePhase.ENERGY_TRANSFER
    assert not faults(b)


def test_chademo_without_the_monitors_ok_never_energises_and_says_why() -> None:
    """No OK (IMD alarm, not wired): the session fails at the timeout, d2 and K never on."""
    b = chademo_bench(insulation_ok=False)
    b.run(8.0)
    assert isinstance(b.session, ChademoSession)
    assert b.trace.last.phase in (VehiclePhase.FAULT, VehiclePhase.ENDED)
    assert faults(b) == [
        "CHAdeMO: insulation test failed: the insulation monitor did not report OK for 0.5 s "
        "within 3 s (IMD alarm, not measuring, or its OK line not wired)"
    ]
    assert not contactors_ever_closed(b)
    assert not any(step.outputs.d2 for _, step in b.trace.steps)
    assert not b.trace.last.charge_permitted


def test_chademo_alarm_during_the_test_fails_it_at_once() -> None:
    b = chademo_bench(insulation_ok=True)
    session = b.session
    assert isinstance(session, ChademoSession)
    b.run(6.0, until=lambda _s: session.state is ChademoState.INSULATION_TEST)
    b.lines.insulation_ok = False
    b.run(0.05)
    assert faults(b)
    assert "reported an insulation fault" in faults(b)[0]
    b.run(2.0)
    assert not contactors_ever_closed(b)


@pytest.mark.parametrize("mode", ["charge", "discharge"])
def test_chademo_alarm_during_transfer_stops_with_a_fault(mode: str) -> None:
    """IEC 61851-23 insulation monitoring: the OK falling while energy flows is a fault stop;
    the contactors open once the current is down, never under load."""
    b = chademo_bench(insulation_ok=True, mode=mode)
    b.run(6.0, until=lambda s: s.phase is VehiclePhase.ENERGY_TRANSFER)
    b.run(0.5)
    assert abs(b._stage_current_a()) > 5.0  # energy flows when the alarm comes
    b.lines.insulation_ok = False
    b.run(0.05)
    assert faults(b) == [
        "CHAdeMO: insulation monitor alarm: insulation fault on the DC output (OK input released)"
    ]
    assert not b.trace.last.charge_permitted
    assert not b.trace.last.discharge_permitted
    while b.lines.outputs.contactors and b.now < 20.0:
        b.run(0.01)
    assert not b.lines.outputs.contactors
    assert abs(b._stage_current_a()) <= 5.0


def test_chademo_alarm_is_not_inferred_from_unread_lines() -> None:
    """Lines that cannot be read tick the session with every input off: that is an unplugged
    connector (its own fault), not an insulation fault."""
    b = chademo_bench(insulation_ok=True)
    b.run(6.0, until=lambda s: s.phase is VehiclePhase.ENERGY_TRANSFER)
    step = b.session.tick(b.now + 0.01, LineInputs())
    assert "connector unplugged during the session" in step.state.faults
    assert not any("insulation" in reason for reason in step.state.faults)


def test_chademo_blames_the_20_s_limit_not_the_monitor_when_time_runs_out() -> None:
    """Energy transfer allowed 19.95 s after d1: the test cannot hold 0.5 s before d2 is due; the
    fault names the d1-d2 limit, never an IMD that reported OK throughout."""
    lines = SimulatedLines(plugged=True, insulation_ok=True)
    vehicle = ChademoVehicle(BatteryModel(soc_pct=50.0), config=ChademoVehicleConfig(), lines=lines)
    session = ChademoSession(CHADEMO)
    b = ChademoBench(session, vehicle, lines)
    b.run(19.95)
    assert session.state is ChademoState.WAIT_PERMISSION
    session.allow_energy_transfer(True)
    b.run(1.0)
    assert b.trace.last.faults == (
        "CHAdeMO: d2 not on within 20 s of d1 (insulation test not passed)",
    )


# --- GB/T 27930 --------------------------------------------------------------------------------


def test_gbt_recognition_starts_only_after_the_monitor_reports_ok() -> None:
    b = gbt_bench(insulation_ok=True)
    session = b.session
    assert isinstance(session, GbtSession)
    in_test_s = time_in_test(b, lambda: session.state is GbtState.INSULATION_TEST)
    assert session.state is GbtState.RECOGNITION
    assert in_test_s == pytest.approx(GBT.insulation_test_s, abs=0.015)
    b.run(8.0, until=lambda s: s.phase is VehiclePhase.ENERGY_TRANSFER)
    assert b.trace.last.phase is VehiclePhase.ENERGY_TRANSFER


def test_gbt_without_the_monitors_ok_never_sends_crm_or_closes_k1_k2() -> None:
    b = gbt_bench(insulation_ok=False)
    b.run(6.0)
    assert faults(b) == [
        "GB/T: insulation test failed: the insulation monitor did not report OK for 0.5 s "
        "within 3 s (IMD alarm, not measuring, or its OK line not wired)"
    ]
    assert not contactors_ever_closed(b)
    assert not b.trace.frames(0x1801F456)  # CRM never sent
    assert isinstance(b.session, GbtSession)
    assert b.session.state is not GbtState.RECOGNITION


def test_gbt_monitor_is_not_watched_after_the_test() -> None:
    """GB/T 18487.1 B.3.2 separates the IMD from the DC circuit after the check; during charging
    the BMS reports insulation (BSM), so the charger's OK line falling does not stop it."""
    b = gbt_bench(insulation_ok=True)
    b.run(8.0, until=lambda s: s.phase is VehiclePhase.ENERGY_TRANSFER)
    b.lines.insulation_ok = False
    b.run(1.0)
    assert b.trace.last.phase is VehiclePhase.ENERGY_TRANSFER
    assert not faults(b)


# --- the line on the board ----------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_shared_file_carries_the_insulation_ok_in_byte_20(tmp_path: Path) -> None:
    path = tmp_path / "lines"
    charger = SharedFileLines(path, side="charger")
    site = SharedFileLines(path, side="vehicle")
    charger.open()
    site.open()
    try:
        assert charger.read().insulation_ok is False  # nothing wrote it: not OK (fail-safe)
        site.insulation_ok = True
        assert charger.read() == LineInputs(insulation_ok=True)
        assert path.read_bytes()[20] == 1
        site.close()
        assert charger.read().insulation_ok is False  # the site let go: not OK
    finally:
        charger.close()


@pytest.mark.timeout(10)
def test_gpio_reads_the_imd_relay_on_its_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay's contact on its offset: closed (high) reads OK, open reads not OK."""
    chip = fake_gpiod.FakeChip("/dev/gpiochip0")
    monkeypatch.setitem(sys.modules, "gpiod", fake_gpiod.make_module(chip))
    lines = GpioLines("/dev/gpiochip0", {"plugged": 4, "insulation_ok": 24, "d1": 17})
    lines.open()
    try:
        chip.levels[24] = False
        assert lines.read().insulation_ok is False
        chip.levels[24] = True
        assert lines.read() == LineInputs(insulation_ok=True)
    finally:
        lines.close()


# --- the config --------------------------------------------------------------------------------

BASE = """\
site: {site_id: s1, charger_id: c1}
inverter: {transport: tcp, tcp: {host: 192.0.2.10}}
aggregator: {enabled: false}
"""


@pytest.mark.parametrize("protocol", ["chademo", "gbt27930"])
def test_a_dc_charger_without_the_imd_line_is_refused(protocol: str) -> None:
    text = BASE + (
        f"vehicle:\n  protocol: {protocol}\n  lines:\n    kind: gpio\n"
        "    chip: /dev/gpiochip0\n"
        "    offsets: {plugged: 4, k: 5, d1: 17, d2: 18, contactors: 22}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert "found none for insulation_ok" in str(info.value)


def test_the_hold_must_fit_in_the_timeout() -> None:
    text = BASE + (
        "vehicle:\n  protocol: chademo\n"
        "  charger: {insulation_test_s: 5, insulation_timeout_s: 4}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert "expected insulation_test_s below insulation_timeout_s, found 5 and 4" in str(info.value)


# --- the simulated IMD -------------------------------------------------------------------------


def test_simulated_imd_relay_is_released_at_power_on_and_follows_after_its_response() -> None:
    imd = InsulationMonitor(max_voltage_v=500.0, response_s=0.5)
    assert imd.alarm_ohm == 50_000.0  # 100 ohm/V of 500 V
    assert imd.ok(0.0) is False
    assert imd.ok(0.49) is False
    assert imd.ok(0.5) is True
    imd.resistance_ohm = 50_000.0  # at the limit is a fault
    assert imd.ok(1.0) is True  # not yet: the response time
    assert imd.ok(1.5) is False
    imd.resistance_ohm = 80_000.0
    assert imd.ok(1.6) is False
    assert imd.ok(2.1) is True


def test_line_outputs_are_untouched_by_the_insulation_input() -> None:
    """The OK is an input only: no output follows it."""
    assert "insulation_ok" not in LineOutputs.__dataclass_fields__
