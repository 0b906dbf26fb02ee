"""Simulated CAN over UDP multicast: a bus hears only its own group."""

from __future__ import annotations

import os

import can

from controller.vehicle.canbus import only_own_group


def test_a_bus_hears_its_own_group_and_not_others() -> None:
    """Two charger/vehicle pairs on different groups (one port) never hear each other."""
    base = 100 + os.getpid() % 100
    mine, other = f"239.74.{base}.1", f"239.74.{base}.2"
    listener = can.Bus(interface="udp_multicast", channel=mine)
    stranger = can.Bus(interface="udp_multicast", channel=other)
    peer = can.Bus(interface="udp_multicast", channel=mine)
    try:
        only_own_group(listener)
        stranger.send(can.Message(arbitration_id=0x100, data=b"\x01", is_extended_id=False))
        assert listener.recv(0.5) is None
        peer.send(can.Message(arbitration_id=0x102, data=b"\x02", is_extended_id=False))
        received = listener.recv(2.0)
        assert received is not None
        assert received.arbitration_id == 0x102
    finally:
        for bus in (listener, stranger, peer):
            bus.shutdown()
