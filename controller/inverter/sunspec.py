"""SunSpec over Modbus: discovery of the model chain, reading and writing points by name.

Discovery (SunSpec Modbus spec, "Device discovery"): the client looks for "SunS" (0x5375 0x6E53)
at base addresses 40000, 0 and 50000, moving on after any failure there (an exception reply,
no reply, another value), as pysunspec2 does; then it walks ``[ID, L, ...L registers]`` blocks
until ID 0xFFFF, reading each block's ID and L in one request. Values carry scale factors
(value = raw x 10^SF) held in their own ``sunssf`` points.

Requests are what a slow device charges for (600 ms each on some; issue 16, item 6), so reads
are planned (``plan_reads``): the models (or the points of them) a caller needs are read in as
few requests as the 125-register limit allows, neighbours merged across small gaps, and a model
is never read beyond its definition's length, whatever L the device reports. A point of a
repeating group (``Prt[0].DCV`` of 714) is read only when named, up to that point and never
past the device's L; ``ModelValues.repeat_count`` says how many repeats the device has, after
checking its L (and count point) against the group's layout.

A model with no usable definition (a vendor model, a type the loader does not know) is walked
past, never fatal. A chain that leaves the Modbus address space (a corrupt L) is a
ProtocolError: nothing but the project's own errors leaves this module (issue 16, items 1, 4).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controller.errors import InverterLinkError, ProtocolError
from controller.inverter.codec import check_scale_factor, decode, encode
from controller.inverter.sunspec_models import GroupLayoutError, ModelDef, usable_model_def
from controller.inverter.transport import (
    MAX_READ_REGISTERS,
    ModbusExceptionResponse,
    ModbusTransport,
    NotConnectedError,
)

SUNS_MARKER = (0x5375, 0x6E53)  # "SunS"
BASE_ADDRESSES = (40000, 0, 50000)
END_MODEL_ID = 0xFFFF
MAX_MODELS = 64  # a real device has a handful; more means the chain is corrupt
LAST_ADDRESS = 0xFFFF  # Modbus register addresses are 16 bits (Modbus application protocol 4.4)
ILLEGAL_DATA_ADDRESS = 2  # Modbus exception code
# Registers a merged read may carry that nobody asked for, between two needed spans. A request
# costs its two frames, two silences and the device's turnaround (600 ms on some inverters);
# 64 registers cost 128 bytes, 133 ms at 9600 baud, and nothing over TCP.
MERGE_GAP_REGISTERS = 64


@dataclass(frozen=True, slots=True)
class ModelBlock:
    model_id: int
    address: int  # of the model's ID register
    length: int  # L, as the device reports it
    definition: ModelDef | None  # None for models this package does not know


class ModelValues:
    """One model's registers as read, with points decoded by name."""

    def __init__(self, block: ModelBlock, registers: list[int]) -> None:
        if block.definition is None:
            raise ProtocolError(f"model {block.model_id} has no definition")
        self.block = block
        self.definition: ModelDef = block.definition
        self.registers = registers

    def raw(self, name: str) -> int | float | str | None:
        """The point's raw value; None when not implemented or beyond this device's model L.

        A point that exists on the device but lies beyond the registers read (the caller
        asked ``read_models`` for other points) is a ProtocolError: never a silent None."""
        point = self.definition.point(name)
        end = point.offset + point.size
        if end > self.block.length + 2:
            return None  # an older, shorter revision of the model: the point is absent
        if end > len(self.registers):
            raise ProtocolError(
                f"point {name} of model {self.block.model_id} was not read "
                f"({len(self.registers)} of its registers were)"
            )
        return decode(self.registers[point.offset : end], point.reg_type, sunspec_sentinels=True)

    def scale_factor(self, name: str) -> int:
        point = self.definition.point(name)
        if point.sf is None:
            return 0
        if isinstance(point.sf, int):
            return point.sf
        raw = self.raw(point.sf)
        return check_scale_factor(raw if isinstance(raw, int) else None)

    def value(self, name: str) -> float | None:
        """The point in engineering units (scale factor applied); None if not implemented."""
        raw = self.raw(name)
        if raw is None:
            return None
        if not isinstance(raw, int | float):
            raise ProtocolError(f"point {name} is not numeric")
        return float(raw) * (10.0 ** self.scale_factor(name))

    def integer(self, name: str) -> int | None:
        raw = self.raw(name)
        if raw is None:
            return None
        if not isinstance(raw, int):
            raise ProtocolError(f"point {name} is not an integer")
        return raw

    def text(self, name: str) -> str | None:
        raw = self.raw(name)
        return raw if isinstance(raw, str) else None

    def repeat_count(self) -> int:
        """How many repeats of the model's repeating group the device has (714: its ports).

        Its L must hold the fixed part and whole repeats, and where the definition names a
        count point (714 NPrt, which must have been read) it must say the same number: a device
        whose L and count disagree is a GroupLayoutError, never a guess at which one is right."""
        count = self.definition.repeats_in(self.block.length)  # raises without a group
        group = self.definition.repeating
        assert group is not None  # noqa: S101  repeats_in raised otherwise
        if group.count_point is not None:
            declared = self.integer(group.count_point)
            if declared != count:
                raise GroupLayoutError(
                    f"model {self.block.model_id}: {group.count_point} = {declared} but "
                    f"L={self.block.length} holds {count} {group.name} groups"
                )
        return count


