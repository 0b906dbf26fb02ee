"""The vehicle link: CHAdeMO, GB/T 27930 and generic-BMS sessions over CAN (python-can, cantools).

* ``dbc`` — the DBC files as the only description of the wire, and where they are found;
* ``protocols`` — the protocols' facts (ids, PGNs, periods, timeouts), shared with the simulators;
* ``chademo``, ``gbt27930``, ``j1939_tp`` — pure session machines:
  ``(frame or tick, now_s) -> Step(frames, events, VehicleState, line outputs)``;
* ``profile`` — the generic DBC profile (``vehicle.protocol: dbc``), the same shape, listen-only;
* ``frames`` — the values they exchange and the ``ChargerLines`` protocol for d1, d2, k, contactors;
* ``lines`` — ``ChargerLines`` on GPIO (libgpiod 2), on a file shared with the simulator, or none;
* ``canbus``, ``link`` — python-can and asyncio at the edge: ``CanVehicleLink``;
* ``factory`` — the link the config describes.
"""

from controller.vehicle.canbus import CanLinkConfig
from controller.vehicle.chademo import ChademoChargerConfig, ChademoSession
from controller.vehicle.frames import ChargerLines, LineInputs, LineOutputs
from controller.vehicle.gbt27930 import GbtChargerConfig, GbtSession
from controller.vehicle.lines import GpioLines, SharedFileLines, UnwiredLines
from controller.vehicle.link import CanVehicleLink
from controller.vehicle.profile import DbcProfileSession

__all__ = [
    "CanLinkConfig",
    "CanVehicleLink",
    "ChademoChargerConfig",
    "ChademoSession",
    "ChargerLines",
    "DbcProfileSession",
    "GbtChargerConfig",
    "GbtSession",
    "GpioLines",
    "LineInputs",
    "LineOutputs",
    "SharedFileLines",
    "UnwiredLines",
]
