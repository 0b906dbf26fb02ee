"""MQTT 5 falls back to 3.1.1 when the broker refuses the protocol version or never answers it.

mosquitto speaks MQTT 5, so an MQTT 3.1.1-only broker is played by a small stub that answers an
MQTT 5 CONNECT the way such brokers do: CONNACK return code 1, then close (MQTT 3.1.1
section 3.1.2.2), or, like RabbitMQ 3.10, a close without any CONNACK ("drop"), or no answer at
all ("silent"). It serves 3.1.1 just enough for the link: CONNACK, SUBACK, PUBACK, PINGRESP.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Literal

from controller.links import LinkStatus
from tests.aggregator.support import LinkRunner, make_config, make_link, until

CONNECT = 0x10
PUBLISH = 0x30
SUBSCRIBE = 0x80
PINGREQ = 0xC0
DISCONNECT = 0xE0


class Mqtt311Stub:
    """Accepts MQTT 3.1.1 (protocol level 4) only; records every CONNECT's protocol level.

    A connection's task runs outside the test, where a failed check or an exception would only be
    logged by asyncio: each is collected in ``problems``, and leaving the stub raises them.
    """

    def __init__(
        self, v5: Literal["refuse", "drop", "silent"] = "refuse", *, v311: bool = True
    ) -> None:
        self.v5 = v5
        self.v311 = v311  # False: MQTT 3.1.1 gets no answer either
        self.levels: list[int] = []
        self.published: list[str] = []
        self.problems: list[str] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections: set[asyncio.Task[object]] = set()
        self.port = 0

    async def __aenter__(self) -> Mqtt311Stub:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        running = [task for task in self._connections if not task.done()]
        if running:  # closed writers end them; a bounded wait for what they find on the way
            await asyncio.wait(running, timeout=5.0)
        if self.problems:
            raise AssertionError(f"the MQTT 3.1.1 stub failed: {self.problems}")

    def drop_connections(self) -> None:
        """Close every connection from the broker's side (as a restarting broker would)."""
        for writer in list(self._writers):
            writer.close()

    @staticmethod
    async def _packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        header = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return header, await reader.readexactly(length)

    async def _refuse(
        self, level: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer a CONNECT this stub does not serve, as ``v5`` (and ``v311``) say."""
        if level != 4 and self.v5 == "refuse":
            writer.write(bytes([0x20, 0x02, 0x00, 0x01]))  # unacceptable protocol version
            await writer.drain()
        elif level == 4 or self.v5 == "silent":
            await reader.read()  # no answer: until the client gives up
        # "drop": closed at once, without a CONNACK

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        self._writers.add(writer)
        try:
            header, body = await self._packet(reader)
            if header != CONNECT:
                self.problems.append(f"first packet 0x{header:02X}, not CONNECT")
                return
            name_length = int.from_bytes(body[0:2], "big")
            level = body[2 + name_length]
            self.levels.append(level)
            if level != 4 or not self.v311:
                await self._refuse(level, reader, writer)
                return
            writer.write(bytes([0x20, 0x02, 0x00, 0x00]))
            while True:
                header, body = await self._packet(reader)
                kind = header & 0xF0
                if kind == SUBSCRIBE:
                    writer.write(bytes([0x90, 0x03]) + body[0:2] + bytes([0x01]))
                elif kind == PUBLISH:
                    topic_length = int.from_bytes(body[0:2], "big")
                    self.published.append(body[2 : 2 + topic_length].decode())
                    if (header >> 1) & 0x03:
                        packet_id = body[2 + topic_length : 4 + topic_length]
                        writer.write(bytes([0x40, 0x02]) + packet_id)
                elif kind == PINGREQ:
                    writer.write(bytes([0xD0, 0x00]))
                elif kind == DISCONNECT:
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        except Exception as exc:  # noqa: BLE001  a stub bug must fail the test, not vanish in a log
            self.problems.append(f"stub failed: {exc!r}")
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def test_mqtt5_refused_as_unsupported_falls_back_to_311() -> None:
    """A broker that refuses MQTT 5 gets an immediate MQTT 3.1.1 retry, and the link comes UP."""

    async def scenario() -> None:
        async with Mqtt311Stub() as stub:
            link = make_link(make_config(stub.port))
            assert link.protocol == "5"
            runner = LinkRunner(link)
            async with runner:
                await runner.up()
                assert stub.levels[:2] == [5, 4]
                assert link.protocol == "3.1.1"
                assert await until(lambda: link.topics.availability in stub.published)

    asyncio.run(scenario())


def test_configured_311_connects_with_311_from_the_first_attempt() -> None:
    """broker.protocol "3.1.1" never tries MQTT 5."""

    async def scenario() -> None:
        async with Mqtt311Stub() as stub:
            link = make_link(make_config(stub.port, broker_extra=', protocol: "3.1.1"'))
            runner = LinkRunner(link)
            async with runner:
                await runner.up()
                assert stub.levels == [4]
                assert link.status is LinkStatus.UP

    asyncio.run(scenario())


def test_mqtt5_dropped_without_connack_falls_back_to_311_at_once() -> None:
    """A broker that closes an MQTT 5 CONNECT without a CONNACK (RabbitMQ 3.10) gets an immediate
    3.1.1 retry, without waiting out the connect timeout, and the link stays on 3.1.1."""

    async def scenario() -> None:
        async with Mqtt311Stub(v5="drop") as stub:
            link = make_link(make_config(stub.port), connect_timeout_s=5.0)
            runner = LinkRunner(link)
            started_s = time.monotonic()
            async with runner:
                await runner.up()
                assert time.monotonic() - started_s < 4.0  # inside the 5 s timeout: not waited out
                assert stub.levels[:2] == [5, 4]
                assert link.protocol == "3.1.1"
                assert await until(lambda: link.topics.availability in stub.published)

    asyncio.run(scenario())


def test_mqtt5_never_answered_falls_back_to_311_after_the_timeout() -> None:
    """No answer at all to MQTT 5 within the connect timeout: 3.1.1 is tried next, at once."""

    async def scenario() -> None:
        async with Mqtt311Stub(v5="silent") as stub:
            link = make_link(make_config(stub.port), connect_timeout_s=0.5)
            runner = LinkRunner(link)
            async with runner:
                await runner.up(timeout_s=5.0)
                assert stub.levels[:2] == [5, 4]
                assert link.protocol == "3.1.1"

    asyncio.run(scenario())


def test_no_answer_to_either_version_goes_back_to_mqtt5() -> None:
    """A broker that answers neither version is not a version problem: the next attempt is
    MQTT 5 again, and the reason says what happened."""

    async def scenario() -> None:
        async with Mqtt311Stub(v5="drop", v311=False) as stub:
            link = make_link(make_config(stub.port), connect_timeout_s=0.3)
            runner = LinkRunner(link)
            async with runner:
                assert await until(lambda: len(stub.levels) >= 3, 5.0), stub.levels
                assert stub.levels[:3] == [5, 4, 5]
                assert link.status is LinkStatus.DOWN
                assert link.reason is not None
                assert "CONNACK" in link.reason

    asyncio.run(scenario())


def test_the_311_fallback_after_a_missing_connack_lasts_one_connection() -> None:
    """A close without a CONNACK has other causes than an old broker (a load balancer, a broker
    at its limit): after the 3.1.1 connection is lost, the link tries MQTT 5 first again."""

    async def scenario() -> None:
        async with Mqtt311Stub(v5="drop") as stub:
            link = make_link(make_config(stub.port), connect_timeout_s=5.0)
            runner = LinkRunner(link)
            async with runner:
                await runner.up()
                assert stub.levels[:2] == [5, 4]
                stub.drop_connections()
                assert await until(lambda: len(stub.levels) >= 4, 10.0), stub.levels
                assert stub.levels[2:4] == [5, 4]
                await runner.up()

    asyncio.run(scenario())
