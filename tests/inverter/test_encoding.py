"""What a command puts in the registers: never more than asked, nor past the core's cap
(issue 16, item 9), and model 124's rates pinned on the command from both edges of their window,
each of its own base (item 10)."""

from __future__ import annotations

import asyncio

import pytest

from controller.config import RegisterMap, load_register_map
from controller.errors import ProtocolError
from controller.inverter.codec import RegType, WordOrder, decode, encode
from controller.inverter.drivers import SunSpecDriver
from controller.inverter.regmap import MAP_TYPES, RegisterMapDriver
from hil.inverter.profiles import SunSpec100Profile, SunSpec700Profile
from hil.inverter.stage import PowerStage, StageRatings
from tests.inverter.memory_device import MemoryTransport
from tests.inverter.test_regmap import SHIPPED


def _device(profile: SunSpec700Profile | SunSpec100Profile) -> MemoryTransport:
    transport = MemoryTransport()
    transport.load(profile.start_address, profile.registers)
    return transport


def _raw(transport: MemoryTransport, address: int, reg_type: RegType) -> int:
    words = 2 if reg_type in (RegType.I32, RegType.U32) else 1
    value = decode([transport.registers[address + i] for i in range(words)], reg_type)
    assert isinstance(value, int)
    return value


# -- 704 WSet ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("power_w", "wset_sf", "wset_raw"),
    [
        (7450.0, 2, -74),  # charging 7400 W (SunSpec + = export), not 7500 W
        (-7450.0, 2, 74),  # discharging 7400 W, not 7500 W
        (7500.0, 3, -7),  # 7000 W, not 8000 W
        (-2999.6, 0, 2999),
    ],
)
def test_wset_rounds_toward_zero(power_w: float, wset_sf: int, wset_raw: int) -> None:
    """704 WSet holds at most the command's magnitude: 7450 W at WSet_SF 2 is 7400 W."""
    profile = SunSpec700Profile(PowerStage())
    profile.image.set_raw(704, "WSet_SF", wset_sf)
    transport = _device(profile)

    async def scenario() -> None:
        driver = SunSpecDriver(transport, revert_timeout_s=3)
        await driver.setup()
        await driver.command(power_w, enable=True)

    asyncio.run(scenario())
    assert _raw(transport, profile.image.address(704, "WSet"), RegType.I32) == wset_raw


# -- 124 InWRte / OutWRte ------------------------------------------------------------------------


def storage(
    charge_base_w: int,
    base_sf: int,
    rate_sf: int,
    *,
    nameplate_discharge_w: int | None = None,
) -> tuple[SunSpec100Profile, MemoryTransport]:
    """A 124 device with WChaMax = charge_base_w x 10^-base_sf at WChaMax_SF base_sf, and the
    nameplate's MaxDisChaRte (WDisChaMax) where given."""
    profile = SunSpec100Profile(PowerStage())
    image = profile.image
    image.set_raw(124, "WChaMax_SF", base_sf)
    image.set_raw(124, "WChaMax", charge_base_w)
    image.set_raw(124, "InOutWRte_SF", rate_sf)
    if nameplate_discharge_w is not None:
        image.set_raw(120, "MaxDisChaRte", nameplate_discharge_w)
    else:
        image.registers[image.address(120, "MaxDisChaRte") - image.base] = 0xFFFF  # absent
    return profile, _device(profile)


def rates(
    profile: SunSpec100Profile, transport: MemoryTransport, power_w: float
) -> tuple[int, int]:
    """(InWRte, OutWRte) raw, after setup and the command."""

    async def scenario() -> None:
        driver = SunSpecDriver(transport, revert_timeout_s=3)
        await driver.setup()
        await driver.command(power_w, enable=True)

    asyncio.run(scenario())
    image = profile.image
    return (
        _raw(transport, image.address(124, "InWRte"), RegType.I16),
        _raw(transport, image.address(124, "OutWRte"), RegType.I16),
    )


def test_storage_rate_never_exceeds_the_cap() -> None:
    """A 5000 W cap with WChaMax 9000 W at SF 0 is 55 % (4950 W), never 56 % (5040 W)."""
    profile, transport = storage(9000, 0, 0)
    charge, discharge = rates(profile, transport, 5000.0)
    assert charge == 55
    assert charge / 100 * 9000 <= 5000
    assert discharge == -55  # the window's lower edge: at least 4950 W of charge


