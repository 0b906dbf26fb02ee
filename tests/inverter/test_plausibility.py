"""Readings outside their physical band never reach InverterState: they become unknown (None),
are logged once per point, and so cannot feed the wear count or the ledger (issue 16, item 12)."""

from __future__ import annotations

import asyncio
import math

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.rules import TEMPERATURE_RANGE_C
from controller.core.snapshots import InverterState
from controller.inverter.drivers import (
    MAX_POWER_W,
    RATING_MARGIN,
    TEMPERATURE_BAND_C,
    TEMPERATURE_IMPLAUSIBLE,
    PlausibilityScreen,
    SunSpecDriver,
)
from controller.inverter.regmap import RegisterMapDriver
from hil.inverter.profiles import SunSpec100Profile, SunSpec700Profile
from hil.inverter.stage import PowerStage
from tests.inverter.memory_device import MemoryTransport
from tests.inverter.test_regmap import F32_MAP, HEALTHY_F32, f32_device

LOG_EVENT = "implausible inverter reading taken as unknown"


def state(
    *,
    measured_power_w: float | None = None,
    dc_voltage_v: float | None = None,
    max_charge_power_w: float | None = None,
    max_discharge_power_w: float | None = None,
    temperature_c: float | None = None,
    energy_charged_wh: float | None = None,
    energy_discharged_wh: float | None = None,
) -> InverterState:
    """A healthy state with these readings."""
    return InverterState(
        observed_at_s=0.0,
        reachable=True,
        enabled=True,
        measured_power_w=measured_power_w,
        dc_voltage_v=dc_voltage_v,
        max_charge_power_w=max_charge_power_w,
        max_discharge_power_w=max_discharge_power_w,
        temperature_c=temperature_c,
        energy_charged_wh=energy_charged_wh,
        energy_discharged_wh=energy_discharged_wh,
    )


# -- the screen ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("temperature_c", "kept"),
    [
        (-4.6e11, False),  # seen in the field: TmpCab -32767 at Tmp_SF 7
        (-60.1, False),
        (150.1, False),
        (math.nan, False),
        (math.inf, False),
        (-60.0, True),
        (-45.0, True),
        (35.0, True),
        (150.0, True),
    ],
)
def test_temperature_band(temperature_c: float, kept: bool) -> None:
    """An inverter temperature outside -60..150 C (or not a number) is unknown, and a fault:
    the core allows nothing at an implausible temperature, but full power at an unknown one."""
    screened = PlausibilityScreen().screen(state(temperature_c=temperature_c))
    assert screened.temperature_c == (temperature_c if kept else None)
    assert screened.faults == (() if kept else (TEMPERATURE_IMPLAUSIBLE,))


def test_temperature_band_is_the_cores() -> None:
    """The link's band is the core's physical range, so no reading the core would judge
    implausible (0 W) reaches it as unknown (full power) without a fault."""
    assert TEMPERATURE_BAND_C == TEMPERATURE_RANGE_C


@pytest.mark.parametrize(
    ("power_w", "kept"),
    [
        (-12e6, False),  # 12 MW measured on a 7.4 kW inverter
        (7400 * RATING_MARGIN + 1, False),
        (-7400 * RATING_MARGIN - 1, False),
        (7400 * RATING_MARGIN, True),
        (-8000.0, True),
        (0.0, True),
        (math.nan, False),
        (-math.inf, False),
    ],
)
def test_power_band_is_the_rating_with_a_margin(power_w: float, kept: bool) -> None:
    """Measured |power| above 1.2 x the rating is unknown."""
    screen = PlausibilityScreen()
    screened = screen.screen(
        state(measured_power_w=power_w, max_charge_power_w=7400.0, max_discharge_power_w=7400.0)
    )
    assert screened.measured_power_w == (power_w if kept else None)


def test_power_band_follows_the_direction() -> None:
    """Charging is judged against the charge rating, discharging against the discharge one."""
    screen = PlausibilityScreen()
    ratings = {"max_charge_power_w": 3000.0, "max_discharge_power_w": 7400.0}
    assert screen.screen(state(measured_power_w=3700.0, **ratings)).measured_power_w is None
    assert screen.screen(state(measured_power_w=-3700.0, **ratings)).measured_power_w == -3700.0


