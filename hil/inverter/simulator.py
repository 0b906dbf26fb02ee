"""A simulated bidirectional inverter: a real pymodbus server over TCP or RTU with fault injection.

The server answers from a register image owned by a profile (SunSpec 700, SunSpec 100 or a
vendor register map); every write moves the simulated power stage, which ramps, clips to its
ratings, reverts to 0 W on its own timer and counts energy. Faults are injected by setting
attributes while it runs:

- ``exception_code``: answer every request with this Modbus exception code;
- ``busy_next``: answer the next N requests with exception 6 (server device busy), then normally;
- ``busy_probability``: answer each request with exception 6 with this probability (a busy
  device; seeded by ``busy_seed``, so a run repeats);
- ``drop_replies``: answer nothing (the client times out);
- ``reply_delay_s``: answer every request this late, exception replies too (a slow device:
  Fronius-class inverters take 600 ms);
- ``silent_at``: address ranges at which the device answers nothing at all, not even an
  exception (a device silent at SunSpec base 40000 that answers at 0); nothing is read or written;
- ``max_connections`` and ``extra_connection``: a device that serves only so many TCP
  connections (real inverters often take one): a connection beyond it is closed at once
  (``"refuse"``), or the oldest is dropped for it (``"replace"``);
- ``stuck_setpoint``: acknowledge setpoint writes but keep the old value;
- ``trip(reason)``: the power stage faults (0 W, fault state in the registers);
- ``disconnect_clients()``: close every TCP connection.

``relocate(profile, base)`` moves a SunSpec profile's chain to another base address (0, 50000).

``write_log`` keeps the last ``WRITE_LOG_LENGTH`` setpoint writes as (``time.monotonic_ns()``
when the write landed, the stage's new target in W) for the latency benchmark: CLOCK_MONOTONIC is
system-wide, so another process on the host can compare its own timestamps with these.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from hil.inverter.profiles import Profile
from hil.inverter.stage import PowerStage
from hil.inverter.sunspec_image import SunSpecImage

WRITE_FUNCTIONS = {6, 16, 22, 23}
TICK_S = 0.05
WRITE_LOG_LENGTH = 4096


class InverterSimulator:
    """One simulated inverter on one Modbus server."""

    def __init__(
        self,
        profile: Profile,
        stage: PowerStage,
        *,
        unit_id: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.stage = stage
        self.unit_id = unit_id
        self._clock = clock
        self.exception_code: int | None = None
        self.busy_next = 0
        self.busy_probability = 0.0
        self.busy_seed = 6
        self._busy_rng = random.Random(self.busy_seed)  # noqa: S311  a simulation, not secrets
        self.busy_answers = 0
        self.drop_replies = False
        self.reply_delay_s = 0.0
        self.silent_at: list[range] = []
        self.max_connections: int | None = None
        self.extra_connection: Literal["refuse", "replace"] = "refuse"
        self.stuck_setpoint = False
        self.requests = 0  # every request received, answered or not
        self.silenced = 0  # requests left unanswered (silent_at)
        self.connections = 0  # TCP connections accepted
        self.connections_refused = 0
        self.connections_dropped = 0  # older connections dropped for a newer one
        self.setpoint_writes = 0
        self.write_log: deque[tuple[int, float]] = deque(maxlen=WRITE_LOG_LENGTH)
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.port: int | None = None

    # -- fault injection ----------------------------------------------------------------------

    def trip(self, reason: str) -> None:
        self.stage.advance(self._clock())
        self.stage.fault = reason

    def clear_fault(self) -> None:
        self.stage.fault = None

    def disconnect_clients(self) -> None:
        if self._server is None:
            return
        for connection in list(self._server.active_connections.values()):
            connection.close()

    @property
    def open_connections(self) -> int:
        """TCP connections the device holds now (a refused one closes at once)."""
        if self._server is None:
            return 0
        return sum(
            1
            for c in self._server.active_connections.values()
            if not (isinstance(c, _Handler) and c.refused)
        )

    def silent_for(self, pdu: ModbusPDU) -> bool:
        """Whether a request touches a range in ``silent_at``."""
        address = int(getattr(pdu, "address", 0))
        count = max(1, int(getattr(pdu, "count", 1)))
        return any(address < r.stop and r.start < address + count for r in self.silent_at)

    # -- server -------------------------------------------------------------------------------

    def _device(self) -> SimDevice:
        registers = self.profile.registers
        return SimDevice(
            id=self.unit_id,
            simdata=[
                SimData(
                    self.profile.start_address,
                    values=list(registers),
                    datatype=DataType.REGISTERS,
                )
            ],
            action=self._action,
        )

    async def _action(  # noqa: PLR0917  the signature pymodbus's SimDevice action calls
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self.exception_code is not None:
            return ExcCodes(self.exception_code)
        if self.busy_next > 0 or (
            self.busy_probability > 0 and self._busy_rng.random() < self.busy_probability
        ):
            self.busy_next = max(0, self.busy_next - 1)
            self.busy_answers += 1
            return ExcCodes.DEVICE_BUSY
        now_s = self._clock()
        self.profile.bind(registers)
        if function_code in WRITE_FUNCTIONS and set_values is not None:
            values = [int(v) for v in set_values]
            sp_address, sp_count = self.profile.setpoint_span()
            touches_setpoint = address < sp_address + sp_count and sp_address < address + count
            if touches_setpoint:
                self.setpoint_writes += 1
            if touches_setpoint and self.stuck_setpoint:
                # Acknowledge, but keep the old setpoint: the controller's read-back must see it.
                for i in range(count):
                    if sp_address <= address + i < sp_address + sp_count:
                        values[i] = registers[address + i - start_address]
                set_values[:] = values  # type: ignore[assignment]  # registers, not bits
            offset = address - start_address
            registers[offset : offset + count] = values
            self.profile.apply_write(self.stage, address, count, now_s)
            if touches_setpoint:
                self.write_log.append((time.monotonic_ns(), self.stage.target_w))
        self.profile.refresh(self.stage, now_s)
        return None

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending and self.drop_replies:
            return b""
        return data

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on TCP; returns the port (a free one when ``port`` is 0)."""
        server = _TcpServer(
            self, self._device(), address=(host, port), trace_packet=self._trace_packet
        )
        await server.serve_forever(background=True)
        self._server = server
        sockets = getattr(server.transport, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        self._start_ticker()
        return self.port

    async def start_serial(
        self, device: str, *, baudrate: int = 9600, parity: str = "N", stop_bits: int = 1
    ) -> None:
        """Answer Modbus RTU on a serial device (a socat pty in tests)."""
        server = _SerialServer(
            self,
            self._device(),
            framer=FramerType.RTU,
            port=device,
            baudrate=baudrate,
            parity=parity,
            stopbits=stop_bits,
            trace_packet=self._trace_packet,
        )
        await server.serve_forever(background=True)
        self._server = server
        self._start_ticker()

    def _start_ticker(self) -> None:
        async def tick() -> None:
            while True:
                self.stage.advance(self._clock())
                await asyncio.sleep(TICK_S)

        self._ticker = asyncio.create_task(tick(), name="inverter-sim-ticker")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None


def relocate(profile: Profile, base: int) -> Profile:
    """The SunSpec profile with its chain moved to ``base`` (0 or 50000, as some devices have
    it): the same registers, every address shifted. Call before the simulator starts."""
    image = getattr(profile, "image", None)
    if not isinstance(image, SunSpecImage):
        raise TypeError(f"profile {profile.name} has no SunSpec image to move")
    image.relocate(base)
    profile.start_address = base
    return profile


class _Handler(ServerRequestHandler):
    """pymodbus's per-connection request handler, with the simulator's answer policy: late
    (``reply_delay_s``), not at all (``silent_at``), or closed at once (a refused connection)."""

    def __init__(self, owner: _TcpServer | _SerialServer, simulator: InverterSimulator) -> None:
        super().__init__(owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect)  # type: ignore[no-untyped-call]
        self.simulator = simulator
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.refused:
            transport.close()

    async def handle_request(self) -> None:
        pdu = self.last_pdu
        if pdu is None:
            return
        sim = self.simulator
        sim.requests += 1
        if sim.silent_for(pdu):
            sim.silenced += 1
            return  # as a device that does not decode this address: no reply at all
        if sim.reply_delay_s > 0:
            await asyncio.sleep(sim.reply_delay_s)
            self.last_pdu = pdu  # another request may have arrived meanwhile: answer this one
        await super().handle_request()  # type: ignore[no-untyped-call]


class _TcpServer(ModbusTcpServer):
    def __init__(
        self,
        simulator: InverterSimulator,
        device: SimDevice,
        *,
        address: tuple[str, int],
        trace_packet: Callable[[bool, bytes], bytes],
    ) -> None:
        super().__init__(device, address=address, trace_packet=trace_packet)
        self.simulator = simulator

    def callback_new_connection(self) -> _Handler:
        sim = self.simulator
        handler = _Handler(self, sim)
        held: Sequence[ServerRequestHandler] = [
            c for c in self.active_connections.values() if isinstance(c, _Handler) and not c.refused
        ]
        if sim.max_connections is not None and len(held) >= sim.max_connections:
            if sim.extra_connection == "refuse":
                handler.refused = True
                sim.connections_refused += 1
                return handler
            for connection in held[: len(held) - sim.max_connections + 1]:  # the oldest first
                connection.close()
                sim.connections_dropped += 1
        sim.connections += 1
        return handler


class _SerialServer(ModbusSerialServer):
    def __init__(
        self,
        simulator: InverterSimulator,
        device: SimDevice,
        *,
        framer: FramerType,
        port: str,
        baudrate: int,
        parity: str,
        stopbits: int,
        trace_packet: Callable[[bool, bytes], bytes],
    ) -> None:
        super().__init__(
            device,
            framer=framer,
            port=port,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            trace_packet=trace_packet,
        )
        self.simulator = simulator

    def callback_new_connection(self) -> _Handler:
        return _Handler(self, self.simulator)
