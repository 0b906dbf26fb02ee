"""Repeating groups (issue 17): a model's last repeating group is described once and its points
are reached by index (``Prt[0].DCV``), at the offsets the SunSpec JSON gives and pysunspec2
reads; a device whose model length does not fit the layout is a GroupLayoutError, never a
guess."""

from __future__ import annotations

import asyncio
import json
import re
from importlib import resources
from typing import Any

import pytest
from sunspec2.modbus.client import SunSpecModbusClientModel

from controller.errors import ProtocolError
from controller.inverter.codec import RegType
from controller.inverter.sunspec import SunSpecDevice
from controller.inverter.sunspec_models import (
    GroupLayoutError,
    UnknownPointError,
    model_def,
)
from hil.inverter.sunspec_image import SunSpecImage
from tests.inverter.memory_device import model_block, sunspec_device

JSON_DIR = resources.files("sunspec2") / "models" / "json"


def _json(model_id: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (JSON_DIR / f"model_{model_id}.json").read_text(encoding="utf-8")
    )
    return data


def _described() -> list[int]:
    names = (entry.name for entry in JSON_DIR.iterdir())
    ids = sorted(int(m.group(1)) for n in names if (m := re.fullmatch(r"model_(\d+)\.json", n)))
    return [model_id for model_id in ids if model_def(model_id).repeating is not None]


def test_714_ports_where_the_json_puts_them() -> None:
    """714: 20 fixed registers (L 18: PrtAlrms, NPrt at 4, totals, DCV_SF at 16), then one Prt
    group of 25 registers per port; Prt[i].DCV is a uint16 at 31 + 25 i scaled by DCV_SF."""
    definition = model_def(714)
    group = definition.repeating
    assert group is not None
    assert (definition.length, group.name, group.offset, group.size) == (18, "Prt", 20, 25)
    assert group.count_point == "NPrt"
    assert definition.point("NPrt").offset == 4
    assert definition.point("DCV_SF").offset == 16
    assert "DCV" not in definition.points  # only per port
    dcv = definition.point("Prt[0].DCV")
    assert (dcv.offset, dcv.size, dcv.reg_type, dcv.sf) == (31, 1, RegType.U16, "DCV_SF")
    assert definition.point("Prt[1].DCV").offset == 56
    assert definition.point("Prt[0].PrtTyp").symbols == {
        0: "PV",
        1: "ESS",
        2: "EV",
        3: "INJ",
        4: "ABS",
        5: "BIDIR",
        6: "DC_DC",
    }
    # Every point of a port, against the JSON: its offset is the sizes before it in the group.
    (raw_group,) = _json(714)["group"]["groups"]
    offset = 0
    for raw in raw_group["points"]:
        for index in range(3):
            point = definition.point(definition.repeat_name(index, raw["name"]))
            assert point.offset == 20 + 25 * index + offset, raw["name"]
            assert (point.size, point.reg_type.value) == (raw["size"], raw["type"])
            assert point.sf == raw.get("sf")
        offset += raw["size"]
    assert offset == 25


@pytest.mark.parametrize("model_id", _described())
def test_repeat_offsets_agree_with_pysunspec2(model_id: int) -> None:
    """For every shipped model whose repeating group the loader describes (714, 160, 711,
    803, ...), pysunspec2 decodes a two-repeat image with each repeat's points at our offsets."""
    definition = model_def(model_id)
    group = definition.repeating
    assert group is not None
    assert group.offset == definition.length + 2  # the repeats follow the fixed part
    registers = SunSpecImage(0, [model_id], repeats={model_id: 2}).registers[2:-2]
    data = b"".join(register.to_bytes(2, "big") for register in registers)
    theirs = SunSpecModbusClientModel(
        model_id=model_id, model_addr=0, model_len=registers[1], data=data
    )
    assert not theirs.error_info
    repeats = getattr(theirs, group.name)
    assert len(repeats) == 2
    for index in range(2):
        for name in group.points:
            point: Any = repeats[index]
            for part in name.split("."):
                point = getattr(point, part)
            assert point.offset == definition.point(definition.repeat_name(index, name)).offset


def test_groups_the_loader_cannot_describe_are_left_out() -> None:
    """705's curves repeat points inside each repeat: the fixed part loads, the group is left
    out; a model without a repeating group has none."""
    assert model_def(705).repeating is None
    assert model_def(705).point("NCrv")
    assert model_def(704).repeating is None
    with pytest.raises(GroupLayoutError, match="no repeating group"):
        model_def(704).repeats_in(65)


