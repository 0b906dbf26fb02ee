"""One Modbus link (TCP or RTU) with the discipline field inverters need.

- One outstanding request per link: pymodbus does not serialise callers, so a lock does.
- A per-request timeout (default 1 s) and at most ``retries`` retries for timeouts and I/O
  errors. An exception response is an answer, never retried, except "acknowledge" (5) and
  "server device busy" (6), which mean "try again later" (Modbus application protocol 1.1b3,
  section 7): retried with a growing pause (``BUSY_BACKOFF_S``) for as long as the request's
  budget allows (``timeout_s`` x (``retries`` + 1)), and only then an error.
- Every reply is matched to its request: unit id, function code (also of an exception reply),
  byte count of a read, address and count echoed by a write. A reply that does not match is
  someone else's: the attempt counts as failed, never as answered.
- A late reply is never taken for the next request's answer, whatever ``retries`` is. Over TCP
  the connection is dropped after a timeout (a late reply leaves with it; pymodbus also checks
  the transaction id). RTU frames carry no transaction id and a read reply no address, only a
  byte count, so the serial line is kept and settled instead (``_settle_line``): after an attempt
  went unanswered, the next attempt (a retry or another request) waits until that reply has come
  and gone, or for ``LATE_REPLY_TIMEOUTS`` x ``timeout_s`` more; and the input is drained before
  every attempt (bytes already waiting are an earlier attempt's reply). So at most one reply is
  ever outstanding on the line. A reply later than (1 + LATE_REPLY_TIMEOUTS) x ``timeout_s``
  after its request is beyond what any RTU master can tell apart from the next one's answer
  when both ask for as many registers: ``timeout_s`` must cover the device's replies.
- RTU requests are spaced by at least the 3.5-character silent interval (Modbus over serial
  line V1.02, 2.5.1.1; a fixed 1.75 ms above 19200 baud).
- Reconnects with capped exponential backoff.

pymodbus exceptions never leave this module: they become ``InverterLinkError`` (its subclass
``NotConnectedError`` when no connection could be had at all) or ``ModbusExceptionResponse``.

How pymodbus 3.16 receives RTU bytes (``transport/serialtransport.py``, ``transaction``): the
serial port's fd is watched with ``loop.add_reader``; whatever arrives is appended to the
client's ``ctx.recv_buffer`` and offered to the framer, whether or not a request is waiting. A
complete frame with no request waiting is dropped with a warning; one that arrives while a
request waits is its answer, checked by pymodbus only for the unit id. ``send()`` empties
``recv_buffer``, but bytes still in the kernel's tty buffer are read after the request went out
and taken as its answer. Hence the drain here: ``recv_buffer`` emptied and the tty input flushed
(``tcflush``) right before each request, and the wait for an outstanding reply before that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from controller.cancellation import guarded
from controller.errors import InverterLinkError

log = structlog.get_logger(component="inverter")

MAX_READ_REGISTERS = 125  # Modbus application protocol 6.3
MAX_WRITE_REGISTERS = 123  # Modbus application protocol 6.12
# Exception codes that mean "busy, try again" (Modbus application protocol section 7).
BUSY_CODES = frozenset({5, 6})
# The pause before retrying a busy reply: doubles from the first to the last value.
BUSY_BACKOFF_S = (0.02, 0.2)
# RTU: after an attempt went unanswered, how long (in timeouts, after its own timeout) its late
# reply is waited for before the next attempt is sent.
LATE_REPLY_TIMEOUTS = 2
# RTU: the line must have been quiet this long before a late reply counts as over. Above the
# 3.5-character silence, and above the 16 ms a USB-serial adapter (FTDI latency timer) may hold
# received bytes back.
LINE_QUIET_S = 0.05
LINE_POLL_S = 0.01
EXCEPTION_FLAG = 0x80  # set in the function code of an exception reply
CLOSED_BY_DEVICE = (
    "the inverter closed the connection (one that serves a single TCP connection does so "
    "while another Modbus client holds it)"
)

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class NotConnectedError(InverterLinkError):
    """No connection: it was refused, timed out, or the next attempt waits for its backoff."""


class ModbusExceptionResponse(InverterLinkError):  # noqa: N818  named after the Modbus term
    """The inverter answered with a Modbus exception code."""

    def __init__(self, function: int, address: int, code: int) -> None:
        self.function = function
        self.address = address
        self.code = code
        name = EXCEPTION_NAMES.get(code, "unknown")
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
        self._suspect = False  # TCP: a request went unanswered, reconnect before the next one
        # RTU: when the last attempt whose reply was not taken was sent (None: none outstanding)
        self._outstanding_sent_s: float | None = None
        self._received_s = 0.0  # when bytes last arrived (RTU), answer or not
        self._last_io_s = 0.0
        self.requests = 0
        self.timeouts = 0
        self.busy_replies = 0  # exception 5 or 6 answers retried
        self.mismatched_replies = 0  # replies that did not match their request, discarded
        self.late_replies = 0  # RTU: replies that came after their request's timeout, discarded
        self.drained_bytes = 0  # RTU: bytes waiting before a request, discarded

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
            trace_packet=self._trace_serial,
        )

    def _trace_serial(self, sending: bool, data: bytes) -> bytes:
        """pymodbus calls this with every frame sent and every chunk received (RTU)."""
        if not sending and data:
            self._received_s = time.monotonic()
        return data

    async def _ensure_connected(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if self._suspect:
            self._drop()  # TCP: a late reply leaves with the old connection
            self._suspect = False
        if self._client is not None and self._client.connected:
            return self._client
        self._drop()
        wait_s = self._next_connect_s - time.monotonic()
        if wait_s > 0:
            raise NotConnectedError(
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
            raise NotConnectedError(f"{self.describe()}: cannot connect: {reason}")
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
            registers = [int(v) for v in getattr(response, "registers", [])]
            if len(registers) != chunk:  # _request matched it; a subclass may not have
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
            await self._request(16, address + offset, len(chunk), chunk)

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
                if isinstance(client, AsyncModbusSerialClient):
                    await self._settle_line(client)
                await self._respect_silent_interval()
                self.requests += 1
                sent_s = time.monotonic()
                try:
                    response = await self._send(client, function, address, count, values)
                except (ModbusException, TimeoutError, OSError) as exc:
                    self.timeouts += 1
                    self._unanswered(sent_s)
                    last_error = f"{type(exc).__name__}: {exc}"
                    if isinstance(self.endpoint, TcpEndpoint) and not client.connected:
                        last_error = CLOSED_BY_DEVICE
                    continue
                except asyncio.CancelledError:
                    self._unanswered(sent_s)  # the reply may still come: never for the next one
                    raise
                finally:
                    self._last_io_s = time.monotonic()
                mismatch = reply_mismatch(response, self.unit_id, function, address, count)
                if mismatch is not None:
                    # Another request's reply (a late one): discard it; this one's may follow.
                    self.mismatched_replies += 1
                    self._unanswered(sent_s)
                    last_error = mismatch
                    continue
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
                return response
            raise InverterLinkError(
                f"{self.describe()}: no valid reply for function {function} at {address} "
                f"after {self.retries + 1} attempts ({last_error})"
            )

    async def _send(
        self,
        client: AsyncModbusTcpClient | AsyncModbusSerialClient,
        function: int,
        address: int,
        count: int,
        values: list[int] | None,
    ) -> ModbusPDU:
        """One attempt through pymodbus: the request out, its reply (or pymodbus's error)."""
        # guarded: pymodbus awaits the reply with wait_for, which can lose a cancel that lands
        # with the reply (controller/cancellation.py).
        if function == 3:
            return await guarded(
                client.read_holding_registers(address, count=count, device_id=self.unit_id)
            )
        if function == 4:
            return await guarded(
                client.read_input_registers(address, count=count, device_id=self.unit_id)
            )
        assert values is not None  # noqa: S101  function 16 always has values
        return await guarded(client.write_registers(address, values, device_id=self.unit_id))

    def _unanswered(self, sent_s: float) -> None:
        """An attempt's reply was not taken: it may still come, so it must not answer another."""
        if isinstance(self.endpoint, SerialEndpoint):
            self._outstanding_sent_s = sent_s
        else:
            self._suspect = True

    async def _settle_line(self, client: AsyncModbusSerialClient) -> None:
        """RTU: no earlier reply can answer the attempt about to be sent.

        After an attempt went unanswered, wait until its late reply has arrived and the line has
        been quiet for ``LINE_QUIET_S``, or until ``LATE_REPLY_TIMEOUTS`` timeouts after that
        attempt's own timeout (on a line that is never quiet, one timeout more at most). Then
        drain: pymodbus's receive buffer emptied, the tty's input flushed."""
        outstanding_s = self._outstanding_sent_s
        if outstanding_s is not None:
            give_up_s = outstanding_s + self.timeout_s * (1 + LATE_REPLY_TIMEOUTS)
            while True:
                now_s = time.monotonic()
                if now_s >= give_up_s + self.timeout_s:
                    break  # bytes keep coming (noise, another master): drain what is there
                quiet = now_s - self._received_s >= LINE_QUIET_S
                if quiet and self._received_s > outstanding_s:
                    self.late_replies += 1
                    if self.late_replies == 1:
                        log.warning(
                            "late reply discarded: the inverter answered after timeout_s",
                            link=self.describe(),
                            timeout_s=self.timeout_s,
                            late_s=round(self._received_s - outstanding_s, 3),
                        )
                    break
                if quiet and now_s >= give_up_s:
                    break
                await asyncio.sleep(LINE_POLL_S)
            self._outstanding_sent_s = None
        self._drain(client)

    def _drain(self, client: AsyncModbusSerialClient) -> None:
        """Discard every byte received so far: pymodbus's buffer and the tty's input queue.

        Reaches into pymodbus 3.16 (``client.ctx``: the TransactionManager, its ``recv_buffer``
        and ``transport.sync_serial``, the pyserial port); pymodbus is pinned to that series."""
        ctx = client.ctx
        self.drained_bytes += len(ctx.recv_buffer)
        ctx.recv_buffer = b""
        port = getattr(ctx.transport, "sync_serial", None)
        if port is None:
            return
        try:
            self.drained_bytes += int(port.in_waiting)
            port.reset_input_buffer()  # tcflush(TCIFLUSH)
        except OSError as exc:  # serial.SerialException is an OSError: the port has gone
            self._drop()
            raise InverterLinkError(f"{self.describe()}: serial port failed: {exc}") from None

    async def _respect_silent_interval(self) -> None:
        if isinstance(self.endpoint, SerialEndpoint):
            wait_s = self._last_io_s + self.endpoint.silent_interval_s - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)


def reply_mismatch(
    response: ModbusPDU, unit_id: int, function: int, address: int, count: int
) -> str | None:
    """Why ``response`` cannot be the answer to this request; None when it matches. Pure.

    Unit id, function code (an exception reply carries it with bit 7 set), the byte count of a
    read (its registers), the address and count a write echoes. A read reply carries no
    address: two reads of as many registers cannot be told apart, hence ``_settle_line``."""
    if response.dev_id not in (0, unit_id):  # 0: pymodbus leaves it unset on some paths
        return f"reply from unit {response.dev_id}"
    reply_function = response.function_code & ~EXCEPTION_FLAG
    if reply_function != function:
        return f"reply has function {response.function_code}"
    if isinstance(response, ExceptionResponse) or response.isError():
        return None
    if function in (3, 4):
        got = len(getattr(response, "registers", []))
        return None if got == count else f"asked for {count} registers, reply has {got}"
    echo = (getattr(response, "address", None), getattr(response, "count", None))
    if echo != (address, count):
        return f"write reply for {echo[1]} registers at {echo[0]}"
    return None
