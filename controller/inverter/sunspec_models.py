"""SunSpec model definitions, read from the SunSpec Alliance's own JSON (the pysunspec2 package).

Rather than hand-copied register tables, every offset, type, scale-factor reference and symbol
comes from ``sunspec2/models/json/model_<id>.json``. A model's fixed part is flattened into
points with their offsets counted from the model's ID register; nested groups without a repeat
count are flattened as ``Group.Point``. Repeating groups (curves, strings) are not needed for
power control and are left out.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from controller.inverter.codec import RegType, words_of


@dataclass(frozen=True, slots=True)
class PointDef:
    name: str
    offset: int  # registers from the model's ID register
    size: int  # registers
    reg_type: RegType
    sf: str | int | None  # name of the scale-factor point, a fixed exponent, or none
    writable: bool
    units: str | None
    symbols: dict[int, str] = field(default_factory=dict)  # enum value or bit -> name


@dataclass(frozen=True, slots=True)
class ModelDef:
    model_id: int
    name: str
    length: int  # the L the standard gives (registers after ID and L)
    points: dict[str, PointDef]

    def point(self, name: str) -> PointDef:
        try:
            return self.points[name]
        except KeyError:
            raise KeyError(f"model {self.model_id} ({self.name}) has no point {name!r}") from None


class UnknownModelError(LookupError):
    """No definition for this model id in the installed SunSpec package."""


def _raw_definition(model_id: int) -> dict[str, Any]:
    path = resources.files("sunspec2") / "models" / "json" / f"model_{model_id}.json"
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        raise UnknownModelError(f"no SunSpec definition for model {model_id}") from None
    data: dict[str, Any] = json.loads(text)
    return data


def _flatten(group: dict[str, Any], prefix: str, start: int, out: dict[str, PointDef]) -> int:
    offset = start
    for raw in group.get("points", []):
        reg_type = RegType(raw["type"])
        size = int(raw["size"])
        if reg_type is not RegType.STRING and size != words_of(reg_type):
            raise ValueError(f"{raw['name']}: size {size} does not match type {reg_type.value}")
        name = prefix + raw["name"]
        out[name] = PointDef(
            name=name,
            offset=offset,
            size=size,
            reg_type=reg_type,
            sf=raw.get("sf"),
            writable=raw.get("access") == "RW",
            units=raw.get("units"),
            symbols={int(s["value"]): str(s["name"]) for s in raw.get("symbols", [])},
        )
        offset += size
    for sub in group.get("groups", []):
        if "count" in sub and sub["count"] not in (1, "1"):
            break  # a repeating group ends the fixed part
        offset = _flatten(sub, f"{prefix}{sub['name']}.", offset, out)
    return offset


@functools.cache
def model_def(model_id: int) -> ModelDef:
    """The definition of one SunSpec model, cached."""
    raw = _raw_definition(model_id)
    group = raw["group"]
    points: dict[str, PointDef] = {}
    end = _flatten(group, "", 0, points)
    length_point: dict[str, Any] = next((p for p in group["points"] if p["name"] == "L"), {})
    length = int(length_point.get("value") or end - 2)
    return ModelDef(model_id=model_id, name=str(group["name"]), length=length, points=points)
