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
- ``reply_delay_s``: answer late;
- ``stuck_setpoint``: acknowledge setpoint writes but keep the old value;
- ``trip(reason)``: the power stage faults (0 W, fault state in the registers);
- ``disconnect_clients()``: close every TCP connection.

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
from collections.abc import Callable

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hil.inverter.profiles import Profile
from hil.inverter.stage import PowerStage

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
        self.stuck_setpoint = False
        self.requests = 0
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
        self.requests += 1
        if self.reply_delay_s > 0:
            await asyncio.sleep(self.reply_delay_s)
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
        server = ModbusTcpServer(
            self._device(), address=(host, port), trace_packet=self._trace_packet
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
        server = ModbusSerialServer(
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
