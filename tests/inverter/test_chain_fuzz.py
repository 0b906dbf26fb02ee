"""Any SunSpec chain, any model length, any legal scale factor, any float: discovery and the
drivers either work or raise the project's own errors, never a ValueError or OverflowError that
the link does not catch (issue 16, items 1 and 4)."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, fields

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from controller.core.snapshots import InverterState
from controller.errors import InverterLinkError, ProtocolError
from controller.inverter.codec import RegType, encode
from controller.inverter.drivers import MAX_POWER_W, TEMPERATURE_BAND_C, SunSpecDriver
from controller.inverter.sunspec import BASE_ADDRESSES, SUNS_MARKER, SunSpecDevice
from controller.inverter.sunspec_models import PointDef, usable_model_def
from controller.inverter.transport import ModbusTransport, SerialEndpoint, TcpEndpoint
from hil.inverter.profiles import SunSpec100Profile, SunSpec700Profile
from hil.inverter.ptypair import PtyPair
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage
from tests.inverter.memory_device import MemoryTransport, model_block, sunspec_device

PROJECT_ERRORS = (InverterLinkError, ProtocolError)
VENDOR_MODEL = 64110
# Communication (1, 11, 12, 16), inverter (101-103), nameplate and controls (120-124), MPPT
# (160), DER (701-704, 713), battery (802) and vendor models, as field devices chain them.
MODEL_POOL = (
    *(1, 11, 12, 16, 101, 102, 103, 120, 121, 122, 123, 124, 160),
    *(701, 702, 703, 704, 713, 802, VENDOR_MODEL, 65000),
)
REQUIRED = {
    "sunspec-700": (1, 701, 702, 704, 713),
    "sunspec-100": (1, 103, 120, 121, 123, 124),
    "neither": (1,),
}
_F32_EDGES = (0x7FC0_0000, 0x7F80_0000, 0xFF80_0000, 0x7F7F_FFFF, 0xFFC0_0001, 0x0000_0001)
_F64_EDGES = (0x7FF8_0000_0000_0000, 0x7FF0_0000_0000_0000, 0xFFF0_0000_0000_0000)


def _edge_registers(point: PointDef, rng: random.Random) -> list[int]:
    """A value a broken or unusual device could hold in this point: the type's edges, its
    not-implemented value, a scale factor inside or outside -10..10, or random bits."""
    reg_type = point.reg_type
    bits = 16 * point.size
    if reg_type is RegType.SUNSSF:
        sf = rng.choice([rng.randint(-10, 10)] * 4 + [-11, 11, 0x7FFF, -0x7FFF])
        return encode(sf, RegType.SUNSSF)
    if reg_type is RegType.F32:
        value = rng.choice([*_F32_EDGES, rng.getrandbits(32)])
    elif reg_type is RegType.F64:
        value = rng.choice([*_F64_EDGES, rng.getrandbits(64)])
    else:
        top = (1 << bits) - 1
        value = rng.choice([0, 1, top, top >> 1, 1 << (bits - 1), rng.getrandbits(bits)])
    return [(value >> (16 * (point.size - 1 - i))) & 0xFFFF for i in range(point.size)]


def _profile_blocks(profile: SunSpec700Profile | SunSpec100Profile) -> dict[int, list[int]]:
    image = profile.image
    return {
        model_id: image.registers[address - image.base : address - image.base + 2 + length]
        for model_id, address in image.model_address.items()
        for length in [image.definitions[model_id].length]
    }


# The simulator's populated models: what a healthy device holds, before the fuzz breaks it.
HEALTHY = {
    **_profile_blocks(SunSpec700Profile(PowerStage())),
    **_profile_blocks(SunSpec100Profile(PowerStage())),
}


def fuzzed_block(model_id: int, rng: random.Random, fill_share: float) -> list[int]:
    """The model's block (as the simulator fills it, or all not implemented) with about
    ``fill_share`` of its points set to edge values."""
    block = list(HEALTHY.get(model_id) or model_block(model_id))
    definition = usable_model_def(model_id)
    if definition is None:
        return block[:2] + [rng.getrandbits(16) for _ in block[2:]]
    for point in definition.points.values():
        if point.offset >= 2 and rng.random() < fill_share:  # ID and L stay
            end = point.offset + point.size
            block[point.offset : end] = _edge_registers(point, rng)
    return block


@dataclass(frozen=True)
class Device:
    base: int
    chain: tuple[int, ...]
    blocks: tuple[tuple[int, ...], ...]
    end_marker: bool

    def transport(self) -> MemoryTransport:
        return sunspec_device(self.base, self.blocks, end=self.end_marker)


@st.composite
def devices(draw: st.DrawFn) -> Device:
    """A chain a field device could present (the models a driver needs, others anywhere after
    model 1), each block fuzzed, now and then one with a corrupt length or no end marker."""
    chain = list(REQUIRED[draw(st.sampled_from(sorted(REQUIRED)))])
    for extra in draw(st.lists(st.sampled_from(MODEL_POOL), max_size=4)):
        chain.insert(draw(st.integers(1, len(chain))), extra)
    # A seeded generator for the many point values: cheap to draw, replayed from its seed.
    rng = random.Random(draw(st.integers(0, 2**64 - 1)))  # noqa: S311  test data, not secrets
    fill_share = draw(st.sampled_from([0.0, 0.05, 0.2, 0.5, 1.0]))
    blocks = [fuzzed_block(model_id, rng, fill_share) for model_id in chain]
    corrupt = draw(st.one_of(st.none(), st.integers(0, len(blocks) - 1)))
    if corrupt is not None:
        blocks[corrupt][1] = draw(st.integers(0, 0xFFFF))
    return Device(
        base=draw(st.sampled_from(BASE_ADDRESSES)),
        chain=tuple(chain),
        blocks=tuple(tuple(b) for b in blocks),
        end_marker=draw(st.booleans()) or corrupt is None,
    )


def assert_sane(state: InverterState) -> None:
    """Every number in a state is finite and inside its physical band, or unknown."""
    for field in fields(state):
        value = getattr(state, field.name)
        if isinstance(value, float):
            assert math.isfinite(value), field.name
    if state.temperature_c is not None:
        low, high = TEMPERATURE_BAND_C
        assert low <= state.temperature_c <= high
    if state.measured_power_w is not None:
        assert abs(state.measured_power_w) <= MAX_POWER_W


async def exercise(transport: ModbusTransport, power_w: float) -> str:
    """Setup, one read, a command and 0 W; the outcome, for hypothesis's statistics."""
    driver = SunSpecDriver(transport, revert_timeout_s=10)
    try:
        await driver.setup()
        assert_sane(await driver.read(0.0))
        await driver.command(power_w, enable=True)
        assert_sane(await driver.read(1.0))
        await driver.command(0.0, enable=False)
    except PROJECT_ERRORS as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split()[:3])}"
    return "commanded"


