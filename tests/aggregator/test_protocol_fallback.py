"""MQTT 5 falls back to 3.1.1 when the broker refuses the protocol version.

mosquitto speaks MQTT 5, so an MQTT 3.1.1-only broker is played by a small stub that answers an
MQTT 5 CONNECT the way such a broker does (CONNACK return code 1, then close, MQTT 3.1.1
section 3.1.2.2) and serves 3.1.1 just enough for the link: CONNACK, SUBACK, PUBACK, PINGRESP.
"""

from __future__ import annotations

import asyncio
import contextlib

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

    def __init__(self) -> None:
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
            if level != 4:
                writer.write(bytes([0x20, 0x02, 0x00, 0x01]))  # unacceptable protocol version
                await writer.drain()
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
