"""A SunSpec register image built from the same model definitions the controller reads.

Every point starts "not implemented" (its SunSpec sentinel); the simulator then fills in the
points a real device of that profile implements.

A model with no SunSpec definition (a vendor model, 64000-65535) gets ``VENDOR_LENGTH`` registers
of zeros, or the length given in ``extra``; a model whose definition ends in a repeating group
(160 MPPT: one group per DC input) gets ``extra[model_id]`` more registers of zeros after its
fixed part, as a device with that many repeats has. ``repeats[model_id]`` instead gives it that
many repeats of the group the loader describes (714's DC ports), each point "not implemented"
like the fixed part's, with the count point (714 NPrt) set; they are reached as ``Prt[0].DCV``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.inverter.codec import decode, encode, not_implemented, unscaled
from controller.inverter.sunspec import SUNS_MARKER
from controller.inverter.sunspec_models import ModelDef, PointDef, model_def, usable_model_def

END_MARKER = [0xFFFF, 0]
VENDOR_LENGTH = 8


class SunSpecImage:
    """Registers from ``base``: 'SunS', the models in order, the end marker."""

    def __init__(
        self,
        base: int,
        model_ids: Sequence[int],
        extra: Mapping[int, int] | None = None,
        *,
        repeats: Mapping[int, int] | None = None,
    ) -> None:
        self.base = base
        self.registers: list[int] = list(SUNS_MARKER)
        self.model_address: dict[int, int] = {}
        self.definitions: dict[int, ModelDef] = {}
        extra = extra or {}
        repeats = repeats or {}
        for model_id in model_ids:
            address = base + len(self.registers)
            self.model_address[model_id] = address
            definition = usable_model_def(model_id)
            if definition is None:  # a vendor model: walked past by the controller
                length = extra.get(model_id, VENDOR_LENGTH)
                self.registers.extend([model_id, length, *[0] * length])
                continue
            self.definitions[model_id] = definition
            self.registers.extend(
                _model_block(definition, extra.get(model_id, 0), repeats.get(model_id))
            )
        self.registers.extend(END_MARKER)

    def relocate(self, base: int) -> None:
        """The same chain at another base address: every model's address moves with it."""
        shift = base - self.base
        self.base = base
        self.model_address = {m: address + shift for m, address in self.model_address.items()}

    def point(self, model_id: int, name: str) -> PointDef:
        definition = self.definitions.get(model_id) or model_def(model_id)
        return definition.point(name)

    def address(self, model_id: int, name: str) -> int:
        return self.model_address[model_id] + self.point(model_id, name).offset

    def _index(self, model_id: int, name: str) -> tuple[int, PointDef]:
        point = self.point(model_id, name)
        return self.model_address[model_id] - self.base + point.offset, point

    def set_raw(self, model_id: int, name: str, raw: int | float | str) -> None:
        index, point = self._index(model_id, name)
        self.registers[index : index + point.size] = encode(
            raw, point.reg_type, string_words=point.size
        )

    def get_raw(self, model_id: int, name: str) -> int | float | str | None:
        index, point = self._index(model_id, name)
        return decode(
            self.registers[index : index + point.size], point.reg_type, sunspec_sentinels=True
        )

    def _scale_factor(self, model_id: int, name: str) -> int:
        sf = self.point(model_id, name).sf
        if isinstance(sf, str):
            raw_sf = self.get_raw(model_id, sf)
            return raw_sf if isinstance(raw_sf, int) else 0
        return sf if isinstance(sf, int) else 0

    def set_value(self, model_id: int, name: str, value: float) -> None:
        """Set a point in engineering units, using the scale factor already in the image."""
        self.set_raw(model_id, name, unscaled(value, self._scale_factor(model_id, name)))

    def get_value(self, model_id: int, name: str) -> float | None:
        raw = self.get_raw(model_id, name)
        if not isinstance(raw, int | float):
            return None
        return float(raw) * 10.0 ** self._scale_factor(model_id, name)

    def spans(self, model_id: int, name: str, address: int, count: int) -> bool:
        """Whether a request for ``count`` registers at ``address`` touches this point."""
        start = self.address(model_id, name)
        return address < start + self.point(model_id, name).size and start < address + count


def _model_block(definition: ModelDef, extra: int, repeats: int | None) -> list[int]:
    """``[ID, L, ...]`` of one model, every point not implemented: its fixed part, ``repeats``
    repeats of its repeating group (the count point set to that number), ``extra`` zeros."""
    points = list(definition.points.values())
    length = definition.length + extra
    counter: tuple[PointDef, int] | None = None  # the count point and its value
    if repeats is not None:
        group = definition.repeating
        if group is None:
            raise ValueError(f"model {definition.model_id} has no repeating group")
        length += repeats * group.size
        points += [
            definition.point(definition.repeat_name(index, name))
            for index in range(repeats)
            for name in group.points
        ]
        if group.count_point is not None:
            counter = (definition.point(group.count_point), repeats)
    block = [0] * (length + 2)
    for point in points:
        block[point.offset : point.offset + point.size] = not_implemented(
            point.reg_type, point.size
        )
    block[0], block[1] = definition.model_id, length
    if counter is not None:
        point, count = counter
        block[point.offset : point.offset + point.size] = encode(count, point.reg_type)
    return block