def test_storage_rate_at_a_tenth_of_a_percent() -> None:
    """7400 W with WChaMax 11 kW at InOutWRte_SF -1 is 67.2 % (7392 W), not 67.3 % (7403 W)."""
    profile, transport = storage(1100, 1, -1)
    charge, discharge = rates(profile, transport, 7400.0)
    assert charge == 672
    assert discharge == -672


def test_discharge_rate_is_a_percentage_of_wdischamax() -> None:
    """OutWRte is % of WDisChaMax (the nameplate's MaxDisChaRte), InWRte % of WChaMax: 3000 W
    of discharge with WChaMax 9000 W and MaxDisChaRte 6000 W is OutWRte 50 %, and the charge
    limit -33.3 % pins the window's other edge at (no more than) -3000 W."""
    profile, transport = storage(9000, 0, -1, nameplate_discharge_w=6000)
    charge, discharge = rates(profile, transport, -3000.0)
    assert discharge == 500
    assert charge == -333
    profile, transport = storage(9000, 0, -1, nameplate_discharge_w=6000)
    charge, discharge = rates(profile, transport, 3000.0)
    assert charge == 333
    assert discharge == -500


def test_without_a_nameplate_the_discharge_base_is_wchamax() -> None:
    """No 120 MaxDisChaRte: WChaMax is the only base 124 carries, for both rates."""
    profile, transport = storage(8000, 0, -1)
    charge, discharge = rates(profile, transport, -2000.0)
    assert (charge, discharge) == (-250, 250)


@pytest.mark.parametrize(("power_w", "what"), [(9001.0, "WChaMax 9000 W"), (-6001.0, "6000 W")])
def test_beyond_the_direction_s_base_is_refused(power_w: float, what: str) -> None:
    """More than 100 % of the direction's base is refused with a reason, nothing written."""
    _, transport = storage(9000, 0, 0, nameplate_discharge_w=6000)

    async def scenario() -> None:
        driver = SunSpecDriver(transport, revert_timeout_s=3)
        await driver.setup()
        written = len(transport.writes)
        with pytest.raises(ProtocolError, match=f"{abs(power_w):.0f} W exceeds .*{what}"):
            await driver.command(power_w, enable=True)
        assert len(transport.writes) == written

    asyncio.run(scenario())


# -- a register map's setpoint -------------------------------------------------------------------


def test_map_setpoint_rounds_toward_zero() -> None:
    """A map setpoint with scale 10 W: 7450 W is 745, 7455 W is 745 too (not 746)."""
    register_map = load_register_map(SHIPPED)
    registers = dict(register_map.registers)
    setpoint = register_map.roles.setpoint.register_name
    registers[setpoint] = registers[setpoint].model_copy(update={"scale": 10.0})
    scaled_map = register_map.model_copy(update={"registers": registers})
    transport = map_device(scaled_map)
    address = registers[setpoint].address

    async def scenario(power_w: float) -> int:
        driver = RegisterMapDriver(transport, scaled_map, 3)
        await driver.setup()
        await driver.command(power_w, enable=True)
        value = decode(
            [transport.registers[address], transport.registers[address + 1]],
            MAP_TYPES[registers[setpoint].type],
        )
        assert isinstance(value, int)
        return value

    assert asyncio.run(scenario(7455.0)) == 745
    assert asyncio.run(scenario(-7459.0)) == -745


def map_device(register_map: RegisterMap) -> MemoryTransport:
    """Every mapped register (and the gaps between them) present and 0, ratings at 7.4 kW."""
    transport = MemoryTransport()
    for register in register_map.registers.values():
        transport.load(register.address - 8, [0] * (register.words + 16))
    for name in (register_map.roles.max_charge_power, register_map.roles.max_discharge_power):
        if name is not None:
            register = register_map.registers[name]
            raw = round(7400 / register.scale)
            transport.load(
                register.address,
                encode(raw, MAP_TYPES[register.type], WordOrder(register_map.word_order)),
            )
    return transport


def test_simulated_storage_bases_are_its_ratings() -> None:
    """The simulator's 124 WChaMax is its charge rating, 120 MaxDisChaRte its discharge one."""
    profile = SunSpec100Profile(PowerStage(StageRatings(max_charge_w=9000, max_discharge_w=6000)))
    assert profile.image.get_value(124, "WChaMax") == 9000
    assert profile.image.get_value(120, "MaxDisChaRte") == 6000