class SunSpecDevice:
    """A discovered SunSpec device: the model chain and point access."""

    def __init__(self, transport: ModbusTransport, base: int, blocks: list[ModelBlock]) -> None:
        self.transport = transport
        self.base = base
        self.blocks = blocks
        self._by_id: dict[int, ModelBlock] = {}
        for block in blocks:
            self._by_id.setdefault(block.model_id, block)  # the first instance is the one used

    @property
    def model_ids(self) -> list[int]:
        return [block.model_id for block in self.blocks]

    def has(self, model_id: int) -> bool:
        return model_id in self._by_id

    def block(self, model_id: int) -> ModelBlock:
        try:
            return self._by_id[model_id]
        except KeyError:
            raise InverterLinkError(f"device has no SunSpec model {model_id}") from None

    @classmethod
    async def discover(cls, transport: ModbusTransport) -> SunSpecDevice:
        """Find the SunSpec marker and walk the model chain: one request per model header."""
        base = await _find_base(transport)
        blocks: list[ModelBlock] = []
        address = base + 2
        for _ in range(MAX_MODELS):
            if address > LAST_ADDRESS:
                raise ProtocolError(
                    f"SunSpec chain at {base} runs past register {LAST_ADDRESS} "
                    f"(next model at {address}; models so far {[b.model_id for b in blocks]})"
                )
            model_id, length = await _read_header(transport, address)
            if model_id == END_MODEL_ID:
                return cls(transport, base, blocks)
            if length is None:
                raise ProtocolError(f"model {model_id} at {address} has no room for its length L")
            if address + 2 + length - 1 > LAST_ADDRESS:
                raise ProtocolError(
                    f"model {model_id} at {address} with L={length} ends past register "
                    f"{LAST_ADDRESS}: a corrupt length"
                )
            # None for a model without a usable definition: walked past, logged once, not fatal.
            definition = usable_model_def(model_id)
            # A shorter L than the definition's is an older revision of the model (704 and 802
            # were revised in 2024-25): points beyond L are treated as absent, never guessed.
            blocks.append(ModelBlock(model_id, address, length, definition))
            address += length + 2
        raise ProtocolError(f"SunSpec chain at {base} has more than {MAX_MODELS} models")

    async def read(self, model_id: int) -> ModelValues:
        """One model, up to its definition's length (a longer L is not read)."""
        return (await self.read_models({model_id: None}))[model_id]

    async def read_models(
        self, wanted: Mapping[int, Iterable[str] | None]
    ) -> dict[int, ModelValues]:
        """Several models in as few requests as the 125-register limit allows.

        ``wanted`` maps a model id to the names of the points the caller will use (their scale
        factors are added), or to None for the whole model (its fixed part). A model is read
        from its ID register up to the last register needed, never beyond its definition's
        length (a repeat's point: never beyond its L); neighbouring spans share a request when
        the registers between them are few (``plan_reads``). Each model's ID and L are checked
        against discovery: a chain that changed under the link (a firmware update) is a
        ProtocolError, never values from the wrong place."""
        extents = {model_id: self._extent(model_id, points) for model_id, points in wanted.items()}
        spans = [
            (self.block(model_id).address, self.block(model_id).address + count)
            for model_id, count in extents.items()
        ]
        registers: dict[int, int] = {}
        for start, count in plan_reads(spans):
            values = await self.transport.read_holding(start, count)
            registers.update(zip(range(start, start + count), values, strict=True))
        result: dict[int, ModelValues] = {}
        for model_id, count in extents.items():
            block = self.block(model_id)
            values = [registers[block.address + offset] for offset in range(count)]
            if values[0] != model_id or values[1] != block.length:
                raise ProtocolError(
                    f"model {model_id} (L={block.length}) expected at {block.address}, found "
                    f"ID {values[0]} L={values[1]}: the chain changed, discover it anew"
                )
            result[model_id] = ModelValues(block, values)
        return result

    def _extent(self, model_id: int, points: Iterable[str] | None) -> int:
        """Registers to read from the model's ID register: ID and L, the named points and their
        scale factors, or the whole model; never past its definition nor past its L."""
        block = self.block(model_id)
        if block.definition is None:
            raise ProtocolError(f"model {model_id} has no definition")
        definition = block.definition
        whole = min(block.length, definition.length) + 2
        if points is None:
            return whole
        end = 2
        for name in points:
            point = definition.point(name)
            end = max(end, point.offset + point.size)
            if isinstance(point.sf, str):
                sf_point = definition.point(point.sf)
                end = max(end, sf_point.offset + sf_point.size)
        # Only a repeat's point (named by the caller) lies past the fixed part: it is read up to
        # the device's L, beyond which it is absent.
        return min(end, whole if end <= definition.length + 2 else block.length + 2)

    def encode_points(
        self, model_id: int, values: Mapping[str, int | float | str]
    ) -> list[tuple[int, list[int]]]:
        """Raw point values to (address, registers) runs, contiguous points merged."""
        block = self.block(model_id)
        if block.definition is None:
            raise ProtocolError(f"model {model_id} has no definition")
        pieces: list[tuple[int, list[int]]] = []
        for name, raw in values.items():
            point = block.definition.point(name)
            if not point.writable:
                raise ProtocolError(f"point {name} of model {model_id} is read-only")
            if point.offset + point.size > block.length + 2:
                raise InverterLinkError(
                    f"point {name} lies beyond model {model_id}'s length on this device"
                )
            try:
                regs = encode(raw, point.reg_type, string_words=point.size)
            except ProtocolError as exc:  # codec.EncodingError: the value does not fit
                raise ProtocolError(f"model {model_id} {name} = {raw!r} refused: {exc}") from None
            pieces.append((block.address + point.offset, regs))
        return _merge(pieces)

    async def write_verified(self, model_id: int, values: Mapping[str, int | float | str]) -> None:
        """Write points, read them back, and raise if the device holds anything else."""
        runs = self.encode_points(model_id, values)
        for address, registers in runs:
            await self.transport.write_registers(address, registers)
        held: dict[int, int] = {}
        # Read back in as few requests as the runs allow (a gap of a few registers is read too).
        spans = [(address, address + len(registers)) for address, registers in runs]
        for start, count in plan_reads(spans):
            readback = await self.transport.read_holding(start, count)
            held.update(zip(range(start, start + count), readback, strict=True))
        for address, registers in runs:
            readback = [held[address + i] for i in range(len(registers))]
            if readback != registers:
                raise SetpointNotTakenError(
                    f"model {model_id} at {address}: wrote {registers}, read back {readback}"
                )


