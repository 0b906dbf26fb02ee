"""SunSpec model definitions come from the SunSpec Alliance's JSON, with the offsets we rely on;
every model it ships loads, and one the loader cannot use is skipped, never fatal."""

from __future__ import annotations

import asyncio
import json
import re
import tomllib
from collections.abc import Iterator
from importlib import resources
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import structlog
from packaging.requirements import Requirement

from controller.inverter import sunspec_models
from controller.inverter.codec import RegType, words_of
from controller.inverter.sunspec import SunSpecDevice
from controller.inverter.sunspec_models import (
    UnknownModelError,
    UnusableModelError,
    model_def,
    usable_model_def,
)
from tests.inverter.memory_device import model_block, sunspec_device


@pytest.mark.parametrize(
    ("model_id", "length"),
    [
        (1, 66),
        (701, 153),
        (702, 50),
        (704, 65),
        (713, 7),
        (103, 50),
        (120, 26),
        (121, 30),
        (123, 24),
        (124, 24),
    ],
)
def test_model_lengths(model_id: int, length: int) -> None:
    """Each model's fixed part spans exactly its L registers."""
    definition = model_def(model_id)
    assert definition.length == length
    end = max(p.offset + p.size for p in definition.points.values())
    assert end - 2 == length


def test_control_points_where_the_facts_say() -> None:
    """704 WSet at offset 24 (int32, WSet_SF), WSetRvrtTms at 31; 701 W at 10 (W_SF)."""
    ctl = model_def(704)
    assert (ctl.point("WSet").offset, ctl.point("WSet").reg_type) == (24, RegType.I32)
    assert ctl.point("WSet").sf == "WSet_SF"
    assert ctl.point("WSetRvrtTms").offset == 31
    assert ctl.point("WSetEna").writable
    meas = model_def(701)
    assert (meas.point("W").offset, meas.point("W").sf) == (10, "W_SF")
    assert meas.point("InvSt").symbols[6] == "FAULT"
    assert model_def(103).point("St").symbols[7] == "FAULT"


def test_unknown_model() -> None:
    """A model id with no definition is a clear error."""
    with pytest.raises(UnknownModelError):
        model_def(64999)


# -- every SunSpec point type, every shipped model (issue 16, item 1) -------------------------

JSON_DIR = resources.files("sunspec2") / "models" / "json"


def _shipped_model_ids() -> list[int]:
    names = (entry.name for entry in JSON_DIR.iterdir())
    return sorted(int(m.group(1)) for n in names if (m := re.fullmatch(r"model_(\d+)\.json", n)))