def test_power_band_without_a_rating() -> None:
    """With no rating from the device, the configured rating is the band; with none at all,
    nothing above MAX_POWER_W (400 kW) is a measurement."""
    assert PlausibilityScreen().screen(state(measured_power_w=-12e6)).measured_power_w is None
    assert PlausibilityScreen().screen(state(measured_power_w=-3e5)).measured_power_w == -3e5
    configured = PlausibilityScreen(rated_power_w=5000.0)
    assert configured.screen(state(measured_power_w=7000.0)).measured_power_w is None
    assert configured.screen(state(measured_power_w=5500.0)).measured_power_w == 5500.0


@pytest.mark.parametrize("energy_wh", [-1.0, -4.6e11, math.nan, math.inf])
def test_energy_counters_are_never_negative(energy_wh: float) -> None:
    """A lifetime energy counter below 0 (or not a number) is unknown."""
    screened = PlausibilityScreen().screen(
        state(energy_charged_wh=energy_wh, energy_discharged_wh=energy_wh)
    )
    assert (screened.energy_charged_wh, screened.energy_discharged_wh) == (None, None)
    kept = PlausibilityScreen().screen(state(energy_charged_wh=0.0, energy_discharged_wh=1e9))
    assert (kept.energy_charged_wh, kept.energy_discharged_wh) == (0.0, 1e9)


@pytest.mark.parametrize("rating_w", [0.0, -7400.0, 12e6, math.nan, math.inf])
def test_ratings_pass_unchanged(rating_w: float) -> None:
    """Ratings are not measurements: they reach the core unchanged (which reads a rating that is
    not a finite number >= 0 as "permits nothing"); one that is not a finite number above 0
    bounds no measurement, MAX_POWER_W does."""
    screened = PlausibilityScreen().screen(
        state(max_charge_power_w=rating_w, max_discharge_power_w=rating_w, measured_power_w=9e3)
    )
    for rating in (screened.max_charge_power_w, screened.max_discharge_power_w):
        assert rating == rating_w or (math.isnan(rating_w) and rating is not None)
    assert screened.measured_power_w == 9e3


def test_faults_and_enable_are_kept() -> None:
    """The screen touches measured values only: faults, reachability and enable pass."""
    original = InverterState(
        observed_at_s=5.0, reachable=True, enabled=True, faults=("x",), measured_power_w=-12e6
    )
    screened = PlausibilityScreen().screen(original)
    assert (screened.faults, screened.enabled, screened.observed_at_s) == (("x",), True, 5.0)
    assert screened.measured_power_w is None


def test_each_point_is_logged_once() -> None:
    """Ten polls of the same garbage log one line per point, not one per poll."""
    screen = PlausibilityScreen()
    garbage = state(temperature_c=-4.6e11, measured_power_w=-12e6, max_discharge_power_w=7400.0)
    with structlog.testing.capture_logs() as logs:
        for _ in range(10):
            screen.screen(garbage)
    assert sorted(e["point"] for e in logs if e["event"] == LOG_EVENT) == [
        "measured_power_w",
        "temperature_c",
    ]
    assert screen.rejected == {"temperature_c": 10, "measured_power_w": 10}


READING = st.one_of(st.none(), st.floats(), st.floats(-1e4, 1e4))


@settings(max_examples=300)
@given(
    st.fixed_dictionaries(
        dict.fromkeys(
            [
                "measured_power_w",
                "dc_voltage_v",
                "max_charge_power_w",
                "max_discharge_power_w",
                "temperature_c",
                "energy_charged_wh",
                "energy_discharged_wh",
            ],
            READING,
        )
    )
)
def test_screened_state_is_always_inside_its_bands(values: dict[str, float | None]) -> None:
    """Whatever the readings, every screened measured value is finite and inside its band,
    ratings pass unchanged, and a temperature set aside is a fault."""
    raw = state(**values)
    screened = PlausibilityScreen().screen(raw)
    for name in ("measured_power_w", "dc_voltage_v", "temperature_c"):
        value = getattr(screened, name)
        assert value is None or math.isfinite(value)
    for name in ("energy_charged_wh", "energy_discharged_wh", "dc_voltage_v"):
        value = getattr(screened, name)
        assert value is None or value >= 0
    if screened.temperature_c is not None:
        assert TEMPERATURE_BAND_C[0] <= screened.temperature_c <= TEMPERATURE_BAND_C[1]
    assert (TEMPERATURE_IMPLAUSIBLE in screened.faults) == (
        raw.temperature_c is not None and screened.temperature_c is None
    )
    if screened.measured_power_w is not None:
        ratings = [
            r
            for r in (raw.max_charge_power_w, raw.max_discharge_power_w)
            if r is not None and math.isfinite(r) and r > 0
        ]
        limit_w = min(MAX_POWER_W, max(ratings) * RATING_MARGIN) if ratings else MAX_POWER_W
        assert abs(screened.measured_power_w) <= limit_w
    assert screened.max_charge_power_w is raw.max_charge_power_w
    assert screened.max_discharge_power_w is raw.max_discharge_power_w