class SetpointNotTakenError(InverterLinkError):
    """A write was acknowledged but the read-back shows other values."""


def _merge(pieces: Iterable[tuple[int, list[int]]]) -> list[tuple[int, list[int]]]:
    runs: list[tuple[int, list[int]]] = []
    for address, regs in sorted(pieces, key=lambda p: p[0]):
        if runs and runs[-1][0] + len(runs[-1][1]) == address:
            runs[-1] = (runs[-1][0], runs[-1][1] + regs)
        else:
            runs.append((address, list(regs)))
    return runs


def plan_reads(
    spans: Iterable[tuple[int, int]],
    *,
    max_count: int = MAX_READ_REGISTERS,
    max_gap: int = MERGE_GAP_REGISTERS,
) -> list[tuple[int, int]]:
    """(address, count) reads covering every ``(start, end)`` span (end exclusive).

    Pure. Overlapping spans are joined; a span joins the read before it when the registers
    between them are at most ``max_gap`` and the read stays within ``max_count``; a span that
    does not fit starts a new read (it is not split across two, so a multi-register point in it
    is read at one instant), unless it is longer than one read on its own. A read starts and
    ends on a needed register, so it never reaches past the chain it was planned on.
    """
    joined: list[tuple[int, int]] = []
    for start, end in sorted(span for span in spans if span[1] > span[0]):
        if joined and start < joined[-1][1]:
            joined[-1] = (joined[-1][0], max(joined[-1][1], end))
        else:
            joined.append((start, end))
    reads: list[tuple[int, int]] = []  # (start, end)
    for span_start, span_end in joined:
        start = span_start
        if reads:
            read_start, read_end = reads[-1]
            if start - read_end <= max_gap and span_end - read_start <= max_count:
                reads[-1] = (read_start, span_end)
                continue
        while span_end - start > max_count:
            reads.append((start, start + max_count))
            start += max_count
        reads.append((start, span_end))
    return [(start, end - start) for start, end in reads]


