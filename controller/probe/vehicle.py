"""``v2g-controller probe vehicle``: what is on the CAN bus, decoded with the project's DBC.

Passive: the bus is opened as the daemon opens it (``canbus.open_bus``) with one filter that
passes every frame, and nothing is ever sent (no ``send`` call exists here; a test watches the
bus). One line per message kind: its name, who sends it (car or charger), how many frames, the
period seen and the last decoded signals (value-table names where the DBC has them). On a
terminal the lines are redrawn in place; otherwise a line is appended when a kind is first seen
or its signals change (at most once a second per kind), and a summary ends the run.

GB/T's multi-frame messages (BRM, BCP, BCS) come over J1939-21 transport: the car sends them only
after the charger's CTS, so they appear when the daemon (or another charger) is talking to it.
The probe puts the packets it sees back together and decodes the whole message.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field
from typing import TextIO

import can

from controller.config import VehicleConfig
from controller.errors import ConfigError, ProtocolError, VehicleLinkError
from controller.probe.report import Report
from controller.vehicle.canbus import (
    BusReader,
    CanLinkConfig,
    describe_error_frame,
    open_bus,
)
from controller.vehicle.dbc import DbcCodec
from controller.vehicle.factory import load_profile
from controller.vehicle.j1939_tp import (
    Abort,
    Rts,
    decode_cm,
    decode_dt,
    describe_abort_reason,
)
from controller.vehicle.protocols import chademo, gbt27930
from controller.vehicle.protocols.j1939 import T1_S, T2_S, T3_S

# One filter that passes every frame, 11-bit and 29-bit (no "extended" key: both match).
EVERYTHING = [{"can_id": 0, "can_mask": 0}]
REDRAW_S = 0.25  # a terminal is redrawn this often
CHANGE_LINE_S = 1.0  # appended output: one line per kind and second at most
MAX_SIGNALS_SHOWN = 12
CLEAR_LINE = "\x1b[K"


def _up(lines: int) -> str:
    return f"\x1b[{lines}F"  # cursor to the start of the line ``lines`` up (ECMA-48 CPL)


@dataclass
class Kind:
    """One message kind as seen so far."""

    name: str
    frame_id: int
    sender: str
    count: int = 0
    first_s: float = 0.0
    last_s: float = 0.0
    text: str = ""
    rejected: int = 0
    printed_s: float = float("-inf")
    printed_text: str | None = None

    @property
    def period_ms(self) -> float | None:
        if self.count < 2:
            return None
        return (self.last_s - self.first_s) / (self.count - 1) * 1000

    def line(self) -> str:
        period = self.period_ms
        every = "" if period is None else f" every {period:.0f} ms"
        rejected = f", {self.rejected} rejected" if self.rejected else ""
        head = f"{self.name} ({self.sender}, 0x{self.frame_id:X}) x{self.count}{every}{rejected}"
        return f"{head}: {self.text}" if self.text else head


@dataclass
class _Transfer:
    """A BMS transfer an RTS opened, as far as it has come: packets 1..n, in order."""

    pgn: int
    size: int
    packets: int
    last_s: float  # the RTS's or the last data packet's time
    data: list[bytes] = field(default_factory=list)

    @property
    def expected(self) -> int:
        return len(self.data) + 1

    @property
    def deadline_s(self) -> float:
        # J1939-21 5.10.2.4: T1 between two data packets. Before the first one the charger's CTS
        # (which the probe may not see) may take up to T3 after the RTS, and its packet T2 more.
        return self.last_s + (T1_S if self.data else T3_S + T2_S)


def codec_for(vehicle: VehicleConfig) -> DbcCodec:
    """The DBC the daemon decodes this protocol with."""
    if vehicle.protocol == "chademo":
        return DbcCodec.chademo(vehicle.dbc_dir)
    if vehicle.protocol == "gbt27930":
        return DbcCodec.gbt27930(vehicle.dbc_dir)
    assert vehicle.profile is not None  # noqa: S101  the config model requires it
    return load_profile(vehicle.profile)[1]


def sender_of(protocol: str, frame_id: int) -> str:
    if protocol == "chademo":
        if frame_id in chademo.VEHICLE_IDS:
            return "car"
        return "charger" if frame_id in chademo.CHARGER_IDS else "?"
    if protocol == "gbt27930":
        source = frame_id & 0xFF  # J1939: the source address is the identifier's low byte
        if source == gbt27930.BMS_ADDRESS:
            return "car"
        return "charger" if source == gbt27930.CHARGER_ADDRESS else "?"
    return "BMS"


class VehicleProbe:
    """Decodes every frame it is handed (``receive``) into ``kinds``; renders them on ``out``."""

    def __init__(
        self, protocol: str, codec: DbcCodec, out: TextIO, *, live: bool, now: float = 0.0
    ) -> None:
        self.protocol = protocol
        self.codec = codec
        self.out = out
        self.live = live
        self.kinds: dict[tuple[str, int], Kind] = {}
        self.frames = 0
        self.unknown = 0
        self.error_frames: list[str] = []
        self.started_s = now
        self._drawn = 0
        self._transfer: _Transfer | None = None  # the BMS's transfer in progress
        # J1939-21 transfers lost: reason -> (how many, the last one's detail)
        self.dropped_transfers: dict[str, tuple[int, str]] = {}

    def receive(self, message: can.Message, now_s: float) -> None:
        if message.is_error_frame:
            self.error_frames.append(describe_error_frame(message))
            return
        if message.is_remote_frame:
            return
        self.frames += 1
        frame_id = int(message.arbitration_id)
        data = bytes(message.data)
        name = self.codec.name_of(frame_id)
        sender = sender_of(self.protocol, frame_id)
        if name is None:
            self.unknown += 1
            self._seen("unknown id", frame_id, sender, now_s, data.hex(" "))
            return
        try:
            decoded = self.codec.decode_frame(frame_id, data)
        except ProtocolError as exc:
            self._seen(name, frame_id, sender, now_s, str(exc), rejected=True)
            return
        self._seen(name, frame_id, sender, now_s, self._signals(name, decoded.signals))
        if self.protocol == "gbt27930":
            self._transport(frame_id, data, now_s)

    def _signals(self, name: str, signals: dict[str, float]) -> str:
        parts = []
        for signal, value in list(signals.items())[:MAX_SIGNALS_SHOWN]:
            named = self.codec.choice(name, signal, value)
            shown = f"{value:g}" if named is None else f"{named}"
            parts.append(f"{signal}={shown}")
        more = len(signals) - MAX_SIGNALS_SHOWN
        return " ".join(parts) + (f" (+{more} more)" if more > 0 else "")

    def _transport(self, frame_id: int, data: bytes, now_s: float) -> None:
        """J1939-21 packets from the BMS put back together (passively: the daemon's own
        ``TpReceiver`` answers with CTSs, so it cannot be used here)."""
        transfer = self._packet(frame_id, data, now_s)
        if transfer is None or len(transfer.data) < transfer.packets:
            return
        self._transfer = None
        payload = b"".join(transfer.data)[: transfer.size]
        name = gbt27930.TP_MESSAGES.get(transfer.pgn)
        if name is None:
            return
        try:
            decoded = self.codec.decode(name, payload)
        except ProtocolError as exc:
            self._seen(name, transfer.pgn, "car", now_s, str(exc), rejected=True)
            return
        self._seen(name, transfer.pgn, "car", now_s, self._signals(name, decoded.signals))

    def _packet(self, frame_id: int, data: bytes, now_s: float) -> _Transfer | None:
        """The BMS's transfer a TP.CM RTS opened (None: none), with a TP.DT packet added."""
        open_transfer = self._transfer
        if open_transfer is not None and now_s > open_transfer.deadline_s:
            gap = "the RTS" if not open_transfer.data else f"packet {len(open_transfer.data)}"
            self._drop("timed out", f"nothing for {now_s - open_transfer.last_s:.2f} s after {gap}")
        transfer = self._transfer
        try:
            if frame_id in (gbt27930.TP_CM_FROM_BMS, gbt27930.TP_CM_FROM_CHARGER):
                message = decode_cm(data)
                if isinstance(message, Rts) and frame_id == gbt27930.TP_CM_FROM_BMS:
                    if transfer is not None:
                        # J1939-21 5.10.3.1: of two RTSs for a message the newer one is acted on.
                        self._drop("restarted", "a new RTS came before the last packet")
                    self._transfer = _Transfer(
                        message.pgn, message.total_size, message.packets, now_s
                    )
                elif (
                    isinstance(message, Abort)
                    and transfer is not None
                    and message.pgn == transfer.pgn
                ):
                    by = "car" if frame_id == gbt27930.TP_CM_FROM_BMS else "charger"
                    self._drop("aborted", f"by the {by}, {describe_abort_reason(message.reason)}")
            elif frame_id == gbt27930.TP_DT_FROM_BMS and transfer is not None:
                packet = decode_dt(data)
                if packet.sequence != transfer.expected:
                    # J1939-21 5.10.3.3: packets are numbered 1..n and sent in order; any other
                    # number (a retransmission the charger asked for included) loses the message.
                    self._drop(
                        "wrong sequence number",
                        f"packet {packet.sequence} where {transfer.expected} was due",
                    )
                    return None
                transfer.data.append(packet.data)
                transfer.last_s = now_s
                return transfer
        except ProtocolError:
            pass  # a malformed transport frame: the transfer stays as it was
        return None

    def _drop(self, reason: str, detail: str) -> None:
        """The open transfer is lost: counted by ``reason``, the last ``detail`` kept."""
        self._transfer = None
        count, _ = self.dropped_transfers.get(reason, (0, ""))
        self.dropped_transfers[reason] = (count + 1, detail)

    def _seen(
        self,
        name: str,
        frame_id: int,
        sender: str,
        now_s: float,
        text: str,
        *,
        rejected: bool = False,
    ) -> None:
        key = (name, frame_id)
        kind = self.kinds.get(key)
        if kind is None:
            kind = self.kinds[key] = Kind(name, frame_id, sender, first_s=now_s)
        kind.count += 1
        kind.last_s = now_s
        kind.text = text
        if rejected:
            kind.rejected += 1
        if (
            not self.live
            and kind.text != kind.printed_text
            and now_s - kind.printed_s >= (CHANGE_LINE_S)
        ):
            kind.printed_s = now_s
            kind.printed_text = kind.text
            self._write(f"{now_s - self.started_s:7.2f} s  {kind.line()}\n")

    def redraw(self) -> None:
        """On a terminal: every kind's line, in place of the previous drawing."""
        lines = [kind.line() for kind in self._ordered()]
        lines.append(f"{self.frames} frames, {len(self.kinds)} kinds (Ctrl-C to stop)")
        # A line wider than the terminal wraps onto two rows, and the redraw would climb too few.
        width = max(20, shutil.get_terminal_size().columns - 1)
        lines = [line[:width] for line in lines]
        text = _up(self._drawn) if self._drawn else ""
        text += "".join(f"{line}{CLEAR_LINE}\n" for line in lines)
        self._drawn = len(lines)
        self._write(text)

    def _ordered(self) -> list[Kind]:
        return sorted(self.kinds.values(), key=lambda k: (k.sender != "car", k.frame_id, k.name))

    def summary(self, report: Report, seconds: float, where: str) -> None:
        report.heading(f"summary: {self.frames} frames in {seconds:.1f} s on {where}")
        for kind in self._ordered():
            report.note(kind.line())
        for reason, (count, detail) in self.dropped_transfers.items():
            report.note(f"multi-packet messages lost, {reason}: x{count} (last: {detail})")
        if self.error_frames:
            report.problem(
                f"{len(self.error_frames)} CAN error frames ({self.error_frames[-1]})",
                "the bitrate (ip -details link show), the wiring (CAN-H/CAN-L), a 120 ohm "
                "termination at each end",
            )

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


