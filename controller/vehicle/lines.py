"""The charger board's digital lines: GPIO through libgpiod, or a file shared with a simulator.

Three ``ChargerLines`` implementations:

* ``GpioLines`` — the real board, through the libgpiod 2 Python bindings (PyPI ``gpiod`` >= 2.1,
  the ``gpio`` extra). The lines are requested once, in ``open``; outputs start inactive; reading
  and writing are single ioctls that never block; ``close`` drives every output inactive and
  releases the request. Active-low lines are inverted by the kernel (``LineSettings.active_low``),
  so this module only ever speaks of logical values: ``True`` = asserted.
* ``SharedFileLines`` — the lines of a *simulated* board in a 32-byte memory-mapped file, so the
  daemon in one process and ``python -m hil.vehicle --lines PATH`` in another see the same lines.
* ``UnwiredLines`` — no board at all: nothing is plugged in and nothing is driven.

Failures become ``VehicleLinkError``; the link then reports DOWN and opens the lines again later.
"""

from __future__ import annotations

import contextlib
import importlib
import mmap
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from controller.errors import VehicleLinkError
from controller.vehicle.frames import LineInputs, LineOutputs

INPUT_LINES = ("plugged", "k", "emergency_stop", "fault_reset", "insulation_ok")
OUTPUT_LINES = ("d1", "d2", "contactors", "lock")
CONSUMER = "v2g-controller"


class UnwiredLines:
    """A charger without board lines: the connector never reads as plugged, outputs go nowhere.

    CHAdeMO and GB/T 27930 sessions never start on it (they wait for ``plugged``); the generic DBC
    profile does not use lines, so a stationary pack needs none.
    """

    def __repr__(self) -> str:
        return "UnwiredLines()"

    def open(self) -> None:
        """Nothing to acquire."""

    def read(self) -> LineInputs:
        """Nothing plugged, k not pulled."""
        return LineInputs()

    def write(self, outputs: LineOutputs) -> None:
        """No line to drive."""

    def close(self) -> None:
        """Nothing to release."""


# --- GPIO (libgpiod 2) ----------------------------------------------------------------------------


def _import_gpiod() -> ModuleType:
    """The gpiod module, imported only where GPIO is used (it needs libgpiod on the board)."""
    try:
        module = importlib.import_module("gpiod")
    except ImportError as exc:
        raise VehicleLinkError(
            "vehicle.lines kind gpio needs the libgpiod 2 Python bindings: "
            f"pip install 'v2g-controller[gpio]' ({exc})"
        ) from None
    if not hasattr(module, "request_lines") or not hasattr(module, "LineSettings"):
        version = getattr(module, "__version__", "unknown")
        raise VehicleLinkError(
            f"the installed gpiod package (version {version}) is not the libgpiod 2 API; "
            "expected gpiod>=2.1,<3 (pip install 'v2g-controller[gpio]')"
        )
    return module