def _points(group: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from group.get("points", [])
    for sub in group.get("groups", []):
        yield from _points(sub)


def test_every_point_type_in_the_sunspec_json_is_known() -> None:
    """Every "type" in pysunspec2's model JSON is a RegType of the size the JSON gives it
    (eui48 4, ipaddr 2, ipv6addr 8, ...), so no shipped model can stop the loader."""
    sizes: dict[str, set[int]] = {}
    for model_id in _shipped_model_ids():
        raw = json.loads((JSON_DIR / f"model_{model_id}.json").read_text(encoding="utf-8"))
        for point in _points(raw["group"]):
            sizes.setdefault(point["type"], set()).add(int(point["size"]))
    assert {"eui48", "ipaddr", "ipv6addr", "uint64", "acc64", "count", "pad"} <= set(sizes)
    for type_name, seen in sizes.items():
        reg_type = RegType(type_name)
        if reg_type is not RegType.STRING:
            assert seen == {words_of(reg_type)}, type_name


@pytest.mark.parametrize("model_id", _shipped_model_ids())
def test_every_shipped_model_loads(model_id: int) -> None:
    """Every model the installed pysunspec2 ships loads, and its fixed part fits its L."""
    definition = model_def(model_id)
    assert definition.model_id == model_id
    assert all(p.offset + p.size <= definition.length + 2 for p in definition.points.values())


def test_communication_models_where_the_json_puts_them() -> None:
    """11 MAC is an eui48 of 4 registers at offset 5; 16 MAC follows its five strings, at 48."""
    mac = model_def(11).point("MAC")
    assert (mac.offset, mac.size, mac.reg_type) == (5, 4, RegType.EUI48)
    mac16 = model_def(16).point("MAC")
    assert (mac16.offset, mac16.size, mac16.reg_type) == (48, 4, RegType.EUI48)


UNUSABLE_ID = 64990


@pytest.fixture
def unusable_definition(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A model whose definition names a point type no codec knows (a future SunSpec type)."""
    real = sunspec_models._raw_definition

    def fake(model_id: int) -> dict[str, Any]:
        if model_id != UNUSABLE_ID:
            return real(model_id)
        points = [
            {"name": "ID", "type": "uint16", "size": 1, "value": UNUSABLE_ID},
            {"name": "L", "type": "uint16", "size": 1, "value": 5},
            {"name": "Wide", "type": "bitfield128", "size": 8},
        ]
        return {"id": UNUSABLE_ID, "group": {"name": "future", "type": "group", "points": points}}

    monkeypatch.setattr(sunspec_models, "_raw_definition", fake)
    model_def.cache_clear()
    usable_model_def.cache_clear()
    yield UNUSABLE_ID
    model_def.cache_clear()
    usable_model_def.cache_clear()


def test_unusable_definition_is_skipped_with_one_log_line(unusable_definition: int) -> None:
    """A definition the loader cannot use is UnusableModelError (a ProtocolError, never a
    ValueError); asked for it again and again, the loader logs it once and returns None."""
    with pytest.raises(UnusableModelError, match="unknown type 'bitfield128'"):
        model_def(unusable_definition)
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            assert usable_model_def(unusable_definition) is None
    assert [(e["event"], e["model"]) for e in logs] == [
        ("SunSpec model skipped: its definition cannot be used", unusable_definition)
    ]
    assert "bitfield128" in logs[0]["reason"]


def test_discovery_walks_past_an_unusable_model(unusable_definition: int) -> None:
    """Discovery lists the unusable model without a definition and goes on to the next."""
    blocks = [model_block(1), [unusable_definition, 5, 0, 0, 0, 0, 0], model_block(704)]
    device = asyncio.run(SunSpecDevice.discover(sunspec_device(40000, blocks)))
    assert device.model_ids == [1, unusable_definition, 704]
    assert device.block(unusable_definition).definition is None
    assert device.block(704).address == 40002 + 68 + 7


# -- pysunspec2 must ship the definitions (issue 16, item 11) -------------------------------

# The models the drivers and the simulator read: common, inverter, nameplate, settings,
# controls, storage, and the IEEE 1547 DER models with storage and battery.
NEEDED_MODELS = (1, 101, 102, 103, 120, 121, 123, 124, 701, 702, 703, 704, 713, 802)
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("model_id", NEEDED_MODELS)
def test_installed_pysunspec2_ships_the_models_we_need(model_id: int) -> None:
    """The installed pysunspec2 has a JSON definition for each model the drivers use
    (the 1.1.0 and 1.2.0 wheels have none at all)."""
    path = JSON_DIR / f"model_{model_id}.json"
    assert path.is_file(), f"pysunspec2 {version('pysunspec2')} ships no {path.name}"
    assert model_def(model_id).points


def test_pin_admits_only_versions_that_ship_models() -> None:
    """pyproject.toml's pysunspec2 range excludes 1.1.0 and 1.2.0 (wheels without model JSON)
    and admits the installed version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (pin,) = (
        Requirement(d) for d in project["project"]["dependencies"] if d.startswith("pysunspec2")
    )
    assert "1.1.0" not in pin.specifier
    assert "1.2.0" not in pin.specifier
    assert version("pysunspec2") in pin.specifier