# -- through the drivers ------------------------------------------------------------------------


def _device(profile: SunSpec700Profile | SunSpec100Profile) -> MemoryTransport:
    transport = MemoryTransport()
    transport.load(profile.start_address, profile.registers)
    return transport


def test_sunspec_100_garbage_is_unknown_and_logged_once() -> None:
    """103 TmpCab -32767 at Tmp_SF 7 (-3.3e11 C) and W 12000 at W_SF 3 (12 MW on a 7.4 kW
    inverter) read as unknown; two polls and a second setup log each point once."""
    profile = SunSpec100Profile(PowerStage())
    image = profile.image
    image.set_raw(103, "Tmp_SF", 7)
    image.set_raw(103, "TmpCab", -32767)
    image.set_raw(103, "W_SF", 3)
    image.set_raw(103, "W", -12000)
    driver = SunSpecDriver(_device(profile), revert_timeout_s=10)

    async def polls() -> list[InverterState]:
        await driver.setup()
        first = [await driver.read(0.0), await driver.read(1.0)]
        await driver.setup()  # after a fault the link sets up anew: still logged once
        return [*first, await driver.read(2.0)]

    with structlog.testing.capture_logs() as logs:
        states = asyncio.run(polls())
    for screened in states:
        assert screened.temperature_c is None
        assert screened.faults == (TEMPERATURE_IMPLAUSIBLE,)
        assert screened.measured_power_w is None
        assert screened.max_discharge_power_w == 7400.0
    assert sorted(e["point"] for e in logs if e["event"] == LOG_EVENT) == [
        "measured_power_w",
        "temperature_c",
    ]


def test_sunspec_700_garbage_is_unknown() -> None:
    """701 TmpCab at an absurd Tmp_SF and W beyond the 702 rating read as unknown; a sane
    power next to them is kept."""
    profile = SunSpec700Profile(PowerStage())
    image = profile.image
    image.set_raw(701, "Tmp_SF", 10)
    image.set_raw(701, "TmpCab", -46)
    image.set_raw(701, "W_SF", 3)
    image.set_raw(701, "W", 12000)
    transport = _device(profile)
    driver = SunSpecDriver(transport, revert_timeout_s=10)

    async def poll() -> tuple[InverterState, InverterState]:
        await driver.setup()
        garbage = await driver.read(0.0)
        transport.load(image.address(701, "W"), [3])  # 3 kW export at W_SF 3
        return garbage, await driver.read(1.0)

    garbage, sane = asyncio.run(poll())
    assert garbage.temperature_c is None
    assert garbage.faults == (TEMPERATURE_IMPLAUSIBLE,)
    assert garbage.measured_power_w is None
    assert sane.measured_power_w == -3000.0  # SunSpec + = export = discharging the vehicle


def test_register_map_garbage_is_unknown() -> None:
    """Through a register map: -4.6e11 C, 12 MW against a 7.4 kW rating and a negative energy
    counter read as unknown; the rest of the state is kept."""
    values = HEALTHY_F32 | {
        "temp": -4.6e11,
        "power": 12e6,
        "e_in": -5.0,
        "e_out": 1234.0,
        "rated_in": 7400.0,
        "rated_out": 7400.0,
    }
    screened = asyncio.run(RegisterMapDriver(f32_device(values), F32_MAP, 10).read(0.0))
    assert screened.temperature_c is None
    assert screened.faults == (TEMPERATURE_IMPLAUSIBLE,)
    assert screened.measured_power_w is None
    assert screened.energy_charged_wh is None
    assert screened.energy_discharged_wh == 1234.0
    assert screened.max_charge_power_w == 7400.0