class GpioLines:
    """The board's lines on one GPIO chip (e.g. ``/dev/gpiochip0``).

    ``offsets`` maps line names (``plugged``, ``k``, ``emergency_stop``, ``fault_reset``,
    ``insulation_ok``, ``d1``, ``d2``, ``contactors``, ``lock``) to the chip's line offsets; a
    name left out is not wired (an input reads False, an output is not driven). ``active_low``
    names the lines whose asserted level is low.
    """

    def __init__(
        self,
        chip: str,
        offsets: Mapping[str, int],
        *,
        active_low: Iterable[str] = (),
        consumer: str = CONSUMER,
    ) -> None:
        known = (*INPUT_LINES, *OUTPUT_LINES)
        unknown = sorted(set(offsets) - set(known))
        inverted = frozenset(active_low)
        unknown += sorted(inverted - set(offsets))
        if unknown:
            raise VehicleLinkError(
                f"GPIO lines: expected names among {', '.join(known)} with an offset, "
                f"found {', '.join(unknown)}"
            )
        by_offset: dict[int, str] = {}
        for name, offset in offsets.items():
            if offset in by_offset:
                raise VehicleLinkError(
                    f"GPIO lines: expected one line per offset, found {by_offset[offset]} and "
                    f"{name} both at {offset}"
                )
            by_offset[offset] = name
        self.chip = chip
        self.consumer = consumer
        self._inputs = tuple((name, offsets[name]) for name in INPUT_LINES if name in offsets)
        self._outputs = tuple((name, offsets[name]) for name in OUTPUT_LINES if name in offsets)
        self._active_low = inverted
        self._gpiod: ModuleType | None = None
        self._request: Any = None  # gpiod.LineRequest
        self._written: dict[int, bool] | None = None

    def __repr__(self) -> str:
        lines = ", ".join(
            f"{name}={offset}{'(active-low)' if name in self._active_low else ''}"
            for name, offset in (*self._inputs, *self._outputs)
        )
        state = "open" if self._request is not None else "closed"
        return f"GpioLines({self.chip}: {lines}; {state})"

    def open(self) -> None:
        """Request every configured line once: inputs as inputs, outputs inactive."""
        if self._request is not None:
            return
        gpiod = _import_gpiod()
        direction = gpiod.line.Direction
        value = gpiod.line.Value
        config: dict[int, Any] = {}
        for name, offset in self._inputs:
            config[offset] = gpiod.LineSettings(
                direction=direction.INPUT, active_low=name in self._active_low
            )
        for name, offset in self._outputs:
            config[offset] = gpiod.LineSettings(
                direction=direction.OUTPUT,
                active_low=name in self._active_low,
                output_value=value.INACTIVE,
            )
        try:
            self._request = gpiod.request_lines(self.chip, consumer=self.consumer, config=config)
        except (OSError, ValueError) as exc:
            raise VehicleLinkError(
                f"cannot request GPIO lines {sorted(config)} on {self.chip}: {exc}"
            ) from None
        self._gpiod = gpiod
        self._written = {offset: False for _, offset in self._outputs}

    def read(self) -> LineInputs:
        """The inputs' logical values (one ioctl)."""
        request, gpiod = self._live()
        if not self._inputs:
            return LineInputs()
        try:
            values = request.get_values([offset for _, offset in self._inputs])
        except OSError as exc:
            raise VehicleLinkError(f"cannot read GPIO lines on {self.chip}: {exc}") from None
        active = {
            name: value == gpiod.line.Value.ACTIVE
            for (name, _), value in zip(self._inputs, values, strict=True)
        }
        return LineInputs(
            plugged=active.get("plugged", False),
            k=active.get("k", False),
            emergency_stop=active.get("emergency_stop", False),
            fault_reset=active.get("fault_reset", False),
            insulation_ok=active.get("insulation_ok", False),
        )

    def write(self, outputs: LineOutputs) -> None:
        """Drive the outputs (one ioctl, and none when nothing changed)."""
        request, gpiod = self._live()
        wanted = {offset: bool(getattr(outputs, name)) for name, offset in self._outputs}
        if not wanted or wanted == self._written:
            return
        self._set(request, gpiod, wanted)

    def close(self) -> None:
        """Every output inactive, then release the request; never raises."""
        request, gpiod = self._request, self._gpiod
        self._request = None
        self._written = None
        if request is None or gpiod is None:
            return
        try:
            if self._outputs:
                self._set(request, gpiod, {offset: False for _, offset in self._outputs})
        except VehicleLinkError:
            pass  # the chip is gone: releasing is all that is left to do
        with contextlib.suppress(OSError):  # already released when the chip went away
            request.release()

    def _live(self) -> tuple[Any, ModuleType]:
        if self._request is None or self._gpiod is None:
            raise VehicleLinkError(f"GPIO lines on {self.chip} are not open")
        return self._request, self._gpiod

    def _set(self, request: Any, gpiod: ModuleType, wanted: dict[int, bool]) -> None:
        value = gpiod.line.Value
        try:
            request.set_values(
                {offset: value.ACTIVE if on else value.INACTIVE for offset, on in wanted.items()}
            )
        except OSError as exc:
            self._written = None  # unknown now: write everything next time
            raise VehicleLinkError(f"cannot drive GPIO lines on {self.chip}: {exc}") from None
        self._written = dict(wanted)


# --- a simulated board in a shared file -----------------------------------------------------------

MAGIC = b"V2GLINES"
LAYOUT_VERSION = 1
FILE_SIZE = 32
_VERSION_AT = 8
# Written by the simulated side. fault_reset and insulation_ok took bytes that were always 0, which
# read as "not pressed" and "no insulation OK" (fail-safe: an older simulator's file never passes
# an insulation test it does not model), so the version stays 1.
_INPUT_AT = {"plugged": 16, "k": 17, "emergency_stop": 18, "fault_reset": 19, "insulation_ok": 20}
_OUTPUT_AT = {"d1": 24, "d2": 25, "contactors": 26, "lock": 27}  # written by the charger side

Side = Literal["charger", "vehicle"]


