"""The vehicle link: CHAdeMO and GB/T 27930 charger sessions over CAN (python-can + cantools).

* ``dbc`` — the DBC files (repository ``dbc/``) as the only description of the wire;
* ``chademo``, ``gbt27930``, ``j1939_tp`` — pure session machines:
  ``(frame or tick, now) -> Step(frames, events, VehicleState, line outputs)``;
* ``frames`` — the values they exchange and the ``ChargerLines`` protocol for d1, d2, k, contactors;
* ``canbus``, ``link`` — python-can and asyncio at the edge: ``CanVehicleLink``.
"""

from controller.vehicle.canbus import CanLinkConfig
from controller.vehicle.chademo import ChademoChargerConfig, ChademoSession
from controller.vehicle.frames import ChargerLines, LineInputs, LineOutputs
from controller.vehicle.gbt27930 import GbtChargerConfig, GbtSession
from controller.vehicle.link import CanVehicleLink

__all__ = [
    "CanLinkConfig",
    "CanVehicleLink",
    "ChademoChargerConfig",
    "ChademoSession",
    "ChargerLines",
    "GbtChargerConfig",
    "GbtSession",
    "LineInputs",
    "LineOutputs",
]
