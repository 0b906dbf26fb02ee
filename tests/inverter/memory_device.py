"""An in-memory Modbus device behind the real ModbusTransport, for fuzz tests that need
thousands of devices: no sockets, no simulator task, one dict of registers.

Only the last step (``_request``) is replaced: the transport's own request splitting (125
registers per read, 123 per write) and reply checks still run. Requests are encoded by
pymodbus's own request classes, so a request the wire could not carry (an address past 65535)
fails exactly as it would on a real link. An address the device does not hold answers
exception 2 (illegal data address), as a real device does.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteMultipleRegistersResponse,
)

from controller.inverter.sunspec import SUNS_MARKER
from controller.inverter.sunspec_models import usable_model_def
from controller.inverter.transport import ModbusExceptionResponse, ModbusTransport, TcpEndpoint
from hil.inverter.sunspec_image import END_MARKER, SunSpecImage

ILLEGAL_DATA_ADDRESS = 2
VENDOR_LENGTH = 8


class MemoryTransport(ModbusTransport):
    """Holding (and input) registers in one dict, address -> 16-bit value."""

    def __init__(self, registers: dict[int, int] | None = None) -> None:
        super().__init__(TcpEndpoint("memory", 0), 1)
        self.registers: dict[int, int] = dict(registers or {})
        self.writes: list[tuple[int, list[int]]] = []

    def load(self, start: int, values: Iterable[int]) -> None:
        for offset, value in enumerate(values):
            self.registers[start + offset] = value

    @property
    def connected(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    async def _request(
        self, function: int, address: int, count: int, values: list[int] | None
    ) -> ModbusPDU:
        self.requests += 1
        if function == 16:
            assert values is not None  # function 16 always carries values
            WriteMultipleRegistersRequest(address=address, registers=values).encode()
        elif function == 4:
            ReadInputRegistersRequest(address=address, count=count).encode()
        else:
            ReadHoldingRegistersRequest(address=address, count=count).encode()
        span = range(address, address + count)
        if any(a not in self.registers for a in span):
            raise ModbusExceptionResponse(function, address, ILLEGAL_DATA_ADDRESS)
        if values is not None:
            self.load(address, values)
            self.writes.append((address, list(values)))
            return WriteMultipleRegistersResponse(address=address, count=count)
        return ReadHoldingRegistersResponse(registers=[self.registers[a] for a in span])


def model_block(model_id: int, *, repeats: int | None = None) -> list[int]:
    """``[ID, L, points...]`` of one model with every point at its SunSpec not-implemented
    value (built by hil's SunSpecImage from the same definitions), with ``repeats`` repeats of
    its repeating group (714: ports) where given; a model with no definition (a vendor model)
    gets L = 8 registers of 0."""
    return list(_model_block(model_id, repeats))


@functools.cache
def _model_block(model_id: int, repeats: int | None) -> tuple[int, ...]:
    if usable_model_def(model_id) is None:
        return (model_id, VENDOR_LENGTH, *[0] * VENDOR_LENGTH)
    counts = {} if repeats is None else {model_id: repeats}
    return tuple(SunSpecImage(0, [model_id], repeats=counts).registers[2:-2])


def sunspec_device(
    base: int, blocks: Iterable[Sequence[int]], *, end: bool = True
) -> MemoryTransport:
    """A device with 'SunS' at ``base``, the blocks in order and (if ``end``) the end marker."""
    registers = list(SUNS_MARKER)
    for block in blocks:
        registers.extend(block)
    if end:
        registers.extend(END_MARKER)
    transport = MemoryTransport()
    transport.load(base, registers[: 0x10000 - base])
    return transport