async def probe_vehicle(
    vehicle: VehicleConfig,
    report: Report,
    *,
    seconds: float | None,
    live: bool,
) -> None:
    """Listen for ``seconds`` (None: until cancelled) and report what was heard."""
    config = CanLinkConfig(
        interface=vehicle.can.interface,
        channel=vehicle.can.channel,
        protocol=vehicle.protocol,
        bitrate_bps=vehicle.can.bitrate_bps,
    )
    where = f"{config.interface}:{config.channel}"
    report.heading(
        f"vehicle: listening on {where} ({vehicle.protocol}, {config.bitrate} bit/s), sending "
        "nothing"
    )
    try:
        codec = codec_for(vehicle)
    except (VehicleLinkError, ProtocolError, ConfigError) as exc:
        report.problem(f"the DBC cannot be loaded: {exc}", "vehicle.dbc_dir, vehicle.profile")
        return
    try:
        bus = open_bus(config, EVERYTHING)
    except VehicleLinkError as exc:
        report.problem(
            str(exc),
            f"the interface exists and is up: ip -details link show {config.channel} "
            f"(socketcan: ip link set {config.channel} up type can bitrate {config.bitrate})",
            "that the daemon or another program does not hold it exclusively",
        )
        return
    loop = asyncio.get_running_loop()
    started_s = loop.time()
    probe = VehicleProbe(vehicle.protocol, codec, report.out, live=live, now=started_s)
    failed: list[VehicleLinkError] = []
    stopped = asyncio.Event()

    def deliver(message: can.Message) -> None:
        probe.receive(message, loop.time())

    def fail(exc: VehicleLinkError) -> None:
        failed.append(exc)
        stopped.set()

    reader = BusReader(bus, deliver, fail)
    try:
        async with asyncio.timeout(seconds):
            while not stopped.is_set():
                if live:
                    probe.redraw()
                try:
                    async with asyncio.timeout(REDRAW_S):
                        await stopped.wait()
                except TimeoutError:
                    continue
    except TimeoutError:
        pass  # --seconds reached
    finally:
        reader.close()
        bus.shutdown()
        if live:
            probe.redraw()
        _conclude(probe, report, vehicle, loop.time() - started_s, failed)


