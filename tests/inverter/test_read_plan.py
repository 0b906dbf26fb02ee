"""Fewer requests per poll and setup (issue 16, item 6): reads are planned over the 125-register
limit, neighbouring models share a request, and no model is read past its definition."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.errors import ProtocolError
from controller.inverter.sunspec import (
    MERGE_GAP_REGISTERS,
    SunSpecDevice,
    plan_reads,
)
from controller.inverter.sunspec_models import model_def
from controller.inverter.transport import MAX_READ_REGISTERS
from tests.inverter.memory_device import MemoryTransport, model_block, sunspec_device

# What the 700-series driver uses of each model in a poll (drivers.py SunSpec700Driver.read):
# of 714 the DCV of the vehicle's port, here the first (issue 17).
POLL_700 = {
    701: ("InvSt", "ConnSt", "Alrm", "W", "TmpCab", "TotWhInj", "TotWhAbs"),
    704: ("WSetEna",),
    713: ("Sta",),
    714: ("Prt[0].DCV",),
}
POLL_100 = {103: ("St", "Evt1", "W", "DCV", "TmpCab", "WH"), 123: ("Conn",)}

spans_strategy = st.lists(
    st.tuples(st.integers(0, 2000), st.integers(1, 300)).map(lambda s: (s[0], s[0] + s[1])),
    max_size=12,
)


@given(spans_strategy)
def test_a_plan_covers_every_span_in_legal_reads(spans: list[tuple[int, int]]) -> None:
    """Every needed register is read; no read exceeds 125 registers, starts or ends on a
    register nobody needs, or carries a gap longer than MERGE_GAP_REGISTERS."""
    needed = {a for start, end in spans for a in range(start, end)}
    plan = plan_reads(spans)
    read = [a for start, count in plan for a in range(start, start + count)]
    assert needed <= set(read)
    assert len(read) == len(set(read)), "registers read twice"
    for start, count in plan:
        assert 0 < count <= MAX_READ_REGISTERS
        assert start in needed
        assert start + count - 1 in needed
        covered = [a for a in range(start, start + count) if a in needed]
        gaps = [b - a - 1 for a, b in itertools.pairwise(covered)]
        assert max(gaps, default=0) <= MERGE_GAP_REGISTERS
    # No worse than one read per 125 registers of each joined span.
    assert len(plan) <= sum(-(-(end - start) // MAX_READ_REGISTERS) for start, end in spans)


def test_neighbouring_models_share_a_read_and_long_ones_are_split() -> None:
    """Touching spans share a read; a gap of 64 is bridged, 65 is not; 300 registers are 3; a
    span that does not fit the read before is never split to fill it."""
    assert plan_reads([(0, 50), (50, 100)]) == [(0, 100)]
    assert plan_reads([(0, 20), (84, 100)]) == [(0, 100)]
    assert plan_reads([(0, 20), (85, 100)]) == [(0, 20), (85, 15)]
    assert plan_reads([(0, 300)]) == [(0, 125), (125, 125), (250, 50)]
    assert plan_reads([(0, 100), (100, 150)]) == [(0, 100), (100, 50)]


def chain(*model_ids: int) -> MemoryTransport:
    """The models in order, 714 with one DC port (as the simulator's)."""
    return sunspec_device(
        40000, [model_block(m, repeats=1 if m == 714 else None) for m in model_ids]
    )


@pytest.mark.parametrize(
    ("models", "poll"),
    [((1, 701, 702, 704, 713, 714), POLL_700), ((1, 103, 120, 121, 123, 124), POLL_100)],
    ids=["sunspec-700", "sunspec-100"],
)
def test_a_poll_takes_two_requests(models: tuple[int, ...], poll: dict[int, tuple[str]]) -> None:
    """The simulator's chains: what a poll needs comes in 2 requests (it took 4: 701 alone is
    155 registers, and each model had its own request)."""

    async def scenario() -> None:
        transport = chain(*models)
        device = await SunSpecDevice.discover(transport)
        before = transport.requests
        values = await device.read_models(poll)
        assert transport.requests - before == 2
        for model_id, points in poll.items():
            for name in points:
                values[model_id].raw(name)  # every point asked for was read

    asyncio.run(scenario())


def test_setup_reads_of_neighbours_share_a_request() -> None:
    """702 and 704 lie next to each other: read whole, they take one request together."""

    async def scenario() -> None:
        transport = chain(1, 701, 702, 704, 713)
        device = await SunSpecDevice.discover(transport)
        before = transport.requests
        values = await device.read_models({702: None, 704: None})
        assert transport.requests - before == 1
        assert values[704].registers[:2] == [704, model_def(704).length]

    asyncio.run(scenario())


def test_an_absurd_length_is_not_read() -> None:
    """A known model whose L is far beyond its definition is read up to the definition only:
    704 with L=2000 takes one request of 67 registers, not 17 of 125."""
    block = model_block(704)
    long_block = [704, 2000, *block[2:], *[0] * (2000 - model_def(704).length)]

    async def scenario() -> None:
        transport = sunspec_device(40000, [model_block(1), long_block])
        device = await SunSpecDevice.discover(transport)
        before = transport.requests
        values = await device.read(704)
        assert transport.requests - before == 1
        assert len(values.registers) == model_def(704).length + 2
        assert values.raw("WSetEna") is None  # not implemented, but read

    asyncio.run(scenario())


def test_a_point_not_asked_for_is_an_error_not_a_silent_none() -> None:
    """Reading only some points, a point beyond them raises; one beyond L is absent (None)."""

    async def scenario() -> None:
        transport = chain(1, 701, 704)
        device = await SunSpecDevice.discover(transport)
        values = (await device.read_models({701: ("W",)}))[701]
        assert values.raw("W") is None  # read: not implemented in this image
        with pytest.raises(ProtocolError, match="was not read"):
            values.raw("TotWhAbs_SF" if "TotWhAbs_SF" in values.definition.points else "Tmp_SF")

    asyncio.run(scenario())


def test_a_chain_that_changed_under_the_link_is_refused() -> None:
    """A model whose ID or L differs from discovery (a firmware update moved the chain) is a
    ProtocolError, never values read from the wrong place."""

    async def scenario() -> None:
        transport = chain(1, 701, 704)
        device = await SunSpecDevice.discover(transport)
        address = device.block(704).address
        transport.registers[address + 1] = 60  # L changed
        with pytest.raises(ProtocolError, match="the chain changed"):
            await device.read(704)
        transport.registers[address + 1] = model_def(704).length
        transport.registers[address] = 705  # another model now
        with pytest.raises(ProtocolError, match="found ID 705"):
            await device.read(704)

    asyncio.run(scenario())


def test_a_verified_write_reads_back_in_one_request() -> None:
    """Write runs a few registers apart are read back in one request, not one per run."""

    async def scenario() -> None:
        transport = chain(1, 704)
        device = await SunSpecDevice.discover(transport)
        before = transport.requests
        await device.write_verified(704, {"WSetMod": 1, "WSetRvrtTms": 3})
        writes = len(device.encode_points(704, {"WSetMod": 1, "WSetRvrtTms": 3}))
        assert writes == 2
        assert transport.requests - before == writes + 1

    asyncio.run(scenario())