async def _read_header(transport: ModbusTransport, address: int) -> tuple[int, int | None]:
    """A model's ID and L in one request; L is None for an end marker that has none.

    Some devices end the chain with 0xFFFF and no L register (SunSpec device discovery), so a
    read of two registers there may answer "illegal data address": the ID is then read alone."""
    if address == LAST_ADDRESS:
        (model_id,) = await transport.read_holding(address, 1)
        return model_id, None
    try:
        model_id, length = await transport.read_holding(address, 2)
    except ModbusExceptionResponse as exc:
        if exc.code != ILLEGAL_DATA_ADDRESS:
            raise
        (model_id,) = await transport.read_holding(address, 1)
        if model_id != END_MODEL_ID:
            raise
        return model_id, None
    return model_id, length


async def _find_base(transport: ModbusTransport) -> int:
    """The first base address holding 'SunS'. Any failure at one base (an exception reply, no
    reply, a reply that does not match) moves on to the next, as pysunspec2 does: a device may
    be silent at 40000 and answer at 0. Only a link that cannot connect at all ends the search."""
    tried: list[str] = []
    for base in BASE_ADDRESSES:
        try:
            marker = await transport.read_holding(base, 2)
        except NotConnectedError:
            raise
        except ModbusExceptionResponse as exc:
            tried.append(f"{base}: exception {exc.code}")
            continue
        except InverterLinkError as exc:
            tried.append(f"{base}: {exc}")
            continue
        if tuple(marker) == SUNS_MARKER:
            return base
        tried.append(f"{base}: {marker[0]:#06x} {marker[1]:#06x}")
    raise InverterLinkError("no SunSpec marker 'SunS' found (" + "; ".join(tried) + ")")