@settings(max_examples=400)
@given(devices(), st.floats(-25_000.0, 25_000.0))
def test_any_chain_raises_only_project_errors(device: Device, power_w: float) -> None:
    """Whatever the chain, lengths, scale factors and values, setup, read and command either
    work or raise InverterLinkError / ProtocolError; every state they return is sane."""
    event(asyncio.run(exercise(device.transport(), power_w)))


@settings(max_examples=300)
@given(
    st.sampled_from(BASE_ADDRESSES),
    st.lists(st.sampled_from(MODEL_POOL), min_size=1, max_size=6),
    st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=6),
)
def test_discovery_of_any_lengths_raises_only_project_errors(
    base: int, chain: list[int], lengths: list[int]
) -> None:
    """Discovery over any L values either lists the chain or raises a project error; it never
    asks for a register past 65535. (Discovery reads only each model's ID and L, so the device
    holds just those.)"""
    transport = MemoryTransport()
    transport.load(base, SUNS_MARKER)
    address = base + 2
    for model_id, drawn in zip(chain, lengths + [None] * len(chain), strict=False):
        if address > 0xFFFF:
            break
        length = model_block(model_id)[1] if drawn is None else drawn
        transport.load(address, [model_id, length][: 0x10000 - address])
        address += length + 2
    if address <= 0xFFFF:
        transport.load(address, [0xFFFF])

    async def walk() -> str:
        try:
            device = await SunSpecDevice.discover(transport)
        except PROJECT_ERRORS as exc:
            return type(exc).__name__
        assert device.model_ids == chain
        return "walked"

    event(asyncio.run(walk()))


def test_corrupt_length_past_the_address_space_is_a_protocol_error() -> None:
    """A model at 50002 claiming L = 20000 would put the next model at 70004: a ProtocolError
    that names the model, never pymodbus's ValueError for address 70004."""
    transport = sunspec_device(50000, [[1, 20000] + [0] * 20000])
    with pytest.raises(ProtocolError, match=r"model 1 at 50002 with L=20000 ends past register"):
        asyncio.run(SunSpecDevice.discover(transport))


def test_chain_that_reaches_the_last_register_without_an_end_marker() -> None:
    """A chain that fills the address space to 65535 with no end marker is a ProtocolError."""
    length = 0x10000 - 50004
    transport = sunspec_device(50000, [[1, length] + [0] * length], end=False)
    with pytest.raises(ProtocolError, match="runs past register 65535"):
        asyncio.run(SunSpecDevice.discover(transport))


def _profile_device(profile: SunSpec700Profile | SunSpec100Profile) -> MemoryTransport:
    transport = MemoryTransport()
    transport.load(profile.start_address, profile.registers)
    return transport


def test_wset_scale_factor_that_overflows_refuses_the_command() -> None:
    """WSet_SF -6 is legal, but 3 kW is then 3e9, beyond 704 WSet's int32: the command is
    refused with a ProtocolError naming the power and the SF, and nothing is written."""
    profile = SunSpec700Profile(PowerStage())
    profile.image.set_raw(704, "WSet_SF", -6)
    transport = _profile_device(profile)

    async def scenario() -> None:
        driver = SunSpecDriver(transport, revert_timeout_s=10)
        await driver.setup()
        written = len(transport.writes)
        with pytest.raises(ProtocolError, match=r"-3000 W at WSet_SF -6 refused.*int32"):
            await driver.command(-3000.0, enable=True)
        assert len(transport.writes) == written
        await driver.command(-0.5, enable=True)  # 500000 fits: small powers still work

    asyncio.run(scenario())


