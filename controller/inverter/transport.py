"""One Modbus link (TCP or RTU) with the discipline field inverters need.

- One outstanding request per link: pymodbus does not serialise callers, so a lock does.
- A per-request timeout (default 1 s) and at most ``retries`` retries for timeouts and I/O
  errors. An exception response is an answer, never retried, except "acknowledge" (5) and
  "server device busy" (6), which mean "try again later" (Modbus application protocol 1.1b3,
  section 7): retried with a growing pause (``BUSY_BACKOFF_S``) for as long as the request's
  budget allows (``timeout_s`` x (``retries`` + 1)), and only then an error.
- After a timeout the connection is dropped and reopened after a quiet period, so a late reply
  can never be taken as the answer to the next request (RTU frames carry no transaction id).
  Every reply is also checked against its request (function, address, register count).
- RTU requests are spaced by at least the 3.5-character silent interval (Modbus over serial
  line V1.02, 2.5.1.1; a fixed 1.75 ms above 19200 baud).
- Reconnects with capped exponential backoff.

pymodbus exceptions never leave this module: they become ``InverterLinkError`` or
``ModbusExceptionResponse``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from controller.cancellation import guarded
from controller.errors import InverterLinkError

MAX_READ_REGISTERS = 125  # Modbus application protocol 6.3
MAX_WRITE_REGISTERS = 123  # Modbus application protocol 6.12
# Exception codes that mean "busy, try again" (Modbus application protocol section 7).
BUSY_CODES = frozenset({5, 6})
# The pause before retrying a busy reply: doubles from the first to the last value.
BUSY_BACKOFF_S = (0.02, 0.2)

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class ModbusExceptionResponse(InverterLinkError):  # noqa: N818  named after the Modbus term
    """The inverter answered with a Modbus exception code."""

    def __init__(self, function: int, address: int, code: int) -> None:
        self.function = function
        self.address = address
        self.code = code
        name = _EXCEPTION_NAMES.get(code, "unknown")
        super().__init__(f"exception {code} ({name}) for function {function} at address {address}")


@dataclass(frozen=True, slots=True)
class TcpEndpoint:
    host: str
    port: int = 502


@dataclass(frozen=True, slots=True)
class SerialEndpoint:
    device: str
    baudrate: int = 9600
    parity: str = "N"
    stop_bits: int = 1
    byte_size: int = 8

    @property
    def silent_interval_s(self) -> float:
        """3.5 character times (Modbus over serial line 2.5.1.1), 1.75 ms above 19200 baud."""
        if self.baudrate > 19_200:
            return 0.00175
        bits_per_char = 1 + self.byte_size + (0 if self.parity == "N" else 1) + self.stop_bits
        return 3.5 * bits_per_char / self.baudrate


Endpoint = TcpEndpoint | SerialEndpoint


class ModbusTransport:
    """Reads and writes holding registers on one unit, one request at a time."""

    def __init__(
        self,
        endpoint: Endpoint,
        unit_id: int,
        *,
        timeout_s: float = 1.0,
        retries: int = 2,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self.unit_id = unit_id
        self.timeout_s = timeout_s
        self.retries = retries
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._backoff_s = 0.0
        self._next_connect_s = 0.0
        self._lock = asyncio.Lock()
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._suspect = False  # a request timed out: reopen before the next one
        self._last_io_s = 0.0
        self.requests = 0
        self.timeouts = 0
        self.busy_replies = 0  # exception 5 or 6 answers retried

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def describe(self) -> str:
        if isinstance(self.endpoint, TcpEndpoint):
            return f"tcp://{self.endpoint.host}:{self.endpoint.port} unit {self.unit_id}"
        return f"rtu:{self.endpoint.device}@{self.endpoint.baudrate} unit {self.unit_id}"

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        # pymodbus's own retries and reconnects are off: this class owns both policies.
        if isinstance(self.endpoint, TcpEndpoint):
            return AsyncModbusTcpClient(
                self.endpoint.host,
                port=self.endpoint.port,
                timeout=self.timeout_s,
                retries=0,
                reconnect_delay=0,
            )
        return AsyncModbusSerialClient(
            self.endpoint.device,
            baudrate=self.endpoint.baudrate,
            parity=self.endpoint.parity,
            stopbits=self.endpoint.stop_bits,
            bytesize=self.endpoint.byte_size,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,
        )

    async def _ensure_connected(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if self._suspect:
            self._drop()
            if isinstance(self.endpoint, SerialEndpoint):
                # RTU frames carry no transaction id: let a late reply arrive and be discarded
                # before the port is reopened. (Over TCP the old connection takes it with it.)
                await asyncio.sleep(min(self.timeout_s, 1.0))
            self._suspect = False
        if self._client is not None and self._client.connected:
            return self._client
        self._drop()
        wait_s = self._next_connect_s - time.monotonic()
        if wait_s > 0:
            raise InverterLinkError(
                f"{self.describe()}: not connected; next attempt in {wait_s:.1f} s"
            )
        client = self._new_client()
        try:
            ok = await guarded(client.connect())
        except asyncio.CancelledError:
            client.close()  # connected or not, never leave a socket behind a cancelled link
            raise
        except (ModbusException, OSError) as exc:
            ok = False
            reason = str(exc)
        else:
            reason = "connection refused or timed out"
        if not ok:
            client.close()
            self._backoff_s = min(
                self._backoff_max_s, max(self._backoff_initial_s, self._backoff_s * 2)
            )
            self._next_connect_s = time.monotonic() + self._backoff_s
            raise InverterLinkError(f"{self.describe()}: cannot connect: {reason}")
        self._backoff_s = 0.0
        self._client = client
        return client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def close(self) -> None:
        async with self._lock:
            self._drop()

    async def read_holding(self, address: int, count: int) -> list[int]:
        """Read ``count`` holding registers (function 3)."""
        return await self.read_registers(address, count, function=3)

    async def read_registers(self, address: int, count: int, *, function: int = 3) -> list[int]:
        """Read holding (3) or input (4) registers, split into legal-sized requests."""
        if function not in (3, 4):
            raise ValueError(f"function {function} is not a register read")
        if count <= 0:
            return []
        values: list[int] = []
        for start in range(address, address + count, MAX_READ_REGISTERS):
            chunk = min(MAX_READ_REGISTERS, address + count - start)
            response = await self._request(function, start, chunk, None)
            registers = list(getattr(response, "registers", []))
            if len(registers) != chunk:
                self._suspect = True
                raise InverterLinkError(
                    f"{self.describe()}: asked for {chunk} registers at {start}, "
                    f"got {len(registers)}"
                )
            values.extend(registers)
        return values

    async def write_registers(self, address: int, values: Sequence[int]) -> None:
        """Write holding registers (function 16); the caller reads back to verify."""
        for offset in range(0, len(values), MAX_WRITE_REGISTERS):
            chunk = list(values[offset : offset + MAX_WRITE_REGISTERS])
            response = await self._request(16, address + offset, len(chunk), chunk)
            if getattr(response, "address", address + offset) != address + offset:
                self._suspect = True
                raise InverterLinkError(
                    f"{self.describe()}: write reply for address {response.address}, "
                    f"expected {address + offset}"
                )

    async def _request(
        self, function: int, address: int, count: int, values: list[int] | None
    ) -> ModbusPDU:
        async with self._lock:
            last_error = "no attempt made"
            busy_until_s = time.monotonic() + self.timeout_s * (self.retries + 1)
            busy_pause_s = BUSY_BACKOFF_S[0]
            attempt = 0
            while attempt <= self.retries:
                attempt += 1
                client = await self._ensure_connected()
                await self._respect_silent_interval()
                self.requests += 1
                try:
                    # guarded: pymodbus awaits the reply with wait_for, which can lose a cancel
                    # that lands with the reply (controller/cancellation.py).
                    if function == 3:
                        response = await guarded(
                            client.read_holding_registers(
                                address, count=count, device_id=self.unit_id
                            )
                        )
                    elif function == 4:
                        response = await guarded(
                            client.read_input_registers(
                                address, count=count, device_id=self.unit_id
                            )
                        )
                    else:
                        assert values is not None  # noqa: S101  function 16 always has values
                        response = await guarded(
                            client.write_registers(address, values, device_id=self.unit_id)
                        )
                except (ModbusException, TimeoutError, OSError) as exc:
                    self.timeouts += 1
                    self._suspect = True
                    last_error = f"{type(exc).__name__}: {exc}"
                    continue
                except asyncio.CancelledError:
                    self._suspect = True  # the reply may still come: never for the next request
                    raise
                finally:
                    self._last_io_s = time.monotonic()
                if isinstance(response, ExceptionResponse) or response.isError():
                    code = int(getattr(response, "exception_code", 0))
                    if code in BUSY_CODES and time.monotonic() + busy_pause_s < busy_until_s:
                        # A device that is busy answered: ask again, without using an attempt.
                        self.busy_replies += 1
                        attempt -= 1
                        await asyncio.sleep(busy_pause_s)
                        busy_pause_s = min(BUSY_BACKOFF_S[1], busy_pause_s * 2)
                        continue
                    raise ModbusExceptionResponse(function, address, code)
                if response.function_code != function:
                    # A reply to some other request: never take it as this one's answer.
                    self._suspect = True
                    last_error = f"reply has function {response.function_code}"
                    continue
                return response
            raise InverterLinkError(
                f"{self.describe()}: no valid reply for function {function} at {address} "
                f"after {self.retries + 1} attempts ({last_error})"
            )

    async def _respect_silent_interval(self) -> None:
        if isinstance(self.endpoint, SerialEndpoint):
            wait_s = self._last_io_s + self.endpoint.silent_interval_s - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
