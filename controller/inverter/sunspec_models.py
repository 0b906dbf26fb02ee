"""SunSpec model definitions, read from the SunSpec Alliance's own JSON (the pysunspec2 package).

Rather than hand-copied register tables, every offset, type, scale-factor reference and symbol
comes from ``sunspec2/models/json/model_<id>.json``. A model's fixed part is flattened into
points with their offsets counted from the model's ID register; nested groups without a repeat
count are flattened as ``Group.Point``.

A repeating group that ends the model (714's DC ports ``Prt``, 160's MPPT modules, 803's
strings) is described once (``RepeatingGroupDef``: where the first repeat starts, its size, the
point that counts the repeats); its points are reached by index as ``Prt[0].DCV`` (0 is the
first repeat, as bit 0 of 714 PrtAlrms is the first port), so ``ModelDef.point`` serves them as
it serves the fixed part. How many repeats a device has follows from its model length L, which
must hold the fixed part and a whole number of repeats, and agree with the count point where
the definition names one (714 NPrt): a device whose L does not fit is a ``GroupLayoutError``
(``ModelDef.repeats_in``, ``ModelValues.repeat_count``). Groups the loader does not describe
(a repeating group inside a repeat, as 705's curve points; one followed by more groups) are left
out, as the whole of every repeating group was before.

Every point type of the SunSpec JSON is known to the codec. A definition this loader still
cannot use (a type newer than the codec, a size that contradicts its type, a malformed file)
raises ``UnusableModelError``; ``usable_model_def`` turns it, and a model with no definition at
all, into None with one log line per model id, so discovery walks past the model instead of
taking the link down with it (issue 16, item 1).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import structlog

from controller.errors import ProtocolError
from controller.inverter.codec import RegType, words_of

log = structlog.get_logger(component="inverter")


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


# A point of a repeat, by index: "Prt[0].DCV".
_REPEAT_POINT = re.compile(r"(?P<group>[^\[\].]+)\[(?P<index>\d+)\]\.(?P<point>.+)")


@dataclass(frozen=True, slots=True)
class RepeatingGroupDef:
    """The repeating group that ends a model: repeats of ``size`` registers, the first at
    ``offset`` from the model's ID register (714 ``Prt``: 25 registers from offset 20)."""

    name: str
    offset: int  # registers from the model's ID register to the first repeat
    size: int  # registers of one repeat
    count_point: str | None  # the fixed-part point that counts the repeats (714 NPrt), or none
    points: dict[str, PointDef]  # offsets from the start of one repeat


@dataclass(frozen=True, slots=True)
class ModelDef:
    model_id: int
    name: str
    length: int  # the L the standard gives for the fixed part (registers after ID and L)
    points: dict[str, PointDef]  # the fixed part
    repeating: RepeatingGroupDef | None = None

    def point(self, name: str) -> PointDef:
        """A point of the fixed part by name, or of a repeat as ``Group[index].Point``."""
        point = self.points.get(name)
        if point is None:
            point = self._repeat_point(name)
        if point is None:
            raise UnknownPointError(f"model {self.model_id} ({self.name}) has no point {name!r}")
        return point

    def repeat_name(self, index: int, point: str) -> str:
        """The name of ``point`` in repeat ``index`` (0 is the first): ``Prt[0].DCV``."""
        group = self.repeating
        if group is None or point not in group.points or index < 0:
            raise UnknownPointError(
                f"model {self.model_id} ({self.name}) has no repeating point {point!r}"
            )
        return f"{group.name}[{index}].{point}"

    def repeats_in(self, length: int) -> int:
        """How many repeats a device whose model has length ``length`` (its L) holds.

        GroupLayoutError when the model has no repeating group, or L is shorter than the fixed
        part or holds no whole number of repeats (714: L = 18 + 25 x NPrt)."""
        group = self.repeating
        if group is None:
            raise GroupLayoutError(f"model {self.model_id} has no repeating group")
        fixed = group.offset - 2  # the fixed part after ID and L, where the repeats begin
        spare = length - fixed
        if spare < 0 or spare % group.size:
            raise GroupLayoutError(
                f"model {self.model_id} with L={length} does not hold its {fixed} "
                f"fixed registers and whole {group.name} groups of {group.size}"
            )
        return spare // group.size

    def _repeat_point(self, name: str) -> PointDef | None:
        group = self.repeating
        match = _REPEAT_POINT.fullmatch(name)
        if group is None or match is None or match["group"] != group.name:
            return None
        point = group.points.get(match["point"])
        if point is None:
            return None
        index = int(match["index"])
        sf = point.sf
        if isinstance(sf, str) and sf in group.points:  # a scale factor inside the repeat
            sf = f"{group.name}[{index}].{sf}"
        return dataclasses.replace(
            point, name=name, offset=group.offset + index * group.size + point.offset, sf=sf
        )


