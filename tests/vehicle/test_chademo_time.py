"""Issue 17: 0x109 bytes 6-7 count the vehicle's maximum charging time down while energy flows."""

from __future__ import annotations

from collections.abc import Callable

from controller.vehicle.chademo import ChademoChargerConfig, ChademoSession, ChademoState
from controller.vehicle.dbc import DbcCodec
from controller.vehicle.frames import CanFrame, LineInputs
from hil.vehicle.traffic import chademo_discharging_round, encode_round

from .fixtures import recorded as rec

CODEC = DbcCodec.chademo()
HELD = LineInputs(plugged=True, insulation_ok=True, k=True)
ZE1_09_101 = rec.std(0x101, "00E4000000000000")  # the protocol-0.9 charger log: 228 x 10 s


def remaining(
    frame_101: CanFrame, current_a: Callable[[float], float], duration_s: float
) -> list[tuple[float, int, int]]:
    """(time since transfer began, 0x109 byte 6, byte 7) every 100 ms of a session in which the car
    sends ``frame_101`` and the stage measures ``current_a(time since transfer began)``."""
    session = ChademoSession(ChademoChargerConfig(insulation_test_s=0.0))
    session.allow_energy_transfer(True)
    frames = [
        frame_101 if f.arbitration_id == 0x101 else f
        for f in encode_round(CODEC, chademo_discharging_round(request_a=20))
    ]
    out: list[tuple[float, int, int]] = []
    began: float | None = None
    for n in range(round(duration_s / 0.1)):
        now = round(n * 0.1, 3)
        for frame in frames:
            session.receive(frame, now)
        since = 0.0 if began is None else now - began
        session.set_output(390.0, current_a(since), now)
        step = session.tick(now, HELD)
        if began is None and session.state is ChademoState.ENERGY_TRANSFER:
            began = now
        since = -1.0 if began is None else round(now - began, 3)  # -1: before transfer
        out.extend((since, f.data[6], f.data[7]) for f in step.frames if f.arbitration_id == 0x109)
    return out


def at(series: list[tuple[float, int, int]], since_s: float) -> tuple[int, int]:
    """Bytes 6-7 as sent at ``since_s`` after transfer began."""
    return next((b6, b7) for t, b6, b7 in series if t >= since_s)


def test_remaining_minutes_count_down_while_current_flows() -> None:
    """The ZE0's 0x101 FF 3C (60 min): FF 3C at the start and still 27 s in (as the recorded
    charger), FF 3B once 61 s of current have flowed; 20 s at 0 A in between do not count."""

    def flow(since_s: float) -> float:
        return 0.0 if 30.0 <= since_s < 50.0 else 20.0

    series = remaining(rec.ZE0_101, flow, 90.0)
    assert {(b6, b7) for t, b6, b7 in series if t < 0} == {(0, 0)}  # before transfer
    assert at(series, 0.0) == (0xFF, 60)
    assert at(series, 27.0) == (0xFF, 60)
    assert at(series, 60.0) == (0xFF, 60)  # 40 s of flow: 59 min 20 s, rounded up
    assert at(series, 82.0) == (0xFF, 59)  # 62 s of flow


def test_remaining_tens_of_seconds_keep_the_vehicles_unit() -> None:
    """0x101 byte 1 = 0xE4 (228 x 10 s): byte 6 counts 10 s steps, byte 7 the minutes, as the
    recorded 0.9 charger sends them (D7 24: 215 x 10 s, 36 min)."""
    series = remaining(ZE1_09_101, lambda _since: 20.0, 30.0)
    assert at(series, 0.0) == (228, 38)
    assert at(series, 25.0) == (226, 38)  # 2255 s left: 225.5 x 10 s, 37.6 min, rounded up


def test_no_remaining_time_without_transfer_or_a_figure() -> None:
    """0x101 bytes 1-2 of 0 (the Leafs' first 0x101) give 0; outside transfer 0 too."""
    series = remaining(rec.ZE0_101_EARLY, lambda _since: 20.0, 3.0)
    assert {(b6, b7) for _, b6, b7 in series} == {(0, 0)}
