"""A SunSpec register image built from the same model definitions the controller reads.

Every point starts "not implemented" (its SunSpec sentinel); the simulator then fills in the
points a real device of that profile implements.
"""

from __future__ import annotations

from collections.abc import Sequence

from controller.inverter.codec import decode, encode, not_implemented, unscaled
from controller.inverter.sunspec import SUNS_MARKER
from controller.inverter.sunspec_models import ModelDef, PointDef, model_def

END_MARKER = [0xFFFF, 0]


class SunSpecImage:
    """Registers from ``base``: 'SunS', the models in order, the end marker."""

    def __init__(self, base: int, model_ids: Sequence[int]) -> None:
        self.base = base
        self.registers: list[int] = list(SUNS_MARKER)
        self.model_address: dict[int, int] = {}
        self.definitions: dict[int, ModelDef] = {}
        for model_id in model_ids:
            definition = model_def(model_id)
            address = base + len(self.registers)
            self.model_address[model_id] = address
            self.definitions[model_id] = definition
            block = [0] * (definition.length + 2)
            for point in definition.points.values():
                block[point.offset : point.offset + point.size] = not_implemented(
                    point.reg_type, point.size
                )
            block[0], block[1] = model_id, definition.length
            self.registers.extend(block)
        self.registers.extend(END_MARKER)

    def point(self, model_id: int, name: str) -> PointDef:
        return self.definitions[model_id].point(name)

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