class UnknownPointError(ProtocolError, KeyError):
    """The definition has no point of that name (another revision of the model)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownModelError(ProtocolError, LookupError):
    """No definition for this model id in the installed SunSpec package."""


class UnusableModelError(UnknownModelError):
    """A definition this loader cannot use (unknown point type, contradictory size, bad JSON)."""


class GroupLayoutError(ProtocolError):
    """A device's model length L (or its count point) does not fit the repeating group's layout."""


def _raw_definition(model_id: int) -> dict[str, Any]:
    path = resources.files("sunspec2") / "models" / "json" / f"model_{model_id}.json"
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        raise UnknownModelError(f"no SunSpec definition for model {model_id}") from None
    except ValueError as exc:  # UnicodeDecodeError
        raise UnusableModelError(f"model {model_id}: unreadable definition: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:  # json.JSONDecodeError
        raise UnusableModelError(f"model {model_id}: malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UnusableModelError(f"model {model_id}: the definition is not a JSON object")
    return data


def _point_def(raw: dict[str, Any], prefix: str, offset: int) -> PointDef:
    try:
        reg_type = RegType(raw["type"])
    except ValueError:
        raise UnusableModelError(
            f"point {prefix}{raw['name']}: unknown type {raw['type']!r}"
        ) from None
    size = int(raw["size"])
    if size <= 0 or (reg_type is not RegType.STRING and size != words_of(reg_type)):
        raise UnusableModelError(
            f"point {prefix}{raw['name']}: size {size} does not match type {reg_type.value}"
        )
    name = prefix + raw["name"]
    return PointDef(
        name=name,
        offset=offset,
        size=size,
        reg_type=reg_type,
        sf=raw.get("sf"),
        writable=raw.get("access") == "RW",
        units=raw.get("units"),
        symbols={int(s["value"]): str(s["name"]) for s in raw.get("symbols", [])},
    )


def _repeats(group: dict[str, Any]) -> bool:
    return "count" in group and group["count"] not in (1, "1")


def _flatten(
    group: dict[str, Any], prefix: str, start: int, out: dict[str, PointDef]
) -> tuple[int, dict[str, Any] | None]:
    """Flattens the points up to the first repeating group; returns the offset after them and
    that group (None when there is none)."""
    offset = start
    for raw in group.get("points", []):
        point = _point_def(raw, prefix, offset)
        out[point.name] = point
        offset += point.size
    for sub in group.get("groups", []):
        if _repeats(sub):
            return offset, sub  # a repeating group ends the fixed part
        offset, stop = _flatten(sub, f"{prefix}{sub['name']}.", offset, out)
        if stop is not None:
            return offset, stop
    return offset, None


def _repeating(
    top: dict[str, Any], raw: dict[str, Any], offset: int, fixed: dict[str, PointDef]
) -> RepeatingGroupDef | None:
    """The repeating group ``raw`` that ends the fixed part (``fixed``) at ``offset``, when the
    loader can describe it: the last group of the model, of a fixed size, counted by a point of
    the fixed part or (count 0) by the model's length alone. Else None: it is left out."""
    if raw is not top.get("groups", [])[-1]:
        return None  # more groups after it: their offsets would depend on the repeats
    points: dict[str, PointDef] = {}
    size, inner = _flatten(raw, "", 0, points)
    count = raw["count"]
    if inner is not None or size <= 0:
        return None  # a repeating group inside a repeat (705's curve points)
    if isinstance(count, str) and not count.isdigit():
        if count not in fixed:
            raise UnusableModelError(
                f"group {raw['name']} is counted by {count!r}, not a point of the fixed part"
            )
        count_point: str | None = count
    elif int(count) == 0:
        count_point = None  # as many as L holds (160, 401-404)
    else:
        return None  # a fixed count above 1: no shipped definition has one
    return RepeatingGroupDef(
        name=str(raw["name"]), offset=offset, size=size, count_point=count_point, points=points
    )


@functools.cache
def model_def(model_id: int) -> ModelDef:
    """The definition of one SunSpec model, cached.

    Raises UnknownModelError when the package has none, UnusableModelError (a subclass) when
    it has one this loader cannot use."""
    raw = _raw_definition(model_id)
    try:
        group = raw["group"]
        points: dict[str, PointDef] = {}
        end, stop = _flatten(group, "", 0, points)
        length_point: dict[str, Any] = next((p for p in group["points"] if p["name"] == "L"), {})
        length = int(length_point.get("value") or end - 2)
        name = str(group["name"])
        repeating = None if stop is None else _repeating(group, stop, end, points)
    except UnusableModelError as exc:
        raise UnusableModelError(f"model {model_id}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a malformed definition
        raise UnusableModelError(
            f"model {model_id}: malformed definition ({type(exc).__name__}: {exc})"
        ) from None
    return ModelDef(model_id=model_id, name=name, length=length, points=points, repeating=repeating)


@functools.cache
def usable_model_def(model_id: int) -> ModelDef | None:
    """The model's definition, or None (logged once per model id) when there is none or the
    loader cannot use it: such a model is skipped, never fatal."""
    try:
        return model_def(model_id)
    except UnusableModelError as exc:
        log.warning(
            "SunSpec model skipped: its definition cannot be used", model=model_id, reason=str(exc)
        )
    except UnknownModelError:
        log.info("SunSpec model skipped: no definition (a vendor model?)", model=model_id)
    return None
