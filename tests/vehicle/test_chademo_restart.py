"""Issue 17: the simulated CHAdeMO car handshakes again after the charger restarts."""

from __future__ import annotations

import pytest

from controller.core.snapshots import VehiclePhase
from controller.vehicle.chademo import ChademoSession
from controller.vehicle.frames import LineOutputs
from hil.vehicle.chademo_ev import ChademoVehicleState

from .test_chademo_session import FAST, ChademoBench, bench, transferring

GAP_S = 3.0  # the daemon's restart: no charger frames for this long


def restart_charger(b: ChademoBench, *, lines_released: bool) -> None:
    """The daemon dies mid-transfer and a new one starts ``GAP_S`` later.

    SIGKILL leaves the lines file as it was (d1, d2, contactors on); a clean exit releases them.
    Either way the new daemon's link opens the lines with every output off (``SharedFileLines``)
    and starts a fresh session; in the gap only the car runs.
    """
    if lines_released:
        b.lines.close()
    end = b.now + GAP_S
    while b.now < end:
        b.now = round(b.now + 0.01, 6)
        b.vehicle.tick(b.now)
    b.lines.write(LineOutputs())
    session = ChademoSession(FAST)
    session.allow_energy_transfer(True)
    b.session = session


@pytest.mark.parametrize("lines_released", [False, True], ids=["sigkill", "clean-exit"])
def test_car_handshakes_again_with_a_restarted_charger(lines_released: bool) -> None:
    """The car sees the charger go silent (and, after a clean exit, d1 drop), opens its contactor,
    releases k, and handshakes with the new session: transfer again, without a fault."""
    b = bench()
    transferring(b)
    assert b.car.handshakes == 1
    restart_charger(b, lines_released=lines_released)
    assert b.car.state is ChademoVehicleState.DONE
    assert not b.car.contactor_closed
    assert not b.lines.k
    b.run(10.0, until=lambda s: s.phase is VehiclePhase.ENERGY_TRANSFER)
    state = b.trace.last
    assert state.phase is VehiclePhase.ENERGY_TRANSFER
    assert state.faults == ()
    assert b.car.handshakes == 2
    soc = b.car.battery.soc_pct
    b.run(1.0)
    assert b.car.battery.soc_pct > soc  # energy flows again


def test_car_handshakes_with_the_next_plug_in() -> None:
    """After a normal end the car is done; unplugged and plugged in again it handshakes anew."""
    b = bench()
    transferring(b)
    b.session.end(b.now)
    b.run(3.0, until=lambda s: s.phase is VehiclePhase.ENDED)
    b.run(0.5)
    assert b.car.state is ChademoVehicleState.DONE
    b.lines.plugged = False
    b.run(0.3)
    b.lines.plugged = True
    b.run(10.0, until=lambda s: s.phase is VehiclePhase.ENERGY_TRANSFER)
    assert b.trace.last.phase is VehiclePhase.ENERGY_TRANSFER
    assert b.trace.last.faults == ()
    assert b.car.handshakes == 2


def test_a_done_car_is_quiet_while_d1_is_off() -> None:
    """With d1 off the done car sends nothing, and still looks at d1 every 100 ms."""
    b = bench()
    transferring(b)
    b.session.end(b.now)
    b.run(3.0, until=lambda s: s.phase is VehiclePhase.ENDED)
    b.run(0.5)
    assert not b.lines.outputs.d1
    last = round(b.now + 0.5, 6)
    sent = [f for n in range(50) for f in b.vehicle.tick(round(b.now + 0.01 * (n + 1), 6))]
    assert sent == []
    assert last < b.vehicle.next_deadline_s <= last + 0.1