class SharedFileLines:
    """A simulated board's lines in a small memory-mapped file shared by two processes.

    Layout (32 bytes): ``V2GLINES``, a layout version byte, then one byte per line (0 or 1):
    plugged, k, the emergency stop, the fault reset button and the insulation monitor's OK at
    16-20 (written by the simulated side), d1, d2, contactors and lock at 24-27 (written by the
    charger side). Each byte has a single writer, and a one-byte store is atomic, so neither side
    ever reads a torn value and no lock is needed.

    ``side`` says which half this process drives: the charger (the daemon's link) writes the
    outputs and reads the inputs; the simulated side (the car, and the site's E-stop, reset
    button and insulation monitor) sets ``plugged``, ``k``, ``emergency_stop``, ``fault_reset``
    and ``insulation_ok`` and reads ``outputs``. ``close`` lets go of this side's lines: the
    charger's outputs go off, the vehicle's connector is unplugged and the site's inputs
    released. Either side may open first; the file and its directory are created when missing,
    and a file that is not a lines file is refused, never overwritten.
    """

    def __init__(self, path: str | Path, *, side: Side = "charger") -> None:
        self.path = Path(path)
        self.side = side
        self._map: mmap.mmap | None = None

    def __repr__(self) -> str:
        if self._map is None:
            return f"SharedFileLines({self.path}, side={self.side}, closed)"
        return (
            f"SharedFileLines({self.path}, side={self.side}, plugged={self.plugged}, k={self.k}, "
            f"{self.outputs})"
        )

    def open(self) -> None:
        """Map the file, creating it (and its directory) when missing."""
        if self._map is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o660)
        except OSError as exc:
            raise VehicleLinkError(f"cannot open lines file {self.path}: {exc}") from None
        try:
            self._map = self._map_file(fd)
        finally:
            os.close(fd)  # the mapping keeps its own reference to the file
        if self.side == "charger":
            self.write(LineOutputs())

    def _map_file(self, fd: int) -> mmap.mmap:
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                os.ftruncate(fd, FILE_SIZE)
            elif size != FILE_SIZE:
                raise VehicleLinkError(
                    f"{self.path} is not a lines file: expected {FILE_SIZE} bytes, found {size}"
                )
            mapped = mmap.mmap(fd, FILE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise VehicleLinkError(f"cannot map lines file {self.path}: {exc}") from None
        header = mapped[: _VERSION_AT + 1]
        if header == bytes(_VERSION_AT + 1):
            # New (or being created by the other side at this moment: both write the same bytes).
            mapped[:_VERSION_AT] = MAGIC
            mapped[_VERSION_AT] = LAYOUT_VERSION
        elif header != MAGIC + bytes([LAYOUT_VERSION]):
            mapped.close()
            raise VehicleLinkError(
                f"{self.path} is not a lines file: expected it to start with {MAGIC!r} version "
                f"{LAYOUT_VERSION}, found {header!r}"
            )
        return mapped

    def read(self) -> LineInputs:
        """The inputs, as the charger sees them."""
        mapped = self._live()
        return LineInputs(
            plugged=mapped[_INPUT_AT["plugged"]] != 0,
            k=mapped[_INPUT_AT["k"]] != 0,
            emergency_stop=mapped[_INPUT_AT["emergency_stop"]] != 0,
            fault_reset=mapped[_INPUT_AT["fault_reset"]] != 0,
            insulation_ok=mapped[_INPUT_AT["insulation_ok"]] != 0,
        )

    def write(self, outputs: LineOutputs) -> None:
        """The charger drives its outputs."""
        mapped = self._live()
        if self.side != "charger":
            raise VehicleLinkError("the vehicle side of a lines file does not drive the outputs")
        for name, at in _OUTPUT_AT.items():
            mapped[at] = int(bool(getattr(outputs, name)))

    @property
    def outputs(self) -> LineOutputs:
        """The charger's outputs, as the vehicle sees them."""
        mapped = self._live()
        return LineOutputs(**{name: mapped[at] != 0 for name, at in _OUTPUT_AT.items()})

    @property
    def plugged(self) -> bool:
        """The connector is in the inlet."""
        return self._live()[_INPUT_AT["plugged"]] != 0

    @plugged.setter
    def plugged(self, value: bool) -> None:
        self._set_input("plugged", value)

    @property
    def k(self) -> bool:
        """CHAdeMO charge-permission line k, pulled by the vehicle."""
        return self._live()[_INPUT_AT["k"]] != 0

    @k.setter
    def k(self, value: bool) -> None:
        self._set_input("k", value)

    @property
    def emergency_stop(self) -> bool:
        """The charger's emergency stop switch (a simulated site presses it here)."""
        return self._live()[_INPUT_AT["emergency_stop"]] != 0

    @emergency_stop.setter
    def emergency_stop(self, value: bool) -> None:
        self._set_input("emergency_stop", value)

    @property
    def fault_reset(self) -> bool:
        """The board's fault reset button is held down (a simulated technician presses it)."""
        return self._live()[_INPUT_AT["fault_reset"]] != 0

    @fault_reset.setter
    def fault_reset(self, value: bool) -> None:
        self._set_input("fault_reset", value)

    @property
    def insulation_ok(self) -> bool:
        """The simulated insulation monitor's OK relay (the plant models the IMD)."""
        return self._live()[_INPUT_AT["insulation_ok"]] != 0

    @insulation_ok.setter
    def insulation_ok(self, value: bool) -> None:
        self._set_input("insulation_ok", value)

    def close(self) -> None:
        """This side lets go of its lines, then the file is unmapped; never raises."""
        mapped = self._map
        if mapped is None:
            return
        if self.side == "charger":
            for at in _OUTPUT_AT.values():
                mapped[at] = 0
        else:
            for at in _INPUT_AT.values():
                mapped[at] = 0
        mapped.close()
        self._map = None

    def _set_input(self, name: str, value: bool) -> None:
        mapped = self._live()
        if self.side != "vehicle":
            raise VehicleLinkError(f"the charger side of a lines file does not drive {name}")
        mapped[_INPUT_AT[name]] = int(bool(value))

    def _live(self) -> mmap.mmap:
        if self._map is None:
            raise VehicleLinkError(f"lines file {self.path} is not open")
        return self._map
