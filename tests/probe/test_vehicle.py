"""probe vehicle against the simulated cars (hil/vehicle) on python-can's virtual bus and on UDP
multicast: what the car sends, decoded with the project's DBC, one line per kind; nothing is ever
sent by the probe; silence and a wrong protocol are named."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
import uuid
from pathlib import Path

import can

from controller.config import VehicleConfig
from controller.probe.report import Report
from controller.probe.vehicle import VehicleProbe, probe_vehicle
from controller.vehicle.canbus import to_message
from controller.vehicle.dbc import DbcCodec
from controller.vehicle.frames import CanFrame
from controller.vehicle.j1939_tp import (
    Abort,
    AbortReason,
    Rts,
    encode_cm,
    encode_dt,
    packets_for,
    split_payload,
)
from controller.vehicle.protocols import chademo, gbt27930
from hil.vehicle import ChademoVehicle, FaultInjection, GbtVehicle
from hil.vehicle.runner import VehicleSimulator
from tests.probe.support import REPO, Tty, cli, config_text


def vehicle_config(protocol: str, channel: str, interface: str = "virtual") -> VehicleConfig:
    return VehicleConfig.model_validate(
        {"protocol": protocol, "can": {"interface": interface, "channel": channel}}
    )


def drain(bus: can.BusABC) -> list[can.Message]:
    seen = []
    while (message := bus.recv(0)) is not None:
        seen.append(message)
    return seen


def test_a_chademo_car_is_decoded_and_the_probe_sends_nothing() -> None:
    channel = f"probe-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        monitor = can.Bus(interface="virtual", channel=channel)
        car_bus = can.Bus(interface="virtual", channel=channel)
        car = VehicleSimulator(ChademoVehicle(), car_bus)
        playing = asyncio.create_task(car.run())
        out = io.StringIO()
        report = Report(out)
        try:
            await probe_vehicle(vehicle_config("chademo", channel), report, seconds=1.0, live=False)
        finally:
            playing.cancel()
            await asyncio.gather(playing, return_exceptions=True)
            car_bus.shutdown()
        seen = drain(monitor)
        monitor.shutdown()
        # Every frame on the bus is one the car sent: none came from the probe.
        assert car.sent > 10
        assert len(seen) == car.sent
        assert not [m for m in seen if m.arbitration_id in chademo.CHARGER_IDS]
        text = out.getvalue()
        assert report.exit_code == 0, text
        assert "VEH_102_Status (car, 0x102) x" in text
        # The car sends every 100 ms; on a loaded machine the measured period drifts a little.
        assert re.search(r"every (9\d|1[01]\d) ms", text), text
        assert "VEH_100_BatteryLimits (car, 0x100)" in text
        assert "summary:" in text

    asyncio.run(main())


def test_gbt_frames_of_both_sides_are_told_apart() -> None:
    """A GB/T car answers a charger's CHM with BHM; the probe labels each side."""
    channel = f"probe-{uuid.uuid4().hex[:8]}"
    codec = DbcCodec.gbt27930()
    chm = to_message(
        CanFrame(gbt27930.CHM_ID, codec.encode("CHM", _zeros(codec, "CHM")), is_extended_id=True)
    )

    async def charger(bus: can.BusABC) -> None:
        while True:
            bus.send(chm)
            await asyncio.sleep(0.25)

    async def main() -> None:
        charger_bus = can.Bus(interface="virtual", channel=channel)
        car_bus = can.Bus(interface="virtual", channel=channel)
        tasks = [
            asyncio.create_task(VehicleSimulator(GbtVehicle(), car_bus).run()),
            asyncio.create_task(charger(charger_bus)),
        ]
        out = io.StringIO()
        try:
            await probe_vehicle(
                vehicle_config("gbt27930", channel), Report(out), seconds=1.2, live=False
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            car_bus.shutdown()
            charger_bus.shutdown()
        text = out.getvalue()
        assert f"CHM (charger, 0x{gbt27930.CHM_ID:X})" in text
        assert f"BHM (car, 0x{gbt27930.BHM_ID:X})" in text

    asyncio.run(main())


def _zeros(codec: DbcCodec, name: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for spec in codec.signals(name):
        values[spec.name] = max(spec.minimum, min(spec.maximum, 0.0))
    return values


def test_a_silent_bus_is_a_problem_with_what_to_check() -> None:
    async def main() -> None:
        out = io.StringIO()
        report = Report(out)
        await probe_vehicle(
            vehicle_config("chademo", f"probe-{uuid.uuid4().hex[:8]}"),
            report,
            seconds=0.3,
            live=False,
        )
        text = out.getvalue()
        assert report.exit_code == 1
        assert "PROBLEM: no frame received on virtual:" in text
        assert "check: the car is plugged in and awake" in text

    asyncio.run(main())


def test_a_car_of_another_protocol_is_named() -> None:
    channel = f"probe-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        car_bus = can.Bus(interface="virtual", channel=channel)
        playing = asyncio.create_task(VehicleSimulator(ChademoVehicle(), car_bus).run())
        out = io.StringIO()
        report = Report(out)
        try:
            await probe_vehicle(
                vehicle_config("gbt27930", channel), report, seconds=0.5, live=False
            )
        finally:
            playing.cancel()
            await asyncio.gather(playing, return_exceptions=True)
            car_bus.shutdown()
        text = out.getvalue()
        assert "unknown id (?, 0x102)" in text
        assert "none of them gbt27930" in text
        assert report.exit_code == 1

    asyncio.run(main())


def test_on_a_terminal_the_lines_are_redrawn_in_place() -> None:
    channel = f"probe-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        car_bus = can.Bus(interface="virtual", channel=channel)
        playing = asyncio.create_task(VehicleSimulator(ChademoVehicle(), car_bus).run())
        out = Tty()
        try:
            await probe_vehicle(
                vehicle_config("chademo", channel), Report(out), seconds=0.8, live=True
            )
        finally:
            playing.cancel()
            await asyncio.gather(playing, return_exceptions=True)
            car_bus.shutdown()
        text = out.getvalue()
        assert "\x1b[" in text  # cursor moved up to redraw
        assert "(Ctrl-C to stop)" in text

    asyncio.run(main())


def test_cli_listens_on_udp_multicast_next_to_a_car_in_another_process(tmp_path: Path) -> None:
    group = "239.74.{}.{}".format(*(1 + b % 254 for b in uuid.uuid4().bytes[:2]))
    config = tmp_path / "config.yaml"
    config.write_text(
        config_text(
            vehicle=f"{{protocol: chademo, can: {{interface: udp_multicast, channel: '{group}'}}}}"
        ),
        encoding="utf-8",
    )
    car = subprocess.Popen(
        [
            sys.executable, "-m", "hil.vehicle", "--protocol", "chademo",
            "--interface", "udp_multicast", "--channel", group, "--duration-s", "20",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        status, out, err = asyncio.run(
            cli("probe", "vehicle", "-c", str(config), "--seconds", "1.5")
        )
    finally:
        car.terminate()
        car.wait(10)
    assert status == 0, out + err
    assert "VEH_102_Status (car, 0x102)" in out
    assert "\x1b[" not in out  # piped: plain appended lines


def test_frames_the_dbc_rejects_are_counted_with_the_reason() -> None:
    channel = f"probe-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        car_bus = can.Bus(interface="virtual", channel=channel)
        car = ChademoVehicle(faults=FaultInjection(wrong_dlc=True))
        playing = asyncio.create_task(VehicleSimulator(car, car_bus).run())
        out = io.StringIO()
        try:
            await probe_vehicle(
                vehicle_config("chademo", channel), Report(out), seconds=0.5, live=False
            )
        finally:
            playing.cancel()
            await asyncio.gather(playing, return_exceptions=True)
            car_bus.shutdown()
        text = out.getvalue()
        assert " rejected: VEH_102_Status: " in text
        assert "bytes, expected 8" in text

    asyncio.run(main())


def test_a_gbt_transport_message_is_put_back_together_and_decoded() -> None:
    """BRM (49 bytes) as the car sends it over J1939-21 after a charger's CTS: RTS, 7 packets."""
    codec = DbcCodec.gbt27930()
    values = _zeros(codec, "BRM") | {"RatedCapacity": 40.0, "RatedVoltage": 380.0}
    payload = codec.encode("BRM", values)
    rts = Rts(total_size=len(payload), packets=packets_for(len(payload)), pgn=gbt27930.PGN_BRM)
    frames = [CanFrame(gbt27930.TP_CM_FROM_BMS, encode_cm(rts), is_extended_id=True)]
    frames += [
        CanFrame(gbt27930.TP_DT_FROM_BMS, encode_dt(packet), is_extended_id=True)
        for packet in split_payload(payload)
    ]
    out = io.StringIO()
    probe = VehicleProbe("gbt27930", codec, out, live=False)
    for i, frame in enumerate(frames):
        probe.receive(to_message(frame), i * 0.01)
    brm = probe.kinds[("BRM", gbt27930.PGN_BRM)]
    assert brm.sender == "car"
    assert brm.count == 1
    assert "RatedCapacity=40" in brm.text
    assert "RatedVoltage=380" in brm.text
    assert probe.kinds[("TP_DT_BMS", gbt27930.TP_DT_FROM_BMS)].count == len(frames) - 1


def _brm_transfer() -> tuple[CanFrame, list[CanFrame]]:
    """BRM as the car sends it over J1939-21: the RTS and its 7 data packets."""
    codec = DbcCodec.gbt27930()
    payload = codec.encode("BRM", _zeros(codec, "BRM") | {"RatedCapacity": 40.0})
    rts = Rts(total_size=len(payload), packets=packets_for(len(payload)), pgn=gbt27930.PGN_BRM)
    packets = [
        CanFrame(gbt27930.TP_DT_FROM_BMS, encode_dt(packet), is_extended_id=True)
        for packet in split_payload(payload)
    ]
    return CanFrame(gbt27930.TP_CM_FROM_BMS, encode_cm(rts), is_extended_id=True), packets


def _play(probe: VehicleProbe, timed: list[tuple[float, CanFrame]]) -> None:
    for now_s, frame in timed:
        probe.receive(to_message(frame), now_s)


def test_a_gbt_transfer_with_a_packet_out_of_order_is_dropped_and_counted() -> None:
    rts, packets = _brm_transfer()
    probe = VehicleProbe("gbt27930", DbcCodec.gbt27930(), io.StringIO(), live=False)
    swapped = [packets[1], packets[0], *packets[2:]]
    _play(probe, [(i * 0.01, frame) for i, frame in enumerate([rts, *swapped])])
    assert ("BRM", gbt27930.PGN_BRM) not in probe.kinds
    assert probe.dropped_transfers == {"wrong sequence number": (1, "packet 2 where 1 was due")}
    # The next transfer, in order, is put together as before.
    _play(probe, [(1.0 + i * 0.01, frame) for i, frame in enumerate([rts, *packets])])
    assert probe.kinds[("BRM", gbt27930.PGN_BRM)].count == 1
    out = io.StringIO()
    probe.summary(Report(out), 2.0, "virtual:x")
    assert (
        "multi-packet messages lost, wrong sequence number: x1 (last: packet 2 where 1 was due)"
        in out.getvalue()
    )


def test_a_gbt_transfer_aborted_by_the_charger_is_dropped() -> None:
    rts, packets = _brm_transfer()
    probe = VehicleProbe("gbt27930", DbcCodec.gbt27930(), io.StringIO(), live=False)
    abort = CanFrame(
        gbt27930.TP_CM_FROM_CHARGER,
        encode_cm(Abort(AbortReason.TIMEOUT, gbt27930.PGN_BRM)),
        is_extended_id=True,
    )
    # The car goes on sending after the abort (it has not read it yet): nothing is assembled.
    frames = [rts, *packets[:3], abort, *packets[3:]]
    _play(probe, [(i * 0.01, frame) for i, frame in enumerate(frames)])
    assert ("BRM", gbt27930.PGN_BRM) not in probe.kinds
    assert probe.dropped_transfers == {"aborted": (1, "by the charger, 3 (timeout)")}


def test_a_gbt_transfer_with_a_gap_over_t1_is_dropped() -> None:
    """J1939-21 T1 (750 ms) between two data packets; a gap just under it is normal."""
    rts, packets = _brm_transfer()
    probe = VehicleProbe("gbt27930", DbcCodec.gbt27930(), io.StringIO(), live=False)
    # Just under T1 between every packet, and 2 s (under T3 + T2) before the first one.
    _play(probe, [(0.0, rts), *((2.0 + i * 0.74, frame) for i, frame in enumerate(packets))])
    assert probe.kinds[("BRM", gbt27930.PGN_BRM)].count == 1
    assert probe.dropped_transfers == {}
    late = [(10.0, rts), (10.1, packets[0]), (10.2, packets[1]), (11.0, packets[2])]
    _play(probe, [*late, *((11.1 + i * 0.01, frame) for i, frame in enumerate(packets[3:]))])
    assert probe.kinds[("BRM", gbt27930.PGN_BRM)].count == 1  # not a second one
    assert probe.dropped_transfers == {"timed out": (1, "nothing for 0.80 s after packet 2")}