def _conclude(
    probe: VehicleProbe,
    report: Report,
    vehicle: VehicleConfig,
    seconds: float,
    failed: list[VehicleLinkError],
) -> None:
    where = f"{vehicle.can.interface}:{vehicle.can.channel}"
    probe.summary(report, seconds, where)
    if failed:
        report.problem(f"the bus failed: {failed[0]}", f"ip -details -statistics link show {where}")
    if probe.frames == 0:
        wake = {
            "chademo": "a CHAdeMO car talks only once the charger's d1 line is on",
            "gbt27930": "a GB/T car answers only the charger's CHM/CRM: run the daemon alongside "
            "(the probe only listens)",
            "dbc": "the BMS is powered and its CAN output enabled",
        }[vehicle.protocol]
        report.problem(
            f"no frame received on {where} in {seconds:.1f} s",
            "the car is plugged in and awake: " + wake,
            f"the interface is up at the protocol's bitrate (ip -details link show "
            f"{vehicle.can.channel})",
            "the wiring: CAN-H/CAN-L not swapped, 120 ohm termination",
        )
    elif probe.unknown == probe.frames:
        report.problem(
            f"{probe.frames} frames received, none of them {vehicle.protocol}",
            "vehicle.protocol (chademo, gbt27930 or dbc) matches the car and the connector",
        )