@pytest.mark.parametrize(
    "name", ["Prt[0].Nope", "Port[0].DCV", "Prt[x].DCV", "Prt.DCV", "Prt[0]DCV", "DCV"]
)
def test_a_name_that_is_no_repeat_point_is_unknown(name: str) -> None:
    """A misspelt group, point or index is UnknownPointError (a ProtocolError), not a crash."""
    with pytest.raises(UnknownPointError):
        model_def(714).point(name)
    with pytest.raises(ProtocolError):
        model_def(714).point(name)


@pytest.mark.parametrize(("length", "ports"), [(18, 0), (43, 1), (68, 2), (18 + 25 * 40, 40)])
def test_ports_follow_from_the_length(length: int, ports: int) -> None:
    """L = 18 + 25 x ports."""
    assert model_def(714).repeats_in(length) == ports


@pytest.mark.parametrize("length", [0, 17, 42, 44, 67])
def test_a_length_that_does_not_fit_is_a_layout_error(length: int) -> None:
    """An L short of the fixed part or not a whole number of ports is a GroupLayoutError."""
    with pytest.raises(GroupLayoutError, match=f"L={length}"):
        model_def(714).repeats_in(length)


def _714(ports: int, *, declared: int | None = None, length: int | None = None) -> list[int]:
    """714 with ``ports`` ports (DCV_SF -1, port i at 400 + i V); NPrt and L as given."""
    image = SunSpecImage(0, [714], repeats={714: ports})
    image.set_raw(714, "DCV_SF", -1)
    for index in range(ports):
        image.set_raw(714, f"Prt[{index}].DCV", 4000 + 10 * index)
    if declared is not None:
        image.set_raw(714, "NPrt", declared)
    block = image.registers[2:-2]
    if length is not None:
        block = [714, length, *block[2:], *[0] * max(0, length + 2 - len(block))]
        block = block[: length + 2]
    return block


def test_a_port_is_read_by_name_and_no_further() -> None:
    """Prt[1].DCV of a two-port 714 is read with DCV_SF, 57 registers from the ID and not the
    rest of the model; repeat_count checks NPrt against L."""

    async def scenario() -> None:
        transport = sunspec_device(40000, [model_block(1), _714(2)])
        device = await SunSpecDevice.discover(transport)
        values = (await device.read_models({714: ("NPrt", "Prt[1].DCV")}))[714]
        assert len(values.registers) == 57
        assert values.value("Prt[1].DCV") == pytest.approx(401.0)
        assert values.repeat_count() == 2
        with pytest.raises(ProtocolError, match="was not read"):
            values.raw("Prt[1].DCW")
        # A port the device does not have is absent, and never read past L.
        beyond = (await device.read_models({714: ("Prt[2].DCV",)}))[714]
        assert len(beyond.registers) == 70
        assert beyond.raw("Prt[2].DCV") is None

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (_714(2, declared=3), "NPrt = 3 but L=68 holds 2"),
        (_714(1, declared=0), "NPrt = 0 but L=43 holds 1"),
        (_714(2, declared=0xFFFF), "NPrt = None"),  # not implemented
        (_714(2, length=50), "L=50 does not hold"),
        (_714(0, length=10), "L=10 does not hold"),
    ],
    ids=["nprt-too-high", "nprt-zero", "nprt-not-implemented", "partial-port", "short"],
)
def test_a_714_whose_length_does_not_fit_is_a_layout_error(block: list[int], match: str) -> None:
    """NPrt that disagrees with L, or an L that holds no whole number of ports: GroupLayoutError
    from repeat_count, while discovery and the fixed part still work."""

    async def scenario() -> None:
        device = await SunSpecDevice.discover(sunspec_device(40000, [model_block(1), block]))
        assert device.model_ids == [1, 714]
        values = (await device.read_models({714: ("NPrt", "DCV_SF")}))[714]
        with pytest.raises(GroupLayoutError, match=re.escape(match)):
            values.repeat_count()

    asyncio.run(scenario())


def test_no_ports_is_zero_repeats() -> None:
    """A 714 with NPrt 0 and L 18 has no ports: 0, not an error."""

    async def scenario() -> None:
        device = await SunSpecDevice.discover(sunspec_device(40000, [_714(0)]))
        values = (await device.read_models({714: ("NPrt",)}))[714]
        assert values.repeat_count() == 0
        assert values.raw("Prt[0].DCV") is None

    asyncio.run(scenario())
