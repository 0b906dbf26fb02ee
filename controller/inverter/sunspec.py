"""SunSpec over Modbus: discovery of the model chain, reading and writing points by name.

Discovery (SunSpec Modbus spec, "Device discovery"): the client looks for "SunS" (0x5375 0x6E53)
at base addresses 40000, 0 and 50000, then walks ``[ID, L, ...L registers]`` blocks until ID
0xFFFF. Values carry scale factors (value = raw x 10^SF) held in their own ``sunssf`` points.

A model with no usable definition (a vendor model, a type the loader does not know) is walked
past, never fatal. A chain that leaves the Modbus address space (a corrupt L) is a
ProtocolError: nothing but the project's own errors leaves this module (issue 16, items 1, 4).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controller.errors import InverterLinkError, ProtocolError
from controller.inverter.codec import check_scale_factor, decode, encode
from controller.inverter.sunspec_models import ModelDef, usable_model_def
from controller.inverter.transport import ModbusExceptionResponse, ModbusTransport

SUNS_MARKER = (0x5375, 0x6E53)  # "SunS"
BASE_ADDRESSES = (40000, 0, 50000)
END_MODEL_ID = 0xFFFF
MAX_MODELS = 64  # a real device has a handful; more means the chain is corrupt
LAST_ADDRESS = 0xFFFF  # Modbus register addresses are 16 bits (Modbus application protocol 4.4)


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
        """The point's raw value; None when not implemented or beyond this device's model L."""
        point = self.definition.point(name)
        end = point.offset + point.size
        if end > len(self.registers):
            return None  # an older, shorter revision of the model: the point is absent
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
        """Find the SunSpec marker and walk the model chain."""
        base = await _find_base(transport)
        blocks: list[ModelBlock] = []
        address = base + 2
        for _ in range(MAX_MODELS):
            if address > LAST_ADDRESS:
                raise ProtocolError(
                    f"SunSpec chain at {base} runs past register {LAST_ADDRESS} "
                    f"(next model at {address}; models so far {[b.model_id for b in blocks]})"
                )
            (model_id,) = await transport.read_holding(address, 1)
            if model_id == END_MODEL_ID:
                return cls(transport, base, blocks)
            if address + 1 > LAST_ADDRESS:
                raise ProtocolError(f"model {model_id} at {address} has no room for its length L")
            (length,) = await transport.read_holding(address + 1, 1)
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
        block = self.block(model_id)
        registers = await self.transport.read_holding(block.address, block.length + 2)
        if registers[0] != model_id:
            raise ProtocolError(
                f"model {model_id} expected at {block.address}, found ID {registers[0]}"
            )
        return ModelValues(block, registers)

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
        for address, registers in runs:
            readback = await self.transport.read_holding(address, len(registers))
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


async def _find_base(transport: ModbusTransport) -> int:
    tried: list[str] = []
    for base in BASE_ADDRESSES:
        try:
            marker = await transport.read_holding(base, 2)
        except ModbusExceptionResponse as exc:
            tried.append(f"{base}: exception {exc.code}")
            continue
        if tuple(marker) == SUNS_MARKER:
            return base
        tried.append(f"{base}: {marker[0]:#06x} {marker[1]:#06x}")
    raise InverterLinkError("no SunSpec marker 'SunS' found (" + "; ".join(tried) + ")")
