"""A simulated vehicle: the car's side of CHAdeMO and GB/T 27930 on any python-can bus.

The protocol logic is sans-IO (``ChademoVehicle``, ``GbtVehicle``), driven by
``VehicleSimulator`` on a bus, or directly by tests with a simulated clock.
"""

from hil.vehicle.battery import BatteryModel
from hil.vehicle.chademo_ev import ChademoVehicle
from hil.vehicle.faults import FaultInjection
from hil.vehicle.gbt_ev import GbtVehicle
from hil.vehicle.lines import SimulatedLines

__all__ = ["BatteryModel", "ChademoVehicle", "FaultInjection", "GbtVehicle", "SimulatedLines"]