def test_storage_rate_scale_factor_that_overflows_refuses_the_command() -> None:
    """InOutWRte_SF -3 is legal, but 100 % is then 100000, beyond 124 InWRte's int16: refused
    with a ProtocolError, nothing written."""
    stage = PowerStage()
    profile = SunSpec100Profile(stage)
    profile.image.set_raw(124, "InOutWRte_SF", -3)
    transport = _profile_device(profile)
    full_w = max(stage.ratings.max_charge_w, stage.ratings.max_discharge_w)

    async def scenario() -> None:
        driver = SunSpecDriver(transport, revert_timeout_s=10)
        await driver.setup()
        written = len(transport.writes)
        with pytest.raises(ProtocolError, match=r"\(100 %\) at InOutWRte_SF -3 refused.*int16"):
            await driver.command(full_w, enable=True)
        assert len(transport.writes) == written

    asyncio.run(scenario())


@pytest.mark.parametrize("power_w", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("profile_type", [SunSpec700Profile, SunSpec100Profile])
def test_non_finite_command_is_refused(
    profile_type: Callable[[PowerStage], SunSpec700Profile | SunSpec100Profile], power_w: float
) -> None:
    """A NaN or infinite power is refused with a ProtocolError, never an OverflowError."""
    transport = _profile_device(profile_type(PowerStage()))

    async def scenario() -> None:
        driver = SunSpecDriver(transport, revert_timeout_s=10)
        await driver.setup()
        written = len(transport.writes)
        with pytest.raises(ProtocolError):
            await driver.command(power_w, enable=True)
        assert len(transport.writes) == written

    asyncio.run(scenario())


# -- models 11 and 16 on a real link ------------------------------------------------------------

MAC = "02:00:5E:10:00:01"


class CommunicationBoardProfile(SunSpec100Profile):
    """A storage inverter whose chain carries the communication-board models (11 Ethernet link
    layer, 12 IPv4, 16 simple IP) and MPPT 160 between its power models, and a vendor model
    last: the chain that took the link down."""

    name = "sunspec-100"
    # hil's SunSpec100Profile.models is inferred as a 6-tuple; a longer chain is the point here.
    models = (1, 11, 12, 16, 103, 120, 121, 123, 124, 160)  # type: ignore[assignment]

    def __init__(self, stage: PowerStage) -> None:
        super().__init__(stage)
        self.image.set_raw(11, "MAC", MAC)
        self.image.set_raw(16, "MAC", MAC)
        self.image.set_raw(12, "Addr", "192.168.1.50")
        # A vendor model before the end marker (no definition: walked past).
        self.image.registers[-2:-2] = [VENDOR_MODEL, 4, 1, 2, 3, 4]


@pytest.mark.parametrize("link", ["tcp", "rtu"])
def test_communication_board_models_do_not_kill_the_link(
    link: str, request: pytest.FixtureRequest
) -> None:
    """Models 11, 12, 16, 160 and a vendor model in the chain: discovery lists them, model 11's
    eui48 MAC decodes, and the 100-series driver sets up, commands and reads as without them."""
    pty_pair: PtyPair | None = request.getfixturevalue("pty_pair") if link == "rtu" else None

    async def scenario() -> None:
        stage = PowerStage()
        sim = InverterSimulator(CommunicationBoardProfile(stage), stage)
        if link == "tcp":
            port = await sim.start_tcp()
            transport = ModbusTransport(TcpEndpoint("127.0.0.1", port), 1, timeout_s=1.0)
        else:
            assert pty_pair is not None
            await sim.start_serial(str(pty_pair.inverter_end), baudrate=115_200)
            endpoint = SerialEndpoint(str(pty_pair.controller_end), baudrate=115_200)
            transport = ModbusTransport(endpoint, 1, timeout_s=1.0)
        try:
            device = await SunSpecDevice.discover(transport)
            assert device.model_ids == [*CommunicationBoardProfile.models, VENDOR_MODEL]
            assert device.block(VENDOR_MODEL).definition is None
            assert (await device.read(11)).text("MAC") == MAC
            driver = SunSpecDriver(transport, revert_timeout_s=10)
            info = await driver.setup()
            assert info.models == (*CommunicationBoardProfile.models, VENDOR_MODEL)
            await driver.command(-2000.0, enable=True)
            # 100-series rates are in tenths of a percent of WChaMax: within 0.1 % of 7400 W.
            assert stage.target_w == pytest.approx(-2000.0, abs=10)
            state = await driver.read(0.0)
            assert state.faults == ()
            await driver.command(0.0, enable=False)
        finally:
            await transport.close()
            await sim.stop()

    asyncio.run(scenario())
