"""Canned CHAdeMO traffic of a discharging car, for benchmarks and tests that need frames
without running the car simulator (``hil.vehicle.chademo_ev``)."""

from __future__ import annotations

from controller.vehicle.dbc import DbcCodec
from controller.vehicle.frames import CanFrame

# 0x102 as a discharge-capable car in transfer sends it (CHAdeMO 2.x, V2H).
CHADEMO_STATUS: dict[str, float] = {
    "ProtocolNumber": 2,
    "TargetBatteryVoltage": 410,
    "ChargingCurrentRequest": 0,
    "FaultBatteryOverVoltage": 0,
    "FaultBatteryUnderVoltage": 0,
    "FaultCurrentDeviation": 0,
    "FaultHighBatteryTemperature": 0,
    "FaultVoltageDeviation": 0,
    "StatusChargingEnabled": 1,
    "StatusNotInPark": 0,
    "StatusChargingSystemFault": 0,
    "StatusContactorOpen": 0,
    "StatusStopBeforeCharging": 0,
    "StatusBit6Undocumented": 0,
    "StatusDischargeCompatible": 1,
    "ChargedRate": 62,
}


def chademo_discharging_round(
    *,
    charged_rate: float = 62,
    request_a: float = 0,
    available_energy_kwh: float | None = None,
) -> dict[str, dict[str, float]]:
    """One 100 ms round of the car's frames as signal values per message name (0x100, 0x101,
    0x102, 0x200, and 0x201 when ``available_energy_kwh`` is given)."""
    signals: dict[str, dict[str, float]] = {
        "VEH_100_BatteryLimits": {
            "MinChargeCurrent": 0,
            "MinBatteryVoltage": 250,
            "MaxBatteryVoltage": 435,
            "ChargedRateReference": 100,
        },
        "VEH_101_ChargingTime": {
            "MaxChargingTime10s": 2550,
            "MaxChargingTimeMin": 60,
            "EstimatedChargingTime": 30,
            "RatedBatteryCapacity": 40.0,
        },
        "VEH_102_Status": {
            **CHADEMO_STATUS,
            "ChargingCurrentRequest": request_a,
            "ChargedRate": charged_rate,
        },
        "VEH_200_DischargeLimits": {
            "MaxDischargeCurrent": 30,
            "MinDischargeVoltage": 250,
            "MinDischargeLevel": 30,
            "MaxRemainingCapacityForCharging": 100,
        },
    }
    if available_energy_kwh is not None:
        signals["VEH_201_DischargeInfo"] = {
            "V2hSequenceControlNumber": 2,
            "DischargeCompletionTime": 0,
            "AvailableVehicleEnergy": available_energy_kwh,
        }
    return signals


def encode_round(codec: DbcCodec, signals: dict[str, dict[str, float]]) -> list[CanFrame]:
    """The round's frames, encoded with ``codec`` (standard 11-bit ids)."""
    return [
        CanFrame(codec.frame_id(name), codec.encode(name, values), False)
        for name, values in signals.items()
    ]
