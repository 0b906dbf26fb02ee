"""A stand-in for the libgpiod 2 Python bindings (PyPI ``gpiod`` >= 2.1), for machines without a
GPIO chip.

It mimics only the surface ``controller.vehicle.lines.GpioLines`` uses, with the bindings' names
and call shapes: ``gpiod.request_lines(path, consumer=..., config={offset: LineSettings})``
returning a request with ``get_values(offsets)``, ``set_values({offset: Value})`` and
``release()``; ``gpiod.LineSettings(direction, active_low, output_value)``; ``gpiod.line.Direction``
and ``gpiod.line.Value``. Like the kernel, it applies ``active_low`` between the logical values
the caller sees and the physical levels a test sets and checks (``FakeChip.levels``).
"""

from __future__ import annotations

import enum
import types
from dataclasses import dataclass, field


class Direction(enum.Enum):
    AS_IS = 1
    INPUT = 2
    OUTPUT = 3


class Value(enum.Enum):
    INACTIVE = 0
    ACTIVE = 1


@dataclass
class LineSettings:
    direction: Direction = Direction.AS_IS
    active_low: bool = False
    output_value: Value = Value.INACTIVE


@dataclass
class FakeChip:
    """One GPIO chip: physical levels (True = high) per offset, and who holds which line."""

    path: str
    num_lines: int = 32
    levels: dict[int, bool] = field(default_factory=dict)
    requested: dict[int, LineSettings] = field(default_factory=dict)
    requests: int = 0
    fail_io: bool = False  # the chip went away: every read or write fails with EIO


class FakeRequest:
    def __init__(self, chip: FakeChip, config: dict[int, LineSettings]) -> None:
        self.chip = chip
        self.config = config
        self.released = False
        self.set_calls: list[dict[int, Value]] = []

    def _check(self) -> None:
        if self.released:
            raise RuntimeError("request released")  # the bindings' RequestReleasedError
        if self.chip.fail_io:
            raise OSError(5, "Input/output error")

    def get_values(self, lines: list[int]) -> list[Value]:
        self._check()
        out = []
        for offset in lines:
            level = self.chip.levels.get(offset, False)
            active = level != self.config[offset].active_low
            out.append(Value.ACTIVE if active else Value.INACTIVE)
        return out

    def set_values(self, values: dict[int, Value]) -> None:
        self._check()
        for offset, value in values.items():
            if self.config[offset].direction is not Direction.OUTPUT:
                raise OSError(1, "Operation not permitted")
            active = value is Value.ACTIVE
            self.chip.levels[offset] = active != self.config[offset].active_low
        self.set_calls.append(dict(values))

    def release(self) -> None:
        if self.released:
            raise RuntimeError("request released")
        self.released = True
        for offset in self.config:
            self.chip.requested.pop(offset, None)


def make_module(*chips: FakeChip) -> types.ModuleType:
    """A module object to put in ``sys.modules['gpiod']``."""
    by_path = {chip.path: chip for chip in chips}
    module = types.ModuleType("gpiod")
    requests: list[tuple[str, str | None, FakeRequest]] = []
    module.__dict__.update(
        __version__="2.2.0",
        line=types.SimpleNamespace(Direction=Direction, Value=Value),
        LineSettings=LineSettings,
        requests=requests,
    )

    def request_lines(
        path: str, consumer: str | None = None, config: dict[int, LineSettings] | None = None
    ) -> FakeRequest:
        chip = by_path.get(path)
        if chip is None:
            raise FileNotFoundError(2, "No such file or directory", path)
        lines = dict(config or {})
        for offset in lines:
            if not 0 <= offset < chip.num_lines:
                raise ValueError(f"invalid offset {offset}")
            if offset in chip.requested:
                raise OSError(16, "Device or resource busy")
        for offset, settings in lines.items():
            chip.requested[offset] = settings
            if settings.direction is Direction.OUTPUT:
                active = settings.output_value is Value.ACTIVE
                chip.levels[offset] = active != settings.active_low
        chip.requests += 1
        request = FakeRequest(chip, lines)
        requests.append((path, consumer, request))
        return request

    module.__dict__["request_lines"] = request_lines
    return module
